#!/usr/bin/env bash
# User-space instructions per proxied request: runs the release gateway under callgrind in
# front of an nginx backend on loopback, drives it with wrk for a short and a long run, and
# divides the difference in instructions by the difference in requests, so start-up, shutdown
# and one-off work cancel out.
#
# Usage: gateway/bench/ir-per-request.sh [gateway binary]     (default: the release build)
# Knobs: SHORT=2s LONG=6s CONNS=16 BASE_PORT=18300
set -euo pipefail

cd "$(dirname "$0")/../.."
ROOT=$(pwd)
SHORT=${SHORT:-2s}
LONG=${LONG:-6s}
CONNS=${CONNS:-16}
BASE_PORT=${BASE_PORT:-18300}
BACKEND_PORT=$((BASE_PORT + 1))
GATEWAY_PORT=$((BASE_PORT + 2))
ADMIN_PORT=$((BASE_PORT + 3))
export PATH="$PATH:/usr/sbin"

BIN=${1:-}
if [ -z "$BIN" ]; then
    cargo build --release -p gateway --quiet
    BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release/gateway"
fi

WORK=$(mktemp -d /tmp/scaleout-ir.XXXXXX)
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

wait_port() {
    for _ in $(seq 1 600); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
        sleep 0.1
    done
    echo "Nothing listens on port $1" >&2
    exit 1
}

mkdir -p "$WORK/backend/logs"
cat >"$WORK/backend/nginx.conf" <<CONF
worker_processes 1;
daemon off;
pid $WORK/backend/nginx.pid;
error_log $WORK/backend/logs/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    keepalive_requests 1000000;
    server { listen 127.0.0.1:$BACKEND_PORT; location / { return 200 "ok\n"; } }
}
CONF
nginx -e "$WORK/backend/logs/error.log" -p "$WORK/backend" -c "$WORK/backend/nginx.conf" &
PIDS+=($!)

cat >"$WORK/gateway.toml" <<CONF
listen = "127.0.0.1:$GATEWAY_PORT"
admin_listen = "127.0.0.1:$ADMIN_PORT"
workers = 1
[[upstreams]]
name = "web"
backends = [{ addr = "127.0.0.1:$BACKEND_PORT" }]
[[routes]]
default = true
upstream = "web"
CONF
wait_port "$BACKEND_PORT"

# $1: wrk duration. Prints "instructions requests".
measure() {
    local out="$WORK/callgrind.$1.out" pid requests
    RUST_LOG=warn valgrind --tool=callgrind --callgrind-out-file="$out" \
        "$BIN" --config "$WORK/gateway.toml" 2>"$WORK/valgrind.log" &
    pid=$!
    wait_port "$GATEWAY_PORT"
    requests=$(wrk -t 1 -c "$CONNS" -d "$1" "http://127.0.0.1:$GATEWAY_PORT/" | awk '/requests in/ {print $1}')
    kill -TERM "$pid"
    wait "$pid" || true
    echo "$(awk '/^(summary|totals):/ {print $2; exit}' "$out") $requests"
}

read -r ir_short n_short < <(measure "$SHORT")
read -r ir_long n_long < <(measure "$LONG")
awk -v a="$ir_short" -v b="$ir_long" -v m="$n_short" -v n="$n_long" 'BEGIN {
    printf "short run: %d requests, %d Ir; long run: %d requests, %d Ir\n", m, a, n, b
    printf "Ir per request: %.0f\n", (b - a) / (n - m) }'
