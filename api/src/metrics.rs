//! Prometheus metrics of a node (`ringkv start --metrics-listen ADDR`), served as
//! `GET /metrics` in the Prometheus text format (0.0.4). README, "Operations", lists every
//! metric.
//!
//! Two sources:
//! * **Counted on the request path** by the client listener, in the node's [`Metrics`]
//!   registry: `ringkv_requests_total{op,code}`, `ringkv_request_duration_seconds{op}`,
//!   `ringkv_quorum_failures_total{op}` and `ringkv_client_connections`. A node started
//!   without `--metrics-listen` has no [`Metrics`] and counts nothing.
//! * **Read at scrape time** from what the node keeps anyway ([`Node::cluster_status`], the
//!   Transfer actor's counters and status), built afresh for every scrape: nothing is counted
//!   twice, and a peer that left the cluster leaves `ringkv_peer_phi` with it.
//!
//! The HTTP side ([`MetricsListener`]) is hyper's HTTP/1 server. `GET /metrics` is the only
//! thing it serves; any other method or path is answered 404. It cannot hurt the node: at
//! most [`MAX_SCRAPE_CONNECTIONS`] connections at once (more are closed unanswered), one
//! request per connection, headers of at most [`MAX_HEADER_BYTES`] within
//! [`HEADER_TIMEOUT`], and the whole connection within [`SCRAPE_TIMEOUT`].

use crate::protocol::{ErrorCode, OPS};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Method, Response, StatusCode};
use prometheus::proto::MetricFamily;
use prometheus::{
    Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    Opts, Registry, TextEncoder,
};
use ringkv_actors::transfer::TransferState;
use ringkv_actors::Node;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

/// Upper bounds of the `ringkv_request_duration_seconds` buckets, seconds: 100 µs to 10 s,
/// about three per decade.
pub const DURATION_BUCKETS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// The `op` label of a request whose frame could not be decoded into an operation (too
/// large, malformed, unknown op, or refused before decoding: overloaded, too many
/// connections).
pub const UNDECODED_OP: &str = "unknown";

/// Every `op` label value: the ops of [`crate::protocol::OPS`] and [`UNDECODED_OP`], at the
/// position [`op_slot`] gives. Each one's `ok` counter and histogram are looked up once and kept
/// ([`Metrics::observe`]).
const OP_SLOTS: usize = OPS.len() + 1;

/// The slot of `op` among the kept metrics; `None` for a label not in [`OP_SLOTS`].
fn op_slot(op: &str) -> Option<usize> {
    OPS.iter()
        .position(|o| *o == op)
        .or((op == UNDECODED_OP).then_some(OPS.len()))
}

/// Codes that mean too few replicas answered: counted in `ringkv_quorum_failures_total` as
/// well as in `ringkv_requests_total`.
pub const QUORUM_FAILURE_CODES: [ErrorCode; 5] = [
    ErrorCode::QuorumFailed,
    ErrorCode::Timeout,
    ErrorCode::Unreachable,
    ErrorCode::NoMajority,
    ErrorCode::Indeterminate,
];

/// Most scrape connections open at once; more are closed without an answer.
pub const MAX_SCRAPE_CONNECTIONS: usize = 8;

/// A scrape connection must send its request headers within this time.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);

/// A scrape connection is closed this long after it was accepted, answered or not.
pub const SCRAPE_TIMEOUT: Duration = Duration::from_secs(10);

/// Largest request head a scraper may send, bytes (hyper's read buffer).
pub const MAX_HEADER_BYTES: usize = 16 << 10;

/// Longest a scrape waits for the Transfer actor's status (`ringkv_transfers`); without an
/// answer the gauge reads 0 in every state.
pub const TRANSFER_STATUS_TIMEOUT: Duration = Duration::from_secs(1);

/// The content type of the text format.
const TEXT_FORMAT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The metrics of one node: the request-path counters and the way to the node's own
/// counters, read at each scrape.
pub struct Metrics {
    node: Arc<Node>,
    registry: Registry,
    requests: IntCounterVec,
    duration: HistogramVec,
    quorum_failures: IntCounterVec,
    connections: IntGauge,
    /// The `ok` counter and the histogram of each of [`OPS`], once it was first answered:
    /// the common case then costs no label lookup (a hash and a shared lock each).
    by_op: [OnceLock<OpMetrics>; OP_SLOTS],
}

/// The request-path metrics of one op.
struct OpMetrics {
    ok: IntCounter,
    duration: Histogram,
}

