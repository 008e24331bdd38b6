"""``DirCatalog``: datasets and materialized views managed by name in one directory."""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from . import format as fmt
from .backend import Backend, is_remote, open_backend
from .dataset import Dataset
from .errors import NotFoundError, UserInputError

_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]{0,127}$")


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    location: str


def validate_name(name: str) -> None:
    """Names become directories: no '/', '..', hidden names or odd characters."""
    if not isinstance(name, str) or not _NAME.match(name) or ".." in name:
        raise UserInputError(f"dataset name {name!r} is not valid: use letters, digits, '_', '-', '.', not starting with '.'")


def normalize_location(location: str) -> str:
    """A directory made absolute, a bucket URI without its trailing slash."""
    location = str(location)
    return location.rstrip("/") if is_remote(location) else os.path.abspath(location)


def is_dataset_at(location: str) -> bool:
    """Whether ``location`` (a directory or a bucket prefix) holds a dataset; in a bucket a
    dataset exists once its log entry 0 does."""
    if is_remote(str(location)):
        return open_backend(str(location)).exists(fmt.log_entry(0))
    return fmt.is_dataset(str(location))


def child_location(catalog: str, name: str) -> str:
    """The location of dataset ``name`` in a catalog directory or bucket prefix."""
    return f"{catalog.rstrip('/')}/{name}" if is_remote(catalog) else os.path.join(catalog, name)


def datasets_at(catalog: str) -> list[str]:
    """Names of the datasets directly under a catalog directory or bucket prefix, sorted."""
    if is_remote(catalog):
        return [i.name for i in DirCatalog(catalog).datasets()]
    return fmt.datasets_in(catalog)


def remove_from_bucket(backend: Backend) -> None:
    """Delete the dataset at a bucket prefix. No rename on a bucket: the dataset
    disappears with its log entry 0, then everything under its prefix goes (an
    interrupted delete leaves objects that a new create at the location reports)."""
    backend.delete([fmt.log_entry(0)])
    backend.delete(backend.list_paths(""))


class DirCatalog:
    """A directory whose subdirectories are datasets (or materialized views), or a
    prefix of a bucket (``s3://bucket/prefix``) whose "subdirectories" are."""

    def __init__(self, location: str, storage_options: dict[str, Any] | None = None):
        self.remote = is_remote(str(location))
        # Options reach every dataset of the catalog through ``open_backend`` (in memory).
        self.storage_options = storage_options
        if self.remote:
            self.backend = open_backend(str(location), storage_options)
            self.location = self.backend.uri
        else:
            self.location = os.path.abspath(str(location))
            os.makedirs(self.location, exist_ok=True)

    def _path(self, name: str) -> str:
        validate_name(name)
        if self.remote:
            return f"{self.location}/{name}"
        path = os.path.join(self.location, name)
        if os.path.dirname(os.path.realpath(path)) != os.path.realpath(self.location):
            raise UserInputError(f"dataset name {name!r} resolves outside the catalog")
        return path

    def create_dataset(self, name: str, schema: pa.Schema, primary_keys, record_fields=None,
                       file_layout: dict[str, str] | None = None) -> Dataset:
        """Create dataset ``name`` in the catalog; the arguments are those of ``Dataset.create``.

        Raises:
            UserInputError: ``name`` is not a valid dataset name.
            AlreadyExistsError: the catalog already has a dataset of that name.
        """
        return Dataset.create(self._path(name), schema, primary_keys, record_fields, file_layout,
                              storage_options=self.storage_options)

    def dataset(self, name: str) -> Dataset:
        """Open dataset (or materialized view) ``name``.

        Raises:
            NotFoundError: the catalog has no dataset of that name.
        """
        path = self._path(name)
        if not self._is_dataset(name):
            raise NotFoundError(f"catalog {self.location} has no dataset named {name!r}")
        return Dataset.load(path, self.storage_options)

    def _is_dataset(self, name: str) -> bool:
        if self.remote:  # on a bucket a dataset exists once its log entry 0 does
            return self.backend.exists(f"{name}/{fmt.log_entry(0)}")
        return fmt.is_dataset(self._path(name))

    def datasets(self) -> list[DatasetInfo]:
        """The datasets of the catalog, sorted by name (``DatasetInfo(name, location)``)."""
        if self.remote:
            names = [n for n in self.backend.list("") if _NAME.match(n) and self._is_dataset(n)]
            return [DatasetInfo(n, self._path(n)) for n in names]
        return [DatasetInfo(name, os.path.join(self.location, name)) for name in fmt.datasets_in(self.location)]

    def delete_dataset(self, name: str) -> None:
        """Remove a dataset: renamed away first (atomic), then deleted."""
        path = self._path(name)
        if not self._is_dataset(name):
            raise NotFoundError(f"catalog {self.location} has no dataset named {name!r}")
        if self.remote:
            remove_from_bucket(open_backend(path))
            return
        trash = os.path.join(self.location, f".{name}.deleting-{os.getpid()}")
        os.rename(path, trash)
        shutil.rmtree(trash)

    def materialize(self, name: str, view):
        """Store ``view`` as the materialized view ``name``; fill it with ``mv.local().refresh()``.

        Raises:
            AlreadyExistsError: the catalog already has a dataset of that name.
        """
        return view.materialize(self._path(name))

    def sql(self, query: str) -> pa.Table:
        """Run a DuckDB ``query`` in which every dataset of the catalog is a table (main branch)."""
        from .sql import query_datasets

        return query_datasets(query, {i.name: (self.dataset(i.name), None) for i in self.datasets()})
