"""Aggregate statistical disclosure control for any output table.

`disclosure_control(table, count_columns, rules)` applies the rules file's
`aggregates` section (governance.md 6.3; HESA rounding; UK TRE threshold):

1. primary suppression: every count below ``threshold`` (zeros too, unless
   declared structural);
2. secondary suppression so no suppressed cell can be rebuilt from margins.
   The attacker is assumed to know every margin exactly (conservative, even
   when this table does not print them) and every published cell unrounded:
   a. every line (row, column, or along any dimension of a longer table) with
      exactly one suppressed cell gets a second one, the smallest other cell;
   b. linear audit: a suppressed cell is exposed if it is determined by the
      line equations (its unit vector lies in their row space, checked through
      the null space by SVD); another cell of its lines is suppressed until none is;
   c. with scipy available, a bounds audit: the feasible range of each
      suppressed cell under the line equations and non-negativity must not
      collapse to a point (e.g. zeros implied by a margin); fixed the same way;
3. rounding of published counts to base 5, HESA style (<2.5 -> 0, halves up);
4. totals (``totals=True``): from unrounded values, then rounded and suppressed
   like any cell;
5. percentages (``percentages=``): suppressed when the numerator is suppressed
   or below ``min_numerator``, or the denominator below ``min_denominator``;
   computed from rounded counts by default (OpenSAFELY's stricter practice);
6. means (``means={mean_column: n_column}``): shown only when n >= ``min_n``.

Works on a long table (several dimension columns, one count column, e.g.
specialty_group x level -> n) or a wide one (one dimension column, several
count columns). Suppressed counts are null with a ``<count>_suppressed`` flag
column; `to_csv_frame` renders them as "..".
"""

from __future__ import annotations

from typing import Any, Iterable

import numpy as np
import polars as pl

from etl.governance.rules import aggregate_rules

COL_DIM = "__col"
TOTAL = "Total"


def hesa_round(v: float, base: int = 5) -> int:
    """Round to the nearest multiple of base; below base/2 -> 0; halves up."""
    if v < base / 2:
        return 0
    return int(np.floor(v / base + 0.5)) * base


class _Grid:
    """Cells of a table with named dimensions; lines are the cells that differ in one dimension."""

    def __init__(self, keys: list[tuple], values: np.ndarray, dims: list[str]):
        self.keys, self.values, self.dims = keys, values.astype(float), dims
        self.index = {k: i for i, k in enumerate(keys)}
        self.lines: list[list[int]] = []
        for d in range(len(dims)):
            groups: dict[tuple, list[int]] = {}
            for i, k in enumerate(keys):
                groups.setdefault(k[:d] + k[d + 1:], []).append(i)
            self.lines += [g for g in groups.values()]
        self.cell_lines: list[list[int]] = [[] for _ in keys]
        for li, line in enumerate(self.lines):
            for i in line:
                self.cell_lines[i].append(li)

    def margins(self) -> np.ndarray:
        return np.array([self.values[line].sum() for line in self.lines])


def _nullspace_exposed(grid: _Grid, supp: np.ndarray) -> list[int]:
    """Suppressed cells whose value the line equations determine."""
    idx = np.flatnonzero(supp)
    if idx.size == 0:
        return []
    pos = {c: j for j, c in enumerate(idx)}
    rows = []
    for line in grid.lines:
        r = np.zeros(idx.size)
        hit = False
        for c in line:
            if supp[c]:
                r[pos[c]] = 1.0
                hit = True
        if hit:
            rows.append(r)
    if not rows:
        return list(idx)
    a = np.array(rows)
    _, s, vt = np.linalg.svd(a)
    rank = int((s > 1e-9 * max(a.shape)).sum())
    null = vt[rank:].T
    if null.shape[1] == 0:
        return list(idx)
    norms = np.linalg.norm(null, axis=1)
    return [int(idx[j]) for j in np.flatnonzero(norms < 1e-9)]


