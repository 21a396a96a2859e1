//! A partition: one LMDB environment in its own directory, written by one writer thread that
//! group-commits.
//!
//! Writes are queued to the partition's writer thread. The thread takes every queued write (up
//! to [`PartitionOptions::max_batch`]), applies them in order inside one write transaction,
//! commits it (with LMDB's default sync: data and metadata are on disk when `commit` returns)
//! and only then answers each write. Write transactions never leave that thread, so no write
//! transaction crosses an `.await` or a thread, as LMDB requires.
//!
//! Reads open a read transaction on the caller's thread (`heed::WithoutTls`, so the
//! transaction is `Send` and needs no thread-local slot); they are not blocked by the writer.
//!
//! The map starts at [`PartitionOptions::initial_map_bytes`] and doubles on `MapFull` up to
//! [`PartitionOptions::max_map_bytes`]. LMDB allows a resize only while the process has no
//! transaction open on the env, so readers hold a shared gate for the length of their
//! transaction and the writer takes it exclusively to resize.

use crate::dvv::{DvvSet, ReplicaId, VersionVector};
use crate::{keys, record, StorageError};
use heed::types::Bytes;
use heed::{Database, Env, WithoutTls};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;

/// Callback that receives the result of a queued write, after its transaction committed
/// (or failed). Called on the partition's writer thread: it must not block.
pub type WriteReply = Box<dyn FnOnce(Result<DvvSet, StorageError>) + Send>;

/// Tuning of a partition. Every field has a default ([`PartitionOptions::default`]).
#[derive(Clone, Debug)]
pub struct PartitionOptions {
    /// LMDB map size a new partition starts with, bytes. Default 64 MiB.
    pub initial_map_bytes: usize,
    /// Largest map size a partition may grow to by doubling, bytes; a write that needs more
    /// fails with [`StorageError::Full`]. Default 64 GiB (address space only: LMDB reserves,
    /// it does not allocate).
    pub max_map_bytes: usize,
    /// Most writes committed in one transaction (group commit). Default 1024.
    pub max_batch: usize,
    /// Most siblings one key may hold; a write over it fails with
    /// [`StorageError::TooManySiblings`]. Default 100.
    pub max_siblings: usize,
}

impl Default for PartitionOptions {
    fn default() -> Self {
        Self {
            initial_map_bytes: 64 << 20,
            max_map_bytes: 64 << 30,
            max_batch: 1024,
            max_siblings: 100,
        }
    }
}

enum WriteOp {
    Update {
        key: Vec<u8>,
        context: VersionVector,
        value: Option<Vec<u8>>,
        timestamp_ms: u64,
        reply: WriteReply,
    },
    Merge {
        key: Vec<u8>,
        record: DvvSet,
        reply: WriteReply,
    },
}

impl WriteOp {
    fn key(&self) -> &[u8] {
        match self {
            WriteOp::Update { key, .. } | WriteOp::Merge { key, .. } => key,
        }
    }
    fn answer(self, result: Result<DvvSet, StorageError>) {
        match self {
            WriteOp::Update { reply, .. } | WriteOp::Merge { reply, .. } => reply(result),
        }
    }
}

/// One partition's LMDB env and its writer thread. Shared as `Arc<Partition>`: the vnode that
/// serves the partition holds one, its supervisor another, so a restarted vnode gets the same
/// open env (LMDB refuses to open one path twice in a process).
pub struct Partition {
    id: u32,
    replica: ReplicaId,
    path: PathBuf,
    env: Env<WithoutTls>,
    db: Database<'static, Bytes, Bytes>,
    gate: Arc<RwLock<()>>,
    queue: RwLock<Option<Sender<WriteOp>>>,
    writer: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for Partition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Partition")
            .field("id", &self.id)
            .field("path", &self.path)
            .finish()
    }
}

