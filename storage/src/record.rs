//! The persisted form of a key's [`DvvSet`]: one version byte, then msgpack with named fields.
//!
//! Named fields and `#[serde(default)]` on fields added later let the format grow without a
//! migration; the version byte is for changes that cannot be made that way.
//!
//! * [`RECORD_V1`]: every sibling's value is raw. Records written before compression existed,
//!   and records of raw values now, which are byte for byte what they were.
//! * [`RECORD_V2`]: the same msgpack, where a sibling may carry `codec` (`"zstd"`, `"lz4"`) and
//!   its value is compressed ([`crate::codec`]). A new version byte because a reader that
//!   ignored the field would hand compressed bytes to a client: code that knows only V1 refuses
//!   such a record instead.
//!
//! A sibling with a time to live carries `expires_at_ms` ([`crate::Sibling::expires_at_ms`])
//! in either version, without a new version byte: code from before TTLs ignores the field, so
//! it would serve such a value past its expiry and never purge it (upgrade every node before
//! clients use `ttl_ms`), but it hands out nothing wrong.
//!
//! [`decode_meta`] reads only what expiry and purging need (which siblings are tombstones,
//! their timestamps and expiries), skipping the value bytes without copying them, so a scan
//! for purge candidates costs the same for a 4 MiB value as for a 10-byte one.

use crate::{DvvSet, StorageError};
use serde::de::IgnoredAny;
use serde::Deserialize;

/// Version byte of records whose values are all raw.
pub const RECORD_V1: u8 = 1;

/// Version byte of records with at least one compressed value.
pub const RECORD_V2: u8 = 2;

/// Encodes a record: `[RECORD_V1 or RECORD_V2][msgpack map of the DvvSet]`, V2 when a sibling
/// is compressed.
pub fn encode(record: &DvvSet) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + record.values().map(|v| v.len()).sum::<usize>());
    out.push(if record.has_compressed() {
        RECORD_V2
    } else {
        RECORD_V1
    });
    rmp_serde::encode::write_named(&mut out, record).expect("a DvvSet always encodes into a Vec");
    out
}

/// Decodes a record made by [`encode`].
///
/// # Errors
/// [`StorageError::Corrupt`] for an empty buffer, an unknown version byte or bad msgpack.
pub fn decode(bytes: &[u8]) -> Result<DvvSet, StorageError> {
    match bytes.split_first() {
        Some((&(RECORD_V1 | RECORD_V2), body)) => {
            rmp_serde::from_slice(body).map_err(|e| StorageError::Corrupt(e.to_string()))
        }
        Some((v, _)) => Err(StorageError::Corrupt(format!("unknown record version {v}"))),
        None => Err(StorageError::Corrupt("empty record".into())),
    }
}

/// What [`decode_meta`] reads of a record: per sibling, in stored (dot) order, everything but
/// the value and the dot.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct RecordMeta {
    /// The siblings' metadata. The record's clock is skipped.
    #[serde(default)]
    pub siblings: Vec<SiblingMeta>,
}

/// One sibling's metadata ([`crate::Sibling`] without its value, codec and dot).
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct SiblingMeta {
    /// `Some` for a value (its bytes skipped), `None` for a tombstone.
    #[serde(default, rename = "value", deserialize_with = "present")]
    pub has_value: bool,
    /// [`crate::Sibling::timestamp_ms`]: ms since the Unix epoch.
    #[serde(default)]
    pub timestamp_ms: u64,
    /// [`crate::Sibling::expires_at_ms`]: ms since the Unix epoch, `None` for no expiry.
    #[serde(default)]
    pub expires_at_ms: Option<u64>,
}

/// Reads an optional value as whether it is there, skipping its bytes (a borrowed `bin`
/// ignored in place: nothing is copied).
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    Ok(Option::<IgnoredAny>::deserialize(d)?.is_some())
}

impl SiblingMeta {
    /// True if the sibling is a tombstone, or a value expired at `now_ms` (ms since the Unix
    /// epoch; see [`crate::Sibling::is_expired`]).
    pub fn is_absent(&self, now_ms: u64) -> bool {
        !self.has_value || self.expires_at_ms.is_some_and(|at| at <= now_ms)
    }
}

impl RecordMeta {
    /// True if no sibling is live at `now_ms` (ms since the Unix epoch): the record reads as
    /// missing ([`DvvSet::is_absent`]).
    pub fn is_absent(&self, now_ms: u64) -> bool {
        self.siblings.iter().all(|s| s.is_absent(now_ms))
    }

