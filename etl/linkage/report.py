"""The linkage-quality report (GUILD / RECORD style), as a JSON-able dict.

Counts and rates only; no record values. Sections: sources (N, duplicates,
completeness of linkage fields), method (deterministic rules, blocking rules
with pair counts, comparisons, training sessions, lambda, thresholds),
match-weight histogram, link rates overall and by subgroup with 95% Wilson
intervals, linked vs unlinked comparison (standardised differences), clusters,
and, with truth or labels, precision / recall / F1 overall and by subgroup
plus blocking recall per rule.
"""

from __future__ import annotations

import math
import platform

import numpy as np
import polars as pl

from etl.linkage._np import unique
from etl.linkage.records import Records
from etl.linkage.subgroups import record_attributes, wilson


def _versions() -> dict:
    import rapidfuzz

    import etl

    return {"medlink": getattr(etl, "__version__", "?"), "polars": pl.__version__, "numpy": np.__version__,
            "rapidfuzz": rapidfuzz.__version__, "python": platform.python_version()}


def build_report(rec: Records, spec, tasks, clusters: pl.DataFrame, sc, cl, det, rule_stats, hist, model,
                 evaluation, timings, n_candidates, n_review) -> dict:
    labels = cl.labels
    src = rec.src
    nsrc = len(rec.sources)
    # which sources each cluster holds
    has = np.zeros((labels.max() + 1 if labels.size else 0, nsrc), bool)
    has[labels, src] = True
    attrs = record_attributes(rec, spec, labels)
    groups = [c for c in attrs.columns if c not in ("gid", "grp")]

    # ---- sources -----------------------------------------------------------------
    sources = {}
    size_in_src = pl.DataFrame({"c": labels, "s": src}).group_by(["c", "s"]).agg(pl.len().alias("k"))
    for i, s in enumerate(rec.sources):
        if rec.counts[s] == 0:
            continue
        lo, hi = rec.offsets[s]
        comp = {}
        for c in sorted(spec.needed_columns()):
            if c in rec.df.columns:
                comp[c] = round(1 - rec.df[c].slice(lo, hi - lo).null_count() / max(hi - lo, 1), 6)
        k = size_in_src.filter(pl.col("s") == i)
        sources[s] = {
            "records": rec.counts[s],
            "people": int(k.height),
            "records_in_people_with_several": int(k.filter(pl.col("k") > 1)["k"].sum() or 0),
            "completeness": comp,
        }

    # ---- link rates ------------------------------------------------------------
    link_rates = {}
    for t in tasks:
        if t[0] == t[1]:
            continue
        for a, b in ((t[0], t[1]), (t[1], t[0])):
            ib = rec.sources.index(b)
            lo, hi = rec.offsets[a]
            linked = has[labels[lo:hi], ib]
            k, n = int(linked.sum()), int(hi - lo)
            entry = {"linked": k, "records": n, "rate": k / n if n else None, "ci95": wilson(k, n),
                     "by_subgroup": {}}
            sub = attrs.slice(lo, hi - lo).with_columns(pl.Series("linked", linked))
            for g in groups:
                tab = sub.group_by(g).agg(pl.len().alias("n"), pl.col("linked").sum().alias("k")).sort(g)
                entry["by_subgroup"][g] = {str(r[g]): {"records": r["n"], "linked": r["k"],
                                                       "rate": r["k"] / r["n"], "ci95": wilson(r["k"], r["n"])}
                                           for r in tab.iter_rows(named=True)}
            link_rates[f"{a}->{b}"] = entry

    # ---- linked vs unlinked -----------------------------------------------------
    lvu = {}
    for i, s in enumerate(rec.sources):
        if rec.counts[s] == 0:
            continue
        lo, hi = rec.offsets[s]
        others = np.delete(has[labels[lo:hi]], i, axis=1)
        linked = others.any(axis=1) if others.size else np.zeros(hi - lo, bool)
        sub = attrs.slice(lo, hi - lo).with_columns(pl.Series("linked", linked))
        nl, nu = int(linked.sum()), int((~linked).sum())
        entry = {"linked": nl, "unlinked": nu, "attributes": {}}
        for g in groups:
            tab = sub.group_by(g).agg(pl.col("linked").sum().alias("kl"), (~pl.col("linked")).sum().alias("ku"))
            rows = {}
            for r in tab.sort(g).iter_rows(named=True):
                pl_ = r["kl"] / nl if nl else 0.0
                pu = r["ku"] / nu if nu else 0.0
                pooled = (pl_ * (1 - pl_) + pu * (1 - pu)) / 2
                smd = (pl_ - pu) / math.sqrt(pooled) if pooled > 0 else 0.0
                rows[str(r[g])] = {"linked_share": pl_, "unlinked_share": pu, "smd": smd}
            entry["attributes"][g] = rows
        lvu[s] = entry

    # ---- clusters ----------------------------------------------------------------
    sizes = np.bincount(labels)
    nsrc_per = has.sum(axis=1)
    mask = (has.astype(np.int64) << np.arange(nsrc)).sum(axis=1)
    names = {m_: "+".join(rec.sources[j] for j in range(nsrc) if m_ >> j & 1) or "(none)"
             for m_ in unique(mask).tolist()}
    combos = pl.DataFrame({"m": mask}).group_by("m").len().with_columns(
        pl.col("m").replace_strict(names, return_dtype=pl.String).alias("combo"))
    clusters_info = {
        "people": int(has.shape[0]),
        "multi_source": int((nsrc_per > 1).sum()),
        "size_distribution": {str(k): int(v) for k, v in zip(*np.unique(np.minimum(sizes, 10), return_counts=True))},
        "by_sources": {r["combo"]: r["len"] for r in combos.sort("combo").iter_rows(named=True)},
        "clustering": cl.stats,
        "link_method_records": {r["link_method"]: r["len"] for r in
                                clusters.group_by("link_method").len().sort("link_method").iter_rows(named=True)},
    }

    # ---- method ------------------------------------------------------------------
    blocking = [{"rule": st.rule, "task": st.task, "pairs": st.pairs, "new_pairs": st.new_pairs,
                 "skipped_blocks": st.skipped_blocks} for st in rule_stats]
    if evaluation:
        rec_by = {(r["task"], r["rule"]): r for r in evaluation["blocking_recall"]}
        for b in blocking:
            r = rec_by.get((b["task"], b["rule"]))
            if r:
                b["recall"] = r["recall"]
                b["cumulative_recall"] = r["cumulative_recall"]
    mj = model.to_json(spec)
    lo_band, hi_band = spec.review_band
    report = {
        "title": "medlink linkage-quality report",
        "model": spec.name,
        "model_signature": model.signature,
        "software": _versions(),
        "decision": {"threshold": spec.threshold, "dedupe_threshold": spec.dedupe_threshold,
                     "review_band": [lo_band, hi_band], "pairs_floor": spec.pairs_floor,
                     "clustering": "connected components" if cl.stats.get("method") == "connected_components"
                     else "within-source dedupe, then greedy one-entity-per-source"},
        "sources": sources,
        "tasks": [spec.task_key(t) for t in tasks],
        "method": {
            "deterministic": det.stats,
            "blocking": blocking,
            "comparisons": [{"name": c.name, "kind": c.kind, "levels": [lv.label for lv in c.levels]}
                            for c in spec.comparisons],
            "lambda": {k: {"lambda": v["lambda"], "method": v["lambda_method"],
                           "expected_matches": v["expected_matches"]} for k, v in mj["tasks"].items()},
            "parameters": mj["tasks"],
            "training_sessions": [s if isinstance(s, dict) else s.__dict__
                                  for s in (model.info.get("training_sessions") or [])],
        },
        "pairs": {"candidates_scored": n_candidates, "written": int(sc.li.size),
                  "above_threshold": int((sc.prob >= spec.threshold).sum()),
                  "review_band": n_review, "deterministic": int((sc.method > 0).sum())},
        "match_weight_histogram": hist,
        "link_rates": link_rates,
        "linked_vs_unlinked": lvu,
        "clusters": clusters_info,
        "timings_seconds": timings,
    }
    if evaluation:
        report["accuracy"] = evaluation
    return report
