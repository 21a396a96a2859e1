//! TLS on the client listener (`tls-cert`, `tls-key`, `tls-client-ca`), and the byte streams
//! a connection is served over: plain TCP halves, or the halves of a TLS stream.
//!
//! The handshake runs in the connection's own task within `tls-handshake-timeout-ms`, so a
//! client that stalls it holds only its own connection slot (`max-connections`). A client
//! whose first bytes are not a TLS handshake record gets one plain protocol answer,
//! `tls_required`, and the connection closes: a client speaking plain TCP to a TLS node sees
//! why, instead of a connection that just closed.

use crate::protocol::{recover_id, ErrorCode, ProtocolError, ResponseFrame};
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

/// The first byte of a TLS record carrying a handshake message (RFC 8446, 5.1).
const TLS_HANDSHAKE: u8 = 0x16;

/// The read half of a client connection.
pub(crate) enum ClientRead {
    /// Plain TCP.
    Plain(OwnedReadHalf),
    /// TLS.
    Tls(tokio::io::ReadHalf<TlsStream<TcpStream>>),
}

/// The write half of a client connection.
pub(crate) enum ClientWrite {
    /// Plain TCP.
    Plain(OwnedWriteHalf),
    /// TLS.
    Tls(tokio::io::WriteHalf<TlsStream<TcpStream>>),
}

impl ClientWrite {
    /// True for a TLS connection.
    pub(crate) fn is_tls(&self) -> bool {
        matches!(self, ClientWrite::Tls(_))
    }

    /// Writes what the socket takes now without waiting; `WouldBlock` if it takes nothing,
    /// and always for TLS (whose records go through rustls' buffer: see
    /// [`ClientWrite::is_tls`]).
    pub(crate) fn try_write(&self, buf: &[u8]) -> io::Result<usize> {
        match self {
            ClientWrite::Plain(w) => w.try_write(buf),
            ClientWrite::Tls(_) => Err(io::ErrorKind::WouldBlock.into()),
        }
    }
}

impl AsyncRead for ClientRead {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientRead::Plain(r) => Pin::new(r).poll_read(cx, buf),
            ClientRead::Tls(r) => Pin::new(r).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for ClientWrite {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ClientWrite::Plain(w) => Pin::new(w).poll_write(cx, buf),
            ClientWrite::Tls(w) => Pin::new(w).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientWrite::Plain(w) => Pin::new(w).poll_flush(cx),
            ClientWrite::Tls(w) => Pin::new(w).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientWrite::Plain(w) => Pin::new(w).poll_shutdown(cx),
            ClientWrite::Tls(w) => Pin::new(w).poll_shutdown(cx),
        }
    }
}

/// The client listener's TLS: the acceptor and the handshake time limit.
pub(crate) struct ListenerTls {
    pub(crate) acceptor: tokio_rustls::TlsAcceptor,
    pub(crate) handshake_timeout: Duration,
}

/// The two halves of `stream`: as they are without `tls`, else after the TLS handshake.
/// `None` (the connection is closed, and why is logged) if the handshake fails or times out,
/// or the client does not speak TLS (it is answered `tls_required` first).
pub(crate) async fn open(
    stream: TcpStream,
    tls: Option<&ListenerTls>,
    peer: SocketAddr,
) -> Option<(ClientRead, ClientWrite)> {
    let Some(tls) = tls else {
        let (rd, wr) = stream.into_split();
        return Some((ClientRead::Plain(rd), ClientWrite::Plain(wr)));
    };
    let handshake = async {
        let mut first = [0u8; 1];
        if stream.peek(&mut first).await? == 0 {
            return Ok(None);
        }
        if first[0] != TLS_HANDSHAKE {
            tracing::warn!(%peer, "client refused: it speaks plain TCP to a listener that requires TLS (tls-cert)");
            refuse_plain(stream).await;
            return Ok(None);
        }
        tls.acceptor.accept(stream).await.map(Some)
    };
    match tokio::time::timeout(tls.handshake_timeout, handshake).await {
        Ok(Ok(Some(stream))) => {
            let (rd, wr) = tokio::io::split(stream);
            Some((ClientRead::Tls(rd), ClientWrite::Tls(wr)))
        }
        Ok(Ok(None)) => None,
        Ok(Err(e)) => {
            tracing::warn!(%peer, error = %e, "client TLS handshake failed");
            None
        }
        Err(_) => {
            tracing::warn!(%peer, timeout = ?tls.handshake_timeout, "client TLS handshake did not finish in time (tls-handshake-timeout-ms); closing");
            None
        }
    }
}

/// Answers a plain-TCP client `tls_required` (with its first request's id when the first
/// bytes that came hold it) and closes the connection.
async fn refuse_plain(mut stream: TcpStream) {
    let mut head = [0u8; 512];
    let n = match tokio::time::timeout(Duration::from_millis(200), stream.read(&mut head)).await {
        Ok(Ok(n)) => n,
        _ => 0,
    };
    let id = head.get(4..n).map_or(0, recover_id);
    let e = ProtocolError::new(
        ErrorCode::TlsRequired,
        "this node accepts only TLS connections (it runs with tls-cert): connect with TLS, e.g. `ringkv --tls-ca CA.pem ...`",
    );
    let _ = stream
        .write_all(&ResponseFrame::error(id, &e).encode())
        .await;
    let _ = stream.shutdown().await;
}
