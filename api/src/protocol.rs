//! The client wire protocol as the server uses it: everything of [`ringkv_proto`] (frames,
//! maps, error codes; see `api/PROTOCOL.md`), plus what needs the node: the validated
//! [`Request`] and the error code of each [`KvError`] ([`error_of`]).

use ringkv_actors::coordinator::QuorumCause;
use ringkv_actors::{KvError, RequestOptions};
use ringkv_storage::{Condition, StorageError};
use serde::Deserialize;
use serde_bytes::ByteBuf;
use std::time::Duration;

pub use ringkv_proto::*;

/// The protocol error a failed request is answered with (the most specific code).
pub fn error_of(e: KvError) -> ProtocolError {
    let code = match &e {
        KvError::Storage(s) => storage_code(s),
        KvError::Strong(s) => {
            use ringkv_actors::strong::StrongError as S;
            match s {
                S::ConditionFailed { .. } => ErrorCode::ConditionFailed,
                S::Unavailable(_) => ErrorCode::NoMajority,
                S::Indeterminate(_) => ErrorCode::Indeterminate,
                S::Storage(s) => storage_code(s),
                S::NoLayout => ErrorCode::NoLayout,
            }
        }
        KvError::WrongConsistency(_) => ErrorCode::WrongConsistency,
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
        KvError::Stream(s) => {
            use ringkv_actors::large::StreamError as S;
            match s {
                S::UnknownUpload(_) => ErrorCode::UploadUnknown,
                S::Gap { .. } => ErrorCode::UploadGap,
                S::Overrun { .. } => ErrorCode::UploadOverrun,
                S::Incomplete { .. } => ErrorCode::UploadIncomplete,
                S::Idle { .. } | S::TooLong { .. } => ErrorCode::UploadTimeout,
                S::Checksum { .. } => ErrorCode::ChecksumMismatch,
                S::BadChunk { .. } | S::TooLargeForGet { .. } => ErrorCode::ValueTooLarge,
                S::NotFound(_) => ErrorCode::NotFound,
                S::Siblings(_) => ErrorCode::Siblings,
                S::InvalidRange { .. } => ErrorCode::InvalidRange,
                S::ChunkUnavailable { .. } => ErrorCode::QuorumFailed,
            }
        }
    };
    ProtocolError::new(code, e.to_string())
}

/// The error code of a storage error.
fn storage_code(s: &StorageError) -> ErrorCode {
    match s {
        StorageError::EmptyBucket { .. }
        | StorageError::BucketTooLong { .. }
        | StorageError::ReservedBucket => ErrorCode::InvalidBucket,
        StorageError::EmptyKey { .. } | StorageError::KeyTooLong { .. } => ErrorCode::InvalidKey,
        StorageError::TooManySiblings { .. } => ErrorCode::TooManySiblings,
        StorageError::RecordTooLarge { .. } => ErrorCode::RecordTooLarge,
        StorageError::Overloaded { .. } => ErrorCode::Overloaded,
        StorageError::BadContext(_) => ErrorCode::BadContext,
        StorageError::ConditionFailed { .. } => ErrorCode::ConditionFailed,
        StorageError::Full { .. } | StorageError::HintStoreFull(_) => ErrorCode::StorageFull,
        StorageError::Closed(_) | StorageError::HintStoreClosed => ErrorCode::ShuttingDown,
        StorageError::Corrupt(_)
        | StorageError::Locked(_)
        | StorageError::Mismatch(_)
        | StorageError::UnsupportedFormat(_)
        | StorageError::Io(_)
        | StorageError::InvalidArgument(_) => ErrorCode::StorageError,
    }
}

/// Longest time to live a `put` accepts (`ttl_ms`): 100 years of 365.25 days, ms. Longer is
/// `malformed_request`: it is surely a unit mistake, and leave out `ttl_ms` for a value that
/// never expires.
pub const MAX_TTL_MS: u64 = 3_155_760_000_000;

