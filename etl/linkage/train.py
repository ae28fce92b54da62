"""Estimating the Fellegi-Sunter parameters.

- u (P(level | non-match)) from random pairs, sampled smartly: for each
  comparison a stratified sample inside a cheap stratum that holds nearly all
  of its rare agreeing levels (same name initials, same birth month, same
  postcode district...) plus a uniform sample outside it, combined with the
  stratum's exact share of all pairs. A rare level thus gets many hits from a
  small sample. Pairs are down-weighted by their match probability once a
  model exists (matching pairs are not "random" agreement).
- m (P(level | match)) by EM, one session per training blocking rule on the
  pairs that rule blocks (sampled by block if large), as Splink does:
  comparisons that use the rule's fields are left out of that session. EM runs
  on the counts of distinct comparison patterns, not on pairs.
- lambda (P(two random records match)) per task, directly: the expected
  number of matches among candidate pairs (EM on lambda alone with m, u fixed)
  over the number of possible pairs; or from deterministic identifier matches.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from etl.linkage.blocking import record_keys, rule_pairs
from etl.linkage.comparisons import Evaluator, comparison_matrix
from etl.linkage.records import Records
from etl.linkage.spec import LinkSpec

BITS = 5  # levels per comparison < 32


def pack(G: np.ndarray) -> np.ndarray:
    code = np.zeros(G.shape[0], np.int64)
    for j in range(G.shape[1]):
        code |= G[:, j].astype(np.int64) << (BITS * j)
    return code


def unpack(codes: np.ndarray, k: int) -> np.ndarray:
    G = np.zeros((codes.size, k), np.int8)
    for j in range(k):
        G[:, j] = (codes >> (BITS * j)) & ((1 << BITS) - 1)
    return G


def patterns(G: np.ndarray, weights: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Distinct comparison patterns and their (weighted) counts."""
    from etl.linkage._np import unique_inverse

    code = pack(G)
    uniq, inv, _ = unique_inverse(code)
    cnt = np.bincount(inv, weights=weights, minlength=uniq.size).astype(np.float64)
    return unpack(uniq, G.shape[1]), cnt


# --------------------------------------------------------------------------------------
# EM on pattern counts
# --------------------------------------------------------------------------------------
def log_ratio_matrix(P: np.ndarray, m: list[np.ndarray], u: list[np.ndarray], active: list[int]) -> np.ndarray:
    """Sum over active comparisons of log2(m/u) for each pattern row (null level = 0)."""
    out = np.zeros(P.shape[0])
    for j in active:
        w = np.zeros(len(m[j]))
        w[1:] = np.log2(m[j][1:] / u[j][1:])
        out += w[P[:, j]]
    return out


def em(P: np.ndarray, cnt: np.ndarray, m0: list[np.ndarray], u: list[np.ndarray], active: list[int],
       lam0: float, max_iter: int = 200, tol: float = 1e-6, fix_m: bool = False,
       fixed_post: np.ndarray | None = None) -> tuple[float, list[np.ndarray], int, np.ndarray]:
    """EM for lambda and m (u fixed) on distinct patterns P with counts cnt.

    `fixed_post` (nan = free) pins the posterior of some patterns (clerical labels)."""
    m = [x.copy() for x in m0]
    lam = min(max(lam0, 1e-9), 1 - 1e-9)
    it = 0
    post = np.zeros(P.shape[0])
    for it in range(1, max_iter + 1):
        lr = log_ratio_matrix(P, m, u, active) + math.log2(lam / (1 - lam))
        post = 1.0 / (1.0 + np.exp2(-np.clip(lr, -60, 60)))
        if fixed_post is not None:
            pin = ~np.isnan(fixed_post)
            post[pin] = fixed_post[pin]
        wm = cnt * post
        new_lam = wm.sum() / cnt.sum()
        delta = abs(new_lam - lam)
        lam = min(max(new_lam, 1e-12), 1 - 1e-12)
        if not fix_m:
            for j in active:
                K = len(m[j])
                g = P[:, j]
                s = np.bincount(g, weights=wm, minlength=K)
                s[0] = 0.0
                tot = s.sum()
                if tot <= 0:
                    continue
                new = np.maximum(s / tot, 1e-6)
                new[0] = 1.0
                new[1:] /= new[1:].sum()
                delta = max(delta, float(np.max(np.abs(new - m[j]))))
                m[j] = new
        if delta < tol:
            break
    return lam, m, it, post


