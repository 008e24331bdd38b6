"""Filters: pyarrow compute expressions, or SQL predicate strings with DuckDB's meaning.

A filter becomes a ``Predicate``: ``prune``, an Arrow expression every matching row
satisfies (used to skip files by manifest stats and as a cheap pre-filter), and
``mask(table)``, the exact rows. pyarrow expressions are both at once. A SQL string is
evaluated by DuckDB itself over the rows (no translation that could change its meaning:
three-valued logic, casts, LIKE, functions all behave as in DuckDB); its ``prune`` is
derived only from the top-level conjuncts whose meaning in Arrow provably matches, and
is ``None`` (no pruning) otherwise.
"""

from __future__ import annotations

import json
import os
import threading
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .errors import FilterError

Filter = pc.Expression | str | None

_TABLE = "__spacefs_rows"
_ALIAS = "__spacefs_match"
_ROW = "__spacefs_row"


class Predicate:
    """A checked filter: ``prune`` for files and pre-filtering, ``mask`` for exact rows.

    Picklable (Ray tasks apply it): it holds the filter and names, never a connection.
    """

    def __init__(self, filter_: pc.Expression | str, prune: pc.Expression | None, columns: list[str] | None,
                 what: str = "", exact: pc.Expression | None = None):
        self.filter = filter_
        self.prune = prune
        # Index columns ``mask`` reads (None: all of them).
        self.columns = columns
        self.what = what or f"SQL filter {filter_!r}"
        # An Arrow expression with exactly the filter's meaning, when there is one: a
        # pyarrow filter, or SQL made only of conjuncts Arrow evaluates identically
        # (``id = 5``, ``label IN ('a', 'b')``): no DuckDB round trip per file then.
        self.exact = filter_ if isinstance(filter_, pc.Expression) else exact

    def __repr__(self) -> str:
        return f"Predicate({self.filter!r})"

    def mask(self, table: pa.Table) -> np.ndarray:
        """Which rows of ``table`` match (null counts as no match), in row order."""
        if table.num_rows == 0:
            return np.zeros(0, dtype=bool)
        if self.exact is not None:
            import pyarrow.dataset as pds  # lazy: it imports pandas (slow start-up)

            col = pds.dataset(table).to_table(columns={"m": self.exact}).column("m")
            return pc.fill_null(col, False).to_numpy(zero_copy_only=False).astype(bool, copy=False)
        return _evaluate(self.filter, table.select(self.columns or []), self.what)

    def apply(self, table: pa.Table) -> pa.Table:
        """The matching rows of ``table``, in order."""
        if self.exact is not None:
            return table.filter(self.exact)
        return table.filter(pa.array(self.mask(table))) if table.num_rows else table

    def scan(self, dataset: Any, names: Sequence[str]) -> pa.Table:
        """Columns ``names`` of the matching rows of a pyarrow dataset."""
        if self.exact is not None:
            return dataset.to_table(columns=list(names), filter=self.exact)
        extra = [c for c in self.columns or [] if c not in names]
        t = dataset.to_table(columns=[*names, *extra], filter=self.prune)
        return self.apply(t).select(list(names))


def predicate(filter_: Filter | Predicate, schema: pa.Schema, record_fields: Sequence[str],
              where: str) -> Predicate | None:
    """Check ``filter_`` against a dataset's fields (only index fields may be used).

    ``where`` prefixes error messages (e.g. "ds: delete"). Raises ``FilterError`` for
    anything that is not a single side-effect-free row predicate over index fields.
    """
    if filter_ is None or isinstance(filter_, Predicate):
        return filter_
    index_names = [f.name for f in schema if f.name not in record_fields]
    if isinstance(filter_, pc.Expression):
        check_fields(filter_, index_names, list(record_fields), where)
        return Predicate(filter_, filter_, referenced_fields(filter_, index_names) or None)
    if isinstance(filter_, str):
        # Cached: checking costs a few DuckDB round trips, and a Predicate never changes.
        # Keyed by type names: extension types (e.g. TfFeatures) are not hashable.
        key = (filter_, tuple((f.name, str(f.type)) for f in schema), tuple(record_fields), where)
        with _cache_lock:
            p = _cache.get(key)
        if p is None:
            p = _sql_predicate(filter_, schema, tuple(record_fields), where)
            with _cache_lock:
                _cache[key] = p
                while len(_cache) > 256:
                    _cache.popitem(last=False)
        return p
    raise FilterError(f"{where}: filter must be a pyarrow expression or a SQL predicate string, "
                      f"got {type(filter_).__name__}")


