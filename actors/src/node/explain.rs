//! `ringkv explain`: the gathering side ([`Node::explain`]); the types, the summaries and the
//! serving side are in [`crate::explain`].

use super::*;
use crate::explain::{
    exchange_rows, ExplainAnswer, ExplainRead, ExplainReport, HintRow, NodeView, ReplicaRead,
    ReplicaRow, EXPLAIN_TIMEOUT, MAX_EXPLAIN_TIMEOUT, MAX_HINTS_REPORTED,
};
use crate::rpc::Explain;
use ringkv_cluster::membership::Consistency;
use serde_bytes::ByteBuf;
use std::collections::BTreeMap;

impl Node {
    /// Explains `(bucket, key)` (`ringkv explain`, Riak's `riak-admin` preflist and AAE status
    /// for one key): its partition, preference list and fallbacks with their liveness as this
    /// node sees them; each primary's replica read with `local` semantics (no quorum, no read
    /// repair) and summarised (the dotted version vector clock, the siblings' sizes,
    /// tombstone or not; the Paxos acceptor state for a strong bucket); the hints every
    /// reachable member holds for the key, naming their owner; and the last anti-entropy
    /// exchange of each pair of the partition's replicas.
    ///
    /// Every live member is asked one [`Explain`] call, in parallel, each within `timeout`
    /// (default [`EXPLAIN_TIMEOUT`], at most [`MAX_EXPLAIN_TIMEOUT`]), so the answer comes
    /// within about that long. A member that cannot be asked or does not answer is listed in
    /// [`ExplainReport::unreachable`] (and its replica row says `unreachable`); that is not an
    /// error. Nothing is written anywhere.
    ///
    /// # Errors
    /// [`KvError::Storage`] for an invalid bucket or key; [`KvError::NoLayout`] before the
    /// first layout commit; [`KvError::BadQuorum`] if the bucket's properties break the quorum
    /// rule; [`KvError::ShuttingDown`].
    pub async fn explain(
        &self,
        bucket: &[u8],
        key: &[u8],
        timeout: Option<Duration>,
    ) -> Result<ExplainReport, KvError> {
        keys::validate(bucket, key)?;
        if *self.stopped.borrow() {
            return Err(KvError::ShuttingDown);
        }
        let timeout = timeout.unwrap_or(EXPLAIN_TIMEOUT).min(MAX_EXPLAIN_TIMEOUT);
        let state = self.view.snapshot();
        let props = state.bucket_props(bucket);
        let strong = props.consistency == Consistency::Strong;
        let placements = self.view.placements();
        let (placement, _) =
            self.placement_in(&placements, true, bucket, key, &RequestOptions::default())?;
        let p = placement.partition;
        let partition_replicas: Vec<String> = placements
            .prefs
            .get(p as usize)
            .cloned()
            .unwrap_or_default();
        let primaries = placement.replicas.clone();
        let mut pending: Vec<String> = Vec::new();
        for (set, _) in &placement.also {
            for node in set {
                if !primaries.contains(node) && !pending.contains(node) {
                    pending.push(node.clone());
                }
            }
        }
        let fallbacks = if strong {
            Vec::new()
        } else {
            placement.fallbacks.clone()
        };

        let phis: std::collections::HashMap<String, f64> = self
            .view
            .peer_statuses()
            .into_iter()
            .map(|(n, phi, _)| (n, phi))
            .collect();
        let view_of = |node: &String| NodeView {
            node: node.clone(),
            up: self.view.is_up(node),
            phi: if *node == self.peers.local {
                0.0
            } else {
                phis.get(node)
                    .map_or(0.0, |phi| (phi * 100.0).round() / 100.0)
            },
            reachable: self.peers.reachable(node),
        };

        // Every live member may hold hints for the key; the primaries (and the replicas a
        // layout change adds) also read their replica.
        let mut asked: Vec<String> = primaries.iter().chain(&pending).cloned().collect();
        for m in state.live_members() {
            if !asked.contains(&m.name) {
                asked.push(m.name.clone());
            }
        }
        let read = if strong {
            ExplainRead::Paxos
        } else {
            ExplainRead::Record
        };
        let answers = futures::future::join_all(asked.iter().map(|node| {
            let request = Explain {
                partition: p,
                bucket: ByteBuf::from(bucket.to_vec()),
                key: ByteBuf::from(key.to_vec()),
                read: if primaries.contains(node) || pending.contains(node) {
                    read
                } else {
                    ExplainRead::Nothing
                },
            };
            async move {
                let answer: Result<ExplainAnswer, String> = if self.peers.reachable(node) {
                    self.peers
                        .call(node, request, timeout)
                        .await
                        .map_err(|e| e.to_string())
                } else {
                    Err(format!(
                        "node {node} is unreachable (down or cut off, as node {} sees it)",
                        self.peers.local
                    ))
                };
                (node.clone(), answer)
            }
        }))
        .await;
        let answers: BTreeMap<String, Result<ExplainAnswer, String>> =
            answers.into_iter().collect();

        let replicas = primaries
            .iter()
            .chain(&pending)
            .map(|node| replica_row(node, answers.get(node)))
            .collect();
        let mut hints = Vec::new();
        let mut hints_more = 0u64;
        let mut hints_incomplete = Vec::new();
        let mut unreachable = Vec::new();
        for node in &asked {
            match answers.get(node) {
                Some(Ok(a)) => {
                    if !a.hints_complete || a.hints_error.is_some() {
                        hints_incomplete.push(node.clone());
                    }
                    let mut listed = 0u64;
                    for h in &a.hints {
                        listed += 1;
                        if hints.len() < MAX_HINTS_REPORTED {
                            hints.push(HintRow {
                                holder: node.clone(),
                                owner: h.owner.clone(),
                                seq: h.seq,
                                record: h.record.clone(),
                            });
                        } else {
                            hints_more += 1;
                        }
                    }
                    hints_more += a.hints_pending.saturating_sub(listed);
                }
                _ => unreachable.push(node.clone()),
            }
        }
        let logs: BTreeMap<String, Option<(u64, Vec<crate::repair::LastExchange>)>> = answers
            .iter()
            .filter(|(node, _)| partition_replicas.contains(node) || pending.contains(node))
            .map(|(node, a)| {
                (
                    node.clone(),
                    a.as_ref().ok().map(|a| (a.now_ms, a.exchanges.clone())),
                )
            })
            .collect();
        let mut pair_nodes = partition_replicas.clone();
        pair_nodes.extend(pending.iter().cloned());
        Ok(ExplainReport {
            node: self.peers.local.clone(),
            now_ms: crate::coordinator::now_ms(),
            bucket: String::from_utf8_lossy(bucket).into_owned(),
            key: String::from_utf8_lossy(key).into_owned(),
            partition: p,
            partitions: self.config.partitions,
            consistency: props.consistency.name(),
            n: primaries.len(),
            sloppy_quorum: props.sloppy_quorum,
            layout_version: state.read_layout().map_or(0, |c| c.version),
            preference_list: primaries.iter().map(view_of).collect(),
            pending: pending.iter().map(view_of).collect(),
            fallbacks: fallbacks.iter().map(view_of).collect(),
            replicas,
            hints,
            hints_more,
            hints_incomplete,
            unreachable,
            exchanges: exchange_rows(&pair_nodes, &logs),
        })
    }
}

/// The replica row of `node` from its answer (`None`: it was not asked).
fn replica_row(node: &str, answer: Option<&Result<ExplainAnswer, String>>) -> ReplicaRow {
    let row = |status: &'static str| ReplicaRow {
        node: node.to_string(),
        status,
        error: None,
        record: None,
        paxos: None,
    };
    match answer {
        None => ReplicaRow {
            error: Some("not asked".into()),
            ..row("unreachable")
        },
        Some(Err(e)) => ReplicaRow {
            error: Some(e.clone()),
            ..row("unreachable")
        },
        Some(Ok(a)) => match &a.read {
            ReplicaRead::Record(r) => ReplicaRow {
                record: Some(r.clone()),
                ..row("ok")
            },
            ReplicaRead::Paxos(s) => ReplicaRow {
                paxos: Some(s.clone()),
                ..row("ok")
            },
            ReplicaRead::NoRecord => row("no_record"),
            ReplicaRead::NotAsked => ReplicaRow {
                error: Some("the node did not read its replica".into()),
                ..row("failed")
            },
            ReplicaRead::Failed(e) => ReplicaRow {
                error: Some(e.clone()),
                ..row("failed")
            },
        },
    }
}
