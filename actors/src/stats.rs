//! Counters of one node's self-healing machinery, shown by `cluster status`: hints stored and
//! delivered, anti-entropy exchanges and what they cost, tombstones purged, and restarts of
//! each supervised actor type.

use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// Hinted handoff counters.
#[derive(Debug, Default)]
pub struct HintStats {
    /// Hints this node stored for other nodes (since start).
    pub stored: AtomicU64,
    /// Hints this node delivered to their owners and then deleted (since start).
    pub delivered: AtomicU64,
}

/// Anti-entropy counters (since start).
#[derive(Debug, Default)]
pub struct RepairStats {
    /// Tree exchanges with another replica of a partition, started by this node.
    pub exchanges: AtomicU64,
    /// Keys sent or merged because two replicas differed.
    pub keys_repaired: AtomicU64,
    /// Hashes (tree nodes and key hashes) sent and received.
    pub hashes_sent: AtomicU64,
    /// Encoded bytes of every exchange request and answer.
    pub bytes_sent: AtomicU64,
    /// Tombstones and expired values purged here after every replica was seen to hold them.
    pub tombstones_purged: AtomicU64,
    /// The last exchange this node ran per partition and peer (`ringkv explain`).
    pub last: crate::repair::ExchangeLog,
}

/// Replica call counters (since start).
#[derive(Debug, Default)]
pub struct ReplicaStats {
    /// Batches of merges and reads sent to other nodes, one cluster message each
    /// ([`crate::batch`]).
    pub batches: AtomicU64,
    /// Calls those batches carried.
    pub batched_calls: AtomicU64,
}

/// All counters of a node.
#[derive(Debug, Default)]
pub struct NodeStats {
    /// Hinted handoff.
    pub hints: HintStats,
    /// Anti-entropy.
    pub repair: RepairStats,
    /// Replica calls.
    pub replica: ReplicaStats,
    restarts: Mutex<BTreeMap<&'static str, u64>>,
}

/// Adds `n` to a counter.
pub fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

fn get(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

/// A copy of the counters, as `cluster status` shows them.
#[derive(Clone, Debug, Default, Serialize)]
pub struct StatsSnapshot {
    /// `stored`, `delivered` (and `pending`, filled in by the node from its hint store).
    pub hints: BTreeMap<&'static str, u64>,
    /// `exchanges`, `keys_repaired`, `hashes_sent`, `bytes_sent`, `tombstones_purged`.
    pub repair: BTreeMap<&'static str, u64>,
    /// `batches`, `batched_calls`.
    pub replica: BTreeMap<&'static str, u64>,
    /// Restarts per actor type: `vnodes`, `vnode`, `replica`, `gossip`, `handoff`, `repair`,
    /// `listener`.
    pub restarts: BTreeMap<&'static str, u64>,
}

/// Actor types whose restarts are counted.
pub const ACTOR_TYPES: [&str; 8] = [
    "vnodes", "vnode", "replica", "gossip", "handoff", "repair", "listener", "gateway",
];

impl NodeStats {
    /// Counts one restart of an actor of type `actor` (one of [`ACTOR_TYPES`]).
    pub fn restarted(&self, actor: &'static str) {
        *self
            .restarts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(actor)
            .or_default() += 1;
    }

    /// A copy of every counter.
    pub fn snapshot(&self) -> StatsSnapshot {
        let h = &self.hints;
        let r = &self.repair;
        let mut restarts: BTreeMap<&'static str, u64> =
            ACTOR_TYPES.iter().map(|a| (*a, 0)).collect();
        for (k, v) in self
            .restarts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            restarts.insert(k, *v);
        }
        StatsSnapshot {
            hints: [("stored", get(&h.stored)), ("delivered", get(&h.delivered))]
                .into_iter()
                .collect(),
            repair: [
                ("exchanges", get(&r.exchanges)),
                ("keys_repaired", get(&r.keys_repaired)),
                ("hashes_sent", get(&r.hashes_sent)),
                ("bytes_sent", get(&r.bytes_sent)),
                ("tombstones_purged", get(&r.tombstones_purged)),
            ]
            .into_iter()
            .collect(),
            replica: [
                ("batches", get(&self.replica.batches)),
                ("batched_calls", get(&self.replica.batched_calls)),
            ]
            .into_iter()
            .collect(),
            restarts,
        }
    }
}
