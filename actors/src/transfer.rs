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

/// A transfer's durable progress, under `transfer/{version}/{partition}` in the system
/// store: `[version 1][tag][bytes: u64 BE][keys: u64 BE][position]`, tag 0 streaming (the
/// position to resume after; empty: from the start), 1 streamed (verification left), 2 done.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Progress {
    Streaming {
        after: Option<Vec<u8>>,
        bytes: u64,
        keys: u64,
    },
    Streamed {
        bytes: u64,
        keys: u64,
    },
    Done {
        bytes: u64,
        keys: u64,
    },
}

impl Progress {
    fn counts(&self) -> (u64, u64) {
        match self {
            Progress::Streaming { bytes, keys, .. }
            | Progress::Streamed { bytes, keys }
            | Progress::Done { bytes, keys } => (*bytes, *keys),
        }
    }

    fn encode(&self) -> Vec<u8> {
        let (tag, after) = match self {
            Progress::Streaming { after, .. } => (0u8, after.as_deref().unwrap_or_default()),
            Progress::Streamed { .. } => (1, &[][..]),
            Progress::Done { .. } => (2, &[][..]),
        };
        let (bytes, keys) = self.counts();
        let mut out = Vec::with_capacity(18 + after.len());
        out.push(PROGRESS_V1);
        out.push(tag);
        out.extend_from_slice(&bytes.to_be_bytes());
        out.extend_from_slice(&keys.to_be_bytes());
        out.extend_from_slice(after);
        out
    }

    fn decode(b: &[u8]) -> Result<Self, StorageError> {
        let corrupt =
            || StorageError::Corrupt(format!("a transfer progress record of {} bytes", b.len()));
        if b.len() < 18 || b[0] != PROGRESS_V1 {
            return Err(corrupt());
        }
        let bytes = u64::from_be_bytes(b[2..10].try_into().map_err(|_| corrupt())?);
        let keys = u64::from_be_bytes(b[10..18].try_into().map_err(|_| corrupt())?);
        let after = &b[18..];
        match b[1] {
            0 => Ok(Progress::Streaming {
                after: (!after.is_empty()).then(|| after.to_vec()),
                bytes,
                keys,
            }),
            1 => Ok(Progress::Streamed { bytes, keys }),
            2 => Ok(Progress::Done { bytes, keys }),
            _ => Err(corrupt()),
        }
    }
}

/// The system store key of a task's progress.
pub fn progress_key(version: u64, partition: u32) -> String {
    format!("transfer/{version}/{partition}")
}

/// The progress of a task (from the start if none is recorded; a record that does not
/// decode is logged and the task starts over, which only costs time).
fn load(system: &SystemStore, name: &str) -> Result<Progress, StorageError> {
    let fresh = Progress::Streaming {
        after: None,
        bytes: 0,
        keys: 0,
    };
    match system.get_meta(name)? {
        None => Ok(fresh),
        Some(b) => Ok(Progress::decode(&b).unwrap_or_else(|e| {
            tracing::warn!(key = name, error = %e, "transfer progress does not decode; starting over");
            fresh
        })),
    }
}

/// Persists a task's progress (one durable commit of the system env), off the tokio workers.
async fn save(
    shared: &Shared<impl Send + Sync>,
    version: u64,
    partition: u32,
    progress: &Progress,
) -> Result<(), String> {
    let (system, name, value) = (
        shared.system.clone(),
        progress_key(version, partition),
        progress.encode(),
    );
    blocking(move || system.put_meta(&name, &value))
        .await
        .map_err(|e| format!("persisting the transfer's progress: {e}"))
}

/// One run of a task: stream what is left, verify, mark done. `Err` says why it stopped.
async fn run_task<T: ReplicaTransport>(
    shared: &Shared<T>,
    version: u64,
    partition: u32,
    sources: &Mutex<Vec<String>>,
    row: &Mutex<TransferRow>,
) -> Result<(), String> {
    let system = shared.system.clone();
    let name = progress_key(version, partition);
    let mut progress = blocking(move || load(&system, &name))
        .await
        .map_err(|e| format!("reading the transfer's progress: {e}"))?;
    let candidates = || -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for s in lock(sources).iter() {
            if s != shared.peers.local() && !out.contains(s) {
                out.push(s.clone());
            }
        }
        out
    };
    if matches!(progress, Progress::Streaming { .. }) {
        progress = stream(shared, version, partition, progress, &candidates(), row).await?;
    }
    if matches!(progress, Progress::Streamed { .. }) {
        lock(row).state = TransferState::Verifying;
        verify(shared, partition, &candidates(), row).await?;
        // Strong buckets' keys move by Paxos rounds, from a majority (crate::strong).
        let carried = crate::strong::carry_over(&shared.peers, partition).await?;
        if carried > 0 {
            tracing::info!(
                version,
                partition,
                keys = carried,
                "carried strong keys over to the new replica set"
            );
        }
        let (bytes, keys) = progress.counts();
        progress = Progress::Done { bytes, keys };
        save(shared, version, partition, &progress).await?;
        tracing::info!(
            version,
            partition,
            bytes,
            keys,
            "partition transfer streamed and verified"
        );
    }
    Ok(())
}

