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
    id_codes: list          # per identifier: uint64 code per record (0 = none); exact pairs share one


def _id_values(rec: Records, ident: Identifier) -> pl.Series:
    s = rec.col(ident.field).cast(pl.String)
    return pl.select(pl.when(s.str.contains(ident.pattern)).then(s)).to_series()


def _typo_pairs_all(vals: pl.Series, block: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """All record pairs (l < r) whose values differ by one substitution or one
    adjacent transposition. Works on the DISTINCT values (deletion-neighbourhood
    and transposition joins), then expands value pairs to record pairs; once
    per identifier, not per task.

    `block` (int64 per record, -1 = cannot be confirmed): only pairs with equal
    block are wanted. GMC numbers are dense (7 digits, ~1M in use), so at 1M
    doctors every number has several one-typo neighbours: 29M candidate pairs,
    of which a few thousand share a date of birth."""
    g = np.arange(vals.len(), dtype=np.int32)
    b = np.zeros(vals.len(), np.int64) if block is None else block
    recs = pl.DataFrame({"g": g, "v": vals, "b": b}).drop_nulls("v").filter(pl.col("b") >= 0)
    uniq = recs.select("v", "b").unique().with_columns(pl.col("v").str.len_chars().alias("n"))
    if uniq.height < 2:
        return np.zeros(0, np.int32), np.zeros(0, np.int32)
    maxlen = int(uniq["n"].max())
    # one deletion position / one transposition at a time: all positions at once held
    # ~12M strings and their join at 1M doctors (the link stage's 6 GiB peak)
    parts = []
    for i in range(maxlen):
        dels = uniq.filter(pl.col("n") > i).select(
            "v", "b", "n", pl.concat_str([pl.col("v").str.slice(0, i), pl.col("v").str.slice(i + 1)]).alias("d"))
        parts.append(dels.join(dels, on=["d", "n", "b"], how="inner", suffix="_r")
                     .filter(pl.col("v") < pl.col("v_r")).select("v", "v_r", "b"))
        if i < maxlen - 1:
            swaps = uniq.filter(pl.col("n") > i + 1).select(
                "v", "b", pl.concat_str([pl.col("v").str.slice(0, i), pl.col("v").str.slice(i + 1, 1),
                                         pl.col("v").str.slice(i, 1), pl.col("v").str.slice(i + 2)]).alias("w"))
            parts.append(swaps.join(uniq.select(pl.col("v").alias("w"), "b"), on=["w", "b"], how="inner")
                         .filter(pl.col("v") != pl.col("w"))
                         .select(pl.min_horizontal("v", "w").alias("v"), pl.max_horizontal("v", "w").alias("v_r"),
                                 "b"))
    vp = pl.concat(parts).unique()
    pairs = vp.join(recs, on=["v", "b"]).join(recs.rename({"v": "v_r", "g": "g_r"}), on=["v_r", "b"])
    li, ri = pairs["g"].to_numpy(), pairs["g_r"].to_numpy()
    return np.minimum(li, ri).astype(np.int32), np.maximum(li, ri).astype(np.int32)


def _confirm_block(evals: dict[str, Evaluator], ident: Identifier) -> np.ndarray | None:
    """A key that two records must share for the declared `confirm` to hold, used to
    narrow the typo search: when the date-of-birth levels that confirm are only
    `exact` and/or `day_month_swap`, the date with day and month sorted (or, for
    text that does not parse, the raw text) is such a key. -1: no date, never
    confirmed. None when the confirm rule allows other date levels."""
    for cname, labels in ident.confirm.items():
        ev = evals.get(cname)
        if ev is None or ev.kind != "date":
            continue
        tests = {lv.label: lv.test for lv in ev.comp.levels}
        if not labels or not all(tests.get(lab) in ("exact", "day_month_swap") for lab in labels):
            continue
        dp = ev.dp
        y, m, d = dp["y"].astype(np.int64), dp["m"].astype(np.int64), dp["d"].astype(np.int64)
        key = y * 10000 + np.minimum(m, d) * 100 + np.maximum(m, d)
        raw = dp["raw"][0].astype(np.int64)
        key = np.where(dp["valid"], key, np.where(raw >= 0, 10**9 + raw, -1))
        return key
    return None


_COST = {"date": 0, "exact": 0, "identifier": 0, "numeric": 0, "postcode": 1, "string": 2, "name": 3}


def _levels_ok(evals: dict[str, Evaluator], wanted: dict[str, list[str]], li, ri, task) -> np.ndarray:
    """Pairs whose every wanted comparison is at one of the wanted levels.
    Cheap comparisons first, and each next one only on the pairs still in:
    at 1M doctors the GMC typo neighbourhood holds ~29M candidate pairs, of
    which a few thousand share the date of birth; names are then compared on
    those few only."""
    ok = np.ones(li.size, bool)
    for cname in sorted(wanted, key=lambda c: _COST.get(evals[c].kind, 2)):
        idx = np.flatnonzero(ok)
        if idx.size == 0:
            break
        ev = evals[cname]
        g, _ = ev.gamma(li[idx], ri[idx], task)
        allowed = [i for i, lab in enumerate(ev.comp.level_labels()) if lab in wanted[cname]]
        ok[idx] = np.isin(g, allowed)
    return ok


def deterministic_pass(rec: Records, spec: LinkSpec, evals: dict[str, Evaluator],
                       tasks: list[tuple[str, str]]) -> DetPairs:
    L, R, M, I, T, stats = [], [], [], [], [], []
    id_codes = []
    for ii, ident in enumerate(spec.identifiers):
        if ident.field not in rec.df.columns:
            continue
        vals = _id_values(rec, ident)
        codes = pl.DataFrame({"v": vals}).select(pl.col("v").hash(seed=3)).to_series().to_numpy()
        codes = codes.astype(np.uint64)
        codes[codes == 0] = 1
        codes[vals.is_null().to_numpy()] = 0
        id_codes.append(codes)
        typo_all = None
        for ti, task in enumerate(tasks):
            if ident.tasks is not None and task not in ident.tasks:
                continue
            a, b = rec.offsets[task[0]], rec.offsets[task[1]]
            dedupe = task[0] == task[1]
            if a[1] <= a[0] or b[1] <= b[0]:
                continue
            if not codes[a[0]:a[1]].any() or not codes[b[0]:b[1]].any():
                continue          # one side never carries this identifier
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
                if typo_all is None:
                    typo_all = _typo_pairs_all(vals, _confirm_block(evals, ident))
                al, ar = typo_all
                sl, sr = rec.src[al], rec.src[ar]
                ia, ib = rec.sources.index(task[0]), rec.sources.index(task[1])
                in_task = ((sl == ia) & (sr == ib)) | ((sl == ib) & (sr == ia))
                tl, tr = np.minimum(al[in_task], ar[in_task]), np.maximum(al[in_task], ar[in_task])
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
        return DetPairs(z, z, z.astype(np.int8), z.astype(np.int8), z.astype(np.int8), stats, id_codes)
    li, ri = np.concatenate(L).astype(np.int32), np.concatenate(R).astype(np.int32)
    m, i_, t = np.concatenate(M), np.concatenate(I), np.concatenate(T)
    # one row per pair: the first identifier / best method wins
    code = li.astype(np.int64) * rec.n + ri
    order = np.lexsort((m, code))
    code, li, ri, m, i_, t = code[order], li[order], ri[order], m[order], i_[order], t[order]
    first = np.ones(code.size, bool)
    first[1:] = code[1:] != code[:-1]
    return DetPairs(li[first], ri[first], m[first], i_[first], t[first], stats, id_codes)
