#!/usr/bin/env bash
# Render a governance report in headless Chromium and save a PNG.
#
#   scripts/screenshot_governance.sh RELEASE_OR_REPORT.html [OUT.png] [WIDTHxHEIGHT]
#
# Installs nothing: uses /usr/bin/chromium (or chromium / chromium-browser on
# PATH). Exits 3 when no browser is found, so callers can skip. The report is
# standalone (inline CSS and SVG), so networking is disabled.
set -euo pipefail

src="${1:?usage: $0 REPORT.html|RELEASE_DIR [OUT.png] [WIDTHxHEIGHT]}"
out="${2:-governance_report.png}"
size="${3:-1280x2000}"
[ -d "$src" ] && src="$src/governance_report.html"
[ -f "$src" ] || { echo "screenshot_governance: no such report: $src" >&2; exit 2; }

browser=""
for b in /usr/bin/chromium chromium chromium-browser; do
  if command -v "$b" >/dev/null 2>&1; then browser="$(command -v "$b")"; break; fi
done
[ -n "$browser" ] || { echo "screenshot_governance: chromium not found (apt-get install chromium)" >&2; exit 3; }

abs="$(cd "$(dirname "$src")" && pwd)/$(basename "$src")"
out_abs="$(cd "$(dirname "$out")" && pwd)/$(basename "$out")"
profile="$(mktemp -d)"
trap 'rm -rf "$profile"' EXIT
timeout 90 "$browser" --headless --no-sandbox --disable-gpu --disable-background-networking \
  --disable-dev-shm-usage --no-first-run --user-data-dir="$profile" \
  --screenshot="$out_abs" --window-size="${size/x/,}" "file://$abs" >/dev/null 2>&1 || true
[ -s "$out_abs" ] || { echo "screenshot_governance: chromium wrote no screenshot" >&2; exit 1; }
echo "$out_abs"
