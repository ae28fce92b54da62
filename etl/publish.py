"""Publish a release: finish the staging directory and move it into place atomically.

The protect stage has already written the release tables (`doctors.parquet`,
`events.parquet`, governance report) into `releases/.staging-<run_id>/` and
the report stage its `report/`. `publish` adds

- `row_accounting.parquet`: per source, rows in -> quarantined -> ingested ->
  in clusters -> persons published (from `etl.quality.reconcile` when that is
  available, else built here);
- `linkage_quality.parquet`: every metric in the linkage report (link rates,
  precision/recall/F1 ...) overall and by subgroup, one row per metric;
- `data_dictionary.md` / `.html` (`etl.dictionary`);
- `manifest.json`: release id, delivery, code version and git commit, rules
  file + sha256, key id, demo flag, input files with sha256, and every file of
  the release with sha256, bytes and (Parquet) rows and schema;

then, holding an exclusive lock on `releases/.lock`, fsyncs everything,
renames the staging directory to `releases/<run_id>` (one rename on one
filesystem: the release appears whole or not at all) and points
`releases/CURRENT` at it (temp file + `os.replace`). A failure at any point
leaves the previous release and CURRENT as they were; staging directories
are hidden (`.staging-*`) and never named like a release.

`verify(release_dir)` re-checks a release against its manifest.

Parquet: zstd; coded columns as `pl.Enum` (written as Arrow dictionary
strings, which polars, DuckDB (VARCHAR), pandas (category) and R arrow
(factor) all read); dates as Date. Events are not partitioned: one file of a
few million rows reads in well under a second in every engine, and
partitioning by `event_type` would give readers 11 small files and a hive
column to know about for no gain (predicate pushdown on the sorted
`event_type`/row-group statistics already skips what a filter does not need).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow.parquet as pq

import etl
from etl.errors import MedlinkError
from etl.hashing import sha256_file  # noqa: F401 (verify and tests use it)

MANIFEST = "manifest.json"
CURRENT = "CURRENT"
LOCK = ".lock"
LOCK_TIMEOUT = 30.0
PARQUET_OPTS = dict(compression="zstd", compression_level=3, statistics=True)
SOURCES = ("admission", "training", "registration")


# --------------------------------------------------------------------------- helpers

def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _git_commit() -> str | None:
    from etl.paths import HOME
    try:
        out = subprocess.run(["git", "-C", str(HOME), "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=5)
        if out.returncode != 0:
            return None
        dirty = subprocess.run(["git", "-C", str(HOME), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5)
        return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def _releases_dir(staging: Path, cfg) -> Path:
    rd = getattr(cfg, "releases_dir", None)
    return Path(rd) if rd is not None else Path(staging).parent


def parquet_info(path: Path) -> dict:
    """Row count and schema (name -> Arrow type string) from the footer."""
    meta = pq.read_metadata(path)
    schema = pq.read_schema(path)
    return {"rows": meta.num_rows,
            "schema": {f.name: str(f.type) for f in schema}}


def write_parquet(df: pl.DataFrame, path: Path) -> None:
    df.write_parquet(path, **PARQUET_OPTS)


def current_release(releases_dir: Path) -> Path | None:
    """The release CURRENT names, or None (no CURRENT, or it names nothing)."""
    f = Path(releases_dir) / CURRENT
    try:
        name = f.read_text().strip()
    except FileNotFoundError:
        return None
    if not name or "/" in name or name.startswith("."):
        return None
    p = Path(releases_dir) / name
    return p if p.is_dir() else None


def load_rules_file(cfg) -> tuple[dict | None, Path | None]:
    """The governance rules file named by the config, read as plain YAML."""
    gov = getattr(cfg, "governance", None) or {}
    ref = gov.get("rules") if isinstance(gov, dict) else None
    if not ref:
        return None, None
    from etl.paths import RULES_DIR
    p = Path(ref)
    cands = [p]
    base = getattr(cfg, "path", None)
    if base is not None and not p.is_absolute():
        cands.append(Path(base).parent / p)
    cands += [RULES_DIR / p.name, RULES_DIR / f"{ref}.yaml"]
    for c in cands:
        if c.is_file():
            import yaml
            try:
                return (yaml.safe_load(c.read_text()) or {}), c
            except yaml.YAMLError:
                return None, c
    return None, None


# --------------------------------------------------------------------------- row accounting

def _ingest_list(summaries: dict) -> list[dict]:
    ing = summaries.get("ingest") or []
    if isinstance(ing, dict):
        ing = list(ing.values()) if all(isinstance(v, dict) for v in ing.values()) else [ing]
    return [i for i in ing if isinstance(i, dict)]


def row_accounting(summaries: dict, staging: Path) -> pl.DataFrame:
    """Per source: rows_in, quarantined, ingested, in_clusters, persons_published."""
    ingests = _ingest_list(summaries)
    link = summaries.get("link") or {}
    clusters_path = link.get("clusters_path")
    doctors_path = Path(staging) / "doctors.parquet"
    try:
        from etl.quality import reconcile  # type: ignore[attr-defined]
    except ImportError:
        reconcile = None
    if reconcile is not None and clusters_path:
        res = reconcile(ingests, Path(clusters_path), doctors_path)
        if isinstance(res, pl.DataFrame):
            return res
        if isinstance(res, (str, Path)) and Path(res).is_file():
            return pl.read_parquet(res)
        try:
            return pl.DataFrame(res)
        except Exception:  # noqa: BLE001 - unknown return shape: build it here
            pass
    return _row_accounting_local(ingests, clusters_path, doctors_path)


def _row_accounting_local(ingests: list[dict], clusters_path, doctors_path: Path) -> pl.DataFrame:
    by_src = {i.get("source"): i for i in ingests}
    in_clusters: dict[str, int] = {}
    persons_clustered: dict[str, int] = {}
    total_persons = None
    if clusters_path and Path(clusters_path).is_file():
        cl = pl.read_parquet(clusters_path, columns=["source", "record_id", "person_id"])
        g = cl.group_by("source").agg(pl.len().alias("n"), pl.col("person_id").n_unique().alias("p"))
        in_clusters = {r["source"]: r["n"] for r in g.iter_rows(named=True)}
        persons_clustered = {r["source"]: r["p"] for r in g.iter_rows(named=True)}
        total_persons = cl["person_id"].n_unique()
    published: dict[str, int | None] = {}
    total_pub = None
    if doctors_path.is_file():
        cols = pq.read_schema(doctors_path).names
        want = [f"in_{s}" for s in SOURCES if f"in_{s}" in cols]
        d = pl.read_parquet(doctors_path, columns=want or None)
        total_pub = pq.read_metadata(doctors_path).num_rows
        for s in SOURCES:
            published[s] = int(d[f"in_{s}"].sum()) if f"in_{s}" in want else None
    names = [s for s in SOURCES if s in by_src or s in in_clusters] + \
            sorted(k for k in by_src if k not in SOURCES and k)
    rows = []
    for s in names:
        i = by_src.get(s, {})
        rows.append({"source": s, "rows_in": i.get("rows_in"), "quarantined": i.get("rows_quarantined"),
                     "ingested": i.get("rows_ingested"), "in_clusters": in_clusters.get(s),
                     "persons": persons_clustered.get(s), "persons_published": published.get(s)})
    rows.append({"source": "all", "rows_in": _sum(r["rows_in"] for r in rows),
                 "quarantined": _sum(r["quarantined"] for r in rows),
                 "ingested": _sum(r["ingested"] for r in rows),
                 "in_clusters": _sum(r["in_clusters"] for r in rows),
                 "persons": total_persons, "persons_published": total_pub})
    schema = {"source": pl.String, "rows_in": pl.Int64, "quarantined": pl.Int64, "ingested": pl.Int64,
              "in_clusters": pl.Int64, "persons": pl.Int64, "persons_published": pl.Int64}
    return pl.DataFrame(rows, schema=schema, orient="row")


def _sum(vals) -> int | None:
    vals = [v for v in vals if v is not None]
    return sum(vals) if vals else None


# --------------------------------------------------------------------------- linkage quality

LQ_SCHEMA = {"section": pl.String, "subgroup": pl.String, "level": pl.String,
             "metric": pl.String, "value": pl.Float64}


def _load_link_report(link: dict) -> dict:
    for k in ("report_json", "report_path", "report"):
        v = link.get(k)
        if isinstance(v, dict):
            return v
        if isinstance(v, (str, Path)) and str(v).endswith(".json") and Path(v).is_file():
            try:
                return json.loads(Path(v).read_text())
            except (OSError, ValueError):
                pass
    cp = link.get("clusters_path")
    if cp:
        p = Path(cp).parent / "report.json"
        if p.is_file():
            try:
                return json.loads(p.read_text())
            except (OSError, ValueError):
                pass
    return {k: v for k, v in link.items() if not str(k).endswith("_path")}


def _num(v) -> float | None:
    if isinstance(v, bool):
        return float(v)
    if isinstance(v, (int, float)):
        return float(v)
    return None


def _walk(obj: Any, path: list[str], out: list[tuple[list[str], str, float]], depth: int = 0) -> None:
    if depth > 8:
        return
    if isinstance(obj, dict):
        for k, v in obj.items():
            n = _num(v)
            if n is not None:
                out.append((path, str(k), n))
            elif (isinstance(v, list) and len(v) == 2 and all(_num(x) is not None for x in v)):
                out.append((path, f"{k}_low", _num(v[0])))        # e.g. ci95: [low, high]
                out.append((path, f"{k}_high", _num(v[1])))
            elif isinstance(v, (dict, list)):
                _walk(v, path + [str(k)], out, depth + 1)
    elif isinstance(obj, list):
        for i, item in enumerate(obj):
            if isinstance(item, dict):
                labels = [f"{v}" for k, v in item.items() if isinstance(v, str)]
                _walk({k: v for k, v in item.items() if not isinstance(v, str)},
                      path + ([":".join(labels)] if labels else [str(i)]), out, depth + 1)


def linkage_quality(summaries: dict, rules: dict | None = None) -> pl.DataFrame:
    """Flatten the linkage report into (section, subgroup, level, metric, value).

    `section` is the first key on the path (e.g. `by_subgroup`, `overall`),
    `level` the last, `subgroup` whatever lies between (e.g. `imd_quintile`).
    Paths that only hold a section give subgroup/level "all".
    """
    rep = _load_link_report(summaries.get("link") or {})
    out: list[tuple[list[str], str, float]] = []
    _walk(rep, [], out)
    rows = []
    for path, metric, value in out:
        if metric.endswith("seconds"):
            continue
        section = path[0] if path else "overall"
        rest = [x for x in path[1:] if x not in ("by_subgroup", "subgroups", "by_group")]
        if not rest:
            subgroup, level = "all", "all"
        elif len(rest) == 1:
            subgroup, level = (rest[0].split(":", 1) + ["all"])[:2] if ":" in rest[0] else (rest[0], "all")
        else:
            subgroup, level = "/".join(rest[:-1]), rest[-1]
        rows.append({"section": section, "subgroup": subgroup, "level": level,
                     "metric": metric, "value": value})
    df = pl.DataFrame(rows, schema=LQ_SCHEMA, orient="row") if rows else pl.DataFrame(schema=LQ_SCHEMA)
    return _protect_quality(df, rules)


COUNT_METRICS = {"records", "linked", "n", "k", "count", "tp", "fp", "fn", "tn", "pairs", "links",
                 "persons", "clusters", "matches", "expected_matches"}


def _protect_quality(df: pl.DataFrame, rules) -> pl.DataFrame:
    """Subgroup counts are aggregates leaving the restricted zone: a cell whose
    base (records / n) is below the threshold loses all its metrics, and
    count metrics are rounded to the base (rules `aggregates`, default 10 / 5)."""
    from etl.report import _fallback_params
    thr, base = _fallback_params(rules)
    if df.is_empty():
        return df
    key = ["section", "subgroup", "level"]
    small = (df.filter(pl.col("metric").is_in(["records", "n"]) & (pl.col("value") < thr))
               .select(key).unique())
    df = df.join(small.with_columns(pl.lit(True).alias("_small")), on=key, how="left")
    is_count = pl.col("metric").is_in(list(COUNT_METRICS))
    return (df.with_columns(
                pl.when(pl.col("_small").fill_null(False)).then(None)
                  .when(is_count & (pl.col("value") < thr) & (pl.col("value") != 0)).then(None)
                  .when(is_count).then((pl.col("value") / base).round(0) * base)
                  .otherwise(pl.col("value")).alias("value"))
              .drop("_small"))


# --------------------------------------------------------------------------- manifest

def _release_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and p.name != MANIFEST
                  and not p.name.startswith(".tmp-"))


def file_entries(root: Path) -> dict[str, dict]:
    files = {}
    for p in _release_files(root):
        rel = p.relative_to(root).as_posix()
        e = {"sha256": sha256_file(p), "bytes": p.stat().st_size}
        if p.suffix == ".parquet":
            e.update(parquet_info(p))
        files[rel] = e
    return files


def build_manifest(staging: Path, cfg, run_id: str, summaries: dict) -> dict:
    rules, rules_path = load_rules_file(cfg)
    prot = summaries.get("protect") or {}
    gov = getattr(cfg, "governance", None) or {}
    demo = bool(prot.get("demo", gov.get("demo", False) if isinstance(gov, dict) else False))
    keys = ("source", "file", "sha256", "rows_in", "rows_ingested", "rows_quarantined")
    inputs = [{k: i.get(k) for k in keys} for i in _ingest_list(summaries)]
    extra = {}
    if "delivery_ingest" in summaries:       # incremental: inputs are the linked history
        extra["delivery_inputs"] = [{k: i.get(k) for k in keys}
                                    for i in _ingest_list({"ingest": summaries["delivery_ingest"]})]
        extra["linkage_state"] = summaries.get("linkage_state")
    return {
        "release_id": run_id,
        "delivery": getattr(cfg, "delivery", None) or summaries.get("delivery"),
        "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "code": {"package": "medlink", "version": etl.__version__, "git_commit": _git_commit()},
        "rules": {"name": (rules or {}).get("name") or (rules_path.stem if rules_path else None),
                  "file": rules_path.name if rules_path else None,
                  "sha256": sha256_file(rules_path) if rules_path else None},
        "key_id": prot.get("key_id"),
        "demo": demo,
        "inputs": inputs,
        **extra,
        "files": file_entries(staging),
    }


# --------------------------------------------------------------------------- lock

def _lock(releases_dir: Path, timeout: float):
    from etl.locks import file_lock

    return file_lock(Path(releases_dir) / LOCK, timeout, f"another medlink run is publishing to {releases_dir}; "
                     "try again when it finishes", mode=0o644)


# --------------------------------------------------------------------------- publish

def publish(staging: Path, cfg, run_id: str, summaries: dict, *,
            lock_timeout: float = LOCK_TIMEOUT) -> dict:
    """Finish the staging directory and publish it as releases/<run_id>."""
    staging = Path(staging)
    releases = _releases_dir(staging, cfg)
    published = releases / run_id / MANIFEST
    if published.is_file():
        done = json.loads(published.read_text())
        if done.get("release_id") == run_id and _same_tables(staging, done):
            # this run published before it died, before its orchestrator recorded so: finish,
            # never redo; a staging directory the resumed run rebuilt with the same data is dropped
            out = _finish_published(releases, run_id, done, lock_timeout)
            if staging.is_dir():
                shutil.rmtree(staging)
            return out
    if not staging.is_dir():
        raise MedlinkError(f"no staging directory {staging} to publish (did protect run?)")
    if staging.parent.resolve() != releases.resolve():
        raise MedlinkError(f"staging directory {staging} is not inside {releases}")
    if not run_id or "/" in run_id or run_id.startswith(".") or run_id == CURRENT:
        raise MedlinkError(f"'{run_id}' cannot name a release")
    final = releases / run_id
    if final.exists():
        raise MedlinkError(f"release {final} already exists; a release is never overwritten")

    rules, _ = load_rules_file(cfg)
    write_parquet(row_accounting(summaries, staging), staging / "row_accounting.parquet")
    write_parquet(linkage_quality(summaries, rules), staging / "linkage_quality.parquet")
    from etl.dictionary import write_dictionary
    write_dictionary(staging, rules, release_id=run_id)

    manifest = build_manifest(staging, cfg, run_id, summaries)
    tmp = staging / f".tmp-{MANIFEST}"
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=False, default=str))
    os.replace(tmp, staging / MANIFEST)

    for p in staging.rglob("*"):
        if p.is_file():
            _fsync_file(p)
    for d in sorted({p.parent for p in staging.rglob("*")} | {staging}, key=lambda x: -len(x.parts)):
        fsync_dir(d)

    with _lock(releases, lock_timeout):
        if final.exists():
            raise MedlinkError(f"release {final} already exists; a release is never overwritten")
        os.rename(staging, final)
        try:
            fsync_dir(releases)
            _point_current(releases, run_id)
        except BaseException:
            # CURRENT was not switched: take the release back out of sight
            try:
                os.rename(final, staging)
            except OSError:
                pass
            try:
                (releases / f".CURRENT.tmp-{run_id}").unlink(missing_ok=True)
            except OSError:
                pass
            raise

    rows = {k: v["rows"] for k, v in manifest["files"].items() if "rows" in v}
    return {"release_dir": str(final), "release_id": run_id,
            "files": len(manifest["files"]) + 1, "rows": rows}


def write_text_durable(path: Path, text: str, tmp: Path) -> None:
    """`text` into `path` all at once: written to `tmp` (same directory), fsynced, renamed
    over `path`, the directory fsynced; a crash leaves the old file or the new one."""
    with open(tmp, "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def _point_current(releases: Path, run_id: str) -> None:
    """CURRENT names `run_id` (callers hold the releases lock)."""
    write_text_durable(releases / CURRENT, run_id + "\n", releases / f".CURRENT.tmp-{run_id}")


def _same_tables(staging: Path, manifest: dict) -> bool:
    """No staging directory (it became the release), or one whose Parquet tables are
    byte for byte the published release's (a resumed run rebuilt it from the same inputs;
    reports and Data Docs carry times, so only the tables are compared)."""
    if not staging.is_dir():
        return True
    files = manifest.get("files", {})
    tables = list(staging.glob("*.parquet"))
    return bool(tables) and all(files.get(p.name, {}).get("sha256") == sha256_file(p) for p in tables)


def _finish_published(releases: Path, run_id: str, manifest: dict, lock_timeout: float) -> dict:
    """A resumed run whose release is already in place (renamed there whole, so complete):
    point CURRENT at it unless a newer release is current (run ids sort by time), and
    return the summary publish would have returned."""
    final = releases / run_id
    with _lock(releases, lock_timeout):
        try:
            current = (releases / CURRENT).read_text().strip()
        except OSError:
            current = ""
        if current < run_id:
            _point_current(releases, run_id)
    rows = {k: v["rows"] for k, v in manifest["files"].items() if "rows" in v}
    return {"release_dir": str(final), "release_id": run_id, "files": len(manifest["files"]) + 1,
            "rows": rows, "already_published": True}


# --------------------------------------------------------------------------- verify

def verify(release_dir: Path) -> list[str]:
    """Problems with a release against its manifest; [] means it is intact."""
    root = Path(release_dir)
    mpath = root / MANIFEST
    if not mpath.is_file():
        return [f"{mpath}: no manifest"]
    try:
        manifest = json.loads(mpath.read_text())
        files = manifest["files"]
    except (ValueError, KeyError, TypeError):
        return [f"{mpath}: manifest is not valid JSON with a 'files' map"]
    problems = []
    on_disk = {p.relative_to(root).as_posix() for p in _release_files(root)}
    for rel in sorted(set(files) - on_disk):
        problems.append(f"{rel}: missing (listed in the manifest)")
    for rel in sorted(on_disk - set(files)):
        problems.append(f"{rel}: extra file not in the manifest")
    for rel in sorted(set(files) & on_disk):
        e, p = files[rel], root / rel
        if p.stat().st_size != e.get("bytes"):
            problems.append(f"{rel}: size {p.stat().st_size} bytes, manifest says {e.get('bytes')}")
        if sha256_file(p) != e.get("sha256"):
            problems.append(f"{rel}: checksum mismatch (sha256 differs from the manifest)")
        if p.suffix == ".parquet":
            try:
                info = parquet_info(p)
            except Exception as ex:  # noqa: BLE001 - any unreadable footer is a problem
                problems.append(f"{rel}: not readable as Parquet ({type(ex).__name__})")
                continue
            if "rows" in e and info["rows"] != e["rows"]:
                problems.append(f"{rel}: {info['rows']} rows, manifest says {e['rows']}")
            if "schema" in e and info["schema"] != e["schema"]:
                problems.append(f"{rel}: schema differs from the manifest")
    return problems
