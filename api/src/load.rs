//! `ringkv load DIR`: stores every regular file under a directory (key = path relative to
//! DIR, value = the file's bytes), then reads each back and checks it byte for byte.
//!
//! Each file is written the way a careful client writes: read the key's context first (a
//! `get` with `meta`, which leaves large values on the node) and write with it, so loading a
//! tree twice replaces values instead of making siblings. A file of at most
//! [`SINGLE_FRAME_BYTES`] goes in one `put`; a longer one is streamed
//! ([`Client::put_stream`]) and read back by ranges ([`Client::get_stream`]), at most
//! [`LARGE_IN_FLIGHT`] of them at a time, so memory stays bounded whatever the file sizes.

use crate::client::{
    Client, ClientError, GetStreamOptions, PutStreamOptions, ValueReader, SINGLE_FRAME_BYTES,
};
use indicatif::{ProgressBar, ProgressStyle};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

/// Files over [`SINGLE_FRAME_BYTES`] stored or verified at the same time (each holds a
/// streamed put's or read's window of chunks; a node allows 4 uploads per connection).
pub const LARGE_IN_FLIGHT: usize = 2;

/// Outcome of a load.
#[derive(Debug, Default)]
pub struct LoadReport {
    /// Files stored.
    pub stored: u64,
    /// Bytes stored.
    pub bytes: u64,
    /// Files not stored, with the reason (key or value over the limits, unreadable file).
    pub skipped: Vec<(PathBuf, String)>,
    /// Files whose read-back differed or failed, with what was wrong.
    pub mismatched: Vec<(PathBuf, String)>,
    /// Time to store.
    pub store_time: Duration,
    /// Time to read back and compare.
    pub verify_time: Duration,
}

fn walk(root: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let entry = entry?;
            let kind = entry.file_type()?;
            if kind.is_dir() {
                dirs.push(entry.path());
            } else if kind.is_file() {
                files.push(entry.path());
            }
        }
    }
    files.sort();
    Ok(files)
}

fn key_of(root: &Path, file: &Path) -> Vec<u8> {
    use std::os::unix::ffi::OsStrExt;
    file.strip_prefix(root)
        .unwrap_or(file)
        .as_os_str()
        .as_bytes()
        .to_vec()
}

