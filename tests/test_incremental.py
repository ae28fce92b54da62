"""Incremental linkage: yearly deliveries linked one by one vs a full relink; stable keys;
merges and splits under the apply / hold policies."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import polars as pl
import pytest

from etl import incremental as I
from etl.errors import MedlinkError
from etl.linkage import link, load_spec

REPO = Path(__file__).resolve().parents[1]
SOURCES = ("admission", "training", "registration")
N_DOCTORS = 3000


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from etl import config as cfgmod
    from etl.ingest import ingest
    from etl.synth import generate

    d = tmp_path_factory.mktemp("incremental")
    generate(N_DOCTORS, 11, d / "gen")
    cfg = cfgmod.load(d / "gen" / "delivery.yaml")
    std = {}
    for s, sc in cfg.sources.items():
        std[s] = d / "std" / f"{s}.parquet"
        ingest(sc, std[s], d / "q" / f"{s}.parquet")
    spec = load_spec({}, REPO)
    truth = pl.read_parquet(d / "gen" / "truth.parquet").select(
        pl.col("source").cast(pl.String), pl.col("record_id").cast(pl.String), pl.col("person_id").cast(pl.String))
    return {"dir": d, "std": std, "spec": spec, "truth": truth}


@pytest.fixture(scope="module")
def yearly(data):
    """The history as a backlog (<= 2021) and one delivery per year 2022..2025, linked one by one."""
    d = data["dir"] / "yearly"
    dels = I.split_by_year(data["std"], d / "deliveries", [2021, 2022, 2023, 2024])
    state = d / "state"
    I.init_state(dels[0], data["spec"], state, d / "out_0")
    runs = []
    prev = pl.read_parquet(d / "out_0" / "clusters.parquet")
    for i in range(1, len(dels)):
        out = d / f"out_{i}"
        r = I.link_incremental(dels[i], state, data["spec"], out)
        cl = pl.read_parquet(out / "clusters.parquet")
        runs.append({"summary": r, "before": prev, "after": cl,
                     "report": json.loads((out / "incremental_report.json").read_text())})
        prev = cl
    full = d / "full"
    link(data["std"], data["spec"], full)
    return {"dels": dels, "state": state, "runs": runs, "last": prev,
            "full": pl.read_parquet(full / "clusters.parquet")}


def test_yearly_deliveries_match_a_full_relink(data, yearly):
    f_inc = I.pairwise_f1(yearly["last"], data["truth"])["f1"]
    f_full = I.pairwise_f1(yearly["full"], data["truth"])["f1"]
    print(f"pairwise F1 vs truth: incremental {f_inc:.6f}, full relink {f_full:.6f}")
    assert abs(f_inc - f_full) <= 0.001
    assert f_inc >= 0.99
    # every record is in the incremental clusters, once, in the engine's clusters format
    last = yearly["last"]
    assert last.height == yearly["full"].height
    assert last.select(pl.struct("source", "record_id").is_unique().all()).item()
    assert {"source", "record_id", "person_id", "link_method", "link_probability", "cluster_size"} <= set(last.columns)
    assert last["person_id"].str.contains(r"^K\d{9}$").all()
    # one training record per person (one-to-one) survives the increments
    assert last.filter(pl.col("source") == "training").group_by("person_id").len()["len"].max() == 1
    for run in yearly["runs"]:
        s = run["summary"]
        assert s["new_records"] > 0 and s["joined_existing"] > 0 and s["new_persons"] > 0
        assert set(s) >= {"new_records", "joined_existing", "new_persons", "merges", "splits", "seconds"}
        assert s["persons_total"] == run["after"]["person_id"].n_unique()
        assert s["records_total"] == run["after"].height
        assert "SMITH" not in json.dumps(s).upper()


def test_keys_stable_across_deliveries(yearly):
    """A record's key changes only when a listed merge or split moves it."""
    for run in yearly["runs"]:
        b = run["before"].select("source", "record_id", pl.col("person_id").alias("before"))
        j = b.join(run["after"].select("source", "record_id", "person_id"), on=["source", "record_id"])
        assert j.height == b.height                       # no record lost
        moved = set((j.filter(pl.col("before") != pl.col("person_id")).select(
            pl.concat_str("source", pl.lit(":"), "record_id"))).to_series().to_list())
        listed = set()
        for e in run["report"]["merges"]:
            listed |= set(e["records"])
        for e in run["report"]["splits"]:
            for k, recs in e["records"].items():
                if k != e["key"]:
                    listed |= set(recs)
        assert moved <= listed
        assert len(moved) <= 0.001 * b.height


