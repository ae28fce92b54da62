"""protect() end to end on realistic synthetic assembled tables: the allow-list,
the leak scanner (clean, and each identifier kind planted in turn), k and l,
the report's evidence, and the release pseudonyms."""

from __future__ import annotations

import hashlib
import hmac
import json
import shutil
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import polars as pl
import pytest

from etl.errors import GovernanceError
from etl.governance import load_key, load_rules, protect, scan_release
from etl.governance.scanner import nhs_check_ok
from etl.governance.synthetic import make_assembled

N = 4000
KEY_HEX = "5e" * 32


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("gov")
    doctors, events, vocab = make_assembled(N, seed=2026)
    src = root / "assembled"
    src.mkdir()
    doctors.write_parquet(src / "doctors.parquet")
    events.write_parquet(src / "events.parquet")
    rules = load_rules("profile_a")
    mp = pytest.MonkeyPatch()
    mp.setenv("MEDLINK_KEY", KEY_HEX)
    key = load_key()
    mp.undo()
    restricted = root / "restricted"
    s1 = protect(src / "doctors.parquet", src / "events.parquet", rules, key, root / "r1", restricted,
                 release_id="r1", input_vocab=vocab)
    s2 = protect(src / "doctors.parquet", src / "events.parquet", rules, key, root / "r2", restricted,
                 release_id="r2", previous_release_dir=root / "r1", input_vocab=vocab)
    return {"root": root, "src": src, "doctors": doctors, "events": events, "vocab": vocab, "rules": rules,
            "key": key, "restricted": restricted, "s1": s1, "s2": s2, "r1": root / "r1", "r2": root / "r2"}


def _report(d: Path) -> dict:
    return json.loads((d / "governance_report.json").read_text())


# ---------------------------------------------------------------------- allow-list, scanner

def test_release_columns_within_allow_list_and_scanner_clean(world):
    rules, r1 = world["rules"], world["r1"]
    for t in ("doctors", "events"):
        cols = pl.read_parquet_schema(r1 / f"{t}.parquet")
        assert set(cols) <= set(rules.allowed_columns(t)), set(cols) - set(rules.allowed_columns(t))
    scan = scan_release(r1, world["vocab"], rules=rules, key=world["key"])
    assert scan["clean"] and scan["total"] == 0, {d: t for d, t in scan["totals"].items() if t}
    assert scan["allow_list"]["ok"] and not scan["allow_list"]["unexpected"]
    assert scan["columns_scanned"] == len(rules.allowed_columns("doctors")) + len(rules.allowed_columns("events"))
    # the vocabulary holds surnames that are also release labels (WHITE, LONDON, WALES, NORTH):
    assert {"WHITE", "LONDON"} <= world["vocab"]["names"]
    assert not scan["not_run"]
    rep = _report(r1)
    assert rep["scan"]["total"] == 0 and rep["allow_list"]["ok"] and rep["status"] == "pass"


def test_identifiers_and_sources_dropped_from_events(world):
    ev = pl.read_parquet(world["r1"] / "events.parquet")
    assert ev.columns == ["doctor_pid", "event_type", "event_year", "detail"]
    assert ev.schema["event_year"] == pl.Int16
    held = {"full_registration", "specialist_register", "gp_register"}
    assert not held & set(ev["event_type"].unique().to_list())
    rep = _report(world["r1"])["events"]
    assert rep["rows_in"] == world["events"].height
    assert rep["rows_released"] + sum(rep["held_back_by_type"].values()) == rep["rows_in"]
    # foundation school names never reach the release under profile A
    fs = ev.filter(pl.col("event_type") == "foundation_start")
    assert fs["detail"].null_count() == fs.height


# ---------------------------------------------------------------------- k and l

def test_k_and_l_hold_on_the_release_itself(world):
    rules = world["rules"]
    d = pl.read_parquet(world["r1"] / "doctors.parquet")
    assert d.height == N                                  # nothing lost: suppressed rows are kept
    qis = [rules.output_name("doctors", q) for q in rules.quasi_identifiers]
    sizes = d.group_by(qis).len()
    assert sizes["len"].min() >= rules.k
    sup = d.filter(pl.col("qi_suppressed"))
    assert sup.height == world["s1"]["suppressed_records"] <= rules.max_suppressed_fraction * N
    assert sup.height == 0 or sup.height >= rules.k
    for q in qis:                                         # suppressed rows show the marker (text) or null
        vals = set(sup[q].unique().to_list())
        assert vals <= {"Suppressed", None}, q
    for s, spec in rules.sensitive.items():
        g = d.group_by(qis).agg(pl.col(s).drop_nulls().n_unique().alias("distinct"),
                                pl.col(s).is_in(spec["protect_values"]).any().alias("adverse"))
        bad = g.filter(pl.col("adverse") & (pl.col("distinct") < rules.l))
        assert bad.height == 0, s
    rep = _report(world["r1"])
    assert rep["k_anonymity"]["k_achieved"] == sizes["len"].min() and rep["k_anonymity"]["holds"]
    assert rep["l_diversity"]["holds"]


