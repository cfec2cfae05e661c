#!/usr/bin/env bash
# Benchmarks the scaleout gateway against nginx and HAProxy, each with one worker, in front of
# the same nginx backend, on loopback. Prints a markdown table: requests/s, p50, p99 and each
# proxy's CPU time per request (utime + stime from /proc, children included), with the backend
# served directly as the ceiling. Then compares the L4 mode with HAProxy's `mode tcp`. A second
# gateway with `io_uring = false` shows what its io_uring sockets are worth.
#
# Usage: loadtest/bench-gateway.sh            (or: make bench-gateway)
# Knobs: DURATION=10s CONNS=64 THREADS=2 ROUNDS=3 BASE_PORT=18100
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd)
DURATION=${DURATION:-10s}
CONNS=${CONNS:-64}
THREADS=${THREADS:-2}
ROUNDS=${ROUNDS:-3}
BASE_PORT=${BASE_PORT:-18100}

BACKEND_PORT=$((BASE_PORT + 1))
NGINX_PORT=$((BASE_PORT + 2))
HAPROXY_PORT=$((BASE_PORT + 3))
HAPROXY_TCP_PORT=$((BASE_PORT + 4))
GATEWAY_PORT=$((BASE_PORT + 5))
GATEWAY_ADMIN_PORT=$((BASE_PORT + 6))
GATEWAY_TCP_PORT=$((BASE_PORT + 7))
EPOLL_PORT=$((BASE_PORT + 8))
EPOLL_ADMIN_PORT=$((BASE_PORT + 9))
EPOLL_TCP_PORT=$((BASE_PORT + 10))

# --- tools ---------------------------------------------------------------------------------
missing=()
for tool in nginx haproxy wrk; do
    command -v "$tool" >/dev/null 2>&1 || [ -x "/usr/sbin/$tool" ] || missing+=("$tool")
done
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
        echo "Installing ${missing[*]} from Debian's packages..." >&2
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx haproxy wrk >/dev/null
    else
        echo "Missing: ${missing[*]}. Install with: sudo apt-get install -y nginx haproxy wrk" >&2
        exit 1
    fi
fi
export PATH="$PATH:/usr/sbin"

echo "Building the gateway (release)..." >&2
cargo build --release -p gateway --quiet
GATEWAY_BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release/gateway"

# --- processes -----------------------------------------------------------------------------
WORK=$(mktemp -d /tmp/scaleout-bench.XXXXXX)
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

wait_port() {
    for _ in $(seq 1 100); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
        sleep 0.05
    done
    echo "Nothing listens on port $1" >&2
    exit 1
}

nginx_conf() { # $1: name, $2: server block
    mkdir -p "$WORK/$1/logs"
    cat >"$WORK/$1/nginx.conf" <<EOF
worker_processes 1;
daemon off;
pid $WORK/$1/nginx.pid;
error_log $WORK/$1/logs/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    keepalive_requests 1000000;
    $2
}
EOF
}