    /// True if the record may be purged under `before`: every sibling is a tombstone written
    /// before [`PurgeBefore::deleted_ms`] or a value that expired before
    /// [`PurgeBefore::expired_ms`]. A value without an expiry is never purgeable.
    pub fn is_purgeable(&self, before: PurgeBefore) -> bool {
        self.siblings
            .iter()
            .all(|s| match (s.has_value, s.expires_at_ms) {
                (false, _) => s.timestamp_ms < before.deleted_ms,
                (true, Some(at)) => at < before.expired_ms,
                (true, None) => false,
            })
    }
}

/// The cutoffs that make a record a purge candidate ([`RecordMeta::is_purgeable`],
/// [`crate::Partition::tombstones`]), both milliseconds since the Unix epoch. The caller
/// derives them from its clock: `now - tombstone grace` for tombstones, `now - tombstone grace
/// - max clock skew` for expired values (whose expiry comes from another node's clock).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PurgeBefore {
    /// Tombstones whose `timestamp_ms` is below this may be purged.
    pub deleted_ms: u64,
    /// Values whose `expires_at_ms` is below this may be purged.
    pub expired_ms: u64,
}

impl PurgeBefore {
    /// The same cutoff for both: tombstones written, and values expired, before `ms`.
    pub fn both(ms: u64) -> Self {
        Self {
            deleted_ms: ms,
            expired_ms: ms,
        }
    }
}

