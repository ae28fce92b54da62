"""Time the release gate on a 1,000,000-row release-like doctors table.

    .venv/bin/python bench/bench_gx.py [--rows 1000000] [--docs DIR] [--repeat 2]

Builds a synthetic table of ~20 columns shaped like profile A's release
(random-token pseudonym, generalised quasi-identifiers as strings, a few
integer/float/boolean columns, nulls included), then runs
`run_gate(["release"], ...)` and prints the wall time of: polars -> pandas,
the GX validation (one suite, one pass), and the Data Docs build. GX import
and context creation are timed separately (once per process).
"""

from __future__ import annotations

import argparse
import secrets
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl


QI = ["sex", "age_band_at_entry", "ethnicity_group", "domicile_nation", "school_group"]


def release_like(n: int, seed: int = 7) -> pl.DataFrame:
    rng = np.random.default_rng(seed)

    def pick(values, p=None):
        idx = rng.choice(len(values), n, p=p)
        return pl.Series(values, dtype=pl.String).gather(idx)

    tokens = [secrets.token_hex(16) for _ in range(n)]
    df = pl.DataFrame({
        "doctor_pid": tokens,
        "sex": pick(["M", "F"]),
        "age_band_at_entry": pick(["18 or under", "19", "20-21", "22-25", "26 or over"], [.6, .2, .1, .06, .04]),
        "ethnicity_group": pick(["White", "Asian", "Black", "Mixed", "Other", "Unknown"], [.55, .25, .07, .05, .04, .04]),
        "domicile_nation": pick(["England", "Scotland", "Wales", "Northern Ireland"], [.84, .08, .05, .03]),
        "school_group": pick(["London", "Midlands & East", "North", "South", "Scotland", "Wales", "NI"]),
        "graduation_cohort": pick(["2010-2011", "2012-2013", "2014-2015", "2016-2017", "2018-2019"]),
        "first_offer_specialty_group": pick(["GP", "Medical", "Surgical", "Psychiatry", "Anaesthetics", None]),
        "specialist_register_period": pick(["2016-2017", "2018-2019", None], [.1, .1, .8]),
        "gp_register_period": pick(["2016-2017", "2018-2019", None], [.15, .15, .7]),
        "training_region_group": pick(["London and South East", "South", "Midlands and East", "North", "Scotland", "Wales"]),
        "fsm": pick(["Y", "N", "DK", None]),
        "course_type": pick(["SEM", "GEP", "EMDP"], [.85, .12, .03]),
        "course_outcome": pick(["graduated", "withdrew", "ongoing"], [.9, .04, .06]),
        "epm_decile": pl.Series(rng.integers(1, 11, n)).cast(pl.Int64).scatter(rng.integers(0, n, n // 10), None),
        "n_offers": pl.Series(rng.integers(0, 5, n)).cast(pl.Int64),
        "link_probability": rng.random(n),
        "in_admission": rng.random(n) < .95,
        "in_training": np.ones(n, dtype=bool),
        "in_registration": rng.random(n) < .8,
    })
    # local suppression as profile A's protect stage does it: rows in a QI
    # class smaller than k get the marker in every QI and qi_suppressed = true
    small = pl.len().over(QI) < 10
    return df.with_columns(small.alias("qi_suppressed")).with_columns(
        [pl.when(pl.col("qi_suppressed")).then(pl.lit("Suppressed")).otherwise(pl.col(c)).alias(c) for c in QI])


def params_for(df: pl.DataFrame) -> dict:
    return {"release_columns": df.columns, "k": 10, "suppression_marker": "Suppressed",
            "qi_columns": QI,
            "value_sets": {"sex": ["M", "F", "Other/not known", "Suppressed", "*"]}}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--docs", type=Path, default=None)
    a = ap.parse_args()

    t = time.perf_counter()
    df = release_like(a.rows)
    print(f"frame: {df.height:,} rows x {df.width} columns, built in {time.perf_counter() - t:.2f} s")

    t = time.perf_counter()
    from etl.quality import gate as G
    G._context()
    print(f"import GX + ephemeral context: {time.perf_counter() - t:.2f} s (once per process)")

    t = time.perf_counter()
    G.to_pandas(df)
    print(f"polars -> pandas: {time.perf_counter() - t:.2f} s")

    docs = a.docs or Path(tempfile.mkdtemp(prefix="medlink-gx-bench-"))
    for i in range(a.repeat):
        cpu = time.process_time()
        res = G.run_gate(["release"], df, docs_dir=None, params=params_for(df), data_asset_name="bench")
        cpu = time.process_time() - cpu
        print(f"run {i + 1}: run_gate (convert + validate {res.statistics['evaluated_expectations']} "
              f"expectations, no docs): {res.seconds:.2f} s wall, {cpu:.2f} s CPU, "
              f"success={res.success} {res.summary_line()}")
    t = time.perf_counter()
    res = G.run_gate(["release"], df, docs_dir=docs, params=params_for(df), data_asset_name="bench")
    print(f"run_gate with Data Docs: {res.seconds:.2f} s -> {res.docs_index}")
    import os
    print(f"load average during the run: {os.getloadavg()[0]:.1f} (2-core machine: above 2 inflates wall times)")


if __name__ == "__main__":
    main()
