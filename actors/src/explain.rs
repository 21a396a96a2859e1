//! `ringkv explain BUCKET KEY`: where a key lives and why it reads as it does, gathered from
//! every node that can say something about it.
//!
//! The node a client asks ([`crate::Node::explain`], in `node/explain.rs`) works out the key's
//! partition, its **preference list** (the first `n` nodes of the partition's replicas, `n`
//! being the bucket's: the key's primaries) and its **fallbacks** in the order a sloppy
//! quorum tries them (Dynamo §4.6), with the liveness its failure detector gives each. It then
//! asks every live member, in parallel and with a time limit each, one [`crate::rpc::Explain`]
//! replica call, answered here by [`serve`]:
//!
//! - a primary reads its own replica of the key with `local` semantics (no quorum, no read
//!   repair) and summarises it ([`RecordSummary`]: the **dotted version vector** clock, the
//!   **siblings** with their sizes, and whether the key is a **tombstone**); for a strong
//!   bucket it summarises its Paxos acceptor state instead ([`PaxosSummary`]);
//! - every node lists the **hints** it holds for the key (**hinted handoff**: writes kept for
//!   an unreachable primary, with the name of that owner);
//! - every node gives the last **anti-entropy** exchange it ran for the partition with each
//!   other replica ([`crate::repair::ExchangeLog`]).
//!
//! Riak's `riak-admin` has the pieces apart (`preflist`, `aae-status`, `transfers`); this
//! puts them together for one key. Everything is bounded: at most [`MAX_SIBLINGS_LISTED`]
//! siblings and [`MAX_CLOCK_ENTRIES`] clock entries per record, [`MAX_HINTS_LISTED`] hints
//! per node out of a hint scan of at most [`HINT_SCAN_MAX`] entries, each summary saying how
//! many more there are. A node that cannot be asked, or does not answer in time, is reported
//! as unreachable; it never fails the whole request.

use crate::large::manifest_of;
use crate::replica::{blocking, vnode_call, ReplicaContext};
use crate::rpc::{Explain, ReplicaFailure};
use crate::vnode::VNodeMsg;
use ringkv_storage::paxos::{AcceptorState, Ballot};
use ringkv_storage::{Codec, DvvSet, ReplicaId, Sibling};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// Most siblings a [`RecordSummary`] lists; the others are counted in
/// [`RecordSummary::siblings_more`].
pub const MAX_SIBLINGS_LISTED: usize = 8;
/// Most version vector entries a [`RecordSummary`] lists; the others are counted in
/// [`RecordSummary::clock_more`].
pub const MAX_CLOCK_ENTRIES: usize = 16;
/// Most hints of the key one node lists (the others are counted by
/// [`ExplainAnswer::hints_pending`]).
pub const MAX_HINTS_LISTED: usize = 16;
/// Most stored hints (of every key) one node looks at to find the key's
/// ([`ringkv_storage::HintStore::hints_for`]); past it the list may be incomplete.
pub const HINT_SCAN_MAX: usize = 100_000;
/// Default time limit of each node's answer.
pub const EXPLAIN_TIMEOUT: Duration = Duration::from_secs(2);
/// Largest time limit of each node's answer a request may ask for (`timeout_ms` above it
/// is lowered to it).
pub const MAX_EXPLAIN_TIMEOUT: Duration = Duration::from_secs(60);

/// A replica id as `explain` shows it: 16 lower-case hex digits (as the node logs print it).
pub fn replica_hex(id: ReplicaId) -> String {
    format!("{id:016x}")
}

/// What a node reads of its own replica for [`crate::rpc::Explain`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExplainRead {
    /// Nothing: the node is not among the key's primaries (only hints and exchanges).
    #[default]
    Nothing,
    /// The key's record (an eventual bucket): [`ReplicaRead::Record`].
    Record,
    /// The key's Paxos acceptor state (a strong bucket): [`ReplicaRead::Paxos`].
    Paxos,
}

