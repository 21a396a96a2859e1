//! The NodeSupervisor and [`Node`], the handle through which the API (or an embedding Rust
//! service) uses a running node.

use crate::cluster_view::ClusterView;
use crate::coordinator::{KvError, KvRequest, Placement};
use crate::directory::VNodeDirectory;
use crate::replica::{Peers, ReplicaContext};
use crate::rpc::{PartitionSizes, ReplicaTransport};
use crate::stats::StatsSnapshot;
use crate::supervision::Restarts;
use crate::transfer::{TransferConfig, TransferHandle};
use crate::vnode::VNodeMsg;
use ractor::{Actor, ActorRef};
use ractor_cluster::{NodeServer, NodeServerMessage};
use ringkv_cluster::membership::{
    BucketProps, ClusterState, Member, MemberStatus, Plan, LAYOUT_REPLICAS,
};
use ringkv_cluster::phi::PhiConfig;
use ringkv_cluster::staging::{self, MoveEstimate, Reverted, Staged};
use ringkv_cluster::{partition_for, Compression, NodeConfig};
use ringkv_storage::{keys, Codec, Condition, DataDir, DvvSet, StorageError};
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;
use tokio::sync::watch;

/// Why a node did not start. The message carries the cause (no separate `source`, so that
/// error chains do not print it twice).
#[derive(Debug, Error)]
pub enum NodeError {
    /// A setting is invalid.
    #[error("invalid configuration: {0}")]
    Config(ringkv_cluster::ConfigError),
    /// The data directory could not be opened.
    #[error("cannot open data directory: {0}")]
    Storage(StorageError),
    /// An actor did not start.
    #[error("cannot start actors: {0}")]
    Spawn(String),
}

impl From<ringkv_cluster::ConfigError> for NodeError {
    fn from(e: ringkv_cluster::ConfigError) -> Self {
        NodeError::Config(e)
    }
}

impl From<StorageError> for NodeError {
    fn from(e: StorageError) -> Self {
        NodeError::Storage(e)
    }
}

/// Per-request settings.
#[derive(Clone, Debug, Default)]
pub struct RequestOptions {
    /// Time limit; `None` uses the bucket's, else the node's `request-timeout-ms`.
    pub timeout: Option<Duration>,
    /// Replicas to use; `None` uses the bucket's `n`. With `r` and `w` it must satisfy
    /// `1 <= r, w <= n <= 3` ([`LAYOUT_REPLICAS`]), else [`KvError::BadQuorum`].
    pub n: Option<u64>,
    /// Read quorum; `None` uses the bucket's `r`.
    pub r: Option<u64>,
    /// Write quorum; `None` uses the bucket's `w`.
    pub w: Option<u64>,
    /// Read only this node's own replica (no quorum, no read repair): for inspection.
    pub local: bool,
    /// Writes (put, delete): apply only if this condition holds, else fail with
    /// [`StorageError::ConditionFailed`](ringkv_storage::StorageError::ConditionFailed).
    /// [`Condition::IfMatch`] checks the request's context. Checked by the coordinating
    /// replica and by every replica the write reaches (see [`crate::coordinator`]): with a
    /// strict bucket and `w = n` two racing `IfNoneMatch` creators cannot both succeed; with
    /// `w < n` or a sloppy quorum it is a best-effort check, not linearizable. Ignored by reads.
    pub condition: Condition,
    /// Put only: time to live of the value. The new version expires at this node's clock at
    /// the write plus `ttl` (rounded to milliseconds); from then on it reads as missing and
    /// the background purge removes it from every replica (see [`crate::repair`]). `None` or
    /// zero: it never expires. Ignored by reads and deletes.
    pub ttl: Option<Duration>,
}

/// What a read returns: the live sibling values and the causal context to write back with.
/// No values means the key was never written or is deleted.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Fetched {
    /// Values of the live siblings (one unless there were concurrent writes).
    pub values: Vec<Vec<u8>>,
    /// Opaque causal context, sealed (see [`crate::context`]; empty for a key never written).
    /// A write that passes it back unchanged replaces exactly the versions returned here.
    pub context: Vec<u8>,
}

