"""`link()`: the linkage stage from standardised sources to clusters.

    load -> deterministic identifier pass -> u (sampled) -> m (EM sessions)
         -> candidate pairs (union of blocking rules) -> lambda (expected matches)
         -> refine u, m once -> score -> constrained clustering -> outputs + report

Writes clusters.parquet, pairs.parquet, model.json, review.csv, report.json,
report.html into out_dir. Returns counts only.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import polars as pl

from etl.errors import ConfigError
from etl.linkage import train as T
from etl.linkage.blocking import RuleStats, all_record_keys, drop_found, focus_keys, rule_pairs
from etl.linkage.cluster import cluster
from etl.linkage.comparisons import Evaluator, comparison_matrix
from etl.linkage.deterministic import deterministic_pass
from etl.linkage.model import Model, TaskModel, load_model, signature
from etl.linkage.records import Records
from etl.linkage.spec import LinkSpec

@dataclass
class Scored:
    """All scored candidate pairs kept (above the floor, or forced)."""
    li: np.ndarray
    ri: np.ndarray
    task: np.ndarray           # index into tasks
    rule: np.ndarray           # index into rule names
    G: np.ndarray              # (n, n_comparisons) int8 levels
    tfu: dict[int, np.ndarray]
    weight: np.ndarray
    prob: np.ndarray
    method: np.ndarray         # 0 probabilistic, 1 det exact, 2 det typo, 3 clerical label
    rule_names: list[str] = field(default_factory=list)


def _say(progress, msg: str) -> None:
    if progress is not None:
        try:
            progress(msg)
        except TypeError:
            pass


def pair_weights(tm: TaskModel, G: np.ndarray, tfu: dict[int, np.ndarray], tf_min: float) -> np.ndarray:
    """Match weight per pair: prior + sum of level weights + TF adjustments."""
    W = tm.weight_tables()
    w = np.full(G.shape[0], tm.prior_weight)
    for j, tab in enumerate(W):
        w += tab[G[:, j]]
    for j, t in tfu.items():
        has = t > 0
        if has.any():
            u_lvl = tm.u[j][G[has, j]]
            w[has] += np.log2(u_lvl / np.maximum(t[has], tf_min))
    return w


def prob_of(w: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp2(-np.clip(w, -80, 80)))


def _prepare(inputs: dict[str, Path], spec: LinkSpec) -> tuple[Records, list, list[Evaluator]]:
    unknown = set(inputs) - set(spec.sources)
    if unknown:
        raise ConfigError(f"linkage model {spec.name!r} does not declare source(s) {sorted(unknown)}; "
                          f"it declares {sorted(spec.sources)}", key="linkage.model")
    rec = Records.load(inputs, list(spec.sources), spec.needed_columns(), spec.subgroup_columns())
    tasks = [t for t in spec.tasks
             if rec.counts.get(t[0], 0) > 0 and rec.counts.get(t[1], 0) > (1 if t[0] == t[1] else 0)]
    evals = [Evaluator(c, rec, spec.workers) for c in spec.comparisons]
    return rec, tasks, evals


def link(inputs: dict[str, Path], spec: LinkSpec, out_dir: Path, truth: Path | None = None,
         progress: Callable[[str], Any] | None = None, scored_blocks: list[Path] | None = None, *,
         focus=None, fixed_pairs: pl.DataFrame | None = None, prior_from_model: bool = False,
         tf_counts: dict | None = None, block_keys: pl.DataFrame | None = None, report: bool = True) -> dict:
    """Link `inputs` (standardised Parquet per source) into out_dir.

    Hooks for linking a subset against a known population (incremental linkage; all
    default to off, and then the result is exactly the ordinary link):
    - `focus`: (source, record_id) frame/series of records; candidate pairs (identifier
      pass and blocking) are kept only when at least one side is in focus.
    - `fixed_pairs`: frame with source_l, record_id_l, source_r, record_id_r[, method]:
      added as candidates (scored with the model; method "deterministic"/"clerical" keeps
      them forced), unless already a candidate.
    - `prior_from_model`: with `spec.reuse_model`, keep each task's lambda from the model
      instead of re-estimating it on these candidates.
    - `tf_counts`: {comparison name: {which: (frame of value columns + "len", total)}}:
      term frequencies from population counts instead of from the records linked
      (name comparisons: which in joint / forename / surname, columns fn1 / sn).
    - `block_keys`: frame source, record_id, k0..k<r> (each record's `record_keys` for
      every blocking rule, e.g. stored by an earlier run): used instead of re-keying.
    - `report=False`: write clusters, pairs and model.json only (no review, report)."""
    t_start = time.time()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    tick = time.time()

    def lap(name: str):
        nonlocal tick
        now = time.time()
        timings[name] = round(now - tick, 3)
        tick = now

    rec, tasks, evals = _prepare({k: Path(v) for k, v in inputs.items()}, spec)
    ev_by_name = {ev.comp.name: ev for ev in evals}
    tkeys = [spec.task_key(t) for t in tasks]
    if tf_counts:
        _set_tf_counts(evals, tf_counts)
    if block_keys is not None:
        _use_block_keys(rec, spec, block_keys)
    focus_mask = _focus_mask(rec, focus) if focus is not None else None
    _say(progress, f"linkage: {rec.n} records in {len(rec.present)} sources, {len(tasks)} tasks")
    rng = np.random.default_rng(spec.seed)
    tf_min = spec.tf_min_u if spec.tf_min_u else 1.0 / max(rec.n, 1)
    lap("load")

    # ---- deterministic pass -------------------------------------------------------
    det = deterministic_pass(rec, spec, ev_by_name, tasks)
    if focus_mask is not None:
        k = focus_mask[det.li] | focus_mask[det.ri]
        det = replace(det, li=det.li[k], ri=det.ri[k], method=det.method[k], ident=det.ident[k],
                      task=det.task[k])
    lap("deterministic")

    # ---- clerical labels ---------------------------------------------------------
    labels = None
    if spec.labels is not None:
        from etl.linkage.review import read_labels
        labels = _labels_to_gid(read_labels(spec.labels), rec)

    # ---- candidate pairs (levels do not depend on the model) ----------------------
    rule_names = ["deterministic"] + [r.name for r in spec.blocking]
    rule_keys = all_record_keys(rec, spec.blocking)
    lap("blocking_keys")
    cand, rule_stats = _candidates(rec, spec, tasks, evals, det, rule_keys, labels,
                                   blocks=[Path(p) for p in scored_blocks] if scored_blocks else None,
                                   focus=focus_mask)
    if fixed_pairs is not None and fixed_pairs.height:
        cand = _add_fixed_pairs(cand, rec, tasks, evals, fixed_pairs)
    lap("candidates")

    # ---- model: reuse, or train u (sampled), m (EM sessions), lambda ---------------
    sig = signature(spec)
    names = [c.name for c in spec.comparisons]
    level_labels = [c.level_labels() for c in spec.comparisons]
    reused = spec.reuse_model is not None
    sessions_log: list = []
    session_cache: dict[str, list] = {}
    if reused:
        model = load_model(spec.reuse_model, spec)
        missing = [k for k in tkeys if k not in model.tasks]
        if missing:
            raise ConfigError(f"reused model has no parameters for task(s) {missing}",
                              file=str(spec.reuse_model), key="linkage.reuse_model")
    else:
        model = Model({}, names, level_labels, sig)
    m_start = [np.array([1.0] + list(c.m_start)) if c.m_start else T.default_m(len(c.levels))
               for c in spec.comparisons]
    n_iter = int(spec.em_cfg.get("refinements", 3))
    for ti, t in enumerate(tasks):
        key = tkeys[ti]
        sel = cand["task"] == ti
        P, cnt = T.patterns(cand["G"][sel])
        na, nb = rec.counts[t[0]], rec.counts[t[1]]
        possible = na * (na - 1) / 2 if t[0] == t[1] else float(na) * nb
        if reused and prior_from_model:
            tm = model.tasks[key]
            tm.lam_method = "stored model (lambda kept)"
        elif reused:
            tm = model.tasks[key]
            _set_lambda(spec, tm, P, cnt, possible, det, ti)
        else:
            us = T.estimate_u(rec, evals, spec, t, rng)
            u = T.u_from_sample(us, evals)
            m, logs = _train_m(rec, evals, spec, t, u, rng, m_start, session_cache, key)
            tm = TaskModel(1e-6, m, u)
            model.tasks[key] = tm
            cinfo = _cand_info(rec, evals, us, cand["li"][sel], cand["ri"][sel], P, cnt)
            for _ in range(n_iter):
                _set_lambda(spec, tm, P, cnt, possible, det, ti)
                cinfo["post"] = _pattern_post(tm, P)
                tm.u = T.u_from_sample(us, evals, cinfo)
                tm.m, logs = _train_m(rec, evals, spec, t, tm.u, rng, m_start, session_cache, key, rerun=True)
            _set_lambda(spec, tm, P, cnt, possible, det, ti)
            sessions_log += logs
        if labels is not None:
            _apply_labels(tm, cand, sel, labels, spec)
    lap("train")

    # ---- score ---------------------------------------------------------------------
    n_c = cand["li"].size
    weight = np.zeros(n_c)
    for ti in range(len(tasks)):
        sel = np.flatnonzero(cand["task"] == ti)
        if sel.size:
            weight[sel] = pair_weights(model.tasks[tkeys[ti]], cand["G"][sel],
                                       {j: t[sel] for j, t in cand["tfu"].items()}, tf_min)
    prob = prob_of(weight)
    method = cand["method"]
    keep = (prob >= spec.pairs_floor) | (method > 0)
    sc = Scored(cand["li"][keep], cand["ri"][keep], cand["task"][keep], cand["rule"][keep],
                cand["G"][keep], {j: t[keep] for j, t in cand["tfu"].items()}, weight[keep], prob[keep],
                method[keep], rule_names)
    n_candidates = int(n_c)
    hist = _histogram(weight)
    del cand
    lap("score")

    # ---- cluster -------------------------------------------------------------------
    forced = sc.method > 0
    forced[sc.method == 3] = True
    cannot = None
    if labels is not None:
        neg = labels.filter(pl.col("label") == 0)
        cannot = (neg["gl"].to_numpy(), neg["gr"].to_numpy())
        # a pair labelled "no match" is never a forced/probabilistic link
        code_neg = np.sort(neg["gl"].to_numpy().astype(np.int64) * rec.n + neg["gr"].to_numpy())
        if code_neg.size:
            c = sc.li.astype(np.int64) * rec.n + sc.ri
            pos = np.clip(np.searchsorted(code_neg, c), 0, code_neg.size - 1)
            isneg = code_neg[pos] == c
            forced[isneg] = False
            sc.prob[isneg] = 0.0
    dup = {s for s, o in spec.sources.items() if o.get("duplicates")}
    one_to_one = spec.clustering.get("method", "constrained_greedy") != "connected_components"
    cl = cluster(rec.n, rec.src, list(spec.sources), dup, sc.li, sc.ri, sc.prob, sc.weight, forced,
                 spec.threshold, spec.dedupe_threshold, cannot, one_to_one=one_to_one)
    residual = None
    if one_to_one and spec.clustering.get("residual_pass", True):
        residual = _residual_pass(rec, spec, tasks, sc, cl)
        if residual["pairs"]:
            cl = cluster(rec.n, rec.src, list(spec.sources), dup, sc.li, sc.ri, residual["prob"],
                         residual["weight"], forced, spec.threshold, spec.dedupe_threshold, cannot,
                         one_to_one=True)
        cl.stats["residual_pass"] = {k: v for k, v in residual.items() if k not in ("prob", "weight")}
        cl.stats["residual_pass"]["links_after"] = int(cl.accepted.sum())
    lap("cluster")

    # ---- outputs -------------------------------------------------------------------
    from etl.linkage import output as O

    clusters = O.write_clusters(out_dir, rec, cl, sc, spec)
    O.write_pairs(out_dir, rec, sc, spec, tasks, cl)
    model.info = {
        "trained_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "reused": reused,
        "blocking_rules": [{"name": r.name, "keys": r.describe()} for r in spec.blocking],
        "training_sessions": [s.__dict__ for s in sessions_log],
        "term_frequencies": {ev.comp.name: ev.tf_summary() for ev in evals if ev.tf_levels},
        "deterministic": det.stats,
        "decision": {"threshold": spec.threshold, "dedupe_threshold": spec.dedupe_threshold,
                     "review_band": list(spec.review_band), "pairs_floor": spec.pairs_floor},
        "tf_min_u": tf_min,
    }
    if reused:
        model.info["reused_from"] = str(spec.reuse_model)
    (out_dir / "model.json").write_text(json.dumps(model.to_json(spec), indent=1, default=float))
    if not report:
        lap("write")
        return {"records": rec.n, "pairs_scored": n_candidates, "pairs_written": int(sc.li.size),
                "links": int(cl.accepted.sum()), "seconds": round(time.time() - t_start, 2),
                "timings": timings}
    n_review = O.write_review(out_dir, rec, sc, spec, tasks)
    lap("write")

    evaluation = None
    if truth is not None:
        from etl.linkage.evaluate import evaluate
        evaluation = evaluate(rec, spec, tasks, clusters, Path(truth), rule_keys, det, sc)
        lap("evaluate")
    label_acc = None
    if labels is not None and labels.height:
        from etl.linkage.evaluate import label_accuracy
        label_acc = label_accuracy(rec, spec, labels, cl.labels, rule_keys)
    from etl.linkage.report import build_report
    report = build_report(rec, spec, tasks, clusters, sc, cl, det, rule_stats, hist, model, evaluation,
                          timings, n_candidates, n_review)
    if label_acc is not None:
        report["label_accuracy"] = label_acc
    (out_dir / "report.json").write_text(json.dumps(report, indent=1, default=_json_default))
    from etl.linkage.report_html import render_html
    (out_dir / "report.html").write_text(render_html(report))
    lap("report")

    n_links = int(cl.accepted.sum())
    summary = {
        "rows": {s: rec.counts[s] for s in rec.present},
        "tasks": tkeys,
        "pairs_scored": n_candidates,
        "pairs_written": int(sc.li.size),
        "deterministic_pairs": int((sc.method == 1).sum() + (sc.method == 2).sum()),
        "links": n_links,
        "clusters": int(clusters["person_id"].n_unique()),
        "multi_source_clusters": int(report["clusters"]["multi_source"]),
        "review_pairs": n_review,
        "seconds": round(time.time() - t_start, 2),
    }
    if evaluation is not None:
        summary["f1"] = {k: round(v["f1"], 6) for k, v in evaluation["pairwise"].items()}
        summary["f1_overall"] = round(evaluation["overall"]["f1"], 6)
    _say(progress, f"linkage done: {summary['clusters']} people, {n_links} links")
    return summary


def _residual_pass(rec: Records, spec: LinkSpec, tasks, sc: Scored, cl) -> dict:
    """One-to-one exclusivity as evidence, for tasks between two duplicate-free sources.

    After the first greedy pass, a pair whose two records both remain without a
    link in that task is much more likely a match than its pairwise weight
    says: a true pair below the threshold stays unlinked on both sides (one-to-
    one), while a coincidental pair is unlinked on both sides only with
    probability r_a * r_b (the shares of each source still unlinked). Its
    weight gets log2(1 / (r_a * r_b)) (capped), and the greedy pass is re-run.
    Such links must reach `residual_threshold` (0.8 by default), stricter than the
    ordinary threshold: grey-zone Fellegi-Sunter probabilities are over-confident
    (conditional dependence, e.g. sex given a gendered forename; measured on the
    people bench, pairs at p~0.45 were matches ~20% of the time)."""
    w2, p2 = sc.weight.copy(), sc.prob.copy()
    cap = float(spec.clustering.get("residual_max_bonus", 12.0))
    rt = float(spec.clustering.get("residual_threshold", 0.8))
    logit = lambda p: math.log2(p / (1 - p))  # noqa: E731
    stricter = max(logit(min(max(rt, 1e-6), 1 - 1e-6)) - logit(min(max(spec.threshold, 1e-6), 1 - 1e-6)), 0.0)
    lab = cl.labels
    k = lab.max() + 1 if lab.size else 0
    info = {"pairs": 0, "tasks": {}}
    for ti, t in enumerate(tasks):
        a, b = t
        if a == b or spec.sources[a].get("duplicates") or spec.sources[b].get("duplicates"):
            continue
        ia, ib = rec.sources.index(a), rec.sources.index(b)
        has_a = np.zeros(k, bool)
        has_b = np.zeros(k, bool)
        has_a[lab[rec.src == ia]] = True
        has_b[lab[rec.src == ib]] = True
        resid = np.zeros(rec.n, bool)
        resid[rec.src == ia] = ~has_b[lab[rec.src == ia]]
        resid[rec.src == ib] = ~has_a[lab[rec.src == ib]]
        na, nb = rec.counts[a], rec.counts[b]
        ra = resid[rec.src == ia].sum() / max(na, 1)
        rb = resid[rec.src == ib].sum() / max(nb, 1)
        if ra <= 0 or rb <= 0:
            continue
        bonus = min(-math.log2(ra * rb), cap)
        sel = (sc.task == ti) & (sc.method == 0) & resid[sc.li] & resid[sc.ri]
        w2[sel] += bonus - stricter
        p2[sel] = prob_of(w2[sel])
        info["pairs"] += int(sel.sum())
        info["tasks"][spec.task_key(t)] = {"residual_share": [float(ra), float(rb)], "bonus_bits": bonus,
                                            "residual_threshold": rt,
                                            "pairs": int(sel.sum()),
                                            "pairs_above_threshold": int((p2[sel] >= spec.threshold).sum())}
    info["prob"], info["weight"] = p2, w2
    return info


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def _train_m(rec, evals, spec, t, u, rng, m_start, cache, key, rerun: bool = False):
    """EM sessions for a task; session pattern counts are cached so a re-run
    with refined u costs only the EM iterations."""
    if not rerun or key not in cache:
        entries = []
        for sess in spec.sessions:
            li, ri, total = T.session_pairs(rec, spec, sess, t, rng)
            if li.size < 50:
                continue
            G, _ = comparison_matrix(evals, li, ri, t)
            rf = T.fields_of_rule(sess.rule)
            # a comparison on (or correlated with) a field the session blocks on
            # carries no evidence there: the session's pairs all agree on it
            active = [j for j, ev in enumerate(evals)
                      if not ((set(ev.comp.columns) | set(ev.comp.options.get("depends_on", []))) & rf)]
            if not active:
                continue
            P, cnt = T.patterns(G)
            entries.append((sess, P, cnt, active, total, int(li.size)))
        cache[key] = entries
    sums = [np.zeros_like(x) for x in m_start]
    nsum = [0] * len(m_start)
    logs = []
    for sess, P, cnt, active, total, used in cache[key]:
        lam, m, iters, _ = T.em(P, cnt, m_start, u, active, lam0=0.05,
                                max_iter=int(spec.em_cfg["max_iterations"]),
                                tol=float(spec.em_cfg["tolerance"]))
        res = T.SessionResult(sess.rule.name, key, int(total), used, int(P.shape[0]), iters, float(lam),
                              estimated=[evals[j].comp.name for j in active],
                              fixed=[ev.comp.name for j, ev in enumerate(evals) if j not in active])
        if lam * used >= 5:
            for j in active:
                sums[j] += m[j]
                nsum[j] += 1
                res.m[evals[j].comp.name] = [round(float(x), 8) for x in m[j][1:]]
        logs.append(res)
    out = []
    for j in range(len(m_start)):
        mj = sums[j] / nsum[j] if nsum[j] else np.array(m_start[j], dtype=float).copy()
        mj[0] = 1.0
        out.append(mj)
    return out, logs


def _pattern_post(tm: TaskModel, P: np.ndarray) -> np.ndarray:
    """P(match) of each distinct comparison pattern (TF ignored)."""
    lr = np.full(P.shape[0], tm.prior_weight)
    for j, tab in enumerate(tm.weight_tables()):
        lr += tab[P[:, j]]
    return prob_of(lr)


def _cand_info(rec: Records, evals, us: T.USample, li, ri, P, cnt) -> dict:
    """What u estimation needs to know about a task's candidate pairs."""
    n = rec.n
    codes = np.sort(li.astype(np.int64) * n + ri)

    def member(a, b):
        if codes.size == 0:
            return np.zeros(a.size, bool)
        c = a.astype(np.int64) * n + b
        pos = np.clip(np.searchsorted(codes, c), 0, codes.size - 1)
        return codes[pos] == c
    in_strata, in_stratum = [], []
    for st in us.strata:
        if st is None:
            in_strata.append(None)
            in_stratum.append(0)
            continue
        in_strata.append(member(st["li"], st["ri"]))
        k = st["codes"]
        in_stratum.append(int(((k[li] >= 0) & (k[li] == k[ri])).sum()))
    return {"n": int(li.size), "P": P, "cnt": cnt, "post": None, "in_uniform": member(us.li, us.ri),
            "in_strata": in_strata, "in_stratum": in_stratum}


