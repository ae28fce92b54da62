"""True people and their careers, as numpy arrays (no per-person Python loops).

Entrants (placed applicants, the "doctors") come first (pid 0..n-1), then the
never-placed applicants. Composition follows UKMED 2012-14 [S23] with
ethnicity and deprivation drawn jointly; specialty destination follows the
Kumwenda 2019 multinomial logit [S24].
"""
from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import polars as pl

from . import params as P
from .names import NICKNAMES, ENGLISH_GIVEN_F, ENGLISH_GIVEN_M, vocabularies

REF_DIR = Path(__file__).resolve().parents[2] / "schemas" / "reference"
GROUP9_OF_CODE = {c: g for g, d in P.ETHNICITY_CODES.items() for c in d}
ERRGROUP_OF_CODE = {"10": "White", "13": "White", "14": "White", "15": "White", "19": "White",
                    "21": "Black Caribbean", "22": "Black African", "29": "Black other",
                    "31": "Indian", "32": "Pakistani", "33": "Bangladeshi", "34": "Chinese",
                    "39": "Other Asian", "41": "Mixed", "42": "Mixed", "43": "Mixed", "49": "Mixed",
                    "50": "Arab", "80": "Other"}
# naming tradition of forename / surname by ethnicity code: {code: [(fo, so, weight), ...]}
NAME_ORIGINS = {
    "10": [("WB", "WB", 0.96), ("EUR", "WB", 0.02), ("WB", "EUR", 0.02)],
    "13": [("WB", "WB", 1.0)], "14": [("WB", "WB", 1.0)], "15": [("WB", "WB", 1.0)],
    "19": [("EUR", "EUR", 0.7), ("WB", "WB", 0.3)],
    "21": [("CAR", "CAR", 1.0)], "22": [("AFR", "AFR", 0.93), ("CAR", "AFR", 0.07)],
    "29": [("AFR", "AFR", 0.5), ("CAR", "CAR", 0.5)],
    "31": [("IND", "IND", 1.0)], "32": [("PAK", "PAK", 1.0)], "33": [("BAN", "BAN", 1.0)],
    "34": [("CHN", "CHN", 1.0)], "39": [("OASIAN", "OASIAN", 1.0)],
    "41": [("WB", "CAR", 0.5), ("CAR", "WB", 0.3), ("WB", "WB", 0.2)],
    "42": [("WB", "AFR", 0.5), ("AFR", "WB", 0.2), ("WB", "WB", 0.3)],
    "43": [("WB", "IND", 0.3), ("WB", "WB", 0.3), ("IND", "WB", 0.2), ("PAK", "WB", 0.1), ("WB", "CHN", 0.1)],
    "49": [("WB", "WB", 0.4), ("EUR", "WB", 0.2), ("WB", "ARAB", 0.2), ("WB", "AFR", 0.2)],
    "50": [("ARAB", "ARAB", 1.0)],
    "80": [("ARAB", "ARAB", 0.3), ("EUR", "EUR", 0.3), ("OASIAN", "OASIAN", 0.2), ("AFR", "AFR", 0.2)],
    "UNK": [("WB", "WB", 0.7), ("IND", "IND", 0.1), ("PAK", "PAK", 0.1), ("AFR", "AFR", 0.1)],
}
P_MIDDLE = {"WB": 0.65, "EUR": 0.35, "IND": 0.30, "PAK": 0.35, "BAN": 0.35, "CHN": 0.05,
            "OASIAN": 0.25, "AFR": 0.55, "CAR": 0.5, "ARAB": 0.3}
AREAS = {  # postcode areas by nation (real area letters; districts synthetic)
    "England": "B BS LS M L NE S NG LE CV SO PO OX CB NR EX PL SW SE E N NW W EC BN RG MK LU "
               "SL GU KT CR BR DA ME CT TN HP WD AL SG CM CO IP PE LN DN HU YO HG BD HX WF OL BL "
               "WN PR BB LA CA DH SR TS DL HD SK CW ST WS WV DY TF WR HR GL BA TA DT BH SP SN",
    "Scotland": "EH G AB DD KY FK PA IV KA ML DG TD PH",
    "Wales": "CF SA LL NP LD",
    "NI": "BT",
}
UNIT_LETTERS = np.array(list("ABDEFGHJLNPQRSTUWXYZ"))
IMD_INDEX = {"England": "IMD2019_E", "Scotland": "SIMD2020", "Wales": "WIMD2019", "NI": "NIMDM2017"}


