"""medlink's custom Great Expectations (GX Core 1.x, pandas engine).

Importing this module registers every class below under its snake_case
name, so a JSON suite can say ``"type": "expect_column_values_to_not_look_like_email"``.
It must be imported before a suite that uses them is built: GX drops an
unknown type with a logged traceback and no error (research/prefect-gx.md
2.5, pitfall 1), which is why `etl.quality.suites` checks the counts.

Rules for every expectation here:
- results carry counts and shares only, never a cell value (a value may be
  personal data); the gate runs with ``partial_unexpected_count: 0``;
- every parameter has to be written in the JSON suite: GX does not store a
  default value (pitfall 2), so none of the parameters that carry meaning
  have one.

Identifier detectors work on the distinct values of a column (release
columns are mostly low-cardinality codes), then map back to rows.
"""

from __future__ import annotations

import re
from typing import Any, ClassVar, Dict, List, Optional, Sequence, Tuple

import numpy as np
import pandas as pd
from great_expectations.compatibility import pydantic
from great_expectations.core.metric_domain_types import MetricDomainTypes
from great_expectations.execution_engine import PandasExecutionEngine
from great_expectations.expectations.expectation import (
    BatchExpectation,
    ColumnMapExpectation,
    MulticolumnMapExpectation,
)
from great_expectations.expectations.metrics.map_metric_provider import (
    ColumnMapMetricProvider,
    MulticolumnMapMetricProvider,
    column_condition_partial,
    multicolumn_condition_partial,
)
from great_expectations.expectations.metrics.metric_provider import metric_value
from great_expectations.expectations.metrics.table_metric_provider import TableMetricProvider
from great_expectations.render import LegacyRendererType, RenderedStringTemplateContent
from great_expectations.render.renderer.renderer import renderer

from etl.quality.suites import column_kind


def _says(template: str):
    """A Data Docs sentence for a custom expectation ($names are its kwargs)."""
    names = set(re.findall(r"\$(\w+)", template))

    @renderer(renderer_type=LegacyRendererType.PRESCRIPTIVE)
    def _prescriptive_renderer(cls, configuration=None, result=None, runtime_configuration=None, **kwargs):
        cfg = configuration or (result.expectation_config if result is not None else None)
        kw = dict(cfg.kwargs) if cfg is not None else {}
        params = {n: (", ".join(map(str, kw[n])) if isinstance(kw.get(n), (list, tuple)) else kw.get(n))
                  for n in names}
        styling = (runtime_configuration or {}).get("styling", {})
        return [RenderedStringTemplateContent(content_block_type="string_template", string_template={
            "template": template, "params": params, "styling": styling})]

    return classmethod(_prescriptive_renderer)

# --------------------------------------------------------------------------- detectors
# Each detector takes a column (nulls already removed by GX) and returns a
# numpy bool array, True where the value LOOKS LIKE the identifier.

EMAIL_RE = re.compile(r"[A-Za-z0-9._%+'-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")
# UK postcode, outward + inward code, optional space (matched on upper-cased text)
POSTCODE_RE = re.compile(r"\b(?:GIR ?0AA|[A-Z]{1,2}[0-9][A-Z0-9]? ?[0-9][A-Z]{2})\b")
GMC_RE = re.compile(r"\b[0-9]{7}\b")
UCAS_RE = re.compile(r"\b(?:[0-9]{10}|[0-9]{3}-[0-9]{3}-[0-9]{4})\b")
NHS_CANDIDATE_RE = re.compile(r"\b[0-9]{3}[ -]?[0-9]{3}[ -]?[0-9]{4}\b")
# ISO 2001-02-03 (optionally with a time) or UK day-first 03/02/2001
FULL_DATE_RE = re.compile(
    r"\b(?:1[89]|20)[0-9]{2}-(?:0[1-9]|1[0-2])-(?:0[1-9]|[12][0-9]|3[01])\b"
    r"|\b(?:0?[1-9]|[12][0-9]|3[01])/(?:0?[1-9]|1[0-2])/(?:1[89]|20)[0-9]{2}\b")

