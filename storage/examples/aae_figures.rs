//! Figures of an active anti-entropy exchange between two replicas of one partition.
//!
//! `cargo run --release -p ringkv-storage --example aae_figures`
//!
//! Two partitions in temporary directories get the same [`KEYS`] keys ([`VALUE_BYTES`]-byte
//! values), then [`MISSING`] keys are written to one side only and [`CHANGED`] keys get a
//! concurrent value on the other side. The example then runs the exchange walk of
//! [`ringkv_storage::merkle`] as the vnode does it: side A asks side B for the root, then,
//! level by level, for the children of the nodes whose hashes differ only, then for the
//! entries of the differing segments, and computes the differing keys with
//! [`merkle::diff_entries`]. Every request and answer is counted as the named msgpack
//! (`rmp_serde::to_vec_named`) of a struct that mirrors what crosses the wire. A last phase
//! repairs the differences (each side merges the other's state) and checks that the roots are
//! then equal.
//!
//! It also prints how long [`Partition::open`] takes to load the tree of a partition of
//! [`KEYS`] keys from the checkpoint a clean shutdown left, and to rebuild it by a scan of the
//! partition's keys (as after a crash: the checkpoint is deleted to simulate one).

use ringkv_storage::merkle::{self, DEPTH, SEGMENTS};
use ringkv_storage::{keys, DvvSet, Partition, PartitionOptions, StorageError, VersionVector};
use serde::Serialize;
use serde_bytes::ByteBuf;
use std::error::Error;
use std::path::Path;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

/// Keys on both sides.
const KEYS: u32 = 100_000;
/// Bytes per value.
const VALUE_BYTES: usize = 256;
/// Keys written on side A only.
const MISSING: u32 = 5;
/// Keys that get a concurrent value on side B.
const CHANGED: u32 = 5;
/// Bucket of every key.
const BUCKET: &[u8] = b"bench";
/// Merges in flight while loading a side.
const MERGE_WINDOW: usize = 8192;

/// A's request for B's hashes of the children of `parents` at `level`.
#[derive(Serialize)]
struct TreeRequest {
    partition: u32,
    level: u32,
    parents: Vec<u32>,
}

/// B's answer: `16 * parents.len()` hashes (or the root alone at level 0).
#[derive(Serialize)]
struct TreeAnswer {
    hashes: Vec<u64>,
}

/// A's request for B's entries of `segments`.
#[derive(Serialize)]
struct SegmentsRequest {
    partition: u32,
    segments: Vec<u32>,
}

/// One entry of a segment.
#[derive(Serialize)]
struct Entry {
    segment: u32,
    key: ByteBuf,
    hash: u64,
}

/// B's answer: every entry of the segments asked.
#[derive(Serialize)]
struct SegmentsAnswer {
    entries: Vec<Entry>,
}

/// A record sent for repair, one way.
#[derive(Serialize)]
struct Repair {
    partition: u32,
    key: ByteBuf,
    record: Option<DvvSet>,
}

fn msgpack_len<T: Serialize>(v: &T) -> Result<usize, Box<dyn Error>> {
    Ok(rmp_serde::to_vec_named(v)?.len())
}

fn stored_key(i: u32) -> Result<Vec<u8>, StorageError> {
    keys::storage_key(BUCKET, format!("key-{i:08}").as_bytes())
}

/// The state of key `i` written once by `replica` with a value derived from `i` and `salt`.
fn state(i: u32, replica: u64, salt: u8) -> Result<DvvSet, Box<dyn Error>> {
    let value: Vec<u8> = (0..VALUE_BYTES)
        .map(|j| (i as u8) ^ (j as u8) ^ salt)
        .collect();
    let mut d = DvvSet::new();
    d.update(
        &VersionVector::new(),
        replica,
        Some(value),
        1_700_000_000_000,
        10,
    )
    .map_err(|l| format!("sibling limit {}", l.limit))?;
    Ok(d)
}

/// Merges every `(stored key, state)` into `p`, [`MERGE_WINDOW`] at a time in flight, and
/// waits for them.
fn merge_all(p: &Partition, states: Vec<(Vec<u8>, DvvSet)>) -> Result<(), Box<dyn Error>> {
    let (tx, rx) = mpsc::channel();
    let mut in_flight = 0;
    for (key, record) in states {
        // Stay under the writer's queue bound (`PartitionOptions::max_queue`).
        if in_flight == MERGE_WINDOW {
            rx.recv()??;
            in_flight -= 1;
        }
        let tx = tx.clone();
        p.merge_stored(
            key,
            record,
            Box::new(move |r| {
                let _ = tx.send(r.map(|_| ()));
            }),
        );
        in_flight += 1;
    }
    for _ in 0..in_flight {
        rx.recv()??;
    }
    Ok(())
}