def _set_lambda(spec: LinkSpec, tm: TaskModel, P, cnt, possible, det, ti) -> None:
    method = spec.prior.get("method", "candidates")
    if method == "fixed":
        tm.lam = float(spec.prior["value"])
        tm.lam_method = "fixed"
        return
    if method == "expected_matches":
        tm.lam = min(float(spec.prior["matches"]) / max(possible, 1), 0.5)
        tm.lam_method = "expected_matches"
        return
    if method == "deterministic" and det.li.size and (det.task == ti).any():
        d = int((det.task == ti).sum())
        recall = float(spec.prior.get("recall", 0.9))
        tm.lam = min(d / recall / max(possible, 1), 0.5)
        tm.lam_method = f"deterministic (recall {recall})"
        tm.expected_matches = d / recall
        return
    lam0 = tm.lam if tm.lam > 1e-9 else min(cnt.sum(), 1.0 * max(possible, 1) ** 0.5) / max(possible, 1)
    lam, expected = T.estimate_lambda_candidates(P, cnt, tm.m, tm.u, possible, lam0=lam0)
    tm.lam = min(max(lam, 1e-12), 0.5)
    tm.lam_method = "expected matches among candidate pairs"
    tm.expected_matches = expected


def _focus_mask(rec: Records, focus) -> np.ndarray:
    """Bool per record: is (source, record_id) in `focus` (a frame with source, record_id,
    or a series of structs with those fields)."""
    if isinstance(focus, pl.Series):
        focus = focus.struct.unnest() if focus.dtype == pl.Struct else focus.to_frame()
    src_idx = {s: i for i, s in enumerate(rec.sources)}
    f = (focus.select(pl.col("source").cast(pl.String).replace_strict(src_idx, default=None, return_dtype=pl.Int8)
                      .alias("_src"), pl.col("record_id").cast(pl.String))
         .drop_nulls().unique().with_columns(pl.lit(True).alias("_f")))
    return (rec.df.select(pl.col("_src").cast(pl.Int8), pl.col("record_id").cast(pl.String))
            .join(f, on=["_src", "record_id"], how="left", maintain_order="left")["_f"]
            .fill_null(False).to_numpy())


