"""The two-source bench's generator and error analysis (bench/linkage/people.py,
bench/linkage/ceiling.py): the `base` profile carries the per-record-pair
disagreement rates it cites (CRATE, research/domain.md section 3.1), and the
ceiling analysis accounts for every error and never scores below the linker it
analyses (its oracle decides each group of free pairs optimally)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench" / "linkage"))

N = 40_000


def _generate(tmp: Path, profile: str) -> Path:
    out = tmp / profile
    r = subprocess.run([sys.executable, str(REPO / "bench" / "linkage" / "people.py"), str(N), str(out),
                        "--seed", "11", "--profile", profile], capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0, r.stderr
    assert f"'profile': '{profile}'" in r.stdout
    return out


def _true_pairs(d: Path) -> pl.DataFrame:
    t = pl.read_parquet(d / "truth.parquet")
    a = pl.read_parquet(d / "a.parquet").join(t, on=["source", "record_id"])
    b = pl.read_parquet(d / "b.parquet").join(t.drop("sex"), on=["source", "record_id"])
    return a.join(b, on="person_id", suffix="_b")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("people")
    return {p: _generate(tmp, p) for p in ("base", "long-gap")}


def test_base_profile_has_the_cited_disagreement_rates(data):
    j = _true_pairs(data["base"])
    assert j.height > 0.8 * N * 0.8
    differs = j.group_by("sex").agg((pl.col("surname") != pl.col("surname_b")).mean().alias("r"))
    rate = dict(differs.iter_rows())
    # surname no match 5.67% (women) / 1.34% (men), plus typos 0.5%
    assert 0.050 < rate["F"] < 0.075 and 0.010 < rate["M"] < 0.026
    dob = j.select((pl.col("date_of_birth") != pl.col("date_of_birth_b")).mean()).item()
    assert 0.0030 < dob < 0.0070                       # DOB not exact 0.49%
    pc = j.filter(pl.col("postcode_b").is_not_null())
    moved = pc.select((pl.col("postcode").str.head(-2) != pl.col("postcode_b").str.head(-2)).mean()).item()
    partial = pc.select(((pl.col("postcode") != pl.col("postcode_b"))
                         & (pl.col("postcode").str.head(-2) == pl.col("postcode_b").str.head(-2))).mean()).item()
    assert 0.28 < moved < 0.32 and 0.006 < partial < 0.014     # no match 30%, partial 0.97%


def test_long_gap_profile_keeps_its_heavier_surname_change(data):
    j = _true_pairs(data["long-gap"])
    women = j.filter(pl.col("sex") == "F").select((pl.col("surname") != pl.col("surname_b")).mean()).item()
    assert 0.11 < women < 0.16


def test_unknown_profile_is_a_clear_error(tmp_path):
    r = subprocess.run([sys.executable, str(REPO / "bench" / "linkage" / "people.py"), "100", str(tmp_path),
                        "--profile", "nope"], capture_output=True, text=True)
    assert r.returncode == 2 and "invalid choice: 'nope'" in r.stderr


def test_ceiling_accounts_for_every_error_and_bounds_the_linker(data, tmp_path):
    from ceiling import analyse

    from etl.linkage import link, load_spec

    d = data["base"]
    spec = load_spec({"model": str(REPO / "schemas" / "linkage" / "people2.yaml")}, REPO)
    link({s: d / f"{s}.parquet" for s in ("a", "b")}, spec, tmp_path / "out")
    r = analyse(tmp_path / "out", d)
    assert r["tp"] + r["fn"] == r["true_pairs"] and r["tp"] + r["fp"] == r["linked_pairs"]
    assert sum(r["fn_classes"].values()) == r["fn"]
    assert sum(r["fp_classes"].values()) == r["fp"]
    assert r["fn"] > 0 and r["fp"] >= 0 and r["f1"] > 0.99
    for o in r["oracles"].values():
        # the oracle decides each group optimally: never more errors on the free pairs than the linker
        assert o["free_fp"] + o["free_fn"] <= r["free_errors_now"]["fp"] + r["free_errors_now"]["fn"]
        assert r["f1"] <= o["f1"] <= o["ceiling_f1_rivals_fixed"] <= o["ceiling_f1_rivals_fixed_all_scored"] <= 1.0
