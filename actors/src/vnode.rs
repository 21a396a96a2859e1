//! The VNode actor: the only door to one partition.
//!
//! Every operation on a partition's data goes through its vnode: client reads and writes,
//! replication merges, the batched merges and reads of [`crate::batch`], and the anti-entropy,
//! hinted-handoff and tombstone-purge operations of [`crate::rpc`] and [`crate::repair`]. So
//! while a vnode restarts, every operation on its partition waits for the successor (up to
//! its caller's time limit, `replica::vnode_call`) instead of going around it.
//!
//! How each message is served, so that the actor's mailbox keeps moving:
//!
//! - **Inline on the actor**: [`VNodeMsg::Get`] (one LMDB read transaction from the page cache
//!   takes microseconds and never waits for the writer; handing it to another thread would
//!   cost more than the read), and [`VNodeMsg::MerkleChildren`] and [`VNodeMsg::Stats`]
//!   (in-memory state kept by the writer, no LMDB access).
//! - **On a blocking thread** ([`tokio::task::spawn_blocking`], the reply port moved into the
//!   closure): the operations that scan or touch many keys, [`VNodeMsg::SegmentEntries`],
//!   [`VNodeMsg::Fetch`], [`VNodeMsg::CheckEntries`], [`VNodeMsg::Tombstones`] and
//!   [`VNodeMsg::ScanChunk`] (partition transfer, [`crate::transfer`]). The vnode
//!   goes on serving while they run and no tokio worker blocks on a scan.
//! - **On the partition's writer thread**, with the reply in the writer's callback:
//!   [`VNodeMsg::Update`], [`VNodeMsg::Merge`], [`VNodeMsg::MergeMany`] and
//!   [`VNodeMsg::Purge`]. The vnode never waits for a commit, and the writes handed over
//!   while one commit runs land together in the next (group commit).
//!
//! The partition (its LMDB env and writer) is owned by the
//! [`VNodeSupervisor`](crate::vnode_supervisor::VNodeSupervisor), so a restarted vnode serves
//! the same env. Work already handed to a blocking thread or the writer finishes and is
//! answered even if the vnode dies meanwhile.

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use ractor_cluster::RactorMessage;
use ringkv_storage::paxos::{AcceptorState, PaxosAnswer, PaxosStep};
use ringkv_storage::{
    Condition, DvvSet, Partition, PartitionStats, PurgeBefore, ScanChunk, StorageError,
    VersionVector,
};
use serde_bytes::ByteBuf;
use std::sync::{Arc, Mutex};

/// Where a vnode's answer goes: the answer, or the storage error that stopped it.
pub type Reply<T> = RpcReplyPort<Result<T, StorageError>>;

