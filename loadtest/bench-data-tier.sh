#!/usr/bin/env bash
# The data-tier benchmark: read throughput and p99 of GET /api/v1/posts/{id} with the
# application cache on and off, and with 0 and 1 replicas, on a seeded data set with
# Zipf-distributed reads; plus the share of reads the primary served, and where each
# request's CPU went, by process (loadtest/cpu_by_process.py).
#
#   loadtest/bench-data-tier.sh            # POSTS=10000 COMMENTS=100000 DURATION=10s
#
# It uses its own database (scaleout_bench) and Redis key prefix, the local replica
# (infra/scripts/replica.sh up), wrk from Debian's packages, and a release build of `mobile`.
# Loopback only; every process it starts is stopped when it ends.
set -euo pipefail
cd "$(dirname "$0")/.."

posts=${POSTS:-10000}
comments=${COMMENTS:-100000}
duration=${DURATION:-10s}
connections=${CONNECTIONS:-32}
port=${PORT:-8299}
server=postgres://postgres@127.0.0.1:5432
database=scaleout_bench
work=$(mktemp -d)
pid=

cleanup() {
  [[ -n $pid ]] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT

command -v wrk >/dev/null || { echo "bench: wrk is missing: apt-get install -y wrk" >&2; exit 1; }
infra/scripts/services.sh check
infra/scripts/replica.sh up >/dev/null
cargo build --release -q -p mobile

echo "bench: seeding $posts posts and $comments comments into $database"
psql "$server/postgres" -q -c "DROP DATABASE IF EXISTS $database WITH (FORCE)"
DATABASE_URL=$server/$database target/release/mobile migrate >/dev/null
psql "$server/$database" -v ON_ERROR_STOP=1 -q <<SQL
INSERT INTO users (username, password_hash)
SELECT 'bench-' || i, 'not a usable hash' FROM generate_series(1, 1000) AS i;
INSERT INTO posts (author_id, title, body)
SELECT 1 + i % 1000, 'Post ' || i, repeat('Benchmark body text. ', 20) FROM generate_series(1, $posts) AS i;
INSERT INTO comments (post_id, author_id, body, status, spam_verdict, sentiment_score, sentiment_label)
SELECT 1 + (i * 7919) % $posts, 1 + i % 1000, 'A comment.', 'published', 'ham', 0.5, 'positive'
FROM generate_series(1, $comments) AS i;
ANALYZE;
SQL

# 50,000 request paths drawn from a Zipf law (s = 1.1) over the posts: a few are hot, most cold.
python3 - "$posts" >"$work/paths.lua" <<'PY'
import bisect, random, sys
n = int(sys.argv[1]); random.seed(7)
weights = [1 / (k + 1) ** 1.1 for k in range(n)]
total = sum(weights); cdf = []; acc = 0.0
for w in weights:
    acc += w / total; cdf.append(acc)
ids = [min(bisect.bisect_left(cdf, random.random()), n - 1) + 1 for _ in range(50000)]
print("paths = {" + ",".join('"/api/v1/posts/%d"' % i for i in ids) + "}")
print("request = function() return wrk.format('GET', paths[math.random(#paths)]) end")
PY

# Let the replica catch up with the seed before measuring.
for _ in $(seq 1 60); do
  lag=$(psql "$server/postgres" -Atc "SELECT coalesce(max(pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn)), 0) FROM pg_stat_replication")
  [[ ${lag%.*} -eq 0 ]] && break
  sleep 1
done

run() { # cache(true|false) replicas(0|1)
  local cache=$1 replicas=$2 urls=""
  [[ $replicas -eq 1 ]] && urls=postgres://postgres@127.0.0.1:5433/$database
  env DATABASE_URL=$server/$database DATABASE_REPLICA_URLS=$urls CACHE_ENABLED=$cache \
    REDIS_KEY_PREFIX="bench:$(date +%s%N):" BIND=127.0.0.1:$port RUN_MIGRATIONS=false RUST_LOG=warn \
    target/release/mobile >"$work/mobile.log" 2>&1 &
  pid=$!
  for _ in $(seq 1 50); do curl -fs -o /dev/null "127.0.0.1:$port/readyz" && break; sleep 0.2; done
  sleep 1 # the replica monitor admits the replica after its first check
  wrk -t 2 -c "$connections" -d 3s -s "$work/paths.lua" "http://127.0.0.1:$port" >/dev/null # warm-up
  local before after
  before=$(curl -fs "127.0.0.1:$port/metrics" | awk '/^db_reads_total/ {split($1,a,"\""); r[a[2]]=$2} END {for (k in r) printf "%s=%s ", k, r[k]}')
  loadtest/cpu_by_process.py snap "$work/cpu-before.json"
  wrk -t 2 -c "$connections" -d "$duration" --latency -s "$work/paths.lua" "http://127.0.0.1:$port" >"$work/wrk.txt"
  loadtest/cpu_by_process.py snap "$work/cpu-after.json"
  after=$(curl -fs "127.0.0.1:$port/metrics" | awk '/^db_reads_total/ {split($1,a,"\""); r[a[2]]=$2} END {for (k in r) printf "%s=%s ", k, r[k]}')
  kill "$pid"; wait "$pid" 2>/dev/null || true; pid=
  local rps p99 share
  rps=$(awk '/Requests\/sec/ {print $2}' "$work/wrk.txt")
  p99=$(awk '$1 == "99%" {print $2}' "$work/wrk.txt")
  share=$(python3 - "$before" "$after" <<'PY'
import sys
def parse(s): return {k: float(v) for k, v in (p.split("=") for p in s.split())}
b, a = parse(sys.argv[1]), parse(sys.argv[2])
d = {k: a.get(k, 0) - b.get(k, 0) for k in a}
total = sum(d.values())
print("n/a" if total == 0 else "%.1f%% of %d" % (100 * d.get("primary", 0) / total, total))
PY
)
  printf "| %-5s | %d | %10s | %8s | %s |\n" "$cache" "$replicas" "$rps" "$p99" "$share"
  # Where each request's CPU went (wrk itself is not counted: it ended before the snapshot).
  echo "cache=$cache replicas=$replicas: $(loadtest/cpu_by_process.py brief "$work/cpu-before.json" \
    "$work/cpu-after.json" "$(awk '/requests in/ {print $1}' "$work/wrk.txt")")" >>"$work/cpu.txt"
}

echo
echo "GET /api/v1/posts/{id}, Zipf s=1.1 over $posts posts, wrk -t2 -c$connections -d$duration, $(nproc) cores"
echo
echo "| cache | replicas | requests/s | p99 | database reads served by the primary |"
echo "|---|---|---|---|---|"
run true 0
run false 0
run true 1
run false 1
echo
cat "$work/cpu.txt"
psql "$server/postgres" -q -c "DROP DATABASE IF EXISTS $database WITH (FORCE)"
