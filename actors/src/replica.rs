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

use crate::directory::VNodeDirectory;
use crate::vnode::VNodeMsg;
use crate::wire::{decode, encode};
use ractor::rpc::CallResult;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use ractor_cluster::RactorClusterMessage;
use ringkv_storage::{DvvSet, StorageError, VersionVector};
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use thiserror::Error;

/// One operation on one replica of a partition.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum ReplicaRequest {
    /// Read the replica's state of a key.
    Get {
        /// Partition of the key.
        partition: u32,
        /// Bucket.
        bucket: ByteBuf,
        /// Key.
        key: ByteBuf,
    },
    /// Coordinate a client write here: this replica creates the new dot.
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
    /// Merge a state made elsewhere (replication, read repair).
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
}

impl ReplicaRequest {
    fn partition(&self) -> u32 {
        match self {
            ReplicaRequest::Get { partition, .. }
            | ReplicaRequest::Update { partition, .. }
            | ReplicaRequest::Merge { partition, .. } => *partition,
        }
    }
}

/// The answer of a replica: the key's state after the operation (`None`: never written
/// here), or the storage error.
pub type ReplicaResponse = Result<Option<DvvSet>, StorageError>;

/// Why a replica did not answer.
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
}

/// Messages of the Replica actor (they cross nodes).
#[derive(RactorClusterMessage)]
pub enum ReplicaMsg {
    /// An encoded [`ReplicaRequest`]; the reply is an encoded [`ReplicaResponse`].
    #[rpc]
    Call(Vec<u8>, RpcReplyPort<Vec<u8>>),
}

/// Process group of node `name`'s Replica actor.
pub fn replica_group(name: &str) -> String {
    format!("ringkv.replica.{name}")
}

/// Arguments of the Replica actor.
pub struct ReplicaArgs {
    /// This node's name.
    pub name: String,
    /// Where the local vnodes are.
    pub directory: Arc<VNodeDirectory>,
    /// Longest a request waits for a restarting vnode.
    pub timeout: Duration,
}

/// The node's endpoint for replica operations from other nodes.
pub struct Replica;

impl Actor for Replica {
    type Msg = ReplicaMsg;
    type State = ReplicaArgs;
    type Arguments = ReplicaArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: ReplicaArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        ractor::pg::join(replica_group(&args.name), vec![myself.get_cell()]);
        Ok(args)
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let ReplicaMsg::Call(bytes, reply) = message;
        let directory = state.directory.clone();
        let timeout = state.timeout;
        tokio::spawn(async move {
            let answer: ReplicaResponse = match decode::<ReplicaRequest>(&bytes) {
                Ok(request) => local_call(&directory, request, timeout)
                    .await
                    .unwrap_or_else(|e| Err(StorageError::Io(e.to_string()))),
                Err(e) => Err(StorageError::Io(format!(
                    "undecodable replica request: {e}"
                ))),
            };
            let _ = reply.send(encode(&answer));
        });
        Ok(())
    }
}

/// Runs `request` on this node's vnode, waiting up to `timeout` for it to be up.
async fn local_call(
    directory: &VNodeDirectory,
    request: ReplicaRequest,
    timeout: Duration,
) -> Result<ReplicaResponse, ReplicaError> {
    let deadline = Instant::now() + timeout;
    let p = request.partition();
    let mut stale: Option<ActorRef<VNodeMsg>> = None;
    loop {
        let vnode = directory
            .wait_for(p, stale.as_ref(), deadline)
            .await
            .ok_or_else(|| ReplicaError::Timeout("local".into()))?;
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
        };
        match answer {
            Ok(CallResult::Success(r)) => return Ok(r),
            Ok(CallResult::Timeout) => return Err(ReplicaError::Timeout("local".into())),
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
    /// This node's vnodes.
    pub directory: Arc<VNodeDirectory>,
    /// The cluster view, for the failure detector's verdicts.
    pub view: Arc<crate::cluster_view::ClusterView>,
}

impl Peers {
    /// Runs `request` on node `node`'s replica, within `timeout`.
    ///
    /// # Errors
    /// [`ReplicaError`] if the node cannot be reached or does not answer in time; storage
    /// errors come back inside the [`ReplicaResponse`].
    pub async fn call(
        &self,
        node: &str,
        request: ReplicaRequest,
        timeout: Duration,
    ) -> Result<ReplicaResponse, ReplicaError> {
        if node == self.local {
            return local_call(&self.directory, request, timeout).await;
        }
        let member = ractor::pg::get_members(&replica_group(node))
            .into_iter()
            .next()
            .ok_or_else(|| ReplicaError::Unreachable(node.to_string()))?;
        let actor: ActorRef<ReplicaMsg> = member.into();
        let bytes = encode(&request);
        match actor
            .call(|reply| ReplicaMsg::Call(bytes, reply), Some(timeout))
            .await
        {
            Ok(CallResult::Success(answer)) => {
                decode(&answer).map_err(|e| ReplicaError::Garbled(node.to_string(), e))
            }
            Ok(CallResult::Timeout) => Err(ReplicaError::Timeout(node.to_string())),
            Ok(CallResult::SenderError) | Err(_) => {
                Err(ReplicaError::Unreachable(node.to_string()))
            }
        }
    }

    /// True if `node` is this node, or has a live session with it and is not suspected by
    /// the failure detector.
    pub fn reachable(&self, node: &str) -> bool {
        node == self.local
            || (!ractor::pg::get_members(&replica_group(node)).is_empty() && self.view.is_up(node))
    }
}
