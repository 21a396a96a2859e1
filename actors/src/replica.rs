//! Replica operations between nodes.
//!
//! A coordinator reaches the vnode of partition `p` on node `X` through `X`'s **Replica**
//! actor, which joins the process group `ringkv.replica.{X}` (our own node name, never a
//! ractor NodeId: those change on reconnect). Requests and answers travel as `Vec<u8>`: a
//! version byte and named msgpack of [`ReplicaRequest`] / [`ReplicaResponse`], so that the
//! format can grow and a frame that does not decode becomes an error answer instead of a
//! panic or a silent drop. The Replica actor hands each request to a task, so one slow write
//! does not hold up the others.
//!
//! [`Peers`] is the sending side: it calls the local vnode directly when the target is this
//! node and the remote Replica actor otherwise.

use crate::cluster_view::ClusterView;
use crate::directory::VNodeDirectory;
use crate::stats::NodeStats;
use crate::vnode::VNodeMsg;
use crate::wire::{decode, encode};
use ractor::rpc::CallResult;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use ractor_cluster::RactorClusterMessage;
use ringkv_storage::{DvvSet, Hint, HintStore, Partition, StorageError, VersionVector};
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use thiserror::Error;

/// One operation on one replica of a partition (or on a node's hint store).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum ReplicaRequest {
    /// Read the replica's state of a key. Answer: [`ReplicaResponse`].
    Get {
        /// Partition of the key.
        partition: u32,
        /// Bucket.
        bucket: ByteBuf,
        /// Key.
        key: ByteBuf,
    },
    /// Coordinate a client write here: this replica creates the new dot. Answer:
    /// [`ReplicaResponse`].
    Update {
        /// Partition of the key.
        partition: u32,
        /// Bucket.
        bucket: ByteBuf,
        /// Key.
        key: ByteBuf,
        /// The client's causal context.
        context: VersionVector,
        /// New value, or `None` for a tombstone.
        value: Option<ByteBuf>,
        /// Coordinator's wall clock, ms since the Unix epoch.
        timestamp_ms: u64,
    },
    /// Merge a state made elsewhere (replication, read repair, hinted handoff). Answer:
    /// [`ReplicaResponse`].
    Merge {
        /// Partition of the key.
        partition: u32,
        /// Bucket.
        bucket: ByteBuf,
        /// Key.
        key: ByteBuf,
        /// The state to merge.
        record: DvvSet,
    },
    /// Sloppy quorum: keep `record` durably as a hint for `owner`, a replica that could not
    /// be reached, until hinted handoff delivers it. Answer: `Result<(), StorageError>`.
    Hint {
        /// The replica the write was meant for.
        owner: String,
        /// Partition of the key.
        partition: u32,
        /// Bucket.
        bucket: ByteBuf,
        /// Key.
        key: ByteBuf,
        /// The state to deliver.
        record: DvvSet,
    },
    /// Sloppy read on a fallback node: the merge of the hints it holds for the key (`None` if
    /// none). Answer: [`ReplicaResponse`].
    GetHinted {
        /// Partition of the key.
        partition: u32,
        /// Bucket.
        bucket: ByteBuf,
        /// Key.
        key: ByteBuf,
    },
    /// Anti-entropy: hashes of the Merkle tree (see `ringkv_storage::merkle`). For level 0
    /// the root; otherwise the children at `level` of each parent at `level - 1`, 16 per
    /// parent. Answer: `Result<Vec<u64>, StorageError>`.
    MerkleChildren {
        /// Partition.
        partition: u32,
        /// Tree level, 0 (root) to 3 (segments).
        level: u32,
        /// Parent indices at `level - 1`.
        parents: Vec<u32>,
    },
    /// Anti-entropy: `(segment, stored key, entry hash)` of every key in the segments.
    /// Answer: `Result<Vec<(u32, ByteBuf, u64)>, StorageError>`.
    SegmentEntries {
        /// Partition.
        partition: u32,
        /// Segment (leaf) indices.
        segments: Vec<u32>,
    },
    /// Anti-entropy: the states of stored keys (`None` where absent). Answer:
    /// `Result<Vec<Option<DvvSet>>, StorageError>`.
    Fetch {
        /// Partition.
        partition: u32,
        /// Stored keys (`[bucket length][bucket][key]`).
        keys: Vec<ByteBuf>,
    },
    /// Anti-entropy: merge these states of stored keys. Answer:
    /// `Result<usize, StorageError>` (how many were merged).
    MergeStored {
        /// Partition.
        partition: u32,
        /// Stored keys and their states.
        entries: Vec<(ByteBuf, DvvSet)>,
    },
    /// Tombstone purge, step 1: which of these stored keys hold exactly this entry hash
    /// here. Answer: `Result<Vec<bool>, StorageError>`.
    CheckEntries {
        /// Partition.
        partition: u32,
        /// Stored keys and entry hashes.
        entries: Vec<(ByteBuf, u64)>,
    },
    /// Tombstone purge, step 2: delete these tombstones if they are still unchanged. Answer:
    /// `Result<usize, StorageError>` (how many were purged).
    Purge {
        /// Partition.
        partition: u32,
        /// Stored keys and the entry hashes every replica was seen to hold.
        entries: Vec<(ByteBuf, u64)>,
    },
}

