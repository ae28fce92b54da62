"""Standalone HTML rendering of the linkage-quality report (inline CSS and SVG,
no network)."""

from __future__ import annotations

import html
import json

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em;max-width:1200px;color:#222}
h1{font-size:1.6em}h2{font-size:1.25em;border-bottom:1px solid #ccc;margin-top:1.6em}
h3{font-size:1.05em;margin-bottom:.3em}
table{border-collapse:collapse;margin:.5em 0 1em;font-size:.88em}
th,td{border:1px solid #ddd;padding:3px 8px;text-align:right}th{background:#f3f3f3}
td:first-child,th:first-child{text-align:left}
.small{color:#666;font-size:.85em}.bad{color:#b00}.ok{color:#070}
details{margin:.4em 0}summary{cursor:pointer}
"""


def _e(x) -> str:
    return html.escape(str(x))


def _fmt(x, nd=4) -> str:
    if x is None:
        return "–"
    if isinstance(x, float):
        return f"{x:.{nd}f}"
    if isinstance(x, (list, tuple)) and len(x) == 2 and all(isinstance(v, (float, type(None))) for v in x):
        return "–" if x[0] is None else f"{x[0]:.3f}–{x[1]:.3f}"
    return _e(x)


def _table(headers, rows) -> str:
    h = "".join(f"<th>{_e(c)}</th>" for c in headers)
    b = "".join("<tr>" + "".join(f"<td>{_fmt(v)}</td>" for v in r) + "</tr>" for r in rows)
    return f"<table><tr>{h}</tr>{b}</table>"


def _hist_svg(hist: dict, w: int = 760, h: int = 220) -> str:
    edges, counts = hist["edges"], hist["counts"]
    if not counts or max(counts) == 0:
        return "<p class=small>no pairs</p>"
    import math

    mx = max(math.log10(c + 1) for c in counts)
    bw = (w - 60) / len(counts)
    bars = []
    for i, c in enumerate(counts):
        bh = (math.log10(c + 1) / mx) * (h - 40) if mx else 0
        x = 50 + i * bw
        colour = "#c0504d" if edges[i] < 0 else "#4f81bd"
        bars.append(f'<rect x="{x:.1f}" y="{h - 25 - bh:.1f}" width="{bw * 0.9:.1f}" height="{bh:.1f}" '
                    f'fill="{colour}"><title>[{edges[i]}, {edges[i + 1]}): {c}</title></rect>')
    ticks = []
    for i in range(0, len(edges), 5):
        x = 50 + i * bw
        ticks.append(f'<text x="{x:.1f}" y="{h - 8}" font-size="10" text-anchor="middle">{edges[i]:g}</text>')
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" role="img">'
            f'<text x="5" y="14" font-size="11">pairs (log scale) by match weight</text>'
            + "".join(bars) + "".join(ticks) + "</svg>")


def _rate_svg(rows: list[tuple[str, float, tuple]], w: int = 420) -> str:
    """Horizontal dot-and-interval chart of rates with 95% CIs."""
    rows = [r for r in rows if r[1] is not None]
    if not rows:
        return ""
    h = 18 * len(rows) + 30
    lo = min(r[2][0] for r in rows if r[2][0] is not None)
    lo = max(0.0, min(lo, 0.9) - 0.02)
    sx = lambda v: 150 + (v - lo) / (1 - lo + 1e-9) * (w - 170)  # noqa: E731
    parts = []
    for i, (lab, rate, ci) in enumerate(rows):
        y = 20 + i * 18
        parts.append(f'<text x="5" y="{y + 4}" font-size="10">{_e(lab)[:22]}</text>')
        if ci[0] is not None:
            parts.append(f'<line x1="{sx(ci[0]):.1f}" x2="{sx(ci[1]):.1f}" y1="{y}" y2="{y}" stroke="#888"/>')
        parts.append(f'<circle cx="{sx(rate):.1f}" cy="{y}" r="3" fill="#4f81bd"/>')
    parts.append(f'<text x="150" y="{h - 4}" font-size="9">{lo:.2f}</text>'
                 f'<text x="{w - 25}" y="{h - 4}" font-size="9">1.00</text>')
    return f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}">' + "".join(parts) + "</svg>"


def render_html(rep: dict) -> str:
    out = [f"<!doctype html><html><head><meta charset='utf-8'><title>{_e(rep['title'])}</title>"
           f"<style>{CSS}</style></head><body>"]
    out.append(f"<h1>{_e(rep['title'])}</h1>")
    out.append(f"<p class=small>model <b>{_e(rep['model'])}</b> (signature {_e(rep['model_signature'])}); "
               f"software {_e(json.dumps(rep['software']))}. Reporting follows GUILD / RECORD: method, "
               "counts, link rates by the study's exposures with 95% intervals, linked vs unlinked records, "
               "and accuracy where truth or clerical labels exist.</p>")
    d = rep["decision"]
    out.append("<h2>1. Decision rules</h2>" + _table(["setting", "value"], [
        ["link threshold (match probability)", d["threshold"]],
        ["within-source dedupe threshold", d["dedupe_threshold"]],
        ["clerical review band", f"{d['review_band'][0]} – {d['review_band'][1]}"],
        ["clustering", d["clustering"]]]))

    out.append("<h2>2. Sources</h2>")
    rows = [[s, v["records"], v["people"], v["records_in_people_with_several"]] for s, v in rep["sources"].items()]
    out.append(_table(["source", "records", "people", "records in people with several rows"], rows))
    fields = sorted({f for v in rep["sources"].values() for f in v["completeness"]})
    out.append("<h3>Completeness of linkage fields</h3>" + _table(
        ["field", *rep["sources"].keys()],
        [[f, *[v["completeness"].get(f) for v in rep["sources"].values()]] for f in fields]))

    m = rep["method"]
    out.append("<h2>3. Method</h2>")
    if m["deterministic"]:
        out.append("<h3>Deterministic identifier pass</h3>" + _table(
            ["identifier", "task", "exact pairs", "vetoed", "typo candidates", "typo confirmed"],
            [[x["identifier"], x["task"], x["exact_pairs"], x["exact_vetoed"], x["typo_candidates"],
              x["typo_confirmed"]] for x in m["deterministic"]]))
    hdr = ["rule", "task", "pairs", "new pairs", "skipped blocks"]
    has_rec = any("recall" in b for b in m["blocking"])
    if has_rec:
        hdr += ["recall", "cumulative recall"]
    out.append("<h3>Blocking rules (union)</h3>" + _table(hdr, [
        [b["rule"], b["task"], b["pairs"], b["new_pairs"], b["skipped_blocks"],
         *([b.get("recall"), b.get("cumulative_recall")] if has_rec else [])] for b in m["blocking"]]))
    out.append("<h3>Prior (lambda) per task</h3>" + _table(
        ["task", "lambda", "method", "expected matches"],
        [[k, v["lambda"], v["method"], v["expected_matches"]] for k, v in m["lambda"].items()]))
    for task, tp in m["parameters"].items():
        rows = []
        for cname, levels in tp["comparisons"].items():
            for lv in levels:
                rows.append([cname, lv["level"], lv["m"], lv["u"], lv["match_weight"]])
        out.append(f"<details><summary>m, u and weights for task {_e(task)}</summary>"
                   + _table(["comparison", "level", "m", "u", "weight (log2 m/u)"], rows) + "</details>")
    out.append("<details><summary>EM training sessions</summary>" + _table(
        ["rule", "task", "pairs in rule", "pairs used", "patterns", "iterations", "lambda in block", "fixed"],
        [[s["rule"], s["task"], s["pairs_total"], s["pairs_used"], s["patterns"], s["iterations"], s["lam"],
          ", ".join(s["fixed"])] for s in m["training_sessions"]]) + "</details>")

    p = rep["pairs"]
    out.append("<h2>4. Pairs and match weights</h2>" + _table(["measure", "count"], [
        ["candidate pairs scored", p["candidates_scored"]], ["pairs written (above floor)", p["written"]],
        ["pairs above link threshold", p["above_threshold"]], ["deterministic pairs", p["deterministic"]],
        ["pairs in clerical review band", p["review_band"]]]))
    out.append(_hist_svg(rep["match_weight_histogram"]))

    out.append("<h2>5. Link rates (95% Wilson intervals)</h2>")
    for key, e in rep["link_rates"].items():
        out.append(f"<h3>{_e(key)}: {e['linked']} of {e['records']} = {_fmt(e['rate'])} "
                   f"({_fmt(e['ci95'])})</h3>")
        for g, tab in e["by_subgroup"].items():
            rows = [[k, v["records"], v["linked"], v["rate"], v["ci95"]] for k, v in tab.items()]
            out.append(f"<details><summary>by {_e(g)}</summary><div style='display:flex;gap:2em'>"
                       + _table([g, "records", "linked", "rate", "95% CI"], rows)
                       + _rate_svg([(k, v["rate"], v["ci95"]) for k, v in tab.items()]) + "</div></details>")

    out.append("<h2>6. Linked vs unlinked records</h2><p class=small>Share of each category among records "
               "linked to another source vs not, with standardised differences (|SMD| &gt; 0.1 flagged).</p>")
    for s, e in rep["linked_vs_unlinked"].items():
        out.append(f"<h3>{_e(s)}: {e['linked']} linked, {e['unlinked']} unlinked</h3>")
        for g, tab in e["attributes"].items():
            rows = [[k, v["linked_share"], v["unlinked_share"],
                     ("⚠ " if abs(v["smd"]) > 0.1 else "") + f"{v['smd']:.3f}"] for k, v in tab.items()]
            out.append(f"<details><summary>{_e(g)}</summary>"
                       + _table([g, "linked share", "unlinked share", "SMD"], rows) + "</details>")

    c = rep["clusters"]
    out.append("<h2>7. People (clusters)</h2>" + _table(["measure", "value"], [
        ["people", c["people"]], ["people in more than one source", c["multi_source"]],
        *[[f"clustering: {k}", v] for k, v in c["clustering"].items()],
        *[[f"records linked by: {k}", v] for k, v in c["link_method_records"].items()]]))
    if c.get("by_sources"):
        out.append(_table(["sources present", "people"], list(c["by_sources"].items())))
    out.append(_table(["records per person", "people"], list(c["size_distribution"].items())))

    if "accuracy" in rep:
        a = rep["accuracy"]
        out.append("<h2>8. Accuracy against truth / labels</h2>")
        rows = [[k, v["precision"], v["recall"], v["f1"], v["tp"], v["predicted"], v["true"]]
                for k, v in a["pairwise"].items()]
        o = a["overall"]
        rows.append(["overall", o["precision"], o["recall"], o["f1"], o["tp"], o["predicted"], o["true"]])
        out.append(_table(["task", "precision", "recall", "F1", "TP", "predicted pairs", "true pairs"], rows))
        if a.get("deterministic"):
            dd = a["deterministic"]
            out.append(f"<p>Deterministic pass: {dd['pairs']} pairs, precision {_fmt(dd['precision'])}; "
                       f"typo-tolerant {dd['typo_pairs']} pairs, precision {_fmt(dd['typo_precision'])}.</p>")
        for task, groups in a["by_subgroup"].items():
            for g, tab in groups.items():
                rows = [[k, v["precision"], v["recall"], v["f1"], v["true"]] for k, v in tab.items()]
                out.append(f"<details><summary>{_e(task)} by {_e(g)}</summary>"
                           + _table([g, "precision", "recall", "F1", "true pairs"], rows) + "</details>")
    if "label_accuracy" in rep:
        la = rep["label_accuracy"]
        o = la["overall"]
        out.append("<h2>9. Agreement with clerical labels</h2>"
                   f"<p>{la['pairs']} labelled pairs ({la['labelled_matches']} matches): precision "
                   f"{_fmt(o['precision'])}, recall {_fmt(o['recall'])}, F1 {_fmt(o['f1'])}.</p>")
        if la.get("blocking_recall"):
            out.append("<h3>Blocking recall on labelled matches</h3>" + _table(
                ["rule", "recall", "cumulative recall"],
                [[b["rule"], b["recall"], b["cumulative_recall"]] for b in la["blocking_recall"]]))
        for g, tab in la["by_subgroup"].items():
            rows = [[k, v["precision"], v["recall"], v["f1"], v["true"]] for k, v in tab.items()]
            out.append(f"<details><summary>by {_e(g)}</summary>"
                       + _table([g, "precision", "recall", "F1", "labelled matches"], rows) + "</details>")
    out.append("<h2>Timings (s)</h2>" + _table(["stage", "seconds"], list(rep["timings_seconds"].items())))
    out.append("</body></html>")
    return "".join(out)


def waterfall_svg(expl: dict, w: int = 640) -> str:
    """A standalone SVG waterfall of an `explain()` result: prior, then each
    comparison's weight (+ TF adjustment), ending at the match weight."""
    steps = [("prior", expl["prior_weight"])]
    for r in expl["comparisons"]:
        steps.append((f"{r['comparison']}: {r['level']}", r["weight"] + r["tf_adjustment"]))
    cum, lo, hi = 0.0, 0.0, 0.0
    bars = []
    for lab, v in steps:
        bars.append((lab, cum, cum + v, v))
        cum += v
        lo, hi = min(lo, cum, cum - v), max(hi, cum, cum - v)
    bars.append(("match weight", 0.0, cum, cum))
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    h = 22 * len(bars) + 30
    sx = lambda v: 230 + (v - lo) / ((hi - lo) or 1) * (w - 250)  # noqa: E731
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}">',
           f'<line x1="{sx(0):.1f}" x2="{sx(0):.1f}" y1="5" y2="{h - 20}" stroke="#999"/>']
    for i, (lab, a, b, v) in enumerate(bars):
        y = 10 + i * 22
        x0, x1 = sorted((sx(a), sx(b)))
        colour = "#4f81bd" if v >= 0 else "#c0504d"
        if i == len(bars) - 1:
            colour = "#333"
        out.append(f'<text x="5" y="{y + 12}" font-size="11">{_e(lab)[:34]}</text>')
        out.append(f'<rect x="{x0:.1f}" y="{y}" width="{max(x1 - x0, 1):.1f}" height="16" fill="{colour}">'
                   f'<title>{v:+.2f}</title></rect>')
        out.append(f'<text x="{x1 + 3:.1f}" y="{y + 12}" font-size="10">{v:+.2f}</text>')
    out.append(f'<text x="230" y="{h - 5}" font-size="10">match probability {expl["match_probability"]:.6f}</text>')
    return "".join(out) + "</svg>"
