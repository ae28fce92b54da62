"""Load and validate a governance rules file (`schemas/rules/<profile>.yaml`).

The rules file is the single source of truth for each field's class and
treatment, the hierarchies, the QI set and k, l-diversity, local-suppression
cap, the extended risk set, the subgroups the report breaks suppression down
by, the motivated-intruder set-up, the scanner's token allow-list and the
aggregate disclosure rules. A mistake raises ConfigError naming the file and
the dotted key; nothing is defaulted silently except where this module says.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from etl.errors import ConfigError
from etl.governance.hierarchies import Hierarchy, load_hierarchy

CLASSES = ("direct_identifier", "quasi_identifier", "sensitive", "analytic", "technical")
TREATMENTS = ("drop", "pseudonymise", "generalise", "keep")
TOP_KEYS = {"profile", "version", "description", "pseudonym", "key", "hierarchies", "tables",
            "k_anonymity", "l_diversity", "risk_report", "subgroups", "intruder", "scanner",
            "aggregates"}
REQUIRED = ("profile", "pseudonym", "hierarchies", "tables", "k_anonymity", "l_diversity", "aggregates")

AGGREGATE_DEFAULTS: dict[str, Any] = {
    "threshold": 10, "suppress_zeros": True, "secondary_suppression": True,
    "rounding": {"base": 5, "method": "hesa"}, "totals": "from_unrounded",
    "percentages": {"basis": "rounded_counts", "min_denominator": 22.5, "min_numerator": 10},
    "means": {"min_n": 10}, "csv_marker": "..",
}


def default_rules_dir() -> Path:
    from etl.paths import RULES_DIR
    return RULES_DIR


@dataclass(frozen=True)
class FieldRule:
    table: str
    name: str
    cls: str
    treatment: str
    hierarchy: str | None = None
    output: str | None = None
    why: str = ""
    per_event_type: bool = False

    @property
    def released(self) -> bool:
        return self.treatment != "drop"


@dataclass(frozen=True)
class EventTypeRule:
    name: str
    release: bool
    detail: str                    # drop | keep | hierarchy | follows
    target: str | None = None      # hierarchy name or doctors field
    why: str = ""


@dataclass
class TableRules:
    name: str
    fields: dict[str, FieldRule]
    description: str = ""
    event_type_field: str | None = None
    event_types: dict[str, EventTypeRule] = field(default_factory=dict)

    def output_columns(self, pseudonym_output: str) -> list[str]:
        out = []
        for f in self.fields.values():
            if f.treatment == "pseudonymise":
                out.append(pseudonym_output)
            elif f.released:
                out.append(f.output or f.name)
        return out


@dataclass
class Rules:
    name: str
    path: Path
    text: str
    sha256: str
    raw: dict
    version: Any
    description: str
    hierarchies: dict[str, Hierarchy]
    tables: dict[str, TableRules]
    pseudonym: dict
    key: dict
    k: int
    quasi_identifiers: list[str]
    escalation_preference: list[str]
    escalation_weights: dict[str, float]
    max_suppressed_fraction: float
    suppression: dict
    l: int
    sensitive: dict[str, dict]
    extended_quasi_identifiers: list[str]
    extended_target_k: int | None
    extended_coarsen: bool
    subgroups: dict[str, dict]
    intruder: dict
    scanner: dict
    aggregates: dict

    # ------------------------------------------------------------------ helpers
    @property
    def pseudonym_field(self) -> str:
        return self.pseudonym["field"]

    @property
    def pseudonym_output(self) -> str:
        return self.pseudonym["output"]

    @property
    def marker(self) -> str:
        return self.suppression["marker"]

    @property
    def flag_column(self) -> str:
        return self.suppression["flag_column"]

    def field(self, table: str, name: str) -> FieldRule:
        return self.tables[table].fields[name]

    def output_name(self, table: str, name: str) -> str:
        f = self.field(table, name)
        return self.pseudonym_output if f.treatment == "pseudonymise" else (f.output or f.name)

    def allowed_columns(self, table: str) -> list[str]:
        """The release columns of `table` (the schema allow-list)."""
        cols = self.tables[table].output_columns(self.pseudonym_output)
        if table == "doctors":
            cols.append(self.flag_column)
        return cols

    def allow_list(self) -> dict[str, list[str]]:
        return {t: self.allowed_columns(t) for t in self.tables}

    def label_tokens(self) -> set[str]:
        """Upper-cased word tokens the rules themselves can put in a release
        (hierarchy labels, reference-table values, event types, allow_tokens)."""
        import re
        words: set[str] = set()

        def add(s: str) -> None:
            words.update(w.upper() for w in re.findall(r"[A-Za-z]+", s))

        for h in self.hierarchies.values():
            for lab in h.labels():
                add(lab)
        for t in self.tables.values():
            for et in t.event_types:
                add(et)
            for f in t.fields.values():
                add(f.name)
                add(f.output or "")
        for tok in self.scanner.get("allow_tokens", []):
            add(str(tok))
        add(self.marker)
        return words

    def summary(self) -> dict:
        return {"name": self.name, "file": self.path.name, "sha256": self.sha256, "version": self.version,
                "k": self.k, "l": self.l, "quasi_identifiers": self.quasi_identifiers}


# ---------------------------------------------------------------------- loading

def _err(file: Path, key: str, msg: str) -> ConfigError:
    return ConfigError(msg, file=str(file), key=key)


def _resolve(ref: str | Path) -> Path:
    p = Path(ref)
    if p.suffix in (".yaml", ".yml") or p.exists() or len(p.parts) > 1:
        if p.is_file():
            return p.resolve()
        cand = default_rules_dir() / p.name
        if cand.is_file():
            return cand
        raise ConfigError("rules file not found", file=str(p))
    cand = default_rules_dir() / f"{ref}.yaml"
    if not cand.is_file():
        raise ConfigError(f"no rules profile '{ref}' in {default_rules_dir()}", file=str(cand))
    return cand


def _list_of_str(v: Any, file: Path, key: str) -> list[str]:
    if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
        raise _err(file, key, "must be a list of strings")
    return list(v)


def _mapping(v: Any, file: Path, key: str, *, required: bool = True) -> dict:
    if v is None and not required:
        return {}
    if not isinstance(v, dict):
        raise _err(file, key, "must be a mapping")
    return v


def _field(table: str, name: str, raw: Any, file: Path, hier: dict[str, Hierarchy]) -> FieldRule:
    where = f"tables.{table}.fields.{name}"
    raw = _mapping(raw, file, where)
    extra = set(raw) - {"class", "treatment", "hierarchy", "output", "why", "per_event_type"}
    if extra:
        raise _err(file, f"{where}.{sorted(extra)[0]}", "unknown key")
    cls, tr = raw.get("class"), raw.get("treatment")
    if cls not in CLASSES:
        raise _err(file, f"{where}.class", f"must be one of {', '.join(CLASSES)}")
    if tr not in TREATMENTS:
        raise _err(file, f"{where}.treatment", f"must be one of {', '.join(TREATMENTS)}")
    if cls == "direct_identifier" and tr != "drop":
        raise _err(file, f"{where}.treatment", "a direct identifier must be dropped")
    h = raw.get("hierarchy")
    per_type = bool(raw.get("per_event_type", False))
    if tr == "generalise" and not per_type:
        if h not in hier:
            raise _err(file, f"{where}.hierarchy", "generalise needs a hierarchy declared under hierarchies")
    elif h is not None:
        raise _err(file, f"{where}.hierarchy", f"a hierarchy only goes with treatment generalise, not {tr}")
    out = raw.get("output")
    if out is not None and (not isinstance(out, str) or not out.isidentifier()):
        raise _err(file, f"{where}.output", "must be a column name")
    if tr in ("drop", "pseudonymise") and out is not None:
        raise _err(file, f"{where}.output", f"treatment {tr} has no output name")
    return FieldRule(table=table, name=name, cls=cls, treatment=tr, hierarchy=h, output=out,
                     why=str(raw.get("why") or ""), per_event_type=per_type)


def _event_types(raw: Any, file: Path, hier: dict, doctors: TableRules | None) -> dict[str, EventTypeRule]:
    where = "tables.events.event_types"
    raw = _mapping(raw, file, where)
    out = {}
    for et, spec in raw.items():
        k = f"{where}.{et}"
        spec = _mapping(spec, file, k)
        if not isinstance(spec.get("release"), bool):
            raise _err(file, f"{k}.release", "must be true or false")
        d = spec.get("detail", "drop")
        if not spec["release"]:
            out[et] = EventTypeRule(et, False, "drop", why=str(spec.get("why") or ""))
            continue
        if d in ("drop", "keep"):
            rule = EventTypeRule(et, True, d)
        elif isinstance(d, dict) and set(d) == {"hierarchy"}:
            if d["hierarchy"] not in hier or not hier[d["hierarchy"]].string_output:
                raise _err(file, f"{k}.detail.hierarchy", "must name a (string) hierarchy")
            rule = EventTypeRule(et, True, "hierarchy", d["hierarchy"])
        elif isinstance(d, dict) and set(d) == {"follows"}:
            f = doctors.fields.get(d["follows"]) if doctors else None
            if f is None or f.treatment != "generalise":
                raise _err(file, f"{k}.detail.follows", "must name a generalised doctors field")
            rule = EventTypeRule(et, True, "follows", d["follows"])
        else:
            raise _err(file, f"{k}.detail", "must be drop, keep, {hierarchy: name} or {follows: field}")
        out[et] = EventTypeRule(rule.name, rule.release, rule.detail, rule.target, str(spec.get("why") or ""))
    return out


def load_rules(ref: str | Path = "profile_a") -> Rules:
    """Load `schemas/rules/<ref>.yaml` (or a path) and validate it."""
    path = _resolve(ref)
    data = path.read_bytes()
    try:
        raw = yaml.safe_load(data)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        raise ConfigError(f"not valid YAML{f' (line {mark.line + 1})' if mark else ''}", file=str(path)) from None
    if not isinstance(raw, dict):
        raise ConfigError("a rules file is a YAML mapping", file=str(path))
    extra = set(raw) - TOP_KEYS
    if extra:
        raise _err(path, sorted(extra)[0], f"unknown key (allowed: {', '.join(sorted(TOP_KEYS))})")
    for k in REQUIRED:
        if k not in raw:
            raise _err(path, k, "missing")

    hier_raw = _mapping(raw["hierarchies"], path, "hierarchies")
    hier = {n: load_hierarchy(n, h, path) for n, h in hier_raw.items()}

    # pseudonym and key
    ps = _mapping(raw["pseudonym"], path, "pseudonym")
    for k in ("field", "output"):
        if not isinstance(ps.get(k), str):
            raise _err(path, f"pseudonym.{k}", "must be a column name")
    ps = {"method": "random_token", "token_bytes": 16, **ps}
    if ps["method"] not in ("random_token", "keyed_release_hmac"):
        raise _err(path, "pseudonym.method", "must be random_token or keyed_release_hmac")
    if not isinstance(ps["token_bytes"], int) or not 16 <= ps["token_bytes"] <= 32:
        raise _err(path, "pseudonym.token_bytes", "must be an integer from 16 to 32")
    key = {"algorithm": "HMAC-SHA256", "min_bytes": 32, "rotate_after_days": 365,
           **_mapping(raw.get("key"), path, "key", required=False)}
    if key["algorithm"] != "HMAC-SHA256":
        raise _err(path, "key.algorithm", "only HMAC-SHA256 is supported")

    # tables
    tables_raw = _mapping(raw["tables"], path, "tables")
    if "doctors" not in tables_raw:
        raise _err(path, "tables.doctors", "missing")
    tables: dict[str, TableRules] = {}
    for tname in ("doctors", *[t for t in tables_raw if t != "doctors"]):
        t = _mapping(tables_raw[tname], path, f"tables.{tname}")
        extra = set(t) - {"description", "fields", "event_type_field", "event_types"}
        if extra:
            raise _err(path, f"tables.{tname}.{sorted(extra)[0]}", "unknown key")
        fields_raw = _mapping(t.get("fields"), path, f"tables.{tname}.fields")
        fields = {n: _field(tname, n, f, path, hier) for n, f in fields_raw.items()}
        if ps["field"] not in fields or fields[ps["field"]].treatment != "pseudonymise":
            raise _err(path, f"tables.{tname}.fields.{ps['field']}", "the person id must be listed with treatment pseudonymise")
        for n, f in fields.items():
            if f.treatment == "pseudonymise" and n != ps["field"]:
                raise _err(path, f"tables.{tname}.fields.{n}.treatment", "only the person id can be pseudonymised")
            if f.per_event_type and tname == "doctors":
                raise _err(path, f"tables.{tname}.fields.{n}.per_event_type", "only for the events table")
        tr = TableRules(tname, fields, str(t.get("description") or ""))
        if any(f.per_event_type for f in fields.values()) or "event_types" in t:
            etf = t.get("event_type_field")
            if etf not in fields:
                raise _err(path, f"tables.{tname}.event_type_field", "must name a field of the table")
            tr.event_type_field = etf
            tr.event_types = _event_types(t.get("event_types"), path, hier, tables.get("doctors"))
        outs = tr.output_columns(ps["output"])
        dup = {c for c in outs if outs.count(c) > 1}
        if dup:
            raise _err(path, f"tables.{tname}.fields", f"two fields are released as {sorted(dup)[0]}")
        tables[tname] = tr
    doctors = tables["doctors"]

    # k-anonymity
    ka = _mapping(raw["k_anonymity"], path, "k_anonymity")
    k = ka.get("k")
    if not isinstance(k, int) or isinstance(k, bool) or k < 2:
        raise _err(path, "k_anonymity.k", "must be an integer >= 2")
    if ka.get("table", "doctors") != "doctors":
        raise _err(path, "k_anonymity.table", "k-anonymity is checked on the doctors table")
    qis = _list_of_str(ka.get("quasi_identifiers"), path, "k_anonymity.quasi_identifiers")
    for q in qis:
        f = doctors.fields.get(q)
        if f is None:
            raise _err(path, f"k_anonymity.quasi_identifiers.{q}", "not a doctors field")
        if f.treatment not in ("generalise", "keep"):
            raise _err(path, f"k_anonymity.quasi_identifiers.{q}", f"a QI must be released (it is {f.treatment})")
        if f.treatment == "generalise" and not hier[f.hierarchy].string_output:
            raise _err(path, f"k_anonymity.quasi_identifiers.{q}", "QI hierarchies must produce labels")
    pref = _list_of_str(ka.get("escalation_preference", []), path, "k_anonymity.escalation_preference")
    for q in pref:
        if q not in qis:
            raise _err(path, f"k_anonymity.escalation_preference.{q}", "not in quasi_identifiers")
    weights = _mapping(ka.get("escalation_weights"), path, "k_anonymity.escalation_weights", required=False)
    for q, w in weights.items():
        if q not in qis:
            raise _err(path, f"k_anonymity.escalation_weights.{q}", "not in quasi_identifiers")
        if not isinstance(w, (int, float)) or isinstance(w, bool) or w <= 0:
            raise _err(path, f"k_anonymity.escalation_weights.{q}", "must be a positive number")
    frac = ka.get("max_suppressed_fraction", 0.05)
    if not isinstance(frac, (int, float)) or not 0 <= frac <= 0.5:
        raise _err(path, "k_anonymity.max_suppressed_fraction", "must be a number from 0 to 0.5")
    sup = {"method": "qi_values", "marker": "Suppressed", "flag_column": "qi_suppressed",
           **_mapping(ka.get("suppression"), path, "k_anonymity.suppression", required=False)}
    if sup["method"] != "qi_values":
        raise _err(path, "k_anonymity.suppression.method", "only qi_values is supported (rows are kept and counted)")
    if not str(sup["flag_column"]).isidentifier():
        raise _err(path, "k_anonymity.suppression.flag_column", "must be a column name")

    # l-diversity
    ld = _mapping(raw["l_diversity"], path, "l_diversity")
    l_ = ld.get("l", 2)
    if not isinstance(l_, int) or l_ < 1:
        raise _err(path, "l_diversity.l", "must be a positive integer")
    if ld.get("measure", "distinct") != "distinct":
        raise _err(path, "l_diversity.measure", "only distinct l-diversity is supported")
    sens = {}
    for s, spec in _mapping(ld.get("sensitive"), path, "l_diversity.sensitive", required=False).items():
        f = doctors.fields.get(s)
        if f is None or not f.released:
            raise _err(path, f"l_diversity.sensitive.{s}", "must be a released doctors field")
        if f.cls != "sensitive":
            raise _err(path, f"l_diversity.sensitive.{s}", "must have class sensitive")
        spec = _mapping(spec, path, f"l_diversity.sensitive.{s}")
        sens[s] = {"protect_values": _list_of_str(spec.get("protect_values", []), path,
                                                  f"l_diversity.sensitive.{s}.protect_values")}

    # extended risk set
    rr = _mapping(raw.get("risk_report"), path, "risk_report", required=False)
    ext = _list_of_str(rr.get("extended_quasi_identifiers", []), path, "risk_report.extended_quasi_identifiers")
    for q in ext:
        f = doctors.fields.get(q)
        if f is None or not f.released or q in qis:
            raise _err(path, f"risk_report.extended_quasi_identifiers.{q}", "must be a released doctors field outside QI set A")
    tk = rr.get("target_k")
    if tk is not None and (not isinstance(tk, int) or tk < 1):
        raise _err(path, "risk_report.target_k", "must be a positive integer")

    # subgroups
    subs = {}
    for n, spec in _mapping(raw.get("subgroups"), path, "subgroups", required=False).items():
        spec = _mapping(spec, path, f"subgroups.{n}")
        if spec.get("field") not in doctors.fields:
            raise _err(path, f"subgroups.{n}.field", "not a doctors field")
        if spec.get("hierarchy") is not None and spec["hierarchy"] not in hier:
            raise _err(path, f"subgroups.{n}.hierarchy", "not a declared hierarchy")
        subs[n] = {"field": spec["field"], "hierarchy": spec.get("hierarchy")}

    # intruder
    it = _mapping(raw.get("intruder"), path, "intruder", required=False)
    if it:
        pub = _mapping(it.get("public_fields"), path, "intruder.public_fields")
        for pf, f in pub.items():
            if f not in doctors.fields:
                raise _err(path, f"intruder.public_fields.{pf}", "not a doctors field")
        for pf, ets in _mapping(it.get("event_years"), path, "intruder.event_years", required=False).items():
            if pf not in pub:
                raise _err(path, f"intruder.event_years.{pf}", "not a public field")
            _list_of_str(ets, path, f"intruder.event_years.{pf}")
        if it.get("population") is not None and it["population"] not in doctors.fields:
            raise _err(path, "intruder.population", "not a doctors field")

    scanner = _mapping(raw.get("scanner"), path, "scanner", required=False)
    if "allow_tokens" in scanner:
        scanner["allow_tokens"] = [str(t) for t in scanner["allow_tokens"]]

    agg = _aggregates(raw["aggregates"], path)

    return Rules(
        name=str(raw["profile"]), path=path, text=data.decode("utf-8"),
        sha256=hashlib.sha256(data).hexdigest(), raw=raw, version=raw.get("version"),
        description=str(raw.get("description") or ""), hierarchies=hier, tables=tables,
        pseudonym=ps, key=key, k=k, quasi_identifiers=qis, escalation_preference=pref,
        escalation_weights={q: float(w) for q, w in weights.items()},
        max_suppressed_fraction=float(frac), suppression=sup, l=l_, sensitive=sens,
        extended_quasi_identifiers=ext, extended_target_k=tk,
        extended_coarsen=bool(rr.get("coarsen_to_target", False)), subgroups=subs,
        intruder=it, scanner=scanner, aggregates=agg)


def _aggregates(raw: Any, file: Path) -> dict:
    a = _mapping(raw, file, "aggregates")
    extra = set(a) - set(AGGREGATE_DEFAULTS)
    if extra:
        raise _err(file, f"aggregates.{sorted(extra)[0]}", "unknown key")
    out = {**AGGREGATE_DEFAULTS, **a}
    if not isinstance(out["threshold"], int) or out["threshold"] < 1:
        raise _err(file, "aggregates.threshold", "must be a positive integer")
    r = out["rounding"]
    if r is not None:
        r = {"base": 5, "method": "hesa", **_mapping(r, file, "aggregates.rounding")}
        if not isinstance(r["base"], int) or r["base"] < 1 or r["method"] != "hesa":
            raise _err(file, "aggregates.rounding", "base must be a positive integer and method hesa")
        out["rounding"] = r
    if out["totals"] not in ("from_unrounded",):
        raise _err(file, "aggregates.totals", "only from_unrounded is supported")
    p = {**AGGREGATE_DEFAULTS["percentages"], **_mapping(out["percentages"], file, "aggregates.percentages")}
    if p["basis"] not in ("rounded_counts", "unrounded_counts"):
        raise _err(file, "aggregates.percentages.basis", "must be rounded_counts or unrounded_counts")
    out["percentages"] = p
    out["means"] = {**AGGREGATE_DEFAULTS["means"], **_mapping(out["means"], file, "aggregates.means")}
    return out


def aggregate_rules(rules: Any) -> dict:
    """The aggregate disclosure settings from a Rules object, a raw rules mapping
    (as read from YAML) or None (the defaults above, as in governance.md 6.3)."""
    if rules is None:
        return {k: (dict(v) if isinstance(v, dict) else v) for k, v in AGGREGATE_DEFAULTS.items()}
    if isinstance(rules, Rules):
        return rules.aggregates
    if isinstance(rules, dict):
        sec = rules.get("aggregates", rules if "threshold" in rules else None)
        if sec is None:
            return aggregate_rules(None)
        return _aggregates(sec, Path("<rules>"))
    raise TypeError("rules must be a Rules object, a mapping or None")
