//! The VNode actor: serves one partition.
//!
//! Reads run on the actor (an LMDB read transaction takes microseconds and never waits for
//! the writer); writes are handed to the partition's writer thread together with the reply
//! port, so the vnode never waits for a commit and keeps serving while a batch is being made
//! durable. The partition (its LMDB env and writer) is owned by the
//! [`VNodeSupervisor`](crate::vnode_supervisor::VNodeSupervisor), so a restarted vnode serves
//! the same env.

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use ractor_cluster::RactorMessage;
use ringkv_storage::{DvvSet, Partition, StorageError, VersionVector};
use std::sync::Arc;

/// Messages of a vnode.
#[derive(RactorMessage)]
pub enum VNodeMsg {
    /// Read a key's state; `None` if never written here.
    Get {
        /// Bucket name, 1 to 64 bytes.
        bucket: Vec<u8>,
        /// Key, 1 to 442 bytes.
        key: Vec<u8>,
        /// Where the state goes.
        reply: RpcReplyPort<Result<Option<DvvSet>, StorageError>>,
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
        /// New value, or `None` for a tombstone.
        value: Option<Vec<u8>>,
        /// Coordinator's wall clock, ms since the Unix epoch.
        timestamp_ms: u64,
        /// Where the key's new state goes.
        reply: RpcReplyPort<Result<DvvSet, StorageError>>,
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
        /// Where the merged state goes.
        reply: RpcReplyPort<Result<DvvSet, StorageError>>,
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
                timestamp_ms,
                reply,
            } => partition.update(
                &bucket,
                &key,
                context,
                value,
                timestamp_ms,
                Box::new(move |r| {
                    let _ = reply.send(r);
                }),
            ),
            VNodeMsg::Merge {
                bucket,
                key,
                record,
                reply,
            } => partition.merge(
                &bucket,
                &key,
                record,
                Box::new(move |r| {
                    let _ = reply.send(r);
                }),
            ),
            VNodeMsg::InjectPanic => {
                panic!("vnode {}: injected panic", partition.id())
            }
        }
        Ok(())
    }
}
