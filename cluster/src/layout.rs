//! Partition layout: the preference list (N distinct nodes, primary first) of each of the Q
//! partitions.
//!
//! [`Layout::compute`] is a pure, deterministic function of the node list (in any order), Q, N
//! and optionally the previous layout. It meets, in this order of priority:
//!
//! 1. **Distinct nodes**: the N replicas of a partition are N distinct nodes. Never relaxed.
//! 2. **Zones**: a partition holds at most `L` replicas in one zone, where `L` is the smallest
//!    level such that `sum over zones of min(nodes in zone, L) >= N`; with at least N zones
//!    `L = 1`, so the replicas sit in N distinct zones. With fewer zones than N every partition
//!    has a replica in every zone (Garage's "maximum zone redundancy"): for N = 3 and two zones
//!    that is a 2 + 1 split.
//! 3. **Capacity**: node i holds close to `Q*N*capacity_i/sum(capacity)` replicas. A node holds
//!    at most one replica per partition (at most Q) and a zone at most `L*Q`; a zone also holds
//!    at least Q when there are fewer zones than N. Shares that hit a bound are clamped there
//!    and the rest is spread over the others in proportion to capacity (water-filling, as
//!    Garage and Riak do). The real-valued result is [`NodeLoad::target`]; each node gets its
//!    floor or ceiling (largest remainder), so `|replicas - target| < 2` (unless step 5's last
//!    resort was needed, which no test has produced).
//! 4. **Minimal movement**: given the previous layout, every assignment that still fits (node
//!    present, zone rule met, node under its new quota) is kept in place, and only the excess
//!    moves. Adding a node moves about the new node's share; removing one moves its replicas,
//!    plus what the zone rule forces when a zone sits at a bound (for instance a zone that
//!    holds a replica of every partition and must now give some up).
//!
//! # Algorithm
//!
//! The Q partitions are equal arcs of the hash ring: Dynamo's "strategy 3" (Q equal-sized
//! partitions, tokens assigned to nodes), which Riak's ring also uses. The assignment of
//! partitions to nodes follows Riak's claim in spirit (a target per node, keep what fits, move
//! the excess) and Garage's layout (zones and capacities as hard constraints, then minimal
//! movement), with greedy steps repaired by local augmenting paths instead of Garage's
//! max-flow, so that 10,000 nodes and Q = 65536 take well under a second:
//!
//! 1. **Quotas.** Zone totals, then node quotas inside each zone, by water-filling
//!    (bisection on the share per unit of capacity) and largest-remainder rounding. Rounding
//!    prefers the node's previous count, so a recomputation keeps the same quotas.
//! 2. **Keep.** Each partition keeps its previous replicas, in order, while they are present,
//!    distinct and meet the zone rule.
//! 3. **Drop.** A zone above its quota gives up replicas, of its over-quota nodes first, in
//!    partitions where a zone below quota may take the slot, which is then promised to that
//!    zone (the zone with the fewest such partitions per replica to shed goes first). When no
//!    such partition is left it takes over a slot promised to another zone's drop, which drops
//!    elsewhere instead (an augmenting path, no extra movement); failing that, it drops through
//!    a chain of zones (one extra move per link). A zone whose remaining quota exceeds the free
//!    slots it may take (after nodes left) takes slots in full partitions from zones with free
//!    slots to spare. Then each node still over quota drops the replicas of lowest
//!    `xxh3(name, partition)`, preferring partitions without a free slot; the slot is promised
//!    to its own zone. With fewer zones than N a zone never gives up its last replica of a
//!    partition.
//! 4. **Fill.** Promised slots first, then partition by partition. A node that held the
//!    partition before and may come back does; else a node, then a zone, whose deficit equals
//!    the open partitions (with a free slot) it could still enter goes there now; else the zone
//!    with the least such slack, among the first eight that fit, after a jitter of up to two
//!    replicas from `xxh3(partition, zone)` so that zones of equal needs mix instead of always
//!    pairing up; inside it, the node with the least slack. In a fresh layout this is "largest
//!    remaining deficit first", which cannot get stuck at the zone level (a zone needing at
//!    most Q replicas never needs more than the partitions left). Ties between nodes are
//!    broken by `xxh3(name, partition the node last received)`: reproducible, and redrawn at
//!    each placement, so that replica sets vary instead of following a fixed round robin.
//! 5. **Repair.** A slot no candidate can fill is filled by (a) a swap: a replica placed
//!    elsewhere in this computation moves into it and a node with a deficit takes its place
//!    (no extra movement; an old replica if need be, one extra move); else (b) the shortest
//!    augmenting path: `u1` moves into the slot from partition `p1`, `u2` into the slot `u1`
//!    left, ..., and a node with a deficit takes the last one (breadth-first, one extra move per
//!    link); else (c) a rotation through the partition itself; as a last resort (d) the node
//!    least over its quota that meets the zone rule takes it: quotas bend, distinctness never.
//! 6. **Primaries.** A partition keeps its previous primary if still a replica; otherwise the
//!    replica furthest below `replicas / N` primaries, relative to that share, becomes primary,
//!    ties by `xxh3(name, partition)`; then a few passes hand a primary to another replica of
//!    the same partition while that lowers the larger of their primaries/replicas ratios. A
//!    kept primary is handed over only while its node leads more than `ceil(replicas / N)`
//!    partitions (a cluster grown from its founder, which led them all, spreads them).
//!
//! Determinism: nodes are sorted by name, zones by name, every tie is broken by an index or a
//! seeded XXH3-64 (xxHash's frozen specification); no randomness and no hash-map iteration.
//!
//! If the previous layout has another Q (both are powers of two), new partition `p` is matched
//! with the old partition holding its first key, so that doubling Q keeps data in place.

use std::cmp::Reverse;
use std::collections::{BTreeSet, VecDeque};

use serde::{Deserialize, Serialize};
use thiserror::Error;
use xxhash_rust::xxh3::{xxh3_64, xxh3_64_with_seed};

use crate::ring::MAX_PARTITIONS;

/// Index of a node in [`Layout::nodes`] (nodes sorted by name).
pub type NodeIndex = u32;

/// Fill-queue key of a node: (urgency, tie-break hash, node), most urgent first.
type NodeKey = (Reverse<u32>, u64, u32);

/// Seed of the hash that fixes the order partitions are visited in when dropping or repairing.
const ORDER_SEED: u64 = 0x6c61_796f_7574;

/// Number of nodes with a deficit tried as the incoming side of a repair swap.
const REPAIR_CANDIDATES: usize = 16;

/// Node checks an augmenting-path repair may spend (step 5).
const AUGMENT_BUDGET: usize = 1 << 22;

/// Passes of primary hand-overs that even out primaries (step 6).
const PRIMARY_PASSES: usize = 4;

/// Zones, among those that fit, whose urgencies are compared (with jitter) per pick.
const MIX_ZONES: usize = 8;

/// Zone checks spent on chains of drops between zones (step 3), per slot (Q*N slots).
const CHAIN_BUDGET_PER_SLOT: usize = 32;

/// What the layout needs to know about one node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeSpec {
    /// Node name: unique in the cluster and stable across restarts (its identity).
    pub name: String,
    /// Failure domain (rack, availability zone). Replicas of a partition go to distinct zones
    /// when there are at least N zones.
    pub zone: String,
    /// Relative weight, at least 1: a node of capacity 4 holds about twice the replicas of one
    /// of capacity 2.
    pub capacity: u32,
}

impl NodeSpec {
    /// A node named `name` in `zone` with relative `capacity` (at least 1).
    pub fn new(name: impl Into<String>, zone: impl Into<String>, capacity: u32) -> Self {
        Self {
            name: name.into(),
            zone: zone.into(),
            capacity,
        }
    }
}

/// Inputs that no layout can satisfy, or a stored layout that is inconsistent.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum LayoutError {
    /// The replication factor N is 0.
    #[error("the replication factor N must be at least 1, not 0")]
    ZeroReplication,
    /// Q is not a power of two in `1..=MAX_PARTITIONS`.
    #[error("the partition count Q must be a power of two from 1 to {max}, not {got}")]
    Partitions {
        /// Q given.
        got: u32,
        /// Largest Q allowed ([`MAX_PARTITIONS`]).
        max: u32,
    },
    /// Fewer nodes than N: a partition cannot have N distinct replicas.
    #[error("{nodes} nodes cannot hold {replication} distinct replicas of a partition: at least {replication} nodes are needed")]
    TooFewNodes {
        /// Nodes given.
        nodes: usize,
        /// N asked for.
        replication: u32,
    },
    /// A node has capacity 0.
    #[error("node {name:?} has capacity 0; capacities are relative weights of at least 1")]
    ZeroCapacity {
        /// The node's name.
        name: String,
    },
    /// Two or more nodes share a name.
    #[error("node name {name:?} is given {count} times; node names must be unique")]
    DuplicateNode {
        /// The repeated name.
        name: String,
        /// How many nodes carry it.
        count: usize,
    },
    /// A deserialized layout does not hold together.
    #[error("inconsistent layout: {reason}")]
    Corrupt {
        /// What is wrong.
        reason: String,
    },
}

/// The preference lists of all partitions.
///
/// Holds the nodes (sorted by name) and, for each partition `p` in `0..Q`, N distinct node
/// indexes, primary first: [`Layout::replicas`] is a slice of a flat `Q*N` array. Serializes
/// with serde; deserialization checks the shape (Q a power of two, `Q*N` entries, indexes in
/// range, distinct replicas, sorted unique names) and fails with [`LayoutError::Corrupt`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "RawLayout")]
pub struct Layout {
    partitions: u32,
    replication: u32,
    nodes: Vec<NodeSpec>,
    replicas: Vec<NodeIndex>,
}

/// [`Layout`] as read, before its checks.
#[derive(Deserialize)]
struct RawLayout {
    partitions: u32,
    replication: u32,
    nodes: Vec<NodeSpec>,
    replicas: Vec<NodeIndex>,
}

impl TryFrom<RawLayout> for Layout {
    type Error = LayoutError;

    fn try_from(raw: RawLayout) -> Result<Self, LayoutError> {
        validate(&raw.nodes, raw.partitions, raw.replication)?;
        let corrupt = |reason: String| Err(LayoutError::Corrupt { reason });
        if raw.nodes.windows(2).any(|w| w[0].name >= w[1].name) {
            return corrupt("nodes are not sorted by name".into());
        }
        let n = raw.replication as usize;
        let expected = raw.partitions as usize * n;
        if raw.replicas.len() != expected {
            return corrupt(format!(
                "{} replica entries, expected Q*N = {expected}",
                raw.replicas.len()
            ));
        }
        for (p, set) in raw.replicas.chunks(n).enumerate() {
            if let Some(&i) = set.iter().find(|&&i| i as usize >= raw.nodes.len()) {
                return corrupt(format!(
                    "partition {p} names node index {i} of {} nodes",
                    raw.nodes.len()
                ));
            }
            if (1..n).any(|k| set[..k].contains(&set[k])) {
                return corrupt(format!("partition {p} holds a node twice"));
            }
        }
        Ok(Layout {
            partitions: raw.partitions,
            replication: raw.replication,
            nodes: raw.nodes,
            replicas: raw.replicas,
        })
    }
}

