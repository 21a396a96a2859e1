//! The persisted form of a key's [`DvvSet`]: one version byte, then msgpack with named fields.
//!
//! Named fields and `#[serde(default)]` on fields added later let the format grow without a
//! migration; the version byte is for changes that cannot be made that way.

use crate::{DvvSet, StorageError};

/// Version byte of the current record format.
pub const RECORD_V1: u8 = 1;

/// Encodes a record: `[RECORD_V1][msgpack map of the DvvSet]`.
pub fn encode(record: &DvvSet) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + record.values().map(|v| v.len()).sum::<usize>());
    out.push(RECORD_V1);
    rmp_serde::encode::write_named(&mut out, record).expect("a DvvSet always encodes into a Vec");
    out
}

/// Decodes a record made by [`encode`].
///
/// # Errors
/// [`StorageError::Corrupt`] for an empty buffer, an unknown version byte or bad msgpack.
pub fn decode(bytes: &[u8]) -> Result<DvvSet, StorageError> {
    match bytes.split_first() {
        Some((&RECORD_V1, body)) => {
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
}