def _use_block_keys(rec: Records, spec: LinkSpec, block_keys: pl.DataFrame) -> None:
    """Seed `record_keys`' cache with supplied keys (only when every record has them)."""
    cols = [f"k{i}" for i in range(len(spec.blocking))]
    if not set(cols) <= set(block_keys.columns):
        return
    src_idx = {s: i for i, s in enumerate(rec.sources)}
    bk = block_keys.select(pl.col("source").cast(pl.String).replace_strict(src_idx, default=None,
                                                                            return_dtype=pl.Int8).alias("_src"),
                           pl.col("record_id").cast(pl.String), *cols).unique(["_src", "record_id"], keep="last")
    j = rec.df.select(pl.col("_src").cast(pl.Int8), pl.col("record_id").cast(pl.String)).join(
        bk, on=["_src", "record_id"], how="left", maintain_order="left")
    if j.height != rec.n or j[cols[0]].null_count() if cols else True:
        return
    for c, rule in zip(cols, spec.blocking):
        rec._cache[f"block:{rule.describe()}"] = j[c].cast(pl.UInt64).to_numpy().astype(np.uint64)


def _set_tf_counts(evals: list[Evaluator], tf_counts: dict) -> None:
    """Term frequencies of name comparisons from population counts (see `link`)."""
    for ev in evals:
        spec_c = tf_counts.get(ev.comp.name)
        if not spec_c or ev.kind != "name":
            continue
        vals = np.asarray(ev.nm["values"], dtype=object)

        def strings(codes):
            out = np.full(codes.size, None, dtype=object)
            ok = codes >= 0
            out[ok] = vals[codes[ok]]
            return pl.Series(out, dtype=pl.String)

        frame = pl.DataFrame({"fn1": strings(ev.nm["fn1"]), "sn": strings(ev.nm["sn"])})
        for which in set(ev.tf_levels.values()):
            key = {"joint": ["fn1", "sn"], "forename": ["fn1"], "surname": ["sn"]}.get(which, ["fn1", "sn"])
            got = spec_c.get(which if which in ("forename", "surname") else "joint")
            if got is None:
                continue
            table, total = got
            j = frame.join(table, on=key, how="left", maintain_order="left")
            ok = frame.select(pl.all_horizontal([pl.col(c).is_not_null() for c in key])).to_series()
            cnt = j["len"].fill_null(1).cast(pl.Float64).to_numpy()
            ev.set_tf(which, np.where(ok.to_numpy(), cnt / max(total, 1), 0.0))


