//! Partition transfer over a simulated network (`ringkv_actors::sim`): in-process nodes with
//! real storage, a Transfer actor on the receiving node, faults injected per node. Every
//! scenario waits for conditions by polling with a deadline, never a fixed sleep; transfers
//! that must be caught mid-stream are slowed down by their own throttle.

mod common;
use common::until_within;
use ractor::{Actor, ActorRef};
use ringkv_actors::rpc::{MergeStored, ReplicaTransport};
use ringkv_actors::sim::{SimNetwork, SimPeer};
use ringkv_actors::transfer::{
    progress_key, Transfer, TransferArgs, TransferConfig, TransferEvents, TransferHandle,
    TransferMsg, TransferRow, TransferState, TransferTask,
};
use ringkv_actors::NodeConfig;
use ringkv_storage::{keys, DvvSet, VersionVector};
use serde_bytes::ByteBuf;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const Q: u32 = 4;
const BUCKET: &[u8] = b"b";
/// Chunk budget of every scenario: a few-thousand-key partition takes dozens of chunks.
const CHUNK: usize = 16 << 10;
/// A rate at which nothing in these scenarios waits for the throttle.
const FAST: u64 = 1 << 30;

/// Nodes on a simulated network; their data directories go with it.
struct Cluster {
    net: SimNetwork,
    _dirs: Vec<tempfile::TempDir>,
}

impl Cluster {
    async fn start(names: &[&str]) -> Cluster {
        let net = SimNetwork::new();
        let mut dirs = Vec::new();
        for name in names {
            let dir = tempfile::tempdir().unwrap();
            let config = NodeConfig {
                data_dir: dir.path().to_path_buf(),
                partitions: Q,
                initial_map_bytes: 8 << 20,
                ..Default::default()
            };
            net.start_node(name, config).await.unwrap();
            dirs.push(dir);
        }
        Cluster { net, _dirs: dirs }
    }

    fn peer(&self, node: &str) -> SimPeer {
        self.net.peer(node)
    }

    /// Merges `records` into partition `p` of each of `nodes`, through their vnodes.
    async fn load(&self, nodes: &[&str], p: u32, records: &[(Vec<u8>, DvvSet)]) {
        for node in nodes {
            let peer = self.peer(node);
            for batch in records.chunks(500) {
                let merge = MergeStored {
                    partition: p,
                    entries: batch
                        .iter()
                        .map(|(k, d)| (ByteBuf::from(k.clone()), d.clone()))
                        .collect(),
                };
                let merged = peer
                    .call(node, merge, Duration::from_secs(30))
                    .await
                    .unwrap();
                assert_eq!(merged, batch.len());
            }
        }
    }

    /// Keys of partition `p` stored on `node`.
    fn keys(&self, node: &str, p: u32) -> u64 {
        self.peer(node)
            .context()
            .partition(p)
            .unwrap()
            .stats()
            .unwrap()
            .keys
    }

    /// True if partition `p` has the same Merkle tree on `a` and `b`.
    fn same_tree(&self, a: &str, b: &str, p: u32) -> bool {
        let tree = |n: &str| self.peer(n).context().partition(p).unwrap().merkle_tree();
        tree(a) == tree(b)
    }
}

/// `n` stored keys of partition `p` with their first states (100-byte values), the `from`-th
/// key of the partition on.
fn records(p: u32, from: usize, n: usize) -> Vec<(Vec<u8>, DvvSet)> {
    (0..)
        .map(|i| format!("key-{i}"))
        .filter(|k| ringkv_cluster::partition_for(BUCKET, k.as_bytes(), Q) == p)
        .skip(from)
        .take(n)
        .map(|k| {
            let mut d = DvvSet::new();
            d.update(&VersionVector::new(), 7, Some(vec![b'v'; 100]), 1, 100)
                .unwrap();
            (keys::storage_key(BUCKET, k.as_bytes()).unwrap(), d)
        })
        .collect()
}

/// Each record's state after a later write (by replica 9) of `value`.
fn overwritten(records: &[(Vec<u8>, DvvSet)], value: &[u8]) -> Vec<(Vec<u8>, DvvSet)> {
    records
        .iter()
        .map(|(k, d)| {
            let mut d = d.clone();
            let context = d.clock.clone();
            d.update(&context, 9, Some(value.to_vec()), 2, 100).unwrap();
            (k.clone(), d)
        })
        .collect()
}

