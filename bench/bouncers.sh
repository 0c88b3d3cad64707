#!/usr/bin/env bash
# CrowdSec bouncer routes on a server holding 1,000,000 active decisions (SQLite):
# - `GET /v1/decisions/stream?startup=true`: time to first and last byte, bytes sent, and the
#   server's peak RSS during the answer against its RSS before (the peak is reset first);
# - `GET /v1/decisions?ip=<random>` against `GET /v1/check?ip=<random>`, alternately.
# Needs wrk, curl and ../shared/geo.
# usage: [BIN=path/to/palisade] bash bench/bouncers.sh [seconds]
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-15}
data=$(mktemp -d)
trap 'kill $server 2>/dev/null || true; rm -rf "$data"' EXIT
cargo build --release --quiet --bin palisade --example load
port=18098
url=http://127.0.0.1:$port
PALISADE_GEO_ASN=../shared/geo/asn.mmdb PALISADE_GEO_COUNTRY=../shared/geo/country.mmdb \
  "${BIN:-./target/release/palisade}" serve --data-dir "$data" --listen 127.0.0.1:$port >"$data/out" 2>"$data/err" &
server=$!
until grep -q pal_ "$data/out" 2>/dev/null; do sleep 0.2; done
export PALISADE_KEY=$(grep -oE 'pal_[A-Za-z0-9_-]+' "$data/out")
# Consecutive /32 blocks (expiring in an hour) from 11.0.0.0 until the store holds at least
# 1,000,000 rules, all active.
count() { sqlite3 "file:$data/palisade.db?mode=ro" 'SELECT count(*) FROM rules'; }
base=11.0.0.0
while [ "$(count)" -lt 1000000 ]; do
  ./target/release/examples/load ingest --url $url --clients 4 --batch 1000 --seconds 4 \
    --pattern sequential --base $base >/dev/null
  base=$(sqlite3 "file:$data/palisade.db?mode=ro" "SELECT target FROM rules ORDER BY id DESC LIMIT 1" | cut -d/ -f1)
done
# A country and an ASN, as bench/http.sh has, so look-ups also read the geo data.
curl -s -o /dev/null -X POST $url/v1/signal -H "Authorization: Bearer $PALISADE_KEY" \
  -d '[{"type":"access_rules","action":"block","country":"CN"},{"type":"access_rules","action":"block","asn":"AS13335"}]'
rules=$(count)
echo "== $rules active rules ($((rules - 2)) of them /32 blocks: decisions of scope Ip)"
reader=$(./target/release/palisade keys create --name bench --role reader --data-dir "$data" 2>/dev/null | tail -1)

echo "== GET /v1/decisions/stream?startup=true (3 runs)"
for run in 1 2 3; do
  echo 5 > /proc/$server/clear_refs
  before=$(awk '/VmRSS/ {print $2}' /proc/$server/status)
  curl -s -o /dev/null -H "X-Api-Key: $reader" \
    -w "first byte %{time_starttransfer} s, last byte %{time_total} s, %{size_download} bytes" \
    "$url/v1/decisions/stream?startup=true"
  peak=$(awk '/VmHWM/ {print $2}' /proc/$server/status)
  echo ", RSS before $((before / 1024)) MiB, peak during $((peak / 1024)) MiB (+$(((peak - before) / 1024)) MiB)"
done
# The answer is what a bouncer parses: count its decisions once.
curl -s -H "X-Api-Key: $reader" "$url/v1/decisions/stream?startup=true" \
  | python3 -c 'import json,sys; d=json.load(sys.stdin); print("decisions in the answer:", len(d["new"]), "deleted:", len(d["deleted"]))'

for round in 1 2 3; do
  echo "== round $round: GET /v1/check?ip=<random>"
  wrk -t2 -c64 -d"${secs}s" --latency -s bench/check.lua $url | grep -E "Requests/sec|99%|50%|Non-2xx"
  echo "== round $round: GET /v1/decisions?ip=<random>"
  PALISADE_KEY=$reader wrk -t2 -c64 -d"${secs}s" --latency -s bench/decisions.lua $url | grep -E "Requests/sec|99%|50%|Non-2xx"
done
