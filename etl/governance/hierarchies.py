"""Generalisation hierarchies, declared as data in the rules file.

A hierarchy turns one column of the restricted tables into a released column at
a given *level*: level 0 is what every release gets; higher levels are coarser
and only used when k-anonymity asks for them. The literal level ``"*"`` hides
the field (every value, null included, becomes ``"*"``).

Types (the rules file says which, with its parameters):

- ``map``: a table of code -> label per level (``default`` for unlisted codes);
- ``lookup``: a reference CSV (``schemas/reference/``), keyed by ``key``, one
  column per level (or ``{column, map, default}`` to merge that column further);
- ``bands``: integer cut points per level (``[19, 20, 22, 26]`` gives
  ``18 or under | 19 | 20-21 | 22-25 | 26 or over``);
- ``year_band``: a year (or a date's year) in bands of ``width`` aligned on ``origin``;
- ``quantile``: ``n`` quantile groups within ``by`` (e.g. a score decile within
  its Foundation year), 1 = top when ``descending``;
- ``date_precision``: a date truncated to ``year`` (Int16) or ``month`` (Date,
  first of month); single level, used for event dates.

All types except ``date_precision`` produce strings, at every level, so a
column's type does not depend on the data. Null stays null (``"*"`` excepted).
A non-null value a level does not cover stops the run with a GovernanceError
that names the column and the hierarchy, never the value.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from etl.errors import ConfigError, GovernanceError

STAR = "*"
TYPES = ("map", "lookup", "bands", "year_band", "quantile", "date_precision")


@dataclass
class Hierarchy:
    name: str
    type: str
    levels: list[Any]                      # normalised per type; STAR allowed
    description: str = ""
    origin: int = 2000                     # year_band
    by: str | None = None                  # quantile
    descending: bool = False               # quantile
    precision: str | None = None           # date_precision
    table: Path | None = None              # lookup
    key: str | None = None                 # lookup
    reference: dict[str, dict[str, str]] = field(default_factory=dict)  # lookup: column -> {key: value}

    # ------------------------------------------------------------------ properties
    @property
    def n_levels(self) -> int:
        return len(self.levels)

    @property
    def max_level(self) -> int:
        return len(self.levels) - 1

    def is_star(self, level: int) -> bool:
        return self.levels[level] == STAR

    @property
    def string_output(self) -> bool:
        return self.type != "date_precision"

    def describe_level(self, level: int) -> str:
        spec = self.levels[level]
        if spec == STAR:
            return "* (field hidden)"
        if self.type == "map":
            n = len(set(spec["map"].values()) | ({spec["default"]} if spec.get("default") else set()))
            return f"{n} groups"
        if self.type == "lookup":
            col, m = spec["column"], spec.get("map")
            return f"{col}" + (" merged" if m else "")
        if self.type == "bands":
            return " | ".join(_band_labels(spec))
        if self.type == "year_band":
            return f"{spec}-year bands from {self.origin}" if spec != 1 else "single year"
        if self.type == "quantile":
            return f"{spec} groups within {self.by}"
        return f"{self.precision} precision"

    def labels(self) -> set[str]:
        """Every label the hierarchy can emit (known in advance for map/lookup/bands)."""
        out: set[str] = set()
        for spec in self.levels:
            if spec == STAR:
                out.add(STAR)
            elif self.type == "map":
                out |= set(spec["map"].values())
                if spec.get("default"):
                    out.add(spec["default"])
            elif self.type == "lookup":
                vals = set(self.reference.get(spec["column"], {}).values())
                if spec.get("map"):
                    vals = {spec["map"].get(v, spec.get("default") or v) for v in vals}
                out |= vals
            elif self.type == "bands":
                out |= set(_band_labels(spec))
        return out

    # ------------------------------------------------------------------ apply
    def apply(self, df: pl.DataFrame, column: str, level: int) -> pl.Series:
        """The released values of `df[column]` at `level` (a Series named `column`)."""
        spec = self.levels[level]
        s = df.get_column(column)
        if spec == STAR:
            return pl.Series(column, [STAR] * df.height, dtype=pl.String)
        if self.type == "map":
            return self._apply_map(s.cast(pl.String), spec, column, level)
        if self.type == "lookup":
            return self._apply_lookup(s.cast(pl.String), spec, column, level)
        if self.type == "bands":
            return _apply_bands(s, spec, column, self.name)
        if self.type == "year_band":
            return _apply_year_band(s, int(spec), self.origin, column, self.name)
        if self.type == "quantile":
            return self._apply_quantile(df, column, int(spec))
        if self.type == "date_precision":
            return _apply_date_precision(s, self.precision, column, self.name)
        raise AssertionError(self.type)

    def _apply_map(self, s: pl.Series, spec: dict, column: str, level: int) -> pl.Series:
        s = s.str.strip_chars()
        mapping, default = spec["map"], spec.get("default")
        out = s.replace_strict(mapping, default=None, return_dtype=pl.String)
        unmapped = s.is_not_null() & out.is_null()
        if unmapped.any():
            if default is None:
                n = int(unmapped.sum())
                raise GovernanceError(
                    f"{n} value(s) of column {column} are not covered by hierarchy "
                    f"'{self.name}' level {level}; add them to the rules or give a default",
                    key=f"hierarchies.{self.name}")
            out = pl.select(pl.when(unmapped).then(pl.lit(default)).otherwise(out)).to_series()
        return out.alias(column)

    def _apply_lookup(self, s: pl.Series, spec: dict, column: str, level: int) -> pl.Series:
        s = s.str.strip_chars()
        ref = self.reference[spec["column"]]
        out = s.replace_strict(ref, default=None, return_dtype=pl.String)
        unmapped = s.is_not_null() & out.is_null()
        if unmapped.any():
            n = int(unmapped.sum())
            raise GovernanceError(
                f"{n} value(s) of column {column} are not in {self.table.name} ({self.key}) "
                f"used by hierarchy '{self.name}'", key=f"hierarchies.{self.name}")
        if spec.get("map"):
            m, default = spec["map"], spec.get("default")
            mapped = out.replace_strict(m, default=None, return_dtype=pl.String)
            if default is not None:
                mapped = pl.select(pl.when(out.is_not_null() & mapped.is_null())
                                   .then(pl.lit(default)).otherwise(mapped)).to_series()
            elif (out.is_not_null() & mapped.is_null()).any():
                raise GovernanceError(
                    f"hierarchy '{self.name}' level {level} does not cover every "
                    f"'{spec['column']}' value of column {column}", key=f"hierarchies.{self.name}")
            out = mapped
        return out.alias(column)

    def _apply_quantile(self, df: pl.DataFrame, column: str, n: int) -> pl.Series:
        if self.by and self.by not in df.columns:
            raise GovernanceError(f"hierarchy '{self.name}' ranks {column} within {self.by}, "
                                  f"which is not in the table", key=f"hierarchies.{self.name}")
        x = pl.col(column).cast(pl.Float64)
        if self.descending:
            x = -x
        over = [self.by] if self.by else None
        rank = x.rank("min")
        cnt = x.count()
        if over:
            rank, cnt = rank.over(over), cnt.over(over)
        q = ((rank - 1) * n / cnt).floor().cast(pl.Int64) + 1
        return df.select(pl.when(pl.col(column).is_null()).then(None)
                         .otherwise(q.cast(pl.String)).alias(column)).to_series()


# ---------------------------------------------------------------------- helpers

def _band_labels(cuts: list[int]) -> list[str]:
    labels = [f"{cuts[0] - 1} or under"]
    for a, b in zip(cuts, cuts[1:]):
        labels.append(f"{a}" if b - a == 1 else f"{a}-{b - 1}")
    labels.append(f"{cuts[-1]} or over")
    return labels


def _numeric(s: pl.Series, column: str, name: str) -> pl.Series:
    if s.dtype in (pl.Date, pl.Datetime):
        return s.dt.year().cast(pl.Int64)
    if s.dtype == pl.String:
        out = s.str.strip_chars().cast(pl.Int64, strict=False)
        if (s.is_not_null() & out.is_null()).any():
            raise GovernanceError(f"column {column} holds non-numeric values; hierarchy '{name}' "
                                  f"needs integers", key=f"hierarchies.{name}")
        return out
    return s.cast(pl.Int64, strict=False)


def _apply_bands(s: pl.Series, cuts: list[int], column: str, name: str) -> pl.Series:
    x = _numeric(s, column, name)
    labels = _band_labels(cuts)
    idx = pl.Series([0] * len(x), dtype=pl.Int64)
    for c in cuts:
        idx = idx + (x >= c).cast(pl.Int64).fill_null(0)
    lab = pl.Series(labels, dtype=pl.String)
    out = lab.gather(idx)
    return pl.select(pl.when(x.is_null()).then(None).otherwise(out)).to_series().alias(column)


def _apply_year_band(s: pl.Series, width: int, origin: int, column: str, name: str) -> pl.Series:
    y = _numeric(s, column, name)
    start = origin + ((y - origin) // width) * width
    if width == 1:
        out = start.cast(pl.String)
    else:
        out = pl.select(pl.concat_str([start.cast(pl.String), pl.lit("-"),
                                       (start + width - 1).cast(pl.String)])).to_series()
    return out.alias(column)


def _apply_date_precision(s: pl.Series, precision: str, column: str, name: str) -> pl.Series:
    if s.dtype == pl.String:
        s = s.str.to_date(strict=False)
    if s.dtype not in (pl.Date, pl.Datetime):
        raise GovernanceError(f"column {column} is not a date; hierarchy '{name}' needs one",
                              key=f"hierarchies.{name}")
    if precision == "year":
        return s.dt.year().cast(pl.Int16).alias(column)
    return s.dt.truncate("1mo").cast(pl.Date).alias(column)


# ---------------------------------------------------------------------- loading

def _err(file: Path, key: str, msg: str) -> ConfigError:
    return ConfigError(msg, file=str(file), key=key)


def _check_map(m: Any, file: Path, key: str) -> dict[str, str]:
    if not isinstance(m, dict) or not m:
        raise _err(file, key, "must be a non-empty mapping of code -> label")
    for k, v in m.items():
        if not isinstance(k, str):
            raise _err(file, key, "every key must be a quoted string (YAML reads 01 as 1 and Y/N as booleans)")
        if not isinstance(v, str):
            raise _err(file, f"{key}.{k}", "label must be a quoted string")
    return dict(m)


def _read_reference(path: Path, key: str, file: Path, where: str) -> dict[str, dict[str, str]]:
    if not path.is_file():
        raise _err(file, f"{where}.table", f"reference table {path} not found")
    with path.open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    if not rows or key not in rows[0]:
        raise _err(file, f"{where}.key", f"column '{key}' not in {path.name}")
    cols = [c for c in rows[0] if c != key]
    return {c: {r[key].strip(): (r[c] or "").strip() for r in rows} for c in cols}


def load_hierarchy(name: str, raw: Any, file: Path) -> Hierarchy:
    where = f"hierarchies.{name}"
    if not isinstance(raw, dict):
        raise _err(file, where, "must be a mapping with a type")
    allowed = {"type", "description", "levels", "origin", "by", "descending", "precision", "table", "key"}
    extra = set(raw) - allowed
    if extra:
        raise _err(file, f"{where}.{sorted(extra)[0]}", f"unknown key (allowed: {', '.join(sorted(allowed))})")
    typ = raw.get("type")
    if typ not in TYPES:
        raise _err(file, f"{where}.type", f"must be one of {', '.join(TYPES)}")
    h = Hierarchy(name=name, type=typ, levels=[], description=str(raw.get("description") or ""))
    if typ == "date_precision":
        if raw.get("precision") not in ("year", "month"):
            raise _err(file, f"{where}.precision", "must be year or month")
        if "levels" in raw:
            raise _err(file, f"{where}.levels", "date_precision has one level: give precision only")
        h.precision = raw["precision"]
        h.levels = [raw["precision"]]
        return h
    levels = raw.get("levels")
    if not isinstance(levels, list) or not levels:
        raise _err(file, f"{where}.levels", "must be a non-empty list")
    if typ == "lookup":
        tbl, key = raw.get("table"), raw.get("key")
        if not isinstance(tbl, str) or not isinstance(key, str):
            raise _err(file, where, "a lookup needs table (CSV path relative to the rules file) and key")
        path = (file.parent / tbl).resolve()
        if not path.is_file():   # a rules file copied elsewhere: fall back to schemas/reference/
            from etl.paths import REFERENCE_DIR
            if (Path(REFERENCE_DIR) / Path(tbl).name).is_file():
                path = Path(REFERENCE_DIR) / Path(tbl).name
        h.table, h.key = path, key
        h.reference = _read_reference(path, key, file, where)
    if typ == "year_band":
        h.origin = int(raw.get("origin", 2000))
    if typ == "quantile":
        h.by = raw.get("by")
        h.descending = bool(raw.get("descending", False))
    for i, spec in enumerate(levels):
        lk = f"{where}.levels[{i}]"
        if spec == STAR:
            if i == 0:
                raise _err(file, lk, "level 0 cannot be '*': drop the field instead")
            h.levels.append(STAR)
            continue
        if typ == "map":
            if not isinstance(spec, dict) or "map" not in spec:
                raise _err(file, lk, "a map level is {map: {...}, default: optional} or '*'")
            d = spec.get("default")
            if d is not None and not isinstance(d, str):
                raise _err(file, f"{lk}.default", "must be a string")
            h.levels.append({"map": _check_map(spec["map"], file, f"{lk}.map"), "default": d})
        elif typ == "lookup":
            if isinstance(spec, str):
                spec = {"column": spec}
            if not isinstance(spec, dict) or spec.get("column") not in h.reference:
                raise _err(file, lk, f"must name a column of {h.table.name} "
                                     f"({', '.join(h.reference)}) or be {{column, map, default}}")
            lv = {"column": spec["column"]}
            if "map" in spec:
                lv["map"] = _check_map(spec["map"], file, f"{lk}.map")
                lv["default"] = spec.get("default")
            h.levels.append(lv)
        elif typ == "bands":
            if (not isinstance(spec, list) or not spec or not all(isinstance(c, int) for c in spec)
                    or sorted(set(spec)) != spec):
                raise _err(file, lk, "must be a strictly increasing list of integer cut points")
            h.levels.append(list(spec))
        elif typ in ("year_band", "quantile"):
            if not isinstance(spec, int) or isinstance(spec, bool) or spec < 1:
                raise _err(file, lk, "must be a positive integer or '*'")
            h.levels.append(spec)
    return h
