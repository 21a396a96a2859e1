//! The `ringkv` binary's commands, one module each (mini-redis keeps one file per command):
//! `start` runs a node; the others are clients of a running node.

use anyhow::{bail, Context};
use clap::Args;
use ringkv_api::{CallOptions, Client};

pub mod admin;
pub mod bench;
pub mod kv;
pub mod load;
pub mod start;

#[derive(Args, Clone, Default)]
pub struct QuorumArgs {
    /// Replicas to use [default: the bucket's n].
    #[arg(long)]
    pub n: Option<u8>,
    /// Read quorum [default: the bucket's r].
    #[arg(long)]
    pub r: Option<u8>,
    /// Write quorum [default: the bucket's w].
    #[arg(long)]
    pub w: Option<u8>,
    /// Time limit, ms.
    #[arg(long)]
    pub timeout_ms: Option<u64>,
}

impl QuorumArgs {
    pub fn options(&self) -> CallOptions {
        CallOptions {
            n: self.n,
            r: self.r,
            w: self.w,
            timeout_ms: self.timeout_ms,
            local: false,
            condition: None,
            ttl: None,
        }
    }
}

#[derive(Args)]
pub struct AddrArg {
    /// Client address of a node [default: the one before the subcommand, else $RINGKV_ADDR,
    /// else 127.0.0.1:7379].
    #[arg(long, global = true)]
    pub addr: Option<String>,
}

impl AddrArg {
    /// The address to use (filled in from the top-level flag at start).
    pub fn addr(&self) -> &str {
        self.addr.as_deref().unwrap_or("127.0.0.1:7379")
    }
}

/// Connects to the node at `a`.
pub async fn connect(a: &AddrArg) -> anyhow::Result<Client> {
    Client::connect(a.addr())
        .await
        .with_context(|| format!("connecting to {}", a.addr()))
}

/// Lower-case hex of `b`.
pub fn encode_hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

pub fn decode_hex(s: &str) -> anyhow::Result<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        bail!("odd number of hex digits");
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).map_err(Into::into))
        .collect()
}
