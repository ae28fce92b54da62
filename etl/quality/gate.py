"""Run a quality gate: JSON suites from `expectations/`, validated with GX
Core on one frame, results reduced to counts, Data Docs built offline.

GX has no polars datasource (research/prefect-gx.md 2.1), so the frame goes
to pandas once per gate (via Arrow; integer columns with nulls become
pandas nullable ints so their type survives) and is validated through one
in-memory pandas asset of one ephemeral context, shared by the process.
All suites of a gate are validated as ONE suite in ONE pass: each
`validate()` has a fixed cost of about a second on a million rows.

Results use ``{"result_format": "SUMMARY", "partial_unexpected_count": 0}``:
counts and shares, no sample values (pitfall 3). Exception messages and
tracebacks, which may quote a cell, are scrubbed before anything is kept.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from etl.errors import GateFailed
from etl.quality import suites as S

# BASIC gives unexpected_count/percent; SUMMARY would add index lists that GX
# computes by filtering the whole frame again (about 3 s per million rows)
RESULT_FORMAT = {"result_format": "BASIC", "partial_unexpected_count": 0,
                 "include_unexpected_rows": False, "return_unexpected_index_query": False}

# observed values we pass on: types and column names, never cell values
_SAFE_OBSERVED_TYPES = {
    "expect_table_columns_to_match_set", "expect_table_columns_to_match_ordered_list",
    "expect_column_values_to_be_in_type_list", "expect_column_values_to_be_of_type",
    "expect_table_row_count_to_be_between", "expect_table_row_count_to_equal",
    "expect_table_column_count_to_equal", "expect_table_column_count_to_be_between",
    "expect_column_dtype_to_be_in_set",
}

_lock = threading.RLock()
_state: dict[str, Any] = {}


# --------------------------------------------------------------------------- result

@dataclass
class GateResult:
    """Outcome of one gate. Holds counts and names only, never row values."""

    name: str
    suites: list[str]
    success: bool
    failures: list[dict]
    statistics: dict
    seconds: float
    rows: int
    docs_index: Path | None = None
    data_asset_name: str = ""
    validated_at: str = ""
    expectations: list[dict] = field(default_factory=list, repr=False)

    def to_dict(self) -> dict:
        return {"name": self.name, "suites": list(self.suites), "success": self.success,
                "rows": self.rows, "failures": [dict(f) for f in self.failures],
                "statistics": dict(self.statistics), "seconds": round(self.seconds, 3),
                "docs_index": str(self.docs_index) if self.docs_index else None,
                "data_asset_name": self.data_asset_name, "validated_at": self.validated_at}

    def summary_line(self) -> str:
        parts = []
        for f in self.failures:
            what = f["expectation"] + (f"({f['column']})" if f.get("column") else "")
            if f.get("error"):
                what += f" error={f['error']}"
            if f.get("unexpected_count") is not None:
                what += f" unexpected_count={f['unexpected_count']}"
            obs = f.get("observed")
            if isinstance(obs, dict):
                what += "".join(f" {k}={v}" for k, v in obs.items() if v)
            elif obs is not None and not isinstance(obs, (list, tuple)):
                what += f" observed={obs}"
            parts.append(what)
        return "; ".join(parts)

    def raise_for_failure(self) -> None:
        if not self.success:
            raise GateFailed(f"gate {self.name} failed: {self.summary_line()}")


# --------------------------------------------------------------------------- context

def _context():
    """The process's ephemeral GX context (built once; about 3 s of import)."""
    with _lock:
        if "ctx" not in _state:
            os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
            import great_expectations as gx
            from great_expectations.data_context.types.base import ProgressBarsConfig

            import etl.quality.expectations  # noqa: F401  (register custom types first)

            from great_expectations.execution_engine import pandas_execution_engine

            # GX md5-hashes every in-memory frame below 1 GB into the result's
            # batch markers: a digest of personal data, and ~1 s per million
            # rows. Nothing reads it; turn it off.
            pandas_execution_engine.HASH_THRESHOLD = 0
            ctx = gx.get_context(mode="ephemeral")
            ctx.variables.progress_bars = ProgressBarsConfig(globally=False)
            _state["ctx"] = ctx
            _state["source"] = ctx.data_sources.add_pandas("medlink_frames")
            _state["batch_defs"] = {}
            _state["suites"] = {}
            _state["stores"] = {}
        return _state["ctx"]


def _batch_definition(asset: str):
    ctx = _context()
    with _lock:
        bds = _state["batch_defs"]
        if asset not in bds:
            bds[asset] = (_state["source"].add_dataframe_asset(asset)
                          .add_batch_definition_whole_dataframe("whole"))
        return bds[asset]


NS_SAFE = (dt.date(1678, 1, 1), dt.date(2262, 1, 1))
# a string column with at most this share of distinct values goes to GX as a
# pandas Categorical: GX filters and copies the whole frame several times per
# expectation, and copying/null-testing codes is ~50x cheaper than objects
CATEGORICAL_MAX_SHARE = 0.2


