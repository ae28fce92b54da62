"""Incremental deliveries through the real CLI (`medlink run --no-prefect` in a subprocess):
a generated history split into yearly deliveries (CSV files as they arrive), each run with
`linkage: {mode: incremental}` into the same output directory.

Checks what a data engineer scheduling yearly deliveries relies on: every release is
published and verifies; the first year's records keep their internal person keys (restricted
state and release crosswalk) unless a listed merge / split moved them; every row of each
delivery is accounted for; merges and splits are counted in the run summary and the printed
output; a run that fails after linking (a release gate) leaves the committed linkage state
exactly as it was, and the next run links onto it; a run killed between publishing its release
and committing its state is rolled forward by the next run."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import shutil

import polars as pl
import pytest
import yaml

from etl.synth import generate

REPO = Path(__file__).resolve().parents[1]
N_DOCTORS = 2000           # the first delivery must hold ~1,000+ doctors for profile_a's k = 10
BOUNDS = [2022, 2024]      # deliveries: <= 2022 (the backlog), 2023-2024, 2025
YEAR_FIELDS = {"admission": ["cycle_year"], "training": ["entry_year"],
               "registration": ["application_year", "graduation_year"]}   # as etl.incremental.split_by_year


def medlink(*args, check=True, timeout=900):
    r = subprocess.run([sys.executable, "-m", "etl.cli", *args], capture_output=True, text=True,
                       env=dict(os.environ), timeout=timeout)
    if check and r.returncode != 0:
        raise AssertionError(f"medlink {' '.join(args)} exited {r.returncode}\n{r.stderr[-3000:]}")
    return r


def _split_csvs(gen: Path) -> list[Path]:
    """One config per yearly delivery, beside the generated one: the generated CSVs split by
    year (native column names, every value kept as text), `linkage.mode: incremental`."""
    cfg = yaml.safe_load((gen / "delivery.yaml").read_text())
    n = len(BOUNDS) + 1
    for i in range(n):
        (gen / f"year{i}").mkdir(exist_ok=True)
    for s, sc in cfg["sources"].items():
        df = pl.read_csv(gen / sc["path"], infer_schema=False)
        native = {c: n_ for n_, c in sc["columns"].items()}
        year = pl.coalesce([pl.col(native[f]).cast(pl.Int32, strict=False) for f in YEAR_FIELDS[s]])
        df = df.with_columns(year.fill_null(-1).alias("__y"))
        for i in range(n):
            lo = -10**9 if i == 0 else BOUNDS[i - 1]
            hi = BOUNDS[i] if i < len(BOUNDS) else 10**9
            part = df.filter((pl.col("__y") > lo) & (pl.col("__y") <= hi)).drop("__y")
            part.write_csv(gen / f"year{i}" / Path(sc["path"]).name)
    paths = []
    for i in range(n):
        c = yaml.safe_load((gen / "delivery.yaml").read_text())
        c["delivery"] = f"{c['delivery']}-part{i}"
        for sc in c["sources"].values():
            sc["path"] = f"year{i}/{Path(sc['path']).name}"
        c["linkage"] = {**(c.get("linkage") or {}), "mode": "incremental", "merge_policy": "apply"}
        p = gen / f"delivery_{i}.yaml"
        p.write_text(yaml.safe_dump(c, sort_keys=False))
        paths.append(p)
    return paths


def _tree_hashes(d: Path) -> dict[str, str]:
    return {p.relative_to(d).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(d.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    gen = tmp_path_factory.mktemp("incremental_run")
    generate(N_DOCTORS, 5, gen)
    configs = _split_csvs(gen)
    out = gen / "out"
    summaries, stdout = [], []
    for i, c in enumerate(configs[:2]):
        j = gen / f"summary_{i}.json"
        r = medlink("run", "--no-prefect", "--quiet", "--config", str(c), "--json", str(j))
        summaries.append(json.loads(j.read_text()))
        stdout.append(r.stdout)
    return {"gen": gen, "configs": configs, "out": out, "summaries": summaries, "stdout": stdout}


def _rows(csv_dir: Path) -> dict[str, int]:
    return {p.stem: pl.read_csv(p, infer_schema=False).height for p in csv_dir.glob("*.csv")}


def test_second_release_published_and_verified(runs):
    s0, s1 = runs["summaries"]
    releases = runs["out"] / "releases"
    assert (releases / "CURRENT").read_text().strip() == s1["run_id"]
    for s in (s0, s1):
        rel = Path(s["publish"]["release_dir"])
        assert rel.is_dir()
        assert "manifest OK" in medlink("verify", str(rel)).stdout
    assert s0["link"]["state"] == "initialised" and s1["link"]["state"] == "incremented"
    # provenance: the manifest names the history it covers, this delivery's own files with
    # their checksums, and the linkage states the release was linked onto and committed
    m1 = json.loads((Path(s1["publish"]["release_dir"]) / "manifest.json").read_text())
    assert {i["file"] for i in m1["inputs"]} == {f"linkage_state/records/{x}" for x in YEAR_FIELDS}
    cfg1 = yaml.safe_load(runs["configs"][1].read_text())
    want = {Path(sc["path"]).name: hashlib.sha256((runs["gen"] / sc["path"]).read_bytes()).hexdigest()
            for sc in cfg1["sources"].values()}
    assert {Path(i["file"]).name: i["sha256"] for i in m1["delivery_inputs"]} == want
    assert sum(i["rows_in"] for i in m1["delivery_inputs"]) == s1["publish"]["delivery_accounting"]["rows_in"]
    st = json.loads((runs["out"] / "restricted" / "linkage_state" / "meta.json").read_text())
    assert m1["linkage_state"]["linked_onto"] == s1["link"]["state_base"] is not None
    assert m1["linkage_state"]["commits"] == s1["publish"]["linkage_state"]["state_id"]
    assert st["runs"] and m1["linkage_state"]["commits"] != m1["linkage_state"]["linked_onto"]
    assert s1["link"]["new_records"] > 0 and s1["link"]["joined_existing"] > 0
    # the second release holds the whole history: more doctors than the first
    d0 = pl.read_parquet(Path(s0["publish"]["release_dir"]) / "doctors.parquet")
    d1 = pl.read_parquet(Path(s1["publish"]["release_dir"]) / "doctors.parquet")
    assert d1.height > d0.height
    # the committed state is the second run's; no candidate or old state is left behind
    state = runs["out"] / "restricted" / "linkage_state"
    cw = pl.read_parquet(state / "crosswalk.parquet")
    assert cw["person_id"].n_unique() == s1["link"]["persons_total"] == d1.height
    assert not (runs["out"] / "restricted" / "runs" / s1["run_id"] / "linkage_state").exists()
    assert not list((runs["out"] / "restricted").glob(".linkage_state.old-*"))


def test_first_year_keys_stable(runs):
    """Internal keys of the first delivery's records are the same after the second, in the
    committed state and in the restricted release crosswalk, except records a listed merge or
    split moved (none expected here; at most 0.1%)."""
    s0, s1 = runs["summaries"]
    before = pl.read_parquet(s0["link"]["clusters_path"]).select("source", "record_id",
                                                                   pl.col("person_id").alias("before"))
    state = runs["out"] / "restricted" / "linkage_state"
    after = pl.read_parquet(state / "crosswalk.parquet").select("source", "record_id", "person_id")
    j = before.join(after, on=["source", "record_id"])
    assert j.height == before.height
    moved = set(j.filter(pl.col("before") != pl.col("person_id"))
                .select(pl.concat_str("source", pl.lit(":"), "record_id")).to_series().to_list())
    rep = json.loads((Path(s1["link"]["clusters_path"]).parent / "incremental_report.json").read_text())
    listed = set()
    for e in rep["merges"]:
        listed |= set(e["records"])
    for e in rep["splits"]:
        for k, recs in e["records"].items():
            if k != e["key"]:
                listed |= set(recs)
    assert moved <= listed
    assert len(moved) <= 0.001 * before.height
    # the release crosswalk (restricted) maps the same record to the same person_id in both releases
    cw = pl.read_parquet(runs["out"] / "restricted" / "crosswalk.parquet").drop_nulls("record_id")
    r0 = cw.filter(pl.col("release_id") == s0["run_id"]).select("source", "record_id", pl.col("person_id").alias("p0"))
    r1 = cw.filter(pl.col("release_id") == s1["run_id"]).select("source", "record_id", pl.col("person_id").alias("p1"))
    jj = r0.join(r1, on=["source", "record_id"])
    assert jj.height == r0.height > 0
    assert jj.filter(pl.col("p0") != pl.col("p1")).height == len(moved)


def test_row_accounting_reconciles(runs):
    """Each delivery: delivered = quarantined + ingested, every ingested record in one person,
    every such record published; the release's own table covers the whole history."""
    gen = runs["gen"]
    for i, s in enumerate(runs["summaries"]):
        delivered = _rows(gen / f"year{i}")
        for ing in s["ingest"]:
            assert ing["rows_in"] == delivered[ing["source"]]
            assert ing["rows_in"] == ing["rows_quarantined"] + ing["rows_ingested"]
        rel = Path(s["publish"]["release_dir"])
        acc = pl.read_parquet(rel / "row_accounting_delivery.parquet")
        assert acc["reconciled"].all()
        by = {r["source"]: r for r in acc.iter_rows(named=True)}
        for ing in s["ingest"]:
            r = by[ing["source"]]
            assert r["rows_in"] == ing["rows_in"] and r["ingested"] == ing["rows_ingested"]
            assert r["in_clusters"] == r["ingested"] == r["records_published"]
        assert by["all"]["rows_in"] == sum(delivered.values())
        da = s["publish"]["delivery_accounting"]
        assert da["reconciled"] and da["rows_in"] == sum(delivered.values())
        assert da["records_published"] == da["in_clusters"] == da["ingested"]
        hist = pl.read_parquet(rel / "row_accounting.parquet")
        assert hist["reconciled"].all()
        n_hist = sum(pl.scan_parquet(p).select(pl.len()).collect().item()
                     for p in s["link"]["records_paths"].values())
        assert hist.filter(pl.col("source") == "all")["in_clusters"].item() == n_hist
    # the history grows by the second delivery's new records
    s0, s1 = runs["summaries"]
    assert sum(1 for _ in s1["link"]["records_paths"]) == 3
    n0 = sum(pl.scan_parquet(p).select(pl.len()).collect().item() for p in s0["link"]["records_paths"].values())
    n1 = sum(pl.scan_parquet(p).select(pl.len()).collect().item() for p in s1["link"]["records_paths"].values())
    assert n1 == n0 + s1["link"]["new_records"]


