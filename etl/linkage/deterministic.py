"""Deterministic pass on identifiers that validate (GMC number, UCAS id).

Exact agreement on a validated identifier links, unless the declared `veto`
levels all hold (e.g. name AND date of birth both disagree outright: a typo
that landed on another doctor's number). A typo-tolerant fallback finds pairs
whose identifiers differ by one substituted character or one adjacent
transposition (deletion-neighbourhood joins, no pairwise loop) and links them
only when the declared `confirm` comparisons agree (name and DOB levels).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

from etl.linkage.blocking import rule_pairs
from etl.linkage.comparisons import Evaluator
from etl.linkage.records import Records
from etl.linkage.spec import Identifier, LinkSpec


@dataclass
class DetPairs:
    li: np.ndarray
    ri: np.ndarray
    method: np.ndarray      # 1 = exact identifier, 2 = identifier typo confirmed
    ident: np.ndarray       # index into spec.identifiers
    task: np.ndarray        # index into tasks
    stats: list[dict]


def _id_values(rec: Records, ident: Identifier) -> pl.Series:
    s = rec.col(ident.field).cast(pl.String)
    return pl.select(pl.when(s.str.contains(ident.pattern)).then(s)).to_series()


def _typo_pairs(vals: pl.Series, a: tuple[int, int], b: tuple[int, int], dedupe: bool) -> tuple[np.ndarray, np.ndarray]:
    """Pairs whose values differ by one substitution or one adjacent transposition."""
    gid = pl.Series("g", np.arange(vals.len(), dtype=np.int32))
    frame = pl.DataFrame({"g": gid, "v": vals}).with_columns(pl.col("v").str.len_chars().alias("n"))
    fa = frame.slice(a[0], a[1] - a[0]).drop_nulls("v")
    fb = fa if dedupe else frame.slice(b[0], b[1] - b[0]).drop_nulls("v")
    if fa.height == 0 or fb.height == 0:
        return np.zeros(0, np.int32), np.zeros(0, np.int32)
    maxlen = int(max(fa["n"].max(), fb["n"].max()))
    outs = []

    def deletions(f: pl.DataFrame) -> pl.DataFrame:
        parts = []
        for i in range(maxlen):
            parts.append(f.filter(pl.col("n") > i).select(
                "g", pl.lit(i, pl.Int16).alias("pos"),
                pl.concat_str([pl.col("v").str.slice(0, i), pl.col("v").str.slice(i + 1)]).alias("d"),
                "n"))
        return pl.concat(parts)

    da = deletions(fa)
    db = da if dedupe else deletions(fb)
    sub = da.join(db, on=["d", "pos", "n"], how="inner", suffix="_r").select("g", "g_r")
    outs.append(sub)
    swaps = []
    for i in range(maxlen - 1):
        swaps.append(fa.filter(pl.col("n") > i + 1).select(
            "g", pl.concat_str([pl.col("v").str.slice(0, i), pl.col("v").str.slice(i + 1, 1),
                                pl.col("v").str.slice(i, 1), pl.col("v").str.slice(i + 2)]).alias("v")))
    sw = pl.concat(swaps).join(fb.select("g", "v"), on="v", how="inner", suffix="_r").select("g", "g_r")
    outs.append(sw)
    allp = pl.concat(outs)
    if dedupe:
        allp = allp.select(pl.min_horizontal("g", "g_r").alias("g"), pl.max_horizontal("g", "g_r").alias("g_r"))
    allp = allp.filter(pl.col("g") != pl.col("g_r")).unique()
    # drop exact agreement (handled by the exact pass)
    v = vals.to_numpy()
    li, ri = allp["g"].to_numpy(), allp["g_r"].to_numpy()
    keep = v[li] != v[ri]
    return li[keep].astype(np.int32), ri[keep].astype(np.int32)


def _levels_ok(evals: dict[str, Evaluator], wanted: dict[str, list[str]], li, ri, task) -> np.ndarray:
    ok = np.ones(li.size, bool)
    for cname, labels in wanted.items():
        ev = evals[cname]
        g, _ = ev.gamma(li, ri, task)
        allowed = [i for i, lab in enumerate(ev.comp.level_labels()) if lab in labels]
        ok &= np.isin(g, allowed)
    return ok


def deterministic_pass(rec: Records, spec: LinkSpec, evals: dict[str, Evaluator],
                       tasks: list[tuple[str, str]]) -> DetPairs:
    L, R, M, I, T, stats = [], [], [], [], [], []
    for ii, ident in enumerate(spec.identifiers):
        if ident.field not in rec.df.columns:
            continue
        vals = _id_values(rec, ident)
        codes = pl.DataFrame({"v": vals}).select(pl.col("v").hash(seed=3)).to_series().to_numpy()
        codes = codes.astype(np.uint64)
        codes[codes == 0] = 1
        codes[vals.is_null().to_numpy()] = 0
        for ti, task in enumerate(tasks):
            if ident.tasks is not None and task not in ident.tasks:
                continue
            a, b = rec.offsets[task[0]], rec.offsets[task[1]]
            dedupe = task[0] == task[1]
            if a[1] <= a[0] or b[1] <= b[0]:
                continue
            it, total, _ = rule_pairs(codes, a, b, dedupe, chunk_pairs=10**12)
            chunks = list(it)
            li = np.concatenate([c[0] for c in chunks]) if chunks else np.zeros(0, np.int32)
            ri = np.concatenate([c[1] for c in chunks]) if chunks else np.zeros(0, np.int32)
            vetoed = 0
            if ident.veto and li.size:
                bad = _levels_ok(evals, ident.veto, li, ri, task)
                vetoed = int(bad.sum())
                li, ri = li[~bad], ri[~bad]
            st = {"identifier": ident.name, "task": spec.task_key(task), "exact_pairs": int(li.size),
                  "exact_vetoed": vetoed, "typo_candidates": 0, "typo_confirmed": 0}
            L.append(li); R.append(ri); M.append(np.full(li.size, 1, np.int8))
            I.append(np.full(li.size, ii, np.int8)); T.append(np.full(li.size, ti, np.int8))
            if ident.typo_tolerant:
                tl, tr = _typo_pairs(vals, a, b, dedupe)
                st["typo_candidates"] = int(tl.size)
                if tl.size:
                    ok = _levels_ok(evals, ident.confirm, tl, tr, task) if ident.confirm else np.zeros(tl.size, bool)
                    tl, tr = tl[ok], tr[ok]
                st["typo_confirmed"] = int(tl.size)
                L.append(tl); R.append(tr); M.append(np.full(tl.size, 2, np.int8))
                I.append(np.full(tl.size, ii, np.int8)); T.append(np.full(tl.size, ti, np.int8))
            stats.append(st)
    if not L:
        z = np.zeros(0, np.int32)
        return DetPairs(z, z, z.astype(np.int8), z.astype(np.int8), z.astype(np.int8), stats)
    li, ri = np.concatenate(L).astype(np.int32), np.concatenate(R).astype(np.int32)
    m, i_, t = np.concatenate(M), np.concatenate(I), np.concatenate(T)
    # one row per pair: the first identifier / best method wins
    code = li.astype(np.int64) * rec.n + ri
    order = np.lexsort((m, code))
    code, li, ri, m, i_, t = code[order], li[order], ri[order], m[order], i_[order], t[order]
    first = np.ones(code.size, bool)
    first[1:] = code[1:] != code[:-1]
    return DetPairs(li[first], ri[first], m[first], i_[first], t[first], stats)
