//! Cluster membership: the state every node gossips, and its merge rule.
//!
//! A [`ClusterState`] holds the members (name, addresses, zone, capacity, status), the
//! committed partition layout and the bucket properties. Each part carries a version. Two
//! states are merged part by part, and the higher version wins: per member, for the layout as
//! a whole, and per bucket. Equal versions with different contents are broken by a hash of the
//! contents. The merge is therefore commutative, associative and idempotent, and every node
//! that has seen the same updates holds the same state, whatever order the gossip took.
//!
//! Layout changes are staged and then applied by the operator, as in Riak (`cluster plan`,
//! `cluster commit`) and Garage. A node that joins is `joining` until a commit places it in the
//! layout, when it becomes `active`. A node leaving is `leaving` until the commit that takes it
//! out of the layout has moved everything it held to the new replicas ([`crate::transition`]:
//! a commit adds a layout version and the older ones stay live meanwhile); it then becomes
//! `removed` and may be stopped.
//!
//! # Removed members are tombstones
//!
//! The state never deletes a member: the end of a transition turns a leaving member into a
//! `removed` entry (a tombstone) with a higher version, and that entry is gossiped like any
//! other. Deleting it
//! would let gossip from any node that had not seen the commit put the member back. Members
//! are ordered by the key `(incarnation, removed, version)`, then by the content hash:
//!
//! * the **incarnation** is chosen when a node's data directory is created (milliseconds since
//!   the Unix epoch, as Cassandra's gossip generation) and never changes while that directory
//!   lives;
//! * within one incarnation a tombstone beats every live entry, whatever their versions: a
//!   removed node is removed for good, even if it restarts on its old data directory and
//!   re-announces itself, or a node that missed the commit bumps its entry;
//! * a node started under the same name with a **fresh** data directory has a later
//!   incarnation, so its `joining` entry replaces the tombstone and it can be placed again by
//!   a commit, as a Riak node that left can join again once its ring was reset.
//!
//! Tombstones are never in a preference list, a fallback list or a layout the next plan
//! computes, and never a gossip or reconnection target. The order is total, so the merge
//! stays commutative, associative and idempotent.

use crate::layout::{Layout, LayoutError, NodeSpec};
use crate::staging::{Staged, StagingError};
use crate::transition::Trackers;
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;
use std::collections::BTreeMap;
use thiserror::Error;
use xxhash_rust::xxh3::xxh3_64;

/// The most replicas a layout gives each partition (fewer when the cluster has fewer nodes).
pub const LAYOUT_REPLICAS: usize = 3;

/// Where a member is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MemberStatus {
    /// Known to the cluster, not yet in the layout.
    Joining,
    /// In the layout.
    Active,
    /// To be removed from the layout at the next commit.
    Leaving,
    /// Removed by a commit: a tombstone that keeps this incarnation of the node out of the
    /// cluster for good (see the module docs).
    Removed,
}

/// One node of the cluster as the cluster knows it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Member {
    /// Unique node name (`--name`).
    pub name: String,
    /// Address of its cluster transport (`--cluster-addr`), `HOST:PORT`.
    pub cluster_addr: String,
    /// Address of its client listener (`--listen`), `HOST:PORT`.
    pub client_addr: String,
    /// Failure domain (`--zone`).
    pub zone: String,
    /// Relative capacity (`--capacity`), at least 1.
    pub capacity: u32,
    /// Status.
    pub status: MemberStatus,
    /// Version of this entry; each change sets it above every version seen for it.
    pub version: u64,
    /// When the node's data directory was created, ms since the Unix epoch (0 in states
    /// written before incarnations existed). A later incarnation replaces every entry of an
    /// earlier one, tombstones included.
    #[serde(default)]
    pub incarnation: u64,
    /// Address where it serves client nodes (`--actor-listen`), `HOST:PORT`; empty without
    /// one. Partition-aware actor clients dial it.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub actor_addr: String,
}

impl Member {
    /// True for a tombstone.
    pub fn is_removed(&self) -> bool {
        self.status == MemberStatus::Removed
    }

    /// The merge order of two entries of the same name, before the content hash.
    fn order_key(&self) -> (u64, bool, u64) {
        (self.incarnation, self.is_removed(), self.version)
    }

    /// True if `other` replaces `self` in a merge: a larger [`Member::order_key`], or the same
    /// key, other contents and a higher content hash.
    fn replaced_by(&self, other: &Member) -> bool {
        match other.order_key().cmp(&self.order_key()) {
            std::cmp::Ordering::Greater => true,
            std::cmp::Ordering::Less => false,
            std::cmp::Ordering::Equal => self != other && content_hash(other) > content_hash(self),
        }
    }
}