# ---------------------------------------------------------------------- planted merges and splits

def _row(df: pl.DataFrame, rid: str) -> dict:
    return df.filter(pl.col("record_id") == rid).row(0, named=True)


@pytest.fixture(scope="module")
def planted(data, tmp_path_factory):
    """A state built from the whole history, plus a delivery that plants a merge and a split.

    merge: person X (admission with a UCAS id, training) and person Y (one admission row without
    a UCAS id; it shares X's surname, nothing else) are two people at init. A new admission row
    carries X's UCAS id and Y's identity (name, DOB, postcode ...): it bridges the two people.
    split: a corrected training record (known record_id) of person C (admission, training and
    registration; admission and registration linked directly) now carries another applicant's
    identity (person D, admission only): the training record moves to D, the rest of C stays."""
    d = tmp_path_factory.mktemp("planted")
    recs = {s: pl.read_parquet(p) for s, p in data["std"].items()}
    c0 = pl.read_parquet(_full_clusters(data))
    comp = c0.group_by("person_id").agg(pl.col("source").sort().alias("srcs"))
    kind = lambda srcs: set(comp.filter(pl.col("srcs") == pl.lit(srcs, dtype=pl.List(pl.String)))["person_id"])  # noqa: E731
    adm_only = kind(["admission"])
    three = kind(["admission", "registration", "training"])
    adm = recs["admission"].join(c0.filter(pl.col("source") == "admission").select("record_id", "person_id"),
                                 on="record_id").sort("record_id")
    ok = pl.col("ucas_personal_id").is_not_null() & pl.col("postcode").is_not_null()
    x_row = adm.filter(ok & pl.col("person_id").is_in(list(three))).row(0, named=True)
    y_row, d_row = adm.filter(ok & pl.col("person_id").is_in(list(adm_only))).rows(named=True)[:2]
    # plant Y: no UCAS id, X's surname
    base = d / "base"
    base.mkdir()
    std = dict(data["std"])
    std["admission"] = base / "admission.parquet"
    recs["admission"].with_columns(
        pl.when(pl.col("record_id") == y_row["record_id"]).then(pl.lit(None, pl.String))
        .otherwise(pl.col("ucas_personal_id")).alias("ucas_personal_id"),
        pl.when(pl.col("record_id") == y_row["record_id"]).then(pl.lit(x_row["surname"]))
        .otherwise(pl.col("surname")).alias("surname"),
    ).write_parquet(std["admission"])
    y_row.update(ucas_personal_id=None, surname=x_row["surname"])

    state = d / "state"
    I.init_state(std, data["spec"], state, d / "out_0")
    cl = pl.read_parquet(d / "out_0" / "clusters.parquet")
    key = lambda s, rid: cl.filter((pl.col("source") == s) & (pl.col("record_id") == rid))["person_id"].item()  # noqa: E731
    kx, ky, kd = key("admission", x_row["record_id"]), key("admission", y_row["record_id"]), key("admission", d_row["record_id"])
    assert len({kx, ky, kd}) == 3
    # person C: admission + training + registration, admission and registration linked directly
    pairs = pl.read_parquet(d / "out_0" / "pairs.parquet").filter(
        pl.col("linked") & (pl.col("source_l") == "admission") & (pl.col("source_r") == "registration"))
    sizes = cl.group_by("person_id").agg(pl.col("source").sort().alias("srcs"), pl.len().alias("n"))
    simple = set(sizes.filter((pl.col("n") == 3) & (pl.col("srcs") == pl.lit(["admission", "registration", "training"],
                                                                              dtype=pl.List(pl.String))))["person_id"])
    pj = pairs.join(cl.select(pl.col("record_id").alias("record_id_l"), pl.col("person_id")),
                    on="record_id_l").filter(pl.col("person_id").is_in(list(simple - {kx, ky, kd}))).sort("person_id")
    kc = pj["person_id"][0]
    t_c = cl.filter((pl.col("person_id") == kc) & (pl.col("source") == "training"))["record_id"].item()

    bridge = dict(y_row)
    bridge = {k: v for k, v in bridge.items() if k in recs["admission"].columns}
    bridge.update(record_id="A-BRIDGE-1", ucas_personal_id=x_row["ucas_personal_id"])
    tr = recs["training"]
    corrected = dict(tr.filter(pl.col("record_id") == t_c).row(0, named=True))
    corrected.update(ucas_personal_id=d_row["ucas_personal_id"], gmc_number=None, forenames=d_row["forenames"],
                     surname=d_row["surname"], preferred_name=None, date_of_birth=d_row["date_of_birth"],
                     sex=d_row["sex"], postcode=d_row["postcode"], email=None)
    (d / "delivery").mkdir()
    delivery = {"admission": d / "delivery" / "admission.parquet", "training": d / "delivery" / "training.parquet"}
    pl.DataFrame([bridge], schema=recs["admission"].schema).write_parquet(delivery["admission"])
    pl.DataFrame([corrected], schema=tr.schema).write_parquet(delivery["training"])
    return {"dir": d, "std": std, "state": state, "before": cl, "x": kx, "y": ky, "c": kc, "d": kd, "t_c": t_c,
            "delivery": delivery}