/// An open client connection, counted in `ringkv_client_connections` until dropped.
pub struct OpenConnection(IntGauge);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl Metrics {
    /// The metrics of `node`, with the request-path metrics registered (and
    /// `ringkv_quorum_failures_total` at 0 for the data ops, so that it shows before the
    /// first failure).
    ///
    /// # Errors
    /// A [`prometheus::Error`] if a metric cannot be made or registered (a bug: the names
    /// and labels are fixed).
    pub fn new(node: Arc<Node>) -> prometheus::Result<Arc<Self>> {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "ringkv_requests_total",
                "Client requests answered, by op and result code (ok or the protocol error code).",
            ),
            &["op", "code"],
        )?;
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "ringkv_request_duration_seconds",
                "Time from a client request's whole frame read to its answer built, seconds.",
            )
            .buckets(DURATION_BUCKETS.to_vec()),
            &["op"],
        )?;
        let quorum_failures = IntCounterVec::new(
            Opts::new(
                "ringkv_quorum_failures_total",
                "Client requests that failed for want of replicas: codes quorum_failed, timeout, unreachable, no_majority, indeterminate.",
            ),
            &["op"],
        )?;
        let connections =
            IntGauge::new("ringkv_client_connections", "Client connections open now.")?;
        for op in ["get", "put", "delete", "cas"] {
            quorum_failures.get_metric_with_label_values(&[op])?;
        }
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(duration.clone()))?;
        registry.register(Box::new(quorum_failures.clone()))?;
        registry.register(Box::new(connections.clone()))?;
        Ok(Arc::new(Self {
            node,
            registry,
            requests,
            duration,
            quorum_failures,
            connections,
            by_op: std::array::from_fn(|_| OnceLock::new()),
        }))
    }

    /// The kept metrics of `op`, made on its first use; `None` for a label without a slot.
    fn op_metrics(&self, op: &'static str) -> Option<&OpMetrics> {
        let slot = &self.by_op[op_slot(op)?];
        if slot.get().is_none() {
            let ok = self
                .requests
                .get_metric_with_label_values(&[op, "ok"])
                .ok()?;
            let duration = self.duration.get_metric_with_label_values(&[op]).ok()?;
            let _ = slot.set(OpMetrics { ok, duration });
        }
        slot.get()
    }

    /// Counts one answered request: its op ([`crate::protocol::Request::op`] or [`UNDECODED_OP`]), its error
    /// code (`None` for a success) and the time it took.
    pub fn observe(&self, op: &'static str, code: Option<&str>, elapsed: Duration) {
        let kept = self.op_metrics(op);
        match kept {
            Some(m) => m.duration.observe(elapsed.as_secs_f64()),
            None => {
                if let Ok(h) = self.duration.get_metric_with_label_values(&[op]) {
                    h.observe(elapsed.as_secs_f64());
                }
            }
        }
        let Some(code) = code else {
            match kept {
                Some(m) => m.ok.inc(),
                None => self.count(op, "ok"),
            }
            return;
        };
        // Only known codes become label values, whatever a frame held.
        let code = match code.parse::<ErrorCode>() {
            Ok(code) => {
                if QUORUM_FAILURE_CODES.contains(&code) {
                    if let Ok(c) = self.quorum_failures.get_metric_with_label_values(&[op]) {
                        c.inc();
                    }
                }
                code.as_str()
            }
            Err(_) => "other",
        };
        self.count(op, code);
    }

    /// Adds one to `ringkv_requests_total{op, code}`.
    fn count(&self, op: &str, code: &str) {
        if let Ok(c) = self.requests.get_metric_with_label_values(&[op, code]) {
            c.inc();
        }
    }

    /// Counts an open client connection until the returned guard is dropped.
    pub fn connection_opened(&self) -> OpenConnection {
        self.connections.inc();
        OpenConnection(self.connections.clone())
    }

    /// Every metric in the text format: the request-path ones and the node's counters as
    /// they are now.
    pub async fn render(&self) -> String {
        let mut families = self.registry.gather();
        match self.node_families().await {
            Ok(more) => families.extend(more),
            Err(e) => tracing::warn!(error = %e, "metrics: node counters left out"),
        }
        families.sort_by(|a, b| a.name().cmp(b.name()));
        let mut out = String::new();
        if let Err(e) = TextEncoder::new().encode_utf8(&families, &mut out) {
            tracing::warn!(error = %e, "metrics: encoding failed");
        }
        out
    }

    /// The node's own counters and gauges, read now into a registry of their own.
    async fn node_families(&self) -> prometheus::Result<Vec<MetricFamily>> {
        let status = self.node.cluster_status();
        let transfers =
            tokio::time::timeout(TRANSFER_STATUS_TIMEOUT, self.node.transfers().status())
                .await
                .unwrap_or_default();
        let (_, transfer_keys, transfer_bytes, _) = self.node.transfers().counters().snapshot();
        let r = Scrape(Registry::new());
        let of = |map: &std::collections::BTreeMap<&'static str, u64>, key: &str| {
            map.get(key).copied().unwrap_or(0)
        };

        r.gauges(
            "ringkv_node_info",
            "Always 1; the node's name in the label.",
            "node",
            [(status.node.clone(), 1.0)],
        )?;
        r.gauge(
            "ringkv_layout_version",
            "Newest committed layout version this node knows (0: none).",
            status.layout_version as f64,
        )?;
        r.gauge(
            "ringkv_hints_pending",
            "Hints this node holds for other nodes now.",
            of(&status.hints, "pending") as f64,
        )?;
        r.counter(
            "ringkv_hints_stored_total",
            "Hints this node stored for other nodes.",
            of(&status.hints, "stored"),
        )?;
        r.counter(
            "ringkv_hints_delivered_total",
            "Hints this node delivered to their owners and deleted.",
            of(&status.hints, "delivered"),
        )?;
        r.counter(
            "ringkv_anti_entropy_exchanges_total",
            "Merkle tree exchanges this node started with another replica of a partition.",
            of(&status.repair, "exchanges"),
        )?;
        r.counter(
            "ringkv_anti_entropy_keys_repaired_total",
            "Keys sent or merged by anti-entropy because two replicas differed.",
            of(&status.repair, "keys_repaired"),
        )?;
        r.counter(
            "ringkv_anti_entropy_bytes_total",
            "Encoded bytes of anti-entropy requests and answers.",
            of(&status.repair, "bytes_sent"),
        )?;
        r.counter(
            "ringkv_tombstones_purged_total",
            "Tombstones and expired values purged once every replica held them.",
            of(&status.repair, "tombstones_purged"),
        )?;
        r.counter(
            "ringkv_gossip_exchanges_total",
            "Cluster state exchanges this node made or answered.",
            of(&status.gossip, "exchanges"),
        )?;
        r.counter(
            "ringkv_replica_batches_total",
            "Batches of replica merges and reads sent to other nodes (one cluster message each).",
            of(&status.replica, "batches"),
        )?;
        r.counter(
            "ringkv_replica_batched_calls_total",
            "Replica calls those batches carried.",
            of(&status.replica, "batched_calls"),
        )?;
        r.counters(
            "ringkv_actor_restarts_total",
            "Restarts of supervised actors, by actor type.",
            "actor",
            status.restarts.iter().map(|(a, n)| (a.to_string(), *n)),
        )?;
        r.counter(
            "ringkv_transfer_keys_total",
            "Keys this node received by partition transfers.",
            transfer_keys,
        )?;
        r.counter(
            "ringkv_transfer_bytes_total",
            "Bytes (LMDB key plus record) this node received by partition transfers.",
            transfer_bytes,
        )?;
        let mut states: std::collections::BTreeMap<&str, f64> =
            ["queued", "streaming", "verifying", "done", "failed"]
                .into_iter()
                .map(|s| (s, 0.0))
                .collect();
        for row in &transfers {
            let state = match row.state {
                TransferState::Queued => "queued",
                TransferState::Streaming => "streaming",
                TransferState::Verifying => "verifying",
                TransferState::Done => "done",
                TransferState::Failed { .. } => "failed",
            };
            *states.entry(state).or_default() += 1.0;
        }
        r.gauges(
            "ringkv_transfers",
            "Partition transfers this node receives for the live layouts, by state.",
            "state",
            states.into_iter().map(|(s, n)| (s.to_string(), n)),
        )?;
        r.gauge(
            "ringkv_stored_keys",
            "Keys (tombstones included) in this node's partitions.",
            of(&status.storage, "keys") as f64,
        )?;
        r.gauge(
            "ringkv_stored_bytes",
            "Bytes of keys and records in this node's partitions (page overhead not counted).",
            of(&status.storage, "bytes") as f64,
        )?;
        let envs = || status.lmdb.iter().map(|(env, u)| (env.to_string(), *u));
        r.gauges(
            "ringkv_lmdb_map_used_bytes",
            "Bytes of an LMDB env's map up to its highest page used, by env (data, hints).",
            "env",
            envs().map(|(e, u)| (e, u.used_bytes as f64)),
        )?;
        r.gauges(
            "ringkv_lmdb_map_size_bytes",
            "An LMDB env's map size now, by env; it doubles when full.",
            "env",
            envs().map(|(e, u)| (e, u.map_bytes as f64)),
        )?;
        r.gauges(
            "ringkv_lmdb_map_max_bytes",
            "The largest map size an LMDB env may grow to, by env; past it writes fail with storage_full.",
            "env",
            envs().map(|(e, u)| (e, u.max_bytes as f64)),
        )?;
        let peers = || status.members.iter().filter(|m| m.name != status.node);
        r.gauges(
            "ringkv_peer_phi",
            "Phi of each peer as this node's failure detector sees it (0 for a peer never heard from).",
            "peer",
            peers().map(|m| (m.name.clone(), m.phi)),
        )?;
        r.gauges(
            "ringkv_peer_up",
            "1 if this node's failure detector sees the peer up, else 0.",
            "peer",
            peers().map(|m| (m.name.clone(), if m.up { 1.0 } else { 0.0 })),
        )?;
        Ok(r.0.gather())
    }
}

