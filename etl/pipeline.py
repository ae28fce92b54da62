"""The stages of a medlink run, as plain functions.

Each stage reads and writes files in the run's restricted directory and
returns a small JSON-serialisable summary: counts, paths, checksums, never
rows. `flows/` wraps each one as a Prefect task; `run_all` chains them
without Prefect (tests, `medlink run --no-prefect`).

    ingest (per source) ─ raw gate ─ link ─ linked gate ─ assemble ─ protect
    ─ release gate ─ report ─ publish

With `linkage.mode: incremental` the link stage links the delivery onto the
linkage state (etl.incremental.link_stage) and returns `records_paths`, the
whole standardised history: every later stage that reads records (linked gate,
assemble, the leak scanner's vocabulary, row accounting) reads those, and
publish commits the run's state only after the release is in place.
"""

from __future__ import annotations

import datetime as dt
import json
import secrets
import time
from pathlib import Path
from typing import Callable

from etl.config import Config
from etl.errors import MedlinkError


def new_run_id() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(3)


def run_dir(cfg: Config, run_id: str) -> Path:
    return cfg.restricted_dir / "runs" / run_id


def staging_dir(cfg: Config, run_id: str) -> Path:
    return cfg.releases_dir / f".staging-{run_id}"


def _timed(summary: dict, t0: float) -> dict:
    summary.setdefault("seconds", round(time.perf_counter() - t0, 3))
    return summary


def prewarm() -> None:
    """Import Great Expectations and build its context in a background thread
    while ingest runs (about 3 s of mostly-Python import, 10 s on a loaded
    machine; ingest spends its time in polars, outside the GIL). The first
    gate waits for it through the gate module's lock if it is not done."""
    import threading

    def _warm():
        try:
            from etl.quality.gate import _context
            _context()
        except Exception:  # noqa: BLE001 - the gate itself will raise it properly
            pass

    threading.Thread(target=_warm, name="medlink-gx-prewarm", daemon=True).start()


# --------------------------------------------------------------------------- stages

def ingest_source(cfg: Config, source: str, run_id: str) -> dict:
    from etl.ingest import ingest
    rd = run_dir(cfg, run_id)
    share = float(cfg.quality.get("max_quarantine_share", 0.5))
    return ingest(cfg.sources[source], rd / "ingest" / f"{source}.parquet",
                  rd / "quarantine" / f"{source}.parquet", max_quarantine_share=share)


def raw_gate(cfg: Config, source: str, run_id: str, ingest_summary: dict) -> dict:
    """Great Expectations contract gate on one ingested extract."""
    from etl.quality import run_gate
    t0 = time.perf_counter()
    rd = run_dir(cfg, run_id)
    suite = f"raw_{cfg.sources[source].contract.name}"
    res = run_gate([suite], Path(ingest_summary["path"]), docs_dir=rd / "data_docs",
                   params={"rows_in": ingest_summary["rows_in"],
                           "rows_quarantined": ingest_summary["rows_quarantined"],
                           "max_quarantine_share": float(cfg.quality.get("max_quarantine_share", 0.5))},
                   data_asset_name=source)
    res.raise_for_failure()
    return _timed({"gate": suite, **res.to_dict()}, t0)


def incremental(cfg: Config) -> bool:
    return getattr(cfg, "linkage_mode", "full") == "incremental"


def linked_records(ingest_summaries: list[dict], link_summary: dict | None) -> dict[str, Path]:
    """The standardised records the link's clusters cover, per source: this delivery's
    ingest files, or in incremental mode the whole history (`records_paths`)."""
    rp = (link_summary or {}).get("records_paths")
    if rp:
        return {s: Path(p) for s, p in rp.items()}
    return {s["source"]: Path(s["path"]) for s in ingest_summaries}


