"""Write a synthetic delivery: three native-format extracts, truth files and delivery.yaml."""
from __future__ import annotations

import time
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq
import yaml

from .core import simulate
from .params import ErrorModel

# native column -> canonical field (schemas/contracts/<source>.yaml)
COLUMNS = {
    "admission": {
        "APPLICATION_REF": "record_id", "UCAS_PERSONAL_ID": "ucas_personal_id", "Forenames": "forenames",
        "Surname": "surname", "DOB": "date_of_birth", "SEX": "sex", "HOME_POSTCODE": "postcode",
        "EMAIL": "email", "CYCLE_YEAR": "cycle_year", "ETHNIC": "ethnicity_code", "SEC": "nssec_code",
        "PARED": "parental_he", "SCHOOL_TYPE": "school_type", "FSM": "fsm", "POLAR4": "polar4_quintile",
        "IMD_QUINTILE": "imd_quintile", "IMD_INDEX": "imd_nation", "OUTCOME": "outcome",
        "PLACED_UKPRN": "medical_school", "COURSE_CODE": "course_type",
    },
    "training": {
        "HUSID": "record_id", "UCASPERID": "ucas_personal_id", "DHREGREF": "gmc_number",
        "FNAMES": "forenames", "SURNAME": "surname", "PREFERRED_NAME": "preferred_name",
        "BIRTHDTE": "date_of_birth", "SEXID": "sex", "DOMICILE_POSTCODE": "postcode", "UNI_EMAIL": "email",
        "UKPRN": "medical_school", "ENTRY_YEAR": "entry_year", "COURSE_ROUTE": "course_type",
        "END_STATUS": "course_outcome", "QUAL_YEAR": "graduation_year", "FP_YEAR": "fp_year",
        "ALLOCATION": "allocation_method", "EPM_DECILE": "epm_decile", "SJT_SCORE": "sjt_score",
        "UKFP_TOTAL": "fp_total_score", "FOUNDATION_SCHOOL": "foundation_school",
        "F1_ARCP_OUTCOME": "arcp_f1_outcome", "F2_ARCP_OUTCOME": "arcp_f2_outcome",
    },
    "registration": {
        "APPLICATION_ID": "record_id", "GMC_REF_NO": "gmc_number", "GIVEN_NAME": "forenames",
        "SURNAME": "surname", "OTHER_NAMES": "other_names", "DATE_OF_BIRTH": "date_of_birth",
        "GENDER": "sex", "POSTCODE": "postcode", "PLACE_OF_QUALIFICATION": "medical_school",
        "YEAR_OF_QUALIFICATION": "graduation_year", "RECRUITMENT_YEAR": "application_year",
        "SPECIALTY": "specialty_code", "OFFER_STATUS": "offer_status", "REGION": "training_region",
        "FR_DATE": "full_registration_date", "SPECIALIST_REGISTER_DATE": "specialist_register_date",
        "GP_REGISTER_DATE": "gp_register_date",
    },
}
IGNORE = {
    "admission": {"APPLICATION_SCHEME_CODE": "technical", "DOMICILE": "quasi_identifier",
                  "FEE_STATUS": "quasi_identifier", "UCAT_TOTAL": "analytic"},
    "training": {"NUMHUS": "technical", "QUALIFICATION": "quasi_identifier", "EPM_POINTS": "analytic",
                 "EA_POINTS": "analytic", "PIA_RANK": "analytic"},
    "registration": {"ORIEL_ID": "direct_identifier", "ENTRY_LEVEL": "analytic", "PR_DATE": "quasi_identifier",
                     "REGISTRATION_STATUS": "quasi_identifier"},
}
DATE_FORMATS = {
    "admission": {"date_of_birth": ["%d/%m/%Y"]},
    "training": {"date_of_birth": ["%Y-%m-%d"]},
    "registration": {"date_of_birth": ["%d-%b-%Y"], "full_registration_date": ["DMMYYYY"],
                     "specialist_register_date": ["DMMYYYY"], "gp_register_date": ["DMMYYYY"]},
}
VALUE_MAPS = {
    "admission": {
        "school_type": {"Independent": "independent", "Grammar": "grammar", "Comprehensive": "comprehensive",
                        "Sixth Form College": "sixth_form_college", "FE College": "fe_college",
                        "Other": "other", "Unknown": "unknown"},
        "fsm": {"Yes": "Y", "No": "N", "Don't know": "DK"},
        "imd_nation": {"IMD2019_E": "England", "SIMD2020": "Scotland", "WIMD2019": "Wales", "NIMDM2017": "NI"},
        "outcome": {"Placed": "placed", "Unplaced": "unplaced", "Withdrawn": "withdrawn"},
        "course_type": {"A100": "SEM", "A101": "GEP", "A104": "EMDP"},
    },
    "training": {
        "sex": {"1": "M", "2": "F", "3": "X"},
        "course_type": {"Standard entry": "SEM", "Graduate entry": "GEP", "Gateway": "EMDP"},
        "course_outcome": {"Completed": "graduated", "Withdrawn": "withdrew", "Active": "ongoing"},
        "allocation_method": {"Score": "score", "PIA": "PIA"},
    },
    "registration": {
        "sex": {"W": "F"},
        "offer_status": {"Accepted": "accepted", "Declined": "declined", "Offered": "offered",
                         "Not offered": "none"},
    },
}
FILES = {"admission": "admission.csv", "training": "training.csv", "registration": "registration.csv"}
SORT = {"admission": ["CYCLE_YEAR", "APPLICATION_REF"], "training": ["UKPRN", "ENTRY_YEAR", "HUSID"],
        "registration": ["APPLICATION_ID"]}


