//! The answer of op `layout`: what a partition-aware client routes by (PROTOCOL.md,
//! "`layout`"). The node sends it in the answer's `info` map; [`LayoutInfo::check`] is what a
//! client runs before trusting it.

use crate::ring::MAX_PARTITIONS;
use serde::{Deserialize, Serialize};

/// Most entries of one preference list a client accepts (a layout places 3 replicas per
/// partition; the bound leaves room for growth and refuses garbage).
pub const MAX_PREFERENCE_LIST: usize = 16;

/// Most nodes a client accepts in one layout answer.
pub const MAX_LAYOUT_NODES: usize = 4096;

/// One node of a [`LayoutInfo`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayoutNode {
    /// The node's name (`--name`).
    pub name: String,
    /// Its client address (`--listen`), `host:port`, as it announced it.
    pub client_addr: String,
    /// Up as the answering node's failure detector sees it (the answering node is always up).
    pub up: bool,
    /// Where it serves client nodes (`--actor-listen`), `host:port`; absent without one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor_addr: Option<String>,
}

/// The layout a client routes by: the `info` of a `layout` answer.
///
/// Preference lists name nodes by their index in `nodes`, so the answer takes a few bytes per
/// partition whatever the names' length: with fewer than 128 nodes each list of 3 is 4 bytes
/// of msgpack, 256 KiB for the largest ring (Q = 65536), well inside `max-frame-bytes`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayoutInfo {
    /// The answering node.
    pub node: String,
    /// The layout version whose preference lists these are: the one the answering node's
    /// coordinators use now (its read version, which lags the newest committed version while
    /// a layout change moves data). Answers carry it as `layout` when the request's differs.
    pub version: u64,
    /// The newest committed layout version (equal to `version` outside a layout change).
    pub layout_version: u64,
    /// Partition count Q, a power of two in `1..=65536`.
    pub partitions: u32,
    /// Every member (joining, active or leaving; removed ones left out), by name.
    pub nodes: Vec<LayoutNode>,
    /// For each partition `0..Q` in order, its preference list: indexes into `nodes`, primary
    /// first (at most 3 with the current layouts).
    pub preference_lists: Vec<Vec<u32>>,
}

/// Why a [`LayoutInfo`] cannot be routed by.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unusable layout answer: {0}")]
pub struct LayoutError(pub String);

impl LayoutInfo {
    /// Checks everything a client indexes by: Q a power of two in `1..=`[`MAX_PARTITIONS`],
    /// one preference list per partition, each of at most [`MAX_PREFERENCE_LIST`] distinct
    /// indexes into `nodes`, at most [`MAX_LAYOUT_NODES`] nodes with distinct names.
    ///
    /// # Errors
    /// [`LayoutError`] naming the first rule broken.
    pub fn check(&self) -> Result<(), LayoutError> {
        let q = self.partitions;
        if !q.is_power_of_two() || q > MAX_PARTITIONS {
            return Err(LayoutError(format!(
                "partitions {q} is not a power of two in 1..={MAX_PARTITIONS}"
            )));
        }
        if self.preference_lists.len() != q as usize {
            return Err(LayoutError(format!(
                "{} preference lists for {q} partitions",
                self.preference_lists.len()
            )));
        }
        if self.nodes.len() > MAX_LAYOUT_NODES {
            return Err(LayoutError(format!(
                "{} nodes, more than {MAX_LAYOUT_NODES}",
                self.nodes.len()
            )));
        }
        let mut names: Vec<&str> = self.nodes.iter().map(|n| n.name.as_str()).collect();
        names.sort_unstable();
        if names.windows(2).any(|w| w[0] == w[1]) {
            return Err(LayoutError("a node name appears twice".into()));
        }
        for (p, list) in self.preference_lists.iter().enumerate() {
            if list.len() > MAX_PREFERENCE_LIST {
                return Err(LayoutError(format!(
                    "partition {p} lists {} replicas, more than {MAX_PREFERENCE_LIST}",
                    list.len()
                )));
            }
            for (k, &i) in list.iter().enumerate() {
                if i as usize >= self.nodes.len() {
                    return Err(LayoutError(format!(
                        "partition {p} names node index {i} of {}",
                        self.nodes.len()
                    )));
                }
                if list[..k].contains(&i) {
                    return Err(LayoutError(format!(
                        "partition {p} names node index {i} twice"
                    )));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(q: u32, nodes: usize) -> LayoutInfo {
        LayoutInfo {
            node: "n1".into(),
            version: 2,
            layout_version: 2,
            partitions: q,
            nodes: (0..nodes)
                .map(|i| LayoutNode {
                    name: format!("n{}", i + 1),
                    client_addr: format!("127.0.0.{}:7379", i + 1),
                    up: true,
                    actor_addr: None,
                })
                .collect(),
            preference_lists: (0..q)
                .map(|p| {
                    (0..3u32.min(nodes as u32))
                        .map(|k| (p + k) % nodes as u32)
                        .collect()
                })
                .collect(),
        }
    }

    #[test]
    fn a_good_layout_passes_and_each_rule_is_checked() {
        assert_eq!(info(64, 3).check(), Ok(()));
        let mut bad = info(64, 3);
        bad.partitions = 48;
        assert!(bad.check().unwrap_err().0.contains("power of two"));
        let mut bad = info(64, 3);
        bad.preference_lists.pop();
        assert!(bad.check().unwrap_err().0.contains("63 preference lists"));
        let mut bad = info(64, 3);
        bad.preference_lists[5] = vec![0, 3];
        assert!(bad.check().unwrap_err().0.contains("index 3"));
        let mut bad = info(64, 3);
        bad.preference_lists[5] = vec![1, 1];
        assert!(bad.check().unwrap_err().0.contains("twice"));
        let mut bad = info(64, 3);
        bad.nodes[2].name = "n1".into();
        assert!(bad.check().unwrap_err().0.contains("appears twice"));
    }

    #[test]
    fn the_largest_ring_fits_a_frame() {
        let big = info(MAX_PARTITIONS, 100);
        let bytes = crate::encode_frame(&big);
        // 4 bytes per partition, plus the node table.
        assert!(bytes.len() < 300 << 10, "{} bytes", bytes.len());
        assert_eq!(big.check(), Ok(()));
    }
}