def test_merges_and_splits_reported_as_counts(runs):
    s1 = runs["summaries"][1]
    for k in ("merges", "splits", "held", "new_records", "joined_existing", "new_persons"):
        assert isinstance(s1["link"][k], int), k
    assert s1["link"]["policy"] == "apply"
    out = runs["stdout"][1]
    assert "incremental (incremented, merge policy apply)" in out
    assert f"merges {s1['link']['merges']:,}" in out and f"splits {s1['link']['splits']:,}" in out
    assert "this delivery:" in out and "reconciled True" in out
    lq = pl.read_parquet(Path(s1["publish"]["release_dir"]) / "linkage_quality.parquet")
    assert {"merges", "splits"} <= set(lq["metric"].to_list())


# medlink whose process dies right after its release is published, before the linkage state is
# committed (os._exit: no cleanup, no finally blocks, as a kill -9 would leave it)
CRASH_AFTER_PUBLISH = """
import os, sys
import etl.incremental as inc
inc.commit_state = lambda *a, **k: os._exit(137)
from etl.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _third_delivery_on_a_copy(runs, tmp_path: Path) -> tuple[Path, Path]:
    """A copy of the shared output directory (after the first two deliveries) and a config
    for the third delivery writing into it, so a test can break things without touching
    the module's history."""
    out = tmp_path / "out"
    shutil.copytree(runs["out"], out)
    cfg = yaml.safe_load(runs["configs"][2].read_text())
    for sc in cfg["sources"].values():
        sc["path"] = str((runs["gen"] / sc["path"]).resolve())
    cfg["output"]["dir"] = str(out)
    c = tmp_path / "delivery_2.yaml"
    c.write_text(yaml.safe_dump(cfg))
    return out, c


