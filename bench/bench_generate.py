"""Time the synthetic delivery generator and report peak memory.

    python bench/bench_generate.py --doctors 100000 1000000 --seed 1 --out /tmp/medlink-bench

Each size runs in a fresh subprocess so peak RSS (ru_maxrss of the child) is per size.
"""
from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _child(n: int, seed: int, out: Path) -> None:
    sys.path.insert(0, str(ROOT))
    from etl.synth import generate
    t0 = time.perf_counter()
    s = generate(n, seed, out)
    secs = time.perf_counter() - t0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2   # KiB -> GiB
    size = sum(p.stat().st_size for p in out.iterdir()) / 1024 ** 2
    print(json.dumps({"doctors": n, "seconds": round(secs, 1), "peak_rss_gib": round(rss, 2),
                      "rows": s["counts"], "output_mib": round(size, 1)}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--doctors", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", type=Path, default=Path("/tmp/medlink-bench"))
    ap.add_argument("--keep", action="store_true", help="keep generated files")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        _child(a.doctors[0], a.seed, a.out)
        return
    for n in a.doctors:
        out = a.out / f"n{n}"
        shutil.rmtree(out, ignore_errors=True)
        subprocess.run([sys.executable, __file__, "--child", "--doctors", str(n), "--seed", str(a.seed),
                        "--out", str(out)], check=True)
        if not a.keep:
            shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    main()
