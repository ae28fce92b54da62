"""Params of the release gate, read from the governance rules file
(schemas/rules/<profile>.yaml), so the gate checks what the rules promise:

- `release_columns`: the exact column set: every field of the table that is
  not dropped, under its output name; the pseudonym under its output name;
  the suppression flag column;
- `qi_columns`, `k`, `suppression_marker`: k-anonymity on QI set A (output names);
- `value_sets`: for generalised fields, every label their hierarchy can emit
  (plus the hide "*" and the suppression marker); for kept fields, the
  contract's allowed values; `ranges` from the contract's min/max;
- `pid_column`, `pii_scan_exclude`.

`rules` may be the parsed YAML (a mapping), an object holding it as `.raw`,
or a path to the file.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from etl.paths import CONTRACTS_DIR, RULES_DIR

STAR = "*"


def rules_dict(rules: Any) -> tuple[dict, Path]:
    """(the rules as a plain dict, the file they came from if known)."""
    if isinstance(rules, (str, Path)):
        p = Path(rules)
        if not p.is_file():
            p = Path(RULES_DIR) / f"{rules}.yaml"
        return yaml.safe_load(p.read_text(encoding="utf-8")), p
    path = Path(getattr(rules, "path", None) or getattr(rules, "file", None) or Path(RULES_DIR) / "rules.yaml")
    if isinstance(rules, Mapping):
        return dict(rules), path
    raw = getattr(rules, "raw", None)
    if isinstance(raw, Mapping):
        return dict(raw), path
    if dataclasses.is_dataclass(rules):
        return dataclasses.asdict(rules), path
    raise TypeError("rules must be a mapping, an object with .raw, or a path")


def _contract_fields() -> dict[str, dict]:
    """Each canonical field over all contracts: the union of allowed values and
    the widest min/max (a doctor row may take a field from any source)."""
    out: dict[str, dict] = {}
    for p in sorted(Path(CONTRACTS_DIR).glob("*.yaml")):
        for name, spec in (yaml.safe_load(p.read_text(encoding="utf-8")).get("fields") or {}).items():
            cur = out.setdefault(name, dict(spec))
            if cur is spec:
                continue
            if cur.get("allowed") is not None and spec.get("allowed") is not None:
                cur["allowed"] = list(dict.fromkeys([*cur["allowed"], *spec["allowed"]]))
            elif spec.get("allowed") is None:
                cur["allowed"] = None
            for k, pick in (("min", min), ("max", max)):
                a, b = cur.get(k), spec.get(k)
                cur[k] = pick(a, b) if a is not None and b is not None else None
    return out


def _labels(name: str, raw_h: Any, file: Path) -> set[str] | None:
    """Every label a hierarchy can emit, or None when not known in advance."""
    try:
        from etl.governance.hierarchies import load_hierarchy
        h = load_hierarchy(name, raw_h, file)
        if h.type not in ("map", "lookup", "bands"):     # year bands, quantiles: labels depend on data
            return None
        labels = set(h.labels())
    except Exception:  # noqa: BLE001 - unknown hierarchy shape: no value set, not a crash
        return None
    return labels if labels - {STAR} else None


def release_params(rules: Any, stage_dir: Path | None = None, table: str = "doctors") -> dict:
    """Gate params for `release` (table doctors) or `release_events` (table events)."""
    raw, file = rules_dict(rules)
    pseudo = raw.get("pseudonym") or {}
    pid = pseudo.get("output", "doctor_pid")
    tables = raw.get("tables") or {}
    fields: dict = (tables.get(table) or {}).get("fields") or {}
    hier = raw.get("hierarchies") or {}
    kan = raw.get("k_anonymity") or {}
    supp = kan.get("suppression") or {}
    marker = str(supp.get("marker") or "")
    contract = _contract_fields()

    def out_name(f: str) -> str | None:
        spec = fields.get(f) or {}
        t = spec.get("treatment")
        if t == "drop":
            return None
        if t == "pseudonymise":
            return pid
        return spec.get("output") or f

    if callable(getattr(rules, "allowed_columns", None)):
        columns = list(rules.allowed_columns(table))       # etl.governance.rules.Rules: the allow-list
    else:
        columns = [c for c in (out_name(f) for f in fields) if c]
        if table == kan.get("table", "doctors") and supp.get("flag_column"):
            columns.append(supp["flag_column"])

    params: dict = {"release_columns": columns, "pid_column": pid, "pii_scan_exclude": [pid]}
    if pseudo.get("token_bytes"):
        # random_token and keyed_release_hmac both write lower-case hex
        params["pid_regex"] = f"^[0-9a-f]{{{2 * int(pseudo['token_bytes'])}}}$"
    if table != "doctors":
        return params

    value_sets: dict[str, list | None] = {}
    ranges: dict[str, dict | None] = {}
    qi = set(kan.get("quasi_identifiers") or [])
    for f, spec in fields.items():
        col = out_name(f)
        if not col or col == pid:
            continue
        t = spec.get("treatment")
        if t == "generalise":
            labels = _labels(spec.get("hierarchy", ""), hier.get(spec.get("hierarchy", "")), file)
            if labels is not None:
                labels |= {STAR} | ({marker} if marker and f in qi else set())
            value_sets[col] = sorted(labels) if labels is not None else None
            ranges[col] = None
        elif t == "keep":
            c = contract.get(f) or {}
            if c.get("allowed") is not None:
                value_sets[col] = [str(v) for v in c["allowed"]] + ([marker] if marker and f in qi else [])
            if f in qi:
                # a kept QI becomes text so that it can hold the suppression marker: no numeric range
                ranges[col] = None
            elif c.get("type") in ("int", "float") and (c.get("min") is not None or c.get("max") is not None):
                ranges[col] = {"min_value": c.get("min"), "max_value": c.get("max")}
    params.update({
        "qi_columns": [c for c in (out_name(f) for f in kan.get("quasi_identifiers") or []) if c],
        "k": int(kan.get("k", 10)),
        "suppression_marker": marker,
        "value_sets": value_sets,
        "ranges": ranges,
    })
    return params