/// A request and its sender's node name, as it travels between nodes.
#[derive(Serialize, Deserialize)]
struct Envelope {
    from: String,
    request: ReplicaRequest,
}

impl ReplicaRequest {
    fn partition(&self) -> u32 {
        match self {
            ReplicaRequest::Get { partition, .. }
            | ReplicaRequest::Update { partition, .. }
            | ReplicaRequest::Merge { partition, .. }
            | ReplicaRequest::Hint { partition, .. }
            | ReplicaRequest::GetHinted { partition, .. }
            | ReplicaRequest::MerkleChildren { partition, .. }
            | ReplicaRequest::SegmentEntries { partition, .. }
            | ReplicaRequest::Fetch { partition, .. }
            | ReplicaRequest::MergeStored { partition, .. }
            | ReplicaRequest::CheckEntries { partition, .. }
            | ReplicaRequest::Purge { partition, .. } => *partition,
        }
    }
}

/// Why a replica operation failed on the replica's node: the wire error type of every
/// replica answer (`Result<T, ReplicaFailure>`), so that the caller learns the cause (a full
/// disk, a record over the limit, an overloaded node) and can answer its client with the
/// most specific error code.
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

/// The answer of a replica to a read or coordinated write: the key's state after the
/// operation (`None`: never written here), or why it failed.
pub type ReplicaResponse = Result<Option<DvvSet>, ReplicaFailure>;

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

/// Messages of the Replica actor (they cross nodes).
#[derive(RactorClusterMessage)]
pub enum ReplicaMsg {
    /// An encoded [`ReplicaRequest`]; the reply is an encoded [`ReplicaResponse`].
    #[rpc]
    Call(Vec<u8>, RpcReplyPort<Vec<u8>>),
    /// Fault injection: panic (ignored unless the node runs with `fault-injection`).
    InjectPanic,
}

/// Process group of node `name`'s Replica actor.
pub fn replica_group(name: &str) -> String {
    format!("ringkv.replica.{name}")
}

/// What serving replica operations needs; shared by the Replica actor, the coordinators, the
/// HintedHandoff and Repair actors.
pub struct ReplicaContext {
    /// This node's name.
    pub name: String,
    /// Where the local vnodes are.
    pub directory: Arc<VNodeDirectory>,
    /// Partition `i` at index `i` (anti-entropy reads and merges go to them directly).
    pub partitions: Vec<Arc<Partition>>,
    /// Hints this node keeps for unreachable replicas.
    pub hints: Arc<HintStore>,
    /// The cluster view (failure detector verdicts, injected isolation).
    pub view: Arc<ClusterView>,
    /// Counters.
    pub stats: Arc<NodeStats>,
    /// Whether fault injection (`InjectPanic`) is allowed.
    pub fault_injection: bool,
    /// Longest a request waits for a restarting vnode.
    pub timeout: Duration,
    /// Largest cluster message, bytes (`max-cluster-frame-bytes`): no request or answer
    /// bigger than this is sent.
    pub max_message_bytes: usize,
    /// Largest record, bytes (`max-record-bytes`): batches of records stop at this many
    /// bytes, so a batch always fits in a message.
    pub max_batch_bytes: usize,
    /// Replica requests from other nodes served at once; more are answered
    /// [`ReplicaFailure::Overloaded`].
    pub serving: Arc<tokio::sync::Semaphore>,
    /// Request bytes in flight to each other node.
    pub in_flight: PeerBudgets,
}

