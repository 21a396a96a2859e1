//! Opening an LMDB env the way every ringkv env is opened, and the machinery shared by the
//! envs that grow their map on demand ([`GrowableEnv`]): the read gate, the doubling resize on
//! `MapFull` and the mapping of LMDB's failures to [`StorageError`]s.

use crate::StorageError;
use heed::{CommitOrAbort, Database, Env, EnvOpenOptions, RoTxn, WithoutTls};
use std::path::Path;
use std::sync::RwLock;

/// Opens (creating the directory if needed) the env at `dir` with `map_bytes` of map and
/// read transactions without thread-local slots (`WithoutTls`, so they are `Send`), and
/// creates or opens its database `name`. The env allows up to 8 named databases; open more
/// with [`create_database`].
///
/// # Errors
/// [`StorageError::Io`].
pub(crate) fn open_env<K: 'static, V: 'static>(
    dir: &Path,
    map_bytes: usize,
    name: &str,
) -> Result<(Env<WithoutTls>, Database<'static, K, V>), StorageError> {
    std::fs::create_dir_all(dir).map_err(StorageError::io)?;
    let env = unsafe {
        // SAFETY: ringkv opens each env directory once per process (the owner keeps the
        // handle) and never from two processes at once.
        EnvOpenOptions::new()
            .read_txn_without_tls()
            .map_size(map_bytes)
            .max_dbs(8)
            .open(dir)
    }
    .map_err(StorageError::io)?;
    let db = create_database(&env, name)?;
    Ok((env, db))
}

/// Creates (or opens, if it exists) the named database `name` in `env`, in a write
/// transaction of its own. Call it before any other write transaction is open on `env`.
///
/// # Errors
/// [`StorageError::Io`], e.g. when the env already holds its maximum of 8 named databases.
pub(crate) fn create_database<K: 'static, V: 'static>(
    env: &Env<WithoutTls>,
    name: &str,
) -> Result<Database<'static, K, V>, StorageError> {
    let wtxn = env.write_txn().map_err(StorageError::io)?;
    Ok(env
        .create_databases_and_commit(wtxn, |opener, wtxn| {
            opener
                .create_database::<K, V>(wtxn, Some(name))
                .map(CommitOrAbort::<_, ()>::Commit)
        })
        .map_err(|e: heed::Error| StorageError::io(e))?
        .unwrap_commit())
}

/// Map size to open an env with: `initial` bytes, or room for twice the data already in
/// `dir/data.mdb` (rounded up to a power of two) so that a restart does not begin by growing
/// the map step by step; never more than `max` unless the file is already larger.
pub(crate) fn starting_map_bytes(dir: &Path, initial: usize, max: usize) -> usize {
    let existing = std::fs::metadata(dir.join("data.mdb"))
        .map(|m| m.len() as usize)
        .unwrap_or(0);
    initial
        .max(existing.saturating_mul(2).next_power_of_two())
        .min(max.max(existing))
}

/// Which store an env belongs to, to name it in errors and logs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Store {
    /// Partition number.
    Partition(u32),
    /// The node's data env, holding every partition: its errors are given to each write with
    /// the write's own partition ([`Store::Partition`]).
    Data,
    /// The node's hint store.
    Hints,
}

impl Store {
    /// The error for a full map or disk.
    pub(crate) fn full(self, detail: String) -> StorageError {
        match self {
            Store::Partition(partition) => StorageError::Full { partition, detail },
            // Renamed with each failed write's partition by the data env's writer.
            Store::Data => StorageError::Full {
                partition: u32::MAX,
                detail,
            },
            Store::Hints => StorageError::HintStoreFull(detail),
        }
    }

    /// The error for a write refused by a full writer queue.
    pub(crate) fn overloaded(self, limit: usize) -> StorageError {
        StorageError::Overloaded {
            store: self.to_string(),
            limit,
        }
    }

    /// The error for a write queued after shutdown.
    pub(crate) fn closed(self) -> StorageError {
        match self {
            Store::Partition(p) => StorageError::Closed(p),
            Store::Data => StorageError::Closed(u32::MAX),
            Store::Hints => StorageError::HintStoreClosed,
        }
    }
}

impl std::fmt::Display for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Store::Partition(p) => write!(f, "partition {p}"),
            Store::Data => f.write_str("data env"),
            Store::Hints => f.write_str("hint store"),
        }
    }
}

/// Why a write transaction did not commit.
pub(crate) enum Abort {
    /// LMDB's `MapFull`: grow the map and try the whole transaction again.
    MapFull,
    /// Anything else: give up.
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

/// How much of an LMDB env's map is in use (`ringkv cluster status`, the `ringkv_lmdb_map_*`
/// metrics).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct MapUsage {
    /// Bytes of the map's pages up to the highest page ever used (LMDB's last page number
    /// plus one, times the page size): the file's high-water mark. Freed pages below it are
    /// reused, so the data may take less; a write that needs pages past the map's end grows
    /// the map.
    pub used_bytes: u64,
    /// The map size now, bytes: it doubles when full, up to `max_bytes`.
    pub map_bytes: u64,
    /// The largest map size allowed, bytes (`max-map-bytes` for the data env); past it,
    /// writes fail as full.
    pub max_bytes: u64,
}

