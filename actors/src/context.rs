//! Sealed causal contexts: what a client gets with a read and passes back with a write.
//!
//! A client must hand a context back exactly as it got it. The node does not trust those
//! bytes: a context changed on the way (one flipped bit, a truncation, a context of another
//! cluster) could still decode into some version vector, and the write would then silently
//! make a sibling or replace versions its writer never saw. So every context the node hands
//! out is sealed with a keyed checksum, and a write whose context does not open is refused
//! with [`StorageError::BadContext`] (`bad_context` on the wire).
//!
//! # Layout
//!
//! ```text
//! offset 0      1 byte    version, CONTEXT_VERSION (1)
//! offset 1      L bytes   the version vector: VersionVector::to_context, a msgpack array
//!                         of [replica: u64, counter: u64] pairs
//! offset 1 + L  8 bytes   check, big-endian: xxh3_64_with_seed(bytes 0 .. 1 + L, seed)
//! ```
//!
//! The seed is derived from the cluster cookie (`NodeConfig::cookie`), so every node of a
//! cluster opens every other node's contexts and a context of another cluster fails to open;
//! a node without a cookie uses a fixed seed. The empty context (a key never written, or a
//! blind write) stays empty: it is not sealed, and it opens to the empty vector.
//!
//! This is an integrity check, not authentication: xxh3 is not a MAC, and a client that
//! wanted to could learn to forge contexts. It catches accidents, bugs in clients, and
//! contexts carried to the wrong cluster.

use crate::node::{Fetched, Node};
use ringkv_storage::{DvvSet, StorageError, VersionVector};
use xxhash_rust::xxh3::{xxh3_64, xxh3_64_with_seed};

/// The version byte that starts every sealed context.
pub const CONTEXT_VERSION: u8 = 1;

/// Bytes a seal adds to the encoded vector: the version byte and the 8-byte check.
pub const SEAL_OVERHEAD: usize = 1 + 8;

/// Seed of the checksum when the node has no cookie.
const NO_COOKIE_SEED: u64 = 0x7269_6e67_6b76_6331; // "ringkvc1"

/// The secret-ish seed of context checksums, derived from the cluster cookie.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ContextKey(u64);

impl ContextKey {
    /// The key of a cluster with this cookie (`None` or empty: the fixed seed of a node
    /// without a cookie).
    pub fn new(cookie: Option<&str>) -> ContextKey {
        match cookie.filter(|c| !c.is_empty()) {
            None => ContextKey(NO_COOKIE_SEED),
            Some(c) => {
                let mut input = b"ringkv context seal v1\0".to_vec();
                input.extend_from_slice(c.as_bytes());
                ContextKey(xxh3_64(&input))
            }
        }
    }
}

/// Seals `vv` into a context for a client (empty for the empty vector). See the module docs
/// for the layout.
pub fn seal(key: ContextKey, vv: &VersionVector) -> Vec<u8> {
    let vector = vv.to_context();
    if vector.is_empty() {
        return vector;
    }
    let mut out = Vec::with_capacity(vector.len() + SEAL_OVERHEAD);
    out.push(CONTEXT_VERSION);
    out.extend_from_slice(&vector);
    let check = xxh3_64_with_seed(&out, key.0);
    out.extend_from_slice(&check.to_be_bytes());
    out
}

/// Opens a context a client passed back: the version vector [`seal`] sealed into it. The empty
/// context opens to the empty vector (a blind write).
///
/// # Errors
/// [`StorageError::BadContext`], saying the context was modified or is from another cluster,
/// when it is too short, its version is unknown or its check does not match.
pub fn open(key: ContextKey, context: &[u8]) -> Result<VersionVector, StorageError> {
    if context.is_empty() {
        return Ok(VersionVector::new());
    }
    let bad = |why: String| {
        StorageError::BadContext(format!(
            "the context was modified or is from another cluster ({why}); pass back a context exactly as a get returned it"
        ))
    };
    if context.len() <= SEAL_OVERHEAD {
        return Err(bad(format!("{} bytes is too short", context.len())));
    }
    let (body, check) = context.split_at(context.len() - 8);
    let check = u64::from_be_bytes(check.try_into().expect("8 bytes"));
    if body[0] != CONTEXT_VERSION {
        return Err(bad(format!("unknown context version {}", body[0])));
    }
    if xxh3_64_with_seed(body, key.0) != check {
        return Err(bad("integrity check failed".into()));
    }
    VersionVector::from_context(&body[1..])
}

