"""Incremental linkage vs a full relink, on a synthetic history split into yearly deliveries.

    .venv/bin/python bench/bench_incremental.py --doctors 100000 --seed 3 [--repeat 3]

- generates a synthetic delivery (cached under bench/data/incremental-<n>-s<seed>/, git-ignored)
  and standardises it with etl.ingest (generation and ingest are not timed);
- splits every extract by year (admission cycle_year, training entry_year, registration
  application_year, register-only rows graduation_year): delivery 0 = years <= 2021 (the
  backlog), then one delivery per year 2022..2025 (`--bounds`);
- incremental: `init_state` on delivery 0, `link_incremental` on each later one (untimed
  chain up to the state before the last delivery);
- then `--repeat` rounds, each: the full relink (`etl.linkage.link` on everything at once,
  training included, report written) and the last year's delivery linked incrementally on
  a fresh copy of the state before it (state reads and writes included). The two runs of a
  round are back to back, so they see the same machine load; each round's ratio is
  printed, and the medians' ratio is the result;
- wall time and process CPU time (all threads) of both;
- prints pairwise F1 against truth of both clusterings (all record pairs), the pairwise F1
  between them, the records whose person differs.
Writes bench/results/incremental-<n>.json. The machine is shared: quote medians.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DATA = ROOT / "bench" / "data"
RESULTS = ROOT / "bench" / "results"
SOURCES = ("admission", "training", "registration")


def prepare(n: int, seed: int) -> Path:
    from etl import config as cfgmod
    from etl.ingest import ingest
    from etl.synth import generate

    d = DATA / f"incremental-{n}-s{seed}"
    if all((d / "std" / f"{s}.parquet").exists() for s in SOURCES) and (d / "truth.parquet").exists():
        return d
    t0 = time.perf_counter()
    generate(n, seed, d)
    cfg = cfgmod.load(d / "delivery.yaml")
    for s, sc in cfg.sources.items():
        ingest(sc, d / "std" / f"{s}.parquet", d / "quarantine" / f"{s}.parquet")
    print(f"generated + ingested {n} doctors in {time.perf_counter() - t0:.1f}s -> {d}")
    return d


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--doctors", type=int, default=100_000)
    ap.add_argument("--seed", type=int, default=3)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--bounds", type=int, nargs="+", default=[2021, 2022, 2023, 2024])
    args = ap.parse_args()

    import polars as pl

    from etl import incremental as I
    from etl.linkage import link, load_spec

    d = prepare(args.doctors, args.seed)
    spec = load_spec({}, ROOT)
    std = {s: d / "std" / f"{s}.parquet" for s in SOURCES}
    truth = pl.read_parquet(d / "truth.parquet").select(pl.col("source").cast(pl.String),
                                                        pl.col("record_id").cast(pl.String),
                                                        pl.col("person_id").cast(pl.String))
    work = d / "bench_incremental"
    shutil.rmtree(work, ignore_errors=True)
    dels = I.split_by_year(std, work / "deliveries", args.bounds)
    rows = [{s: pl.scan_parquet(p).select(pl.len()).collect().item() for s, p in x.items()} for x in dels]
    for i, r in enumerate(rows):
        print(f"delivery {i}: {r}")
    print(f"load average before: {os.getloadavg()}")

    # ---- incremental chain up to the state before the last delivery (untimed)
    state = work / "state"
    t0 = time.perf_counter()
    init = I.init_state(dels[0], spec, state, work / "inc_0")
    print(f"init_state (delivery 0): {time.perf_counter() - t0:.2f}s, {init['persons']} persons")
    per_delivery = []
    for i in range(1, len(dels) - 1):
        r = I.link_incremental(dels[i], state, spec, work / f"inc_{i}")
        per_delivery.append(r)
        print(f"delivery {i}: {r}")
    snap = work / "state_before_last"
    shutil.copytree(state, snap)
    last = len(dels) - 1

    # ---- rounds: full relink, then the last delivery incrementally, back to back
    full_t, inc_t, full_cpu, inc_cpu, res = [], [], [], [], None
    for k in range(args.repeat):
        out = work / f"full_{k}"
        c0, t0 = time.process_time(), time.perf_counter()
        link(std, spec, out)
        full_t.append(time.perf_counter() - t0)
        full_cpu.append(time.process_time() - c0)
        st_k = work / f"state_last_{k}"
        shutil.rmtree(st_k, ignore_errors=True)
        shutil.copytree(snap, st_k)
        c0, t0 = time.process_time(), time.perf_counter()
        res = I.link_incremental(dels[last], st_k, spec, work / f"inc_last_{k}")
        inc_t.append(time.perf_counter() - t0)
        inc_cpu.append(time.process_time() - c0)
        print(f"round {k}: full relink {full_t[-1]:.2f}s (cpu {full_cpu[-1]:.2f}s), last delivery incremental "
              f"{inc_t[-1]:.2f}s (cpu {inc_cpu[-1]:.2f}s), ratio {inc_t[-1] / full_t[-1]:.3f}; "
              f"load {os.getloadavg()[0]:.1f}")
    full_cl = pl.read_parquet(work / "full_0" / "clusters.parquet")
    per_delivery.append(res)
    print(f"delivery {last}: {res}")
    inc_cl = pl.read_parquet(work / "inc_last_0" / "clusters.parquet")
    rep = json.loads((work / "inc_last_0" / "incremental_report.json").read_text())

    f_full = I.pairwise_f1(full_cl, truth)
    f_inc = I.pairwise_f1(inc_cl, truth)
    f_between = I.pairwise_f1(inc_cl, full_cl)
    # records whose person differs: map incremental keys onto the full clusters by overlap
    a = full_cl.select("source", "record_id", pl.col("person_id").alias("cluster")).join(
        inc_cl.select("source", "record_id", pl.col("person_id").alias("old_key")), on=["source", "record_id"])
    m, _ = I.map_keys(a, 10**8)
    differs = a.join(m, on="cluster").filter(pl.col("key") != pl.col("old_key")).height
    med_full, med_inc = statistics.median(full_t), statistics.median(inc_t)
    print(f"load average after: {os.getloadavg()}")
    print()
    print(f"doctors {args.doctors}, records {full_cl.height}, deliveries {len(dels)} (bounds {args.bounds})")
    print(f"pairwise F1 vs truth: full relink {f_full['f1']:.6f}   incremental {f_inc['f1']:.6f}   "
          f"difference {f_inc['f1'] - f_full['f1']:+.6f}")
    print(f"incremental vs full relink: pairwise F1 {f_between['f1']:.6f}, records whose person differs {differs}")
    ratios = [i / f for i, f in zip(inc_t, full_t)]
    print(f"time: full relink median {med_full:.2f}s {[round(x, 2) for x in full_t]}; "
          f"last delivery incremental median {med_inc:.2f}s {[round(x, 2) for x in inc_t]}; "
          f"ratio of medians {med_inc / med_full:.3f}; per round {[round(r, 3) for r in ratios]}")
    print(f"cpu time: full relink median {statistics.median(full_cpu):.2f}s, last delivery incremental median "
          f"{statistics.median(inc_cpu):.2f}s, ratio {statistics.median(inc_cpu) / statistics.median(full_cpu):.3f}")
    print(f"last delivery: {rows[last]} new rows, subset linked {res['subset_records']} records; "
          f"stage seconds {rep['timings_seconds']}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = {"doctors": args.doctors, "seed": args.seed, "bounds": args.bounds, "delivery_rows": rows,
           "records": full_cl.height, "f1_full_vs_truth": f_full, "f1_incremental_vs_truth": f_inc,
           "f1_incremental_vs_full": f_between, "records_person_differs": differs,
           "full_relink_seconds": full_t, "incremental_last_seconds": inc_t,
           "median_full": med_full, "median_incremental": med_inc, "ratio": med_inc / med_full,
           "ratio_per_round": ratios, "full_relink_cpu_seconds": full_cpu, "incremental_last_cpu_seconds": inc_cpu,
           "last_link_subset_timings": rep.get("link_subset_seconds"),
           "per_delivery": per_delivery, "last_timings": rep["timings_seconds"]}
    p = RESULTS / f"incremental-{args.doctors}.json"
    p.write_text(json.dumps(out, indent=1, default=str))
    print(f"wrote {p}")


if __name__ == "__main__":
    main()
