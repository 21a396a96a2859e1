//! Large values on clusters of real `ringkv` processes (issue 13): a 1 GiB value streamed
//! through 3 nodes and read back with CRC-32s compared end to end while every node's
//! anonymous memory is sampled; an upload whose receiving node is killed (kill -9) never
//! becomes visible and its chunks are collected; a wiped replica gets its large values back
//! from anti-entropy and serves them alone.
//!
//! The size of the big round trip is `RINGKV_LARGE_BYTES` (default 1 GiB).

use futures::stream::{FuturesOrdered, FuturesUnordered, StreamExt};
use ringkv_api::protocol::{RequestFrame, ResponseFrame};
use ringkv_api::Client;
use ringkv_tests::{quorum as q, runtime as rt, wait_until, Cluster};
use serde_bytes::ByteBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A stream of deterministic bytes that do not compress (xorshift64*), made piece by piece so
/// that no test ever holds a whole large value.
struct Noise(u64);

impl Noise {
    fn fill(&mut self, len: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(len + 8);
        while out.len() < len {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            out.extend_from_slice(&self.0.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
        }
        out.truncate(len);
        out
    }
}

fn ok(a: ResponseFrame, what: &str) -> ResponseFrame {
    assert!(a.ok, "{what}: {:?} {:?}", a.code, a.message);
    a
}

/// Streams `size` bytes of `Noise(seed)` to `(bucket, key)` through `client` with the
/// protocol's put_begin / put_chunk / put_commit, `window` chunk frames in flight; returns the
/// CRC-32 of the bytes sent. Stops after `stop_after` chunk frames without committing, if
/// given.
async fn stream_put(
    client: &Client,
    bucket: &[u8],
    key: &[u8],
    size: u64,
    seed: u64,
    stop_after: Option<u64>,
) -> (u32, Option<ResponseFrame>) {
    let begin = ok(
        client
            .request(RequestFrame {
                op: "put_begin".into(),
                bucket: Some(ByteBuf::from(bucket)),
                key: Some(ByteBuf::from(key)),
                size: Some(size),
                timeout_ms: Some(30_000),
                ..Default::default()
            })
            .await
            .unwrap(),
        "put_begin",
    );
    let (upload, chunk, window) = (
        begin.upload.unwrap(),
        begin.chunk_bytes.unwrap() as usize,
        begin.window.unwrap() as usize,
    );
    let mut noise = Noise(seed);
    let mut crc = crc32fast::Hasher::new();
    let (mut sent, mut seq) = (0u64, 0u64);
    let mut in_flight = FuturesUnordered::new();
    while sent < size {
        if stop_after == Some(seq) {
            break;
        }
        let piece = noise.fill(chunk.min((size - sent) as usize));
        crc.update(&piece);
        sent += piece.len() as u64;
        let frame = RequestFrame {
            op: "put_chunk".into(),
            upload: Some(upload),
            seq: Some(seq),
            data: Some(ByteBuf::from(piece)),
            ..Default::default()
        };
        seq += 1;
        in_flight.push(client.request(frame));
        if in_flight.len() >= window {
            ok(in_flight.next().await.unwrap().unwrap(), "put_chunk");
        }
    }
    while let Some(a) = in_flight.next().await {
        ok(a.unwrap(), "put_chunk");
    }
    let crc = crc.finalize();
    if stop_after.is_some() {
        return (crc, None);
    }
    let commit = client
        .request(RequestFrame {
            op: "put_commit".into(),
            upload: Some(upload),
            seq: Some(seq),
            crc32: Some(crc as u64),
            timeout_ms: Some(60_000),
            ..Default::default()
        })
        .await
        .unwrap();
    (crc, Some(commit))
}

/// Reads the only version of `(bucket, key)` by `get_range`s of 4 MiB, two in flight; returns
/// its length, the CRC-32 the node reports and the CRC-32 of the bytes received.
async fn stream_get(client: &Client, bucket: &[u8], key: &[u8]) -> (u64, u32, u32) {
    let meta = ok(
        client
            .request(RequestFrame {
                op: "get".into(),
                bucket: Some(ByteBuf::from(bucket)),
                key: Some(ByteBuf::from(key)),
                meta: Some(true),
                ..Default::default()
            })
            .await
            .unwrap(),
        "get meta",
    );
    let m = meta.meta.unwrap();
    assert_eq!(m.len(), 1, "one version: {m:?}");
    let (size, version, reported) = (m[0].size, m[0].version.clone(), m[0].crc32.unwrap());
    const RANGE: u64 = 4 << 20;
    let mut crc = crc32fast::Hasher::new();
    let mut offsets = (0..size.div_ceil(RANGE)).map(|i| i * RANGE);
    let mut in_flight = FuturesOrdered::new();
    let ask = |offset: u64| {
        client.request(RequestFrame {
            op: "get_range".into(),
            bucket: Some(ByteBuf::from(bucket)),
            key: Some(ByteBuf::from(key)),
            version: version.clone(),
            offset: Some(offset),
            length: Some(RANGE),
            timeout_ms: Some(30_000),
            ..Default::default()
        })
    };
    for o in offsets.by_ref().take(2) {
        in_flight.push_back(ask(o));
    }
    let mut got = 0u64;
    while let Some(a) = in_flight.next().await {
        let a = ok(a.unwrap(), "get_range");
        assert_eq!(a.offset, Some(got));
        let v = a.value.unwrap();
        got += v.len() as u64;
        crc.update(&v);
        if let Some(o) = offsets.next() {
            in_flight.push_back(ask(o));
        }
    }
    assert_eq!(got, size);
    (size, reported, crc.finalize())
}

/// `RssAnon` of process `pid` in bytes (0 if it cannot be read).
fn rss_anon(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("RssAnon:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

/// Samples the peak `RssAnon` of `pids` every 50 ms until dropped.
struct Peaks {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<Vec<u64>>>,
}

impl Peaks {
    fn start(pids: Vec<u32>) -> Peaks {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut peaks = vec![0u64; pids.len()];
            while !flag.load(Ordering::Relaxed) {
                for (peak, pid) in peaks.iter_mut().zip(&pids) {
                    *peak = (*peak).max(rss_anon(*pid));
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            peaks
        });
        Peaks {
            stop,
            thread: Some(thread),
        }
    }

    fn finish(mut self) -> Vec<u64> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap()
    }
}

fn mib(b: u64) -> f64 {
    b as f64 / (1 << 20) as f64
}

/// Records of all kinds held by node `i` (keys of its storage, tombstones included).
fn stored_keys(cluster: &Cluster, i: usize) -> Option<u64> {
    cluster
        .try_status(i, Duration::from_secs(5))
        .and_then(|s| s["storage"]["keys"].as_u64())
}

#[test]
fn a_1_gib_value_round_trips_through_3_nodes_in_bounded_memory() {
    let size: u64 = std::env::var("RINGKV_LARGE_BYTES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1 << 30);
    let cluster = Cluster::start(3, &["--partitions", "8"]);
    let pids: Vec<u32> = cluster.nodes.iter().map(|n| n.pid()).collect();
    let mut watched = pids.clone();
    watched.push(std::process::id());
    let peaks = Peaks::start(watched);
    let addrs = cluster.addrs();
    let rt = rt();
    let (put_s, sent_crc, get_s, got) = rt.block_on(async {
        let writer = Client::connect(addrs[0]).await.unwrap();
        let started = Instant::now();
        let (sent_crc, commit) = stream_put(&writer, b"big", b"one", size, 42, None).await;
        let commit = ok(commit.unwrap(), "put_commit");
        let put_s = started.elapsed().as_secs_f64();
        assert_eq!(commit.size, Some(size));
        assert_eq!(commit.crc32, Some(sent_crc));
        // Read it back through another node.
        let reader = Client::connect(addrs[1]).await.unwrap();
        let started = Instant::now();
        let got = stream_get(&reader, b"big", b"one").await;
        (put_s, sent_crc, started.elapsed().as_secs_f64(), got)
    });
    let peaks = peaks.finish();
    let (len, reported, received) = got;
    assert_eq!(len, size);
    assert_eq!(reported, sent_crc, "the node's CRC-32 of the value");
    assert_eq!(received, sent_crc, "the CRC-32 of the bytes read back");
    println!(
        "large value of {:.0} MiB through 3 nodes (n=3, w=2): put {:.1} MB/s, get {:.1} MB/s; peak RssAnon n1 {:.0} MiB, n2 {:.0} MiB, n3 {:.0} MiB, client {:.0} MiB",
        mib(size),
        size as f64 / 1e6 / put_s,
        size as f64 / 1e6 / get_s,
        mib(peaks[0]),
        mib(peaks[1]),
        mib(peaks[2]),
        mib(peaks[3]),
    );
    for (i, peak) in peaks[..3].iter().enumerate() {
        assert!(
            *peak < 512 << 20,
            "n{} peaked at {:.0} MiB of anonymous memory",
            i + 1,
            mib(*peak)
        );
    }
}

/// The node receiving an upload is killed (kill -9) halfway: the value never appears on the
/// others, and once they have it back, every chunk the upload wrote is deleted (the grace is
/// 2 s here) and the tombstones purged, so the nodes hold nothing at all.
#[test]
fn a_half_written_upload_never_appears_and_its_chunks_are_reclaimed() {
    let mut cluster = Cluster::start(
        3,
        &[
            "--partitions",
            "8",
            "--chunk-bytes",
            "262144",
            "--chunk-grace-ms",
            "2000",
            "--repair-interval-ms",
            "300",
            "--tombstone-grace-ms",
            "0",
        ],
    );
    let addrs = cluster.addrs();
    let rt = rt();
    rt.block_on(async {
        let client = Client::connect(addrs[2]).await.unwrap();
        // 12 of 16 chunk frames, all answered, then the node dies.
        stream_put(&client, b"b", b"half", 4 << 20, 7, Some(12)).await;
    });
    cluster.nodes[2].kill9();
    let held = stored_keys(&cluster, 0).unwrap() + stored_keys(&cluster, 1).unwrap();
    assert!(held > 0, "the surviving nodes hold the upload's chunks");
    let absent = rt.block_on(async {
        let client = Client::connect(addrs[0]).await.unwrap();
        client.get_with(b"b", b"half", &q(3, 1, 2)).await.unwrap()
    });
    assert!(absent.values.is_empty(), "a half upload is never visible");
    cluster.nodes[2].restart();
    wait_until(
        "every node to hold no record of the half upload",
        Duration::from_secs(60),
        || {
            (0..3)
                .all(|i| stored_keys(&cluster, i) == Some(0))
                .then_some(())
        },
    );
    let gone = rt.block_on(async {
        let client = Client::connect(addrs[1]).await.unwrap();
        client
            .request(RequestFrame {
                op: "get_range".into(),
                bucket: Some(ByteBuf::from(&b"b"[..])),
                key: Some(ByteBuf::from(&b"half"[..])),
                ..Default::default()
            })
            .await
            .unwrap()
    });
    assert_eq!(gone.code.as_deref(), Some("not_found"));
}

/// A replica whose disk was replaced gets the chunks of large values back from anti-entropy:
/// with the two other nodes killed it alone serves them whole.
#[test]
fn a_wiped_replica_gets_its_large_values_back_from_anti_entropy() {
    let mut cluster = Cluster::start(
        3,
        &[
            "--partitions",
            "8",
            "--chunk-bytes",
            "262144",
            "--repair-interval-ms",
            "300",
        ],
    );
    let addrs = cluster.addrs();
    let rt = rt();
    let values: Vec<Vec<u8>> = (0..3).map(|i| Noise(100 + i).fill(3 << 20)).collect();
    rt.block_on(async {
        let client = Client::connect(addrs[0]).await.unwrap();
        for (i, v) in values.iter().enumerate() {
            client
                .put_with(
                    b"b",
                    format!("big{i}").as_bytes(),
                    v.clone(),
                    &[],
                    &q(3, 2, 3),
                )
                .await
                .unwrap();
        }
    });
    let full = stored_keys(&cluster, 0).unwrap();
    assert!(
        full >= 3 * 13,
        "3 keys with a head and 12 chunks each: {full}"
    );
    cluster.nodes[1].wipe();
    cluster.nodes[1].restart();
    wait_until(
        "the wiped replica to hold every record again",
        Duration::from_secs(60),
        || (stored_keys(&cluster, 1) == Some(full)).then_some(()),
    );
    cluster.nodes[0].kill9();
    cluster.nodes[2].kill9();
    let addr = cluster.nodes[1].addr;
    rt.block_on(async {
        let client = Client::connect(addr).await.unwrap();
        for (i, v) in values.iter().enumerate() {
            let got = client
                .get_with(b"b", format!("big{i}").as_bytes(), &q(3, 1, 1))
                .await
                .unwrap();
            assert!(
                got.values == vec![v.clone()],
                "big{i} read back whole from n2 alone"
            );
        }
    });
}
