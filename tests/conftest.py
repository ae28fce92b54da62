"""Shared pytest fixtures.

- Before anything imports Prefect, PREFECT_HOME points at a fresh temporary
  directory for the whole session (tests never touch the project's .prefect/)
  and Prefect's analytics are off.
- `prefect_server` (session): one background `prefect server start` on a free
  port in that home (~10 s once; cheaper than prefect_test_harness and it can
  schedule and serve Dask workers), PREFECT_API_URL set for the session,
  stopped by pid at the end. Yields {"url", "home"}.
"""

from __future__ import annotations

import os
import socket
import tempfile
from pathlib import Path

import pytest

_HOME = Path(tempfile.mkdtemp(prefix="medlink-prefect-home-"))
os.environ["PREFECT_HOME"] = str(_HOME)
os.environ.pop("PREFECT_API_URL", None)
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def prefect_server():
    from flows import server
    url = server.start("127.0.0.1", _free_port(), timeout=120)
    os.environ["PREFECT_API_URL"] = url
    try:
        yield {"url": url, "home": _HOME}
    finally:
        # deliver queued logs/events before the server goes away
        # (APILogWorker.drain_all: APILogHandler.flush is an instance method, and logs
        # left queued are retried against the stopped server for a minute at exit)
        from prefect.events.worker import EventsWorker
        from prefect.logging.handlers import APILogWorker
        APILogWorker.drain_all(timeout=10)
        EventsWorker.drain_all(timeout=5)
        os.environ.pop("PREFECT_API_URL", None)
        server.stop(timeout=5)   # test server: SIGKILL after 5 s is fine

