//! Large values (PROTOCOL.md, "Large values: streamed `put`, ranged `get`"): a streamed put
//! from any [`AsyncRead`], ranged reads, and a streamed read that is an [`AsyncRead`].
//!
//! Memory stays bounded by the windows, never by the value: a streamed put holds at most
//! `window` `put_chunk` frames of `chunk_bytes` (the node's answer to `put_begin`, capped at
//! [`MAX_PUT_WINDOW`] and [`MAX_CHUNK_BYTES`]) plus the chunk being read; a [`ValueReader`]
//! holds at most [`GetStreamOptions::window`] ranges of [`GetStreamOptions::range_bytes`]
//! plus the one being read out. Both use the connection's pipelining: frames go out at once
//! and answers are matched by id.
//!
//! Both compute the CRC-32 (IEEE, as zlib's `crc32`) of the whole value while the bytes pass:
//! a put sends it with `put_commit`, so the node refuses a value that changed on the way
//! (`checksum_mismatch`); a read compares it with the one the node holds and fails the reader
//! with [`ClientError::ChecksumMismatch`] instead of reporting the end of the value.

use crate::{checked, CallOptions, Client, ClientError, Fetched};
use ringkv_proto::{RequestFrame, ResponseFrame, ValueMeta};
use serde_bytes::ByteBuf;
use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncReadExt, ReadBuf};
use tokio::sync::oneshot;

/// Largest value the CLI and `ringkv load` write with one `put` frame, bytes (4 MiB): it fits
/// the node's default `max-frame-bytes` (8 MiB) with room for the rest of the frame. Longer
/// values are streamed with [`Client::put_stream`].
pub const SINGLE_FRAME_BYTES: u64 = 4 << 20;

/// Most bytes one `get_range` answers, bytes (4 MiB: the node's default `max-range-bytes`,
/// which a node may lower; [`ValueReader`] adapts to shorter answers).
pub const MAX_RANGE_BYTES: u64 = 4 << 20;

/// Most `put_chunk` frames a streamed put keeps unanswered, whatever window the node offers.
pub const MAX_PUT_WINDOW: usize = 8;

/// Most bytes a streamed put sends per `put_chunk`, whatever `chunk_bytes` the node offers
/// (16 MiB); smaller frames are allowed by the protocol.
pub const MAX_CHUNK_BYTES: u64 = 16 << 20;

/// Called with the number of bytes done so far: for a streamed put, the bytes the node has
/// accepted (`put_chunk`'s `received`), after each answer.
pub type Progress = Arc<dyn Fn(u64) + Send + Sync>;

/// Options of [`Client::put_stream`].
#[derive(Clone, Default)]
pub struct PutStreamOptions {
    /// Quorum, time limit (of each chunk write and of the commit), condition and time to
    /// live (`ttl`, from the commit); `r` and `local` do not apply.
    pub call: CallOptions,
    /// Causal context of an earlier read (from [`Client::get_meta`]); empty for a blind
    /// write.
    pub context: Vec<u8>,
    /// The value's length in bytes, when known: the node then refuses more
    /// (`upload_overrun`) or fewer (`upload_incomplete`) bytes.
    pub size: Option<u64>,
    /// Also answer the key's values (large ones as [`ValueMeta`] would describe them: see
    /// PROTOCOL.md) and context after the commit.
    pub return_body: bool,
    /// Told the bytes accepted so far after each chunk's answer.
    pub progress: Option<Progress>,
}

impl std::fmt::Debug for PutStreamOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PutStreamOptions")
            .field("call", &self.call)
            .field("context", &self.context.len())
            .field("size", &self.size)
            .field("return_body", &self.return_body)
            .field("progress", &self.progress.is_some())
            .finish()
    }
}

/// What a committed streamed put wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamedPut {
    /// Length of the value, bytes.
    pub size: u64,
    /// The value's version id (16 bytes), as [`ValueMeta::version`] shows it.
    pub version: Vec<u8>,
    /// CRC-32 of the value (the client's, confirmed by the node).
    pub crc32: u32,
    /// With [`PutStreamOptions::return_body`]: the key's values and context after the write.
    pub body: Option<Fetched>,
}

