#!/usr/bin/env bash
# GET /v1/blocklist over 1,000,000 rules on loopback: status, bytes, time to first and last byte,
# and the server's peak RSS during each export (the peak is reset before each, so it is the
# export's own, not the start-up's). Then the same with a large country (US) blocked and
# expand=true: the first request builds the expansion, the second finds it cached.
# Needs curl and sqlite3, and ../shared/geo for the geo data.
# usage: [BIN=path/to/palisade] bash bench/export.sh
set -euo pipefail
cd "$(dirname "$0")/.."
data=$(mktemp -d)
server=
trap 'kill $server 2>/dev/null || true; rm -rf "$data"' EXIT
cargo build --release --quiet --bin palisade
bin=${BIN:-./target/release/palisade}
url=http://127.0.0.1:18120

start() {
  PALISADE_GEO_ASN=../shared/geo/asn.mmdb PALISADE_GEO_COUNTRY=../shared/geo/country.mmdb \
    "$bin" serve --data-dir "$data" --listen 127.0.0.1:18120 >>"$data/out" 2>>"$data/err" &
  server=$!
  until curl -sf "$url/healthz" >/dev/null 2>&1; do sleep 0.2; done
}

start
key=$(grep -oE 'pal_[A-Za-z0-9_-]+' "$data/out" | head -1)
kill "$server"; wait "$server" 2>/dev/null || true

# 1,000,000 /32s 1931 addresses apart from 11.0.0.0 (none adjacent, so none join), half
# permanent, half expiring at distinct times.
sqlite3 "$data/palisade.db" <<'SQL'
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 1000000),
     a(i, v) AS (SELECT i, 184549376 + i * 1931 FROM n)
INSERT INTO rules (tenant_id, action, kind, target, expires_at, source, created_at, updated_at)
SELECT 1, 'block', 'ip',
       (v >> 24) || '.' || ((v >> 16) & 255) || '.' || ((v >> 8) & 255) || '.' || (v & 255) || '/32',
       CASE WHEN i % 2 = 0 THEN NULL ELSE 4102444800000 + i * 1000 END, 'signal', 0, 0
FROM a;
UPDATE tenants SET rules = (SELECT count(*) FROM rules WHERE tenant_id = 1) WHERE id = 1;
SQL

started=$(date +%s.%N)
start
echo "start-up over 1,000,000 rules: $(echo "$(date +%s.%N) - $started" | bc) s, RSS $(awk '/VmRSS/ {print $2/1024}' /proc/$server/status) MiB"

get() {
  echo 5 > /proc/$server/clear_refs
  curl -s -o /dev/null -H "Authorization: Bearer $key" \
    -w "$1: HTTP %{http_code}, %{size_download} bytes, first byte %{time_starttransfer} s, last byte %{time_total} s" \
    "$url/v1/blocklist?$1"
  echo ", server peak RSS $(awk '/VmHWM/ {print $2/1024}' /proc/$server/status) MiB (RSS before: $rss MiB)"
}

for query in format=plain format=nftables format=ipset format=json format=nginx; do
  rss=$(awk '/VmRSS/ {print $2/1024}' /proc/$server/status)
  get "$query"
done

curl -s -o /dev/null -X POST "$url/v1/signal" -H "Authorization: Bearer $key" \
  -d '[{"type":"access_rules","action":"block","country":"US"}]'
for run in 1 2; do
  rss=$(awk '/VmRSS/ {print $2/1024}' /proc/$server/status)
  get "format=nftables&expand=true"
done