/// Messages of a vnode.
///
/// "Stored key" means a key as the partition stores it, `[bucket length][bucket][key]`
/// (`ringkv_storage::keys::storage_key`); an ill-formed one is answered
/// [`StorageError::InvalidArgument`] or [`StorageError::Corrupt`].
#[derive(RactorMessage)]
pub enum VNodeMsg {
    /// Read a key's state; `None` if never written here.
    Get {
        /// Bucket name, 1 to 64 bytes.
        bucket: Vec<u8>,
        /// Key, 1 to 442 bytes.
        key: Vec<u8>,
        /// Where the state goes.
        reply: Reply<Option<DvvSet>>,
    },
    /// A client write coordinated by this vnode: `value` (`None` deletes) replaces what
    /// `context` covers. The reply comes once the write is durable.
    Update {
        /// Bucket name.
        bucket: Vec<u8>,
        /// Key.
        key: Vec<u8>,
        /// Causal context the client read (empty: a blind write).
        context: VersionVector,
        /// New value (stored bytes, encoded by `codec`), or `None` for a tombstone.
        value: Option<Vec<u8>>,
        /// How `value` is encoded ([`ringkv_storage::codec`]).
        codec: ringkv_storage::Codec,
        /// Coordinator's wall clock, ms since the Unix epoch.
        timestamp_ms: u64,
        /// When the value expires, ms since the Unix epoch on the coordinator's clock
        /// (`timestamp_ms` plus the client's time to live); `None`: never.
        expires_at_ms: Option<u64>,
        /// Applied only if this holds on the key's current state (checked by the writer).
        condition: Condition,
        /// Where the key's new state goes.
        reply: Reply<DvvSet>,
    },
    /// Merge another replica's state of a key (replication, read repair). Replies with the
    /// merged state once durable.
    Merge {
        /// Bucket name.
        bucket: Vec<u8>,
        /// Key.
        key: Vec<u8>,
        /// The other replica's state.
        record: DvvSet,
        /// Refused if this replica holds a live version `record` does not cover (the
        /// replication of a conditional write); [`Condition::None`] otherwise.
        condition: Condition,
        /// Where the merged state goes.
        reply: Reply<DvvSet>,
    },
    /// Merge other replicas' states of stored keys (anti-entropy, hinted handoff): all of
    /// them are handed to the writer at once, so they share a group commit. Replies, once
    /// every merge is durable, with how many keys were written. A key whose merge would pass
    /// `max-record-bytes` (siblings made concurrently on two replicas) is logged, left as it
    /// is here and not counted: no retry can make it fit.
    ///
    /// # Errors
    /// The first other storage error of any merge (the others stay merged).
    MergeMany {
        /// Stored keys and the states to merge into them.
        entries: Vec<(Vec<u8>, DvvSet)>,
        /// Where the count goes.
        reply: Reply<usize>,
    },
    /// Anti-entropy: hashes of the partition's Merkle tree (`ringkv_storage::merkle`). For
    /// `level` 0 (`parents` = `[0]`) the root; otherwise the 16 children at `level` of each
    /// parent at `level - 1`, concatenated (`16 * parents.len()` hashes).
    ///
    /// # Errors
    /// [`StorageError::InvalidArgument`] for a level over 3 or a parent out of range.
    MerkleChildren {
        /// Tree level, 0 (root) to 3 (segments).
        level: u32,
        /// Parent indices at `level - 1`.
        parents: Vec<u32>,
        /// Where the hashes go.
        reply: Reply<Vec<u64>>,
    },
    /// Anti-entropy: `(segment, stored key, entry hash)` of every key of the segments, segment
    /// by segment in the order given. One range scan per segment, on a blocking thread.
    ///
    /// # Errors
    /// [`StorageError::InvalidArgument`] for a segment of 4096 or more.
    SegmentEntries {
        /// Segment (leaf) indices, `0..4096`.
        segments: Vec<u32>,
        /// Where the entries go.
        reply: Reply<Vec<(u32, Vec<u8>, u64)>>,
    },
    /// Anti-entropy: the states of stored keys (`None` where absent), in order, stopping
    /// before the answer would pass `budget` bytes (see `replica::fetch_bounded`):
    /// the caller asks again for the rest. Read on a blocking thread.
    Fetch {
        /// Stored keys.
        keys: Vec<ByteBuf>,
        /// Most bytes of records in the answer (`max-record-bytes` for an answer that
        /// travels; `usize::MAX` for none).
        budget: usize,
        /// Where the states go.
        reply: Reply<Vec<Option<DvvSet>>>,
    },
    /// Tombstone purge, step 1: for each `(stored key, entry hash)`, whether the key holds
    /// exactly that entry hash here. Read on a blocking thread.
    CheckEntries {
        /// Stored keys and entry hashes.
        entries: Vec<(ByteBuf, u64)>,
        /// One answer per entry, in order.
        reply: Reply<Vec<bool>>,
    },
    /// Large-value garbage collection: the stored keys of up to `limit` chunk and head
    /// records ([`Partition::large_value_keys`]). Scans the partition's keys on a blocking
    /// thread.
    LargeValueKeys {
        /// Most keys listed.
        limit: usize,
        /// Where the keys go.
        reply: Reply<Vec<Vec<u8>>>,
    },
    /// Tombstone purge: up to `limit` keys whose every sibling is a tombstone written before
    /// `before.deleted_ms` or a value expired before `before.expired_ms`, as `(stored key,
    /// entry hash)` ([`Partition::tombstones`]). Scans the partition (metadata only) on a
    /// blocking thread.
    Tombstones {
        /// The cutoffs, ms since the Unix epoch.
        before: PurgeBefore,
        /// Most keys listed.
        limit: usize,
        /// Where the candidates go.
        reply: Reply<Vec<(Vec<u8>, u64)>>,
    },
    /// Tombstone purge, step 2: delete these tombstones and expired values if their entry
    /// hash is still the given one and they read as missing on this node's clock
    /// ([`Partition::purge_tombstones`]). Replies with how many were deleted, once durable.
    ///
    /// # Errors
    /// [`StorageError::InvalidArgument`] if a key is not a stored key (nothing is deleted).
    Purge {
        /// Stored keys and the entry hashes every replica was seen to hold.
        entries: Vec<(Vec<u8>, u64)>,
        /// Where the count goes.
        reply: Reply<usize>,
    },
    /// Partition transfer: the partition's records in key order strictly after position
    /// `after` (`None`: from the start), at most `max_bytes` of them unless one record alone
    /// is larger ([`Partition::scan_chunk`]). Read on a blocking thread.
    ScanChunk {
        /// Resume position (`[segment: u16 BE][stored key]`, a previous chunk's `next`).
        after: Option<Vec<u8>>,
        /// Budget of the chunk, bytes (LMDB key plus record bytes of each entry).
        max_bytes: usize,
        /// Where the chunk goes.
        reply: Reply<ScanChunk>,
    },
    /// Keys and bytes the partition holds ([`Partition::stats`]).
    Stats {
        /// Where the counts go.
        reply: Reply<PartitionStats>,
    },
    /// Drops every key of the partition ([`Partition::clear`], in chunks that never hold
    /// other partitions' writes for long), when a layout transition moved it away from this
    /// node. Replies with how many keys were deleted, once durable.
    Clear {
        /// Where the count goes.
        reply: Reply<usize>,
    },
    /// A Paxos step on a strong key's acceptor state ([`ringkv_storage::paxos`]), applied
    /// by the writer thread; the reply comes once it is durable.
    PaxosStep {
        /// Stored key.
        key: Vec<u8>,
        /// The step.
        step: PaxosStep,
        /// Where the acceptor's answer goes.
        reply: Reply<PaxosAnswer>,
    },
    /// A strong key's acceptor state as last committed (`None`: never touched here).
    PaxosState {
        /// Stored key.
        key: Vec<u8>,
        /// Where the state goes.
        reply: Reply<Option<AcceptorState>>,
    },
    /// Up to `max` stored keys with an acceptor state, strictly after `after`.
    PaxosKeys {
        /// Last key of the previous page.
        after: Option<Vec<u8>>,
        /// Most keys.
        max: usize,
        /// Where the keys go.
        reply: Reply<Vec<Vec<u8>>>,
    },
    /// Fault injection: the vnode panics while handling this message, so that supervision
    /// can be tested. Never sent by ringkv itself.
    InjectPanic,
}