/// What a `get` with `meta` answers: the values (a large one as an empty vector), what each
/// is, and the context.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FetchedMeta {
    /// Live sibling values; a large value's entry is empty (read it with
    /// [`Client::get_stream_version`] or [`Client::get_range`]). Empty: not found.
    pub values: Vec<Vec<u8>>,
    /// One entry per value, same order: size, and for a large value its version and CRC-32.
    pub meta: Vec<ValueMeta>,
    /// Causal context to write back with.
    pub context: Vec<u8>,
}

/// One `get_range` answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Range {
    /// The bytes read: `min(length, max-range-bytes, size - offset)` of them.
    pub value: Vec<u8>,
    /// Where `value` starts in the whole value.
    pub offset: u64,
    /// Length of the whole value, bytes.
    pub size: u64,
    /// Version id of a large value; `None` for a small one.
    pub version: Option<Vec<u8>>,
    /// CRC-32 of the whole large value; `None` for a small one.
    pub crc32: Option<u32>,
    /// The key's causal context.
    pub context: Vec<u8>,
}

/// Options of [`Client::get_stream`] and [`Client::get_stream_version`].
#[derive(Clone, Debug)]
pub struct GetStreamOptions {
    /// Quorum (`n`, `r`) and time limit of the `get` and of each `get_range`.
    pub call: CallOptions,
    /// Bytes asked per `get_range`, 1 to [`MAX_RANGE_BYTES`] (default: that).
    pub range_bytes: u64,
    /// `get_range` requests kept in flight, at least 1 (default 3).
    pub window: usize,
}

impl Default for GetStreamOptions {
    fn default() -> Self {
        Self {
            call: CallOptions::default(),
            range_bytes: MAX_RANGE_BYTES,
            window: 3,
        }
    }
}

impl Client {
    /// Reads a key as `get` with `meta`: small values whole, large ones as empty entries
    /// described by [`FetchedMeta::meta`]. A node that does not know `meta` answers without
    /// it; every value is then described as small.
    ///
    /// # Errors
    /// [`ClientError`]; server codes as for `get` in PROTOCOL.md.
    pub async fn get_meta(
        &self,
        bucket: &[u8],
        key: &[u8],
        opts: &CallOptions,
    ) -> Result<FetchedMeta, ClientError> {
        let answer = self
            .call(opts.apply(RequestFrame {
                op: "get".into(),
                bucket: Some(ByteBuf::from(bucket)),
                key: Some(ByteBuf::from(key)),
                meta: Some(true),
                ..Default::default()
            }))
            .await?;
        let meta = answer.meta.clone();
        let Fetched { values, context } = crate::fetched(answer)?;
        let meta = match meta {
            Some(m) if m.len() == values.len() => m,
            Some(m) => {
                return Err(ClientError::Protocol(format!(
                    "get answered {} values and {} meta entries",
                    values.len(),
                    m.len()
                )))
            }
            None => values
                .iter()
                .map(|v| ValueMeta {
                    size: v.len() as u64,
                    ..Default::default()
                })
                .collect(),
        };
        Ok(FetchedMeta {
            values,
            meta,
            context,
        })
    }

    /// Reads `length` bytes (default and most: the node's `max-range-bytes`) from `offset` of
    /// the key's value, or of its version `version` (needed when the key has siblings).
    ///
    /// # Errors
    /// [`ClientError::Server`] with `not_found` (no live value, or `version` no longer
    /// live), `siblings` (no `version`, several live versions), `invalid_range` (`offset`
    /// past the end), or the codes of `get`.
    pub async fn get_range(
        &self,
        bucket: &[u8],
        key: &[u8],
        version: Option<&[u8]>,
        offset: u64,
        length: Option<u64>,
    ) -> Result<Range, ClientError> {
        self.get_range_with(
            bucket,
            key,
            version,
            offset,
            length,
            &CallOptions::default(),
        )
        .await
    }

    /// [`Client::get_range`] with per-request options (`n`, `r`, `timeout_ms`).
    ///
    /// # Errors
    /// As [`Client::get_range`].
    pub async fn get_range_with(
        &self,
        bucket: &[u8],
        key: &[u8],
        version: Option<&[u8]>,
        offset: u64,
        length: Option<u64>,
        opts: &CallOptions,
    ) -> Result<Range, ClientError> {
        let answer = self
            .call(range_frame(bucket, key, version, offset, length, opts))
            .await?;
        range(answer)
    }

