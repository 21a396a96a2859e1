#!/usr/bin/env bash
# Partition-aware routing against routing through one node, on a 3-node cluster.
#
#   tests/bench/routing.sh [--duration SECS] [--records N] [--rounds R]
#
# Starts three release nodes on 127.0.0.1-3 (as compare.sh does), waits until the layout
# transition to the three nodes is over, prints which node leads how many partitions (the first
# replica of each preference list, from op `layout`), loads `--records` keys once into the
# eventual bucket usertable and the strong bucket strongtable, then runs `ringkv bench`
# workloads C and A (zipfian, 256-byte values, 50 in flight) `--rounds` times, routes
# alternating (node first in odd rounds, cluster first in even ones):
#   1. usertable (n=3 r=2 w=2): `--route node --addr n1` against `--route cluster`;
#   2. strongtable: `--route node --addr n2` (n2 forwards every operation to the key's
#      proposer) against `--route cluster` with n2 as the seed;
# and in both, `--route actor` (typed actor messages from one client node, `KvRef`, dialled at
# the same node's actor-listen, port 7493), routed to replicas as `cluster` is: its ratio to
# `cluster` is the cost of the actor transport against the TCP client.
# Prints ops/s, p50 and p99 per run. Raw results go to $OUT (default
# $CARGO_TARGET_DIR/routing.jsonl, else target/routing.jsonl).
# Everything listens on 127.0.0.x and is stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/../.."

DURATION=10
RECORDS=10000
ROUNDS=2
STRONG=strongtable
while [ $# -gt 0 ]; do
  case "$1" in
    --duration) DURATION=$2; shift 2 ;;
    --records) RECORDS=$2; shift 2 ;;
    --rounds) ROUNDS=$2; shift 2 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done
TARGET=${CARGO_TARGET_DIR:-target}
OUT=${OUT:-$TARGET/routing.jsonl}
cargo build --release -q -p ringkv-api --bin ringkv
BIN=$TARGET/release/ringkv

. tests/bench/lib.sh
bench_workdir routing

export RINGKV_COOKIE=routing-cookie
start_cluster3 "$BIN" 7492 751 --actor-listen '127.0.0.{i}:7493'

# Which node is first in how many preference lists (op `layout`, read with msgpack).
python3 - <<'PY' >&2
import collections, socket, struct
import msgpack
s = socket.create_connection(("127.0.0.1", 7492))
body = msgpack.packb({"id": 1, "op": "layout"})
s.sendall(struct.pack(">I", len(body)) + body)
def read(n):
    b = b""
    while len(b) < n:
        chunk = s.recv(n - len(b))
        if not chunk:
            raise SystemExit("connection closed")
        b += chunk
    return b
(length,) = struct.unpack(">I", read(4))
info = msgpack.unpackb(read(length))["info"]
names = [n["name"] for n in info["nodes"]]
first = collections.Counter(names[l[0]] for l in info["preference_lists"] if l)
print(f"layout version {info['version']}, Q={info['partitions']}: first replica of "
      + ", ".join(f"{n}: {first.get(n, 0)}" for n in names) + " partitions")
PY

# The strong bucket, known to every node before its load.
make_strong "$BIN" 7492 "$STRONG"

echo "load of $RECORDS keys into usertable and $STRONG" >&2
$BIN bench --addr 127.0.0.1:7492 --records "$RECORDS" --value-size 256 --concurrency 50 \
  --operations 0 --n 3 --r 2 --w 2 --json > /dev/null
$BIN bench --addr 127.0.0.1:7492 --bucket "$STRONG" --records "$RECORDS" --value-size 256 \
  --concurrency 50 --operations 0 --n 3 --json > /dev/null

run() { # round setup via workload route [extra...]
  local round=$1 setup=$2 via=$3 w=$4 route=$5; shift 5
  local port=7492; [ "$route" = actor ] && port=7493
  echo "  round $round: $setup, workload ${w^^}, --route $route, --addr $via:$port" >&2
  $BIN bench --addr "$via:$port" --route "$route" --workload "$w" --distribution zipfian \
    --records "$RECORDS" --duration-secs "$DURATION" --concurrency 50 --value-size 256 \
    --skip-load --json "$@" \
    | sed "s/^{/{\"round\":$round,\"setup\":\"$setup\",\"via\":\"$via\",/" >> "$OUT"
}

: > "$OUT"
# Odd rounds run `node` first, even rounds `cluster` first (ABBA), so that a drift during the
# runs (the data growing under A, other load on the machine) does not favour either route.
routes() { # round
  if [ $(($1 % 2)) = 1 ]; then echo node cluster actor; else echo actor cluster node; fi
}
for round in $(seq 1 "$ROUNDS"); do
  for w in c a; do
    for route in $(routes "$round"); do
      run "$round" eventual 127.0.0.1 "$w" "$route" --n 3 --r 2 --w 2
    done
  done
done
# Strong keys through n2, which proposes for about a third of them (the layout spreads the
# primaries): the rest is forwarded to the key's proposer, unless the client routes it there.
for round in $(seq 1 "$ROUNDS"); do
  for w in c a; do
    for route in $(routes "$round"); do
      run "$round" strong 127.0.0.2 "$w" "$route" --n 3 --bucket "$STRONG"
    done
  done
done
forwarded=$(for i in 1 2 3; do $BIN cluster status --json --addr 127.0.0.$i:7492; done \
  | python3 -c 'import json,sys; print(sum(json.loads(l)["strong"]["forwarded"] for l in sys.stdin if l.strip()))')
echo "strong operations forwarded by a node, all runs: $forwarded" >&2

python3 - "$OUT" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
def ms(us):
    return f"{us / 1000:.2f}"
def cell(s):
    return f"{ms(s['p50_us'])} / {ms(s['p99_us'])}" if s else "-"
print("| bucket | workload | route | round | ops/s | read p50 / p99 ms | update p50 / p99 ms |")
print("|---|---|---|---|---|---|---|")
order = lambda r: (r["setup"] != "eventual", r["workload"] != "C", r["round"], r["route"] != "node")
for r in sorted(rows, key=order):
    via = "n" + r["via"].rsplit(".", 1)[1]
    route = {"node": f"through {via}", "cluster": f"routed (seed {via})",
             "actor": f"actor client (seed {via})"}[r["route"]]
    print(f"| {r['setup']} | {r['workload']} | {route} | {r['round']} | {r['throughput']:,.0f} "
          f"| {cell(r.get('read'))} | {cell(r.get('update'))} |")
print()
for setup in ("eventual", "strong"):
    for w in ("C", "A"):
        tp = {k: [r["throughput"] for r in rows if r["setup"] == setup and r["workload"] == w
                  and r["route"] == k] for k in ("node", "cluster", "actor")}
        mean = {k: sum(v) / len(v) for k, v in tp.items() if v}
        if "node" in mean and "cluster" in mean:
            print(f"{setup} {w}: routed / through one node, throughput "
                  f"{mean['cluster'] / mean['node']:.2f} (means of {len(tp['cluster'])} runs)")
        if "actor" in mean and "cluster" in mean:
            print(f"{setup} {w}: actor client / routed TCP client, throughput "
                  f"{mean['actor'] / mean['cluster']:.2f} (means of {len(tp['actor'])} runs)")
errors = sum((r.get(k) or {}).get("errors", 0) for r in rows for k in ("read", "update"))
print(f"errors: {errors}")
PY
