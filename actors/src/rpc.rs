//! Replica operations as typed calls: one request type per operation, bound to its answer type.
//!
//! Each operation on a replica (a vnode read or write, a hint, a Merkle tree exchange step) is a
//! struct implementing [`Rpc`], whose [`Rpc::Response`] names what the replica answers, as
//! Garage's `impl Rpc for TableRpc { type Response = ... }` does. A caller writes
//! `transport.call(node, Get { .. }, timeout)` and gets a `Result<Option<DvvSet>, ReplicaError>`:
//! asking for another answer type does not compile.
//!
//! ```no_run
//! # async fn right(peers: ringkv_actors::replica::Peers) -> Result<(), ringkv_actors::rpc::ReplicaError> {
//! use ringkv_actors::rpc::{Get, ReplicaTransport};
//! use serde_bytes::ByteBuf;
//! let get = Get { partition: 0, bucket: ByteBuf::from(b"b".to_vec()), key: ByteBuf::from(b"k".to_vec()) };
//! let state: Option<ringkv_storage::DvvSet> = peers.call("n2", get, std::time::Duration::from_secs(1)).await?;
//! # Ok(())
//! # }
//! ```
//!
//! ```compile_fail,E0308
//! # async fn wrong(peers: ringkv_actors::replica::Peers) {
//! use ringkv_actors::rpc::{Get, ReplicaTransport};
//! use serde_bytes::ByteBuf;
//! let get = Get { partition: 0, bucket: ByteBuf::from(b"b".to_vec()), key: ByteBuf::from(b"k".to_vec()) };
//! // A Get answers Option<DvvSet>, not a count.
//! let n: Result<usize, _> = peers.call("n2", get, std::time::Duration::from_secs(1)).await;
//! # }
//! ```
//!
//! # The wire
//!
//! Between nodes a request travels as one [`ReplicaRequest`] (an enum that only dispatches:
//! each variant holds one request struct) inside an [`Envelope`] naming the sender, encoded
//! as a version byte and named msgpack ([`crate::wire`]). A variant holding a struct encodes
//! exactly as the struct variant of the same name and fields did before, so the format is
//! unchanged. The answer is `Result<R::Response, ReplicaFailure>`, encoded the same way. A frame
//! that does not decode is answered [`ReplicaFailure::Malformed`] (never a panic).
//!
//! # Transports
//!
//! [`ReplicaTransport`] is how the coordinator, hinted handoff and anti-entropy reach replicas:
//! [`crate::replica::Peers`] over ractor_cluster for a running node (calls to the node itself
//! go straight to its vnode or hint store, never encoded), and [`crate::sim::SimNetwork`], a
//! simulated network of in-process nodes with real storage on which tests cut, delay, pause
//! and drop.

use crate::replica::{self, ReplicaContext};
use crate::vnode::VNodeMsg;
use ringkv_storage::{Condition, DvvSet, Hint, PartitionStats, StorageError, VersionVector};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;

mod strong;
pub use strong::{Fenced, HoldsBucket, Paxos, PaxosKeys, PaxosRead, StrongRequest};

/// One replica operation: a request type bound to the type its replica answers.
///
/// The bounds make every request cloneable (a vnode call is retried after a vnode restart) and
/// sendable across tasks; `serve` runs the request on the node that receives it.
pub trait Rpc: Serialize + DeserializeOwned + Clone + Send + Sync + 'static {
    /// What the replica answers when the operation succeeds.
    type Response: Serialize + DeserializeOwned + Send + 'static;

    /// Whether calls to another node may share one cluster message with other calls to it
    /// ([`crate::batch`]): the small, frequent operations of every request (merges, reads).
    const BATCHED: bool = false;

    /// The wire form of the request (the [`ReplicaRequest`] variant that holds it).
    fn into_request(self) -> ReplicaRequest;

    /// Runs the request on this node: operations on a partition go to the partition's vnode
    /// (waiting up to `timeout` for one that is restarting), hint operations to the hint store.
    fn serve(
        self,
        ctx: &Arc<ReplicaContext>,
        timeout: Duration,
    ) -> impl Future<Output = Result<Self::Response, ReplicaFailure>> + Send;
}