/// Load of one node in a layout, as returned by [`Layout::loads`].
#[derive(Clone, Debug, PartialEq)]
pub struct NodeLoad {
    /// Node name.
    pub name: String,
    /// Node zone.
    pub zone: String,
    /// Node capacity (relative weight).
    pub capacity: u32,
    /// Replicas held: partitions whose preference list names the node.
    pub replicas: u32,
    /// Partitions whose primary (first replica) is the node.
    pub primaries: u32,
    /// Unconstrained fair share, replicas: `Q*N*capacity/sum(capacity)`.
    pub fair_share: f64,
    /// Fair share once the bounds are applied (at most Q per node, the zone bounds of the
    /// module docs) and the excess spread in proportion to capacity, replicas. Equals
    /// `fair_share` when no bound binds. The layout gives each node its floor or ceiling
    /// (up to rounding of the zone totals): `|replicas - target| < 2`.
    pub target: f64,
}

impl NodeLoad {
    /// `replicas / fair_share`: 1.0 is exact proportionality.
    pub fn ratio(&self) -> f64 {
        f64::from(self.replicas) / self.fair_share
    }
}

impl Layout {
    /// Assign each of `partitions` (Q) partitions `replication` (N) distinct nodes among
    /// `nodes`, moving as little as possible from `previous` if given. `nodes` may come in any
    /// order; the result depends only on their set. See the module docs for the rules and the
    /// algorithm. Runs in about `O(Q*N*(log nodes + N))` plus `O(nodes)` per bisection step.
    ///
    /// # Errors
    ///
    /// [`LayoutError::ZeroReplication`], [`LayoutError::Partitions`] (Q not a power of two in
    /// `1..=65536`), [`LayoutError::ZeroCapacity`], [`LayoutError::DuplicateNode`],
    /// [`LayoutError::TooFewNodes`] (fewer nodes than N).
    pub fn compute(
        nodes: &[NodeSpec],
        partitions: u32,
        replication: u32,
        previous: Option<&Layout>,
    ) -> Result<Layout, LayoutError> {
        validate(nodes, partitions, replication)?;
        let problem = Problem::new(nodes, partitions, replication);
        let prev = previous.map(|old| Prev::new(old, &problem));
        let mut state = State::new(&problem, prev);
        state.keep();
        state.drop_excess();
        state.fill();
        state.choose_primaries();
        Ok(state.into_layout())
    }

    /// Number of partitions Q.
    pub fn partitions(&self) -> u32 {
        self.partitions
    }

    /// Replication factor N: the length of every preference list.
    pub fn replication(&self) -> u32 {
        self.replication
    }

    /// The nodes, sorted by name; [`NodeIndex`] indexes this slice.
    pub fn nodes(&self) -> &[NodeSpec] {
        &self.nodes
    }

    /// The node at `index`.
    ///
    /// # Panics
    ///
    /// If `index >= self.nodes().len()`.
    pub fn node(&self, index: NodeIndex) -> &NodeSpec {
        &self.nodes[index as usize]
    }

    /// Index of the node named `name`, if it is in the layout (binary search).
    pub fn index_of(&self, name: &str) -> Option<NodeIndex> {
        self.nodes
            .binary_search_by(|node| node.name.as_str().cmp(name))
            .ok()
            .map(|i| i as NodeIndex)
    }

    /// Preference list of `partition`: N distinct node indexes, primary first.
    ///
    /// # Panics
    ///
    /// If `partition >= Q`.
    pub fn replicas(&self, partition: u32) -> &[NodeIndex] {
        let n = self.replication as usize;
        let start = partition as usize * n;
        &self.replicas[start..start + n]
    }

    /// Names of the preference list of `partition`, primary first.
    ///
    /// # Panics
    ///
    /// If `partition >= Q`.
    pub fn replica_names(&self, partition: u32) -> impl Iterator<Item = &str> + '_ {
        self.replicas(partition)
            .iter()
            .map(|&i| self.nodes[i as usize].name.as_str())
    }

    /// Partitions whose preference list includes the node at `index`, ascending.
    pub fn partitions_of(&self, index: NodeIndex) -> Vec<u32> {
        (0..self.partitions)
            .filter(|&p| self.replicas(p).contains(&index))
            .collect()
    }

    /// Replicas held by each node, by node name (one pass over the layout).
    pub fn replicas_by_name(&self) -> std::collections::BTreeMap<String, u32> {
        let mut counts = vec![0u32; self.nodes.len()];
        for &i in &self.replicas {
            counts[i as usize] += 1;
        }
        self.nodes
            .iter()
            .zip(counts)
            .map(|(n, c)| (n.name.clone(), c))
            .collect()
    }

    /// Per-node load summary, in node order: replicas, primaries, fair share and target.
    pub fn loads(&self) -> Vec<NodeLoad> {
        let problem = Problem::new(&self.nodes, self.partitions, self.replication);
        let (_, targets) = problem.targets();
        let mut replicas = vec![0u32; self.nodes.len()];
        let mut primaries = vec![0u32; self.nodes.len()];
        for p in 0..self.partitions {
            let set = self.replicas(p);
            primaries[set[0] as usize] += 1;
            for &i in set {
                replicas[i as usize] += 1;
            }
        }
        let total_capacity: f64 = self.nodes.iter().map(|n| f64::from(n.capacity)).sum();
        let slots = f64::from(self.partitions) * f64::from(self.replication);
        self.nodes
            .iter()
            .enumerate()
            .map(|(i, node)| NodeLoad {
                name: node.name.clone(),
                zone: node.zone.clone(),
                capacity: node.capacity,
                replicas: replicas[i],
                primaries: primaries[i],
                fair_share: slots * f64::from(node.capacity) / total_capacity,
                target: targets[i],
            })
            .collect()
    }

    /// This layout with node `old` renamed `new`: every replica `old` held, `new` holds, in
    /// the same position of the same preference list; `new` keeps `old`'s zone and capacity.
    /// Nodes stay sorted by name (indexes are renumbered). As the `previous` layout of
    /// [`Layout::compute`] it makes `new` take exactly `old`'s slots (a replacement with the
    /// fewest moves).
    ///
    /// `None` if `old` is not in the layout or `new` already is.
    pub fn renamed(&self, old: &str, new: &str) -> Option<Layout> {
        let from = self.index_of(old)?;
        if self.index_of(new).is_some() {
            return None;
        }
        let mut nodes = self.nodes.clone();
        nodes[from as usize].name = new.to_string();
        let mut order: Vec<NodeIndex> = (0..nodes.len() as NodeIndex).collect();
        order.sort_by(|&a, &b| nodes[a as usize].name.cmp(&nodes[b as usize].name));
        let mut to_new = vec![0; nodes.len()];
        for (position, &i) in order.iter().enumerate() {
            to_new[i as usize] = position as NodeIndex;
        }
        Some(Layout {
            partitions: self.partitions,
            replication: self.replication,
            nodes: order.iter().map(|&i| nodes[i as usize].clone()).collect(),
            replicas: self.replicas.iter().map(|&i| to_new[i as usize]).collect(),
        })
    }

    /// Number of partitions that break the zone rule of the module docs (0 for any layout this
    /// module computes from satisfiable inputs).
    pub fn zone_violations(&self) -> usize {
        let problem = Problem::new(&self.nodes, self.partitions, self.replication);
        (0..self.partitions)
            .filter(|&p| !problem.zones_ok(self.replicas(p)))
            .count()
    }
}

/// Replicas moved from `old` to `new`: the number of (partition, node) pairs of `new` whose node
/// did not hold that partition in `old` (nodes matched by name). A reordering inside a
/// preference list (a new primary) moves no data and counts 0. If Q differs, partition `p` of
/// `new` is compared with the old partition holding its first key.
pub fn diff(old: &Layout, new: &Layout) -> usize {
    let to_new: Vec<Option<NodeIndex>> = old.nodes.iter().map(|n| new.index_of(&n.name)).collect();
    (0..new.partitions)
        .map(|p| {
            let before = old.replicas(map_partition(p, new.partitions, old.partitions));
            new.replicas(p)
                .iter()
                .filter(|&&i| !before.iter().any(|&o| to_new[o as usize] == Some(i)))
                .count()
        })
        .sum()
}

/// Partition of a ring of `to_q` partitions that holds the first key of partition `p` of a
/// ring of `from_q` partitions (both powers of two).
pub(crate) fn map_partition(p: u32, from_q: u32, to_q: u32) -> u32 {
    let (from_bits, to_bits) = (from_q.trailing_zeros(), to_q.trailing_zeros());
    if to_bits >= from_bits {
        p << (to_bits - from_bits)
    } else {
        p >> (from_bits - to_bits)
    }
}

/// Checks every input rule of [`Layout::compute`].
fn validate(nodes: &[NodeSpec], partitions: u32, replication: u32) -> Result<(), LayoutError> {
    if replication == 0 {
        return Err(LayoutError::ZeroReplication);
    }
    if !partitions.is_power_of_two() || partitions > MAX_PARTITIONS {
        return Err(LayoutError::Partitions {
            got: partitions,
            max: MAX_PARTITIONS,
        });
    }
    if let Some(node) = nodes.iter().find(|n| n.capacity == 0) {
        return Err(LayoutError::ZeroCapacity {
            name: node.name.clone(),
        });
    }
    let mut names: Vec<&str> = nodes.iter().map(|n| n.name.as_str()).collect();
    names.sort_unstable();
    if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
        let count = names.iter().filter(|&&n| n == w[0]).count();
        return Err(LayoutError::DuplicateNode {
            name: w[0].to_string(),
            count,
        });
    }
    if nodes.len() < replication as usize {
        return Err(LayoutError::TooFewNodes {
            nodes: nodes.len(),
            replication,
        });
    }
    Ok(())
}

/// The tie-break hash of (node name, partition).
fn node_hash(name: &str, partition: u32) -> u64 {
    xxh3_64_with_seed(name.as_bytes(), u64::from(partition))
}

/// Nodes, zones and the zone rule, with indexes fixed by sorting names.
struct Problem {
    q: usize,
    n: usize,
    nodes: Vec<NodeSpec>,
    zone_of: Vec<u32>,
    zone_members: Vec<Vec<u32>>,
    /// Most replicas of one partition in one zone (`L` in the module docs).
    per_zone: usize,
    /// Fewer zones than N: every partition has a replica in every zone.
    all_zones: bool,
}

impl Problem {
    /// `nodes` must pass [`validate`].
    fn new(nodes: &[NodeSpec], partitions: u32, replication: u32) -> Self {
        let mut nodes = nodes.to_vec();
        nodes.sort_by(|a, b| a.name.cmp(&b.name));
        let mut zones: Vec<&str> = nodes.iter().map(|n| n.zone.as_str()).collect();
        zones.sort_unstable();
        zones.dedup();
        let zone_of: Vec<u32> = nodes
            .iter()
            .map(|n| zones.binary_search(&n.zone.as_str()).unwrap_or(0) as u32)
            .collect();
        let mut zone_members = vec![Vec::new(); zones.len()];
        for (i, &z) in zone_of.iter().enumerate() {
            zone_members[z as usize].push(i as u32);
        }
        let n = replication as usize;
        let mut per_zone = 1;
        while zone_members
            .iter()
            .map(|m| m.len().min(per_zone))
            .sum::<usize>()
            < n
        {
            per_zone += 1;
        }
        Problem {
            q: partitions as usize,
            n,
            all_zones: zone_members.len() < n,
            nodes,
            zone_of,
            zone_members,
            per_zone,
        }
    }

    fn zones(&self) -> usize {
        self.zone_members.len()
    }