def _bounds(grid: _Grid, supp: np.ndarray, cells: Iterable[int]) -> dict[int, tuple[float, float]] | None:
    """Feasible [min, max] of each given suppressed cell under the line equations
    and x >= 0 (scipy linprog); None when scipy is not available."""
    try:
        from scipy.optimize import linprog
    except ImportError:
        return None
    idx = np.flatnonzero(supp)
    pos = {c: j for j, c in enumerate(idx)}
    a_eq, b_eq = [], []
    for line in grid.lines:
        r = np.zeros(idx.size)
        known = 0.0
        hit = False
        for c in line:
            if supp[c]:
                r[pos[c]] = 1.0
                hit = True
            else:
                known += grid.values[c]
        if hit:
            a_eq.append(r)
            b_eq.append(grid.values[line].sum() - known)
    a_eq, b_eq = np.array(a_eq), np.array(b_eq)
    out = {}
    for c in cells:
        obj = np.zeros(idx.size)
        obj[pos[c]] = 1.0
        lo = linprog(obj, A_eq=a_eq, b_eq=b_eq, bounds=(0, None), method="highs")
        hi = linprog(-obj, A_eq=a_eq, b_eq=b_eq, bounds=(0, None), method="highs")
        if lo.status == 0 and hi.status == 0:
            out[c] = (float(lo.fun), float(-hi.fun))
    return out


def _secondary(grid: _Grid, supp: np.ndarray, structural: np.ndarray, log: dict, max_lp_cells: int = 400) -> np.ndarray:
    supp = supp.copy()
    secondary = np.zeros_like(supp)

    def candidates(cell: int) -> list[int]:
        cs = {c for li in grid.cell_lines[cell] for c in grid.lines[li]
              if not supp[c] and not structural[c]}
        return sorted(cs, key=lambda c: (grid.values[c], c))

    # a. at least two suppressed cells in every line that has one
    changed = True
    while changed:
        changed = False
        for line in grid.lines:
            s = [c for c in line if supp[c]]
            if len(s) == 1:
                cands = sorted((c for c in line if not supp[c] and not structural[c]),
                               key=lambda c: (grid.values[c], c))
                if cands:
                    supp[cands[0]] = secondary[cands[0]] = True
                    changed = True
    # b. linear audit: while a suppressed cell is determined, suppress another
    # cell of its lines (one that frees it if there is one, else the smallest)
    unprotectable: set[int] = set()

    def suppress_partner(cell: int, still_exposed) -> None:
        """Suppress one more cell of `cell`'s lines: the smallest that frees
        it, else the smallest; a cell with no candidate is unprotectable."""
        cands = candidates(cell)
        if not cands:
            unprotectable.add(cell)
            return
        chosen = cands[0]
        for cand in cands:
            supp[cand] = True
            freed = not still_exposed(cell)
            supp[cand] = False
            if freed:
                chosen = cand
                break
        supp[chosen] = secondary[chosen] = True

    def pinned_by_bounds(cell: int) -> bool:
        bb = _bounds(grid, supp, [cell])
        return not (bb and cell in bb and bb[cell][1] - bb[cell][0] >= 0.5)

    for _ in range(grid.values.size):
        exposed = [c for c in _nullspace_exposed(grid, supp) if c not in unprotectable]
        if not exposed:
            break
        suppress_partner(exposed[0], lambda c: c in _nullspace_exposed(grid, supp))
    # c. bounds audit (non-negativity), when scipy is there: same remedy
    pinned_left: list[int] = []
    bounds_run = False
    if supp.sum() <= max_lp_cells:
        for _ in range(grid.values.size):
            b = _bounds(grid, supp, [int(i) for i in np.flatnonzero(supp)])
            if b is None:
                break
            bounds_run = True
            pinned = [c for c, (lo, hi) in b.items() if hi - lo < 0.5 and c not in unprotectable]
            if not pinned:
                break
            suppress_partner(pinned[0], pinned_by_bounds)
        if bounds_run:
            b = _bounds(grid, supp, [int(i) for i in np.flatnonzero(supp)]) or {}
            pinned_left = [c for c, (lo, hi) in b.items() if hi - lo < 0.5]
    final_exposed = set(_nullspace_exposed(grid, supp))
    log["audit"] = {
        "attacker": "knows every margin and every published cell, unrounded",
        "linear": "no suppressed cell is determined by the margins" if not final_exposed
                  else f"{len(final_exposed)} suppressed cell(s) determined by the margins (a line of one cell)",
        "bounds": ("not run (scipy unavailable or too many cells)" if not bounds_run else
                   ("every suppressed cell has a feasible range wider than one" if not pinned_left else
                    f"{len(pinned_left)} suppressed cell(s) pinned by non-negativity (a margin below the threshold)")),
        "unprotectable_cells": len(final_exposed | set(pinned_left)),
    }
    log["_secondary_mask"] = secondary
    return supp