/// The time to live of a request's `ttl_ms`: absent or 0 is none (the value never expires).
///
/// # Errors
/// [`ErrorCode::MalformedRequest`] naming [`MAX_TTL_MS`] if `ttl_ms` is over it.
pub fn ttl_of(ttl_ms: Option<u64>) -> Result<Option<Duration>, ProtocolError> {
    match ttl_ms {
        None | Some(0) => Ok(None),
        Some(ms) if ms <= MAX_TTL_MS => Ok(Some(Duration::from_millis(ms))),
        Some(ms) => Err(ProtocolError::new(
            ErrorCode::MalformedRequest,
            format!("ttl_ms {ms} is over the maximum of {MAX_TTL_MS} ms (100 years); leave it out for a value that never expires"),
        )),
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
    /// Weaken (`true`) or restore (`false`) this node's strong-bucket proposer: one replica
    /// then counts as a majority, so strong operations are no longer linearizable. Only for
    /// the linearizability checker's self-test.
    WeakenStrong(bool),
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
        /// Answer `meta` and leave large values out of `values`.
        meta: bool,
        /// Per-request settings.
        opts: RequestOptions,
    },
    /// Begin a streamed put.
    PutBegin {
        /// Bucket.
        bucket: Vec<u8>,
        /// Key.
        key: Vec<u8>,
        /// Causal context (may be empty).
        context: Vec<u8>,
        /// Declared total length, bytes.
        size: Option<u64>,
        /// Per-request settings (quorum, condition, time limit of each chunk write).
        opts: RequestOptions,
    },
    /// The next bytes of a streamed put.
    PutChunk {
        /// Upload id.
        upload: u64,
        /// Position among the upload's put_chunk frames, from 0.
        seq: u64,
        /// The bytes.
        data: Vec<u8>,
    },
    /// Make a streamed put's value the key's new version.
    PutCommit {
        /// Upload id.
        upload: u64,
        /// CRC-32 of the whole value, if the client gives one.
        crc32: Option<u32>,
        /// put_chunk frames sent before it: the commit waits until they are all applied.
        seq: Option<u64>,
        /// Answer with values and context.
        return_body: bool,
    },
    /// End a streamed put without writing it.
    PutAbort {
        /// Upload id.
        upload: u64,
    },
    /// Read a range of one version of a key.
    GetRange {
        /// Bucket.
        bucket: Vec<u8>,
        /// Key.
        key: Vec<u8>,
        /// Version id of a large value (needed with siblings).
        version: Option<Vec<u8>>,
        /// First byte.
        offset: u64,
        /// Bytes wanted (capped at `max-range-bytes`).
        length: Option<u64>,
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
    /// Stage a role change of a node (zone, capacity, or both).
    ClusterSet {
        /// Its name.
        node: String,
        /// New zone.
        zone: Option<String>,
        /// New capacity (checked by the node: 1 to `u32::MAX`).
        capacity: Option<u64>,
    },
    /// Stage the replacement of a node by a joining one.
    ClusterReplace {
        /// The node replaced (OLD).
        node: String,
        /// The node taking its place (NEW).
        replacement: String,
    },
    /// Drop everything staged.
    ClusterRevert,
    /// Every member's partition transfers.
    ClusterTransfers,
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
    /// Compare-and-set on a strong bucket's key.
    Cas {
        /// Bucket.
        bucket: Vec<u8>,
        /// Key.
        key: Vec<u8>,
        /// Value expected (`None`: the key must be absent).
        expect: Option<Vec<u8>>,
        /// New value (`None`: delete the key).
        value: Option<Vec<u8>>,
        /// Per-request settings (`n`, `timeout_ms`).
        opts: RequestOptions,
    },
    /// Where a key lives and what every node holds of it (`ringkv explain`): see
    /// [`ringkv_actors::explain`]. Answered in `info`.
    Explain {
        /// Bucket.
        bucket: Vec<u8>,
        /// Key.
        key: Vec<u8>,
        /// Time limit of each node's answer (`timeout_ms`); `None`: the default, 2 s.
        timeout: Option<Duration>,
    },
    /// The layout a partition-aware client routes by ([`ringkv_proto::LayoutInfo`]), in
    /// `info`.
    Layout,
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

fn required_u64(field: Option<u64>, name: &str, op: &str) -> Result<u64, ProtocolError> {
    field.ok_or_else(|| {
        ProtocolError::new(
            ErrorCode::MalformedRequest,
            format!("op {op} needs the field {name}"),
        )
    })
}

fn required_str(field: Option<String>, name: &str, op: &str) -> Result<String, ProtocolError> {
    field.ok_or_else(|| {
        ProtocolError::new(
            ErrorCode::MalformedRequest,
            format!("op {op} needs the field {name}"),
        )
    })
}

/// A decoded request frame ([`Request::decode_routed`]).
#[derive(Clone, Debug)]
pub struct Decoded {
    /// The request's id.
    pub id: u64,
    /// The validated request.
    pub request: Request,
    /// The layout version the client routes by (request field `layout`), if it sent one: the
    /// answer then carries the node's own ([`ResponseFrame::layout`]) when they differ.
    pub layout: Option<u64>,
}

/// The wire name of every op a request may name, each exactly once ([`Request::op`] gives
/// one of these for every decoded request).
pub const OPS: [&str; 23] = [
    "ping",
    "get",
    "put",
    "delete",
    "cas",
    "put_begin",
    "put_chunk",
    "put_commit",
    "put_abort",
    "get_range",
    "explain",
    "layout",
    "cluster_status",
    "cluster_plan",
    "cluster_commit",
    "cluster_leave",
    "cluster_set",
    "cluster_replace",
    "cluster_revert",
    "cluster_transfers",
    "bucket_get",
    "bucket_set",
    "inject_fault",
];

impl Request {
    /// The op's wire name (`"get"`, `"put_chunk"`, ...): the `op` label of the request
    /// metrics. A `get` with `meta` is a `get`.
    pub fn op(&self) -> &'static str {
        match self {
            Request::Ping => "ping",
            Request::Get { .. } => "get",
            Request::PutBegin { .. } => "put_begin",
            Request::PutChunk { .. } => "put_chunk",
            Request::PutCommit { .. } => "put_commit",
            Request::PutAbort { .. } => "put_abort",
            Request::GetRange { .. } => "get_range",
            Request::Put { .. } => "put",
            Request::ClusterStatus => "cluster_status",
            Request::ClusterPlan => "cluster_plan",
            Request::ClusterCommit => "cluster_commit",
            Request::ClusterLeave { .. } => "cluster_leave",
            Request::ClusterSet { .. } => "cluster_set",
            Request::ClusterReplace { .. } => "cluster_replace",
            Request::ClusterRevert => "cluster_revert",
            Request::ClusterTransfers => "cluster_transfers",
            Request::BucketGet { .. } => "bucket_get",
            Request::BucketSet { .. } => "bucket_set",
            Request::Cas { .. } => "cas",
            Request::InjectFault(_) => "inject_fault",
            Request::Delete { .. } => "delete",
            Request::Explain { .. } => "explain",
            Request::Layout => "layout",
        }
    }

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
        Self::decode_routed(body).map(|d| (d.id, d.request))
    }

    /// [`Request::decode`], keeping the request's `layout` field (the layout version a
    /// partition-aware client routes by) beside it.
    ///
    /// # Errors
    /// As [`Request::decode`].
    pub fn decode_routed(body: &[u8]) -> Result<Decoded, (u64, ProtocolError)> {
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
        let layout = frame.layout;
        Self::from_frame(frame)
            .map(|request| Decoded {
                id,
                request,
                layout,
            })
            .map_err(|e| (id, e))
    }

    fn from_frame(f: RequestFrame) -> Result<Request, ProtocolError> {
        let condition = match (
            f.if_none_match.unwrap_or(false),
            f.if_match.unwrap_or(false),
        ) {
            (false, false) => Condition::None,
            (true, false) => Condition::IfNoneMatch,
            (false, true) => Condition::IfMatch,
            (true, true) => {
                return Err(ProtocolError::new(
                    ErrorCode::MalformedRequest,
                    "if_none_match and if_match are mutually exclusive: give at most one",
                ))
            }
        };
        let opts = RequestOptions {
            timeout: f.timeout_ms.map(Duration::from_millis),
            n: f.n,
            r: f.r,
            w: f.w,
            local: f.local.unwrap_or(false),
            condition,
            ttl: ttl_of(f.ttl_ms)?,
        };
        let op = f.op.as_str();
        Ok(match op {
            "ping" => Request::Ping,
            "get" => Request::Get {
                bucket: required(f.bucket, "bucket", op)?,
                key: required(f.key, "key", op)?,
                meta: f.meta.unwrap_or(false),
                opts,
            },
            "put_begin" => Request::PutBegin {
                bucket: required(f.bucket, "bucket", op)?,
                key: required(f.key, "key", op)?,
                context: f.context.map(ByteBuf::into_vec).unwrap_or_default(),
                size: f.size,
                opts,
            },
            "put_chunk" => Request::PutChunk {
                upload: required_u64(f.upload, "upload", op)?,
                seq: required_u64(f.seq, "seq", op)?,
                data: required(f.data, "data", op)?,
            },
            "put_commit" => Request::PutCommit {
                upload: required_u64(f.upload, "upload", op)?,
                crc32: match f.crc32 {
                    None => None,
                    Some(c) => Some(u32::try_from(c).map_err(|_| {
                        ProtocolError::new(
                            ErrorCode::MalformedRequest,
                            format!("crc32 {c} is not a 32-bit value"),
                        )
                    })?),
                },
                return_body: f.return_body.unwrap_or(false),
                seq: f.seq,
            },
            "put_abort" => Request::PutAbort {
                upload: required_u64(f.upload, "upload", op)?,
            },
            "get_range" => Request::GetRange {
                bucket: required(f.bucket, "bucket", op)?,
                key: required(f.key, "key", op)?,
                version: f.version.map(ByteBuf::into_vec),
                offset: f.offset.unwrap_or(0),
                length: f.length,
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
            "cas" => Request::Cas {
                bucket: required(f.bucket, "bucket", op)?,
                key: required(f.key, "key", op)?,
                expect: f.expect.map(ByteBuf::into_vec),
                value: f.value.map(ByteBuf::into_vec),
                opts,
            },
            "delete" => Request::Delete {
                bucket: required(f.bucket, "bucket", op)?,
                key: required(f.key, "key", op)?,
                context: f.context.map(ByteBuf::into_vec).unwrap_or_default(),
                opts,
            },
            "explain" => Request::Explain {
                bucket: required(f.bucket, "bucket", op)?,
                key: required(f.key, "key", op)?,
                timeout: opts.timeout,
            },
            "layout" => Request::Layout,
            "cluster_status" => Request::ClusterStatus,
            "cluster_plan" => Request::ClusterPlan,
            "cluster_commit" => Request::ClusterCommit,
            "cluster_leave" => Request::ClusterLeave {
                node: required_str(f.node, "node", op)?,
            },
            "cluster_set" => Request::ClusterSet {
                node: required_str(f.node, "node", op)?,
                zone: f.zone,
                capacity: f.capacity,
            },
            "cluster_replace" => Request::ClusterReplace {
                node: required_str(f.node, "node", op)?,
                replacement: required_str(f.replacement, "replacement", op)?,
            },
            "cluster_revert" => Request::ClusterRevert,
            "cluster_transfers" => Request::ClusterTransfers,
            "bucket_get" => Request::BucketGet {
                bucket: required(f.bucket, "bucket", op)?,
            },
            "bucket_set" => {
                let props = f.props.ok_or_else(|| {
                    ProtocolError::new(ErrorCode::MalformedRequest, "op bucket_set needs the field props")
                })?;
                if let Some(c) = &props.compression {
                    c.parse::<ringkv_cluster::Compression>().map_err(|e| {
                        ProtocolError::new(ErrorCode::MalformedRequest, e.to_string())
                    })?;
                }
                if let Some(c) = &props.consistency {
                    c.parse::<ringkv_cluster::membership::Consistency>().map_err(|e| {
                        ProtocolError::new(ErrorCode::MalformedRequest, e.to_string())
                    })?;
                }
                Request::BucketSet {
                    bucket: required(f.bucket, "bucket", op)?,
                    props,
                }
            }
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
                Some("weaken_strong") => Fault::WeakenStrong(f.on.unwrap_or(true)),
                Some(other) => {
                    return Err(ProtocolError::new(
                        ErrorCode::MalformedRequest,
                        format!("unknown fault {other:?}; known: panic_vnode, panic_actor, isolate, weaken_strong"),
                    ))
                }
            }),
            other => {
                return Err(ProtocolError::new(
                    ErrorCode::UnknownOp,
                    format!("unknown op {other:?}; known ops: ping, get, put, delete, cas, put_begin, put_chunk, put_commit, put_abort, get_range, explain, layout, cluster_status, cluster_plan, cluster_commit, cluster_leave, cluster_set, cluster_replace, cluster_revert, cluster_transfers, bucket_get, bucket_set"),
                ))
            }
        })
    }
}

