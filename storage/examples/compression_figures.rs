//! Measures the per-value codecs on sample corpora, one value per file, single thread: the
//! stored/original ratio (raw fallback included), compression and decompression throughput
//! (MB/s of original bytes) for zstd levels 1, 3, 6 and LZ4, and the share stored raw.
//!
//! ```text
//! cargo run --release -p ringkv-storage --example compression_figures [DIR] [MAX_MB]
//! ```
//!
//! `DIR` defaults to `/usr/share/doc` (files over 4 MiB, the default `max-value-bytes`, are
//! skipped; at most `MAX_MB`, default 256, MB are read). The second corpus is 64 KiB values of
//! random bytes (32 MiB), which must be stored raw at little cost.

use ringkv_storage::codec::{compress_level, decompress};
use ringkv_storage::Codec;
use std::path::{Path, PathBuf};
use std::time::Instant;

const MAX_VALUE: usize = 4 << 20;

fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut entries: Vec<_> = entries.flatten().collect();
    entries.sort_by_key(|e| e.path());
    for e in entries {
        let Ok(kind) = e.file_type() else { continue };
        if kind.is_dir() {
            files(&e.path(), out);
        } else if kind.is_file() {
            out.push(e.path());
        }
    }
}

fn measure(name: &str, values: &[Vec<u8>]) {
    let total: usize = values.iter().map(Vec::len).sum();
    let mb = total as f64 / 1e6;
    println!(
        "{name}: {} values, {:.1} MB\n{:<8} {:>7} {:>9} {:>14} {:>16}",
        values.len(),
        mb,
        "codec",
        "ratio",
        "raw %",
        "compress MB/s",
        "decompress MB/s"
    );
    for (label, codec, level) in [
        ("zstd-1", Codec::Zstd, 1),
        ("zstd-3", Codec::Zstd, 3),
        ("zstd-6", Codec::Zstd, 6),
        ("lz4", Codec::Lz4, 0),
    ] {
        let start = Instant::now();
        let stored: Vec<(Codec, Vec<u8>)> = values
            .iter()
            .map(|v| compress_level(codec, level, v.clone()))
            .collect();
        let c_secs = start.elapsed().as_secs_f64();
        let start = Instant::now();
        for ((c, s), v) in stored.iter().zip(values) {
            let back = decompress(*c, s, MAX_VALUE).expect("decodes");
            assert_eq!(back.len(), v.len());
        }
        let d_secs = start.elapsed().as_secs_f64();
        let out: usize = stored.iter().map(|(_, s)| s.len()).sum();
        let raw = stored.iter().filter(|(c, _)| c.is_none()).count();
        println!(
            "{label:<8} {:>7.3} {:>9.1} {:>14.0} {:>16.0}",
            out as f64 / total as f64,
            100.0 * raw as f64 / values.len() as f64,
            mb / c_secs,
            mb / d_secs
        );
    }
    println!();
}

fn main() {
    let mut args = std::env::args().skip(1);
    let dir = PathBuf::from(args.next().unwrap_or_else(|| "/usr/share/doc".into()));
    let max_mb: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(256);
    let mut paths = Vec::new();
    files(&dir, &mut paths);
    let (mut docs, mut plain) = (Vec::new(), Vec::new());
    let mut bytes = 0;
    for p in paths {
        if let Ok(v) = std::fs::read(&p) {
            if !v.is_empty() && v.len() <= MAX_VALUE && bytes + v.len() <= max_mb << 20 {
                bytes += v.len();
                let packed = p.extension().is_some_and(|e| {
                    ["gz", "xz", "bz2", "zst", "png", "jpg", "gif", "zip"]
                        .contains(&e.to_string_lossy().as_ref())
                });
                if !packed {
                    plain.push(v.clone());
                }
                docs.push(v);
            }
        }
    }
    measure(&dir.display().to_string(), &docs);
    measure("  of which not .gz/.xz/.bz2/.zst/images", &plain);
    let random: Vec<Vec<u8>> = (0..512)
        .map(|_| (0..64 * 1024).map(|_| rand::random::<u8>()).collect())
        .collect();
    measure("random 64 KiB values", &random);
}
