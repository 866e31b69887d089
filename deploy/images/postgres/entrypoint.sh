#!/bin/sh
# First start: initdb with the user/password/database from the environment. Then run
# the server in the foreground on PGPORT (default 5432), all addresses.
set -eu
: "${POSTGRES_USER:=volsnap}" "${POSTGRES_DB:=volsnap}" "${PGPORT:=5432}"
bin=/usr/lib/postgresql/15/bin
if [ ! -s "$PGDATA/PG_VERSION" ]; then
  pw=$(mktemp)
  printf '%s\n' "${POSTGRES_PASSWORD:?set POSTGRES_PASSWORD}" >"$pw"
  "$bin/initdb" -D "$PGDATA" -U "$POSTGRES_USER" --pwfile="$pw" -A scram-sha-256 >/dev/null
  rm -f "$pw"
  echo "host all all 0.0.0.0/0 scram-sha-256" >>"$PGDATA/pg_hba.conf"
  "$bin/pg_ctl" -D "$PGDATA" -o "-p $PGPORT -c listen_addresses=127.0.0.1" -w start >/dev/null
  PGPASSWORD=$POSTGRES_PASSWORD "$bin/psql" -h 127.0.0.1 -p "$PGPORT" -U "$POSTGRES_USER" -d postgres \
    -v ON_ERROR_STOP=1 -c "CREATE DATABASE \"$POSTGRES_DB\"" >/dev/null 2>&1 || true
  "$bin/pg_ctl" -D "$PGDATA" -w stop >/dev/null
fi
exec "$bin/postgres" -D "$PGDATA" -p "$PGPORT" -c listen_addresses="${PG_LISTEN:-*}" \
  -c unix_socket_directories=/run/postgresql
