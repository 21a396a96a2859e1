//! `ringkv bench`: YCSB-style load (Cooper et al., *Benchmarking Cloud Serving Systems with
//! YCSB*, SoCC 2010) against ringkv, Redis or etcd, so that all three get the same load.
//!
//! * Workloads: A (50% read, 50% update), B (95/5), C (100% read), W (100% update).
//! * Keys: `user{n}` over `--records` keys, preloaded once; uniform or zipfian (constant 0.99,
//!   scrambled by an FNV hash as YCSB's `ScrambledZipfianGenerator` does, so that the hot keys
//!   do not sit next to each other).
//! * Closed loop: `--concurrency` workers, each with its own connection and one request in
//!   flight, so all targets see the same number of requests in flight.
//! * Latencies go into one HDR histogram per operation type (microseconds, 3 significant
//!   digits); the report gives throughput and p50/p99/p99.9 per type.
//!
//! A ringkv update is what a careful Dynamo client does: a put with the causal context of the
//! last answer about that key the worker saw (a get, or the put before), asking for the body
//! back to learn the new context. Concurrent updates to a hot key become siblings that the
//! next update of each worker resolves, so the number of siblings stays bounded.
//!
//! `--route cluster` sends each ringkv request straight to the first usable replica of its
//! key (a [`ClusterClient`] per worker, with the layout learnt from `--addr`) instead of
//! through the node at `--addr` (`--route node`, the default). `--route actor` sends them as
//! typed actor messages from one client node (`KvRef`) dialled at `--addr`, a node's
//! `actor-listen`.
//!
//! `--bucket` picks the ringkv bucket (default `usertable`). On a bucket made strong before
//! the load (`ringkv bucket set B consistency=strong`) the same gets and puts are
//! linearizable ([`ringkv_actors::strong`]); their context is then empty and ignored.

use crate::client::{CallOptions, Client, ClientError, ClusterClient, ClusterOptions};
use crate::protocol::{RequestFrame, ResponseFrame};
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use rand::{Rng, SeedableRng};
use rand_distr::Distribution as _;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::task::JoinSet;

/// The operation mix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
pub enum Workload {
    /// 50% reads, 50% updates.
    A,
    /// 95% reads, 5% updates.
    B,
    /// 100% reads.
    C,
    /// 100% updates (write-only).
    W,
}

impl Workload {
    /// Fraction of reads.
    pub fn read_fraction(self) -> f64 {
        match self {
            Workload::A => 0.5,
            Workload::B => 0.95,
            Workload::C => 1.0,
            Workload::W => 0.0,
        }
    }
}

/// How keys are chosen.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
pub enum KeyChoice {
    /// Every key equally likely.
    Uniform,
    /// Zipfian with constant 0.99, scrambled (YCSB's default).
    Zipfian,
}

/// The system under load.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
pub enum Target {
    /// A ringkv node (msgpack protocol).
    Ringkv,
    /// A Redis server (RESP GET/SET).
    Redis,
    /// An etcd member (v3 JSON gateway: `/v3/kv/range` and `/v3/kv/put`; linearizable reads).
    Etcd,
}

/// How ringkv requests reach the cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Route {
    /// Every request through the node at `--addr`, which coordinates it (forwarding to the
    /// key's replicas as needed).
    Node,
    /// Partition-aware: each worker's [`ClusterClient`] learns the layout from `--addr` and
    /// sends each request to the first usable replica of its key.
    Cluster,
    /// Typed actor messages: one client node for the whole run
    /// ([`crate::client::actor::KvRef`]) dials `--addr`, a node's `actor-listen`, with the
    /// cookie in `RINGKV_COOKIE`, and sends each request to the KvGateway of a replica.
    Actor,
}

/// The one client node of `--route actor` runs (every worker shares it: a process holds one
/// actor registry).
static ACTOR_CLIENT: tokio::sync::OnceCell<crate::client::actor::KvRef> =
    tokio::sync::OnceCell::const_new();

