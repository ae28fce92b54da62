"""The `medlink` command.

User mistakes (a bad config, an unreadable extract, a missing key, a failed
quality gate) print one line on stderr and exit non-zero, with no traceback.
Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from etl import __version__
from etl.errors import ConfigError, MedlinkError


def _progress(quiet: bool):
    start = time.perf_counter()

    def say(msg: str) -> None:
        if not quiet:
            print(f"[{time.perf_counter() - start:7.1f}s] {msg}", file=sys.stderr, flush=True)
    return say


# --------------------------------------------------------------------------- commands

def cmd_generate(a) -> int:
    from etl.synth import generate, realism_report
    say = _progress(a.quiet)
    say(f"generating {a.doctors:,} doctors (seed {a.seed}) into {a.out}")
    summary = generate(a.doctors, a.seed, Path(a.out))
    say(f"done in {summary.get('seconds', 0):.1f}s")
    print(json.dumps(summary, indent=2, default=str))
    if a.realism_report:
        print(realism_report(Path(a.out)))
    return 0


def cmd_check(a) -> int:
    from etl import config
    cfg = config.load(a.config)
    for s in cfg.sources.values():
        print(f"{s.name}: {s.path} ({s.format}, contract {s.contract.name}, "
              f"{len(s.columns)} mapped, {len(s.ignore_columns)} ignored)")
    print(f"output: {cfg.output_dir}")
    print("config OK")
    return 0


def cmd_link(a) -> int:
    from etl import config
    from etl.ingest import ingest
    from etl.linkage import link, load_spec
    cfg = config.load(a.config)
    say = _progress(a.quiet)
    out = Path(a.out)
    ingests = []
    for name, src in cfg.sources.items():
        say(f"ingest {name}")
        ingests.append(ingest(src, out / "ingest" / f"{name}.parquet", out / "quarantine" / f"{name}.parquet",
                              max_quarantine_share=float(cfg.quality.get("max_quarantine_share", 0.5))))
    spec = load_spec(cfg.linkage, cfg.path.parent)
    inputs = {s["source"]: Path(s["path"]) for s in ingests}
    truth = Path(a.truth) if a.truth else None
    if a.incremental or cfg.linkage_mode == "incremental":
        # the state lives in OUT/linkage_state: built by the first run, linked onto (and
        # committed) by every later one; there is no release to wait for here
        from etl.incremental import State, init_state, link_incremental
        state_dir = out / "linkage_state"
        if State(state_dir).exists():
            say(f"link onto {state_dir} (merge policy {cfg.merge_policy})")
            summary = link_incremental(inputs, state_dir, spec, out, policy=cfg.merge_policy, truth=truth,
                                       progress=say)
        else:
            say(f"link and build {state_dir}")
            summary = init_state(inputs, spec, state_dir, out, truth=truth, progress=say)
        summary["state_dir"] = str(state_dir)
    else:
        say("link")
        summary = link(inputs, spec, out, truth=truth, progress=say)
    summary["ingest"] = [{k: s[k] for k in ("source", "rows_in", "rows_ingested", "rows_quarantined")}
                         for s in ingests]
    print(json.dumps(summary, indent=2, default=str))
    return 0


def cmd_run(a) -> int:
    from etl import config
    cfg = config.load(a.config)
    truth = Path(a.truth) if a.truth else None
    if a.no_prefect:
        if a.skip_unchanged:
            raise ConfigError("needs the Prefect flow (it compares the run "
                              "fingerprints the flow records); drop --no-prefect", key="--skip-unchanged")
        from etl.pipeline import run_all
        summary = run_all(cfg, truth=truth, progress=_progress(a.quiet))
    else:
        from flows.delivery import run_delivery
        summary = run_delivery(str(cfg.path), truth=truth, progress=not a.quiet, skip_unchanged=a.skip_unchanged)
    if summary.get("skipped"):
        print(f"delivery {summary.get('delivery')} unchanged since release {summary['release_id']}: "
              f"nothing run or published ({summary['release_dir']})")
    else:
        _print_run_summary(summary)
    if a.json:
        Path(a.json).write_text(json.dumps(summary, indent=2, default=str))
    return 0


def _print_run_summary(s: dict) -> None:
    print(f"run {s.get('run_id')} of delivery {s.get('delivery')}")
    for i in s.get("ingest", []):
        print(f"  {i['source']:<13} rows {i['rows_in']:>9,}  ingested {i['rows_ingested']:>9,}  "
              f"quarantined {i['rows_quarantined']:>7,}")
    link = s.get("link") or {}
    if link:
        keys = [k for k in ("pairs_scored", "links", "clusters", "persons") if isinstance(link.get(k), int)]
        if keys:
            print("  linkage: " + ", ".join(f"{k} {link[k]:,}" for k in keys))
    if link.get("mode") == "incremental":
        inc = [k for k in ("new_records", "changed_records", "unchanged_records", "joined_existing", "new_persons",
                           "merges", "splits", "held", "persons_total") if isinstance(link.get(k), int)]
        print(f"  incremental ({link.get('state')}, merge policy {link.get('policy')}): "
              + ", ".join(f"{k.replace('_', ' ')} {link[k]:,}" for k in inc))
    acc = (s.get("publish") or {}).get("delivery_accounting") or {}
    if acc:
        n = {k: (f"{v:,}" if isinstance(v, int) and not isinstance(v, bool) else str(v)) for k, v in acc.items()}
        print(f"  this delivery: rows {n.get('rows_in')}, quarantined {n.get('quarantined')}, "
              f"in clusters {n.get('in_clusters')}, records published {n.get('records_published')}, "
              f"reconciled {n.get('reconciled')}")
    pub = s.get("publish") or {}
    if pub:
        print(f"  release: {pub.get('release_dir')}")


def cmd_verify(a) -> int:
    from etl.publish import verify
    problems = verify(Path(a.release))
    if problems:
        for p in problems:
            print(f"medlink: verify: {p}", file=sys.stderr)
        return 1
    print(f"{a.release}: manifest OK")
    return 0


def cmd_report(a) -> int:
    from etl.report import write_report
    summary = write_report(Path(a.release), Path(a.out) if a.out else None)
    print(json.dumps(summary, indent=2, default=str))
    return 0


def cmd_serve(a) -> int:
    from flows.serve import serve
    serve(a.config, cron=a.cron)
    return 0


# --------------------------------------------------------------------------- parser

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="medlink",
        description="Link, pseudonymise and publish UK doctors' career records "
                    "(admission, training, registration) for stratification research.")
    p.add_argument("--version", action="version", version=f"medlink {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    g = sub.add_parser("generate", help="write a synthetic delivery with ground truth",
                       description="Write admission, training and registration extracts as a real "
                                   "delivery arrives, plus truth.parquet and delivery.yaml.")
    g.add_argument("--doctors", type=int, required=True, help="number of doctors (admitted students)")
    g.add_argument("--seed", type=int, default=1, help="random seed (same seed, same bytes)")
    g.add_argument("--out", required=True, help="directory to write into")
    g.add_argument("--realism-report", action="store_true",
                   help="print each error rate and marginal beside its published target")
    g.add_argument("--quiet", action="store_true")
    g.set_defaults(func=cmd_generate)

    c = sub.add_parser("check", help="validate a delivery config and its files",
                       description="Load the config, check every key, file and column; change nothing.")
    c.add_argument("--config", required=True, help="delivery config YAML")
    c.set_defaults(func=cmd_check)

    k = sub.add_parser("link", help="ingest and link the extracts of a delivery (restricted zone)",
                       description="Ingest the extracts a config describes and link them; writes "
                                   "clusters.parquet, pairs.parquet, model.json and the linkage report into OUT.")
    k.add_argument("--config", required=True, help="delivery config YAML")
    k.add_argument("--out", required=True, help="output directory (restricted zone)")
    k.add_argument("--truth", help="optional ground truth (source, record_id, person_id) for accuracy figures")
    k.add_argument("--incremental", action="store_true",
                   help="link onto the linkage state in OUT/linkage_state (built by the first run), "
                        "as with linkage.mode: incremental in the config")
    k.add_argument("--quiet", action="store_true")
    k.set_defaults(func=cmd_link)

    r = sub.add_parser("run", help="run the whole pipeline on a delivery (Prefect flow)",
                       description="Ingest, validate, link, pseudonymise, protect, validate and publish "
                                   "a release, as a Prefect flow (or directly with --no-prefect).")
    r.add_argument("--config", required=True, help="delivery config YAML")
    r.add_argument("--truth", help="optional ground truth for linkage accuracy in the report")
    r.add_argument("--no-prefect", action="store_true", help="run the stages directly, without Prefect")
    r.add_argument("--json", help="also write the run summary to this JSON file")
    r.add_argument("--skip-unchanged", action="store_true",
                   help="run nothing when the current release was built from this delivery as it is now "
                        "(same files, config, rules, code and key), as `medlink serve` does")
    r.add_argument("--quiet", action="store_true")
    r.set_defaults(func=cmd_run)

    s = sub.add_parser("serve", help="run the delivery flow on a cron schedule",
                       description="Serve the delivery flow with a cron schedule against a running "
                                   "Prefect server (see docs/orchestration.md).")
    s.add_argument("--config", required=True, help="delivery config YAML")
    s.add_argument("--cron", default="0 2 * * *", help="cron schedule (default 02:00 daily)")
    s.set_defaults(func=cmd_serve)

    v = sub.add_parser("verify", help="check a release against its manifest",
                       description="Recompute checksums, row counts and schemas of a release and "
                                   "compare them with its manifest.json.")
    v.add_argument("release", help="release directory")
    v.set_defaults(func=cmd_verify)

    p_rep = sub.add_parser("report", help="write the stratification report for a release",
                           description="Specialty group by SES measure with disclosure control, "
                                       "odds ratios against general practice, linkage caveats.")
    p_rep.add_argument("release", help="release directory")
    p_rep.add_argument("--out", help="directory for the report (default RELEASE/report)")
    p_rep.set_defaults(func=cmd_report)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except MedlinkError as e:
        print(f"medlink: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("medlink: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
