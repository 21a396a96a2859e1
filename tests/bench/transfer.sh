#!/usr/bin/env bash
# Partition transfer throughput on real nodes: one partition of about $MB MB moved by
# `cluster replace`, with the bytes the plan estimated and the bytes the transfer moved.
#
#   tests/bench/transfer.sh [--mb MB] [--rate BYTES_PER_SEC]
#
# 1. Three release nodes with --partitions 1 (every node holds the one partition), loaded
#    with `ringkv bench --workload w` records of 4 KiB until the partition holds about MB MB.
# 2. A fourth node joins with --transfer-max-bytes-per-sec RATE (default 1 GB/s, so the
#    throttle does not cap the measurement), `cluster replace n3 n4`, `cluster plan --json`
#    (the estimate), `cluster commit`, then polls `cluster status` until one layout version is
#    live again.
# Prints MB/s and keys/s of the transfer (from the receiver's log), bytes moved / estimated,
# and the time from the commit to the end of the transition.
# Everything listens on 127.0.0.x and is stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/../.."

MB=120
RATE=1000000000
while [ $# -gt 0 ]; do
  case "$1" in
    --mb) MB=$2; shift 2 ;;
    --rate) RATE=$2; shift 2 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done
cargo build --release -q -p ringkv-api
BIN=$PWD/target/release/ringkv
. tests/bench/lib.sh
bench_workdir transfer
export RINGKV_COOKIE=transfer-bench
PORT=17501
start() { # name index extra...
  local name=$1 i=$2
  shift 2
  "$BIN" start --name "$name" --data-dir "$WORK/$name" --listen "127.0.0.$i:$PORT" \
    --cluster-addr "127.0.0.$i:$((PORT + 100))" --heartbeat-ms 200 --partitions 1 "$@" \
    >"$WORK/$name.log" 2>&1 &
  PIDS+=($!)
}
wait_for() { # seconds command...
  local deadline=$((SECONDS + $1))
  shift
  until "$@" >/dev/null 2>&1; do
    [ $SECONDS -lt $deadline ] || { echo "timed out waiting for: $*" >&2; exit 1; }
    sleep 0.2
  done
}
live_one() { "$BIN" cluster status --addr "127.0.0.1:$PORT" --json | python3 -c 'import json,sys; s=json.load(sys.stdin); sys.exit(0 if len(s["live_versions"]) == 1 and all(m["status"] == "active" for m in s["members"]) and len(s["members"]) == int(sys.argv[1]) else 1)' "$1"; }

start n1 1
wait_for 30 "$BIN" ping --addr "127.0.0.1:$PORT"
start n2 2 --join "127.0.0.1:$((PORT + 100))"
start n3 3 --join "127.0.0.1:$((PORT + 100))"
wait_for 30 sh -c "'$BIN' cluster status --addr 127.0.0.1:$PORT --json | grep -q '\"n3\"'"
"$BIN" cluster commit --addr "127.0.0.1:$PORT" >/dev/null
wait_for 60 live_one 3
RECORDS=$((MB * 1024 * 1024 / 4300))
echo "loading $RECORDS records of 4 KiB (n=3, w=2)..."
"$BIN" bench --target ringkv --addr "127.0.0.1:$PORT" --workload w --records "$RECORDS" \
  --value-size 4096 --operations 1 --distribution uniform --json >"$WORK/load.json"

start n4 4 --join "127.0.0.1:$((PORT + 100))" --transfer-max-bytes-per-sec "$RATE"
wait_for 30 sh -c "'$BIN' cluster status --addr 127.0.0.1:$PORT --json | grep -q '\"n4\"'"
"$BIN" cluster replace n3 n4 --addr "127.0.0.1:$PORT" >/dev/null
ESTIMATE=$("$BIN" cluster plan --addr "127.0.0.1:$PORT" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["bytes_to_move"])')
START=$(date +%s.%N)
"$BIN" cluster commit --addr "127.0.0.1:$PORT" >/dev/null
wait_for 600 live_one 3
END=$(date +%s.%N)
python3 - "$WORK/n4.log" "$ESTIMATE" "$START" "$END" "$RATE" <<'EOF'
import re, sys, datetime
log, estimate, start, end, rate = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4]), sys.argv[5]
def ts(line):
    return datetime.datetime.fromisoformat(line.split()[0].replace("Z", "+00:00")).timestamp()
first = last = None
moved = keys = 0
for line in open(log):
    if "streaming a partition" in line and first is None:
        first = ts(line)
    m = re.search(r"partition transfer streamed and verified .*bytes=(\d+) keys=(\d+)", line)
    if m:
        last = ts(line)
        moved += int(m.group(1)); keys += int(m.group(2))
secs = last - first
print(f"partition of {moved/1e6:.1f} MB, {keys} keys; receiver throttle {rate} B/s")
print(f"transfer (stream + verification): {secs:.2f} s, {moved/1e6/secs:.1f} MB/s, {keys/secs:.0f} keys/s")
print(f"bytes moved / estimated by the plan: {moved} / {estimate} = {moved/max(estimate,1):.3f}")
print(f"commit to one live layout version on n1: {end-start:.2f} s")
EOF