/// Per-bucket replication settings, as in Riak's bucket properties.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct BucketProps {
    /// Replicas per key (at most the layout's replica count, [`LAYOUT_REPLICAS`]).
    pub n: u8,
    /// Replicas that must answer a read.
    pub r: u8,
    /// Replicas that must acknowledge a write durably.
    pub w: u8,
    /// Default time limit of requests on this bucket, ms (0: the node's default).
    #[serde(default)]
    pub timeout_ms: u64,
    /// Sloppy quorum (Dynamo): a write whose preference-list replicas are down is stored as
    /// a durable hint on the next healthy nodes of the fallback order, those acknowledgements
    /// count toward `w`, and hinted handoff delivers the hints later. `false` is a strict
    /// quorum: only preference-list replicas count, for applications that prefer failing to
    /// diverging. Default `true` (Riak's default).
    #[serde(default = "default_true")]
    pub sloppy_quorum: bool,
    /// How the node that accepts a write compresses the value before storing and replicating
    /// it (values that do not shrink are stored raw). Changing it affects later writes only;
    /// every stored value says how it is encoded. Default [`Compression::Zstd`]; states
    /// gossiped before this property existed decode with the default.
    #[serde(default)]
    pub compression: Compression,
    /// `eventual` (the default: Dynamo-style quorums, siblings, sloppy quorum) or `strong`
    /// (every operation on a key linearizable, by Paxos per key; `r`, `w` and
    /// `sloppy_quorum` do not apply). Fixed once the bucket holds data.
    #[serde(default)]
    pub consistency: Consistency,
}

/// The bucket property `consistency`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Consistency {
    /// Quorum reads and writes with versions and siblings (Dynamo).
    #[default]
    Eventual,
    /// Linearizable single-key operations (CASPaxos per key).
    Strong,
}

impl Consistency {
    /// The property's value as `bucket get` shows it and `bucket set` takes it.
    pub fn name(self) -> &'static str {
        match self {
            Consistency::Eventual => "eventual",
            Consistency::Strong => "strong",
        }
    }
}

impl std::str::FromStr for Consistency {
    type Err = MembershipError;

    /// Parses `eventual` or `strong`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "eventual" => Ok(Consistency::Eventual),
            "strong" => Ok(Consistency::Strong),
            other => Err(MembershipError::BadBucketProps(format!(
                "consistency must be eventual or strong, not {other:?}"
            ))),
        }
    }
}

fn default_true() -> bool {
    true
}

/// The bucket property `compression`: how values written to the bucket are compressed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// Store values as the client sent them.
    None,
    /// zstd at the level the storage layer chose by measurement (fast, good ratio).
    #[default]
    Zstd,
    /// LZ4: faster than zstd, larger output.
    Lz4,
}

impl Compression {
    /// The property's value as `bucket get` shows it and `bucket set` takes it.
    pub fn name(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Zstd => "zstd",
            Compression::Lz4 => "lz4",
        }
    }
}

impl std::str::FromStr for Compression {
    type Err = MembershipError;

    /// Parses `none`, `zstd` or `lz4`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "none" => Ok(Compression::None),
            "zstd" => Ok(Compression::Zstd),
            "lz4" => Ok(Compression::Lz4),
            other => Err(MembershipError::BadBucketProps(format!(
                "compression must be none, zstd or lz4, not {other:?}"
            ))),
        }
    }
}

impl Default for BucketProps {
    /// n = 3, r = 2, w = 2: Riak's defaults, read-your-writes with one replica down.
    fn default() -> Self {
        Self {
            n: 3,
            r: 2,
            w: 2,
            timeout_ms: 0,
            sloppy_quorum: true,
            compression: Compression::Zstd,
            consistency: Consistency::Eventual,
        }
    }
}

impl BucketProps {
    /// Checks `1 <= r, w <= n <= LAYOUT_REPLICAS`.
    ///
    /// # Errors
    /// [`MembershipError::BadBucketProps`] naming the rule broken.
    pub fn validate(&self) -> Result<(), MembershipError> {
        let (n, r, w) = (self.n as usize, self.r as usize, self.w as usize);
        if n == 0 || n > LAYOUT_REPLICAS {
            return Err(MembershipError::BadBucketProps(format!(
                "n must be 1 to {LAYOUT_REPLICAS}, not {n}"
            )));
        }
        if r == 0 || r > n || w == 0 || w > n {
            return Err(MembershipError::BadBucketProps(format!(
                "r and w must be 1 to n ({n}), not r={r} w={w}"
            )));
        }
        Ok(())
    }
}

/// A value with the version that orders it among concurrent updates.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Versioned<T> {
    /// Higher wins.
    pub version: u64,
    /// The value.
    pub value: T,
}

/// The committed partition layout.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommittedLayout {
    /// Layout version; each commit is one higher than the last.
    pub version: u64,
    /// The layout.
    pub layout: Layout,
}