/// One sibling of a record, without its value.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SiblingSummary {
    /// The dot of the write that made it: `"{replica hex}:{counter}"`.
    pub dot: String,
    /// True for a tombstone (a delete).
    pub tombstone: bool,
    /// Length of the value, bytes, uncompressed (a large value's whole length); `None` for a
    /// tombstone, or a stored value whose header does not say (corrupt).
    pub size: Option<u64>,
    /// Bytes as stored in the record (compressed, or a large value's manifest).
    pub stored_bytes: u64,
    /// How the value is stored: `none`, `zstd`, `lz4`, or `manifest` (a large value).
    pub codec: String,
    /// True for a large (chunked) value: the record holds its manifest, the bytes are in
    /// chunks.
    pub large: bool,
    /// Chunks of a large value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chunks: Option<u64>,
    /// Wall-clock time of the write at its coordinator, ms since the Unix epoch.
    pub timestamp_ms: u64,
    /// When the value expires (its time to live), ms since the Unix epoch; `None`: never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at_ms: Option<u64>,
    /// True if it has expired by the summarising node's clock (it then reads as missing).
    pub expired: bool,
}

/// A key's record (a DVV set) as one node holds it, without values.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordSummary {
    /// The causal clock (dotted version vector): replica id (hex) to counter, the first
    /// [`MAX_CLOCK_ENTRIES`] by replica id.
    pub clock: BTreeMap<String, u64>,
    /// Clock entries left out of `clock`.
    pub clock_more: u64,
    /// Siblings, tombstones and expired values included.
    pub siblings: u64,
    /// Siblings holding a value that has not expired (what a `get` returns).
    pub live: u64,
    /// True if every sibling is a tombstone: the key is deleted.
    pub tombstone: bool,
    /// The first [`MAX_SIBLINGS_LISTED`] siblings, in dot order.
    pub listed: Vec<SiblingSummary>,
    /// Siblings left out of `listed`.
    pub siblings_more: u64,
    /// Bytes of the encoded record (what a replica stores and sends).
    pub bytes: u64,
}

/// A Paxos ballot as `explain` shows it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BallotSummary {
    /// Round number (0: no ballot).
    pub counter: u64,
    /// The proposer's id, 16 hex digits.
    pub proposer: String,
}

impl From<Ballot> for BallotSummary {
    fn from(b: Ballot) -> Self {
        Self {
            counter: b.counter,
            proposer: replica_hex(b.proposer),
        }
    }
}

/// A strong key's acceptor state on one replica ([`ringkv_storage::paxos`]), without the
/// value.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaxosSummary {
    /// Highest ballot promised (or accepted).
    pub promised: BallotSummary,
    /// Ballot of the accepted value (counter 0: nothing accepted).
    pub accepted: BallotSummary,
    /// Length of the accepted value, bytes; `None` when absent.
    pub value_size: Option<u64>,
    /// True if the accepted value is a delete (absent at a ballot above 0).
    pub tombstone: bool,
}

/// What a primary read of its own replica.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReplicaRead {
    /// Not asked ([`ExplainRead::Nothing`]).
    #[default]
    NotAsked,
    /// The replica holds nothing for the key.
    NoRecord,
    /// The key's record.
    Record(RecordSummary),
    /// The strong key's acceptor state.
    Paxos(PaxosSummary),
    /// The read failed on that node (its vnode did not answer, a storage error).
    Failed(String),
}

/// One hint a node holds for the key.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HintSummary {
    /// The primary the hint is for (the intended owner, unreachable when the write came).
    pub owner: String,
    /// The hint's sequence number in its holder's store (later hints have larger ones).
    pub seq: u64,
    /// The key's state the hint carries.
    pub record: RecordSummary,
}

/// A node's answer to [`crate::rpc::Explain`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExplainAnswer {
    /// Its wall clock when it answered, ms since the Unix epoch (the exchanges' times are on
    /// the same clock).
    pub now_ms: u64,
    /// Its replica of the key, if it was asked to read it.
    pub read: ReplicaRead,
    /// The first [`MAX_HINTS_LISTED`] hints it holds for the key.
    pub hints: Vec<HintSummary>,
    /// Hints it holds for the key, listed or not.
    pub hints_pending: u64,
    /// False if its hint scan stopped at [`HINT_SCAN_MAX`] before finding them all.
    pub hints_complete: bool,
    /// Why its hints could not be read, if they could not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hints_error: Option<String>,
    /// The last anti-entropy exchange it ran for the key's partition with each peer.
    pub exchanges: Vec<crate::repair::LastExchange>,
}

/// Most hints an [`ExplainReport`] lists over all holders (the others are counted in
/// [`ExplainReport::hints_more`]).
pub const MAX_HINTS_REPORTED: usize = 32;

