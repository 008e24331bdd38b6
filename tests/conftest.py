"""Shared fixtures: small datasets in temporary directories."""

from __future__ import annotations

import os
import sys

import pyarrow as pa
import pytest

from spacefs import Dataset

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PYTHON = sys.executable

SCHEMA = pa.schema([("id", pa.int64()), ("image_name", pa.string()), ("feature", pa.binary())])


def rows(ids, tag: str = "") -> dict:
    ids = list(ids)
    return {
        "id": ids,
        "image_name": [f"{i}{tag}.jpg" for i in ids],
        "feature": [f"data{i}{tag}".encode() for i in ids],
    }


@pytest.fixture
def ds(tmp_path) -> Dataset:
    return Dataset.create(str(tmp_path / "ds"), SCHEMA, primary_keys=["id"], record_fields=["feature"])
