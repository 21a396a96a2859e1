//! The Repair actor: active anti-entropy with Merkle trees (Dynamo section 4.7; Riak's AAE;
//! Cassandra's repair).
//!
//! Every partition keeps a hash tree over its keys that each write updates
//! (`ringkv_storage::merkle`: 16-way, 4096 segments, XOR-combined entry hashes). Every
//! `repair-interval-ms` this actor sweeps the partitions this node holds. For each one it
//! exchanges with every other replica whose name sorts after its own (so each pair of
//! replicas is compared once per round, by one side):
//!
//! 1. compare the roots; if they are equal, stop;
//! 2. walk down the tree, asking only for the children of branches that differ, level by
//!    level, down to the differing segments;
//! 3. fetch the other side's `(key, entry hash)` list of those segments and find the keys that
//!    differ;
//! 4. fetch the other side's records of those keys, merge into the local replica what the
//!    local one lacks, and send the other side what it lacks (merges by version: a dominated
//!    version is dropped, concurrent ones become siblings).
//!
//! So the cost of an exchange grows with the difference, not with the data.
//!
//! **The last exchange of each pair.** Every exchange a sweep runs is remembered on the node
//! that ran it, in memory ([`ExchangeLog`]: per partition, per peer, the time, the keys
//! repaired and the outcome, at most [`EXCHANGE_LOG_PEERS`] peers per partition), for
//! `ringkv explain`, which asks the replicas of a key's partition for it (as `riak-admin
//! aae-status` shows Riak's last exchanges).
//!
//! **Bucket `n`.** A key lives on the first `n` nodes of its partition's preference list (its
//! bucket's `n`, [`key_replicas`]); an exchange moves only differing keys whose replicas
//! include both nodes.
//!
//! **Tombstone purge.** After a sweep in which this node exchanged with every replica whose
//! name is above its own, it lists its tombstones older than `tombstone-grace-ms` whose key's
//! first replica (by name) it is, asks each other replica of each such key whether it holds the
//! same entry hash, and asks those replicas (itself included) to purge exactly those, each one
//! only if its entry is still unchanged. A tombstone is therefore purged only when every replica is known
//! to hold it, never by a timer alone; the grace period bounds how long a hint or a paused
//! node may still carry an older version of the key.
//!
//! **Expired values** (a put's time to live) are purged the same way, in the same pass: a key
//! whose every sibling is a tombstone older than the grace or a value that expired more than
//! `tombstone-grace-ms + max-clock-skew-ms` ago ([`PurgeDelays`]) is a candidate, and every
//! replica must hold its entry unchanged. Each replica deletes it only if its own clock also
//! sees it expired. The expiry is absolute (the coordinating node's clock at the write plus
//! the TTL) and travels in the record, so a copy that comes back after the purge (from a
//! replica that was down, a late hint) is still expired and reads as missing; the skew in the
//! delay means that by the time a value is purged every node's clock (within
//! `max-clock-skew-ms` of each other) already sees it expired, so no node serves such a copy
//! as live. It is then purged again by a later pass.

use crate::replica::{vnode_call, Peers};
use crate::rpc::{
    CheckEntries, Fetch, MergeStored, MerkleChildren, Purge, ReplicaError, ReplicaTransport,
    SegmentEntries,
};
use crate::stats::add;
use crate::vnode::{Reply, VNodeMsg};
use ringkv_storage::merkle::{diff_entries, differing_children, DEPTH};
use ringkv_storage::{DvvSet, PurgeBefore, StorageError};
use serde_bytes::ByteBuf;
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;

/// Keys fetched per request.
pub const FETCH_BATCH: usize = 64;
/// Segments whose key lists one request asks for (bounds the answer's size).
pub const SEGMENTS_PER_REQUEST: usize = 256;
/// Tombstones considered per partition and sweep.
pub const PURGE_BATCH: usize = 1000;
/// Time limit of each exchange request.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// The Repair actor: a [`Periodic`](crate::periodic::Periodic) run of [`AntiEntropy`].
pub type Repair = crate::periodic::Periodic<AntiEntropy>;