def test_report_shows_class_sizes_and_suppression_by_subgroup(world):
    rep = _report(world["r1"])
    ka = rep["k_anonymity"]
    hist = ka["class_sizes"]["histogram"]
    assert [b["bin"] for b in hist] == ["1", "2-4", "5-9", "10-19", "20-49", "50-99", "100-499", "500+"]
    assert sum(b["records"] for b in hist) == N and sum(b["records"] for b in hist[:3]) == 0
    subs = rep["subgroups"]
    assert set(subs) >= {"overall", "sex", "ethnicity", "imd_quintile", "school_type"}
    for name in ("sex", "ethnicity", "imd_quintile", "school_type"):
        assert sum(g["records"] for g in subs[name]) == N
        assert sum(g["suppressed"] for g in subs[name]) == ka["suppressed_records"]
    assert ka["escalation_steps"] and all(s["violating_after"] <= s["violating_before"] for s in ka["escalation_steps"])
    html = (world["r1"] / "governance_report.html").read_text()
    for text in ("Class-size distribution", "by subgroup", "<svg", "Motivated-intruder test", "Leak scanner",
                 "Field register", "Key and pseudonyms"):
        assert text in html
    it = rep["intruder"]
    assert it["run"] and it["max_reidentification_rate"] <= 1 / world["rules"].k and it["within_1_over_k"]
    assert it["exact"]["min_candidates"] >= world["rules"].k


def test_uncovered_field_stops_the_run(world, tmp_path):
    d = world["doctors"].with_columns(pl.lit("x").alias("shoe_size"))
    d.write_parquet(tmp_path / "d.parquet")
    with pytest.raises(GovernanceError, match=r"column shoe_size of the doctors table is not covered"):
        protect(tmp_path / "d.parquet", world["src"] / "events.parquet", world["rules"], world["key"],
                tmp_path / "stage", tmp_path / "restricted", release_id="x")
    assert not (tmp_path / "stage" / "doctors.parquet").exists()


# ---------------------------------------------------------------------- pseudonyms

def test_pseudonyms_stable_within_release_and_differ_between_releases(world):
    cw = pl.read_parquet(world["restricted"] / "crosswalk.parquet")
    assert cw.columns == ["source", "record_id", "person_id", "person_key", "release_id", "doctor_pid"]
    for rel in ("r1", "r2"):
        d = pl.read_parquet(world[rel] / "doctors.parquet")
        e = pl.read_parquet(world[rel] / "events.parquet")
        assert d["doctor_pid"].n_unique() == d.height
        m = cw.filter(pl.col("release_id") == rel)
        # one pseudonym per person in this release, used by both tables
        assert m.group_by("person_id").agg(pl.col("doctor_pid").n_unique())["doctor_pid"].max() == 1
        assert set(e["doctor_pid"].unique().to_list()) <= set(d["doctor_pid"].to_list())
        truth = world["events"].join(m.select("person_id", "doctor_pid").unique(), on="person_id")
        assert truth.height == world["events"].height
    p1 = set(pl.read_parquet(world["r1"] / "doctors.parquet")["doctor_pid"].to_list())
    p2 = set(pl.read_parquet(world["r2"] / "doctors.parquet")["doctor_pid"].to_list())
    assert not p1 & p2
    rep2 = _report(world["r2"])
    assert rep2["pseudonyms"]["overlap_with_previous_release"] == 0
    # person keys are stable across releases (same key), pseudonyms are not
    keys = cw.group_by("person_id").agg(pl.col("person_key").n_unique(), pl.col("doctor_pid").n_unique())
    assert keys["person_key"].max() == 1 and keys["doctor_pid"].min() == 2


