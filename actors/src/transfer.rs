//! The Transfer actor: a node that gains a partition replica after a layout change pulls it
//! from the nodes that hold complete copies, in bounded, resumable, throttled chunks, and
//! verifies it before it counts as moved.
//!
//! The mechanism is Riak's ownership handoff turned around (the receiver pulls, as
//! Cassandra's bootstrap streaming and Garage's table sync do): the receiving node drives the
//! transfer, so a crash of either side only costs the chunk in flight.
//!
//! # One task
//!
//! A [`TransferTask`] says "this node must receive partition `p` for layout `version`; these
//! nodes hold complete copies". Its runner:
//!
//! 1. **Streams**: asks the first reachable source for the partition's records in key order
//!    ([`rpc::ScanChunk`]: at most `chunk_bytes` per answer, the node's `max-record-bytes`
//!    batch bound by default, so no cluster message comes near ractor_cluster's 16 MiB frame
//!    limit), merges each chunk into the local vnode durably ([`VNodeMsg::MergeMany`], one
//!    group commit), and only **then** persists its resume point in the system store under
//!    `transfer/{version}/{partition}`. A kill -9, a node restart or an actor restart resumes
//!    after the last merged chunk. Positions are `[segment][stored key]`, the same order on
//!    every replica (`ringkv_storage::ScanChunk`), so when a source fails mid-stream the
//!    runner continues from the same position on the next source; records merge by version,
//!    so a chunk merged twice changes nothing.
//! 2. **Verifies**: Merkle exchanges ([`repair::exchange_scoped`] with
//!    [`ExchangeScope::AllKeys`]) with every reachable source, each repairing both sides; the
//!    transfer is verified once a majority of the sources exchanged successfully (see
//!    `verify`: a write acknowledged under the old layout is on a majority's worth of its
//!    replicas). Writes that arrive meanwhile go to both sides through the coordinator (the
//!    layout keeps the old replica set live), so under a quiet partition the Merkle roots of
//!    both sides are then equal, and under load they differ only by writes in flight.
//! 3. **Strong keys**: [`crate::strong::carry_over`] runs an identity Paxos round, with joint
//!    quorums, on every key of a strong bucket that a majority of the old replicas lists, so
//!    the new replica set holds each register's value on a majority before the old set is
//!    retired (strong buckets' acceptor state is never copied from one replica).
//! 4. **Done**: persists the done mark under the same key, then the actor calls
//!    [`TransferEvents::done`].
//!
//! A failure (no source reachable, a local storage error, a verification that does not
//! converge) shows as [`TransferState::Failed`] in [`TransferMsg::Status`] and is retried with
//! exponential backoff from [`RETRY_MIN`] up to [`RETRY_MAX`], for as long as the task stays
//! wanted; the retry resumes from the persisted point.
//!
//! # Bounds
//!
//! At most `transfer-concurrency` tasks run at once; the others are queued (the queue is the
//! set of wanted tasks: no unbounded channel). Every record pulled, by every task, first takes
//! its bytes from one token bucket of `transfer-max-bytes-per-sec` (bursts of a tenth of a
//! second's worth), so the node's incoming transfer rate is bounded whatever the
//! concurrency. Each task has at most one chunk being merged and one being fetched (the
//! next one, asked for while the current one commits), so a task holds at most two chunks.
//!
//! # Who tells it what to do
//!
//! The node sends [`TransferMsg::Want`] with the full set of tasks it should run now, again on
//! every change (idempotent), through its [`TransferHandle`], which remembers the last set for
//! the next incarnation of the actor after a restart. A task absent from the latest set is
//! cancelled (its runner is aborted; its resume point stays). A running attempt keeps the
//! sources it started with; the next attempt takes the new ones, and a failed task waiting
//! for its retry is retried at once when its sources change. A task already done is not
//! redone, and [`TransferEvents::done`] is called for it again whenever it appears in a
//! Want, so a restarted node reports it again.

use crate::repair::{self, ExchangeScope};
use crate::replica::{blocking, vnode_call};
use crate::rpc::{self, ReplicaTransport};
use crate::vnode::VNodeMsg;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use ractor_cluster::RactorMessage;
use ringkv_storage::{DvvSet, StorageError, SystemStore};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

mod task;
pub use task::progress_key;
use task::*;