/// What the walk sent, and how long each phase took.
#[derive(Default)]
struct Exchange {
    round_trips: u32,
    hashes: usize,
    bytes: usize,
    phases: Vec<(String, Duration, usize)>,
}

/// A walks the tree against B and returns the differing stored keys.
fn walk(a: &Partition, b: &Partition, x: &mut Exchange) -> Result<Vec<Vec<u8>>, Box<dyn Error>> {
    let mut parents = vec![0u32];
    let mut level = 0;
    let segments = loop {
        let started = Instant::now();
        let request = TreeRequest {
            partition: 0,
            level,
            parents: parents.clone(),
        };
        let theirs = b.merkle_children(level, &parents)?;
        let answer = TreeAnswer {
            hashes: theirs.clone(),
        };
        let ours = a.merkle_children(level, &parents)?;
        let differing = merkle::differing_children(level, &parents, &ours, &theirs);
        let bytes = msgpack_len(&request)? + msgpack_len(&answer)?;
        x.round_trips += 1;
        x.hashes += theirs.len();
        x.bytes += bytes;
        x.phases.push((
            format!(
                "level {level}: {} parents asked, {} hashes back, {} differ",
                if level == 0 { 0 } else { parents.len() },
                theirs.len(),
                differing.len()
            ),
            started.elapsed(),
            bytes,
        ));
        if differing.is_empty() {
            return Ok(Vec::new());
        }
        if level == DEPTH {
            break differing;
        }
        parents = differing;
        level += 1;
    };

    let started = Instant::now();
    let theirs = b.segment_entries(&segments)?;
    let request = SegmentsRequest {
        partition: 0,
        segments: segments.clone(),
    };
    let answer = SegmentsAnswer {
        entries: theirs
            .iter()
            .map(|(segment, key, hash)| Entry {
                segment: *segment,
                key: ByteBuf::from(key.clone()),
                hash: *hash,
            })
            .collect(),
    };
    let ours = a.segment_entries(&segments)?;
    let found = merkle::diff_entries(&ours, &theirs);
    let bytes = msgpack_len(&request)? + msgpack_len(&answer)?;
    x.round_trips += 1;
    x.hashes += theirs.len();
    x.bytes += bytes;
    x.phases.push((
        format!(
            "segments: {} asked, {} entries back, {} keys differ",
            segments.len(),
            theirs.len(),
            found.len()
        ),
        started.elapsed(),
        bytes,
    ));
    Ok(found)
}

/// Each side merges the other's state of each key; returns the bytes sent both ways.
fn repair(a: &Partition, b: &Partition, found: &[Vec<u8>]) -> Result<usize, Box<dyn Error>> {
    let mut bytes = 0;
    for key in found {
        let (ra, rb) = (a.get_stored(key)?, b.get_stored(key)?);
        for (record, to) in [(ra.clone(), b), (rb.clone(), a)] {
            bytes += msgpack_len(&Repair {
                partition: 0,
                key: ByteBuf::from(key.clone()),
                record: record.clone(),
            })?;
            if let Some(record) = record {
                merge_all(to, vec![(key.clone(), record)])?;
            }
        }
    }
    Ok(bytes)
}

/// Deletes partition 0's hash tree checkpoint from the (closed) data env in `dir`, as a crash
/// leaves it: its `meta` key is `p[partition: u32 BE]leaves` ([`ringkv_storage::store`]).
fn drop_checkpoint(dir: &Path) -> Result<(), Box<dyn Error>> {
    // SAFETY: the partition that owned this env is closed and dropped; nothing else opens it.
    let env = unsafe {
        heed::EnvOpenOptions::new()
            .read_txn_without_tls()
            .max_dbs(8)
            .open(dir)?
    };
    let wtxn = env.write_txn()?;
    let meta = env
        .create_databases_and_commit(wtxn, |opener, wtxn| -> Result<_, Box<dyn Error>> {
            let meta = opener
                .create_database::<heed::types::Bytes, heed::types::Bytes>(wtxn, Some("meta"))?;
            Ok(heed::CommitOrAbort::<_, ()>::Commit(meta))
        })?
        .unwrap_commit();
    let mut wtxn = env.write_txn()?;
    let deleted = meta.delete(&mut wtxn, b"p\0\0\0\0leaves")?;
    wtxn.commit()?;
    env.prepare_for_closing().wait();
    if !deleted {
        return Err("no checkpoint to delete: did the clean shutdown not write one?".into());
    }
    Ok(())
}

fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1e3)
}

fn main() -> Result<(), Box<dyn Error>> {
    let (dir_a, dir_b) = (tempfile::tempdir()?, tempfile::tempdir()?);
    let options = PartitionOptions::default();
    let mut a: Arc<Partition> = Partition::open(dir_a.path(), 0, 1, &options)?;
    let b = Partition::open(dir_b.path(), 0, 2, &options)?;

    let started = Instant::now();
    for side in [&a, &b] {
        let states = (0..KEYS)
            .map(|i| Ok((stored_key(i)?, state(i, 1, 0)?)))
            .collect::<Result<Vec<_>, Box<dyn Error>>>()?;
        merge_all(side, states)?;
    }
    let load = started.elapsed();
    let equal_roots = a.merkle_children(0, &[0])? == b.merkle_children(0, &[0])?;
    // MISSING new keys on A only; CHANGED existing keys get a concurrent value on B.
    let missing = (KEYS..KEYS + MISSING)
        .map(|i| Ok((stored_key(i)?, state(i, 1, 0)?)))
        .collect::<Result<Vec<_>, Box<dyn Error>>>()?;
    merge_all(&a, missing)?;
    let changed = (0..CHANGED)
        .map(|n| {
            let i = n * (KEYS / CHANGED) + 7;
            Ok((stored_key(i)?, state(i, 3, 0x5a)?))
        })
        .collect::<Result<Vec<_>, Box<dyn Error>>>()?;
    merge_all(&b, changed)?;

    println!("AAE exchange between two replicas of one partition");
    println!(
        "keys: {KEYS} on both sides ({VALUE_BYTES}-byte values), loaded in {} (both sides); roots equal after load: {equal_roots}",
        ms(load)
    );
    println!(
        "differences made: {MISSING} keys on A only, {CHANGED} keys with a concurrent value on B"
    );

    let mut x = Exchange::default();
    let started = Instant::now();
    let found = walk(&a, &b, &mut x)?;
    let walk_time = started.elapsed();
    for (what, time, bytes) in &x.phases {
        println!("  {what}: {}, {bytes} bytes", ms(*time));
    }
    println!("differing keys found: {}", found.len());
    println!("round trips: {}", x.round_trips);
    println!("hashes sent (B to A): {}", x.hashes);
    println!("bytes sent (requests + answers, msgpack): {}", x.bytes);
    println!("exchange time: {}", ms(walk_time));

    let all: Vec<u32> = (0..SEGMENTS).collect();
    let started = Instant::now();
    let every = b.segment_entries(&all)?;
    let full_list = msgpack_len(&SegmentsAnswer {
        entries: every
            .into_iter()
            .map(|(segment, key, hash)| Entry {
                segment,
                key: ByteBuf::from(key),
                hash,
            })
            .collect(),
    })?;
    println!(
        "for comparison, B's whole key list (every segment) is {full_list} bytes, read in {}",
        ms(started.elapsed())
    );

    let started = Instant::now();
    let repair_bytes = repair(&a, &b, &found)?;
    let converged = a.merkle_children(0, &[0])? == b.merkle_children(0, &[0])?;
    println!(
        "repair: {} keys merged both ways in {}, {repair_bytes} bytes; roots equal after: {converged}",
        found.len(),
        ms(started.elapsed())
    );

    // Tree load at open from the checkpoint, then rebuild by a scan of the keys.
    let keys_a = a.len()?;
    let root = a.merkle_children(0, &[0])?;
    a.shutdown();
    drop(a);
    let started = Instant::now();
    a = Partition::open(dir_a.path(), 0, 1, &options)?;
    let load_tree = started.elapsed();
    let same = a.merkle_children(0, &[0])? == root;
    println!(
        "open with the tree loaded from the clean-shutdown checkpoint ({keys_a} keys): {}, \
         same root: {same}, partitions scanned: {}",
        ms(load_tree),
        a.store().open_report().scanned
    );
    a.shutdown();
    drop(a);
    drop_checkpoint(dir_a.path())?;
    let started = Instant::now();
    a = Partition::open(dir_a.path(), 0, 1, &options)?;
    let rebuild = started.elapsed();
    let same = a.merkle_children(0, &[0])? == root;
    println!(
        "open with the tree rebuilt by a scan of the keys, as after a crash ({keys_a} keys): \
         {} (scan {} ms), same root: {same}",
        ms(rebuild),
        a.store().open_report().ms
    );
    a.shutdown();
    b.shutdown();
    Ok(())
}
