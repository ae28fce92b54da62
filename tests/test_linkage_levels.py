"""Comparison levels, one by one, on standardised records."""

from __future__ import annotations

import datetime as dt

import numpy as np
import polars as pl
import pytest

from etl.linkage.comparisons import Evaluator
from etl.linkage.records import Records
from etl.linkage.spec import parse_model

MODEL = {
    "sources": {"a": {}, "b": {}},
    "blocking": [{"keys": ["surname"]}],
    "comparisons": [
        {"name": "name", "kind": "name",
         "fields": {"forename": "forenames", "surname": "surname", "alternatives": ["preferred_name", "other_names"]},
         "levels": [
             {"label": "exact", "test": "exact", "tf": "joint"},
             {"label": "alias", "test": "alias"},
             {"label": "swapped", "test": "swapped"},
             {"label": "surname_exact_forename_close", "forename": {"jaro_winkler": 0.88}, "surname": "exact"},
             {"label": "forename_exact_surname_close", "forename": "exact", "surname": {"jaro_winkler": 0.88}},
             {"label": "both_dl1", "forename": {"damerau_levenshtein": 1}, "surname": {"damerau_levenshtein": 1}},
             {"label": "forename_exact", "forename": "exact", "tf": "forename"},
             {"label": "forename_alias", "forename": "alias"},
             {"label": "surname_exact", "surname": "exact", "tf": "surname"},
             {"label": "initials", "forename": "initial", "surname": "initial"},
             "else"]},
        {"name": "dob", "kind": "date", "field": "date_of_birth",
         "levels": [{"label": "exact", "test": "exact"}, {"label": "dm_swap", "test": "day_month_swap"},
                    {"label": "year1", "test": "year_off", "max": 1}, {"label": "one", "test": "one_component"},
                    {"label": "d30", "test": "within_days", "days": 30}, {"label": "dl1", "test": "damerau_levenshtein", "max": 1},
                    "else"]},
        {"name": "postcode", "kind": "postcode", "field": "postcode",
         "levels": [{"label": "full", "test": "full"}, {"label": "sector", "test": "sector"},
                    {"label": "district", "test": "district"}, {"label": "area", "test": "area"}, "else"]},
        {"name": "gmc", "kind": "identifier", "field": "gmc_number", "pattern": "^[0-9]{7}$",
         "levels": [{"label": "exact", "test": "exact"}, {"label": "typo", "test": "typo", "max": 1}, "else"]},
        {"name": "year", "kind": "numeric-year", "field": "graduation_year",
         "levels": [{"label": "exact", "test": "exact"}, {"label": "within_1", "test": "within", "max": 1}, "else"]},
        {"name": "sex", "kind": "exact", "field": "sex", "levels": [{"label": "exact", "test": "exact"}, "else"]},
        {"name": "town", "kind": "string", "field": "town",
         "levels": [{"label": "exact", "test": "exact", "tf": True},
                    {"label": "jw90", "test": "jaro_winkler", "threshold": 0.9},
                    {"label": "lev2", "test": "levenshtein", "max": 2},
                    {"label": "prefix3", "test": "prefix", "n": 3}, "else"]},
    ],
}

D = dt.date


def _rec(a_rows: list[dict], b_rows: list[dict]) -> Records:
    cols = ["forenames", "surname", "preferred_name", "other_names", "date_of_birth", "postcode",
            "gmc_number", "graduation_year", "sex", "town"]

    def frame(rows, src):
        data = {c: [r.get(c) for r in rows] for c in cols}
        schema = {c: pl.String for c in cols}
        schema["date_of_birth"] = pl.Date
        schema["graduation_year"] = pl.Int64
        df = pl.DataFrame(data, schema=schema)
        return df.with_columns(pl.lit(src, pl.Int8).alias("_src"),
                               pl.Series("record_id", [f"{src}{i}" for i in range(len(rows))]))
    df = pl.concat([frame(a_rows, 0), frame(b_rows, 1)], how="diagonal_relaxed")
    return Records(df, ["a", "b"])


SPEC = parse_model(MODEL)


def levels(comp: str, pairs: list[tuple[dict, dict]]) -> list[str]:
    rec = _rec([p[0] for p in pairs], [p[1] for p in pairs])
    c = next(c for c in SPEC.comparisons if c.name == comp)
    ev = Evaluator(c, rec, workers=1)
    n = len(pairs)
    g, _ = ev.gamma(np.arange(n, dtype=np.int32), np.arange(n, 2 * n, dtype=np.int32))
    return [c.level_labels()[k] for k in g]


