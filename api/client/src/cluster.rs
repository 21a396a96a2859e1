//! Partition-aware routing: [`ClusterClient`] sends each request straight to a replica of its
//! key instead of through whichever node a [`Client`] dialled.
//!
//! This is Dynamo's client-driven coordination (DeCandia et al., SOSP 2007, section 6.4: the
//! client holds the membership and picks the node of the key's preference list itself,
//! saving a hop) and what Cassandra's token-aware drivers do (the driver keeps the token map
//! and sends each statement to a replica of its partition key). Here:
//!
//! * **The layout** comes from op `layout` (PROTOCOL.md): the layout version, Q, every
//!   member's client address and liveness, and each partition's preference list as the
//!   nodes' coordinators use it now. The key's partition is computed with
//!   [`ringkv_proto::ring::partition_for`], the very function the nodes place keys with.
//! * **Routing**: the first replica of the key's preference list that is up (as the layout
//!   says) and whose connection works gets the request; if it cannot be reached, the next
//!   replicas, then any other node ([`route_order`]). A replica coordinates the request
//!   itself; for a strong bucket the first replica is the key's proposer, so the node does
//!   not forward it.
//! * **Failures**: only connection failures move a request to the next node; an error
//!   answer from a node is returned as it is. A request that was sent and then lost (the
//!   connection closed, or no answer within [`ClusterOptions::answer_timeout`]) is sent again
//!   elsewhere only if it is a `get`: a write may have been applied, and sending it again
//!   could apply it twice (a blind put would become two siblings).
//! * **Refresh**: every request carries the client's layout version (field `layout`); a node
//!   whose version differs says so in its answer, and a newer one makes the client fetch the
//!   layout again, from that node first. A connection failure does too, and while the layout
//!   lists a node down the client fetches it again at most every
//!   [`ClusterOptions::refresh_every`]. At most one refresh runs at a time, in the background:
//!   requests go on with the layout they have.
//!
//! Bounds: one connection per node of the layout (opened at the first request that needs it,
//! each multiplexing any number of requests as [`Client`] does), one refresh in flight, and
//! no queue of the client's own: a request waits only for its connection and its answer.

use crate::{
    cas_frame, cas_outcome, checked, delete_frame, fetched, get_frame, put_frame, CallOptions,
    CasOutcome, Client, ClientError, ClientTls, Fetched, LayoutInfo,
};
use ringkv_proto::{RequestFrame, ResponseFrame};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

/// Settings of a [`ClusterClient`]; [`ClusterOptions::default`] gives the values below.
#[derive(Clone, Debug)]
pub struct ClusterOptions {
    /// Longest wait for a connection to a node, TLS handshake included (default 1 s). A
    /// node that takes longer counts as unreachable.
    pub connect_timeout: Duration,
    /// Longest wait for an answer once a request was sent (default 10 s; `None`: as long as
    /// the connection lives). A request with `timeout_ms` waits at least that plus 1 s. The
    /// node is then skipped for [`ClusterOptions::retry_after`]; a `get` goes to the next
    /// node, a write fails with [`ClientError::NoAnswer`].
    pub answer_timeout: Option<Duration>,
    /// How long a node whose connection failed is passed over (default 1 s); after that a
    /// request tries it again.
    pub retry_after: Duration,
    /// While the layout lists a node down (or a connection failed), the layout is fetched
    /// again at most this often, when a request comes (default 1 s).
    pub refresh_every: Duration,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(1),
            answer_timeout: Some(Duration::from_secs(10)),
            retry_after: Duration::from_secs(1),
            refresh_every: Duration::from_secs(1),
        }
    }
}

/// Shortest time between the starts of two layout refreshes.
const MIN_REFRESH_GAP: Duration = Duration::from_millis(50);

/// Longest wait for a `layout` answer during a refresh (the op reads local state only).
const LAYOUT_TIMEOUT: Duration = Duration::from_secs(5);

