#!/usr/bin/env bash
# Start (or reuse) a private PostgreSQL cluster for development and tests.
# Prints the DATABASE_URL on stdout. Data lives in .volsnap/pg (git-ignored).
# Usage: scripts/pg.sh [start|stop]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
dir="${VOLSNAP_PG_DIR:-$root/.volsnap/pg}"
port="${VOLSNAP_PG_PORT:-55432}"
bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1)
[ -x "$bin/initdb" ] || { echo "PostgreSQL server binaries not found under /usr/lib/postgresql" >&2; exit 1; }

# PostgreSQL refuses to run as root: run it as the 'postgres' system user then.
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }

case "${1:-start}" in
stop)
  [ -f "$dir/PG_VERSION" ] && as_pg "$bin/pg_ctl" -D "$dir" -m fast stop >/dev/null 2>&1 || true
  exit 0 ;;
start) ;;
*) echo "usage: $0 [start|stop]" >&2; exit 2 ;;
esac

mkdir -p "$dir"
if [ "$(id -u)" = 0 ]; then chown postgres: "$dir"; chmod 700 "$dir"; fi
if [ ! -f "$dir/PG_VERSION" ]; then
  as_pg "$bin/initdb" -D "$dir" -U volsnap --auth=trust -E UTF8 >"$dir.initdb.log" 2>&1 \
    || { cat "$dir.initdb.log" >&2; exit 1; }
fi
if ! as_pg "$bin/pg_ctl" -D "$dir" status >/dev/null 2>&1; then
  as_pg "$bin/pg_ctl" -D "$dir" -w -t 60 -l "$dir/server.log" \
    -o "-p $port -c listen_addresses=127.0.0.1 -k $dir -c max_connections=400 -c fsync=on -c shared_buffers=256MB" \
    start >/dev/null || { tail -20 "$dir/server.log" >&2; exit 1; }
fi
echo "postgres://volsnap@127.0.0.1:$port/postgres"
