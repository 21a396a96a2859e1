//! ringkv storage: LMDB partitions, records, dotted version vectors.
//!
//! * [`dvv`]: dotted version vectors with siblings ([`DvvSet`]), the causality of every key;
//! * [`codec`]: per-value compression (none, zstd, lz4), bounded decompression;
//! * [`condition`]: conditional writes (`if_none_match`, `if_match`), checked by the writer;
//! * [`record`]: the persisted form of a key's state (version byte + named msgpack), and its
//!   metadata-only decode for expiry and purging;
//! * [`keys`]: bucket and key limits and the on-disk key layout;
//! * [`store`]: the node's ONE data env holding every partition (the partition number and
//!   the key's Merkle segment are a big-endian prefix of every key), written by ONE
//!   group-committing writer thread whose commits hold the writes of all partitions
//!   ([`DataStore`]);
//! * [`partition`]: a cheap handle on one partition of that env ([`Partition`]);
//! * [`merkle`]: each partition's hash tree of its keys (4096 segments, fanout 16), kept in
//!   memory and updated by the writer after each commit, for active anti-entropy exchanges;
//! * [`hints`]: the node's durable hint store for hinted handoff ([`HintStore`]), an LMDB env
//!   of its own with a group-committing writer thread;
//! * [`system`]: the node's system env (replica id, partition count, partition epochs);
//! * [`DataDir`]: a node's data directory, opening all of the above.
//!
//! Every env that grows (data, hints) shares the map-doubling and read-gate logic of the
//! private `env` module and the writer thread of the private `writer` module.
//!
//! This crate knows nothing of actors or networking and is tested as a plain library.
#![warn(missing_docs)]

pub mod codec;
pub mod condition;
pub mod dvv;
mod env;
mod error;
pub mod hints;
pub mod keys;
pub mod large;
pub mod merkle;
pub mod partition;
pub mod paxos;
pub mod record;
pub mod store;
pub mod system;
mod writer;

pub use codec::Codec;
pub use condition::Condition;
pub use dvv::{Dot, DvvSet, ReplicaId, Sibling, VersionVector};
pub use env::MapUsage;
pub use error::StorageError;
pub use hints::{HeldHint, Hint, HintId, HintStore, KeyHints};
pub use merkle::MerkleTree;
pub use partition::{
    Identity, Partition, PartitionOptions, PartitionStats, PurgeReply, ScanChunk, WriteReply,
};
pub use record::PurgeBefore;
pub use store::{CommitStats, DataStore, OpenReport};
pub use system::SystemStore;

use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A node's data directory: `system/` (the [`SystemStore`]), `hints/` (the [`HintStore`]) and
/// `data/`, the one LMDB env holding every partition ([`DataStore`]).
pub struct DataDir {
    /// Where it is.
    pub path: PathBuf,
    /// The exclusive lock on `<path>/LOCK`, held while the directory is open.
    _lock: std::fs::File,
    /// The system env.
    pub system: Arc<SystemStore>,
    /// The data env, at `data/`.
    pub store: Arc<DataStore>,
    /// Partition `i` at index `i`, each a handle on [`DataDir::store`].
    pub partitions: Vec<Arc<Partition>>,
    /// The hint store, at `hints/`.
    pub hints: Arc<HintStore>,
}

