"""Read clerical-review labels back (review.csv with its `label` column filled).

Accepted labels: 1 / match / yes / y / true and 0 / no / non-match / n / false;
blank rows are skipped. The spec's `labels:` names such a file: label-1 pairs
become forced links, label-0 pairs cannot-links, and the labelled matches
refine m.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from etl.errors import ConfigError

_YES = {"1", "match", "yes", "y", "true", "m", "same"}
_NO = {"0", "no", "non-match", "nonmatch", "non_match", "n", "false", "u", "different"}
REQUIRED = ["source_l", "record_id_l", "source_r", "record_id_r", "label"]


def read_labels(path: Path | str) -> pl.DataFrame:
    path = Path(path)
    try:
        df = pl.read_csv(path, infer_schema=False)
    except Exception as e:  # noqa: BLE001
        raise ConfigError(f"cannot read labels file ({type(e).__name__})", file=str(path), key="linkage.labels")
    missing = [c for c in REQUIRED if c not in df.columns]
    if missing:
        raise ConfigError(f"labels file lacks column(s) {missing}", file=str(path), key="linkage.labels")
    lab = df.select(REQUIRED).with_columns(pl.col("label").str.strip_chars().str.to_lowercase())
    lab = lab.filter(pl.col("label").is_not_null() & (pl.col("label") != ""))
    bad = lab.filter(~pl.col("label").is_in(list(_YES | _NO)))
    if bad.height:
        raise ConfigError(f"{bad.height} label(s) are neither match (1/yes) nor non-match (0/no)",
                          file=str(path), key="linkage.labels")
    return lab.with_columns(pl.when(pl.col("label").is_in(list(_YES))).then(1).otherwise(0)
                            .cast(pl.Int8).alias("label"))
