//! Benchmark of large values (issue 13): a value of `--bytes` (default 1 GiB) streamed into a
//! 1-node and a 3-node cluster of release `ringkv` processes and read back, with
//!
//! * put and get throughput (MB/s of the value),
//! * the peak `RssAnon` of every node and of this client,
//! * the p50/p99 latency of small writes (100 B, n=3 w=3, one at a time) sent to the node that
//!   receives the upload, first alone for `--baseline-secs`, then while the value streams in
//!   (the small writes share the node pair's cluster connection with the chunks).
//!
//! ```text
//! cargo build --release -p ringkv-api
//! cargo run --release -p ringkv-tests --example large_values -- [--bytes N] [--nodes 1|3]
//! ```

use hdrhistogram::Histogram;
use ringkv_api::Client;
use ringkv_tests::large::{mib, ok, stream_get, stream_put, Peaks};
use ringkv_tests::{quorum, Cluster};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

/// Small writes one at a time until `stop`; their latencies in µs.
async fn small_writes(client: Client, stop: Arc<AtomicBool>, tag: &str) -> Histogram<u64> {
    let mut h = Histogram::<u64>::new(3).expect("histogram");
    let opts = quorum(3, 2, 3);
    let mut i = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let key = format!("{tag}-{}", i % 1000);
        let started = Instant::now();
        client
            .put_with(b"small", key.as_bytes(), vec![7u8; 100], &[], &opts)
            .await
            .expect("small write");
        h.record(started.elapsed().as_micros() as u64).ok();
        i += 1;
    }
    h
}

fn line(h: &Histogram<u64>) -> String {
    format!(
        "{} writes, p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        h.len(),
        h.value_at_quantile(0.5) as f64 / 1000.0,
        h.value_at_quantile(0.99) as f64 / 1000.0,
        h.max() as f64 / 1000.0
    )
}

fn run(nodes: usize, size: u64, baseline: Duration) {
    let cluster = Cluster::start(nodes, &["--partitions", "16"]);
    let addrs = cluster.addrs();
    let mut pids: Vec<u32> = cluster.nodes.iter().map(|n| n.pid()).collect();
    pids.push(std::process::id());
    let rt = ringkv_tests::runtime();
    rt.block_on(async {
        let small = Client::connect(addrs[0]).await.expect("connect");
        let stop = Arc::new(AtomicBool::new(false));
        let alone = tokio::spawn(small_writes(small.clone(), stop.clone(), "alone"));
        tokio::time::sleep(baseline).await;
        stop.store(true, Ordering::Relaxed);
        let alone = alone.await.expect("baseline");

        let peaks = Peaks::start(pids.clone());
        let stop = Arc::new(AtomicBool::new(false));
        let during = tokio::spawn(small_writes(small, stop.clone(), "during"));
        let writer = Client::connect(addrs[0]).await.expect("connect");
        let started = Instant::now();
        let (crc, commit) = stream_put(&writer, b"big", b"value", size, 1, None).await;
        let commit = ok(commit.expect("committed"), "put_commit");
        let put_s = started.elapsed().as_secs_f64();
        stop.store(true, Ordering::Relaxed);
        let during = during.await.expect("during");
        assert_eq!(commit.crc32, Some(crc));
        let reader = Client::connect(addrs[nodes.min(2) - 1])
            .await
            .expect("connect");
        let started = Instant::now();
        let (len, reported, received) = stream_get(&reader, b"big", b"value").await;
        let get_s = started.elapsed().as_secs_f64();
        let peaks = peaks.finish();
        assert_eq!((len, reported, received), (size, crc, crc));
        println!(
            "== {nodes} node(s), {:.0} MiB value (n=3 w=2; CRC-32 checked end to end)",
            mib(size)
        );
        println!(
            "put {:.1} MB/s ({put_s:.1} s), get {:.1} MB/s ({get_s:.1} s)",
            size as f64 / 1e6 / put_s,
            size as f64 / 1e6 / get_s
        );
        let names: Vec<String> = (1..=nodes)
            .map(|i| format!("n{i}"))
            .chain(["client".into()])
            .collect();
        println!(
            "peak RssAnon: {}",
            names
                .iter()
                .zip(&peaks)
                .map(|(n, p)| format!("{n} {:.0} MiB", mib(*p)))
                .collect::<Vec<_>>()
                .join(", ")
        );
        println!("small writes alone:            {}", line(&alone));
        println!("small writes during the put:   {}", line(&during));
    });
}

fn main() {
    let size: u64 = arg("--bytes")
        .and_then(|s| s.parse().ok())
        .unwrap_or(1 << 30);
    let baseline = Duration::from_secs(
        arg("--baseline-secs")
            .and_then(|s| s.parse().ok())
            .unwrap_or(5),
    );
    let setups: Vec<usize> = match arg("--nodes") {
        Some(n) => vec![n.parse().expect("--nodes 1 or 3")],
        None => vec![1, 3],
    };
    for nodes in setups {
        run(nodes, size, baseline);
    }
}
