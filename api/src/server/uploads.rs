//! The streamed uploads of one client connection (PROTOCOL.md, "Large values").
//!
//! Each open upload holds a [`ringkv_actors::large::Upload`] and reserves `(WINDOW + 2) *
//! chunk-bytes` of the node's `max-in-flight-bytes` (its chunk buffer, the chunk writes in
//! flight and their compressed copies). `put_chunk` frames of one upload run as concurrent
//! request tasks like every other frame; each waits for its `seq` turn, so frames pipelined
//! inside the window are applied in order. An upload ends with its commit, an abort, any
//! error, `upload-idle-ms` without a frame (a reaper task ends it), or the connection's end
//! (dropping this table drops every upload, which cancels its chunk writes).

use super::{ByteBudget, Reserved};
use ringkv_actors::large::{StreamError, Upload, WINDOW};
use ringkv_actors::{KvError, Node, RequestOptions};
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// Ended uploads remembered per connection, so the next frame naming one gets the reason.
const ENDED_KEPT: usize = 64;

/// `next` value that tells waiting `put_chunk` frames their upload has ended.
const ENDED: u64 = u64::MAX;

/// What a commit wrote.
pub(crate) struct Committed {
    pub(crate) written: ringkv_actors::large::Committed,
    pub(crate) bucket: Vec<u8>,
    pub(crate) key: Vec<u8>,
    pub(crate) opts: RequestOptions,
}

/// The uploads of one connection.
pub(crate) struct Uploads {
    node: Arc<Node>,
    budget: Arc<ByteBudget>,
    inner: Mutex<Inner>,
    reaping: AtomicBool,
}

#[derive(Default)]
struct Inner {
    open: HashMap<u64, Arc<Entry>>,
    ended: VecDeque<(u64, KvError)>,
}

struct Entry {
    /// The next `seq` to apply; [`ENDED`] once the upload ended.
    next: watch::Sender<u64>,
    upload: tokio::sync::Mutex<Option<Upload>>,
    last_frame: Mutex<Instant>,
    _reserved: Reserved,
}

impl Entry {
    fn touch(&self) {
        *self.last_frame.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
    }
}

