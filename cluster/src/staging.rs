//! Staged layout changes: what the next `cluster commit` applies besides joins and leaves.
//!
//! An operator prepares a layout change in several steps and applies them together, as with
//! Riak's `cluster plan` / `cluster commit` and Garage's `layout apply`:
//!
//! * a node that starts with `--join` is `joining` until a commit places it (not staged
//!   here: its member entry says so);
//! * `cluster leave NODE` makes the member `leaving` (its member entry again);
//! * `cluster set NODE capacity=C zone=Z` stages a **role change** ([`RoleChange`]): the
//!   plan places the node with the new zone and capacity, and the commit writes them into its
//!   member entry;
//! * `cluster replace OLD NEW` stages a **replacement**: OLD becomes `leaving`, NEW (a
//!   joining member) takes OLD's zone and capacity unless a role change of NEW says otherwise,
//!   and the plan gives NEW exactly OLD's partition slots: [`Layout::compute`] is seeded with
//!   the committed layout in which OLD is renamed NEW ([`Layout::renamed`]), so that only
//!   OLD's replicas move. No contact with OLD is needed: a dead node can be replaced;
//! * `cluster revert` drops everything staged ([`ClusterState::revert_staged`]).
//!
//! The staged changes are one [`Staged`] value in the gossiped [`ClusterState`], held as a
//! [`Versioned`] whole: each change sets the version one higher, and the merge keeps the
//! higher version (ties broken by content hash, as for bucket properties). Two operators
//! staging concurrently on two nodes therefore do not add up: one set of changes wins.
//! Stage from one node at a time, and check `cluster plan` before `cluster commit`.
//!
//! A plan that would leave fewer nodes in the layout than the replicas each partition has
//! now is refused ([`StagingError::TooFewNodes`]): it would silently lower the replication.
//!
//! [`ClusterState::plan`] (pure) gives the new layout; [`estimate`] then says, per node, the
//! replicas gained and lost and the bytes they carry, from partition sizes the caller
//! gathered.

use crate::layout::{Layout, NodeSpec};
use crate::membership::{ClusterState, Member, MemberStatus, MembershipError, Versioned};
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::collections::BTreeMap;
use thiserror::Error;

/// A staged change of a node's role: the fields given replace the member's at the next
/// commit; the plan already uses them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RoleChange {
    /// New failure domain, if it changes.
    #[serde(default)]
    pub zone: Option<String>,
    /// New relative capacity (at least 1), if it changes.
    #[serde(default)]
    pub capacity: Option<u32>,
}

/// Everything staged for the next commit besides joins and leaves (see the module docs).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Staged {
    /// Role changes by node name.
    #[serde(default)]
    pub roles: BTreeMap<String, RoleChange>,
    /// Replacements: OLD node name to NEW node name.
    #[serde(default)]
    pub replaces: BTreeMap<String, String>,
}

impl Staged {
    /// True if nothing is staged.
    pub fn is_empty(&self) -> bool {
        self.roles.is_empty() && self.replaces.is_empty()
    }

    /// How the plan places `m`: its name, with its zone and capacity after the staged role
    /// change, if any.
    pub fn spec_of(&self, m: &Member) -> NodeSpec {
        let role = self.roles.get(&m.name);
        NodeSpec {
            name: m.name.clone(),
            zone: role
                .and_then(|r| r.zone.clone())
                .unwrap_or_else(|| m.zone.clone()),
            capacity: role.and_then(|r| r.capacity).unwrap_or(m.capacity),
        }
    }
}