/// Settings of a run.
#[derive(Clone, Debug)]
pub struct BenchSpec {
    /// The system.
    pub target: Target,
    /// Its address, `HOST:PORT`.
    pub addr: String,
    /// ringkv over TLS (`--tls-ca`); plain TCP if `None`.
    pub tls: Option<ringkv_client::ClientTls>,
    /// How ringkv requests reach the cluster (Redis and etcd ignore it).
    pub route: Route,
    /// ringkv bucket of the keys (Redis and etcd have none).
    pub bucket: Vec<u8>,
    /// Operation mix.
    pub workload: Workload,
    /// Key choice.
    pub keys: KeyChoice,
    /// Keys in the key space, all preloaded.
    pub records: u64,
    /// Value size, bytes.
    pub value_size: usize,
    /// Requests in flight (workers, one connection each).
    pub concurrency: usize,
    /// Operations to run after the preload; `None` runs for `duration`.
    pub operations: Option<u64>,
    /// Run time when `operations` is `None`.
    pub duration: Duration,
    /// Seed of every random choice.
    pub seed: u64,
    /// Skip the preload (the keys are already there).
    pub skip_load: bool,
    /// ringkv quorums for this run.
    pub quorum: CallOptions,
    /// No progress bar.
    pub quiet: bool,
}

/// Results of one operation type.
#[derive(Clone, Debug, serde::Serialize)]
pub struct OpStats {
    /// Operations completed (errors included).
    pub count: u64,
    /// Operations answered with an error.
    pub errors: u64,
    /// Operations per second.
    pub throughput: f64,
    /// Median latency, µs.
    pub p50_us: u64,
    /// 99th percentile, µs.
    pub p99_us: u64,
    /// 99.9th percentile, µs.
    pub p999_us: u64,
}

/// Results of a run.
#[derive(Clone, Debug, serde::Serialize)]
pub struct BenchResult {
    /// The system.
    pub target: Target,
    /// How ringkv requests reached the cluster.
    pub route: Route,
    /// Operation mix.
    pub workload: Workload,
    /// Key choice.
    pub keys: KeyChoice,
    /// Requests in flight.
    pub concurrency: usize,
    /// Value size, bytes.
    pub value_size: usize,
    /// Wall time of the run phase, s.
    pub seconds: f64,
    /// All operations per second.
    pub throughput: f64,
    /// Reads, if any.
    pub read: Option<OpStats>,
    /// Updates, if any.
    pub update: Option<OpStats>,
}

/// Why a driver call failed.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct DriverError(String);

impl From<ClientError> for DriverError {
    fn from(e: ClientError) -> Self {
        DriverError(e.to_string())
    }
}
impl From<redis::RedisError> for DriverError {
    fn from(e: redis::RedisError) -> Self {
        DriverError(e.to_string())
    }
}
impl From<reqwest::Error> for DriverError {
    fn from(e: reqwest::Error) -> Self {
        DriverError(e.to_string())
    }
}

/// A worker's way into ringkv.
enum RingkvClient {
    /// One connection to the node at `--addr`.
    Node(Client),
    /// A partition-aware client (a connection per node, opened as needed).
    Cluster(ClusterClient),
    /// The run's client node.
    Actor(crate::client::actor::KvRef),
}

impl RingkvClient {
    async fn get(
        &self,
        bucket: &[u8],
        key: &[u8],
        opts: &CallOptions,
    ) -> Result<crate::client::Fetched, ClientError> {
        match self {
            RingkvClient::Node(c) => c.get_with(bucket, key, opts).await,
            RingkvClient::Cluster(c) => c.get_with(bucket, key, opts).await,
            RingkvClient::Actor(c) => c.get(bucket, key, opts).await,
        }
    }

    async fn request(&self, frame: RequestFrame) -> Result<ResponseFrame, ClientError> {
        match self {
            RingkvClient::Node(c) => c.request(frame).await,
            RingkvClient::Cluster(c) => c.request(frame).await,
            RingkvClient::Actor(c) => c.request(frame).await,
        }
    }
}

/// One connection to the system under load.
enum Driver {
    Ringkv {
        client: RingkvClient,
        bucket: Vec<u8>,
        opts: CallOptions,
        /// The context of the last answer about each key, kept only when the workload updates
        /// (a read-only workload never uses it).
        contexts: Option<HashMap<Vec<u8>, Vec<u8>>>,
    },
    Redis(redis::aio::MultiplexedConnection),
    Etcd {
        http: reqwest::Client,
        base: String,
    },
}

