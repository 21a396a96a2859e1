//! `ringkv load DIR`.

use super::{connect, AddrArg};
use clap::Args;
use std::path::PathBuf;
use std::process::ExitCode;

/// `ringkv load` arguments.
#[derive(Args)]
pub struct LoadArgs {
    #[command(flatten)]
    pub addr: AddrArg,
    /// Directory to load.
    pub dir: PathBuf,
    /// Bucket to store into.
    #[arg(long, default_value = "files")]
    pub bucket: String,
    /// Requests in flight.
    #[arg(long, default_value_t = 32)]
    pub concurrency: usize,
    /// Skip files larger than this, bytes (set it to the node's max-value-bytes). Files over
    /// 4 MiB are streamed.
    #[arg(long, default_value_t = 1 << 30)]
    pub max_value_bytes: u64,
    /// No progress bars.
    #[arg(long)]
    pub quiet: bool,
}

/// Stores every file under the directory and verifies each.
pub async fn load(args: LoadArgs) -> anyhow::Result<ExitCode> {
    let LoadArgs {
        addr,
        dir,
        bucket,
        concurrency,
        max_value_bytes,
        quiet,
    } = args;
    let client = connect(&addr).await?;
    let r = ringkv_api::load::load(
        &client,
        &dir,
        bucket.as_bytes(),
        concurrency,
        max_value_bytes,
        quiet,
    )
    .await?;
    let mb = r.bytes as f64 / 1e6;
    let (st, vt) = (r.store_time.as_secs_f64(), r.verify_time.as_secs_f64());
    println!(
        "stored   {} files, {:.1} MB in {:.2} s: {:.0} files/s, {:.1} MB/s",
        r.stored,
        mb,
        st,
        r.stored as f64 / st,
        mb / st
    );
    println!(
        "verified {} files in {:.2} s: {:.0} files/s, {:.1} MB/s; {} mismatched",
        r.stored,
        vt,
        r.stored as f64 / vt,
        mb / vt,
        r.mismatched.len()
    );
    if !r.skipped.is_empty() {
        println!("skipped  {} files:", r.skipped.len());
        for (p, why) in r.skipped.iter().take(20) {
            println!("  {}: {why}", p.display());
        }
    }
    for (p, why) in r.mismatched.iter().take(20) {
        println!("MISMATCH {}: {why}", p.display());
    }
    Ok(if r.mismatched.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