/// Why a staged change, or a plan, was refused.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum StagingError {
    /// `cluster set` with a capacity of 0 or above `u32::MAX`.
    #[error("capacity must be 1 to {max}, not {got}", max = u32::MAX)]
    BadCapacity {
        /// The capacity asked for.
        got: u64,
    },
    /// `cluster set` with an empty zone name.
    #[error("zone must not be empty")]
    EmptyZone,
    /// `cluster set` with neither a capacity nor a zone.
    #[error("nothing to set: give capacity=C, zone=Z or both")]
    NothingToSet,
    /// `cluster replace` of a node by itself.
    #[error("a node cannot replace itself ({0:?})")]
    SelfReplace(String),
    /// `cluster replace` whose NEW node cannot take a place.
    #[error("{new:?} cannot replace {old:?}: {why}")]
    BadNew {
        /// The node being replaced.
        old: String,
        /// The replacement.
        new: String,
        /// What is wrong with it.
        why: String,
    },
    /// `cluster replace` whose OLD node has no place to give.
    #[error("{old:?} cannot be replaced: {why}")]
    BadOld {
        /// The node being replaced.
        old: String,
        /// What is wrong with it.
        why: String,
    },
    /// The plan places fewer nodes than the replicas each partition has now.
    #[error(
        "refused: the plan leaves {nodes} node(s) in the layout, fewer than the {replicas} replicas \
         each partition has now{leaving}; add a node (start one with --join) or drop the staged \
         changes with `ringkv cluster revert`"
    )]
    TooFewNodes {
        /// Nodes the plan would place.
        nodes: usize,
        /// Replicas per partition in the committed layout.
        replicas: u32,
        /// `" (leaving: a, b)"`, or empty.
        leaving: String,
    },
}

/// What [`ClusterState::revert_staged`] dropped.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reverted {
    /// The staged changes dropped.
    pub dropped: Staged,
    /// Members that were `leaving` while still placed in the committed layout, now `active`
    /// again.
    pub active_again: Vec<String>,
}

/// Replicas and estimated bytes one node gains and loses in a plan.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeMoves {
    /// Partition replicas the node holds in the new layout.
    pub replicas: u32,
    /// Partition replicas it holds in the new layout and not in the committed one.
    pub gained: u32,
    /// Partition replicas it holds in the committed layout and not in the new one.
    pub lost: u32,
    /// Estimated bytes it receives: the sizes of the partitions it gains.
    pub bytes_in: u64,
    /// Estimated bytes that leave it: the sizes of the partitions it loses (another holder
    /// may send them; this is what the node stops holding).
    pub bytes_out: u64,
}

/// The moves of a plan, per node, with their estimated sizes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MoveEstimate {
    /// Per node of the committed or the new layout, by name.
    pub nodes: BTreeMap<String, NodeMoves>,
    /// Estimated bytes to move in all: the sum of every node's `bytes_in`.
    pub bytes_to_move: u64,
}

/// The moves from `old` (the committed layout, if any) to `new`, per node, with the bytes
/// they carry: `sizes` maps a partition to its estimated size in bytes (absent: 0), e.g. the
/// largest size its replicas reported. A replica moves when its node did not hold that
/// partition before; a new primary inside the same replica set moves nothing. Both layouts
/// have the same partition count Q (fixed at cluster creation); if not, partition `p` of
/// `new` is compared with the old partition holding its first key, as [`crate::layout::diff`]
/// does.
pub fn estimate(old: Option<&Layout>, new: &Layout, sizes: &BTreeMap<u32, u64>) -> MoveEstimate {
    let mut nodes: BTreeMap<String, NodeMoves> = BTreeMap::new();
    let size = |p: u32| sizes.get(&p).copied().unwrap_or(0);
    for p in 0..new.partitions() {
        let after: Vec<&str> = new.replica_names(p).collect();
        let before: Vec<&str> = old
            .map(|o| {
                o.replica_names(crate::layout::map_partition(
                    p,
                    new.partitions(),
                    o.partitions(),
                ))
                .collect()
            })
            .unwrap_or_default();
        for n in &after {
            let e = nodes.entry(n.to_string()).or_default();
            e.replicas += 1;
            if !before.contains(n) {
                e.gained += 1;
                e.bytes_in += size(p);
            }
        }
        for n in before.iter().filter(|n| !after.contains(n)) {
            let e = nodes.entry(n.to_string()).or_default();
            e.lost += 1;
            e.bytes_out += size(p);
        }
    }
    let bytes_to_move = nodes.values().map(|m| m.bytes_in).sum();
    MoveEstimate {
        nodes,
        bytes_to_move,
    }
}

