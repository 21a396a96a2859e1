//! ringkv's client wire protocol, as `api/PROTOCOL.md` specifies it: frames (a 4-byte
//! big-endian length, then one msgpack map), the request and answer maps, and the stable
//! error codes. No server dependencies: the Rust client and other tools build on this crate
//! alone.
//!
//! A frame is a 4-byte big-endian length `L` followed by `L` bytes of msgpack: one map.
//! Requests carry an `id` chosen by the client and an `op`; the answer to a request carries
//! the same `id`. Answers may come back in any order.
#![warn(missing_docs)]

use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

pub mod layout;
pub mod ring;
pub mod shape;

pub use layout::{LayoutError, LayoutInfo, LayoutNode};

/// The process group (ractor `pg`) of every node's KvGateway actor: the actors a client node
/// (`ringkv_client::actor`) calls, with requests in this protocol's msgpack.
pub const KV_GROUP: &str = "ringkv.kv";
/// Process group of one node's KvGateway: this prefix, then the node's name.
pub const KV_NODE_GROUP_PREFIX: &str = "ringkv.kv.";
/// Names of client nodes start with this (before the `@host`); node names may not.
pub const CLIENT_NAME_PREFIX: &str = "client-";
/// Version byte in front of every request and answer a client node exchanges with a
/// KvGateway (then the msgpack body of a request or answer frame, without its length).
pub const ACTOR_WIRE_V1: u8 = 1;

/// What a read returns: the live sibling values and the causal context to write back with.
/// No values means the key was never written or is deleted.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Fetched {
    /// Values of the live siblings (one unless there were concurrent writes).
    pub values: Vec<Vec<u8>>,
    /// Opaque causal context (empty for a key never written); pass it back unchanged.
    pub context: Vec<u8>,
}

/// Stable error codes of the protocol. The string form (`as_str`) is what goes on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorCode {
    /// The frame is not exactly one msgpack map with string keys of the documented shape.
    MalformedRequest,
    /// The frame is longer than the server's `max-frame-bytes`; the server closes the
    /// connection after this answer.
    FrameTooLarge,
    /// `op` names no operation.
    UnknownOp,
    /// The bucket is empty or too long.
    InvalidBucket,
    /// The key is empty or too long.
    InvalidKey,
    /// The value is over `max-value-bytes`.
    ValueTooLarge,
    /// The causal context fails its integrity check (modified, or from another cluster).
    BadContext,
    /// The write would make more siblings than allowed.
    TooManySiblings,
    /// The partition's storage is full (map limit or disk).
    StorageFull,
    /// Another storage failure.
    StorageError,
    /// No answer within the request's time limit.
    Timeout,
    /// The server has `max-connections` open; the connection is closed after this answer.
    TooManyConnections,
    /// The node's client listener speaks only TLS and this connection's first bytes were
    /// not a TLS handshake; the connection is closed after this answer.
    TlsRequired,
    /// The node is shutting down.
    ShuttingDown,
    /// Fewer replicas answered than the read or write quorum needs.
    QuorumFailed,
    /// `n`, `r` or `w` break `1 <= r, w <= n <= 3` (request or bucket properties).
    InvalidQuorum,
    /// The cluster has no committed layout yet.
    NoLayout,
    /// The write would make the key's record (all its siblings) larger than
    /// `max-record-bytes`; nothing was written.
    RecordTooLarge,
    /// The node has its maximum of requests or bytes in flight; nothing was done.
    Overloaded,
    /// Too few replicas were reachable (down, partitioned away, or suspected by the failure
    /// detector).
    Unreachable,
    /// A cluster administration request failed (nothing to commit, unknown node, ...).
    ClusterError,
    /// A conditional write (`if_none_match` or `if_match`) was refused: the key's state on a
    /// replica the write reached breaks the condition. The message names the condition and
    /// the replicas that refused; the write is not acknowledged.
    ConditionFailed,
    /// A streamed put names an upload that is not open on this connection: never begun,
    /// already committed or aborted, or ended by an earlier error.
    UploadUnknown,
    /// A `put_chunk`'s `seq` is not the next one expected (a repeat, or one past the window).
    UploadGap,
    /// A streamed put sent more bytes than its declared `size` or than `max-value-bytes`.
    UploadOverrun,
    /// A `put_commit` came before the declared `size` was sent.
    UploadIncomplete,
    /// The upload received no frame for `upload-idle-ms` and was abandoned.
    UploadTimeout,
    /// The `crc32` given at `put_commit` is not the CRC-32 of the bytes received.
    ChecksumMismatch,
    /// `get_range`: the key (or the version asked for) holds no live value.
    NotFound,
    /// `get_range` without `version` on a key with several live versions.
    Siblings,
    /// `get_range`: `offset` past the end of the value.
    InvalidRange,
    /// Strong bucket: no majority of the key's replicas answered before anything was
    /// proposed; nothing was written (a definite failure: retrying is safe).
    NoMajority,
    /// Strong bucket: the write was sent to the key's replicas but no majority confirmed it
    /// in time. The outcome is unknown (an indeterminate result): it may or may not have
    /// taken effect, and may still take effect. Read the key to find out.
    Indeterminate,
    /// The operation or option does not apply to the bucket's consistency: `cas` on an
    /// eventual bucket; streaming (`put_begin`), `ttl_ms`, `if_match` or `local` on a strong one.
    WrongConsistency,
}

