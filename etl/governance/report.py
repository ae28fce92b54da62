"""The governance report: `governance_report.json` and a standalone
`governance_report.html` (inline CSS and SVG, no network, no JavaScript).

It prints the rules back with their hash and a diff against the previous
release, and the evidence that each rule held on this release. It never holds
a row, an identifier or the key (only its id).
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

import jinja2


# ---------------------------------------------------------------------- SVG charts

def svg_bars(items: list[tuple[str, float]], *, width: int = 560, bar_h: int = 20, unit: str = "",
             color: str = "#2b6cb0", ref: tuple[float, str] | None = None, fmt: str = "{:,.0f}") -> str:
    """Horizontal bar chart as inline SVG. ref: (value, label) vertical line."""
    if not items:
        return '<p class="muted">no data</p>'
    label_w, pad = 190, 70
    vmax = max([v for _, v in items] + ([ref[0]] if ref else []) + [1e-12])
    plot_w = width - label_w - pad
    h = len(items) * (bar_h + 6) + 24
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{h}" role="img" '
           f'class="chart" font-family="sans-serif" font-size="12">']
    for i, (lab, v) in enumerate(items):
        y = 6 + i * (bar_h + 6)
        w = 0 if vmax == 0 else plot_w * v / vmax
        out.append(f'<text x="{label_w - 6}" y="{y + bar_h * 0.7:.1f}" text-anchor="end">{html.escape(str(lab))}</text>')
        out.append(f'<rect x="{label_w}" y="{y}" width="{max(w, 0.5):.1f}" height="{bar_h}" fill="{color}"/>')
        out.append(f'<text x="{label_w + w + 4:.1f}" y="{y + bar_h * 0.7:.1f}">{html.escape(fmt.format(v))}{unit}</text>')
    if ref:
        x = label_w + plot_w * ref[0] / vmax
        out.append(f'<line x1="{x:.1f}" y1="0" x2="{x:.1f}" y2="{h - 16}" stroke="#c53030" stroke-dasharray="4 3"/>')
        out.append(f'<text x="{x:.1f}" y="{h - 4}" fill="#c53030" text-anchor="middle">{html.escape(ref[1])}</text>')
    out.append("</svg>")
    return "".join(out)


def svg_histogram(hist: list[dict], k: int) -> str:
    """Vertical bars: records per equivalence-class-size bin; bins below k in red."""
    if not hist:
        return '<p class="muted">no data</p>'
    width, height, left, bottom = 620, 240, 60, 40
    n = len(hist)
    bw = (width - left - 10) / n
    vmax = max([b["records"] for b in hist] + [1])
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
           f'class="chart" font-family="sans-serif" font-size="11">']
    ph = height - bottom - 20
    for t in range(5):
        v = vmax * t / 4
        y = 10 + ph - ph * t / 4
        out.append(f'<line x1="{left}" x2="{width - 10}" y1="{y:.1f}" y2="{y:.1f}" stroke="#e2e8f0"/>')
        out.append(f'<text x="{left - 4}" y="{y + 4:.1f}" text-anchor="end">{v:,.0f}</text>')
    for i, b in enumerate(hist):
        lo = int(str(b["bin"]).split("-")[0].rstrip("+"))
        color = "#c53030" if lo < k and b["records"] else "#2b6cb0"
        bh = ph * b["records"] / vmax
        x = left + i * bw + 4
        out.append(f'<rect x="{x:.1f}" y="{10 + ph - bh:.1f}" width="{bw - 8:.1f}" height="{max(bh, 0.5):.1f}" fill="{color}"/>')
        out.append(f'<text x="{x + (bw - 8) / 2:.1f}" y="{height - bottom + 14}" text-anchor="middle">{html.escape(str(b["bin"]))}</text>')
        out.append(f'<text x="{x + (bw - 8) / 2:.1f}" y="{10 + ph - bh - 3:.1f}" text-anchor="middle">'
                   f'{b["classes"]:,} cl.</text>')
    out.append(f'<text x="{(width + left) / 2}" y="{height - 6}" text-anchor="middle">equivalence-class size '
               f'(records per bin; bars = records, labels = classes)</text>')
    out.append("</svg>")
    return "".join(out)


TEMPLATE = r"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>Governance report {{ r.release_id }}{% if r.demo %} (DEMO){% endif %}</title>
<style>
 body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#1a202c;background:#f7fafc}
 main{max-width:1180px;margin:0 auto;padding:20px 28px 60px}
 h1{font-size:24px;margin:6px 0} h2{font-size:18px;margin:28px 0 8px;border-bottom:2px solid #cbd5e0;padding-bottom:4px}
 h3{font-size:15px;margin:16px 0 6px}
 table{border-collapse:collapse;font-size:12.5px;margin:6px 0;background:#fff}
 th,td{border:1px solid #e2e8f0;padding:3px 7px;text-align:left;vertical-align:top}
 th{background:#edf2f7} td.num{text-align:right;font-variant-numeric:tabular-nums}
 .banner{background:#c53030;color:#fff;font-weight:700;padding:10px 28px;font-size:16px;letter-spacing:.5px}
 .pass{color:#22543d;background:#c6f6d5;padding:2px 8px;border-radius:4px;font-weight:600}
 .fail{color:#742a2a;background:#fed7d7;padding:2px 8px;border-radius:4px;font-weight:600}
 .cards{display:flex;flex-wrap:wrap;gap:10px;margin:12px 0}
 .card{background:#fff;border:1px solid #e2e8f0;border-radius:6px;padding:8px 12px;min-width:150px}
 .card .v{font-size:20px;font-weight:700} .card .l{font-size:11.5px;color:#4a5568}
 .muted{color:#718096} .zero{color:#a0aec0} .hit{color:#c53030;font-weight:700}
 pre{background:#fff;border:1px solid #e2e8f0;padding:8px;font-size:11.5px;overflow-x:auto;max-height:420px}
 .grid{display:grid;grid-template-columns:1fr 1fr;gap:18px}
 code{font-size:12px}
 details summary{cursor:pointer;color:#2b6cb0}
</style></head><body>
{% if r.demo %}<div class="banner">DEMO RELEASE &mdash; pseudonymised with the public demo key; not for real data or analysis</div>{% endif %}
<main>
<h1>Governance report &mdash; release {{ r.release_id }}</h1>
<p>Rules <b>{{ r.rules.name }}</b> ({{ r.rules.file }}, sha256 <code>{{ r.rules.sha256[:16] }}…</code>) ·
 generated {{ r.generated_at }} · medlink {{ r.code.version }}{% if r.code.git_commit %} @ <code>{{ r.code.git_commit[:12] }}</code>{% if r.code.dirty %} (uncommitted changes){% endif %}{% endif %} ·
 status <span class="{{ 'pass' if r.status == 'pass' else 'fail' }}">{{ r.status|upper }}</span></p>
{% if r.failure %}<p class="fail">Stopped: {{ r.failure }}. The release tables were deleted; nothing was published.</p>{% endif %}

<div class="cards">
 {% if r.k_anonymity %}<div class="card"><div class="v">k = {{ r.k_anonymity.k_achieved }}</div><div class="l">achieved on QI set A (required ≥ {{ r.k_anonymity.k_required }})</div></div>
 <div class="card"><div class="v">{{ '%.2f'|format(100*r.k_anonymity.suppressed_fraction) }}%</div><div class="l">records locally suppressed (cap {{ '%.0f'|format(100*r.k_anonymity.max_suppressed_fraction) }}%)</div></div>{% endif %}
 {% if r.l_diversity %}<div class="card"><div class="v">l {{ '✓' if r.l_diversity.holds else '✗' }}</div><div class="l">distinct l-diversity ≥ {{ r.l_diversity.l_required }} for adverse outcomes</div></div>{% endif %}
 <div class="card"><div class="v">{{ r.scan.total }}</div><div class="l">leak-scanner hits over {{ r.scan.columns_scanned }} columns</div></div>
 <div class="card"><div class="v">{{ 'OK' if r.allow_list.ok else 'FAIL' }}</div><div class="l">schema allow-list</div></div>
 {% if r.intruder and r.intruder.run %}<div class="card"><div class="v">{{ '%.3f'|format(100*r.intruder.max_reidentification_rate) }}%</div><div class="l">motivated intruder, max re-identification (1/k = {{ '%.0f'|format(100*r.intruder.one_over_k) }}%)</div></div>{% endif %}
 <div class="card"><div class="v"><code>{{ r.key.key_id }}</code></div><div class="l">key id · {{ r.key.algorithm }}{% if r.key.demo %} · DEMO{% endif %}</div></div>
</div>

<h2>1. Checks</h2>
<table><tr><th>rule</th><th>required</th><th>this release</th><th>held</th></tr>
{% for c in checks %}<tr><td>{{ c.rule }}</td><td>{{ c.required }}</td><td>{{ c.value }}</td><td><span class="{{ 'pass' if c.ok else 'fail' }}">{{ 'yes' if c.ok else 'no' }}</span></td></tr>{% endfor %}
</table>

<h2>2. Key and pseudonyms</h2>
<table>
<tr><th>key id</th><td><code>{{ r.key.key_id }}</code> (first 8 hex of HMAC(key, "key-id"); the key itself is never written)</td></tr>
<tr><th>algorithm</th><td>{{ r.key.algorithm }}, {{ r.key.length_bits }}-bit key, from {{ r.key.source }}</td></tr>
<tr><th>created / rotation due</th><td>{{ r.key.created or 'unknown' }} / {{ r.key.rotation_due or 'unknown' }}{% if r.key.rotation_overdue %} <span class="fail">rotation overdue</span>{% endif %} (rotate every {{ r.key.rotate_after_days }} days)</td></tr>
<tr><th>internal person key</th><td>HMAC-SHA256(key, "person|" + person_id), restricted crosswalk only</td></tr>
<tr><th>release pseudonym</th><td>{{ r.pseudonyms.method }}, {{ r.pseudonyms.token_bits }} bits, {{ r.pseudonyms.persons }} persons; derived from identifiers: {{ r.pseudonyms.derived_from_identifiers }};
 unique: {{ r.pseudonyms.unique_in_doctors }}; every event pseudonym is a doctor's: {{ r.pseudonyms.events_pids_in_doctors }};
 shared with the previous release: {{ r.pseudonyms.get('overlap_with_previous_release', 'no previous release') }}; reused from an earlier run of this release: {{ r.pseudonyms.reused_from_earlier_run }}</td></tr>
</table>

<h2>3. Rules</h2>
<p>{{ r.rules.file }} version {{ r.rules.version }}, sha256 <code>{{ r.rules.sha256 }}</code>.
{% if r.rules.previous %}Previous release {{ r.rules.previous.release_id }}: {% if r.rules.previous.error %}{{ r.rules.previous.error }}{% elif r.rules.diff == '' %}same rules (identical hash).{% else %}rules changed:{% endif %}{% else %}No previous release to compare with.{% endif %}</p>
{% if r.rules.diff %}<pre>{{ r.rules.diff }}</pre>{% endif %}
<details><summary>Full rules file</summary><pre>{{ r.rules.text }}</pre></details>

<h3>Field register</h3>
<table><tr><th>table</th><th>field</th><th>class</th><th>treatment</th><th>hierarchy (level used)</th><th>released as</th><th>QI set A</th><th>in input</th><th>why</th></tr>
{% for f in r.fields %}<tr><td>{{ f.table }}</td><td><code>{{ f.field }}</code></td><td>{{ f.class }}</td><td>{{ f.treatment }}</td>
<td>{% if f.hierarchy %}{{ f.hierarchy }}{% if f.level is not none %} · L{{ f.level }}: {{ f.level_description }}{% endif %}{% endif %}</td>
<td>{% if f.released_as %}<code>{{ f.released_as }}</code>{% else %}<span class="muted">—</span>{% endif %}</td><td>{{ '✓' if f.in_qi_set_a else '' }}</td><td>{{ '✓' if f.present_in_input else 'absent' }}</td><td>{{ f.why }}</td></tr>{% endfor %}
</table>

<h2>4. No identifiers in the release</h2>
<h3>Schema allow-list</h3>
<p>{% if r.allow_list.ok %}<span class="pass">OK</span> every release column is listed in the rules.{% else %}<span class="fail">FAIL</span> columns outside the allow-list: {{ r.allow_list.unexpected|join(', ') }}{% endif %}
{% if r.allow_list.unlisted_tables %} Tables the rules do not list (scanned, not allow-listed): {{ r.allow_list.unlisted_tables|join(', ') }}.{% endif %}</p>
<h3>Leak scanner (rows flagged per detector and column; zero expected)</h3>
<p class="muted">Vocabulary: {% for k, v in r.scan.vocabulary_sizes.items() %}{{ k }} {{ v }}{% if not loop.last %} · {% endif %}{% endfor %}.
{% for k, v in r.scan.not_run.items() %}<br><b>{{ k }}</b> not run: {{ v }}{% endfor %}</p>
<table><tr><th>column</th>{% for d in r.scan.detectors %}<th>{{ d }}</th>{% endfor %}</tr>
{% for col in scan_columns %}<tr><td><code>{{ col }}</code></td>{% for d in r.scan.detectors %}{% set n = r.scan.counts[d][col] %}<td class="num {{ 'hit' if n else 'zero' }}">{{ n }}</td>{% endfor %}</tr>{% endfor %}
<tr><th>total</th>{% for d in r.scan.detectors %}<th class="num">{{ r.scan.totals[d] }}</th>{% endfor %}</tr>
</table>

{% if r.k_anonymity %}
<h2>5. k-anonymity on QI set A</h2>
<p>k required {{ r.k_anonymity.k_required }}, achieved <b>{{ r.k_anonymity.k_achieved }}</b> over {{ r.k_anonymity.class_sizes.classes }} equivalence classes of {{ r.k_anonymity.class_sizes.records }} records
(median class {{ r.k_anonymity.class_sizes.k_median }}, largest {{ r.k_anonymity.class_sizes.k_max }}). Highest prosecutor risk 1/k = {{ r.k_anonymity.class_sizes.prosecutor_risk_max }}, average {{ r.k_anonymity.class_sizes.prosecutor_risk_avg }}; sample uniques {{ r.k_anonymity.class_sizes.sample_uniques }}.
Suppression: {{ r.k_anonymity.suppression_method }}; {{ r.k_anonymity.suppressed_records }} records ({{ '%.2f'|format(100*r.k_anonymity.suppressed_fraction) }}%){% if r.k_anonymity.suppressed_to_reach_k_in_suppressed_class %}, of which {{ r.k_anonymity.suppressed_to_reach_k_in_suppressed_class }} only to make the suppressed class itself ≥ k{% endif %}. Recoded by escalation: {{ r.k_anonymity.recoded_records }} records.</p>
<div class="grid"><div>
<h3>Class-size distribution</h3>{{ hist_svg|safe }}
<table><tr><th>class size</th><th>classes</th><th>records</th></tr>{% for b in r.k_anonymity.class_sizes.histogram %}<tr><td>{{ b.bin }}</td><td class="num">{{ b.classes }}</td><td class="num">{{ b.records }}</td></tr>{% endfor %}</table>
</div><div>
<h3>Generalisation level used per QI</h3>
<table><tr><th>QI</th><th>released as</th><th>level</th><th>records recoded</th></tr>
{% for q, v in r.k_anonymity.levels.items() %}<tr><td><code>{{ q }}</code></td><td><code>{{ v.released_as }}</code></td><td>L{{ v.level }}: {{ v.description }}</td><td class="num">{{ r.k_anonymity.recoded_by_field.get(q, 0) }}</td></tr>{% endfor %}</table>
<h3>Escalation steps</h3>
{% if r.k_anonymity.escalation_steps %}<table><tr><th>#</th><th>coarsened</th><th>to</th><th>violating before → after</th></tr>
{% for s in r.k_anonymity.escalation_steps %}<tr><td>{{ loop.index }}</td><td><code>{{ s.field }}</code></td><td>L{{ s.to_level }}: {{ s.level }}</td><td class="num">{{ s.violating_before }} → {{ s.violating_after }}</td></tr>{% endfor %}</table>
{% else %}<p class="muted">none: level 0 met k within the suppression cap</p>{% endif %}
</div></div>

<h2>6. l-diversity (sensitive fields)</h2>
<table><tr><th>field</th><th>protected values</th><th>classes holding one</th><th>records in them</th><th>l required</th><th>l achieved (min distinct)</th><th>violating classes</th></tr>
{% for s, v in r.l_diversity.fields.items() %}<tr><td><code>{{ s }}</code></td><td>{{ v.protect_values|join(', ') }}</td><td class="num">{{ v.classes_with_protected_value }}</td><td class="num">{{ v.records_in_those_classes }}</td><td class="num">{{ v.l_required }}</td><td class="num">{{ v.l_achieved if v.l_achieved is not none else '—' }}</td><td class="num">{{ v.violating_classes }}</td></tr>{% endfor %}
</table>

<h2>7. Records recoded and suppressed, by subgroup</h2>
<p>Overall: {{ r.subgroups.overall.records }} records, {{ r.subgroups.overall.recoded }} recoded ({{ r.subgroups.overall.recoded_pct }}%), {{ r.subgroups.overall.suppressed }} suppressed ({{ r.subgroups.overall.suppressed_pct }}%). Groups are the true (restricted) values.</p>
<div class="grid">
{% for name, rows in r.subgroups.items() if name != 'overall' %}<div><h3>{{ name }}</h3>
{{ sub_svgs[name]|safe }}
<table><tr><th>group</th><th>records</th><th>recoded</th><th>%</th><th>suppressed</th><th>%</th></tr>
{% for g in rows %}<tr><td>{{ g.group }}</td><td class="num">{{ g.records }}</td><td class="num">{{ g.recoded }}</td><td class="num">{{ g.recoded_pct }}</td><td class="num">{{ g.suppressed }}</td><td class="num">{{ g.suppressed_pct }}</td></tr>{% endfor %}
</table></div>{% endfor %}
</div>

<h2>8. Extended risk (QI set A + SES fields; reported, not enforced)</h2>
<p>Fields: {{ r.extended_risk.extended_fields|join(', ') }}. k on the extended set {{ r.extended_risk.k_min }} (target {{ r.extended_risk.target_k }}: {{ 'met' if r.extended_risk.target_met else 'not met' }});
sample uniques {{ r.extended_risk.sample_uniques }}; records in classes below target {{ r.extended_risk.records_below_k }}; highest / average prosecutor risk {{ r.extended_risk.prosecutor_risk_max }} / {{ r.extended_risk.prosecutor_risk_avg }}; marketer risk {{ r.extended_risk.marketer_risk }}.
Population uniqueness equals sample uniqueness here: the release covers the population (sampling fraction 1).</p>
{% if r.extended_risk.steps %}<p>SES coarsening applied: {% for s in r.extended_risk.steps %}<code>{{ s.field }}</code> → {{ s.level }}{% if not loop.last %}; {% endif %}{% endfor %}.</p>{% endif %}
{% if r.extended_risk.note %}<p class="fail">{{ r.extended_risk.note }}</p>{% endif %}

<h2>9. Events</h2>
<p>{{ r.events.rows_in }} event rows in, {{ r.events.rows_released }} released.
Held back by the rules: {% for t, n in r.events.held_back_by_type.items() %}{{ t }} {{ n }}{% if not loop.last %}, {% endif %}{% endfor %}.</p>
<table><tr><th>event type</th><th>rows released</th><th>detail</th></tr>
{% for t, n in r.events.released_by_type.items() %}<tr><td>{{ t }}</td><td class="num">{{ n }}</td><td>{{ r.events.detail_treatment.get(t, '') }}</td></tr>{% endfor %}</table>

<h2>10. Motivated-intruder test</h2>
{% if r.intruder.run %}
<p>A register-like public table (LRMP fields: {{ r.intruder.public_fields|join(', ') }}) for {{ r.intruder.public_records }} registered doctors, built from the restricted data and generalised with the published rules at this release's levels,
matched against {{ r.intruder.release_rows_matchable }} non-suppressed release rows. Fuzzy: {{ '%.0f'|format(100*r.intruder.year_noise) }}% of public years off by one, matched within ±{{ r.intruder.fuzzy_year_tolerance }} year.
{% if r.intruder.event_years_used %}"with events" also uses the released event years of {{ r.intruder.event_years_used|join(', ') }}.{% endif %}</p>
{{ intr_svg|safe }}
<table><tr><th>scenario</th><th>public records</th><th>with a candidate</th><th>unique matches</th><th>correct unique</th><th>re-identification rate</th><th>median candidates</th><th>expected correct guesses</th></tr>
{% for s in intr_rows %}<tr><td>{{ s.name }}</td><td class="num">{{ s.public_records }}</td><td class="num">{{ s.with_candidates }}</td><td class="num">{{ s.unique_matches }}</td><td class="num">{{ s.correct_unique_matches }}</td><td class="num">{{ '%.4f'|format(s.reidentification_rate) }}</td><td class="num">{{ s.median_candidates }}</td><td class="num">{{ s.expected_correct_guesses }}</td></tr>{% endfor %}
</table>
<p>Highest unique re-identification rate {{ '%.4f'|format(r.intruder.max_reidentification_rate) }} against 1/k = {{ r.intruder.one_over_k }}: {% if r.intruder.within_1_over_k %}<span class="pass">within</span>{% else %}<span class="fail">above</span>{% endif %}.</p>
{% else %}<p class="muted">not run: {{ r.intruder.reason }}</p>{% endif %}
{% endif %}

<h2>11. Reproducibility</h2>
<table>
<tr><th>code</th><td>medlink {{ r.code.version }}; git commit {{ r.code.git_commit or 'unavailable' }}{% if r.code.dirty %} (working tree had uncommitted changes){% endif %}</td></tr>
<tr><th>rules</th><td>{{ r.rules.file }} sha256 {{ r.rules.sha256 }}</td></tr>
{% for f, h in r.inputs.checksums.items() %}<tr><th>input</th><td><code>{{ f }}</code> sha256 {{ h }}</td></tr>{% endfor %}
<tr><th>rows in</th><td>doctors {{ r.inputs.doctors_rows }}, events {{ r.inputs.events_rows }}</td></tr>
{% if r.timings_seconds %}<tr><th>timings (s)</th><td>{% for k, v in r.timings_seconds.items() %}{{ k }} {{ v }}{% if not loop.last %} · {% endif %}{% endfor %}</td></tr>{% endif %}
</table>
<p class="muted">This report holds counts, category labels, hashes and the key id only: no rows, identifiers or key material.</p>
</main></body></html>
"""


