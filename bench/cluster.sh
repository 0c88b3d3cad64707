#!/usr/bin/env bash
# Two nodes on one PostgreSQL database: how long a write acknowledged by node A takes to be
# enforced by node B, idle and under ingest load on A; then the cold start of a node over
# 1,000,000 rules. DATABASE_URL defaults to the local test database; each run uses a fresh
# schema. usage: [DATABASE_URL=postgres://...] bash bench/cluster.sh [count]
set -euo pipefail
cd "$(dirname "$0")/.."
count=${1:-300}
url=${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/test}
export PALISADE_DATABASE__SCHEMA="palisade_bench_$(date +%s)_$RANDOM"
cargo build --release --quiet --bin palisade --example load
dir=$(mktemp -d)
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true; rm -rf "$dir"' EXIT
start() { # name port
  ./target/release/palisade serve --data-dir "$dir/$1" --listen "127.0.0.1:$2" --database-url "$url" \
    >"$dir/$1.out" 2>"$dir/$1.err" &
  pids+=($!)
  until grep -q "palisade listening" "$dir/$1.err" 2>/dev/null; do
    kill -0 "${pids[-1]}" 2>/dev/null || { cat "$dir/$1.err"; exit 1; }
    sleep 0.1
  done
}
start a 18111
export PALISADE_KEY=$(grep -oE 'pal_[A-Za-z0-9_-]+' "$dir/a.out")
start b 18112
echo "== idle"
./target/release/examples/load propagate --write http://127.0.0.1:18111 --read http://127.0.0.1:18112 --count "$count"
echo "== under ingest on A (4 clients x 1000-event batches)"
./target/release/examples/load ingest --url http://127.0.0.1:18111 --clients 4 --batch 1000 --seconds 20 >"$dir/ingest" &
ingest=$!
sleep 2
./target/release/examples/load propagate --write http://127.0.0.1:18111 --read http://127.0.0.1:18112 --count "$count"
wait $ingest
cat "$dir/ingest"
kill "${pids[@]}"; wait 2>/dev/null || true; pids=()

echo "== cold start over 1,000,000 rules"
schema=$PALISADE_DATABASE__SCHEMA
psql -q "$url" <<SQL
SET search_path = $schema;
INSERT INTO rules (tenant_id, action, kind, target, expires_at, source, tags, reports, created_at, updated_at)
SELECT 1, 'block', 'ip',
       ((i >> 24) + 11) || '.' || ((i >> 16) & 255) || '.' || ((i >> 8) & 255) || '.' || (i & 255) || '/32',
       NULL, 'signal', '[]', 0, 0, 0
FROM generate_series(1, 1000000) AS i
ON CONFLICT DO NOTHING;
UPDATE tenants SET rules = (SELECT count(*) FROM rules WHERE tenant_id = 1) WHERE id = 1;
SQL
started=$(date +%s.%N)
start c 18113
listening=$(date +%s.%N)
echo "cold start, process start to listening: $(echo "$listening - $started" | bc) s"
grep -oE "prefixes=[0-9]+" "$dir/c.err" | head -1
awk '/VmHWM/ {print "peak RSS", $2/1024, "MiB"}' /proc/"${pids[-1]}"/status