/// Most replica requests from other nodes one node serves at once.
pub const MAX_SERVING: usize = 8192;

/// Bytes of requests in flight to each other node, bounded: a call waits (up to its
/// timeout) for room, then fails with [`ReplicaError::Overloaded`]. Each call counts at
/// least [`MIN_CALL_BYTES`], so the bound also caps the number of calls in flight. Bounding
/// what is queued on a node pair's one connection also bounds how long a heartbeat waits
/// behind bulk data on it.
pub struct PeerBudgets {
    per_peer: usize,
    budgets: std::sync::Mutex<std::collections::HashMap<String, Arc<tokio::sync::Semaphore>>>,
}

/// Least bytes one call counts against its peer's budget.
pub const MIN_CALL_BYTES: usize = 1024;

impl PeerBudgets {
    /// A budget of `per_peer` bytes for each node.
    pub fn new(per_peer: usize) -> Self {
        Self {
            per_peer,
            budgets: Default::default(),
        }
    }

    async fn acquire(
        &self,
        node: &str,
        bytes: usize,
        timeout: Duration,
    ) -> Result<tokio::sync::OwnedSemaphorePermit, ReplicaError> {
        let budget = {
            let mut map = self.budgets.lock().unwrap_or_else(|p| p.into_inner());
            map.entry(node.to_string())
                .or_insert_with(|| Arc::new(tokio::sync::Semaphore::new(self.per_peer)))
                .clone()
        };
        let want = bytes.clamp(MIN_CALL_BYTES, self.per_peer) as u32;
        match tokio::time::timeout(timeout, budget.acquire_many_owned(want)).await {
            Ok(Ok(permit)) => Ok(permit),
            _ => Err(ReplicaError::Overloaded {
                node: node.to_string(),
                limit: self.per_peer,
            }),
        }
    }
}

/// The node's endpoint for replica operations from other nodes.
pub struct Replica;

/// State of the Replica actor.
pub struct ReplicaState {
    ctx: Arc<ReplicaContext>,
    /// Requests being served, aborted if the actor stops or fails.
    tasks: crate::supervision::OwnedTasks,
}

impl Actor for Replica {
    type Msg = ReplicaMsg;
    type State = ReplicaState;
    type Arguments = Arc<ReplicaContext>;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        ctx: Arc<ReplicaContext>,
    ) -> Result<Self::State, ActorProcessingErr> {
        ractor::pg::join(replica_group(&ctx.name), vec![myself.get_cell()]);
        Ok(ReplicaState {
            ctx,
            tasks: Default::default(),
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let ctx = &state.ctx;
        let (bytes, reply) = match message {
            ReplicaMsg::Call(bytes, reply) => (bytes, reply),
            ReplicaMsg::InjectPanic if ctx.fault_injection => panic!("replica: injected panic"),
            ReplicaMsg::InjectPanic => return Ok(()),
        };
        let Ok(permit) = ctx.serving.clone().try_acquire_owned() else {
            let _ = reply.send(encode(&Err::<(), _>(ReplicaFailure::Overloaded(
                MAX_SERVING,
            ))));
            return Ok(());
        };
        let ctx = ctx.clone();
        state.tasks.spawn(async move {
            let answer = match decode::<Envelope>(&bytes) {
                // An injected network partition: drop the request, as a cut link would.
                Ok(envelope) if ctx.view.is_isolated(&envelope.from) => return,
                Ok(envelope) => serve(&ctx, envelope.request).await,
                Err(e) => encode(&Err::<(), _>(ReplicaFailure::Malformed(e))),
            };
            // Never send a message over the cluster frame limit: ractor_cluster would close
            // the session between the two nodes.
            let answer = if answer.len() > ctx.max_message_bytes {
                tracing::error!(
                    bytes = answer.len(),
                    limit = ctx.max_message_bytes,
                    "replica answer over the cluster message limit; answering an error instead"
                );
                encode(&Err::<(), _>(ReplicaFailure::TooLarge {
                    bytes: answer.len(),
                    limit: ctx.max_message_bytes,
                }))
            } else {
                answer
            };
            let _ = reply.send(answer);
            drop(permit);
        });
        Ok(())
    }
}

fn partition_of(ctx: &ReplicaContext, p: u32) -> Result<&Arc<Partition>, StorageError> {
    ctx.partitions.get(p as usize).ok_or_else(|| {
        StorageError::InvalidArgument(format!(
            "partition {p} out of range (the node has {})",
            ctx.partitions.len()
        ))
    })
}

/// Runs a blocking storage call off the async workers.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StorageError> + Send + 'static,
) -> Result<T, StorageError> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| Err(StorageError::Io(format!("storage task failed: {e}"))))
}

