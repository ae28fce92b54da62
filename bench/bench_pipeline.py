"""Whole pipeline, ingest to verified release, timed and memory-sampled per stage.

    .venv/bin/python bench/bench_pipeline.py --doctors 10000 100000 1000000 --seed 1 [--repeat 3]

For each size:
- a synthetic delivery is generated once and cached under bench/data/delivery-<n>-s<seed>/
  (git-ignored); generation time and peak RSS are reported separately, never in the pipeline time;
- the pipeline runs in a fresh child process (`--child`), stage by stage through the
  `etl.pipeline` functions in `run_all` order (the same calls as `medlink run --no-prefect`),
  into a fresh output directory bench/results/pipeline/<n>/;
- the child prints a line when each stage (and each linkage progress step) starts; the parent
  samples the RSS of the child and its descendants with psutil every 20 ms and tags each sample
  with the stage running, so "peak" is the largest RSS seen while that stage ran (it includes what
  earlier stages left allocated: that is what the machine must hold). The child's ru_maxrss is
  printed too, as a check on the sampler;
- `medlink verify` runs on the published release (a separate process, timed).

Prints, per stage: median wall seconds, share of the pipeline, peak RSS, and the scaling exponent
log(t2/t1)/log(n2/n1) between consecutive sizes; the GX validation seconds of each gate
(`GateResult.seconds`) separately. Writes bench/results/pipeline-<n>.json per size.
Load average is printed before and after: the machine is shared, so quote medians.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import resource
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "bench" / "data"
RESULTS = ROOT / "bench" / "results"
STAGES = ("ingest", "raw_gate", "link", "linked_gate", "assemble", "protect",
          "release_gate", "report", "publish")
GIB = 1024 ** 3


# --------------------------------------------------------------------------- child

def _emit(**kw) -> None:
    sys.stdout.write("@@" + json.dumps(kw, default=str) + "\n")
    sys.stdout.flush()


def child(config: Path, out_dir: Path, truth: Path | None, profile_dir: Path | None) -> None:
    """Run every stage in `run_all` order, announcing each one on stdout."""
    sys.path.insert(0, str(ROOT))
    import dataclasses

    from etl import config as cfgmod
    from etl import pipeline as P
    from etl.errors import MedlinkError

    cfg = dataclasses.replace(cfgmod.load(config), output_dir=out_dir.resolve())
    run_id = P.new_run_id()
    times: dict[str, float] = {}
    prof = None
    if profile_dir:
        import cProfile
        profile_dir.mkdir(parents=True, exist_ok=True)

    def stage(name, fn, *a, **k):
        nonlocal prof
        _emit(event="stage", stage=name, t=time.time())
        t0 = time.perf_counter()
        if profile_dir:
            prof = cProfile.Profile()
            prof.enable()
        try:
            return fn(*a, **k)
        finally:
            if profile_dir:
                prof.disable()
                prof.dump_stats(str(profile_dir / f"{name}.prof"))
            times[name] = times.get(name, 0.0) + time.perf_counter() - t0

    def sub(msg: str) -> None:
        _emit(event="sub", msg=str(msg)[:80], t=time.time())

    out: dict = {"run_id": run_id}
    P.prewarm()          # as run_all does: GX import overlaps ingest
    ingests = []
    for s in cfg.sources:
        ingests.append(stage("ingest", P.ingest_source, cfg, s, run_id))
    out["ingest"] = ingests
    out["raw_gate"] = [stage("raw_gate", P.raw_gate, cfg, s, run_id, summ)
                       for s, summ in zip(cfg.sources, ingests)]
    out["link"] = stage("link", P.link, cfg, run_id, ingests, truth=truth, progress=sub)
    out["linked_gate"] = stage("linked_gate", P.linked_gate, cfg, run_id, ingests, out["link"])
    out["assemble"] = stage("assemble", P.assemble, cfg, run_id, ingests, out["link"])
    out["protect"] = stage("protect", P.protect, cfg, run_id, out["assemble"], ingests)
    try:
        out["release_gate"] = stage("release_gate", P.release_gate, cfg, run_id, out["protect"])
    except MedlinkError:
        P.discard_staging(cfg, run_id)
        raise
    out["report"] = stage("report", P.report, cfg, run_id)
    out["publish"] = stage("publish", P.publish, cfg, run_id, out)
    _emit(event="stage", stage="done", t=time.time())
    gx = {"raw_gate": sum(g.get("seconds", 0) for g in out["raw_gate"]),
          "linked_gate": out["linked_gate"].get("seconds"),
          "release_gate": (out["release_gate"].get("seconds") or 0)
          + ((out["release_gate"].get("events") or {}).get("seconds") or 0)}
    # GateResult.seconds is the conversion + validation; the stage "seconds" (setdefault in
    # _timed) is overwritten by res.to_dict()'s own "seconds" key, so take GX time from results.
    gx_detail = {"raw_gate": [g.get("seconds") for g in out["raw_gate"]],
                 "release_doctors": out["release_gate"].get("seconds"),
                 "release_events": (out["release_gate"].get("events") or {}).get("seconds")}
    link_keys = {k: v for k, v in out["link"].items() if isinstance(v, (int, float, str))}
    try:   # the engine's own lap times (load, deterministic, blocking_keys, candidates, train, ...)
        rep = json.loads((P.run_dir(cfg, run_id) / "linkage" / "report.json").read_text())
        link_keys["timings"] = rep.get("timings_seconds")
    except (OSError, ValueError):
        pass
    _emit(event="result", times=times, gx=gx, gx_detail=gx_detail,
          release_dir=out["publish"].get("release_dir"),
          rows={i["source"]: i["rows_in"] for i in ingests}, link=link_keys,
          maxrss_gib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB)


# --------------------------------------------------------------------------- parent

def _tree_rss(p) -> int:
    import psutil
    total = 0
    try:
        total = p.memory_info().rss
        for c in p.children(recursive=True):
            try:
                total += c.memory_info().rss
            except psutil.Error:
                pass
    except psutil.Error:
        pass
    return total


def generate(n: int, seed: int) -> tuple[Path, dict]:
    d = DATA / f"delivery-{n}-s{seed}"
    meta = d / "bench_generate.json"
    if (d / "delivery.yaml").is_file() and meta.is_file():
        return d, {**json.loads(meta.read_text()), "cached": True}
    if (d / "delivery.yaml").is_file():      # generated by hand earlier: time unknown
        return d, {"seconds": None, "peak_rss_gib": None, "cached": True}
    tmp = d.with_name(d.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    t0 = time.perf_counter()
    subprocess.run([str(ROOT / ".venv" / "bin" / "medlink"), "generate", "--doctors", str(n),
                    "--seed", str(seed), "--out", str(tmp), "--quiet"], check=True,
                   stdout=subprocess.DEVNULL)
    secs = time.perf_counter() - t0
    rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024 / GIB
    info = {"seconds": round(secs, 1), "peak_rss_gib_upper_bound": round(rss, 2)}
    (tmp / "bench_generate.json").write_text(json.dumps(info))
    tmp.rename(d)
    return d, {**info, "cached": False}


def run_once(delivery: Path, n: int, truth: bool, profile: Path | None, interval: float) -> dict:
    import psutil
    out_dir = RESULTS / "pipeline" / str(n)
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir(parents=True)
    cmd = [sys.executable, __file__, "--child", "--config", str(delivery / "delivery.yaml"),
           "--out-dir", str(out_dir)]
    if truth:
        cmd += ["--truth-path", str(delivery / "truth.parquet")]
    if profile:
        cmd += ["--profile", str(profile)]
    state = {"stage": "startup", "sub": None}
    peaks: dict[str, int] = {}
    sub_peaks: dict[str, int] = {}
    subs: list[tuple[str, float]] = []
    result: dict = {}
    t_start = time.time()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, cwd=ROOT)
    ps = psutil.Process(proc.pid)
    stop = threading.Event()

    def sampler():
        while not stop.is_set():
            r = _tree_rss(ps)
            st, sb = state["stage"], state["sub"]
            peaks[st] = max(peaks.get(st, 0), r)
            if st == "link" and sb:
                sub_peaks[sb] = max(sub_peaks.get(sb, 0), r)
            stop.wait(interval)

    th = threading.Thread(target=sampler, daemon=True)
    th.start()
    for line in proc.stdout:
        if not line.startswith("@@"):
            sys.stderr.write(line)
            continue
        ev = json.loads(line[2:])
        if ev["event"] == "stage":
            state["stage"], state["sub"] = ev["stage"], None
        elif ev["event"] == "sub":
            state["sub"] = ev["msg"]
            subs.append((ev["msg"], ev["t"]))
        elif ev["event"] == "result":
            result = ev
    rc = proc.wait()
    stop.set()
    th.join()
    wall = time.time() - t_start
    if rc != 0 or not result:
        raise SystemExit(f"pipeline child failed (exit {rc}) at stage {state['stage']}")
    # linkage sub-steps: seconds between consecutive progress messages
    link_steps = []
    for i, (msg, t) in enumerate(subs):
        t_next = subs[i + 1][1] if i + 1 < len(subs) else None
        link_steps.append({"step": msg, "seconds": round((t_next or t) - t, 2) if t_next else None,
                           "peak_rss_gib": round(sub_peaks.get(msg, 0) / GIB, 2)})
    t0 = time.perf_counter()
    v = subprocess.run([str(ROOT / ".venv" / "bin" / "medlink"), "verify", result["release_dir"]],
                       capture_output=True, text=True)
    verify_s = time.perf_counter() - t0
    return {"times": result["times"], "gx": result["gx"], "gx_detail": result["gx_detail"],
            "peak_rss_gib": {k: round(v_ / GIB, 3) for k, v_ in peaks.items()},
            "child_maxrss_gib": round(result["maxrss_gib"], 3), "child_wall_s": round(wall, 2),
            "link_steps": link_steps, "link": result["link"], "rows": result["rows"],
            "release_dir": result["release_dir"],
            "verify": {"ok": v.returncode == 0, "seconds": round(verify_s, 2),
                       "output": (v.stdout + v.stderr).strip()[-500:]}}


def _exp(t1, t2, n1, n2):
    if not t1 or not t2 or t1 <= 0 or t2 <= 0:
        return float("nan")
    return math.log(t2 / t1) / math.log(n2 / n1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--doctors", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=1, help="runs per size; medians are printed")
    ap.add_argument("--truth", action="store_true", help="pass truth.parquet to link (evaluation)")
    ap.add_argument("--profile", type=Path, help="cProfile each stage into DIR/<n>/<stage>.prof")
    ap.add_argument("--interval", type=float, default=0.02, help="RSS sampling interval, s")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--config", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--out-dir", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--truth-path", type=Path, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        child(a.config, a.out_dir, a.truth_path, a.profile)
        return
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}  (cores: {os.cpu_count()})")
    sizes = sorted(a.doctors)
    res: dict[int, dict] = {}
    for n in sizes:
        d, gen = generate(n, a.seed)
        runs = []
        for r in range(a.repeat):
            la = os.getloadavg()[0]
            one = run_once(d, n, a.truth, a.profile / str(n) if a.profile else None, a.interval)
            one["load_avg_1m"] = la
            runs.append(one)
            tot = sum(one["times"].values())
            print(f"  n={n:,} run {r + 1}/{a.repeat}: pipeline {tot:.1f} s, peak "
                  f"{max(one['peak_rss_gib'].values()):.2f} GiB, verify "
                  f"{'OK' if one['verify']['ok'] else 'FAILED'} ({one['verify']['seconds']} s), "
                  f"load {la:.2f}", flush=True)
        med = {s: statistics.median(r["times"].get(s, 0.0) for r in runs) for s in STAGES}
        med["total"] = statistics.median(sum(r["times"].values()) for r in runs)
        peak = {s: max(r["peak_rss_gib"].get(s, 0.0) for r in runs) for s in STAGES}
        peak["total"] = max(max(r["peak_rss_gib"].values()) for r in runs)
        gx = {k: statistics.median(r["gx"][k] or 0 for r in runs) for k in runs[0]["gx"]}
        res[n] = {"doctors": n, "seed": a.seed, "generate": gen, "median_seconds": med,
                  "peak_rss_gib": peak, "gx_seconds": gx, "runs": runs,
                  "verify_ok": all(r["verify"]["ok"] for r in runs)}
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / f"pipeline-{n}.json").write_text(json.dumps(res[n], indent=2, default=str))

    # ---- table
    print()
    hdr = f"{'stage':<13}" + "".join(f"{f'{n:,}: s':>13}{'share':>7}{'peak GiB':>9}" for n in sizes)
    pairs = list(zip(sizes, sizes[1:]))
    hdr += "".join(f"{f'exp {p[0]//1000}k-{p[1]//1000}k':>16}" for p in pairs)
    print(hdr)
    print("-" * len(hdr))
    for s in (*STAGES, "total"):
        row = f"{s:<13}"
        for n in sizes:
            t = res[n]["median_seconds"][s]
            tot = res[n]["median_seconds"]["total"]
            row += f"{t:>13.2f}{100 * t / tot:>6.1f}%{res[n]['peak_rss_gib'][s]:>9.2f}"
        for n1, n2 in pairs:
            row += f"{_exp(res[n1]['median_seconds'][s], res[n2]['median_seconds'][s], n1, n2):>16.2f}"
        print(row)
    print()
    print("GX validation seconds (GateResult.seconds, median), included in the gate stages above:")
    for k in ("raw_gate", "linked_gate", "release_gate"):
        print(f"  {k:<13}" + "".join(f"{f'{n:,}:':>12}{res[n]['gx_seconds'][k]:>7.2f}" for n in sizes))
    print()
    for n in sizes:
        r0 = res[n]["runs"][-1]
        g = res[n]["generate"]
        print(f"n={n:,}: rows {r0['rows']}; generation {g.get('seconds')} s"
              f"{' (cached)' if g.get('cached') else ''}; child wall {r0['child_wall_s']} s; "
              f"child ru_maxrss {r0['child_maxrss_gib']:.2f} GiB; verify "
              f"{'OK' if res[n]['verify_ok'] else 'FAILED'} ({r0['verify']['seconds']} s): "
              f"{r0['verify']['output'].splitlines()[-1] if r0['verify']['output'] else ''}")
        lt = (r0["link"] or {}).get("timings")
        if lt:
            print("  link (engine laps, s): " + ", ".join(f"{k} {v}" for k, v in lt.items()))
    print(f"\nload average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
