# Helpers of the benchmark scripts in tests/bench, sourced from the repository root:
#   . tests/bench/lib.sh
# Everything they start listens on 127.0.0.x and is stopped when the script exits.

# bench_workdir NAME: a temporary directory $WORK, the list $PIDS of processes to stop, and an
# EXIT trap that kills them, waits for them and removes $WORK.
bench_workdir() {
  WORK=$(mktemp -d -t "ringkv-$1-XXXXXX")
  PIDS=()
  trap bench_cleanup EXIT
}

bench_cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}

# wait_port HOST PORT: returns once something accepts connections there; exits after 20 s.
wait_port() {
  for _ in $(seq 1 200); do
    if (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  echo "nothing listens on $1:$2" >&2; exit 1
}

# start_cluster3 BIN CLIENT_PORT CLUSTER_PORT_PREFIX [FLAG...]: starts nodes n1-n3 on
# 127.0.0.1-3 (client port CLIENT_PORT, cluster port CLUSTER_PORT_PREFIX followed by the node's
# number, zone z1-z3, logs in $WORK/nI.log; `{i}` in a FLAG becomes the node's number), waits
# until n1 knows all three, commits the layout and waits until every node runs layout version
# 2 alone. Needs RINGKV_COOKIE.
start_cluster3() {
  local bin=$1 port=$2 prefix=$3; shift 3
  local i flags join n v
  for i in 1 2 3; do
    flags=("${@//\{i\}/$i}")
    join=(); [ "$i" -gt 1 ] && join=(--join "127.0.0.1:${prefix}1")
    "$bin" start --name "n$i" --data-dir "$WORK/n$i" --listen "127.0.0.$i:$port" \
      --cluster-addr "127.0.0.$i:$prefix$i" --zone "z$i" "${join[@]}" "${flags[@]}" \
      > /dev/null 2> "$WORK/n$i.log" & PIDS+=($!)
  done
  for i in 1 2 3; do wait_port "127.0.0.$i" "$port"; done
  for _ in $(seq 1 100); do
    n=$("$bin" cluster status --json --addr "127.0.0.1:$port" | python3 -c 'import json,sys; print(len(json.load(sys.stdin)["members"]))')
    [ "$n" = 3 ] && break
    sleep 0.1
  done
  "$bin" cluster commit --addr "127.0.0.1:$port" > /dev/null
  # Until the transition to the 3-node layout is over on every node (one live version):
  # before that, writes go to both layouts' replica sets, and each new replica carries strong
  # keys over with Paxos rounds of its own that duel with the proposer.
  for i in 1 2 3; do
    for _ in $(seq 1 300); do
      v=$("$bin" cluster status --json --addr "127.0.0.$i:$port" | python3 -c 'import json,sys; d=json.load(sys.stdin); print(d["layout_version"], len(d["live_versions"]))')
      [ "$v" = "2 1" ] && break
      sleep 0.1
    done
    [ "$v" = "2 1" ] || { echo "node $i: layout version and live versions $v, not 2 1" >&2; exit 1; }
  done
}

# make_strong BIN CLIENT_PORT BUCKET: makes BUCKET strong through n1 and waits until n1-n3
# all see it (before its first write, as a strong bucket must be).
make_strong() {
  local bin=$1 port=$2 bucket=$3 i c
  "$bin" bucket set "$bucket" consistency=strong --addr "127.0.0.1:$port" > /dev/null
  for i in 1 2 3; do
    for _ in $(seq 1 100); do
      c=$("$bin" bucket get "$bucket" --addr "127.0.0.$i:$port" | python3 -c 'import json,sys; print(json.load(sys.stdin)["consistency"])')
      [ "$c" = strong ] && break
      sleep 0.1
    done
    [ "$c" = strong ] || { echo "node $i does not see $bucket as strong" >&2; exit 1; }
  done
}
