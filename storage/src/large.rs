//! Large values: a manifest in the key's record and chunks beside it in the key's partition
//! (the model is Riak CS's manifests and blocks, and Garage's block references).
//!
//! A value longer than the node's `chunk-bytes` is cut into chunks of `chunk-bytes` each (the
//! last one shorter). Each chunk is an ordinary record in an **internal bucket**: byte 0
//! followed by the owner's bucket name ([`chunk_bucket`]), under the 20-byte key
//! `[version id: 16 bytes][chunk index: u32 big-endian]` ([`chunk_key`]). The node stores it
//! in the **owner key's partition** (the coordinator is given the owner's placement), so the
//! chunks are replicated, hinted, repaired by anti-entropy, transferred and cleared with the
//! key, by the same code as every other record. Client bucket names may not start with byte
//! 0 ([`crate::keys::validate`]), so the two never meet. The chunks of one version hash to
//! one Merkle segment ([`segment_prefix`]) and lie together in key order.
//!
//! Before its first chunk an upload writes a **head** record under index [`HEAD_INDEX`],
//! whose value is the owner's stored key: the garbage collector finds a version by its head
//! and asks every replica of the owner whether a manifest still refers to it.
//!
//! The key's own record holds the value's [`Manifest`] as a sibling value with
//! [`crate::Codec::Manifest`], written after every chunk is on `w` nodes: a reader sees the
//! whole value or none of it. Siblings of a large value each have their own version id and
//! chunks.

use crate::StorageError;
use serde::{Deserialize, Serialize};

/// First byte of an internal chunk bucket's name.
pub const CHUNK_BUCKET_PREFIX: u8 = 0;

/// Chunk index of a version's head record.
pub const HEAD_INDEX: u32 = u32::MAX;

/// Length of a version id, bytes.
pub const VERSION_LEN: usize = 16;

/// Length of a chunk key: version id and index.
pub const CHUNK_KEY_LEN: usize = VERSION_LEN + 4;

/// A large value's version id: 16 random bytes made by the node that began the upload.
pub type VersionId = [u8; VERSION_LEN];

/// The internal bucket holding the chunks of `owner`'s large values: byte 0, then `owner`.
pub fn chunk_bucket(owner: &[u8]) -> Vec<u8> {
    let mut b = Vec::with_capacity(owner.len() + 1);
    b.push(CHUNK_BUCKET_PREFIX);
    b.extend_from_slice(owner);
    b
}

/// The owner bucket of an internal chunk bucket; `None` for any other bucket.
pub fn owner_bucket(bucket: &[u8]) -> Option<&[u8]> {
    match bucket.split_first() {
        Some((&CHUNK_BUCKET_PREFIX, owner)) if !owner.is_empty() => Some(owner),
        _ => None,
    }
}

/// The key of chunk `index` of version `version` (or its head, index [`HEAD_INDEX`]).
pub fn chunk_key(version: &VersionId, index: u32) -> [u8; CHUNK_KEY_LEN] {
    let mut k = [0u8; CHUNK_KEY_LEN];
    k[..VERSION_LEN].copy_from_slice(version);
    k[VERSION_LEN..].copy_from_slice(&index.to_be_bytes());
    k
}

/// Splits a chunk key into its version id and index.
pub fn parse_chunk_key(key: &[u8]) -> Option<(VersionId, u32)> {
    if key.len() != CHUNK_KEY_LEN {
        return None;
    }
    let version: VersionId = key[..VERSION_LEN].try_into().ok()?;
    let index = u32::from_be_bytes(key[VERSION_LEN..].try_into().ok()?);
    Some((version, index))
}

/// If `stored` (a stored key) is a chunk's, `(owner bucket, version, index)`.
pub fn parse_stored_chunk(stored: &[u8]) -> Option<(&[u8], VersionId, u32)> {
    let (bucket, key) = crate::keys::split_storage_key(stored)?;
    let owner = owner_bucket(bucket)?;
    let (version, index) = parse_chunk_key(key)?;
    Some((owner, version, index))
}

/// The part of a stored key that picks its Merkle segment: the whole key, except for a
/// chunk key, which leaves out its index so that a version's chunks share a segment.
pub fn segment_prefix(stored: &[u8]) -> &[u8] {
    match crate::keys::split_storage_key(stored) {
        Some((bucket, key)) if owner_bucket(bucket).is_some() && key.len() == CHUNK_KEY_LEN => {
            &stored[..stored.len() - 4]
        }
        _ => stored,
    }
}

