"""A corpus of bad deliveries, each with the behaviour it must get: a
one-line error naming file, column and row (no traceback), or quarantine
with the reason and counts that reconcile. None crashes, none loses a row.
"""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
import yaml

from etl import config
from etl.errors import MedlinkError
from etl.ingest import ingest

HEADER = "REF,PID,FN,SN,DOB,SEX,YEAR,OUT"
GOOD = ["A1,1234567890,Zoe,Smith,01/02/2000,F,2018,placed",
        "A2,0123456789,John,Brown,03/04/2001,M,2019,unplaced",
        "A3,2234567890,Ann,Lee,05/06/1999,F,2017,placed",
        "A4,3234567890,Raj,Patel,07/08/2000,M,2018,placed"]
COLUMNS = {"REF": "record_id", "PID": "ucas_personal_id", "FN": "forenames", "SN": "surname",
           "DOB": "date_of_birth", "SEX": "sex", "YEAR": "cycle_year", "OUT": "outcome"}


def csv_text(rows=GOOD, header=HEADER, eol="\n"):
    return eol.join([header, *rows]) + eol


def make(tmp_path: Path, data: bytes | str, *, name="adm.csv", **source_overrides) -> Path:
    f = tmp_path / name
    f.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
    src = {"path": name, "columns": dict(COLUMNS),
           "date_formats": {"date_of_birth": "%d/%m/%Y"}}
    src.update(source_overrides)
    p = tmp_path / "delivery.yaml"
    p.write_text(yaml.safe_dump({"sources": {"admission": src}, "output": {"dir": "out"}}))
    return p


def run_ingest(cfg_path: Path):
    cfg = config.load(cfg_path)
    out = cfg_path.parent / "out"
    s = ingest(cfg.sources["admission"], out / "i.parquet", out / "q.parquet", max_quarantine_share=0.5)
    assert s["rows_in"] == s["rows_ingested"] + s["rows_quarantined"]
    return s, pl.read_parquet(out / "i.parquet"), pl.read_parquet(out / "q.parquet")


def expect_error(cfg_path: Path, *fragments: str):
    with pytest.raises(MedlinkError) as ei:
        run_ingest(cfg_path)
    msg = str(ei.value)
    assert "\n" not in msg
    for f in fragments:
        assert f in msg, msg
    return msg


def parquet_bytes(df: pl.DataFrame) -> bytes:
    buf = io.BytesIO()
    df.write_parquet(buf)
    return buf.getvalue()


# --------------------------------------------------------------------------- file-level: one-line errors

def test_empty_file(tmp_path):
    expect_error(make(tmp_path, b""), "adm.csv", "empty (0 bytes)")


def test_header_only(tmp_path):
    expect_error(make(tmp_path, HEADER + "\n"), "adm.csv", "header but no data rows")


def test_missing_required_column(tmp_path):
    text = csv_text([",".join(r.split(",")[:7]) for r in GOOD], header="REF,PID,FN,SN,DOB,SEX,YEAR")
    expect_error(make(tmp_path, text), "column 'OUT'", "(mapped to outcome)", "delivery.yaml")


def test_renamed_column(tmp_path):
    expect_error(make(tmp_path, csv_text(header=HEADER.replace("SN", "SURNAME"))),
                 "column 'SN'", "is not in adm.csv")


def test_extra_unknown_column(tmp_path):
    rows = [r + ",x" for r in GOOD]
    expect_error(make(tmp_path, csv_text(rows, header=HEADER + ",NOTES")),
                 "column 'NOTES'", "not declared")


def test_extra_column_declared_is_fine(tmp_path):
    rows = [r + ",x" for r in GOOD]
    s, df, _ = run_ingest(make(tmp_path, csv_text(rows, header=HEADER + ",NOTES"),
                               ignore_columns={"NOTES": "direct_identifier"}))
    assert s["rows_ingested"] == 4 and "NOTES" not in df.columns


def test_duplicated_header(tmp_path):
    expect_error(make(tmp_path, csv_text(header=HEADER.replace("OUT", "SN"))), "appears twice", "row 1")


def test_wrong_delimiter(tmp_path):
    expect_error(make(tmp_path, csv_text([r.replace(",", ";") for r in GOOD], header=HEADER.replace(",", ";"))),
                 "is the delimiter ','")