    /// Bounds on the replicas a zone holds in total: `[Q, L*Q]` with fewer zones than N,
    /// `[0, Q]` otherwise, and never above Q per member node.
    fn zone_bounds(&self, z: usize) -> (u64, u64) {
        let q = self.q as u64;
        let lo = if self.all_zones { q } else { 0 };
        let hi = self.per_zone.min(self.zone_members[z].len()) as u64 * q;
        (lo, hi)
    }

    /// Whether a replica in zone `z` may join the partial preference list `set` (without its
    /// entry at `skip`; `usize::MAX` skips nothing).
    fn zone_fits(&self, set: &[u32], skip: usize, z: u32) -> bool {
        self.zone_fits_with(set, skip, &[], z)
    }

    /// [`Problem::zone_fits`] where the zones in `pending` hold slots promised to them.
    fn zone_fits_with(&self, set: &[u32], skip: usize, pending: &[u32], z: u32) -> bool {
        let zones = set
            .iter()
            .enumerate()
            .filter(|&(k, _)| k != skip)
            .map(|(_, &m)| self.zone_of[m as usize])
            .chain(pending.iter().copied());
        let len = zones.clone().count();
        let same = zones.clone().filter(|&y| y == z).count();
        if len >= self.n || same >= self.per_zone {
            return false;
        }
        if self.all_zones {
            let mut seen: Vec<u32> = zones.chain(std::iter::once(z)).collect();
            seen.sort_unstable();
            seen.dedup();
            let missing = self.zones() - seen.len();
            let free_after = self.n - len - 1;
            if missing > free_after {
                return false;
            }
        }
        true
    }

    /// Whether node `i` may join `set` (without its entry at `skip`): distinct and zone rule.
    fn fits(&self, set: &[u32], skip: usize, i: u32) -> bool {
        set.iter().enumerate().all(|(k, &m)| k == skip || m != i)
            && self.zone_fits(set, skip, self.zone_of[i as usize])
    }

    /// Whether a complete preference list meets the zone rule.
    fn zones_ok(&self, set: &[u32]) -> bool {
        let mut zones: Vec<u32> = set.iter().map(|&m| self.zone_of[m as usize]).collect();
        zones.sort_unstable();
        let over = zones
            .chunk_by(|a, b| a == b)
            .any(|run| run.len() > self.per_zone);
        zones.dedup();
        !over && (!self.all_zones || zones.len() == self.zones())
    }

    /// Real-valued targets: replicas per zone, and per node (node order).
    fn targets(&self) -> (Vec<f64>, Vec<f64>) {
        let q = self.q as f64;
        let slots = (self.q * self.n) as f64;
        let cap = |i: u32| f64::from(self.nodes[i as usize].capacity);
        let bounds: Vec<(f64, f64)> = (0..self.zones())
            .map(|z| {
                let (lo, hi) = self.zone_bounds(z);
                (lo as f64, hi as f64)
            })
            .collect();
        let natural = |z: usize, level: f64| -> f64 {
            self.zone_members[z]
                .iter()
                .map(|&i| (level * cap(i)).min(q))
                .sum()
        };
        let clamped = |z: usize, level: f64| natural(z, level).clamp(bounds[z].0, bounds[z].1);
        let min_cap = self.nodes.iter().map(|n| n.capacity).min().unwrap_or(1);
        let level = bisect(q / f64::from(min_cap), slots, |level| {
            (0..self.zones()).map(|z| clamped(z, level)).sum()
        });
        let zone_targets: Vec<f64> = (0..self.zones()).map(|z| clamped(z, level)).collect();
        let mut node_targets = vec![0.0; self.nodes.len()];
        for (z, &total) in zone_targets.iter().enumerate() {
            for (i, t) in self.spread(z, total) {
                node_targets[i as usize] = t;
            }
        }
        (zone_targets, node_targets)
    }

    /// Split `total` replicas among the nodes of zone `z` in proportion to capacity, at most Q
    /// each: `(node, share)` in member order.
    fn spread(&self, z: usize, total: f64) -> Vec<(u32, f64)> {
        let q = self.q as f64;
        let members = &self.zone_members[z];
        let cap = |i: u32| f64::from(self.nodes[i as usize].capacity);
        let min_cap = members
            .iter()
            .map(|&i| cap(i))
            .fold(f64::INFINITY, f64::min);
        let level = bisect(q / min_cap, total, |level| {
            members.iter().map(|&i| (level * cap(i)).min(q)).sum()
        });
        members
            .iter()
            .map(|&i| (i, (level * cap(i)).min(q)))
            .collect()
    }

    /// Integer quotas `(per node, per zone)` summing to `Q*N`, each the floor or ceiling of
    /// its real share; rounding prefers `previous` counts (per node) when given.
    fn quotas(&self, previous: Option<&[u32]>) -> (Vec<u32>, Vec<u32>) {
        let (zone_targets, _) = self.targets();
        let (lo, hi): (Vec<u64>, Vec<u64>) = (0..self.zones()).map(|z| self.zone_bounds(z)).unzip();
        let prev_zone: Option<Vec<u64>> = previous.map(|counts| {
            self.zone_members
                .iter()
                .map(|m| m.iter().map(|&i| u64::from(counts[i as usize])).sum())
                .collect()
        });
        let zone_quota = round_shares(
            &zone_targets,
            (self.q * self.n) as u64,
            &lo,
            &hi,
            prev_zone.as_deref(),
        );
        let mut node_quota = vec![0u32; self.nodes.len()];
        for (z, &total) in zone_quota.iter().enumerate() {
            let shares = self.spread(z, total as f64);
            let reals: Vec<f64> = shares.iter().map(|&(_, s)| s).collect();
            let zeros = vec![0u64; reals.len()];
            let caps = vec![self.q as u64; reals.len()];
            let prev: Option<Vec<u64>> = previous.map(|counts| {
                shares
                    .iter()
                    .map(|&(i, _)| u64::from(counts[i as usize]))
                    .collect()
            });
            let ints = round_shares(&reals, total, &zeros, &caps, prev.as_deref());
            for (&(i, _), &v) in shares.iter().zip(&ints) {
                node_quota[i as usize] = v as u32;
            }
        }
        (node_quota, zone_quota.iter().map(|&v| v as u32).collect())
    }
}

/// The smallest `x` in `[0, high]` with `f(x) >= goal`, for `f` non-decreasing, to f64
/// precision (`high` if none).
fn bisect(high: f64, goal: f64, f: impl Fn(f64) -> f64) -> f64 {
    let (mut lo, mut hi) = (0.0, high);
    for _ in 0..100 {
        let mid = 0.5 * (lo + hi);
        if mid <= lo || mid >= hi {
            break;
        }
        if f(mid) < goal {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    hi
}

/// Round `reals` to integers within `[lo, hi]` summing to `total`: floors first, then one more
/// to the largest remainders (or one less to the smallest). Entries whose `previous` count
/// already has the extra unit (or lacks it) go first, so that a recomputation keeps its counts.
fn round_shares(
    reals: &[f64],
    total: u64,
    lo: &[u64],
    hi: &[u64],
    previous: Option<&[u64]>,
) -> Vec<u64> {
    let mut ints: Vec<u64> = reals
        .iter()
        .enumerate()
        .map(|(k, &r)| (r.max(0.0).floor() as u64).clamp(lo[k], hi[k]))
        .collect();
    loop {
        let sum: u64 = ints.iter().sum();
        if sum == total {
            break;
        }
        let up = sum < total;
        let mut candidates: Vec<usize> = (0..ints.len())
            .filter(|&k| if up { ints[k] < hi[k] } else { ints[k] > lo[k] })
            .collect();
        if candidates.is_empty() {
            break;
        }
        let wants = |k: usize| -> bool {
            previous.is_some_and(|prev| {
                if up {
                    prev[k] > ints[k]
                } else {
                    prev[k] < ints[k]
                }
            })
        };
        let remainder = |k: usize| reals[k] - ints[k] as f64;
        candidates.sort_by(|&a, &b| {
            wants(b).cmp(&wants(a)).then_with(|| {
                let order = remainder(b).total_cmp(&remainder(a));
                if up { order } else { order.reverse() }.then(a.cmp(&b))
            })
        });
        let gap = if up { total - sum } else { sum - total } as usize;
        for &k in candidates.iter().take(gap) {
            if up {
                ints[k] += 1;
            } else {
                ints[k] -= 1;
            }
        }
    }
    ints
}

/// The previous layout seen through the new node indexes.
struct Prev<'a> {
    layout: &'a Layout,
    to_new: Vec<Option<u32>>,
    q: u32,
}

impl<'a> Prev<'a> {
    fn new(layout: &'a Layout, problem: &Problem) -> Self {
        let to_new = layout
            .nodes
            .iter()
            .map(|old| {
                problem
                    .nodes
                    .binary_search_by(|n| n.name.cmp(&old.name))
                    .ok()
                    .map(|i| i as u32)
            })
            .collect();
        Prev {
            layout,
            to_new,
            q: problem.q as u32,
        }
    }

    /// Previous replicas of new partition `p` (new indexes; `None` for departed nodes).
    fn replicas(&self, p: usize) -> impl Iterator<Item = Option<u32>> + '_ {
        let old = map_partition(p as u32, self.q, self.layout.partitions);
        self.layout
            .replicas(old)
            .iter()
            .map(|&o| self.to_new[o as usize])
    }

    fn holds(&self, p: usize, i: u32) -> bool {
        self.replicas(p).any(|m| m == Some(i))
    }

    /// Replicas per new node index that the previous layout gives the new partitions.
    fn counts(&self, nodes: usize) -> Vec<u32> {
        let mut counts = vec![0u32; nodes];
        for p in 0..self.q as usize {
            for i in self.replicas(p).flatten() {
                counts[i as usize] += 1;
            }
        }
        counts
    }
}

/// A replica dropped from partition `p` so that zone `to` may take the slot (step 3).
#[derive(Clone, Copy)]
struct CrossDrop {
    p: u32,
    node: u32,
    to: u32,
}

/// Book-keeping of step 3's moves between zones.
struct ZoneMoves {
    drops: Vec<CrossDrop>,
    /// Ids in `drops` per partition.
    at: Vec<Vec<usize>>,
    /// Slots promised per zone.
    promised: Vec<i64>,
    /// Zones with room: (room, zone), most room first.
    open: BTreeSet<(Reverse<u32>, u32)>,
    /// Each zone's key in `open` (0: absent).
    open_key: Vec<u32>,
}

impl ZoneMoves {
    /// Record that `node` left partition `p` and its slot is promised to zone `to`.
    fn promise(&mut self, p: usize, node: u32, to: u32) {
        self.at[p].push(self.drops.len());
        self.drops.push(CrossDrop {
            p: p as u32,
            node,
            to,
        });
        self.promised[to as usize] += 1;
    }

    /// Zones promised a slot of partition `p`.
    fn promised_in(&self, p: usize) -> Vec<u32> {
        self.at[p].iter().map(|&d| self.drops[d].to).collect()
    }
}