def disclosure_control(table: pl.DataFrame, count_columns: list[str] | str, rules: Any = None, *,
                       dims: list[str] | None = None, structural_zeros: Iterable[tuple[int, str]] = (),
                       totals: bool = False, percentages: str | None = None,
                       means: dict[str, str] | None = None) -> tuple[pl.DataFrame, dict]:
    """Protect the count cells of `table` under the rules' aggregate section.

    rules: a Rules object, the raw rules mapping (YAML) or None (defaults:
    threshold 10, zeros suppressed, secondary suppression, round to 5 HESA,
    percentages base 22.5 / numerator 10 from rounded counts, means n >= 10).
    structural_zeros: (row index, count column) pairs that are zero by
    definition (published as 0). percentages: "row", "column" or a dimension
    name: the share of each cell in its line along that dimension.
    Returns (protected table, log); the log holds counts and category labels, no rows.
    """
    cfg = aggregate_rules(rules)
    count_columns = [count_columns] if isinstance(count_columns, str) else list(count_columns)
    means = means or {}
    missing = [c for c in count_columns + list(means) + list(means.values()) if c not in table.columns]
    if missing:
        raise ValueError(f"disclosure_control: columns not in the table: {missing}")
    mean_cols = set(means)
    dims = dims if dims is not None else [c for c in table.columns
                                          if c not in count_columns and c not in mean_cols
                                          and c not in means.values()]
    wide = len(count_columns) > 1
    grid_dims = dims + ([COL_DIM] if wide else [])
    thr = cfg["threshold"]
    base = cfg["rounding"]["base"] if cfg["rounding"] else None
    struct_set = {(int(r), c) for r, c in structural_zeros}

    # cells in long form
    keys, vals, where = [], [], []
    dim_vals = table.select(dims).rows() if dims else [()] * table.height
    for r, dv in enumerate(dim_vals):
        for c in count_columns:
            keys.append(tuple(dv) + ((c,) if wide else ()))
            v = table[r, c]
            vals.append(0 if v is None else v)
            where.append((r, c))
    if len(set(keys)) != len(keys):
        raise ValueError("disclosure_control: the dimension columns do not identify each row "
                         "(aggregate first or pass dims=)")
    grid = _Grid(keys, np.array(vals, dtype=float), grid_dims)
    structural = np.array([(w in struct_set) for w in where], dtype=bool)
    if (grid.values[structural] != 0).any():
        raise ValueError("disclosure_control: a declared structural zero is not zero")

    v = grid.values
    primary = (v < thr) & ~structural
    if not cfg["suppress_zeros"]:
        primary &= v != 0
    log: dict[str, Any] = {"method": "etl.governance.disclosure_control", "threshold": thr,
                           "suppress_zeros": cfg["suppress_zeros"], "rounding": cfg["rounding"],
                           "totals": cfg["totals"], "cells": int(v.size), "primary": int(primary.sum()),
                           "structural_zeros": int(structural.sum())}
    supp = primary.copy()
    if cfg["secondary_suppression"] and primary.any() and grid_dims:
        supp = _secondary(grid, primary, structural, log)
        sec_mask = log.pop("_secondary_mask")
        log["secondary"] = int(sec_mask.sum())
    else:
        log["secondary"] = 0
        log["audit"] = {"linear": "not run (secondary suppression off)" if not cfg["secondary_suppression"]
                        else "nothing suppressed", "unprotectable_cells": 0 if not primary.any() else None}
    log["suppressed"] = int(supp.sum())
    log["suppressed_cells"] = log["suppressed"]

    def rnd(x: float) -> int:
        return hesa_round(x, base) if base else int(x)

    published = [None if supp[i] else (0 if structural[i] else rnd(v[i])) for i in range(v.size)]
    log["rounded_to_base"] = base

    # suppression per category (for "cells suppressed by SES/ethnicity group")
    by_dim: dict[str, dict[str, int]] = {}
    for d, name in enumerate(grid_dims):
        cnt: dict[str, int] = {}
        for i, k in enumerate(keys):
            if supp[i]:
                cnt[str(k[d])] = cnt.get(str(k[d]), 0) + 1
        by_dim["columns" if name == COL_DIM else name] = cnt
    log["suppressed_by"] = by_dim
    log["class_disclosure_lines"] = _class_disclosure(grid, thr)

    # build the output table
    out = table.clone()
    for c in count_columns:
        col_vals, flags = [], []
        for r in range(table.height):
            i = r * len(count_columns) + count_columns.index(c)
            col_vals.append(published[i])
            flags.append(bool(supp[i]))
        out = out.with_columns(pl.Series(c, col_vals, dtype=pl.Int64),
                               pl.Series(f"{c}_suppressed", flags, dtype=pl.Boolean))

    if totals:
        out, tlog = _add_totals(out, table, dims, count_columns, wide, thr, rnd)
        log["totals_added"] = tlog
    if percentages:
        out, plog = _percentages(out, table, dims, count_columns, wide, percentages, cfg, totals)
        log["percentages"] = plog
    if means:
        min_n = cfg["means"]["min_n"]
        n_sup = 0
        for mcol, ncol in means.items():
            nvals = table.get_column(ncol)
            bad = (nvals.is_null() | (nvals < min_n)).to_list()
            flag = f"{ncol}_suppressed"
            if flag in out.columns:
                bad = [b or bool(f) for b, f in zip(bad, out.get_column(flag).head(table.height).to_list())]
            n_sup += sum(bad)
            mask = pl.Series(bad + [True] * (out.height - table.height), dtype=pl.Boolean)
            out = out.with_columns(pl.when(mask).then(None).otherwise(pl.col(mcol)).alias(mcol))
        log["means"] = {"min_n": min_n, "suppressed": n_sup}
    return out, log


