//! Partitioning of the key space.
//!
//! A key's partition is `hash(bucket, key) >> (64 - log2(Q))`: the top bits of a 64-bit hash,
//! so the partitions are Q equal arcs of the 64-bit ring (Dynamo's "strategy 3", Riak's ring).
//! The hash is XXH3-64 with seed 0 (xxHash's specification, frozen since 0.8.0) over
//! `[len(bucket) as u8] ++ bucket ++ key`, so it is the same on every platform, build and
//! version of ringkv. The length prefix keeps `("ab", "c")` and `("a", "bc")` apart.

use xxhash_rust::xxh3::Xxh3;

/// Largest partition count.
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
/// of two (see [`crate::config::NodeConfig::validate`]).
pub fn partition_for(bucket: &[u8], key: &[u8], partitions: u32) -> u32 {
    debug_assert!(partitions.is_power_of_two());
    let bits = partitions.trailing_zeros();
    if bits == 0 {
        return 0;
    }
    (ring_position(bucket, key) >> (64 - bits)) as u32
}

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
    }
}
