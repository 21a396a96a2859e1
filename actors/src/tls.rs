//! TLS for the node's listeners: the client listener's server configuration, and mutual TLS
//! on the cluster links with each peer's node name checked against its certificate.
//!
//! # Cluster links
//! With `cluster-tls-ca`, every connection between two nodes is TLS 1.3 (or 1.2) where both
//! ends present a certificate signed by the cluster CA ([`ClusterTls`]). ringkv makes the
//! sockets itself ([`crate::transport`]): it runs the handshake in a task of its own, within
//! `tls-handshake-timeout-ms`, and only then hands the stream to ractor_cluster's NodeServer
//! (as an external transport), so a stalled handshake holds up no other connection.
//!
//! A certificate alone proves membership of the cluster, not which node the peer is: the
//! node name travels inside ractor_cluster's own handshake (its `NameMessage` from the side
//! that dialled, its `Challenge` from the side that accepted). So the read half handed to
//! the NodeServer is a [`NameCheck`]: it watches the first frames the peer sends, decodes the
//! name the peer announces (the part before `@`), and ends the connection, before
//! ractor_cluster has read that frame, unless the peer's certificate carries that name as a
//! DNS subject alternative name. Both ends see the other's name before the cookie challenge
//! completes, so a node holding a valid certificate for `n3` cannot authenticate as `n2`.
//! The cookie stays a second factor. The dialling side checks the peer's certificate chain
//! only ([`ChainOnly`]): it dials addresses, not names, and the name check covers the rest.
//!
//! Transitive (auto-mesh) mode would dial peers in plain text: ringkv keeps ractor_cluster in
//! Isolated mode and dials every peer itself.

use prost::Message as _;
use ringkv_client::tls::{load_certs, load_key, load_roots, provider};
pub use ringkv_client::tls::{ClientTls, TlsError};
use ringkv_cluster::config::NodeConfig;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::{ParsedCertificate, WebPkiClientVerifier};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};
use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, ReadBuf};

/// A rustls server configuration from PEM files: the certificate chain `cert` and its `key`;
/// with `client_ca`, clients must present a certificate signed by one of its CAs (mutual
/// TLS), else no client certificate is asked for.
///
/// # Errors
/// [`TlsError`] if a file cannot be read or rustls refuses its contents (a key that does not
/// match the certificate).
pub fn server_config(
    cert: &Path,
    key: &Path,
    client_ca: Option<&Path>,
) -> Result<Arc<ServerConfig>, TlsError> {
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let builder = match client_ca {
        Some(ca) => builder.with_client_cert_verifier(
            WebPkiClientVerifier::builder_with_provider(load_roots(ca)?, provider())
                .build()
                .map_err(|e| TlsError::Config(format!("{}: {e}", ca.display())))?,
        ),
        None => builder.with_no_client_auth(),
    };
    let config = builder
        .with_single_cert(load_certs(cert)?, load_key(key)?)
        .map_err(|e| TlsError::Config(format!("{} with {}: {e}", cert.display(), key.display())))?;
    Ok(Arc::new(config))
}

/// Verifies a server certificate's chain up to the cluster CA, and not its name: a node
/// dials addresses, and [`NameCheck`] ties the peer's node name to its certificate.
#[derive(Debug)]
pub struct ChainOnly {
    roots: Arc<RootCertStore>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let cert = ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &cert,
            &self.roots,
            intermediates,
            now,
            self.provider.signature_verification_algorithms.all,
        )?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// The server name a dialling node sends (SNI); [`ChainOnly`] does not check it.
const CLUSTER_SNI: &str = "ringkv-node";

/// Mutual TLS on the cluster links (`cluster-tls-ca`).
pub struct ClusterTls {
    /// Accepts peers that present a certificate of the cluster CA.
    pub acceptor: tokio_rustls::TlsAcceptor,
    /// Dials peers, presenting this node's certificate.
    pub connector: tokio_rustls::TlsConnector,
    /// `tls-handshake-timeout-ms`.
    pub handshake_timeout: Duration,
}

