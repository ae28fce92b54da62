"""Standardisers: vectorised polars expressions that put identifiers and
quasi-identifiers into one canonical form before linkage.

Each function takes an expression and returns an expression, so a whole
column is standardised in one pass (no Python loop over rows). They are
idempotent: standardising a standardised value gives the same value.
"""

from __future__ import annotations

import csv
from functools import lru_cache
from pathlib import Path

import polars as pl

from etl.paths import REFERENCE_DIR

UK_POSTCODE = r"^[A-Z]{1,2}[0-9][A-Z0-9]?[0-9][A-Z]{2}$"

_SEX_WORDS = {
    "M": "M", "MALE": "M", "MAN": "M", "1": "M",
    "F": "F", "FEMALE": "F", "W": "F", "WOMAN": "F", "2": "F",
    "X": "X", "OTHER": "X", "I": "X", "INDETERMINATE": "X", "3": "X",
    "U": "U", "UNKNOWN": "U", "NOT KNOWN": "U", "9": "U", "0": "U",
}


# Latin letters that NFKD does not split into base letter + mark
_NO_DECOMPOSITION = {"Ł": "L", "ł": "l", "Ø": "O", "ø": "o", "Æ": "AE", "æ": "ae", "ß": "ss",
                     "Đ": "D", "đ": "d", "Þ": "TH", "þ": "th", "Œ": "OE", "œ": "oe", "ı": "i"}


def name(expr: pl.Expr) -> pl.Expr:
    """Upper case, diacritics folded to ASCII, apostrophes and dots dropped,
    hyphens and other punctuation to spaces, single spaces.

    A name written wholly in a non-Latin script has no ASCII form; it is kept
    upper-cased and trimmed rather than lost, so exact comparison still works.
    """
    raw = expr.cast(pl.String).str.strip_chars()
    folded = (
        raw.str.replace_many(list(_NO_DECOMPOSITION), list(_NO_DECOMPOSITION.values()))
        .str.normalize("NFKD")
        .str.replace_all(r"[\p{Mn}]", "")          # combining marks (diacritics)
        .str.to_uppercase()
        .str.replace_all(r"['’`.]", "")
        .str.replace_all(r"[^A-Z ]", " ")
        .str.replace_all(r"\s+", " ")
        .str.strip_chars()
    )
    fallback = raw.str.to_uppercase().str.replace_all(r"\s+", " ")
    out = pl.when(folded.str.len_chars() > 0).then(folded).otherwise(fallback)
    return pl.when(out.str.len_chars() > 0).then(out).otherwise(None)


def postcode(expr: pl.Expr) -> pl.Expr:
    """UK postcodes to `AB1 2CD`; anything else upper-cased, spaces removed."""
    compact = expr.cast(pl.String).str.to_uppercase().str.replace_all(r"[^A-Z0-9]", "")
    uk = compact.str.slice(0, compact.str.len_chars() - 3) + pl.lit(" ") + compact.str.slice(-3)
    out = pl.when(compact.str.contains(UK_POSTCODE)).then(uk).otherwise(compact)
    return pl.when(compact.str.len_chars() > 0).then(out).otherwise(None)


def email(expr: pl.Expr) -> pl.Expr:
    out = expr.cast(pl.String).str.strip_chars().str.to_lowercase()
    return pl.when(out.str.len_chars() > 0).then(out).otherwise(None)


def ucas_id(expr: pl.Expr) -> pl.Expr:
    """UCAS Personal ID: hyphens and spaces dropped, leading zeros restored
    (spreadsheets strip them); null unless the result is exactly 10 digits."""
    digits = expr.cast(pl.String).str.replace_all(r"[\s\-]", "")
    ok = digits.str.contains(r"^[0-9]{1,10}$") & (digits.str.len_chars() >= 7)
    return pl.when(ok).then(digits.str.zfill(10)).otherwise(None)


def gmc_number(expr: pl.Expr) -> pl.Expr:
    """GMC reference number: 7 digits; the HESA default 99999999 and
    anything else that does not validate become null."""
    s = expr.cast(pl.String).str.replace_all(r"\s", "")
    return pl.when(s.str.contains(r"^[0-9]{7}$") & (s != "0000000")).then(s).otherwise(None)


def sex(expr: pl.Expr) -> pl.Expr:
    """Common spellings to M/F/X/U; anything else passes through upper-cased
    so the contract's allowed-value check can quarantine it."""
    s = expr.cast(pl.String).str.strip_chars().str.to_uppercase()
    return s.replace(_SEX_WORDS)


@lru_cache(maxsize=None)
def _reference(name_: str) -> list[dict[str, str]]:
    path = Path(REFERENCE_DIR) / f"{name_}.csv"
    with path.open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def _lookup_key(expr: pl.Expr) -> pl.Expr:
    return (expr.cast(pl.String).str.to_uppercase().str.replace_all(r"[^A-Z0-9]", ""))


def _code_mapping(table: str, keys: tuple[str, ...]) -> dict[str, str]:
    mapping: dict[str, str] = {}
    for row in _reference(table):
        for k in keys:
            v = row.get(k)
            if v:
                mapping["".join(ch for ch in v.upper() if ch.isalnum())] = row["code"]
    return mapping


def medical_school(expr: pl.Expr) -> pl.Expr:
    """School code, UKPRN or name (any case/punctuation) to the school code
    of schemas/reference/medical_schools.csv; unknown values pass through
    unchanged so the contract check can quarantine them."""
    mapping = _code_mapping("medical_schools", ("code", "ukprn", "name"))
    key = _lookup_key(expr)
    return key.replace_strict(mapping, default=expr.cast(pl.String), return_dtype=pl.String)


def specialty(expr: pl.Expr) -> pl.Expr:
    mapping = _code_mapping("specialties", ("code", "name"))
    key = _lookup_key(expr)
    return key.replace_strict(mapping, default=expr.cast(pl.String), return_dtype=pl.String)


def reference_codes(table: str) -> list[str]:
    return [r["code"] for r in _reference(table)]


STANDARDISERS = {
    "name": name,
    "postcode": postcode,
    "email": email,
    "ucas_id": ucas_id,
    "gmc_number": gmc_number,
    "sex": sex,
    "medical_school": medical_school,
    "specialty": specialty,
}

# standardisers whose output must be a code from a reference table
REFERENCE_SETS = {"medical_school": "medical_schools", "specialty": "specialties"}
