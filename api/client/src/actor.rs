//! The actor-message client (cargo feature `actor`): a Rust service joins the actor system as
//! a ractor_cluster *client node* and calls the nodes' KvGateway actors with typed handles.
//!
//! ```no_run
//! # async fn demo() -> Result<(), ringkv_client::ClientError> {
//! use ringkv_client::actor::{ActorClientConfig, KvRef};
//! let config = ActorClientConfig::new("cart-service", "the-cluster-cookie", ["127.0.0.1:7400"]);
//! let kv = KvRef::connect(config).await?;
//! kv.put(b"carts", b"alice", b"milk".to_vec(), &[], &Default::default()).await?;
//! let cart = kv.get(b"carts", b"alice", &Default::default()).await?;
//! # Ok(()) }
//! ```
//!
//! * **Transport**: [`KvRef::connect`] starts a ractor_cluster `NodeServer` named
//!   `client-NAME` (the [`ringkv_proto::CLIENT_NAME_PREFIX`] marks client nodes) in Isolated
//!   mode and dials each address given (the nodes' `actor-listen`) with the cluster cookie,
//!   then every node's `actor-listen` the layout lists (`actor_addr`), again every
//!   [`ActorClientConfig::reconnect_every`] while a session is missing.
//! * **Requests**: the KvGateway of every node is in the process group
//!   [`ringkv_proto::KV_GROUP`] (and in `ringkv.kv.NODE`), found through ractor's `pg`, never by
//!   actor id. A request is a [`GatewayMsg::Call`] whose payload is
//!   [`ringkv_proto::ACTOR_WIRE_V1`] then the msgpack body of the TCP protocol's request frame;
//!   the reply is the version byte then an answer frame's body. So a client node gets exactly
//!   the TCP protocol's semantics, validation and limits (PROTOCOL.md, "Actor transport").
//! * **Routing**: as [`crate::ClusterClient`]: the layout comes from op `layout` through a
//!   gateway, the key's partition from [`ringkv_proto::ring::partition_for`], and the request
//!   goes to the gateway of the first replica that has a session, else to any gateway.
//! * **Failure**: a call waits at most [`ActorClientConfig::call_timeout`] (or the request's
//!   `timeout_ms` plus a second): then [`ClientError::NoAnswer`]. If the node's session ends
//!   while a call waits, ractor_cluster drops the call's reply port and the call fails at once
//!   with [`ClientError::NodeLost`]. A `get` that fails so is sent once more to another node;
//!   a write is not (it may have been applied). With no gateway reachable a call fails with
//!   [`ClientError::NoNode`].
//! * **Supervision**: [`KvRef::actor`] is the KvClient actor (link it to a supervisor with
//!   `ActorCell::link`); [`KvRef::monitor_nodes`] makes an actor receive
//!   `SupervisionEvent::ProcessGroupChanged` (join and leave of [`ringkv_proto::KV_GROUP`]) as
//!   nodes come and go; [`node_change`] reads such an event.

use crate::{
    cas_frame, cas_outcome, checked, delete_frame, fetched, get_frame, put_frame, CallOptions,
    CasOutcome, ClientError, Fetched, LayoutInfo,
};
use ractor::concurrency::Duration;
use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use ractor_cluster::{NodeServer, NodeServerMessage, RactorClusterMessage};
use ringkv_proto::{RequestFrame, ResponseFrame, ACTOR_WIRE_V1, KV_GROUP, KV_NODE_GROUP_PREFIX};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Instant;

/// The message a KvGateway takes (it crosses nodes).
#[derive(RactorClusterMessage)]
pub enum GatewayMsg {
    /// [`ringkv_proto::ACTOR_WIRE_V1`] then a request frame's msgpack body (no length
    /// prefix); the reply is the version byte then the answer frame's body.
    #[rpc]
    Call(Vec<u8>, RpcReplyPort<Vec<u8>>),
}

