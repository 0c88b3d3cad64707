#!/usr/bin/env bash
# Ingest over HTTP: 4 clients x 1000-event batches into a fresh server, for each address pattern.
# The server is BIN (default: this tree's release build); with DATABASE_URL set it runs on that
# PostgreSQL database (a fresh schema), else on SQLite in a temporary directory.
# PATTERNS picks the address patterns (default: both). The PostgreSQL schema is dropped after.
# Each run ends with figures per event: bytes the server wrote, its CPU time and, with a
# PostgreSQL server on this machine, that server's CPU time (all its processes, so only
# meaningful when nothing else uses it). The local server prefers TLS when it has it; add
# `?sslmode=disable` to DATABASE_URL to leave encryption out of the comparison.
# usage: [BIN=path/to/palisade] [DATABASE_URL=postgres://...] [PATTERNS=spread]
#        bash bench/ingest.sh [seconds]
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-15}
cargo build --release --quiet --bin palisade --example load
bin=${BIN:-./target/release/palisade}
hz=$(getconf CLK_TCK)
per_event_us() { awk -v t="$1" -v n="$2" -v hz="$hz" 'BEGIN { printf "%.1f", t / hz * 1e6 / n }'; }
# CPU ticks of a local PostgreSQL: its live processes and the sessions that have ended (counted
# in the postmaster's children's time); empty when there is none on this machine.
postgres_ticks() {
  local postmaster
  postmaster=$(head -n1 /var/lib/postgresql/*/main/postmaster.pid 2>/dev/null | head -n1) || true
  [ -n "$postmaster" ] && [ -r "/proc/$postmaster/stat" ] || return 0
  local total
  total=$(awk '{print $16 + $17}' "/proc/$postmaster/stat")
  for pid in $(pgrep -u postgres); do
    total=$((total + $(awk '{print $14 + $15}' "/proc/$pid/stat" 2>/dev/null || echo 0)))
  done
  echo "$total"
}
for pattern in ${PATTERNS:-sequential spread}; do
  data=$(mktemp -d)
  args=(serve --data-dir "$data" --listen 127.0.0.1:18097)
  if [ -n "${DATABASE_URL:-}" ]; then
    export PALISADE_DATABASE__SCHEMA="palisade_bench_$(date +%s)_$RANDOM"
    args+=(--database-url "$DATABASE_URL")
  fi
  "$bin" "${args[@]}" >"$data/out" 2>"$data/err" &
  server=$!
  until grep -q pal_ "$data/out" 2>/dev/null; do
    kill -0 "$server" 2>/dev/null || { cat "$data/err"; exit 1; }
    sleep 0.2
  done
  key=$(grep -oE 'pal_[A-Za-z0-9_-]+' "$data/out")
  echo "== $pattern"
  postgres_before=$(postgres_ticks)
  out=$(./target/release/examples/load ingest --url http://127.0.0.1:18097 --key "$key" \
    --clients 4 --batch 1000 --seconds "$secs" --pattern "$pattern")
  echo "$out"
  # CPU per thread of the server, to see which one bounds the rate.
  ps -L -o comm=,time= -p "$server" | sort -k2 -r | head -4 | tr '\n' ';'; echo
  # Per event: bytes the server wrote and CPU time it used (both repeat across runs where
  # events/s on a shared VM does not), and on PostgreSQL the database's CPU time.
  events=$(grep -oE '^ingest: [0-9]+' <<<"$out" | grep -oE '[0-9]+')
  written=$(awk '/^write_bytes/ {print $2}' "/proc/$server/io")
  cpu_ticks=$(awk '{print $14 + $15}' "/proc/$server/stat")
  per_event="server: $((written / events)) bytes, $(per_event_us "$cpu_ticks" "$events") us CPU"
  kill "$server"; wait "$server" 2>/dev/null || true
  if [ -n "${DATABASE_URL:-}" ] && [ -n "$postgres_before" ]; then
    sleep 1 # the server's database sessions end, and their CPU time goes to the postmaster
    ticks=$(( $(postgres_ticks) - postgres_before ))
    per_event+="; PostgreSQL (all its processes here): $(per_event_us "$ticks" "$events") us CPU"
  fi
  echo "per event: $per_event"
  rm -rf "$data"
  if [ -n "${DATABASE_URL:-}" ]; then
    psql "$DATABASE_URL" -qc "DROP SCHEMA $PALISADE_DATABASE__SCHEMA CASCADE" 2>/dev/null || true
  fi
done