def _checks(r: dict) -> list[dict]:
    out = []
    al = r.get("allow_list", {})
    out.append({"rule": "release columns within the schema allow-list", "required": "0 outside",
                "value": len(al.get("unexpected", [])), "ok": al.get("ok", False)})
    sc = r.get("scan", {})
    out.append({"rule": "leak scanner (names, e-mails, postcodes, DOBs, GMC/UCAS/NHS numbers, identifiers, digests)",
                "required": "0 hits", "value": sc.get("total"), "ok": sc.get("total") == 0})
    if "k_anonymity" in r:
        k = r["k_anonymity"]
        out.append({"rule": "k-anonymity on QI set A", "required": f"k ≥ {k['k_required']}",
                    "value": f"k = {k['k_achieved']}", "ok": k["holds"]})
        out.append({"rule": "local suppression cap", "required": f"≤ {100 * k['max_suppressed_fraction']:.1f}%",
                    "value": f"{100 * k['suppressed_fraction']:.2f}%",
                    "ok": k["suppressed_fraction"] <= k["max_suppressed_fraction"] + 1e-9})
        ld = r["l_diversity"]
        out.append({"rule": "distinct l-diversity for adverse outcomes", "required": f"l ≥ {ld['l_required']}",
                    "value": ", ".join(f"{s}: {v['l_achieved'] if v['l_achieved'] is not None else '—'}"
                                       for s, v in ld["fields"].items()), "ok": ld["holds"]})
        p = r["pseudonyms"]
        out.append({"rule": "pseudonyms unique and consistent across tables", "required": "yes",
                    "value": "yes" if p.get("unique_in_doctors") and p.get("events_pids_in_doctors") else "no",
                    "ok": bool(p.get("unique_in_doctors") and p.get("events_pids_in_doctors"))})
        if p.get("overlap_with_previous_release") is not None:
            out.append({"rule": "pseudonyms differ from the previous release", "required": "0 shared",
                        "value": p["overlap_with_previous_release"], "ok": p["overlap_with_previous_release"] == 0})
        it = r.get("intruder", {})
        if it.get("run"):
            out.append({"rule": "motivated intruder: unique re-identification rate", "required": f"≤ 1/k = {it['one_over_k']}",
                        "value": f"{it['max_reidentification_rate']:.4f}", "ok": it["within_1_over_k"]})
    key = r.get("key", {})
    out.append({"rule": "real key (not demo), rotation not overdue", "required": "yes",
                "value": "DEMO key" if key.get("demo") else ("overdue" if key.get("rotation_overdue") else "ok"),
                "ok": not key.get("demo") and not key.get("rotation_overdue")})
    return out


