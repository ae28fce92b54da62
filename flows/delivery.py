"""The `medlink-delivery` Prefect flow: one flow run per delivery.

Stage logic lives in `etl/pipeline.py`; this module only wires it:

    ingest (per source, parallel) -> raw gate (per source) -> link -> linked gate
    -> assemble -> protect -> release gate -> report -> publish

Tasks pass paths and the stages' small JSON summaries (counts, paths,
checksums), never rows. Prefect persists no results (persist_result=False,
no cache policy); resumption uses fingerprinted `.done.json` markers in the
restricted run directory (flows/resume.py). Logs carry counts only;
log_prints is off. Every run gets table artifacts (row accounting, linkage,
gates) and a markdown artifact with the release location.

Entry point for the CLI: `run_delivery(config_path, run_id=None, truth=None, progress=True)`.
"""

from __future__ import annotations

from flows import settings  # noqa: F401  (must precede `import prefect`)

import contextlib
import inspect
import logging
import os
import sys
import time
import uuid
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.task_runners import ThreadPoolTaskRunner

from etl import pipeline
from etl.config import Config, load as load_config
from etl.errors import MedlinkError
from flows import resume

FLOW_NAME = "medlink-delivery"
RETRY_DELAYS = [0.5, 2.0]


# --------------------------------------------------------------------------- helpers

@lru_cache(maxsize=8)
def _cfg(config_path: str, _mtime_ns: int) -> Config:
    return load_config(config_path)


def cfg_of(ctx: dict) -> Config:
    return _cfg(ctx["config_path"], Path(ctx["config_path"]).stat().st_mtime_ns)


def _transient(task, task_run, state) -> bool:
    """Retry transient I/O only: never a user-input error (MedlinkError) or a gate."""
    try:
        state.result()
    except MedlinkError:
        return False
    except (OSError, TimeoutError, ConnectionError):
        return True
    except Exception:
        return False
    return False


_PROGRESS: dict[str, Callable[[str], None]] = {}


def _say(ctx: dict, msg: str) -> None:
    """Progress for the terminal (stderr only; never Prefect logs)."""
    fn = _PROGRESS.get(ctx.get("attempt", ""))
    if fn:
        fn(msg)


def _log(msg: str) -> None:
    try:
        get_run_logger().info(msg)
    except Exception:
        pass


def _resumable(ctx: dict, stage: str, upstream: Any, compute: Callable[[], dict]) -> dict:
    """Run `compute` unless this stage already finished with the same fingerprint."""
    rd = Path(ctx["run_dir"])
    fp = resume.stage_fingerprint(ctx["fingerprint"], stage, upstream)
    done = resume.load_done(rd, stage, fp)
    if done is not None:
        _say(ctx, f"{stage}: already done in an earlier attempt, reused")
        _log(f"{stage}: reused the summary of an earlier attempt (same inputs, config, code)")
        return done
    _say(ctx, stage)
    summary = compute()
    resume.save_done(rd, stage, fp, summary, ctx["attempt"])
    return summary


def _counts(summary: dict, keys: tuple[str, ...]) -> str:
    return ", ".join(f"{k}={summary[k]}" for k in keys if k in summary)


# --------------------------------------------------------------------------- tasks

TASK_OPTS = dict(cache_policy=NO_CACHE, persist_result=False, log_prints=False)


@task(name="ingest", task_run_name="ingest-{source}", retries=2, retry_delay_seconds=RETRY_DELAYS,
      retry_condition_fn=_transient, **TASK_OPTS)
def ingest_task(ctx: dict, source: str) -> dict:
    s = _resumable(ctx, f"ingest:{source}", None,
                   lambda: pipeline.ingest_source(cfg_of(ctx), source, ctx["run_id"]))
    _log(f"ingest {source}: " + _counts(s, ("rows_in", "rows_ingested", "rows_quarantined")))
    return s


@task(name="raw-gate", task_run_name="raw-gate-{source}", **TASK_OPTS)
def raw_gate_task(ctx: dict, source: str, ingest_summary: dict) -> dict:
    return _resumable(ctx, f"raw_gate:{source}", ingest_summary,
                      lambda: pipeline.raw_gate(cfg_of(ctx), source, ctx["run_id"], ingest_summary))


def _link_progress(ctx: dict) -> Callable[[str], None]:
    return lambda m: _say(ctx, f"link: {m}")