def delivery_config(name: str, output_dir: str) -> dict:
    return {
        "delivery": name,
        "sources": {
            s: {"path": FILES[s], "format": "csv", "encoding": "utf-8", "delimiter": ",",
                "columns": dict(COLUMNS[s]), "date_formats": DATE_FORMATS[s],
                "value_maps": VALUE_MAPS[s], "ignore_columns": IGNORE[s]}
            for s in FILES
        },
        "linkage": {},
        "governance": {"rules": "profile_a", "demo": True},
        "output": {"dir": output_dir},
    }


def write_parquet(df: pl.DataFrame, path: Path) -> None:
    """Byte-stable Parquet: zstd, no pandas metadata, no timestamps."""
    pq.write_table(df.to_arrow(), path, compression="zstd", store_schema=False, write_statistics=True)


def generate(n_doctors: int, seed: int, out_dir: Path, realism_report: bool = False, *,
             error_model: ErrorModel | None = None, output_dir: str | None = None) -> dict:
    """Generate a synthetic delivery of `n_doctors` entrants into `out_dir`.

    Writes admission.csv, training.csv, registration.csv (source-native
    columns), truth.parquet (source, record_id, person_id), truth_people.parquet
    and truth_errors.parquet (restricted ground truth for evaluation) and
    delivery.yaml. Deterministic for a seed. Returns a small summary dict."""
    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    em = error_model or ErrorModel()
    sim = simulate(int(n_doctors), int(seed), em)
    paths = {}
    counts = {}
    for s, fname in FILES.items():
        df = sim[s].sort(SORT[s])
        df.write_csv(out_dir / fname, null_value="", date_format="%Y-%m-%d")
        paths[s] = str(out_dir / fname)
        counts[s] = df.height
    write_parquet(sim["truth"].sort(["source", "record_id"]), out_dir / "truth.parquet")
    write_parquet(sim["people"].sort("person_id"), out_dir / "truth_people.parquet")
    write_parquet(sim["errors"].sort(["source", "record_id"]), out_dir / "truth_errors.parquet")
    if output_dir is None:   # runs of the committed sample must not write inside it
        output_dir = "../out/sample" if out_dir.name == "sample_data" else "out"
    cfg = delivery_config(f"synthetic-n{n_doctors}-seed{seed}", output_dir)
    header = (f"# Synthetic delivery generated by etl.synth.generate(n_doctors={n_doctors}, seed={seed}).\n"
              "# Maps each extract's native columns onto schemas/contracts/<source>.yaml.\n"
              "# truth*.parquet beside this file are ground truth for evaluation, not inputs.\n")
    (out_dir / "delivery.yaml").write_text(header + yaml.safe_dump(cfg, sort_keys=False, allow_unicode=False, width=120))
    summary = {"n_doctors": int(n_doctors), "seed": int(seed), "counts": counts,
               "persons": int(sim["people"].height), "paths": paths,
               "truth": str(out_dir / "truth.parquet"), "config": str(out_dir / "delivery.yaml"),
               "seconds": round(time.perf_counter() - t0, 2)}
    if realism_report:
        from .report import realism_report as _report
        text = _report(out_dir)
        (out_dir / "realism_report.txt").write_text(text)
        summary["realism_report"] = str(out_dir / "realism_report.txt")
    return summary