def render_html(r: dict[str, Any]) -> str:
    env = jinja2.Environment(autoescape=True, undefined=jinja2.ChainableUndefined)
    tpl = env.from_string(TEMPLATE)
    hist_svg = sub_svgs = intr_svg = ""
    sub_svgs = {}
    intr_rows = []
    if "k_anonymity" in r:
        hist_svg = svg_histogram(r["k_anonymity"]["class_sizes"].get("histogram", []), r["k_anonymity"]["k_required"])
        for name, rows in r.get("subgroups", {}).items():
            if name == "overall":
                continue
            sub_svgs[name] = svg_bars([(g["group"], g["suppressed_pct"]) for g in rows], unit="%",
                                      color="#b7791f", fmt="{:.2f}", width=520, bar_h=14)
        it = r.get("intruder", {})
        if it.get("run"):
            for name in ("exact", "fuzzy", "exact_with_events", "fuzzy_with_events"):
                if name in it:
                    intr_rows.append({"name": name.replace("_", " "), **it[name]})
            intr_svg = svg_bars([(s["name"], 100 * s["reidentification_rate"]) for s in intr_rows], unit="%",
                                fmt="{:.3f}", ref=(100 * it["one_over_k"], f"1/k = {100 * it['one_over_k']:.0f}%"),
                                color="#6b46c1")
    scan_columns = list(next(iter(r["scan"]["counts"].values()), {}).keys()) if r.get("scan") else []
    return tpl.render(r=r, checks=_checks(r), hist_svg=hist_svg, sub_svgs=sub_svgs, intr_svg=intr_svg,
                      intr_rows=intr_rows, scan_columns=scan_columns)


def write_report(report: dict[str, Any], out_dir: str | Path) -> dict[str, Path]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    jp, hp = out_dir / "governance_report.json", out_dir / "governance_report.html"
    tmp = jp.with_name(".governance_report.json.tmp")
    tmp.write_text(json.dumps(report, indent=2, default=str, sort_keys=False))
    tmp.replace(jp)
    tmp = hp.with_name(".governance_report.html.tmp")
    tmp.write_text(render_html(report))
    tmp.replace(hp)
    return {"json": jp, "html": hp}
