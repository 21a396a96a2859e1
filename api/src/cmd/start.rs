//! `ringkv start`: runs a node until SIGTERM or Ctrl-C.

use anyhow::Context;
use clap::Args;
use ringkv_actors::{Node, NodeConfig};
use ringkv_api::metrics::{Metrics, MetricsListener};
use ringkv_api::Server;
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

#[derive(Args)]
pub struct StartArgs {
    /// TOML config file; its keys are the flag names (e.g. `data-dir = "/var/lib/ringkv"`).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Data directory [default: ./ringkv-data].
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Client listen address; port 0 picks a free one [default: 127.0.0.1:7379].
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// Serve Prometheus metrics at http://ADDR/metrics; port 0 picks a free one [default: off].
    #[arg(long)]
    pub metrics_listen: Option<SocketAddr>,
    /// Serve Rust services that connect as ractor_cluster client nodes (ringkv_client::actor)
    /// on ADDR; needs --cluster-addr; port 0 picks a free one [default: off].
    #[arg(long)]
    pub actor_listen: Option<SocketAddr>,
    /// Partitions (a power of two, fixed at creation) [default: 64].
    #[arg(long)]
    pub partitions: Option<u32>,
    /// Largest frame, bytes [default: 8388608].
    #[arg(long)]
    pub max_frame_bytes: Option<usize>,
    /// Largest value, bytes; values over chunk-bytes are stored and streamed in chunks
    /// [default: 1073741824].
    #[arg(long)]
    pub max_value_bytes: Option<usize>,
    /// Values longer than this are stored as chunks of this size, bytes [default: 1048576].
    #[arg(long)]
    pub chunk_bytes: Option<usize>,
    /// A streamed upload idle this long is ended, ms [default: 30000].
    #[arg(long)]
    pub upload_idle_ms: Option<u64>,
    /// Unreferenced chunks of large values older than this are deleted, ms [default: 3600000].
    #[arg(long)]
    pub chunk_grace_ms: Option<u64>,
    /// Most streamed uploads open on one client connection [default: 4].
    #[arg(long)]
    pub max_uploads: Option<usize>,
    /// Largest record of one key (all its siblings), bytes [default: 6291456, or less to
    /// fit max-frame-bytes - 4096].
    #[arg(long)]
    pub max_record_bytes: Option<usize>,
    /// Largest message between two nodes, bytes [default: 16777216].
    #[arg(long)]
    pub max_cluster_frame_bytes: Option<usize>,
    /// Node-wide budget of client request and answer bytes in flight; past it requests
    /// are answered `overloaded` [default: 268435456].
    #[arg(long)]
    pub max_in_flight_bytes: Option<usize>,
    /// Time for the rest of a client frame once its first byte arrived, ms [default: 10000].
    #[arg(long)]
    pub frame_timeout_ms: Option<u64>,
    /// Idle client connections are closed after this long, ms; 0 never [default: 600000].
    #[arg(long)]
    pub idle_timeout_ms: Option<u64>,
    /// Most client connections [default: 1024].
    #[arg(long)]
    pub max_connections: Option<usize>,
    /// Most unanswered requests per connection [default: 1024].
    #[arg(long)]
    pub max_in_flight: Option<usize>,
    /// Default request time limit, ms [default: 5000].
    #[arg(long)]
    pub request_timeout_ms: Option<u64>,
    /// Most siblings per key [default: 100].
    #[arg(long)]
    pub max_siblings: Option<usize>,
    /// Most writes per LMDB transaction [default: 1024].
    #[arg(long)]
    pub max_batch: Option<usize>,
    /// Initial LMDB map size of the node's data env (every partition), bytes [default: 67108864].
    #[arg(long)]
    pub initial_map_bytes: Option<usize>,
    /// Largest LMDB map size of the node's data env (every partition together), bytes [default: 68719476736].
    #[arg(long)]
    pub max_map_bytes: Option<usize>,
    /// Restarts allowed per actor type within restart-window-ms [default: 5].
    #[arg(long)]
    pub restart_max: Option<usize>,
    /// The window of restart-max, ms [default: 10000].
    #[arg(long)]
    pub restart_window_ms: Option<u64>,
    /// Seconds a shutdown waits for in-flight requests [default: 10].
    #[arg(long)]
    pub shutdown_grace_secs: Option<u64>,
    /// Accept the `inject_fault` op that panics actors on purpose (tests only).
    #[arg(long)]
    pub fault_injection: bool,
    /// Node name, unique and stable [default: the cluster address, or `local`].
    #[arg(long)]
    pub name: Option<String>,
    /// Cluster transport address HOST:PORT; without it the node runs alone.
    /// The cookie comes from RINGKV_COOKIE or `cookie` in the config file.
    #[arg(long)]
    pub cluster_addr: Option<SocketAddr>,
    /// Cluster address of a member to join through (repeatable).
    #[arg(long)]
    pub join: Vec<String>,
    /// Failure domain of this node [default: default].
    #[arg(long)]
    pub zone: Option<String>,
    /// Relative capacity of this node [default: 1].
    #[arg(long)]
    pub capacity: Option<u32>,
    /// Heartbeat and gossip period, ms [default: 500].
    #[arg(long)]
    pub heartbeat_ms: Option<u64>,
    /// Phi above which a peer is suspected down [default: 8].
    #[arg(long)]
    pub phi_threshold: Option<f64>,
    /// Silence tolerated beyond the usual heartbeat interval before phi rises, ms
    /// [default: 1000].
    #[arg(long)]
    pub acceptable_pause_ms: Option<u64>,
    /// Period of hinted handoff rounds, ms [default: 1000].
    #[arg(long)]
    pub handoff_interval_ms: Option<u64>,
    /// Period of anti-entropy (Merkle tree exchange) rounds, ms; 0 disables [default: 10000].
    #[arg(long)]
    pub repair_interval_ms: Option<u64>,
    /// Tombstones younger than this are never purged, ms [default: 3600000].
    #[arg(long)]
    pub tombstone_grace_ms: Option<u64>,
    /// The most any two nodes' clocks may differ, ms; expired values (put --ttl) are purged
    /// tombstone-grace-ms plus this after their expiry [default: 1000].
    #[arg(long)]
    pub max_clock_skew_ms: Option<u64>,
    /// Most partition transfers this node receives at once [default: 2].
    #[arg(long)]
    pub transfer_concurrency: Option<usize>,
    /// Bytes per second all incoming partition transfers together may pull; at least 1
    /// [default: 67108864 (64 MiB/s)].
    #[arg(long)]
    pub transfer_max_bytes_per_sec: Option<u64>,
    /// PEM certificate chain of the client listener: with --tls-key, clients must speak TLS.
    #[arg(long)]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long)]
    pub tls_key: Option<PathBuf>,
    /// PEM CA certificates that sign client certificates: clients must present one (mutual TLS).
    #[arg(long)]
    pub tls_client_ca: Option<PathBuf>,
    /// Time a TLS handshake (client or cluster) may take, ms [default: 5000].
    #[arg(long)]
    pub tls_handshake_timeout_ms: Option<u64>,
    /// PEM cluster CA: links between nodes are mutual TLS, each node named in its certificate.
    #[arg(long)]
    pub cluster_tls_ca: Option<PathBuf>,
    /// PEM certificate chain of this node for cluster links [default: --tls-cert].
    #[arg(long)]
    pub cluster_tls_cert: Option<PathBuf>,
    /// PEM private key of --cluster-tls-cert [default: --tls-key].
    #[arg(long)]
    pub cluster_tls_key: Option<PathBuf>,
}