/// Read a replica's state of a key: `None` if it was never written there.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Get {
    /// Partition of the key.
    pub partition: u32,
    /// Bucket.
    pub bucket: ByteBuf,
    /// Key.
    pub key: ByteBuf,
}

impl Rpc for Get {
    const BATCHED: bool = true;
    type Response = Option<DvvSet>;

    fn into_request(self) -> ReplicaRequest {
        ReplicaRequest::Get(self)
    }

    async fn serve(
        self,
        ctx: &Arc<ReplicaContext>,
        timeout: Duration,
    ) -> Result<Option<DvvSet>, ReplicaFailure> {
        replica::vnode_call(&ctx.directory, self.partition, timeout, |reply| {
            VNodeMsg::Get {
                bucket: self.bucket.to_vec(),
                key: self.key.to_vec(),
                reply,
            }
        })
        .await
    }
}

/// Coordinate a client write on this replica: it makes the new dot and stores the record
/// durably; the answer is the key's state after the write.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Update {
    /// Partition of the key.
    pub partition: u32,
    /// Bucket.
    pub bucket: ByteBuf,
    /// Key.
    pub key: ByteBuf,
    /// The client's causal context.
    pub context: VersionVector,
    /// New value (stored bytes, encoded by `codec`), or `None` for a tombstone.
    pub value: Option<ByteBuf>,
    /// Coordinator's wall clock, ms since the Unix epoch.
    pub timestamp_ms: u64,
    /// The client's condition, checked by the replica's writer against the key's current
    /// state before the write applies ([`Condition::check_update`]); a failed condition is
    /// answered [`StorageError::ConditionFailed`]. Absent in encodings of older nodes: none.
    #[serde(default)]
    pub condition: Condition,
    /// How `value` is encoded ([`ringkv_storage::codec`]); raw when absent (senders that
    /// predate compression).
    #[serde(default, skip_serializing_if = "ringkv_storage::Codec::is_none")]
    pub codec: ringkv_storage::Codec,
    /// When the value expires, ms since the Unix epoch on the coordinator's clock
    /// (`timestamp_ms` plus the client's time to live; [`ringkv_storage::Sibling::expires_at_ms`]).
    /// `None`: never; absent (never) in encodings of senders that predate TTLs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at_ms: Option<u64>,
}

impl Rpc for Update {
    type Response = DvvSet;

    fn into_request(self) -> ReplicaRequest {
        ReplicaRequest::Update(self)
    }

    async fn serve(
        self,
        ctx: &Arc<ReplicaContext>,
        timeout: Duration,
    ) -> Result<DvvSet, ReplicaFailure> {
        replica::vnode_call(&ctx.directory, self.partition, timeout, |reply| {
            VNodeMsg::Update {
                bucket: self.bucket.to_vec(),
                key: self.key.to_vec(),
                context: self.context.clone(),
                value: self.value.clone().map(ByteBuf::into_vec),
                codec: self.codec,
                timestamp_ms: self.timestamp_ms,
                expires_at_ms: self.expires_at_ms,
                condition: self.condition,
                reply,
            }
        })
        .await
    }
}

/// Merge a state made elsewhere (replication, read repair) into a replica; the answer is an
/// acknowledgement once the merge is durable, never the merged record (the caller already has
/// what it sent).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Merge {
    /// Partition of the key.
    pub partition: u32,
    /// Bucket.
    pub bucket: ByteBuf,
    /// Key.
    pub key: ByteBuf,
    /// The state to merge.
    pub record: DvvSet,
    /// The client's condition when the merge replicates a conditional write: the replica
    /// refuses the merge with [`StorageError::ConditionFailed`] if it holds a live version
    /// that `record` does not cover ([`Condition::check_merge`]). Absent in encodings of
    /// older nodes: none.
    #[serde(default)]
    pub condition: Condition,
}