/// Waits for a writer-thread callback.
async fn written<T: Send + 'static>(
    start: impl FnOnce(Box<dyn FnOnce(Result<T, StorageError>) + Send>),
) -> Result<T, StorageError> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    start(Box::new(move |r| {
        let _ = tx.send(r);
    }));
    rx.await
        .unwrap_or_else(|_| Err(StorageError::Io("the writer stopped".into())))
}

/// Runs `request` on this node and encodes the answer (its type depends on the request; see
/// [`ReplicaRequest`]; every failure is a [`ReplicaFailure`]).
async fn serve(ctx: &Arc<ReplicaContext>, request: ReplicaRequest) -> Vec<u8> {
    let p = request.partition();
    fn enc<T: Serialize>(r: Result<T, impl Into<ReplicaFailure>>) -> Vec<u8> {
        encode(&r.map_err(Into::into))
    }
    match request {
        r @ (ReplicaRequest::Get { .. } | ReplicaRequest::Update { .. }) => {
            encode(&local_call(&ctx.directory, r, ctx.timeout).await)
        }
        // A merge is answered with an acknowledgement, never with the merged record: the
        // caller already has what it sent.
        r @ ReplicaRequest::Merge { .. } => {
            encode(&local_call(&ctx.directory, r, ctx.timeout).await.map(|_| ()))
        }
        ReplicaRequest::Hint {
            owner,
            partition,
            bucket,
            key,
            record,
        } => {
            let hint = Hint {
                partition,
                bucket,
                key,
                record,
            };
            let hints = ctx.hints.clone();
            let r = written(move |reply| hints.put(&owner, hint, reply)).await;
            if r.is_ok() {
                crate::stats::add(&ctx.stats.hints.stored, 1);
            }
            enc(r)
        }
        ReplicaRequest::GetHinted {
            partition,
            bucket,
            key,
        } => {
            let hints = ctx.hints.clone();
            enc(blocking(move || hints.get_hinted(partition, &bucket, &key)).await)
        }
        ReplicaRequest::MerkleChildren { level, parents, .. } => enc(match partition_of(ctx, p) {
            Ok(part) => part.merkle_children(level, &parents),
            Err(e) => Err(e),
        }),
        ReplicaRequest::SegmentEntries { segments, .. } => {
            enc(match partition_of(ctx, p).cloned() {
                Ok(part) => blocking(move || part.segment_entries(&segments))
                    .await
                    .map(|v| {
                        v.into_iter()
                            .map(|(s, k, h)| (s, ByteBuf::from(k), h))
                            .collect::<Vec<_>>()
                    }),
                Err(e) => Err(e),
            })
        }
        ReplicaRequest::Fetch { keys, .. } => {
            let budget = ctx.max_batch_bytes;
            enc(match partition_of(ctx, p).cloned() {
                Ok(part) => blocking(move || fetch_bounded(&part, &keys, budget)).await,
                Err(e) => Err(e),
            })
        }
        ReplicaRequest::MergeStored { entries, .. } => enc(match partition_of(ctx, p).cloned() {
            Ok(part) => merge_stored(&part, entries).await,
            Err(e) => Err(e),
        }),
        ReplicaRequest::CheckEntries { entries, .. } => enc(match partition_of(ctx, p).cloned() {
            Ok(part) => {
                blocking(move || {
                    entries
                        .iter()
                        .map(|(k, h)| Ok(entry_hash_of(&part, k)? == Some(*h)))
                        .collect::<Result<Vec<bool>, StorageError>>()
                })
                .await
            }
            Err(e) => Err(e),
        }),
        ReplicaRequest::Purge { entries, .. } => {
            let r = match partition_of(ctx, p).cloned() {
                Ok(part) => {
                    let entries = entries
                        .into_iter()
                        .map(|(k, h)| (k.into_vec(), h))
                        .collect();
                    written(move |reply| part.purge_tombstones(entries, reply)).await
                }
                Err(e) => Err(e),
            };
            if let Ok(n) = r {
                crate::stats::add(&ctx.stats.repair.tombstones_purged, n as u64);
            }
            enc(r)
        }
    }
}

