//! The `ringkv` binary: `start` runs a node; the other commands are clients.

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};
use ringkv_actors::{Node, NodeConfig};
use ringkv_api::bench::{BenchSpec, KeyChoice, Target, Workload};
use ringkv_api::protocol::{BucketPropsFrame, RequestFrame};
use ringkv_api::{CallOptions, Client, Server};
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

#[derive(Parser)]
#[command(
    name = "ringkv",
    version,
    about = "ringkv: a Dynamo-style distributed key-value store"
)]
struct Cli {
    /// Client address of a node, for the client commands; also taken after the subcommand,
    /// which wins.
    #[arg(
        long = "addr",
        id = "top_addr",
        default_value = "127.0.0.1:7379",
        env = "RINGKV_ADDR"
    )]
    addr: String,
    #[command(subcommand)]
    command: Command,
}

impl Command {
    /// The address flag of a client command (none for `start`).
    fn addr_mut(&mut self) -> Option<&mut AddrArg> {
        match self {
            Command::Start(_) => None,
            Command::Ping(a) => Some(a),
            Command::Put { addr, .. }
            | Command::Get { addr, .. }
            | Command::Delete { addr, .. }
            | Command::Load { addr, .. }
            | Command::Cluster { addr, .. }
            | Command::Bucket { addr, .. } => Some(addr),
            Command::Bench(b) => Some(&mut b.addr),
        }
    }
}

#[derive(Subcommand)]
enum Command {
    /// Run a node.
    Start(Box<StartArgs>),
    /// Check that a node answers.
    Ping(AddrArg),
    /// Write a value (from VALUE, --file PATH, or stdin). Replaces the current value(s):
    /// the key's context is read first, unless --context or --blind is given.
    Put {
        #[command(flatten)]
        addr: AddrArg,
        /// Bucket name (1 to 64 bytes).
        bucket: String,
        /// Key (1 to 446 bytes).
        key: String,
        /// The value; without it and without --file, stdin is read.
        value: Option<String>,
        /// Read the value from this file.
        #[arg(long, conflicts_with = "value")]
        file: Option<PathBuf>,
        /// Causal context (hex, from `get --json`): replace exactly those versions.
        #[arg(long, conflicts_with = "blind")]
        context: Option<String>,
        /// Write without a context: any existing value stays as a sibling.
        #[arg(long)]
        blind: bool,
        #[command(flatten)]
        quorum: QuorumArgs,
    },
    /// Read a key: one value is written raw to stdout; siblings are announced on stderr.
    /// A missing key exits with status 1.
    Get {
        #[command(flatten)]
        addr: AddrArg,
        /// Bucket name.
        bucket: String,
        /// Key.
        key: String,
        /// Print values and context as JSON.
        #[arg(long)]
        json: bool,
        /// Read only this node's own replica (no quorum, no read repair).
        #[arg(long)]
        local: bool,
        #[command(flatten)]
        quorum: QuorumArgs,
    },
    /// Delete a key (reads its context first, so every version is deleted).
    Delete {
        #[command(flatten)]
        addr: AddrArg,
        /// Bucket name.
        bucket: String,
        /// Key.
        key: String,
        #[command(flatten)]
        quorum: QuorumArgs,
    },
    /// Store every file under DIR (key = relative path, value = bytes) and verify each
    /// reads back byte for byte.
    Load {
        #[command(flatten)]
        addr: AddrArg,
        /// Directory to load.
        dir: PathBuf,
        /// Bucket to store into.
        #[arg(long, default_value = "files")]
        bucket: String,
        /// Requests in flight.
        #[arg(long, default_value_t = 32)]
        concurrency: usize,
        /// Skip files larger than this, bytes (set it to the node's max-value-bytes).
        #[arg(long, default_value_t = 4 << 20)]
        max_value_bytes: u64,
        /// No progress bars.
        #[arg(long)]
        quiet: bool,
    },
    /// Cluster administration: status, plan, commit, leave.
    Cluster {
        #[command(flatten)]
        addr: AddrArg,
        #[command(subcommand)]
        command: ClusterCommand,
    },
    /// Bucket properties: `ringkv bucket set BUCKET n=3 r=2 w=2`, `ringkv bucket get BUCKET`.
    Bucket {
        #[command(flatten)]
        addr: AddrArg,
        #[command(subcommand)]
        command: BucketCommand,
    },
    /// YCSB-style load against ringkv, Redis or etcd (workloads A, B, C, W; uniform or
    /// zipfian keys); prints throughput and p50/p99/p99.9 per operation type.
    Bench(Box<BenchArgs>),
}

