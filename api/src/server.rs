//! The client listener: a supervised ClientListener actor that accepts connections, one tokio
//! task per connection, one task per request.
//!
//! A connection's reader decodes frames and starts a task per request, which runs the
//! request on the [`Node`] (a Coordinator per request) and queues the encoded answer for the
//! connection's writer task. The writer writes every queued answer before flushing, so
//! pipelined answers share syscalls. At most `max-in-flight` requests per connection are
//! unanswered at once: past that, the reader waits, which pushes back on the client through
//! TCP.

use crate::metrics::{Metrics, UNDECODED_OP};
use crate::protocol::{
    BucketPropsFrame, ErrorCode, Fault, FrameError, ProtocolError, Request, ResponseFrame,
};
use ractor::{Actor, ActorProcessingErr, ActorRef};
use ractor_cluster::RactorMessage;
use ringkv_actors::{KvError, Node};
use ringkv_cluster::membership::{BucketProps, LAYOUT_REPLICAS};
use ringkv_storage::keys::validate_bucket;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, Notify, OwnedSemaphorePermit, Semaphore};
use tracing::Instrument;

mod connection;
mod gateway;
mod restarting;
mod strong;
mod tls;
mod uploads;
use connection::{
    write_answers, write_directly, Answer, ConnState, FrameReader, SharedWriter, SHUTDOWN_QUIET,
};
pub use gateway::Gateway;
use restarting::{Restarting, RestartingArgs};
use uploads::Uploads;

/// The client listener of one node.
pub struct Server {
    listener: std::net::TcpListener,
    node: Arc<Node>,
    tls: Option<Arc<tls::ListenerTls>>,
    metrics: Option<Arc<Metrics>>,
    /// Node-wide client bytes in flight (`max-in-flight-bytes`), shared with the KvGateway.
    budget: Arc<ByteBudget>,
}

/// What every incarnation of the listener and every connection share.
struct Shared {
    node: Arc<Node>,
    connections: Arc<Semaphore>,
    /// Node-wide client bytes in flight (`max-in-flight-bytes`).
    budget: Arc<ByteBudget>,
    shutdown: watch::Receiver<bool>,
    /// The running ClientListener, for fault injection.
    current: std::sync::Mutex<Option<ActorRef<ListenerMsg>>>,
    /// Set by the accept loop once it stopped accepting after a shutdown.
    drained: watch::Sender<bool>,
    /// TLS of the listener (`tls-cert`), or none for plain TCP.
    tls: Option<Arc<tls::ListenerTls>>,
    /// Where answered requests and open connections are counted, if anywhere.
    metrics: Option<Arc<Metrics>>,
}

impl Shared {
    /// Counts one answered request (see [`Metrics::observe`]).
    fn observe(&self, op: &'static str, code: Option<&str>, started: Instant) {
        if let Some(m) = &self.metrics {
            m.observe(op, code, started.elapsed());
        }
    }
}

impl Server {
    /// Binds a client listener on `addr` (port 0 picks a free port). Done before the node
    /// starts, so that a taken address stops `ringkv start` at once and the node announces
    /// the address it got as its `client_addr` (which partition-aware clients dial).
    ///
    /// # Errors
    /// The bind error (address in use, permission).
    pub fn listen(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
        let listener = std::net::TcpListener::bind(addr)?;
        listener.set_nonblocking(true)?;
        Ok(listener)
    }