impl Rpc for Merge {
    const BATCHED: bool = true;
    type Response = ();

    fn into_request(self) -> ReplicaRequest {
        ReplicaRequest::Merge(self)
    }

    async fn serve(
        self,
        ctx: &Arc<ReplicaContext>,
        timeout: Duration,
    ) -> Result<(), ReplicaFailure> {
        replica::vnode_call(&ctx.directory, self.partition, timeout, |reply| {
            VNodeMsg::Merge {
                bucket: self.bucket.to_vec(),
                key: self.key.to_vec(),
                record: self.record.clone(),
                condition: self.condition,
                reply,
            }
        })
        .await
        .map(|_| ())
    }
}

/// Sloppy quorum: keep `record` durably as a hint for `owner`, a replica that could not be
/// reached, until hinted handoff delivers it. Travels as the wire variant `Hint`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreHint {
    /// The replica the write was meant for.
    pub owner: String,
    /// Partition of the key.
    pub partition: u32,
    /// Bucket.
    pub bucket: ByteBuf,
    /// Key.
    pub key: ByteBuf,
    /// The state to deliver.
    pub record: DvvSet,
}

impl Rpc for StoreHint {
    type Response = ();

    fn into_request(self) -> ReplicaRequest {
        ReplicaRequest::Hint(self)
    }

    async fn serve(self, ctx: &Arc<ReplicaContext>, _: Duration) -> Result<(), ReplicaFailure> {
        let hint = Hint {
            partition: self.partition,
            bucket: self.bucket,
            key: self.key,
            record: self.record,
        };
        let (hints, owner) = (ctx.hints.clone(), self.owner);
        replica::written(move |reply| hints.put(&owner, hint, reply)).await?;
        crate::stats::add(&ctx.stats.hints.stored, 1);
        Ok(())
    }
}

/// Sloppy read on a fallback node: the merge of the hints it holds for the key (`None` if
/// none).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GetHinted {
    /// Partition of the key.
    pub partition: u32,
    /// Bucket.
    pub bucket: ByteBuf,
    /// Key.
    pub key: ByteBuf,
}

impl Rpc for GetHinted {
    type Response = Option<DvvSet>;

    fn into_request(self) -> ReplicaRequest {
        ReplicaRequest::GetHinted(self)
    }

    async fn serve(
        self,
        ctx: &Arc<ReplicaContext>,
        _: Duration,
    ) -> Result<Option<DvvSet>, ReplicaFailure> {
        let hints = ctx.hints.clone();
        Ok(
            replica::blocking(move || hints.get_hinted(self.partition, &self.bucket, &self.key))
                .await?,
        )
    }
}

/// Anti-entropy: hashes of the Merkle tree (see `ringkv_storage::merkle`). For level 0 the
/// root; otherwise the children at `level` of each parent at `level - 1`, 16 per parent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MerkleChildren {
    /// Partition.
    pub partition: u32,
    /// Tree level, 0 (root) to 3 (segments).
    pub level: u32,
    /// Parent indices at `level - 1`.
    pub parents: Vec<u32>,
}

impl Rpc for MerkleChildren {
    type Response = Vec<u64>;

    fn into_request(self) -> ReplicaRequest {
        ReplicaRequest::MerkleChildren(self)
    }

    async fn serve(
        self,
        ctx: &Arc<ReplicaContext>,
        timeout: Duration,
    ) -> Result<Vec<u64>, ReplicaFailure> {
        replica::vnode_call(&ctx.directory, self.partition, timeout, |reply| {
            VNodeMsg::MerkleChildren {
                level: self.level,
                parents: self.parents.clone(),
                reply,
            }
        })
        .await
    }
}

/// Anti-entropy: `(segment, stored key, entry hash)` of every key in the segments.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SegmentEntries {
    /// Partition.
    pub partition: u32,
    /// Segment (leaf) indices.
    pub segments: Vec<u32>,
}

impl Rpc for SegmentEntries {
    type Response = Vec<(u32, ByteBuf, u64)>;

