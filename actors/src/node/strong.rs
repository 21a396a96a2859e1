//! The node's side of strong buckets: routing an operation to the key's proposer, and the
//! bucket property `consistency` ([`crate::strong`] has the protocol).

use super::*;
use crate::rpc::{HoldsBucket, ReplicaError, StrongRequest};
use crate::strong::{StrongError, StrongOp, StrongReply};
use ringkv_cluster::membership::Consistency;
use serde_bytes::ByteBuf;

/// Bytes an acceptor state adds to a strong value (ballots, format byte, presence byte),
/// rounded up: a strong value may be at most `max-record-bytes` minus this.
pub const STRONG_OVERHEAD: usize = 64;

impl Node {
    /// True if `bucket` has `consistency = strong`.
    pub fn is_strong(&self, bucket: &[u8]) -> bool {
        self.view.read().bucket_props(bucket).consistency == Consistency::Strong
    }

    /// Largest value a strong bucket takes, bytes: `max-value-bytes`, or `max-record-bytes`
    /// less [`STRONG_OVERHEAD`] if that is smaller (strong values are never chunked).
    pub fn strong_value_limit(&self) -> usize {
        self.config
            .max_value_bytes
            .min(self.config.record_limit().saturating_sub(STRONG_OVERHEAD))
    }

    /// Runs `op` on `(bucket, key)` of a strong bucket: linearizable ([`crate::strong`]).
    /// The first reachable replica of the key's preference list proposes it (this node, or
    /// another one the request is forwarded to); if it cannot be reached this node proposes.
    /// Only `opts.timeout` applies: the bucket's `n` is used whatever the request says (two
    /// operations with different replica sets could miss each other's majorities).
    ///
    /// # Errors
    /// [`KvError::Storage`] for an invalid bucket or key, [`KvError::ValueTooLarge`],
    /// [`KvError::BadQuorum`], [`KvError::Strong`] ([`StrongError`]: `ConditionFailed`,
    /// `Unavailable` = nothing written, `Indeterminate` = outcome unknown), and
    /// [`KvError::Overloaded`] when the forwarded request could not be sent.
    pub async fn strong(
        &self,
        bucket: &[u8],
        key: &[u8],
        op: StrongOp,
        opts: &RequestOptions,
    ) -> Result<StrongReply, KvError> {
        if *self.stopped.borrow() {
            return Err(KvError::ShuttingDown);
        }
        keys::validate(bucket, key)?;
        let limit = self.strong_value_limit();
        let biggest = match &op {
            StrongOp::Put { value } => value.len(),
            StrongOp::Cas { new, .. } => new.as_ref().map_or(0, |v| v.len()),
            _ => 0,
        };
        if biggest > limit {
            return Err(KvError::ValueTooLarge {
                len: biggest,
                max: limit,
            });
        }
        // The bucket's n, never the request's: every operation on a key must use the same
        // replica set, or two majorities need not meet.
        let opts = RequestOptions {
            timeout: opts.timeout,
            ..RequestOptions::default()
        };
        let (placement, timeout) = self.placement(bucket, key, &opts)?;
        let n = placement.replicas.len().max(1);
        let leader = placement
            .replicas
            .iter()
            .find(|r| self.peers.reachable(r))
            .cloned();
        let local = self.peers.local.clone();
        if let Some(leader) = leader.filter(|l| *l != local) {
            let request = StrongRequest {
                bucket: ByteBuf::from(bucket.to_vec()),
                key: ByteBuf::from(key.to_vec()),
                op: op.clone(),
                n: n as u8,
                timeout_ms: timeout.as_millis() as u64,
            };
            // The proposer gets the request's time; the call a little more, for the way back.
            let wait = timeout + Duration::from_millis(200);
            let answer = self.peers.call(&leader, request, wait).await;
            let unsent = matches!(
                answer,
                Err(ReplicaError::Unreachable(_)
                    | ReplicaError::Overloaded { .. }
                    | ReplicaError::TooLarge { .. })
            );
            if !unsent {
                crate::stats::add(&self.peers.ctx.strong.stats.forwarded, 1);
            }
            match answer {
                Ok(Ok(mut reply)) => {
                    reply.forwarded = true;
                    return Ok(reply);
                }
                Ok(Err(e)) => return Err(KvError::Strong(e)),
                // A read has no effect: propose it here. A write may have been sent before
                // the session dropped (the transport says `Unreachable` then too), and
                // proposing it here could apply it twice.
                Err(ReplicaError::Unreachable(_)) if matches!(op, StrongOp::Get) => {}
                Err(e @ (ReplicaError::Overloaded { .. } | ReplicaError::TooLarge { .. })) => {
                    return Err(KvError::Overloaded(e.to_string()))
                }
                Err(e) => {
                    let why = format!("the key's proposer {leader}: {e}");
                    return Err(KvError::Strong(match op {
                        StrongOp::Get => StrongError::Unavailable(why),
                        _ => StrongError::Indeterminate(why),
                    }));
                }
            }
        }
        crate::strong::propose(
            &self.peers,
            placement.partition,
            bucket,
            key,
            &op,
            n,
            timeout,
        )
        .await
        .map_err(KvError::Strong)
    }

    /// Sets a bucket's properties; gossip spreads them. `consistency` is fixed once the
    /// bucket holds data: a strong bucket stays strong, and an eventual bucket becomes strong
    /// only if no node of the cluster stores a key of it (every member is asked; one that
    /// does not answer refuses the change).
    ///
    /// # Errors
    /// [`KvError::BadQuorum`] for properties that break `1 <= r, w <= n <= 3`;
    /// [`KvError::Admin`] for a refused change of `consistency`.
    pub async fn set_bucket_props(&self, bucket: &[u8], props: BucketProps) -> Result<(), KvError> {
        keys::validate(bucket, b"k")?;
        let current = self.bucket_props(bucket);
        if current.consistency == Consistency::Strong && props.n != current.n {
            return Err(KvError::Admin(format!(
                "bucket {} is strong: its n is fixed (a key's majorities must keep meeting)",
                String::from_utf8_lossy(bucket)
            )));
        }
        if current.consistency != props.consistency {
            if current.consistency == Consistency::Strong {
                return Err(KvError::Admin(format!(
                    "bucket {} is strong; consistency is fixed once set (create another bucket for eventual data)",
                    String::from_utf8_lossy(bucket)
                )));
            }
            let members: Vec<String> = self
                .view
                .read()
                .live_members()
                .map(|m| m.name.clone())
                .collect();
            let members = if members.is_empty() {
                vec![self.peers.local.clone()]
            } else {
                members
            };
            let asked = futures::future::join_all(members.iter().map(|m| {
                let req = HoldsBucket {
                    bucket: ByteBuf::from(bucket.to_vec()),
                };
                async move { (m, self.peers.call(m, req, PLAN_SIZES_TIMEOUT).await) }
            }))
            .await;
            for (m, answer) in asked {
                match answer {
                    Ok(false) => {}
                    Ok(true) => {
                        return Err(KvError::Admin(format!(
                            "bucket {} already holds eventual data (node {m} stores keys of it): consistency=strong must be set before the first write",
                            String::from_utf8_lossy(bucket)
                        )))
                    }
                    Err(e) => {
                        return Err(KvError::Admin(format!(
                            "cannot check that bucket {} holds no data: {e}",
                            String::from_utf8_lossy(bucket)
                        )))
                    }
                }
            }
        }
        self.view
            .set_bucket_props(bucket, props)
            .map_err(|e| KvError::BadQuorum(e.to_string()))
    }
}
