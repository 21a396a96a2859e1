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
    let net = SimNetwork::new();
    let mut dirs = Vec::new();
    for name in NODES {
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
    for (i, name) in NODES.iter().enumerate() {
        state.upsert_member(Member {
            name: name.to_string(),
            cluster_addr: format!("127.0.0.{}:7411", i + 1),
            client_addr: format!("127.0.0.{}:7392", i + 1),
            zone: format!("z{i}"),
            capacity: 1,
            status: MemberStatus::Joining,
            version: 0,
            incarnation: 1,
        });
    }
    state.commit().unwrap();
    for name in NODES {
        net.peer(name).context().view.merge(&state);
    }
    Cluster { net, _dirs: dirs }
}

/// Runs one strong operation through node `at`'s proposer and records it.
async fn run_op(
    net: &SimNetwork,
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
    let peer = net.peer(at);
    let partition = ringkv_cluster::partition_for(BUCKET, key, PARTITIONS);
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
        (_, Err(StrongError::ConditionFailed { current })) => (
            Outcome::Ok(Ret::Cas(false)),
            current.map(|v| v.into_vec()),
        ),
        (_, Err(StrongError::Indeterminate(_))) => (Outcome::Info, None),
        (_, Err(_)) => (Outcome::Fail, None),
    };
    rec.complete(id, outcome);
    seen
}

/// Runs `clients` clients (spread over the nodes) for `ops_per_client` operations each on
/// `keys` keys while `nemesis` runs; returns the recorder.
async fn workload(c: &Cluster, seed: u64, clients: u64, ops_per_client: usize, keys: usize, stop_after: Duration) -> Recorder {
    let rec = Recorder::new();
    let deadline = Instant::now() + stop_after;
    let mut tasks = Vec::new();
    for client in 0..clients {
        let net = c.net.clone();
        let rec = rec.clone();
        tasks.push(tokio::spawn(async move {
            let mut rng = StdRng::seed_from_u64(seed * 1000 + client);
            let at = NODES[client as usize % NODES.len()];
            let mut last: Vec<Option<Vec<u8>>> = vec![None; keys];
            for i in 0..ops_per_client {
                if Instant::now() > deadline {
                    break;
                }
                let k = rng.gen_range(0..keys);
                let key = format!("k{k}").into_bytes();
                let fresh = format!("c{client}-{i}").into_bytes();
                let op = match rng.gen_range(0..100) {
                    0..40 => Op::Get,
                    40..65 => Op::Put(fresh),
                    65..90 => Op::Cas {
                        expect: last[k].clone(),
                        new: Some(fresh),
                    },
                    _ => Op::Delete,
                };
                let seen = run_op(&net, &rec, client, at, &key, op.clone()).await;
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
    let faults = tokio::spawn(nemesis(c.net.clone(), seed, Duration::from_millis(400), until));
    let rec = workload(&c, seed, 9, 400, 3, run_for).await;
    let log = faults.await.unwrap();
    c.net.heal_all();
    let history = rec.history();
    let report = history.check(&CheckOptions::default());
    let ops = history.len();
    let oks = rec_ok_count(&history);
    println!("seed {seed}: {ops} operations ({oks} ok), faults: {log:?}");
    println!("{report:?}");
    assert!(oks > 200, "too few operations completed to check anything: {oks}");
    assert!(!log.is_empty());
    assert!(report.is_linearizable(), "seed {seed}: {report:?}");
    // The proposers counted every operation of the history once, and answered reads in one
    // round trip when their majority agreed.
    let sum = |counter: &str| -> u64 {
        NODES
            .iter()
            .map(|n| c.net.peer(n).context().strong.stats.snapshot()[counter])
            .sum()
    };
    assert_eq!(sum("ops"), ops as u64);
    assert!(sum("quorum_reads") > 0);
    // Operations queued on a key run in batches, one round each.
    assert!(sum("batches") > 0 && sum("batches") <= sum("ops"));
    c.net.shutdown().await;
}

fn rec_ok_count(h: &ringkv_tests::linearizability::History) -> usize {
    h.ops
        .iter()
        .filter(|o| matches!(o.outcome, Outcome::Ok(_)))
        .count()
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
    let rec = workload(&c, 11, 6, 300, 2, Duration::from_secs(3)).await;
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