/// Errors of membership changes.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum MembershipError {
    /// The layout could not be computed.
    #[error("cannot compute a layout: {0}")]
    Layout(String),
    /// Nothing to commit.
    #[error("no change to commit: the layout already places every member")]
    NothingToCommit,
    /// Unknown node name.
    #[error("no member is named {0:?}")]
    UnknownMember(String),
    /// The node was removed (it left the cluster); only a node started under that name with a fresh
    /// data directory can join again.
    #[error("node {0:?} was removed from the cluster; to add it again, start it with an empty data directory")]
    Removed(String),
    /// Invalid bucket properties.
    #[error("invalid bucket properties: {0}")]
    BadBucketProps(String),
    /// Too many layout versions are live: earlier changes have not finished moving data.
    #[error("{0} layout versions are live already: wait for the transfers of the earlier changes (`ringkv cluster transfers`) before committing another")]
    TooManyVersions(usize),
    /// A staged change or a plan was refused (see [`crate::staging`]).
    #[error(transparent)]
    Staging(#[from] StagingError),
}

/// The most layout versions live at once (the newest and the older ones whose data is still
/// moving); a commit beyond it is refused.
pub const MAX_LIVE_LAYOUTS: usize = 8;

impl From<LayoutError> for MembershipError {
    fn from(e: LayoutError) -> Self {
        MembershipError::Layout(e.to_string())
    }
}

/// A staged layout change, as `cluster plan` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    /// Version the layout will get.
    pub version: u64,
    /// The new layout.
    pub layout: Layout,
    /// Partition replicas that change node, compared with the committed layout.
    pub moved: usize,
    /// Members that enter the layout.
    pub joining: Vec<String>,
    /// Members that leave it.
    pub leaving: Vec<String>,
}

/// The state every node gossips.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterState {
    /// Partition count Q, fixed at cluster creation.
    pub partitions: u32,
    /// Members by name.
    pub members: BTreeMap<String, Member>,
    /// The newest committed layout; `None` until the first commit.
    pub layout: Option<CommittedLayout>,
    /// Older layout versions still live during a transition, oldest first, all older than
    /// `layout` (see [`crate::transition`]).
    #[serde(default)]
    pub history: Vec<CommittedLayout>,
    /// Each node's progress through the transition (see [`crate::transition`]).
    #[serde(default)]
    pub trackers: Trackers,
    /// Bucket properties by bucket name; buckets absent use [`BucketProps::default`].
    #[serde(default)]
    pub buckets: BTreeMap<ByteBuf, Versioned<BucketProps>>,
    /// Role changes and replacements staged for the next commit (see [`crate::staging`]);
    /// empty in states written before staging existed.
    #[serde(default)]
    pub staged: Versioned<Staged>,
}

fn content_hash<T: Serialize>(v: &T) -> u64 {
    xxh3_64(&rmp_serde::to_vec(v).unwrap_or_default())
}

/// True if `b` should replace `a`: a higher version, or the same version and a higher
/// content hash (a deterministic tie-break for concurrent updates).
fn wins<T: Serialize + PartialEq>(a: &T, a_version: u64, b: &T, b_version: u64) -> bool {
    b_version > a_version || (b_version == a_version && a != b && content_hash(b) > content_hash(a))
}

impl ClusterState {
    /// A state with no members and no layout.
    pub fn new(partitions: u32) -> Self {
        Self {
            partitions,
            members: BTreeMap::new(),
            layout: None,
            history: Vec::new(),
            trackers: Trackers::default(),
            buckets: BTreeMap::new(),
            staged: Versioned::default(),
        }
    }

    /// Merges `other` into `self`; returns true if `self` changed. A state with another
    /// partition count belongs to another cluster and is ignored (see
    /// [`ClusterState::compatible`]).
    pub fn merge(&mut self, other: &ClusterState) -> bool {
        if !self.compatible(other) {
            return false;
        }
        let before = self.digest();
        for (name, theirs) in &other.members {
            match self.members.get(name) {
                Some(ours) if !ours.replaced_by(theirs) => {}
                _ => {
                    self.members.insert(name.clone(), theirs.clone());
                }
            }
        }
        self.trackers.merge(&other.trackers);
        // Layout versions: the union, one winner per version number (concurrent commits of
        // the same number are ordered by content hash), versions below `pruned_below`
        // dropped unless newest.
        let mut versions: BTreeMap<u64, CommittedLayout> = BTreeMap::new();
        for c in self.live_layouts().chain(other.live_layouts()) {
            match versions.get(&c.version) {
                Some(ours) if !wins(ours, ours.version, c, c.version) => {}
                _ => {
                    versions.insert(c.version, c.clone());
                }
            }
        }
        let newest = versions.pop_last().map(|(_, c)| c);
        let pruned_below = self.trackers.pruned_below;
        self.history = versions
            .into_values()
            .filter(|c| c.version >= pruned_below)
            .collect();
        self.layout = newest;
        for (bucket, theirs) in &other.buckets {
            match self.buckets.get(bucket) {
                Some(ours) if !wins(ours, ours.version, theirs, theirs.version) => {}
                _ => {
                    self.buckets.insert(bucket.clone(), theirs.clone());
                }
            }
        }
        let (ours, theirs) = (&self.staged, &other.staged);
        if wins(&ours.value, ours.version, &theirs.value, theirs.version) {
            self.staged = theirs.clone();
        }
        self.digest() != before
    }

