//! `ringkv cert`: a cluster CA and certificates signed by it, for trying TLS out (rcgen,
//! ECDSA P-256). Production clusters should use their own PKI; README "Security" gives the
//! equivalent openssl commands.
//!
//! * `ringkv cert ca --dir D` writes `D/ca.pem` and `D/ca.key`.
//! * `ringkv cert node NAME --dir D [--host H]...` writes `D/NAME.pem` and `D/NAME.key`,
//!   signed by `D/ca.key`: subject alternative names NAME (the node name, which cluster TLS
//!   checks), `localhost`, `127.0.0.1` and each `--host` (a DNS name or an IP address, which
//!   clients check). Usable as a server and as a client certificate, so it also serves a
//!   client of `--tls-client-ca`.

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Args)]
pub struct CertArgs {
    #[command(subcommand)]
    pub what: CertCommand,
}

#[derive(Subcommand)]
pub enum CertCommand {
    /// Make a CA: DIR/ca.pem (give it to nodes and clients as the CA) and DIR/ca.key.
    Ca {
        /// Directory to write to (created if missing).
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        /// Replace an existing CA in DIR.
        #[arg(long)]
        force: bool,
    },
    /// Make DIR/NAME.pem and DIR/NAME.key, signed by DIR/ca.key: for the node NAME (or a
    /// client named NAME).
    Node {
        /// The node's name (its `name` setting), a DNS name.
        name: String,
        /// Directory holding ca.pem and ca.key, and where the files are written.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        /// Another DNS name or IP address clients reach the node by (repeatable);
        /// localhost and 127.0.0.1 are always included.
        #[arg(long)]
        host: Vec<String>,
    },
}

/// The CA's parameters. They are the same each time, so a CA certificate rebuilt from
/// `ca.key` has the subject and key identifier of the one in `ca.pem`, which is all the
/// certificates it signs refer to.
fn ca_params() -> anyhow::Result<CertificateParams> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params
        .distinguished_name
        .push(DnType::CommonName, "ringkv cluster CA");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    Ok(params)
}

/// Writes `text` to `path`; readable by the owner only when `secret`.
fn write(path: &Path, text: &str, secret: bool) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(if secret { 0o600 } else { 0o644 })
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    f.write_all(text.as_bytes())
        .with_context(|| format!("writing {}", path.display()))
}

/// Runs `ringkv cert`.
pub fn cert(args: CertArgs) -> anyhow::Result<ExitCode> {
    match args.what {
        CertCommand::Ca { dir, force } => {
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            let (cert_path, key_path) = (dir.join("ca.pem"), dir.join("ca.key"));
            if !force && (cert_path.exists() || key_path.exists()) {
                bail!(
                    "{} already holds a CA (ca.pem or ca.key): pass --force to replace it",
                    dir.display()
                );
            }
            let key = KeyPair::generate()?;
            let cert = ca_params()?.self_signed(&key)?;
            write(&key_path, &key.serialize_pem(), true)?;
            write(&cert_path, &cert.pem(), false)?;
            println!("{}\n{}", cert_path.display(), key_path.display());
        }
        CertCommand::Node { name, dir, host } => {
            if !ringkv_cluster::config::is_dns_name(&name) {
                bail!("{name:?} is not a DNS name (letters, digits, '-' and '.'), so no certificate can carry it as a node name");
            }
            let ca_key_path = dir.join("ca.key");
            let ca_key_pem = std::fs::read_to_string(&ca_key_path).with_context(|| {
                format!(
                    "reading {} (make a CA first: ringkv cert ca --dir {})",
                    ca_key_path.display(),
                    dir.display()
                )
            })?;
            let ca_key = KeyPair::from_pem(&ca_key_pem)
                .with_context(|| format!("{}: not a private key", ca_key_path.display()))?;
            let ca = ca_params()?.self_signed(&ca_key)?;
            let mut names = vec![name.clone(), "localhost".into(), "127.0.0.1".into()];
            for h in host {
                if !names.contains(&h) {
                    names.push(h);
                }
            }
            let mut params = CertificateParams::new(names)
                .context("a --host is neither a DNS name nor an IP address")?;
            params.distinguished_name.push(DnType::CommonName, &name);
            params.key_usages = vec![
                KeyUsagePurpose::DigitalSignature,
                KeyUsagePurpose::KeyEncipherment,
            ];
            params.extended_key_usages = vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ];
            let key = KeyPair::generate()?;
            let cert = params.signed_by(&key, &ca, &ca_key)?;
            let (cert_path, key_path) = (
                dir.join(format!("{name}.pem")),
                dir.join(format!("{name}.key")),
            );
            write(&key_path, &key.serialize_pem(), true)?;
            write(&cert_path, &cert.pem(), false)?;
            println!("{}\n{}", cert_path.display(), key_path.display());
        }
    }
    Ok(ExitCode::SUCCESS)
}