def default_m(K: int) -> np.ndarray:
    """Starting m for K declared levels (+ null at 0): most mass on the top level."""
    m = np.ones(K + 1)
    if K == 1:
        m[1] = 1.0
        return m
    rest = np.array([0.5 ** (i + 1) for i in range(K - 1)])
    rest = rest / rest.sum() * 0.15
    m[1] = 0.85
    m[2:] = rest
    m[-1] = max(m[-1], 0.01)
    m[1:] /= m[1:].sum()
    return m


# --------------------------------------------------------------------------------------
# u by (stratified) random sampling
# --------------------------------------------------------------------------------------
def stratum_codes(ev: Evaluator) -> np.ndarray | None:
    """A cheap key holding nearly all of the comparison's rare agreeing levels."""
    k = ev.kind
    if k == "name":
        init = ev.nm["init"]
        fn, sn = ev.nm["fn1"], ev.nm["sn"]
        fi = np.where(fn >= 0, init[np.maximum(fn, 0)], -1).astype(np.int64)
        si = np.where(sn >= 0, init[np.maximum(sn, 0)], -1).astype(np.int64)
        return np.where((fi >= 0) & (si >= 0), fi * 4096 + si, -1)
    if k in ("string", "identifier", "exact"):
        if k == "exact":
            return None
        return ev.init.astype(np.int64) if k == "string" else None
    if k == "date":
        dp = ev.dp
        return np.where(dp["valid"], dp["y"].astype(np.int64) * 16 + dp["m"], -1)
    if k == "postcode":
        return ev.pc["district"][0].astype(np.int64)
    return None


def _sample_uniform(rng, a: tuple[int, int], b: tuple[int, int], dedupe: bool, n: int):
    la = rng.integers(a[0], a[1], n)
    if dedupe:
        off = rng.integers(1, a[1] - a[0], n)
        ra = a[0] + (la - a[0] + off) % (a[1] - a[0])
        lo, hi = np.minimum(la, ra), np.maximum(la, ra)
        return lo.astype(np.int32), hi.astype(np.int32)
    return la.astype(np.int32), rng.integers(b[0], b[1], n).astype(np.int32)


def _sample_stratum(rng, codes: np.ndarray, a, b, dedupe: bool, n: int):
    """n pairs uniform among pairs sharing the stratum code, and P(stratum)."""
    ca = codes[a[0]:a[1]]
    cb = codes[b[0]:b[1]]
    ia = np.flatnonzero(ca >= 0)
    ib = np.flatnonzero(cb >= 0)
    if ia.size == 0 or ib.size == 0:
        return None
    oa = ia[np.argsort(ca[ia], kind="stable")]
    ob = ib[np.argsort(cb[ib], kind="stable")]
    ka, sa, na = np.unique(ca[oa], return_index=True, return_counts=True)
    kb, sb, nb = np.unique(cb[ob], return_index=True, return_counts=True)
    common, xa, xb = np.intersect1d(ka, kb, return_indices=True)
    if common.size == 0:
        return None
    na_c, nb_c = na[xa].astype(np.float64), nb[xb].astype(np.float64)
    if dedupe:
        w = na_c * (na_c - 1) / 2
        total = (a[1] - a[0]) * (a[1] - a[0] - 1) / 2
    else:
        w = na_c * nb_c
        total = float(a[1] - a[0]) * float(b[1] - b[0])
    if w.sum() <= 0:
        return None
    p_s = float(w.sum() / total)
    pick = rng.choice(common.size, size=n, p=w / w.sum())
    la = oa[sa[xa][pick] + (rng.random(n) * na_c[pick]).astype(np.int64)] + a[0]
    if dedupe:
        base = sa[xa][pick]
        size = na_c[pick].astype(np.int64)
        ia_pos = (rng.random(n) * size).astype(np.int64)
        off = 1 + (rng.random(n) * (size - 1)).astype(np.int64)
        ib_pos = (ia_pos + off) % size
        l = oa[base + ia_pos] + a[0]
        r = oa[base + ib_pos] + a[0]
        return np.minimum(l, r).astype(np.int32), np.maximum(l, r).astype(np.int32), p_s
    ra = ob[sb[xb][pick] + (rng.random(n) * nb_c[pick]).astype(np.int64)] + b[0]
    return la.astype(np.int32), ra.astype(np.int32), p_s