def test_rerun_of_a_release_reuses_its_pseudonyms(world, tmp_path):
    restricted = tmp_path / "restricted"
    shutil.copytree(world["restricted"], restricted)
    s = protect(world["src"] / "doctors.parquet", world["src"] / "events.parquet", world["rules"], world["key"],
                tmp_path / "r1again", restricted, release_id="r1", input_vocab=world["vocab"])
    a = pl.read_parquet(world["r1"] / "doctors.parquet").select("doctor_pid").sort("doctor_pid")
    b = pl.read_parquet(tmp_path / "r1again" / "doctors.parquet").select("doctor_pid").sort("doctor_pid")
    assert a.equals(b) and s["crosswalk_rows"] == pl.read_parquet(world["restricted"] / "crosswalk.parquet").height


def test_pseudonyms_are_no_digest_of_any_identifier(world):
    by = world["vocab"]["_by_person"]
    pids = set(pl.read_parquet(world["r1"] / "doctors.parquet")["doctor_pid"].to_list())
    assert all(len(p) == 32 and int(p, 16) >= 0 for p in pids)
    key = bytes.fromhex(KEY_HEX)
    ids = by["person_id"] + by["ucas"] + by["gmc"] + world["events"]["record_id"].unique().to_list()
    cw = pl.read_parquet(world["restricted"] / "crosswalk.parquet")
    for v in ids + cw["person_key"].unique().to_list():
        for dom in ("", "person|", "gmc|", "ucas|"):
            b = (dom + v).encode()
            for dig in (hashlib.sha256(b).hexdigest(), hmac.new(key, b, hashlib.sha256).hexdigest(),
                        hashlib.md5(b).hexdigest(), hashlib.sha1(b).hexdigest()):
                assert dig[:32] not in pids
    # and no pseudonym is the person key (restricted) or an identifier
    assert not pids & set(cw["person_key"].to_list()) and not pids & set(ids)


def _sweep(args) -> int:
    prefixes, pid_bytes = args
    sha = hashlib.sha256
    tails = [b"%03d" % i for i in range(1000)]
    hits = 0
    for a in prefixes:
        for t in tails:
            if sha(a + t).digest()[:16] in pid_bytes:
                hits += 1
    return hits


def test_sha256_of_every_gmc_number_recovers_no_pseudonym(world):
    """All 10,000,000 7-digit GMC numbers, unkeyed SHA-256: no digest (or its
    128-bit prefix, the pseudonym's length) equals a release pseudonym."""
    pids = set(pl.read_parquet(world["r1"] / "doctors.parquet")["doctor_pid"].to_list())
    pids |= set(pl.read_parquet(world["r2"] / "doctors.parquet")["doctor_pid"].to_list())
    pid_bytes = frozenset(bytes.fromhex(p) for p in pids)
    heads = [b"%04d" % i for i in range(10_000)]
    # sanity: the sweep does find a planted one
    planted = frozenset(pid_bytes | {hashlib.sha256(b"1234567").digest()[:16]})
    assert _sweep(([b"1234"], planted)) == 1
    with ProcessPoolExecutor(max_workers=2) as ex:
        hits = sum(ex.map(_sweep, [(heads[:5000], pid_bytes), (heads[5000:], pid_bytes)]))
    assert hits == 0


# ---------------------------------------------------------------------- planted identifiers

def _plant(world) -> dict[str, tuple[str, object, str]]:
    """kind -> (input column to plant in, value, detector that must fire)."""
    by = world["vocab"]["_by_person"]
    nhs = "9434765919"
    assert nhs_check_ok(nhs)
    return {
        "name": ("course_outcome", f"Dr {by['forename'][5].title()} {by['surname'][5].title()}", "name"),
        "email": ("course_outcome", by["email"][7], "email"),
        "postcode": ("course_outcome", by["postcode"][3], "postcode"),
        "dob": ("course_outcome", by["dob"][9].strftime("%d/%m/%Y"), "date_of_birth"),
        "gmc": ("course_outcome", by["gmc"][11], "gmc_number"),
        "gmc_float": ("link_probability", float(by["gmc"][12]), "gmc_number"),
        "ucas": ("course_outcome", by["ucas"][13], "ucas_id"),
        "nhs": ("course_outcome", nhs, "nhs_number"),
        "sha256_gmc": ("course_outcome", hashlib.sha256(by["gmc"][14].encode()).hexdigest(), "digest"),
    }


@pytest.mark.parametrize("kind", ["name", "email", "postcode", "dob", "gmc", "gmc_float", "ucas", "nhs",
                                  "sha256_gmc"])