def _class_disclosure(grid: _Grid, thr: int) -> int:
    """Lines (with margin >= threshold) where every unit falls in one cell:
    'all of group X did Y' statements an output checker should look at."""
    n = 0
    for line in grid.lines:
        vals = grid.values[line]
        if len(line) > 1 and vals.sum() >= thr and (vals > 0).sum() == 1:
            n += 1
    return n


def _add_totals(out: pl.DataFrame, table: pl.DataFrame, dims: list[str], count_columns: list[str],
                wide: bool, thr: int, rnd) -> tuple[pl.DataFrame, dict]:
    """Margins from unrounded values, rounded; suppressed when below the threshold."""
    n_sup = 0

    def protect(x: float) -> tuple[int | None, bool]:
        nonlocal n_sup
        if x < thr:
            n_sup += 1
            return None, True
        return rnd(x), False

    if wide:
        if len(dims) > 1:
            raise ValueError("totals=True on a wide table needs a single dimension column")
        raw = table.select(count_columns).fill_null(0)
        rt = raw.sum_horizontal().to_list()
        tv, tf = zip(*[protect(x) for x in rt]) if rt else ((), ())
        out = out.with_columns(pl.Series("total", list(tv), dtype=pl.Int64),
                               pl.Series("total_suppressed", list(tf), dtype=pl.Boolean))
        row: dict[str, Any] = {d: None for d in out.columns}
        if dims:
            row[dims[0]] = TOTAL
        for c in count_columns:
            row[c], row[f"{c}_suppressed"] = protect(float(raw.get_column(c).sum()))
        row["total"], row["total_suppressed"] = protect(float(raw.sum_horizontal().sum()))
        out = pl.concat([out, pl.DataFrame([row], schema=out.schema)], how="vertical")
        return out, {"suppressed_totals": n_sup}
    if len(dims) > 2 or len(count_columns) != 1:
        raise ValueError("totals=True supports one or two dimension columns")
    c = count_columns[0]
    raw = table.with_columns(pl.col(c).fill_null(0))
    rows = []
    groupings = [[d] for d in dims] if len(dims) == 2 else []
    for g in groupings:
        other = [d for d in dims if d not in g][0]
        agg = raw.group_by(g, maintain_order=True).agg(pl.col(c).sum())
        for gv, x in agg.iter_rows():
            r = {d: None for d in out.columns}
            r[g[0]], r[other] = gv, TOTAL
            r[c], r[f"{c}_suppressed"] = protect(float(x))
            rows.append(r)
    r = {d: None for d in out.columns}
    for d in dims:
        r[d] = TOTAL
    r[c], r[f"{c}_suppressed"] = protect(float(raw.get_column(c).sum()))
    rows.append(r)
    tot = pl.DataFrame(rows, schema=out.schema) if rows else out.clear()
    return pl.concat([out, tot], how="vertical"), {"suppressed_totals": n_sup}


