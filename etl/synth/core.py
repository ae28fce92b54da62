"""Simulate people, careers and the three source extracts (in memory, polars frames)."""
from __future__ import annotations

import numpy as np
import polars as pl

from . import params as P
from .noise import digit_errors, record_noise
from .population import (IMD_INDEX, assign_schools, cat, ordered, draw_people, load_schools, load_specialties,
                         marriage, postcodes, preferred_names, specialty_logit)

SNAP = np.datetime64(f"{P.SNAPSHOT_YEAR}-09-30")
SCHOOL_TYPE_NATIVE = {"independent": "Independent", "grammar": "Grammar", "comprehensive": "Comprehensive",
                      "sixth_form_college": "Sixth Form College", "fe_college": "FE College",
                      "other": "Other", "unknown": "Unknown"}
COURSE_CODE = {"SEM": "A100", "GEP": "A101", "EMDP": "A104"}
COURSE_ROUTE = {"SEM": "Standard entry", "GEP": "Graduate entry", "EMDP": "Gateway"}
EMAIL_DOMAINS = np.array(["gmail.com", "hotmail.co.uk", "yahoo.co.uk", "outlook.com", "icloud.com",
                          "btinternet.com", "live.co.uk"], dtype=object)
QUALIFICATION = {"Scotland": "MBChB", "Wales": "MBBCh", "NI": "MB BCh BAO", "England": "MBChB"}


def _year(d):
    return d.astype("datetime64[Y]").astype(np.int64) + 1970


def _ymd(y, m, d):
    return ((np.asarray(y) - 1970).astype("datetime64[Y]").astype("datetime64[M]")
            + (np.asarray(m) - 1)).astype("datetime64[D]") + (np.asarray(d) - 1)


def _rand_date(rng, year, month, day, spread):
    return _ymd(year, month, day) + rng.integers(0, spread + 1, len(year))


def _unique_ids(rng, k: int, lo: int, hi: int) -> np.ndarray:
    """k distinct random integers in [lo, hi), in random order."""
    out = np.empty(0, dtype=np.int64)
    while len(out) < k:
        x = rng.integers(lo, hi, int(k * 1.05) + 16)
        x = np.concatenate([out, x])
        _, first = np.unique(x, return_index=True)
        out = x[np.sort(first)]
    return out[:k]


def _fmt_date(col: pl.Expr, style: str) -> pl.Expr:
    if style == "DMMYYYY":   # LRMP: day without leading zero, e.g. 5071978 [S17]
        return pl.concat_str([col.dt.day().cast(pl.String), col.dt.strftime("%m%Y")])
    return col.dt.strftime(style)


