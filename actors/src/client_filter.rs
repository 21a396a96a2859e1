//! Client nodes: Rust services that join the actor system as ractor_cluster peers and call
//! the node's KvGateway actors (`ringkv_client::actor`), served on `actor-listen`.
//!
//! A client node holds the cluster cookie, so ractor_cluster alone would treat it as a full
//! peer: it would learn every actor of the node and could message any of them, join its own
//! actors to the node's process groups (and so receive replica traffic), or announce a
//! member's name and make ractor_cluster close that member's session as a duplicate. A client
//! node must get no more than a TCP client. So every connection accepted on `actor-listen`
//! is handed to the NodeServer with a [`ClientFilter`] as its read half, which decodes each
//! frame the client sends (ractor_cluster 0.16's `NetworkMessage`: an 8-byte big-endian
//! length, then protobuf) before ractor_cluster sees it:
//!
//! * handshake frames pass, but a name that does not start with
//!   [`ringkv_proto::CLIENT_NAME_PREFIX`] ends the connection (node names may not start with
//!   it, see `NodeConfig::validate`), so a client can never pass for a member;
//! * a `Call` passes only to an actor of this node in the [`ringkv_proto::KV_GROUP`] process
//!   group (the KvGateway); every other call, cast and reply is dropped, so the caller's
//!   call times out;
//! * of the control frames, only ping, pong and the end-of-sync marker pass: the client's
//!   spawn, terminate and process-group notices are dropped, so none of its actors ever
//!   enters this node's registry;
//! * a frame longer than the limit given (`max-frame-bytes` plus [`ENVELOPE_SLACK`]) ends the
//!   connection before its body is read, and at most one frame is buffered.
//!
//! The KvGateway then decodes each request with the same decoder and limits as the TCP
//! listener. Nodes never dial client nodes and never count them as members: they are not in
//! the layout (they do not gossip), and their sessions are told apart by the `client/`
//! prefix of their peer label.

use crate::tls::{ClusterTls, NameCheck};
use prost::Message as _;
use ractor::ActorRef;
use ractor_cluster::{ClusterBidiStream, NodeServerMessage};
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

/// Bytes a client's frame may carry beyond `max-frame-bytes`: ractor_cluster's envelope of
/// a call (target, tag, variant name, timeout) around the request.
pub const ENVELOPE_SLACK: usize = 4096;
/// Most bytes one read of a client's connection takes in.
const SCRATCH_BYTES: usize = 64 << 10;
/// Peer label prefix of sessions accepted on `actor-listen` (the NodeServer's session
/// events carry it as `peer_addr`).
pub const CLIENT_LABEL: &str = "client/";

/// A `NetworkMessage`, only as far as the filter needs (`meta.proto`): which of auth (1),
/// node (2) or control (3) it is.
#[derive(Clone, PartialEq, prost::Message)]
struct Frame {
    #[prost(message, optional, tag = "1")]
    auth: Option<AuthFrame>,
    #[prost(message, optional, tag = "2")]
    node: Option<NodeFrame>,
    #[prost(message, optional, tag = "3")]
    control: Option<ControlFrame>,
}