/// Encoded size of one `(stored key, record)` entry in a batch, bytes (an upper bound of
/// what it adds to a message).
pub fn entry_bytes(key: &[u8], record: &DvvSet) -> usize {
    key.len() + ringkv_storage::record::encode(record).len() + 16
}

/// The states of `keys`, in order, stopping before the answer would pass `budget` bytes
/// (`max-record-bytes`): the caller asks again for the rest. A record that alone is over
/// the budget (stored before the record limit existed) is answered `None` and logged: it
/// cannot travel.
fn fetch_bounded(
    part: &Partition,
    keys: &[ByteBuf],
    budget: usize,
) -> Result<Vec<Option<DvvSet>>, StorageError> {
    let mut out = Vec::with_capacity(keys.len());
    let mut bytes = 0;
    for k in keys {
        let record = part.get_stored(k)?;
        let size = record.as_ref().map_or(k.len() + 16, |d| entry_bytes(k, d));
        if size > budget {
            tracing::error!(
                partition = part.id(),
                bytes = size,
                limit = budget,
                "a stored record is over max-record-bytes and cannot be sent to another replica"
            );
            out.push(None);
            continue;
        }
        if bytes + size > budget {
            break;
        }
        bytes += size;
        out.push(record);
    }
    Ok(out)
}

