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
//!   proposes for it. Any node may still propose (when the first replica is unreachable):
//!   Paxos never needed a single proposer for safety.
//! * **Per key, a proposer runs one round at a time, for every operation queued.** The
//!   operations that arrive on a key while a round runs wait, and the next round takes all
//!   of them (a batch): it applies their functions in arrival order to the current value and
//!   accepts the result once (a batch of reads only takes the one-round read). This is still
//!   one CASPaxos change, the composed function, so it is linearizable; each operation of the
//!   batch was invoked before the round started and is answered after it ended, so the
//!   batch's operations can all be placed at the change's linearization point, in arrival
//!   order, each answering what its own function gave. A hot key thus costs one round per
//!   batch instead of one per operation. Every operation of a batch shares its outcome: all
//!   were applied, none was (`no_majority`), or `indeterminate` for all of them together.
//!
//! # Outcomes
//! An operation whose prepare found no majority wrote nothing: [`StrongError::Unavailable`]
//! (`no_majority`). Once an accept was sent, a failure is **indeterminate**
//! ([`StrongError::Indeterminate`], `indeterminate`): a minority may hold the new value and a
//! later proposer may complete it. Before answering that, the proposer tries one recovery
//! round (`recover`): if the highest accepted value it then finds is its own, it completes it
//! and answers success; if that value's ballot is below its own, its value was never chosen
//! and no longer can be, so it applies the operations to the value found and answers from
//! that. It never retries a function it may have applied: a write is applied once or not at
//! all. An accept that a majority refused counts as "nothing accepted" only once *every*
//! acceptor refused (the phase waits briefly for the last answers, `phase`'s `settle`): an
//! acceptor that had not answered may have accepted. And a proposer's fresh ballots stay
//! above every ballot it used, its promised next ballots included, so that no ballot of it
//! ever carries two values.
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
//! # Not done
//! Acceptor state of deleted keys is kept (a tombstone of about 40 bytes per key): the
//! paper's garbage collection is not implemented, which is safe. Strong buckets take no
//! sloppy quorum, hints, siblings, TTL or chunked values.

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
    fn apply(&self, current: &Option<Vec<u8>>) -> (Option<Vec<u8>>, Result<Option<ByteBuf>, StrongError>) {
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
/// Keys one [`PaxosKeys`] page lists during [`carry_over`].
pub const CARRY_PAGE: u32 = 1000;

/// What a proposer remembers of a key it wrote last: the ballot the acceptors promised it
/// next, the value they accepted, and under which replica sets.
struct Cached {
    next: Ballot,
    value: Option<Vec<u8>>,
    sets: Vec<Vec<String>>,
}

#[derive(Default)]
struct Cache {
    keys: HashMap<(u32, Vec<u8>), Cached>,
    bytes: usize,
}

/// Counters of the proposer since start, shown by `cluster status` (group `strong`) and read
/// by `tests/bench/compare.sh`: round trips per operation are `round_trips / ops`, and per
/// batch (what each operation waits for) `round_trips / batches`.
#[derive(Debug, Default)]
pub struct ProposerStats {
    /// Operations proposed here (forwarded here by another node included).
    pub ops: AtomicU64,
    /// Rounds run for them: one per batch of operations queued on a key
    /// (`ops / batches` is the mean batch size).
    pub batches: AtomicU64,
    /// Round trips to replicas, summed over the batches (each operation of a batch waited
    /// for all of its batch's).
    pub round_trips: AtomicU64,
    /// Operations answered by one round of acceptor reads (batches of reads only).
    pub quorum_reads: AtomicU64,
    /// Operations answered by one accept at a cached promise (no prepare).
    pub fast_writes: AtomicU64,
    /// Operations answered indeterminate.
    pub indeterminate: AtomicU64,
    /// Ballot conflicts (a refusal by a higher promise).
    pub conflicts: AtomicU64,
    /// Operations this node received and forwarded to the key's proposer on another node
    /// (one more cluster round trip before the proposer's; they count in that node's `ops`).
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
    /// Per key with a round running: the operations waiting for the next one.
    queues: Mutex<Queues>,
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

    fn cached(&self, key: &(u32, Vec<u8>), sets: &[Vec<String>]) -> Option<(Ballot, Option<Vec<u8>>)> {
        let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        cache
            .keys
            .get(key)
            .filter(|c| c.sets == sets)
            .map(|c| (c.next, c.value.clone()))
    }

    fn remember(&self, key: (u32, Vec<u8>), next: Ballot, value: Option<Vec<u8>>, sets: Vec<Vec<String>>) {
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

    fn forget(&self, key: &(u32, Vec<u8>)) {
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(old) = cache.keys.remove(key) {
            cache.bytes -= old.value.as_ref().map_or(0, Vec::len) + key.1.len();
        }
    }

    /// Queues `op` (on `n` replicas) for `key`'s next round and waits: for its answer, or to
    /// lead that round. With no round running on the key, the caller leads at once.
    async fn queue(&self, key: &(u32, Vec<u8>), op: &StrongOp, n: usize, deadline: Instant) -> Wake {
        let rx = {
            let mut queues = self.queues.lock().unwrap_or_else(|p| p.into_inner());
            match queues.get_mut(key) {
                None => {
                    queues.insert(key.clone(), Vec::new());
                    return Wake::Lead(Vec::new());
                }
                Some(waiting) => {
                    let (tx, rx) = tokio::sync::oneshot::channel();
                    waiting.push(Waiter {
                        op: op.clone(),
                        n,
                        deadline,
                        tx,
                    });
                    rx
                }
            }
        };
        let mut queued = Queued {
            proposer: self,
            key,
            rx: Some(rx),
        };
        let wake = queued.rx.as_mut().expect("set above").await;
        queued.rx = None;
        wake.unwrap_or_else(|_| {
            // The leader's round was dropped with this operation in it.
            Wake::Done(Err(StrongError::Indeterminate(
                "the key's proposer stopped during the round that carried this operation".into(),
            )))
        })
    }

    /// Puts `waiters` back at the head of `key`'s queue (a leader left them for the next
    /// round).
    fn requeue(&self, key: &(u32, Vec<u8>), mut waiters: Vec<Waiter>) {
        if waiters.is_empty() {
            return;
        }
        let mut queues = self.queues.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(waiting) = queues.get_mut(key) {
            waiters.append(waiting);
            *waiting = waiters;
        }
    }

    /// Ends a leader's turn on `key`: the operations waiting go to the first of them that is
    /// still waiting, who leads them in the next round; with none, the key is idle.
    fn hand_over(&self, key: &(u32, Vec<u8>)) {
        let mut queues = self.queues.lock().unwrap_or_else(|p| p.into_inner());
        let Some(waiting) = queues.get_mut(key) else {
            return;
        };
        let mut waiting = std::mem::take(waiting).into_iter();
        // A waiter whose caller went away is skipped: its operation never ran.
        while let Some(next) = waiting.next() {
            if let Err(Wake::Lead(rest)) = next.tx.send(Wake::Lead(waiting.collect())) {
                waiting = rest.into_iter();
            } else {
                return;
            }
        }
        queues.remove(key);
    }
}

/// Per key (partition, stored key) with a round running on a proposer: the operations
/// waiting for the next round.
type Queues = HashMap<(u32, Vec<u8>), Vec<Waiter>>;

/// An operation waiting for its key's next round on a proposer.
struct Waiter {
    op: StrongOp,
    n: usize,
    deadline: Instant,
    tx: tokio::sync::oneshot::Sender<Wake>,
}

/// What a queued operation hears: its answer (value, round trips), or that it leads the next
/// round, with these other operations.
enum Wake {
    Done(Result<(Option<ByteBuf>, u8), StrongError>),
    Lead(Vec<Waiter>),
}

/// An operation waiting in a key's queue. If its caller goes away after the turn was handed
/// to it but before it took it, the turn goes on to the next waiter: no key is left with a
/// queue and no leader.
struct Queued<'a> {
    proposer: &'a Proposer,
    key: &'a (u32, Vec<u8>),
    rx: Option<tokio::sync::oneshot::Receiver<Wake>>,
}

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        if let Some(mut rx) = self.rx.take() {
            rx.close();
            if let Ok(Wake::Lead(rest)) = rx.try_recv() {
                self.proposer.requeue(self.key, rest);
                self.proposer.hand_over(self.key);
            }
        }
    }
}