impl StartArgs {
    pub fn config(&self) -> anyhow::Result<NodeConfig> {
        let mut c = match &self.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("reading config file {}", path.display()))?;
                toml::from_str::<NodeConfig>(&text)
                    .with_context(|| format!("parsing config file {}", path.display()))?
            }
            None => NodeConfig::default(),
        };
        macro_rules! set {
            ($($f:ident),*) => { $( if let Some(v) = self.$f.clone() { c.$f = v; } )* };
        }
        set!(
            data_dir,
            listen,
            partitions,
            max_frame_bytes,
            max_value_bytes,
            upload_idle_ms,
            chunk_grace_ms,
            max_uploads,
            max_cluster_frame_bytes,
            max_in_flight_bytes,
            frame_timeout_ms,
            idle_timeout_ms,
            max_connections,
            max_in_flight,
            request_timeout_ms,
            max_siblings,
            max_batch,
            initial_map_bytes,
            max_map_bytes,
            shutdown_grace_secs,
            restart_max,
            restart_window_ms,
            zone,
            capacity,
            heartbeat_ms,
            phi_threshold,
            acceptable_pause_ms,
            handoff_interval_ms,
            repair_interval_ms,
            tombstone_grace_ms,
            max_clock_skew_ms,
            transfer_concurrency,
            transfer_max_bytes_per_sec,
            tls_handshake_timeout_ms
        );
        macro_rules! set_some {
            ($($f:ident),*) => { $( if self.$f.is_some() { c.$f = self.$f.clone(); } )* };
        }
        set_some!(
            tls_cert,
            tls_key,
            tls_client_ca,
            cluster_tls_ca,
            cluster_tls_cert,
            cluster_tls_key
        );
        if self.chunk_bytes.is_some() {
            c.chunk_bytes = self.chunk_bytes;
        }
        if self.max_record_bytes.is_some() {
            c.max_record_bytes = self.max_record_bytes;
        }
        c.fault_injection |= self.fault_injection;
        if self.name.is_some() {
            c.name = self.name.clone();
        }
        if self.cluster_addr.is_some() {
            c.cluster_addr = self.cluster_addr;
        }
        if self.metrics_listen.is_some() {
            c.metrics_listen = self.metrics_listen;
        }
        if self.actor_listen.is_some() {
            c.actor_listen = self.actor_listen;
        }
        if !self.join.is_empty() {
            c.join = self.join.clone();
        }
        if c.cookie.is_none() {
            c.cookie = std::env::var("RINGKV_COOKIE")
                .ok()
                .filter(|s| !s.is_empty());
        }
        c.validate()?;
        Ok(c)
    }
}