    /// The client listener of `node` on `listener` (from [`Server::listen`] of the node's
    /// `listen` address), with the node's TLS files loaded if `tls-cert` is set. Logs a
    /// warning if the address is not a loopback one and TLS is off.
    ///
    /// # Errors
    /// A TLS file that cannot be used (`InvalidInput`, naming the file).
    pub async fn bind(node: Arc<Node>, listener: std::net::TcpListener) -> std::io::Result<Server> {
        let config = node.config();
        let tls = match (&config.tls_cert, &config.tls_key) {
            (Some(cert), Some(key)) => {
                let server =
                    ringkv_actors::tls::server_config(cert, key, config.tls_client_ca.as_deref())
                        .map_err(|e| {
                        std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("TLS: {e}"))
                    })?;
                Some(Arc::new(tls::ListenerTls {
                    acceptor: tokio_rustls::TlsAcceptor::from(server),
                    handshake_timeout: Duration::from_millis(config.tls_handshake_timeout_ms),
                }))
            }
            _ => None,
        };
        if tls.is_none() && !config.listen.ip().is_loopback() {
            tracing::warn!(listen = %config.listen, "the client listener is plain TCP on a non-loopback address: requests and values cross the network unencrypted and any host that reaches it can use it; set tls-cert and tls-key (README, Security)");
        }
        Ok(Server {
            listener,
            budget: ByteBudget::new(config.max_in_flight_bytes),
            node,
            tls,
            metrics: None,
        })
    }

    /// Counts every answered request and open connection in `metrics` (without it, nothing
    /// is counted).
    pub fn with_metrics(self, metrics: Arc<Metrics>) -> Server {
        Server {
            metrics: Some(metrics),
            ..self
        }
    }

    /// Where requests are counted, if anywhere ([`Server::with_metrics`]).
    pub fn metrics(&self) -> Option<Arc<Metrics>> {
        self.metrics.clone()
    }

    /// The node-wide budget of client bytes in flight (`max-in-flight-bytes`), for the
    /// KvGateway to share.
    pub fn budget(&self) -> Arc<ByteBudget> {
        self.budget.clone()
    }

    /// The address actually bound (useful with port 0).
    ///
    /// # Errors
    /// As `TcpListener::local_addr`.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` turns true (or its sender is dropped): then stops accepting,
    /// stops reading requests, and waits up to `shutdown-grace-secs` for the answers to the
    /// requests already read.
    ///
    /// The accept loop runs in a ClientListener actor under a supervisor that
    /// restarts it within a budget (5 in 10 s) on the same bound socket; open connections
    /// live on across a restart. Returns false if the listener failed past its budget (the
    /// caller should stop the node), true after a requested shutdown.
    pub async fn run(self, shutdown: watch::Receiver<bool>) -> bool {
        let mut stop = shutdown.clone();
        let config = self.node.config().clone();
        let shared = Arc::new(Shared {
            node: self.node.clone(),
            connections: Arc::new(Semaphore::new(config.max_connections)),
            budget: self.budget.clone(),
            shutdown: shutdown.clone(),
            current: std::sync::Mutex::new(None),
            drained: watch::channel(false).0,
            tls: self.tls.clone(),
            metrics: self.metrics.clone(),
        });
        let spawned = Actor::spawn(
            None,
            Restarting::<ClientListener>::new(),
            RestartingArgs {
                child: (Arc::new(self.listener), shared.clone()),
                node: self.node.clone(),
                kind: "listener",
                what: "client listener",
            },
        )
        .await;
        let (supervisor, join) = match spawned {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "client listener did not start");
                return false;
            }
        };
        let mut join = std::pin::pin!(join);
        let requested = tokio::select! {
            _ = until_true(&mut stop) => true,
            _ = &mut join => false,
        };
        let grace = Duration::from_secs(config.shutdown_grace_secs);
        if requested {
            // Connections that reach the node while it stops are still answered
            // (`shutting_down`): the accept loop stops once none came for SHUTDOWN_QUIET.
            let mut drained = shared.drained.subscribe();
            let _ = tokio::time::timeout(grace, until_true(&mut drained)).await;
            supervisor.stop(Some("shutdown".into()));
            let _ = join.await;
        } else {
            tracing::error!("the client listener failed past its restart budget");
        }
        let all = config.max_connections as u32;
        if tokio::time::timeout(grace, shared.connections.acquire_many(all))
            .await
            .is_err()
        {
            tracing::warn!(
                ?grace,
                "connections still busy after the grace period; closing them"
            );
        }
        requested
    }
}

/// Messages of the ClientListener (local only).
#[derive(RactorMessage)]
pub enum ListenerMsg {
    /// Fault injection: panic.
    InjectPanic,
}

/// The accept loop of one incarnation; aborted when the actor's state is dropped (on stop
/// or on a panic).
struct AcceptLoop(tokio::task::JoinHandle<()>);

impl Drop for AcceptLoop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Accepts client connections and starts a task for each.
#[derive(Default)]
struct ClientListener;

