//! A partition: a cheap handle (partition number + `Arc<DataStore>`) on the node's one data
//! env ([`crate::store`]), with a hash tree of its keys for anti-entropy ([`crate::merkle`]).
//!
//! Every partition of a node lives in the same LMDB env, its keys prefixed by the partition
//! number and the key's Merkle segment (big-endian), and every write goes to the env's one
//! writer thread. That thread takes every queued write of every partition (up to
//! [`PartitionOptions::max_batch`]), applies them in order inside one write transaction (with
//! the writes queued meanwhile, up to `max_batch` in all), commits it (with LMDB's default sync: data and
//! metadata are on disk when `commit` returns) and only then answers each write. Write
//! transactions never leave that thread, so no write transaction crosses an `.await` or a
//! thread, as LMDB requires. Sharing the commit between partitions is what makes it pay: with
//! an env per partition (the format before) a commit at Q=64 held 1.2 writes.
//!
//! A write changes one `kv` entry, nothing else: the key's Merkle segment is part of its LMDB
//! key, so the hash tree needs no second B-tree insert. The tree's 4096 leaf hashes (allocated
//! once the partition holds a key), its key count and its bytes are kept in memory and updated
//! by the writer after each commit, before the writes are answered; at open they come from the
//! checkpoint a clean shutdown left, or from one scan of the partition's keys (see
//! [`crate::store`]).
//!
//! Reads open a read transaction on the caller's thread (`heed::WithoutTls`, so the
//! transaction is `Send` and needs no thread-local slot); they are not blocked by the writer.
//!
//! The map starts at [`PartitionOptions::initial_map_bytes`] and doubles on `MapFull` up to
//! [`PartitionOptions::max_map_bytes`] (both for the node's whole data env). LMDB allows a
//! resize only while the process has no transaction open on the env, so readers hold a shared
//! gate for the length of their transaction and the writer takes it exclusively to resize.

use crate::condition::Condition;
use crate::dvv::{DvvSet, ReplicaId, VersionVector};
use crate::merkle::{self, MerkleTree};
use crate::record::PurgeBefore;
use crate::store::{Change, DataStore, WriteOp};
use crate::Codec;
use crate::{keys, record, StorageError};
use std::path::Path;
use std::sync::Arc;

/// Callback that receives the result of a queued write, after its transaction committed
/// (or failed). Called on the node's writer thread: it must not block.
pub type WriteReply = Box<dyn FnOnce(Result<DvvSet, StorageError>) + Send>;

/// Callback that receives the number of keys a [`Partition::purge_tombstones`] or a
/// [`Partition::clear`] deleted, after its (last) transaction committed, or the error. Called
/// on the node's writer thread: it must not block.
pub type PurgeReply = Box<dyn FnOnce(Result<usize, StorageError>) + Send>;

/// Tuning of the data env and its partitions. Every field has a default
/// ([`PartitionOptions::default`]).
#[derive(Clone, Debug)]
pub struct PartitionOptions {
    /// LMDB map size the node's data env starts with, bytes. Default 64 MiB.
    pub initial_map_bytes: usize,
    /// Largest map size the data env (every partition together) may grow to by doubling,
    /// bytes; a write that needs more fails with [`StorageError::Full`] naming its partition.
    /// Default 64 GiB (address space only: LMDB reserves, it does not allocate).
    pub max_map_bytes: usize,
    /// Most writes (of all partitions) committed in one transaction (group commit).
    /// Default 1024.
    pub max_batch: usize,
    /// Most siblings one key may hold; a write over it fails with
    /// [`StorageError::TooManySiblings`]. Default 100.
    pub max_siblings: usize,
    /// Largest encoded record of one key, bytes; a write or merge that would make a record
    /// larger fails with [`StorageError::RecordTooLarge`] and changes nothing. Default 6 MiB.
    pub max_record_bytes: usize,
    /// Most writes waiting for the writer thread; more are refused with
    /// [`StorageError::Overloaded`]. Default 16384.
    pub max_queue: usize,
    /// Most keys one commit deletes for a [`Partition::clear`]; each commit also holds the
    /// writes queued meanwhile, so this bounds how long a clear holds other writes.
    /// Default 4096.
    pub clear_chunk_keys: usize,
}

impl Default for PartitionOptions {
    fn default() -> Self {
        Self {
            initial_map_bytes: 64 << 20,
            max_map_bytes: 64 << 30,
            max_batch: 1024,
            max_siblings: 100,
            max_record_bytes: 6 << 20,
            max_queue: 16 * 1024,
            clear_chunk_keys: 4096,
        }
    }
}

/// How [`Partition::open_as`] and [`DataStore::open`] pick the replica id that names the dots
/// made in a partition.
#[derive(Clone, Debug)]
pub struct Identity {
    /// The id to take when the storage has none, or is not the one expected.
    pub fresh_id: ReplicaId,
    /// The epoch the node recorded for this partition when it last opened it (`None`: keep
    /// any stored id).
    pub expect_epoch: Option<u64>,
    /// The epoch to record now.
    pub new_epoch: u64,
}

impl Identity {
    /// Keep the stored id, or take `replica` if there is none (tests, benchmarks).
    pub fn fixed(replica: ReplicaId) -> Self {
        Self {
            fresh_id: replica,
            expect_epoch: None,
            new_epoch: 0,
        }
    }
}

/// Checks that `storage_key` is a stored key made by [`keys::storage_key`] from a valid
/// bucket and key.
///
/// # Errors
/// [`StorageError::InvalidArgument`] if it does not split into a bucket and a key; the
/// errors of [`keys::validate_stored`] if they break the limits.
fn check_storage_key(storage_key: &[u8]) -> Result<(), StorageError> {
    let (bucket, key) = keys::split_storage_key(storage_key).ok_or_else(|| {
        StorageError::InvalidArgument(format!(
            "{} bytes are not a stored key ([bucket length: u8][bucket][key])",
            storage_key.len()
        ))
    })?;
    keys::validate_stored(bucket, key)
}

/// What a partition holds, counted by the writer at each commit (and rebuilt at open with
/// the hash tree), so reading it costs no scan.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PartitionStats {
    /// Keys stored, tombstones included.
    pub keys: u64,
    /// Bytes of those keys as LMDB stores them: each key's LMDB key (4-byte prefix plus
    /// stored key) plus its record bytes. LMDB's page and B-tree overhead is not counted.
    pub bytes: u64,
}

/// One chunk of a partition's records in key order, as [`Partition::scan_chunk`] returns it:
/// the unit a partition transfer streams (Riak's handoff folds, Cassandra's streaming
/// sessions and Garage's table sync all walk a partition in its key order the same way).
///
/// Positions (`after` and [`ScanChunk::next`]) are the data env key without its 2-byte
/// partition number: `[segment: u16 BE][stored key]`. The segment is derived from the stored
/// key alone ([`merkle::segment_of`]), so every replica of a partition orders its keys the
/// same way and a position taken from one replica resumes a scan of another: keys it lacks
/// are simply skipped, keys it has in addition come in their place.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ScanChunk {
    /// `(stored key, record)` in key order (a record that does not decode is logged and left
    /// out, and the scan goes past it).
    pub entries: Vec<(Vec<u8>, DvvSet)>,
    /// Where the next chunk starts (strictly after this position), or `None` if the
    /// partition holds nothing after this chunk.
    pub next: Option<Vec<u8>>,
    /// Bytes the chunk counts against its budget: for each entry its LMDB key (4-byte
    /// prefix plus stored key) and its record bytes, as [`PartitionStats::bytes`] counts
    /// them.
    pub bytes: usize,
}

/// One partition of the node's data env: its number and the shared [`DataStore`]. Shared as
/// `Arc<Partition>`: the vnode that serves the partition holds one, its supervisor another.
pub struct Partition {
    id: u32,
    store: Arc<DataStore>,
}

impl std::fmt::Debug for Partition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Partition")
            .field("id", &self.id)
            .field("path", &self.store.path())
            .finish()
    }
}

impl Partition {
    /// Opens (creating if needed) a data env in directory `dir` holding partition `id` alone,
    /// loads its hash tree and counts (from its checkpoint, or by a scan of its keys) and
    /// starts its writer thread. `replica` names the dots that
    /// writes coordinated here create. For tests and benchmarks: a node opens all its
    /// partitions at once through [`crate::DataDir::open`].
    ///
    /// # Errors
    /// As [`DataStore::open`].
    pub fn open(
        dir: &Path,
        id: u32,
        replica: ReplicaId,
        options: &PartitionOptions,
    ) -> Result<Arc<Self>, StorageError> {
        Self::open_as(dir, id, &Identity::fixed(replica), options)
    }

    /// Opens partition `id` in `dir` as [`Partition::open`] does, choosing the replica id of
    /// its dots by `identity`: the id stored for the partition in the env is kept, unless
    /// there is none (fresh storage) or the partition's stored epoch is not
    /// `identity.expect_epoch` (a directory restored from a copy, or one whose node records
    /// were lost); then `identity.fresh_id` becomes its id. Either way `identity.new_epoch`
    /// is stored as its epoch. So a partition replica never reissues a dot: its dots are named
    /// by an id no other storage of it used (Riak's per-vnode ids; riak_kv#679 is the bug this
    /// prevents).
    ///
    /// # Errors
    /// As [`DataStore::open`].
    pub fn open_as(
        dir: &Path,
        id: u32,
        identity: &Identity,
        options: &PartitionOptions,
    ) -> Result<Arc<Self>, StorageError> {
        let store = DataStore::open(dir, &[(id, identity.clone())], options)?;
        Self::of(&store, id)
    }