def to_pandas(frame: pl.DataFrame):
    """polars -> numpy-backed pandas, the form GX's pandas metrics are fastest
    on (its range check is vectorised only for int64/float64/datetime64[ns]).

    Dates become datetime64[ns] (when in range); an integer column with nulls
    becomes float64 as usual, so the polars dtype of every column is recorded
    in ``DataFrame.attrs["medlink_dtypes"]`` for the dtype expectation.
    """
    from etl.quality.expectations import DTYPES_ATTR

    dtypes = {c: str(t) for c, t in frame.schema.items()}
    casts = []
    for c, t in frame.schema.items():
        if t == pl.Date or isinstance(t, pl.Datetime):
            lo, hi = frame[c].min(), frame[c].max()
            lo = lo.date() if isinstance(lo, dt.datetime) else lo
            hi = hi.date() if isinstance(hi, dt.datetime) else hi
            if lo is None or (NS_SAFE[0] <= lo and hi < NS_SAFE[1]):
                casts.append(pl.col(c).cast(pl.Datetime("ns")))
        elif t in (pl.Int8, pl.Int16, pl.Int32, pl.UInt8, pl.UInt16, pl.UInt32):
            casts.append(pl.col(c).cast(pl.Int64))
        elif t == pl.String and frame.height and frame[c].approx_n_unique() <= CATEGORICAL_MAX_SHARE * frame.height:
            casts.append(pl.col(c).cast(pl.Categorical))
    pdf = (frame.with_columns(casts) if casts else frame).to_pandas()
    pdf.attrs[DTYPES_ATTR] = dtypes
    return pdf


def _suite_for(name: str, bound: list[dict]):
    """Built GX suites, cached per process by their bound content."""
    key = S.fingerprint(name, bound)
    with _lock:
        cache = _state["suites"]
        if key not in cache:
            if len(cache) > 256:
                cache.clear()
            cache[key] = S.build_gx_suite(name, bound)
        return cache[key]


def _column_group(e: dict) -> str | None:
    """The column a single-column map expectation reads, else None (table group)."""
    from great_expectations.expectations.expectation import ColumnMapExpectation
    from great_expectations.expectations.registry import get_expectation_impl

    col = e["kwargs"].get("column")
    if isinstance(col, str) and issubclass(get_expectation_impl(e["type"]), ColumnMapExpectation):
        return col
    return None


def _validate(batch_def, pdf, bound: list[dict], name: str):
    """Validate `bound` on `pdf` and return ONE ExpectationSuiteValidationResult.

    GX's pandas engine filters and copies the whole batch frame for every
    column map metric (`df[df[col].notnull()]`, twice per expectation), so
    the cost grows with the frame's width times the number of expectations:
    101 expectations on 1M rows x 21 columns took 5.3 s as one batch. Each
    column's map expectations therefore run on a one-column frame (one
    validate() per column, about 0.05-0.2 s each; 2.6 s in all); table-level
    and multicolumn expectations run once on the whole frame. The results are
    merged back in suite order, so reports and Data Docs see one suite.
    """
    from great_expectations.core.expectation_validation_result import ExpectationSuiteValidationResult

    groups: dict[str | None, list[dict]] = {}
    for i, e in enumerate(bound):
        e = {**e, "meta": {**e["meta"], "medlink_order": i}}
        key = _column_group(e)
        if key is not None and key not in pdf.columns:
            key = None      # let GX report the missing column
        groups.setdefault(key, []).append(e)
    results, meta = [], None
    for key, exps in groups.items():
        frame = pdf if key is None else pdf[[key]]
        vr = batch_def.get_batch(batch_parameters={"dataframe": frame}).validate(
            _suite_for(name, exps), result_format=RESULT_FORMAT)
        if key is None or meta is None:
            meta = vr.meta
        results += vr.results
    results.sort(key=lambda r: r.expectation_config.meta.get("medlink_order", 0))
    for r in results:
        r.expectation_config.meta.pop("medlink_order", None)
    n_ok = sum(1 for r in results if r.success)
    stats = {"evaluated_expectations": len(results), "successful_expectations": n_ok,
             "unsuccessful_expectations": len(results) - n_ok,
             "success_percent": 100.0 * n_ok / len(results) if results else None}
    return ExpectationSuiteValidationResult(success=n_ok == len(results), results=results,
                                            suite_name=name, statistics=stats, meta=meta or {})


# --------------------------------------------------------------------------- run