/// The `previous` layout [`ClusterState::plan`] seeds [`Layout::compute`] with: the
/// committed one, with each staged replacement's OLD renamed NEW where NEW is a live member
/// not yet placed and OLD is placed (replacements that no longer apply are skipped).
pub(crate) fn seed(state: &ClusterState) -> Option<Cow<'_, Layout>> {
    let mut seed = Cow::Borrowed(&state.layout.as_ref()?.layout);
    for (old, new) in &state.staged.value.replaces {
        let usable = state
            .members
            .get(new)
            .is_some_and(|m| matches!(m.status, MemberStatus::Joining | MemberStatus::Active));
        if let Some(renamed) = usable.then(|| seed.renamed(old, new)).flatten() {
            seed = Cow::Owned(renamed);
        }
    }
    Some(seed)
}

/// Refuses a plan that places fewer nodes (`nodes`) than the replicas each partition has in
/// the committed layout.
///
/// # Errors
/// [`StagingError::TooFewNodes`].
pub(crate) fn check_enough_nodes(state: &ClusterState, nodes: usize) -> Result<(), StagingError> {
    let Some(committed) = &state.layout else {
        return Ok(());
    };
    let replicas = committed.layout.replication();
    if nodes >= replicas as usize {
        return Ok(());
    }
    let leaving: Vec<&str> = state
        .members
        .values()
        .filter(|m| m.status == MemberStatus::Leaving)
        .map(|m| m.name.as_str())
        .collect();
    Err(StagingError::TooFewNodes {
        nodes,
        replicas,
        leaving: if leaving.is_empty() {
            String::new()
        } else {
            format!(" (leaving: {})", leaving.join(", "))
        },
    })
}

/// At a commit: writes the staged role changes into the member entries (live members only)
/// and empties the staged changes with a higher version, so that gossip carries the empty
/// set over the older ones. With nothing staged it changes nothing (a concurrent staging
/// elsewhere is not overruled by a commit that never saw it).
pub(crate) fn apply_at_commit(state: &mut ClusterState) {
    if state.staged.value.is_empty() {
        return;
    }
    let staged = std::mem::take(&mut state.staged.value);
    state.staged.version += 1;
    for (name, role) in staged.roles {
        let Some(m) = state.members.get(&name).filter(|m| !m.is_removed()) else {
            continue;
        };
        let updated = Member {
            zone: role.zone.unwrap_or_else(|| m.zone.clone()),
            capacity: role.capacity.unwrap_or(m.capacity),
            ..m.clone()
        };
        if updated != *m {
            state.upsert_member(updated);
        }
    }
}

impl ClusterState {
    /// A live member by name.
    ///
    /// # Errors
    /// [`MembershipError::UnknownMember`]; [`MembershipError::Removed`] for a tombstone.
    fn live_member(&self, name: &str) -> Result<&Member, MembershipError> {
        match self.members.get(name) {
            None => Err(MembershipError::UnknownMember(name.into())),
            Some(m) if m.is_removed() => Err(MembershipError::Removed(name.into())),
            Some(m) => Ok(m),
        }
    }

    /// True if the committed layout places `name`.
    fn placed(&self, name: &str) -> bool {
        self.layout
            .as_ref()
            .is_some_and(|c| c.layout.index_of(name).is_some())
    }

    /// Replaces the staged changes with `staged`, one version higher.
    fn restage(&mut self, staged: Staged) {
        self.staged = Versioned {
            version: self.staged.version + 1,
            value: staged,
        };
    }

    /// Stages a role change of `node` (`cluster set NODE capacity=C zone=Z`): the given
    /// fields are added to those already staged for it. The plan uses them; the commit writes
    /// them into the member entry.
    ///
    /// # Errors
    /// [`MembershipError::UnknownMember`], [`MembershipError::Removed`];
    /// [`StagingError::NothingToSet`], [`StagingError::BadCapacity`] (0 or above `u32::MAX`),
    /// [`StagingError::EmptyZone`].
    pub fn stage_role(
        &mut self,
        node: &str,
        zone: Option<String>,
        capacity: Option<u64>,
    ) -> Result<(), MembershipError> {
        self.live_member(node)?;
        if zone.is_none() && capacity.is_none() {
            return Err(StagingError::NothingToSet.into());
        }
        let capacity = capacity
            .map(|c| {
                u32::try_from(c)
                    .ok()
                    .filter(|&c| c >= 1)
                    .ok_or(StagingError::BadCapacity { got: c })
            })
            .transpose()?;
        if zone.as_deref() == Some("") {
            return Err(StagingError::EmptyZone.into());
        }
        let mut staged = self.staged.value.clone();
        let role = staged.roles.entry(node.to_string()).or_default();
        role.zone = zone.or(role.zone.take());
        role.capacity = capacity.or(role.capacity);
        self.restage(staged);
        Ok(())
    }

