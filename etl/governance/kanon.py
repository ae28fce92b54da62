"""k-anonymity and l-diversity on the doctor table, by global recoding and
capped local suppression.

1. Global recoding: every QI of set A goes through its hierarchy at level 0.
2. Escalation: while more records sit in classes smaller than k (or in
   classes that break l-diversity) than the suppression cap allows, coarsen
   one QI by one level. The step chosen removes the most violating records
   per unit of information cost; a step's cost is the QI's weight from the
   rules (how much analysts need it), doubled when the step hides the field
   ("*"), so merging categories is preferred to hiding them. Ties go to the
   rules' escalation_preference order.
3. Local suppression: the remaining violating records keep their row (so
   nothing is lost and every record is counted), but all their QI set A
   values become the marker ("Suppressed") and the flag column is set. The
   suppressed records form one class of their own, which must itself hold at
   least k records (topped up from the largest class if needed) and be
   l-diverse.
4. Verification on the final values: min class size >= k and l-diversity,
   else GovernanceError.

Distinct l-diversity, in the sense of governance.md 6.3: a class that holds
a protected value (adverse ARCP outcome 2/3/4) must hold at least l distinct
non-null values of that field, so membership of a class never reveals an
adverse outcome. Classes without a protected value pass.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import polars as pl

from etl.errors import GovernanceError
from etl.governance.hierarchies import STAR
from etl.governance.rules import Rules

HIST_BINS = [(1, 1), (2, 4), (5, 9), (10, 19), (20, 49), (50, 99), (100, 499), (500, None)]


@dataclass
class KResult:
    levels: dict[str, int]
    values: pl.DataFrame                  # released QI set A values (after suppression), by field name
    base: pl.DataFrame                    # level-0 values, by field name
    suppressed: pl.Series                 # bool per record
    padded: int                           # records suppressed only to bring the suppressed class to k
    steps: list[dict] = field(default_factory=list)
    recoded: pl.Series | None = None      # bool per record: some QI coarser than level 0
    recoded_by_field: dict[str, int] = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    l_results: dict = field(default_factory=dict)


class QIColumns:
    """Cache of each QI's released values and integer codes per level."""

    def __init__(self, df: pl.DataFrame, rules: Rules, fields: list[str]):
        self.df, self.rules, self.fields = df, rules, fields
        self._vals: dict[tuple[str, int], pl.Series] = {}
        self._codes: dict[tuple[str, int], pl.Series] = {}

    def max_level(self, f: str) -> int:
        fr = self.rules.field("doctors", f)
        return self.rules.hierarchies[fr.hierarchy].max_level if fr.treatment == "generalise" else 0

    def is_star(self, f: str, level: int) -> bool:
        fr = self.rules.field("doctors", f)
        return fr.treatment == "generalise" and self.rules.hierarchies[fr.hierarchy].is_star(level)

    def values(self, f: str, level: int) -> pl.Series:
        k = (f, level)
        if k not in self._vals:
            fr = self.rules.field("doctors", f)
            if fr.treatment == "generalise":
                s = self.rules.hierarchies[fr.hierarchy].apply(self.df, f, level)
            else:
                s = self.df.get_column(f).cast(pl.String)
            self._vals[k] = s.alias(f)
        return self._vals[k]

    def codes(self, f: str, level: int) -> pl.Series:
        k = (f, level)
        if k not in self._codes:
            s = self.values(f, level)
            self._codes[k] = s.rank("dense").fill_null(0).cast(pl.UInt32).alias(f)
        return self._codes[k]

    def frame(self, levels: dict[str, int], codes: bool = True) -> pl.DataFrame:
        get = self.codes if codes else self.values
        return pl.DataFrame([get(f, levels[f]) for f in self.fields])


def sensitive_frame(df: pl.DataFrame, rules: Rules) -> pl.DataFrame:
    """Released values of the l-diversity fields (level 0 of their hierarchy)."""
    cols = []
    for s in rules.sensitive:
        if s not in df.columns:
            continue
        fr = rules.field("doctors", s)
        if fr.treatment == "generalise":
            cols.append(rules.hierarchies[fr.hierarchy].apply(df, s, 0).alias(f"__s_{s}"))
        else:
            cols.append(df.get_column(s).cast(pl.String).alias(f"__s_{s}"))
    return pl.DataFrame(cols) if cols else pl.DataFrame({"__none": [None] * df.height})


