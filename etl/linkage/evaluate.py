"""Linkage accuracy against ground truth (synthetic truth or a gold-standard subset).

Pairwise precision / recall / F1 per task from the clusters: a pair of records
from the task's two sources is predicted linked when they share a person_id,
truly linked when they share a true person. Counts come from cluster x person
contingency tables, so nothing is materialised pair by pair. Subgroups are the
true person's attributes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl

from etl.errors import ConfigError
from etl.linkage.blocking import pairs_satisfy
from etl.linkage.records import Records
from etl.linkage.subgroups import record_attributes


def prf(tp: float, pred: float, true: float) -> dict:
    p = tp / pred if pred else 1.0
    r = tp / true if true else 1.0
    f = 2 * p * r / (p + r) if (p + r) else 0.0
    return {"precision": p, "recall": r, "f1": f, "tp": int(tp), "predicted": int(pred), "true": int(true)}


def load_truth(rec: Records, truth_path: Path) -> np.ndarray:
    """True person code per record (records absent from truth are their own person)."""
    try:
        t = pl.read_parquet(truth_path)
    except Exception as e:  # noqa: BLE001
        raise ConfigError(f"cannot read truth ({type(e).__name__})", file=str(truth_path))
    need = {"source", "record_id", "person_id"}
    if not need <= set(t.columns):
        raise ConfigError(f"truth needs columns {sorted(need)}", file=str(truth_path))
    src_idx = {s: i for i, s in enumerate(rec.sources)}
    t = t.select(pl.col("source").cast(pl.String), pl.col("record_id").cast(pl.String),
                 pl.col("person_id").cast(pl.String))
    t = t.filter(pl.col("source").is_in(list(src_idx))).with_columns(
        pl.col("source").replace_strict(src_idx, return_dtype=pl.Int8).alias("_src"))
    base = rec.df.select(pl.arange(0, rec.n, dtype=pl.Int64).alias("gid"), "_src", "record_id")
    j = base.join(t.select("_src", "record_id", "person_id"), on=["_src", "record_id"], how="left",
                  maintain_order="left")
    pid = j["person_id"].fill_null(pl.lit("__none__") + j["gid"].cast(pl.String))
    codes = pid.cast(pl.Categorical).to_physical().to_numpy().astype(np.int64)
    return codes


def _sum_by(frame: pl.DataFrame, keys: list[str], expr: pl.Expr, name: str) -> pl.DataFrame:
    if keys:
        return frame.group_by(keys).agg(expr.sum().alias(name))
    return frame.select(expr.sum().alias(name))


def _pair_counts(df: pl.DataFrame, a: int, b: int, by: str | None) -> pl.DataFrame:
    """TP / predicted / true pair counts for sources a, b (a == b: within-source).
    With `by`, pairs are attributed to the group of the (left) record's true person."""
    keys = [by] if by else []
    if a == b:
        d = df.filter(pl.col("src") == a)
        c2 = pl.col("n").cast(pl.Int64) * (pl.col("n").cast(pl.Int64) - 1) // 2
        tp = _sum_by(d.group_by(["c", "p", *keys]).agg(pl.len().alias("n")), keys, c2, "tp")
        tr = _sum_by(d.group_by(["p", *keys]).agg(pl.len().alias("n")), keys, c2, "true")
        pr = _sum_by(d.group_by(["c", *keys]).agg(pl.len().alias("n")), keys, c2, "pred")
    else:
        da = df.filter(pl.col("src") == a)
        db = df.filter(pl.col("src") == b)
        x = pl.col("na").cast(pl.Int64) * pl.col("nb").cast(pl.Int64)
        tr = _sum_by(da.group_by(["p", *keys]).agg(pl.len().alias("na"))
                     .join(db.group_by("p").agg(pl.len().alias("nb")), on="p"), keys, x, "true")
        pr = _sum_by(da.group_by(["c", *keys]).agg(pl.len().alias("na"))
                     .join(db.group_by("c").agg(pl.len().alias("nb")), on="c"), keys, x, "pred")
        tp = _sum_by(da.group_by(["c", "p", *keys]).agg(pl.len().alias("na"))
                     .join(db.group_by(["c", "p"]).agg(pl.len().alias("nb")), on=["c", "p"]), keys, x, "tp")
    if keys:
        out = tr.join(pr, on=keys, how="full", coalesce=True).join(tp, on=keys, how="full", coalesce=True)
    else:
        out = pl.concat([tr, pr, tp], how="horizontal")
    return out.fill_null(0)


def true_pairs(true_codes: np.ndarray, rec: Records, task) -> tuple[np.ndarray, np.ndarray]:
    a, b = rec.offsets[task[0]], rec.offsets[task[1]]
    da = pl.DataFrame({"g": np.arange(a[0], a[1]), "p": true_codes[a[0]:a[1]]})
    if task[0] == task[1]:
        j = da.join(da, on="p", suffix="_r").filter(pl.col("g") < pl.col("g_r"))
    else:
        db = pl.DataFrame({"g": np.arange(b[0], b[1]), "p": true_codes[b[0]:b[1]]})
        j = da.join(db, on="p", suffix="_r")
    return j["g"].to_numpy(), j["g_r"].to_numpy()


