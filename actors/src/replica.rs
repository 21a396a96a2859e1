//! Replica operations between nodes: the serving side (the Replica actor) and the sending side
//! ([`Peers`]).
//!
//! A coordinator reaches the vnode of partition `p` on node `X` through `X`'s **Replica**
//! actor, which joins the process group `ringkv.replica.{X}` (our own node name, never a
//! ractor NodeId: those change on reconnect). Requests are the typed operations of
//! [`crate::rpc`]; between nodes they travel as `Vec<u8>`: a version byte and named msgpack of
//! an [`Envelope`] holding the [`ReplicaRequest`], and the answer likewise, so that the format
//! can grow and a frame that does not decode becomes an error answer
//! ([`ReplicaFailure::Malformed`]) instead of a panic or a silent drop. The Replica actor hands
//! each request to a task, so one slow write does not hold up the others; it serves at most
//! [`MAX_SERVING`] at once and answers the rest [`ReplicaFailure::Overloaded`].
//!
//! [`Peers`] is the sending side over ractor_cluster: a call to this node runs the typed
//! request on the local vnode or hint store without encoding it; a call to another node is
//! refused before it is sent if it is over the cluster message limit, and waits for room in
//! the per-peer byte budget ([`PeerBudgets`]).

use crate::cluster_view::ClusterView;
use crate::directory::VNodeDirectory;
use crate::stats::NodeStats;
use crate::vnode::VNodeMsg;
use crate::wire::{decode, encode};
use ractor::rpc::CallResult;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use ractor_cluster::RactorClusterMessage;
use ringkv_storage::{DataDir, DvvSet, HintStore, Partition, StorageError};
use serde_bytes::ByteBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use crate::rpc::{Envelope, ReplicaError, ReplicaFailure, ReplicaRequest, ReplicaTransport};
use crate::rpc::{Measured, Rpc};

/// Messages of the Replica actor (they cross nodes).
#[derive(RactorClusterMessage)]
pub enum ReplicaMsg {
    /// An encoded [`Envelope`]; the reply is the encoded `Result<R::Response,
    /// ReplicaFailure>` of its request type `R` (see [`crate::rpc`]).
    #[rpc]
    Call(Vec<u8>, RpcReplyPort<Vec<u8>>),
    /// Several requests at once ([`crate::batch`]): an encoded list of [`Envelope`] frames;
    /// the reply is the encoded list of their answer frames, in order (`None` for an answer
    /// left out because the batch's answer would pass the cluster message limit).
    #[rpc]
    Batch(Vec<u8>, RpcReplyPort<Vec<u8>>),
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
    /// Partition `i` at index `i`. Every operation on a partition's data goes through its
    /// vnode ([`Self::directory`]); this is for the partition count and for tests that look
    /// at storage without a vnode.
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
    /// The per-peer sender tasks that batch merges and reads ([`crate::batch`]).
    pub senders: crate::batch::PeerSenders,
    /// This node's transfers (set once the Transfer actor's handle exists), for
    /// `ringkv cluster transfers` asked through another node.
    pub transfers: Arc<crate::transfer::TransferHandle>,
    /// This node's proposer for strong buckets ([`crate::strong`]).
    pub strong: Arc<crate::strong::Proposer>,
}

