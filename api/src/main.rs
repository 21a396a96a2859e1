//! The `ringkv` binary: `start` runs a node; the other commands are clients.

mod cmd;

use clap::{Parser, Subcommand};
use cmd::{admin, bench, cert, explain, kv, load, start, AddrArg};
use std::process::ExitCode;

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
    #[command(flatten)]
    tls: cmd::TlsArgs,
    #[command(subcommand)]
    command: Command,
}

impl Command {
    /// The address flag of a client command (none for `start`).
    fn addr_mut(&mut self) -> Option<&mut AddrArg> {
        match self {
            Command::Start(_) | Command::Cert(_) => None,
            Command::Ping(a) => Some(a),
            Command::Put(a) => Some(&mut a.addr),
            Command::Get(a) => Some(&mut a.addr),
            Command::Delete(a) => Some(&mut a.addr),
            Command::Cas(a) => Some(&mut a.addr),
            Command::Explain(a) => Some(&mut a.addr),
            Command::Load(a) => Some(&mut a.addr),
            Command::Cluster(a) => Some(&mut a.addr),
            Command::Bucket(a) => Some(&mut a.addr),
            Command::Bench(b) => Some(&mut b.addr),
        }
    }
}

#[derive(Subcommand)]
enum Command {
    /// Run a node.
    Start(Box<start::StartArgs>),
    /// Check that a node answers.
    Ping(AddrArg),
    /// Write a value (from VALUE, --file PATH, or stdin). Replaces the current value(s):
    /// the key's context is read first, unless --context or --blind is given.
    Put(kv::PutArgs),
    /// Read a key: one value is written raw to stdout; siblings are announced on stderr.
    /// A missing key exits with status 1.
    Get(kv::GetArgs),
    /// Delete a key (reads its context first, so every version is deleted).
    Delete(kv::DeleteArgs),
    /// Compare-and-set on a strong bucket: `cas B K --expect OLD NEW` (or --absent instead of
    /// --expect, --delete instead of NEW). A key that does not hold what was expected exits
    /// with status 3 and prints its current value on stdout.
    Cas(kv::CasArgs),
    /// Where a key lives and why it reads as it does: its partition, preference list and
    /// fallbacks (with liveness), each replica's version vector and siblings (read locally),
    /// the hints held for it, and the partition's last anti-entropy exchanges.
    Explain(explain::ExplainArgs),
    /// Store every file under DIR (key = relative path, value = bytes) and verify each
    /// reads back byte for byte.
    Load(load::LoadArgs),
    /// Cluster administration: status, plan, commit, leave.
    Cluster(admin::ClusterArgs),
    /// Bucket properties: `ringkv bucket set BUCKET n=3 r=2 w=2`, `ringkv bucket get BUCKET`.
    Bucket(admin::BucketArgs),
    /// YCSB-style load against ringkv, Redis or etcd (workloads A, B, C, W; uniform or
    /// zipfian keys); prints throughput and p50/p99/p99.9 per operation type.
    Bench(Box<bench::BenchArgs>),
    /// Make a CA and node or client certificates for trying TLS out: `ringkv cert ca --dir D`,
    /// then `ringkv cert node NAME --dir D [--host H]`.
    Cert(cert::CertArgs),
}

/// mimalloc: the node's request path allocates small buffers per request (frames, records,
/// preference lists); glibc malloc took about 12% of a write-only profile.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Start(_)) {
        // A client command whose reader went away (`ringkv cluster status | head -1`) ends
        // on SIGPIPE like other Unix tools, instead of panicking in `println!` on the failed
        // write. Rust ignores SIGPIPE by default; the server (`start`) keeps it ignored, so a
        // client's closed socket is an error on that socket only.
        // SAFETY: called before any thread is started; `signal` with SIG_DFL has no other
        // precondition.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
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
        a.tls.inherit(&cli.tls);
    }
    match cli.command {
        Command::Start(args) => start::start(*args).await,
        Command::Ping(a) => kv::ping(a).await,
        Command::Put(args) => kv::put(args).await,
        Command::Get(args) => kv::get(args).await,
        Command::Delete(args) => kv::delete(args).await,
        Command::Cas(args) => kv::cas(args).await,
        Command::Explain(args) => explain::explain(args).await,
        Command::Load(args) => load::load(args).await,
        Command::Cluster(args) => admin::cluster(args).await,
        Command::Bucket(args) => admin::bucket(args).await,
        Command::Bench(b) => bench::bench(b).await,
        Command::Cert(args) => cert::cert(args),
    }
}
