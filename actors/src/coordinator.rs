//! The Coordinator: one per client request, with Dynamo's quorum rules.
//!
//! It is a state machine run in the request's own task (`execute`), not an actor: spawning
//! a ractor actor per request (a task, four channels and the process-wide registry of actor
//! ids) cost about 5-7 µs of server CPU per request, a quarter of a read's (measured with a
//! single node, workload C, 50 in flight: 22.4 µs/op as an actor, 14.5-17.7 µs/op inline).
//! Riak runs its get and put FSMs as processes because an Erlang process costs far less.
//!
//! * **Write** (put or delete): the coordinator asks the first reachable replica of the
//!   preference list (this node first, when it is a replica) to apply the write. That replica
//!   creates the new dot and stores the record durably. The coordinator then sends the
//!   resulting record to the other replicas, which merge it. It answers after `w` durable
//!   acknowledgements, the coordinating replica's included, or with
//!   [`KvError::Quorum`] saying how many answered. Merges still under way when it answers go
//!   on in the background, so every reachable replica gets the write.
//! * **Sloppy quorum** (bucket `sloppy_quorum`, the default; Dynamo section 4.6): a replica
//!   that is unreachable, or whose merge fails, gets the record as a durable **hint** on the
//!   next reachable node of the partition's fallback order (else on this node). A write is
//!   acknowledged once `w` **distinct nodes** hold it durably, as replicas or hint holders
//!   (Dynamo writes to the first `n` healthy nodes of the extended preference list): a node
//!   holding hints for several replicas counts once. The HintedHandoff actor of the
//!   holder delivers it later. If no replica at all is reachable, the new version is made
//!   here with a dot of a fresh random actor id (so it cannot collide with a dot any replica
//!   made) and every replica gets it as a hint. With `sloppy_quorum = false` only the
//!   preference list counts and nothing is hinted.
//! * **Conditional write** (`if_none_match`, `if_match`; [`ringkv_storage::Condition`]): the
//!   coordinating replica's writer checks the condition inside the transaction that applies
//!   the write, and each replica the record is merged into refuses the merge (writing
//!   nothing) if it holds a live version the record does not cover. A refused merge gets no
//!   hint, and a conditional write never takes the fresh-actor path above. Refusals that
//!   leave the write short of `w` answer `ConditionFailed`; with a strict quorum and `w = n`
//!   two conflicting conditional writes are never both acknowledged, otherwise the check is
//!   best effort (only the replicas reached are asked).
//! * **Time to live** (a put's `ttl`): the new version carries an absolute expiry, this
//!   node's clock at the write (the `timestamp_ms` sent with the write) plus the TTL, in the
//!   sibling itself ([`ringkv_storage::Sibling::expires_at_ms`]), so merges, hints, repairs and
//!   transfers carry it unchanged. Expired versions stay in the records the coordinator
//!   handles; only the answer to the client leaves them out (`Fetched::sealed`).
//! * **Read**: it asks `r` replicas (this node first, reachable ones before the others), one
//!   more for each that fails, and all of them if the `r` answers are not in after
//!   [`SPECULATIVE_AFTER`] (as Cassandra reads from the consistency level's replicas with a
//!   speculative retry; Riak asks all `n`). With `r + w > n` the replicas read always overlap
//!   the replicas written, whichever they are. It answers after `r` answers with the merge
//!   (DVV sync) of what they returned, and keeps listening until the deadline. Then it sends
//!   the merged record to every replica that answered with something older (**read
//!   repair**). Replicas not asked are brought up to date by anti-entropy. With sloppy
//!   quorum, when fewer than `r` replicas are reachable, the reachable fallback nodes are
//!   asked too and answer from the hints they hold for the key (Dynamo reads the first `n`
//!   healthy nodes); so a client on the minority side of a partition reads its own writes.
//!
//! Replicas are reached through a [`ReplicaTransport`]: for a running node [`Peers`] (the
//! local vnode directly, other nodes' Replica actors through ractor_cluster); in tests a
//! simulated network ([`crate::sim`]). A coordinator is never restarted: a failed request is
//! answered with an error and the client decides.

use crate::replica::Peers;
use crate::rpc::{Get, GetHinted, Merge, ReplicaError, ReplicaTransport, StoreHint, Update};

