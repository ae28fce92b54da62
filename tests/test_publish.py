"""publish: atomic release, lock, manifest and verify."""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path
from types import SimpleNamespace

import duckdb
import pandas as pd
import polars as pl
import pytest

from etl.errors import MedlinkError
from etl.publish import current_release, publish, verify
from test_report import make_release


def _cfg(root: Path):
    return SimpleNamespace(releases_dir=root / "releases", delivery="test-delivery",
                           governance={"demo": True}, path=root / "delivery.yaml")


def _summaries(root: Path, stage: Path) -> dict:
    """Ingest + link summaries consistent with the staged doctors (reconcile checks them)."""
    d = pl.read_parquet(stage / "doctors.parquet").with_row_index("i")
    parts = []
    for src, flag in (("admission", "in_admission"), ("training", "in_training")):
        parts.append(d.filter(pl.col(flag)).select(
            pl.lit(src).alias("source"), (pl.lit(src[0]) + pl.col("i").cast(pl.String)).alias("record_id"),
            pl.col("doctor_pid").alias("person_id")))
    cl = root / "clusters.parquet"
    clusters = pl.concat(parts)
    clusters.write_parquet(cl)
    n_adm = clusters.filter(pl.col("source") == "admission").height
    n_trn = clusters.filter(pl.col("source") == "training").height
    rep = root / "report.json"
    rep.write_text(json.dumps({       # the shape etl.linkage writes
        "overall": {"link_rate": 0.97, "f1": 0.99, "seconds": 3.0},
        "link_rates": {"admission->training": {
            "linked": 960, "records": 1000, "rate": 0.96, "ci95": [0.947, 0.971],
            "by_subgroup": {"imd_quintile": {
                "1": {"records": 120, "linked": 111, "rate": 0.925, "ci95": [0.86, 0.96]},
                "5": {"records": 900, "linked": 883, "rate": 0.981, "ci95": [0.97, 0.99]},
                "9": {"records": 4, "linked": 3, "rate": 0.75, "ci95": [0.3, 0.95]}}}}},
        "pairwise": [{"pair": "admission-training", "link_rate": 0.96, "precision": 0.995}],
    }))
    return {"ingest": [{"source": "admission", "file": "A.csv", "sha256": "ab" * 32, "rows_in": n_adm + 1,
                        "rows_ingested": n_adm, "rows_quarantined": 1},
                       {"source": "training", "file": "B.csv", "sha256": "cd" * 32, "rows_in": n_trn,
                        "rows_ingested": n_trn, "rows_quarantined": 0}],
            "link": {"clusters_path": str(cl), "report_json": str(rep)},
            "protect": {"key_id": "k-test-01", "demo": True}}


def _stage(root: Path, run_id: str, n: int = 600, seed: int = 5) -> Path:
    stage = root / "releases" / f".staging-{run_id}"
    make_release(stage, n=n, seed=seed)
    return stage


def test_publish_and_verify(tmp_path):
    cfg = _cfg(tmp_path)
    stage = _stage(tmp_path, "r1")
    summ = _summaries(tmp_path, stage)
    s = publish(stage, cfg, "r1", summ)
    rel = Path(s["release_dir"])
    assert rel == tmp_path / "releases" / "r1" and not stage.exists()
    assert current_release(cfg.releases_dir) == rel
    assert verify(rel) == []
    m = json.loads((rel / "manifest.json").read_text())
    assert m["release_id"] == "r1" and m["key_id"] == "k-test-01" and m["demo"] is True
    assert m["inputs"][0]["sha256"] == "ab" * 32
    for f in ("doctors.parquet", "events.parquet", "row_accounting.parquet", "linkage_quality.parquet",
              "data_dictionary.md", "data_dictionary.html"):
        assert f in m["files"], f
    assert m["files"]["doctors.parquet"]["rows"] == 600
    assert m["code"]["version"]
    ra = pl.read_parquet(rel / "row_accounting.parquet")
    assert ra.filter(pl.col("source") == "admission")["quarantined"][0] == 1
    adm = ra.filter(pl.col("source") == "admission")
    assert adm["in_clusters"][0] == adm["ingested"][0] == adm["rows_in"][0] - 1
    assert adm["persons_published"][0] == adm["persons"][0]
    lq = pl.read_parquet(rel / "linkage_quality.parquet")
    sub = lq.filter(pl.col("subgroup") == "admission->training/imd_quintile")
    one = dict(sub.filter(pl.col("level") == "1").select("metric", "value").iter_rows())
    assert one["rate"] == pytest.approx(0.925) and one["ci95_low"] == pytest.approx(0.86)
    assert one["records"] == 120 and one["linked"] == 110          # counts rounded to 5
    small = sub.filter(pl.col("level") == "9")                      # base of 4: all suppressed
    assert small.height and small["value"].null_count() == small.height
    assert "seconds" not in lq["metric"].to_list()
    dd = (rel / "data_dictionary.md").read_text()
    assert "school_type_group" in dd and "Independent" in dd and "Release `r1`" in dd
    # readable by the other engines, enums included
    con = duckdb.connect()
    assert con.execute(f"select count(*) from '{rel}/doctors.parquet' where school_type_group = 'Independent'"
                       ).fetchone()[0] > 0
    assert len(pd.read_parquet(rel / "doctors.parquet")) == 600


