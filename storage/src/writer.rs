//! The group-committing writer thread shared by partitions and the hint store.
//!
//! Operations are queued on a bounded channel (at most `max_queue` waiting); a write that
//! finds it full is given back to the caller, which answers it with
//! [`StorageError::Overloaded`] instead of letting the queue grow. The thread takes every queued operation (up to a
//! maximum batch), hands the batch to the store's commit function (which applies them in one
//! write transaction, commits it with sync and answers each one) and starts again. LMDB
//! requires a write transaction to stay on the thread that began it; keeping every write
//! transaction on this one thread guarantees it, and one synced commit per batch gives the
//! group-commit rate measured in STACK-NOTES (63k durable puts/s against 1.3k for one fsync
//! per put).
//!
//! Operations queued while the commit function applies a batch may join the transaction
//! before it commits ([`Joiners`], up to the batch limit): a burst that the thread woke up in
//! the middle of still ends up in one commit instead of two.
//!
//! A store may also keep work of its own across batches (the data env's chunked partition
//! clears): its commit function says so by returning `true`, and the thread then calls it
//! again right away, with whatever was queued meanwhile (possibly nothing), instead of
//! waiting for the next operation.

use crate::env::Store;
use crate::StorageError;
use std::collections::VecDeque;
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Mutex, RwLock};
use std::thread::JoinHandle;

/// Why an operation was not queued; it is given back.
pub(crate) enum Refused<Op> {
    /// The writer is shut down.
    Closed(Op),
    /// The queue holds its maximum of operations.
    Full(Op, usize),
}

/// The operations queued after a batch was taken, which the commit function may add to the
/// transaction it has open, up to the batch limits.
pub(crate) struct Joiners<'a, Op> {
    rx: &'a Receiver<Op>,
    room: usize,
    weight: fn(&Op) -> usize,
    /// Heavy operations waiting for a later batch (see [`WriterThread::spawn`]).
    deferred: &'a mut VecDeque<Op>,
}

impl<Op> Joiners<'_, Op> {
    /// The next queued operation, if one is queued and the batch has room for it; the commit
    /// function must apply and answer it with its batch. Heavy operations queued meanwhile
    /// are set aside for the next batches.
    pub(crate) fn next(&mut self) -> Option<Op> {
        while self.room > 0 {
            let op = self.rx.try_recv().ok()?;
            if (self.weight)(&op) > HEAVY_BYTES && self.deferred.len() < MAX_DEFERRED {
                self.deferred.push_back(op);
                continue;
            }
            self.room -= 1;
            return Some(op);
        }
        None
    }
}

/// An operation whose weight is over this many bytes is **heavy** (a chunk of a large value):
/// a batch takes every light operation queued but heavy ones only up to its byte limit.
pub(crate) const HEAVY_BYTES: usize = 64 << 10;

/// Most heavy operations set aside for later batches; past it they are taken in queue order
/// (so the writer holds at most this many operations beyond its bounded queue).
pub(crate) const MAX_DEFERRED: usize = 64;

/// A writer thread and the queue feeding it.
pub(crate) struct WriterThread<Op> {
    queue: RwLock<Option<SyncSender<Op>>>,
    max_queue: usize,
    handle: Mutex<Option<JoinHandle<()>>>,
}

