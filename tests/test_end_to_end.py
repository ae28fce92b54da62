"""The whole pipeline on a generated delivery, through the real CLI in a
subprocess: ingest, GX gates, linkage, governance, report, atomic publish.

Checks what a user relies on: the release verifies against its manifest,
every input row is accounted for, nothing identifying reaches the release
zone, a rerun gives the same content, and a failing gate leaves the last
good release untouched.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
import yaml

from etl.synth import generate

N_DOCTORS = 1500


def medlink(*args, env=None, check=True, timeout=600):
    r = subprocess.run([sys.executable, "-m", "etl.cli", *args], capture_output=True, text=True,
                       env={**os.environ, **(env or {})}, timeout=timeout)
    if check and r.returncode != 0:
        raise AssertionError(f"medlink {' '.join(args)} exited {r.returncode}\n{r.stderr[-3000:]}")
    return r


@pytest.fixture(scope="module")
def delivery(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("delivery")
    generate(N_DOCTORS, 7, d)
    return d


@pytest.fixture(scope="module")
def first_run(delivery) -> dict:
    out = delivery / "summary1.json"
    medlink("run", "--no-prefect", "--quiet", "--config", str(delivery / "delivery.yaml"),
            "--json", str(out))
    return json.loads(out.read_text())


def releases_dir(delivery: Path) -> Path:
    cfg = yaml.safe_load((delivery / "delivery.yaml").read_text())
    return (delivery / cfg["output"]["dir"] / "releases").resolve()


def current(delivery: Path) -> Path:
    rd = releases_dir(delivery)
    return rd / (rd / "CURRENT").read_text().strip()


def test_release_verifies_and_has_every_part(delivery, first_run):
    rel = current(delivery)
    assert rel == Path(first_run["publish"]["release_dir"]).resolve()
    for name in ("doctors.parquet", "events.parquet", "linkage_quality.parquet", "row_accounting.parquet",
                 "manifest.json", "data_dictionary.md", "data_dictionary.html",
                 "governance_report.html", "governance_report.json"):
        assert (rel / name).is_file(), name
    assert (rel / "data_docs").is_dir()
    assert (rel / "report").is_dir()
    r = medlink("verify", str(rel))
    assert "manifest OK" in r.stdout


def test_every_row_accounted_for(delivery, first_run):
    rel = current(delivery)
    acc = pl.read_parquet(rel / "row_accounting.parquet")
    ingests = {i["source"]: i for i in first_run["ingest"]}
    truth = pl.read_parquet(delivery / "truth.parquet")
    for source, n in truth.group_by("source").len().iter_rows():
        assert ingests[source]["rows_in"] == n
        assert ingests[source]["rows_in"] == ingests[source]["rows_ingested"] + ingests[source]["rows_quarantined"]
    assert acc.height >= 3
    doctors = pl.read_parquet(rel / "doctors.parquet")
    assert doctors["doctor_pid"].is_unique().all()
    assert doctors.height > 0.9 * N_DOCTORS


NAME_WORDS = ("NAME", "FORENAME")
STRONG_WORDS = ("DOB", "BIRTH", "POSTCODE", "UCAS", "GMC", "EMAIL")


def _identifying_values(delivery: Path) -> tuple[set[str], set[str]]:
    """(names, strong identifiers) as delivered. Strong ones (DOBs,
    postcodes, UCAS/GMC numbers, e-mails) must appear nowhere in the release
    zone; names must never be a cell value of a release table (a surname such
    as White or Cross is also an ordinary word in a report)."""
    names: set[str] = set()
    strong: set[str] = set()
    for f in ("admission.csv", "training.csv", "registration.csv"):
        df = pl.read_csv(delivery / f, infer_schema=False)
        for c in df.columns:
            cu = c.upper()
            vals = {v for v in df[c].drop_nulls().unique().to_list() if len(v) >= 5}
            if any(k in cu for k in STRONG_WORDS):
                strong |= vals
            elif any(k in cu for k in NAME_WORDS):
                names |= {v.upper() for v in vals}
    return names, strong


def test_no_identifier_in_release_zone(delivery, first_run):
    """Every file under releases/ (Parquet decoded, text as is) holds none
    of the delivery's DOBs, postcodes, UCAS or GMC numbers or e-mails, and no
    release cell holds a delivered name."""
    names, strong = _identifying_values(delivery)
    assert len(strong) > 1000 and len(names) > 500
    rel_root = releases_dir(delivery)
    texts, cells = [], set()
    for p in rel_root.rglob("*"):
        if not p.is_file():
            continue
        if p.suffix == ".parquet":
            df = pl.read_parquet(p)
            df = df.cast({c: pl.String for c in df.columns})
            texts.append(df.write_csv())
            for c in df.columns:
                cells |= {v.upper() for v in df[c].drop_nulls().unique().to_list()}
        elif p.suffix in (".json", ".md", ".html", ".csv", ".txt", ""):
            texts.append(p.read_text(errors="ignore"))
    # whole tokens only: a short postcode such as B54AE also occurs inside hex tokens
    tokens = re.split(r"[^A-Z0-9@._/\-]+", "\n".join(texts).upper())
    seen = set(tokens) | {f"{a} {b}" for a, b in zip(tokens, tokens[1:])}
    leaked = [v for v in strong if v.upper() in seen]
    assert not leaked, f"{len(leaked)} identifying values found in the release zone"
    # a surname can also be a category label (White, Black): those are not leaks
    labels = set()
    for ref in (Path(__file__).parents[1] / "schemas" / "reference").glob("*.csv"):
        ref_df = pl.read_csv(ref, infer_schema=False)
        for c in ref_df.columns:
            labels |= {v.upper() for v in ref_df[c].drop_nulls().to_list()}
    assert not ((names - labels) & cells), f"{len((names - labels) & cells)} names are release cell values"


def test_rerun_gives_same_content(delivery, first_run):
    out = delivery / "summary2.json"
    medlink("run", "--no-prefect", "--quiet", "--config", str(delivery / "delivery.yaml"), "--json", str(out))
    second = json.loads(out.read_text())
    a = Path(first_run["publish"]["release_dir"])
    b = Path(second["publish"]["release_dir"])
    assert a != b
    for table in ("doctors.parquet", "events.parquet"):
        da, db = pl.read_parquet(a / table), pl.read_parquet(b / table)
        # release pseudonyms are per release by design; everything else is equal
        assert not set(da["doctor_pid"]) & set(db["doctor_pid"])
        cols = [c for c in da.columns if c != "doctor_pid"]
        assert da.select(cols).sort(cols).equals(db.select(cols).sort(cols))
    assert Path(second["publish"]["release_dir"]).resolve() == current(delivery)


def test_failed_gate_leaves_last_good_release(delivery, first_run, tmp_path):
    """A delivery whose release would break a gate (k raised beyond what
    the data can meet) fails with one line and publishes nothing."""
    before = current(delivery)
    cfg = yaml.safe_load((delivery / "delivery.yaml").read_text())
    rules = yaml.safe_load((Path(__file__).parents[1] / "schemas/rules/profile_a.yaml").read_text())
    rules["k_anonymity"]["k"] = 100000
    rules_path = tmp_path / "impossible.yaml"
    rules_path.write_text(yaml.safe_dump(rules))
    cfg["governance"]["rules"] = str(rules_path)
    for s in cfg["sources"].values():
        s["path"] = str((delivery / s["path"]).resolve())
    cfg["output"]["dir"] = str((delivery / cfg["output"]["dir"]).resolve())
    p = tmp_path / "delivery.yaml"
    p.write_text(yaml.safe_dump(cfg))
    r = medlink("run", "--no-prefect", "--quiet", "--config", str(p), check=False)
    assert r.returncode != 0
    assert "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert current(delivery) == before
    assert medlink("verify", str(before)).returncode == 0


def test_real_key_is_written_nowhere(delivery, tmp_path):
    """A run with a real key (not demo): the key appears in no file under
    the output directory (restricted zone included) and in no console output,
    in any of its usual encodings."""
    import base64
    import secrets
    key = secrets.token_bytes(32)
    cfg = yaml.safe_load((delivery / "delivery.yaml").read_text())
    cfg["governance"]["demo"] = False
    for s in cfg["sources"].values():
        s["path"] = str((delivery / s["path"]).resolve())
    cfg["output"]["dir"] = str(tmp_path / "out")
    p = tmp_path / "delivery.yaml"
    p.write_text(yaml.safe_dump(cfg))
    r = medlink("run", "--no-prefect", "--config", str(p), env={"MEDLINK_KEY": key.hex()})
    forms = [key.hex().encode(), key.hex().upper().encode(), base64.b64encode(key), key]
    blobs = [r.stdout.encode(), r.stderr.encode()]
    blobs += [f.read_bytes() for f in (tmp_path / "out").rglob("*") if f.is_file()]
    assert len(blobs) > 20
    assert not [f for f in forms for b in blobs if f in b]
    # and without any key the run refuses to publish
    cfg["output"]["dir"] = str(tmp_path / "out2")
    p.write_text(yaml.safe_dump(cfg))
    env = {k: v for k, v in os.environ.items() if k != "MEDLINK_KEY"}
    r = subprocess.run([sys.executable, "-m", "etl.cli", "run", "--no-prefect", "--config", str(p)],
                       capture_output=True, text=True, env=env)
    assert r.returncode != 0 and "key" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "out2" / "releases" / "CURRENT").exists()
