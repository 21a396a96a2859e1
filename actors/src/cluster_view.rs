//! This node's view of the cluster: the gossiped [`ClusterState`] and the local failure
//! detector.
//!
//! The Gossip actor merges what peers send into it. Client requests read it to find a key's
//! preference list and its bucket's quorums. Administration requests (commit a layout, set
//! bucket properties) change it, and gossip spreads the change. Every change is written to the
//! system env, so a restarted node comes back with its membership and layout.

use ringkv_cluster::membership::{BucketProps, ClusterState, MembershipError, Plan};
use ringkv_cluster::phi::{FailureDetector, PhiConfig};
use ringkv_storage::SystemStore;
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

const STATE_KEY: &str = "cluster_state";

/// Shared view of the cluster held by one node.
pub struct ClusterView {
    local: String,
    state: RwLock<ClusterState>,
    detector: Mutex<FailureDetector>,
    started: Instant,
    system: Arc<SystemStore>,
    isolated: RwLock<BTreeSet<String>>,
    exchanges: AtomicU64,
}

impl ClusterView {
    /// Loads the persisted state from `system`, or starts from `initial` if there is none.
    ///
    /// # Errors
    /// A corrupt persisted state.
    pub fn load(
        local: String,
        initial: impl FnOnce() -> ClusterState,
        system: Arc<SystemStore>,
        phi: PhiConfig,
    ) -> Result<Self, String> {
        let detector = FailureDetector::new(phi).map_err(|e| e.to_string())?;
        let state = match system.get_meta(STATE_KEY).map_err(|e| e.to_string())? {
            Some(bytes) => rmp_serde::from_slice(&bytes)
                .map_err(|e| format!("persisted cluster state does not decode: {e}"))?,
            None => initial(),
        };
        let view = Self {
            local,
            state: RwLock::new(state),
            detector: Mutex::new(detector),
            started: Instant::now(),
            system,
            isolated: RwLock::new(BTreeSet::new()),
            exchanges: AtomicU64::new(0),
        };
        view.persist();
        Ok(view)
    }

    /// This node's name.
    pub fn local(&self) -> &str {
        &self.local
    }

    fn persist(&self) {
        let bytes = rmp_serde::to_vec_named(&*self.read()).expect("state encodes");
        if let Err(e) = self.system.put_meta(STATE_KEY, &bytes) {
            tracing::error!(error = %e, "cannot persist the cluster state");
        }
    }

    /// Read access to the state.
    pub fn read(&self) -> std::sync::RwLockReadGuard<'_, ClusterState> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    /// A copy of the state.
    pub fn snapshot(&self) -> ClusterState {
        self.read().clone()
    }

    /// Merges a peer's state (one gossip exchange, counted in [`ClusterView::exchanges`]);
    /// persists and returns true if ours changed.
    pub fn merge(&self, other: &ClusterState) -> bool {
        self.exchanges.fetch_add(1, Ordering::Relaxed);
        let changed = self
            .state
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .merge(other);
        if changed {
            self.persist();
        }
        changed
    }

    /// Gossip exchanges this node made or answered since start (states of peers merged).
    pub fn exchanges(&self) -> u64 {
        self.exchanges.load(Ordering::Relaxed)
    }

    /// True if a commit removed this node from the cluster.
    pub fn is_removed(&self) -> bool {
        self.read().is_removed(&self.local)
    }

    /// Applies `f` to the state and persists the result.
    ///
    /// # Errors
    /// What `f` returns.
    pub fn update<T>(
        &self,
        f: impl FnOnce(&mut ClusterState) -> Result<T, MembershipError>,
    ) -> Result<T, MembershipError> {
        let out = f(&mut self.state.write().unwrap_or_else(|p| p.into_inner()))?;
        self.persist();
        Ok(out)
    }

    /// Commits the planned layout.
    ///
    /// # Errors
    /// See [`ClusterState::commit`].
    pub fn commit(&self) -> Result<Plan, MembershipError> {
        self.update(|s| s.commit())
    }

    /// Sets a bucket's properties.
    ///
    /// # Errors
    /// [`MembershipError::BadBucketProps`].
    pub fn set_bucket_props(
        &self,
        bucket: &[u8],
        props: BucketProps,
    ) -> Result<(), MembershipError> {
        self.update(|s| s.set_bucket_props(bucket, props))
    }

    /// Milliseconds since this view was made: the failure detector's clock.
    pub fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// Fault injection: from now on this node drops all cluster traffic to and from `peers`
    /// (replaces the previous set; empty heals). Heartbeats from them are ignored, so the
    /// failure detector comes to suspect them as it would across a real network partition.
    pub fn set_isolated(&self, peers: impl IntoIterator<Item = String>) {
        let peers: BTreeSet<String> = peers.into_iter().filter(|p| *p != self.local).collect();
        tracing::warn!(
            ?peers,
            "fault injection: cluster traffic with these nodes is dropped"
        );
        *self.isolated.write().unwrap_or_else(|p| p.into_inner()) = peers;
    }

    /// True if traffic with `node` is dropped by [`ClusterView::set_isolated`].
    pub fn is_isolated(&self, node: &str) -> bool {
        let isolated = self.isolated.read().unwrap_or_else(|p| p.into_inner());
        !isolated.is_empty() && isolated.contains(node)
    }

    /// Records a heartbeat from `peer`.
    pub fn heartbeat(&self, peer: &str) {
        if self.is_isolated(peer) {
            return;
        }
        let now = self.now_ms();
        self.detector
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .heartbeat(peer, now);
    }

    /// True if `node` is this node or the failure detector does not suspect it. A peer never
    /// heard from is not suspected: calls to it fail fast on their own when no session exists.
    pub fn is_up(&self, node: &str) -> bool {
        if node == self.local {
            return true;
        }
        if self.is_isolated(node) {
            return false;
        }
        let now = self.now_ms();
        let d = self.detector.lock().unwrap_or_else(|p| p.into_inner());
        d.phi(node, now).is_none() || d.is_up(node, now)
    }

    /// `(peer, phi, up)` for every peer heard from, by name.
    pub fn peer_statuses(&self) -> Vec<(String, f64, bool)> {
        let now = self.now_ms();
        self.detector
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .statuses(now)
    }
}