@dataclass
class USample:
    """Random pairs for u: a uniform sample (all comparisons) and, per
    comparison, a stratified sample inside its stratum (that comparison only)."""
    li: np.ndarray
    ri: np.ndarray
    G_uniform: np.ndarray
    in_stratum_uniform: list[np.ndarray | None]
    strata: list[dict | None]       # {"g", "li", "ri", "p_s", "codes"}
    possible: float = 0.0


def estimate_u(rec: Records, evals: list[Evaluator], spec: LinkSpec, task: tuple[str, str],
               rng: np.random.Generator) -> USample:
    a = rec.offsets[task[0]]
    b = rec.offsets[task[1]]
    dedupe = task[0] == task[1]
    n_uni = int(spec.u_cfg["sample_pairs"])
    n_str = int(spec.u_cfg["stratified_pairs"])
    na, nb = a[1] - a[0], b[1] - b[0]
    possible = na * (na - 1) / 2 if dedupe else float(na) * nb
    n_uni = int(min(n_uni, max(possible, 1)))
    li, ri = _sample_uniform(rng, a, b, dedupe, n_uni)
    G, _ = comparison_matrix(evals, li, ri, task)
    in_s, strata = [], []
    for j, ev in enumerate(evals):
        codes = stratum_codes(ev)
        s = None if codes is None or n_str <= 0 else _sample_stratum(rng, codes, a, b, dedupe, n_str)
        if s is None:
            in_s.append(None)
            strata.append(None)
            continue
        sl, sr, p_s = s
        g, _ = ev.gamma(sl, sr, task)
        cl, cr = codes[li], codes[ri]
        in_s.append((cl >= 0) & (cl == cr))
        strata.append({"g": g, "li": sl, "ri": sr, "p_s": p_s, "codes": codes})
    return USample(li, ri, G, in_s, strata, possible)


def _finish_u(counts: np.ndarray, floor: float) -> np.ndarray:
    u = counts.astype(np.float64).copy()
    u[0] = 0.0
    tot = u.sum()
    u = u / tot if tot > 0 else np.full(u.size, 1.0 / max(u.size - 1, 1))
    u = np.maximum(u, floor)
    u[1:] = u[1:] / u[1:].sum()
    u[0] = 1.0
    return u


def u_from_sample(us: USample, evals: list[Evaluator], cand: dict | None = None) -> list[np.ndarray]:
    """u per comparison (index 0 = null, set to 1).

    Without `cand`: P(level) = P(S) f_S + (1 - P(S)) f_notS from the samples.
    With `cand` (the task's candidate pairs, their levels and match
    probabilities): the candidate pairs are counted exactly, each weighted by
    1 - P(match), and the samples only stand for the non-candidate pairs,
    which hold almost no matches. Blocking rules thus act as free strata for
    the rare agreeing levels."""
    out = []
    N = us.possible
    for j, ev in enumerate(evals):
        K = len(ev.comp.levels) + 1
        g = us.G_uniform[:, j]
        st = us.strata[j]
        if cand is None:
            if st is None:
                c = np.bincount(g, minlength=K).astype(np.float64)
                out.append(_finish_u(c, 1.0 / max(g.size, 1)))
                continue
            ins = us.in_stratum_uniform[j]
            fs = np.bincount(st["g"], minlength=K) / max(st["g"].size, 1)
            fn = np.bincount(g[~ins], minlength=K) / max((~ins).sum(), 1)
            u = st["p_s"] * fs + (1 - st["p_s"]) * fn
            out.append(_finish_u(u, st["p_s"] / max(st["g"].size, 1)))
            continue
        # candidate-aware
        C = float(cand["n"])
        Gc, post = cand["P"][:, j], cand["post"]
        mass = np.bincount(Gc, weights=cand["cnt"] * (1 - post), minlength=K).astype(np.float64)
        unc = ~cand["in_uniform"]
        if st is None:
            f = np.bincount(g[unc], minlength=K) / max(unc.sum(), 1)
            counts = mass + max(N - C, 0.0) * f
            out.append(_finish_u(counts, 1.0 / max(N, 1.0)))
            continue
        ins = us.in_stratum_uniform[j]
        p_s = st["p_s"]
        cs = float(cand["in_stratum"][j])          # candidate pairs inside the stratum
        s_unc = ~cand["in_strata"][j]
        fs = np.bincount(st["g"][s_unc], minlength=K) / max(s_unc.sum(), 1)
        sel = unc & ~ins
        fn = np.bincount(g[sel], minlength=K) / max(sel.sum(), 1)
        m_s = max(p_s * N - cs, 0.0)
        m_n = max(N - C - m_s, 0.0)
        counts = mass + m_s * fs + m_n * fn
        out.append(_finish_u(counts, 1.0 / max(N, 1.0)))
    return out