def _full_clusters(data) -> Path:
    out = data["dir"] / "full_for_planting"
    if not (out / "clusters.parquet").exists():
        link(data["std"], data["spec"], out)
    return out / "clusters.parquet"


def _run(planted, data, policy):
    d = planted["dir"]
    st = d / f"state_{policy}"
    shutil.copytree(planted["state"], st)
    out = d / f"out_{policy}"
    s = I.link_incremental(planted["delivery"], st, data["spec"], out, policy=policy)
    rep = json.loads((out / "incremental_report.json").read_text())
    after = pl.read_parquet(out / "clusters.parquet")
    j = planted["before"].select("source", "record_id", pl.col("person_id").alias("before")).join(
        after.select("source", "record_id", "person_id"), on=["source", "record_id"])
    return s, rep, after, j, out


def test_planted_merge_and_split_applied(planted, data):
    s, rep, after, j, out = _run(planted, data, "apply")
    x, y, c, dd = planted["x"], planted["y"], planted["c"], planted["d"]
    assert s["new_records"] == 1 and s["changed_records"] == 1
    assert s["merges"] == 1 and s["splits"] == 1
    m = rep["merges"][0]
    assert (m["key"], m["into"]) == (y, x) and m["status"] == "applied"
    assert m["pairs"] and all("match_weight" in p for p in m["pairs"])
    assert any(p["record_id_l"] == "T-BRIDGE-1" or p["record_id_r"] == "A-BRIDGE-1" for p in m["pairs"])
    sp = rep["splits"][0]
    assert sp["key"] == c and set(sp["into"]) == {c, dd} and sp["status"] == "applied"
    assert f"training:{planted['t_c']}" in sp["records"][dd] and sp["pairs"]
    # the bridge joined the merged person; the corrected record moved to D
    key_of = dict(zip((after["source"] + ":" + after["record_id"]).to_list(), after["person_id"].to_list()))
    assert key_of["admission:A-BRIDGE-1"] == x
    assert key_of[f"training:{planted['t_c']}"] == dd
    # every other record keeps its key
    changed = j.filter(pl.col("before") != pl.col("person_id"))
    expected = set(m["records"]) | {f"training:{planted['t_c']}"}
    assert all(key_of[r] == x for r in m["records"])
    assert set((changed["source"] + ":" + changed["record_id"]).to_list()) == expected
    md = (out / "incremental_report.md").read_text()
    assert "| merge |" in md and "| split |" in md


