//! TLS for the client protocol: rustls (TLS 1.2 and 1.3) with the aws-lc-rs crypto provider,
//! certificates and keys from PEM files.
//!
//! A [`ClientTls`] holds the trust roots (the CA that signed the node's certificate) and,
//! for a node that asks for client certificates (`tls-client-ca`, mutual TLS), the client's
//! own certificate and key. [`crate::Client::connect_tls`] checks the node's certificate
//! against the host name it dials (or [`ClientTls::with_server_name`]).
//!
//! The PEM helpers here ([`load_certs`], [`load_key`], [`load_roots`]) are also what the
//! node uses for its own files.

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use std::path::Path;
use std::sync::Arc;
use thiserror::Error;

/// A TLS file or setting that cannot be used.
#[derive(Debug, Error)]
pub enum TlsError {
    /// A PEM file could not be read or holds nothing usable.
    #[error("{path}: {why}")]
    File {
        /// The file.
        path: String,
        /// What is wrong with it.
        why: String,
    },
    /// rustls refused the certificates or key (a key that does not match its
    /// certificate, an unsupported algorithm).
    #[error("{0}")]
    Config(String),
}

fn file_error(path: &Path, why: impl std::fmt::Display) -> TlsError {
    TlsError::File {
        path: path.display().to_string(),
        why: why.to_string(),
    }
}

/// The aws-lc-rs crypto provider, named explicitly so that no process-wide default is needed.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Every certificate in the PEM file at `path`, in file order (a chain: leaf first).
///
/// # Errors
/// [`TlsError::File`] if the file cannot be read, is not PEM, or holds no certificate.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| file_error(path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(path, e))?;
    if certs.is_empty() {
        return Err(file_error(path, "no CERTIFICATE block in the file"));
    }
    Ok(certs)
}

/// The first private key (PKCS#8, PKCS#1 or SEC1) in the PEM file at `path`.
///
/// # Errors
/// [`TlsError::File`] if the file cannot be read or holds no private key.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| file_error(path, e))
}

/// The certificates of the PEM file at `path` as trust roots.
///
/// # Errors
/// [`TlsError::File`] as [`load_certs`], or if a certificate is not a usable trust anchor.
pub fn load_roots(path: &Path) -> Result<Arc<RootCertStore>, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(path)? {
        roots.add(cert).map_err(|e| file_error(path, e))?;
    }
    Ok(Arc::new(roots))
}

/// How a client speaks TLS to nodes: whom it trusts, and what it presents.
#[derive(Clone)]
pub struct ClientTls {
    config: Arc<ClientConfig>,
    server_name: Option<ServerName<'static>>,
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTls")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

impl ClientTls {
    /// Trusts the CA certificates of the PEM file `ca`; with `identity` (certificate chain
    /// file, key file), presents that certificate to nodes that ask for one (mutual TLS).
    ///
    /// # Errors
    /// [`TlsError`] if a file cannot be read or rustls refuses its contents.
    pub fn from_files(ca: &Path, identity: Option<(&Path, &Path)>) -> Result<Self, TlsError> {
        let builder = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Config(e.to_string()))?
            .with_root_certificates(load_roots(ca)?);
        let config = match identity {
            Some((cert, key)) => builder
                .with_client_auth_cert(load_certs(cert)?, load_key(key)?)
                .map_err(|e| TlsError::Config(format!("{}: {e}", cert.display())))?,
            None => builder.with_no_client_auth(),
        };
        Ok(Self::from_config(Arc::new(config)))
    }

    /// Uses a rustls configuration made elsewhere.
    pub fn from_config(config: Arc<ClientConfig>) -> Self {
        Self {
            config,
            server_name: None,
        }
    }

    /// Checks the node's certificate against `name` (a DNS name or an IP address) instead
    /// of the host part of the address dialled.
    ///
    /// # Errors
    /// [`TlsError::Config`] if `name` is neither.
    pub fn with_server_name(mut self, name: &str) -> Result<Self, TlsError> {
        let name = ServerName::try_from(name.to_string())
            .map_err(|e| TlsError::Config(format!("server name {name:?}: {e}")))?;
        self.server_name = Some(name);
        Ok(self)
    }

    /// The rustls connector.
    pub(crate) fn connector(&self) -> tokio_rustls::TlsConnector {
        tokio_rustls::TlsConnector::from(self.config.clone())
    }

    /// The name to check the certificate of the node at `addr` (`host:port`) against.
    pub(crate) fn server_name(&self, addr: &str) -> Result<ServerName<'static>, TlsError> {
        if let Some(name) = &self.server_name {
            return Ok(name.clone());
        }
        let host = match addr.rsplit_once(':') {
            Some((host, _)) => host.trim_start_matches('[').trim_end_matches(']'),
            None => addr,
        };
        ServerName::try_from(host.to_string()).map_err(|e| {
            TlsError::Config(format!(
                "cannot check a certificate against {host:?} ({e}): set a server name"
            ))
        })
    }
}