impl ReplicaContext {
    /// The context of node `name` serving the partitions and hints of `data`, with the limits
    /// of `config` (`request-timeout-ms`, `max-cluster-frame-bytes`, `max-record-bytes`,
    /// `fault-injection`).
    pub fn new(
        name: String,
        data: &DataDir,
        directory: Arc<VNodeDirectory>,
        view: Arc<ClusterView>,
        config: &ringkv_cluster::NodeConfig,
    ) -> Self {
        let stats = Arc::new(NodeStats::default());
        ReplicaContext {
            name,
            directory,
            partitions: data.partitions.clone(),
            hints: data.hints.clone(),
            view,
            stats: stats.clone(),
            fault_injection: config.fault_injection,
            timeout: Duration::from_millis(config.request_timeout_ms),
            max_message_bytes: config.max_cluster_frame_bytes,
            max_batch_bytes: config.record_limit(),
            serving: Arc::new(tokio::sync::Semaphore::new(MAX_SERVING)),
            in_flight: PeerBudgets::new(2 * config.max_cluster_frame_bytes),
            // No more frames than the byte budget admits calls (each counts at least
            // MIN_CALL_BYTES), so a caller that got budget finds room in the queue.
            senders: crate::batch::PeerSenders::new(
                2 * config.max_cluster_frame_bytes / MIN_CALL_BYTES,
                config.max_cluster_frame_bytes,
                stats,
            ),
            transfers: crate::transfer::TransferHandle::new(),
            strong: Arc::new(crate::strong::Proposer::new()),
        }
    }

    /// Partition `p` of this node, bypassing its vnode: only for tests and inspection that
    /// look at storage while the vnode may be down. Operations go through
    /// the vnode (`vnode_call`) instead.
    ///
    /// # Errors
    /// [`StorageError::InvalidArgument`] if `p` is not below the partition count.
    pub fn partition(&self, p: u32) -> Result<&Arc<Partition>, StorageError> {
        self.partitions.get(p as usize).ok_or_else(|| {
            StorageError::InvalidArgument(format!(
                "partition {p} out of range (the node has {})",
                self.partitions.len()
            ))
        })
    }
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
            ReplicaMsg::Batch(bytes, reply) => {
                Self::batch(state, bytes, reply);
                return Ok(());
            }
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
            // None: an injected network partition drops the request, as a cut link would.
            if let Some(answer) = serve_frame(&ctx, &bytes).await {
                let _ = reply.send(answer);
            }
            drop(permit);
        });
        Ok(())
    }
}

impl Replica {
    /// Serves a batch of requests ([`crate::batch::serve_batch`]) in a task, holding one
    /// serving permit per request.
    fn batch(state: &mut ReplicaState, bytes: Vec<u8>, reply: RpcReplyPort<Vec<u8>>) {
        let frames: Vec<ByteBuf> = match decode(&bytes) {
            Ok(frames) => frames,
            Err(e) => {
                tracing::warn!(error = %e, "undecodable batch of replica requests");
                // No answer per request can be made: the callers see a garbled answer.
                let _ = reply.send(encode(&Vec::<Option<ByteBuf>>::new()));
                return;
            }
        };
        let n = frames.len();
        let Ok(permit) = state
            .ctx
            .serving
            .clone()
            .try_acquire_many_owned(n.min(MAX_SERVING) as u32)
        else {
            let _ = reply.send(crate::batch::overloaded(n, MAX_SERVING));
            return;
        };
        let ctx = state.ctx.clone();
        state.tasks.spawn(async move {
            // None: an injected network partition drops the batch, as a cut link would.
            if let Some(answer) = crate::batch::serve_batch(&ctx, frames).await {
                let _ = reply.send(answer);
            }
            drop(permit);
        });
    }
}

/// Serves one frame from another node: decodes its [`Envelope`], runs the request here and
/// encodes the answer. A frame that does not decode is answered
/// [`ReplicaFailure::Malformed`]; an answer over the cluster message limit is replaced by
/// [`ReplicaFailure::TooLarge`] (ractor_cluster would close the session between the two
/// nodes). `None`: the sender is cut off by injected isolation and the request is dropped.
pub(crate) async fn serve_frame(ctx: &Arc<ReplicaContext>, frame: &[u8]) -> Option<Vec<u8>> {
    let answer = match decode::<Envelope>(frame) {
        Ok(envelope) if ctx.view.is_isolated(&envelope.from) => return None,
        Ok(envelope) => envelope.request.serve_encoded(ctx, ctx.timeout).await,
        Err(e) => encode(&Err::<(), _>(ReplicaFailure::Malformed(e))),
    };
    if answer.len() > ctx.max_message_bytes {
        tracing::error!(
            bytes = answer.len(),
            limit = ctx.max_message_bytes,
            "replica answer over the cluster message limit; answering an error instead"
        );
        return Some(encode(&Err::<(), _>(ReplicaFailure::TooLarge {
            bytes: answer.len(),
            limit: ctx.max_message_bytes,
        })));
    }
    Some(answer)
}