/// A running node: its data, its supervision tree, and the operations on it.
///
/// Every operation runs a coordinator ([`crate::coordinator`]) in the caller's task. Dropping
/// the future of an operation cancels the replica calls not yet made; the client listener
/// runs each request in its own task, so a client that goes away cancels nothing.
pub struct Node {
    config: NodeConfig,
    data: Arc<DataDir>,
    directory: Arc<VNodeDirectory>,
    view: Arc<ClusterView>,
    peers: Peers,
    supervisor: ActorRef<NodeSupervisorMsg>,
    node_server: Option<ActorRef<NodeServerMessage>>,
    /// The accept loop of the cluster address ([`crate::transport::listen`]).
    cluster_listener: Option<tokio::task::JoinHandle<()>>,
    /// Cluster TLS (`cluster-tls-ca`), also asked of client nodes.
    cluster_tls: Option<Arc<crate::tls::ClusterTls>>,
    /// The accept loop of `actor-listen` ([`crate::client_filter::listen`]), once started.
    actor_listener: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
    stopped: watch::Receiver<bool>,
    /// Set when [`Node::shutdown`] begins (the transport's exit is then expected).
    stopping: Arc<std::sync::atomic::AtomicBool>,
    /// The way to the Transfer actor.
    transfers: Arc<TransferHandle>,
}

/// Validates `config` and opens its data directory (off the tokio workers: opening rebuilds
/// Merkle leaves by a scan after an unclean stop).
///
/// # Errors
/// [`NodeError`] if the configuration is invalid or the directory does not open.
pub(crate) async fn open_data(config: &NodeConfig) -> Result<Arc<DataDir>, NodeError> {
    config.validate()?;
    let options = partition_options(config);
    let (path, q) = (config.data_dir.clone(), config.partitions);
    let data = tokio::task::spawn_blocking(move || DataDir::open(&path, q, &options))
        .await
        .map_err(|e| NodeError::Spawn(e.to_string()))??;
    Ok(Arc::new(data))
}

mod admin;
mod explain;
mod strong;
mod supervisor;
pub use admin::{ClusterStatus, MemberRow, PlanReport, TransfersReport, PLAN_SIZES_TIMEOUT};
pub use strong::STRONG_OVERHEAD;
pub use supervisor::{
    config_budget, partition_options, NodeSupervisor, NodeSupervisorArgs, NodeSupervisorMsg,
    NodeSupervisorState, Transport,
};

impl Node {
    /// Validates `config`, opens its data directory and starts the supervision tree.
    ///
    /// # Errors
    /// [`NodeError`] if the configuration is invalid, the data directory cannot be opened, or
    /// an actor does not start.
    pub async fn start(config: NodeConfig) -> Result<Node, NodeError> {
        Self::start_bound(config, None).await
    }

