"""Aggregations (Ray's `ray.data.aggregate`): `Count`, `Sum`, `Min`, `Max`, `Mean`, `Std`, for
`ds.groupby(key).aggregate(...)` and `ds.aggregate(...)`.

Each runs in two steps so that a block is read once and only small tables move:

- partial, per block (map side): `Table.group_by(keys).aggregate(...)` computes the *states*
  of each group present in the block, e.g. the sum and the count of non-null values for a mean;
  states shared by several aggregations (the sum of `x` for `Sum("x")` and `Mean("x")`) are
  computed once;
- combine (reduce side): the partial tables are concatenated and grouped again; states are
  combined (sum of counts and sums, min of mins, max of maxes; `Std` merges per-block
  (count, mean, M2) with Chan's parallel formula, which stays accurate for large values) and
  finalized into one value per group. The output is sorted by the keys.

Nulls in the aggregated column are skipped (Ray's `ignore_nulls=True`, pandas' default): a
group whose values are all null gets null; with `ignore_nulls=False` a group with any null
value gets null (as Ray); `Std` of fewer than `ddof + 1` values is NaN (as
Ray and pandas). `Count()` counts rows; `Count(on, ignore_nulls=True)` counts non-null values.
Null keys form a group of their own, as in Ray (pandas: `groupby(..., dropna=False)`).

`AggregateFn(init, merge, accumulate_row=... | accumulate_block=..., finalize=..., name=...)` is
Ray's accumulator-style custom aggregation: per block, each group's accumulator starts from
`init(key)` and takes the group's rows (`accumulate_row(acc, row)`, row a dict) or the group's
rows as one Arrow table (`accumulate_block(acc, table)`); the accumulators travel pickled in a
binary column of the partial table and are merged group by group in the combine step, then
`finalize`d. `key` is None for a global aggregation, the key's value for one key, a tuple for
several.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import cloudpickle
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from . import block as B
from . import pyobject

_ROW = "__orrery_row__"
# How a partial state is combined across blocks; states missing here ("mean", "variance") are
# combined by their aggregation's own `result`.
_COMBINE = {"count_all": "sum", "count": "sum", "sum": "sum", "min": "min", "max": "max"}

State = tuple[str | None, str]  # (column, Arrow hash aggregation); column None: count of rows


def state_name(state: State) -> str:
    """The column Arrow's group_by names the state (`x_sum`, `count_all`)."""
    col, fn = state
    return fn if col is None else f"{col}_{fn}"


class AggregateFn:
    """An aggregation; `name` is its output column, `on` the column it reads (None: rows).

    Constructed directly, it is Ray's custom accumulator-style aggregation (see the module's
    docstring); the built-in ones (Count, Sum, ...) are subclasses computed by Arrow."""

    def __init__(self, init: Callable[[Any], Any], merge: Callable[[Any, Any], Any], name: str | None = None,
                 accumulate_row: Callable[[Any, dict], Any] | None = None,
                 accumulate_block: Callable[[Any, pa.Table], Any] | None = None,
                 finalize: Callable[[Any], Any] | None = None) -> None:
        for arg, fn in (("init", init), ("merge", merge), ("accumulate_row", accumulate_row),
                        ("accumulate_block", accumulate_block), ("finalize", finalize)):
            if fn is not None and not callable(fn):
                raise TypeError(f"AggregateFn: {arg} must be a function, got {fn!r}.")
        if (accumulate_row is None) == (accumulate_block is None):
            raise ValueError("AggregateFn: give exactly one of accumulate_row (called with the accumulator "
                             "and each row, a dict) and accumulate_block (called with the accumulator and "
                             "a group's rows as a pyarrow.Table).")
        if not isinstance(name, str) or not name:
            raise ValueError("AggregateFn: name the aggregation (name='...'); the name is its output column.")
        self.name, self.on = name, None
        self._init, self._merge, self._finalize = init, merge, finalize or (lambda acc: acc)
        self._accumulate_row, self._accumulate_block = accumulate_row, accumulate_block
        self.state_column = f"__orrery_acc__{name}"

    def __repr__(self) -> str:
        return f"AggregateFn(name={self.name!r})"

    def states(self) -> list[State]:
        """The Arrow hash aggregations it needs per block (none for a custom one)."""
        return []

    def accumulate(self, group: pa.Table, key: Any) -> bytes:
        """A custom aggregation's accumulator for one group of one block, pickled."""
        acc = self._init(key)
        if self._accumulate_block is not None:
            acc = self._accumulate_block(acc, group)
        else:
            for row in B.rows_of(group):
                acc = self._accumulate_row(acc, row)
        return cloudpickle.dumps(acc, protocol=5)

    def result(self, combined: dict[str, pa.ChunkedArray], partials: pa.Table, gid: np.ndarray,
               groups: int) -> pa.Array | pa.ChunkedArray:
        """One value per group from the combined states (and, for Std and custom aggregations,
        the partial rows and their group ids)."""
        accs: list[Any] = [None] * groups
        seen = np.zeros(groups, bool)
        for g, raw in zip(gid.tolist(), partials.column(self.state_column).to_pylist()):
            acc = cloudpickle.loads(raw)
            accs[g] = self._merge(accs[g], acc) if seen[g] else acc
            seen[g] = True
        return pyobject.column([self._finalize(acc) for acc in accs])

    def empty_value(self) -> Any:
        """The value of a global aggregation over no rows."""
        return None