def test_latin1_declared_utf8(tmp_path):
    data = csv_text(GOOD[:1] + ["A9,4234567890,Zoë,Brontë,01/02/2000,F,2018,placed"]).encode("latin-1")
    expect_error(make(tmp_path, data), "not valid UTF-8", "line 3", "encoding")


def test_parquet_named_csv(tmp_path):
    df = pl.read_csv(io.StringIO(csv_text()), infer_schema=False)
    expect_error(make(tmp_path, parquet_bytes(df)), "adm.csv", "is Parquet")


def test_truncated_parquet(tmp_path):
    df = pl.read_csv(io.StringIO(csv_text()), infer_schema=False)
    data = parquet_bytes(df)
    expect_error(make(tmp_path, data[: len(data) // 2], name="adm.parquet", format="parquet"),
                 "adm.parquet", "not a readable Parquet file")


def test_zero_byte_parquet(tmp_path):
    expect_error(make(tmp_path, b"", name="adm.parquet", format="parquet"), "not a readable Parquet file")


def test_config_points_at_wrong_file(tmp_path):
    (tmp_path / "registration.csv").write_text("GMC,NAME\n1234567,X\n")
    p = make(tmp_path, csv_text())
    cfg = yaml.safe_load(p.read_text())
    cfg["sources"]["admission"]["path"] = "registration.csv"
    p.write_text(yaml.safe_dump(cfg))
    expect_error(p, "is not in registration.csv", "mapped columns are missing", "is this the right file?")


def test_all_rows_duplicates(tmp_path):
    msg = expect_error(make(tmp_path, csv_text([GOOD[0]] * 6)), "5 of 6 rows", "duplicate record_id")
    assert "Zoe" not in msg and "Smith" not in msg  # never echo a value


# --------------------------------------------------------------------------- readable variants: ingested

def test_latin1_declared(tmp_path):
    data = csv_text(GOOD[:1] + ["A9,4234567890,Zoë,Brontë,01/02/2000,F,2018,placed"]).encode("latin-1")
    s, df, _ = run_ingest(make(tmp_path, data, encoding="latin-1"))
    assert s["rows_ingested"] == 2
    assert df.filter(pl.col("record_id") == "A9")["surname"].item() == "BRONTE"


def test_utf8_with_bom(tmp_path):
    s, df, _ = run_ingest(make(tmp_path, b"\xef\xbb\xbf" + csv_text().encode()))
    assert s["rows_ingested"] == 4 and df["record_id"].to_list()[0] == "A1"


def test_mixed_line_endings(tmp_path):
    text = HEADER + "\r\n" + GOOD[0] + "\n" + GOOD[1] + "\r\n" + GOOD[2] + "\n" + GOOD[3] + "\r\n"
    s, df, _ = run_ingest(make(tmp_path, text))
    assert s["rows_ingested"] == 4
    assert df["outcome"].to_list() == ["placed", "unplaced", "placed", "placed"]


def test_quoted_newlines(tmp_path):
    rows = GOOD[:1] + ['A5,1234567891,"Mary\nAnne",Jones,01/02/2000,F,2018,placed'] + GOOD[1:]
    s, df, _ = run_ingest(make(tmp_path, csv_text(rows)))
    assert s["rows_in"] == 5 and s["rows_ingested"] == 5
    assert df.filter(pl.col("record_id") == "A5")["forenames"].item() == "MARY ANNE"


def test_non_latin_names(tmp_path):
    rows = GOOD + ["A7,5234567890,华,李,01/02/2000,F,2018,placed", "A8,6234567890,Мария,Иванова,01/02/2000,F,2018,placed"]
    s, df, _ = run_ingest(make(tmp_path, csv_text(rows)))
    assert s["rows_ingested"] == 6
    assert df.filter(pl.col("record_id") == "A7")["surname"].item() == "李"


def test_dates_in_three_formats(tmp_path):
    rows = ["A1,1234567890,Zoe,Smith,01/02/2000,F,2018,placed",
            "A2,0123456789,John,Brown,2001-04-03,M,2019,unplaced",
            "A3,2234567890,Ann,Lee,5 Jun 1999,F,2017,placed"]
    s, df, _ = run_ingest(make(tmp_path, csv_text(rows),
                               date_formats={"date_of_birth": ["%d/%m/%Y", "%Y-%m-%d", "%d %b %Y"]}))
    assert s["rows_ingested"] == 3
    assert [d.isoformat() for d in df["date_of_birth"]] == ["2000-02-01", "2001-04-03", "1999-06-05"]


# --------------------------------------------------------------------------- row-level: quarantine with reason

def quarantined(tmp_path, rows, **kw):
    s, df, q = run_ingest(make(tmp_path, csv_text(rows), **kw))
    return s, df, q


def test_impossible_date(tmp_path):
    s, df, q = quarantined(tmp_path, GOOD + ["A5,1234567891,Ann,Lee,31/02/2000,F,2018,placed"])
    assert s["rows_quarantined"] == 1
    assert q["reason"][0].startswith("not a date")
    assert q["row_number"][0] == 5 and q["column"][0] == "date_of_birth"


def test_dob_in_future(tmp_path):
    s, _, q = quarantined(tmp_path, GOOD + ["A5,1234567891,Ann,Lee,01/02/2100,F,2018,placed"])
    assert s["quarantine_reasons"] == {"date_of_birth: date in the future": 1}


def test_ucas_ids_with_letters_nulled_not_lost(tmp_path):
    s, df, q = quarantined(tmp_path, GOOD + ["A5,12345X7890,Ann,Lee,01/02/2000,F,2018,placed"])
    assert s["rows_ingested"] == 5 and s["nullified"] == {"ucas_personal_id": 1}
    assert df.filter(pl.col("record_id") == "A5")["ucas_personal_id"].item() is None


def test_ucas_ids_hyphenated_or_short_repaired(tmp_path):
    rows = ["A1,123-456-7890,Zoe,Smith,01/02/2000,F,2018,placed", "A2,23456789,John,Brown,03/04/2001,M,2019,unplaced"]
    s, df, _ = quarantined(tmp_path, rows)
    assert df["ucas_personal_id"].to_list() == ["1234567890", "0023456789"]


def test_gmc_numbers_of_wrong_length(tmp_path):
    rows = [r + f",{g}" for r, g in zip(GOOD, ["1234567", "123456", "12345678", "99999999"])]
    p = make(tmp_path, csv_text(rows, header=HEADER + ",GMC"), columns={**COLUMNS, "GMC": "gmc_number"},
             fields={"gmc_number": {"type": "str", "standardise": "gmc_number", "class": "direct_identifier"}})
    s, df, q = run_ingest(p)
    assert df["gmc_number"].to_list() == ["1234567", None, None, None]
    assert s["nullified"] == {"gmc_number": 2}  # 99999999 is the documented 'not known' default


def test_duplicate_record_ids(tmp_path):
    s, df, q = quarantined(tmp_path, GOOD + [GOOD[0].replace("Zoe", "Zara")])
    assert s["quarantine_reasons"] == {"record_id: duplicate record_id (first kept)": 1}
    assert df.filter(pl.col("record_id") == "A1")["forenames"].item() == "ZOE"


def test_ragged_rows(tmp_path):
    rows = GOOD + ["A5,1234567891,Ann,Lee,01/02/2000,F,2018", "A6,1234567892,Bo,Li,01/02/2000,F,2018,placed,extra"]
    s, df, q = quarantined(tmp_path, rows)
    assert s["rows_in"] == 6 and s["rows_quarantined"] == 2
    assert sorted(q["row_number"].to_list()) == [5, 6]
    assert set(q["reason"]) == {"wrong number of fields (ragged row)"}


def test_very_large_field(tmp_path):
    s, _, q = quarantined(tmp_path, GOOD + ["A5,1234567891," + "A" * 1_000_000 + ",Lee,01/02/2000,F,2018,placed"])
    assert s["quarantine_reasons"] == {"forenames: value longer than 1000 characters": 1}


def test_value_outside_set_and_missing_required(tmp_path):
    s, _, q = quarantined(tmp_path, GOOD + ["A5,1234567891,Ann,,01/02/2000,F,2018,placed",
                                            "A6,1234567892,Bo,Li,01/02/2000,Q,2018,placed"])
    assert s["quarantine_reasons"] == {"surname: required value missing": 1,
                                       "sex: value outside its allowed set": 1}


# --------------------------------------------------------------------------- through the CLI

@pytest.mark.parametrize("data, fragment", [
    (b"", "empty (0 bytes)"),
    (csv_text(header=HEADER.replace("OUT", "SN")).encode(), "appears twice"),
])
def test_cli_one_line_no_traceback(tmp_path, data, fragment):
    p = make(tmp_path, data)
    r = subprocess.run([sys.executable, "-m", "etl.cli", "check", "--config", str(p)],
                       capture_output=True, text=True)
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and fragment in r.stderr