impl DataDir {
    /// Opens or creates the data directory at `path` with `partitions` partitions.
    ///
    /// First it takes an exclusive lock (`flock`) on `<path>/LOCK`, so that two nodes (two
    /// processes) never open the same directory; the lock goes with the process.
    ///
    /// # Errors
    /// [`StorageError::Locked`] if another process holds the directory,
    /// [`StorageError::UnsupportedFormat`] if it holds data of the env-per-partition format
    /// (a `partitions/` directory) or of another format version than
    /// [`store::FORMAT_VERSION`] (see [`DataStore::open`]),
    /// [`StorageError::Mismatch`] if it was created with another partition count,
    /// [`StorageError::Io`] on file or LMDB errors.
    pub fn open(
        path: &Path,
        partitions: u32,
        options: &PartitionOptions,
    ) -> Result<Self, StorageError> {
        let lock = lock_dir(path)?;
        let old = path.join("partitions");
        if old.exists() {
            return Err(StorageError::UnsupportedFormat(format!(
                "{} holds the env-per-partition format (format 0: one LMDB env per partition \
                 under partitions/NNNNN/), which this version does not read; it keeps every \
                 partition in one env under data/ (format {}). Start the node with an empty \
                 data directory (its replicas refill it through anti-entropy), or run the \
                 older release on this directory",
                old.display(),
                store::FORMAT_VERSION
            )));
        }
        let system = Arc::new(SystemStore::open(&path.join("system"), partitions)?);
        // Each partition replica names its dots with an id of its own, fresh whenever its
        // storage is new or not the one this node last wrote: the partition's epoch must
        // match the one the system env recorded (see `Partition::open_as`).
        let mut epochs = Vec::with_capacity(partitions as usize);
        let mut identities = Vec::with_capacity(partitions as usize);
        for p in 0..partitions {
            let key = format!("partition_epoch.{p}");
            let expect = system
                .get_meta(&key)?
                .and_then(|b| <[u8; 8]>::try_from(b.as_slice()).ok())
                .map(u64::from_be_bytes);
            let identity = Identity {
                fresh_id: rand::random(),
                // No epoch recorded yet: a fresh directory; the partitions get fresh ids.
                expect_epoch: Some(expect.unwrap_or(0)),
                new_epoch: rand::random::<u64>() | 1,
            };
            epochs.push((key, identity.new_epoch.to_be_bytes().to_vec()));
            identities.push((p, identity));
        }
        let store = DataStore::open(&Self::data_dir(path), &identities, options)?;
        let partitions = (0..partitions)
            .map(|p| Partition::of(&store, p))
            .collect::<Result<Vec<_>, StorageError>>()?;
        // Recorded after the data env holds every partition's new epoch (one commit): a crash
        // in between leaves epochs that do not match, which only costs fresh ids.
        system.put_metas(&epochs)?;
        let hints = HintStore::open(&path.join("hints"))?;
        Ok(Self {
            path: path.to_path_buf(),
            _lock: lock,
            system,
            store,
            partitions,
            hints,
        })
    }

    /// Directory of the data env under a data directory.
    pub fn data_dir(path: &Path) -> PathBuf {
        path.join("data")
    }

    /// Shuts the data env's writer and the hint store's down after each has committed what
    /// is queued.
    pub fn shutdown(&self) {
        self.store.shutdown();
        self.hints.shutdown();
    }
}

