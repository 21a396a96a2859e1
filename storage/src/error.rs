//! Errors of the storage layer.

use thiserror::Error;

/// Everything a storage operation can fail with. Messages name the limit that was hit.
#[derive(Debug, Error, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum StorageError {
    /// The bucket name is empty.
    #[error("bucket is empty: a bucket name needs 1 to {max} bytes")]
    EmptyBucket {
        /// Largest allowed bucket name, bytes.
        max: usize,
    },
    /// The bucket name is longer than allowed.
    #[error("bucket is {len} bytes, over the maximum of {max} bytes")]
    BucketTooLong {
        /// Length given, bytes.
        len: usize,
        /// Largest allowed, bytes.
        max: usize,
    },
    /// The bucket name starts with byte 0, which names ringkv's internal buckets (the
    /// chunks of large values).
    #[error("bucket names starting with byte 0x00 are reserved for ringkv's own data")]
    ReservedBucket,
    /// The key is empty.
    #[error("key is empty: a key needs 1 to {max} bytes")]
    EmptyKey {
        /// Largest allowed key, bytes.
        max: usize,
    },
    /// The key is longer than allowed.
    #[error("key is {len} bytes, over the maximum of {max} bytes")]
    KeyTooLong {
        /// Length given, bytes.
        len: usize,
        /// Largest allowed, bytes.
        max: usize,
    },
    /// A write would keep more concurrent siblings than the cap.
    #[error("the write would make more than {limit} siblings: read the key, resolve its siblings and write with the returned context")]
    TooManySiblings {
        /// The sibling cap.
        limit: usize,
    },
    /// The causal context given by a client does not decode.
    #[error("malformed causal context: {0}")]
    BadContext(String),
    /// The partition reached its largest allowed map size, or the disk is full.
    #[error("partition {partition} is full: {detail}")]
    Full {
        /// Partition number.
        partition: u32,
        /// What was full (map size limit or disk).
        detail: String,
    },
    /// Another process (another node) has the data directory open.
    #[error("the data directory {0} is in use by another process (its LOCK file is locked): two nodes cannot share a data directory")]
    Locked(String),
    /// A stored record does not decode (unknown version byte or broken msgpack).
    #[error("stored record is corrupt: {0}")]
    Corrupt(String),
    /// The data directory was made with other settings than the ones given now.
    #[error("data directory mismatch: {0}")]
    Mismatch(String),
    /// The data directory holds data in a format this version does not read (it is refused
    /// rather than misread). The message names the format and what to do.
    #[error("unsupported data format: {0}")]
    UnsupportedFormat(String),
    /// An LMDB or I/O error.
    #[error("storage I/O error: {0}")]
    Io(String),
    /// The partition is shutting down and takes no more writes.
    #[error("partition {0} is closed")]
    Closed(u32),
    /// An argument is outside what the operation accepts (a tree level or node index out of
    /// range, a malformed stored key, an owner name of the wrong length). The message names
    /// the argument and its allowed range.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// A write would make a key's record larger than `max-record-bytes`.
    #[error("the key's record would be {bytes} bytes, over the maximum of {limit} bytes (max-record-bytes): read the key, resolve its siblings and write with the returned context")]
    RecordTooLarge {
        /// Encoded size the record would have, bytes.
        bytes: usize,
        /// The limit, bytes.
        limit: usize,
    },
    /// A writer queue holds its maximum of waiting writes; nothing was written.
    #[error("the {store} write queue holds its maximum of {limit} writes; try again later")]
    Overloaded {
        /// Which store (`partition 3`, `hint store`).
        store: String,
        /// The queue's bound, writes.
        limit: usize,
    },
    /// The hint store reached its largest allowed map size, or the disk is full.
    #[error("the hint store is full: {0}")]
    HintStoreFull(String),
    /// A conditional write's condition does not hold on this replica; nothing was written
    /// here.
    #[error("condition {condition} failed: {detail}")]
    ConditionFailed {
        /// `if_none_match` or `if_match`.
        condition: String,
        /// Why the condition does not hold.
        detail: String,
    },
    /// The hint store is shutting down and takes no more writes.
    #[error("the hint store is closed")]
    HintStoreClosed,
}

impl StorageError {
    pub(crate) fn io(e: impl std::fmt::Display) -> Self {
        StorageError::Io(e.to_string())
    }
}