/// A partition-aware client of a ringkv cluster (see the module docs). Cheap to clone; the
/// clones share the layout and the connections.
///
/// ```no_run
/// # async fn demo() -> Result<(), ringkv_client::ClientError> {
/// use ringkv_client::{CallOptions, Client};
/// let cluster = Client::connect_cluster(&["10.0.0.1:7379", "10.0.0.2:7379"], None).await?;
/// let opts = CallOptions::default();
/// let got = cluster.get_with(b"carts", b"alice", &opts).await?; // sent to alice's replica
/// cluster.put_with(b"carts", b"alice", b"milk".to_vec(), &got.context, &opts).await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct ClusterClient {
    inner: Arc<Inner>,
}

struct Inner {
    seeds: Vec<String>,
    tls: Option<ClientTls>,
    opts: ClusterOptions,
    routing: RwLock<Arc<Routing>>,
    /// A refresh is running.
    refreshing: AtomicBool,
    /// Layouts installed since the client was made (the first one included).
    refreshes: AtomicU64,
    /// When the last refresh started, ms since `epoch`.
    last_refresh_ms: AtomicU64,
    /// Origin of the millisecond clocks kept in atomics.
    epoch: Instant,
}

/// One layout as the client routes by it.
struct Routing {
    version: u64,
    partitions: u32,
    /// Index as in the layout answer's `nodes`.
    nodes: Vec<Arc<NodeSlot>>,
    /// The layout's liveness of each node.
    up: Vec<bool>,
    preference_lists: Vec<Vec<u32>>,
    fetched: Instant,
    any_down: bool,
}

/// A node and the client's connection to it.
struct NodeSlot {
    name: String,
    addr: String,
    conn: Mutex<Option<Client>>,
    /// Held while connecting, so that concurrent requests open one connection.
    connecting: tokio::sync::Mutex<()>,
    /// Until when the node is passed over after a failure, ms since the client's epoch (0:
    /// never failed).
    failed_until_ms: AtomicU64,
    /// Requests sent to the node (whatever their outcome).
    requests: AtomicU64,
}

impl NodeSlot {
    fn new(name: String, addr: String) -> Self {
        Self {
            name,
            addr,
            conn: Mutex::new(None),
            connecting: tokio::sync::Mutex::new(()),
            failed_until_ms: AtomicU64::new(0),
            requests: AtomicU64::new(0),
        }
    }

    /// The open connection, if any.
    fn open(&self) -> Option<Client> {
        let conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        conn.as_ref().filter(|c| !c.is_closed()).cloned()
    }

    /// Forgets `client` if it is still this node's connection.
    fn forget(&self, client: &Client) {
        let mut conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        if conn
            .as_ref()
            .is_some_and(|c| Arc::ptr_eq(&c.inner, &client.inner))
        {
            *conn = None;
        }
    }
}

