//! The node's data env: ONE LMDB env holding every partition the node stores, written by ONE
//! group-committing writer thread.
//!
//! The writer thread takes every queued write of every partition (up to
//! [`PartitionOptions::max_batch`]), applies them in order inside one write transaction,
//! commits it with LMDB's default sync (data `fdatasync`, then the meta page) and only then
//! answers each write. With 50 writes in flight spread over 64 partitions a commit holds
//! about 45 writes instead of 1.2 with an env per partition, which is what doubled the durable
//! write rate in `examples/commit_layouts.rs` (README, "Storage").
//!
//! Databases, each key starting with the partition number (`u32` big-endian), so that a
//! partition is one contiguous key range:
//!
//! * `kv`: `[partition][stored key]` → record ([`crate::record`]); the stored key is
//!   [`crate::keys::storage_key`]'s `[bucket length: u8][bucket][key]`, at most 507 bytes so
//!   that the whole LMDB key stays within 511;
//! * `merkle`: `[partition][segment: u16][key hash: u128]` → `[entry hash: u64][stored key]`,
//!   one entry per key, written in the same transaction as `kv` (see [`crate::merkle`]);
//! * `meta`: `format` → [`FORMAT_VERSION`], and `p[partition]replica_id` /
//!   `p[partition]epoch` → each partition's replica id and epoch ([`crate::Identity`]).
//!
//! Each partition's 4096 Merkle leaf hashes and its key count are kept in memory, loaded from
//! `merkle` at open and updated by the writer after each commit, before the writes are
//! answered.

use crate::dvv::{DvvSet, ReplicaId, VersionVector};
use crate::env::{Abort, GrowableEnv};
use crate::merkle::{self, MerkleTree};
use crate::partition::{Identity, PartitionOptions, PurgeReply, WriteReply};
use crate::writer::WriterThread;
use crate::{record, StorageError};
use heed::types::Bytes;
use heed::{Database, RoTxn, RwTxn, WithoutTls};
use std::collections::HashMap;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

/// Version of the on-disk layout described in the module docs, stored under `format` in
/// `meta`. Version 0 was the env per partition (`partitions/NNNNN/`), which is refused.
pub const FORMAT_VERSION: u8 = 1;

/// Key of the format marker in `meta`.
const META_FORMAT: &[u8] = b"format";

/// Length of the partition prefix of every key, bytes.
pub(crate) const PREFIX_LEN: usize = 4;

/// Stored keys copied per step while the `merkle` database is rebuilt from `kv`.
const REBUILD_CHUNK: usize = 4096;

/// `[partition][stored key]`, the `kv` key of a stored key.
pub(crate) fn data_key(partition: u32, stored: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(PREFIX_LEN + stored.len());
    out.extend_from_slice(&partition.to_be_bytes());
    out.extend_from_slice(stored);
    out
}

/// `[partition][segment][key hash]`, the `merkle` key of a stored key's hash.
fn merkle_key(partition: u32, key_hash: u128) -> [u8; PREFIX_LEN + merkle::MERKLE_KEY_LEN] {
    let mut out = [0u8; PREFIX_LEN + merkle::MERKLE_KEY_LEN];
    out[..PREFIX_LEN].copy_from_slice(&partition.to_be_bytes());
    out[PREFIX_LEN..].copy_from_slice(&merkle::merkle_key(key_hash));
    out
}

/// Splits a `kv` or `merkle` key into its partition and the rest.
fn split_prefix(key: &[u8]) -> Result<(u32, &[u8]), StorageError> {
    key.split_first_chunk::<PREFIX_LEN>()
        .map(|(p, rest)| (u32::from_be_bytes(*p), rest))
        .ok_or_else(|| StorageError::Corrupt(format!("stored key of {} bytes", key.len())))
}

/// `p[partition][name]`, a partition's key in `meta`.
fn meta_key(partition: u32, name: &[u8]) -> Vec<u8> {
    let mut out = vec![b'p'];
    out.extend_from_slice(&partition.to_be_bytes());
    out.extend_from_slice(name);
    out
}

