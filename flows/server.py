"""A local Prefect API server that medlink can start, find, reuse and stop.

Why: with no `PREFECT_API_URL`, every Python process starts its own temporary
("ephemeral") server, which costs 8-18 s per process here and cannot run
schedules. One background `prefect server start` on 127.0.0.1 costs that once;
each later run only connects (research/prefect-gx.md 1.2).

    python -m flows.server start    # background server on 127.0.0.1:4200, waits for /api/health
    python -m flows.server status
    python -m flows.server stop     # stops only the server this module started (by pid)

The server's pid and URL are kept in $PREFECT_HOME/medlink-server.json; its
log in $PREFECT_HOME/server.log.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from flows import settings

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 4200


def _home() -> Path:
    return Path(os.environ.get("PREFECT_HOME", settings.DEFAULTS["PREFECT_HOME"]))


def _state_file() -> Path:
    return _home() / "medlink-server.json"


def healthy(api_url: str, timeout: float = 1.0) -> bool:
    """True when `<api_url>/health` answers 200."""
    try:
        with urllib.request.urlopen(api_url.rstrip("/") + "/health", timeout=timeout) as r:
            return r.status == 200
    except Exception:
        return False


def managed() -> dict | None:
    """The medlink-started server's {pid, url} if its state file exists and it answers."""
    f = _state_file()
    if not f.is_file():
        return None
    try:
        st = json.loads(f.read_text())
    except (OSError, ValueError):
        return None
    return st if healthy(st.get("url", "")) else None


def find_api_url() -> str | None:
    """The API to use: `PREFECT_API_URL` if set, else a running medlink-managed
    server, else None (the caller falls back to the ephemeral server)."""
    url = os.environ.get("PREFECT_API_URL")
    if url:
        return url
    st = managed()
    return st["url"] if st else None


def start(host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, timeout: float = 90.0) -> str:
    """Start `prefect server start` in the background (analytics off, project
    PREFECT_HOME) unless one already answers; wait for /api/health; return the API URL."""
    url = f"http://{host}:{port}/api"
    if healthy(url):
        return url
    home = _home()
    home.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    settings.apply(env)
    env.pop("PREFECT_API_URL", None)
    log = open(home / "server.log", "ab")
    proc = subprocess.Popen(
        [sys.executable, "-m", "prefect", "server", "start", "--host", host, "--port", str(port)],
        env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        start_new_session=True, cwd=str(home))
    _state_file().write_text(json.dumps({"pid": proc.pid, "url": url, "started": time.time()}))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if healthy(url, timeout=0.5):
            return url
        if proc.poll() is not None:
            raise RuntimeError(f"prefect server exited with code {proc.returncode}; see {home / 'server.log'}")
        time.sleep(0.25)
    raise RuntimeError(f"prefect server did not answer {url}/health within {timeout:.0f} s; "
                       f"see {home / 'server.log'}")


def stop(timeout: float = 15.0) -> bool:
    """Stop the server this module started (by its recorded pid). True if one was stopped."""
    f = _state_file()
    if not f.is_file():
        return False
    try:
        st = json.loads(f.read_text())
        pid = int(st["pid"])
    except (OSError, ValueError, KeyError):
        f.unlink(missing_ok=True)
        return False
    stopped = False
    try:
        os.kill(pid, signal.SIGTERM)
        stopped = True
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            os.kill(pid, 0)
            time.sleep(0.2)
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    except PermissionError:
        stopped = False
    try:  # reap if it is our child
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass
    f.unlink(missing_ok=True)
    return stopped


def main(argv: list[str] | None = None) -> int:
    import argparse
    p = argparse.ArgumentParser(prog="python -m flows.server", description=__doc__.splitlines()[0])
    p.add_argument("action", choices=["start", "stop", "status"])
    p.add_argument("--host", default=DEFAULT_HOST)
    p.add_argument("--port", type=int, default=DEFAULT_PORT)
    a = p.parse_args(argv)
    if a.action == "start":
        t0 = time.perf_counter()
        url = start(a.host, a.port)
        print(f"Prefect server up at {url} ({time.perf_counter() - t0:.1f} s); "
              f"UI http://{a.host}:{a.port}\nexport PREFECT_API_URL={url}")
    elif a.action == "stop":
        print("stopped" if stop() else "no medlink-managed server")
    else:
        st = managed()
        print(f"up: {st['url']} (pid {st['pid']})" if st else "no medlink-managed server answering")
        return 0 if st else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