    fn into_request(self) -> ReplicaRequest {
        ReplicaRequest::SegmentEntries(self)
    }

    async fn serve(
        self,
        ctx: &Arc<ReplicaContext>,
        timeout: Duration,
    ) -> Result<Self::Response, ReplicaFailure> {
        let entries = replica::vnode_call(&ctx.directory, self.partition, timeout, |reply| {
            VNodeMsg::SegmentEntries {
                segments: self.segments.clone(),
                reply,
            }
        })
        .await?;
        Ok(entries
            .into_iter()
            .map(|(s, k, h)| (s, ByteBuf::from(k), h))
            .collect())
    }
}

/// Anti-entropy: the states of stored keys (`None` where absent), in order. The answer may
/// stop early, before it would pass `max-record-bytes`: the caller asks again for the rest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fetch {
    /// Partition.
    pub partition: u32,
    /// Stored keys (`[bucket length][bucket][key]`).
    pub keys: Vec<ByteBuf>,
}

impl Rpc for Fetch {
    type Response = Vec<Option<DvvSet>>;

    fn into_request(self) -> ReplicaRequest {
        ReplicaRequest::Fetch(self)
    }

    async fn serve(
        self,
        ctx: &Arc<ReplicaContext>,
        timeout: Duration,
    ) -> Result<Self::Response, ReplicaFailure> {
        replica::vnode_call(&ctx.directory, self.partition, timeout, |reply| {
            VNodeMsg::Fetch {
                keys: self.keys.clone(),
                budget: ctx.max_batch_bytes,
                reply,
            }
        })
        .await
    }
}

/// Anti-entropy and hinted handoff: merge these states of stored keys, durably (one group
/// commit); the answer is how many were merged.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MergeStored {
    /// Partition.
    pub partition: u32,
    /// Stored keys and their states.
    pub entries: Vec<(ByteBuf, DvvSet)>,
}

impl Rpc for MergeStored {
    type Response = usize;

    fn into_request(self) -> ReplicaRequest {
        ReplicaRequest::MergeStored(self)
    }

    async fn serve(
        self,
        ctx: &Arc<ReplicaContext>,
        timeout: Duration,
    ) -> Result<usize, ReplicaFailure> {
        let entries: Vec<(Vec<u8>, DvvSet)> = self
            .entries
            .into_iter()
            .map(|(k, r)| (k.into_vec(), r))
            .collect();
        replica::vnode_call(&ctx.directory, self.partition, timeout, |reply| {
            VNodeMsg::MergeMany {
                entries: entries.clone(),
                reply,
            }
        })
        .await
    }
}

/// Tombstone purge, step 1: which of these stored keys hold exactly this entry hash here.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckEntries {
    /// Partition.
    pub partition: u32,
    /// Stored keys and entry hashes.
    pub entries: Vec<(ByteBuf, u64)>,
}

impl Rpc for CheckEntries {
    type Response = Vec<bool>;

    fn into_request(self) -> ReplicaRequest {
        ReplicaRequest::CheckEntries(self)
    }

    async fn serve(
        self,
        ctx: &Arc<ReplicaContext>,
        timeout: Duration,
    ) -> Result<Vec<bool>, ReplicaFailure> {
        replica::vnode_call(&ctx.directory, self.partition, timeout, |reply| {
            VNodeMsg::CheckEntries {
                entries: self.entries.clone(),
                reply,
            }
        })
        .await
    }
}

/// Tombstone purge, step 2: delete these tombstones if they are still unchanged; the answer
/// is how many were purged.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Purge {
    /// Partition.
    pub partition: u32,
    /// Stored keys and the entry hashes every replica was seen to hold.
    pub entries: Vec<(ByteBuf, u64)>,
}

impl Rpc for Purge {
    type Response = usize;

    fn into_request(self) -> ReplicaRequest {
        ReplicaRequest::Purge(self)
    }