/// Most bytes of one chunk (a record larger than this travels alone): small enough that a
/// chunk never holds heartbeats and client traffic on the same node-pair connection for long.
pub const CHUNK_BYTES: usize = 1 << 20;
/// Time limit of one request of a transfer (a chunk, a stats call, a local merge).
pub const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// First retry delay of a failed task; it doubles with each failure in a row.
pub const RETRY_MIN: Duration = Duration::from_millis(500);
/// Longest retry delay of a failed task.
pub const RETRY_MAX: Duration = Duration::from_secs(30);
/// Version byte of a persisted transfer progress record.
const PROGRESS_V1: u8 = 1;

/// "This node must receive partition `partition` for layout `version`."
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransferTask {
    /// The layout version that gives this node the partition.
    pub version: u64,
    /// The partition.
    pub partition: u32,
    /// Node names known to hold complete copies of the partition, in preference order. This
    /// node's own name is skipped if present.
    pub sources: Vec<String>,
}

/// Where a transfer stands, as [`TransferMsg::Status`] shows it (serialized in snake_case:
/// `"queued"`, `{"failed": {"reason": ".."}}`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TransferState {
    /// Wanted, waiting for a free slot (`transfer-concurrency`).
    Queued,
    /// Pulling chunks from a source.
    Streaming,
    /// All chunks merged; Merkle exchanges with the sources until they agree.
    Verifying,
    /// Streamed, verified and recorded durably.
    Done,
    /// The last attempt failed; it is retried after a backoff.
    Failed {
        /// Why, with the sources' errors.
        reason: String,
    },
}

/// One transfer in [`TransferMsg::Status`] (for `ringkv cluster transfers`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransferRow {
    /// Layout version.
    pub version: u64,
    /// Partition.
    pub partition: u32,
    /// The source streamed from now (or last; empty before the first attempt).
    pub from: String,
    /// This node.
    pub to: String,
    /// Bytes of records merged here so far, across restarts (LMDB key plus record bytes, as
    /// the source's partition stats count them).
    pub bytes_sent: u64,
    /// Bytes the source held when the stream started (0 if it did not say); writes made
    /// during the transfer may take `bytes_sent` past it.
    pub bytes_total: u64,
    /// Keys merged here so far, across restarts.
    pub keys: u64,
    /// Bytes already merged by an earlier run when this node (or its Transfer actor) took the
    /// task up: what a restart did not fetch again (0 for a task started fresh).
    #[serde(default)]
    pub resumed_bytes: u64,
    /// Where it stands.
    pub state: TransferState,
}

/// How the Transfer actor reports completed transfers (the node raises its sync tracker).
pub trait TransferEvents: Send + Sync + 'static {
    /// Partition `partition` of layout `version` is streamed, verified and durably recorded
    /// here. Called again for a task already done whenever it appears in a
    /// [`TransferMsg::Want`]: implementations must be idempotent.
    fn done(&self, version: u64, partition: u32);
}

/// [`TransferEvents`] that only log (a node whose layout is not wired to transfers yet).
#[derive(Clone, Copy, Debug, Default)]
pub struct LogEvents;

impl TransferEvents for LogEvents {
    fn done(&self, version: u64, partition: u32) {
        tracing::info!(version, partition, "partition transfer done");
    }
}

/// Settings of the Transfer actor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TransferConfig {
    /// Most tasks running at once (`transfer-concurrency`, at least 1).
    pub concurrency: usize,
    /// Bytes per second all tasks together may pull (`transfer-max-bytes-per-sec`, at
    /// least 1).
    pub max_bytes_per_sec: u64,
    /// Budget of one chunk, bytes (LMDB key plus record bytes of its entries); the source
    /// caps it at its own `max-record-bytes`.
    pub chunk_bytes: usize,
}

impl TransferConfig {
    /// The settings of a node: `transfer-concurrency`, `transfer-max-bytes-per-sec`, and
    /// chunks of [`CHUNK_BYTES`], or `max-record-bytes` (the batch bound of every replica
    /// message) if that is smaller.
    pub fn of(config: &ringkv_cluster::NodeConfig) -> Self {
        Self {
            concurrency: config.transfer_concurrency.max(1),
            max_bytes_per_sec: config.transfer_max_bytes_per_sec.max(1),
            chunk_bytes: config.record_limit().min(CHUNK_BYTES),
        }
    }
}

