"""The delivery config: one YAML file describing a delivery.

It names the extracts (path, format, encoding, delimiter), maps each
delivery's own column names onto the canonical fields of its contract in
`schemas/contracts/`, gives date formats and value maps, and points at the
linkage settings, the governance rules and the output directory.

Every mistake is reported as one line naming the file and the key
(`ConfigError`), never with a traceback. The format is documented in
docs/config.md.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from etl.errors import ConfigError
from etl.paths import CONTRACTS_DIR

TYPES = {"str", "int", "float", "date", "bool"}
CLASSES = {"direct_identifier", "quasi_identifier", "sensitive", "analytic", "technical"}
STANDARDISE = {"name", "postcode", "email", "ucas_id", "gmc_number", "sex",
               "medical_school", "specialty", "none"}
FORMATS = {"csv", "parquet"}
ENCODINGS = {"utf-8", "utf8", "utf-8-sig", "latin-1", "latin1", "iso-8859-1", "cp1252"}

TOP_KEYS = {"delivery", "sources", "linkage", "governance", "quality", "output"}
SOURCE_KEYS = {"path", "format", "encoding", "delimiter", "contract", "columns",
               "fields", "date_formats", "value_maps", "ignore_columns", "null_values"}
GOVERNANCE_KEYS = {"rules", "key_env", "key_file", "demo"}
OUTPUT_KEYS = {"dir", "keep_runs"}
QUALITY_KEYS = {"max_quarantine_share", "link_rate_bounds"}
LINKAGE_MODES = ("full", "incremental")         # linkage.mode (read here; the engine never sees it)
MERGE_POLICIES = ("apply", "hold")              # linkage.merge_policy (incremental only)


@dataclass(frozen=True)
class FieldSpec:
    name: str
    type: str = "str"
    required: bool = False
    unique: bool = False
    cls: str = "analytic"
    standardise: str | None = None
    allowed: tuple | None = None
    min: Any = None
    max: Any = None
    max_today: bool = False
    description: str = ""


@dataclass(frozen=True)
class Contract:
    name: str
    path: Path
    fields: dict[str, FieldSpec]
    grain: str = ""


@dataclass
class SourceConfig:
    name: str
    path: Path
    format: str
    encoding: str
    delimiter: str
    contract: Contract
    columns: dict[str, str]                 # native -> canonical
    fields: dict[str, FieldSpec]            # canonical -> spec (contract + declared extras)
    date_formats: dict[str, list[str]]
    value_maps: dict[str, dict[str, str]]
    ignore_columns: dict[str, str]          # native -> governance class
    null_values: list[str]


@dataclass
class Config:
    path: Path
    delivery: str
    sources: dict[str, SourceConfig]
    linkage: dict
    governance: dict
    quality: dict
    output_dir: Path
    raw: dict = field(repr=False)
    linkage_mode: str = "full"              # full: link the delivery alone; incremental: onto the state
    merge_policy: str = "apply"             # incremental: apply or hold merges / splits

    @property
    def restricted_dir(self) -> Path:
        return self.output_dir / "restricted"

    @property
    def releases_dir(self) -> Path:
        return self.output_dir / "releases"

    def config_hash(self) -> str:
        """Hash of the config's meaning (not its formatting), for caching."""
        return hashlib.sha256(json.dumps(self.raw, sort_keys=True, default=str).encode()).hexdigest()


def _err(file, key, msg):
    return ConfigError(msg, file=str(file), key=key)


def _check_keys(d: dict, allowed: set, file, where: str) -> None:
    if not isinstance(d, dict):
        raise _err(file, where, f"must be a mapping, got {type(d).__name__}")
    for k in d:
        if k not in allowed:
            raise _err(file, f"{where}.{k}" if where else k,
                       f"unknown key (allowed: {', '.join(sorted(allowed))})")