/// A node as the answering node sees it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct NodeView {
    /// Node name.
    pub node: String,
    /// Up as the answering node's failure detector (phi-accrual) sees it; the answering node
    /// is always up.
    pub up: bool,
    /// The peer's current phi (0 for the answering node and for peers never heard from).
    pub phi: f64,
    /// True if the answering node can call it now: itself, or a peer with a session that is
    /// up and not cut off.
    pub reachable: bool,
}

/// One replica of the key: what it holds, as its node read it with `local` semantics.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ReplicaRow {
    /// Node name.
    pub node: String,
    /// `"ok"` (a record, or an acceptor state, below), `"no_record"` (the replica holds
    /// nothing for the key), `"unreachable"` (the node could not be asked or did not answer
    /// in time; `error` says which) or `"failed"` (it answered that its read failed).
    pub status: &'static str,
    /// Why it is unreachable or failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// An eventual bucket's record (status `ok`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub record: Option<RecordSummary>,
    /// A strong bucket's acceptor state (status `ok`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub paxos: Option<PaxosSummary>,
}

/// A hint some node holds for the key.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct HintRow {
    /// The node that holds it (a fallback, or a coordinator that found no fallback).
    pub holder: String,
    /// The primary it is for: hinted handoff delivers it there once that node is reachable.
    pub owner: String,
    /// Its sequence number in the holder's hint store.
    pub seq: u64,
    /// The key's state it carries.
    pub record: RecordSummary,
}

/// The last anti-entropy exchange of one pair of the partition's replicas. The exchange of
/// a pair is run by the node whose name sorts first ([`crate::repair`]), and remembered there.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ExchangeRow {
    /// The node that runs the pair's exchanges.
    pub node: String,
    /// The other replica.
    pub peer: String,
    /// `"ok"` (the last exchange completed), `"failed"` (it failed or was skipped: `error`
    /// says why), `"never"` (none since `node` started) or `"unknown"` (`node` did not
    /// answer).
    pub status: &'static str,
    /// How long ago the last exchange ended, ms (on `node`'s clock).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub age_ms: Option<u64>,
    /// When it ended, ms since the Unix epoch on `node`'s clock.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub at_ms: Option<u64>,
    /// Keys it found different.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keys_differing: Option<u64>,
    /// Keys it repaired (merged on `node` plus sent to `peer`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keys_repaired: Option<u64>,
    /// Keys the pair's exchanges repaired since `node` started.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keys_repaired_total: Option<u64>,
    /// Why it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// How long ago the last completed exchange of the pair ended, ms, if one did since
    /// `node` started.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_ok_age_ms: Option<u64>,
}

/// What `explain` answers (the `info` map of the protocol op; see `api/PROTOCOL.md`).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ExplainReport {
    /// The answering node.
    pub node: String,
    /// The answering node's wall clock when it gathered the answer, ms since the Unix epoch
    /// (expiries are absolute times: compare them with this).
    pub now_ms: u64,
    /// The bucket (bytes that are not UTF-8 replaced by U+FFFD).
    pub bucket: String,
    /// The key (likewise).
    pub key: String,
    /// The key's partition.
    pub partition: u32,
    /// Partition count Q.
    pub partitions: u32,
    /// The bucket's `consistency`: `"eventual"` or `"strong"`.
    pub consistency: &'static str,
    /// Replicas of the key: the bucket's `n`, or fewer in a smaller cluster.
    pub n: usize,
    /// The bucket's `sloppy_quorum`.
    pub sloppy_quorum: bool,
    /// The layout version reads use.
    pub layout_version: u64,
    /// The key's preference list: its primaries, the first `n` nodes of the partition's
    /// replicas.
    pub preference_list: Vec<NodeView>,
    /// During a layout change, the nodes of the other live layout versions that writes also
    /// reach (the partition's new replicas); empty otherwise.
    pub pending: Vec<NodeView>,
    /// The fallbacks in the order a sloppy write tries them for hints (the partition's
    /// replicas past `n`, then the other members by rendezvous hash). Empty for a strong
    /// bucket (no hints).
    pub fallbacks: Vec<NodeView>,
    /// Each primary's replica (and each pending node's), in preference-list order.
    pub replicas: Vec<ReplicaRow>,
    /// Hints held for the key, by holder, at most [`MAX_HINTS_REPORTED`].
    pub hints: Vec<HintRow>,
    /// Hints held for the key that are not in `hints`.
    pub hints_more: u64,
    /// Nodes whose hint scan stopped at its bound ([`HINT_SCAN_MAX`]): they may hold more.
    pub hints_incomplete: Vec<String>,
    /// Live members that could not be asked or did not answer (their hints are unknown).
    pub unreachable: Vec<String>,
    /// The last exchange of each pair of the partition's replicas (and of any other pair a
    /// replica remembers for the partition), by node, then peer.
    pub exchanges: Vec<ExchangeRow>,
}