/// The anti-entropy job: one sweep over the partitions held per run.
pub struct AntiEntropy<T: ReplicaTransport = Peers> {
    /// How other replicas are reached; its context holds the partitions.
    pub peers: T,
    /// How long tombstones and expired values wait before they may be purged.
    pub purge: PurgeDelays,
    /// Unreferenced chunks of large values younger than this are not collected
    /// ([`crate::large::collect_garbage`]).
    pub chunk_grace: Duration,
}

impl<T: ReplicaTransport> crate::periodic::PeriodicJob for AntiEntropy<T> {
    const NAME: &'static str = "repair";

    async fn run(self: Arc<Self>) {
        sweep(&self.peers, self.purge).await;
        collect_all(&self.peers, self.chunk_grace).await;
    }
}

/// How long deleted and expired versions wait before the purge may remove them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PurgeDelays {
    /// `tombstone-grace-ms`: tombstones younger than this, and values expired for less than
    /// this plus `max_clock_skew`, are not purged. It bounds how long a hint or a paused node
    /// may still carry an older version of the key.
    pub tombstone_grace: Duration,
    /// `max-clock-skew-ms`: the most any two nodes' wall clocks may differ. An expiry is set
    /// by one node's clock and judged by others', so expired values wait this much longer.
    pub max_clock_skew: Duration,
}

impl PurgeDelays {
    /// The delays for tombstones only (no clock skew).
    pub fn grace(tombstone_grace: Duration) -> Self {
        Self {
            tombstone_grace,
            max_clock_skew: Duration::ZERO,
        }
    }

    /// The purge cutoffs at `now_ms` (ms since the Unix epoch): tombstones written before
    /// `now - grace`, values expired before `now - grace - skew`.
    pub fn before(&self, now_ms: u64) -> PurgeBefore {
        let grace = self.tombstone_grace.as_millis() as u64;
        let skew = self.max_clock_skew.as_millis() as u64;
        PurgeBefore {
            deleted_ms: now_ms.saturating_sub(grace),
            expired_ms: now_ms.saturating_sub(grace).saturating_sub(skew),
        }
    }
}

/// Why an exchange stopped.
#[derive(Debug, Error)]
pub enum ExchangeError {
    /// The other replica did not answer.
    #[error(transparent)]
    Replica(#[from] ReplicaError),
    /// A storage error on either side.
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// What one exchange cost and did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExchangeReport {
    /// Request/answer round trips.
    pub round_trips: u64,
    /// Hashes received from the other replica (tree nodes and key entries).
    pub hashes: u64,
    /// Encoded bytes of requests and answers.
    pub bytes: u64,
    /// Keys found different.
    pub differing: u64,
    /// Keys merged here plus keys sent there.
    pub repaired: u64,
}

/// Most peers [`ExchangeLog`] remembers per partition (a partition has at most 3 other
/// replicas in one layout; during layout changes it may have had more): the least recent
/// is forgotten first.
pub const EXCHANGE_LOG_PEERS: usize = 8;

/// Longest error message [`ExchangeLog`] keeps, bytes (longer ones are cut at a character
/// boundary).
pub const EXCHANGE_ERROR_BYTES: usize = 256;

/// The last anti-entropy exchange this node ran with one peer for one partition.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LastExchange {
    /// The other replica.
    pub peer: String,
    /// When the exchange ended, ms since the Unix epoch on this node's clock.
    pub at_ms: u64,
    /// Whether it completed.
    pub ok: bool,
    /// Keys it found different (0 when it failed).
    #[serde(default)]
    pub keys_differing: u64,
    /// Keys it repaired: merged here plus sent there (0 when it failed; keys merged before
    /// the failure stay merged and are counted in `cluster status`).
    #[serde(default)]
    pub keys_repaired: u64,
    /// Keys the exchanges of this pair repaired since this node started, this one included.
    #[serde(default)]
    pub keys_repaired_total: u64,
    /// Why it failed, cut to [`EXCHANGE_ERROR_BYTES`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// When the last exchange with this peer that completed ended (this one, if it did),
    /// ms since the Unix epoch; `None` if none completed since this node started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_ok_ms: Option<u64>,
}

