#!/usr/bin/env bash
# `make test-browser`: scaleout's end-to-end test in a real browser (tests/browser/e2e.mjs).
#
# Starts a private stack on free loopback ports from debug binaries: the gateway in front of
# one web and one mobile replica, the outbox relay and both workers, with their own database,
# Redis key prefix and RabbitMQ vhost. Then runs the test with Debian's Chromium driven by
# playwright-core, and always removes everything it made: the processes, the database, the
# Redis keys and the vhost (with its exchange and queues).
#
#   PG_SERVER   postgres://postgres@127.0.0.1:5432   where the test database is created
#   REDIS_URL   redis://127.0.0.1:6379
#   AMQP_BASE   amqp://guest:guest@127.0.0.1:5672    the vhost is appended
#   CHROMIUM    /usr/bin/chromium                    installed with apt-get when missing (as root)
#   COMMENT_DEADLINE_SECS  120                       how long the workers may take
#   SKIP_BUILD  unset; 1 runs the binaries already in target/debug (when iterating on the test)
# Screenshots of every page land in loadtest/results/browser/.
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD

server=${PG_SERVER:-postgres://postgres@127.0.0.1:5432}
redis_url=${REDIS_URL:-redis://127.0.0.1:6379}
amqp_base=${AMQP_BASE:-amqp://guest:guest@127.0.0.1:5672}
export CHROMIUM=${CHROMIUM:-/usr/bin/chromium}
name=scaleout_browser_$(date +%s)_$RANDOM
run_dir=$(mktemp -d)
pids=()
names=()
made_db=false
made_vhost=false

say() { echo "test-browser: $*"; }
fail() {
  echo "test-browser: $*" >&2
  exit 1
}

cleanup() {
  local status=$?
  trap - EXIT INT TERM
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  # Each process gets 15 s to shut down gracefully, then it is killed.
  local deadline=$((SECONDS + 15))
  for pid in "${pids[@]}"; do
    while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.2; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  if ((status != 0)); then
    for n in "${names[@]}"; do
      echo "---- last lines of $n's log" >&2
      tail -n 25 "$run_dir/$n.log" >&2 || true
    done
  fi
  if $made_vhost; then
    rabbitmqctl -q delete_vhost "$name" >/dev/null 2>&1 || echo "test-browser: could not delete vhost $name" >&2
  fi
  if $made_db; then
    psql "$server/postgres" -qX -c "DROP DATABASE IF EXISTS \"$name\" WITH (FORCE)" >/dev/null 2>&1 ||
      echo "test-browser: could not drop database $name" >&2
  fi
  redis-cli -u "$redis_url" --scan --pattern "$name:*" 2>/dev/null |
    xargs -r redis-cli -u "$redis_url" del >/dev/null 2>&1 || true
  rm -rf "$run_dir"
  if ((status == 0)); then say "passed; everything it started is stopped and removed"; fi
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# The browser: Debian's package, never a download.
if [[ ! -x $CHROMIUM ]]; then
  if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
    say "installing Debian's chromium"
    apt-get update -q >"$run_dir/apt.log" 2>&1 &&
      DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >>"$run_dir/apt.log" 2>&1 ||
      { tail -n 20 "$run_dir/apt.log" >&2; fail "apt-get install chromium failed"; }
  else
    fail "$CHROMIUM is missing; install it with: sudo apt-get update && sudo apt-get install -y chromium"
  fi
fi
# The driver: playwright-core, pinned by tests/browser/package-lock.json.
command -v node >/dev/null || fail "node is missing (Debian: apt-get install nodejs npm)"
wanted=$(node -p "require('./tests/browser/package-lock.json').packages['node_modules/playwright-core'].version")
installed=$(node -p "try { require('./tests/browser/node_modules/playwright-core/package.json').version } catch { '' }")
if [[ $wanted != "$installed" ]]; then
  say "installing playwright-core $wanted (npm ci)"
  (cd tests/browser && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund --loglevel=error) ||
    fail "npm ci failed in tests/browser"
fi

infra/scripts/services.sh check
# Debug binaries share their artifacts with the test build.
if [[ ${SKIP_BUILD:-} != 1 ]]; then
  say "building the binaries (debug)"
  cargo build --bins
fi
bin=$root/target/debug

# A vhost of our own holds this run's exchange and queues; deleting it removes them all.
rabbitmqctl -q add_vhost "$name" >/dev/null || fail "rabbitmqctl add_vhost failed (is RabbitMQ running?)"
made_vhost=true
rabbitmqctl -q set_permissions -p "$name" guest '.*' '.*' '.*' >/dev/null
made_db=true
say "creating and migrating database $name"
DATABASE_URL=$server/$name "$bin/web" migrate >"$run_dir/migrate.log" 2>&1 ||
  { cat "$run_dir/migrate.log" >&2; fail "web migrate failed"; }

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
gateway_port=$(free_port)
admin_port=$(free_port)
web_port=$(free_port)
mobile_port=$(free_port)
relay_port=$(free_port)
spam_port=$(free_port)
sentiment_port=$(free_port)

cat >"$run_dir/gateway.toml" <<TOML
# Generated by tests/browser/run.sh: the gateway of one browser test run.
listen = "127.0.0.1:$gateway_port"
admin_listen = "127.0.0.1:$admin_port"
trusted_proxies = []

[[upstreams]]
name = "web"
backends = [{ addr = "127.0.0.1:$web_port" }]
health = { path = "/healthz", interval_ms = 500, timeout_ms = 2000, healthy_threshold = 1, unhealthy_threshold = 5 }

[[upstreams]]
name = "mobile"
backends = [{ addr = "127.0.0.1:$mobile_port" }]
health = { path = "/healthz", interval_ms = 500, timeout_ms = 2000, healthy_threshold = 1, unhealthy_threshold = 5 }

[[routes]]
path_prefix = "/api/"
upstream = "mobile"

[[routes]]
default = true
upstream = "web"
TOML

# start NAME COMMAND...: runs COMMAND in the background with its output in NAME's log.
start() {
  local n=$1
  shift
  "$@" >"$run_dir/$n.log" 2>&1 &
  pids+=($!)
  names+=("$n")
}

common=(
  env
  "DATABASE_URL=$server/$name"
  "DATABASE_REPLICA_URLS="
  "REDIS_URL=$redis_url"
  "REDIS_KEY_PREFIX=$name:"
  "AMQP_URL=$amqp_base/$name"
  "RUN_MIGRATIONS=false"
  "TRUSTED_PROXIES=127.0.0.1"
  "RUST_LOG=${RUST_LOG:-info}"
)
start web "${common[@]}" BIND=127.0.0.1:$web_port "$bin/web"
start mobile "${common[@]}" BIND=127.0.0.1:$mobile_port "$bin/mobile"
start relay "${common[@]}" BIND=127.0.0.1:$relay_port "$bin/relay"
start spam-worker "${common[@]}" BIND=127.0.0.1:$spam_port "$bin/spam-worker"
start sentiment-worker "${common[@]}" BIND=127.0.0.1:$sentiment_port "$bin/sentiment-worker"
start gateway "$bin/gateway" --config "$run_dir/gateway.toml"

# wait_for NAME URL: waits (at most 90 s: debug builds on a busy machine) for a 2xx answer.
wait_for() {
  local n=$1 url=$2 deadline=$((SECONDS + 90))
  until curl -fsS -o /dev/null --max-time 2 "$url" 2>/dev/null; do
    for i in "${!names[@]}"; do
      kill -0 "${pids[$i]}" 2>/dev/null || fail "${names[$i]} exited while starting"
    done
    ((SECONDS < deadline)) || fail "$n is not ready at $url after 90 s"
    sleep 0.5
  done
}
say "waiting for the stack"
wait_for web "http://127.0.0.1:$web_port/readyz"
wait_for mobile "http://127.0.0.1:$mobile_port/readyz"
wait_for relay "http://127.0.0.1:$relay_port/readyz"
wait_for spam-worker "http://127.0.0.1:$spam_port/readyz"
wait_for sentiment-worker "http://127.0.0.1:$sentiment_port/readyz"
wait_for gateway "http://127.0.0.1:$admin_port/healthz"
# Through the gateway: its health checks have admitted both backends.
wait_for "the gateway's web route" "http://127.0.0.1:$gateway_port/"
wait_for "the gateway's API route" "http://127.0.0.1:$gateway_port/api/v1/posts"

say "stack ready at http://127.0.0.1:$gateway_port/; running the browser test"
started=$SECONDS
BASE_URL=http://127.0.0.1:$gateway_port \
  SCREENSHOTS=$root/loadtest/results/browser \
  node --test --test-reporter=spec tests/browser/e2e.mjs
say "the browser test took $((SECONDS - started)) s; screenshots in loadtest/results/browser/"