impl Inner {
    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn routing(&self) -> Arc<Routing> {
        self.routing
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// True if `slot` failed less than `retry_after` ago.
    fn failed_recently(&self, slot: &NodeSlot) -> bool {
        slot.failed_until_ms.load(Ordering::Relaxed) > self.now_ms()
    }

    fn mark_failed(&self, slot: &NodeSlot) {
        let pause = u64::try_from(self.opts.retry_after.as_millis()).unwrap_or(u64::MAX);
        let until = self.now_ms().saturating_add(pause);
        slot.failed_until_ms.store(until.max(1), Ordering::Relaxed);
    }

    /// The connection to `slot`, opened if need be (one connection per node, opened by one
    /// caller while the others wait for it).
    ///
    /// # Errors
    /// [`ClientError::Connect`] (a timeout included) or [`ClientError::Tls`]; the node is
    /// then marked failed.
    async fn client(&self, slot: &NodeSlot) -> Result<Client, ClientError> {
        if let Some(c) = slot.open() {
            return Ok(c);
        }
        let waited_since = self.now_ms();
        let _connecting = slot.connecting.lock().await;
        if let Some(c) = slot.open() {
            return Ok(c);
        }
        // Another caller failed to connect while this one waited: do not dial again at once.
        let failed_until = slot.failed_until_ms.load(Ordering::Relaxed);
        if failed_until > self.now_ms() && failed_until >= waited_since {
            return Err(ClientError::Connect(std::io::Error::new(
                std::io::ErrorKind::ConnectionRefused,
                format!("{} ({}) failed just now", slot.name, slot.addr),
            )));
        }
        match connect(&slot.addr, self.tls.as_ref(), self.opts.connect_timeout).await {
            Ok(c) => {
                *slot.conn.lock().unwrap_or_else(|p| p.into_inner()) = Some(c.clone());
                slot.failed_until_ms.store(0, Ordering::Relaxed);
                Ok(c)
            }
            Err(e) => {
                self.mark_failed(slot);
                Err(e)
            }
        }
    }

    /// Starts a refresh of the layout in the background, unless one runs or one started
    /// less than [`MIN_REFRESH_GAP`] ago; `hint` is asked first (a node that answered with a
    /// newer version).
    fn want_refresh(self: &Arc<Self>, hint: Option<Arc<NodeSlot>>) {
        let now = self.now_ms();
        let last = self.last_refresh_ms.load(Ordering::Relaxed);
        if last != 0 && now.saturating_sub(last) < MIN_REFRESH_GAP.as_millis() as u64 {
            return;
        }
        if self.refreshing.swap(true, Ordering::AcqRel) {
            return;
        }
        self.last_refresh_ms.store(now.max(1), Ordering::Relaxed);
        let inner = self.clone();
        tokio::spawn(async move {
            inner.refresh(hint).await;
            inner.refreshing.store(false, Ordering::Release);
        });
    }

    /// Fetches the layout from `hint`, else the up nodes of the current layout, else the
    /// seeds, and installs the first answer whose version is not older than the current one.
    async fn refresh(&self, hint: Option<Arc<NodeSlot>>) {
        let current = self.routing();
        let mut asked: Vec<&str> = Vec::new();
        let hinted = hint.iter().map(|s| s.as_ref());
        let known = current
            .nodes
            .iter()
            .enumerate()
            .filter(|(i, s)| current.up[*i] && !self.failed_recently(s))
            .map(|(_, s)| s.as_ref());
        for slot in hinted.chain(known) {
            if asked.contains(&slot.addr.as_str()) {
                continue;
            }
            asked.push(&slot.addr);
            let Ok(client) = self.client(slot).await else {
                continue;
            };
            match tokio::time::timeout(LAYOUT_TIMEOUT, client.layout()).await {
                Ok(Ok(layout)) if layout.version >= current.version => {
                    self.install(layout, None);
                    return;
                }
                Ok(Ok(_)) => {}
                Ok(Err(ClientError::Closed)) => slot.forget(&client),
                Ok(Err(_)) => {}
                Err(_) => self.mark_failed(slot),
            }
        }
        for seed in &self.seeds {
            if asked.contains(&seed.as_str()) {
                continue;
            }
            let Ok(client) = connect(seed, self.tls.as_ref(), self.opts.connect_timeout).await
            else {
                continue;
            };
            if let Ok(Ok(layout)) = tokio::time::timeout(LAYOUT_TIMEOUT, client.layout()).await {
                if layout.version >= current.version {
                    self.install(layout, Some((seed, client)));
                    return;
                }
            }
        }
        tracing::debug!(
            version = current.version,
            "no node answered a layout refresh; routing by the layout at hand"
        );
    }

    /// Routes by `layout` from now on, keeping the connections of the nodes it still lists at
    /// the same address; `seed` is the connection the layout came from, if it was not one of
    /// those.
    fn install(&self, layout: LayoutInfo, seed: Option<(&String, Client)>) {
        let mut routing = self.routing.write().unwrap_or_else(|p| p.into_inner());
        let old = routing.clone();
        *routing = Arc::new(Routing::new(layout, &old.nodes, seed));
        self.refreshes.fetch_add(1, Ordering::Relaxed);
    }
}

impl Routing {
    /// The routing of `layout` (checked by [`LayoutInfo::check`]), reusing the slots of
    /// `previous` for nodes of the same name and address.
    fn new(
        layout: LayoutInfo,
        previous: &[Arc<NodeSlot>],
        seed: Option<(&String, Client)>,
    ) -> Routing {
        let nodes: Vec<Arc<NodeSlot>> = layout
            .nodes
            .iter()
            .map(|n| {
                previous
                    .iter()
                    .find(|s| s.name == n.name && s.addr == n.client_addr)
                    .cloned()
                    .unwrap_or_else(|| {
                        Arc::new(NodeSlot::new(n.name.clone(), n.client_addr.clone()))
                    })
            })
            .collect();
        if let Some((addr, client)) = seed {
            if let Some(slot) = nodes.iter().find(|s| s.addr == *addr) {
                let mut conn = slot.conn.lock().unwrap_or_else(|p| p.into_inner());
                let usable = conn.as_ref().is_some_and(|c| !c.is_closed());
                if !usable {
                    *conn = Some(client);
                }
            }
        }
        let up: Vec<bool> = layout.nodes.iter().map(|n| n.up).collect();
        Routing {
            version: layout.version,
            partitions: layout.partitions,
            any_down: up.iter().any(|u| !u),
            nodes,
            up,
            preference_lists: layout.preference_lists,
            fetched: Instant::now(),
        }
    }
}

/// The order in which a request for a key of a partition whose preference list is `prefs`
/// (indexes of nodes `0..nodes`) tries the nodes: the replicas that are `usable`, in
/// preference order; then the other usable nodes, starting at `spread % nodes` (so that the
/// partitions of a down replica spread over the others); then the replicas and other nodes
/// that are not usable, in the same orders, as a last resort. Every node appears once.
pub(crate) fn route_order(
    prefs: &[u32],
    nodes: usize,
    usable: impl Fn(usize) -> bool,
    spread: usize,
) -> Vec<usize> {
    let mut order = Vec::with_capacity(nodes);
    let replicas = prefs.iter().map(|&i| i as usize).filter(|&i| i < nodes);
    let others: Vec<usize> = (0..nodes)
        .map(|k| (spread + k) % nodes.max(1))
        .filter(|i| !prefs.contains(&(*i as u32)))
        .collect();
    for last_resort in [false, true] {
        for i in replicas.clone().chain(others.iter().copied()) {
            if usable(i) != last_resort && !order.contains(&i) {
                order.push(i);
            }
        }
    }
    order
}

/// Connects to `addr`, over TLS if `tls` is given, within `limit`.
async fn connect(
    addr: &str,
    tls: Option<&ClientTls>,
    limit: Duration,
) -> Result<Client, ClientError> {
    match tokio::time::timeout(limit, Client::connect_with(addr, tls)).await {
        Ok(result) => result,
        Err(_) => Err(ClientError::Connect(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("connecting to {addr} took more than {limit:?}"),
        ))),
    }
}