def load_schools() -> list[dict]:
    with open(REF_DIR / "medical_schools.csv", newline="") as f:
        return list(csv.DictReader(f))


def load_specialties() -> list[dict]:
    with open(REF_DIR / "specialties.csv", newline="") as f:
        return list(csv.DictReader(f))


# ---------------------------------------------------------------- helpers
def cat(rng: np.random.Generator, n: int, shares: dict) -> np.ndarray:
    keys = np.array(list(shares), dtype=object)
    p = np.array(list(shares.values()), dtype=float)
    idx = np.searchsorted(np.cumsum(p / p.sum()), rng.random(n), side="right")
    return keys[np.minimum(idx, len(keys) - 1)]


def ordered(score: np.ndarray, shares: list[float]) -> np.ndarray:
    """Index of category by rank of score (highest score -> category 0), hitting shares exactly."""
    n = len(score)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    rank = np.empty(n, dtype=np.float64)
    rank[np.argsort(-score, kind="stable")] = (np.arange(n) + 0.5) / n
    c = np.cumsum(np.asarray(shares, float) / np.sum(shares))
    return np.minimum(np.searchsorted(c, rank, side="right"), len(shares) - 1)


def _tilt(base: np.ndarray, t: float) -> np.ndarray:
    p = base * np.exp(t * (3 - np.arange(1, 6)))
    return p / p.sum()


def joint_imd_table(group_w: dict, overall, q1_white, q1_bame) -> dict:
    """IMD quintile distribution per ethnicity group9, matching the overall shares and
    Q1 among White vs BAME [S23], with within-BAME tilts [assumption] fitted by IPF."""
    overall = np.asarray(overall, float)
    lo, hi = -5.0, 5.0
    for _ in range(60):   # White: overall tilted until Q1 = q1_white
        mid = (lo + hi) / 2
        if _tilt(overall, mid)[0] < q1_white:
            lo = mid
        else:
            hi = mid
    white = _tilt(overall, (lo + hi) / 2)
    ww = group_w["White"]
    bw = sum(v for k, v in group_w.items() if k != "White")
    bame = np.clip((overall - ww * white) / bw, 1e-4, None)
    bame /= bame.sum()
    # scale so BAME Q1 hits q1_bame, then IPF group distributions onto it
    bame = _tilt(bame, 0.0)
    groups = [g for g in group_w if g != "White"]
    tab = {g: _tilt(bame, P.IMD_TILT.get(g, 0.0)) for g in groups}
    for _ in range(200):
        mix = sum(group_w[g] * tab[g] for g in groups) / bw
        for g in groups:
            tab[g] = tab[g] * bame / mix
            tab[g] /= tab[g].sum()
    tab["White"] = white
    return tab


def _dates(rng, start_year: np.ndarray, month: int, day: int, spread_days: int) -> np.ndarray:
    base = (start_year.astype("int64") - 1970).astype("datetime64[Y]").astype("datetime64[D]")
    base = base + np.timedelta64(0, "D")
    off = np.array([0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334])[month - 1] + day - 1
    return base + off + rng.integers(0, spread_days + 1, len(start_year))


def postcodes(rng, nation: np.ndarray) -> np.ndarray:
    n = len(nation)
    out_area = np.empty(n, dtype=object)
    for nat, s in AREAS.items():
        m = nation == nat
        areas = np.array(s.split(), dtype=object)
        out_area[m] = areas[rng.integers(0, len(areas), m.sum())]
    df = pl.DataFrame({"a": out_area.astype(str), "d": rng.integers(1, 30, n), "s": rng.integers(0, 10, n),
                       "x": UNIT_LETTERS[rng.integers(0, 20, n)], "y": UNIT_LETTERS[rng.integers(0, 20, n)]})
    return df.select(pl.concat_str([pl.col("a"), pl.col("d").cast(pl.String), pl.lit(" "),
                                    pl.col("s").cast(pl.String), pl.col("x"), pl.col("y")])).to_series().to_numpy().astype(object)


