//! Garbage collection of the chunks of large values no version refers to (see the parent
//! module's docs): run by the anti-entropy sweep through [`crate::repair::collect_all`].

use super::{manifest_of, value_siblings};
use crate::coordinator::now_ms;
use crate::rpc::{Get, Merge, ReplicaTransport};
use ringkv_storage::large::{chunk_bucket, chunk_key, parse_stored_chunk, VersionId, HEAD_INDEX};
use ringkv_storage::{keys, Codec, Condition};
use serde_bytes::ByteBuf;
use std::time::Duration;

/// Largest number of chunk and head keys one garbage collection pass lists per partition.
pub const GC_SCAN_LIMIT: usize = 100_000;

/// Deletes the chunks of large versions of partition `p` that no replica refers to and whose
/// head is older than `grace` (see the module docs); returns the records deleted. Every
/// replica of a version's key must answer, else the version waits for a later pass.
///
/// # Errors
/// [`crate::repair::ExchangeError`] if the local scan fails.
pub async fn collect_garbage<T: ReplicaTransport>(
    peers: &T,
    p: u32,
    prefs: &[String],
    grace: Duration,
) -> Result<usize, crate::repair::ExchangeError> {
    let keys = crate::replica::vnode_call(
        &peers.context().directory,
        p,
        crate::repair::CALL_TIMEOUT,
        |reply| crate::vnode::VNodeMsg::LargeValueKeys {
            limit: GC_SCAN_LIMIT,
            reply,
        },
    )
    .await
    .map_err(|e| crate::rpc::ReplicaError::Failed(peers.local().to_string(), e))?;
    // Group the keys by (owner bucket, version); they arrive sorted, a version's together.
    let mut versions: Vec<(Vec<u8>, VersionId, Vec<u32>)> = Vec::new();
    for k in &keys {
        let Some((owner, version, index)) = parse_stored_chunk(k) else {
            continue;
        };
        match versions.last_mut() {
            Some((o, v, idx)) if o == owner && *v == version => idx.push(index),
            _ => versions.push((owner.to_vec(), version, vec![index])),
        }
    }
    let state = peers.context().view.snapshot();
    let older_than = now_ms().saturating_sub(grace.as_millis() as u64);
    let mut deleted = 0;
    for (owner_bucket, version, indices) in versions {
        let bucket = chunk_bucket(&owner_bucket);
        let head_key = chunk_key(&version, HEAD_INDEX);
        let stored = keys::storage_key(&bucket, &head_key).unwrap_or_default();
        let replicas = crate::repair::key_replicas(&state, prefs, &stored).to_vec();
        match is_garbage(peers, p, &replicas, &bucket, &version, older_than).await {
            Some(true) => {}
            _ => continue,
        }
        let mut order: Vec<u32> = indices.into_iter().filter(|i| *i != HEAD_INDEX).collect();
        order.push(HEAD_INDEX);
        for index in order {
            let key = chunk_key(&version, index);
            if delete_everywhere(peers, p, &replicas, &bucket, &key).await {
                deleted += 1;
            }
        }
        tracing::info!(partition = p, version = %hex(&version), "collected the chunks of a large version no replica refers to");
    }
    Ok(deleted)
}

/// Whether `version` is garbage: `Some(true)` if no replica's record of its key refers to
/// it and it is older than the grace; `None` if a replica did not answer.
async fn is_garbage<T: ReplicaTransport>(
    peers: &T,
    p: u32,
    replicas: &[String],
    bucket: &[u8],
    version: &VersionId,
    older_than: u64,
) -> Option<bool> {
    let get = |node: String, bucket: Vec<u8>, key: Vec<u8>| async move {
        let request = Get {
            partition: p,
            bucket: ByteBuf::from(bucket),
            key: ByteBuf::from(key),
        };
        peers
            .call(&node, request, crate::repair::CALL_TIMEOUT)
            .await
    };
    let head_key = chunk_key(version, HEAD_INDEX).to_vec();
    // The head first here (the common case: a referenced version is decided locally).
    let mut owner = None;
    let mut newest = 0u64;
    let mut heads_seen = false;
    let mut order = replicas.to_vec();
    order.sort_by_key(|n| *n != peers.local());
    for node in &order {
        let head = get(node.clone(), bucket.to_vec(), head_key.clone())
            .await
            .ok()?;
        if let Some(h) = head {
            heads_seen = true;
            newest = newest.max(h.siblings.iter().map(|s| s.timestamp_ms).max().unwrap_or(0));
            if owner.is_none() {
                owner = value_siblings(&h)
                    .filter_map(|s| s.value.as_deref().map(|v| (s.codec, v)))
                    .find_map(|(c, v)| ringkv_storage::codec::decompress(c, v, 1024).ok());
            }
        }
        if let Some(o) = &owner {
            // Is it referenced where we know the owner already? Ask every replica.
            let (ob, ok) = keys::split_storage_key(o)?;
            for n in &order {
                let record = get(n.clone(), ob.to_vec(), ok.to_vec()).await.ok()?;
                let refers = record.as_ref().is_some_and(|r| {
                    value_siblings(r)
                        .filter_map(manifest_of)
                        .filter_map(Result::ok)
                        .any(|m| m.version == version)
                });
                if refers {
                    return Some(false);
                }
            }
            return Some(newest < older_than);
        }
    }
    if heads_seen {
        // Heads only as tombstones: the version was collected before; finish the job.
        return Some(true);
    }
    // No head anywhere (only possible for chunks that arrived after their version was
    // collected and its head purged): judge by the age of a local chunk.
    let first = get(
        peers.local().to_string(),
        bucket.to_vec(),
        chunk_key(version, 0).to_vec(),
    )
    .await
    .ok()??;
    let ts = first
        .siblings
        .iter()
        .map(|s| s.timestamp_ms)
        .max()
        .unwrap_or(0);
    Some(ts < older_than)
}

/// Writes a tombstone over this node's record of `(bucket, key)` to every replica; true if
/// there was a live record to delete.
async fn delete_everywhere<T: ReplicaTransport>(
    peers: &T,
    p: u32,
    replicas: &[String],
    bucket: &[u8],
    key: &[u8],
) -> bool {
    let local = Get {
        partition: p,
        bucket: ByteBuf::from(bucket),
        key: ByteBuf::from(key),
    };
    let Ok(Some(record)) = peers
        .call(peers.local(), local, crate::repair::CALL_TIMEOUT)
        .await
    else {
        return false;
    };
    if record.is_deleted() {
        return false;
    }
    let mut tomb = record.clone();
    if tomb
        .update_encoded(
            &record.clock,
            rand::random(),
            None,
            Codec::None,
            now_ms(),
            None,
            usize::MAX,
        )
        .is_err()
    {
        return false;
    }
    for node in replicas {
        let merge = Merge {
            partition: p,
            bucket: ByteBuf::from(bucket),
            key: ByteBuf::from(key),
            record: tomb.clone(),
            condition: Condition::None,
        };
        if let Err(e) = peers.call(node, merge, crate::repair::CALL_TIMEOUT).await {
            tracing::debug!(%node, error = %e, "a chunk tombstone did not reach a replica; anti-entropy will carry it");
        }
    }
    true
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