@task(name="link", task_run_name="link", **TASK_OPTS)
def link_task(ctx: dict, ingest_summaries: list[dict]) -> dict:
    truth = Path(ctx["truth"]) if ctx.get("truth") else None
    s = _resumable(ctx, "link", ingest_summaries,
                   lambda: pipeline.link(cfg_of(ctx), ctx["run_id"], ingest_summaries, truth=truth,
                                         progress=_link_progress(ctx)))
    _log("link: " + _counts(s, ("pairs_scored", "links", "clusters", "persons")))
    return s


@task(name="linked-gate", task_run_name="linked-gate", **TASK_OPTS)
def linked_gate_task(ctx: dict, ingest_summaries: list[dict], link_summary: dict) -> dict:
    return _resumable(ctx, "linked_gate", [ingest_summaries, link_summary],
                      lambda: pipeline.linked_gate(cfg_of(ctx), ctx["run_id"], ingest_summaries, link_summary))


@task(name="assemble", task_run_name="assemble", **TASK_OPTS)
def assemble_task(ctx: dict, ingest_summaries: list[dict], link_summary: dict) -> dict:
    return _resumable(ctx, "assemble", [ingest_summaries, link_summary],
                      lambda: pipeline.assemble(cfg_of(ctx), ctx["run_id"], ingest_summaries, link_summary))


@task(name="protect", task_run_name="protect", **TASK_OPTS)
def protect_task(ctx: dict, assemble_summary: dict, ingest_summaries: list[dict]) -> dict:
    return _resumable(ctx, "protect", [assemble_summary, ingest_summaries],
                      lambda: pipeline.protect(cfg_of(ctx), ctx["run_id"], assemble_summary, ingest_summaries))


@task(name="release-gate", task_run_name="release-gate", **TASK_OPTS)
def release_gate_task(ctx: dict, protect_summary: dict) -> dict:
    def compute():
        cfg = cfg_of(ctx)
        try:
            return pipeline.release_gate(cfg, ctx["run_id"], protect_summary)
        except MedlinkError:
            pipeline.discard_staging(cfg, ctx["run_id"])   # last good release stays CURRENT
            raise
    return _resumable(ctx, "release_gate", protect_summary, compute)


@task(name="report", task_run_name="report", **TASK_OPTS)
def report_task(ctx: dict, release_gate_summary: dict, protect_summary: dict) -> dict:
    return _resumable(ctx, "report", [release_gate_summary, protect_summary],
                      lambda: pipeline.report(cfg_of(ctx), ctx["run_id"]))


@task(name="publish", task_run_name="publish", retries=2, retry_delay_seconds=RETRY_DELAYS, retry_condition_fn=_transient, **TASK_OPTS)
def publish_task(ctx: dict, summaries: dict) -> dict:
    s = _resumable(ctx, "publish", summaries, lambda: pipeline.publish(cfg_of(ctx), ctx["run_id"], summaries))
    _log(f"published release {ctx['run_id']}")
    return s


# --------------------------------------------------------------------------- Dask fan-out of scoring

def block_api():
    """The linkage engine's block-wise scoring API, or None if it has none (yet).

    Protocol (etl.linkage): plan_blocks(inputs, spec, n_blocks) -> list[dict];
    score_block(block, spec, out_dir) -> path; link(..., scored_blocks=[paths])
    finishes (EM/clustering/report) from the pre-scored blocks.
    """
    try:
        import etl.linkage as lk
    except ImportError:
        return None
    if not all(hasattr(lk, n) for n in ("plan_blocks", "score_block", "link", "load_spec")):
        return None
    try:
        if "scored_blocks" not in inspect.signature(lk.link).parameters:
            return None
    except (TypeError, ValueError):
        return None
    return lk


@lru_cache(maxsize=4)
def _spec(config_path: str, _mtime_ns: int):
    import etl.linkage as lk
    cfg = load_config(config_path)
    return lk.load_spec(cfg.linkage, cfg.path.parent)


def spec_of(ctx: dict):
    return _spec(ctx["config_path"], Path(ctx["config_path"]).stat().st_mtime_ns)


@task(name="score-block", task_run_name="score-block-{i}", **TASK_OPTS)
def score_block_task(ctx: dict, i: int, block: dict, out_dir: str) -> str:
    lk = block_api()
    return str(lk.score_block(block, spec_of(ctx), Path(out_dir)))


