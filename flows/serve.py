"""`medlink serve`: run the delivery flow on a cron schedule.

Scheduling needs a real Prefect server: the ephemeral one cannot schedule
("Cannot schedule flows on an ephemeral server", research/prefect-gx.md 1.4).
`serve` uses PREFECT_API_URL if set, else a running medlink-managed server,
else starts one in the background (flows/server.py) and leaves it running.
Stop with Ctrl-C (Prefect pauses the deployment); `python -m flows.server stop`
stops the background server.
"""

from __future__ import annotations

from flows import settings  # noqa: F401  (must precede `import prefect`)

import os
import sys
from pathlib import Path

from flows import server


def serve(config_path: str, cron: str = "0 2 * * *", *, name: str | None = None,
          timezone: str = "Europe/London") -> None:
    """Serve `medlink-delivery` for `config_path` on `cron` until interrupted."""
    from etl.config import load as load_config
    cfg = load_config(config_path)           # fail fast (one-line ConfigError) before any server
    url = server.find_api_url()
    if url is None:
        print("medlink: starting a background Prefect server (UI http://127.0.0.1:4200) ...",
              file=sys.stderr, flush=True)
        url = server.start()
    os.environ["PREFECT_API_URL"] = url
    from prefect.settings import PREFECT_API_URL, temporary_settings
    from prefect.schedules import Cron
    from flows.delivery import _quiet_console, medlink_delivery
    dep = name or f"{cfg.delivery}-nightly"
    print(f"medlink: serving deployment 'medlink-delivery/{dep}' on '{cron}' ({timezone}) "
          f"via {url}; Ctrl-C to stop", file=sys.stderr, flush=True)
    # a long-running service keeps run errors on its console; GX chatter is dropped
    with temporary_settings(updates={PREFECT_API_URL: url}), _quiet_console(drop_run_errors=False):
        medlink_delivery.serve(name=dep, schedules=[Cron(cron, timezone=timezone)],
                               # a scheduled run of a delivery that has not changed since the
                               # current release publishes nothing (flows/delivery.py)
                               parameters={"config_path": str(Path(cfg.path).resolve()), "skip_unchanged": True},
                               description=f"medlink delivery {cfg.delivery} ({cfg.path})",
                               tags=["medlink"], print_starting_message=False)


if __name__ == "__main__":
    import argparse
    p = argparse.ArgumentParser(prog="python -m flows.serve")
    p.add_argument("config")
    p.add_argument("--cron", default="0 2 * * *")
    a = p.parse_args()
    serve(a.config, a.cron)
