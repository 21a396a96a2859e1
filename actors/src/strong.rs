//! Strong buckets: linearizable get, put, delete and compare-and-set per key, by single-decree
//! Paxos per key (CASPaxos: Rystsov 2018, "CASPaxos: Replicated State Machines without logs").
//!
//! # Why CASPaxos
//! A key of a bucket with `consistency = strong` is a register whose replicas (the first `n`
//! nodes of its preference list) are Paxos *acceptors* ([`ringkv_storage::paxos`]). Every
//! operation is a function of the register's value: `get` is the identity, `put` and `delete`
//! set it, `cas` compares and sets (or keeps it, and reports `condition_failed`). A *proposer*
//! (any node) changes the register in two phases:
//!
//! 1. **prepare** a ballot above every ballot it saw; each acceptor promises it (durably) if
//!    it promised nothing higher and answers its accepted `(ballot, value)`. With promises from
//!    a majority, the proposer takes the value of the highest accepted ballot as the current
//!    value;
//! 2. **accept**: it applies the operation's function and asks the acceptors to accept the
//!    result at its ballot; the operation is done once a majority accepted (durably).
//!
//! There is no leader, no log and no per-partition state machine: a failed or paused node
//! costs nothing but its vote, keys never wait for each other, and the state per key is three
//! fields. Multi-Paxos (etcd's Raft, Riak's riak_ensemble) would need a leader per partition,
//! leases, and log compaction; Riak's ensembles never left "experimental" over exactly that.
//!
//! # Round trips
//! * **Reads in one round trip** (after Charapko et al., "Linearizable Quorum Reads in Paxos",
//!   HotStorage 2019): the proposer first reads the acceptor state of a majority of replicas
//!   ([`crate::rpc::PaxosRead`], no write). If they all report the *same* accepted ballot, that
//!   value is chosen (a majority accepted it) and no write completed before the read began
//!   has a higher ballot (its majority would intersect this one in an acceptor that reports
//!   it), so returning it is linearizable. Otherwise the read runs both phases, writing the
//!   current value back (an identity accept), which finishes any half-done write it saw.
//! * **Writes in one round trip** (CASPaxos section 2.2.1): each accept also asks the
//!   acceptors to promise the proposer's next ballot, in the same durable write. The
//!   proposer keeps `(next ballot, value)` per key in a bounded cache; its next operation on
//!   the key skips the prepare. If another proposer intervened, the accept is refused and the
//!   proposer runs both phases.
//! * To keep that cache hitting and proposers from duelling, a node forwards a strong
//!   operation to the key's first reachable replica ([`crate::rpc::StrongRequest`]), which
//!   proposes for it. Per key, a proposer runs one round at a time; the operations that
//!   arrive meanwhile share the next round (a batch: their functions applied in arrival
//!   order), so a hot key costs one round per batch, not per operation. Any node may still
//!   propose (when the first replica is unreachable): Paxos never needed a single proposer
//!   for safety.
//!
//! # Outcomes
//! An operation whose prepare found no majority wrote nothing: [`StrongError::Unavailable`]
//! (`no_majority`). Once an accept was sent, a failure is **indeterminate**
//! ([`StrongError::Indeterminate`], `indeterminate`): a minority may hold the new value and a
//! later proposer may complete it. Before answering that, the proposer tries one recovery
//! round: if the highest accepted value it then finds is its own, it completes it and answers
//! success. It never retries a function it may have applied: a write is applied once or not
//! at all.
//!
//! # Membership changes
//! During a layout transition a strong operation needs a majority in *every* live replica set
//! of the key's partition (joint quorums, [`crate::cluster_view::Placements`]). Before a new
//! replica reports its partition transferred ([`crate::transfer`]), it runs
//! [`carry_over`]: it lists the strong keys of the partition from a majority of the old
//! replica set (never from one replica) and runs an identity round with joint quorums on each,
//! so every value is on a majority of the new set before the old set is retired. Acceptors
//! refuse proposers whose layout is older than theirs ([`crate::rpc::Fenced`]): a proposer
//! that missed the change (paused, partitioned) cannot reach a majority of an old set alone.
//!
//! # Deletes and garbage collection
//! A delete accepts "absent" like any write: the acceptors keep a tombstone state, so a
//! later proposer still sees the delete's ballot. [`collect_garbage`] (run by the
//! anti-entropy job, outside layout transitions) erases a key's state once **every** replica
//! holds the same tombstone. The paper's deletion (section 3.1) bumps every proposer's "age"
//! so that acceptors can refuse proposals begun before the erase; here each acceptor keeps
//! instead a ballot *floor* per partition, the highest promise of any state it erased, and
//! treats a key with no state as one that promised the floor
//! ([`ringkv_storage::paxos::PaxosStep::Erase`]). A proposal made before the erase carries a
//! ballot at most that promise and is refused; proposers learn the floor from the refusal.
//! While some replicas have erased and others still hold the tombstone, every majority
//! reads "absent".
//!
//! # Not done
//! Strong buckets take no sloppy quorum, hints, siblings, TTL or chunked values.