/// Streams the rest of the partition from the first source that can, switching to the next
/// one when a source fails, from the same position; returns the streamed progress.
async fn stream<T: ReplicaTransport>(
    shared: &Shared<T>,
    version: u64,
    partition: u32,
    mut progress: Progress,
    sources: &[String],
    row: &Mutex<TransferRow>,
) -> Result<Progress, String> {
    let counters = shared.handle.counters();
    let mut errors: Vec<String> = Vec::new();
    for source in sources {
        if !shared.peers.reachable(source) {
            errors.push(format!("{source} is unreachable"));
            continue;
        }
        {
            let mut r = lock(row);
            r.from = source.clone();
            r.state = TransferState::Streaming;
        }
        if let Ok(stats) = shared
            .peers
            .call(source, rpc::Stats { partition }, CALL_TIMEOUT)
            .await
        {
            lock(row).bytes_total = stats.bytes;
        }
        tracing::info!(version, partition, %source, "streaming a partition");
        // The chunk fetched while the previous one was being merged (at most one).
        let mut prefetched: Option<rpc::Chunk> = None;
        loop {
            let Progress::Streaming { after, bytes, keys } = &progress else {
                return Ok(progress);
            };
            let (bytes, keys) = (*bytes, *keys);
            let chunk = match prefetched.take() {
                Some(chunk) => chunk,
                None => match fetch(shared, source, partition, after.clone()).await {
                    Ok(chunk) => chunk,
                    Err(e) => {
                        tracing::warn!(version, partition, %source, error = %e, "a transfer source failed; trying the next one");
                        errors.push(e.to_string());
                        break;
                    }
                },
            };
            let n = chunk.entries.len() as u64;
            counters.chunks.fetch_add(1, Ordering::Relaxed);
            counters.keys.fetch_add(n, Ordering::Relaxed);
            counters.bytes.fetch_add(chunk.bytes, Ordering::Relaxed);
            // The throttle: every chunk's bytes come out of the node's one bucket.
            shared.bucket.take(chunk.bytes).await;
            let next = chunk.next.clone().map(serde_bytes::ByteBuf::into_vec);
            let entries: Vec<(Vec<u8>, DvvSet)> = chunk
                .entries
                .into_iter()
                .map(|(k, r)| (k.into_vec(), r))
                .collect();
            // Merge this chunk while the next one is fetched (the source scans and encodes
            // while this node commits).
            let ahead = async {
                match &next {
                    Some(pos) => Some(fetch(shared, source, partition, Some(pos.clone())).await),
                    None => None,
                }
            };
            let (merged, ahead) = tokio::join!(merge(shared, partition, entries), ahead);
            merged?;
            let (bytes, keys) = (bytes + chunk.bytes, keys + n);
            // Merged durably: only now does the resume point move past it.
            progress = match next {
                Some(next) => Progress::Streaming {
                    after: Some(next),
                    bytes,
                    keys,
                },
                None => Progress::Streamed { bytes, keys },
            };
            save(shared, version, partition, &progress).await?;
            {
                let mut r = lock(row);
                r.bytes_sent = bytes;
                r.keys = keys;
            }
            match ahead {
                Some(Ok(chunk)) => prefetched = Some(chunk),
                Some(Err(e)) => {
                    tracing::warn!(version, partition, %source, error = %e, "a transfer source failed; trying the next one");
                    errors.push(e.to_string());
                    break;
                }
                None => {}
            }
        }
    }
    if errors.is_empty() {
        errors.push("no source named".into());
    }
    Err(format!(
        "no source could stream the partition: {}",
        errors.join("; ")
    ))
}

