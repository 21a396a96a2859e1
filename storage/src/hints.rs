//! The durable hint store, for hinted handoff (Dynamo, DeCandia et al., SOSP 2007, §4.6).
//!
//! When a write's preferred replica is unreachable, another node takes the write for it and
//! keeps a *hint*: the key's state and the name of the node it belongs to (its *owner*). Once
//! the owner is back, the hints are handed to it (merged there) and removed here. Hints must
//! survive a restart of the node that keeps them, so they live in an LMDB env of their own at
//! `<data_dir>/hints`, written by a group-committing writer thread like a partition's (see
//! [`crate::partition`]): a hint is on disk before [`HintStore::put`] answers.
//!
//! Layout of the `hints` database:
//!
//! * key: `[owner name length: u8][owner name][seq: u64 BE]`, so that one owner's hints are
//!   contiguous and in the order they were put. `seq` is one counter for the whole store,
//!   increasing with every hint put and continued after a restart (from the largest stored
//!   seq + 1): a hint put again for the same key gets a new entry, so removing the entries
//!   of a handed-off batch never removes a hint put after that batch was read.
//! * value: `[HINT_V1][msgpack map of the Hint]` (named fields, as [`crate::record`]).

use crate::env::{Abort, GrowableEnv, Store};
use crate::writer::WriterThread;
use crate::{DvvSet, StorageError};
use heed::types::Bytes;
use heed::Database;
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Version byte of the current hint value format.
pub const HINT_V1: u8 = 1;
/// Map size a new hint store starts with, bytes (64 MiB). A store that holds data starts with
/// room for twice its file.
pub const HINTS_INITIAL_MAP_BYTES: usize = 64 << 20;
/// Largest map size the hint store may grow to by doubling, bytes (64 GiB of address space);
/// a put that needs more fails with [`StorageError::HintStoreFull`].
pub const HINTS_MAX_MAP_BYTES: usize = 64 << 30;
/// Most operations committed in one transaction (group commit).
pub const HINTS_MAX_BATCH: usize = 1024;
/// Most hint writes waiting for the hint store's writer; more are refused with
/// [`StorageError::Overloaded`].
pub const HINTS_MAX_QUEUE: usize = 16 * HINTS_MAX_BATCH;
/// Largest owner name, bytes (its length is stored in one byte).
pub const MAX_OWNER_LEN: usize = 255;

/// A write kept for a replica that was unreachable: the key's state to merge there.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hint {
    /// Partition of the key.
    pub partition: u32,
    /// Bucket name.
    pub bucket: ByteBuf,
    /// Key within the bucket.
    pub key: ByteBuf,
    /// The key's state, to merge at the owner ([`crate::Partition::merge`]).
    pub record: DvvSet,
}

/// One hint for a key, as [`HintStore::hints_for`] lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeldHint {
    /// The node the hint is for (the replica that was unreachable).
    pub owner: String,
    /// The hint's store-wide sequence number ([`HintId::seq`]): later hints have larger ones.
    pub seq: u64,
    /// The key's state the hint carries.
    pub record: DvvSet,
}

/// What [`HintStore::hints_for`] found for one key.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeyHints {
    /// Hints pending for the key, over all owners (the key index's count).
    pub pending: u64,
    /// The first of them in store order, at most the `max_listed` asked for.
    pub listed: Vec<HeldHint>,
    /// Stored hints the scan looked at (of every key).
    pub scanned: u64,
    /// False if the scan stopped at its bound before it found every pending hint of the key.
    pub complete: bool,
}

/// Identity of one stored hint (its LMDB key: `[owner length][owner][seq: u64 BE]`), as
/// returned by [`HintStore::batch`] and given back to [`HintStore::remove`].
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct HintId(Vec<u8>);

impl HintId {
    /// The store-wide sequence number of the hint: hints put later have larger ones.
    pub fn seq(&self) -> u64 {
        self.0
            .last_chunk::<8>()
            .map(|b| u64::from_be_bytes(*b))
            .unwrap_or(0)
    }

