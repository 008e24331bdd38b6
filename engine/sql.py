"""SQL over index data with DuckDB: each dataset is a view over its Parquet files."""

from __future__ import annotations

from typing import Any

import duckdb
import pyarrow as pa

from .errors import UserInputError


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def index_table(ds: Any, version: Any) -> pa.Table:
    """All index rows of a version of a dataset in a bucket, as one Arrow table."""
    st = ds.storage
    sid = ds.snapshot_id(version)
    parts = [st.files.read_table(e["path"], schema=st.index_schema) for e in st.index_entries(sid)]
    return pa.concat_tables(parts) if parts else st.index_schema.empty_table()


def query_datasets(query: str, datasets: dict[str, tuple[Any, Any]]) -> pa.Table:
    """Run ``query`` with each ``name -> (dataset, version)`` visible as a table.

    Record fields appear as their references (file, pos, size, offset).
    """
    con = duckdb.connect()
    try:
        for k, (name, (ds, version)) in enumerate(datasets.items()):
            if ds.storage.remote:
                # DuckDB's httpfs is downloaded at run time: register the index rows read
                # through the backend instead (index rows are small; records stay references).
                con.register(f"__remote_{k}", index_table(ds, version))
                con.execute(f"CREATE VIEW {_quote(name)} AS SELECT * FROM {_quote(f'__remote_{k}')}")
                continue
            files = ds.index_files(version)
            if files:
                lst = ", ".join("'" + f.replace("'", "''") + "'" for f in files)
                con.execute(f"CREATE VIEW {_quote(name)} AS SELECT * FROM read_parquet([{lst}])")
            else:
                empty = ds.storage.index_schema.empty_table()
                con.register(f"__empty_{len(name)}_{abs(hash(name))}", empty)
                con.execute(f"CREATE VIEW {_quote(name)} AS SELECT * FROM {_quote(f'__empty_{len(name)}_{abs(hash(name))}')}")
        try:
            return con.sql(query).to_arrow_table()
        except duckdb.Error as e:
            raise UserInputError(f"SQL error: {str(e).splitlines()[0]}") from None
    finally:
        con.close()