/// The ringkv bucket `ringkv bench` loads unless told another.
pub const DEFAULT_BUCKET: &str = "usertable";

impl Driver {
    async fn connect(spec: &BenchSpec) -> Result<Driver, DriverError> {
        Ok(match spec.target {
            Target::Ringkv => Driver::Ringkv {
                client: match spec.route {
                    Route::Node => RingkvClient::Node(
                        Client::connect_with(spec.addr.as_str(), spec.tls.as_ref()).await?,
                    ),
                    Route::Cluster => RingkvClient::Cluster(
                        ClusterClient::connect(
                            &[spec.addr.as_str()],
                            spec.tls.as_ref(),
                            ClusterOptions::default(),
                        )
                        .await?,
                    ),
                    Route::Actor => RingkvClient::Actor(
                        ACTOR_CLIENT
                            .get_or_try_init(|| async {
                                let cookie = std::env::var("RINGKV_COOKIE").map_err(|_| {
                                    ClientError::Protocol(
                                        "--route actor needs the cluster cookie in RINGKV_COOKIE"
                                            .into(),
                                    )
                                })?;
                                crate::client::actor::KvRef::connect(
                                    crate::client::actor::ActorClientConfig::new(
                                        &format!("bench-{}", std::process::id()),
                                        &cookie,
                                        [spec.addr.clone()],
                                    ),
                                )
                                .await
                            })
                            .await?
                            .clone(),
                    ),
                },
                bucket: spec.bucket.clone(),
                opts: spec.quorum.clone(),
                contexts: (spec.workload.read_fraction() < 1.0).then(HashMap::new),
            },
            Target::Redis => {
                let client = redis::Client::open(format!("redis://{}/", spec.addr))?;
                Driver::Redis(client.get_multiplexed_async_connection().await?)
            }
            Target::Etcd => Driver::Etcd {
                http: reqwest::Client::builder()
                    .pool_max_idle_per_host(1)
                    .build()?,
                base: format!("http://{}", spec.addr),
            },
        })
    }

    async fn read(&mut self, key: &[u8]) -> Result<(), DriverError> {
        match self {
            Driver::Ringkv {
                client,
                bucket,
                opts,
                contexts,
            } => {
                let got = client.get(bucket, key, opts).await?;
                if let Some(contexts) = contexts {
                    contexts.insert(key.to_vec(), got.context);
                }
            }
            Driver::Redis(c) => {
                let _: Option<Vec<u8>> = redis::cmd("GET").arg(key).query_async(c).await?;
            }
            Driver::Etcd { http, base } => {
                etcd_call(http, base, "range", serde_json::json!({ "key": b64(key) })).await?;
            }
        }
        Ok(())
    }

    async fn update(&mut self, key: &[u8], value: &[u8]) -> Result<(), DriverError> {
        match self {
            Driver::Ringkv {
                client,
                bucket,
                opts,
                contexts,
            } => {
                let context = contexts
                    .as_ref()
                    .and_then(|c| c.get(key).cloned())
                    .unwrap_or_default();
                let mut frame = RequestFrame {
                    op: "put".into(),
                    bucket: Some(bucket.clone().into()),
                    key: Some(key.to_vec().into()),
                    value: Some(value.to_vec().into()),
                    context: Some(context.into()),
                    return_body: Some(true),
                    ..Default::default()
                };
                frame.n = opts.n.map(u64::from);
                frame.r = opts.r.map(u64::from);
                frame.w = opts.w.map(u64::from);
                frame.timeout_ms = opts.timeout_ms;
                let answer = client.request(frame).await?;
                if !answer.ok {
                    return Err(DriverError(format!(
                        "{}: {}",
                        answer.code.unwrap_or_default(),
                        answer.message.unwrap_or_default()
                    )));
                }
                if let (Some(contexts), Some(ctx)) = (contexts, answer.context) {
                    contexts.insert(key.to_vec(), ctx.into_vec());
                }
            }
            Driver::Redis(c) => {
                let _: () = redis::cmd("SET").arg(key).arg(value).query_async(c).await?;
            }
            Driver::Etcd { http, base } => {
                etcd_call(
                    http,
                    base,
                    "put",
                    serde_json::json!({ "key": b64(key), "value": b64(value) }),
                )
                .await?;
            }
        }
        Ok(())
    }
}

