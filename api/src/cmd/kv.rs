//! `ringkv ping`, `put`, `get`, `delete` and `cas`.

use super::{connect, decode_hex, encode_hex, AddrArg, QuorumArgs};
use anyhow::Context;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use ringkv_api::client::{
    CasOutcome, Client, GetStreamOptions, PutStreamOptions, ValueMeta, SINGLE_FRAME_BYTES,
};
use ringkv_api::{CallOptions, ClientError, WriteCondition};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

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
    /// Read the value from this file (`-`: stdin). A value over 4 MiB is streamed to the node
    /// in chunks (streamed put), with a progress bar.
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
    /// No progress bar (it is shown on stderr for a streamed value when stderr is a
    /// terminal).
    #[arg(long)]
    pub quiet: bool,
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
    /// No progress bar (it is shown on stderr for a large value when stderr is a terminal).
    #[arg(long)]
    pub quiet: bool,
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

/// `ringkv cas` arguments.
#[derive(Args)]
#[command(group(clap::ArgGroup::new("expected").required(true).args(["expect", "absent"])))]
#[command(group(clap::ArgGroup::new("replacement").required(true).args(["new", "delete"])))]
pub struct CasArgs {
    #[command(flatten)]
    pub addr: AddrArg,
    /// Bucket name (a strong bucket: `bucket set BUCKET consistency=strong`).
    pub bucket: String,
    /// Key.
    pub key: String,
    /// The new value.
    pub new: Option<String>,
    /// The value the key must hold.
    #[arg(long, value_name = "OLD")]
    pub expect: Option<String>,
    /// The key must be absent (create only), instead of --expect.
    #[arg(long)]
    pub absent: bool,
    /// Delete the key if it matches, instead of NEW.
    #[arg(long)]
    pub delete: bool,
    /// Time limit, ms. (No --n: operations on a strong key must all use the bucket's n.)
    #[arg(long)]
    pub timeout_ms: Option<u64>,
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

/// Where `ringkv put` takes the value from.
enum Source {
    /// The VALUE argument.
    Inline(Vec<u8>),
    /// A file, and its length.
    File(tokio::fs::File, u64),
    /// Standard input (`--file -`, or neither VALUE nor --file).
    Stdin,
}

/// A value to write: whole if it fits in one `put` frame, else a stream.
enum Value {
    Whole(Vec<u8>),
    Stream {
        reader: Box<dyn AsyncRead + Unpin + Send>,
        size: Option<u64>,
    },
}

impl Source {
    async fn open(value: Option<String>, file: Option<PathBuf>) -> anyhow::Result<Source> {
        Ok(match (value, file) {
            (Some(v), _) => Source::Inline(v.into_bytes()),
            (None, Some(path)) if path.as_os_str() == "-" => Source::Stdin,
            (None, Some(path)) => {
                let f = tokio::fs::File::open(&path)
                    .await
                    .with_context(|| format!("reading {}", path.display()))?;
                let len = f
                    .metadata()
                    .await
                    .with_context(|| format!("reading {}", path.display()))?
                    .len();
                Source::File(f, len)
            }
            (None, None) => Source::Stdin,
        })
    }

