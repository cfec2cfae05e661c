# Sourced by pipeline-bench.sh and pipeline-drill.sh: starts a private comment pipeline on
# loopback (the mobile API, the relay and both workers, built with PROFILE=release by default)
# against a fresh database and a fresh RabbitMQ vhost, registers a user, writes a post, and
# removes everything on exit. Exports BASE_URL, TOKEN, POST_ID, DATABASE_URL, RUN_DIR.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

profile=${PROFILE:-release}
name=pipeline_$(date +%s)_$$
server=${PG_SERVER:-postgres://postgres@127.0.0.1:5432}
export DATABASE_URL="$server/$name"
export AMQP_URL="amqp://guest:guest@127.0.0.1:5672/$name"
export REDIS_URL=${REDIS_URL:-redis://127.0.0.1:6379}
export REDIS_KEY_PREFIX="$name:"
export RUST_LOG=${RUST_LOG:-warn}
RUN_DIR=$(mktemp -d)
export RUN_DIR
pids=()

cleanup() {
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  rabbitmqctl -q delete_vhost "$name" >/dev/null 2>&1 || true
  psql "$server/postgres" -q -c "DROP DATABASE IF EXISTS \"$name\" WITH (FORCE)" >/dev/null 2>&1 || true
  redis-cli --scan --pattern "$name:*" 2>/dev/null | xargs -r redis-cli del >/dev/null 2>&1 || true
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

flag=()
[[ $profile == release ]] && flag=(--release)
echo "pipeline: building ($profile)" >&2
cargo build -q "${flag[@]}" -p mobile -p relay -p workers --bin mobile --bin relay \
  --bin spam-worker --bin sentiment-worker
bin=target/$profile

rabbitmqctl -q add_vhost "$name" >/dev/null
rabbitmqctl -q set_permissions -p "$name" guest '.*' '.*' '.*' >/dev/null
psql "$server/postgres" -q -c "CREATE DATABASE \"$name\"" >/dev/null

api_port=$(free_port)
BIND=127.0.0.1:$api_port RUN_MIGRATIONS=true DB_MAX_CONNECTIONS=${API_DB_CONNECTIONS:-20} \
  REDIS_POOL_SIZE=${API_REDIS_POOL:-32} REDIS_TIMEOUT_MS=${API_REDIS_TIMEOUT_MS:-1000} "$bin/mobile" >"$RUN_DIR/mobile.log" 2>&1 &
pids+=($!)
export BASE_URL=http://127.0.0.1:$api_port
for _ in $(seq 100); do curl -fsS -o /dev/null "$BASE_URL/healthz" 2>/dev/null && break; sleep 0.1; done
# The API migrated the database; the others need not.
BIND=127.0.0.1:$(free_port) RUN_MIGRATIONS=false "$bin/relay" >"$RUN_DIR/relay.log" 2>&1 &
pids+=($!)
BIND=127.0.0.1:$(free_port) RUN_MIGRATIONS=false RUST_LOG=info "$bin/spam-worker" >"$RUN_DIR/spam.log" 2>&1 &
pids+=($!)
BIND=127.0.0.1:$(free_port) RUN_MIGRATIONS=false RUST_LOG=info "$bin/sentiment-worker" >"$RUN_DIR/sentiment.log" 2>&1 &
pids+=($!)

user=bench$$
json='content-type: application/json'
curl -fsS -o /dev/null -H "$json" -d "{\"username\":\"$user\",\"password\":\"bench-password\"}" "$BASE_URL/api/v1/auth/register"
TOKEN=$(curl -fsS -H "$json" -d "{\"username\":\"$user\",\"password\":\"bench-password\"}" "$BASE_URL/api/v1/auth/login" |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])')
export TOKEN
POST_ID=$(curl -fsS -H "$json" -H "authorization: Bearer $TOKEN" -d '{"title":"Pipeline","body":"Comments go here."}' \
  "$BASE_URL/api/v1/posts" | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
export POST_ID

sql() { psql "$DATABASE_URL" -qtAX -c "$1"; }

# Waits (at most $1 seconds) until every accepted comment went through both workers.
wait_drained() {
  local deadline=$((SECONDS + $1))
  while ((SECONDS < deadline)); do
    local left
    left=$(sql "SELECT (SELECT count(*) FROM outbox WHERE published_at IS NULL)
                     + (SELECT count(*) FROM comments WHERE status = 'pending' OR sentiment_label IS NULL)")
    [[ $left == 0 ]] && return 0
    sleep 0.5
  done
  return 1
}