/// Records every `done` call.
#[derive(Default)]
struct Events(Mutex<Vec<(u64, u32)>>);

impl Events {
    fn calls(&self, version: u64, partition: u32) -> usize {
        let calls = self.0.lock().unwrap();
        calls.iter().filter(|c| **c == (version, partition)).count()
    }
}

impl TransferEvents for Events {
    fn done(&self, version: u64, partition: u32) {
        self.0.lock().unwrap().push((version, partition));
    }
}

/// A Transfer actor on `node` (what the NodeSupervisor starts on a real node).
async fn transfer(
    c: &Cluster,
    node: &str,
    handle: &Arc<TransferHandle>,
    events: &Arc<Events>,
    concurrency: usize,
    rate: u64,
) -> (ActorRef<TransferMsg>, tokio::task::JoinHandle<()>) {
    let peer = c.peer(node);
    let args = TransferArgs {
        system: peer.system(),
        peers: peer,
        events: events.clone(),
        handle: handle.clone(),
        config: TransferConfig {
            concurrency,
            max_bytes_per_sec: rate,
            chunk_bytes: CHUNK,
        },
    };
    Actor::spawn(None, Transfer::<SimPeer>::new(), args)
        .await
        .unwrap()
}

fn task(version: u64, partition: u32, sources: &[&str]) -> TransferTask {
    TransferTask {
        version,
        partition,
        sources: sources.iter().map(|s| s.to_string()).collect(),
    }
}

/// How long a transfer test waits for a condition, and how often it looks.
const WAIT: Duration = Duration::from_secs(20);
const POLL: Duration = Duration::from_millis(2);