/// The exchange rows of a partition whose replicas are `replicas`, from the answers of the
/// nodes: `answers` maps a node to its clock and its [`crate::repair::LastExchange`] list,
/// or to `None` if it did not answer. Every pair of `replicas` gets a row (`never` or
/// `unknown` if its runner has no record of it); pairs that runners remember with other
/// peers (from an earlier layout) follow.
pub fn exchange_rows(
    replicas: &[String],
    answers: &BTreeMap<String, Option<(u64, Vec<crate::repair::LastExchange>)>>,
) -> Vec<ExchangeRow> {
    let row_of = |node: &str, now_ms: u64, e: &crate::repair::LastExchange| ExchangeRow {
        node: node.to_string(),
        peer: e.peer.clone(),
        status: if e.ok { "ok" } else { "failed" },
        age_ms: Some(now_ms.saturating_sub(e.at_ms)),
        at_ms: Some(e.at_ms),
        keys_differing: Some(e.keys_differing),
        keys_repaired: Some(e.keys_repaired),
        keys_repaired_total: Some(e.keys_repaired_total),
        error: e.error.clone(),
        last_ok_age_ms: e.last_ok_ms.map(|t| now_ms.saturating_sub(t)),
    };
    let mut rows: Vec<ExchangeRow> = Vec::new();
    let mut names: Vec<&String> = replicas.iter().collect();
    names.sort();
    names.dedup();
    for (i, a) in names.iter().enumerate() {
        for b in &names[i + 1..] {
            let row = match answers.get(*a) {
                Some(Some((now, log))) => match log.iter().find(|e| &e.peer == *b) {
                    Some(e) => row_of(a, *now, e),
                    None => ExchangeRow {
                        node: a.to_string(),
                        peer: b.to_string(),
                        status: "never",
                        ..Default::default()
                    },
                },
                _ => ExchangeRow {
                    node: a.to_string(),
                    peer: b.to_string(),
                    status: "unknown",
                    ..Default::default()
                },
            };
            rows.push(row);
        }
    }
    for (node, answer) in answers {
        let Some((now, log)) = answer else { continue };
        for e in log {
            if !rows.iter().any(|r| &r.node == node && r.peer == e.peer) {
                rows.push(row_of(node, *now, e));
            }
        }
    }
    rows.sort_by(|x, y| (&x.node, &x.peer).cmp(&(&y.node, &y.peer)));
    rows
}

/// One sibling without its value, at `now_ms` (ms since the Unix epoch) for its expiry.
pub fn summarize_sibling(s: &Sibling, now_ms: u64) -> SiblingSummary {
    let stored = s.value.as_deref();
    let manifest = manifest_of(s).and_then(Result::ok);
    let size = match (stored, &manifest) {
        (None, _) => None,
        (Some(_), Some(m)) => Some(m.size),
        (Some(bytes), None) => ringkv_storage::codec::declared_len(s.codec, bytes),
    };
    SiblingSummary {
        dot: format!("{}:{}", replica_hex(s.dot.replica), s.dot.counter),
        tombstone: s.is_tombstone(),
        size,
        stored_bytes: stored.map_or(0, |v| v.len() as u64),
        codec: s.codec.name().to_string(),
        large: s.codec == Codec::Manifest,
        chunks: manifest.map(|m| m.chunks.len() as u64),
        timestamp_ms: s.timestamp_ms,
        expires_at_ms: s.expires_at_ms,
        expired: s.is_expired(now_ms),
    }
}