/// How a write changes one key's record.
pub(crate) enum Change {
    /// A client write coordinated here ([`DvvSet::update`]).
    Update {
        context: VersionVector,
        value: Option<Vec<u8>>,
        timestamp_ms: u64,
    },
    /// Another replica's state to merge ([`DvvSet::sync`]).
    Merge { record: DvvSet },
}

/// One queued operation of the writer thread.
pub(crate) enum WriteOp {
    /// A change of one stored key.
    Record {
        partition: u32,
        key: Vec<u8>,
        change: Change,
        reply: WriteReply,
    },
    /// Deletion of tombstones whose entry hash is still the given one.
    Purge {
        partition: u32,
        candidates: Vec<(Vec<u8>, u64)>,
        reply: PurgeReply,
    },
}

/// What one operation of a committed batch answers.
enum Outcome {
    Record(Result<DvvSet, StorageError>),
    Purged(Result<usize, StorageError>),
}

impl WriteOp {
    fn partition(&self) -> u32 {
        match self {
            WriteOp::Record { partition, .. } | WriteOp::Purge { partition, .. } => *partition,
        }
    }

    /// The outcome of this operation when its batch failed with `e`; a full map names this
    /// operation's partition.
    fn failed(&self, e: StorageError) -> Outcome {
        let e = match e {
            StorageError::Full { detail, .. } => StorageError::Full {
                partition: self.partition(),
                detail,
            },
            e => e,
        };
        match self {
            WriteOp::Record { .. } => Outcome::Record(Err(e)),
            WriteOp::Purge { .. } => Outcome::Purged(Err(e)),
        }
    }

    /// Answers the operation with `e`, without committing anything.
    pub(crate) fn refuse(self, e: StorageError) {
        let outcome = self.failed(e);
        self.answer(outcome);
    }

    fn answer(self, outcome: Outcome) {
        // `try_commit` makes each outcome from its own operation, so the kinds always match.
        let mismatch = || StorageError::Io("internal error: outcome of another operation".into());
        match (self, outcome) {
            (WriteOp::Record { reply, .. }, Outcome::Record(r)) => reply(r),
            (WriteOp::Purge { reply, .. }, Outcome::Purged(r)) => reply(r),
            (WriteOp::Record { reply, .. }, Outcome::Purged(_)) => reply(Err(mismatch())),
            (WriteOp::Purge { reply, .. }, Outcome::Record(_)) => reply(Err(mismatch())),
        }
    }
}

/// What the store keeps in memory of one partition.
pub(crate) struct PartState {
    /// Replica id of the dots made here.
    pub(crate) replica: ReplicaId,
    /// The hash tree, reflecting every answered write.
    pub(crate) tree: RwLock<MerkleTree>,
    /// Keys stored (tombstones included).
    pub(crate) keys: AtomicU64,
}

/// Counters of the writer thread, for tests and diagnostics.
#[derive(Debug, Default)]
pub struct CommitStats {
    commits: AtomicU64,
    writes: AtomicU64,
    most_partitions: AtomicUsize,
}

impl CommitStats {
    /// Transactions committed by the writer thread.
    pub fn commits(&self) -> u64 {
        self.commits.load(Ordering::Relaxed)
    }

    /// Operations (writes, merges, purges) those commits held.
    pub fn writes(&self) -> u64 {
        self.writes.load(Ordering::Relaxed)
    }

    /// Most distinct partitions written by one commit.
    pub fn most_partitions_per_commit(&self) -> usize {
        self.most_partitions.load(Ordering::Relaxed)
    }
}

/// The databases of the data env.
#[derive(Clone, Copy)]
struct Dbs {
    kv: Database<'static, Bytes, Bytes>,
    merkle: Database<'static, Bytes, Bytes>,
}

/// The node's data env and its writer thread, shared by every [`crate::Partition`] handle of
/// the node (`Arc<DataStore>`).
pub struct DataStore {
    path: PathBuf,
    genv: Arc<GrowableEnv>,
    dbs: Dbs,
    parts: Arc<HashMap<u32, PartState>>,
    writer: WriterThread<WriteOp>,
    stats: Arc<CommitStats>,
}

