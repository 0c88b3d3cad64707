#!/usr/bin/env bash
# Instructions the server executes per answered request, and per committed event of 1000-event
# signal batches (new /32 blocks, one client), counted by callgrind: unlike requests/s on shared
# cores, the count repeats run after run, so costs of a few hundred instructions per request (a
# counter, a header) or per event can be compared between binaries. Threads run one at a time
# under valgrind, so cache-line contention between cores does not show here; bench/http.sh
# shows it, within its noise. Needs valgrind and wrk, and ../shared/geo for geo data.
# usage: [BIN=path/to/palisade] [PATTERN=sequential|spread] bash bench/instructions.sh [seconds]
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-15}
bin=${BIN:-./target/release/palisade}
data=$(mktemp -d)
trap 'kill $server 2>/dev/null || true; sleep 1; rm -rf "$data"' EXIT
[ -n "${NO_BUILD:-}" ] || cargo build --release --quiet --bin palisade --example load
PALISADE_GEO_ASN=../shared/geo/asn.mmdb PALISADE_GEO_COUNTRY=../shared/geo/country.mmdb \
PALISADE_TRUSTED_PROXIES=127.0.0.1/32 \
  valgrind --tool=callgrind --callgrind-out-file="$data/callgrind.%p" \
  "$bin" serve --data-dir "$data/store" --listen 127.0.0.1:18099 >"$data/out" 2>"$data/err" &
server=$!
until grep -q pal_ "$data/out" 2>/dev/null; do sleep 0.5; done
export PALISADE_KEY=$(grep -oE 'pal_[A-Za-z0-9_-]+' "$data/out")
# Rules, a country and an ASN, as in bench/http.sh (fewer: the server runs under valgrind).
./target/release/examples/load ingest --url http://127.0.0.1:18099 --clients 1 --batch 1000 --seconds 3 >/dev/null
curl -s -o /dev/null -X POST http://127.0.0.1:18099/v1/signal -H "Authorization: Bearer $PALISADE_KEY" \
  -d '[{"type":"access_rules","action":"block","country":"CN"},{"type":"access_rules","action":"block","asn":"AS13335"}]'
wrk -t1 -c4 -d3s -s bench/check.lua http://127.0.0.1:18099 >/dev/null
wrk -t1 -c4 -d3s http://127.0.0.1:18099/healthz >/dev/null
# The instructions callgrind counted since its counters were last zeroed, dumped as `$1`.
counted() {
  local dump
  sleep 0.5
  callgrind_control -d "$1" "$server" >/dev/null
  sleep 1
  dump=$(grep -l "Trigger: dump $1" "$data"/callgrind.* | head -1)
  awk '/^summary:/ {print $2}' "$dump"
}
count() {
  local route=$1 requests total
  shift
  callgrind_control -z "$server" >/dev/null
  requests=$(wrk -t1 -c4 -d"${secs}s" "$@" | awk '/requests in/ {print $1}')
  total=$(counted "$route")
  echo "$route: $requests requests, $((total / requests)) instructions per request"
}
count healthz http://127.0.0.1:18099/healthz
count check -s bench/check.lua http://127.0.0.1:18099
# Dense new blocks by default, away from the rules above: the writer's work for rows it
# creates, without the page misses of scattered keys (which cost time, not instructions).
# PATTERN=spread counts scattered addresses instead, where patching the index touches a
# bucket per event.
callgrind_control -z "$server" >/dev/null
events=$(./target/release/examples/load ingest --url http://127.0.0.1:18099 --clients 1 \
  --batch 1000 --seconds "$secs" --pattern "${PATTERN:-sequential}" --base 100.0.0.0 |
  awk '/events committed/ {print $2}')
total=$(counted ingest)
echo "ingest: $events events, $((total / events)) instructions per event"