/// A leader's turn on a key: hands the turn over when it ends, also if the leader's future
/// is dropped.
struct Leading<'a> {
    proposer: &'a Proposer,
    key: &'a (u32, Vec<u8>),
}

impl Drop for Leading<'_> {
    fn drop(&mut self) {
        self.proposer.hand_over(self.key);
    }
}

/// The replica sets of `partition` whose majorities a strong operation needs: the read
/// version's first `n`, then every other live version's (a layout transition).
///
/// # Errors
/// [`StrongError::NoLayout`] when the partition has no replicas.
pub fn replica_sets(placements: &Placements, partition: u32, n: usize) -> Result<Vec<Vec<String>>, StrongError> {
    let prefs = placements
        .prefs
        .get(partition as usize)
        .filter(|p| !p.is_empty())
        .ok_or(StrongError::NoLayout)?;
    let mut sets = vec![prefs[..n.min(prefs.len())].to_vec()];
    for set in placements.also_write.get(partition as usize).into_iter().flatten() {
        let s = set[..n.min(set.len())].to_vec();
        if !s.is_empty() && !sets.contains(&s) {
            sets.push(s);
        }
    }
    Ok(sets)
}

fn union(sets: &[Vec<String>]) -> Vec<String> {
    let mut all: Vec<String> = Vec::new();
    for s in sets {
        for n in s {
            if !all.contains(n) {
                all.push(n.clone());
            }
        }
    }
    all
}