/// The last exchange per partition and peer, kept in memory on the node that ran it (lost
/// at a restart), bounded by [`EXCHANGE_LOG_PEERS`] per partition.
#[derive(Debug, Default)]
pub struct ExchangeLog {
    by_partition: std::sync::Mutex<std::collections::HashMap<u32, Vec<LastExchange>>>,
}

impl ExchangeLog {
    /// Records that the exchange of partition `p` with `peer` ended at `at_ms` (ms since the
    /// Unix epoch) with `outcome`: its report, or why it failed. Replaces the previous record
    /// of that pair; keeps the time of the last completed one.
    pub fn record(&self, p: u32, peer: &str, at_ms: u64, outcome: Result<&ExchangeReport, String>) {
        let mut map = self.by_partition.lock().unwrap_or_else(|e| e.into_inner());
        let rows = map.entry(p).or_default();
        let previous = rows.iter().find(|r| r.peer == peer);
        let previous_ok = previous.and_then(|r| r.last_ok_ms);
        let previous_total = previous.map_or(0, |r| r.keys_repaired_total);
        rows.retain(|r| r.peer != peer);
        let row = match outcome {
            Ok(report) => LastExchange {
                peer: peer.to_string(),
                at_ms,
                ok: true,
                keys_differing: report.differing,
                keys_repaired: report.repaired,
                keys_repaired_total: previous_total.saturating_add(report.repaired),
                error: None,
                last_ok_ms: Some(at_ms),
            },
            Err(mut error) => {
                if error.len() > EXCHANGE_ERROR_BYTES {
                    let mut cut = EXCHANGE_ERROR_BYTES;
                    while !error.is_char_boundary(cut) {
                        cut -= 1;
                    }
                    error.truncate(cut);
                }
                LastExchange {
                    peer: peer.to_string(),
                    at_ms,
                    ok: false,
                    keys_differing: 0,
                    keys_repaired: 0,
                    keys_repaired_total: previous_total,
                    error: Some(error),
                    last_ok_ms: previous_ok,
                }
            }
        };
        rows.push(row);
        if rows.len() > EXCHANGE_LOG_PEERS {
            rows.sort_by_key(|r| std::cmp::Reverse(r.at_ms));
            rows.truncate(EXCHANGE_LOG_PEERS);
        }
    }

    /// The last exchange with each peer of partition `p`, by peer name.
    pub fn of(&self, p: u32) -> Vec<LastExchange> {
        let map = self.by_partition.lock().unwrap_or_else(|e| e.into_inner());
        let mut rows = map.get(&p).cloned().unwrap_or_default();
        rows.sort_by(|a, b| a.peer.cmp(&b.peer));
        rows
    }
}

/// One sweep over every partition this node holds. A partition whose replicas are changing
/// (a layout transition gives it other nodes) is left to the transfer, which copies it and
/// verifies it with exchanges of its own; the sweep takes it up again once the newest version
/// is the only one.
pub async fn sweep<T: ReplicaTransport>(peers: &T, delays: PurgeDelays) {
    let local = peers.local().to_string();
    for (p, prefs) in settled_partitions(peers) {
        let mut complete = true;
        for other in prefs.iter().filter(|o| **o > local) {
            if !peers.reachable(other) {
                complete = false;
                peers.context().stats.repair.last.record(
                    p,
                    other,
                    crate::coordinator::now_ms(),
                    Err(format!("skipped: node {other} is unreachable")),
                );
                continue;
            }
            let outcome = exchange(peers, p, other).await;
            peers.context().stats.repair.last.record(
                p,
                other,
                crate::coordinator::now_ms(),
                outcome.as_ref().map_err(ToString::to_string),
            );
            match outcome {
                Ok(report) => {
                    let r = &peers.context().stats.repair;
                    add(&r.exchanges, 1);
                    add(&r.hashes_sent, report.hashes);
                    add(&r.bytes_sent, report.bytes);
                    if report.repaired > 0 {
                        tracing::info!(partition = p, peer = %other, differing = report.differing, repaired = report.repaired, hashes = report.hashes, bytes = report.bytes, "anti-entropy repaired keys");
                    }
                }
                Err(e) => {
                    complete = false;
                    tracing::debug!(partition = p, peer = %other, error = %e, "anti-entropy exchange failed");
                }
            }
        }
        // Each tombstone is purged by the first (by name) of its key's replicas, which has
        // just exchanged with every other one of them.
        if complete && prefs.iter().all(|n| peers.reachable(n)) {
            if let Err(e) = purge(peers, p, &prefs, delays).await {
                tracing::debug!(partition = p, error = %e, "tombstone purge skipped");
            }
        }
    }
}