    /// Streams `reader` into the key as one value: `put_begin`, then `put_chunk` frames of the
    /// node's `chunk_bytes` with up to its `window` unanswered, then, once every chunk is
    /// answered, `put_commit` with the number of chunks (`seq`) and the CRC-32 of every byte
    /// read. The value becomes visible whole at the commit, never in
    /// part. On any failure (the reader's, the node's, the connection's) the upload is
    /// aborted (`put_abort`), as it is when the returned future is dropped before the
    /// commit. Memory: at most `window + 1` chunks.
    ///
    /// # Errors
    /// [`ClientError::Source`] if `reader` fails; [`ClientError::Server`] with the stream
    /// codes of PROTOCOL.md (`upload_overrun`, `upload_incomplete`, `checksum_mismatch`,
    /// `upload_timeout`, `overloaded`, ...) or those of `put` (`condition_failed`,
    /// `quorum_failed`, ...); [`ClientError::Protocol`] if the commit's size or CRC-32 is
    /// not the client's.
    pub async fn put_stream<R: AsyncRead + Unpin>(
        &self,
        bucket: &[u8],
        key: &[u8],
        mut reader: R,
        opts: &PutStreamOptions,
    ) -> Result<StreamedPut, ClientError> {
        let mut begin = opts.call.apply(RequestFrame {
            op: "put_begin".into(),
            bucket: Some(ByteBuf::from(bucket)),
            key: Some(ByteBuf::from(key)),
            context: (!opts.context.is_empty()).then(|| ByteBuf::from(opts.context.clone())),
            size: opts.size,
            ..Default::default()
        });
        begin.r = None;
        begin.local = None;
        let answer = self.call(begin).await?;
        let upload = answer
            .upload
            .ok_or_else(|| ClientError::Protocol("put_begin answered no upload".into()))?;
        let mut guard = AbortOnDrop {
            client: self.clone(),
            upload: Some(upload),
        };
        let chunk = match answer.chunk_bytes {
            Some(c) if c > 0 => c.min(MAX_CHUNK_BYTES) as usize,
            other => {
                return Err(ClientError::Protocol(format!(
                    "put_begin answered chunk_bytes {other:?}"
                )))
            }
        };
        let window = answer.window.unwrap_or(1).clamp(1, MAX_PUT_WINDOW as u64) as usize;

        let mut crc = crc32fast::Hasher::new();
        let mut in_flight: VecDeque<oneshot::Receiver<ResponseFrame>> = VecDeque::new();
        let (mut sent, mut seq) = (0u64, 0u64);
        loop {
            if in_flight.len() >= window {
                let front = in_flight.pop_front().expect("window is at least 1");
                self.chunk_answered(front, opts).await?;
            }
            let data = read_full(&mut reader, chunk)
                .await
                .map_err(ClientError::Source)?;
            if data.is_empty() {
                break;
            }
            crc.update(&data);
            sent += data.len() as u64;
            in_flight.push_back(self.send(RequestFrame {
                op: "put_chunk".into(),
                upload: Some(upload),
                seq: Some(seq),
                data: Some(ByteBuf::from(data)),
                ..Default::default()
            })?);
            seq += 1;
        }
        while let Some(front) = in_flight.pop_front() {
            self.chunk_answered(front, opts).await?;
        }

        let crc32 = crc.finalize();
        // A commit ends the upload whatever its answer: nothing is left to abort.
        guard.upload = None;
        let answer = self
            .call(RequestFrame {
                op: "put_commit".into(),
                upload: Some(upload),
                seq: Some(seq),
                crc32: Some(u64::from(crc32)),
                return_body: opts.return_body.then_some(true),
                ..Default::default()
            })
            .await?;
        if answer.size != Some(sent) || answer.crc32 != Some(crc32) {
            return Err(ClientError::Protocol(format!(
                "put_commit answered size {:?} and crc32 {:?} for the {sent} bytes with CRC-32 {crc32:#010x} sent",
                answer.size, answer.crc32
            )));
        }
        let version = answer
            .version
            .clone()
            .map(ByteBuf::into_vec)
            .unwrap_or_default();
        let body = if opts.return_body {
            Some(crate::fetched(answer)?)
        } else {
            None
        };
        Ok(StreamedPut {
            size: sent,
            version,
            crc32,
            body,
        })
    }

