//! Correct under faults (issue 10): a write is acknowledged only when `w` distinct nodes hold
//! it, each partition replica names its own dots, anti-entropy keeps a bucket's `n`, requests
//! fail fast when the answer is known, and supervision restarts each actor type within its
//! own budget.
//!
//! Partitions here are the drop rule inside each node (`inject_fault isolate`); the real
//! network partitions (network namespaces and iptables) are in `netfaults.rs`.

use ringkv_api::Client;
use ringkv_tests::{quorum, wait_until, Cluster};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

/// The scenarios start clusters: one at a time.
fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|p| p.into_inner())
}

fn start(size: usize, more: &[&str]) -> Cluster {
    let mut flags = vec![
        "--partitions",
        "8",
        "--fault-injection",
        "--handoff-interval-ms",
        "200",
    ];
    flags.extend(more);
    Cluster::start(size, &flags)
}

/// Item 5: a node cut off from every peer holds a sloppy write alone. Counting its hints
/// once per replica it stands in for acknowledged w=2 and w=3 writes that a single lost
/// node could take back; now a write needs `w` distinct nodes, so it fails, `unreachable`.
/// On the majority side, a w=2 write is acknowledged and is then on two distinct nodes.
#[test]
fn sloppy_quorum_counts_distinct_nodes() {
    let _serial = serial();
    let cluster = start(4, &["--repair-interval-ms", "0"]);
    cluster.partition(&[&[0], &[1, 2, 3]]);
    let (n1, others) = (
        cluster.name(0),
        [cluster.name(1), cluster.name(2), cluster.name(3)],
    );
    wait_until(
        "n1 and the others to see each other down",
        Duration::from_secs(20),
        || {
            (cluster.sees_all(0, &others, false)
                && (1..4).all(|i| cluster.sees_up(i, &n1) == Some(false)))
            .then_some(())
        },
    );
    let rt = ringkv_tests::runtime();
    let (alone, majority) = rt.block_on(async {
        let c1 = Client::connect(cluster.nodes[0].addr).await.unwrap();
        // Keys of every partition: on about a quarter of them n1 is not a replica at all.
        let mut alone = Vec::new();
        for i in 0..40 {
            let key = format!("alone-{i}");
            let w = if i % 2 == 0 { 2 } else { 3 };
            let r = c1
                .put_with(b"b", key.as_bytes(), b"v".to_vec(), &[], &quorum(3, 2, w))
                .await;
            alone.push((key, w, r));
        }
        let c2 = Client::connect(cluster.nodes[1].addr).await.unwrap();
        let mut majority = Vec::new();
        for i in 0..20 {
            let key = format!("majority-{i}");
            majority.push((
                key.clone(),
                c2.put_with(b"b", key.as_bytes(), b"v".to_vec(), &[], &quorum(3, 2, 2))
                    .await,
            ));
        }
        (alone, majority)
    });
    let acked: Vec<_> = alone
        .iter()
        .filter(|(_, _, r)| r.is_ok())
        .map(|(k, w, _)| format!("{k} at w={w}"))
        .collect();
    println!(
        "40 sloppy writes through a node cut off from every peer: {} acknowledged {acked:?}",
        acked.len()
    );
    assert!(
        acked.is_empty(),
        "an isolated node acknowledged writes it alone holds: {acked:?}"
    );
    for (key, _, r) in &alone {
        let e = r.as_ref().unwrap_err();
        assert_eq!(e.code(), Some("unreachable"), "{key}: {e}");
    }
    // Every write acknowledged on the majority side is on >= 2 distinct nodes at once.
    for (key, r) in &majority {
        r.as_ref().unwrap_or_else(|e| panic!("{key}: {e}"));
        let holders = (1..4)
            .filter(|&i| !cluster.local_values(i, b"b", key.as_bytes()).is_empty())
            .count();
        assert!(holders >= 2, "{key} is held by {holders} node(s)");
    }
    cluster.heal();
}

/// Item 7: a get whose replicas are already convicted by the failure detector (paused with
/// SIGSTOP, so their sessions stay open and calls to them would wait) is answered at once,
/// `unreachable`, instead of after its whole `timeout_ms`.
#[test]
fn requests_fail_fast_when_replicas_are_known_down() {
    let _serial = serial();
    let cluster = start(3, &["--repair-interval-ms", "0"]);
    let rt = ringkv_tests::runtime();
    rt.block_on(async {
        let c1 = Client::connect(cluster.nodes[0].addr).await.unwrap();
        c1.put_with(b"b", b"k", b"v".to_vec(), &[], &quorum(3, 2, 3))
            .await
            .unwrap();
    });
    cluster.nodes[1].signal(libc::SIGSTOP);
    cluster.nodes[2].signal(libc::SIGSTOP);
    let others = [cluster.name(1), cluster.name(2)];
    wait_until("n1 to see n2 and n3 down", Duration::from_secs(20), || {
        cluster.sees_all(0, &others, false).then_some(())
    });
    let (read, took) = rt.block_on(async {
        let c1 = Client::connect(cluster.nodes[0].addr).await.unwrap();
        let opts = ringkv_api::CallOptions {
            timeout_ms: Some(3000),
            ..quorum(3, 2, 2)
        };
        let started = std::time::Instant::now();
        let r = c1.get_with(b"b", b"k", &opts).await;
        (r, started.elapsed())
    });
    cluster.nodes[1].signal(libc::SIGCONT);
    cluster.nodes[2].signal(libc::SIGCONT);
    println!("get at r=2 with both other replicas convicted: {read:?} after {took:?}");
    let e = read.expect_err("a quorum read with one reachable replica");
    assert_eq!(e.code(), Some("unreachable"), "{e}");
    assert!(took < Duration::from_millis(1000), "took {took:?} of its 3 s limit");
}