    /// As [`Node::start`], serving the cluster address on `cluster`, a listener already bound
    /// to `cluster-addr` (non-blocking), if given. `ringkv start` binds it before the client
    /// listener: a client listener on port 0 bound first could take the very port a caller
    /// had just found free for the cluster address.
    ///
    /// # Errors
    /// As [`Node::start`].
    pub async fn start_bound(
        config: NodeConfig,
        cluster: Option<std::net::TcpListener>,
    ) -> Result<Node, NodeError> {
        let data = open_data(&config).await?;
        let directory = Arc::new(VNodeDirectory::new(config.partitions));
        let name = config.node_name();
        let view = Arc::new(Self::load_view(&config, &name, &data)?);

        let mut transport_exit = None;
        let cluster_tls = crate::tls::ClusterTls::from_config(&config)
            .map_err(|e| NodeError::Spawn(format!("cluster TLS: {e}")))?;
        let (node_server, cluster_listener) = match config.cluster_addr {
            Some(addr) => {
                // ringkv serves the cluster address itself (`transport`: keepalive and
                // TCP_USER_TIMEOUT on every cluster socket); the NodeServer's own listener
                // gets an ephemeral loopback port that nothing dials.
                let listener = match cluster {
                    Some(bound) => tokio::net::TcpListener::from_std(bound),
                    None => crate::transport::bind(addr).await,
                }
                .map_err(|e| NodeError::Spawn(format!("cluster transport on {addr}: {e}")))?;
                let server = NodeServer::new(
                    0,
                    config.cookie.clone().unwrap_or_default(),
                    name.clone(),
                    addr.ip().to_string(),
                    None,
                    Some(ractor_cluster::node::NodeConnectionMode::Isolated),
                )
                .with_listen_addr(std::net::Ipv4Addr::LOCALHOST.into())
                // Set explicitly: ringkv never sends a replica message over
                // `max-cluster-frame-bytes`, and takes none over it.
                .with_max_inbound_frame_size(config.max_cluster_frame_bytes as u64);
                let (server, server_join) = Actor::spawn(None, server, ())
                    .await
                    .map_err(|e| NodeError::Spawn(format!("cluster transport on {addr}: {e}")))?;
                transport_exit = Some(server_join);
                crate::transport_events::subscribe(&server, view.clone());
                let accept = tokio::spawn(crate::transport::listen(
                    listener,
                    server.clone(),
                    cluster_tls.clone(),
                ));
                (Some(server), Some(accept))
            }
            None => (None, None),
        };
        let peers = Peers {
            local: name.clone(),
            ctx: Arc::new(ReplicaContext::new(
                name.clone(),
                &data,
                directory.clone(),
                view.clone(),
                &config,
            )),
        };
        let transfers = peers.ctx.transfers.clone();
        let (supervisor, join) = Actor::spawn(
            None,
            NodeSupervisor,
            NodeSupervisorArgs {
                partitions: data.partitions.clone(),
                peers: peers.clone(),
                budget: Restarts::new(config_budget(&config)),
                vnode_budget: Restarts::new(config_budget(&config)),
                transport: node_server.clone().map(|node_server| Transport {
                    node_server,
                    seeds: config.join.clone(),
                    interval: Duration::from_millis(config.heartbeat_ms),
                    tls: cluster_tls.clone(),
                }),
                handoff_interval: Duration::from_millis(config.handoff_interval_ms),
                repair_interval: (config.repair_interval_ms > 0)
                    .then(|| Duration::from_millis(config.repair_interval_ms)),
                tombstone_grace: Duration::from_millis(config.tombstone_grace_ms),
                chunk_grace: Duration::from_millis(config.chunk_grace_ms),
                max_clock_skew: Duration::from_millis(config.max_clock_skew_ms),
                system: data.system.clone(),
                transfers: transfers.clone(),
                transfer_events: view.clone(),
                transfer_config: TransferConfig::of(&config),
            },
        )
        .await
        .map_err(|e| NodeError::Spawn(e.to_string()))?;
        let stopping = Arc::new(std::sync::atomic::AtomicBool::new(false));
        // The cluster transport is not restarted in place (the Gossip actor and the
        // connection handling hold it): if it dies while the node runs, the node stops, with
        // exit status 3 as past any restart budget, so that its service manager restarts it.
        if let Some(exit) = transport_exit {
            let (supervisor, stopping) = (supervisor.clone(), stopping.clone());
            tokio::spawn(async move {
                let _ = exit.await;
                if !stopping.load(std::sync::atomic::Ordering::Acquire) {
                    tracing::error!("the cluster transport (ractor_cluster NodeServer) stopped; stopping the node");
                    supervisor.stop(Some("the cluster transport stopped".into()));
                }
            });
        }
        let (tx, stopped) = watch::channel(false);
        tokio::spawn(async move {
            let _ = join.await;
            let _ = tx.send(true);
        });
        tracing::info!(
            name = %name,
            data_dir = %config.data_dir.display(),
            partitions = config.partitions,
            cluster_addr = ?config.cluster_addr,
            replica = format_args!("{:016x}", data.system.replica_id()),
            "node started"
        );
        Ok(Node {
            config,
            data,
            directory,
            view,
            peers,
            supervisor,
            node_server,
            cluster_listener,
            cluster_tls,
            actor_listener: std::sync::Mutex::new(None),
            stopped,
            stopping,
            transfers,
        })
    }

