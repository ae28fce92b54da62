"""A simple two-source synthetic person generator for the 1M x 1M bench.

Standardised records (upper-case names, ISO dates, UK-style postcodes) for
sources `a` and `b`: `overlap` of the people appear in both, the rest in one
only; no duplicates inside a source. Names come from the etl.synth name
vocabularies by naming tradition (so forename and surname are correlated
within groups). Source b carries the errors of research/domain.md section 3:
typos, day-month swaps and single-component DOB errors, surname changes
(marriage), name order swaps, middle name used as forename, moves (new
postcode), sex errors, missing values. Two error profiles (PROFILES):

- `base` (default): the per-record-pair disagreement rates measured between
  two records of the same person in UK NHS data (CRATE validation, Cardinal et
  al. 2023, research/domain.md section 3.1 row 1, [S42]), which that table
  names as the rates to use for synthetic data: surname no match women 5.67%,
  men 1.34%; forename no match ~0.6%; typos 0.9% / 0.5% (section 3.2);
  DOB not exact 0.49%; sex mismatch 0.33%; postcode no match 30%, partial
  0.97%.
- `long-gap`: the profile the bench used first, a stress set well above those
  base rates for women's surnames (12% of women in b have a new surname, the
  ALSPAC long-gap figure of 18% of surnames being the upper bound): the
  married women who also moved are the errors no linker can resolve here
  (docs/linkage.md). Kept so that earlier figures reproduce exactly, with its
  shortcut of setting the day to 28 at most on every DOB error (so some
  errors changed two components).

    python bench/linkage/people.py N OUT_DIR [--seed S] [--profile base|long-gap]

writes OUT_DIR/a.parquet, b.parquet and truth.parquet (source, record_id, person_id, group, sex).
Vectorised: 1M people in a few seconds.
"""

from __future__ import annotations

import argparse
import string
import time
from pathlib import Path

import numpy as np
import polars as pl

ORIGIN_SHARES = {"WB": 0.70, "IND": 0.08, "PAK": 0.05, "EUR": 0.04, "AFR": 0.04, "CHN": 0.02,
                 "OASIAN": 0.03, "BAN": 0.015, "CAR": 0.015, "ARAB": 0.01}
LETTERS = np.array(list(string.ascii_uppercase))

# Error rates per b record. `long-gap` is the original profile, unchanged (same
# random stream, so its files are byte-identical to the earlier ones).
PROFILES = {
    "long-gap": {"forename_typo": 0.01, "surname_typo": 0.008, "surname_change_f": 0.12,
                 "surname_change_m": 0.0, "order_swap": 0.005, "middle_as_forename": 0.01,
                 "dob_error": 0.006, "moved": 0.25, "postcode_partial": 0.0, "sex_flip": 0.002,
                 "clip_day_to_28": True},
    # CRATE [S42]: surname no match F 5.67% = change 5.4% + swap 0.3% (+ typos
    # that leave no similarity); M 1.34% = 1.0% + 0.3%. Forename no match
    # ~0.6% = swap 0.3% + middle name as forename 0.6% of the half with one.
    # DOB 0.62% and postcode partial 1.39% because some draws change nothing
    # (a day-month swap needs day <= 12; movers already disagree): measured on
    # the true pairs at 1M they give DOB not exact ~0.49%, partial ~0.97%.
    # DOB errors change one component (section 3.2's mix), never also the day.
    "base": {"forename_typo": 0.009, "surname_typo": 0.005, "surname_change_f": 0.054,
             "surname_change_m": 0.010, "order_swap": 0.003, "middle_as_forename": 0.006,
             "dob_error": 0.0062, "moved": 0.30, "postcode_partial": 0.0139, "sex_flip": 0.0033,
             "clip_day_to_28": False},
}


def _postcodes(rng, n):
    areas = np.array(["B", "E", "G", "L", "M", "N", "S", "W", "AB", "BS", "CF", "DN", "EH", "GL", "LS",
                      "NE", "NG", "OX", "PL", "RG", "SE", "SW", "TN", "YO", "BT", "CB", "CV", "LE"])
    a = areas[rng.integers(0, areas.size, n)]
    d = rng.integers(1, 30, n).astype(str)
    s = rng.integers(0, 10, n).astype(str)
    u1 = LETTERS[rng.integers(0, 26, n)]
    u2 = LETTERS[rng.integers(0, 26, n)]
    return pl.select(pl.concat_str([pl.Series(a), pl.Series(d), pl.lit(" "), pl.Series(s), pl.Series(u1),
                                    pl.Series(u2)])).to_series()


