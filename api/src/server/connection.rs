//! One client connection's plumbing: the frame reader, the answers on their way out (queued
//! for the writer task, or written by the request's own task when the connection is idle), and
//! the per-connection counters that pace the reader. [`super::serve_connection`] drives them.

use super::tls::{ClientRead, ClientWrite};
use super::Reserved;
use crate::protocol::FrameError;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::sync::{mpsc, Notify, OwnedSemaphorePermit};

/// An encoded answer on its way to the writer, with everything it holds until written: the
/// connection's in-flight permit and the bytes it counts against the node's budget.
pub(super) struct Answer {
    pub(super) bytes: Vec<u8>,
    pub(super) _permit: Option<OwnedSemaphorePermit>,
    pub(super) _reserved: Vec<Reserved>,
}

/// What the reader and the writer of one connection share.
pub(super) struct ConnState {
    /// Encoded answers queued or being written, bytes.
    pub(super) pending: AtomicUsize,
    /// Requests being served (not yet answered).
    pub(super) executing: AtomicUsize,
    /// Size of the largest recent answer, bytes, decaying by 1/8 per answer (0 before the
    /// first answer).
    pub(super) recent_answer: AtomicUsize,
    /// Signalled when `pending` or `executing` drops.
    pub(super) changed: Notify,
}

/// Requests a connection runs at once before it has answered one (its answer window starts
/// here).
const FIRST_WINDOW: usize = 16;

impl ConnState {
    /// Records the size of an answer made.
    pub(super) fn answered(&self, bytes: usize) {
        let recent = self.recent_answer.load(Ordering::Relaxed);
        let next = bytes.max(recent - recent / 8);
        self.recent_answer.store(next, Ordering::Relaxed);
    }

    /// Requests this connection may run at once: as many as `window_bytes` of answers of
    /// the largest recent size, at least 1, at most `max`.
    pub(super) fn window(&self, window_bytes: usize, max: usize) -> usize {
        match self.recent_answer.load(Ordering::Relaxed) {
            0 => FIRST_WINDOW.min(max),
            recent => (window_bytes / recent).clamp(1, max),
        }
    }
}
/// How long a stopping node waits for another request on a connection whose requests are
/// all answered, before it closes the connection.
pub(super) const SHUTDOWN_QUIET: Duration = Duration::from_millis(200);
/// Bytes of a refused frame kept to read its `id` from.
const ID_PREFIX: usize = 256;

/// Writes queued answers to the client until the queue closes; every answer already
/// queued is written before a flush, so pipelined answers share syscalls. Dropping each
/// answer after it is written releases its permit and its budget.
pub(super) async fn write_answers(
    wr: SharedWriter,
    mut rx: mpsc::Receiver<Answer>,
    conn: Arc<ConnState>,
) {
    let mut written: Vec<Answer> = Vec::new();
    while let Some(answer) = rx.recv().await {
        let mut w = wr.lock().await;
        if w.write_all(&answer.bytes).await.is_err() {
            break;
        }
        written.push(answer);
        while let Ok(answer) = rx.try_recv() {
            if w.write_all(&answer.bytes).await.is_err() {
                return;
            }
            written.push(answer);
        }
        if w.flush().await.is_err() {
            break;
        }
        drop(w);
        let bytes: usize = written.iter().map(|a| a.bytes.len()).sum();
        written.clear();
        conn.pending.fetch_sub(bytes, Ordering::AcqRel);
        conn.changed.notify_waiters();
    }
    let _ = wr.lock().await.shutdown().await;
}

/// The write half of a client connection, shared by the writer task and the request tasks.
/// Its buffer is empty whenever the lock is free (whoever writes, flushes before unlocking).
pub(super) type SharedWriter = Arc<tokio::sync::Mutex<tokio::io::BufWriter<ClientWrite>>>;