use crate::cluster_view::Placements;
use crate::replica::ReplicaContext;
use crate::rpc::{Fenced, Paxos, PaxosKeys, PaxosRead, ReplicaError, ReplicaTransport};
use futures::stream::{FuturesUnordered, StreamExt};
use ringkv_storage::paxos::{AcceptorState, Ballot, PaxosStep};
use ringkv_storage::StorageError;
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use thiserror::Error;

mod carry;
mod gc;
mod quorum;
pub use carry::carry_over;
pub use gc::{collect_garbage, GC_SCAN_LIMIT};
pub use quorum::replica_sets;
use quorum::{impossible_now, met, phase, union, Tally};

/// An operation on a key of a strong bucket.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum StrongOp {
    /// Read the value.
    Get,
    /// Set the value.
    Put {
        /// The new value.
        value: ByteBuf,
    },
    /// Make the key absent.
    Delete,
    /// Set the value to `new` (`None`: delete) if it is `expect` (`None`: absent).
    Cas {
        /// The value expected.
        expect: Option<ByteBuf>,
        /// The new value.
        new: Option<ByteBuf>,
    },
}

impl StrongOp {
    /// The new register value and the operation's answer, given the current value.
    fn apply(
        &self,
        current: &Option<Vec<u8>>,
    ) -> (Option<Vec<u8>>, Result<Option<ByteBuf>, StrongError>) {
        match self {
            StrongOp::Get => (current.clone(), Ok(current.clone().map(ByteBuf::from))),
            StrongOp::Put { value } => (Some(value.to_vec()), Ok(None)),
            StrongOp::Delete => (None, Ok(None)),
            StrongOp::Cas { expect, new } => {
                if expect.as_deref().map(|e| &e[..]) == current.as_deref() {
                    (new.as_ref().map(|v| v.to_vec()), Ok(None))
                } else {
                    (
                        current.clone(),
                        Err(StrongError::ConditionFailed {
                            current: current.clone().map(ByteBuf::from),
                        }),
                    )
                }
            }
        }
    }

    /// Bytes of the values the operation carries.
    pub fn value_bytes(&self) -> usize {
        match self {
            StrongOp::Get | StrongOp::Delete => 0,
            StrongOp::Put { value } => value.len(),
            StrongOp::Cas { expect, new } => {
                expect.as_ref().map_or(0, |v| v.len()) + new.as_ref().map_or(0, |v| v.len())
            }
        }
    }
}

/// A strong operation's successful answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StrongReply {
    /// For a `get`, the value (`None`: absent); `None` for the other operations.
    pub value: Option<ByteBuf>,
    /// Round trips from the proposer to the replicas: 1 for a read whose majority agreed or
    /// a write on a key the proposer wrote last, 2 for both phases, more after conflicts.
    pub round_trips: u8,
    /// Whether the operation was forwarded to another node, which proposed it.
    pub forwarded: bool,
}

/// Why a strong operation did not succeed.
#[derive(Clone, Debug, Error, PartialEq, Eq, Serialize, Deserialize)]
pub enum StrongError {
    /// `cas` found another value; nothing was written. `current` is the value (`None`: absent)
    /// as of the operation's linearization point.
    #[error("condition failed: the key holds {}", describe(current))]
    ConditionFailed {
        /// The key's value.
        current: Option<ByteBuf>,
    },
    /// No majority of the key's replicas promised in time; nothing was written.
    #[error("no majority of the key's replicas answered ({0}); nothing was written")]
    Unavailable(String),
    /// The new value was sent to the replicas but a majority did not confirm it in time: the
    /// operation may or may not have taken effect (an indeterminate result), and a later
    /// operation may still complete it.
    #[error("outcome unknown: the write reached the replicas but no majority confirmed it ({0}); it may or may not have taken effect")]
    Indeterminate(String),
    /// A storage error every replica would give (the value is over `max-record-bytes`).
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// The cluster has no layout.
    #[error("the cluster has no committed layout")]
    NoLayout,
}