GMC_INT_RANGE = (1_000_000, 9_999_999)
UCAS_INT_RANGE = (100_000_000, 9_999_999_999)
NHS_WEIGHTS = np.arange(10, 1, -1)


def nhs_number_valid(digits: str) -> bool:
    """True when a 10-digit string passes the NHS number modulus-11 check."""
    if len(digits) != 10 or not digits.isdigit():
        return False
    total = int(np.dot(NHS_WEIGHTS, [int(c) for c in digits[:9]]))
    check = 11 - total % 11
    if check == 11:
        check = 0
    return check != 10 and check == int(digits[9])


def _nhs_ints(values: np.ndarray) -> np.ndarray:
    """Vectorised mod-11 check on non-negative integers (as 10 digits)."""
    v = values.astype(np.int64)
    out = np.zeros(len(v), dtype=bool)
    cand = (v >= 100_000_000) & (v <= 9_999_999_999)   # only these can pass; digits of the rest unused
    if cand.any():
        c = v[cand]
        digits = np.stack([(c // 10 ** (9 - i)) % 10 for i in range(10)], axis=1)
        check = 11 - (digits[:, :9] @ NHS_WEIGHTS) % 11
        check = np.where(check == 11, 0, check)
        out[cand] = (check != 10) & (check == digits[:, 9])
    return out


def _text_nhs(s: str) -> bool:
    return any(nhs_number_valid(re.sub(r"[ -]", "", m)) for m in NHS_CANDIDATE_RE.findall(s))


def _factorised(column: pd.Series) -> tuple[np.ndarray, Any]:
    """(codes, distinct values) of a column; -1 codes are nulls. A Categorical's codes are
    already a factorisation (categories may include unused values, whose flags no row reads)."""
    if isinstance(column.dtype, pd.CategoricalDtype):
        return column.cat.codes.to_numpy(), column.cat.categories
    return pd.factorize(column, use_na_sentinel=True)


def _on_distinct(column: pd.Series, fn, factorised: tuple | None = None) -> np.ndarray:
    """Apply `fn` (Series[str] -> bool array) to the distinct values, map back to rows
    (null rows: False)."""
    codes, uniques = factorised if factorised is not None else _factorised(column)
    text = pd.Series(uniques, dtype=object).map(str)
    flags = np.asarray(fn(text), dtype=bool)
    if len(codes) and codes.min() >= 0:      # GX has removed the nulls: every row has a code
        return flags[codes]
    out = np.zeros(len(column), dtype=bool)
    known = codes >= 0
    out[known] = flags[codes[known]]
    return out


def _int_values(column: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """(integral values as int64, mask of rows holding one) for int/float columns."""
    arr = column.to_numpy(dtype="float64", na_value=np.nan)
    mask = np.isfinite(arr) & (np.floor(arr) == arr)
    ints = np.zeros(len(arr), dtype=np.int64)
    ints[mask] = arr[mask].astype(np.int64)
    return ints, mask


def detect(kind: str, column: pd.Series) -> np.ndarray:
    """True where a value looks like identifier `kind` (see DETECTORS)."""
    k = column_kind(column.dtype)
    n = len(column)
    if k == "bool":
        return np.zeros(n, dtype=bool)
    if k == "temporal":
        # a date/datetime column holds full dates by construction
        return np.ones(n, dtype=bool) if kind == "full_date" else np.zeros(n, dtype=bool)
    if k == "number":
        ints, mask = _int_values(column)
        if kind == "gmc_number":
            lo, hi = GMC_INT_RANGE
            return mask & (ints >= lo) & (ints <= hi)
        if kind == "ucas_id":
            lo, hi = UCAS_INT_RANGE
            return mask & (ints >= lo) & (ints <= hi)
        if kind == "nhs_number":
            return mask & _nhs_ints(np.where(mask, ints, -1))
        return np.zeros(n, dtype=bool)
    if kind == "email":
        return _on_distinct(column, lambda t: t.str.contains(EMAIL_RE, regex=True))
    if kind == "uk_postcode":
        return _on_distinct(column, lambda t: t.str.upper().str.contains(POSTCODE_RE, regex=True))
    if kind == "gmc_number":
        return _on_distinct(column, lambda t: t.str.contains(GMC_RE, regex=True))
    if kind == "ucas_id":
        return _on_distinct(column, lambda t: t.str.contains(UCAS_RE, regex=True))
    if kind == "nhs_number":
        def nhs(t: pd.Series) -> np.ndarray:
            cand = t.str.contains(NHS_CANDIDATE_RE, regex=True).to_numpy()
            out = np.zeros(len(t), dtype=bool)
            idx = np.flatnonzero(cand)
            out[idx] = [_text_nhs(t.iat[i]) for i in idx]
            return out
        return _on_distinct(column, nhs)
    if kind == "full_date":
        return _on_distinct(column, lambda t: t.str.contains(FULL_DATE_RE, regex=True))
    raise ValueError(f"unknown identifier kind {kind!r}")


DETECTORS = ("email", "uk_postcode", "gmc_number", "ucas_id", "nhs_number", "full_date")


# --------------------------------------------------------------------------- built-in regex, per distinct value

def _match_regex_on_distinct(column: pd.Series, regex: str) -> pd.Series:
    """GX's pandas ``column_values.match_regex`` is ``column.astype(str).str.contains(regex)``:
    one Python ``re.search`` per row (21 M calls, ~10 s, in the raw gates at 1M doctors;
    8 M for the events pseudonym column of the release gate). The result of a row is a
    function of its value only, so it is computed here with the same call on the
    column's distinct values and mapped back to every row: identical flags, counts and
    percentages. Only for columns that hold Python strings (a polars String column, as
    object or Categorical); anything else takes GX's own expression."""
    if len(column) and (isinstance(column.dtype, pd.CategoricalDtype) or column.dtype == object):
        codes, uniques = _factorised(column)
        # nulls: GX's astype(str) matches the regex against "None"/"nan", so those take its path
        if len(uniques) and (codes >= 0).all() and pd.api.types.infer_dtype(uniques, skipna=False) == "string":
            flags = _on_distinct(column, lambda t: t.str.contains(regex), (codes, uniques))
            return pd.Series(flags, index=column.index)
    return column.astype(str).str.contains(regex)


def _register_distinct_regex() -> None:
    import logging

    from great_expectations.expectations.metrics.column_map_metrics.column_values_match_regex import (
        ColumnValuesMatchRegex,
    )

    reg_log = logging.getLogger("great_expectations.expectations.registry")
    level = reg_log.level
    reg_log.setLevel(logging.ERROR)     # GX logs a warning when a provider is replaced
    try:
        class ColumnValuesMatchRegexDistinct(ColumnValuesMatchRegex):
            @column_condition_partial(engine=PandasExecutionEngine)
            def _pandas(cls, column, regex, **kwargs):
                return _match_regex_on_distinct(column, regex)
    finally:
        reg_log.setLevel(level)


_register_distinct_regex()


# --------------------------------------------------------------------------- identifier patterns

def _identifier_metric(kind: str):
    class _Metric(ColumnMapMetricProvider):
        condition_metric_name = f"column_values.medlink_not_{kind}"

        @column_condition_partial(engine=PandasExecutionEngine)
        def _pandas(cls, column, **kwargs):
            return pd.Series(~detect(kind, column), index=column.index)

    _Metric.__name__ = f"ColumnValuesNot_{kind}"
    return _Metric


for _k in DETECTORS:
    _identifier_metric(_k)


class ExpectColumnValuesToNotLookLikeEmail(ColumnMapExpectation):
    """No value contains an e-mail address."""
    _prescriptive_renderer = _says("values must not contain an e-mail address.")
    map_metric: ClassVar[str] = "column_values.medlink_not_email"
    success_keys: ClassVar[Tuple[str, ...]] = ("mostly",)


class ExpectColumnValuesToNotLookLikeUkPostcode(ColumnMapExpectation):
    """No value contains a UK postcode (full unit postcode, any case)."""
    _prescriptive_renderer = _says("values must not contain a UK postcode.")
    map_metric: ClassVar[str] = "column_values.medlink_not_uk_postcode"
    success_keys: ClassVar[Tuple[str, ...]] = ("mostly",)


class ExpectColumnValuesToNotLookLikeGmcNumber(ColumnMapExpectation):
    """No value contains a 7-digit number (text) or is a 7-digit integer."""
    _prescriptive_renderer = _says("values must not contain a 7-digit (GMC-like) number.")
    map_metric: ClassVar[str] = "column_values.medlink_not_gmc_number"
    success_keys: ClassVar[Tuple[str, ...]] = ("mostly",)


class ExpectColumnValuesToNotLookLikeUcasId(ColumnMapExpectation):
    """No value contains a 10-digit number (also 123-456-7890) or is a 9-10 digit integer."""
    _prescriptive_renderer = _says("values must not contain a 10-digit (UCAS-like) number.")
    map_metric: ClassVar[str] = "column_values.medlink_not_ucas_id"
    success_keys: ClassVar[Tuple[str, ...]] = ("mostly",)


class ExpectColumnValuesToNotLookLikeNhsNumber(ColumnMapExpectation):
    """No value contains a 10-digit number that passes the NHS modulus-11 check."""
    _prescriptive_renderer = _says("values must not contain a valid NHS number (modulus-11 check).")
    map_metric: ClassVar[str] = "column_values.medlink_not_nhs_number"
    success_keys: ClassVar[Tuple[str, ...]] = ("mostly",)


class ExpectColumnValuesToNotLookLikeFullDate(ColumnMapExpectation):
    """No value is a full (day-precision) date: ISO 2001-02-03, 03/02/2001, or a date/datetime column."""
    _prescriptive_renderer = _says("values must not be or contain a full date.")
    map_metric: ClassVar[str] = "column_values.medlink_not_full_date"
    success_keys: ClassVar[Tuple[str, ...]] = ("mostly",)


# --------------------------------------------------------------------------- k-anonymity

def class_sizes(frame: pd.DataFrame) -> np.ndarray:
    """Size of each row's equivalence class over all columns of `frame` (nulls are a value)."""
    if frame.shape[1] == 0:
        return np.full(len(frame), len(frame), dtype=np.int64)
    key = np.zeros(len(frame), dtype=np.int64)
    for name in frame.columns:
        codes, uniques = pd.factorize(frame[name], use_na_sentinel=False)
        width = max(len(uniques), 1)
        key = key * width + codes
        # keep the combined key small so it never overflows int64
        key = pd.factorize(key)[0].astype(np.int64)
    counts = np.bincount(key)
    return counts[key]


class MulticolumnValuesKAnonymous(MulticolumnMapMetricProvider):
    condition_metric_name = "multicolumn_values.medlink_k_anonymous"
    condition_domain_keys = ("batch_id", "table", "column_list", "row_condition",
                             "condition_parser", "ignore_row_if")
    condition_value_keys = ("k", "suppression_marker")

    @multicolumn_condition_partial(engine=PandasExecutionEngine)
    def _pandas(cls, column_list, k, suppression_marker="", **kwargs):
        ok = class_sizes(column_list) >= int(k)
        if suppression_marker:
            ok |= (column_list == suppression_marker).all(axis=1).to_numpy()
        return pd.Series(ok, index=column_list.index)


class ExpectColumnCombinationToBeKAnonymous(MulticolumnMapExpectation):
    """Every row shares its quasi-identifier values with at least k-1 other rows.

    Rows in an equivalence class smaller than k are the unexpected rows. A row
    whose quasi-identifiers are all `suppression_marker` (locally suppressed:
    it reveals none of them) passes; "" means no marker.
    """
    _prescriptive_renderer = _says("each combination of $column_list must be shared by at least $k rows (rows whose values are all '$suppression_marker' excepted).")
    column_list: List[str]
    k: int = pydantic.Field(ge=1)
    suppression_marker: str
    map_metric: ClassVar[str] = "multicolumn_values.medlink_k_anonymous"
    success_keys: ClassVar[Tuple[str, ...]] = ("mostly", "k", "suppression_marker")
    args_keys: ClassVar[Tuple[str, ...]] = ("column_list", "k")


# --------------------------------------------------------------------------- linked data

class MulticolumnValuesRecordOnceInClusters(MulticolumnMapMetricProvider):
    """column_list = [source, record_id, person_id, in_ingest] (see etl.quality.linked).

    A row passes when it is an ingested record (in_ingest true) that has a
    person (person_id not null) and its (source, record_id) occurs once.
    """
    condition_metric_name = "multicolumn_values.medlink_record_once_in_clusters"
    condition_domain_keys = ("batch_id", "table", "column_list", "row_condition",
                             "condition_parser", "ignore_row_if")

    @multicolumn_condition_partial(engine=PandasExecutionEngine)
    def _pandas(cls, column_list, **kwargs):
        source, record, person, in_ingest = list(column_list.columns)
        once = ~column_list.duplicated(subset=[source, record], keep=False)
        has_person = column_list[person].notna()
        ingested = column_list[in_ingest].fillna(False).astype(bool)
        return once & has_person & ingested


class ExpectIngestedRecordsToAppearOnceInClusters(MulticolumnMapExpectation):
    """Row reconciliation between ingest and linkage: every ingested record is
    in clusters exactly once, and clusters hold no record that was not ingested.

    column_list is [source, record_id, person_id, in_ingest]; unexpected rows
    are records lost by linkage (no person), duplicated, or invented.
    """
    _prescriptive_renderer = _says("every ingested record must appear in clusters exactly once, and clusters must hold no other record ($column_list).")
    column_list: List[str]
    map_metric: ClassVar[str] = "multicolumn_values.medlink_record_once_in_clusters"
    success_keys: ClassVar[Tuple[str, ...]] = ("mostly",)
    args_keys: ClassVar[Tuple[str, ...]] = ("column_list",)

    @pydantic.validator("column_list")
    def _validate_column_list(cls, v: List[str]) -> List[str]:
        if len(v) != 4:
            raise ValueError("column_list must be [source, record_id, person_id, in_ingest].")
        return v


class ColumnValuesClusterSizeBetween(ColumnMapMetricProvider):
    condition_metric_name = "column_values.medlink_cluster_size_between"
    condition_value_keys = ("min_value", "max_value")

    @column_condition_partial(engine=PandasExecutionEngine)
    def _pandas(cls, column, min_value, max_value, **kwargs):
        codes, _ = pd.factorize(column)
        sizes = np.bincount(codes[codes >= 0])[np.maximum(codes, 0)]
        return pd.Series((sizes >= int(min_value)) & (sizes <= int(max_value)), index=column.index)


class ExpectClusterSizesToBeBetween(ColumnMapExpectation):
    """Each person (value of `column`) holds between min_value and max_value
    records; unexpected rows are the records in clusters outside the bounds
    (a chain of hundreds of records is an over-merge)."""
    _prescriptive_renderer = _says("each $column must hold between $min_value and $max_value records.")
    min_value: int = pydantic.Field(ge=1)
    max_value: int = pydantic.Field(ge=1)
    map_metric: ClassVar[str] = "column_values.medlink_cluster_size_between"
    success_keys: ClassVar[Tuple[str, ...]] = ("mostly", "min_value", "max_value")
    args_keys: ClassVar[Tuple[str, ...]] = ("column", "min_value", "max_value")


class TableLinkRate(TableMetricProvider):
    """Share of `from_source` records whose person also has a `to_source` record."""
    metric_name = "table.medlink_link_rate"
    value_keys = ("source_column", "person_column", "from_source", "to_source")

    @metric_value(engine=PandasExecutionEngine)
    def _pandas(cls, execution_engine, metric_domain_kwargs, metric_value_kwargs, metrics,
                runtime_configuration):
        df, _, _ = execution_engine.get_compute_domain(
            domain_kwargs=metric_domain_kwargs, domain_type=MetricDomainTypes.TABLE)
        src = df[metric_value_kwargs["source_column"]]
        person = df[metric_value_kwargs["person_column"]]
        from_rows = (src == metric_value_kwargs["from_source"]).to_numpy() & person.notna().to_numpy()
        n_from = int(from_rows.sum())
        if n_from == 0:
            return {"rate": None, "records": 0, "linked": 0}
        targets = pd.unique(person[(src == metric_value_kwargs["to_source"]) & person.notna()])
        linked = int(person[from_rows].isin(targets).sum())
        return {"rate": linked / n_from, "records": n_from, "linked": linked}


class ExpectLinkRateToBeBetween(BatchExpectation):
    """The share of `from_source` records linked to a person who also has a
    `to_source` record lies in [min_value, max_value]. unexpected_count is the
    number of `from_source` records NOT linked, so a reader sees the size of
    the gap as well as the rate."""
    _prescriptive_renderer = _says("the share of $from_source records whose person has a $to_source record must be between $min_value and $max_value.")
    source_column: str
    person_column: str
    from_source: str
    to_source: str
    min_value: float = pydantic.Field(ge=0, le=1)
    max_value: float = pydantic.Field(ge=0, le=1)

    metric_dependencies: ClassVar[Tuple[str, ...]] = ("table.medlink_link_rate",)
    domain_keys: ClassVar[Tuple[str, ...]] = ("batch_id",)
    success_keys: ClassVar[Tuple[str, ...]] = ("source_column", "person_column", "from_source",
                                               "to_source", "min_value", "max_value")
    args_keys: ClassVar[Tuple[str, ...]] = ("from_source", "to_source", "min_value", "max_value")

    def get_validation_dependencies(self, execution_engine=None, runtime_configuration=None):
        deps = super().get_validation_dependencies(execution_engine, runtime_configuration)
        cfg = deps.get_metric_configuration("table.medlink_link_rate")
        cfg.metric_value_kwargs.update({k: getattr(self, k) for k in TableLinkRate.value_keys})
        return deps

    def _validate(self, metrics: Dict, runtime_configuration: Optional[dict] = None,
                  execution_engine=None):
        m = metrics["table.medlink_link_rate"]
        rate = m["rate"]
        ok = rate is not None and self.min_value <= rate <= self.max_value
        return {"success": bool(ok),
                "result": {"observed_value": None if rate is None else round(rate, 6),
                           "element_count": m["records"],
                           "unexpected_count": m["records"] - m["linked"],
                           "unexpected_percent": 100.0 * (1 - rate) if rate is not None else None,
                           "details": {"records": m["records"], "linked": m["linked"]}}}


# --------------------------------------------------------------------------- types

DTYPES_ATTR = "medlink_dtypes"


def _pandas_dtype_name(dtype) -> str:
    """Fallback when the frame did not come from polars: a polars-style name."""
    if pd.api.types.is_bool_dtype(dtype):
        return "Boolean"
    if pd.api.types.is_integer_dtype(dtype):
        return str(dtype).capitalize().replace("Uint", "UInt")
    if pd.api.types.is_float_dtype(dtype):
        return str(dtype).capitalize()
    if pd.api.types.is_datetime64_any_dtype(dtype):
        return "Datetime"
    if pd.api.types.is_string_dtype(dtype):
        return "String"
    return str(dtype)


class TableSourceDtypes(TableMetricProvider):
    """Column -> dtype name of the frame as the pipeline wrote it (polars),
    recorded by etl.quality.gate.to_pandas in DataFrame.attrs; pandas widens
    an integer column with nulls to float64, so its own dtype would lie."""
    metric_name = "table.medlink_source_dtypes"

    @metric_value(engine=PandasExecutionEngine)
    def _pandas(cls, execution_engine, metric_domain_kwargs, metric_value_kwargs, metrics,
                runtime_configuration):
        df, _, _ = execution_engine.get_compute_domain(
            domain_kwargs=metric_domain_kwargs, domain_type=MetricDomainTypes.TABLE)
        recorded = df.attrs.get(DTYPES_ATTR) or {}
        return {c: recorded.get(c) or _pandas_dtype_name(df[c].dtype) for c in df.columns}


class ExpectColumnDtypeToBeInSet(BatchExpectation):
    """The column's dtype, as written by the pipeline (polars names: String,
    Int64, Float64, Date, Boolean ...), is one of `dtypes`. The observed value
    is the dtype name (never data); a missing column fails."""
    _prescriptive_renderer = _says("$column must have a dtype in: $dtypes.")
    column: str
    dtypes: List[str]

    metric_dependencies: ClassVar[Tuple[str, ...]] = ("table.medlink_source_dtypes",)
    domain_keys: ClassVar[Tuple[str, ...]] = ("batch_id",)
    success_keys: ClassVar[Tuple[str, ...]] = ("column", "dtypes")
    args_keys: ClassVar[Tuple[str, ...]] = ("column", "dtypes")

    def _validate(self, metrics: Dict, runtime_configuration: Optional[dict] = None,
                  execution_engine=None):
        observed = metrics["table.medlink_source_dtypes"].get(self.column)
        base = observed.split("(", 1)[0] if observed else None
        ok = observed is not None and (observed in self.dtypes or base in self.dtypes)
        return {"success": bool(ok), "result": {"observed_value": observed or "(no such column)"}}


# --------------------------------------------------------------------------- raw extracts

class ExpectQuarantineToReconcile(BatchExpectation):
    """The ingested table plus the quarantined rows make up the delivered rows
    (row_count + rows_quarantined == rows_in), and the quarantined share is at
    most max_share. rows_in and rows_quarantined come from the ingest summary
    as gate params; unexpected_count is the number of quarantined rows."""
    _prescriptive_renderer = _says("ingested rows plus $rows_quarantined quarantined must equal $rows_in delivered, with at most $max_share of them quarantined.")
    rows_in: int = pydantic.Field(ge=0)
    rows_quarantined: int = pydantic.Field(ge=0)
    max_share: float = pydantic.Field(ge=0, le=1)

    metric_dependencies: ClassVar[Tuple[str, ...]] = ("table.row_count",)
    domain_keys: ClassVar[Tuple[str, ...]] = ("batch_id",)
    success_keys: ClassVar[Tuple[str, ...]] = ("rows_in", "rows_quarantined", "max_share")
    args_keys: ClassVar[Tuple[str, ...]] = ("rows_in", "rows_quarantined", "max_share")

    def _validate(self, metrics: Dict, runtime_configuration: Optional[dict] = None,
                  execution_engine=None):
        rows = int(metrics["table.row_count"])
        share = self.rows_quarantined / self.rows_in if self.rows_in else 0.0
        adds_up = rows + self.rows_quarantined == self.rows_in
        return {"success": bool(adds_up and share <= self.max_share),
                "result": {"observed_value": round(share, 6),
                           "element_count": self.rows_in,
                           "unexpected_count": self.rows_quarantined,
                           "unexpected_percent": 100.0 * share,
                           "details": {"rows_ingested": rows,
                                       "rows_unaccounted": self.rows_in - self.rows_quarantined - rows,
                                       "adds_up": adds_up}}}


CUSTOM_TYPES: tuple[str, ...] = (
    "expect_column_dtype_to_be_in_set",
    "expect_column_values_to_not_look_like_email",
    "expect_column_values_to_not_look_like_uk_postcode",
    "expect_column_values_to_not_look_like_gmc_number",
    "expect_column_values_to_not_look_like_ucas_id",
    "expect_column_values_to_not_look_like_nhs_number",
    "expect_column_values_to_not_look_like_full_date",
    "expect_column_combination_to_be_k_anonymous",
    "expect_ingested_records_to_appear_once_in_clusters",
    "expect_cluster_sizes_to_be_between",
    "expect_link_rate_to_be_between",
    "expect_quarantine_to_reconcile",
)