impl std::fmt::Debug for DataStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DataStore")
            .field("path", &self.path)
            .field("partitions", &self.parts.len())
            .finish()
    }
}

impl DataStore {
    /// Opens (creating if needed) the data env at `dir` for the partitions `partitions`, each
    /// with the [`Identity`] that chooses its replica id (see [`crate::Partition::open_as`]),
    /// recording every partition's id and new epoch in one commit; loads their hash trees
    /// (rebuilding the `merkle` database first if it does not hold one entry per key) and
    /// starts the writer thread.
    ///
    /// # Errors
    /// [`StorageError::UnsupportedFormat`] if the env was written in another format,
    /// [`StorageError::Io`] if the directory or env cannot be opened,
    /// [`StorageError::Corrupt`] if a `merkle` entry does not decode, [`StorageError::Full`]
    /// if the env does not fit in [`PartitionOptions::max_map_bytes`].
    pub fn open(
        dir: &Path,
        partitions: &[(u32, Identity)],
        options: &PartitionOptions,
    ) -> Result<Arc<Self>, StorageError> {
        let map_bytes =
            crate::env::starting_map_bytes(dir, options.initial_map_bytes, options.max_map_bytes);
        let (env, kv) = crate::env::open_env::<Bytes, Bytes>(dir, map_bytes, "kv")?;
        let merkle = crate::env::create_database::<Bytes, Bytes>(&env, "merkle")?;
        let meta = crate::env::create_database::<Bytes, Bytes>(&env, "meta")?;
        let genv = Arc::new(GrowableEnv::new(
            env,
            options.max_map_bytes,
            crate::env::Store::Data,
        ));
        let replicas = genv.write(|| {
            let mut wtxn = genv.env().write_txn()?;
            match meta.get(&wtxn, META_FORMAT)? {
                Some([FORMAT_VERSION]) => {}
                Some(other) => {
                    return Err(Abort::Failed(StorageError::UnsupportedFormat(format!(
                        "{} holds ringkv data format {other:?}, this version reads format {FORMAT_VERSION} only: \
                         start this node with an empty data directory (its replicas refill it)",
                        dir.display()
                    ))))
                }
                None => meta.put(&mut wtxn, META_FORMAT, &[FORMAT_VERSION])?,
            }
            let mut replicas = Vec::with_capacity(partitions.len());
            for (id, identity) in partitions {
                replicas.push(choose_replica(&mut wtxn, meta, *id, identity)?);
            }
            wtxn.commit()?;
            Ok(replicas)
        })?;
        let dbs = Dbs { kv, merkle };
        let mut trees = load_trees(&genv, dbs, partitions.iter().map(|(p, _)| *p))?;
        let parts: HashMap<u32, PartState> = partitions
            .iter()
            .zip(replicas)
            .map(|((p, _), replica)| {
                let (tree, keys) = trees.remove(p).unwrap_or_default();
                let state = PartState {
                    replica,
                    tree: RwLock::new(tree),
                    keys: AtomicU64::new(keys),
                };
                (*p, state)
            })
            .collect();
        let parts = Arc::new(parts);
        let stats = Arc::new(CommitStats::default());
        let writer = Writer {
            genv: genv.clone(),
            dbs,
            parts: parts.clone(),
            stats: stats.clone(),
            max_siblings: options.max_siblings,
            max_record_bytes: options.max_record_bytes,
        };
        let writer = WriterThread::spawn(
            "ringkv-writer".into(),
            options.max_batch,
            options.max_queue,
            move |batch| writer.commit_batch(batch),
        )?;
        Ok(Arc::new(Self {
            path: dir.to_path_buf(),
            genv,
            dbs,
            parts,
            writer,
            stats,
        }))
    }

    /// Where the env is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The writer thread's counters.
    pub fn commit_stats(&self) -> &CommitStats {
        &self.stats
    }

    /// Current LMDB map size, bytes.
    pub fn map_size(&self) -> usize {
        self.genv.map_size()
    }

