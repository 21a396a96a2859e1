//! The client wire protocol (see `api/PROTOCOL.md`, the reference for other languages).
//!
//! A frame is a 4-byte big-endian length `L` followed by `L` bytes of msgpack: one map. Requests
//! carry an `id` chosen by the client and an `op`; the answer to a request carries the same
//! `id`. Answers may come back in any order.

use ringkv_actors::coordinator::QuorumCause;
use ringkv_actors::{Fetched, KvError, RequestOptions};
use ringkv_storage::StorageError;
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

pub mod shape;

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
            ErrorCode::ShuttingDown => "shutting_down",
            ErrorCode::QuorumFailed => "quorum_failed",
            ErrorCode::InvalidQuorum => "invalid_quorum",
            ErrorCode::NoLayout => "no_layout",
            ErrorCode::RecordTooLarge => "record_too_large",
            ErrorCode::Overloaded => "overloaded",
            ErrorCode::Unreachable => "unreachable",
            ErrorCode::ClusterError => "cluster_error",
        }
    }
}

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

impl From<KvError> for ProtocolError {
    fn from(e: KvError) -> Self {
        let code = match &e {
            KvError::Storage(s) => match s {
                StorageError::EmptyBucket { .. } | StorageError::BucketTooLong { .. } => {
                    ErrorCode::InvalidBucket
                }
                StorageError::EmptyKey { .. } | StorageError::KeyTooLong { .. } => {
                    ErrorCode::InvalidKey
                }
                StorageError::TooManySiblings { .. } => ErrorCode::TooManySiblings,
                StorageError::RecordTooLarge { .. } => ErrorCode::RecordTooLarge,
                StorageError::Overloaded { .. } => ErrorCode::Overloaded,
                StorageError::BadContext(_) => ErrorCode::BadContext,
                StorageError::Full { .. } | StorageError::HintStoreFull(_) => {
                    ErrorCode::StorageFull
                }
                StorageError::Closed(_) | StorageError::HintStoreClosed => ErrorCode::ShuttingDown,
                StorageError::Corrupt(_)
                | StorageError::Locked(_)
                | StorageError::Mismatch(_)
                | StorageError::Io(_)
                | StorageError::InvalidArgument(_) => ErrorCode::StorageError,
            },
            KvError::ValueTooLarge { .. } => ErrorCode::ValueTooLarge,
            KvError::Overloaded(_) => ErrorCode::Overloaded,
            KvError::ShuttingDown => ErrorCode::ShuttingDown,
            KvError::FaultInjectionDisabled => ErrorCode::UnknownOp,
            KvError::Quorum { cause, .. } => match cause {
                QuorumCause::Failed => ErrorCode::QuorumFailed,
                QuorumCause::Timeout => ErrorCode::Timeout,
                QuorumCause::Unreachable => ErrorCode::Unreachable,
                QuorumCause::StorageFull => ErrorCode::StorageFull,
                QuorumCause::Overloaded => ErrorCode::Overloaded,
            },
            KvError::BadQuorum(_) => ErrorCode::InvalidQuorum,
            KvError::NoLayout => ErrorCode::NoLayout,
            KvError::Admin(_) => ErrorCode::ClusterError,
        };
        ProtocolError::new(code, e.to_string())
    }
}

/// A fault to inject (op `inject_fault`, testing only, needs `fault-injection`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Panic the vnode that owns `(bucket, key)`.
    PanicVnode {
        /// Bucket.
        bucket: Vec<u8>,
        /// Key.
        key: Vec<u8>,
    },
    /// Panic the supervised actor of this type: `vnodes`, `replica`, `gossip`, `handoff`,
    /// `repair` or `listener`.
    PanicActor(String),
    /// Drop all cluster traffic to and from these nodes (replaces the previous set; empty
    /// heals): a network partition inside the node's cluster layer.
    Isolate(Vec<String>),
}

