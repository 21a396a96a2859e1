//! Layout transitions: several live layout versions, and the trackers that retire old ones.
//!
//! A commit does not replace the layout: it adds a version, and the versions before it stay
//! live until the data they place has been copied to the nodes the newest version names. This
//! follows Garage's multi-version layouts (`rpc/layout/history.rs`, after its Jepsen runs under
//! a layout-change nemesis) and Cassandra's pending ranges:
//!
//! * **writes** go to the union of every live version's replica set of the key's partition and
//!   must reach `w` in *each* set;
//! * **reads** use one version, the [read version](ClusterState::read_layout): the newest if
//!   every node it places has finished receiving its data, else the oldest live version (which
//!   is complete: see below). `r + w > n` then gives read-your-writes through the change, since
//!   every write reached `w` in the set the read asks;
//! * **transfers**: a node that the newest version gives a partition the read version does not
//!   give it pulls that partition from the read version's replicas
//!   ([`ClusterState::transfer_tasks`]).
//!
//! Three per-node max-registers, gossiped with the state ([`Trackers`]), say how far each node
//! got. Each node only ever raises its own entries:
//!
//! * `ack[x] = v`: `x` coordinates every write under version `v` (or newer), and the writes it
//!   started under older versions have all finished. Transfers for `v` start only once every
//!   [required](ClusterState::required_nodes) node acked `v`, so no write that skips the new
//!   replica sets can land on a source after the transfer read it;
//! * `sync[x] = v`: `x` holds every partition replica version `v` gives it (its transfers for
//!   `v` are done and verified, or it had none);
//! * `sync_ack[x] = v`: `x` reads from version `v` (it saw every node of `v` synced).
//!
//! When every required node has `sync_ack` at the newest version, the older versions are
//! dropped ([`Trackers::pruned_below`]), a node that holds a partition no live version gives it
//! may clear its copy, and a `leaving` member that no live version places becomes `removed`
//! (it may then be stopped). The oldest live version is complete by induction: the first
//! layout places no data, and a version becomes the oldest only by being the newest and fully
//! synced when the older ones are pruned.
//!
//! # Dead and paused nodes
//!
//! A node in the newest layout that never syncs holds the transition (reads stay on the old
//! version, old copies are kept): safe, and what `replace` is for. A node *outside* the newest
//! layout that the local failure detector says is down is not waited for (a dead node being
//! replaced must not stall its own replacement, Garage's `skip-dead-nodes`). The price: a write
//! such a node had started under an old version and finishes after a pause longer than the
//! transfer can reach a source after the transfer read it; anti-entropy between the new
//! replicas repairs it, the transfer does not.

use crate::membership::{ClusterState, CommittedLayout, MemberStatus};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Per-node progress through layout versions, gossiped as max-registers (the merge takes the
/// larger value per node), so the merge stays commutative, associative and idempotent.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Trackers {
    /// Newest version each node coordinates writes under, with none older in flight.
    pub ack: BTreeMap<String, u64>,
    /// Newest version whose partition replicas each node fully holds.
    pub sync: BTreeMap<String, u64>,
    /// Newest version each node reads from.
    pub sync_ack: BTreeMap<String, u64>,
    /// Layout versions below this one are no longer live (0: none pruned yet).
    pub pruned_below: u64,
}

fn merge_max(ours: &mut BTreeMap<String, u64>, theirs: &BTreeMap<String, u64>) {
    for (node, &v) in theirs {
        let e = ours.entry(node.clone()).or_insert(0);
        *e = (*e).max(v);
    }
}

impl Trackers {
    /// Merges `other` into `self`: the larger value per node and for `pruned_below`.
    pub fn merge(&mut self, other: &Trackers) {
        merge_max(&mut self.ack, &other.ack);
        merge_max(&mut self.sync, &other.sync);
        merge_max(&mut self.sync_ack, &other.sync_ack);
        self.pruned_below = self.pruned_below.max(other.pruned_below);
    }

    fn raise(map: &mut BTreeMap<String, u64>, node: &str, v: u64) -> bool {
        let e = map.entry(node.to_string()).or_insert(0);
        if *e < v {
            *e = v;
            true
        } else {
            false
        }
    }
}

/// The replica sets of one partition during a transition.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReplicaSets {
    /// Preference list in the read version (reads ask these; transfers pull from them).
    pub read: Vec<String>,
    /// Preference lists of the other live versions that differ from `read`, oldest first:
    /// writes must reach their quorum in each of them too. Empty outside a transition.
    pub also_write: Vec<Vec<String>>,
}