@flow(name="medlink-score-blocks", persist_result=False, log_prints=False)
def score_blocks_flow(ctx: dict, blocks: list[dict], out_dir: str) -> list[str]:
    futs = [score_block_task.submit(ctx, i, b, out_dir) for i, b in enumerate(blocks)]
    return [f.result() for f in futs]


def dask_runner(ctx: dict):
    """A DaskTaskRunner for the configured cluster, or None when none is configured."""
    addr, workers = ctx.get("dask_address"), ctx.get("dask_workers")
    if not addr and not workers:
        return None
    from prefect_dask import DaskTaskRunner
    if addr:
        return DaskTaskRunner(address=addr)
    processes = os.environ.get("MEDLINK_DASK_PROCESSES", "1") != "0"   # "0": threads (tests)
    return DaskTaskRunner(cluster_kwargs={"n_workers": int(workers), "threads_per_worker": 1,
                                          "processes": processes, "dashboard_address": None})


@task(name="link", task_run_name="link", **TASK_OPTS)
def link_blocks_task(ctx: dict, ingest_summaries: list[dict]) -> dict:
    """Link with the scoring fanned out over Dask (same result as link_task)."""
    lk = block_api()

    def compute():
        cfg = cfg_of(ctx)
        spec = spec_of(ctx)
        inputs = {s["source"]: Path(s["path"]) for s in ingest_summaries}
        out = pipeline.run_dir(cfg, ctx["run_id"]) / "linkage"
        out.mkdir(parents=True, exist_ok=True)
        blocks_dir = out / "blocks"
        blocks_dir.mkdir(exist_ok=True)
        n = int(ctx.get("n_blocks") or 4 * int(ctx.get("dask_workers") or 2))
        blocks = lk.plan_blocks(inputs, spec, n)
        _say(ctx, f"link: scoring {len(blocks)} blocks on Dask")
        t0 = time.perf_counter()
        runner = dask_runner(ctx)
        paths = score_blocks_flow.with_options(task_runner=runner)(ctx, blocks, str(blocks_dir))
        truth = Path(ctx["truth"]) if ctx.get("truth") else None
        summary = lk.link(inputs, spec, out, truth=truth, progress=_link_progress(ctx),
                          scored_blocks=[Path(p) for p in paths])
        summary.setdefault("clusters_path", str(out / "clusters.parquet"))
        summary.setdefault("pairs_path", str(out / "pairs.parquet"))
        summary.setdefault("blocks", len(blocks))
        summary.setdefault("seconds", round(time.perf_counter() - t0, 3))
        return summary
    s = _resumable(ctx, "link", ingest_summaries, compute)
    _log("link (dask): " + _counts(s, ("pairs_scored", "links", "clusters", "persons", "blocks")))
    return s


# --------------------------------------------------------------------------- artifacts (counts only)

def _scalars(d: dict) -> dict:
    return {k: v for k, v in (d or {}).items()
            if isinstance(v, (int, float, bool)) and not k.endswith("seconds")}


def _gate_row(stage: str, g: dict) -> dict:
    failed = g.get("failed") or g.get("failed_expectations") or []
    names = []
    for f in failed if isinstance(failed, list) else []:
        if isinstance(f, str):
            names.append(f)
        elif isinstance(f, dict):
            names.append(str(f.get("expectation") or f.get("type") or f.get("expectation_type") or "?"))
    s = _scalars(g)
    return {"gate": str(g.get("gate", stage)), "success": bool(g.get("success", True)),
            "evaluated": s.get("evaluated", s.get("evaluated_expectations", "")),
            "failed": ", ".join(names)}