def simulate(n: int, seed: int, em) -> dict:
    ss = np.random.SeedSequence([seed, 20261126])
    R = [np.random.default_rng(s) for s in ss.spawn(16)]
    schools = load_schools()
    sch_code = np.array([s["code"] for s in schools], dtype=object)
    sch_name = np.array([s["name"] for s in schools], dtype=object)
    sch_ukprn = np.array([s["ukprn"] for s in schools], dtype=object)
    sch_nation = np.array([s["nation"] for s in schools], dtype=object)
    specs = {s["code"]: s for s in load_specialties()}

    # ------------------------------------------------------------ entrants
    r = R[0]
    years = {y: w for y, w in P.COHORT_WEIGHT.items()}
    E = np.sort(cat(r, n, years).astype(np.int64))
    ppl = draw_people(r, n, True, seed, cycle=E)
    school = assign_schools(R[1], E, ppl["nation"])
    pref = preferred_names(R[1], ppl, em)
    mar_year, mar_surname = marriage(R[1], ppl, em, seed)
    home_pc = postcodes(R[1], ppl["nation"])

    # ------------------------------------------------------------ careers
    r = R[2]
    withdraw = r.random(n) < P.P_NOT_GRADUATE
    leave_year = E + 1 + np.searchsorted(np.cumsum([.4, .3, .2, .1]), r.random(n), side="right").clip(0, 3)
    length = (np.vectorize(P.COURSE_YEARS.get, otypes=[np.int64])(ppl["course"])
              + ((ppl["course"] == "SEM") & (r.random(n) < P.P_INTERCALATE)) + (r.random(n) < 0.03))
    grad = E + length
    outcome = np.where(withdraw, np.where(leave_year <= P.SNAPSHOT_YEAR, "withdrew", "ongoing"),
                       np.where(grad <= P.SNAPSHOT_YEAR, "graduated", "ongoing")).astype(object)
    graduated = outcome == "graduated"
    fp = np.where(graduated, grad + (r.random(n) < 0.03), 0)
    has_fp = graduated & (fp <= P.SNAPSHOT_YEAR)
    fp = np.where(has_fp, fp, 0)
    # ability and UKFP scores; ethnic awarding gap [S23]
    gap = np.vectorize(lambda g: P.AWARDING_GAP.get(g, 0.0), otypes=[float])(ppl["g9"])
    z = 0.95 * r.standard_normal(n) + P.AWARDING_GAP_SCALE * gap + 0.1 * ppl["ses"]
    epm_latent = z + 0.6 * r.standard_normal(n)
    dfz = pl.DataFrame({"s": school, "fp": fp, "l": epm_latent})
    decile = dfz.select(
        (pl.col("l").rank("ordinal", descending=True).over(["s", "fp"]) * 10
         / pl.len().over(["s", "fp"])).ceil().cast(pl.Int64).clip(1, 10)).to_series().to_numpy()
    ea = np.clip(np.rint(1.8 + 0.5 * z + 1.2 * r.standard_normal(n) + 1.5 * (ppl["course"] == "GEP")), 0, 7)
    sjt = np.round(np.clip(P.SJT_MEAN + P.SJT_SD * (0.55 * z + 0.835 * r.standard_normal(n)), 0, P.SJT_MAX), 2)
    hyp_total = (43 - (decile - 1)) + ea + sjt            # FP2013-22 scheme [S54]
    scored = has_fp & (fp < P.PIA_FROM_FP)
    fp2023 = fp == 2023
    epm_pts = np.where(fp2023, 50 - (decile - 1), 43 - (decile - 1))    # FP2023: 41-50, no EA [S56]
    ea_rec = np.where(fp2023, 0, ea)
    total = np.round(epm_pts + ea_rec + sjt, 2)
    # ARCP (F1 complete by Aug fp+1, F2 by Aug fp+2)
    f1 = np.where(has_fp & (fp + 1 <= P.SNAPSHOT_YEAR), cat(r, n, P.ARCP_F1), None)
    f2_ok = has_fp & (fp + 2 <= P.SNAPSHOT_YEAR) & ~np.isin(f1, ["4"])
    f2 = np.where(f2_ok, cat(r, n, P.ARCP_F2), None)
    found_sch = np.array(P.FOUNDATION_SCHOOLS, dtype=object)[r.integers(0, len(P.FOUNDATION_SCHOOLS), n)]
    # specialty destination: Kumwenda multinomial logit [S24]
    state = ppl["school_type"] != "independent"
    X = np.column_stack([hyp_total - hyp_total[has_fp].mean() if has_fp.any() else hyp_total,
                         ppl["sex"] == "M", state, ppl["pared"] == "02",
                         ~np.isin(ppl["g9"], ["White", "Unknown"]), ppl["course"] != "GEP"]).astype(float)
    gidx, alpha = specialty_logit(r, X)
    group = np.array(P.SPECIALTY_GROUPS, dtype=object)[gidx]
    # destination specialty within the group
    dest = np.empty(n, dtype=object)
    for g, d in P.SPECIALTY_WITHIN_GROUP.items():
        m = group == g
        dest[m] = cat(r, int(m.sum()), d)
    # timing of specialty applications [S80][S59]
    f2_end = fp + 2
    never = r.random(n) < P.P_NEVER_APPLY
    pdir = np.vectorize(P.p_direct, otypes=[float])(f2_end.astype(float))
    direct = r.random(n) < pdir
    gapy = np.where(direct, 0, 1 + np.searchsorted(np.cumsum([.45, .3, .15, .1]), r.random(n), side="right").clip(0, 3))
    succ = f2_end + gapy
    failed = r.random(n) < P.P_FAILED_FIRST_YEAR
    fail_year = np.where(failed, succ - 1, 0)
    shift = failed & (fail_year < f2_end)
    fail_year = np.where(shift, succ, fail_year)
    succ = np.where(shift, succ + 1, succ)
    can_apply = has_fp & f2_ok & ~never
    fail_row = can_apply & failed & (fail_year <= P.SNAPSHOT_YEAR)
    succ_row = can_apply & (succ <= P.SNAPSHOT_YEAR)
    dest = np.where((dest == "CMT") & (succ >= 2019), "IMT", dest)
    # register dates [S71][S72][S75]
    has_gmc = has_fp
    pr_date = np.where(has_fp, _rand_date(r, np.maximum(fp, 1971), 7, 25, 14), np.datetime64("NaT"))
    fr_delay = np.where(np.isin(f1, ["3", "5"]), 180, 0) + r.integers(0, 15, n)
    fr_date = np.where(has_fp & (f1 != None) & (f1 != "4"),  # noqa: E711
                       _ymd(np.maximum(fp + 1, 1971), 7, 28) + fr_delay, np.datetime64("NaT"))
    fr_date = np.where(fr_date <= SNAP, fr_date, np.datetime64("NaT"))
    train_years = np.vectorize(lambda g: P.TRAINING_YEARS.get(g, 6), otypes=[float])(group)
    slow = np.where(group == "GP", r.uniform(1.0, 1.25, n), r.uniform(1.0, 1.4, n))
    cct = _ymd(np.maximum(succ, 1971), 8, 1) + (train_years * slow * 365.25).astype(np.int64)
    lag = np.where(group == "GP", r.integers(-20, 31, n), r.integers(0, 180, n))   # [S75]
    reg_date = cct + lag
    on_reg = succ_row & (reg_date <= SNAP)
    gp_reg = np.where(on_reg & (group == "GP"), reg_date, np.datetime64("NaT"))
    sp_reg = np.where(on_reg & (group != "GP"), reg_date, np.datetime64("NaT"))
    # GMC numbers, increasing with year of first registration
    gmc = np.full(n, "", dtype=object)
    k = int(has_gmc.sum())
    if k:
        nums = np.sort(R[3].choice(2_900_000, k, replace=False) + 7_000_000)
        order = np.lexsort((R[3].random(k), fp[has_gmc]))
        g = np.empty(k, dtype=np.int64)
        g[order] = nums
        gmc[has_gmc] = g.astype(str)

    # ------------------------------------------------------------ never-placed applicants
    r = R[4]
    m_unp = int(round(n * P.UNPLACED_PER_ENTRANT))
    C = cat(r, m_unp, years).astype(np.int64)
    unp = draw_people(r, m_unp, False, seed, cycle=C)
    unp_pc = postcodes(r, unp["nation"])
    unp_again = (r.random(m_unp) < 0.2) & (C < P.LAST_COHORT)

    # ------------------------------------------------------------ admission rows
    r = R[5]
    reapp = r.random(n) < P.REAPPLICANT_SHARE
    two = reapp & (r.random(n) < P.P_SECOND_REAPPLY)
    pid_e = np.arange(n)
    pid_u = n + np.arange(m_unp)
    a_pid = np.concatenate([pid_e, pid_e[reapp], pid_e[two], pid_u, pid_u[unp_again]])
    a_cycle = np.concatenate([E, E[reapp] - 1, E[two] - 2, C, C[unp_again] + 1])
    a_kind = np.concatenate([np.zeros(n), np.ones(reapp.sum()), np.full(two.sum(), 2),
                             np.full(m_unp, 3), np.full(unp_again.sum(), 4)]).astype(np.int8)
    na = len(a_pid)
    # UCAS personal ids: a new account per cycle with p 0.5 [S9]; placed cycle is the reference
    ids = _unique_ids(R[6], na, 0, 10**10)
    base_id = np.empty(n + m_unp, dtype=np.int64)
    base_id[pid_e] = ids[:n]
    base_id[pid_u] = ids[a_kind == 3]
    keep = r.random(na) >= P.P_NEW_UCAS_ID_ON_REAPPLY
    a_ucas = np.where(np.isin(a_kind, [1, 2, 4]) & keep, base_id[a_pid], ids)
    a_ucas = np.where(np.isin(a_kind, [0, 3]), base_id[a_pid], a_ucas)
    a_outcome = np.where(a_kind == 0, "placed", np.where(r.random(na) < P.P_WITHDRAWN_APPLICATION,
                                                           "withdrawn", "unplaced")).astype(object)

    def pcol(key, e_arr=None, u_arr=None):
        e_arr = ppl[key] if e_arr is None else e_arr
        u_arr = unp[key] if u_arr is None else u_arr
        return np.concatenate([e_arr, u_arr])[a_pid]

    a_given, a_middle, a_sur = pcol("given"), pcol("middle"), pcol("surname")
    a_dob, a_sex, a_fo = pcol("dob"), pcol("sex"), pcol("fo")
    all_mar_year = np.concatenate([mar_year, np.full(m_unp, np.nan)])
    all_mar_sur = np.concatenate([mar_surname, unp["surname"]])
    married_now = all_mar_year[a_pid] <= a_cycle - 1
    a_sur = np.where(married_now, all_mar_sur[a_pid], a_sur)
    errmult_all = np.vectorize(em.multiplier, otypes=[float])(np.concatenate([ppl["errgrp"], unp["errgrp"]]))
    g_, m_, s_, d_, x_, a_tags = record_noise(R[7], em, errmult_all[a_pid], a_given, a_middle, a_sur, a_dob, a_sex, a_fo)
    a_pc = np.concatenate([home_pc, unp_pc])[a_pid]
    nat_all = np.concatenate([ppl["nation"], unp["nation"]])[a_pid]
    email_user = pl.DataFrame({"g": pcol("given").astype(str), "s": pcol("surname").astype(str),
                               "n": r.integers(1, 999, na), "d": EMAIL_DOMAINS[r.integers(0, len(EMAIL_DOMAINS), na)].astype(str),
                               "style": r.integers(0, 3, na)})
    email = email_user.select(pl.when(pl.col("style") == 0).then(
        pl.concat_str([pl.col("g"), pl.lit("."), pl.col("s"), pl.lit("@"), pl.col("d")]))
        .when(pl.col("style") == 1).then(pl.concat_str([pl.col("g").str.slice(0, 1), pl.col("s"),
                                                        pl.col("n").cast(pl.String), pl.lit("@"), pl.col("d")]))
        .otherwise(pl.concat_str([pl.col("s"), pl.col("g"), pl.col("n").cast(pl.String), pl.lit("@"), pl.col("d")]))
        .str.to_lowercase().str.replace_all(r"[ '\-]", "")).to_series()
    # FSM asked from the 2023 cycle [S40]; "Yes" goes to the lowest family SES, "Don't know" at random
    fsm = np.full(na, None, dtype=object)
    asked = a_cycle >= P.FSM_FROM_CYCLE
    dk = asked & (r.random(na) < P.FSM_SHARES["DK"])
    yn = asked & ~dk
    yes = ordered(-pcol("ses")[yn] + 0.5 * r.standard_normal(int(yn.sum())),
                  [P.FSM_SHARES["Y"], P.FSM_SHARES["N"]]) == 0
    fsm[yn] = np.where(yes, "Y", "N")
    fsm[dk] = "DK"
    placed = a_kind == 0
    a_school = np.where(placed, school[np.minimum(a_pid, n - 1)], -1)
    ucat = np.where(a_cycle < 2020, np.rint(r.normal(2650, 180, na)), np.rint(r.normal(2000, 140, na)))
    adm = pl.DataFrame({
        "APPLICATION_REF": _S(a_ucas).cast(pl.String).str.zfill(10) + "-UH" + _S((a_cycle % 100).astype(str)).str.zfill(2),
        "UCAS_PERSONAL_ID": _S(a_ucas).cast(pl.String).str.zfill(10),
        "APPLICATION_SCHEME_CODE": "UH" + _S((a_cycle % 100).astype(str)).str.zfill(2),
        "CYCLE_YEAR": a_cycle,
        "Surname": s_.astype(str), "Forenames": _join(g_, m_),
        "DOB": d_, "SEX": x_.astype(str), "HOME_POSTCODE": a_pc.astype(str), "EMAIL": email,
        "DOMICILE": nat_all.astype(str), "FEE_STATUS": np.full(na, "Home"),
        "ETHNIC": _eth_native(pcol("eth_code"), a_cycle),
        "SEC": pcol("nssec").astype(str), "PARED": pcol("pared").astype(str),
        "SCHOOL_TYPE": _S(pcol("school_type").astype(str)).replace_strict(SCHOOL_TYPE_NATIVE),
        "FSM": _S(fsm, dtype=pl.String).replace_strict({"Y": "Yes", "N": "No", "DK": "Don't know"}, default=None),
        "POLAR4": _S(pcol("polar")).cast(pl.Int64, strict=False),
        "IMD_QUINTILE": pcol("imd"),
        "IMD_INDEX": _S(nat_all.astype(str)).replace_strict(IMD_INDEX),
        "UCAT_TOTAL": ucat.astype(np.int64),
        "OUTCOME": _S(a_outcome.astype(str)).replace_strict({"placed": "Placed", "unplaced": "Unplaced", "withdrawn": "Withdrawn"}),
        "PLACED_UKPRN": _S(np.where(placed, sch_ukprn[np.maximum(a_school, 0)], None), dtype=pl.String),
        "COURSE_CODE": _S(np.where(placed, np.vectorize(COURSE_CODE.get, otypes=[object])(pcol("course")), None), dtype=pl.String),
    }).with_columns(_fmt_date(pl.col("DOB"), "%d/%m/%Y").alias("DOB"))
    adm_pid = a_pid

    # ------------------------------------------------------------ training rows (one per entrant)
    r = R[8]
    t_time = np.where(outcome == "graduated", np.minimum(fp + 1, P.SNAPSHOT_YEAR), np.minimum(leave_year, P.SNAPSHOT_YEAR))
    t_sur = np.where(mar_year <= t_time, mar_surname, ppl["surname"])
    errmult = errmult_all[:n]
    tg, tm, ts, td, tx, t_tags = record_noise(R[9], em, errmult, ppl["given"], ppl["middle"], t_sur, ppl["dob"], ppl["sex"], ppl["fo"])
    t_ucas = _S(base_id[:n]).cast(pl.String).str.zfill(10).to_numpy().astype(object)
    u = r.random(n)
    ucas_missing = u < em.ucas_missing_training
    hyph = (u >= em.ucas_missing_training) & (u < em.ucas_missing_training + em.ucas_hyphenated)
    lead0 = _S(t_ucas, dtype=pl.String).str.starts_with("0").to_numpy()
    p_strip = min(1.0, em.ucas_leading_zeros_lost / max(lead0.mean(), 1e-9)) if n else 0
    strip = lead0 & ~hyph & ~ucas_missing & (r.random(n) < p_strip)
    t_ucas_out = t_ucas.copy()
    t_ucas_out[hyph] = [f"{s[:3]}-{s[3:6]}-{s[6:]}" for s in t_ucas[hyph]]
    t_ucas_out[strip] = [s.lstrip("0") for s in t_ucas[strip]]
    t_ucas_out[ucas_missing] = None
    t_gmc_present = has_gmc & (r.random(n) < em.gmc_present_training)
    t_gmc = np.where(t_gmc_present, gmc, np.where(r.random(n) < 0.9, "99999999", None))
    t_pc = np.where(r.random(n) < em.p_postcode_same_adm_train, home_pc, postcodes(r, ppl["nation"]))
    t_pc = np.where(r.random(n) < 0.15, np.char.replace(t_pc.astype(str), " ", ""), t_pc)   # format quirk
    scode = sch_code[school]
    trn = pl.DataFrame({
        "HUSID": _S((E % 100).astype(str)).str.zfill(2) + _S(sch_ukprn[school].astype(str)).str.slice(4, 4)
                 + _S(R[10].permutation(n).astype(str)).str.zfill(7),
        "NUMHUS": _S(np.full(n, "1")),
        "UCASPERID": _S(t_ucas_out, dtype=pl.String),
        "DHREGREF": _S(t_gmc, dtype=pl.String),
        "SURNAME": _S(ts.astype(str)).str.to_uppercase(),
        "FNAMES": _join(tg, tm),
        "PREFERRED_NAME": _S(pref, dtype=pl.String),
        "BIRTHDTE": td,
        "SEXID": np.where(tx == "M", "1", "2"),
        "DOMICILE_POSTCODE": t_pc.astype(str),
        "UNI_EMAIL": pl.DataFrame({"g": ppl["given"].astype(str), "s": t_sur.astype(str),
                                   "n": r.integers(1, 99, n), "c": scode.astype(str)}).select(
            pl.concat_str([pl.col("g").str.slice(0, 1), pl.col("s"), pl.col("n").cast(pl.String),
                           pl.lit("@"), pl.col("c"), pl.lit(".ac.uk")]).str.to_lowercase().str.replace_all(r"[ '\-]", "")).to_series(),
        "UKPRN": sch_ukprn[school].astype(str),
        "ENTRY_YEAR": E,
        "COURSE_ROUTE": _S(ppl["course"].astype(str)).replace_strict(COURSE_ROUTE),
        "END_STATUS": _S(outcome.astype(str)).replace_strict({"graduated": "Completed", "withdrew": "Withdrawn", "ongoing": "Active"}),
        "QUALIFICATION": _S(np.where(graduated, np.vectorize(QUALIFICATION.get, otypes=[object])(sch_nation[school]), None), dtype=pl.String),
        "QUAL_YEAR": _S(np.where(graduated, grad, None), dtype=pl.Int64),
        "FP_YEAR": _S(np.where(has_fp, fp, None), dtype=pl.Int64),
        "ALLOCATION": _S(np.where(has_fp, np.where(scored, "Score", "PIA"), None), dtype=pl.String),
        "EPM_DECILE": _S(np.where(scored, decile, None), dtype=pl.Int64),
        "EPM_POINTS": _S(np.where(scored, epm_pts, None), dtype=pl.Int64),
        "EA_POINTS": _S(np.where(scored & ~fp2023, ea_rec, None), dtype=pl.Int64),
        "SJT_SCORE": _S(np.where(scored, sjt, None), dtype=pl.Float64),
        "UKFP_TOTAL": _S(np.where(scored, total, None), dtype=pl.Float64),
        "PIA_RANK": _S(np.where(has_fp & ~scored, r.integers(1, 10000, n), None), dtype=pl.Int64),
        "FOUNDATION_SCHOOL": _S(np.where(has_fp, found_sch, None), dtype=pl.String),
        "F1_ARCP_OUTCOME": _S(f1, dtype=pl.String),
        "F2_ARCP_OUTCOME": _S(f2, dtype=pl.String),
    }).with_columns(pl.col("BIRTHDTE").dt.strftime("%Y-%m-%d"))
    trn_pid = pid_e

    # ------------------------------------------------------------ registration rows
    r = R[11]
    n_extra_s = r.poisson(P.APPS_PER_APPLICANT_YEAR - 1, n)
    n_extra_f = r.poisson(P.APPS_PER_APPLICANT_YEAR - 1, n)
    cnt_s = np.where(succ_row, 1 + n_extra_s, 0)
    cnt_f = np.where(fail_row, 1 + n_extra_f, 0)
    reg_only = has_fp & ~succ_row & ~fail_row
    rp = np.concatenate([np.repeat(pid_e, cnt_s), np.repeat(pid_e, cnt_f), pid_e[reg_only]])
    ns, nf, no = cnt_s.sum(), cnt_f.sum(), reg_only.sum()
    first_s = np.zeros(ns, bool)
    if ns:
        starts = np.cumsum(cnt_s) - cnt_s
        first_s[starts[succ_row]] = True
    r_year = np.concatenate([succ[rp[:ns]], fail_year[rp[ns:ns + nf]], np.full(no, 0)])
    pop = {c: float(specs[c]["competition_ratio_2017"]) for c in specs}
    apps_w = {"GP": 5097, "CMT": 2343, "CPSY": 623, "CST": 1608, "ANA": 1296, "ACCSEM": 675, "PAED": 580,
              "OG": 555, "RAD": 1021, "HIST": 174, "OPH": 405, "NSG": 152, "CTS": 64, "OMFS": 20,
              "CSRH": 99, "CAMHS": 120, "DERM": 178}    # 2017 applications [S67][S70]
    other_spec = cat(r, len(rp), apps_w)
    spec = np.where(np.concatenate([first_s, np.zeros(nf + no, bool)]), dest[rp], other_spec)
    spec = np.where((spec == "CMT") & (r_year >= 2019), "IMT", spec)
    spec = np.where((spec == "IMT") & (r_year < 2019), "CMT", spec)
    ratio = np.vectorize(lambda c: pop.get(c, 2.0), otypes=[float])(spec)
    offered = r.random(len(rp)) < np.minimum(0.9, 1.0 / ratio) * 0.6
    status = np.where(np.concatenate([first_s, np.zeros(nf + no, bool)]), "accepted",
                      np.where(offered, "declined", "none")).astype(object)
    status[ns:ns + nf] = "none"
    pend = (r_year == P.SNAPSHOT_YEAR) & (status == "declined") & (r.random(len(rp)) < 0.3)
    status[pend] = "offered"
    is_app = np.arange(len(rp)) < ns + nf
    spec = np.where(is_app, spec, None)
    status = np.where(is_app, status, None)
    t_reg = np.where(is_app, r_year, P.SNAPSHOT_YEAR)
    r_sur = np.where(mar_year[rp] <= t_reg - 0.5, mar_surname[rp], ppl["surname"][rp])
    uses_pref = (pref != None) & (R[12].random(n) < em.p_register_uses_preferred)  # noqa: E711  (per person)
    use_pref = uses_pref[rp]
    r_given = np.where(use_pref, pref[rp], ppl["given"][rp])
    rg, rm, rs, rd, rx, r_tags = record_noise(R[13], em, errmult[rp], r_given, ppl["middle"][rp], r_sur,
                                              ppl["dob"][rp], ppl["sex"][rp], ppl["fo"][rp])
    r_tags["preferred_forename"] = use_pref
    # GMC number: present ~95%, typo 0.3%, transposition 0.2% (§3.2)
    rr = R[14]
    g_present = rr.random(len(rp)) < em.gmc_present_registration
    g_typo = g_present & (rr.random(len(rp)) < em.gmc_typo)
    g_trans = g_present & ~g_typo & (rr.random(len(rp)) < em.gmc_transposition)
    r_gmc = digit_errors(gmc[rp], g_typo, g_trans, rr)
    r_gmc = np.where(g_present, r_gmc, None)
    r_tags["gmc_typo"] = g_typo
    r_tags["gmc_transposition"] = g_trans & (r_gmc != gmc[rp])
    new_pc = postcodes(rr, cat(rr, n, P.DOMICILE_SHARES))
    r_pc = np.where(rr.random(len(rp)) < em.p_postcode_same_later, t_pc[rp], new_pc[rp])
    regions = np.array(P.TRAINING_REGIONS, dtype=object)
    seq = rr.permutation(len(rp))
    reg = pl.DataFrame({
        "APPLICATION_ID": _S(np.where(is_app, "APP", "LRMP"), dtype=pl.String)
                          + _S(seq.astype(str)).str.zfill(8),
        "ORIEL_ID": _S(np.where(is_app, "OR", None), dtype=pl.String) + _S((r_year % 100).astype(str)).str.zfill(2)
                    + "-" + _S(rr.permutation(len(rp)).astype(str)).str.zfill(7),
        "GMC_REF_NO": _S(r_gmc, dtype=pl.String),
        "SURNAME": rs.astype(str),
        "GIVEN_NAME": rg.astype(str),
        "OTHER_NAMES": _S(np.where(rm == "", None, rm), dtype=pl.String),
        "DATE_OF_BIRTH": rd,
        "GENDER": np.where(rx == "M", "M", "W"),
        "POSTCODE": r_pc.astype(str),
        "PLACE_OF_QUALIFICATION": sch_name[school[rp]].astype(str),
        "YEAR_OF_QUALIFICATION": grad[rp],
        "RECRUITMENT_YEAR": _S(np.where(is_app, r_year, None), dtype=pl.Int64),
        "SPECIALTY": _S(spec, dtype=pl.String),
        "ENTRY_LEVEL": _S(spec, dtype=pl.String).replace_strict({c: s["entry_level"] for c, s in specs.items()}, default=None),
        "OFFER_STATUS": _S(status, dtype=pl.String).replace_strict(
            {"accepted": "Accepted", "declined": "Declined", "offered": "Offered", "none": "Not offered"}, default=None),
        "REGION": _S(np.where(is_app, regions[rr.integers(0, len(regions), len(rp))], None), dtype=pl.String),
        "PR_DATE": pr_date[rp], "FR_DATE": fr_date[rp],
        "SPECIALIST_REGISTER_DATE": sp_reg[rp], "GP_REGISTER_DATE": gp_reg[rp],
        "REGISTRATION_STATUS": np.where(~np.isnat(fr_date[rp]), "Registered with Licence",
                                        "Provisionally registered with Licence"),
    }).with_columns(
        pl.col("DATE_OF_BIRTH").dt.strftime("%d-%b-%Y"),
        *[_fmt_date(pl.col(c), "DMMYYYY").alias(c) for c in ("PR_DATE", "FR_DATE", "SPECIALIST_REGISTER_DATE", "GP_REGISTER_DATE")],
    )
    reg_pid = rp

    # ------------------------------------------------------------ truth
    people = pl.DataFrame({
        "person_id": np.concatenate([pid_e, pid_u]),
        "placed": np.concatenate([np.ones(n, bool), np.zeros(m_unp, bool)]),
        "sex": np.concatenate([ppl["sex"], unp["sex"]]).astype(str),
        "date_of_birth": np.concatenate([ppl["dob"], unp["dob"]]),
        "given": np.concatenate([ppl["given"], unp["given"]]).astype(str),
        "middle": np.concatenate([ppl["middle"], unp["middle"]]).astype(str),
        "surname_birth": np.concatenate([ppl["surname"], unp["surname"]]).astype(str),
        "surname_married": np.concatenate([mar_surname, unp["surname"]]).astype(str),
        "marriage_year": all_mar_year,
        "ethnicity_code": np.concatenate([ppl["eth_code"], unp["eth_code"]]).astype(str),
        "group9": np.concatenate([ppl["g9"], unp["g9"]]).astype(str),
        "error_group": np.concatenate([ppl["errgrp"], unp["errgrp"]]).astype(str),
        "imd_quintile": np.concatenate([ppl["imd"], unp["imd"]]),
        "school_type": np.concatenate([ppl["school_type"], unp["school_type"]]).astype(str),
        "parental_he": np.concatenate([ppl["pared"], unp["pared"]]).astype(str),
        "course_type": np.concatenate([ppl["course"], unp["course"]]).astype(str),
        "entry_year": _S(np.concatenate([E, np.full(m_unp, -1)])).replace(-1, None),
        "medical_school": _S(np.concatenate([scode, np.full(m_unp, None)]), dtype=pl.String),
        "gmc_number": _S(np.concatenate([np.where(gmc == "", None, gmc), np.full(m_unp, None)]), dtype=pl.String),
        "ukfp_points_centred": np.concatenate([np.where(has_fp, X[:, 0], np.nan), np.full(m_unp, np.nan)]),
        "destination_group": _S(np.concatenate([np.where(succ_row, group, None), np.full(m_unp, None)]), dtype=pl.String),
    })
    truth = pl.concat([
        pl.DataFrame({"source": "admission", "record_id": adm["APPLICATION_REF"], "person_id": adm_pid}),
        pl.DataFrame({"source": "training", "record_id": trn["HUSID"], "person_id": trn_pid}),
        pl.DataFrame({"source": "registration", "record_id": reg["APPLICATION_ID"], "person_id": reg_pid}),
    ])
    t_tags.update({"ucas_hyphenated": hyph, "ucas_leading_zeros_lost": strip, "ucas_missing": ucas_missing})
    errors = pl.concat([_tags_frame("admission", adm["APPLICATION_REF"], a_tags),
                        _tags_frame("training", trn["HUSID"], t_tags),
                        _tags_frame("registration", reg["APPLICATION_ID"], r_tags)])
    return {"admission": adm, "training": trn, "registration": reg, "truth": truth,
            "people": people, "errors": errors, "alpha": alpha}


