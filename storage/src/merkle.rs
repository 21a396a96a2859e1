//! A per-partition hash tree over every stored key, for active anti-entropy (AAE).
//!
//! The design follows Riak's AAE hash trees and Cassandra's Merkle trees (Dynamo, DeCandia et
//! al., SOSP 2007, §4.7): two replicas of a partition compare their trees from the root down,
//! descend only into subtrees whose hashes differ, and exchange the keys of the differing
//! leaves only. The cost of an exchange grows with the number of differences, not with the
//! number of keys.
//!
//! Shape: a fixed tree of fanout [`FANOUT`] = 16 and depth [`DEPTH`] = 3. Level 0 is the
//! root, level 1 has 16 nodes, level 2 has 256 and level 3 has [`SEGMENTS`] = 4096 leaves,
//! called *segments*. Node `i` of level `l` covers the segments
//! `i * 16^(3-l) .. (i + 1) * 16^(3-l)`; its children are `16 i .. 16 i + 15` of level
//! `l + 1`.
//!
//! * A key belongs to the segment given by the top 12 bits of its [`key_hash`] (xxh3-128 of
//!   the stored key, see [`segment_of`]).
//! * A key's [`entry_hash`] is xxh3-64 over the length-prefixed stored key and its record
//!   bytes ([`crate::record::encode`]). Record bytes are canonical (siblings sorted by dot, the
//!   clock is a `BTreeMap`), so replicas holding equal states have equal entry hashes.
//! * A leaf's hash is the XOR of the entry hashes of its keys, and an interior node's hash is
//!   the XOR of its leaves (XOR combines as in Cassandra's `MerkleTree`): a write changes one
//!   leaf by `old_entry_hash ^ new_entry_hash`, in O(1), and the result does not depend on the
//!   order of the writes. An empty subtree hashes to 0.
//!
//! Nothing of the tree is written by the write path: a key's segment is part of its key in
//! the data env (`kv` key `[partition: u16 BE][segment: u16 BE][stored key]`, see
//! [`crate::store`]), so a segment is one contiguous key range of the data and its entries are
//! one range scan of it, hashing each record as it is read
//! ([`crate::Partition::segment_entries`]). The leaf hashes live in memory: the data env's
//! writer updates them after each commit, a clean shutdown checkpoints them, and an open
//! without a checkpoint rebuilds them by one scan of the partition's keys.
//!
//! A tree with no key allocates no leaves ([`MerkleTree::is_allocated`]): an idle node holds
//! no 32 KiB leaf array per empty partition.
//!
//! [`differing_children`] and [`diff_entries`] are the two steps of an exchange, shared by the
//! vnode and the `aae_figures` example.

use crate::StorageError;
use std::collections::HashMap;
use xxhash_rust::xxh3::{xxh3_128, Xxh3};

/// Children per interior node.
pub const FANOUT: u32 = 16;
/// Levels below the root; leaves (segments) are at level [`DEPTH`].
pub const DEPTH: u32 = 3;
/// Number of leaves: `FANOUT^DEPTH` = 4096.
pub const SEGMENTS: u32 = FANOUT.pow(DEPTH);
/// Bits of the key hash that name the segment: log2([`SEGMENTS`]) = 12.
pub const SEGMENT_BITS: u32 = SEGMENTS.trailing_zeros();
/// Hash of a stored key (`[bucket length][bucket][key]`, see [`crate::keys::storage_key`]):
/// xxh3-128. Its top bits pick the key's segment ([`segment_of`]). The chunks of one large
/// value ([`crate::large`]) hash without their chunk index, so they share a segment and lie
/// together in the partition's key order.
pub fn key_hash(storage_key: &[u8]) -> u128 {
    xxh3_128(crate::large::segment_prefix(storage_key))
}

/// Segment (leaf index, `0..4096`) of a key hash: its top [`SEGMENT_BITS`] bits.
pub fn segment_of(key_hash: u128) -> u32 {
    (key_hash >> (128 - SEGMENT_BITS)) as u32
}