    /// Loads the persisted cluster view, or makes the first one: a node started without
    /// `--join` founds a cluster of its own and commits a layout that gives it every
    /// partition; a joining node waits, `joining`, for an operator's commit. A first view
    /// (an empty data directory) gets a new incarnation, the current time in ms since the
    /// Unix epoch. Either way this node's own entry is brought up to date with the
    /// configuration, unless a commit removed it: a removed node stays removed until it is
    /// started on an empty data directory.
    fn load_view(
        config: &NodeConfig,
        name: &str,
        data: &DataDir,
    ) -> Result<ClusterView, NodeError> {
        let me = Member {
            name: name.to_string(),
            cluster_addr: config
                .cluster_addr
                .map_or_else(String::new, |a| a.to_string()),
            client_addr: config.listen.to_string(),
            zone: config.zone.clone(),
            capacity: config.capacity,
            status: MemberStatus::Joining,
            version: 0,
            incarnation: crate::coordinator::now_ms(),
            actor_addr: config
                .actor_listen
                .map_or_else(String::new, |a| a.to_string()),
        };
        let founding = config.join.is_empty();
        let q = config.partitions;
        let phi = PhiConfig {
            threshold: config.phi_threshold,
            first_heartbeat_estimate_ms: config.heartbeat_ms,
            acceptable_heartbeat_pause_ms: config.acceptable_pause_ms,
            ..PhiConfig::default()
        };
        let first = me.clone();
        let view = ClusterView::load(
            name.to_string(),
            move || {
                let mut s = ClusterState::new(q);
                s.upsert_member(first);
                if founding {
                    let _ = s.commit();
                }
                s
            },
            data.system.clone(),
            phi,
        )
        .map_err(|e| NodeError::Spawn(format!("cluster state: {e}")))?;
        let stale = view.read().members.get(name).cloned();
        match stale {
            // Removed: never re-announce it (the tombstone would win anyway). Gossip logs it.
            Some(known) if known.is_removed() => {}
            Some(known) => {
                let updated = Member {
                    status: known.status,
                    version: known.version,
                    incarnation: known.incarnation,
                    ..me
                };
                if updated != known {
                    let _ = view.update(|s| {
                        s.upsert_member(updated);
                        Ok(())
                    });
                }
            }
            None => {}
        }
        Ok(view)
    }

    /// The configuration the node runs with.
    pub fn config(&self) -> &NodeConfig {
        &self.config
    }

    /// The partition that owns `(bucket, key)`.
    pub fn partition_of(&self, bucket: &[u8], key: &[u8]) -> u32 {
        partition_for(bucket, key, self.config.partitions)
    }

    /// The live vnode of partition `p` (for fault injection and inspection).
    pub fn vnode(&self, p: u32) -> Option<ActorRef<VNodeMsg>> {
        self.directory.get(p)
    }

    /// This node's id, made when its data directory was created (logs name the node by it;
    /// dots are named by each partition replica's own id).
    pub fn replica_id(&self) -> u64 {
        self.data.system.replica_id()
    }

    /// Reads `(bucket, key)`: every live sibling and the causal context.
    ///
    /// # Errors
    /// [`KvError::Storage`] for an invalid bucket or key or a storage failure;
    /// [`KvError::Quorum`] (its cause says whether replicas timed out, were unreachable,
    /// full or overloaded); [`KvError::Overloaded`]; [`KvError::ShuttingDown`].
    pub async fn get(
        &self,
        bucket: &[u8],
        key: &[u8],
        opts: &RequestOptions,
    ) -> Result<Fetched, KvError> {
        let state = self.read_state(bucket, key, opts).await?;
        self.answer_state(bucket, key, state, opts).await
    }

    /// The key's state read with quorum `r` (or this node's replica, `local`).
    pub(crate) async fn read_state(
        &self,
        bucket: &[u8],
        key: &[u8],
        opts: &RequestOptions,
    ) -> Result<Option<DvvSet>, KvError> {
        keys::validate(bucket, key)?;
        let request = KvRequest::Get {
            bucket: bucket.to_vec(),
            key: key.to_vec(),
        };
        self.coordinate(request, bucket, key, opts).await
    }

    /// The values and context a client gets for the key state `state` (a write's result
    /// with `return_body`): as [`Node::get`] answers them, large values read whole.
    ///
    /// # Errors
    /// As [`Node::get`].
    pub async fn answer_state(
        &self,
        bucket: &[u8],
        key: &[u8],
        state: Option<DvvSet>,
        opts: &RequestOptions,
    ) -> Result<Fetched, KvError> {
        match state {
            Some(state) if crate::large::has_large(&state) => Ok(Fetched {
                values: self.whole_values(bucket, key, &state, opts).await?,
                context: crate::context::seal(self.context_key(), state.context()),
            }),
            state => self.fetched(state),
        }
    }

    /// What a request answers for the key state `state`: the values decompressed (bounded by
    /// `max-value-bytes`) and the sealed context.
    fn fetched(&self, state: Option<DvvSet>) -> Result<Fetched, KvError> {
        match state {
            Some(d) => Ok(Fetched::sealed(
                d,
                self.context_key(),
                self.config.max_value_bytes,
                crate::coordinator::now_ms(),
            )?),
            None => Ok(Fetched::default()),
        }
    }