/// Creates `path` if needed and takes an exclusive, non-blocking `flock` on `<path>/LOCK`.
fn lock_dir(path: &Path) -> Result<std::fs::File, StorageError> {
    use std::os::fd::AsRawFd;
    std::fs::create_dir_all(path).map_err(StorageError::io)?;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path.join("LOCK"))
        .map_err(StorageError::io)?;
    // SAFETY: flock only reads the descriptor, which `file` keeps open.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        return Err(StorageError::Locked(path.display().to_string()));
    }
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_data_directory_is_opened_by_one_node_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let opts = PartitionOptions::default();
        let first = DataDir::open(dir.path(), 2, &opts).unwrap();
        // flock locks belong to open file descriptions: a second open in this process is
        // refused just as one from another process is.
        let e = DataDir::open(dir.path(), 2, &opts).err().unwrap();
        assert!(matches!(e, StorageError::Locked(_)), "{e}");
        assert!(
            e.to_string().contains(&dir.path().display().to_string()),
            "{e}"
        );
        first.shutdown();
        drop(first);
        DataDir::open(dir.path(), 2, &opts).unwrap().shutdown();
    }

    #[test]
    fn a_wiped_partition_gets_a_fresh_replica_id() {
        let dir = tempfile::tempdir().unwrap();
        let opts = PartitionOptions::default();
        let ids = |d: &DataDir| d.partitions.iter().map(|p| p.replica()).collect::<Vec<_>>();
        let d = DataDir::open(dir.path(), 2, &opts).unwrap();
        let before = ids(&d);
        assert_ne!(before[0], before[1], "each partition has an id of its own");
        d.shutdown();
        drop(d);
        let d = DataDir::open(dir.path(), 2, &opts).unwrap();
        assert_eq!(ids(&d), before, "a reopen keeps the ids");
        d.shutdown();
        drop(d);
        // Wipe partition 1 (data, hashes and identity), as a lost partition's storage.
        store::wipe_partition(&DataDir::data_dir(dir.path()), 1).unwrap();
        let d = DataDir::open(dir.path(), 2, &opts).unwrap();
        let after = ids(&d);
        assert_eq!(after[0], before[0]);
        assert_ne!(after[1], before[1], "the wiped partition has a fresh id");
        d.shutdown();
    }

    #[test]
    fn the_env_per_partition_format_is_refused_with_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("partitions").join("00000")).unwrap();
        let e = DataDir::open(dir.path(), 2, &PartitionOptions::default())
            .err()
            .unwrap();
        assert!(matches!(e, StorageError::UnsupportedFormat(_)), "{e}");
        let msg = e.to_string();
        assert!(msg.contains("env-per-partition format"), "{msg}");
        assert!(msg.contains("empty data directory"), "{msg}");
        assert!(
            !DataDir::data_dir(dir.path()).exists(),
            "nothing was created"
        );
    }

    #[test]
    fn an_unknown_format_version_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let opts = PartitionOptions::default();
        DataDir::open(dir.path(), 2, &opts).unwrap().shutdown();
        store::set_format_for_test(&DataDir::data_dir(dir.path()), 9);
        let e = DataDir::open(dir.path(), 2, &opts).err().unwrap();
        assert!(matches!(e, StorageError::UnsupportedFormat(_)), "{e}");
        assert!(e.to_string().contains("format 9"), "{e}");
    }

    #[test]
    fn the_format_with_a_merkle_database_is_refused_with_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let opts = PartitionOptions::default();
        DataDir::open(dir.path(), 2, &opts).unwrap().shutdown();
        store::set_format_for_test(&DataDir::data_dir(dir.path()), 1);
        let e = DataDir::open(dir.path(), 2, &opts).err().unwrap();
        assert!(matches!(e, StorageError::UnsupportedFormat(_)), "{e}");
        let msg = e.to_string();
        assert!(
            msg.contains("format 1 (") && msg.contains("`merkle` database"),
            "{msg}"
        );
        assert!(msg.contains("reads format 2 only"), "{msg}");
        assert!(msg.contains("empty data directory"), "{msg}");
        // A refused directory is left as it was: refused again.
        assert!(DataDir::open(dir.path(), 2, &opts).is_err());
    }

    /// An idle node allocates no hash tree leaves, whatever its partition count.
    #[test]
    fn empty_partitions_allocate_no_leaves() {
        let dir = tempfile::tempdir().unwrap();
        let d = DataDir::open(dir.path(), 1024, &PartitionOptions::default()).unwrap();
        assert!(d.partitions.iter().all(|p| !p.merkle_tree().is_allocated()));
        let (tx, rx) = std::sync::mpsc::channel();
        d.partitions[3].update(
            b"b",
            b"k",
            VersionVector::new(),
            Some(b"v".to_vec()),
            0,
            Box::new(move |r| drop(tx.send(r))),
        );
        rx.recv().unwrap().unwrap();
        let allocated: Vec<u32> = d
            .partitions
            .iter()
            .filter(|p| p.merkle_tree().is_allocated())
            .map(|p| p.id())
            .collect();
        assert_eq!(allocated, vec![3]);
        d.shutdown();
    }

    /// The point of one env per node: writes to many partitions share commits.
    #[test]
    fn writes_of_many_partitions_share_commits() {
        let dir = tempfile::tempdir().unwrap();
        let d = DataDir::open(dir.path(), 64, &PartitionOptions::default()).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::scope(|s| {
            for t in 0..8u32 {
                let (d, tx) = (&d, tx.clone());
                s.spawn(move || {
                    for i in 0..250u32 {
                        let p = &d.partitions[((t * 250 + i) % 64) as usize];
                        let tx = tx.clone();
                        p.update(
                            b"b",
                            &(t * 250 + i).to_be_bytes(),
                            VersionVector::new(),
                            Some(vec![1; 256]),
                            0,
                            Box::new(move |r| {
                                let _ = tx.send(r.is_ok());
                            }),
                        );
                    }
                });
            }
        });
        drop(tx);
        assert_eq!(rx.iter().filter(|ok| *ok).count(), 2000);
        let stats = d.store.commit_stats();
        assert_eq!(stats.writes(), 2000);
        assert!(
            stats.commits() < 1000,
            "{} commits for 2000 writes",
            stats.commits()
        );
        assert!(
            stats.most_partitions_per_commit() > 8,
            "at most {} partitions in one commit",
            stats.most_partitions_per_commit()
        );
        let total: u64 = d.partitions.iter().map(|p| p.len().unwrap()).sum();
        assert_eq!(total, 2000);
        for (i, p) in d.partitions.iter().enumerate() {
            assert_eq!(p.len().unwrap(), 2000 / 64 + u64::from(i < 2000 % 64));
        }
        d.shutdown();
        drop(d);
        // Reopened, each partition finds its own keys only.
        let d = DataDir::open(dir.path(), 64, &PartitionOptions::default()).unwrap();
        let k = 70u32.to_be_bytes();
        assert!(d.partitions[70 % 64].get(b"b", &k).unwrap().is_some());
        assert!(d.partitions[0].get(b"b", &k).unwrap().is_none());
        assert_eq!(d.partitions[6].len().unwrap(), 32);
        d.shutdown();
    }
}
