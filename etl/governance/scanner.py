"""Leak scanner: counts, per detector and per column, of identifier-like values
in every column of every Parquet file of a release directory.

Detectors (zero expected on every column):

- ``name``: whole words of >= 3 letters that are forenames/surnames of the
  delivery (``input_vocab["names"]``), except words the rules themselves emit
  (hierarchy labels, event types, ``scanner.allow_tokens``);
- ``email``: anything shaped like an e-mail address, or equal to an input e-mail;
- ``postcode``: a full UK unit postcode, or an input postcode (spaces ignored);
- ``date_of_birth``: a day-precision date (Date/Datetime value, or a string in
  ISO, d/m/y, DDMMYYYY, DMMYYYY or YYYYMMDD form) equal to an input date of
  birth. A Date column whose values are all on the 1st of a month is month
  precision and is not a DOB carrier;
- ``gmc_number``: a free-standing 7-digit number (string or integer);
- ``ucas_id``: a free-standing 10-digit number (optionally 3-3-4 hyphenated);
- ``nhs_number``: 10 digits (optionally 3-3-4 spaced) with a valid mod-11 check digit;
- ``identifier``: a value equal to an input identifier (>= 6 characters);
- ``digest``: a hex (or base64) string equal, in full or as a >= 16-hex prefix,
  to the MD5, SHA-1, SHA-256 or HMAC-SHA256 (with the key, if given) of an input
  identifier, person id, e-mail or postcode, with or without a domain prefix
  (``gmc|`` for 7 digits, ``ucas|`` for 10, ``person|`` otherwise);
- ``restricted_value``: a value equal to a restricted-zone-only value passed in
  (the internal person keys).

Plus the schema allow-list: each table the rules know must have exactly the
columns the rules release. Values are never reported, only counts.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import hmac
import re
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import polars as pl

DETECTORS = ("name", "email", "postcode", "date_of_birth", "gmc_number", "ucas_id", "nhs_number",
             "identifier", "digest", "restricted_value")

NB = r"(?:^|[^A-Za-z0-9])"       # no alphanumeric before
NA = r"(?:[^A-Za-z0-9]|$)"       # no alphanumeric after
RE_EMAIL = r"[A-Za-z0-9._%+\-]+@[A-Za-z0-9.\-]+\.[A-Za-z]{2,}"
RE_POSTCODE = (r"(?i)" + NB + r"(?:GIR ?0AA|[A-PR-UWYZ][A-HK-Y]?[0-9][0-9A-HJKMNPR-Y]? ?[0-9]"
               r"[ABD-HJLNP-UW-Z]{2})" + NA)
RE_GMC = NB + r"[0-9]{7}" + NA
RE_TEN = NB + r"[0-9]{3}[ -]?[0-9]{3}[ -]?[0-9]{4}" + NA
RE_TEN_EXTRACT = r"(?:^|[^A-Za-z0-9])([0-9]{3}[ -]?[0-9]{3}[ -]?[0-9]{4})(?:[^A-Za-z0-9]|$)"
RE_HEX = r"[0-9a-fA-F]{16,}"
RE_B64 = r"[A-Za-z0-9+/_\-]{22,}={0,2}"
DATE_PATTERNS = [   # free-standing (not inside a longer alphanumeric token, e.g. a hex pseudonym)
    (NB + r"([0-9]{4})-([0-9]{1,2})-([0-9]{1,2})" + NA, "ymd"),
    (NB + r"([0-9]{1,2})[/.\-]([0-9]{1,2})[/.\-]([0-9]{4})" + NA, "dmy"),
    (NB + r"([0-9]{1,2})([0-9]{2})([0-9]{4})" + NA, "dmy"),      # DDMMYYYY / DMMYYYY (LRMP)
    (NB + r"([0-9]{4})([0-9]{2})([0-9]{2})" + NA, "ymd"),        # YYYYMMDD
]
DATE_RE = "|".join(p for p, _ in DATE_PATTERNS)
PREFIX_HEX = 16


def nhs_check_ok(digits: str) -> bool:
    """NHS number mod-11 check (10 digits)."""
    if len(digits) != 10 or not digits.isdigit():
        return False
    total = sum(int(d) * w for d, w in zip(digits[:9], range(10, 1, -1)))
    check = 11 - total % 11
    if check == 11:
        check = 0
    return check != 10 and check == int(digits[9])


# ---------------------------------------------------------------------- vocabulary

def _nonempty(x) -> bool:
    if x is None:
        return False
    if isinstance(x, pl.Series):
        return x.len() > 0
    return bool(x)


def _strings(x) -> pl.Series:
    """Non-null values as a String Series (str() of each, as before)."""
    if x is None:
        return pl.Series([], dtype=pl.String)
    if isinstance(x, pl.Series):
        return x.drop_nulls().cast(pl.String)
    return pl.Series([str(i) for i in x if i is not None], dtype=pl.String)


def _sorted_unique(s: pl.Series) -> pl.Series:
    """Distinct values (for is_in lookups; order does not matter, so no sort)."""
    return s.unique()


def _dates(x) -> set[dt.date]:
    out: set[dt.date] = set()
    if x is None:
        return out
    if isinstance(x, pl.Series):
        if x.dtype in (pl.Date, pl.Datetime):
            return set(x.drop_nulls().cast(pl.Date).unique().to_list())
        x = x.drop_nulls().unique().to_list()
    for d in x:
        if isinstance(d, dt.datetime):
            out.add(d.date())
        elif isinstance(d, dt.date):
            out.add(d)
        elif isinstance(d, str):
            try:
                out.add(dt.date.fromisoformat(d[:10]))
            except ValueError:
                pass
    return out


class Vocabulary:
    """The delivery's identifying values, prepared for lookups. Lives in memory
    inside the restricted zone only.

    Each entry of `input_vocab` may be a Python iterable or a polars Series; a
    Series is prepared without a Python loop (a national delivery holds tens of
    millions of values). The digest table (8-byte prefixes of MD5, SHA-1,
    SHA-256 and HMAC of every identifier, e-mail and postcode) is built on first
    use only, i.e. only when a release cell that is not an issued pseudonym
    looks like a hex or base64 digest (see `issued_tokens`)."""

    def __init__(self, input_vocab: dict | None, *, key=None, extra_identifiers: Iterable[str] = (),
                 restricted_values: Iterable[str] = (), allow_tokens: Iterable[str] = (),
                 issued_tokens: Iterable[str] = ()):
        v = input_vocab or {}
        self.has = {k: _nonempty(v.get(k)) for k in ("names", "identifiers", "dates_of_birth", "postcodes", "emails")}
        allow = pl.Series(sorted({t.upper() for t in allow_tokens}), dtype=pl.String)
        names = _strings(v.get("names"))
        names = names.filter(names.str.len_chars() >= 3).str.to_uppercase()
        self.s_names = _sorted_unique(names.filter(~names.is_in(allow.implode())))
        ids = pl.concat([_strings(v.get("identifiers")), _strings(extra_identifiers)]).str.strip_chars()
        self._all_ids = ids
        self.s_ids = _sorted_unique(ids.filter(ids.str.len_chars() >= 6))
        em = _strings(v.get("emails"))
        self.s_emails = _sorted_unique(em.filter(em != "").str.strip_chars().str.to_lowercase())
        pc = _strings(v.get("postcodes"))
        self.s_postcodes = _sorted_unique(pc.filter(pc != "").str.replace_all(r"\s+", "").str.to_uppercase())
        self.dobs: set[dt.date] = _dates(v.get("dates_of_birth"))
        rv = _strings(restricted_values)
        self.s_restricted = _sorted_unique(rv.filter(rv != ""))
        self.s_dobs = pl.Series(sorted(self.dobs), dtype=pl.Date)
        self.s_issued = _sorted_unique(_strings(issued_tokens))
        self._key = key
        self._digest_prefixes: np.ndarray | None = None
        self.flag_cache: pl.DataFrame | None = None   # per-value detector flags (scan_strings)
        # values the digest table would be built from (identifiers, e-mails, postcodes; an identifier
        # that is also a postcode counts twice here, once in the table)
        self.n_digest_inputs = self._all_ids.len() + self.s_emails.len() + self.s_postcodes.len()

    @property
    def digest_prefixes(self) -> np.ndarray:
        if self._digest_prefixes is None:
            vals = pl.concat([self._all_ids, self.s_emails, self.s_postcodes]).unique().to_list()
            self._digest_prefixes = self._digests(vals, self._key)
        return self._digest_prefixes

    @property
    def digests_computed(self) -> bool:
        return self._digest_prefixes is not None

    @staticmethod
    def _digests(values, key) -> np.ndarray:
        """Sorted uint64 of the first 8 bytes of every digest of every value:
        MD5, SHA-1, SHA-256 and (with the key) HMAC-SHA256 of the value, and
        SHA-256 / HMAC of it under the domain prefix its shape suggests
        (gmc| for 7 digits, ucas| for 10 digits, person| otherwise)."""
        secret = key._secret if key is not None else None  # noqa: SLF001
        sha256, md5, sha1, hd = hashlib.sha256, hashlib.md5, hashlib.sha1, hmac.digest
        chunks = []
        for v in values:
            b = v.encode()
            dom = b"gmc|" if (len(v) == 7 and v.isdigit()) else (b"ucas|" if (len(v) == 10 and v.isdigit())
                                                                 else b"person|")
            chunks.append(sha256(b).digest()[:8])
            chunks.append(md5(b).digest()[:8])
            chunks.append(sha1(b).digest()[:8])
            chunks.append(sha256(dom + b).digest()[:8])
            if secret is not None:
                chunks.append(hd(secret, b, "sha256")[:8])
                chunks.append(hd(secret, dom + b, "sha256")[:8])
        if not chunks:
            return np.zeros(0, dtype=np.uint64)
        arr = np.frombuffer(b"".join(chunks), dtype=">u8").astype(np.uint64)
        return np.unique(arr)

    def issued(self, vals: pl.Series) -> pl.Series:
        """Which values are pseudonyms the pseudonymiser issued for this release
        (random tokens, or HMACs under a per-release derived key: neither is in
        the digest family above, and tests/test_governance_release.py checks
        that no pseudonym is a digest of any identifier)."""
        if self.s_issued.len() == 0:
            return pl.Series([False] * vals.len(), dtype=pl.Boolean)
        return _isin(vals, self.s_issued)

    def digest_hit_ints(self, arr: np.ndarray) -> np.ndarray:
        if arr.size == 0 or self.digest_prefixes.size == 0:
            return np.zeros(arr.size, dtype=bool)
        idx = np.searchsorted(self.digest_prefixes, arr)
        idx[idx >= self.digest_prefixes.size] = 0
        return self.digest_prefixes[idx] == arr

    def digest_hit(self, hexes: list[str]) -> np.ndarray:
        if not hexes or self.digest_prefixes.size == 0:
            return np.zeros(len(hexes), dtype=bool)
        arr = np.array([int(h[:PREFIX_HEX], 16) for h in hexes], dtype=np.uint64)
        idx = np.searchsorted(self.digest_prefixes, arr)
        idx[idx >= self.digest_prefixes.size] = 0
        return self.digest_prefixes[idx] == arr


# ---------------------------------------------------------------------- per column

_HASHED: dict[int, tuple[pl.Series, np.ndarray, np.ndarray]] = {}


def _hash_index(big: pl.Series) -> tuple[np.ndarray, np.ndarray]:
    """Sorted 64-bit hashes of a vocabulary Series and their positions, built once
    per Series per scan (the scanner asks each vocabulary once per column)."""
    hit = _HASHED.get(id(big))
    if hit is not None and hit[0] is big:
        return hit[1], hit[2]
    h = big.hash(seed=0).to_numpy()
    order = np.argsort(h, kind="stable")
    _HASHED[id(big)] = (big, h[order], order)
    return h[order], order


def _isin(small: pl.Series, big: pl.Series) -> pl.Series:
    """small.is_in(big), exact. With a large vocabulary the candidates are
    first narrowed by 64-bit hash (binary search in the vocabulary's sorted
    hashes, built once), and the exact is_in runs against those few values."""
    if big.len() > 4 * max(small.len(), 1):
        hb, order = _hash_index(big)
        hs = np.sort(small.hash(seed=0).to_numpy())   # sorted needles: ~20x faster search
        lo = np.searchsorted(hb, hs, side="left")
        hi = np.searchsorted(hb, hs, side="right")
        sel = hi > lo
        if sel.any():
            multi = sel & (hi - lo > 1)         # equal hashes in the vocabulary (rare)
            idx = np.concatenate([order[lo[sel & ~multi]]]
                                 + [order[a:b] for a, b in zip(lo[multi], hi[multi])])
            big = big.gather(np.unique(idx))
        else:
            big = big.clear()
    return small.is_in(big.implode())


def _empty_counts() -> dict[str, int]:
    return {d: 0 for d in DETECTORS}


def _parse_dates(s: str) -> list[dt.date]:
    out = []
    for pat, order in DATE_PATTERNS:
        for m in re.finditer(pat, s):
            a, b, c = (int(x) for x in m.groups())
            y, mo, d = (a, b, c) if order == "ymd" else (c, b, a)
            try:
                out.append(dt.date(y, mo, d))
            except ValueError:
                pass
    return out


def scan_strings(uniq: pl.DataFrame, vocab: Vocabulary) -> dict[str, int]:
    """uniq: columns v (String, non-null unique values) and n (row count)."""
    c = _empty_counts()
    if uniq.height == 0:
        return c
    flags = _cached_flags(uniq.get_column("v"), vocab)
    n = uniq.get_column("n")
    for d in DETECTORS:
        c[d] = int(n.filter(flags.get_column(d)).sum())
    return c


# a column with at least this many distinct values has its per-value flags kept for the rest of
# the scan: the pseudonym column of the events table holds the doctors table's pseudonyms again
# (1.6 M distinct values at 1M doctors, ~5 s of detectors)
FLAG_CACHE_MIN = 100_000


def _cached_flags(vals: pl.Series, vocab: Vocabulary) -> pl.DataFrame:
    """value_flags(vals), reusing the flags of values already scanned in a large column
    (every detector's flag is a function of the value alone, for one vocabulary)."""
    if vals.len() < FLAG_CACHE_MIN:
        return value_flags(vals, vocab)
    cache = vocab.flag_cache
    if cache is None:
        vocab.flag_cache = value_flags(vals, vocab)
        return vocab.flag_cache
    key = pl.DataFrame({"v": vals.cast(pl.String)})
    j = key.join(cache, on="v", how="left", maintain_order="left")
    miss = j.get_column(DETECTORS[0]).is_null()
    if miss.any():
        vocab.flag_cache = pl.concat([cache, value_flags(vals.filter(miss), vocab)])
        j = key.join(vocab.flag_cache, on="v", how="left", maintain_order="left")
    return j


def value_flags(vals: pl.Series, vocab: Vocabulary) -> pl.DataFrame:
    """Per distinct value (non-null, unique): column v and one Boolean column per detector."""
    uniq = pl.DataFrame({"v": vals.cast(pl.String)})
    m = uniq.height
    out: dict[str, pl.Series] = {d: pl.Series(d, [False] * m, dtype=pl.Boolean) for d in DETECTORS}

    def rows_mask(idx: pl.Series) -> pl.Series:
        return pl.Series([False] * m, dtype=pl.Boolean).scatter(idx.to_list(), True)

    v = pl.col("v")
    flags = uniq.select(
        v.str.contains(RE_EMAIL).alias("email"),
        v.str.contains(RE_POSTCODE).alias("postcode"),
        v.str.contains(RE_GMC).alias("gmc"),
        v.str.contains(RE_TEN).alias("ten"),
        v.str.contains(RE_HEX).alias("hex"),
        v.str.contains(RE_B64).alias("b64"),
        v.str.contains(DATE_RE).alias("datey"),
        v.str.contains(r"^[0-9a-fA-F]{16,}$").alias("fullhex"),
    )
    vals = uniq.get_column("v")
    norm = vals.str.strip_chars()
    # e-mails and postcodes (pattern or vocabulary)
    email = flags["email"]
    if vocab.s_emails.len():
        email = email | _isin(norm.str.to_lowercase(), vocab.s_emails)
    out["email"] = email
    pc = flags["postcode"]
    if vocab.s_postcodes.len():
        pc = pc | _isin(norm.str.replace_all(r"\s+", "").str.to_uppercase(), vocab.s_postcodes)
    out["postcode"] = pc
    out["gmc_number"] = flags["gmc"]
    # ten-digit numbers: UCAS-like always, NHS when the check digit is valid
    if flags["ten"].any():
        idx = flags["ten"].arg_true()
        ten = vals.gather(idx).str.extract_all(RE_TEN_EXTRACT).to_list()
        nhs = []
        for items in ten:
            ok = False
            for it in items or []:
                d = re.sub(r"[^0-9]", "", it)
                ok = ok or nhs_check_ok(d)
            nhs.append(ok)
        out["ucas_id"] = flags["ten"]
        out["nhs_number"] = rows_mask(idx.filter(pl.Series(nhs, dtype=pl.Boolean)))
    # names: whole alphabetic words of >= 3 letters
    if vocab.s_names.len():
        words = (uniq.with_row_index("__r")
                     .select("__r", v.str.to_uppercase().str.extract_all(r"[A-Z0-9]+").alias("w"))
                     .explode("w")
                     .filter(pl.col("w").str.contains(r"^[A-Z]{3,}$")))
        if words.height:
            hit_rows = words.filter(_isin(words.get_column("w"), vocab.s_names)).get_column("__r").unique()
            if hit_rows.len():
                out["name"] = rows_mask(hit_rows)
    # dates of birth
    if vocab.dobs and flags["datey"].any():
        idx = flags["datey"].arg_true()
        hit = [any(d in vocab.dobs for d in _parse_dates(s_)) for s_ in vals.gather(idx).to_list()]
        out["date_of_birth"] = rows_mask(idx.filter(pl.Series(hit, dtype=pl.Boolean)))
    # identifiers verbatim (also digits-only forms)
    if vocab.s_ids.len():
        out["identifier"] = (_isin(norm, vocab.s_ids)
                             | _isin(norm.str.replace_all(r"[^0-9A-Za-z]", ""), vocab.s_ids))
    if vocab.s_restricted.len():
        out["restricted_value"] = _isin(norm, vocab.s_restricted)
    # digests: whole-hex values vectorised (first 16 hex = 64 bits), the rest one by one.
    # Values that are pseudonyms issued for this release are not digest candidates; the
    # digest table is built (once) only if some other candidate is present.
    cand = (flags["hex"] | flags["b64"])
    if vocab.n_digest_inputs and cand.any():
        cand = cand & ~vocab.issued(vals)
    if vocab.n_digest_inputs and cand.any():
        dig = np.zeros(m, dtype=bool)
        full_idx = (flags["fullhex"] & cand).arg_true().to_numpy()
        if full_idx.size:
            full = vals.gather(full_idx)
            hi = full.str.slice(0, 8).str.to_integer(base=16).cast(pl.UInt64).to_numpy()
            lo = full.str.slice(8, 8).str.to_integer(base=16).cast(pl.UInt64).to_numpy()
            dig[full_idx] = vocab.digest_hit_ints((hi << np.uint64(32)) | lo)
        rest_idx = (cand & ~flags["fullhex"]).arg_true().to_numpy()
        for i, s_ in zip(rest_idx, vals.gather(rest_idx).to_list()):
            cands = re.findall(RE_HEX, s_)
            for b in re.findall(RE_B64, s_):
                try:
                    raw = base64.b64decode(b.replace("-", "+").replace("_", "/") + "=" * (-len(b) % 4))
                    if len(raw) >= 8:
                        cands.append(raw.hex())
                except (binascii.Error, ValueError):
                    pass
            if cands and vocab.digest_hit([h.lower() for h in cands]).any():
                dig[i] = True
        out["digest"] = pl.Series(dig)
    return pl.DataFrame({"v": vals, **{d: out[d].fill_null(False).alias(d) for d in DETECTORS}})


def scan_column(s: pl.Series, vocab: Vocabulary) -> tuple[dict[str, int], str | None]:
    """Counts for one column; second item says why a dtype was not scanned."""
    c = _empty_counts()
    s = s.drop_nulls()
    if s.len() == 0:
        return c, None
    dt_ = s.dtype
    if dt_ == pl.Boolean:
        return c, None
    if dt_ in (pl.Date, pl.Datetime):
        d = s.cast(pl.Date) if dt_ == pl.Datetime else s
        month_precision = bool((d.dt.day() == 1).all())
        if vocab.dobs and not month_precision:
            c["date_of_birth"] = int(_isin(d, vocab.s_dobs).sum())
        return c, None
    if dt_.is_integer():
        # per distinct value, weighted by its row count (a year column of 7 M events has ~40 values)
        vc = s.cast(pl.Int64).alias("v").value_counts(name="n")
        x, n = vc.get_column("v"), vc.get_column("n")
        c["gmc_number"] = int(n.filter((x >= 1_000_000) & (x <= 9_999_999)).sum())
        ten_m = (x >= 100_000_000) & (x <= 9_999_999_999)
        c["ucas_id"] = int(n.filter((x >= 1_000_000_000) & (x <= 9_999_999_999)).sum())
        c["nhs_number"] = int(sum(k for t, k in zip(x.filter(ten_m).to_list(), n.filter(ten_m).to_list())
                                  if nhs_check_ok(f"{int(t):010d}")))
        strs = x.cast(pl.String)
        if vocab.s_ids.len():
            c["identifier"] = int(n.filter(_isin(strs, vocab.s_ids)).sum())
        if vocab.dobs:
            dm = strs.str.len_chars().is_between(7, 8)
            c["date_of_birth"] = int(sum(k for t, k in zip(strs.filter(dm).to_list(), n.filter(dm).to_list())
                                         if any(d in vocab.dobs for d in _parse_dates(t))))
        return c, None
    if dt_.is_float():
        x = s.filter(s.is_finite() & (s == s.round(0))).cast(pl.Int64)
        c["gmc_number"] = int(((x >= 1_000_000) & (x <= 9_999_999)).sum())
        c["ucas_id"] = int(((x >= 1_000_000_000) & (x <= 9_999_999_999)).sum())
        return c, None
    if dt_ == pl.Binary:
        hexes = s.bin.encode("hex").to_list()
        c["digest"] = int(vocab.digest_hit(hexes).sum())
        return c, None
    if dt_ in (pl.String, pl.Categorical) or isinstance(dt_, pl.Enum):
        uniq = s.cast(pl.String).value_counts(name="n").rename({s.name: "v"})
        return scan_strings(uniq, vocab), None
    if isinstance(dt_, (pl.List, pl.Array, pl.Struct)):
        try:
            flat = s.cast(pl.String) if not isinstance(dt_, pl.Struct) else s.struct.json_encode()
        except Exception:  # noqa: BLE001
            return c, f"dtype {dt_} not scanned"
        uniq = flat.value_counts(name="n").rename({flat.name: "v"})
        return scan_strings(uniq, vocab), None
    return c, f"dtype {dt_} not scanned"


# ---------------------------------------------------------------------- release

def scan_release(release_dir: str | Path, input_vocab: dict | None = None, *, rules=None, key=None,
                 extra_identifiers: Iterable[str] = (), restricted_values: Iterable[str] = (),
                 issued_tokens: Iterable[str] = ()) -> dict[str, Any]:
    """Scan every column of every Parquet file under `release_dir`.

    `issued_tokens`: the pseudonyms protect() issued for this release; cells equal to one
    are checked by every detector except ``digest`` (they are random or keyed under a
    per-release key, never a digest of an input: tests/test_governance_release.py).

    Returns ``{"counts": {detector: {"table.column": n}}, "totals": {detector: n},
    "total": n, "clean": bool, "allow_list": {...}, "not_run": {...}, ...}``.
    """
    try:
        return _scan_release(release_dir, input_vocab, rules=rules, key=key, extra_identifiers=extra_identifiers,
                             restricted_values=restricted_values, issued_tokens=issued_tokens)
    finally:
        _HASHED.clear()


def _scan_release(release_dir, input_vocab, *, rules, key, extra_identifiers, restricted_values,
                  issued_tokens) -> dict[str, Any]:
    release_dir = Path(release_dir)
    allow_tokens = rules.label_tokens() if rules is not None else set()
    vocab = Vocabulary(input_vocab, key=key, extra_identifiers=extra_identifiers,
                       restricted_values=restricted_values, allow_tokens=allow_tokens,
                       issued_tokens=issued_tokens)
    counts: dict[str, dict[str, int]] = {d: {} for d in DETECTORS}
    rows, skipped, columns = {}, {}, []
    tables: dict[str, list[str]] = {}
    for p in sorted(release_dir.rglob("*.parquet")):
        if p.name.startswith("."):
            continue
        tname = p.relative_to(release_dir).with_suffix("").as_posix()
        df = pl.read_parquet(p)
        rows[tname] = df.height
        tables[tname] = df.columns
        for col in df.columns:
            name = f"{tname}.{col}"
            columns.append(name)
            c, why = scan_column(df.get_column(col), vocab)
            for d in DETECTORS:
                counts[d][name] = c[d]
            if why:
                skipped[name] = why
    totals = {d: sum(counts[d].values()) for d in DETECTORS}
    allow = allow_list_check(tables, rules)
    not_run = {}
    if not vocab.has["names"]:
        not_run["name"] = "no name vocabulary supplied"
    if not vocab.dobs:
        not_run["date_of_birth"] = "no dates of birth supplied"
    if not vocab.s_ids.len() and not vocab.n_digest_inputs:
        not_run["identifier"] = not_run["digest"] = "no identifiers supplied"
    total = sum(totals.values())
    return {"detectors": list(DETECTORS), "counts": counts, "totals": totals, "total": total,
            "columns_scanned": len(columns), "rows": rows, "not_scanned": skipped,
            "not_run": not_run, "allow_list": allow,
            "vocabulary_sizes": {"names": vocab.s_names.len(), "identifiers": vocab.s_ids.len(),
                                 "dates_of_birth": len(vocab.dobs), "postcodes": vocab.s_postcodes.len(),
                                 "emails": vocab.s_emails.len(), "digest_inputs": vocab.n_digest_inputs,
                                 "digest_prefixes": (int(vocab.digest_prefixes.size) if vocab.digests_computed
                                                     else "not built: no digest-like cell other than issued pseudonyms")},
            "clean": total == 0 and allow["ok"]}


def allow_list_check(tables: dict[str, list[str]], rules) -> dict:
    if rules is None:
        return {"checked": False, "ok": True, "unexpected": [], "missing": [], "unlisted_tables": []}
    allowed = rules.allow_list()
    unexpected, missing, unlisted = [], [], []
    for t, cols in tables.items():
        if t not in allowed:
            unlisted.append(t)
            continue
        unexpected += [f"{t}.{c}" for c in cols if c not in allowed[t]]
        missing += [f"{t}.{c}" for c in allowed[t] if c not in cols]
    return {"checked": True, "ok": not unexpected, "unexpected": unexpected, "missing": missing,
            "unlisted_tables": unlisted, "allowed": allowed}
