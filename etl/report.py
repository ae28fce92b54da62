"""Stratification report: specialty group of first offer by socio-economic background.

Reads a release directory (`doctors.parquet`, optional `linkage_quality.parquet`)
and writes into `out_dir` (default `<release>/report/`):

- `table_<measure>.csv`: specialty group x level of each SES measure, counts
  under aggregate disclosure control (`etl.governance.disclosure_control`;
  until that exists a local fallback: suppress counts < 10, round the rest to
  the nearest 5) and column percentages computed from the protected counts;
- `odds_ratios.csv`: odds of a first offer in each specialty group vs general
  practice, per exposure (independent school; each other SES measure, levels
  vs the most common level), adjusted for sex and Foundation score, with 95%
  CIs (statsmodels Logit among doctors whose first offer is in that group or
  GP). An OR whose exposure x outcome cells include one below the threshold is
  suppressed; model n is rounded to 5;
- `linkage_caveats.csv`: link-quality metrics by subgroup from
  `linkage_quality.parquet`;
- `report.html`: standalone (charts inline as base64 PNG).

Column names in a release are decided by the governance rules, so each input
is looked up from a short list of candidate names (`CANDIDATES`) and a measure
that is absent is skipped (listed in the summary under `skipped`).
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import warnings
from pathlib import Path

import numpy as np
import polars as pl

from etl.paths import REFERENCE_DIR

# measure -> candidate release column names, first found wins
CANDIDATES: dict[str, list[str]] = {
    # not `school_group`: profile_a uses that name for the medical-school group
    "school": ["school_type", "school_type_group", "school_type_grouped", "independent_school"],
    "imd": ["imd_quintile", "imd_quintile_band", "imd_band", "imd_group", "imd_q"],
    "polar": ["polar4_quintile", "polar_quintile", "polar4_band", "polar_band"],
    "nssec": ["nssec_3", "nssec_group", "nssec_class", "nssec_band", "nssec_code", "sec_code"],
    "parental_he": ["parental_he", "parental_he_group", "parental_he_band", "first_in_family"],
    "fsm": ["fsm", "fsm_group", "fsm_band", "free_school_meals"],
}
GROUP_CANDIDATES = ["first_offer_specialty_group", "specialty_group", "first_offer_group"]
CODE_CANDIDATES = ["first_offer_specialty", "first_offer_specialty_code", "first_offer_code"]
SEX_CANDIDATES = ["sex", "sex_group"]
SCORE_CANDIDATES = ["fp_total_score", "ukfp_total", "fp_score", "fp_score_z", "fp_total_decile",
                    "fp_score_decile", "fp_score_band", "fp_total_score_band"]
COVARIATE_CANDIDATES = {
    "parental_he": ["parental_he", "parental_he_group", "parental_he_band"],
    "ethnicity": ["ethnicity_group", "ethnicity_5", "ethnicity_group5", "ethnicity"],
    "age": ["age_band_at_entry", "age_at_entry_band", "age_band"],
}
MISSING_LEVELS = ["missing", "unknown", "suppressed", "*", "..", "not known"]
LABELS = {"school": "School type", "imd": "IMD quintile", "polar": "POLAR4 quintile",
          "nssec": "NS-SEC class", "parental_he": "Parental higher education",
          "fsm": "Free school meals"}
GP = "GP"
MIN_PCT_DENOMINATOR = 22.5      # HESA: no percentage on a base below 22.5
FALLBACK_MIN_CELL = 10
FALLBACK_ROUND = 5


# --------------------------------------------------------------------------- disclosure

def _fallback_params(rules) -> tuple[int, int]:
    """Threshold and rounding base from the rules file if it says, else 10 / 5."""
    thr, base = FALLBACK_MIN_CELL, FALLBACK_ROUND
    if isinstance(rules, dict):
        for key in ("aggregates", "aggregate", "disclosure", "aggregate_disclosure", "output_control"):
            sec = rules.get(key)
            if isinstance(sec, dict):
                for k in ("min_cell", "threshold", "suppress_below", "min_count"):
                    if isinstance(sec.get(k), int):
                        thr = sec[k]
                for k in ("round_to", "rounding", "round", "rounding_base"):
                    v = sec.get(k)
                    if isinstance(v, dict):
                        v = v.get("base")
                    if isinstance(v, int) and v > 0:
                        base = v
    return thr, base


def csv_marker(rules) -> str:
    """How a suppressed cell is written in CSV (rules `aggregates.csv_marker`, default '')."""
    if isinstance(rules, dict) and isinstance(rules.get("aggregates"), dict):
        m = rules["aggregates"].get("csv_marker")
        if isinstance(m, str):
            return m
    return ""


def _local_disclosure_control(table: pl.DataFrame, count_columns: list[str], rules):
    # TODO(governance): remove once etl.governance.disclosure_control exists.
    # This fallback suppresses cells below the threshold (zeros included) and
    # rounds the rest to the base; it does NOT do secondary suppression, so a
    # suppressed cell may be recoverable from unrounded margins (we publish
    # no margins, and totals in the HTML are sums of protected cells).
    thr, base = _fallback_params(rules)
    out = table.with_columns([
        pl.when(pl.col(c) < thr).then(None)
          .otherwise(((pl.col(c) / base).round(0) * base).cast(pl.Int64)).alias(c)
        for c in count_columns])
    log = {"method": "local fallback (TODO: etl.governance.disclosure_control)",
           "threshold": thr, "round_to": base,
           "suppressed_cells": int(sum(table.filter(pl.col(c) < thr).height for c in count_columns))}
    return out, log


def protect_counts(table: pl.DataFrame, count_columns: list[str], rules) -> tuple[pl.DataFrame, dict]:
    try:
        from etl.governance import disclosure_control  # type: ignore[attr-defined]
    except ImportError:
        disclosure_control = None
    if disclosure_control is not None:
        out, log = disclosure_control(table, count_columns, rules)
        log = log if isinstance(log, dict) else {"log": log}
        log.setdefault("method", "etl.governance.disclosure_control")
        return out, log
    return _local_disclosure_control(table, count_columns, rules)


# --------------------------------------------------------------------------- inputs

def _first(cols, cands):
    return next((c for c in cands if c in cols), None)


def _specialty_groups() -> dict[str, str]:
    p = REFERENCE_DIR / "specialties.csv"
    if not p.is_file():
        return {}
    ref = pl.read_csv(p, schema_overrides={"code": pl.String, "group": pl.String})
    return dict(zip(ref["code"].to_list(), ref["group"].to_list()))


def _prepare(d: pl.DataFrame) -> tuple[pl.DataFrame, dict, list[str]]:
    cols = set(d.columns)
    found, skipped = {}, []
    g = _first(cols, GROUP_CANDIDATES)
    if g:
        grp = pl.col(g).cast(pl.String)
        found["specialty_group"] = g
    else:
        code = _first(cols, CODE_CANDIDATES)
        if code is None:
            raise ValueError("the release has no first-offer specialty column "
                             f"(looked for {GROUP_CANDIDATES + CODE_CANDIDATES})")
        grp = pl.col(code).cast(pl.String).replace_strict(_specialty_groups(), default="Other")
        grp = pl.when(pl.col(code).is_null()).then(None).otherwise(grp)
        found["specialty_group"] = f"{code} via schemas/reference/specialties.csv"
    exprs = [grp.alias("_group")]
    for m, cands in CANDIDATES.items():
        c = _first(cols, cands)
        if c is not None and d[c].null_count() == d.height:
            c = None                      # present but empty (source not delivered)
        if c is None:
            skipped.append(m)
            continue
        found[m] = c
        exprs.append(pl.col(c).cast(pl.String).alias(f"_m_{m}"))
    sc = _first(cols, ["school_type", "school_type_group", "school_type_grouped"])
    if "independent_school" in cols:
        exprs.append(pl.col("independent_school").cast(pl.Boolean).alias("_indep"))
        found["independent"] = "independent_school"
    elif sc:
        s = pl.col(sc).cast(pl.String).str.to_lowercase()
        exprs.append(pl.when(s.is_null() | s.str.contains("unknown|not known|missing|suppress|^\\*$|^\\.\\.$"))
                     .then(None).otherwise(s.str.contains("independent|fee|private")).alias("_indep"))
        found["independent"] = f"{sc} == independent"
    sex = _first(cols, SEX_CANDIDATES)
    if sex:
        exprs.append(pl.col(sex).cast(pl.String).alias("_sex"))
        found["sex"] = sex
    score = _first(cols, SCORE_CANDIDATES)
    if score:
        exprs.append(pl.col(score).alias("_score"))
        found["score"] = score
    # the other covariates of Kumwenda et al. 2019 model 1 (research/domain.md 2.5), when released
    for key, cands in COVARIATE_CANDIDATES.items():
        c = _first(cols, cands)
        if c is not None:
            exprs.append(pl.col(c).cast(pl.String).alias(f"_c_{key}"))
            found[f"covariate {key}"] = c
    return d.select(exprs), found, skipped


# --------------------------------------------------------------------------- tables

def crosstab(p: pl.DataFrame, measure: str, rules) -> tuple[pl.DataFrame, dict]:
    col = f"_m_{measure}"
    raw = (p.filter(pl.col("_group").is_not_null())
            .with_columns(pl.col(col).fill_null("missing"))
            .group_by("_group", col).len("n")
            .rename({"_group": "specialty_group", col: "level"})
            .with_columns(pl.col("n").cast(pl.Int64))
            .sort("specialty_group", "level"))
    # complete the grid so a zero cell is reported as suppressed, not absent
    grid = raw.select("specialty_group").unique().join(raw.select("level").unique(), how="cross")
    raw = grid.join(raw, on=["specialty_group", "level"], how="left").with_columns(
        pl.col("n").fill_null(0)).sort("specialty_group", "level")
    prot, log = protect_counts(raw, ["n"], rules)
    tot = prot.group_by("specialty_group").agg(pl.col("n").sum().alias("_t"))
    prot = (prot.join(tot, on="specialty_group", how="left")
                .with_columns(pl.when(pl.col("n").is_not_null() & (pl.col("_t") >= MIN_PCT_DENOMINATOR))
                              .then((100 * pl.col("n") / pl.col("_t")).round(1))
                              .alias("pct_of_group"))
                .drop("_t")
                .with_columns(pl.lit(measure).alias("measure"))
                .select("measure", "specialty_group", "level", "n", "pct_of_group")
                .sort("specialty_group", "level"))
    return prot, log


# --------------------------------------------------------------------------- models

def _design(sub: pl.DataFrame, exposure: pl.DataFrame) -> tuple[np.ndarray, list[str]]:
    cols, names = [np.ones(sub.height)], ["const"]
    for c in exposure.columns:
        cols.append(exposure[c].cast(pl.Float64).to_numpy())
        names.append(c)
    if "_sex" in sub.columns:
        cols.append((sub["_sex"] == "M").fill_null(False).cast(pl.Float64).to_numpy())
        names.append("male")
    if "_score" in sub.columns:
        s = sub["_score"]
        if s.dtype.is_numeric():
            v = s.cast(pl.Float64)
            miss = v.is_null()
            if miss.all():
                pass
            else:
                cols.append(v.fill_null(v.mean()).to_numpy())
                names.append("fp_score")
                if miss.any():
                    cols.append(miss.cast(pl.Float64).to_numpy())
                    names.append("fp_score_missing")
        else:  # banded score: dummies vs the most common band
            lv = s.cast(pl.String).fill_null("missing")
            ref = lv.value_counts(sort=True)[0, 0]
            for level in sorted(set(lv.unique().to_list()) - {ref}):
                cols.append((lv == level).cast(pl.Float64).to_numpy())
                names.append(f"fp_band_{level}")
    return np.column_stack(cols), names


def _grouped(y: np.ndarray, X: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Distinct (X row, y) patterns with their counts. The design is dummies,
    sex and a banded or per-doctor score, so a million doctors collapse to a
    few thousand patterns; the Logit likelihood, score and Hessian are the
    count-weighted sums over them, so the fit is the same."""
    cols = {f"x{i}": X[:, i] for i in range(X.shape[1])}
    cols["y"] = y
    g = pl.DataFrame(cols).group_by(list(cols), maintain_order=True).len("n")
    return (g.get_column("y").to_numpy(), g.drop("y", "n").to_numpy().astype(np.float64),
            g.get_column("n").to_numpy().astype(np.float64))