/// A record without its values, at `now_ms` (ms since the Unix epoch) for expiries: the clock
/// (at most [`MAX_CLOCK_ENTRIES`] entries) and the first [`MAX_SIBLINGS_LISTED`] siblings.
pub fn summarize_record(d: &DvvSet, now_ms: u64) -> RecordSummary {
    let entries: Vec<(ReplicaId, u64)> = d.clock.iter().collect();
    RecordSummary {
        clock: entries
            .iter()
            .take(MAX_CLOCK_ENTRIES)
            .map(|&(r, c)| (replica_hex(r), c))
            .collect(),
        clock_more: entries.len().saturating_sub(MAX_CLOCK_ENTRIES) as u64,
        siblings: d.siblings.len() as u64,
        live: d.siblings.iter().filter(|s| s.is_live(now_ms)).count() as u64,
        tombstone: !d.siblings.is_empty() && d.siblings.iter().all(Sibling::is_tombstone),
        listed: d
            .siblings
            .iter()
            .take(MAX_SIBLINGS_LISTED)
            .map(|s| summarize_sibling(s, now_ms))
            .collect(),
        siblings_more: d.siblings.len().saturating_sub(MAX_SIBLINGS_LISTED) as u64,
        bytes: ringkv_storage::record::encode(d).len() as u64,
    }
}

/// An acceptor state without its value.
pub fn summarize_paxos(state: &AcceptorState) -> PaxosSummary {
    PaxosSummary {
        promised: state.promised.into(),
        accepted: state.accepted.into(),
        value_size: state.value.as_ref().map(|v| v.len() as u64),
        tombstone: state.value.is_none() && state.accepted != Ballot::ZERO,
    }
}

