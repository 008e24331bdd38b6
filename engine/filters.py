"""Filters: pyarrow compute expressions, or SQL predicate strings turned into them.

SQL predicates are parsed with sqlglot (DuckDB dialect) and translated to a pyarrow
expression, so both forms prune files by manifest statistics and run in Arrow.
"""

from __future__ import annotations

import functools
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from .errors import FilterError

Filter = pc.Expression | str | None


def to_expression(filter_: Filter) -> pc.Expression | None:
    if filter_ is None:
        return None
    if isinstance(filter_, pc.Expression):
        return filter_
    if isinstance(filter_, str):
        return parse_sql(filter_)
    raise FilterError(f"filter must be a pyarrow expression or a SQL predicate string, got {type(filter_).__name__}")


def parse_sql(text: str) -> pc.Expression:
    import sqlglot  # lazy: only SQL filters need it
    try:
        tree = sqlglot.parse_one(text, read="duckdb")
    except sqlglot.errors.ParseError as e:
        raise FilterError(f"cannot parse SQL filter {text!r}: {e}") from None
    try:
        out = _convert(tree)
    except FilterError as e:
        raise FilterError(f"SQL filter {text!r}: {e}") from None
    if not isinstance(out, pc.Expression):
        raise FilterError(f"SQL filter {text!r} is not a predicate")
    return out


@functools.cache
def _cmp_table() -> dict:
    from sqlglot import expressions as sx

    return {
        sx.EQ: lambda a, b: a == b,
        sx.NEQ: lambda a, b: a != b,
        sx.LT: lambda a, b: a < b,
        sx.LTE: lambda a, b: a <= b,
        sx.GT: lambda a, b: a > b,
        sx.GTE: lambda a, b: a >= b,
        sx.Add: lambda a, b: a + b,
        sx.Sub: lambda a, b: a - b,
        sx.Mul: lambda a, b: a * b,
        sx.Div: lambda a, b: a / b,
    }


def _convert(node: Any) -> Any:
    from sqlglot import expressions as sx

    if isinstance(node, sx.Paren):
        return _convert(node.this)
    if isinstance(node, sx.Column):
        if node.table:
            return pc.field(node.table, node.name)
        return pc.field(node.name)
    if isinstance(node, sx.Literal):
        if node.is_string:
            return node.this
        text = node.this
        return float(text) if any(c in text for c in ".eE") else int(text)
    if isinstance(node, sx.Boolean):
        return node.this
    if isinstance(node, sx.Null):
        return None
    if isinstance(node, sx.Neg):
        return -_convert(node.this)
    if isinstance(node, sx.And):
        return _convert(node.this) & _convert(node.expression)
    if isinstance(node, sx.Or):
        return _convert(node.this) | _convert(node.expression)
    if isinstance(node, sx.Not):
        return ~_convert(node.this)
    for cls, fn in _cmp_table().items():
        if isinstance(node, cls):
            a, b = _convert(node.this), _convert(node.expression)
            if not isinstance(a, pc.Expression):
                a = pc.scalar(a)
            return fn(a, b)
    if isinstance(node, sx.In):
        values = [_convert(v) for v in node.expressions]
        return _convert(node.this).isin(values)
    if isinstance(node, sx.Between):
        x = _convert(node.this)
        return (x >= _convert(node.args["low"])) & (x <= _convert(node.args["high"]))
    if isinstance(node, sx.Is):
        x = _convert(node.this)
        if isinstance(node.expression, sx.Null):
            return x.is_null()
        raise FilterError("only IS NULL / IS NOT NULL are supported")
    if isinstance(node, sx.Like):
        return pc.match_like(_convert(node.this), _convert(node.expression))
    raise FilterError(f"unsupported SQL construct {node.key.upper()!r}")


def referenced_fields(expr: pc.Expression, names: list[str]) -> list[str]:
    """Fields of ``names`` an expression mentions (pyarrow has no public AST walk)."""
    text = str(expr)
    return [n for n in names if n in text]


def check_fields(expr: pc.Expression, index_names: list[str], record_fields: list[str], where: str) -> None:
    """Reject filters on record fields or unknown fields with a message naming them."""
    import pyarrow.dataset as pds  # lazy: it imports pandas (slow start-up)

    rec = [f for f in record_fields if f in str(expr)]
    if rec and not any(n in str(expr) for n in index_names if n not in rec):
        raise FilterError(f"{where}: filters can only use index fields, not record field(s) {rec}")
    try:
        pds.dataset(pa.table({n: pa.array([], pa.null()) for n in index_names})).to_table(filter=expr)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as e:
        if "No match for FieldRef" in str(e):
            raise FilterError(f"{where}: filter {expr} names a field that is not an index field ({index_names})") from None


def stats_guarantee(row: dict[str, Any], stats_names: list[str]) -> pc.Expression:
    """An expression every row of a file satisfies, from its manifest min/max."""
    terms = []
    mins, maxs = row.get("min") or {}, row.get("max") or {}
    for name in stats_names:
        lo, hi = mins.get(name), maxs.get(name)
        if lo is None or hi is None:
            continue
        f = pc.field(name)
        terms.append((f >= lo) & (f <= hi))
    if not terms:
        return pc.scalar(True)
    out = terms[0]
    for t in terms[1:]:
        out = out & t
    return out