def _weighted_logit(y: np.ndarray, X: np.ndarray, w: np.ndarray):
    """statsmodels Logit on frequency-weighted rows (same Newton fit, same
    perfect-prediction check, covariance from the weighted Hessian)."""
    import statsmodels.api as sm

    class _FreqLogit(sm.Logit):
        def loglike(self, params):
            q = 2 * self.endog - 1
            return float(np.sum(w * np.log(self.cdf(q * np.dot(self.exog, params)))))

        def loglikeobs(self, params):
            q = 2 * self.endog - 1
            return w * np.log(self.cdf(q * np.dot(self.exog, params)))

        def score(self, params):
            return np.dot(w * (self.endog - self.predict(params)), self.exog)

        def score_obs(self, params):
            return (w * (self.endog - self.predict(params)))[:, None] * self.exog

        def hessian(self, params):
            L = self.predict(params)
            return -np.dot(w * L * (1 - L) * self.exog.T, self.exog)

    return _FreqLogit(y, X)


def _fit(y: np.ndarray, X: np.ndarray, names: list[str], terms: list[str]) -> dict | None:
    """Logit fit; {term: {or, ci_low, ci_high, p_value}} for the terms estimated."""
    keep = np.ptp(X, axis=0) > 0
    keep[0] = True
    X, names = X[:, keep], [n for n, k in zip(names, keep) if k]
    yg, Xg, w = _grouped(y, X)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            res = _weighted_logit(yg, Xg, w).fit(disp=0, maxiter=100)
        except Exception:  # noqa: BLE001 - separation / singular matrix: no estimate
            return None
    out = {}
    for term in terms:
        if term not in names:
            continue
        i = names.index(term)
        b, se = float(res.params[i]), float(res.bse[i])
        if math.isfinite(b) and math.isfinite(se) and abs(b) + 1.96 * se < 700:  # else no usable estimate
            out[term] = {"or": math.exp(b), "ci_low": math.exp(b - 1.96 * se),
                         "ci_high": math.exp(b + 1.96 * se), "p_value": float(res.pvalues[i])}
    return out