/// The partitions this node holds whose replicas are not changing (no layout transition
/// gives them other nodes), each with its preference list; none before a layout exists.
fn settled_partitions<T: ReplicaTransport>(peers: &T) -> Vec<(u32, Vec<String>)> {
    let state = peers.context().view.snapshot();
    if state.layout.is_none() {
        return Vec::new();
    }
    let local = peers.local().to_string();
    (0..peers.context().partitions.len() as u32)
        .filter_map(|p| {
            let sets = state.replica_sets(p);
            (sets.read.contains(&local) && sets.also_write.is_empty()).then_some((p, sets.read))
        })
        .collect()
}

/// Collects the unreferenced chunks of large values ([`crate::large::collect_garbage`]) and
/// erases deleted strong keys ([`crate::strong::collect_garbage`]) in every partition this
/// node holds whose replicas are all reachable and not changing.
pub async fn collect_all<T: ReplicaTransport>(peers: &T, grace: Duration) {
    for (p, prefs) in settled_partitions(peers) {
        if !prefs.iter().all(|n| peers.reachable(n)) {
            continue;
        }
        match crate::large::collect_garbage(peers, p, &prefs, grace).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(partition = p, records = n, "large-value garbage collected"),
            Err(e) => {
                tracing::debug!(partition = p, error = %e, "large-value garbage collection skipped")
            }
        }
        match crate::strong::collect_garbage(peers, p, &prefs).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(partition = p, keys = n, "deleted strong keys erased"),
            Err(e) => {
                tracing::debug!(partition = p, error = %e, "strong-key garbage collection skipped")
            }
        }
    }
}

/// Runs `message` on this node's vnode of partition `p`, the local side of an exchange or a
/// purge, within [`CALL_TIMEOUT`] ([`vnode_call`]).
///
/// # Errors
/// [`ExchangeError::Replica`] with this node's [`crate::rpc::ReplicaFailure`].
async fn on_local_vnode<T: Send + 'static, P: ReplicaTransport>(
    peers: &P,
    p: u32,
    message: impl Fn(Reply<T>) -> VNodeMsg,
) -> Result<T, ExchangeError> {
    vnode_call(&peers.context().directory, p, CALL_TIMEOUT, message)
        .await
        .map_err(|e| ReplicaError::Failed(peers.local().to_string(), e).into())
}

/// Which differing keys an exchange repairs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExchangeScope {
    /// Only keys whose bucket keeps a replica on both nodes (the first `n` nodes of the
    /// partition's preference list, [`key_replicas`]): periodic anti-entropy.
    BucketReplicas,
    /// Every differing key, whatever its bucket's `n` or the current preference list: the
    /// verification of a partition transfer ([`crate::transfer`]), which must end with equal
    /// Merkle roots on both sides while layouts change.
    AllKeys,
}

/// Compares partition `p` here with its replica on `other` and repairs both sides, for the
/// keys whose bucket keeps a replica on both ([`ExchangeScope::BucketReplicas`]).
///
/// # Errors
/// [`ExchangeError`] if `other` does not answer or storage fails; keys already merged stay
/// merged.
pub async fn exchange<T: ReplicaTransport>(
    peers: &T,
    p: u32,
    other: &str,
) -> Result<ExchangeReport, ExchangeError> {
    exchange_scoped(peers, p, other, ExchangeScope::BucketReplicas).await
}