/// The frame of `request` from this node to node `node`.
///
/// # Errors
/// [`ReplicaError::TooLarge`] if it is over the cluster message limit: it must not be sent
/// (the receiving side would close the whole session between the two nodes).
pub(crate) fn request_frame<R: Rpc>(
    ctx: &ReplicaContext,
    node: &str,
    request: R,
) -> Result<Vec<u8>, ReplicaError> {
    let frame = encode(&Envelope {
        from: ctx.name.clone(),
        request: request.into_request(),
    });
    if frame.len() > ctx.max_message_bytes {
        return Err(ReplicaError::TooLarge {
            node: node.to_string(),
            bytes: frame.len(),
            limit: ctx.max_message_bytes,
        });
    }
    Ok(frame)
}

/// Decodes node `node`'s answer `frame` to a request of type `R` that was `sent` bytes.
///
/// # Errors
/// [`ReplicaError::Garbled`] if it does not decode; [`ReplicaError::Failed`] with the
/// replica's failure.
pub(crate) fn answer_of<R: Rpc>(
    node: &str,
    frame: &[u8],
    sent: usize,
) -> Result<Measured<R::Response>, ReplicaError> {
    let decoded: Result<R::Response, ReplicaFailure> =
        decode(frame).map_err(|e| ReplicaError::Garbled(node.to_string(), e))?;
    decoded
        .map(|answer| Measured {
            answer,
            sent,
            received: frame.len(),
        })
        .map_err(|e| ReplicaError::Failed(node.to_string(), e))
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
pub(crate) async fn written<T: Send + 'static>(
    start: impl FnOnce(Box<dyn FnOnce(Result<T, StorageError>) + Send>),
) -> Result<T, StorageError> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    start(Box::new(move |r| {
        let _ = tx.send(r);
    }));
    rx.await
        .unwrap_or_else(|_| Err(StorageError::Io("the writer stopped".into())))
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
pub(crate) fn fetch_bounded(
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

/// The Merkle entry hash of a stored key here (`None` if absent).
///
/// # Errors
/// Storage errors.
pub fn entry_hash_of(part: &Partition, stored_key: &[u8]) -> Result<Option<u64>, StorageError> {
    Ok(part.get_stored(stored_key)?.map(|d| {
        ringkv_storage::merkle::entry_hash(stored_key, &ringkv_storage::record::encode(&d))
    }))
}

/// Runs a vnode operation on this node's vnode of `partition`, waiting up to `timeout` for it
/// to be up. `message` makes the vnode message around a reply port; it is called again if the
/// vnode died holding the request before handing it to a blocking thread or the writer
/// (nothing was applied), to send it to the vnode's successor.
///
/// # Errors
/// [`ReplicaFailure::Storage`] with the operation's storage error, or
/// [`StorageError::InvalidArgument`] for a partition out of range;
/// [`ReplicaFailure::VNodeTimeout`] if no vnode answered (or came back up) within `timeout`.
pub(crate) async fn vnode_call<T: Send + 'static>(
    directory: &VNodeDirectory,
    partition: u32,
    timeout: Duration,
    message: impl Fn(RpcReplyPort<Result<T, StorageError>>) -> VNodeMsg,
) -> Result<T, ReplicaFailure> {
    if partition >= directory.partitions() {
        return Err(ReplicaFailure::Storage(StorageError::InvalidArgument(
            format!(
                "partition {partition} out of range (the node has {})",
                directory.partitions()
            ),
        )));
    }
    let deadline = Instant::now() + timeout;
    let mut stale: Option<ActorRef<VNodeMsg>> = None;
    loop {
        let vnode = directory
            .wait_for(partition, stale.as_ref(), deadline)
            .await
            .ok_or(ReplicaFailure::VNodeTimeout(partition))?;
        let left = deadline.saturating_duration_since(Instant::now());
        match vnode.call(&message, Some(left)).await {
            Ok(CallResult::Success(r)) => return r.map_err(ReplicaFailure::Storage),
            Ok(CallResult::Timeout) => return Err(ReplicaFailure::VNodeTimeout(partition)),
            Ok(CallResult::SenderError) | Err(_) => stale = Some(vnode),
        }
    }
}