fn describe(v: &Option<ByteBuf>) -> String {
    match v {
        None => "no value (absent)".into(),
        Some(v) => format!("a value of {} bytes", v.len()),
    }
}

/// Most keys whose next ballot and value a proposer remembers.
pub const CACHE_KEYS: usize = 100_000;
/// Most value bytes the proposer's cache holds.
pub const CACHE_BYTES: usize = 64 << 20;
/// Rounds [`carry_over`] tries on one key before it gives up (the transfer retries later).
pub const CARRY_TRIES: u32 = 10;
/// Keys one [`PaxosKeys`] page lists during [`carry_over`].
pub const CARRY_PAGE: u32 = 1000;

/// What a proposer remembers of a key it wrote last: the ballot the acceptors promised it
/// next, the value they accepted, and under which replica sets.
struct Cached {
    next: Ballot,
    value: Option<Vec<u8>>,
    sets: Vec<Vec<String>>,
}

/// A key as the proposer's cache and queue know it: `(partition, stored key)`.
type CacheKey = (u32, Vec<u8>);

#[derive(Default)]
struct Cache {
    keys: HashMap<CacheKey, Cached>,
    bytes: usize,
}

/// Counters of the proposer (for `stats` and the benchmarks).
#[derive(Debug, Default)]
pub struct ProposerStats {
    /// Operations proposed here.
    pub ops: AtomicU64,
    /// Round trips to replicas, summed over the operations.
    pub round_trips: AtomicU64,
    /// Reads answered by one round of acceptor reads.
    pub quorum_reads: AtomicU64,
    /// Writes that skipped the prepare (cached promise).
    pub fast_writes: AtomicU64,
    /// Operations answered indeterminate.
    pub indeterminate: AtomicU64,
    /// Ballot conflicts (a refusal by a higher promise).
    pub conflicts: AtomicU64,
    /// Rounds run for batches of queued operations ([`propose`]).
    pub batches: AtomicU64,
    /// Operations this node forwarded to the key's proposer on another node.
    pub forwarded: AtomicU64,
}

impl ProposerStats {
    /// A copy of every counter by name: `ops`, `batches`, `round_trips`, `quorum_reads`,
    /// `fast_writes`, `indeterminate`, `conflicts`, `forwarded`.
    pub fn snapshot(&self) -> std::collections::BTreeMap<&'static str, u64> {
        [
            ("ops", &self.ops),
            ("batches", &self.batches),
            ("round_trips", &self.round_trips),
            ("quorum_reads", &self.quorum_reads),
            ("fast_writes", &self.fast_writes),
            ("indeterminate", &self.indeterminate),
            ("conflicts", &self.conflicts),
            ("forwarded", &self.forwarded),
        ]
        .into_iter()
        .map(|(name, c)| (name, c.load(Ordering::Relaxed)))
        .collect()
    }
}

/// A node's proposer: its ballot id, the cache of promised ballots and the per-key queue.
pub struct Proposer {
    id: u64,
    counter: AtomicU64,
    cache: Mutex<Cache>,
    queues: Mutex<HashMap<CacheKey, KeyQueue>>,
    weaken: AtomicBool,
    /// Counters.
    pub stats: ProposerStats,
}

impl Default for Proposer {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for Proposer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proposer").field("id", &self.id).finish()
    }
}

impl Proposer {
    /// A proposer with a random id (never 0, which is [`Ballot::ZERO`]'s).
    pub fn new() -> Self {
        Proposer {
            id: rand::random::<u64>().max(1),
            counter: AtomicU64::new(0),
            cache: Mutex::default(),
            queues: Mutex::default(),
            weaken: AtomicBool::new(false),
            stats: ProposerStats::default(),
        }
    }