    /// True if `other` can be merged: same partition count Q.
    pub fn compatible(&self, other: &ClusterState) -> bool {
        self.partitions == other.partitions
    }

    /// A hash of the whole state: equal on two nodes if and only if (barring collisions)
    /// they hold the same state. Gossip sends it first and the state only when they differ.
    pub fn digest(&self) -> u64 {
        content_hash(self)
    }

    /// Adds or updates a member, giving its entry a version above every one seen for it in
    /// the same incarnation. Returns false, changing nothing, if the entry would lose to the
    /// one held (see [`Member::replaced_by`]): an entry of an earlier incarnation, or a live
    /// entry of an incarnation that was removed.
    pub fn upsert_member(&mut self, mut member: Member) -> bool {
        let held = self
            .members
            .get(&member.name)
            .filter(|m| m.incarnation == member.incarnation);
        member.version = held.map_or(1, |m| m.version + 1).max(member.version);
        if let Some(held) = self.members.get(&member.name) {
            if !held.replaced_by(&member) {
                return false;
            }
        }
        self.members.insert(member.name.clone(), member);
        true
    }

    /// True if `name` is a tombstone here.
    pub fn is_removed(&self, name: &str) -> bool {
        self.members.get(name).is_some_and(Member::is_removed)
    }

    /// The members that are not tombstones, by name.
    pub fn live_members(&self) -> impl Iterator<Item = &Member> {
        self.members.values().filter(|m| !m.is_removed())
    }

    /// The tombstones, by name.
    pub fn removed_members(&self) -> impl Iterator<Item = &Member> {
        self.members.values().filter(|m| m.is_removed())
    }

    /// Marks a member as leaving (it leaves the layout at the next commit). Marking a member
    /// that is already leaving changes nothing.
    ///
    /// # Errors
    /// [`MembershipError::UnknownMember`]; [`MembershipError::Removed`] for a tombstone.
    pub fn mark_leaving(&mut self, name: &str) -> Result<(), MembershipError> {
        let m = self
            .members
            .get(name)
            .cloned()
            .ok_or_else(|| MembershipError::UnknownMember(name.into()))?;
        match m.status {
            MemberStatus::Removed => Err(MembershipError::Removed(name.into())),
            MemberStatus::Leaving => Ok(()),
            MemberStatus::Joining | MemberStatus::Active => {
                self.upsert_member(Member {
                    status: MemberStatus::Leaving,
                    ..m
                });
                Ok(())
            }
        }
    }

    /// The layout the next commit would install, with the staged changes (role changes and
    /// replacements, see [`crate::staging`]).
    ///
    /// # Errors
    /// [`MembershipError::Layout`] if no layout fits (for instance, no members);
    /// [`StagingError::TooFewNodes`] if it would place fewer nodes than the replicas each
    /// partition has in the committed layout.
    pub fn plan(&self) -> Result<Plan, MembershipError> {
        let nodes: Vec<NodeSpec> = self
            .live_members()
            .filter(|m| m.status != MemberStatus::Leaving)
            .map(|m| self.staged.value.spec_of(m))
            .collect();
        crate::staging::check_enough_nodes(self, nodes.len())?;
        let n = LAYOUT_REPLICAS.min(nodes.len()).max(1);
        let previous = self.layout.as_ref().map(|c| &c.layout);
        let seed = crate::staging::seed(self);
        let layout = Layout::compute(&nodes, self.partitions, n as u32, seed.as_deref())?;
        let moved = previous.map_or(0, |p| crate::layout::diff(p, &layout));
        Ok(Plan {
            version: self.layout.as_ref().map_or(1, |c| c.version + 1),
            moved,
            joining: self
                .members
                .values()
                .filter(|m| m.status == MemberStatus::Joining)
                .map(|m| m.name.clone())
                .collect(),
            leaving: self
                .members
                .values()
                .filter(|m| m.status == MemberStatus::Leaving)
                .filter(|m| previous.is_some_and(|l| l.nodes().iter().any(|n| n.name == m.name)))
                .map(|m| m.name.clone())
                .collect(),
            layout,
        })
    }