/// The vnode actor. Arguments: the partition it serves.
pub struct VNode;

impl Actor for VNode {
    type Msg = VNodeMsg;
    type State = Arc<Partition>;
    type Arguments = Arc<Partition>;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        partition: Arc<Partition>,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(partition)
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        partition: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            VNodeMsg::Get { bucket, key, reply } => {
                let _ = reply.send(partition.get(&bucket, &key));
            }
            VNodeMsg::Update {
                bucket,
                key,
                context,
                value,
                codec,
                timestamp_ms,
                expires_at_ms,
                condition,
                reply,
            } => partition.update_with(
                &bucket,
                &key,
                context,
                value,
                codec,
                timestamp_ms,
                expires_at_ms,
                condition,
                Box::new(move |r| {
                    let _ = reply.send(r);
                }),
            ),
            VNodeMsg::Merge {
                bucket,
                key,
                record,
                condition,
                reply,
            } => partition.merge_if(
                &bucket,
                &key,
                record,
                condition,
                Box::new(move |r| {
                    let _ = reply.send(r);
                }),
            ),
            VNodeMsg::MergeMany { entries, reply } => merge_many(partition, entries, reply),
            VNodeMsg::MerkleChildren {
                level,
                parents,
                reply,
            } => {
                let _ = reply.send(partition.merkle_children(level, &parents));
            }
            VNodeMsg::SegmentEntries { segments, reply } => scan(partition, reply, move |part| {
                part.segment_entries(&segments)
            }),
            VNodeMsg::Fetch {
                keys,
                budget,
                reply,
            } => scan(partition, reply, move |part| {
                crate::replica::fetch_bounded(part, &keys, budget)
            }),
            VNodeMsg::CheckEntries { entries, reply } => scan(partition, reply, move |part| {
                entries
                    .iter()
                    .map(|(k, h)| Ok(crate::replica::entry_hash_of(part, k)? == Some(*h)))
                    .collect()
            }),
            VNodeMsg::LargeValueKeys { limit, reply } => {
                scan(partition, reply, move |part| part.large_value_keys(limit))
            }
            VNodeMsg::Tombstones {
                before,
                limit,
                reply,
            } => scan(partition, reply, move |part| part.tombstones(before, limit)),
            VNodeMsg::ScanChunk {
                after,
                max_bytes,
                reply,
            } => scan(partition, reply, move |part| {
                part.scan_chunk(after.as_deref(), max_bytes)
            }),
            VNodeMsg::Purge { entries, reply } => partition.purge_tombstones(
                entries,
                crate::coordinator::now_ms(),
                Box::new(move |r| {
                    let _ = reply.send(r);
                }),
            ),
            VNodeMsg::Stats { reply } => {
                let _ = reply.send(partition.stats());
            }
            VNodeMsg::Clear { reply } => partition.clear(Box::new(move |r| {
                let _ = reply.send(r);
            })),
            VNodeMsg::PaxosStep { key, step, reply } => partition.paxos(
                key,
                step,
                Box::new(move |r| {
                    let _ = reply.send(r);
                }),
            ),
            VNodeMsg::PaxosState { key, reply } => {
                let _ = reply.send(partition.paxos_state(&key));
            }
            VNodeMsg::PaxosKeys { after, max, reply } => scan(partition, reply, move |part| {
                part.paxos_keys(after.as_deref(), max)
            }),
            VNodeMsg::InjectPanic => {
                panic!("vnode {}: injected panic", partition.id())
            }
        }
        Ok(())
    }
}