def _percentages(out: pl.DataFrame, table: pl.DataFrame, dims: list[str], count_columns: list[str],
                 wide: bool, along: str, cfg: dict, totals: bool) -> tuple[pl.DataFrame, dict]:
    p = cfg["percentages"]
    rounded_basis = p["basis"] == "rounded_counts"
    base = cfg["rounding"]["base"] if cfg["rounding"] else None
    grid_dims = dims + ([COL_DIM] if wide else [])
    if along == "row":
        along = grid_dims[-1]
    elif along == "column":
        along = grid_dims[0]
    if along not in grid_dims:
        raise ValueError(f"percentages: '{along}' is not a dimension ({grid_dims})")
    d = grid_dims.index(along)
    n = table.height
    # true and rounded denominators per line
    cells = []
    for r in range(n):
        dv = tuple(table.select(dims).row(r)) if dims else ()
        for c in count_columns:
            k = dv + ((c,) if wide else ())
            x = table[r, c] or 0
            cells.append((r, c, k[:d] + k[d + 1:], float(x)))
    den_true: dict[tuple, float] = {}
    for _, _, g, x in cells:
        den_true[g] = den_true.get(g, 0.0) + x
    den_rounded = {g: (hesa_round(x, base) if base else x) for g, x in den_true.items()}
    n_sup = 0
    pct: dict[tuple[int, str], float | None] = {}
    for r, c, g, x in cells:
        pub = out[r, c]
        bad = (pub is None or x < p["min_numerator"] or den_true[g] < p["min_denominator"])
        if bad:
            n_sup += 1
            pct[(r, c)] = None
            continue
        num, den = (pub, den_rounded[g]) if rounded_basis else (x, den_true[g])
        pct[(r, c)] = round(100.0 * num / den, 1) if den else None
    for c in count_columns:
        vals = [pct[(r, c)] for r in range(n)] + [None] * (out.height - n)
        out = out.with_columns(pl.Series(f"{c}_pct", vals, dtype=pl.Float64))
    return out, {"along": "columns" if along == COL_DIM else along, "basis": p["basis"],
                 "min_denominator": p["min_denominator"], "min_numerator": p["min_numerator"],
                 "suppressed": n_sup}


def to_csv_frame(protected: pl.DataFrame, count_columns: list[str] | str, marker: str = "..") -> pl.DataFrame:
    """Counts as strings with the marker where suppressed; flag columns dropped."""
    count_columns = [count_columns] if isinstance(count_columns, str) else list(count_columns)
    extra = [c for c in ("total",) if c in protected.columns]
    out = protected
    for c in count_columns + extra:
        flag = f"{c}_suppressed"
        out = out.with_columns(pl.when(pl.col(flag)).then(pl.lit(marker))
                               .otherwise(pl.col(c).cast(pl.String)).alias(c))
    return out.drop([f"{c}_suppressed" for c in count_columns + extra if f"{c}_suppressed" in out.columns])


__all__ = ["disclosure_control", "to_csv_frame", "hesa_round"]