/// Asks `source` for the chunk of `partition` after `after`.
async fn fetch<T: ReplicaTransport>(
    shared: &Shared<T>,
    source: &str,
    partition: u32,
    after: Option<Vec<u8>>,
) -> Result<rpc::Chunk, rpc::ReplicaError> {
    let request = rpc::ScanChunk {
        partition,
        after: after.map(serde_bytes::ByteBuf::from),
        max_bytes: shared.chunk_bytes,
    };
    shared.peers.call(source, request, CALL_TIMEOUT).await
}

/// Merges a chunk's records into the local vnode of `partition`, durably (one group commit
/// per `max-batch` records).
async fn merge<T: ReplicaTransport>(
    shared: &Shared<T>,
    partition: u32,
    entries: Vec<(Vec<u8>, DvvSet)>,
) -> Result<(), String> {
    if entries.is_empty() {
        return Ok(());
    }
    let directory = &shared.peers.context().directory;
    vnode_call(directory, partition, CALL_TIMEOUT, |reply| {
        VNodeMsg::MergeMany {
            entries: entries.clone(),
            reply,
        }
    })
    .await
    .map(|_| ())
    .map_err(|e| format!("merging a chunk here: {e}"))
}

/// Merkle exchanges with every reachable source; verified once a majority of the sources
/// exchanged successfully. Each exchange repairs what differed on either side at that moment,
/// so afterwards this node holds every key those sources held then, and writes made since
/// reach it through the coordinator (the old and new replica sets are both written during the
/// transition). A majority is what makes that complete: a write acknowledged under the old
/// layout is on at least `w` of its replicas, and with `w >= 2` of 3 any two sources include
/// one of them, so one dead old replica (a node being replaced) does not hold the transfer
/// while two would (Cassandra's consistent range movement: never trust one arbitrary replica).
/// Differing keys under a running workload are expected (writes in flight) and only counted.
async fn verify<T: ReplicaTransport>(
    shared: &Shared<T>,
    partition: u32,
    sources: &[String],
    row: &Mutex<TransferRow>,
) -> Result<(), String> {
    let needed = sources.len() / 2 + 1;
    let (mut ran, mut differing) = (0, 0);
    let mut errors = Vec::new();
    for source in sources {
        if !shared.peers.reachable(source) {
            errors.push(format!("{source}: unreachable"));
            continue;
        }
        lock(row).from = source.clone();
        shared
            .handle
            .counters()
            .exchanges
            .fetch_add(1, Ordering::Relaxed);
        match repair::exchange_scoped(&shared.peers, partition, source, ExchangeScope::AllKeys)
            .await
        {
            Ok(report) => {
                ran += 1;
                differing += report.differing;
                if report.differing > 0 {
                    tracing::info!(partition, %source, differing = report.differing, repaired = report.repaired, "transfer verification repaired keys");
                }
            }
            Err(e) => errors.push(format!("{source}: {e}")),
        }
    }
    if ran >= needed {
        tracing::debug!(partition, exchanges = ran, differing, "transfer verified");
        return Ok(());
    }
    Err(format!(
        "verified against {ran} of {} sources, a majority ({needed}) is needed: {}",
        sources.len(),
        errors.join("; ")
    ))
}

/// A token bucket over bytes: `take(n)` removes `n` tokens, going into debt if it must, and
/// waits until the debt is paid back at `rate` bytes per second. It holds at most a tenth of
/// a second's worth (bursts), and starts full.
struct TokenBucket {
    rate: f64,
    capacity: f64,
    state: Mutex<(f64, tokio::time::Instant)>,
}

impl TokenBucket {
    fn new(rate: u64) -> Self {
        let rate = rate.max(1) as f64;
        let capacity = rate / 10.0;
        Self {
            rate,
            capacity,
            state: Mutex::new((capacity, tokio::time::Instant::now())),
        }
    }

    async fn take(&self, n: u64) {
        let wait = {
            let mut s = lock(&self.state);
            let now = tokio::time::Instant::now();
            let refill = now.duration_since(s.1).as_secs_f64() * self.rate;
            s.0 = (s.0 + refill).min(self.capacity) - n as f64;
            s.1 = now;
            (s.0 < 0.0).then(|| Duration::from_secs_f64(-s.0 / self.rate))
        };
        if let Some(wait) = wait {
            tokio::time::sleep(wait).await;
        }
    }
}

#[cfg(test)]
mod tests;