/// A request frame's map, field by field, as it travels. Unknown fields are ignored so that
/// newer clients can talk to older servers.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct RequestFrame {
    /// Client-chosen request id, echoed in the answer.
    pub id: u64,
    /// `"ping"`, `"get"`, `"put"`, `"delete"` (or `"inject_fault"`, for tests).
    pub op: String,
    /// Bucket name (bin or str), 1 to 64 bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bucket: Option<ByteBuf>,
    /// Key (bin or str), 1 to 446 bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<ByteBuf>,
    /// Value (put), up to `max-value-bytes`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<ByteBuf>,
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
    /// cluster_leave: the node's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// bucket_set: the properties to set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub props: Option<BucketPropsFrame>,
    /// inject_fault: `"panic_vnode"` (default), `"panic_actor"` or `"isolate"`.
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
    /// Administration answers (cluster_*, bucket_get): a map described in PROTOCOL.md.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub info: Option<serde_json::Value>,
    /// Error code (see [`ErrorCode`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    /// Error message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
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

/// A validated request.
#[derive(Clone, Debug)]
pub enum Request {
    /// Liveness check; answered `{id, ok: true}`.
    Ping,
    /// Read a key.
    Get {
        /// Bucket.
        bucket: Vec<u8>,
        /// Key.
        key: Vec<u8>,
        /// Per-request settings.
        opts: RequestOptions,
    },
    /// Write a value.
    Put {
        /// Bucket.
        bucket: Vec<u8>,
        /// Key.
        key: Vec<u8>,
        /// Value.
        value: Vec<u8>,
        /// Causal context (may be empty).
        context: Vec<u8>,
        /// Answer with values and context.
        return_body: bool,
        /// Per-request settings.
        opts: RequestOptions,
    },
    /// The cluster as the answering node sees it.
    ClusterStatus,
    /// The layout the next commit would install.
    ClusterPlan,
    /// Install the planned layout.
    ClusterCommit,
    /// Mark a node as leaving.
    ClusterLeave {
        /// Its name.
        node: String,
    },
    /// A bucket's properties.
    BucketGet {
        /// Bucket.
        bucket: Vec<u8>,
    },
    /// Change a bucket's properties.
    BucketSet {
        /// Bucket.
        bucket: Vec<u8>,
        /// Fields to change.
        props: BucketPropsFrame,
    },
    /// Testing only (needs `fault-injection`): see [`Fault`].
    InjectFault(Fault),
    /// Delete a key (write a tombstone).
    Delete {
        /// Bucket.
        bucket: Vec<u8>,
        /// Key.
        key: Vec<u8>,
        /// Causal context (may be empty).
        context: Vec<u8>,
        /// Per-request settings.
        opts: RequestOptions,
    },
}

fn required(field: Option<ByteBuf>, name: &str, op: &str) -> Result<Vec<u8>, ProtocolError> {
    field.map(ByteBuf::into_vec).ok_or_else(|| {
        ProtocolError::new(
            ErrorCode::MalformedRequest,
            format!("op {op} needs the field {name}"),
        )
    })
}

impl Request {
    /// Decodes a frame body into its id and the validated request. The body must be one
    /// msgpack map with string keys and nothing after it, nested at most
    /// [`shape::MAX_NESTING`] levels deep. The id is recovered whenever that map has an
    /// unsigned integer under `"id"`, whatever else is wrong with it, so that every error can
    /// be answered to the right request.
    ///
    /// # Errors
    /// `(id, error)`: [`ErrorCode::MalformedRequest`] or [`ErrorCode::UnknownOp`], with the id
    /// (0 if unreadable).
    pub fn decode(body: &[u8]) -> Result<(u64, Request), (u64, ProtocolError)> {
        let shape = shape::check(body);
        let id = shape.id.unwrap_or(0);
        let malformed =
            |message: String| (id, ProtocolError::new(ErrorCode::MalformedRequest, message));
        if let Some(problem) = shape.problem {
            return Err(malformed(problem));
        }
        let mut de = rmp_serde::Deserializer::from_read_ref(body);
        // A backstop only: the shape check already refused deeper bodies (rmp_serde allows
        // one level less than its limit).
        de.set_max_depth(shape::MAX_NESTING + 1);
        let frame = RequestFrame::deserialize(&mut de).map_err(|e| {
            malformed(format!(
                "request is not a msgpack map of the documented fields: {e}"
            ))
        })?;
        Self::from_frame(frame)
            .map(|r| (id, r))
            .map_err(|e| (id, e))
    }