/// `AuthenticationMessage`: field 1 is the dialler's `NameMessage`.
#[derive(Clone, PartialEq, prost::Message)]
struct AuthFrame {
    #[prost(message, optional, tag = "1")]
    name: Option<Named>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct Named {
    #[prost(string, tag = "1")]
    name: String,
}

/// `NodeMessage` (`node.proto`): cast (1), call (2), reply (3).
#[derive(Clone, PartialEq, prost::Message)]
struct NodeFrame {
    #[prost(message, optional, tag = "1")]
    cast: Option<Target>,
    #[prost(message, optional, tag = "2")]
    call: Option<Target>,
    #[prost(bytes = "vec", optional, tag = "3")]
    reply: Option<Vec<u8>>,
}

/// The `to` field (1) of a `Cast` or `Call`: the local pid of the actor called.
#[derive(Clone, PartialEq, prost::Message)]
struct Target {
    #[prost(uint64, tag = "1")]
    to: u64,
}

/// `ControlMessage` (`control.proto`): the variants a client may send are ping (3), pong
/// (4) and ready (9).
#[derive(Clone, PartialEq, prost::Message)]
struct ControlFrame {
    #[prost(bytes = "vec", optional, tag = "3")]
    ping: Option<Vec<u8>>,
    #[prost(bytes = "vec", optional, tag = "4")]
    pong: Option<Vec<u8>>,
    #[prost(bytes = "vec", optional, tag = "9")]
    ready: Option<Vec<u8>>,
}

/// What the filter does with one frame.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    Pass,
    Drop(&'static str),
}

/// The pids of this node's actors in [`ringkv_proto::KV_GROUP`], the only ones a client may
/// call.
fn gateway_pids() -> Vec<u64> {
    ractor::pg::get_local_members(&ringkv_proto::KV_GROUP.to_string())
        .into_iter()
        .map(|c| c.get_id().pid())
        .collect()
}

/// Judges one frame body (the bytes after its length).
///
/// # Errors
/// A description, which ends the connection: the frame does not decode, or the client names
/// itself without the client prefix.
fn judge(body: &[u8], allowed: impl Fn(u64) -> bool) -> Result<Verdict, String> {
    let frame = Frame::decode(body).map_err(|e| format!("undecodable frame: {e}"))?;
    if let Some(auth) = frame.auth {
        if let Some(named) = auth.name {
            if !named.name.starts_with(ringkv_proto::CLIENT_NAME_PREFIX) {
                return Err(format!(
                    "a client node must be named {}*, not {:?}",
                    ringkv_proto::CLIENT_NAME_PREFIX,
                    named.name
                ));
            }
        }
        return Ok(Verdict::Pass);
    }
    if let Some(node) = frame.node {
        return Ok(match (node.call, node.cast) {
            (Some(call), _) if allowed(call.to) => Verdict::Pass,
            (Some(_), _) => Verdict::Drop("a call to an actor other than a KvGateway"),
            (None, Some(_)) => Verdict::Drop("a cast"),
            (None, None) => Verdict::Drop("a call reply"),
        });
    }
    if let Some(control) = frame.control {
        if control.ping.is_some() || control.pong.is_some() || control.ready.is_some() {
            return Ok(Verdict::Pass);
        }
        return Ok(Verdict::Drop(
            "a spawn, terminate, process-group or session notice",
        ));
    }
    Ok(Verdict::Drop("an empty message"))
}

/// The read half of a client node's connection (module docs): passes on only the frames a
/// client may send.
pub struct ClientFilter<R> {
    inner: R,
    /// Bytes read and not yet judged (at most one frame's worth).
    pending: Vec<u8>,
    /// Judged frames not yet handed on, from `out_at`.
    out: Vec<u8>,
    out_at: usize,
    max_frame: usize,
    peer: String,
    /// Frames dropped so far (logged).
    dropped: u64,
    /// Where reads land before they join `pending` (allocated at the first read).
    scratch: Vec<u8>,
}

impl<R> ClientFilter<R> {
    /// Filters `inner`, the read half of a connection from `peer` (an address, for logs);
    /// frames over `max_frame` bytes end it.
    pub fn new(inner: R, max_frame: usize, peer: String) -> Self {
        Self {
            inner,
            pending: Vec::new(),
            out: Vec::new(),
            out_at: 0,
            max_frame,
            peer,
            dropped: 0,
            scratch: Vec::new(),
        }
    }

    /// Judges every whole frame in `pending`, moving those that pass to `out`.
    fn judge_pending(&mut self) -> io::Result<()> {
        let allowed = gateway_pids();
        let mut at = 0;
        while self.pending.len() - at >= 8 {
            let len = u64::from_be_bytes(self.pending[at..at + 8].try_into().expect("8 bytes"));
            if len > self.max_frame as u64 {
                return Err(self.refuse(format!(
                    "a {len}-byte frame, over the client limit of {} bytes",
                    self.max_frame
                )));
            }
            let end = at + 8 + len as usize;
            if self.pending.len() < end {
                break;
            }
            match judge(&self.pending[at + 8..end], |pid| allowed.contains(&pid)) {
                Ok(Verdict::Pass) => self.out.extend_from_slice(&self.pending[at..end]),
                Ok(Verdict::Drop(what)) => {
                    self.dropped += 1;
                    tracing::debug!(peer = %self.peer, what, dropped = self.dropped, "client node frame dropped");
                }
                Err(why) => return Err(self.refuse(why)),
            }
            at = end;
        }
        self.pending.drain(..at);
        Ok(())
    }

