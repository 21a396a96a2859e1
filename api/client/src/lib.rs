//! The async Rust client.
//!
//! One TCP connection, many requests in flight: every call gets a fresh id, its frame goes to
//! a writer task, and a reader task hands each answer to the caller waiting for that id, in
//! whatever order answers arrive. [`Client`] is cheap to clone; clones share the connection.
//!
//! ```no_run
//! # async fn demo() -> Result<(), ringkv_client::ClientError> {
//! let client = ringkv_client::Client::connect("127.0.0.1:7379").await?;
//! client.put(b"carts", b"alice", b"milk".to_vec(), &[]).await?;
//! let got = client.get(b"carts", b"alice").await?;
//! client.put(b"carts", b"alice", b"milk,eggs".to_vec(), &got.context).await?;
//! # Ok(()) }
//! ```
//!
//! Strong buckets (bucket property `consistency = strong`): `get`, `put` and `delete` are
//! linearizable there with the same calls (contexts are not needed), and [`Client::cas`]
//! compares and sets a key; a refused comparison is a [`CasOutcome`], not an error.
//!
//! ```no_run
//! # async fn demo() -> Result<(), ringkv_client::ClientError> {
//! use ringkv_client::{CallOptions, CasOutcome, Client};
//! let client = Client::connect("127.0.0.1:7379").await?;
//! let opts = CallOptions::default();
//! // Create the key only if it is absent.
//! match client.cas(b"locks", b"job-7", None, Some(b"worker-1"), &opts).await? {
//!     CasOutcome::Swapped => println!("taken"),
//!     CasOutcome::ConditionFailed { current } => println!("held by {current:?}"),
//! }
//! // Release it only if this worker still holds it.
//! client.cas(b"locks", b"job-7", Some(b"worker-1"), None, &opts).await?;
//! # Ok(()) }
//! ```
//!
//! Large values (see the `stream` module's calls): [`Client::put_stream`] writes from any
//! [`tokio::io::AsyncRead`], [`Client::get_stream`] returns a [`ValueReader`] (an `AsyncRead`
//! checked against the value's CRC-32 at its end), [`Client::get_range`] reads a slice. Memory
//! stays bounded by a few chunks whatever the value's size.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use ringkv_client::{Client, GetStreamOptions, PutStreamOptions};
//! let client = Client::connect("127.0.0.1:7379").await?;
//! let file = tokio::fs::File::open("disk.img").await?;
//! let size = file.metadata().await?.len();
//! let opts = PutStreamOptions { size: Some(size), ..Default::default() };
//! let put = client.put_stream(b"images", b"disk.img", file, &opts).await?;
//! println!("stored {} bytes, CRC-32 {:#010x}", put.size, put.crc32);
//!
//! let mut value = client.get_stream(b"images", b"disk.img", &GetStreamOptions::default()).await?;
//! let mut out = tokio::fs::File::create("copy.img").await?;
//! tokio::io::copy(&mut value, &mut out).await?; // fails on a checksum mismatch
//! # Ok(()) }
//! ```
#![warn(missing_docs)]

#[cfg(feature = "actor")]
pub mod actor;
mod cluster;
mod stream;
pub mod tls;
pub use cluster::{ClusterClient, ClusterOptions};
pub use tls::{ClientTls, TlsError};

use ringkv_proto::{encode_frame, read_frame, write_frames, RequestFrame, ResponseFrame};
pub use ringkv_proto::{ErrorCode, Fetched, LayoutInfo, LayoutNode, ValueMeta};
use serde_bytes::ByteBuf;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
pub use stream::{
    FetchedMeta, GetStreamOptions, Progress, PutStreamOptions, Range, StreamedPut, ValueReader,
    MAX_CHUNK_BYTES, MAX_PUT_WINDOW, MAX_RANGE_BYTES, SINGLE_FRAME_BYTES,
};
use thiserror::Error;
use tokio::io::BufReader;
use tokio::net::{TcpStream, ToSocketAddrs};
use tokio::sync::{mpsc, oneshot};

/// Largest answer frame the client accepts, bytes (256 MiB: room for many siblings).
pub const MAX_ANSWER_BYTES: usize = 256 << 20;