    /// The handle of partition `id` of `store`.
    ///
    /// # Errors
    /// [`StorageError::InvalidArgument`] if `store` was not opened with partition `id`.
    pub fn of(store: &Arc<DataStore>, id: u32) -> Result<Arc<Self>, StorageError> {
        store.part(id)?;
        Ok(Arc::new(Self {
            id,
            store: store.clone(),
        }))
    }

    /// Partition number.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// Replica id used for dots created here (a completed [`Partition::clear`] gives the
    /// partition a fresh one).
    pub fn replica(&self) -> ReplicaId {
        self.store.part(self.id).map_or(0, |part| part.replica())
    }

    /// The data env this partition lives in.
    pub fn store(&self) -> &Arc<DataStore> {
        &self.store
    }

    /// Reads a key's state; `None` if the key was never written here.
    ///
    /// # Errors
    /// Key validation errors, [`StorageError::Corrupt`], [`StorageError::Io`].
    pub fn get(&self, bucket: &[u8], key: &[u8]) -> Result<Option<DvvSet>, StorageError> {
        let key = keys::storage_key(bucket, key)?;
        self.store.read_record(self.id, &key)
    }

    /// Reads a key's state by its stored key (`[bucket length: u8][bucket][key]`, as
    /// [`Partition::segment_entries`] returns them); `None` if the key is not stored here.
    ///
    /// # Errors
    /// [`StorageError::InvalidArgument`] if `storage_key` is not a stored key, key validation
    /// errors, [`StorageError::Corrupt`], [`StorageError::Io`].
    pub fn get_stored(&self, storage_key: &[u8]) -> Result<Option<DvvSet>, StorageError> {
        check_storage_key(storage_key)?;
        self.store.read_record(self.id, storage_key)
    }

    /// Queues a client write coordinated by this replica: `value` (`None` for a delete)
    /// replaces what `context` covers (see [`DvvSet::update`]). `reply` receives the key's new
    /// state once it is durable, or the error.
    pub fn update(
        &self,
        bucket: &[u8],
        key: &[u8],
        context: VersionVector,
        value: Option<Vec<u8>>,
        timestamp_ms: u64,
        reply: WriteReply,
    ) {
        self.update_with(
            bucket,
            key,
            context,
            value,
            Codec::None,
            timestamp_ms,
            None,
            Condition::None,
            reply,
        )
    }

    /// [`Partition::update`] with a value already encoded by `codec` (see [`crate::codec`]; the
    /// replica stores it as it is) and an optional absolute expiry (`expires_at_ms`, ms since
    /// the Unix epoch, [`crate::Sibling::expires_at_ms`]), applied only if `condition` holds on
    /// the key's current state at `timestamp_ms`, checked by the writer inside the transaction
    /// that applies the write ([`Condition::check_update`]); else `reply` receives
    /// [`StorageError::ConditionFailed`] and nothing is written.
    #[allow(clippy::too_many_arguments)]
    pub fn update_with(
        &self,
        bucket: &[u8],
        key: &[u8],
        context: VersionVector,
        value: Option<Vec<u8>>,
        codec: Codec,
        timestamp_ms: u64,
        expires_at_ms: Option<u64>,
        condition: Condition,
        reply: WriteReply,
    ) {
        match keys::storage_key(bucket, key) {
            Ok(key) => self.store.enqueue(WriteOp::Record {
                partition: self.id,
                key,
                change: Change::Update {
                    context,
                    value,
                    codec,
                    timestamp_ms,
                    expires_at_ms,
                    condition,
                },
                reply,
            }),
            Err(e) => reply(Err(e)),
        }
    }

    /// Queues a merge of another replica's state of a key (see [`DvvSet::sync`]). `reply`
    /// receives the merged state once it is durable.
    pub fn merge(&self, bucket: &[u8], key: &[u8], record: DvvSet, reply: WriteReply) {
        self.merge_if(bucket, key, record, Condition::None, reply)
    }

    /// Like [`Partition::merge`], for the replication of a conditional write: refused with
    /// [`StorageError::ConditionFailed`] (nothing written) if this replica holds a live version
    /// that `record`'s clock does not cover ([`Condition::check_merge`]), checked by the writer
    /// inside the transaction that applies the merge.
    pub fn merge_if(
        &self,
        bucket: &[u8],
        key: &[u8],
        record: DvvSet,
        condition: Condition,
        reply: WriteReply,
    ) {
        match keys::storage_key(bucket, key) {
            Ok(key) => self.store.enqueue(WriteOp::Record {
                partition: self.id,
                key,
                change: Change::Merge { record, condition },
                reply,
            }),
            Err(e) => reply(Err(e)),
        }
    }

    /// Like [`Partition::merge`], for a key given as its stored key (as
    /// [`Partition::segment_entries`] and [`merkle::diff_entries`] return them). `reply`
    /// receives the merged state once it is durable, [`StorageError::InvalidArgument`] if
    /// `storage_key` is not a stored key, or the key validation error.
    pub fn merge_stored(&self, storage_key: Vec<u8>, record: DvvSet, reply: WriteReply) {
        match check_storage_key(&storage_key) {
            Ok(()) => self.store.enqueue(WriteOp::Record {
                partition: self.id,
                key: storage_key,
                change: Change::Merge {
                    record,
                    condition: Condition::None,
                },
                reply,
            }),
            Err(e) => reply(Err(e)),
        }
    }

    /// Queues the deletion of tombstones and expired values: each `(stored key, entry hash)`
    /// of `candidates` (as [`Partition::tombstones`] returns them) is deleted, from the data
    /// and from the hash tree, only if the key's current [`merkle::entry_hash`] is still the
    /// given one and its record reads as missing at `now_ms` (ms since the Unix epoch, this
    /// node's clock: every sibling a tombstone or expired, [`DvvSet::is_absent`]); a key
    /// written since it was listed is kept, and so is a value this node's clock does not yet
    /// see as expired. `reply` receives how many keys were deleted, once that is durable.
    ///
    /// Purging is only safe once every replica holds the tombstone (or a later state):
    /// otherwise a replica that still has the old value brings it back. Choosing the
    /// candidates (e.g. tombstones older than a grace period, seen on all replicas) is the
    /// caller's job.
    ///
    /// `reply` receives [`StorageError::InvalidArgument`] if a candidate is not a stored key,
    /// and nothing is deleted.
    pub fn purge_tombstones(
        &self,
        candidates: Vec<(Vec<u8>, u64)>,
        now_ms: u64,
        reply: PurgeReply,
    ) {
        if let Err(e) = candidates
            .iter()
            .try_for_each(|(key, _)| check_storage_key(key))
        {
            return reply(Err(e));
        }
        self.store.enqueue(WriteOp::Purge {
            partition: self.id,
            candidates,
            now_ms,
            reply,
        });
    }

    /// The stored keys of the chunk and head records of large values in this partition
    /// ([`crate::large`]), at most `limit`, in key order (a version's records together). Reads
    /// keys only.
    ///
    /// # Errors
    /// [`StorageError`] if the scan fails.
    pub fn large_value_keys(&self, limit: usize) -> Result<Vec<Vec<u8>>, StorageError> {
        let mut out = Vec::new();
        if limit == 0 {
            return Ok(out);
        }
        self.store.scan(self.id, |key, _| {
            if crate::large::parse_stored_chunk(key).is_some() {
                out.push(key.to_vec());
            }
            out.len() < limit
        })?;
        Ok(out)
    }

    /// Up to `limit` purge candidates: keys whose every sibling is a tombstone written before
    /// `before.deleted_ms` or a value that expired before `before.expired_ms`
    /// ([`crate::record::RecordMeta::is_purgeable`]; ms since the Unix epoch, the siblings'
    /// `timestamp_ms` and `expires_at_ms`), as `(stored key, entry hash)` in the partition's
    /// key order (by segment, then stored key; see [`crate::store`]): the candidates for
    /// [`Partition::purge_tombstones`]. Scans every record of the partition but decodes only
    /// its metadata ([`record::decode_meta`]: value bytes are skipped, not copied), and hashes
    /// only the candidates; a record that does not decode is logged and skipped.
    ///
    /// # Errors
    /// [`StorageError::Io`].
    pub fn tombstones(
        &self,
        before: PurgeBefore,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, u64)>, StorageError> {
        let mut out = Vec::new();
        if limit == 0 {
            return Ok(out);
        }
        self.store.scan(self.id, |key, bytes| {
            match record::decode_meta(bytes) {
                Ok(meta) if meta.is_purgeable(before) => {
                    out.push((key.to_vec(), merkle::entry_hash(key, bytes)));
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(partition = self.id, error = %e, "skipping a corrupt record");
                }
            }
            out.len() < limit
        })?;
        Ok(out)
    }

