"""Assemble linked records into one row per doctor and one row per career event.

Inputs (restricted zone): the standardised ingested sources (canonical
columns, `schemas/contracts/*.yaml`), `clusters.parquet` (source, record_id,
person_id) and `pairs.parquet` (scored pairs; columns may vary). Outputs:
`doctors.parquet` and `events.parquet`, exactly the columns listed in
docs/architecture.md "Assembled tables".

Any source may be missing from a delivery: the columns it would have fed are
written as typed nulls. Records that the linker left out of `clusters.parquet`
become singleton persons (counted in the summary as `unclustered_records`).

Derivation rules (documented in docs/analyst-guide.md as well):

- demographics: `sex` and `date_of_birth` from training, else the latest
  admission row, else registration (legal record first);
- SES fields (`ethnicity_code` ... `imd_nation`): per field, the value on the
  latest admission cycle that has one (two rows in one cycle: the higher record_id);
- `first_cycle_year` = min admission `cycle_year`; `n_admission_rows`;
- `entry_year` from training, else the latest `placed` admission cycle;
  `age_at_entry` = completed years on 1 September of `entry_year`;
- `medical_school`, `course_type`: training, else the placed admission row;
  `graduation_year`: training, else registration;
- training fields from the person's training row (the latest entry if the
  linker put two in one cluster);
- `first_offer_*`: earliest registration row with offer_status offered or
  accepted (accepted preferred within a year); `n_specialty_applications`
  counts rows with an application year or specialty; `n_offers` counts
  offered + accepted; register dates: earliest non-null;
  `training_region`: of the first offer, else of the latest application;
- `link_method`: `single-source` when all the person's records come from one
  source and no scored pair joins them; else `deterministic` when every pair
  used was a deterministic (rule/exact id) match, `probabilistic` when any
  was scored, `unknown` when the pairs file says nothing about the person;
  `link_probability` = min match_probability over the pairs used (pairs whose
  two records ended in the same cluster), null when there is none.

Events are written grouped by `event_type` (in the order of EVENT_TYPES),
not globally sorted: sorting ~6M rows on a string key cost more than the
rest of assembly, and grouping by type lets readers skip row groups on an
`event_type` filter. Doctors are sorted by person_id.

Dates known only to the year are placed on 1 September (academic events:
application - of the year before entry -, admission) or 1 August (training
posts: graduation, Foundation start, ARCP at the end of F1/F2, specialty
application/offer).
"""

from __future__ import annotations

import time
from pathlib import Path

import polars as pl

SOURCES = ("admission", "training", "registration")

EVENT_TYPES = ["application", "admission", "graduation", "foundation_start", "arcp_f1",
               "arcp_f2", "specialty_application", "specialty_offer", "full_registration",
               "specialist_register", "gp_register"]
LINK_METHODS = ["deterministic", "probabilistic", "single-source", "unknown"]

SES_FIELDS = ["ethnicity_code", "nssec_code", "parental_he", "school_type", "fsm",
              "polar4_quintile", "imd_quintile", "imd_nation"]
TRAINING_FIELDS = ["course_outcome", "fp_year", "allocation_method", "epm_decile", "sjt_score",
                   "fp_total_score", "foundation_school", "arcp_f1_outcome", "arcp_f2_outcome"]

