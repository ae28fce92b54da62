"""Data dictionary of a release, generated from what is actually in it.

For every Parquet table of the release and every column: meaning, Arrow
type, allowed values (the observed distinct values for low-cardinality
columns, else range for numbers/dates), governance class and the treatment
(generalisation) applied. Meanings come, in order, from the governance rules
file (`description`), the source contracts (`schemas/contracts/*.yaml`) and
the descriptions below for derived columns. Written as Markdown and as
standalone HTML.

The rules file is read defensively: any mapping of column name -> spec under
`fields`, `columns`, `variables` or `tables.<table>` is used, and a spec may
name its release column by `output`, `as`, `rename` or `release_name`; keys
read from a spec: `class`, `treatment`/`action`, `hierarchy`/`bands`/`
generalise`, `description`.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow.parquet as pq
import yaml

from etl.paths import CONTRACTS_DIR

LOW_CARDINALITY = 25

DERIVED = {
    "doctor_pid": "Per-release pseudonym of the doctor (random token; cannot be joined across releases)",
    "person_id": "Internal person key (restricted zone only)",
    "first_cycle_year": "First UCAS cycle (year of entry applied for) in the admission extract",
    "n_admission_rows": "Number of admission cycles the person applied in",
    "entry_year": "Year the medical course started (training extract, else placed admission cycle)",
    "age_at_entry": "Age in completed years on 1 September of the entry year",
    "first_offer_year": "Recruitment year of the first specialty offer (offered or accepted)",
    "first_offer_specialty": "Specialty code of the first offer (accepted preferred within a year)",
    "first_offer_specialty_group": "Specialty group of the first offer (schemas/reference/specialties.csv)",
    "specialty_group": "Specialty group of the first offer (schemas/reference/specialties.csv)",
    "n_specialty_applications": "Number of specialty applications",
    "n_offers": "Number of specialty offers (offered or accepted)",
    "in_admission": "Person has at least one admission (UCAS) record",
    "in_training": "Person has a training (medical school / Foundation) record",
    "in_registration": "Person has a registration (specialty recruitment / GMC register) record",
    "link_method": "How the person's records were linked: deterministic, probabilistic, single-source, unknown",
    "link_probability": "Lowest match probability among the links joining the person's records (null: no scored link)",
    "age_band": "Age at entry, banded", "age_at_entry_band": "Age at entry, banded",
    "cohort_band": "Entry cohort, banded", "school_group": "Type of school last attended, grouped",
    "ethnicity_5": "Ethnicity, 5 groups (HESA codes grouped)", "ethnicity_9": "Ethnicity, 9 groups",
    "nssec_3": "NS-SEC grouped: higher (01-02), intermediate (03-04), lower (05-07), other (08-09)",
    "fp_score_band": "UKFP total score, banded", "independent_school": "Attended an independent (fee-paying) school",
    "event_type": "Career event: application, admission, graduation, foundation_start, arcp_f1, arcp_f2, "
                  "specialty_application, specialty_offer, full_registration, specialist_register, gp_register",
    "event_date": "Date of the event (1 Sept / 1 Aug of the year when only the year is known; "
                  "may be coarsened by the governance rules)",
    "detail": "Event code: admission outcome, school, specialty code, ARCP outcome",
    "source": "Extract the row came from",
    # row_accounting
    "rows_in": "Data rows delivered", "quarantined": "Rows quarantined at ingest (contract breaches)",
    "ingested": "Rows standardised and kept", "in_clusters": "Ingested rows assigned to a person",
    "persons": "Distinct persons with a row from this source",
    "persons_published": "Persons in the release with a row from this source",
    "quarantine_reasons": "Quarantined rows by column and reason (each row under its first reason)",
    "linked": "Records whose person also has a record in another source",
    "records_published": "Records whose person has a doctor row in the release",
    "reconciled": "rows_in == quarantined + ingested and every ingested record is in exactly one cluster",
    # linkage_quality
    "section": "Part of the linkage report (e.g. overall, by_subgroup, pairwise)",
    "subgroup": "Subgroup variable (e.g. imd_quintile, ethnicity) or 'all'",
    "level": "Subgroup value or 'all'", "metric": "Metric name (link_rate, precision, recall, f1, n ...)",
    "value": "Metric value",
}


def _contract_fields() -> dict[str, dict]:
    out: dict[str, dict] = {}
    for p in sorted(CONTRACTS_DIR.glob("*.yaml")):
        try:
            doc = yaml.safe_load(p.read_text()) or {}
        except (OSError, yaml.YAMLError):
            continue
        for name, spec in (doc.get("fields") or {}).items():
            if isinstance(spec, dict):
                e = out.setdefault(name, {"sources": []})
                e["sources"].append(doc.get("extract", p.stem))
                e.setdefault("description", spec.get("description"))
                e.setdefault("class", spec.get("class"))
                if spec.get("allowed"):
                    e.setdefault("allowed", [str(a) for a in spec["allowed"]])
    return out


def _rule_index(rules: dict | None) -> dict[str, dict]:
    """column name -> rule spec, from whatever shape the rules file has."""
    idx: dict[str, dict] = {}
    if not isinstance(rules, dict):
        return idx

    def add(mapping):
        if isinstance(mapping, list):
            mapping = {m.get("name") or m.get("field"): m for m in mapping if isinstance(m, dict)}
        if not isinstance(mapping, dict):
            return
        for name, spec in mapping.items():
            if not isinstance(spec, dict) or not name:
                continue
            idx.setdefault(str(name), spec)
            for k in ("output", "as", "rename", "release_name"):
                if isinstance(spec.get(k), str):
                    idx.setdefault(spec[k], {**spec, "_from": name})

    for key in ("fields", "columns", "variables"):
        add(rules.get(key))
    tables = rules.get("tables")
    if isinstance(tables, dict):
        for t in tables.values():
            if isinstance(t, dict):
                for key in ("fields", "columns", "variables"):
                    add(t.get(key))
                if not any(k in t for k in ("fields", "columns", "variables")):
                    add(t)
    return idx


def _treatment(spec: dict) -> str:
    if not spec:
        return ""
    parts = []
    t = spec.get("treatment") or spec.get("action")
    if t:
        parts.append(str(t))
    for k in ("hierarchy", "bands", "generalise", "generalize", "round", "coarsen", "map"):
        if k in spec and spec[k] is not None:
            v = spec[k]
            if isinstance(v, dict):
                v = "; ".join(f"{a} -> {b}" for a, b in list(v.items())[:12]) + (" ..." if len(v) > 12 else "")
            elif isinstance(v, list):
                v = ", ".join(str(x) for x in v[:12]) + (" ..." if len(v) > 12 else "")
            parts.append(f"{k}: {v}")
    if spec.get("_from"):
        parts.append(f"from {spec['_from']}")
    return "; ".join(parts)


def _values(df: pl.DataFrame, col: str) -> str:
    s = df[col]
    if s.dtype == pl.Null or s.len() == 0:
        return ""
    nn = s.drop_nulls()
    nulls = f" (null {s.null_count():,})" if s.null_count() else ""
    if nn.len() == 0:
        return "all null"
    if s.dtype.is_numeric() or s.dtype in (pl.Date, pl.Datetime):
        nu = nn.n_unique()
        if nu <= LOW_CARDINALITY and not s.dtype.is_float():
            return ", ".join(str(v) for v in nn.unique().sort().to_list()) + nulls
        return f"{nn.min()} to {nn.max()}" + nulls
    if s.dtype == pl.Boolean:
        return "true, false" + nulls
    nu = nn.cast(pl.String).n_unique()
    if nu <= LOW_CARDINALITY:
        return ", ".join(sorted(str(v) for v in nn.cast(pl.String).unique().to_list())) + nulls
    return f"{nu:,} distinct values" + nulls


def describe_release(release_dir: Path, rules: dict | None = None) -> list[dict]:
    """One dict per (table, column)."""
    release_dir = Path(release_dir)
    contract, ridx = _contract_fields(), _rule_index(rules)
    rows = []
    for p in sorted(release_dir.glob("*.parquet")):
        schema = pq.read_schema(p)
        nrows = pq.read_metadata(p).num_rows
        # values from the data (one column at a time keeps memory low)
        for f in schema:
            col = f.name
            try:
                values = _values(pl.read_parquet(p, columns=[col]), col)
            except Exception:  # noqa: BLE001 - a type polars cannot read still gets a row
                values = ""
            spec = ridx.get(col, {})
            c = contract.get(col) or contract.get(spec.get("_from", ""), {})
            rows.append({
                "table": p.stem, "rows": nrows, "column": col, "type": str(f.type),
                "description": spec.get("description") or c.get("description") or DERIVED.get(col, ""),
                "values": values,
                "class": spec.get("class") or c.get("class") or "",
                "treatment": _treatment(spec),
                "sources": ", ".join(c.get("sources", [])),
            })
    return rows


def _md_cell(s: Any) -> str:
    return str(s if s is not None else "").replace("|", "\\|").replace("\n", " ")


def write_dictionary(release_dir: Path, rules: dict | None = None, release_id: str | None = None) -> dict:
    """Write data_dictionary.md and data_dictionary.html into release_dir
    (`release_id` names the release when release_dir is still a staging dir)."""
    release_dir = Path(release_dir)
    name = release_id or release_dir.name
    rows = describe_release(release_dir, rules)
    tables: dict[str, list[dict]] = {}
    for r in rows:
        tables.setdefault(r["table"], []).append(r)
    cols = ["column", "type", "description", "values", "class", "treatment"]

    md = ["# Data dictionary", "",
          f"Release `{name}`. Generated from the release's Parquet files, the governance "
          "rules and the source contracts. `values` are those observed in this release "
          "(low-cardinality columns) or the observed range. `class` is the governance class; "
          "`treatment` the generalisation or suppression the rules applied.", ""]
    for t, rs in tables.items():
        md += [f"## {t}.parquet ({rs[0]['rows']:,} rows)", "",
               "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        md += ["| " + " | ".join(_md_cell(r[c]) for c in cols) + " |" for r in rs]
        md.append("")
    md_path = release_dir / "data_dictionary.md"
    md_path.write_text("\n".join(md))

    e = html.escape
    body = []
    for t, rs in tables.items():
        body.append(f"<h2>{e(t)}.parquet <small>({rs[0]['rows']:,} rows)</small></h2><table><tr>"
                    + "".join(f"<th>{e(c)}</th>" for c in cols) + "</tr>")
        body += ["<tr>" + "".join(f"<td>{e(str(r[c]))}</td>" for c in cols) + "</tr>" for r in rs]
        body.append("</table>")
    page = ("<!doctype html><html><head><meta charset='utf-8'><title>Data dictionary "
            f"{e(name)}</title><style>body{{font-family:sans-serif;margin:2em}}"
            "table{border-collapse:collapse;margin-bottom:2em}td,th{border:1px solid #ccc;"
            "padding:4px 8px;vertical-align:top;font-size:90%}th{background:#eee}</style></head><body>"
            f"<h1>Data dictionary</h1><p>Release <code>{e(name)}</code>. Values observed "
            "in this release; class and treatment from the governance rules.</p>"
            + "".join(body) + "</body></html>")
    html_path = release_dir / "data_dictionary.html"
    html_path.write_text(page)
    return {"markdown": str(md_path), "html": str(html_path), "columns": len(rows)}
