//! Real network faults: every node in a network namespace of its own, partitions made of
//! iptables DROP rules on both ends of each cut link ([`Cluster::start_netns`]). Packets are
//! lost, not refused, so TCP sessions stall as across a pulled cable, which the injected drop
//! rule of `healing.rs` cannot show (it lets ractor_cluster's own pings through).
//!
//! These tests need root, `ip` (iproute2) and `iptables`; elsewhere each prints `SKIP ...`
//! naming what is missing and returns (`RINGKV_REQUIRE_NETNS=1` makes that a failure, as in
//! CI). They run one at a time ([`serial`]) and print their figures with `--nocapture`:
//!
//! ```sh
//! sudo -E cargo test -p ringkv-tests --test netfaults -- --nocapture
//! ```

use ringkv_api::Client;
use ringkv_tests::workload::{
    call, connect, for_each_concurrent, local_copies, names, random_faults, test_seed, Copies,
    Deadline, Failure,
};
use ringkv_tests::{quorum as q, runtime as rt, Cluster};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

static SERIAL: Mutex<()> = Mutex::new(());

/// One scenario at a time. A failed scenario poisons the lock; the next one goes on.
fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

/// Heartbeat period of the test nodes (the harness's `--heartbeat-ms`), ms.
const HEARTBEAT_MS: u64 = 200;

/// Starts `size` nodes in network namespaces with 16 partitions, a handoff round every 200 ms
/// and an anti-entropy round every `repair_ms` (0: none); `None` if the machine cannot (the
/// harness printed why).
fn start(test: &str, size: usize, repair_ms: u64) -> Option<Cluster> {
    let repair = repair_ms.to_string();
    Cluster::start_netns(
        test,
        size,
        &[
            "--partitions",
            "16",
            "--handoff-interval-ms",
            "200",
            "--repair-interval-ms",
            repair.as_str(),
        ],
    )
}

/// Cuts `left` from `right` and waits until each side sees the other down.
fn cut(cluster: &Cluster, left: &[usize], right: &[usize], dl: &Deadline) {
    cluster.partition(&[left, right]);
    cluster.wait_views(
        left,
        &names(cluster, right),
        false,
        dl.at_most(Duration::from_secs(20)),
    );
    cluster.wait_views(
        right,
        &names(cluster, left),
        false,
        dl.at_most(Duration::from_secs(20)),
    );
}

