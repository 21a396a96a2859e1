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

use crate::{DvvSet, StorageError};

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
        assert_eq!(d.decoded_values(100).unwrap(), vec![b"old value".to_vec()]);
        // A raw record encodes exactly as before.
        assert_eq!(encode(&d), bytes);
    }

    #[test]
    fn compressed_values_make_v2_records_that_decode_back() {
        let value = b"abcdefgh".repeat(1000);
        let (codec, stored) = crate::codec::compress(crate::Codec::Zstd, value.clone());
        assert_eq!(codec, crate::Codec::Zstd);
        let mut d = DvvSet::new();
        d.update_encoded(&VersionVector::new(), 1, Some(stored), codec, 1, 10)
            .unwrap();
        d.update_encoded(
            &VersionVector::new(),
            2,
            Some(b"raw".to_vec()),
            crate::Codec::None,
            2,
            10,
        )
        .unwrap();
        let bytes = encode(&d);
        assert_eq!(bytes[0], RECORD_V2);
        assert!(bytes.len() < value.len() / 10);
        let back = decode(&bytes).unwrap();
        assert_eq!(back, d);
        assert_eq!(
            back.decoded_values(value.len()).unwrap(),
            vec![value.clone(), b"raw".to_vec()]
        );
        // A corrupt compressed value is an error on read, not a panic.
        let mut bad = back.clone();
        bad.siblings[0].value.as_mut().unwrap().truncate(10);
        assert!(bad.decoded_values(value.len()).is_err());
    }
}