/// Whether a request lost after it was sent may be sent to another node.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Resend {
    /// A read: sending it again changes nothing.
    Yes,
    /// A write: it may have been applied.
    No,
}

impl ClusterClient {
    /// Learns the layout from the first of `seeds` (client addresses, `host:port`) that
    /// answers op `layout`, with the settings `opts`; every node is dialled with `tls` if
    /// given. Connections to the nodes open at the first request that needs each.
    ///
    /// # Errors
    /// The last seed's error if none answered: a connection error, `no_layout` (a cluster
    /// with no committed layout), or [`ClientError::Protocol`] for an unusable answer; a
    /// [`ClientError::Protocol`] if `seeds` is empty.
    pub async fn connect(
        seeds: &[&str],
        tls: Option<&ClientTls>,
        opts: ClusterOptions,
    ) -> Result<ClusterClient, ClientError> {
        let mut last = ClientError::Protocol("connect_cluster needs at least one seed".into());
        for seed in seeds {
            let client = match connect(seed, tls, opts.connect_timeout).await {
                Ok(c) => c,
                Err(e) => {
                    last = e;
                    continue;
                }
            };
            let layout = match tokio::time::timeout(LAYOUT_TIMEOUT, client.layout()).await {
                Ok(Ok(layout)) => layout,
                Ok(Err(e)) => {
                    last = e;
                    continue;
                }
                Err(_) => {
                    last = ClientError::NoAnswer {
                        node: seed.to_string(),
                        waited: LAYOUT_TIMEOUT,
                    };
                    continue;
                }
            };
            let seed = seed.to_string();
            let routing = Routing::new(layout, &[], Some((&seed, client)));
            return Ok(ClusterClient {
                inner: Arc::new(Inner {
                    seeds: seeds.iter().map(|s| s.to_string()).collect(),
                    tls: tls.cloned(),
                    opts,
                    routing: RwLock::new(Arc::new(routing)),
                    refreshing: AtomicBool::new(false),
                    refreshes: AtomicU64::new(1),
                    last_refresh_ms: AtomicU64::new(0),
                    epoch: Instant::now(),
                }),
            });
        }
        Err(last)
    }

