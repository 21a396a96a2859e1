//! The node's data env: ONE LMDB env holding every partition the node stores, written by ONE
//! group-committing writer thread.
//!
//! The writer thread takes every queued write of every partition (up to
//! [`PartitionOptions::max_batch`]), applies them in order inside one write transaction,
//! followed by the writes queued while it applies them (up to `max_batch` in all), commits it
//! with LMDB's default sync (data `fdatasync`, then the meta page) and only then answers each
//! write. With 50 writes in flight spread over 64 partitions a commit holds
//! about 45 writes instead of 1.2 with an env per partition, which is what doubled the durable
//! write rate in `examples/commit_layouts.rs` (README, "Storage").
//!
//! # Layout (format [`FORMAT_VERSION`] = 2)
//!
//! Two databases:
//!
//! * `kv`: `[partition: u16 BE][segment: u16 BE][stored key]` → record ([`crate::record`]).
//!   The stored key is [`crate::keys::storage_key`]'s `[bucket length: u8][bucket][key]`, at
//!   most 507 bytes, so that the whole LMDB key stays within 511; the segment is the key's
//!   Merkle leaf, [`merkle::segment_of`]`(`[`merkle::key_hash`]`(stored key))`. A partition
//!   is one contiguous key range of `kv`, and each of its 4096 segments a contiguous range
//!   within it: [`crate::Partition::segment_entries`] is one range scan per segment, hashing
//!   each record as it reads it. A partition's keys are therefore in (segment, stored key)
//!   order, not in stored-key order.
//! * `meta`: `format` → `[FORMAT_VERSION]`; `p[partition: u32 BE]replica_id` /
//!   `p[partition]epoch` → each partition's replica id and epoch ([`crate::Identity`]);
//!   `p[partition]leaves` → a partition's checkpoint (below), present only between a clean
//!   shutdown and the next open.
//!
//! The partition number takes 2 bytes because a ring has at most [`MAX_PARTITIONS`] = 65536
//! partitions; the 4-byte prefix leaves the key limit at 442 bytes (see [`crate::keys`]).
//! Format 0 (an env per partition under `partitions/`) and format 1 (a `u32` partition prefix
//! and a second database, `merkle`, holding an entry per key written in the same transaction
//! as the data) are refused with [`StorageError::UnsupportedFormat`].
//!
//! # What is kept in memory
//!
//! Per partition: its [`MerkleTree`] (4096 leaf hashes, allocated only once the partition
//! holds a key), its key count and its bytes (LMDB key plus record bytes of every key,
//! [`crate::PartitionStats`]). The writer updates them after each commit, before it answers
//! the writes the commit holds (a leaf changes by `old entry hash ^ new entry hash`). At open
//! they come from the partition's checkpoint if it has one, else from one scan of the
//! partition's keys.
//!
//! # Checkpoints
//!
//! [`DataStore::shutdown`], once the writer has committed everything queued, stores every open
//! partition's leaves and counts in `meta` (`p[partition]leaves`: `[version 1][xxh3-64 of
//! the body: u64 BE][body]`, the body being `[keys: u64 BE][bytes: u64 BE]` followed, if the
//! tree is allocated, by the 4096 leaves as `u64 BE`), in one commit. [`DataStore::open`]
//! takes the checkpoints of the partitions it opens: it reads them and deletes them in its
//! first commit, before any write. So a checkpoint exists only if no process opened its
//! partition for writing since the clean shutdown that wrote it, i.e. it is that partition's
//! clean-shutdown flag: after a crash (or a kill) the partitions that were open have none and
//! are rebuilt by a scan. A checkpoint that does not decode or fails its checksum is logged
//! and the partition is scanned instead.
//!
//! # Clearing a partition
//!
//! [`crate::Partition::clear`] deletes a whole partition (its records, then its acceptor states) through the writer thread in chunks
//! of at most [`PartitionOptions::clear_chunk_keys`] keys, one chunk per commit, each commit
//! also holding the writes queued meanwhile: a clear of a million keys never holds the other
//! partitions' writes for more than one chunk's commit.

use crate::condition::Condition;
use crate::dvv::{DvvSet, ReplicaId, VersionVector};
use crate::env::{Abort, GrowableEnv};
use crate::merkle::{self, MerkleTree};
use crate::partition::{
    Identity, PartitionOptions, PartitionStats, PurgeReply, ScanChunk, WriteReply,
};
use crate::writer::{Joiners, WriterThread};
use crate::{record, StorageError};
use heed::types::Bytes;
use heed::{Database, RoTxn, RwTxn, WithoutTls};
use std::collections::{HashMap, VecDeque};
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Instant;

/// Version of the on-disk layout described in the module docs, stored under `format` in
/// `meta`. Version 0 was the env per partition (`partitions/NNNNN/`), version 1 the one env
/// with a `u32` partition prefix and a `merkle` database; both are refused.
pub const FORMAT_VERSION: u8 = 2;

/// Partitions a data env can hold: partition numbers are `0..MAX_PARTITIONS`, stored as a
/// `u16` (a ring has at most as many, `ringkv_cluster::ring::MAX_PARTITIONS`).
pub const MAX_PARTITIONS: u32 = 1 << 16;

/// Key of the format marker in `meta`.
const META_FORMAT: &[u8] = b"format";

/// Name of a partition's checkpoint in `meta` (after `p[partition]`).
const META_LEAVES: &[u8] = b"leaves";
/// `meta` name of a partition's ballot floor for strong keys (8 bytes, big-endian): the
/// highest promise of an acceptor state erased by garbage collection ([`crate::paxos::absent`]).
const META_PAXOS_FLOOR: &[u8] = b"paxos_floor";

/// Version byte of a checkpoint.
const CHECKPOINT_V1: u8 = 1;

/// Length of the prefix of every `kv` key (partition `u16` and segment `u16`), bytes.
pub(crate) const PREFIX_LEN: usize = 4;

/// A partition's number as stored, for a partition open in the store (numbers are checked
/// against [`MAX_PARTITIONS`] at open).
fn short(p: u32) -> u16 {
    p as u16
}

/// `[partition][segment][stored key]`, the `kv` key of a stored key.
pub(crate) fn data_key(partition: u16, stored: &[u8]) -> Vec<u8> {
    let segment = merkle::segment_of(merkle::key_hash(stored)) as u16;
    let mut out = Vec::with_capacity(PREFIX_LEN + stored.len());
    out.extend_from_slice(&partition.to_be_bytes());
    out.extend_from_slice(&segment.to_be_bytes());
    out.extend_from_slice(stored);
    out
}

/// The segment of a key made by [`data_key`] (its bytes 2 and 3).
fn segment_in(data_key: &[u8]) -> u32 {
    match data_key {
        [_, _, hi, lo, ..] => u32::from(u16::from_be_bytes([*hi, *lo])),
        _ => 0,
    }
}