/// Writes `answer` from the request's own task when nobody else is writing to the connection
/// and the socket takes it without waiting (the common case with one request in flight), or,
/// over TLS, whenever nobody else is writing: no queue, no wake of the writer task. False if the answer must be queued instead; true if it
/// was written, or if the connection failed while writing it (the reader then ends).
pub(super) async fn write_directly(wr: &SharedWriter, answer: &[u8]) -> bool {
    let Ok(mut w) = wr.try_lock() else {
        return false;
    };
    if !w.buffer().is_empty() {
        return false;
    }
    if w.get_ref().is_tls() {
        // rustls takes the record into its buffer and writes what the socket takes; the
        // rest is written now, holding the connection, as for a partial plain write.
        let _ = async {
            w.write_all(answer).await?;
            w.flush().await
        }
        .await;
        return true;
    }
    match w.get_ref().try_write(answer) {
        Ok(n) if n == answer.len() => true,
        // The socket took part of it: write the rest now, holding the connection.
        Ok(n) => {
            let _ = async {
                w.write_all(&answer[n..]).await?;
                w.flush().await
            }
            .await;
            true
        }
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => false,
        Err(_) => true,
    }
}

/// Reads the next frame of a client connection into `buf`.
pub(super) struct FrameReader {
    pub(super) rd: BufReader<ClientRead>,
    pub(super) frame_timeout: Duration,
}

impl FrameReader {
    /// Waits up to `idle` (forever if `None`) for the first byte of a frame; false if the
    /// client closed the connection. Cancel-safe: it consumes nothing.
    pub(super) async fn wait_start(&mut self, idle: Option<Duration>) -> Result<bool, FrameError> {
        let first = match idle {
            Some(idle) => match tokio::time::timeout(idle, self.rd.fill_buf()).await {
                Ok(r) => r?.len(),
                Err(_) => return Err(FrameError::Io(std::io::ErrorKind::TimedOut.into())),
            },
            None => self.rd.fill_buf().await?.len(),
        };
        Ok(first > 0)
    }

    /// Reads the length of a frame that has started; it must arrive within
    /// `frame-timeout-ms`.
    pub(super) async fn header(&mut self) -> Result<usize, FrameError> {
        let mut len = [0u8; 4];
        match tokio::time::timeout(self.frame_timeout, self.rd.read_exact(&mut len)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                return Err(FrameError::Truncated)
            }
            Ok(Err(e)) => return Err(e.into()),
            Err(_) => return Err(FrameError::Io(std::io::ErrorKind::TimedOut.into())),
        }
        Ok(u32::from_be_bytes(len) as usize)
    }

    /// Reads a body of `len` bytes into `buf`, growing it (and `reserved`, the bytes it
    /// counts against the node's budget) as bytes arrive, never by more than the bytes
    /// already arrived (at least 8 KiB, at most 1 MiB) ahead of them, before `deadline`. Once the budget cannot grow, keeps only the first
    /// [`ID_PREFIX`] bytes, discards the rest and returns false: the frame is refused.
    pub(super) async fn body(
        &mut self,
        buf: &mut Vec<u8>,
        len: usize,
        reserved: &mut Reserved,
        deadline: Instant,
    ) -> Result<bool, FrameError> {
        buf.clear();
        let mut left = len;
        let mut admitted = true;
        let mut scratch = [0u8; 8192];
        while left > 0 {
            // Grow by what has arrived so far (doubling), from 8 KiB: memory follows the bytes
            // that came, not the length announced.
            let room = left.min(buf.len().clamp(8 << 10, 1 << 20));
            if admitted && !reserved.try_grow(room) {
                admitted = false;
                buf.truncate(ID_PREFIX);
            }
            let keep = if admitted {
                room
            } else {
                room.min(ID_PREFIX.saturating_sub(buf.len()))
            };
            let n = if keep == 0 {
                let room = room.min(scratch.len());
                tokio::time::timeout_at(deadline.into(), self.rd.read(&mut scratch[..room])).await
            } else {
                let old = buf.len();
                buf.resize(old + keep, 0);
                let r =
                    tokio::time::timeout_at(deadline.into(), self.rd.read(&mut buf[old..])).await;
                let got = match &r {
                    Ok(Ok(n)) => *n,
                    _ => 0,
                };
                buf.truncate(old + got);
                r
            };
            match n {
                Ok(Ok(0)) => return Err(FrameError::Truncated),
                Ok(Ok(n)) => left -= n,
                Ok(Err(e)) => return Err(e.into()),
                Err(_) => return Err(FrameError::Io(std::io::ErrorKind::TimedOut.into())),
            }
        }
        Ok(admitted)
    }
}