    /// Reads a key, from a replica of its partition; as [`Client::get_with`].
    ///
    /// # Errors
    /// As [`Client::get_with`]; connection errors only when no node could be reached.
    pub async fn get_with(
        &self,
        bucket: &[u8],
        key: &[u8],
        opts: &CallOptions,
    ) -> Result<Fetched, ClientError> {
        let answer = self
            .routed(bucket, key, opts.apply(get_frame(bucket, key)), Resend::Yes)
            .await?;
        fetched(checked(answer)?)
    }

    /// [`ClusterClient::get_with`] with the bucket's settings.
    ///
    /// # Errors
    /// As [`ClusterClient::get_with`].
    pub async fn get(&self, bucket: &[u8], key: &[u8]) -> Result<Fetched, ClientError> {
        self.get_with(bucket, key, &CallOptions::default()).await
    }

    /// Writes a value through a replica of its key's partition; as [`Client::put_with`].
    ///
    /// # Errors
    /// As [`Client::put_with`]; [`ClientError::Closed`] or [`ClientError::NoAnswer`] if the
    /// request was sent and then lost (it may or may not have been applied).
    pub async fn put_with(
        &self,
        bucket: &[u8],
        key: &[u8],
        value: Vec<u8>,
        context: &[u8],
        opts: &CallOptions,
    ) -> Result<(), ClientError> {
        let frame = opts.apply(put_frame(bucket, key, value, context, false));
        checked(self.routed(bucket, key, frame, Resend::No).await?).map(|_| ())
    }

    /// [`ClusterClient::put_with`] with the bucket's settings.
    ///
    /// # Errors
    /// As [`ClusterClient::put_with`].
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

    /// Deletes a key through a replica of its partition; as [`Client::delete_with`].
    ///
    /// # Errors
    /// As [`ClusterClient::put_with`].
    pub async fn delete_with(
        &self,
        bucket: &[u8],
        key: &[u8],
        context: &[u8],
        opts: &CallOptions,
    ) -> Result<(), ClientError> {
        let frame = opts.apply(delete_frame(bucket, key, context));
        checked(self.routed(bucket, key, frame, Resend::No).await?).map(|_| ())
    }

    /// [`ClusterClient::delete_with`] with the bucket's settings.
    ///
    /// # Errors
    /// As [`ClusterClient::put_with`].
    pub async fn delete(
        &self,
        bucket: &[u8],
        key: &[u8],
        context: &[u8],
    ) -> Result<(), ClientError> {
        self.delete_with(bucket, key, context, &CallOptions::default())
            .await
    }

    /// Compare-and-set on a strong bucket's key, sent to the key's first reachable replica
    /// (its proposer, so no node forwards it); as [`Client::cas`].
    ///
    /// # Errors
    /// As [`Client::cas`] and [`ClusterClient::put_with`].
    pub async fn cas(
        &self,
        bucket: &[u8],
        key: &[u8],
        expect: Option<&[u8]>,
        new: Option<&[u8]>,
        opts: &CallOptions,
    ) -> Result<CasOutcome, ClientError> {
        let frame = cas_frame(bucket, key, expect, new, opts);
        cas_outcome(self.routed(bucket, key, frame, Resend::No).await?)
    }

