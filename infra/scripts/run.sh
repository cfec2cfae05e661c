#!/usr/bin/env bash
# `make run`: the whole scaleout topology on this machine, natively.
#
# Builds release binaries, checks the local Postgres, Redis and RabbitMQ, creates and migrates
# the database, starts the local streaming replica, then runs the gateway in front of two web
# and two mobile replicas, the outbox relay, a spam worker and a sentiment worker. Each line of
# output is prefixed with the process's name. Ctrl-C (or SIGTERM) stops them all gracefully.
set -euo pipefail
cd "$(dirname "$0")/../.."

bin=target/release
database_url=${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/scaleout}
replica_url=${DATABASE_REPLICA_URLS:-postgres://postgres@127.0.0.1:5433/scaleout}

infra/scripts/services.sh check
echo "run: building release binaries"
cargo build --release --bins
echo "run: creating and migrating the database"
DATABASE_URL=$database_url "$bin/web" migrate
infra/scripts/replica.sh up

pids=()
names=()

# start NAME COMMAND... : runs COMMAND in the background, its output prefixed with [NAME].
start() {
  local name=$1
  shift
  "$@" > >(sed -u "s/^/[$name] /") 2>&1 &
  pids+=($!)
  names+=("$name")
}

stop() {
  trap - INT TERM
  echo "run: stopping"
  kill -TERM "${pids[@]}" 2>/dev/null || true
  wait "${pids[@]}" 2>/dev/null || true
  echo "run: all stopped"
  exit 0
}
trap stop INT TERM

common=(
  env
  "DATABASE_URL=$database_url"
  "DATABASE_REPLICA_URLS=$replica_url"
  "RUN_MIGRATIONS=false"
  "TRUSTED_PROXIES=127.0.0.1"
)
start web-1 "${common[@]}" BIND=127.0.0.1:8101 "$bin/web"
start web-2 "${common[@]}" BIND=127.0.0.1:8102 "$bin/web"
start mobile-1 "${common[@]}" BIND=127.0.0.1:8201 "$bin/mobile"
start mobile-2 "${common[@]}" BIND=127.0.0.1:8202 "$bin/mobile"
start relay "${common[@]}" BIND=127.0.0.1:9303 "$bin/relay"
start spam "${common[@]}" BIND=127.0.0.1:9301 "$bin/spam-worker"
start sentiment "${common[@]}" BIND=127.0.0.1:9302 "$bin/sentiment-worker"
start gateway "$bin/gateway" --config infra/gateway/local.toml

ready() { curl -fsS -o /dev/null --max-time 1 "$1"; }
for check in \
  web-1=http://127.0.0.1:8101/readyz web-2=http://127.0.0.1:8102/readyz \
  mobile-1=http://127.0.0.1:8201/readyz mobile-2=http://127.0.0.1:8202/readyz \
  relay=http://127.0.0.1:9303/readyz spam=http://127.0.0.1:9301/readyz \
  sentiment=http://127.0.0.1:9302/readyz gateway=http://127.0.0.1:9080/healthz; do
  name=${check%%=*}
  url=${check#*=}
  for _ in $(seq 1 60); do
    ready "$url" && break
    sleep 0.5
  done
  if ! ready "$url"; then
    echo "run: $name is not ready at $url; see its log lines above" >&2
    stop
  fi
done

cat <<MSG
run: scaleout is up
  site         http://127.0.0.1:8080/
  mobile API   http://127.0.0.1:8080/api/v1/posts
  gateway admin http://127.0.0.1:9080/admin/upstreams   metrics http://127.0.0.1:9080/metrics
  web          http://127.0.0.1:8101/  http://127.0.0.1:8102/
  mobile       http://127.0.0.1:8201/  http://127.0.0.1:8202/
  workers      spam :9301  sentiment :9302  relay :9303 (each serves /healthz, /readyz, /metrics)
run: Ctrl-C stops everything
MSG
# The topology is one unit: when any process exits, say which and stop the rest.
wait -n "${pids[@]}" || true
for i in "${!pids[@]}"; do
  kill -0 "${pids[$i]}" 2>/dev/null || echo "run: ${names[$i]} exited" >&2
done
stop
