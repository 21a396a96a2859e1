#!/usr/bin/env bash
# The cost of TLS on one node: the same `ringkv bench` load (zipfian, 256 B values, 50 in
# flight, one connection per worker) against a node with a plain client listener and against
# one with `--tls-cert` (TLS 1.3, ECDSA P-256 certificate from `ringkv cert`), workloads C and W,
# runs alternating between the two nodes, ROUNDS rounds.
#
#   tests/bench/tls_cost.sh [--duration SECS] [--rounds N] [--records N]
#
# Prints ops/s and p50/p99 per run and the TLS/plain ratio per workload (of the sums over the
# rounds). Both nodes listen on 127.0.0.1 and are stopped on exit, with their directories.
set -euo pipefail
cd "$(dirname "$0")/../.."

DURATION=8
ROUNDS=2
RECORDS=10000
while [ $# -gt 0 ]; do
  case "$1" in
    --duration) DURATION=$2; shift 2 ;;
    --rounds) ROUNDS=$2; shift 2 ;;
    --records) RECORDS=$2; shift 2 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done

cargo build --release -q -p ringkv-api
BIN=target/release/ringkv
. tests/bench/lib.sh
bench_workdir tls-cost

"$BIN" cert ca --dir "$WORK/certs" >/dev/null
"$BIN" cert node n1 --dir "$WORK/certs" >/dev/null

start() { # name, extra flags... (sets ADDR; not in a subshell, so that PIDS keeps the node)
  local name=$1; shift
  "$BIN" start --data-dir "$WORK/$name" --listen 127.0.0.1:0 "$@" >"$WORK/$name.out" 2>"$WORK/$name.log" &
  PIDS+=($!)
  for _ in $(seq 1 100); do
    if grep -q "listening on" "$WORK/$name.out" 2>/dev/null; then break; fi
    sleep 0.1
  done
  ADDR=$(sed -n 's/^ringkv: listening on //p' "$WORK/$name.out")
}
start plain; PLAIN=$ADDR
start tls --tls-cert "$WORK/certs/n1.pem" --tls-key "$WORK/certs/n1.key"; TLS=$ADDR
TLSARGS=(--tls-ca "$WORK/certs/ca.pem")

bench() { # addr, workload, load|skip, extra...
  local addr=$1 workload=$2 load=$3; shift 3
  local skip=()
  [ "$load" = skip ] && skip=(--skip-load)
  "$BIN" bench --addr "$addr" --workload "$workload" --records "$RECORDS" --duration-secs "$DURATION" \
    --concurrency 50 --json "${skip[@]}" "$@"
}

# Preload both nodes once (workload W writes the records first).
bench "$PLAIN" w load >/dev/null
bench "$TLS" w load "${TLSARGS[@]}" >/dev/null

declare -A SUM
printf "%-4s %-8s %-6s %10s %8s %8s\n" round workload link ops/s p50_ms p99_ms
for round in $(seq 1 "$ROUNDS"); do
  for workload in c w; do
    for link in plain tls; do
      if [ "$link" = plain ]; then json=$(bench "$PLAIN" "$workload" skip)
      else json=$(bench "$TLS" "$workload" skip "${TLSARGS[@]}"); fi
      read -r ops p50 p99 < <(python3 -c '
import json, sys
r = json.loads(sys.argv[1])
op = r.get("read") or r.get("update")
errors = sum((r.get(k) or {}).get("errors", 0) for k in ("read", "update"))
if errors:
    sys.exit("%d errors in the run" % errors)
print(round(r["throughput"]), op["p50_us"] / 1000, op["p99_us"] / 1000)
' "$json")
      printf "%-4s %-8s %-6s %10s %8s %8s\n" "$round" "$workload" "$link" "$ops" "$p50" "$p99"
      SUM[$workload.$link]=$(( ${SUM[$workload.$link]:-0} + ops ))
    done
  done
done
for workload in c w; do
  python3 -c 'import sys; p, t = int(sys.argv[2]), int(sys.argv[3]); print("workload %s: plain %d ops/s, TLS %d ops/s, TLS/plain %.3f" % (sys.argv[1].upper(), p, t, t / p))' \
    "$workload" "$(( ${SUM[$workload.plain]} / ROUNDS ))" "$(( ${SUM[$workload.tls]} / ROUNDS ))"
done
