//! The cluster's TCP sockets: ringkv makes them itself and hands each connected stream to the
//! ractor_cluster NodeServer (`NodeServerMessage::ConnectionOpened`), which runs the cookie
//! handshake and the session as usual.
//!
//! ractor_cluster's own listener and `client_connect` leave the kernel's defaults on: no
//! keepalive, no `TCP_USER_TIMEOUT`, and a connect that waits out every SYN retransmission
//! (about 2 minutes) when packets are dropped. Across a real network partition a session's
//! connection then stalls instead of closing, and after the heal it waits for the next
//! retransmission, whose interval doubled while the partition lasted (STACK-NOTES: a 30 s cut
//! kept peers apart for 26-28 s after the heal). So every cluster socket here gets:
//! * `TCP_NODELAY` (as ractor_cluster sets);
//! * keepalive after [`KEEPALIVE_IDLE`] of silence, probing every [`KEEPALIVE_INTERVAL`],
//!   [`KEEPALIVE_PROBES`] times: an idle connection to a vanished peer closes;
//! * [`USER_TIMEOUT`] as `TCP_USER_TIMEOUT`: a connection whose sent data stays
//!   unacknowledged that long closes, rather than backing off for minutes;
//! * outgoing connects time out after [`CONNECT_TIMEOUT`], so that a dial made during a
//!   partition gives up and the next one (Gossip's backoff) starts with a fresh SYN.
//!
//! The failure detector closes a convicted peer's session well before these limits (see
//! `gossip.rs`); they are the kernel's backstop.
//!
//! The NodeServer itself is told to listen on an ephemeral port of `127.0.0.1`, which nothing
//! dials: the cluster address is served by [`listen`].
//!
//! With cluster TLS ([`crate::tls::ClusterTls`], `cluster-tls-ca`) each accepted or dialled
//! connection first runs a mutual TLS handshake, in a task of its own and within
//! `tls-handshake-timeout-ms`, and is handed over only once it is done, with the peer's
//! name check in its read half (see [`crate::tls`]). At most [`MAX_HANDSHAKES`] incoming
//! handshakes run at once; connections past that are closed at once.

use crate::tls::{ClusterTls, TlsLink};
use ractor::ActorRef;
use ractor_cluster::{NetworkStream, NodeServerMessage};
use socket2::{SockRef, TcpKeepalive};
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};

/// Silence on a connection before the first keepalive probe.
pub const KEEPALIVE_IDLE: Duration = Duration::from_secs(2);
/// Interval between keepalive probes.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(1);
/// Unanswered keepalive probes before the kernel closes the connection.
pub const KEEPALIVE_PROBES: u32 = 3;
/// `TCP_USER_TIMEOUT`: longest time sent data may stay unacknowledged before the kernel
/// closes the connection.
pub const USER_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest time an outgoing cluster connect may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Most incoming TLS handshakes on the cluster address at once.
pub const MAX_HANDSHAKES: usize = 64;

/// Sets the options of the module docs on a cluster connection.
///
/// # Errors
/// A `setsockopt` that failed.
pub fn configure(stream: &TcpStream) -> io::Result<()> {
    stream.set_nodelay(true)?;
    let sock = SockRef::from(stream);
    sock.set_tcp_keepalive(
        &TcpKeepalive::new()
            .with_time(KEEPALIVE_IDLE)
            .with_interval(KEEPALIVE_INTERVAL)
            .with_retries(KEEPALIVE_PROBES),
    )?;
    sock.set_tcp_user_timeout(Some(USER_TIMEOUT))
}