/// Runs a node.
pub async fn start(args: StartArgs) -> anyhow::Result<ExitCode> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let mut config = args.config()?;
    raise_open_files_limit(config.max_connections);
    // The cluster address first: a client listener on port 0 bound before it could take the
    // port a caller (a test harness) had just found free for it.
    let cluster_listener = match config.cluster_addr {
        Some(addr) => {
            let l = std::net::TcpListener::bind(addr)
                .with_context(|| format!("binding the cluster address {addr}"))?;
            l.set_nonblocking(true)?;
            Some(l)
        }
        None => None,
    };
    // Bound before the node starts: a taken address stops `ringkv start` at once, and the
    // node announces the port it got (with port 0) as its client address.
    let client_listener =
        Server::listen(config.listen).with_context(|| format!("binding {}", config.listen))?;
    config.listen = client_listener.local_addr()?;
    // Bound before the node starts: a taken address stops `ringkv start` at once.
    let metrics_listener =
        match config.metrics_listen {
            Some(addr) => Some(MetricsListener::bind(addr).await.with_context(|| {
                format!("binding the metrics listener {addr} (metrics-listen)")
            })?),
            None => None,
        };
    // Bound before the node starts: a taken address stops `ringkv start` at once.
    let actor_listener =
        match config.actor_listen {
            Some(addr) => Some(std::net::TcpListener::bind(addr).with_context(|| {
                format!("binding the actor client address {addr} (actor-listen)")
            })?),
            None => None,
        };
    let node = Arc::new(Node::start_bound(config, cluster_listener).await?);
    let mut server = Server::bind(node.clone(), client_listener)
        .await
        .with_context(|| format!("binding {}", node.config().listen))?;
    let mut metrics_task = None;
    if let Some(listener) = metrics_listener {
        let metrics = Metrics::new(node.clone()).context("making the metrics registry")?;
        let addr = listener.local_addr()?;
        server = server.with_metrics(metrics.clone());
        metrics_task = Some(tokio::spawn(listener.run(metrics)));
        println!("ringkv: metrics on http://{addr}/metrics");
        tracing::info!(%addr, "serving metrics");
    }
    let mut gateway = None;
    if let Some(listener) = actor_listener {
        let addr = listener.local_addr()?;
        gateway = Some(
            ringkv_api::server::Gateway::start(node.clone(), server.budget(), server.metrics())
                .await
                .context("starting the KvGateway")?,
        );
        node.serve_client_nodes(listener)?;
        println!("ringkv: actor clients on {addr}");
        tracing::info!(%addr, "serving client nodes");
    }
    let addr = server.local_addr()?;
    println!("ringkv: listening on {addr}");
    std::io::stdout().flush()?;
    tracing::info!(%addr, "listening for clients");

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut serving = tokio::spawn(server.run(stop_rx));
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut listener_failed = false;
    let escalated = tokio::select! {
        _ = tokio::signal::ctrl_c() => { tracing::info!("interrupted; shutting down"); false }
        _ = sigterm.recv() => { tracing::info!("SIGTERM; shutting down"); false }
        _ = node.stopped() => { tracing::error!("supervision tree stopped; shutting down"); true }
        _ = &mut serving => {
            tracing::error!("client listener stopped past its restart budget; shutting down");
            listener_failed = true;
            true
        }
    };
    let _ = stop_tx.send(true);
    if let Some(task) = metrics_task {
        task.abort();
    }
    if !listener_failed {
        let _ = serving.await;
    }
    drop(gateway);
    node.shutdown().await;
    Ok(if escalated {
        ExitCode::from(3)
    } else {
        ExitCode::SUCCESS
    })
}

/// Raises the soft limit of open files to the hard limit: a node holds a socket per client
/// connection (`max-connections`) besides its LMDB files and cluster sessions. Logs a warning
/// when even the hard limit leaves too little room.
pub fn raise_open_files_limit(connections: usize) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return;
        }
        if lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
    let want = connections as u64 + 512;
    if lim.rlim_cur < want {
        tracing::warn!(limit = lim.rlim_cur, want, "the open files limit is below max-connections plus room for data files and peers: raise it (ulimit -n)");
    }
}
