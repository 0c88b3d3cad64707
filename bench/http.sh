#!/usr/bin/env bash
# Look-up throughput over HTTP on loopback, with the ceiling of the same server answering a
# constant (/healthz) measured in the same run. Needs wrk, and ../shared/geo for geo data.
# usage: [BIN=path/to/palisade] bash bench/http.sh [seconds]
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-15}
data=$(mktemp -d)
trap 'kill $server 2>/dev/null || true; rm -rf "$data"' EXIT
cargo build --release --quiet --bin palisade --example load
PALISADE_GEO_ASN=../shared/geo/asn.mmdb PALISADE_GEO_COUNTRY=../shared/geo/country.mmdb \
PALISADE_TRUSTED_PROXIES=127.0.0.1/32 \
  "${BIN:-./target/release/palisade}" serve --data-dir "$data" --listen 127.0.0.1:18099 >"$data/out" 2>"$data/err" &
server=$!
until grep -q pal_ "$data/out" 2>/dev/null; do sleep 0.2; done
export PALISADE_KEY=$(grep -oE 'pal_[A-Za-z0-9_-]+' "$data/out")
# 200,000 scattered /32 blocks, a country and an ASN, so look-ups walk real tables.
./target/release/examples/load ingest --url http://127.0.0.1:18099 --clients 4 --batch 1000 --seconds 4 >/dev/null
curl -s -o /dev/null -X POST http://127.0.0.1:18099/v1/signal -H "Authorization: Bearer $PALISADE_KEY" \
  -d '[{"type":"access_rules","action":"block","country":"CN"},{"type":"access_rules","action":"block","asn":"AS13335"}]'
echo "== ceiling: GET /healthz"
wrk -t2 -c64 -d"${secs}s" --latency http://127.0.0.1:18099/healthz | grep -E "Requests/sec|99%|50%"
echo "== GET /v1/check?ip=<random>"
wrk -t2 -c64 -d"${secs}s" --latency -s bench/check.lua http://127.0.0.1:18099 | grep -E "Requests/sec|99%|50%|Non-2xx"
echo "== GET /v1/forward-auth (X-Forwarded-For: <random>)"
wrk -t2 -c64 -d"${secs}s" --latency -s bench/forward-auth.lua http://127.0.0.1:18099 | grep -E "Requests/sec|99%|50%"
