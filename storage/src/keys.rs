//! Bucket and key validation and the on-disk key layout.
//!
//! A stored key is `[bucket length: u8][bucket][key]`, so that every bucket's keys are
//! contiguous in LMDB's key order. The data env puts the partition number and the key's Merkle
//! segment (2 bytes each) before it ([`crate::store`]) and LMDB allows at most 511 bytes per
//! key, hence 4 + 1 + [`MAX_BUCKET_LEN`] + [`MAX_KEY_LEN`] = 511. Internal chunk buckets
//! ([`crate::large`]) are one byte longer but their keys are 20 bytes.

use crate::StorageError;

/// Largest bucket name, bytes.
pub const MAX_BUCKET_LEN: usize = 64;
/// Largest key, bytes.
pub const MAX_KEY_LEN: usize = 442;

/// Checks a client's bucket name and key against the limits. Buckets starting with byte 0
/// are ringkv's own (see [`crate::large::chunk_bucket`]) and refused here.
///
/// # Errors
/// [`StorageError::EmptyBucket`], [`StorageError::BucketTooLong`],
/// [`StorageError::ReservedBucket`], [`StorageError::EmptyKey`] or
/// [`StorageError::KeyTooLong`], each naming the limit.
pub fn validate(bucket: &[u8], key: &[u8]) -> Result<(), StorageError> {
    validate_bucket(bucket)?;
    validate_key(key)
}

/// Checks a stored bucket and key: a client's ([`validate`]) or an internal chunk bucket (byte
/// 0 followed by a valid client bucket name, see [`crate::large`]).
///
/// # Errors
/// As [`validate`], without [`StorageError::ReservedBucket`].
pub fn validate_stored(bucket: &[u8], key: &[u8]) -> Result<(), StorageError> {
    match crate::large::owner_bucket(bucket) {
        Some(owner) => validate_bucket(owner)?,
        None => validate_bucket(bucket)?,
    }
    validate_key(key)
}

fn validate_key(key: &[u8]) -> Result<(), StorageError> {
    if key.is_empty() {
        return Err(StorageError::EmptyKey { max: MAX_KEY_LEN });
    }
    if key.len() > MAX_KEY_LEN {
        return Err(StorageError::KeyTooLong {
            len: key.len(),
            max: MAX_KEY_LEN,
        });
    }
    Ok(())
}

/// Checks a bucket name against the limits: 1 to [`MAX_BUCKET_LEN`] bytes.
///
/// # Errors
/// [`StorageError::EmptyBucket`] or [`StorageError::BucketTooLong`], naming the limit.
pub fn validate_bucket(bucket: &[u8]) -> Result<(), StorageError> {
    if bucket.is_empty() {
        return Err(StorageError::EmptyBucket {
            max: MAX_BUCKET_LEN,
        });
    }
    if bucket.len() > MAX_BUCKET_LEN {
        return Err(StorageError::BucketTooLong {
            len: bucket.len(),
            max: MAX_BUCKET_LEN,
        });
    }
    if bucket[0] == crate::large::CHUNK_BUCKET_PREFIX {
        return Err(StorageError::ReservedBucket);
    }
    Ok(())
}

/// Validates and encodes `(bucket, key)` as a stored key (a client's bucket or an internal
/// chunk bucket).
///
/// # Errors
/// As [`validate_stored`].
pub fn storage_key(bucket: &[u8], key: &[u8]) -> Result<Vec<u8>, StorageError> {
    validate_stored(bucket, key)?;
    let mut out = Vec::with_capacity(1 + bucket.len() + key.len());
    out.push(bucket.len() as u8);
    out.extend_from_slice(bucket);
    out.extend_from_slice(key);
    Ok(out)
}

/// Splits a stored key back into `(bucket, key)`; `None` if it is not one.
pub fn split_storage_key(stored: &[u8]) -> Option<(&[u8], &[u8])> {
    let (&len, rest) = stored.split_first()?;
    let len = len as usize;
    (rest.len() > len).then(|| rest.split_at(len))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_are_named() {
        assert_eq!(
            validate(b"b", &[]).unwrap_err(),
            StorageError::EmptyKey { max: MAX_KEY_LEN }
        );
        assert_eq!(
            validate(b"b", &[0; MAX_KEY_LEN + 1]).unwrap_err(),
            StorageError::KeyTooLong {
                len: MAX_KEY_LEN + 1,
                max: MAX_KEY_LEN
            }
        );
        assert!(validate(b"", b"k").is_err());
        assert!(validate(&[1; MAX_BUCKET_LEN + 1], b"k").is_err());
        let msg = validate(b"b", &[0; 500]).unwrap_err().to_string();
        assert!(msg.contains("442"), "{msg}");
        assert!(validate(&[1; MAX_BUCKET_LEN], &[2; MAX_KEY_LEN]).is_ok());
    }

    #[test]
    fn stored_key_round_trips_and_fits_lmdb() {
        let k = storage_key(&[1; MAX_BUCKET_LEN], &[2; MAX_KEY_LEN]).unwrap();
        assert_eq!(crate::store::data_key(u16::MAX, &k).len(), 511);
        let (b, key) = split_storage_key(&k).unwrap();
        assert_eq!((b.len(), key.len()), (MAX_BUCKET_LEN, MAX_KEY_LEN));
        assert_eq!(split_storage_key(b"\x05ab"), None);
    }
}
