#!/bin/sh
# Lets the streaming replica of docker-compose.yml connect for replication (compose network
# only; the native setup has its own rule, added by infra/scripts/replica.sh).
set -e
echo "host replication all all trust" >> "$PGDATA/pg_hba.conf"