def publish_artifacts(out: dict, cfg: Config, status: str, error: str | None = None) -> None:
    rows = [{"source": i.get("source"), "rows_in": i.get("rows_in"), "rows_ingested": i.get("rows_ingested"),
             "rows_quarantined": i.get("rows_quarantined")} for i in out.get("ingest", [])]
    if rows:
        create_table_artifact(key="medlink-row-accounting", table=rows,
                              description=f"Row accounting of run {out['run_id']} (counts only)")
    link = _scalars(out.get("link") or {})
    if link:
        create_table_artifact(key="medlink-linkage", table=[{"measure": k, "value": v} for k, v in link.items()],
                              description=f"Linkage counts and rates of run {out['run_id']}")
    gates = [_gate_row(f"raw_gate:{i}", g) for i, g in enumerate(out.get("raw_gate", []))]
    gates += [_gate_row(k, out[k]) for k in ("linked_gate", "release_gate") if out.get(k)]
    if gates:
        create_table_artifact(key="medlink-gates", table=gates, description=f"Quality gates of run {out['run_id']}")
    pub = out.get("publish") or {}
    release = pub.get("release_dir") or str(cfg.releases_dir / out["run_id"])
    lines = [f"# medlink delivery `{out.get('delivery')}`", "",
             f"- run: `{out['run_id']}`", f"- status: **{status}**"]
    if status == "completed":
        lines.append(f"- release: [{release}](file://{release})")
        lines.append(f"- current release pointer: `{cfg.releases_dir / 'CURRENT'}`")
    else:
        lines.append(f"- failed stage: `{out.get('failed_stage')}`")
        lines.append(f"- error: {error}")
        lines.append("- nothing was published; the last good release is unchanged")
    if out.get("resumed"):
        lines.append(f"- reused from an earlier attempt: {', '.join(out['resumed'])}")
    create_markdown_artifact(key="medlink-release", markdown="\n".join(lines),
                             description="Release location and run status")


# --------------------------------------------------------------------------- the flow

def _context(cfg: Config, config_path: str, run_id: str | None, truth: str | None,
             dask_address: str | None, dask_workers: int | None, skip_unchanged: bool = False) -> dict:
    fp = resume.run_fingerprint(cfg, Path(truth) if truth else None)
    delivery_digest = fp["digest"]          # what the delivery is, whatever the linkage state
    runs_dir = cfg.restricted_dir / "runs"
    if skip_unchanged and run_id is None:
        same = resume.published_unchanged(cfg.releases_dir, runs_dir, delivery_digest)
        if same:
            return {"unchanged_since": same, "delivery_digest": delivery_digest}
    rolled = None
    if pipeline.incremental(cfg):
        # a run that died between publishing and committing its state is rolled forward
        # first: its state then differs from the one it linked onto, so it is not resumed
        # (a resumed publish would find its release already there)
        from etl.incremental import STATE_NAME, roll_forward, state_id
        rolled = roll_forward(cfg.restricted_dir, _log)
        # the link depends on the committed linkage state too: a run linked onto a state
        # that another run has since replaced is not resumed (publish would refuse it)
        fp = {**fp, "digest": resume.digest([fp["digest"], state_id(cfg.restricted_dir / STATE_NAME)])}
    resumed_from = None
    if run_id is None:
        resumed_from = resume.find_unfinished(runs_dir, fp["digest"])
        run_id = resumed_from or pipeline.new_run_id()
    rd = pipeline.run_dir(cfg, run_id)
    rd.mkdir(parents=True, exist_ok=True)
    return {"config_path": str(cfg.path), "run_id": run_id, "run_dir": str(rd), "fingerprint": fp["digest"],
            "truth": truth, "attempt": uuid.uuid4().hex, "dask_address": dask_address,
            "dask_workers": dask_workers, "resumed_run": bool(resumed_from), "delivery_digest": delivery_digest,
            "recovered_commit": rolled}


@flow(name=FLOW_NAME, persist_result=False, log_prints=False, task_runner=ThreadPoolTaskRunner(max_workers=4),
      description="Ingest, gate, link, assemble, protect, gate, report and publish one delivery.")
