//! ringkv storage: LMDB partitions, records, dotted version vectors.
//!
//! * [`dvv`]: dotted version vectors with siblings ([`DvvSet`]), the causality of every key;
//! * [`record`]: the persisted form of a key's state (version byte + named msgpack);
//! * [`keys`]: bucket and key limits and the on-disk key layout;
//! * [`partition`]: one LMDB env per partition, written by a group-committing writer thread;
//! * [`merkle`]: each partition's hash tree of its keys (4096 segments, fanout 16), updated in
//!   the same transaction as every write, for active anti-entropy exchanges;
//! * [`hints`]: the node's durable hint store for hinted handoff ([`HintStore`]), an LMDB env
//!   of its own with a group-committing writer thread;
//! * [`system`]: the node's system env (replica id, partition count);
//! * [`DataDir`]: a node's data directory, opening all of the above.
//!
//! Every env that grows (partitions, hints) shares the map-doubling and read-gate logic of
//! the private `env` module and the writer thread of the private `writer` module.
//!
//! This crate knows nothing of actors or networking and is tested as a plain library.
#![warn(missing_docs)]

pub mod dvv;
mod env;
mod error;
pub mod hints;
pub mod keys;
pub mod merkle;
pub mod partition;
pub mod record;
pub mod system;
mod writer;

pub use dvv::{Dot, DvvSet, ReplicaId, Sibling, VersionVector};
pub use error::StorageError;
pub use hints::{Hint, HintId, HintStore};
pub use merkle::MerkleTree;
pub use partition::{Identity, Partition, PartitionOptions, PurgeReply, WriteReply};
pub use system::SystemStore;

use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A node's data directory: `system/` (the [`SystemStore`]), `hints/` (the [`HintStore`]) and
/// `partitions/NNNNN/`, one LMDB env per partition.
pub struct DataDir {
    /// Where it is.
    pub path: PathBuf,
    /// The exclusive lock on `<path>/LOCK`, held while the directory is open.
    _lock: std::fs::File,
    /// The system env.
    pub system: Arc<SystemStore>,
    /// Partition `i` at index `i`.
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
    /// [`StorageError::Mismatch`] if it was created with another partition count,
    /// [`StorageError::Io`] on file or LMDB errors.
    pub fn open(
        path: &Path,
        partitions: u32,
        options: &PartitionOptions,
    ) -> Result<Self, StorageError> {
        let lock = lock_dir(path)?;
        let system = Arc::new(SystemStore::open(&path.join("system"), partitions)?);
        // Each partition replica names its dots with an id of its own, fresh whenever its
        // storage is new or not the one this node last wrote: the partition's epoch must
        // match the one the system env recorded (see `Partition::open_as`).
        let mut epochs = Vec::with_capacity(partitions as usize);
        let partitions = (0..partitions)
            .map(|p| {
                let key = format!("partition_epoch.{p}");
                let expect = system
                    .get_meta(&key)?
                    .and_then(|b| <[u8; 8]>::try_from(b.as_slice()).ok())
                    .map(u64::from_be_bytes);
                let identity = Identity {
                    fresh_id: rand::random(),
                    // No epoch recorded yet: a node upgraded from node-wide ids, or a fresh
                    // directory; either way the partitions get fresh ids of their own.
                    expect_epoch: Some(expect.unwrap_or(0)),
                    new_epoch: rand::random::<u64>() | 1,
                };
                let part =
                    Partition::open_as(&Self::partition_dir(path, p), p, &identity, options)?;
                epochs.push((key, identity.new_epoch.to_be_bytes().to_vec()));
                Ok(part)
            })
            .collect::<Result<Vec<_>, StorageError>>()?;
        // Recorded after every partition has its new epoch, in one commit: a crash in between
        // leaves epochs that do not match, which only costs fresh ids.
        system.put_metas(&epochs)?;
        let hints = HintStore::open(&path.join("hints"))?;
        Ok(Self {
            path: path.to_path_buf(),
            _lock: lock,
            system,
            partitions,
            hints,
        })
    }

    /// Directory of partition `p` under a data directory.
    pub fn partition_dir(path: &Path, p: u32) -> PathBuf {
        path.join("partitions").join(format!("{p:05}"))
    }

    /// Shuts every partition's writer and the hint store's down after each has committed
    /// what is queued.
    pub fn shutdown(&self) {
        for p in &self.partitions {
            p.shutdown();
        }
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
        std::fs::remove_dir_all(DataDir::partition_dir(dir.path(), 1)).unwrap();
        let d = DataDir::open(dir.path(), 2, &opts).unwrap();
        let after = ids(&d);
        assert_eq!(after[0], before[0]);
        assert_ne!(after[1], before[1], "the wiped partition has a fresh id");
        d.shutdown();
    }
}