/// Encodes a request for [`GatewayMsg::Call`].
pub fn encode_request(frame: &RequestFrame) -> Vec<u8> {
    let mut out = vec![ACTOR_WIRE_V1];
    rmp_serde::encode::write_named(&mut out, frame).expect("encoding into a Vec cannot fail");
    out
}

/// Encodes an answer for the reply of [`GatewayMsg::Call`].
pub fn encode_answer(frame: &ResponseFrame) -> Vec<u8> {
    let mut out = vec![ACTOR_WIRE_V1];
    rmp_serde::encode::write_named(&mut out, frame).expect("encoding into a Vec cannot fail");
    out
}

/// The body of a [`GatewayMsg::Call`] payload or reply, after its version byte.
///
/// # Errors
/// [`ClientError::Protocol`] for an empty payload or an unknown version.
pub fn unwrap_version(bytes: &[u8]) -> Result<&[u8], ClientError> {
    match bytes.split_first() {
        Some((&ACTOR_WIRE_V1, body)) => Ok(body),
        Some((v, _)) => Err(ClientError::Protocol(format!(
            "actor wire version {v}, this client knows {ACTOR_WIRE_V1}"
        ))),
        None => Err(ClientError::Protocol("empty actor message".into())),
    }
}

/// Settings of [`KvRef::connect`].
#[derive(Clone, Debug)]
pub struct ActorClientConfig {
    /// This client node's name; `client-` is put in front unless it starts with it. It must
    /// be unique among the clients connected at once (ractor_cluster keeps one session per
    /// name).
    pub name: String,
    /// The cluster cookie (the nodes' `cookie`).
    pub cookie: String,
    /// The nodes' `actor-listen` addresses, `host:port`.
    pub nodes: Vec<String>,
    /// Longest wait for an answer when the request sets no `timeout_ms`. Default 10 s.
    pub call_timeout: Duration,
    /// Longest wait in [`KvRef::connect`] for the first gateway. Default 5 s.
    pub connect_timeout: Duration,
    /// Period of the reconnect attempts to nodes without a session. Default 500 ms.
    pub reconnect_every: Duration,
    /// Mutual TLS to nodes with cluster TLS: the cluster CA, and a certificate of it that
    /// names this client node (`ringkv cert node client-NAME`); the node's certificate is
    /// checked against the host dialled (or the server name set on it). Default none.
    pub tls: Option<crate::ClientTls>,
}

impl ActorClientConfig {
    /// Settings with the defaults above.
    pub fn new<S: Into<String>>(
        name: &str,
        cookie: &str,
        nodes: impl IntoIterator<Item = S>,
    ) -> Self {
        Self {
            name: name.to_string(),
            cookie: cookie.to_string(),
            nodes: nodes.into_iter().map(Into::into).collect(),
            call_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(5),
            reconnect_every: Duration::from_millis(500),
            tls: None,
        }
    }

    fn node_name(&self) -> String {
        if self.name.starts_with(ringkv_proto::CLIENT_NAME_PREFIX) {
            self.name.clone()
        } else {
            format!("{}{}", ringkv_proto::CLIENT_NAME_PREFIX, self.name)
        }
    }
}

/// What a [`SupervisionEvent`] says about ringkv nodes, see [`node_change`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NodeChange {
    /// Gateways became reachable (a node's session opened): how many.
    Up(usize),
    /// Gateways went away (a node's session closed or the node stopped): how many.
    Down(usize),
}

/// Reads a supervision event an actor got through [`KvRef::monitor_nodes`]: `Some` for a
/// join or leave of [`ringkv_proto::KV_GROUP`], `None` for anything else.
pub fn node_change(event: &SupervisionEvent) -> Option<NodeChange> {
    use ractor::pg::GroupChangeMessage;
    match event {
        SupervisionEvent::ProcessGroupChanged(GroupChangeMessage::Join(_, g, a))
            if g == KV_GROUP =>
        {
            Some(NodeChange::Up(a.len()))
        }
        SupervisionEvent::ProcessGroupChanged(GroupChangeMessage::Leave(_, g, a))
            if g == KV_GROUP =>
        {
            Some(NodeChange::Down(a.len()))
        }
        _ => None,
    }
}

