"""Tests of the synthetic delivery generator (etl.synth) on real generated files."""
from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import yaml

from etl.synth import TRUE_OR_INDEPENDENT_SURGERY_VS_GP, ErrorModel, generate, realism_report
from etl.synth import params as P
from etl.synth.report import ses_gradient

ROOT = Path(__file__).resolve().parents[1]
CONTRACTS = {s: yaml.safe_load((ROOT / "schemas" / "contracts" / f"{s}.yaml").read_text())["fields"]
             for s in ("admission", "training", "registration")}
REF = ROOT / "schemas" / "reference"
N_BIG = 20_000


@pytest.fixture(scope="module")
def big(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth20k")
    generate(N_BIG, 7, out)
    return out


@pytest.fixture(scope="module")
def cfg(big) -> dict:
    return yaml.safe_load((big / "delivery.yaml").read_text())


def read_raw(out: Path, source: str) -> pl.DataFrame:
    return pl.read_csv(out / f"{source}.csv", infer_schema_length=0)


def parse_dates(s: pl.Series, formats: list[str]) -> pl.Series:
    out = pl.Series([None] * len(s), dtype=pl.Date)
    for f in formats:
        if f == "DMMYYYY":
            d = pl.DataFrame({"v": s}).select(
                pl.date(pl.col("v").str.slice(-4).cast(pl.Int32, strict=False),
                        pl.col("v").str.slice(-6, 2).cast(pl.Int8, strict=False),
                        pl.col("v").str.head(-6).cast(pl.Int8, strict=False))).to_series()
        else:
            d = s.str.to_date(f, strict=False)
        out = out.fill_null(d)
    return out


def canonical(out: Path, source: str, cfg: dict) -> pl.DataFrame:
    """Apply the delivery config the way the ingest stage must: rename, value maps, dates."""
    sc = cfg["sources"][source]
    df = read_raw(out, source).select([pl.col(k).alias(v) for k, v in sc["columns"].items()])
    for f, m in sc.get("value_maps", {}).items():
        df = df.with_columns(pl.col(f).replace({str(k): str(v) for k, v in m.items()}))
    for f, fmts in sc.get("date_formats", {}).items():
        df = df.with_columns(parse_dates(df[f], fmts).alias(f))
    return df


# ------------------------------------------------------------------ determinism
def test_byte_identical_for_a_seed(tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    generate(1000, 1, a)
    generate(1000, 1, b)
    generate(1000, 2, c)
    files = sorted(p.name for p in a.iterdir())
    assert {"admission.csv", "training.csv", "registration.csv", "truth.parquet", "delivery.yaml"} <= set(files)
    for f in files:
        assert (a / f).read_bytes() == (b / f).read_bytes(), f
    assert (a / "admission.csv").read_bytes() != (c / "admission.csv").read_bytes()


def test_committed_sample_reproduces(tmp_path):
    sample = ROOT / "sample_data"
    if not (sample / "delivery.yaml").exists():
        pytest.skip("sample_data not generated yet")
    out = tmp_path / "sample_data"
    generate(3000, 20261126, out)
    for f in ("admission.csv", "training.csv", "registration.csv", "truth.parquet", "delivery.yaml"):
        assert (out / f).read_bytes() == (sample / f).read_bytes(), f
    assert yaml.safe_load((sample / "delivery.yaml").read_text())["output"]["dir"] == "../out/sample"


# ------------------------------------------------------------------ structure
def test_truth_covers_every_row_once(big):
    truth = pl.read_parquet(big / "truth.parquet")
    assert truth.columns == ["source", "record_id", "person_id"]
    assert truth.select(pl.struct("source", "record_id").is_unique().all()).item()
    ids = {"admission": "APPLICATION_REF", "training": "HUSID", "registration": "APPLICATION_ID"}
    for s, col in ids.items():
        raw = read_raw(big, s)[col]
        assert raw.is_unique().all(), s
        t = truth.filter(pl.col("source") == s)["record_id"]
        assert t.len() == raw.len()
        assert set(t.to_list()) == set(raw.to_list())


def test_config_maps_every_native_column(big, cfg):
    assert set(cfg) == {"delivery", "sources", "linkage", "governance", "output"}
    assert cfg["governance"] == {"rules": "profile_a", "demo": True}
    for s, sc in cfg["sources"].items():
        header = read_raw(big, s).columns
        assert set(header) == set(sc["columns"]) | set(sc["ignore_columns"]), s
        assert not set(sc["columns"]) & set(sc["ignore_columns"])
        fields = set(sc["columns"].values())
        assert fields <= set(CONTRACTS[s]), fields - set(CONTRACTS[s])
        required = {f for f, spec in CONTRACTS[s].items() if spec.get("required")}
        assert required <= fields
        assert len(fields) == len(CONTRACTS[s]), f"{s}: unmapped contract fields {set(CONTRACTS[s]) - fields}"
        assert set(sc["value_maps"]) <= fields and set(sc["date_formats"]) <= fields
        assert set(sc["ignore_columns"].values()) <= {"direct_identifier", "quasi_identifier", "sensitive",
                                                     "analytic", "technical"}


def test_native_names_differ_between_sources(cfg):
    cols = {s: set(sc["columns"]) for s, sc in cfg["sources"].items()}
    inv = {s: {v: k for k, v in sc["columns"].items()} for s, sc in cfg["sources"].items()}
    assert inv["admission"]["forenames"] != inv["training"]["forenames"] != inv["registration"]["forenames"]
    assert inv["registration"]["gmc_number"] == "GMC_REF_NO" and inv["registration"]["sex"] == "GENDER"
    assert cfg["sources"]["admission"]["date_formats"]["date_of_birth"] != cfg["sources"]["training"]["date_formats"]["date_of_birth"]
    assert "record_id" not in cols["admission"]


@pytest.mark.parametrize("source", ["admission", "training", "registration"])
def test_contract_conformance(big, cfg, source):
    df = canonical(big, source, cfg)
    n = df.height
    schools = pl.read_csv(REF / "medical_schools.csv", infer_schema_length=0)
    for f, spec in CONTRACTS[source].items():
        col = df[f]
        if spec.get("required"):
            assert col.null_count() / n < 0.001, f
        if "allowed" in spec:
            bad = set(col.drop_nulls().unique().to_list()) - {str(v) for v in spec["allowed"]}
            assert not bad, (f, bad)
        if spec["type"] == "int":
            v = col.cast(pl.Int64, strict=True).drop_nulls()
            assert v.min() >= spec.get("min", -10**9) and v.max() <= spec.get("max", 10**9), f
        if spec["type"] == "float":
            v = col.cast(pl.Float64, strict=True).drop_nulls()
            assert v.min() >= spec.get("min", -1e18) and v.max() <= spec.get("max", 1e18), f
        if spec["type"] == "date":
            raw_nonnull = read_raw(big, source)[[k for k, v in cfg["sources"][source]["columns"].items() if v == f][0]].drop_nulls().len()
            assert col.drop_nulls().len() == raw_nonnull, f"{f}: some dates did not parse"
            if col.drop_nulls().len():
                assert col.min() >= np.datetime64(spec.get("min", "1940-01-01")) and col.max() <= np.datetime64("2025-12-31")
    ms = df["medical_school"].drop_nulls()
    ref = set(schools["name"]) if source == "registration" else set(schools["ukprn"])
    assert set(ms.unique()) <= ref
    if source == "admission":
        eth = set(pl.read_csv(REF / "ethnicity.csv", infer_schema_length=0)["code"])
        assert set(df["ethnicity_code"].drop_nulls().unique()) <= eth
        assert (df.filter(pl.col("outcome") == "placed")["medical_school"].null_count() == 0)
        assert df.filter(pl.col("outcome") != "placed")["medical_school"].null_count() == df.filter(pl.col("outcome") != "placed").height
    if source == "registration":
        spec_codes = set(pl.read_csv(REF / "specialties.csv", infer_schema_length=0)["code"])
        assert set(df["specialty_code"].drop_nulls().unique()) <= spec_codes


# ------------------------------------------------------------------ composition
def _placed(big):
    eth = pl.read_csv(REF / "ethnicity.csv", infer_schema_length=0).select(pl.col("code").alias("ETHNIC"), "group5", "group9")
    return read_raw(big, "admission").filter(pl.col("OUTCOME") == "Placed").join(eth, on="ETHNIC", how="left")


def test_composition_marginals(big):
    pa = _placed(big)
    n = pa.height
    assert n == N_BIG
    tol = lambda p: 4 * math.sqrt(p * (1 - p) / n) + 0.003  # noqa: E731
    imd = pa["IMD_QUINTILE"].cast(pl.Int64)
    for q, p in enumerate(P.IMD_SHARES, 1):
        assert abs((imd == q).mean() - p) < tol(p), q
    known = pa.filter(pl.col("group9") != "Unknown")
    for g, p in P.ETHNICITY9_SHARES.items():
        assert abs((known["group9"] == g).mean() - p) < tol(p), g
    assert abs((pa["SEX"] == "M").mean() - P.MALE_SHARE) < tol(P.MALE_SHARE)
    assert abs((pa["SCHOOL_TYPE"] == "Independent").mean() - P.INDEPENDENT_SHARE) < tol(0.266)
    # ethnicity and deprivation drawn jointly [S23]
    w = (imd.filter(pa["group5"] == "White") == 1).mean()
    b = (imd.filter(pa["group5"].is_in(["Asian", "Black", "Mixed", "Other"])) == 1).mean()
    assert abs(w - 0.035) < 0.01 and abs(b - 0.151) < 0.025 and b > 3 * w
    # SES measures correlate: independent school commoner in least deprived areas
    ind = pa["SCHOOL_TYPE"] == "Independent"
    assert ind.filter(imd == 5).mean() > 2.5 * ind.filter(imd == 1).mean()


def test_cohorts_reapplicants_and_unplaced(big):
    adm = read_raw(big, "admission")
    truth = pl.read_parquet(big / "truth.parquet").filter(pl.col("source") == "admission")
    adm = adm.join(truth, left_on="APPLICATION_REF", right_on="record_id")
    placed = adm.filter(pl.col("OUTCOME") == "Placed")
    assert placed["CYCLE_YEAR"].cast(pl.Int64).min() == 2007 and placed["CYCLE_YEAR"].cast(pl.Int64).max() == 2025
    assert placed["person_id"].is_unique().all()
    rows = adm.filter(pl.col("person_id").is_in(placed["person_id"].implode())).group_by("person_id").len()
    assert 0.15 <= (rows["len"] > 1).mean() <= 0.20
    never = adm.filter(~pl.col("person_id").is_in(placed["person_id"].implode()))
    assert never.height > 0.5 * N_BIG and set(never["OUTCOME"].unique()) == {"Unplaced", "Withdrawn"}
    others = pl.read_parquet(big / "truth.parquet").filter(pl.col("source") != "admission")
    assert not others["person_id"].is_in(never["person_id"].implode()).any()


def test_fsm_only_from_2023(big):
    adm = read_raw(big, "admission").with_columns(pl.col("CYCLE_YEAR").cast(pl.Int64))
    assert adm.filter(pl.col("CYCLE_YEAR") < 2023)["FSM"].null_count() == adm.filter(pl.col("CYCLE_YEAR") < 2023).height
    assert adm.filter(pl.col("CYCLE_YEAR") >= 2023)["FSM"].null_count() == 0


# ------------------------------------------------------------------ careers
def test_fp_scores_null_from_fp2024(big):
    trn = read_raw(big, "training").with_columns(pl.col("FP_YEAR").cast(pl.Int64))
    late = trn.filter(pl.col("FP_YEAR") >= 2024)
    early = trn.filter(pl.col("FP_YEAR") < 2024)
    assert late.height > 0 and early.height > 0
    for c in ("EPM_DECILE", "SJT_SCORE", "UKFP_TOTAL"):
        assert late[c].null_count() == late.height, c
        assert early[c].null_count() == 0, c
    assert set(late["ALLOCATION"].unique()) == {"PIA"} and set(early["ALLOCATION"].unique()) == {"Score"}
    sjt = early["SJT_SCORE"].cast(pl.Float64)
    assert abs(sjt.mean() - 40) < 0.5 and sjt.max() <= 50
    tot = early["UKFP_TOTAL"].cast(pl.Float64)
    assert (tot - early["SJT_SCORE"].cast(pl.Float64) - early["EPM_POINTS"].cast(pl.Float64)
            - early["EA_POINTS"].cast(pl.Float64).fill_null(0)).abs().max() < 0.011


def test_attrition_and_withdrawn_have_no_later_records(big):
    trn = read_raw(big, "training")
    truth = pl.read_parquet(big / "truth.parquet")
    trn = trn.join(truth.filter(pl.col("source") == "training"), left_on="HUSID", right_on="record_id")
    old = trn.filter(pl.col("ENTRY_YEAR").cast(pl.Int64) <= 2018)
    assert 0.04 < (old["END_STATUS"] == "Withdrawn").mean() < 0.07
    w = trn.filter(pl.col("END_STATUS") == "Withdrawn")
    assert w["FP_YEAR"].null_count() == w.height and w["QUAL_YEAR"].null_count() == w.height
    reg_people = truth.filter(pl.col("source") == "registration")["person_id"]
    assert not w["person_id"].is_in(reg_people.implode()).any()
    # several applications per doctor, and register-only rows for doctors who never applied
    reg = read_raw(big, "registration").join(truth, left_on="APPLICATION_ID", right_on="record_id")
    assert reg["RECRUITMENT_YEAR"].null_count() > 0
    per = reg.filter(pl.col("RECRUITMENT_YEAR").is_not_null()).group_by("person_id").len()
    assert per["len"].mean() > 2
    assert reg.filter(pl.col("OFFER_STATUS") == "Accepted").group_by("person_id").len()["len"].max() == 1


def test_register_dates_dmmyyyy(big):
    reg = read_raw(big, "registration")
    vals = pl.concat([reg[c].drop_nulls() for c in ("FR_DATE", "SPECIALIST_REGISTER_DATE", "GP_REGISTER_DATE", "PR_DATE")])
    assert vals.len() > N_BIG * 0.5
    assert vals.str.contains(r"^[1-9][0-9]?(0[1-9]|1[0-2])(19|20)[0-9]{2}$").all()
    assert (vals.str.len_chars() == 7).any() and (vals.str.len_chars() == 8).any()
    d = parse_dates(vals, ["DMMYYYY"])
    assert d.null_count() == 0 and d.max() <= np.datetime64("2025-09-30")
    assert parse_dates(pl.Series(["5071978"]), ["DMMYYYY"])[0].isoformat() == "1978-07-05"


# ------------------------------------------------------------------ planted errors
def _tag_rate(errors: pl.DataFrame, tag: str, source: str | None = None) -> tuple[float, int]:
    e = errors if source is None else errors.filter(pl.col("source") == source)
    return float(e["errors"].fill_null("").str.split(",").list.contains(tag).mean()), e.height


@pytest.mark.parametrize("tag,source,attr", [
    ("forename_typo", None, "forename_typo"), ("surname_typo", None, "surname_typo"),
    ("dob_error", None, "dob_error"), ("sex_error", None, "sex_error"),
    ("ucas_hyphenated", "training", "ucas_hyphenated"), ("ucas_leading_zeros_lost", "training", "ucas_leading_zeros_lost"),
    ("gmc_typo", "registration", "gmc_typo"), ("gmc_transposition", "registration", "gmc_transposition"),
])
def test_planted_error_rates(big, tag, source, attr):
    rate, n = _tag_rate(pl.read_parquet(big / "truth_errors.parquet"), tag, source)
    p = getattr(ErrorModel(), attr)
    assert abs(rate - p) < 4.5 * math.sqrt(p * (1 - p) / n) + 0.0005, (tag, rate, p)


def test_errors_visible_in_files(big):
    """The tags are not bookkeeping only: the files disagree with the truth at those rates."""
    people = pl.read_parquet(big / "truth_people.parquet")
    truth = pl.read_parquet(big / "truth.parquet")
    reg = read_raw(big, "registration").join(truth, left_on="APPLICATION_ID", right_on="record_id").join(people, on="person_id")
    dob_bad = (reg["DATE_OF_BIRTH"].str.to_date("%d-%b-%Y") != reg["date_of_birth"]).mean()
    assert 0.002 < dob_bad < 0.007
    g = reg.filter(pl.col("GMC_REF_NO").is_not_null())
    assert 0.93 < reg["GMC_REF_NO"].is_not_null().mean() < 0.97
    wrong = (g["GMC_REF_NO"] != g["gmc_number"]).mean()
    assert 0.002 < wrong < 0.009
    assert g["GMC_REF_NO"].str.contains(r"^[0-9]{7}$").all()
    sex_bad = ((reg["GENDER"] == "W") != (reg["sex"] == "F")).mean()
    assert 0.0005 < sex_bad < 0.004
    trn = read_raw(big, "training").join(truth, left_on="HUSID", right_on="record_id").join(people, on="person_id")
    holders = trn.filter(pl.col("gmc_number").is_not_null())
    assert 0.25 < (holders["DHREGREF"] == holders["gmc_number"]).mean() < 0.35
    ucas = trn["UCASPERID"].drop_nulls()
    assert 0.04 < ucas.str.contains("-").mean() < 0.06
    assert 0.005 < (ucas.str.len_chars() < 10).mean() < 0.015
    # postcodes: same at admission -> training ~0.9
    adm = read_raw(big, "admission").filter(pl.col("OUTCOME") == "Placed").join(truth, left_on="APPLICATION_REF", right_on="record_id")
    j = adm.select("person_id", pl.col("HOME_POSTCODE").str.replace_all(" ", "").alias("a")).join(
        trn.select("person_id", pl.col("DOMICILE_POSTCODE").str.replace_all(" ", "").alias("t")), on="person_id")
    assert 0.88 < (j["a"] == j["t"]).mean() < 0.92


def test_name_format_errors_vary_by_ethnicity(big):
    errors = pl.read_parquet(big / "truth_errors.parquet").join(pl.read_parquet(big / "truth.parquet"), on=["source", "record_id"]) \
        .join(pl.read_parquet(big / "truth_people.parquet").select("person_id", "error_group"), on="person_id")
    r = errors.with_columns(pl.col("errors").fill_null("").str.split(",").list.contains("name_format").alias("nf")) \
        .group_by("error_group").agg(pl.col("nf").mean()).to_dict(as_series=False)
    rate = dict(zip(r["error_group"], r["nf"]))
    assert abs(rate["White"] - 0.02) < 0.004
    assert rate["Chinese"] > 2 * rate["White"] and rate["Pakistani"] > 1.7 * rate["White"]
    assert rate["Indian"] > 1.3 * rate["White"]


def test_marriage_changes_women_surnames(big):
    people = pl.read_parquet(big / "truth_people.parquet")
    truth = pl.read_parquet(big / "truth.parquet")
    reg = read_raw(big, "registration").join(truth, left_on="APPLICATION_ID", right_on="record_id").join(people, on="person_id")
    yr = pl.coalesce(pl.col("RECRUITMENT_YEAR").cast(pl.Int64), pl.lit(2025))
    older = reg.filter(yr - pl.col("date_of_birth").dt.year() >= 32)
    diff = older.with_columns((pl.col("SURNAME") != pl.col("surname_birth")).alias("d")).group_by("sex").agg(pl.col("d").mean())
    d = dict(zip(diff["sex"], diff["d"]))
    assert 0.15 < d["F"] < 0.40 and d["M"] < 0.07 and d["F"] > 4 * d["M"]


def test_error_model_is_a_parameter(tmp_path):
    generate(1500, 3, tmp_path, error_model=ErrorModel(forename_typo=0.2, gmc_present_registration=0.5))
    rate, _ = _tag_rate(pl.read_parquet(tmp_path / "truth_errors.parquet"), "forename_typo")
    assert 0.17 < rate < 0.23
    reg = read_raw(tmp_path, "registration")
    assert 0.44 < reg["GMC_REF_NO"].is_not_null().mean() < 0.56


# ------------------------------------------------------------------ SES gradient and report
def test_ses_gradient_in_truth(big):
    assert TRUE_OR_INDEPENDENT_SURGERY_VS_GP == pytest.approx(1 / 0.57)
    g = ses_gradient(big)
    assert g["n"] > 3000
    assert g["crude_or"] > 1.3
    # adjusted estimate recovers the generator coefficient (SE of log OR ~0.1 at this size)
    assert abs(math.log(g["adjusted_or"]) - math.log(TRUE_OR_INDEPENDENT_SURGERY_VS_GP)) < 0.3
    assert 3.0 < g["male_or"] < 5.5


def test_specialty_shares_and_competition(big):
    reg = read_raw(big, "registration")
    spec = pl.read_csv(REF / "specialties.csv", infer_schema_length=0)
    acc = reg.filter(pl.col("OFFER_STATUS") == "Accepted").join(spec.select(pl.col("code").alias("SPECIALTY"), "group"), on="SPECIALTY")
    for g, p in P.GROUP_SHARES.items():
        assert abs((acc["group"] == g).mean() - p) < 4 * math.sqrt(p * (1 - p) / acc.height) + 0.003, g
    assert set(spec["competitive_tercile"]) == {"low", "mid", "high"}


def test_realism_report(big):
    text = realism_report(big)
    for s in ("[S23]", "[S24]", "[S42]", "[S17]", "independent school OR, adjusted", "IMD Q1 among BAME"):
        assert s in text
    assert "FP2024+ rows with any score (must be 0)                   0" in text