impl ErrorCode {
    /// The wire form, e.g. `"invalid_key"`.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::MalformedRequest => "malformed_request",
            ErrorCode::FrameTooLarge => "frame_too_large",
            ErrorCode::UnknownOp => "unknown_op",
            ErrorCode::InvalidBucket => "invalid_bucket",
            ErrorCode::InvalidKey => "invalid_key",
            ErrorCode::ValueTooLarge => "value_too_large",
            ErrorCode::BadContext => "bad_context",
            ErrorCode::TooManySiblings => "too_many_siblings",
            ErrorCode::StorageFull => "storage_full",
            ErrorCode::StorageError => "storage_error",
            ErrorCode::Timeout => "timeout",
            ErrorCode::TooManyConnections => "too_many_connections",
            ErrorCode::TlsRequired => "tls_required",
            ErrorCode::ShuttingDown => "shutting_down",
            ErrorCode::QuorumFailed => "quorum_failed",
            ErrorCode::InvalidQuorum => "invalid_quorum",
            ErrorCode::NoLayout => "no_layout",
            ErrorCode::RecordTooLarge => "record_too_large",
            ErrorCode::Overloaded => "overloaded",
            ErrorCode::Unreachable => "unreachable",
            ErrorCode::ClusterError => "cluster_error",
            ErrorCode::ConditionFailed => "condition_failed",
            ErrorCode::UploadUnknown => "upload_unknown",
            ErrorCode::UploadGap => "upload_gap",
            ErrorCode::UploadOverrun => "upload_overrun",
            ErrorCode::UploadIncomplete => "upload_incomplete",
            ErrorCode::UploadTimeout => "upload_timeout",
            ErrorCode::ChecksumMismatch => "checksum_mismatch",
            ErrorCode::NotFound => "not_found",
            ErrorCode::Siblings => "siblings",
            ErrorCode::InvalidRange => "invalid_range",
            ErrorCode::NoMajority => "no_majority",
            ErrorCode::Indeterminate => "indeterminate",
            ErrorCode::WrongConsistency => "wrong_consistency",
        }
    }
}

impl std::str::FromStr for ErrorCode {
    type Err = UnknownErrorCode;