def medlink_delivery(config_path: str, run_id: str | None = None, truth: str | None = None,
                     dask_address: str | None = None, dask_workers: int | None = None,
                     attempt: str | None = None, skip_unchanged: bool = False) -> dict:
    cfg = load_config(config_path)
    ctx = _context(cfg, config_path, run_id, truth, dask_address, dask_workers, skip_unchanged)
    logger = get_run_logger()
    from prefect.runtime import flow_run as _fr
    orch = {"flow_run_id": str(_fr.id) if _fr.id else None}
    if ctx.get("unchanged_since"):
        rid = ctx["unchanged_since"]
        logger.info(f"delivery {cfg.delivery} unchanged since release {rid} (same inputs, config, rules, "
                    "code and key): nothing to run")
        create_markdown_artifact(key="medlink-release", description="Release location and run status",
                                 markdown=f"# medlink delivery `{cfg.delivery}`\n\n- status: **unchanged**: "
                                          f"the current release `{rid}` was built from this delivery as it "
                                          "is now; nothing was run or published")
        return {"run_id": None, "delivery": cfg.delivery, "skipped": "unchanged", "release_id": rid,
                "release_dir": str(cfg.releases_dir / rid), "orchestration": orch}
    if attempt:
        ctx["attempt"] = attempt
    run_id = ctx["run_id"]
    rd = Path(ctx["run_dir"])
    resume.write_run(rd, run_id, ctx["fingerprint"], "running", delivery_digest=ctx["delivery_digest"])
    logger.info(f"run {run_id} of delivery {cfg.delivery}: {len(cfg.sources)} sources")
    out: dict = {"run_id": run_id, "delivery": cfg.delivery}
    if ctx.get("recovered_commit"):
        out["recovered_commit"] = ctx["recovered_commit"]
    stage = "ingest"
    try:
        sources = list(cfg.sources)
        ingest_f = [ingest_task.submit(ctx, s) for s in sources]
        gate_f = [raw_gate_task.submit(ctx, s, f) for s, f in zip(sources, ingest_f)]
        out["ingest"] = [f.result() for f in ingest_f]
        stage = "raw_gate"
        out["raw_gate"] = [f.result() for f in gate_f]
        stage = "link"
        # incremental linkage links a small subset in one task: no Dask fan-out
        lk = block_api() if (dask_address or dask_workers) and not pipeline.incremental(cfg) else None
        if lk is not None:
            out["link"] = link_blocks_task(ctx, out["ingest"])
        else:
            if (dask_address or dask_workers) and pipeline.incremental(cfg):
                logger.warning("Dask configured, but incremental linkage links in one task")
            elif dask_address or dask_workers:
                logger.warning("Dask configured but etl.linkage has no block API yet; linking in one task")
            out["link"] = link_task(ctx, out["ingest"])
        stage = "linked_gate"
        out["linked_gate"] = linked_gate_task(ctx, out["ingest"], out["link"])
        stage = "assemble"
        out["assemble"] = assemble_task(ctx, out["ingest"], out["link"])
        stage = "protect"
        out["protect"] = protect_task(ctx, out["assemble"], out["ingest"])
        stage = "release_gate"
        out["release_gate"] = release_gate_task(ctx, out["protect"])
        stage = "report"
        out["report"] = report_task(ctx, out["release_gate"], out["protect"])
        stage = "publish"
        out["publish"] = publish_task(ctx, dict(out))
    except BaseException as e:
        out["failed_stage"] = stage
        out["resumed"] = _resumed(ctx)
        resume.write_run(rd, run_id, ctx["fingerprint"], "failed", failed_stage=stage,
                         delivery_digest=ctx["delivery_digest"])
        msg = str(e) if isinstance(e, MedlinkError) else f"{type(e).__name__} in stage {stage}"
        with contextlib.suppress(Exception):
            publish_artifacts(out, cfg, "failed", msg)
        raise
    out["resumed"] = _resumed(ctx)
    resume.write_run(rd, run_id, ctx["fingerprint"], "completed", delivery_digest=ctx["delivery_digest"])
    publish_artifacts(out, cfg, "completed")
    out["orchestration"] = orch
    return out


def _resumed(ctx: dict) -> list[str]:
    return sorted(k for k, a in resume.attempts(Path(ctx["run_dir"])).items() if a != ctx["attempt"])


# --------------------------------------------------------------------------- entry point

class _ConsoleFilter(logging.Filter):
    """Console only. Drops (1) ERROR records of Prefect's flow/task-run loggers:
    the caller gets the exception and prints one line, and the full error still
    reaches the Prefect API (UI) through the api handler, which runs first;
    (2) GX's INFO chatter and GX-internal py.warnings."""

    def __init__(self, drop_run_errors: bool = True):
        super().__init__()
        self.drop_run_errors = drop_run_errors

    def filter(self, record: logging.LogRecord) -> bool:
        if (self.drop_run_errors and record.levelno >= logging.ERROR
                and record.name.startswith(("prefect.flow_runs", "prefect.task_runs"))):
            return False
        if record.name.startswith("great_expectations") and record.levelno < logging.WARNING:
            return False
        if record.name == "py.warnings" and "great_expectations" in record.getMessage():
            return False
        return True


