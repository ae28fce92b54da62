"""protect(): restricted assembled tables -> release tables + governance report.

Steps (each one's evidence goes into the report):

1. coverage: every column of the assembled tables is in the rules, else stop;
2. person keys (HMAC, restricted) and per-release pseudonyms (random tokens,
   reused on a rerun of the same release id);
3. doctors: every field through its treatment; QI set A through k-anonymity
   (escalation + capped local suppression) and l-diversity; the extended SES
   set coarsened towards its target k and reported;
4. events: doctor_pid, the event date at the rules' precision, the detail by
   event type (following the doctor field's achieved level), identifiers and
   source dropped, event types the rules hold back removed (counted);
5. write doctors.parquet and events.parquet into the staging directory;
6. leak scan of every column + schema allow-list; any hit -> the release
   tables are deleted from staging, a failure report is written, and the run
   stops with GovernanceError (nothing is published);
7. motivated-intruder test; crosswalk written to the restricted zone;
8. governance_report.json and .html; a summary of counts (no rows) returned.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import polars as pl

import etl
from etl.errors import GovernanceError
from etl.hashing import sha256_file
from etl.governance.hierarchies import STAR
from etl.governance.intruder import intruder_test
from etl.governance.kanon import anonymise, describe, extended_risk, subgroup_table
from etl.governance.keys import Key, keyed_release_tokens, person_keys, random_tokens
from etl.governance.report import write_report
from etl.governance.rules import Rules
from etl.governance.scanner import scan_release

PARQUET_OPTS = dict(compression="zstd", compression_level=3, statistics=True)
CROSSWALK_COLUMNS = ["source", "record_id", "person_id", "person_key", "release_id", "doctor_pid"]


def git_commit() -> dict:
    root = Path(etl.__file__).resolve().parent.parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                             timeout=5).stdout.strip() or None
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                                    capture_output=True, text=True, timeout=5).stdout.strip()) if sha else None
    except (OSError, subprocess.SubprocessError):
        sha, dirty = None, None
    return {"git_commit": sha, "dirty": dirty}


def _write_parquet(df: pl.DataFrame, path: Path) -> None:
    # per process: two runs at once must not share (and rename away) one temporary file
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    df.write_parquet(tmp, **PARQUET_OPTS)
    tmp.replace(path)


def check_coverage(df: pl.DataFrame, rules: Rules, table: str, file: Path) -> None:
    fields = rules.tables[table].fields
    for c in df.columns:
        if c not in fields:
            raise GovernanceError(f"column {c} of the {table} table is not covered by the rules "
                                  f"({rules.path.name} tables.{table}.fields); add it with a class and treatment",
                                  file=str(file))


# ---------------------------------------------------------------------- pseudonyms

def _pseudonyms(person_ids: list[str], rules: Rules, key: Key, release_id: str,
                restricted_dir: Path) -> tuple[pl.DataFrame, dict]:
    """person_id -> person_key, doctor_pid; reuse tokens of an earlier run of this release."""
    pkeys = person_keys(key, person_ids)
    cw_path = restricted_dir / "crosswalk.parquet"
    reuse: dict[str, str] = {}
    existing: set[str] = set()
    if cw_path.exists():
        cw = pl.read_parquet(cw_path, columns=["person_id", "release_id", "doctor_pid"])
        existing = set(cw.get_column("doctor_pid").drop_nulls().to_list())
        same = cw.filter(pl.col("release_id") == release_id).unique("person_id")
        reuse = dict(zip(same["person_id"].to_list(), same["doctor_pid"].to_list()))
    method = rules.pseudonym["method"]
    nbytes = rules.pseudonym["token_bytes"]
    if method == "keyed_release_hmac":
        tokens = keyed_release_tokens(key, release_id, pkeys, nbytes)
        reused = 0
    else:
        todo = [p for p in person_ids if p not in reuse]
        fresh = iter(random_tokens(len(todo), nbytes, avoid=existing))
        tokens = [reuse[p] if p in reuse else next(fresh) for p in person_ids]
        reused = len(person_ids) - len(todo)
    m = pl.DataFrame({"person_id": person_ids, "person_key": pkeys, rules.pseudonym_output: tokens})
    if m.get_column(rules.pseudonym_output).n_unique() != m.height:
        raise GovernanceError("pseudonym collision; rerun")
    info = {"method": method, "token_bits": nbytes * 8, "persons": m.height, "reused_from_earlier_run": reused,
            "overlap_with_earlier_releases": len(set(tokens) & existing) - reused if method != "keyed_release_hmac"
            else None,
            "derived_from_identifiers": False if method == "random_token" else "keyed (HMAC of the person key under a per-release key)"}
    return m, info


def _write_crosswalk(events: pl.DataFrame, mapping: pl.DataFrame, rules: Rules, release_id: str,
                     restricted_dir: Path) -> dict:
    pid = rules.pseudonym_output
    recs = (events.select("source", "record_id", "person_id").unique()
            if {"source", "record_id"} <= set(events.columns) else
            pl.DataFrame(schema={"source": pl.String, "record_id": pl.String, "person_id": pl.String}))
    no_events = mapping.join(recs.select("person_id").unique(), on="person_id", how="anti")
    rows = pl.concat([
        recs.join(mapping, on="person_id", how="inner"),
        no_events.with_columns(pl.lit(None, dtype=pl.String).alias("source"),
                               pl.lit(None, dtype=pl.String).alias("record_id")),
    ], how="diagonal").with_columns(pl.lit(release_id).alias("release_id"))
    rows = rows.select([pl.col(c).cast(pl.String) for c in ("source", "record_id", "person_id", "person_key",
                                                             "release_id")] + [pl.col(pid).alias("doctor_pid")])
    restricted_dir.mkdir(parents=True, exist_ok=True)
    path = restricted_dir / "crosswalk.parquet"
    from etl.locks import file_lock

    # read, add this release's rows, write back: one run at a time, or two concurrent
    # runs would each drop the other's rows (and raced on one temporary file)
    with file_lock(restricted_dir / ".crosswalk.lock", 600,
                   "another medlink run is writing the restricted crosswalk; try again when it finishes",
                   file=str(path)):
        if path.exists():
            old = pl.read_parquet(path).filter(pl.col("release_id") != release_id)
            rows = pl.concat([old, rows], how="vertical_relaxed")
        _write_parquet(rows, path)
    return {"path": str(path), "rows": rows.height, "releases": rows.get_column("release_id").n_unique()}


# ---------------------------------------------------------------------- tables

def _release_doctors(d: pl.DataFrame, rules: Rules, kres, ext_levels: dict[str, int],
                     mapping: pl.DataFrame) -> pl.DataFrame:
    pid = rules.pseudonym_output
    cols = []
    qset = set(kres.values.columns)
    for name, f in rules.tables["doctors"].fields.items():
        if not f.released or name not in d.columns:
            continue
        if f.treatment == "pseudonymise":
            continue
        out = f.output or name
        if name in qset and f.treatment == "generalise":
            cols.append(kres.values.get_column(name).alias(out))
        elif name in qset:   # a kept QI keeps its type; suppressed -> null (and the flag column)
            cols.append(pl.select(pl.when(kres.suppressed).then(None).otherwise(d.get_column(name)))
                        .to_series().alias(out))
        elif f.treatment == "generalise":
            lv = ext_levels.get(name, 0)
            cols.append(rules.hierarchies[f.hierarchy].apply(d, name, lv).alias(out))
        else:
            cols.append(d.get_column(name).alias(out))
    rel = pl.DataFrame([mapping.get_column(pid)] + cols)
    rel = rel.with_columns(kres.suppressed.alias(rules.flag_column))
    order = [c for c in rules.allowed_columns("doctors") if c in rel.columns]
    return rel.select(order)


def _release_events(e: pl.DataFrame, d: pl.DataFrame, rules: Rules, kres, mapping: pl.DataFrame) -> tuple[pl.DataFrame, dict]:
    tr = rules.tables["events"]
    pid = rules.pseudonym_output
    etf = tr.event_type_field
    types = set(e.get_column(etf).unique().drop_nulls().to_list()) if etf else set()
    unknown = types - set(tr.event_types)
    if unknown:
        raise GovernanceError(f"{len(unknown)} event type(s) in the events table are not declared in "
                              f"{rules.path.name} tables.events.event_types", key="tables.events.event_types")
    by_type_in = dict(e.group_by(etf).len().iter_rows()) if etf else {}
    held = [t for t, r in tr.event_types.items() if not r.release]
    e = e.filter(~pl.col(etf).is_in(held)) if etf else e
    e = e.join(mapping.select("person_id", pid), on="person_id", how="left")
    if e.get_column(pid).null_count():
        raise GovernanceError(f"{e.get_column(pid).null_count()} event rows belong to no person of the doctors table")
    cols = []
    for name, f in tr.fields.items():
        if not f.released or name not in e.columns:
            continue
        out = f.output or name
        if f.treatment == "pseudonymise":
            continue
        if f.per_event_type:
            cols.append(_event_detail(e, name, rules, kres, d).alias(out))
        elif f.treatment == "generalise":
            cols.append(rules.hierarchies[f.hierarchy].apply(e, name, 0).alias(out))
        else:
            cols.append(e.get_column(name).alias(out))
    rel = pl.DataFrame([e.get_column(pid)] + cols)
    order = [c for c in rules.allowed_columns("events") if c in rel.columns]
    rel = rel.select(order)
    sort_cols = [c for c in (pid, rules.output_name("events", "event_date") if "event_date" in tr.fields else None,
                             etf) if c and c in rel.columns]
    # the remaining columns break ties (one doctor, year and type with two details): the
    # assembled events come in no fixed order, so without them two runs on the same input
    # could order those rows differently (322 k such groups at 1M doctors)
    rel = rel.sort(sort_cols + [c for c in rel.columns if c not in sort_cols])
    info = {"rows_in": sum(by_type_in.values()), "rows_released": rel.height,
            "held_back_by_type": {t: by_type_in.get(t, 0) for t in held},
            "released_by_type": {t: n for t, n in sorted(by_type_in.items()) if t not in held},
            "detail_treatment": {t: (r.detail if r.detail in ("drop", "keep") else f"{r.detail} {r.target}")
                                 for t, r in tr.event_types.items() if r.release}}
    return rel, info


def _event_detail(e: pl.DataFrame, col: str, rules: Rules, kres, d: pl.DataFrame) -> pl.Series:
    tr = rules.tables["events"]
    etf = tr.event_type_field
    out = pl.Series(col, [None] * e.height, dtype=pl.String)
    sup = pl.DataFrame({"person_id": d.get_column("person_id"), "__sup": kres.suppressed})
    e2 = e.join(sup, on="person_id", how="left")
    for t, r in tr.event_types.items():
        if not r.release or r.detail == "drop":
            continue
        mask = (e2.get_column(etf) == t).fill_null(False)
        if not mask.any():
            continue
        sub = e2.filter(mask)
        if r.detail == "keep":
            vals = sub.get_column(col).cast(pl.String)
        elif r.detail == "hierarchy":
            vals = rules.hierarchies[r.target].apply(sub, col, 0)
        else:  # follows a doctors field: same hierarchy, same achieved level, suppressed alike
            fr = rules.field("doctors", r.target)
            lv = kres.levels.get(r.target, 0)
            vals = rules.hierarchies[fr.hierarchy].apply(sub, col, lv)
            if r.target in kres.levels:
                vals = pl.select(pl.when(sub.get_column("__sup").fill_null(False)).then(pl.lit(rules.marker))
                                 .otherwise(vals)).to_series()
        idx = mask.arg_true()
        out = out.scatter(idx, vals.cast(pl.String))
    return out


# ---------------------------------------------------------------------- entry point

def protect(doctors_path: str | Path, events_path: str | Path, rules: Rules, key: Key,
            staging_dir: str | Path, restricted_dir: str | Path, *, release_id: str,
            previous_release_dir: str | Path | None = None, input_vocab: dict | None = None,
            input_checksums: dict[str, str] | None = None) -> dict[str, Any]:
    """Build the release tables and the governance report in `staging_dir`.

    Returns a JSON-serialisable summary (counts, paths, hashes; never rows or
    the key). Raises GovernanceError, leaving no release table behind, when a
    rule cannot be met or the leak scan finds anything.
    """
    t0 = time.perf_counter()
    doctors_path, events_path = Path(doctors_path), Path(events_path)
    staging, restricted = Path(staging_dir), Path(restricted_dir)
    staging.mkdir(parents=True, exist_ok=True)
    d = pl.read_parquet(doctors_path)
    e = pl.read_parquet(events_path) if events_path.exists() else None
    check_coverage(d, rules, "doctors", doctors_path)
    if e is not None:
        if "events" not in rules.tables:
            raise GovernanceError("the rules have no events table", file=rules.path.name, key="tables.events")
        check_coverage(e, rules, "events", events_path)
    pf = rules.pseudonym_field
    if pf not in d.columns:
        raise GovernanceError(f"the doctors table has no {pf} column", file=str(doctors_path))
    if d.get_column(pf).n_unique() != d.height or d.get_column(pf).null_count():
        raise GovernanceError(f"{pf} is not a unique non-null key of the doctors table", file=str(doctors_path))
    timings = {}

    # pseudonyms
    mapping, pinfo = _pseudonyms(d.get_column(pf).cast(pl.String).to_list(), rules, key, release_id, restricted)
    timings["pseudonyms"] = round(time.perf_counter() - t0, 3)

    # doctors: k-anonymity, l-diversity, extended risk
    t1 = time.perf_counter()
    kres = anonymise(d, rules)
    ext, ext_levels = extended_risk(d, rules, kres)
    rel_d = _release_doctors(d, rules, kres, ext_levels, mapping)
    timings["anonymise"] = round(time.perf_counter() - t1, 3)

    # events
    if e is not None:
        rel_e, einfo = _release_events(e, d, rules, kres, mapping)
    else:
        rel_e, einfo = None, {"rows_in": 0, "rows_released": 0, "note": "no events table"}

    for name in ("doctors.parquet", "events.parquet"):
        (staging / name).unlink(missing_ok=True)
    _write_parquet(rel_d, staging / "doctors.parquet")
    if rel_e is not None:
        _write_parquet(rel_e, staging / "events.parquet")

    # leak scan
    t2 = time.perf_counter()
    vocab = dict(input_vocab or {})
    if "date_of_birth" in d.columns:
        prev_dobs = vocab.get("dates_of_birth")
        prev_dobs = prev_dobs.to_list() if isinstance(prev_dobs, pl.Series) else (prev_dobs or ())
        vocab["dates_of_birth"] = set(prev_dobs) | set(
            d.get_column("date_of_birth").drop_nulls().unique().to_list())
    extra_ids = [d.get_column(pf).cast(pl.String)]
    if e is not None and "record_id" in e.columns:
        extra_ids.append(e.get_column("record_id").drop_nulls().unique().cast(pl.String))
    scan = scan_release(staging, vocab, rules=rules, key=key, extra_identifiers=pl.concat(extra_ids),
                        restricted_values=mapping.get_column("person_key"),
                        issued_tokens=mapping.get_column(rules.pseudonym_output))
    timings["scan"] = round(time.perf_counter() - t2, 3)

    # consistency of pseudonyms within the release, and against the previous one
    pid = rules.pseudonym_output
    pchecks = {"unique_in_doctors": rel_d.get_column(pid).n_unique() == rel_d.height,
               "events_pids_in_doctors": bool(rel_e is None or rel_e.get_column(pid).is_in(rel_d.get_column(pid).implode()).all())}
    prev = Path(previous_release_dir) if previous_release_dir else None
    if prev and (prev / "doctors.parquet").exists():
        try:
            old = pl.read_parquet(prev / "doctors.parquet", columns=[pid]).get_column(pid)
            pchecks["overlap_with_previous_release"] = int(rel_d.get_column(pid).is_in(old.implode()).sum())
        except (pl.exceptions.ColumnNotFoundError, OSError):
            pchecks["overlap_with_previous_release"] = None
    pinfo.update(pchecks)

    checksums = dict(input_checksums or {})
    checksums.update({f"assembled/{doctors_path.name}": sha256_file(doctors_path)})
    if e is not None:
        checksums[f"assembled/{events_path.name}"] = sha256_file(events_path)

    report: dict[str, Any] = {
        "release_id": release_id,
        "generated_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "demo": key.demo,
        "status": "pass",
        "code": {"package": "medlink", "version": etl.__version__, **git_commit()},
        "key": key.metadata(),
        "rules": _rules_section(rules, prev),
        "inputs": {"checksums": checksums, "doctors_rows": d.height, "events_rows": 0 if e is None else e.height},
        "fields": _field_register(rules, kres, ext_levels, d.columns, None if e is None else e.columns),
        "allow_list": scan["allow_list"],
        "scan": {k: v for k, v in scan.items() if k != "allow_list"},
        "pseudonyms": pinfo,
    }
    failed = not scan["clean"]
    if failed:
        for name in ("doctors.parquet", "events.parquet"):
            (staging / name).unlink(missing_ok=True)
        report["status"] = "fail"
        report["failure"] = _scan_failure(scan)
        write_report(report, staging)
        raise GovernanceError(f"leak scan stopped the release: {report['failure']}; nothing was published "
                              f"(see {staging.name}/governance_report.html)")

    # intruder test (on the release as written)
    t3 = time.perf_counter()
    intr = intruder_test(d, rel_d, rel_e, mapping.select("person_id", pid), rules, kres.levels)
    timings["intruder"] = round(time.perf_counter() - t3, 3)

    cw = _write_crosswalk(e if e is not None else pl.DataFrame({"person_id": []}), mapping, rules, release_id,
                          restricted)

    n = d.height
    report.update({
        "k_anonymity": {
            "k_required": rules.k, "k_achieved": kres.metrics.get("k_min"),
            "quasi_identifiers": kres.values.columns,
            "levels": {q: {"level": lv, "description": describe(rules, q, lv),
                           "released_as": rules.output_name("doctors", q)} for q, lv in kres.levels.items()},
            "escalation_steps": kres.steps,
            "max_suppressed_fraction": rules.max_suppressed_fraction,
            "suppressed_records": int(kres.suppressed.sum()),
            "suppressed_fraction": round(float(kres.suppressed.sum()) / n, 5) if n else 0.0,
            "suppressed_to_reach_k_in_suppressed_class": kres.padded,
            "suppression_method": f"row kept; QI set A values -> '{rules.marker}', {rules.flag_column} = true",
            "recoded_records": int(kres.recoded.sum()),
            "recoded_by_field": kres.recoded_by_field,
            "class_sizes": kres.metrics,
            "holds": (kres.metrics.get("k_min") or 0) >= rules.k,
        },
        "l_diversity": {"l_required": rules.l, "fields": kres.l_results,
                        "holds": all(r["violating_classes"] == 0 for r in kres.l_results.values())},
        "extended_risk": ext,
        "subgroups": subgroup_table(d, rules, kres),
        "events": einfo,
        "intruder": intr,
        "timings_seconds": timings,
    })
    paths = write_report(report, staging)

    summary = {
        "release_id": release_id, "demo": key.demo, "key_id": key.id, "algorithm": key.algorithm,
        "rules": rules.name, "rules_sha256": rules.sha256,
        "doctors": rel_d.height, "events": 0 if rel_e is None else rel_e.height,
        "k_required": rules.k, "k_achieved": kres.metrics.get("k_min"),
        "l_required": rules.l, "l_holds": report["l_diversity"]["holds"],
        "suppressed_records": int(kres.suppressed.sum()), "recoded_records": int(kres.recoded.sum()),
        "scan_hits": scan["total"], "allow_list_ok": scan["allow_list"]["ok"],
        "intruder_max_reidentification_rate": intr.get("max_reidentification_rate"),
        "doctors_path": str(staging / "doctors.parquet"),
        "events_path": str(staging / "events.parquet") if rel_e is not None else None,
        "report_json": str(paths["json"]), "report_html": str(paths["html"]),
        "crosswalk_rows": cw["rows"],
        "seconds": round(time.perf_counter() - t0, 3),
    }
    return summary


def _scan_failure(scan: dict) -> str:
    parts = []
    for det, cols in scan["counts"].items():
        for col, n in cols.items():
            if n:
                parts.append(f"{det} in {col} ({n} rows)")
    if scan["allow_list"]["unexpected"]:
        parts.append(f"columns outside the allow-list: {', '.join(scan['allow_list']['unexpected'])}")
    return "; ".join(parts)


def _field_register(rules: Rules, kres, ext_levels: dict[str, int], doc_cols: list[str],
                    ev_cols: list[str] | None) -> list[dict]:
    out = []
    for tname, t in rules.tables.items():
        present = doc_cols if tname == "doctors" else (ev_cols or [])
        for name, f in t.fields.items():
            lv = kres.levels.get(name) if tname == "doctors" else None
            if lv is None and tname == "doctors":
                lv = ext_levels.get(name)
            h = rules.hierarchies.get(f.hierarchy) if f.hierarchy else None
            out.append({"table": tname, "field": name, "class": f.cls, "treatment": f.treatment,
                        "hierarchy": f.hierarchy or ("per event type" if f.per_event_type else None),
                        "level": lv if h else None,
                        "level_description": h.describe_level(lv or 0) if h else None,
                        "released_as": rules.output_name(tname, name) if f.released else None,
                        "in_qi_set_a": tname == "doctors" and name in rules.quasi_identifiers,
                        "present_in_input": name in present, "why": f.why})
    return out


def _rules_section(rules: Rules, prev: Path | None) -> dict:
    import difflib
    sec = {"name": rules.name, "file": rules.path.name, "version": rules.version, "sha256": rules.sha256,
           "text": rules.text, "previous": None, "diff": None}
    if prev and (prev / "governance_report.json").exists():
        try:
            old = json.loads((prev / "governance_report.json").read_text())["rules"]
            sec["previous"] = {"release_id": prev.name, "name": old.get("name"), "sha256": old.get("sha256")}
            if old.get("sha256") == rules.sha256:
                sec["diff"] = ""
            else:
                sec["diff"] = "".join(difflib.unified_diff(
                    (old.get("text") or "").splitlines(keepends=True), rules.text.splitlines(keepends=True),
                    fromfile=f"{prev.name}/{old.get('file')}", tofile=f"this release/{rules.path.name}"))
        except (OSError, ValueError, KeyError):
            sec["previous"] = {"release_id": prev.name, "error": "previous governance report unreadable"}
    elif prev:
        sec["previous"] = {"release_id": prev.name, "error": "previous release has no governance report"}
    return sec


__all__ = ["protect", "check_coverage", "sha256_file", "STAR"]