    /// The code whose wire form is `s` (the inverse of [`ErrorCode::as_str`]).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        use ErrorCode::*;
        // Every variant: a new code goes here as well as in `as_str`.
        const ALL: [ErrorCode; 34] = [
            MalformedRequest,
            FrameTooLarge,
            UnknownOp,
            InvalidBucket,
            InvalidKey,
            ValueTooLarge,
            BadContext,
            TooManySiblings,
            StorageFull,
            StorageError,
            Timeout,
            TooManyConnections,
            TlsRequired,
            ShuttingDown,
            QuorumFailed,
            InvalidQuorum,
            NoLayout,
            RecordTooLarge,
            Overloaded,
            Unreachable,
            ClusterError,
            ConditionFailed,
            UploadUnknown,
            UploadGap,
            UploadOverrun,
            UploadIncomplete,
            UploadTimeout,
            ChecksumMismatch,
            NotFound,
            Siblings,
            InvalidRange,
            NoMajority,
            Indeterminate,
            WrongConsistency,
        ];
        ALL.into_iter()
            .find(|c| c.as_str() == s)
            .ok_or_else(|| UnknownErrorCode(s.to_string()))
    }
}

/// A string that is not the wire form of any [`ErrorCode`] (a code from a newer server).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown error code {0:?}")]
pub struct UnknownErrorCode(pub String);

/// An error answer: a stable code and a message for people.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}: {message}", code.as_str())]
pub struct ProtocolError {
    /// Stable code.
    pub code: ErrorCode,
    /// Human-readable detail (names the limit that was hit, where there is one).
    pub message: String,
}

impl ProtocolError {
    /// An error with `code` and `message`.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

/// A request frame's map, field by field, as it travels. Unknown fields are ignored so that
/// newer clients can talk to older servers.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct RequestFrame {
    /// Client-chosen request id, echoed in the answer.
    pub id: u64,
    /// `"ping"`, `"get"`, `"put"`, `"delete"`, `"cas"` (strong buckets), `"explain"`, the
    /// streaming and administration ops of PROTOCOL.md (or `"inject_fault"`, for tests).
    pub op: String,
    /// Bucket name (bin or str), 1 to 64 bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bucket: Option<ByteBuf>,
    /// Key (bin or str), 1 to 442 bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<ByteBuf>,
    /// Value (put), up to `max-value-bytes`. `cas`: the new value (absent: delete the key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<ByteBuf>,
    /// `cas`: the value the key must hold (absent: the key must be absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expect: Option<ByteBuf>,
    /// Causal context from an earlier get (put, delete); absent or empty for a blind write.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context: Option<ByteBuf>,
    /// Time limit of this request, ms; absent for the server's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// Put: answer with the key's values and context after the write.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub return_body: Option<bool>,
    /// Replicas to use (default: the bucket's `n`). Any unsigned integer is read; the node
    /// answers `invalid_quorum` unless `1 <= r, w <= n <= 3`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n: Option<u64>,
    /// Read quorum (default: the bucket's `r`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub r: Option<u64>,
    /// Write quorum (default: the bucket's `w`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub w: Option<u64>,
    /// Get: read only the answering node's own replica.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local: Option<bool>,
    /// Put, delete: write only if the key holds no live value (never written, or only
    /// tombstones); else `condition_failed`. Not with `if_match` (`malformed_request`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub if_none_match: Option<bool>,
    /// Put, delete: write only if `context` still covers every live version of the key
    /// (nothing was written since the read that gave it); else `condition_failed`. Not with
    /// `if_none_match` (`malformed_request`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub if_match: Option<bool>,
    /// cluster_leave, cluster_set: the node's name; cluster_replace: the node replaced (OLD).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// cluster_replace: the joining node that takes `node`'s place (NEW).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replacement: Option<String>,
    /// cluster_set: the node's new relative capacity. Any unsigned integer is read; the node
    /// answers `cluster_error` unless it is 1 to 2^32-1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity: Option<u64>,
    /// cluster_set: the node's new zone (failure domain), not empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
    /// bucket_set: the properties to set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub props: Option<BucketPropsFrame>,
    /// inject_fault: `"panic_vnode"` (default), `"panic_actor"`, `"isolate"` or
    /// `"weaken_strong"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fault: Option<String>,
    /// inject_fault `panic_actor`: `vnodes`, `replica`, `gossip`, `handoff`, `repair` or
    /// `listener`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
    /// inject_fault `isolate`: the node names this node stops exchanging cluster traffic
    /// with (empty heals).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peers: Option<Vec<String>>,
    /// inject_fault `weaken_strong`: `true` (the default) weakens, `false` restores.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on: Option<bool>,
    /// put, put_begin: time to live in milliseconds from the write; the value then reads as
    /// missing and is purged in the background.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_ms: Option<u64>,
    /// get: also answer `meta` (size, version id, checksum of each value) and leave the
    /// values of large (chunked) versions out of `values`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub meta: Option<bool>,
    /// put_begin: the value's total length in bytes, if known (optional).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    /// put_chunk, put_commit, put_abort: the upload id `put_begin` answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upload: Option<u64>,
    /// put_chunk: 0 for an upload's first chunk frame, one more for each next one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    /// put_chunk: the next bytes of the value, 1 to `chunk_bytes` of them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<ByteBuf>,
    /// put_commit: CRC-32 (IEEE 802.3, as zlib's `crc32`) of the whole value (optional).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crc32: Option<u64>,
    /// get_range: the version to read (from `meta`); required when the key has siblings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<ByteBuf>,
    /// get_range: first byte to read (default 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
    /// get_range: bytes to read (default and most: `max-range-bytes`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub length: Option<u64>,
    /// Any op: the layout version the client routes by (a `layout` answer's `version`). If
    /// the answering node's version differs, the answer carries its own in `layout`; absent,
    /// nothing changes (no extra bytes either way).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layout: Option<u64>,
}