    /// The raw key bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

/// Callback that receives the result of [`HintStore::put`] once the hint is durable. Called
/// on the store's writer thread: it must not block.
pub type PutReply = Box<dyn FnOnce(Result<(), StorageError>) + Send>;
/// Callback that receives how many entries [`HintStore::remove`] deleted, once that is
/// durable. Called on the store's writer thread: it must not block.
pub type RemoveReply = Box<dyn FnOnce(Result<usize, StorageError>) + Send>;

/// One queued operation of the writer thread.
enum HintOp {
    /// `prefix` is `[owner length][owner]`; the writer appends the seq.
    Put {
        prefix: Vec<u8>,
        value: Vec<u8>,
        /// Key of the hint's entry in the `by_key` index, and the hinted record.
        index: (Vec<u8>, DvvSet),
        reply: PutReply,
    },
    Remove {
        ids: Vec<HintId>,
        reply: RemoveReply,
    },
}

enum Outcome {
    Put(Result<(), StorageError>),
    Removed(Result<usize, StorageError>),
}

impl HintOp {
    fn failed(&self, e: StorageError) -> Outcome {
        match self {
            HintOp::Put { .. } => Outcome::Put(Err(e)),
            HintOp::Remove { .. } => Outcome::Removed(Err(e)),
        }
    }

    fn answer(self, outcome: Outcome) {
        // `try_commit` makes each outcome from its own operation, so the kinds always match.
        let mismatch = || StorageError::Io("internal error: outcome of another operation".into());
        match (self, outcome) {
            (HintOp::Put { reply, .. }, Outcome::Put(r)) => reply(r),
            (HintOp::Remove { reply, .. }, Outcome::Removed(r)) => reply(r),
            (HintOp::Put { reply, .. }, Outcome::Removed(_)) => reply(Err(mismatch())),
            (HintOp::Remove { reply, .. }, Outcome::Put(_)) => reply(Err(mismatch())),
        }
    }
}

/// `[owner length: u8][owner]`, the key prefix of an owner's hints.
///
/// # Errors
/// [`StorageError::InvalidArgument`] unless the owner name is 1 to 255 bytes.
fn owner_prefix(owner: &str) -> Result<Vec<u8>, StorageError> {
    if owner.is_empty() || owner.len() > MAX_OWNER_LEN {
        return Err(StorageError::InvalidArgument(format!(
            "a hint owner name needs 1 to {MAX_OWNER_LEN} bytes, not {}",
            owner.len()
        )));
    }
    let mut out = Vec::with_capacity(1 + owner.len() + 8);
    out.push(owner.len() as u8);
    out.extend_from_slice(owner.as_bytes());
    Ok(out)
}

/// Splits a hint key into its owner prefix (`[length][name]`) and seq.
///
/// # Errors
/// [`StorageError::Corrupt`] if the key is not `[n][n bytes][8 bytes]`.
fn split_key(key: &[u8]) -> Result<(&[u8], u64), StorageError> {
    let corrupt = || StorageError::Corrupt(format!("hint key of {} bytes is malformed", key.len()));
    let len = *key.first().ok_or_else(corrupt)? as usize;
    if len == 0 || key.len() != 1 + len + 8 {
        return Err(corrupt());
    }
    let (prefix, seq) = key.split_at(1 + len);
    let seq: [u8; 8] = seq.try_into().map_err(|_| corrupt())?;
    Ok((prefix, u64::from_be_bytes(seq)))
}

/// Key of a hint in the `by_key` index: `[partition: u32 BE][xxh3-128 of bucket and key]`
/// (fixed size, so any stored key fits LMDB's 511-byte limit).
fn index_key(hint: &Hint) -> Vec<u8> {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    h.update(&[hint.bucket.len() as u8]);
    h.update(&hint.bucket);
    h.update(&hint.key);
    let mut out = Vec::with_capacity(20);
    out.extend_from_slice(&hint.partition.to_be_bytes());
    out.extend_from_slice(&h.digest128().to_be_bytes());
    out
}

/// A `by_key` value: `[pending hints of the key: u32 BE][record]` where the record is the
/// merge (DVV sync) of every pending hint's record for the key.
fn encode_indexed(count: u32, record: &DvvSet) -> Vec<u8> {
    let mut out = count.to_be_bytes().to_vec();
    out.extend_from_slice(&crate::record::encode(record));
    out
}

fn decode_indexed(bytes: &[u8]) -> Result<(u32, DvvSet), StorageError> {
    let (count, record) = bytes
        .split_first_chunk::<4>()
        .ok_or_else(|| StorageError::Corrupt("hint index entry under 4 bytes".into()))?;
    Ok((u32::from_be_bytes(*count), crate::record::decode(record)?))
}

fn encode_hint(hint: &Hint) -> Result<Vec<u8>, StorageError> {
    let mut out = Vec::with_capacity(64 + hint.bucket.len() + hint.key.len());
    out.push(HINT_V1);
    rmp_serde::encode::write_named(&mut out, hint)
        .map_err(|e| StorageError::InvalidArgument(format!("hint does not encode: {e}")))?;
    Ok(out)
}

fn decode_hint(bytes: &[u8]) -> Result<Hint, StorageError> {
    match bytes.split_first() {
        Some((&HINT_V1, body)) => {
            rmp_serde::from_slice(body).map_err(|e| StorageError::Corrupt(format!("hint: {e}")))
        }
        Some((v, _)) => Err(StorageError::Corrupt(format!("unknown hint version {v}"))),
        None => Err(StorageError::Corrupt("empty hint".into())),
    }
}

/// The node's hint store: an LMDB env of its own and its writer thread. Shared as
/// `Arc<HintStore>` ([`crate::DataDir::hints`]).
pub struct HintStore {
    path: PathBuf,
    genv: Arc<GrowableEnv>,
    db: Database<'static, Bytes, Bytes>,
    by_key: Database<'static, Bytes, Bytes>,
    writer: WriterThread<HintOp>,
}

impl std::fmt::Debug for HintStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HintStore")
            .field("path", &self.path)
            .finish()
    }
}