/// A registry made for one scrape, with the metrics read for it.
struct Scrape(Registry);

impl Scrape {
    fn counter(&self, name: &str, help: &str, value: u64) -> prometheus::Result<()> {
        let c = IntCounter::new(name, help)?;
        c.inc_by(value);
        self.0.register(Box::new(c))
    }

    fn gauge(&self, name: &str, help: &str, value: f64) -> prometheus::Result<()> {
        let g = Gauge::new(name, help)?;
        g.set(value);
        self.0.register(Box::new(g))
    }

    fn counters(
        &self,
        name: &str,
        help: &str,
        label: &str,
        values: impl IntoIterator<Item = (String, u64)>,
    ) -> prometheus::Result<()> {
        let v = IntCounterVec::new(Opts::new(name, help), &[label])?;
        for (l, n) in values {
            v.get_metric_with_label_values(&[l.as_str()])?.inc_by(n);
        }
        self.0.register(Box::new(v))
    }

    fn gauges(
        &self,
        name: &str,
        help: &str,
        label: &str,
        values: impl IntoIterator<Item = (String, f64)>,
    ) -> prometheus::Result<()> {
        let v = GaugeVec::new(Opts::new(name, help), &[label])?;
        for (l, x) in values {
            v.get_metric_with_label_values(&[l.as_str()])?.set(x);
        }
        self.0.register(Box::new(v))
    }
}