    /// Sends any request frame (its `id` and `layout` are set here) to a replica of the
    /// partition of its `bucket` and `key` (frames without them go to the first usable node)
    /// and returns the answer, error answers included. A `get` lost after it was sent is
    /// sent to the next node; any other op is not.
    ///
    /// # Errors
    /// Connection failures only: [`ClientError::Connect`] when no node could be reached,
    /// [`ClientError::Closed`] or [`ClientError::NoAnswer`] when the request was lost.
    pub async fn request(&self, frame: RequestFrame) -> Result<ResponseFrame, ClientError> {
        let resend = if frame.op == "get" {
            Resend::Yes
        } else {
            Resend::No
        };
        let (bucket, key) = (
            frame.bucket.clone().map(|b| b.into_vec()),
            frame.key.clone().map(|k| k.into_vec()),
        );
        match (bucket, key) {
            (Some(b), Some(k)) => self.routed_to(Some((&b, &k)), frame, resend).await,
            _ => self.routed_to(None, frame, resend).await,
        }
    }

    /// The layout version the client routes by.
    pub fn layout_version(&self) -> u64 {
        self.inner.routing().version
    }

    /// Layouts fetched and installed since [`ClusterClient::connect`] (the first included).
    pub fn refreshes(&self) -> u64 {
        self.inner.refreshes.load(Ordering::Relaxed)
    }

    /// The preference list of `(bucket, key)` in the layout the client routes by: node names,
    /// primary first.
    pub fn replicas_of(&self, bucket: &[u8], key: &[u8]) -> Vec<String> {
        let routing = self.inner.routing();
        let p = ringkv_proto::ring::partition_for(bucket, key, routing.partitions);
        routing
            .preference_lists
            .get(p as usize)
            .into_iter()
            .flatten()
            .filter_map(|&i| routing.nodes.get(i as usize).map(|s| s.name.clone()))
            .collect()
    }

    /// Requests sent to each node of the current layout since its connection slot was made
    /// (whatever their outcome), by node name: what the client's routing did.
    pub fn requests_by_node(&self) -> BTreeMap<String, u64> {
        self.inner
            .routing()
            .nodes
            .iter()
            .map(|s| (s.name.clone(), s.requests.load(Ordering::Relaxed)))
            .collect()
    }

    async fn routed(
        &self,
        bucket: &[u8],
        key: &[u8],
        frame: RequestFrame,
        resend: Resend,
    ) -> Result<ResponseFrame, ClientError> {
        self.routed_to(Some((bucket, key)), frame, resend).await
    }

    /// Sends `frame` to the nodes of the [`route_order`] of the partition of `key` (a bucket
    /// and a key; `None`: no partition, every node in turn) until one takes it.
    async fn routed_to(
        &self,
        key: Option<(&[u8], &[u8])>,
        mut frame: RequestFrame,
        resend: Resend,
    ) -> Result<ResponseFrame, ClientError> {
        let inner = &self.inner;
        let routing = inner.routing();
        let partition =
            key.map(|(b, k)| ringkv_proto::ring::partition_for(b, k, routing.partitions));
        if routing.fetched.elapsed() >= inner.opts.refresh_every
            && (routing.any_down || routing.nodes.iter().any(|s| inner.failed_recently(s)))
        {
            inner.want_refresh(None);
        }
        frame.layout = Some(routing.version);
        let prefs: &[u32] = partition
            .and_then(|p| routing.preference_lists.get(p as usize))
            .map_or(&[], |l| l.as_slice());
        let usable = |i: usize| routing.up[i] && !inner.failed_recently(&routing.nodes[i]);
        // The common case without building the whole order: the first replica is usable.
        let first = prefs.first().map(|&i| i as usize).filter(|&i| usable(i));
        let mut tried = None;
        let mut last = ClientError::Protocol("the layout lists no node".into());
        if let Some(i) = first {
            match self.attempt(&routing, i, &mut frame, resend).await {
                Ok(answer) => return Ok(answer),
                Err((e, true)) => last = e,
                Err((e, false)) => return Err(e),
            }
            tried = Some(i);
        }
        let spread = partition.unwrap_or(0) as usize;
        for i in route_order(prefs, routing.nodes.len(), usable, spread) {
            if Some(i) == tried {
                continue;
            }
            match self.attempt(&routing, i, &mut frame, resend).await {
                Ok(answer) => return Ok(answer),
                Err((e, true)) => last = e,
                Err((e, false)) => return Err(e),
            }
        }
        Err(last)
    }