/// 4 nodes, so that a key has a fallback node. n4 is cut off from the others; then 100
/// sloppy puts at w=2 go through n4 and 100 through n1. A put acknowledged at w=2 must be
/// held durably by 2 distinct nodes (Dynamo's sloppy quorum; issue 10 item 5), so losing any
/// one node must not lose it: n4 is then killed for good and the network healed, and every
/// acknowledged put must be found on a survivor (own copies, after handoff and anti-entropy
/// among the survivors).
#[test]
fn isolated_node_acknowledges_only_writes_on_two_nodes() {
    let _serial = serial();
    let test = "isolated_node_acknowledges_only_writes_on_two_nodes";
    let Some(mut cluster) = start(test, 4, 500) else {
        return;
    };
    let dl = Deadline::new(Duration::from_secs(150));
    cut(&cluster, &[3], &[0, 1, 2], &dl);

    const KEYS: usize = 100;
    let rt = rt();
    let addrs = cluster.addrs();
    let keys: Arc<Vec<Vec<u8>>> = Arc::new(
        (0..2 * KEYS)
            .map(|i| format!("k{i:04}").into_bytes())
            .collect(),
    );
    // Keys 0..KEYS through n4 (cut off), KEYS.. through n1 (majority side).
    let outcomes: Vec<Result<(), Failure>> = rt.block_on({
        let keys = keys.clone();
        async move {
            let via = [connect(addrs[3]).await, connect(addrs[0]).await];
            let via: Vec<Client> = via
                .into_iter()
                .map(|c| c.expect("the hub reaches every node's client port"))
                .collect();
            let via = Arc::new(via);
            for_each_concurrent(2 * KEYS, 16, move |i| {
                let (via, keys) = (via.clone(), keys.clone());
                async move {
                    let c = &via[i / KEYS];
                    let value = keys[i].clone();
                    call(c.put_with(b"sloppy", &keys[i], value, &[], &q(3, 2, 2))).await
                }
            })
            .await
        }
    });
    let mut acked = [0usize; 2];
    let mut refused: BTreeMap<String, usize> = BTreeMap::new();
    for (i, outcome) in outcomes.iter().enumerate() {
        match outcome {
            Ok(()) => acked[i / KEYS] += 1,
            Err(f) => *refused.entry(f.kind()).or_default() += 1,
        }
    }
    println!(
        "  n4 cut off: puts at w=2 acknowledged through n4 {}/{KEYS}, through n1 {}/{KEYS}; \
         refused by kind {refused:?}",
        acked[0], acked[1]
    );
    assert_eq!(
        acked[1], KEYS,
        "the majority side must take every put at w=2"
    );

    cluster.nodes[3].kill9();
    cluster.heal();
    let survivors = cluster.addrs()[..3].to_vec();
    let missing = |copies: &Copies| -> Vec<String> {
        (0..2 * KEYS)
            .filter(|&i| outcomes[i].is_ok())
            .filter(|&i| {
                !copies
                    .iter()
                    .any(|node| node[i].as_ref().is_some_and(|v| v.contains(&keys[i])))
            })
            .map(|i| {
                format!(
                    "{} (via n{})",
                    String::from_utf8_lossy(&keys[i]),
                    if i < KEYS { 4 } else { 1 }
                )
            })
            .collect()
    };
    // Handoff and anti-entropy among the survivors settle within a few rounds; a put held
    // by n4 alone never shows.
    let settle = Instant::now();
    let lost = loop {
        let copies = rt.block_on(local_copies(&survivors, b"sloppy", keys.clone()));
        let lost = missing(&copies);
        if lost.is_empty() || settle.elapsed() > dl.at_most(Duration::from_secs(15)) {
            break lost;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    println!(
        "  n4 killed for good: {} acknowledged puts on no survivor",
        lost.len()
    );
    assert!(
        lost.is_empty(),
        "{} puts were acknowledged at w=2 but lost with one node, so they were held by fewer \
         than 2 distinct nodes (issue 10 item 5), e.g. {:?}",
        lost.len(),
        &lost[..lost.len().min(5)]
    );
}

/// 5 nodes cut into {n1, n2} | {n3, n4, n5} for 20 s (`RINGKV_TEST_CUT_S`) with iptables DROP
/// rules, then healed.
/// Prints the time from the heal until every node sees every member up, and asserts it under
/// 10 s (the goal is 3 s: a partition's length must not matter).
#[test]
fn links_return_within_seconds_after_a_long_partition() {
    let _serial = serial();
    let test = "links_return_within_seconds_after_a_long_partition";
    let Some(cluster) = start(test, 5, 0) else {
        return;
    };
    let dl = Deadline::new(Duration::from_secs(120));
    // RINGKV_TEST_CUT_S=N measures another length.
    let cut_s: u64 = std::env::var("RINGKV_TEST_CUT_S").map_or(20, |s| {
        s.parse().expect("RINGKV_TEST_CUT_S is a number of seconds")
    });
    let cut_len = Duration::from_secs(cut_s);
    let (left, right) = ([0, 1], [2, 3, 4]);
    let began = Instant::now();
    cut(&cluster, &left, &right, &dl);
    let detected = began.elapsed();
    // Hold the cut; nothing to poll: the length of the partition is the point.
    std::thread::sleep(cut_len.saturating_sub(began.elapsed()));
    cluster.heal();
    let all: Vec<usize> = (0..5).collect();
    let back = cluster.wait_views(
        &all,
        &names(&cluster, &all),
        true,
        dl.at_most(Duration::from_secs(60)),
    );
    println!(
        "  partition {{n1,n2}} | {{n3,n4,n5}} of {:.1} s (seen by both sides after {:.1} s): \
         every member up on every node {:.2} s after the heal",
        cut_len.as_secs_f64(),
        detected.as_secs_f64(),
        back.as_secs_f64()
    );
    assert!(
        back < Duration::from_secs(10),
        "links took {back:?} to return after a {cut_len:?} partition (goal 3 s)"
    );
}

/// 3 nodes; n3 is killed with kill -9 and restarted once n1 and n2 see it down. Prints the time
/// from the restarted node listening until every node sees every member up, and asserts it
/// under 10 s (goal 2 s).
#[test]
fn restarted_node_is_seen_up_within_seconds() {
    let _serial = serial();
    let test = "restarted_node_is_seen_up_within_seconds";
    let Some(mut cluster) = start(test, 3, 0) else {
        return;
    };
    let dl = Deadline::new(Duration::from_secs(90));
    cluster.nodes[2].kill9();
    cluster.wait_views(
        &[0, 1],
        &names(&cluster, &[2]),
        false,
        dl.at_most(Duration::from_secs(20)),
    );
    // Stay down for several heartbeats more, so the survivors' redial backoff has grown.
    std::thread::sleep(Duration::from_millis(20 * HEARTBEAT_MS));
    cluster.nodes[2].restart();
    let all: Vec<usize> = (0..3).collect();
    let back = cluster.wait_views(
        &all,
        &names(&cluster, &all),
        true,
        dl.at_most(Duration::from_secs(60)),
    );
    println!(
        "  n3 killed and restarted: every member up on every node {:.2} s after it listened",
        back.as_secs_f64()
    );
    assert!(
        back < Duration::from_secs(10),
        "the restarted node took {back:?} to be seen up everywhere (goal 2 s)"
    );
}

/// The seeded random schedule of `healing.rs` ([`random_faults`]: kill -9, SIGSTOP,
/// partitions, under a read-modify-write set load) on 5 nodes in network namespaces, the
/// partitions being iptables DROP rules, for about 30 s. `RINGKV_TEST_SEED=N` replays a seed.
#[test]
fn random_faults_on_real_partitions() {
    let _serial = serial();
    let test = "random_faults_on_real_partitions";
    let seed = test_seed();
    let Some(mut cluster) = start(test, 5, 500) else {
        return;
    };
    let dl = Deadline::new(Duration::from_secs(200));
    random_faults(&mut cluster, seed, Duration::from_secs(30), &dl);
}
