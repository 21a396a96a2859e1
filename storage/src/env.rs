//! Opening an LMDB env the way every ringkv env is opened.

use crate::StorageError;
use heed::{CommitOrAbort, Database, Env, EnvOpenOptions, WithoutTls};
use std::path::Path;

/// Opens (creating the directory if needed) the env at `dir` with `map_bytes` of map and
/// read transactions without thread-local slots (`WithoutTls`, so they are `Send`), and
/// creates or opens its database `name`.
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
    let wtxn = env.write_txn().map_err(StorageError::io)?;
    let db = env
        .create_databases_and_commit(wtxn, |opener, wtxn| {
            opener
                .create_database::<K, V>(wtxn, Some(name))
                .map(CommitOrAbort::<_, ()>::Commit)
        })
        .map_err(|e: heed::Error| StorageError::io(e))?
        .unwrap_commit();
    Ok((env, db))
}