    /// Hash-tree nodes for an anti-entropy exchange (see [`crate::merkle`]): for each index
    /// of `parents` (nodes at `level - 1`), the [`merkle::FANOUT`] = 16 hashes of its children
    /// at `level`, concatenated (length `16 * parents.len()`). For `level` 0, `parents` must be
    /// `[0]` and the answer is `[root hash]`. Level 3 children are the leaves (segments). The
    /// tree reflects every write answered so far.
    ///
    /// # Errors
    /// [`StorageError::InvalidArgument`] if `level` > 3, a parent is out of range, `parents`
    /// is longer than level `level - 1`, or `level` is 0 and `parents` is not `[0]`.
    pub fn merkle_children(&self, level: u32, parents: &[u32]) -> Result<Vec<u64>, StorageError> {
        self.store
            .part(self.id)?
            .read()
            .tree
            .children(level, parents)
    }

    /// A copy of the whole hash tree (4096 leaf hashes, 32 KiB; nothing allocated for an
    /// empty partition).
    pub fn merkle_tree(&self) -> MerkleTree {
        self.store
            .part(self.id)
            .map(|part| part.read().tree.clone())
            .unwrap_or_default()
    }

    /// Every key of the given segments (leaf indices `0..4096`), as `(segment, stored key,
    /// entry hash)`, segment by segment in the order given and, within one, in stored-key
    /// order. One range scan of the data per segment (a segment is a contiguous key range),
    /// computing each [`merkle::entry_hash`] from the record read.
    ///
    /// # Errors
    /// [`StorageError::InvalidArgument`] if a segment is 4096 or more,
    /// [`StorageError::Corrupt`] if a key is malformed, [`StorageError::Io`].
    pub fn segment_entries(
        &self,
        segments: &[u32],
    ) -> Result<Vec<(u32, Vec<u8>, u64)>, StorageError> {
        if let Some(bad) = segments.iter().find(|&&s| s >= merkle::SEGMENTS) {
            return Err(StorageError::InvalidArgument(format!(
                "segment {bad} does not exist: segments are 0 to {}",
                merkle::SEGMENTS - 1
            )));
        }
        self.store.segment_entries(self.id, segments)
    }

    /// The partition's records in key order strictly after position `after` (`None`: from
    /// the first key), stopping before the chunk would pass `max_bytes` (counted as
    /// [`ScanChunk::bytes`]); a chunk holds at least one record if any remains, however
    /// large. [`ScanChunk::next`] is the position to pass as `after` for the next chunk,
    /// `None` once the partition is exhausted. One read transaction per chunk: a write
    /// answered before the call is seen, later ones may or may not be. Positions are stable
    /// across replicas (see [`ScanChunk`]).
    ///
    /// # Errors
    /// [`StorageError::InvalidArgument`] if the partition is not open in its store,
    /// [`StorageError::Corrupt`] for a malformed data key, [`StorageError::Io`].
    pub fn scan_chunk(
        &self,
        after: Option<&[u8]>,
        max_bytes: usize,
    ) -> Result<ScanChunk, StorageError> {
        self.store.part(self.id)?;
        self.store.scan_chunk(self.id, after, max_bytes)
    }

    /// Number of keys stored (tombstones included), counted at open and kept by the writer:
    /// [`PartitionStats::keys`].
    ///
    /// # Errors
    /// [`StorageError::InvalidArgument`] if the partition is not open in its store.
    pub fn len(&self) -> Result<u64, StorageError> {
        Ok(self.stats()?.keys)
    }

    /// Keys and bytes the partition holds ([`PartitionStats`]), counted at open and kept by
    /// the writer after each commit; they reflect every answered write.
    ///
    /// # Errors
    /// [`StorageError::InvalidArgument`] if the partition is not open in its store.
    pub fn stats(&self) -> Result<PartitionStats, StorageError> {
        Ok(self.store.part(self.id)?.read().stats())
    }

    /// Queues the deletion of every key of the partition (records and hash tree), done by the
    /// writer thread in chunks of at most [`PartitionOptions::clear_chunk_keys`] keys, one
    /// chunk per commit, each commit also holding the other writes queued meanwhile (so they
    /// wait for at most one chunk). `reply` receives how many keys were deleted once the
    /// partition is empty and that is durable; the partition then has a fresh replica id
    /// (stored in the same commit), so that no dot made before the clear is made again.
    ///
    /// Writes to the partition that are answered before the clear are concurrent with it:
    /// they may or may not be deleted. Writes queued after `reply` was called are kept. A
    /// failed commit answers the error and stops the clear (the keys already deleted stay
    /// deleted). [`Partition::shutdown`] finishes a clear under way before it returns.
    pub fn clear(&self, reply: PurgeReply) {
        self.store.enqueue(WriteOp::Clear {
            partition: self.id,
            reply,
        });
    }

    /// Queues a Paxos step on the acceptor state of stored key `storage_key`
    /// ([`crate::paxos`]); `reply` receives the acceptor's answer once the change is durable
    /// (a refusal changes nothing and is answered with the batch it went in).
    ///
    /// # Errors (through `reply`)
    /// [`StorageError::InvalidArgument`] for a malformed stored key,
    /// [`StorageError::RecordTooLarge`] for a state over `max-record-bytes`,
    /// [`StorageError::Overloaded`], [`StorageError::Full`], [`StorageError::Io`].
    pub fn paxos(
        &self,
        storage_key: Vec<u8>,
        step: crate::paxos::PaxosStep,
        reply: crate::paxos::PaxosReply,
    ) {
        match check_storage_key(&storage_key) {
            Ok(()) => self.store.enqueue(WriteOp::Paxos {
                partition: self.id,
                key: storage_key,
                step,
                reply,
            }),
            Err(e) => reply(Err(e)),
        }
    }

    /// The acceptor state of stored key `storage_key` as last committed (`None`: no step
    /// ever reached it here). A read transaction: it never waits for the writer.
    ///
    /// # Errors
    /// [`StorageError::InvalidArgument`] for a malformed stored key,
    /// [`StorageError::Corrupt`], [`StorageError::Io`].
    pub fn paxos_state(
        &self,
        storage_key: &[u8],
    ) -> Result<Option<crate::paxos::AcceptorState>, StorageError> {
        check_storage_key(storage_key)?;
        self.store.read_paxos(self.id, storage_key)
    }

    /// Up to `max` stored keys with an acceptor state here, in key order, strictly after
    /// `after` (the last key of the previous page): how a layout change finds the strong
    /// keys of a partition.
    ///
    /// # Errors
    /// [`StorageError::Io`].
    pub fn paxos_keys(
        &self,
        after: Option<&[u8]>,
        max: usize,
    ) -> Result<Vec<Vec<u8>>, StorageError> {
        self.store.paxos_keys(self.id, after, max)
    }

    /// True if a key of `bucket` is stored here (live, deleted or expired) or has an
    /// acceptor state: a scan of the partition's keys that stops at the first one found.
    ///
    /// # Errors
    /// [`StorageError::Io`], [`StorageError::Corrupt`].
    pub fn holds_bucket(&self, bucket: &[u8]) -> Result<bool, StorageError> {
        let mut prefix = vec![bucket.len() as u8];
        prefix.extend_from_slice(bucket);
        let mut found = false;
        self.store.scan(self.id, |stored, _| {
            found = stored.starts_with(&prefix);
            !found
        })?;
        if found {
            return Ok(true);
        }
        let mut after: Option<Vec<u8>> = None;
        loop {
            let page = self.store.paxos_keys(self.id, after.as_deref(), 4096)?;
            if page.iter().any(|k| k.starts_with(&prefix)) {
                return Ok(true);
            }
            match page.last() {
                Some(last) if page.len() == 4096 => after = Some(last.clone()),
                _ => return Ok(false),
            }
        }
    }

    /// True if no key is stored.
    ///
    /// # Errors
    /// As [`Partition::len`].
    pub fn is_empty(&self) -> Result<bool, StorageError> {
        Ok(self.len()? == 0)
    }

    /// Current LMDB map size of the data env (every partition together), bytes.
    pub fn map_size(&self) -> usize {
        self.store.map_size()
    }

