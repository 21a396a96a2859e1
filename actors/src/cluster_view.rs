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
    /// Bumped (under the state's write lock) by every change of the state.
    generation: AtomicU64,
    /// The placements of one generation.
    placements: RwLock<(u64, Option<Arc<Placements>>)>,
    /// Writes in flight per layout version.
    inflight: Arc<Mutex<InFlight>>,
    /// Transfers done (`(version, partition)`), as the Transfer actor reported them.
    transfers_done: Mutex<BTreeSet<(u64, u32)>>,
}

/// Where the replicas of every partition are, computed once per change of the cluster
/// state rather than per request: index `p` holds partition `p`'s preference list in the read
/// version (empty without a committed layout), the preference lists of the other live layout
/// versions that writes must also reach during a transition
/// ([`ringkv_cluster::transition`]), and its fallback order ([`ClusterState::fallback_list`]).
#[derive(Debug, Default)]
pub struct Placements {
    /// The newest layout version these were computed from (0: none).
    pub version: u64,
    /// The layout version `prefs` come from: the read version
    /// ([`ClusterState::read_layout`]), older than `version` while a layout change moves
    /// data (0: none). What a partition-aware client routes by (op `layout`).
    pub read_version: u64,
    /// Preference list of each partition in the read version.
    pub prefs: Vec<Vec<String>>,
    /// Per partition, the other live versions' preference lists that differ from `prefs`
    /// (writes need their quorum in each); empty outside a transition.
    pub also_write: Vec<Vec<Vec<String>>>,
    /// Fallback order of each partition (sloppy quorum's hint holders).
    pub fallbacks: Vec<Vec<String>>,
}

impl Placements {
    /// Computes them from `state`.
    pub fn of(state: &ClusterState) -> Self {
        let q = state.partitions;
        let (prefs, also_write) = (0..q)
            .map(|p| {
                let sets = state.replica_sets(p);
                (sets.read, sets.also_write)
            })
            .unzip();
        Placements {
            version: state.layout_version(),
            read_version: state.read_layout().map_or(0, |c| c.version),
            prefs,
            also_write,
            fallbacks: (0..q).map(|p| state.fallback_list(p)).collect(),
        }
    }
}

/// Writes in flight on this node, counted by the layout version they were placed under, so
/// that this node acknowledges a new version only once the writes it placed under older ones
/// have finished (the `ack` tracker of [`ringkv_cluster::transition`]).
#[derive(Debug, Default)]
struct InFlight(std::collections::BTreeMap<u64, usize>);

/// One write in flight under a layout version; dropping it ends the write.
#[derive(Debug)]
pub struct WriteGuard {
    inflight: Arc<Mutex<InFlight>>,
    version: u64,
}

