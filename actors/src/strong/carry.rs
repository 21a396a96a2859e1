//! Carrying strong keys over to a new replica set during a layout change (see the parent
//! module's "Membership changes").

use super::*;

/// Carries the strong keys of `partition` over to the newest layout's replica set, before
/// this node (a new replica of it) reports the partition transferred: lists the keys that
/// have an acceptor state on a **majority** of the read version's replicas (a chosen value is
/// on a majority, which meets every majority), page by page, and runs an identity round on
/// each with joint quorums (every live set), which leaves its value accepted by a majority
/// of the new set. Answers the number of keys carried.
///
/// # Errors
/// Why it stopped (no majority of the old set listed its keys, a key's round failed); the
/// transfer retries later.
pub async fn carry_over<T: ReplicaTransport>(peers: &T, partition: u32) -> Result<u64, String> {
    let ctx = peers.context();
    let placements = ctx.view.placements();
    let old: Vec<String> = placements
        .prefs
        .get(partition as usize)
        .cloned()
        .unwrap_or_default();
    if old.is_empty() {
        return Ok(0);
    }
    let need = old.len() / 2 + 1;
    let mut after: Option<Vec<u8>> = None;
    let mut carried = 0u64;
    loop {
        // One page from each old replica; the keys up to the smallest "last key" of a full
        // page are complete for every replica that answered.
        let pages = futures::future::join_all(old.iter().map(|node| {
            let req = PaxosKeys {
                partition,
                after: after.clone().map(ByteBuf::from),
                max: CARRY_PAGE,
            };
            async move { peers.call(node, req, ctx.timeout).await }
        }))
        .await;
        let answered: Vec<Vec<ByteBuf>> = pages.into_iter().filter_map(Result::ok).collect();
        if answered.len() < need {
            return Err(format!(
                "only {} of {} replicas of partition {partition} listed their strong keys ({need} needed)",
                answered.len(),
                old.len()
            ));
        }
        let bound: Option<Vec<u8>> = answered
            .iter()
            .filter(|p| p.len() >= CARRY_PAGE as usize)
            .filter_map(|p| p.last().map(|k| k.to_vec()))
            .min();
        let mut keys: Vec<Vec<u8>> = answered
            .into_iter()
            .flatten()
            .map(ByteBuf::into_vec)
            .filter(|k| bound.as_ref().is_none_or(|b| k <= b))
            .collect();
        keys.sort();
        keys.dedup();
        for stored in &keys {
            let Some((bucket, key)) = ringkv_storage::keys::split_storage_key(stored) else {
                continue;
            };
            let n = usize::from(ctx.view.read().bucket_props(bucket).n);
            // The key's proposer may be writing it meanwhile: a duel only costs a retry.
            let mut tries = 0;
            loop {
                match propose(
                    peers,
                    partition,
                    bucket,
                    key,
                    &StrongOp::Get,
                    n,
                    ctx.timeout,
                )
                .await
                {
                    Ok(_) => break,
                    Err(e) if tries >= CARRY_TRIES => {
                        return Err(format!(
                            "carrying over a strong key of partition {partition}: {e}"
                        ))
                    }
                    Err(_) => {
                        tries += 1;
                        tokio::time::sleep(backoff(tries)).await;
                    }
                }
            }
            carried += 1;
        }
        match bound {
            Some(b) => after = Some(b),
            None => return Ok(carried),
        }
    }
}