def _field_spec(name: str, d: dict, file, where: str) -> FieldSpec:
    allowed_keys = {"type", "required", "unique", "class", "standardise", "allowed",
                    "min", "max", "max_today", "description"}
    _check_keys(d, allowed_keys, file, where)
    t = d.get("type", "str")
    if t not in TYPES:
        raise _err(file, f"{where}.type", f"'{t}' is not a type (one of {', '.join(sorted(TYPES))})")
    c = d.get("class", "analytic")
    if c not in CLASSES:
        raise _err(file, f"{where}.class", f"'{c}' is not a governance class (one of {', '.join(sorted(CLASSES))})")
    st = d.get("standardise")
    if st is not None and st not in STANDARDISE:
        raise _err(file, f"{where}.standardise", f"'{st}' is not a standardiser (one of {', '.join(sorted(STANDARDISE))})")
    allowed = d.get("allowed")
    if allowed is not None and not isinstance(allowed, list):
        raise _err(file, f"{where}.allowed", "must be a list")
    return FieldSpec(
        name=name, type=t, required=bool(d.get("required", False)),
        unique=bool(d.get("unique", False)), cls=c,
        standardise=None if st in (None, "none") else st,
        allowed=tuple(str(a) for a in allowed) if allowed is not None else None,
        min=d.get("min"), max=d.get("max"), max_today=bool(d.get("max_today", False)),
        description=d.get("description", ""),
    )


def load_contract(name_or_path: str, base_dir: Path | None = None, file=None) -> Contract:
    p = Path(name_or_path)
    if p.suffix not in (".yaml", ".yml"):
        p = CONTRACTS_DIR / f"{name_or_path}.yaml"
    elif base_dir is not None and not p.is_absolute():
        p = base_dir / p
    if not p.is_file():
        raise _err(file or p, "contract", f"no contract '{name_or_path}' (looked for {p})")
    try:
        d = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise _err(p, "", f"not valid YAML ({str(e).splitlines()[0]})") from None
    _check_keys(d, {"extract", "grain", "fields", "description"}, p, "")
    fields = {n: _field_spec(n, spec or {}, p, f"fields.{n}") for n, spec in (d.get("fields") or {}).items()}
    if "record_id" not in fields:
        raise _err(p, "fields", "a contract must declare record_id")
    return Contract(name=d.get("extract", p.stem), path=p, fields=fields, grain=d.get("grain", ""))


def _source(name: str, d: dict, file: Path, base: Path) -> SourceConfig:
    where = f"sources.{name}"
    _check_keys(d, SOURCE_KEYS, file, where)
    if "path" not in d:
        raise _err(file, f"{where}.path", "missing")
    path = (base / d["path"]).resolve()
    if not path.exists():
        raise _err(file, f"{where}.path", f"file not found: {path}")
    if path.is_dir():
        raise _err(file, f"{where}.path", f"is a directory, not a file: {path}")
    fmt = d.get("format", path.suffix.lstrip(".").lower() or "csv")
    if fmt not in FORMATS:
        raise _err(file, f"{where}.format", f"'{fmt}' is not supported (csv or parquet)")
    enc = str(d.get("encoding", "utf-8")).lower()
    if enc not in ENCODINGS:
        raise _err(file, f"{where}.encoding", f"'{enc}' is not supported (one of {', '.join(sorted(ENCODINGS))})")
    delim = d.get("delimiter", ",")
    if not isinstance(delim, str) or len(delim) != 1:
        raise _err(file, f"{where}.delimiter", "must be a single character")
    contract = load_contract(d.get("contract", name), base, file)
    fields = dict(contract.fields)
    for fname, spec in (d.get("fields") or {}).items():
        if fname in fields:
            raise _err(file, f"{where}.fields.{fname}", "already declared by the contract")
        fields[fname] = _field_spec(fname, spec or {}, file, f"{where}.fields.{fname}")
    columns = d.get("columns") or {}
    _check_keys(columns, set(columns), file, f"{where}.columns")
    seen: dict[str, str] = {}
    for native, canon in columns.items():
        if canon not in fields:
            raise _err(file, f"{where}.columns.{native}",
                       f"'{canon}' is not a field of contract '{contract.name}' or of {where}.fields")
        if canon in seen:
            raise _err(file, f"{where}.columns.{native}",
                       f"'{canon}' is already mapped from column '{seen[canon]}'")
        seen[canon] = native
    missing = [f.name for f in fields.values() if f.required and f.name not in seen]
    if missing:
        raise _err(file, f"{where}.columns", f"required field(s) not mapped: {', '.join(missing)}")
    date_formats = {}
    for k, v in (d.get("date_formats") or {}).items():
        if k not in fields or fields[k].type != "date":
            raise _err(file, f"{where}.date_formats.{k}", "is not a date field of this source")
        date_formats[k] = [v] if isinstance(v, str) else list(v)
    value_maps = {}
    for k, v in (d.get("value_maps") or {}).items():
        if k not in fields:
            raise _err(file, f"{where}.value_maps.{k}", "is not a field of this source")
        if not isinstance(v, dict):
            raise _err(file, f"{where}.value_maps.{k}", "must be a mapping of delivered value -> canonical value")
        value_maps[k] = {str(a): (None if b is None else str(b)) for a, b in v.items()}
    ignore = d.get("ignore_columns") or {}
    if not isinstance(ignore, dict):
        raise _err(file, f"{where}.ignore_columns", "must be a mapping of column -> governance class")
    for col, cls in ignore.items():
        if cls not in CLASSES:
            raise _err(file, f"{where}.ignore_columns.{col}", f"'{cls}' is not a governance class")
        if col in columns:
            raise _err(file, f"{where}.ignore_columns.{col}", "is also mapped in columns")
    nulls = d.get("null_values", ["", "NA", "N/A", "NULL", "null"])
    return SourceConfig(name=name, path=path, format=fmt, encoding=enc, delimiter=delim,
                        contract=contract, columns=dict(columns), fields=fields,
                        date_formats=date_formats, value_maps=value_maps,
                        ignore_columns=dict(ignore), null_values=list(nulls))