/// How one phase went.
struct Tally<T> {
    /// Acceptors that did what was asked, with their answers.
    ok: Vec<(String, T)>,
    /// Acceptors that refused (a higher promise, or a newer layout): they changed nothing.
    refused: Vec<String>,
    /// Acceptors that failed or did not answer: they may or may not have done it.
    unknown: Vec<(String, String)>,
    /// Highest ballot a refusing acceptor had promised.
    beaten_by: Ballot,
    /// A newer layout an acceptor reported.
    stale_layout: Option<u64>,
    /// A storage error an acceptor reported (the same on every replica for bad input).
    storage: Option<StorageError>,
}

impl<T> Tally<T> {
    fn causes(&self) -> String {
        let mut out: Vec<String> = self
            .unknown
            .iter()
            .map(|(n, e)| format!("{n}: {e}"))
            .collect();
        for n in &self.refused {
            out.push(format!("{n}: refused"));
        }
        if let Some(v) = self.stale_layout {
            out.push(format!("a replica knows layout version {v}, newer than this node's"));
        }
        out.join("; ")
    }

    fn ok_nodes(&self) -> Vec<&str> {
        self.ok.iter().map(|(n, _)| n.as_str()).collect()
    }
}

fn majority(set_len: usize, weak: bool) -> usize {
    if weak {
        1
    } else {
        set_len / 2 + 1
    }
}

fn met(sets: &[Vec<String>], oks: &[&str], weak: bool) -> bool {
    sets.iter().all(|s| {
        s.iter().filter(|n| oks.contains(&n.as_str())).count() >= majority(s.len(), weak)
    })
}

fn impossible(sets: &[Vec<String>], failed: &[&str], weak: bool) -> bool {
    sets.iter().any(|s| {
        let left = s.iter().filter(|n| !failed.contains(&n.as_str())).count();
        left < majority(s.len(), weak)
    })
}