impl HintStore {
    /// Opens (creating if needed) the hint store in directory `dir` (a node keeps it at
    /// `<data_dir>/hints`), finds where its seq counter continues and starts its writer
    /// thread.
    ///
    /// # Errors
    /// [`StorageError::Io`] if the directory or env cannot be opened,
    /// [`StorageError::Corrupt`] if a stored key is malformed.
    pub fn open(dir: &Path) -> Result<Arc<HintStore>, StorageError> {
        Self::open_with_map(dir, HINTS_INITIAL_MAP_BYTES, HINTS_MAX_MAP_BYTES)
    }

    /// [`HintStore::open`] with another initial and largest map size, bytes.
    pub(crate) fn open_with_map(
        dir: &Path,
        initial_map_bytes: usize,
        max_map_bytes: usize,
    ) -> Result<Arc<HintStore>, StorageError> {
        let map_bytes = crate::env::starting_map_bytes(dir, initial_map_bytes, max_map_bytes);
        let (env, db) = crate::env::open_env::<Bytes, Bytes>(dir, map_bytes, "hints")?;
        let by_key = crate::env::create_database::<Bytes, Bytes>(&env, "by_key")?;
        let genv = Arc::new(GrowableEnv::new(env, max_map_bytes, Store::Hints));
        let next_seq = Self::largest_seq(&genv, db)?.map_or(0, |s| s.saturating_add(1));
        let mut writer = HintWriter {
            genv: genv.clone(),
            db,
            by_key,
            next_seq,
        };
        let writer = WriterThread::spawn(
            "ringkv-hints".into(),
            HINTS_MAX_BATCH,
            usize::MAX,
            |_| 0,
            HINTS_MAX_QUEUE,
            move |batch, _joiners| writer.commit_batch(batch),
        )?;
        Ok(Arc::new(Self {
            path: dir.to_path_buf(),
            genv,
            db,
            by_key,
            writer,
        }))
    }

    /// The largest seq stored, over all owners: the last key of each owner's range, found by
    /// jumping from owner to owner (one seek per owner, not a scan).
    fn largest_seq(
        genv: &GrowableEnv,
        db: Database<'static, Bytes, Bytes>,
    ) -> Result<Option<u64>, StorageError> {
        genv.read(|rtxn| {
            let mut largest: Option<u64> = None;
            let mut after: Option<Vec<u8>> = None;
            loop {
                let start = match &after {
                    Some(k) => Bound::Excluded(k.as_slice()),
                    None => Bound::Unbounded,
                };
                let first = db
                    .range(rtxn, &(start, Bound::Unbounded))
                    .map_err(StorageError::io)?
                    .next()
                    .transpose()
                    .map_err(StorageError::io)?;
                let Some((key, _)) = first else {
                    return Ok(largest);
                };
                let (prefix, _) = split_key(key)?;
                let last = db
                    .rev_prefix_iter(rtxn, prefix)
                    .map_err(StorageError::io)?
                    .next()
                    .transpose()
                    .map_err(StorageError::io)?;
                if let Some((last, _)) = last {
                    let (_, seq) = split_key(last)?;
                    largest = largest.max(Some(seq));
                }
                // Every key of this owner is `prefix` + 8 bytes, so this is past all of them.
                let mut past = prefix.to_vec();
                past.extend_from_slice(&[0xff; 8]);
                after = Some(past);
            }
        })
    }

