//! Helpers for large values over the raw protocol (PROTOCOL.md, "Large values"): streamed
//! puts and ranged reads with their windows, deterministic incompressible data made piece by
//! piece, and a sampler of processes' anonymous memory. Used by `tests/large_values.rs` and
//! the `large_values` benchmark example.

use futures::stream::{FuturesOrdered, FuturesUnordered, StreamExt};
use ringkv_api::protocol::{RequestFrame, ResponseFrame};
use ringkv_api::Client;
use serde_bytes::ByteBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// A stream of deterministic bytes that do not compress (xorshift64*), made piece by piece so
/// that no test ever holds a whole large value.
pub struct Noise(pub u64);

impl Noise {
    /// The next `len` bytes.
    pub fn fill(&mut self, len: usize) -> Vec<u8> {
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

/// `a`, checked to be a success.
pub fn ok(a: ResponseFrame, what: &str) -> ResponseFrame {
    assert!(a.ok, "{what}: {:?} {:?}", a.code, a.message);
    a
}

/// Streams `size` bytes of `Noise(seed)` to `(bucket, key)` through `client` with the
/// protocol's put_begin / put_chunk / put_commit, `window` chunk frames in flight; returns the
/// CRC-32 of the bytes sent. Stops after `stop_after` chunk frames without committing, if
/// given.
pub async fn stream_put(
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
pub async fn stream_get(client: &Client, bucket: &[u8], key: &[u8]) -> (u64, u32, u32) {
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
pub fn rss_anon(pid: u32) -> u64 {
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
pub struct Peaks {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<Vec<u64>>>,
}

impl Peaks {
    /// Starts sampling.
    pub fn start(pids: Vec<u32>) -> Peaks {
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

    /// Stops and returns each process's peak, bytes.
    pub fn finish(mut self) -> Vec<u64> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap()
    }
}

/// Bytes in MiB.
pub fn mib(b: u64) -> f64 {
    b as f64 / (1 << 20) as f64
}
