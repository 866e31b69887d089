#!/usr/bin/env bash
# Property-based test of the running API from its own OpenAPI description.
#
# Builds volsnap-api, creates a scratch database, migrates it, makes an admin token,
# seeds one workload with a ready snapshot (so generated requests also reach real
# rows), starts the server on a free loopback port and runs schemathesis against
# /api/openapi.json. Fails on any 5xx (and on answers that break the documented
# status codes, content types or response schemas).
#
# Needs: DATABASE_URL (a server the script may create databases on), python3 with
# `schemathesis` (installed with pip if missing). Usage: api/tests/schemathesis.sh [N]
# where N is the number of examples per operation (default 100).
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
examples="${1:-100}"
: "${DATABASE_URL:?DATABASE_URL must point at a PostgreSQL server}"

command -v schemathesis >/dev/null 2>&1 || python3 -m pip install --quiet 'schemathesis>=4,<5'

cd "$root"
cargo build --quiet -p volsnap-api
bin="${CARGO_TARGET_DIR:-$root/target}/debug/volsnap-api"

db="volsnap_schemathesis_$$"
base="${DATABASE_URL%/*}"
psql -q "$DATABASE_URL" -c "CREATE DATABASE $db" >/dev/null
export DATABASE_URL="$base/$db"
work=$(mktemp -d)
server_pid=
cleanup() {
  [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null && wait "$server_pid" 2>/dev/null || true
  psql -q "$base/postgres" -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

"$bin" migrate 2>/dev/null
token=$("$bin" token create --name schemathesis --role admin 2>/dev/null | tail -n1)

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
RUST_LOG=warn "$bin" serve --addr "127.0.0.1:$port" >"$work/server.log" 2>&1 &
server_pid=$!
url="http://127.0.0.1:$port"
for _ in $(seq 100); do curl -sf "$url/healthz" >/dev/null && break; sleep 0.1; done

# Seed: a workload and a ready snapshot of it.
wid=$(curl -sf -H "Authorization: Bearer $token" -H 'content-type: application/json' \
  -d '{"name":"seed","project":"p","stage":"s","node":"node-a","source_kind":"image","image":"img:1","volumes":[{"scope":"stage","source":"data","target":"/data"}]}' \
  "$url/api/workloads" | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
psql -q "$DATABASE_URL" -c "INSERT INTO snapshots (id, workload_id, node, kind, state, archive_path, size_bytes, sha256, manifest)
  VALUES (gen_random_uuid(), '$wid', 'node-a', 'manual', 'ready', 'seed.tar.gz', 1, repeat('a', 64), '{}')" >/dev/null

status=0
# Run from the scratch dir: schemathesis keeps state in ./.schemathesis.
(cd "$work" && schemathesis run "$url/api/openapi.json" \
  --header "Authorization: Bearer $token" \
  --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance \
  --max-examples "$examples" \
  --seed "${SCHEMATHESIS_SEED:-20261126}" \
  --request-timeout 30 \
  --generation-database none \
  --no-color) || status=$?

if grep -q "handler panicked" "$work/server.log"; then
  echo "the server panicked:" >&2; grep -A3 "handler panicked" "$work/server.log" >&2; status=1
fi
exit $status