    /// **Test only**: makes this proposer deliberately unsafe (one replica's answer counts as
    /// a majority, and reads take the first answer), so the linearizability checker's
    /// self-test can show it catches a broken protocol. Set by the `fault-injection`
    /// `weaken_strong` fault; never by ringkv itself.
    pub fn set_weakened(&self, on: bool) {
        self.weaken.store(on, Ordering::Relaxed);
    }

    fn weakened(&self) -> bool {
        self.weaken.load(Ordering::Relaxed)
    }

    fn saw(&self, b: Ballot) {
        self.counter.fetch_max(b.counter, Ordering::Relaxed);
    }

    fn fresh_ballot(&self) -> Ballot {
        let c = self.counter.fetch_add(1, Ordering::Relaxed) + 1;
        Ballot {
            counter: c,
            proposer: self.id,
        }
    }

    fn cached(&self, key: &CacheKey, sets: &[Vec<String>]) -> Option<(Ballot, Option<Vec<u8>>)> {
        let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        cache
            .keys
            .get(key)
            .filter(|c| c.sets == sets)
            .map(|c| (c.next, c.value.clone()))
    }

    fn remember(
        &self,
        key: CacheKey,
        next: Ballot,
        value: Option<Vec<u8>>,
        sets: Vec<Vec<String>>,
    ) {
        // A fresh ballot must never repeat the promised one kept here.
        self.saw(next);
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        let size = value.as_ref().map_or(0, Vec::len) + key.1.len();
        if cache.keys.len() >= CACHE_KEYS || cache.bytes + size > CACHE_BYTES {
            // Bounded: start over (the next operation on each key takes both phases).
            cache.keys.clear();
            cache.bytes = 0;
        }
        if let Some(old) = cache.keys.insert(key.clone(), Cached { next, value, sets }) {
            cache.bytes -= old.value.as_ref().map_or(0, Vec::len) + key.1.len();
        }
        cache.bytes += size;
    }

    fn forget(&self, key: &CacheKey) {
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(old) = cache.keys.remove(key) {
            cache.bytes -= old.value.as_ref().map_or(0, Vec::len) + key.1.len();
        }
    }
}

/// The operations waiting for one key's rounds on this proposer.
#[derive(Default)]
struct KeyQueue {
    /// A task runs the key's rounds.
    running: bool,
    /// Operations for the next rounds, in arrival order (bounded by the node's requests in
    /// flight: each waits for its own answer).
    waiting: std::collections::VecDeque<Pending>,
}

/// Result of an accept phase.
enum Accepted {
    /// A majority of every set accepted.
    Chosen,
    /// Every acceptor answered a refusal: nothing was accepted anywhere, so the operation
    /// may start over without being applied twice.
    Refused,
    /// Some acceptors may hold the value.
    Unknown(String),
}

/// One key's operation as its proposer runs it.
struct Run<'a, T: ReplicaTransport> {
    peers: &'a T,
    proposer: &'a Proposer,
    partition: u32,
    bucket: &'a [u8],
    key: &'a [u8],
    deadline: Instant,
    round_trips: u8,
}

impl<'a, T: ReplicaTransport> Run<'a, T> {
    fn new(
        peers: &'a T,
        proposer: &'a Proposer,
        partition: u32,
        bucket: &'a [u8],
        key: &'a [u8],
        deadline: Instant,
    ) -> Self {
        Run {
            peers,
            proposer,
            partition,
            bucket,
            key,
            deadline,
            round_trips: 0,
        }
    }

    fn weak(&self) -> bool {
        self.proposer.weakened()
    }

    async fn read_states(&mut self, sets: &[Vec<String>], layout: u64) -> Tally<AcceptorState> {
        self.round_trips = self.round_trips.saturating_add(1);
        let left = self.deadline.saturating_duration_since(Instant::now());
        let (partition, bucket, key) = (self.partition, self.bucket, self.key);
        let peers = self.peers;
        phase(sets, self.deadline, self.weak(), |node| {
            let req = PaxosRead {
                partition,
                bucket: ByteBuf::from(bucket.to_vec()),
                key: ByteBuf::from(key.to_vec()),
                layout,
            };
            async move {
                let r = peers.call(&node, req, left).await;
                let vote = r.map(|f| match f {
                    Fenced::Ok(s) => Fenced::Ok(Ok(s.unwrap_or_default())),
                    Fenced::StaleLayout(v) => Fenced::StaleLayout(v),
                });
                (node, vote)
            }
        })
        .await
    }

