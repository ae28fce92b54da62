"""Governance rules files and hierarchies: validation, coverage, hierarchy behaviour."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import polars as pl
import pytest
import yaml

from etl.errors import ConfigError, GovernanceError
from etl.governance import load_rules
from etl.governance.hierarchies import load_hierarchy

RULES_DIR = Path(__file__).resolve().parents[1] / "schemas" / "rules"
DOCTOR_COLUMNS = [
    "person_id", "sex", "date_of_birth", "ethnicity_code", "nssec_code", "parental_he", "school_type", "fsm",
    "polar4_quintile", "imd_quintile", "imd_nation", "first_cycle_year", "n_admission_rows", "entry_year",
    "age_at_entry", "medical_school", "course_type", "graduation_year", "course_outcome", "fp_year",
    "allocation_method", "epm_decile", "sjt_score", "fp_total_score", "foundation_school", "arcp_f1_outcome",
    "arcp_f2_outcome", "first_offer_year", "first_offer_specialty", "n_specialty_applications", "n_offers",
    "full_registration_date", "specialist_register_date", "gp_register_date", "training_region",
    "in_admission", "in_training", "in_registration", "link_method", "link_probability"]
EVENT_COLUMNS = ["person_id", "event_type", "event_date", "detail", "source", "record_id"]
EVENT_TYPES = ["application", "admission", "graduation", "foundation_start", "arcp_f1", "arcp_f2",
               "specialty_application", "specialty_offer", "full_registration", "specialist_register",
               "gp_register"]


@pytest.mark.parametrize("profile", ["profile_a", "profile_b"])
def test_profiles_cover_every_assembled_column(profile):
    r = load_rules(profile)
    assert set(r.tables["doctors"].fields) == set(DOCTOR_COLUMNS)
    assert set(r.tables["events"].fields) == set(EVENT_COLUMNS)
    assert set(r.tables["events"].event_types) == set(EVENT_TYPES)
    # the architecture's list is the assembler's
    try:
        from etl.assemble import DOCTOR_COLUMNS as live, EVENT_SCHEMA, EVENT_TYPES as live_types
    except ImportError:
        return
    assert set(live) == set(DOCTOR_COLUMNS)
    assert set(EVENT_SCHEMA) == set(EVENT_COLUMNS)
    assert set(live_types) == set(EVENT_TYPES)


@pytest.mark.parametrize("profile", ["profile_a", "profile_b"])
def test_direct_identifiers_are_never_released(profile):
    r = load_rules(profile)
    for t in r.tables.values():
        for f in t.fields.values():
            if f.cls == "direct_identifier":
                assert f.treatment == "drop", f.name
    allowed = r.allow_list()
    for banned in ("date_of_birth", "record_id", "source", "person_id", "postcode", "email", "gmc_number"):
        assert all(banned not in cols for cols in allowed.values())
    assert "doctor_pid" in allowed["doctors"] and "doctor_pid" in allowed["events"]
    assert r.k >= 10 and r.l >= 2 and r.max_suppressed_fraction <= 0.05
    assert r.aggregates["threshold"] == 10 and r.aggregates["rounding"]["base"] == 5


def test_rules_hash_and_text():
    r = load_rules("profile_a")
    import hashlib
    assert r.sha256 == hashlib.sha256((RULES_DIR / "profile_a.yaml").read_bytes()).hexdigest()
    assert load_rules(RULES_DIR / "profile_a.yaml").sha256 == r.sha256


def _bad(tmp_path, mutate) -> ConfigError:
    raw = yaml.safe_load((RULES_DIR / "profile_a.yaml").read_text())
    mutate(raw)
    # lookup tables are relative to the rules file
    for h in raw["hierarchies"].values():
        if "table" in h:
            h["table"] = str((RULES_DIR / h["table"]).resolve())
    p = tmp_path / "bad.yaml"
    p.write_text(yaml.safe_dump(raw, sort_keys=False))
    with pytest.raises(ConfigError) as ei:
        load_rules(p)
    return ei.value


@pytest.mark.parametrize("mutate, key", [
    (lambda r: r["tables"]["doctors"]["fields"]["sex"].update({"class": "secretish"}),
     "tables.doctors.fields.sex.class"),
    (lambda r: r["tables"]["doctors"]["fields"]["sex"].update({"hierarchy": "nope"}),
     "tables.doctors.fields.sex.hierarchy"),
    (lambda r: r["tables"]["doctors"]["fields"]["date_of_birth"].update({"treatment": "keep"}),
     "tables.doctors.fields.date_of_birth.treatment"),
    (lambda r: r["k_anonymity"].update({"quasi_identifiers": ["sex", "shoe_size"]}),
     "k_anonymity.quasi_identifiers.shoe_size"),
    (lambda r: r["k_anonymity"].update({"k": 1}), "k_anonymity.k"),
    (lambda r: r.update({"colour": "blue"}), "colour"),
    (lambda r: r["hierarchies"]["nssec"]["levels"][0]["map"].update({1: "Higher"}),
     "hierarchies.nssec.levels[0].map"),
    (lambda r: r["hierarchies"]["age_band"]["levels"].__setitem__(0, [26, 19]),
     "hierarchies.age_band.levels[0]"),
    (lambda r: r["l_diversity"]["sensitive"].update({"sex": {"protect_values": ["F"]}}),
     "l_diversity.sensitive.sex"),
    (lambda r: r["tables"]["events"]["event_types"]["admission"].update({"detail": {"follows": "date_of_birth"}}),
     "tables.events.event_types.admission.detail.follows"),
    (lambda r: r["aggregates"].update({"threshold": "ten"}), "aggregates.threshold"),
])
def test_bad_rule_is_a_config_error_naming_file_and_key(tmp_path, mutate, key):
    err = _bad(tmp_path, mutate)
    msg = str(err)
    assert "bad.yaml" in msg and f"[{key}]" in msg, msg
    assert "\n" not in msg


def test_yaml_bare_codes_are_refused(tmp_path):
    """YAML reads 01 as 1 and Y as True: map keys must be quoted."""
    text = (RULES_DIR / "profile_a.yaml").read_text().replace('{"01": "Yes", "02": "No"', '{01: "Yes", 02: "No"')
    text = text.replace("../reference/", str(RULES_DIR.parent / "reference") + "/")
    p = tmp_path / "bare.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError, match=r"quoted string"):
        load_rules(p)


def test_missing_profile():
    with pytest.raises(ConfigError, match="no rules profile"):
        load_rules("profile_zz")


# ---------------------------------------------------------------------- hierarchies

def H(raw, name="h"):
    return load_hierarchy(name, raw, RULES_DIR / "profile_a.yaml")


def test_bands_labels_and_levels():
    h = H({"type": "bands", "levels": [[19, 20, 22, 26], [22], "*"]})
    df = pl.DataFrame({"a": [17, 18, 19, 20, 21, 22, 25, 26, 40, None]})
    assert h.apply(df, "a", 0).to_list() == ["18 or under", "18 or under", "19", "20-21", "20-21", "22-25",
                                             "22-25", "26 or over", "26 or over", None]
    assert h.apply(df, "a", 1).to_list()[:6] == ["21 or under"] * 5 + ["22 or over"]
    assert set(h.apply(df, "a", 2).to_list()) == {"*"}
    assert h.labels() >= {"19", "20-21", "*", "22 or over"}


def test_year_band_from_years_and_dates():
    h = H({"type": "year_band", "origin": 2000, "levels": [2, 5, 1]})
    df = pl.DataFrame({"y": [2014, 2015, 2016, None],
                       "d": [dt.date(2014, 3, 9), dt.date(2015, 12, 31), dt.date(2016, 1, 1), None]})
    assert h.apply(df, "y", 0).to_list() == ["2014-2015", "2014-2015", "2016-2017", None]
    assert h.apply(df, "d", 1).to_list() == ["2010-2014", "2015-2019", "2015-2019", None]
    assert h.apply(df, "y", 2).to_list() == ["2014", "2015", "2016", None]


def test_map_strict_and_default_never_echo_values():
    h = H({"type": "map", "levels": [{"map": {"A": "x"}}, {"map": {"A": "x"}, "default": "other"}]})
    df = pl.DataFrame({"c": ["A", "SECRET-VALUE", None]})
    with pytest.raises(GovernanceError) as ei:
        h.apply(df, "c", 0)
    assert "SECRET-VALUE" not in str(ei.value) and "column c" in str(ei.value)
    assert h.apply(df, "c", 1).to_list() == ["x", "other", None]


def test_lookup_reference_tables():
    r = load_rules("profile_a")
    df = pl.DataFrame({"s": ["MANC", "QUB", "EDIN", None], "e": ["10", "31", "899", "98"],
                       "sp": ["CST", "GP", "OPH", "RAD"]})
    assert r.hierarchies["school_group"].apply(df, "s", 0).to_list() == ["North of England", "Wales & NI",
                                                                         "Scotland", None]
    assert r.hierarchies["ethnicity"].apply(df, "e", 0).to_list() == ["White", "Asian", "Other", "Unknown"]
    assert r.hierarchies["ethnicity"].apply(df, "e", 1).to_list() == ["White", "Minority ethnic",
                                                                      "Minority ethnic", "Unknown"]
    assert r.hierarchies["specialty_group"].apply(df, "sp", 0).to_list() == ["Surgical", "GP", "Surgical",
                                                                             "Diagnostics"]
    assert r.hierarchies["specialty_group"].apply(df, "sp", 1).to_list() == [
        "Surgical", "GP", "Surgical", "Other hospital specialty"]
    with pytest.raises(GovernanceError, match="not in medical_schools.csv"):
        r.hierarchies["school_group"].apply(pl.DataFrame({"s": ["XXXX"]}), "s", 0)


def test_quantile_within_group_and_date_precision():
    r = load_rules("profile_a")
    df = pl.DataFrame({"x": [float(i) for i in range(20)] + [None], "fp_year": [2015] * 10 + [2016] * 10 + [2016]})
    dec = r.hierarchies["score_decile"].apply(df, "x", 0).to_list()
    assert dec[9] == "1" and dec[0] == "10" and dec[19] == "1" and dec[10] == "10" and dec[20] is None
    ev = r.hierarchies["event_year"].apply(pl.DataFrame({"d": [dt.date(2019, 8, 1), None]}), "d", 0)
    assert ev.dtype == pl.Int16 and ev.to_list() == [2019, None]
    b = load_rules("profile_b").hierarchies["event_month"].apply(pl.DataFrame({"d": [dt.date(2019, 8, 17)]}), "d", 0)
    assert b.to_list() == [dt.date(2019, 8, 1)]