/// Why a client call failed.
#[derive(Debug, Error)]
pub enum ClientError {
    /// Connecting failed.
    #[error("cannot connect: {0}")]
    Connect(std::io::Error),
    /// The connection closed before the answer came.
    #[error("connection closed")]
    Closed,
    /// A [`ClusterClient`] call waited longer than its answer timeout
    /// ([`ClusterOptions::answer_timeout`]) for the node it sent the request to (paused,
    /// overloaded, or cut off). A write may or may not have been applied.
    #[error("no answer from {node} within {waited:?}")]
    NoAnswer {
        /// The node the request went to.
        node: String,
        /// How long the call waited.
        waited: std::time::Duration,
    },
    /// An actor-client call ([`actor::KvRef`]) whose node's session ended before the
    /// answer came (the node died, or the link to it broke). A write may or may not have
    /// been applied.
    #[error("lost node {node} before its answer came")]
    NodeLost {
        /// The node (its name, or its gateway's actor id) the request went to.
        node: String,
    },
    /// An actor-client call found no ringkv node to send it to.
    #[error("no node: {0}")]
    NoNode(String),
    /// The server answered with an error.
    #[error("{code}: {message}")]
    Server {
        /// Stable error code (see PROTOCOL.md); [`ClientError::error_code`] gives it typed.
        code: String,
        /// Description.
        message: String,
    },
    /// The server's answer did not have the documented shape.
    #[error("unexpected answer: {0}")]
    Protocol(String),
    /// A streamed read ([`Client::get_stream`]) of a key that holds no live value. Code
    /// `not_found`, as the server's answer to a `get_range` of such a key.
    #[error("not_found: {bucket}/{key} holds no live value", bucket = String::from_utf8_lossy(bucket), key = String::from_utf8_lossy(key))]
    NotFound {
        /// The bucket read.
        bucket: Vec<u8>,
        /// The key read.
        key: Vec<u8>,
    },
    /// A streamed read ([`Client::get_stream`]) of a key with several live versions
    /// (siblings): read one with [`Client::get_stream_version`] (large ones, by
    /// [`ValueMeta::version`]) or all with [`Client::get_meta`], then write the merge with
    /// `context`. Code `siblings`.
    #[error("siblings: the key has {} live versions ({}); read one by its version, then write the merge with the context", versions.len(), describe_versions(versions))]
    Siblings {
        /// One entry per live version: size, and for a large value its version id and
        /// CRC-32.
        versions: Vec<ValueMeta>,
        /// The causal context of the read, to write the merged value back with.
        context: Vec<u8>,
    },
    /// The bytes a streamed read received do not have the CRC-32 the value was stored with.
    /// Code `checksum_mismatch`.
    #[error("checksum_mismatch: the {size} bytes read have CRC-32 {actual:#010x}, the value was stored with {expected:#010x}")]
    ChecksumMismatch {
        /// The CRC-32 the node holds for the value.
        expected: u32,
        /// The CRC-32 of the bytes received.
        actual: u32,
        /// Bytes received.
        size: u64,
    },
    /// A TLS setting of the client cannot be used (see [`ClientTls`]).
    #[error("tls: {0}")]
    Tls(String),
    /// Reading the value of a streamed put failed.
    #[error("reading the value to upload: {0}")]
    Source(std::io::Error),
}

