//! Strong buckets over the simulated network (`ringkv_actors::sim`): concurrent clients on
//! every node run get, put, delete and cas on a few keys through the real proposer
//! (`ringkv_actors::strong::propose`) while a seeded nemesis cuts, pauses, slows and drops
//! nodes; the recorded history is checked for linearizability
//! (`ringkv_tests::linearizability`). The same run with the protocol deliberately weakened
//! (`Proposer::set_weakened`) must be caught by the checker.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use ringkv_actors::rpc::ReplicaTransport;
use ringkv_actors::sim::{Fault, SimNetwork};
use ringkv_actors::strong::{propose, StrongError, StrongOp};
use ringkv_actors::NodeConfig;
use ringkv_cluster::membership::{ClusterState, Member, MemberStatus};
use ringkv_tests::linearizability::{CheckOptions, Op, Outcome, Recorder, Ret};
use serde_bytes::ByteBuf;
use std::time::{Duration, Instant};

const PARTITIONS: u32 = 8;
const BUCKET: &[u8] = b"strong";
const NODES: [&str; 3] = ["n1", "n2", "n3"];

struct Cluster {
    net: SimNetwork,
    _dirs: Vec<tempfile::TempDir>,
}

async fn start() -> Cluster {
    start_with(&NODES, &NODES).await
}

/// Nodes `names` started, a layout of `placed` committed in every node's view.
async fn start_with(names: &[&str], placed: &[&str]) -> Cluster {
    let net = SimNetwork::new();
    let mut dirs = Vec::new();
    for &name in names {
        let dir = tempfile::tempdir().unwrap();
        let config = NodeConfig {
            data_dir: dir.path().to_path_buf(),
            partitions: PARTITIONS,
            initial_map_bytes: 1 << 20,
            ..Default::default()
        };
        net.start_node(name, config).await.unwrap();
        dirs.push(dir);
    }
    let mut state = ClusterState::new(PARTITIONS);
    for (i, name) in placed.iter().enumerate() {
        state.upsert_member(member(name, i));
    }
    state.commit().unwrap();
    for &name in names {
        net.peer(name).context().view.merge(&state);
    }
    Cluster { net, _dirs: dirs }
}

fn member(name: &str, i: usize) -> Member {
    Member {
        name: name.to_string(),
        cluster_addr: format!("127.0.0.{}:7411", i + 1),
        client_addr: format!("127.0.0.{}:7392", i + 1),
        zone: format!("z{i}"),
        capacity: 1,
        status: MemberStatus::Joining,
        version: 0,
        incarnation: 1,
        actor_addr: String::new(),
    }
}

/// Runs one strong operation through node `at`'s proposer and records it.
#[allow(clippy::too_many_arguments)]
async fn run_op(
    net: &SimNetwork,
    routed: bool,
    rec: &Recorder,
    client: u64,
    at: &str,
    key: &[u8],
    op: Op,
) -> Option<Vec<u8>> {
    let id = rec.invoke(client, key.to_vec(), op.clone());
    let strong = match &op {
        Op::Get => StrongOp::Get,
        Op::Put(v) => StrongOp::Put {
            value: ByteBuf::from(v.clone()),
        },
        Op::Delete => StrongOp::Delete,
        Op::Cas { expect, new } => StrongOp::Cas {
            expect: expect.clone().map(ByteBuf::from),
            new: new.clone().map(ByteBuf::from),
        },
    };
    let partition = ringkv_cluster::partition_for(BUCKET, key, PARTITIONS);
    // Routed as `Node::strong` does (the key's first replica reachable from `at` proposes),
    // or proposed by `at` itself: every node a proposer, duelling for the keys.
    let from = net.peer(at);
    let prefs = from.context().view.placements().prefs[partition as usize].clone();
    let proposer = prefs
        .iter()
        .take(3)
        .find(|n| routed && from.reachable(n))
        .cloned()
        .unwrap_or_else(|| at.to_string());
    let peer = net.peer(&proposer);
    let result = propose(
        &peer,
        partition,
        BUCKET,
        key,
        &strong,
        3,
        Duration::from_millis(400),
    )
    .await;
    let (outcome, seen) = match (&op, result) {
        (Op::Get, Ok(r)) => {
            let v = r.value.map(|v| v.into_vec());
            (Outcome::Ok(Ret::Get(v.clone())), v)
        }
        (Op::Cas { new, .. }, Ok(_)) => (Outcome::Ok(Ret::Cas(true)), new.clone()),
        (Op::Put(v), Ok(_)) => (Outcome::Ok(Ret::Done), Some(v.clone())),
        (_, Ok(_)) => (Outcome::Ok(Ret::Done), None),
        (_, Err(StrongError::ConditionFailed { current })) => {
            (Outcome::Ok(Ret::Cas(false)), current.map(|v| v.into_vec()))
        }
        (_, Err(StrongError::Indeterminate(e))) => {
            if std::env::var("STRONG_DEBUG").is_ok() {
                eprintln!("info at {at}: {e}");
            }
            (Outcome::Info, None)
        }
        (_, Err(e)) => {
            if std::env::var("STRONG_DEBUG").is_ok() {
                eprintln!("fail at {at}: {e}");
            }
            (Outcome::Fail, None)
        }
    };
    rec.complete(id, outcome);
    seen
}