@contextlib.contextmanager
def _quiet_console(drop_run_errors: bool = True):
    handlers = [h for lg in (logging.getLogger(), logging.getLogger("prefect"))
                for h in lg.handlers if type(h).__name__ == "PrefectConsoleHandler"]
    f = _ConsoleFilter(drop_run_errors)
    for h in handlers:
        h.addFilter(f)
    try:
        yield
    finally:
        for h in handlers:
            h.removeFilter(f)


@contextlib.contextmanager
def prefect_api(mode: str = "auto", heartbeats: bool = False):
    """Point Prefect at a real server when one is available.

    mode "auto": PREFECT_API_URL if set, else a running medlink-managed server
    (flows/server.py), else Prefect's ephemeral server (8-18 s per process).
    "start": start the medlink-managed server if none answers. "ephemeral": never use a server.
    heartbeats False (real server only): no flow-run heartbeat thread (a sync
    flow joins it at the end, ~1 s per run); a foreground CLI run does not need
    the server's crash detection. `serve` keeps heartbeats.
    Yields the API URL in use, or None for ephemeral.
    """
    from prefect.settings import PREFECT_API_URL, PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings
    from flows import server
    url = None
    if mode != "ephemeral":
        url = server.find_api_url()
        if url is None and mode == "start":
            url = server.start()
    # Ephemeral: keep the heartbeat (its ~1 s join at the end also lets the
    # temporary server record the last task events before it is stopped).
    updates = {} if (heartbeats or url is None) else {PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}
    old = os.environ.get("PREFECT_API_URL")
    if url:
        updates[PREFECT_API_URL] = url
        os.environ["PREFECT_API_URL"] = url      # inherited by Dask worker processes
    try:
        with temporary_settings(updates=updates):
            yield url
    finally:
        if old is None:
            os.environ.pop("PREFECT_API_URL", None)
        else:
            os.environ["PREFECT_API_URL"] = old


def run_delivery(config_path: str, *, run_id: str | None = None, truth=None, progress: bool = True,
                 server: str = "auto", dask_address: str | None = None, dask_workers: int | None = None,
                 skip_unchanged: bool = False) -> dict:
    """Run one delivery through the `medlink-delivery` flow; return the run summary.

    skip_unchanged: when the current release was published by a run of this delivery exactly
    as it is now (inputs, referenced files, config, schemas, code, key), run nothing and
    return {"skipped": "unchanged", "release_id": ...} (what `medlink serve` does).

    run_id: reuse (resume) that run; None finds an unfinished run of the same
    inputs+config+code and resumes it, else starts a new run.
    truth: optional truth.parquet for linkage evaluation.
    server: "auto" | "start" | "ephemeral" (see prefect_api).
    dask_address / dask_workers (or MEDLINK_DASK_ADDRESS / MEDLINK_DASK_WORKERS):
    fan the linkage scoring out over a Dask cluster (existing, or a LocalCluster of N workers).
    Raises the stage's exception (e.g. etl.errors.GateFailed) when the flow ends Failed.
    """
    dask_address = dask_address or os.environ.get("MEDLINK_DASK_ADDRESS") or None
    dask_workers = dask_workers or (int(os.environ["MEDLINK_DASK_WORKERS"])
                                    if os.environ.get("MEDLINK_DASK_WORKERS") else None)
    attempt = uuid.uuid4().hex
    if progress:
        start = time.perf_counter()
        _PROGRESS[attempt] = lambda m: (sys.stderr.write(f"[{time.perf_counter() - start:7.1f}s] {m}\n"),
                                        sys.stderr.flush())
    t0 = time.perf_counter()
    try:
        with prefect_api(server) as url, _quiet_console():
            if (dask_address or dask_workers) and url is None and block_api() is not None:
                # ephemeral API + Dask = one temporary server per worker process (research 1.6)
                raise MedlinkError("Dask scale-out needs a real Prefect server: run "
                                   "`python -m flows.server start` or set PREFECT_API_URL")
            summary = medlink_delivery(str(config_path), run_id=run_id, truth=str(truth) if truth else None,
                                       dask_address=dask_address, dask_workers=dask_workers,
                                       attempt=attempt, skip_unchanged=skip_unchanged)
    finally:
        _PROGRESS.pop(attempt, None)
    summary.setdefault("orchestration", {}).update(
        {"prefect_api": "server" if url else "ephemeral", "seconds": round(time.perf_counter() - t0, 3)})
    return summary