/// [`exchange`] with the choice of which differing keys are repaired (`scope`).
///
/// # Errors
/// As [`exchange`].
pub async fn exchange_scoped<T: ReplicaTransport>(
    peers: &T,
    p: u32,
    other: &str,
    scope: ExchangeScope,
) -> Result<ExchangeReport, ExchangeError> {
    let mut report = ExchangeReport::default();
    let mut parents = vec![0u32];
    for level in 0..=DEPTH {
        let ours = on_local_vnode(peers, p, |reply| VNodeMsg::MerkleChildren {
            level,
            parents: parents.clone(),
            reply,
        })
        .await?;
        let request = MerkleChildren {
            partition: p,
            level,
            parents: parents.clone(),
        };
        let answer = peers.call_sized(other, request, CALL_TIMEOUT).await?;
        let theirs = answer.answer;
        report.round_trips += 1;
        report.hashes += theirs.len() as u64;
        report.bytes += (answer.sent + answer.received) as u64;
        // Level 0 compares the roots; below, only the children of differing branches.
        if level > 0 {
            parents = differing_children(level, &parents, &ours, &theirs);
        }
        if (level == 0 && ours == theirs) || parents.is_empty() {
            return Ok(report);
        }
    }
    // `parents` now lists the differing segments.
    let mut theirs: Vec<(u32, Vec<u8>, u64)> = Vec::new();
    for chunk in parents.chunks(SEGMENTS_PER_REQUEST) {
        let request = SegmentEntries {
            partition: p,
            segments: chunk.to_vec(),
        };
        let answer = peers.call_sized(other, request, CALL_TIMEOUT).await?;
        report.round_trips += 1;
        report.hashes += answer.answer.len() as u64;
        report.bytes += (answer.sent + answer.received) as u64;
        theirs.extend(
            answer
                .answer
                .into_iter()
                .map(|(s, k, h)| (s, k.into_vec(), h)),
        );
    }
    let ours = on_local_vnode(peers, p, |reply| VNodeMsg::SegmentEntries {
        segments: parents.clone(),
        reply,
    })
    .await?;
    // Only keys whose bucket keeps a replica on both nodes (its `n` first nodes of the
    // preference list, in some live layout version: a transfer verifies a new replica against
    // an old one) are exchanged: a bucket with n=1 or n=2 is never copied further.
    let state = peers.context().view.snapshot();
    let all_prefs: Vec<Vec<String>> = state
        .live_layouts()
        .map(|c| state.preference_list_in(c, p))
        .collect();
    let keys: Vec<Vec<u8>> = diff_entries(&ours, &theirs)
        .into_iter()
        .filter(|k| {
            if scope == ExchangeScope::AllKeys {
                return true;
            }
            let mut here = false;
            let mut there = false;
            for prefs in &all_prefs {
                let replicas = key_replicas(&state, prefs, k);
                here |= replicas.iter().any(|r| r == peers.local());
                there |= replicas.iter().any(|r| r == other);
            }
            here && there
        })
        .collect();
    report.differing = keys.len() as u64;
    let mut next = 0;
    while next < keys.len() {
        let chunk = &keys[next..(next + FETCH_BATCH).min(keys.len())];
        let request = Fetch {
            partition: p,
            keys: chunk.iter().cloned().map(ByteBuf::from).collect(),
        };
        let answer = peers.call_sized(other, request, CALL_TIMEOUT).await?;
        let records: Vec<Option<DvvSet>> = answer.answer;
        report.round_trips += 1;
        report.bytes += (answer.sent + answer.received) as u64;
        if records.is_empty() {
            return Err(StorageError::InvalidArgument("empty fetch answer".into()).into());
        }
        // The answer may stop early (its size is bounded); go on from where it stopped.
        next += records.len();
        let asked: Vec<ByteBuf> = chunk
            .iter()
            .take(records.len())
            .cloned()
            .map(ByteBuf::from)
            .collect();
        // Unbounded: the local records do not travel.
        let local_records = on_local_vnode(peers, p, |reply| VNodeMsg::Fetch {
            keys: asked.clone(),
            budget: usize::MAX,
            reply,
        })
        .await?;
        let mut pull = Vec::new();
        let mut push = Vec::new();
        for ((key, theirs), ours) in chunk.iter().zip(records).zip(local_records) {
            if let Some(t) = &theirs {
                if !ours.as_ref().is_some_and(|o| o.descends(t)) {
                    pull.push((key.clone(), t.clone()));
                }
            }
            if let Some(o) = ours {
                if !theirs.as_ref().is_some_and(|t| t.descends(&o)) {
                    push.push((ByteBuf::from(key.clone()), o));
                }
            }
        }
        report.repaired += (pull.len() + push.len()) as u64;
        // Periodic anti-entropy counts repaired keys as each merge lands, so an exchange
        // that fails halfway still counts what it repaired.
        let count = |n: usize| {
            if scope == ExchangeScope::BucketReplicas {
                add(&peers.context().stats.repair.keys_repaired, n as u64);
            }
        };
        if !pull.is_empty() {
            on_local_vnode(peers, p, |reply| VNodeMsg::MergeMany {
                entries: pull.clone(),
                reply,
            })
            .await?;
            count(pull.len());
        }
        let budget = peers.context().max_batch_bytes;
        for batch in by_size(push, budget, |(k, r)| (k.as_slice(), r)) {
            let sent = batch.len();
            let request = MergeStored {
                partition: p,
                entries: batch,
            };
            let answer = peers.call_sized(other, request, CALL_TIMEOUT).await?;
            count(sent);
            report.round_trips += 1;
            report.bytes += (answer.sent + answer.received) as u64;
        }
    }
    Ok(report)
}

