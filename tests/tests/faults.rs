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
    assert!(
        took < Duration::from_millis(1000),
        "took {took:?} of its 3 s limit"
    );
}

/// Item 1: a partition directory of one node is lost. Dots used to be named by the node, so
/// the rebuilt partition reissued dots its peers already covered, and their merge dropped
/// the new writes after they were acknowledged. Each partition replica now has its own id,
/// fresh whenever its storage is new: blind writes through that node survive repair.
#[test]
fn a_wiped_partition_never_reissues_dots() {
    let _serial = serial();
    let mut cluster = start(3, &["--repair-interval-ms", "300"]);
    let q = 8;
    let p = ringkv_cluster::partition_for(b"b", b"k0", q);
    let keys: Vec<String> = (0..400)
        .map(|i| format!("k{i}"))
        .filter(|k| ringkv_cluster::partition_for(b"b", k.as_bytes(), q) == p)
        .take(20)
        .collect();
    let rt = ringkv_tests::runtime();
    let addr = cluster.nodes[0].addr;
    rt.block_on(async {
        let c = Client::connect(addr).await.unwrap();
        for k in &keys {
            c.put_with(b"b", k.as_bytes(), b"old".to_vec(), &[], &quorum(3, 2, 3))
                .await
                .unwrap();
        }
    });
    // Lose partition p of n1, nothing else.
    cluster.nodes[0].kill9();
    let dir = ringkv_storage::DataDir::data_dir(&cluster.nodes[0].data_dir());
    ringkv_storage::store::wipe_partition(&dir, p)
        .unwrap_or_else(|e| panic!("wipe partition {p} in {}: {e}", dir.display()));
    cluster.nodes[0].restart();
    let others = [cluster.name(1), cluster.name(2)];
    wait_until("n1 to see its peers again", Duration::from_secs(30), || {
        cluster.sees_all(0, &others, true).then_some(())
    });
    // Blind writes through n1, which coordinates them on its rebuilt partition.
    let addr = cluster.nodes[0].addr;
    let acked: Vec<String> = rt.block_on(async {
        let c = Client::connect(addr).await.unwrap();
        let mut acked = Vec::new();
        for k in &keys {
            if c.put_with(b"b", k.as_bytes(), b"new".to_vec(), &[], &quorum(3, 2, 2))
                .await
                .is_ok()
            {
                acked.push(k.clone());
            }
        }
        acked
    });
    assert!(!acked.is_empty(), "no write through n1 was acknowledged");
    // Anti-entropy (every 300 ms) brings the replicas together; every acknowledged "new"
    // must be among each replica's values then.
    let survey = || {
        let copies: Vec<Vec<Vec<Vec<u8>>>> = (0..3)
            .map(|i| {
                acked
                    .iter()
                    .map(|k| {
                        let mut v = cluster.local_values(i, b"b", k.as_bytes());
                        v.sort();
                        v
                    })
                    .collect()
            })
            .collect();
        let converged = copies[0] == copies[1] && copies[1] == copies[2];
        let lost: Vec<String> = acked
            .iter()
            .enumerate()
            .filter(|(j, _)| copies.iter().any(|c| !c[*j].contains(&b"new".to_vec())))
            .map(|(_, k)| k.clone())
            .collect();
        (converged, lost)
    };
    // Poll until converged (30 s at most), then report what the replicas hold either way.
    let _ = wait_until_or_none(Duration::from_secs(30), || survey().0.then_some(()));
    let (converged, lost) = survey();
    println!(
        "partition {p} of n1 wiped: {} blind writes acknowledged through n1; replicas converged: {converged}; missing on some replica: {}",
        acked.len(),
        lost.len()
    );
    assert!(
        lost.is_empty(),
        "acknowledged writes missing on a replica: {lost:?}"
    );
    assert!(converged, "the replicas did not converge within 30 s");
}