def mapv(arr: np.ndarray, mapping: dict, default=None) -> np.ndarray:
    """Vectorised dict lookup on a string array."""
    s = pl.Series(arr.tolist() if arr.dtype == object else arr.astype(str), dtype=pl.String, strict=False)
    return s.replace_strict(mapping, default=default, return_dtype=pl.String).to_numpy().astype(object)


# ---------------------------------------------------------------- people
def draw_people(rng: np.random.Generator, n: int, placed: bool, seed: int, cycle: np.ndarray | None = None) -> dict:
    """Identity + background of n people (entrants if placed, else never-placed applicants)."""
    g9_shares = dict(P.ETHNICITY9_SHARES)
    if not placed:   # applicant pool has fewer White entrants [assumption]
        scale = (1 - P.UNPLACED_WHITE_SHARE) / (1 - g9_shares["White"])
        g9_shares = {k: (P.UNPLACED_WHITE_SHARE if k == "White" else v * scale) for k, v in g9_shares.items()}
    g9 = cat(rng, n, g9_shares)
    unknown = rng.random(n) < P.ETHNICITY_UNKNOWN_SHARE
    code = np.empty(n, dtype=object)
    for g, d in P.ETHNICITY_CODES.items():
        m = g9 == g
        code[m] = cat(rng, int(m.sum()), d)
    # IMD jointly with ethnicity [S23]
    if placed:
        tab = joint_imd_table(g9_shares, P.IMD_SHARES, P.IMD_Q1_WHITE, P.IMD_Q1_BAME)
    else:
        tab = joint_imd_table(g9_shares, P.UNPLACED_IMD_SHARES, 0.08, 0.24)
    imd = np.zeros(n, dtype=np.int64)
    for g, p in tab.items():
        m = g9 == g
        imd[m] = 1 + np.searchsorted(np.cumsum(p), rng.random(m.sum()), side="right").clip(0, 4)
    # unknown ethnicity keeps its drawn SES; code replaced by a not-known code
    g9 = np.where(unknown, "Unknown", g9)
    code = np.where(unknown, "98", code)
    errgrp = mapv(code, ERRGROUP_OF_CODE, "Unknown")
    sex = np.where(rng.random(n) < P.MALE_SHARE, "M", "F").astype(object)
    course = cat(rng, n, P.COURSE_SHARES)
    # latent SES: area deprivation plus family background
    ses = 0.55 * (imd - 3) / 1.25 + rng.standard_normal(n)
    # school type: other/unknown at random, the rest ordered by SES [S39]
    st = np.empty(n, dtype=object)
    oth = cat(rng, n, {"other": P.SCHOOL_OTHER_SPLIT["other"], "unknown": P.SCHOOL_OTHER_SPLIT["unknown"],
                       "_": 1 - P.SCHOOL_OTHER_SPLIT["other"] - P.SCHOOL_OTHER_SPLIT["unknown"]})
    rest = oth == "_"
    indep = P.INDEPENDENT_SHARE if placed else P.UNPLACED_INDEPENDENT_SHARE
    order = ["independent", "grammar", "comprehensive", "sixth_form_college", "fe_college"]
    sh = [indep, P.GRAMMAR_SHARE] + [P.SCHOOL_OTHER_SPLIT[k] for k in order[2:]]
    st[rest] = np.array(order, dtype=object)[ordered(ses[rest] + 0.7 * rng.standard_normal(rest.sum()), sh)]
    st[~rest] = oth[~rest]
    # NS-SEC: classes 01-08 ordered by SES, 09 at random [S37][S39][S83]
    ns = np.empty(n, dtype=object)
    nc = rng.random(n) < P.NSSEC_SHARES["09"]
    keys = [k for k in P.NSSEC_SHARES if k != "09"]
    ns[~nc] = np.array(keys, dtype=object)[ordered(ses[~nc] + rng.standard_normal((~nc).sum()),
                                                     [P.NSSEC_SHARES[k] for k in keys])]
    ns[nc] = "09"
    # parental HE: 01/02 by SES, 97/98/99 missing; "don't know" commoner among Black students [S44][S48]
    pared = np.empty(n, dtype=object)
    miss_p = np.where(g9 == "Black", 0.22, 0.15)
    miss = rng.random(n) < miss_p
    pared[~miss] = np.where(ordered(ses[~miss] + rng.standard_normal((~miss).sum()),
                                    [P.PARED_SHARES["01"], P.PARED_SHARES["02"]]) == 0, "01", "02")
    pared[miss] = cat(rng, int(miss.sum()), {"97": 0.07, "98": 0.03, "99": 0.05})
    pared[miss & (g9 == "Black") & (rng.random(n) < 0.5)] = "97"
    polar = np.clip(imd + np.rint(0.9 * rng.standard_normal(n)).astype(int), 1, 5).astype(float)
    polar[rng.random(n) < 0.02] = np.nan                      # unclassified postcodes [S34]
    nation = cat(rng, n, P.DOMICILE_SHARES)
    # date of birth from route and age at entry
    age = np.where(course == "GEP", 21 + np.minimum(rng.gamma(1.6, 1.8, n), 20).astype(int),
                   np.where(rng.random(n) < 0.8, 18, np.where(rng.random(n) < 0.85, 19, 20)))
    if cycle is None:
        cycle = np.zeros(n, dtype=np.int64)
    dob = _dates(rng, cycle - age - 1, 9, 1, 364)
    # names
    V = vocabularies(seed)
    fo = np.empty(n, dtype=object)
    so = np.empty(n, dtype=object)
    for c, opts in NAME_ORIGINS.items():
        m = (code == c) if c != "UNK" else (g9 == "Unknown")
        k = int(m.sum())
        if not k:
            continue
        w = np.array([o[2] for o in opts])
        j = np.searchsorted(np.cumsum(w / w.sum()), rng.random(k), side="right").clip(0, len(opts) - 1)
        fo[m] = np.array([o[0] for o in opts], dtype=object)[j]
        so[m] = np.array([o[1] for o in opts], dtype=object)[j]
    given = np.empty(n, dtype=object)
    middle = np.full(n, "", dtype=object)
    surname = np.empty(n, dtype=object)
    given_raw = np.empty(n, dtype=object)
    surname_raw = np.empty(n, dtype=object)
    for o in V:
        for sx, key in (("M", "m"), ("F", "f")):
            m = (fo == o) & (sex == sx)
            k = int(m.sum())
            if k:
                i = rng.integers(0, len(V[o][key]), k)
                given[m] = V[o][key][i]
                given_raw[m] = V[o][key + "_raw"][i]
                hasmid = rng.random(k) < P_MIDDLE[o]
                mid = V[o][key][rng.integers(0, len(V[o][key]), k)]
                middle[np.flatnonzero(m)[hasmid]] = mid[hasmid]
        m = so == o
        k = int(m.sum())
        if k:
            i = rng.integers(0, len(V[o]["l"]), k)
            surname[m] = V[o]["l"][i]
            surname_raw[m] = V[o]["l_raw"][i]
    middle = np.where(middle == given, "", middle)
    return dict(g9=g9, eth_code=code, errgrp=errgrp, imd=imd, sex=sex, course=course,
                school_type=st, nssec=ns, pared=pared, polar=polar, nation=nation, dob=dob,
                age=age, fo=fo, so=so, given=given, middle=middle, surname=surname,
                given_raw=given_raw, surname_raw=surname_raw, ses=ses)