/// Sends replica operations to any node of the cluster over ractor_cluster, this one included:
/// the [`ReplicaTransport`] of a running node.
#[derive(Clone)]
pub struct Peers {
    /// This node's name.
    pub local: String,
    /// What serving needs, for calls to this node.
    pub ctx: Arc<ReplicaContext>,
}

impl Peers {
    async fn call_remote<R: Rpc>(
        &self,
        node: &str,
        request: R,
        timeout: Duration,
    ) -> Result<Measured<R::Response>, ReplicaError> {
        if self.ctx.view.is_isolated(node) {
            return Err(ReplicaError::Unreachable(node.to_string()));
        }
        let member = ractor::pg::get_members(&replica_group(node))
            .into_iter()
            .next()
            .ok_or_else(|| ReplicaError::Unreachable(node.to_string()))?;
        let frame = request_frame(&self.ctx, node, request)?;
        let sent = frame.len();
        let started = Instant::now();
        let permit = self.ctx.in_flight.acquire(node, sent, timeout).await?;
        let deadline = tokio::time::Instant::from_std(started + timeout);
        // Small frequent requests share a cluster message with the others queued for that
        // node; one whose answer did not fit in the batch's answer comes back to go alone.
        let frame = if R::BATCHED && sent <= crate::batch::MAX_BATCHED_FRAME {
            let batched = self.ctx.senders.submit(node, frame, deadline)?;
            match tokio::time::timeout_at(deadline, batched).await {
                Ok(Ok(crate::batch::Batched::Answer(answer))) => {
                    drop(permit);
                    return answer_of::<R>(node, &answer, sent);
                }
                Ok(Ok(crate::batch::Batched::Alone(frame))) => frame,
                Ok(Ok(crate::batch::Batched::Failed(e))) => return Err(e),
                Ok(Err(_)) => return Err(ReplicaError::Unreachable(node.to_string())),
                Err(_) => return Err(ReplicaError::Timeout(node.to_string())),
            }
        } else {
            frame
        };
        let actor: ActorRef<ReplicaMsg> = member.into();
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let answer = match actor
            .call(|reply| ReplicaMsg::Call(frame, reply), Some(left))
            .await
        {
            Ok(CallResult::Success(answer)) => answer,
            Ok(CallResult::Timeout) => return Err(ReplicaError::Timeout(node.to_string())),
            Ok(CallResult::SenderError) | Err(_) => {
                return Err(ReplicaError::Unreachable(node.to_string()))
            }
        };
        drop(permit);
        answer_of::<R>(node, &answer, sent)
    }
}

impl ReplicaTransport for Peers {
    fn local(&self) -> &str {
        &self.local
    }

    fn context(&self) -> &Arc<ReplicaContext> {
        &self.ctx
    }

    /// True if `node` is this node, or has a live session with it, is not suspected by the
    /// failure detector and is not cut off by injected isolation.
    fn reachable(&self, node: &str) -> bool {
        node == self.local
            || (!ractor::pg::get_members(&replica_group(node)).is_empty()
                && self.ctx.view.is_up(node))
    }

    async fn call_sized<R: Rpc>(
        &self,
        node: &str,
        request: R,
        timeout: Duration,
    ) -> Result<Measured<R::Response>, ReplicaError> {
        if node == self.local {
            return crate::rpc::serve_local(&self.ctx, node, request, timeout).await;
        }
        self.call_remote(node, request, timeout).await
    }
}