impl ClusterTls {
    /// The cluster TLS of `config`, or `None` without `cluster-tls-ca`. The node's
    /// certificate must name the node (checked here, so that a node with the wrong
    /// certificate fails at start rather than at every connection).
    ///
    /// # Errors
    /// [`TlsError`] if a file cannot be read, rustls refuses it, or the certificate does not
    /// carry the node's name.
    pub fn from_config(config: &NodeConfig) -> Result<Option<Arc<Self>>, TlsError> {
        let Some(ca) = &config.cluster_tls_ca else {
            return Ok(None);
        };
        let (cert, key) = match (&config.cluster_tls_cert, &config.cluster_tls_key) {
            (Some(c), Some(k)) => (c, k),
            _ => match (&config.tls_cert, &config.tls_key) {
                (Some(c), Some(k)) => (c, k),
                _ => {
                    return Err(TlsError::Config(
                        "cluster-tls-ca needs cluster-tls-cert and cluster-tls-key (or tls-cert and tls-key)".into(),
                    ))
                }
            },
        };
        let name = config.node_name();
        let chain = load_certs(cert)?;
        if let Err(why) = check_name(&chain[0], &name) {
            return Err(TlsError::Config(format!(
                "{}: the certificate does not name this node: {why}",
                cert.display()
            )));
        }
        let timeout = Duration::from_millis(config.tls_handshake_timeout_ms);
        Self::from_files(ca, cert, key, timeout).map(|t| Some(Arc::new(t)))
    }

    /// Mutual TLS with the CA certificates of the PEM file `ca`, presenting the chain `cert`
    /// with its `key`, handshakes limited to `handshake_timeout`. Unlike
    /// [`ClusterTls::from_config`] it does not check that `cert` names the node: tests use it
    /// to play a node that lies about its name.
    ///
    /// # Errors
    /// [`TlsError`] if a file cannot be read or rustls refuses its contents.
    pub fn from_files(
        ca: &Path,
        cert: &Path,
        key: &Path,
        handshake_timeout: Duration,
    ) -> Result<Self, TlsError> {
        let roots = load_roots(ca)?;
        let client = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Config(e.to_string()))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(ChainOnly {
                roots,
                provider: provider(),
            }))
            .with_client_auth_cert(load_certs(cert)?, load_key(key)?)
            .map_err(|e| TlsError::Config(format!("{}: {e}", cert.display())))?;
        let server = server_config(cert, key, Some(ca))?;
        Ok(Self {
            acceptor: tokio_rustls::TlsAcceptor::from(server),
            connector: tokio_rustls::TlsConnector::from(Arc::new(client)),
            handshake_timeout,
        })
    }

    /// The SNI name sent when dialling.
    pub fn sni() -> ServerName<'static> {
        ServerName::try_from(CLUSTER_SNI).expect("a valid DNS name")
    }
}

/// Ok if `cert` carries `node` (a node name, without `@host`) as a DNS subject alternative
/// name; else why not.
pub fn check_name(cert: &CertificateDer<'_>, node: &str) -> Result<(), String> {
    let parsed = ParsedCertificate::try_from(cert).map_err(|e| e.to_string())?;
    let name = ServerName::try_from(node)
        .map_err(|_| format!("{node:?} is not a DNS name, so no certificate can carry it"))?;
    rustls::client::verify_server_name(&parsed, &name)
        .map_err(|_| format!("it has no DNS subject alternative name {node:?}"))
}