/// Hash of one key's stored state: xxh3-64 over `[stored key length: u32 BE][stored key]
/// [record bytes]`. The length prefix keeps `(key, record)` pairs from colliding by moving
/// bytes between the two parts.
pub fn entry_hash(storage_key: &[u8], record_bytes: &[u8]) -> u64 {
    let mut h = Xxh3::new();
    h.update(&(storage_key.len() as u32).to_be_bytes());
    h.update(storage_key);
    h.update(record_bytes);
    h.digest()
}

/// Number of nodes at `level` (`16^level`), or `None` past [`DEPTH`].
pub fn nodes_at(level: u32) -> Option<u32> {
    (level <= DEPTH).then(|| FANOUT.pow(level))
}

/// The in-memory hash tree of one partition: the [`SEGMENTS`] leaf hashes, allocated on the
/// first non-zero toggle (an empty tree holds none and reads as all zeros). Interior nodes
/// are computed from the leaves when asked (at most 4096 XORs per request).
#[derive(Clone, Debug, Default)]
pub struct MerkleTree {
    /// `None` while every leaf is 0; else [`SEGMENTS`] hashes.
    leaves: Option<Box<[u64]>>,
}

/// The leaves of a tree that has none allocated.
static ZERO_LEAVES: [u64; SEGMENTS as usize] = [0; SEGMENTS as usize];

impl PartialEq for MerkleTree {
    fn eq(&self, other: &Self) -> bool {
        self.leaves() == other.leaves()
    }
}

impl Eq for MerkleTree {}

impl MerkleTree {
    /// The tree of an empty partition: every hash 0, nothing allocated.
    pub fn new() -> Self {
        Self { leaves: None }
    }

    /// A tree with these leaf hashes (an all-zero slice allocates nothing).
    ///
    /// # Errors
    /// [`StorageError::Corrupt`] if `leaves` does not hold exactly [`SEGMENTS`] hashes.
    pub fn from_leaves(leaves: &[u64]) -> Result<Self, StorageError> {
        if leaves.len() != SEGMENTS as usize {
            return Err(StorageError::Corrupt(format!(
                "a hash tree has {SEGMENTS} leaves, not {}",
                leaves.len()
            )));
        }
        Ok(Self {
            leaves: leaves.iter().any(|&h| h != 0).then(|| leaves.into()),
        })
    }

    /// Builds a tree from `(stored key, record bytes)` pairs.
    pub fn from_records<'a>(records: impl IntoIterator<Item = (&'a [u8], &'a [u8])>) -> Self {
        let mut tree = Self::new();
        for (key, record) in records {
            tree.toggle(segment_of(key_hash(key)), entry_hash(key, record));
        }
        tree
    }

    /// XORs `hash` into leaf `segment` (adds or removes one entry hash; `old ^ new` replaces
    /// one), allocating the leaves on the first non-zero hash. Segments past the last are
    /// ignored.
    pub fn toggle(&mut self, segment: u32, hash: u64) {
        if hash == 0 || segment >= SEGMENTS {
            return;
        }
        let leaves = self
            .leaves
            .get_or_insert_with(|| vec![0; SEGMENTS as usize].into_boxed_slice());
        leaves[segment as usize] ^= hash;
    }

    /// Makes this the tree of an empty partition, freeing its leaves.
    pub fn clear(&mut self) {
        self.leaves = None;
    }

    /// True if the leaves are allocated ([`SEGMENTS`] x 8 bytes = 32 KiB); false for a tree
    /// that never held a non-zero hash since it was made or cleared.
    pub fn is_allocated(&self) -> bool {
        self.leaves.is_some()
    }

    /// The [`SEGMENTS`] leaf hashes, in segment order (all zeros if none are allocated).
    pub fn leaves(&self) -> &[u64] {
        self.leaves.as_deref().unwrap_or(&ZERO_LEAVES)
    }

    /// The root hash: the XOR of every entry hash.
    pub fn root(&self) -> u64 {
        self.leaves().iter().fold(0, |acc, h| acc ^ h)
    }

    /// Hash of node `index` at `level` (XOR of the leaves it covers); `None` if there is no
    /// such node.
    pub fn node(&self, level: u32, index: u32) -> Option<u64> {
        if index >= nodes_at(level)? {
            return None;
        }
        let width = FANOUT.pow(DEPTH - level) as usize;
        let start = index as usize * width;
        Some(
            self.leaves()[start..start + width]
                .iter()
                .fold(0, |acc, h| acc ^ h),
        )
    }

    /// For each node of `parents` (indices at `level - 1`), the hashes of its [`FANOUT`]
    /// children at `level`, concatenated in the order of `parents` (length
    /// `16 * parents.len()`). For `level` 0, `parents` must be `[0]` and the answer is
    /// `[root]`.
    ///
    /// # Errors
    /// [`StorageError::InvalidArgument`] if `level` > [`DEPTH`], a parent index is out of
    /// range for `level - 1`, `parents` has more entries than that level has nodes, or
    /// `level` is 0 and `parents` is not `[0]`.
    pub fn children(&self, level: u32, parents: &[u32]) -> Result<Vec<u64>, StorageError> {
        if level == 0 {
            if parents != [0] {
                return Err(StorageError::InvalidArgument(format!(
                    "level 0 holds the root only: parents must be [0], not {parents:?}"
                )));
            }
            return Ok(vec![self.root()]);
        }
        let parent_nodes = nodes_at(level - 1)
            .filter(|_| level <= DEPTH)
            .ok_or_else(|| {
                StorageError::InvalidArgument(format!(
                    "level {level} is past the leaves (depth {DEPTH})"
                ))
            })?;
        if parents.len() > parent_nodes as usize {
            return Err(StorageError::InvalidArgument(format!(
                "{} parents asked at level {}, which has {parent_nodes} nodes",
                parents.len(),
                level - 1
            )));
        }
        let mut out = Vec::with_capacity(parents.len() * FANOUT as usize);
        for &parent in parents {
            if parent >= parent_nodes {
                return Err(StorageError::InvalidArgument(format!(
                    "node {parent} does not exist at level {}, which has {parent_nodes} nodes",
                    level - 1
                )));
            }
            for child in parent * FANOUT..(parent + 1) * FANOUT {
                out.extend(self.node(level, child));
            }
        }
        Ok(out)
    }
}

