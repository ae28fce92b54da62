"""assemble: hand-made standardised sources + clusters -> doctors/events."""

from __future__ import annotations

import datetime as dt
import time

import numpy as np
import polars as pl
import pytest

from etl.assemble import DOCTOR_COLUMNS, EVENT_TYPES, assemble

D = dt.date


@pytest.fixture()
def sources(tmp_path):
    adm = pl.DataFrame({
        "source": ["admission"] * 4,
        "record_id": ["A1", "A2", "A3", "A4"],
        "row_number": [1, 2, 3, 4],
        "forenames": ["ANN", "ANN", "BOB", "CAL"],
        "surname": ["SMITH", "SMITH", "JONES", "LEE"],
        "date_of_birth": [D(2000, 9, 2), D(2000, 9, 2), D(2001, 1, 5), D(2002, 3, 3)],
        "sex": ["F", "F", "M", "M"],
        "cycle_year": [2018, 2019, 2019, 2020],
        "ethnicity_code": ["10", None, "31", "22"],
        "nssec_code": ["01", "02", "05", None],
        "parental_he": ["01", None, "02", "99"],
        "school_type": ["independent", None, "comprehensive", "grammar"],
        "fsm": [None, None, None, "Y"],
        "polar4_quintile": [5, 4, 1, 2],
        "imd_quintile": [5, None, 1, 3],
        "imd_nation": ["England", "England", "Wales", "England"],
        "outcome": ["unplaced", "placed", "placed", "withdrawn"],
        "medical_school": [None, "BIRM", "CARD", None],
        "course_type": [None, "SEM", "GEP", None],
    })
    trn = pl.DataFrame({
        "source": ["training"] * 2,
        "record_id": ["T1", "T2"],
        "date_of_birth": [D(2000, 9, 2), D(2001, 1, 5)],
        "sex": ["F", "M"],
        "medical_school": ["BIRM", "CARD"],
        "entry_year": [2019, 2019],
        "course_type": ["SEM", "GEP"],
        "course_outcome": ["graduated", "graduated"],
        "graduation_year": [2024, 2023],
        "fp_year": [2024, 2023],
        "allocation_method": ["PIA", "score"],
        "epm_decile": [None, 3],
        "sjt_score": [None, 41.5],
        "fp_total_score": [None, 80.2],
        "foundation_school": ["WM", "WAL"],
        "arcp_f1_outcome": ["1", "1"],
        "arcp_f2_outcome": [None, "6"],
    })
    reg = pl.DataFrame({
        "source": ["registration"] * 4,
        "record_id": ["R1", "R2", "R3", "R4"],
        "date_of_birth": [D(2001, 1, 5)] * 3 + [D(1990, 1, 1)],
        "sex": ["M", "M", "M", "F"],
        "medical_school": ["CARD"] * 3 + ["LEED"],
        "graduation_year": [2023, 2023, 2023, 2014],
        "application_year": [2025, 2025, 2026, None],
        "specialty_code": ["GP", "CST", "CST", None],
        "offer_status": ["offered", "accepted", "offered", None],
        "training_region": ["Wales", "London", "London", None],
        "full_registration_date": [D(2024, 8, 7)] * 3 + [D(2015, 8, 5)],
        "specialist_register_date": [None, None, None, None],
        "gp_register_date": [None, None, None, D(2020, 8, 1)],
    }, schema_overrides={"application_year": pl.Int64})
    clusters = pl.DataFrame({
        "source": ["admission", "admission", "training", "admission", "training",
                   "registration", "registration", "registration", "admission", "registration"],
        "record_id": ["A1", "A2", "T1", "A3", "T2", "R1", "R2", "R3", "A4", "R4"],
        "person_id": ["p1", "p1", "p1", "p2", "p2", "p2", "p2", "p2", "p3", "p4"],
    })
    pairs = pl.DataFrame({
        "source_l": ["admission", "admission", "admission", "training", "admission"],
        "record_id_l": ["A1", "A2", "A3", "T2", "A1"],
        "source_r": ["admission", "training", "training", "registration", "training"],
        "record_id_r": ["A2", "T1", "T2", "R1", "T1"],
        "match_probability": [0.97, 1.0, 0.99, 0.8, 0.3],
        "method": ["probabilistic", "deterministic", "deterministic", "probabilistic", "probabilistic"],
        "linked": [True, True, True, True, False],     # a rejected edge inside a cluster: not used
    })
    paths = {}
    for name, df in (("admission", adm), ("training", trn), ("registration", reg)):
        paths[name] = tmp_path / f"{name}.parquet"
        df.write_parquet(paths[name])
    clusters.write_parquet(tmp_path / "clusters.parquet")
    pairs.write_parquet(tmp_path / "pairs.parquet")
    return paths, tmp_path / "clusters.parquet", tmp_path / "pairs.parquet"