    /// Queues `hint` for `owner` (the name of the node it belongs to, 1 to 255 bytes).
    /// `reply` receives `Ok` once the hint is durable, [`StorageError::InvalidArgument`] for
    /// a bad owner name, [`StorageError::HintStoreFull`] or [`StorageError::HintStoreClosed`].
    pub fn put(&self, owner: &str, hint: Hint, reply: PutReply) {
        let prepared = owner_prefix(owner).and_then(|p| Ok((p, encode_hint(&hint)?)));
        match prepared {
            Ok((prefix, value)) => self.enqueue(HintOp::Put {
                prefix,
                value,
                index: (index_key(&hint), hint.record),
                reply,
            }),
            Err(e) => reply(Err(e)),
        }
    }

    /// Queues the deletion of exactly the entries `ids` (from [`HintStore::batch`]). `reply`
    /// receives how many of them were still stored, once the deletion is durable.
    pub fn remove(&self, ids: Vec<HintId>, reply: RemoveReply) {
        self.enqueue(HintOp::Remove { ids, reply });
    }

    fn enqueue(&self, op: HintOp) {
        self.writer.enqueue(op, self.genv.store(), |op, e| {
            let outcome = op.failed(e);
            op.answer(outcome);
        });
    }

    /// The merge of every pending hint's record for `(partition, bucket, key)`, whatever
    /// their owners: what this node answers, as a fallback, to a sloppy read. `None` if it
    /// holds no hint for the key.
    ///
    /// # Errors
    /// [`StorageError::Io`], [`StorageError::Corrupt`].
    pub fn get_hinted(
        &self,
        partition: u32,
        bucket: &[u8],
        key: &[u8],
    ) -> Result<Option<DvvSet>, StorageError> {
        let probe = Hint {
            partition,
            bucket: ByteBuf::from(bucket.to_vec()),
            key: ByteBuf::from(key.to_vec()),
            record: DvvSet::new(),
        };
        let index = index_key(&probe);
        self.genv.read(
            |rtxn| match self.by_key.get(rtxn, &index).map_err(StorageError::io)? {
                Some(bytes) => Ok(Some(decode_indexed(bytes)?.1)),
                None => Ok(None),
            },
        )
    }

    /// The hints this node holds for `(partition, bucket, key)`, with their owners: the first
    /// `max_listed` in store order (owner, then age), for inspection (`ringkv explain`).
    ///
    /// The key index answers at once when no hint of the key is pending. Otherwise the hints
    /// are scanned in store order, decoding only the partition, bucket and key of each until
    /// one matches, and the scan stops once it has seen as many matches as the index counts,
    /// or after `max_scanned` entries (then [`KeyHints::complete`] is false and some of the
    /// key's hints may be left out of [`KeyHints::listed`]). One read transaction; call it off
    /// the async workers.
    ///
    /// # Errors
    /// [`StorageError::Corrupt`] for a malformed key or an undecodable hint of this key,
    /// [`StorageError::Io`].
    pub fn hints_for(
        &self,
        partition: u32,
        bucket: &[u8],
        key: &[u8],
        max_listed: usize,
        max_scanned: usize,
    ) -> Result<KeyHints, StorageError> {
        /// The fields of a stored hint that say which key it is for (the record is skipped).
        #[derive(Deserialize)]
        struct Head {
            partition: u32,
            bucket: ByteBuf,
            key: ByteBuf,
        }
        let probe = Hint {
            partition,
            bucket: ByteBuf::from(bucket.to_vec()),
            key: ByteBuf::from(key.to_vec()),
            record: DvvSet::new(),
        };
        let index = index_key(&probe);
        self.genv.read(|rtxn| {
            let pending = match self.by_key.get(rtxn, &index).map_err(StorageError::io)? {
                Some(bytes) => u64::from(decode_indexed(bytes)?.0),
                None => 0,
            };
            let mut out = KeyHints {
                pending,
                listed: Vec::new(),
                scanned: 0,
                complete: true,
            };
            let mut found = 0u64;
            if pending == 0 {
                return Ok(out);
            }
            for entry in self.db.iter(rtxn).map_err(StorageError::io)? {
                if found >= pending {
                    break;
                }
                if out.scanned >= max_scanned as u64 {
                    out.complete = false;
                    break;
                }
                out.scanned += 1;
                let (stored_key, value) = entry.map_err(StorageError::io)?;
                let head: Option<Head> = match value.split_first() {
                    Some((&HINT_V1, body)) => rmp_serde::from_slice(body).ok(),
                    _ => None,
                };
                let Some(head) = head else { continue };
                if head.partition != partition || head.bucket != bucket || head.key != key {
                    continue;
                }
                found += 1;
                if out.listed.len() < max_listed {
                    let (prefix, seq) = split_key(stored_key)?;
                    let owner = String::from_utf8_lossy(&prefix[1..]).into_owned();
                    let hint = decode_hint(value)?;
                    out.listed.push(HeldHint {
                        owner,
                        seq,
                        record: hint.record,
                    });
                }
            }
            Ok(out)
        })
    }