/// The layout under construction.
struct State<'a> {
    pb: &'a Problem,
    prev: Option<Prev<'a>>,
    sets: Vec<Vec<u32>>,
    load: Vec<u32>,
    zone_load: Vec<u32>,
    quota: Vec<u32>,
    zone_quota: Vec<u32>,
    /// Partitions in a fixed pseudo-random order.
    order: Vec<u32>,
    /// Free slots reserved for a zone by [`State::drop_excess`]: (partition, zone).
    reserved: Vec<(u32, u32)>,
    /// Tie-break key of each node: hash of (name, partition it last received).
    tie: Vec<u64>,
    /// Per zone, the nodes with a deficit by urgency (see `node_key`), most urgent first.
    candidates: Vec<BTreeSet<NodeKey>>,
    /// All nodes with a deficit by urgency, most urgent first.
    urgent_nodes: BTreeSet<NodeKey>,
    /// Each node's key in `candidates` and `urgent_nodes`, if there.
    node_key: Vec<Option<NodeKey>>,
    /// Per node, partitions with a free slot that hold the node.
    open_holding: Vec<u32>,
    /// Zones by summed node deficit: (deficit, zone), largest first.
    zone_queue: BTreeSet<(Reverse<u32>, u32)>,
    /// Partitions with a free slot.
    open_count: u32,
    /// Per zone, partitions with a free slot that hold the zone.
    open_containing: Vec<u32>,
    /// Zones by deficit plus `open_containing`, largest first: a zone whose key reaches
    /// `open_count` needs every open partition it is not in yet.
    urgency: BTreeSet<(Reverse<u32>, u32)>,
    urgency_key: Vec<Option<u32>>,
    /// Per zone, the seed of its jitter hash.
    zone_seed: Vec<u64>,
    zone_deficit: Vec<u32>,
    /// Partitions that received a replica in this computation.
    touched: Vec<bool>,
    touched_list: Vec<u32>,
}

impl<'a> State<'a> {
    fn new(pb: &'a Problem, prev: Option<Prev<'a>>) -> Self {
        let prev_counts = prev.as_ref().map(|p| p.counts(pb.nodes.len()));
        let (quota, zone_quota) = pb.quotas(prev_counts.as_deref());
        let mut order: Vec<u32> = (0..pb.q as u32).collect();
        order.sort_by_key(|&p| xxh3_64_with_seed(&p.to_le_bytes(), ORDER_SEED));
        State {
            prev,
            sets: vec![Vec::with_capacity(pb.n); pb.q],
            load: vec![0; pb.nodes.len()],
            zone_load: vec![0; pb.zones()],
            quota,
            zone_quota,
            order,
            reserved: Vec::new(),
            tie: pb
                .nodes
                .iter()
                .map(|n| xxh3_64(n.name.as_bytes()))
                .collect(),
            candidates: vec![BTreeSet::new(); pb.zones()],
            urgent_nodes: BTreeSet::new(),
            node_key: vec![None; pb.nodes.len()],
            open_holding: vec![0; pb.nodes.len()],
            zone_queue: BTreeSet::new(),
            open_count: 0,
            open_containing: vec![0; pb.zones()],
            urgency: BTreeSet::new(),
            urgency_key: vec![None; pb.zones()],
            zone_seed: pb.nodes.iter().enumerate().fold(
                vec![0; pb.zones()],
                |mut seeds, (i, node)| {
                    seeds[pb.zone_of[i] as usize] = xxh3_64(node.zone.as_bytes());
                    seeds
                },
            ),
            zone_deficit: vec![0; pb.zones()],
            touched: vec![false; pb.q],
            touched_list: Vec::new(),
            pb,
        }
    }

    fn zone(&self, i: u32) -> u32 {
        self.pb.zone_of[i as usize]
    }

    fn deficit(&self, i: u32) -> u32 {
        self.quota[i as usize].saturating_sub(self.load[i as usize])
    }

    fn was_there(&self, p: usize, i: u32) -> bool {
        self.prev.as_ref().is_some_and(|prev| prev.holds(p, i))
    }

    /// Step 2: keep the previous replicas that are present, distinct and meet the zone rule.
    fn keep(&mut self) {
        let Some(prev) = &self.prev else { return };
        for p in 0..self.pb.q {
            for i in prev.replicas(p).flatten() {
                if self.pb.fits(&self.sets[p], usize::MAX, i) {
                    self.sets[p].push(i);
                    self.load[i as usize] += 1;
                    self.zone_load[self.pb.zone_of[i as usize] as usize] += 1;
                }
            }
        }
    }

    fn node_excess(&self, i: u32) -> u32 {
        self.load[i as usize].saturating_sub(self.quota[i as usize])
    }

    fn zone_excess(&self, z: usize) -> u32 {
        self.zone_load[z].saturating_sub(self.zone_quota[z])
    }

    /// Count one replica fewer (`-1`) or more (`+1`) for node `i`, outside the fill queues.
    fn adjust(&mut self, i: u32, delta: i32) {
        let z = self.zone(i) as usize;
        self.load[i as usize] = self.load[i as usize].wrapping_add_signed(delta);
        self.zone_load[z] = self.zone_load[z].wrapping_add_signed(delta);
    }

    /// Slots zone `z` may still be promised: quota minus load minus promises.
    fn room(&self, mv: &ZoneMoves, z: usize) -> u32 {
        let room = i64::from(self.zone_quota[z]) - i64::from(self.zone_load[z]) - mv.promised[z];
        room.max(0) as u32
    }

    /// Re-key zone `z` in `mv.open` after its load or promises changed.
    fn refresh(&self, mv: &mut ZoneMoves, z: usize) {
        if mv.open_key[z] > 0 {
            mv.open.remove(&(Reverse(mv.open_key[z]), z as u32));
        }
        mv.open_key[z] = self.room(mv, z);
        if mv.open_key[z] > 0 {
            mv.open.insert((Reverse(mv.open_key[z]), z as u32));
        }
    }

    /// Drop a replica of zone `a` from partition `p` and promise the slot to the zone with the
    /// most room that the zone rule admits there. `strict`: only a node over its quota.
    fn cross_drop(&mut self, mv: &mut ZoneMoves, p: usize, a: u32, strict: bool) -> bool {
        if !self.may_shed(p, a) {
            return false;
        }
        let promised = mv.promised_in(p);
        for pos in 0..self.sets[p].len() {
            let i = self.sets[p][pos];
            if self.zone(i) != a || (strict && self.node_excess(i) == 0) {
                continue;
            }
            let to = mv
                .open
                .iter()
                .map(|&(_, b)| b)
                .find(|&b| self.pb.zone_fits_with(&self.sets[p], pos, &promised, b));
            if let Some(b) = to {
                self.sets[p].remove(pos);
                self.adjust(i, -1);
                mv.promise(p, i, b);
                self.refresh(mv, a as usize);
                self.refresh(mv, b as usize);
                return true;
            }
        }
        false
    }

    /// Shed one replica of zone `a` without extra movement, along an augmenting path: `a`'s
    /// replica leaves a partition whose promised slot (given up by zone `c1`) it takes over,
    /// `c1`'s replica comes back there and `c1` does the same elsewhere, ..., until a zone drops
    /// a replica directly for a zone with room. Breadth-first over zones; spends `budget`.
    fn shed_by_swaps(
        &mut self,
        mv: &mut ZoneMoves,
        a: usize,
        holding: &[Vec<u32>],
        budget: &mut usize,
    ) -> bool {
        let zones = self.pb.zones();
        let mut parent: Vec<Option<(usize, usize, usize)>> = vec![None; zones];
        let mut seen = vec![false; zones];
        seen[a] = true;
        let mut queue = VecDeque::from([a]);
        while let Some(x) = queue.pop_front() {
            for &p in &holding[x] {
                let p = p as usize;
                let Some(pos) = self.shed_candidate(p, x as u32) else {
                    continue;
                };
                let cost = 1 + mv.open.len().min(zones) + mv.at[p].len();
                if *budget < cost {
                    return false;
                }
                *budget -= cost;
                let promised = mv.promised_in(p);
                let fits = |b: u32| self.pb.zone_fits_with(&self.sets[p], pos, &promised, b);
                if mv.open.iter().any(|&(_, b)| fits(b)) {
                    let mut path = vec![(x, p, usize::MAX)];
                    let mut z = x;
                    while let Some(step) = parent[z] {
                        path.push(step);
                        z = step.0;
                    }
                    let mut partitions: Vec<usize> = path.iter().map(|step| step.1).collect();
                    partitions.sort_unstable();
                    partitions.dedup();
                    if partitions.len() < path.len() {
                        continue;
                    }
                    for &(from, p, d) in &path[1..] {
                        let Some(pos) = self.shed_candidate(p, from as u32) else {
                            continue;
                        };
                        let i = self.sets[p].remove(pos);
                        self.adjust(i, -1);
                        let j = mv.drops[d].node;
                        self.sets[p].push(j);
                        self.adjust(j, 1);
                        mv.drops[d].node = i;
                        self.refresh(mv, from);
                        self.refresh(mv, self.zone(j) as usize);
                    }
                    return self.cross_drop(mv, p, x as u32, false);
                }
                for &d in &mv.at[p] {
                    let j = mv.drops[d].node;
                    let c = self.zone(j) as usize;
                    if !seen[c] && !self.sets[p].contains(&j) && fits(c as u32) {
                        seen[c] = true;
                        parent[c] = Some((x, p, d));
                        queue.push_back(c);
                    }
                }
            }
        }
        false
    }

    /// Shed one replica of zone `a` through a chain `a -> c1 -> ... -> b` ending at a zone `b`
    /// with room: each zone drops a replica in a partition where the next zone may take the
    /// slot (breadth-first over zones, partitions from `holding`). Spends `budget` zone checks.
    fn shed_by_chain(
        &mut self,
        mv: &mut ZoneMoves,
        a: usize,
        holding: &[Vec<u32>],
        budget: &mut usize,
    ) -> bool {
        let zones = self.pb.zones();
        let mut parent: Vec<Option<(usize, usize, u32)>> = vec![None; zones];
        let mut seen = vec![false; zones];
        seen[a] = true;
        let mut queue = VecDeque::from([a]);
        while let Some(x) = queue.pop_front() {
            for &p in &holding[x] {
                let p = p as usize;
                let Some(pos) = self.shed_candidate(p, x as u32) else {
                    continue;
                };
                if *budget < zones {
                    return false;
                }
                *budget -= zones;
                let promised = mv.promised_in(p);
                for y in 0..zones {
                    if seen[y]
                        || !self
                            .pb
                            .zone_fits_with(&self.sets[p], pos, &promised, y as u32)
                    {
                        continue;
                    }
                    seen[y] = true;
                    parent[y] = Some((x, p, self.sets[p][pos]));
                    if self.room(mv, y) == 0 {
                        queue.push_back(y);
                        continue;
                    }
                    let mut to = y;
                    while let Some((from, p, node)) = parent[to] {
                        let pos = self.sets[p].iter().position(|&m| m == node).unwrap_or(0);
                        self.sets[p].remove(pos);
                        self.adjust(node, -1);
                        mv.promise(p, node, to as u32);
                        self.refresh(mv, from);
                        self.refresh(mv, to);
                        to = from;
                    }
                    return true;
                }
            }
        }
        false
    }

