"""Aggregate disclosure control: threshold, HESA rounding, totals from unrounded
values, secondary suppression that survives a margin attacker, percentages
and means rules."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from etl.governance import disclosure_control, hesa_round, load_rules, to_csv_frame

RULES = load_rules("profile_a")


def test_hesa_rounding():
    table = {0: 0, 1: 0, 2: 0, 2.4: 0, 2.5: 5, 3: 5, 7: 5, 7.5: 10, 8: 10, 12: 10, 12.5: 15, 13: 15, 100: 100,
             102: 100, 103: 105}
    assert {v: hesa_round(v) for v in table} == table


def _wide(rows: list[list[int]]) -> pl.DataFrame:
    return pl.DataFrame({"group": [f"g{i}" for i in range(len(rows))],
                         **{f"c{j}": [r[j] for r in rows] for j in range(len(rows[0]))}})


def _lines(mask: np.ndarray) -> list[np.ndarray]:
    return [mask[i, :] for i in range(mask.shape[0])] + [mask[:, j] for j in range(mask.shape[1])]


def _attack(true: np.ndarray, supp: np.ndarray) -> dict[tuple[int, int], tuple[float, float]]:
    """Feasible range of each suppressed cell for an attacker who knows every
    row and column total and every published cell exactly (not rounded)."""
    from scipy.optimize import linprog
    cells = [tuple(c) for c in np.argwhere(supp)]
    if not cells:
        return {}
    pos = {c: i for i, c in enumerate(cells)}
    a, b = [], []
    for i in range(true.shape[0]):
        row = np.zeros(len(cells))
        for j in range(true.shape[1]):
            if supp[i, j]:
                row[pos[(i, j)]] = 1
        if row.any():
            a.append(row)
            b.append(true[i, :].sum() - true[i, ~supp[i, :]].sum())
    for j in range(true.shape[1]):
        col = np.zeros(len(cells))
        for i in range(true.shape[0]):
            if supp[i, j]:
                col[pos[(i, j)]] = 1
        if col.any():
            a.append(col)
            b.append(true[:, j].sum() - true[~supp[:, j], j].sum())
    out = {}
    for c in cells:
        obj = np.zeros(len(cells))
        obj[pos[c]] = 1
        lo = linprog(obj, A_eq=np.array(a), b_eq=np.array(b), bounds=(0, None), method="highs").fun
        hi = -linprog(-obj, A_eq=np.array(a), b_eq=np.array(b), bounds=(0, None), method="highs").fun
        out[c] = (lo, hi)
    return out


tables = st.integers(2, 5).flatmap(lambda r: st.integers(2, 5).flatmap(lambda c: st.lists(
    st.lists(st.one_of(st.integers(0, 12), st.integers(10, 80)), min_size=c, max_size=c), min_size=r, max_size=r)))


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tables)
def test_cells_respect_threshold_rounding_and_resist_margin_attack(rows):
    pytest.importorskip("scipy")
    t = _wide(rows)
    cols = [c for c in t.columns if c != "group"]
    out, log = disclosure_control(t, cols, RULES)
    true = np.array(rows, dtype=float)
    supp = out.select([f"{c}_suppressed" for c in cols]).to_numpy().astype(bool)
    pub = out.select(cols).to_numpy()
    # every published cell: at least the threshold, and its HESA rounding
    for (i, j), v in np.ndenumerate(true):
        if supp[i, j]:
            assert pub[i, j] is None or np.isnan(pub[i, j])
        else:
            assert v >= 10 and pub[i, j] == hesa_round(v) and pub[i, j] % 5 == 0
    assert (supp[true < 10]).all()                        # primary, zeros included
    # no line with exactly one suppressed cell
    for line in _lines(supp):
        assert line.sum() != 1
    # margin attacker: no suppressed cell can be pinned down when every row and
    # column total reaches the threshold; when one does not (a margin below the
    # threshold gives its line away), any pinned cell is reported as unprotectable
    pinned = [c for c, (lo, hi) in _attack(true, supp).items() if hi - lo < 1 - 1e-6]
    small_margin = (true.sum(axis=1) < 10).any() or (true.sum(axis=0) < 10).any()
    assert not pinned or small_margin, (pinned, rows)
    assert len(pinned) <= log["audit"]["unprotectable_cells"]
    assert log["primary"] == int((true < 10).sum()) and log["suppressed"] == int(supp.sum())


def test_long_table_as_the_stratification_report_calls_it():
    rng = np.random.default_rng(5)
    rows = [(g, lv, int(rng.poisson(30 if g != "Other" else 3))) for g in ("GP", "Surgical", "Medical", "Other")
            for lv in ("Q1", "Q2", "Q3", "Q4", "Q5")]
    t = pl.DataFrame(rows, schema=["specialty_group", "level", "n"], orient="row")
    out, log = disclosure_control(t, ["n"], RULES.raw)           # the raw YAML mapping works too
    assert out.height == t.height and out.columns == ["specialty_group", "level", "n", "n_suppressed"]
    assert out.filter(pl.col("specialty_group") == "Other")["n"].null_count() == 5
    per_group = out.group_by("specialty_group").agg(pl.col("n_suppressed").sum())
    assert per_group["n_suppressed"].to_list().count(1) == 0     # never a single suppressed cell per row
    assert log["suppressed_by"]["specialty_group"]["Other"] == 5
    assert disclosure_control(t, ["n"], None)[0].equals(out)     # defaults = governance.md 6.3


def test_totals_from_unrounded_values():
    t = _wide([[12, 12, 12], [12, 13, 14]])        # each cell rounds to 10 or 15; totals from true values
    out, log = disclosure_control(t, ["c0", "c1", "c2"], RULES, totals=True)
    assert out["total"].to_list()[:2] == [hesa_round(36), hesa_round(39)] == [35, 40]
    assert sum(out.row(0)[1:4]) == 30 != out["total"][0]          # rows need not add up (HESA)
    last = out.row(-1, named=True)
    assert last["group"] == "Total" and last["c0"] == hesa_round(24) == 25 and last["total"] == hesa_round(75)
    assert sum(out["c0"].to_list()[:2]) == 20 != last["c0"]
    assert log["totals_added"]["suppressed_totals"] == 0


def test_structural_zero_published_and_csv_marker():
    t = _wide([[0, 25, 40], [30, 3, 50], [22, 28, 35]])
    out, log = disclosure_control(t, ["c0", "c1", "c2"], RULES, structural_zeros=[(0, "c0")])
    assert out["c0"][0] == 0 and not out["c0_suppressed"][0] and log["structural_zeros"] == 1
    assert out["c1_suppressed"][1]
    csv = to_csv_frame(out, ["c0", "c1", "c2"])
    assert csv["c1"][1] == ".." and "c1_suppressed" not in csv.columns
    with pytest.raises(ValueError, match="structural zero is not zero"):
        disclosure_control(t, ["c0", "c1", "c2"], RULES, structural_zeros=[(1, "c0")])


def test_percentages_and_means_rules():
    t = pl.DataFrame({"group": ["a", "b", "c"], "yes": [40, 12, 9], "no": [60, 9, 30],
                      "mean_score": [41.2, 39.9, 40.5], "n_score": [100, 21, 9]})
    out, log = disclosure_control(t, ["yes", "no"], RULES, percentages="row", means={"mean_score": "n_score"})
    assert out["yes_pct"][0] == 40.0                     # 40 / 100 from rounded counts
    assert out["yes_pct"][1] is None                     # denominator 21 < 22.5
    assert out["yes_pct"][2] is None                     # numerator 9 suppressed
    assert out["mean_score"].to_list() == [41.2, 39.9, None]   # n 9 < 10
    assert log["percentages"]["basis"] == "rounded_counts" and log["means"]["suppressed"] == 1


def test_linear_audit_catches_what_the_two_per_line_rule_misses():
    """Two blocks joined by a bridge cell: every line has two suppressed cells,
    yet the bridge would be determined by the margins without the audit."""
    rows = [[3, 4, 50, 60], [5, 6, 70, 80], [90, 100, 2, 55], [110, 120, 65, 1]]
    out, log = disclosure_control(_wide(rows), ["c0", "c1", "c2", "c3"], RULES)
    supp = out.select([f"c{j}_suppressed" for j in range(4)]).to_numpy().astype(bool)
    rng = _attack(np.array(rows, dtype=float), supp)
    assert all(hi - lo >= 1 for lo, hi in rng.values())
    assert log["audit"]["linear"] == "no suppressed cell is determined by the margins"
