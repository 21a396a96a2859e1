//! The HintedHandoff actor: delivers the hints this node keeps for unreachable replicas
//! (Dynamo, section 4.6).
//!
//! Every `handoff-interval-ms` it lists the owners this node holds hints for. For each owner
//! that is reachable again it reads hints in batches of [`BATCH`], oldest first, sends each
//! to the owner as a merge (the owner's vnode answers only once the record is durable), and
//! then deletes, durably, exactly the hints the owner acknowledged. A hint stored while a
//! batch is in flight has another id and is never deleted by mistake. A round that is still
//! running when the next tick comes is left to finish.

use crate::replica::{Peers, ReplicaRequest};
use crate::stats::add;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use ractor_cluster::RactorMessage;
use ringkv_storage::{HintId, StorageError};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::task::JoinSet;

/// Hints read and sent per batch.
pub const BATCH: usize = 256;
/// Merges in flight to one owner.
pub const IN_FLIGHT: usize = 64;

/// Messages of the HintedHandoff actor (local only).
#[derive(RactorMessage)]
pub enum HandoffMsg {
    /// Timer: run a delivery round unless one is running.
    Tick,
    /// Fault injection: panic, so that supervision can be tested.
    InjectPanic,
}

/// Arguments of the HintedHandoff actor.
pub struct HandoffArgs {
    /// How other nodes are reached; its context holds the hint store.
    pub peers: Peers,
    /// Period of delivery rounds.
    pub interval: Duration,
}

/// State of the HintedHandoff actor.
pub struct HandoffState {
    args: HandoffArgs,
    running: Arc<AtomicBool>,
}

/// The HintedHandoff actor.
pub struct HintedHandoff;

impl Actor for HintedHandoff {
    type Msg = HandoffMsg;
    type State = HandoffState;
    type Arguments = HandoffArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: HandoffArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        myself.send_interval(args.interval, || HandoffMsg::Tick);
        Ok(HandoffState {
            args,
            running: Arc::new(AtomicBool::new(false)),
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            HandoffMsg::Tick => {
                if state.running.swap(true, Ordering::AcqRel) {
                    return Ok(());
                }
                let (peers, running) = (state.args.peers.clone(), state.running.clone());
                tokio::spawn(async move {
                    if let Err(e) = deliver_all(&peers).await {
                        tracing::warn!(error = %e, "hinted handoff round failed");
                    }
                    running.store(false, Ordering::Release);
                });
            }
            HandoffMsg::InjectPanic => panic!("hinted handoff: injected panic"),
        }
        Ok(())
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StorageError> + Send + 'static,
) -> Result<T, StorageError> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| Err(StorageError::Io(format!("storage task failed: {e}"))))
}

/// One delivery round over every owner this node holds hints for; returns how many hints
/// were delivered.
///
/// # Errors
/// A storage error of the hint store.
pub async fn deliver_all(peers: &Peers) -> Result<u64, StorageError> {
    let hints = peers.ctx.hints.clone();
    let owners = blocking(move || hints.owners()).await?;
    let mut delivered = 0;
    for (owner, pending) in owners {
        if !peers.reachable(&owner) {
            continue;
        }
        let started = Instant::now();
        let n = deliver_to(peers, &owner).await?;
        delivered += n;
        if n > 0 {
            tracing::info!(%owner, delivered = n, pending_before = pending, elapsed_ms = started.elapsed().as_millis() as u64, "hinted handoff");
        }
    }
    Ok(delivered)
}

async fn deliver_to(peers: &Peers, owner: &str) -> Result<u64, StorageError> {
    let mut delivered = 0;
    loop {
        let (hints, o) = (peers.ctx.hints.clone(), owner.to_string());
        let batch = blocking(move || hints.batch(&o, BATCH)).await?;
        if batch.is_empty() {
            return Ok(delivered);
        }
        let total = batch.len();
        let mut acked: Vec<HintId> = Vec::with_capacity(total);
        let mut tasks = JoinSet::new();
        for (id, hint) in batch {
            while tasks.len() >= IN_FLIGHT {
                if let Some(Ok(Some(id))) = tasks.join_next().await {
                    acked.push(id);
                }
            }
            let (peers, owner) = (peers.clone(), owner.to_string());
            tasks.spawn(async move {
                let merge = ReplicaRequest::Merge {
                    partition: hint.partition,
                    bucket: hint.bucket,
                    key: hint.key,
                    record: hint.record,
                };
                match peers.call(&owner, merge, Duration::from_secs(5)).await {
                    Ok(Ok(_)) => Some(id),
                    _ => None,
                }
            });
        }
        while let Some(r) = tasks.join_next().await {
            if let Ok(Some(id)) = r {
                acked.push(id);
            }
        }
        let n = acked.len();
        if n > 0 {
            let hints = peers.ctx.hints.clone();
            let (tx, rx) = tokio::sync::oneshot::channel();
            hints.remove(
                acked,
                Box::new(move |r| {
                    let _ = tx.send(r);
                }),
            );
            rx.await
                .unwrap_or_else(|_| Err(StorageError::Io("the hint writer stopped".into())))?;
            add(&peers.ctx.stats.hints.delivered, n as u64);
            delivered += n as u64;
        }
        if n < total {
            // The owner failed some merges: try again next round.
            return Ok(delivered);
        }
    }
}
