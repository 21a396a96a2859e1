#!/usr/bin/env bash
# Cost and saving of per-bucket compression on a real node:
#
#   tests/bench/compression.sh [--rounds R] [DIR]
#
# One release node (--partitions 16, a one-node cluster, so every write is one durable local
# commit). For each round, alternating, `ringkv load DIR` into a bucket with compression=zstd
# (the default) and into one with compression=none, then the same for a directory of random
# files (256 x 256 KiB, made here). Prints each load's store and verify lines (files/s, MB/s)
# and the bytes each load added to the node's data (`cluster status` storage.bytes: LMDB keys
# plus records, values as stored). DIR defaults to /usr/share/doc. Stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/../.."

ROUNDS=2
DIR=/usr/share/doc
while [ $# -gt 0 ]; do
  case "$1" in
    --rounds) ROUNDS=$2; shift 2 ;;
    *) DIR=$1; shift ;;
  esac
done
cargo build --release -q -p ringkv-api
BIN=$PWD/target/release/ringkv
WORK=$(mktemp -d -t ringkv-compression-XXXXXX)
PID=
cleanup() {
  [ -n "$PID" ] && kill "$PID" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
export RINGKV_COOKIE=compression-bench
ADDR=127.0.0.1:17601
"$BIN" start --name n1 --data-dir "$WORK/n1" --listen "$ADDR" --cluster-addr 127.0.0.1:17701 \
  --partitions 16 >"$WORK/n1.log" 2>&1 &
PID=$!
deadline=$((SECONDS + 30))
until "$BIN" ping --addr "$ADDR" >/dev/null 2>&1; do
  [ $SECONDS -lt $deadline ] || { echo "node did not start" >&2; exit 1; }
  sleep 0.2
done
"$BIN" cluster commit --addr "$ADDR" >/dev/null 2>&1 || true

mkdir -p "$WORK/random"
for i in $(seq 1 256); do head -c 262144 /dev/urandom >"$WORK/random/f$i"; done

bytes() { "$BIN" cluster status --addr "$ADDR" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["storage"]["bytes"])'; }
run() { # bucket codec dir label
  "$BIN" bucket set "$1" "compression=$2" --addr "$ADDR" >/dev/null
  local before after out
  before=$(bytes)
  out=$("$BIN" load "$3" --addr "$ADDR" --bucket "$1" --quiet | grep -E '^(stored|verified)')
  after=$(bytes)
  echo "== $4, compression=$2 (bucket $1)"
  echo "$out"
  echo "   stored bytes added: $((after - before))"
  echo "$4|$2|$(echo "$out" | sed -n 's/^stored.* \([0-9.]*\) MB\/s$/\1/p')|$(echo "$out" | sed -n 's/^verified.* \([0-9.]*\) MB\/s;.*/\1/p')|$((after - before))" >>"$WORK/rows"
}
# Alternate which codec goes first: the machine's load drifts.
for r in $(seq 1 "$ROUNDS"); do
  if [ $((r % 2)) = 1 ]; then order="zstd none"; else order="none zstd"; fi
  for c in $order; do run "docs-$c-$r" "$c" "$DIR" "$DIR"; done
  for c in $order; do run "rand-$c-$r" "$c" "$WORK/random" "random 256 x 256 KiB"; done
done
du -sh "$WORK/n1/data" | sed 's/^/data dir: /'
python3 - "$WORK/rows" <<'EOF'
import sys, statistics
rows = {}
for line in open(sys.argv[1]):
    corpus, codec, store, verify, stored = line.strip().split("|")
    r = rows.setdefault((corpus, codec), ([], [], stored))
    r[0].append(float(store)); r[1].append(float(verify))
print(f"{'corpus':<22} {'codec':<5} {'load MB/s median (min-max)':<27} {'verify MB/s median (min-max)':<29} stored bytes")
for (corpus, codec), (s, v, b) in sorted(rows.items()):
    f = lambda x: f"{statistics.median(x):.0f} ({min(x):.0f}-{max(x):.0f})"
    print(f"{corpus:<22} {codec:<5} {f(s):<27} {f(v):<29} {b}")
EOF