def prune_expression(filter_: Filter | Predicate, schema: pa.Schema, record_fields: Sequence[str],
                     where: str) -> pc.Expression | None:
    """The file-pruning expression of any filter (an Arrow expression is taken as is)."""
    if filter_ is None or isinstance(filter_, pc.Expression):
        return filter_
    p = predicate(filter_, schema, record_fields, where)
    return p.prune if p is not None else None


# -- SQL predicates ----------------------------------------------------------------

_cache: OrderedDict[tuple, Predicate] = OrderedDict()
_cache_lock = threading.Lock()


def _sql_predicate(text: str, schema: pa.Schema, record_fields: tuple[str, ...], where: str) -> Predicate:
    index_names = [f.name for f in schema if f.name not in record_fields]
    what = f"{where}: SQL filter {text!r}"
    if not text.strip():
        raise FilterError(f"{what} is empty")
    expr = _parse(text, what)
    _refuse_constructs(expr, what)
    refs = {p.lower() for n in _walk(expr) if n.get("class") == "COLUMN_REF" for p in n.get("column_names", [])}
    by_lower = {n.lower(): n for n in index_names}
    rec = [f for f in record_fields if f.lower() in refs and f.lower() not in by_lower]
    if rec:
        raise FilterError(f"{what}: filters can only use index fields, not record field(s) {rec}")
    columns = [n for n in index_names if n.lower() in refs]
    _bind(text, schema.empty_table().select(columns or index_names[:1]), what)
    prune, exact = _prune(expr, schema, by_lower)
    return Predicate(text, prune, columns, what, prune if exact else None)


def _query(text: str) -> str:
    # Newlines keep a trailing "-- comment" in the predicate from eating the rest.
    return f"SELECT (\n{text}\n) AS {_ALIAS} FROM {_TABLE}"


def _parse(text: str, what: str) -> dict[str, Any]:
    """DuckDB's own parse of the predicate, refusing anything but one plain expression."""
    import duckdb

    try:
        raw = _connection().execute("SELECT json_serialize_sql(?)", [_query(text)]).fetchall()[0][0]
    except duckdb.Error as e:
        raise FilterError(f"{what}: {_first_line(e)}") from None
    doc = json.loads(raw)
    if doc.get("error"):
        msg = doc.get("error_message", "cannot be parsed")
        if "Only SELECT" in msg:
            msg = "is not a single SQL expression"
        raise FilterError(f"{what}: {msg}")
    stmts = doc.get("statements") or []
    node = stmts[0].get("node", {}) if len(stmts) == 1 else {}
    frm = node.get("from_table") or {}
    sel = node.get("select_list") or []
    plain = (node.get("type") == "SELECT_NODE" and len(sel) == 1 and sel[0].get("alias") == _ALIAS
             and frm.get("type") == "BASE_TABLE" and frm.get("table_name") == _TABLE
             and not frm.get("schema_name") and not frm.get("catalog_name")
             and not node.get("modifiers") and not (node.get("cte_map") or {}).get("map")
             and node.get("where_clause") is None and not node.get("group_expressions")
             and node.get("having") is None and node.get("qualify") is None and node.get("sample") is None)
    if not plain:
        raise FilterError(f"{what}: is not a single SQL expression")
    return sel[0]