/// Merges states of stored keys into `part`, durably; how many were written. A key whose
/// merge would pass `max-record-bytes` (siblings made concurrently on two replicas) is
/// logged and left as it is here: no retry can make it fit.
///
/// # Errors
/// The first other storage error.
pub async fn merge_stored(
    part: &Arc<Partition>,
    entries: Vec<(ByteBuf, DvvSet)>,
) -> Result<usize, StorageError> {
    let mut waits = Vec::with_capacity(entries.len());
    for (key, record) in entries {
        let (tx, rx) = tokio::sync::oneshot::channel();
        part.merge_stored(
            key.into_vec(),
            record,
            Box::new(move |r| {
                let _ = tx.send(r);
            }),
        );
        waits.push(rx);
    }
    let mut n = 0;
    for rx in waits {
        match rx
            .await
            .unwrap_or_else(|_| Err(StorageError::Io("the writer stopped".into())))
        {
            Ok(_) => n += 1,
            Err(e @ StorageError::RecordTooLarge { .. }) => {
                tracing::warn!(partition = part.id(), error = %e, "cannot merge a key: its replicas hold siblings that together pass the record limit");
            }
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// The Merkle entry hash of a stored key here (`None` if absent).
///
/// # Errors
/// Storage errors.
pub fn entry_hash_of(part: &Partition, stored_key: &[u8]) -> Result<Option<u64>, StorageError> {
    Ok(part.get_stored(stored_key)?.map(|d| {
        ringkv_storage::merkle::entry_hash(stored_key, &ringkv_storage::record::encode(&d))
    }))
}

/// Runs a vnode operation (`Get`, `Update`, `Merge`) on this node's vnode, waiting up to
/// `timeout` for it to be up; the key's state after it.
async fn local_call(
    directory: &VNodeDirectory,
    request: ReplicaRequest,
    timeout: Duration,
) -> ReplicaResponse {
    let deadline = Instant::now() + timeout;
    let p = request.partition();
    let mut stale: Option<ActorRef<VNodeMsg>> = None;
    loop {
        let vnode = directory
            .wait_for(p, stale.as_ref(), deadline)
            .await
            .ok_or(ReplicaFailure::VNodeTimeout(p))?;
        let left = deadline.saturating_duration_since(Instant::now());
        let r = request.clone();
        let answer = match r {
            ReplicaRequest::Get { bucket, key, .. } => {
                vnode
                    .call(
                        |reply| VNodeMsg::Get {
                            bucket: bucket.into_vec(),
                            key: key.into_vec(),
                            reply,
                        },
                        Some(left),
                    )
                    .await
            }
            ReplicaRequest::Update {
                bucket,
                key,
                context,
                value,
                timestamp_ms,
                ..
            } => vnode
                .call(
                    |reply| VNodeMsg::Update {
                        bucket: bucket.into_vec(),
                        key: key.into_vec(),
                        context,
                        value: value.map(ByteBuf::into_vec),
                        timestamp_ms,
                        reply,
                    },
                    Some(left),
                )
                .await
                .map(|c| map_call(c, Some)),
            ReplicaRequest::Merge {
                bucket,
                key,
                record,
                ..
            } => vnode
                .call(
                    |reply| VNodeMsg::Merge {
                        bucket: bucket.into_vec(),
                        key: key.into_vec(),
                        record,
                        reply,
                    },
                    Some(left),
                )
                .await
                .map(|c| map_call(c, Some)),
            _ => return Err(ReplicaFailure::Malformed("not a vnode operation".into())),
        };
        match answer {
            Ok(CallResult::Success(r)) => return r.map_err(ReplicaFailure::Storage),
            Ok(CallResult::Timeout) => return Err(ReplicaFailure::VNodeTimeout(p)),
            // The vnode died holding the request before handing it to the writer: nothing
            // was applied, so wait for its successor and try again.
            Ok(CallResult::SenderError) | Err(_) => stale = Some(vnode),
        }
    }
}

fn map_call<T, U>(
    c: CallResult<Result<T, StorageError>>,
    f: impl Fn(T) -> U,
) -> CallResult<Result<U, StorageError>> {
    match c {
        CallResult::Success(r) => CallResult::Success(r.map(f)),
        CallResult::Timeout => CallResult::Timeout,
        CallResult::SenderError => CallResult::SenderError,
    }
}

/// Sends replica operations to any node of the cluster, this one included.
#[derive(Clone)]
pub struct Peers {
    /// This node's name.
    pub local: String,
    /// What serving needs, for calls to this node.
    pub ctx: Arc<ReplicaContext>,
}

impl Peers {
    /// The cluster view.
    pub fn view(&self) -> &Arc<ClusterView> {
        &self.ctx.view
    }

    /// Runs a read or coordinated write (`Get`, `Update`) on node `node`'s replica, within
    /// `timeout`: the key's state after it.
    ///
    /// # Errors
    /// [`ReplicaError`]: unreachable, no answer in time, or [`ReplicaError::Failed`] with
    /// the replica's [`ReplicaFailure`].
    pub async fn call(
        &self,
        node: &str,
        request: ReplicaRequest,
        timeout: Duration,
    ) -> Result<Option<DvvSet>, ReplicaError> {
        if node == self.local {
            return local_call(&self.ctx.directory, request, timeout)
                .await
                .map_err(|e| ReplicaError::Failed(node.to_string(), e));
        }
        self.call_as(node, request, timeout).await
    }

    /// Merges `record` into node `node`'s replica of a key (replication, read repair),
    /// within `timeout`; the answer is an acknowledgement once the merge is durable.
    ///
    /// # Errors
    /// As [`Peers::call`].
    pub async fn merge(
        &self,
        node: &str,
        request: ReplicaRequest,
        timeout: Duration,
    ) -> Result<(), ReplicaError> {
        if node == self.local {
            return local_call(&self.ctx.directory, request, timeout)
                .await
                .map(|_| ())
                .map_err(|e| ReplicaError::Failed(node.to_string(), e));
        }
        self.call_as(node, request, timeout).await
    }

    /// Runs any operation on node `node` (this one included) and decodes its answer as
    /// `Result<T, ReplicaFailure>` (`T` is the answer type each [`ReplicaRequest`] variant
    /// names).
    ///
    /// # Errors
    /// [`ReplicaError`] if the node cannot be reached, does not answer in time, answers
    /// something that does not decode, or answers a [`ReplicaFailure`].
    pub async fn call_as<T: for<'de> Deserialize<'de>>(
        &self,
        node: &str,
        request: ReplicaRequest,
        timeout: Duration,
    ) -> Result<T, ReplicaError> {
        Ok(self.call_sized(node, request, timeout).await?.0)
    }

    /// As [`Peers::call_as`], also giving the encoded sizes of the request and the answer,
    /// bytes (0 for calls to this node, which do not travel).
    ///
    /// # Errors
    /// As [`Peers::call_as`].
    pub async fn call_sized<T: for<'de> Deserialize<'de>>(
        &self,
        node: &str,
        request: ReplicaRequest,
        timeout: Duration,
    ) -> Result<(T, usize, usize), ReplicaError> {
        let garbled = |e| ReplicaError::Garbled(node.to_string(), e);
        let failed = |e| ReplicaError::Failed(node.to_string(), e);
        if node == self.local {
            let bytes = serve(&self.ctx, request).await;
            let answer: Result<T, ReplicaFailure> = decode(&bytes).map_err(garbled)?;
            return answer.map(|t| (t, 0, 0)).map_err(failed);
        }
        if self.ctx.view.is_isolated(node) {
            return Err(ReplicaError::Unreachable(node.to_string()));
        }
        let member = ractor::pg::get_members(&replica_group(node))
            .into_iter()
            .next()
            .ok_or_else(|| ReplicaError::Unreachable(node.to_string()))?;
        let actor: ActorRef<ReplicaMsg> = member.into();
        let bytes = encode(&Envelope {
            from: self.local.clone(),
            request,
        });
        let sent = bytes.len();
        // Never send a message over the cluster frame limit: the receiving side would close
        // the whole session between the two nodes.
        if sent > self.ctx.max_message_bytes {
            return Err(ReplicaError::TooLarge {
                node: node.to_string(),
                bytes: sent,
                limit: self.ctx.max_message_bytes,
            });
        }
        let started = Instant::now();
        let permit = self.ctx.in_flight.acquire(node, sent, timeout).await?;
        let left = timeout.saturating_sub(started.elapsed());
        let answer = match actor
            .call(|reply| ReplicaMsg::Call(bytes, reply), Some(left))
            .await
        {
            Ok(CallResult::Success(answer)) => answer,
            Ok(CallResult::Timeout) => return Err(ReplicaError::Timeout(node.to_string())),
            Ok(CallResult::SenderError) | Err(_) => {
                return Err(ReplicaError::Unreachable(node.to_string()))
            }
        };
        drop(permit);
        let decoded: Result<T, ReplicaFailure> = decode(&answer).map_err(garbled)?;
        decoded.map(|t| (t, sent, answer.len())).map_err(failed)
    }

    /// True if `node` is this node, or has a live session with it, is not suspected by the
    /// failure detector and is not cut off by injected isolation.
    pub fn reachable(&self, node: &str) -> bool {
        node == self.local
            || (!ractor::pg::get_members(&replica_group(node)).is_empty()
                && self.ctx.view.is_up(node))
    }
}