    /// Stages the replacement of `old` by `new` (`cluster replace OLD NEW`): `old` becomes
    /// `leaving`, `new` takes `old`'s zone and capacity (unless a role change of `new` gives
    /// others, before or after), and the plan gives `new` exactly `old`'s partition slots.
    /// Staging the same replacement again changes nothing.
    ///
    /// # Errors
    /// [`MembershipError::UnknownMember`] or [`MembershipError::Removed`] for either node;
    /// [`StagingError::SelfReplace`]; [`StagingError::BadOld`] if `old` is not placed in the
    /// committed layout or is already being replaced by another node;
    /// [`StagingError::BadNew`] if `new` is placed already, is not `joining`, or already
    /// replaces another node.
    pub fn stage_replace(&mut self, old: &str, new: &str) -> Result<(), MembershipError> {
        if old == new {
            return Err(StagingError::SelfReplace(old.into()).into());
        }
        let old_member = self.live_member(old)?.clone();
        let new_member = self.live_member(new)?;
        let bad_new = |why: String| StagingError::BadNew {
            old: old.into(),
            new: new.into(),
            why,
        };
        if self.placed(new) {
            return Err(bad_new("it already holds partitions in the layout".into()).into());
        }
        if new_member.status != MemberStatus::Joining {
            return Err(bad_new(format!(
                "it is {:?}, not joining (start it with --join)",
                new_member.status
            ))
            .into());
        }
        let staged = &self.staged.value;
        match staged.replaces.get(old) {
            Some(n) if n == new => return Ok(()),
            Some(n) => {
                return Err(StagingError::BadOld {
                    old: old.into(),
                    why: format!(
                    "it is already being replaced by {n:?} (`ringkv cluster revert` drops that)"
                ),
                }
                .into())
            }
            None => {}
        }
        if let Some((o, _)) = staged.replaces.iter().find(|(_, n)| *n == new) {
            return Err(bad_new(format!("it already replaces {o:?}")).into());
        }
        if !self.placed(old) {
            return Err(StagingError::BadOld {
                old: old.into(),
                why: "it holds no partitions in the committed layout (a joining node is simply left out: `ringkv cluster leave`)".into(),
            }
            .into());
        }
        let from = staged.spec_of(&old_member);
        let mut staged = staged.clone();
        let role = staged.roles.entry(new.to_string()).or_default();
        role.zone = role.zone.take().or(Some(from.zone));
        role.capacity = role.capacity.or(Some(from.capacity));
        staged.replaces.insert(old.into(), new.into());
        self.mark_leaving(old)?;
        self.restage(staged);
        Ok(())
    }

