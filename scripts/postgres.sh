#!/usr/bin/env bash
# A local PostgreSQL server for the storage tests and CI (needs root and Debian's packages).
#
#   bash scripts/postgres.sh start   # install postgresql if missing, start the cluster,
#                                    # create role/database evomerge; prints the URL
#   bash scripts/postgres.sh stop
#
# The server listens on 127.0.0.1:5432 only; the role has a password (scram over TCP, as a
# real deployment would), and the tests create and drop their own databases.
set -euo pipefail
URL=postgresql://evomerge:evomerge@127.0.0.1:5432/evomerge

start() {
    if ! command -v pg_lsclusters >/dev/null; then
        apt-get update -q >/dev/null
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql >/dev/null
    fi
    local ver
    ver=$(pg_lsclusters -h | awk 'NR==1 {print $1}')
    if [ -z "$ver" ]; then
        ver=$(ls /usr/lib/postgresql | sort -n | tail -1)
        pg_createcluster "$ver" main >/dev/null
    fi
    pg_ctlcluster "$ver" main start >/dev/null 2>&1 || true  # "already running" is fine
    for _ in $(seq 50); do
        su postgres -c "psql -qAtc 'select 1'" >/dev/null 2>&1 && break
        sleep 0.2
    done
    su postgres -c "psql -qAt" >/dev/null <<'SQL'
DO $$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'evomerge') THEN
    CREATE ROLE evomerge LOGIN CREATEDB PASSWORD 'evomerge';
  END IF;
END $$;
SQL
    su postgres -c "psql -qAtc \"select 1 from pg_database where datname='evomerge'\"" | grep -q 1 \
        || su postgres -c "createdb -O evomerge evomerge"
    echo "$URL"
}

stop() {
    local ver
    ver=$(pg_lsclusters -h 2>/dev/null | awk 'NR==1 {print $1}')
    [ -n "$ver" ] && pg_ctlcluster "$ver" main stop || true
}

case "${1:-start}" in
    start) start ;;
    stop) stop ;;
    *) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
