"""Faults and concurrency: runs killed with SIGKILL during linkage and
during publish, a full disk during publish, and two runs on one output at
once. After each: the previous release is intact and verifies, no partial
release is visible under a release name, and the next run succeeds.

The kill trials start real `medlink run` subprocesses; they sit behind the
`slow` marker, which CI runs (`make test` runs every test).
"""

from __future__ import annotations

import errno
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from etl.publish import verify
from etl.synth import generate

N_DOCTORS = 1000
TRIALS_PER_STAGE = 10          # 2 stages -> 20 trials
SEED = 20261126


def run_cmd(cfg: Path) -> list[str]:
    return [sys.executable, "-m", "etl.cli", "run", "--no-prefect", "--config", str(cfg)]


def releases_of(cfg: Path) -> Path:
    c = yaml.safe_load(cfg.read_text())
    return (cfg.parent / c["output"]["dir"] / "releases").resolve()


def assert_release_zone_sound(releases: Path, expected_current: str | None) -> None:
    """CURRENT names a release that verifies; every visible (non-hidden)
    directory is a complete release."""
    if expected_current is not None:
        assert (releases / "CURRENT").read_text().strip() == expected_current
    if (releases / "CURRENT").exists():
        cur = releases / (releases / "CURRENT").read_text().strip()
        assert cur.is_dir()
        assert verify(cur) == [], verify(cur)
    for d in releases.iterdir():
        if d.is_dir() and not d.name.startswith("."):
            assert verify(d) == [], (d.name, verify(d))


@pytest.fixture(scope="module")
def delivery(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("faults")
    generate(N_DOCTORS, 3, d)
    cfg = d / "delivery.yaml"
    r = subprocess.run(run_cmd(cfg), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    return cfg


def kill_during(cfg: Path, stage: str, rng: random.Random) -> int:
    """Start a run, wait until it reports `stage` on stderr, then SIGKILL it
    after a random delay. Returns the process's exit status."""
    proc = subprocess.Popen(run_cmd(cfg), stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    try:
        for line in proc.stderr:
            if line.split("] ", 1)[-1].startswith(stage):
                time.sleep(rng.uniform(0.0, 0.6))
                break
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
        proc.stderr.close()
    return proc.returncode


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["link", "publish"])
def test_sigkill_never_damages_the_release_zone(delivery, stage):
    rng = random.Random(f"{SEED}-{stage}")
    releases = releases_of(delivery)
    before = (releases / "CURRENT").read_text().strip()
    outcomes = []
    for _ in range(TRIALS_PER_STAGE):
        cur = (releases / "CURRENT").read_text().strip()
        rc = kill_during(delivery, stage, rng)
        outcomes.append(rc)
        now = (releases / "CURRENT").read_text().strip()
        # killed before the CURRENT switch: unchanged; after it: a new, whole release
        if now != cur:
            assert stage == "publish"
        assert_release_zone_sound(releases, None)
    assert before  # the first good release was there all along
    assert all(rc in (-signal.SIGKILL, 0) for rc in outcomes)
    # and the next run succeeds
    r = subprocess.run(run_cmd(delivery), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert_release_zone_sound(releases, None)


def test_full_disk_during_publish_keeps_last_release(delivery, monkeypatch):
    """A write that fails with ENOSPC while the release is being finished."""
    from etl import config, pipeline, publish as pub
    cfg = config.load(delivery)
    releases = releases_of(delivery)
    before = (releases / "CURRENT").read_text().strip()
    visible_before = {d.name for d in releases.iterdir() if not d.name.startswith(".")}

    real_write = pub.write_parquet

    def full_disk(df, path):
        if Path(path).name == "linkage_quality.parquet":
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(df, path)

    monkeypatch.setattr(pub, "write_parquet", full_disk)
    with pytest.raises(OSError):
        pipeline.run_all(cfg)
    assert (releases / "CURRENT").read_text().strip() == before
    assert {d.name for d in releases.iterdir() if not d.name.startswith(".")} == visible_before
    assert_release_zone_sound(releases, before)
    monkeypatch.setattr(pub, "write_parquet", real_write)
    pipeline.run_all(cfg)
    assert (releases / "CURRENT").read_text().strip() != before
    assert_release_zone_sound(releases, None)


def test_two_runs_at_once(delivery):
    """Two engineers start the same flow on the same output: both finish
    (the second waits for the publish lock) or one refuses clearly; never
    two half-releases."""
    releases = releases_of(delivery)
    procs = [subprocess.Popen(run_cmd(delivery), stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
             for _ in range(2)]
    results = [(p.wait(timeout=600), p.stderr.read()) for p in procs]
    for p in procs:
        p.stderr.close()
    for rc, err in results:
        assert rc == 0 or "another medlink run is publishing" in err, f"exit {rc}: {err[-3000:]}"
        assert "Traceback" not in err
    assert any(rc == 0 for rc, _ in results)
    assert_release_zone_sound(releases, None)