    async fn serve(
        self,
        ctx: &Arc<ReplicaContext>,
        timeout: Duration,
    ) -> Result<usize, ReplicaFailure> {
        let entries: Vec<(Vec<u8>, u64)> = self
            .entries
            .into_iter()
            .map(|(k, h)| (k.into_vec(), h))
            .collect();
        let n = replica::vnode_call(&ctx.directory, self.partition, timeout, |reply| {
            VNodeMsg::Purge {
                entries: entries.clone(),
                reply,
            }
        })
        .await?;
        crate::stats::add(&ctx.stats.repair.tombstones_purged, n as u64);
        Ok(n)
    }
}

/// Partition transfer: the replica's records of `partition` in key order strictly after
/// position `after` (`None`: from the start), at most `max_bytes` of them (capped by the
/// serving node at its `max-record-bytes` batch bound, so the answer always fits in one
/// cluster message) unless one record alone is larger. Positions are stable across replicas
/// (`ringkv_storage::ScanChunk`), so a transfer that loses its source resumes from another.
/// Served on a blocking thread of the source's vnode.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScanChunk {
    /// Partition.
    pub partition: u32,
    /// Resume position: `[segment: u16 BE][stored key]`, the `next` of the previous chunk.
    pub after: Option<ByteBuf>,
    /// Budget of the answer, bytes (LMDB key plus record bytes of each entry).
    pub max_bytes: usize,
}

/// The answer to a [`ScanChunk`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Chunk {
    /// `(stored key, record)` in the partition's key order.
    pub entries: Vec<(ByteBuf, DvvSet)>,
    /// Position to resume after; `None` once the partition is exhausted.
    pub next: Option<ByteBuf>,
    /// Bytes the chunk counted (LMDB key plus record bytes of each entry).
    #[serde(default)]
    pub bytes: u64,
}

impl Rpc for ScanChunk {
    type Response = Chunk;

    fn into_request(self) -> ReplicaRequest {
        ReplicaRequest::ScanChunk(self)
    }

    async fn serve(
        self,
        ctx: &Arc<ReplicaContext>,
        timeout: Duration,
    ) -> Result<Chunk, ReplicaFailure> {
        let max_bytes = self.max_bytes.clamp(1, ctx.max_batch_bytes);
        let after = self.after.map(ByteBuf::into_vec);
        let chunk = replica::vnode_call(&ctx.directory, self.partition, timeout, |reply| {
            VNodeMsg::ScanChunk {
                after: after.clone(),
                max_bytes,
                reply,
            }
        })
        .await?;
        Ok(Chunk {
            entries: chunk
                .entries
                .into_iter()
                .map(|(k, r)| (ByteBuf::from(k), r))
                .collect(),
            next: chunk.next.map(ByteBuf::from),
            bytes: chunk.bytes as u64,
        })
    }
}

/// `cluster plan`'s size estimate: the bytes of every partition this node holds that is not
/// empty, as `(partition, bytes)` in partition order ([`ringkv_storage::PartitionStats`]
/// from each vnode: counters kept in memory, no scan). A vnode that does not answer within
/// the request's time is left out, so the answer may undercount.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionSizes {}

impl Rpc for PartitionSizes {
    type Response = Vec<(u32, u64)>;

    fn into_request(self) -> ReplicaRequest {
        ReplicaRequest::PartitionSizes(self)
    }

    async fn serve(
        self,
        ctx: &Arc<ReplicaContext>,
        timeout: Duration,
    ) -> Result<Vec<(u32, u64)>, ReplicaFailure> {
        let directory = &ctx.directory;
        let stats = futures::future::join_all((0..directory.partitions()).map(|p| async move {
            let stats =
                replica::vnode_call(directory, p, timeout, |reply| VNodeMsg::Stats { reply }).await;
            (p, stats)
        }))
        .await;
        Ok(stats
            .into_iter()
            .filter_map(|(p, s)| s.ok().filter(|s| s.bytes > 0).map(|s| (p, s.bytes)))
            .collect())
    }
}

/// `ringkv cluster transfers`: the partition replicas this node is receiving or has received
/// since it started (its Transfer actor's rows).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transfers {}