    /// Waits for one `put_chunk` answer and reports progress.
    async fn chunk_answered(
        &self,
        answer: oneshot::Receiver<ResponseFrame>,
        opts: &PutStreamOptions,
    ) -> Result<(), ClientError> {
        let answer = checked(answer.await.map_err(|_| ClientError::Closed)?)?;
        if let (Some(progress), Some(received)) = (&opts.progress, answer.received) {
            progress(received);
        }
        Ok(())
    }

    /// Opens the key's value for reading as a stream: a `get` with `meta` first; a small
    /// value is then read from that answer, a large one by pipelined `get_range` requests of
    /// its version (see [`GetStreamOptions`]) whose bytes are checked against its CRC-32 at
    /// the end. Memory: at most `window + 1` ranges.
    ///
    /// # Errors
    /// [`ClientError::NotFound`] if the key holds no live value, [`ClientError::Siblings`]
    /// (listing them) if it holds several, or the errors of [`Client::get_meta`]. Errors
    /// while reading come out of the reader as I/O errors wrapping a [`ClientError`]
    /// ([`ClientError::from_io`]): [`ClientError::ChecksumMismatch`], or `not_found` if the
    /// version was replaced or deleted meanwhile.
    pub async fn get_stream(
        &self,
        bucket: &[u8],
        key: &[u8],
        opts: &GetStreamOptions,
    ) -> Result<ValueReader, ClientError> {
        let got = self.get_meta(bucket, key, &opts.call).await?;
        match got.values.len() {
            0 => Err(ClientError::NotFound {
                bucket: bucket.to_vec(),
                key: key.to_vec(),
            }),
            1 => {
                let FetchedMeta {
                    mut values,
                    mut meta,
                    context,
                } = got;
                self.reader(bucket, key, values.remove(0), meta.remove(0), context, opts)
            }
            _ => Err(ClientError::Siblings {
                versions: got.meta,
                context: got.context,
            }),
        }
    }

    /// Opens version `version` of the key (a large value's [`ValueMeta::version`], e.g. one
    /// of [`ClientError::Siblings`]'s) for reading, as [`Client::get_stream`] does.
    ///
    /// # Errors
    /// [`ClientError::NotFound`] if no live version of the key has that id; else as
    /// [`Client::get_stream`].
    pub async fn get_stream_version(
        &self,
        bucket: &[u8],
        key: &[u8],
        version: &[u8],
        opts: &GetStreamOptions,
    ) -> Result<ValueReader, ClientError> {
        let got = self.get_meta(bucket, key, &opts.call).await?;
        let found = got
            .meta
            .iter()
            .position(|m| m.version.as_deref().map(|v| &v[..]) == Some(version));
        let Some(i) = found else {
            return Err(ClientError::NotFound {
                bucket: bucket.to_vec(),
                key: key.to_vec(),
            });
        };
        let FetchedMeta {
            mut values,
            mut meta,
            context,
        } = got;
        self.reader(
            bucket,
            key,
            values.swap_remove(i),
            meta.swap_remove(i),
            context,
            opts,
        )
    }

    /// A reader of one value that a `get` with `meta` described.
    fn reader(
        &self,
        bucket: &[u8],
        key: &[u8],
        value: Vec<u8>,
        meta: ValueMeta,
        context: Vec<u8>,
        opts: &GetStreamOptions,
    ) -> Result<ValueReader, ClientError> {
        let version = meta.version.map(ByteBuf::into_vec);
        let source = match (&version, meta.large) {
            (None, true) => {
                return Err(ClientError::Protocol(
                    "get's meta describes a large value without a version".into(),
                ))
            }
            (Some(version), true) => Source::Ranges(Box::new(Ranges {
                client: self.clone(),
                bucket: bucket.to_vec(),
                key: key.to_vec(),
                version: version.clone(),
                call: opts.call.clone(),
                range_bytes: opts.range_bytes.clamp(1, MAX_RANGE_BYTES),
                window: opts.window.max(1),
                requested: 0,
                in_flight: VecDeque::new(),
                received: 0,
                hasher: crc32fast::Hasher::new(),
                failed: None,
                verified: false,
            })),
            _ => Source::Memory,
        };
        let size = match source {
            Source::Memory => value.len() as u64,
            Source::Ranges(_) => meta.size,
        };
        Ok(ValueReader {
            source,
            current: value,
            pos: 0,
            size,
            version,
            crc32: meta.crc32,
            context,
        })
    }
}