def test_crash_between_release_and_state_commit_rolls_forward(runs, tmp_path):
    """The third delivery, killed after its release went live and before its state commit: the
    release is published (CURRENT names it) on a state that was not committed, and a marker in
    the restricted zone names the candidate it was built from. The next run commits that
    candidate first, then links onto it: the crashed delivery's records are already known."""
    out, c = _third_delivery_on_a_copy(runs, tmp_path)
    state, marker = out / "restricted" / "linkage_state", out / "restricted" / ".linkage_state.pending.json"
    before = _tree_hashes(state)
    current = (out / "releases" / "CURRENT").read_text()
    r = subprocess.run([sys.executable, "-c", CRASH_AFTER_PUBLISH, "run", "--no-prefect", "--quiet",
                        "--config", str(c)], capture_output=True, text=True, timeout=900)
    assert r.returncode == 137, r.stderr[-3000:]
    crashed = (out / "releases" / "CURRENT").read_text().strip()
    assert crashed != current.strip()                        # the release went live ...
    assert (out / "releases" / crashed / "manifest.json").exists()
    assert _tree_hashes(state) == before                     # ... its state was never committed
    m = json.loads(marker.read_text())
    assert m["run_id"] == crashed and Path(m["state_dir"]).is_dir()

    j = tmp_path / "summary.json"
    r = medlink("run", "--no-prefect", "--config", str(c), "--json", str(j))
    s = json.loads(j.read_text())
    assert s["link"]["recovered_commit"] == {"run_id": crashed, "release": crashed}
    assert f"committed the state of release {crashed}" in r.stdout + r.stderr
    assert s["link"]["new_records"] == 0 and s["link"]["unchanged_records"] > 0
    assert s["publish"]["delivery_accounting"]["reconciled"]
    assert not marker.exists() and _tree_hashes(state) != before
    # the rerun published on top of the rolled-forward state: same persons as the crashed release
    persons = [pl.read_parquet(out / "releases" / rid / "doctors.parquet").height
               for rid in (crashed, s["publish"]["release_id"])]
    assert persons[0] == persons[1]