DOCTOR_SCHEMA: dict[str, pl.DataType] = {
    "person_id": pl.String,
    "sex": pl.String,
    "date_of_birth": pl.Date,
    "ethnicity_code": pl.String,
    "nssec_code": pl.String,
    "parental_he": pl.String,
    "school_type": pl.String,
    "fsm": pl.String,
    "polar4_quintile": pl.Int8,
    "imd_quintile": pl.Int8,
    "imd_nation": pl.String,
    "first_cycle_year": pl.Int16,
    "n_admission_rows": pl.Int16,
    "entry_year": pl.Int16,
    "age_at_entry": pl.Int16,
    "medical_school": pl.String,
    "course_type": pl.String,
    "graduation_year": pl.Int16,
    "course_outcome": pl.String,
    "fp_year": pl.Int16,
    "allocation_method": pl.String,
    "epm_decile": pl.Int8,
    "sjt_score": pl.Float64,
    "fp_total_score": pl.Float64,
    "foundation_school": pl.String,
    "arcp_f1_outcome": pl.String,
    "arcp_f2_outcome": pl.String,
    "first_offer_year": pl.Int16,
    "first_offer_specialty": pl.String,
    "n_specialty_applications": pl.Int16,
    "n_offers": pl.Int16,
    "full_registration_date": pl.Date,
    "specialist_register_date": pl.Date,
    "gp_register_date": pl.Date,
    "training_region": pl.String,
    "in_admission": pl.Boolean,
    "in_training": pl.Boolean,
    "in_registration": pl.Boolean,
    "link_method": pl.String,
    "link_probability": pl.Float64,
}
DOCTOR_COLUMNS = list(DOCTOR_SCHEMA)

EVENT_SCHEMA: dict[str, pl.DataType] = {
    "person_id": pl.String, "event_type": pl.String, "event_date": pl.Date,
    "detail": pl.String, "source": pl.String, "record_id": pl.String,
}

# value sets checked on write (the contract's `allowed` lists; columns stay
# String in the restricted files so downstream string operations work)
CODED = {
    "sex": ["M", "F", "X", "U"],
    "school_type": ["independent", "grammar", "comprehensive", "sixth_form_college",
                    "fe_college", "other", "unknown"],
    "fsm": ["Y", "N", "DK"],
    "imd_nation": ["England", "Scotland", "Wales", "NI"],
    "course_type": ["SEM", "GEP", "EMDP"],
    "course_outcome": ["graduated", "withdrew", "ongoing"],
    "allocation_method": ["score", "PIA"],
    "link_method": LINK_METHODS,
}

# columns each source can feed, with the dtype assembly works in
SOURCE_COLUMNS: dict[str, dict[str, pl.DataType]] = {
    "admission": {"record_id": pl.String, "date_of_birth": pl.Date, "sex": pl.String,
                  "cycle_year": pl.Int64, "outcome": pl.String, "medical_school": pl.String,
                  "course_type": pl.String, "ethnicity_code": pl.String, "nssec_code": pl.String,
                  "parental_he": pl.String, "school_type": pl.String, "fsm": pl.String,
                  "polar4_quintile": pl.Int64, "imd_quintile": pl.Int64, "imd_nation": pl.String},
    "training": {"record_id": pl.String, "date_of_birth": pl.Date, "sex": pl.String,
                 "medical_school": pl.String, "entry_year": pl.Int64, "course_type": pl.String,
                 "course_outcome": pl.String, "graduation_year": pl.Int64, "fp_year": pl.Int64,
                 "allocation_method": pl.String, "epm_decile": pl.Int64, "sjt_score": pl.Float64,
                 "fp_total_score": pl.Float64, "foundation_school": pl.String,
                 "arcp_f1_outcome": pl.String, "arcp_f2_outcome": pl.String},
    "registration": {"record_id": pl.String, "date_of_birth": pl.Date, "sex": pl.String,
                     "medical_school": pl.String, "graduation_year": pl.Int64,
                     "application_year": pl.Int64, "specialty_code": pl.String,
                     "offer_status": pl.String, "training_region": pl.String,
                     "full_registration_date": pl.Date, "specialist_register_date": pl.Date,
                     "gp_register_date": pl.Date},
}

PARQUET_OPTS = dict(compression="zstd", compression_level=3, statistics=True)


# --------------------------------------------------------------------------- reading