    async fn step(
        &mut self,
        sets: &[Vec<String>],
        layout: u64,
        step: PaxosStep,
    ) -> Tally<AcceptorState> {
        self.round_trips = self.round_trips.saturating_add(1);
        let left = self.deadline.saturating_duration_since(Instant::now());
        let (partition, bucket, key) = (self.partition, self.bucket, self.key);
        let peers = self.peers;
        let tally = phase(sets, self.deadline, self.weak(), |node| {
            let req = Paxos {
                partition,
                bucket: ByteBuf::from(bucket.to_vec()),
                key: ByteBuf::from(key.to_vec()),
                step: step.clone(),
                layout,
            };
            async move {
                let r = peers.call(&node, req, left).await;
                let vote = r.map(|f| match f {
                    Fenced::Ok(a) if a.ok => Fenced::Ok(Ok(a.state)),
                    Fenced::Ok(a) => Fenced::Ok(Err(a.state.promised)),
                    Fenced::StaleLayout(v) => Fenced::StaleLayout(v),
                });
                (node, vote)
            }
        })
        .await;
        self.proposer.saw(tally.beaten_by);
        if tally.beaten_by > Ballot::ZERO {
            self.proposer
                .stats
                .conflicts
                .fetch_add(1, Ordering::Relaxed);
        }
        tally
    }

    /// Phase 2 at `ballot`, promising the proposer's next ballot too.
    async fn accept(
        &mut self,
        sets: &[Vec<String>],
        layout: u64,
        ballot: Ballot,
        value: Option<Vec<u8>>,
    ) -> Result<Accepted, StrongError> {
        let next = Ballot {
            counter: ballot.counter + 1,
            proposer: ballot.proposer,
        };
        let tally = self
            .step(
                sets,
                layout,
                PaxosStep::Accept {
                    ballot,
                    value,
                    promise_next: Some(next),
                },
            )
            .await;
        if met(sets, &tally.ok_nodes(), self.weak()) {
            return Ok(Accepted::Chosen);
        }
        // Only when every acceptor answered a refusal: `phase` stops once a majority is out
        // of reach, and an answer it did not wait for may be an accept.
        if tally.refused.len() == union(sets).len() {
            return Ok(Accepted::Refused);
        }
        if tally.ok.is_empty() {
            if let Some(StorageError::RecordTooLarge { bytes, limit }) = &tally.storage {
                // Refused by the replicas' writers, not stored: bad input.
                return Err(StrongError::Storage(StorageError::RecordTooLarge {
                    bytes: *bytes,
                    limit: *limit,
                }));
            }
        }
        Ok(Accepted::Unknown(tally.causes()))
    }

    /// Phase 1 at a fresh ballot: the ballot and the current state (highest accepted), or
    /// the tally that failed.
    async fn prepare(
        &mut self,
        sets: &[Vec<String>],
        layout: u64,
    ) -> Result<(Ballot, AcceptorState), Tally<AcceptorState>> {
        let ballot = self.proposer.fresh_ballot();
        let tally = self.step(sets, layout, PaxosStep::Prepare { ballot }).await;
        if !met(sets, &tally.ok_nodes(), self.weak()) {
            return Err(tally);
        }
        let current = tally
            .ok
            .into_iter()
            .map(|(_, s)| s)
            .max_by_key(|s| s.accepted)
            .unwrap_or_default();
        Ok((ballot, current))
    }
}

/// Most operations on one key one round carries ([`propose`]'s batches).
pub const MAX_BATCH: usize = 64;

/// The answer of one operation of a batch.
type Answer = Result<Option<ByteBuf>, StrongError>;

/// An operation waiting for its key's next round on this proposer.
struct Pending {
    op: StrongOp,
    deadline: Instant,
    reply: tokio::sync::oneshot::Sender<(Answer, u8)>,
}

