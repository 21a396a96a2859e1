#!/usr/bin/env bash
# ringkv against Redis and etcd on this machine, under the same load from `ringkv bench`.
#
#   tests/bench/compare.sh [--duration SECS] [--records N]
#
# 1. Single node: ringkv, Redis (--save '' --appendonly no), one etcd member; workloads
#    C, W, A, B (zipfian), targets alternating within each workload.
# 2. Redis driver check: `redis-benchmark` GET/SET on the same server, 50 clients, 256 B.
# 3. Three nodes: a ringkv cluster (n=3 r=2 w=2) and a 3-member etcd cluster; W, C and A.
#    On the same ringkv cluster a strong bucket (consistency=strong, set before its load: every
#    get and put linearizable, CASPaxos per key) runs W and C against etcd's puts and
#    linearizable reads (ringkv with `--route cluster`: each operation at its key's
#    proposer), with the proposers' counters (`cluster status`, group `strong`) read
#    from every node before and after each run: round trips per operation.
# Prints one table with the ratios; raw results go to $OUT (default target/bench-results.jsonl).
# Installs redis-server, redis-tools and etcd-server with apt-get when they are missing.
# Everything listens on 127.0.0.x and is stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/../.."

DURATION=10
RECORDS=10000
STRONG=strongtable
OUT=${OUT:-target/bench-results.jsonl}
while [ $# -gt 0 ]; do
  case "$1" in
    --duration) DURATION=$2; shift 2 ;;
    --records) RECORDS=$2; shift 2 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done

if ! command -v redis-server >/dev/null || ! command -v etcd >/dev/null || ! command -v redis-benchmark >/dev/null; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server redis-tools etcd-server >/dev/null
fi
cargo build --release -q -p ringkv-api
BIN=target/release/ringkv

. tests/bench/lib.sh
bench_workdir compare

bench() { # label target addr workload [extra...]
  local label=$1 target=$2 addr=$3 workload=$4; shift 4
  echo "  $label: $target workload $workload" >&2
  $BIN bench --target "$target" --addr "$addr" --workload "$workload" --distribution zipfian \
    --records "$RECORDS" --duration-secs "$DURATION" --concurrency 50 --value-size 256 --json "$@" \
    | sed "s/^{/{\"setup\":\"$label\",/" >> "$OUT"
}

# The strong proposers' counters summed over the three nodes, as one JSON object.
strong_counters() {
  for i in 1 2 3; do $BIN cluster status --json --addr 127.0.0.$i:7392; done | python3 -c '
import json, sys
total = {}
for line in sys.stdin:
    if line.strip():
        for k, v in json.loads(line)["strong"].items():
            total[k] = total.get(k, 0) + v
print(json.dumps(total))'
}

# One row of $OUT with the counters a strong run added: setup strong3-proposer.
strong_delta() { # workload before after
  python3 - "$@" >> "$OUT" <<'PY'
import json, sys
w, before, after = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3])
row = {"setup": "strong3-proposer", "workload": w}
row.update({k: after[k] - before.get(k, 0) for k in after})
print(json.dumps(row))
PY
}

: > "$OUT"
export RINGKV_COOKIE=compare-cookie

echo "single node" >&2
redis-server --bind 127.0.0.1 --port 6399 --save '' --appendonly no --daemonize no \
  --dir "$WORK" > "$WORK/redis.log" 2>&1 & PIDS+=($!)
etcd --name e1 --data-dir "$WORK/etcd1" \
  --listen-client-urls http://127.0.0.1:23791 --advertise-client-urls http://127.0.0.1:23791 \
  --listen-peer-urls http://127.0.0.1:23801 --initial-advertise-peer-urls http://127.0.0.1:23801 \
  --initial-cluster e1=http://127.0.0.1:23801 > "$WORK/etcd1.log" 2>&1 & PIDS+=($!)