    /// Stops the data env's writer (every partition of the env: they share it), lets it commit
    /// and answer everything already queued, and waits for it. Idempotent. Writes queued
    /// afterwards fail with [`StorageError::Closed`].
    pub fn shutdown(&self) {
        self.store.shutdown();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::sync::mpsc::{self, sync_channel};

    fn put(
        p: &Partition,
        key: &[u8],
        ctx: VersionVector,
        value: Option<&[u8]>,
    ) -> Result<DvvSet, StorageError> {
        let (tx, rx) = sync_channel(1);
        p.update(
            b"b",
            key,
            ctx,
            value.map(|v| v.to_vec()),
            0,
            Box::new(move |r| {
                let _ = tx.send(r);
            }),
        );
        rx.recv().unwrap()
    }

    #[test]
    fn writes_are_durable_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let p = Partition::open(dir.path(), 0, 7, &PartitionOptions::default()).unwrap();
            put(&p, b"k", VersionVector::new(), Some(b"v")).unwrap();
            p.shutdown();
        }
        let p = Partition::open(dir.path(), 0, 7, &PartitionOptions::default()).unwrap();
        let d = p.get(b"b", b"k").unwrap().unwrap();
        assert_eq!(d.values().collect::<Vec<_>>(), vec![b"v".as_slice()]);
        assert_eq!(p.get(b"b", b"missing").unwrap(), None);
    }

    fn paxos(
        p: &Partition,
        key: &[u8],
        step: crate::paxos::PaxosStep,
    ) -> crate::paxos::PaxosAnswer {
        let (tx, rx) = mpsc::channel();
        p.paxos(
            keys::storage_key(b"b", key).unwrap(),
            step,
            Box::new(move |r| tx.send(r).unwrap()),
        );
        rx.recv().unwrap().unwrap()
    }

    #[test]
    fn acceptor_states_are_durable_across_reopen_and_go_with_a_clear() {
        use crate::paxos::{Ballot, PaxosStep};
        let b = |c| Ballot {
            counter: c,
            proposer: 9,
        };
        let dir = tempfile::tempdir().unwrap();
        {
            let p = Partition::open(dir.path(), 0, 7, &PartitionOptions::default()).unwrap();
            assert!(paxos(&p, b"k", PaxosStep::Prepare { ballot: b(2) }).ok);
            let accept = PaxosStep::Accept {
                ballot: b(2),
                value: Some(b"v".to_vec()),
                promise_next: Some(b(3)),
            };
            assert!(paxos(&p, b"k", accept).ok);
            // A lower ballot is refused and changes nothing.
            assert!(!paxos(&p, b"k", PaxosStep::Prepare { ballot: b(1) }).ok);
            assert!(!p.holds_bucket(b"other").unwrap());
            assert!(p.holds_bucket(b"b").unwrap());
            p.shutdown();
        }
        let p = Partition::open(dir.path(), 0, 7, &PartitionOptions::default()).unwrap();
        let key = keys::storage_key(b"b", b"k").unwrap();
        let state = p.paxos_state(&key).unwrap().unwrap();
        assert_eq!((state.promised, state.accepted), (b(3), b(2)));
        assert_eq!(state.value.as_deref(), Some(&b"v"[..]));
        assert_eq!(p.paxos_keys(None, 10).unwrap(), vec![key.clone()]);
        assert!(p.paxos_keys(Some(&key), 10).unwrap().is_empty());
        // The promise survived: the ballot it beat is still refused.
        assert!(!paxos(&p, b"k", PaxosStep::Prepare { ballot: b(3) }).ok);
        let (tx, rx) = mpsc::channel();
        p.clear(Box::new(move |r| tx.send(r).unwrap()));
        assert_eq!(rx.recv().unwrap().unwrap(), 1);
        assert_eq!(p.paxos_state(&key).unwrap(), None);
        assert!(!p.holds_bucket(b"b").unwrap());
    }

    #[test]
    fn an_erased_tombstone_leaves_a_floor_under_which_ballots_are_refused() {
        use crate::paxos::{Ballot, PaxosStep};
        let b = |c| Ballot {
            counter: c,
            proposer: 9,
        };
        let dir = tempfile::tempdir().unwrap();
        let p = Partition::open(dir.path(), 0, 7, &PartitionOptions::default()).unwrap();
        assert!(paxos(&p, b"k", PaxosStep::Prepare { ballot: b(4) }).ok);
        let tombstone = PaxosStep::Accept {
            ballot: b(4),
            value: None,
            promise_next: Some(b(5)),
        };
        assert!(paxos(&p, b"k", tombstone).ok);
        // Not the tombstone asked for: kept.
        assert!(!paxos(&p, b"k", PaxosStep::Erase { accepted: b(3) }).ok);
        assert!(paxos(&p, b"k", PaxosStep::Erase { accepted: b(4) }).ok);
        let key = keys::storage_key(b"b", b"k").unwrap();
        assert_eq!(p.paxos_state(&key).unwrap(), None);
        // The promise of the erased state (5) is the partition's floor, for every key.
        for k in [&b"k"[..], b"other"] {
            let late = PaxosStep::Accept {
                ballot: b(5),
                value: Some(b"stale".to_vec()),
                promise_next: None,
            };
            let refused = paxos(&p, k, late);
            assert!(!refused.ok);
            assert_eq!(refused.state.promised.counter, 5);
            assert!(!paxos(&p, k, PaxosStep::Prepare { ballot: b(5) }).ok);
            assert!(paxos(&p, k, PaxosStep::Prepare { ballot: b(6) }).ok);
        }
        // A value is never erased.
        let put = PaxosStep::Accept {
            ballot: b(6),
            value: Some(b"v".to_vec()),
            promise_next: None,
        };
        assert!(paxos(&p, b"other", put).ok);
        assert!(!paxos(&p, b"other", PaxosStep::Erase { accepted: b(6) }).ok);
    }

    #[test]
    fn records_over_the_limit_are_refused_and_change_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let opts = PartitionOptions {
            max_record_bytes: 3000,
            ..Default::default()
        };
        let p = Partition::open(dir.path(), 0, 7, &opts).unwrap();
        let first = put(&p, b"k", VersionVector::new(), Some(&[1; 2000])).unwrap();
        // A blind write would keep both values: 4000 bytes.
        let e = put(&p, b"k", VersionVector::new(), Some(&[2; 2000])).unwrap_err();
        assert!(
            matches!(e, StorageError::RecordTooLarge { limit: 3000, bytes } if bytes > 4000),
            "{e:?}"
        );
        assert!(e.to_string().contains("max-record-bytes"), "{e}");
        // So would a merge of a concurrent version made elsewhere.
        let mut other = DvvSet::new();
        other
            .update(&VersionVector::new(), 99, Some(vec![3; 2000]), 0, 100)
            .unwrap();
        let (tx, rx) = sync_channel(1);
        p.merge(b"b", b"k", other, Box::new(move |r| drop(tx.send(r))));
        assert!(matches!(
            rx.recv().unwrap(),
            Err(StorageError::RecordTooLarge { .. })
        ));
        assert_eq!(p.get(b"b", b"k").unwrap().unwrap(), first);
        // A write with the context replaces the value and fits.
        put(&p, b"k", first.context().clone(), Some(&[4; 2000])).unwrap();
    }

    #[test]
    fn a_partition_keeps_its_id_until_its_storage_is_not_the_expected_one() {
        let dir = tempfile::tempdir().unwrap();
        let opts = PartitionOptions::default();
        let open = |fresh, expect, new| {
            let identity = Identity {
                fresh_id: fresh,
                expect_epoch: expect,
                new_epoch: new,
            };
            let p = Partition::open_as(dir.path(), 0, &identity, &opts).unwrap();
            let id = p.replica();
            p.shutdown();
            drop(p);
            id
        };
        // Fresh storage takes the fresh id; a reopen with the recorded epoch keeps it.
        assert_eq!(open(11, Some(0), 5), 11);
        assert_eq!(open(12, Some(5), 6), 11);
        // Storage whose epoch is not the recorded one (restored from a copy): a fresh id.
        assert_eq!(open(13, Some(99), 7), 13);
        assert_eq!(open(14, Some(7), 8), 13);
    }

    /// The ack rule itself: a write is answered only after the commit that makes it durable.
    /// While the test holds the env's writer lock, the writer thread cannot commit, and the
    /// write stays unanswered; once the lock is released, the answer comes and the write is
    /// in the env.
    #[test]
    fn nothing_is_acknowledged_before_its_commit() {
        let dir = tempfile::tempdir().unwrap();
        let p = Partition::open(dir.path(), 0, 7, &PartitionOptions::default()).unwrap();
        let blocker = p.store.genv().env().write_txn().unwrap();
        let (tx, rx) = sync_channel(1);
        p.update(
            b"b",
            b"k",
            VersionVector::new(),
            Some(b"v".to_vec()),
            0,
            Box::new(move |r| {
                let _ = tx.send(r);
            }),
        );
        assert!(
            rx.recv_timeout(std::time::Duration::from_millis(300))
                .is_err(),
            "a write was acknowledged while its commit could not run"
        );
        assert_eq!(p.get(b"b", b"k").unwrap(), None);
        drop(blocker);
        rx.recv().unwrap().unwrap();
        assert!(p.get(b"b", b"k").unwrap().is_some());
    }

    /// Conditional writes queued together (one group commit) are checked one after the
    /// other inside the transaction: the second creator sees the first and is refused, and
    /// so is a conditional merge of a version this replica has not seen.
    #[test]
    fn conditional_writes_in_one_commit_see_each_other() {
        let dir = tempfile::tempdir().unwrap();
        let p = Partition::open(dir.path(), 0, 7, &PartitionOptions::default()).unwrap();
        let blocker = p.store.genv().env().write_txn().unwrap();
        let (tx, rx) = mpsc::channel();
        for value in [b"first", b"other"] {
            let tx = tx.clone();
            p.update_with(
                b"b",
                b"k",
                VersionVector::new(),
                Some(value.to_vec()),
                Codec::None,
                0,
                None,
                Condition::IfNoneMatch,
                Box::new(move |r| {
                    let _ = tx.send(r);
                }),
            );
        }
        let mut foreign = DvvSet::new();
        foreign
            .update(&VersionVector::new(), 99, Some(b"foreign".to_vec()), 0, 10)
            .unwrap();
        let merged = tx.clone();
        p.merge_if(
            b"b",
            b"k",
            foreign,
            Condition::IfNoneMatch,
            Box::new(move |r| {
                let _ = merged.send(r);
            }),
        );
        drop(blocker);
        let answers: Vec<_> = (0..3).map(|_| rx.recv().unwrap()).collect();
        assert!(answers[0].is_ok(), "{answers:?}");
        for refused in &answers[1..] {
            assert!(
                matches!(refused, Err(StorageError::ConditionFailed { condition, .. }) if condition == "if_none_match"),
                "{refused:?}"
            );
        }
        let d = p.get(b"b", b"k").unwrap().unwrap();
        assert_eq!(d.values().collect::<Vec<_>>(), vec![b"first".as_slice()]);
    }

    /// A write queued after the writer took its batch, while that batch waits for its
    /// transaction, joins that transaction instead of waiting for the next commit.
    #[test]
    fn a_write_queued_during_a_commit_joins_it() {
        let dir = tempfile::tempdir().unwrap();
        // A queue of one: a second write is accepted only once the writer took the first.
        let opts = PartitionOptions {
            max_queue: 1,
            ..Default::default()
        };
        let p = Partition::open(dir.path(), 0, 7, &opts).unwrap();
        let blocker = p.store.genv().env().write_txn().unwrap();
        let (tx, rx) = mpsc::channel();
        let write = |i: u32| {
            let tx = tx.clone();
            p.update(
                b"b",
                &i.to_be_bytes(),
                VersionVector::new(),
                Some(b"v".to_vec()),
                0,
                Box::new(move |r| {
                    let _ = tx.send((i, r));
                }),
            );
        };
        write(1);
        // Poll, with a deadline, until the queue takes write 2: the writer has taken write 1
        // and waits for the env's write lock, which this test holds.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            write(2);
            match rx.try_recv() {
                Ok((2, Err(StorageError::Overloaded { .. }))) => {
                    assert!(std::time::Instant::now() < deadline, "write 1 never taken");
                    std::thread::yield_now();
                }
                Err(mpsc::TryRecvError::Empty) => break,
                other => panic!("unexpected answer {other:?}"),
            }
        }
        drop(blocker);
        let mut answered: Vec<u32> = (0..2)
            .map(|_| rx.recv().unwrap())
            .map(|(i, r)| {
                r.unwrap();
                i
            })
            .collect();
        answered.sort();
        assert_eq!(answered, vec![1, 2]);
        let stats = p.store.commit_stats();
        assert_eq!(
            (stats.commits(), stats.writes()),
            (1, 2),
            "one commit held both"
        );
    }

    #[test]
    fn map_grows_on_map_full_and_stops_at_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let opts = PartitionOptions {
            initial_map_bytes: 1 << 20,
            max_map_bytes: 8 << 20,
            ..Default::default()
        };
        let p = Partition::open(dir.path(), 3, 7, &opts).unwrap();
        let value = vec![7u8; 64 << 10];
        let mut stored = 0;
        let mut full = None;
        for i in 0..400u32 {
            match put(&p, &i.to_be_bytes(), VersionVector::new(), Some(&value)) {
                Ok(_) => stored += 1,
                Err(e) => {
                    full = Some(e);
                    break;
                }
            }
        }
        assert!(p.map_size() > 1 << 20, "map did not grow");
        assert!(stored > 16, "only {stored} values fit");
        let err = full.expect("an 8 MiB map cannot hold 25 MiB");
        assert!(
            matches!(err, StorageError::Full { partition: 3, .. }),
            "{err}"
        );
        // Everything acknowledged before is still there and readable.
        for i in 0..stored as u32 {
            assert!(p.get(b"b", &i.to_be_bytes()).unwrap().is_some());
        }
    }

    #[test]
    fn group_commit_answers_every_queued_write() {
        let dir = tempfile::tempdir().unwrap();
        let p = Partition::open(dir.path(), 0, 7, &PartitionOptions::default()).unwrap();
        // `fill` queues all 2000 writes at once and asserts that every one is answered Ok.
        fill(&p, 0, 2000);
        assert_eq!(p.len().unwrap(), 2000);
    }

    #[test]
    fn invalid_keys_and_closed_partitions_answer_errors() {
        let dir = tempfile::tempdir().unwrap();
        let p = Partition::open(dir.path(), 5, 7, &PartitionOptions::default()).unwrap();
        assert!(matches!(
            put(&p, b"", VersionVector::new(), Some(b"v")),
            Err(StorageError::EmptyKey { .. })
        ));
        p.shutdown();
        assert_eq!(
            put(&p, b"k", VersionVector::new(), Some(b"v")).unwrap_err(),
            StorageError::Closed(5)
        );
    }

    #[test]
    fn merge_keeps_concurrent_and_skips_dominated() {
        let dir = tempfile::tempdir().unwrap();
        let p = Partition::open(dir.path(), 0, 1, &PartitionOptions::default()).unwrap();
        let ours = put(&p, b"k", VersionVector::new(), Some(b"ours")).unwrap();
        let mut theirs = DvvSet::new();
        theirs
            .update(&VersionVector::new(), 2, Some(b"theirs".to_vec()), 0, 10)
            .unwrap();
        let (tx, rx) = sync_channel(1);
        p.merge(
            b"b",
            b"k",
            theirs,
            Box::new(move |r| {
                let _ = tx.send(r);
            }),
        );
        let merged = rx.recv().unwrap().unwrap();
        assert_eq!(merged.values().count(), 2);
        let (tx, rx) = sync_channel(1);
        p.merge(
            b"b",
            b"k",
            ours,
            Box::new(move |r| {
                let _ = tx.send(r);
            }),
        );
        assert_eq!(rx.recv().unwrap().unwrap(), merged);
    }

    fn merge_stored(p: &Partition, key: Vec<u8>, record: DvvSet) -> Result<DvvSet, StorageError> {
        let (tx, rx) = sync_channel(1);
        p.merge_stored(
            key,
            record,
            Box::new(move |r| {
                let _ = tx.send(r);
            }),
        );
        rx.recv().unwrap()
    }

    fn purge(p: &Partition, candidates: Vec<(Vec<u8>, u64)>) -> Result<usize, StorageError> {
        purge_at(p, candidates, 0)
    }

    /// [`Partition::purge_tombstones`] with the purging node's clock at `now_ms`.
    fn purge_at(
        p: &Partition,
        candidates: Vec<(Vec<u8>, u64)>,
        now_ms: u64,
    ) -> Result<usize, StorageError> {
        let (tx, rx) = sync_channel(1);
        p.purge_tombstones(
            candidates,
            now_ms,
            Box::new(move |r| {
                let _ = tx.send(r);
            }),
        );
        rx.recv().unwrap()
    }

    /// The tree computed from scratch from the partition's `kv` entries.
    fn rebuilt(p: &Partition) -> MerkleTree {
        let mut records: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        p.store
            .scan(p.id, |k, v| {
                records.push((k.to_vec(), v.to_vec()));
                true
            })
            .unwrap();
        MerkleTree::from_records(records.iter().map(|(k, v)| (k.as_slice(), v.as_slice())))
    }

    /// The counts computed from scratch from the partition's `kv` entries.
    fn counted(p: &Partition) -> PartitionStats {
        let mut stats = PartitionStats::default();
        p.store
            .scan(p.id, |k, v| {
                stats.keys += 1;
                stats.bytes += (crate::store::PREFIX_LEN + k.len() + v.len()) as u64;
                true
            })
            .unwrap();
        stats
    }

    /// Root-to-leaves walk between two partitions, as an exchange does it.
    fn differing_segments(a: &Partition, b: &Partition) -> Vec<u32> {
        let mut parents = vec![0];
        let mut level = 0;
        loop {
            let ours = a.merkle_children(level, &parents).unwrap();
            let theirs = b.merkle_children(level, &parents).unwrap();
            let differing = merkle::differing_children(level, &parents, &ours, &theirs);
            if level == merkle::DEPTH || differing.is_empty() {
                return differing;
            }
            parents = differing;
            level += 1;
        }
    }

    #[derive(Clone, Debug)]
    enum Op {
        Put(u8, u8),
        Delete(u8),
        Merge(u8, u8),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => (0..24u8, any::<u8>()).prop_map(|(k, v)| Op::Put(k, v)),
            1 => (0..24u8).prop_map(Op::Delete),
            1 => (0..24u8, any::<u8>()).prop_map(|(k, v)| Op::Merge(k, v)),
        ]
    }

    fn apply_ops(p: &Partition, ops: &[Op]) {
        for op in ops {
            match *op {
                Op::Put(k, v) => {
                    let ctx = p.get(b"b", &[k]).unwrap().unwrap_or_default().clock;
                    put(p, &[k], ctx, Some(&[v])).unwrap();
                }
                Op::Delete(k) => {
                    let ctx = p.get(b"b", &[k]).unwrap().unwrap_or_default().clock;
                    put(p, &[k], ctx, None).unwrap();
                }
                Op::Merge(k, v) => {
                    let mut theirs = DvvSet::new();
                    theirs
                        .update(&VersionVector::new(), 99, Some(vec![v]), 0, 10)
                        .unwrap();
                    merge_stored(p, keys::storage_key(b"b", &[k]).unwrap(), theirs).unwrap();
                }
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(16))]
        #[test]
        fn incremental_tree_equals_rebuilt_tree_and_survives_reopen(
            ops in prop::collection::vec(op(), 0..40)
        ) {
            let dir = tempfile::tempdir().unwrap();
            let opts = PartitionOptions::default();
            let (tree, stats) = {
                let p = Partition::open(dir.path(), 0, 7, &opts).unwrap();
                apply_ops(&p, &ops);
                let tree = p.merkle_tree();
                prop_assert_eq!(&tree, &rebuilt(&p));
                prop_assert_eq!(p.stats().unwrap(), counted(&p));
                prop_assert_eq!(tree.is_allocated(), p.stats().unwrap().keys > 0);
                (tree, p.stats().unwrap())
            };
            // Reopened after a clean shutdown (from the checkpoint), then after a crash (by a
            // scan): the same tree and counts.
            let p = Partition::open(dir.path(), 0, 7, &opts).unwrap();
            prop_assert_eq!(p.store.open_report().from_checkpoint, 1);
            prop_assert_eq!(p.merkle_tree(), tree.clone());
            prop_assert_eq!(p.stats().unwrap(), stats);
            p.store.stop_without_checkpoint();
            drop(p);
            let p = Partition::open(dir.path(), 0, 7, &opts).unwrap();
            prop_assert_eq!(p.store.open_report().scanned, 1);
            prop_assert_eq!(p.merkle_tree(), tree);
            prop_assert_eq!(p.stats().unwrap(), stats);
        }
    }

    /// Writes `n` keys `from..from + n` to `p`, all queued at once (group commit).
    fn fill(p: &Partition, from: u32, n: u32) {
        let (tx, rx) = mpsc::channel();
        for i in from..from + n {
            let tx = tx.clone();
            p.update(
                b"b",
                &i.to_be_bytes(),
                VersionVector::new(),
                Some(vec![7; 32]),
                0,
                Box::new(move |r| {
                    let _ = tx.send(r.is_ok());
                }),
            );
        }
        drop(tx);
        assert_eq!(rx.iter().filter(|ok| *ok).count(), n as usize);
    }

    #[test]
    fn a_clean_shutdown_checkpoints_the_trees_and_a_crash_makes_the_next_open_scan() {
        let dir = tempfile::tempdir().unwrap();
        let opts = PartitionOptions::default();
        let all: Vec<u32> = (0..merkle::SEGMENTS).collect();
        let p = Partition::open(dir.path(), 0, 7, &opts).unwrap();
        assert_eq!(
            p.store.open_report().scanned,
            1,
            "a new partition is scanned"
        );
        fill(&p, 0, 5000);
        let (tree, stats) = (p.merkle_tree(), p.stats().unwrap());
        assert_eq!(stats.keys, 5000);
        assert_eq!(stats, counted(&p));
        p.shutdown();
        drop(p);

        // A clean restart loads the checkpoint and scans nothing.
        let p = Partition::open(dir.path(), 0, 7, &opts).unwrap();
        let report = p.store.open_report();
        assert_eq!((report.from_checkpoint, report.scanned), (1, 0));
        assert_eq!((p.merkle_tree(), p.stats().unwrap()), (tree, stats));
        assert_eq!(p.segment_entries(&all).unwrap().len(), 5000);

        // Opening took the checkpoint: writes after it, then a crash, leave none behind, and
        // the next open rebuilds the tree by a scan.
        fill(&p, 5000, 100);
        let (tree, stats) = (p.merkle_tree(), p.stats().unwrap());
        p.store.stop_without_checkpoint();
        drop(p);
        let p = Partition::open(dir.path(), 0, 7, &opts).unwrap();
        let report = p.store.open_report();
        assert_eq!(
            (report.from_checkpoint, report.scanned, report.keys_scanned),
            (0, 1, 5100)
        );
        assert_eq!((p.merkle_tree(), p.stats().unwrap()), (tree.clone(), stats));
        assert_eq!(tree, rebuilt(&p));
        p.shutdown();
        drop(p);

        // A damaged checkpoint is not trusted: the partition is scanned.
        crate::store::damage_checkpoint_for_test(dir.path(), 0, &[1, 2, 3]);
        let p = Partition::open(dir.path(), 0, 7, &opts).unwrap();
        assert_eq!(p.store.open_report().scanned, 1);
        assert_eq!((p.merkle_tree(), p.stats().unwrap()), (tree, stats));
    }

    #[test]
    fn a_partition_keeps_its_checkpoint_while_another_session_leaves_it_closed() {
        let dir = tempfile::tempdir().unwrap();
        let opts = PartitionOptions::default();
        let open = |ps: &[u32]| {
            let ids: Vec<(u32, Identity)> = ps.iter().map(|p| (*p, Identity::fixed(7))).collect();
            DataStore::open(dir.path(), &ids, &opts).unwrap()
        };
        let store = open(&[0, 1]);
        fill(&Partition::of(&store, 0).unwrap(), 0, 300);
        fill(&Partition::of(&store, 1).unwrap(), 0, 200);
        let tree0 = Partition::of(&store, 0).unwrap().merkle_tree();
        drop(store);
        // A session with partition 1 only, which crashes: partition 0's checkpoint stays
        // valid (nothing could write it), partition 1 is scanned next time.
        let store = open(&[1]);
        fill(&Partition::of(&store, 1).unwrap(), 200, 10);
        store.stop_without_checkpoint();
        drop(store);
        let store = open(&[0, 1]);
        let report = store.open_report();
        assert_eq!((report.from_checkpoint, report.scanned), (1, 1));
        assert_eq!(Partition::of(&store, 0).unwrap().merkle_tree(), tree0);
        assert_eq!(Partition::of(&store, 1).unwrap().len().unwrap(), 210);
        assert!(matches!(
            DataStore::open(dir.path(), &[(70_000, Identity::fixed(1))], &opts),
            Err(StorageError::InvalidArgument(_))
        ));
    }

    /// The clear of a partition runs in chunks of a bounded number of deletes, one per commit,
    /// and another partition's writes are answered between them. A chain of writes to
    /// partition 1, each queued by the answer of the one before, sees partition 0 shrink
    /// chunk by chunk.
    #[test]
    fn a_clear_runs_in_bounded_chunks_between_other_writes() {
        let dir = tempfile::tempdir().unwrap();
        let opts = PartitionOptions {
            clear_chunk_keys: 100,
            ..Default::default()
        };
        let store = DataStore::open(
            dir.path(),
            &[(0, Identity::fixed(7)), (1, Identity::fixed(8))],
            &opts,
        )
        .unwrap();
        let (p0, p1) = (
            Partition::of(&store, 0).unwrap(),
            Partition::of(&store, 1).unwrap(),
        );
        fill(&p0, 0, 1000);
        fill(&p1, 0, 10);
        let replica_before = p0.replica();
        let chunks_before = store.commit_stats().clear_chunks();

        // Hold the writer thread (inside a reply) while the clear and the first write of the
        // chain are queued, so that they start in the same commit.
        let (held_tx, held_rx) = mpsc::channel::<()>();
        let (release_tx, release_rx) = mpsc::channel::<()>();
        p1.update(
            b"b",
            b"hold",
            VersionVector::new(),
            Some(vec![1]),
            0,
            Box::new(move |r| {
                r.unwrap();
                held_tx.send(()).unwrap();
                let _ = release_rx.recv();
            }),
        );
        held_rx.recv().unwrap();
        let cleared = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (clear_tx, clear_rx) = mpsc::channel();
        let flag = cleared.clone();
        p0.clear(Box::new(move |r| {
            flag.store(true, std::sync::atomic::Ordering::SeqCst);
            let _ = clear_tx.send(r);
        }));
        let (seen_tx, seen_rx) = mpsc::channel();
        chain_write(p0.clone(), p1.clone(), 0, cleared.clone(), seen_tx);
        release_tx.send(()).unwrap();

        assert_eq!(clear_rx.recv().unwrap().unwrap(), 1000);
        let seen: Vec<u64> = seen_rx.iter().collect();
        let stats = store.commit_stats();
        let chunks = stats.clear_chunks() - chunks_before;
        assert!(
            chunks >= 10,
            "1000 keys in chunks of 100 took {chunks} commits"
        );
        assert!(stats.most_cleared_per_commit() <= 100);
        // Partition 1's writes were answered while partition 0 still held keys, at several
        // stages of the clear.
        let between: Vec<&u64> = seen.iter().filter(|&&n| n > 0 && n < 1000).collect();
        assert!(
            between.len() >= 5,
            "partition 0's key counts seen by partition 1's writes: {seen:?}"
        );
        assert!(
            seen.windows(2).all(|w| w[0] >= w[1] && w[0] - w[1] <= 100),
            "{seen:?}"
        );

        assert_eq!(p0.stats().unwrap(), PartitionStats::default());
        assert!(!p0.merkle_tree().is_allocated());
        assert_eq!(p0.get(b"b", &5u32.to_be_bytes()).unwrap(), None);
        assert_eq!(p1.len().unwrap(), 11 + seen.len() as u64);
        assert_eq!(p1.stats().unwrap(), counted(&p1));
        let fresh = p0.replica();
        assert_ne!(
            fresh, replica_before,
            "a cleared partition gets a fresh replica id"
        );
        // Joins the writer thread: the chain's replies, which hold handles, are done.
        store.shutdown();
        drop((p0, p1));
        drop(store);
        let p0 = Partition::open(dir.path(), 0, 7, &opts).unwrap();
        assert_eq!(p0.replica(), fresh, "the fresh id is durable");
        assert_eq!(p0.len().unwrap(), 0);
    }

    /// Writes key `i` to `p1` and, once it is answered, sends what partition `p0` holds then
    /// and queues key `i + 1`, until `cleared` is set.
    fn chain_write(
        p0: Arc<Partition>,
        p1: Arc<Partition>,
        i: u32,
        cleared: Arc<std::sync::atomic::AtomicBool>,
        seen: mpsc::Sender<u64>,
    ) {
        let next = p1.clone();
        p1.update(
            b"chain",
            &i.to_be_bytes(),
            VersionVector::new(),
            Some(vec![2; 16]),
            0,
            Box::new(move |r| {
                r.unwrap();
                let _ = seen.send(p0.len().unwrap());
                if !cleared.load(std::sync::atomic::Ordering::SeqCst) && i < 10_000 {
                    chain_write(p0, next, i + 1, cleared, seen);
                }
            }),
        );
    }

    /// A reply callback that drops the store's last handle runs on the writer thread, which
    /// cannot join itself: the store closes once that thread ends, without a panic.
    #[test]
    fn the_last_handle_may_be_dropped_by_a_reply() {
        let dir = tempfile::tempdir().unwrap();
        let opts = PartitionOptions::default();
        let p = Partition::open(dir.path(), 0, 7, &opts).unwrap();
        let (tx, rx) = mpsc::channel();
        let held = p.clone();
        p.update(
            b"b",
            b"k",
            VersionVector::new(),
            Some(b"v".to_vec()),
            0,
            Box::new(move |r| {
                let _ = tx.send(r.is_ok());
                drop(held);
            }),
        );
        drop(p);
        assert!(rx.recv().unwrap());
        // Poll (with a deadline) until the env is closed and can be opened again.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let p = loop {
            match Partition::open(dir.path(), 0, 7, &opts) {
                Ok(p) => break p,
                Err(e) if std::time::Instant::now() < deadline => {
                    assert!(e.to_string().contains("already open"), "{e}");
                    std::thread::yield_now();
                }
                Err(e) => panic!("the env was never closed: {e}"),
            }
        };
        assert!(p.get(b"b", b"k").unwrap().is_some());
        assert_eq!(
            p.store.open_report().scanned,
            1,
            "no checkpoint was written"
        );
    }

    #[test]
    fn a_shutdown_finishes_a_clear_under_way() {
        let dir = tempfile::tempdir().unwrap();
        let opts = PartitionOptions {
            clear_chunk_keys: 50,
            ..Default::default()
        };
        let p = Partition::open(dir.path(), 0, 7, &opts).unwrap();
        fill(&p, 0, 500);
        let (tx, rx) = mpsc::channel();
        p.clear(Box::new(move |r| {
            let _ = tx.send(r);
        }));
        p.shutdown();
        assert_eq!(rx.recv().unwrap().unwrap(), 500);
        let (tx, rx) = mpsc::channel();
        p.clear(Box::new(move |r| {
            let _ = tx.send(r);
        }));
        assert_eq!(rx.recv().unwrap().unwrap_err(), StorageError::Closed(0));
        drop(p);
        let p = Partition::open(dir.path(), 0, 7, &opts).unwrap();
        assert_eq!(p.len().unwrap(), 0);
        assert_eq!(p.store.open_report().from_checkpoint, 1);
        // Clearing an empty partition answers at once.
        let (tx, rx) = mpsc::channel();
        p.clear(Box::new(move |r| {
            let _ = tx.send(r);
        }));
        assert_eq!(rx.recv().unwrap().unwrap(), 0);
    }

    #[test]
    fn same_writes_in_another_order_give_the_same_root() {
        let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let opts = PartitionOptions::default();
        let a = Partition::open(da.path(), 0, 1, &opts).unwrap();
        let b = Partition::open(db.path(), 0, 2, &opts).unwrap();
        // Each key's state is made once, then merged into both in opposite orders.
        let states: Vec<(Vec<u8>, DvvSet)> = (0..200u32)
            .map(|i| {
                let mut d = DvvSet::new();
                d.update(
                    &VersionVector::new(),
                    5,
                    Some(i.to_le_bytes().to_vec()),
                    1,
                    10,
                )
                .unwrap();
                if i % 3 == 0 {
                    d.update(&d.clock.clone(), 6, None, 2, 10).unwrap();
                }
                (keys::storage_key(b"b", &i.to_be_bytes()).unwrap(), d)
            })
            .collect();
        for (k, d) in &states {
            merge_stored(&a, k.clone(), d.clone()).unwrap();
        }
        for (k, d) in states.iter().rev() {
            merge_stored(&b, k.clone(), d.clone()).unwrap();
        }
        assert_ne!(a.merkle_children(0, &[0]).unwrap(), vec![0]);
        assert_eq!(a.merkle_children(0, &[0]), b.merkle_children(0, &[0]));
        assert_eq!(a.merkle_tree(), b.merkle_tree());
        assert!(differing_segments(&a, &b).is_empty());
    }

    #[test]
    fn walk_finds_exactly_the_differing_segments_and_keys() {
        let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let opts = PartitionOptions::default();
        let a = Partition::open(da.path(), 0, 1, &opts).unwrap();
        let b = Partition::open(db.path(), 0, 2, &opts).unwrap();
        // Dots are unique: a value written elsewhere has another replica's dot.
        let state = |v: &[u8]| {
            let mut d = DvvSet::new();
            let replica = if v == b"y" { 6 } else { 5 };
            d.update(&VersionVector::new(), replica, Some(v.to_vec()), 1, 10)
                .unwrap();
            d
        };
        for i in 0..2000u32 {
            let k = keys::storage_key(b"b", &i.to_be_bytes()).unwrap();
            merge_stored(&a, k.clone(), state(b"same")).unwrap();
            merge_stored(&b, k, state(b"same")).unwrap();
        }
        // k = 6 differences: 2 keys only in a, 2 only in b, 2 with other values.
        let mut expected = Vec::new();
        for (n, i) in (5000..5006u32).enumerate() {
            let k = keys::storage_key(b"b", &i.to_be_bytes()).unwrap();
            match n {
                0 | 1 => merge_stored(&a, k.clone(), state(b"x")).unwrap(),
                2 | 3 => merge_stored(&b, k.clone(), state(b"x")).unwrap(),
                _ => {
                    merge_stored(&a, k.clone(), state(b"x")).unwrap();
                    merge_stored(&b, k.clone(), state(b"y")).unwrap()
                }
            };
            expected.push(k);
        }
        expected.sort();
        let mut expected_segments: Vec<u32> = expected
            .iter()
            .map(|k| merkle::segment_of(merkle::key_hash(k)))
            .collect();
        expected_segments.sort();
        expected_segments.dedup();

        let mut segments = differing_segments(&a, &b);
        segments.sort();
        assert_eq!(segments, expected_segments);
        let found = merkle::diff_entries(
            &a.segment_entries(&segments).unwrap(),
            &b.segment_entries(&segments).unwrap(),
        );
        assert_eq!(found, expected);

        // Repairing through merge_stored converges the trees.
        for k in &found {
            if let Some(d) = b.get_stored(k).unwrap() {
                merge_stored(&a, k.clone(), d).unwrap();
            }
            if let Some(d) = a.get_stored(k).unwrap() {
                merge_stored(&b, k.clone(), d).unwrap();
            }
        }
        assert!(differing_segments(&a, &b).is_empty());
    }

    /// Every chunk of partition `p` from `after` on, with budget `max_bytes`.
    fn chunks(p: &Partition, max_bytes: usize) -> Vec<ScanChunk> {
        let mut out = Vec::new();
        let mut after: Option<Vec<u8>> = None;
        loop {
            let chunk = p.scan_chunk(after.as_deref(), max_bytes).unwrap();
            after = chunk.next.clone();
            out.push(chunk);
            if after.is_none() {
                return out;
            }
            assert!(out.len() < 10_000, "the scan does not end");
        }
    }

    #[test]
    fn scan_chunks_cover_a_partition_in_key_order_within_their_budget() {
        let dir = tempfile::tempdir().unwrap();
        let opts = PartitionOptions::default();
        let store = DataStore::open(
            dir.path(),
            &[(0, Identity::fixed(7)), (1, Identity::fixed(8))],
            &opts,
        )
        .unwrap();
        let (p0, p1) = (
            Partition::of(&store, 0).unwrap(),
            Partition::of(&store, 1).unwrap(),
        );
        // An empty partition is one empty chunk.
        let empty = p0.scan_chunk(None, 1024).unwrap();
        assert_eq!(empty, ScanChunk::default());
        fill(&p0, 0, 1000);
        fill(&p1, 0, 10);

        let all = chunks(&p0, 4096);
        assert!(all.len() > 10, "{} chunks", all.len());
        let keys: Vec<Vec<u8>> = all
            .iter()
            .flat_map(|c| c.entries.iter().map(|(k, _)| k.clone()))
            .collect();
        assert_eq!(keys.len(), 1000, "partition 1's keys are not in it");
        // In the partition's key order: by segment, then stored key.
        let order = |k: &Vec<u8>| (merkle::segment_of(merkle::key_hash(k)), k.clone());
        assert!(keys.windows(2).all(|w| order(&w[0]) < order(&w[1])));
        for c in &all {
            assert!(c.bytes <= 4096 && !c.entries.is_empty());
            for (k, d) in &c.entries {
                assert_eq!(&p0.get_stored(k).unwrap().unwrap(), d);
            }
        }
        assert_eq!(all.last().unwrap().next, None);

        // A record over the budget still comes, alone.
        let one = p0.scan_chunk(None, 1).unwrap();
        assert_eq!(one.entries.len(), 1);
        assert!(one.next.is_some());

        // A position taken on one replica resumes a scan of another that holds other keys:
        // it gives exactly that replica's keys after the position.
        let db = tempfile::tempdir().unwrap();
        let other = Partition::open(db.path(), 0, 9, &opts).unwrap();
        fill(&other, 500, 1000);
        let at = all[all.len() / 2].next.clone().unwrap();
        let rest: Vec<Vec<u8>> = chunks_from(&other, Some(at.clone()), 4096);
        let mut expected: Vec<Vec<u8>> = (500..1500u32)
            .map(|i| keys::storage_key(b"b", &i.to_be_bytes()).unwrap())
            .filter(|k| {
                let mut pos = (merkle::segment_of(merkle::key_hash(k)) as u16)
                    .to_be_bytes()
                    .to_vec();
                pos.extend_from_slice(k);
                pos > at
            })
            .collect();
        expected.sort_by_key(order);
        assert!(!expected.is_empty() && expected.len() < 1000);
        assert_eq!(rest, expected);
    }

    /// The stored keys of every chunk of `p` after `after`.
    fn chunks_from(p: &Partition, mut after: Option<Vec<u8>>, max_bytes: usize) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        loop {
            let chunk = p.scan_chunk(after.as_deref(), max_bytes).unwrap();
            out.extend(chunk.entries.into_iter().map(|(k, _)| k));
            after = chunk.next;
            if after.is_none() {
                return out;
            }
        }
    }

    #[test]
    fn stored_key_calls_validate() {
        let dir = tempfile::tempdir().unwrap();
        let p = Partition::open(dir.path(), 0, 7, &PartitionOptions::default()).unwrap();
        assert!(matches!(
            p.get_stored(b"\x05ab"),
            Err(StorageError::InvalidArgument(_))
        ));
        assert!(matches!(
            p.get_stored(&[0, 1]),
            Err(StorageError::EmptyBucket { .. })
        ));
        assert!(matches!(
            merge_stored(&p, vec![], DvvSet::new()),
            Err(StorageError::InvalidArgument(_))
        ));
        assert!(matches!(
            purge(&p, vec![(vec![1, b'b'], 0)]),
            Err(StorageError::InvalidArgument(_))
        ));
        assert!(matches!(
            p.segment_entries(&[4096]),
            Err(StorageError::InvalidArgument(_))
        ));
        assert!(matches!(
            p.merkle_children(4, &[0]),
            Err(StorageError::InvalidArgument(_))
        ));
        assert_eq!(p.get_stored(b"\x01bk").unwrap(), None);
    }

    #[test]
    fn tombstones_are_listed_and_purged_only_while_unchanged() {
        let dir = tempfile::tempdir().unwrap();
        let p = Partition::open(dir.path(), 0, 7, &PartitionOptions::default()).unwrap();
        let write = |key: &[u8], value: Option<&[u8]>, ts: u64| {
            let ctx = p.get(b"b", key).unwrap().unwrap_or_default().clock;
            let (tx, rx) = sync_channel(1);
            p.update(
                b"b",
                key,
                ctx,
                value.map(<[u8]>::to_vec),
                ts,
                Box::new(move |r| {
                    let _ = tx.send(r);
                }),
            );
            rx.recv().unwrap().unwrap()
        };
        let empty = p.merkle_tree();
        write(b"live", Some(b"v"), 10);
        let with_live = p.merkle_tree();
        for k in [b"old1", b"old2", b"new1"] {
            write(k, Some(b"v"), 10);
        }
        write(b"old1", None, 100);
        write(b"old2", None, 100);
        write(b"new1", None, 500);

        let candidates = p.tombstones(PurgeBefore::both(200), 10).unwrap();
        // Listed in the partition's key order (segment, then stored key): sorted here.
        let keys_of = |c: &[(Vec<u8>, u64)]| {
            let mut keys = c.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>();
            keys.sort();
            keys
        };
        assert_eq!(
            keys_of(&candidates),
            vec![
                keys::storage_key(b"b", b"old1").unwrap(),
                keys::storage_key(b"b", b"old2").unwrap()
            ]
        );
        assert_eq!(p.tombstones(PurgeBefore::both(200), 1).unwrap().len(), 1);
        assert_eq!(p.tombstones(PurgeBefore::both(1000), 10).unwrap().len(), 3);
        // The tombstones' entry hashes are the ones the segment scans compute.
        let all: Vec<u32> = (0..merkle::SEGMENTS).collect();
        let entries = p.segment_entries(&all).unwrap();
        for (k, h) in &candidates {
            assert!(entries.iter().any(|(_, ek, eh)| ek == k && eh == h));
        }

        // old2 is written again after it was listed: its entry hash changed, it stays.
        write(b"old2", Some(b"back"), 300);
        assert_eq!(purge(&p, candidates.clone()).unwrap(), 1);
        assert_eq!(p.get(b"b", b"old1").unwrap(), None);
        assert!(p.get(b"b", b"old2").unwrap().is_some());
        // Purging again finds nothing.
        assert_eq!(purge(&p, candidates).unwrap(), 0);
        assert_eq!(p.merkle_tree(), rebuilt(&p));

        // A deleted-then-purged key leaves the tree as if it was never written.
        write(b"old2", None, 300);
        let rest = p.tombstones(PurgeBefore::both(u64::MAX), 10).unwrap();
        assert_eq!(purge(&p, rest).unwrap(), 2);
        assert_eq!(p.merkle_tree(), with_live);
        assert_ne!(with_live, empty);
        assert_eq!(p.len().unwrap(), 1);
        assert_eq!(p.stats().unwrap(), counted(&p));
        // Purging the last key frees the leaves.
        write(b"live", None, 300);
        let last = p.tombstones(PurgeBefore::both(u64::MAX), 10).unwrap();
        assert_eq!(purge(&p, last).unwrap(), 1);
        assert_eq!(p.stats().unwrap(), PartitionStats::default());
        assert!(!p.merkle_tree().is_allocated());
    }

    /// Values with a time to live are purge candidates once expired before the cutoff, are
    /// purged only while every sibling reads as missing on the purging node's clock, and a
    /// copy merged back from a replica that missed the purge is still expired.
    #[test]
    fn expired_values_are_listed_purged_and_stay_expired_when_merged_back() {
        let dir = tempfile::tempdir().unwrap();
        let p = Partition::open(dir.path(), 0, 7, &PartitionOptions::default()).unwrap();
        let write = |key: &[u8], expires_at: Option<u64>| {
            let (tx, rx) = sync_channel(1);
            p.update_with(
                b"b",
                key,
                VersionVector::new(),
                Some(vec![1; 100 << 10]),
                Codec::None,
                100,
                expires_at,
                Condition::None,
                Box::new(move |r| {
                    let _ = tx.send(r);
                }),
            );
            rx.recv().unwrap().unwrap()
        };
        write(b"soon", Some(1_000));
        write(b"later", Some(5_000));
        write(b"forever", None);
        let stored = p.get(b"b", b"soon").unwrap().unwrap();
        assert_eq!(stored.siblings[0].expires_at_ms, Some(1_000));
        assert_eq!(stored.decoded_values(1 << 20, 999).unwrap().len(), 1);
        assert!(stored.decoded_values(1 << 20, 1_000).unwrap().is_empty());

        let soon = keys::storage_key(b"b", b"soon").unwrap();
        let listed = |expired_ms| {
            let mut keys: Vec<Vec<u8>> = p
                .tombstones(
                    PurgeBefore {
                        deleted_ms: u64::MAX,
                        expired_ms,
                    },
                    10,
                )
                .unwrap()
                .into_iter()
                .map(|(k, _)| k)
                .collect();
            keys.sort();
            keys
        };
        assert!(listed(1_000).is_empty());
        assert_eq!(listed(1_001), vec![soon.clone()]);
        assert_eq!(
            listed(u64::MAX).len(),
            2,
            "a value without expiry is never listed"
        );
        // A tombstone cutoff alone does not make an expiring value a candidate.
        assert!(p
            .tombstones(
                PurgeBefore {
                    deleted_ms: u64::MAX,
                    expired_ms: 0
                },
                10
            )
            .unwrap()
            .is_empty());

        let candidates = p.tombstones(PurgeBefore::both(u64::MAX), 10).unwrap();
        // A node whose clock says "later" has not expired yet keeps it.
        assert_eq!(purge_at(&p, candidates.clone(), 1_500).unwrap(), 1);
        assert_eq!(p.get(b"b", b"soon").unwrap(), None);
        assert!(p.get(b"b", b"later").unwrap().is_some());
        assert_eq!(purge_at(&p, candidates, 5_000).unwrap(), 1);
        assert_eq!(p.len().unwrap(), 1);
        assert_eq!(p.merkle_tree(), rebuilt(&p));
        assert_eq!(p.stats().unwrap(), counted(&p));

        // A replica that missed the purge sends its copy back: stored again, still expired.
        merge_stored(&p, soon.clone(), stored.clone()).unwrap();
        let back = p.get_stored(&soon).unwrap().unwrap();
        assert!(back.is_absent(1_000));
        assert!(back.decoded_values(1 << 20, 2_000).unwrap().is_empty());
        // And it is a candidate again.
        assert_eq!(listed(1_001), vec![soon]);
    }
}
