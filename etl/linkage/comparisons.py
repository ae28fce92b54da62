"""The library of comparison kinds: turn candidate pairs into comparison levels.

A comparison's levels are tried in declared order and the first that holds
wins; level 0 is `null` (a needed value missing on either side: no evidence),
the last level is `else`. Everything works on whole arrays of pairs: integer
code compares for equality, rapidfuzz `cpdist` for string similarity, and
only on the pairs that no earlier level has claimed.
"""

from __future__ import annotations

import numpy as np
import polars as pl
from rapidfuzz import process
from rapidfuzz.distance import DamerauLevenshtein, Jaro, JaroWinkler, Levenshtein, OSA

from etl.linkage.records import Records
from etl.linkage.spec import Comparison, Level

_SCORERS = {
    "jaro_winkler": (JaroWinkler.normalized_similarity, np.float32, "sim"),
    "jaro": (Jaro.normalized_similarity, np.float32, "sim"),
    # restricted Damerau-Levenshtein (optimal string alignment): an adjacent
    # transposition costs 1, as in keying errors; several times faster than full DL
    "damerau_levenshtein": (OSA.distance, np.int32, "dist"),
    "true_damerau_levenshtein": (DamerauLevenshtein.distance, np.int32, "dist"),
    "levenshtein": (Levenshtein.distance, np.int32, "dist"),
    "osa": (OSA.distance, np.int32, "dist"),
}


class _Lazy:
    """Per-chunk cache of a string metric over pairs, filled only where asked."""

    def __init__(self, n: int):
        self.n = n
        self.store: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def get(self, key: str, idx: np.ndarray, compute) -> np.ndarray:
        if key not in self.store:
            arr = np.zeros(self.n, np.float32)
            done = np.zeros(self.n, bool)
            self.store[key] = (arr, done)
        arr, done = self.store[key]
        need = idx[~done[idx]]
        if need.size:
            arr[need] = compute(need)
            done[need] = True
        return arr[idx]


def _cpdist(a: np.ndarray, b: np.ndarray, metric: str, workers: int) -> np.ndarray:
    scorer, dtype, kind = _SCORERS[metric]
    if a.size == 0:
        return np.zeros(0, np.float32)
    # distances above 4 are never a level threshold: let rapidfuzz stop early
    cut = 4 if kind == "dist" else None
    return process.cpdist(a, b, scorer=scorer, workers=workers, dtype=dtype,
                          score_cutoff=cut).astype(np.float32)


def _tf_table(codes: np.ndarray) -> np.ndarray:
    """Per-record relative frequency of its value among non-null records."""
    ok = codes >= 0
    out = np.zeros(codes.size, np.float64)
    if ok.any():
        from etl.linkage._np import unique_inverse

        _, inv, cnt = unique_inverse(codes[ok])
        out[ok] = cnt[inv] / ok.sum()
    return out


