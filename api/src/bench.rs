//! `ringkv bench`: a closed-loop load generator against a running node.
//!
//! `--concurrency` requests are kept in flight on one pipelined connection; each finished
//! request starts the next. Latencies go into an HDR histogram (microseconds, 3 significant
//! digits). Keys are `key-{n}` with `n` uniform over `--keys`; `get` runs first preload every
//! key once so reads find values.

use crate::client::Client;
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use rand::{Rng, SeedableRng};
use std::sync::Arc;
use std::time::Instant;
use tokio::task::JoinSet;

/// Which operation the load runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum BenchOp {
    /// Blind puts of fresh values (durable writes).
    Put,
    /// Gets of preloaded keys.
    Get,
}

/// Settings of a run.
#[derive(Clone, Debug)]
pub struct BenchSpec {
    /// The operation.
    pub op: BenchOp,
    /// Requests in flight.
    pub concurrency: usize,
    /// Value size, bytes.
    pub value_size: usize,
    /// Distinct keys.
    pub keys: u64,
    /// Requests to run (after the preload).
    pub requests: u64,
    /// Bucket used.
    pub bucket: Vec<u8>,
    /// Seed of the key choice.
    pub seed: u64,
    /// No progress bar.
    pub quiet: bool,
}

/// Results of a run.
#[derive(Debug, serde::Serialize)]
pub struct BenchResult {
    /// `put` or `get`.
    pub op: String,
    /// Requests completed.
    pub requests: u64,
    /// Requests answered with an error.
    pub errors: u64,
    /// Wall time, seconds.
    pub seconds: f64,
    /// Requests per second.
    pub throughput: f64,
    /// Latency percentiles, microseconds.
    pub p50_us: u64,
    /// 99th percentile, microseconds.
    pub p99_us: u64,
    /// 99.9th percentile, microseconds.
    pub p999_us: u64,
    /// Largest latency, microseconds.
    pub max_us: u64,
}

async fn closed_loop(
    client: &Client,
    spec: &BenchSpec,
    total: u64,
    pb: &ProgressBar,
    op: BenchOp,
    sequential_keys: bool,
) -> anyhow::Result<(Histogram<u64>, u64)> {
    let spec = Arc::new(spec.clone());
    let next = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut tasks = JoinSet::new();
    for worker in 0..spec.concurrency as u64 {
        let (client, spec, next, pb) = (client.clone(), spec.clone(), next.clone(), pb.clone());
        tasks.spawn(async move {
            let mut hist =
                Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("valid bounds");
            let mut rng = rand::rngs::StdRng::seed_from_u64(spec.seed ^ worker);
            let mut errors = 0;
            let value = vec![0xabu8; spec.value_size];
            loop {
                let n = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if n >= total {
                    break;
                }
                let k = if sequential_keys {
                    n
                } else {
                    rng.gen_range(0..spec.keys)
                };
                let key = format!("key-{k}");
                let t = Instant::now();
                let ok = match op {
                    BenchOp::Put => client
                        .put(&spec.bucket, key.as_bytes(), value.clone(), &[])
                        .await
                        .is_ok(),
                    BenchOp::Get => client.get(&spec.bucket, key.as_bytes()).await.is_ok(),
                };
                let _ = hist.record(t.elapsed().as_micros().max(1) as u64);
                if !ok {
                    errors += 1;
                }
                pb.inc(1);
            }
            (hist, errors)
        });
    }
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let mut errors = 0;
    while let Some(r) = tasks.join_next().await {
        let (h, e) = r?;
        hist.add(h)?;
        errors += e;
    }
    Ok((hist, errors))
}

/// Runs the load described by `spec` against `client`.
///
/// # Errors
/// Connection failures or task panics.
pub async fn run(client: &Client, spec: &BenchSpec) -> anyhow::Result<BenchResult> {
    let style = ProgressStyle::with_template(
        "{msg:>8} [{elapsed_precise}] {wide_bar} {pos}/{len} ({per_sec})",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar());
    let bar = |len: u64, msg: &'static str| {
        if spec.quiet {
            ProgressBar::hidden()
        } else {
            ProgressBar::new(len)
                .with_style(style.clone())
                .with_message(msg)
        }
    };
    if spec.op == BenchOp::Get {
        let pb = bar(spec.keys, "preload");
        closed_loop(client, spec, spec.keys, &pb, BenchOp::Put, true).await?;
        pb.finish_and_clear();
    }
    let pb = bar(spec.requests, "run");
    let started = Instant::now();
    let (hist, errors) = closed_loop(client, spec, spec.requests, &pb, spec.op, false).await?;
    let seconds = started.elapsed().as_secs_f64();
    pb.finish_and_clear();
    Ok(BenchResult {
        op: format!("{:?}", spec.op).to_lowercase(),
        requests: hist.len(),
        errors,
        seconds,
        throughput: hist.len() as f64 / seconds.max(f64::EPSILON),
        p50_us: hist.value_at_quantile(0.5),
        p99_us: hist.value_at_quantile(0.99),
        p999_us: hist.value_at_quantile(0.999),
        max_us: hist.max(),
    })
}

impl std::fmt::Display for BenchResult {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:<4} {:>9} requests in {:>6.2} s: {:>9.0} req/s  p50 {:>6} us  p99 {:>6} us  p99.9 {:>6} us  max {:>7} us  errors {}",
            self.op, self.requests, self.seconds, self.throughput, self.p50_us, self.p99_us, self.p999_us, self.max_us, self.errors
        )
    }
}