def _typo(s: pl.Series, mask: np.ndarray, rng) -> pl.Series:
    """One keying error (substitute / delete / transpose) on the masked rows."""
    idx = np.flatnonzero(mask & s.is_not_null().to_numpy())
    vals = s.to_numpy().copy()
    for i in idx:  # only the ~1% of selected rows
        v = vals[i]
        if len(v) < 3:
            continue
        p = int(rng.integers(1, len(v) - 1))
        op = rng.random()
        if op < 0.4:
            v = v[:p] + LETTERS[rng.integers(0, 26)] + v[p + 1:]
        elif op < 0.7:
            v = v[:p] + v[p + 1:]
        else:
            v = v[:p - 1] + v[p] + v[p - 1] + v[p + 1:]
        vals[i] = v
    return pl.Series(s.name, vals.tolist(), dtype=pl.String)


def generate(n: int, out: Path, seed: int = 1, overlap: float = 0.8, profile: str = "base") -> dict:
    from etl.synth.names import vocabularies

    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; choose from {sorted(PROFILES)}")
    e = PROFILES[profile]
    t0 = time.time()
    rng = np.random.default_rng(seed)
    voc = vocabularies(seed)
    n_people = int(n / (1 - (1 - overlap) / 2) + 0.5)    # so each source has ~n records
    origins = np.array(list(ORIGIN_SHARES))
    org = rng.choice(origins.size, n_people, p=np.array(list(ORIGIN_SHARES.values())))
    sex = np.where(rng.random(n_people) < 0.5, "F", "M")
    given = np.empty(n_people, object)
    middle = np.empty(n_people, object)
    surname = np.empty(n_people, object)
    for k, o in enumerate(origins):
        sel = org == k
        for sx, key in (("F", "f"), ("M", "m")):
            s2 = sel & (sex == sx)
            pool = voc[o][key]
            # Zipf-like popularity over the vocabulary
            w = 1.0 / np.arange(1, pool.size + 1) ** 0.8
            given[s2] = pool[rng.choice(pool.size, s2.sum(), p=w / w.sum())]
            middle[s2] = pool[rng.choice(pool.size, s2.sum())]
        lp = voc[o]["l"]
        w = 1.0 / np.arange(1, lp.size + 1) ** 0.7
        surname[sel] = lp[rng.choice(lp.size, sel.sum(), p=w / w.sum())]
    middle[rng.random(n_people) < 0.5] = None
    dob = (np.datetime64("1950-01-01") + rng.integers(0, 365 * 55, n_people)).astype("datetime64[D]")
    people = pl.DataFrame({
        "person_id": np.arange(n_people).astype(str),
        "group": origins[org], "sex": sex,
        "forenames": pl.Series(given.tolist(), dtype=pl.String).str.to_uppercase(),
        "middle": pl.Series(middle.tolist(), dtype=pl.String).str.to_uppercase(),
        "surname": pl.Series(surname.tolist(), dtype=pl.String).str.to_uppercase().str.replace_all("-", " "),
        "date_of_birth": pl.Series(dob).cast(pl.Date),
        "postcode": _postcodes(rng, n_people),
    })
    # who is in which source
    r = rng.random(n_people)
    one_side = (1 - overlap) / (1 + overlap)  # share only-in-a == share only-in-b
    in_a = r >= one_side
    in_b = (r < one_side) | (r >= 2 * one_side)
    a = people.filter(pl.Series(in_a))
    b = people.filter(pl.Series(in_b))
    m = b.height

    def rate(p):
        return rng.random(m) < p

    # --- errors on b
    b = b.with_columns(_typo(b["forenames"], rate(e["forename_typo"]), rng),
                       _typo(b["surname"], rate(e["surname_typo"]), rng))
    married = (b["sex"] == "F").to_numpy() & rate(e["surname_change_f"])
    if e["surname_change_m"]:
        married |= (b["sex"] == "M").to_numpy() & rate(e["surname_change_m"])
    new_sn = voc["WB"]["l"][rng.integers(0, voc["WB"]["l"].size, m)]
    b = b.with_columns(pl.when(pl.Series(married)).then(pl.Series(new_sn.tolist(), dtype=pl.String).str.to_uppercase())
                       .otherwise(pl.col("surname")).alias("surname"))
    swap = rate(e["order_swap"])
    mid = rate(e["middle_as_forename"]) & b["middle"].is_not_null().to_numpy()
    b = b.with_columns(
        pl.when(pl.Series(swap)).then(pl.col("surname")).when(pl.Series(mid)).then(pl.col("middle"))
        .otherwise(pl.col("forenames")).alias("forenames"),
        pl.when(pl.Series(swap)).then(pl.col("forenames")).otherwise(pl.col("surname")).alias("surname"))
    # DOB: 1/3 day-month swap (day <= 12), 1/3 day error, 1/6 year +-1, 1/6 other
    kind = rng.random(m)
    derr = rate(e["dob_error"])
    d = b["date_of_birth"]
    y, mo, dd = d.dt.year().to_numpy(), d.dt.month().to_numpy(), d.dt.day().to_numpy()
    sw = derr & (kind < 1 / 3) & (dd <= 12)
    y2, mo2, dd2 = y.copy(), mo.copy(), dd.copy()
    mo2[sw], dd2[sw] = dd[sw], mo[sw]
    de = derr & (kind >= 1 / 3) & (kind < 2 / 3)
    dd2[de] = np.clip(dd[de] + rng.choice([-1, 1, 10], de.sum()), 1, 28)
    ye = derr & (kind >= 2 / 3) & (kind < 5 / 6)
    y2[ye] = y[ye] + rng.choice([-1, 1], ye.sum())
    ot = derr & (kind >= 5 / 6)
    mo2[ot] = rng.integers(1, 13, ot.sum())
    if e["clip_day_to_28"]:  # the first profile's shortcut: a 29th-31st also lost its day
        dd2 = np.minimum(dd2, 28)
    else:                    # only where the changed year or month makes the day invalid
        dim = (pl.select(pl.date(pl.Series(y2), pl.Series(mo2), 1).dt.month_end().dt.day()).to_series()
               .to_numpy())
        dd2 = np.minimum(dd2, dim)
    dd2 = np.where(derr, dd2, dd)
    new_dob = pl.select(pl.date(pl.Series(y2), pl.Series(mo2), pl.Series(dd2))).to_series()
    b = b.with_columns(new_dob.alias("date_of_birth"))
    moved = rate(e["moved"])
    b = b.with_columns(pl.when(pl.Series(moved)).then(_postcodes(rng, m)).otherwise(pl.col("postcode")).alias("postcode"),
                       pl.when(pl.Series(rate(e["sex_flip"]))).then(pl.when(pl.col("sex") == "F").then(pl.lit("M"))
                                                            .otherwise(pl.lit("F"))).otherwise(pl.col("sex")).alias("sex"))
    if e["postcode_partial"]:  # same sector, another unit (a neighbour, or a recording slip)
        part = rate(e["postcode_partial"]) & ~moved
        unit = pl.Series(LETTERS[rng.integers(0, 26, m)]) + pl.Series(LETTERS[rng.integers(0, 26, m)])
        b = b.with_columns(pl.when(pl.Series(part)).then(pl.col("postcode").str.head(-2) + unit)
                           .otherwise(pl.col("postcode")).alias("postcode"))
    for c, p in (("postcode", 0.05), ("sex", 0.01), ("middle", 0.2)):
        b = b.with_columns(pl.when(pl.Series(rate(p))).then(None).otherwise(pl.col(c)).alias(c))
    out.mkdir(parents=True, exist_ok=True)
    truth = []
    for name, f in (("a", a), ("b", b)):
        f = f.sample(fraction=1.0, shuffle=True, seed=seed + len(name))
        f = f.with_columns(pl.lit(name).alias("source"),
                           (pl.lit(name.upper()) + pl.int_range(0, f.height).cast(pl.String)).alias("record_id"),
                           pl.col("middle").alias("other_names"))
        f.select("source", "record_id", "forenames", "surname", "other_names", "date_of_birth", "sex",
                 "postcode").write_parquet(out / f"{name}.parquet")
        truth.append(f.select("source", "record_id", "person_id", "group", "sex"))
    pl.concat(truth).write_parquet(out / "truth.parquet")
    return {"profile": profile, "people": n_people, "a": a.height, "b": b.height, "matches": int((in_a & in_b).sum()),
            "seconds": round(time.time() - t0, 1)}


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("n", type=int)
    ap.add_argument("out", type=Path)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--profile", choices=sorted(PROFILES), default="base")
    a = ap.parse_args()
    print(generate(a.n, a.out, a.seed, profile=a.profile))
