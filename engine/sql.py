"""SQL over index data with DuckDB: each dataset is a view over its Parquet files."""

from __future__ import annotations

from typing import Any

import duckdb
import pyarrow as pa

from .errors import UserInputError


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def query_datasets(query: str, datasets: dict[str, tuple[Any, Any]]) -> pa.Table:
    """Run ``query`` with each ``name -> (dataset, version)`` visible as a table.

    Record fields appear as their references (file, pos, size, offset).
    """
    con = duckdb.connect()
    try:
        for name, (ds, version) in datasets.items():
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
