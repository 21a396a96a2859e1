//! The Coordinator: one short-lived actor per client request.
//!
//! It finds the vnode of the key's partition, sends it the request with the time left before
//! the request's deadline, and hands the answer back to whoever started it. If the vnode dies
//! while holding the request, the coordinator waits for the restarted vnode and tries again
//! within the same deadline. Its message type is local-only (`RactorMessage`), so spawning one
//! costs no cluster traffic (STACK-NOTES). It is never restarted: a failed request is answered
//! with an error and the client decides.

use crate::directory::VNodeDirectory;
use crate::vnode::VNodeMsg;
use ractor::rpc::CallResult;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use ractor_cluster::RactorMessage;
use ringkv_storage::{DvvSet, StorageError, VersionVector};
use std::sync::Arc;
use std::time::{Duration, Instant};
use thiserror::Error;
use tokio::sync::oneshot;

/// Why a request failed.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum KvError {
    /// Invalid input or a storage failure; see [`StorageError`].
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// The value is over the node's `max-value-bytes`.
    #[error("value is {len} bytes, over the maximum of {max} bytes (max-value-bytes)")]
    ValueTooLarge {
        /// Length given, bytes.
        len: usize,
        /// Largest allowed, bytes.
        max: usize,
    },
    /// No answer before the request's deadline.
    #[error("request timed out after {ms} ms")]
    Timeout {
        /// The request's time limit, ms.
        ms: u64,
    },
    /// The node is shutting down or its supervision tree has stopped.
    #[error("the node is shutting down")]
    ShuttingDown,
    /// A fault-injection request reached a node that runs without `fault-injection`.
    #[error("fault injection is disabled on this node (start it with --fault-injection)")]
    FaultInjectionDisabled,
}

/// A request as the coordinator executes it.
#[derive(Clone, Debug)]
pub enum KvRequest {
    /// Read the key's state.
    Get {
        /// Bucket name.
        bucket: Vec<u8>,
        /// Key.
        key: Vec<u8>,
    },
    /// Write (`value: Some`) or delete (`value: None`) with a causal context.
    Update {
        /// Bucket name.
        bucket: Vec<u8>,
        /// Key.
        key: Vec<u8>,
        /// What the client read.
        context: VersionVector,
        /// New value or `None` for a tombstone.
        value: Option<Vec<u8>>,
    },
}

/// Arguments of a [`Coordinator`].
pub struct CoordinatorArgs {
    /// What to do.
    pub request: KvRequest,
    /// The key's partition.
    pub partition: u32,
    /// Where the vnodes are.
    pub directory: Arc<VNodeDirectory>,
    /// Time limit of the whole request.
    pub timeout: Duration,
    /// Receives the key's state after the request (`None`: a read of a key never written).
    pub reply: oneshot::Sender<Result<Option<DvvSet>, KvError>>,
}

/// The Coordinator takes no messages: it does its work on start and stops.
#[derive(RactorMessage)]
pub enum CoordinatorMsg {}

/// Per-request coordinator actor.
pub struct Coordinator;

impl Actor for Coordinator {
    type Msg = CoordinatorMsg;
    type State = Option<CoordinatorArgs>;
    type Arguments = CoordinatorArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        args: CoordinatorArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(Some(args))
    }

    async fn post_start(
        &self,
        myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        if let Some(args) = state.take() {
            let result = run(&args).await;
            let _ = args.reply.send(result);
        }
        myself.stop(None);
        Ok(())
    }
}

async fn run(args: &CoordinatorArgs) -> Result<Option<DvvSet>, KvError> {
    let deadline = Instant::now() + args.timeout;
    let timeout = KvError::Timeout {
        ms: args.timeout.as_millis() as u64,
    };
    let mut stale: Option<ActorRef<VNodeMsg>> = None;
    loop {
        let vnode = args
            .directory
            .wait_for(args.partition, stale.as_ref(), deadline)
            .await
            .ok_or_else(|| timeout.clone())?;
        let left = deadline.saturating_duration_since(Instant::now());
        let answer = match &args.request {
            KvRequest::Get { bucket, key } => vnode
                .call(
                    |reply| VNodeMsg::Get {
                        bucket: bucket.clone(),
                        key: key.clone(),
                        reply,
                    },
                    Some(left),
                )
                .await
                .map_err(|_| ()),
            KvRequest::Update {
                bucket,
                key,
                context,
                value,
            } => vnode
                .call(
                    |reply| VNodeMsg::Update {
                        bucket: bucket.clone(),
                        key: key.clone(),
                        context: context.clone(),
                        value: value.clone(),
                        timestamp_ms: now_ms(),
                        reply,
                    },
                    Some(left),
                )
                .await
                .map(|r| match r {
                    CallResult::Success(r) => CallResult::Success(r.map(Some)),
                    CallResult::Timeout => CallResult::Timeout,
                    CallResult::SenderError => CallResult::SenderError,
                })
                .map_err(|_| ()),
        };
        match answer {
            Ok(CallResult::Success(r)) => return r.map_err(KvError::from),
            Ok(CallResult::Timeout) => return Err(timeout),
            // The vnode died with the request (before handing a write to the writer thread,
            // so nothing was applied): wait for its successor and try again.
            Ok(CallResult::SenderError) | Err(()) => stale = Some(vnode),
        }
    }
}

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