    /// The value, read whole if it is at most [`SINGLE_FRAME_BYTES`] long. Standard input is
    /// read up to one byte past that before deciding.
    async fn value(self) -> anyhow::Result<Value> {
        Ok(match self {
            Source::Inline(v) => Value::Whole(v),
            Source::File(mut f, len) if len <= SINGLE_FRAME_BYTES => {
                let mut buf = Vec::with_capacity(len as usize);
                f.read_to_end(&mut buf).await.context("reading the file")?;
                Value::Whole(buf)
            }
            Source::File(f, len) => Value::Stream {
                reader: Box::new(f),
                size: Some(len),
            },
            Source::Stdin => {
                let mut stdin = tokio::io::stdin();
                let mut head = Vec::new();
                (&mut stdin)
                    .take(SINGLE_FRAME_BYTES + 1)
                    .read_to_end(&mut head)
                    .await
                    .context("reading stdin")?;
                if head.len() as u64 <= SINGLE_FRAME_BYTES {
                    Value::Whole(head)
                } else {
                    Value::Stream {
                        reader: Box::new(std::io::Cursor::new(head).chain(stdin)),
                        size: None,
                    }
                }
            }
        })
    }
}

/// A progress bar of bytes on stderr, hidden with `--quiet` or when stderr is not a
/// terminal. `len`: the total, when known (else a byte counter).
fn byte_bar(what: &str, len: Option<u64>, quiet: bool) -> ProgressBar {
    if quiet || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let (pb, template) = match len {
        Some(len) => (
            ProgressBar::new(len),
            format!("{what} [{{elapsed_precise}}] {{wide_bar}} {{bytes}}/{{total_bytes}} ({{bytes_per_sec}}, {{eta}})"),
        ),
        None => (
            ProgressBar::no_length(),
            format!("{what} [{{elapsed_precise}}] {{spinner}} {{bytes}} ({{bytes_per_sec}})"),
        ),
    };
    pb.set_style(
        ProgressStyle::with_template(&template).unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    pb
}

/// Writes a value: in one `put` frame if it is at most 4 MiB, else streamed.
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
        quiet,
        quorum,
    } = args;
    let opts = quorum.options();
    let value = Source::open(value, file).await?.value().await?;
    let client = connect(&addr).await?;
    let context = match (context, blind) {
        (Some(hex), _) => decode_hex(&hex).context("--context is not hex")?,
        (None, true) => Vec::new(),
        (None, false) => {
            client
                .get_meta(bucket.as_bytes(), key.as_bytes(), &opts)
                .await?
                .context
        }
    };
    let opts = CallOptions {
        condition: condition(if_none_match, if_match),
        ttl,
        ..opts
    };
    match value {
        Value::Whole(value) => written(
            client
                .put_with(bucket.as_bytes(), key.as_bytes(), value, &context, &opts)
                .await,
        ),
        Value::Stream { reader, size } => {
            let pb = byte_bar("put", size, quiet);
            let progress_bar = pb.clone();
            let stream_opts = PutStreamOptions {
                call: opts,
                context,
                size,
                progress: Some(Arc::new(move |done| progress_bar.set_position(done))),
                ..Default::default()
            };
            let result = client
                .put_stream(bucket.as_bytes(), key.as_bytes(), reader, &stream_opts)
                .await;
            pb.finish_and_clear();
            written(result.map(|_| ()))
        }
    }
}