def _covariate_dummies(sub: pl.DataFrame) -> pl.DataFrame:
    """Dummies for the Kumwenda covariates: no parental degree, non-white,
    school leaver (entry at 21 or under), each with a not-known dummy so no
    doctor is dropped for a missing covariate."""
    out = {}
    for key in COVARIATE_CANDIDATES:
        col = f"_c_{key}"
        if col not in sub.columns:
            continue
        v = sub[col].str.to_lowercase()
        unknown = v.is_null() | v.is_in(MISSING_LEVELS)
        if key == "parental_he":
            flag = v.is_in(["no", "02"])
        elif key == "ethnicity":
            flag = ~v.is_in(["white"]) & ~unknown
        else:  # age band: school leaver = the youngest band
            flag = v.str.contains("or under|under|^1[5-9]|^2[01]\\b")
        out[f"cov_{key}"] = (flag.fill_null(False) & ~unknown).cast(pl.Float64)
        out[f"cov_{key}_unknown"] = unknown.cast(pl.Float64)
    return pl.DataFrame(out) if out else pl.DataFrame()


def adjusted_independent(p: pl.DataFrame, thr: int, base: int) -> pl.DataFrame:
    """Independent school vs GP for each specialty group, adjusted as the
    published model (Kumwenda et al. 2019, model 1): sex, Foundation score,
    parental degree, ethnicity and school-leaver entry, where released.
    Leaving those out lets parental education and ethnicity, which travel
    with school type, load onto the school-type odds ratio."""
    if "_indep" not in p.columns:
        return pl.DataFrame()
    rows = []
    groups = [x for x in p["_group"].drop_nulls().unique().to_list()
              if x != GP and x.lower() not in MISSING_LEVELS]
    for g in sorted(groups):
        s = p.filter(pl.col("_group").is_in([g, GP]) & pl.col("_indep").is_not_null())
        if s.height == 0:
            continue
        y = (s["_group"] == g).cast(pl.Float64).to_numpy()
        e = s["_indep"].cast(pl.Float64).to_numpy()
        cells = [int(((e == a) & (y == b)).sum()) for a in (0, 1) for b in (0, 1)]
        row = {"specialty_group": g, "reference_group": GP, "exposure": "independent_school",
               "level": "independent", "adjusted_for": "", "n": int(round(s.height / base) * base),
               "or": None, "ci_low": None, "ci_high": None, "p_value": None, "note": ""}
        if min(cells) < thr:
            row["note"] = f"suppressed: a cell below {thr}"
        else:
            cov = _covariate_dummies(s)
            exposure = pl.DataFrame({"exp_independent": e}).hstack(cov) if cov.width else pl.DataFrame({"exp_independent": e})
            X, names = _design(s, exposure)
            est = (_fit(y, X, names, ["exp_independent"]) or {}).get("exp_independent")
            row["adjusted_for"] = ", ".join(n for n in names if n not in ("const", "exp_independent")
                                            and not n.startswith("fp_band_")) + (
                ", fp score band" if any(n.startswith("fp_band_") for n in names) else "")
            if est:
                row.update({k: est[k] for k in ("or", "ci_low", "ci_high", "p_value")})
            else:
                row["note"] = "no estimate (separation or singular design)"
        rows.append(row)
    return pl.DataFrame(rows) if rows else pl.DataFrame()