def _present(rules: Rules, frame_cols) -> list[tuple[str, dict]]:
    return [(s, spec) for s, spec in rules.sensitive.items() if f"__s_{s}" in frame_cols]


def _violation_exprs(qis: list[str], rules: Rules, k: int, sens_cols) -> tuple[pl.Expr, list[pl.Expr]]:
    size_bad = pl.len().over(qis) < k
    l_bad = []
    for s, spec in _present(rules, sens_cols):
        c = pl.col(f"__s_{s}")
        distinct = (c.n_unique() - c.null_count().gt(0).cast(pl.UInt32)).over(qis)
        has_protected = c.is_in(spec["protect_values"]).any().over(qis)
        l_bad.append((has_protected & (distinct < rules.l)).alias(f"__l_{s}"))
    return size_bad, l_bad


def _class_key(codes: pl.DataFrame) -> pl.Series | None:
    """One UInt64 per row identifying its equivalence class: the QI codes
    (dense ranks, 0 = null) in mixed radix, so rows share a key exactly when
    they share every code. None if the radix product would overflow."""
    key, mult = None, 1
    for c in codes.columns:
        radix = int(codes.get_column(c).max() or 0) + 1
        part = codes.get_column(c).cast(pl.UInt64) * mult
        key = part if key is None else key + part
        mult *= radix
        if mult >= 2 ** 63:
            return None
    return key.alias("__class") if key is not None else None


_SENS_CODES: dict[int, tuple[pl.DataFrame, pl.DataFrame]] = {}


def _sens_codes(sens: pl.DataFrame, rules: Rules) -> pl.DataFrame:
    """The sensitive columns as integer codes (null stays null) plus, per field,
    whether the value is a protected one: the same distinct counts and flags as
    the strings, cheaper to count per class. Cached for the frame anonymise() reuses."""
    hit = _SENS_CODES.get(id(sens))
    if hit is not None and hit[0] is sens:
        return hit[1]
    cols = []
    for s, spec in _present(rules, sens.columns):
        c = pl.col(f"__s_{s}")
        cols += [c.rank("dense").alias(f"__s_{s}"), c.is_in(spec["protect_values"]).alias(f"__p_{s}")]
    out = sens.select(cols) if cols else pl.DataFrame()
    _SENS_CODES.clear()
    _SENS_CODES[id(sens)] = (sens, out)
    return out


def _violations_coded(key: pl.Series, sc: pl.DataFrame, rules: Rules, k: int) -> pl.Series:
    """Per class (group_by, not a window per row): size < k, or a protected value
    with fewer than l distinct values; then each row takes its class's flag."""
    aggs = [pl.len().alias("__n")]
    bad = pl.col("__n") < k
    for s, _spec in _present(rules, sc.columns):
        c = pl.col(f"__s_{s}")
        aggs += [(c.n_unique() - c.null_count().gt(0).cast(pl.UInt32)).alias(f"__d_{s}"),
                 pl.col(f"__p_{s}").any().alias(f"__a_{s}")]
        bad = bad | (pl.col(f"__a_{s}") & (pl.col(f"__d_{s}") < rules.l))
    frame = pl.concat([key.to_frame(), sc], how="horizontal") if sc.width else key.to_frame()
    per_class = frame.group_by("__class").agg(aggs).select("__class", bad.fill_null(False).alias("v"))
    return (key.to_frame().join(per_class, on="__class", how="left", maintain_order="left")
            .get_column("v"))


def violations(codes: pl.DataFrame, sens: pl.DataFrame, rules: Rules, k: int) -> pl.Series:
    qis = codes.columns
    key = _class_key(codes) if codes.width > 1 else None
    if key is not None:   # same classes, one integer window key instead of five (several times faster)
        return _violations_coded(key, _sens_codes(sens, rules), rules, k)
    frame = pl.concat([codes, sens], how="horizontal")
    size_bad, l_bad = _violation_exprs(qis, rules, k, sens.columns)
    expr = size_bad
    for e in l_bad:
        expr = expr | e
    return frame.select(expr.alias("v")).to_series()


def _need(nv: int, k: int) -> int:
    """Records to suppress: the violators, topped up so the suppressed class reaches k."""
    return 0 if nv == 0 else max(nv, k)