def test_tampered_release_fails_verify(tmp_path):
    cfg = _cfg(tmp_path)
    stage = _stage(tmp_path, "r1")
    s = publish(stage, cfg, "r1", _summaries(tmp_path, stage))
    rel = Path(s["release_dir"])
    p = rel / "events.parquet"
    b = bytearray(p.read_bytes())
    b[len(b) // 2] ^= 0xFF
    p.write_bytes(bytes(b))
    problems = verify(rel)
    assert problems and any("events.parquet" in x and "checksum" in x for x in problems)
    (rel / "extra.txt").write_text("x")
    (rel / "data_dictionary.md").unlink()
    problems = verify(rel)
    assert any("extra.txt" in x for x in problems)
    assert any("data_dictionary.md" in x and "missing" in x for x in problems)


def test_failed_rename_leaves_previous_release(tmp_path, monkeypatch):
    cfg = _cfg(tmp_path)
    stage = _stage(tmp_path, "r1")
    summ = _summaries(tmp_path, stage)
    publish(stage, cfg, "r1", summ)
    before = (cfg.releases_dir / "CURRENT").read_text()
    stage2 = _stage(tmp_path, "r2", seed=5)

    def boom(*a, **k):
        raise OSError("disk on fire")
    monkeypatch.setattr(os, "rename", boom)
    with pytest.raises(OSError):
        publish(stage2, cfg, "r2", summ)
    monkeypatch.undo()
    assert (cfg.releases_dir / "CURRENT").read_text() == before
    assert current_release(cfg.releases_dir).name == "r1"
    assert verify(cfg.releases_dir / "r1") == []
    visible = [p.name for p in cfg.releases_dir.iterdir() if not p.name.startswith(".")]
    assert sorted(visible) == ["CURRENT", "r1"]


def test_failed_current_switch_rolls_back(tmp_path, monkeypatch):
    cfg = _cfg(tmp_path)
    stage = _stage(tmp_path, "r1")
    summ = _summaries(tmp_path, stage)
    publish(stage, cfg, "r1", summ)
    stage2 = _stage(tmp_path, "r2", seed=5)
    real_replace = os.replace

    def replace(src, dst, *a, **k):
        if Path(dst).name == "CURRENT":
            raise OSError("no space")
        return real_replace(src, dst, *a, **k)
    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(OSError):
        publish(stage2, cfg, "r2", summ)
    monkeypatch.undo()
    assert current_release(cfg.releases_dir).name == "r1"
    assert not (cfg.releases_dir / "r2").exists() and stage2.exists()
    assert not [p for p in cfg.releases_dir.iterdir() if p.name.startswith(".CURRENT")]


def test_lock_held_gives_clear_error(tmp_path):
    cfg = _cfg(tmp_path)
    stage = _stage(tmp_path, "r1")
    summ = _summaries(tmp_path, stage)
    fd = os.open(cfg.releases_dir / ".lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        with pytest.raises(MedlinkError, match="another medlink run is publishing"):
            publish(stage, cfg, "r1", summ, lock_timeout=0.3)
    finally:
        os.close(fd)
    assert stage.exists() and current_release(cfg.releases_dir) is None
    assert not (cfg.releases_dir / "r1").exists()


def test_release_never_overwritten(tmp_path):
    cfg = _cfg(tmp_path)
    stage = _stage(tmp_path, "r1")
    summ = _summaries(tmp_path, stage)
    publish(stage, cfg, "r1", summ)
    with pytest.raises(MedlinkError, match="already exists"):
        publish(_stage(tmp_path, "r1", seed=5), cfg, "r1", summ)


def test_publish_of_a_run_that_already_published_finishes_it(tmp_path):
    """A resumed run whose release went live before it died (its staging directory became
    the release): publish completes it (CURRENT) instead of failing, and a newer current
    release is left current."""
    cfg = _cfg(tmp_path)
    stage = _stage(tmp_path, "r1")
    summ = _summaries(tmp_path, stage)
    first = publish(stage, cfg, "r1", summ)
    (cfg.releases_dir / "CURRENT").write_text("r0\n")       # died before CURRENT was switched
    again = publish(stage, cfg, "r1", summ)
    assert again["already_published"] and again["rows"] == first["rows"]
    assert current_release(cfg.releases_dir) == cfg.releases_dir / "r1"
    (cfg.releases_dir / "r2").mkdir()
    (cfg.releases_dir / "CURRENT").write_text("r2\n")       # a newer release went live since
    publish(stage, cfg, "r1", summ)
    assert current_release(cfg.releases_dir) == cfg.releases_dir / "r2"


def test_current_release_missing(tmp_path):
    assert current_release(tmp_path) is None
    (tmp_path / "CURRENT").write_text("gone\n")
    assert current_release(tmp_path) is None
