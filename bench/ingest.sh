#!/usr/bin/env bash
# Ingest over HTTP: 4 clients x 1000-event batches into a fresh server, for each address pattern.
# The server is BIN (default: this tree's release build); with DATABASE_URL set it runs on that
# PostgreSQL database (a fresh schema), else on SQLite in a temporary directory.
# PATTERNS picks the address patterns (default: both). The PostgreSQL schema is dropped after.
# usage: [BIN=path/to/palisade] [DATABASE_URL=postgres://...] [PATTERNS=spread]
#        bash bench/ingest.sh [seconds]
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-15}
cargo build --release --quiet --bin palisade --example load
bin=${BIN:-./target/release/palisade}
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
  ./target/release/examples/load ingest --url http://127.0.0.1:18097 --key "$key" \
    --clients 4 --batch 1000 --seconds "$secs" --pattern "$pattern"
  # CPU per thread of the server, to see which one bounds the rate.
  ps -L -o comm=,time= -p "$server" | sort -k2 -r | head -4 | tr '\n' ';'; echo
  kill "$server"; wait "$server" 2>/dev/null || true
  rm -rf "$data"
  if [ -n "${DATABASE_URL:-}" ]; then
    psql "$DATABASE_URL" -qc "DROP SCHEMA $PALISADE_DATABASE__SCHEMA CASCADE" 2>/dev/null || true
  fi
done