    /// Sends `frame` to node `i` and waits for its answer. `Err((e, true))`: try the next
    /// node; `Err((e, false))`: give up with `e`.
    async fn attempt(
        &self,
        routing: &Routing,
        i: usize,
        frame: &mut RequestFrame,
        resend: Resend,
    ) -> Result<ResponseFrame, (ClientError, bool)> {
        let inner = &self.inner;
        let slot = &routing.nodes[i];
        let client = match inner.client(slot).await {
            Ok(c) => c,
            Err(e) => {
                inner.want_refresh(None);
                return Err((e, true));
            }
        };
        let Ok(answer) = client.send_ref(frame) else {
            // Not sent: the connection had ended. Another node may take it.
            slot.forget(&client);
            inner.mark_failed(slot);
            inner.want_refresh(None);
            return Err((ClientError::Closed, true));
        };
        slot.requests.fetch_add(1, Ordering::Relaxed);
        let limit = inner.opts.answer_timeout.map(|t| {
            let asked = frame.timeout_ms.map_or(Duration::ZERO, |ms| {
                Duration::from_millis(ms).saturating_add(Duration::from_secs(1))
            });
            t.max(asked)
        });
        let answered = match limit {
            Some(limit) => match tokio::time::timeout(limit, answer).await {
                Ok(a) => a.map_err(|_| ClientError::Closed),
                Err(_) => Err(ClientError::NoAnswer {
                    node: slot.name.clone(),
                    waited: limit,
                }),
            },
            None => answer.await.map_err(|_| ClientError::Closed),
        };
        match answered {
            Ok(answer) => {
                // Newer than the layout in use now (a refresh may have run meanwhile).
                if answer.layout.is_some_and(|v| v > inner.routing().version) {
                    inner.want_refresh(Some(slot.clone()));
                }
                Ok(answer)
            }
            Err(e) => {
                if matches!(e, ClientError::Closed) {
                    slot.forget(&client);
                }
                inner.mark_failed(slot);
                inner.want_refresh(None);
                Err((e, resend == Resend::Yes))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_usable_replica_comes_first_then_the_others() {
        // Partition on n2, n0, n3 of five nodes; all usable.
        let order = route_order(&[2, 0, 3], 5, |_| true, 0);
        assert_eq!(order, vec![2, 0, 3, 1, 4]);
        // The primary is down: the next replicas, then the others; the down one last.
        let order = route_order(&[2, 0, 3], 5, |i| i != 2, 0);
        assert_eq!(order, vec![0, 3, 1, 4, 2]);
        // Every replica down: the other nodes first, from `spread`, then the replicas.
        let order = route_order(&[2, 0, 3], 5, |i| i == 1 || i == 4, 4);
        assert_eq!(order, vec![4, 1, 2, 0, 3]);
    }

    #[test]
    fn the_order_is_a_permutation_of_the_nodes() {
        for nodes in 0..7usize {
            for mask in 0..(1u32 << nodes) {
                let prefs: Vec<u32> = (0..nodes.min(3) as u32).rev().collect();
                for spread in 0..nodes.max(1) {
                    let mut order = route_order(&prefs, nodes, |i| mask & (1 << i) != 0, spread);
                    // Usable nodes all come before unusable ones.
                    let first_unusable = order.iter().position(|&i| mask & (1 << i) == 0);
                    if let Some(k) = first_unusable {
                        assert!(order[k..].iter().all(|&i| mask & (1 << i) == 0));
                    }
                    order.sort_unstable();
                    assert_eq!(order, (0..nodes).collect::<Vec<_>>());
                }
            }
        }
    }

    #[test]
    fn out_of_range_indexes_are_ignored() {
        assert_eq!(route_order(&[7, 1], 2, |_| true, 0), vec![1, 0]);
        assert!(route_order(&[0], 0, |_| true, 3).is_empty());
    }
}
