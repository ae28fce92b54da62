"""Delivery config: valid configs load; every mistake is one line naming
the file and the key, from the API and from the CLI (no traceback)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from etl import config
from etl.errors import ConfigError, DeliveryError, MedlinkError

CSV = textwrap.dedent("""\
    REF,PID,FN,SN,DOB,SEX,YEAR,OUT,NOTES
    A1,123-456-7890,Zoe,Smith,01/02/2000,F,2018,placed,x
    A2,0123456789,John,Brown,03/04/2001,M,2019,unplaced,
    """)

BASE = {
    "delivery": "tiny",
    "sources": {
        "admission": {
            "path": "adm.csv",
            "columns": {"REF": "record_id", "PID": "ucas_personal_id", "FN": "forenames",
                        "SN": "surname", "DOB": "date_of_birth", "SEX": "sex",
                        "YEAR": "cycle_year", "OUT": "outcome"},
            "date_formats": {"date_of_birth": "%d/%m/%Y"},
            "ignore_columns": {"NOTES": "direct_identifier"},
        }
    },
    "output": {"dir": "out"},
}


def write(tmp_path: Path, cfg: dict, csv: str = CSV) -> Path:
    (tmp_path / "adm.csv").write_text(csv)
    p = tmp_path / "delivery.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


def variant(**edits) -> dict:
    import copy
    cfg = copy.deepcopy(BASE)
    for dotted, value in edits.items():
        node = cfg
        *parents, last = dotted.split("__")
        for k in parents:
            node = node[k]
        if value is DELETE:
            del node[last]
        else:
            node[last] = value
    return cfg


DELETE = object()


def test_valid_config_loads(tmp_path):
    cfg = config.load(write(tmp_path, BASE))
    src = cfg.sources["admission"]
    assert src.columns["FN"] == "forenames"
    assert src.fields["date_of_birth"].type == "date"
    assert cfg.output_dir == (tmp_path / "out").resolve()
    assert cfg.governance["rules"] == "profile_a"
    assert len(cfg.config_hash()) == 64


@pytest.mark.parametrize("edits, key, words", [
    ({"colour": "red"}, "[colour]", "unknown key"),
    ({"sources__admission__colour": 1}, "sources.admission.colour", "unknown key"),
    ({"sources__admission__path": "nope.csv"}, "sources.admission.path", "file not found"),
    ({"sources__admission__format": "xlsx"}, "sources.admission.format", "not supported"),
    ({"sources__admission__encoding": "ebcdic"}, "sources.admission.encoding", "not supported"),
    ({"sources__admission__delimiter": ";;"}, "sources.admission.delimiter", "single character"),
    ({"sources__admission__columns__FN": "given"}, "sources.admission.columns.FN", "is not a field"),
    ({"sources__admission__columns__SN": "forenames"}, "sources.admission.columns.SN", "already mapped"),
    ({"sources__admission__date_formats": {"sex": "%Y"}}, "sources.admission.date_formats.sex", "not a date field"),
    ({"sources__admission__ignore_columns": {"NOTES": "secret"}}, "sources.admission.ignore_columns.NOTES", "governance class"),
    ({"sources__admission__contract": "nosuch"}, "contract", "no contract"),
    ({"governance": {"demo": "yes"}}, "governance.demo", "true or false"),
    ({"output": {"folder": "x"}}, "output.folder", "unknown key"),
    ({"sources": {}}, "[sources]", "missing or empty"),
])
def test_config_errors_name_file_and_key(tmp_path, edits, key, words):
    p = write(tmp_path, variant(**edits))
    with pytest.raises(MedlinkError) as ei:
        config.load(p)
    msg = str(ei.value)
    assert "\n" not in msg
    assert key.strip("[]") in msg
    assert words in msg
    assert str(p) in msg or "delivery.yaml" in msg or "contract" in key


def test_required_field_not_mapped(tmp_path):
    cfg = variant()
    del cfg["sources"]["admission"]["columns"]["SN"]
    cfg["sources"]["admission"]["ignore_columns"]["SN"] = "direct_identifier"
    with pytest.raises(ConfigError, match=r"required field\(s\) not mapped: surname"):
        config.load(write(tmp_path, cfg))


def test_mapped_column_missing_from_file(tmp_path):
    csv = CSV.replace("YEAR", "CYCLE")
    cfg = variant()
    with pytest.raises(DeliveryError, match=r"column 'YEAR' \(mapped to cycle_year\) is not in adm.csv"):
        config.load(write(tmp_path, cfg, csv))


def test_undeclared_file_column_refused(tmp_path):
    cfg = variant(sources__admission__ignore_columns={})
    with pytest.raises(DeliveryError, match=r"column 'NOTES' of adm.csv is not declared"):
        config.load(write(tmp_path, cfg))


def test_wrong_delimiter_hint(tmp_path):
    csv = CSV.replace(",", ";")
    with pytest.raises(DeliveryError, match="is the delimiter"):
        config.load(write(tmp_path, variant(), csv))


def test_foreign_delivery_with_other_names_and_formats(tmp_path):
    """The loader serves deliveries that are not ours: other column names,
    another delimiter and date format, a declared extra field."""
    csv = "id|given|family|born|gender|yr|res|addr\nx1|Ann|Lee|19990102|W|2017|placed|1 High St\n"
    (tmp_path / "a.psv").write_text(csv)
    cfg = {"sources": {"admission": {
        "path": "a.psv", "format": "csv", "delimiter": "|",
        "columns": {"id": "record_id", "given": "forenames", "family": "surname", "born": "date_of_birth",
                    "gender": "sex", "yr": "cycle_year", "res": "outcome", "addr": "address"},
        "fields": {"address": {"type": "str", "class": "direct_identifier", "standardise": "name"}},
        "date_formats": {"date_of_birth": ["%Y%m%d"]}, "value_maps": {"sex": {"W": "F"}}}}}
    p = tmp_path / "foreign.yaml"
    p.write_text(yaml.safe_dump(cfg))
    c = config.load(p)
    assert c.sources["admission"].fields["address"].cls == "direct_identifier"


def test_cli_prints_one_line_without_traceback(tmp_path):
    p = write(tmp_path, variant(sources__admission__columns__FN="given"))
    r = subprocess.run([sys.executable, "-m", "etl.cli", "check", "--config", str(p)],
                       capture_output=True, text=True)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert "Traceback" not in r.stderr
    assert "sources.admission.columns.FN" in lines[0]


def test_cli_check_ok(tmp_path):
    p = write(tmp_path, BASE)
    r = subprocess.run([sys.executable, "-m", "etl.cli", "check", "--config", str(p)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "config OK" in r.stdout