def test_assemble_derivations(sources, tmp_path):
    paths, cl, pr = sources
    s = assemble(paths, cl, pr, tmp_path / "out")
    assert s["doctors"] == 4
    assert s["persons_by_sources"] == {"admission": 1, "admission+training": 1,
                                       "admission+training+registration": 1, "registration": 1}
    d = pl.read_parquet(s["doctors_path"])
    assert d.columns == DOCTOR_COLUMNS
    r = {row["person_id"]: row for row in d.iter_rows(named=True)}
    p1, p2, p3, p4 = r["p1"], r["p2"], r["p3"], r["p4"]
    assert p1["first_cycle_year"] == 2018 and p1["n_admission_rows"] == 2
    assert p1["school_type"] == "independent"       # latest cycle with a value
    assert p1["polar4_quintile"] == 4 and p1["imd_quintile"] == 5
    assert p1["entry_year"] == 2019 and p1["age_at_entry"] == 18   # birthday 2 Sept
    assert p2["age_at_entry"] == 18
    assert p1["link_method"] == "probabilistic" and p1["link_probability"] == pytest.approx(0.97)
    assert p2["first_offer_year"] == 2025 and p2["first_offer_specialty"] == "CST"  # accepted preferred
    assert p2["n_specialty_applications"] == 3 and p2["n_offers"] == 3
    assert p2["training_region"] == "London"
    assert p2["full_registration_date"] == D(2024, 8, 7)
    assert p2["link_probability"] == pytest.approx(0.8) and p2["link_method"] == "probabilistic"
    assert p2["fp_total_score"] == pytest.approx(80.2) and p2["arcp_f2_outcome"] == "6"
    assert p3["entry_year"] is None and p3["link_method"] == "single-source"
    assert p3["in_admission"] and not p3["in_training"]
    assert p4["gp_register_date"] == D(2020, 8, 1) and p4["n_admission_rows"] == 0
    assert p4["link_probability"] is None

    e = pl.read_parquet(s["events_path"])
    assert e.columns == ["person_id", "event_type", "event_date", "detail", "source", "record_id"]
    assert e["event_date"].dtype == pl.Date
    assert set(e["event_type"].unique()) <= set(EVENT_TYPES)
    # register date repeated on three rows -> one event
    assert e.filter((pl.col("person_id") == "p2") & (pl.col("event_type") == "full_registration")).height == 1
    adm_ev = e.filter((pl.col("person_id") == "p1") & (pl.col("event_type") == "admission"))
    assert adm_ev["event_date"].to_list() == [D(2019, 9, 1)] and adm_ev["detail"][0] == "BIRM"
    assert e.filter(pl.col("event_type") == "specialty_offer").height == 3


def test_assemble_missing_source_and_pairs_columns(sources, tmp_path):
    paths, cl, _ = sources
    bare = tmp_path / "bare_pairs.parquet"
    pl.DataFrame({"a": [1]}).write_parquet(bare)
    s = assemble({"admission": paths["admission"]}, cl, bare, tmp_path / "out2")
    d = pl.read_parquet(s["doctors_path"])
    assert d.columns == DOCTOR_COLUMNS
    assert s["doctors"] == 3 and d["link_probability"].null_count() == 3
    assert not d["in_training"].any()
    assert s["sources_missing"] == ["training", "registration"]


def test_assemble_scales(tmp_path):
    n = 200_000
    rng = np.random.default_rng(1)
    ids = [f"a{i}" for i in range(n)]
    adm = pl.DataFrame({"record_id": ids, "cycle_year": rng.integers(2010, 2025, n),
                        "date_of_birth": pl.Series([D(2000, 1, 1)] * n),
                        "outcome": rng.choice(["placed", "unplaced"], n),
                        "school_type": rng.choice(["independent", "grammar"], n)})
    adm.write_parquet(tmp_path / "a.parquet")
    pl.DataFrame({"source": "admission", "record_id": ids,
                  "person_id": [f"p{i // 2}" for i in range(n)]}).write_parquet(tmp_path / "c.parquet")
    t0 = time.perf_counter()
    s = assemble({"admission": tmp_path / "a.parquet"}, tmp_path / "c.parquet",
                 tmp_path / "none.parquet", tmp_path / "o")
    assert s["doctors"] == n // 2
    assert time.perf_counter() - t0 < 20