/// What a `get` with `meta` says about one value, at the same index as the value.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ValueMeta {
    /// Length of the value, bytes.
    pub size: u64,
    /// True for a large (chunked) value: its bytes are not in `values`; read them with
    /// `get_range` and `version`.
    pub large: bool,
    /// The version id (16 bytes) of a large value; absent for a small one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<ByteBuf>,
    /// CRC-32 of a large value's bytes; absent for a small one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crc32: Option<u32>,
}

/// Bucket properties as `bucket_set` takes them; absent fields keep their current value.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct BucketPropsFrame {
    /// Replicas per key. Any unsigned integer is read; the node answers `invalid_quorum`
    /// unless `1 <= r, w <= n <= 3`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n: Option<u64>,
    /// Read quorum.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub r: Option<u64>,
    /// Write quorum.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub w: Option<u64>,
    /// Default request time limit, ms (0: the node's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// Sloppy quorum with hinted handoff (true, the default) or strict quorum (false).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sloppy_quorum: Option<bool>,
    /// `"eventual"` (the default) or `"strong"` (linearizable keys). Fixed once the bucket
    /// holds data: see `bucket_set`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consistency: Option<String>,
    /// How later writes to the bucket are compressed: `"none"`, `"zstd"` (the default) or
    /// `"lz4"`. Any other string is answered with `malformed_request`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compression: Option<String>,
}

/// An answer frame's map.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResponseFrame {
    /// The id of the request answered (0 if the request's id could not be read).
    pub id: u64,
    /// True on success; false with `code` and `message` on error.
    pub ok: bool,
    /// get, and put with `return_body`: the live sibling values (empty: not found).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub values: Option<Vec<ByteBuf>>,
    /// get, and put with `return_body`: the causal context to write back with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context: Option<ByteBuf>,
    /// Administration answers (cluster_*, bucket_get) and explain: a map described in
    /// PROTOCOL.md.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub info: Option<serde_json::Value>,
    /// get with `meta`: one entry per value of `values`, in the same order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub meta: Option<Vec<ValueMeta>>,
    /// put_begin: the upload id to name in put_chunk, put_commit and put_abort.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upload: Option<u64>,
    /// put_begin: most bytes per put_chunk `data`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chunk_bytes: Option<u64>,
    /// put_begin: most put_chunk frames a client may have unanswered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<u64>,
    /// put_chunk: bytes of the upload accepted so far.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub received: Option<u64>,
    /// get_range: the bytes read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<ByteBuf>,
    /// get_range: where `value` starts in the whole value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
    /// get_range, put_commit: length of the whole value, bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    /// get_range, put_commit: the version id of a large value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<ByteBuf>,
    /// get_range, put_commit: CRC-32 of the whole value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crc32: Option<u32>,
    /// Error code (see [`ErrorCode`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    /// Error message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The answering node's layout version ([`LayoutInfo::version`]), present only when the
    /// request carried `layout` and that differs: the client should fetch the layout again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layout: Option<u64>,
}