/// One partition replica this node must receive for a layout version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Task {
    /// The layout version that places the partition here.
    pub version: u64,
    /// The partition.
    pub partition: u32,
    /// Nodes holding complete copies (the read version's replicas, this node excluded), in
    /// preference order.
    pub sources: Vec<String>,
}

/// What [`ClusterState::advance`] changed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Advanced {
    /// Some tracker of this node rose.
    pub trackers: bool,
    /// Old versions were pruned; the value is the version kept.
    pub pruned: Option<u64>,
    /// Leaving members that became removed.
    pub left: Vec<String>,
}

impl Advanced {
    /// True if the state changed.
    pub fn changed(&self) -> bool {
        self.trackers || self.pruned.is_some() || !self.left.is_empty()
    }
}

impl ClusterState {
    /// The live layout versions, oldest first; the last is the newest ([`ClusterState::layout`]).
    pub fn live_layouts(&self) -> impl Iterator<Item = &CommittedLayout> {
        self.history.iter().chain(self.layout.iter())
    }

    /// The newest layout version, 0 without a layout.
    pub fn layout_version(&self) -> u64 {
        self.layout.as_ref().map_or(0, |c| c.version)
    }

    /// True while more than one layout version is live.
    pub fn in_transition(&self) -> bool {
        !self.history.is_empty()
    }

    /// Names of the nodes `c` places, removed members left out.
    fn placed_in(&self, c: &CommittedLayout) -> Vec<String> {
        c.layout
            .nodes()
            .iter()
            .map(|n| n.name.clone())
            .filter(|n| !self.is_removed(n))
            .collect()
    }

    /// True if every node the newest version places has synced it.
    pub fn newest_synced(&self) -> bool {
        let Some(newest) = &self.layout else {
            return true;
        };
        self.placed_in(newest)
            .iter()
            .all(|n| self.trackers.sync.get(n).copied().unwrap_or(0) >= newest.version)
    }

    /// The version reads use: the newest if [`ClusterState::newest_synced`] (or no older one is
    /// live), else the oldest live version, which holds complete data (module docs).
    pub fn read_layout(&self) -> Option<&CommittedLayout> {
        match self.history.first() {
            Some(oldest) if !self.newest_synced() => Some(oldest),
            _ => self.layout.as_ref(),
        }
    }

    /// Preference list of partition `p` in `c`, removed members left out.
    pub fn preference_list_in(&self, c: &CommittedLayout, p: u32) -> Vec<String> {
        if p >= c.layout.partitions() {
            return Vec::new();
        }
        c.layout
            .replica_names(p)
            .filter(|n| !self.is_removed(n))
            .map(str::to_string)
            .collect()
    }

    /// The read set and the extra write sets of partition `p` (empty without a layout).
    pub fn replica_sets(&self, p: u32) -> ReplicaSets {
        let Some(read) = self.read_layout() else {
            return ReplicaSets::default();
        };
        let read_set = self.preference_list_in(read, p);
        let mut also_write: Vec<Vec<String>> = Vec::new();
        for c in self.live_layouts().filter(|c| c.version != read.version) {
            let set = self.preference_list_in(c, p);
            if set != read_set && !also_write.contains(&set) && !set.is_empty() {
                also_write.push(set);
            }
        }
        ReplicaSets {
            read: read_set,
            also_write,
        }
    }

    /// The nodes whose trackers a transition waits for: every live member that the newest
    /// version places, plus every other live member that `is_up` (this node's failure
    /// detector) says is up.
    pub fn required_nodes(&self, is_up: &dyn Fn(&str) -> bool) -> Vec<String> {
        let placed = self
            .layout
            .as_ref()
            .map(|c| self.placed_in(c))
            .unwrap_or_default();
        self.live_members()
            .filter(|m| placed.contains(&m.name) || is_up(&m.name))
            .map(|m| m.name.clone())
            .collect()
    }

    fn min_of(&self, map: &BTreeMap<String, u64>, nodes: &[String]) -> u64 {
        nodes
            .iter()
            .map(|n| map.get(n).copied().unwrap_or(0))
            .min()
            .unwrap_or(u64::MAX)
    }

    /// True once every required node acked the newest version: its transfers may start.
    pub fn newest_acked(&self, is_up: &dyn Fn(&str) -> bool) -> bool {
        let required = self.required_nodes(is_up);
        self.min_of(&self.trackers.ack, &required) >= self.layout_version()
    }