/// Sends `put_abort` for an upload unless it was committed (or the abort is no longer
/// needed): on every early return of [`Client::put_stream`], and when its future is dropped.
struct AbortOnDrop {
    client: Client,
    upload: Option<u64>,
}

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if let Some(upload) = self.upload {
            // Best effort: the answer is not awaited (its receiver is dropped at once).
            let _ = self.client.send(RequestFrame {
                op: "put_abort".into(),
                upload: Some(upload),
                ..Default::default()
            });
        }
    }
}

/// Reads until `max` bytes or the end of `r`; fewer than `max` only at the end.
async fn read_full<R: AsyncRead + Unpin>(r: &mut R, max: usize) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; max];
    let mut n = 0;
    while n < max {
        match r.read(&mut buf[n..]).await? {
            0 => break,
            k => n += k,
        }
    }
    buf.truncate(n);
    Ok(buf)
}

fn range_frame(
    bucket: &[u8],
    key: &[u8],
    version: Option<&[u8]>,
    offset: u64,
    length: Option<u64>,
    opts: &CallOptions,
) -> RequestFrame {
    let mut f = opts.apply(RequestFrame {
        op: "get_range".into(),
        bucket: Some(ByteBuf::from(bucket)),
        key: Some(ByteBuf::from(key)),
        version: version.map(ByteBuf::from),
        offset: Some(offset),
        length,
        ..Default::default()
    });
    f.w = None;
    f.if_none_match = None;
    f.if_match = None;
    f.ttl_ms = None;
    f
}

fn range(answer: ResponseFrame) -> Result<Range, ClientError> {
    let missing = |what: &str| ClientError::Protocol(format!("get_range answered no {what}"));
    Ok(Range {
        value: answer.value.ok_or_else(|| missing("value"))?.into_vec(),
        offset: answer.offset.ok_or_else(|| missing("offset"))?,
        size: answer.size.ok_or_else(|| missing("size"))?,
        version: answer.version.map(ByteBuf::into_vec),
        crc32: answer.crc32,
        context: answer.context.map(ByteBuf::into_vec).unwrap_or_default(),
    })
}

/// One value being read: an [`AsyncRead`] over its bytes, from [`Client::get_stream`] or
/// [`Client::get_stream_version`].
///
/// A large value is read by `get_range` requests of its version, kept
/// [`GetStreamOptions::window`] in flight on the client's connection; the end of the value
/// is reported (a read of 0 bytes) only after the CRC-32 of every byte matched the node's.
/// A failure is an I/O error wrapping a [`ClientError`] ([`ClientError::from_io`]) and
/// repeats on every later read. Dropping the reader abandons the requests in flight.
pub struct ValueReader {
    source: Source,
    /// The bytes being handed out: a small value whole, or the latest range.
    current: Vec<u8>,
    pos: usize,
    size: u64,
    version: Option<Vec<u8>>,
    crc32: Option<u32>,
    context: Vec<u8>,
}

impl std::fmt::Debug for ValueReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ValueReader")
            .field("size", &self.size)
            .field("large", &self.is_large())
            .field("version", &self.version)
            .field("crc32", &self.crc32)
            .finish()
    }
}

impl ValueReader {
    /// Length of the value, bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// True for a large (chunked) value, read by ranges.
    pub fn is_large(&self) -> bool {
        matches!(self.source, Source::Ranges(_))
    }

    /// The version id of a large value; `None` for a small one.
    pub fn version(&self) -> Option<&[u8]> {
        self.version.as_deref()
    }

    /// The CRC-32 the node holds for a large value; `None` for a small one.
    pub fn crc32(&self) -> Option<u32> {
        self.crc32
    }

    /// The causal context of the read, to write the key back with.
    pub fn context(&self) -> &[u8] {
        &self.context
    }
}

enum Source {
    /// A small value, whole in `current`.
    Memory,
    /// A large value, read by ranges.
    Ranges(Box<Ranges>),
}

/// The `get_range` requests of one large value.
struct Ranges {
    client: Client,
    bucket: Vec<u8>,
    key: Vec<u8>,
    version: Vec<u8>,
    call: CallOptions,
    range_bytes: u64,
    window: usize,
    /// End of the bytes asked for so far.
    requested: u64,
    /// Requests in flight, in offset order: offset, length asked, answer.
    in_flight: VecDeque<(u64, u64, oneshot::Receiver<ResponseFrame>)>,
    /// Bytes received in order (and handed to the hasher) so far.
    received: u64,
    hasher: crc32fast::Hasher,
    /// Why the read failed; repeated on every later read.
    failed: Option<Arc<ClientError>>,
    /// The CRC-32 matched: the end can be reported.
    verified: bool,
}