class AggregateFnV2(AggregateFn):
    """Ray's newer form of a custom aggregation: subclass it and define
    `aggregate_block(block) -> accumulator` (block: the rows of one group of one block, a
    pyarrow.Table), `combine(acc, other) -> accumulator` and, if needed,
    `finalize(acc) -> value`. As in Ray, a None accumulator means "no value": with
    ignore_nulls=True it is skipped when combining, with ignore_nulls=False it makes the
    result None."""

    def __init__(self, name: str, zero_factory: Callable[[], Any], *, on: str | None, ignore_nulls: bool) -> None:
        if not isinstance(name, str) or not name:
            raise ValueError(f"{type(self).__name__}: name must be a non-empty string (the output column), got {name!r}.")
        if not callable(zero_factory):
            raise TypeError(f"{type(self).__name__}: zero_factory must be a function, got {zero_factory!r}.")
        super().__init__(init=lambda _key: zero_factory(), merge=self._combine_or_none,
                         accumulate_block=lambda _acc, block: self.aggregate_block(block),
                         finalize=lambda acc: None if acc is None else self.finalize(acc), name=name)
        if on is not None and not isinstance(on, str):
            raise TypeError(f"{type(self).__name__}: on must be a column name or None, got {on!r}.")
        self.on, self._target_col_name, self._ignore_nulls = on, on, ignore_nulls

    def get_target_column(self) -> str | None:
        return self._target_col_name

    def get_agg_name(self) -> str:
        return self.name.split("(", 1)[0]

    def aggregate_block(self, block: pa.Table) -> Any:
        raise NotImplementedError(f"{type(self).__name__} must define aggregate_block(self, block)")

    def combine(self, current_accumulator: Any, new: Any) -> Any:
        raise NotImplementedError(f"{type(self).__name__} must define combine(self, current_accumulator, new)")

    def finalize(self, accumulator: Any) -> Any:
        return accumulator

    def _combine_or_none(self, a: Any, b: Any) -> Any:
        if a is None or b is None:
            return (b if a is None else a) if self._ignore_nulls else None
        return self.combine(a, b)


class _ArrowAggregate(AggregateFn):
    """Base of the built-in aggregations, computed from Arrow hash-aggregation states."""

    def __init__(self, name: str, on: str | None) -> None:  # noqa: super().__init__ is the custom form
        if on is not None and not isinstance(on, str):
            raise TypeError(f"{type(self).__name__}: on must be a column name, got {on!r}.")
        self.name, self.on = name, on

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.on!r})"

    def states(self) -> list[State]:
        raise NotImplementedError


class Count(_ArrowAggregate):
    """Rows per group (`count()`), or non-null values of `on` with ignore_nulls=True."""

    def __init__(self, on: str | None = None, ignore_nulls: bool = False, alias_name: str | None = None) -> None:
        super().__init__(alias_name or f"count({on or ''})", on)
        self._state: State = (on, "count") if on is not None and ignore_nulls else (None, "count_all")

    def states(self) -> list[State]:
        return [self._state]

    def result(self, combined: dict, partials: pa.Table, gid: np.ndarray, groups: int) -> Any:
        return combined[state_name(self._state)]

    def empty_value(self) -> Any:
        return 0