def test_planted_merge_and_split_held(planted, data):
    s, rep, after, j, out = _run(planted, data, "hold")
    assert s["merges"] == 1 and s["splits"] == 1 and s["held"] == 2
    assert all(e["status"] == "held" for e in rep["merges"] + rep["splits"])
    # hold: no existing record changes key; the proposals are in the history for review
    assert j.filter(pl.col("before") != pl.col("person_id")).height == 0
    hist = I.State(planted["dir"] / "state_hold").history()
    assert hist.filter(pl.col("status") == "held").height >= 2
    assert after.filter(pl.col("record_id") == "A-BRIDGE-1")["person_id"].item() in {planted["x"], planted["y"]}


def test_resent_rows_are_no_ops_and_full_relink_compares(planted, data):
    d = planted["dir"]
    st = d / "state_resend"
    shutil.copytree(planted["state"], st)
    s = I.link_incremental(planted["std"], st, data["spec"], d / "out_resend")
    assert s["new_records"] == 0 and s["changed_records"] == 0 and s["unchanged_records"] > 0
    # a resent delivery still has the outputs every increment has (the later stages read them)
    cw = pl.read_parquet(I.State(st).path("crosswalk.parquet"))
    assert pl.read_parquet(d / "out_resend" / "clusters.parquet").equals(cw)
    assert (d / "out_resend" / "pairs.parquet").exists() and (d / "out_resend" / "model.json").exists()
    assert s["records_total"] == cw.height and s["persons_total"] == cw["person_id"].n_unique()
    r = I.relink_full(st, data["spec"], d / "out_full")
    assert r["pairwise_f1_vs_incremental"] == 1.0 and r["records_person_differs"] == 0
    with pytest.raises(Exception):
        I.link_incremental(planted["delivery"], st, data["spec"], d / "x", policy="maybe")


# ---------------------------------------------------------------------- state bookkeeping

def _recount_tf(state: Path, spec) -> dict:
    st = I.State(state)
    recs = [st.scan_records(s) for s in spec.sources if st.record_parts(s)]
    return I._tf_tables(I._name_tf_values(recs, I._name_tf_comp(spec)))


def _same_tables(a: dict, b: dict) -> bool:
    return all(a[w].sort(k).equals(b[w].sort(k)) for w, k in I._TF_KEYS.items())


def test_stored_term_frequencies_and_counts_follow_the_records(data, yearly, planted):
    """The name TF tables and record counts an increment updates from the delta equal a
    recount over the state's records (new records added, changed records replaced)."""
    spec = data["spec"]
    assert _same_tables(I.State(yearly["state"]).tf_tables(), _recount_tf(yearly["state"], spec))
    st = I.State(planted["dir"] / "state_apply")          # a changed (corrected) record
    if not st.exists():
        _run(planted, data, "apply")
    assert _same_tables(st.tf_tables(), _recount_tf(st.dir, spec))
    meta = st.meta()
    assert meta["persons"] == pl.read_parquet(st.path("crosswalk.parquet"))["person_id"].n_unique()
    assert meta["counts"] == {s: st.scan_records(s, columns=["record_id"]).height for s in spec.sources}


def test_state_without_tf_tables_and_leftover_temporaries(data, planted):
    """A state written before TF tables were stored is counted once (same result); an
    earlier increment's leftover temporary parts are removed, never committed."""
    d = planted["dir"]
    ref_out = d / "out_tf_ref"
    st_ref = d / "state_tf_ref"
    shutil.copytree(planted["state"], st_ref)
    I.link_incremental(planted["delivery"], st_ref, data["spec"], ref_out)
    st_old = d / "state_tf_missing"
    shutil.copytree(planted["state"], st_old)
    shutil.rmtree(st_old / "tf")
    (st_old / "keys" / ".part-000009.parquet.tmp").write_bytes(b"partial")
    out = d / "out_tf_missing"
    I.link_incremental(planted["delivery"], st_old, data["spec"], out)
    assert not list(st_old.rglob(".*.tmp"))
    assert pl.read_parquet(out / "clusters.parquet").equals(pl.read_parquet(ref_out / "clusters.parquet"))
    assert _same_tables(I.State(st_old).tf_tables(), I.State(st_ref).tf_tables())