impl Partition {
    /// Opens (creating if needed) partition `id` in directory `dir` and starts its writer
    /// thread. `replica` names the dots that writes coordinated here create.
    ///
    /// # Errors
    /// [`StorageError::Io`] if the directory or env cannot be opened.
    pub fn open(
        dir: &Path,
        id: u32,
        replica: ReplicaId,
        options: &PartitionOptions,
    ) -> Result<Arc<Self>, StorageError> {
        // Start with room for twice the data already there, so a restart does not begin by
        // growing the map step by step.
        let existing = std::fs::metadata(dir.join("data.mdb"))
            .map(|m| m.len() as usize)
            .unwrap_or(0);
        let map_bytes = options
            .initial_map_bytes
            .max(existing.saturating_mul(2).next_power_of_two())
            .min(options.max_map_bytes.max(existing));
        let (env, db) = crate::env::open_env::<Bytes, Bytes>(dir, map_bytes, "kv")?;

        let (tx, rx) = mpsc::channel();
        let gate = Arc::new(RwLock::new(()));
        let writer = Writer {
            id,
            replica,
            env: env.clone(),
            db,
            gate: gate.clone(),
            options: options.clone(),
        };
        let handle = std::thread::Builder::new()
            .name(format!("ringkv-writer-{id}"))
            .spawn(move || writer.run(rx))
            .map_err(StorageError::io)?;
        Ok(Arc::new(Self {
            id,
            replica,
            path: dir.to_path_buf(),
            env,
            db,
            gate,
            queue: RwLock::new(Some(tx)),
            writer: Mutex::new(Some(handle)),
        }))
    }

    /// Partition number.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// Replica id used for dots created here.
    pub fn replica(&self) -> ReplicaId {
        self.replica
    }

    /// Reads a key's state; `None` if the key was never written here.
    ///
    /// # Errors
    /// Key validation errors, [`StorageError::Corrupt`], [`StorageError::Io`].
    pub fn get(&self, bucket: &[u8], key: &[u8]) -> Result<Option<DvvSet>, StorageError> {
        let key = keys::storage_key(bucket, key)?;
        let _gate = self.gate.read().unwrap_or_else(|p| p.into_inner());
        let rtxn = self.env.read_txn().map_err(StorageError::io)?;
        match self.db.get(&rtxn, &key).map_err(StorageError::io)? {
            Some(bytes) => record::decode(bytes).map(Some),
            None => Ok(None),
        }
    }

    /// Queues a client write coordinated by this replica: `value` (`None` for a delete)
    /// replaces what `context` covers (see [`DvvSet::update`]). `reply` receives the key's new
    /// state once it is durable, or the error.
    pub fn update(
        &self,
        bucket: &[u8],
        key: &[u8],
        context: VersionVector,
        value: Option<Vec<u8>>,
        timestamp_ms: u64,
        reply: WriteReply,
    ) {
        match keys::storage_key(bucket, key) {
            Ok(key) => self.enqueue(WriteOp::Update {
                key,
                context,
                value,
                timestamp_ms,
                reply,
            }),
            Err(e) => reply(Err(e)),
        }
    }

    /// Queues a merge of another replica's state of a key (see [`DvvSet::sync`]). `reply`
    /// receives the merged state once it is durable.
    pub fn merge(&self, bucket: &[u8], key: &[u8], record: DvvSet, reply: WriteReply) {
        match keys::storage_key(bucket, key) {
            Ok(key) => self.enqueue(WriteOp::Merge { key, record, reply }),
            Err(e) => reply(Err(e)),
        }
    }

    fn enqueue(&self, op: WriteOp) {
        let queue = self.queue.read().unwrap_or_else(|p| p.into_inner());
        let op = match queue.as_ref() {
            Some(tx) => match tx.send(op) {
                Ok(()) => return,
                Err(mpsc::SendError(op)) => op,
            },
            None => op,
        };
        op.answer(Err(StorageError::Closed(self.id)));
    }

    /// Number of keys stored (tombstones included).
    ///
    /// # Errors
    /// [`StorageError::Io`].
    pub fn len(&self) -> Result<u64, StorageError> {
        let _gate = self.gate.read().unwrap_or_else(|p| p.into_inner());
        let rtxn = self.env.read_txn().map_err(StorageError::io)?;
        self.db.len(&rtxn).map_err(StorageError::io)
    }

    /// True if no key is stored.
    ///
    /// # Errors
    /// [`StorageError::Io`].
    pub fn is_empty(&self) -> Result<bool, StorageError> {
        Ok(self.len()? == 0)
    }

    /// Current LMDB map size, bytes.
    pub fn map_size(&self) -> usize {
        self.env.info().map_size
    }

    /// Stops taking writes, lets the writer thread commit and answer everything already
    /// queued, and waits for it. Idempotent. Writes queued afterwards fail with
    /// [`StorageError::Closed`].
    pub fn shutdown(&self) {
        self.queue.write().unwrap_or_else(|p| p.into_inner()).take();
        let handle = self.writer.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(handle) = handle {
            let _ = handle.join();
        }
    }
}