/// Runs the read `f` on a blocking thread and sends its result to `reply` from there. A panic
/// in `f` is answered [`StorageError::Io`] (the vnode is not involved any more).
fn scan<T: Send + 'static>(
    partition: &Arc<Partition>,
    reply: Reply<T>,
    f: impl FnOnce(&Partition) -> Result<T, StorageError> + Send + 'static,
) {
    let part = partition.clone();
    tokio::task::spawn_blocking(move || {
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(&part)))
            .unwrap_or_else(|_| Err(StorageError::Io("a storage scan panicked".into())));
        let _ = reply.send(r);
    });
}

/// Hands every merge of `entries` to the writer, then answers `reply` from the callback of
/// the last one to finish (see [`VNodeMsg::MergeMany`]).
fn merge_many(partition: &Arc<Partition>, entries: Vec<(Vec<u8>, DvvSet)>, reply: Reply<usize>) {
    struct Tally {
        left: usize,
        merged: usize,
        error: Option<StorageError>,
        reply: Option<Reply<usize>>,
    }
    if entries.is_empty() {
        let _ = reply.send(Ok(0));
        return;
    }
    let id = partition.id();
    let tally = Arc::new(Mutex::new(Tally {
        left: entries.len(),
        merged: 0,
        error: None,
        reply: Some(reply),
    }));
    for (key, record) in entries {
        let tally = tally.clone();
        partition.merge_stored(
            key,
            record,
            Box::new(move |r| {
                let mut t = tally.lock().unwrap_or_else(|p| p.into_inner());
                match r {
                    Ok(_) => t.merged += 1,
                    Err(e @ StorageError::RecordTooLarge { .. }) => {
                        tracing::warn!(partition = id, error = %e, "cannot merge a key: its replicas hold siblings that together pass the record limit");
                    }
                    Err(e) => {
                        t.error.get_or_insert(e);
                    }
                }
                t.left -= 1;
                if t.left == 0 {
                    let answer = match t.error.take() {
                        Some(e) => Err(e),
                        None => Ok(t.merged),
                    };
                    if let Some(reply) = t.reply.take() {
                        let _ = reply.send(answer);
                    }
                }
            }),
        );
    }
}