/// Frames of ractor_cluster's handshake, only as far as the name the peer announces
/// (`meta.proto` and `auth.proto` of ractor_cluster 0.16: a `NetworkMessage` whose field 1 is
/// an `AuthenticationMessage`, whose field 1 is the dialler's `NameMessage` and field 4 the
/// acceptor's `Challenge`; in both, field 1 is the name `node@host`). Other fields are
/// skipped.
#[derive(Clone, PartialEq, prost::Message)]
struct NetworkFrame {
    #[prost(message, optional, tag = "1")]
    auth: Option<AuthFrame>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct AuthFrame {
    #[prost(message, optional, tag = "1")]
    name: Option<Named>,
    #[prost(message, optional, tag = "4")]
    server_challenge: Option<Named>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct Named {
    #[prost(string, tag = "1")]
    name: String,
}

/// Most frames of a peer's handshake read before its name (the acceptor sends a status
/// first, then its challenge).
const NAME_WITHIN_FRAMES: usize = 4;
/// Largest handshake frame before the name, bytes.
const MAX_HANDSHAKE_FRAME: u64 = 64 << 10;

/// The read half of a TLS cluster connection, which ends the connection unless the node
/// name the peer announces in ractor_cluster's handshake is in the peer's certificate (module
/// docs). Once the name is checked it only passes bytes on.
pub struct NameCheck<R> {
    inner: R,
    /// `None` once the peer's name was checked.
    pending: Option<Pending>,
}

struct Pending {
    cert: CertificateDer<'static>,
    /// Bytes seen, from the start of the first frame not yet decoded.
    buf: Vec<u8>,
    frames: usize,
    peer: String,
}

impl<R> NameCheck<R> {
    /// Watches `inner`, the read half of a connection from `peer` (an address, for logs)
    /// that presented `cert`.
    pub fn new(inner: R, cert: CertificateDer<'static>, peer: String) -> Self {
        Self {
            inner,
            pending: Some(Pending::new(cert, peer)),
        }
    }
}

impl Pending {
    fn new(cert: CertificateDer<'static>, peer: String) -> Self {
        Pending {
            cert,
            buf: Vec::new(),
            frames: 0,
            peer,
        }
    }

    /// Takes in `bytes`: Ok(true) once the name is checked, Ok(false) while it has not come
    /// yet, Err if the peer is refused.
    fn feed(&mut self, bytes: &[u8]) -> io::Result<bool> {
        self.buf.extend_from_slice(bytes);
        loop {
            if self.buf.len() < 8 {
                return Ok(false);
            }
            let len = u64::from_be_bytes(self.buf[..8].try_into().expect("8 bytes"));
            if len > MAX_HANDSHAKE_FRAME {
                return Err(refuse(format!(
                    "cluster peer {}: a {len}-byte frame before it named itself",
                    self.peer
                )));
            }
            let end = 8 + len as usize;
            if self.buf.len() < end {
                return Ok(false);
            }
            let frame = NetworkFrame::decode(&self.buf[8..end]).map_err(|e| {
                refuse(format!(
                    "cluster peer {}: undecodable handshake frame: {e}",
                    self.peer
                ))
            })?;
            let named = frame
                .auth
                .and_then(|a| a.name.or(a.server_challenge))
                .map(|n| n.name);
            if let Some(full) = named {
                let node = full.split('@').next().unwrap_or_default();
                return match check_name(&self.cert, node) {
                    Ok(()) => Ok(true),
                    Err(why) => {
                        tracing::warn!(peer = %self.peer, name = %full, %why, "cluster peer refused: it names itself a node its certificate does not name");
                        Err(refuse(format!(
                            "cluster peer {} names itself {full:?}, but {why}",
                            self.peer
                        )))
                    }
                };
            }
            self.frames += 1;
            if self.frames >= NAME_WITHIN_FRAMES {
                return Err(refuse(format!(
                    "cluster peer {}: no name within {NAME_WITHIN_FRAMES} handshake frames",
                    self.peer
                )));
            }
            self.buf.drain(..end);
        }
    }
}

fn refuse(why: String) -> io::Error {
    io::Error::new(io::ErrorKind::PermissionDenied, why)
}

impl<R: AsyncRead + Unpin> AsyncRead for NameCheck<R> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {}
            other => return other,
        }
        if let Some(pending) = &mut this.pending {
            let new = &buf.filled()[before..];
            match pending.feed(new) {
                Ok(true) => this.pending = None,
                Ok(false) => {}
                Err(e) => {
                    // Withhold the bytes: ractor_cluster never reads the refused frame.
                    buf.set_filled(before);
                    return Poll::Ready(Err(e));
                }
            }
        }
        Poll::Ready(Ok(()))
    }
}

