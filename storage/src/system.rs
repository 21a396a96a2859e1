//! The node's system env: node metadata that outlives restarts.
//!
//! Holds the node's id (a random 64-bit number made when the data directory is created; it
//! names the node in logs, while dots are named by each partition's own replica id, see
//! `Partition::open_as`), each partition's epoch, the persisted cluster state, and the
//! partition count the directory was made with, which cannot change afterwards.

use crate::dvv::ReplicaId;
use crate::StorageError;
use heed::types::{Bytes, Str};
use heed::{Database, Env, WithoutTls};
use std::path::Path;

const REPLICA_ID: &str = "replica_id";
const PARTITIONS: &str = "partitions";

/// The system env of a data directory.
pub struct SystemStore {
    env: Env<WithoutTls>,
    meta: Database<'static, Str, Bytes>,
    replica: ReplicaId,
}

impl SystemStore {
    /// Opens (or creates) the system env under `dir` and checks that the directory was made
    /// for `partitions` partitions.
    ///
    /// # Errors
    /// [`StorageError::Mismatch`] if the directory was made with another partition count;
    /// [`StorageError::Io`] on LMDB or file errors.
    pub fn open(dir: &Path, partitions: u32) -> Result<Self, StorageError> {
        let (env, meta) = crate::env::open_env::<Str, Bytes>(dir, 64 << 20, "meta")?;
        let mut wtxn = env.write_txn().map_err(StorageError::io)?;
        let replica = match meta.get(&wtxn, REPLICA_ID).map_err(StorageError::io)? {
            Some(b) => u64::from_be_bytes(
                b.try_into()
                    .map_err(|_| StorageError::Corrupt("replica id is not 8 bytes".into()))?,
            ),
            None => {
                let id: u64 = rand::random();
                meta.put(&mut wtxn, REPLICA_ID, &id.to_be_bytes())
                    .map_err(StorageError::io)?;
                id
            }
        };
        match meta.get(&wtxn, PARTITIONS).map_err(StorageError::io)? {
            Some(b) => {
                let stored =
                    u32::from_be_bytes(b.try_into().map_err(|_| {
                        StorageError::Corrupt("partition count is not 4 bytes".into())
                    })?);
                if stored != partitions {
                    return Err(StorageError::Mismatch(format!(
                        "the data directory was created with {stored} partitions, not {partitions}; \
                         the partition count is fixed when a cluster is created"
                    )));
                }
            }
            None => meta
                .put(&mut wtxn, PARTITIONS, &partitions.to_be_bytes())
                .map_err(StorageError::io)?,
        }
        wtxn.commit().map_err(StorageError::io)?;
        Ok(Self { env, meta, replica })
    }

    /// This node's replica id.
    pub fn replica_id(&self) -> ReplicaId {
        self.replica
    }

    /// Reads a metadata entry.
    ///
    /// # Errors
    /// [`StorageError::Io`].
    pub fn get_meta(&self, name: &str) -> Result<Option<Vec<u8>>, StorageError> {
        let rtxn = self.env.read_txn().map_err(StorageError::io)?;
        Ok(self
            .meta
            .get(&rtxn, name)
            .map_err(StorageError::io)?
            .map(|b| b.to_vec()))
    }

    /// Writes several metadata entries durably, in one transaction.
    ///
    /// # Errors
    /// [`StorageError::Io`].
    pub fn put_metas(&self, entries: &[(String, Vec<u8>)]) -> Result<(), StorageError> {
        let mut wtxn = self.env.write_txn().map_err(StorageError::io)?;
        for (name, value) in entries {
            self.meta
                .put(&mut wtxn, name, value)
                .map_err(StorageError::io)?;
        }
        wtxn.commit().map_err(StorageError::io)
    }

    /// Writes a metadata entry durably.
    ///
    /// # Errors
    /// [`StorageError::Io`].
    pub fn put_meta(&self, name: &str, value: &[u8]) -> Result<(), StorageError> {
        let mut wtxn = self.env.write_txn().map_err(StorageError::io)?;
        self.meta
            .put(&mut wtxn, name, value)
            .map_err(StorageError::io)?;
        wtxn.commit().map_err(StorageError::io)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replica_id_is_kept_and_partition_count_checked() {
        let dir = tempfile::tempdir().unwrap();
        let id = SystemStore::open(dir.path(), 64).unwrap().replica_id();
        assert_eq!(SystemStore::open(dir.path(), 64).unwrap().replica_id(), id);
        let err = SystemStore::open(dir.path(), 128).err().unwrap();
        assert!(err.to_string().contains("64 partitions"), "{err}");
    }
}