use futures::future::BoxFuture;
use futures::stream::{FuturesUnordered, StreamExt};
use ringkv_storage::{Condition, DvvSet, StorageError, VersionVector};
use serde_bytes::ByteBuf;
use std::time::{Duration, Instant};
use thiserror::Error;
use tokio::sync::mpsc;

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
    /// Fewer replicas answered than the quorum needs. `cause` classifies why; `causes` names
    /// each replica that failed and its failure.
    #[error("{op} quorum not reached: {answered} of {n} replicas answered, {needed} needed{}", if causes.is_empty() { String::new() } else { format!(" ({causes})") })]
    Quorum {
        /// `"read"` or `"write"`.
        op: &'static str,
        /// Replicas that answered successfully.
        answered: usize,
        /// Answers needed (`r` or `w`).
        needed: usize,
        /// Replicas asked (`n`).
        n: usize,
        /// What the failures have in common.
        cause: QuorumCause,
        /// `node: failure` of each replica that failed, `; `-separated.
        causes: String,
    },
    /// The node already holds its maximum of requests or bytes in flight; nothing was done.
    #[error("overloaded: {0}")]
    Overloaded(String),
    /// Quorum parameters that cannot be met (`r` or `w` of 0 or over `n`, `n` of 0).
    #[error("invalid quorum: {0}")]
    BadQuorum(String),
    /// The cluster has no committed layout yet, so no partition has replicas.
    #[error("the cluster has no committed layout: run `ringkv cluster plan` and `ringkv cluster commit`")]
    NoLayout,
    /// The node is shutting down or its supervision tree has stopped.
    #[error("the node is shutting down")]
    ShuttingDown,
    /// A fault-injection request reached a node that runs without `fault-injection`.
    #[error("fault injection is disabled on this node (start it with --fault-injection)")]
    FaultInjectionDisabled,
    /// A cluster administration request failed.
    #[error("{0}")]
    Admin(String),
    /// A streamed upload or a ranged read failed ([`crate::large`]).
    #[error(transparent)]
    Stream(#[from] crate::large::StreamError),
    /// A strong bucket's operation failed ([`crate::strong`]).
    #[error(transparent)]
    Strong(#[from] crate::strong::StrongError),
    /// An operation of strong buckets only (`cas`) on an eventual bucket, or an eventual
    /// bucket's option on a strong one.
    #[error("{0}")]
    WrongConsistency(String),
}

/// What the failed replicas of a request that missed its quorum have in common; it picks
/// the error code a client gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QuorumCause {
    /// Mixed or other failures (`quorum_failed`).
    Failed,
    /// The request's time limit passed while replicas were still to answer (`timeout`).
    Timeout,
    /// Every failed replica was unreachable: down, partitioned away or suspected by the
    /// failure detector (`unreachable`).
    Unreachable,
    /// Every failed replica's storage is full (`storage_full`).
    StorageFull,
    /// Every failed replica was overloaded (`overloaded`).
    Overloaded,
}

/// The class of one replica's failure.
fn classify(e: &ReplicaError) -> QuorumCause {
    use crate::replica::ReplicaFailure as F;
    match e {
        ReplicaError::Unreachable(_) => QuorumCause::Unreachable,
        ReplicaError::Timeout(_) | ReplicaError::Failed(_, F::VNodeTimeout(_)) => {
            QuorumCause::Timeout
        }
        ReplicaError::Overloaded { .. }
        | ReplicaError::Failed(_, F::Overloaded(_))
        | ReplicaError::Failed(_, F::Storage(StorageError::Overloaded { .. })) => {
            QuorumCause::Overloaded
        }
        ReplicaError::Failed(
            _,
            F::Storage(StorageError::Full { .. } | StorageError::HintStoreFull(_)),
        ) => QuorumCause::StorageFull,
        _ => QuorumCause::Failed,
    }
}

/// Per-replica failures of one request, for its error.
#[derive(Default)]
struct Failures(Vec<(String, ReplicaError)>);

impl Failures {
    fn push(&mut self, node: &str, e: ReplicaError) {
        self.0.push((node.to_string(), e));
    }