    /// Make room for zones whose remaining quota exceeds the free slots they may take: such a
    /// zone takes a slot in a full partition, whose replica comes from a zone with free slots
    /// to spare (it moves into one of them). Free slots here come from departed nodes.
    fn make_room(&mut self, mv: &mut ZoneMoves) {
        let zones = self.pb.zones();
        // Per zone: free slots it may take (open partitions below its per-partition limit)
        // minus what it still needs.
        let mut open = 0i64;
        let mut blocked = vec![0i64; zones];
        for p in 0..self.pb.q {
            let promised = mv.promised_in(p);
            if self.sets[p].len() + promised.len() >= self.pb.n {
                continue;
            }
            open += 1;
            let mut present: Vec<u32> = self.sets[p].iter().map(|&i| self.zone(i)).collect();
            present.extend(promised);
            present.sort_unstable();
            for run in present.chunk_by(|a, b| a == b) {
                if run.len() >= self.pb.per_zone {
                    blocked[run[0] as usize] += 1;
                }
            }
        }
        let mut spare: Vec<i64> = (0..zones)
            .map(|z| open - blocked[z] - i64::from(self.room(mv, z)))
            .collect();
        let mut needy: Vec<usize> = (0..zones).filter(|&z| spare[z] < 0).collect();
        let mut budget = CHAIN_BUDGET_PER_SLOT * self.pb.q * self.pb.n;
        for k in 0..self.order.len() {
            if needy.is_empty() || budget < needy.len() {
                break;
            }
            budget -= needy.len();
            let p = self.order[k] as usize;
            let promised = mv.promised_in(p);
            if self.sets[p].len() + promised.len() < self.pb.n {
                continue;
            }
            for &z in &needy {
                let from = (0..self.sets[p].len())
                    .filter(|&pos| {
                        let y = self.zone(self.sets[p][pos]) as usize;
                        y != z
                            && spare[y] > 0
                            && self.may_shed(p, y as u32)
                            && self
                                .pb
                                .zone_fits_with(&self.sets[p], pos, &promised, z as u32)
                    })
                    .max_by_key(|&pos| {
                        let i = self.sets[p][pos];
                        (
                            self.node_excess(i),
                            spare[self.zone(i) as usize],
                            Reverse(pos),
                        )
                    });
                if let Some(pos) = from {
                    let i = self.sets[p].remove(pos);
                    let y = self.zone(i) as usize;
                    self.adjust(i, -1);
                    mv.promise(p, i, z as u32);
                    spare[y] -= 1;
                    spare[z] += 1;
                    break;
                }
            }
            needy.retain(|&z| spare[z] < 0);
        }
    }

    /// Whether zone `z` may give up a replica of partition `p` to another zone: not its last
    /// one when every partition needs every zone (it would have to come back).
    fn may_shed(&self, p: usize, z: u32) -> bool {
        !self.pb.all_zones || self.sets[p].iter().filter(|&&i| self.zone(i) == z).count() > 1
    }

    /// Position in partition `p` of the replica of zone `z` to drop: a node over quota first.
    fn shed_candidate(&self, p: usize, z: u32) -> Option<usize> {
        if !self.may_shed(p, z) {
            return None;
        }
        let set = &self.sets[p];
        let of_zone = |k: &usize| self.zone(set[*k]) == z;
        (0..set.len())
            .filter(of_zone)
            .find(|&k| self.node_excess(set[k]) > 0)
            .or_else(|| (0..set.len()).find(of_zone))
    }

    /// Step 3: drop what is over quota, zones first (promising each slot to a zone below quota
    /// that may take it), then nodes (promising the slot to the node's own zone).
    fn drop_excess(&mut self) {
        let zones = self.pb.zones();
        let mut mv = ZoneMoves {
            drops: Vec::new(),
            at: vec![Vec::new(); self.pb.q],
            promised: vec![0; zones],
            open: BTreeSet::new(),
            open_key: vec![0; zones],
        };
        for z in 0..zones {
            self.refresh(&mut mv, z);
        }
        let mut over: Vec<usize> = (0..zones).filter(|&z| self.zone_excess(z) > 0).collect();
        if !over.is_empty() {
            let mut holding: Vec<Vec<u32>> = vec![Vec::new(); zones];
            for &p in &self.order {
                for &i in &self.sets[p as usize] {
                    let list = &mut holding[self.pb.zone_of[i as usize] as usize];
                    if list.last() != Some(&p) {
                        list.push(p);
                    }
                }
            }
            // Tightest zones first: fewest partitions to leave per replica to shed.
            let leavable = |a: usize| {
                holding[a]
                    .iter()
                    .filter(|&&p| {
                        let set = &self.sets[p as usize];
                        let pos = set.iter().position(|&i| self.zone(i) as usize == a);
                        pos.is_some_and(|pos| {
                            mv.open.iter().any(|&(_, b)| self.pb.zone_fits(set, pos, b))
                        })
                    })
                    .count() as i64
            };
            let mut slack: Vec<(i64, usize)> = over
                .iter()
                .map(|&a| (leavable(a) - i64::from(self.zone_excess(a)), a))
                .collect();
            slack.sort_unstable();
            over = slack.into_iter().map(|(_, a)| a).collect();
            let direct = |state: &mut Self, mv: &mut ZoneMoves, strict: bool| {
                for &a in &over {
                    for &p in &holding[a] {
                        if state.zone_excess(a) == 0 {
                            break;
                        }
                        state.cross_drop(mv, p as usize, a as u32, strict);
                    }
                }
            };
            let mut budget = CHAIN_BUDGET_PER_SLOT * self.pb.q * self.pb.n;
            // Direct moves from over-quota nodes; then the same through swaps of promised
            // slots (no extra movement); then from any node of the zone (one extra move inside
            // the zone); last, chains through other zones (one extra move per link).
            direct(self, &mut mv, true);
            for &a in &over {
                while self.zone_excess(a) > 0
                    && self.shed_by_swaps(&mut mv, a, &holding, &mut budget)
                {}
            }
            direct(self, &mut mv, false);
            for &a in &over {
                while self.zone_excess(a) > 0
                    && self.shed_by_chain(&mut mv, a, &holding, &mut budget)
                {}
            }
        }
        self.make_room(&mut mv);
        self.reserved = mv.drops.iter().map(|d| (d.p, d.to)).collect();
        // Nodes still over quota give up the partitions of lowest hash (name, partition).
        let mut victims: Vec<Vec<(u64, u32)>> = vec![Vec::new(); self.load.len()];
        for (p, set) in self.sets.iter().enumerate() {
            for &i in set {
                if self.node_excess(i) > 0 {
                    let name = &self.pb.nodes[i as usize].name;
                    victims[i as usize].push((node_hash(name, p as u32), p as u32));
                }
            }
        }
        // Prefer partitions with no free slot yet: two slots of one partition for the same
        // zone need two distinct nodes of that zone below quota.
        let mut free: Vec<usize> = self.sets.iter().map(|set| self.pb.n - set.len()).collect();
        for (i, mut list) in victims.into_iter().enumerate() {
            let i = i as u32;
            list.sort_unstable_by_key(|&(hash, p)| (free[p as usize], hash));
            let excess = self.node_excess(i) as usize;
            for &(_, p) in list.iter().take(excess) {
                self.sets[p as usize].retain(|&m| m != i);
                free[p as usize] += 1;
                self.adjust(i, -1);
                self.reserved.push((p, self.zone(i)));
            }
        }
    }

    /// Record that node `i` received one more replica, in partition `p`.
    fn count_placement(&mut self, i: u32, p: usize) {
        let z = self.zone(i) as usize;
        if self.deficit(i) > 0 {
            self.set_zone_deficit(z, self.zone_deficit[z] - 1);
        }
        self.load[i as usize] += 1;
        self.zone_load[z] += 1;
        self.tie[i as usize] = node_hash(&self.pb.nodes[i as usize].name, p as u32);
        self.refresh_node(i);
        if !self.touched[p] {
            self.touched[p] = true;
            self.touched_list.push(p as u32);
        }
    }

    /// Set zone `z`'s summed node deficit and re-key it in the zone queues.
    fn set_zone_deficit(&mut self, z: usize, deficit: u32) {
        let old = self.zone_deficit[z];
        if old > 0 {
            self.zone_queue.remove(&(Reverse(old), z as u32));
        }
        self.zone_deficit[z] = deficit;
        self.refresh_urgency(z);
        if deficit > 0 {
            self.zone_queue.insert((Reverse(deficit), z as u32));
        }
    }

    /// Re-key node `i` in the fill queues. Its urgency is its deficit plus the open partitions
    /// that hold it: at `open_count`, the node needs every open partition it is not in yet.
    fn refresh_node(&mut self, i: u32) {
        let z = self.zone(i) as usize;
        if let Some(key) = self.node_key[i as usize].take() {
            self.candidates[z].remove(&key);
            self.urgent_nodes.remove(&key);
        }
        let deficit = self.deficit(i);
        if deficit > 0 {
            let key = (
                Reverse(deficit + self.open_holding[i as usize]),
                self.tie[i as usize],
                i,
            );
            self.candidates[z].insert(key);
            self.urgent_nodes.insert(key);
            self.node_key[i as usize] = Some(key);
        }
    }

    fn refresh_urgency(&mut self, z: usize) {
        if let Some(key) = self.urgency_key[z].take() {
            self.urgency.remove(&(Reverse(key), z as u32));
        }
        if self.zone_deficit[z] > 0 {
            let key = self.zone_deficit[z] + self.open_containing[z];
            self.urgency.insert((Reverse(key), z as u32));
            self.urgency_key[z] = Some(key);
        }
    }

    /// Add (`delta = 1`) or remove (`-1`) partition `p` from the open-partition counts, if it
    /// has a free slot. Bracket every change of `self.sets[p]` during the fill.
    fn count_open(&mut self, p: usize, delta: i32) {
        if self.sets[p].len() >= self.pb.n {
            return;
        }
        self.open_count = self.open_count.wrapping_add_signed(delta);
        for k in 0..self.sets[p].len() {
            let i = self.sets[p][k];
            self.open_holding[i as usize] =
                self.open_holding[i as usize].wrapping_add_signed(delta);
            self.refresh_node(i);
        }
        let mut zones: Vec<u32> = self.sets[p].iter().map(|&i| self.zone(i)).collect();
        zones.sort_unstable();
        zones.dedup();
        for z in zones {
            let z = z as usize;
            self.open_containing[z] = self.open_containing[z].wrapping_add_signed(delta);
            self.refresh_urgency(z);
        }
    }

    fn place(&mut self, p: usize, i: u32) {
        self.count_open(p, -1);
        self.sets[p].push(i);
        self.count_placement(i, p);
        self.count_open(p, 1);
    }

    /// The node of zone `z` with the largest deficit that may join partition `p`. `spare`:
    /// only if `p` lacks the zone or the zone has replicas to spare beyond the open
    /// partitions lacking it.
    fn pick_in_zone(&self, p: usize, z: u32, spare: bool) -> Option<u32> {
        let set = &self.sets[p];
        if !self.pb.zone_fits(set, usize::MAX, z) {
            return None;
        }
        let zu = z as usize;
        if spare
            && set.iter().any(|&m| self.zone(m) == z)
            && self.zone_deficit[zu] + self.open_containing[zu] <= self.open_count
        {
            return None;
        }
        self.returning(p, Some(z)).or_else(|| {
            self.candidates[z as usize]
                .iter()
                .map(|&(_, _, i)| i)
                .find(|i| !set.contains(i))
        })
    }

    /// A node (of zone `z` if given) that held partition `p` before, lost it in step 3 and may
    /// take it back: placing it moves nothing.
    fn returning(&self, p: usize, z: Option<u32>) -> Option<u32> {
        let prev = self.prev.as_ref()?;
        let set = &self.sets[p];
        prev.replicas(p).flatten().find(|&i| {
            (z.is_none() || z == Some(self.zone(i)))
                && self.deficit(i) > 0
                && self.pb.fits(set, usize::MAX, i)
        })
    }

