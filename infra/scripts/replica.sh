#!/usr/bin/env bash
# A local Postgres streaming replica of the primary on 127.0.0.1:5432, with Debian's tools.
#
#   infra/scripts/replica.sh up   [NAME] [PORT]   # create (if needed) and start; default replica1 5433
#   infra/scripts/replica.sh down [NAME]          # stop, delete, and drop its replication slot
#   infra/scripts/replica.sh status [NAME]        # print its replay LSN and lag
#
# The replica streams WAL through a physical replication slot named after it, so the primary
# keeps what the replica has not received yet. That is also why `down` drops the slot: an
# abandoned slot makes the primary keep WAL forever, until its disk is full.
#
# `up` adds a `host replication all 127.0.0.1/32 trust` line to the primary's pg_hba.conf when
# no replication rule exists (local development only) and reloads the primary.
set -euo pipefail

action=${1:-status}
name=${2:-replica1}
port=${3:-5433}
version=$(ls /etc/postgresql | sort -V | tail -n 1)
primary_port=${PRIMARY_PORT:-5432}
hba=/etc/postgresql/$version/main/pg_hba.conf
data=/var/lib/postgresql/$version/$name

as_postgres() { runuser -u postgres -- "$@"; }
primary_sql() { psql -h 127.0.0.1 -p "$primary_port" -U postgres -d postgres -Atqc "$1"; }
exists() { pg_lsclusters -h | awk '{print $2}' | grep -qx "$name"; }
online() { pg_lsclusters -h | awk -v n="$name" '$2 == n {print $4}' | grep -q '^online'; }

case $action in
up)
  if ! grep -Eq '^[[:space:]]*host[[:space:]]+replication' "$hba"; then
    echo "replica: allowing local replication connections in $hba"
    echo "host replication all 127.0.0.1/32 trust" >>"$hba"
    pg_ctlcluster --skip-systemctl-redirect "$version" main reload
  fi
  if exists && [[ ! -f $data/standby.signal ]]; then
    # Left half-made by an interrupted run: start over.
    pg_dropcluster --stop "$version" "$name"
  fi
  if ! exists; then
    echo "replica: creating $name on port $port"
    pg_createcluster "$version" "$name" --port "$port" >/dev/null
    rm -rf "${data:?}"/*
    # -R writes standby.signal and primary_conninfo; -C -S creates the slot it streams from.
    primary_sql "SELECT 1 FROM pg_replication_slots WHERE slot_name = '$name'" | grep -q 1 &&
      primary_sql "SELECT pg_drop_replication_slot('$name')" >/dev/null
    as_postgres pg_basebackup -h 127.0.0.1 -p "$primary_port" -U postgres -D "$data" \
      -R -X stream -C -S "$name"
  fi
  # The replica accepts the connections the primary accepts (pg_createcluster's default asks
  # for passwords the local setup does not have).
  cp "$hba" "/etc/postgresql/$version/$name/pg_hba.conf"
  if online; then
    pg_ctlcluster --skip-systemctl-redirect "$version" "$name" reload
  else
    pg_ctlcluster --skip-systemctl-redirect "$version" "$name" start
  fi
  for _ in $(seq 1 60); do
    if psql -h 127.0.0.1 -p "$port" -U postgres -d postgres -Atqc "SELECT pg_is_in_recovery()" 2>/dev/null | grep -qx t; then
      echo "replica: $name is streaming on 127.0.0.1:$port"
      exit 0
    fi
    sleep 0.5
  done
  echo "replica: $name did not come up; see /var/log/postgresql/postgresql-$version-$name.log" >&2
  exit 1
  ;;
down)
  if exists; then
    pg_ctlcluster --skip-systemctl-redirect "$version" "$name" stop -m fast 2>/dev/null || true
    pg_dropcluster "$version" "$name"
  fi
  if primary_sql "SELECT 1 FROM pg_replication_slots WHERE slot_name = '$name'" | grep -q 1; then
    primary_sql "SELECT pg_drop_replication_slot('$name')" >/dev/null
  fi
  echo "replica: $name removed"
  ;;
status)
  primary_sql "SELECT application_name, state, replay_lsn, replay_lag FROM pg_stat_replication"
  ;;
*)
  echo "usage: $0 up|down|status [NAME] [PORT]" >&2
  exit 64
  ;;
esac