/// Answers [`Explain`] on this node: reads what was asked of its replica of the key (each
/// vnode call within `timeout`), lists the hints it holds for the key and its last exchanges
/// for the partition. A failed part is reported in the answer, not as a failure of the call.
///
/// # Errors
/// [`ReplicaFailure::Storage`] for a bucket or key that is not valid.
pub(crate) async fn serve(
    ctx: &Arc<ReplicaContext>,
    req: Explain,
    timeout: Duration,
) -> Result<ExplainAnswer, ReplicaFailure> {
    ringkv_storage::keys::validate(&req.bucket, &req.key)?;
    let now_ms = crate::coordinator::now_ms();
    let p = req.partition;
    let read = match req.read {
        ExplainRead::Nothing => ReplicaRead::NotAsked,
        ExplainRead::Record => {
            let got = vnode_call(&ctx.directory, p, timeout, |reply| VNodeMsg::Get {
                bucket: req.bucket.to_vec(),
                key: req.key.to_vec(),
                reply,
            })
            .await;
            match got {
                Ok(Some(d)) => ReplicaRead::Record(summarize_record(&d, now_ms)),
                Ok(None) => ReplicaRead::NoRecord,
                Err(e) => ReplicaRead::Failed(e.to_string()),
            }
        }
        ExplainRead::Paxos => {
            let key = ringkv_storage::keys::storage_key(&req.bucket, &req.key)?;
            let got = vnode_call(&ctx.directory, p, timeout, |reply| VNodeMsg::PaxosState {
                key: key.clone(),
                reply,
            })
            .await;
            match got {
                Ok(Some(state)) => ReplicaRead::Paxos(summarize_paxos(&state)),
                Ok(None) => ReplicaRead::NoRecord,
                Err(e) => ReplicaRead::Failed(e.to_string()),
            }
        }
    };
    let hints = ctx.hints.clone();
    let (bucket, key) = (req.bucket.to_vec(), req.key.to_vec());
    let held = blocking(move || hints.hints_for(p, &bucket, &key, MAX_HINTS_LISTED, HINT_SCAN_MAX));
    let mut answer = ExplainAnswer {
        now_ms,
        read,
        exchanges: ctx.stats.repair.last.of(p),
        ..Default::default()
    };
    match tokio::time::timeout(timeout, held).await {
        Ok(Ok(found)) => {
            answer.hints_pending = found.pending;
            answer.hints_complete = found.complete;
            answer.hints = found
                .listed
                .into_iter()
                .map(|h| HintSummary {
                    owner: h.owner,
                    seq: h.seq,
                    record: summarize_record(&h.record, now_ms),
                })
                .collect();
        }
        Ok(Err(e)) => answer.hints_error = Some(e.to_string()),
        Err(_) => {
            answer.hints_error = Some(format!(
                "the hint scan took longer than {} ms",
                timeout.as_millis()
            ))
        }
    }
    Ok(answer)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringkv_storage::VersionVector;

    fn write(d: &mut DvvSet, replica: u64, value: Option<&[u8]>, codec: Codec) {
        d.update_encoded(
            &VersionVector::new(),
            replica,
            value.map(<[u8]>::to_vec),
            codec,
            100,
            None,
            1000,
        )
        .unwrap();
    }

    #[test]
    fn a_record_summary_counts_siblings_and_clocks_within_its_bounds() {
        let mut d = DvvSet::new();
        write(&mut d, 0xa, Some(b"hello"), Codec::None);
        write(&mut d, 0xb, Some(b"world!"), Codec::None);
        let s = summarize_record(&d, 0);
        assert_eq!((s.siblings, s.live, s.tombstone), (2, 2, false));
        assert_eq!(s.clock.get("000000000000000a"), Some(&1));
        assert_eq!(s.clock.get("000000000000000b"), Some(&1));
        assert_eq!(s.clock_more, 0);
        assert_eq!(s.listed[0].dot, "000000000000000a:1");
        assert_eq!(
            s.listed.iter().map(|x| x.size).collect::<Vec<_>>(),
            vec![Some(5), Some(6)]
        );
        assert!(s.listed.iter().all(|x| !x.large && x.codec == "none"));
        assert_eq!(s.bytes, ringkv_storage::record::encode(&d).len() as u64);

        // Blind writes from many replicas: the lists stop at their bounds and count the rest.
        for r in 0..40u64 {
            write(&mut d, 0x100 + r, Some(b"v"), Codec::None);
        }
        let s = summarize_record(&d, 0);
        assert_eq!(s.siblings, 42);
        assert_eq!(s.listed.len(), MAX_SIBLINGS_LISTED);
        assert_eq!(s.siblings_more, 42 - MAX_SIBLINGS_LISTED as u64);
        assert_eq!(s.clock.len(), MAX_CLOCK_ENTRIES);
        assert_eq!(s.clock_more, 42 - MAX_CLOCK_ENTRIES as u64);
    }

    #[test]
    fn tombstones_compressed_large_and_expiring_siblings_are_described() {
        let mut d = DvvSet::new();
        let ctx = d.context().clone();
        d.update_encoded(&ctx, 1, None, Codec::None, 5, None, 10)
            .unwrap();
        let s = summarize_record(&d, 0);
        assert!(s.tombstone);
        assert_eq!((s.live, s.listed[0].size), (0, None));

        let (codec, stored) = ringkv_storage::codec::compress(Codec::Zstd, vec![b'a'; 5000]);
        let mut d = DvvSet::new();
        d.update_encoded(
            &VersionVector::new(),
            1,
            Some(stored.clone()),
            codec,
            5,
            Some(50),
            10,
        )
        .unwrap();
        let manifest = ringkv_storage::large::Manifest {
            version: vec![7; 16],
            size: 3 << 20,
            chunk_bytes: 1 << 20,
            chunks: vec![1, 2, 3],
            crc32: 9,
        };
        write(&mut d, 2, Some(&manifest.encode()), Codec::Manifest);
        let s = summarize_record(&d, 60);
        let (small, large) = (&s.listed[0], &s.listed[1]);
        assert_eq!(
            (small.size, small.stored_bytes),
            (Some(5000), stored.len() as u64)
        );
        assert_eq!(small.codec, "zstd");
        assert_eq!((small.expires_at_ms, small.expired), (Some(50), true));
        assert_eq!(
            (large.large, large.size, large.chunks),
            (true, Some(3 << 20), Some(3))
        );
        assert_eq!(s.live, 1, "the expired sibling is not live");
        assert!(!s.tombstone);
    }

    #[test]
    fn a_paxos_summary_tells_a_delete_from_an_absent_key() {
        let never = summarize_paxos(&AcceptorState::default());
        assert!(!never.tombstone);
        assert_eq!(never.value_size, None);
        let ballot = Ballot {
            counter: 3,
            proposer: 0xff,
        };
        let deleted = summarize_paxos(&AcceptorState {
            promised: ballot.next(0xff),
            accepted: ballot,
            value: None,
        });
        assert!(deleted.tombstone);
        assert_eq!(deleted.promised.counter, 4);
        assert_eq!(deleted.accepted.proposer, "00000000000000ff");
        let held = summarize_paxos(&AcceptorState {
            promised: ballot,
            accepted: ballot,
            value: Some(b"abc".to_vec()),
        });
        assert_eq!((held.value_size, held.tombstone), (Some(3), false));
    }

    fn last(peer: &str, at_ms: u64, ok: bool) -> crate::repair::LastExchange {
        crate::repair::LastExchange {
            peer: peer.into(),
            at_ms,
            ok,
            keys_repaired: u64::from(ok),
            error: (!ok).then(|| "boom".to_string()),
            last_ok_ms: Some(50),
            ..Default::default()
        }
    }

    #[test]
    fn exchange_rows_cover_every_pair_of_replicas() {
        let replicas: Vec<String> = ["n3", "n1", "n2"].iter().map(|s| s.to_string()).collect();
        let answers: BTreeMap<String, Option<(u64, Vec<crate::repair::LastExchange>)>> = [
            (
                "n1".to_string(),
                Some((1_000, vec![last("n2", 900, true), last("n9", 100, true)])),
            ),
            ("n2".to_string(), None),
            ("n3".to_string(), Some((1_000, vec![]))),
        ]
        .into_iter()
        .collect();
        let rows = exchange_rows(&replicas, &answers);
        let seen: Vec<(&str, &str, &str)> = rows
            .iter()
            .map(|r| (r.node.as_str(), r.peer.as_str(), r.status))
            .collect();
        assert_eq!(
            seen,
            vec![
                ("n1", "n2", "ok"),
                ("n1", "n3", "never"),
                ("n1", "n9", "ok"),
                ("n2", "n3", "unknown"),
            ]
        );
        assert_eq!(rows[0].age_ms, Some(100));
        assert_eq!(rows[0].keys_repaired, Some(1));
        assert_eq!(rows[0].last_ok_age_ms, Some(950));
        let failed = exchange_rows(
            &replicas[..2],
            &[(
                "n1".to_string(),
                Some((1_000, vec![last("n3", 990, false)])),
            )]
            .into_iter()
            .collect(),
        );
        assert_eq!(failed[0].status, "failed");
        assert_eq!(failed[0].error.as_deref(), Some("boom"));
    }

    #[test]
    fn requests_round_trip_and_read_nothing_when_the_field_is_absent() {
        let request = crate::rpc::ReplicaRequest::Explain(Explain {
            partition: 5,
            bucket: serde_bytes::ByteBuf::from(b"b".to_vec()),
            key: serde_bytes::ByteBuf::from(b"k".to_vec()),
            read: ExplainRead::Paxos,
        });
        let envelope = crate::rpc::Envelope {
            from: "n1".into(),
            request: request.clone(),
        };
        let back: crate::rpc::Envelope =
            crate::wire::decode(&crate::wire::encode(&envelope)).unwrap();
        assert_eq!(back.request, request);
        #[derive(Serialize)]
        enum Bare {
            Explain {
                partition: u32,
                bucket: serde_bytes::ByteBuf,
                key: serde_bytes::ByteBuf,
            },
        }
        let bare = crate::wire::encode(&Bare::Explain {
            partition: 5,
            bucket: serde_bytes::ByteBuf::from(b"b".to_vec()),
            key: serde_bytes::ByteBuf::from(b"k".to_vec()),
        });
        match crate::wire::decode::<crate::rpc::ReplicaRequest>(&bare).unwrap() {
            crate::rpc::ReplicaRequest::Explain(e) => assert_eq!(e.read, ExplainRead::Nothing),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn answers_round_trip_on_the_wire() {
        let mut d = DvvSet::new();
        write(&mut d, 0xa, Some(b"hello"), Codec::None);
        let answer = ExplainAnswer {
            now_ms: 5,
            read: ReplicaRead::Record(summarize_record(&d, 0)),
            hints: vec![HintSummary {
                owner: "n3".into(),
                seq: 9,
                record: summarize_record(&d, 0),
            }],
            hints_pending: 1,
            hints_complete: true,
            hints_error: None,
            exchanges: vec![crate::repair::LastExchange {
                peer: "n2".into(),
                at_ms: 4,
                ok: true,
                last_ok_ms: Some(4),
                ..Default::default()
            }],
        };
        let ok: Result<ExplainAnswer, ReplicaFailure> = Ok(answer);
        let back: Result<ExplainAnswer, ReplicaFailure> =
            crate::wire::decode(&crate::wire::encode(&ok)).unwrap();
        assert_eq!(back, ok);
        for read in [
            ReplicaRead::NotAsked,
            ReplicaRead::NoRecord,
            ReplicaRead::Paxos(PaxosSummary::default()),
            ReplicaRead::Failed("x".into()),
        ] {
            let back: ReplicaRead = crate::wire::decode(&crate::wire::encode(&read)).unwrap();
            assert_eq!(back, read);
        }
    }
}
