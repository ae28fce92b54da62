"""Load the JSON suites in `expectations/`, check them, and bind them to a
gate's params and to the frame's columns.

A suite file is plain GX 1.x suite JSON (`name`, `meta`, `expectations` of
`{"type", "kwargs", "meta"}`) with three small additions, resolved here
before GX sees the suite:

- ``{"$PARAMETER": "name"}`` anywhere in kwargs is replaced by the gate
  param of that name (GX's own syntax; we resolve it ourselves so it also
  works in domain kwargs such as `column_list`). Defaults live in
  ``meta.medlink.params``; a default of ``null`` means the caller must
  pass it.
- ``"column": {"$EACH_COLUMN": kind, "except": [...]}`` expands to one
  expectation per frame column of that kind (`text`, `number`, `temporal`,
  `any`, or a `+`-joined mix such as `text+number`), minus `except`.
- ``"column": {"$EACH_KEY": "param"}`` expands to one expectation per key of
  a dict param; ``{"$EACH_VALUE": "param"}`` (optionally with ``"key"``)
  is that key's value.
- ``"meta": {"skip_if_column_absent": true}``: drop the expectation when the
  frame has no such column (the exact column set is checked by its own
  expectation, so an absent column is reported once, not once per check).

Guard (research/prefect-gx.md 2.5, pitfall 1): GX silently drops an
expectation whose type it does not know. Every type is looked up in the GX
registry when the file is loaded, and the built suite must hold as many
expectations as the bound JSON; otherwise `SuiteError`.
"""

from __future__ import annotations

import copy
import hashlib
import json
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable

from etl.errors import ConfigError

from etl.paths import EXPECTATIONS_DIR


class SuiteError(ConfigError):
    """A suite file is missing, malformed, or lost expectations on loading."""


def suite_path(name: str, folder: Path | None = None) -> Path:
    return (folder or EXPECTATIONS_DIR) / f"{name}.json"


@lru_cache(maxsize=64)
def _read(path: str, mtime_ns: int) -> dict:
    p = Path(path)
    try:
        raw = json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise SuiteError(f"not valid JSON (line {e.lineno})", file=str(p)) from None
    if not isinstance(raw, dict) or not isinstance(raw.get("expectations"), list):
        raise SuiteError("a suite needs a list 'expectations'", file=str(p))
    check_types(raw, p)
    return raw


def load_suite_json(name: str, folder: Path | None = None) -> dict:
    """The suite's JSON as a dict (a fresh copy; cached per file version)."""
    p = suite_path(name, folder)
    if not p.is_file():
        raise SuiteError(f"no such suite {name!r}", file=str(p))
    return copy.deepcopy(_read(str(p), p.stat().st_mtime_ns))


def check_types(raw: dict, path: Path | str = "") -> None:
    """Every expectation type must be registered with GX (our custom ones are
    registered by importing etl.quality.expectations)."""
    from great_expectations.expectations.registry import get_expectation_impl

    import etl.quality.expectations  # noqa: F401  (registers the custom types)

    for i, e in enumerate(raw["expectations"]):
        t = e.get("type") if isinstance(e, dict) else None
        try:
            get_expectation_impl(t)
        except Exception:
            raise SuiteError(f"expectation {i} has unknown type {t!r}; "
                             "GX would drop it silently", file=str(path)) from None


def suite_params(raw: dict) -> dict:
    return dict(((raw.get("meta") or {}).get("medlink") or {}).get("params") or {})


# --------------------------------------------------------------------------- binding

def column_kind(dtype) -> str:
    """bool, temporal, number or text: what `$EACH_COLUMN` kinds select and what the
    identifier detectors (etl.quality.expectations.detect) branch on."""
    import pandas as pd
    if pd.api.types.is_bool_dtype(dtype):
        return "bool"
    if pd.api.types.is_datetime64_any_dtype(dtype) or isinstance(dtype, pd.PeriodDtype):
        return "temporal"
    if pd.api.types.is_numeric_dtype(dtype):
        return "number"
    return "text"


BUILTIN_PARAMS = {"today"}


