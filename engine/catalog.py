"""``DirCatalog``: datasets and materialized views managed by name in one directory."""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass

import pyarrow as pa

from . import format as fmt
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


class DirCatalog:
    """A directory whose subdirectories are datasets (or materialized views)."""

    def __init__(self, location: str):
        self.location = os.path.abspath(str(location))
        os.makedirs(self.location, exist_ok=True)

    def _path(self, name: str) -> str:
        validate_name(name)
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
        return Dataset.create(self._path(name), schema, primary_keys, record_fields, file_layout)

    def dataset(self, name: str) -> Dataset:
        """Open dataset (or materialized view) ``name``.

        Raises:
            NotFoundError: the catalog has no dataset of that name.
        """
        path = self._path(name)
        if not fmt.is_dataset(path):
            raise NotFoundError(f"catalog {self.location} has no dataset named {name!r}")
        return Dataset.load(path)

    def datasets(self) -> list[DatasetInfo]:
        """The datasets of the catalog, sorted by name (``DatasetInfo(name, location)``)."""
        return [DatasetInfo(name, os.path.join(self.location, name)) for name in fmt.datasets_in(self.location)]

    def delete_dataset(self, name: str) -> None:
        """Remove a dataset: renamed away first (atomic), then deleted."""
        path = self._path(name)
        if not fmt.is_dataset(path):
            raise NotFoundError(f"catalog {self.location} has no dataset named {name!r}")
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
