"""Writers for clusters.parquet, pairs.parquet and review.csv (restricted zone)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl

from etl.linkage.cluster import ClusterResult
from etl.linkage.records import Records
from etl.linkage.spec import LinkSpec

METHOD = np.array(["probabilistic", "deterministic", "deterministic", "clerical"], dtype=object)


def write_clusters(out_dir: Path, rec: Records, cl: ClusterResult, sc, spec: LinkSpec) -> pl.DataFrame:
    n = rec.n
    # per record: best accepted link touching it
    best_p = np.zeros(n)
    best_m = np.full(n, -1, np.int8)
    acc = np.flatnonzero(cl.accepted)
    if acc.size:
        p = sc.prob[acc]
        meth = sc.method[acc]
        pr = np.where(meth > 0, 1.0, p)
        for side in (sc.li[acc], sc.ri[acc]):
            order = np.argsort(pr)  # ascending: later (higher) writes win
            best_p[side[order]] = np.maximum(best_p[side[order]], pr[order])
            upd = pr[order] >= best_p[side[order]]
            best_m[side[order][upd]] = meth[order][upd]
    width = max(6, len(str(int(cl.labels.max()) + 1))) if n else 6
    src_names = np.array(rec.sources, dtype=object)
    size = np.bincount(cl.labels)[cl.labels]
    lm = np.where(best_m < 0, "unlinked", METHOD[np.maximum(best_m, 0)])
    df = pl.DataFrame({
        "source": pl.Series(src_names[rec.src], dtype=pl.String),
        "record_id": rec.df["record_id"],
        "person_id": pl.Series(cl.labels + 1).cast(pl.String).str.zfill(width),
        "link_method": pl.Series(lm, dtype=pl.String),
        "link_probability": pl.Series(np.where(best_m < 0, np.nan, best_p)).fill_nan(None),
        "cluster_size": pl.Series(size, dtype=pl.Int32),
    }).with_columns(("P" + pl.col("person_id")).alias("person_id"))
    df.write_parquet(out_dir / "clusters.parquet", compression="zstd")
    return df


def _level_series(spec: LinkSpec, G: np.ndarray) -> list[pl.Series]:
    out = []
    for j, c in enumerate(spec.comparisons):
        labels = c.level_labels()
        s = pl.Series(f"level_{c.name}", np.array(labels, dtype=object)[G[:, j]], dtype=pl.String)
        out.append(s.cast(pl.Enum(labels)))
    return out


def _pair_frame(rec: Records, sc, spec: LinkSpec, tasks, idx: np.ndarray) -> pl.DataFrame:
    src_names = np.array(rec.sources, dtype=object)
    rid = rec.df["record_id"]
    li, ri = sc.li[idx], sc.ri[idx]
    rules = np.array(["deterministic" if k == 0 else f"blocking:{sc.rule_names[k]}"
                      for k in range(len(sc.rule_names))], dtype=object)
    rule = rules[sc.rule[idx]]
    # deterministic rows: say which method (exact/typo) found them
    m = sc.method[idx]
    rule = np.where(m == 1, "deterministic:identifier", np.where(m == 2, "deterministic:identifier_typo",
                                                                   np.where(m == 3, "clerical", rule)))
    tk = np.array([spec.task_key(t) for t in tasks], dtype=object)
    cols = [
        pl.Series("source_l", src_names[rec.src[li]], dtype=pl.String),
        rid.gather(li).alias("record_id_l"),
        pl.Series("source_r", src_names[rec.src[ri]], dtype=pl.String),
        rid.gather(ri).alias("record_id_r"),
        pl.Series("match_weight", sc.weight[idx]),
        pl.Series("match_probability", sc.prob[idx]),
        pl.Series("method", METHOD[m], dtype=pl.String),
        pl.Series("rule", rule, dtype=pl.String),
        pl.Series("task", tk[sc.task[idx]], dtype=pl.String),
    ]
    return pl.DataFrame(cols + _level_series(spec, sc.G[idx]))


def write_pairs(out_dir: Path, rec: Records, sc, spec: LinkSpec, tasks, cl: ClusterResult,
                chunk: int = 2_000_000) -> None:
    """pairs.parquet written a chunk of pairs at a time (one row group each): the
    whole frame of 13M pairs with their record ids was the link stage's memory peak
    at 1M doctors."""
    import pyarrow.parquet as pq

    writer = None
    try:
        for lo in range(0, max(sc.li.size, 1), chunk):
            idx = np.arange(lo, min(lo + chunk, sc.li.size))
            df = _pair_frame(rec, sc, spec, tasks, idx).with_columns(
                pl.Series("linked", cl.accepted[idx]),
                pl.Series("same_person", cl.labels[sc.li[idx]] == cl.labels[sc.ri[idx]]),
            )
            t = df.to_arrow()
            if writer is None:
                writer = pq.ParquetWriter(out_dir / "pairs.parquet", t.schema, compression="zstd")
            writer.write_table(t)
    finally:
        if writer is not None:
            writer.close()


def write_review(out_dir: Path, rec: Records, sc, spec: LinkSpec, tasks) -> int:
    lo, hi = spec.review_band
    idx = np.flatnonzero((sc.prob >= lo) & (sc.prob < hi) & (sc.method == 0))
    idx = idx[np.argsort(-sc.prob[idx], kind="stable")]
    df = _pair_frame(rec, sc, spec, tasks, idx)
    df = df.with_columns([c.cast(pl.String) for c in df.select(pl.col(pl.Enum)).iter_columns()])
    show = [c for c in sorted(spec.needed_columns()) if c in rec.df.columns]
    side = []
    for c in show:
        s = rec.df[c]
        if s.dtype != pl.String:
            s = s.cast(pl.String)
        side.append(s.gather(sc.li[idx]).alias(f"{c}_l"))
        side.append(s.gather(sc.ri[idx]).alias(f"{c}_r"))
    df = pl.concat([df.with_row_index("pair_id", offset=1), pl.DataFrame(side) if side else pl.DataFrame()],
                   how="horizontal")
    df = df.with_columns(pl.lit(None, pl.String).alias("label"))
    df.write_csv(out_dir / "review.csv")
    return int(idx.size)