    fn from_frame(f: RequestFrame) -> Result<Request, ProtocolError> {
        let opts = RequestOptions {
            timeout: f.timeout_ms.map(Duration::from_millis),
            n: f.n,
            r: f.r,
            w: f.w,
            local: f.local.unwrap_or(false),
        };
        let op = f.op.as_str();
        Ok(match op {
            "ping" => Request::Ping,
            "get" => Request::Get {
                bucket: required(f.bucket, "bucket", op)?,
                key: required(f.key, "key", op)?,
                opts,
            },
            "put" => Request::Put {
                bucket: required(f.bucket, "bucket", op)?,
                key: required(f.key, "key", op)?,
                value: required(f.value, "value", op)?,
                context: f.context.map(ByteBuf::into_vec).unwrap_or_default(),
                return_body: f.return_body.unwrap_or(false),
                opts,
            },
            "delete" => Request::Delete {
                bucket: required(f.bucket, "bucket", op)?,
                key: required(f.key, "key", op)?,
                context: f.context.map(ByteBuf::into_vec).unwrap_or_default(),
                opts,
            },
            "cluster_status" => Request::ClusterStatus,
            "cluster_plan" => Request::ClusterPlan,
            "cluster_commit" => Request::ClusterCommit,
            "cluster_leave" => Request::ClusterLeave {
                node: f.node.ok_or_else(|| {
                    ProtocolError::new(ErrorCode::MalformedRequest, "op cluster_leave needs the field node")
                })?,
            },
            "bucket_get" => Request::BucketGet {
                bucket: required(f.bucket, "bucket", op)?,
            },
            "bucket_set" => Request::BucketSet {
                bucket: required(f.bucket, "bucket", op)?,
                props: f.props.ok_or_else(|| {
                    ProtocolError::new(ErrorCode::MalformedRequest, "op bucket_set needs the field props")
                })?,
            },
            "inject_fault" => Request::InjectFault(match f.fault.as_deref() {
                None | Some("panic_vnode") => Fault::PanicVnode {
                    bucket: required(f.bucket, "bucket", op)?,
                    key: required(f.key, "key", op)?,
                },
                Some("panic_actor") => Fault::PanicActor(f.actor.ok_or_else(|| {
                    ProtocolError::new(
                        ErrorCode::MalformedRequest,
                        "inject_fault panic_actor needs the field actor",
                    )
                })?),
                Some("isolate") => Fault::Isolate(f.peers.unwrap_or_default()),
                Some(other) => {
                    return Err(ProtocolError::new(
                        ErrorCode::MalformedRequest,
                        format!("unknown fault {other:?}; known: panic_vnode, panic_actor, isolate"),
                    ))
                }
            }),
            other => {
                return Err(ProtocolError::new(
                    ErrorCode::UnknownOp,
                    format!("unknown op {other:?}; known ops: ping, get, put, delete, cluster_status, cluster_plan, cluster_commit, cluster_leave, bucket_get, bucket_set"),
                ))
            }
        })
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

#[cfg(test)]
mod tests {
    use super::*;

    fn body(frame: &RequestFrame) -> Vec<u8> {
        encode_frame(frame)[4..].to_vec()
    }

    #[test]
    fn decodes_a_put_and_keeps_the_id_on_errors() {
        let f = RequestFrame {
            id: 42,
            op: "put".into(),
            bucket: Some(ByteBuf::from(b"b".to_vec())),
            key: Some(ByteBuf::from(b"k".to_vec())),
            value: Some(ByteBuf::from(vec![0, 255])),
            ..Default::default()
        };
        let (id, req) = Request::decode(&body(&f)).unwrap();
        assert_eq!(id, 42);
        assert!(matches!(req, Request::Put { value, .. } if value == vec![0, 255]));

        let missing = RequestFrame {
            value: None,
            ..f.clone()
        };
        let (id, e) = Request::decode(&body(&missing)).unwrap_err();
        assert_eq!((id, e.code), (42, ErrorCode::MalformedRequest));
        assert!(e.message.contains("value"));

        let unknown = RequestFrame {
            op: "frobnicate".into(),
            ..f
        };
        let (id, e) = Request::decode(&body(&unknown)).unwrap_err();
        assert_eq!((id, e.code), (42, ErrorCode::UnknownOp));
    }

    #[test]
    fn garbage_is_a_malformed_request() {
        for junk in [
            &b""[..],
            b"\xc1",
            b"\x93\x01\x02\x03",
            b"\xa5hello",
            b"\x81\xa2id\xa1x",
        ] {
            let (id, e) = Request::decode(junk).unwrap_err();
            assert_eq!((id, e.code), (0, ErrorCode::MalformedRequest), "{junk:?}");
        }
    }

    #[test]
    fn strings_are_accepted_for_bucket_and_key() {
        #[derive(Serialize)]
        struct Str {
            id: u64,
            op: &'static str,
            bucket: &'static str,
            key: &'static str,
        }
        let b = encode_frame(&Str {
            id: 1,
            op: "get",
            bucket: "users",
            key: "alice",
        });
        let (_, req) = Request::decode(&b[4..]).unwrap();
        assert!(
            matches!(req, Request::Get { bucket, key, .. } if bucket == b"users" && key == b"alice")
        );
    }

    /// A msgpack map body from `(key, encoded value)` pairs, in that order.
    fn raw_map(entries: &[(&str, Vec<u8>)]) -> Vec<u8> {
        assert!(entries.len() < 16);
        let mut out = vec![0x80 | entries.len() as u8];
        for (k, v) in entries {
            out.extend(rmp_serde::to_vec(k).unwrap());
            out.extend(v);
        }
        out
    }

    fn val<T: Serialize>(v: T) -> Vec<u8> {
        rmp_serde::to_vec(&v).unwrap()
    }

    /// `[[[...nil...]]]`, `depth` arrays deep.
    fn nested(depth: usize) -> Vec<u8> {
        let mut out = vec![0x91; depth];
        out.push(0xc0);
        out
    }

    #[test]
    fn arrays_and_maps_without_string_keys_are_malformed() {
        // [1, "ping"]: the fields by position.
        let array = val((1u64, "ping"));
        // {0: 1, 1: "ping"}: the fields by index.
        let int_keys = b"\x82\x00\x01\x01\xa4ping".to_vec();
        // {bin "id": 1, bin "op": "ping"}.
        let bin_keys = b"\x82\xc4\x02id\x01\xc4\x02op\xa4ping".to_vec();
        for body in [array, int_keys, bin_keys] {
            let (id, e) = Request::decode(&body).unwrap_err();
            assert_eq!((id, e.code), (0, ErrorCode::MalformedRequest), "{body:x?}");
            assert!(e.message.contains("string keys"), "{}", e.message);
        }
        // A readable id is kept even when another key is not a string.
        let mut mixed = raw_map(&[("id", val(7u64)), ("op", val("ping"))]);
        mixed[0] += 1;
        mixed.extend(b"\x03\x01");
        let (id, e) = Request::decode(&mixed).unwrap_err();
        assert_eq!((id, e.code), (7, ErrorCode::MalformedRequest));
        // bucket_set's props must be a map with string keys too.
        let props_array = raw_map(&[
            ("id", val(8u64)),
            ("op", val("bucket_set")),
            ("bucket", val("b")),
            ("props", val((1u8, 1u8, 1u8))),
        ]);
        let (id, e) = Request::decode(&props_array).unwrap_err();
        assert_eq!((id, e.code), (8, ErrorCode::MalformedRequest));
    }

    #[test]
    fn trailing_bytes_are_malformed_and_keep_the_id() {
        let ping = RequestFrame {
            id: 5,
            op: "ping".into(),
            ..Default::default()
        };
        for tail in [&b"\xc0"[..], b"\x81\xa2id\x06", b"\x00\x00"] {
            let mut b = body(&ping);
            b.extend(tail);
            let (id, e) = Request::decode(&b).unwrap_err();
            assert_eq!((id, e.code), (5, ErrorCode::MalformedRequest), "{tail:x?}");
            assert!(e.message.contains("trailing"), "{}", e.message);
        }
    }

    #[test]
    fn quorum_fields_take_any_unsigned_integer() {
        for n in [0u64, 4, 255, 256, u64::MAX] {
            let b = raw_map(&[
                ("id", val(3u64)),
                ("op", val("get")),
                ("bucket", val("b")),
                ("key", val("k")),
                ("n", val(n)),
                ("r", val(n)),
                ("w", val(n)),
            ]);
            let (id, req) = Request::decode(&b).unwrap();
            assert_eq!(id, 3);
            let Request::Get { opts, .. } = req else {
                panic!("{req:?}")
            };
            assert_eq!([opts.n, opts.r, opts.w], [Some(n); 3]);
        }
        // A negative number is not a quorum size.
        let b = raw_map(&[("id", val(3u64)), ("op", val("get")), ("n", val(-1i64))]);
        let (id, e) = Request::decode(&b).unwrap_err();
        assert_eq!((id, e.code), (3, ErrorCode::MalformedRequest));
    }

    #[test]
    fn the_id_is_recovered_past_a_too_deeply_nested_field() {
        // rmp_serde alone fails the whole decode past 1024 levels (or overflows the stack
        // first); the shape check answers without recursing, whatever the depth.
        for depth in [shape::MAX_NESTING, 1100, 200_000] {
            let deep = nested(depth);
            for b in [
                raw_map(&[("id", val(9u64)), ("op", val("ping")), ("x", deep.clone())]),
                raw_map(&[("op", val("ping")), ("x", deep.clone()), ("id", val(9u64))]),
                raw_map(&[("x", deep.clone()), ("id", val(9u64)), ("op", val(5u8))]),
            ] {
                let (id, e) = Request::decode(&b).unwrap_err();
                assert_eq!(
                    (id, e.code),
                    (9, ErrorCode::MalformedRequest),
                    "depth {depth}"
                );
                assert!(e.message.contains("nested"), "{}", e.message);
            }
        }
        // One level less is fine: unknown keys are ignored.
        let b = raw_map(&[
            ("id", val(9u64)),
            ("op", val("ping")),
            ("x", nested(shape::MAX_NESTING - 1)),
        ]);
        let got = Request::decode(&b);
        assert!(matches!(got, Ok((9, Request::Ping))), "{got:?}");
        // Huge announced lengths end at the frame's end, not in a loop or an allocation.
        let b = raw_map(&[("x", b"\xdd\xff\xff\xff\xff".to_vec()), ("id", val(9u64))]);
        let (id, e) = Request::decode(&b).unwrap_err();
        assert_eq!((id, e.code), (0, ErrorCode::MalformedRequest));
        // A negative or non-integer id is unreadable.
        for idv in [val(-4i64), val("9"), val(1.5f64)] {
            let b = raw_map(&[("id", idv), ("op", val("ping"))]);
            let (id, e) = Request::decode(&b).unwrap_err();
            assert_eq!((id, e.code), (0, ErrorCode::MalformedRequest));
        }
    }

    #[tokio::test]
    async fn frames_round_trip_and_limits_hold() {
        let resp = ResponseFrame::fetched(
            7,
            Fetched {
                values: vec![b"a".to_vec()],
                context: vec![1],
            },
        );
        let bytes = resp.encode();
        let mut r = &bytes[..];
        let mut buf = Vec::new();
        assert!(read_frame(&mut r, &mut buf, 1 << 20).await.unwrap());
        assert_eq!(rmp_serde::from_slice::<ResponseFrame>(&buf).unwrap(), resp);
        assert!(!read_frame(&mut r, &mut buf, 1 << 20).await.unwrap());

        let mut r = &bytes[..];
        assert!(matches!(
            read_frame(&mut r, &mut buf, 3).await,
            Err(FrameError::TooLarge { max: 3, .. })
        ));
        let mut r = &bytes[..bytes.len() - 1];
        assert!(matches!(
            read_frame(&mut r, &mut buf, 1 << 20).await,
            Err(FrameError::Truncated)
        ));
        let mut r = &bytes[..2];
        assert!(matches!(
            read_frame(&mut r, &mut buf, 1 << 20).await,
            Err(FrameError::Truncated)
        ));
    }
}