/// Decodes only the metadata of a record made by [`encode`] ([`RecordMeta`]): value bytes are
/// skipped in place, never copied or decompressed.
///
/// # Errors
/// [`StorageError::Corrupt`] for an empty buffer, an unknown version byte or bad msgpack.
pub fn decode_meta(bytes: &[u8]) -> Result<RecordMeta, StorageError> {
    match bytes.split_first() {
        Some((&(RECORD_V1 | RECORD_V2), body)) => {
            rmp_serde::from_slice(body).map_err(|e| StorageError::Corrupt(e.to_string()))
        }
        Some((v, _)) => Err(StorageError::Corrupt(format!("unknown record version {v}"))),
        None => Err(StorageError::Corrupt("empty record".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::VersionVector;

    #[test]
    fn round_trip_and_version_byte() {
        let mut d = DvvSet::new();
        d.update(
            &VersionVector::new(),
            42,
            Some(vec![0, 1, 2, 255]),
            1234,
            10,
        )
        .unwrap();
        d.update(&VersionVector::new(), 42, None, 1235, 10).unwrap();
        let bytes = encode(&d);
        assert_eq!(bytes[0], RECORD_V1);
        assert_eq!(decode(&bytes).unwrap(), d);
        // Values are msgpack bin, not arrays of integers.
        assert!(bytes.windows(4).any(|w| w == [0, 1, 2, 255]));
        assert!(decode(&[9, 1, 2]).is_err());
        assert!(decode(&[]).is_err());
        assert!(decode(&[RECORD_V1, 0xc1]).is_err());
    }

    /// A record as the code before compression wrote it (V1, siblings without `codec`),
    /// built by hand with the old field set.
    #[test]
    fn records_written_before_compression_still_decode() {
        #[derive(serde::Serialize)]
        struct OldSibling {
            dot: crate::Dot,
            #[serde(with = "serde_bytes")]
            value: Option<Vec<u8>>,
            timestamp_ms: u64,
        }
        #[derive(serde::Serialize)]
        struct OldRecord {
            clock: VersionVector,
            siblings: Vec<OldSibling>,
        }
        let dot = crate::Dot {
            replica: 42,
            counter: 1,
        };
        let mut clock = VersionVector::new();
        clock.add(dot);
        let old = OldRecord {
            clock,
            siblings: vec![OldSibling {
                dot,
                value: Some(b"old value".to_vec()),
                timestamp_ms: 7,
            }],
        };
        let mut bytes = vec![RECORD_V1];
        rmp_serde::encode::write_named(&mut bytes, &old).unwrap();
        let d = decode(&bytes).unwrap();
        assert_eq!(d.siblings[0].codec, crate::Codec::None);
        assert_eq!(
            d.decoded_values(100, 0).unwrap(),
            vec![b"old value".to_vec()]
        );
        assert_eq!(d.siblings[0].expires_at_ms, None);
        assert!(!decode_meta(&bytes).unwrap().is_absent(u64::MAX));
        // A raw record encodes exactly as before.
        assert_eq!(encode(&d), bytes);
    }

    #[test]
    fn compressed_values_make_v2_records_that_decode_back() {
        let value = b"abcdefgh".repeat(1000);
        let (codec, stored) = crate::codec::compress(crate::Codec::Zstd, value.clone());
        assert_eq!(codec, crate::Codec::Zstd);
        let mut d = DvvSet::new();
        d.update_encoded(&VersionVector::new(), 1, Some(stored), codec, 1, None, 10)
            .unwrap();
        d.update_encoded(
            &VersionVector::new(),
            2,
            Some(b"raw".to_vec()),
            crate::Codec::None,
            2,
            None,
            10,
        )
        .unwrap();
        let bytes = encode(&d);
        assert_eq!(bytes[0], RECORD_V2);
        assert!(bytes.len() < value.len() / 10);
        let back = decode(&bytes).unwrap();
        assert_eq!(back, d);
        assert_eq!(
            back.decoded_values(value.len(), 0).unwrap(),
            vec![value.clone(), b"raw".to_vec()]
        );
        // A corrupt compressed value is an error on read, not a panic.
        let mut bad = back.clone();
        bad.siblings[0].value.as_mut().unwrap().truncate(10);
        assert!(bad.decoded_values(value.len(), 0).is_err());
    }

    #[test]
    fn expiry_round_trips_and_only_expiring_records_carry_it() {
        let mut d = DvvSet::new();
        d.update_encoded(
            &VersionVector::new(),
            1,
            Some(b"short".to_vec()),
            crate::Codec::None,
            100,
            Some(30_100),
            10,
        )
        .unwrap();
        d.update(&VersionVector::new(), 2, Some(b"forever".to_vec()), 200, 10)
            .unwrap();
        let bytes = encode(&d);
        // Still a V1 record: expiry needs no new version byte.
        assert_eq!(bytes[0], RECORD_V1);
        assert_eq!(decode(&bytes).unwrap(), d);
        assert_eq!(
            decode(&bytes).unwrap().siblings[0].expires_at_ms,
            Some(30_100)
        );
        // The field is written once: for the expiring sibling only.
        let name = b"expires_at_ms";
        assert_eq!(bytes.windows(name.len()).filter(|w| w == name).count(), 1);
        let meta = decode_meta(&bytes).unwrap();
        assert_eq!(
            meta.siblings,
            vec![
                SiblingMeta {
                    has_value: true,
                    timestamp_ms: 100,
                    expires_at_ms: Some(30_100),
                },
                SiblingMeta {
                    has_value: true,
                    timestamp_ms: 200,
                    expires_at_ms: None,
                },
            ]
        );
    }

    #[test]
    fn metadata_decodes_without_the_values_and_judges_purges() {
        let big = vec![9u8; 4 << 20];
        let mut d = DvvSet::new();
        let (codec, stored) = crate::codec::compress(crate::Codec::Lz4, b"x".repeat(1 << 16));
        d.update_encoded(
            &VersionVector::new(),
            1,
            Some(stored),
            codec,
            10,
            Some(50),
            10,
        )
        .unwrap();
        d.update_encoded(
            &VersionVector::new(),
            2,
            Some(big),
            crate::Codec::None,
            20,
            Some(60),
            10,
        )
        .unwrap();
        let ctx = d.context().clone();
        let mut deleted = d.clone();
        deleted.update(&ctx, 3, None, 30, 10).unwrap();
        let meta = decode_meta(&encode(&d)).unwrap();
        assert_eq!(meta.siblings.len(), 2);
        assert!(meta.siblings.iter().all(|s| s.has_value));
        assert!(!meta.is_absent(59) && meta.is_absent(60));
        assert!(!meta.is_purgeable(PurgeBefore::both(60)));
        assert!(meta.is_purgeable(PurgeBefore::both(61)));
        // The cutoffs apply to their own kind of sibling.
        let tomb = decode_meta(&encode(&deleted)).unwrap();
        assert_eq!(
            tomb.siblings,
            vec![SiblingMeta {
                has_value: false,
                timestamp_ms: 30,
                expires_at_ms: None
            }]
        );
        assert!(tomb.is_purgeable(PurgeBefore {
            deleted_ms: 31,
            expired_ms: 0
        }));
        assert!(!tomb.is_purgeable(PurgeBefore {
            deleted_ms: 30,
            expired_ms: u64::MAX
        }));
        // A value without expiry is never purgeable; a corrupt record is an error.
        let mut forever = DvvSet::new();
        forever
            .update(&VersionVector::new(), 1, Some(b"v".to_vec()), 1, 10)
            .unwrap();
        assert!(!decode_meta(&encode(&forever))
            .unwrap()
            .is_purgeable(PurgeBefore::both(u64::MAX)));
        assert!(decode_meta(&[RECORD_V1, 0xc1]).is_err());
        assert!(decode_meta(&[7]).is_err());
    }
}