    /// Drops everything staged (`cluster revert`): role changes and replacements, with a
    /// higher version, and sets the members that are `leaving` but still placed in the
    /// committed layout back to `active`. Joining members stay joining (their entry, not a
    /// staged change, says so). Returns what was dropped.
    pub fn revert_staged(&mut self) -> Reverted {
        let dropped = self.staged.value.clone();
        self.restage(Staged::default());
        let back: Vec<Member> = self
            .members
            .values()
            .filter(|m| m.status == MemberStatus::Leaving && self.placed(&m.name))
            .cloned()
            .collect();
        let active_again = back.iter().map(|m| m.name.clone()).collect();
        for m in back {
            self.upsert_member(Member {
                status: MemberStatus::Active,
                ..m
            });
        }
        Reverted {
            dropped,
            active_again,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::membership::Plan;

    use crate::membership::tests::member;

    /// `names` active in zones `z-{name}`, Q = 16, then `joining` joined (not committed).
    fn cluster(names: &[&str], joining: &[&str]) -> ClusterState {
        let mut s = ClusterState::new(16);
        for n in names {
            s.upsert_member(member(n, &format!("z-{n}")));
        }
        s.commit().unwrap();
        for n in joining {
            s.upsert_member(member(n, &format!("z-{n}")));
        }
        s
    }

    fn committed(s: &ClusterState) -> &Layout {
        &s.layout.as_ref().unwrap().layout
    }

    fn moves(s: &ClusterState, plan: &Plan) -> MoveEstimate {
        let sizes = (0..16).map(|p| (p, 1000 + u64::from(p))).collect();
        estimate(Some(committed(s)), &plan.layout, &sizes)
    }

    #[test]
    fn staged_changes_merge_by_version() {
        let base = cluster(&["a", "b", "c", "d"], &["e"]);
        let (mut x, mut y) = (base.clone(), base.clone());
        x.stage_role("a", None, Some(2)).unwrap();
        y.stage_role("b", Some("zz".into()), None).unwrap();
        y.stage_role("c", None, Some(3)).unwrap();
        // y staged twice: its version is higher and wins on both sides.
        let (mut xy, mut yx) = (x.clone(), y.clone());
        assert!(xy.merge(&y));
        assert!(!yx.merge(&x));
        assert_eq!(xy, yx);
        assert_eq!(xy.staged, y.staged);
        assert!(!xy.staged.value.roles.contains_key("a"));
        // Equal versions, other contents: the same winner whatever the order.
        let (mut p, mut q) = (base.clone(), base.clone());
        p.stage_role("a", None, Some(2)).unwrap();
        q.stage_role("a", None, Some(5)).unwrap();
        let (mut pq, mut qp) = (p.clone(), q.clone());
        pq.merge(&q);
        qp.merge(&p);
        assert_eq!(pq, qp);
        // A revert (higher version) beats the changes it dropped, wherever they are gossiped.
        let mut r = y.clone();
        r.revert_staged();
        let mut stale = y.clone();
        assert!(stale.merge(&r));
        assert!(stale.staged.value.is_empty());
        assert!(!r.merge(&y));
    }

    #[test]
    fn a_replace_moves_exactly_the_old_nodes_replicas_to_the_new_one() {
        let mut s = cluster(&["a", "b", "c", "d"], &["e"]);
        s.stage_role("b", None, Some(1)).unwrap();
        let held = committed(&s).replicas_by_name()["b"];
        s.stage_replace("b", "e").unwrap();
        assert_eq!(s.members["b"].status, MemberStatus::Leaving);
        // Staging it again changes nothing.
        let again = s.clone();
        s.stage_replace("b", "e").unwrap();
        assert_eq!(s, again);
        let plan = s.plan().unwrap();
        assert_eq!(plan.moved, held as usize);
        assert_eq!(plan.joining, ["e"]);
        assert_eq!(plan.leaving, ["b"]);
        let m = moves(&s, &plan);
        assert_eq!((m.nodes["e"].gained, m.nodes["e"].lost), (held, 0));
        assert_eq!((m.nodes["b"].gained, m.nodes["b"].lost), (0, held));
        assert_eq!(m.nodes["e"].bytes_in, m.nodes["b"].bytes_out);
        assert_eq!(m.bytes_to_move, m.nodes["e"].bytes_in);
        assert!(m.bytes_to_move >= 1000 * u64::from(held));
        for n in ["a", "c", "d"] {
            assert_eq!((m.nodes[n].gained, m.nodes[n].lost), (0, 0), "{n}");
        }
        let b_parts = committed(&s).partitions_of(committed(&s).index_of("b").unwrap());
        let version = s.staged.version;
        s.commit().unwrap();
        crate::transition::finish_transition(&mut s);
        let after = committed(&s);
        assert_eq!(after.partitions_of(after.index_of("e").unwrap()), b_parts);
        // e took b's zone and capacity; b is removed; nothing is staged any more.
        assert_eq!(
            (s.members["e"].zone.as_str(), s.members["e"].capacity),
            ("z-b", 1)
        );
        assert_eq!(s.members["e"].status, MemberStatus::Active);
        assert!(s.is_removed("b"));
        assert!(s.staged.value.is_empty());
        assert!(s.staged.version > version);
    }

    #[test]
    fn a_replace_keeps_the_new_nodes_own_role_if_set() {
        let mut s = cluster(&["a", "b", "c", "d"], &["e"]);
        s.stage_role("e", None, Some(2)).unwrap();
        s.stage_replace("b", "e").unwrap();
        s.stage_role("e", Some("z-e".into()), None).unwrap();
        assert_eq!(
            s.staged.value.roles["e"],
            RoleChange {
                zone: Some("z-e".into()),
                capacity: Some(2)
            }
        );
        s.commit().unwrap();
        assert_eq!(
            (s.members["e"].zone.as_str(), s.members["e"].capacity),
            ("z-e", 2)
        );
    }

    #[test]
    fn a_role_change_applies_at_the_commit() {
        let mut s = cluster(&["a", "b", "c", "d", "e"], &[]);
        s.stage_role("a", Some("z-big".into()), Some(4)).unwrap();
        assert_eq!(s.members["a"].capacity, 1, "not before the commit");
        let plan = s.plan().unwrap();
        let a = plan.layout.index_of("a").unwrap();
        assert_eq!(plan.layout.node(a).capacity, 4);
        assert_eq!(plan.layout.node(a).zone, "z-big");
        assert!(plan.layout.replicas_by_name()["a"] > committed(&s).replicas_by_name()["a"]);
        s.commit().unwrap();
        assert_eq!(
            (s.members["a"].zone.as_str(), s.members["a"].capacity),
            ("z-big", 4)
        );
        assert!(s.staged.value.is_empty());
        // A role change that moves nothing still commits (it changes the member).
        s.stage_role("b", None, Some(1)).unwrap();
        s.commit().unwrap();
        assert_eq!(s.commit(), Err(MembershipError::NothingToCommit));
    }

    #[test]
    fn bad_role_changes_are_refused() {
        let mut s = cluster(&["a", "b", "c"], &[]);
        let before = s.clone();
        let err = |r: Result<(), MembershipError>| r.unwrap_err().to_string();
        assert!(err(s.stage_role("a", None, Some(0))).contains("capacity must be 1 to"));
        assert!(err(s.stage_role("a", None, Some(1 << 40))).contains("capacity"));
        assert!(err(s.stage_role("a", Some(String::new()), None)).contains("zone"));
        assert!(err(s.stage_role("a", None, None)).contains("nothing to set"));
        assert_eq!(
            s.stage_role("x", None, Some(2)),
            Err(MembershipError::UnknownMember("x".into()))
        );
        assert_eq!(s, before);
    }

    #[test]
    fn bad_replacements_are_refused() {
        let mut s = cluster(&["a", "b", "c", "d"], &["e", "f"]);
        s.mark_leaving("d").unwrap();
        s.commit().unwrap();
        crate::transition::finish_transition(&mut s);
        s.upsert_member(member("g", "z-g"));
        let before = s.clone();
        let err = |s: &mut ClusterState, o: &str, n: &str| s.stage_replace(o, n).unwrap_err();
        assert_eq!(
            err(&mut s, "a", "x"),
            MembershipError::UnknownMember("x".into())
        );
        assert_eq!(err(&mut s, "a", "d"), MembershipError::Removed("d".into()));
        assert!(err(&mut s, "a", "b").to_string().contains("already holds"));
        assert!(err(&mut s, "a", "a").to_string().contains("itself"));
        assert!(err(&mut s, "g", "a")
            .to_string()
            .contains("already holds partitions"));
        s.upsert_member(member("h", "z-h"));
        assert!(err(&mut s, "g", "h")
            .to_string()
            .contains("holds no partitions"));
        s.stage_replace("a", "g").unwrap();
        assert!(err(&mut s, "a", "h")
            .to_string()
            .contains("already being replaced"));
        assert!(err(&mut s, "b", "g")
            .to_string()
            .contains("already replaces"));
        s.revert_staged();
        s.upsert_member(Member {
            status: MemberStatus::Leaving,
            ..s.members["h"].clone()
        });
        assert!(err(&mut s, "a", "h").to_string().contains("not joining"));
        assert_ne!(s, before);
    }

    #[test]
    fn revert_drops_everything_staged_and_undoes_leaves() {
        let mut s = cluster(&["a", "b", "c", "d"], &["e", "f"]);
        s.stage_role("a", None, Some(3)).unwrap();
        s.stage_replace("b", "e").unwrap();
        s.mark_leaving("c").unwrap();
        // A joining node marked leaving is not placed: it stays leaving.
        s.mark_leaving("f").unwrap();
        let staged = s.staged.value.clone();
        let reverted = s.revert_staged();
        assert_eq!(reverted.dropped, staged);
        assert_eq!(reverted.active_again, ["b", "c"]);
        assert!(s.staged.value.is_empty());
        for n in ["a", "b", "c", "d"] {
            assert_eq!(s.members[n].status, MemberStatus::Active, "{n}");
        }
        assert_eq!(s.members["e"].status, MemberStatus::Joining);
        assert_eq!(s.members["f"].status, MemberStatus::Leaving);
        // The plan is what joining alone gives: e enters with its own share, nobody leaves.
        let plan = s.plan().unwrap();
        assert_eq!(plan.joining, ["e"]);
        // f, never placed, hands nothing over: the transition step removes it, not a commit.
        assert!(plan.leaving.is_empty());
        assert_eq!(
            plan.layout
                .node(plan.layout.index_of("a").unwrap())
                .capacity,
            1
        );
    }

    #[test]
    fn a_plan_with_fewer_nodes_than_replicas_is_refused() {
        let mut s = cluster(&["a", "b", "c"], &[]);
        s.mark_leaving("c").unwrap();
        let e = s.plan().unwrap_err();
        assert_eq!(
            e,
            MembershipError::Staging(StagingError::TooFewNodes {
                nodes: 2,
                replicas: 3,
                leaving: " (leaving: c)".into()
            })
        );
        let text = e.to_string();
        for part in [
            "2 node(s)",
            "3 replicas",
            "leaving: c",
            "--join",
            "cluster revert",
        ] {
            assert!(text.contains(part), "{text}");
        }
        let before = s.clone();
        assert_eq!(s.commit().unwrap_err(), e);
        assert_eq!(s, before, "a refused commit changes nothing");
        // A new node makes it fine; so does a revert.
        let mut joined = s.clone();
        joined.upsert_member(member("d", "z-d"));
        assert_eq!(joined.plan().unwrap().leaving, ["c"]);
        s.revert_staged();
        assert_eq!(s.commit(), Err(MembershipError::NothingToCommit));
    }

    #[test]
    fn a_replace_of_a_leaving_node_and_a_plain_leave_go_into_one_plan() {
        let mut s = cluster(&["a", "b", "c", "d", "e"], &["f", "g"]);
        s.stage_replace("a", "f").unwrap();
        s.stage_replace("b", "g").unwrap();
        s.mark_leaving("e").unwrap();
        let plan = s.plan().unwrap();
        assert_eq!(plan.joining, ["f", "g"]);
        assert_eq!(plan.leaving, ["a", "b", "e"]);
        let m = moves(&s, &plan);
        let old = committed(&s).replicas_by_name();
        assert!(m.nodes["f"].gained >= old["a"]);
        assert!(m.nodes["g"].gained >= old["b"]);
        assert_eq!(m.nodes["e"].lost, old["e"]);
        s.commit().unwrap();
        crate::transition::finish_transition(&mut s);
        assert_eq!(s.live_members().count(), 4);
    }

    #[test]
    fn states_written_before_staging_still_decode() {
        #[derive(Serialize)]
        struct Old {
            partitions: u32,
            members: BTreeMap<String, Member>,
            layout: Option<crate::membership::CommittedLayout>,
        }
        let s = cluster(&["a"], &[]);
        let old = Old {
            partitions: s.partitions,
            members: s.members.clone(),
            layout: s.layout.clone(),
        };
        let back: ClusterState =
            rmp_serde::from_slice(&rmp_serde::to_vec_named(&old).unwrap()).unwrap();
        assert_eq!(back, s);
    }
}