/// `size` and version of each sibling, for [`ClientError::Siblings`]'s message.
fn describe_versions(versions: &[ValueMeta]) -> String {
    versions
        .iter()
        .map(|m| match &m.version {
            Some(v) => format!("{} bytes, version {}", m.size, hex(v)),
            None => format!("{} bytes, small", m.size),
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// Lower-case hex of `b`.
fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

impl ClientError {
    /// The stable error code: the server's, or the one a client-side check stands for
    /// ([`ClientError::NotFound`], [`ClientError::Siblings`],
    /// [`ClientError::ChecksumMismatch`]); `None` for transport and protocol failures.
    pub fn code(&self) -> Option<&str> {
        match self {
            ClientError::Server { code, .. } => Some(code),
            ClientError::NotFound { .. } => Some(ErrorCode::NotFound.as_str()),
            ClientError::Siblings { .. } => Some(ErrorCode::Siblings.as_str()),
            ClientError::ChecksumMismatch { .. } => Some(ErrorCode::ChecksumMismatch.as_str()),
            _ => None,
        }
    }

    /// [`ClientError::code`] as an [`ErrorCode`]; `None` also for a code this client does
    /// not know (from a newer server).
    pub fn error_code(&self) -> Option<ErrorCode> {
        self.code().and_then(|c| c.parse().ok())
    }

    /// The [`ClientError`] inside an I/O error returned by a [`ValueReader`] (a failed
    /// range read, a checksum mismatch), if there is one.
    pub fn from_io(e: &std::io::Error) -> Option<&ClientError> {
        let inner = e.get_ref()?;
        inner
            .downcast_ref::<ClientError>()
            .or_else(|| inner.downcast_ref::<stream::Failed>().map(|f| &*f.0))
    }
}

/// Per-request quorum and time settings; `None` fields use the bucket's properties.
#[derive(Clone, Debug, Default)]
pub struct CallOptions {
    /// Replicas to use.
    pub n: Option<u8>,
    /// Read quorum.
    pub r: Option<u8>,
    /// Write quorum.
    pub w: Option<u8>,
    /// Time limit, ms.
    pub timeout_ms: Option<u64>,
    /// Get only: read the answering node's own replica, without quorum or repair.
    pub local: bool,
    /// Put and delete only: write only if this condition holds, else the server answers
    /// `condition_failed` ([`ClientError::code`]). See PROTOCOL.md, "Conditional writes",
    /// for what it guarantees.
    pub condition: Option<WriteCondition>,
    /// Put only: time to live of the value (request field `ttl_ms`, in whole milliseconds,
    /// rounded up). It expires at the coordinating node's clock at the write plus this, then
    /// reads as missing and is purged in the background. `None` or zero: never expires. At
    /// most 100 years; more is `malformed_request`.
    pub ttl: Option<std::time::Duration>,
}

/// A condition on a key's current state that a put or delete needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteCondition {
    /// Create only: the key holds no live value (never written, or deleted). Request field
    /// `if_none_match`.
    IfNoneMatch,
    /// Replace only if unchanged: the context given with the write (from a get) still covers
    /// every live version of the key. Request field `if_match`.
    IfMatch,
}

impl CallOptions {
    fn apply(&self, mut f: RequestFrame) -> RequestFrame {
        f.n = self.n.map(u64::from);
        f.r = self.r.map(u64::from);
        f.w = self.w.map(u64::from);
        f.timeout_ms = self.timeout_ms;
        f.local = self.local.then_some(true);
        f.if_none_match = (self.condition == Some(WriteCondition::IfNoneMatch)).then_some(true);
        f.if_match = (self.condition == Some(WriteCondition::IfMatch)).then_some(true);
        f.ttl_ms = self.ttl.map(ttl_ms).filter(|&ms| ms > 0);
        f
    }
}

/// A time to live in whole milliseconds, rounded up (so that a non-zero TTL stays non-zero),
/// saturating.
fn ttl_ms(ttl: std::time::Duration) -> u64 {
    let ms = ttl.as_nanos().div_ceil(1_000_000);
    u64::try_from(ms).unwrap_or(u64::MAX)
}

type Pending = Arc<Mutex<Option<HashMap<u64, oneshot::Sender<ResponseFrame>>>>>;

struct Inner {
    frames: mpsc::UnboundedSender<Vec<u8>>,
    pending: Pending,
    next_id: AtomicU64,
    /// The reader task: stopped when the last clone of the client goes, so that a
    /// connection to a node that never answers or closes (paused, cut off) does not outlive
    /// its client.
    reader: tokio::task::AbortHandle,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// A connection to a ringkv node.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

impl Client {
    /// Connects to a node's client address (plain TCP).
    ///
    /// # Errors
    /// [`ClientError::Connect`].
    pub async fn connect(addr: impl ToSocketAddrs) -> Result<Client, ClientError> {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(ClientError::Connect)?;
        let _ = stream.set_nodelay(true);
        let (rd, wr) = stream.into_split();
        Ok(Self::over(rd, wr))
    }

    /// Connects to a node's client address `addr` (`host:port`) over TLS, checking the
    /// node's certificate against `tls`'s roots and the host of `addr` (or the server name
    /// set on `tls`). Nodes with `tls-cert` accept only TLS; see README "Security".
    ///
    /// # Errors
    /// [`ClientError::Tls`] if `addr`'s host cannot be checked; [`ClientError::Connect`] if the
    /// connection or the handshake fails (an untrusted or misnamed certificate, a node that
    /// does not speak TLS, a node that wants a client certificate and got none).
    pub async fn connect_tls(addr: &str, tls: &ClientTls) -> Result<Client, ClientError> {
        let name = tls
            .server_name(addr)
            .map_err(|e| ClientError::Tls(e.to_string()))?;
        let stream = TcpStream::connect(addr)
            .await
            .map_err(ClientError::Connect)?;
        let _ = stream.set_nodelay(true);
        let stream = tls.connector().connect(name, stream).await.map_err(|e| {
            ClientError::Connect(std::io::Error::new(
                e.kind(),
                format!("TLS handshake with {addr} failed: {e} (does the node listen with TLS, and does its certificate name this host and chain to the CA given?)"),
            ))
        })?;
        let (rd, wr) = tokio::io::split(stream);
        Ok(Self::over(rd, wr))
    }

    /// Connects with TLS if `tls` is given, else over plain TCP.
    ///
    /// # Errors
    /// As [`Client::connect`] and [`Client::connect_tls`].
    pub async fn connect_with(addr: &str, tls: Option<&ClientTls>) -> Result<Client, ClientError> {
        match tls {
            Some(tls) => Self::connect_tls(addr, tls).await,
            None => Self::connect(addr).await,
        }
    }

    /// Runs the connection's writer and reader tasks over a connected byte stream.
    ///
    /// An error answer with id 0 is about the connection itself (the node refuses it:
    /// `too_many_connections`, `tls_required`): every call waiting then gets that error.
    fn over<R, W>(rd: R, wr: W) -> Client
    where
        R: tokio::io::AsyncRead + Unpin + Send + 'static,
        W: tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let (frames, rx) = mpsc::unbounded_channel::<Vec<u8>>();
        let pending: Pending = Arc::new(Mutex::new(Some(HashMap::new())));
        tokio::spawn(write_frames(wr, rx));
        let reader_pending = pending.clone();
        let reader = tokio::spawn(async move {
            let mut rd = BufReader::with_capacity(64 << 10, rd);
            let mut buf = Vec::new();
            while let Ok(true) = read_frame(&mut rd, &mut buf, MAX_ANSWER_BYTES).await {
                let Ok(answer) = rmp_serde::from_slice::<ResponseFrame>(&buf) else {
                    tracing::warn!("undecodable answer from server; closing connection");
                    break;
                };
                let mut pending = reader_pending.lock().unwrap_or_else(|p| p.into_inner());
                if answer.id == 0 && !answer.ok {
                    // The node refuses the connection: tell every waiting call why.
                    if let Some(waiting) = pending.take() {
                        for (id, w) in waiting {
                            let _ = w.send(ResponseFrame {
                                id,
                                ..answer.clone()
                            });
                        }
                    }
                    break;
                }
                let waiter = pending.as_mut().and_then(|m| m.remove(&answer.id));
                drop(pending);
                if let Some(w) = waiter {
                    let _ = w.send(answer);
                }
            }
            // Fail every waiting call: dropping the senders wakes them with Closed.
            reader_pending
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take();
        });
        Client {
            inner: Arc::new(Inner {
                frames,
                pending,
                next_id: AtomicU64::new(1),
                reader: reader.abort_handle(),
            }),
        }
    }

    /// Connects to a cluster for partition-aware routing: learns the layout from the first of
    /// `seeds` (client addresses, `host:port`) that answers, then sends each request straight
    /// to a replica of its key (see [`ClusterClient`]), over TLS if `tls` is given (every
    /// node is then dialled with it).
    ///
    /// # Errors
    /// The last seed's error if none answered the `layout` op (a connection error, or
    /// `no_layout` from a node of a cluster with no committed layout).
    pub async fn connect_cluster(
        seeds: &[&str],
        tls: Option<&ClientTls>,
    ) -> Result<ClusterClient, ClientError> {
        ClusterClient::connect(seeds, tls, ClusterOptions::default()).await
    }

    /// True once the connection has ended (the node closed it, refused it, or an answer did
    /// not decode): every call then fails with [`ClientError::Closed`]; connect again.
    pub fn is_closed(&self) -> bool {
        self.inner
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_none()
    }

    /// The layout to route requests by (op `layout`): the node's layout version, Q, every
    /// member's client address and liveness, and each partition's preference list, checked
    /// by [`LayoutInfo::check`].
    ///
    /// # Errors
    /// [`ClientError::Server`] (`no_layout` before the first commit); [`ClientError::Protocol`]
    /// for an answer that is not a usable layout.
    pub async fn layout(&self) -> Result<LayoutInfo, ClientError> {
        let info = self
            .admin(RequestFrame {
                op: "layout".into(),
                ..Default::default()
            })
            .await?;
        let layout: LayoutInfo = serde_json::from_value(info)
            .map_err(|e| ClientError::Protocol(format!("layout answer: {e}")))?;
        layout
            .check()
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
        Ok(layout)
    }

    /// Sends a request (its `id` is set by the client) and waits for its answer, whatever it
    /// is (error answers included).
    ///
    /// # Errors
    /// [`ClientError::Closed`] if the connection ends first.
    pub async fn request(&self, frame: RequestFrame) -> Result<ResponseFrame, ClientError> {
        let answer = self.send(frame)?;
        answer.await.map_err(|_| ClientError::Closed)
    }

    /// Queues a request's frame for the writer at once (its `id` set by the client) and
    /// returns the receiver of its answer, so that callers can keep several in flight.
    fn send(
        &self,
        mut frame: RequestFrame,
    ) -> Result<oneshot::Receiver<ResponseFrame>, ClientError> {
        self.send_ref(&mut frame)
    }

    /// As [`Client::send`], without taking the frame (its `id` is overwritten): a failure
    /// here means the frame was not sent, and the caller may send it elsewhere.
    fn send_ref(
        &self,
        frame: &mut RequestFrame,
    ) -> Result<oneshot::Receiver<ResponseFrame>, ClientError> {
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        frame.id = id;
        let (tx, rx) = oneshot::channel();
        match self
            .inner
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_mut()
        {
            Some(m) => m.insert(id, tx),
            None => return Err(ClientError::Closed),
        };
        if self.inner.frames.send(encode_frame(&*frame)).is_err() {
            return Err(ClientError::Closed);
        }
        Ok(rx)
    }

    async fn call(&self, frame: RequestFrame) -> Result<ResponseFrame, ClientError> {
        checked(self.request(frame).await?)
    }

    /// Checks that the node answers.
    ///
    /// # Errors
    /// [`ClientError`].
    pub async fn ping(&self) -> Result<(), ClientError> {
        self.call(RequestFrame {
            op: "ping".into(),
            ..Default::default()
        })
        .await
        .map(|_| ())
    }

    /// Reads a key: its live sibling values (empty: not found) and causal context.
    ///
    /// # Errors
    /// [`ClientError`]; server codes as in PROTOCOL.md.
    pub async fn get(&self, bucket: &[u8], key: &[u8]) -> Result<Fetched, ClientError> {
        self.get_with(bucket, key, &CallOptions::default()).await
    }

    /// [`Client::get`] with per-request options.
    ///
    /// # Errors
    /// As [`Client::get`].
    pub async fn get_with(
        &self,
        bucket: &[u8],
        key: &[u8],
        opts: &CallOptions,
    ) -> Result<Fetched, ClientError> {
        fetched(self.call(opts.apply(get_frame(bucket, key))).await?)
    }

    /// [`Client::put`] with per-request options.
    ///
    /// # Errors
    /// As [`Client::put`].
    pub async fn put_with(
        &self,
        bucket: &[u8],
        key: &[u8],
        value: Vec<u8>,
        context: &[u8],
        opts: &CallOptions,
    ) -> Result<(), ClientError> {
        self.call(opts.apply(put_frame(bucket, key, value, context, false)))
            .await
            .map(|_| ())
    }

    /// [`Client::delete`] with per-request options.
    ///
    /// # Errors
    /// As [`Client::delete`].
    pub async fn delete_with(
        &self,
        bucket: &[u8],
        key: &[u8],
        context: &[u8],
        opts: &CallOptions,
    ) -> Result<(), ClientError> {
        self.call(opts.apply(delete_frame(bucket, key, context)))
            .await
            .map(|_| ())
    }

    /// Runs an administration op (`cluster_status`, `cluster_plan`, `cluster_commit`,
    /// `cluster_leave`, `cluster_set`, `cluster_replace`, `cluster_revert`, `bucket_get`,
    /// `bucket_set`) and returns its `info` map.
    ///
    /// # Errors
    /// [`ClientError`]; server codes as in PROTOCOL.md.
    pub async fn admin(&self, frame: RequestFrame) -> Result<serde_json::Value, ClientError> {
        Ok(self
            .call(frame)
            .await?
            .info
            .unwrap_or(serde_json::Value::Null))
    }

    /// Explains `(bucket, key)` (op `explain`): its partition, preference list and
    /// fallbacks with their liveness, each primary's replica (version vector, siblings and
    /// their sizes, tombstone), the hints held for it and the partition's last anti-entropy
    /// exchanges, as the answering node gathers them; the `info` map PROTOCOL.md describes.
    /// `timeout_ms` bounds each node's answer (default 2000, at most 60000).
    ///
    /// # Errors
    /// [`ClientError`]; `invalid_bucket`, `invalid_key`, `no_layout` from the server.
    pub async fn explain(
        &self,
        bucket: &[u8],
        key: &[u8],
        timeout_ms: Option<u64>,
    ) -> Result<serde_json::Value, ClientError> {
        self.admin(RequestFrame {
            op: "explain".into(),
            bucket: Some(ByteBuf::from(bucket)),
            key: Some(ByteBuf::from(key)),
            timeout_ms,
            ..Default::default()
        })
        .await
    }

    /// Writes `value`, replacing the versions `context` (from a get; empty for a blind write)
    /// covers. Returns once the write is durable.
    ///
    /// # Errors
    /// [`ClientError`]; server codes as in PROTOCOL.md.
    pub async fn put(
        &self,
        bucket: &[u8],
        key: &[u8],
        value: Vec<u8>,
        context: &[u8],
    ) -> Result<(), ClientError> {
        self.put_with(bucket, key, value, context, &CallOptions::default())
            .await
    }

    /// As [`Client::put`], and returns the key's values and context after the write.
    ///
    /// # Errors
    /// As [`Client::put`].
    pub async fn put_return_body(
        &self,
        bucket: &[u8],
        key: &[u8],
        value: Vec<u8>,
        context: &[u8],
    ) -> Result<Fetched, ClientError> {
        fetched(
            self.call(put_frame(bucket, key, value, context, true))
                .await?,
        )
    }

    /// Deletes a key (a tombstone over what `context` covers).
    ///
    /// # Errors
    /// [`ClientError`]; server codes as in PROTOCOL.md.
    pub async fn delete(
        &self,
        bucket: &[u8],
        key: &[u8],
        context: &[u8],
    ) -> Result<(), ClientError> {
        self.delete_with(bucket, key, context, &CallOptions::default())
            .await
    }

    /// Compare-and-set on a key of a strong bucket (op `cas`, linearizable): if the key holds
    /// `expect` (`None`: the key is absent), it gets `new` (`None`: it is deleted), else
    /// nothing is written and the answer carries the key's current value. Of `opts`, only
    /// `n` and `timeout_ms` apply (the others are not sent). Leave `n` to the bucket:
    /// operations on a key with different `n` are not linearizable with each other
    /// (PROTOCOL.md, "Strong buckets").
    ///
    /// `get`, `put` and `delete` work on strong buckets too, linearizable as well (a strong
    /// `get` answers at most one value and an empty context; contexts are not needed).
    ///
    /// # Errors
    /// [`ClientError::Server`], its code typed by [`ClientError::error_code`]:
    /// * [`ErrorCode::NoMajority`]: no majority of the key's replicas answered; nothing was
    ///   written, retrying is safe;
    /// * [`ErrorCode::Indeterminate`]: the write reached some replicas but no majority
    ///   confirmed it: it may or may not have taken effect (and may still). Read the key to
    ///   find out before retrying;
    /// * [`ErrorCode::WrongConsistency`]: the bucket is not strong;
    /// * [`ErrorCode::ValueTooLarge`]: `new` is over the node's strong value limit;
    /// * the codes of `put` otherwise (`invalid_key`, `timeout`, ...).
    pub async fn cas(
        &self,
        bucket: &[u8],
        key: &[u8],
        expect: Option<&[u8]>,
        new: Option<&[u8]>,
        opts: &CallOptions,
    ) -> Result<CasOutcome, ClientError> {
        cas_outcome(
            self.request(cas_frame(bucket, key, expect, new, opts))
                .await?,
        )
    }
}

/// The request of [`Client::cas`].
fn cas_frame(
    bucket: &[u8],
    key: &[u8],
    expect: Option<&[u8]>,
    new: Option<&[u8]>,
    opts: &CallOptions,
) -> RequestFrame {
    RequestFrame {
        op: "cas".into(),
        bucket: Some(ByteBuf::from(bucket)),
        key: Some(ByteBuf::from(key)),
        expect: expect.map(ByteBuf::from),
        value: new.map(ByteBuf::from),
        n: opts.n.map(u64::from),
        timeout_ms: opts.timeout_ms,
        ..Default::default()
    }
}

/// What the answer to a `cas` says: swapped, refused with the key's current value, or an
/// error.
fn cas_outcome(answer: ResponseFrame) -> Result<CasOutcome, ClientError> {
    if !answer.ok && answer.code.as_deref() == Some(ErrorCode::ConditionFailed.as_str()) {
        let values = answer.values.ok_or_else(|| {
            ClientError::Protocol("condition_failed answer to a cas has no values".into())
        })?;
        let mut values = values.into_iter().map(ByteBuf::into_vec);
        let current = values.next();
        if values.next().is_some() {
            return Err(ClientError::Protocol(
                "condition_failed answer to a cas has more than one value".into(),
            ));
        }
        return Ok(CasOutcome::ConditionFailed { current });
    }
    checked(answer)?;
    Ok(CasOutcome::Swapped)
}

/// What a [`Client::cas`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CasOutcome {
    /// The key held the value expected: it now holds the new value (or is absent, for a
    /// delete).
    Swapped,
    /// The key did not hold the value expected; nothing was written. `current` is its value
    /// at the operation's linearization point (`None`: absent).
    ConditionFailed {
        /// The key's value (`None`: absent).
        current: Option<Vec<u8>>,
    },
}

fn get_frame(bucket: &[u8], key: &[u8]) -> RequestFrame {
    RequestFrame {
        op: "get".into(),
        bucket: Some(ByteBuf::from(bucket)),
        key: Some(ByteBuf::from(key)),
        ..Default::default()
    }
}

fn delete_frame(bucket: &[u8], key: &[u8], context: &[u8]) -> RequestFrame {
    RequestFrame {
        op: "delete".into(),
        bucket: Some(ByteBuf::from(bucket)),
        key: Some(ByteBuf::from(key)),
        context: Some(ByteBuf::from(context)),
        ..Default::default()
    }
}

fn put_frame(
    bucket: &[u8],
    key: &[u8],
    value: Vec<u8>,
    context: &[u8],
    body: bool,
) -> RequestFrame {
    RequestFrame {
        op: "put".into(),
        bucket: Some(ByteBuf::from(bucket)),
        key: Some(ByteBuf::from(key)),
        value: Some(ByteBuf::from(value)),
        context: (!context.is_empty()).then(|| ByteBuf::from(context)),
        return_body: body.then_some(true),
        ..Default::default()
    }
}

/// An answer as a result: `Ok` if it says `ok`, else its code and message.
fn checked(answer: ResponseFrame) -> Result<ResponseFrame, ClientError> {
    if answer.ok {
        Ok(answer)
    } else {
        Err(ClientError::Server {
            code: answer.code.unwrap_or_default(),
            message: answer.message.unwrap_or_default(),
        })
    }
}

fn fetched(answer: ResponseFrame) -> Result<Fetched, ClientError> {
    Ok(Fetched {
        values: answer
            .values
            .ok_or_else(|| ClientError::Protocol("answer has no values".into()))?
            .into_iter()
            .map(ByteBuf::into_vec)
            .collect(),
        context: answer.context.map(ByteBuf::into_vec).unwrap_or_default(),
    })
}
