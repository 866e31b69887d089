#!/usr/bin/env bash
# Benchmark of volsnap-api (not a test; numbers go in docs/api.md):
#  1. GET /api/jobs/{id} throughput with wrk on loopback, release build, token auth on;
#  2. wake-up latency of ?wait= (p50/p99) with examples/wait_latency.rs.
# Needs DATABASE_URL (a server the script may create a scratch database on) and wrk.
# Usage: api/bench/bench.sh [DURATION_SECS] [CONNECTIONS]
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
duration="${1:-15}"
conns="${2:-64}"
: "${DATABASE_URL:?DATABASE_URL must point at a PostgreSQL server}"
command -v wrk >/dev/null || { echo "wrk is needed (apt-get install wrk)" >&2; exit 1; }

cd "$root"
cargo build --quiet --release -p volsnap-api --bins --examples
target="${CARGO_TARGET_DIR:-$root/target}"
bin="$target/release/volsnap-api"

db="volsnap_bench_$$"
base="${DATABASE_URL%/*}"
psql -q "$DATABASE_URL" -c "CREATE DATABASE $db" >/dev/null
export DATABASE_URL="$base/$db"
server_pid=
cleanup() {
  [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null && wait "$server_pid" 2>/dev/null || true
  psql -q "$base/postgres" -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null 2>&1 || true
}
trap cleanup EXIT

"$bin" migrate 2>/dev/null
token=$("$bin" token create --name bench --role viewer 2>/dev/null | tail -n1)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
RUST_LOG=warn "$bin" serve --addr "127.0.0.1:$port" &
server_pid=$!
url="http://127.0.0.1:$port"
for _ in $(seq 100); do curl -sf "$url/healthz" >/dev/null && break; sleep 0.1; done

# One job to read.
job=$(psql -qtA "$DATABASE_URL" <<'SQL'
INSERT INTO workloads (id, name, project, stage, node, source_kind, image)
  VALUES ('00000000-0000-7000-8000-000000000001', 'bench', 'bench', 'bench', 'n', 'image', 'img:1');
INSERT INTO jobs (id, kind, workload_id, node)
  VALUES ('00000000-0000-7000-8000-000000000002', 'capture', '00000000-0000-7000-8000-000000000001', 'n')
  RETURNING id;
SQL
)
curl -sf -H "Authorization: Bearer $token" "$url/api/jobs/$job" >/dev/null

echo "== GET /api/jobs/{id}: wrk -t2 -c$conns -d${duration}s"
wrk -t2 -c"$conns" -d"${duration}s" --latency -H "Authorization: Bearer $token" "$url/api/jobs/$job"

echo "== ?wait= wake-up latency"
"$target/release/examples/wait_latency" "$url" "$token" 300