    /// Every owner with pending hints and how many, in owner-key order (by name length, then
    /// name). Scans the whole store.
    ///
    /// # Errors
    /// [`StorageError::Corrupt`] for a malformed key, [`StorageError::Io`].
    pub fn owners(&self) -> Result<Vec<(String, u64)>, StorageError> {
        self.genv.read(|rtxn| {
            let mut out: Vec<(String, u64)> = Vec::new();
            let mut current: Option<Vec<u8>> = None;
            for entry in self.db.iter(rtxn).map_err(StorageError::io)? {
                let (key, _) = entry.map_err(StorageError::io)?;
                let (prefix, _) = split_key(key)?;
                match (&current, out.last_mut()) {
                    (Some(c), Some((_, n))) if c.as_slice() == prefix => *n += 1,
                    _ => {
                        let name = std::str::from_utf8(&prefix[1..])
                            .map_err(|e| StorageError::Corrupt(format!("hint owner name: {e}")))?;
                        out.push((name.to_string(), 1));
                        current = Some(prefix.to_vec());
                    }
                }
            }
            Ok(out)
        })
    }

    /// Up to `limit` of `owner`'s hints, oldest (smallest seq) first.
    ///
    /// # Errors
    /// [`StorageError::InvalidArgument`] for a bad owner name, [`StorageError::Corrupt`] if
    /// a hint does not decode (its seq is in the message), [`StorageError::Io`].
    pub fn batch(&self, owner: &str, limit: usize) -> Result<Vec<(HintId, Hint)>, StorageError> {
        let prefix = owner_prefix(owner)?;
        self.genv.read(|rtxn| {
            let mut out = Vec::new();
            for entry in self
                .db
                .prefix_iter(rtxn, &prefix)
                .map_err(StorageError::io)?
                .take(limit)
            {
                let (key, value) = entry.map_err(StorageError::io)?;
                let hint = decode_hint(value).map_err(|e| {
                    let seq = split_key(key).map(|(_, s)| s).unwrap_or(0);
                    StorageError::Corrupt(format!("hint {seq} for {owner}: {e}"))
                })?;
                out.push((HintId(key.to_vec()), hint));
            }
            Ok(out)
        })
    }

    /// Number of hints stored, over all owners.
    ///
    /// # Errors
    /// [`StorageError::Io`].
    pub fn len(&self) -> Result<u64, StorageError> {
        self.genv
            .read(|rtxn| self.db.len(rtxn).map_err(StorageError::io))
    }

    /// How much of the hint env's map is used: the high-water mark, the map size and its
    /// maximum.
    pub fn map_usage(&self) -> crate::MapUsage {
        self.genv.usage()
    }

    /// True if no hint is stored.
    ///
    /// # Errors
    /// [`StorageError::Io`].
    pub fn is_empty(&self) -> Result<bool, StorageError> {
        Ok(self.len()? == 0)
    }

    /// Stops taking writes, lets the writer thread commit and answer everything already
    /// queued, and waits for it. Idempotent. Operations queued afterwards fail with
    /// [`StorageError::HintStoreClosed`].
    pub fn shutdown(&self) {
        self.writer.shutdown();
    }
}

impl Drop for HintStore {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// State of the hint store's writer thread.
struct HintWriter {
    genv: Arc<GrowableEnv>,
    db: Database<'static, Bytes, Bytes>,
    by_key: Database<'static, Bytes, Bytes>,
    /// Seq of the next hint put. Advanced only when a transaction commits.
    next_seq: u64,
}

impl HintWriter {
    /// Commits and answers `batch` (without joiners); the hint store keeps no work across
    /// batches, so it always returns `false` (see [`WriterThread::spawn`]).
    fn commit_batch(&mut self, batch: &mut Vec<HintOp>) -> bool {
        let outcomes = match self.genv.write(|| self.try_commit(batch)) {
            Ok((outcomes, next_seq)) => {
                self.next_seq = next_seq;
                outcomes
            }
            Err(e) => batch.iter().map(|op| op.failed(e.clone())).collect(),
        };
        for (op, outcome) in batch.drain(..).zip(outcomes) {
            op.answer(outcome);
        }
        false
    }