def preferred_names(rng, ppl: dict, em) -> np.ndarray:
    """Preferred / anglicised given name (None if the person has none)."""
    n = len(ppl["given"])
    pref = np.full(n, None, dtype=object)
    nick = mapv(ppl["given"], NICKNAMES, None)
    m = (nick != None) & (rng.random(n) < em.p_preferred_name_anglo * 3)  # noqa: E711
    pref[m] = nick[m]
    chn = (ppl["fo"] == "CHN") & (rng.random(n) < em.p_english_name_chinese)
    eng = np.where(ppl["sex"] == "M", np.array(ENGLISH_GIVEN_M, dtype=object)[rng.integers(0, 20, n)],
                   np.array(ENGLISH_GIVEN_F, dtype=object)[rng.integers(0, 20, n)])
    pref[chn] = eng[chn]
    # goes by the middle name
    mid = (ppl["middle"] != "") & (rng.random(n) < 0.03) & (pref == None)  # noqa: E711
    pref[mid] = ppl["middle"][mid]
    return pref


def marriage(rng, ppl: dict, em, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(year of marriage or NaN, surname after marriage) per person [S108][S114]."""
    n = len(ppl["sex"])
    female = ppl["sex"] == "F"
    age_m = np.where(female, em.marriage_age_female, em.marriage_age_male) + em.marriage_age_sd * rng.standard_normal(n)
    marries = rng.random(n) < em.p_ever_marry
    u = rng.random(n)
    take = np.where(female, u < em.p_female_take_spouse, u < em.p_male_change) & marries
    dbl = female & marries & (u >= em.p_female_take_spouse) & (u < em.p_female_take_spouse + em.p_female_double_barrel)
    V = vocabularies(seed)
    spouse = np.empty(n, dtype=object)
    for o in V:
        m = ppl["so"] == o
        # spouse mostly from the same naming tradition, else British [assumption]
        k = int(m.sum())
        if k:
            same = rng.random(k) < 0.75
            a = V[o]["l"][rng.integers(0, len(V[o]["l"]), k)]
            b = V["WB"]["l"][rng.integers(0, len(V["WB"]["l"]), k)]
            spouse[m] = np.where(same, a, b)
    new = np.where(take, spouse, np.where(dbl, ppl["surname"] + "-" + spouse, ppl["surname"]))
    birth_year = ppl["dob"].astype("datetime64[Y]").astype(int) + 1970
    year = np.where(take | dbl, birth_year + age_m, np.nan)
    return year, new


# ---------------------------------------------------------------- entrants' careers
def assign_schools(rng, entry_year: np.ndarray, home: np.ndarray) -> np.ndarray:
    schools = load_schools()
    fi = np.array([int(s["first_intake"]) for s in schools])
    nat = np.array([s["nation"] for s in schools])
    size = np.where(fi <= 2000, 1.0, np.where(fi <= 2015, 0.7, 0.35))   # [assumption]
    out = np.zeros(len(entry_year), dtype=np.int64)
    for y in np.unique(entry_year):
        for h in P.DOMICILE_SHARES:
            m = (entry_year == y) & (home == h)
            k = int(m.sum())
            if not k:
                continue
            w = size * (fi <= y) * np.where(nat == h, 1.0, 0.12)
            out[m] = np.searchsorted(np.cumsum(w / w.sum()), rng.random(k), side="right").clip(0, len(w) - 1)
    return out


def specialty_logit(rng, X: np.ndarray, groups=P.SPECIALTY_GROUPS) -> tuple[np.ndarray, np.ndarray]:
    """Draw a specialty group per row from the Kumwenda multinomial logit (reference GP).

    X columns: UKFP points (centred), male, state school, no parental degree,
    non-white, school-leaver entrant. Intercepts are calibrated so shares match
    Kumwenda Table 1 [S24]. Returns (group index, intercepts)."""
    others = groups[1:]
    B = np.array([[math.log(v) for v in P.KUMWENDA_OR[g]] for g in others])   # (K-1, 6)
    lin = X @ B.T                                                              # (n, K-1)
    target = np.array([P.GROUP_SHARES[g] for g in groups])
    alpha = np.log(target[1:] / target[0])
    for _ in range(100):
        e = np.exp(np.clip(alpha + lin, -30, 30))
        den = 1 + e.sum(1, keepdims=True)
        share = np.concatenate([[np.mean(1 / den)], (e / den).mean(0)])
        step = np.log(target / share)
        alpha += step[1:] - step[0]
        if np.abs(step).max() < 1e-6:
            break
    e = np.exp(np.clip(alpha + lin, -30, 30))
    prob = np.concatenate([np.ones((len(X), 1)), e], 1)
    cum = np.cumsum(prob / prob.sum(1, keepdims=True), 1)
    k = (rng.random((len(X), 1)) > cum).sum(1)
    return np.minimum(k, len(groups) - 1), alpha