    /// Writes `value` under `(bucket, key)`, replacing the versions that `context` (from an
    /// earlier read; empty for a blind write) covers. Versions the context does not cover stay
    /// as siblings. Returns the key's state after the write, once it is durable.
    ///
    /// # Errors
    /// As [`Node::get`], plus [`KvError::ValueTooLarge`], and [`KvError::Storage`] with
    /// [`StorageError::BadContext`], [`StorageError::TooManySiblings`] or
    /// [`StorageError::Full`].
    pub async fn put(
        &self,
        bucket: &[u8],
        key: &[u8],
        value: Vec<u8>,
        context: &[u8],
        opts: &RequestOptions,
    ) -> Result<Fetched, KvError> {
        if value.len() > self.config.max_value_bytes {
            return Err(KvError::ValueTooLarge {
                len: value.len(),
                max: self.config.max_value_bytes,
            });
        }
        let state = if value.len() > self.config.chunk_limit() {
            self.put_large(bucket, key, value, context, opts).await?
        } else {
            self.update(bucket, key, Some(value), context, opts).await?
        };
        self.answer_state(bucket, key, state, opts).await
    }

    /// [`Node::put`] for a caller that does not want the key's state back (a protocol `put`
    /// without `return_body`): the same write, without decompressing the values it would
    /// return.
    ///
    /// # Errors
    /// As [`Node::put`].
    pub async fn put_ack(
        &self,
        bucket: &[u8],
        key: &[u8],
        value: Vec<u8>,
        context: &[u8],
        opts: &RequestOptions,
    ) -> Result<(), KvError> {
        if value.len() > self.config.max_value_bytes {
            return Err(KvError::ValueTooLarge {
                len: value.len(),
                max: self.config.max_value_bytes,
            });
        }
        if value.len() > self.config.chunk_limit() {
            return self
                .put_large(bucket, key, value, context, opts)
                .await
                .map(|_| ());
        }
        self.update(bucket, key, Some(value), context, opts)
            .await
            .map(|_| ())
    }

    /// Deletes `(bucket, key)`: writes a tombstone over the versions `context` covers.
    ///
    /// # Errors
    /// As [`Node::put`].
    pub async fn delete(
        &self,
        bucket: &[u8],
        key: &[u8],
        context: &[u8],
        opts: &RequestOptions,
    ) -> Result<(), KvError> {
        self.update(bucket, key, None, context, opts)
            .await
            .map(|_| ())
    }

    pub(crate) async fn update(
        &self,
        bucket: &[u8],
        key: &[u8],
        value: Option<Vec<u8>>,
        context: &[u8],
        opts: &RequestOptions,
    ) -> Result<Option<DvvSet>, KvError> {
        // Compressed once here, before the fan-out: every replica, hint and later transfer
        // stores and moves the same (smaller) bytes, and reads decompress on the node that
        // answers the client (`fetched`).
        let value = match value {
            Some(v) => Some(compress_value(self.bucket_codec(bucket), v).await),
            None => None,
        };
        self.update_encoded(bucket, key, value, context, opts).await
    }

    /// A write of a value already encoded (`(codec, stored bytes)`; `None` deletes).
    pub(crate) async fn update_encoded(
        &self,
        bucket: &[u8],
        key: &[u8],
        value: Option<(Codec, Vec<u8>)>,
        context: &[u8],
        opts: &RequestOptions,
    ) -> Result<Option<DvvSet>, KvError> {
        keys::validate(bucket, key)?;
        let context = crate::context::open(self.context_key(), context)?;
        let (value, codec) = match value {
            Some((codec, bytes)) => (Some(bytes), codec),
            None => (None, Codec::None),
        };
        // A tombstone never expires; a zero TTL is no TTL.
        let ttl = opts.ttl.filter(|t| value.is_some() && !t.is_zero());
        let request = KvRequest::Update {
            bucket: bucket.to_vec(),
            key: key.to_vec(),
            context,
            value,
            condition: opts.condition,
            codec,
            ttl,
        };
        self.coordinate(request, bucket, key, opts).await
    }