fn b64(b: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(b)
}

async fn etcd_call(
    http: &reqwest::Client,
    base: &str,
    op: &str,
    body: serde_json::Value,
) -> Result<(), DriverError> {
    let r = http
        .post(format!("{base}/v3/kv/{op}"))
        .json(&body)
        .send()
        .await?;
    if !r.status().is_success() {
        return Err(DriverError(format!("etcd {op}: HTTP {}", r.status())));
    }
    let _ = r.bytes().await?;
    Ok(())
}

/// Key chooser for one worker.
enum Chooser {
    Uniform(u64),
    Zipfian(rand_distr::Zipf<f64>, u64),
}

impl Chooser {
    fn new(keys: KeyChoice, records: u64) -> Chooser {
        match keys {
            KeyChoice::Uniform => Chooser::Uniform(records),
            KeyChoice::Zipfian => Chooser::Zipfian(
                rand_distr::Zipf::new(records, 0.99).expect("records >= 1 and s > 0"),
                records,
            ),
        }
    }

    fn next(&self, rng: &mut impl Rng) -> u64 {
        match self {
            Chooser::Uniform(n) => rng.gen_range(0..*n),
            Chooser::Zipfian(z, n) => {
                // Rank 1 is the hottest; scramble ranks over the key space with FNV-1a, as
                // YCSB's ScrambledZipfianGenerator does.
                let rank = z.sample(rng) as u64 - 1;
                fnv1a64(rank) % n
            }
        }
    }
}

fn fnv1a64(x: u64) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in x.to_le_bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

fn key_of(n: u64) -> Vec<u8> {
    format!("user{n:012}").into_bytes()
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds")
}

fn stats(h: &Histogram<u64>, errors: u64, seconds: f64) -> Option<OpStats> {
    (!h.is_empty()).then(|| OpStats {
        count: h.len(),
        errors,
        throughput: h.len() as f64 / seconds.max(f64::EPSILON),
        p50_us: h.value_at_quantile(0.5),
        p99_us: h.value_at_quantile(0.99),
        p999_us: h.value_at_quantile(0.999),
    })
}

