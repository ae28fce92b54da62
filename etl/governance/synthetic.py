"""Synthetic *assembled* restricted tables (doctors + events) and the matching
input vocabulary, for governance tests, benchmarks and demos.

Shapes follow docs/architecture.md "Assembled tables" and etl/assemble.py
(column names, dtypes, event types and details); marginal distributions
follow etl/synth/params.py (research/domain.md) closely enough for
k-anonymity to behave as on real cohorts. Nothing here is real data.
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import polars as pl

FORENAMES = ["OLIVER", "AMELIA", "GEORGE", "ISLA", "HARRY", "AVA", "JACK", "MIA", "NOAH", "EMILY",
             "MUHAMMAD", "AISHA", "PRIYA", "ARJUN", "FATIMA", "OMAR", "CHLOE", "SOPHIE", "JAMES", "GRACE",
             "DANIEL", "HANNAH", "SAMUEL", "LUCY", "THOMAS", "ZARA", "RAVI", "ANIKA", "CHEN", "WEI",
             "KWAME", "ADAEZE", "CHIDI", "NIAMH", "CIARAN", "EILIDH", "CALLUM", "RHYS", "CERYS", "DYLAN",
             "IMOGEN", "FREYA", "ROHAN", "SANA", "YUSUF", "LEAH", "ETHAN", "ELLA", "BENJAMIN", "ZAINAB"]
SURNAMES = ["SMITH", "JONES", "WILLIAMS", "TAYLOR", "BROWN", "DAVIES", "EVANS", "WILSON", "THOMAS",
            "JOHNSON", "ROBERTS", "PATEL", "KHAN", "SINGH", "AHMED", "ALI", "SHAH", "HUSSAIN", "BEGUM",
            "CHEN", "WANG", "OKAFOR", "MENSAH", "ADEYEMI", "MACDONALD", "CAMPBELL", "STEWART", "MURPHY",
            "OBRIEN", "KELLY", "HUGHES", "MORGAN", "GRIFFITHS", "PRICE", "WHITE", "GREEN", "HALL",
            "WOOD", "CLARKE", "WRIGHT", "WALKER", "LONDON", "WALES", "NORTH", "MISTRY", "CHOWDHURY",
            "NGUYEN", "KOWALSKI", "NOWAK", "RAHMAN"]

SCHOOLS = ["BIRM", "BRIS", "CAMB", "IMP", "KCL", "LEED", "LEIC", "LIVE", "MANC", "NEWC", "NOTT",
           "OXF", "SHEF", "SOTO", "SGUL", "UCL", "WARW", "BART", "HYMS", "KEEL", "UEA", "PLYM", "EXET",
           "BSMS", "ABDN", "DUND", "EDIN", "GLAS", "CARD", "SWAN", "QUB"]
SCHOOL_W = np.array([9, 7, 5, 9, 11, 7, 6, 8, 11, 9, 8, 5, 7, 6, 7, 9, 4, 9, 4, 4, 4, 4, 3, 3, 5, 4, 6,
                     7, 8, 2, 7], dtype=float)
SPECIALTIES = {"GP": ["GP"], "Medical": ["CMT", "DERM"], "Surgical": ["CST", "OPH", "NSG", "CTS"],
               "Anaesthesia/EM": ["ANA", "ACCSEM"], "O&G/Paediatrics": ["PAED", "OG"],
               "Mental health": ["CPSY", "CAMHS"], "Diagnostics": ["RAD", "HIST"], "Other": ["CSRH"]}
GROUP_SHARES = {"GP": 0.386, "Medical": 0.224, "Surgical": 0.099, "Anaesthesia/EM": 0.127,
                "O&G/Paediatrics": 0.096, "Mental health": 0.043, "Diagnostics": 0.020, "Other": 0.005}
TRAINING_YEARS = {"GP": 3, "Medical": 7, "Surgical": 8, "Anaesthesia/EM": 7, "O&G/Paediatrics": 7,
                  "Mental health": 6, "Diagnostics": 5, "Other": 6}
REGIONS = ["London", "Kent Surrey and Sussex", "Thames Valley", "Wessex", "South West", "East of England",
           "West Midlands", "East Midlands", "North West", "Yorkshire and the Humber", "North East",
           "Scotland", "Wales", "Northern Ireland"]
REGION_W = np.array([18, 7, 4, 5, 6, 8, 9, 7, 11, 9, 5, 8, 4, 3], dtype=float)
FOUNDATION_SCHOOLS = ["London", "Northern", "Severn", "Trent", "Wessex", "Scotland", "Wales",
                      "North West of England", "Yorkshire and Humber", "Oxford"]
SCHOOL_REGION = {"BIRM": "West Midlands", "BRIS": "South West", "CAMB": "East of England", "IMP": "London",
                 "KCL": "London", "LEED": "Yorkshire and the Humber", "LEIC": "East Midlands", "LIVE": "North West",
                 "MANC": "North West", "NEWC": "North East", "NOTT": "East Midlands", "OXF": "Thames Valley",
                 "SHEF": "Yorkshire and the Humber", "SOTO": "Wessex", "SGUL": "London", "UCL": "London",
                 "WARW": "West Midlands", "BART": "London", "HYMS": "Yorkshire and the Humber",
                 "KEEL": "West Midlands", "UEA": "East of England", "PLYM": "South West", "EXET": "South West",
                 "BSMS": "Kent Surrey and Sussex", "ABDN": "Scotland", "DUND": "Scotland", "EDIN": "Scotland",
                 "GLAS": "Scotland", "CARD": "Wales", "SWAN": "Wales", "QUB": "Northern Ireland"}
NATION_OF_REGION = {"Scotland": "Scotland", "Wales": "Wales", "Northern Ireland": "NI"}
ETHNICITY = {"10": 0.59, "13": 0.03, "19": 0.06, "31": 0.10, "32": 0.048, "33": 0.011, "34": 0.016,
             "39": 0.039, "22": 0.021, "21": 0.006, "41": 0.01, "43": 0.018, "49": 0.01, "50": 0.01,
             "80": 0.012, "90": 0.01, "98": 0.01}


def _choice(rng, options, p, n):
    p = np.asarray(p, dtype=float)
    return rng.choice(np.asarray(options, dtype=object), size=n, p=p / p.sum())


def _luhn_like_gmc(rng, n):
    return [f"{x:07d}" for x in rng.choice(np.arange(1_000_000, 8_000_000), size=n, replace=False)]


def make_assembled(n: int = 4000, seed: int = 7, snapshot_year: int = 2025) -> tuple[pl.DataFrame, pl.DataFrame, dict]:
    """(doctors, events, input_vocab) for n persons."""
    rng = np.random.default_rng(seed)
    pid = [f"c{i:07d}" for i in range(n)]
    sex = _choice(rng, ["F", "M", "X", "U"], [0.560, 0.436, 0.002, 0.002], n)
    placed = rng.random(n) < 0.85
    entry = rng.integers(2007, 2021, size=n)
    age = _choice(rng, [18, 19, 20, 21, 22, 23, 24, 25, 27, 30], [55, 25, 4, 4, 3, 2, 2, 1, 2, 2], n).astype(int)
    sep1 = np.array([dt.date(int(y), 9, 1).toordinal() for y in entry])
    dob_ord = sep1 - (age * 365.25).astype(int) - rng.integers(1, 365, size=n)
    dob = [dt.date.fromordinal(int(o)) for o in dob_ord]
    eth = _choice(rng, list(ETHNICITY), list(ETHNICITY.values()), n)
    nssec = _choice(rng, ["01", "02", "03", "04", "05", "06", "07", "08", "09"],
                    [46, 30, 7, 4, 1.5, 2.5, 1.5, 0.5, 7], n)
    pared = _choice(rng, ["01", "02", "97", "98", "99"], [66, 19, 7, 3, 5], n)
    school_type = _choice(rng, ["independent", "grammar", "comprehensive", "sixth_form_college",
                                "fe_college", "other", "unknown"], [26.6, 24.3, 33, 10, 3, 1.4, 1.7], n)
    fsm = _choice(rng, ["Y", "N", "DK", None], [5, 60, 3, 32], n)
    polar = rng.choice(np.arange(1, 6), size=n, p=[0.06, 0.1, 0.17, 0.25, 0.42])
    imd = rng.choice(np.arange(1, 6), size=n, p=[0.071, 0.119, 0.176, 0.248, 0.386])
    reapp = rng.random(n) < 0.17
    first_cycle = entry - reapp.astype(int)
    n_adm = 1 + reapp.astype(int)
    school = _choice(rng, SCHOOLS, SCHOOL_W, n)
    # most students study, and later train, near home (domicile nation and region follow the school)
    home = np.array([SCHOOL_REGION[x] for x in school], dtype=object)
    nation = np.where(rng.random(n) < 0.8, [NATION_OF_REGION.get(h, "England") for h in home],
                      _choice(rng, ["England", "Scotland", "Wales", "NI"], [83, 9, 4.5, 3.5], n)).astype(object)
    course = _choice(rng, ["SEM", "GEP", "EMDP"], [87.1, 11.7, 1.2], n)
    length = np.where(course == "SEM", 5, np.where(course == "GEP", 4, 6)) + (rng.random(n) < 0.25)
    grad = entry + length
    withdrew = rng.random(n) < 0.055
    ongoing = grad > snapshot_year - 1
    outcome = np.where(withdrew, "withdrew", np.where(ongoing, "ongoing", "graduated")).astype(object)
    graduated = placed & (outcome == "graduated")
    fp = np.where(graduated, grad, 0)
    sjt = np.round(rng.normal(40, 3.5, size=n), 2)
    epm = rng.integers(1, 11, size=n)
    total = np.round(sjt + rng.normal(40, 3, size=n), 2)
    pia = fp >= 2024
    f1 = _choice(rng, ["1", "2", "3", "4", "5", "8", "N"], [93.5, 1, 2, 0.4, 1, 0.3, 1.8], n)
    f2 = _choice(rng, ["6", "2", "3", "4", "5", "8", "N"], [92.5, 1, 2, 0.4, 1.5, 0.8, 1.8], n)
    fschool = _choice(rng, FOUNDATION_SCHOOLS, np.ones(len(FOUNDATION_SCHOOLS)), n)
    group = _choice(rng, list(GROUP_SHARES), list(GROUP_SHARES.values()), n)
    spec = np.array([SPECIALTIES[g][0] if rng.random() < 0.8 else rng.choice(SPECIALTIES[g]) for g in group],
                    dtype=object)
    offer_year = fp + 2 + rng.choice([0, 0, 1, 2, 3], size=n)
    has_offer = graduated & (offer_year <= snapshot_year) & (rng.random(n) < 0.9)
    ttrain = np.array([TRAINING_YEARS[g] for g in group]) + rng.integers(0, 3, size=n)
    reg_year = offer_year + ttrain
    on_spec = has_offer & (reg_year <= snapshot_year) & (group != "GP")
    on_gp = has_offer & (reg_year <= snapshot_year) & (group == "GP")
    region = np.where(rng.random(n) < 0.6, home, _choice(rng, REGIONS, REGION_W, n)).astype(object)
    in_reg = graduated & (rng.random(n) < 0.97)

    def date_or_none(mask, year, month_lo=1):
        out = []
        for m, y in zip(mask, year):
            if m:
                out.append(dt.date(int(y), int(rng.integers(month_lo, 13)), int(rng.integers(1, 29))))
            else:
                out.append(None)
        return out

    full_reg = date_or_none(graduated & in_reg, fp + 1, 8)
    spec_reg = date_or_none(on_spec & in_reg, reg_year)
    gp_reg = date_or_none(on_gp & in_reg, reg_year)

    def masked(arr, mask):
        return [v if m else None for v, m in zip(arr.tolist() if hasattr(arr, "tolist") else arr, mask)]

    doctors = pl.DataFrame({
        "person_id": pid, "sex": sex.tolist(), "date_of_birth": dob,
        "ethnicity_code": eth.tolist(), "nssec_code": nssec.tolist(), "parental_he": pared.tolist(),
        "school_type": school_type.tolist(), "fsm": fsm.tolist(),
        "polar4_quintile": polar.astype(np.int8), "imd_quintile": imd.astype(np.int8),
        "imd_nation": nation.tolist(), "first_cycle_year": first_cycle.astype(np.int16),
        "n_admission_rows": n_adm.astype(np.int16),
        "entry_year": pl.Series(masked(entry, placed), dtype=pl.Int16),
        "age_at_entry": pl.Series(masked(age, placed), dtype=pl.Int16),
        "medical_school": masked(school, placed), "course_type": masked(course, placed),
        "graduation_year": pl.Series(masked(grad, placed & (outcome != "withdrew")), dtype=pl.Int16),
        "course_outcome": masked(outcome, placed),
        "fp_year": pl.Series(masked(fp, graduated), dtype=pl.Int16),
        "allocation_method": masked(np.where(pia, "PIA", "score").astype(object), graduated),
        "epm_decile": pl.Series(masked(epm, graduated & ~pia), dtype=pl.Int8),
        "sjt_score": pl.Series(masked(sjt, graduated & ~pia), dtype=pl.Float64),
        "fp_total_score": pl.Series(masked(total, graduated & ~pia), dtype=pl.Float64),
        "foundation_school": masked(fschool, graduated),
        "arcp_f1_outcome": masked(f1, graduated & (fp + 1 <= snapshot_year)),
        "arcp_f2_outcome": masked(f2, graduated & (fp + 2 <= snapshot_year)),
        "first_offer_year": pl.Series(masked(offer_year, has_offer), dtype=pl.Int16),
        "first_offer_specialty": masked(spec, has_offer),
        "n_specialty_applications": pl.Series(np.where(has_offer, 1 + rng.poisson(1.3, n), 0), dtype=pl.Int16),
        "n_offers": pl.Series(np.where(has_offer, 1 + (rng.random(n) < 0.2), 0), dtype=pl.Int16),
        "full_registration_date": pl.Series(full_reg, dtype=pl.Date),
        "specialist_register_date": pl.Series(spec_reg, dtype=pl.Date),
        "gp_register_date": pl.Series(gp_reg, dtype=pl.Date),
        "training_region": masked(region, has_offer),
        "in_admission": pl.Series(rng.random(n) < 0.97),
        "in_training": pl.Series(placed),
        "in_registration": pl.Series(in_reg),
        "link_method": _choice(rng, ["deterministic", "probabilistic", "single-source"], [70, 25, 5], n).tolist(),
        "link_probability": pl.Series(np.round(rng.uniform(0.9, 1.0, n), 4)),
    })

    # identifiers and names (restricted only)
    ucas = [f"{x:010d}" for x in rng.choice(10**10, size=n, replace=False)]
    gmc = _luhn_like_gmc(rng, n)
    fore = _choice(rng, FORENAMES, np.ones(len(FORENAMES)), n)
    sur = _choice(rng, SURNAMES, np.ones(len(SURNAMES)), n)
    letters = "ABCDEFGHJKLMNOPRSTUWY"
    postcodes = [f"{letters[rng.integers(0, 21)]}{letters[rng.integers(0, 21)]}{rng.integers(1, 30)} "
                 f"{rng.integers(0, 10)}{'ABDEFGHJLNPQRSTUWXYZ'[rng.integers(0, 20)]}"
                 f"{'ABDEFGHJLNPQRSTUWXYZ'[rng.integers(0, 20)]}" for _ in range(n)]
    emails = [f"{f.lower()}.{s.lower()}{i}@example.ac.uk" for i, (f, s) in enumerate(zip(fore, sur))]

    # events, as etl/assemble.py builds them
    rows = []
    d = doctors.with_columns(pl.Series("ucas", ucas), pl.Series("gmc", gmc))
    for r in d.iter_rows(named=True):
        p = r["person_id"]
        for cy in range(r["first_cycle_year"], r["first_cycle_year"] + r["n_admission_rows"]):
            last = cy == r["first_cycle_year"] + r["n_admission_rows"] - 1
            out = "placed" if (last and r["entry_year"] is not None) else "unplaced"
            rows.append((p, "application", dt.date(cy - 1, 9, 1), out, "admission", f"{r['ucas']}-{cy}"))
            if out == "placed":
                rows.append((p, "admission", dt.date(cy, 9, 1), r["medical_school"], "admission", f"{r['ucas']}-{cy}"))
        if r["fp_year"] is not None:
            tid = f"T{r['gmc']}"
            rows.append((p, "graduation", dt.date(r["graduation_year"], 8, 1), r["medical_school"], "training", tid))
            rows.append((p, "foundation_start", dt.date(r["fp_year"], 8, 1), r["foundation_school"], "training", tid))
            if r["arcp_f1_outcome"]:
                rows.append((p, "arcp_f1", dt.date(r["fp_year"] + 1, 8, 1), r["arcp_f1_outcome"], "training", tid))
            if r["arcp_f2_outcome"]:
                rows.append((p, "arcp_f2", dt.date(r["fp_year"] + 2, 8, 1), r["arcp_f2_outcome"], "training", tid))
        if r["first_offer_year"] is not None:
            rid = f"R{r['gmc']}-1"
            rows.append((p, "specialty_application", dt.date(r["first_offer_year"], 8, 1),
                         r["first_offer_specialty"], "registration", rid))
            rows.append((p, "specialty_offer", dt.date(r["first_offer_year"], 8, 1),
                         r["first_offer_specialty"], "registration", rid))
        for et, col in (("full_registration", "full_registration_date"),
                        ("specialist_register", "specialist_register_date"), ("gp_register", "gp_register_date")):
            if r[col] is not None:
                rows.append((p, et, r[col], None, "registration", f"R{r['gmc']}-0"))
    events = pl.DataFrame(rows, schema={"person_id": pl.String, "event_type": pl.String, "event_date": pl.Date,
                                        "detail": pl.String, "source": pl.String, "record_id": pl.String},
                          orient="row")
    vocab = {
        "names": set(fore.tolist()) | set(sur.tolist()),
        "identifiers": set(ucas) | set(gmc) | set(events["record_id"].unique().to_list()),
        "dates_of_birth": set(dob), "postcodes": set(postcodes), "emails": set(emails),
        # for tests only: per person, to plant values
        "_by_person": {"person_id": pid, "forename": fore.tolist(), "surname": sur.tolist(), "ucas": ucas,
                       "gmc": gmc, "postcode": postcodes, "email": emails, "dob": dob},
    }
    return doctors, events, vocab
