"""Incremental linkage: new deliveries link onto the existing people; person keys stay stable.

The restricted zone keeps a persistent linkage state between runs
(`<restricted>/linkage_state/`, see docs/incremental.md):

    records/<source>/part-<n>.parquet  standardised records already linked (all columns); append-only,
                               the latest part holding a record_id wins (a corrected row)
    keys/part-<n>.parquet      per record, its 64-bit blocking key for every blocking rule
                               (append-only parts; the latest row of a record wins)
    crosswalk.parquet          source, record_id -> person_id (the stable internal key), link_method,
                               link_probability, cluster_size: the clusters.parquet format
    pairs.parquet              accepted links (pairs.parquet columns) behind the current crosswalk
    model.json                 the trained model, reused for every increment
    tf/<forename|surname|joint>.parquet  value counts behind the name comparison's term
                               frequencies over every record (updated by each delta)
    history/part-<n>.parquet   one row per record event (init, new_person, join, rekey, merge, split),
                               status applied / held; append-only, one part per run
    meta.json                  record and person counts, key counter, per-task lambda basis,
                               polars version

    init_state(inputs, spec, state_dir, out_dir)            full link -> state
    link_incremental(new_inputs, state_dir, spec, out_dir)  delta -> clusters.parquet (stable keys)
    relink_full(state_dir, spec, out_dir)                   full relink of the state, compared

An increment links the new and changed records together with the existing
records they block with (every blocking rule, on stored keys) and every other
record of the people those belong to, with the stored model; the resulting
clusters are mapped onto the old keys by maximum overlap. Merges and splits
are applied or held (`policy`) and listed with the pairs behind them.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import math
import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from etl.config import MERGE_POLICIES
from etl.errors import ConfigError, MedlinkError

STATE_VERSION = 1
KEY_PREFIX = "K"
KEY_WIDTH = 9
POLICIES = MERGE_POLICIES                # apply | hold (etl.config validates the config's value)
_PQ = dict(compression="lz4", statistics=False)   # state files: read back whole by every increment


# ----------------------------------------------------------------------------- helpers

def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _write(df: pl.DataFrame, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    df.write_parquet(tmp, **_PQ)
    tmp.replace(path)


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


def _fmt_key(i: int) -> str:
    return f"{KEY_PREFIX}{i:0{KEY_WIDTH}d}"


def pairwise_f1(a: pl.DataFrame, b: pl.DataFrame, on=("source", "record_id"),
                a_col: str = "person_id", b_col: str = "person_id") -> dict:
    """Pairwise precision / recall / F1 of clustering `a` against clustering `b`
    (all record pairs, within and across sources), from the contingency table.
    Records in `a` missing from `b` are their own cluster in `b`."""
    on = list(on)
    j = a.select(*on, pl.col(a_col).alias("_a")).join(
        b.select(*on, pl.col(b_col).alias("_b")), on=on, how="left")
    j = j.with_columns(pl.col("_b").fill_null(pl.lit("__single__") + pl.col("source") + "|" + pl.col("record_id")))

    def pairs(col_or_cols) -> float:
        c = j.group_by(col_or_cols).len()["len"].to_numpy().astype(np.float64)
        return float((c * (c - 1) / 2).sum())

    tp, pred, true = pairs(["_a", "_b"]), pairs("_a"), pairs("_b")
    p = tp / pred if pred else 1.0
    r = tp / true if true else 1.0
    f = 2 * p * r / (p + r) if p + r else 0.0
    return {"precision": p, "recall": r, "f1": f, "tp": int(tp), "predicted": int(pred), "true": int(true)}


def _evidence_cols(spec) -> list[str]:
    return sorted(c for c in spec.needed_columns() if c not in ("source", "record_id"))


def _rule_cols(spec) -> list[str]:
    return [f"k{i}" for i in range(len(spec.blocking))]


def _block_keys(inputs: dict[str, Path], spec) -> pl.DataFrame:
    """source, record_id, k<i> (uint64 blocking key of rule i; 0 = does not block)."""
    from etl.linkage.blocking import all_record_keys
    from etl.linkage.records import Records

    present = {s: p for s, p in inputs.items()}
    if not present:
        return pl.DataFrame(schema={"source": pl.String, "record_id": pl.String,
                                    **{c: pl.UInt64 for c in _rule_cols(spec)}})
    rec = Records.load(present, list(spec.sources), spec.needed_columns(), set())
    cols = {"source": pl.Series(np.array(rec.sources, dtype=object)[rec.src], dtype=pl.String),
            "record_id": rec.df["record_id"]}
    for i, keys in enumerate(all_record_keys(rec, spec.blocking)):
        cols[f"k{i}"] = pl.Series(keys, dtype=pl.UInt64)
    return pl.DataFrame(cols)


def _engine_cols(spec) -> list[str]:
    """The columns the engine reads from a standardised input (Records.load: the spec's
    needed columns and the subgroup columns, as engine._prepare reads them), record_id first."""
    return ["record_id", *sorted((spec.needed_columns() | spec.subgroup_columns()) - {"record_id", "source"})]


def _name_tf_comp(spec):
    return next((c for c in spec.comparisons if c.kind == "name" and any(lv.tf for lv in c.levels)), None)


def _name_tf_values(frames, comp) -> pl.DataFrame:
    """fn1, sn (the name comparison's first forename token and spaceless surname) per record."""
    from etl.linkage.records import Records

    f = comp.fields
    out = []
    for df in frames:
        if df is None or df.height == 0:
            continue
        cols = df.columns
        out.append(df.select(
            (Records.first_token(f["forename"]) if f["forename"] in cols else pl.lit(None, pl.String)).alias("fn1"),
            (Records.nospace(f["surname"]) if f["surname"] in cols else pl.lit(None, pl.String)).alias("sn"),
        ).with_columns(pl.col("fn1").replace("", None), pl.col("sn").replace("", None)))
    if not out:
        return pl.DataFrame(schema={"fn1": pl.String, "sn": pl.String})
    return pl.concat(out)


_TF_KEYS = {"forename": ["fn1"], "surname": ["sn"], "joint": ["fn1", "sn"]}


def _tf_tables(x: pl.DataFrame) -> dict[str, pl.DataFrame]:
    """Value counts (column `len`, Int64) per TF table of an fn1/sn frame."""
    return {w: x.drop_nulls(k).group_by(k).agg(pl.len().cast(pl.Int64).alias("len")) for w, k in _TF_KEYS.items()}


def _tf_update(tables: dict[str, pl.DataFrame], add: pl.DataFrame, remove: pl.DataFrame) -> dict[str, pl.DataFrame]:
    """The TF tables after adding the records `add` and removing `remove` (fn1/sn frames)."""
    plus, minus = _tf_tables(add), _tf_tables(remove)
    out = {}
    for w, k in _TF_KEYS.items():
        parts = [tables[w], plus[w]]
        if minus[w].height:
            parts.append(minus[w].with_columns(-pl.col("len")))
        if plus[w].height == 0 and minus[w].height == 0:
            out[w] = tables[w]
            continue
        out[w] = (pl.concat(parts, how="vertical_relaxed").group_by(k).agg(pl.col("len").sum())
                  .filter(pl.col("len") > 0))
    return out


def _tf_after(st, spec, delta: dict[str, pl.DataFrame], replaced: list[pl.DataFrame], ev_cols: list[str]):
    """(TF tables after the delivery, names of the tables that changed): the stored tables
    plus the delta's names minus the old versions of changed records. A state from before
    TF tables were stored is counted once from its records."""
    comp = _name_tf_comp(spec)
    if comp is None:
        return None, set()
    tables = st.tf_tables()
    changed: set[str] = set()
    if tables is None:
        tables = _tf_tables(_name_tf_values(
            [st.scan_records(s, columns=ev_cols) for s in spec.sources if st.record_parts(s)], comp))
        changed = set(_TF_KEYS)
    new = _tf_update(tables, _name_tf_values(delta.values(), comp), _name_tf_values(replaced, comp))
    return new, changed | {w for w in _TF_KEYS if new[w] is not tables[w]}


def _tf_counts(tables: dict[str, pl.DataFrame] | None, spec) -> dict | None:
    """The engine's `tf_counts=` from the TF tables."""
    comp = _name_tf_comp(spec)
    if comp is None or tables is None:
        return None
    return {comp.name: {w: (t, int(t["len"].sum())) for w, t in tables.items()}}


_L = {"source": "source_l", "record_id": "record_id_l"}
_R = {"source": "source_r", "record_id": "record_id_r"}


def _pairs_near(pairs: pl.DataFrame, ids: pl.DataFrame) -> pl.DataFrame:
    """The rows of `pairs` (with their row number `_i`) that may touch `ids` (source,
    record_id): record_id is_in on either side, one hashed column; a superset, made exact
    by the (source, record_id) joins of `_pairs_within` / `_pairs_not_touching`."""
    rid = ids["record_id"].implode()
    return pairs.with_row_index("_i").filter(pl.col("record_id_l").is_in(rid) | pl.col("record_id_r").is_in(rid))


def _pairs_within(near: pl.DataFrame, ids: pl.DataFrame) -> pl.DataFrame:
    """The pairs of `near` with both sides in `ids`."""
    return (near.join(ids.rename(_L), on=list(_L.values()), how="semi")
            .join(ids.rename(_R), on=list(_R.values()), how="semi").drop("_i"))


def _pairs_not_touching(pairs: pl.DataFrame, near: pl.DataFrame, ids: pl.DataFrame) -> pl.DataFrame:
    """`pairs` without those with a side in `ids` (`near` = `_pairs_near(pairs, ids)`)."""
    if near.height == 0:
        return pairs
    hit = pl.concat([near.join(ids.rename(_L), on=list(_L.values()), how="semi")["_i"],
                     near.join(ids.rename(_R), on=list(_R.values()), how="semi")["_i"]]).to_numpy()
    keep = np.ones(pairs.height, bool)
    keep[hit] = False
    return pairs.filter(pl.Series(keep))


def _isin(x: np.ndarray, vals: np.ndarray) -> np.ndarray:
    """np.isin for uint64 keys, hashed (polars): ~10x faster than a sorted search here."""
    if vals.size == 0 or x.size == 0:
        return np.zeros(x.size, bool)
    return pl.Series(x).is_in(pl.Series(vals).implode()).to_numpy()


def _neighbours(keys: pl.DataFrame, exclude: np.ndarray, dkeys: pl.DataFrame, spec, partners: dict,
                min_shared: int, small_block: int = 4) -> np.ndarray:
    """Bool per row of `keys` (the state's stored blocking keys; rows where `exclude` is set
    are left out): the old records the delta makes relevant. An old record of source t
    *hits* rule i when its key k<i> is the key of a delta record of a source t is compared
    with (a task; training|training is not one, for example). It is relevant when it hits
    at least `min_shared` rules, or an identifier rule (GMC / UCAS number), or a rule whose
    key is held by at most `small_block` of the old records hitting any rule (a rare name).
    One shared key alone is mostly a common name or a shared postcode: such a pair almost
    never scores above the pairs floor, and those blocks grow with the history, so they
    would make the subset grow too. Counted per old record (rules shared with any delta
    record), so no pair is materialised; numpy on the key columns, no join."""
    n = keys.height
    cols = _rule_cols(spec)
    srcs = list(spec.sources)
    code = {s: i for i, s in enumerate(srcs)}
    ks = keys["source"].cast(pl.String).replace_strict(code, default=-1, return_dtype=pl.Int8).to_numpy()
    ds = dkeys["source"].cast(pl.String).replace_strict(code, default=-1, return_dtype=pl.Int8).to_numpy()
    ok = ~exclude
    ident_fields = {i.field for i in spec.identifiers}
    strong = [bool(r.keys) and all(set(k.fields) <= ident_fields for k in r.keys) for r in spec.blocking]
    hits, dvals = [], []
    dsrc = [np.isin(ds, [code[s] for s in partners[t]]) for t in srcs]
    for c in cols:
        K = keys[c].to_numpy()
        D = dkeys[c].to_numpy()
        nz = D != 0
        h = np.zeros(n, bool)
        per_t = {ti: D[m & nz] for ti, m in enumerate(dsrc) if (m & nz).any()}   # duplicates are harmless
        dv = D[nz & np.logical_or.reduce([dsrc[ti] for ti in per_t])] if per_t else D[:0]
        # one hashed pass over all old records for any delta key, then per source on those few
        cand = np.flatnonzero(ok & _isin(K, dv))
        cs = ks[cand]
        for ti, dk in per_t.items():
            sel = cand[cs == ti]
            h[sel] = _isin(K[sel], dk)
        hits.append(h)
        dvals.append(dv)
    nb = np.logical_or.reduce(hits) if hits else np.zeros(n, bool)
    if min_shared <= 1:
        return nb
    inb = np.flatnonzero(nb)
    nhit = np.sum([h[inb] for h in hits], axis=0, dtype=np.int16)
    sure = np.zeros(inb.size, bool)
    for c, h, dv, st in zip(cols, hits, dvals, strong):
        hn = h[inb]
        if not hn.any():
            continue
        if st:
            sure |= hn
            continue
        # block sizes among the hit records, only for the delta's key values
        kv = keys[c].to_numpy()[inb]
        kd = kv[_isin(kv, dv)]
        vc = pl.Series("k", kd).value_counts(name="n")
        small = vc.filter(pl.col("n") <= small_block)["k"].to_numpy()
        sure |= hn & _isin(kv, small)
    out = np.zeros(n, bool)
    out[inb[(nhit >= min_shared) | sure]] = True
    return out


# ----------------------------------------------------------------------------- state I/O

class State:
    def __init__(self, d: Path):
        self.dir = Path(d)

    def path(self, name: str) -> Path:
        return self.dir / name

    def exists(self) -> bool:
        return self.path("meta.json").exists() and self.path("crosswalk.parquet").exists()

    def meta(self) -> dict:
        return json.loads(self.path("meta.json").read_text())

    def record_parts(self, source: str) -> list[Path]:
        return sorted(self.path(f"records/{source}").glob("part-*.parquet"))

    def scan_records(self, source: str, ids: pl.Series | None = None,
                     columns: list[str] | None = None) -> pl.DataFrame | None:
        """A source's current records (the latest part holding a record_id wins)."""
        parts = self.record_parts(source)
        if not parts:
            return None
        frames = []
        for p in parts:
            lf = pl.scan_parquet(p)
            if columns is not None:
                have = lf.collect_schema().names()
                lf = lf.select([c for c in columns if c in have])
            if ids is not None:
                lf = lf.filter(pl.col("record_id").is_in(ids.implode()))
            frames.append(lf)
        lf = pl.concat(frames, how="diagonal_relaxed")
        if len(parts) > 1:
            lf = lf.unique(["record_id"], keep="last", maintain_order=True)
        return lf.collect()

    def snapshot(self, spec, out: Path) -> dict[str, Path]:
        """One standardised Parquet per source of the current records (for a full relink,
        or as the assemble stage's ingest paths)."""
        paths = {}
        for s in spec.sources:
            parts = self.record_parts(s)
            if not parts:
                continue
            if len(parts) == 1:
                paths[s] = parts[0]
            else:
                Path(out).mkdir(parents=True, exist_ok=True)
                paths[s] = Path(out) / f"{s}.parquet"
                self.scan_records(s).write_parquet(paths[s], **_PQ)
        return paths

    def append(self, name: str, df: pl.DataFrame) -> Path:
        tmp, p = self.stage(name, df)
        tmp.replace(p)
        return p

    def stage(self, name: str, df: pl.DataFrame) -> tuple[Path, Path]:
        """Write the next part of `name` under a hidden temporary name; (temporary, final):
        rename to commit it (an increment stages while it links, commits at the end)."""
        d = self.path(name)
        d.mkdir(parents=True, exist_ok=True)
        n = len(list(d.glob("part-*.parquet")))
        p = d / f"part-{n:06d}.parquet"
        tmp = p.with_name(f".{p.name}.tmp")
        df.write_parquet(tmp, **_PQ)
        return tmp, p

    def clean_staged(self) -> None:
        """Remove temporary files left by an increment that failed before committing."""
        for t in self.dir.rglob(".*.tmp"):
            t.unlink(missing_ok=True)

    def read_parts(self, name: str, dedupe: list[str] | None = None) -> pl.DataFrame:
        parts = sorted(self.path(name).glob("part-*.parquet"))
        df = pl.concat([pl.read_parquet(p) for p in parts], how="vertical_relaxed")
        if dedupe and len(parts) > 1:
            df = df.unique(dedupe, keep="last", maintain_order=True)
        return df

    def history(self) -> pl.DataFrame:
        return self.read_parts("history")

    def tf_tables(self) -> dict[str, pl.DataFrame] | None:
        """The name TF tables (tf/<forename|surname|joint>.parquet), None if not stored."""
        paths = {w: self.path(f"tf/{w}.parquet") for w in _TF_KEYS}
        if not all(p.exists() for p in paths.values()):
            return None
        return {w: pl.read_parquet(p) for w, p in paths.items()}

    def write_tf(self, tables: dict[str, pl.DataFrame], only: set[str] | None = None) -> None:
        for tmp, p in self.stage_tf(tables, only):
            tmp.replace(p)

    def stage_tf(self, tables: dict[str, pl.DataFrame], only: set[str] | None = None) -> list[tuple[Path, Path]]:
        self.path("tf").mkdir(parents=True, exist_ok=True)
        out = []
        for w, t in tables.items():
            if only is None or w in only:
                p = self.path(f"tf/{w}.parquet")
                tmp = p.with_name(f".{p.name}.tmp")
                t.write_parquet(tmp, **_PQ)
                out.append((tmp, p))
        return out



def _lambda_basis(model_json: dict, counts: dict[str, int]) -> dict:
    """Per task: lambda, expected matches and the record counts it was estimated on."""
    out = {}
    for key, t in model_json.get("tasks", {}).items():
        a, b = key.split("|")
        out[key] = {"lambda": t.get("lambda"), "expected_matches": t.get("expected_matches"),
                    "method": t.get("lambda_method"), "na": counts.get(a, 0), "nb": counts.get(b, 0)}
    return out


def _scaled_model(model_path: Path, basis: dict, counts: dict[str, int], out: Path) -> Path:
    """model.json with each task's lambda re-based on the current population:
    expected matches grow with the records (linearly), possible pairs with their product."""
    m = json.loads(model_path.read_text())
    for key, t in m.get("tasks", {}).items():
        b = basis.get(key)
        if not b or not b.get("expected_matches") or "expected" not in str(b.get("method", "")):
            continue
        a_, b_ = key.split("|")
        na, nb = counts.get(a_, 0), counts.get(b_, 0)
        if a_ == b_:
            possible = na * (na - 1) / 2
            growth = na / max(b["na"], 1)
        else:
            possible = float(na) * nb
            growth = (na + nb) / max(b["na"] + b["nb"], 1)
        if possible <= 0:
            continue
        lam = min(max(b["expected_matches"] * growth / possible, 1e-12), 0.5)
        t["lambda"] = lam
        t["prior_match_weight"] = math.log2(lam / (1 - lam))
    out.write_text(json.dumps(m))
    return out


# ----------------------------------------------------------------------------- init

def init_state(inputs: dict[str, Path], spec, state_dir: Path, out_dir: Path, *, truth: Path | None = None,
               progress=None) -> dict:
    """Full link of `inputs` (standardised Parquet per source) -> a new linkage state.
    Writes out_dir/ (the engine's outputs, clusters.parquet with person_id = stable key)
    and state_dir/. Refuses to overwrite an existing state (use relink_full)."""
    from etl.linkage import link

    t0 = time.perf_counter()
    st = State(state_dir)
    if st.exists():
        raise ConfigError("linkage state already exists; use relink_full() to relink it", file=str(state_dir))
    out_dir = Path(out_dir)
    st.dir.mkdir(parents=True, exist_ok=True)
    summary = link({k: Path(v) for k, v in inputs.items()}, spec, out_dir, truth=truth, progress=progress)
    cl = pl.read_parquet(out_dir / "clusters.parquet")
    # keys in the engine's order (P000001... by first record): K000000001...
    order = cl.select("person_id").unique(maintain_order=True).sort("person_id")
    order = order.with_columns(pl.arange(1, order.height + 1, eager=True).alias("_n"))
    cl = cl.join(order, on="person_id").with_columns(
        (pl.lit(KEY_PREFIX) + pl.col("_n").cast(pl.String).str.zfill(KEY_WIDTH)).alias("person_key"))
    counts = {}
    comp = _name_tf_comp(spec)
    names = []
    for s, p in inputs.items():
        df = pl.read_parquet(p)
        counts[s] = df.height
        st.append(f"records/{s}", df)
        if comp is not None:
            names.append(_name_tf_values([df], comp))
    if comp is not None:
        st.write_tf(_tf_tables(pl.concat(names) if names else _name_tf_values([], comp)))
    st.append("keys", _block_keys(st.snapshot(spec, st.dir / "_tmp"), spec))
    cw = cl.select("source", "record_id", "person_key", "link_method", "link_probability")
    _write(cl.select("source", "record_id", pl.col("person_key").alias("person_id"), "link_method",
                     "link_probability", "cluster_size"), st.path("crosswalk.parquet"))
    pairs = pl.read_parquet(out_dir / "pairs.parquet").filter(pl.col("linked"))
    _write(pairs, st.path("pairs.parquet"))
    shutil.copyfile(out_dir / "model.json", st.path("model.json"))
    run_id = f"init-{_now()}"
    hist = cw.select(pl.lit(run_id).alias("run_id"), pl.lit(_now()).alias("at"), pl.lit("init").alias("event"),
                     "person_key", pl.lit(None, pl.String).alias("other_key"), "source", "record_id",
                     pl.lit("applied").alias("status"))
    st.append("history", hist)
    model_json = json.loads((out_dir / "model.json").read_text())
    meta = {"version": STATE_VERSION, "created": _now(), "updated": _now(), "runs": [run_id],
            "next_key": order.height + 1, "counts": counts, "persons": int(order.height),
            "lambda_basis": _lambda_basis(model_json, counts), "polars": pl.__version__,
            "blocking": [r.name for r in spec.blocking], "model": spec.name}
    _write_text(st.path("meta.json"), json.dumps(meta, indent=1))
    shutil.copyfile(st.path("crosswalk.parquet"), out_dir / "clusters.parquet")
    return {"records": int(cl.height), "persons": int(order.height), "f1_overall": summary.get("f1_overall"),
            "seconds": round(time.perf_counter() - t0, 2)}


# ----------------------------------------------------------------------------- key mapping

def map_keys(assign: pl.DataFrame, next_key: int) -> tuple[pl.DataFrame, int]:
    """Map new clusters onto old keys by maximum overlap.

    assign: source, record_id, cluster (new clustering), old_key (null for a new record).
    Greedy over (cluster, old key, overlap) strongest first; ties broken by the
    smaller key, then the cluster whose smallest record sorts first; a key goes
    to one cluster, a cluster gets one key. Clusters left without a key get new
    keys in the order of their smallest record. Returns (cluster, key, inherited)
    and the next key counter."""
    ov = assign.drop_nulls("old_key").group_by("cluster", "old_key").len("overlap")
    # uncontested: the cluster holds one old key and the key sits in one cluster
    nk = ov.group_by("cluster").len("nk")
    nc = ov.group_by("old_key").len("nc")
    ov = ov.join(nk, on="cluster").join(nc, on="old_key")
    easy = ov.filter((pl.col("nk") == 1) & (pl.col("nc") == 1))
    used_c: dict[Any, str] = dict(zip(easy["cluster"].to_list(), easy["old_key"].to_list()))
    used_k: set[str] = set(easy["old_key"].to_list())
    hard = ov.filter((pl.col("nk") > 1) | (pl.col("nc") > 1))
    first = None
    if hard.height:
        sub = assign.filter(pl.col("cluster").is_in(hard["cluster"].unique().implode()))
        first = sub.group_by("cluster").agg(pl.concat_str("source", pl.lit("|"), "record_id").min().alias("_first"))
        hard = hard.join(first, on="cluster").sort(["overlap", "old_key", "_first"],
                                                   descending=[True, False, False])
        for c, k in zip(hard["cluster"].to_list(), hard["old_key"].to_list()):
            if c in used_c or k in used_k:
                continue
            used_c[c] = k
            used_k.add(k)
    taken = pl.DataFrame({"cluster": list(used_c)}, schema={"cluster": assign.schema["cluster"]})
    left = assign.join(taken, on="cluster", how="anti")
    first = left.group_by("cluster").agg(pl.concat_str("source", pl.lit("|"), "record_id").min().alias("_first"))
    rest = first.sort("_first")
    dtype = assign.schema["cluster"]
    fresh = rest.select(pl.col("cluster"),
                        (pl.lit(KEY_PREFIX) + (pl.int_range(0, rest.height, dtype=pl.Int64) + next_key)
                         .cast(pl.String).str.zfill(KEY_WIDTH)).alias("key"),
                        pl.lit(False).alias("inherited"))
    next_key += rest.height
    kept = pl.DataFrame({"cluster": pl.Series(list(used_c), dtype=dtype),
                         "key": pl.Series(list(used_c.values()), dtype=pl.String)}).with_columns(
        pl.lit(True).alias("inherited"))
    m = pl.concat([kept, fresh.cast({"cluster": dtype})])
    return m, next_key


def _events(a: pl.DataFrame) -> tuple[list[dict], list[dict]]:
    """Merges and splits from a frame with source, record_id, old_key, cluster, key
    (old records only). A merge: an old key that no cluster inherited, whose records
    sit in a cluster holding another key. A split: an old key whose records land in
    two or more clusters (the parts that did not inherit it split off)."""
    inherited = a.filter(pl.col("key") == pl.col("old_key")).select("old_key").unique()
    merges, splits = [], []
    by_key = a.group_by("old_key").agg(pl.col("cluster").unique().alias("clusters"),
                                        pl.col("key").unique().alias("keys"), pl.len().alias("n"))
    by_key = by_key.join(inherited.with_columns(pl.lit(True).alias("_inh")), on="old_key", how="left").filter(
        (pl.col("clusters").list.len() > 1) | pl.col("_inh").is_null())
    inherited = set(inherited["old_key"].to_list())
    for row in by_key.sort("old_key").iter_rows(named=True):
        k = row["old_key"]
        if len(row["clusters"]) > 1:
            parts = (a.filter(pl.col("old_key") == k).group_by("key").agg(
                pl.concat_str("source", pl.lit(":"), "record_id").sort().alias("records")).sort("key"))
            splits.append({"key": k, "into": parts["key"].to_list(),
                           "records": {r["key"]: r["records"] for r in parts.iter_rows(named=True)}})
        elif k not in inherited:
            into = row["keys"][0]
            recs = a.filter(pl.col("old_key") == k)
            merges.append({"key": k, "into": into,
                           "records": sorted((recs["source"] + ":" + recs["record_id"]).to_list())})
    return merges, splits


def _event_pairs(pairs: pl.DataFrame, recs: set[str], limit: int = 50) -> list[dict]:
    """Scored pairs touching the event's records (restricted zone: record ids, weights)."""
    if pairs.height == 0 or not recs:
        return []
    l = pairs["source_l"] + ":" + pairs["record_id_l"]
    r = pairs["source_r"] + ":" + pairs["record_id_r"]
    sel = l.is_in(list(recs)) | r.is_in(list(recs))
    p = pairs.filter(sel).sort("match_weight", descending=True).head(limit)
    cols = [c for c in ("source_l", "record_id_l", "source_r", "record_id_r", "match_weight",
                        "match_probability", "method", "rule", "linked") if c in p.columns]
    return [{k: (float(v) if isinstance(v, float) else v) for k, v in r_.items()}
            for r_ in p.select(cols).iter_rows(named=True)]


# ----------------------------------------------------------------------------- increment

def link_incremental(new_inputs: dict[str, Path], state_dir: Path, spec, out_dir: Path, *,
                     policy: str = "apply", truth: Path | None = None, progress=None,
                     keep_work: bool = False, method: str = "focus", min_shared_keys: int = 2) -> dict:
    """Link a new delivery (standardised Parquet per source: new rows, and corrected rows
    for known record_ids) onto the linkage state. Writes out_dir/clusters.parquet (all
    records; person_id = stable key), pairs.parquet (accepted links), model.json,
    incremental_report.{json,md}; updates state_dir. Returns counts only.

    Work that does not wait for the link (reading the stored links, the name term
    frequencies, writing the delivery's record / key parts to temporary files, dropping
    the links the subset replaces) runs in one background thread beside it; the state
    is committed (renames, crosswalk, links, history, meta) after the link."""
    with ThreadPoolExecutor(1, thread_name_prefix="medlink-increment") as bg:
        return _increment(new_inputs, state_dir, spec, out_dir, bg, policy=policy, truth=truth,
                          progress=progress, keep_work=keep_work, method=method, min_shared_keys=min_shared_keys)


def _increment(new_inputs: dict[str, Path], state_dir: Path, spec, out_dir: Path, bg: ThreadPoolExecutor, *,
               policy: str, truth: Path | None, progress, keep_work: bool, method: str,
               min_shared_keys: int) -> dict:
    from etl.linkage import link

    if policy not in POLICIES:
        raise ConfigError(f"merge policy must be one of {POLICIES}, not {policy!r}", key="linkage.merge_policy")
    t0 = time.perf_counter()
    timings: dict[str, float] = {}
    tick = time.perf_counter()

    def lap(name):
        nonlocal tick
        now = time.perf_counter()
        timings[name] = round(now - tick, 3)
        tick = now

    st = State(state_dir)
    if not st.exists():
        raise ConfigError("no linkage state; run init_state() first", file=str(state_dir))
    meta = st.meta()
    if meta.get("blocking") != [r.name for r in spec.blocking]:
        raise ConfigError("the linkage state was built with other blocking rules; relink_full()",
                          file=str(state_dir))
    out_dir = Path(out_dir)
    work = out_dir / "_work"
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    run_id = f"inc-{_now()}"
    st.clean_staged()
    f_pairs = bg.submit(pl.read_parquet, st.path("pairs.parquet"))

    evid = _evidence_cols(spec)
    ev_cols = ["record_id", *evid]
    eng_cols = _engine_cols(spec)
    cw = pl.read_parquet(st.path("crosswalk.parquet")).rename({"person_id": "person_key"})
    keys = st.read_parts("keys", dedupe=["source", "record_id"] if meta.get("superseded") else None)
    lap("load_state")

    # ---- classify the delivery: new, changed, unchanged ------------------------------
    # only the delivered record_ids already in the state are read back (their linkage fields)
    delta_paths: dict[str, Path] = {}
    delta: dict[str, pl.DataFrame] = {}
    changed_ids: dict[str, list[str]] = {}
    replaced: list[pl.DataFrame] = []        # the old versions of changed records (TF counts)
    n_new = n_changed = n_unchanged = 0
    added = {s: 0 for s in spec.sources}
    for s, p in new_inputs.items():
        if s not in spec.sources:
            raise ConfigError(f"source {s!r} is not in the linkage model", key="linkage.model")
        df = pl.read_parquet(p).with_columns(pl.col("record_id").cast(pl.String))
        # hash the delivery's ids (small), probe the history's; then the delivery on the few known
        hist = cw.filter(pl.col("source") == s)["record_id"]
        is_known = df["record_id"].is_in(hist.filter(hist.is_in(df["record_id"].implode())).implode())
        known, fresh = df.filter(is_known), df.filter(~is_known)
        ch: list[str] = []
        if known.height:
            old = st.scan_records(s, ids=known["record_id"], columns=ev_cols)
            cols = [c for c in evid if c in df.columns and c in old.columns]
            a_ = known.select("record_id", *[pl.col(c).cast(pl.String) for c in cols])
            b_ = old.select("record_id", *[pl.col(c).cast(pl.String) for c in cols])
            same = a_.join(b_, on=["record_id", *cols], how="semi", nulls_equal=True)
            chf = known.filter(~pl.col("record_id").is_in(same["record_id"].implode()))
            n_unchanged += same.height
            ch = chf["record_id"].to_list()
            if ch:
                replaced.append(old.filter(pl.col("record_id").is_in(chf["record_id"].implode())))
            d = pl.concat([fresh, chf], how="diagonal_relaxed")
        else:
            d = fresh
        n_new += d.height - len(ch)
        added[s] += d.height - len(ch)
        n_changed += len(ch)
        changed_ids[s] = ch
        if d.height:
            delta[s] = d
            delta_paths[s] = work / f"delta_{s}.parquet"
            d.write_parquet(delta_paths[s], compression="uncompressed")
    if delta:
        f_tf = bg.submit(_tf_after, st, spec, delta, replaced, ev_cols)
    lap("classify")

    if not delta:       # everything delivered is already linked, unchanged: the state's outputs as they are
        shutil.rmtree(work, ignore_errors=True)
        out_dir.mkdir(parents=True, exist_ok=True)
        for f, to in (("crosswalk.parquet", "clusters.parquet"), ("pairs.parquet", "pairs.parquet"),
                      ("model.json", "model.json")):
            shutil.copyfile(st.path(f), out_dir / to)
        persons = meta.get("persons")
        result = {"new_records": 0, "changed_records": 0, "unchanged_records": int(n_unchanged),
                  "joined_existing": 0, "new_persons": 0, "merges": 0, "splits": 0, "held": 0,
                  "records_rekeyed": 0, "subset_records": 0, "records_total": int(cw.height),
                  "persons_total": int(persons if persons is not None else cw["person_key"].n_unique()),
                  "policy": policy, "seconds": round(time.perf_counter() - t0, 3)}
        return _report(out_dir, result, cw.rename({"person_key": "person_id"}), truth,
                       {"run_id": run_id, "policy": policy, "timings_seconds": timings, "merges": [], "splits": []})

    # ---- the subset: delta + old records blocking with it + their people ----------------
    dkeys = _block_keys(delta_paths, spec)
    lap("delta_keys")
    changed_all = pl.concat([pl.DataFrame({"source": [s] * len(v), "record_id": v},
                                          schema={"source": pl.String, "record_id": pl.String})
                             for s, v in changed_ids.items()]) if changed_ids else pl.DataFrame(
        schema={"source": pl.String, "record_id": pl.String})
    is_changed = (keys.select("source", "record_id").join(changed_all.with_columns(pl.lit(True).alias("_c")),
                                                           on=["source", "record_id"], how="left",
                                                           maintain_order="left")["_c"].fill_null(False).to_numpy()
                  if changed_all.height else np.zeros(keys.height, bool))
    # an old record is a neighbour when it shares blocking keys with a delta record of a
    # source it is compared with (a task); training|training is not a task, for example
    partners = {t: [s for s in spec.sources if (s, t) in spec.tasks or (t, s) in spec.tasks]
                for t in spec.sources}
    touched = keys.filter(pl.Series(_neighbours(keys, is_changed, dkeys, spec, partners, min_shared_keys)))
    touched_keys = (cw.join(pl.concat([touched.select("source", "record_id"), changed_all]),
                            on=["source", "record_id"], how="semi")["person_key"].unique())
    lap("neighbours")
    people = cw.filter(pl.col("person_key").is_in(touched_keys.implode()))     # every record of those people
    old_sub = people.join(changed_all, on=["source", "record_id"], how="anti")
    sub_paths: dict[str, Path] = {}
    for s in spec.sources:
        parts = []
        ids = old_sub.filter(pl.col("source") == s)["record_id"]
        if ids.len() and st.record_parts(s):
            parts.append(st.scan_records(s, ids=ids, columns=eng_cols))
        if s in delta:
            parts.append(delta[s].select([c for c in eng_cols if c in delta[s].columns]))
        if parts:
            sub_paths[s] = work / f"subset_{s}.parquet"
            pl.concat(parts, how="diagonal_relaxed").write_parquet(sub_paths[s], compression="uncompressed")
    n_subset = old_sub.height + sum(d.height for d in delta.values())
    sub_keys = pl.concat([keys.filter(pl.Series(~is_changed)).join(old_sub.select("source", "record_id"),
                                                                   on=["source", "record_id"], how="semi"),
                          dkeys], how="vertical_relaxed")
    # the state's accepted links: those between two old records of the subset are re-scored
    # as candidates; every link touching a record of those people is replaced by this run's
    pairs_old = f_pairs.result()
    ppl_ids = people.select("source", "record_id")
    near = _pairs_near(pairs_old, ppl_ids)                 # old_sub is a part of people
    fixed = _pairs_within(near, old_sub.select("source", "record_id"))
    lap("subset")

    # ---- population counts and name term frequencies after the delivery -------------------
    # (kept in the state and updated by the delta: no pass over the history)
    counts = {s: int(meta["counts"].get(s, 0)) + added[s] for s in spec.sources
              if int(meta["counts"].get(s, 0)) + added[s] > 0}
    tf_new, tf_changed = f_tf.result()
    tf_counts = _tf_counts(tf_new, spec)
    model_path = _scaled_model(st.path("model.json"), meta["lambda_basis"], counts, work / "model_scaled.json")
    n_total = sum(counts.values())
    spec2 = dataclasses.replace(spec, reuse_model=model_path,
                                tf_min_u=spec.tf_min_u if spec.tf_min_u else 1.0 / max(n_total, 1),
                                labels=None)
    lap("prepare_model")

    def stage():
        """Beside the link: the delivery's parts to temporary files, the kept rows."""
        staged = [st.stage(f"records/{s}", d) for s, d in delta.items()]
        staged.append(st.stage("keys", dkeys))
        if tf_new is not None and tf_changed:
            staged += st.stage_tf(tf_new, tf_changed)
        return (staged, _pairs_not_touching(pairs_old, near, ppl_ids),
                cw.filter(~pl.col("person_key").is_in(touched_keys.implode())))

    f_stage = bg.submit(stage)
    link_timings = None
    focus_ids = pl.concat([pl.DataFrame({"source": [s] * d.height, "record_id": d["record_id"]},
                                        schema={"source": pl.String, "record_id": pl.String})
                           for s, d in delta.items()])
    if method == "focus":
        link_timings = _link_focus(sub_paths, spec2, work / "link", focus_ids, fixed, tf_counts,
                                   sub_keys).get("timings")
    else:
        link(sub_paths, spec2, work / "link", progress=progress, prior_from_model=True, tf_counts=tf_counts)
    lap("link_subset")

    # ---- map the subset's clusters onto the stable keys ---------------------------------
    scl = pl.read_parquet(work / "link" / "clusters.parquet")
    old_map = people.select("source", "record_id", pl.col("person_key").alias("old_key"))
    a = scl.select("source", "record_id", pl.col("person_id").alias("cluster"), "link_method",
                   "link_probability").join(old_map, on=["source", "record_id"], how="left")
    m, next_key = map_keys(a.select("source", "record_id", "cluster", "old_key"), meta["next_key"])
    a = a.join(m, on="cluster", how="left")
    olds = a.filter(pl.col("old_key").is_not_null())
    merges, splits = _events(olds)
    spairs = pl.read_parquet(work / "link" / "pairs.parquet")
    new_pairs = spairs.filter(pl.col("linked"))

    def stage_pairs():
        """Beside the key mapping: the new links file (kept + this run's), to a temporary file."""
        _, kept, _ = f_stage.result()        # queued before this task: already done
        p = st.path("pairs.parquet")
        tmp = p.with_name(f".{p.name}.tmp")
        pl.concat([kept, new_pairs], how="diagonal_relaxed").write_parquet(tmp, **_PQ)
        return tmp, p

    f_pairs_w = bg.submit(stage_pairs)
    for ev in merges + splits:
        recs = set(ev["records"]) if isinstance(ev["records"], list) else {
            r for v in ev["records"].values() for r in v}
        ev["pairs"] = _event_pairs(spairs, recs)
        ev["status"] = "applied" if policy == "apply" else "held"
    # records of a held event keep their old key; everything else takes its cluster's key
    if policy == "hold":
        held_keys = {e["key"] for e in merges} | {e["key"] for e in splits} | {e["into"] for e in merges}
        a = a.with_columns(pl.when(pl.col("old_key").is_not_null() & pl.col("old_key").is_in(list(held_keys)))
                           .then(pl.col("old_key")).otherwise(pl.col("key")).alias("final"))
    else:
        a = a.with_columns(pl.col("key").alias("final"))
    # new records: join an existing person or start a new one
    newrec = a.filter(pl.col("old_key").is_null())
    existing_keys = a["old_key"].drop_nulls().unique().implode()
    joined = int(newrec.filter(pl.col("final").is_in(existing_keys)).height)
    new_persons = int(newrec.filter(~pl.col("final").is_in(existing_keys))["final"].n_unique())
    lap("map_keys")

    # ---- new state ----------------------------------------------------------------------
    # the subset holds every record of the people it touched (old_sub + changed), so the
    # crosswalk rows of those people are replaced and every other row is kept as it is
    staged, _, cw_keep = f_stage.result()
    cw_new = pl.concat([
        cw_keep,
        a.select("source", "record_id", pl.col("final").alias("person_key"), "link_method", "link_probability",
                 pl.lit(0, pl.Int32).alias("cluster_size")),
    ], how="vertical_relaxed")
    sizes = a.group_by("final").len("_n")
    cw_new = cw_new.with_columns(
        pl.col("person_key").replace_strict(sizes["final"], sizes["_n"].cast(pl.Int32),
                                            default=pl.col("cluster_size")).alias("cluster_size"))
    changed_rec = a.filter(pl.col("old_key").is_not_null() & (pl.col("old_key") != pl.col("final")))
    hist_rows = [
        newrec.select(pl.when(pl.col("final").is_in(existing_keys)).then(pl.lit("join"))
                      .otherwise(pl.lit("new_person")).alias("event"),
                      pl.col("final").alias("person_key"), pl.lit(None, pl.String).alias("other_key"),
                      "source", "record_id", pl.lit("applied").alias("status")),
        changed_rec.select(pl.lit("rekey").alias("event"), pl.col("final").alias("person_key"),
                           pl.col("old_key").alias("other_key"), "source", "record_id",
                           pl.lit("applied").alias("status")),
    ]
    ev_rows = []
    for e in merges:
        for r in e["records"]:
            s_, rid = r.split(":", 1)
            ev_rows.append(("merge", e["into"], e["key"], s_, rid, e["status"]))
    for e in splits:
        for k, recs in e["records"].items():
            if k == e["key"]:
                continue
            for r in recs:
                s_, rid = r.split(":", 1)
                ev_rows.append(("split", k, e["key"], s_, rid, e["status"]))
    if ev_rows:
        hist_rows.append(pl.DataFrame(ev_rows, schema=["event", "person_key", "other_key", "source", "record_id",
                                                       "status"], orient="row"))
    hist_new = pl.concat(hist_rows, how="vertical_relaxed").select(
        pl.lit(run_id).alias("run_id"), pl.lit(_now()).alias("at"), pl.all())
    lap("merge_state")

    for tmp, final in staged:
        tmp.replace(final)
    # the outputs are copies of the state's files, made in the background thread
    out_dir.mkdir(parents=True, exist_ok=True)
    _write(cw_new.rename({"person_key": "person_id"}), st.path("crosswalk.parquet"))
    copies = [bg.submit(shutil.copyfile, st.path("crosswalk.parquet"), out_dir / "clusters.parquet")]
    tmp, final = f_pairs_w.result()
    tmp.replace(final)
    copies.append(bg.submit(shutil.copyfile, st.path("pairs.parquet"), out_dir / "pairs.parquet"))
    st.append("history", hist_new)
    # people: those the subset did not touch keep their keys; the subset's keys are disjoint
    persons_before = meta.get("persons")
    if persons_before is None:       # a state from before meta held it
        persons_before = cw["person_key"].n_unique()
    persons_total = int(persons_before - touched_keys.len() + a["final"].n_unique())
    meta.update({"updated": _now(), "runs": meta["runs"] + [run_id], "next_key": next_key, "counts": counts,
                 "persons": persons_total, "superseded": bool(meta.get("superseded") or n_changed)})
    _write_text(st.path("meta.json"), json.dumps(meta, indent=1))
    lap("write_state")

    # ---- outputs --------------------------------------------------------------------------
    clusters = cw_new.rename({"person_key": "person_id"})
    shutil.copyfile(st.path("model.json"), out_dir / "model.json")
    for c in copies:
        c.result()
    lap("write_outputs")

    result = {"new_records": int(n_new), "changed_records": int(n_changed), "unchanged_records": int(n_unchanged),
              "joined_existing": joined, "new_persons": new_persons, "merges": len(merges), "splits": len(splits),
              "held": sum(e["status"] == "held" for e in merges + splits) if policy == "hold" else 0,
              "records_rekeyed": int(changed_rec.height), "subset_records": int(n_subset),
              "records_total": int(clusters.height), "persons_total": persons_total,
              "policy": policy, "seconds": round(time.perf_counter() - t0, 3)}
    if not keep_work:
        shutil.rmtree(work, ignore_errors=True)
    return _report(out_dir, result, clusters, truth,
                   {"run_id": run_id, "policy": policy, "timings_seconds": timings,
                    "link_subset_seconds": link_timings, "merges": merges, "splits": splits})


def _report(out_dir: Path, result: dict, clusters: pl.DataFrame, truth: Path | None, report: dict) -> dict:
    """An increment's last step: F1 against `truth` if given, and incremental_report.{json,md}
    (counts, timings, the merge and split events) in the restricted zone. Returns `result`."""
    if truth is not None:
        t = pl.read_parquet(truth).select(pl.col("source").cast(pl.String), pl.col("record_id").cast(pl.String),
                                          pl.col("person_id").cast(pl.String))
        result["f1_overall"] = round(pairwise_f1(clusters, t)["f1"], 6)
    report = {**report, "counts": result}
    (out_dir / "incremental_report.json").write_text(json.dumps(report, indent=1, default=str))
    (out_dir / "incremental_report.md").write_text(report_markdown(report))
    return result


def report_markdown(report: dict) -> str:
    """The merges / splits section for the linkage report (restricted zone)."""
    c = report["counts"]
    lines = [f"## Incremental linkage ({report['run_id']}, policy: {report['policy']})", "",
             f"New records {c['new_records']}, changed {c['changed_records']}, joined existing people "
             f"{c['joined_existing']}, new people {c['new_persons']}, merges {c['merges']}, splits {c['splits']}"
             f" (linked as a subset of {c['subset_records']} records).", ""]
    if "full_relink" in report:
        f = report["full_relink"]
        lines += [f"Against a full relink: pairwise F1 {f['pairwise_f1']:.6f}, records whose person differs "
                  f"{f['records_person_differs']}.", ""]
    if report["merges"] or report["splits"]:
        lines += ["| change | key | into | status | records | pairs | max weight | min weight |",
                  "|---|---|---|---|---|---|---|---|"]
        for kind, evs in (("merge", report["merges"]), ("split", report["splits"])):
            for e in evs:
                recs = e["records"] if isinstance(e["records"], list) else [r for v in e["records"].values() for r in v]
                into = e["into"] if isinstance(e["into"], str) else ", ".join(e["into"])
                ws = [p["match_weight"] for p in e.get("pairs", [])]
                mx = f"{max(ws):.2f}" if ws else ""
                mn = f"{min(ws):.2f}" if ws else ""
                lines.append(f"| {kind} | {e['key']} | {into} | {e['status']} | {len(recs)} | {len(ws)} | {mx} | {mn} |")
    else:
        lines.append("No merges or splits.")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- full relink

def relink_full(state_dir: Path, spec, out_dir: Path, *, adopt: bool = False, policy: str = "apply",
                truth: Path | None = None, progress=None) -> dict:
    """Relink every record of the state from scratch (a new model) and compare with the
    incremental crosswalk: pairwise F1 between the two clusterings and the records whose
    person differs. With adopt=True the relink becomes the state (keys mapped by overlap,
    merges/splits under `policy`, the new model stored)."""
    from etl.linkage import link

    t0 = time.perf_counter()
    st = State(state_dir)
    meta = st.meta()
    out_dir = Path(out_dir)
    spec2 = dataclasses.replace(spec, reuse_model=None)
    summary = link(st.snapshot(spec, out_dir / "_records"), spec2, out_dir, truth=truth, progress=progress)
    full = pl.read_parquet(out_dir / "clusters.parquet")
    cw = pl.read_parquet(st.path("crosswalk.parquet")).rename({"person_id": "person_key"})
    cmp = pairwise_f1(cw.rename({"person_key": "person_id"}), full)
    a = full.select("source", "record_id", pl.col("person_id").alias("cluster"), "link_method",
                    "link_probability").join(cw.select("source", "record_id", pl.col("person_key").alias("old_key")),
                                             on=["source", "record_id"], how="left")
    m, next_key = map_keys(a.select("source", "record_id", "cluster", "old_key"), meta["next_key"])
    a = a.join(m, on="cluster", how="left")
    differs = int(a.filter(pl.col("key") != pl.col("old_key")).height)
    merges, splits = _events(a.filter(pl.col("old_key").is_not_null()))
    result = {"records": int(full.height), "pairwise_f1_vs_incremental": round(cmp["f1"], 6),
              "records_person_differs": differs, "merges": len(merges), "splits": len(splits),
              "f1_overall": summary.get("f1_overall"), "adopted": False}
    if truth is not None:
        t = pl.read_parquet(truth).select(pl.col("source").cast(pl.String), pl.col("record_id").cast(pl.String),
                                          pl.col("person_id").cast(pl.String))
        result["f1_full_vs_truth"] = round(pairwise_f1(full, t)["f1"], 6)
        result["f1_incremental_vs_truth"] = round(
            pairwise_f1(cw.rename({"person_key": "person_id"}), t)["f1"], 6)
    if adopt:
        if policy == "hold":
            held = {e["key"] for e in merges} | {e["into"] for e in merges} | {e["key"] for e in splits}
            a = a.with_columns(pl.when(pl.col("old_key").is_in(list(held))).then(pl.col("old_key"))
                               .otherwise(pl.col("key")).alias("key"))
        cw_new = a.select("source", "record_id", pl.col("key").alias("person_id"), "link_method",
                          "link_probability").with_columns(pl.len().over("person_id").cast(pl.Int32).alias("cluster_size"))
        _write(cw_new, st.path("crosswalk.parquet"))
        _write(pl.read_parquet(out_dir / "pairs.parquet").filter(pl.col("linked")), st.path("pairs.parquet"))
        shutil.copyfile(out_dir / "model.json", st.path("model.json"))
        model_json = json.loads((out_dir / "model.json").read_text())
        counts = {s: st.scan_records(s, columns=["record_id"]).height for s in spec.sources if st.record_parts(s)}
        run_id = f"full-{_now()}"
        meta.update({"updated": _now(), "runs": meta["runs"] + [run_id], "next_key": next_key, "counts": counts,
                     "persons": int(cw_new["person_id"].n_unique()), "lambda_basis": _lambda_basis(model_json, counts)})
        _write_text(st.path("meta.json"), json.dumps(meta, indent=1))
        shutil.copyfile(st.path("crosswalk.parquet"), out_dir / "clusters.parquet")
        result["adopted"] = True
    report = {"full_relink": {"pairwise_f1": cmp["f1"], "records_person_differs": differs,
                              "precision": cmp["precision"], "recall": cmp["recall"]},
              "merges": merges, "splits": splits, "counts": result}
    (out_dir / "full_relink_comparison.json").write_text(json.dumps(report, indent=1, default=str))
    result["seconds"] = round(time.perf_counter() - t0, 2)
    return result


# ----------------------------------------------------------------------------- yearly deliveries

YEAR_OF = {"admission": pl.col("cycle_year"), "training": pl.col("entry_year"),
           "registration": pl.coalesce(pl.col("application_year"), pl.col("graduation_year"))}


def split_by_year(std_paths: dict[str, Path], out_root: Path, bounds: list[int]) -> list[dict[str, Path]]:
    """Split standardised extracts into deliveries by year (admission cycle_year, training
    entry_year, registration application_year or, for register-only rows, graduation_year).
    Delivery 0 holds years <= bounds[0] (and rows without a year), delivery i years in
    (bounds[i-1], bounds[i]], the last one everything after bounds[-1]."""
    out_root = Path(out_root)
    n = len(bounds) + 1
    deliveries: list[dict[str, Path]] = [{} for _ in range(n)]
    for s, p in std_paths.items():
        df = pl.read_parquet(p)
        y = df.select(YEAR_OF[s].cast(pl.Int32, strict=False).alias("y"))["y"].to_numpy()
        b = np.searchsorted(np.asarray(bounds), np.where(np.isnan(y.astype(float)), -1, y), side="left")
        for i in range(n):
            part = df.filter(pl.Series(b == i))
            d = out_root / f"delivery_{i}"
            d.mkdir(parents=True, exist_ok=True)
            part.write_parquet(d / f"{s}.parquet")
            deliveries[i][s] = d / f"{s}.parquet"
    return deliveries


# ----------------------------------------------------------------------------- pipeline stage

STATE_NAME = "linkage_state"


def state_id(state_dir: Path) -> str | None:
    """Identity of a committed state (sha256 of its meta.json, which every commit rewrites),
    None when there is none."""
    p = Path(state_dir) / "meta.json"
    return hashlib.sha256(p.read_bytes()).hexdigest()[:16] if p.is_file() else None


def _link_or_copy(src, dst):
    """Hard link a state file into a candidate (no state file is ever rewritten in place:
    every write is a new file renamed over the old name), else copy it. An existing `dst`
    is unlinked first: writing through it could rewrite a file it shares with the state."""
    Path(dst).unlink(missing_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)
    return dst


PENDING = f".{STATE_NAME}.pending.json"


def mark_pending(restricted_dir: Path, link_summary: dict, run_id: str, release_dir: Path) -> Path:
    """Written (atomically, under the state lock) just before a release is renamed into
    place: which candidate state the release is built on. `commit_state` removes it; if the
    process dies between the release rename and the commit, the next run finds it and
    `recover_state` commits that candidate (rolls forward), so the committed state always
    matches the newest published release."""
    from etl.publish import write_text_durable

    restricted_dir = Path(restricted_dir)
    p = restricted_dir / PENDING
    write_text_durable(p, json.dumps({"run_id": run_id, "state_dir": str(link_summary["state_dir"]),
                                      "state_base": link_summary.get("state_base"),
                                      "release_dir": str(release_dir)}),
                       restricted_dir / f"{PENDING}.tmp-{os.getpid()}")
    return p


def clear_pending(restricted_dir: Path) -> None:
    (Path(restricted_dir) / PENDING).unlink(missing_ok=True)


def roll_forward(restricted_dir: Path, say=None) -> dict | None:
    """`recover_state` under the state lock, telling `say` (a progress callback or logger)
    when a dead run's commit was finished. Every run calls this before it links (and the
    Prefect flow before it looks for a run to resume). Returns what was rolled forward."""
    restricted_dir = Path(restricted_dir)
    if not restricted_dir.exists():
        return None
    with state_lock(restricted_dir):
        rolled = recover_state(restricted_dir)
    if rolled and say is not None:
        say(f"linkage state: committed the state of release {rolled['release']}, whose run stopped "
            "after publishing it")
    return rolled


def recover_state(restricted_dir: Path) -> dict | None:
    """Repair what an interrupted commit left; call holding `state_lock` (`roll_forward`).

    1. A commit interrupted between its two renames leaves no live state and the previous
       one under `.linkage_state.old-<run>`: put it back.
    2. A run that died after publishing its release and before committing its state left
       the pending marker (`mark_pending`): commit that run's candidate now (roll forward),
       so the next delivery links onto the state the published release was built from.
       A marker whose release was never published is dropped (nothing was published, the
       state is the last good one). Returns what was rolled forward, else None."""
    from etl.publish import MANIFEST as RELEASE_MANIFEST

    restricted_dir = Path(restricted_dir)
    live = restricted_dir / STATE_NAME
    if not live.exists():
        olds = sorted(restricted_dir.glob(f".{STATE_NAME}.old-*"), key=lambda p: p.stat().st_mtime)
        if olds and State(olds[-1]).exists():
            os.rename(olds[-1], live)
    marker = restricted_dir / PENDING
    if not marker.exists():
        return None
    m = json.loads(marker.read_text())
    release = Path(m["release_dir"])
    if not (release / RELEASE_MANIFEST).exists():      # died before its release was published
        clear_pending(restricted_dir)
        return None
    now = state_id(live) if State(live).exists() else None
    if now != m.get("state_base"):                     # already committed (or superseded)
        clear_pending(restricted_dir)
        return None
    if not State(Path(m["state_dir"])).exists():
        raise MedlinkError(f"release {release.name} was published from a linkage state that was never "
                           f"committed, and that state ({m['state_dir']}) is gone; restore it, or delete "
                           f"{marker.name} to link the next delivery onto the state before that release",
                           file=str(marker))
    commit_state(restricted_dir, {"state_dir": m["state_dir"], "state_base": m.get("state_base")}, m["run_id"])
    return {"run_id": m["run_id"], "release": release.name}


def link_stage(cfg, run_id: str, ingest_summaries: list[dict], *, policy: str | None = None,
               truth: Path | None = None, progress=None) -> dict:
    """Drop-in for `etl.pipeline.link` when deliveries are incremental.

    Links into a *candidate* state in the run directory (`<run>/linkage_state`): a fresh
    state on the first run (`init_state`), else a hard-linked copy of the committed
    `<restricted>/linkage_state/` that the delivery is linked onto (`link_incremental`).
    The committed state is not touched: `commit_state` makes the candidate the state once
    the release is published, so a run that fails later leaves the last good state.
    Policy: `policy`, else `cfg.merge_policy` (config `linkage.merge_policy`, default apply).
    Returns the link summary (counts) plus clusters_path, pairs_path, state_dir (the
    candidate), state_base (the identity of the state it was built on), and
    `records_paths`: the whole standardised history per source, which the later stages
    (linked gate, assemble, leak-scan vocabulary, row accounting) use instead of this
    delivery's ingest paths (clusters.parquet covers every record linked so far)."""
    from etl.linkage import load_spec
    from etl.pipeline import run_dir

    t0 = time.perf_counter()
    policy = policy or cfg.merge_policy           # etl.config took mode / merge_policy out of cfg.linkage
    spec = load_spec(cfg.linkage, cfg.path.parent)
    inputs = {s["source"]: Path(s["path"]) for s in ingest_summaries}
    rd = run_dir(cfg, run_id)
    out = rd / "linkage"
    recovered = roll_forward(cfg.restricted_dir, progress)
    live = cfg.restricted_dir / STATE_NAME
    cand = rd / STATE_NAME
    if cand.exists():                 # this stage ran before in this run: start again from the state
        shutil.rmtree(cand)
    base = state_id(live) if State(live).exists() else None
    if base is not None:
        shutil.copytree(live, cand, copy_function=_link_or_copy,
                        ignore=shutil.ignore_patterns(".*.tmp", "_tmp"))
        summary = link_incremental(inputs, cand, spec, out, policy=policy, truth=truth, progress=progress)
        summary["state"] = "incremented"
    else:
        summary = init_state(inputs, spec, cand, out, truth=truth, progress=progress)
        summary["records_total"] = summary["records"]
        summary["persons_total"] = summary["persons"]
        summary.update({"state": "initialised", "new_records": summary["records"], "changed_records": 0,
                        "unchanged_records": 0, "merges": 0, "splits": 0, "held": 0, "policy": policy})
    summary["mode"] = "incremental"
    if recovered:
        summary["recovered_commit"] = recovered
    summary["clusters_path"] = str(out / "clusters.parquet")
    summary["pairs_path"] = str(out / "pairs.parquet")
    summary["state_dir"] = str(cand)
    summary["state_base"] = base
    # the history per source, as files of this run (the candidate moves when it is committed)
    rec = out / "records"
    shutil.rmtree(rec, ignore_errors=True)     # may hold links to state files: never write through them
    rec.mkdir(parents=True)
    paths = {}
    for s, p in State(cand).snapshot(spec, rec).items():
        if Path(p).parent != rec:
            _link_or_copy(p, rec / f"{s}.parquet")
            p = rec / f"{s}.parquet"
        paths[s] = str(p)
    summary["records_paths"] = paths
    summary.setdefault("seconds", round(time.perf_counter() - t0, 3))
    return summary


def state_lock(restricted_dir: Path, timeout: float = 60.0):
    """Exclusive lock on the committed state (`<restricted>/.linkage_state.lock`): held from
    the check that the state is still the one a run linked onto until its commit."""
    from etl.locks import file_lock

    return file_lock(Path(restricted_dir) / f".{STATE_NAME}.lock", timeout,
                     "another medlink run is committing the linkage state; try again when it finishes",
                     file=str(restricted_dir))


def check_state_base(restricted_dir: Path, link_summary: dict) -> None:
    """Refuse to publish a run linked onto a state that is no longer the committed one
    (another run committed in between)."""
    live = Path(restricted_dir) / STATE_NAME
    now = state_id(live) if State(live).exists() else None
    if now != link_summary.get("state_base"):
        raise MedlinkError("the linkage state changed after this run linked its delivery (another run "
                           "committed); nothing was published: run the delivery again", file=str(live))
    if not State(Path(link_summary["state_dir"])).exists():
        raise MedlinkError("the run's linkage state candidate is missing; run the delivery again",
                           file=str(link_summary["state_dir"]))


def commit_state(restricted_dir: Path, link_summary: dict, run_id: str) -> dict:
    """Make a run's candidate state the committed `<restricted>/linkage_state/`: two renames
    (the old state aside, the candidate in), then the old state is removed; an interruption
    between the renames is undone by `recover_state` at the next run."""
    restricted_dir = Path(restricted_dir)
    check_state_base(restricted_dir, link_summary)
    live = restricted_dir / STATE_NAME
    cand = Path(link_summary["state_dir"])
    old = restricted_dir / f".{STATE_NAME}.old-{run_id}"
    if live.exists():
        os.rename(live, old)
    os.rename(cand, live)
    from etl.publish import fsync_dir

    fsync_dir(restricted_dir)
    clear_pending(restricted_dir)
    shutil.rmtree(old, ignore_errors=True)
    return {"state_dir": str(live), "state_id": state_id(live)}


# ----------------------------------------------------------------------------- focused link

def _link_focus(inputs: dict[str, Path], spec, out_dir: Path, focus_ids: pl.DataFrame, old_pairs: pl.DataFrame,
                tf_counts: dict | None, block_keys: pl.DataFrame | None = None) -> dict:
    """The engine's link() on the subset, scoring only pairs that touch a delta record
    (`focus`), with the links already accepted between unchanged records (state pairs)
    re-scored as candidates (`fixed_pairs`) instead of re-blocking the whole subset, the
    stored model's lambda (`prior_from_model`) and population term frequencies
    (`tf_counts`). Cost follows the delta, not the subset."""
    from etl.linkage import link

    fk = focus_ids.select("source", "record_id")
    fixed = (old_pairs.join(fk.rename({"source": "source_l", "record_id": "record_id_l"}),
                            on=["source_l", "record_id_l"], how="anti")
             .join(fk.rename({"source": "source_r", "record_id": "record_id_r"}),
                   on=["source_r", "record_id_r"], how="anti"))
    return link(inputs, spec, out_dir, focus=fk, fixed_pairs=fixed, prior_from_model=True,
                tf_counts=tf_counts, block_keys=block_keys, report=False)
