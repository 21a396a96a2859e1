//! `ringkv ping`, `put`, `get` and `delete`.

use super::{connect, decode_hex, encode_hex, AddrArg, QuorumArgs};
use anyhow::Context;
use clap::Args;
use ringkv_api::{CallOptions, ClientError, WriteCondition};
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// `ringkv put` arguments.
#[derive(Args)]
pub struct PutArgs {
    #[command(flatten)]
    pub addr: AddrArg,
    /// Bucket name (1 to 64 bytes).
    pub bucket: String,
    /// Key (1 to 442 bytes).
    pub key: String,
    /// The value; without it and without --file, stdin is read.
    pub value: Option<String>,
    /// Read the value from this file.
    #[arg(long, conflicts_with = "value")]
    pub file: Option<PathBuf>,
    /// Causal context (hex, from `get --json`): replace exactly those versions.
    #[arg(long, conflicts_with = "blind")]
    pub context: Option<String>,
    /// Write without a context: any existing value stays as a sibling.
    #[arg(long)]
    pub blind: bool,
    /// Create only: fail with `condition_failed` (exit code 3) if the key holds a live
    /// value.
    #[arg(long, conflicts_with = "if_match")]
    pub if_none_match: bool,
    /// Replace only if unchanged: fail with `condition_failed` (exit code 3) if a version was
    /// written since the read that gave the context (--context, else the one this command
    /// reads first).
    #[arg(long, conflicts_with = "blind")]
    pub if_match: bool,
    /// Time to live: the value expires this long after the write, then reads as missing and
    /// is purged in the background. A number with a unit, or several added up: 500ms, 30s,
    /// 30m, 2h, 1d, 1h30m. At most 100 years; 0s is no expiry.
    #[arg(long, value_parser = parse_duration)]
    pub ttl: Option<Duration>,
    #[command(flatten)]
    pub quorum: QuorumArgs,
}

/// Parses a duration written as numbers with units, added up: `500ms`, `30s`, `30m`, `2h`,
/// `1d`, `1h30m` (units `ms`, `s`, `m`, `h`, `d`; no spaces, no fractions).
///
/// # Errors
/// A message naming the units if the text is empty, a number has no unit or a unit is
/// unknown, or the sum overflows.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let bad = || {
        format!("{text:?} is not a duration: give numbers with units ms, s, m, h or d, like 500ms, 30s, 30m, 2h, 1d or 1h30m")
    };
    let mut rest = text.trim();
    if rest.is_empty() {
        return Err(bad());
    }
    let mut total_ms: u64 = 0;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        let units = rest[digits..]
            .bytes()
            .take_while(u8::is_ascii_alphabetic)
            .count();
        if digits == 0 || units == 0 {
            return Err(bad());
        }
        let n: u64 = rest[..digits].parse().map_err(|_| bad())?;
        let unit_ms: u64 = match &rest[digits..digits + units] {
            "ms" => 1,
            "s" => 1000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            _ => return Err(bad()),
        };
        total_ms = n
            .checked_mul(unit_ms)
            .and_then(|ms| total_ms.checked_add(ms))
            .ok_or_else(|| format!("{text:?} is too long a duration"))?;
        rest = &rest[digits + units..];
    }
    Ok(Duration::from_millis(total_ms))
}

/// Exit code of a write refused by its condition (`condition_failed`).
const CONDITION_FAILED_EXIT: u8 = 3;

/// The write's condition from the flags.
fn condition(if_none_match: bool, if_match: bool) -> Option<WriteCondition> {
    match (if_none_match, if_match) {
        (true, _) => Some(WriteCondition::IfNoneMatch),
        (false, true) => Some(WriteCondition::IfMatch),
        (false, false) => None,
    }
}

/// A write's outcome as the command's exit code: a refused condition is reported on stderr
/// and exits [`CONDITION_FAILED_EXIT`], other errors go up.
fn written(result: Result<(), ClientError>) -> anyhow::Result<ExitCode> {
    match result {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(e) if e.code() == Some("condition_failed") => {
            eprintln!("ringkv: {e}");
            Ok(ExitCode::from(CONDITION_FAILED_EXIT))
        }
        Err(e) => Err(e.into()),
    }
}

/// `ringkv get` arguments.
#[derive(Args)]
pub struct GetArgs {
    #[command(flatten)]
    pub addr: AddrArg,
    /// Bucket name.
    pub bucket: String,
    /// Key.
    pub key: String,
    /// Print values and context as JSON.
    #[arg(long)]
    pub json: bool,
    /// Read only this node's own replica (no quorum, no read repair).
    #[arg(long)]
    pub local: bool,
    #[command(flatten)]
    pub quorum: QuorumArgs,
}

/// `ringkv delete` arguments.
#[derive(Args)]
pub struct DeleteArgs {
    #[command(flatten)]
    pub addr: AddrArg,
    /// Bucket name.
    pub bucket: String,
    /// Key.
    pub key: String,
    /// Delete only if no version was written since this command's read (exit code 3 with
    /// `condition_failed` otherwise).
    #[arg(long)]
    pub if_match: bool,
    #[command(flatten)]
    pub quorum: QuorumArgs,
}