/// Polls the actor's status until `check` accepts it; returns that status.
async fn until_status(
    handle: &TransferHandle,
    mut check: impl FnMut(&[TransferRow]) -> bool,
) -> Vec<TransferRow> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let rows = handle.status().await;
        if check(&rows) {
            return rows;
        }
        assert!(Instant::now() < deadline, "status never came: {rows:?}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

fn chunks(handle: &TransferHandle) -> u64 {
    handle.counters().snapshot().0
}

fn keys_fetched(handle: &TransferHandle) -> u64 {
    handle.counters().snapshot().1
}

/// Keys in one chunk, at most (16 KiB of ~130-byte entries).
const KEYS_PER_CHUNK: u64 = (CHUNK / 100) as u64;

#[tokio::test]
async fn a_new_replica_pulls_a_partition_in_chunks_and_verifies_it() {
    let c = Cluster::start(&["a", "b"]).await;
    let p = 1;
    c.load(&["a"], p, &records(p, 0, 3000)).await;
    let (handle, events) = (TransferHandle::new(), Arc::new(Events::default()));
    let (actor, _) = transfer(&c, "b", &handle, &events, 2, FAST).await;

    handle.want(vec![task(1, p, &["a"])]);
    until_within(WAIT, POLL, || match events.calls(1, p) {
        0 => Err("not done".into()),
        _ => Ok(()),
    })
    .await;
    assert_eq!(c.keys("b", p), 3000);
    assert!(c.same_tree("a", "b", p), "Merkle roots differ");
    assert_eq!(events.calls(1, p), 1);
    let (chunks_done, keys, bytes, _) = handle.counters().snapshot();
    assert!(chunks_done > 10, "{chunks_done} chunks");
    assert_eq!(keys, 3000);
    let rows = handle.status().await;
    let stats_a = c.peer("a").context().partition(p).unwrap().stats().unwrap();
    assert_eq!(
        rows,
        vec![TransferRow {
            version: 1,
            partition: p,
            from: "a".into(),
            to: "b".into(),
            bytes_sent: bytes,
            bytes_total: stats_a.bytes,
            keys: 3000,
            resumed_bytes: 0,
            state: TransferState::Done,
        }]
    );
    assert_eq!(
        bytes, stats_a.bytes,
        "bytes are counted as the source counts them"
    );
    // Other partitions were not touched.
    assert_eq!(c.keys("b", 0) + c.keys("b", 2) + c.keys("b", 3), 0);

    // Wanted again (as after a restart of the node): reported again, not streamed again.
    handle.want(vec![task(1, p, &["a"])]);
    until_within(WAIT, POLL, || match events.calls(1, p) {
        1 => Err("not reported again".into()),
        _ => Ok(()),
    })
    .await;
    assert_eq!(chunks(&handle), chunks_done);
    actor.stop_and_wait(None, None).await.unwrap();
    c.net.shutdown().await;
}

#[tokio::test]
async fn writes_made_on_the_source_during_the_stream_reach_the_new_replica() {
    let c = Cluster::start(&["a", "b"]).await;
    let p = 2;
    let first = records(p, 0, 3000);
    c.load(&["a"], p, &first).await;
    let (handle, events) = (TransferHandle::new(), Arc::new(Events::default()));
    // About 1.5 s of streaming.
    let (actor, _) = transfer(&c, "b", &handle, &events, 2, 300 << 10).await;
    handle.want(vec![task(1, p, &["a"])]);

    // Halfway through, the source takes writes the new replica does not (as if the
    // coordinator's copy to it were lost): overwrites of keys on both sides of the stream's
    // position, and new keys.
    until_within(WAIT, POLL, || match keys_fetched(&handle) {
        k if k >= 1500 => Ok(()),
        k => Err(format!("{k} keys fetched")),
    })
    .await;
    assert_eq!(events.calls(1, p), 0, "the stream should still be running");
    let changed = overwritten(&first[..300], b"new");
    let added = records(p, 3000, 100);
    c.load(&["a"], p, &changed).await;
    c.load(&["a"], p, &added).await;

    until_within(WAIT, POLL, || match events.calls(1, p) {
        0 => Err("not done".into()),
        _ => Ok(()),
    })
    .await;
    assert!(c.same_tree("a", "b", p), "Merkle roots differ");
    assert_eq!(c.keys("b", p), 3100);
    for (k, d) in changed.iter().chain(&added) {
        let here = c
            .peer("b")
            .context()
            .partition(p)
            .unwrap()
            .get_stored(k)
            .unwrap();
        assert_eq!(here.as_ref(), Some(d));
    }
    assert!(handle.counters().snapshot().3 >= 1, "verification ran");
    actor.stop_and_wait(None, None).await.unwrap();
    c.net.shutdown().await;
}

#[tokio::test]
async fn a_source_cut_mid_stream_is_replaced_by_the_next_from_the_same_position() {
    let c = Cluster::start(&["a", "b", "c", "d"]).await;
    let p = 3;
    c.load(&["a", "c", "d"], p, &records(p, 0, 3000)).await;
    let (handle, events) = (TransferHandle::new(), Arc::new(Events::default()));
    let (actor, _) = transfer(&c, "b", &handle, &events, 2, 300 << 10).await;
    // Three holders: with a cut, the other two are still a majority to verify against.
    handle.want(vec![task(1, p, &["a", "c", "d"])]);

    until_status(&handle, |rows| {
        rows.first()
            .is_some_and(|r| r.from == "a" && r.keys >= 1000)
    })
    .await;
    c.net.cut("a");
    let fetched_at_cut = keys_fetched(&handle);
    assert!(fetched_at_cut < 3000, "{fetched_at_cut}");

    until_within(WAIT, POLL, || match events.calls(1, p) {
        0 => Err("not done".into()),
        _ => Ok(()),
    })
    .await;
    assert!(c.same_tree("c", "b", p), "Merkle roots differ");
    assert_eq!(c.keys("b", p), 3000);
    let rows = handle.status().await;
    assert_ne!(rows[0].from, "a", "the cut source is not used again");
    assert_eq!(rows[0].state, TransferState::Done);
    // Continued, not restarted: at most the chunk in flight at the cut came twice.
    let fetched = keys_fetched(&handle);
    assert!(
        fetched <= 3000 + KEYS_PER_CHUNK,
        "{fetched} keys fetched for 3000"
    );
    actor.stop_and_wait(None, None).await.unwrap();
    c.net.shutdown().await;
}

#[tokio::test]
async fn a_killed_transfer_actor_resumes_from_its_last_merged_chunk() {
    let c = Cluster::start(&["a", "b"]).await;
    let p = 0;
    c.load(&["a"], p, &records(p, 0, 3000)).await;
    let (handle, events) = (TransferHandle::new(), Arc::new(Events::default()));
    let (actor, join) = transfer(&c, "b", &handle, &events, 2, 300 << 10).await;
    handle.want(vec![task(4, p, &["a"])]);
    until_within(WAIT, POLL, || match keys_fetched(&handle) {
        k if k >= 1500 => Ok(()),
        k => Err(format!("{k} keys fetched")),
    })
    .await;
    actor.kill();
    join.await.unwrap();
    let before = handle.counters().snapshot();
    assert_eq!(events.calls(4, p), 0);
    let system = c.peer("b").system();
    let persisted = system.get_meta(&progress_key(4, p)).unwrap();
    assert!(persisted.is_some(), "a resume point was persisted");

    // The next incarnation takes the Want the handle remembers and goes on from there.
    let (actor, _) = transfer(&c, "b", &handle, &events, 2, FAST).await;
    until_within(WAIT, POLL, || match events.calls(4, p) {
        0 => Err("not done".into()),
        _ => Ok(()),
    })
    .await;
    assert!(c.same_tree("a", "b", p), "Merkle roots differ");
    let after = handle.counters().snapshot();
    let (chunks_after, keys_after) = (after.0 - before.0, after.1 - before.1);
    // A restart from zero would fetch 3000 keys again; the resumed run fetches what was
    // left, plus at most the chunk that was in flight at the kill.
    assert!(
        keys_after + before.1 <= 3000 + KEYS_PER_CHUNK,
        "{} keys before the kill, {keys_after} after",
        before.1
    );
    assert!(
        keys_after <= 1500 + KEYS_PER_CHUNK,
        "{keys_after} keys after the kill"
    );
    assert!(
        chunks_after < before.0 * 2,
        "{chunks_after} chunks after, {} before",
        before.0
    );
    let rows = handle.status().await;
    assert_eq!(rows[0].keys, 3000, "{rows:?}");
    actor.stop_and_wait(None, None).await.unwrap();
    c.net.shutdown().await;
}

#[tokio::test]
async fn at_most_transfer_concurrency_tasks_run_at_once() {
    let c = Cluster::start(&["a", "b"]).await;
    for p in 0..Q {
        c.load(&["a"], p, &records(p, 0, 600)).await;
    }
    let (handle, events) = (TransferHandle::new(), Arc::new(Events::default()));
    // About 1 s for the four partitions.
    let (actor, _) = transfer(&c, "b", &handle, &events, 2, 300 << 10).await;
    handle.want((0..Q).map(|p| task(1, p, &["a"])).collect());

    let mut most = 0;
    let mut seen: BTreeMap<u32, Vec<TransferState>> = BTreeMap::new();
    let rows = until_status(&handle, |rows| {
        let running = rows
            .iter()
            .filter(|r| matches!(r.state, TransferState::Streaming | TransferState::Verifying))
            .count();
        most = most.max(running);
        assert!(running <= 2, "{running} running: {rows:?}");
        for r in rows {
            let states = seen.entry(r.partition).or_default();
            if states.last() != Some(&r.state) {
                states.push(r.state.clone());
            }
        }
        rows.len() == Q as usize && rows.iter().all(|r| r.state == TransferState::Done)
    })
    .await;
    assert_eq!(most, 2, "two ran at once");
    // The last two waited, queued, while the first two streamed.
    for p in 2..Q {
        assert_eq!(seen[&p][0], TransferState::Queued, "{seen:?}");
    }
    for p in 0..Q {
        assert_eq!(events.calls(1, p), 1);
        assert!(c.same_tree("a", "b", p));
    }
    assert_eq!(rows.iter().map(|r| r.keys).sum::<u64>(), 600 * u64::from(Q));
    actor.stop_and_wait(None, None).await.unwrap();
    c.net.shutdown().await;
}

#[tokio::test]
async fn a_task_left_out_of_want_stops() {
    let c = Cluster::start(&["a", "b"]).await;
    let (p, other) = (1, 2);
    c.load(&["a"], p, &records(p, 0, 3000)).await;
    c.load(&["a"], other, &records(other, 0, 200)).await;
    let (handle, events) = (TransferHandle::new(), Arc::new(Events::default()));
    let (actor, _) = transfer(&c, "b", &handle, &events, 2, 300 << 10).await;
    handle.want(vec![task(1, p, &["a"])]);
    until_within(WAIT, POLL, || match c.keys("b", p) {
        k if k >= 300 => Ok(()),
        k => Err(format!("{k} keys merged")),
    })
    .await;

    // The next Want leaves partition p out and asks for another one.
    handle.want(vec![task(1, other, &["a"])]);
    let rows = handle.status().await;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].partition, other);
    let at_cancel = c.keys("b", p);
    until_within(WAIT, POLL, || match events.calls(1, other) {
        0 => Err("the other partition is not done".into()),
        _ => Ok(()),
    })
    .await;
    // While the other transfer ran (sharing the same throttle), p got at most the chunk
    // that was in flight when it was cancelled.
    let now = c.keys("b", p);
    assert!(now <= at_cancel + KEYS_PER_CHUNK, "{at_cancel} -> {now}");
    assert!(now < 3000);
    assert_eq!(events.calls(1, p), 0);
    actor.stop_and_wait(None, None).await.unwrap();
    c.net.shutdown().await;
}

