"""Views and materialized views with a source in a bucket, stored on disk or in the bucket."""

from __future__ import annotations

import sys

import cloudpickle
import pytest

from spacefs import Dataset, DirCatalog, MaterializedView

from conftest import SCHEMA, rows

cloudpickle.register_pickle_by_value(sys.modules[__name__])  # UDFs travel with the MV


def shout(batch):
    batch["feature"] = [b.upper() for b in batch["feature"]]
    return batch


def by_id(t):
    return t.sort_by("id")


@pytest.mark.parametrize("mv_in_bucket", [False, True])
def test_mv_of_a_bucket_source_refreshes_incrementally(s3_bucket, tmp_path, mv_in_bucket):
    src = Dataset.create(s3_bucket + "/src", SCHEMA, primary_keys=["id"], record_fields=["feature"])
    src.local().append(rows(range(40)))
    view = src.map_batches(shout, SCHEMA, output_record_fields=["feature"])
    assert view.local().read_all().num_rows == 40
    cat = DirCatalog(s3_bucket + "/cat" if mv_in_bucket else str(tmp_path / "cat"))
    mv = cat.materialize("mv", view)
    assert mv.local().refresh().storage_statistics_update["rows"] == 40

    src.local().upsert(rows(range(30, 50), tag="x"))
    src.local().delete("id < 5")
    again = cat.dataset("mv")  # loaded afresh: the definition names the source by its URI
    assert isinstance(again, MaterializedView)
    again.local().refresh()
    want = by_id(src.local().read_all())
    got = by_id(again.local().read_all())
    assert got.column("id").to_pylist() == want.column("id").to_pylist()
    assert got.column("feature").to_pylist() == [b.upper() for b in want.column("feature").to_pylist()]
    assert again.local().refresh().state.name == "SKIPPED"