/// Messages of the KvClient actor (local only).
#[derive(ractor_cluster::RactorMessage)]
pub enum KvClientMsg {
    /// Dial the nodes that have no session.
    Reconnect,
    /// The `actor-listen` addresses of the layout's nodes, dialled besides the configured
    /// ones (replacing those learnt before).
    Learn(Vec<String>),
}

/// The KvClient actor: owns the client node's NodeServer and keeps a session to every
/// configured node.
struct KvClient;

struct KvClientState {
    server: ActorRef<NodeServerMessage>,
    config: ActorClientConfig,
    /// Addresses learnt from the layout ([`KvClientMsg::Learn`]).
    learnt: Vec<String>,
}

impl Actor for KvClient {
    type Msg = KvClientMsg;
    type State = KvClientState;
    type Arguments = ActorClientConfig;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        config: ActorClientConfig,
    ) -> Result<Self::State, ActorProcessingErr> {
        let server = NodeServer::new(
            0,
            config.cookie.clone(),
            config.node_name(),
            "localhost".into(),
            None,
            Some(ractor_cluster::node::NodeConnectionMode::Isolated),
        )
        .with_listen_addr(std::net::Ipv4Addr::LOCALHOST.into());
        let (server, _) = Actor::spawn_linked(None, server, (), myself.get_cell()).await?;
        myself.send_interval(config.reconnect_every, || KvClientMsg::Reconnect);
        let _ = myself.cast(KvClientMsg::Reconnect);
        Ok(KvClientState {
            server,
            config,
            learnt: Vec::new(),
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            KvClientMsg::Learn(addrs) => {
                if addrs != state.learnt {
                    state.learnt = addrs;
                    let _ = myself.cast(KvClientMsg::Reconnect);
                }
            }
            KvClientMsg::Reconnect => {
                let sessions = ractor::call_t!(state.server, NodeServerMessage::GetSessions, 1000)
                    .unwrap_or_default();
                let connected: Vec<String> =
                    sessions.values().map(|s| s.peer_addr.clone()).collect();
                let mut targets = state.config.nodes.clone();
                for a in &state.learnt {
                    if !targets.contains(a) {
                        targets.push(a.clone());
                    }
                }
                for addr in &targets {
                    let resolved: Vec<String> = match tokio::net::lookup_host(addr.as_str()).await {
                        Ok(a) => a.map(|a| a.to_string()).collect(),
                        Err(_) => continue,
                    };
                    if resolved.iter().any(|a| connected.contains(a)) {
                        continue;
                    }
                    let (server, addr) = (state.server.clone(), addr.clone());
                    let tls = state.config.tls.clone();
                    // In a task of its own: a dial into a partition waits out its timeout
                    // without holding up the other nodes.
                    tokio::spawn(async move {
                        let dialled = dial(&server, &addr, tls.as_ref());
                        match tokio::time::timeout(Duration::from_secs(5), dialled).await {
                            Ok(Ok(())) => tracing::debug!(%addr, "client node dialled"),
                            Ok(Err(e)) => {
                                tracing::warn!(%addr, error = %e, "client node dial failed")
                            }
                            Err(_) => tracing::debug!(%addr, "client node dial timed out"),
                        }
                    });
                }
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        _state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        if let SupervisionEvent::ActorFailed(..) | SupervisionEvent::ActorTerminated(..) = &event {
            tracing::error!(?event, "the client node's transport stopped");
            myself.stop(Some("the client node's transport stopped".into()));
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        state.server.stop(None);
        Ok(())
    }
}

/// Dials the node at `addr` and hands the connection to the client node's `server`: plain
/// TCP, or a finished TLS handshake with `tls`.
async fn dial(
    server: &ActorRef<NodeServerMessage>,
    addr: &str,
    tls: Option<&crate::ClientTls>,
) -> Result<(), String> {
    let Some(tls) = tls else {
        return ractor_cluster::client_connect(server, addr)
            .await
            .map_err(|e| e.to_string());
    };
    let name = tls.server_name(addr).map_err(|e| e.to_string())?;
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let _ = stream.set_nodelay(true);
    let (peer_addr, local_addr) = (
        stream.peer_addr().map_err(|e| e.to_string())?,
        stream.local_addr().map_err(|e| e.to_string())?,
    );
    let stream = tls
        .connector()
        .connect(name, stream)
        .await
        .map_err(|e| format!("TLS handshake: {e}"))?;
    ractor_cluster::client_connect_external(
        server,
        Box::new(TlsLink {
            stream,
            peer_addr,
            local_addr,
        }),
    )
    .await
    .map_err(|e| e.to_string())
}

/// A client node's finished TLS connection, handed to its NodeServer. Its peer label is the
/// node's address, as a plain session's is.
struct TlsLink {
    stream: tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
    peer_addr: std::net::SocketAddr,
    local_addr: std::net::SocketAddr,
}

impl ractor_cluster::ClusterBidiStream for TlsLink {
    fn split(self: Box<Self>) -> (ractor_cluster::BoxRead, ractor_cluster::BoxWrite) {
        let (rd, wr) = tokio::io::split(self.stream);
        (Box::new(rd), Box::new(wr))
    }

    fn peer_label(&self) -> Option<String> {
        Some(self.peer_addr.to_string())
    }

    fn local_label(&self) -> Option<String> {
        Some(self.local_addr.to_string())
    }
}

/// Gateways a request is sent to at most: its first choice, and one more for a `get` whose
/// first node was lost or silent.
const ATTEMPTS: usize = 2;

/// A layout to route by.
struct Routing {
    layout: LayoutInfo,
    fetched: Instant,
}

struct Inner {
    client: ActorRef<KvClientMsg>,
    config: ActorClientConfig,
    routing: RwLock<Option<Arc<Routing>>>,
    refreshing: AtomicBool,
    /// Round-robin position among the gateways, for requests without a replica to go to.
    next: AtomicUsize,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.client.stop(None);
    }
}

/// A typed handle on a ringkv cluster for a Rust service (module docs). Cheap to clone;
/// the client node stops when the last clone is dropped.
#[derive(Clone)]
pub struct KvRef {
    inner: Arc<Inner>,
}

/// Whether a call lost with its node may be sent to another one.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Resend {
    Yes,
    No,
}

impl KvRef {
    /// Starts the client node, dials `config.nodes`, and waits up to
    /// `config.connect_timeout` for the first gateway. A process holds one client node at a
    /// time (ractor's registry and process groups are process-wide): share one `KvRef` by
    /// cloning it.
    ///
    /// # Errors
    /// [`ClientError::Protocol`] if the client node cannot start (a name already in use in
    /// this process) or `config.nodes` is empty; [`ClientError::NoNode`] if no gateway
    /// became reachable in time (wrong cookie, no node listening, a node without
    /// `actor-listen`).
    pub async fn connect(config: ActorClientConfig) -> Result<KvRef, ClientError> {
        if config.nodes.is_empty() {
            return Err(ClientError::Protocol(
                "KvRef::connect needs at least one node address".into(),
            ));
        }
        let (client, _) = Actor::spawn(None, KvClient, config.clone())
            .await
            .map_err(|e| ClientError::Protocol(format!("the client node did not start: {e}")))?;
        let kv = KvRef {
            inner: Arc::new(Inner {
                client,
                config,
                routing: RwLock::new(None),
                refreshing: AtomicBool::new(false),
                next: AtomicUsize::new(0),
            }),
        };
        let deadline = Instant::now() + kv.inner.config.connect_timeout;
        while kv.gateways().is_empty() {
            if Instant::now() >= deadline {
                return Err(ClientError::NoNode(format!(
                    "no ringkv node answered at {:?} within {:?} (is actor-listen set there, and the cookie right?)",
                    kv.inner.config.nodes, kv.inner.config.connect_timeout
                )));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        kv.refresh().await;
        Ok(kv)
    }

    /// The KvClient actor: link it to a supervisor (`ActorCell::link`) to learn when the
    /// client node stops.
    pub fn actor(&self) -> ActorCell {
        self.inner.client.get_cell()
    }

    /// Makes `who` receive a `SupervisionEvent::ProcessGroupChanged` each time gateways
    /// join or leave [`ringkv_proto::KV_GROUP`] (a node's session opens or closes); read
    /// them with [`node_change`]. Undo with [`KvRef::demonitor_nodes`].
    pub fn monitor_nodes(&self, who: ActorCell) {
        ractor::pg::monitor(KV_GROUP.to_string(), who);
    }

    /// Stops the events of [`KvRef::monitor_nodes`] for `who`.
    pub fn demonitor_nodes(&self, who: ActorCell) {
        ractor::pg::demonitor(KV_GROUP.to_string(), who.get_id());
    }

    /// The names of the nodes whose gateway is reachable now.
    pub fn nodes_up(&self) -> Vec<String> {
        let mut names: Vec<String> = ractor::pg::which_groups()
            .into_iter()
            .filter_map(|g| g.strip_prefix(KV_NODE_GROUP_PREFIX).map(str::to_string))
            .filter(|name| !self.node_gateways(name).is_empty())
            .collect();
        names.sort();
        names
    }

    /// The layout version requests are routed by (0 before the first layout).
    pub fn layout_version(&self) -> u64 {
        self.routing().map_or(0, |r| r.layout.version)
    }

    fn routing(&self) -> Option<Arc<Routing>> {
        self.inner
            .routing
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn gateways(&self) -> Vec<ActorCell> {
        ractor::pg::get_members(&KV_GROUP.to_string())
    }

    fn node_gateways(&self, node: &str) -> Vec<ActorCell> {
        ractor::pg::get_members(&format!("{KV_NODE_GROUP_PREFIX}{node}"))
    }

    /// Fetches the layout through any gateway; keeps the old one on failure.
    async fn refresh(&self) {
        if self.inner.refreshing.swap(true, Ordering::AcqRel) {
            return;
        }
        let frame = RequestFrame {
            op: "layout".into(),
            ..Default::default()
        };
        for gateway in self.gateways() {
            let Ok(answer) = self.call_gateway(&gateway, &frame, "layout").await else {
                continue;
            };
            let Some(info) = checked(answer).ok().and_then(|a| a.info) else {
                continue;
            };
            if let Ok(layout) = serde_json::from_value::<LayoutInfo>(info) {
                if layout.check().is_ok() {
                    let addrs = layout
                        .nodes
                        .iter()
                        .filter_map(|n| n.actor_addr.clone())
                        .collect();
                    let _ = self.inner.client.cast(KvClientMsg::Learn(addrs));
                    *self
                        .inner
                        .routing
                        .write()
                        .unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(Routing {
                        layout,
                        fetched: Instant::now(),
                    }));
                    break;
                }
            }
        }
        self.inner.refreshing.store(false, Ordering::Release);
    }

    fn want_refresh(&self) {
        if self.inner.refreshing.load(Ordering::Acquire) {
            return;
        }
        let kv = self.clone();
        tokio::spawn(async move { kv.refresh().await });
    }

    /// Sends `frame` to one gateway and waits for the decoded answer.
    async fn call_gateway(
        &self,
        gateway: &ActorCell,
        frame: &RequestFrame,
        node: &str,
    ) -> Result<ResponseFrame, ClientError> {
        let limit = frame
            .timeout_ms
            .map_or(self.inner.config.call_timeout, |ms| {
                Duration::from_millis(ms).saturating_add(Duration::from_secs(1))
            });
        let gateway: ActorRef<GatewayMsg> = gateway.clone().into();
        let payload = encode_request(frame);
        match gateway
            .call(|reply| GatewayMsg::Call(payload, reply), Some(limit))
            .await
        {
            Ok(ractor::rpc::CallResult::Success(reply)) => {
                let body = unwrap_version(&reply)?;
                rmp_serde::from_slice::<ResponseFrame>(body)
                    .map_err(|e| ClientError::Protocol(format!("undecodable answer: {e}")))
            }
            Ok(ractor::rpc::CallResult::Timeout) => Err(ClientError::NoAnswer {
                node: node.to_string(),
                waited: limit,
            }),
            Ok(ractor::rpc::CallResult::SenderError) | Err(_) => Err(ClientError::NodeLost {
                node: node.to_string(),
            }),
        }
    }

    /// The gateways to try for `key`, best first, at most [`ATTEMPTS`], each with its node's
    /// name: the replicas of its partition that have a gateway, in preference order, then the
    /// other gateways (round robin).
    fn route(&self, key: Option<(&[u8], &[u8])>) -> Vec<(String, ActorCell)> {
        let mut order: Vec<(String, ActorCell)> = Vec::with_capacity(ATTEMPTS);
        if let (Some(routing), Some((bucket, k))) = (self.routing(), key) {
            let layout = &routing.layout;
            let p = ringkv_proto::ring::partition_for(bucket, k, layout.partitions) as usize;
            for &i in layout
                .preference_lists
                .get(p)
                .map_or(&[][..], |l| l.as_slice())
            {
                let Some(node) = layout.nodes.get(i as usize) else {
                    continue;
                };
                if let Some(g) = self.node_gateways(&node.name).into_iter().next() {
                    order.push((node.name.clone(), g));
                    if order.len() == ATTEMPTS {
                        return order;
                    }
                }
            }
        }
        let all = self.gateways();
        let start = self.inner.next.fetch_add(1, Ordering::Relaxed);
        for k in 0..all.len() {
            let g = &all[(start + k) % all.len()];
            if !order.iter().any(|(_, o)| o.get_id() == g.get_id()) {
                order.push((format!("{}", g.get_id()), g.clone()));
                if order.len() == ATTEMPTS {
                    break;
                }
            }
        }
        order
    }

    /// Sends `frame` for `key` (module docs, routing and failure) and returns its answer.
    async fn routed(
        &self,
        key: Option<(&[u8], &[u8])>,
        mut frame: RequestFrame,
        resend: Resend,
    ) -> Result<ResponseFrame, ClientError> {
        let routing = self.routing();
        frame.layout = routing.as_ref().map(|r| r.layout.version);
        if routing.is_none_or(|r| r.fetched.elapsed() > Duration::from_secs(30)) {
            self.want_refresh();
        }
        let order = self.route(key);
        if order.is_empty() {
            return Err(ClientError::NoNode(format!(
                "no ringkv node is connected (dialling {:?})",
                self.inner.config.nodes
            )));
        }
        let mut last = None;
        for (node, gateway) in &order {
            match self.call_gateway(gateway, &frame, node).await {
                Ok(answer) => {
                    if answer.layout.is_some_and(|v| Some(v) != frame.layout) {
                        self.want_refresh();
                    }
                    return Ok(answer);
                }
                Err(e @ (ClientError::NodeLost { .. } | ClientError::NoAnswer { .. }))
                    if resend == Resend::Yes =>
                {
                    self.want_refresh();
                    last = Some(e);
                }
                Err(e) => {
                    self.want_refresh();
                    return Err(e);
                }
            }
        }
        Err(last.unwrap_or_else(|| ClientError::NoNode("no gateway answered".into())))
    }

    /// Reads a key: its live sibling values (empty: not found) and causal context; as
    /// [`crate::Client::get_with`]. Sent again to a second node if the first is lost or
    /// silent.
    ///
    /// # Errors
    /// As [`crate::Client::get_with`], plus [`ClientError::NodeLost`],
    /// [`ClientError::NoAnswer`] and [`ClientError::NoNode`].
    pub async fn get(
        &self,
        bucket: &[u8],
        key: &[u8],
        opts: &CallOptions,
    ) -> Result<Fetched, ClientError> {
        let frame = opts.apply(get_frame(bucket, key));
        fetched(checked(
            self.routed(Some((bucket, key)), frame, Resend::Yes).await?,
        )?)
    }

    /// Writes `value` over what `context` covers (from a get; empty for a blind write);
    /// returns once durable on the write quorum. As [`crate::Client::put_with`].
    ///
    /// # Errors
    /// As [`KvRef::get`]; after [`ClientError::NodeLost`] or [`ClientError::NoAnswer`] the
    /// write may or may not have been applied.
    pub async fn put(
        &self,
        bucket: &[u8],
        key: &[u8],
        value: Vec<u8>,
        context: &[u8],
        opts: &CallOptions,
    ) -> Result<(), ClientError> {
        let frame = opts.apply(put_frame(bucket, key, value, context, false));
        checked(self.routed(Some((bucket, key)), frame, Resend::No).await?).map(|_| ())
    }

    /// Deletes a key (a tombstone over what `context` covers). As
    /// [`crate::Client::delete_with`].
    ///
    /// # Errors
    /// As [`KvRef::put`].
    pub async fn delete(
        &self,
        bucket: &[u8],
        key: &[u8],
        context: &[u8],
        opts: &CallOptions,
    ) -> Result<(), ClientError> {
        let frame = opts.apply(delete_frame(bucket, key, context));
        checked(self.routed(Some((bucket, key)), frame, Resend::No).await?).map(|_| ())
    }

    /// Compare-and-set on a key of a strong bucket; as [`crate::Client::cas`].
    ///
    /// # Errors
    /// As [`crate::Client::cas`], plus those of [`KvRef::put`].
    pub async fn cas(
        &self,
        bucket: &[u8],
        key: &[u8],
        expect: Option<&[u8]>,
        new: Option<&[u8]>,
        opts: &CallOptions,
    ) -> Result<CasOutcome, ClientError> {
        let frame = cas_frame(bucket, key, expect, new, opts);
        cas_outcome(self.routed(Some((bucket, key)), frame, Resend::No).await?)
    }

    /// Sends any request of the protocol (its `id` is ignored) and returns its answer as it
    /// is, error answers included. Requests that belong to a connection (streamed uploads)
    /// are refused by the gateway.
    ///
    /// # Errors
    /// [`ClientError::NodeLost`], [`ClientError::NoAnswer`], [`ClientError::NoNode`].
    pub async fn request(&self, frame: RequestFrame) -> Result<ResponseFrame, ClientError> {
        let key = match (&frame.bucket, &frame.key) {
            (Some(b), Some(k)) => Some((b.to_vec(), k.to_vec())),
            _ => None,
        };
        let resend = if frame.op == "get" {
            Resend::Yes
        } else {
            Resend::No
        };
        self.routed(
            key.as_ref().map(|(b, k)| (b.as_slice(), k.as_slice())),
            frame,
            resend,
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_and_answers_carry_the_version_byte() {
        let frame = RequestFrame {
            op: "ping".into(),
            ..Default::default()
        };
        let bytes = encode_request(&frame);
        assert_eq!(bytes[0], ACTOR_WIRE_V1);
        let back: RequestFrame = rmp_serde::from_slice(unwrap_version(&bytes).unwrap()).unwrap();
        assert_eq!(back.op, "ping");
        assert!(unwrap_version(&[9, 1, 2]).is_err());
        assert!(unwrap_version(&[]).is_err());
    }

    #[test]
    fn the_client_prefix_is_added_once() {
        let c = ActorClientConfig::new("cart", "c", ["127.0.0.1:1"]);
        assert_eq!(c.node_name(), "client-cart");
        let c = ActorClientConfig::new("client-cart", "c", ["127.0.0.1:1"]);
        assert_eq!(c.node_name(), "client-cart");
    }
}