impl Drop for Partition {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// State of the writer thread.
struct Writer {
    id: u32,
    replica: ReplicaId,
    env: Env<WithoutTls>,
    db: Database<'static, Bytes, Bytes>,
    gate: Arc<RwLock<()>>,
    options: PartitionOptions,
}

/// Why a batch's transaction did not commit.
enum Abort {
    MapFull,
    Failed(StorageError),
}

impl From<heed::Error> for Abort {
    fn from(e: heed::Error) -> Self {
        match e {
            heed::Error::Mdb(heed::MdbError::MapFull) => Abort::MapFull,
            e => Abort::Failed(StorageError::io(e)),
        }
    }
}

impl Writer {
    fn run(self, rx: Receiver<WriteOp>) {
        let mut batch = Vec::with_capacity(self.options.max_batch);
        while let Ok(op) = rx.recv() {
            batch.push(op);
            while batch.len() < self.options.max_batch {
                match rx.try_recv() {
                    Ok(op) => batch.push(op),
                    Err(_) => break,
                }
            }
            self.commit_batch(&mut batch);
        }
        tracing::debug!(partition = self.id, "writer stopped");
    }

    /// Applies and commits `batch` (draining it), then answers each write.
    fn commit_batch(&self, batch: &mut Vec<WriteOp>) {
        let results = loop {
            match self.try_commit(batch) {
                Ok(results) => break results,
                Err(Abort::MapFull) => {
                    if let Err(e) = self.grow() {
                        break vec![Err(e); batch.len()];
                    }
                }
                Err(Abort::Failed(e)) => {
                    tracing::error!(partition = self.id, error = %e, "write transaction failed");
                    let e = if e.to_string().contains("No space left") {
                        StorageError::Full {
                            partition: self.id,
                            detail: "the disk is full".into(),
                        }
                    } else {
                        e
                    };
                    break vec![Err(e); batch.len()];
                }
            }
        };
        for (op, result) in batch.drain(..).zip(results) {
            op.answer(result);
        }
    }

    fn try_commit(&self, batch: &[WriteOp]) -> Result<Vec<Result<DvvSet, StorageError>>, Abort> {
        let mut wtxn = self.env.write_txn()?;
        let mut results = Vec::with_capacity(batch.len());
        for op in batch {
            let current = match self.db.get(&wtxn, op.key())? {
                Some(bytes) => match record::decode(bytes) {
                    Ok(d) => d,
                    Err(e) => {
                        results.push(Err(e));
                        continue;
                    }
                },
                None => DvvSet::new(),
            };
            let next = match op {
                WriteOp::Update {
                    context,
                    value,
                    timestamp_ms,
                    ..
                } => {
                    let mut next = current;
                    match next.update(
                        context,
                        self.replica,
                        value.clone(),
                        *timestamp_ms,
                        self.options.max_siblings,
                    ) {
                        Ok(_) => next,
                        Err(l) => {
                            results.push(Err(StorageError::TooManySiblings { limit: l.limit }));
                            continue;
                        }
                    }
                }
                WriteOp::Merge { record, .. } => {
                    if current.descends(record) {
                        results.push(Ok(current));
                        continue;
                    }
                    current.sync(record)
                }
            };
            self.db.put(&mut wtxn, op.key(), &record::encode(&next))?;
            results.push(Ok(next));
        }
        wtxn.commit()?;
        Ok(results)
    }

    /// Doubles the map size, waiting for open read transactions to end first.
    fn grow(&self) -> Result<(), StorageError> {
        let current = self.env.info().map_size;
        if current >= self.options.max_map_bytes {
            return Err(StorageError::Full {
                partition: self.id,
                detail: format!(
                    "the map reached its maximum of {} bytes (max_map_bytes)",
                    self.options.max_map_bytes
                ),
            });
        }
        let next = current.saturating_mul(2).min(self.options.max_map_bytes);
        let _exclusive = self.gate.write().unwrap_or_else(|p| p.into_inner());
        // SAFETY: the writer thread has no transaction open here, and readers hold the gate
        // for the length of theirs, so no transaction is open on this env in the process.
        unsafe { self.env.resize(next) }.map_err(StorageError::io)?;
        tracing::info!(partition = self.id, map_bytes = next, "grew LMDB map");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc::sync_channel;

    fn put(
        p: &Partition,
        key: &[u8],
        ctx: VersionVector,
        value: Option<&[u8]>,
    ) -> Result<DvvSet, StorageError> {
        let (tx, rx) = sync_channel(1);
        p.update(
            b"b",
            key,
            ctx,
            value.map(|v| v.to_vec()),
            0,
            Box::new(move |r| {
                let _ = tx.send(r);
            }),
        );
        rx.recv().unwrap()
    }

    #[test]
    fn writes_are_durable_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let p = Partition::open(dir.path(), 0, 7, &PartitionOptions::default()).unwrap();
            put(&p, b"k", VersionVector::new(), Some(b"v")).unwrap();
            p.shutdown();
        }
        let p = Partition::open(dir.path(), 0, 7, &PartitionOptions::default()).unwrap();
        let d = p.get(b"b", b"k").unwrap().unwrap();
        assert_eq!(d.values().collect::<Vec<_>>(), vec![b"v".as_slice()]);
        assert_eq!(p.get(b"b", b"missing").unwrap(), None);
    }