def _read_source(name: str, path: Path | None, clusters: pl.LazyFrame) -> pl.LazyFrame:
    """The source's assembly columns joined to person_id (typed nulls for
    columns the delivery lacks); an empty frame when the source is absent."""
    cols = SOURCE_COLUMNS[name]
    if path is None or not Path(path).exists():
        return pl.LazyFrame(schema={"person_id": pl.String, **cols})
    lf = pl.scan_parquet(path)
    have = set(lf.collect_schema().names())
    lf = lf.select([(pl.col(c).cast(t, strict=False) if c in have else pl.lit(None, dtype=t)).alias(c)
                    for c, t in cols.items()])
    cl = clusters.filter(pl.col("source") == name).select("record_id", "person_id")
    lf = lf.join(cl, on="record_id", how="left")
    # a record the linker did not cluster becomes its own person
    return lf.with_columns(pl.coalesce("person_id", pl.lit(f"u:{name}:") + pl.col("record_id"))
                           .alias("person_id"))


def _read_clusters(path: Path) -> pl.LazyFrame:
    return (pl.scan_parquet(path)
            .select(pl.col("source").cast(pl.String), pl.col("record_id").cast(pl.String),
                    pl.col("person_id").cast(pl.String))
            .unique(subset=["source", "record_id"], keep="first"))


def _pair_links(pairs_path: Path | None, clusters: pl.LazyFrame) -> pl.LazyFrame:
    """Per person: min match_probability and method class over the pairs
    whose two records ended in that person's cluster."""
    empty = pl.LazyFrame(schema={"person_id": pl.String, "link_probability": pl.Float64,
                                 "n_pairs": pl.UInt32, "any_prob": pl.Boolean})
    if pairs_path is None or not Path(pairs_path).exists():
        return empty
    lf = pl.scan_parquet(pairs_path)
    names = set(lf.collect_schema().names())
    if not {"source_l", "record_id_l", "source_r", "record_id_r"} <= names:
        return empty
    prob_col = next((c for c in ("match_probability", "probability", "match_prob") if c in names), None)
    meth_col = next((c for c in ("method", "match_method", "link_method", "match_key", "rule")
                     if c in names), None)
    prob = pl.col(prob_col).cast(pl.Float64, strict=False) if prob_col else pl.lit(None, dtype=pl.Float64)
    if meth_col:
        m = pl.col(meth_col).cast(pl.String).str.to_lowercase()
        deterministic = (m.str.contains("determin|exact|rule")
                         & ~m.str.contains("prob|fuzzy|splink"))
        is_prob = ~deterministic.fill_null(False)
    else:
        is_prob = pl.lit(True)
    if "linked" in names:                 # the linker marks the edges it accepted
        lf = lf.filter(pl.col("linked").cast(pl.Boolean).fill_null(False))
    lf = lf.select(pl.col("source_l").cast(pl.String), pl.col("record_id_l").cast(pl.String),
                   pl.col("source_r").cast(pl.String), pl.col("record_id_r").cast(pl.String),
                   prob.alias("p"), is_prob.alias("is_prob"))
    cl = clusters.select("source", "record_id", "person_id")
    lf = (lf.join(cl.rename({"source": "source_l", "record_id": "record_id_l", "person_id": "pl"}),
                  on=["source_l", "record_id_l"], how="inner")
            .join(cl.rename({"source": "source_r", "record_id": "record_id_r", "person_id": "pr"}),
                  on=["source_r", "record_id_r"], how="inner")
            .filter(pl.col("pl") == pl.col("pr")))
    return lf.group_by(pl.col("pl").alias("person_id")).agg(
        pl.col("p").min().alias("link_probability"),
        pl.len().alias("n_pairs"),
        pl.col("is_prob").any().alias("any_prob"))


# --------------------------------------------------------------------------- per source