impl ResponseFrame {
    /// A bare success.
    pub fn ok(id: u64) -> Self {
        Self {
            id,
            ok: true,
            ..Default::default()
        }
    }

    /// A success carrying values and context.
    pub fn fetched(id: u64, f: Fetched) -> Self {
        Self {
            id,
            ok: true,
            values: Some(f.values.into_iter().map(ByteBuf::from).collect()),
            context: Some(ByteBuf::from(f.context)),
            ..Default::default()
        }
    }

    /// An error answer.
    pub fn error(id: u64, e: &ProtocolError) -> Self {
        Self {
            id,
            ok: false,
            code: Some(e.code.as_str().to_string()),
            message: Some(e.message.clone()),
            ..Default::default()
        }
    }

    /// Encodes this answer as a whole frame (length prefix included).
    pub fn encode(&self) -> Vec<u8> {
        encode_frame(self)
    }
}

/// The `id` of a request frame whose body is only partly known (`prefix`, the first bytes
/// of the body): the value of the top-level key `id` if it ends before the prefix does, else
/// 0.
pub fn recover_id(prefix: &[u8]) -> u64 {
    shape::check(prefix).id.unwrap_or(0)
}

/// Encodes `msg` as a frame: 4-byte big-endian length, then msgpack with named fields.
pub fn encode_frame<T: Serialize>(msg: &T) -> Vec<u8> {
    let mut out = vec![0u8; 4];
    rmp_serde::encode::write_named(&mut out, msg).expect("encoding into a Vec cannot fail");
    let len = (out.len() - 4) as u32;
    out[..4].copy_from_slice(&len.to_be_bytes());
    out
}

/// Why a frame could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The announced length is over the limit.
    #[error("frame of {len} bytes is over the maximum of {max} bytes (max-frame-bytes)")]
    TooLarge {
        /// Announced length, bytes.
        len: usize,
        /// Limit, bytes.
        max: usize,
    },
    /// The stream ended inside a frame.
    #[error("connection closed inside a frame")]
    Truncated,
    /// An I/O error.
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
}

/// Reads one frame body into `buf` (resized to fit). Returns `Ok(false)` on a clean end of
/// stream between frames.
///
/// # Errors
/// [`FrameError::TooLarge`] before reading the body, [`FrameError::Truncated`],
/// [`FrameError::Io`].
pub async fn read_frame<R: AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut Vec<u8>,
    max: usize,
) -> Result<bool, FrameError> {
    let mut len = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        let n = r.read(&mut len[got..]).await?;
        if n == 0 {
            return if got == 0 {
                Ok(false)
            } else {
                Err(FrameError::Truncated)
            };
        }
        got += n;
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > max {
        return Err(FrameError::TooLarge { len, max });
    }
    buf.clear();
    buf.resize(len, 0);
    match r.read_exact(buf).await {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Err(FrameError::Truncated),
        Err(e) => Err(e.into()),
    }
}

/// Writes the encoded frames that arrive on `frames` to `w` until the channel closes (then
/// shuts the write side down) or a write fails. Every frame already queued is written before
/// a flush, so pipelined frames share syscalls. Used by the server's connections and by the
/// client.
pub async fn write_frames<W: AsyncWrite + Unpin>(
    w: W,
    mut frames: tokio::sync::mpsc::UnboundedReceiver<Vec<u8>>,
) {
    let mut w = tokio::io::BufWriter::with_capacity(64 << 10, w);
    while let Some(frame) = frames.recv().await {
        if w.write_all(&frame).await.is_err() {
            return;
        }
        while let Ok(frame) = frames.try_recv() {
            if w.write_all(&frame).await.is_err() {
                return;
            }
        }
        if w.flush().await.is_err() {
            return;
        }
    }
    let _ = w.shutdown().await;
}
