//! The `ringkv` binary's commands, one module each (mini-redis keeps one file per command):
//! `start` runs a node; the others are clients of a running node.

use anyhow::{bail, Context};
use clap::Args;
use ringkv_api::{CallOptions, Client, ClientTls};
use std::path::PathBuf;

pub mod admin;
pub mod bench;
pub mod cert;
pub mod explain;
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
    #[command(flatten)]
    pub tls: TlsArgs,
}

/// How a client command speaks TLS to the node (nodes started with `--tls-cert`).
#[derive(Args, Clone, Default)]
pub struct TlsArgs {
    /// PEM file of the CA that signed the node's certificate: connect with TLS
    /// [env: RINGKV_TLS_CA].
    #[arg(long, global = true)]
    pub tls_ca: Option<PathBuf>,
    /// PEM client certificate, for nodes that require one (--tls-client-ca)
    /// [env: RINGKV_TLS_CERT].
    #[arg(long, global = true)]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert [env: RINGKV_TLS_KEY].
    #[arg(long, global = true)]
    pub tls_key: Option<PathBuf>,
    /// Name to check the node's certificate against [default: the host of --addr].
    #[arg(long, global = true)]
    pub tls_server_name: Option<String>,
}

impl TlsArgs {
    /// Fills what is unset from `top` (the flags given before the subcommand), then from
    /// the environment.
    pub fn inherit(&mut self, top: &TlsArgs) {
        let env = |name: &str| {
            std::env::var_os(name)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        };
        self.tls_ca = self
            .tls_ca
            .take()
            .or_else(|| top.tls_ca.clone())
            .or_else(|| env("RINGKV_TLS_CA"));
        self.tls_cert = self
            .tls_cert
            .take()
            .or_else(|| top.tls_cert.clone())
            .or_else(|| env("RINGKV_TLS_CERT"));
        self.tls_key = self
            .tls_key
            .take()
            .or_else(|| top.tls_key.clone())
            .or_else(|| env("RINGKV_TLS_KEY"));
        self.tls_server_name = self
            .tls_server_name
            .take()
            .or_else(|| top.tls_server_name.clone());
    }

    /// The client's TLS settings, or `None` for plain TCP (no --tls-ca).
    ///
    /// # Errors
    /// A certificate without a key (or the reverse), a client certificate without --tls-ca,
    /// or a file that cannot be used.
    pub fn client_tls(&self) -> anyhow::Result<Option<ClientTls>> {
        let identity = match (&self.tls_cert, &self.tls_key) {
            (Some(c), Some(k)) => Some((c.as_path(), k.as_path())),
            (None, None) => None,
            _ => bail!("--tls-cert and --tls-key go together"),
        };
        let Some(ca) = &self.tls_ca else {
            if identity.is_some() {
                bail!("--tls-cert needs --tls-ca (the CA that signed the node's certificate)");
            }
            return Ok(None);
        };
        let mut tls = ClientTls::from_files(ca, identity).context("TLS settings")?;
        if let Some(name) = &self.tls_server_name {
            tls = tls.with_server_name(name)?;
        }
        Ok(Some(tls))
    }
}

impl AddrArg {
    /// The address to use (filled in from the top-level flag at start).
    pub fn addr(&self) -> &str {
        self.addr.as_deref().unwrap_or("127.0.0.1:7379")
    }
}

/// Connects to the node at `a`, with TLS if `a` says so.
pub async fn connect(a: &AddrArg) -> anyhow::Result<Client> {
    let tls = a.tls.client_tls()?;
    Client::connect_with(a.addr(), tls.as_ref())
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
