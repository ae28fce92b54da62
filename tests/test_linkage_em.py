"""EM on pattern counts recovers known parameters; u sampling; TF adjustment."""

from __future__ import annotations

import math

import numpy as np
import pytest

from etl.linkage import train as T
from etl.linkage.engine import pair_weights
from etl.linkage.model import TaskModel


def simulate(rng, n_match, n_non, m, u):
    """Comparison vectors from known m/u (index 0 = null, unused here)."""
    k = len(m)
    G = np.zeros((n_match + n_non, k), np.int8)
    for j in range(k):
        G[:n_match, j] = rng.choice(np.arange(1, len(m[j])), size=n_match, p=m[j][1:])
        G[n_match:, j] = rng.choice(np.arange(1, len(u[j])), size=n_non, p=u[j][1:])
    return G


M = [np.array([1, .90, .07, .03]), np.array([1, .85, .10, .05]), np.array([1, .95, .05]),
     np.array([1, .80, .15, .05]), np.array([1, .97, .03])]
U = [np.array([1, .001, .01, .989]), np.array([1, .002, .02, .978]), np.array([1, .01, .99]),
     np.array([1, .05, .15, .80]), np.array([1, .5, .5])]


def test_em_recovers_m_and_lambda_from_pattern_counts():
    rng = np.random.default_rng(1)
    G = simulate(rng, 20_000, 380_000, M, U)
    P, cnt = T.patterns(G)
    assert P.shape[0] < 200 and cnt.sum() == G.shape[0]      # EM runs on distinct patterns
    m0 = [T.default_m(len(x) - 1) for x in M]
    lam, m, it, _ = T.em(P, cnt, m0, U, list(range(len(M))), lam0=0.2)
    assert lam == pytest.approx(0.05, abs=0.003)
    for j in range(len(M)):
        assert m[j][1:] == pytest.approx(M[j][1:], abs=0.015)


def test_em_pattern_counts_equal_em_on_rows():
    rng = np.random.default_rng(2)
    G = simulate(rng, 3_000, 30_000, M[:3], U[:3])
    P, cnt = T.patterns(G)
    m0 = [T.default_m(len(x) - 1) for x in M[:3]]
    a = T.em(P, cnt, m0, U[:3], [0, 1, 2], 0.1, tol=1e-12, max_iter=50)
    b = T.em(G, np.ones(G.shape[0]), m0, U[:3], [0, 1, 2], 0.1, tol=1e-12, max_iter=50)
    assert a[0] == pytest.approx(b[0], rel=1e-9)
    for x, y in zip(a[1], b[1]):
        assert x == pytest.approx(y, rel=1e-9)


def test_fixed_comparisons_are_left_out_of_a_session():
    rng = np.random.default_rng(3)
    G = simulate(rng, 5_000, 50_000, M, U)
    P, cnt = T.patterns(G)
    m0 = [T.default_m(len(x) - 1) for x in M]
    _, m, _, _ = T.em(P, cnt, m0, U, [1, 2, 3, 4], lam0=0.2)
    assert np.array_equal(m[0], m0[0])          # not estimated in this session
    assert m[1][1:] == pytest.approx(M[1][1:], abs=0.02)


def test_stratified_u_sample_precise_for_rare_levels():
    """u of a rare level from a stratum sample equals the exact value."""
    from etl.linkage.train import _sample_stratum
    rng = np.random.default_rng(4)
    n = 20_000
    codes = rng.integers(0, 400, n).astype(np.int64)      # stratum key (e.g. birth month)
    fine = codes * 30 + rng.integers(0, 30, n)            # the rare level: exact day
    a, b = (0, n // 2), (n // 2, n)
    li, ri, p_s = _sample_stratum(rng, codes, a, b, False, 50_000)
    assert (codes[li] == codes[ri]).all()
    ca, cb = np.bincount(codes[:n // 2], minlength=400), np.bincount(codes[n // 2:], minlength=400)
    assert p_s == pytest.approx((ca * cb).sum() / (n / 2) ** 2)
    fa, fb = np.bincount(fine[:n // 2], minlength=12000), np.bincount(fine[n // 2:], minlength=12000)
    exact = (fa * fb).sum() / (n / 2) ** 2
    est = p_s * (fine[li] == fine[ri]).mean()
    assert est == pytest.approx(exact, rel=0.05)


def test_tf_adjustment_common_joint_name_weighs_less():
    m = [np.array([1.0, 0.9, 0.1])]
    u = [np.array([1.0, 0.001, 0.999])]
    tm = TaskModel(1e-4, m, u)
    G = np.array([[1], [1], [2]], np.int8)
    tfu = {0: np.array([0.02, 0.00001, 0.0], np.float32)}   # common name, rare name, no TF
    w = pair_weights(tm, G, tfu, tf_min=1e-6)
    base = tm.prior_weight + math.log2(0.9 / 0.001)
    assert w[0] == pytest.approx(base + math.log2(0.001 / 0.02), rel=1e-5)
    assert w[1] == pytest.approx(base + math.log2(0.001 / 0.00001), rel=1e-5)
    assert w[1] > base > w[0]
    assert w[2] == pytest.approx(tm.prior_weight + math.log2(0.1 / 0.999))