def anonymise(df: pl.DataFrame, rules: Rules) -> KResult:
    qis = [q for q in rules.quasi_identifiers if q in df.columns]
    k, n = rules.k, df.height
    cap = int(rules.max_suppressed_fraction * n)
    cols = QIColumns(df, rules, qis)
    sens = sensitive_frame(df, rules)
    pref = {q: i for i, q in enumerate(rules.escalation_preference)}
    weights = rules.escalation_weights
    levels = {q: 0 for q in qis}
    steps: list[dict] = []

    viol = violations(cols.frame(levels), sens, rules, k)
    nv = int(viol.sum())
    while _need(nv, k) > cap:
        cands = []
        for q in qis:
            if levels[q] >= cols.max_level(q):
                continue
            trial = dict(levels, **{q: levels[q] + 1})
            nq = int(violations(cols.frame(trial), sens, rules, k).sum())
            star = cols.is_star(q, levels[q] + 1)
            # information cost of the step: the field's weight, doubled for hiding it
            cost = weights.get(q, 1.0) * (2.0 if star else 1.0)
            gain = nv - nq
            key = ((0, -gain / cost) if gain > 0 else (1, nq, cost)) + (pref.get(q, len(pref)),)
            cands.append((key, q, nq))
        if not cands:
            raise GovernanceError(
                f"k={k} cannot be reached on QI set A within the suppression cap "
                f"({rules.max_suppressed_fraction:.0%} = {cap} records): {nv} records ({nv / max(n, 1):.1%}) "
                f"still violate k or l at the coarsest levels", file=rules.path.name,
                key="k_anonymity")
        cands.sort(key=lambda c: c[0])
        _, q, nq = cands[0]
        levels[q] += 1
        steps.append({"field": q, "to_level": levels[q], "violating_before": nv, "violating_after": nq,
                      "level": describe(rules, q, levels[q])})
        nv = nq
        viol = None
    if viol is None:
        viol = violations(cols.frame(levels), sens, rules, k)

    codes = cols.frame(levels)
    suppressed = viol.clone()
    padded = 0
    if 0 < nv < k:
        suppressed, padded = _pad(codes, suppressed, k - nv)

    values = cols.frame(levels, codes=False)
    final = _apply_marker(values, suppressed, rules.marker)
    res = KResult(levels=levels, values=final, base=cols.frame({q: 0 for q in qis}, codes=False),
                  suppressed=suppressed, padded=padded, steps=steps)
    _fix_suppressed_class_l(res, df, rules, sens)
    _verify(res, rules, sens)
    res.recoded, res.recoded_by_field = _recoded(cols, levels, res.suppressed)
    res.metrics = class_metrics(res.values, k)
    return res


def describe(rules: Rules, f: str, level: int) -> str:
    fr = rules.field("doctors", f)
    if fr.treatment != "generalise":
        return "as recorded"
    return rules.hierarchies[fr.hierarchy].describe_level(level)


def _apply_marker(values: pl.DataFrame, suppressed: pl.Series, marker: str) -> pl.DataFrame:
    return values.with_columns([
        pl.when(suppressed).then(pl.lit(marker)).otherwise(pl.col(c)).alias(c) for c in values.columns])


def _pad(codes: pl.DataFrame, suppressed: pl.Series, extra: int) -> tuple[pl.Series, int]:
    """Suppress `extra` more records, taken from the largest class (which stays >= k)."""
    qis = codes.columns
    tmp = codes.with_columns(suppressed.alias("__sup"), pl.int_range(pl.len()).alias("__i"))
    sizes = tmp.filter(~pl.col("__sup")).group_by(qis).len().sort("len", descending=True)
    if sizes.height == 0:
        return suppressed, 0
    largest = sizes.row(0, named=True)
    cond = pl.lit(True)
    for q in qis:
        cond = cond & (pl.col(q) == largest[q])
    idx = tmp.filter(cond & ~pl.col("__sup")).get_column("__i").head(extra).to_list()
    out = suppressed.scatter(idx, True)
    return out, len(idx)