    /// The quorum error: `timeout` if the deadline passed with replicas still to answer
    /// (`pending`), else the class every failure shares, else `quorum_failed`.
    fn error(
        &self,
        op: &'static str,
        answered: usize,
        needed: usize,
        n: usize,
        pending: &[String],
        timeout: Duration,
    ) -> KvError {
        let mut causes: Vec<String> = self
            .0
            .iter()
            .map(|(node, e)| match e {
                ReplicaError::Failed(_, f) => format!("{node}: {f}"),
                e => e.to_string(),
            })
            .collect();
        causes.extend(
            pending
                .iter()
                .map(|node| format!("{node}: no answer within {} ms", timeout.as_millis())),
        );
        let cause = if !pending.is_empty() {
            QuorumCause::Timeout
        } else {
            let mut classes = self.0.iter().map(|(_, e)| classify(e));
            match classes.next() {
                Some(first) if classes.all(|c| c == first) => first,
                _ => QuorumCause::Failed,
            }
        };
        KvError::Quorum {
            op,
            answered,
            needed,
            n,
            cause,
            causes: causes.join("; "),
        }
    }
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
        /// New value or `None` for a tombstone: the bytes to store, encoded by `codec`
        /// (the caller compresses once, so every replica stores the same bytes).
        value: Option<Vec<u8>>,
        /// Applied only if this holds: checked by the coordinating replica's writer and by
        /// every replica the write is merged into (see `api/PROTOCOL.md`, "Conditional writes").
        condition: Condition,
        /// How `value` is encoded ([`ringkv_storage::codec`]).
        codec: ringkv_storage::Codec,
        /// Time to live of the value (`None`: it never expires; ignored for a tombstone): the
        /// new version expires at the coordinator's clock at the write (its `timestamp_ms`)
        /// plus this, rounded to milliseconds ([`ringkv_storage::Sibling::expires_at_ms`]).
        ttl: Option<Duration>,
    },
}

/// Where a request goes: the key's partition, its preference list and the quorums.
#[derive(Clone, Debug)]
pub struct Placement {
    /// The key's partition.
    pub partition: u32,
    /// Node names of the replicas (the first `n` of the preference list).
    pub replicas: Vec<String>,
    /// Read quorum, `1..=replicas.len()`.
    pub r: usize,
    /// Write quorum, `1..=replicas.len()`.
    pub w: usize,
    /// Sloppy quorum: hints on fallback nodes count toward `w`, each holder once (the bucket's
    /// `sloppy_quorum`).
    pub sloppy: bool,
    /// Nodes outside `replicas`, in the partition's deterministic fallback order: where hints
    /// for unreachable replicas go.
    pub fallbacks: Vec<String>,
    /// Most siblings per key (for a write no replica can coordinate).
    pub max_siblings: usize,
    /// During a layout transition, the other live versions' replica sets of the partition,
    /// each with its write quorum: a write goes to the union of `replicas` and these sets and
    /// is acknowledged only once it holds its quorum in every one of them
    /// ([`ringkv_cluster::transition`], as Garage's multi-version layouts). Empty outside a
    /// transition and for reads.
    pub also: Vec<(Vec<String>, usize)>,
}

impl Placement {
    /// Every set a write must reach its quorum in, `replicas` first.
    fn quorum_sets(&self) -> impl Iterator<Item = (&[String], usize)> {
        std::iter::once((self.replicas.as_slice(), self.w))
            .chain(self.also.iter().map(|(set, w)| (set.as_slice(), *w)))
    }

    /// The union of the quorum sets, `replicas` first, each node once.
    fn write_targets(&self) -> Vec<String> {
        let mut all = self.replicas.clone();
        for (set, _) in &self.also {
            for n in set {
                if !all.contains(n) {
                    all.push(n.clone());
                }
            }
        }
        all
    }

    /// True once, for every quorum set, the distinct nodes holding the write for one of its
    /// replicas (`stands`: replica, holder) reach its quorum.
    fn write_quorum_met(&self, stands: &[(String, String)]) -> bool {
        self.quorum_sets().all(|(set, w)| {
            let mut holders: Vec<&String> = stands
                .iter()
                .filter(|(replica, _)| set.contains(replica))
                .map(|(_, holder)| holder)
                .collect();
            holders.sort();
            holders.dedup();
            holders.len() >= w
        })
    }
}

/// Arguments of a [`Coordinator`].
pub struct CoordinatorArgs<T: ReplicaTransport = Peers> {
    /// What to do.
    pub request: KvRequest,
    /// Where.
    pub placement: Placement,
    /// How replicas are reached.
    pub peers: T,
    /// Time limit of the whole request.
    pub timeout: Duration,
}