def N(f, s, **kw):
    return {"forenames": f, "surname": s, **kw}


def test_name_levels():
    got = levels("name", [
        (N("MARY ANN", "SMITH"), N("MARY", "SMITH")),             # first given names equal
        (N("BOB", "JONES"), N("ROBERT", "JONES", preferred_name="BOB")),
        (N("KWAME", "MENSAH"), N("JAMES", "MENSAH", other_names="KWAME")),
        (N("LI", "WEI"), N("WEI", "LI")),
        (N("JONATHAN", "BROWN"), N("JONATHON", "BROWN")),
        (N("PRIYA", "PATEL"), N("PRIYA", "PATELL")),
        (N("MOHAMMED", "KHAN"), N("MOHAMED", "KAHN")),
        (N("SARAH", "WILLIAMS"), N("SARAH", "OKONKWO")),          # married: surname changed
        (N("ELIZABETH", "TAYLOR"), N("BETH", "HUGHES", preferred_name="ELIZABETH")),
        (N("ANNA", "WRIGHT"), N("ZOE", "WRIGHT")),
        (N("ANNA", "WRIGHT"), N("ALICE", "WATTS")),
        (N("ANNA", "WRIGHT"), N("ZOE", "HILL")),
        (N("ANNA", None), N("ANNA", "WRIGHT")),
        (N("AL HASSAN", "AL HASSAN"), N("AL HASSAN", "ALHASSAN")),
    ])
    assert got == ["exact", "alias", "alias", "swapped", "surname_exact_forename_close",
                   "forename_exact_surname_close", "both_dl1", "forename_exact", "forename_alias",
                   "surname_exact", "initials", "else", "null", "exact"]


def test_date_levels():
    got = levels("dob", [
        ({"date_of_birth": D(1990, 3, 4)}, {"date_of_birth": D(1990, 3, 4)}),
        ({"date_of_birth": D(1990, 3, 4)}, {"date_of_birth": D(1990, 4, 3)}),
        ({"date_of_birth": D(1990, 3, 4)}, {"date_of_birth": D(1991, 3, 4)}),
        ({"date_of_birth": D(1990, 3, 4)}, {"date_of_birth": D(1990, 3, 14)}),
        ({"date_of_birth": D(1990, 3, 30)}, {"date_of_birth": D(1990, 4, 2)}),
        ({"date_of_birth": D(1990, 3, 4)}, {"date_of_birth": D(1995, 8, 21)}),
        ({"date_of_birth": None}, {"date_of_birth": D(1995, 8, 21)}),
    ])
    assert got == ["exact", "dm_swap", "year1", "one", "d30", "else", "null"]


def test_date_levels_on_text_dates_with_typos():
    # FEBRL-style text dates, one of them not a valid date: only the string levels apply
    rec_a = [{"date_of_birth": "19900304"}, {"date_of_birth": "19900231"}]
    rec_b = [{"date_of_birth": "19900403"}, {"date_of_birth": "19900211"}]
    df = pl.DataFrame({"date_of_birth": [r["date_of_birth"] for r in rec_a + rec_b],
                       "_src": pl.Series([0, 0, 1, 1], dtype=pl.Int8), "record_id": ["1", "2", "3", "4"]})
    rec = Records(df, ["a", "b"])
    c = next(c for c in SPEC.comparisons if c.name == "dob")
    g, _ = Evaluator(c, rec, 1).gamma(np.array([0, 1], np.int32), np.array([2, 3], np.int32))
    assert [c.level_labels()[k] for k in g] == ["dm_swap", "dl1"]


def test_postcode_levels():
    P = lambda x: {"postcode": x}  # noqa: E731
    got = levels("postcode", [(P("AB1 2CD"), P("AB1 2CD")), (P("AB1 2CD"), P("AB1 2XY")),
                              (P("AB1 2CD"), P("AB1 7XY")), (P("AB1 2CD"), P("AB9 7XY")),
                              (P("AB1 2CD"), P("ZZ1 2CD")), (P(None), P("ZZ1 2CD"))])
    assert got == ["full", "sector", "district", "area", "else", "null"]