    /// The codec of the bucket's `compression` property.
    pub(crate) fn bucket_codec(&self, bucket: &[u8]) -> Codec {
        match self.view.read().bucket_props(bucket).compression {
            Compression::None => Codec::None,
            Compression::Zstd => Codec::Zstd,
            Compression::Lz4 => Codec::Lz4,
        }
    }

    /// Where a request on `(bucket, key)` goes, and with which quorums. `n`, `r` and `w` (the
    /// request's, else the bucket's) must satisfy `1 <= r, w <= n <= 3` ([`LAYOUT_REPLICAS`]);
    /// a cluster of fewer than `n` nodes then uses all its nodes, with `r` and `w` capped to
    /// match. A `local` read ignores them.
    ///
    /// # Errors
    /// [`KvError::BadQuorum`] naming the rule and the values; [`KvError::NoLayout`].
    pub fn placement(
        &self,
        bucket: &[u8],
        key: &[u8],
        opts: &RequestOptions,
    ) -> Result<(Placement, Duration), KvError> {
        self.placement_in(&self.view.placements(), false, bucket, key, opts)
    }

    /// [`Node::placement`] from `placements`; for a write (`write`), with the quorum sets of
    /// the other live layout versions during a transition ([`Placement::also`]).
    pub(crate) fn placement_in(
        &self,
        placements: &crate::cluster_view::Placements,
        write: bool,
        bucket: &[u8],
        key: &[u8],
        opts: &RequestOptions,
    ) -> Result<(Placement, Duration), KvError> {
        let partition = self.partition_of(bucket, key);
        let props = self.view.read().bucket_props(bucket);
        let timeout = opts.timeout.unwrap_or_else(|| {
            Duration::from_millis(match props.timeout_ms {
                0 => self.config.request_timeout_ms,
                t => t,
            })
        });
        if opts.local {
            let placement = Placement {
                partition,
                replicas: vec![self.peers.local.clone()],
                r: 1,
                w: 1,
                sloppy: false,
                fallbacks: Vec::new(),
                max_siblings: self.config.max_siblings,
                also: Vec::new(),
            };
            return Ok((placement, timeout));
        }
        let (want_n, r, w) = (
            opts.n.unwrap_or(props.n.into()),
            opts.r.unwrap_or(props.r.into()),
            opts.w.unwrap_or(props.w.into()),
        );
        if !(1..=LAYOUT_REPLICAS as u64).contains(&want_n)
            || !(1..=want_n).contains(&r)
            || !(1..=want_n).contains(&w)
        {
            return Err(KvError::BadQuorum(format!(
                "n, r and w must satisfy 1 <= r, w <= n <= {LAYOUT_REPLICAS}, not n={want_n} r={r} w={w}"
            )));
        }
        let (want_n, r, w) = (want_n as usize, r as usize, w as usize);
        let prefs = placements
            .prefs
            .get(partition as usize)
            .filter(|p| !p.is_empty())
            .ok_or(KvError::NoLayout)?;
        // A cluster smaller than n keeps as many replicas as it has nodes.
        let n = want_n.min(prefs.len());
        let also: Vec<(Vec<String>, usize)> = if write {
            placements
                .also_write
                .get(partition as usize)
                .into_iter()
                .flatten()
                .map(|set| {
                    let n = want_n.min(set.len());
                    (set[..n].to_vec(), w.min(n))
                })
                .collect()
        } else {
            Vec::new()
        };
        let targets =
            |node: &String| prefs[..n].contains(node) || also.iter().any(|(s, _)| s.contains(node));
        // Preference-list nodes past `n` come first among the fallbacks; nodes a write
        // reaches anyway are no fallbacks.
        let mut fallbacks: Vec<String> =
            prefs[n..].iter().filter(|x| !targets(x)).cloned().collect();
        fallbacks.extend(
            placements
                .fallbacks
                .get(partition as usize)
                .into_iter()
                .flatten()
                .filter(|x| !targets(x) && !fallbacks.contains(x))
                .cloned()
                .collect::<Vec<_>>(),
        );
        let placement = Placement {
            partition,
            replicas: prefs[..n].to_vec(),
            r: r.min(n),
            w: w.min(n),
            sloppy: props.sloppy_quorum,
            fallbacks,
            max_siblings: self.config.max_siblings,
            also,
        };
        Ok((placement, timeout))
    }