#[derive(Args)]
struct BenchArgs {
    #[command(flatten)]
    addr: AddrArg,
    /// System under load (its address is --addr; Redis 127.0.0.1:6379, etcd 127.0.0.1:2379).
    #[arg(long, value_enum, default_value_t = Target::Ringkv)]
    target: Target,
    /// A: 50% reads 50% updates; B: 95/5; C: reads only; W: updates only.
    #[arg(long, value_enum, default_value_t = Workload::A)]
    workload: Workload,
    /// Key choice.
    #[arg(long, value_enum, default_value_t = KeyChoice::Zipfian)]
    distribution: KeyChoice,
    /// Keys in the key space (all preloaded).
    #[arg(long, default_value_t = 10_000)]
    records: u64,
    /// Value size, bytes.
    #[arg(long, default_value_t = 256)]
    value_size: usize,
    /// Requests in flight (one connection each).
    #[arg(long, default_value_t = 50)]
    concurrency: usize,
    /// Operations to run; without it the run lasts --duration-secs.
    #[arg(long)]
    operations: Option<u64>,
    /// Length of the run, seconds.
    #[arg(long, default_value_t = 10)]
    duration_secs: u64,
    /// Seed of the key and operation choices.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Do not preload the keys (a previous run did).
    #[arg(long)]
    skip_load: bool,
    /// Print the result as JSON (and no progress bar).
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    quorum: QuorumArgs,
}