/// Counters of the transfers of one node since start, across restarts of the actor.
#[derive(Debug, Default)]
pub struct TransferCounters {
    /// Chunks received from sources.
    pub chunks: AtomicU64,
    /// Keys received from sources.
    pub keys: AtomicU64,
    /// Bytes received from sources (LMDB key plus record bytes).
    pub bytes: AtomicU64,
    /// Verification exchanges run.
    pub exchanges: AtomicU64,
}

impl TransferCounters {
    /// `(chunks, keys, bytes, exchanges)` now.
    pub fn snapshot(&self) -> (u64, u64, u64, u64) {
        (
            self.chunks.load(Ordering::Relaxed),
            self.keys.load(Ordering::Relaxed),
            self.bytes.load(Ordering::Relaxed),
            self.exchanges.load(Ordering::Relaxed),
        )
    }
}

/// The node's way to the Transfer actor, whichever incarnation runs: it remembers the last
/// [`TransferMsg::Want`], which a restarted actor takes up in its `pre_start`, and keeps the
/// [`TransferCounters`].
#[derive(Debug, Default)]
pub struct TransferHandle {
    inner: Mutex<HandleInner>,
    counters: TransferCounters,
}

#[derive(Debug, Default)]
struct HandleInner {
    actor: Option<ActorRef<TransferMsg>>,
    want: Vec<TransferTask>,
}

impl TransferHandle {
    /// A handle with no actor and nothing wanted.
    pub fn new() -> Arc<Self> {
        Arc::default()
    }

    /// Sets the full set of tasks this node should run now ([`TransferMsg::Want`]): sent to
    /// the running actor, and remembered for the next one.
    pub fn want(&self, tasks: Vec<TransferTask>) {
        let mut inner = lock(&self.inner);
        inner.want = tasks.clone();
        if let Some(actor) = &inner.actor {
            // A dead incarnation: its successor takes `want` up when it starts.
            let _ = actor.send_message(TransferMsg::Want(tasks));
        }
    }

    /// The transfers wanted now and where each stands ([`TransferMsg::Status`]); empty if no
    /// actor answers within 5 s (it is restarting, or the node is stopping).
    pub async fn status(&self) -> Vec<TransferRow> {
        let Some(actor) = self.actor() else {
            return Vec::new();
        };
        match actor
            .call(TransferMsg::Status, Some(Duration::from_secs(5)))
            .await
        {
            Ok(ractor::rpc::CallResult::Success(rows)) => rows,
            _ => Vec::new(),
        }
    }

    /// The actor running now (the last one that started).
    pub fn actor(&self) -> Option<ActorRef<TransferMsg>> {
        lock(&self.inner).actor.clone()
    }

    /// Counters since the handle was made.
    pub fn counters(&self) -> &TransferCounters {
        &self.counters
    }