$BIN start --data-dir "$WORK/rk1" --listen 127.0.0.1:7391 > /dev/null 2> "$WORK/rk1.log" & PIDS+=($!)
wait_port 127.0.0.1 6399; wait_port 127.0.0.1 23791; wait_port 127.0.0.1 7391
loaded=""
for w in c w a b; do
  for t in ringkv redis etcd; do
    case $t in ringkv) a=127.0.0.1:7391 ;; redis) a=127.0.0.1:6399 ;; etcd) a=127.0.0.1:23791 ;; esac
    skip=(); case " $loaded " in *" $t "*) skip=(--skip-load) ;; esac
    bench single "$t" "$a" "$w" "${skip[@]}"
    loaded="$loaded $t"
  done
done

echo "redis-benchmark check" >&2
redis-benchmark -h 127.0.0.1 -p 6399 -c 50 -n 200000 -d 256 -t set,get -r "$RECORDS" -q 2>/dev/null \
  | tr '\r' '\n' | grep 'requests per second' > "$WORK/rb.txt"
python3 - "$WORK/rb.txt" >> "$OUT" <<'PY'
import json, re, sys
for line in open(sys.argv[1]):
    m = re.match(r"(SET|GET): ([0-9.]+) requests per second", line.strip())
    if m:
        print(json.dumps({"setup": "redis-benchmark", "op": m.group(1), "throughput": float(m.group(2))}))
PY
for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
wait 2>/dev/null || true
PIDS=()

echo "three nodes" >&2
CLUSTER=e1=http://127.0.0.1:23811,e2=http://127.0.0.2:23812,e3=http://127.0.0.3:23813
for i in 1 2 3; do
  etcd --name e$i --data-dir "$WORK/etcd3-$i" \
    --listen-client-urls http://127.0.0.$i:2380$i --advertise-client-urls http://127.0.0.$i:2380$i \
    --listen-peer-urls http://127.0.0.$i:2381$i --initial-advertise-peer-urls http://127.0.0.$i:2381$i \
    --initial-cluster "$CLUSTER" --initial-cluster-state new > "$WORK/etcd3-$i.log" 2>&1 & PIDS+=($!)
done
start_cluster3 "$BIN" 7392 741
for i in 1 2 3; do wait_port 127.0.0.$i 2380$i; done
# The strong bucket, known to every node before its load.
make_strong "$BIN" 7392 "$STRONG"
echo "  strong: load of $STRONG" >&2
before=$(strong_counters)
$BIN bench --target ringkv --addr 127.0.0.1:7392 --bucket "$STRONG" --n 3 --records "$RECORDS" \
  --concurrency 50 --value-size 256 --operations 0 --json > /dev/null
strong_delta load "$before" "$(strong_counters)"
loaded=""
for w in w c a; do
  for t in ringkv etcd strong; do
    case $t in ringkv|strong) a=127.0.0.1:7392 ;; etcd) a=127.0.0.1:23801 ;; esac
    skip=(); case " $loaded " in *" $t "*) skip=(--skip-load) ;; esac
    if [ $t = strong ]; then
      [ $w = a ] && continue
      before=$(strong_counters)
      # Routed: the proposers are spread over the nodes, and a partition-aware client sends
      # each operation to its key's proposer (through one node, two thirds are forwarded).
      bench strong3 ringkv "$a" "$w" --n 3 --bucket "$STRONG" --skip-load --route cluster
      strong_delta "${w^^}" "$before" "$(strong_counters)"
    else
      bench cluster3 "$t" "$a" "$w" --n 3 --r 2 --w 2 "${skip[@]}"
      loaded="$loaded $t"
    fi
  done
done

python3 - "$OUT" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
res = {}
proposer = {}
for r in rows:
    if r["setup"] == "redis-benchmark":
        res[("rb", r["op"])] = r["throughput"]
    elif r["setup"] == "strong3-proposer":
        proposer[r["workload"]] = r
    else:
        res[(r["setup"], r["target"], r["workload"])] = r
def tp(s, t, w):
    r = res.get((s, t, w)); return r["throughput"] if r else float("nan")
