"""Write the GX suites in `expectations/` from the extract contracts and the
gate definitions below.

    python -m etl.quality.build_suites           # rewrite expectations/*.json
    python -m etl.quality.build_suites --check   # exit 1 if a file is out of date

The JSON files are what the gates read and are committed; a test checks
they equal what this script writes, so a contract edit that is not rebuilt
fails CI. Every parameter is written out, defaults included (GX does not
store defaults: research/prefect-gx.md 2.5, pitfall 2).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import yaml

from etl.paths import CONTRACTS_DIR, EXPECTATIONS_DIR, REFERENCE_DIR

GENERATED_BY = "python -m etl.quality.build_suites"
SOURCES = ["admission", "training", "registration"]

# polars dtype names accepted for each contract type
DTYPES = {
    "str": ["String"],
    "int": ["Int64", "Int32", "Int16", "Int8", "UInt64", "UInt32", "UInt16", "UInt8"],
    "float": ["Float64", "Float32"],
    "date": ["Date"],
    "bool": ["Boolean"],
}
# standardised forms (docs/architecture.md, etl/standardise.py)
FORMATS = {
    "ucas_id": (r"^[0-9]{10}$", "UCAS Personal ID: 10 digits"),
    "gmc_number": (r"^[0-9]{7}$", "GMC reference number: 7 digits"),
    "postcode": (r"^[A-Z0-9]+(?: [A-Z0-9]{3})?$", "upper case; UK postcodes as 'AB1 2CD'"),
    "email": (r"^[^A-Z\s]+$", "lower case, no spaces"),
    "name": (r"^[^\sa-z]+(?: [^\sa-z]+)*$", "upper case, single spaces, trimmed"),
}
REFERENCE_SETS = {"medical_school": "medical_schools", "specialty": "specialties"}
MAP = {"mostly": 1.0}


def _e(type_: str, meta: dict | None = None, **kwargs) -> dict:
    out = {"type": type_, "kwargs": kwargs}
    if meta:
        out["meta"] = meta
    return out


def _param(name: str, key=None) -> dict:
    return {"$PARAMETER": name} if key is None else {"$PARAMETER": name, "key": key}


def reference_codes(table: str) -> list[str]:
    with (Path(REFERENCE_DIR) / f"{table}.csv").open(newline="", encoding="utf-8") as fh:
        return [r["code"] for r in csv.DictReader(fh)]


def _date_bound(v) -> str:
    return f"{v}T00:00:00"


def raw_suite(contract: dict) -> dict:
    name = contract["extract"]
    fields: dict = contract["fields"]
    columns = ["source", "record_id", "row_number"] + [f for f in fields if f != "record_id"]
    ex = [
        _e("expect_table_row_count_to_be_between", min_value=1, max_value=None),
        _e("expect_table_columns_to_match_set", column_set=columns, exact_match=True),
        _e("expect_quarantine_to_reconcile", rows_in=_param("rows_in"),
           rows_quarantined=_param("rows_quarantined"), max_share=_param("max_quarantine_share")),
        _e("expect_column_dtype_to_be_in_set", column="source", dtypes=DTYPES["str"]),
        _e("expect_column_values_to_be_in_set", column="source", value_set=[name], **MAP),
        _e("expect_column_dtype_to_be_in_set", column="row_number", dtypes=DTYPES["int"]),
        _e("expect_column_values_to_not_be_null", column="row_number", **MAP),
        _e("expect_column_values_to_be_unique", column="row_number", **MAP),
        _e("expect_column_values_to_be_between", column="row_number", min_value=1, max_value=None,
           strict_min=False, strict_max=False, **MAP),
    ]
    for col, spec in fields.items():
        why = {"contract": f"{name}.{col}"}
        ex.append(_e("expect_column_dtype_to_be_in_set", why, column=col, dtypes=DTYPES[spec["type"]]))
        if spec.get("required"):
            ex.append(_e("expect_column_values_to_not_be_null", why, column=col, **MAP))
        if spec.get("unique"):
            ex.append(_e("expect_column_values_to_be_unique", why, column=col, **MAP))
        allowed = spec.get("allowed")
        if spec.get("standardise") in REFERENCE_SETS:
            allowed = reference_codes(REFERENCE_SETS[spec["standardise"]])
        if allowed is not None:
            ex.append(_e("expect_column_values_to_be_in_set", why, column=col,
                         value_set=[str(v) for v in allowed], **MAP))
        lo, hi = spec.get("min"), spec.get("max")
        if spec["type"] == "date":
            lo = _date_bound(lo) if lo is not None else None
            hi = _param("today") if spec.get("max_today") else (_date_bound(hi) if hi is not None else None)
        if lo is not None or hi is not None:
            ex.append(_e("expect_column_values_to_be_between", why, column=col, min_value=lo, max_value=hi,
                         strict_min=False, strict_max=False, **MAP))
        if spec.get("standardise") in FORMATS:
            regex, what = FORMATS[spec["standardise"]]
            ex.append(_e("expect_column_values_to_match_regex", {**why, "format": what},
                         column=col, regex=regex, **MAP))
    return {
        "name": f"raw_{name}",
        "meta": {"medlink": {
            "gate": "raw",
            "description": f"Contract of the {name} extract (schemas/contracts/{name}.yaml) on the "
                           "ingested, standardised canonical frame; row-level defects were already "
                           "quarantined by ingest, so any failure here is a pipeline or contract fault.",
            "generated_by": GENERATED_BY,
            "params": {"rows_in": None, "rows_quarantined": None, "max_quarantine_share": 0.05,
                       "today": None},
        }},
        "expectations": ex,
    }


LINK_RATES = {
    # from_to: (default min, default max); share of `from` records whose person has a `to` record
    "training_to_admission": (0.5, 1.0),
    "training_to_registration": (0.3, 1.0),
    "registration_to_training": (0.3, 1.0),
    "admission_to_training": (0.2, 1.0),
}


def linked_suite() -> dict:
    cols = ["source", "record_id", "person_id", "in_ingest"]
    ex = [
        _e("expect_table_row_count_to_be_between", min_value=1, max_value=None),
        _e("expect_table_columns_to_match_set", column_set=cols, exact_match=True),
        _e("expect_ingested_records_to_appear_once_in_clusters", column_list=cols,
           ignore_row_if="never", **MAP),
        _e("expect_compound_columns_to_be_unique", {"check": "one person per record"},
           column_list=["source", "record_id"], ignore_row_if="never", **MAP),
        _e("expect_column_values_to_be_in_set", column="source", value_set=SOURCES, **MAP),
        _e("expect_cluster_sizes_to_be_between", column="person_id", min_value=1,
           max_value=_param("max_cluster_size"), **MAP),
    ]
    for pair in LINK_RATES:
        a, b = pair.split("_to_")
        ex.append(_e("expect_link_rate_to_be_between", source_column="source", person_column="person_id",
                     from_source=a, to_source=b, min_value=_param(pair, 0), max_value=_param(pair, 1)))
    return {
        "name": "linked",
        "meta": {"medlink": {
            "gate": "linked",
            "description": "Linked restricted data: every ingested record in clusters exactly once "
                           "(etl.quality.linked.linked_frame builds the frame), cluster sizes bounded, "
                           "link rates between sources within configured bounds "
                           "(config quality.link_rate_bounds: {<from>_to_<to>: [min, max], max_cluster_size: n}).",
            "generated_by": GENERATED_BY,
            "params": {"max_cluster_size": 30, **{k: list(v) for k, v in LINK_RATES.items()}},
        }},
        "expectations": ex,
    }


PII_SCANS = [
    ("expect_column_values_to_not_look_like_email", "text"),
    ("expect_column_values_to_not_look_like_uk_postcode", "text"),
    ("expect_column_values_to_not_look_like_gmc_number", "text+number"),
    ("expect_column_values_to_not_look_like_ucas_id", "text+number"),
    ("expect_column_values_to_not_look_like_nhs_number", "text+number"),
    ("expect_column_values_to_not_look_like_full_date", "text+temporal"),
]

RELEASE_VALUE_SETS = {
    "sex": ["M", "F", "X", "U"],
    "in_admission": [True, False],
    "in_training": [True, False],
    "in_registration": [True, False],
    "imd_nation": ["England", "Scotland", "Wales", "NI"],
    "course_type": ["SEM", "GEP", "EMDP"],
    "course_outcome": ["graduated", "withdrew", "ongoing"],
    "allocation_method": ["score", "PIA"],
    "arcp_f1_outcome": ["1", "2", "3", "4", "5", "8", "N"],
    "arcp_f2_outcome": ["1", "2", "3", "4", "5", "6", "8", "N"],
}
RELEASE_RANGES = {
    "link_probability": {"min_value": 0, "max_value": 1},
    "imd_quintile": {"min_value": 1, "max_value": 5},
    "polar4_quintile": {"min_value": 1, "max_value": 5},
    "epm_decile": {"min_value": 1, "max_value": 10},
}


def _release_common() -> list[dict]:
    pid = _param("pid_column")
    return [
        _e("expect_table_row_count_to_be_between", min_value=1, max_value=None),
        _e("expect_table_columns_to_match_set", column_set=_param("release_columns"), exact_match=True),
        _e("expect_column_values_to_not_be_null", column=pid, **MAP),
        _e("expect_column_values_to_match_regex", {"check": "pseudonym is a random token"},
           column=pid, regex=_param("pid_regex"), **MAP),
    ] + [
        _e(t, {"check": "no identifier pattern in any column"},
           column={"$EACH_COLUMN": kinds, "except": _param("pii_scan_exclude")}, **MAP)
        for t, kinds in PII_SCANS
    ]


def release_suite() -> dict:
    ex = _release_common()
    ex[3:3] = [_e("expect_column_values_to_be_unique", column=_param("pid_column"), **MAP)]
    ex += [
        _e("expect_column_values_to_be_in_set", {"skip_if_column_absent": True},
           column={"$EACH_KEY": "value_sets"}, value_set={"$EACH_VALUE": "value_sets"}, **MAP),
        _e("expect_column_values_to_be_between", {"skip_if_column_absent": True},
           column={"$EACH_KEY": "ranges"}, min_value={"$EACH_VALUE": "ranges", "key": "min_value"},
           max_value={"$EACH_VALUE": "ranges", "key": "max_value"}, strict_min=False, strict_max=False, **MAP),
        _e("expect_column_combination_to_be_k_anonymous", column_list=_param("qi_columns"), k=_param("k"),
           suppression_marker=_param("suppression_marker"), ignore_row_if="never", **MAP),
    ]
    return {
        "name": "release",
        "meta": {"medlink": {
            "gate": "release",
            "description": "Release doctors table: exact column set, one row per pseudonym, value sets "
                           "and ranges, no identifier pattern in any column, k-anonymity on the "
                           "quasi-identifiers (params from the governance rules: etl.quality.release).",
            "generated_by": GENERATED_BY,
            "params": {"release_columns": None, "qi_columns": None, "k": 10, "suppression_marker": "",
                       "pid_column": "doctor_pid", "pid_regex": r"^[A-Za-z0-9_-]{16,64}$",
                       "pii_scan_exclude": ["doctor_pid"],
                       "value_sets": RELEASE_VALUE_SETS, "ranges": RELEASE_RANGES},
        }},
        "expectations": ex,
    }


def release_events_suite() -> dict:
    return {
        "name": "release_events",
        "meta": {"medlink": {
            "gate": "release",
            "description": "Release events table: exact column set, every row has a pseudonym, "
                           "no identifier pattern in any column.",
            "generated_by": GENERATED_BY,
            "params": {"release_columns": None, "pid_column": "doctor_pid",
                       "pid_regex": r"^[A-Za-z0-9_-]{16,64}$", "pii_scan_exclude": ["doctor_pid"]},
        }},
        "expectations": _release_common(),
    }


def build_all() -> dict[str, dict]:
    suites = {}
    for p in sorted(Path(CONTRACTS_DIR).glob("*.yaml")):
        contract = yaml.safe_load(p.read_text(encoding="utf-8"))
        s = raw_suite(contract)
        suites[s["name"]] = s
    for s in (linked_suite(), release_suite(), release_events_suite()):
        suites[s["name"]] = s
    return suites


def render(suite: dict) -> str:
    return json.dumps(suite, indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="exit 1 if a suite file is out of date")
    ap.add_argument("--out", type=Path, default=Path(EXPECTATIONS_DIR))
    a = ap.parse_args(argv)
    stale = []
    for name, suite in build_all().items():
        path = a.out / f"{name}.json"
        text = render(suite)
        if a.check:
            if not path.is_file() or path.read_text(encoding="utf-8") != text:
                stale.append(path.name)
        else:
            a.out.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
            print(f"wrote {path} ({len(suite['expectations'])} expectations)")
    if stale:
        print(f"out of date: {', '.join(stale)}; run {GENERATED_BY}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
