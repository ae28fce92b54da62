"""The record table the engine works on, and per-field arrays derived from it.

All sources are stacked into one polars frame in spec source order; a record's
position in it (`gid`) is its integer id everywhere else. Fields are turned
once into dictionary codes (int32, -1 = null) plus a values array, so equality
on a pair is an integer compare and string similarity only touches the
strings of the pairs that need it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl

from etl.errors import ConfigError

DATE_FORMATS = ["%Y-%m-%d", "%Y%m%d", "%d/%m/%Y", "%d-%m-%Y"]


class Records:
    def __init__(self, df: pl.DataFrame, sources: list[str]):
        self.df = df
        self.sources = sources
        self.n = df.height
        self.src = df["_src"].to_numpy().astype(np.int8)
        self.offsets = {}
        self.counts = {}
        for i, s in enumerate(sources):
            idx = np.flatnonzero(self.src == i)
            self.offsets[s] = (int(idx[0]), int(idx[-1]) + 1) if idx.size else (0, 0)
            self.counts[s] = int(idx.size)
        self._cache: dict = {}

    # ---- loading -----------------------------------------------------------------
    @classmethod
    def load(cls, inputs: dict[str, Path], sources: list[str], needed: set[str],
             extra: set[str]) -> "Records":
        frames = []
        present = [s for s in sources if s in inputs]
        for i, s in enumerate(sources):
            if s not in inputs:
                continue
            path = Path(inputs[s])
            try:
                lf = pl.scan_parquet(path)
                schema = lf.collect_schema()
            except Exception as e:  # noqa: BLE001 - unreadable file is a user error
                raise ConfigError(f"cannot read linkage input for source '{s}' ({type(e).__name__})",
                                  file=str(path))
            if "record_id" not in schema:
                raise ConfigError("linkage input has no record_id column", file=str(path), key=s)
            cols = [c for c in sorted(needed | extra) if c in schema and c not in ("record_id", "source")]
            exprs = [pl.lit(i, pl.Int8).alias("_src"), pl.col("record_id").cast(pl.String)]
            for c in cols:
                dt = schema[c]
                if dt == pl.Null:
                    exprs.append(pl.col(c).cast(pl.String))
                elif dt in (pl.Categorical, pl.Enum) or isinstance(dt, (pl.Categorical, pl.Enum)):
                    exprs.append(pl.col(c).cast(pl.String))
                else:
                    exprs.append(pl.col(c))
            frames.append(lf.select(exprs).collect())
        if not frames:
            raise ConfigError("linkage needs at least one input source")
        df = pl.concat(frames, how="diagonal_relaxed")
        for c in needed:
            if c not in df.columns:
                df = df.with_columns(pl.lit(None, pl.String).alias(c))
        dup = df.select(pl.struct("_src", "record_id").is_duplicated().any()).item()
        if dup:
            raise ConfigError("record_id is not unique within a linkage input source")
        if df["record_id"].null_count():
            raise ConfigError("record_id is null in a linkage input")
        rec = cls(df, sources)
        rec.present = present
        return rec

    # ---- generic derived arrays -------------------------------------------------
    def col(self, name: str) -> pl.Series:
        return self.df[name]

    def codes_of(self, key: str, series: pl.Series) -> tuple[np.ndarray, np.ndarray]:
        """Dictionary-encode a string/number series: (codes int32 with -1 for null, values)."""
        if key in self._cache:
            return self._cache[key]
        s = series
        if s.dtype != pl.String:
            s = s.cast(pl.String)
        frame = pl.DataFrame({"v": s})
        uniq = frame.select(pl.col("v").drop_nulls().unique(maintain_order=False).sort()).to_series()
        mapping = pl.DataFrame({"v": uniq, "c": pl.arange(0, uniq.len(), eager=True, dtype=pl.Int32)})
        codes = frame.join(mapping, on="v", how="left", maintain_order="left")["c"].fill_null(-1)
        out = (codes.to_numpy().astype(np.int32), uniq.to_numpy().astype(object))
        self._cache[key] = out
        return out

    def string_codes(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        return self.codes_of(f"str:{name}", self.df[name])

    def derived_codes(self, key: str, expr: pl.Expr) -> tuple[np.ndarray, np.ndarray]:
        if key in self._cache:
            return self._cache[key]
        s = self.df.select(expr.alias("v")).to_series()
        return self.codes_of(key, s)

    # ---- name fields -------------------------------------------------------------
    @staticmethod
    def first_token(c: str) -> pl.Expr:
        return pl.col(c).cast(pl.String).str.strip_chars().str.split(" ").list.first()

    @staticmethod
    def nospace(c: str) -> pl.Expr:
        return pl.col(c).cast(pl.String).str.replace_all(r"[\s\-']", "")

    def name_space(self, forename: str, surname: str, alts: list[str]) -> dict:
        """Codes for the parts of a person's name in ONE shared dictionary, so a
        forename can be compared with a surname (swap) or an alias token."""
        key = f"names:{forename}:{surname}:{','.join(alts)}"
        if key in self._cache:
            return self._cache[key]
        cols = [c for c in [forename, *alts] if c in self.df.columns]
        frame = self.df.select(
            self.first_token(forename).alias("fn1"),
            self.nospace(surname).alias("sn"),
            pl.concat_list([pl.col(c).cast(pl.String).fill_null("").str.split(" ") for c in cols])
            .list.eval(pl.element().filter(pl.element() != "")).list.unique(maintain_order=True)
            .list.head(6).alias("alts"),
        ).with_columns(pl.col("fn1").replace("", None), pl.col("sn").replace("", None))
        vocab = pl.concat([frame["fn1"].drop_nulls(), frame["sn"].drop_nulls(),
                           frame["alts"].explode().drop_nulls()]).unique().sort()
        lookup = pl.DataFrame({"v": vocab, "c": pl.arange(0, vocab.len(), eager=True, dtype=pl.Int32)})

        def enc(s: pl.Series) -> np.ndarray:
            return (pl.DataFrame({"v": s}).join(lookup, on="v", how="left", maintain_order="left")["c"]
                    .fill_null(-1).to_numpy().astype(np.int32))

        values = vocab.to_numpy().astype(object)
        fn1 = enc(frame["fn1"])
        sn = enc(frame["sn"])
        alts = [enc(frame["alts"].list.get(j, null_on_oob=True)) for j in range(6)]
        first_char = pl.Series(values, dtype=pl.String).str.slice(0, 1)
        init_codes, _ = self.codes_of(f"initvocab:{key}", first_char)
        joint = np.where((fn1 >= 0) & (sn >= 0), fn1.astype(np.int64) * (len(values) + 1) + sn, -1)
        out = {"values": values, "fn1": fn1, "sn": sn, "alts": alts, "init": init_codes, "joint": joint}
        self._cache[key] = out
        return out

    # ---- dates -------------------------------------------------------------------
    def date_parts(self, name: str) -> dict:
        key = f"date:{name}"
        if key in self._cache:
            return self._cache[key]
        s = self.df[name]
        if s.dtype == pl.Date:
            d = s
            raw = s.dt.strftime("%Y%m%d")
        elif s.dtype == pl.Datetime or isinstance(s.dtype, pl.Datetime):
            d = s.dt.date()
            raw = d.dt.strftime("%Y%m%d")
        else:
            st = s.cast(pl.String).str.strip_chars()
            parsed = [st.str.to_date(f, strict=False) for f in DATE_FORMATS]
            d = pl.select(pl.coalesce(parsed)).to_series()
            raw = pl.select(pl.when(d.is_not_null()).then(d.dt.strftime("%Y%m%d"))
                            .otherwise(st.str.replace_all(r"\D", ""))).to_series()
            raw = raw.replace("", None)
        days = d.cast(pl.Int32)
        valid = days.is_not_null().to_numpy()
        out = {
            "valid": valid,
            "days": days.fill_null(0).to_numpy().astype(np.int32),
            "y": d.dt.year().fill_null(-1).to_numpy().astype(np.int32),
            "m": d.dt.month().fill_null(-1).to_numpy().astype(np.int32),
            "d": d.dt.day().fill_null(-1).to_numpy().astype(np.int32),
            "raw": self.codes_of(f"dateraw:{name}", raw),
        }
        self._cache[key] = out
        return out

    # ---- postcodes ---------------------------------------------------------------
    def postcode_parts(self, name: str) -> dict:
        """Full / sector / district / area codes of a standardised UK postcode
        ("AB1 2CD"); areas are derived from the few thousand distinct districts."""
        key = f"pc:{name}"
        if key in self._cache:
            return self._cache[key]
        nos = pl.col(name).cast(pl.String).str.to_uppercase().str.replace_all(" ", "", literal=True)
        outward = nos.str.head(-3)
        district = self.derived_codes(f"pcdistrict:{name}", outward)
        dvals = pl.Series(district[1], dtype=pl.String)
        area_of_district = self.codes_of(f"pcareavals:{name}", dvals.str.extract(r"^([A-Z]+)", 1))
        dcode = district[0]
        if area_of_district[0].size:
            area = np.where(dcode >= 0, area_of_district[0][np.maximum(dcode, 0)], -1).astype(np.int32)
        else:
            area = np.full(dcode.size, -1, np.int32)
        out = {
            "full": self.derived_codes(f"pcfull:{name}", nos),
            "sector": self.derived_codes(f"pcsector:{name}",
                                         pl.concat_str([outward, nos.str.tail(3).str.head(1)], separator=" ")),
            "district": district,
            "area": (area, area_of_district[1]),
        }
        self._cache[key] = out
        return out

    def numeric(self, name: str) -> np.ndarray:
        key = f"num:{name}"
        if key not in self._cache:
            s = self.df[name]
            if s.dtype == pl.String:
                s = s.str.strip_chars().cast(pl.Float64, strict=False)
            self._cache[key] = s.cast(pl.Float64).fill_null(np.nan).to_numpy()
        return self._cache[key]
