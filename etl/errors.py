"""User-facing errors.

A `MedlinkError` is a mistake in the user's input (config, delivery file,
key). The CLI prints `str(err)` as one line and exits non-zero without a
traceback. Messages name the file, the key or column, and the row, but never
echo a cell value: a value may be personal data.
"""

from __future__ import annotations


class MedlinkError(Exception):
    """Base class of errors caused by user input; printed as one line."""

    exit_code = 2

    def __init__(self, message: str, *, file: str | None = None,
                 key: str | None = None, row: int | None = None):
        self.file, self.key, self.row = file, key, row
        where = []
        if file:
            where.append(str(file))
        if key:
            where.append(f"[{key}]")
        if row is not None:
            where.append(f"row {row}")
        prefix = " ".join(where)
        super().__init__(f"{prefix}: {message}" if prefix else message)


class ConfigError(MedlinkError):
    """The delivery config (or a file it names) is wrong."""


class DeliveryError(MedlinkError):
    """A delivered extract cannot be read as a whole (file-level defect)."""


class GovernanceError(MedlinkError):
    """A governance rule, key or release check refuses to go on."""

    exit_code = 3


class GateFailed(MedlinkError):
    """A quality gate failed; nothing was published."""

    exit_code = 4