    /// Makes `actor` the running one and returns the tasks wanted now (one lock: no Want is
    /// lost between the two).
    fn attach(&self, actor: ActorRef<TransferMsg>) -> Vec<TransferTask> {
        let mut inner = lock(&self.inner);
        inner.actor = Some(actor);
        inner.want.clone()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Messages of the Transfer actor (local only).
#[derive(RactorMessage)]
pub enum TransferMsg {
    /// The full set of tasks this node should run now (see the module docs). Idempotent.
    Want(Vec<TransferTask>),
    /// The wanted tasks and where each stands, by (version, partition).
    Status(RpcReplyPort<Vec<TransferRow>>),
    /// Internal: run `run` of task `(version, partition)` ended.
    Finished {
        /// Layout version.
        version: u64,
        /// Partition.
        partition: u32,
        /// Which run (a cancelled and re-wanted task has a newer one).
        run: u64,
        /// `Err(reason)` if it failed.
        result: Result<(), String>,
    },
    /// Internal: a retry delay passed; start what may start.
    Wake,
    /// Fault injection: panic, so that supervision can be tested.
    InjectPanic,
}

/// Arguments of the Transfer actor.
pub struct TransferArgs<T: ReplicaTransport> {
    /// How sources are reached; its context holds the local vnodes.
    pub peers: T,
    /// Where progress and done marks are kept.
    pub system: Arc<SystemStore>,
    /// Who hears of completed transfers.
    pub events: Arc<dyn TransferEvents>,
    /// The node's handle on the actor (outlives restarts).
    pub handle: Arc<TransferHandle>,
    /// Limits.
    pub config: TransferConfig,
}

/// The Transfer actor, generic over the transport (ractor_cluster's [`crate::replica::Peers`]
/// in a node, [`crate::sim::SimPeer`] in tests).
pub struct Transfer<T>(PhantomData<fn() -> T>);

impl<T> Transfer<T> {
    /// The actor (it holds no data of its own).
    pub fn new() -> Self {
        Transfer(PhantomData)
    }
}

impl<T> Default for Transfer<T> {
    fn default() -> Self {
        Self::new()
    }
}

/// What every run of one actor incarnation shares.
struct Shared<T> {
    peers: T,
    system: Arc<SystemStore>,
    handle: Arc<TransferHandle>,
    bucket: TokenBucket,
    chunk_bytes: usize,
}

/// Where one wanted task stands in the actor.
enum Phase {
    Queued,
    Running {
        run: u64,
        abort: tokio::task::AbortHandle,
    },
    /// Failed; may start again at `until`.
    Waiting {
        until: Instant,
    },
    Done,
}

struct Entry {
    sources: Arc<Mutex<Vec<String>>>,
    row: Arc<Mutex<TransferRow>>,
    phase: Phase,
    failures: u32,
}

/// State of the Transfer actor.
pub struct TransferActorState<T> {
    shared: Arc<Shared<T>>,
    events: Arc<dyn TransferEvents>,
    concurrency: usize,
    entries: BTreeMap<(u64, u32), Entry>,
    next_run: u64,
}

impl<T> Drop for TransferActorState<T> {
    /// Runs of a stopped or failed incarnation are aborted: its successor resumes them from
    /// their persisted points.
    fn drop(&mut self) {
        for entry in self.entries.values() {
            if let Phase::Running { abort, .. } = &entry.phase {
                abort.abort();
            }
        }
    }
}

impl<T: ReplicaTransport> Actor for Transfer<T> {
    type Msg = TransferMsg;
    type State = TransferActorState<T>;
    type Arguments = TransferArgs<T>;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: TransferArgs<T>,
    ) -> Result<Self::State, ActorProcessingErr> {
        let want = args.handle.attach(myself.clone());
        let mut state = TransferActorState {
            shared: Arc::new(Shared {
                peers: args.peers,
                system: args.system,
                handle: args.handle,
                bucket: TokenBucket::new(args.config.max_bytes_per_sec),
                chunk_bytes: args.config.chunk_bytes.max(1),
            }),
            events: args.events,
            concurrency: args.config.concurrency.max(1),
            entries: BTreeMap::new(),
            next_run: 0,
        };
        state.want(&myself, want).await?;
        Ok(state)
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            TransferMsg::Want(tasks) => state.want(&myself, tasks).await?,
            TransferMsg::Status(reply) => {
                let rows = state.entries.values().map(|e| lock(&e.row).clone());
                let _ = reply.send(rows.collect());
            }
            TransferMsg::Finished {
                version,
                partition,
                run,
                result,
            } => {
                state.finished(&myself, (version, partition), run, result);
                state.fill(&myself);
            }
            TransferMsg::Wake => state.fill(&myself),
            TransferMsg::InjectPanic => panic!("transfer: injected panic"),
        }
        Ok(())
    }
}