    /// The node that takes a free slot of partition `p`: a previous holder if one may come
    /// back; else a node, then a zone, that needs every open partition it is not in yet; else
    /// from the most urgent zone (deficit minus the open partitions it could still enter)
    /// among the first [`MIX_ZONES`] that fit, after a jitter of up to 2 drawn from
    /// `xxh3(partition, zone)`, so that zones of equal needs do not always pair up. Within the
    /// zone, the most urgent node, ties by the node's tie-break hash.
    fn pick(&self, p: usize) -> Option<u32> {
        if let Some(i) = self.returning(p, None) {
            return Some(i);
        }
        let set = &self.sets[p];
        let urgent = self
            .urgent_nodes
            .iter()
            .take_while(|&&(Reverse(key), _, _)| key >= self.open_count)
            .map(|&(_, _, i)| i)
            .find(|&i| self.pb.fits(set, usize::MAX, i));
        if urgent.is_some() {
            return urgent;
        }
        let urgent = self
            .urgency
            .iter()
            .take_while(|&&(Reverse(key), _)| key >= self.open_count)
            .find_map(|&(_, z)| self.pick_in_zone(p, z, true));
        if urgent.is_some() {
            return urgent;
        }
        let fitting = self
            .urgency
            .iter()
            .filter_map(|&(Reverse(key), z)| self.pick_in_zone(p, z, true).map(|i| (key, z, i)));
        let mut best: Option<(u64, u32)> = None;
        for (key, z, i) in fitting.take(MIX_ZONES) {
            let seed = self.zone_seed[z as usize];
            let jitter = xxh3_64_with_seed(&(p as u64).to_le_bytes(), seed) >> 31;
            let score = (u64::from(key) << 32) + jitter;
            let better = match best {
                Some((top, _)) => score > top,
                None => true,
            };
            if better {
                best = Some((score, i));
            }
        }
        best.map(|(_, i)| i)
    }

    /// Step 4: fill the free slots, reserved ones first.
    fn fill(&mut self) {
        let mut deficits = vec![0u32; self.pb.zones()];
        for i in 0..self.load.len() as u32 {
            let d = self.deficit(i);
            if d > 0 {
                deficits[self.zone(i) as usize] += d;
                self.refresh_node(i);
            }
        }
        for (z, d) in deficits.into_iter().enumerate() {
            self.set_zone_deficit(z, d);
        }
        for p in 0..self.pb.q {
            self.count_open(p, 1);
        }
        for (p, z) in std::mem::take(&mut self.reserved) {
            let p = p as usize;
            if self.sets[p].len() < self.pb.n {
                match self.pick_in_zone(p, z, false).or_else(|| self.pick(p)) {
                    Some(i) => self.place(p, i),
                    None => self.unstick(p),
                }
            }
        }
        for p in 0..self.pb.q {
            while self.sets[p].len() < self.pb.n {
                match self.pick(p) {
                    Some(i) => self.place(p, i),
                    None => self.unstick(p),
                }
            }
        }
    }

    /// Step 5: fill one slot of `p` that no node with a deficit can take directly.
    fn unstick(&mut self, p: usize) {
        if !self.swap_into(p) && !self.augment(p) && !self.rotate_into(p) {
            self.overfill(p);
        }
    }

    /// Move a replica `y` of another partition into `p` and give `y`'s slot to a node with a
    /// deficit. Prefers a `y` placed in this computation (no extra movement).
    fn swap_into(&mut self, p: usize) -> bool {
        let incoming = self.incoming();
        if incoming.is_empty() {
            return false;
        }
        let find = |partitions: &[u32], only_new: bool| -> Option<(usize, usize, u32)> {
            for &p2 in partitions {
                let p2 = p2 as usize;
                if p2 == p {
                    continue;
                }
                for (pos, &y) in self.sets[p2].iter().enumerate() {
                    if (only_new && self.was_there(p2, y))
                        || !self.pb.fits(&self.sets[p], usize::MAX, y)
                    {
                        continue;
                    }
                    if let Some(&x) = incoming
                        .iter()
                        .find(|&&x| self.pb.fits(&self.sets[p2], pos, x))
                    {
                        return Some((p2, pos, x));
                    }
                }
            }
            None
        };
        let found = find(&self.touched_list, true).or_else(|| find(&self.order, false));
        let Some((p2, pos, x)) = found else {
            return false;
        };
        self.count_open(p2, -1);
        let y = std::mem::replace(&mut self.sets[p2][pos], x);
        self.count_placement(x, p2);
        self.count_open(p2, 1);
        self.count_open(p, -1);
        self.sets[p].push(y);
        self.count_open(p, 1);
        if !self.touched[p] {
            self.touched[p] = true;
            self.touched_list.push(p as u32);
        }
        true
    }

    /// Fill the free slot of `p` along a shortest augmenting path: a node `u1` moves into `p`
    /// from partition `p1`, a node `u2` moves into the slot `u1` left in `p1`, ..., until a
    /// node with a deficit takes the last slot (one extra move per link). Breadth-first over
    /// (partition, slot) states, each node expanded once, at most [`AUGMENT_BUDGET`] checks.
    fn augment(&mut self, p: usize) -> bool {
        /// A partition with one slot to fill: `hole` (the slot its `mover` leaves to go to the
        /// `parent` state's partition), or a free slot at the root.
        struct Hop {
            partition: usize,
            hole: usize,
            parent: usize,
        }
        let nodes = self.load.len();
        let mut holders: Vec<Vec<u32>> = vec![Vec::new(); nodes];
        for &q in &self.order {
            for &i in &self.sets[q as usize] {
                holders[i as usize].push(q);
            }
        }
        let short: Vec<u32> = (0..nodes as u32).filter(|&i| self.deficit(i) > 0).collect();
        let mut hops = vec![Hop {
            partition: p,
            hole: usize::MAX,
            parent: usize::MAX,
        }];
        let mut reached = vec![0u64; self.pb.q];
        let mut expanded = vec![false; nodes];
        let mut budget = AUGMENT_BUDGET;
        let mut head = 0;
        while head < hops.len() {
            let (cur, skip) = (hops[head].partition, hops[head].hole);
            if let Some(&t) = short
                .iter()
                .find(|&&t| self.pb.fits(&self.sets[cur], skip, t))
            {
                self.count_placement(t, cur);
                let (mut at, mut incoming) = (head, t);
                while at != usize::MAX {
                    let Hop {
                        partition,
                        hole,
                        parent,
                    } = hops[at];
                    self.count_open(partition, -1);
                    if hole == usize::MAX {
                        self.sets[partition].push(incoming);
                    } else {
                        incoming = std::mem::replace(&mut self.sets[partition][hole], incoming);
                    }
                    self.count_open(partition, 1);
                    if !self.touched[partition] {
                        self.touched[partition] = true;
                        self.touched_list.push(partition as u32);
                    }
                    at = parent;
                }
                return true;
            }
            for u in 0..nodes as u32 {
                if budget == 0 {
                    return false;
                }
                budget -= 1;
                if expanded[u as usize] || !self.pb.fits(&self.sets[cur], skip, u) {
                    continue;
                }
                expanded[u as usize] = true;
                for &q in &holders[u as usize] {
                    let q = q as usize;
                    let hole = self.sets[q].iter().position(|&m| m == u).unwrap_or(0);
                    let bit = 1u64 << (hole % 64);
                    let mut on_path = false;
                    let mut at = head;
                    while at != usize::MAX {
                        on_path |= hops[at].partition == q;
                        at = hops[at].parent;
                    }
                    if reached[q] & bit == 0 && !on_path {
                        reached[q] |= bit;
                        hops.push(Hop {
                            partition: q,
                            hole,
                            parent: head,
                        });
                    }
                }
            }
            head += 1;
        }
        false
    }

    /// Nodes with a deficit, largest zone deficit first, at most [`REPAIR_CANDIDATES`].
    fn incoming(&self) -> Vec<u32> {
        self.zone_queue
            .iter()
            .flat_map(|&(_, z)| self.candidates[z as usize].iter().map(|&(_, _, i)| i))
            .take(REPAIR_CANDIDATES)
            .collect()
    }

    /// Fill a slot of `p` by a rotation: a node `x` with a deficit replaces a replica `r` of
    /// `p`, `r` replaces a replica `y` of another partition, and `y` takes the free slot of `p`.
    /// Prefers a `y` placed in this computation (then one extra move: `r`'s).
    fn rotate_into(&mut self, p: usize) -> bool {
        let incoming = self.incoming();
        let find = |partitions: &[u32], only_new: bool| -> Option<(usize, u32, usize, usize)> {
            for (rpos, &r) in self.sets[p].iter().enumerate() {
                for &x in &incoming {
                    if !self.pb.fits(&self.sets[p], rpos, x) {
                        continue;
                    }
                    let mut after = self.sets[p].clone();
                    after[rpos] = x;
                    for &p2 in partitions {
                        let p2 = p2 as usize;
                        if p2 == p {
                            continue;
                        }
                        for (ypos, &y) in self.sets[p2].iter().enumerate() {
                            if (only_new && self.was_there(p2, y))
                                || !self.pb.fits(&after, usize::MAX, y)
                                || !self.pb.fits(&self.sets[p2], ypos, r)
                            {
                                continue;
                            }
                            return Some((rpos, x, p2, ypos));
                        }
                    }
                }
            }
            None
        };
        let found = find(&self.touched_list, true).or_else(|| find(&self.order, false));
        let Some((rpos, x, p2, ypos)) = found else {
            return false;
        };
        self.count_open(p, -1);
        self.count_open(p2, -1);
        let r = std::mem::replace(&mut self.sets[p][rpos], x);
        self.count_placement(x, p);
        let y = std::mem::replace(&mut self.sets[p2][ypos], r);
        self.sets[p].push(y);
        self.count_open(p, 1);
        self.count_open(p2, 1);
        if !self.touched[p2] {
            self.touched[p2] = true;
            self.touched_list.push(p2 as u32);
        }
        true
    }

    /// Last resort: the node least over its quota that meets the zone rule (or, if none can,
    /// any node not yet in `p`) takes one more replica than its quota.
    fn overfill(&mut self, p: usize) {
        let set = &self.sets[p];
        let key = |i: u32| {
            let slack = i64::from(self.quota[i as usize]) - i64::from(self.load[i as usize]);
            (
                slack,
                Reverse(node_hash(&self.pb.nodes[i as usize].name, p as u32)),
            )
        };
        let all = 0..self.load.len() as u32;
        let best = all
            .clone()
            .filter(|&i| self.pb.fits(set, usize::MAX, i))
            .max_by_key(|&i| key(i))
            .or_else(|| all.filter(|i| !set.contains(i)).max_by_key(|&i| key(i)))
            .expect("at least N nodes");
        self.place(p, best);
    }