    /// The partition replicas `local` must receive for the newest version: those the newest
    /// version gives it and the read version does not, pulled from the read version's
    /// replicas (Cassandra's consistent range movement: from a complete holder, never from a
    /// node that is itself receiving). Empty outside a transition, once the newest version is
    /// the read version, and until every required node acked the newest version.
    pub fn transfer_tasks(&self, local: &str, is_up: &dyn Fn(&str) -> bool) -> Vec<Task> {
        let (Some(newest), Some(read)) = (&self.layout, self.read_layout()) else {
            return Vec::new();
        };
        if newest.version == read.version || !self.newest_acked(is_up) {
            return Vec::new();
        }
        (0..newest.layout.partitions())
            .filter_map(|p| {
                let new_set = self.preference_list_in(newest, p);
                let old_set = self.preference_list_in(read, p);
                let local = local.to_string();
                (new_set.contains(&local) && !old_set.contains(&local)).then(|| Task {
                    version: newest.version,
                    partition: p,
                    sources: old_set.into_iter().filter(|n| *n != local).collect(),
                })
            })
            .collect()
    }

    /// Partitions that `local` holds in no live version (it may clear its copies once
    /// the transition that moved them away is over). Empty during a transition.
    pub fn dropped_partitions(&self, local: &str) -> Vec<u32> {
        if self.in_transition() {
            return Vec::new();
        }
        let Some(newest) = &self.layout else {
            return Vec::new();
        };
        (0..newest.layout.partitions())
            .filter(|&p| !newest.layout.replica_names(p).any(|n| n == local))
            .collect()
    }

    /// Moves the transition forward as far as `local` can:
    /// raises `local`'s `ack` (if `older_writes_in_flight` is false), `sync` (once the newest
    /// version is acked and `transfer_done(version, partition)` holds for each of
    /// [`ClusterState::transfer_tasks`]) and `sync_ack` (once reads use the newest version);
    /// prunes the older versions once every required node reads the newest; and turns
    /// `leaving` members that no live version places into `removed` tombstones.
    pub fn advance(
        &mut self,
        local: &str,
        is_up: &dyn Fn(&str) -> bool,
        older_writes_in_flight: bool,
        transfer_done: &dyn Fn(u64, u32) -> bool,
    ) -> Advanced {
        let mut out = Advanced::default();
        let Some(newest) = self.layout.as_ref().map(|c| c.version) else {
            return out;
        };
        if !older_writes_in_flight {
            out.trackers |= Trackers::raise(&mut self.trackers.ack, local, newest);
        }
        if self.newest_acked(is_up)
            && self
                .transfer_tasks(local, is_up)
                .iter()
                .all(|t| transfer_done(t.version, t.partition))
        {
            out.trackers |= Trackers::raise(&mut self.trackers.sync, local, newest);
        }
        if self.read_layout().map(|c| c.version) == Some(newest) {
            out.trackers |= Trackers::raise(&mut self.trackers.sync_ack, local, newest);
        }
        let required = self.required_nodes(is_up);
        if self.in_transition() && self.min_of(&self.trackers.sync_ack, &required) >= newest {
            self.trackers.pruned_below = self.trackers.pruned_below.max(newest);
            self.history.clear();
            out.pruned = Some(newest);
        }
        let leaving: Vec<String> = self
            .members
            .values()
            .filter(|m| m.status == MemberStatus::Leaving)
            .filter(|m| {
                !self
                    .live_layouts()
                    .any(|c| c.layout.nodes().iter().any(|n| n.name == m.name))
            })
            .map(|m| m.name.clone())
            .collect();
        for name in leaving {
            let m = self.members[&name].clone();
            if self.upsert_member(crate::membership::Member {
                status: MemberStatus::Removed,
                ..m
            }) {
                out.left.push(name);
            }
        }
        out
    }
}

/// Runs [`ClusterState::advance`] for every live member as if all were up, had no write in
/// flight and had finished every transfer, until nothing changes: the end of a transition in
/// one state. Returns the members that left.
#[cfg(test)]
pub(crate) fn finish_transition(s: &mut ClusterState) -> Vec<String> {
    let mut left = Vec::new();
    for _ in 0..10 {
        let names: Vec<String> = s.live_members().map(|m| m.name.clone()).collect();
        let mut changed = false;
        for n in names {
            let a = s.advance(&n, &|_| true, false, &|_, _| true);
            changed |= a.changed();
            left.extend(a.left);
        }
        if !changed {
            break;
        }
    }
    left
}

#[cfg(test)]
mod tests {
    use crate::membership::{ClusterState, Member};

    fn member(name: &str) -> Member {
        crate::membership::tests::member(name, &format!("z-{name}"))
    }

    fn three() -> ClusterState {
        let mut s = ClusterState::new(16);
        for n in ["a", "b", "c"] {
            s.upsert_member(member(n));
        }
        s.commit().unwrap();
        s
    }