impl Rpc for Transfers {
    type Response = Vec<crate::transfer::TransferRow>;

    fn into_request(self) -> ReplicaRequest {
        ReplicaRequest::Transfers(self)
    }

    async fn serve(
        self,
        ctx: &Arc<ReplicaContext>,
        timeout: Duration,
    ) -> Result<Self::Response, ReplicaFailure> {
        // The caller's own time limit bounds the wait.
        let _ = timeout;
        Ok(ctx.transfers.status().await)
    }
}

/// Keys and bytes a replica of `partition` holds (`ringkv_storage::PartitionStats`, counted
/// by its writer: no scan): what a transfer expects to move.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    /// Partition.
    pub partition: u32,
}

impl Rpc for Stats {
    type Response = PartitionStats;

    fn into_request(self) -> ReplicaRequest {
        ReplicaRequest::Stats(self)
    }

    async fn serve(
        self,
        ctx: &Arc<ReplicaContext>,
        timeout: Duration,
    ) -> Result<PartitionStats, ReplicaFailure> {
        replica::vnode_call(&ctx.directory, self.partition, timeout, |reply| {
            VNodeMsg::Stats { reply }
        })
        .await
    }
}

/// `ringkv explain`: what this node can say about one key ([`crate::explain`]): its replica
/// of the key if `read` asks (read with `local` semantics, summarised without values), the
/// hints it holds for the key, and the last anti-entropy exchange it ran for the partition
/// with each peer. The answer is bounded ([`crate::explain::MAX_HINTS_LISTED`],
/// [`crate::explain::MAX_SIBLINGS_LISTED`]); a part that fails is reported in it, so the call
/// fails only for an invalid bucket or key (or as any call: unreachable, timeout).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Explain {
    /// Partition of the key.
    pub partition: u32,
    /// Bucket.
    pub bucket: ByteBuf,
    /// Key.
    pub key: ByteBuf,
    /// What to read of this node's replica of the key.
    #[serde(default)]
    pub read: crate::explain::ExplainRead,
}

impl Rpc for Explain {
    type Response = crate::explain::ExplainAnswer;

    fn into_request(self) -> ReplicaRequest {
        ReplicaRequest::Explain(self)
    }

    async fn serve(
        self,
        ctx: &Arc<ReplicaContext>,
        timeout: Duration,
    ) -> Result<Self::Response, ReplicaFailure> {
        crate::explain::serve(ctx, self, timeout).await
    }
}

/// The wire form of every replica operation: it only dispatches, each variant holding the
/// request struct of that operation (see the module docs for the format).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReplicaRequest {
    /// [`Get`].
    Get(Get),
    /// [`Update`].
    Update(Update),
    /// [`Merge`].
    Merge(Merge),
    /// [`StoreHint`].
    Hint(StoreHint),
    /// [`GetHinted`].
    GetHinted(GetHinted),
    /// [`MerkleChildren`].
    MerkleChildren(MerkleChildren),
    /// [`SegmentEntries`].
    SegmentEntries(SegmentEntries),
    /// [`Fetch`].
    Fetch(Fetch),
    /// [`MergeStored`].
    MergeStored(MergeStored),
    /// [`CheckEntries`].
    CheckEntries(CheckEntries),
    /// [`Purge`].
    Purge(Purge),
    /// [`PartitionSizes`].
    PartitionSizes(PartitionSizes),
    /// [`ScanChunk`].
    ScanChunk(ScanChunk),
    /// [`Stats`].
    Stats(Stats),
    /// [`Transfers`].
    Transfers(Transfers),
    /// [`Paxos`].
    Paxos(Paxos),
    /// [`PaxosRead`].
    PaxosRead(PaxosRead),
    /// [`PaxosKeys`].
    PaxosKeys(PaxosKeys),
    /// [`StrongRequest`].
    Strong(StrongRequest),
    /// [`HoldsBucket`].
    HoldsBucket(HoldsBucket),
    /// [`Explain`].
    Explain(Explain),
}