def pct(s, t, w, field):
    r = res.get((s, t, w))
    if not r: return "-"
    ps = [x[field] for x in (r.get("read"), r.get("update")) if x]
    return "%.1f" % (max(ps) / 1000)
def p99(s, t, w):
    return pct(s, t, w, "p99_us")
def p50(s, t, w):
    return pct(s, t, w, "p50_us")
print()
print("%-9s %-3s | %10s %10s %10s | %12s %12s | %s" % ("setup", "wl", "ringkv/s", "redis/s", "etcd/s", "ringkv/redis", "ringkv/etcd", "p99 ms ringkv/redis/etcd"))
for s, ws in (("single", ["C", "W", "A", "B"]), ("cluster3", ["W", "C", "A"]), ("strong3", ["W", "C"])):
    for w in ws:
        # A strong bucket is compared with the same 3-member etcd (puts; linearizable reads).
        e = "cluster3" if s == "strong3" else s
        a, b, c = tp(s, "Ringkv", w), tp(s, "Redis", w), tp(e, "Etcd", w)
        print("%-9s %-3s | %10.0f %10.0f %10.0f | %12.2f %12.2f | %s/%s/%s" % (s, w, a, b, c, a / b if b == b else float("nan"), a / c, p99(s, "Ringkv", w), p99(s, "Redis", w), p99(e, "Etcd", w)))
if proposer:
    print()
    print("strong bucket, 3 nodes n=3, 50 in flight, against the 3-member etcd (W: puts, C: linearizable reads):")
    print("%-4s | %10s %10s %6s | %15s %15s | %7s %7s %8s %9s %7s %7s %9s %6s" % ("wl", "strong/s", "etcd/s", "ratio", "p50 ms str/etcd", "p99 ms str/etcd", "ops", "rt/op", "rt/batch", "ops/batch", "fwd/op", "1rt/op", "conflicts", "indet"))
    for w in ("load", "W", "C"):
        p = proposer.get(w)
        if not p: continue
        ops = max(p["ops"], 1)
        batches = max(p.get("batches", p["ops"]), 1)
        one = p["fast_writes"] + p["quorum_reads"]
        if w == "load":
            a = c = float("nan"); lat = ("-", "-")
        else:
            a, c = tp("strong3", "Ringkv", w), tp("cluster3", "Etcd", w)
            lat = ("%s/%s" % (p50("strong3", "Ringkv", w), p50("cluster3", "Etcd", w)),
                   "%s/%s" % (p99("strong3", "Ringkv", w), p99("cluster3", "Etcd", w)))
        # Reads run no write rounds (a stray repair write may count one): per-round figures
        # are for writes only.
        per_round = ("%8.3f" % (p["round_trips"] / batches), "%9.2f" % (ops / batches)) if w != "C" else ("-", "-")
        print("%-4s | %10.0f %10.0f %6.2f | %15s %15s | %7d %7.3f %8s %9s %7.3f %7.3f %9d %6d" % (w, a, c, a / c, lat[0], lat[1], p["ops"], p["round_trips"] / ops, per_round[0], per_round[1], p["forwarded"] / ops, one / ops, p["conflicts"], p["indeterminate"]))
    print("rt/op: proposer round trips to the replicas per operation, rt/batch: per round of operations queued on one key (what each")
    print("waits for), both from every node's `cluster status` (group strong); fwd/op: operations the node the client talks to forwarded")
    print("to the key's proposer (one more cluster hop); 1rt/op: operations answered by a quorum read or an accept at a cached promise.")
rb_get, rb_set = res.get(("rb", "GET")), res.get(("rb", "SET"))
if rb_get and rb_set:
    print()
    print("redis driver check: ringkv bench C %.0f/s vs redis-benchmark GET %.0f/s (%.2fx); W %.0f/s vs SET %.0f/s (%.2fx)" % (
        tp("single", "Redis", "C"), rb_get, tp("single", "Redis", "C") / rb_get,
        tp("single", "Redis", "W"), rb_set, tp("single", "Redis", "W") / rb_set))
PY