    const UP: &dyn Fn(&str) -> bool = &|_| true;

    #[test]
    fn replacing_every_node_keeps_reads_on_the_old_set_until_the_new_one_synced() {
        let mut s = three();
        assert!(!s.in_transition());
        for n in ["d", "e", "f"] {
            s.upsert_member(member(n));
        }
        for n in ["a", "b", "c"] {
            s.mark_leaving(n).unwrap();
        }
        s.commit().unwrap();
        assert!(s.in_transition());
        let old = ["a", "b", "c"].map(String::from).to_vec();
        let new = ["d", "e", "f"].map(String::from).to_vec();
        for p in 0..16 {
            let sets = s.replica_sets(p);
            let mut read = sets.read.clone();
            read.sort();
            assert_eq!(read, old);
            assert_eq!(sets.also_write.len(), 1);
            let mut w = sets.also_write[0].clone();
            w.sort();
            assert_eq!(w, new);
        }
        // No transfer before every required node acked the new version.
        assert!(s.transfer_tasks("d", UP).is_empty());
        for n in ["a", "b", "c", "d", "e", "f"] {
            s.advance(n, UP, false, &|_, _| false);
        }
        let tasks = s.transfer_tasks("d", UP);
        assert_eq!(tasks.len(), 16);
        assert!(tasks.iter().all(|t| t.version == 2 && t.sources.len() == 3));
        // d, e synced, f not: reads stay on the old version, nothing is pruned, nobody left.
        for n in ["a", "b", "c", "d", "e"] {
            let a = s.advance(n, UP, false, &|_, _| true);
            assert!(a.left.is_empty());
        }
        assert_eq!(s.read_layout().unwrap().version, 1);
        // A node with a write still in flight under the old version holds its ack back.
        let mut held = s.clone();
        held.trackers.ack.remove("f");
        held.advance("f", UP, true, &|_, _| true);
        assert!(held.transfer_tasks("d", UP).is_empty());
        // f syncs: reads move to the new set; once everyone reads it the old version goes and
        // a, b, c become removed.
        s.advance("f", UP, false, &|_, _| true);
        assert_eq!(s.read_layout().unwrap().version, 2);
        let mut left = Vec::new();
        for _ in 0..3 {
            for n in ["a", "b", "c", "d", "e", "f"] {
                left.extend(s.advance(n, UP, false, &|_, _| true).left);
            }
        }
        left.sort();
        assert_eq!(left, ["a", "b", "c"]);
        assert!(!s.in_transition());
        assert_eq!(s.replica_sets(0).also_write.len(), 0);
        assert_eq!(s.dropped_partitions("a").len(), 16);
    }

    #[test]
    fn a_dead_node_being_replaced_does_not_hold_the_transition() {
        let mut s = three();
        s.upsert_member(member("d"));
        s.mark_leaving("c").unwrap();
        s.commit().unwrap();
        let up = |n: &str| n != "c";
        for n in ["a", "b", "d"] {
            s.advance(n, &up, false, &|_, _| true);
        }
        for n in ["a", "b", "d"] {
            s.advance(n, &up, false, &|_, _| true);
        }
        // Sources still name c (it held the data); the transfer skips it when unreachable.
        let mut left = Vec::new();
        for n in ["a", "b", "d"] {
            left.extend(s.advance(n, &up, false, &|_, _| true).left);
        }
        assert_eq!(left, ["c"]);
        assert!(!s.in_transition());
    }

    #[test]
    fn a_dead_node_of_the_new_layout_holds_the_transition() {
        let mut s = three();
        s.upsert_member(member("d"));
        s.commit().unwrap();
        let up = |n: &str| n != "d";
        for _ in 0..3 {
            for n in ["a", "b", "c"] {
                s.advance(n, &up, false, &|_, _| true);
            }
        }
        assert!(s.in_transition());
        assert_eq!(s.read_layout().unwrap().version, 1);
    }

    #[test]
    fn trackers_and_history_merge_as_max_registers() {
        let mut s = three();
        s.upsert_member(member("d"));
        s.commit().unwrap();
        let mut t = s.clone();
        let u = s.clone();
        for _ in 0..3 {
            for n in ["a", "b", "c", "d"] {
                t.advance(n, UP, false, &|_, _| true);
            }
        }
        assert!(!t.in_transition());
        // A node that has not seen the end of the transition does not bring the old version
        // back, and learns it is over.
        let before = t.clone();
        assert!(!t.merge(&u));
        assert_eq!(t, before);
        let mut u2 = u.clone();
        assert!(u2.merge(&t));
        assert_eq!(u2, t);
    }
}
