//! Time to live across real `ringkv` processes (3 nodes on 127.0.0.x, n = 3): a value put with
//! a TTL reads until it expires and then as missing on every replica; it is not purged while a
//! replica is down; once every replica holds it, it is purged from all of them; and a replica
//! that missed the purge (its data directory restored from a copy taken before it) does not
//! bring it back: its copy is still expired, reads as missing, and is purged again.
//!
//! Every wait polls a condition against the scenario's [`Deadline`]; nothing sleeps a fixed
//! time. Run with `--nocapture` for the timings.

use ringkv_api::{CallOptions, Client, WriteCondition};
use ringkv_tests::workload::{call, connect, Deadline};
use ringkv_tests::Cluster;
use ringkv_tests::{local_read as local, quorum as q, runtime as rt};
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

const BUCKET: &[u8] = b"sessions";

/// The time to live of the scenario's values: long enough for the checks made before it
/// passes (a few dozen local requests), short enough to keep the test quick.
const TTL: Duration = Duration::from_secs(4);

/// 3 nodes, 16 partitions, anti-entropy (and so the purge) every 300 ms, hints every 200 ms,
/// no tombstone grace and a 200 ms clock skew allowance (the nodes share one clock): expired
/// values are purged 200 ms after their expiry once every replica holds them.
fn start() -> Cluster {
    Cluster::start(
        3,
        &[
            "--partitions",
            "16",
            "--repair-interval-ms",
            "300",
            "--handoff-interval-ms",
            "200",
            "--tombstone-grace-ms",
            "0",
            "--max-clock-skew-ms",
            "200",
        ],
    )
}

/// What node `addr` holds of each key, read with `local: true`: `(keys with a value, keys
/// read as missing but still stored (an expired value or a tombstone: a context, no value),
/// Waits until no node holds any of `keys` (all purged), failing the test if one of them
/// reads as a value again meanwhile.
fn wait_all_purged(
    cluster: &Cluster,
    addrs: &[SocketAddr],
    keys: &[Vec<u8>],
    within: Duration,
    what: &str,
) {
    cluster.wait_for(what, within, || {
        let now: Vec<_> = addrs
            .iter()
            .map(|a| held(*a, keys))
            .collect::<Result<_, _>>()?;
        assert!(
            now.iter().all(|(values, _, _)| *values == 0),
            "{what}: an expired value reads again: {now:?}"
        );
        if now.iter().all(|h| *h == (0, 0, keys.len())) {
            Ok(())
        } else {
            Err(format!("(values, expired, purged) per node: {now:?}"))
        }
    });
}

/// keys not stored at all)`.
fn held(addr: SocketAddr, keys: &[Vec<u8>]) -> Result<(usize, usize, usize), String> {
    rt().block_on(async {
        let c = connect(addr).await.map_err(|e| e.to_string())?;
        let (mut values, mut expired, mut gone) = (0, 0, 0);
        for k in keys {
            let got = call(c.get_with(BUCKET, k, &local()))
                .await
                .map_err(|e| e.to_string())?;
            match (got.values.is_empty(), got.context.is_empty()) {
                (false, _) => values += 1,
                (true, false) => expired += 1,
                (true, true) => gone += 1,
            }
        }
        Ok((values, expired, gone))
    })
}

/// Copies directory `from` into `to` (created), files and subdirectories.
fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// Replaces everything in `dir` by a copy of `from`.
fn restore_dir(from: &Path, dir: &Path) {
    std::fs::remove_dir_all(dir).unwrap();
    copy_dir(from, dir);
}