impl ReplicaRequest {
    /// Runs the request on this node and encodes its answer, `Result<R::Response,
    /// ReplicaFailure>` for the request type `R` of the variant.
    pub(crate) async fn serve_encoded(
        self,
        ctx: &Arc<ReplicaContext>,
        timeout: Duration,
    ) -> Vec<u8> {
        async fn answer<R: Rpc>(r: R, ctx: &Arc<ReplicaContext>, timeout: Duration) -> Vec<u8> {
            crate::wire::encode(&r.serve(ctx, timeout).await)
        }
        match self {
            ReplicaRequest::Get(r) => answer(r, ctx, timeout).await,
            ReplicaRequest::Update(r) => answer(r, ctx, timeout).await,
            ReplicaRequest::Merge(r) => answer(r, ctx, timeout).await,
            ReplicaRequest::Hint(r) => answer(r, ctx, timeout).await,
            ReplicaRequest::GetHinted(r) => answer(r, ctx, timeout).await,
            ReplicaRequest::MerkleChildren(r) => answer(r, ctx, timeout).await,
            ReplicaRequest::SegmentEntries(r) => answer(r, ctx, timeout).await,
            ReplicaRequest::Fetch(r) => answer(r, ctx, timeout).await,
            ReplicaRequest::MergeStored(r) => answer(r, ctx, timeout).await,
            ReplicaRequest::CheckEntries(r) => answer(r, ctx, timeout).await,
            ReplicaRequest::Purge(r) => answer(r, ctx, timeout).await,
            ReplicaRequest::PartitionSizes(r) => answer(r, ctx, timeout).await,
            ReplicaRequest::ScanChunk(r) => answer(r, ctx, timeout).await,
            ReplicaRequest::Stats(r) => answer(r, ctx, timeout).await,
            ReplicaRequest::Transfers(r) => answer(r, ctx, timeout).await,
            ReplicaRequest::Paxos(r) => answer(r, ctx, timeout).await,
            ReplicaRequest::PaxosRead(r) => answer(r, ctx, timeout).await,
            ReplicaRequest::PaxosKeys(r) => answer(r, ctx, timeout).await,
            ReplicaRequest::Strong(r) => answer(r, ctx, timeout).await,
            ReplicaRequest::HoldsBucket(r) => answer(r, ctx, timeout).await,
            ReplicaRequest::Explain(r) => answer(r, ctx, timeout).await,
        }
    }
}

/// A request and its sender's node name, as it travels between nodes.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Envelope {
    /// The sending node's name.
    pub from: String,
    /// The request.
    pub request: ReplicaRequest,
}

/// Why a replica operation failed on the replica's node: the wire error type of every
/// replica answer (`Result<R::Response, ReplicaFailure>`), so that the caller learns the cause
/// (a full disk, a record over the limit, an overloaded node) and can answer its client with
/// the most specific error code.
#[derive(Clone, Debug, Error, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReplicaFailure {
    /// The replica's storage refused or failed the operation.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// The vnode of the partition did not answer (or restart) within the request's time.
    #[error("the vnode of partition {0} did not answer in time")]
    VNodeTimeout(u32),
    /// The node serves its maximum of replica requests at once.
    #[error("the node serves its maximum of {0} replica requests at once")]
    Overloaded(usize),
    /// The request did not decode.
    #[error("undecodable replica request: {0}")]
    Malformed(String),
    /// The answer would be a cluster message over the frame limit; it was not sent.
    #[error("the answer would be {bytes} bytes, over the cluster message limit of {limit} bytes (max-cluster-frame-bytes)")]
    TooLarge {
        /// Encoded size, bytes.
        bytes: usize,
        /// The limit, bytes.
        limit: usize,
    },
}