def _add_fixed_pairs(cand: dict, rec: Records, tasks, evals, pairs: pl.DataFrame) -> dict:
    """Append `pairs` (source_l, record_id_l, source_r, record_id_r[, method]) to the
    candidates, with their comparison levels, unless already a candidate."""
    n = rec.n
    src_idx = {s: i for i, s in enumerate(rec.sources)}
    g = rec.df.select(pl.col("_src").cast(pl.Int8), pl.col("record_id").cast(pl.String)).with_row_index("gid")
    g = g.with_columns(pl.col("gid").cast(pl.Int64))
    cols = ["source_l", "record_id_l", "source_r", "record_id_r"]
    meth = "method" if "method" in pairs.columns else None
    op = (pairs.select(*cols, *( [meth] if meth else []))
          .with_columns(pl.col("source_l").cast(pl.String).replace_strict(src_idx, default=None, return_dtype=pl.Int8),
                        pl.col("source_r").cast(pl.String).replace_strict(src_idx, default=None, return_dtype=pl.Int8),
                        pl.col("record_id_l").cast(pl.String), pl.col("record_id_r").cast(pl.String))
          .join(g.rename({"_src": "source_l", "record_id": "record_id_l", "gid": "gl"}), on=["source_l", "record_id_l"])
          .join(g.rename({"_src": "source_r", "record_id": "record_id_r", "gid": "gr"}), on=["source_r", "record_id_r"]))
    if op.height == 0:
        return cand
    gl, gr = op["gl"].to_numpy(), op["gr"].to_numpy()
    li, ri = np.minimum(gl, gr), np.maximum(gl, gr)
    if meth:
        m = op[meth].cast(pl.String).to_numpy().astype(str)
        mcode = np.where(m == "deterministic", 1, np.where(m == "clerical", 3, 0)).astype(np.int8)
    else:
        mcode = np.zeros(li.size, np.int8)
    code = li * n + ri
    _, first = np.unique(code, return_index=True)
    keep = np.zeros(li.size, bool)
    keep[first] = True
    have = np.sort(cand["li"].astype(np.int64) * n + cand["ri"])
    if have.size:
        pos = np.clip(np.searchsorted(have, code), 0, have.size - 1)
        keep &= have[pos] != code
    li, ri, mcode = li[keep], ri[keep], mcode[keep]
    extra = []
    sl, sr = rec.src[li], rec.src[ri]
    for ti, t in enumerate(tasks):
        a, b = src_idx[t[0]], src_idx[t[1]]
        sel = (sl == a) & (sr == b)
        if sel.any():
            G, tfs = comparison_matrix(evals, li[sel], ri[sel], t)
            extra.append((li[sel].astype(np.int32), ri[sel].astype(np.int32), ti, G, tfs, mcode[sel]))
    if not extra:
        return cand
    n0 = cand["li"].size
    out = dict(cand)
    out["li"] = np.concatenate([cand["li"]] + [e[0] for e in extra])
    out["ri"] = np.concatenate([cand["ri"]] + [e[1] for e in extra])
    out["task"] = np.concatenate([cand["task"]] + [np.full(e[0].size, e[2], np.int8) for e in extra])
    out["rule"] = np.concatenate([cand["rule"]] + [np.zeros(e[0].size, np.int16) for e in extra])
    out["G"] = np.concatenate([cand["G"]] + [e[3] for e in extra])
    out["method"] = np.concatenate([cand["method"]] + [e[5] for e in extra])
    out["tfu"] = {}
    for j, ev in enumerate(evals):
        if ev.tf_levels:
            base = cand["tfu"].get(j, np.zeros(n0, np.float32))
            out["tfu"][j] = np.concatenate([base] + [e[4].get(j, np.zeros(e[0].size, np.float32)) for e in extra])
    return out


