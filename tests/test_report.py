"""Stratification report on a realistic fixture release with a planted effect.

`make_release` builds release-shaped tables (what protect writes into the
staging directory) with numpy: a multinomial logit for the specialty group
of first offer in which independent school multiplies the odds of surgery vs
GP by PLANTED_OR, so the conditional logit the report fits is correctly
specified and must recover it.
"""

from __future__ import annotations

import csv
import datetime as dt
import math
import re
from pathlib import Path

import numpy as np
import polars as pl
import pytest

PLANTED_OR = 1.8
GROUPS = ["GP", "Surgical", "Medical", "Anaesthesia/EM", "Mental health"]
SPECIALTY = {"GP": ["GP"], "Surgical": ["CST", "OPH"], "Medical": ["IMT", "DERM"],
             "Anaesthesia/EM": ["ANA"], "Mental health": ["CPSY"]}
SCHOOLS = ["independent", "grammar", "comprehensive", "sixth_form_college", "other", "unknown"]
# release labels as schemas/rules/profile_a.yaml generalises them
SCHOOL_GROUP = {"independent": "Independent", "grammar": "Selective state",
                "comprehensive": "Non-selective state", "sixth_form_college": "Sixth-form or FE college",
                "other": "Other/unknown", "unknown": "Other/unknown"}


def make_release(root: Path, n: int = 5000, seed: int = 11) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    school = rng.choice(SCHOOLS, n, p=[0.28, 0.22, 0.33, 0.1, 0.04, 0.03])
    indep = (school == "independent").astype(float)
    male = rng.random(n) < 0.44
    score = np.clip(rng.normal(80, 6, n), 40, 100)
    z = (score - 80) / 6
    imd = rng.choice([1, 2, 3, 4, 5], n, p=[0.07, 0.12, 0.18, 0.25, 0.38])
    nssec = rng.choice(["Higher", "Intermediate", "Routine/manual", "Not classified"], n,
                       p=[0.76, 0.11, 0.05, 0.08])
    # linear predictors vs GP
    eta = {
        "GP": np.zeros(n),
        "Surgical": -0.6 + math.log(PLANTED_OR) * indep + 1.2 * male + 0.4 * z,
        "Medical": 0.1 + 0.3 * indep + 0.5 * male + 0.3 * z,
        "Anaesthesia/EM": -0.9 + 0.1 * indep + 0.7 * male + 0.2 * z,
        "Mental health": -1.4 + 0.3 * indep + 0.4 * male - 0.1 * z,
    }
    ex = np.exp(np.column_stack([eta[g] for g in GROUPS]))
    prob = ex / ex.sum(1, keepdims=True)
    u = rng.random(n)[:, None]
    gi = (u > prob.cumsum(1)).sum(1)
    group = np.array(GROUPS)[gi]
    code = np.array([rng.choice(SPECIALTY[g]) for g in group])
    has_offer = rng.random(n) < 0.8
    no_score = rng.random(n) < 0.1          # PIA years: no score
    doctors = pl.DataFrame({
        "doctor_pid": [f"d{i:06d}" for i in range(n)],
        "sex": np.where(male, "M", "F"),
        "age_band_at_entry": rng.choice(["17-19", "20-24", "25+"], n, p=[0.8, 0.15, 0.05]),
        "graduation_cohort": rng.choice(["2007-2010", "2011-2014", "2015-2018"], n),
        "school_type_group": [SCHOOL_GROUP[x] for x in school],
        "imd_quintile": imd,
        "nssec_class": nssec,
        "ethnicity_group": rng.choice(["White", "Asian", "Black", "Mixed", "Other"], n,
                                      p=[0.69, 0.2, 0.03, 0.04, 0.04]),
        "fp_total_decile": np.clip(10 - ((score - 60) / 4).astype(int), 1, 10),
        "first_offer_year": rng.integers(2016, 2025, n),
        "first_offer_specialty_group": group,
        "in_admission": rng.random(n) < 0.95,
        "in_training": np.ones(n, bool),
        "in_registration": has_offer | (rng.random(n) < 0.5),
        "link_method": rng.choice(["deterministic", "probabilistic", "single-source"], n, p=[0.7, 0.25, 0.05]),
        "link_probability": np.round(rng.uniform(0.9, 1.0, n), 4),
    }).with_columns(
        pl.when(pl.Series(no_score)).then(None).otherwise(pl.col("fp_total_decile")).alias("fp_total_decile"),
        pl.when(pl.Series(has_offer)).then(pl.col("first_offer_year")).alias("first_offer_year"),
        pl.when(pl.Series(has_offer)).then(pl.col("first_offer_specialty_group"))
          .alias("first_offer_specialty_group"),
        pl.Series("_code", code),
    ).with_columns(
        pl.col("sex").cast(pl.Enum(["F", "M", "X", "U"])),
        pl.col("school_type_group").cast(pl.Enum(sorted(set(SCHOOL_GROUP.values())))),
        pl.col("imd_quintile").cast(pl.Int8),
        pl.col("first_offer_year").cast(pl.Int16),
        pl.col("fp_total_decile").cast(pl.Int8),
        pl.col("link_method").cast(pl.Enum(["deterministic", "probabilistic", "single-source", "unknown"])),
    )
    ev = doctors.filter(pl.col("first_offer_year").is_not_null()).select(
        "doctor_pid", pl.lit("specialty_offer").alias("event_type"),
        pl.col("first_offer_year").alias("event_year"),
        pl.col("first_offer_specialty_group").alias("detail"))
    doctors = doctors.drop("_code", "first_offer_year")   # profile_a drops the year
    doctors.write_parquet(root / "doctors.parquet", compression="zstd")
    ev.write_parquet(root / "events.parquet", compression="zstd")
    pl.DataFrame({"section": ["overall", "by_subgroup", "by_subgroup"],
                  "subgroup": ["all", "imd_quintile", "imd_quintile"], "level": ["all", "1", "5"],
                  "metric": ["link_rate", "link_rate", "link_rate"],
                  "value": [0.97, 0.93, 0.98]}).write_parquet(root / "linkage_quality.parquet")
    return root


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    from etl.report import write_report
    rel = make_release(tmp_path_factory.mktemp("rel") / "r1")
    return rel, write_report(rel)