/// One step of an exchange walk: given the children hashes both sides returned for the same
/// request (`level`, `parents`; see [`MerkleTree::children`]), the indices at `level` whose
/// hashes differ, in request order. A position that only one side answered counts as
/// differing; positions beyond what the request asked for are ignored. At level 0 the answer
/// is `[0]` if the roots differ, else empty.
pub fn differing_children(level: u32, parents: &[u32], ours: &[u64], theirs: &[u64]) -> Vec<u32> {
    let asked = if level == 0 {
        1
    } else {
        parents.len() * FANOUT as usize
    };
    let index = |pos: usize| -> u32 {
        if level == 0 {
            0
        } else {
            parents[pos / FANOUT as usize] * FANOUT + (pos % FANOUT as usize) as u32
        }
    };
    (0..asked.min(ours.len().max(theirs.len())))
        .filter(|&pos| ours.get(pos) != theirs.get(pos))
        .map(index)
        .collect()
}

/// The last step of an exchange: given both sides' `(segment, stored key, entry hash)`
/// entries of the same segments (see [`crate::Partition::segment_entries`]), the stored keys
/// present on one side only or with different entry hashes, sorted and without duplicates.
pub fn diff_entries(ours: &[(u32, Vec<u8>, u64)], theirs: &[(u32, Vec<u8>, u64)]) -> Vec<Vec<u8>> {
    let theirs_by_key: HashMap<&[u8], u64> = theirs
        .iter()
        .map(|(_, key, hash)| (key.as_slice(), *hash))
        .collect();
    let ours_by_key: HashMap<&[u8], u64> = ours
        .iter()
        .map(|(_, key, hash)| (key.as_slice(), *hash))
        .collect();
    let mut out: Vec<Vec<u8>> = ours
        .iter()
        .filter(|(_, key, hash)| theirs_by_key.get(key.as_slice()) != Some(hash))
        .chain(
            theirs
                .iter()
                .filter(|(_, key, _)| !ours_by_key.contains_key(key.as_slice())),
        )
        .map(|(_, key, _)| key.clone())
        .collect();
    out.sort_unstable();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shape_constants() {
        assert_eq!(SEGMENTS, 4096);
        assert_eq!(SEGMENT_BITS, 12);
        assert_eq!(segment_of(u128::MAX), 4095);
        assert_eq!(segment_of(1 << 116), 1);
        assert_eq!(nodes_at(3), Some(4096));
        assert_eq!(nodes_at(4), None);
    }

    #[test]
    fn leaves_are_allocated_on_the_first_nonzero_toggle_only() {
        let mut t = MerkleTree::new();
        assert!(!t.is_allocated());
        assert_eq!(t.leaves().len(), SEGMENTS as usize);
        assert_eq!(t.root(), 0);
        t.toggle(5, 0);
        t.toggle(SEGMENTS, 9);
        assert!(
            !t.is_allocated(),
            "a zero hash or a segment out of range allocates nothing"
        );
        assert_eq!(t, MerkleTree::new());
        t.toggle(5, 9);
        assert!(t.is_allocated());
        assert_eq!(t.leaves()[5], 9);
        let copy = MerkleTree::from_leaves(t.leaves()).unwrap();
        assert_eq!(copy, t);
        t.toggle(5, 9);
        assert!(t.is_allocated());
        assert_eq!(
            t,
            MerkleTree::new(),
            "equality compares hashes, not allocation"
        );
        t.clear();
        assert!(!t.is_allocated());
        assert!(!MerkleTree::from_leaves(&[0; SEGMENTS as usize])
            .unwrap()
            .is_allocated());
        assert!(matches!(
            MerkleTree::from_leaves(&[1; 3]),
            Err(StorageError::Corrupt(_))
        ));
    }

    #[test]
    fn entry_hash_is_length_prefixed() {
        assert_ne!(entry_hash(b"ab", b"c"), entry_hash(b"a", b"bc"));
    }

    #[test]
    fn nodes_are_xor_of_leaves_and_children_are_validated() {
        let mut t = MerkleTree::new();
        t.toggle(0, 1);
        t.toggle(4095, 2);
        t.toggle(300, 4);
        assert_eq!(t.root(), 7);
        assert_eq!(t.children(0, &[0]).unwrap(), vec![7]);
        let l1 = t.children(1, &[0]).unwrap();
        assert_eq!(l1.len(), 16);
        // Leaf 300 is under node 300 / 256 = 1 of level 1 and node 300 / 16 = 18 of level 2.
        assert_eq!((l1[0], l1[1], l1[2], l1[15]), (1, 4, 0, 2));
        assert_eq!(t.children(2, &[1, 15]).unwrap()[2], 4);
        assert_eq!(t.children(3, &[255]).unwrap()[15], 2);
        for (level, parents) in [
            (0, vec![]),
            (0, vec![1]),
            (1, vec![1]),
            (2, vec![16]),
            (4, vec![0]),
            (1, vec![0, 0]),
        ] {
            assert!(
                matches!(
                    t.children(level, &parents),
                    Err(StorageError::InvalidArgument(_))
                ),
                "{level} {parents:?}"
            );
        }
        t.toggle(300, 4);
        assert_eq!(t.root(), 3);
    }

    #[test]
    fn walk_helpers() {
        assert_eq!(differing_children(0, &[0], &[1], &[2]), vec![0]);
        assert!(differing_children(0, &[0], &[1], &[1]).is_empty());
        let mut ours = vec![0u64; 32];
        let theirs = vec![0u64; 32];
        ours[3] = 1;
        ours[16 + 15] = 1;
        assert_eq!(
            differing_children(2, &[4, 9], &ours, &theirs),
            vec![4 * 16 + 3, 9 * 16 + 15]
        );
        // A short answer: the missing positions differ.
        assert_eq!(
            differing_children(1, &[0], &[0; 16], &[0; 14]),
            vec![14, 15]
        );

        let a = vec![
            (1, b"k1".to_vec(), 1),
            (1, b"k2".to_vec(), 2),
            (2, b"k3".to_vec(), 3),
        ];
        let b = vec![
            (1, b"k1".to_vec(), 1),
            (1, b"k2".to_vec(), 9),
            (2, b"k4".to_vec(), 4),
        ];
        assert_eq!(
            diff_entries(&a, &b),
            vec![b"k2".to_vec(), b"k3".to_vec(), b"k4".to_vec()]
        );
        assert!(diff_entries(&a, &a).is_empty());
    }
}