def load(path: str | Path, *, check_columns: bool = True) -> Config:
    """Load and validate a delivery config. Raises ConfigError (one line)."""
    file = Path(path)
    if not file.is_file():
        raise ConfigError("config file not found", file=str(file))
    try:
        raw = yaml.safe_load(file.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise _err(file, "", f"not valid YAML ({str(e).splitlines()[0]})") from None
    except UnicodeDecodeError:
        raise _err(file, "", "not a UTF-8 text file") from None
    if not isinstance(raw, dict):
        raise _err(file, "", "the config must be a YAML mapping")
    _check_keys(raw, TOP_KEYS, file, "")
    base = file.resolve().parent
    srcs = raw.get("sources")
    if not srcs or not isinstance(srcs, dict):
        raise _err(file, "sources", "missing or empty: name two or three extracts")
    if not 1 <= len(srcs) <= 3:
        raise _err(file, "sources", f"expects one to three extracts, got {len(srcs)}")
    sources = {n: _source(n, s or {}, file, base) for n, s in srcs.items()}
    gov = raw.get("governance") or {}
    _check_keys(gov, GOVERNANCE_KEYS, file, "governance")
    if "demo" in gov and not isinstance(gov["demo"], bool):
        raise _err(file, "governance.demo", "must be true or false")
    gov = dict(gov)
    if gov.get("key_file"):
        gov["key_file"] = str((base / gov["key_file"]).resolve())
    gov.setdefault("rules", "profile_a")
    gov.setdefault("key_env", "MEDLINK_KEY")
    gov.setdefault("demo", False)
    out = raw.get("output") or {}
    _check_keys(out, OUTPUT_KEYS, file, "output")
    quality = raw.get("quality") or {}
    _check_keys(quality, QUALITY_KEYS, file, "quality")
    linkage = raw.get("linkage") or {}
    if not isinstance(linkage, dict):
        raise _err(file, "linkage", "must be a mapping")
    linkage = dict(linkage)          # mode and merge_policy are the pipeline's, not the engine's
    mode = linkage.pop("mode", "full")
    if mode not in LINKAGE_MODES:
        raise _err(file, "linkage.mode", f"'{mode}' is not a linkage mode (one of {', '.join(LINKAGE_MODES)})")
    policy = linkage.pop("merge_policy", None)
    if policy is not None and mode != "incremental":
        raise _err(file, "linkage.merge_policy", "only applies with linkage.mode: incremental")
    if policy is not None and policy not in MERGE_POLICIES:
        raise _err(file, "linkage.merge_policy",
                   f"'{policy}' is not a merge policy (one of {', '.join(MERGE_POLICIES)})")
    cfg = Config(path=file.resolve(), delivery=str(raw.get("delivery") or file.stem),
                 sources=sources, linkage=linkage, governance=gov, quality=quality,
                 output_dir=(base / out.get("dir", "out")).resolve(), raw=raw,
                 linkage_mode=mode, merge_policy=policy or "apply")
    if check_columns:
        from etl.ingest import check_columns as _check
        for s in sources.values():
            _check(s, cfg.path)
    return cfg