#[tokio::test]
async fn a_task_with_no_reachable_source_shows_failed_and_takes_new_sources_at_once() {
    let c = Cluster::start(&["a", "b", "c"]).await;
    let p = 2;
    c.load(&["a", "c"], p, &records(p, 0, 500)).await;
    c.net.cut("a");
    let (handle, events) = (TransferHandle::new(), Arc::new(Events::default()));
    let (actor, _) = transfer(&c, "b", &handle, &events, 2, FAST).await;
    handle.want(vec![task(1, p, &["a"])]);
    let rows = until_status(&handle, |rows| {
        rows.first()
            .is_some_and(|r| matches!(r.state, TransferState::Failed { .. }))
    })
    .await;
    let TransferState::Failed { reason } = &rows[0].state else {
        unreachable!()
    };
    assert!(reason.contains("a is unreachable"), "{reason}");

    // The node learns of another holder: the task is retried now, not after its backoff.
    handle.want(vec![task(1, p, &["c"])]);
    until_within(WAIT, POLL, || match events.calls(1, p) {
        0 => Err("not done".into()),
        _ => Ok(()),
    })
    .await;
    assert!(c.same_tree("c", "b", p));
    actor.stop_and_wait(None, None).await.unwrap();
    c.net.shutdown().await;
}