def test_link_stage_first_run_builds_state_then_increments(data, tmp_path):
    """The pipeline drop-in: the first run builds a candidate state, committed as
    <restricted>/linkage_state (the pipeline commits after publishing); the next links onto
    it (merge_policy from the delivery config) without touching it until its own
    commit; the history it returns feeds assemble."""
    import dataclasses

    from etl import config as cfgmod
    from etl.assemble import assemble

    cfg = cfgmod.load(data["dir"] / "gen" / "delivery.yaml")
    cfg = dataclasses.replace(cfg, output_dir=tmp_path / "out", linkage={}, merge_policy="hold")
    dels = I.split_by_year(data["std"], tmp_path / "deliveries", [2023])
    runs = []
    live = cfg.restricted_dir / "linkage_state"
    for i, dl in enumerate(dels):
        before = I.state_id(live)
        runs.append(I.link_stage(cfg, f"run-{i}", [{"source": s, "path": str(p)} for s, p in dl.items()]))
        assert I.state_id(live) == before == runs[-1]["state_base"]      # linked into a candidate only
        I.commit_state(cfg.restricted_dir, runs[-1], f"run-{i}")
        assert I.state_id(live) is not None and I.state_id(live) != before
        assert not Path(runs[-1]["state_dir"]).exists()
    assert (live / "meta.json").exists()
    with pytest.raises(MedlinkError):          # a run linked onto a replaced state is refused
        I.check_state_base(cfg.restricted_dir, runs[0])
    s0, s1 = runs
    assert "persons" in s0 and s1["policy"] == "hold"
    n1 = sum(pl.read_parquet(p).height for p in dels[1].values())
    assert s1["new_records"] == n1 > 0
    total = sum(pl.read_parquet(p).height for p in data["std"].values())
    cl = pl.read_parquet(s1["clusters_path"])
    assert cl.height == total and cl["person_id"].str.contains(r"^K\d{9}$").all()
    # keys of the first run survive the second (hold: no existing record moves)
    c0 = pl.read_parquet(s0["clusters_path"])
    j = c0.join(cl, on=["source", "record_id"], suffix="_1")
    assert j.height == c0.height and (j["person_id"] == j["person_id_1"]).all()
    assert {s: pl.read_parquet(p).height for s, p in s1["records_paths"].items()} == {
        s: pl.read_parquet(p).height for s, p in data["std"].items()}
    a = assemble({s: Path(p) for s, p in s1["records_paths"].items()}, Path(s1["clusters_path"]),
                 Path(s1["pairs_path"]), tmp_path / "assembled")
    doctors = pl.read_parquet(tmp_path / "assembled" / "doctors.parquet")
    assert doctors.height == cl["person_id"].n_unique(), a


def test_adopted_full_relink_keeps_state_consistent(data, yearly, tmp_path):
    """relink_full(adopt=True) rewrites crosswalk, links and model; meta's counts and the TF
    tables still describe the records, and the next increment runs on it."""
    st_dir = tmp_path / "state"
    shutil.copytree(yearly["state"], st_dir)
    r = I.relink_full(st_dir, data["spec"], tmp_path / "full", adopt=True)
    assert r["adopted"]
    st = I.State(st_dir)
    cw = pl.read_parquet(st.path("crosswalk.parquet"))
    assert st.meta()["persons"] == cw["person_id"].n_unique()
    assert _same_tables(st.tf_tables(), _recount_tf(st_dir, data["spec"]))
    s = I.link_incremental(yearly["dels"][-1], st_dir, data["spec"], tmp_path / "resend")
    assert s["new_records"] == 0 and s["unchanged_records"] > 0