def _candidates(rec: Records, spec: LinkSpec, tasks, evals, det, rule_keys, labels,
                part: tuple[int, int] | None = None, blocks: list[Path] | None = None,
                focus: np.ndarray | None = None):
    """Union of blocking rules per task (plus deterministic and labelled pairs),
    each pair once, with comparison levels, in a canonical order.

    `part=(i, n)`: only this share of the blocking keys, no deterministic pass
    (one block of a fanned-out scoring). `blocks`: take the blocking pairs and
    their levels from scored block files instead of generating them."""
    block_frames = None
    if blocks is not None:
        block_frames = [pl.read_parquet(p) for p in blocks]
        block_stats = [json.loads(Path(str(p) + ".json").read_text()) for p in blocks]
    Ls, Rs, Ts, Us, Gs, Ms = [], [], [], [], [], []
    TF: dict[int, list] = {}
    stats: list[RuleStats] = []
    n = rec.n
    chunk = spec.max_pairs_per_chunk

    # focus: few pairs per rule chunk, so their levels are computed once per task (flush)
    batch: list | None = [] if focus is not None and blocks is None else None

    def add(li, ri, ti, rule_idx, method, G=None, tfs=None):
        if li.size == 0:
            return
        if G is None and batch is not None:
            batch.append((li, ri, np.full(li.size, rule_idx, np.int16), np.full(li.size, method, np.int8)))
            return
        if G is None:
            G, tfs = comparison_matrix(evals, li, ri, tasks[ti])
        Ls.append(li.astype(np.int32)); Rs.append(ri.astype(np.int32))
        Ts.append(np.full(li.size, ti, np.int8)); Us.append(np.full(li.size, rule_idx, np.int16))
        Gs.append(G); Ms.append(method.astype(np.int8) if isinstance(method, np.ndarray)
                                else np.full(li.size, method, np.int8))
        for j in range(len(evals)):
            if evals[j].tf_levels:
                TF.setdefault(j, []).append(tfs.get(j, np.zeros(li.size, np.float32)))

    # focus: only blocks holding a focus record (whole blocks, so sizes are the full sizes)
    fkeys = None if focus is None else [focus_keys(k, focus) for k in rule_keys]
    size_caches: list[dict] = [{} for _ in spec.blocking]     # per rule: block counts per source
    for ti, t in enumerate(tasks):
        a, b = rec.offsets[t[0]], rec.offsets[t[1]]
        dedupe = t[0] == t[1]
        found = [np.zeros(0, np.int64)]
        found_eq = np.zeros(0, np.int64)
        eq_codes = None
        if det is not None:
            dsel = det.task == ti
            code = det.li[dsel].astype(np.int64) * n + det.ri[dsel]
            # exact identifier pairs share a code: looked up only for candidates that do
            exact = det.method[dsel] == 1
            found_eq = np.sort(code[exact])
            found.append(code[~exact])
            eq_codes = det.id_codes
            add(det.li[dsel], det.ri[dsel], ti, 0, det.method[dsel])
        if labels is not None:
            lab = labels.filter(pl.col("task") == spec.task_key(t))
            if lab.height:
                ll, lr = lab["gl"].to_numpy(), lab["gr"].to_numpy()
                code = ll.astype(np.int64) * n + lr
                new = ~np.isin(code, np.concatenate([found_eq] + found))
                m = np.where(lab["label"].to_numpy()[new] == 1, 3, 0)
                add(ll[new], lr[new], ti, 0, m)
                found.append(code[new])
        found_sorted = np.sort(np.concatenate(found))
        if block_frames is not None:
            for ri_, rule in enumerate(spec.blocking):
                st = RuleStats(rule.name, spec.task_key(t))
                for bs in block_stats:
                    for x in bs:
                        if x["task"] == st.task and x["rule"] == rule.name:
                            st.pairs += x["pairs"]
                            st.skipped_blocks += x["skipped_blocks"]
                for f in block_frames:
                    f = f.filter((pl.col("task") == ti) & (pl.col("rule") == ri_ + 1))
                    if f.height == 0:
                        continue
                    li, ri = f["li"].to_numpy(), f["ri"].to_numpy()
                    keep = drop_found(li, ri, [], found_sorted, n, eq_codes, found_eq)
                    Gb = np.stack([f[f"g{j}"].to_numpy() for j in range(len(evals))], axis=1)[keep]
                    tfb = {j: f[f"tf{j}"].to_numpy()[keep] for j in range(len(evals)) if f"tf{j}" in f.columns}
                    st.new_pairs += int(keep.sum())
                    add(li[keep], ri[keep], ti, ri_ + 1, 0, Gb, tfb)
                stats.append(st)
            continue
        for ri_, rule in enumerate(spec.blocking):
            keys = rule_keys[ri_]
            st = RuleStats(rule.name, spec.task_key(t))
            it, total, skipped = rule_pairs(keys if fkeys is None else fkeys[ri_], a, b, dedupe, chunk,
                                            max_block_pairs=rule.max_block_pairs or spec.max_block_pairs,
                                            part=part, focus=focus, focus_masked=True,
                                            size_cache=size_caches[ri_])
            st.pairs = total
            st.skipped_blocks = skipped
            for li, ri in it:
                if focus is not None:
                    sel = focus[li] | focus[ri]
                    li, ri = li[sel], ri[sel]
                keep = drop_found(li, ri, rule_keys[:ri_], found_sorted, n, eq_codes, found_eq)
                li, ri = li[keep], ri[keep]
                st.new_pairs += int(li.size)
                add(li, ri, ti, ri_ + 1, 0)
            stats.append(st)
        if batch:
            li, ri, ru, me = (np.concatenate(x) for x in zip(*batch))
            batch.clear()
            add(li, ri, ti, ru, me, *comparison_matrix(evals, li, ri, tasks[ti]))
    if not Ls:
        z = np.zeros(0, np.int32)
        return {"li": z, "ri": z, "task": z.astype(np.int8), "rule": z.astype(np.int16),
                "G": np.zeros((0, len(evals)), np.int8), "tfu": {}, "method": z.astype(np.int8)}, stats
    out = {"li": np.concatenate(Ls), "ri": np.concatenate(Rs), "task": np.concatenate(Ts),
           "rule": np.concatenate(Us), "G": np.concatenate(Gs), "method": np.concatenate(Ms),
           "tfu": {j: np.concatenate(v) for j, v in TF.items()}}
    # canonical order, so that single-process and block-wise runs give identical results
    order = np.lexsort((out["ri"], out["li"], out["rule"], out["task"]))
    for k in ("li", "ri", "task", "rule", "G", "method"):
        out[k] = out[k][order]
    out["tfu"] = {j: v[order] for j, v in out["tfu"].items()}
    return out, stats