    async fn coordinate(
        &self,
        request: KvRequest,
        bucket: &[u8],
        key: &[u8],
        opts: &RequestOptions,
    ) -> Result<Option<DvvSet>, KvError> {
        if *self.stopped.borrow() {
            return Err(KvError::ShuttingDown);
        }
        // A write counts as in flight under its layout version until it returns (the `ack`
        // tracker of a layout transition).
        let (placement, timeout, _guard) = match request {
            KvRequest::Update { .. } => {
                let (placements, guard) = self.view.placements_for_write();
                let (p, t) = self.placement_in(&placements, true, bucket, key, opts)?;
                (p, t, Some(guard))
            }
            KvRequest::Get { .. } => {
                let (p, t) = self.placement(bucket, key, opts)?;
                (p, t, None)
            }
        };
        // Boxed inside `coordinate`: the coordinator's state is about 2.8 KB, and the client
        // listener's task per request would otherwise be moved and copied whole when spawned.
        crate::coordinator::coordinate(request, placement, self.peers.clone(), timeout).await
    }

    /// The way to this node's Transfer actor (runs with a cluster address): tell it the
    /// partitions to pull ([`TransferHandle::want`]) and ask where they stand
    /// ([`TransferHandle::status`]).
    pub fn transfers(&self) -> &Arc<TransferHandle> {
        &self.transfers
    }

    /// This node's cluster view.
    pub fn view(&self) -> &Arc<ClusterView> {
        &self.view
    }

    /// How this node reaches replicas (itself included).
    pub fn peers(&self) -> &Peers {
        &self.peers
    }

    /// Fault injection: panics the vnode that owns `(bucket, key)`, so that tests can watch
    /// it being restarted. Returns the partition. Refused unless the node runs with
    /// `fault-injection` on.
    ///
    /// # Errors
    /// [`KvError::FaultInjectionDisabled`]; [`KvError::ShuttingDown`] if the vnode is not up.
    pub fn inject_vnode_panic(&self, bucket: &[u8], key: &[u8]) -> Result<u32, KvError> {
        if !self.config.fault_injection {
            return Err(KvError::FaultInjectionDisabled);
        }
        let p = self.partition_of(bucket, key);
        let vnode = self.directory.get(p).ok_or(KvError::ShuttingDown)?;
        vnode
            .send_message(VNodeMsg::InjectPanic)
            .map_err(|_| KvError::ShuttingDown)?;
        Ok(p)
    }

    /// Fault injection: makes the supervised actor of type `actor` (`vnodes`, `replica`,
    /// `gossip`, `handoff`, `repair`, `transfer`) panic, so that tests can watch it being restarted.
    /// Refused unless the node runs with `fault-injection` on.
    ///
    /// # Errors
    /// [`KvError::FaultInjectionDisabled`]; [`KvError::Admin`] for an actor type this node
    /// does not run.
    pub async fn inject_actor_panic(&self, actor: &str) -> Result<(), KvError> {
        if !self.config.fault_injection {
            return Err(KvError::FaultInjectionDisabled);
        }
        if actor == "transport" {
            return match &self.node_server {
                Some(server) => {
                    server.kill();
                    Ok(())
                }
                None => Err(KvError::Admin("this node runs no cluster transport".into())),
            };
        }
        let sent = self
            .supervisor
            .call(
                |reply| NodeSupervisorMsg::InjectPanic(actor.to_string(), reply),
                Some(Duration::from_secs(5)),
            )
            .await;
        match sent {
            Ok(ractor::rpc::CallResult::Success(true)) => Ok(()),
            Ok(ractor::rpc::CallResult::Success(false)) => Err(KvError::Admin(format!(
                "no actor of type {actor:?} runs on this node (known: vnodes, replica, gossip, handoff, repair, transfer, listener, transport)"
            ))),
            _ => Err(KvError::ShuttingDown),
        }
    }

    /// Fault injection: drops all cluster traffic between this node and `peers` from now on
    /// (replacing the previous set; empty heals). Refused unless the node runs with
    /// `fault-injection` on.
    ///
    /// # Errors
    /// [`KvError::FaultInjectionDisabled`].
    pub fn inject_isolation(&self, peers: Vec<String>) -> Result<(), KvError> {
        if !self.config.fault_injection {
            return Err(KvError::FaultInjectionDisabled);
        }
        self.view.set_isolated(peers);
        Ok(())
    }