class _OfValues(_ArrowAggregate):
    """An aggregation of the values of `on`. ignore_nulls=True (the default, as Ray and pandas)
    skips nulls; with ignore_nulls=False a group with a null value gets null (as Ray), known
    from its count of non-null values being less than its count of rows."""

    def __init__(self, name: str, on: str, ignore_nulls: bool) -> None:
        super().__init__(name, _required(on, type(self).__name__))
        if not isinstance(ignore_nulls, bool):
            raise TypeError(f"{type(self).__name__}: ignore_nulls must be True or False, got {ignore_nulls!r}.")
        self.ignore_nulls = ignore_nulls

    def value_states(self) -> list[State]:
        raise NotImplementedError

    def value(self, combined: dict, partials: pa.Table, gid: np.ndarray, groups: int) -> Any:
        raise NotImplementedError

    def states(self) -> list[State]:
        return self.value_states() + ([] if self.ignore_nulls else [(self.on, "count"), (None, "count_all")])

    def result(self, combined: dict, partials: pa.Table, gid: np.ndarray, groups: int) -> Any:
        out = self.value(combined, partials, gid, groups)
        if self.ignore_nulls:
            return out
        has_null = pc.less(combined[state_name((self.on, "count"))], combined[state_name((None, "count_all"))])
        return pc.if_else(has_null, pa.scalar(None, out.type), out)


class _OneState(_OfValues):
    """An aggregation whose state is its result: Sum, Min, Max."""

    fn = ""

    def __init__(self, on: str | None = None, ignore_nulls: bool = True, alias_name: str | None = None) -> None:
        super().__init__(alias_name or f"{self.fn}({on})", on, ignore_nulls)

    def value_states(self) -> list[State]:
        return [(self.on, self.fn)]

    def value(self, combined: dict, partials: pa.Table, gid: np.ndarray, groups: int) -> Any:
        return combined[state_name((self.on, self.fn))]


class Sum(_OneState):
    fn = "sum"


class _Extreme(_OneState):
    # Ray's zero_factory (the accumulator's start) is accepted and unused: Arrow computes these.
    def __init__(self, on: str | None = None, ignore_nulls: bool = True, alias_name: str | None = None,
                 zero_factory: Callable[[], Any] | None = None) -> None:
        super().__init__(on, ignore_nulls, alias_name)


class Min(_Extreme):
    fn = "min"


class Max(_Extreme):
    fn = "max"


class Mean(_OfValues):
    def __init__(self, on: str | None = None, ignore_nulls: bool = True, alias_name: str | None = None) -> None:
        super().__init__(alias_name or f"mean({on})", on, ignore_nulls)

    def value_states(self) -> list[State]:
        return [(self.on, "sum"), (self.on, "count")]

    def value(self, combined: dict, partials: pa.Table, gid: np.ndarray, groups: int) -> Any:
        total = pc.cast(combined[state_name((self.on, "sum"))], pa.float64())
        return pc.divide(total, pc.cast(combined[state_name((self.on, "count"))], pa.float64()))


class Std(_OfValues):
    """Sample standard deviation (ddof=1 by default) of the non-null values."""

    def __init__(self, on: str | None = None, ddof: int = 1, ignore_nulls: bool = True, alias_name: str | None = None) -> None:
        super().__init__(alias_name or f"std({on})", on, ignore_nulls)
        self.ddof = ddof

    def value_states(self) -> list[State]:
        return [(self.on, "count"), (self.on, "mean"), (self.on, "variance")]

    def value(self, combined: dict, partials: pa.Table, gid: np.ndarray, groups: int) -> Any:
        """Chan et al.: M2 = sum(M2_i) + sum(n_i * (mean_i - mean)^2) over the partial rows."""
        def column(fn: str) -> np.ndarray:
            col = partials.column(state_name((self.on, fn)))
            return pc.fill_null(col, 0).to_numpy().astype(np.float64)
        n_i, mean_i, var_i = column("count"), column("mean"), column("variance")
        n = np.bincount(gid, n_i, minlength=groups)
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = np.bincount(gid, n_i * mean_i, minlength=groups) / n
            m2 = np.bincount(gid, n_i * var_i + n_i * (mean_i - mean[gid]) ** 2, minlength=groups)
            std = np.where(n - self.ddof > 0, np.sqrt(m2 / (n - self.ddof)), np.nan)
        return pa.array(std, mask=n == 0)