    /// Installs the plan's layout as the newest version: staged role changes are written into
    /// the members and the staged changes emptied ([`crate::staging`]); joining members become active;
    /// leaving ones stay `leaving` until the transition is over (every partition they held
    /// copied to its new replicas), when [`ClusterState::advance`] turns them into tombstones.
    /// The previous version stays live meanwhile ([`crate::transition`]).
    ///
    /// # Errors
    /// As [`ClusterState::plan`]; [`MembershipError::NothingToCommit`] if the layout would
    /// not change; [`MembershipError::TooManyVersions`] if [`MAX_LIVE_LAYOUTS`] versions are
    /// live already.
    pub fn commit(&mut self) -> Result<Plan, MembershipError> {
        let plan = self.plan()?;
        if self.history.len() + 1 >= MAX_LIVE_LAYOUTS {
            return Err(MembershipError::TooManyVersions(MAX_LIVE_LAYOUTS));
        }
        if self
            .layout
            .as_ref()
            .is_some_and(|c| c.layout == plan.layout)
            && plan.joining.is_empty()
            && plan.leaving.is_empty()
            && self.staged.value.is_empty()
        {
            return Err(MembershipError::NothingToCommit);
        }
        crate::staging::apply_at_commit(self);
        for name in &plan.joining {
            let m = self.members[name].clone();
            self.upsert_member(Member {
                status: MemberStatus::Active,
                ..m
            });
        }
        let previous = self.layout.replace(CommittedLayout {
            version: plan.version,
            layout: plan.layout.clone(),
        });
        self.history.extend(previous);
        Ok(plan)
    }

    /// The replicas (node names, preference order) of partition `p`, or `None` without a
    /// layout. A removed member is left out even if the layout still names it (a layout
    /// committed concurrently with its removal, until the next commit).
    pub fn preference_list(&self, p: u32) -> Option<Vec<String>> {
        self.layout
            .as_ref()
            .filter(|c| p < c.layout.partitions())
            .map(|c| {
                c.layout
                    .replica_names(p)
                    .filter(|n| !self.is_removed(n))
                    .map(str::to_string)
                    .collect()
            })
    }