    /// Applies `batch` in one transaction; returns the outcomes and the next free seq.
    fn try_commit(&self, batch: &[HintOp]) -> Result<(Vec<Outcome>, u64), Abort> {
        let mut wtxn = self.genv.env().write_txn()?;
        let mut next_seq = self.next_seq;
        let mut outcomes = Vec::with_capacity(batch.len());
        for op in batch {
            outcomes.push(match op {
                HintOp::Put {
                    prefix,
                    value,
                    index: (index, record),
                    ..
                } => {
                    let mut key = Vec::with_capacity(prefix.len() + 8);
                    key.extend_from_slice(prefix);
                    key.extend_from_slice(&next_seq.to_be_bytes());
                    next_seq += 1;
                    self.db.put(&mut wtxn, &key, value)?;
                    // An index entry that does not decode only loses what reads see of other
                    // hints of the key (the hints themselves are intact): start it afresh.
                    let (count, held) = self
                        .by_key
                        .get(&wtxn, index)?
                        .and_then(|bytes| decode_indexed(bytes).ok())
                        .unwrap_or((0, DvvSet::new()));
                    let merged = held.sync(record);
                    self.by_key
                        .put(&mut wtxn, index, &encode_indexed(count + 1, &merged))?;
                    Outcome::Put(Ok(()))
                }
                HintOp::Remove { ids, .. } => {
                    let mut removed = 0;
                    for id in ids {
                        let index = match self.db.get(&wtxn, &id.0)? {
                            Some(bytes) => decode_hint(bytes).map(|h| index_key(&h)).ok(),
                            None => None,
                        };
                        if self.db.delete(&mut wtxn, &id.0)? {
                            removed += 1;
                        }
                        let Some(index) = index else { continue };
                        let entry = self.by_key.get(&wtxn, &index)?.map(decode_indexed);
                        match entry {
                            None => {}
                            Some(Ok((count, held))) if count > 1 => {
                                self.by_key.put(
                                    &mut wtxn,
                                    &index,
                                    &encode_indexed(count - 1, &held),
                                )?;
                            }
                            Some(_) => {
                                self.by_key.delete(&mut wtxn, &index)?;
                            }
                        }
                    }
                    Outcome::Removed(Ok(removed))
                }
            });
        }
        wtxn.commit()?;
        Ok((outcomes, next_seq))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::VersionVector;
    use std::sync::mpsc::sync_channel;

    fn hint(key: &[u8], value: &[u8]) -> Hint {
        let mut record = DvvSet::new();
        record
            .update(&VersionVector::new(), 1, Some(value.to_vec()), 5, 10)
            .unwrap();
        Hint {
            partition: 3,
            bucket: ByteBuf::from(b"b".to_vec()),
            key: ByteBuf::from(key.to_vec()),
            record,
        }
    }

    fn put(s: &HintStore, owner: &str, h: Hint) -> Result<(), StorageError> {
        let (tx, rx) = sync_channel(1);
        s.put(
            owner,
            h,
            Box::new(move |r| {
                let _ = tx.send(r);
            }),
        );
        rx.recv().unwrap()
    }

    fn remove(s: &HintStore, ids: Vec<HintId>) -> Result<usize, StorageError> {
        let (tx, rx) = sync_channel(1);
        s.remove(
            ids,
            Box::new(move |r| {
                let _ = tx.send(r);
            }),
        );
        rx.recv().unwrap()
    }

    #[test]
    fn put_batch_remove_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let s = HintStore::open(dir.path()).unwrap();
        assert!(s.is_empty().unwrap());
        for i in 0..10u8 {
            put(&s, "node-a", hint(&[i], &[i, i])).unwrap();
        }
        assert_eq!(s.len().unwrap(), 10);
        let first = s.batch("node-a", 4).unwrap();
        assert_eq!(
            first
                .iter()
                .map(|(_, h)| h.key.to_vec())
                .collect::<Vec<_>>(),
            vec![vec![0], vec![1], vec![2], vec![3]]
        );
        assert_eq!(first[2].1, hint(&[2], &[2, 2]));
        assert!(first.windows(2).all(|w| w[0].0.seq() < w[1].0.seq()));
        let ids: Vec<HintId> = first.into_iter().map(|(id, _)| id).collect();
        assert_eq!(remove(&s, ids.clone()).unwrap(), 4);
        assert_eq!(remove(&s, ids).unwrap(), 0);
        assert_eq!(s.len().unwrap(), 6);
        let rest = s.batch("node-a", 100).unwrap();
        assert_eq!(rest.len(), 6);
        assert_eq!(rest[0].1.key.to_vec(), vec![4]);
        assert_eq!(s.owners().unwrap(), vec![("node-a".to_string(), 6)]);
    }

