"""One exclusive, advisory file lock (fcntl.flock) for the files several medlink runs
may write at once: the release directory, the linkage state, the restricted crosswalk.

A run waits up to `timeout` seconds, then stops with a one-line MedlinkError. The lock
is released when the block ends or the process dies (the kernel drops flock locks with
the file descriptor), so a killed run never leaves a stale lock behind."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import time
from collections.abc import Iterator
from pathlib import Path

from etl.errors import MedlinkError


@contextlib.contextmanager
def file_lock(path: Path, timeout: float, busy: str, *, mode: int = 0o600,
              file: str | None = None) -> Iterator[None]:
    """Hold an exclusive lock on `path` (created if missing); `busy` is the error text."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, mode)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as e:
                if e.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                    raise
                if time.monotonic() >= deadline:
                    raise MedlinkError(busy, file=file) from None
                time.sleep(min(0.2, max(0.01, deadline - time.monotonic())))
        yield
    finally:
        os.close(fd)