fn bar(len: Option<u64>, msg: &'static str, quiet: bool) -> ProgressBar {
    if quiet {
        return ProgressBar::hidden();
    }
    let pb = match len {
        Some(n) => ProgressBar::new(n),
        None => ProgressBar::new_spinner(),
    };
    pb.set_style(
        ProgressStyle::with_template("{msg:>8} [{elapsed_precise}] {wide_bar} {pos} ({per_sec})")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    pb.set_message(msg);
    pb
}

/// Preloads every key once (`records` writes, `concurrency` in flight).
async fn preload(spec: &BenchSpec) -> anyhow::Result<()> {
    let pb = bar(Some(spec.records), "load", spec.quiet);
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = JoinSet::new();
    for _ in 0..spec.concurrency {
        let (spec, next, pb) = (spec.clone(), next.clone(), pb.clone());
        tasks.spawn(async move {
            let mut driver = Driver::connect(&spec).await?;
            let value = vec![0x5a; spec.value_size];
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= spec.records {
                    return Ok::<(), DriverError>(());
                }
                driver.update(&key_of(n), &value).await?;
                pb.inc(1);
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r??;
    }
    pb.finish_and_clear();
    Ok(())
}

/// Runs the load described by `spec`: the preload (unless skipped), then the workload.
///
/// # Errors
/// Connection failures, or any error during the preload.
pub async fn run(spec: &BenchSpec) -> anyhow::Result<BenchResult> {
    if !spec.skip_load {
        preload(spec).await?;
    }
    let pb = bar(spec.operations, "run", spec.quiet);
    let next = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let mut tasks = JoinSet::new();
    for worker in 0..spec.concurrency as u64 {
        let (spec, next, stop, pb) = (spec.clone(), next.clone(), stop.clone(), pb.clone());
        tasks.spawn(async move {
            let mut driver = Driver::connect(&spec).await?;
            let mut rng = rand::rngs::StdRng::seed_from_u64(spec.seed.wrapping_add(worker));
            let chooser = Chooser::new(spec.keys, spec.records);
            let value = vec![0xa5; spec.value_size];
            let (mut reads, mut updates) = (histogram(), histogram());
            let (mut read_errors, mut update_errors) = (0u64, 0u64);
            let deadline = started + spec.duration;
            loop {
                match spec.operations {
                    Some(total) => {
                        if next.fetch_add(1, Ordering::Relaxed) >= total {
                            break;
                        }
                    }
                    None => {
                        if stop.load(Ordering::Relaxed) || Instant::now() >= deadline {
                            break;
                        }
                    }
                }
                let key = key_of(chooser.next(&mut rng));
                let is_read = rng.gen_bool(spec.workload.read_fraction());
                let t = Instant::now();
                let ok = if is_read {
                    driver.read(&key).await.is_ok()
                } else {
                    driver.update(&key, &value).await.is_ok()
                };
                let us = t.elapsed().as_micros().max(1) as u64;
                if is_read {
                    let _ = reads.record(us);
                    read_errors += u64::from(!ok);
                } else {
                    let _ = updates.record(us);
                    update_errors += u64::from(!ok);
                }
                pb.inc(1);
            }
            Ok::<_, DriverError>((reads, read_errors, updates, update_errors))
        });
    }
    let (mut reads, mut updates) = (histogram(), histogram());
    let (mut read_errors, mut update_errors) = (0, 0);
    while let Some(r) = tasks.join_next().await {
        let (r, re, u, ue) = r??;
        reads.add(r)?;
        updates.add(u)?;
        read_errors += re;
        update_errors += ue;
    }
    let seconds = started.elapsed().as_secs_f64();
    pb.finish_and_clear();
    Ok(BenchResult {
        target: spec.target,
        route: spec.route,
        workload: spec.workload,
        keys: spec.keys,
        concurrency: spec.concurrency,
        value_size: spec.value_size,
        seconds,
        throughput: (reads.len() + updates.len()) as f64 / seconds.max(f64::EPSILON),
        read: stats(&reads, read_errors, seconds),
        update: stats(&updates, update_errors, seconds),
    })
}

impl std::fmt::Display for BenchResult {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let route = match (self.target, self.route) {
            (Target::Ringkv, Route::Cluster) => " routed to replicas",
            (Target::Ringkv, Route::Actor) => " as a client node (actor messages)",
            _ => "",
        };
        writeln!(
            f,
            "{:?}{route} workload {:?} ({:?} keys), {} in flight, {} B values: {:.0} ops/s in {:.1} s",
            self.target,
            self.workload,
            self.keys,
            self.concurrency,
            self.value_size,
            self.throughput,
            self.seconds
        )?;
        for (name, s) in [("read", &self.read), ("update", &self.update)] {
            if let Some(s) = s {
                writeln!(
                    f,
                    "  {name:<6} {:>9} ops {:>9.0}/s  p50 {:>6} us  p99 {:>7} us  p99.9 {:>7} us  errors {}",
                    s.count, s.throughput, s.p50_us, s.p99_us, s.p999_us, s.errors
                )?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zipfian_is_skewed_and_in_range() {
        let c = Chooser::new(KeyChoice::Zipfian, 1000);
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut counts = vec![0u32; 1000];
        for _ in 0..100_000 {
            counts[c.next(&mut rng) as usize] += 1;
        }
        counts.sort_unstable_by(|a, b| b.cmp(a));
        // The hottest 1% of keys take a large share of the load; uniform would give 1%.
        let top: u32 = counts[..10].iter().sum();
        assert!(top > 20_000, "top 10 keys got {top} of 100000");
    }

    #[test]
    fn workload_mixes() {
        assert_eq!(Workload::C.read_fraction(), 1.0);
        assert_eq!(Workload::W.read_fraction(), 0.0);
    }
}
