"""Data Docs, built offline into a chosen folder and readable without the
internet.

Each gate's (scrubbed, counts-only) validation result is kept in
`<docs_dir>/results/` through a GX ValidationResultsStore, so several gates
(raw, linked, release), even from separate processes, share one site whose
index lists them all. GX's pages load Bootstrap, jQuery, Font Awesome and
Vega from CDNs and a logo from S3 carrying the context id (research/
prefect-gx.md 2.1); after every build `make_offline` drops those tags and
inlines a small stylesheet, so a browser in the secure environment fetches
nothing.
"""

from __future__ import annotations

import datetime as dt
import re
import threading
from pathlib import Path

from etl.quality.suites import fingerprint

_lock = threading.RLock()

OFFLINE_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,Arial,sans-serif;font-size:14px;
 color:#222;margin:0;background:#fafafa;line-height:1.45}
nav,.navbar{background:#23395d;color:#fff;padding:.6em 1.2em}
nav a,.navbar a{color:#fff;text-decoration:none;font-weight:600}
.container,.container-fluid{padding:1em 1.5em;max-width:1400px}
.row{display:flex;flex-wrap:wrap;gap:1em}
.col-md-2,.col-md-3,.col-lg-2,.col-lg-3,.col-xl-2,.col-xl-3{flex:0 0 260px}
.col,.col-md-8,.col-md-9,.col-md-10,.col-lg-9,.col-lg-10,.col-xl-9,.col-xl-10,.col-12{flex:1 1 600px;min-width:0}
.card{background:#fff;border:1px solid #ddd;border-radius:4px;margin:0 0 1em 0}
.card-header{background:#f0f2f5;padding:.5em .9em;border-bottom:1px solid #ddd;font-weight:600}
.card-body{padding:.6em .9em}
table{border-collapse:collapse;width:100%;background:#fff}
th,td{border:1px solid #e1e4e8;padding:.35em .6em;text-align:left;vertical-align:top}
th{background:#f6f8fa}
.table-sm td,.table-sm th{padding:.2em .45em}
code,pre,.text-monospace{font-family:ui-monospace,Menlo,Consolas,monospace;background:#f3f3f3;padding:0 .2em}
.badge{display:inline-block;padding:.1em .5em;border-radius:3px;font-size:.85em;background:#6c757d;color:#fff}
.badge-success,.bg-success{background:#1e7e34;color:#fff}
.badge-danger,.bg-danger{background:#b02a37;color:#fff}
.text-success{color:#1e7e34}.text-danger{color:#b02a37}.text-muted{color:#6c757d}
.fas,.fa{font-style:normal}.fa-check-circle::before{content:"\\2714"}.fa-times::before,.fa-times-circle::before{content:"\\2718"}
.collapse:not(.show){display:block}
.sticky{position:static}
ul.nav,ul.list-group{list-style:none;padding-left:0}
.list-group-item{padding:.25em 0}
img{max-width:100%}
.offline-note{font-size:12px;color:#6c757d;padding:.3em 1.5em}
"""

# GX's "Show All / Failed Only" filter, without jQuery
FILTER_JS = """
function medlinkShow(on){
 var d=on?'':'none';
 document.querySelectorAll('.hide-succeeded-validation-target-child').forEach(function(e){e.parentElement.style.display=d;});
 document.querySelectorAll('.hide-succeeded-validation-target').forEach(function(e){e.style.display=d;});
 document.querySelectorAll('.hide-succeeded-validations-column-section-target-child').forEach(function(e){
  var s=e.parentElement.parentElement; s.style.display=d;
  if(s.id){document.querySelectorAll('a[href$="'+s.id+'"]').forEach(function(a){a.style.display=d;});}
 });
}
function showAllValidations(){medlinkShow(true);}
function hideSucceededValidations(){medlinkShow(false);}
"""

_REMOTE = r"""["']\s*(?:https?:)?//"""
_LINK_RE = re.compile(r"<link\b[^>]*\bhref\s*=\s*" + _REMOTE + r"[^>]*>", re.I)
_SCRIPT_RE = re.compile(r"<script\b[^>]*\bsrc\s*=\s*" + _REMOTE + r"[^>]*>\s*</script\s*>", re.I)
_IMG_RE = re.compile(r"<img\b[^>]*\bsrc\s*=\s*" + _REMOTE + r"[^>]*>", re.I)
_CSS_URL_RE = re.compile(r"""url\(\s*['"]?\s*(?:https?:)?//[^)]*\)""", re.I)
_CSS_IMPORT_RE = re.compile(r"""@import\s+(?:url\()?\s*['"]?\s*(?:https?:)?//[^;]*;""", re.I)
# GX's navbar logo, wherever it points
_LOGO_RE = re.compile(r"<img\b[^>]*great-expectations-web-assets[^>]*>", re.I)


_INDEX_TABLE_RE = re.compile(
    r'<table\s+id="(?P<id>[^"]+)"[^>]*ge-index-page-validation-results-table[^>]*>\s*</table>', re.S)
_INDEX_DATA_RE = re.compile(r"\bdata:\s*(\[.*?\]),\s*toolbar:", re.S)
_INLINE_SCRIPT_RE = re.compile(r'<script\b(?![^>]*id="medlink-)[^>]*>.*?</script\s*>', re.S | re.I)
_TOOLBAR_RE = re.compile(r'<div id="[^"]*-table-toolbar"[^>]*>.*?</div>', re.S)
_FOOTER_RE = re.compile(r"<footer\b.*?</footer\s*>", re.S | re.I)


def _static_index_table(html: str) -> str:
    """GX fills the index table from a JS array with bootstrap-table (a CDN
    script); write the same rows as a plain HTML table instead."""
    import ast
    from html import escape

    m, d = _INDEX_TABLE_RE.search(html), _INDEX_DATA_RE.search(html)
    if not m or not d:
        return html
    try:
        rows = ast.literal_eval(d.group(1))
    except (ValueError, SyntaxError):
        return html
    rows = sorted(rows, key=lambda r: r.get("_run_time_sort", 0), reverse=True)
    body = "".join(
        "<tr><td class=\"{cls}\">{status}</td><td>{time}</td><td>{suite}</td><td>{asset}</td>"
        "<td><a href=\"{href}\">results</a></td></tr>".format(
            cls="text-success" if r.get("_validation_success_text") == "Success" else "text-danger",
            status=escape(str(r.get("_validation_success_text", ""))),
            time=escape(str(r.get("run_time", ""))),
            suite=escape(str(r.get("_expectation_suite_name_sort", ""))),
            asset=escape(str(r.get("asset_name") or r.get("run_name") or "")),
            href=escape(str(r.get("_table_row_link_path", "")), quote=True))
        for r in rows)
    table = (f'<table id="{m.group("id")}" class="table-sm"><thead><tr><th>Status</th><th>Run time</th>'
             f"<th>Suite</th><th>Data asset</th><th></th></tr></thead><tbody>{body}</tbody></table>")
    return html[:m.start()] + table + html[m.end():]


def make_offline(html: str) -> str:
    """Drop every CDN <link>/<script> and remote <img>, turn the index's
    JS-filled table into HTML, drop the (jQuery) inline scripts, inline a
    stylesheet."""
    html = _static_index_table(html)
    html = _LINK_RE.sub("", html)
    html = _SCRIPT_RE.sub("", html)
    html = _INLINE_SCRIPT_RE.sub("", html)
    html = _TOOLBAR_RE.sub("", html)
    html = _FOOTER_RE.sub("", html)
    html = _CSS_IMPORT_RE.sub("", _CSS_URL_RE.sub("none", html))     # dark-mode logo in inline CSS
    html = _LOGO_RE.sub('<span class="brand">medlink data quality</span>', html)
    html = _IMG_RE.sub("", html)
    if "medlink-offline-css" not in html:
        style = f'<style id="medlink-offline-css">{OFFLINE_CSS}</style>'
        if "hideSucceededValidations" in html:
            style += f'<script id="medlink-filter-js">{FILTER_JS}</script>'
        html = re.sub(r"</head>", style + "</head>", html, count=1, flags=re.I) \
            if re.search(r"</head>", html, re.I) else style + html
        html = re.sub(r"(<body[^>]*>)", r'\1<div class="offline-note">Offline copy: '
                      r"styles are inlined; no file is fetched from the internet.</div>",
                      html, count=1, flags=re.I)
    return html


KEEP_STATIC = {"images/favicon.ico"}


def prune_static(docs_dir: Path) -> None:
    """GX copies 4 MB of fonts, images and a stylesheet (with a remote logo
    URL) into static/ on every build; the rewritten pages use only the icon."""
    static = Path(docs_dir) / "static"
    if not static.is_dir():
        return
    for p in sorted(static.rglob("*"), reverse=True):
        rel = p.relative_to(static).as_posix()
        if p.is_file() and rel not in KEEP_STATIC:
            p.unlink()
        elif p.is_dir() and not any(p.iterdir()):
            p.rmdir()


def rewrite_site(docs_dir: Path) -> int:
    prune_static(docs_dir)
    n = 0
    for p in Path(docs_dir).rglob("*.html"):
        text = p.read_text(encoding="utf-8")
        new = make_offline(text)
        if new != text:
            p.write_text(new, encoding="utf-8")
            n += 1
    return n


def remote_resources(docs_dir: Path) -> list[str]:
    """<link>/<script>/<img> tags, CSS url()s and @imports that still point at
    the network, in any page or stylesheet of the site (for tests)."""
    tag = re.compile(r"<(?:link|script|img|iframe|source)\b[^>]*\b(?:href|src)\s*=\s*" + _REMOTE + r"[^>]*>", re.I)
    out = []
    for p in Path(docs_dir).rglob("*"):
        if p.suffix not in (".html", ".css", ".js"):
            continue
        text = p.read_text(encoding="utf-8")
        for rx in (tag, _CSS_URL_RE, _CSS_IMPORT_RE):
            out += [f"{p.name}: {m.group(0)[:120]}" for m in rx.finditer(text)]
    return out


def _results_store(ctx, docs_dir: Path):
    name = "medlink_results_" + fingerprint(str(docs_dir.resolve()))
    if name not in ctx.stores:
        ctx.add_store(name, {"class_name": "ValidationResultsStore",
                             "store_backend": {"class_name": "TupleFilesystemStoreBackend",
                                               "base_directory": str((docs_dir / "results").resolve())}})
    return name, ctx.stores[name]


def store_and_build(ctx, vr, docs_dir: Path, suite_name: str, asset: str) -> Path:
    """Keep `vr` in `<docs_dir>/results/` and (re)build the site in `docs_dir`."""
    from great_expectations.core.run_identifier import RunIdentifier
    from great_expectations.data_context.types.resource_identifiers import (
        ExpectationSuiteIdentifier,
        ValidationResultIdentifier,
    )
    from great_expectations.render.renderer.site_builder import SiteBuilder

    docs_dir = Path(docs_dir)
    docs_dir.mkdir(parents=True, exist_ok=True)
    with _lock:
        store_name, store = _results_store(ctx, docs_dir)
        now = dt.datetime.now(dt.timezone.utc)
        key = ValidationResultIdentifier(
            expectation_suite_identifier=ExpectationSuiteIdentifier(name=suite_name),
            run_id=RunIdentifier(run_name=asset, run_time=now),
            batch_identifier=asset)
        vr.meta["run_id"] = key.run_id
        if isinstance(vr.meta.get("batch_spec"), dict):
            vr.meta["batch_spec"]["data_asset_name"] = asset
        store.set(key, vr)
        site = SiteBuilder(
            data_context=ctx, site_name="medlink",
            store_backend={"class_name": "TupleFilesystemStoreBackend",
                           "base_directory": str(docs_dir.resolve())},
            show_how_to_buttons=False,
            site_section_builders={"expectations": "None", "profiling": "None",
                                   "validations": {"source_store_name": store_name}},
        )
        site.build(resource_identifiers=[key])
        rewrite_site(docs_dir)
    return docs_dir / "index.html"