nginx_conf backend "server { listen 127.0.0.1:$BACKEND_PORT; location / { return 200 \"ok\n\"; } }"
nginx_conf proxy "upstream backend { server 127.0.0.1:$BACKEND_PORT; keepalive 128; }
    server { listen 127.0.0.1:$NGINX_PORT; location / {
        proxy_pass http://backend; proxy_http_version 1.1; proxy_set_header Connection \"\"; } }"

cat >"$WORK/haproxy.cfg" <<EOF
global
    nbthread 1
    maxconn 4096
defaults
    timeout connect 2s
    timeout client 30s
    timeout server 30s
frontend http
    mode http
    bind 127.0.0.1:$HAPROXY_PORT
    option http-keep-alive
    default_backend web
backend web
    mode http
    http-reuse always
    server b1 127.0.0.1:$BACKEND_PORT
frontend tcp
    mode tcp
    bind 127.0.0.1:$HAPROXY_TCP_PORT
    default_backend web_tcp
backend web_tcp
    mode tcp
    server b1 127.0.0.1:$BACKEND_PORT
EOF

# $1: HTTP port, $2: admin port, $3: TCP port, $4: io_uring (true or false)
gateway_conf() {
    cat <<EOF
listen = "127.0.0.1:$1"
admin_listen = "127.0.0.1:$2"
workers = 1
io_uring = $4
[[upstreams]]
name = "web"
policy = "round_robin"
backends = [{ addr = "127.0.0.1:$BACKEND_PORT" }]
[[routes]]
default = true
upstream = "web"
[[tcp]]
listen = "127.0.0.1:$3"
upstream = "web"
EOF
}
gateway_conf "$GATEWAY_PORT" "$GATEWAY_ADMIN_PORT" "$GATEWAY_TCP_PORT" true >"$WORK/gateway.toml"
gateway_conf "$EPOLL_PORT" "$EPOLL_ADMIN_PORT" "$EPOLL_TCP_PORT" false >"$WORK/gateway-epoll.toml"

nginx -e "$WORK/backend/logs/error.log" -p "$WORK/backend" -c "$WORK/backend/nginx.conf" &
PIDS+=($!)
BACKEND_PID=$!
nginx -e "$WORK/proxy/logs/error.log" -p "$WORK/proxy" -c "$WORK/proxy/nginx.conf" &
PIDS+=($!)
NGINX_PID=$!
haproxy -q -f "$WORK/haproxy.cfg" &
PIDS+=($!)
HAPROXY_PID=$!
RUST_LOG=warn "$GATEWAY_BIN" --config "$WORK/gateway.toml" &
PIDS+=($!)
GATEWAY_PID=$!
RUST_LOG=warn "$GATEWAY_BIN" --config "$WORK/gateway-epoll.toml" &
PIDS+=($!)
EPOLL_PID=$!
for port in $BACKEND_PORT $NGINX_PORT $HAPROXY_PORT $HAPROXY_TCP_PORT $GATEWAY_PORT $GATEWAY_TCP_PORT $EPOLL_PORT $EPOLL_TCP_PORT; do
    wait_port "$port"
done

# --- measurement ---------------------------------------------------------------------------
# CPU ticks (utime + stime) of a process and its children (nginx's worker under its master).
cpu_ticks() {
    local total=0 pid t
    for pid in "$1" $(pgrep -P "$1" || true); do
        t=$(sed 's/^.*) //' "/proc/$pid/stat" 2>/dev/null | awk '{print $12 + $13}') || t=0
        total=$((total + ${t:-0}))
    done
    echo "$total"
}
CLK_TCK=$(getconf CLK_TCK)

# Converts a wrk latency ("812.00us", "1.20ms", "1.01s") to milliseconds.
to_ms() {
    awk -v v="$1" 'BEGIN {
        if (v ~ /us$/) { sub(/us$/, "", v); print v / 1000 }
        else if (v ~ /ms$/) { sub(/ms$/, "", v); print v + 0 }
        else if (v ~ /s$/) { sub(/s$/, "", v); print v * 1000 }
        else print v }'
}

RESULTS="$WORK/results.tsv"
: >"$RESULTS"

# $1: label, $2: port, $3: pid whose CPU is charged ("-" for none)
run() {
    local label=$1 port=$2 pid=$3 before=0 after=0 out rps p50 p99 requests cpu_us
    [ "$pid" != "-" ] && before=$(cpu_ticks "$pid")
    out=$(wrk -t "$THREADS" -c "$CONNS" -d "$DURATION" --latency "http://127.0.0.1:$port/")
    [ "$pid" != "-" ] && after=$(cpu_ticks "$pid")
    rps=$(awk '/^Requests\/sec:/ {print $2}' <<<"$out")
    requests=$(awk '/requests in/ {print $1}' <<<"$out")
    p50=$(to_ms "$(awk '$1 == "50%" {print $2}' <<<"$out")")
    p99=$(to_ms "$(awk '$1 == "99%" {print $2}' <<<"$out")")
    if [ "$pid" != "-" ]; then
        cpu_us=$(awk -v t=$((after - before)) -v hz="$CLK_TCK" -v n="$requests" 'BEGIN {printf "%.2f", t / hz * 1e6 / n}')
    else
        cpu_us="-"
    fi
    if grep -q "Non-2xx\|Socket errors" <<<"$out"; then
        echo "warning: $label: $(grep 'Non-2xx\|Socket errors' <<<"$out")" >&2
    fi
    printf '%s\t%s\t%s\t%s\t%s\n' "$label" "$rps" "$p50" "$p99" "$cpu_us" >>"$RESULTS"
    printf '  %-22s %10s req/s  p50 %6s ms  p99 %6s ms  cpu %s us/req\n' "$label" "$rps" "$p50" "$p99" "$cpu_us" >&2
}

echo "Warming up..." >&2
for port in $BACKEND_PORT $NGINX_PORT $HAPROXY_PORT $GATEWAY_PORT $EPOLL_PORT $HAPROXY_TCP_PORT $GATEWAY_TCP_PORT $EPOLL_TCP_PORT; do
    wrk -t "$THREADS" -c "$CONNS" -d 2s "http://127.0.0.1:$port/" >/dev/null
done

for round in $(seq 1 "$ROUNDS"); do
    echo "Round $round of $ROUNDS (L7)" >&2
    run "backend (direct)" "$BACKEND_PORT" -
    run "nginx" "$NGINX_PORT" "$NGINX_PID"
    run "haproxy" "$HAPROXY_PORT" "$HAPROXY_PID"
    run "gateway" "$GATEWAY_PORT" "$GATEWAY_PID"
    run "gateway (epoll)" "$EPOLL_PORT" "$EPOLL_PID"
done
for round in $(seq 1 "$ROUNDS"); do
    echo "Round $round of $ROUNDS (L4)" >&2
    run "haproxy mode tcp" "$HAPROXY_TCP_PORT" "$HAPROXY_PID"
    run "gateway tcp" "$GATEWAY_TCP_PORT" "$GATEWAY_PID"
    run "gateway tcp (epoll)" "$EPOLL_TCP_PORT" "$EPOLL_PID"
done

# --- report --------------------------------------------------------------------------------
# The median of the rounds for each column, per target.
summary() {
    awk -F'\t' '
        function median(list,   n, a, i, j, t) {
            n = split(list, a, " ")
            for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (a[j] + 0 < a[i] + 0) { t = a[i]; a[i] = a[j]; a[j] = t }
            return (n % 2) ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
        }
        { if (!($1 in seen)) { seen[$1] = 1; order[++k] = $1 }
          rps[$1] = rps[$1] " " $2; p50[$1] = p50[$1] " " $3; p99[$1] = p99[$1] " " $4; cpu[$1] = cpu[$1] " " $5 }
        END {
            print "| target | requests/s | p50 (ms) | p99 (ms) | CPU per request (µs) |"
            print "|---|---:|---:|---:|---:|"
            for (i = 1; i <= k; i++) {
                t = order[i]
                c = (cpu[t] ~ /-/) ? "-" : sprintf("%.1f", median(cpu[t]))
                printf "| %s | %.0f | %.3f | %.3f | %s |\n", t, median(rps[t]), median(p50[t]), median(p99[t]), c
            }
        }' "$RESULTS"
}

echo
echo "Medians of $ROUNDS interleaved rounds; wrk -t $THREADS -c $CONNS -d $DURATION --latency, one worker per proxy."
echo "Machine: $(nproc) CPUs, $(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo); $(nginx -v 2>&1 | sed 's/.*: //'), HAProxy $(haproxy -v | awk 'NR == 1 {print $3}')."
echo
summary | tee "$WORK/table.md"

# The targets: CPU per request <= 0.85x the better proxy, requests/s >= both, p99 <= 1.2x nginx.
awk -F'|' '
    NR > 2 { gsub(/ /, "", $2); rps[$2] = $3; p99[$2] = $5; cpu[$2] = $6 }
    END {
        best = (cpu["nginx"] < cpu["haproxy"]) ? cpu["nginx"] : cpu["haproxy"]
        printf "\nTargets: CPU/request %.2fx the better of nginx and HAProxy (target <= 0.85): %s\n", cpu["gateway"] / best, (cpu["gateway"] <= 0.85 * best) ? "met" : "NOT met"
        printf "         requests/s vs nginx %.2fx, vs HAProxy %.2fx (target >= 1 for both): %s\n", rps["gateway"] / rps["nginx"], rps["gateway"] / rps["haproxy"], (rps["gateway"] >= rps["nginx"] && rps["gateway"] >= rps["haproxy"]) ? "met" : "NOT met"
        printf "         p99 %.2fx nginx (target <= 1.2): %s\n", p99["gateway"] / p99["nginx"], (p99["gateway"] <= 1.2 * p99["nginx"]) ? "met" : "NOT met"
        printf "         L4: requests/s %.2fx HAProxy mode tcp, CPU/request %.2fx\n", rps["gatewaytcp"] / rps["haproxymodetcp"], cpu["gatewaytcp"] / cpu["haproxymodetcp"]
        printf "         io_uring against epoll, CPU/request: L7 %.2fx, L4 %.2fx\n", cpu["gateway"] / cpu["gateway(epoll)"], cpu["gatewaytcp"] / cpu["gatewaytcp(epoll)"]
    }' "$WORK/table.md"
