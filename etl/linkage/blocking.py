"""Blocking: candidate pairs as the union of cheap equality rules.

Each rule is a tuple of keys (a field, optionally transformed: first n
characters, first token, soundex, year, postcode district, ...). A record's
key for a rule is a 64-bit hash of its key values (0 = some value missing,
never blocks). Pairs are produced per task (source pair) by joining records
on the key, in chunks of bounded size; a pair found by an earlier rule (or by
the deterministic identifier pass) is dropped from later rules, so every
candidate pair is scored once and tagged with the first rule that found it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import polars as pl

from etl.linkage.records import DATE_FORMATS, Records
from etl.linkage.spec import BlockKey, BlockRule

_PHONETIC = {"soundex", "metaphone", "nysiis"}


def _date_expr(col: str, dtype) -> pl.Expr:
    if dtype == pl.Date:
        return pl.col(col)
    if isinstance(dtype, pl.Datetime):
        return pl.col(col).dt.date()
    st = pl.col(col).cast(pl.String).str.strip_chars()
    return pl.coalesce([st.str.to_date(f, strict=False) for f in DATE_FORMATS])


def key_expr(rec: Records, k: BlockKey) -> pl.Expr:
    t = k.transform or "identity"
    if isinstance(k.field, list):
        dtype = pl.String
        c = pl.concat_str([pl.col(f).cast(pl.String) for f in k.field], separator=" ", ignore_nulls=True)
    else:
        dtype = rec.df.schema[k.field]
        c = pl.col(k.field)
    if t in ("year", "month", "day", "year_month", "month_day"):
        d = _date_expr(k.fields[0], dtype)
        return {"year": d.dt.year().cast(pl.String), "month": d.dt.month().cast(pl.String),
                "day": d.dt.day().cast(pl.String),
                "year_month": d.dt.strftime("%Y-%m"), "month_day": d.dt.strftime("%m-%d")}[t]
    if dtype == pl.Date:
        s = c.dt.strftime("%Y%m%d")
    else:
        s = c.cast(pl.String)
    if t == "identity":
        return s
    if t == "first":
        return s.str.slice(0, k.n or 1)
    if t == "last":
        return s.str.slice(-(k.n or 1), k.n or 1)
    if t == "first_token":
        return s.str.split(" ").list.first()
    if t == "sorted_tokens":
        return s.str.split(" ").list.sort().list.join(" ")
    if t == "digits":
        return s.str.replace_all(r"\D", "")
    if t in ("area", "district", "sector"):
        pc = s.str.to_uppercase().str.replace_all(" ", "", literal=True)
        outward = pc.str.head(-3)
        if t == "district":
            return outward
        if t == "sector":
            return pl.concat_str([outward, pc.str.slice(-3, 1)], separator=" ")
        return outward.str.extract(r"^([A-Z]+)", 1)
    if t in _PHONETIC:
        return s  # applied on distinct values in `record_keys`
    raise ValueError(t)


def _phonetic(series: pl.Series, how: str) -> pl.Series:
    import jellyfish

    fn = {"soundex": jellyfish.soundex, "metaphone": jellyfish.metaphone, "nysiis": jellyfish.nysiis}[how]
    uniq = series.drop_nulls().unique()
    # one call per distinct value (not per pair): vocabulary-sized
    mapped = pl.Series([fn(v.replace(" ", "")) if v else None for v in uniq.to_list()], dtype=pl.String)
    lut = pl.DataFrame({"v": uniq, "p": mapped})
    return pl.DataFrame({"v": series}).join(lut, on="v", how="left", maintain_order="left")["p"]


def record_keys(rec: Records, rule: BlockRule) -> np.ndarray:
    """uint64 key per record for this rule; 0 where any key part is null/empty."""
    cache_key = f"block:{rule.describe()}"
    if cache_key in rec._cache:
        return rec._cache[cache_key]
    parts = []
    for k in rule.keys:
        pkey = f"blockpart:{k.describe()}"
        if pkey not in rec._cache:
            s = rec.df.select(key_expr(rec, k).alias("v")).to_series()
            if k.transform in _PHONETIC:
                s = _phonetic(s, k.transform)
            if s.dtype != pl.String:
                s = s.cast(pl.String)
            rec._cache[pkey] = pl.select(pl.when(s.str.len_chars() > 0).then(s)).to_series()
        parts.append(rec._cache[pkey].alias(f"k{len(parts)}"))
    frame = pl.DataFrame(parts)
    anynull = frame.select(pl.any_horizontal(pl.all().is_null())).to_series().to_numpy()
    h = frame.select(pl.struct(pl.all()).hash(seed=7)).to_series().to_numpy().astype(np.uint64)
    h[h == 0] = 1
    h[anynull] = 0
    rec._cache[cache_key] = h
    return h


def all_record_keys(rec: Records, rules: list[BlockRule]) -> list[np.ndarray]:
    """`record_keys` for every rule. The per-part key strings (4.4M records x ~20 parts
    at 1M doctors, ~3 GiB) are only needed to hash the rules' keys: each is dropped after
    the last rule using it (a training session re-derives its own few)."""
    out = []
    for i, r in enumerate(rules):
        out.append(record_keys(rec, r))
        later = {f"blockpart:{k.describe()}" for r2 in rules[i + 1:] for k in r2.keys}
        for k in [k for k in rec._cache if isinstance(k, str) and k.startswith("blockpart:") and k not in later]:
            del rec._cache[k]
    return out


@dataclass
class RuleStats:
    rule: str
    task: str
    pairs: int = 0        # pairs this rule generates on its own
    new_pairs: int = 0    # pairs not already found by an earlier rule / the identifier pass
    skipped_blocks: int = 0


def _block_frames(keys: np.ndarray, lo: int, hi: int) -> pl.DataFrame:
    k = keys[lo:hi]
    gid = np.arange(lo, hi, dtype=np.int32)
    ok = k != 0
    return pl.DataFrame({"k": k[ok], "g": gid[ok]})


def _counts(keys: np.ndarray, lo: int, hi: int, cache: dict | None) -> pl.DataFrame:
    """Records per key in one source's range. `cache`: one dict per rule (its keys), filled
    per source range, so every task pairing the source reuses the counts."""
    if cache is not None and (lo, hi) in cache:
        return cache[(lo, hi)]
    out = _block_frames(keys, lo, hi).group_by("k").agg(pl.len().alias("n"))
    if cache is not None:
        cache[(lo, hi)] = out
    return out


def block_sizes(keys: np.ndarray, a: tuple[int, int], b: tuple[int, int], dedupe: bool,
                cache: dict | None = None) -> pl.DataFrame:
    fa = _counts(keys, *a, cache).rename({"n": "na"})
    if dedupe:
        return fa.with_columns((pl.col("na").cast(pl.Int64) * (pl.col("na").cast(pl.Int64) - 1) // 2)
                               .alias("pairs"))
    fb = _counts(keys, *b, cache).rename({"n": "nb"})
    return fa.join(fb, on="k", how="inner").with_columns(
        (pl.col("na").cast(pl.Int64) * pl.col("nb").cast(pl.Int64)).alias("pairs"))


def rule_pairs(keys: np.ndarray, a: tuple[int, int], b: tuple[int, int], dedupe: bool,
               chunk_pairs: int, max_block_pairs: int | None = None, key_fraction: float = 1.0,
               seed: int = 0, part: tuple[int, int] | None = None, focus: np.ndarray | None = None,
               focus_masked: bool = False, size_cache: dict | None = None
               ) -> tuple[Iterator[tuple[np.ndarray, np.ndarray]], int, int]:
    """Pairs (l, r) with equal non-null key between ranges a and b, chunked.

    `focus` (bool per record): only the pairs with a focus record on one side, from the
    blocks holding one (`focus_masked`: `keys` is already `focus_keys(keys, focus)`);
    blocks too big to pair are judged on their full size; `total` counts whole blocks.
    Returns (iterator, total pairs that will be produced, skipped blocks).
    `key_fraction` < 1 keeps a pseudo-random subset of blocks (for training)."""
    if focus is not None and not focus_masked:
        # only the blocks holding a focus record (whole blocks: sizes stay the full sizes)
        keys = focus_keys(keys, focus)
    sizes = block_sizes(keys, a, b, dedupe, None if focus is not None else size_cache).filter(pl.col("pairs") > 0)
    skipped = 0
    if max_block_pairs:
        big = sizes["pairs"] > max_block_pairs
        skipped = int(big.sum())
        sizes = sizes.filter(~big)
    if key_fraction < 1.0:
        thresh = np.uint64(int(key_fraction * 2**63))
        mixed = (sizes["k"].to_numpy().astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15 + seed)) >> np.uint64(1)
        sizes = sizes.filter(pl.Series(mixed < thresh))
    if part is not None and part[1] > 1:
        # block-wise scoring (Dask fan-out): this worker's share of the keys
        h = (sizes["k"].to_numpy().astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)) >> np.uint64(40)
        sizes = sizes.filter(pl.Series(h % np.uint64(part[1]) == np.uint64(part[0])))
    total = int(sizes["pairs"].sum() or 0)
    sizes = sizes.sort("k").with_columns(
        (pl.col("pairs").cum_sum() // max(chunk_pairs, 1)).alias("chunk"))
    fa = _block_frames(keys, *a)
    fb = fa if dedupe else _block_frames(keys, *b)

    def gen():
        if total == 0:
            return
        for _, part in sizes.select("k", "chunk").group_by("chunk", maintain_order=True):
            ks = part.select("k")
            la = fa.join(ks, on="k", how="semi")
            lb = la if dedupe else fb.join(ks, on="k", how="semi")
            if focus is not None:
                yield _focus_join(la, lb, focus, dedupe)
                continue
            j = la.join(lb, on="k", how="inner", suffix="_r")
            if dedupe:
                j = j.filter(pl.col("g") < pl.col("g_r"))
            yield j["g"].to_numpy(), j["g_r"].to_numpy()

    return gen(), total, skipped


def _focus_join(la: pl.DataFrame, lb: pl.DataFrame, focus: np.ndarray, dedupe: bool
                ) -> tuple[np.ndarray, np.ndarray]:
    """The pairs of equal key between la and lb with a focus record on one side, each
    once (l < r within a source)."""
    fa = la.filter(pl.Series(focus[la["g"].to_numpy()]))
    if dedupe:
        j = fa.join(la, on="k", how="inner", suffix="_r").filter(pl.col("g") != pl.col("g_r"))
        g, gr = j["g"].to_numpy(), j["g_r"].to_numpy()
        # a pair of two focus records comes twice: keep (smaller, larger)
        keep = ~focus[gr] | (g < gr)
        g, gr = g[keep], gr[keep]
        return np.minimum(g, gr), np.maximum(g, gr)
    fb = lb.filter(pl.Series(focus[lb["g"].to_numpy()]))
    nfa = la.filter(pl.Series(~focus[la["g"].to_numpy()]))
    j1 = fa.join(lb, on="k", how="inner", suffix="_r")
    j2 = nfa.join(fb, on="k", how="inner", suffix="_r")
    return (np.concatenate([j1["g"].to_numpy(), j2["g"].to_numpy()]),
            np.concatenate([j1["g_r"].to_numpy(), j2["g_r"].to_numpy()]))


def focus_keys(keys: np.ndarray, focus: np.ndarray) -> np.ndarray:
    """`keys` with 0 (no block) for every record whose block holds no focus record."""
    fk = keys[focus]
    fk = fk[fk != 0]
    if fk.size == 0:
        return np.zeros_like(keys)
    # hashed membership: a sorted search of every record's key is ~10x slower
    hit = pl.Series(keys).is_in(pl.Series(fk).unique().implode()).to_numpy()
    return np.where(hit, keys, np.uint64(0))


def drop_found(li: np.ndarray, ri: np.ndarray, earlier: list[np.ndarray],
               found_sorted: np.ndarray | None, n: int, eq_codes: list[np.ndarray] | None = None,
               found_eq_sorted: np.ndarray | None = None) -> np.ndarray:
    """Mask of pairs NOT already produced by an earlier rule or in `found_sorted`
    (sorted int64 codes l*n+r of pairs found outside blocking).

    `found_eq_sorted`: found pairs whose two records share a code in one of
    `eq_codes` (exact identifier pairs): only candidates sharing such a code are
    looked up there (at 1M doctors: millions of identifier pairs, and a binary
    search of each of ~60M candidates in them cost 12 s)."""
    keep = np.ones(li.size, bool)
    for k in earlier:
        kl = k[li]
        keep &= ~((kl != 0) & (kl == k[ri]))

    def lookup(sorted_codes, sel):
        idx = np.flatnonzero(sel)
        if idx.size == 0:
            return
        code = li[idx].astype(np.int64) * n + ri[idx]
        pos = np.searchsorted(sorted_codes, code)
        pos[pos >= sorted_codes.size] = sorted_codes.size - 1
        keep[idx[sorted_codes[pos] == code]] = False

    if found_sorted is not None and found_sorted.size:
        lookup(found_sorted, keep)
    if found_eq_sorted is not None and found_eq_sorted.size:
        same = np.zeros(li.size, bool)
        for c in eq_codes or []:
            cl = c[li]
            same |= (cl != 0) & (cl == c[ri])
        lookup(found_eq_sorted, keep & same)
    return keep


def pairs_satisfy(keys: np.ndarray, li: np.ndarray, ri: np.ndarray) -> np.ndarray:
    kl = keys[li]
    return (kl != 0) & (kl == keys[ri])
