"""Run the benches in bench/ (`make bench`). Arguments after the script go to bench_pipeline.py.

    .venv/bin/python bench/run_all.py                      # pipeline at 10k, 100k, 1M doctors
    .venv/bin/python bench/run_all.py --doctors 10000 100000 --repeat 3
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> int:
    rc = 0
    for name, args in (("bench_pipeline.py", sys.argv[1:]),):
        script = HERE / name
        if not script.is_file():
            continue
        print(f"== {name} {' '.join(args)}", flush=True)
        rc |= subprocess.run([sys.executable, str(script), *args]).returncode
    return rc


if __name__ == "__main__":
    sys.exit(main())