    /// Step 6: the previous primary stays first; elsewhere the replica furthest below its share
    /// of primaries (replicas / N), relative to that share, goes first.
    fn choose_primaries(&mut self) {
        if let Some(prev) = &self.prev {
            for (p, set) in self.sets.iter_mut().enumerate() {
                let old: Vec<Option<u32>> = prev.replicas(p).collect();
                set.sort_by_key(|&i| old.iter().position(|&o| o == Some(i)).unwrap_or(usize::MAX));
            }
        }
        let n = self.pb.n as i64;
        let mut primaries = vec![0i64; self.load.len()];
        let mut open = Vec::new();
        for p in 0..self.pb.q {
            let kept = self
                .prev
                .as_ref()
                .and_then(|prev| prev.replicas(p).next().flatten());
            match kept {
                Some(i) if self.sets[p].first() == Some(&i) => primaries[i as usize] += 1,
                _ => open.push(p),
            }
        }
        for &p in &open {
            let set = &mut self.sets[p];
            let key = |i: u32| {
                let load = i64::from(self.load[i as usize]);
                let want = ((load - n * primaries[i as usize]) << 32) / load.max(1);
                (
                    want,
                    Reverse(node_hash(&self.pb.nodes[i as usize].name, p as u32)),
                )
            };
            let pos = (0..set.len()).max_by_key(|&k| key(set[k])).unwrap_or(0);
            set[..=pos].rotate_right(1);
            primaries[set[0] as usize] += 1;
        }
        // The greedy pass above decides early partitions before later ones are seen: hand a
        // primary over to another replica while that lowers the larger of the two ratios
        // primaries / replicas (compared by cross-multiplication). A kept primary is handed
        // over only while its node leads more than its share (ceil(replicas / N)): a cluster
        // grown from one node, which led every partition, spreads its primaries, while a
        // balanced layout keeps every primary where it is.
        let mut kept = vec![true; self.pb.q];
        for &p in &open {
            kept[p] = false;
        }
        for _ in 0..PRIMARY_PASSES {
            let mut changed = false;
            for (set, &kept) in self.sets.iter_mut().zip(&kept) {
                if kept {
                    let Some(&i) = set.first() else { continue };
                    // Within its share: at most ceil(load / n) primaries.
                    let load = i64::from(self.load[i as usize]);
                    if primaries[i as usize] * n < load + n {
                        continue;
                    }
                }
                let ratio_after = |k: usize, extra: i64| {
                    let i = set[k] as usize;
                    (primaries[i] + extra, i64::from(self.load[i]).max(1))
                };
                let (now_num, now_den) = ratio_after(0, 0);
                let best = (1..set.len())
                    .filter(|&k| {
                        let (num, den) = ratio_after(k, 1);
                        num * now_den < now_num * den
                    })
                    .min_by(|&a, &b| {
                        let (an, ad) = ratio_after(a, 1);
                        let (bn, bd) = ratio_after(b, 1);
                        (an * bd).cmp(&(bn * ad))
                    });
                if let Some(k) = best {
                    primaries[set[0] as usize] -= 1;
                    primaries[set[k] as usize] += 1;
                    set[..=k].rotate_right(1);
                    changed = true;
                }
            }
            if !changed {
                break;
            }
        }
    }