def _fix_suppressed_class_l(res: KResult, df: pl.DataFrame, rules: Rules, sens: pl.DataFrame) -> None:
    """If the suppressed class holds a protected value without l distinct values,
    top it up with records carrying other values from the largest class."""
    if not rules.sensitive or not res.suppressed.any():
        return
    for s, spec in _present(rules, sens.columns):
        col = sens.get_column(f"__s_{s}")
        inside = col.filter(res.suppressed).drop_nulls()
        if not inside.is_in(spec["protect_values"]).any() or inside.n_unique() >= rules.l:
            continue
        have = set(inside.unique().to_list())
        # candidates: unsuppressed records with a value not yet in the class
        vals = res.values.with_columns(col.alias("__v"), res.suppressed.alias("__sup"),
                                       pl.int_range(pl.len()).alias("__i"))
        qis = res.values.columns
        sizes = vals.filter(~pl.col("__sup")).group_by(qis).len().sort("len", descending=True)
        added = []
        for row in sizes.iter_rows(named=True):
            if row["len"] <= rules.k:
                break
            cond = pl.lit(True)
            for q in qis:
                cond = cond & (pl.col(q) == row[q])
            pick = (vals.filter(cond & ~pl.col("__sup") & pl.col("__v").is_not_null()
                                & ~pl.col("__v").is_in(list(have)))
                        .head(min(rules.l - len(have), row["len"] - rules.k)))
            for i, v in pick.select("__i", "__v").iter_rows():
                added.append(i)
                have.add(v)
            if len(have) >= rules.l:
                break
        if added:
            res.suppressed = res.suppressed.scatter(added, True)
            res.padded += len(added)
            res.values = _apply_marker(res.values, res.suppressed, rules.marker)


def _verify(res: KResult, rules: Rules, sens: pl.DataFrame) -> None:
    qis = res.values.columns
    if not qis:
        return
    frame = pl.concat([res.values, sens], how="horizontal")
    sizes = frame.group_by(qis).len()
    kmin = int(sizes["len"].min()) if sizes.height else 0
    if sizes.height and kmin < rules.k:
        raise GovernanceError(f"k-anonymity check failed after suppression: smallest class {kmin} < k={rules.k}",
                              file=rules.path.name, key="k_anonymity")
    res.l_results = l_diversity(frame, qis, rules)
    bad = {s: r["violating_classes"] for s, r in res.l_results.items() if r["violating_classes"]}
    if bad:
        raise GovernanceError(f"l-diversity check failed for {', '.join(sorted(bad))}",
                              file=rules.path.name, key="l_diversity")


def l_diversity(frame: pl.DataFrame, qis: list[str], rules: Rules) -> dict:
    out = {}
    for s, spec in _present(rules, frame.columns):
        c = pl.col(f"__s_{s}")
        g = frame.group_by(qis).agg(
            (c.n_unique() - c.null_count().gt(0).cast(pl.UInt32)).alias("distinct"),
            c.is_in(spec["protect_values"]).any().alias("has_protected"),
            pl.len().alias("n"))
        prot = g.filter(pl.col("has_protected"))
        out[s] = {
            "l_required": rules.l,
            "protect_values": spec["protect_values"],
            "classes_with_protected_value": prot.height,
            "records_in_those_classes": int(prot["n"].sum()) if prot.height else 0,
            "l_achieved": int(prot["distinct"].min()) if prot.height else None,
            "violating_classes": int((prot["distinct"] < rules.l).sum()) if prot.height else 0,
        }
    return out


def _recoded(cols: QIColumns, levels: dict[str, int], suppressed: pl.Series) -> tuple[pl.Series, dict]:
    """A record is recoded on a field when its released category merges several
    level-0 categories (or the field is hidden)."""
    any_rec = pl.Series([False] * cols.df.height)
    by_field = {}
    for q, lv in levels.items():
        if lv == 0:
            by_field[q] = 0
            continue
        base, up = cols.values(q, 0), cols.values(q, lv)
        pair = pl.DataFrame({"b": base, "u": up})
        merged = pair.group_by("u").agg(pl.col("b").n_unique().alias("m"))
        rec = pair.join(merged, on="u", how="left", nulls_equal=True).get_column("m") > 1
        rec = rec | (up == STAR).fill_null(False)
        rec = rec.fill_null(False) & ~suppressed
        by_field[q] = int(rec.sum())
        any_rec = any_rec | rec
    return any_rec, by_field