/// An env whose map doubles on `MapFull` up to a maximum.
///
/// LMDB allows a resize only while the process has no transaction open on the env, so
/// readers hold a shared gate for the length of their transaction ([`GrowableEnv::read`]) and
/// [`GrowableEnv::write`] takes it exclusively to resize. Every write transaction must go
/// through [`GrowableEnv::write`] from one thread (the store's writer thread, or the opening
/// thread before that starts), which holds no transaction while it resizes.
pub(crate) struct GrowableEnv {
    env: Env<WithoutTls>,
    gate: RwLock<()>,
    max_map_bytes: usize,
    store: Store,
}

impl GrowableEnv {
    /// Wraps an opened env that may grow to `max_map_bytes`.
    pub(crate) fn new(env: Env<WithoutTls>, max_map_bytes: usize, store: Store) -> Self {
        Self {
            env,
            gate: RwLock::new(()),
            max_map_bytes,
            store,
        }
    }

    /// The env, for beginning write transactions inside [`GrowableEnv::write`].
    pub(crate) fn env(&self) -> &Env<WithoutTls> {
        &self.env
    }

    /// Which store this is.
    pub(crate) fn store(&self) -> Store {
        self.store
    }

    /// Current map size, bytes.
    pub(crate) fn map_size(&self) -> usize {
        self.env.info().map_size
    }

    /// How much of the map is used ([`MapUsage`]). Holds the gate (shared), so that it never
    /// reads the env's meta pages while a resize remaps them.
    pub(crate) fn usage(&self) -> MapUsage {
        let _gate = self.gate.read().unwrap_or_else(|p| p.into_inner());
        let info = self.env.info();
        let page = u64::from(self.env.unnamed_database_stat().page_size);
        MapUsage {
            used_bytes: (info.last_page_number as u64).saturating_add(1) * page,
            map_bytes: info.map_size as u64,
            max_bytes: self.max_map_bytes as u64,
        }
    }

    /// Runs `f` in a read transaction, holding the gate (shared) until the transaction ends,
    /// so that no resize happens while it is open.
    ///
    /// # Errors
    /// [`StorageError::Io`] if the transaction cannot begin, or what `f` returns.
    pub(crate) fn read<T>(
        &self,
        f: impl FnOnce(&RoTxn<'_, WithoutTls>) -> Result<T, StorageError>,
    ) -> Result<T, StorageError> {
        let _gate = self.gate.read().unwrap_or_else(|p| p.into_inner());
        let rtxn = self.env.read_txn().map_err(StorageError::io)?;
        let out = f(&rtxn);
        drop(rtxn);
        out
    }

    /// Runs `attempt` (which begins, fills and commits one write transaction) until it
    /// commits, doubling the map after each `MapFull`.
    ///
    /// # Errors
    /// The store's `Full` error when the map reached its maximum or the disk is full (LMDB's
    /// `ENOSPC`); any other failure of `attempt` as it is.
    pub(crate) fn write<T>(
        &self,
        mut attempt: impl FnMut() -> Result<T, Abort>,
    ) -> Result<T, StorageError> {
        loop {
            match attempt() {
                Ok(out) => return Ok(out),
                Err(Abort::MapFull) => self.grow()?,
                Err(Abort::Failed(e)) => {
                    tracing::error!(store = %self.store, error = %e, "write transaction failed");
                    return Err(if e.to_string().contains("No space left") {
                        self.store.full("the disk is full".into())
                    } else {
                        e
                    });
                }
            }
        }
    }

    /// Doubles the map size, waiting for open read transactions to end first.
    fn grow(&self) -> Result<(), StorageError> {
        let current = self.env.info().map_size;
        if current >= self.max_map_bytes {
            return Err(self.store.full(format!(
                "the map reached its maximum of {} bytes (max_map_bytes)",
                self.max_map_bytes
            )));
        }
        let next = current.saturating_mul(2).min(self.max_map_bytes);
        let _exclusive = self.gate.write().unwrap_or_else(|p| p.into_inner());
        // SAFETY: the caller of `write` has no transaction open between attempts, it is the
        // only thread that writes, and readers hold the gate for the length of theirs, so no
        // transaction is open on this env in the process.
        unsafe { self.env.resize(next) }.map_err(StorageError::io)?;
        tracing::info!(store = %self.store, map_bytes = next, "grew LMDB map");
        Ok(())
    }
}