/// Why a replica operation did not succeed, as its caller sees it.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum ReplicaError {
    /// No session to that node, or its Replica actor is gone.
    #[error("node {0} is unreachable")]
    Unreachable(String),
    /// No answer in time.
    #[error("node {0} did not answer in time")]
    Timeout(String),
    /// The answer did not decode.
    #[error("undecodable answer from node {0}: {1}")]
    Garbled(String, String),
    /// This node already has its maximum of request bytes in flight to that node.
    #[error("node {node}: {limit} bytes of requests already in flight to it (the per-peer bound)")]
    Overloaded {
        /// The node.
        node: String,
        /// The per-peer bound, bytes.
        limit: usize,
    },
    /// The request would be a cluster message over the frame limit; it was not sent.
    #[error("node {node}: the request would be {bytes} bytes, over the cluster message limit of {limit} bytes (max-cluster-frame-bytes)")]
    TooLarge {
        /// The node.
        node: String,
        /// Encoded size, bytes.
        bytes: usize,
        /// The limit, bytes.
        limit: usize,
    },
    /// The replica answered with a failure.
    #[error("node {0}: {1}")]
    Failed(String, ReplicaFailure),
}

impl ReplicaError {
    /// The storage error behind this failure, if the replica's storage gave one.
    pub fn storage(&self) -> Option<&StorageError> {
        match self {
            ReplicaError::Failed(_, ReplicaFailure::Storage(e)) => Some(e),
            _ => None,
        }
    }
}

/// Runs `request` on this node (`node` is this node's name, for errors): the typed request
/// goes to the local vnode or hint store unencoded and its [`Measured`] sizes are 0. The
/// local-call path of every [`ReplicaTransport`].
///
/// # Errors
/// [`ReplicaError::Failed`] with the operation's [`ReplicaFailure`].
pub(crate) async fn serve_local<R: Rpc>(
    ctx: &Arc<ReplicaContext>,
    node: &str,
    request: R,
    timeout: Duration,
) -> Result<Measured<R::Response>, ReplicaError> {
    request
        .serve(ctx, timeout)
        .await
        .map(|answer| Measured {
            answer,
            sent: 0,
            received: 0,
        })
        .map_err(|e| ReplicaError::Failed(node.to_string(), e))
}

/// An answer and the encoded sizes of the request and the answer, bytes (0 for calls that did
/// not travel: to this node, or over a simulated network).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Measured<T> {
    /// The answer.
    pub answer: T,
    /// Bytes of the request as sent.
    pub sent: usize,
    /// Bytes of the answer as received.
    pub received: usize,
}

/// How a node reaches the replicas of the cluster, itself included: the interface the
/// coordinator, hinted handoff and anti-entropy use. A handle is cheap to clone (tasks of one
/// request each hold one).
pub trait ReplicaTransport: Clone + Send + Sync + 'static {
    /// This node's name.
    fn local(&self) -> &str;

    /// What serving replica operations on this node needs (its partitions, hints, cluster
    /// view, counters and limits).
    fn context(&self) -> &Arc<ReplicaContext>;

    /// True if `node` is this node, or is connected, not suspected by the failure detector and
    /// not cut off.
    fn reachable(&self, node: &str) -> bool;

    /// Runs `request` on node `node`'s replica within `timeout`, also giving the bytes that
    /// travelled.
    ///
    /// # Errors
    /// [`ReplicaError`]: the node is unreachable, did not answer in time, answered something
    /// that does not decode, or answered a [`ReplicaFailure`]; the request would be over the
    /// cluster message limit, or the per-peer bytes in flight stayed at their bound.
    fn call_sized<R: Rpc>(
        &self,
        node: &str,
        request: R,
        timeout: Duration,
    ) -> impl Future<Output = Result<Measured<R::Response>, ReplicaError>> + Send;

    /// Runs `request` on node `node`'s replica within `timeout`: its answer.
    ///
    /// # Errors
    /// As [`ReplicaTransport::call_sized`].
    fn call<R: Rpc>(
        &self,
        node: &str,
        request: R,
        timeout: Duration,
    ) -> impl Future<Output = Result<R::Response, ReplicaError>> + Send {
        async move {
            self.call_sized(node, request, timeout)
                .await
                .map(|s| s.answer)
        }
    }
}

#[cfg(test)]
mod tests;
