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
pub use partition::{Partition, PartitionOptions, PurgeReply, WriteReply};
pub use system::SystemStore;

use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A node's data directory: `system/` (the [`SystemStore`]), `hints/` (the [`HintStore`]) and
/// `partitions/NNNNN/`, one LMDB env per partition.
pub struct DataDir {
    /// Where it is.
    pub path: PathBuf,
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
    /// # Errors
    /// [`StorageError::Mismatch`] if it was created with another partition count,
    /// [`StorageError::Io`] on file or LMDB errors.
    pub fn open(
        path: &Path,
        partitions: u32,
        options: &PartitionOptions,
    ) -> Result<Self, StorageError> {
        let system = Arc::new(SystemStore::open(&path.join("system"), partitions)?);
        let replica = system.replica_id();
        let partitions = (0..partitions)
            .map(|p| Partition::open(&Self::partition_dir(path, p), p, replica, options))
            .collect::<Result<Vec<_>, _>>()?;
        let hints = HintStore::open(&path.join("hints"))?;
        Ok(Self {
            path: path.to_path_buf(),
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