def run_gate(suite_names: list[str], frame: pl.DataFrame | Path | str, *,
             docs_dir: Path | None = None, params: dict | None = None,
             data_asset_name: str = "frame", suites_dir: Path | None = None) -> GateResult:
    """Validate `frame` (a polars DataFrame or a Parquet path) against the
    named suites of `expectations/`, as one GX validation.

    `params` fill the suites' ``$PARAMETER`` slots (defaults in each suite's
    ``meta.medlink.params``; ``today`` defaults to the current date).
    With `docs_dir`, the result is stored there (`results/`, counts only) and
    the Data Docs site in `docs_dir` is rebuilt, offline-readable.
    """
    t0 = time.perf_counter()
    if isinstance(suite_names, str):
        suite_names = [suite_names]
    if isinstance(frame, (str, Path)):
        frame = pl.read_parquet(frame)
    _context()
    pdf = to_pandas(frame)
    kinds = {c: S.column_kind(pdf[c].dtype) for c in pdf.columns}
    p = {"today": dt.date.today(), **(params or {})}
    if isinstance(p["today"], dt.date):  # GX compares datetime64 columns with datetimes only
        p["today"] = dt.datetime.combine(p["today"], dt.time()).isoformat()
    raws = [S.load_suite_json(name, suites_dir) for name in suite_names]
    S.check_params(raws, params)
    bound: list[dict] = []
    for name, raw in zip(suite_names, raws):
        for e in S.bind(raw, p, kinds):
            e["meta"] = {**e["meta"], "suite": name}
            bound.append(e)
    with _lock:     # one GX context per process: gates in threads take turns
        vr = _validate(_batch_definition(data_asset_name), pdf, bound, "+".join(suite_names))
    _scrub(vr)
    failures = [_failure(r) for r in vr.results if not r.success]
    stats = {k: (float(v) if isinstance(v, float) else v) for k, v in dict(vr.statistics).items()}
    validated_at = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    docs_index = None
    if docs_dir is not None:
        from etl.quality.docs import store_and_build
        docs_index = store_and_build(_context(), vr, Path(docs_dir), "+".join(suite_names),
                                     data_asset_name)
    return GateResult(name="+".join(suite_names), suites=list(suite_names),
                      success=bool(vr.success), failures=failures, statistics=stats,
                      seconds=time.perf_counter() - t0, rows=frame.height, docs_index=docs_index,
                      data_asset_name=data_asset_name, validated_at=validated_at,
                      expectations=[{"type": e["type"], "suite": e["meta"]["suite"]} for e in bound])


def _scrub(vr) -> None:
    """Remove what may quote a cell (partial lists, exception text and
    tracebacks) and GX's fingerprint of the whole frame (a digest of data)."""
    markers = (vr.meta or {}).get("batch_markers")
    if isinstance(markers, dict):
        markers.pop("pandas_data_fingerprint", None)
    for r in vr.results:
        res = r.result or {}
        for k in ("partial_unexpected_list", "partial_unexpected_counts", "partial_unexpected_index_list",
                  "unexpected_list", "unexpected_index_list", "unexpected_index_query"):
            res.pop(k, None)
        info = r.exception_info or {}
        if isinstance(info, dict):
            infos = info.values() if "raised_exception" not in info else [info]
            for i in infos:
                if isinstance(i, dict) and i.get("raised_exception"):
                    i["exception_message"] = _safe_message(i.get("exception_message"),
                                                           i.get("exception_traceback"))
                    i["exception_traceback"] = i["exception_message"]  # GX renders it; never None


_SAFE_MESSAGES = re.compile(r'^(?:Error: )?(The column "[^"]*" in BatchData does not exist\.|column_list must [\w ]+)$')


def _safe_message(message: str | None, traceback: str | None) -> str:
    """Keep GX's own configuration errors (a missing column ...); anything
    else may quote a value and is reduced to its exception class name."""
    msg = (message or "").strip()
    if _SAFE_MESSAGES.match(msg):
        return msg
    last = (traceback or "").strip().splitlines()[-1:] or [""]
    cls = last[0].split(":", 1)[0].strip().rsplit(".", 1)[-1] or "Exception"
    return f"{cls} (message withheld: it may quote data)"


def _failure(r) -> dict:
    cfg = r.expectation_config
    kw = cfg.kwargs
    res = r.result or {}
    col = kw.get("column")
    if col is None and kw.get("column_list") is not None:
        col = ",".join(kw["column_list"])
    if col is None and kw.get("from_source"):
        col = f"{kw['from_source']}->{kw['to_source']}"
    obs = res.get("observed_value")
    if cfg.type == "expect_table_columns_to_match_set":
        mism = (res.get("details") or {}).get("mismatched") or {}
        obs = {"missing": list(mism.get("missing") or []), "unexpected": list(mism.get("unexpected") or [])}
    elif not (isinstance(obs, (int, float, bool)) or cfg.type in _SAFE_OBSERVED_TYPES):
        obs = None
    error = None
    info = r.exception_info or {}
    infos = [info] if "raised_exception" in info else list(info.values())
    for i in infos:
        if isinstance(i, dict) and i.get("raised_exception"):
            error = (i.get("exception_message") or "error")[:200]
            break
    count = res.get("unexpected_count")
    pct = res.get("unexpected_percent")
    return {"suite": (cfg.meta or {}).get("suite"), "expectation": cfg.type, "column": col,
            "unexpected_count": int(count) if count is not None else None,
            "unexpected_percent": round(float(pct), 4) if pct is not None else None,
            "observed": obs, "error": error}