/// Runs a strong operation on `(bucket, key)` of partition `partition`, proposed by this
/// node, within `timeout`: replicas are the first `n` of each live layout version's
/// preference list.
///
/// A read first tries one round of acceptor reads (no write, no queue). Otherwise the
/// operation joins its key's queue on this proposer: one task per key runs rounds, each
/// round taking every operation queued (up to [`MAX_BATCH`]) and applying their functions
/// in queue order to the value it finds, so that concurrent operations on a hot key share
/// one round instead of duelling or waiting for one round each. Each operation of a round
/// is linearized at the round's choice, in queue order (all were invoked before the round
/// began and answer after it).
///
/// # Errors
/// [`StrongError`]: `ConditionFailed` (a definite outcome), `Unavailable` (nothing written),
/// `Indeterminate`, `Storage` (bad input), `NoLayout`.
pub async fn propose<T: ReplicaTransport>(
    peers: &T,
    partition: u32,
    bucket: &[u8],
    key: &[u8],
    op: &StrongOp,
    n: usize,
    timeout: Duration,
) -> Result<StrongReply, StrongError> {
    let ctx = peers.context();
    let proposer = ctx.strong.clone();
    let skey = ringkv_storage::keys::storage_key(bucket, key)?;
    let cache_key = (partition, skey);
    let deadline = Instant::now() + timeout;
    proposer.stats.ops.fetch_add(1, Ordering::Relaxed);
    let mut read_trips = 0u8;
    if matches!(op, StrongOp::Get) {
        let mut run = Run::new(peers, &proposer, partition, bucket, key, deadline);
        let read = quorum_read(&mut run, n).await;
        read_trips = run.round_trips;
        proposer
            .stats
            .round_trips
            .fetch_add(u64::from(read_trips), Ordering::Relaxed);
        match read {
            Ok(Some(value)) => {
                return Ok(StrongReply {
                    value,
                    round_trips: read_trips,
                    forwarded: false,
                })
            }
            Ok(None) => {}
            Err(e) => return Err(e),
        }
    }
    let (tx, rx) = tokio::sync::oneshot::channel();
    let pending = Pending {
        op: op.clone(),
        deadline,
        reply: tx,
    };
    if proposer.enqueue(&cache_key, pending) {
        let peers = peers.clone();
        let (bucket, key) = (bucket.to_vec(), key.to_vec());
        tokio::spawn(async move {
            run_key(&peers, partition, &bucket, &key, n, cache_key).await;
        });
    }
    match rx.await {
        Ok((answer, trips)) => {
            if matches!(answer, Err(StrongError::Indeterminate(_))) {
                proposer.stats.indeterminate.fetch_add(1, Ordering::Relaxed);
            }
            answer.map(|value| StrongReply {
                value,
                round_trips: read_trips.saturating_add(trips),
                forwarded: false,
            })
        }
        Err(_) => Err(StrongError::Indeterminate(
            "the key's proposer task ended without an answer".into(),
        )),
    }
}

/// One round of acceptor reads: `Some(value)` if a majority of every replica set agrees on
/// the accepted ballot, `None` if it does not (the caller runs both phases).
async fn quorum_read<T: ReplicaTransport>(
    run: &mut Run<'_, T>,
    n: usize,
) -> Result<Option<Option<ByteBuf>>, StrongError> {
    let view = run.peers.context().view.clone();
    let (placements, _guard) = view.placements_for_write();
    let sets = replica_sets(&placements, run.partition, n)?;
    let tally = run.read_states(&sets, placements.version).await;
    let weak = run.weak();
    if met(&sets, &tally.ok_nodes(), weak) {
        let first = &tally.ok[0].1;
        if tally.ok.iter().all(|(_, s)| s.accepted == first.accepted) {
            run.proposer
                .stats
                .quorum_reads
                .fetch_add(1, Ordering::Relaxed);
            return Ok(Some(first.value.clone().map(ByteBuf::from)));
        }
    } else if tally.stale_layout.is_none()
        && impossible_now(&sets, &tally, weak)
        && tally.ok.is_empty()
    {
        return Err(StrongError::Unavailable(tally.causes()));
    }
    Ok(None)
}

impl Proposer {
    /// Queues `pending` on its key; true if the caller must start the key's task (none runs).
    fn enqueue(&self, key: &CacheKey, pending: Pending) -> bool {
        let mut queues = self.queues.lock().unwrap_or_else(|p| p.into_inner());
        let queue = queues.entry(key.clone()).or_default();
        queue.waiting.push_back(pending);
        let start = !queue.running;
        queue.running = true;
        start
    }

