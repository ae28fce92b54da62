"""Prefect orchestration of the medlink stages (etl/pipeline.py).

Importing this package applies medlink's Prefect defaults (flows/settings.py)
before Prefect itself is imported, so every entry point is quiet and offline.
"""

from flows import settings as _settings  # noqa: F401  (side effect: env defaults)