impl Uploads {
    pub(crate) fn new(node: Arc<Node>, budget: Arc<ByteBudget>) -> Arc<Self> {
        Arc::new(Self {
            node,
            budget,
            inner: Mutex::new(Inner::default()),
            reaping: AtomicBool::new(false),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `put_begin`: the upload id, `chunk_bytes` and `window`.
    pub(crate) async fn begin(
        self: &Arc<Self>,
        bucket: &[u8],
        key: &[u8],
        context: &[u8],
        size: Option<u64>,
        opts: &RequestOptions,
    ) -> Result<(u64, usize, usize), KvError> {
        let config = self.node.config();
        let (max, chunk) = (config.max_uploads, config.chunk_limit());
        if self.lock().open.len() >= max {
            return Err(KvError::Overloaded(format!(
                "this connection has {max} uploads open (max-uploads): commit or abort one first"
            )));
        }
        let want = (WINDOW + 2) * chunk;
        let reserved = self.budget.try_reserve(want).ok_or_else(|| {
            KvError::Overloaded(format!(
                "the node has {} bytes of client requests, answers and uploads in flight, its maximum is {} (max-in-flight-bytes); an upload needs {want}",
                self.budget.used(),
                config.max_in_flight_bytes
            ))
        })?;
        let upload = self
            .node
            .upload_begin(bucket, key, context, size, opts)
            .await?;
        let id = loop {
            let id: u64 = rand::random();
            if id != 0 && !self.lock().open.contains_key(&id) {
                break id;
            }
        };
        let entry = Arc::new(Entry {
            next: watch::Sender::new(0),
            upload: tokio::sync::Mutex::new(Some(upload)),
            last_frame: Mutex::new(Instant::now()),
            _reserved: reserved,
        });
        self.lock().open.insert(id, entry);
        self.start_reaper();
        Ok((id, chunk, WINDOW))
    }

    /// The open upload `id`, or why there is none.
    fn entry(&self, id: u64) -> Result<Arc<Entry>, KvError> {
        let inner = self.lock();
        if let Some(e) = inner.open.get(&id) {
            return Ok(e.clone());
        }
        Err(inner
            .ended
            .iter()
            .find(|(u, _)| *u == id)
            .map(|(_, e)| e.clone())
            .unwrap_or(StreamError::UnknownUpload(id).into()))
    }

    /// Ends upload `id` for `why` (remembered for the next frame naming it) and wakes the
    /// frames waiting for their turn.
    fn end(&self, id: u64, why: KvError) {
        let mut inner = self.lock();
        if let Some(e) = inner.open.remove(&id) {
            e.next.send_replace(ENDED);
        }
        inner.ended.retain(|(u, _)| *u != id);
        if inner.ended.len() >= ENDED_KEPT {
            inner.ended.pop_front();
        }
        inner.ended.push_back((id, why));
    }

    /// Waits until `seq` is the next frame of upload `id` to apply.
    async fn turn(&self, id: u64, entry: &Entry, seq: u64) -> Result<(), KvError> {
        let mut rx = entry.next.subscribe();
        loop {
            let next = *rx.borrow_and_update();
            if next == ENDED {
                return Err(self
                    .entry(id)
                    .err()
                    .unwrap_or(StreamError::UnknownUpload(id).into()));
            }
            if seq == next {
                return Ok(());
            }
            if seq < next || seq >= next + WINDOW as u64 {
                let e: KvError = StreamError::Gap {
                    upload: id,
                    got: seq,
                    expected: next,
                    window: WINDOW,
                }
                .into();
                self.end(id, e.clone());
                return Err(e);
            }
            if rx.changed().await.is_err() {
                return Err(StreamError::UnknownUpload(id).into());
            }
        }
    }

    /// `put_chunk`: the bytes of upload `id` accepted so far.
    pub(crate) async fn chunk(&self, id: u64, seq: u64, data: &[u8]) -> Result<u64, KvError> {
        let entry = self.entry(id)?;
        entry.touch();
        let max = self.node.config().chunk_limit();
        if data.is_empty() || data.len() > max {
            let e: KvError = StreamError::BadChunk {
                len: data.len(),
                max,
            }
            .into();
            self.end(id, e.clone());
            return Err(e);
        }
        self.turn(id, &entry, seq).await?;
        let mut slot = entry.upload.lock().await;
        let Some(upload) = slot.as_mut() else {
            return Err(self
                .entry(id)
                .err()
                .unwrap_or(StreamError::UnknownUpload(id).into()));
        };
        match self.node.upload_write(upload, data).await {
            Ok(received) => {
                entry.touch();
                entry.next.send_replace(seq + 1);
                Ok(received)
            }
            Err(e) => {
                slot.take();
                self.end(id, e.clone());
                Err(e)
            }
        }
    }

    /// `put_commit`: waits for the `seq` put_chunk frames sent before it (if given), then
    /// commits.
    pub(crate) async fn commit(
        &self,
        id: u64,
        seq: Option<u64>,
        crc32: Option<u32>,
    ) -> Result<Committed, KvError> {
        let entry = self.entry(id)?;
        entry.touch();
        if let Some(seq) = seq {
            self.turn(id, &entry, seq).await?;
        }
        let upload = entry.upload.lock().await.take();
        let Some(upload) = upload else {
            return Err(self
                .entry(id)
                .err()
                .unwrap_or(StreamError::UnknownUpload(id).into()));
        };
        self.end(id, StreamError::UnknownUpload(id).into());
        let (bucket, key, opts) = upload.target();
        let (bucket, key, opts) = (bucket.to_vec(), key.to_vec(), opts.clone());
        let written = self.node.upload_commit(upload, crc32).await?;
        Ok(Committed {
            written,
            bucket,
            key,
            opts,
        })
    }

    /// `put_abort`.
    pub(crate) fn abort(&self, id: u64) {
        self.end(id, StreamError::UnknownUpload(id).into());
    }

    /// Ends the uploads idle for `upload-idle-ms`; true while some remain open.
    fn reap(&self) -> bool {
        let idle_ms = self.node.config().upload_idle_ms;
        let idle = Duration::from_millis(idle_ms);
        let expired: Vec<u64> = self
            .lock()
            .open
            .iter()
            .filter(|(_, e)| {
                e.last_frame
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .elapsed()
                    >= idle
            })
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            tracing::info!(upload = id, idle_ms, "ending an idle upload");
            self.end(
                id,
                StreamError::Idle {
                    upload: id,
                    idle_ms,
                }
                .into(),
            );
        }
        !self.lock().open.is_empty()
    }

    /// Starts the task that ends idle uploads, unless it runs; it stops once no upload is
    /// open or the connection is gone.
    fn start_reaper(self: &Arc<Self>) {
        if self.reaping.swap(true, Ordering::AcqRel) {
            return;
        }
        let weak: Weak<Self> = Arc::downgrade(self);
        let period = Duration::from_millis((self.node.config().upload_idle_ms / 4).clamp(10, 1000));
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(period).await;
                let Some(me) = weak.upgrade() else { return };
                if !me.reap() {
                    me.reaping.store(false, Ordering::Release);
                    // An upload begun between the check and the store restarts the reaper.
                    if me.lock().open.is_empty() || me.reaping.swap(true, Ordering::AcqRel) {
                        return;
                    }
                }
            }
        });
    }
}