def test_prefect_run_killed_after_publishing_is_not_resumed_but_rolled_forward(runs, tmp_path,
                                                                              prefect_server):
    """The same crash in a Prefect flow run: its run marker says "running", so without the
    roll-forward the next flow run would resume it, find its release already published and
    fail on every retry. The next run rolls the state forward first and runs anew."""
    out, c = _third_delivery_on_a_copy(runs, tmp_path)
    env = dict(os.environ, PREFECT_API_URL=prefect_server["url"])
    r = subprocess.run([sys.executable, "-c", CRASH_AFTER_PUBLISH, "run", "--quiet", "--config", str(c)],
                       capture_output=True, text=True, timeout=900, env=env)
    assert r.returncode == 137, r.stderr[-3000:]
    crashed = (out / "releases" / "CURRENT").read_text().strip()
    j = tmp_path / "summary.json"
    r = subprocess.run([sys.executable, "-m", "etl.cli", "run", "--quiet", "--config", str(c), "--json", str(j)],
                       capture_output=True, text=True, timeout=900, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    s = json.loads(j.read_text())
    assert s["recovered_commit"] == {"run_id": crashed, "release": crashed}
    assert s["run_id"] != crashed and not s["resumed"]
    assert s["link"]["new_records"] == 0
    assert (out / "releases" / "CURRENT").read_text().strip() == s["run_id"]
    assert not (out / "restricted" / ".linkage_state.pending.json").exists()


def test_failed_run_after_link_leaves_state_untouched(runs, tmp_path):
    """The third delivery with rules no release can meet: it links (a candidate state in
    the run directory), then the release gate fails. The committed state is byte for byte
    the second run's; the same delivery then runs cleanly onto it."""
    state = runs["out"] / "restricted" / "linkage_state"
    before = _tree_hashes(state)
    current = (runs["out"] / "releases" / "CURRENT").read_text()
    cfg = yaml.safe_load(runs["configs"][2].read_text())
    rules = yaml.safe_load((REPO / "schemas/rules/profile_a.yaml").read_text())
    rules["k_anonymity"]["k"] = 100000
    (tmp_path / "impossible.yaml").write_text(yaml.safe_dump(rules))
    cfg["governance"]["rules"] = str(tmp_path / "impossible.yaml")
    for sc in cfg["sources"].values():
        sc["path"] = str((runs["gen"] / sc["path"]).resolve())
    cfg["output"]["dir"] = str(runs["out"])
    bad = tmp_path / "delivery_bad.yaml"
    bad.write_text(yaml.safe_dump(cfg))
    r = medlink("run", "--no-prefect", "--quiet", "--config", str(bad), check=False)
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert _tree_hashes(state) == before
    assert (runs["out"] / "releases" / "CURRENT").read_text() == current
    # the failed run did link: its candidate is in its run directory, never committed
    cands = [p for p in (runs["out"] / "restricted" / "runs").glob("*/linkage_state") if p.is_dir()]
    assert len(cands) == 1
    # the same delivery, with the real rules, links onto the untouched state
    j = tmp_path / "summary_2.json"
    medlink("run", "--no-prefect", "--quiet", "--config", str(runs["configs"][2]), "--json", str(j))
    s2 = json.loads(j.read_text())
    assert s2["link"]["state"] == "incremented" and s2["link"]["new_records"] > 0
    assert s2["publish"]["delivery_accounting"]["reconciled"]
    assert _tree_hashes(state) != before


@pytest.mark.parametrize("linkage, key", [
    ({"mode": "incremntal"}, "linkage.mode"),
    ({"mode": "incremental", "merge_policy": "merge"}, "linkage.merge_policy"),
    ({"merge_policy": "hold"}, "linkage.merge_policy"),          # only with mode: incremental
])
def test_linkage_mode_config_errors(tmp_path, linkage, key):
    from etl import config as cfgmod
    from etl.errors import ConfigError

    generate(30, 1, tmp_path)
    c = yaml.safe_load((tmp_path / "delivery.yaml").read_text())
    c["linkage"] = linkage
    p = tmp_path / "delivery.yaml"
    p.write_text(yaml.safe_dump(c))
    with pytest.raises(ConfigError) as e:
        cfgmod.load(p)
    msg = str(e.value)
    assert f"[{key}]" in msg and str(p) in msg and "\n" not in msg
    c["linkage"] = {"mode": "incremental", "merge_policy": "hold"}
    p.write_text(yaml.safe_dump(c))
    cfg = cfgmod.load(p)
    assert (cfg.linkage_mode, cfg.merge_policy, cfg.linkage) == ("incremental", "hold", {})
    c["linkage"] = {}
    p.write_text(yaml.safe_dump(c))
    assert cfgmod.load(p).linkage_mode == "full"