def odds_ratios(p: pl.DataFrame, measures: list[str], thr: int, base: int) -> pl.DataFrame:
    rows = []
    groups = sorted(g for g in p["_group"].drop_nulls().unique().to_list() if g != GP)
    if GP not in set(p["_group"].drop_nulls().unique().to_list()):
        return pl.DataFrame()
    exposures: list[tuple[str, str]] = []
    if "_indep" in p.columns:
        exposures.append(("independent_school", "_indep"))
    exposures += [(m, f"_m_{m}") for m in measures if m != "school"]
    for g in groups:
        sub = p.filter(pl.col("_group").is_in([g, GP]))
        for name, col in exposures:
            s = sub.filter(pl.col(col).is_not_null())
            if name == "independent_school":
                levels, ref = [("independent", pl.col(col))], "not independent"
                s = s.with_columns(pl.col(col).cast(pl.Boolean))
            else:
                vals = s[col].cast(pl.String)
                s = s.with_columns(vals.alias(col))
                s = s.filter(~pl.col(col).is_in(["missing", "unknown", "suppressed", "*"]))
                if s.height == 0:
                    continue
                ref = s[col].value_counts(sort=True)[0, 0]
                levels = [(lv, pl.col(col) == lv) for lv in sorted(set(s[col].unique().to_list()) - {ref})]
            # one model per exposure: a dummy per level with no small
            # exposure x outcome cell; rows of small levels are left out
            y_all = (s["_group"] == g).cast(pl.Float64).to_numpy()
            ind = s.select([e.cast(pl.Float64).alias(f"exp_{lv}") for lv, e in levels])
            keep_rows = np.ones(s.height, bool)
            ok, notes = [], {}
            for lv, _ in levels:
                e = ind[f"exp_{lv}"].to_numpy()
                cells = [int(((e == a) & (y_all == b)).sum()) for a in (0, 1) for b in (0, 1)]
                if min(cells) < thr:
                    notes[lv] = f"suppressed: a cell below {thr}"
                    keep_rows &= e == 0
                else:
                    ok.append(lv)
            est = {}
            if ok:
                sk = s.filter(pl.Series(keep_rows))
                X, names = _design(sk, ind.filter(pl.Series(keep_rows)).select([f"exp_{lv}" for lv in ok]))
                est = _fit(y_all[keep_rows], X, names, [f"exp_{lv}" for lv in ok]) or {}
            for lv, _ in levels:
                row = {"specialty_group": g, "reference_group": GP, "exposure": name, "level": str(lv),
                       "reference_level": str(ref), "n": int(round(s.height / base) * base),
                       "or": None, "ci_low": None, "ci_high": None, "p_value": None,
                       "note": notes.get(lv, "")}
                r = est.get(f"exp_{lv}")
                if r is not None:
                    row.update({k: round(v, 4) for k, v in r.items()})
                elif lv not in notes:
                    row["note"] = "not estimable"
                rows.append(row)
    schema = {"specialty_group": pl.String, "reference_group": pl.String, "exposure": pl.String,
              "level": pl.String, "reference_level": pl.String, "n": pl.Int64, "or": pl.Float64,
              "ci_low": pl.Float64, "ci_high": pl.Float64, "p_value": pl.Float64, "note": pl.String}
    return pl.DataFrame(rows, schema=schema, orient="row")


