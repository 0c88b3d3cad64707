#!/usr/bin/env bash
# Look-up throughput over HTTP on loopback, with the ceiling of the same server answering a
# constant (/healthz) measured in the same run. Needs wrk, and ../shared/geo for geo data.
# usage: [BIN=path/to/palisade] [NO_BUILD=1] bash bench/http.sh [seconds]
# NO_BUILD=1 skips the build, so that binaries built earlier are compared against one load
# generator while the sources change.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-15}
data=$(mktemp -d)
trap 'kill $server 2>/dev/null || true; rm -rf "$data"' EXIT
[ -n "${NO_BUILD:-}" ] || cargo build --release --quiet --bin palisade --example load
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
# Server CPU time (user + system) per answered request: on shared cores the rate moves with
# whatever else runs, while the work each request costs the server does not.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$server/stat"; }
run() {
  local before after out requests
  before=$(cpu_ticks)
  out=$(wrk -t2 -c64 -d"${secs}s" --latency "$@")
  after=$(cpu_ticks)
  requests=$(echo "$out" | awk '/requests in/ {print $1}')
  echo "$out" | grep -E "Requests/sec|99%|50%|Non-2xx"
  awk -v t=$((after - before)) -v hz="$(getconf CLK_TCK)" -v n="$requests" \
    'BEGIN {printf "server CPU per request: %.2f us\n", t / hz * 1e6 / n}'
}
echo "== ceiling: GET /healthz"
run http://127.0.0.1:18099/healthz
echo "== GET /v1/check?ip=<random>"
run -s bench/check.lua http://127.0.0.1:18099
echo "== GET /v1/forward-auth (X-Forwarded-For: <random>)"
run -s bench/forward-auth.lua http://127.0.0.1:18099
