#!/bin/sh
# The streaming replica of docker-compose.yml: on first start, copy the primary with
# pg_basebackup (-R writes the standby settings, -C -S creates its replication slot), then run
# Postgres as a hot standby.
set -e
if [ ! -s "$PGDATA/PG_VERSION" ]; then
  until pg_isready -h postgres -U postgres; do sleep 1; done
  pg_basebackup -h postgres -U postgres -D "$PGDATA" -R -X stream -C -S replica1
  chmod 0700 "$PGDATA"
fi
exec postgres