fn bar(len: u64, what: &str, quiet: bool) -> ProgressBar {
    if quiet {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(len);
    pb.set_style(
        ProgressStyle::with_template(&format!(
            "{what:>7} [{{elapsed_precise}}] {{wide_bar}} {{pos}}/{{len}} files ({{per_sec}})"
        ))
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    pb
}

/// Stores and verifies every file under `root` into `bucket`, with `concurrency` files in
/// flight on one pipelined connection (at most [`LARGE_IN_FLIGHT`] of them over
/// [`SINGLE_FRAME_BYTES`], which are streamed). Files over `max_value_bytes` (the node's
/// `max-value-bytes`) are skipped and reported, never sent.
///
/// # Errors
/// If `root` cannot be listed or the connection fails; per-file problems are in the report.
pub async fn load(
    client: &Client,
    root: &Path,
    bucket: &[u8],
    concurrency: usize,
    max_value_bytes: u64,
    quiet: bool,
) -> anyhow::Result<LoadReport> {
    let files = walk(root)?;
    let mut report = LoadReport::default();
    let limit = Arc::new(Semaphore::new(concurrency.max(1)));
    let large = Arc::new(Semaphore::new(LARGE_IN_FLIGHT));

    let started = Instant::now();
    let pb = bar(files.len() as u64, "store", quiet);
    let mut tasks = JoinSet::new();
    for file in files.iter().cloned() {
        let permit = limit.clone().acquire_owned().await?;
        let (client, root, bucket) = (client.clone(), root.to_path_buf(), bucket.to_vec());
        let large = large.clone();
        tasks.spawn(async move {
            let result = store_one(&client, &root, &file, &bucket, max_value_bytes, &large).await;
            drop(permit);
            (file, result)
        });
        while let Some(done) = tasks.try_join_next() {
            tally_store(&mut report, done?, &pb)?;
        }
    }
    while let Some(done) = tasks.join_next().await {
        tally_store(&mut report, done?, &pb)?;
    }
    pb.finish_and_clear();
    report.store_time = started.elapsed();

    let skipped: std::collections::HashSet<PathBuf> =
        report.skipped.iter().map(|(p, _)| p.clone()).collect();
    let to_verify: Vec<PathBuf> = files.into_iter().filter(|f| !skipped.contains(f)).collect();
    let started = Instant::now();
    let pb = bar(to_verify.len() as u64, "verify", quiet);
    let mut tasks = JoinSet::new();
    for file in to_verify {
        let permit = limit.clone().acquire_owned().await?;
        let (client, root, bucket) = (client.clone(), root.to_path_buf(), bucket.to_vec());
        let large = large.clone();
        tasks.spawn(async move {
            let result = verify_one(&client, &root, &file, &bucket, &large).await;
            drop(permit);
            (file, result)
        });
        while let Some(done) = tasks.try_join_next() {
            tally_verify(&mut report, done?, &pb);
        }
    }
    while let Some(done) = tasks.join_next().await {
        tally_verify(&mut report, done?, &pb);
    }
    pb.finish_and_clear();
    report.verify_time = started.elapsed();
    Ok(report)
}

/// Per-file outcome: stored bytes, or skipped (with why), or a connection failure.
enum Stored {
    Bytes(u64),
    Skipped(String),
}

fn tally_store(
    report: &mut LoadReport,
    (file, result): (PathBuf, Result<Stored, ClientError>),
    pb: &ProgressBar,
) -> anyhow::Result<()> {
    pb.inc(1);
    match result {
        Ok(Stored::Bytes(n)) => {
            report.stored += 1;
            report.bytes += n;
        }
        Ok(Stored::Skipped(why)) => report.skipped.push((file, why)),
        Err(e) => anyhow::bail!("storing {}: {e}", file.display()),
    }
    Ok(())
}

fn tally_verify(
    report: &mut LoadReport,
    (file, result): (PathBuf, Result<(), String>),
    pb: &ProgressBar,
) {
    pb.inc(1);
    if let Err(why) = result {
        report.mismatched.push((file, why));
    }
}

async fn store_one(
    client: &Client,
    root: &Path,
    file: &Path,
    bucket: &[u8],
    max_value_bytes: u64,
    large: &Semaphore,
) -> Result<Stored, ClientError> {
    let len = match tokio::fs::metadata(file).await {
        Ok(m) if m.len() > max_value_bytes => {
            return Ok(Stored::Skipped(format!(
                "{} bytes, over the maximum value of {max_value_bytes} bytes (--max-value-bytes)",
                m.len()
            )))
        }
        Ok(m) => m.len(),
        Err(e) => return Ok(Stored::Skipped(format!("unreadable: {e}"))),
    };
    let key = key_of(root, file);
    let _permit = if len > SINGLE_FRAME_BYTES {
        Some(large.acquire().await.map_err(|_| ClientError::Closed)?)
    } else {
        None
    };
    let context = match client.get_meta(bucket, &key, &Default::default()).await {
        Ok(f) => f.context,
        Err(e @ ClientError::Server { .. }) => return Ok(Stored::Skipped(e.to_string())),
        Err(e) => return Err(e),
    };
    let written = if len > SINGLE_FRAME_BYTES {
        let f = match tokio::fs::File::open(file).await {
            Ok(f) => f,
            Err(e) => return Ok(Stored::Skipped(format!("unreadable: {e}"))),
        };
        let opts = PutStreamOptions {
            context,
            size: Some(len),
            ..Default::default()
        };
        client
            .put_stream(bucket, &key, f, &opts)
            .await
            .map(|put| put.size)
    } else {
        let value = match tokio::fs::read(file).await {
            Ok(v) => v,
            Err(e) => return Ok(Stored::Skipped(format!("unreadable: {e}"))),
        };
        let len = value.len() as u64;
        client
            .put(bucket, &key, value, &context)
            .await
            .map(|()| len)
    };
    match written {
        Ok(len) => Ok(Stored::Bytes(len)),
        Err(e @ (ClientError::Server { .. } | ClientError::Source(_))) => {
            Ok(Stored::Skipped(e.to_string()))
        }
        Err(e) => Err(e),
    }
}

async fn verify_one(
    client: &Client,
    root: &Path,
    file: &Path,
    bucket: &[u8],
    large: &Semaphore,
) -> Result<(), String> {
    let expected = tokio::fs::File::open(file)
        .await
        .map_err(|e| format!("unreadable: {e}"))?;
    let len = expected
        .metadata()
        .await
        .map_err(|e| format!("unreadable: {e}"))?
        .len();
    let _permit = if len > SINGLE_FRAME_BYTES {
        Some(large.acquire().await.map_err(|e| e.to_string())?)
    } else {
        None
    };
    let got = client
        .get_stream(bucket, &key_of(root, file), &GetStreamOptions::default())
        .await;
    match got {
        Ok(reader) => same_bytes(reader, expected, len).await,
        Err(ClientError::NotFound { .. }) => Err("not found on read back".into()),
        Err(ClientError::Siblings { versions, .. }) => {
            Err(format!("{} siblings on read back", versions.len()))
        }
        Err(e) => Err(format!("read back failed: {e}")),
    }
}

/// Compares a value read back with the file it came from, block by block.
async fn same_bytes(
    mut got: ValueReader,
    mut file: tokio::fs::File,
    file_len: u64,
) -> Result<(), String> {
    if got.size() != file_len {
        return Err(format!(
            "read back {} bytes, the file has {file_len}",
            got.size()
        ));
    }
    const BLOCK: usize = 256 << 10;
    let (mut a, mut b) = (vec![0u8; BLOCK], vec![0u8; BLOCK]);
    let mut at = 0u64;
    loop {
        let n = fill(&mut got, &mut a)
            .await
            .map_err(|e| format!("read back failed at byte {at}: {e}"))?;
        let m = fill(&mut file, &mut b)
            .await
            .map_err(|e| format!("unreadable at byte {at}: {e}"))?;
        if a[..n] != b[..m] {
            return Err(format!(
                "read back {file_len} bytes that differ from the file's from byte {at} on"
            ));
        }
        if n == 0 {
            return Ok(());
        }
        at += n as u64;
    }
}

/// Reads until `buf` is full or the end of `r`.
async fn fill<R: AsyncRead + Unpin>(r: &mut R, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]).await? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}