impl Actor for ClientListener {
    type Msg = ListenerMsg;
    type State = AcceptLoop;
    type Arguments = (Arc<std::net::TcpListener>, Arc<Shared>);

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        (listener, shared): Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        let listener = TcpListener::from_std(listener.try_clone()?)?;
        *shared.current.lock().unwrap_or_else(|p| p.into_inner()) = Some(myself);
        Ok(AcceptLoop(tokio::spawn(accept_loop(listener, shared))))
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        _state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            ListenerMsg::InjectPanic => panic!("client listener: injected panic"),
        }
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let config = shared.node.config().clone();
    let mut stop = shared.shutdown.clone();
    let mut stopping = false;
    loop {
        let accepted = if stopping {
            match tokio::time::timeout(SHUTDOWN_QUIET, listener.accept()).await {
                Ok(a) => a,
                Err(_) => break,
            }
        } else {
            tokio::select! {
                _ = until_true(&mut stop) => {
                    stopping = true;
                    continue;
                }
                a = listener.accept() => a,
            }
        };
        match accepted {
            Ok((stream, peer)) => {
                let _ = stream.set_nodelay(true);
                match shared.connections.clone().try_acquire_owned() {
                    Ok(permit) => {
                        let shared = shared.clone();
                        tokio::spawn(
                            async move {
                                serve_connection(stream, peer, shared).await;
                                drop(permit);
                            }
                            .instrument(tracing::debug_span!("connection", %peer)),
                        );
                    }
                    Err(_) => {
                        tracing::warn!(%peer, max = config.max_connections, "refusing connection: too many open");
                        shared.observe(
                            UNDECODED_OP,
                            Some(ErrorCode::TooManyConnections.as_str()),
                            Instant::now(),
                        );
                        // A TLS client could not read a plain answer: it sees the close.
                        if shared.tls.is_none() {
                            tokio::spawn(refuse(stream, config.max_connections));
                        }
                    }
                }
            }
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::error!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    let _ = shared.drained.send(true);
}

/// Resolves once the flag is true (or its sender is gone).
async fn until_true(flag: &mut watch::Receiver<bool>) {
    let _ = flag.wait_for(|s| *s).await;
}

async fn refuse(mut stream: TcpStream, max: usize) {
    let e = ProtocolError::new(
        ErrorCode::TooManyConnections,
        format!("the node has its maximum of {max} connections open (max-connections)"),
    );
    let _ = stream
        .write_all(&ResponseFrame::error(0, &e).encode())
        .await;
    let _ = stream.shutdown().await;
}

/// Node-wide count of client request and answer bytes in flight (`max-in-flight-bytes`):
/// frames being received, requests being served, answers not yet written.
pub struct ByteBudget {
    used: AtomicUsize,
    limit: usize,
}

/// Bytes counted against a [`ByteBudget`] until dropped.
pub struct Reserved {
    budget: Arc<ByteBudget>,
    bytes: usize,
}

impl ByteBudget {
    /// A budget of `limit` bytes.
    pub fn new(limit: usize) -> Arc<Self> {
        Arc::new(Self {
            used: AtomicUsize::new(0),
            limit,
        })
    }

    /// Counts `bytes` if they fit under the limit.
    pub fn try_reserve(self: &Arc<Self>, bytes: usize) -> Option<Reserved> {
        let mut used = self.used.load(Ordering::Relaxed);
        loop {
            if used.saturating_add(bytes) > self.limit {
                return None;
            }
            match self.used.compare_exchange_weak(
                used,
                used + bytes,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => {
                    return Some(Reserved {
                        budget: self.clone(),
                        bytes,
                    })
                }
                Err(now) => used = now,
            }
        }
    }

    /// Counts `bytes` that already exist (an answer), over the limit if need be: they keep
    /// new requests out until they are written.
    pub fn force(self: &Arc<Self>, bytes: usize) -> Reserved {
        self.used.fetch_add(bytes, Ordering::AcqRel);
        Reserved {
            budget: self.clone(),
            bytes,
        }
    }

    /// Bytes counted now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }
}

impl Reserved {
    /// Counts `bytes` more if they fit under the budget's limit.
    pub fn try_grow(&mut self, bytes: usize) -> bool {
        match self.budget.try_reserve(bytes) {
            Some(more) => {
                self.bytes += more.bytes;
                std::mem::forget(more);
                true
            }
            None => false,
        }
    }
}

impl Drop for Reserved {
    fn drop(&mut self) {
        self.budget.used.fetch_sub(self.bytes, Ordering::AcqRel);
    }
}

/// Serves one client connection: reads frames, runs each request in a task of its own, and
/// queues the answers for the writer task.
///
/// Bounds (PROTOCOL.md, "Limits"): at most `max-in-flight` requests per connection are
/// unanswered, counting an answer until it is written; the reader pauses while the
/// connection has `max-frame-bytes` of answers unwritten, or runs as many requests as
/// `max-frame-bytes` of answers of the largest recent size would fill (its answer window; 16
/// before the first answer), which pushes back on the client through TCP; a frame's buffer grows as its bytes arrive;
/// a frame must arrive whole within `frame-timeout-ms` of its first byte; a connection with
/// nothing in flight is closed after `idle-timeout-ms`; a request that finds the node's
/// `max-in-flight-bytes` spent is answered `overloaded`.
///
/// On shutdown the connection stops starting requests: the requests already read are
/// answered, every frame read after is answered `shutting_down`, and the connection is
/// closed once everything is answered and no frame arrived for [`SHUTDOWN_QUIET`].
async fn serve_connection(stream: TcpStream, peer: SocketAddr, shared: Arc<Shared>) {
    let (node, mut shutdown) = (shared.node.clone(), shared.shutdown.clone());
    let _open = shared.metrics.as_ref().map(|m| m.connection_opened());
    let config = node.config().clone();
    let Some((rd, wr)) = tls::open(stream, shared.tls.as_deref(), peer).await else {
        return;
    };
    let mut reader = FrameReader {
        rd: BufReader::with_capacity(16 << 10, rd),
        frame_timeout: Duration::from_millis(config.frame_timeout_ms),
    };
    let conn = Arc::new(ConnState {
        pending: AtomicUsize::new(0),
        executing: AtomicUsize::new(0),
        recent_answer: AtomicUsize::new(0),
        changed: Notify::new(),
    });
    let max_in_flight = config.max_in_flight;
    let (tx, rx) = mpsc::channel::<Answer>(max_in_flight + 1);
    let wr: SharedWriter = Arc::new(tokio::sync::Mutex::new(
        tokio::io::BufWriter::with_capacity(64 << 10, wr),
    ));
    let writer = tokio::spawn(write_answers(wr.clone(), rx, conn.clone()));
    let in_flight = Arc::new(Semaphore::new(max_in_flight));
    let uploads = Uploads::new(node.clone(), shared.budget.clone());
    let idle_timeout =
        (config.idle_timeout_ms > 0).then(|| Duration::from_millis(config.idle_timeout_ms));
    let behind_limit = config.max_frame_bytes;
    // Queues an answer that needs no task (ping, errors).
    let queue = |bytes: Vec<u8>, permit: Option<OwnedSemaphorePermit>| {
        let tx = tx.clone();
        let conn = conn.clone();
        let reserved = shared.budget.force(bytes.len());
        async move {
            conn.pending.fetch_add(bytes.len(), Ordering::AcqRel);
            let _ = tx
                .send(Answer {
                    bytes,
                    _permit: permit,
                    _reserved: vec![reserved],
                })
                .await;
        }
    };
    let mut buf = Vec::new();
    let mut stopping = false;
    loop {
        if !stopping && *shutdown.borrow() {
            stopping = true;
        }
        // Room for one more request: a permit, and a client that reads its answers.
        let permit = tokio::select! {
            p = in_flight.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
            _ = until_true(&mut shutdown), if !stopping => continue,
        };
        loop {
            let notified = conn.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let pending = conn.pending.load(Ordering::Acquire);
            let executing = conn.executing.load(Ordering::Acquire);
            let behind =
                pending >= behind_limit || executing >= conn.window(behind_limit, max_in_flight);
            if !behind {
                break;
            }
            notified.await;
        }
        // How long to wait for the next frame: forever while requests are in flight, else
        // the idle timeout; on a stopping node, until every request read is answered and
        // then SHUTDOWN_QUIET passed without a frame.
        let idle = if !stopping && in_flight.available_permits() + 1 == max_in_flight {
            idle_timeout
        } else {
            None
        };
        let quiet = async {
            loop {
                let notified = conn.changed.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                if in_flight.available_permits() + 1 == max_in_flight {
                    break;
                }
                notified.await;
            }
            tokio::time::sleep(SHUTDOWN_QUIET).await;
        };
        let started = tokio::select! {
            h = reader.wait_start(idle) => h,
            _ = until_true(&mut shutdown), if !stopping => continue,
            () = quiet, if stopping => {
                tracing::debug!("closing a connection of a stopping node");
                break;
            }
        };
        let len = match started {
            Ok(true) => reader.header().await,
            Ok(false) => break,
            Err(e) => Err(e),
        };
        let len = match len {
            Ok(len) => len,
            Err(FrameError::Io(e))
                if e.kind() == std::io::ErrorKind::TimedOut
                    && idle.is_some()
                    && reader.rd.buffer().is_empty() =>
            {
                if stopping && in_flight.available_permits() + 1 < max_in_flight {
                    // Requests still running: keep waiting for their answers.
                    continue;
                }
                tracing::debug!(stopping, "closing an idle connection");
                break;
            }
            Err(e) => {
                tracing::debug!(error = %e, "connection ended");
                break;
            }
        };
        if len > config.max_frame_bytes {
            tracing::debug!(
                len,
                max = config.max_frame_bytes,
                "frame too large; closing connection"
            );
            let e = ProtocolError::new(
                ErrorCode::FrameTooLarge,
                format!("frame of {len} bytes is over the maximum of {} bytes (max-frame-bytes); closing the connection", config.max_frame_bytes),
            );
            shared.observe(UNDECODED_OP, Some(e.code.as_str()), Instant::now());
            queue(ResponseFrame::error(0, &e).encode(), Some(permit)).await;
            break;
        }
        let deadline = Instant::now() + reader.frame_timeout;
        let mut reserved = shared.budget.force(0);
        let admitted = match reader.body(&mut buf, len, &mut reserved, deadline).await {
            Ok(admitted) => admitted,
            Err(e) => {
                tracing::debug!(error = %e, "connection ended inside a frame");
                break;
            }
        };
        if !admitted {
            drop(reserved);
            let id = crate::protocol::recover_id(&buf);
            let e = ProtocolError::new(
                ErrorCode::Overloaded,
                format!(
                    "the node has {} bytes of requests and answers in flight, its maximum is {} (max-in-flight-bytes); try again later",
                    shared.budget.used(),
                    config.max_in_flight_bytes
                ),
            );
            shared.observe(UNDECODED_OP, Some(e.code.as_str()), Instant::now());
            queue(ResponseFrame::error(id, &e).encode(), Some(permit)).await;
            continue;
        }
        let started = Instant::now();
        let (decoded, layout) = match Request::decode_routed(&buf) {
            Ok(d) => (Ok((d.id, d.request)), d.layout),
            Err(e) => (Err(e), None),
        };
        let op = decoded.as_ref().map_or(UNDECODED_OP, |(_, r)| r.op());
        match decoded {
            Ok((id, _)) | Err((id, _)) if stopping => {
                let e = crate::protocol::error_of(ringkv_actors::KvError::ShuttingDown);
                shared.observe(op, Some(e.code.as_str()), started);
                queue(ResponseFrame::error(id, &e).encode(), Some(permit)).await;
            }
            Ok((id, Request::Ping)) => {
                shared.observe(op, None, started);
                let answer = ResponseFrame {
                    layout: newer_layout(&node, layout),
                    ..ResponseFrame::ok(id)
                };
                queue(answer.encode(), Some(permit)).await;
            }
            Ok((id, Request::InjectFault(Fault::PanicActor(actor)))) if actor == "listener" => {
                let answer = if !config.fault_injection {
                    ResponseFrame::error(
                        id,
                        &crate::protocol::error_of(ringkv_actors::KvError::FaultInjectionDisabled),
                    )
                } else {
                    let current = shared
                        .current
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .clone();
                    if let Some(l) = current {
                        let _ = l.send_message(ListenerMsg::InjectPanic);
                    }
                    ResponseFrame::ok(id)
                };
                shared.observe(op, answer.code.as_deref(), started);
                queue(answer.encode(), Some(permit)).await;
            }
            Ok((id, request)) => {
                let (node, uploads, tx, conn, budget, wr, shared) = (
                    node.clone(),
                    uploads.clone(),
                    tx.clone(),
                    conn.clone(),
                    shared.budget.clone(),
                    wr.clone(),
                    shared.clone(),
                );
                let max_frame = config.max_frame_bytes;
                conn.executing.fetch_add(1, Ordering::AcqRel);
                let fut = async move {
                    let mut frame = execute(&node, &uploads, id, request).await;
                    let layout = newer_layout(&node, layout);
                    frame.layout = layout;
                    let answer = frame.encode();
                    let answer = match oversized_answer(id, answer.len() - 4, max_frame, layout) {
                        Some(refused) => {
                            shared.observe(op, refused.code.as_deref(), started);
                            refused.encode()
                        }
                        None => {
                            shared.observe(op, frame.code.as_deref(), started);
                            answer
                        }
                    };
                    drop(frame);
                    conn.answered(answer.len());
                    if write_directly(&wr, &answer).await {
                        conn.executing.fetch_sub(1, Ordering::AcqRel);
                        conn.changed.notify_waiters();
                        drop((permit, reserved));
                        return;
                    }
                    let answer_reserved = budget.force(answer.len());
                    conn.pending.fetch_add(answer.len(), Ordering::AcqRel);
                    conn.executing.fetch_sub(1, Ordering::AcqRel);
                    conn.changed.notify_waiters();
                    let _ = tx
                        .send(Answer {
                            bytes: answer,
                            _permit: Some(permit),
                            _reserved: vec![reserved, answer_reserved],
                        })
                        .await;
                };
                tokio::spawn(fut);
            }
            Err((id, e)) => {
                shared.observe(op, Some(e.code.as_str()), started);
                queue(ResponseFrame::error(id, &e).encode(), Some(permit)).await;
            }
        }
    }
    // Wait for the answers to every request already read, then let the writer finish.
    let _ = in_flight.acquire_many(max_in_flight as u32).await;
    drop(tx);
    let _ = writer.await;
}

/// The `record_too_large` answer that replaces an answer whose body is `body_len` bytes, over
/// `max-frame-bytes` (`max_frame`), keeping its `layout`; `None` if the answer fits.
fn oversized_answer(
    id: u64,
    body_len: usize,
    max_frame: usize,
    layout: Option<u64>,
) -> Option<ResponseFrame> {
    (body_len > max_frame).then(|| {
        let e = ProtocolError::new(
            ErrorCode::RecordTooLarge,
            format!("the answer would be {body_len} bytes, over the maximum of {max_frame} bytes (max-frame-bytes): the key's siblings together are too large to return"),
        );
        ResponseFrame {
            layout,
            ..ResponseFrame::error(id, &e)
        }
    })
}

/// The answer's `layout` field: this node's routing version ([`Node::routing_version`]) if
/// the request named another one (`client`), else nothing.
fn newer_layout(node: &Node, client: Option<u64>) -> Option<u64> {
    let client = client?;
    let ours = node.routing_version();
    (ours != client).then_some(ours)
}

fn info<T: serde::Serialize>(id: u64, value: &T) -> ResponseFrame {
    ResponseFrame {
        info: Some(serde_json::to_value(value).unwrap_or(serde_json::Value::Null)),
        ..ResponseFrame::ok(id)
    }
}

/// What `cluster commit` answers (and `cluster plan` starts with): the version, the moves,
/// and each node's replica count in the new layout.
fn plan_summary(plan: &ringkv_cluster::membership::Plan) -> serde_json::Value {
    serde_json::json!({
        "version": plan.version,
        "moved": plan.moved,
        "joining": plan.joining,
        "leaving": plan.leaving,
        "replicas_per_node": plan.layout.replicas_by_name(),
    })
}

/// What `cluster plan` answers: [`plan_summary`], plus per node the replicas gained and lost
/// and the estimated bytes in and out (`nodes`), the estimated total (`bytes_to_move`), the
/// members asked for partition sizes and those that did not answer (the estimate is then
/// partial: `estimate_complete` false), and what is staged.
fn plan_report(report: &ringkv_actors::node::PlanReport) -> serde_json::Value {
    let mut out = plan_summary(&report.plan);
    let extra = serde_json::json!({
        "nodes": report.moves.nodes,
        "bytes_to_move": report.moves.bytes_to_move,
        "sizes_asked": report.asked,
        "sizes_not_answered": report.not_answered,
        "estimate_complete": report.not_answered.is_empty(),
        "staged": report.staged,
    });
    if let (Some(out), serde_json::Value::Object(extra)) = (out.as_object_mut(), extra) {
        out.extend(extra);
    }
    out
}

/// `current` with the fields `bucket_set` gave changed. `n`, `r` and `w` arrive as any
/// unsigned integer; [`Node::set_bucket_props`] checks the rule on the result.
///
/// # Errors
/// [`KvError::BadQuorum`] for a quorum field too large to be stored at all.
fn merged_props(mut current: BucketProps, new: &BucketPropsFrame) -> Result<BucketProps, KvError> {
    let rule = format!("1 <= r, w <= n <= {LAYOUT_REPLICAS}");
    let quorum = |field: &str, new: Option<u64>, old: u8| match new {
        None => Ok(old),
        Some(q) => u8::try_from(q).map_err(|_| {
            KvError::BadQuorum(format!(
                "bucket properties must satisfy {rule}, not {field}={q}"
            ))
        }),
    };
    current.n = quorum("n", new.n, current.n)?;
    current.r = quorum("r", new.r, current.r)?;
    current.w = quorum("w", new.w, current.w)?;
    current.timeout_ms = new.timeout_ms.unwrap_or(current.timeout_ms);
    current.sloppy_quorum = new.sloppy_quorum.unwrap_or(current.sloppy_quorum);
    if let Some(c) = &new.consistency {
        current.consistency =
            c.parse()
                .map_err(|e: ringkv_cluster::membership::MembershipError| {
                    KvError::Admin(e.to_string())
                })?;
    }
    if let Some(c) = &new.compression {
        current.compression =
            c.parse()
                .map_err(|e: ringkv_cluster::membership::MembershipError| {
                    KvError::Admin(e.to_string())
                })?;
    }
    Ok(current)
}

/// Runs one request on the node and builds its answer.
async fn execute(
    node: &Arc<Node>,
    uploads: &Arc<Uploads>,
    id: u64,
    request: Request,
) -> ResponseFrame {
    let request = match strong::execute(node, id, request).await {
        Ok(answer) => return answer,
        Err(request) => request,
    };
    let result = match request {
        Request::Ping => Ok(ResponseFrame::ok(id)),
        // Answered by `strong::execute` on every bucket.
        Request::Cas { .. } => Err(KvError::WrongConsistency(
            "cas is an operation of strong buckets".into(),
        )),
        Request::Get {
            bucket,
            key,
            meta: false,
            opts,
        } => node
            .get(&bucket, &key, &opts)
            .await
            .map(|f| crate::protocol::fetched(id, f)),
        Request::Get {
            bucket,
            key,
            meta: true,
            opts,
        } => node
            .get_meta(&bucket, &key, &opts)
            .await
            .map(|f| crate::protocol::fetched_meta(id, f)),
        Request::PutBegin {
            bucket,
            key,
            context,
            size,
            opts,
        } => uploads
            .begin(&bucket, &key, &context, size, &opts)
            .await
            .map(|(upload, chunk, window)| ResponseFrame {
                upload: Some(upload),
                chunk_bytes: Some(chunk as u64),
                window: Some(window as u64),
                ..ResponseFrame::ok(id)
            }),
        Request::PutChunk { upload, seq, data } => {
            uploads
                .chunk(upload, seq, &data)
                .await
                .map(|received| ResponseFrame {
                    received: Some(received),
                    ..ResponseFrame::ok(id)
                })
        }
        Request::PutCommit {
            upload,
            crc32,
            seq,
            return_body,
        } => match uploads.commit(upload, seq, crc32).await {
            Ok(uploads::Committed {
                written,
                bucket,
                key,
                opts,
            }) => {
                let (manifest, state) = (written.manifest, written.state);
                let body = if return_body {
                    node.answer_state(&bucket, &key, state, &opts)
                        .await
                        .map(Some)
                } else {
                    Ok(None)
                };
                body.map(|fetched| {
                    let base = match fetched {
                        Some(f) => crate::protocol::fetched(id, f),
                        None => ResponseFrame::ok(id),
                    };
                    ResponseFrame {
                        size: Some(written.size),
                        version: manifest.map(|m| serde_bytes::ByteBuf::from(m.version)),
                        crc32: Some(written.crc32),
                        ..base
                    }
                })
            }
            Err(e) => Err(e),
        },
        Request::PutAbort { upload } => {
            uploads.abort(upload);
            Ok(ResponseFrame::ok(id))
        }
        Request::GetRange {
            bucket,
            key,
            version,
            offset,
            length,
            opts,
        } => node
            .get_range(&bucket, &key, version.as_deref(), offset, length, &opts)
            .await
            .map(|r| ResponseFrame {
                value: Some(serde_bytes::ByteBuf::from(r.value)),
                offset: Some(r.offset),
                size: Some(r.info.size),
                version: r
                    .info
                    .manifest
                    .as_ref()
                    .map(|m| serde_bytes::ByteBuf::from(m.version.clone())),
                crc32: r.info.manifest.as_ref().map(|m| m.crc32),
                context: Some(serde_bytes::ByteBuf::from(r.context)),
                ..ResponseFrame::ok(id)
            }),
        Request::Put {
            bucket,
            key,
            value,
            context,
            return_body,
            opts,
        } if !return_body => node
            .put_ack(&bucket, &key, value, &context, &opts)
            .await
            .map(|()| ResponseFrame::ok(id)),
        Request::Put {
            bucket,
            key,
            value,
            context,
            opts,
            ..
        } => node
            .put(&bucket, &key, value, &context, &opts)
            .await
            .map(|f| crate::protocol::fetched(id, f)),
        Request::Explain {
            bucket,
            key,
            timeout,
        } => node
            .explain(&bucket, &key, timeout)
            .await
            .map(|report| info(id, &report)),
        Request::Layout => node.routing_layout().map(|layout| info(id, &layout)),
        Request::ClusterStatus => Ok(info(id, &node.cluster_status())),
        Request::ClusterPlan => node
            .cluster_plan()
            .await
            .map(|r| info(id, &plan_report(&r))),
        Request::ClusterCommit => node.cluster_commit().map(|p| info(id, &plan_summary(&p))),
        Request::ClusterLeave { node: name } => {
            node.cluster_leave(&name).map(|()| ResponseFrame::ok(id))
        }
        Request::ClusterSet {
            node: name,
            zone,
            capacity,
        } => node
            .cluster_set(&name, zone, capacity)
            .map(|staged| info(id, &staged)),
        Request::ClusterReplace {
            node: old,
            replacement,
        } => node
            .cluster_replace(&old, &replacement)
            .map(|staged| info(id, &staged)),
        Request::ClusterRevert => node.cluster_revert().map(|r| info(id, &r)),
        Request::ClusterTransfers => Ok(info(id, &node.cluster_transfers().await)),
        Request::BucketGet { bucket } => validate_bucket(&bucket)
            .map_err(KvError::from)
            .map(|()| info(id, &node.bucket_props(&bucket))),
        Request::BucketSet { bucket, props } => {
            match validate_bucket(&bucket)
                .map_err(KvError::from)
                .and_then(|()| merged_props(node.bucket_props(&bucket), &props))
            {
                Ok(p) => node
                    .set_bucket_props(&bucket, p)
                    .await
                    .map(|()| info(id, &p)),
                Err(e) => Err(e),
            }
        }
        Request::InjectFault(Fault::PanicVnode { bucket, key }) => node
            .inject_vnode_panic(&bucket, &key)
            .map(|_| ResponseFrame::ok(id)),
        Request::InjectFault(Fault::PanicActor(actor)) => node
            .inject_actor_panic(&actor)
            .await
            .map(|()| ResponseFrame::ok(id)),
        Request::InjectFault(Fault::WeakenStrong(on)) => node
            .inject_weaken_strong(on)
            .map(|()| ResponseFrame::ok(id)),
        Request::InjectFault(Fault::Isolate(peers)) => {
            node.inject_isolation(peers).map(|()| ResponseFrame::ok(id))
        }
        Request::Delete {
            bucket,
            key,
            context,
            opts,
        } => node
            .delete(&bucket, &key, &context, &opts)
            .await
            .map(|()| ResponseFrame::ok(id)),
    };
    result.unwrap_or_else(|e| ResponseFrame::error(id, &crate::protocol::error_of(e)))
}