/// Checks that the node answers and prints the round trip.
pub async fn ping(a: AddrArg) -> anyhow::Result<ExitCode> {
    let t = std::time::Instant::now();
    connect(&a).await?.ping().await?;
    println!(
        "pong from {} in {:.2} ms",
        a.addr(),
        t.elapsed().as_secs_f64() * 1e3
    );
    Ok(ExitCode::SUCCESS)
}

/// Writes a value.
pub async fn put(args: PutArgs) -> anyhow::Result<ExitCode> {
    let PutArgs {
        addr,
        bucket,
        key,
        value,
        file,
        context,
        blind,
        if_none_match,
        if_match,
        ttl,
        quorum,
    } = args;
    let opts = quorum.options();
    let value = match (value, file) {
        (Some(v), _) => v.into_bytes(),
        (None, Some(path)) => {
            std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?
        }
        (None, None) => {
            let mut buf = Vec::new();
            std::io::Read::read_to_end(&mut std::io::stdin(), &mut buf).context("reading stdin")?;
            buf
        }
    };
    let client = connect(&addr).await?;
    let context = match (context, blind) {
        (Some(hex), _) => decode_hex(&hex).context("--context is not hex")?,
        (None, true) => Vec::new(),
        (None, false) => {
            client
                .get_with(bucket.as_bytes(), key.as_bytes(), &opts)
                .await?
                .context
        }
    };
    let opts = CallOptions {
        condition: condition(if_none_match, if_match),
        ttl,
        ..opts
    };
    written(
        client
            .put_with(bucket.as_bytes(), key.as_bytes(), value, &context, &opts)
            .await,
    )
}

/// Reads a key.
pub async fn get(args: GetArgs) -> anyhow::Result<ExitCode> {
    let GetArgs {
        addr,
        bucket,
        key,
        json,
        local,
        quorum,
    } = args;
    let opts = CallOptions {
        local,
        ..quorum.options()
    };
    let got = connect(&addr)
        .await?
        .get_with(bucket.as_bytes(), key.as_bytes(), &opts)
        .await?;
    if json {
        let values: Vec<serde_json::Value> = got
            .values
            .iter()
            .map(|v| match std::str::from_utf8(v) {
                Ok(s) => serde_json::json!({"size": v.len(), "utf8": s}),
                Err(_) => serde_json::json!({"size": v.len(), "hex": encode_hex(v)}),
            })
            .collect();
        println!(
            "{}",
            serde_json::json!({"found": !got.values.is_empty(), "values": values, "context": encode_hex(&got.context)})
        );
        return Ok(if got.values.is_empty() {
            ExitCode::from(1)
        } else {
            ExitCode::SUCCESS
        });
    }
    let mut out = std::io::stdout().lock();
    match got.values.as_slice() {
        [] => {
            eprintln!("not found: {bucket}/{key}");
            return Ok(ExitCode::from(1));
        }
        [v] => out.write_all(v)?,
        many => {
            eprintln!(
                "{bucket}/{key} has {} siblings (concurrent writes). Resolve them by writing the merged value with the context from `ringkv get --json`:",
                many.len()
            );
            for (i, v) in many.iter().enumerate() {
                writeln!(
                    out,
                    "--- sibling {} of {} ({} bytes) ---",
                    i + 1,
                    many.len(),
                    v.len()
                )?;
                out.write_all(v)?;
                writeln!(out)?;
            }
        }
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

/// Deletes a key.
pub async fn delete(args: DeleteArgs) -> anyhow::Result<ExitCode> {
    let DeleteArgs {
        addr,
        bucket,
        key,
        if_match,
        quorum,
    } = args;
    let opts = quorum.options();
    let client = connect(&addr).await?;
    let got = client
        .get_with(bucket.as_bytes(), key.as_bytes(), &opts)
        .await?;
    if got.values.is_empty() {
        eprintln!("not found: {bucket}/{key}");
        return Ok(ExitCode::from(1));
    }
    let opts = CallOptions {
        condition: condition(false, if_match),
        ..opts
    };
    written(
        client
            .delete_with(bucket.as_bytes(), key.as_bytes(), &got.context, &opts)
            .await,
    )
}

#[cfg(test)]
mod tests {
    use super::parse_duration;
    use std::time::Duration;

    #[test]
    fn durations_parse_with_units_and_add_up() {
        let ms = |t: &str| parse_duration(t).map(|d| d.as_millis());
        assert_eq!(ms("500ms"), Ok(500));
        assert_eq!(ms("30s"), Ok(30_000));
        assert_eq!(ms("30m"), Ok(1_800_000));
        assert_eq!(ms("2h"), Ok(7_200_000));
        assert_eq!(ms("1d"), Ok(86_400_000));
        assert_eq!(ms("1h30m"), Ok(5_400_000));
        assert_eq!(ms("0s"), Ok(0));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        for bad in ["", "30", "m", "1.5h", "1w", "30 m", "-1s", "1h30"] {
            let e = parse_duration(bad).unwrap_err();
            assert!(e.contains("units ms, s, m, h or d"), "{bad:?}: {e}");
        }
        assert!(parse_duration("99999999999999999999d").is_err());
        assert!(parse_duration("999999999999999d")
            .unwrap_err()
            .contains("too long"));
    }
}