/// Hands a connected stream to the NodeServer: as it is, or (with `tls`) once the TLS
/// handshake is done within its timeout.
async fn hand_over(
    server: &ActorRef<NodeServerMessage>,
    stream: TcpStream,
    is_server: bool,
    tls: Option<&ClusterTls>,
) -> io::Result<()> {
    configure(&stream)?;
    let (peer_addr, local_addr) = (stream.peer_addr()?, stream.local_addr()?);
    let stopped = |e| io::Error::other(format!("the cluster transport stopped: {e}"));
    let Some(tls) = tls else {
        return server
            .cast(NodeServerMessage::ConnectionOpened {
                stream: Box::new(NetworkStream::Raw {
                    peer_addr,
                    local_addr,
                    stream,
                }),
                is_server,
            })
            .map_err(stopped);
    };
    let handshake = async {
        let link: Box<dyn ractor_cluster::ClusterBidiStream> = if is_server {
            let stream = tls.acceptor.accept(stream).await?;
            let peer_cert = peer_cert(stream.get_ref().1.peer_certificates())?;
            Box::new(TlsLink {
                stream,
                peer_cert,
                peer_addr,
                local_addr,
            })
        } else {
            let stream = tls.connector.connect(ClusterTls::sni(), stream).await?;
            let peer_cert = peer_cert(stream.get_ref().1.peer_certificates())?;
            Box::new(TlsLink {
                stream,
                peer_cert,
                peer_addr,
                local_addr,
            })
        };
        io::Result::Ok(link)
    };
    let link = tokio::time::timeout(tls.handshake_timeout, handshake)
        .await
        .map_err(|_| {
            io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "no TLS handshake within {:?} (tls-handshake-timeout-ms)",
                    tls.handshake_timeout
                ),
            )
        })?
        .map_err(|e| io::Error::new(e.kind(), format!("TLS handshake: {e}")))?;
    server
        .cast(NodeServerMessage::ConnectionOpenedExternal {
            stream: link,
            is_server,
        })
        .map_err(stopped)
}

/// The end-entity certificate a finished mutual TLS handshake got from the peer.
fn peer_cert(
    certs: Option<&[rustls::pki_types::CertificateDer<'static>]>,
) -> io::Result<rustls::pki_types::CertificateDer<'static>> {
    certs
        .and_then(|c| c.first())
        .cloned()
        .ok_or_else(|| io::Error::new(io::ErrorKind::PermissionDenied, "no peer certificate"))
}

/// Dials the cluster address `addr` (`host:port`) within [`CONNECT_TIMEOUT`] and hands the
/// connection to `server` as an outgoing session, after a TLS handshake if `tls` is set.
///
/// # Errors
/// The address does not resolve, the connect or the handshake failed or timed out, or the
/// NodeServer stopped.
pub async fn dial(
    server: &ActorRef<NodeServerMessage>,
    addr: &str,
    tls: Option<&ClusterTls>,
) -> io::Result<()> {
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
        .await
        .map_err(|_| {
            io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no connection within {CONNECT_TIMEOUT:?}"),
            )
        })??;
    hand_over(server, stream, false, tls).await
}

/// Binds the cluster address `addr`.
///
/// # Errors
/// The bind failed (address in use, not an address of this host).
pub async fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Accepts cluster connections on `listener` and hands each to `server` as an incoming
/// session, until the NodeServer stops. Run it as a task and abort it at shutdown (its
/// handshake tasks end with it).
pub async fn listen(
    listener: TcpListener,
    server: ActorRef<NodeServerMessage>,
    tls: Option<Arc<ClusterTls>>,
) {
    let mut handshakes = tokio::task::JoinSet::new();
    loop {
        match listener.accept().await {
            Ok((stream, addr)) if tls.is_some() => {
                while handshakes.try_join_next().is_some() {}
                if handshakes.len() >= MAX_HANDSHAKES {
                    tracing::warn!(%addr, max = MAX_HANDSHAKES, "cluster connection closed: too many TLS handshakes in progress");
                    continue;
                }
                let (server, tls) = (server.clone(), tls.clone());
                handshakes.spawn(async move {
                    if let Err(e) = hand_over(&server, stream, true, tls.as_deref()).await {
                        tracing::warn!(%addr, error = %e, "cluster connection refused");
                    }
                });
            }
            Ok((stream, addr)) => {
                if let Err(e) = hand_over(&server, stream, true, None).await {
                    tracing::warn!(%addr, error = %e, "cluster connection dropped");
                    if matches!(
                        server.get_status(),
                        ractor::ActorStatus::Stopping | ractor::ActorStatus::Stopped
                    ) {
                        return;
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cluster listener cannot accept");
                // EMFILE and the like: let the condition pass instead of spinning.
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}