/// Splits records into batches of at most `budget` encoded bytes (`max-record-bytes`, see
/// [`crate::replica::entry_bytes`]), so that every batch fits in one cluster message. A
/// record that alone is over the budget (stored before the record limit existed) is logged
/// and left out: it cannot travel.
pub(crate) fn by_size<T>(
    items: Vec<T>,
    budget: usize,
    parts: impl Fn(&T) -> (&[u8], &DvvSet),
) -> Vec<Vec<T>> {
    let mut batches = Vec::new();
    let mut current = Vec::new();
    let mut bytes = 0;
    for item in items {
        let (key, record) = parts(&item);
        let size = crate::replica::entry_bytes(key, record);
        if size > budget {
            tracing::error!(
                bytes = size,
                limit = budget,
                "a record over max-record-bytes cannot be sent to another replica"
            );
            continue;
        }
        if bytes + size > budget {
            batches.push(std::mem::take(&mut current));
            bytes = 0;
        }
        bytes += size;
        current.push(item);
    }
    if !current.is_empty() {
        batches.push(current);
    }
    batches
}

/// The replicas of a stored key: the first `n` nodes of its partition's preference list
/// `prefs`, `n` being its bucket's (all of `prefs` for a key that does not parse).
pub fn key_replicas<'a>(
    state: &ringkv_cluster::membership::ClusterState,
    prefs: &'a [String],
    stored_key: &[u8],
) -> &'a [String] {
    match ringkv_storage::keys::split_storage_key(stored_key) {
        Some((bucket, _)) => {
            let n = state.bucket_props(bucket).n as usize;
            &prefs[..n.clamp(1, prefs.len().max(1)).min(prefs.len())]
        }
        None => prefs,
    }
}