def test_report_files(report):
    rel, s = report
    assert Path(s["report_html"]).is_file()
    page = Path(s["report_html"]).read_text()
    assert "data:image/png;base64," in page and "Linkage quality caveats" in page
    assert set(s["tables"]) == {"school", "imd", "nssec"}
    assert set(s["skipped"]) == {"polar", "parental_he", "fsm"}
    assert s["columns_used"]["nssec"] == "nssec_class"
    assert s["columns_used"]["score"] == "fp_total_decile"


def test_specialty_code_mapped_to_group():
    from etl.report import _prepare
    d = pl.DataFrame({"first_offer_specialty": ["CST", "GP", None, "ZZZ"],
                      "school_type": ["independent", "unknown", "grammar", None]})
    p, found, _ = _prepare(d)
    assert p["_group"].to_list() == ["Surgical", "GP", None, "Other"]
    assert p["_indep"].to_list() == [True, None, False, None]


def test_every_count_cell_is_protected(report):
    from etl.report import FALLBACK_MIN_CELL, FALLBACK_ROUND
    _, s = report
    for path in s["tables"].values():
        with open(path) as fh:
            rows = list(csv.DictReader(fh))
        assert rows
        for r in rows:
            if r["n"] in ("", ".."):      # suppressed (rules' csv_marker)
                continue
            n = int(r["n"])
            assert n % FALLBACK_ROUND == 0 and n >= FALLBACK_MIN_CELL, (path, r)
    with open(s["odds_ratios_csv"]) as fh:
        for r in csv.DictReader(fh):
            assert int(r["n"]) % FALLBACK_ROUND == 0


def test_small_cells_are_suppressed():
    from etl.report import protect_counts
    t = pl.DataFrame({"g": ["a", "b", "c", "d"], "n": [3, 9, 12, 1000]})
    out, _ = protect_counts(t, ["n"], None)
    vals = out["n"].to_list()
    assert vals[0] is None and vals[1] is None
    assert all(v % 5 == 0 and v >= 10 for v in vals[2:])


def test_planted_or_recovered(report):
    _, s = report
    h = s["headline"]
    assert h["specialty_group"] == "Surgical"
    assert h["ci_low"] <= PLANTED_OR <= h["ci_high"], h
    assert h["ci_low"] > 1.0


# --------------------------------------------------------------------------- analyst guide

GUIDE = Path(__file__).resolve().parent.parent / "docs" / "analyst-guide.md"


def _snippets(lang: str) -> list[str]:
    text = GUIDE.read_text()
    return re.findall(rf"```{lang}\n(.*?)```", text, flags=re.S)


def test_guide_polars_and_duckdb_snippets_run(tmp_path, monkeypatch):
    releases = tmp_path / "out" / "releases"
    rel = make_release(releases / "20260101T000000Z-abc123", n=800, seed=3)
    (releases / "CURRENT").write_text(rel.name + "\n")
    monkeypatch.chdir(tmp_path)
    py = _snippets("python")
    assert len(py) >= 3
    for code in py:
        ns: dict = {}
        exec(compile(code, str(GUIDE), "exec"), ns)   # noqa: S102 - our own docs
    sql = _snippets("sql")
    assert sql
    import duckdb
    monkeypatch.chdir(rel)             # the guide says: run from inside the release
    con = duckdb.connect()
    for q in sql:
        for stmt in [x for x in q.split(";") if x.strip()]:
            con.execute(stmt).fetchall()


README = GUIDE.parent.parent / "README.md"


def test_readme_polars_and_duckdb_examples_run(tmp_path, monkeypatch):
    """The README's analyst examples, as written, against a release."""
    releases = tmp_path / "out" / "sample" / "releases"
    rel = make_release(releases / "20260101T000000Z-abc123", n=800, seed=5)
    (releases / "CURRENT").write_text(rel.name + "\n")
    text = README.read_text()
    py = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    sql = re.findall(r"```sql\n(.*?)```", text, flags=re.S)
    assert py and sql
    monkeypatch.chdir(tmp_path)
    for code in py:
        exec(compile(code, str(README), "exec"), {})   # noqa: S102 - our own docs
    import duckdb
    monkeypatch.chdir(rel)
    con = duckdb.connect()
    for q in sql:
        rows = con.execute(q).fetchall()
        assert rows and sum(r[-1] for r in rows) == 800
