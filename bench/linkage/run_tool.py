"""Run ONE linkage tool on a prepared bench dataset and write OUT/clusters.parquet
(source, record_id, cluster_id). Called by bench.py in a fresh subprocess so that
wall time (imports included) and peak RSS are per tool.

    python bench/linkage/run_tool.py {medlink,splink,ecm} {febrl4,people,synth3} DATA_DIR OUT_DIR

DATA_DIR holds one standardised Parquet per source (<source>.parquet); the tools
get the same files. Splink and ECM are configured with the same fields,
comparisons (as close as their libraries allow) and blocking rules as medlink.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

SOURCES = {"febrl4": ["a", "b"], "people": ["a", "b"], "synth3": ["admission", "training", "registration"]}
MODELS = {"febrl4": "febrl4.yaml", "people": "people2.yaml", "synth3": "default.yaml"}


# --------------------------------------------------------------------------- medlink
def run_medlink(dataset: str, data: Path, out: Path) -> dict:
    from etl.linkage import link, load_spec

    spec = load_spec({"model": str(REPO / "schemas" / "linkage" / MODELS[dataset])}, REPO)
    inputs = {s: data / f"{s}.parquet" for s in SOURCES[dataset]}
    summary = link(inputs, spec, out / "medlink_out")
    import polars as pl

    pl.read_parquet(out / "medlink_out" / "clusters.parquet").select(
        "source", "record_id", pl.col("person_id").alias("cluster_id")).write_parquet(out / "clusters.parquet")
    return {"pairs_scored": summary["pairs_scored"]}


# --------------------------------------------------------------------------- splink
def _splink_frames(dataset: str, data: Path):
    import polars as pl

    frames = {}
    for s in SOURCES[dataset]:
        f = pl.read_parquet(data / f"{s}.parquet")
        if "forenames" in f.columns:
            f = f.with_columns(pl.col("forenames").str.split(" ").list.first().alias("first_name"))
            f = f.with_columns(pl.concat_str(["first_name", "surname"], separator=" ").alias("full_name"),
                               pl.concat_str([pl.col("forenames"), pl.col("surname")], separator=" ",
                                             ignore_nulls=True).str.split(" ").list.sort().list.join(" ")
                               .alias("name_tokens"))
        if dataset == "people":
            import jellyfish

            fn = f["first_name"].unique().drop_nulls()
            meta = pl.DataFrame({"first_name": fn, "fn_meta": [jellyfish.metaphone(x) for x in fn.to_list()]})
            f = f.join(meta, on="first_name", how="left").with_columns(
                pl.col("other_names").str.split(" ").list.first().alias("middle"))
        if "date_of_birth" in f.columns and f.schema["date_of_birth"] == pl.Date:
            f = f.with_columns(pl.col("date_of_birth").dt.year().alias("yob"),
                               pl.col("date_of_birth").dt.strftime("%m-%d").alias("month_day"))
        if "dob" in f.columns:
            f = f.with_columns(pl.col("dob").str.slice(0, 4).cast(pl.Int32, strict=False).alias("yob"))
        f = f.with_columns(pl.col("surname").str.slice(0, 1).alias("sn_init"),
                           pl.col("forenames").str.slice(0, 1).alias("fn_init"))
        frames[s] = f
    # Splink needs the same columns in every table: the model's, typed alike
    cols = {"febrl4": ["record_id", "first_name", "surname", "full_name", "name_tokens", "dob", "yob", "soc_sec_id",
                       "address_1", "street_number", "suburb", "postcode_au", "state", "sn_init", "fn_init"],
            "people": ["record_id", "first_name", "surname", "full_name", "name_tokens", "other_names",
                       "date_of_birth", "yob", "month_day", "sex", "postcode", "sn_init", "fn_init",
                       "fn_meta", "middle"],
            "synth3": ["record_id", "first_name", "surname", "full_name", "name_tokens", "date_of_birth", "yob",
                       "month_day", "sex", "postcode", "medical_school", "graduation_year", "gmc_number",
                       "ucas_personal_id", "sn_init", "fn_init"]}[dataset]
    types = {"date_of_birth": pl.Date, "graduation_year": pl.Int64, "yob": pl.Int32}
    out = {}
    for s, f in frames.items():
        out[s] = f.select([pl.col(c).cast(types.get(c, pl.String)) if c in f.columns
                           else pl.lit(None, types.get(c, pl.String)).alias(c) for c in cols]).to_arrow()
    return out


def run_splink(dataset: str, data: Path, out: Path) -> dict:
    import splink.comparison_library as cl
    from splink import DuckDBAPI, Linker, SettingsCreator, block_on

    frames = _splink_frames(dataset, data)
    db = DuckDBAPI()
    dfs = [db.register(frames[s], dataset_display_name=s) for s in SOURCES[dataset]]
    name = cl.ForenameSurnameComparison("first_name", "surname", forename_surname_concat_col_name="full_name")
    if dataset == "febrl4":
        comparisons = [
            name,
            cl.DateOfBirthComparison("dob", input_is_string=True, datetime_format="%Y%m%d"),
            cl.DamerauLevenshteinAtThresholds("soc_sec_id", [1, 2]),
            cl.JaroWinklerAtThresholds("address_1", [0.9, 0.8]).configure(term_frequency_adjustments=True),
            cl.DamerauLevenshteinAtThresholds("street_number", [1]),
            cl.JaroWinklerAtThresholds("suburb", [0.9]).configure(term_frequency_adjustments=True),
            cl.DamerauLevenshteinAtThresholds("postcode_au", [1]).configure(term_frequency_adjustments=True),
            cl.ExactMatch("state"),
        ]
        rules = [block_on("first_name", "surname"), block_on("dob"), block_on("soc_sec_id"),
                 block_on("postcode_au", "sn_init"), block_on("suburb", "fn_init"), block_on("yob", "surname")]
        det_rules = [block_on("soc_sec_id", "dob")]
        em_rules = [block_on("dob"), block_on("first_name", "surname")]
        link_type, dup_free = "link_only", ["a", "b"]
    else:
        comparisons = [
            name,
            cl.DateOfBirthComparison("date_of_birth", input_is_string=False),
            cl.ExactMatch("sex"),
            cl.PostcodeComparison("postcode"),
        ]
        if dataset == "people":
            comparisons.append(cl.JaroWinklerAtThresholds("other_names", [0.9])
                               .configure(term_frequency_adjustments=True))
        rules = [block_on("first_name", "surname", "yob"), block_on("first_name", "surname", "month_day"),
                 block_on("date_of_birth", "first_name"),
                 block_on("date_of_birth", "surname"),
                 block_on("yob", "name_tokens"), block_on("date_of_birth", "postcode")]
        det_rules = [block_on("first_name", "surname", "date_of_birth")]
        em_rules = [block_on("date_of_birth"), block_on("first_name", "surname")]
        link_type, dup_free = "link_only", ["a", "b"]
        if dataset == "people":       # people2.yaml's three rules for married women
            rules += [block_on("postcode", "first_name"), block_on("date_of_birth", "middle"),
                      block_on("date_of_birth", "fn_meta")]
        if dataset == "synth3":
            comparisons += [
                cl.ExactMatch("medical_school"),
                cl.AbsoluteDifferenceAtThresholds("graduation_year", [1])
                if hasattr(cl, "AbsoluteDifferenceAtThresholds") else cl.ExactMatch("graduation_year"),
                cl.DamerauLevenshteinAtThresholds("gmc_number", [1]),
                cl.DamerauLevenshteinAtThresholds("ucas_personal_id", [1]),
            ]
            rules = [block_on("gmc_number"), block_on("ucas_personal_id")] + rules + [
                block_on("date_of_birth", "medical_school", "graduation_year")]
            det_rules = [block_on("gmc_number"), block_on("ucas_personal_id")]
            link_type, dup_free = "link_and_dedupe", ["training"]
    settings = SettingsCreator(link_type=link_type, unique_id_column_name="record_id",
                               comparisons=comparisons, blocking_rules_to_generate_predictions=rules,
                               retain_intermediate_calculation_columns=False, retain_matching_columns=False)
    linker = Linker(dfs, settings)
    linker.training.estimate_probability_two_random_records_match(det_rules, recall=0.8)
    linker.training.estimate_u_using_random_sampling(max_pairs=5e6, seed=1)
    for r in em_rules:
        linker.training.estimate_parameters_using_expectation_maximisation(r)
    pred = linker.inference.predict(threshold_match_probability=0.01)
    clusters = linker.clustering.cluster_using_single_best_links(pred, duplicate_free_datasets=dup_free,
                                                                 threshold_match_probability=0.5)
    c = clusters.as_pandas_dataframe()
    import polars as pl

    pl.from_pandas(c[["source_dataset", "record_id", "cluster_id"]]).select(
        pl.col("source_dataset").alias("source"), pl.col("record_id").cast(pl.String),
        pl.col("cluster_id").cast(pl.String)).write_parquet(out / "clusters.parquet")
    n_pred = db._con.execute(f"select count(*) from {pred.physical_name}").fetchall()[0][0]
    return {"pairs_scored": int(n_pred)}


# --------------------------------------------------------------------------- recordlinkage ECM
def run_ecm(dataset: str, data: Path, out: Path) -> dict:
    import numpy as np
    import pandas as pd
    import polars as pl
    import recordlinkage as rl

    srcs = SOURCES[dataset]
    frames = {}
    for s in srcs:
        f = pl.read_parquet(data / f"{s}.parquet")
        f = f.with_columns(pl.col("forenames").str.split(" ").list.first().alias("first_name"))
        if "date_of_birth" in f.columns:
            f = f.with_columns(pl.col("date_of_birth").cast(pl.String).alias("dob_s"))
        else:
            f = f.with_columns(pl.col("dob").alias("dob_s"))
        f = f.with_columns(pl.col("dob_s").str.slice(0, 4).alias("yob"), pl.col("dob_s").str.slice(-5).alias("md"))
        frames[s] = f.to_pandas().set_index("record_id")
    tasks = [("a", "b")] if len(srcs) == 2 else [("admission", "training"), ("training", "registration"),
                                                  ("admission", "registration")]
    edges = []
    for l, r in tasks:
        A, B = frames[l], frames[r]
        idx = rl.Index()
        if dataset == "febrl4":   # the same rules as the other tools, as far as Index allows
            idx.block(["first_name", "surname"])
            idx.block(["dob_s"])
            idx.block(["soc_sec_id"])
        else:
            idx.block(["first_name", "surname", "yob"])
            idx.block(["first_name", "surname", "md"])
            idx.block(["dob_s", "first_name"])
            idx.block(["dob_s", "surname"])
        if "gmc_number" in A.columns and "gmc_number" in B.columns:
            idx.block("gmc_number")
        if "ucas_personal_id" in A.columns and "ucas_personal_id" in B.columns:
            idx.block("ucas_personal_id")
        pairs = idx.index(A, B)
        c = rl.Compare(n_jobs=1)
        c.string("first_name", "first_name", method="jarowinkler", threshold=0.88, label="fn")
        c.string("surname", "surname", method="jarowinkler", threshold=0.88, label="sn")
        c.exact("dob_s", "dob_s", label="dob")
        for col in ("sex", "postcode", "soc_sec_id", "address_1", "suburb", "postcode_au", "state",
                    "medical_school", "gmc_number", "ucas_personal_id"):
            if col in A.columns and col in B.columns:
                c.exact(col, col, label=col)
        X = c.compute(pairs, A, B)
        ecm = rl.ECMClassifier(binarize=None)
        links = ecm.fit_predict(X)
        edges.append(pd.DataFrame({"l": [f"{l}|{x}" for x in links.get_level_values(0)],
                                   "r": [f"{r}|{x}" for x in links.get_level_values(1)]}))
    # clusters: connected components over the links (ECM has no clustering of its own)
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    nodes = [f"{s}|{x}" for s in srcs for x in frames[s].index]
    pos = {n: i for i, n in enumerate(nodes)}
    e = pd.concat(edges)
    li = np.array([pos[x] for x in e["l"]], dtype=np.int64)
    ri = np.array([pos[x] for x in e["r"]], dtype=np.int64)
    g = coo_matrix((np.ones(li.size), (li, ri)), shape=(len(nodes), len(nodes)))
    _, lab = connected_components(g, directed=False)
    pl.DataFrame({"source": [n.split("|", 1)[0] for n in nodes], "record_id": [n.split("|", 1)[1] for n in nodes],
                  "cluster_id": lab.astype(str)}).write_parquet(out / "clusters.parquet")
    return {"pairs_scored": int(sum(len(x) for x in edges))}


if __name__ == "__main__":
    tool, dataset, data, out = sys.argv[1], sys.argv[2], Path(sys.argv[3]), Path(sys.argv[4])
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    info = {"medlink": run_medlink, "splink": run_splink, "ecm": run_ecm}[tool](dataset, data, out)
    info["inner_seconds"] = round(time.time() - t0, 2)
    (out / "info.json").write_text(json.dumps(info))
