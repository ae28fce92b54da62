"""Measure the time Prefect adds to a small delivery run, beyond the work.

    python -m flows.overhead                 # 3 runs each: no Prefect / background server / ephemeral
    python -m flows.overhead --runs 5 --config path/to/delivery.yaml --real

Each run is a whole new Python process (what `medlink run` costs), timed
from spawn to exit. "none" runs etl.pipeline.run_all (the work alone);
"server" runs flows.delivery.run_delivery against the medlink-managed
background server (started first if needed); "ephemeral" runs it with no
server, so Prefect starts its temporary one. Without --real the stages after
ingest are trivial stand-ins (only the real ingest runs), so the difference
is Prefect's cost; with --real every stage is the real one.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _tiny_delivery(d: Path, n: int = 200) -> Path:
    rng = random.Random(3)
    d.mkdir(parents=True, exist_ok=True)
    cols = ["record_id", "forenames", "surname", "date_of_birth", "gmc_number"]
    for k, src in enumerate(("registration", "register2")):
        with (d / f"{src}.csv").open("w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(cols)
            for i in range(n):
                w.writerow([f"R{k}{i:06d}", "ANNA", f"NAME{i}", f"19{rng.randint(60, 99)}-0{rng.randint(1, 9)}-1{rng.randint(0, 9)}",
                            f"{rng.randint(1000000, 9999999)}"])
    import yaml
    (d / "delivery.yaml").write_text(yaml.safe_dump({
        "delivery": "overhead",
        "sources": {s: {"path": f"{s}.csv", "contract": "registration", "columns": {c: c for c in cols}}
                    for s in ("registration", "register2")},
        "output": {"dir": "out"}}))
    return d / "delivery.yaml"


def _install_trivial_stages() -> None:
    """Stages after ingest return fixed summaries (ingest itself is real)."""
    from etl import pipeline
    ok = {"success": True, "evaluated": 1, "failed": []}
    pipeline.raw_gate = lambda cfg, source, run_id, s: {"gate": f"raw_{source}", **ok}
    pipeline.link = lambda cfg, run_id, ing, truth=None, progress=None: {"persons": 1, "links": 0}
    pipeline.linked_gate = lambda cfg, run_id, ing, link: {"gate": "linked", **ok}
    pipeline.assemble = lambda cfg, run_id, ing, link: {"doctors": 1}
    pipeline.protect = lambda cfg, run_id, asm, ing: {"doctors": 1}
    pipeline.release_gate = lambda cfg, run_id, prot: {"gate": "release", **ok}
    pipeline.report = lambda cfg, run_id: {"report": "none"}
    pipeline.publish = lambda cfg, run_id, summ: {"release_id": run_id}


def _child(mode: str, config: str, real: bool) -> None:
    if not real:
        _install_trivial_stages()
    if mode == "none":
        from etl import config as c, pipeline
        pipeline.run_all(c.load(config))
    else:
        from flows.delivery import run_delivery
        run_delivery(config, progress=False, server="auto" if mode == "server" else "ephemeral")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m flows.overhead", description=__doc__.splitlines()[0])
    p.add_argument("--config")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--real", action="store_true", help="run the real stages (needs every etl module)")
    p.add_argument("--modes", default="none,server,ephemeral")
    p.add_argument("--child", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child:
        _child(a.child, a.config, a.real)
        return 0
    config = a.config or str(_tiny_delivery(Path(tempfile.mkdtemp(prefix="medlink-overhead-"))))
    modes = a.modes.split(",")
    from flows import server
    if "server" in modes:
        server.start()
    results = {}
    for mode in modes:
        env = dict(os.environ)
        if mode != "server":
            env.pop("PREFECT_API_URL", None)
        if mode == "ephemeral":   # own SQLite home (first run migrates it: the "fresh home" case)
            env["PREFECT_HOME"] = tempfile.mkdtemp(prefix="medlink-ephemeral-home-")
        times = []
        for _ in range(a.runs):
            t0 = time.perf_counter()
            cmd = [sys.executable, "-m", "flows.overhead", "--child", mode, "--config", config]
            if a.real:
                cmd.append("--real")
            r = subprocess.run(cmd, env=env, capture_output=True, text=True)
            times.append(round(time.perf_counter() - t0, 2))
            if r.returncode:
                print(f"{mode}: failed\n{r.stderr[-2000:]}", file=sys.stderr)
                return 1
            if r.stderr.strip():
                print(f"{mode}: stderr: {r.stderr.strip()[:500]}", file=sys.stderr)
        results[mode] = times
    base = statistics.median(results["none"]) if "none" in results else 0.0
    for mode, times in results.items():
        med = statistics.median(times)
        extra = f"  Prefect adds {med - base:.2f} s" if mode != "none" and "none" in results else ""
        print(f"{mode:<10} process wall {', '.join(f'{t:.2f}' for t in times)} s (median {med:.2f}){extra}")
    print(json.dumps({"config": config, "runs": results}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