def test_identifier_levels():
    G = lambda x: {"gmc_number": x}  # noqa: E731
    got = levels("gmc", [(G("1234567"), G("1234567")), (G("1234567"), G("1243567")),
                         (G("1234567"), G("1234557")), (G("1234567"), G("7654321")),
                         (G("1234567"), G("99999999")), (G(None), G("1234567"))])
    # a value that does not validate (8 digits) counts as missing
    assert got == ["exact", "typo", "typo", "else", "null", "null"]


def test_numeric_exact_and_string_levels():
    Y = lambda x: {"graduation_year": x}  # noqa: E731
    assert levels("year", [(Y(2015), Y(2015)), (Y(2015), Y(2016)), (Y(2015), Y(2018)), (Y(None), Y(2018))]) == \
        ["exact", "within_1", "else", "null"]
    S = lambda x: {"sex": x}  # noqa: E731
    assert levels("sex", [(S("F"), S("F")), (S("F"), S("M")), (S(None), S("M"))]) == ["exact", "else", "null"]
    T = lambda x: {"town": x}  # noqa: E731
    assert levels("town", [(T("LEEDS"), T("LEEDS")), (T("MANCHESTER"), T("MANCHESTRE")),
                           (T("XBATH"), T("BATHX")), (T("NEWCASTLE"), T("NEWPORT")), (T("YORK"), T("HULL"))]) == \
        ["exact", "jw90", "lev2", "prefix3", "else"]


def test_tf_frequency_only_on_tf_levels():
    rec = _rec([N("JOHN", "SMITH"), N("JOHN", "SMITH"), N("XAVIER", "QUILL")],
               [N("JOHN", "SMITH"), N("XAVIER", "QUILL"), N("JOHN", "BROWN")])
    c = SPEC.comparisons[0]
    ev = Evaluator(c, rec, 1)
    g, tfu = ev.gamma(np.array([0, 2, 1], np.int32), np.array([3, 4, 5], np.int32))
    assert [c.level_labels()[k] for k in g] == ["exact", "exact", "forename_exact"]
    # JOHN|SMITH is 3 of 6 full names, XAVIER|QUILL 2 of 6; JOHN is 4 of 6 forenames
    assert tfu.tolist() == pytest.approx([3 / 6, 2 / 6, 4 / 6])


def test_level_with_when_condition_holds_only_for_matching_records():
    """`when: {sex: F}` splits the surname-changed level by sex (marriage changes
    mostly women's surnames): both records must be F, or missing (no contradiction)."""
    model = {**MODEL, "comparisons": [{
        "name": "name", "kind": "name", "fields": {"forename": "forenames", "surname": "surname"},
        "levels": [{"label": "exact", "test": "exact"},
                   {"label": "forename_exact_women", "forename": "exact", "tf": "forename", "when": {"sex": "F"}},
                   {"label": "forename_exact", "forename": "exact", "tf": "forename"}, "else"]}]}
    spec = parse_model(model)
    c = spec.comparisons[0]
    assert "sex" in c.columns          # the condition's field is loaded with the comparison
    pairs = [(N("SARAH", "JONES", sex="F"), N("SARAH", "OKONKWO", sex="F")),
             (N("DAVID", "JONES", sex="M"), N("DAVID", "OKONKWO", sex="M")),
             (N("SARAH", "JONES", sex="F"), N("SARAH", "OKONKWO", sex=None)),
             (N("SAM", "JONES", sex="F"), N("SAM", "OKONKWO", sex="M")),
             (N("SARAH", "JONES", sex="F"), N("SARAH", "JONES", sex="F"))]
    rec = _rec([p[0] for p in pairs], [p[1] for p in pairs])
    ev = Evaluator(c, rec, workers=1)
    n = len(pairs)
    g, tfu = ev.gamma(np.arange(n, dtype=np.int32), np.arange(n, 2 * n, dtype=np.int32))
    assert [c.level_labels()[k] for k in g] == ["forename_exact_women", "forename_exact",
                                                "forename_exact_women", "forename_exact", "exact"]
    assert tfu[0] > 0 and tfu[1] > 0   # both branches keep the forename TF


@pytest.mark.parametrize("when", [["sex", "F"], {"sex": {"in": "F"}}, {}])
def test_level_when_condition_must_map_fields_to_values(when):
    from etl.errors import ConfigError
    model = {**MODEL, "comparisons": [{
        "name": "name", "kind": "name", "fields": {"forename": "forenames", "surname": "surname"},
        "levels": [{"label": "fe", "forename": "exact", "when": when}, "else"]}]}
    with pytest.raises(ConfigError, match="`when` maps a field"):
        parse_model(model)