    /// Stops taking writes, lets the writer thread commit and answer everything already
    /// queued, and waits for it. Idempotent.
    pub fn shutdown(&self) {
        self.writer.shutdown();
    }

    pub(crate) fn part(&self, p: u32) -> Result<&PartState, StorageError> {
        self.parts.get(&p).ok_or_else(|| {
            StorageError::InvalidArgument(format!(
                "partition {p} is not open in the data env at {}",
                self.path.display()
            ))
        })
    }

    pub(crate) fn enqueue(&self, op: WriteOp) {
        let store = crate::env::Store::Partition(op.partition());
        self.writer.enqueue(op, store, WriteOp::refuse);
    }

    pub(crate) fn read<T>(
        &self,
        f: impl FnOnce(&RoTxn<'_, WithoutTls>) -> Result<T, StorageError>,
    ) -> Result<T, StorageError> {
        self.genv.read(f)
    }

    /// The record of stored key `key` of partition `p`.
    pub(crate) fn read_record(&self, p: u32, key: &[u8]) -> Result<Option<DvvSet>, StorageError> {
        let key = data_key(p, key);
        self.read(
            |rtxn| match self.dbs.kv.get(rtxn, &key).map_err(StorageError::io)? {
                Some(bytes) => record::decode(bytes).map(Some),
                None => Ok(None),
            },
        )
    }

    /// Calls `f(stored key, record bytes)` for partition `p`'s keys in stored-key order until
    /// it returns false.
    pub(crate) fn scan(
        &self,
        p: u32,
        mut f: impl FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), StorageError> {
        self.read(|rtxn| {
            let prefix = p.to_be_bytes();
            for entry in self
                .dbs
                .kv
                .prefix_iter(rtxn, &prefix)
                .map_err(StorageError::io)?
            {
                let (key, bytes) = entry.map_err(StorageError::io)?;
                if !f(&key[PREFIX_LEN..], bytes) {
                    break;
                }
            }
            Ok(())
        })
    }

    /// Partition `p`'s `merkle` entries of `segments`, as
    /// [`crate::Partition::segment_entries`] returns them.
    pub(crate) fn segment_entries(
        &self,
        p: u32,
        segments: &[u32],
    ) -> Result<Vec<(u32, Vec<u8>, u64)>, StorageError> {
        self.read(|rtxn| {
            let mut out = Vec::new();
            for &segment in segments {
                let mut prefix = p.to_be_bytes().to_vec();
                prefix.extend_from_slice(&(segment as u16).to_be_bytes());
                for entry in self
                    .dbs
                    .merkle
                    .prefix_iter(rtxn, &prefix)
                    .map_err(StorageError::io)?
                {
                    let (k, v) = entry.map_err(StorageError::io)?;
                    let (_, rest) = split_prefix(k)?;
                    let (_, hash, key) = merkle::decode_entry(rest, v)?;
                    out.push((segment, key.to_vec(), hash));
                }
            }
            Ok(out)
        })
    }

    /// The env, for tests that hold its writer lock or damage it.
    #[cfg(test)]
    pub(crate) fn genv(&self) -> &GrowableEnv {
        &self.genv
    }

    /// The `merkle` database, for tests that damage it.
    #[cfg(test)]
    pub(crate) fn merkle_db(&self) -> Database<'static, Bytes, Bytes> {
        self.dbs.merkle
    }
}