/// The metrics endpoint's listening socket.
pub struct MetricsListener {
    listener: TcpListener,
}

impl MetricsListener {
    /// Binds `addr` (port 0 picks a free port).
    ///
    /// # Errors
    /// The bind error (address in use, permission).
    pub async fn bind(addr: SocketAddr) -> std::io::Result<Self> {
        Ok(Self {
            listener: TcpListener::bind(addr).await?,
        })
    }

    /// The address actually bound.
    ///
    /// # Errors
    /// As `TcpListener::local_addr`.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves `GET /metrics` from `metrics` until the task is dropped or aborted (each
    /// connection's task ends within [`SCRAPE_TIMEOUT`] by itself).
    pub async fn run(self, metrics: Arc<Metrics>) {
        let slots = Arc::new(Semaphore::new(MAX_SCRAPE_CONNECTIONS));
        loop {
            let (stream, peer) = match self.listener.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "metrics: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                tracing::debug!(%peer, "metrics: too many scrape connections; closing one");
                continue;
            };
            let metrics = metrics.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |request| {
                    let metrics = metrics.clone();
                    async move { Ok::<_, Infallible>(answer(&metrics, request).await) }
                });
                let connection = hyper::server::conn::http1::Builder::new()
                    .keep_alive(false)
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(HEADER_TIMEOUT)
                    .max_buf_size(MAX_HEADER_BYTES)
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
                match tokio::time::timeout(SCRAPE_TIMEOUT, connection).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => tracing::debug!(%peer, error = %e, "metrics: connection failed"),
                    Err(_) => tracing::debug!(%peer, "metrics: connection timed out"),
                }
                drop(slot);
            });
        }
    }
}

/// The answer to one HTTP request: the metrics for `GET /metrics`, else 404.
async fn answer(metrics: &Metrics, request: hyper::Request<Incoming>) -> Response<Full<Bytes>> {
    if request.method() != Method::GET || request.uri().path() != "/metrics" {
        let mut response = Response::new(Full::new(Bytes::from_static(
            b"not found: this endpoint serves GET /metrics only\n",
        )));
        *response.status_mut() = StatusCode::NOT_FOUND;
        return response;
    }
    let mut response = Response::new(Full::new(Bytes::from(metrics.render().await)));
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(TEXT_FORMAT));
    response
}
