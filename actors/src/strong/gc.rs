//! Garbage collection of deleted strong keys (see the parent module's "Deletes and garbage
//! collection").

use super::*;

/// Keys of one partition [`collect_garbage`] looks at in one pass.
pub const GC_SCAN_LIMIT: usize = 10_000;

/// Garbage collection of deleted strong keys in partition `partition` (CASPaxos section
/// 3.1's deletion, simplified by a ballot floor): a key whose state on **every** replica of
/// `prefs` (the first `n`, `n` its bucket's) is the same tombstone (value absent, same
/// accepted ballot) is erased on every replica. An erase is conditional (the replica still
/// holds that tombstone) and raises the replica's ballot floor for the partition to the
/// erased state's promise, so a proposal made before the erase is refused after it, and a
/// key whose replicas are partly erased still reads as absent (each holds the tombstone or
/// nothing). Run by the node that is first in the partition's preference list, outside
/// layout transitions (the caller's [`crate::repair::collect_all`] checks both). Returns
/// the keys erased.
///
/// # Errors
/// Why the pass stopped (the local key listing failed).
pub async fn collect_garbage<T: ReplicaTransport>(
    peers: &T,
    partition: u32,
    prefs: &[String],
) -> Result<usize, String> {
    if prefs.first().map(String::as_str) != Some(peers.local()) {
        return Ok(0);
    }
    let ctx = peers.context();
    let layout = ctx.view.placements().version;
    let mut after: Option<ByteBuf> = None;
    let mut seen = 0usize;
    let mut erased = 0usize;
    while seen < GC_SCAN_LIMIT {
        let page = peers
            .call(
                peers.local(),
                PaxosKeys {
                    partition,
                    after: after.clone(),
                    max: CARRY_PAGE,
                },
                ctx.timeout,
            )
            .await
            .map_err(|e| e.to_string())?;
        seen += page.len();
        let last = page.last().cloned();
        for stored in &page {
            let Some((bucket, key)) = ringkv_storage::keys::split_storage_key(stored) else {
                continue;
            };
            let n = usize::from(ctx.view.read().bucket_props(bucket).n);
            let replicas = &prefs[..n.min(prefs.len())];
            if erase_if_deleted(peers, partition, bucket, key, replicas, layout).await {
                erased += 1;
            }
        }
        if page.len() < CARRY_PAGE as usize {
            break;
        }
        after = last;
    }
    Ok(erased)
}

/// Erases one key's tombstone on every replica of `replicas` if they all hold the same one.
async fn erase_if_deleted<T: ReplicaTransport>(
    peers: &T,
    partition: u32,
    bucket: &[u8],
    key: &[u8],
    replicas: &[String],
    layout: u64,
) -> bool {
    let timeout = peers.context().timeout;
    let states = futures::future::join_all(replicas.iter().map(|node| {
        let req = PaxosRead {
            partition,
            bucket: ByteBuf::from(bucket.to_vec()),
            key: ByteBuf::from(key.to_vec()),
            layout,
        };
        async move { peers.call(node, req, timeout).await }
    }))
    .await;
    let mut tombstone: Option<Ballot> = None;
    for s in states {
        match s {
            Ok(Fenced::Ok(Some(state)))
                if state.value.is_none() && state.accepted > Ballot::ZERO =>
            {
                if tombstone.is_some_and(|b| b != state.accepted) {
                    return false;
                }
                tombstone = Some(state.accepted);
            }
            _ => return false,
        }
    }
    let Some(accepted) = tombstone else {
        return false;
    };
    let erased = futures::future::join_all(replicas.iter().map(|node| {
        let req = Paxos {
            partition,
            bucket: ByteBuf::from(bucket.to_vec()),
            key: ByteBuf::from(key.to_vec()),
            step: PaxosStep::Erase { accepted },
            layout,
        };
        async move { peers.call(node, req, timeout).await }
    }))
    .await;
    erased
        .iter()
        .all(|r| matches!(r, Ok(Fenced::Ok(a)) if a.ok))
}
