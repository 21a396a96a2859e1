//! How long clearing a large partition takes, and how long it holds the writes of the other
//! partitions of the node (issue 11, storage: "dropping a partition in bounded chunks").
//!
//! `cargo run --release -p ringkv-storage --example clear_partition`
//!
//! One data env ([`DataStore`]) with two partitions, on the real disk (a temporary directory
//! under the workspace's `target/`, or under `$CLEAR_PARTITION_DIR`; removed at the end).
//! Partition 0 is loaded with [`KEYS`] keys (`$CLEAR_PARTITION_KEYS` overrides it) of
//! [`VALUE_BYTES`]-byte values, through the real write path in group commits. Then one thread
//! writes to partition 1 in a closed loop (one durable write at a time, as a client with one
//! request in flight) while the main thread clears partition 0 with [`Partition::clear`].
//! Printed: the load time, the latency of partition 1's writes before the clear (the
//! baseline, [`BASELINE_WRITES`] writes) and during it (p50, p99, max), the clear's duration,
//! the commits that held its chunks and the most keys one of them deleted.
//!
//! `$CLEAR_PARTITION_CHUNK` sets [`PartitionOptions::clear_chunk_keys`] (default 4096); a
//! chunk larger than the partition shows what one transaction deleting everything would do to
//! the other partition's writes.

use hdrhistogram::Histogram;
use ringkv_storage::{DataStore, Identity, Partition, PartitionOptions, VersionVector};
use std::error::Error;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Instant;

/// Keys loaded into the partition that is cleared.
const KEYS: u64 = 1_000_000;
/// Bytes per value.
const VALUE_BYTES: usize = 100;
/// Writes in flight while loading (below the writer's queue bound of 16384).
const LOAD_WINDOW: u64 = 8192;
/// Writes to the other partition timed before the clear starts.
const BASELINE_WRITES: u64 = 300;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> Result<T, Box<dyn Error>>
where
    T::Err: Error + 'static,
{
    match std::env::var(name) {
        Ok(v) => Ok(v.parse()?),
        Err(_) => Ok(default),
    }
}

/// Loads `n` keys into `p`, keeping [`LOAD_WINDOW`] writes in flight.
fn load(p: &Partition, n: u64) -> Result<(), Box<dyn Error>> {
    let (tx, rx) = mpsc::channel::<Result<(), String>>();
    let value = vec![0x5au8; VALUE_BYTES];
    let mut in_flight = 0;
    for i in 0..n {
        if in_flight == LOAD_WINDOW {
            rx.recv()??;
            in_flight -= 1;
        }
        let tx = tx.clone();
        p.update(
            b"load",
            &i.to_be_bytes(),
            VersionVector::new(),
            Some(value.clone()),
            0,
            Box::new(move |r| {
                let _ = tx.send(r.map(|_| ()).map_err(|e| e.to_string()));
            }),
        );
        in_flight += 1;
    }
    for _ in 0..in_flight {
        rx.recv()??;
    }
    Ok(())
}

/// One durable write to `p`; returns its latency in microseconds.
fn timed_write(p: &Partition, i: u64) -> Result<u64, Box<dyn Error>> {
    let (tx, rx) = mpsc::sync_channel(1);
    let started = Instant::now();
    p.update(
        b"other",
        &i.to_be_bytes(),
        VersionVector::new(),
        Some(vec![1; VALUE_BYTES]),
        0,
        Box::new(move |r| {
            let _ = tx.send(r.map(|_| ()));
        }),
    );
    rx.recv()??;
    Ok(started.elapsed().as_micros() as u64)
}

fn print_latencies(what: &str, h: &Histogram<u64>) {
    println!(
        "{what}: {} writes, p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        h.len(),
        h.value_at_quantile(0.5) as f64 / 1e3,
        h.value_at_quantile(0.99) as f64 / 1e3,
        h.max() as f64 / 1e3
    );
}

fn main() -> Result<(), Box<dyn Error>> {
    let keys: u64 = env_or("CLEAR_PARTITION_KEYS", KEYS)?;
    let chunk: usize = env_or(
        "CLEAR_PARTITION_CHUNK",
        PartitionOptions::default().clear_chunk_keys,
    )?;
    let base = std::env::var_os("CLEAR_PARTITION_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    std::fs::create_dir_all(&base)?;
    let dir = tempfile::Builder::new()
        .prefix("clear_partition-")
        .tempdir_in(&base)?;
    let options = PartitionOptions {
        clear_chunk_keys: chunk,
        initial_map_bytes: 1 << 30,
        ..PartitionOptions::default()
    };
    let store = DataStore::open(
        dir.path(),
        &[(0, Identity::fixed(1)), (1, Identity::fixed(2))],
        &options,
    )?;
    let (cleared, other) = (Partition::of(&store, 0)?, Partition::of(&store, 1)?);

    let started = Instant::now();
    load(&cleared, keys)?;
    let stats = cleared.stats()?;
    println!(
        "loaded {} keys ({} MB of keys and records) into partition 0 in {:.1} s; env file {} MB",
        stats.keys,
        stats.bytes >> 20,
        started.elapsed().as_secs_f64(),
        std::fs::metadata(dir.path().join("data.mdb"))?.len() >> 20
    );

    let mut before = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    for i in 0..BASELINE_WRITES {
        before.record(timed_write(&other, i)?.max(1))?;
    }
    print_latencies("partition 1 before the clear", &before);

    // The other partition's writer runs until the clear is answered.
    let done = Arc::new(AtomicBool::new(false));
    let writer = {
        let (other, done) = (other.clone(), done.clone());
        std::thread::spawn(move || -> Result<Histogram<u64>, String> {
            let mut during =
                Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).map_err(|e| e.to_string())?;
            let mut i = BASELINE_WRITES;
            while !done.load(Ordering::Acquire) {
                let us = timed_write(&other, i).map_err(|e| e.to_string())?;
                during.record(us.max(1)).map_err(|e| e.to_string())?;
                i += 1;
            }
            Ok(during)
        })
    };
    let chunks_before = store.commit_stats().clear_chunks();
    let (tx, rx) = mpsc::sync_channel(1);
    let started = Instant::now();
    cleared.clear(Box::new(move |r| {
        let _ = tx.send(r);
    }));
    let deleted = rx.recv()??;
    let clear_time = started.elapsed();
    done.store(true, Ordering::Release);
    let during = writer.join().map_err(|_| "writer thread panicked")??;
    let commit_stats = store.commit_stats();
    println!(
        "cleared partition 0: {deleted} keys in {:.2} s, in {} commits of at most {} deletes \
         (clear_chunk_keys {chunk}); partition 0 now holds {} keys",
        clear_time.as_secs_f64(),
        commit_stats.clear_chunks() - chunks_before,
        commit_stats.most_cleared_per_commit(),
        cleared.len()?
    );
    print_latencies("partition 1 during the clear", &during);
    drop((cleared, other));
    store.shutdown();
    drop(store);
    dir.close()?;
    Ok(())
}