def _resolve(value: Any, params: dict, missing: set, used: set, each: tuple | None) -> Any:
    if isinstance(value, dict):
        if "$PARAMETER" in value:
            name = value["$PARAMETER"]
            used.add(name)
            v = params.get(name)
            if v is not None and "key" in value:
                try:
                    v = v[value["key"]]
                except (KeyError, IndexError, TypeError):
                    v = None
            if v is None:
                missing.add(name if "key" not in value else f"{name}[{value['key']}]")
            return v
        if "$EACH_VALUE" in value:
            if each is None:
                raise SuiteError("$EACH_VALUE used without $EACH_KEY on 'column'")
            v = each[1]
            return v[value["key"]] if "key" in value else v
        return {k: _resolve(v, params, missing, used, each) for k, v in value.items()}
    if isinstance(value, list):
        return [_resolve(v, params, missing, used, each) for v in value]
    return value


def merge_params(defaults: dict, given: dict | None) -> dict:
    """Given params over the suite's defaults; a dict param is merged key by
    key (so `value_sets={"sex": [...]}` replaces only that column's set)."""
    out = dict(defaults)
    for k, v in (given or {}).items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = {**out[k], **v}
        else:
            out[k] = v
    return out


def known_params(raw: dict) -> set[str]:
    """Every param a suite declares or refers to."""
    names = set(suite_params(raw))

    def walk(v):
        if isinstance(v, dict):
            for k in ("$PARAMETER", "$EACH_KEY"):
                if isinstance(v.get(k), str):
                    names.add(v[k])
            for x in v.values():
                walk(x)
        elif isinstance(v, list):
            for x in v:
                walk(x)
    walk(raw["expectations"])
    return names


def check_params(raws: list[dict], params: dict | None) -> None:
    """A param no suite of the gate knows is an error: a typo in a config key
    must not silently leave a default in force."""
    known = set().union(*(known_params(r) for r in raws)) | BUILTIN_PARAMS
    unknown = set(params or {}) - known
    if unknown:
        names = "+".join(str(r.get("name")) for r in raws)
        raise SuiteError(f"gate {names} has no params named: {', '.join(sorted(unknown))}"
                         f" (known: {', '.join(sorted(known))})")


def bind(raw: dict, params: dict | None, columns: dict[str, str]) -> list[dict]:
    """Resolve params and column templates. `columns` maps each frame column
    to its kind (see `column_kind`). Returns plain expectation dicts."""
    defaults = suite_params(raw)
    merged = merge_params(defaults, params)
    missing: set[str] = set()
    used: set[str] = set()
    out: list[dict] = []
    for e in raw["expectations"]:
        kwargs = e.get("kwargs") or {}
        meta = dict(e.get("meta") or {})
        col = kwargs.get("column")
        if isinstance(col, dict) and "$EACH_COLUMN" in col:
            kinds = set(str(col["$EACH_COLUMN"]).split("+"))
            skip = set(_resolve(col.get("except") or [], merged, missing, used, None) or [])
            targets = [(c, None) for c, k in columns.items()
                       if ("any" in kinds or k in kinds) and c not in skip]
        elif isinstance(col, dict) and "$EACH_KEY" in col:
            name = col["$EACH_KEY"]
            used.add(name)
            targets = [(k, v) for k, v in (merged.get(name) or {}).items() if v is not None]
        else:
            targets = [(None, None)]
        for target, value in targets:
            each = (target, value) if value is not None else None
            kw = _resolve({k: v for k, v in kwargs.items()
                           if not (k == "column" and target is not None)}, merged, missing, used, each)
            if target is not None:
                kw = {"column": target, **kw}
            if meta.get("skip_if_column_absent") and kw.get("column") not in columns:
                continue
            out.append({"type": e["type"], "kwargs": kw, "meta": meta})
    if missing:
        raise SuiteError(f"suite {raw.get('name')!r} needs params: {', '.join(sorted(missing))}")
    return out


def build_gx_suite(name: str, expectations: list[dict], meta: dict | None = None):
    """A GX ExpectationSuite from bound dicts, with the count guard."""
    import great_expectations as gx

    import etl.quality.expectations  # noqa: F401

    suite = gx.ExpectationSuite(name=name, expectations=copy.deepcopy(expectations),
                                meta=meta or {})
    if len(suite.expectations) != len(expectations):
        kept = {e.expectation_type for e in suite.expectations}
        lost = sorted({e["type"] for e in expectations} - kept) or ["(same type, bad kwargs)"]
        raise SuiteError(f"suite {name!r}: GX kept {len(suite.expectations)} of "
                         f"{len(expectations)} expectations; dropped: {', '.join(lost)}")
    return suite


def fingerprint(*parts: Iterable) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]
