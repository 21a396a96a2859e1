//! Self-healing, with real `ringkv` processes on 127.0.0.x: hinted handoff after a kill -9,
//! anti-entropy filling a wiped node, sloppy and strict quorums across a partition, a delete
//! across a partition, a seeded random schedule of faults under a read-modify-write load, and
//! the supervision of every actor type.
//!
//! The scenarios run one at a time ([`serial`]): each starts 1 to 5 nodes, and the figures they
//! print (run with `--nocapture`) would mean little with two clusters sharing the cores. Every
//! scenario has an overall [`Deadline`], every wait polls a condition against it, and dropping
//! the `Cluster` kills the nodes and removes their directories, on failure too.

use ringkv_api::{CallOptions, Client};
use ringkv_tests::workload::{
    call, connect, for_each_concurrent, local_copies, names, pending_hints, random_faults,
    test_seed, Copies, Deadline, Failure,
};
use ringkv_tests::Cluster;
use ringkv_tests::{local_read as local, quorum as q, runtime as rt};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Requests in flight while loading keys.
const IN_FLIGHT: usize = 32;

static SERIAL: Mutex<()> = Mutex::new(());

/// One scenario at a time. A failed scenario poisons the lock; the next one goes on.
fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

/// Starts `size` nodes with 16 partitions, fault injection, a handoff round every 200 ms, an
/// anti-entropy round every `repair_ms` (0: none), and `more` flags.
fn start(size: usize, repair_ms: u64, more: &[&str]) -> Cluster {
    let repair = repair_ms.to_string();
    let mut flags = vec![
        "--partitions",
        "16",
        "--fault-injection",
        "--handoff-interval-ms",
        "200",
        "--repair-interval-ms",
        repair.as_str(),
    ];
    flags.extend(more);
    Cluster::start(size, &flags)
}

/// `(key, value)` pairs `{prefix}{i:05}` → `{value_prefix}{i}` for `i` in `0..count`.
fn pairs(prefix: &str, value_prefix: &str, count: usize) -> Arc<Vec<(Vec<u8>, Vec<u8>)>> {
    Arc::new(
        (0..count)
            .map(|i| {
                (
                    format!("{prefix}{i:05}").into_bytes(),
                    format!("{value_prefix}{i}").into_bytes(),
                )
            })
            .collect(),
    )
}