#[test]
fn expired_values_read_as_missing_everywhere_are_purged_and_never_come_back() {
    let dl = Deadline::new(Duration::from_secs(150));
    let mut cluster = start();
    let rt = rt();
    let addrs = cluster.addrs();
    let keys: Vec<Vec<u8>> = (0..12).map(|i| format!("s{i:02}").into_bytes()).collect();
    let with_ttl = CallOptions {
        ttl: Some(TTL),
        ..q(3, 2, 3)
    };

    // Written on all three replicas (w = 3) with a TTL; the CLI writes one more, "c".
    let sent = Instant::now();
    rt.block_on(async {
        let c1 = Client::connect(addrs[0]).await.unwrap();
        for (i, k) in keys.iter().enumerate() {
            c1.put_with(BUCKET, k, format!("v{i}").into_bytes(), &[], &with_ttl)
                .await
                .unwrap();
        }
    });
    let (code, _, err) = cluster.nodes[0].cli(
        &["put", "sessions", "c", "cart", "--ttl", "4s", "--w", "3"],
        None,
    );
    assert_eq!(code, 0, "ringkv put --ttl: {err}");
    let all: Vec<Vec<u8>> = keys.iter().cloned().chain([b"c".to_vec()]).collect();
    // Every replica reads every value until the TTL has passed.
    let before: Vec<_> = (0..3).map(|i| held(addrs[i], &all).unwrap()).collect();
    let checked_at = sent.elapsed();
    if checked_at < TTL {
        for (i, h) in before.iter().enumerate() {
            assert_eq!(*h, (all.len(), 0, 0), "n{} before the expiry", i + 1);
        }
    } else {
        println!("the checks before the expiry took {checked_at:?}: skipped");
    }

    // n3 goes down before the values expire; a copy of its data directory is kept, to play a
    // replica that misses the purge later on.
    cluster.nodes[2].kill9();
    // Nothing can be purged while a replica is down, so the copy holds every value as long
    // as n3 went down before they could be purged (expiry plus the 200 ms skew allowance).
    assert!(sent.elapsed() < TTL, "n3 went down after the expiry");
    let snapshot = tempfile::tempdir().unwrap();
    copy_dir(&cluster.nodes[2].data_dir(), snapshot.path());

    // Expired: a quorum read through n1 finds nothing, and never before the TTL.
    let expired_after = cluster.wait_for(
        "every key to read as missing",
        dl.at_most(Duration::from_secs(20)),
        || {
            let found = rt.block_on(async {
                let c1 = connect(addrs[0]).await?;
                let mut found = 0;
                for k in &all {
                    found += usize::from(
                        !call(c1.get_with(BUCKET, k, &q(3, 2, 2)))
                            .await?
                            .values
                            .is_empty(),
                    );
                }
                Ok::<_, ringkv_tests::workload::Failure>(found)
            });
            match found {
                Ok(0) => Ok(sent.elapsed()),
                Ok(n) => Err(format!("{n} keys still read")),
                Err(e) => Err(e.to_string()),
            }
        },
    );
    assert!(
        expired_after >= TTL,
        "read as missing after {expired_after:?}"
    );
    // The CLI says "not found" (exit code 1) for an expired key.
    let (code, _, _) = cluster.nodes[1].cli(&["get", "sessions", "s00", "--r", "2"], None);
    assert_eq!(code, 1, "ringkv get of an expired key");

    // if_none_match creates "c" over its expired value (n3 is down: w = 2).
    let create = CallOptions {
        condition: Some(WriteCondition::IfNoneMatch),
        ..q(3, 2, 2)
    };
    rt.block_on(async {
        let c2 = Client::connect(addrs[1]).await.unwrap();
        c2.put_with(BUCKET, b"c", b"created".to_vec(), &[], &create)
            .await
            .unwrap();
    });

    // With n3 down nothing is purged, however many exchanges pass: n1 and n2 still hold
    // every expired value (a context, no value).
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
    for (i, addr) in addrs.iter().enumerate().take(2) {
        assert_eq!(
            held(*addr, &keys).unwrap(),
            (0, keys.len(), 0),
            "n{} purged with n3 down",
            i + 1
        );
    }

    // n3 comes back holding the expired values: it reads them as missing at once, and once
    // it holds every entry the others hold, they are purged on all three.
    cluster.nodes[2].restart();
    let restarted = Instant::now();
    wait_all_purged(
        &cluster,
        &addrs,
        &keys,
        dl.at_most(Duration::from_secs(40)),
        "every expired value purged on every node",
    );
    let purged_in = restarted.elapsed();
    let purged_first = cluster.counter_sum("repair", "tombstones_purged");
    assert!(
        purged_first >= 3 * keys.len() as u64,
        "{purged_first} purged"
    );

    // n3 loses its disk and gets back the copy from before the purge: it holds every expired
    // value the others no longer have.
    cluster.nodes[2].kill9();
    restore_dir(snapshot.path(), &cluster.nodes[2].data_dir());
    cluster.nodes[2].restart();
    let restored = Instant::now();
    // Read at once: before n3 has even reconnected to the others, so nothing purged yet.
    assert_eq!(
        held(addrs[2], &keys).unwrap(),
        (0, keys.len(), 0),
        "n3's copies from before the purge: (values, expired, purged)"
    );
    // Quorum reads through every node (r = 3: n3's copy is merged in) find nothing.
    for (i, addr) in addrs.iter().enumerate() {
        for k in &keys {
            let got = cluster.wait_for(
                "a read with r = 3",
                dl.at_most(Duration::from_secs(20)),
                || {
                    rt.block_on(async {
                        let c = connect(*addr).await?;
                        call(c.get_with(BUCKET, k, &q(3, 3, 2))).await
                    })
                    .map_err(|e| e.to_string())
                },
            );
            assert!(
                got.values.is_empty(),
                "n{}: a purged value came back",
                i + 1
            );
        }
    }
    wait_all_purged(
        &cluster,
        &addrs,
        &keys,
        dl.at_most(Duration::from_secs(40)),
        "the restored expired values purged again on every node",
    );
    let purged_again_in = restored.elapsed();

    // "c" was created over its expired value: it reads "created" everywhere (n3's restored
    // copy holds only the expired version; the new one reaches it by repair), and, having a
    // live value without expiry, it is never purged.
    cluster.wait_for(
        "c to read \"created\" on every node",
        dl.at_most(Duration::from_secs(30)),
        || {
            let copies: Vec<Vec<Vec<u8>>> = (0..3)
                .map(|i| cluster.local_values(i, BUCKET, b"c"))
                .collect();
            if copies.iter().all(|v| *v == [b"created".to_vec()]) {
                Ok(())
            } else {
                Err(format!("{copies:?}"))
            }
        },
    );
    println!(
        "ttl: {} keys with a {TTL:?} TTL read as missing {:.2} s after the first put; none \
         purged while n3 was down; purged on 3 nodes {:.2} s after n3 came back; n3's copy \
         from before the purge read as missing and was purged again {:.2} s after its restore",
        keys.len(),
        expired_after.as_secs_f64(),
        purged_in.as_secs_f64(),
        purged_again_in.as_secs_f64()
    );
}