/// Runs `request` on the replicas of `placement` within `timeout`, in the caller's task: the
/// key's state after it (`None`: a read of a key never written).
///
/// # Errors
/// [`KvError::Quorum`] when too few replicas answered, a [`KvError::Storage`] error that every
/// replica would give (bad input).
pub async fn coordinate<T: ReplicaTransport>(
    request: KvRequest,
    placement: Placement,
    peers: T,
    timeout: Duration,
) -> Result<Option<DvvSet>, KvError> {
    let args = CoordinatorArgs {
        request,
        placement,
        peers,
        timeout,
    };
    // Boxed: the coordinator's state is about 2.8 KB, and a future that awaited it inline
    // (the client listener's task per request) would be moved and copied whole when spawned.
    Box::pin(execute(args)).await
}

/// Runs one request to its end: the key's state after it (`None`: a read of a key never
/// written), or why it failed.
async fn execute<T: ReplicaTransport>(args: CoordinatorArgs<T>) -> Result<Option<DvvSet>, KvError> {
    let deadline = Instant::now() + args.timeout;
    let result = match &args.request {
        KvRequest::Get { bucket, key } => read(&args, bucket, key, deadline).await,
        KvRequest::Update {
            bucket,
            key,
            context,
            value,
            condition,
            codec,
            ttl,
        } => {
            let version = NewVersion {
                value,
                codec: *codec,
                ttl: *ttl,
            };
            write(&args, bucket, key, context, version, *condition, deadline).await
        }
    };
    result
}

/// True for storage errors that any replica would give for the same request (bad input),
/// as opposed to a failure of one replica.
fn is_request_error(e: &StorageError) -> bool {
    matches!(
        e,
        StorageError::EmptyBucket { .. }
            | StorageError::BucketTooLong { .. }
            | StorageError::EmptyKey { .. }
            | StorageError::KeyTooLong { .. }
            | StorageError::TooManySiblings { .. }
            | StorageError::RecordTooLarge { .. }
            | StorageError::BadContext(_)
            | StorageError::ConditionFailed { .. }
    )
}

/// Picks the node that keeps a hint for an unreachable replica: the next reachable fallback
/// (a node outside the preference list; each fallback is given to one replica only), else
/// this node. A hint counts toward `w` only if its holder does not hold the write already
/// (the coordinator counts distinct nodes).
fn hint_holder<T: ReplicaTransport>(
    peers: &T,
    fallbacks: &std::sync::Mutex<std::collections::VecDeque<String>>,
) -> String {
    let mut queue = fallbacks.lock().unwrap_or_else(|p| p.into_inner());
    while let Some(node) = queue.pop_front() {
        if peers.reachable(&node) {
            return node;
        }
    }
    peers.local().to_string()
}

/// What a write stores as the new version.
#[derive(Clone, Copy)]
struct NewVersion<'a> {
    /// The bytes to store (encoded by `codec`), `None` for a tombstone.
    value: &'a Option<Vec<u8>>,
    /// How `value` is encoded.
    codec: ringkv_storage::Codec,
    /// Time to live of the value, `None`: never expires.
    ttl: Option<Duration>,
}

impl NewVersion<'_> {
    /// The absolute expiry of a version written at `timestamp_ms` (ms since the Unix epoch,
    /// rounded down from the write's true time), saturating; `None` without a time to live. A
    /// time to live under a millisecond counts as one. One millisecond is added so that the
    /// rounding never makes a value expire before its time to live has passed.
    fn expires_at_ms(&self, timestamp_ms: u64) -> Option<u64> {
        self.ttl.map(|ttl| {
            let ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
            timestamp_ms.saturating_add(ms).saturating_add(1)
        })
    }
}

/// True if `e` is a replica's refusal of a conditional write.
fn is_condition_failure(e: &ReplicaError) -> bool {
    matches!(e.storage(), Some(StorageError::ConditionFailed { .. }))
}