def _walk(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        if "class" in node:
            yield node
        for v in node.values():
            yield from _walk(v)
    elif isinstance(node, list):
        for v in node:
            yield from _walk(v)


def _refuse_constructs(expr: dict[str, Any], what: str) -> None:
    """Refuse what a per-row evaluation over one dataset's index rows cannot mean."""
    kinds = _function_kinds()
    for n in _walk(expr):
        cls = n.get("class")
        if cls == "SUBQUERY":
            raise FilterError(f"{what}: subqueries are not supported (a filter sees only this dataset's index fields)")
        if cls == "WINDOW":
            raise FilterError(f"{what}: window function {n.get('function_name')!r} is not a row predicate")
        if cls == "STAR":
            raise FilterError(f"{what}: * and COLUMNS(...) are not supported in a filter")
        if cls == "PARAMETER":
            raise FilterError(f"{what}: prepared-statement parameters are not supported")
        if cls == "FUNCTION":
            name = str(n.get("function_name", "")).lower()
            kind = kinds.get(name)
            if kind == "aggregate":
                raise FilterError(f"{what}: aggregate function {name!r} is not a row predicate")
            if kind == "volatile":
                raise FilterError(f"{what}: function {name!r} is volatile or has side effects")
            if kind == "table":
                raise FilterError(f"{what}: table function {name!r} is not allowed in a filter")


def _bind(text: str, empty: pa.Table, what: str) -> None:
    """Type-check the predicate on an empty table: unknown columns, bad types, a
    non-boolean result and aggregates (selected next to a plain column) all fail here."""
    import duckdb

    con = _connection()
    first = '"' + empty.column_names[0].replace('"', '""') + '"' if empty.num_columns else None
    con.register(_TABLE, empty)
    try:
        rel = con.sql(_query(text))
        kind = str(rel.types[0])
        if first is not None:
            con.sql(f"SELECT (\n{text}\n), {first} FROM {_TABLE}").fetchall()
    except duckdb.Error as e:
        raise FilterError(f"{what}: {_first_line(e)}") from None
    finally:
        con.unregister(_TABLE)
    if kind not in ("BOOLEAN", '"NULL"', "NULL"):
        raise FilterError(f"{what}: is not a predicate (its type is {kind}, not BOOLEAN)")


def _evaluate(text: str, table: pa.Table, what: str) -> np.ndarray:
    """The rows DuckDB's ``WHERE`` keeps, found by their row numbers: exactly a DuckDB
    query's meaning (NULL is no match), whatever order DuckDB returns them in."""
    import duckdb

    n = table.num_rows
    rows = pa.Table.from_arrays([*table.columns, pa.array(np.arange(n, dtype=np.int64))],
                                names=[*table.column_names, _ROW])
    con = _connection()
    con.register(_TABLE, rows)
    try:
        hits = con.sql(f"SELECT {_ROW} FROM {_TABLE} WHERE (\n{text}\n)").to_arrow_table().column(0)
    except duckdb.Error as e:
        raise FilterError(f"{what}: {_first_line(e)}") from None
    finally:
        con.unregister(_TABLE)
    mask = np.zeros(n, dtype=bool)
    mask[hits.to_numpy()] = True
    return mask


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


_local = threading.local()


def _connection():
    """A per-thread (and per-process: forks) in-memory DuckDB that cannot touch files,
    the network or extensions, nor change its settings."""
    import duckdb

    con = getattr(_local, "con", None)
    if con is None or getattr(_local, "pid", None) != os.getpid():
        con = duckdb.connect(config={
            "enable_external_access": False,
            "autoload_known_extensions": False,
            "autoinstall_known_extensions": False,
            "lock_configuration": True,
        })
        _local.con, _local.pid = con, os.getpid()
    return con


_kinds: dict[str, str] | None = None
_kinds_lock = threading.Lock()


def _function_kinds() -> dict[str, str]:
    """DuckDB's catalogue: names of aggregate, table, and volatile/side-effect functions."""
    global _kinds
    with _kinds_lock:
        if _kinds is None:
            rows = _connection().execute(
                "SELECT lower(function_name), function_type, stability, has_side_effects FROM duckdb_functions()"
            ).fetchall()
            kinds: dict[str, str] = {}
            for name, ftype, stability, side in rows:
                if ftype == "aggregate":
                    kinds[name] = "aggregate"
                elif ftype in ("table", "table_macro", "pragma"):
                    kinds.setdefault(name, "table")
                elif stability == "VOLATILE" or side:
                    kinds.setdefault(name, "volatile")
            _kinds = kinds
        return _kinds


# -- pruning: only what provably means the same in Arrow ------------------------------

_FLIP = {"COMPARE_LESSTHAN": "COMPARE_GREATERTHAN", "COMPARE_GREATERTHAN": "COMPARE_LESSTHAN",
         "COMPARE_LESSTHANOREQUALTO": "COMPARE_GREATERTHANOREQUALTO",
         "COMPARE_GREATERTHANOREQUALTO": "COMPARE_LESSTHANOREQUALTO", "COMPARE_EQUAL": "COMPARE_EQUAL"}
_OPS = {"COMPARE_LESSTHAN": pc.less, "COMPARE_GREATERTHAN": pc.greater, "COMPARE_LESSTHANOREQUALTO": pc.less_equal,
        "COMPARE_GREATERTHANOREQUALTO": pc.greater_equal, "COMPARE_EQUAL": pc.equal}
# DuckDB sorts NaN above every number (NaN > x is true there, false in Arrow), so on
# float columns only comparisons NaN can never satisfy prune.
_FLOAT_SAFE = {"COMPARE_LESSTHAN", "COMPARE_LESSTHANOREQUALTO", "COMPARE_EQUAL"}


def _prune(expr: dict[str, Any], schema: pa.Schema, by_lower: dict[str, str]) -> tuple[pc.Expression | None, bool]:
    """AND of the top-level conjuncts of the form column <op> literal, column BETWEEN
    literals, column IN (literals): for them a row DuckDB keeps is a row Arrow keeps.
    Anything else contributes nothing (pruning less is always correct). Also says
    whether the result is exact: every conjunct converted, and none on a float column
    (where -0.0, NaN and rounding could still differ)."""
    conjuncts = list(_conjuncts(expr))
    terms = [(t, f) for t, f in (_term(c, schema, by_lower) for c in conjuncts) if t is not None]
    if not terms:
        return None, False
    out = terms[0][0]
    for t, _ in terms[1:]:
        out = out & t
    exact = len(terms) == len(conjuncts) and not any(pa.types.is_floating(f.type) for _, f in terms)
    return out, exact


def _conjuncts(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
    if node.get("type") == "CONJUNCTION_AND":
        for c in node.get("children", []):
            yield from _conjuncts(c)
    else:
        yield node


def _column(node: dict[str, Any], schema: pa.Schema, by_lower: dict[str, str]) -> pa.Field | None:
    if node.get("class") != "COLUMN_REF" or len(node.get("column_names", [])) != 1:
        return None
    name = by_lower.get(node["column_names"][0].lower())
    return schema.field(name) if name is not None else None


def _literal(node: dict[str, Any], field: pa.Field) -> pa.Scalar | None:
    """The constant as a scalar of the column's type, when DuckDB compares them exactly so."""
    if node.get("class") != "CONSTANT":
        return None
    lit = node.get("literal") or {}
    kind, text = lit.get("kind"), lit.get("text")
    t = field.type
    try:
        if kind == "INTEGER" and pa.types.is_integer(t):
            v = int(text)
            info = np.iinfo(t.to_pandas_dtype())
            return pa.scalar(v, t) if info.min <= v <= info.max else None
        if kind in ("INTEGER", "NUMERIC") and pa.types.is_float64(t):
            v = float(text)
            if kind == "INTEGER" and abs(int(text)) > 2 ** 53 or not np.isfinite(v):
                return None
            # DuckDB reads 0.1 as a DECIMAL and divides by 10**scale in double: that equals
            # Python's float() while the digits fit a double exactly (15 of them).
            if kind == "NUMERIC" and "e" not in text.lower() and sum(c.isdigit() for c in text) > 15:
                return None
            return pa.scalar(v, t)
        if kind == "STRING" and (pa.types.is_string(t) or pa.types.is_large_string(t)):
            return pa.scalar(text, t)
    except (ValueError, TypeError, OverflowError, pa.ArrowException):
        return None
    return None


def _term(node: dict[str, Any], schema: pa.Schema,
          by_lower: dict[str, str]) -> tuple[pc.Expression | None, pa.Field | None]:
    typ = node.get("type")
    if typ in _FLIP:
        left, right, op = node.get("left") or {}, node.get("right") or {}, typ
        if _column(left, schema, by_lower) is None:
            left, right, op = right, left, _FLIP[typ]
        f = _column(left, schema, by_lower)
        if f is None or (pa.types.is_floating(f.type) and op not in _FLOAT_SAFE):
            return None, None
        v = _literal(right, f)
        return (None, None) if v is None else (_OPS[op](pc.field(f.name), v), f)
    if typ == "COMPARE_BETWEEN":
        f = _column(node.get("input") or {}, schema, by_lower)
        if f is None:
            return None, None
        lo, hi = _literal(node.get("lower") or {}, f), _literal(node.get("upper") or {}, f)
        if lo is None or hi is None:
            return None, None
        # x >= lo on floats admits NaN in DuckDB, but x <= hi then rules it out.
        return (pc.field(f.name) >= lo) & (pc.field(f.name) <= hi), f
    if typ == "COMPARE_IN":
        kids = node.get("children") or []
        f = _column(kids[0], schema, by_lower) if kids else None
        if f is None or len(kids) < 2:
            return None, None
        values = [_literal(k, f) for k in kids[1:]]
        if any(v is None for v in values):
            return None, None
        return pc.field(f.name).isin(pa.array([v.as_py() for v in values], f.type)), f
    return None, None


# -- pyarrow expressions -------------------------------------------------------------

def referenced_fields(expr: pc.Expression, names: list[str]) -> list[str]:
    """Fields of ``names`` an expression mentions (pyarrow has no public AST walk)."""
    text = str(expr)
    return [n for n in names if n in text]


def check_fields(expr: pc.Expression, index_names: list[str], record_fields: list[str], where: str) -> None:
    """Reject filters on record fields or unknown fields with a message naming them."""
    text = str(expr)
    rec = [f for f in record_fields if f in text]
    if rec and not any(n in text for n in index_names if n not in rec):
        raise FilterError(f"{where}: filters can only use index fields, not record field(s) {rec}")
    if _unknown_field(text, expr, tuple(index_names)):
        raise FilterError(f"{where}: filter {expr} names a field that is not an index field ({index_names})")


_known: OrderedDict[tuple[str, tuple[str, ...]], bool] = OrderedDict()


def _unknown_field(text: str, expr: pc.Expression, index_names: tuple[str, ...]) -> bool:
    """Whether ``expr`` (printed as ``text``) names a field outside ``index_names``.

    Binding it to an empty table of those fields tells, but starts a dataset scan (about
    1 ms warm, 10 ms after the CPU caches went cold: most of a 1% key-range read); the
    answer depends only on the field names, which ``text`` spells out, so it is cached.
    """
    import pyarrow.dataset as pds  # lazy: it imports pandas (slow start-up)

    key = (text, index_names)
    with _cache_lock:
        if key in _known:
            _known.move_to_end(key)
            return _known[key]
    unknown = False
    try:
        pds.dataset(pa.table({n: pa.array([], pa.null()) for n in index_names})).to_table(filter=expr)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as e:
        unknown = "No match for FieldRef" in str(e)
    with _cache_lock:
        _known[key] = unknown
        while len(_known) > 256:
            _known.popitem(last=False)
    return unknown


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