/// An [`ClientError`] shared by every later read of a failed [`ValueReader`].
#[derive(Debug)]
pub(crate) struct Failed(pub(crate) Arc<ClientError>);

impl std::fmt::Display for Failed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for Failed {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.0)
    }
}

impl Ranges {
    /// The next range, in order, once its answer is in; `Ok(None)` at the verified end.
    fn poll_next(
        &mut self,
        cx: &mut Context<'_>,
        size: u64,
        crc32: Option<u32>,
    ) -> Poll<Result<Option<Vec<u8>>, ClientError>> {
        if self.received == size {
            let actual = self.hasher.clone().finalize();
            return match crc32 {
                Some(expected) if expected != actual => {
                    Poll::Ready(Err(ClientError::ChecksumMismatch {
                        expected,
                        actual,
                        size,
                    }))
                }
                _ => {
                    self.verified = true;
                    Poll::Ready(Ok(None))
                }
            };
        }
        while self.in_flight.len() < self.window && self.requested < size {
            let length = self.range_bytes.min(size - self.requested);
            let frame = range_frame(
                &self.bucket,
                &self.key,
                Some(&self.version),
                self.requested,
                Some(length),
                &self.call,
            );
            let answer = self.client.send(frame)?;
            self.in_flight.push_back((self.requested, length, answer));
            self.requested += length;
        }
        let Some((offset, asked, answer)) = self.in_flight.front_mut() else {
            return Poll::Ready(Err(ClientError::Protocol(format!(
                "no range in flight at byte {} of {size}",
                self.received
            ))));
        };
        let (offset, asked) = (*offset, *asked);
        let answer = match Pin::new(answer).poll(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Err(_)) => return Poll::Ready(Err(ClientError::Closed)),
            Poll::Ready(Ok(answer)) => answer,
        };
        self.in_flight.pop_front();
        let range = range(checked(answer)?)?;
        if range.offset != offset
            || range.size != size
            || range.version.as_deref() != Some(&self.version[..])
            || range.crc32 != crc32
            || range.value.is_empty()
            || range.value.len() as u64 > asked
        {
            return Poll::Ready(Err(ClientError::Protocol(format!(
                "get_range from byte {offset} (asked {asked} bytes of a {size}-byte value) answered {} bytes from byte {} of a {}-byte value, another version or checksum",
                range.value.len(),
                range.offset,
                range.size
            ))));
        }
        let got = range.value.len() as u64;
        if got < asked {
            // The node's max-range-bytes is below ours: ask again from here, in its size.
            self.range_bytes = got;
            self.in_flight.clear();
            self.requested = offset + got;
        }
        self.hasher.update(&range.value);
        self.received += got;
        Poll::Ready(Ok(Some(range.value)))
    }
}

impl AsyncRead for ValueReader {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.pos < this.current.len() {
                let n = buf.remaining().min(this.current.len() - this.pos);
                buf.put_slice(&this.current[this.pos..this.pos + n]);
                this.pos += n;
                return Poll::Ready(Ok(()));
            }
            let Source::Ranges(ranges) = &mut this.source else {
                return Poll::Ready(Ok(()));
            };
            if let Some(e) = &ranges.failed {
                return Poll::Ready(Err(io::Error::other(Failed(e.clone()))));
            }
            if ranges.verified {
                return Poll::Ready(Ok(()));
            }
            match ranges.poll_next(cx, this.size, this.crc32) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(None)) => return Poll::Ready(Ok(())),
                Poll::Ready(Ok(Some(bytes))) => {
                    this.current = bytes;
                    this.pos = 0;
                }
                Poll::Ready(Err(e)) => {
                    ranges.in_flight.clear();
                    let e = Arc::new(e);
                    ranges.failed = Some(e.clone());
                    let kind = match *e {
                        ClientError::ChecksumMismatch { .. } => io::ErrorKind::InvalidData,
                        _ => io::ErrorKind::Other,
                    };
                    return Poll::Ready(Err(io::Error::new(kind, Failed(e))));
                }
            }
        }
    }
}
