"""Dataset schemas: validation, and the on-disk index schema.

The user's schema holds index fields (stored in Parquet) and record fields (binary,
stored in ArrayRecord). On disk a record field becomes a reference struct
(file, position, size, offset) in the index Parquet file.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from typing import Any

import pyarrow as pa
import pyarrow.types as pat

from .errors import SchemaError, UserInputError
from .records import REF_TYPE

RESERVED_PREFIX = "_spacefs"


def _supported_index_type(t: pa.DataType) -> bool:
    if pat.is_integer(t) or pat.is_floating(t) or pat.is_boolean(t):
        return True
    if pat.is_string(t) or pat.is_large_string(t) or pat.is_binary(t) or pat.is_large_binary(t):
        return True
    if pat.is_date(t) or pat.is_timestamp(t) or pat.is_decimal(t) or pat.is_time(t):
        return True
    if pat.is_list(t) or pat.is_large_list(t) or pat.is_fixed_size_list(t):
        return _supported_index_type(t.value_type)
    if pat.is_struct(t):
        return all(_supported_index_type(t.field(i).type) for i in range(t.num_fields))
    return False


def _key_type(t: pa.DataType) -> bool:
    return (
        pat.is_integer(t)
        or pat.is_string(t)
        or pat.is_large_string(t)
        or pat.is_binary(t)
        or pat.is_large_binary(t)
        or pat.is_date(t)
        or pat.is_timestamp(t)
        or pat.is_decimal(t)
        or pat.is_boolean(t)
    )


def is_record_type(t: pa.DataType) -> bool:
    """Record fields hold bytes: binary, or an extension type stored as binary."""
    if isinstance(t, pa.ExtensionType):
        t = t.storage_type
    return pat.is_binary(t) or pat.is_large_binary(t)


def stats_type(t: pa.DataType) -> bool:
    """Fields whose min/max the manifests keep for pruning."""
    return (
        pat.is_integer(t)
        or pat.is_floating(t)
        or pat.is_string(t)
        or pat.is_large_string(t)
        or pat.is_date(t)
        or pat.is_timestamp(t)
        or pat.is_decimal(t)
    )


def validate_field_name(name: str) -> None:
    if not isinstance(name, str) or not name:
        raise SchemaError(f"field name {name!r} must be a non-empty string")
    if "/" in name or "\0" in name or name in (".", "..") or name.startswith(RESERVED_PREFIX):
        raise SchemaError(f"field name {name!r} is not allowed (no '/', NUL, '.', '..' or '{RESERVED_PREFIX}' prefix)")


def validate(schema: pa.Schema, primary_keys: Sequence[str], record_fields: Sequence[str]) -> None:
    """Refuse schemas the engine cannot store, naming the field at fault."""
    if not isinstance(schema, pa.Schema):
        raise SchemaError(f"schema must be a pyarrow.Schema, got {type(schema).__name__}")
    names = schema.names
    for name in names:
        validate_field_name(name)
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise SchemaError(f"duplicate field names: {sorted(dup)}")
    if isinstance(primary_keys, str):
        primary_keys = [primary_keys]
    if not primary_keys:
        raise SchemaError("at least one primary key field is required")
    if len(set(primary_keys)) != len(primary_keys):
        raise SchemaError(f"primary keys repeat a field: {list(primary_keys)}")
    for f in list(primary_keys) + list(record_fields):
        if f not in names:
            raise SchemaError(f"field {f!r} is not in the schema (fields: {names})")
    for f in primary_keys:
        if f in record_fields:
            raise SchemaError(f"primary key {f!r} cannot be a record field")
        t = schema.field(f).type
        if not _key_type(t):
            raise SchemaError(f"primary key {f!r} has type {t}; keys must be integer, string, binary, boolean, date, timestamp or decimal")
    for f in record_fields:
        t = schema.field(f).type
        if not is_record_type(t):
            raise SchemaError(f"record field {f!r} has type {t}; record fields must be binary (or TfFeatures)")
    for field in schema:
        if field.name in record_fields:
            continue
        if isinstance(field.type, pa.ExtensionType) or not _supported_index_type(field.type):
            raise SchemaError(f"field {field.name!r} has unsupported type {field.type}")


def index_schema(schema: pa.Schema, record_fields: Sequence[str]) -> pa.Schema:
    """The schema of the index Parquet files: record fields become references."""
    return pa.schema(
        [pa.field(f.name, REF_TYPE) if f.name in record_fields else f for f in schema]
    )


def select_fields(schema: pa.Schema, fields: Sequence[str] | str | None, what: str) -> list[str]:
    """The fields a caller asked for (all when None), refusing unknown names."""
    if fields is None:
        return list(schema.names)
    if isinstance(fields, str):
        fields = [fields]
    unknown = [f for f in fields if f not in schema.names]
    if unknown:
        raise SchemaError(f"{what}: unknown field(s) {unknown} (fields: {schema.names})")
    return list(fields)


def check_batch_size(batch_size: int | None) -> None:
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0):
        raise UserInputError(f"batch_size must be a positive integer, got {batch_size!r}")


def schema_to_json(schema: pa.Schema) -> dict[str, Any]:
    """Readable field list plus the exact schema as base64 Arrow IPC."""
    return {
        "fields": [{"name": f.name, "type": str(f.type), "nullable": f.nullable} for f in schema],
        "arrow": base64.b64encode(schema.serialize().to_pybytes()).decode(),
    }


def schema_from_json(doc: dict[str, Any]) -> pa.Schema:
    return pa.ipc.read_schema(pa.py_buffer(base64.b64decode(doc["arrow"])))


def conform(table: pa.Table, schema: pa.Schema, what: str, optional: Sequence[str] = ()) -> pa.Table:
    """Cast ``table`` to ``schema``: same fields, in order, with a clear error otherwise.

    Fields named in ``optional`` may be left out: the result then has ``schema`` less them
    (a partial upsert keeps the stored records of the fields it omits).
    """
    absent = [n for n in optional if n in schema.names and n not in table.column_names]
    if absent:
        schema = pa.schema([f for f in schema if f.name not in absent])
    missing = [n for n in schema.names if n not in table.column_names]
    extra = [n for n in table.column_names if n not in schema.names]
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing fields {missing}")
        if extra:
            parts.append(f"unknown fields {extra}")
        raise SchemaError(f"{what}: data does not match the schema: {', '.join(parts)}")
    table = table.select(schema.names)
    cols = []
    for field in schema:
        col = table.column(field.name)
        if col.type != field.type:
            try:
                storage = field.type.storage_type if isinstance(field.type, pa.ExtensionType) else field.type
                col = col.cast(storage)
                if isinstance(field.type, pa.ExtensionType):
                    col = pa.chunked_array(
                        [pa.ExtensionArray.from_storage(field.type, c) for c in col.chunks], field.type
                    )
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as e:
                raise SchemaError(f"{what}: field {field.name!r} has type {col.type}, expected {field.type}: {e}") from None
        if not field.nullable and col.null_count:
            raise SchemaError(f"{what}: field {field.name!r} is not nullable but has {col.null_count} nulls")
        cols.append(col)
    return pa.Table.from_arrays(cols, schema=schema)


def to_table(data: Any, schema: pa.Schema, what: str, optional: Sequence[str] = ()) -> pa.Table:
    """Accept a dict of lists, a Table, a RecordBatch (or a list of dict rows)."""
    if isinstance(data, pa.RecordBatch):
        data = pa.Table.from_batches([data])
    elif isinstance(data, dict):
        cols = {}
        for name, values in data.items():
            t = schema.field(name).type if name in schema.names else None
            storage = t.storage_type if isinstance(t, pa.ExtensionType) else t
            try:
                if hasattr(t, "encode_values") and not isinstance(values, (pa.Array, pa.ChunkedArray)):
                    values = t.encode_values(values)  # e.g. TfFeatures: nested dicts to bytes
                if isinstance(values, (pa.Array, pa.ChunkedArray)):
                    cols[name] = values
                else:
                    cols[name] = pa.array(values if hasattr(values, "__len__") else list(values), storage)
            except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, OverflowError) as e:
                raise SchemaError(f"{what}: field {name!r} does not match type {t}: {e}") from None
        try:
            data = pa.table(cols)
        except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
            raise SchemaError(f"{what}: data does not match the schema: {e}") from None
    elif isinstance(data, list) and (not data or isinstance(data[0], dict)):
        present = set().union(*data) if optional else set(schema.names)
        rows_schema = pa.schema([f for f in schema if f.name in present or f.name not in optional])
        try:
            data = pa.Table.from_pylist(data, schema=_storage_schema(rows_schema))
        except (pa.ArrowInvalid, pa.ArrowTypeError, KeyError) as e:
            raise SchemaError(f"{what}: data does not match the schema: {e}") from None
    if not isinstance(data, pa.Table):
        raise SchemaError(f"{what}: expected a dict of lists, a pyarrow Table or RecordBatch, got {type(data).__name__}")
    return conform(data, schema, what, optional)


def _storage_schema(schema: pa.Schema) -> pa.Schema:
    return pa.schema(
        [pa.field(f.name, f.type.storage_type if isinstance(f.type, pa.ExtensionType) else f.type, f.nullable) for f in schema]
    )


def dumps(doc: Any) -> bytes:
    return json.dumps(doc, indent=1, sort_keys=True).encode()