/// Runs `clients` clients (spread over the nodes) for `ops_per_client` operations each on
/// `keys` keys while `nemesis` runs; returns the recorder.
/// Clients propose on their own node (`routed: false`: every node a proposer, duelling) or
/// route to the key's first replica as `Node::strong` does.
async fn workload(
    c: &Cluster,
    routed: bool,
    seed: u64,
    clients: u64,
    ops_per_client: usize,
    keys: usize,
    stop_after: Duration,
) -> Recorder {
    workload_on(
        c,
        &NODES,
        routed,
        MIX,
        seed,
        clients,
        ops_per_client,
        keys,
        stop_after,
    )
    .await
}

/// Percent of gets, puts and cases of a workload; the rest are deletes.
type Mix = [u32; 3];
/// The usual mix: 40 % get, 25 % put, 25 % cas, 10 % delete.
const MIX: Mix = [40, 25, 25];
/// Half of the writes delete: 35 % get, 20 % put, 20 % cas, 25 % delete.
const DELETES: Mix = [35, 20, 20];

/// [`workload`] with clients spread over `nodes`, with the operation mix `mix`.
#[allow(clippy::too_many_arguments)]
async fn workload_on(
    c: &Cluster,
    nodes: &[&'static str],
    routed: bool,
    mix: Mix,
    seed: u64,
    clients: u64,
    ops_per_client: usize,
    keys: usize,
    stop_after: Duration,
) -> Recorder {
    let nodes: Vec<&'static str> = nodes.to_vec();
    let rec = Recorder::new();
    let deadline = Instant::now() + stop_after;
    let mut tasks = Vec::new();
    for client in 0..clients {
        let net = c.net.clone();
        let rec = rec.clone();
        let at = nodes[client as usize % nodes.len()];
        tasks.push(tokio::spawn(async move {
            let mut rng = StdRng::seed_from_u64(seed * 1000 + client);
            let mut last: Vec<Option<Vec<u8>>> = vec![None; keys];
            for i in 0..ops_per_client {
                if Instant::now() > deadline {
                    break;
                }
                let k = rng.gen_range(0..keys);
                let key = format!("k{k}").into_bytes();
                let fresh = format!("c{client}-{i}").into_bytes();
                let roll = rng.gen_range(0..100);
                let op = if roll < mix[0] {
                    Op::Get
                } else if roll < mix[0] + mix[1] {
                    Op::Put(fresh)
                } else if roll < mix[0] + mix[1] + mix[2] {
                    Op::Cas {
                        expect: last[k].clone(),
                        new: Some(fresh),
                    }
                } else {
                    Op::Delete
                };
                let seen = run_op(&net, routed, &rec, client, at, &key, op.clone()).await;
                if matches!(op, Op::Get | Op::Cas { .. }) || seen.is_some() {
                    last[k] = seen;
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    rec
}

/// A seeded schedule of faults, one at a time, each held for `hold`, until `until`.
async fn nemesis(net: SimNetwork, seed: u64, hold: Duration, until: Instant) -> Vec<String> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut log = Vec::new();
    while Instant::now() + hold < until {
        let node = NODES[rng.gen_range(0..NODES.len())];
        let fault = match rng.gen_range(0..4) {
            0 => Fault::Cut,
            1 => Fault::Pause,
            2 => Fault::Drop,
            _ => Fault::Delay(Duration::from_millis(rng.gen_range(5..60))),
        };
        log.push(format!("{node}: {fault:?}"));
        net.set_fault(node, Some(fault));
        tokio::time::sleep(hold).await;
        net.heal_all();
        tokio::time::sleep(hold / 2).await;
    }
    log
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn strong_operations_stay_linearizable_under_a_seeded_fault_schedule() {
    let c = start().await;
    let seed = std::env::var("RINGKV_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(7u64);
    let run_for = Duration::from_secs(8);
    let until = Instant::now() + run_for;
    let faults = tokio::spawn(nemesis(
        c.net.clone(),
        seed,
        Duration::from_millis(400),
        until,
    ));
    let rec = workload(&c, true, seed, 9, 400, 3, run_for).await;
    let log = faults.await.unwrap();
    c.net.heal_all();
    let history = rec.history();
    let report = history.check(&CheckOptions::default());
    let ops = history.len();
    let oks = rec_ok_count(&history);
    println!("seed {seed}: {ops} operations ({oks} ok), faults: {log:?}");
    println!("{report:?}");
    assert!(
        oks > 200,
        "too few operations completed to check anything: {oks}"
    );
    assert!(!log.is_empty());
    assert!(report.is_linearizable(), "seed {seed}: {report:?}");
    // Every node answered reads in one round trip when its majority agreed.
    let quorum_reads = stat(&c, "quorum_reads");
    assert!(quorum_reads > 0);
    c.net.shutdown().await;
}

/// Counter `name` of the proposers ([`ringkv_actors::strong::ProposerStats::snapshot`]),
/// summed over the three nodes.
fn stat(c: &Cluster, name: &str) -> u64 {
    NODES
        .iter()
        .map(|n| c.net.peer(n).context().strong.stats.snapshot()[name])
        .sum()
}

fn rec_ok_count(h: &ringkv_tests::linearizability::History) -> usize {
    h.ops
        .iter()
        .filter(|o| matches!(o.outcome, Outcome::Ok(_)))
        .count()
}

/// Every node proposes for every key (no routing to the key's first replica): proposers
/// duel for the same keys, ballots are refused and retried, accepts land on minorities.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn duelling_proposers_stay_linearizable() {
    let c = start().await;
    let until = Instant::now() + Duration::from_secs(4);
    let faults = tokio::spawn(nemesis(c.net.clone(), 3, Duration::from_millis(300), until));
    let rec = workload(&c, false, 3, 3, 400, 2, Duration::from_secs(4)).await;
    let log = faults.await.unwrap();
    c.net.heal_all();
    let history = rec.history();
    let report = history.check(&CheckOptions::default());
    let oks = rec_ok_count(&history);
    println!(
        "duelling: {} operations ({oks} ok), faults {log:?}: {report:?}",
        history.len()
    );
    assert!(oks > 100, "too few operations completed: {oks}");
    assert!(report.is_linearizable(), "{report:?}");
    let conflicts = stat(&c, "conflicts");
    assert!(conflicts > 0, "the proposers never duelled");
    c.net.shutdown().await;
}

/// The checker's self-test on a real run: with the protocol weakened (one replica counts as
/// a majority) and one node cut off, clients on both sides see different registers, and the
/// checker must report it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_checker_catches_a_weakened_protocol() {
    let c = start().await;
    for n in NODES {
        c.net.peer(n).context().strong.set_weakened(true);
    }
    let net = c.net.clone();
    let until = Instant::now() + Duration::from_secs(3);
    let cut = tokio::spawn(async move {
        net.set_fault("n3", Some(Fault::Cut));
        tokio::time::sleep_until(until.into()).await;
        net.heal_all();
    });
    let rec = workload(&c, false, 11, 6, 300, 2, Duration::from_secs(3)).await;
    cut.await.unwrap();
    let history = rec.history();
    let report = history.check(&CheckOptions::default());
    println!("{} operations: {report:?}", history.len());
    assert!(
        report.violation().is_some(),
        "the checker passed a weakened protocol: {report:?}"
    );
    c.net.shutdown().await;
}

/// Every view takes every other's state (what gossip does), `rounds` times.
fn gossip(net: &SimNetwork, names: &[&str]) {
    for _ in 0..2 {
        for a in names {
            let state = net.peer(a).context().view.snapshot();
            for b in names {
                net.peer(b).context().view.merge(&state);
            }
        }
    }
}

/// A layout change under load: n4 joins and n3 leaves while clients on all four nodes run
/// strong operations. Before it, "cold" keys are written while n2 is cut off, so their values
/// sit on n1 and n3 only; nobody writes them during the change. The new replica carries every
/// strong key over (`strong::carry_over`, from a majority of the old set, joint quorums)
/// before it reports its partitions transferred (unless `carry` is false); then the old
/// version is pruned, n1 is cut off, and the cold keys are read through n2, whose majority
/// is now {n2, n4}. Returns the checker's report and the number of keys carried over.
async fn layout_change(carry: bool) -> (ringkv_tests::linearizability::Report, u64, usize) {
    const ALL: [&str; 4] = ["n1", "n2", "n3", "n4"];
    let c = start_with(&ALL, &NODES).await;
    let rec = Recorder::new();
    // Cold keys: written on {n1, n3} alone.
    c.net.cut("n2");
    for k in 0..10 {
        let key = format!("cold{k}").into_bytes();
        run_op(
            &c.net,
            true,
            &rec,
            100,
            "n1",
            &key,
            Op::Put(b"cold".to_vec()),
        )
        .await;
    }
    c.net.heal_all();
    let run_for = Duration::from_secs(5);
    let net = c.net.clone();
    let change = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(1000)).await;
        // Commit v2: n4 joins, n3 leaves.
        let v2 = net
            .peer("n1")
            .context()
            .view
            .update(|s| {
                s.upsert_member(member("n4", 3));
                s.mark_leaving("n3")?;
                s.commit().map(|p| p.version)
            })
            .unwrap();
        gossip(&net, &ALL);
        // Every node acks v2 once its operations under v1 are done (the ack tracker).
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            for n in ALL {
                net.peer(n).context().view.advance();
            }
            gossip(&net, &ALL);
            let acked = ALL.iter().all(|n| {
                let s = net.peer(n).context().view.snapshot();
                ALL.iter()
                    .all(|m| s.trackers.ack.get(*m).copied().unwrap_or(0) >= v2)
            });
            if acked {
                break;
            }
            assert!(Instant::now() < deadline, "v2 never acked");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // n4's transfers: the strong keys of every partition it gains.
        let n4 = net.peer("n4");
        let tasks = n4.context().view.transfer_tasks();
        assert!(!tasks.is_empty());
        let mut carried = 0;
        for t in &tasks {
            if carry {
                carried += ringkv_actors::strong::carry_over(&n4, t.partition)
                    .await
                    .unwrap();
            }
            n4.context().view.transfer_done(t.version, t.partition);
        }
        // Sync, then prune v1.
        loop {
            for n in ALL {
                net.peer(n).context().view.advance();
            }
            gossip(&net, &ALL);
            if ALL
                .iter()
                .all(|n| !net.peer(n).context().view.read().in_transition())
            {
                break;
            }
            assert!(Instant::now() < deadline, "v1 never pruned");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        (tasks.len(), carried)
    });
    let hot = workload_on(&c, &ALL, true, MIX, 5, 8, 2000, 4, run_for).await;
    let (tasks, carried) = change.await.unwrap();
    // The old set is gone: read the cold keys through n2 with n1 cut off.
    c.net.cut("n1");
    for k in 0..10 {
        let key = format!("cold{k}").into_bytes();
        run_op(&c.net, true, &rec, 101, "n2", &key, Op::Get).await;
    }
    c.net.heal_all();
    let mut history = rec.history();
    history.ops.extend(hot.history().ops);
    let report = history.check(&CheckOptions::default());
    let oks = rec_ok_count(&history);
    println!(
        "layout change (carry over: {carry}): {tasks} partitions moved to n4, {carried} strong keys carried over; {} operations ({oks} ok): {report:?}",
        history.len()
    );
    assert!(oks > 200, "too few operations completed: {oks}");
    c.net.shutdown().await;
    (report, carried, oks)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn strong_operations_stay_linearizable_through_a_layout_change() {
    let (report, carried, _) = layout_change(true).await;
    assert!(
        carried >= 10,
        "the cold keys were not carried over: {carried}"
    );
    assert!(report.is_linearizable(), "{report:?}");
}

/// The same change with the carry-over left out must lose the cold keys, and the checker
/// must say so: the scenario can tell a correct membership change from a broken one.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_layout_change_without_carry_over_is_caught() {
    let (report, _, _) = layout_change(false).await;
    assert!(report.violation().is_some(), "{report:?}");
}

/// Garbage collection of deleted keys runs over and over while clients put, delete and cas
/// the same keys (half of the operations delete, so tombstones come and go), with the
/// nemesis running: erasing tombstones (and the ballot floor it raises) must not resurrect
/// a value or let a stale proposal through.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn erasing_deleted_keys_keeps_histories_linearizable() {
    let c = start().await;
    let run_for = Duration::from_secs(5);
    let until = Instant::now() + run_for;
    let faults = tokio::spawn(nemesis(
        c.net.clone(),
        21,
        Duration::from_millis(400),
        until,
    ));
    let net = c.net.clone();
    let gc = tokio::spawn(async move {
        let mut erased = 0;
        while Instant::now() < until {
            for n in NODES {
                let peer = net.peer(n);
                let prefs = peer.context().view.placements().prefs.clone();
                for (p, prefs) in prefs.iter().enumerate() {
                    erased += ringkv_actors::strong::collect_garbage(&peer, p as u32, prefs)
                        .await
                        .unwrap_or(0);
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        erased
    });
    let rec = workload_on(&c, &NODES, true, DELETES, 9, 6, 400, 8, run_for).await;
    let erased = gc.await.unwrap();
    faults.await.unwrap();
    c.net.heal_all();
    let history = rec.history();
    let report = history.check(&CheckOptions::default());
    let oks = rec_ok_count(&history);
    println!(
        "gc: {erased} keys erased; {} operations ({oks} ok): {report:?}",
        history.len()
    );
    // At least two erasures while the workload ran (the count varies with the load on the
    // machine: 4 to a few dozen seen on 2 cores).
    assert!(erased >= 2, "too few erasures to test anything: {erased}");
    assert!(oks > 200, "too few operations completed: {oks}");
    assert!(report.is_linearizable(), "{report:?}");
    c.net.shutdown().await;
}

/// Concurrent operations on one hot key share rounds: 8 clients at once on one key take far
/// fewer round trips than operations, and the history stays linearizable (more clients
/// would be more than the checker can search on one key).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_operations_on_a_hot_key_share_rounds() {
    let c = start().await;
    let rec = Recorder::new();
    let mut tasks = Vec::new();
    for client in 0..8u64 {
        let net = c.net.clone();
        let rec = rec.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..40 {
                let op = if (client + i) % 3 == 0 {
                    Op::Get
                } else {
                    Op::Put(format!("c{client}-{i}").into_bytes())
                };
                run_op(&net, true, &rec, client, "n1", b"hot", op).await;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let ops = stat(&c, "ops");
    let trips = stat(&c, "round_trips");
    let history = rec.history();
    let report = history.check(&CheckOptions::default());
    println!("hot key: {ops} operations in {trips} round trips: {report:?}");
    assert_eq!(rec_ok_count(&history), 320);
    // Without shared rounds every operation takes at least one round trip.
    assert!(
        trips * 4 < ops * 3,
        "{ops} operations took {trips} round trips"
    );
    assert!(report.is_linearizable(), "{report:?}");
    c.net.shutdown().await;
}

/// An accept that two replicas refused while the third has not answered yet did not
/// "write nothing": the third may accept it. Here n4 (outside the layout, so every replica is
/// remote) proposes a put; n1 and n2 promise a higher ballot between its two phases and
/// refuse its accept, while n3 accepts it but answers late; n1 and n2 answer slowly, so the
/// proposer's retry runs out of time. The put must then not be answered as `Unavailable`
/// (`no_majority`: nothing written), for a read that meets n3 finds its value.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_accept_refused_by_two_replicas_while_the_third_is_pending_is_not_unwritten() {
    use ringkv_actors::rpc::{Fenced, Paxos, PaxosRead};
    use ringkv_storage::paxos::{Ballot, PaxosStep};

    let c = start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = NodeConfig {
        data_dir: dir.path().to_path_buf(),
        partitions: PARTITIONS,
        initial_map_bytes: 1 << 20,
        ..Default::default()
    };
    c.net.start_node("n4", config).await.unwrap();
    let state = c.net.peer("n1").context().view.snapshot();
    c.net.peer("n4").context().view.merge(&state);
    let n4 = c.net.peer("n4");
    let layout = n4.context().view.placements().version;
    let key = b"pending".to_vec();
    let partition = ringkv_cluster::partition_for(BUCKET, &key, PARTITIONS);
    let step = Duration::from_millis(100);

    // Every replica serves at once and answers 3 steps later.
    for n in NODES {
        c.net.set_fault(n, Some(Fault::Delay(step * 3)));
    }
    let rec = Recorder::new();
    let put = rec.invoke(0, key.clone(), Op::Put(b"x".to_vec()));
    let proposing = tokio::spawn({
        let n4 = n4.clone();
        let key = key.clone();
        async move {
            let op = StrongOp::Put {
                value: ByteBuf::from(b"x".to_vec()),
            };
            propose(&n4, partition, BUCKET, &key, &op, 3, step * 15 / 2).await
        }
    });
    // Between the proposer's prepare (served at 0, answered at 3) and its accept (sent at 3):
    // n1 and n2 promise a higher ballot, and n3's answers start to take 50 steps.
    tokio::time::sleep(step).await;
    for n in ["n1", "n2"] {
        let req = Paxos {
            partition,
            bucket: ByteBuf::from(BUCKET.to_vec()),
            key: ByteBuf::from(key.clone()),
            step: PaxosStep::Prepare {
                ballot: Ballot {
                    counter: 1000,
                    proposer: 42,
                },
            },
            layout,
        };
        let n4 = n4.clone();
        tokio::spawn(async move { n4.call(n, req, Duration::from_secs(5)).await });
    }
    tokio::time::sleep(step).await;
    c.net.set_fault("n3", Some(Fault::Delay(step * 50)));
    let result = proposing.await.unwrap();
    println!("the put: {result:?}");
    rec.complete(
        put,
        match &result {
            Ok(_) => Outcome::Ok(Ret::Done),
            Err(StrongError::Unavailable(_)) => Outcome::Fail,
            Err(_) => Outcome::Info,
        },
    );

    // The scenario happened: n3 accepted the put's value.
    c.net.heal_all();
    let read = PaxosRead {
        partition,
        bucket: ByteBuf::from(BUCKET.to_vec()),
        key: ByteBuf::from(key.clone()),
        layout,
    };
    let on_n3 = n4.call("n3", read, Duration::from_secs(5)).await.unwrap();
    let Fenced::Ok(Some(on_n3)) = on_n3 else {
        panic!("n3's acceptor state: {on_n3:?}");
    };
    assert_eq!(on_n3.value.as_deref(), Some(&b"x"[..]), "n3: {on_n3:?}");

    // A read whose majority is n2 and n3 finds it.
    c.net.set_fault("n1", Some(Fault::Cut));
    let get = rec.invoke(1, key.clone(), Op::Get);
    let got = propose(
        &n4,
        partition,
        BUCKET,
        &key,
        &StrongOp::Get,
        3,
        Duration::from_secs(2),
    )
    .await
    .expect("the read");
    rec.complete(
        get,
        Outcome::Ok(Ret::Get(got.value.clone().map(|v| v.into_vec()))),
    );
    let report = rec.history().check(&CheckOptions::default());
    assert!(
        report.is_linearizable(),
        "put answered {result:?}, then a read found {:?}: {report}",
        got.value
    );
    c.net.shutdown().await;
}
