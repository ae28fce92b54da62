"""Ingest one delivered extract: read it, map its columns onto the canonical
fields, type and standardise them, and quarantine the rows that break the
contract.

File-level defects (missing file, wrong format, undeclared or missing
columns, an encoding that does not decode) stop the run with a one-line
`DeliveryError` naming the file, column and row. Row-level defects (a bad
date, a value outside its set, a duplicate record id) send the row to
quarantine with its reason; identifiers that do not validate are nulled and
the row kept, so the person can still be linked on names and date of birth.

Nothing is lost: rows_in == rows_ingested + rows_quarantined, always.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import re
import time
from pathlib import Path

import polars as pl

from etl import standardise as std
from etl.config import SourceConfig
from etl.errors import DeliveryError
from etl.hashing import sha256_file

PARQUET_MAGIC = b"PAR1"
DTYPES = {"str": pl.String, "int": pl.Int64, "float": pl.Float64, "date": pl.Date, "bool": pl.Boolean}
QUARANTINE_SCHEMA = {"source": pl.String, "row_number": pl.Int64, "record_id": pl.String,
                     "column": pl.String, "reason": pl.String, "action": pl.String}
ID_STANDARDISERS = {"ucas_id", "gmc_number"}
MAX_FIELD_CHARS = 1000
DEDUPE_MIN_ROWS = 50_000      # below this, type every row directly
DEDUPE_MAX_SHARE = 0.2        # type per distinct value when at most this share is distinct


# --------------------------------------------------------------------------- reading

def _decode(src: SourceConfig) -> str:
    return _utf8_bytes(src).decode("utf-8")


_ASCII_SPACE = b" \t\n\r\x0b\x0c"


def _body_blank(data: bytes, start: int) -> bool:
    """Whether data[start:] decoded is all whitespace (str.strip() == ''), without copying
    the body: the first byte that is not ASCII whitespace decides, unless it is one
    of the rarer characters str.strip() also removes, when the rest is decoded."""
    m = re.compile(rb"[^ \t\n\r\x0b\x0c]").search(data, start)
    if m is None:
        return True
    b = m.group()[0]
    if b < 0x80 and not (0x1c <= b <= 0x1f):
        return False
    return not data[m.start():].decode("utf-8").strip()


def _utf8_bytes(src: SourceConfig) -> bytes:
    """The file as UTF-8 bytes without a BOM (checked as _decode always did),
    without keeping a decoded str copy of a possibly multi-GB extract."""
    data = src.path.read_bytes()
    if not data:
        raise DeliveryError("file is empty (0 bytes)", file=str(src.path))
    if data[:4] == PARQUET_MAGIC:
        raise DeliveryError("file is Parquet but the config says format: csv", file=str(src.path))
    enc = src.encoding.replace("utf8", "utf-8")
    if enc in ("utf-8", "utf-8-sig"):
        if data[:3] == b"\xef\xbb\xbf":
            data = data[3:]
        try:
            data.decode("utf-8")      # validate only; the str is dropped at once
        except UnicodeDecodeError as e:
            line = data[: e.start].count(b"\n") + 1
            raise DeliveryError(
                f"not valid UTF-8 at byte {e.start} (line {line}); set sources.<name>.encoding "
                "(e.g. latin-1) in the config", file=str(src.path)) from None
        return data
    return data.decode(enc).encode("utf-8")


def _header(text: str, src: SourceConfig) -> list[str]:
    first = next(csv.reader(io.StringIO(text.split("\n", 1)[0].rstrip("\r")), delimiter=src.delimiter), [])
    header = [h.strip() for h in first]
    if not header or header == [""]:
        raise DeliveryError("no header row", file=str(src.path), row=1)
    seen = set()
    for h in header:
        if h in seen:
            raise DeliveryError(f"column '{h}' appears twice in the header", file=str(src.path), row=1)
        seen.add(h)
    return header


def file_columns(src: SourceConfig) -> list[str]:
    """The column names the delivered file actually has (cheap: header or schema)."""
    if src.format == "parquet":
        import pyarrow.parquet as pq
        try:
            return list(pq.read_schema(src.path).names)
        except Exception as e:  # pyarrow raises several types for a broken file
            raise DeliveryError(f"not a readable Parquet file ({type(e).__name__})", file=str(src.path)) from None
    with src.path.open("rb") as fh:
        head = fh.read(1 << 16)
    if not head:
        raise DeliveryError("file is empty (0 bytes)", file=str(src.path))
    if head[:4] == PARQUET_MAGIC:
        raise DeliveryError("file is Parquet but the config says format: csv", file=str(src.path))
    if head[:3] == b"\xef\xbb\xbf":
        head = head[3:]
    text = head.decode(src.encoding.replace("utf8", "utf-8").replace("-sig", ""), errors="replace")
    return _header(text, src)


def check_columns(src: SourceConfig, config_file: Path | None = None) -> None:
    """Every mapped column must exist; every file column must be mapped or
    ignored (an undeclared column could carry personal data)."""
    cols = file_columns(src)
    where = config_file or src.path
    missing = [n for n in src.columns if n not in cols]
    if missing:
        native = missing[0]
        hint = ""
        if len(cols) == 1 and src.format == "csv":
            hint = f"; the file has a single column: is the delimiter '{src.delimiter}' right?"
        elif len(missing) > 1:
            hint = (f" ({len(missing)} of {len(src.columns)} mapped columns are missing: "
                    f"{', '.join(sorted(missing)[:6])}{'...' if len(missing) > 6 else ''}; is this the right file?)")
        raise DeliveryError(
            f"column '{native}' (mapped to {src.columns[native]}) is not in {src.path.name}{hint}",
            file=str(where), key=f"sources.{src.name}.columns.{native}")
    declared = set(src.columns) | set(src.ignore_columns)
    for c in cols:
        if c not in declared:
            raise DeliveryError(
                f"column '{c}' of {src.path.name} is not declared: map it in columns or list it "
                "in ignore_columns with its governance class",
                file=str(where), key=f"sources.{src.name}")


def _read_csv(src: SourceConfig) -> tuple[pl.DataFrame, pl.DataFrame]:
    """All columns as strings. Returns (frame, ragged) where ragged lists the
    data rows whose field count differs from the header."""
    data = _utf8_bytes(src)
    nl = data.find(b"\n")
    header = _header(data[: nl if nl >= 0 else len(data)].decode("utf-8"), src)
    if nl < 0 or _body_blank(data, nl + 1):
        raise DeliveryError("the file has a header but no data rows", file=str(src.path))
    ragged_rows: list[int] = []
    try:
        df = pl.read_csv(data, separator=src.delimiter, infer_schema=False,
                         null_values=src.null_values, truncate_ragged_lines=False,
                         raise_if_empty=True)
        if df.width != len(header):
            raise pl.exceptions.ComputeError("width mismatch")
    except (pl.exceptions.ComputeError, pl.exceptions.NoDataError, pl.exceptions.ShapeError):
        # slow path: find the ragged rows with the csv module, keep the rest
        body = data[nl + 1:].decode("utf-8")
        rows, n = [], 0
        for n, rec in enumerate(csv.reader(io.StringIO(body), delimiter=src.delimiter), start=1):
            if len(rec) != len(header):
                if rec:  # a blank line is not a row
                    ragged_rows.append(n)
                continue
            rows.append([None if v in src.null_values else v for v in rec])
        df = pl.DataFrame(rows, schema={h: pl.String for h in header}, orient="row")
        # row numbers of kept rows: positions not ragged/blank
    df = df.rename({c: c.strip() for c in df.columns})
    if ragged_rows:
        bad = set(ragged_rows)
        kept = [i for i in range(1, len(ragged_rows) + df.height + 1) if i not in bad]
        df = df.with_columns(pl.Series("__row", kept[: df.height], dtype=pl.Int64))
    else:
        df = df.with_row_index("__row", offset=1).with_columns(pl.col("__row").cast(pl.Int64))
    ragged = pl.DataFrame({"row_number": ragged_rows}, schema={"row_number": pl.Int64})
    return df, ragged


def _read_parquet(src: SourceConfig) -> pl.DataFrame:
    try:
        df = pl.read_parquet(src.path)
    except Exception as e:
        raise DeliveryError(f"not a readable Parquet file ({type(e).__name__})", file=str(src.path)) from None
    if df.height == 0:
        raise DeliveryError("the file has no data rows", file=str(src.path))
    df = df.with_columns([pl.col(c).cast(pl.String) for c in df.columns if df.schema[c] != pl.String])
    return df.with_row_index("__row", offset=1).with_columns(pl.col("__row").cast(pl.Int64))


# --------------------------------------------------------------------------- typing

def _parse_date(col: str, formats: list[str]) -> pl.Expr:
    s = pl.col(col).str.strip_chars()
    parsed = []
    for fmt in formats or ["%Y-%m-%d"]:
        if fmt == "DMMYYYY":  # LRMP: day without leading zero, e.g. 5071978
            parsed.append(pl.when(s.str.contains(r"^[0-9]{7,8}$"))
                          .then(s.str.zfill(8).str.strptime(pl.Date, "%d%m%Y", strict=False)))
        else:
            parsed.append(s.str.strptime(pl.Date, fmt, strict=False))
    return pl.coalesce(parsed) if len(parsed) > 1 else parsed[0]


def _typed(col: str, spec, src: SourceConfig) -> pl.Expr:
    c = pl.col(col)
    if spec.type == "int":
        return c.str.strip_chars().str.replace(r"\.0+$", "").cast(pl.Int64, strict=False)
    if spec.type == "float":
        return c.str.strip_chars().cast(pl.Float64, strict=False)
    if spec.type == "date":
        return _parse_date(col, src.date_formats.get(col, []))
    if spec.type == "bool":
        return (c.str.strip_chars().str.to_uppercase()
                .replace_strict({"Y": True, "YES": True, "TRUE": True, "1": True,
                                 "N": False, "NO": False, "FALSE": False, "0": False},
                                default=None, return_dtype=pl.Boolean))
    return c


def _defect(cond: pl.Expr, column: str, reason: str, action: str = "quarantined") -> tuple[pl.Expr, str]:
    """A row-level check: the condition (null counts as no defect) and its issue text."""
    return cond, f"{column}\t{reason}\t{action}"


def ingest(src: SourceConfig, out_path: Path, quarantine_path: Path,
           *, today: dt.date | None = None, max_quarantine_share: float = 0.5) -> dict:
    """Read, map, type, standardise and validate one extract.

    Writes the standardised rows to `out_path` and the quarantined rows'
    reasons to `quarantine_path` (both Parquet, restricted zone) and returns a
    summary of counts (no row values).
    """
    t0 = time.perf_counter()
    today = today or dt.date.today()
    check_columns(src)
    if src.format == "csv":
        raw, ragged = _read_csv(src)
    else:
        raw, ragged = _read_parquet(src), pl.DataFrame(schema={"row_number": pl.Int64})
    rows_in = raw.height + ragged.height

    # map native -> canonical, trim strings, apply value maps
    df = raw.lazy().select([pl.col("__row").alias("row_number")]
                    + [pl.col(n).alias(c) for n, c in src.columns.items()])
    mapped = list(src.columns.values())
    df = df.with_columns([pl.col(c).str.strip_chars() for c in mapped])
    df = df.with_columns([pl.when(pl.col(c).str.len_chars() == 0).then(None).otherwise(pl.col(c)).alias(c)
                          for c in mapped])
    for c, m in src.value_maps.items():
        if c in mapped:
            df = df.with_columns(pl.col(c).replace(m))

    checks: list[tuple[pl.Expr, str]] = []
    df = df.collect()   # one plan for mapping, trimming and value maps
    del raw
    # typing and standardising are per value (string functions of one column); a column with
    # few distinct values (names, schools, codes, dates) is typed once per distinct value
    direct, per_value = [], []
    for c in mapped:
        spec = src.fields[c]
        typed = _typed(c, spec, src)
        if spec.standardise:
            typed = std.STANDARDISERS[spec.standardise](typed)
        if df.height >= DEDUPE_MIN_ROWS and df.get_column(c).approx_n_unique() <= DEDUPE_MAX_SHARE * df.height:
            per_value.append((c, typed.alias(f"__t_{c}")))
        else:
            direct.append(typed.alias(f"__t_{c}"))
    if direct:
        df = df.with_columns(direct)
    for c, typed in per_value:
        m = df.select(pl.col(c).unique()).with_columns(typed)
        df = df.join(m, on=c, how="left", nulls_equal=True, maintain_order="left")

    for c in mapped:
        spec = src.fields[c]
        t = pl.col(f"__t_{c}")
        raw_present = pl.col(c).is_not_null()
        if spec.type != "str":
            what = {"int": "a whole number", "float": "a number", "bool": "yes/no",
                    "date": "a date in format " + " or ".join(src.date_formats.get(c, ["%Y-%m-%d"]))}[spec.type]
            checks.append(_defect(raw_present & t.is_null(), c, f"not {what}"))
        if spec.standardise in ID_STANDARDISERS:
            checks.append(_defect(raw_present & t.is_null() & (pl.col(c) != "99999999"), c,
                                  "identifier does not validate; nulled", "nullified"))
        if spec.required:
            checks.append(_defect(t.is_null() & ~raw_present, c, "required value missing"))
        if spec.type == "str":
            checks.append(_defect(pl.col(c).str.len_chars() > MAX_FIELD_CHARS, c,
                                  f"value longer than {MAX_FIELD_CHARS} characters"))
        allowed = spec.allowed
        if spec.standardise in std.REFERENCE_SETS:
            allowed = tuple(std.reference_codes(std.REFERENCE_SETS[spec.standardise]))
        if allowed is not None:
            checks.append(_defect(t.is_not_null() & ~t.cast(pl.String).is_in(list(allowed)), c,
                                  "value outside its allowed set"))
        if spec.min is not None or spec.max is not None or spec.max_today:
            lo, hi = spec.min, spec.max
            if spec.type == "date":
                lo = dt.date.fromisoformat(str(lo)) if lo is not None else None
                hi = dt.date.fromisoformat(str(hi)) if hi is not None else None
                if spec.max_today:
                    hi = min(hi, today) if hi else today
            if lo is not None:
                checks.append(_defect(t.is_not_null() & (t < lo), c, f"below minimum {lo}"))
            if hi is not None:
                checks.append(_defect(t.is_not_null() & (t > hi), c,
                                      "date in the future" if spec.max_today and hi == today else f"above maximum {hi}"))
    if "record_id" in mapped:
        checks.append(_defect(pl.col("__t_record_id").is_not_null()
                              & pl.col("__t_record_id").is_duplicated()
                              & (pl.int_range(pl.len()).over("__t_record_id") > 0),
                              "record_id", "duplicate record_id (first kept)"))

    # the checks as booleans on every row (window checks such as duplicates need the whole
    # frame), then issue texts only for the rows with a defect: building a list of every
    # check's text for every row and exploding it cost ~40% of ingest at 1.9 M rows. Same
    # rows, same order (row, then check) as the list over all rows.
    flags = df.select(pl.col("row_number"), pl.col("__t_record_id"),
                      *[cond.fill_null(False).alias(f"__c{i}") for i, (cond, _) in enumerate(checks)])
    if checks:
        flags = flags.filter(pl.any_horizontal([pl.col(f"__c{i}") for i in range(len(checks))]))
    issues = (flags.select(pl.col("row_number"), pl.col("__t_record_id").cast(pl.String).alias("record_id"),
                           pl.concat_list([pl.when(pl.col(f"__c{i}")).then(pl.lit(text)).otherwise(None)
                                           for i, (_, text) in enumerate(checks)]).alias("__d")
                           if checks else pl.lit([]).alias("__d"))
              .explode("__d").drop_nulls("__d")
              .with_columns(pl.col("__d").str.split("\t").list.to_struct(fields=["column", "reason", "action"]))
              .unnest("__d"))
    if ragged.height:
        issues = pl.concat([issues, ragged.with_columns(
            record_id=pl.lit(None, pl.String), column=pl.lit("*"),
            reason=pl.lit("wrong number of fields (ragged row)"), action=pl.lit("quarantined"))
            .select(issues.columns)])
    issues = issues.with_columns(source=pl.lit(src.name)).select(list(QUARANTINE_SCHEMA)).cast(QUARANTINE_SCHEMA)
    bad_rows = issues.filter(pl.col("action") == "quarantined")["row_number"].unique()

    clean = (df.filter(~pl.col("row_number").is_in(bad_rows.implode()))
             .select([pl.lit(src.name).alias("source"), pl.col("row_number")]
                     + [pl.col(f"__t_{c}").alias(c) for c in mapped]))
    # every contract field present, with its type, so downstream has one schema
    for name, spec in src.fields.items():
        if name not in clean.columns:
            clean = clean.with_columns(pl.lit(None, DTYPES[spec.type]).alias(name))
        elif spec.type != "str" or clean.schema[name] != pl.String:
            clean = clean.with_columns(pl.col(name).cast(DTYPES[spec.type]))
    clean = clean.with_columns(pl.col("record_id").cast(pl.String))
    order = ["source", "record_id", "row_number"] + [f for f in src.fields if f != "record_id"]
    clean = clean.select(order)

    n_quarantined = bad_rows.len()
    if rows_in and n_quarantined / rows_in > max_quarantine_share:
        top = (issues.filter(pl.col("action") == "quarantined").group_by("column", "reason").len()
               .sort("len", descending=True).row(0))
        raise DeliveryError(
            f"{n_quarantined} of {rows_in} rows fail the contract (over {max_quarantine_share:.0%}); "
            f"most common: column '{top[0]}' {top[1]} ({top[2]} rows) - is the file or its config wrong?",
            file=str(src.path))

    out_path.parent.mkdir(parents=True, exist_ok=True)
    quarantine_path.parent.mkdir(parents=True, exist_ok=True)
    clean.write_parquet(out_path, compression="zstd")
    issues.write_parquet(quarantine_path, compression="zstd")
    reasons = (issues.filter(pl.col("action") == "quarantined")
               .group_by("column", "reason").len().sort("len", descending=True))
    nulled = issues.filter(pl.col("action") == "nullified").group_by("column").len()
    summary = {
        "source": src.name,
        "file": src.path.name,
        "sha256": sha256_file(src.path),
        "rows_in": rows_in,
        "rows_ingested": clean.height,
        "rows_quarantined": int(n_quarantined),
        "quarantine_reasons": {f"{r['column']}: {r['reason']}": r["len"] for r in reasons.iter_rows(named=True)},
        "nullified": {r["column"]: r["len"] for r in nulled.iter_rows(named=True)},
        "path": str(out_path),
        "quarantine_path": str(quarantine_path),
        "seconds": round(time.perf_counter() - t0, 3),
    }
    assert summary["rows_in"] == summary["rows_ingested"] + summary["rows_quarantined"]
    return summary