impl Drop for WriteGuard {
    fn drop(&mut self) {
        let mut inflight = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = inflight.0.get_mut(&self.version) {
            *n -= 1;
            if *n == 0 {
                inflight.0.remove(&self.version);
            }
        }
    }
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
            generation: AtomicU64::new(0),
            placements: RwLock::new((0, None)),
            inflight: Arc::default(),
            transfers_done: Mutex::default(),
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
        let changed = {
            let mut state = self.state.write().unwrap_or_else(|p| p.into_inner());
            let changed = state.merge(other);
            if changed {
                self.generation.fetch_add(1, Ordering::AcqRel);
            }
            changed
        };
        if changed {
            self.persist();
        }
        changed
    }

    /// The placements of the current state, computed at the first call after a change.
    pub fn placements(&self) -> Arc<Placements> {
        {
            let cached = self.placements.read().unwrap_or_else(|p| p.into_inner());
            if let (g, Some(p)) = &*cached {
                if *g == self.generation.load(Ordering::Acquire) {
                    return p.clone();
                }
            }
        }
        // The generation only changes under the state's write lock: read both under its
        // read lock, so the placements belong to that generation.
        let state = self.read();
        let generation = self.generation.load(Ordering::Acquire);
        let fresh = Arc::new(Placements::of(&state));
        drop(state);
        let mut cached = self.placements.write().unwrap_or_else(|p| p.into_inner());
        if cached.1.is_none() || cached.0 <= generation {
            *cached = (generation, Some(fresh.clone()));
        }
        fresh
    }

    /// The placements for a write, and the guard that counts the write as in flight under
    /// their layout version until dropped.
    pub fn placements_for_write(&self) -> (Arc<Placements>, WriteGuard) {
        // Under the in-flight lock, so that [`ClusterView::advance`] sees either this write
        // counted or its placements of the newest version.
        let mut inflight = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
        let placements = self.placements();
        *inflight.0.entry(placements.version).or_insert(0) += 1;
        drop(inflight);
        let guard = WriteGuard {
            inflight: self.inflight.clone(),
            version: placements.version,
        };
        (placements, guard)
    }

    /// Records that the transfer of `partition` for layout `version` is done and verified.
    pub fn transfer_done(&self, version: u64, partition: u32) {
        self.transfers_done
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert((version, partition));
    }

    /// True if [`ClusterView::transfer_done`] was called for `(version, partition)`.
    pub fn is_transfer_done(&self, version: u64, partition: u32) -> bool {
        self.transfers_done
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&(version, partition))
    }

    /// Moves the layout transition forward as far as this node can
    /// ([`ClusterState::advance`]), persisting the state if it changed.
    pub fn advance(&self) -> ringkv_cluster::transition::Advanced {
        let out = {
            let inflight = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
            let mut state = self.state.write().unwrap_or_else(|p| p.into_inner());
            let newest = state.layout_version();
            let older = inflight.0.range(..newest).any(|(_, n)| *n > 0);
            drop(inflight);
            let done = self
                .transfers_done
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
            let alive = |n: &str| self.is_alive(n);
            let out = state.advance(&self.local, &alive, older, &|v, p| done.contains(&(v, p)));
            if state.in_transition() {
                let tasks = state.transfer_tasks(&self.local, &alive);
                tracing::debug!(
                    newest = state.layout_version(),
                    acked = state.newest_acked(&alive),
                    required = ?state.required_nodes(&alive),
                    tasks = tasks.len(),
                    done = tasks
                        .iter()
                        .filter(|t| done.contains(&(t.version, t.partition)))
                        .count(),
                    older_writes = older,
                    "layout transition step"
                );
            }
            if out.changed() {
                self.generation.fetch_add(1, Ordering::AcqRel);
            }
            out
        };
        if out.changed() {
            self.persist();
        }
        out
    }

    /// The transfers this node must run now ([`ClusterState::transfer_tasks`]).
    pub fn transfer_tasks(&self) -> Vec<ringkv_cluster::transition::Task> {
        self.read()
            .transfer_tasks(&self.local, &|n| self.is_alive(n))
    }

    /// Gossip exchanges this node made or answered since start (states of peers merged).
    pub fn exchanges(&self) -> u64 {
        self.exchanges.load(Ordering::Relaxed)
    }

    /// True if this node was removed from the cluster (it left: see [`ringkv_cluster::transition`]).
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
        let out = {
            let mut state = self.state.write().unwrap_or_else(|p| p.into_inner());
            let out = f(&mut state);
            self.generation.fetch_add(1, Ordering::AcqRel);
            out?
        };
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

    /// True if `node` is this node, or a peer heard from that the failure detector does not
    /// suspect. Stricter than [`ClusterView::is_up`]: a layout transition waits for the
    /// trackers of the nodes outside the newest layout only while they are alive, and a node
    /// that joined after one died has never heard from it.
    pub fn is_alive(&self, node: &str) -> bool {
        if node == self.local {
            return true;
        }
        if self.is_isolated(node) {
            return false;
        }
        let now = self.now_ms();
        let d = self.detector.lock().unwrap_or_else(|p| p.into_inner());
        d.phi(node, now).is_some() && d.is_up(node, now)
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

impl crate::transfer::TransferEvents for ClusterView {
    fn done(&self, version: u64, partition: u32) {
        self.transfer_done(version, partition);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringkv_cluster::membership::{Member, MemberStatus};

    fn member(name: &str) -> Member {
        Member {
            name: name.into(),
            cluster_addr: format!("{name}:1"),
            client_addr: format!("{name}:2"),
            zone: name.into(),
            capacity: 1,
            status: MemberStatus::Joining,
            version: 0,
            incarnation: 1,
            actor_addr: String::new(),
        }
    }

    /// The view of `n1`, alone in a committed layout of 8 partitions, stored in `dir`.
    fn one_node_view(dir: &tempfile::TempDir) -> ClusterView {
        let system = Arc::new(SystemStore::open(dir.path(), 8).unwrap());
        ClusterView::load(
            "n1".into(),
            || {
                let mut s = ClusterState::new(8);
                s.upsert_member(member("n1"));
                s.commit().unwrap();
                s
            },
            system,
            PhiConfig::default(),
        )
        .unwrap()
    }

    #[test]
    fn placements_are_computed_once_per_change_and_follow_it() {
        let dir = tempfile::tempdir().unwrap();
        let view = one_node_view(&dir);
        let first = view.placements();
        assert!(
            Arc::ptr_eq(&first, &view.placements()),
            "no change, no recompute"
        );
        assert_eq!(first.prefs[3], vec!["n1".to_string()]);
        view.update(|s| {
            s.upsert_member(member("n2"));
            s.upsert_member(member("n3"));
            s.commit().map(|_| ())
        })
        .unwrap();
        let second = view.placements();
        assert!(!Arc::ptr_eq(&first, &second));
        let mut state = view.snapshot();
        // During the transition reads use the old set and writes reach both.
        for p in 0..8 {
            let sets = state.replica_sets(p);
            assert_eq!(second.prefs[p as usize], sets.read);
            assert_eq!(second.prefs[p as usize], vec!["n1".to_string()]);
            assert_eq!(second.also_write[p as usize], sets.also_write);
            assert_eq!(second.fallbacks[p as usize], state.fallback_list(p));
        }
        for _ in 0..3 {
            for n in ["n1", "n2", "n3"] {
                state.advance(n, &|_| true, false, &|_, _| true);
            }
        }
        view.update(|s| {
            *s = state.clone();
            Ok(())
        })
        .unwrap();
        let second = view.placements();
        for p in 0..8 {
            assert_eq!(
                Some(second.prefs[p as usize].clone()),
                state.preference_list(p)
            );
            assert!(second.also_write[p as usize].is_empty());
            assert_eq!(second.fallbacks[p as usize], state.fallback_list(p));
        }
        assert_eq!(second.prefs[3].len(), 3);
    }

    /// A node acknowledges a new layout version (`ack`) only once the writes it placed under
    /// the older one have finished: a write still in flight under v1 holds its ack of v2, so
    /// no transfer for v2 can start and read a source before that write lands there.
    #[test]
    fn a_write_in_flight_under_the_old_version_holds_the_ack_of_the_new_one() {
        let dir = tempfile::tempdir().unwrap();
        let view = one_node_view(&dir);
        view.advance();
        assert_eq!(view.read().trackers.ack.get("n1"), Some(&1));
        let (placements, in_flight) = view.placements_for_write();
        assert_eq!(placements.version, 1);
        view.update(|s| {
            s.upsert_member(member("n2"));
            s.commit().map(|_| ())
        })
        .unwrap();
        // A write placed now is placed under v2 and does not hold anything back.
        let (newer, _newer_guard) = view.placements_for_write();
        assert_eq!(newer.version, 2);
        view.advance();
        assert_eq!(
            view.read().trackers.ack.get("n1"),
            Some(&1),
            "the v1 write is in flight"
        );
        drop(in_flight);
        view.advance();
        assert_eq!(view.read().trackers.ack.get("n1"), Some(&2));
    }
}