def _required(on: Any, agg: str) -> str:
    if not isinstance(on, str):
        raise TypeError(f"{agg}: on must be the name of the column to aggregate, got {on!r}.")
    return on


# -- the two steps ---------------------------------------------------------------------------

def _states(aggs: list[AggregateFn]) -> list[State]:
    return list(dict.fromkeys(s for a in aggs for s in a.states()))


def check_columns(block: pa.Table, keys: list[str], aggs: list[AggregateFn], what: str) -> None:
    B.require_columns(block, keys + [a.on for a in aggs if a.on is not None], what)


def _custom(aggs: list[AggregateFn]) -> list[AggregateFn]:
    return [a for a in aggs if not isinstance(a, _ArrowAggregate)]


def partial(block: pa.Table, keys: list[str], aggs: list[AggregateFn]) -> pa.Table:
    """The states of every group in one block: the key columns, then one column per state,
    then one column of pickled accumulators per custom aggregation."""
    states, custom = _states(aggs), _custom(aggs)
    specs = [(col or [], fn) for col, fn in states]
    if not keys:  # one group: every row
        out = block.group_by([], use_threads=False).aggregate(specs) if specs else None
        columns = {state_name(s): out.column(state_name(s)) for s in states}
        for a in custom:
            columns[a.state_column] = pa.array([a.accumulate(block, None)], pa.binary())
        return pa.table(columns)
    if custom:
        specs.append((_ROW, "list"))
        block = block.append_column(_ROW, pa.array(np.arange(block.num_rows, dtype=np.int64)))
    out = block.group_by(keys, use_threads=False).aggregate(specs)
    result = out.select(keys + [state_name(s) for s in states])
    if custom:
        rows = out.column(f"{_ROW}_list").to_pylist()
        key_values = list(zip(*(out.column(k).to_pylist() for k in keys)))
        key_values = [kv[0] if len(keys) == 1 else kv for kv in key_values]
        block = block.drop_columns([_ROW])
        groups = [block.take(pa.array(r, pa.int64())) for r in rows]
        for a in custom:
            accs = [a.accumulate(g, kv) for g, kv in zip(groups, key_values)]
            result = result.append_column(a.state_column, pa.array(accs, pa.binary()))
    return result


def combine(partials: list[pa.Table], keys: list[str], aggs: list[AggregateFn]) -> pa.Table:
    """The final value of every aggregation for every group in the partial tables, sorted by
    the keys."""
    t = B.concat(partials)
    if t.num_columns == 0:  # no rows at all
        if keys:
            return pa.table({c: pa.array([], pa.null()) for c in keys + [a.name for a in aggs]})
        return pa.table({a.name: [a.empty_value()] for a in aggs})
    simple = [s for s in _states(aggs) if s[1] in _COMBINE]
    specs = [(state_name(s), _COMBINE[s[1]]) for s in simple]
    if keys:
        specs.append((_ROW, "list"))
        t = t.append_column(_ROW, pa.array(np.arange(t.num_rows, dtype=np.int64)))
    g = t.group_by(keys, use_threads=False).aggregate(specs) if specs else None  # None: custom ones only, no keys
    combined = {state_name(s): g.column(f"{state_name(s)}_{_COMBINE[s[1]]}") for s in simple}
    gid = _group_ids(g.column(f"{_ROW}_list"), t.num_rows) if keys else np.zeros(t.num_rows, np.int64)
    out = {k: g.column(k) for k in keys}
    for a in aggs:
        out[a.name] = a.result(combined, t, gid, g.num_rows if g is not None else 1)
    table = pa.table(out)
    return table.sort_by([(k, "ascending") for k in keys]) if keys else table


def _group_ids(lists: pa.ChunkedArray, rows: int) -> np.ndarray:
    """Each row's group (its index in the grouped table), from the groups' lists of row numbers."""
    lists = lists.combine_chunks()
    gid = np.empty(rows, np.int64)
    gid[pc.list_flatten(lists).to_numpy()] = pc.list_parent_indices(lists).to_numpy()
    return gid