/// `[partition][segment]`, the prefix of every `kv` key of one segment of a partition.
fn segment_prefix(partition: u16, segment: u32) -> [u8; PREFIX_LEN] {
    let mut out = [0u8; PREFIX_LEN];
    out[..2].copy_from_slice(&partition.to_be_bytes());
    out[2..].copy_from_slice(&(segment as u16).to_be_bytes());
    out
}

/// Bytes one `(stored key, record)` counts in a [`ScanChunk`]: its `kv` key and its record
/// bytes, as [`PartitionStats::bytes`] counts them (so a transfer's bytes sent reach the
/// source's byte count). Encoded between nodes an entry takes about as much: its stored key
/// and record plus a few bytes of msgpack framing instead of the 4-byte prefix.
fn scan_entry_bytes(stored: &[u8], record: &[u8]) -> usize {
    PREFIX_LEN + stored.len() + record.len()
}

/// Splits a `kv` key into its partition, segment and stored key.
///
/// # Errors
/// [`StorageError::Corrupt`] if it is shorter than the prefix plus one byte.
fn split_key(key: &[u8]) -> Result<(u16, u32, &[u8]), StorageError> {
    match key.split_first_chunk::<PREFIX_LEN>() {
        Some((prefix, stored)) if !stored.is_empty() => Ok((
            u16::from_be_bytes([prefix[0], prefix[1]]),
            u32::from(u16::from_be_bytes([prefix[2], prefix[3]])),
            stored,
        )),
        _ => Err(StorageError::Corrupt(format!(
            "a data key of {} bytes (the shortest is {})",
            key.len(),
            PREFIX_LEN + 1
        ))),
    }
}

/// `[partition: u16][stored key]`, the `paxos` key of a stored key.
fn paxos_key(p: u32, stored: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(2 + stored.len());
    out.extend_from_slice(&short(p).to_be_bytes());
    out.extend_from_slice(stored);
    out
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
        /// How `value` is encoded ([`crate::codec`]).
        codec: crate::Codec,
        timestamp_ms: u64,
        /// Absolute expiry of the value, ms since the Unix epoch ([`crate::Sibling::expires_at_ms`]).
        expires_at_ms: Option<u64>,
        condition: Condition,
    },
    /// Another replica's state to merge ([`DvvSet::sync`]), refused if `condition` (the
    /// client's, when the merge replicates a conditional write) does not hold here.
    Merge {
        record: DvvSet,
        condition: Condition,
    },
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
    /// Deletion of tombstones and expired values whose entry hash is still the given one and
    /// that read as missing at `now_ms` (this node's clock, ms since the Unix epoch).
    Purge {
        partition: u32,
        candidates: Vec<(Vec<u8>, u64)>,
        now_ms: u64,
        reply: PurgeReply,
    },
    /// Deletion of every key of a partition, in chunks (see the module docs).
    Clear { partition: u32, reply: PurgeReply },
    /// A Paxos step on the acceptor state of stored key `key` ([`crate::paxos`]).
    Paxos {
        partition: u32,
        key: Vec<u8>,
        step: crate::paxos::PaxosStep,
        reply: crate::paxos::PaxosReply,
    },
}

/// Value bytes one write transaction takes before it stops taking more writes (it always
/// takes one): a chunk of a large value (1 MiB by default) then commits with at most the
/// small writes queued beside it, and the writes behind it wait for one chunk's commit, not
/// four (see [`crate::writer`]).
pub const MAX_BATCH_BYTES: usize = 1 << 20;

impl WriteOp {
    /// The value bytes this operation writes (0 for purges and clears).
    fn weight(&self) -> usize {
        match self {
            WriteOp::Record {
                change: Change::Update { value, .. },
                key,
                ..
            } => key.len() + value.as_ref().map_or(0, Vec::len),
            WriteOp::Record {
                change: Change::Merge { record, .. },
                key,
                ..
            } => {
                key.len()
                    + record
                        .siblings
                        .iter()
                        .map(|s| s.value.as_ref().map_or(0, Vec::len))
                        .sum::<usize>()
            }
            WriteOp::Purge { .. } | WriteOp::Clear { .. } => 0,
            WriteOp::Paxos { key, step, .. } => {
                key.len()
                    + match step {
                        crate::paxos::PaxosStep::Accept { value, .. } => {
                            value.as_ref().map_or(0, Vec::len)
                        }
                        crate::paxos::PaxosStep::Prepare { .. }
                        | crate::paxos::PaxosStep::Erase { .. } => 0,
                    }
            }
        }
    }
}

/// What one operation of a committed batch answers.
enum Outcome {
    Record(Result<DvvSet, StorageError>),
    Purged(Result<usize, StorageError>),
    Paxos(Result<crate::paxos::PaxosAnswer, StorageError>),
}

impl WriteOp {
    fn partition(&self) -> u32 {
        match self {
            WriteOp::Record { partition, .. }
            | WriteOp::Purge { partition, .. }
            | WriteOp::Paxos { partition, .. }
            | WriteOp::Clear { partition, .. } => *partition,
        }
    }

    /// The outcome of this operation when its batch failed with `e`; a full map names this
    /// operation's partition.
    fn failed(&self, e: StorageError) -> Outcome {
        let e = with_partition(e, self.partition());
        match self {
            WriteOp::Record { .. } => Outcome::Record(Err(e)),
            WriteOp::Purge { .. } | WriteOp::Clear { .. } => Outcome::Purged(Err(e)),
            WriteOp::Paxos { .. } => Outcome::Paxos(Err(e)),
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
            (WriteOp::Purge { reply, .. } | WriteOp::Clear { reply, .. }, Outcome::Purged(r)) => {
                reply(r)
            }
            (WriteOp::Paxos { reply, .. }, Outcome::Paxos(r)) => reply(r),
            (WriteOp::Record { reply, .. }, _) => reply(Err(mismatch())),
            (WriteOp::Purge { reply, .. } | WriteOp::Clear { reply, .. }, _) => {
                reply(Err(mismatch()))
            }
            (WriteOp::Paxos { reply, .. }, _) => reply(Err(mismatch())),
        }
    }
}

/// `e`, with a full map's error naming partition `p` (the data env's errors name none).
fn with_partition(e: StorageError, p: u32) -> StorageError {
    match e {
        StorageError::Full { detail, .. } => StorageError::Full {
            partition: p,
            detail,
        },
        e => e,
    }
}

/// What the store keeps in memory of one partition and updates after each commit.
#[derive(Debug, Default)]
pub(crate) struct PartMem {
    /// The hash tree, reflecting every answered write.
    pub(crate) tree: MerkleTree,
    /// Keys stored (tombstones included).
    pub(crate) keys: u64,
    /// LMDB key bytes plus record bytes of those keys.
    pub(crate) bytes: u64,
}

