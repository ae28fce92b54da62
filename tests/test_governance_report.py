"""The governance report: standalone HTML + JSON with the evidence, and a
headless-Chromium render (skipped only when no chromium is installed)."""

from __future__ import annotations

import json
import re
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from etl.governance import load_key, load_rules, protect
from etl.governance.report import render_html
from etl.governance.synthetic import make_assembled

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "screenshot_governance.sh"


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    root = tmp_path_factory.mktemp("govrep")
    d, e, vocab = make_assembled(3000, seed=99)
    d.write_parquet(root / "d.parquet")
    e.write_parquet(root / "e.parquet")
    protect(root / "d.parquet", root / "e.parquet", load_rules("profile_a"), load_key(demo=True), root / "rel",
            root / "restricted", release_id="rep1", input_vocab=vocab,
            input_checksums={"admission.csv": "ab" * 32})
    return root / "rel"


def test_report_json_holds_the_evidence(release):
    r = json.loads((release / "governance_report.json").read_text())
    rules = load_rules("profile_a")
    assert r["rules"]["sha256"] == rules.sha256 and r["rules"]["text"] == rules.text
    assert r["code"]["version"] and "git_commit" in r["code"]
    assert r["inputs"]["checksums"]["admission.csv"] == "ab" * 32
    assert len(r["inputs"]["checksums"]["assembled/d.parquet"]) == 64
    assert r["key"]["key_id"].startswith("demo-") and r["key"]["algorithm"] == "HMAC-SHA256"
    assert r["allow_list"]["ok"] and r["scan"]["total"] == 0
    assert set(r["scan"]["counts"]) == {"name", "email", "postcode", "date_of_birth", "gmc_number", "ucas_id",
                                        "nhs_number", "identifier", "digest", "restricted_value"}
    assert r["k_anonymity"]["class_sizes"]["histogram"] and r["subgroups"]["ethnicity"]
    assert r["intruder"]["run"] and r["extended_risk"]["fields"]
    assert r["demo"] is True


def test_html_is_standalone(release):
    html = (release / "governance_report.html").read_text()
    assert html.lstrip().lower().startswith("<!doctype html>")
    assert "<svg" in html and "<style>" in html
    for pattern in (r"<script", r"<link\b", r"@import", r"url\(", r"src\s*=\s*[\"']?https?:",
                    r"href\s*=\s*[\"']?https?:"):
        assert not re.search(pattern, html, re.I), pattern
    assert "DEMO RELEASE" in html


def test_failure_report_renders_without_release_sections():
    r = {"release_id": "x", "generated_at": "now", "demo": False, "status": "fail", "failure": "email in doctors.a",
         "code": {"version": "0"}, "key": {"key_id": "k", "algorithm": "HMAC-SHA256"},
         "rules": {"name": "p", "file": "p.yaml", "sha256": "0" * 64, "text": "", "version": 1},
         "inputs": {"checksums": {}}, "fields": [], "allow_list": {"ok": True, "unexpected": []},
         "scan": {"total": 1, "columns_scanned": 1, "detectors": ["email"], "counts": {"email": {"doctors.a": 1}},
                  "totals": {"email": 1}, "not_run": {}, "vocabulary_sizes": {}}, "pseudonyms": {}}
    html = render_html(r)
    assert "FAIL" in html and "nothing was published" in html


def _png_size(p: Path) -> tuple[int, int]:
    data = p.read_bytes()[:32]
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


@pytest.mark.skipif(not (shutil.which("chromium") or Path("/usr/bin/chromium").exists()
                         or shutil.which("chromium-browser")), reason="chromium is not installed")
def test_report_renders_in_headless_chromium(release, tmp_path):
    out = tmp_path / "governance.png"
    res = subprocess.run(["bash", str(SCRIPT), str(release), str(out), "1280x2000"], capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert _png_size(out) == (1280, 2000)
    assert out.stat().st_size > 30_000            # a rendered page, not a blank one
    try:
        from PIL import Image
    except ImportError:
        return
    im = Image.open(out).convert("RGB").resize((128, 200))
    colours = im.getcolors(maxcolors=1 << 16) or []
    assert len(colours) > 50
    # the red DEMO banner is at the top
    r, g, b = im.getpixel((64, 1))
    assert r > 150 and g < 100 and b < 100
