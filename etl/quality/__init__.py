"""Quality gates (Great Expectations) and row accounting.

    from etl.quality import run_gate, GateResult, reconcile

    res = run_gate(["raw_admission"], ingest_path, docs_dir=run_dir / "data_docs",
                   params={"rows_in": ..., "rows_quarantined": ..., "max_quarantine_share": 0.05},
                   data_asset_name="admission")
    res.raise_for_failure()        # GateFailed: "gate raw_admission failed: <expectation>(<column>) unexpected_count=N; ..."
    table = reconcile(ingest_summaries, clusters_path, release_doctors_path)

Suites are JSON in `expectations/` (written by `python -m etl.quality.build_suites`);
custom expectations in `etl.quality.expectations`; the linked gate's frame
from `etl.quality.linked.linked_frame`; the release gate's params from
`etl.quality.release.release_params`. Importing this package does not import
Great Expectations (about 3 s); the first gate does. See docs/quality.md.
"""

from etl.quality.gate import GateResult, run_gate
from etl.quality.reconcile import format_accounting, reconcile
from etl.quality.suites import SuiteError

__all__ = ["run_gate", "GateResult", "reconcile", "format_accounting", "SuiteError"]
