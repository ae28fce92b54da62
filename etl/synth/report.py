"""Realism report: observed marginals and error rates of a generated delivery beside their targets.

Reads the delivered CSVs plus the ground truth (truth.parquet, truth_people.parquet,
truth_errors.parquet) and returns a printable table. Every observation is computed
from the files, not from generator internals.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl

from . import params as P
from .population import REF_DIR

ERR_TARGETS = [  # tag, source(s), target, citation
    ("forename_typo", None, "forename_typo", "[S42]"),
    ("surname_typo", None, "surname_typo", "[S42]"),
    ("dob_error", None, "dob_error", "[S42][S103]"),
    ("sex_error", None, "sex_error", "[S42][S103]"),
    ("ucas_hyphenated", "training", "ucas_hyphenated", "§3.2"),
    ("ucas_leading_zeros_lost", "training", "ucas_leading_zeros_lost", "§3.2 [assumption]"),
    ("ucas_missing", "training", "ucas_missing_training", "[S6]"),
    ("gmc_typo", "registration", "gmc_typo", "§3.2"),
    ("gmc_transposition", "registration", "gmc_transposition", "§3.2"),
]


def logit_fit(X: np.ndarray, y: np.ndarray, iters: int = 30) -> np.ndarray:
    """Logistic regression by IRLS; returns coefficients (intercept first)."""
    X1 = np.column_stack([np.ones(len(X)), X])
    b = np.zeros(X1.shape[1])
    for _ in range(iters):
        p = 1 / (1 + np.exp(-X1 @ b))
        W = p * (1 - p) + 1e-9
        H = X1.T @ (X1 * W[:, None]) + 1e-8 * np.eye(len(b))
        step = np.linalg.solve(H, X1.T @ (y - p))
        b += step
        if np.abs(step).max() < 1e-8:
            break
    return b


def _read(out_dir: Path, name: str) -> pl.DataFrame:
    return pl.read_csv(out_dir / name, infer_schema_length=0)


class _Table:
    def __init__(self):
        self.rows: list[tuple] = []

    def section(self, title):
        self.rows.append(("##", title))

    def add(self, metric, observed, target="", source=""):
        fmt = lambda v: f"{v:.4f}" if isinstance(v, float) else str(v)  # noqa: E731
        self.rows.append((metric, fmt(observed), fmt(target), source))

    def render(self) -> str:
        w = [46, 12, 14]
        out = [f"{'metric':<{w[0]}} {'observed':>{w[1]}} {'target':>{w[2]}}  source", "-" * 100]
        for r in self.rows:
            if r[0] == "##":
                out.append(f"\n[{r[1]}]")
            else:
                out.append(f"{r[0]:<{w[0]}} {r[1]:>{w[1]}} {r[2]:>{w[2]}}  {r[3]}")
        return "\n".join(out)


def ses_gradient(out_dir: Path) -> dict:
    """Independent-school OR for Surgical vs GP accepted offers, crude and adjusted, on truth links."""
    out_dir = Path(out_dir)
    truth = pl.read_parquet(out_dir / "truth.parquet")
    people = pl.read_parquet(out_dir / "truth_people.parquet")
    adm = _read(out_dir, "admission.csv").filter(pl.col("OUTCOME") == "Placed")
    reg = _read(out_dir, "registration.csv").filter(pl.col("OFFER_STATUS") == "Accepted")
    trn = _read(out_dir, "training.csv")
    spec = pl.read_csv(REF_DIR / "specialties.csv", infer_schema_length=0).select(
        pl.col("code").alias("SPECIALTY"), pl.col("group"))
    eth = pl.read_csv(REF_DIR / "ethnicity.csv", infer_schema_length=0).select(
        pl.col("code").alias("ETHNIC"), pl.col("group5"))
    t = truth.rename({"record_id": "rid"})
    a = adm.join(t.filter(pl.col("source") == "admission"), left_on="APPLICATION_REF", right_on="rid") \
        .join(eth, on="ETHNIC", how="left").select("person_id", "SCHOOL_TYPE", "PARED", "group5")
    r = reg.join(t.filter(pl.col("source") == "registration"), left_on="APPLICATION_ID", right_on="rid") \
        .join(spec, on="SPECIALTY", how="left").group_by("person_id").agg(pl.col("group").first())
    tr = trn.join(t.filter(pl.col("source") == "training"), left_on="HUSID", right_on="rid") \
        .select("person_id", "COURSE_ROUTE")
    d = r.join(a, on="person_id").join(tr, on="person_id") \
        .join(people.select("person_id", "sex", "ukfp_points_centred"), on="person_id") \
        .filter(pl.col("group").is_in(["Surgical", "GP"]))
    if d.height < 50:
        return {"n": d.height, "crude_or": float("nan"), "adjusted_or": float("nan")}
    y = (d["group"] == "Surgical").to_numpy().astype(float)
    ind = (d["SCHOOL_TYPE"] == "Independent").to_numpy().astype(float)
    a_, b_ = ((y == 1) & (ind == 1)).sum(), ((y == 0) & (ind == 1)).sum()
    c_, d_ = ((y == 1) & (ind == 0)).sum(), ((y == 0) & (ind == 0)).sum()
    crude = (a_ * d_) / max(b_ * c_, 1)
    X = np.column_stack([
        d["ukfp_points_centred"].fill_null(0).fill_nan(0).to_numpy(),
        (d["sex"] == "M").to_numpy(), ind, (d["PARED"] == "02").to_numpy(),
        (~d["group5"].is_in(["White", "Unknown"]).fill_null(False)).to_numpy(),
        (d["COURSE_ROUTE"] != "Graduate entry").to_numpy()]).astype(float)
    b = logit_fit(X, y)
    return {"n": d.height, "crude_or": float(crude), "adjusted_or": float(np.exp(b[3])),
            "male_or": float(np.exp(b[2])), "points_or": float(np.exp(b[1]))}


def realism_report(out_dir) -> str:
    out_dir = Path(out_dir)
    em = P.ErrorModel()
    T = _Table()
    truth = pl.read_parquet(out_dir / "truth.parquet")
    people = pl.read_parquet(out_dir / "truth_people.parquet")
    errors = pl.read_parquet(out_dir / "truth_errors.parquet")
    adm, trn, reg = (_read(out_dir, f"{s}.csv") for s in ("admission", "training", "registration"))
    eth = pl.read_csv(REF_DIR / "ethnicity.csv", infer_schema_length=0)
    spec = pl.read_csv(REF_DIR / "specialties.csv", infer_schema_length=0)
    n_doc = people.filter(pl.col("placed")).height
    tA = truth.filter(pl.col("source") == "admission").rename({"record_id": "APPLICATION_REF"})
    tT = truth.filter(pl.col("source") == "training").rename({"record_id": "HUSID"})
    tR = truth.filter(pl.col("source") == "registration").rename({"record_id": "APPLICATION_ID"})
    adm = adm.join(tA.drop("source"), on="APPLICATION_REF")
    trn = trn.join(tT.drop("source"), on="HUSID")
    reg = reg.join(tR.drop("source"), on="APPLICATION_ID")

    T.section("volumes")
    T.add("doctors (placed entrants)", n_doc)
    T.add("rows admission / training / registration", f"{adm.height}/{trn.height}/{reg.height}")
    cohorts = trn["ENTRY_YEAR"].cast(pl.Int64)
    T.add("entry cohorts", f"{cohorts.min()}-{cohorts.max()}", f"{P.FIRST_COHORT}-{P.LAST_COHORT}", "brief")
    T.add("entrants per cohort (mean, scaled)", round(n_doc / (P.LAST_COHORT - P.FIRST_COHORT + 1), 1),
          "~8000 x N/152k", "[S2][S77]")
    placed_ids = adm.filter(pl.col("OUTCOME") == "Placed")["person_id"]
    nrows = adm.filter(pl.col("person_id").is_in(placed_ids.implode())).group_by("person_id").len()
    T.add("entrants with earlier unplaced cycles", float((nrows["len"] > 1).mean()), P.REAPPLICANT_SHARE, "[S9][S78]")
    T.add("never-placed applicants per entrant", round(people.filter(~pl.col("placed")).height / n_doc, 3),
          P.UNPLACED_PER_ENTRANT, "[assumption]")
    T.add("truth rows == extract rows", truth.height == adm.height + trn.height + reg.height, True, "")

    T.section("composition of entrants (placed admission rows)")
    pa = adm.filter(pl.col("OUTCOME") == "Placed").join(eth.select(pl.col("code").alias("ETHNIC"), "group5", "group9"),
                                                        on="ETHNIC", how="left")
    imd = pa["IMD_QUINTILE"].cast(pl.Int64)
    for q in range(1, 6):
        T.add(f"IMD Q{q}", float((imd == q).mean()), P.IMD_SHARES[q - 1], "[S23]")
    white = pa["group5"] == "White"
    bame = pa["group5"].is_in(["Mixed", "Asian", "Black", "Other"])
    T.add("IMD Q1 among White", float((imd.filter(white) == 1).mean()), P.IMD_Q1_WHITE, "[S23]")
    T.add("IMD Q1 among BAME", float((imd.filter(bame) == 1).mean()), P.IMD_Q1_BAME, "[S23]")
    known = pa.filter(pl.col("group9") != "Unknown")
    g9 = known["group9"].replace({"Black": "Black"})
    for g, v in P.ETHNICITY9_SHARES.items():
        T.add(f"ethnicity {g} (of known)", float((g9 == g).mean()), v, "[S23]")
    T.add("male", float((pa["SEX"] == "M").mean()), P.MALE_SHARE, "[S23]")
    T.add("independent school", float((pa["SCHOOL_TYPE"] == "Independent").mean()), P.INDEPENDENT_SHARE, "[S39]")
    T.add("grammar school", float((pa["SCHOOL_TYPE"] == "Grammar").mean()), P.GRAMMAR_SHARE, "[S39]")
    T.add("independent among IMD Q5 / Q1", f"{(pa.filter(imd == 5)['SCHOOL_TYPE'] == 'Independent').mean():.3f}/"
          f"{(pa.filter(imd == 1)['SCHOOL_TYPE'] == 'Independent').mean():.3f}", "gradient", "[S39][S20]")
    T.add("NS-SEC 01-02", float(pa["SEC"].is_in(["01", "02"]).mean()), 0.76, "[S39][S83]")
    T.add("NS-SEC 05-07", float(pa["SEC"].is_in(["05", "06", "07"]).mean()), 0.055, "[S83]")
    T.add("parental HE missing (97/98/99)", float(pa["PARED"].is_in(["97", "98", "99"]).mean()), 0.15, "[S44]")
    for c, v in P.COURSE_SHARES.items():
        code = {"SEM": "A100", "GEP": "A101", "EMDP": "A104"}[c]
        T.add(f"course {c}", float((pa["COURSE_CODE"] == code).mean()), v, "[S23]")
    fsm_pre = adm.filter(pl.col("CYCLE_YEAR").cast(pl.Int64) < P.FSM_FROM_CYCLE)["FSM"].is_not_null().sum()
    T.add("FSM non-null before 2023 cycle (rows)", int(fsm_pre), 0, "[S40]")
    ans = adm.filter((pl.col("CYCLE_YEAR").cast(pl.Int64) >= 2023) & pl.col("FSM").is_in(["Yes", "No"]))
    T.add("FSM Yes (2023+ applications answering)", float((ans["FSM"] == "Yes").mean()), P.FSM_SHARES["Y"], "[assumption]")
    T.add("FSM Yes (2023+ placed answering)", float((pa.filter(pl.col("FSM").is_in(["Yes", "No"]))["FSM"] == "Yes").mean()),
          "< applicants", "[S20]")

    T.section("careers (training, registration)")
    old = trn.filter(pl.col("ENTRY_YEAR").cast(pl.Int64) <= 2018)
    T.add("did not graduate (entry <= 2018)", float((old["END_STATUS"] == "Withdrawn").mean()), P.P_NOT_GRADUATE, "[S79]")
    fpy = trn["FP_YEAR"].cast(pl.Int64)
    late = trn.filter(fpy >= P.PIA_FROM_FP)
    T.add("FP2024+ rows with any score (must be 0)",
          int(late.select(pl.any_horizontal(pl.col("EPM_DECILE", "SJT_SCORE", "UKFP_TOTAL").is_not_null()).sum()).item()),
          0, "[S57]")
    sc = trn.filter(pl.col("ALLOCATION") == "Score").with_columns(pl.col("SJT_SCORE", "UKFP_TOTAL").cast(pl.Float64))
    T.add("SJT mean / sd", f"{sc['SJT_SCORE'].mean():.2f}/{sc['SJT_SCORE'].std():.2f}", "40/3.5", "[assumption] 1.6")
    pre23 = sc.filter(pl.col("FP_YEAR").cast(pl.Int64) < 2023)
    T.add("UKFP total median (FP<=2022)", round(float(pre23["UKFP_TOTAL"].median()), 2), "80.0-83.2", "[S24]")
    z = sc.with_columns(((pl.col("UKFP_TOTAL") - pl.col("UKFP_TOTAL").mean().over("FP_YEAR"))
                         / pl.col("UKFP_TOTAL").std().over("FP_YEAR")).alias("z")) \
        .join(people.select("person_id", "group9"), on="person_id")
    zw = z.filter(pl.col("group9") == "White")["z"].mean()
    for g, tgt in (("Pakistani", -0.53), ("Mixed", -0.15)):
        T.add(f"UKFP z gap {g} vs White", round(float(z.filter(pl.col("group9") == g)["z"].mean() - zw), 3), tgt, "[S23]")
    acc = reg.filter(pl.col("OFFER_STATUS") == "Accepted").join(
        spec.select(pl.col("code").alias("SPECIALTY"), "group"), on="SPECIALTY", how="left")
    for g, v in P.GROUP_SHARES.items():
        T.add(f"accepted offers: {g}", float((acc["group"] == g).mean()), v, "[S24]")
    apps = reg.filter(pl.col("RECRUITMENT_YEAR").is_not_null()).group_by("person_id", "RECRUITMENT_YEAR").len()
    T.add("applications per applicant-year", round(float(apps["len"].mean()), 2), P.APPS_PER_APPLICANT_YEAR, "[S116]")
    T.add("registration-only rows (no application)", int(reg["RECRUITMENT_YEAR"].is_null().sum()), ">0", "§3.2")
    dm = pl.concat([reg[c].drop_nulls() for c in ("FR_DATE", "SPECIALIST_REGISTER_DATE", "GP_REGISTER_DATE")])
    ok = dm.str.contains(r"^[1-9][0-9]?(0[1-9]|1[0-2])[0-9]{4}$")
    T.add("register dates in DMMYYYY form", float(ok.mean()), 1.0, "[S17]")
    T.add("register dates with 7 digits (day 1-9)", float((dm.str.len_chars() == 7).mean()), ">0 (Aug-heavy)", "[S17]")

    T.section("planted errors per record (truth_errors tags)")
    for tag, src, attr, cite in ERR_TARGETS:
        e = errors if src is None else errors.filter(pl.col("source") == src)
        rate = float(e["errors"].fill_null("").str.split(",").list.contains(tag).mean())
        T.add(f"{tag} ({src or 'all sources'})", rate, getattr(em, attr), cite)
    fe = errors.join(truth, on=["source", "record_id"]).join(people.select("person_id", "error_group"), on="person_id")
    fe = fe.with_columns(pl.col("errors").fill_null("").str.split(",").list.contains("name_format").alias("nf"))
    by = fe.group_by("error_group").agg(pl.col("nf").mean(), pl.len()).sort("error_group")
    for g, rate, cnt in by.iter_rows():
        if cnt >= 200:
            T.add(f"name-format variation: {g}", float(rate), em.name_format_base * em.multiplier(g), "§3.2 [assumption]")

    T.section("measured against true identities")
    tp = people.select("person_id", pl.col("date_of_birth").alias("true_dob"), pl.col("sex").alias("true_sex"),
                       "gmc_number", "surname_birth")
    for s, df, col, fmt in (("admission", adm, "DOB", "%d/%m/%Y"), ("training", trn, "BIRTHDTE", "%Y-%m-%d"),
                            ("registration", reg, "DATE_OF_BIRTH", "%d-%b-%Y")):
        j = df.join(tp, on="person_id")
        T.add(f"DOB differs from truth ({s})",
              float((j[col].str.to_date(fmt) != j["true_dob"]).mean()), em.dob_error, "[S42][S103]")
    j = reg.join(tp, on="person_id").filter(pl.col("GMC_REF_NO").is_not_null())
    T.add("GMC present (registration)", float(reg["GMC_REF_NO"].is_not_null().mean()), em.gmc_present_registration, "[S28]")
    T.add("GMC present but wrong (registration)", float((j["GMC_REF_NO"] != j["gmc_number"]).mean()),
          em.gmc_typo + em.gmc_transposition, "§3.2")
    jt = trn.join(tp, on="person_id").filter(pl.col("gmc_number").is_not_null())
    T.add("GMC present in training (GMC holders)", float((jt["DHREGREF"] == jt["gmc_number"]).mean()),
          em.gmc_present_training, "[S15]")
    T.add("training DHREGREF = 99999999", float((trn["DHREGREF"] == "99999999").mean()), "most", "[S15]")
    pa1 = adm.filter(pl.col("OUTCOME") == "Placed").select("person_id", pl.col("HOME_POSTCODE").str.replace_all(" ", "").alias("p0"))
    pt = trn.select("person_id", pl.col("DOMICILE_POSTCODE").str.replace_all(" ", "").alias("p1"))
    pr = reg.select("person_id", pl.col("POSTCODE").str.replace_all(" ", "").alias("p2"))
    T.add("postcode same admission -> training", float(pa1.join(pt, on="person_id").select((pl.col("p0") == pl.col("p1")).mean()).item()),
          em.p_postcode_same_adm_train, "§3.2")
    T.add("postcode same training -> registration", float(pt.join(pr, on="person_id").select((pl.col("p1") == pl.col("p2")).mean()).item()),
          em.p_postcode_same_later, "§3.2")
    # register rows of doctors aged 32+ at the record (median age at marriage, women 32.3 [S108])
    rec_year = pl.coalesce(pl.col("RECRUITMENT_YEAR").cast(pl.Int64), pl.lit(P.SNAPSHOT_YEAR))
    last = reg.join(people.select("person_id", "sex", "date_of_birth"), on="person_id") \
        .filter(rec_year - pl.col("date_of_birth").dt.year() >= 32) \
        .join(adm.filter(pl.col("OUTCOME") == "Placed").select("person_id", pl.col("Surname").alias("s0")), on="person_id") \
        .unique("person_id", keep="first")
    for sx, lab in (("F", "women"), ("M", "men")):
        d = last.filter(pl.col("sex") == sx)
        T.add(f"{lab} 32+: register surname != admission surname", float((d["SURNAME"] != d["s0"]).mean()),
              "0.15-0.30" if sx == "F" else "~0.02", "§3.2 [derived]")

    T.section("SES gradient in the truth (accepted offers, Surgical vs GP)")
    g = ses_gradient(out_dir)
    T.add("pairs analysed", g["n"])
    T.add("independent school OR, crude", round(g["crude_or"], 3), "", "")
    T.add("independent school OR, adjusted (logit)", round(g["adjusted_or"], 3),
          round(P.TRUE_OR_INDEPENDENT_SURGERY_VS_GP, 3), "[S24] 1/0.57")
    if "male_or" in g:
        T.add("male OR, adjusted", round(g["male_or"], 3), 4.11, "[S24]")
        T.add("UKFP per point OR, adjusted", round(g["points_or"], 3), 1.08, "[S24]")
    return T.render()