class Evaluator:
    """Computes the levels of one comparison for arrays of pairs."""

    def __init__(self, comp: Comparison, rec: Records, workers: int = -1):
        self.comp = comp
        self.rec = rec
        self.workers = workers
        self.kind = comp.kind
        f = comp.fields
        if self.kind == "name":
            self.nm = rec.name_space(f["forename"], f["surname"], list(f.get("alternatives") or []))
        elif self.kind in ("string", "exact"):
            self.codes, self.values = rec.string_codes(f["value"])
            self.init = rec.derived_codes(f"init:{f['value']}", pl.col(f["value"]).cast(pl.String).str.slice(0, 1))[0]
        elif self.kind == "identifier":
            pattern = comp.options.get("pattern")
            s = rec.col(f["value"]).cast(pl.String)
            if pattern:
                s = pl.select(pl.when(s.str.contains(pattern)).then(s)).to_series()
            self.codes, self.values = rec.codes_of(f"ident:{f['value']}:{pattern}", s)
        elif self.kind == "date":
            self.dp = rec.date_parts(f["value"])
        elif self.kind == "postcode":
            self.pc = rec.postcode_parts(f["value"])
        elif self.kind == "numeric":
            self.num = rec.numeric(f["value"])
        self.tf_levels = {i + 1: lv.tf for i, lv in enumerate(comp.levels) if lv.tf}
        # per-record "may take this level" masks for levels with a `when` condition
        self.when: dict[int, np.ndarray] = {}
        for i, lv in enumerate(comp.levels):
            cond = lv.params.get("when")
            if cond:
                ok = np.ones(rec.n, bool)
                for f, values in cond.items():
                    # a missing value does not contradict the condition
                    ok &= rec.col(f).cast(pl.String).is_in(values).fill_null(True).to_numpy()
                self.when[i + 1] = ok
        self._tf_cache: dict[str, np.ndarray] = {}

    # ---- term frequencies --------------------------------------------------------
    def tf_codes(self, which: str) -> np.ndarray:
        if self.kind == "name":
            return {"joint": self.nm["joint"], "forename": self.nm["fn1"], "surname": self.nm["sn"]}.get(
                which, self.nm["joint"])
        if self.kind in ("string", "exact", "identifier"):
            return self.codes
        if self.kind == "date":
            return self.dp["raw"][0]
        if self.kind == "postcode":
            return self.pc["full"][0]
        raise ValueError(which)

    def set_tf(self, which: str, table: np.ndarray) -> None:
        """Per-record term frequencies supplied from outside (population counts)."""
        self._tf_cache[which] = np.asarray(table, dtype=np.float64)

    def tf(self, which: str) -> np.ndarray:
        if which not in self._tf_cache:
            self._tf_cache[which] = _tf_table(self.tf_codes(which))
        return self._tf_cache[which]

    def tf_summary(self, top: int = 10) -> dict:
        """Counts only (no values): the restricted model file may be read widely."""
        out = {}
        for which in sorted(set(self.tf_levels.values())):
            codes = self.tf_codes(which)
            ok = codes[codes >= 0]
            _, cnt = np.unique(ok, return_counts=True)
            cnt = np.sort(cnt)[::-1]
            out[which] = {"distinct_values": int(cnt.size), "non_null_records": int(ok.size),
                          "top_frequencies": [float(c / max(ok.size, 1)) for c in cnt[:top]]}
        return out

    # ---- levels ------------------------------------------------------------------
    def gamma(self, li: np.ndarray, ri: np.ndarray, task: tuple[str, str] | None = None
              ) -> tuple[np.ndarray, np.ndarray | None]:
        n = li.size
        out = np.zeros(n, np.int8)
        tfu = np.zeros(n, np.float32) if self.tf_levels else None
        if self.comp.tasks is not None and task is not None and task not in self.comp.tasks:
            return out, tfu
        undecided = ~self._null(li, ri)
        lazy = _Lazy(n)
        for k, lv in enumerate(self.comp.levels, start=1):
            idx = np.flatnonzero(undecided)
            if idx.size == 0:
                break
            if k in self.when:
                ok = self.when[k]
                idx = idx[ok[li[idx]] & ok[ri[idx]]]
                if idx.size == 0:
                    continue
            if lv.test == "else":
                hit = idx
            else:
                hit = idx[self._test(lv, li, ri, idx, lazy)]
            out[hit] = k
            undecided[hit] = False
            if lv.tf and hit.size:
                t = self.tf(lv.tf)
                tfu[hit] = np.maximum(t[li[hit]], t[ri[hit]])
        return out, tfu

    def _null(self, li, ri) -> np.ndarray:
        k = self.kind
        if k == "name":
            fn, sn = self.nm["fn1"], self.nm["sn"]
            return (fn[li] < 0) | (fn[ri] < 0) | (sn[li] < 0) | (sn[ri] < 0)
        if k in ("string", "exact", "identifier"):
            return (self.codes[li] < 0) | (self.codes[ri] < 0)
        if k == "date":
            raw = self.dp["raw"][0]
            return (raw[li] < 0) | (raw[ri] < 0)
        if k == "postcode":
            c = self.pc["full"][0]
            return (c[li] < 0) | (c[ri] < 0)
        if k == "numeric":
            return np.isnan(self.num[li]) | np.isnan(self.num[ri])
        raise ValueError(k)

    # name-kind helpers
    def _part_codes(self, part: str) -> np.ndarray:
        return self.nm["fn1"] if part == "forename" else self.nm["sn"]

    def _part(self, part: str, cond, li, ri, idx, lazy: _Lazy) -> np.ndarray:
        codes = self._part_codes(part)
        a, b = codes[li[idx]], codes[ri[idx]]
        if isinstance(cond, dict):
            (metric, thr), = cond.items()
            if metric in ("initial", "alias", "exact", "any", "differ"):
                cond = metric
            else:
                vals = self.nm["values"]
                eq = a == b
                if _SCORERS[metric][2] == "dist":
                    # |len difference| <= k is necessary for distance <= k: skip the rest
                    ln = self._lengths()
                    near = np.abs(ln[a] - ln[b]) <= thr
                    out = eq.copy()
                    sub = idx[near & ~eq]
                    if sub.size:
                        d = lazy.get(f"{part}:{metric}", sub,
                                     lambda need: _cpdist(vals[codes[li[need]]], vals[codes[ri[need]]],
                                                          metric, self.workers))
                        out[np.flatnonzero(near & ~eq)] = d <= thr
                    return out
                sim = lazy.get(f"{part}:{metric}", idx,
                               lambda need: _cpdist(vals[codes[li[need]]], vals[codes[ri[need]]],
                                                    metric, self.workers))
                return eq | (sim >= thr)
        if cond == "exact":
            return a == b
        if cond == "any":
            return np.ones(idx.size, bool)
        if cond == "differ":
            return a != b
        if cond == "initial":
            init = self.nm["init"]
            return init[a] == init[b]
        if cond == "alias":
            if part != "forename":
                return a == b
            return (a == b) | self._alias(li[idx], ri[idx])
        raise ValueError(cond)

    def _lengths(self) -> np.ndarray:
        if not hasattr(self, "_len"):
            vals = self.nm["values"]
            self._len = np.append(pl.Series(vals.tolist(), dtype=pl.String).str.len_chars()
                                  .fill_null(0).to_numpy().astype(np.int32), 0)
        return self._len

    def _alias(self, l, r) -> np.ndarray:
        """First given name of either record equals any given/preferred/other name token of the other."""
        fn, alts = self.nm["fn1"], self.nm["alts"]
        hit = np.zeros(l.size, bool)
        fl, fr = fn[l], fn[r]
        for slot in alts:
            hit |= (slot[r] == fl) | (slot[l] == fr)
        return hit & (fl >= 0)

    def _test(self, lv: Level, li, ri, idx, lazy: _Lazy) -> np.ndarray:
        k, t, p = self.kind, lv.test, lv.params
        if k == "name":
            fn, sn = self.nm["fn1"], self.nm["sn"]
            l, r = li[idx], ri[idx]
            if t == "exact":
                return (fn[l] == fn[r]) & (sn[l] == sn[r])
            if t == "swapped":
                return (fn[l] == sn[r]) & (sn[l] == fn[r])
            if t == "alias":
                ok = sn[l] == sn[r]
                sub = np.flatnonzero(ok & (fn[l] != fn[r]))
                ok[sub] = self._alias(l[sub], r[sub])
                return ok
            if t == "parts":
                ok = np.ones(idx.size, bool)
                conds = [(part, p.get(part, "any")) for part in ("forename", "surname")]
                # cheap tests first: a string metric is then computed only on the
                # few pairs that passed them
                conds.sort(key=lambda pc: isinstance(pc[1], dict))
                for part, cond in conds:
                    if cond == "any":
                        continue
                    sub = np.flatnonzero(ok)
                    if sub.size == 0:
                        break
                    ok[sub] = self._part(part, cond, li, ri, idx[sub], lazy)
                return ok
        if k in ("string", "exact", "identifier"):
            c = self.codes
            a, b = c[li[idx]], c[ri[idx]]
            if t == "exact":
                return a == b
            if t == "prefix":
                n = int(p.get("n", 1))
                if n == 1:
                    return self.init[li[idx]] == self.init[ri[idx]]
                f = self.comp.fields["value"]
                pc = self.rec.derived_codes(f"prefix{n}:{f}", pl.col(f).cast(pl.String).str.slice(0, n))[0]
                return pc[li[idx]] == pc[ri[idx]]
            metric = {"typo": "osa"}.get(t, t)
            v = self.values
            score = lazy.get(metric, idx, lambda need: _cpdist(v[c[li[need]]], v[c[ri[need]]],
                                                              metric, self.workers))
            if t == "typo":
                return (a == b) | (score <= p.get("max", 1))
            if _SCORERS[metric][2] == "sim":
                return (a == b) | (score >= p["threshold"])
            return (a == b) | (score <= p["max"])
        if k == "date":
            dp = self.dp
            l, r = li[idx], ri[idx]
            valid = dp["valid"][l] & dp["valid"][r]
            y, m, d = dp["y"], dp["m"], dp["d"]
            raw = dp["raw"][0]
            if t == "exact":
                return raw[l] == raw[r]
            if t == "day_month_swap":
                return valid & (y[l] == y[r]) & (m[l] == d[r]) & (d[l] == m[r])
            if t == "year_off":
                return valid & (m[l] == m[r]) & (d[l] == d[r]) & (np.abs(y[l] - y[r]) <= p.get("max", 1))
            if t == "one_component":
                same = (y[l] == y[r]).astype(np.int8) + (m[l] == m[r]) + (d[l] == d[r])
                return valid & (same >= 2)
            if t == "within_days":
                return valid & (np.abs(dp["days"][l] - dp["days"][r]) <= p["days"])
            if t == "damerau_levenshtein":
                vals = dp["raw"][1]
                dist = lazy.get("dl", idx, lambda need: _cpdist(vals[raw[li[need]]], vals[raw[ri[need]]],
                                                                "damerau_levenshtein", self.workers))
                return dist <= p["max"]
        if k == "postcode":
            c = self.pc[{"full": "full", "sector": "sector", "district": "district", "area": "area"}[t]][0]
            a, b = c[li[idx]], c[ri[idx]]
            return (a == b) & (a >= 0)
        if k == "numeric":
            x, y = self.num[li[idx]], self.num[ri[idx]]
            if t == "exact":
                return x == y
            if t == "within":
                return np.abs(x - y) <= p["max"]
        raise ValueError(f"{k}:{t}")


def comparison_matrix(evals: list[Evaluator], li: np.ndarray, ri: np.ndarray,
                      task: tuple[str, str] | None = None
                      ) -> tuple[np.ndarray, dict[int, np.ndarray]]:
    """Levels for every comparison: an (n_pairs, n_comparisons) int8 matrix and
    the TF frequency per pair for comparisons that have TF levels."""
    G = np.zeros((li.size, len(evals)), np.int8)
    tfs: dict[int, np.ndarray] = {}
    for j, ev in enumerate(evals):
        g, t = ev.gamma(li, ri, task)
        G[:, j] = g
        if t is not None:
            tfs[j] = t
    return G, tfs