def test_planted_identifier_is_caught_by_scanner(world, tmp_path, kind):
    col, value, detector = _plant(world)[kind]
    rules = world["rules"]
    out = rules.output_name("doctors", col)
    rel = tmp_path / "rel"
    shutil.copytree(world["r1"], rel)
    d = pl.read_parquet(rel / "doctors.parquet")
    d = d.with_columns(pl.when(pl.int_range(pl.len()) == 17).then(pl.lit(value)).otherwise(pl.col(out))
                       .cast(d.schema[out]).alias(out))
    d.write_parquet(rel / "doctors.parquet")
    scan = scan_release(rel, world["vocab"], rules=rules, key=world["key"])
    assert scan["counts"][detector][f"doctors.{out}"] >= 1, scan["totals"]
    assert not scan["clean"]


def test_column_outside_allow_list_fails_the_scan(world, tmp_path):
    rel = tmp_path / "rel"
    shutil.copytree(world["r1"], rel)
    d = pl.read_parquet(rel / "doctors.parquet").with_columns(pl.lit("x").alias("notes"))
    d.write_parquet(rel / "doctors.parquet")
    scan = scan_release(rel, world["vocab"], rules=world["rules"])
    assert scan["allow_list"]["unexpected"] == ["doctors.notes"] and not scan["clean"] and scan["total"] == 0


@pytest.mark.parametrize("kind", ["name", "email", "postcode", "dob", "gmc", "gmc_float", "ucas", "nhs",
                                  "sha256_gmc"])
def test_planted_identifier_stops_protect(world, tmp_path, kind):
    """An identifier that slips into a kept column upstream stops the release:
    GovernanceError, no release table left in staging, a failure report that
    names detector and column but never the value."""
    col, value, detector = _plant(world)[kind]
    d = world["doctors"]
    d = d.with_columns(pl.when(pl.int_range(pl.len()) == 17).then(pl.lit(value)).otherwise(pl.col(col))
                       .cast(d.schema[col]).alias(col))
    d.write_parquet(tmp_path / "d.parquet")
    stage = tmp_path / "stage"
    with pytest.raises(GovernanceError) as ei:
        protect(tmp_path / "d.parquet", world["src"] / "events.parquet", world["rules"], world["key"], stage,
                tmp_path / "restricted", release_id="leak", input_vocab=world["vocab"])
    msg = str(ei.value)
    out = world["rules"].output_name("doctors", col)
    assert "leak scan stopped the release" in msg and f"{detector} in doctors.{out}" in msg
    assert str(value) not in msg
    assert not (stage / "doctors.parquet").exists() and not (stage / "events.parquet").exists()
    rep = json.loads((stage / "governance_report.json").read_text())
    assert rep["status"] == "fail" and rep["scan"]["counts"][detector][f"doctors.{out}"] >= 1
    for p in stage.iterdir():
        assert str(value) not in p.read_text(errors="ignore")
    assert not (tmp_path / "restricted" / "crosswalk.parquet").exists()


def test_rules_diff_against_previous_release(world, tmp_path):
    assert _report(world["r2"])["rules"]["diff"] == ""           # same rules as r1
    text = (world["rules"].path).read_text().replace("  k: 10\n", "  k: 11\n")
    p = world["rules"].path.parent / f".test_rules_{tmp_path.name}.yaml"
    try:
        p.write_text(text)
        rules = load_rules(p)
        protect(world["src"] / "doctors.parquet", world["src"] / "events.parquet", rules, world["key"],
                tmp_path / "r3", tmp_path / "restricted", release_id="r3", previous_release_dir=world["r2"])
    finally:
        p.unlink(missing_ok=True)
    rep = _report(tmp_path / "r3")
    assert rep["rules"]["previous"]["sha256"] == world["rules"].sha256
    assert "-  k: 10" in rep["rules"]["diff"] and "+  k: 11" in rep["rules"]["diff"]
    assert rep["k_anonymity"]["k_achieved"] >= 11


def test_profile_b_names_school_and_uses_months(world, tmp_path):
    rules = load_rules("profile_b")
    s = protect(world["src"] / "doctors.parquet", world["src"] / "events.parquet", rules, world["key"],
                tmp_path / "b", tmp_path / "restricted", release_id="b1", input_vocab=world["vocab"])
    ev = pl.read_parquet(tmp_path / "b" / "events.parquet")
    assert ev.schema["event_month"] == pl.Date and (ev["event_month"].dt.day() == 1).all()
    d = pl.read_parquet(tmp_path / "b" / "doctors.parquet")
    assert "medical_school" in d.columns and "foundation_school" in d.columns
    assert s["k_achieved"] >= 10 and s["scan_hits"] == 0
