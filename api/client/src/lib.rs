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

pub use ringkv_proto::Fetched;
use ringkv_proto::{encode_frame, read_frame, write_frames, RequestFrame, ResponseFrame};
use serde_bytes::ByteBuf;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
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
    /// The server answered with an error.
    #[error("{code}: {message}")]
    Server {
        /// Stable error code (see PROTOCOL.md).
        code: String,
        /// Description.
        message: String,
    },
    /// The server's answer did not have the documented shape.
    #[error("unexpected answer: {0}")]
    Protocol(String),
}

impl ClientError {
    /// The server's error code, if this is a server error.
    pub fn code(&self) -> Option<&str> {
        match self {
            ClientError::Server { code, .. } => Some(code),
            _ => None,
        }
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
}

/// A connection to a ringkv node.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

impl Client {
    /// Connects to a node's client address.
    ///
    /// # Errors
    /// [`ClientError::Connect`].
    pub async fn connect(addr: impl ToSocketAddrs) -> Result<Client, ClientError> {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(ClientError::Connect)?;
        let _ = stream.set_nodelay(true);
        let (rd, wr) = stream.into_split();
        let (frames, rx) = mpsc::unbounded_channel::<Vec<u8>>();
        let pending: Pending = Arc::new(Mutex::new(Some(HashMap::new())));
        tokio::spawn(write_frames(wr, rx));
        let reader_pending = pending.clone();
        tokio::spawn(async move {
            let mut rd = BufReader::with_capacity(64 << 10, rd);
            let mut buf = Vec::new();
            while let Ok(true) = read_frame(&mut rd, &mut buf, MAX_ANSWER_BYTES).await {
                let Ok(answer) = rmp_serde::from_slice::<ResponseFrame>(&buf) else {
                    tracing::warn!("undecodable answer from server; closing connection");
                    break;
                };
                let waiter = reader_pending
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .as_mut()
                    .and_then(|m| m.remove(&answer.id));
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
        Ok(Client {
            inner: Arc::new(Inner {
                frames,
                pending,
                next_id: AtomicU64::new(1),
            }),
        })
    }

    /// Sends a request (its `id` is set by the client) and waits for its answer, whatever it
    /// is (error answers included).
    ///
    /// # Errors
    /// [`ClientError::Closed`] if the connection ends first.
    pub async fn request(&self, mut frame: RequestFrame) -> Result<ResponseFrame, ClientError> {
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
        if self.inner.frames.send(encode_frame(&frame)).is_err() {
            return Err(ClientError::Closed);
        }
        rx.await.map_err(|_| ClientError::Closed)
    }

    async fn call(&self, frame: RequestFrame) -> Result<ResponseFrame, ClientError> {
        let answer = self.request(frame).await?;
        if answer.ok {
            Ok(answer)
        } else {
            Err(ClientError::Server {
                code: answer.code.unwrap_or_default(),
                message: answer.message.unwrap_or_default(),
            })
        }
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
        let answer = self
            .call(opts.apply(RequestFrame {
                op: "get".into(),
                bucket: Some(ByteBuf::from(bucket)),
                key: Some(ByteBuf::from(key)),
                ..Default::default()
            }))
            .await?;
        fetched(answer)
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
        self.call(opts.apply(RequestFrame {
            op: "delete".into(),
            bucket: Some(ByteBuf::from(bucket)),
            key: Some(ByteBuf::from(key)),
            context: Some(ByteBuf::from(context)),
            ..Default::default()
        }))
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