    /// The next batch of the key's queue; empty (and the key's task ends) when none waits.
    fn next_batch(&self, key: &CacheKey) -> Vec<Pending> {
        let mut queues = self.queues.lock().unwrap_or_else(|p| p.into_inner());
        let Some(queue) = queues.get_mut(key) else {
            return Vec::new();
        };
        let take = queue.waiting.len().min(MAX_BATCH);
        let batch: Vec<Pending> = queue.waiting.drain(..take).collect();
        if batch.is_empty() {
            queues.remove(key);
        }
        batch
    }
}

/// The task of one key on this proposer: rounds until its queue is empty.
async fn run_key<T: ReplicaTransport>(
    peers: &T,
    partition: u32,
    bucket: &[u8],
    key: &[u8],
    n: usize,
    cache_key: CacheKey,
) {
    let proposer = peers.context().strong.clone();
    loop {
        let batch = proposer.next_batch(&cache_key);
        if batch.is_empty() {
            return;
        }
        // Operations whose caller gave up are dropped before anything is proposed for them.
        let now = Instant::now();
        let (batch, late): (Vec<Pending>, Vec<Pending>) = batch
            .into_iter()
            .partition(|p| p.deadline > now && !p.reply.is_closed());
        for p in late {
            let _ = p.reply.send((
                Err(StrongError::Unavailable(
                    "the request's time ran out in the key's queue".into(),
                )),
                0,
            ));
        }
        if batch.is_empty() {
            continue;
        }
        proposer.stats.batches.fetch_add(1, Ordering::Relaxed);
        let deadline = batch.iter().map(|p| p.deadline).min().unwrap_or(now);
        let ops: Vec<StrongOp> = batch.iter().map(|p| p.op.clone()).collect();
        let mut run = Run::new(peers, &proposer, partition, bucket, key, deadline);
        let result = run_ops(&mut run, &cache_key, &ops, n).await;
        proposer
            .stats
            .round_trips
            .fetch_add(u64::from(run.round_trips), Ordering::Relaxed);
        match result {
            Ok(answers) => {
                for (p, a) in batch.into_iter().zip(answers) {
                    let _ = p.reply.send((a, run.round_trips));
                }
            }
            Err(e) => {
                for p in batch {
                    let _ = p.reply.send((Err(e.clone()), run.round_trips));
                }
            }
        }
    }
}

/// The batch's functions applied in order to `current`: the new value and each operation's
/// answer.
fn apply_all(ops: &[StrongOp], current: &Option<Vec<u8>>) -> (Option<Vec<u8>>, Vec<Answer>) {
    let mut value = current.clone();
    let mut answers = Vec::with_capacity(ops.len());
    for op in ops {
        let (next, answer) = op.apply(&value);
        value = next;
        answers.push(answer);
    }
    (value, answers)
}

/// Backoff after a ballot conflict or a stale layout: 1 to 8 ms, random (so duelling
/// proposers fall out of step), growing with the attempt.
fn backoff(attempt: u32) -> Duration {
    let cap = 1u64 << attempt.min(3);
    Duration::from_micros(rand::random::<u64>() % (cap * 1000) + 500)
}

/// One round (or more, after conflicts that left nothing accepted) for the batch `ops`.
async fn run_ops<T: ReplicaTransport>(
    run: &mut Run<'_, T>,
    cache_key: &CacheKey,
    ops: &[StrongOp],
    n: usize,
) -> Result<Vec<Answer>, StrongError> {
    let view = run.peers.context().view.clone();
    let mut attempt = 0u32;
    loop {
        if Instant::now() >= run.deadline {
            return Err(StrongError::Unavailable(
                "the request's time ran out".into(),
            ));
        }
        // Counted as in flight under its layout version until it returns, like every write:
        // a transition's transfers start only once no operation uses older replica sets.
        let (placements, _guard) = view.placements_for_write();
        let layout = placements.version;
        let sets = replica_sets(&placements, run.partition, n)?;

        // A key this proposer wrote last: accept at the promised next ballot.
        if let Some((ballot, value)) = run.proposer.cached(cache_key, &sets) {
            let (new, answers) = apply_all(ops, &value);
            match run.accept(&sets, layout, ballot, new.clone()).await? {
                Accepted::Chosen => {
                    run.proposer
                        .stats
                        .fast_writes
                        .fetch_add(1, Ordering::Relaxed);
                    run.proposer
                        .remember(cache_key.clone(), ballot_after(ballot), new, sets);
                    return Ok(answers);
                }
                Accepted::Refused => {
                    run.proposer.forget(cache_key);
                }
                Accepted::Unknown(why) => {
                    run.proposer.forget(cache_key);
                    return recover(
                        run, cache_key, ops, &sets, layout, ballot, new, answers, why,
                    )
                    .await;
                }
            }
        }

        // Both phases.
        let (ballot, current) = match run.prepare(&sets, layout).await {
            Ok(p) => p,
            Err(tally) => {
                let conflict = tally.beaten_by > Ballot::ZERO || tally.stale_layout.is_some();
                if conflict && Instant::now() < run.deadline {
                    tokio::time::sleep(backoff(attempt)).await;
                    attempt += 1;
                    continue;
                }
                return Err(StrongError::Unavailable(tally.causes()));
            }
        };
        let (new, answers) = apply_all(ops, &current.value);
        match run.accept(&sets, layout, ballot, new.clone()).await? {
            Accepted::Chosen => {
                run.proposer
                    .remember(cache_key.clone(), ballot_after(ballot), new, sets);
                return Ok(answers);
            }
            Accepted::Refused => {
                // Beaten between our phases; nothing of ours is anywhere: start over.
                tokio::time::sleep(backoff(attempt)).await;
                attempt += 1;
            }
            Accepted::Unknown(why) => {
                return recover(
                    run, cache_key, ops, &sets, layout, ballot, new, answers, why,
                )
                .await;
            }
        }
    }
}

