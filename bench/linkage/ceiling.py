"""Where a two-source linkage's errors are, and how far any decision rule could go.

    python bench/linkage/ceiling.py OUT_DIR DATA_DIR [--sources a,b]

OUT_DIR is a `medlink link` output (clusters.parquet, pairs.parquet), DATA_DIR
a bench data set with truth.parquet (bench/linkage/people.py). Two parts:

1. **Error breakdown.** Each missed true pair is put in one class: never
   scored above the pairs floor; scored, with both records left unlinked; or
   lost to a rival link. Each false link: between two records that have no
   true partner in the other source (a coincidence between people in one
   source only), or involving a record whose true partner exists.

2. **Decision ceiling.** Take the scored pairs whose two records are both
   free (unlinked, or linked to each other): that is where the model's
   threshold decides. Group them by what a linker can see of a pair (its
   comparison levels, its weight to 0.5 bits, whether each record has only
   this one free candidate; a second grouping uses the comparison levels, the
   b record's forename and sex instead of the weight) and let an oracle that
   knows the truth link exactly the groups whose true-match share is above
   one half. That is the best any rule deciding on those features can do
   (better, since the oracle fits every small group to the truth). Errors
   outside these pairs are kept as they are; the next figure also counts every
   rival loss as fixed, and the last also counts as linked every true pair
   never scored whose records agree exactly on at least two of forename,
   surname, other names, DOB and postcode (the others share at most one value,
   as thousands of unrelated pairs do). That last figure is an upper bound on
   three counts: oracle decisions, perfect one-to-one resolution and perfect
   blocking that also links what it finds.

Prints the counts and the F1 each would give; no figure is tuned here.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import polars as pl


def _f1(tp: int, fp: int, fn: int) -> float:
    return 2 * tp / (2 * tp + fp + fn)


def analyse(out: Path, data: Path, sa: str = "a", sb: str = "b") -> dict:
    truth = pl.read_parquet(data / "truth.parquet")
    rec = {s: truth.filter(pl.col("source") == s).select("record_id", "person_id") for s in (sa, sb)}
    true = rec[sa].rename({"record_id": "a"}).join(rec[sb].rename({"record_id": "b"}), on="person_id")
    cl = pl.read_parquet(out / "clusters.parquet")
    side = {s: cl.filter(pl.col("source") == s).select("record_id", "person_id") for s in (sa, sb)}
    linked = side[sa].rename({"record_id": "a"}).join(side[sb].rename({"record_id": "b"}), on="person_id")
    linked = linked.select("a", "b")
    tp = true.join(linked, on=["a", "b"]).height
    fn = true.join(linked, on=["a", "b"], how="anti").select("a", "b")
    fp = linked.join(true, on=["a", "b"], how="anti")

    levels = [c for c in pl.read_parquet_schema(out / "pairs.parquet") if c.startswith("level_")]
    p = (pl.scan_parquet(out / "pairs.parquet")
         .filter((pl.col("source_l") == sa) & (pl.col("source_r") == sb))
         .select(pl.col("record_id_l").alias("a"), pl.col("record_id_r").alias("b"), "match_weight", "linked",
                 pl.concat_str([pl.col(c).fill_null("-") for c in levels], separator="|").alias("levels"))
         .collect())
    p = p.join(true.select("a", "b", pl.lit(True).alias("same")), on=["a", "b"], how="left").with_columns(
        pl.col("same").fill_null(False))
    la, lb = linked["a"].implode(), linked["b"].implode()
    has_true_a, has_true_b = true["a"].implode(), true["b"].implode()

    # ---- 1. breakdown
    scored = fn.join(p.select("a", "b"), on=["a", "b"], how="semi")
    fn_cls = fn.with_columns(
        scored=pl.struct("a", "b").is_in(scored.select(pl.struct("a", "b")).to_series().implode()),
        a_linked=pl.col("a").is_in(la), b_linked=pl.col("b").is_in(lb))
    fields = ["forenames", "surname", "other_names", "date_of_birth", "postcode"]
    recs = {s: pl.read_parquet(data / f"{s}.parquet", columns=["record_id", *fields, "sex"]) for s in (sa, sb)}
    unscored = (fn_cls.filter(~pl.col("scored"))
                .join(recs[sa].drop("sex").rename({"record_id": "a"}), on="a")
                .join(recs[sb].drop("sex").rename({"record_id": "b"}), on="b", suffix="_b"))
    agree = pl.sum_horizontal([(pl.col(f) == pl.col(f"{f}_b")).fill_null(False).cast(pl.Int32) for f in fields])
    unscored_2 = unscored.filter(agree >= 2).height
    fn_counts = {
        "not_scored_above_floor": fn_cls.filter(~pl.col("scored")).height,
        "scored_both_unlinked": fn_cls.filter(pl.col("scored") & ~pl.col("a_linked") & ~pl.col("b_linked")).height,
        "lost_to_a_rival_link": fn_cls.filter(pl.col("scored") & (pl.col("a_linked") | pl.col("b_linked"))).height,
    }
    fp_cls = fp.with_columns(ta=pl.col("a").is_in(has_true_a), tb=pl.col("b").is_in(has_true_b))
    fp_counts = {
        "coincidence_between_one_source_only_records": fp_cls.filter(~pl.col("ta") & ~pl.col("tb")).height,
        "a_record_has_a_true_partner_elsewhere": fp_cls.filter(pl.col("ta")).height,
        "only_b_record_has_a_true_partner": fp_cls.filter(~pl.col("ta") & pl.col("tb")).height,
    }
    pattern_fn = (p.join(fn_cls.filter(pl.col("scored")), on=["a", "b"], how="semi")
                  .group_by("levels").len().sort("len", descending=True).head(5))
    pattern_fp = (p.join(fp, on=["a", "b"], how="semi").group_by("levels").len()
                  .sort("len", descending=True).head(5))

    # ---- 2. ceiling over the free pairs
    free = p.filter(pl.col("linked") | (~pl.col("a").is_in(la) & ~pl.col("b").is_in(lb)))
    free = free.with_columns(
        uniq=(pl.len().over("a") == 1) & (pl.len().over("b") == 1),
        wbin=(pl.col("match_weight") * 2).round(0))
    free = free.join(recs[sb].select(pl.col("record_id").alias("b"), "forenames", "sex"), on="b", how="left")
    cur_fp = free.filter(pl.col("linked") & ~pl.col("same")).height
    cur_fn = free.filter(~pl.col("linked") & pl.col("same")).height

    def oracle(keys: list[str]) -> tuple[int, int]:
        g = free.group_by(keys).agg(n=pl.len(), t=pl.col("same").sum())
        link = g.filter(pl.col("t") * 2 > pl.col("n"))
        return int((link["n"] - link["t"]).sum()), int(g["t"].sum() - link["t"].sum())

    fp_total, fn_total = fp.height, fn.height
    res = {"unscored_sharing_two_or_more_values": unscored_2, "true_pairs": true.height, "linked_pairs": linked.height, "tp": tp, "fp": fp_total, "fn": fn_total,
           "f1": _f1(tp, fp_total, fn_total), "fn_classes": fn_counts, "fp_classes": fp_counts,
           "free_pairs": free.height, "free_errors_now": {"fp": cur_fp, "fn": cur_fn}, "oracles": {}}
    for name, keys in (("levels+weight+unique", ["levels", "wbin", "uniq"]),
                       ("levels+forename+sex+unique", ["levels", "forenames", "sex", "uniq"])):
        ofp, ofn = oracle(keys)
        # everything outside the free pairs stays as it is ...
        fp2 = fp_total - cur_fp + ofp
        fn2 = fn_total - cur_fn + ofn
        # ... except that the rival losses are also granted (upper bound)
        fn3 = fn2 - fn_counts["lost_to_a_rival_link"]
        # ... and every true pair never scored that shares two or more values is found and linked
        fn4 = fn3 - unscored_2
        tp2, tp3, tp4 = true.height - fn2, true.height - fn3, true.height - fn4
        res["oracles"][name] = {"free_fp": ofp, "free_fn": ofn, "f1": _f1(tp2, fp2, fn2),
                                "ceiling_f1_rivals_fixed": _f1(tp3, fp2, fn3),
                                "ceiling_f1_rivals_fixed_all_scored": _f1(tp4, fp2, fn4)}
    res["top_missed_patterns"] = pattern_fn.rows()
    res["top_false_patterns"] = pattern_fp.rows()
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("data", type=Path)
    ap.add_argument("--sources", default="a,b")
    a = ap.parse_args()
    sa, sb = a.sources.split(",")
    r = analyse(a.out, a.data, sa, sb)
    print(f"true pairs {r['true_pairs']:,}  linked {r['linked_pairs']:,}  TP {r['tp']:,}  FP {r['fp']:,}  "
          f"FN {r['fn']:,}  F1 {r['f1']:.5f}")
    print("missed true pairs:", ", ".join(f"{k} {v:,}" for k, v in r["fn_classes"].items()),
          f"(of those never scored, {r['unscored_sharing_two_or_more_values']:,} share two or more exact values)")
    print("false links:      ", ", ".join(f"{k} {v:,}" for k, v in r["fp_classes"].items()))
    print("most frequent comparison patterns (levels | ...) of scored misses:")
    for lv, n in r["top_missed_patterns"]:
        print(f"  {n:>6,}  {lv}")
    print("... and of false links:")
    for lv, n in r["top_false_patterns"]:
        print(f"  {n:>6,}  {lv}")
    now = r["free_errors_now"]
    print(f"\nfree pairs (both records unlinked, or linked to each other): {r['free_pairs']:,}; "
          f"errors there now FP {now['fp']:,} FN {now['fn']:,}")
    for name, o in r["oracles"].items():
        print(f"oracle by {name:<28} FP {o['free_fp']:>6,} FN {o['free_fn']:>6,}  -> F1 {o['f1']:.5f}; "
              f"+ every rival loss fixed {o['ceiling_f1_rivals_fixed']:.5f}; "
              f"+ unscored pairs sharing 2+ values linked {o['ceiling_f1_rivals_fixed_all_scored']:.5f}")


if __name__ == "__main__":
    main()