    fn refuse(&self, why: String) -> io::Error {
        tracing::warn!(peer = %self.peer, %why, "client node connection closed");
        io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!("client node {}: {why}", self.peer),
        )
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for ClientFilter<R> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.out_at < this.out.len() {
                let n = (this.out.len() - this.out_at).min(buf.remaining());
                buf.put_slice(&this.out[this.out_at..this.out_at + n]);
                this.out_at += n;
                if this.out_at == this.out.len() {
                    this.out.clear();
                    this.out_at = 0;
                }
                return Poll::Ready(Ok(()));
            }
            // Read at most the rest of the current frame (or a header), so that `pending`
            // never holds more than one frame.
            let want = if this.pending.len() < 8 {
                8 - this.pending.len()
            } else {
                let len = u64::from_be_bytes(this.pending[..8].try_into().expect("8 bytes"));
                (8 + len as usize).saturating_sub(this.pending.len()).max(1)
            }
            .min(SCRATCH_BYTES);
            if this.scratch.is_empty() {
                this.scratch = vec![0u8; SCRATCH_BYTES];
            }
            let mut rb = ReadBuf::new(&mut this.scratch[..want]);
            match Pin::new(&mut this.inner).poll_read(cx, &mut rb) {
                Poll::Ready(Ok(())) => {}
                other => return other,
            }
            let got = rb.filled().len();
            if got == 0 {
                // End of stream (a partial frame is dropped with it).
                return Poll::Ready(Ok(()));
            }
            this.pending.extend_from_slice(&this.scratch[..got]);
            this.judge_pending()?;
        }
    }
}

/// A connection accepted on `actor-listen`, handed to the NodeServer as an external
/// transport: its read half is a [`ClientFilter`] (behind the name check of cluster TLS, when
/// the node has it), its peer label [`CLIENT_LABEL`] and the address.
pub struct ClientLink<S> {
    stream: S,
    peer_addr: SocketAddr,
    local_addr: SocketAddr,
    max_frame: usize,
    /// With cluster TLS: the client's certificate, whose names must include the one it
    /// announces.
    cert: Option<rustls::pki_types::CertificateDer<'static>>,
}

impl<S> ClusterBidiStream for ClientLink<S>
where
    S: AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    fn split(self: Box<Self>) -> (ractor_cluster::BoxRead, ractor_cluster::BoxWrite) {
        let peer = self.peer_addr.to_string();
        let (rd, wr) = tokio::io::split(self.stream);
        let rd: ractor_cluster::BoxRead = match self.cert {
            Some(cert) => Box::new(ClientFilter::new(
                NameCheck::new(rd, cert, peer.clone()),
                self.max_frame,
                peer,
            )),
            None => Box::new(ClientFilter::new(rd, self.max_frame, peer)),
        };
        (rd, Box::new(wr))
    }

    fn peer_label(&self) -> Option<String> {
        Some(format!("{CLIENT_LABEL}{}", self.peer_addr))
    }

    fn local_label(&self) -> Option<String> {
        Some(self.local_addr.to_string())
    }
}

/// Accepts client-node connections on `listener` (`actor-listen`) and hands each to
/// `server` as a filtered incoming session, after a mutual TLS handshake if `tls` is set
/// (the client's certificate must chain to the cluster CA and name the client). Frames over
/// `max_frame` bytes end a connection. Run it as a task; abort it at shutdown.
pub async fn listen(
    listener: TcpListener,
    server: ActorRef<NodeServerMessage>,
    tls: Option<Arc<ClusterTls>>,
    max_frame: usize,
) {
    let mut handshakes = tokio::task::JoinSet::new();
    loop {
        let (stream, addr) = match listener.accept().await {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "actor-listen cannot accept");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        while handshakes.try_join_next().is_some() {}
        if handshakes.len() >= crate::transport::MAX_HANDSHAKES {
            tracing::warn!(%addr, "client node connection closed: too many handshakes in progress");
            continue;
        }
        let (server, tls) = (server.clone(), tls.clone());
        handshakes.spawn(async move {
            if let Err(e) = hand_over(&server, stream, tls.as_deref(), max_frame).await {
                tracing::warn!(%addr, error = %e, "client node connection refused");
            }
        });
    }
}

