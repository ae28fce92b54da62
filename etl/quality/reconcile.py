"""Row accounting: where every delivered row went.

One row per source, and a total row `all`:

| column | meaning |
|---|---|
| rows_in | data rows delivered |
| quarantined | rows quarantined by ingest (each row once) |
| quarantine_reasons | `column: reason=n; ...`, each quarantined row under its first reason |
| ingested | rows in the ingested Parquet |
| in_clusters | ingested records assigned to a person by linkage |
| linked | of those, records whose person also has a record in another source |
| persons | distinct persons holding a record of this source |
| persons_published | doctor rows in the release with `in_<source>` true |
| records_published | records whose person has a doctor row (needs `published_persons`) |
| reconciled | rows_in == quarantined + ingested, and ingested == in_clusters, one to one |

`reconcile` raises GateFailed (one line, counts only) when a row is lost
or invented between stages: delivered != quarantined + ingested, an ingested
record missing from clusters or in it twice, a clusters record that was
never ingested, or more published doctors than persons.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from etl.errors import GateFailed

SOURCES = ("admission", "training", "registration")
SCHEMA = {"source": pl.String, "rows_in": pl.Int64, "quarantined": pl.Int64,
          "quarantine_reasons": pl.String, "ingested": pl.Int64, "in_clusters": pl.Int64,
          "linked": pl.Int64, "persons": pl.Int64, "persons_published": pl.Int64,
          "records_published": pl.Int64, "reconciled": pl.Boolean}


def _quarantine(path: str | Path | None) -> tuple[int | None, str | None]:
    if not path or not Path(path).is_file():
        return None, None
    q = pl.read_parquet(path)
    if "action" in q.columns:
        q = q.filter(pl.col("action") == "quarantined")
    if q.height == 0:
        return 0, ""
    first = q.with_row_index("__i").sort("row_number", "__i").unique("row_number", keep="first", maintain_order=True)
    by = (first.group_by("column", "reason").len().sort(["len", "column", "reason"], descending=[True, False, False]))
    reasons = "; ".join(f"{r['column']}: {r['reason']}={r['len']}" for r in by.iter_rows(named=True))
    return first.height, reasons


def _published_persons(published_persons) -> pl.Series | None:
    if published_persons is None:
        return None
    if isinstance(published_persons, (str, Path)):
        published_persons = pl.read_parquet(published_persons)
    if isinstance(published_persons, pl.DataFrame):
        published_persons = published_persons["person_id"]
    return pl.Series("person_id", published_persons).unique()


def reconcile(ingest_summaries: list[dict], clusters_path: Path | str | pl.DataFrame,
              release_doctors_path: Path | str | None = None, *,
              published_persons: Path | pl.DataFrame | pl.Series | None = None,
              raise_on_failure: bool = True) -> pl.DataFrame:
    """Build the row-accounting table; raise GateFailed if rows do not add up.

    `ingest_summaries` are the ingest stage's summaries (source, rows_in,
    rows_quarantined, path, quarantine_path). `published_persons` (optional)
    names the person_ids that have a doctor row in the release (a frame or
    Parquet with `person_id`, e.g. the crosswalk rows of this release); the
    release doctors table itself carries only per-release tokens.
    """
    cl = clusters_path if isinstance(clusters_path, pl.DataFrame) else pl.read_parquet(
        clusters_path, columns=["source", "record_id", "person_id"])
    cl = cl.select(pl.col("source").cast(pl.String), pl.col("record_id").cast(pl.String), "person_id")
    n_sources = cl.group_by("person_id").agg(pl.col("source").n_unique().alias("__ns"))
    cl = cl.join(n_sources, on="person_id", how="left")
    pub = _published_persons(published_persons)

    doctors = None
    if release_doctors_path and Path(release_doctors_path).is_file():
        doctors = pl.read_parquet(release_doctors_path)

    problems: list[str] = []
    rows = []
    summaries = {s.get("source"): s for s in ingest_summaries}
    names = [s for s in SOURCES if s in summaries] + sorted(
        s for s in summaries if s not in SOURCES and s) + sorted(
        s for s in cl["source"].unique().to_list() if s not in summaries)
    for src in names:
        s = summaries.get(src, {})
        q_rows, reasons = _quarantine(s.get("quarantine_path"))
        quarantined = q_rows if q_rows is not None else s.get("rows_quarantined")
        ing_path = s.get("path")
        ingested = keys = None
        if ing_path and Path(ing_path).is_file():
            keys = pl.read_parquet(ing_path, columns=["record_id"]).select(pl.col("record_id").cast(pl.String))
            ingested = keys.height
        else:
            ingested = s.get("rows_ingested")
        c = cl.filter(pl.col("source") == src)
        in_clusters = c.height
        rows_in = s.get("rows_in")
        ok = True
        if rows_in is None or quarantined is None or ingested is None:
            ok = False
            problems.append(f"{src}: counts missing (rows_in, quarantined or ingested)")
        elif rows_in != quarantined + ingested:
            ok = False
            problems.append(f"{src}: rows_in={rows_in} != quarantined {quarantined} + ingested {ingested} "
                            f"({rows_in - quarantined - ingested:+d} unaccounted)")
        if s.get("rows_ingested") is not None and ingested is not None and s["rows_ingested"] != ingested:
            ok = False
            problems.append(f"{src}: ingest summary says {s['rows_ingested']} rows, the file holds {ingested}")
        if keys is not None:
            dup = c.filter(pl.col("record_id").is_duplicated())["record_id"].n_unique()
            lost = keys.join(c, on="record_id", how="anti").height
            extra = c.join(keys, on="record_id", how="anti").height
            for n, what in ((lost, "ingested records not in clusters"), (dup, "records in clusters more than once"),
                            (extra, "records in clusters that were not ingested")):
                if n:
                    ok = False
                    problems.append(f"{src}: {n} {what}")
        elif ingested is not None and ingested != in_clusters:
            ok = False
            problems.append(f"{src}: ingested {ingested} != in clusters {in_clusters}")
        persons = c["person_id"].n_unique()
        linked = c.filter(pl.col("__ns") > 1).height
        persons_published = None
        if doctors is not None and f"in_{src}" in doctors.columns:
            persons_published = int(doctors[f"in_{src}"].cast(pl.Boolean).sum())
            if persons_published > persons:
                ok = False
                problems.append(f"{src}: {persons_published} published doctors with a {src} record "
                                f"but only {persons} persons")
        records_published = int(c["person_id"].is_in(pub.implode()).sum()) if pub is not None else None
        rows.append({"source": src, "rows_in": rows_in, "quarantined": quarantined,
                     "quarantine_reasons": reasons, "ingested": ingested, "in_clusters": in_clusters,
                     "linked": linked, "persons": persons, "persons_published": persons_published,
                     "records_published": records_published, "reconciled": ok})

    total_persons = cl["person_id"].n_unique()
    total_pub = doctors.height if doctors is not None else None
    all_ok = all(r["reconciled"] for r in rows)
    if total_pub is not None and total_pub > total_persons:
        all_ok = False
        problems.append(f"all: {total_pub} published doctors but only {total_persons} persons")

    def tot(k):
        vals = [r[k] for r in rows if r[k] is not None]
        return sum(vals) if vals else None

    rows.append({"source": "all", "rows_in": tot("rows_in"), "quarantined": tot("quarantined"),
                 "quarantine_reasons": None, "ingested": tot("ingested"), "in_clusters": tot("in_clusters"),
                 "linked": tot("linked"), "persons": total_persons, "persons_published": total_pub,
                 "records_published": tot("records_published"), "reconciled": all_ok})
    table = pl.DataFrame(rows, schema=SCHEMA, orient="row")
    if problems and raise_on_failure:
        raise GateFailed("gate row_accounting failed: " + "; ".join(problems))
    return table


def format_accounting(table: pl.DataFrame) -> str:
    """The table as fixed-width text for the run log (counts only)."""
    cols = ["source", "rows_in", "quarantined", "ingested", "in_clusters", "linked",
            "persons", "persons_published", "reconciled"]
    cells = [[c for c in cols]] + [["" if r[c] is None else str(r[c]) for c in cols]
                                   for r in table.iter_rows(named=True)]
    w = [max(len(row[i]) for row in cells) for i in range(len(cols))]
    lines = ["  ".join(v.rjust(w[i]) if i else v.ljust(w[i]) for i, v in enumerate(row)) for row in cells]
    for r in table.iter_rows(named=True):
        if r.get("quarantine_reasons"):
            lines.append(f"  {r['source']} quarantined: {r['quarantine_reasons']}")
    return "\n".join(lines)