def _S(values, dtype=None) -> pl.Series:
    """Series from a numpy array; object arrays (str/None mixes) go through a list."""
    if isinstance(values, np.ndarray) and values.dtype == object:
        return pl.Series(values.tolist(), dtype=dtype, strict=False)
    return pl.Series(values, dtype=dtype) if dtype is not None else pl.Series(values)


def _join(given: np.ndarray, middle: np.ndarray) -> pl.Series:
    return pl.DataFrame({"g": given.astype(str), "m": middle.astype(str)}).select(
        pl.when(pl.col("m") == "").then(pl.col("g")).otherwise(pl.concat_str([pl.col("g"), pl.lit(" "), pl.col("m")]))
    ).to_series()


def _eth_native(code: np.ndarray, cycle: np.ndarray) -> pl.Series:
    """2-digit HESA codes; from the 2022 cycle the not-known/refused codes use the 3-digit frame [S32]."""
    s = _S(code.astype(str))
    return pl.DataFrame({"c": s, "y": cycle}).select(
        pl.when((pl.col("y") >= 2022) & (pl.col("c") == "98")).then(pl.lit("998"))
        .when((pl.col("y") >= 2022) & (pl.col("c") == "90")).then(pl.lit("997"))
        .otherwise(pl.col("c"))).to_series()


def _tags_frame(source: str, rid: pl.Series, tags: dict) -> pl.DataFrame:
    cols = {k: np.asarray(v, bool) for k, v in tags.items()}
    df = pl.DataFrame(cols)
    expr = pl.concat_list([pl.when(pl.col(k)).then(pl.lit(k)) for k in cols]).list.drop_nulls().list.join(",")
    return pl.DataFrame({"source": source, "record_id": rid}).with_columns(
        df.select(expr.alias("errors")).to_series().replace("", None))