/// A write: one replica coordinates it (makes the dot, stores it), the others merge the
/// result, and it is acknowledged once `w` distinct nodes hold it in every quorum set.
///
/// A conditional write (`condition` not [`Condition::None`]) is checked twice, each time by a
/// replica's writer inside the transaction that applies it: the coordinating replica checks
/// the key's current state ([`Condition::check_update`]; a failure there is answered at once
/// and nothing is stored anywhere), and each replica the result is merged into refuses the
/// merge if it holds a live version the result does not cover ([`Condition::check_merge`]).
/// A refused merge is not replaced by a hint, and a conditional write never falls back to a
/// fresh actor when no replica is reachable. If the refusals leave the write short of its
/// quorum it fails with [`StorageError::ConditionFailed`]; the replicas that accepted it keep
/// the new version (as with any write that misses `w`), and read repair or anti-entropy later
/// make it a sibling of the conflicting version.
async fn write<T: ReplicaTransport>(
    args: &CoordinatorArgs<T>,
    bucket: &[u8],
    key: &[u8],
    context: &VersionVector,
    version: NewVersion<'_>,
    condition: Condition,
    deadline: Instant,
) -> Result<Option<DvvSet>, KvError> {
    let NewVersion { value, codec, .. } = version;
    let Placement {
        partition,
        w,
        sloppy,
        ..
    } = &args.placement;
    let replicas = &args.placement.write_targets();
    let (n, w, sloppy) = (replicas.len(), *w, *sloppy);
    let mut failures = Failures::default();
    // The coordinating replica: this node if it is one, else the first reachable one.
    let mut order: Vec<&String> = replicas.iter().collect();
    order.sort_by_key(|node| **node != args.peers.local());
    let mut coordinated = None;
    for node in order {
        if !args.peers.reachable(node) {
            failures.push(node, ReplicaError::Unreachable(node.clone()));
            continue;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        let timestamp_ms = now_ms();
        let update = Update {
            partition: *partition,
            bucket: ByteBuf::from(bucket),
            key: ByteBuf::from(key),
            context: context.clone(),
            value: value.clone().map(ByteBuf::from),
            timestamp_ms,
            codec,
            condition,
            expires_at_ms: version.expires_at_ms(timestamp_ms),
        };
        match args.peers.call(node, update, left).await {
            Ok(record) => {
                coordinated = Some((node.clone(), record));
                break;
            }
            Err(e) if e.storage().is_some_and(is_request_error) => {
                return Err(e
                    .storage()
                    .cloned()
                    .map(KvError::from)
                    .unwrap_or(KvError::ShuttingDown));
            }
            Err(e) => {
                tracing::warn!(%node, partition, error = %e, "a replica failed to coordinate a write");
                failures.push(node, e);
            }
        }
    }
    // The distinct nodes that hold the write durably: a write is acknowledged once there are
    // `w` of them (Dynamo's sloppy quorum writes to the first `n` healthy nodes of the
    // extended preference list, distinct nodes; a node holding hints for several replicas
    // counts once).
    let mut holders: std::collections::HashSet<String> = std::collections::HashSet::new();
    // (replica, the node holding the write for it): what each quorum set counts.
    let mut stands: Vec<(String, String)> = Vec::new();
    let (coordinator, record) = match coordinated {
        // Every other replica now gets a merge, whose outcome replaces what the coordinating
        // attempts found.
        Some((node, record)) => {
            failures = Failures::default();
            holders.insert(node.clone());
            stands.push((node.clone(), node.clone()));
            (Some(node), record)
        }
        // No replica is reachable. A sloppy write still goes through: the new version gets a
        // dot of a fresh random actor id, so it cannot collide with any dot a replica made
        // (Riak's vnode epochs solve the same problem), and every replica receives it as a
        // hint.
        // A conditional write needs a replica to check its condition.
        None if sloppy && condition.is_none() && !args.placement.fallbacks.is_empty() => {
            failures = Failures::default();
            let mut record = DvvSet::new();
            let timestamp_ms = now_ms();
            record
                .update_encoded(
                    context,
                    rand::random(),
                    value.clone(),
                    codec,
                    timestamp_ms,
                    version.expires_at_ms(timestamp_ms),
                    args.placement.max_siblings,
                )
                .map_err(|l| StorageError::TooManySiblings { limit: l.limit })?;
            (None, record)
        }
        None => {
            let pending: Vec<String> = if Instant::now() >= deadline {
                replicas
                    .iter()
                    .filter(|r| !failures.0.iter().any(|(n, _)| n == *r))
                    .cloned()
                    .collect()
            } else {
                Vec::new()
            };
            return Err(failures.error("write", 0, w, n, &pending, args.timeout));
        }
    };
    // Every other replica gets the record: by a merge when reachable, else (sloppy) as a hint
    // on a fallback node. A merge that fails also falls back to a hint, unless it failed
    // because the merged record would pass the record limit (no hint can fix that).
    let fallbacks = std::sync::Arc::new(std::sync::Mutex::new(
        args.placement
            .fallbacks
            .iter()
            .cloned()
            .collect::<std::collections::VecDeque<_>>(),
    ));
    // (replica, Ok((the node that now holds the write for it, the replica's own failure if
    // that node holds it as a hint)) | Err(why no node does))
    type Outcome = Result<(String, Option<ReplicaError>), ReplicaError>;
    let (tx, mut rx) = mpsc::unbounded_channel::<(String, Outcome)>();
    let mut pending: Vec<String> = Vec::new();
    for node in replicas.iter().filter(|n| Some(*n) != coordinator.as_ref()) {
        pending.push(node.clone());
        let (peers, node, tx) = (args.peers.clone(), node.clone(), tx.clone());
        let fallbacks = fallbacks.clone();
        let (bucket, key, record, partition) = (
            ByteBuf::from(bucket),
            ByteBuf::from(key),
            record.clone(),
            *partition,
        );
        tokio::spawn(async move {
            let mut failure = ReplicaError::Unreachable(node.clone());
            if peers.reachable(&node) {
                let merge = Merge {
                    partition,
                    bucket: bucket.clone(),
                    key: key.clone(),
                    record: record.clone(),
                    condition,
                };
                let left = deadline.saturating_duration_since(Instant::now());
                match peers.call(&node, merge, left).await {
                    Ok(()) => {
                        let _ = tx.send((node.clone(), Ok((node, None))));
                        return;
                    }
                    Err(e) => {
                        tracing::warn!(%node, partition, error = %e, "a replica failed a write");
                        failure = e;
                    }
                }
            }
            // No hint can fix a record over the limit, and a replica that refused a
            // conditional write must not get it later as a hint.
            let too_large = matches!(failure.storage(), Some(StorageError::RecordTooLarge { .. }));
            if !sloppy || too_large || is_condition_failure(&failure) {
                let _ = tx.send((node, Err(failure)));
                return;
            }
            // Hinted handoff: a fallback keeps the record for `node` until it is back. The
            // hint is kept even after the deadline (it still heals the replica sooner).
            let holder = hint_holder(&peers, &fallbacks);
            let hint = StoreHint {
                owner: node.clone(),
                partition,
                bucket,
                key,
                record,
            };
            let left = deadline
                .saturating_duration_since(Instant::now())
                .max(Duration::from_millis(500));
            match peers.call(&holder, hint, left).await {
                Ok(()) => {
                    let _ = tx.send((node, Ok((holder, Some(failure)))));
                }
                Err(e) => {
                    tracing::warn!(owner = %node, %holder, error = %e, "could not store a hint");
                    let _ = tx.send((node, Err(e)));
                }
            }
        });
    }
    drop(tx);
    // Replicas whose write went only to a node that already held it: their own failure is
    // what the client should hear about if the quorum is missed.
    let mut stood_in: Vec<(String, Option<ReplicaError>)> = Vec::new();
    while !args.placement.write_quorum_met(&stands) {
        match tokio::time::timeout_at(deadline.into(), rx.recv()).await {
            Ok(Some((node, outcome))) => {
                pending.retain(|p| *p != node);
                match outcome {
                    Ok((holder, failure)) => {
                        stands.push((node.clone(), holder.clone()));
                        if !holders.insert(holder) {
                            stood_in.push((node, failure));
                        }
                    }
                    Err(e) => {
                        let refused = is_condition_failure(&e);
                        failures.push(&node, e);
                        // A refusal that leaves the quorum out of reach decides the answer:
                        // no need to wait for the other replicas.
                        if refused {
                            let mut best = stands.clone();
                            best.extend(pending.iter().map(|p| (p.clone(), p.clone())));
                            if !args.placement.write_quorum_met(&best) {
                                break;
                            }
                        }
                    }
                }
            }
            Ok(None) => {
                pending.clear();
                break;
            }
            Err(_) => break,
        }
    }
    if args.placement.write_quorum_met(&stands) {
        Ok(Some(record))
    } else if let Some(refusal) = failures.0.iter().find(|(_, e)| is_condition_failure(e)) {
        let refused: Vec<&str> = failures
            .0
            .iter()
            .filter(|(_, e)| is_condition_failure(e))
            .map(|(node, _)| node.as_str())
            .collect();
        let detail = match refusal.1.storage() {
            Some(StorageError::ConditionFailed { detail, .. }) => detail.clone(),
            _ => String::new(),
        };
        Err(StorageError::ConditionFailed {
            condition: condition.name().to_string(),
            detail: format!(
                "{detail} on replica(s) {} ({} of {n} replicas accepted the write, {w} needed); \
                 the write is not acknowledged",
                refused.join(", "),
                holders.len(),
            ),
        }
        .into())
    } else {
        for (node, failure) in stood_in {
            let failure = failure.unwrap_or_else(|| ReplicaError::Unreachable(node.clone()));
            failures.push(&node, failure);
        }
        Err(failures.error("write", holders.len(), w, n, &pending, args.timeout))
    }
}

async fn read<T: ReplicaTransport>(
    args: &CoordinatorArgs<T>,
    bucket: &[u8],
    key: &[u8],
    deadline: Instant,
) -> Result<Option<DvvSet>, KvError> {
    let Placement {
        partition,
        replicas,
        r,
        ..
    } = &args.placement;
    let (n, r) = (replicas.len(), *r);
    type Answer = (String, Result<Option<DvvSet>, ReplicaError>);
    // This node first, then the reachable replicas, then (sloppy quorum, when fewer than r
    // replicas are reachable) the reachable fallback nodes, which answer from the hints they
    // hold, then the unreachable replicas.
    // Each replica's reachability is looked up once (it takes the process-group lock).
    let (up, down): (Vec<&String>, Vec<&String>) =
        replicas.iter().partition(|node| args.peers.reachable(node));
    let mut order: Vec<(&String, bool)> = up.iter().map(|node| (*node, false)).collect();
    order.sort_by_key(|(node, _)| **node != args.peers.local());
    if args.placement.sloppy && up.len() < r {
        order.extend(
            args.placement
                .fallbacks
                .iter()
                .filter(|node| args.peers.reachable(node))
                .map(|node| (node, true)),
        );
    }
    // Fewer reachable replicas (and fallbacks) than `r`: the answer is known, give it now
    // rather than wait for nodes the failure detector has convicted.
    if order.len() < r {
        let mut failures = Failures::default();
        for node in &down {
            failures.push(node, ReplicaError::Unreachable((*node).clone()));
        }
        return Err(failures.error("read", 0, r, n, &[], args.timeout));
    }
    order.extend(down.into_iter().map(|node| (node, false)));
    let fallbacks: Vec<String> = order
        .iter()
        .filter(|(_, fallback)| *fallback)
        .map(|(node, _)| (*node).clone())
        .collect();
    let targets = order.len();
    // The replica calls run inside this task (no task per call): a read that one local
    // vnode answers costs no spawn at all. Calls still running when the quorum is met move
    // to a background task for read repair.
    let mut calls: FuturesUnordered<BoxFuture<'static, Answer>> = FuturesUnordered::new();
    let ask = |calls: &mut FuturesUnordered<BoxFuture<'static, Answer>>,
               (node, fallback): (&String, bool)| {
        let (peers, node) = (args.peers.clone(), node.clone());
        let (partition, bucket, key) = (*partition, ByteBuf::from(bucket), ByteBuf::from(key));
        let left = deadline.saturating_duration_since(Instant::now());
        calls.push(Box::pin(async move {
            let answer = if fallback {
                let get = GetHinted {
                    partition,
                    bucket,
                    key,
                };
                peers.call(&node, get, left).await
            } else {
                let get = Get {
                    partition,
                    bucket,
                    key,
                };
                peers.call(&node, get, left).await
            };
            (node, answer)
        }));
    };
    // Ask r replicas; ask one more for each that fails, and all the others if the r answers
    // are not in after SPECULATIVE_AFTER (Cassandra's speculative retry).
    let mut asked = 0;
    while asked < r.min(targets) {
        ask(&mut calls, order[asked]);
        asked += 1;
    }
    // Timers are registered only when first polled: a read answered before it needs them
    // costs none.
    let speculative = tokio::time::sleep(SPECULATIVE_AFTER);
    tokio::pin!(speculative);
    let expired = tokio::time::sleep_until(deadline.into());
    tokio::pin!(expired);
    let mut answers: Vec<(String, Option<DvvSet>)> = Vec::with_capacity(n);
    let mut failures = Failures::default();
    let mut replied = 0;
    let mut timed_out = false;
    while answers.len() < r && replied < asked {
        tokio::select! {
            biased;
            received = calls.next() => match received {
                Some((node, Ok(record))) => {
                    replied += 1;
                    answers.push((node, record));
                }
                Some((node, Err(e))) => {
                    replied += 1;
                    tracing::debug!(%node, error = %e, "replica failed a read");
                    failures.push(&node, e);
                    if asked < targets {
                        ask(&mut calls, order[asked]);
                        asked += 1;
                    }
                }
                None => break,
            },
            () = &mut speculative, if asked < targets => {
                while asked < targets {
                    ask(&mut calls, order[asked]);
                    asked += 1;
                }
            }
            () = &mut expired => {
                timed_out = true;
                break;
            }
        }
    }
    if answers.len() < r {
        let pending: Vec<String> = if timed_out {
            order[..asked]
                .iter()
                .map(|(node, _)| (*node).clone())
                .filter(|node| {
                    !answers.iter().any(|(a, _)| a == node)
                        && !failures.0.iter().any(|(f, _)| f == node)
                })
                .collect()
        } else {
            Vec::new()
        };
        return Err(failures.error("read", answers.len(), r, n, &pending, args.timeout));
    }
    let merged = merge_all(&answers);
    // Read repair: wait for the other answers (until the deadline), then bring every replica
    // that answered with less than the merge up to date. Nothing to wait for and nothing
    // stale (a single replica, or replicas that agree): no task.
    let stale = |answers: &[(String, Option<DvvSet>)], merged: &DvvSet| {
        answers.iter().any(|(node, record)| {
            !fallbacks.contains(node) && !record.as_ref().is_some_and(|r| r.descends(merged))
        })
    };
    let settled = calls.is_empty()
        && !merged
            .as_ref()
            .is_some_and(|merged| stale(&answers, merged));
    if settled {
        return Ok(merged);
    }
    let (peers, partition) = (args.peers.clone(), *partition);
    let (bucket, key) = (bucket.to_vec(), key.to_vec());
    tokio::spawn(async move {
        let expired = tokio::time::sleep_until(deadline.into());
        tokio::pin!(expired);
        loop {
            tokio::select! {
                received = calls.next() => match received {
                    Some((node, Ok(record))) => answers.push((node, record)),
                    Some((_, Err(_))) => {}
                    None => break,
                },
                () = &mut expired => break,
            }
        }
        let Some(merged) = merge_all(&answers) else {
            return;
        };
        for (node, record) in answers {
            if fallbacks.contains(&node) || record.as_ref().is_some_and(|r| r.descends(&merged)) {
                continue;
            }
            tracing::debug!(%node, partition, "read repair");
            let merge = Merge {
                partition,
                bucket: ByteBuf::from(bucket.clone()),
                key: ByteBuf::from(key.clone()),
                record: merged.clone(),
                condition: Condition::None,
            };
            if let Err(e) = peers.call(&node, merge, READ_REPAIR_TIMEOUT).await {
                tracing::debug!(%node, partition, error = %e, "read repair failed");
            }
        }
    });
    Ok(merged)
}

fn merge_all(answers: &[(String, Option<DvvSet>)]) -> Option<DvvSet> {
    answers
        .iter()
        .filter_map(|(_, r)| r.as_ref())
        .fold(None, |acc: Option<DvvSet>, r| {
            Some(match acc {
                Some(a) => a.sync(r),
                None => r.clone(),
            })
        })
}

/// A read asks `r` replicas; if their answers are not all in after this long, it asks the
/// other replicas too.
pub const SPECULATIVE_AFTER: Duration = Duration::from_millis(50);

/// Time limit of each read repair merge (they run after the read was answered).
pub const READ_REPAIR_TIMEOUT: Duration = Duration::from_secs(5);

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