# --------------------------------------------------------------------------------------
# Training sessions
# --------------------------------------------------------------------------------------
@dataclass
class SessionResult:
    rule: str
    task: str
    pairs_total: int
    pairs_used: int
    patterns: int
    iterations: int
    lam: float
    estimated: list[str] = field(default_factory=list)
    fixed: list[str] = field(default_factory=list)
    m: dict[str, list[float]] = field(default_factory=dict)


def session_pairs(rec: Records, spec: LinkSpec, sess, task, rng) -> tuple[np.ndarray, np.ndarray, int]:
    keys = record_keys(rec, sess.rule)
    a, b = rec.offsets[task[0]], rec.offsets[task[1]]
    dedupe = task[0] == task[1]
    it, total, _ = rule_pairs(keys, a, b, dedupe, chunk_pairs=10**12, max_block_pairs=sess.rule.max_block_pairs or spec.max_block_pairs)
    frac = 1.0
    if total > sess.max_pairs:
        frac = sess.max_pairs / total
        it, _, _ = rule_pairs(keys, a, b, dedupe, chunk_pairs=10**12,
                              max_block_pairs=sess.rule.max_block_pairs or spec.max_block_pairs,
                              key_fraction=frac, seed=int(rng.integers(0, 1 << 30)))
    ls, rs = [], []
    for li, ri in it:
        ls.append(li)
        rs.append(ri)
    if not ls:
        return np.zeros(0, np.int32), np.zeros(0, np.int32), total
    return np.concatenate(ls), np.concatenate(rs), total


def fields_of_rule(rule) -> set[str]:
    return {f for k in rule.keys for f in k.fields}


def estimate_lambda_candidates(P: np.ndarray, cnt: np.ndarray, m, u, n_possible: float,
                               lam0: float = 0.01, max_iter: int = 500, tol: float = 1e-10
                               ) -> tuple[float, float]:
    """lambda = expected matches / possible pairs, with m and u fixed.

    Fixed point of lambda = sum over candidate patterns of count x P(match |
    pattern, lambda) / possible pairs, where the posterior uses the GLOBAL prior
    lambda and the global u (u describes random pairs, not candidate pairs;
    pairs outside the candidates are taken as non-matches)."""
    if cnt.sum() == 0 or n_possible <= 0:
        return 1e-12, 0.0
    lr = log_ratio_matrix(P, m, u, list(range(P.shape[1])))
    lam = min(max(lam0, 1e-12), 0.5)
    expected = 0.0
    for _ in range(max_iter):
        post = 1.0 / (1.0 + np.exp2(-np.clip(lr + math.log2(lam / (1 - lam)), -60, 60)))
        expected = float((post * cnt).sum())
        new = min(max(expected / n_possible, 1e-12), 0.5)
        if abs(new - lam) <= tol * max(lam, 1e-12):
            lam = new
            break
        lam = new
    return lam, expected