/// What one acceptor answered in a phase: `Ok(answer)`, or a refusal with the ballot it
/// promised.
type Vote<T> = Result<Fenced<Result<T, Ballot>>, ReplicaError>;

/// Asks every node of the union of `sets` with `call` and gathers answers until a majority
/// of every set said ok, a majority became impossible, or `deadline`. With `settle` (an
/// accept), once a majority became impossible it still waits a little for the acceptors
/// that have not answered (as long again as the phase took so far, at least
/// [`SETTLE_MIN`], within `deadline`): if they all refuse too, nothing was accepted anywhere
/// and the operation can run again instead of answering `indeterminate`.
async fn phase<T, F, Fut>(sets: &[Vec<String>], deadline: Instant, weak: bool, settle: bool, call: F) -> Tally<T>
where
    F: Fn(String) -> Fut,
    Fut: std::future::Future<Output = (String, Vote<T>)>,
{
    let targets = union(sets);
    let mut pending: FuturesUnordered<Fut> = targets.iter().cloned().map(&call).collect();
    let mut tally = Tally {
        ok: Vec::new(),
        refused: Vec::new(),
        unknown: Vec::new(),
        beaten_by: Ballot::ZERO,
        stale_layout: None,
        storage: None,
    };
    let started = Instant::now();
    let mut settling = false;
    let sleep = tokio::time::sleep_until(deadline.into());
    tokio::pin!(sleep);
    loop {
        if met(sets, &tally.ok_nodes(), weak) {
            break;
        }
        let failed: Vec<&str> = tally
            .refused
            .iter()
            .map(String::as_str)
            .chain(tally.unknown.iter().map(|(n, _)| n.as_str()))
            .collect();
        if impossible(sets, &failed, weak) {
            if !settle || pending.is_empty() {
                break;
            }
            if !settling {
                settling = true;
                let now = Instant::now();
                let until = now + (now - started).max(SETTLE_MIN);
                sleep.as_mut().reset(until.min(deadline).into());
            }
        }
        tokio::select! {
            next = pending.next() => match next {
                None => break,
                Some((node, Ok(Fenced::Ok(Ok(t))))) => tally.ok.push((node, t)),
                Some((node, Ok(Fenced::Ok(Err(promised))))) => {
                    tally.beaten_by = tally.beaten_by.max(promised);
                    tally.refused.push(node);
                }
                Some((node, Ok(Fenced::StaleLayout(v)))) => {
                    tally.stale_layout = Some(tally.stale_layout.unwrap_or(0).max(v));
                    tally.refused.push(node);
                }
                Some((node, Err(e))) => {
                    if let Some(s) = e.storage() {
                        tally.storage = Some(s.clone());
                    }
                    tally.unknown.push((node, e.to_string()));
                }
            },
            _ = &mut sleep => {
                let answered: Vec<String> = tally.ok.iter().map(|(n, _)| n.clone())
                    .chain(tally.refused.iter().cloned())
                    .chain(tally.unknown.iter().map(|(n, _)| n.clone()))
                    .collect();
                for n in targets.iter().filter(|n| !answered.contains(n)) {
                    tally.unknown.push((n.clone(), "no answer in time".into()));
                }
                break;
            }
        }
    }
    tally
}

/// Least time an accept phase waits for its last answers once a majority is out of reach
/// ([`phase`]).
const SETTLE_MIN: Duration = Duration::from_millis(2);

/// Result of an accept phase.
enum Accepted {
    /// A majority of every set accepted.
    Chosen,
    /// Every acceptor (of every set) answered a refusal: nothing was accepted anywhere.
    NoneAccepted,
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

impl<T: ReplicaTransport> Run<'_, T> {
    fn weak(&self) -> bool {
        self.proposer.weakened()
    }

