//! Throughput of one partition transfer: fills a partition with `--mb` MB (default 100) of
//! ~1 KB values on node `a`, then lets node `b`'s Transfer actor pull it (chunks of the
//! default `max-record-bytes`, 6 MiB) and verify it, and prints MB/s, keys/s, chunks and the
//! time.
//!
//! Both nodes run in this process over the simulated network (`ringkv_actors::sim`): real
//! storage (LMDB, group commit, fsync), the real wire encoding of every request and answer,
//! no TCP. The throttle is set to `--rate` MB/s (default 0: effectively unlimited, to
//! measure the mechanism; a node's default is 64 MiB/s).
//!
//! ```text
//! cargo run --release -p ringkv-actors --example transfer_throughput -- --mb 100
//! ```

use ringkv_actors::rpc::{MergeStored, ReplicaTransport};
use ringkv_actors::sim::{SimNetwork, SimPeer};
use ringkv_actors::transfer::{
    LogEvents, Transfer, TransferArgs, TransferConfig, TransferHandle, TransferState, TransferTask,
};
use ringkv_actors::NodeConfig;
use ringkv_storage::{keys, DvvSet, VersionVector};
use serde_bytes::ByteBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

const Q: u32 = 4;
const P: u32 = 1;
const VALUE: usize = 1000;

fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(|v| v.parse().expect("a number"))
        .unwrap_or(default)
}

#[tokio::main]
async fn main() {
    let mb = arg("--mb", 100);
    let rate_mb = arg("--rate", 0);
    let dirs = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let net = SimNetwork::new();
    let config = |dir: &tempfile::TempDir| NodeConfig {
        data_dir: dir.path().to_path_buf(),
        partitions: Q,
        initial_map_bytes: 256 << 20,
        ..Default::default()
    };
    let a = net.start_node("a", config(&dirs.0)).await.unwrap();
    let b = net.start_node("b", config(&dirs.1)).await.unwrap();

    // Fill partition P on a: ~1 KB values until the partition holds `mb` MB.
    let target = mb * 1_000_000;
    let started = Instant::now();
    let mut i = 0u64;
    let mut batch = Vec::new();
    loop {
        let stats = a.context().partition(P).unwrap().stats().unwrap();
        if stats.bytes >= target {
            break;
        }
        while batch.len() < 2000 {
            let key = format!("key-{i:010}");
            i += 1;
            if ringkv_cluster::partition_for(b"bench", key.as_bytes(), Q) != P {
                continue;
            }
            let mut d = DvvSet::new();
            let value: Vec<u8> = (0..VALUE).map(|j| (i as usize + j) as u8).collect();
            d.update(&VersionVector::new(), 7, Some(value), 1, 100)
                .unwrap();
            batch.push((
                ByteBuf::from(keys::storage_key(b"bench", key.as_bytes()).unwrap()),
                d,
            ));
        }
        let merge = MergeStored {
            partition: P,
            entries: std::mem::take(&mut batch),
        };
        a.call("a", merge, Duration::from_secs(60)).await.unwrap();
    }
    let stats = a.context().partition(P).unwrap().stats().unwrap();
    println!(
        "filled partition {P} on a: {} keys, {:.1} MB in {:.1} s",
        stats.keys,
        stats.bytes as f64 / 1e6,
        started.elapsed().as_secs_f64()
    );

    let handle = TransferHandle::new();
    let rate = if rate_mb == 0 {
        u64::MAX / 2
    } else {
        rate_mb * 1_000_000
    };
    let transfer_config = TransferConfig {
        max_bytes_per_sec: rate,
        ..TransferConfig::of(&config(&dirs.1))
    };
    let (actor, _) = ractor::Actor::spawn(
        None,
        Transfer::<SimPeer>::new(),
        TransferArgs {
            system: b.system(),
            peers: b.clone(),
            events: Arc::new(LogEvents),
            handle: handle.clone(),
            config: transfer_config,
        },
    )
    .await
    .unwrap();
    let started = Instant::now();
    handle.want(vec![TransferTask {
        version: 1,
        partition: P,
        sources: vec!["a".into()],
    }]);
    let mut streamed_at = None;
    let row = loop {
        let rows = handle.status().await;
        let row = rows.into_iter().next().expect("one transfer");
        if streamed_at.is_none() && row.state == TransferState::Verifying {
            streamed_at = Some(started.elapsed());
        }
        match &row.state {
            TransferState::Done => break row,
            TransferState::Failed { reason } => panic!("transfer failed: {reason}"),
            _ => tokio::time::sleep(Duration::from_millis(5)).await,
        }
    };
    let took = started.elapsed();
    let (chunks, keys, bytes, exchanges) = handle.counters().snapshot();
    let same = a.context().partition(P).unwrap().merkle_tree()
        == b.context().partition(P).unwrap().merkle_tree();
    println!(
        "transfer over the simulated in-process network (real storage and wire encoding, no TCP):"
    );
    println!(
        "  {} keys, {:.1} MB in {} chunks (chunk budget {:.1} MB), throttle {}",
        keys,
        bytes as f64 / 1e6,
        chunks,
        transfer_config.chunk_bytes as f64 / 1e6,
        if rate_mb == 0 {
            "off".to_string()
        } else {
            format!("{rate_mb} MB/s")
        }
    );
    println!(
        "  time {:.2} s (stream {:.2} s, verification {} exchange(s)); {:.1} MB/s, {:.0} keys/s",
        took.as_secs_f64(),
        streamed_at.unwrap_or(took).as_secs_f64(),
        exchanges,
        bytes as f64 / 1e6 / took.as_secs_f64(),
        keys as f64 / took.as_secs_f64()
    );
    println!(
        "  row: {} -> {}, bytes {}/{}, keys {}; Merkle trees equal: {same}",
        row.from, row.to, row.bytes_sent, row.bytes_total, row.keys
    );
    actor.stop_and_wait(None, None).await.unwrap();
    net.shutdown().await;
}
