//! The HintedHandoff actor: delivers the hints this node keeps for unreachable replicas
//! (Dynamo, section 4.6).
//!
//! Every `handoff-interval-ms` it lists the owners this node holds hints for. For each owner
//! that is reachable again it reads hints in batches of [`BATCH`], oldest first, sends them to
//! the owner as one merge request per partition (the owner answers only once the records are
//! durable, in one group commit), and then deletes, durably, exactly the hints the owner
//! acknowledged. Hints for an owner that no live layout version places any more (it left, or
//! was replaced or removed) are never sent to it: they are re-routed to the partition's current
//! replicas (every reachable node of its read set and of the other live versions' sets; a hint
//! is deleted once all of those that are reachable, and at least one, merged it). A hint stored while a
//! batch is in flight has another id and is never deleted by mistake. A round that is still
//! running when the next tick comes is left to finish.

use crate::replica::{blocking, Peers};
use crate::rpc::{MergeStored, ReplicaTransport};
use crate::stats::add;
use ringkv_storage::{keys, DvvSet, HintId, StorageError};
use serde_bytes::ByteBuf;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::task::JoinSet;

/// Hints read per batch.
pub const BATCH: usize = 1024;
/// Merge requests (one per partition of a batch, bounded in size) in flight to one owner.
pub const IN_FLIGHT: usize = 16;
/// Time limit of one merge request.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// The HintedHandoff actor: a [`Periodic`](crate::periodic::Periodic) run of [`Handoff`].
pub type HintedHandoff = crate::periodic::Periodic<Handoff>;

/// The hinted handoff job: one delivery round per run.
pub struct Handoff<T: ReplicaTransport = Peers> {
    /// How other nodes are reached; its context holds the hint store.
    pub peers: T,
}

impl<T: ReplicaTransport> crate::periodic::PeriodicJob for Handoff<T> {
    const NAME: &'static str = "hinted handoff";

    async fn run(self: Arc<Self>) {
        if let Err(e) = deliver_all(&self.peers).await {
            tracing::warn!(error = %e, "hinted handoff round failed");
        }
    }
}

/// One delivery round over every owner this node holds hints for; returns how many hints
/// were delivered.
///
/// # Errors
/// A storage error of the hint store.
pub async fn deliver_all<T: ReplicaTransport>(peers: &T) -> Result<u64, StorageError> {
    let hints = peers.context().hints.clone();
    let owners = blocking(move || hints.owners()).await?;
    let mut delivered = 0;
    for (owner, pending) in owners {
        let state = peers.context().view.snapshot();
        let placed = state
            .live_layouts()
            .any(|c| c.layout.nodes().iter().any(|n| n.name == owner));
        let started = Instant::now();
        let n = if state.is_removed(&owner) || (state.layout.is_some() && !placed) {
            // The owner left the layout: the hints go to the partition's current replicas
            // (every reachable one of its read set, and the other live versions' sets).
            let route = move |p: u32| -> Vec<String> {
                let sets = state.replica_sets(p);
                let mut all = sets.read;
                for set in sets.also_write {
                    all.extend(
                        set.into_iter()
                            .filter(|n| !all.contains(n))
                            .collect::<Vec<_>>(),
                    );
                }
                all
            };
            deliver_to(peers, &owner, &route).await?
        } else if peers.reachable(&owner) {
            let o = owner.clone();
            deliver_to(peers, &owner, &move |_| vec![o.clone()]).await?
        } else {
            continue;
        };
        delivered += n;
        if n > 0 {
            tracing::info!(%owner, delivered = n, pending_before = pending, elapsed_ms = started.elapsed().as_millis() as u64, "hinted handoff");
        }
    }
    Ok(delivered)
}

/// Delivers the hints kept for `owner`, each to the nodes `route` names for its partition
/// (`owner` itself, or a departed owner's successors); a hint is deleted once every reachable
/// node of its route, and at least one, merged it.
async fn deliver_to<T: ReplicaTransport>(
    peers: &T,
    owner: &str,
    route: &(dyn Fn(u32) -> Vec<String> + Send + Sync),
) -> Result<u64, StorageError> {
    let mut delivered = 0;
    loop {
        let (hints, o) = (peers.context().hints.clone(), owner.to_string());
        let batch = blocking(move || hints.batch(&o, BATCH)).await?;
        if batch.is_empty() {
            return Ok(delivered);
        }
        let total = batch.len();
        // One merge request per partition (bounded in size), so that the owner commits each
        // partition's hints in one group commit.
        let mut by_partition: BTreeMap<u32, Vec<(HintId, ByteBuf, DvvSet)>> = BTreeMap::new();
        let mut acked: Vec<HintId> = Vec::with_capacity(total);
        let mut malformed: Vec<HintId> = Vec::new();
        for (id, hint) in batch {
            match keys::storage_key(&hint.bucket, &hint.key) {
                Ok(stored) => by_partition.entry(hint.partition).or_default().push((
                    id,
                    ByteBuf::from(stored),
                    hint.record,
                )),
                Err(e) => {
                    tracing::error!(%owner, error = %e, "dropping a hint with an invalid key");
                    malformed.push(id);
                }
            }
        }
        let mut tasks = JoinSet::new();
        for (partition, hints) in by_partition {
            let budget = peers.context().max_batch_bytes;
            for chunk in crate::repair::by_size(hints, budget, |(_, k, r)| (k.as_slice(), r)) {
                let (chunk_ids, chunk): (Vec<HintId>, Vec<(ByteBuf, DvvSet)>) =
                    chunk.into_iter().map(|(id, k, r)| (id, (k, r))).unzip();
                while tasks.len() >= IN_FLIGHT {
                    if let Some(Ok(Some(done))) = tasks.join_next().await {
                        acked.extend(done);
                    }
                }
                let (peers, owner) = (peers.clone(), owner.to_string());
                let targets: Vec<String> = route(partition)
                    .into_iter()
                    .filter(|t| peers.reachable(t))
                    .collect();
                tasks.spawn(async move {
                    if targets.is_empty() {
                        return None;
                    }
                    for target in targets {
                        let merge = MergeStored {
                            partition,
                            entries: chunk.clone(),
                        };
                        if let Err(e) = peers.call(&target, merge, CALL_TIMEOUT).await {
                            tracing::warn!(%owner, %target, partition, error = %e, "hinted handoff: a merge failed; retrying next round");
                            return None;
                        }
                    }
                    Some(chunk_ids)
                });
            }
        }
        while let Some(r) = tasks.join_next().await {
            if let Ok(Some(done)) = r {
                acked.extend(done);
            }
        }
        let n = acked.len();
        acked.extend(malformed);
        if !acked.is_empty() {
            let hints = peers.context().hints.clone();
            let (tx, rx) = tokio::sync::oneshot::channel();
            hints.remove(
                acked,
                Box::new(move |r| {
                    let _ = tx.send(r);
                }),
            );
            rx.await
                .unwrap_or_else(|_| Err(StorageError::Io("the hint writer stopped".into())))?;
            add(&peers.context().stats.hints.delivered, n as u64);
            delivered += n as u64;
        }
        if n < total {
            // The owner failed some merges: try again next round.
            return Ok(delivered);
        }
    }
}
