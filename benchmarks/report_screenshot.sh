#!/usr/bin/env bash
# The report as a reader first sees it: a headless-Chromium screenshot of OUTPUT/report.html at a laptop's window
# size, to check that the answer and its evidence fit a screen. Chromium comes from Debian's packages
# (apt-get install chromium); nothing is fetched from the network.
# Usage: benchmarks/report_screenshot.sh OUTPUT [PNG] [WIDTHxHEIGHT]
set -euo pipefail
output=${1:?usage: $0 OUTPUT [PNG] [WIDTHxHEIGHT]}
png=${2:-$output/report-screenshot.png}
size=${3:-1400x1800}
page=$(realpath "$output/report.html")
browser=$(command -v chromium || command -v chromium-browser || command -v google-chrome || true)
if [[ -z $browser ]]; then
    echo "no Chromium found: apt-get install chromium" >&2
    exit 2
fi
"$browser" --headless --no-sandbox --disable-gpu --hide-scrollbars --window-size="${size/x/,}" \
    --screenshot="$png" "file://$page" 2>/dev/null
echo "$png"