impl<T: ReplicaTransport> TransferActorState<T> {
    /// Applies a [`TransferMsg::Want`]: cancels what is no longer wanted, updates the sources
    /// of what is, reports done tasks again, adds the new ones (done ones as done, from their
    /// durable mark) and starts what may start.
    async fn want(
        &mut self,
        myself: &ActorRef<TransferMsg>,
        tasks: Vec<TransferTask>,
    ) -> Result<(), ActorProcessingErr> {
        let wanted: std::collections::BTreeSet<(u64, u32)> =
            tasks.iter().map(|t| (t.version, t.partition)).collect();
        self.entries.retain(|key, entry| {
            let keep = wanted.contains(key);
            if !keep {
                if let Phase::Running { abort, .. } = &entry.phase {
                    tracing::info!(
                        version = key.0,
                        partition = key.1,
                        "partition transfer cancelled"
                    );
                    abort.abort();
                }
            }
            keep
        });
        for task in tasks {
            let key = (task.version, task.partition);
            if let Some(entry) = self.entries.get_mut(&key) {
                let changed = *lock(&entry.sources) != task.sources;
                *lock(&entry.sources) = task.sources;
                match entry.phase {
                    Phase::Done => self.events.done(task.version, task.partition),
                    // New sources (a dead one replaced): try them now, not after the backoff.
                    Phase::Waiting { .. } if changed => entry.phase = Phase::Queued,
                    _ => {}
                }
                continue;
            }
            let system = self.shared.system.clone();
            let name = progress_key(task.version, task.partition);
            let progress = blocking(move || load(&system, &name)).await?;
            let (bytes_sent, keys) = progress.counts();
            let done = matches!(progress, Progress::Done { .. });
            let row = TransferRow {
                version: task.version,
                partition: task.partition,
                from: String::new(),
                to: self.shared.peers.local().to_string(),
                bytes_sent,
                bytes_total: if done { bytes_sent } else { 0 },
                keys,
                resumed_bytes: bytes_sent,
                state: if done {
                    TransferState::Done
                } else {
                    TransferState::Queued
                },
            };
            if done {
                self.events.done(task.version, task.partition);
            }
            self.entries.insert(
                key,
                Entry {
                    sources: Arc::new(Mutex::new(task.sources)),
                    row: Arc::new(Mutex::new(row)),
                    phase: if done { Phase::Done } else { Phase::Queued },
                    failures: 0,
                },
            );
        }
        self.fill(myself);
        Ok(())
    }

    /// Starts queued tasks (and failed ones whose delay passed), in (version, partition)
    /// order, while fewer than `concurrency` run.
    fn fill(&mut self, myself: &ActorRef<TransferMsg>) {
        let now = Instant::now();
        let mut running = self
            .entries
            .values()
            .filter(|e| matches!(e.phase, Phase::Running { .. }))
            .count();
        for (&(version, partition), entry) in self.entries.iter_mut() {
            if running >= self.concurrency {
                return;
            }
            let ready = match entry.phase {
                Phase::Queued => true,
                Phase::Waiting { until } => until <= now,
                Phase::Running { .. } | Phase::Done => false,
            };
            if !ready {
                continue;
            }
            self.next_run += 1;
            let run = self.next_run;
            let (shared, sources, row, me) = (
                self.shared.clone(),
                entry.sources.clone(),
                entry.row.clone(),
                myself.clone(),
            );
            let task = tokio::spawn(async move {
                let result = run_task(&shared, version, partition, &sources, &row).await;
                let _ = me.send_message(TransferMsg::Finished {
                    version,
                    partition,
                    run,
                    result,
                });
            });
            entry.phase = Phase::Running {
                run,
                abort: task.abort_handle(),
            };
            running += 1;
        }
    }

    /// Records the end of run `run` of task `key`: done (durably marked by the run; reported
    /// now) or failed (retried after a backoff).
    fn finished(
        &mut self,
        myself: &ActorRef<TransferMsg>,
        key: (u64, u32),
        run: u64,
        result: Result<(), String>,
    ) {
        let Some(entry) = self.entries.get_mut(&key) else {
            return;
        };
        if !matches!(entry.phase, Phase::Running { run: r, .. } if r == run) {
            return;
        }
        match result {
            Ok(()) => {
                entry.phase = Phase::Done;
                entry.failures = 0;
                lock(&entry.row).state = TransferState::Done;
                self.events.done(key.0, key.1);
            }
            Err(reason) => {
                entry.failures += 1;
                let delay = RETRY_MIN
                    .saturating_mul(1 << (entry.failures - 1).min(16))
                    .min(RETRY_MAX);
                tracing::warn!(version = key.0, partition = key.1, failures = entry.failures, retry_in_ms = delay.as_millis() as u64, %reason, "partition transfer failed");
                entry.phase = Phase::Waiting {
                    until: Instant::now() + delay,
                };
                lock(&entry.row).state = TransferState::Failed { reason };
                // The timer runs on its own; its handle is not needed.
                std::mem::drop(myself.send_after(delay, || TransferMsg::Wake));
            }
        }
    }
}

#[cfg(test)]
mod tests;