#[derive(Subcommand)]
enum ClusterCommand {
    /// Members, their status, zone, capacity, up/down (this node's failure detector, with
    /// phi) and partitions held; the layout version; the nodes a commit removed.
    Status {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// The layout the next commit would install: replicas per node and moves.
    Plan {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Install the planned layout.
    Commit {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Mark a node as leaving; the next commit removes it from the layout and the cluster for
    /// good (only an empty data directory under that name can join again).
    Leave {
        /// Node name.
        node: String,
    },
}

#[derive(Subcommand)]
enum BucketCommand {
    /// Set properties: any of n=N r=R w=W timeout_ms=MS sloppy_quorum=true|false.
    Set {
        /// Bucket name.
        bucket: String,
        /// Settings, `name=value`.
        #[arg(required = true)]
        settings: Vec<String>,
    },
    /// Show a bucket's properties (JSON).
    Get {
        /// Bucket name.
        bucket: String,
    },
}

/// Per-request quorum flags of put, get and delete.
#[derive(Args, Clone, Default)]
struct QuorumArgs {
    /// Replicas to use [default: the bucket's n].
    #[arg(long)]
    n: Option<u8>,
    /// Read quorum [default: the bucket's r].
    #[arg(long)]
    r: Option<u8>,
    /// Write quorum [default: the bucket's w].
    #[arg(long)]
    w: Option<u8>,
    /// Time limit, ms.
    #[arg(long)]
    timeout_ms: Option<u64>,
}

impl QuorumArgs {
    fn options(&self) -> CallOptions {
        CallOptions {
            n: self.n,
            r: self.r,
            w: self.w,
            timeout_ms: self.timeout_ms,
            local: false,
        }
    }
}

#[derive(Args)]
struct AddrArg {
    /// Client address of a node [default: the one before the subcommand, else $RINGKV_ADDR,
    /// else 127.0.0.1:7379].
    #[arg(long, global = true)]
    addr: Option<String>,
}

impl AddrArg {
    /// The address to use (filled in from the top-level flag at start).
    fn addr(&self) -> &str {
        self.addr.as_deref().unwrap_or("127.0.0.1:7379")
    }
}

/// `ringkv start` flags; each overrides the same key of the config file.
#[derive(Args)]
struct StartArgs {
    /// TOML config file; its keys are the flag names (e.g. `data-dir = "/var/lib/ringkv"`).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Data directory [default: ./ringkv-data].
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Client listen address; port 0 picks a free one [default: 127.0.0.1:7379].
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Partitions (a power of two, fixed at creation) [default: 64].
    #[arg(long)]
    partitions: Option<u32>,
    /// Largest frame, bytes [default: 8388608].
    #[arg(long)]
    max_frame_bytes: Option<usize>,
    /// Largest value, bytes [default: 4194304].
    #[arg(long)]
    max_value_bytes: Option<usize>,
    /// Largest record of one key (all its siblings), bytes [default: 6291456, or less to
    /// fit max-frame-bytes - 4096].
    #[arg(long)]
    max_record_bytes: Option<usize>,
    /// Largest message between two nodes, bytes [default: 16777216].
    #[arg(long)]
    max_cluster_frame_bytes: Option<usize>,
    /// Node-wide budget of client request and answer bytes in flight; past it requests
    /// are answered `overloaded` [default: 268435456].
    #[arg(long)]
    max_in_flight_bytes: Option<usize>,
    /// Time for the rest of a client frame once its first byte arrived, ms [default: 10000].
    #[arg(long)]
    frame_timeout_ms: Option<u64>,
    /// Idle client connections are closed after this long, ms; 0 never [default: 600000].
    #[arg(long)]
    idle_timeout_ms: Option<u64>,
    /// Most client connections [default: 1024].
    #[arg(long)]
    max_connections: Option<usize>,
    /// Most unanswered requests per connection [default: 1024].
    #[arg(long)]
    max_in_flight: Option<usize>,
    /// Default request time limit, ms [default: 5000].
    #[arg(long)]
    request_timeout_ms: Option<u64>,
    /// Most siblings per key [default: 100].
    #[arg(long)]
    max_siblings: Option<usize>,
    /// Most writes per LMDB transaction [default: 1024].
    #[arg(long)]
    max_batch: Option<usize>,
    /// Initial LMDB map size per partition, bytes [default: 67108864].
    #[arg(long)]
    initial_map_bytes: Option<usize>,
    /// Largest LMDB map size per partition, bytes [default: 68719476736].
    #[arg(long)]
    max_map_bytes: Option<usize>,
    /// Restarts allowed per actor type within restart-window-ms [default: 5].
    #[arg(long)]
    restart_max: Option<usize>,
    /// The window of restart-max, ms [default: 10000].
    #[arg(long)]
    restart_window_ms: Option<u64>,
    /// Seconds a shutdown waits for in-flight requests [default: 10].
    #[arg(long)]
    shutdown_grace_secs: Option<u64>,
    /// Accept the `inject_fault` op that panics actors on purpose (tests only).
    #[arg(long)]
    fault_injection: bool,
    /// Node name, unique and stable [default: the cluster address, or `local`].
    #[arg(long)]
    name: Option<String>,
    /// Cluster transport address HOST:PORT; without it the node runs alone.
    /// The cookie comes from RINGKV_COOKIE or `cookie` in the config file.
    #[arg(long)]
    cluster_addr: Option<SocketAddr>,
    /// Cluster address of a member to join through (repeatable).
    #[arg(long)]
    join: Vec<String>,
    /// Failure domain of this node [default: default].
    #[arg(long)]
    zone: Option<String>,
    /// Relative capacity of this node [default: 1].
    #[arg(long)]
    capacity: Option<u32>,
    /// Heartbeat and gossip period, ms [default: 500].
    #[arg(long)]
    heartbeat_ms: Option<u64>,
    /// Phi above which a peer is suspected down [default: 8].
    #[arg(long)]
    phi_threshold: Option<f64>,
    /// Silence tolerated beyond the usual heartbeat interval before phi rises, ms
    /// [default: 1000].
    #[arg(long)]
    acceptable_pause_ms: Option<u64>,
    /// Period of hinted handoff rounds, ms [default: 1000].
    #[arg(long)]
    handoff_interval_ms: Option<u64>,
    /// Period of anti-entropy (Merkle tree exchange) rounds, ms; 0 disables [default: 10000].
    #[arg(long)]
    repair_interval_ms: Option<u64>,
    /// Tombstones younger than this are never purged, ms [default: 3600000].
    #[arg(long)]
    tombstone_grace_ms: Option<u64>,
}

impl StartArgs {
    fn config(&self) -> anyhow::Result<NodeConfig> {
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
            tombstone_grace_ms
        );
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

/// mimalloc: the node's request path allocates small buffers per request (frames, records,
/// preference lists); glibc malloc took about 12% of a write-only profile.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ringkv: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("ringkv: {e:#}");
            ExitCode::from(2)
        }
    }
}

async fn run(mut cli: Cli) -> anyhow::Result<ExitCode> {
    if let Some(a) = cli.command.addr_mut() {
        if a.addr.is_none() {
            a.addr = Some(cli.addr.clone());
        }
    }
    match cli.command {
        Command::Start(args) => start(*args).await,
        Command::Ping(a) => {
            let t = std::time::Instant::now();
            connect(&a).await?.ping().await?;
            println!(
                "pong from {} in {:.2} ms",
                a.addr(),
                t.elapsed().as_secs_f64() * 1e3
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Put {
            addr,
            bucket,
            key,
            value,
            file,
            context,
            blind,
            quorum,
        } => {
            let opts = quorum.options();
            let value = match (value, file) {
                (Some(v), _) => v.into_bytes(),
                (None, Some(path)) => {
                    std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?
                }
                (None, None) => {
                    let mut buf = Vec::new();
                    std::io::Read::read_to_end(&mut std::io::stdin(), &mut buf)
                        .context("reading stdin")?;
                    buf
                }
            };
            let client = connect(&addr).await?;
            let context = match (context, blind) {
                (Some(hex), _) => decode_hex(&hex).context("--context is not hex")?,
                (None, true) => Vec::new(),
                (None, false) => {
                    client
                        .get_with(bucket.as_bytes(), key.as_bytes(), &opts)
                        .await?
                        .context
                }
            };
            client
                .put_with(bucket.as_bytes(), key.as_bytes(), value, &context, &opts)
                .await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Get {
            addr,
            bucket,
            key,
            json,
            local,
            quorum,
        } => {
            let opts = CallOptions {
                local,
                ..quorum.options()
            };
            let got = connect(&addr)
                .await?
                .get_with(bucket.as_bytes(), key.as_bytes(), &opts)
                .await?;
            if json {
                let values: Vec<serde_json::Value> = got
                    .values
                    .iter()
                    .map(|v| match std::str::from_utf8(v) {
                        Ok(s) => serde_json::json!({"size": v.len(), "utf8": s}),
                        Err(_) => serde_json::json!({"size": v.len(), "hex": encode_hex(v)}),
                    })
                    .collect();
                println!(
                    "{}",
                    serde_json::json!({"found": !got.values.is_empty(), "values": values, "context": encode_hex(&got.context)})
                );
                return Ok(if got.values.is_empty() {
                    ExitCode::from(1)
                } else {
                    ExitCode::SUCCESS
                });
            }
            let mut out = std::io::stdout().lock();
            match got.values.as_slice() {
                [] => {
                    eprintln!("not found: {bucket}/{key}");
                    return Ok(ExitCode::from(1));
                }
                [v] => out.write_all(v)?,
                many => {
                    eprintln!(
                        "{bucket}/{key} has {} siblings (concurrent writes). Resolve them by writing the merged value with the context from `ringkv get --json`:",
                        many.len()
                    );
                    for (i, v) in many.iter().enumerate() {
                        writeln!(
                            out,
                            "--- sibling {} of {} ({} bytes) ---",
                            i + 1,
                            many.len(),
                            v.len()
                        )?;
                        out.write_all(v)?;
                        writeln!(out)?;
                    }
                }
            }
            out.flush()?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Delete {
            addr,
            bucket,
            key,
            quorum,
        } => {
            let opts = quorum.options();
            let client = connect(&addr).await?;
            let got = client
                .get_with(bucket.as_bytes(), key.as_bytes(), &opts)
                .await?;
            if got.values.is_empty() {
                eprintln!("not found: {bucket}/{key}");
                return Ok(ExitCode::from(1));
            }
            client
                .delete_with(bucket.as_bytes(), key.as_bytes(), &got.context, &opts)
                .await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Cluster { addr, command } => {
            let client = connect(&addr).await?;
            let (op, json, node) = match command {
                ClusterCommand::Status { json } => ("cluster_status", json, None),
                ClusterCommand::Plan { json } => ("cluster_plan", json, None),
                ClusterCommand::Commit { json } => ("cluster_commit", json, None),
                ClusterCommand::Leave { node } => ("cluster_leave", false, Some(node)),
            };
            let info = client
                .admin(RequestFrame {
                    op: op.into(),
                    node,
                    ..Default::default()
                })
                .await?;
            if json {
                println!("{info}");
            } else {
                print_admin(op, &info);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Bucket { addr, command } => {
            let client = connect(&addr).await?;
            let frame = match command {
                BucketCommand::Get { bucket } => RequestFrame {
                    op: "bucket_get".into(),
                    bucket: Some(bucket.into_bytes().into()),
                    ..Default::default()
                },
                BucketCommand::Set { bucket, settings } => RequestFrame {
                    op: "bucket_set".into(),
                    bucket: Some(bucket.into_bytes().into()),
                    props: Some(parse_props(&settings)?),
                    ..Default::default()
                },
            };
            println!("{}", client.admin(frame).await?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Load {
            addr,
            dir,
            bucket,
            concurrency,
            max_value_bytes,
            quiet,
        } => {
            let client = connect(&addr).await?;
            let r = ringkv_api::load::load(
                &client,
                &dir,
                bucket.as_bytes(),
                concurrency,
                max_value_bytes,
                quiet,
            )
            .await?;
            let mb = r.bytes as f64 / 1e6;
            let (st, vt) = (r.store_time.as_secs_f64(), r.verify_time.as_secs_f64());
            println!(
                "stored   {} files, {:.1} MB in {:.2} s: {:.0} files/s, {:.1} MB/s",
                r.stored,
                mb,
                st,
                r.stored as f64 / st,
                mb / st
            );
            println!(
                "verified {} files in {:.2} s: {:.0} files/s, {:.1} MB/s; {} mismatched",
                r.stored,
                vt,
                r.stored as f64 / vt,
                mb / vt,
                r.mismatched.len()
            );
            if !r.skipped.is_empty() {
                println!("skipped  {} files:", r.skipped.len());
                for (p, why) in r.skipped.iter().take(20) {
                    println!("  {}: {why}", p.display());
                }
            }
            for (p, why) in r.mismatched.iter().take(20) {
                println!("MISMATCH {}: {why}", p.display());
            }
            Ok(if r.mismatched.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        Command::Bench(b) => {
            let spec = BenchSpec {
                target: b.target,
                addr: b.addr.addr().to_string(),
                workload: b.workload,
                keys: b.distribution,
                records: b.records.max(1),
                value_size: b.value_size,
                concurrency: b.concurrency.max(1),
                operations: b.operations,
                duration: std::time::Duration::from_secs(b.duration_secs),
                seed: b.seed,
                skip_load: b.skip_load,
                quorum: b.quorum.options(),
                quiet: b.json,
            };
            let result = ringkv_api::bench::run(&spec).await?;
            if b.json {
                println!("{}", serde_json::to_string(&result)?);
            } else {
                print!("{result}");
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn connect(a: &AddrArg) -> anyhow::Result<Client> {
    Client::connect(a.addr())
        .await
        .with_context(|| format!("connecting to {}", a.addr()))
}

async fn start(args: StartArgs) -> anyhow::Result<ExitCode> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let config = args.config()?;
    raise_open_files_limit(config.max_connections);
    let node = Arc::new(Node::start(config).await?);
    let server = Server::bind(node.clone())
        .await
        .with_context(|| format!("binding {}", node.config().listen))?;
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
    if !listener_failed {
        let _ = serving.await;
    }
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
fn raise_open_files_limit(connections: usize) {
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

/// Parses `n=3 r=2 w=2 timeout_ms=500 sloppy_quorum=false`.
fn parse_props(settings: &[String]) -> anyhow::Result<BucketPropsFrame> {
    let mut p = BucketPropsFrame::default();
    for s in settings {
        let (k, v) = s
            .split_once('=')
            .with_context(|| format!("{s:?} is not name=value"))?;
        match k {
            "n" => p.n = Some(v.parse().with_context(|| format!("n={v}"))?),
            "r" => p.r = Some(v.parse().with_context(|| format!("r={v}"))?),
            "w" => p.w = Some(v.parse().with_context(|| format!("w={v}"))?),
            "timeout_ms" => {
                p.timeout_ms = Some(v.parse().with_context(|| format!("timeout_ms={v}"))?)
            }
            "sloppy_quorum" => {
                p.sloppy_quorum = Some(
                    v.parse()
                        .with_context(|| format!("sloppy_quorum={v}: use true or false"))?,
                )
            }
            other => {
                bail!("unknown bucket property {other:?}: use n, r, w, timeout_ms or sloppy_quorum")
            }
        }
    }
    Ok(p)
}

/// Prints an administration answer for people.
fn print_admin(op: &str, info: &serde_json::Value) {
    match op {
        "cluster_status" => {
            println!(
                "node {}  partitions {}  layout version {}  state digest {}",
                info["node"].as_str().unwrap_or("?"),
                info["partitions"],
                info["layout_version"],
                info["digest"].as_str().unwrap_or("?")
            );
            println!(
                "{:<20} {:<8} {:<6} {:<10} {:>8} {:>10} {:>6}  {:<22} {:<22}",
                "NAME",
                "STATUS",
                "UP",
                "ZONE",
                "CAPACITY",
                "PARTITIONS",
                "PHI",
                "CLUSTER ADDR",
                "CLIENT ADDR"
            );
            for m in info["members"].as_array().into_iter().flatten() {
                println!(
                    "{:<20} {:<8} {:<6} {:<10} {:>8} {:>10} {:>6.2}  {:<22} {:<22}",
                    m["name"].as_str().unwrap_or("?"),
                    m["status"].as_str().unwrap_or("?"),
                    if m["up"].as_bool() == Some(true) {
                        "up"
                    } else {
                        "down"
                    },
                    m["zone"].as_str().unwrap_or("?"),
                    m["capacity"].to_string(),
                    m["partitions"].to_string(),
                    m["phi"].as_f64().unwrap_or(0.0),
                    m["cluster_addr"].as_str().unwrap_or(""),
                    m["client_addr"].as_str().unwrap_or(""),
                );
            }
            let removed: Vec<&str> = info["removed"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|n| n.as_str())
                .collect();
            if !removed.is_empty() {
                println!("removed: {}", removed.join(", "));
            }
            // Counters of the answering node: `group: name value, ...`.
            for group in ["gossip", "hints", "repair", "restarts"] {
                if let Some(counters) = info[group].as_object() {
                    let fields: Vec<String> =
                        counters.iter().map(|(k, v)| format!("{k} {v}")).collect();
                    println!("{group}: {}", fields.join(", "));
                }
            }
        }
        "cluster_plan" | "cluster_commit" => {
            let verb = if op == "cluster_plan" {
                "would install"
            } else {
                "installed"
            };
            println!(
                "layout version {} {verb}: {} partition replicas move",
                info["version"], info["moved"]
            );
            for (k, label) in [("joining", "joining"), ("leaving", "leaving")] {
                if let Some(list) = info[k].as_array().filter(|l| !l.is_empty()) {
                    let names: Vec<&str> = list.iter().filter_map(|v| v.as_str()).collect();
                    println!("{label}: {}", names.join(", "));
                }
            }
            if let Some(map) = info["replicas_per_node"].as_object() {
                for (node, count) in map {
                    println!("  {node:<20} {count:>6} partition replicas");
                }
            }
        }
        _ => println!("ok"),
    }
}

fn encode_hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn decode_hex(s: &str) -> anyhow::Result<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        bail!("odd number of hex digits");
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).map_err(Into::into))
        .collect()
}
