"""Load and validate the linkage spec: the config's `linkage:` section plus the
declarative model file it names (default `schemas/linkage/default.yaml`).

The model file is data: sources and which source pairs are compared (tasks),
the deterministic identifier pass, blocking rules, comparisons with their
ordered levels, how lambda/u/m are estimated, decision thresholds and
clustering constraints. Nothing here is per-field code; `comparisons.py` holds
the small library of comparison kinds the file may name.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from etl.errors import ConfigError

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_MODEL = REPO_ROOT / "schemas" / "linkage" / "default.yaml"

# The comparison kinds and, for each, the level tests it accepts.
KIND_TESTS: dict[str, set[str]] = {
    "name": {"exact", "alias", "swapped", "parts", "else"},
    "string": {"exact", "jaro_winkler", "jaro", "damerau_levenshtein", "levenshtein", "prefix", "else"},
    "date": {"exact", "day_month_swap", "year_off", "one_component", "within_days", "damerau_levenshtein", "else"},
    "postcode": {"full", "sector", "district", "area", "else"},
    "exact": {"exact", "else"},
    "identifier": {"exact", "typo", "else"},
    "numeric": {"exact", "within", "else"},
}
KIND_ALIASES = {"numeric-year": "numeric", "numeric_year": "numeric"}
PART_TESTS = {"exact", "jaro_winkler", "jaro", "damerau_levenshtein", "levenshtein", "initial", "alias", "any", "differ"}
BLOCK_TRANSFORMS = {
    None, "identity", "first", "last", "first_token", "soundex", "metaphone", "nysiis",
    "year", "month", "day", "year_month", "month_day", "area", "district", "sector",
    "sorted_tokens", "digits",
}
LINKAGE_SECTION_KEYS = {
    "model", "threshold", "dedupe_threshold", "review_band", "pairs_floor", "reuse_model",
    "labels", "seed", "max_pairs_per_chunk", "report", "subgroups", "workers", "max_block_pairs",
}


@dataclass
class Level:
    label: str
    test: str
    params: dict[str, Any] = field(default_factory=dict)
    tf: str | None = None  # which TF table adjusts this level (joint/forename/surname/value)


@dataclass
class Comparison:
    name: str
    kind: str
    fields: dict[str, Any]
    levels: list[Level]
    tasks: list[tuple[str, str]] | None = None  # None = every task
    m_start: list[float] | None = None
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def columns(self) -> list[str]:
        cols: list[str] = []
        for k, v in self.fields.items():
            if isinstance(v, list):
                cols += v
            elif v:
                cols.append(v)
        for lv in self.levels:
            cols += [f for f in (lv.params.get("when") or {}) if f not in cols]
        return cols

    def level_labels(self) -> list[str]:
        return ["null"] + [lv.label for lv in self.levels]


@dataclass
class BlockKey:
    field: str | list[str]          # a list is joined with spaces (e.g. [forenames, surname])
    transform: str | None = None
    n: int | None = None

    @property
    def fields(self) -> list[str]:
        return list(self.field) if isinstance(self.field, list) else [self.field]

    def describe(self) -> str:
        f = "+".join(self.fields)
        if not self.transform or self.transform == "identity":
            return f
        return f"{self.transform}({f}{', ' + str(self.n) if self.n else ''})"


@dataclass
class BlockRule:
    name: str
    keys: list[BlockKey]
    max_block_pairs: int | None = None   # skip a block producing more pairs than this

    def describe(self) -> str:
        return " & ".join(k.describe() for k in self.keys)


@dataclass
class Identifier:
    name: str
    field: str
    pattern: str
    typo_tolerant: bool = True
    confirm: dict[str, list[str]] = field(default_factory=dict)
    tasks: list[tuple[str, str]] | None = None
    veto: dict[str, list[str]] = field(default_factory=dict)


@dataclass
class Session:
    rule: BlockRule
    max_pairs: int = 2_000_000


@dataclass
class LinkSpec:
    name: str
    sources: dict[str, dict[str, Any]]
    tasks: list[tuple[str, str]]
    identifiers: list[Identifier]
    blocking: list[BlockRule]
    comparisons: list[Comparison]
    sessions: list[Session]
    prior: dict[str, Any]
    u_cfg: dict[str, Any]
    em_cfg: dict[str, Any]
    threshold: float = 0.5
    dedupe_threshold: float = 0.9
    review_band: tuple[float, float] = (0.2, 0.8)
    pairs_floor: float = 0.01
    clustering: dict[str, Any] = field(default_factory=dict)
    subgroups: dict[str, Any] = field(default_factory=dict)
    tf_min_u: float | None = None
    reuse_model: Path | None = None
    labels: Path | None = None
    seed: int = 42
    max_pairs_per_chunk: int = 2_000_000
    max_block_pairs: int = 20_000_000   # a larger block (e.g. a placeholder value) is skipped and reported
    workers: int = -1
    model_path: Path | None = None
    raw_model: dict[str, Any] = field(default_factory=dict)

    def task_key(self, t: tuple[str, str]) -> str:
        return f"{t[0]}|{t[1]}"

    def needed_columns(self) -> set[str]:
        cols: set[str] = set()
        for c in self.comparisons:
            cols.update(c.columns)
        for r in self.blocking + [s.rule for s in self.sessions]:
            for k in r.keys:
                cols.update(k.fields)
        for i in self.identifiers:
            cols.add(i.field)
        return cols

    def subgroup_columns(self) -> set[str]:
        """The columns the quality report breaks link rates down by (read with the records)."""
        extra: set[str] = set()
        for sg in self.subgroups.values():
            extra.update(sg.get("columns", [sg.get("column")]) if isinstance(sg, dict) else [sg])
        extra.discard(None)
        return extra


def _err(msg: str, file: Path | str | None, key: str | None = None) -> ConfigError:
    return ConfigError(msg, file=str(file) if file else None, key=key)


def _task(v: Any, file: Path, key: str, sources: dict) -> tuple[str, str]:
    if isinstance(v, str) and "|" in v:
        v = v.split("|")
    if not (isinstance(v, (list, tuple)) and len(v) == 2 and all(isinstance(s, str) for s in v)):
        raise _err("a task is a pair of source names, e.g. [admission, training]", file, key)
    a, b = v
    for s in (a, b):
        if s not in sources:
            raise _err(f"task names unknown source '{s}'", file, key)
    order = list(sources)
    if order.index(a) > order.index(b):
        a, b = b, a
    return (a, b)


def _block_rule(raw: Any, file: Path, key: str, i: int) -> BlockRule:
    if isinstance(raw, list):
        raw = {"keys": raw}
    if not isinstance(raw, dict) or "keys" not in raw:
        raise _err("a blocking rule needs `keys` (a list of fields or {field, transform, n})", file, key)
    keys = []
    for k in raw["keys"]:
        if isinstance(k, str):
            keys.append(BlockKey(k))
        elif isinstance(k, dict) and "field" in k and (isinstance(k["field"], str) or (
                isinstance(k["field"], list) and k["field"] and all(isinstance(x, str) for x in k["field"]))):
            tr = k.get("transform")
            if tr not in BLOCK_TRANSFORMS:
                raise _err(f"unknown blocking transform '{tr}'; use one of "
                           f"{sorted(t for t in BLOCK_TRANSFORMS if t)}", file, key)
            n = k.get("n")
            if n is not None and (not isinstance(n, int) or n < 1):
                raise _err("blocking key `n` must be a positive integer", file, key)
            keys.append(BlockKey(k["field"], tr, n))
        else:
            raise _err("a blocking key is a field name or {field, transform, n}", file, key)
    if not keys:
        raise _err("a blocking rule needs at least one key", file, key)
    name = raw.get("name") or "_".join(k.describe().replace("(", "_").replace(")", "").replace(", ", "_")
                                         for k in keys)
    mb = raw.get("max_block_pairs")
    if mb is not None and (not isinstance(mb, int) or mb < 1):
        raise _err("`max_block_pairs` must be a positive integer", file, key)
    return BlockRule(str(name), keys, mb)


def _parse_level(raw: Any, kind: str, file: Path, key: str) -> Level:
    if raw == "else" or raw == {"label": "else"}:
        return Level("else", "else")
    if not isinstance(raw, dict) or "label" not in raw:
        raise _err("a level is a mapping with a `label` and a `test`", file, key)
    label = str(raw["label"])
    test = raw.get("test")
    params = {k: v for k, v in raw.items() if k not in ("label", "test", "tf")}
    when = params.get("when")
    if when is not None:
        # a level that may only hold when BOTH records carry one of the given
        # values in another field, e.g. a surname change (marriage) for women
        if not (isinstance(when, dict) and when and all(
                isinstance(f, str) and (isinstance(v, (str, int)) or (
                    isinstance(v, list) and v and all(isinstance(x, (str, int)) for x in v)))
                for f, v in when.items())):
            raise _err(f"level '{label}': `when` maps a field to a value or a list of values, "
                       "e.g. {sex: F}", file, key)
        params["when"] = {f: [str(x) for x in (v if isinstance(v, list) else [v])] for f, v in when.items()}
    rest = {k: v for k, v in params.items() if k != "when"}
    if test is None:
        if label == "else":
            test = "else"
        elif kind == "name" and ({"forename", "surname"} & set(rest)):
            test = "parts"
        else:
            raise _err(f"level '{label}' needs a `test`", file, key)
    if test not in KIND_TESTS[kind]:
        raise _err(f"level '{label}': test '{test}' is not a {kind} test; use one of "
                   f"{sorted(KIND_TESTS[kind])}", file, key)
    if test == "parts":
        for part in ("forename", "surname"):
            cond = params.get(part, "any")
            _check_part(cond, file, f"{key}.{part}")
    for num in ("threshold", "max", "days", "n"):
        if num in params and not isinstance(params[num], (int, float)):
            raise _err(f"level '{label}': `{num}` must be a number", file, key)
    if test in ("jaro_winkler", "jaro") and "threshold" not in params:
        raise _err(f"level '{label}': {test} needs `threshold`", file, key)
    if test in ("damerau_levenshtein", "levenshtein", "within") and "max" not in params:
        raise _err(f"level '{label}': {test} needs `max`", file, key)
    if test == "within_days" and "days" not in params:
        raise _err(f"level '{label}': within_days needs `days`", file, key)
    tf = raw.get("tf")
    if tf is True:
        tf = "value"
    if tf not in (None, False, "joint", "forename", "surname", "value"):
        raise _err(f"level '{label}': tf must be joint, forename, surname or true", file, key)
    return Level(label, test, params, tf or None)


def _check_part(cond: Any, file: Path, key: str) -> None:
    if isinstance(cond, str):
        if cond not in PART_TESTS:
            raise _err(f"unknown name-part test '{cond}'; use one of {sorted(PART_TESTS)}", file, key)
        return
    if isinstance(cond, dict) and len(cond) == 1:
        (t, v), = cond.items()
        if t not in PART_TESTS or not isinstance(v, (int, float)):
            raise _err("name-part test must be e.g. {jaro_winkler: 0.9} or {damerau_levenshtein: 1}", file, key)
        return
    raise _err("name-part test must be a name (exact, initial, alias, any, differ) or {test: value}", file, key)


def _comparison(raw: Any, file: Path, key: str, sources: dict) -> Comparison:
    if not isinstance(raw, dict) or "name" not in raw or "kind" not in raw:
        raise _err("a comparison needs `name` and `kind`", file, key)
    kind = KIND_ALIASES.get(raw["kind"], raw["kind"])
    if kind not in KIND_TESTS:
        raise _err(f"unknown comparison kind '{raw['kind']}'; use one of "
                   f"{sorted(KIND_TESTS) + sorted(KIND_ALIASES)}", file, key)
    flds = raw.get("fields")
    if flds is None and "field" in raw:
        flds = {"value": raw["field"]}
    if not isinstance(flds, dict):
        raise _err("a comparison needs `field` or `fields`", file, key)
    if kind == "name" and not ("forename" in flds and "surname" in flds):
        raise _err("a name comparison needs fields {forename, surname, alternatives?}; "
                   "use kind `string` for one field", file, key)
    if kind != "name" and "value" not in flds:
        raise _err(f"a {kind} comparison needs `field`", file, key)
    levels_raw = raw.get("levels")
    if not isinstance(levels_raw, list) or not levels_raw:
        raise _err("a comparison needs a non-empty `levels` list", file, key)
    levels = [_parse_level(lv, kind, file, f"{key}.levels[{j}]") for j, lv in enumerate(levels_raw)]
    if levels[-1].test != "else":
        levels.append(Level("else", "else"))
    labels = [lv.label for lv in levels]
    if len(set(labels)) != len(labels) or "null" in labels:
        raise _err("level labels must be unique and not 'null'", file, key)
    if any(lv.test == "else" for lv in levels[:-1]):
        raise _err("only the last level may be `else`", file, key)
    if len(levels) > 30:
        raise _err("at most 30 levels per comparison", file, key)
    tasks = None
    if raw.get("tasks") is not None:
        tasks = [_task(t, file, key, sources) for t in raw["tasks"]]
    m_start = raw.get("m_start")
    if m_start is not None and (not isinstance(m_start, list) or len(m_start) != len(levels)):
        raise _err("m_start must list one probability per level (else included)", file, key)
    options = {}
    if "pattern" in raw:
        try:
            re.compile(raw["pattern"])
        except (re.error, TypeError):
            raise _err("`pattern` is not a valid regular expression", file, key)
        options["pattern"] = raw["pattern"]
    dep = raw.get("depends_on")
    if dep is not None:
        # fields this comparison is correlated with (graduation year with date of
        # birth): an EM session blocking on them neither estimates it nor uses it
        dep = [dep] if isinstance(dep, str) else dep
        if not (isinstance(dep, list) and dep and all(isinstance(x, str) for x in dep)):
            raise _err("`depends_on` is a field name or a list of field names", file, key)
        options["depends_on"] = list(dep)
    unknown = set(raw) - {"name", "kind", "field", "fields", "levels", "tasks", "m_start", "pattern", "description",
                          "depends_on"}
    if unknown:
        raise _err(f"unknown comparison key(s) {sorted(unknown)}", file, key)
    return Comparison(str(raw["name"]), kind, flds, levels, tasks, m_start, options)


def _load_yaml(path: Path, key: str | None = None) -> dict:
    try:
        text = path.read_text()
    except OSError as e:
        raise ConfigError(f"cannot read linkage model file ({e.strerror})", file=str(path), key=key)
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (yaml.YAMLError, json.JSONDecodeError) as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"linkage model file is not valid YAML{where}", file=str(path), key=key)
    if not isinstance(data, dict):
        raise ConfigError("linkage model file must be a mapping", file=str(path), key=key)
    return data


def parse_model(model: dict, file: Path | str = "<model>") -> LinkSpec:
    """Validate a model mapping (the content of a model YAML) into a LinkSpec."""
    file = Path(file) if not isinstance(file, Path) else file
    srcs = model.get("sources")
    if isinstance(srcs, list):
        srcs = {s: {} for s in srcs}
    if not isinstance(srcs, dict) or not srcs:
        raise _err("`sources` must map each source name to its options", file, "sources")
    sources: dict[str, dict] = {}
    for s, opts in srcs.items():
        opts = dict(opts or {})
        bad = set(opts) - {"duplicates", "one_per_person", "description"}
        if bad:
            raise _err(f"unknown source option(s) {sorted(bad)}", file, f"sources.{s}")
        opts.setdefault("duplicates", False)
        opts.setdefault("one_per_person", not opts["duplicates"])
        sources[str(s)] = opts
    tasks_raw = model.get("tasks")
    if tasks_raw is None:
        names = list(sources)
        tasks_raw = [[a, b] for i, a in enumerate(names) for b in names[i + 1:]]
        tasks_raw += [[s, s] for s in names if sources[s]["duplicates"]]
    tasks = [_task(t, file, "tasks", sources) for t in tasks_raw]
    if len(set(tasks)) != len(tasks):
        raise _err("duplicate task", file, "tasks")

    identifiers = []
    for i, raw in enumerate(model.get("deterministic") or []):
        k = f"deterministic[{i}]"
        if not isinstance(raw, dict) or "field" not in raw:
            raise _err("a deterministic identifier needs `field`", file, k)
        pat = raw.get("pattern", r"^\S+$")
        try:
            re.compile(pat)
        except re.error:
            raise _err("`pattern` is not a valid regular expression", file, k)
        confirm = raw.get("confirm") or {}
        veto = raw.get("veto") or {}
        for what, v in (("confirm", confirm), ("veto", veto)):
            if not isinstance(v, dict) or not all(isinstance(x, list) for x in v.values()):
                raise _err(f"`{what}` maps comparison names to lists of level labels", file, k)
        tasks_i = [_task(t, file, k, sources) for t in raw["tasks"]] if raw.get("tasks") else None
        identifiers.append(Identifier(str(raw.get("name", raw["field"])), raw["field"], pat,
                                      bool(raw.get("typo_tolerant", True)), confirm, tasks_i, veto))

    blocking = [_block_rule(r, file, f"blocking[{i}]", i) for i, r in enumerate(model.get("blocking") or [])]
    if not blocking:
        raise _err("at least one blocking rule is required", file, "blocking")
    if len({b.name for b in blocking}) != len(blocking):
        raise _err("blocking rule names must be unique", file, "blocking")

    comps_raw = model.get("comparisons")
    if not isinstance(comps_raw, list) or not comps_raw:
        raise _err("`comparisons` must be a non-empty list", file, "comparisons")
    comparisons = [_comparison(c, file, f"comparisons[{i}]", sources) for i, c in enumerate(comps_raw)]
    names = [c.name for c in comparisons]
    if len(set(names)) != len(names):
        raise _err("comparison names must be unique", file, "comparisons")
    for ident in identifiers:
        for cname, labels in list(ident.confirm.items()) + list(ident.veto.items()):
            comp = next((c for c in comparisons if c.name == cname), None)
            if comp is None:
                raise _err(f"confirm/veto names unknown comparison '{cname}'", file,
                           f"deterministic.{ident.name}")
            bad = set(labels) - set(comp.level_labels())
            if bad:
                raise _err(f"confirm/veto names unknown level(s) {sorted(bad)} of '{cname}'", file,
                           f"deterministic.{ident.name}")

    tr = model.get("training") or {}
    sessions = []
    for i, s in enumerate(tr.get("sessions") or []):
        if isinstance(s, list):
            s = {"keys": s}
        rule = _block_rule(s, file, f"training.sessions[{i}]", i)
        sessions.append(Session(rule, int(s.get("max_pairs", 2_000_000)) if isinstance(s, dict) else 2_000_000))
    if not sessions:
        sessions = [Session(b) for b in blocking[:2]]
    prior = dict(tr.get("prior") or {"method": "candidates"})
    prior.setdefault("method", "candidates")
    if prior["method"] not in ("candidates", "deterministic", "fixed", "expected_matches"):
        raise _err("prior.method must be candidates, deterministic, fixed or expected_matches", file,
                   "training.prior")
    if prior["method"] == "fixed" and not isinstance(prior.get("value"), (int, float)):
        raise _err("prior.method fixed needs `value` (a probability)", file, "training.prior")
    if prior["method"] == "expected_matches" and not isinstance(prior.get("matches"), (int, float)):
        raise _err("prior.method expected_matches needs `matches`", file, "training.prior")
    u_cfg = {"sample_pairs": 300_000, "stratified_pairs": 100_000, **(tr.get("u") or {})}
    em_cfg = {"max_iterations": 200, "tolerance": 1e-6, **(tr.get("em") or {})}

    dec = model.get("decision") or {}
    spec = LinkSpec(
        name=str(model.get("name", file.stem)), sources=sources, tasks=tasks, identifiers=identifiers,
        blocking=blocking, comparisons=comparisons, sessions=sessions, prior=prior, u_cfg=u_cfg,
        em_cfg=em_cfg, clustering=dict(model.get("clustering") or {}),
        subgroups=dict(model.get("subgroups") or {}), raw_model=model,
        tf_min_u=tr.get("tf_min_u"),
    )
    _apply_decision(spec, dec, file, "decision")
    return spec


def _apply_decision(spec: LinkSpec, dec: dict, file: Path | str, key: str) -> None:
    for name in ("threshold", "dedupe_threshold", "pairs_floor"):
        if name in dec:
            v = dec[name]
            if not isinstance(v, (int, float)) or not 0 <= v <= 1:
                raise _err(f"`{name}` must be a probability between 0 and 1", file, f"{key}.{name}")
            setattr(spec, name, float(v))
    if "review_band" in dec:
        rb = dec["review_band"]
        if (not isinstance(rb, list) or len(rb) != 2 or not all(isinstance(x, (int, float)) for x in rb)
                or not 0 <= rb[0] <= rb[1] <= 1):
            raise _err("`review_band` is [low, high] match probabilities", file, f"{key}.review_band")
        spec.review_band = (float(rb[0]), float(rb[1]))


def load_spec(linkage_section: dict | None, base_dir: Path | str) -> LinkSpec:
    """Validate the config's `linkage:` section and the model file it names."""
    base_dir = Path(base_dir)
    sec = dict(linkage_section or {})
    if not isinstance(linkage_section or {}, dict):
        raise ConfigError("`linkage` must be a mapping", key="linkage")
    bad = set(sec) - LINKAGE_SECTION_KEYS
    if bad:
        raise ConfigError(f"unknown key(s) {sorted(bad)}; allowed: {sorted(LINKAGE_SECTION_KEYS)}",
                          key="linkage")
    model_path = Path(sec["model"]) if sec.get("model") else DEFAULT_MODEL
    if not model_path.is_absolute():
        model_path = (base_dir / model_path).resolve()
    if not model_path.exists():
        raise ConfigError("linkage model file not found", file=str(model_path), key="linkage.model")
    spec = parse_model(_load_yaml(model_path, "linkage.model"), model_path)
    spec.model_path = model_path
    _apply_decision(spec, sec, "config", "linkage")
    for name in ("reuse_model", "labels"):
        if sec.get(name):
            p = Path(sec[name])
            p = p if p.is_absolute() else (base_dir / p).resolve()
            if not p.exists():
                raise ConfigError(f"{name} file not found", file=str(p), key=f"linkage.{name}")
            setattr(spec, name, p)
    if "seed" in sec:
        spec.seed = int(sec["seed"])
    if "max_pairs_per_chunk" in sec:
        spec.max_pairs_per_chunk = int(sec["max_pairs_per_chunk"])
    if "max_block_pairs" in sec:
        spec.max_block_pairs = int(sec["max_block_pairs"])
    if "workers" in sec:
        spec.workers = int(sec["workers"])
    if "subgroups" in sec:
        if not isinstance(sec["subgroups"], dict):
            raise ConfigError("`subgroups` maps report names to columns", key="linkage.subgroups")
        spec.subgroups.update(sec["subgroups"])
    return spec