/// A transfer is verified only against a majority of the sources: with two of three holders
/// cut, the stream from the third completes but the task does not count as done (a write
/// acknowledged by the two cut ones alone would be missing), until one of them is back.
#[tokio::test]
async fn verification_needs_a_majority_of_the_sources() {
    let c = Cluster::start(&["a", "b", "c", "d"]).await;
    let p = 1;
    c.load(&["a", "c", "d"], p, &records(p, 0, 200)).await;
    c.net.cut("c");
    c.net.cut("d");
    let (handle, events) = (TransferHandle::new(), Arc::new(Events::default()));
    let (actor, _) = transfer(&c, "b", &handle, &events, 2, FAST).await;
    handle.want(vec![task(1, p, &["a", "c", "d"])]);
    let rows = until_status(&handle, |rows| {
        rows.first()
            .is_some_and(|r| matches!(r.state, TransferState::Failed { .. }))
    })
    .await;
    let TransferState::Failed { reason } = &rows[0].state else {
        unreachable!()
    };
    assert!(reason.contains("majority"), "{reason}");
    assert_eq!(events.calls(1, p), 0);
    c.net.heal("d");
    handle.want(vec![task(1, p, &["a", "c", "d"])]);
    until_within(WAIT, POLL, || match events.calls(1, p) {
        0 => Err("not done".into()),
        _ => Ok(()),
    })
    .await;
    assert_eq!(c.keys("b", p), 200);
    actor.stop_and_wait(None, None).await.unwrap();
    c.net.shutdown().await;
}
