"""Blocking union, lambda estimation and the one-to-one residual pass."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest

from etl.linkage import train as T
from etl.linkage.blocking import drop_found, record_keys, rule_pairs
from etl.linkage.cluster import cluster
from etl.linkage.engine import Scored, _residual_pass
from etl.linkage.records import Records
from etl.linkage.spec import BlockKey, BlockRule, parse_model


def _rec(n_a, n_b, seed=0):
    rng = np.random.default_rng(seed)
    n = n_a + n_b
    df = pl.DataFrame({
        "_src": pl.Series([0] * n_a + [1] * n_b, dtype=pl.Int8),
        "record_id": [str(i) for i in range(n)],
        "surname": rng.choice(["SMITH", "JONES", "PATEL", "KHAN", "OKAFOR", "LI"], n).tolist(),
        "forenames": rng.choice(["ANNA", "JOHN", "PRIYA", "ALI"], n).tolist(),
        "date_of_birth": (np.datetime64("1990-01-01") + rng.integers(0, 60, n)).astype("datetime64[D]"),
    })
    return Records(df, ["a", "b"])


def _brute(keys, a, b, dedupe):
    out = set()
    for i in range(*a):
        for j in range(*b) if not dedupe else range(i + 1, a[1]):
            if keys[i] != 0 and keys[i] == keys[j]:
                out.add((i, j))
    return out


@pytest.mark.parametrize("chunk", [7, 100, 10**9])
def test_rule_pairs_equal_brute_force_at_any_chunk_size(chunk):
    rec = _rec(120, 90)
    keys = record_keys(rec, BlockRule("r", [BlockKey("surname"), BlockKey("forenames", "first", 1)]))
    for a, b, dd in (((0, 120), (120, 210), False), ((0, 120), (0, 120), True)):
        it, total, _ = rule_pairs(keys, a, b, dd, chunk)
        got = [(int(x), int(y)) for li, ri in it for x, y in zip(li, ri)]
        assert len(got) == len(set(got)) == total
        assert set(got) == _brute(keys, a, b, dd)


def test_union_scores_each_pair_once_and_caps_big_blocks():
    rec = _rec(150, 150, seed=1)
    r1 = record_keys(rec, BlockRule("sn", [BlockKey("surname")]))
    r2 = record_keys(rec, BlockRule("dob", [BlockKey("date_of_birth")]))
    seen = set()
    for k, keys in enumerate((r1, r2)):
        it, _, _ = rule_pairs(keys, (0, 150), (150, 300), False, 50)
        for li, ri in it:
            keep = drop_found(li, ri, [r1, r2][:k], None, rec.n)
            new = set(zip(li[keep].tolist(), ri[keep].tolist()))
            assert not (new & seen)
            seen |= new
    assert seen == _brute(r1, (0, 150), (150, 300), False) | _brute(r2, (0, 150), (150, 300), False)
    it, total, skipped = rule_pairs(r1, (0, 150), (150, 300), False, 50, max_block_pairs=100)
    assert skipped == 6 and total == 0            # every surname block has > 100 pairs


def test_transforms_and_multi_field_keys():
    df = pl.DataFrame({"_src": pl.Series([0, 1, 1], dtype=pl.Int8), "record_id": ["1", "2", "3"],
                       "forenames": ["MARY ANN", "SMITH", "MARY"], "surname": ["SMITH", "MARY ANN", "SMYTH"],
                       "date_of_birth": ["1990-05-06", "1990-07-08", "1991-05-06"]})
    rec = Records(df, ["a", "b"])
    k = record_keys(rec, BlockRule("x", [BlockKey(["forenames", "surname"], "sorted_tokens"),
                                         BlockKey("date_of_birth", "year")]))
    assert k[0] == k[1] != k[2]                     # swapped names, same year
    k = record_keys(rec, BlockRule("y", [BlockKey("surname", "soundex"), BlockKey("date_of_birth", "month_day")]))
    assert k[0] == k[2] != k[1]                     # SMITH ~ SMYTH, same day and month


def test_lambda_is_expected_matches_over_possible_pairs():
    m = [np.array([1, .9, .08, .02]), np.array([1, .95, .05])]
    u = [np.array([1, .0005, .02, .9795]), np.array([1, .01, .99])]
    n_match, possible = 4_000, 4e7      # prior ~ -13 bits; all-agree evidence ~ +17 bits
    # candidate patterns = those agreeing on something; counts: matches from m, non-matches from u
    P, cnt = [], []
    for g1 in (1, 2, 3):
        for g2 in (1, 2):
            if g1 == 3 and g2 == 2:
                continue                 # agrees on nothing: not a candidate
            P.append([g1, g2])
            cnt.append(n_match * m[0][g1] * m[1][g2] + (possible - n_match) * u[0][g1] * u[1][g2])
    lam, expected = T.estimate_lambda_candidates(np.array(P, np.int8), np.array(cnt), m, u, possible, lam0=1e-3)
    assert expected == pytest.approx(n_match * (1 - m[0][3] * m[1][2]), rel=0.03)
    assert lam == pytest.approx(expected / possible)


def test_residual_pass_links_the_exclusive_grey_pair():
    spec = parse_model({"sources": {"a": {}, "b": {}}, "blocking": [["surname"]],
                        "comparisons": [{"name": "s", "kind": "exact", "field": "surname",
                                         "levels": [{"label": "exact", "test": "exact"}]}]})
    df = pl.DataFrame({"_src": pl.Series([0] * 4 + [1] * 4, dtype=pl.Int8),
                       "record_id": [str(i) for i in range(8)], "surname": ["X"] * 8})
    rec = Records(df, ["a", "b"])
    li = np.array([0, 1, 2, 3], np.int32)
    ri = np.array([4, 5, 6, 7], np.int32)
    prob = np.array([0.99, 0.99, 0.99, 0.3])
    w = np.log2(prob / (1 - prob))
    sc = Scored(li, ri, np.zeros(4, np.int8), np.zeros(4, np.int16), np.ones((4, 1), np.int8), {}, w, prob,
                np.zeros(4, np.int8))
    cl = cluster(8, rec.src, ["a", "b"], set(), li, ri, prob, w, np.zeros(4, bool), 0.5, 0.9)
    assert cl.labels[3] != cl.labels[7]
    res = _residual_pass(rec, spec, [("a", "b")], sc, cl)
    # 1 of 4 unlinked on each side: +4 bits, minus 2 bits for the stricter 0.8 threshold
    assert res["tasks"]["a|b"]["bonus_bits"] == pytest.approx(4.0)
    assert res["weight"][3] == pytest.approx(w[3] + 2.0)
    cl2 = cluster(8, rec.src, ["a", "b"], set(), li, ri, res["prob"], res["weight"], np.zeros(4, bool), 0.5, 0.9)
    assert cl2.labels[3] == cl2.labels[7]
    assert math.isclose(sc.prob[3], 0.3)          # reported pairwise probability unchanged