/// Blind puts of every pair into `bucket` through `addr` on one pipelined connection,
/// [`IN_FLIGHT`] at a time; each put's outcome, in order. `acked` counts the acknowledged
/// ones as they come.
async fn put_all(
    addr: SocketAddr,
    bucket: &[u8],
    pairs: Arc<Vec<(Vec<u8>, Vec<u8>)>>,
    opts: CallOptions,
    acked: Arc<AtomicUsize>,
) -> Vec<Result<(), Failure>> {
    let client = match connect(addr).await {
        Ok(c) => c,
        Err(e) => return vec![Err(e); pairs.len()],
    };
    let bucket = bucket.to_vec();
    for_each_concurrent(pairs.len(), IN_FLIGHT, move |i| {
        let (client, bucket, pairs, opts, acked) = (
            client.clone(),
            bucket.clone(),
            pairs.clone(),
            opts.clone(),
            acked.clone(),
        );
        async move {
            let (key, value) = &pairs[i];
            call(client.put_with(&bucket, key, value.clone(), &[], &opts)).await?;
            acked.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
    })
    .await
}

/// One node's copy for a message: `[v1, v2]`, `-` (none) or `?` (no answer).
fn show_copy(copy: &Option<Vec<Vec<u8>>>) -> String {
    match copy {
        None => "?".into(),
        Some(v) if v.is_empty() => "-".into(),
        Some(v) => format!(
            "[{}]",
            v.iter()
                .map(|x| String::from_utf8_lossy(x).into_owned())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// Whether [`replica_problems`] also requires a key's non-empty copies to be identical.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Agreement {
    /// The acknowledged value must be in enough copies; they may differ otherwise.
    Present,
    /// And every non-empty copy must be the same.
    Identical,
}

/// The keys (one line each) whose acknowledged value `acked[k]` is not in at least `min`
/// nodes' copies, or (with [`Agreement::Identical`]) whose non-empty copies differ.
fn replica_problems(
    copies: &Copies,
    keys: &[Vec<u8>],
    acked: &[Vec<u8>],
    min: usize,
    agreement: Agreement,
) -> Vec<String> {
    let mut problems = Vec::new();
    for (k, key) in keys.iter().enumerate() {
        let held: Vec<&Vec<Vec<u8>>> = copies
            .iter()
            .filter_map(|node| node[k].as_ref())
            .filter(|v| !v.is_empty())
            .collect();
        let with_value = held.iter().filter(|v| v.contains(&acked[k])).count();
        let agree = agreement == Agreement::Present || held.windows(2).all(|w| w[0] == w[1]);
        if with_value < min || !agree {
            let per_node: Vec<String> = copies
                .iter()
                .enumerate()
                .map(|(i, node)| format!("n{}={}", i + 1, show_copy(&node[k])))
                .collect();
            problems.push(format!(
                "{} (acknowledged {}): {}",
                String::from_utf8_lossy(key),
                String::from_utf8_lossy(&acked[k]),
                per_node.join(" ")
            ));
        }
    }
    problems
}

/// `Ok` if `problems` is empty, else the count and the first few.
fn none_of(problems: Vec<String>, what: &str) -> Result<(), String> {
    if problems.is_empty() {
        return Ok(());
    }
    Err(format!(
        "{} {what}, e.g. {}",
        problems.len(),
        problems[..problems.len().min(5)].join("; ")
    ))
}

/// The failed outcomes as `key: error` lines.
fn failures(pairs: &[(Vec<u8>, Vec<u8>)], outcomes: &[Result<(), Failure>]) -> Vec<String> {
    pairs
        .iter()
        .zip(outcomes)
        .filter_map(|((k, _), r)| {
            r.as_ref()
                .err()
                .map(|e| format!("{}: {e}", String::from_utf8_lossy(k)))
        })
        .collect()
}

/// The sum of `group.field` over nodes `nodes`, which must all answer.
fn sum_over(cluster: &Cluster, nodes: std::ops::Range<usize>, group: &str, field: &str) -> u64 {
    nodes
        .map(|i| {
            cluster
                .counter(i, group, field)
                .unwrap_or_else(|| panic!("n{} did not answer its status", i + 1))
        })
        .sum()
}

/// 4 nodes, so that a key whose replica is down has a real fallback node. n4 is killed with
/// kill -9 in the middle of 2,000 writes at n=3 w=2 through n1, 32 in flight: every write
/// must succeed (sloppy quorum: hints on the fallback nodes). After n4 restarts, hinted
/// handoff alone (no anti-entropy in this cluster) must bring every key back to 3 identical
/// copies and every node's pending hints to 0.
#[test]
fn hinted_handoff_after_a_kill() {
    let _serial = serial();
    let dl = Deadline::new(Duration::from_secs(150));
    let mut cluster = start(4, 0, &[]);
    let rt = rt();
    const KEYS: usize = 2000;
    let data = pairs("k", "v", KEYS);
    let acked = Arc::new(AtomicUsize::new(0));
    let began = Instant::now();
    let writes = rt.spawn({
        let (addr, data, acked) = (cluster.nodes[0].addr, data.clone(), acked.clone());
        async move { put_all(addr, b"hh", data, q(3, 2, 2), acked).await }
    });
    cluster.wait_for(
        "300 writes to be acknowledged before the kill",
        dl.at_most(Duration::from_secs(60)),
        || match acked.load(Ordering::SeqCst) {
            n if n >= 300 => Ok(()),
            n => Err(format!("{n} acknowledged")),
        },
    );
    cluster.nodes[3].kill9();
    let acked_at_kill = acked.load(Ordering::SeqCst);
    assert!(
        acked_at_kill < KEYS,
        "every write was acknowledged before the kill; it must fall among them"
    );
    let outcomes = rt.block_on(writes).expect("writer task");
    let write_time = began.elapsed();
    let failed = failures(&data, &outcomes);
    println!(
        "hinted handoff: {KEYS} writes at n=3 w=2 through n1 ({IN_FLIGHT} in flight) in {:.2} s, \
         {:.0} writes/s; n4 killed after {acked_at_kill} acknowledgements; {} acknowledged, {} failed",
        write_time.as_secs_f64(),
        KEYS as f64 / write_time.as_secs_f64(),
        KEYS - failed.len(),
        failed.len()
    );
    assert!(
        failed.is_empty(),
        "{} writes failed with only n4 down, e.g. {:?}",
        failed.len(),
        &failed[..failed.len().min(5)]
    );

    let stored = sum_over(&cluster, 0..3, "hints", "stored");
    let pending = sum_over(&cluster, 0..3, "hints", "pending");
    let delivered_before = sum_over(&cluster, 0..3, "hints", "delivered");
    println!("  while n4 was down: {stored} hints stored, {pending} pending");
    assert!(stored > 0, "no hint was stored while n4 was down");

    let restarted = Instant::now();
    cluster.nodes[3].restart();
    cluster.wait_for(
        "every node's pending hints to reach 0",
        dl.at_most(Duration::from_secs(60)),
        || match pending_hints(&cluster, 0..4)? {
            p if p.iter().all(|&n| n == 0) => Ok(()),
            p => Err(format!("pending per node: {p:?}")),
        },
    );
    let drained = restarted.elapsed();
    let delivered = sum_over(&cluster, 0..4, "hints", "delivered").saturating_sub(delivered_before);

    let keys: Arc<Vec<Vec<u8>>> = Arc::new(data.iter().map(|(k, _)| k.clone()).collect());
    let values: Vec<Vec<u8>> = data.iter().map(|(_, v)| v.clone()).collect();
    let addrs = cluster.addrs();
    // Present, not identical: a write n4 stored just before it died, unacknowledged, is a
    // sibling the others never see without anti-entropy or read repair (both off here).
    let copies = cluster.wait_for(
        "every key to be back on 3 nodes",
        dl.at_most(Duration::from_secs(30)),
        || {
            let copies = rt.block_on(local_copies(&addrs, b"hh", keys.clone()));
            none_of(
                replica_problems(&copies, &keys, &values, 3, Agreement::Present),
                "keys whose value is on fewer than 3 nodes",
            )?;
            Ok(copies)
        },
    );
    let complete = restarted.elapsed();
    let differing = replica_problems(&copies, &keys, &values, 3, Agreement::Identical);
    println!(
        "  n4 restarted: hints pending 0 after {:.2} s, {delivered} hints delivered: {:.0} hints/s; \
         every key on >= 3 nodes after {:.2} s; lost 0",
        drained.as_secs_f64(),
        delivered as f64 / drained.as_secs_f64().max(1e-3),
        complete.as_secs_f64()
    );
    println!(
        "  {} keys with copies that differ (an extra sibling from a write n4 stored but never \
         acknowledged), e.g. {:?}",
        differing.len(),
        &differing[..differing.len().min(3)]
    );
    assert!(
        delivered > 0,
        "pending hints went to 0 but none was delivered"
    );
}

/// 3 nodes (every node a replica of every key): 5,000 keys written at w=3, then n3 is wiped
/// (kill -9, empty data directory) and restarted. With no client read at all (reads would
/// repair), anti-entropy must give n3 every key back.
#[test]
fn anti_entropy_restores_a_wiped_node() {
    let _serial = serial();
    let dl = Deadline::new(Duration::from_secs(200));
    let mut cluster = start(3, 500, &[]);
    let rt = rt();
    const KEYS: usize = 5000;
    let data = pairs("k", "v", KEYS);
    let began = Instant::now();
    let outcomes = rt.block_on(put_all(
        cluster.nodes[0].addr,
        b"ae",
        data.clone(),
        q(3, 2, 3),
        Arc::new(AtomicUsize::new(0)),
    ));
    let write_time = began.elapsed();
    let failed = failures(&data, &outcomes);
    assert!(
        failed.is_empty(),
        "{} writes at w=3 failed with every node up, e.g. {:?}",
        failed.len(),
        &failed[..failed.len().min(5)]
    );
    println!(
        "anti-entropy: {KEYS} keys written at w=3 in {:.2} s ({:.0} writes/s)",
        write_time.as_secs_f64(),
        KEYS as f64 / write_time.as_secs_f64()
    );
    let counters = ["exchanges", "keys_repaired", "hashes_sent", "bytes_sent"];
    let before: Vec<u64> = counters
        .iter()
        .map(|c| sum_over(&cluster, 0..2, "repair", c))
        .collect();

    cluster.nodes[2].wipe();
    let restarted = Instant::now();
    cluster.nodes[2].restart();
    let n3 = [cluster.nodes[2].addr];
    let check = |step: usize| {
        let keys: Arc<Vec<Vec<u8>>> =
            Arc::new(data.iter().step_by(step).map(|(k, _)| k.clone()).collect());
        let values: Vec<Vec<u8>> = data.iter().step_by(step).map(|(_, v)| v.clone()).collect();
        let copies = rt.block_on(local_copies(&n3, b"ae", keys.clone()));
        none_of(
            replica_problems(&copies, &keys, &values, 1, Agreement::Identical),
            "keys missing on n3",
        )
    };
    cluster.wait_for(
        "n3 to hold a sample of 100 keys",
        dl.at_most(Duration::from_secs(120)),
        || check(KEYS / 100),
    );
    let sample = restarted.elapsed();
    cluster.wait_for(
        "n3 to hold every key",
        dl.at_most(Duration::from_secs(120)),
        || check(1),
    );
    let complete = restarted.elapsed();
    let delta: Vec<u64> = counters
        .iter()
        .zip(&before)
        .map(|(c, b)| sum_over(&cluster, 0..3, "repair", c).saturating_sub(*b))
        .collect();
    println!(
        "  n3 wiped and restarted: the 100-key sample complete after {:.2} s, all {KEYS} keys \
         after {:.2} s: {:.0} keys/s",
        sample.as_secs_f64(),
        complete.as_secs_f64(),
        KEYS as f64 / complete.as_secs_f64()
    );
    println!(
        "  repair counters since the wipe, all nodes: {}; {:.0} bytes sent per key restored",
        counters
            .iter()
            .zip(&delta)
            .map(|(c, d)| format!("{c} {d}"))
            .collect::<Vec<_>>()
            .join(", "),
        delta[3] as f64 / KEYS as f64
    );
    assert!(
        delta[1] >= KEYS as u64,
        "n3 got {KEYS} keys back but the nodes count only {} keys repaired",
        delta[1]
    );
}

/// Parses "write quorum not reached: A of N replicas answered, W needed" into (A, N, W).
fn quorum_figures(message: &str) -> Option<(u64, u64, u64)> {
    let words: Vec<&str> = message
        .split(|c: char| c.is_whitespace() || c == ',')
        .filter(|w| !w.is_empty())
        .collect();
    let at = words
        .windows(2)
        .position(|w| w[0] == "replicas" && w[1] == "answered")?;
    if at < 3 || words.get(at + 3) != Some(&"needed") || words[at - 2] != "of" {
        return None;
    }
    Some((
        words[at - 3].parse().ok()?,
        words[at - 1].parse().ok()?,
        words[at + 2].parse().ok()?,
    ))
}

/// 5 nodes cut into {n1, n2} | {n3, n4, n5}. Bucket `sloppy` (the default) takes every write
/// at w=2 on both sides: hints on the reachable nodes stand in for the unreachable replicas.
/// Bucket `strict` (sloppy_quorum=false) counts only preference-list replicas: each strict
/// key is written on both sides, and exactly one side holds 2 of its 3 replicas, so exactly
/// one of the two writes succeeds and the other fails with `unreachable` naming how many
/// answered. After the heal, without client reads, every acknowledged key must end up on
/// >= 3 nodes with all copies agreeing.
#[test]
fn partition_sloppy_vs_strict() {
    let _serial = serial();
    let dl = Deadline::new(Duration::from_secs(200));
    let cluster = start(5, 500, &[]);
    let rt = rt();
    let (code, _, err) =
        cluster.nodes[0].cli(&["bucket", "set", "strict", "sloppy_quorum=false"], None);
    assert_eq!(code, 0, "bucket set strict sloppy_quorum=false: {err}");
    cluster.wait_for(
        "every node to know that bucket strict is not sloppy",
        dl.at_most(Duration::from_secs(15)),
        || {
            for (i, node) in cluster.nodes.iter().enumerate() {
                let (code, out, err) = node.cli(&["bucket", "get", "strict"], None);
                let props: serde_json::Value = serde_json::from_slice(&out)
                    .map_err(|e| format!("n{}: {code} {err} {e}", i + 1))?;
                if props["sloppy_quorum"] != false {
                    return Err(format!("n{} has {props}", i + 1));
                }
            }
            Ok(())
        },
    );

    let (left, right) = ([0, 1], [2, 3, 4]);
    cluster.partition(&[&left, &right]);
    let seen = cluster.wait_views(
        &[0, 1],
        &names(&cluster, &right),
        false,
        dl.at_most(Duration::from_secs(30)),
    );
    let seen2 = cluster.wait_views(
        &[2, 3, 4],
        &names(&cluster, &left),
        false,
        dl.at_most(Duration::from_secs(30)),
    );
    println!(
        "partition {{n1,n2}} | {{n3,n4,n5}}: n1, n2 saw the other side down after {:.2} s, \
         n3..n5 after {:.2} s more",
        seen.as_secs_f64(),
        seen2.as_secs_f64()
    );

    const KEYS: usize = 200;
    let (a1, a3) = (cluster.nodes[0].addr, cluster.nodes[2].addr);
    let put = |addr, bucket: &'static [u8], data: &Arc<Vec<(Vec<u8>, Vec<u8>)>>| {
        rt.block_on(put_all(
            addr,
            bucket,
            data.clone(),
            q(3, 2, 2),
            Arc::new(AtomicUsize::new(0)),
        ))
    };
    let sloppy_left = pairs("a", "a", KEYS);
    let sloppy_right = pairs("b", "b", KEYS);
    let strict_left = pairs("k", "left-", KEYS);
    let strict_right = pairs("k", "right-", KEYS);
    let t = Instant::now();
    let out_sloppy_left = put(a1, b"sloppy", &sloppy_left);
    let out_sloppy_right = put(a3, b"sloppy", &sloppy_right);
    let out_strict_left = put(a1, b"strict", &strict_left);
    let out_strict_right = put(a3, b"strict", &strict_right);
    let write_time = t.elapsed();
    for (side, data, out) in [
        ("n1", &sloppy_left, &out_sloppy_left),
        ("n3", &sloppy_right, &out_sloppy_right),
    ] {
        let failed = failures(data, out);
        assert!(
            failed.is_empty(),
            "{} sloppy writes at w=2 through {side} failed during the partition, e.g. {:?}",
            failed.len(),
            &failed[..failed.len().min(5)]
        );
    }

    // Read-your-writes on the minority side: a sloppy read with r=2 through n1 is answered by
    // the replicas n1 can reach and by the fallbacks that hold the hints, for every key.
    let unread: Vec<String> = rt
        .block_on(async {
            let c1 = connect(a1).await.map_err(|e| vec![e.to_string()])?;
            let mut unread = Vec::new();
            for (k, v) in sloppy_left.iter() {
                match call(c1.get_with(b"sloppy", k, &q(3, 2, 2))).await {
                    Ok(got) if got.values.contains(v) => {}
                    other => unread.push(format!(
                        "{}: {:?}",
                        String::from_utf8_lossy(k),
                        other.map(|f| f.values)
                    )),
                }
            }
            Ok::<_, Vec<String>>(unread)
        })
        .unwrap_or_else(|e| e);
    assert!(
        unread.is_empty(),
        "{} sloppy keys written through n1 did not read back through n1 (r=2) during the \
         partition, e.g. {:?}",
        unread.len(),
        &unread[..unread.len().min(5)]
    );
    println!("  sloppy reads during the partition: all {KEYS} keys written through n1 read back through n1 at r=2");

    let mut strict_acked = Vec::with_capacity(KEYS);
    let mut violations = Vec::new();
    let mut refused = [0usize; 2];
    let mut example = None;
    for i in 0..KEYS {
        let key = String::from_utf8_lossy(&strict_left[i].0).into_owned();
        let (l, r) = (&out_strict_left[i], &out_strict_right[i]);
        let (value, failure, side) = match (l, r) {
            (Ok(()), Err(f)) => (strict_left[i].1.clone(), f, 1),
            (Err(f), Ok(())) => (strict_right[i].1.clone(), f, 0),
            (Ok(()), Ok(())) => {
                violations.push(format!("{key}: both sides reached a strict quorum"));
                continue;
            }
            (Err(fl), Err(fr)) => {
                violations.push(format!("{key}: neither side reached it ({fl} / {fr})"));
                continue;
            }
        };
        refused[side] += 1;
        match failure {
            // The replicas on the other side are cut off: `unreachable`, naming them.
            Failure::Server { code, message } if code == "unreachable" => {
                example.get_or_insert_with(|| format!("{key}: {message}"));
                match quorum_figures(message) {
                    Some((answered, _, 2)) if answered < 2 => {}
                    _ => violations.push(format!(
                        "{key}: the unreachable message does not say how many of how many \
                         replicas answered, 2 needed: {message:?}"
                    )),
                }
            }
            other => violations.push(format!("{key}: failed with {other}, not unreachable")),
        }
        strict_acked.push(value);
    }
    println!(
        "  {} writes in {:.2} s: sloppy {KEYS}/{KEYS} acknowledged through n1 and through n3; \
         strict: {} acknowledged through n1, {} through n3, {} refused through n1, {} through n3",
        4 * KEYS,
        write_time.as_secs_f64(),
        KEYS - refused[0],
        KEYS - refused[1],
        refused[0],
        refused[1]
    );
    if let Some(example) = &example {
        println!("  e.g. {example}");
    }
    assert!(
        violations.is_empty(),
        "{} strict keys broke the rule, e.g. {:?}",
        violations.len(),
        &violations[..violations.len().min(5)]
    );
    assert!(refused[0] >= 1, "no strict write through n1 was refused");

    let hints_before = cluster.counter_sum("hints", "delivered");
    let repaired_before = cluster.counter_sum("repair", "keys_repaired");
    cluster.heal();
    let healed = Instant::now();
    let addrs = cluster.addrs();
    let sloppy_keys: Arc<Vec<Vec<u8>>> = Arc::new(
        sloppy_left
            .iter()
            .chain(sloppy_right.iter())
            .map(|(k, _)| k.clone())
            .collect(),
    );
    let sloppy_values: Vec<Vec<u8>> = sloppy_left
        .iter()
        .chain(sloppy_right.iter())
        .map(|(_, v)| v.clone())
        .collect();
    let strict_keys: Arc<Vec<Vec<u8>>> =
        Arc::new(strict_left.iter().map(|(k, _)| k.clone()).collect());
    cluster.wait_for(
        "every acknowledged key on >= 3 nodes, copies agreeing",
        dl.at_most(Duration::from_secs(90)),
        || {
            let copies = rt.block_on(local_copies(&addrs, b"sloppy", sloppy_keys.clone()));
            none_of(
                replica_problems(
                    &copies,
                    &sloppy_keys,
                    &sloppy_values,
                    3,
                    Agreement::Identical,
                ),
                "sloppy keys not converged",
            )?;
            let copies = rt.block_on(local_copies(&addrs, b"strict", strict_keys.clone()));
            none_of(
                replica_problems(
                    &copies,
                    &strict_keys,
                    &strict_acked,
                    3,
                    Agreement::Identical,
                ),
                "strict keys not converged",
            )
        },
    );
    let converged = healed.elapsed();
    println!(
        "  healed: all {} acknowledged keys on >= 3 agreeing nodes after {:.2} s \
         ({} hints delivered, {} keys repaired by anti-entropy since the heal); lost 0",
        3 * KEYS,
        converged.as_secs_f64(),
        cluster
            .counter_sum("hints", "delivered")
            .saturating_sub(hints_before),
        cluster
            .counter_sum("repair", "keys_repaired")
            .saturating_sub(repaired_before)
    );
}

/// 3 nodes: k is written at w=3, n3 is cut off, k is deleted through n1 (w=2, with the
/// context of a read). After the heal no node may show a value for k, a read with r=3 finds
/// nothing, and that still holds after a few more anti-entropy rounds (the tombstone is far
/// younger than `tombstone-grace-ms`, so nobody may purge it).
#[test]
fn delete_survives_a_partition() {
    let _serial = serial();
    let dl = Deadline::new(Duration::from_secs(120));
    let cluster = start(3, 500, &["--tombstone-grace-ms", "3600000"]);
    let rt = rt();
    let (a1, a3) = (cluster.nodes[0].addr, cluster.nodes[2].addr);
    rt.block_on(async {
        let c1 = Client::connect(a1).await.unwrap();
        c1.put_with(b"del", b"k", b"v".to_vec(), &[], &q(3, 2, 3))
            .await
            .unwrap();
    });
    cluster.partition(&[&[0, 1], &[2]]);
    let seen = cluster.wait_views(
        &[0, 1],
        &names(&cluster, &[2]),
        false,
        dl.at_most(Duration::from_secs(30)),
    );
    cluster.wait_views(
        &[2],
        &names(&cluster, &[0, 1]),
        false,
        dl.at_most(Duration::from_secs(30)),
    );
    rt.block_on(async {
        let c1 = Client::connect(a1).await.unwrap();
        let got = c1.get_with(b"del", b"k", &q(3, 2, 2)).await.unwrap();
        assert_eq!(got.values, vec![b"v".to_vec()]);
        c1.delete_with(b"del", b"k", &got.context, &q(3, 2, 2))
            .await
            .unwrap();
    });
    assert_eq!(cluster.local_values(0, b"del", b"k"), Vec::<Vec<u8>>::new());
    assert_eq!(
        cluster.local_values(2, b"del", b"k"),
        vec![b"v".to_vec()],
        "n3 was cut off, yet it got the delete"
    );

    cluster.heal();
    let healed = Instant::now();
    let all_empty = || {
        for i in 0..3 {
            let values = cluster.local_values(i, b"del", b"k");
            if !values.is_empty() {
                return Err(format!("n{} shows {}", i + 1, show_copy(&Some(values))));
            }
        }
        Ok(())
    };
    cluster.wait_for(
        "no node to show a value for the deleted key",
        dl.at_most(Duration::from_secs(30)),
        &all_empty,
    );
    let gone = healed.elapsed();
    let read_r3 = || {
        rt.block_on(async {
            let c3 = connect(a3).await?;
            call(c3.get_with(b"del", b"k", &q(3, 3, 2))).await
        })
        .map_err(|e| e.to_string())
    };
    let got = cluster.wait_for(
        "a read with r=3",
        dl.at_most(Duration::from_secs(30)),
        &read_r3,
    );
    assert_eq!(got.values, Vec::<Vec<u8>>::new(), "r=3 read after the heal");

    let exchanges = || cluster.counter_sum("repair", "exchanges");
    let base = exchanges();
    cluster.wait_for(
        "6 more anti-entropy exchanges",
        dl.at_most(Duration::from_secs(30)),
        || match exchanges() {
            n if n >= base + 6 => Ok(()),
            n => Err(format!("{} so far", n - base)),
        },
    );
    all_empty().unwrap_or_else(|e| panic!("the deleted key came back after repair rounds: {e}"));
    let got = cluster.wait_for(
        "a read with r=3",
        dl.at_most(Duration::from_secs(30)),
        &read_r3,
    );
    assert_eq!(
        got.values,
        Vec::<Vec<u8>>::new(),
        "r=3 read after repair rounds"
    );
    let purged = cluster.counter_sum("repair", "tombstones_purged");
    println!(
        "delete across a partition: n1, n2 saw n3 down after {:.2} s; after the heal every copy \
         was gone in {:.2} s, and stayed gone over {} more exchanges; tombstones purged: {purged}",
        seen.as_secs_f64(),
        gone.as_secs_f64(),
        exchanges() - base
    );
    assert_eq!(
        purged, 0,
        "a tombstone younger than tombstone-grace-ms was purged"
    );
}

/// 5 nodes with fault injection: the seeded random schedule of [`random_faults`] for about
/// 50 s, partitions made by the nodes' injected drop rule.
#[test]
fn random_faults_keep_every_acknowledged_element() {
    let _serial = serial();
    let dl = Deadline::new(Duration::from_secs(240));
    let seed = test_seed();
    let mut cluster = start(5, 500, &[]);
    random_faults(&mut cluster, seed, Duration::from_secs(50), &dl);
}

/// 3 nodes: each actor type of n1 panics in turn. Its supervisor must restart it (the
/// `restarts` counter goes up), n1 must serve a put and a get again (after a listener
/// restart, on a new connection to the same port), a write at w=3 through n2 must reach n1's
/// replica endpoint, data written before must still be there, and the cluster status must
/// converge.
#[test]
fn every_actor_type_restarts() {
    let _serial = serial();
    let dl = Deadline::new(Duration::from_secs(180));
    let cluster = start(3, 500, &[]);
    let rt = rt();
    let (a1, a2) = (cluster.nodes[0].addr, cluster.nodes[1].addr);
    rt.block_on(async {
        let c = Client::connect(a1).await.unwrap();
        c.put_with(b"sup", b"before", b"kept".to_vec(), &[], &q(3, 2, 3))
            .await
            .unwrap();
    });
    for actor in [
        "replica", "gossip", "handoff", "repair", "listener", "vnodes",
    ] {
        let before = cluster
            .counter(0, "restarts", actor)
            .expect("n1 answers its status");
        let t = Instant::now();
        cluster.panic_actor(0, actor);
        cluster.wait_for(
            &format!("n1 to count a restart of {actor}"),
            dl.at_most(Duration::from_secs(15)),
            || match cluster.counter(0, "restarts", actor) {
                Some(n) if n > before => Ok(()),
                other => Err(format!("restarts.{actor} = {other:?}, was {before}")),
            },
        );
        let restarted = t.elapsed();
        let key = format!("after-{actor}").into_bytes();
        cluster.wait_for(
            &format!("n1 to serve a put and a get after the {actor} restart"),
            dl.at_most(Duration::from_secs(15)),
            || {
                rt.block_on(async {
                    let c = connect(a1).await?;
                    call(c.put_with(b"sup", &key, b"v".to_vec(), &[], &q(3, 2, 2))).await?;
                    let got = call(c.get_with(b"sup", &key, &q(3, 2, 2))).await?;
                    let kept = call(c.get_with(b"sup", b"before", &q(3, 2, 2))).await?;
                    Ok::<_, Failure>((got.values, kept.values))
                })
                .map_err(|e| e.to_string())
                .and_then(|(got, kept)| {
                    if got.contains(&b"v".to_vec()) && kept == vec![b"kept".to_vec()] {
                        Ok(())
                    } else {
                        Err(format!("read {got:?} and {kept:?}"))
                    }
                })
            },
        );
        cluster.wait_for(
            &format!("a write at w=3 through n2 after the {actor} restart of n1"),
            dl.at_most(Duration::from_secs(15)),
            || {
                rt.block_on(async {
                    let c = connect(a2).await?;
                    call(c.put_with(b"sup", &key, b"w3".to_vec(), &[], &q(3, 2, 3))).await
                })
                .map_err(|e| e.to_string())
            },
        );
        let served = t.elapsed();
        if actor == "repair" {
            let base = cluster
                .counter(0, "repair", "exchanges")
                .expect("n1 answers");
            cluster.wait_for(
                "n1's anti-entropy rounds to go on after its restart",
                dl.at_most(Duration::from_secs(15)),
                || match cluster.counter(0, "repair", "exchanges") {
                    Some(n) if n > base => Ok(()),
                    other => Err(format!("exchanges {other:?}, was {base}")),
                },
            );
        }
        let converged = cluster.wait_converged(dl.at_most(Duration::from_secs(30)));
        println!(
            "{actor}: restart counted after {:.3} s; n1 served again after {:.3} s; the cluster \
             status converged {:.3} s later",
            restarted.as_secs_f64(),
            served.as_secs_f64(),
            converged.as_secs_f64()
        );
    }
}

/// One node; its gossip actor panics six times in quick succession. The restart budget is 5
/// in 10 s: the sixth must make the node supervisor give up and the process exit with a
/// failure status, not linger half alive.
#[test]
fn escalation_stops_the_node_cleanly() {
    let _serial = serial();
    let dl = Deadline::new(Duration::from_secs(90));
    let mut cluster = start(1, 500, &[]);
    let first = Instant::now();
    for k in 1..=5u64 {
        cluster.panic_actor(0, "gossip");
        cluster.wait_for(
            &format!("restart {k} of gossip"),
            dl.at_most(Duration::from_secs(5)),
            || match cluster.counter(0, "restarts", "gossip") {
                Some(n) if n >= k => Ok(()),
                other => Err(format!("restarts.gossip = {other:?}")),
            },
        );
    }
    let five = first.elapsed();
    assert!(
        five < Duration::from_secs(8),
        "five gossip restarts took {five:?}; the sixth panic would not fall in the 10 s window"
    );
    let sixth = Instant::now();
    // The node may exit before it answers.
    let _ = cluster.request(
        0,
        ringkv_api::protocol::RequestFrame {
            op: "inject_fault".into(),
            fault: Some("panic_actor".into()),
            actor: Some("gossip".into()),
            ..Default::default()
        },
        Duration::from_secs(5),
    );
    let status = cluster.nodes[0].wait_exit(dl.at_most(Duration::from_secs(20)));
    let exited = sixth.elapsed();
    println!(
        "escalation: 5 gossip restarts in {:.3} s; after the sixth panic n1 exited in {:.3} s \
         with {status}",
        five.as_secs_f64(),
        exited.as_secs_f64()
    );
    assert!(
        !status.success(),
        "n1 gave up on its gossip actor but exited with {status}"
    );
}

/// 3 nodes with `--tombstone-grace-ms 0`: 20 keys written at w=3, n3 killed, the keys deleted
/// at w=2. While n3 is down no tombstone may be purged (not every replica holds it), however
/// many anti-entropy rounds pass. After n3 restarts (holding the old values), hints and
/// anti-entropy give it the tombstones; only then are they purged, on every node, and no value
/// comes back.
#[test]
fn tombstones_are_purged_only_once_every_replica_holds_them() {
    let _serial = serial();
    let dl = Deadline::new(Duration::from_secs(120));
    let mut cluster = start(3, 300, &["--tombstone-grace-ms", "0"]);
    let rt = rt();
    let a1 = cluster.nodes[0].addr;
    let keys: Vec<Vec<u8>> = (0..20).map(|i| format!("t{i:02}").into_bytes()).collect();
    rt.block_on(async {
        let c1 = Client::connect(a1).await.unwrap();
        for k in &keys {
            c1.put_with(b"purge", k, b"v".to_vec(), &[], &q(3, 2, 3))
                .await
                .unwrap();
        }
    });
    cluster.nodes[2].kill9();
    rt.block_on(async {
        let c1 = Client::connect(a1).await.unwrap();
        for k in &keys {
            let got = c1.get_with(b"purge", k, &q(3, 2, 2)).await.unwrap();
            c1.delete_with(b"purge", k, &got.context, &q(3, 2, 2))
                .await
                .unwrap();
        }
    });
    // A local read of a tombstone has no values but a context; a purged key has neither.
    let addrs = cluster.addrs();
    // (keys with a value, tombstones) on node i.
    let local_state = |i: usize| -> (usize, usize) {
        rt.block_on(async {
            let c = Client::connect(addrs[i]).await.unwrap();
            let (mut values, mut tombstones) = (0, 0);
            for k in &keys {
                let got = c.get_with(b"purge", k, &local()).await.unwrap();
                values += usize::from(!got.values.is_empty());
                tombstones += usize::from(got.values.is_empty() && !got.context.is_empty());
            }
            (values, tombstones)
        })
    };
    let base = cluster.counter_sum("repair", "exchanges");
    cluster.wait_for(
        "six anti-entropy exchanges with n3 down",
        dl.at_most(Duration::from_secs(30)),
        || match cluster.counter_sum("repair", "exchanges") {
            n if n >= base + 6 => Ok(()),
            n => Err(format!("{} exchanges so far", n - base)),
        },
    );
    assert_eq!(cluster.counter_sum("repair", "tombstones_purged"), 0);
    assert_eq!(local_state(0), (0, keys.len()), "n1 purged with n3 down");
    assert_eq!(local_state(1), (0, keys.len()), "n2 purged with n3 down");

    cluster.nodes[2].restart();
    let restarted = Instant::now();
    cluster.wait_for(
        "every tombstone purged on every node",
        dl.at_most(Duration::from_secs(60)),
        || {
            let held: Vec<(usize, usize)> = (0..3).map(local_state).collect();
            // n1 and n2 never show a value again; n3 does until it gets the tombstones.
            assert!(
                held[..2].iter().all(|(v, _)| *v == 0),
                "a deleted value came back: {held:?}"
            );
            if held.iter().all(|h| *h == (0, 0)) {
                Ok(())
            } else {
                Err(format!("(values, tombstones) per node: {held:?}"))
            }
        },
    );
    let purged = restarted.elapsed();
    for k in &keys {
        let got = cluster.wait_for(
            "a read with r=3",
            dl.at_most(Duration::from_secs(30)),
            || {
                rt.block_on(async {
                    let c3 = connect(addrs[2]).await?;
                    call(c3.get_with(b"purge", k, &q(3, 3, 2))).await
                })
                .map_err(|e| e.to_string())
            },
        );
        assert!(got.values.is_empty(), "a purged key came back");
    }
    println!(
        "tombstones: none purged while n3 was down; {} purged on 3 nodes {:.2} s after n3 \
         came back",
        cluster.counter_sum("repair", "tombstones_purged"),
        purged.as_secs_f64()
    );
}