# --------------------------------------------------------------------------- linkage caveats

def linkage_caveats(release_dir: Path) -> pl.DataFrame:
    p = Path(release_dir) / "linkage_quality.parquet"
    if not p.is_file():
        return pl.DataFrame()
    lq = pl.read_parquet(p)
    if not {"metric", "value"} <= set(lq.columns):
        return lq
    keep = lq.filter(pl.col("metric").cast(pl.String).str.contains(
        "(?i)rate|f1|recall|precision|sensitivity|ppv|false|missed"))
    return keep.with_columns(pl.col(pl.Categorical, pl.Enum).cast(pl.String)) if keep.height else lq


# --------------------------------------------------------------------------- charts

def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    import matplotlib.pyplot as plt
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def _charts(tables: dict[str, pl.DataFrame], ors: pl.DataFrame) -> list[tuple[str, str]]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    out = []
    t = tables.get("school")
    if t is not None and t.height:
        ind = t.filter(pl.col("level").str.to_lowercase().str.contains("independent"))
        if ind.height:
            ind = ind.sort("specialty_group")
            fig, ax = plt.subplots(figsize=(7, 3.5))
            ax.barh(ind["specialty_group"].to_list(), ind["pct_of_group"].fill_null(0).to_list(),
                    color="#4a7ab5")
            ax.set_xlabel("% of first offers from independent schools (protected counts)")
            out.append(("Independent-school share by specialty group of first offer", _png(fig)))
    if ors.height:
        f = ors.filter((pl.col("exposure") == "independent_school") & pl.col("or").is_not_null())
        if f.height:
            fig, ax = plt.subplots(figsize=(7, 0.5 * f.height + 1.5))
            yv = np.arange(f.height)
            ax.errorbar(f["or"].to_numpy(), yv,
                        xerr=[f["or"].to_numpy() - f["ci_low"].to_numpy(),
                              f["ci_high"].to_numpy() - f["or"].to_numpy()], fmt="o", color="#b5524a")
            ax.axvline(1, color="grey", lw=0.8)
            ax.set_xscale("log")
            ax.set_yticks(yv, f["specialty_group"].to_list())
            ax.set_xlabel("odds ratio vs GP (95% CI), independent school, adjusted for sex and FP score")
            out.append(("Independent school: odds of each specialty group vs GP", _png(fig)))
    return out