impl Fetched {
    /// What a read answers for the key state `d` at `now_ms` (this node's clock, ms since the
    /// Unix epoch): its live values, decompressed (none may exceed `max_value_len` bytes), and
    /// its sealed context.
    ///
    /// Expired values are left out here, where a state becomes a client's answer, and nowhere
    /// earlier: the records that replicas, read repair, hints and anti-entropy exchange keep
    /// them (a merge must still see them), and the context keeps covering them, so a write
    /// with it replaces them as it replaces any value it read.
    ///
    /// # Errors
    /// [`ringkv_storage::StorageError::Corrupt`] if a stored value does not decompress.
    pub(crate) fn sealed(
        d: DvvSet,
        key: ContextKey,
        max_value_len: usize,
        now_ms: u64,
    ) -> Result<Fetched, ringkv_storage::StorageError> {
        Ok(Fetched {
            values: d.decoded_values(max_value_len, now_ms)?,
            context: seal(key, d.context()),
        })
    }
}

impl Node {
    /// The key this node seals and opens contexts with (from its cookie).
    pub(crate) fn context_key(&self) -> ContextKey {
        ContextKey::new(self.config().cookie.as_deref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringkv_storage::Dot;

    fn vector() -> VersionVector {
        let mut vv = VersionVector::new();
        vv.add(Dot {
            replica: 0x1234_5678_9abc_def0,
            counter: 3,
        });
        vv.add(Dot {
            replica: 7,
            counter: 1,
        });
        vv
    }

    #[test]
    fn a_sealed_context_opens_to_its_vector_and_has_the_documented_layout() {
        let key = ContextKey::new(Some("cookie"));
        let sealed = seal(key, &vector());
        let plain = vector().to_context();
        assert_eq!(sealed.len(), plain.len() + SEAL_OVERHEAD);
        assert_eq!(sealed[0], CONTEXT_VERSION);
        assert_eq!(&sealed[1..1 + plain.len()], &plain[..]);
        let check = xxh3_64_with_seed(&sealed[..1 + plain.len()], key.0);
        assert_eq!(&sealed[1 + plain.len()..], &check.to_be_bytes());
        assert_eq!(open(key, &sealed).unwrap(), vector());
    }

    #[test]
    fn the_empty_context_stays_empty() {
        let key = ContextKey::new(None);
        assert!(seal(key, &VersionVector::new()).is_empty());
        assert_eq!(open(key, &[]).unwrap(), VersionVector::new());
    }

    #[test]
    fn every_single_bit_flip_is_refused() {
        let key = ContextKey::new(None);
        let sealed = seal(key, &vector());
        for bit in 0..sealed.len() * 8 {
            let mut c = sealed.clone();
            c[bit / 8] ^= 1 << (bit % 8);
            let e = open(key, &c).unwrap_err();
            assert!(
                matches!(&e, StorageError::BadContext(m) if m.contains("modified") && m.contains("another cluster")),
                "bit {bit}: {e}"
            );
        }
    }

    #[test]
    fn truncated_extended_foreign_and_unsealed_contexts_are_refused() {
        let ours = ContextKey::new(Some("ours"));
        let sealed = seal(ours, &vector());
        let mut longer = sealed.clone();
        longer.push(0);
        for c in [
            &sealed[..sealed.len() - 1],
            &sealed[..SEAL_OVERHEAD],
            &longer[..],
            &vector().to_context()[..],
            b"\x01",
        ] {
            assert!(open(ours, c).is_err(), "{c:x?}");
        }
        for other in [ContextKey::new(Some("theirs")), ContextKey::new(None)] {
            assert_ne!(other, ours);
            assert!(open(other, &sealed).is_err());
        }
        assert_eq!(ContextKey::new(Some("")), ContextKey::new(None));
    }
}