def _admission_person(adm: pl.LazyFrame) -> pl.LazyFrame:
    # rows sorted by cycle once: within a group, agg keeps that order, so
    # "latest non-null" is drop_nulls().last() without a per-group sort. record_id
    # breaks ties (two applications of one person in one cycle): without it the
    # (unstable, parallel) sort let a run pick either row's SES values (~20 of 1.6 M
    # doctors differed between two runs on the same 1M input)
    placed = pl.col("outcome") == "placed"
    return adm.sort(["cycle_year", "record_id"], nulls_last=False).group_by("person_id").agg(
        pl.col("cycle_year").min().alias("first_cycle_year"),
        pl.len().alias("n_admission_rows"),
        *[pl.col(c).drop_nulls().last() for c in SES_FIELDS],
        pl.col("sex").drop_nulls().last().alias("adm_sex"),
        pl.col("date_of_birth").drop_nulls().last().alias("adm_dob"),
        pl.col("cycle_year").filter(placed).max().alias("placed_year"),
        pl.col("medical_school").filter(placed).drop_nulls().last().alias("adm_school"),
        pl.col("course_type").filter(placed).drop_nulls().last().alias("adm_course"),
    )


def _training_person(trn: pl.LazyFrame) -> pl.LazyFrame:
    # one training row per person: the latest entry (ties: last record id)
    return (trn.sort(["person_id", "entry_year", "record_id"], nulls_last=False)
               .group_by("person_id").last()
               .select("person_id", pl.col("sex").alias("trn_sex"),
                       pl.col("date_of_birth").alias("trn_dob"),
                       pl.col("entry_year").alias("trn_entry_year"),
                       pl.col("medical_school").alias("trn_school"),
                       pl.col("course_type").alias("trn_course"),
                       pl.col("graduation_year").alias("trn_grad"), *TRAINING_FIELDS))


def _registration_person(reg: pl.LazyFrame) -> pl.LazyFrame:
    is_app = pl.col("application_year").is_not_null() | pl.col("specialty_code").is_not_null()
    is_offer = pl.col("offer_status").is_in(["offered", "accepted"])
    # sort so that, per person, the first offer row is the earliest year with
    # accepted before offered
    reg = reg.with_columns(
        is_app.alias("_app"), is_offer.fill_null(False).alias("_offer"),
        pl.when(pl.col("offer_status") == "accepted").then(0).otherwise(1).alias("_pref"))
    reg = reg.sort(["person_id", "application_year", "_pref", "record_id"], nulls_last=True)
    off = pl.col("_offer") & pl.col("application_year").is_not_null()
    return reg.group_by("person_id", maintain_order=True).agg(
        pl.col("application_year").filter(off).first().alias("first_offer_year"),
        pl.col("specialty_code").filter(off).first().alias("first_offer_specialty"),
        pl.col("_app").sum().alias("n_specialty_applications"),
        pl.col("_offer").sum().alias("n_offers"),
        pl.col("full_registration_date").min(),
        pl.col("specialist_register_date").min(),
        pl.col("gp_register_date").min(),
        pl.coalesce(pl.col("training_region").filter(off).first(),
                    pl.col("training_region").filter(pl.col("_app")).drop_nulls().last(),
                    pl.col("training_region").drop_nulls().last()).alias("training_region"),
        pl.col("sex").drop_nulls().last().alias("reg_sex"),
        pl.col("date_of_birth").drop_nulls().first().alias("reg_dob"),
        pl.col("graduation_year").drop_nulls().first().alias("reg_grad"),
        pl.col("medical_school").drop_nulls().first().alias("reg_school"),
    )


# --------------------------------------------------------------------------- events

def _ymd(year: pl.Expr, month: int) -> pl.Expr:
    return pl.date(year.cast(pl.Int32, strict=False), month, 1)


