"""Subgroup attributes for linkage-quality reporting (GUILD/RECORD).

Linkage error is socially patterned, and here the subgroups are the study's
exposures: sex, ethnicity group, IMD and POLAR4 quintile, school type, cohort.
A record's subgroup is its own value, else the first non-null value among the
records grouped with it (its predicted person for link rates; its true person
when truth is given).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import polars as pl

from etl.linkage.records import Records

REF_ETHNICITY = Path(__file__).resolve().parents[2] / "schemas" / "reference" / "ethnicity.csv"

DEFAULT_SUBGROUPS = {
    "sex": {"column": "sex"},
    "ethnicity": {"column": "ethnicity_code", "map": "ethnicity_group9"},
    "imd_quintile": {"column": "imd_quintile"},
    "polar4_quintile": {"column": "polar4_quintile"},
    "school_type": {"column": "school_type"},
    "cohort": {"columns": ["cycle_year", "entry_year", "graduation_year"]},
}

# HESA 2-digit and 3-digit codes -> UKMED-style 9 groups (used when the
# reference table is absent).
_ETH9_2 = {"10": "White", "13": "White", "14": "White", "15": "White", "19": "White",
           "21": "Black", "22": "Black", "29": "Black", "31": "Indian", "32": "Pakistani",
           "33": "Bangladeshi", "34": "Chinese", "39": "Other Asian", "41": "Mixed", "42": "Mixed",
           "43": "Mixed", "49": "Mixed", "50": "Other", "80": "Other"}


def _eth_map() -> dict[str, str]:
    if REF_ETHNICITY.exists():
        try:
            ref = pl.read_csv(REF_ETHNICITY, infer_schema=False)
            if {"code", "group9"} <= set(ref.columns):
                return dict(zip(ref["code"].to_list(), ref["group9"].to_list()))
        except Exception:  # noqa: BLE001 - fall back to the built-in map
            pass
    return dict(_ETH9_2)


def _eth_expr(col: str) -> pl.Expr:
    m = _eth_map()
    c = pl.col(col).cast(pl.String).str.strip_chars()
    first = c.str.slice(0, 1)
    fallback = (pl.when(first == "1").then(pl.lit("White")).when(first == "2").then(pl.lit("Black"))
                .when(first == "3").then(pl.lit("Other Asian")).when(first == "4").then(pl.lit("Mixed"))
                .when(c.is_in(["98", "99", "90", "997", "998", "999"])).then(pl.lit("Unknown"))
                .when(c.is_not_null()).then(pl.lit("Other")))
    return pl.coalesce(c.replace_strict(m, default=None, return_dtype=pl.String), fallback)


def subgroup_specs(spec) -> dict:
    return spec.subgroups or DEFAULT_SUBGROUPS


def record_attributes(rec: Records, spec, group_labels: np.ndarray) -> pl.DataFrame:
    """gid, group, and one String column per subgroup (own value, else group's first)."""
    exprs = []
    for name, sg in subgroup_specs(spec).items():
        cols = sg.get("columns") or [sg.get("column")]
        cols = [c for c in cols if c and c in rec.df.columns]
        if not cols:
            continue
        if sg.get("map") == "ethnicity_group9":
            e = _eth_expr(cols[0])
        else:
            e = pl.coalesce([pl.col(c).cast(pl.String) for c in cols])
        exprs.append(e.alias(name))
    base = rec.df.select([pl.arange(0, rec.n, dtype=pl.Int64).alias("gid"), *exprs]) \
        .with_columns(pl.Series("grp", group_labels))
    names = [c for c in base.columns if c not in ("gid", "grp")]
    if not names:
        return base
    firsts = base.group_by("grp").agg([pl.col(c).drop_nulls().first().alias(f"_{c}") for c in names])
    out = base.join(firsts, on="grp", how="left", maintain_order="left")
    return out.select("gid", "grp", *[pl.coalesce(c, f"_{c}").fill_null("(missing)").alias(c) for c in names])


def wilson(k: float, n: float, z: float = 1.96) -> tuple[float | None, float | None]:
    if n <= 0:
        return None, None
    p = k / n
    den = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return max(0.0, centre - half), min(1.0, centre + half)