def plan_blocks(inputs: dict[str, Path], spec: LinkSpec, n_blocks: int) -> list[dict]:
    """Blocks for fanned-out scoring: each is a share of every blocking rule's
    keys (JSON-serialisable: paths and integers only)."""
    n_blocks = max(int(n_blocks), 1)
    ins = {k: str(v) for k, v in inputs.items()}
    return [{"inputs": ins, "part": i, "n": n_blocks} for i in range(n_blocks)]


def score_block(block: dict, spec: LinkSpec, out_dir: Path) -> Path:
    """Candidate pairs and their comparison levels for one block (a Dask task);
    `link(..., scored_blocks=[...])` finishes from these files and gives the
    same result as a single-process run."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rec, tasks, evals = _prepare({k: Path(v) for k, v in block["inputs"].items()}, spec)
    rule_keys = all_record_keys(rec, spec.blocking)
    cand, stats = _candidates(rec, spec, tasks, evals, None, rule_keys, None,
                              part=(int(block["part"]), int(block["n"])))
    cols = {"li": cand["li"], "ri": cand["ri"], "task": cand["task"], "rule": cand["rule"]}
    for j in range(len(evals)):
        cols[f"g{j}"] = cand["G"][:, j]
        if j in cand["tfu"]:
            cols[f"tf{j}"] = cand["tfu"][j]
    path = out_dir / f"block_{int(block['part']):04d}.parquet"
    pl.DataFrame(cols).write_parquet(path)
    Path(str(path) + ".json").write_text(json.dumps(
        [{"rule": s.rule, "task": s.task, "pairs": s.pairs, "skipped_blocks": s.skipped_blocks} for s in stats]))
    return path


def _labels_to_gid(lab: pl.DataFrame, rec: Records) -> pl.DataFrame:
    ids = rec.df.select(pl.arange(0, rec.n, dtype=pl.Int64).alias("g"),
                        pl.col("_src"), pl.col("record_id"))
    src_idx = {s: i for i, s in enumerate(rec.sources)}
    lab = lab.with_columns(pl.col("source_l").replace_strict(src_idx, default=None, return_dtype=pl.Int8).alias("sl"),
                           pl.col("source_r").replace_strict(src_idx, default=None, return_dtype=pl.Int8).alias("sr"))
    j = (lab.join(ids.rename({"g": "g1", "_src": "sl", "record_id": "record_id_l"}), on=["sl", "record_id_l"])
         .join(ids.rename({"g": "g2", "_src": "sr", "record_id": "record_id_r"}), on=["sr", "record_id_r"]))
    j = j.with_columns(pl.min_horizontal("g1", "g2").alias("gl"), pl.max_horizontal("g1", "g2").alias("gr"))
    srcs = rec.sources
    j = j.with_columns(
        pl.struct("sl", "sr").map_batches(
            lambda s: pl.Series([f"{srcs[min(a, b)]}|{srcs[max(a, b)]}"
                                 for a, b in zip(s.struct.field("sl").to_list(), s.struct.field("sr").to_list())]),
            return_dtype=pl.String).alias("task"))
    return j.select("gl", "gr", "task", "label").unique(["gl", "gr"], keep="last")


def _apply_labels(tm: TaskModel, cand, sel, labels: pl.DataFrame, spec: LinkSpec) -> None:
    """Refine m with clerical labels: m = (k * m_EM + counts among labelled matches) / (k + n)."""
    if labels.height == 0:
        return
    li, ri = cand["li"][sel], cand["ri"][sel]
    code = li.astype(np.int64) * (10**10) + ri
    lab = labels.with_columns((pl.col("gl").cast(pl.Int64) * (10**10) + pl.col("gr")).alias("c"))
    pos_codes = np.sort(lab.filter(pl.col("label") == 1)["c"].to_numpy())
    if pos_codes.size == 0:
        return
    idx = np.clip(np.searchsorted(pos_codes, code), 0, pos_codes.size - 1)
    hit = pos_codes[idx] == code
    if hit.sum() < 5:
        return
    G = cand["G"][sel][hit]
    k = float(spec.em_cfg.get("label_prior_weight", 50))
    for j in range(G.shape[1]):
        g = G[:, j]
        g = g[g > 0]
        if g.size == 0:
            continue
        K = len(tm.m[j])
        c = np.bincount(g, minlength=K).astype(float)
        c[0] = 0
        new = (k * tm.m[j] + c) / (k + g.size)
        new[0] = 1.0
        new[1:] /= new[1:].sum()
        tm.m[j] = new
    tm.lam_method += " + clerical labels"


def _histogram(w: np.ndarray, lo: float = -30, hi: float = 40, width: float = 1.0) -> dict:
    edges = np.arange(lo, hi + width, width)
    c, _ = np.histogram(np.clip(w, lo, hi - 1e-9), bins=edges)
    return {"edges": edges.tolist(), "counts": c.tolist()}


# --------------------------------------------------------------------------------------
def explain(pair, inputs: dict[str, Path], model_path: Path | str, spec: LinkSpec | None = None) -> dict:
    """Per-comparison weights (a waterfall) for one pair.

    pair: ((source_l, record_id_l), (source_r, record_id_r)). `model_path` is a
    model.json (or the out_dir holding one). Returns the prior, one row per
    comparison (level, m, u, weight, TF adjustment) and the total match weight
    and probability: the rows sum to the total."""
    from etl.linkage.spec import parse_model

    mp = Path(model_path)
    if mp.is_dir():
        mp = mp / "model.json"
    data = json.loads(mp.read_text())
    if spec is None:
        spec = parse_model(data["spec"], mp)
    spec.reuse_model = mp
    model = load_model(mp, spec)
    rec, tasks, evals = _prepare({k: Path(v) for k, v in inputs.items()}, spec)
    (sl, il), (sr, ir) = pair
    gids = []
    for s, i in ((sl, il), (sr, ir)):
        if s not in rec.sources:
            raise ConfigError(f"unknown source {s!r}")
        off = rec.offsets[s]
        ids = rec.df["record_id"].slice(off[0], off[1] - off[0])
        hit = np.flatnonzero((ids == str(i)).to_numpy())
        if not hit.size:
            raise ConfigError(f"record not found in source {s!r}")
        gids.append(off[0] + int(hit[0]))
    g1, g2 = sorted(gids)
    s1, s2 = rec.sources[rec.src[g1]], rec.sources[rec.src[g2]]
    order = list(spec.sources)
    task = (s1, s2) if order.index(s1) <= order.index(s2) else (s2, s1)
    key = spec.task_key(task)
    if key not in model.tasks:
        raise ConfigError(f"the model has no task {key!r}")
    tm = model.tasks[key]
    li, ri = np.array([g1], np.int32), np.array([g2], np.int32)
    G, tfs = comparison_matrix(evals, li, ri, task)
    tf_min = json.loads(mp.read_text()).get("tf_min_u") or 1.0 / rec.n
    rows = []
    W = tm.weight_tables()
    total = tm.prior_weight
    for j, ev in enumerate(evals):
        g = int(G[0, j])
        w = float(W[j][g])
        tfa = 0.0
        if j in tfs and tfs[j][0] > 0:
            tfa = float(math.log2(tm.u[j][g] / max(float(tfs[j][0]), tf_min)))
        rows.append({"comparison": ev.comp.name, "level": ev.comp.level_labels()[g],
                     "m": float(tm.m[j][g]) if g else None, "u": float(tm.u[j][g]) if g else None,
                     "weight": w, "tf_adjustment": tfa})
        total += w + tfa
    out = {"task": key, "prior_weight": tm.prior_weight, "comparisons": rows,
           "match_weight": total, "match_probability": float(prob_of(np.array([total]))[0])}
    from etl.linkage.report_html import waterfall_svg

    out["waterfall_svg"] = waterfall_svg(out)
    return out