/// Purges the tombstones of partition `p` older than the grace, and its values expired for
/// longer than the grace plus the clock skew (`delays`), that every replica in `prefs` holds
/// unchanged; returns how many this node purged.
///
/// # Errors
/// [`ExchangeError`] if a replica does not answer (then nothing more is purged this round).
pub async fn purge<T: ReplicaTransport>(
    peers: &T,
    p: u32,
    prefs: &[String],
    delays: PurgeDelays,
) -> Result<usize, ExchangeError> {
    let before = delays.before(crate::coordinator::now_ms());
    let state = peers.context().view.snapshot();
    let local = peers.local().to_string();
    // This node purges the tombstones of the keys whose first replica (by name) it is.
    let mut candidates: Vec<(Vec<u8>, u64)> =
        on_local_vnode(peers, p, |reply| VNodeMsg::Tombstones {
            before,
            limit: PURGE_BATCH,
            reply,
        })
        .await?
        .into_iter()
        .filter(|(k, _)| key_replicas(&state, prefs, k).iter().min() == Some(&local))
        .collect();
    if candidates.is_empty() {
        return Ok(0);
    }
    let entries_for = |node: &String, candidates: &[(Vec<u8>, u64)]| -> Vec<(Vec<u8>, u64)> {
        candidates
            .iter()
            .filter(|(k, _)| key_replicas(&state, prefs, k).contains(node))
            .cloned()
            .collect()
    };
    for node in prefs.iter().filter(|n| **n != local) {
        let asked = entries_for(node, &candidates);
        if asked.is_empty() {
            continue;
        }
        let request = CheckEntries {
            partition: p,
            entries: asked
                .iter()
                .map(|(k, h)| (ByteBuf::from(k.clone()), *h))
                .collect(),
        };
        let held = peers.call(node, request, CALL_TIMEOUT).await?;
        let missing: Vec<&Vec<u8>> = asked
            .iter()
            .zip(held)
            .filter_map(|((k, _), h)| (!h).then_some(k))
            .collect();
        candidates.retain(|(k, _)| !missing.contains(&k));
        if candidates.is_empty() {
            return Ok(0);
        }
    }
    let mut purged_here = 0;
    for node in prefs {
        let entries = entries_for(node, &candidates);
        if entries.is_empty() {
            continue;
        }
        let request = Purge {
            partition: p,
            entries: entries
                .iter()
                .map(|(k, h)| (ByteBuf::from(k.clone()), *h))
                .collect(),
        };
        let n = peers.call(node, request, CALL_TIMEOUT).await?;
        if *node == local {
            purged_here = n;
        }
    }
    tracing::info!(
        partition = p,
        purged = purged_here,
        "purged tombstones and expired values held by every replica"
    );
    Ok(purged_here)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(differing: u64, repaired: u64) -> ExchangeReport {
        ExchangeReport {
            differing,
            repaired,
            ..Default::default()
        }
    }

    #[test]
    fn the_exchange_log_keeps_the_last_exchange_per_peer_within_its_bound() {
        let log = ExchangeLog::default();
        assert!(log.of(7).is_empty());
        log.record(7, "n3", 1_000, Ok(&report(2, 4)));
        log.record(7, "n2", 1_100, Ok(&report(0, 0)));
        log.record(8, "n2", 1_200, Ok(&report(1, 1)));
        let rows = log.of(7);
        assert_eq!(
            rows.iter().map(|r| r.peer.as_str()).collect::<Vec<_>>(),
            vec!["n2", "n3"]
        );
        assert_eq!((rows[1].keys_differing, rows[1].keys_repaired), (2, 4));
        assert_eq!(rows[1].last_ok_ms, Some(1_000));

        // A failure replaces the pair's record and keeps when it last completed.
        log.record(7, "n3", 2_000, Err("x".repeat(1000)));
        let n3 = log.of(7).into_iter().find(|r| r.peer == "n3").unwrap();
        assert!(!n3.ok);
        assert_eq!((n3.at_ms, n3.keys_repaired), (2_000, 0));
        assert_eq!(n3.last_ok_ms, Some(1_000));
        assert_eq!(n3.keys_repaired_total, 4, "kept across a failure");
        assert_eq!(
            n3.error.as_ref().map(String::len),
            Some(EXCHANGE_ERROR_BYTES)
        );
        log.record(7, "n3", 2_050, Ok(&report(1, 3)));
        let n3 = log.of(7).into_iter().find(|r| r.peer == "n3").unwrap();
        assert_eq!((n3.keys_repaired, n3.keys_repaired_total), (3, 7));
        assert_eq!((n3.last_ok_ms, n3.error), (Some(2_050), None));
        // Multi-byte characters are cut at a boundary.
        log.record(7, "n3", 2_100, Err("é".repeat(EXCHANGE_ERROR_BYTES)));
        let n3 = log.of(7).into_iter().find(|r| r.peer == "n3").unwrap();
        assert!(n3.error.unwrap().len() <= EXCHANGE_ERROR_BYTES);

        // At most EXCHANGE_LOG_PEERS peers per partition: the least recent goes first.
        for i in 0..20u64 {
            log.record(9, &format!("p{i:02}"), 10_000 + i, Ok(&report(0, 0)));
        }
        let rows = log.of(9);
        assert_eq!(rows.len(), EXCHANGE_LOG_PEERS);
        assert_eq!(rows[0].peer, format!("p{:02}", 20 - EXCHANGE_LOG_PEERS));
        assert_eq!(log.of(8).len(), 1, "partitions are apart");
    }
}
