//! `ringkv bench`.

use super::{AddrArg, QuorumArgs};
use clap::Args;
use ringkv_api::bench::{BenchSpec, KeyChoice, Route, Target, Workload, DEFAULT_BUCKET};
use std::process::ExitCode;

#[derive(Args)]
pub struct BenchArgs {
    #[command(flatten)]
    pub addr: AddrArg,
    /// System under load (its address is --addr; Redis 127.0.0.1:6379, etcd 127.0.0.1:2379).
    #[arg(long, value_enum, default_value_t = Target::Ringkv)]
    pub target: Target,
    /// How ringkv requests reach the cluster: `node` sends every request to --addr, which
    /// coordinates it; `cluster` learns the layout from --addr and sends each request to the
    /// first usable replica of its key (partition-aware routing, `Client::connect_cluster`);
    /// `actor` joins as a ractor_cluster client node through --addr, a node's actor-listen,
    /// with the cookie in RINGKV_COOKIE, and calls the replicas' KvGateways (`KvRef`).
    #[arg(long, value_enum, default_value_t = Route::Node)]
    pub route: Route,
    /// ringkv bucket of the keys; a strong one (`bucket set B consistency=strong`, before the
    /// load) makes every get and put linearizable. Redis and etcd ignore it.
    #[arg(long, default_value = DEFAULT_BUCKET)]
    pub bucket: String,
    /// A: 50% reads 50% updates; B: 95/5; C: reads only; W: updates only.
    #[arg(long, value_enum, default_value_t = Workload::A)]
    pub workload: Workload,
    /// Key choice.
    #[arg(long, value_enum, default_value_t = KeyChoice::Zipfian)]
    pub distribution: KeyChoice,
    /// Keys in the key space (all preloaded).
    #[arg(long, default_value_t = 10_000)]
    pub records: u64,
    /// Value size, bytes.
    #[arg(long, default_value_t = 256)]
    pub value_size: usize,
    /// Requests in flight (one connection each).
    #[arg(long, default_value_t = 50)]
    pub concurrency: usize,
    /// Operations to run; without it the run lasts --duration-secs.
    #[arg(long)]
    pub operations: Option<u64>,
    /// Length of the run, seconds.
    #[arg(long, default_value_t = 10)]
    pub duration_secs: u64,
    /// Seed of the key and operation choices.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Do not preload the keys (a previous run did).
    #[arg(long)]
    pub skip_load: bool,
    /// Print the result as JSON (and no progress bar).
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub quorum: QuorumArgs,
}

/// Runs the benchmark and prints its figures.
pub async fn bench(b: Box<BenchArgs>) -> anyhow::Result<ExitCode> {
    let spec = BenchSpec {
        target: b.target,
        addr: b.addr.addr().to_string(),
        tls: b.addr.tls.client_tls()?,
        route: b.route,
        bucket: b.bucket.into_bytes(),
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