    async fn read_states(&mut self, sets: &[Vec<String>], layout: u64) -> Tally<AcceptorState> {
        self.round_trips = self.round_trips.saturating_add(1);
        let left = self.deadline.saturating_duration_since(Instant::now());
        let (partition, bucket, key) = (self.partition, self.bucket, self.key);
        let peers = self.peers;
        phase(sets, self.deadline, self.weak(), false, |node| {
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

    async fn step(&mut self, sets: &[Vec<String>], layout: u64, step: PaxosStep) -> Tally<AcceptorState> {
        self.round_trips = self.round_trips.saturating_add(1);
        let left = self.deadline.saturating_duration_since(Instant::now());
        let (partition, bucket, key) = (self.partition, self.bucket, self.key);
        let peers = self.peers;
        let settle = matches!(step, PaxosStep::Accept { .. });
        let tally = phase(sets, self.deadline, self.weak(), settle, |node| {
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
            self.proposer.stats.conflicts.fetch_add(1, Ordering::Relaxed);
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
        // Fresh ballots stay above every ballot this proposer used or asked to be promised: a
        // prepare at the ballot of a fast accept that reached only a minority could otherwise
        // get a majority and accept another value at the same ballot.
        self.proposer.saw(next);
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
        // Nothing accepted anywhere only if every acceptor answered a refusal: the phase stops
        // waiting once a majority is out of reach, and an acceptor that had not answered
        // then may still accept (a proposer that took that for "none" and ran the operation
        // again could apply it twice, or answer `condition_failed` for a `cas` it applied).
        if tally.ok.is_empty() && tally.unknown.is_empty() && tally.refused.len() == union(sets).len() {
            return Ok(Accepted::NoneAccepted);
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

/// Runs a strong operation on `(bucket, key)` of partition `partition`, proposed by this
/// node, within `timeout`: replicas are the first `n` of each live layout version's
/// preference list. While a round on the key runs here, the operation waits and joins the
/// next round with the other operations that waited (see "Per key" in the module docs); an
/// operation whose time ran out in the queue answers `no_majority` (nothing written), and the
/// one that leads a round may be answered up to the round's latest operation's time limit.
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
    let proposer = &ctx.strong;
    let skey = ringkv_storage::keys::storage_key(bucket, key)?;
    let cache_key = (partition, skey);
    let deadline = Instant::now() + timeout;
    proposer.stats.ops.fetch_add(1, Ordering::Relaxed);
    let reply = |(value, round_trips)| StrongReply {
        value,
        round_trips,
        forwarded: false,
    };
    let others = match proposer.queue(&cache_key, op, n, deadline).await {
        Wake::Done(answer) => return answer.map(reply),
        Wake::Lead(others) => others,
    };
    let _leading = Leading {
        proposer,
        key: &cache_key,
    };
    // This round takes the waiting operations of the same `n` whose time is not up; the
    // others wait for the next one.
    let (batch, later): (Vec<Waiter>, Vec<Waiter>) = others.into_iter().partition(|w| w.n == n);
    proposer.requeue(&cache_key, later);
    let now = Instant::now();
    let (batch, late): (Vec<Waiter>, Vec<Waiter>) = batch.into_iter().partition(|w| w.deadline > now);
    for w in late {
        let out_of_time = StrongError::Unavailable("the request's time ran out".into());
        let _ = w.tx.send(Wake::Done(Err(out_of_time)));
    }
    let ops: Vec<StrongOp> = std::iter::once(op.clone())
        .chain(batch.iter().map(|w| w.op.clone()))
        .collect();
    // The round may take the time of its latest operation: the leader, which waited longest,
    // may then be answered after its own time limit, but a round cut short by the oldest
    // operation's limit would leave every fresh operation in it indeterminate.
    let deadline = batch.iter().map(|w| w.deadline).fold(deadline, Instant::max);
    let mut run = Run {
        peers,
        proposer,
        partition,
        bucket,
        key,
        deadline,
        round_trips: 0,
    };
    let mut answers = match run_ops(&mut run, &cache_key, &ops, n).await {
        // Refused by every replica's writer, so nothing was written: one of the operations
        // is bad input (a value over the record limit); each runs alone to find which.
        Err(StrongError::Storage(_)) if ops.len() > 1 => {
            let mut each = Vec::with_capacity(ops.len());
            for op in &ops {
                each.push(match run_ops(&mut run, &cache_key, std::slice::from_ref(op), n).await {
                    Ok(mut a) => a.pop().unwrap_or(Ok(None)),
                    Err(e) => Err(e),
                });
            }
            each
        }
        Ok(answers) => answers,
        Err(e) => vec![Err(e); ops.len()],
    };
    proposer.stats.batches.fetch_add(1, Ordering::Relaxed);
    proposer
        .stats
        .round_trips
        .fetch_add(u64::from(run.round_trips), Ordering::Relaxed);
    let indeterminate = answers
        .iter()
        .filter(|a| matches!(a, Err(StrongError::Indeterminate(_))))
        .count();
    proposer
        .stats
        .indeterminate
        .fetch_add(indeterminate as u64, Ordering::Relaxed);
    let rt = run.round_trips;
    let mine = answers.remove(0);
    for (w, answer) in batch.into_iter().zip(answers) {
        let _ = w.tx.send(Wake::Done(answer.map(|v| (v, rt))));
    }
    mine.map(|v| reply((v, rt)))
}

/// Backoff after a ballot conflict or a stale layout: 1 to 8 ms, random (so duelling
/// proposers fall out of step), growing with the attempt.
fn backoff(attempt: u32) -> Duration {
    let cap = 1u64 << attempt.min(3);
    Duration::from_micros(rand::random::<u64>() % (cap * 1000) + 500)
}

/// The answers of `ops` applied in order from `current`, and the value they leave.
fn apply_all(ops: &[StrongOp], current: &Option<Vec<u8>>) -> (Option<Vec<u8>>, Vec<Answer>) {
    let mut value = current.clone();
    let answers = ops
        .iter()
        .map(|op| {
            let (next, answer) = op.apply(&value);
            value = next;
            answer
        })
        .collect();
    (value, answers)
}

/// One operation's own answer within its batch: its value (a `get`), or `condition_failed`.
type Answer = Result<Option<ByteBuf>, StrongError>;

/// Runs `ops` (one batch, in order) as one change of the key: their answers, or why the
/// whole batch failed.
async fn run_ops<T: ReplicaTransport>(
    run: &mut Run<'_, T>,
    cache_key: &(u32, Vec<u8>),
    ops: &[StrongOp],
    n: usize,
) -> Result<Vec<Answer>, StrongError> {
    let count = ops.len() as u64;
    let view = run.peers.context().view.clone();
    let mut attempt = 0u32;
    let mut tried_read = false;
    loop {
        if Instant::now() >= run.deadline {
            return Err(StrongError::Unavailable("the request's time ran out".into()));
        }
        // Counted as in flight under its layout version until it returns, like every write:
        // a transition's transfers start only once no operation uses older replica sets.
        let (placements, _guard) = view.placements_for_write();
        let layout = placements.version;
        let sets = replica_sets(&placements, run.partition, n)?;

        // Reads only: one round of acceptor reads, if a majority agrees.
        if ops.iter().all(|op| matches!(op, StrongOp::Get)) && !tried_read {
            tried_read = true;
            let tally = run.read_states(&sets, layout).await;
            let weak = run.weak();
            if met(&sets, &tally.ok_nodes(), weak) {
                let first = &tally.ok[0].1;
                if tally.ok.iter().all(|(_, s)| s.accepted == first.accepted) {
                    run.proposer.stats.quorum_reads.fetch_add(count, Ordering::Relaxed);
                    let value = first.value.clone().map(ByteBuf::from);
                    return Ok(vec![Ok(value); ops.len()]);
                }
            } else if tally.stale_layout.is_some() {
                tokio::time::sleep(backoff(attempt)).await;
                attempt += 1;
                tried_read = false;
                continue;
            } else if tally.ok.is_empty() && !tally.unknown.is_empty() && impossible_now(&sets, &tally, weak) {
                return Err(StrongError::Unavailable(tally.causes()));
            }
        }

        // A write on a key this proposer wrote last: accept at the promised next ballot.
        if let Some((ballot, value)) = run.proposer.cached(cache_key, &sets) {
            let (new, answers) = apply_all(ops, &value);
            match run.accept(&sets, layout, ballot, new.clone()).await? {
                Accepted::Chosen => {
                    run.proposer.stats.fast_writes.fetch_add(count, Ordering::Relaxed);
                    run.proposer
                        .remember(cache_key.clone(), ballot_after(ballot), new, sets);
                    return Ok(answers);
                }
                Accepted::NoneAccepted => {
                    run.proposer.forget(cache_key);
                }
                Accepted::Unknown(why) => {
                    run.proposer.forget(cache_key);
                    return recover(run, cache_key, ops, &sets, layout, ballot, new, answers, why).await;
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
            Accepted::NoneAccepted => {
                // Beaten between our phases; nothing of ours is anywhere: start over.
                tokio::time::sleep(backoff(attempt)).await;
                attempt += 1;
            }
            Accepted::Unknown(why) => {
                return recover(run, cache_key, ops, &sets, layout, ballot, new, answers, why).await;
            }
        }
    }
}

fn impossible_now(sets: &[Vec<String>], tally: &Tally<AcceptorState>, weak: bool) -> bool {
    let failed: Vec<&str> = tally
        .refused
        .iter()
        .map(String::as_str)
        .chain(tally.unknown.iter().map(|(n, _)| n.as_str()))
        .collect();
    impossible(sets, &failed, weak)
}

fn ballot_after(b: Ballot) -> Ballot {
    Ballot {
        counter: b.counter + 1,
        proposer: b.proposer,
    }
}

/// After an accept of `value` at `ballot` that a majority did not confirm: one more round,
/// a prepare at a fresh ballot `b2`, which finds the highest accepted ballot of a majority:
///
/// * `ballot` itself: the value is ours; accepting it again at `b2` completes it, and the
///   operations answer as they did (`answers`).
/// * below `ballot`: ours was not chosen (a majority that accepted it would meet this one in
///   an acceptor reporting it), and with `b2` promised by a majority it can no longer be
///   (nor be picked up by another proposer and then chosen, its ballot being below `b2`
///   where that proposer's majority meets this one). So the operations took no effect yet:
///   they are applied to the value found and accepted at `b2`, and answer from that value.
/// * above `ballot`: another proposer wrote after ours, which it may or may not have built
///   on: the outcome stays unknown.
///
/// Whenever the round at `b2` is not confirmed either, the outcome stays unknown.
#[allow(clippy::too_many_arguments)]
async fn recover<T: ReplicaTransport>(
    run: &mut Run<'_, T>,
    cache_key: &(u32, Vec<u8>),
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
                let (new, answers) = if current.accepted == ballot {
                    (value, answers)
                } else if current.accepted < ballot {
                    apply_all(ops, &current.value)
                } else {
                    break;
                };
                if let Ok(Accepted::Chosen) = run.accept(sets, layout, b2, new.clone()).await {
                    run.proposer
                        .remember(cache_key.clone(), ballot_after(b2), new, sets.to_vec());
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

/// Carries the strong keys of `partition` over to the newest layout's replica set, before
/// this node (a new replica of it) reports the partition transferred: lists the keys that
/// have an acceptor state on a **majority** of the read version's replicas (a chosen value is
/// on a majority, which meets every majority), page by page, and runs an identity round on
/// each with joint quorums (every live set), which leaves its value accepted by a majority
/// of the new set. Answers the number of keys carried.
///
/// # Errors
/// Why it stopped (no majority of the old set listed its keys, a key's round failed); the
/// transfer retries later.
pub async fn carry_over<T: ReplicaTransport>(peers: &T, partition: u32) -> Result<u64, String> {
    let ctx = peers.context();
    let placements = ctx.view.placements();
    let old: Vec<String> = placements
        .prefs
        .get(partition as usize)
        .cloned()
        .unwrap_or_default();
    if old.is_empty() {
        return Ok(0);
    }
    let need = old.len() / 2 + 1;
    let mut after: Option<Vec<u8>> = None;
    let mut carried = 0u64;
    loop {
        // One page from each old replica; the keys up to the smallest "last key" of a full
        // page are complete for every replica that answered.
        let pages = futures::future::join_all(old.iter().map(|node| {
            let req = PaxosKeys {
                partition,
                after: after.clone().map(ByteBuf::from),
                max: CARRY_PAGE,
            };
            async move { peers.call(node, req, ctx.timeout).await }
        }))
        .await;
        let answered: Vec<Vec<ByteBuf>> = pages.into_iter().filter_map(Result::ok).collect();
        if answered.len() < need {
            return Err(format!(
                "only {} of {} replicas of partition {partition} listed their strong keys ({need} needed)",
                answered.len(),
                old.len()
            ));
        }
        let bound: Option<Vec<u8>> = answered
            .iter()
            .filter(|p| p.len() >= CARRY_PAGE as usize)
            .filter_map(|p| p.last().map(|k| k.to_vec()))
            .min();
        let mut keys: Vec<Vec<u8>> = answered
            .into_iter()
            .flatten()
            .map(ByteBuf::into_vec)
            .filter(|k| bound.as_ref().is_none_or(|b| k <= b))
            .collect();
        keys.sort();
        keys.dedup();
        for stored in &keys {
            let Some((bucket, key)) = ringkv_storage::keys::split_storage_key(stored) else {
                continue;
            };
            let n = usize::from(ctx.view.read().bucket_props(bucket).n);
            propose(peers, partition, bucket, key, &StrongOp::Get, n, ctx.timeout)
                .await
                .map_err(|e| format!("carrying over a strong key of partition {partition}: {e}"))?;
            carried += 1;
        }
        match bound {
            Some(b) => after = Some(b),
            None => return Ok(carried),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(v: &str) -> StrongOp {
        StrongOp::Put {
            value: ByteBuf::from(v.as_bytes().to_vec()),
        }
    }

    fn cas(expect: Option<&str>, new: &str) -> StrongOp {
        StrongOp::Cas {
            expect: expect.map(|e| ByteBuf::from(e.as_bytes().to_vec())),
            new: Some(ByteBuf::from(new.as_bytes().to_vec())),
        }
    }

    fn b(v: &str) -> Option<ByteBuf> {
        Some(ByteBuf::from(v.as_bytes().to_vec()))
    }

    /// A batch applies its operations in order, each answering from the value the ones
    /// before it left: as if they ran one after the other.
    #[test]
    fn a_batch_applies_its_operations_in_order() {
        let ops = [
            StrongOp::Get,
            cas(None, "a"),
            cas(None, "b"),
            StrongOp::Get,
            put("c"),
            cas(Some("c"), "d"),
            StrongOp::Delete,
            StrongOp::Get,
        ];
        let (value, answers) = apply_all(&ops, &None);
        assert_eq!(value, None);
        assert_eq!(answers[0], Ok(None));
        assert_eq!(answers[1], Ok(None));
        assert_eq!(
            answers[2],
            Err(StrongError::ConditionFailed { current: b("a") })
        );
        assert_eq!(answers[3], Ok(b("a")));
        assert_eq!(answers[5], Ok(None));
        assert_eq!(answers[7], Ok(None));
        let (value, _) = apply_all(&ops[..6], &None);
        assert_eq!(value, Some(b"d".to_vec()));
    }
}