impl Drop for DataStore {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Chooses partition `id`'s replica id by `identity` and records it with the new epoch.
fn choose_replica(
    wtxn: &mut RwTxn,
    meta: Database<'static, Bytes, Bytes>,
    id: u32,
    identity: &Identity,
) -> Result<ReplicaId, Abort> {
    let (id_key, epoch_key) = (meta_key(id, b"replica_id"), meta_key(id, b"epoch"));
    let read_u64 = |name: &[u8], wtxn: &RwTxn| -> Result<Option<u64>, Abort> {
        Ok(meta
            .get(wtxn, name)?
            .and_then(|b| <[u8; 8]>::try_from(b).ok())
            .map(u64::from_be_bytes))
    };
    let stored = read_u64(&id_key, wtxn)?;
    let epoch = read_u64(&epoch_key, wtxn)?;
    let replica = match stored {
        Some(r) if identity.expect_epoch.is_none_or(|e| epoch == Some(e)) => r,
        _ => {
            if let Some(old) = stored {
                tracing::warn!(partition = id, old = format_args!("{old:016x}"), new = format_args!("{:016x}", identity.fresh_id), "partition storage is not the one this node last wrote (restored or copied): it gets a fresh replica id");
            }
            meta.put(wtxn, &id_key, &identity.fresh_id.to_be_bytes())?;
            identity.fresh_id
        }
    };
    meta.put(wtxn, &epoch_key, &identity.new_epoch.to_be_bytes())?;
    Ok(replica)
}

/// Loads the hash trees and key counts of `partitions` from the `merkle` database, after
/// rebuilding that from `kv` if their entry counts differ.
fn load_trees(
    genv: &GrowableEnv,
    dbs: Dbs,
    partitions: impl Iterator<Item = u32>,
) -> Result<HashMap<u32, (MerkleTree, u64)>, StorageError> {
    let (keys, entries) = genv.read(|rtxn| {
        Ok((
            dbs.kv.len(rtxn).map_err(StorageError::io)?,
            dbs.merkle.len(rtxn).map_err(StorageError::io)?,
        ))
    })?;
    if keys != entries {
        let started = std::time::Instant::now();
        rebuild_merkle(genv, dbs)?;
        tracing::info!(
            keys,
            entries_before = entries,
            ms = started.elapsed().as_millis() as u64,
            "rebuilt the merkle database from the data"
        );
    }
    let mut out: HashMap<u32, (MerkleTree, u64)> =
        partitions.map(|p| (p, Default::default())).collect();
    genv.read(|rtxn| {
        for (&p, (tree, count)) in out.iter_mut() {
            for entry in dbs
                .merkle
                .prefix_iter(rtxn, &p.to_be_bytes())
                .map_err(StorageError::io)?
            {
                let (k, v) = entry.map_err(StorageError::io)?;
                let (_, rest) = split_prefix(k)?;
                let (segment, hash, _) = merkle::decode_entry(rest, v)?;
                tree.toggle(segment, hash);
                *count += 1;
            }
        }
        Ok(())
    })?;
    Ok(out)
}

/// Replaces the `merkle` database with one entry per key of `kv`, in one write transaction
/// (copied [`REBUILD_CHUNK`] keys at a time, since LMDB cannot write while iterating).
fn rebuild_merkle(genv: &GrowableEnv, dbs: Dbs) -> Result<(), StorageError> {
    genv.write(|| {
        let mut wtxn = genv.env().write_txn()?;
        dbs.merkle.clear(&mut wtxn)?;
        let mut last: Option<Vec<u8>> = None;
        loop {
            let start = match &last {
                Some(k) => Bound::Excluded(k.as_slice()),
                None => Bound::Unbounded,
            };
            let mut chunk = Vec::with_capacity(REBUILD_CHUNK);
            for entry in dbs
                .kv
                .range(&wtxn, &(start, Bound::Unbounded))?
                .take(REBUILD_CHUNK)
            {
                let (key, bytes) = entry?;
                let stored = key.get(PREFIX_LEN..).unwrap_or_default();
                chunk.push((key.to_vec(), merkle::entry_hash(stored, bytes)));
            }
            for (key, hash) in &chunk {
                let (p, stored) = split_prefix(key).map_err(Abort::Failed)?;
                dbs.merkle.put(
                    &mut wtxn,
                    &merkle_key(p, merkle::key_hash(stored)),
                    &merkle::merkle_value(*hash, stored),
                )?;
            }
            if chunk.len() < REBUILD_CHUNK {
                break;
            }
            last = chunk.pop().map(|(key, _)| key);
        }
        wtxn.commit()?;
        Ok(())
    })
}

/// State of the writer thread.
struct Writer {
    genv: Arc<GrowableEnv>,
    dbs: Dbs,
    parts: Arc<HashMap<u32, PartState>>,
    stats: Arc<CommitStats>,
    max_siblings: usize,
    max_record_bytes: usize,
}

/// A change made by one transaction to a partition's leaf hash (`old ^ new`) and key count.
struct LeafDelta {
    partition: u32,
    segment: u32,
    delta: u64,
    keys: i64,
}

impl Writer {
    /// Applies and commits `batch` (draining it), updates the in-memory trees, then answers
    /// each operation.
    fn commit_batch(&self, batch: &mut Vec<WriteOp>) {
        let outcomes = match self.genv.write(|| self.try_commit(batch)) {
            Ok((outcomes, deltas)) => {
                for d in deltas {
                    if let Some(part) = self.parts.get(&d.partition) {
                        part.tree
                            .write()
                            .unwrap_or_else(|p| p.into_inner())
                            .toggle(d.segment, d.delta);
                        if d.keys >= 0 {
                            part.keys.fetch_add(d.keys as u64, Ordering::Relaxed);
                        } else {
                            part.keys
                                .fetch_sub(d.keys.unsigned_abs(), Ordering::Relaxed);
                        }
                    }
                }
                let mut partitions: Vec<u32> = batch.iter().map(WriteOp::partition).collect();
                partitions.sort_unstable();
                partitions.dedup();
                self.stats.commits.fetch_add(1, Ordering::Relaxed);
                self.stats
                    .writes
                    .fetch_add(batch.len() as u64, Ordering::Relaxed);
                self.stats
                    .most_partitions
                    .fetch_max(partitions.len(), Ordering::Relaxed);
                outcomes
            }
            Err(e) => batch.iter().map(|op| op.failed(e.clone())).collect(),
        };
        for (op, outcome) in batch.drain(..).zip(outcomes) {
            op.answer(outcome);
        }
    }