    /// Fault injection for the linearizability checker's self-test: weakens (`on`) or
    /// restores this node's strong-bucket proposer ([`crate::strong::Proposer::set_weakened`]).
    /// Refused unless the node runs with `fault-injection` on.
    ///
    /// # Errors
    /// [`KvError::FaultInjectionDisabled`].
    pub fn inject_weaken_strong(&self, on: bool) -> Result<(), KvError> {
        if !self.config.fault_injection {
            return Err(KvError::FaultInjectionDisabled);
        }
        self.peers.ctx.strong.set_weakened(on);
        Ok(())
    }

    /// The node's counters (supervisors outside this crate, the client listener of
    /// `ringkv-api`, count their restarts here).
    pub fn stats(&self) -> &crate::stats::NodeStats {
        &self.peers.ctx.stats
    }

    /// Resolves when the supervision tree has stopped: after [`Node::shutdown`], or when a
    /// failure escalated past every restart budget.
    pub async fn stopped(&self) {
        let mut rx = self.stopped.clone();
        let _ = rx.wait_for(|s| *s).await;
    }

    /// True once the supervision tree has stopped.
    pub fn is_stopped(&self) -> bool {
        *self.stopped.borrow()
    }

    /// Serves client nodes (`actor-listen`) on `listener`: accepts their connections and
    /// hands them to the cluster transport behind a [`crate::client_filter::ClientFilter`]
    /// (after a mutual TLS handshake with cluster TLS). The KvGateway they call is the
    /// caller's (the client listener's crate). Stopped by [`Node::shutdown`].
    ///
    /// # Errors
    /// [`NodeError::Spawn`] if the node has no cluster transport (`cluster-addr`) or the
    /// listener cannot be used.
    pub fn serve_client_nodes(&self, listener: std::net::TcpListener) -> Result<(), NodeError> {
        let Some(server) = self.node_server.clone() else {
            return Err(NodeError::Spawn(
                "actor-listen needs the cluster transport (cluster-addr)".into(),
            ));
        };
        listener
            .set_nonblocking(true)
            .map_err(|e| NodeError::Spawn(format!("actor-listen: {e}")))?;
        let listener = tokio::net::TcpListener::from_std(listener)
            .map_err(|e| NodeError::Spawn(format!("actor-listen: {e}")))?;
        let task = tokio::spawn(crate::client_filter::listen(
            listener,
            server,
            self.cluster_tls.clone(),
            self.config.max_frame_bytes + crate::client_filter::ENVELOPE_SLACK,
        ));
        if let Some(old) = self
            .actor_listener
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .replace(task)
        {
            old.abort();
        }
        Ok(())
    }

    /// Stops the supervision tree, then lets every partition's writer commit and answer what
    /// is queued, and closes the envs' writers. Callers should stop sending requests first.
    pub async fn shutdown(&self) {
        self.stopping
            .store(true, std::sync::atomic::Ordering::Release);
        let _ = self
            .supervisor
            .stop_and_wait(Some("shutdown".into()), Some(Duration::from_secs(10)))
            .await;
        if let Some(accept) = &self.cluster_listener {
            accept.abort();
        }
        if let Some(accept) = self
            .actor_listener
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            accept.abort();
        }
        if let Some(server) = &self.node_server {
            let _ = server
                .stop_and_wait(Some("shutdown".into()), Some(Duration::from_secs(5)))
                .await;
        }
        self.stopped().await;
        let data = self.data.clone();
        let _ = tokio::task::spawn_blocking(move || data.shutdown()).await;
        tracing::info!("node stopped");
    }
}

/// Values from this size up are compressed on the blocking pool rather than on the tokio
/// worker (zstd level 1 takes about 1 ms per 256 KiB here).
const COMPRESS_INLINE_MAX: usize = 256 * 1024;

/// Compresses a client's value for storage with `codec` ([`ringkv_storage::codec::compress`]):
/// the codec actually used (`None` when it would not shrink) and the bytes to store.
pub(crate) async fn compress_value(codec: Codec, value: Vec<u8>) -> (Codec, Vec<u8>) {
    if codec.is_none() || value.len() < COMPRESS_INLINE_MAX {
        return ringkv_storage::codec::compress(codec, value);
    }
    tokio::task::spawn_blocking(move || ringkv_storage::codec::compress(codec, value))
        .await
        .expect("compression does not panic")
}