def _events(adm: pl.LazyFrame, trn: pl.LazyFrame, reg: pl.LazyFrame) -> pl.LazyFrame:
    def ev(lf, etype, date, detail, source, cond=None):
        if cond is not None:
            lf = lf.filter(cond)
        return lf.select(pl.col("person_id"), pl.lit(etype).alias("event_type"),
                         date.alias("event_date"), detail.cast(pl.String).alias("detail"),
                         pl.lit(source).alias("source"), pl.col("record_id"))

    y = pl.col
    parts = [
        ev(adm, "application", _ymd(y("cycle_year") - 1, 9), y("outcome"), "admission",
           y("cycle_year").is_not_null()),
        ev(adm, "admission", _ymd(y("cycle_year"), 9), y("medical_school"), "admission",
           (y("outcome") == "placed") & y("cycle_year").is_not_null()),
        ev(trn, "graduation", _ymd(y("graduation_year"), 8), y("medical_school"), "training",
           y("graduation_year").is_not_null()
           & ((y("course_outcome") == "graduated") | y("course_outcome").is_null())),
        ev(trn, "foundation_start", _ymd(y("fp_year"), 8), y("foundation_school"), "training",
           y("fp_year").is_not_null()),
        ev(trn, "arcp_f1", _ymd(y("fp_year") + 1, 8), y("arcp_f1_outcome"), "training",
           y("fp_year").is_not_null() & y("arcp_f1_outcome").is_not_null()),
        ev(trn, "arcp_f2", _ymd(y("fp_year") + 2, 8), y("arcp_f2_outcome"), "training",
           y("fp_year").is_not_null() & y("arcp_f2_outcome").is_not_null()),
        ev(reg, "specialty_application", _ymd(y("application_year"), 8), y("specialty_code"),
           "registration", y("application_year").is_not_null()),
        ev(reg, "specialty_offer", _ymd(y("application_year"), 8), y("specialty_code"),
           "registration", y("application_year").is_not_null()
           & y("offer_status").is_in(["offered", "accepted"]).fill_null(False)),
    ]
    # register entries repeat on every registration row of a person: keep one
    for etype, col in (("full_registration", "full_registration_date"),
                       ("specialist_register", "specialist_register_date"),
                       ("gp_register", "gp_register_date")):
        parts.append(ev(reg, etype, y(col), pl.lit(None, dtype=pl.String), "registration",
                        y(col).is_not_null())
                     .sort(["person_id", "event_date", "record_id"])
                     .unique(subset=["person_id", "event_date"], keep="first", maintain_order=True))
    return pl.concat(parts, how="vertical")


# --------------------------------------------------------------------------- writing

def check_values(df: pl.DataFrame, coded: dict[str, list[str]]) -> None:
    """Raise ValueError naming the column if a coded column holds a value
    outside its set (a contract the ingest should already have enforced)."""
    for c, values in coded.items():
        if c in df.columns:
            bad = df.lazy().select(c).unique().filter(
                pl.col(c).is_not_null() & ~pl.col(c).is_in(values)).collect()
            if bad.height:
                raise ValueError(f"assemble: column {c} holds {bad.height} value(s) outside {values}")


