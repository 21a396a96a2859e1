//! Partitioning of the key space.
//!
//! A key's partition is `hash(bucket, key) >> (64 - log2(Q))`: the top bits of a 64-bit hash,
//! so the partitions are Q equal arcs of the 64-bit ring (Dynamo's "strategy 3", Riak's ring).
//! The hash is XXH3-64 with seed 0 (xxHash's specification, frozen since 0.8.0) over
//! `[len(bucket) as u8] ++ bucket ++ key`, so it is the same on every platform, build and
//! version of ringkv. The length prefix keeps `("ab", "c")` and `("a", "bc")` apart.
//!
//! The functions live in [`ringkv_proto::ring`] and are re-exported here: the partition-aware
//! client routes each key with the very same code the nodes place it with.

pub use ringkv_proto::ring::{partition_for, ring_position, MAX_PARTITIONS};

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn hash_is_stable() {
        // Pinned values: a change here moves every key of every existing cluster.
        assert_eq!(ring_position(b"users", b"alice"), 0x4a05_8153_8dec_7ad0);
        assert_eq!(partition_for(b"users", b"alice", 64), 18);
        assert_eq!(partition_for(b"users", b"alice", 1), 0);
        assert_ne!(ring_position(b"ab", b"c"), ring_position(b"a", b"bc"));
    }

    #[test]
    fn keys_spread_evenly() {
        let q = 64;
        let mut counts = vec![0u32; q as usize];
        for i in 0..64_000u32 {
            counts[partition_for(b"b", &i.to_be_bytes(), q) as usize] += 1;
        }
        let (min, max) = (counts.iter().min().unwrap(), counts.iter().max().unwrap());
        assert!(*min > 800 && *max < 1200, "min {min} max {max}");
    }

    proptest! {
        #[test]
        fn partition_in_range(bucket in prop::collection::vec(any::<u8>(), 1..64),
                              key in prop::collection::vec(any::<u8>(), 1..64),
                              bits in 0u32..17) {
            let q = 1u32 << bits;
            prop_assert!(partition_for(&bucket, &key, q) < q);
        }

        /// The client's partition (the proto crate's function, which `ringkv_client` calls)
        /// is the nodes' for any key, and both are the top bits of a one-shot XXH3-64 of the
        /// length-prefixed bytes, as PROTOCOL.md tells clients in other languages.
        #[test]
        fn client_and_nodes_agree(bucket in prop::collection::vec(any::<u8>(), 1..65),
                                  key in prop::collection::vec(any::<u8>(), 1..443),
                                  bits in 0u32..17) {
            let q = 1u32 << bits;
            let nodes = crate::partition_for(&bucket, &key, q);
            let client = ringkv_proto::ring::partition_for(&bucket, &key, q);
            prop_assert_eq!(nodes, client);
            let mut bytes = vec![bucket.len() as u8];
            bytes.extend_from_slice(&bucket);
            bytes.extend_from_slice(&key);
            let reference = if bits == 0 {
                0
            } else {
                (xxhash_rust::xxh3::xxh3_64(&bytes) >> (64 - bits)) as u32
            };
            prop_assert_eq!(nodes, reference);
        }
    }
}
