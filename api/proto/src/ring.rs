//! Partitioning of the key space: which partition a key belongs to. This is the one
//! definition that the nodes (`ringkv_cluster::ring` re-exports it) and the partition-aware
//! client (`ringkv_client::ClusterClient`) both use, so the two cannot disagree.
//!
//! A key's partition is `hash(bucket, key) >> (64 - log2(Q))`: the top bits of a 64-bit hash,
//! so the partitions are Q equal arcs of the 64-bit ring (Dynamo's "strategy 3", Riak's ring).
//! The hash is XXH3-64 with seed 0 (xxHash's specification, frozen since 0.8.0) over
//! `[len(bucket) as u8] ++ bucket ++ key`, so it is the same on every platform, build and
//! version of ringkv, and a client in another language computes it with any XXH3 library
//! (PROTOCOL.md, "layout"). The length prefix keeps `("ab", "c")` and `("a", "bc")` apart.

use xxhash_rust::xxh3::Xxh3;

/// Largest partition count Q (a ring has at most 65536 partitions, numbered as a `u16`).
pub const MAX_PARTITIONS: u32 = 1 << 16;

/// The 64-bit ring position of `(bucket, key)`. Buckets longer than 255 bytes are not valid
/// anywhere in ringkv; only the low byte of the length enters the hash.
pub fn ring_position(bucket: &[u8], key: &[u8]) -> u64 {
    let mut h = Xxh3::new();
    h.update(&[bucket.len() as u8]);
    h.update(bucket);
    h.update(key);
    h.digest()
}

/// The partition, in `0..partitions`, that owns `(bucket, key)`. `partitions` must be a power
/// of two (the nodes' configuration checks it; a client checks the Q a node sends); for any
/// other value the result is still below `partitions` when `partitions > 0` (the top bits of
/// the largest power of two below it), and 0 when it is 0 or 1.
pub fn partition_for(bucket: &[u8], key: &[u8], partitions: u32) -> u32 {
    let bits = match partitions {
        0 | 1 => return 0,
        q => 31 - q.leading_zeros(),
    };
    (ring_position(bucket, key) >> (64 - bits)) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_is_stable() {
        // Pinned values: a change here moves every key of every existing cluster (the same
        // values are pinned in ringkv_cluster::ring's tests).
        assert_eq!(ring_position(b"users", b"alice"), 0x4a05_8153_8dec_7ad0);
        assert_eq!(partition_for(b"users", b"alice", 64), 18);
        assert_eq!(partition_for(b"users", b"alice", 1), 0);
        assert_ne!(ring_position(b"ab", b"c"), ring_position(b"a", b"bc"));
    }

    #[test]
    fn the_hash_is_xxh3_of_the_length_prefixed_concatenation() {
        // What a client in another language computes with a one-shot XXH3-64.
        for (bucket, key) in [
            (&b"users"[..], &b"alice"[..]),
            (b"b", b""),
            (&[7u8; 64], b"k"),
        ] {
            let mut bytes = vec![bucket.len() as u8];
            bytes.extend_from_slice(bucket);
            bytes.extend_from_slice(key);
            assert_eq!(
                ring_position(bucket, key),
                xxhash_rust::xxh3::xxh3_64(&bytes)
            );
        }
    }

    #[test]
    fn any_partition_count_stays_in_range() {
        for q in [0u32, 1, 2, 3, 5, 63, 64, 100, MAX_PARTITIONS, u32::MAX] {
            for i in 0..200u32 {
                let p = partition_for(b"b", &i.to_be_bytes(), q);
                assert!(p < q.max(1), "q {q} gave {p}");
            }
        }
    }
}