impl PartMem {
    pub(crate) fn stats(&self) -> PartitionStats {
        PartitionStats {
            keys: self.keys,
            bytes: self.bytes,
        }
    }
}

/// What the store keeps of one open partition.
pub(crate) struct PartState {
    /// Replica id of the dots made here; a completed clear gives the partition a fresh one.
    replica: AtomicU64,
    /// Tree and counts.
    pub(crate) mem: RwLock<PartMem>,
}

impl PartState {
    pub(crate) fn replica(&self) -> ReplicaId {
        self.replica.load(Ordering::Acquire)
    }

    pub(crate) fn read(&self) -> std::sync::RwLockReadGuard<'_, PartMem> {
        self.mem.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, PartMem> {
        self.mem.write().unwrap_or_else(|p| p.into_inner())
    }
}

/// Counters of the writer thread, for tests and diagnostics.
#[derive(Debug, Default)]
pub struct CommitStats {
    commits: AtomicU64,
    writes: AtomicU64,
    most_partitions: AtomicUsize,
    clear_chunks: AtomicU64,
    most_cleared: AtomicUsize,
}

impl CommitStats {
    /// Transactions committed by the writer thread.
    pub fn commits(&self) -> u64 {
        self.commits.load(Ordering::Relaxed)
    }

    /// Operations (writes, merges, purges) those commits held; the chunks of a clear are
    /// counted by [`CommitStats::clear_chunks`] instead.
    pub fn writes(&self) -> u64 {
        self.writes.load(Ordering::Relaxed)
    }

    /// Most distinct partitions written by one commit.
    pub fn most_partitions_per_commit(&self) -> usize {
        self.most_partitions.load(Ordering::Relaxed)
    }

    /// Commits that held a chunk of a partition clear ([`crate::Partition::clear`]).
    pub fn clear_chunks(&self) -> u64 {
        self.clear_chunks.load(Ordering::Relaxed)
    }

    /// Most keys one commit deleted for a clear (at most
    /// [`PartitionOptions::clear_chunk_keys`]).
    pub fn most_cleared_per_commit(&self) -> usize {
        self.most_cleared.load(Ordering::Relaxed)
    }
}

/// The databases of the data env.
#[derive(Clone, Copy)]
struct Dbs {
    kv: Database<'static, Bytes, Bytes>,
    meta: Database<'static, Bytes, Bytes>,
    /// Acceptor states of strong buckets' keys ([`crate::paxos`]), keyed
    /// `[partition: u16][stored key]`.
    paxos: Database<'static, Bytes, Bytes>,
}