    #[test]
    fn map_grows_on_map_full_and_stops_at_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let opts = PartitionOptions {
            initial_map_bytes: 1 << 20,
            max_map_bytes: 8 << 20,
            ..Default::default()
        };
        let p = Partition::open(dir.path(), 3, 7, &opts).unwrap();
        let value = vec![7u8; 64 << 10];
        let mut stored = 0;
        let mut full = None;
        for i in 0..400u32 {
            match put(&p, &i.to_be_bytes(), VersionVector::new(), Some(&value)) {
                Ok(_) => stored += 1,
                Err(e) => {
                    full = Some(e);
                    break;
                }
            }
        }
        assert!(p.map_size() > 1 << 20, "map did not grow");
        assert!(stored > 16, "only {stored} values fit");
        let err = full.expect("an 8 MiB map cannot hold 25 MiB");
        assert!(
            matches!(err, StorageError::Full { partition: 3, .. }),
            "{err}"
        );
        // Everything acknowledged before is still there and readable.
        for i in 0..stored as u32 {
            assert!(p.get(b"b", &i.to_be_bytes()).unwrap().is_some());
        }
    }

    #[test]
    fn group_commit_answers_every_queued_write() {
        let dir = tempfile::tempdir().unwrap();
        let p = Partition::open(dir.path(), 0, 7, &PartitionOptions::default()).unwrap();
        let (tx, rx) = mpsc::channel();
        for i in 0..2000u32 {
            let tx = tx.clone();
            p.update(
                b"b",
                &i.to_be_bytes(),
                VersionVector::new(),
                Some(vec![1; 100]),
                0,
                Box::new(move |r| {
                    let _ = tx.send(r.is_ok());
                }),
            );
        }
        drop(tx);
        assert_eq!(rx.iter().filter(|ok| *ok).count(), 2000);
        assert_eq!(p.len().unwrap(), 2000);
    }

    #[test]
    fn invalid_keys_and_closed_partitions_answer_errors() {
        let dir = tempfile::tempdir().unwrap();
        let p = Partition::open(dir.path(), 5, 7, &PartitionOptions::default()).unwrap();
        assert!(matches!(
            put(&p, b"", VersionVector::new(), Some(b"v")),
            Err(StorageError::EmptyKey { .. })
        ));
        p.shutdown();
        assert_eq!(
            put(&p, b"k", VersionVector::new(), Some(b"v")).unwrap_err(),
            StorageError::Closed(5)
        );
    }

    #[test]
    fn merge_keeps_concurrent_and_skips_dominated() {
        let dir = tempfile::tempdir().unwrap();
        let p = Partition::open(dir.path(), 0, 1, &PartitionOptions::default()).unwrap();
        let ours = put(&p, b"k", VersionVector::new(), Some(b"ours")).unwrap();
        let mut theirs = DvvSet::new();
        theirs
            .update(&VersionVector::new(), 2, Some(b"theirs".to_vec()), 0, 10)
            .unwrap();
        let (tx, rx) = sync_channel(1);
        p.merge(
            b"b",
            b"k",
            theirs,
            Box::new(move |r| {
                let _ = tx.send(r);
            }),
        );
        let merged = rx.recv().unwrap().unwrap();
        assert_eq!(merged.values().count(), 2);
        let (tx, rx) = sync_channel(1);
        p.merge(
            b"b",
            b"k",
            ours,
            Box::new(move |r| {
                let _ = tx.send(r);
            }),
        );
        assert_eq!(rx.recv().unwrap().unwrap(), merged);
    }
}
