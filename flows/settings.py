"""Prefect settings medlink applies before `import prefect`.

`prefect.toml` at the repo root holds the same values, but Prefect only reads
it from the current working directory; these environment defaults apply
wherever `medlink` is started. Each is a default: a value already in the
environment wins. Why each one: docs/orchestration.md ("Settings").
"""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]

DEFAULTS: dict[str, str] = {
    # per-project SQLite DB and server state, not ~/.prefect
    "PREFECT_HOME": str(REPO_ROOT / ".prefect"),
    # no telemetry service in the server (also removes the "database is locked" traceback)
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    # no client SDK analytics
    "DO_NOT_TRACK": "1",
    # quiet console: no "Starting temporary server" / per-task INFO lines
    "PREFECT_LOGGING_LEVEL": "WARNING",
    # a fresh-home ephemeral start takes 8-18 s here; 20 s default is too tight on slow CI
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "60",
    # never print() into Prefect logs (a print could carry a row)
    "PREFECT_LOGGING_LOG_PRINTS": "false",
    # results are never persisted unless a task asks (ours never do)
    "PREFECT_RESULTS_PERSIST_BY_DEFAULT": "false",
    # no cloud/UI update checks
    "PREFECT_SERVER_UI_SHOW_PROMOTIONAL_CONTENT": "false",
}


def apply(env: dict | None = None) -> dict[str, str]:
    """Set each default not already set; returns what was set."""
    env = os.environ if env is None else env
    applied = {}
    for k, v in DEFAULTS.items():
        if k not in env:
            env[k] = v
            applied[k] = v
    Path(env["PREFECT_HOME"]).mkdir(parents=True, exist_ok=True)
    return applied


apply()
