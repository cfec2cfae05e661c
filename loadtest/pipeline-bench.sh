#!/usr/bin/env bash
# The comment pipeline's benchmark, on loopback, bounded (about a minute), stopping by itself:
#   1. comments accepted per second at the API (POST -> 202) at an offered RATE_MAX (2000/s);
#   2. at RATE (500/s) for DURATION, the time from 202 to `published` (p50, p99), measured in
#      the database as moderated_at - created_at of each comment;
#   and the CPU each accepted comment cost, by process, from its submission to its moderation.
# Needs cargo, psql, rabbitmqctl; Postgres, Redis and RabbitMQ running.
source "$(dirname "$0")/pipeline-stack.sh"

# The load: loadtest/goose's `scaleout-rate`, an open-model constant-rate generator. k6 (the
# drill's tool) spent about 330 µs of CPU per comment on these two cores, a third of what the
# whole pipeline spends, so it measured itself as much as the pipeline.
echo "pipeline: building the load generator (release)" >&2
cargo build -q --release --manifest-path loadtest/goose/Cargo.toml --bin scaleout-rate
load=loadtest/goose/target/release/scaleout-rate

# Reads the generator's JSON line: accepted, refused, p99, p50 (ms); dropped goes to stderr.
summary() { python3 -c "import json,sys; m=json.loads(open('$1').read().strip().splitlines()[-1]); \
  print(m['accepted'], m['refused'], m['p99_ms'], m['p50_ms']); \
  print('  offered', m['offered'], 'refused', m['refused'], 'dropped (no connection free)', m['dropped'], file=sys.stderr)"; }

rate_max=${RATE_MAX:-2000}
secs1=${DURATION_MAX:-10}
secs1=${secs1%s}
echo "pipeline: phase 1, offered ${rate_max}/s for ${secs1} s" >&2
loadtest/cpu_by_process.py snap "$RUN_DIR/cpu-before.json"
RATE=$rate_max DURATION=$secs1 CONNECTIONS=${CONNECTIONS:-1024} \
  loadtest/cpu_by_process.py run "$RUN_DIR/load-cpu.txt" -- "$load" >"$RUN_DIR/max.json"
read -r acc1 ref1 p99_1 p50_1 < <(summary "$RUN_DIR/max.json")
wait_drained 120 || echo "pipeline: phase 1 did not drain within 120 s" >&2
# Every process's CPU from the first submission until the last comment was moderated.
loadtest/cpu_by_process.py snap "$RUN_DIR/cpu-after.json"
start=$(sql "SELECT coalesce(max(id), 0) FROM comments")

rate=${RATE:-500}
secs2=${DURATION:-20}
secs2=${secs2%s}
echo "pipeline: phase 2, offered ${rate}/s for ${secs2} s" >&2
RATE=$rate DURATION=$secs2 CONNECTIONS=${CONNECTIONS:-1024} "$load" >"$RUN_DIR/steady.json"
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
printf '| steady | %s/s x %s s | %s | %s | | %s / %s | %s / %s / %s (n=%s) |\n' "$rate" "$secs2" \
  "$acc2" "$ref2" "$p50_2" "$p99_2" "$lat50" "$lat99" "$latmax" "$n"
echo
echo "phase 1, from the first submission until every comment was moderated:"
loadtest/cpu_by_process.py brief "$RUN_DIR/cpu-before.json" "$RUN_DIR/cpu-after.json" "$acc1"
printf 'the load generator, beside them: %.0f µs of CPU per accepted comment\n' \
  "$(python3 -c "print($(cat "$RUN_DIR/load-cpu.txt") / max($acc1, 1) * 1e6)")"