    fn try_commit(&self, batch: &[WriteOp]) -> Result<(Vec<Outcome>, Vec<LeafDelta>), Abort> {
        let mut wtxn = self.genv.env().write_txn()?;
        let mut outcomes = Vec::with_capacity(batch.len());
        let mut deltas = Vec::with_capacity(batch.len());
        for op in batch {
            outcomes.push(match op {
                WriteOp::Record {
                    partition,
                    key,
                    change,
                    ..
                } => {
                    Outcome::Record(self.apply(&mut wtxn, *partition, key, change, &mut deltas)?)
                }
                WriteOp::Purge {
                    partition,
                    candidates,
                    ..
                } => Outcome::Purged(Ok(self.purge(
                    &mut wtxn,
                    *partition,
                    candidates,
                    &mut deltas,
                )?)),
            });
        }
        wtxn.commit()?;
        Ok((outcomes, deltas))
    }

    /// Applies one change to `key` of partition `p` in `wtxn`, in `kv` and `merkle`; records
    /// the leaf change.
    fn apply(
        &self,
        wtxn: &mut RwTxn,
        p: u32,
        key: &[u8],
        change: &Change,
        deltas: &mut Vec<LeafDelta>,
    ) -> Result<Result<DvvSet, StorageError>, Abort> {
        let Some(part) = self.parts.get(&p) else {
            return Ok(Err(StorageError::Closed(p)));
        };
        let dkey = data_key(p, key);
        let (current, old_hash, existed) = match self.dbs.kv.get(wtxn, &dkey)? {
            Some(bytes) => match record::decode(bytes) {
                Ok(d) => (d, merkle::entry_hash(key, bytes), true),
                Err(e) => return Ok(Err(e)),
            },
            None => (DvvSet::new(), 0, false),
        };
        let next = match change {
            Change::Update {
                context,
                value,
                timestamp_ms,
            } => {
                let mut next = current;
                if let Err(l) = next.update(
                    context,
                    part.replica,
                    value.clone(),
                    *timestamp_ms,
                    self.max_siblings,
                ) {
                    return Ok(Err(StorageError::TooManySiblings { limit: l.limit }));
                }
                next
            }
            Change::Merge { record } => {
                if current.descends(record) {
                    return Ok(Ok(current));
                }
                current.sync(record)
            }
        };
        let bytes = record::encode(&next);
        if bytes.len() > self.max_record_bytes {
            return Ok(Err(StorageError::RecordTooLarge {
                bytes: bytes.len(),
                limit: self.max_record_bytes,
            }));
        }
        let new_hash = merkle::entry_hash(key, &bytes);
        self.dbs.kv.put(wtxn, &dkey, &bytes)?;
        let key_hash = merkle::key_hash(key);
        self.dbs.merkle.put(
            wtxn,
            &merkle_key(p, key_hash),
            &merkle::merkle_value(new_hash, key),
        )?;
        deltas.push(LeafDelta {
            partition: p,
            segment: merkle::segment_of(key_hash),
            delta: old_hash ^ new_hash,
            keys: if existed { 0 } else { 1 },
        });
        Ok(Ok(next))
    }