/// A finished TLS cluster connection, handed to the NodeServer as an external transport.
pub struct TlsLink<S> {
    /// The TLS stream.
    pub stream: S,
    /// The certificate the peer presented.
    pub peer_cert: CertificateDer<'static>,
    /// The peer's socket address (the session's `peer_addr`, as for a plain connection).
    pub peer_addr: std::net::SocketAddr,
    /// This end's socket address.
    pub local_addr: std::net::SocketAddr,
}

impl<S> ractor_cluster::ClusterBidiStream for TlsLink<S>
where
    S: AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    fn split(self: Box<Self>) -> (ractor_cluster::BoxRead, ractor_cluster::BoxWrite) {
        let peer = self.peer_addr.to_string();
        let (rd, wr) = tokio::io::split(self.stream);
        (
            Box::new(NameCheck::new(rd, self.peer_cert, peer)),
            Box::new(wr),
        )
    }

    fn peer_label(&self) -> Option<String> {
        Some(self.peer_addr.to_string())
    }

    fn local_label(&self) -> Option<String> {
        Some(self.local_addr.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(msg: &NetworkFrame) -> Vec<u8> {
        let body = msg.encode_to_vec();
        let mut out = (body.len() as u64).to_be_bytes().to_vec();
        out.extend(body);
        out
    }

    fn named(field: u8, name: &str) -> NetworkFrame {
        let n = Some(Named { name: name.into() });
        NetworkFrame {
            auth: Some(if field == 1 {
                AuthFrame {
                    name: n,
                    server_challenge: None,
                }
            } else {
                AuthFrame {
                    name: None,
                    server_challenge: n,
                }
            }),
        }
    }

    fn cert_for(names: &[&str]) -> CertificateDer<'static> {
        let key = rcgen_key();
        let params =
            rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        params.self_signed(&key).unwrap().der().clone()
    }

    fn rcgen_key() -> rcgen::KeyPair {
        rcgen::KeyPair::generate().unwrap()
    }

    #[test]
    fn a_peer_named_in_its_certificate_passes_one_named_otherwise_is_refused() {
        let cert = cert_for(&["n2", "localhost"]);
        // The dialler's NameMessage, split across reads.
        let bytes = frame(&named(1, "n2@127.0.0.1"));
        let mut p = Pending::new(cert.clone(), "a".into());
        assert!(!p.feed(&bytes[..5]).unwrap());
        assert!(p.feed(&bytes[5..]).unwrap());
        // The acceptor's status then challenge.
        let mut p = Pending::new(cert.clone(), "a".into());
        let status = frame(&NetworkFrame {
            auth: Some(AuthFrame {
                name: None,
                server_challenge: None,
            }),
        });
        assert!(!p.feed(&status).unwrap());
        assert!(p.feed(&frame(&named(4, "n2@h"))).unwrap());
        // Another name: refused.
        let mut p = Pending::new(cert.clone(), "a".into());
        let e = p.feed(&frame(&named(1, "n3@h"))).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::PermissionDenied);
        assert!(e.to_string().contains("n3"), "{e}");
    }

    #[test]
    fn garbage_before_a_name_is_refused_within_bounds() {
        let cert = cert_for(&["n2"]);
        let mut p = Pending::new(cert.clone(), "a".into());
        assert!(p.feed(&u64::MAX.to_be_bytes()).is_err());
        let mut p = Pending::new(cert.clone(), "a".into());
        let empty = frame(&NetworkFrame { auth: None });
        let mut refused = false;
        for _ in 0..NAME_WITHIN_FRAMES {
            if p.feed(&empty).is_err() {
                refused = true;
                break;
            }
        }
        assert!(refused);
    }
}
