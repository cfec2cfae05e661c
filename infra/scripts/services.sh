#!/usr/bin/env bash
# Checks, and with `start` starts, the local Postgres, Redis and RabbitMQ that scaleout runs on.
#
#   infra/scripts/services.sh check   # say which are down and how to start them; exit 1 if any
#   infra/scripts/services.sh start   # start those that are down (Debian packages), wait until ready
#
# Addresses come from the same variables the services read, with the same defaults.
set -euo pipefail

mode=${1:-check}

# host and port of a URL such as postgres://user@host:5432/db
host_port() {
  local rest=${1#*://}
  rest=${rest#*@}
  rest=${rest%%/*}
  echo "${rest%%:*} ${rest##*:}"
}

listening() { # host port
  (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null
}

read -r pg_host pg_port <<<"$(host_port "${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/scaleout}")"
read -r redis_host redis_port <<<"$(host_port "${REDIS_URL:-redis://127.0.0.1:6379}")"
read -r amqp_host amqp_port <<<"$(host_port "${AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}")"

start_postgres() { pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | sort -V | tail -n 1)" main start; }
start_redis() {
  mkdir -p /var/lib/redis /var/log/redis
  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port "$redis_port" --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/ci.log
}
start_rabbitmq() { rabbitmq-server -detached; }

declare -A how=(
  [postgres]="pg_ctlcluster --skip-systemctl-redirect \$(ls /etc/postgresql) main start"
  [redis]="redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save \"\" --appendonly no"
  [rabbitmq]="rabbitmq-server -detached"
)

down=()
listening "$pg_host" "$pg_port" || down+=(postgres)
listening "$redis_host" "$redis_port" || down+=(redis)
listening "$amqp_host" "$amqp_port" || down+=(rabbitmq)

if [[ ${#down[@]} -eq 0 ]]; then
  echo "services: postgres, redis and rabbitmq are up"
  exit 0
fi

if [[ $mode == check ]]; then
  for name in "${down[@]}"; do
    echo "services: $name is not reachable; start it with: ${how[$name]}" >&2
  done
  echo "services: or run 'infra/scripts/services.sh start' to start them all" >&2
  exit 1
fi

for name in "${down[@]}"; do
  echo "services: starting $name"
  "start_$name"
done

# RabbitMQ takes the longest: up to a minute on a busy 2-core machine.
for _ in $(seq 1 120); do
  still=()
  listening "$pg_host" "$pg_port" || still+=(postgres)
  listening "$redis_host" "$redis_port" || still+=(redis)
  listening "$amqp_host" "$amqp_port" || still+=(rabbitmq)
  if [[ ${#still[@]} -eq 0 ]]; then
    echo "services: postgres, redis and rabbitmq are up"
    exit 0
  fi
  sleep 1
done
echo "services: still down after 120 s: ${still[*]}" >&2
exit 1