    /// Deletes the candidates of partition `p` that are still the given deleted records;
    /// returns how many.
    fn purge(
        &self,
        wtxn: &mut RwTxn,
        p: u32,
        candidates: &[(Vec<u8>, u64)],
        deltas: &mut Vec<LeafDelta>,
    ) -> Result<usize, Abort> {
        let mut purged = 0;
        for (key, expected) in candidates {
            let dkey = data_key(p, key);
            let hash = match self.dbs.kv.get(wtxn, &dkey)? {
                Some(bytes)
                    if merkle::entry_hash(key, bytes) == *expected
                        && record::decode(bytes).is_ok_and(|d| d.is_deleted()) =>
                {
                    *expected
                }
                _ => continue,
            };
            self.dbs.kv.delete(wtxn, &dkey)?;
            let key_hash = merkle::key_hash(key);
            self.dbs.merkle.delete(wtxn, &merkle_key(p, key_hash))?;
            deltas.push(LeafDelta {
                partition: p,
                segment: merkle::segment_of(key_hash),
                delta: hash,
                keys: -1,
            });
            purged += 1;
        }
        Ok(purged)
    }
}

/// Deletes every key of partition `p` (data, hashes, identity) from the data env at `dir`
/// (a data directory's `data/`, see [`crate::DataDir::data_dir`]), in one commit: the loss of
/// one partition's storage, for fault tests. No process may have the env open (stop the node
/// first); the next open gives the partition a fresh replica id.
///
/// # Errors
/// [`StorageError::Io`].
pub fn wipe_partition(dir: &Path, p: u32) -> Result<(), StorageError> {
    let (env, kv) = crate::env::open_env::<Bytes, Bytes>(dir, 64 << 20, "kv")?;
    let merkle = crate::env::create_database::<Bytes, Bytes>(&env, "merkle")?;
    let meta = crate::env::create_database::<Bytes, Bytes>(&env, "meta")?;
    let mut wtxn = env.write_txn().map_err(StorageError::io)?;
    let start = p.to_be_bytes();
    let next = p.checked_add(1).map(u32::to_be_bytes);
    let end = match &next {
        Some(next) => Bound::Excluded(&next[..]),
        None => Bound::Unbounded,
    };
    for db in [kv, merkle] {
        db.delete_range(&mut wtxn, &(Bound::Included(&start[..]), end))
            .map_err(StorageError::io)?;
    }
    for name in [&b"replica_id"[..], b"epoch"] {
        meta.delete(&mut wtxn, &meta_key(p, name))
            .map_err(StorageError::io)?;
    }
    wtxn.commit().map_err(StorageError::io)
}

/// Stores `version` as the format marker of the data env at `dir`, which must not be open.
#[cfg(test)]
pub(crate) fn set_format_for_test(dir: &Path, version: u8) {
    let (env, meta) = crate::env::open_env::<Bytes, Bytes>(dir, 64 << 20, "meta").unwrap();
    let mut wtxn = env.write_txn().unwrap();
    meta.put(&mut wtxn, META_FORMAT, &[version]).unwrap();
    wtxn.commit().unwrap();
}