/// An answer carrying a read's values, their `meta` and the context.
pub fn fetched_meta(id: u64, f: ringkv_actors::large::FetchedMeta) -> ResponseFrame {
    let meta = f
        .meta
        .into_iter()
        .map(|m| ValueMeta {
            size: m.size,
            large: m.manifest.is_some(),
            version: m
                .manifest
                .as_ref()
                .map(|m| ByteBuf::from(m.version.clone())),
            crc32: m.manifest.as_ref().map(|m| m.crc32),
        })
        .collect();
    ResponseFrame {
        meta: Some(meta),
        ..ResponseFrame::fetched(
            id,
            Fetched {
                values: f.values,
                context: f.context,
            },
        )
    }
}

/// An answer carrying a read's values and context.
pub fn fetched(id: u64, f: ringkv_actors::Fetched) -> ResponseFrame {
    ResponseFrame::fetched(
        id,
        Fetched {
            values: f.values,
            context: f.context,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Serialize;

    fn body(frame: &RequestFrame) -> Vec<u8> {
        encode_frame(frame)[4..].to_vec()
    }

    #[test]
    fn every_known_op_decodes_to_a_request_of_that_op() {
        for op in OPS {
            let f = RequestFrame {
                id: 1,
                op: op.into(),
                bucket: Some(ByteBuf::from(b"b".to_vec())),
                key: Some(ByteBuf::from(b"k".to_vec())),
                value: Some(ByteBuf::from(b"v".to_vec())),
                upload: Some(1),
                seq: Some(0),
                data: Some(ByteBuf::from(b"d".to_vec())),
                node: Some("n1".into()),
                replacement: Some("n2".into()),
                props: Some(BucketPropsFrame::default()),
                ..Default::default()
            };
            let (_, req) = Request::decode(&body(&f)).unwrap_or_else(|e| panic!("{op}: {e:?}"));
            assert_eq!(req.op(), op);
        }
    }

    #[test]
    fn the_layout_field_is_kept_beside_the_request() {
        let f = RequestFrame {
            id: 3,
            op: "get".into(),
            bucket: Some(ByteBuf::from(b"b".to_vec())),
            key: Some(ByteBuf::from(b"k".to_vec())),
            layout: Some(7),
            ..Default::default()
        };
        let d = Request::decode_routed(&body(&f)).unwrap();
        assert_eq!((d.id, d.layout), (3, Some(7)));
        assert!(matches!(d.request, Request::Get { .. }));
        let without = RequestFrame { layout: None, ..f };
        assert_eq!(
            Request::decode_routed(&body(&without)).unwrap().layout,
            None
        );
        let layout_op = RequestFrame {
            id: 4,
            op: "layout".into(),
            ..Default::default()
        };
        assert!(matches!(
            Request::decode(&body(&layout_op)),
            Ok((4, Request::Layout))
        ));
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
    fn conditions_decode_into_the_options_and_exclude_each_other() {
        let put = RequestFrame {
            id: 7,
            op: "put".into(),
            bucket: Some(ByteBuf::from(b"b".to_vec())),
            key: Some(ByteBuf::from(b"k".to_vec())),
            value: Some(ByteBuf::from(b"v".to_vec())),
            if_none_match: Some(true),
            ..Default::default()
        };
        let (_, req) = Request::decode(&body(&put)).unwrap();
        assert!(
            matches!(req, Request::Put { opts, .. } if opts.condition == Condition::IfNoneMatch)
        );
        let delete = RequestFrame {
            op: "delete".into(),
            value: None,
            if_none_match: None,
            if_match: Some(true),
            ..put.clone()
        };
        let (_, req) = Request::decode(&body(&delete)).unwrap();
        assert!(
            matches!(req, Request::Delete { opts, .. } if opts.condition == Condition::IfMatch)
        );
        let both = RequestFrame {
            if_match: Some(true),
            ..put
        };
        let (id, e) = Request::decode(&body(&both)).unwrap_err();
        assert_eq!((id, e.code), (7, ErrorCode::MalformedRequest));
        assert!(e.message.contains("mutually exclusive"), "{}", e.message);
        let refused = error_of(KvError::Storage(StorageError::ConditionFailed {
            condition: "if_match".into(),
            detail: "1 live version(s) of the key were written after the read".into(),
        }));
        assert_eq!(refused.code.as_str(), "condition_failed");
        assert!(refused.message.contains("if_match"), "{}", refused.message);
    }

    #[test]
    fn ttl_decodes_into_the_options_within_its_bound() {
        let put = |ttl_ms| RequestFrame {
            id: 9,
            op: "put".into(),
            bucket: Some(ByteBuf::from(b"b".to_vec())),
            key: Some(ByteBuf::from(b"k".to_vec())),
            value: Some(ByteBuf::from(b"v".to_vec())),
            ttl_ms,
            ..Default::default()
        };
        let ttl = |ttl_ms| match Request::decode(&body(&put(ttl_ms))) {
            Ok((_, Request::Put { opts, .. })) => Ok(opts.ttl),
            Ok((_, other)) => panic!("{other:?}"),
            Err((id, e)) => Err((id, e)),
        };
        assert_eq!(ttl(None), Ok(None));
        assert_eq!(ttl(Some(0)), Ok(None), "0 is no expiry");
        assert_eq!(ttl(Some(1_800_000)), Ok(Some(Duration::from_secs(1800))));
        assert_eq!(
            ttl(Some(MAX_TTL_MS)),
            Ok(Some(Duration::from_millis(MAX_TTL_MS)))
        );
        let (id, e) = ttl(Some(MAX_TTL_MS + 1)).unwrap_err();
        assert_eq!((id, e.code), (9, ErrorCode::MalformedRequest));
        assert!(e.message.contains("100 years"), "{}", e.message);
    }

    #[test]
    fn explain_decodes_and_names_missing_fields() {
        let f = RequestFrame {
            id: 4,
            op: "explain".into(),
            bucket: Some(ByteBuf::from(b"b".to_vec())),
            key: Some(ByteBuf::from(b"k".to_vec())),
            timeout_ms: Some(500),
            ..Default::default()
        };
        let (id, req) = Request::decode(&body(&f)).unwrap();
        assert_eq!(id, 4);
        assert!(matches!(
            req,
            Request::Explain { bucket, key, timeout: Some(t) }
                if bucket == b"b" && key == b"k" && t == Duration::from_millis(500)
        ));
        let no_key = RequestFrame { key: None, ..f };
        let (id, e) = Request::decode(&body(&no_key)).unwrap_err();
        assert_eq!((id, e.code), (4, ErrorCode::MalformedRequest));
        assert!(e.message.contains("key"), "{}", e.message);
    }

    #[test]
    fn staging_ops_decode_and_name_missing_fields() {
        let set = RequestFrame {
            id: 1,
            op: "cluster_set".into(),
            node: Some("n2".into()),
            capacity: Some(0),
            ..Default::default()
        };
        let (_, req) = Request::decode(&body(&set)).unwrap();
        assert!(matches!(
            req,
            Request::ClusterSet { node, zone: None, capacity: Some(0) } if node == "n2"
        ));
        let replace = RequestFrame {
            id: 2,
            op: "cluster_replace".into(),
            node: Some("n3".into()),
            ..Default::default()
        };
        let (id, e) = Request::decode(&body(&replace)).unwrap_err();
        assert_eq!((id, e.code), (2, ErrorCode::MalformedRequest));
        assert!(e.message.contains("replacement"), "{}", e.message);
        let replace = RequestFrame {
            replacement: Some("n4".into()),
            ..replace
        };
        let (_, req) = Request::decode(&body(&replace)).unwrap();
        assert!(matches!(
            req,
            Request::ClusterReplace { node, replacement } if node == "n3" && replacement == "n4"
        ));
        let revert = RequestFrame {
            id: 3,
            op: "cluster_revert".into(),
            ..Default::default()
        };
        assert!(matches!(
            Request::decode(&body(&revert)),
            Ok((3, Request::ClusterRevert))
        ));
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