def evaluate(rec: Records, spec, tasks, clusters: pl.DataFrame, truth_path: Path, rule_keys, det, sc,
             true_codes: np.ndarray | None = None) -> dict:
    if true_codes is None:
        true_codes = load_truth(rec, truth_path)
    pred = clusters["person_id"].cast(pl.Categorical).to_physical().to_numpy().astype(np.int64)
    attrs = record_attributes(rec, spec, true_codes)
    df = attrs.with_columns(pl.Series("src", rec.src), pl.Series("c", pred), pl.Series("p", true_codes))
    groups = [c for c in attrs.columns if c not in ("gid", "grp")]
    pairwise, by_group = {}, {}
    tot = np.zeros(3)
    for t in tasks:
        key = spec.task_key(t)
        a, b = rec.sources.index(t[0]), rec.sources.index(t[1])
        row = _pair_counts(df, a, b, None).row(0, named=True)
        pairwise[key] = prf(row["tp"], row["pred"], row["true"])
        tot += [row["tp"], row["pred"], row["true"]]
        by_group[key] = {}
        for g in groups:
            tab = _pair_counts(df, a, b, g).sort(g)
            by_group[key][g] = {str(r[g]): prf(r["tp"], r["pred"], r["true"]) for r in tab.iter_rows(named=True)}
    overall = prf(*tot)

    # blocking recall on true pairs, rule by rule and cumulatively
    rules = []
    for t in tasks:
        tl, tr = true_pairs(true_codes, rec, t)
        if tl.size == 0:
            continue
        union = np.zeros(tl.size, bool)
        # deterministic pass
        dsel = det.task == tasks.index(t)
        dcode = np.sort(det.li[dsel].astype(np.int64) * rec.n + det.ri[dsel])
        code = tl.astype(np.int64) * rec.n + tr
        if dcode.size:
            pos = np.clip(np.searchsorted(dcode, code), 0, dcode.size - 1)
            hit = dcode[pos] == code
            union |= hit
            rules.append({"task": spec.task_key(t), "rule": "deterministic", "recall": float(hit.mean()),
                          "cumulative_recall": float(union.mean()), "true_pairs": int(tl.size)})
        for r, keys in zip(spec.blocking, rule_keys):
            hit = pairs_satisfy(keys, tl, tr)
            union |= hit
            rules.append({"task": spec.task_key(t), "rule": r.name, "recall": float(hit.mean()),
                          "cumulative_recall": float(union.mean()), "true_pairs": int(tl.size)})
    # deterministic precision
    det_prec = None
    if det.li.size:
        ok = true_codes[det.li] == true_codes[det.ri]
        det_prec = {"pairs": int(det.li.size), "precision": float(ok.mean()),
                    "typo_pairs": int((det.method == 2).sum()),
                    "typo_precision": float(ok[det.method == 2].mean()) if (det.method == 2).any() else None}
    return {"pairwise": pairwise, "overall": overall, "by_subgroup": by_group, "blocking_recall": rules,
            "deterministic": det_prec}


def label_accuracy(rec: Records, spec, labels: pl.DataFrame, cluster_labels: np.ndarray,
                   rule_keys: list | None = None) -> dict:
    """Precision / recall / F1 on clerically labelled pairs (label 1 = match):
    a labelled pair is predicted linked when its records share a person. Labelled
    pairs are forced into the decision, so this measures agreement with the
    labels after refinement; it is not an independent estimate unless the labels
    were held out. Overall and by subgroup of the left record."""
    gl, gr = labels["gl"].to_numpy(), labels["gr"].to_numpy()
    lab = labels["label"].to_numpy() == 1
    pred = cluster_labels[gl] == cluster_labels[gr]
    out = {"pairs": int(gl.size), "labelled_matches": int(lab.sum()),
           "overall": prf(float((pred & lab).sum()), float(pred.sum()), float(lab.sum()))}
    attrs = record_attributes(rec, spec, cluster_labels)
    groups = [c for c in attrs.columns if c not in ("gid", "grp")]
    f = attrs[gl.tolist()].with_columns(pl.Series("pred", pred), pl.Series("lab", lab))
    out["by_subgroup"] = {}
    for g in groups:
        tab = f.group_by(g).agg((pl.col("pred") & pl.col("lab")).sum().alias("tp"), pl.col("pred").sum().alias("p"),
                                pl.col("lab").sum().alias("t")).sort(g)
        out["by_subgroup"][g] = {str(r[g]): prf(r["tp"], r["p"], r["t"]) for r in tab.iter_rows(named=True)}
    # blocking recall on the labelled matches, rule by rule
    if rule_keys is not None and lab.any():
        ml, mr = gl[lab], gr[lab]
        union = np.zeros(ml.size, bool)
        out["blocking_recall"] = []
        for r, keys in zip(spec.blocking, rule_keys):
            hit = pairs_satisfy(keys, ml, mr)
            union |= hit
            out["blocking_recall"].append({"rule": r.name, "recall": float(hit.mean()),
                                           "cumulative_recall": float(union.mean())})
    return out