    fn into_layout(self) -> Layout {
        let mut replicas = Vec::with_capacity(self.pb.q * self.pb.n);
        for set in &self.sets {
            debug_assert_eq!(set.len(), self.pb.n);
            replicas.extend_from_slice(set);
        }
        Layout {
            partitions: self.pb.q as u32,
            replication: self.pb.n as u32,
            nodes: self.pb.nodes.clone(),
            replicas,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// `count` nodes `node-000..`, capacity `1 + i % 8`, zone `i % zones`.
    fn cluster(count: usize, zones: usize) -> Vec<NodeSpec> {
        (0..count)
            .map(|i| {
                NodeSpec::new(
                    format!("node-{i:03}"),
                    format!("z{}", i % zones),
                    1 + (i % 8) as u32,
                )
            })
            .collect()
    }

    fn load_of(layout: &Layout, name: &str) -> u32 {
        let i = layout.index_of(name).unwrap();
        (0..layout.partitions())
            .filter(|&p| layout.replicas(p).contains(&i))
            .count() as u32
    }

    /// Whether no zone total and no node sits at (or within one replica of) a bound that
    /// constrains it: a zone bound of the zone rule (not the trivial one of a single zone), or Q
    /// for a node. At a bound the rules themselves can force moves
    /// beyond the joining or leaving node's share (a node or zone that must now be in every
    /// partition enters partitions that lost nothing), so movement is only bounded off them.
    fn has_slack(nodes: &[NodeSpec], q: u32, n: u32) -> bool {
        let problem = Problem::new(nodes, q, n);
        let (zone_targets, node_targets) = problem.targets();
        let total = f64::from(q) * f64::from(n);
        let zones = zone_targets.iter().enumerate().all(|(z, &t)| {
            let (lo, hi) = (
                problem.zone_bounds(z).0 as f64,
                problem.zone_bounds(z).1 as f64,
            );
            (lo == 0.0 || t > lo + 1.0) && (hi >= total || t < hi - 1.0)
        });
        zones && node_targets.iter().all(|&t| t < f64::from(q) - 1.0)
    }

    /// Least number of replicas that must move when `leaver` leaves `before` and the result is
    /// `after`: its own replicas, plus what the freed slots cannot absorb. A node (or zone)
    /// gaining replicas takes them in freed slots it may fill or else in partitions that lost
    /// nothing, where something else must move. The node bound is `sum of gains - a maximum
    /// matching of freed slots to gaining nodes`; the zone bound counts per zone.
    fn leave_lower_bound(before: &Layout, after: &Layout, leaver: &str) -> usize {
        let problem = Problem::new(after.nodes(), after.partitions(), after.replication());
        let gone = before.index_of(leaver).unwrap();
        let freed: Vec<Vec<u32>> = (0..before.partitions())
            .filter(|&p| before.replicas(p).contains(&gone))
            .map(|p| {
                before
                    .replicas(p)
                    .iter()
                    .filter(|&&i| i != gone)
                    .map(|&i| after.index_of(&before.node(i).name).unwrap())
                    .collect()
            })
            .collect();
        let gain: Vec<usize> = after
            .nodes()
            .iter()
            .map(|node| {
                let was = before
                    .index_of(&node.name)
                    .map_or(0, |_| load_of(before, &node.name));
                load_of(after, &node.name).saturating_sub(was) as usize
            })
            .collect();
        // Maximum b-matching of freed slots to node gains (augmenting paths).
        let fits = |slot: usize, i: usize| problem.fits(&freed[slot], usize::MAX, i as u32);
        let mut holder: Vec<Option<usize>> = vec![None; freed.len()];
        let mut used = vec![0usize; gain.len()];
        fn grow(
            slot: usize,
            seen: &mut [bool],
            holder: &mut [Option<usize>],
            used: &mut [usize],
            gain: &[usize],
            fits: &dyn Fn(usize, usize) -> bool,
        ) -> bool {
            for i in 0..gain.len() {
                if gain[i] == 0 || !fits(slot, i) {
                    continue;
                }
                if used[i] < gain[i] {
                    used[i] += 1;
                    holder[slot] = Some(i);
                    return true;
                }
                for other in 0..holder.len() {
                    if holder[other] == Some(i) && !seen[other] {
                        seen[other] = true;
                        if grow(other, seen, holder, used, gain, fits) {
                            holder[slot] = Some(i);
                            return true;
                        }
                    }
                }
            }
            false
        }
        let mut matched = 0;
        for slot in 0..freed.len() {
            let mut seen = vec![false; freed.len()];
            seen[slot] = true;
            matched += usize::from(grow(slot, &mut seen, &mut holder, &mut used, &gain, &fits));
        }
        let node_forced = gain.iter().sum::<usize>().saturating_sub(matched);
        let mut zone_gain = vec![0i64; problem.zones()];
        let mut zone_freed = vec![0i64; problem.zones()];
        for (i, &g) in gain.iter().enumerate() {
            zone_gain[problem.zone_of[i] as usize] += g as i64;
        }
        for slot in &freed {
            for (z, count) in zone_freed.iter_mut().enumerate() {
                *count += i64::from(problem.zone_fits(slot, usize::MAX, z as u32));
            }
        }
        let zone_forced: i64 = (0..problem.zones())
            .map(|z| (zone_gain[z] - zone_freed[z]).max(0))
            .sum();
        freed.len() + node_forced.max(zone_forced as usize)
    }

    fn assert_well_formed(layout: &Layout) {
        for p in 0..layout.partitions() {
            let set = layout.replicas(p);
            assert_eq!(set.len(), layout.replication() as usize);
            for k in 1..set.len() {
                assert!(!set[..k].contains(&set[k]), "partition {p} repeats a node");
            }
        }
        assert_eq!(layout.zone_violations(), 0);
        for load in layout.loads() {
            assert!(
                (f64::from(load.replicas) - load.target).abs() < 2.0,
                "{load:?} is off target"
            );
        }
    }

    #[test]
    fn a_renamed_previous_layout_gives_the_new_node_exactly_the_old_ones_slots() {
        let nodes = cluster(6, 3);
        let old = Layout::compute(&nodes, 64, 3, None).unwrap();
        // node-002 is replaced by "a-new" (sorts first, so every index is renumbered).
        assert_eq!(
            old.renamed("node-002", "node-003"),
            None,
            "the new name is taken"
        );
        assert_eq!(old.renamed("absent", "a-new"), None);
        let seed = old.renamed("node-002", "a-new").unwrap();
        for p in 0..64 {
            let before: Vec<&str> = old
                .replica_names(p)
                .map(|n| if n == "node-002" { "a-new" } else { n })
                .collect();
            assert_eq!(seed.replica_names(p).collect::<Vec<_>>(), before);
        }
        let mut next = nodes.clone();
        next[2].name = "a-new".into();
        let new = Layout::compute(&next, 64, 3, Some(&seed)).unwrap();
        let held = old.replicas_by_name()["node-002"] as usize;
        assert_eq!(diff(&old, &new), held);
        assert_eq!(
            new.partitions_of(new.index_of("a-new").unwrap()),
            old.partitions_of(old.index_of("node-002").unwrap())
        );
    }

    #[test]
    fn bad_inputs_are_named() {
        let nodes = cluster(3, 3);
        assert_eq!(
            Layout::compute(&nodes, 64, 0, None),
            Err(LayoutError::ZeroReplication)
        );
        let err = Layout::compute(&nodes, 48, 3, None).unwrap_err();
        assert_eq!(
            err,
            LayoutError::Partitions {
                got: 48,
                max: 65536
            }
        );
        assert!(err.to_string().contains("not 48"), "{err}");
        let err = Layout::compute(&nodes, 64, 4, None).unwrap_err();
        assert_eq!(
            err,
            LayoutError::TooFewNodes {
                nodes: 3,
                replication: 4
            }
        );
        assert!(
            err.to_string().starts_with("3 nodes cannot hold 4"),
            "{err}"
        );
        let mut zero = nodes.clone();
        zero[1].capacity = 0;
        assert_eq!(
            Layout::compute(&zero, 64, 3, None),
            Err(LayoutError::ZeroCapacity {
                name: "node-001".into()
            })
        );
        let mut twice = cluster(4, 2);
        twice[3].name = "node-000".into();
        let err = Layout::compute(&twice, 64, 3, None).unwrap_err();
        assert_eq!(
            err,
            LayoutError::DuplicateNode {
                name: "node-000".into(),
                count: 2
            }
        );
        assert!(err.to_string().contains("2 times"), "{err}");
    }

    #[test]
    fn lookups_match_the_preference_lists() {
        let layout = Layout::compute(&cluster(5, 5), 16, 3, None).unwrap();
        assert_eq!(layout.partitions(), 16);
        assert_eq!(layout.replication(), 3);
        for p in 0..16 {
            let names: Vec<&str> = layout.replica_names(p).collect();
            let from_indexes: Vec<&str> = layout
                .replicas(p)
                .iter()
                .map(|&i| layout.node(i).name.as_str())
                .collect();
            assert_eq!(names, from_indexes);
        }
        let i = layout.index_of("node-002").unwrap();
        assert_eq!(layout.node(i).name, "node-002");
        assert_eq!(layout.index_of("nope"), None);
        assert_eq!(
            layout.partitions_of(i).len() as u32,
            load_of(&layout, "node-002")
        );
    }

    #[test]
    fn corrupt_layouts_are_refused() {
        let good = Layout::compute(&cluster(4, 4), 8, 2, None).unwrap();
        let raw = |replicas: Vec<u32>| RawLayout {
            partitions: 8,
            replication: 2,
            nodes: good.nodes.clone(),
            replicas,
        };
        assert_eq!(
            Layout::try_from(raw(good.replicas.clone())).as_ref(),
            Ok(&good)
        );
        let short = Layout::try_from(raw(vec![0, 1])).unwrap_err();
        assert!(short.to_string().contains("expected Q*N = 16"), "{short}");
        let mut twice = good.replicas.clone();
        twice[1] = twice[0];
        assert!(Layout::try_from(raw(twice)).is_err());
        let mut out_of_range = good.replicas.clone();
        out_of_range[5] = 9;
        assert!(Layout::try_from(raw(out_of_range)).is_err());
    }

    /// A cluster grown from its founder: the founder led every partition, and the layout of
    /// three nodes spreads the primaries evenly; computing it again moves none.
    #[test]
    fn a_founders_primaries_spread_when_the_cluster_grows() {
        let one = vec![NodeSpec::new("n1", "z1", 1)];
        let founder = Layout::compute(&one, 64, 1, None).unwrap();
        let three: Vec<NodeSpec> = (1..=3)
            .map(|i| NodeSpec::new(format!("n{i}"), format!("z{i}"), 1))
            .collect();
        let grown = Layout::compute(&three, 64, 3, Some(&founder)).unwrap();
        let primaries: Vec<u32> = grown.loads().iter().map(|l| l.primaries).collect();
        assert!(
            primaries.iter().all(|&c| (21..=22).contains(&c)),
            "{primaries:?}"
        );
        let again = Layout::compute(&three, 64, 3, Some(&grown)).unwrap();
        for p in 0..64 {
            assert_eq!(again.replicas(p), grown.replicas(p), "partition {p}");
        }
    }

    /// The acceptance case: Q = 4096, N = 3, 100 nodes of capacity 1..8 in 4 zones.
    #[test]
    fn hundred_nodes_balance_join_and_leave() {
        let nodes = cluster(100, 4);
        let base = Layout::compute(&nodes, 4096, 3, None).unwrap();
        assert_well_formed(&base);
        let worst = base.loads().iter().map(NodeLoad::ratio).fold(0.0, f64::max);
        assert!(worst <= 1.05, "worst load / fair share {worst}");
        let primaries: Vec<f64> = base
            .loads()
            .iter()
            .map(|l| f64::from(l.primaries) * 3.0 / l.fair_share)
            .collect();
        assert!(
            primaries.iter().all(|r| (0.9..=1.1).contains(r)),
            "{primaries:?}"
        );

        // A node joins an existing zone.
        let mut joined = nodes.clone();
        joined.push(NodeSpec::new("node-100", "z1", 4));
        let after = Layout::compute(&joined, 4096, 3, Some(&base)).unwrap();
        assert_well_formed(&after);
        let minimum = load_of(&after, "node-100") as usize;
        let moved = diff(&base, &after);
        assert!(
            moved as f64 <= 1.1 * minimum as f64,
            "join moved {moved}, minimum {minimum}"
        );

        // A node leaves.
        let left: Vec<NodeSpec> = nodes
            .iter()
            .filter(|n| n.name != "node-042")
            .cloned()
            .collect();
        let after = Layout::compute(&left, 4096, 3, Some(&base)).unwrap();
        assert_well_formed(&after);
        let minimum = load_of(&base, "node-042") as usize;
        let moved = diff(&base, &after);
        assert!(
            moved as f64 <= 1.1 * minimum as f64,
            "leave moved {moved}, minimum {minimum}"
        );
    }

    #[test]
    fn join_in_a_new_zone_moves_little() {
        let nodes = cluster(100, 4);
        let base = Layout::compute(&nodes, 4096, 3, None).unwrap();
        let mut joined = nodes.clone();
        joined.push(NodeSpec::new("node-100", "z4", 4));
        let after = Layout::compute(&joined, 4096, 3, Some(&base)).unwrap();
        assert_well_formed(&after);
        let minimum = load_of(&after, "node-100") as usize;
        let moved = diff(&base, &after);
        assert!(
            moved as f64 <= 1.1 * minimum as f64,
            "moved {moved}, minimum {minimum}"
        );
    }

    #[test]
    fn fewer_zones_than_replicas_use_every_zone() {
        // N = 3 over two zones: every partition has a 2 + 1 split.
        let nodes = cluster(6, 2);
        let layout = Layout::compute(&nodes, 64, 3, None).unwrap();
        assert_well_formed(&layout);
        for p in 0..64 {
            let zones: BTreeSet<&str> = layout
                .replicas(p)
                .iter()
                .map(|&i| layout.node(i).zone.as_str())
                .collect();
            assert_eq!(zones.len(), 2, "partition {p}");
        }
    }

    #[test]
    fn a_zone_too_big_for_one_replica_per_partition_is_capped() {
        // Zone "big" has 9/10 of the capacity but may hold at most one replica per partition.
        let mut nodes: Vec<NodeSpec> = (0..3)
            .map(|i| NodeSpec::new(format!("big-{i}"), "big", 30))
            .collect();
        nodes.extend((0..4).map(|i| NodeSpec::new(format!("small-{i}"), format!("s{i}"), 2)));
        let layout = Layout::compute(&nodes, 256, 3, None).unwrap();
        assert_well_formed(&layout);
        let big: u32 = layout
            .loads()
            .iter()
            .filter(|l| l.zone == "big")
            .map(|l| l.replicas)
            .sum();
        assert_eq!(big, 256);
    }

    #[test]
    fn a_node_never_holds_more_than_q() {
        let nodes = vec![
            NodeSpec::new("a", "a", 100),
            NodeSpec::new("b", "b", 1),
            NodeSpec::new("c", "c", 1),
            NodeSpec::new("d", "d", 2),
        ];
        let layout = Layout::compute(&nodes, 64, 2, None).unwrap();
        assert_well_formed(&layout);
        let loads = layout.loads();
        assert_eq!(loads[0].replicas, 64);
        // The excess is spread in proportion: d holds about twice what b and c hold.
        assert!(
            (loads[3].target - 2.0 * loads[1].target).abs() < 1e-6,
            "{loads:?}"
        );
    }

    #[test]
    fn changing_q_keeps_data_in_place() {
        // Partition p of Q = 128 holds the first or second half of partition p / 2 of Q = 64:
        // it keeps that partition's replicas, apart from rounding of the doubled quotas.
        let nodes = cluster(12, 3);
        let small = Layout::compute(&nodes, 64, 3, None).unwrap();
        let big = Layout::compute(&nodes, 128, 3, Some(&small)).unwrap();
        assert_well_formed(&big);
        assert!(
            diff(&small, &big) <= nodes.len(),
            "moved {}",
            diff(&small, &big)
        );
        for p in 0..128 {
            let kept = big
                .replica_names(p)
                .filter(|name| small.replica_names(p / 2).any(|old| old == *name))
                .count();
            assert!(kept >= 2, "partition {p} kept {kept}");
        }
        // Halving Q: partition p keeps the replicas of old partition 2p.
        let halved = Layout::compute(&nodes, 64, 3, Some(&big)).unwrap();
        assert_well_formed(&halved);
        assert!(
            diff(&big, &halved) <= nodes.len(),
            "moved {}",
            diff(&big, &halved)
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

        #[test]
        fn layouts_hold_their_rules(
            caps in prop::collection::vec(1u32..=8, 2..30),
            zone_count in 1usize..=5,
            zone_seed in any::<u64>(),
            q_bits in prop::sample::select(vec![4u32, 6, 8]),
            n in 1u32..=3,
            shuffle_seed in any::<u64>(),
            new_cap in 1u32..=8,
            new_zone_pick in any::<u64>(),
        ) {
            prop_assume!(caps.len() >= n as usize);
            let q = 1u32 << q_bits;
            let zone_count = zone_count.min(caps.len());
            // Every zone gets at least one node: node i < zone_count is in zone i.
            let nodes: Vec<NodeSpec> = caps
                .iter()
                .enumerate()
                .map(|(i, &c)| {
                    let z = if i < zone_count { i } else { (xxh3_64_with_seed(&[i as u8], zone_seed) % zone_count as u64) as usize };
                    NodeSpec::new(format!("n{i:02}"), format!("z{z}"), c)
                })
                .collect();
            let layout = Layout::compute(&nodes, q, n, None).unwrap();
            assert_well_formed(&layout);

            // Same nodes in another order: same layout.
            let mut shuffled = nodes.clone();
            shuffled.sort_by_key(|node| xxh3_64_with_seed(node.name.as_bytes(), shuffle_seed));
            prop_assert_eq!(&Layout::compute(&shuffled, q, n, None).unwrap(), &layout);

            // Recomputing from itself moves nothing.
            let again = Layout::compute(&nodes, q, n, Some(&layout)).unwrap();
            prop_assert_eq!(diff(&layout, &again), 0);

            // A node joins (an existing zone, or a new one if that keeps the zone rule): the
            // movement is about what the new node must receive.
            let zone_rule_stays = zone_count >= n as usize;
            let options = zone_count as u64 + u64::from(zone_rule_stays);
            let new_zone = new_zone_pick % options;
            let mut joined = nodes.clone();
            joined.push(NodeSpec::new("new", format!("z{new_zone}"), new_cap));
            let after = Layout::compute(&joined, q, n, Some(&layout)).unwrap();
            assert_well_formed(&after);
            let minimum = load_of(&after, "new") as f64;
            let moved = diff(&layout, &after) as f64;
            if has_slack(&nodes, q, n) && has_slack(&joined, q, n) {
                prop_assert!(moved <= 1.1 * minimum + f64::from(n) + 1.0,
                    "join moved {} for a minimum of {}", moved, minimum);
            }

            // A node leaves from a zone that keeps other nodes: about its replicas move.
            let leaver = nodes.iter().rev().find(|node| {
                nodes.iter().filter(|other| other.zone == node.zone).count() > 1
            });
            if let Some(leaver) = leaver.filter(|_| nodes.len() > n as usize) {
                let left: Vec<NodeSpec> = nodes.iter().filter(|x| x.name != leaver.name).cloned().collect();
                let after = Layout::compute(&left, q, n, Some(&layout)).unwrap();
                assert_well_formed(&after);
                let minimum = leave_lower_bound(&layout, &after, &leaver.name) as f64;
                let moved = diff(&layout, &after) as f64;
                if has_slack(&nodes, q, n) && has_slack(&left, q, n) {
                    prop_assert!(moved <= 1.1 * minimum + f64::from(n) + 1.0,
                        "leave moved {} for a minimum of {}", moved, minimum);
                }
            }
        }
    }
}