impl<Op: Send + 'static> WriterThread<Op> {
    /// Starts a thread named `name` that calls `commit` with batches of up to `max_batch`
    /// queued operations, in queue order, and the [`Joiners`] that may extend the batch to
    /// `max_batch`; at most `max_queue` operations wait. **Heavy** operations (`weight` over
    /// [`HEAVY_BYTES`]: chunks of large values) are set aside (at most [`MAX_DEFERRED`]) and
    /// each batch takes every light operation queued plus heavy ones up to `max_batch_bytes`
    /// (at least one): the small writes queued behind a stream of chunks wait for one chunk's
    /// commit, not for every chunk queued ahead of them. Operations are independent writes
    /// (no two of them are ordered by their callers), so this reordering is allowed. `commit` must drain the batch (answer
    /// every operation, joiners included) and returns whether it has unfinished work of
    /// its own: then it is called again at once, with the operations queued meanwhile (an
    /// empty batch if there are none), until it returns `false`; otherwise the thread waits
    /// for the next operation and never calls it with an empty batch. The thread ends once
    /// [`WriterThread::shutdown`] closed the queue, every queued operation was committed and
    /// `commit` has no unfinished work.
    ///
    /// # Errors
    /// [`StorageError::Io`] if the thread cannot be started.
    pub(crate) fn spawn(
        name: String,
        max_batch: usize,
        max_batch_bytes: usize,
        weight: fn(&Op) -> usize,
        max_queue: usize,
        mut commit: impl FnMut(&mut Vec<Op>, &mut Joiners<'_, Op>) -> bool + Send + 'static,
    ) -> Result<Self, StorageError> {
        let max_queue = max_queue.max(1);
        let (tx, rx) = mpsc::sync_channel::<Op>(max_queue);
        let max_batch = max_batch.max(1);
        let thread_name = name.clone();
        let handle = std::thread::Builder::new()
            .name(thread_name)
            .spawn(move || {
                let mut batch = Vec::with_capacity(max_batch);
                let mut unfinished = false;
                let mut deferred: VecDeque<Op> = VecDeque::new();
                let mut had_heavy = false;
                loop {
                    // With unfinished work or heavy operations set aside, take what is queued
                    // without waiting; otherwise wait for an operation (or for the queue to
                    // close, once everything set aside is committed).
                    let take = |op: Op, batch: &mut Vec<Op>, deferred: &mut VecDeque<Op>| {
                        if weight(&op) > HEAVY_BYTES && deferred.len() < MAX_DEFERRED {
                            deferred.push_back(op);
                        } else {
                            batch.push(op);
                        }
                    };
                    if !unfinished && deferred.is_empty() {
                        match rx.recv() {
                            Ok(op) => take(op, &mut batch, &mut deferred),
                            Err(_) => break,
                        }
                    }
                    while batch.len() < max_batch {
                        match rx.try_recv() {
                            Ok(op) => take(op, &mut batch, &mut deferred),
                            Err(_) => break,
                        }
                    }
                    // Heavy operations: none in a batch of light ones that follows a batch
                    // with heavy ones (light writes then commit alone, and heavy ones still
                    // get every other batch), else at least one and more while under the
                    // byte limit.
                    let mut bytes: usize = batch.iter().map(weight).sum();
                    let mut heavy = 0;
                    let light_turn = had_heavy && !batch.is_empty();
                    while !light_turn && batch.len() < max_batch {
                        let Some(w) = deferred.front().map(weight) else {
                            break;
                        };
                        if heavy > 0 && bytes.saturating_add(w) > max_batch_bytes {
                            break;
                        }
                        batch.extend(deferred.pop_front());
                        bytes = bytes.saturating_add(w);
                        heavy += 1;
                    }
                    had_heavy = heavy > 0;
                    let mut joiners = Joiners {
                        rx: &rx,
                        room: max_batch.saturating_sub(batch.len()),
                        weight,
                        deferred: &mut deferred,
                    };
                    unfinished = commit(&mut batch, &mut joiners);
                    batch.clear();
                }
                tracing::debug!(writer = %name, "writer stopped");
            })
            .map_err(StorageError::io)?;
        Ok(Self {
            queue: RwLock::new(Some(tx)),
            max_queue,
            handle: Mutex::new(Some(handle)),
        })
    }

    /// Queues `op` without blocking; gives it back if the writer is shut down or its queue
    /// is full.
    pub(crate) fn send(&self, op: Op) -> Result<(), Refused<Op>> {
        let queue = self.queue.read().unwrap_or_else(|p| p.into_inner());
        match queue.as_ref() {
            Some(tx) => tx.try_send(op).map_err(|e| match e {
                TrySendError::Full(op) => Refused::Full(op, self.max_queue),
                TrySendError::Disconnected(op) => Refused::Closed(op),
            }),
            None => Err(Refused::Closed(op)),
        }
    }

    /// Queues `op`, or hands it to `refuse` with the error to answer it with: the store is
    /// closed ([`Store::closed`]) or its queue is full ([`Store::overloaded`]).
    pub(crate) fn enqueue(&self, op: Op, store: Store, refuse: impl FnOnce(Op, StorageError)) {
        match self.send(op) {
            Ok(()) => {}
            Err(Refused::Closed(op)) => refuse(op, store.closed()),
            Err(Refused::Full(op, limit)) => refuse(op, store.overloaded(limit)),
        }
    }

    /// Closes the queue, lets the thread commit and answer everything already queued, and
    /// waits for it. Idempotent. Returns true if the thread has ended (or was already
    /// joined); false when called from the writer thread itself (a reply callback that drops
    /// the store's last handle), which cannot wait for itself: the thread then ends after the
    /// batch it is answering and what is still queued.
    pub(crate) fn shutdown(&self) -> bool {
        self.queue.write().unwrap_or_else(|p| p.into_inner()).take();
        let mut handle = self.handle.lock().unwrap_or_else(|p| p.into_inner());
        if handle
            .as_ref()
            .is_some_and(|h| h.thread().id() == std::thread::current().id())
        {
            return false;
        }
        if let Some(handle) = handle.take() {
            let _ = handle.join();
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Barrier};

    /// Light writes queued behind heavy ones commit in the next batch, alone; heavy ones
    /// follow one per batch, every other batch at least, and all of them are committed.
    #[test]
    fn light_writes_pass_queued_heavy_ones() {
        let batches: Arc<Mutex<Vec<Vec<usize>>>> = Arc::default();
        let (started, gate) = (Arc::new(Barrier::new(2)), Arc::new(Barrier::new(2)));
        let (seen, began, first) = (batches.clone(), started.clone(), gate.clone());
        let mut calls = 0;
        let writer = WriterThread::spawn(
            "test-writer".into(),
            100,
            1 << 20,
            |w: &usize| *w,
            100,
            move |batch: &mut Vec<usize>, _joiners: &mut Joiners<'_, usize>| {
                calls += 1;
                if calls == 1 {
                    // Hold the first commit until everything else is queued.
                    began.wait();
                    first.wait();
                }
                seen.lock().unwrap().push(std::mem::take(batch));
                false
            },
        )
        .unwrap();
        let heavy = 1 << 20;
        writer.send(1).ok().unwrap();
        started.wait();
        for _ in 0..3 {
            writer.send(heavy).ok().unwrap();
        }
        writer.send(2).ok().unwrap();
        writer.send(3).ok().unwrap();
        gate.wait();
        assert!(writer.shutdown());
        let batches = batches.lock().unwrap().clone();
        assert_eq!(batches[0], vec![1]);
        // Light ones first, alone or with the first heavy one...
        assert!(batches[1].starts_with(&[2, 3]), "{batches:?}");
        // ...and every heavy one committed, one per batch.
        let all: Vec<usize> = batches.concat();
        assert_eq!(
            all.iter().filter(|w| **w == heavy).count(),
            3,
            "{batches:?}"
        );
        assert!(batches
            .iter()
            .all(|b| b.iter().filter(|w| **w == heavy).count() <= 1));
    }
}
