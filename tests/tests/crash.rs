//! Crash safety proven, not assumed (issue 11, item 4): a node killed with SIGKILL in the
//! middle of a write load keeps every write it acknowledged.

use ringkv_api::Client;
use ringkv_tests::NodeProcess;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// 20,000 distinct puts with 200 in flight; kill -9 once half of them are acknowledged;
/// restart on the same data directory; every acknowledged put reads back with its value.
#[test]
fn kill_9_during_20000_writes_loses_no_acknowledged_write() {
    const WRITES: usize = 20_000;
    const IN_FLIGHT: usize = 200;
    let mut node = NodeProcess::start(&["--partitions", "8"]);
    let rt = ringkv_tests::runtime();
    let acked = Arc::new(Mutex::new(Vec::with_capacity(WRITES)));
    let next = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let killed = Arc::new(AtomicBool::new(false));
    let addr = node.addr;
    let workers: Vec<_> = (0..IN_FLIGHT)
        .map(|_| {
            let (acked, next, failed, killed) =
                (acked.clone(), next.clone(), failed.clone(), killed.clone());
            rt.spawn(async move {
                let Ok(client) = Client::connect(addr).await else {
                    return;
                };
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= WRITES || killed.load(Ordering::Relaxed) {
                        return;
                    }
                    let key = format!("k{i:05}");
                    let value = format!("v{i}").into_bytes();
                    match tokio::time::timeout(
                        Duration::from_secs(10),
                        client.put(b"crash", key.as_bytes(), value, &[]),
                    )
                    .await
                    {
                        Ok(Ok(())) => acked.lock().unwrap().push(i),
                        _ => {
                            failed.fetch_add(1, Ordering::Relaxed);
                            return;
                        }
                    }
                }
            })
        })
        .collect();
    // Kill once half the writes are acknowledged (or after 60 s, whatever came by then).
    ringkv_tests::wait_until(
        "half the writes to be acknowledged",
        Duration::from_secs(60),
        || (acked.lock().unwrap().len() >= WRITES / 2).then_some(()),
    );
    node.kill9();
    killed.store(true, Ordering::Relaxed);
    let at_kill = acked.lock().unwrap().len();
    for w in workers {
        let _ = rt.block_on(w);
    }
    let acked = acked.lock().unwrap().clone();
    assert!(
        at_kill >= WRITES / 2,
        "only {at_kill} writes acknowledged in 60 s"
    );
    node.restart();
    let missing = rt.block_on(async {
        let client = Client::connect(node.addr).await.unwrap();
        let mut missing = Vec::new();
        for chunk in acked.chunks(IN_FLIGHT) {
            let mut reads = tokio::task::JoinSet::new();
            for &i in chunk {
                let client = client.clone();
                reads.spawn(async move {
                    let got = client.get(b"crash", format!("k{i:05}").as_bytes()).await;
                    (i, got.map(|f| f.values))
                });
            }
            while let Some(r) = reads.join_next().await {
                let (i, got) = r.unwrap();
                match got {
                    Ok(values) if values == vec![format!("v{i}").into_bytes()] => {}
                    other => missing.push((i, format!("{other:?}"))),
                }
            }
        }
        missing
    });
    println!(
        "kill -9 after {at_kill} of {WRITES} puts acknowledged ({IN_FLIGHT} in flight); {} acknowledged in all, {} failed or cut off; after restart {} acknowledged puts missing",
        acked.len(),
        failed.load(Ordering::Relaxed),
        missing.len()
    );
    assert!(
        missing.is_empty(),
        "acknowledged writes lost: {:?}",
        &missing[..missing.len().min(5)]
    );
}