/// What the key's record holds for a large value: enough to read any range of it and to
/// check every byte.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// The version id naming its chunks.
    #[serde(with = "serde_bytes")]
    pub version: Vec<u8>,
    /// Length of the value, bytes.
    pub size: u64,
    /// Length of every chunk but the last, bytes.
    pub chunk_bytes: u32,
    /// CRC-32 (IEEE) of the whole value.
    pub crc32: u32,
    /// CRC-32 of each chunk's bytes (before compression), in order.
    pub chunks: Vec<u32>,
}

impl Manifest {
    /// Encodes it (msgpack with field names) as a sibling value.
    pub fn encode(&self) -> Vec<u8> {
        rmp_serde::to_vec_named(self).expect("encoding into a Vec cannot fail")
    }

    /// Decodes a sibling value of codec [`crate::Codec::Manifest`].
    ///
    /// # Errors
    /// [`StorageError::Corrupt`] if the bytes are not a consistent manifest (version id of 16
    /// bytes, chunk count matching the size).
    pub fn decode(bytes: &[u8]) -> Result<Manifest, StorageError> {
        let m: Manifest = rmp_serde::from_slice(bytes)
            .map_err(|e| StorageError::Corrupt(format!("large value manifest: {e}")))?;
        let expected = if m.chunk_bytes == 0 {
            None
        } else {
            Some(m.size.div_ceil(m.chunk_bytes as u64))
        };
        if m.version.len() != VERSION_LEN || expected != Some(m.chunks.len() as u64) {
            return Err(StorageError::Corrupt(format!(
                "large value manifest: {} chunks of {} bytes for {} bytes, version id of {} bytes",
                m.chunks.len(),
                m.chunk_bytes,
                m.size,
                m.version.len()
            )));
        }
        Ok(m)
    }

    /// The version id.
    pub fn version_id(&self) -> VersionId {
        let mut v = [0u8; VERSION_LEN];
        v.copy_from_slice(&self.version);
        v
    }

    /// Length of chunk `index`, bytes.
    pub fn chunk_len(&self, index: u32) -> usize {
        let start = index as u64 * self.chunk_bytes as u64;
        (self.size.saturating_sub(start)).min(self.chunk_bytes as u64) as usize
    }
}

/// CRC-32 (IEEE 802.3, zlib's) of `bytes`.
pub fn crc32(bytes: &[u8]) -> u32 {
    crc32fast::hash(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_keys_round_trip_and_share_a_segment() {
        let v = [7u8; 16];
        let b = chunk_bucket(b"photos");
        assert_eq!(owner_bucket(&b), Some(&b"photos"[..]));
        assert_eq!(owner_bucket(b"photos"), None);
        let k0 = crate::keys::storage_key(&b, &chunk_key(&v, 0)).unwrap();
        let k9 = crate::keys::storage_key(&b, &chunk_key(&v, 9)).unwrap();
        let head = crate::keys::storage_key(&b, &chunk_key(&v, HEAD_INDEX)).unwrap();
        assert_eq!(parse_stored_chunk(&k9), Some((&b"photos"[..], v, 9)));
        let seg = |k: &[u8]| crate::merkle::segment_of(crate::merkle::key_hash(k));
        assert_eq!(seg(&k0), seg(&k9));
        assert_eq!(seg(&k0), seg(&head));
        // A client's key of 20 bytes in a client bucket hashes whole.
        let plain = crate::keys::storage_key(b"photos", &chunk_key(&v, 0)).unwrap();
        assert_eq!(segment_prefix(&plain), &plain[..]);
        // Clients cannot name the internal bucket; storage can.
        assert_eq!(
            crate::keys::validate(&b, b"k").unwrap_err(),
            StorageError::ReservedBucket
        );
        let longest = chunk_bucket(&[1; crate::keys::MAX_BUCKET_LEN]);
        assert!(crate::keys::storage_key(&longest, &chunk_key(&v, 0)).is_ok());
        assert!(crate::keys::storage_key(&chunk_bucket(&[0, 1]), b"k").is_err());
    }

    #[test]
    fn manifests_round_trip_and_refuse_inconsistent_bytes() {
        let m = Manifest {
            version: vec![1; 16],
            size: 2_500_000,
            chunk_bytes: 1 << 20,
            crc32: 5,
            chunks: vec![1, 2, 3],
        };
        assert_eq!(Manifest::decode(&m.encode()).unwrap(), m);
        assert_eq!(m.chunk_len(0), 1 << 20);
        assert_eq!(m.chunk_len(2), 2_500_000 - 2 * (1 << 20));
        let short = Manifest {
            chunks: vec![1, 2],
            ..m.clone()
        };
        assert!(Manifest::decode(&short.encode()).is_err());
        assert!(Manifest::decode(b"\x01\x02").is_err());
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }
}