/// How [`DataStore::open`] found each partition's tree and counts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OpenReport {
    /// Partitions loaded from a clean-shutdown checkpoint.
    pub from_checkpoint: usize,
    /// Partitions rebuilt by a scan of their keys (no checkpoint: a first open, or the last
    /// process to open them did not shut down cleanly; or a checkpoint that did not decode).
    pub scanned: usize,
    /// Keys read by those scans.
    pub keys_scanned: u64,
    /// Time taken by the checkpoints and scans, milliseconds.
    pub ms: u64,
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
    opened: OpenReport,
    /// Set once [`DataStore::shutdown`] wrote (or gave up writing) the checkpoints.
    checkpointed: AtomicBool,
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
    /// recording every partition's id and new epoch and taking their checkpoints in one
    /// commit; loads each partition's tree and counts from its checkpoint, or rebuilds them by
    /// a scan of its keys (see the module docs), and starts the writer thread.
    ///
    /// # Errors
    /// [`StorageError::InvalidArgument`] if a partition number is [`MAX_PARTITIONS`] or more,
    /// [`StorageError::UnsupportedFormat`] if the env was written in another format,
    /// [`StorageError::Io`] if the directory or env cannot be opened,
    /// [`StorageError::Corrupt`] if a key of `kv` is malformed or stored under another segment
    /// than its hash gives, [`StorageError::Full`] if the env does not fit in
    /// [`PartitionOptions::max_map_bytes`].
    pub fn open(
        dir: &Path,
        partitions: &[(u32, Identity)],
        options: &PartitionOptions,
    ) -> Result<Arc<Self>, StorageError> {
        if let Some((p, _)) = partitions.iter().find(|(p, _)| *p >= MAX_PARTITIONS) {
            return Err(StorageError::InvalidArgument(format!(
                "partition {p} does not exist: a data env holds partitions 0 to {}",
                MAX_PARTITIONS - 1
            )));
        }
        let map_bytes =
            crate::env::starting_map_bytes(dir, options.initial_map_bytes, options.max_map_bytes);
        let (env, kv) = crate::env::open_env::<Bytes, Bytes>(dir, map_bytes, "kv")?;
        let meta = crate::env::create_database::<Bytes, Bytes>(&env, "meta")?;
        let paxos = crate::env::create_database::<Bytes, Bytes>(&env, "paxos")?;
        let dbs = Dbs { kv, meta, paxos };
        let genv = Arc::new(GrowableEnv::new(
            env,
            options.max_map_bytes,
            crate::env::Store::Data,
        ));
        let (replicas, checkpoints) = genv.write(|| {
            let mut wtxn = genv.env().write_txn()?;
            check_format(&mut wtxn, meta, dir)?;
            let mut replicas = Vec::with_capacity(partitions.len());
            let mut checkpoints = Vec::with_capacity(partitions.len());
            for (id, identity) in partitions {
                replicas.push(choose_replica(&mut wtxn, meta, *id, identity)?);
                checkpoints.push(take_checkpoint(&mut wtxn, meta, *id)?);
            }
            wtxn.commit()?;
            Ok((replicas, checkpoints))
        })?;
        let started = Instant::now();
        let mut report = OpenReport::default();
        let mut mems = Vec::with_capacity(partitions.len());
        genv.read(|rtxn| {
            for ((p, _), checkpoint) in partitions.iter().zip(checkpoints) {
                let mem = match checkpoint {
                    Some(Ok(mem)) => {
                        report.from_checkpoint += 1;
                        mem
                    }
                    other => {
                        if let Some(Err(e)) = other {
                            tracing::warn!(partition = p, error = %e, "ignoring a checkpoint that does not decode; rebuilding the partition's hash tree from its keys");
                        }
                        let mem = scan_partition(rtxn, kv, *p)?;
                        report.scanned += 1;
                        report.keys_scanned += mem.keys;
                        mem
                    }
                };
                mems.push(mem);
            }
            Ok(())
        })?;
        report.ms = started.elapsed().as_millis() as u64;
        tracing::info!(
            partitions = partitions.len(),
            from_checkpoint = report.from_checkpoint,
            scanned = report.scanned,
            keys_scanned = report.keys_scanned,
            ms = report.ms,
            "loaded the partitions' hash trees"
        );
        let parts: HashMap<u32, PartState> = partitions
            .iter()
            .zip(replicas)
            .zip(mems)
            .map(|(((p, _), replica), mem)| {
                let state = PartState {
                    replica: AtomicU64::new(replica),
                    mem: RwLock::new(mem),
                };
                (*p, state)
            })
            .collect();
        let parts = Arc::new(parts);
        let stats = Arc::new(CommitStats::default());
        let mut writer = Writer {
            genv: genv.clone(),
            dbs,
            parts: parts.clone(),
            stats: stats.clone(),
            max_siblings: options.max_siblings,
            max_record_bytes: options.max_record_bytes,
            clear_chunk: options.clear_chunk_keys.max(1),
            clears: VecDeque::new(),
        };
        let writer = WriterThread::spawn(
            "ringkv-writer".into(),
            options.max_batch,
            MAX_BATCH_BYTES,
            WriteOp::weight,
            options.max_queue,
            move |batch, joiners| writer.commit_batch(batch, joiners),
        )?;
        Ok(Arc::new(Self {
            path: dir.to_path_buf(),
            genv,
            dbs,
            parts,
            writer,
            stats,
            opened: report,
            checkpointed: AtomicBool::new(false),
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

    /// How [`DataStore::open`] loaded the partitions' trees and counts.
    pub fn open_report(&self) -> OpenReport {
        self.opened
    }

    /// Current LMDB map size, bytes.
    pub fn map_size(&self) -> usize {
        self.genv.map_size()
    }

    /// How much of the env's map is used: the high-water mark, the map size and its maximum.
    pub fn map_usage(&self) -> crate::MapUsage {
        self.genv.usage()
    }

    /// Stops taking writes, lets the writer thread commit and answer everything already
    /// queued (clears included, to their last chunk), waits for it, then checkpoints every
    /// open partition's tree and counts in one commit (see the module docs), so that the next
    /// open skips the scan. Idempotent. A checkpoint that cannot be written is logged: the
    /// next open rebuilds by scanning.
    pub fn shutdown(&self) {
        if !self.writer.shutdown() {
            // Called on the writer thread, which still has queued writes to commit after
            // this: a checkpoint now could miss them, so the next open scans instead.
            tracing::warn!("data env shut down from its own writer thread: no checkpoint");
            return;
        }
        if self.checkpointed.swap(true, Ordering::AcqRel) {
            return;
        }
        let started = Instant::now();
        match self.write_checkpoints() {
            Ok(()) => tracing::info!(
                partitions = self.parts.len(),
                ms = started.elapsed().as_millis() as u64,
                "checkpointed the partitions' hash trees"
            ),
            Err(e) => {
                tracing::warn!(error = %e, "could not checkpoint the partitions' hash trees; the next start rebuilds them from the data")
            }
        }
    }

    /// Writes every open partition's checkpoint in one commit.
    fn write_checkpoints(&self) -> Result<(), StorageError> {
        let encoded: Vec<(Vec<u8>, Vec<u8>)> = self
            .parts
            .iter()
            .map(|(p, part)| (meta_key(*p, META_LEAVES), encode_checkpoint(&part.read())))
            .collect();
        self.genv.write(|| {
            let mut wtxn = self.genv.env().write_txn()?;
            for (key, value) in &encoded {
                self.dbs.meta.put(&mut wtxn, key, value)?;
            }
            wtxn.commit()?;
            Ok(())
        })
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
        let key = data_key(short(p), key);
        self.read(
            |rtxn| match self.dbs.kv.get(rtxn, &key).map_err(StorageError::io)? {
                Some(bytes) => record::decode(bytes).map(Some),
                None => Ok(None),
            },
        )
    }

    /// The acceptor state of stored key `key` of partition `p` (`None`: never touched here),
    /// as last committed.
    pub(crate) fn read_paxos(
        &self,
        p: u32,
        key: &[u8],
    ) -> Result<Option<crate::paxos::AcceptorState>, StorageError> {
        let pkey = paxos_key(p, key);
        self.read(
            |rtxn| match self.dbs.paxos.get(rtxn, &pkey).map_err(StorageError::io)? {
                Some(bytes) => crate::paxos::decode(bytes).map(Some),
                None => Ok(None),
            },
        )
    }

    /// Up to `max` stored keys of partition `p` with an acceptor state, in key order
    /// strictly after `after`.
    pub(crate) fn paxos_keys(
        &self,
        p: u32,
        after: Option<&[u8]>,
        max: usize,
    ) -> Result<Vec<Vec<u8>>, StorageError> {
        let prefix = short(p).to_be_bytes();
        let start = paxos_key(p, after.unwrap_or(&[]));
        let lower = match after {
            Some(_) => Bound::Excluded(start.as_slice()),
            None => Bound::Included(start.as_slice()),
        };
        let range = (lower, Bound::Unbounded);
        self.read(|rtxn| {
            let mut out = Vec::new();
            for entry in self
                .dbs
                .paxos
                .range(rtxn, &range)
                .map_err(StorageError::io)?
            {
                let (key, _) = entry.map_err(StorageError::io)?;
                if !key.starts_with(&prefix) || out.len() >= max {
                    break;
                }
                out.push(key[prefix.len()..].to_vec());
            }
            Ok(out)
        })
    }

    /// Calls `f(stored key, record bytes)` for partition `p`'s keys in (segment, stored key)
    /// order until it returns false, in one read transaction.
    pub(crate) fn scan(
        &self,
        p: u32,
        mut f: impl FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), StorageError> {
        self.read(|rtxn| {
            for entry in self
                .dbs
                .kv
                .prefix_iter(rtxn, &short(p).to_be_bytes())
                .map_err(StorageError::io)?
            {
                let (key, bytes) = entry.map_err(StorageError::io)?;
                let (_, _, stored) = split_key(key)?;
                if !f(stored, bytes) {
                    break;
                }
            }
            Ok(())
        })
    }

    /// Partition `p`'s records in `kv` key order strictly after position `after` (see
    /// [`crate::partition::ScanChunk`]), as [`crate::Partition::scan_chunk`] returns them, in
    /// one read transaction.
    pub(crate) fn scan_chunk(
        &self,
        p: u32,
        after: Option<&[u8]>,
        max_bytes: usize,
    ) -> Result<ScanChunk, StorageError> {
        let prefix = short(p).to_be_bytes();
        let mut start = prefix.to_vec();
        if let Some(after) = after {
            start.extend_from_slice(after);
        }
        let lower = match after {
            Some(_) => Bound::Excluded(start.as_slice()),
            None => Bound::Included(start.as_slice()),
        };
        let range = (lower, Bound::Unbounded);
        self.read(|rtxn| {
            let mut chunk = ScanChunk::default();
            // Position of the last record taken (`[segment][stored key]`).
            let mut last: Option<Vec<u8>> = None;
            let entries = self.dbs.kv.range(rtxn, &range).map_err(StorageError::io)?;
            for (taken, entry) in entries.enumerate() {
                let (key, bytes) = entry.map_err(StorageError::io)?;
                if !key.starts_with(&prefix) {
                    // Past the partition: it is exhausted.
                    break;
                }
                let (_, _, stored) = split_key(key)?;
                let size = scan_entry_bytes(stored, bytes);
                if taken > 0 && chunk.bytes + size > max_bytes {
                    // Another record remains: resume after the last one taken.
                    chunk.next = last;
                    return Ok(chunk);
                }
                chunk.bytes += size;
                last = Some(key[prefix.len()..].to_vec());
                match record::decode(bytes) {
                    Ok(record) => chunk.entries.push((stored.to_vec(), record)),
                    Err(e) => {
                        tracing::warn!(partition = p, error = %e, "scan_chunk: skipping a corrupt record");
                    }
                }
            }
            Ok(chunk)
        })
    }

    /// Partition `p`'s `(segment, stored key, entry hash)` of every key of `segments`, as
    /// [`crate::Partition::segment_entries`] returns them: one range scan of `kv` per
    /// segment, hashing each record read.
    pub(crate) fn segment_entries(
        &self,
        p: u32,
        segments: &[u32],
    ) -> Result<Vec<(u32, Vec<u8>, u64)>, StorageError> {
        self.read(|rtxn| {
            let mut out = Vec::new();
            for &segment in segments {
                let prefix = segment_prefix(short(p), segment);
                for entry in self
                    .dbs
                    .kv
                    .prefix_iter(rtxn, &prefix)
                    .map_err(StorageError::io)?
                {
                    let (key, bytes) = entry.map_err(StorageError::io)?;
                    let (_, _, stored) = split_key(key)?;
                    out.push((segment, stored.to_vec(), merkle::entry_hash(stored, bytes)));
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

    /// Stops the writer without writing the checkpoints, as a crash would leave the env.
    #[cfg(test)]
    pub(crate) fn stop_without_checkpoint(&self) {
        self.checkpointed.store(true, Ordering::Release);
        assert!(self.writer.shutdown());
    }
}

impl Drop for DataStore {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Checks the format marker (writing it in a new env).
fn check_format(
    wtxn: &mut RwTxn,
    meta: Database<'static, Bytes, Bytes>,
    dir: &Path,
) -> Result<(), Abort> {
    let found = match meta.get(wtxn, META_FORMAT)? {
        Some([FORMAT_VERSION]) => return Ok(()),
        Some([1]) => "format 1 (a 4-byte partition prefix and a `merkle` database with an \
                      entry per key)"
            .to_string(),
        Some([v]) => format!("format {v}"),
        Some(other) => format!("an unreadable format marker {other:?}"),
        None => {
            meta.put(wtxn, META_FORMAT, &[FORMAT_VERSION])?;
            return Ok(());
        }
    };
    Err(Abort::Failed(StorageError::UnsupportedFormat(format!(
        "{} holds ringkv data {found}; this version reads format {FORMAT_VERSION} only (the \
         Merkle segment in the data key, no `merkle` database). Start this node with an empty \
         data directory (its replicas refill it through anti-entropy), or run the release \
         that wrote it",
        dir.display()
    ))))
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

/// Reads and deletes partition `p`'s checkpoint: `None` if it has none, else the decoded
/// checkpoint or why it does not decode.
fn take_checkpoint(
    wtxn: &mut RwTxn,
    meta: Database<'static, Bytes, Bytes>,
    p: u32,
) -> Result<Option<Result<PartMem, StorageError>>, Abort> {
    let key = meta_key(p, META_LEAVES);
    let Some(decoded) = meta.get(wtxn, &key)?.map(decode_checkpoint) else {
        return Ok(None);
    };
    meta.delete(wtxn, &key)?;
    Ok(Some(decoded))
}

/// Length of a checkpoint's body without leaves: keys and bytes, `u64` each.
const CHECKPOINT_COUNTS: usize = 16;

/// `[CHECKPOINT_V1][xxh3-64 of the body][body]`, the body being `[keys][bytes]` and, if the
/// tree is allocated, its leaves; every number `u64` big-endian.
fn encode_checkpoint(mem: &PartMem) -> Vec<u8> {
    let leaves = if mem.tree.is_allocated() {
        mem.tree.leaves()
    } else {
        &[]
    };
    let mut body = Vec::with_capacity(CHECKPOINT_COUNTS + 8 * leaves.len());
    body.extend_from_slice(&mem.keys.to_be_bytes());
    body.extend_from_slice(&mem.bytes.to_be_bytes());
    for leaf in leaves {
        body.extend_from_slice(&leaf.to_be_bytes());
    }
    let mut out = Vec::with_capacity(9 + body.len());
    out.push(CHECKPOINT_V1);
    out.extend_from_slice(&xxhash_rust::xxh3::xxh3_64(&body).to_be_bytes());
    out.extend_from_slice(&body);
    out
}

/// Decodes what [`encode_checkpoint`] made.
///
/// # Errors
/// [`StorageError::Corrupt`] for another version byte, a wrong length or checksum.
fn decode_checkpoint(bytes: &[u8]) -> Result<PartMem, StorageError> {
    let corrupt = |what: &str| StorageError::Corrupt(format!("hash tree checkpoint: {what}"));
    let (version, rest) = bytes.split_first().ok_or_else(|| corrupt("empty"))?;
    if *version != CHECKPOINT_V1 {
        return Err(corrupt(&format!("unknown version {version}")));
    }
    let (sum, body) = rest
        .split_first_chunk::<8>()
        .ok_or_else(|| corrupt("shorter than its checksum"))?;
    if u64::from_be_bytes(*sum) != xxhash_rust::xxh3::xxh3_64(body) {
        return Err(corrupt("checksum mismatch"));
    }
    let leaves_len = 8 * merkle::SEGMENTS as usize;
    if body.len() != CHECKPOINT_COUNTS && body.len() != CHECKPOINT_COUNTS + leaves_len {
        return Err(corrupt(&format!("body of {} bytes", body.len())));
    }
    let words: Vec<u64> = body
        .chunks_exact(8)
        .map(|w| u64::from_be_bytes([w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7]]))
        .collect();
    let tree = match words.get(2..) {
        Some(leaves) if !leaves.is_empty() => MerkleTree::from_leaves(leaves)?,
        _ => MerkleTree::new(),
    };
    Ok(PartMem {
        tree,
        keys: words[0],
        bytes: words[1],
    })
}

/// Rebuilds partition `p`'s tree and counts from its keys in `kv`.
///
/// # Errors
/// [`StorageError::Corrupt`] if a key is malformed or not under the segment of its hash,
/// [`StorageError::Io`].
fn scan_partition(
    rtxn: &RoTxn<'_, WithoutTls>,
    kv: Database<'static, Bytes, Bytes>,
    p: u32,
) -> Result<PartMem, StorageError> {
    let mut mem = PartMem::default();
    for entry in kv
        .prefix_iter(rtxn, &short(p).to_be_bytes())
        .map_err(StorageError::io)?
    {
        let (key, bytes) = entry.map_err(StorageError::io)?;
        let (_, segment, stored) = split_key(key)?;
        let expected = merkle::segment_of(merkle::key_hash(stored));
        if segment != expected {
            return Err(StorageError::Corrupt(format!(
                "partition {p}: stored key {stored:?} is under segment {segment}, its hash \
                 gives segment {expected}"
            )));
        }
        mem.tree.toggle(segment, merkle::entry_hash(stored, bytes));
        mem.keys += 1;
        mem.bytes += (key.len() + bytes.len()) as u64;
    }
    Ok(mem)
}

/// State of the writer thread.
struct Writer {
    genv: Arc<GrowableEnv>,
    dbs: Dbs,
    parts: Arc<HashMap<u32, PartState>>,
    stats: Arc<CommitStats>,
    max_siblings: usize,
    max_record_bytes: usize,
    /// Most keys one commit deletes for a clear.
    clear_chunk: usize,
    /// Clears under way, oldest first; each commit runs one chunk of the first.
    clears: VecDeque<ClearJob>,
}

/// A clear under way.
struct ClearJob {
    partition: u32,
    /// Keys deleted by its committed chunks.
    deleted: usize,
    reply: PurgeReply,
}

/// What one commit's chunk of a clear did.
struct Chunk {
    deleted: usize,
    /// The partition is empty: the clear is done, and this is its fresh replica id.
    finished: Option<ReplicaId>,
}

/// A change made by one transaction to a partition's leaf hash (`old ^ new`), key count and
/// bytes.
struct LeafDelta {
    partition: u32,
    segment: u32,
    delta: u64,
    keys: i64,
    bytes: i64,
}

impl Writer {
    /// Applies and commits `batch` (draining it) and the joiners that arrive while it is
    /// applied, with one chunk of the oldest clear under way, updates the in-memory trees and
    /// counts, then answers each operation (and the clear if this chunk finished it). Returns
    /// true while a clear is under way.
    fn commit_batch(
        &mut self,
        batch: &mut Vec<WriteOp>,
        joiners: &mut Joiners<'_, WriteOp>,
    ) -> bool {
        let mut ops = Vec::with_capacity(batch.len());
        let mut clears = Vec::new();
        for op in batch.drain(..) {
            match op {
                WriteOp::Clear { .. } => clears.push(op),
                op => ops.push(op),
            }
        }
        self.start_clears(clears);
        let clearing = self.clears.front().map(|job| job.partition);
        if ops.is_empty() && clearing.is_none() {
            return false;
        }
        // Clears among the joiners start with the next commit.
        let mut late_clears = Vec::new();
        let committed = self
            .genv
            .write(|| self.try_commit(&mut ops, joiners, &mut late_clears, clearing));
        let outcomes = match committed {
            Ok((outcomes, deltas, chunk)) => {
                self.apply_deltas(&deltas);
                let mut partitions: Vec<u32> = ops.iter().map(WriteOp::partition).collect();
                partitions.sort_unstable();
                partitions.dedup();
                self.stats.commits.fetch_add(1, Ordering::Relaxed);
                self.stats
                    .writes
                    .fetch_add(ops.len() as u64, Ordering::Relaxed);
                self.stats
                    .most_partitions
                    .fetch_max(partitions.len(), Ordering::Relaxed);
                if let Some(chunk) = chunk {
                    self.stats.clear_chunks.fetch_add(1, Ordering::Relaxed);
                    self.stats
                        .most_cleared
                        .fetch_max(chunk.deleted, Ordering::Relaxed);
                    self.chunk_committed(chunk);
                }
                outcomes
            }
            Err(e) => {
                if let Some(job) = self.clears.pop_front() {
                    (job.reply)(Err(with_partition(e.clone(), job.partition)));
                }
                ops.iter().map(|op| op.failed(e.clone())).collect()
            }
        };
        for (op, outcome) in ops.into_iter().zip(outcomes) {
            op.answer(outcome);
        }
        self.start_clears(late_clears);
        !self.clears.is_empty()
    }

    /// Queues clear operations as clears under way (answering those of partitions that are
    /// not open).
    fn start_clears(&mut self, ops: Vec<WriteOp>) {
        for op in ops {
            match op {
                WriteOp::Clear { partition, reply } if self.parts.contains_key(&partition) => {
                    self.clears.push_back(ClearJob {
                        partition,
                        deleted: 0,
                        reply,
                    })
                }
                op => {
                    let p = op.partition();
                    op.refuse(StorageError::Closed(p))
                }
            }
        }
    }

    /// Applies a committed transaction's deltas to the partitions' trees and counts; a
    /// partition left without keys frees its leaves.
    fn apply_deltas(&self, deltas: &[LeafDelta]) {
        let mut current: Option<(u32, std::sync::RwLockWriteGuard<'_, PartMem>)> = None;
        for d in deltas {
            if current.as_ref().is_none_or(|(p, _)| *p != d.partition) {
                current = self
                    .parts
                    .get(&d.partition)
                    .map(|part| (d.partition, part.write()));
            }
            let Some((_, mem)) = current.as_mut() else {
                continue;
            };
            mem.tree.toggle(d.segment, d.delta);
            mem.keys = mem.keys.saturating_add_signed(d.keys);
            mem.bytes = mem.bytes.saturating_add_signed(d.bytes);
            if mem.keys == 0 {
                mem.tree.clear();
            }
        }
    }

    /// Books a committed chunk against the oldest clear, answering it if it is done.
    fn chunk_committed(&mut self, chunk: Chunk) {
        let Some(job) = self.clears.front_mut() else {
            return;
        };
        job.deleted += chunk.deleted;
        let Some(fresh) = chunk.finished else {
            return;
        };
        if let Some(part) = self.parts.get(&job.partition) {
            part.replica.store(fresh, Ordering::Release);
        }
        if let Some(job) = self.clears.pop_front() {
            tracing::info!(
                partition = job.partition,
                deleted = job.deleted,
                "cleared the partition"
            );
            (job.reply)(Ok(job.deleted));
        }
    }

    /// One attempt at the transaction: applies `batch`, then the joiners queued meanwhile
    /// (appended to `batch`, so that a retry after a map resize applies them again; clears
    /// among them go to `late_clears`), then one chunk of partition `clearing`'s clear, and
    /// commits.
    #[allow(clippy::type_complexity)]
    fn try_commit(
        &self,
        batch: &mut Vec<WriteOp>,
        joiners: &mut Joiners<'_, WriteOp>,
        late_clears: &mut Vec<WriteOp>,
        clearing: Option<u32>,
    ) -> Result<(Vec<Outcome>, Vec<LeafDelta>, Option<Chunk>), Abort> {
        let mut wtxn = self.genv.env().write_txn()?;
        let mut outcomes = Vec::with_capacity(batch.len());
        let mut deltas = Vec::with_capacity(batch.len());
        for op in batch.iter() {
            outcomes.push(self.apply_op(&mut wtxn, op, &mut deltas)?);
        }
        while let Some(op) = joiners.next() {
            if matches!(op, WriteOp::Clear { .. }) {
                late_clears.push(op);
                continue;
            }
            batch.push(op);
            if let Some(op) = batch.last() {
                outcomes.push(self.apply_op(&mut wtxn, op, &mut deltas)?);
            }
        }
        // After the batch's writes, so that a clear's last chunk leaves the partition empty.
        let chunk = match clearing {
            Some(p) => Some(self.clear_chunk(&mut wtxn, p, &mut deltas)?),
            None => None,
        };
        wtxn.commit()?;
        Ok((outcomes, deltas, chunk))
    }

    /// Applies one operation of a batch in `wtxn`.
    fn apply_op(
        &self,
        wtxn: &mut RwTxn,
        op: &WriteOp,
        deltas: &mut Vec<LeafDelta>,
    ) -> Result<Outcome, Abort> {
        Ok(match op {
            WriteOp::Record {
                partition,
                key,
                change,
                ..
            } => Outcome::Record(self.apply(wtxn, *partition, key, change, deltas)?),
            WriteOp::Purge {
                partition,
                candidates,
                now_ms,
                ..
            } => Outcome::Purged(Ok(
                self.purge(wtxn, *partition, candidates, *now_ms, deltas)?
            )),
            WriteOp::Paxos {
                partition,
                key,
                step,
                ..
            } => Outcome::Paxos(self.paxos_step(wtxn, *partition, key, step)?),
            // Taken out of the batch by `commit_batch`.
            WriteOp::Clear { partition, .. } => Outcome::Purged(Err(StorageError::Io(format!(
                "internal error: a clear of partition {partition} in a batch"
            )))),
        })
    }

    /// Applies one Paxos step to the acceptor state of stored key `key` of partition `p`.
    fn paxos_step(
        &self,
        wtxn: &mut RwTxn,
        p: u32,
        key: &[u8],
        step: &crate::paxos::PaxosStep,
    ) -> Result<Result<crate::paxos::PaxosAnswer, StorageError>, Abort> {
        if !self.parts.contains_key(&p) {
            return Ok(Err(StorageError::Closed(p)));
        }
        let pkey = paxos_key(p, key);
        let floor_key = meta_key(p, META_PAXOS_FLOOR);
        let floor = match self.dbs.meta.get(wtxn, &floor_key)? {
            Some(b) if b.len() == 8 => u64::from_be_bytes(b.try_into().unwrap_or([0; 8])),
            _ => 0,
        };
        let (current, stored) = match self.dbs.paxos.get(wtxn, &pkey)? {
            Some(bytes) => match crate::paxos::decode(bytes) {
                Ok(s) => (s, true),
                Err(e) => return Ok(Err(e)),
            },
            None => (crate::paxos::absent(floor), false),
        };
        if let crate::paxos::PaxosStep::Erase { accepted } = step {
            let erase = stored && current.accepted == *accepted && current.value.is_none();
            if erase {
                self.dbs.paxos.delete(wtxn, &pkey)?;
                let raised = floor.max(current.promised.counter);
                self.dbs.meta.put(wtxn, &floor_key, &raised.to_be_bytes())?;
            }
            return Ok(Ok(crate::paxos::PaxosAnswer {
                ok: erase,
                state: crate::paxos::AcceptorState {
                    value: None,
                    ..current
                },
            }));
        }
        let (answer, next) = crate::paxos::apply(&current, step);
        if let Some(next) = next {
            let bytes = crate::paxos::encode(&next);
            if bytes.len() > self.max_record_bytes {
                return Ok(Err(StorageError::RecordTooLarge {
                    bytes: bytes.len(),
                    limit: self.max_record_bytes,
                }));
            }
            self.dbs.paxos.put(wtxn, &pkey, &bytes)?;
        }
        Ok(Ok(answer))
    }

    /// Applies one change to `key` of partition `p` in `wtxn`; records the leaf change.
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
        let dkey = data_key(short(p), key);
        let (current, old_hash, old_bytes) = match self.dbs.kv.get(wtxn, &dkey)? {
            Some(bytes) => match record::decode(bytes) {
                Ok(d) => (
                    d,
                    merkle::entry_hash(key, bytes),
                    Some(dkey.len() + bytes.len()),
                ),
                Err(e) => return Ok(Err(e)),
            },
            None => (DvvSet::new(), 0, None),
        };
        let next = match change {
            Change::Update {
                context,
                value,
                codec,
                timestamp_ms,
                expires_at_ms,
                condition,
            } => {
                if let Err(e) = condition.check_update(&current, context, *timestamp_ms) {
                    return Ok(Err(e));
                }
                let mut next = current;
                if let Err(l) = next.update_encoded(
                    context,
                    part.replica(),
                    value.clone(),
                    *codec,
                    *timestamp_ms,
                    *expires_at_ms,
                    self.max_siblings,
                ) {
                    return Ok(Err(StorageError::TooManySiblings { limit: l.limit }));
                }
                next
            }
            Change::Merge { record, condition } => {
                if let Err(e) = condition.check_merge(&current, record) {
                    return Ok(Err(e));
                }
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
        let new_bytes = dkey.len() + bytes.len();
        deltas.push(LeafDelta {
            partition: p,
            segment: segment_in(&dkey),
            delta: old_hash ^ new_hash,
            keys: if old_bytes.is_some() { 0 } else { 1 },
            bytes: new_bytes as i64 - old_bytes.unwrap_or(0) as i64,
        });
        Ok(Ok(next))
    }

    /// Deletes the candidates of partition `p` that are still the given records and read as
    /// missing at `now_ms` (deleted or expired; only their metadata is decoded); returns how
    /// many.
    fn purge(
        &self,
        wtxn: &mut RwTxn,
        p: u32,
        candidates: &[(Vec<u8>, u64)],
        now_ms: u64,
        deltas: &mut Vec<LeafDelta>,
    ) -> Result<usize, Abort> {
        if !self.parts.contains_key(&p) {
            return Ok(0);
        }
        let mut purged = 0;
        for (key, expected) in candidates {
            let dkey = data_key(short(p), key);
            let size = match self.dbs.kv.get(wtxn, &dkey)? {
                Some(bytes)
                    if merkle::entry_hash(key, bytes) == *expected
                        && record::decode_meta(bytes).is_ok_and(|m| m.is_absent(now_ms)) =>
                {
                    dkey.len() + bytes.len()
                }
                _ => continue,
            };
            self.dbs.kv.delete(wtxn, &dkey)?;
            deltas.push(LeafDelta {
                partition: p,
                segment: segment_in(&dkey),
                delta: *expected,
                keys: -1,
                bytes: -(size as i64),
            });
            purged += 1;
        }
        Ok(purged)
    }

    /// Deletes the first [`Writer::clear_chunk`] keys of partition `p` (all of them if it
    /// holds fewer: then the clear is done, and the partition gets a fresh replica id in the
    /// same transaction, so that its dots are never reissued).
    fn clear_chunk(
        &self,
        wtxn: &mut RwTxn,
        p: u32,
        deltas: &mut Vec<LeafDelta>,
    ) -> Result<Chunk, Abort> {
        let prefix = short(p).to_be_bytes();
        let mut deleted = delete_first(
            self.dbs.kv,
            wtxn,
            &prefix,
            self.clear_chunk,
            |key, bytes| {
                // A malformed key is deleted too; it was never counted (an open refuses it).
                if let Ok((_, segment, stored)) = split_key(key) {
                    deltas.push(LeafDelta {
                        partition: p,
                        segment,
                        delta: merkle::entry_hash(stored, bytes),
                        keys: -1,
                        bytes: -((key.len() + bytes.len()) as i64),
                    });
                }
            },
        )?;
        // Then the partition's acceptor states (strong buckets), in the room left.
        let room = self.clear_chunk - deleted;
        if room > 0 {
            deleted += delete_first(self.dbs.paxos, wtxn, &prefix, room, |_, _| {})?;
        }
        let finished = if deleted < self.clear_chunk {
            let fresh: ReplicaId = rand::random();
            self.dbs
                .meta
                .put(wtxn, &meta_key(p, b"replica_id"), &fresh.to_be_bytes())?;
            Some(fresh)
        } else {
            None
        };
        Ok(Chunk { deleted, finished })
    }
}

/// Deletes the first `max` keys of `db` that start with `prefix` (calling `seen` with each key
/// and value first); answers how many.
fn delete_first(
    db: Database<'static, Bytes, Bytes>,
    wtxn: &mut RwTxn,
    prefix: &[u8],
    max: usize,
    mut seen: impl FnMut(&[u8], &[u8]),
) -> Result<usize, Abort> {
    let mut last: Option<Vec<u8>> = None;
    let mut deleted = 0;
    for entry in db.prefix_iter(wtxn, prefix)?.take(max) {
        let (key, value) = entry?;
        seen(key, value);
        deleted += 1;
        last = Some(key.to_vec());
    }
    if let Some(last) = &last {
        // Exactly the keys just read: the range starts before the prefix's first key.
        let range = (Bound::Included(prefix), Bound::Included(last.as_slice()));
        db.delete_range(wtxn, &range)?;
    }
    Ok(deleted)
}

/// Deletes every key of partition `p` (data, identity, checkpoint) from the data env at
/// `dir` (a data directory's `data/`, see [`crate::DataDir::data_dir`]), in one commit: the
/// loss of one partition's storage, for fault tests. No process may have the env open (stop
/// the node first); the next open gives the partition a fresh replica id.
///
/// # Errors
/// [`StorageError::InvalidArgument`] if `p` is [`MAX_PARTITIONS`] or more,
/// [`StorageError::UnsupportedFormat`] if the env is not of format [`FORMAT_VERSION`],
/// [`StorageError::Io`].
pub fn wipe_partition(dir: &Path, p: u32) -> Result<(), StorageError> {
    let number = u16::try_from(p).map_err(|_| {
        StorageError::InvalidArgument(format!(
            "partition {p} does not exist: a data env holds partitions 0 to {}",
            MAX_PARTITIONS - 1
        ))
    })?;
    let (env, kv) = crate::env::open_env::<Bytes, Bytes>(dir, 64 << 20, "kv")?;
    let meta = crate::env::create_database::<Bytes, Bytes>(&env, "meta")?;
    let mut wtxn = env.write_txn().map_err(StorageError::io)?;
    check_format(&mut wtxn, meta, dir).map_err(|e| match e {
        Abort::Failed(e) => e,
        Abort::MapFull => StorageError::Io("map full".into()),
    })?;
    let start = number.to_be_bytes();
    let next = number.checked_add(1).map(u16::to_be_bytes);
    let end = match &next {
        Some(next) => Bound::Excluded(&next[..]),
        None => Bound::Unbounded,
    };
    kv.delete_range(&mut wtxn, &(Bound::Included(&start[..]), end))
        .map_err(StorageError::io)?;
    for name in [&b"replica_id"[..], b"epoch", META_LEAVES] {
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

/// Overwrites partition `p`'s checkpoint in the data env at `dir` (not open) with `value`.
#[cfg(test)]
pub(crate) fn damage_checkpoint_for_test(dir: &Path, p: u32, value: &[u8]) {
    let (env, meta) = crate::env::open_env::<Bytes, Bytes>(dir, 64 << 20, "meta").unwrap();
    let mut wtxn = env.write_txn().unwrap();
    meta.put(&mut wtxn, &meta_key(p, META_LEAVES), value)
        .unwrap();
    wtxn.commit().unwrap();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_keys_put_the_segment_after_the_partition() {
        let stored = crate::keys::storage_key(b"b", b"k").unwrap();
        let key = data_key(0x0102, &stored);
        let segment = merkle::segment_of(merkle::key_hash(&stored));
        assert_eq!(&key[..2], &[1, 2]);
        assert_eq!(&key[2..4], &(segment as u16).to_be_bytes());
        assert_eq!(split_key(&key).unwrap(), (0x0102, segment, &stored[..]));
        assert_eq!(segment_in(&key), segment);
        assert!(split_key(&key[..4]).is_err());
    }

    #[test]
    fn checkpoints_round_trip_and_damage_is_detected() {
        let mut mem = PartMem {
            keys: 3,
            bytes: 300,
            ..Default::default()
        };
        let empty = encode_checkpoint(&PartMem::default());
        assert_eq!(
            empty.len(),
            1 + 8 + CHECKPOINT_COUNTS,
            "no leaves when none allocated"
        );
        let back = decode_checkpoint(&empty).unwrap();
        assert!(!back.tree.is_allocated());
        mem.tree.toggle(7, 99);
        let full = encode_checkpoint(&mem);
        let back = decode_checkpoint(&full).unwrap();
        assert_eq!((back.keys, back.bytes, &back.tree), (3, 300, &mem.tree));
        let mut flipped = full.clone();
        flipped[100] ^= 1;
        for bad in [&[][..], &[9][..], &full[..20], &flipped[..]] {
            assert!(matches!(
                decode_checkpoint(bad),
                Err(StorageError::Corrupt(_))
            ));
        }
    }
}