def write_parquet(df: pl.DataFrame, path: Path) -> None:
    """zstd Parquet, written to a temp name then renamed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    df.write_parquet(tmp, **PARQUET_OPTS)
    tmp.replace(path)


# --------------------------------------------------------------------------- entry point

def assemble(ingest_paths: dict[str, Path], clusters_path: Path, pairs_path: Path,
             out_dir: Path) -> dict:
    """Build doctors.parquet and events.parquet in out_dir. Returns counts and paths."""
    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    clusters = _read_clusters(Path(clusters_path))
    paths = {s: (Path(ingest_paths[s]) if ingest_paths.get(s) else None) for s in SOURCES}
    adm, trn, reg = (_read_source(s, paths[s], clusters) for s in SOURCES)
    # materialise once: each is used for persons, events and presence
    adm, trn, reg = pl.collect_all([adm, trn, reg])
    adm_l, trn_l, reg_l = adm.lazy(), trn.lazy(), reg.lazy()

    persons = pl.concat([
        adm.select("person_id", pl.lit("admission").alias("source"), "record_id"),
        trn.select("person_id", pl.lit("training").alias("source"), "record_id"),
        reg.select("person_id", pl.lit("registration").alias("source"), "record_id"),
    ])
    unclustered = persons.filter(pl.col("person_id").str.starts_with("u:")).height
    pres = persons.lazy().group_by("person_id").agg(
        (pl.col("source") == "admission").any().alias("in_admission"),
        (pl.col("source") == "training").any().alias("in_training"),
        (pl.col("source") == "registration").any().alias("in_registration"),
        pl.len().alias("_n_records"))

    links = _pair_links(Path(pairs_path) if pairs_path else None, clusters)

    d = (pres.join(_admission_person(adm_l), on="person_id", how="left")
             .join(_training_person(trn_l), on="person_id", how="left")
             .join(_registration_person(reg_l), on="person_id", how="left")
             .join(links, on="person_id", how="left"))
    n_src = (pl.col("in_admission").cast(pl.Int8) + pl.col("in_training").cast(pl.Int8)
             + pl.col("in_registration").cast(pl.Int8))
    entry = pl.coalesce("trn_entry_year", "placed_year")
    dob = pl.coalesce("trn_dob", "adm_dob", "reg_dob")
    born_after_sept1 = (dob.dt.month() > 9) | ((dob.dt.month() == 9) & (dob.dt.day() > 1))
    d = d.with_columns(
        pl.coalesce("trn_sex", "adm_sex", "reg_sex").alias("sex"),
        dob.alias("date_of_birth"),
        entry.alias("entry_year"),
        (entry - dob.dt.year() - born_after_sept1.cast(pl.Int64)).alias("age_at_entry"),
        pl.coalesce("trn_school", "adm_school", "reg_school").alias("medical_school"),
        pl.coalesce("trn_course", "adm_course").alias("course_type"),
        pl.coalesce("trn_grad", "reg_grad").alias("graduation_year"),
        pl.col("n_admission_rows").fill_null(0),
        pl.col("n_specialty_applications").fill_null(0),
        pl.col("n_offers").fill_null(0),
        pl.when(pl.col("n_pairs").is_null() & (n_src == 1)).then(pl.lit("single-source"))
          .when(pl.col("n_pairs").is_null()).then(pl.lit("unknown"))
          .when(pl.col("any_prob")).then(pl.lit("probabilistic"))
          .otherwise(pl.lit("deterministic")).alias("link_method"),
    )
    doctors = (d.select([pl.col(c).cast(t, strict=False) for c, t in DOCTOR_SCHEMA.items()])
                .sort("person_id").collect())
    check_values(doctors, CODED)

    events = (_events(adm_l, trn_l, reg_l)
              .filter(pl.col("event_date").is_not_null())
              .select([pl.col(c).cast(t) for c, t in EVENT_SCHEMA.items()])
              .collect())   # rows stay grouped by event_type (concat order): no global sort
    check_values(events, {"event_type": EVENT_TYPES})

    doctors_path, events_path = out_dir / "doctors.parquet", out_dir / "events.parquet"
    write_parquet(doctors, doctors_path)
    write_parquet(events, events_path)

    combo = (doctors.select(
        pl.concat_str([pl.when(pl.col("in_admission")).then(pl.lit("admission")),
                       pl.when(pl.col("in_training")).then(pl.lit("training")),
                       pl.when(pl.col("in_registration")).then(pl.lit("registration"))],
                      separator="+", ignore_nulls=True).alias("combo"))
        .group_by("combo").len().sort("combo"))
    return {
        "doctors": doctors.height,
        "events": events.height,
        "events_by_type": dict(events.group_by("event_type").len().sort("event_type").iter_rows()),
        "persons_by_sources": dict(combo.iter_rows()),
        "link_methods": dict(doctors.group_by("link_method").len().sort("link_method").iter_rows()),
        "unclustered_records": unclustered,
        "sources_missing": [s for s in SOURCES if paths[s] is None or not paths[s].exists()],
        "doctors_path": str(doctors_path),
        "events_path": str(events_path),
        "seconds": round(time.perf_counter() - t0, 3),
    }