async fn hand_over(
    server: &ActorRef<NodeServerMessage>,
    stream: TcpStream,
    tls: Option<&ClusterTls>,
    max_frame: usize,
) -> io::Result<()> {
    crate::transport::configure(&stream)?;
    let (peer_addr, local_addr) = (stream.peer_addr()?, stream.local_addr()?);
    let link: Box<dyn ClusterBidiStream> = match tls {
        None => Box::new(ClientLink {
            stream,
            peer_addr,
            local_addr,
            max_frame,
            cert: None,
        }),
        Some(tls) => {
            let stream = tokio::time::timeout(tls.handshake_timeout, tls.acceptor.accept(stream))
                .await
                .map_err(|_| {
                    io::Error::new(io::ErrorKind::TimedOut, "no TLS handshake in time")
                })??;
            let cert = stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .cloned()
                .ok_or_else(|| {
                    io::Error::new(io::ErrorKind::PermissionDenied, "no client certificate")
                })?;
            Box::new(ClientLink {
                stream,
                peer_addr,
                local_addr,
                max_frame,
                cert: Some(cert),
            })
        }
    };
    server
        .cast(NodeServerMessage::ConnectionOpenedExternal {
            stream: link,
            is_server: true,
        })
        .map_err(|e| io::Error::other(format!("the cluster transport stopped: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(frame: &Frame) -> Vec<u8> {
        frame.encode_to_vec()
    }

    fn call(to: u64) -> Frame {
        Frame {
            node: Some(NodeFrame {
                call: Some(Target { to }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn only_calls_to_gateways_and_liveness_frames_pass() {
        let gateway = |pid| pid == 7;
        assert_eq!(judge(&body(&call(7)), gateway), Ok(Verdict::Pass));
        assert!(matches!(
            judge(&body(&call(8)), gateway),
            Ok(Verdict::Drop(_))
        ));
        let cast = Frame {
            node: Some(NodeFrame {
                cast: Some(Target { to: 7 }),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert!(matches!(judge(&body(&cast), gateway), Ok(Verdict::Drop(_))));
        let ping = Frame {
            control: Some(ControlFrame {
                ping: Some(vec![]),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(judge(&body(&ping), gateway), Ok(Verdict::Pass));
        // A process-group join (control field 5) is dropped.
        let mut pg_join = Vec::new();
        prost::encoding::bytes::encode(5, &b"\x0a\x03grp".to_vec(), &mut pg_join);
        let mut frame = Vec::new();
        prost::encoding::bytes::encode(3, &pg_join, &mut frame);
        assert!(matches!(judge(&frame, gateway), Ok(Verdict::Drop(_))));
    }

    #[test]
    fn a_client_must_carry_the_client_prefix() {
        let named = |name: &str| Frame {
            auth: Some(AuthFrame {
                name: Some(Named { name: name.into() }),
            }),
            ..Default::default()
        };
        let ok = format!("{}cart@host", ringkv_proto::CLIENT_NAME_PREFIX);
        assert_eq!(judge(&body(&named(&ok)), |_| false), Ok(Verdict::Pass));
        assert!(judge(&body(&named("n2@host")), |_| false).is_err());
        assert!(judge(b"\xff\xff\xff", |_| false).is_err());
    }

    #[tokio::test]
    async fn frames_are_filtered_and_an_oversized_one_ends_the_stream() {
        use tokio::io::AsyncReadExt;
        let mut wire = Vec::new();
        for f in [call(1), call(99), call(1)] {
            let b = body(&f);
            wire.extend_from_slice(&(b.len() as u64).to_be_bytes());
            wire.extend_from_slice(&b);
        }
        // No gateway is registered in this test process: every call is dropped.
        let mut filter = ClientFilter::new(&wire[..], 1024, "test".into());
        let mut out = Vec::new();
        filter.read_to_end(&mut out).await.unwrap();
        assert!(out.is_empty());
        assert_eq!(filter.dropped, 3);

        let mut big = (1u64 << 40).to_be_bytes().to_vec();
        big.extend_from_slice(&[0; 16]);
        let mut filter = ClientFilter::new(&big[..], 1024, "test".into());
        let err = filter.read_to_end(&mut Vec::new()).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::PermissionDenied);
    }
}