fn ballot_after(b: Ballot) -> Ballot {
    Ballot {
        counter: b.counter + 1,
        proposer: b.proposer,
    }
}

/// After an accept at `ballot` that a majority did not confirm: a new prepare at `b2`.
/// * If the highest accepted ballot its majority reports is ours (`ballot`), our value may be
///   chosen: complete it at `b2` and answer as the operations did.
/// * If it is below ours, no acceptor of that majority accepted ours, and all of them now
///   refuse it (they promised `b2`): ours can never reach a majority, and no value derived
///   from it either (a proposer adopting it would need a majority meeting this one). The
///   operations have not taken effect: apply them to the value found and accept at `b2`;
///   answer only if that is chosen (once `b2` is chosen, every later prepare sees `b2`, not
///   ours).
/// * If it is above ours, another proposer may have built on our value: unknown.
#[allow(clippy::too_many_arguments)]
async fn recover<T: ReplicaTransport>(
    run: &mut Run<'_, T>,
    cache_key: &CacheKey,
    ops: &[StrongOp],
    sets: &[Vec<String>],
    layout: u64,
    ballot: Ballot,
    value: Option<Vec<u8>>,
    answers: Vec<Answer>,
    why: String,
) -> Result<Vec<Answer>, StrongError> {
    for attempt in 0..3 {
        if Instant::now() >= run.deadline {
            break;
        }
        match run.prepare(sets, layout).await {
            Ok((b2, current)) => {
                let (value, answers) = if current.accepted == ballot {
                    (value, answers)
                } else if current.accepted < ballot {
                    apply_all(ops, &current.value)
                } else {
                    break;
                };
                if let Ok(Accepted::Chosen) = run.accept(sets, layout, b2, value.clone()).await {
                    run.proposer.remember(
                        cache_key.clone(),
                        ballot_after(b2),
                        value,
                        sets.to_vec(),
                    );
                    return Ok(answers);
                }
                break;
            }
            Err(tally) if tally.beaten_by > Ballot::ZERO => {
                tokio::time::sleep(backoff(attempt)).await;
            }
            Err(_) => break,
        }
    }
    Err(StrongError::Indeterminate(why))
}

/// Serves a strong operation another node forwarded here ([`crate::rpc::StrongRequest`]):
/// proposes it on this node.
pub async fn serve_forwarded(
    ctx: &Arc<ReplicaContext>,
    request: crate::rpc::StrongRequest,
) -> Result<StrongReply, StrongError> {
    let peers = crate::replica::Peers {
        local: ctx.name.clone(),
        ctx: ctx.clone(),
    };
    let bucket = request.bucket.into_vec();
    let key = request.key.into_vec();
    let partition = ringkv_cluster::ring::partition_for(&bucket, &key, ctx.directory.partitions());
    propose(
        &peers,
        partition,
        &bucket,
        &key,
        &request.op,
        usize::from(request.n),
        Duration::from_millis(request.timeout_ms),
    )
    .await
}