def class_metrics(values: pl.DataFrame, k: int) -> dict:
    """Equivalence-class size distribution and prosecutor/marketer risks."""
    n = values.height
    if n == 0 or not values.columns:
        return {"records": n, "classes": 0}
    sizes = values.group_by(values.columns).len().get_column("len")
    hist = []
    for lo, hi in HIST_BINS:
        m = (sizes >= lo) if hi is None else ((sizes >= lo) & (sizes <= hi))
        hist.append({"bin": f"{lo}+" if hi is None else (f"{lo}" if lo == hi else f"{lo}-{hi}"),
                     "classes": int(m.sum()), "records": int(sizes.filter(m).sum())})
    kmin = int(sizes.min())
    return {
        "records": n,
        "classes": int(sizes.len()),
        "k_min": kmin,
        "k_median": float(sizes.median()),
        "k_max": int(sizes.max()),
        "sample_uniques": int((sizes == 1).sum()),
        "records_below_k": int(sizes.filter(sizes < k).sum()),
        "prosecutor_risk_max": round(1.0 / kmin, 4),
        "prosecutor_risk_avg": round(sizes.len() / n, 4),
        "records_at_risk_above_1_over_k": int(sizes.filter(sizes < k).sum()),
        "marketer_risk": round(sizes.len() / n, 4),
        "expected_reidentifications": round(float(sizes.len()), 1),
        "histogram": hist,
    }


def extended_risk(df: pl.DataFrame, rules: Rules, kres: KResult) -> tuple[dict, dict[str, int]]:
    """Risk on QI set A + the extended (SES) set; coarsen the extended fields along
    their hierarchies while k_ext < target_k (if the rules say so). Reported,
    not enforced. Returns (report, levels of the extended fields)."""
    ext = [q for q in rules.extended_quasi_identifiers if q in df.columns]
    target = rules.extended_target_k
    cols = QIColumns(df, rules, ext)
    levels = {q: 0 for q in ext}
    steps = []

    def frame(lv):
        return pl.concat([kres.values, cols.frame(lv, codes=False)], how="horizontal")

    m = class_metrics(frame(levels), target or rules.k)
    if target and rules.extended_coarsen:
        while m["k_min"] < target:
            best = None
            for q in ext:
                if levels[q] >= cols.max_level(q) or cols.is_star(q, levels[q] + 1):
                    continue
                trial = dict(levels, **{q: levels[q] + 1})
                mt = class_metrics(frame(trial), target)
                key = (mt["records_below_k"], q)
                if best is None or key < best[0]:
                    best = (key, q, mt)
            if best is None or best[2]["records_below_k"] >= m["records_below_k"]:
                break
            _, q, mt = best
            levels[q] += 1
            steps.append({"field": q, "to_level": levels[q], "records_below_target_after": mt["records_below_k"],
                          "level": describe(rules, q, levels[q])})
            m = mt
    report = {"fields": list(kres.values.columns) + ext, "extended_fields": ext,
              "target_k": target, "target_met": (m.get("k_min", 0) >= target) if target else None,
              "levels": {q: {"level": lv, "description": describe(rules, q, lv)} for q, lv in levels.items()},
              "steps": steps, **m}
    if target and not report["target_met"]:
        report["note"] = (f"k on the extended set is {m.get('k_min')} < {target} after coarsening the SES "
                          f"fields as far as their hierarchies allow; keep analyses of these fields in "
                          f"aggregate tables or split the release per study (governance.md 6.3)")
    return report, levels


def subgroup_table(df: pl.DataFrame, rules: Rules, kres: KResult) -> dict:
    """Records recoded and suppressed, overall and by each subgroup (true values)."""
    out = {"overall": {"records": df.height, "recoded": int(kres.recoded.sum()),
                       "suppressed": int(kres.suppressed.sum())}}
    out["overall"]["recoded_pct"] = _pct(out["overall"]["recoded"], df.height)
    out["overall"]["suppressed_pct"] = _pct(out["overall"]["suppressed"], df.height)
    for name, spec in rules.subgroups.items():
        f = spec["field"]
        if f not in df.columns:
            continue
        if spec.get("hierarchy"):
            lab = rules.hierarchies[spec["hierarchy"]].apply(df, f, 0)
        else:
            lab = df.get_column(f).cast(pl.String)
        t = (pl.DataFrame({"group": lab.fill_null("Missing"), "rec": kres.recoded, "sup": kres.suppressed})
               .group_by("group").agg(pl.len().alias("records"), pl.col("rec").sum().alias("recoded"),
                                      pl.col("sup").sum().alias("suppressed"))
               .sort("group"))
        rows = []
        for g, nrec, rec, sup in t.select("group", "records", "recoded", "suppressed").iter_rows():
            rows.append({"group": g, "records": nrec, "recoded": int(rec), "suppressed": int(sup),
                         "recoded_pct": _pct(rec, nrec), "suppressed_pct": _pct(sup, nrec)})
        out[name] = rows
    return out


def _pct(a: int, b: int) -> float:
    return round(100.0 * a / b, 2) if b else 0.0