/// Reads a key: a `get` with `meta`; small values come in its answer, large ones are
/// streamed to stdout by ranges (with a progress bar).
pub async fn get(args: GetArgs) -> anyhow::Result<ExitCode> {
    let GetArgs {
        addr,
        bucket,
        key,
        json,
        local,
        quiet,
        quorum,
    } = args;
    let opts = CallOptions {
        local,
        ..quorum.options()
    };
    let client = connect(&addr).await?;
    let got = client
        .get_meta(bucket.as_bytes(), key.as_bytes(), &opts)
        .await?;
    if json {
        let values: Vec<serde_json::Value> = got
            .values
            .iter()
            .zip(&got.meta)
            .map(|(v, m)| match (m.large, std::str::from_utf8(v)) {
                (true, _) => serde_json::json!({
                    "size": m.size,
                    "large": true,
                    "version": m.version.as_deref().map(|v| encode_hex(v)),
                    "crc32": m.crc32,
                }),
                (false, Ok(s)) => serde_json::json!({"size": v.len(), "utf8": s}),
                (false, Err(_)) => serde_json::json!({"size": v.len(), "hex": encode_hex(v)}),
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
    if local && got.meta.iter().any(|m| m.large) {
        anyhow::bail!(
            "{bucket}/{key} holds a large value, which is read in ranges with quorum: read it without --local (--local --json shows its size, version and checksum)"
        );
    }
    let stream_opts = GetStreamOptions {
        call: opts,
        ..Default::default()
    };
    let large = Large {
        client: &client,
        bucket: &bucket,
        key: &key,
        opts: &stream_opts,
        quiet,
    };
    let mut out = tokio::io::stdout();
    match (got.values.as_slice(), got.meta.as_slice()) {
        ([], _) => {
            eprintln!("not found: {bucket}/{key}");
            return Ok(ExitCode::from(1));
        }
        ([v], [m]) => large.write(&mut out, v, m).await?,
        (many, metas) => {
            eprintln!(
                "{bucket}/{key} has {} siblings (concurrent writes). Resolve them by writing the merged value with the context from `ringkv get --json`:",
                many.len()
            );
            for (i, (v, m)) in many.iter().zip(metas).enumerate() {
                let header = format!(
                    "--- sibling {} of {} ({} bytes) ---\n",
                    i + 1,
                    many.len(),
                    m.size
                );
                out.write_all(header.as_bytes()).await?;
                large.write(&mut out, v, m).await?;
                out.write_all(b"\n").await?;
            }
        }
    }
    out.flush().await?;
    Ok(ExitCode::SUCCESS)
}

/// How `ringkv get` writes one value of a key to stdout.
struct Large<'a> {
    client: &'a Client,
    bucket: &'a str,
    key: &'a str,
    opts: &'a GetStreamOptions,
    quiet: bool,
}

impl Large<'_> {
    /// Writes a small value as it came, and streams a large one (`meta.large`) by ranges of
    /// its version with a progress bar, its CRC-32 checked at the end.
    async fn write(
        &self,
        out: &mut tokio::io::Stdout,
        value: &[u8],
        meta: &ValueMeta,
    ) -> anyhow::Result<()> {
        let Some(version) = meta.version.as_deref().filter(|_| meta.large) else {
            return Ok(out.write_all(value).await?);
        };
        let (bucket, key) = (self.bucket, self.key);
        let mut reader = self
            .client
            .get_stream_version(bucket.as_bytes(), key.as_bytes(), version, self.opts)
            .await
            .with_context(|| format!("reading {bucket}/{key}"))?;
        let pb = byte_bar("get", Some(reader.size()), self.quiet);
        let mut buf = vec![0u8; 256 << 10];
        let result = async {
            loop {
                let n = reader
                    .read(&mut buf)
                    .await
                    .with_context(|| format!("reading {bucket}/{key}"))?;
                if n == 0 {
                    return anyhow::Ok(());
                }
                out.write_all(&buf[..n]).await?;
                pb.inc(n as u64);
            }
        }
        .await;
        pb.finish_and_clear();
        result
    }
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
        .get_meta(bucket.as_bytes(), key.as_bytes(), &opts)
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

/// Compare-and-set on a key of a strong bucket. A key that does not hold the value expected
/// exits [`CONDITION_FAILED_EXIT`]: the key's current value goes to stdout (raw, nothing if
/// absent) and a message to stderr.
pub async fn cas(args: CasArgs) -> anyhow::Result<ExitCode> {
    let CasArgs {
        addr,
        bucket,
        key,
        new,
        expect,
        absent: _,
        delete: _,
        timeout_ms,
    } = args;
    let opts = CallOptions {
        timeout_ms,
        ..Default::default()
    };
    let client = connect(&addr).await?;
    let outcome = client
        .cas(
            bucket.as_bytes(),
            key.as_bytes(),
            expect.as_deref().map(str::as_bytes),
            new.as_deref().map(str::as_bytes),
            &opts,
        )
        .await?;
    match outcome {
        CasOutcome::Swapped => Ok(ExitCode::SUCCESS),
        CasOutcome::ConditionFailed { current: None } => {
            eprintln!("ringkv: condition_failed: {bucket}/{key} is absent; nothing was written");
            Ok(ExitCode::from(CONDITION_FAILED_EXIT))
        }
        CasOutcome::ConditionFailed {
            current: Some(value),
        } => {
            eprintln!(
                "ringkv: condition_failed: {bucket}/{key} holds another value ({} bytes, on stdout); nothing was written",
                value.len()
            );
            let mut out = tokio::io::stdout();
            out.write_all(&value).await?;
            out.flush().await?;
            Ok(ExitCode::from(CONDITION_FAILED_EXIT))
        }
    }
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
