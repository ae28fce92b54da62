"""The frame the linked gate validates: ingested records beside the clusters.

One row per (source, record_id) found in either the ingested extracts or
`clusters.parquet` (a full join, so a record missing from either side, or
duplicated in clusters, shows up as its own row):

    source, record_id, person_id (null: not in clusters), in_ingest (false: not ingested)

Only keys and the person id are read; no identifying column leaves the
Parquet files.

`record_id` and `person_id` are handed to the gate as integer codes (UInt32,
one code per distinct string, null stays null): every expectation of the
`linked` suite compares these columns only for equality (uniqueness, nulls,
cluster sizes, link rates), which the codes preserve exactly, and at 1M
doctors (4.4 M rows) hashing and null-testing 9 M Python strings in pandas
cost ~18 s of the gate's 28 s. A check on the text of an id belongs in the
raw suites, which see the real strings. `codes=False` keeps the strings.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

KEYS = ["source", "record_id"]


def _ingest_keys(ingest: list[Path] | dict[str, Path] | list[pl.DataFrame]) -> pl.DataFrame:
    items = ingest.values() if isinstance(ingest, dict) else ingest
    frames = []
    for item in items:
        lf = item.lazy() if isinstance(item, pl.DataFrame) else pl.scan_parquet(item)
        frames.append(lf.select(pl.col("source").cast(pl.String), pl.col("record_id").cast(pl.String)))
    if not frames:
        return pl.DataFrame(schema={"source": pl.String, "record_id": pl.String})
    return pl.concat(frames).collect()


def linked_frame(ingest: list[Path] | dict[str, Path] | list[pl.DataFrame],
                 clusters: Path | pl.DataFrame) -> pl.DataFrame:
    """Full join of the ingested record keys with clusters (source, record_id, person_id),
    record_id and person_id as equality-preserving integer codes (no identifier reaches GX)."""
    keys = _ingest_keys(ingest).with_columns(pl.lit(True).alias("in_ingest"))
    cl = clusters if isinstance(clusters, pl.DataFrame) else pl.read_parquet(
        clusters, columns=["source", "record_id", "person_id"])
    cl = cl.select(pl.col("source").cast(pl.String), pl.col("record_id").cast(pl.String),
                   pl.col("person_id"))
    out = keys.join(cl, on=KEYS, how="full", coalesce=True, nulls_equal=False)
    ids = [pl.col(c).cast(pl.String).cast(pl.Categorical).to_physical().alias(c) for c in ("record_id", "person_id")]
    return out.select("source", *ids, pl.col("in_ingest").fill_null(False))