def release_memory() -> None:
    """Hand freed heap back to the OS after a large stage. In one process (`medlink run`,
    the Prefect flow's worker) glibc otherwise keeps what linkage freed (1-2 GiB at 1M
    doctors), and the next stages' peaks sit on top of it."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):     # not glibc: nothing to do
        pass


def link(cfg: Config, run_id: str, ingest_summaries: list[dict], truth: Path | None = None,
         progress: Callable[[str], None] | None = None) -> dict:
    try:
        return _link_stage(cfg, run_id, ingest_summaries, truth, progress)
    finally:
        release_memory()


def _link_stage(cfg: Config, run_id: str, ingest_summaries: list[dict], truth: Path | None,
                progress: Callable[[str], None] | None) -> dict:
    from etl.linkage import link as _link, load_spec
    t0 = time.perf_counter()
    if incremental(cfg):
        from etl.incremental import link_stage
        return _timed(link_stage(cfg, run_id, ingest_summaries, policy=cfg.merge_policy, truth=truth,
                                 progress=progress), t0)
    spec = load_spec(cfg.linkage, cfg.path.parent)
    inputs = {s["source"]: Path(s["path"]) for s in ingest_summaries}
    out = run_dir(cfg, run_id) / "linkage"
    out.mkdir(parents=True, exist_ok=True)
    summary = _link(inputs, spec, out, truth=truth, progress=progress)
    summary.setdefault("clusters_path", str(out / "clusters.parquet"))
    summary.setdefault("pairs_path", str(out / "pairs.parquet"))
    return _timed(summary, t0)


def linked_gate(cfg: Config, run_id: str, ingest_summaries: list[dict], link_summary: dict) -> dict:
    from etl.quality import run_gate
    from etl.quality.linked import linked_frame
    t0 = time.perf_counter()
    frame = linked_frame(list(linked_records(ingest_summaries, link_summary).values()),
                         Path(link_summary["clusters_path"]))
    res = run_gate(["linked"], frame, docs_dir=run_dir(cfg, run_id) / "data_docs",
                   params=cfg.quality.get("link_rate_bounds") or {}, data_asset_name="linked")
    res.raise_for_failure()
    return _timed({"gate": "linked", **res.to_dict()}, t0)


def assemble(cfg: Config, run_id: str, ingest_summaries: list[dict], link_summary: dict) -> dict:
    from etl.assemble import assemble as _assemble
    t0 = time.perf_counter()
    out = run_dir(cfg, run_id) / "assembled"
    summary = _assemble(linked_records(ingest_summaries, link_summary),
                        Path(link_summary["clusters_path"]), Path(link_summary["pairs_path"]), out)
    if link_summary.get("records_paths"):      # incremental: protect scans for the history's names
        summary["records_paths"] = dict(link_summary["records_paths"])
    return _timed(summary, t0)


def protect(cfg: Config, run_id: str, assemble_summary: dict, ingest_summaries: list[dict]) -> dict:
    from etl.governance import load_key, load_rules, protect as _protect
    from etl.publish import current_release
    t0 = time.perf_counter()
    rules = load_rules(cfg.governance["rules"])
    key = load_key(env_var=cfg.governance.get("key_env", "MEDLINK_KEY"),
                   key_file=cfg.governance.get("key_file"), demo=bool(cfg.governance.get("demo")))
    stage = staging_dir(cfg, run_id)
    stage.mkdir(parents=True, exist_ok=True)
    vocab = input_vocab(list(linked_records(ingest_summaries, assemble_summary).values()))
    summary = _protect(Path(assemble_summary["doctors_path"]), Path(assemble_summary["events_path"]),
                       rules, key, stage, cfg.restricted_dir, release_id=run_id,
                       previous_release_dir=current_release(cfg.releases_dir), input_vocab=vocab,
                       input_checksums={s["file"]: s["sha256"] for s in ingest_summaries})
    summary["staging_dir"] = str(stage)
    return _timed(summary, t0)


def input_vocab(ingest_paths: list[Path]) -> dict:
    """Names and identifiers of the delivery, for the leak scanner. Stays in
    memory inside the restricted zone; never returned from a task. Values are
    unique polars Series (no Python object per value); dates of birth a set."""
    import polars as pl
    parts: dict[str, list] = {"names": [], "identifiers": [], "dates_of_birth": [], "postcodes": [], "emails": []}
    for p in ingest_paths:
        cols = pl.read_parquet_schema(p)
        want = [c for c in ("forenames", "surname", "preferred_name", "other_names", "ucas_personal_id",
                            "gmc_number", "record_id", "date_of_birth", "postcode", "email") if c in cols]
        df = pl.read_parquet(p, columns=want)
        for c in ("forenames", "surname", "preferred_name", "other_names"):
            if c in df.columns:
                parts["names"].append(df[c].drop_nulls().str.split(" ").explode().unique())
        for c in ("ucas_personal_id", "gmc_number", "record_id"):
            if c in df.columns:
                parts["identifiers"].append(df[c].drop_nulls().cast(pl.String).unique())
        if "date_of_birth" in df.columns:
            parts["dates_of_birth"].append(df["date_of_birth"].drop_nulls().unique())
        if "postcode" in df.columns:
            parts["postcodes"].append(df["postcode"].drop_nulls().unique())
        if "email" in df.columns:
            parts["emails"].append(df["email"].drop_nulls().unique())
    vocab: dict = {}
    for k, ss in parts.items():
        s = pl.concat([x.alias(k) for x in ss]).unique() if ss else pl.Series(k, [], dtype=pl.String)
        vocab[k] = s
    vocab["names"] = vocab["names"].filter(vocab["names"] != "")
    vocab["dates_of_birth"] = set(vocab["dates_of_birth"].to_list())
    return vocab


def release_gate(cfg: Config, run_id: str, protect_summary: dict) -> dict:
    from etl.governance import load_rules
    from etl.quality import run_gate
    from etl.quality.release import release_params
    t0 = time.perf_counter()
    stage = Path(protect_summary["staging_dir"])
    rules = load_rules(cfg.governance["rules"])
    res = run_gate(["release"], stage / "doctors.parquet", docs_dir=stage / "data_docs",
                   params=release_params(rules, stage), data_asset_name="release_doctors")
    ev = run_gate(["release_events"], stage / "events.parquet", docs_dir=stage / "data_docs",
                  params=release_params(rules, stage, table="events"), data_asset_name="release_events")
    summary = {"gate": "release", **res.to_dict(), "events": ev.to_dict()}
    (stage / "gate_results.json").write_text(json.dumps(summary, indent=2, default=str))
    res.raise_for_failure()
    ev.raise_for_failure()
    return _timed(summary, t0)


def publish(cfg: Config, run_id: str, summaries: dict) -> dict:
    from etl.publish import publish as _publish
    t0 = time.perf_counter()
    link_summary = summaries.get("link") or {}
    if link_summary.get("mode") != "incremental":
        return _timed(_publish(staging_dir(cfg, run_id), cfg, run_id, summaries), t0)
    from etl.incremental import check_state_base, clear_pending, commit_state, mark_pending, state_lock
    accounting = delivery_accounting(cfg, run_id, summaries)
    staging = staging_dir(cfg, run_id)
    basis = release_basis(summaries)      # hashes the history: before the lock other runs wait on
    with state_lock(cfg.restricted_dir):
        check_state_base(cfg.restricted_dir, link_summary)
        # a crash between the release rename and the commit is rolled forward by the next run
        mark_pending(cfg.restricted_dir, link_summary, run_id, staging.parent / run_id)
        try:
            out = _publish(staging, cfg, run_id, basis)
        except BaseException:
            if not (staging.parent / run_id).exists():     # not published: nothing to roll forward
                clear_pending(cfg.restricted_dir)
            raise
        out["linkage_state"] = commit_state(cfg.restricted_dir, link_summary, run_id)
    out["delivery_accounting"] = accounting
    return _timed(out, t0)


def delivery_accounting(cfg: Config, run_id: str, summaries: dict) -> dict:
    """Incremental runs: where every row of THIS delivery went (delivered = quarantined +
    ingested; every ingested record in exactly one person of the history's clusters; records
    whose person is published). `etl.quality.reconcile` raises GateFailed when a row is lost.
    Written into the staging directory as `row_accounting_delivery.parquet` (so the release
    carries it) and returned as counts (the `all` row)."""
    import polars as pl
    from etl.quality.reconcile import reconcile
    ingests = summaries.get("ingest") or []
    link_summary = summaries["link"]
    ids = pl.concat([pl.read_parquet(s["path"], columns=["record_id"]).select(
        pl.lit(s["source"]).alias("source"), pl.col("record_id").cast(pl.String)) for s in ingests])
    cl = pl.read_parquet(link_summary["clusters_path"], columns=["source", "record_id", "person_id"]).select(
        pl.col("source").cast(pl.String), pl.col("record_id").cast(pl.String), "person_id")
    mine = cl.join(ids, on=["source", "record_id"], how="semi")
    cw = cfg.restricted_dir / "crosswalk.parquet"     # protect's rows of this release: the published persons
    published = (pl.scan_parquet(cw).filter(pl.col("release_id") == run_id).select("person_id").unique().collect()
                 if cw.is_file() else None)
    table = reconcile(ingests, mine, None, published_persons=published)
    from etl.publish import write_parquet
    write_parquet(table, staging_dir(cfg, run_id) / "row_accounting_delivery.parquet")
    total = table.filter(pl.col("source") == "all").row(0, named=True)
    return {k: total[k] for k in ("rows_in", "quarantined", "ingested", "in_clusters", "records_published",
                                  "reconciled")}


def release_basis(summaries: dict) -> dict:
    """Incremental runs: the summaries publish writes the release's row accounting and
    manifest inputs from. The release holds every person of the linked history, so its
    inputs are the history's records per source (what the clusters cover); the
    delivery's own files and counts are in `row_accounting_delivery.parquet`, the
    governance report's input checksums and the run summary. The manifest names both:
    `inputs` (the history) and `delivery_inputs` (this delivery's files and checksums), and
    `linkage_state` (the state the release was linked onto and the one it commits)."""
    from etl.hashing import sha256_file
    from etl.incremental import state_id
    import polars as pl
    basis = []
    for s, p in summaries["link"]["records_paths"].items():
        n = pl.scan_parquet(p).select(pl.len()).collect().item()
        basis.append({"source": s, "file": f"linkage_state/records/{s}", "sha256": sha256_file(Path(p)),
                      "rows_in": n, "rows_ingested": n, "rows_quarantined": 0, "path": p})
    state = {"linked_onto": summaries["link"].get("state_base"),
             "commits": state_id(Path(summaries["link"]["state_dir"]))}
    return {**summaries, "ingest": basis, "delivery_ingest": summaries.get("ingest") or [],
            "linkage_state": state}


def report(cfg: Config, run_id: str) -> dict:
    """Stratification report, written into the staging directory so the
    manifest covers it (`medlink report RELEASE` rewrites it elsewhere)."""
    from etl.governance import load_rules
    from etl.report import write_report
    t0 = time.perf_counter()
    return _timed(write_report(staging_dir(cfg, run_id), rules=load_rules(cfg.governance["rules"])), t0)


def discard_staging(cfg: Config, run_id: str) -> None:
    """After a failed gate: keep the staging directory's reports beside the
    releases (renamed failed-<run_id>) so engineers can read them; it is never
    a release."""
    stage = staging_dir(cfg, run_id)
    if stage.exists():
        failed = cfg.releases_dir / f".failed-{run_id}"
        stage.rename(failed)


# --------------------------------------------------------------------------- whole run

STAGES = ("ingest", "raw_gate", "link", "linked_gate", "assemble", "protect",
          "release_gate", "report", "publish")


def run_all(cfg: Config, *, run_id: str | None = None, truth: Path | None = None,
            progress: Callable[[str], None] = lambda m: None) -> dict:
    """Run every stage in order without Prefect. Returns the run summary."""
    run_id = run_id or new_run_id()
    out: dict = {"run_id": run_id, "delivery": cfg.delivery}
    prewarm()
    ingests = []
    for s in cfg.sources:
        progress(f"ingest {s}")
        ingests.append(ingest_source(cfg, s, run_id))
    out["ingest"] = ingests
    out["raw_gate"] = []
    for s, summ in zip(cfg.sources, ingests):
        progress(f"raw gate {s}")
        out["raw_gate"].append(raw_gate(cfg, s, run_id, summ))
    progress("link")
    out["link"] = link(cfg, run_id, ingests, truth=truth, progress=progress)
    progress("linked gate")
    out["linked_gate"] = linked_gate(cfg, run_id, ingests, out["link"])
    progress("assemble")
    out["assemble"] = assemble(cfg, run_id, ingests, out["link"])
    progress("protect")
    out["protect"] = protect(cfg, run_id, out["assemble"], ingests)
    progress("release gate")
    try:
        out["release_gate"] = release_gate(cfg, run_id, out["protect"])
    except MedlinkError:
        discard_staging(cfg, run_id)
        raise
    progress("report")
    out["report"] = report(cfg, run_id)
    progress("publish")
    out["publish"] = publish(cfg, run_id, out)
    return out