    #[test]
    fn hinted_records_are_readable_by_key_until_every_hint_is_removed() {
        let dir = tempfile::tempdir().unwrap();
        let s = HintStore::open(dir.path()).unwrap();
        assert_eq!(s.get_hinted(3, b"b", b"k").unwrap(), None);
        let mut other = hint(b"k", b"w");
        other.record = DvvSet::new();
        other
            .record
            .update(&VersionVector::new(), 2, Some(b"w".to_vec()), 6, 10)
            .unwrap();
        put(&s, "node-a", hint(b"k", b"v")).unwrap();
        put(&s, "node-b", other.clone()).unwrap();
        put(&s, "node-a", hint(b"j", b"x")).unwrap();
        // Both owners' versions of k are concurrent: the index holds both as siblings.
        let held = s.get_hinted(3, b"b", b"k").unwrap().unwrap();
        let mut values: Vec<&[u8]> = held.values().collect();
        values.sort();
        assert_eq!(values, vec![b"v".as_slice(), b"w".as_slice()]);
        assert_eq!(
            s.get_hinted(4, b"b", b"k").unwrap(),
            None,
            "another partition"
        );
        let a: Vec<HintId> = s
            .batch("node-a", 10)
            .unwrap()
            .into_iter()
            .map(|(id, _)| id)
            .collect();
        assert_eq!(remove(&s, a.clone()).unwrap(), 2);
        assert_eq!(
            remove(&s, a).unwrap(),
            0,
            "removing twice counts nothing twice"
        );
        assert_eq!(s.get_hinted(3, b"b", b"j").unwrap(), None);
        assert!(
            s.get_hinted(3, b"b", b"k").unwrap().is_some(),
            "node-b's hint is pending"
        );
        let b: Vec<HintId> = s
            .batch("node-b", 10)
            .unwrap()
            .into_iter()
            .map(|(id, _)| id)
            .collect();
        assert_eq!(remove(&s, b).unwrap(), 1);
        assert_eq!(s.get_hinted(3, b"b", b"k").unwrap(), None);
    }

    #[test]
    fn hints_for_a_key_name_their_owners_within_the_bounds() {
        let dir = tempfile::tempdir().unwrap();
        let s = HintStore::open(dir.path()).unwrap();
        let none = s.hints_for(3, b"b", b"k", 10, 1000).unwrap();
        assert_eq!((none.pending, none.scanned, none.complete), (0, 0, true));
        // Other keys' hints first, so that the scan has to pass them.
        for i in 0..20u8 {
            put(&s, "node-a", hint(&[b'x', i], b"other")).unwrap();
        }
        put(&s, "node-b", hint(b"k", b"v1")).unwrap();
        put(&s, "node-a", hint(b"k", b"v2")).unwrap();
        put(&s, "node-c", hint(b"k", b"v3")).unwrap();
        let mut other_partition = hint(b"k", b"p4");
        other_partition.partition = 4;
        put(&s, "node-a", other_partition).unwrap();

        let all = s.hints_for(3, b"b", b"k", 10, 1000).unwrap();
        assert_eq!(all.pending, 3);
        assert!(all.complete);
        let owners: Vec<&str> = all.listed.iter().map(|h| h.owner.as_str()).collect();
        // Store order: by owner name length, then name.
        assert_eq!(owners, vec!["node-a", "node-b", "node-c"]);
        assert_eq!(all.listed[0].record, hint(b"k", b"v2").record);
        assert!(all.listed[1].seq < all.listed[2].seq);

        let capped = s.hints_for(3, b"b", b"k", 1, 1000).unwrap();
        assert_eq!((capped.pending, capped.listed.len()), (3, 1));
        assert!(capped.complete, "every hint was seen, one listed");

        let bounded = s.hints_for(3, b"b", b"k", 10, 5).unwrap();
        assert_eq!((bounded.scanned, bounded.complete), (5, false));
        assert!(
            bounded.listed.is_empty(),
            "the first 5 entries are other keys'"
        );
    }

