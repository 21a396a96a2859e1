//! `ringkv load DIR`: stores every regular file under a directory (key = path relative to
//! DIR, value = the file's bytes), then reads each back and checks it byte for byte.
//!
//! Each file is written the way a careful client writes: read the key's context first and
//! write with it, so loading a tree twice replaces values instead of making siblings.

use crate::client::{Client, ClientError};
use indicatif::{ProgressBar, ProgressStyle};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

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

/// Stores and verifies every file under `root` into `bucket`, with `concurrency` requests in
/// flight on one pipelined connection. Files over `max_value_bytes` (the node's
/// `max-value-bytes`) are skipped and reported, never sent: a frame over the node's limit would
/// close the connection.
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

    let started = Instant::now();
    let pb = bar(files.len() as u64, "store", quiet);
    let mut tasks = JoinSet::new();
    for file in files.iter().cloned() {
        let permit = limit.clone().acquire_owned().await?;
        let (client, root, bucket) = (client.clone(), root.to_path_buf(), bucket.to_vec());
        tasks.spawn(async move {
            let result = store_one(&client, &root, &file, &bucket, max_value_bytes).await;
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
        tasks.spawn(async move {
            let result = verify_one(&client, &root, &file, &bucket).await;
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
) -> Result<Stored, ClientError> {
    match tokio::fs::metadata(file).await {
        Ok(m) if m.len() > max_value_bytes => {
            return Ok(Stored::Skipped(format!(
                "{} bytes, over the maximum value of {max_value_bytes} bytes (--max-value-bytes)",
                m.len()
            )))
        }
        Ok(_) => {}
        Err(e) => return Ok(Stored::Skipped(format!("unreadable: {e}"))),
    }
    let value = match tokio::fs::read(file).await {
        Ok(v) => v,
        Err(e) => return Ok(Stored::Skipped(format!("unreadable: {e}"))),
    };
    let key = key_of(root, file);
    let len = value.len() as u64;
    let context = match client.get(bucket, &key).await {
        Ok(f) => f.context,
        Err(e @ ClientError::Server { .. }) => return Ok(Stored::Skipped(e.to_string())),
        Err(e) => return Err(e),
    };
    match client.put(bucket, &key, value, &context).await {
        Ok(()) => Ok(Stored::Bytes(len)),
        Err(e @ ClientError::Server { .. }) => Ok(Stored::Skipped(e.to_string())),
        Err(e) => Err(e),
    }
}

async fn verify_one(
    client: &Client,
    root: &Path,
    file: &Path,
    bucket: &[u8],
) -> Result<(), String> {
    let expected = tokio::fs::read(file)
        .await
        .map_err(|e| format!("unreadable: {e}"))?;
    let got = client
        .get(bucket, &key_of(root, file))
        .await
        .map_err(|e| format!("read back failed: {e}"))?;
    match got.values.as_slice() {
        [v] if *v == expected => Ok(()),
        [v] => Err(format!(
            "read back {} bytes that differ from the file's {}",
            v.len(),
            expected.len()
        )),
        [] => Err("not found on read back".into()),
        many => Err(format!("{} siblings on read back", many.len())),
    }
}