/// Item 1: two nodes can never open one data directory: the second `ringkv start` fails at
/// once with an error naming the directory, and the first keeps serving.
#[test]
fn a_data_directory_is_locked_by_its_node() {
    let _serial = serial();
    let node = ringkv_tests::NodeProcess::start(&["--partitions", "4"]);
    let dir = node.data_dir();
    let mut second = std::process::Command::new(ringkv_tests::ringkv_bin())
        .args([
            "start",
            "--partitions",
            "4",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(&dir)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run a second ringkv start");
    let exited = wait_until_or_none(Duration::from_secs(10), || second.try_wait().unwrap());
    if exited.is_none() {
        let _ = second.kill();
        let _ = second.wait();
        panic!(
            "a second node started on {} and kept running",
            dir.display()
        );
    }
    let out = second.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!(
        "second node on the same data directory: {:?} {stderr}",
        out.status
    );
    assert!(
        !out.status.success(),
        "a second node opened {}",
        dir.display()
    );
    assert!(stderr.contains(&dir.display().to_string()), "{stderr}");
    assert!(stderr.contains("in use"), "{stderr}");
    let rt = ringkv_tests::runtime();
    rt.block_on(async {
        let c = Client::connect(node.addr).await.unwrap();
        c.put(b"b", b"k", b"v".to_vec(), &[]).await.unwrap();
    });
}

/// Polls `cond` until it gives `Some` or `timeout` passes (then `None`).
fn wait_until_or_none<T>(timeout: Duration, mut cond: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if let Some(v) = cond() {
            return Some(v);
        }
        if std::time::Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Item 3: anti-entropy keeps a bucket's `n`. A bucket with n=1 or n=2 used to be copied to
/// all three layout replicas by the next sweep; now each key stays on exactly `n` nodes
/// while sweeps run, and a delete in such a bucket is still purged.
#[test]
fn anti_entropy_keeps_a_buckets_n() {
    let _serial = serial();
    let cluster = start(
        3,
        &["--repair-interval-ms", "200", "--tombstone-grace-ms", "0"],
    );
    for (bucket, n) in [("one", "n=1"), ("two", "n=2")] {
        let (code, _, err) =
            cluster.nodes[0].cli(&["bucket", "set", bucket, n, "r=1", "w=1"], None);
        assert_eq!(code, 0, "{err}");
    }
    wait_until(
        "every node to know the buckets",
        Duration::from_secs(10),
        || {
            (0..3)
                .all(|i| {
                    let (_, out, _) = cluster.nodes[i].cli(&["bucket", "get", "one"], None);
                    String::from_utf8_lossy(&out).contains("\"n\":1")
                })
                .then_some(())
        },
    );
    let rt = ringkv_tests::runtime();
    let keys: Vec<String> = (0..20).map(|i| format!("k{i}")).collect();
    rt.block_on(async {
        let c = Client::connect(cluster.nodes[0].addr).await.unwrap();
        for k in &keys {
            c.put(b"one", k.as_bytes(), b"v".to_vec(), &[])
                .await
                .unwrap();
            c.put(b"two", k.as_bytes(), b"v".to_vec(), &[])
                .await
                .unwrap();
        }
    });
    // Let several sweeps run: every node's exchange counter grows by 3 sweeps' worth.
    let exchanges = |c: &Cluster| c.counter_sum("repair", "exchanges");
    let start_count = exchanges(&cluster);
    wait_until("three anti-entropy sweeps", Duration::from_secs(30), || {
        (exchanges(&cluster) >= start_count + 3 * 8 * 3).then_some(())
    });
    let copies = |bucket: &[u8], k: &str| {
        (0..3)
            .filter(|&i| !cluster.local_values(i, bucket, k.as_bytes()).is_empty())
            .count()
    };
    let counts: Vec<(usize, usize)> = keys
        .iter()
        .map(|k| (copies(b"one", k), copies(b"two", k)))
        .collect();
    println!("copies per key after three sweeps (n=1, n=2): {counts:?}");
    for (k, (one, two)) in keys.iter().zip(&counts) {
        assert_eq!(*one, 1, "{k} of the n=1 bucket is on {one} nodes");
        assert_eq!(*two, 2, "{k} of the n=2 bucket is on {two} nodes");
    }
}

/// Item 4: every actor type has a restart budget of its own (`--restart-max` in
/// `--restart-window-ms`). With a budget of 2, one panic of every type and a second of
/// `repair` leave the node running (they used to share one budget, and the node stopped);
/// a third `repair` panic within the window stops the node with exit status 3.
#[test]
fn each_actor_type_has_its_own_restart_budget() {
    let _serial = serial();
    let mut cluster = start(1, &["--restart-max", "2", "--restart-window-ms", "60000"]);
    let restarts = |c: &Cluster, kind: &str| c.counter(0, "restarts", kind).unwrap_or(0);
    let panic_and_wait = |c: &Cluster, actor: &str, counter: &str| {
        let before = restarts(c, counter);
        c.panic_actor(0, actor);
        wait_until(
            &format!("{actor} to be restarted"),
            Duration::from_secs(10),
            || (restarts(c, counter) > before).then_some(()),
        );
    };
    for actor in [
        "vnodes", "replica", "gossip", "handoff", "repair", "listener",
    ] {
        panic_and_wait(&cluster, actor, actor);
    }
    panic_and_wait(&cluster, "repair", "repair");
    assert!(
        cluster.nodes[0].is_running(),
        "the node stopped within every type's budget"
    );
    let status: Vec<(String, u64)> = [
        "vnodes", "replica", "gossip", "handoff", "repair", "listener",
    ]
    .iter()
    .map(|a| (a.to_string(), restarts(&cluster, a)))
    .collect();
    println!("restarts per type after 7 panics with a budget of 2 each: {status:?}");
    cluster.panic_actor(0, "repair");
    let exit = cluster.nodes[0].wait_exit(Duration::from_secs(20));
    println!("a third repair panic: the node exited with {exit:?}");
    assert_eq!(exit.code(), Some(3), "{exit:?}");
}

/// Item 4: panics injected 100 ms apart into one actor type are each carried out (one that
/// reached the supervisor while the previous incarnation was dying used to be lost).
#[test]
fn panics_in_quick_succession_all_happen() {
    let _serial = serial();
    let cluster = start(1, &[]);
    let restarts = |kind: &str| cluster.counter(0, "restarts", kind).unwrap_or(0);
    for actor in ["gossip", "replica"] {
        let before = restarts(actor);
        for _ in 0..4 {
            cluster.panic_actor(0, actor);
            let paced = std::time::Instant::now();
            wait_until("100 ms to pass", Duration::from_secs(1), || {
                (paced.elapsed() >= Duration::from_millis(100)).then_some(())
            });
        }
        let done = wait_until_or_none(Duration::from_secs(10), || {
            (restarts(actor) >= before + 4).then_some(())
        });
        println!(
            "4 panics of {actor} 100 ms apart: {} restarts",
            restarts(actor) - before
        );
        assert!(
            done.is_some(),
            "{actor}: only {} of 4 panics happened",
            restarts(actor) - before
        );
    }
}

/// Item 4: the cluster transport (ractor_cluster's NodeServer) is watched: if it dies while
/// the node runs, the node stops with exit status 3 (it used to run on, cut off, with
/// nothing noticing).
#[test]
fn a_dead_cluster_transport_stops_the_node() {
    let _serial = serial();
    let mut cluster = start(1, &[]);
    cluster.panic_actor(0, "transport");
    let exit = wait_until_or_none(Duration::from_secs(15), || {
        (!cluster.nodes[0].is_running()).then_some(())
    });
    assert!(
        exit.is_some(),
        "the node ran on without its cluster transport"
    );
    let status = cluster.nodes[0].wait_exit(Duration::from_secs(5));
    println!("transport killed: node exited with {status:?}");
    assert_eq!(status.code(), Some(3), "{status:?}");
    assert!(cluster.nodes[0].log().contains("cluster transport"));
}