    #[test]
    fn hints_and_seq_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let last_seq = {
            let s = HintStore::open(dir.path()).unwrap();
            put(&s, "node-b", hint(b"k1", b"v")).unwrap();
            put(&s, "node-a", hint(b"k2", b"v")).unwrap();
            put(&s, "node-b", hint(b"k3", b"v")).unwrap();
            // Remove the newest hint: the counter must still not reuse its seq.
            let newest = s.batch("node-b", 10).unwrap().pop().unwrap().0;
            let seq = newest.seq();
            assert_eq!(remove(&s, vec![newest]).unwrap(), 1);
            put(&s, "node-a", hint(b"k4", b"v")).unwrap();
            s.shutdown();
            seq + 1
        };
        let s = HintStore::open(dir.path()).unwrap();
        assert_eq!(s.len().unwrap(), 3);
        assert_eq!(
            s.owners().unwrap(),
            vec![("node-a".to_string(), 2), ("node-b".to_string(), 1)]
        );
        assert_eq!(s.batch("node-b", 10).unwrap()[0].1, hint(b"k1", b"v"));
        put(&s, "node-b", hint(b"k5", b"v")).unwrap();
        let b = s.batch("node-b", 10).unwrap();
        assert_eq!(b[1].1.key.to_vec(), b"k5".to_vec());
        assert!(b[1].0.seq() > last_seq, "{} <= {last_seq}", b[1].0.seq());
    }

    #[test]
    fn a_hint_put_after_a_batch_was_read_is_not_removed_with_it() {
        let dir = tempfile::tempdir().unwrap();
        let s = HintStore::open(dir.path()).unwrap();
        put(&s, "n", hint(b"k", b"v1")).unwrap();
        let read = s.batch("n", 10).unwrap();
        // The same key is hinted again while the batch is being handed off.
        put(&s, "n", hint(b"k", b"v2")).unwrap();
        let ids = read.into_iter().map(|(id, _)| id).collect();
        assert_eq!(remove(&s, ids).unwrap(), 1);
        let left = s.batch("n", 10).unwrap();
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].1, hint(b"k", b"v2"));
    }

    #[test]
    fn owners_are_isolated_and_names_checked() {
        let dir = tempfile::tempdir().unwrap();
        let s = HintStore::open(dir.path()).unwrap();
        // "a" + seq bytes must never be read as "ab"'s, nor the reverse.
        put(&s, "a", hint(b"1", b"v")).unwrap();
        put(&s, "ab", hint(b"2", b"v")).unwrap();
        put(&s, "b", hint(b"3", b"v")).unwrap();
        let long = "x".repeat(255);
        put(&s, &long, hint(b"4", b"v")).unwrap();
        assert_eq!(s.batch("a", 10).unwrap().len(), 1);
        assert_eq!(s.batch("ab", 10).unwrap()[0].1.key.to_vec(), b"2".to_vec());
        assert_eq!(s.batch(&long, 10).unwrap().len(), 1);
        assert!(s.batch("c", 10).unwrap().is_empty());
        let ids = s.batch("a", 10).unwrap().into_iter().map(|(id, _)| id);
        assert_eq!(remove(&s, ids.collect()).unwrap(), 1);
        assert_eq!(s.batch("ab", 10).unwrap().len(), 1);
        assert_eq!(
            s.owners().unwrap(),
            vec![("b".into(), 1), ("ab".into(), 1), (long.clone(), 1)]
        );
        for bad in [String::new(), "x".repeat(256)] {
            assert!(matches!(
                put(&s, &bad, hint(b"k", b"v")),
                Err(StorageError::InvalidArgument(_))
            ));
            assert!(matches!(
                s.batch(&bad, 1),
                Err(StorageError::InvalidArgument(_))
            ));
        }
        s.shutdown();
        s.shutdown();
        assert_eq!(
            put(&s, "a", hint(b"k", b"v")),
            Err(StorageError::HintStoreClosed)
        );
    }

    #[test]
    fn the_map_grows_then_reports_full() {
        let dir = tempfile::tempdir().unwrap();
        let s = HintStore::open_with_map(dir.path(), 1 << 20, 4 << 20).unwrap();
        let empty = s.map_usage();
        assert_eq!((empty.map_bytes, empty.max_bytes), (1 << 20, 4 << 20));
        assert!(
            empty.used_bytes > 0 && empty.used_bytes < 64 << 10,
            "{empty:?}"
        );
        let value = vec![7u8; 64 << 10];
        let mut stored = 0u32;
        let err = loop {
            match put(&s, "n", hint(&stored.to_be_bytes(), &value)) {
                Ok(()) => stored += 1,
                Err(e) => break e,
            }
            assert!(stored < 200, "a 4 MiB map cannot hold 12 MiB");
        };
        assert!(matches!(err, StorageError::HintStoreFull(_)), "{err}");
        assert!(s.genv.map_size() > 1 << 20);
        let full = s.map_usage();
        assert!(
            full.used_bytes > 3 << 20 && full.used_bytes <= full.map_bytes,
            "a full map reports its pages used: {full:?}"
        );
        assert_eq!(full.map_bytes, full.max_bytes);
        assert!(stored > 16, "only {stored} hints fit");
        assert_eq!(s.len().unwrap(), u64::from(stored));
    }
}