# --------------------------------------------------------------------------- html

def _html_table(df: pl.DataFrame, max_rows: int = 400) -> str:
    if df.is_empty():
        return "<p><em>none</em></p>"
    e = html.escape
    head = "".join(f"<th>{e(c)}</th>" for c in df.columns)
    body = "".join("<tr>" + "".join(f"<td>{'' if v is None else e(str(v))}</td>" for v in r) + "</tr>"
                   for r in df.head(max_rows).iter_rows())
    return f"<table><tr>{head}</tr>{body}</table>"


def _wide(t: pl.DataFrame) -> pl.DataFrame:
    return (t.with_columns(pl.col("n").cast(pl.String).fill_null("*"))
             .pivot(on="level", index="specialty_group", values="n", sort_columns=True))


# --------------------------------------------------------------------------- entry point

def write_report(release_dir: Path, out_dir: Path | None = None, rules=None) -> dict:
    release_dir = Path(release_dir)
    out_dir = Path(out_dir) if out_dir else release_dir / "report"
    out_dir.mkdir(parents=True, exist_ok=True)
    if rules is None:
        rules = _rules_from_manifest(release_dir)
    d = pl.read_parquet(release_dir / "doctors.parquet")
    p, found, skipped = _prepare(d)
    measures = [m for m in CANDIDATES if m in found]
    thr, base = _fallback_params(rules)

    tables, logs, paths = {}, {}, {}
    for m in measures:
        t, log = crosstab(p, m, rules)
        tables[m], logs[m] = t, log
        paths[m] = out_dir / f"table_{m}.csv"
        t.write_csv(paths[m], null_value=csv_marker(rules))
    ors = odds_ratios(p, measures, thr, base)
    ors_path = out_dir / "odds_ratios.csv"
    ors.write_csv(ors_path)
    cav = linkage_caveats(release_dir)
    cav_path = out_dir / "linkage_caveats.csv"
    cav.write_csv(cav_path)

    adj = adjusted_independent(p, thr, base)
    adj_path = out_dir / "odds_ratios_adjusted.csv"
    adj.write_csv(adj_path)

    headline = None
    if adj.height and adj.filter(pl.col("specialty_group").str.to_lowercase().str.contains("surg")).height:
        r = adj.filter(pl.col("specialty_group").str.to_lowercase().str.contains("surg")).row(0, named=True)
        headline = {"exposure": "independent_school", "specialty_group": r["specialty_group"],
                    "reference": GP, "or": r["or"], "ci_low": r["ci_low"], "ci_high": r["ci_high"],
                    "n": r["n"], "note": r["note"], "adjusted_for": r["adjusted_for"]}
    elif ors.height:
        h = ors.filter((pl.col("exposure") == "independent_school")
                       & pl.col("specialty_group").str.to_lowercase().str.contains("surg"))
        if h.height:
            r = h.row(0, named=True)
            headline = {"exposure": "independent_school", "specialty_group": r["specialty_group"],
                        "reference": GP, "or": r["or"], "ci_low": r["ci_low"], "ci_high": r["ci_high"],
                        "n": r["n"], "note": r["note"], "adjusted_for": "male, fp score"}

    # link method mix by specialty group (protected) as a quick sensitivity pointer
    lm_cols = [c for c in ("link_method",) if c in d.columns]
    charts = _charts(tables, ors)
    e = html.escape
    sections = [
        "<h1>Specialty of first offer by socio-economic background</h1>",
        f"<p>Release <code>{e(release_dir.name)}</code>: {d.height:,} doctors; "
        f"{p['_group'].is_not_null().sum():,} with a first specialty offer (counts below are protected). "
        "Counts are disclosure-controlled: " + e(json.dumps(next(iter(logs.values()), {}), default=str))
        + ". A blank or * cell is suppressed.</p>",
        "<h2>Columns used</h2>" + _html_table(pl.DataFrame({"input": list(found),
                                                             "column": [str(v) for v in found.values()]}))
        + (f"<p>Measures absent from this release (skipped): {e(', '.join(skipped))}</p>" if skipped else ""),
    ]
    if headline:
        sections.append(
            f"<h2>Headline</h2><p>Independent school, {e(str(headline['specialty_group']))} vs GP: "
            + (f"OR {headline['or']:.2f} (95% CI {headline['ci_low']:.2f} to {headline['ci_high']:.2f}), "
               if headline["or"] is not None else f"{e(headline['note'])}, ")
            + f"n &asymp; {headline['n']:,}; adjusted for {e(str(headline.get('adjusted_for')))}.</p>")
    if adj.height:
        sections.append("<h2>Independent school vs general practice, fully adjusted</h2><p>As the "
                        "published UKMED model (Kumwenda et al. 2019, model 1): sex, Foundation score, "
                        "no parental degree, non-white ethnicity and school-leaver entry, each with a "
                        "not-known indicator. Parental education and ethnicity travel with school type, "
                        "so the sex-and-score model below overstates the school-type gradient.</p>"
                        + _html_table(adj))
    for title, img in charts:
        sections.append(f"<h3>{e(title)}</h3><img alt='{e(title)}' src='data:image/png;base64,{img}'/>")
    sections.append("<h2>Odds ratios vs general practice</h2><p>Logistic regression among doctors whose "
                    "first offer is in the group or in GP; exposure plus sex (male) and UKFP total score "
                    "(missing-score indicator for PIA years). Other SES measures: each level vs the most "
                    "common level. Suppressed where an exposure-by-outcome cell is below the threshold.</p>"
                    + _html_table(ors))
    for m, t in tables.items():
        sections.append(f"<h2>{e(LABELS.get(m, m))} (<code>{e(found[m])}</code>)</h2>" + _html_table(_wide(t)))
    sections.append("<h2>Linkage quality caveats</h2><p>Doctors whose records failed to link look like "
                    "they never reached specialty training, so a group with a lower link rate is "
                    "under-counted in the offers above. Read the ORs against these rates; run "
                    "sensitivity analyses on <code>link_probability</code> / <code>link_method</code> in "
                    "doctors.parquet.</p>" + _html_table(cav))
    if lm_cols:
        lm = (d.group_by("link_method").len("n").with_columns(pl.col("link_method").cast(pl.String))
               .sort("link_method"))
        lm, _ = protect_counts(lm.with_columns(pl.col("n").cast(pl.Int64)), ["n"], rules)
        sections.append("<h3>Link method of published doctors</h3>" + _html_table(lm))
    page = ("<!doctype html><html><head><meta charset='utf-8'><title>Stratification report</title>"
            "<style>body{font-family:sans-serif;margin:2em;max-width:70em}table{border-collapse:collapse;"
            "margin:1em 0}td,th{border:1px solid #ccc;padding:3px 7px;font-size:90%}th{background:#eee}"
            "</style></head><body>" + "".join(sections) + "</body></html>")
    html_path = out_dir / "report.html"
    html_path.write_text(page)
    return {"report_html": str(html_path), "tables": {m: str(v) for m, v in paths.items()},
            "odds_ratios_csv": str(ors_path), "odds_ratios_adjusted_csv": str(adj_path),
            "linkage_caveats_csv": str(cav_path),
            "columns_used": {k: str(v) for k, v in found.items()}, "skipped": skipped,
            "disclosure": next(iter(logs.values()), {}).get("method") if logs else None,
            "headline": headline}


def _rules_from_manifest(release_dir: Path):
    """The rules file the manifest names (schemas/rules/<file>), if there is one."""
    from etl.paths import RULES_DIR
    try:
        name = json.loads((release_dir / "manifest.json").read_text())["rules"]["file"]
    except (OSError, ValueError, KeyError, TypeError):
        name = None
    cands = [RULES_DIR / name] if name else []
    cands += sorted(RULES_DIR.glob("profile_a.yaml"))
    for c in cands:
        if c.is_file():
            import yaml
            try:
                return yaml.safe_load(c.read_text())
            except yaml.YAMLError:
                return None
    return None