    /// The fallback order of partition `p` for sloppy quorum: every active or leaving member
    /// outside its preference list (never a joining or removed one), ordered by rendezvous hashing (XXH3-64 of the partition
    /// number and the node name, highest first), so that every node computes the same order
    /// and the hints of different partitions spread over different nodes. Dynamo walks the
    /// ring instead; with a layout table there is no ring to walk.
    pub fn fallback_list(&self, p: u32) -> Vec<String> {
        let prefs = self.preference_list(p).unwrap_or_default();
        let mut others: Vec<(u64, &String)> = self
            .members
            .values()
            .filter(|m| {
                matches!(m.status, MemberStatus::Active | MemberStatus::Leaving)
                    && !prefs.contains(&m.name)
            })
            .map(|m| {
                let mut h = xxhash_rust::xxh3::Xxh3::new();
                h.update(&p.to_be_bytes());
                h.update(m.name.as_bytes());
                (h.digest(), &m.name)
            })
            .collect();
        others.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(b.1)));
        others.into_iter().map(|(_, n)| n.clone()).collect()
    }

    /// The properties of `bucket` (the defaults if never set).
    pub fn bucket_props(&self, bucket: &[u8]) -> BucketProps {
        // An internal chunk bucket (byte 0, then the owner's name: storage's `large` module)
        // has its owner's properties, so a large value's chunks have the key's `n`.
        let bucket = match bucket.split_first() {
            Some((0, owner)) if !owner.is_empty() => owner,
            _ => bucket,
        };
        self.buckets
            .get(serde_bytes::Bytes::new(bucket))
            .map(|v| v.value)
            .unwrap_or_default()
    }

    /// Sets the properties of `bucket`.
    ///
    /// # Errors
    /// [`MembershipError::BadBucketProps`].
    pub fn set_bucket_props(
        &mut self,
        bucket: &[u8],
        props: BucketProps,
    ) -> Result<(), MembershipError> {
        props.validate()?;
        let version = self
            .buckets
            .get(serde_bytes::Bytes::new(bucket))
            .map_or(1, |v| v.version + 1);
        self.buckets.insert(
            ByteBuf::from(bucket),
            Versioned {
                version,
                value: props,
            },
        );
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A joining member `name` in `zone` (addresses `name:1`, `name:2`, capacity 1), for the
    /// cluster crate's tests.
    pub(crate) fn member(name: &str, zone: &str) -> Member {
        Member {
            name: name.into(),
            cluster_addr: format!("{name}:1"),
            client_addr: format!("{name}:2"),
            zone: zone.into(),
            capacity: 1,
            status: MemberStatus::Joining,
            version: 0,
            incarnation: 0,
            actor_addr: String::new(),
        }
    }

    #[test]
    fn join_plan_commit() {
        let mut s = ClusterState::new(64);
        for (n, z) in [("a", "z1"), ("b", "z2"), ("c", "z3")] {
            s.upsert_member(member(n, z));
        }
        let plan = s.plan().unwrap();
        assert_eq!(plan.joining.len(), 3);
        s.commit().unwrap();
        assert!(s.members.values().all(|m| m.status == MemberStatus::Active));
        for p in 0..64 {
            let prefs = s.preference_list(p).unwrap();
            assert_eq!(prefs.len(), 3);
        }
        assert_eq!(s.commit().unwrap_err(), MembershipError::NothingToCommit);
    }

    #[test]
    fn fallback_lists_are_the_other_members_deterministically_and_spread() {
        let mut s = ClusterState::new(64);
        for (i, z) in ["z1", "z2", "z3", "z4", "z5"].iter().enumerate() {
            s.upsert_member(member(&format!("n{i}"), z));
        }
        s.commit().unwrap();
        let mut first = std::collections::BTreeMap::<String, usize>::new();
        for p in 0..64 {
            let prefs = s.preference_list(p).unwrap();
            let fallbacks = s.fallback_list(p);
            assert_eq!(fallbacks.len(), 2, "5 members, 3 replicas");
            assert!(fallbacks.iter().all(|f| !prefs.contains(f)));
            assert_eq!(fallbacks, s.clone().fallback_list(p), "deterministic");
            *first.entry(fallbacks[0].clone()).or_default() += 1;
        }
        // Hints of different partitions go to different nodes.
        assert!(first.len() >= 3, "first fallbacks: {first:?}");
        // A joining member is no fallback.
        s.upsert_member(member("n9", "z9"));
        assert!((0..64).all(|p| !s.fallback_list(p).contains(&"n9".to_string())));
    }

    #[test]
    fn a_state_with_another_partition_count_is_ignored() {
        let mut ours = ClusterState::new(64);
        ours.upsert_member(member("a", "z1"));
        ours.commit().unwrap();
        let mut theirs = ClusterState::new(128);
        theirs.upsert_member(member("b", "z2"));
        theirs.commit().unwrap();
        let before = ours.clone();
        assert!(!ours.merge(&theirs));
        assert_eq!(ours, before);
        assert_eq!(
            ours.preference_list(64),
            None,
            "a partition out of range has no replicas"
        );
    }

    #[test]
    fn bucket_props_are_checked() {
        let mut s = ClusterState::new(8);
        assert!(s
            .set_bucket_props(
                b"b",
                BucketProps {
                    n: 3,
                    r: 4,
                    w: 1,
                    timeout_ms: 0,
                    sloppy_quorum: true,
                    compression: Compression::Zstd,
                    consistency: Consistency::Eventual,
                }
            )
            .is_err());
        s.set_bucket_props(
            b"b",
            BucketProps {
                n: 3,
                r: 3,
                w: 1,
                timeout_ms: 0,
                sloppy_quorum: true,
                compression: Compression::Lz4,
                consistency: Consistency::Eventual,
            },
        )
        .unwrap();
        assert_eq!(s.bucket_props(b"b").r, 3);
        assert_eq!(s.bucket_props(b"b").compression, Compression::Lz4);
        assert_eq!(s.bucket_props(b"other"), BucketProps::default());
        assert_eq!(BucketProps::default().compression, Compression::Zstd);
    }

    /// Bucket properties gossiped before `compression` existed decode with the default.
    #[test]
    fn old_bucket_props_decode_with_default_compression() {
        #[derive(Serialize)]
        struct Old {
            n: u8,
            r: u8,
            w: u8,
            timeout_ms: u64,
            sloppy_quorum: bool,
        }
        let old = rmp_serde::to_vec_named(&Old {
            n: 3,
            r: 1,
            w: 1,
            timeout_ms: 0,
            sloppy_quorum: false,
        })
        .unwrap();
        let props: BucketProps = rmp_serde::from_slice(&old).unwrap();
        assert_eq!(props.compression, Compression::Zstd);
        assert!(!props.sloppy_quorum);
        let new = rmp_serde::to_vec_named(&BucketProps {
            compression: Compression::None,
            ..props
        })
        .unwrap();
        let back: BucketProps = rmp_serde::from_slice(&new).unwrap();
        assert_eq!(back.compression, Compression::None);
        assert_eq!("lz4".parse::<Compression>().unwrap(), Compression::Lz4);
        assert!("gzip".parse::<Compression>().is_err());
    }

    fn four_active() -> ClusterState {
        let mut s = ClusterState::new(16);
        for (n, z) in [("a", "z1"), ("b", "z2"), ("c", "z3"), ("d", "z4")] {
            s.upsert_member(member(n, z));
        }
        s.commit().unwrap();
        s
    }

    #[test]
    fn a_committed_leave_leaves_a_tombstone_that_gossip_cannot_undo() {
        let mut s = four_active();
        let before_leave = s.clone();
        s.mark_leaving("d").unwrap();
        let leaving = s.clone();
        let plan = s.commit().unwrap();
        assert_eq!(plan.leaving, ["d"]);
        // d stays leaving (and a replica in the old version) until the transition is over.
        assert_eq!(s.members["d"].status, MemberStatus::Leaving);
        assert!(s.in_transition());
        let committed = s.clone();
        assert_eq!(crate::transition::finish_transition(&mut s), ["d"]);
        assert!(!s.in_transition());
        assert_eq!(s.members["d"].status, MemberStatus::Removed);
        assert!(!s.merge(&committed));
        assert!(s.is_removed("d"));
        assert_eq!(s.live_members().count(), 3);
        // Nodes that had not seen the leave, or the commit, cannot bring it back.
        assert!(!s.merge(&before_leave));
        assert!(!s.merge(&leaving));
        assert!(s.is_removed("d"));
        // Neither can the removed node re-announcing itself under its old incarnation, with
        // any version.
        let mut again = member("d", "z4");
        again.version = 1000;
        assert!(!s.upsert_member(again.clone()));
        let mut stale = before_leave.clone();
        stale.upsert_member(again);
        assert!(!s.merge(&stale));
        assert!(s.is_removed("d"));
        // Tombstones are no replicas and no fallbacks, and cannot leave twice.
        for p in 0..16 {
            assert!(!s.preference_list(p).unwrap().contains(&"d".to_string()));
            assert!(!s.fallback_list(p).contains(&"d".to_string()));
        }
        assert_eq!(
            s.mark_leaving("d").unwrap_err(),
            MembershipError::Removed("d".into())
        );
        assert_eq!(s.commit().unwrap_err(), MembershipError::NothingToCommit);
        // A fresh data directory (a later incarnation) joins again.
        let mut fresh = member("d", "z4");
        fresh.incarnation = 1;
        let mut theirs = ClusterState::new(16);
        theirs.upsert_member(fresh);
        assert!(s.merge(&theirs));
        assert_eq!(s.members["d"].status, MemberStatus::Joining);
        assert_eq!(s.commit().unwrap().joining, ["d"]);
        assert_eq!(s.members["d"].status, MemberStatus::Active);
    }

    #[test]
    fn a_layout_committed_concurrently_with_a_removal_does_not_route_to_the_tombstone() {
        let mut a = four_active();
        let mut b = a.clone();
        a.mark_leaving("d").unwrap();
        a.commit().unwrap();
        crate::transition::finish_transition(&mut a);
        // b, which has not heard of the leave, commits two layouts of its own with d in them:
        // its layout has the higher version and wins.
        b.upsert_member(member("e", "z5"));
        b.commit().unwrap();
        b.upsert_member(member("f", "z6"));
        b.commit().unwrap();
        a.merge(&b);
        b.merge(&a);
        assert_eq!(a, b);
        assert!(a.is_removed("d"));
        let layout = &a.layout.as_ref().unwrap().layout;
        assert!(layout.replicas_by_name().contains_key("d"));
        for p in 0..16 {
            assert!(!a.preference_list(p).unwrap().contains(&"d".to_string()));
            assert!(!a.fallback_list(p).contains(&"d".to_string()));
        }
        // The next plan drops d from the layout.
        let plan = a.plan().unwrap();
        assert!(!plan.layout.replicas_by_name().contains_key("d"));
    }

    #[test]
    fn states_written_before_incarnations_still_decode() {
        #[derive(Serialize)]
        struct OldMember {
            name: String,
            cluster_addr: String,
            client_addr: String,
            zone: String,
            capacity: u32,
            status: MemberStatus,
            version: u64,
        }
        let old = OldMember {
            name: "a".into(),
            cluster_addr: "a:1".into(),
            client_addr: "a:2".into(),
            zone: "z1".into(),
            capacity: 1,
            status: MemberStatus::Active,
            version: 3,
        };
        let bytes = rmp_serde::to_vec_named(&old).unwrap();
        let m: Member = rmp_serde::from_slice(&bytes).unwrap();
        assert_eq!(m.incarnation, 0);
        assert_eq!(m.version, 3);
    }

    /// Random updates applied at three nodes, with random gossip between them.
    #[derive(Clone, Debug)]
    enum Op {
        /// Member `n{who}` of incarnation 0 joins, or re-announces itself, at a node.
        Join(usize, u8),
        /// Member `n{who}` starts again with a fresh data directory of incarnation `inc`.
        Rejoin(usize, u8, u64),
        /// `cluster leave n{who}` at a node.
        Leave(usize, u8),
        Bucket(usize, u8),
        Commit(usize),
        /// Every member known at a node finishes its part of the transition there.
        Advance(usize),
        Gossip(usize, usize),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => (0..3usize, 0..5u8).prop_map(|(a, b)| Op::Join(a, b)),
            1 => (0..3usize, 0..5u8, 1..4u64).prop_map(|(a, b, i)| Op::Rejoin(a, b, i)),
            2 => (0..3usize, 0..5u8).prop_map(|(a, b)| Op::Leave(a, b)),
            1 => (0..3usize, 1..4u8).prop_map(|(a, b)| Op::Bucket(a, b)),
            2 => (0..3usize).prop_map(Op::Commit),
            2 => (0..3usize).prop_map(Op::Advance),
            4 => (0..3usize, 0..3usize).prop_map(|(a, b)| Op::Gossip(a, b)),
        ]
    }

    /// `(name, incarnation)` of the members a commit removed, as far as a node can know:
    /// its own commits and those of the nodes it merged, directly or not.
    type Seen = std::collections::BTreeSet<(String, u64)>;

    /// Checks that no removal a node knows of is undone there: its entry for that name is
    /// absent, the tombstone, or of a later incarnation.
    fn check_never_back(s: &ClusterState, seen: &Seen) -> Result<(), TestCaseError> {
        for (name, inc) in seen {
            if let Some(m) = s.members.get(name) {
                prop_assert!(
                    m.incarnation > *inc || (m.incarnation == *inc && m.is_removed()),
                    "removed {name}/{inc} came back as {m:?}"
                );
            }
        }
        Ok(())
    }

    fn run(ops: &[Op]) -> Result<(Vec<ClusterState>, Vec<Seen>), TestCaseError> {
        let mut s = vec![ClusterState::new(16); 3];
        let mut seen = vec![Seen::new(); 3];
        for o in ops {
            let at = match *o {
                Op::Join(at, who) => {
                    s[at].upsert_member(member(&format!("n{who}"), &format!("z{who}")));
                    at
                }
                Op::Rejoin(at, who, inc) => {
                    let mut m = member(&format!("n{who}"), &format!("z{who}"));
                    m.incarnation = inc;
                    s[at].upsert_member(m);
                    at
                }
                Op::Leave(at, who) => {
                    let _ = s[at].mark_leaving(&format!("n{who}"));
                    at
                }
                Op::Bucket(at, r) => {
                    let _ = s[at].set_bucket_props(
                        b"b",
                        BucketProps {
                            n: 3,
                            r,
                            w: 2,
                            timeout_ms: 0,
                            sloppy_quorum: true,
                            compression: Compression::Zstd,
                            consistency: Consistency::Eventual,
                        },
                    );
                    at
                }
                Op::Commit(at) => {
                    let _ = s[at].commit();
                    at
                }
                Op::Advance(at) => {
                    let before = s[at].clone();
                    let left = crate::transition::finish_transition(&mut s[at]);
                    seen[at].extend(
                        left.iter()
                            .map(|n| (n.clone(), before.members[n].incarnation)),
                    );
                    at
                }
                Op::Gossip(from, to) => {
                    let src = s[from].clone();
                    s[to].merge(&src);
                    let known = seen[from].clone();
                    seen[to].extend(known);
                    to
                }
            };
            check_never_back(&s[at], &seen[at])?;
            for p in 0..16 {
                for n in s[at].preference_list(p).into_iter().flatten() {
                    prop_assert!(!s[at].is_removed(&n), "{n} is a replica of {p}");
                }
                for n in s[at].fallback_list(p) {
                    prop_assert!(!s[at].is_removed(&n), "{n} is a fallback of {p}");
                }
            }
        }
        Ok((s, seen))
    }

    proptest! {
        #[test]
        fn merge_is_commutative_associative_idempotent(ops in prop::collection::vec(op(), 0..40)) {
            let (s, _) = run(&ops)?;
            let mut ab = s[0].clone(); ab.merge(&s[1]);
            let mut ba = s[1].clone(); ba.merge(&s[0]);
            prop_assert_eq!(&ab, &ba);
            let mut ab_c = ab.clone(); ab_c.merge(&s[2]);
            let mut bc = s[1].clone(); bc.merge(&s[2]);
            let mut a_bc = s[0].clone(); a_bc.merge(&bc);
            prop_assert_eq!(&ab_c, &a_bc);
            let mut again = ab.clone();
            prop_assert!(!again.merge(&s[1]));
            prop_assert_eq!(&again, &ab);
        }

        #[test]
        fn gossip_converges_and_removed_members_stay_removed(
            ops in prop::collection::vec(op(), 0..40),
            order in Just(vec![(0usize, 1usize), (1, 2), (2, 0), (1, 0), (2, 1), (0, 2)]).prop_shuffle(),
        ) {
            let (mut s, mut seen) = run(&ops)?;
            // Gossip over every link, in a random order, makes every node equal (one round
            // would do, as each node hears from each other directly; the second changes
            // nothing).
            for _ in 0..2 {
                for &(from, to) in &order {
                    let src = s[from].clone();
                    s[to].merge(&src);
                    let known = seen[from].clone();
                    seen[to].extend(known);
                    check_never_back(&s[to], &seen[to])?;
                }
            }
            prop_assert_eq!(&s[0], &s[1]);
            prop_assert_eq!(&s[1], &s[2]);
            // Every removal committed anywhere is in force everywhere, as a tombstone.
            let all: Seen = seen.into_iter().flatten().collect();
            for node in &s {
                check_never_back(node, &all)?;
                for (name, inc) in &all {
                    let m = &node.members[name];
                    prop_assert!(m.incarnation > *inc || m.is_removed(), "{:?}", m);
                }
            }
        }
    }
}
