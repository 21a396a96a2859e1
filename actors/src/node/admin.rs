//! Cluster administration on a node: `cluster status`, `plan`, `commit`, `leave`, `set`,
//! `replace`, `revert`, `transfers`, and bucket properties. Each is a thin layer over the
//! gossiped [`ClusterState`](ringkv_cluster::membership::ClusterState) held by the node's
//! [`ClusterView`], plus, for `plan` and `transfers`, one typed call to every live member.

use super::*;

/// One member in [`ClusterStatus`] (removed members are not members: see
/// [`ClusterStatus::removed`]).
#[derive(Clone, Debug, serde::Serialize)]
pub struct MemberRow {
    /// Node name.
    pub name: String,
    /// joining, active or leaving.
    pub status: MemberStatus,
    /// Zone.
    pub zone: String,
    /// Capacity.
    pub capacity: u32,
    /// Cluster transport address.
    pub cluster_addr: String,
    /// Client address.
    pub client_addr: String,
    /// Up as this node's failure detector sees it (this node is always up).
    pub up: bool,
    /// Current phi of the peer (0 for this node and for peers never heard from).
    pub phi: f64,
    /// Partition replicas the newest committed layout gives it.
    pub partitions: usize,
    /// Layout transition trackers ([`ringkv_cluster::transition`]): the newest version it
    /// coordinates writes under (`ack`), fully holds (`sync`) and reads from (`sync_ack`).
    pub ack: u64,
    /// See `ack`.
    pub sync: u64,
    /// See `ack`.
    pub sync_ack: u64,
}

/// The cluster as one node sees it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ClusterStatus {
    /// The node answering.
    pub node: String,
    /// Partition count Q.
    pub partitions: u32,
    /// Newest committed layout version (0: none).
    pub layout_version: u64,
    /// Live layout versions, oldest first: more than one while a layout change moves data
    /// ([`ringkv_cluster::transition`]).
    pub live_versions: Vec<u64>,
    /// The layout version reads use (the oldest live one until every new replica is
    /// complete).
    pub read_version: u64,
    /// Hash of the whole cluster state: equal on nodes that agree.
    pub digest: String,
    /// Members by name: every node that joined and was not removed.
    pub members: Vec<MemberRow>,
    /// Names of the nodes that left (the tombstones of the cluster state), by name: they may be stopped.
    /// This node is among them if it was removed itself.
    pub removed: Vec<String>,
    /// Gossip: `exchanges`, the state exchanges this node made or answered since start.
    pub gossip: std::collections::BTreeMap<&'static str, u64>,
    /// Hinted handoff: `stored`, `delivered` (since start) and `pending` (held now).
    pub hints: std::collections::BTreeMap<&'static str, u64>,
    /// Anti-entropy counters since start.
    pub repair: std::collections::BTreeMap<&'static str, u64>,
    /// Restarts per supervised actor type since start.
    pub restarts: std::collections::BTreeMap<&'static str, u64>,
    /// Replica calls: `batches` of merges and reads sent to other nodes (one cluster message
    /// each) and the `batched_calls` they carried, since start.
    pub replica: std::collections::BTreeMap<&'static str, u64>,
    /// Strong buckets' proposer on this node, since start
    /// ([`crate::strong::ProposerStats`]): `ops` proposed here, the `round_trips` to
    /// replicas they took, `quorum_reads` and `fast_writes` (one round trip each),
    /// `conflicts`, `indeterminate` answers, and the operations `forwarded` to another node.
    pub strong: std::collections::BTreeMap<&'static str, u64>,
    /// This node's data: `keys` and `bytes` summed over its partitions
    /// ([`ringkv_storage::PartitionStats`]: each key's LMDB key plus its record, values as
    /// stored, so compressed ones count their compressed size; page overhead not counted).
    pub storage: std::collections::BTreeMap<&'static str, u64>,
    /// LMDB map use of this node's envs: `data` (every partition) and `hints`
    /// ([`ringkv_storage::MapUsage`]: pages used, map size and its maximum, bytes).
    pub lmdb: std::collections::BTreeMap<&'static str, ringkv_storage::MapUsage>,
}

/// Longest `cluster plan` waits for one member's partition sizes.
pub const PLAN_SIZES_TIMEOUT: Duration = Duration::from_secs(2);

/// What [`Node::cluster_transfers`] answers.
#[derive(Clone, Debug, serde::Serialize)]
pub struct TransfersReport {
    /// Every transfer the members answered with, by receiving node, version and partition.
    pub transfers: Vec<crate::transfer::TransferRow>,
    /// Members that did not answer within [`PLAN_SIZES_TIMEOUT`]: their transfers are missing.
    pub not_answered: Vec<String>,
}

/// What [`Node::cluster_plan`] answers.
#[derive(Clone, Debug)]
pub struct PlanReport {
    /// The plan: new layout, moves, joining and leaving members.
    pub plan: Plan,
    /// Per node: replicas gained and lost, estimated bytes in and out; the total.
    pub moves: MoveEstimate,
    /// The staged role changes and replacements the plan includes.
    pub staged: Staged,
    /// Members asked for their partition sizes (the live members of the committed layout).
    pub asked: usize,
    /// Those that did not answer in time: the byte estimate leaves out what only they hold.
    pub not_answered: Vec<String>,
}

impl Node {
    /// The cluster as this node sees it (`ringkv cluster status`).
    pub fn cluster_status(&self) -> ClusterStatus {
        let state = self.view.snapshot();
        let peers: std::collections::HashMap<String, (f64, bool)> = self
            .view
            .peer_statuses()
            .into_iter()
            .map(|(n, phi, up)| (n, (phi, up)))
            .collect();
        let held = state
            .layout
            .as_ref()
            .map(|c| c.layout.replicas_by_name())
            .unwrap_or_default();
        let members = state
            .live_members()
            .map(|m| {
                let (phi, up) = if m.name == self.peers.local {
                    (0.0, true)
                } else {
                    peers.get(&m.name).copied().unwrap_or((0.0, false))
                };
                MemberRow {
                    name: m.name.clone(),
                    status: m.status,
                    zone: m.zone.clone(),
                    capacity: m.capacity,
                    cluster_addr: m.cluster_addr.clone(),
                    client_addr: m.client_addr.clone(),
                    up,
                    phi: (phi * 100.0).round() / 100.0,
                    partitions: held.get(&m.name).copied().unwrap_or(0) as usize,
                    ack: state.trackers.ack.get(&m.name).copied().unwrap_or(0),
                    sync: state.trackers.sync.get(&m.name).copied().unwrap_or(0),
                    sync_ack: state.trackers.sync_ack.get(&m.name).copied().unwrap_or(0),
                }
            })
            .collect();
        let StatsSnapshot {
            mut hints,
            repair,
            replica,
            restarts,
        } = self.peers.ctx.stats.snapshot();
        hints.insert("pending", self.data.hints.len().unwrap_or(0));
        ClusterStatus {
            node: self.peers.local.clone(),
            partitions: state.partitions,
            layout_version: state.layout_version(),
            live_versions: state.live_layouts().map(|c| c.version).collect(),
            read_version: state.read_layout().map_or(0, |c| c.version),
            digest: format!("{:016x}", state.digest()),
            members,
            removed: state.removed_members().map(|m| m.name.clone()).collect(),
            gossip: [("exchanges", self.view.exchanges())].into_iter().collect(),
            hints,
            repair,
            restarts,
            replica,
            strong: self.peers.ctx.strong.stats.snapshot(),
            storage: {
                let (mut keys, mut bytes) = (0, 0);
                for p in &self.data.partitions {
                    if let Ok(s) = p.stats() {
                        keys += s.keys;
                        bytes += s.bytes;
                    }
                }
                [("keys", keys), ("bytes", bytes)].into_iter().collect()
            },
            lmdb: [
                ("data", self.data.store.map_usage()),
                ("hints", self.data.hints.map_usage()),
            ]
            .into_iter()
            .collect(),
        }
    }

    /// The layout a partition-aware client routes by (op `layout`): this node's read version
    /// and, for every partition, the preference list its coordinators use now (the read
    /// version's: reads ask it, a write is coordinated by its first reachable replica, and a
    /// strong key's proposer is its first reachable replica), with every live member's client
    /// address and liveness as this node's failure detector sees it. Dynamo's client-driven
    /// coordination (section 6.4) and Cassandra's token-aware drivers route by the same.
    ///
    /// # Errors
    /// [`KvError::NoLayout`] before the first commit.
    pub fn routing_layout(&self) -> Result<ringkv_proto::LayoutInfo, KvError> {
        let placements = self.view.placements();
        if placements.read_version == 0 {
            return Err(KvError::NoLayout);
        }
        type Named = (String, String, String);
        let (partitions, members): (u32, Vec<Named>) = {
            let state = self.view.read();
            (
                state.partitions,
                state
                    .live_members()
                    .map(|m| (m.name.clone(), m.client_addr.clone(), m.actor_addr.clone()))
                    .collect(),
            )
        };
        let index: std::collections::HashMap<&str, u32> = members
            .iter()
            .enumerate()
            .map(|(i, (name, _, _))| (name.as_str(), i as u32))
            .collect();
        let preference_lists = placements
            .prefs
            .iter()
            .map(|list| {
                list.iter()
                    .filter_map(|name| index.get(name.as_str()).copied())
                    .collect()
            })
            .collect();
        let nodes = members
            .iter()
            .map(|(name, client_addr, actor_addr)| ringkv_proto::LayoutNode {
                up: self.view.is_up(name),
                name: name.clone(),
                client_addr: client_addr.clone(),
                actor_addr: (!actor_addr.is_empty()).then(|| actor_addr.clone()),
            })
            .collect();
        Ok(ringkv_proto::LayoutInfo {
            node: self.peers.local.clone(),
            version: placements.read_version,
            layout_version: placements.version,
            partitions,
            nodes,
            preference_lists,
        })
    }

    /// The layout version a partition-aware client should route by: the one
    /// [`Node::routing_layout`] answers (0 before the first commit). Cheap: the placements
    /// are computed once per change of the cluster state.
    pub fn routing_version(&self) -> u64 {
        self.view.placements().read_version
    }

    /// The layout the next commit would install, with the staged changes, and what it moves
    /// (`ringkv cluster plan`): per node the replicas gained and lost and the estimated bytes
    /// in and out. The sizes come from every live member placed in the committed layout,
    /// asked in parallel ([`PartitionSizes`], [`PLAN_SIZES_TIMEOUT`] each); per partition the
    /// largest size a replica reported counts. Members that did not answer (down,
    /// unreachable, slow) are listed, and the estimate is then partial.
    ///
    /// # Errors
    /// [`KvError::Admin`] if no layout fits or the plan is refused (see
    /// [`ringkv_cluster::staging`]).
    pub async fn cluster_plan(&self) -> Result<PlanReport, KvError> {
        let state = self.view.snapshot();
        let plan = state.plan().map_err(|e| KvError::Admin(e.to_string()))?;
        let committed = state.layout.as_ref().map(|c| &c.layout);
        let asked: Vec<&str> = state
            .live_members()
            .filter(|m| committed.is_some_and(|l| l.index_of(&m.name).is_some()))
            .map(|m| m.name.as_str())
            .collect();
        let answers = futures::future::join_all(asked.iter().map(|&name| async move {
            let answer = if self.peers.reachable(name) {
                self.peers
                    .call(name, PartitionSizes {}, PLAN_SIZES_TIMEOUT)
                    .await
                    .ok()
            } else {
                None
            };
            (name, answer)
        }))
        .await;
        let mut sizes = std::collections::BTreeMap::<u32, u64>::new();
        let mut not_answered = Vec::new();
        for (name, answer) in answers {
            match answer {
                Some(held) => {
                    for (p, bytes) in held {
                        let size = sizes.entry(p).or_default();
                        *size = (*size).max(bytes);
                    }
                }
                None => not_answered.push(name.to_string()),
            }
        }
        Ok(PlanReport {
            moves: staging::estimate(committed, &plan.layout, &sizes),
            plan,
            staged: state.staged.value.clone(),
            asked: asked.len(),
            not_answered,
        })
    }

    /// The partition transfers of every live member (`ringkv cluster transfers`): each
    /// member is asked for its Transfer actor's rows (what it receives), in parallel, for at
    /// most [`PLAN_SIZES_TIMEOUT`].
    pub async fn cluster_transfers(&self) -> TransfersReport {
        let state = self.view.snapshot();
        let asked: Vec<&str> = state.live_members().map(|m| m.name.as_str()).collect();
        let answers = futures::future::join_all(asked.iter().map(|&name| async move {
            let answer = if self.peers.reachable(name) {
                self.peers
                    .call(name, crate::rpc::Transfers {}, PLAN_SIZES_TIMEOUT)
                    .await
                    .ok()
            } else {
                None
            };
            (name, answer)
        }))
        .await;
        let mut report = TransfersReport {
            transfers: Vec::new(),
            not_answered: Vec::new(),
        };
        for (name, answer) in answers {
            match answer {
                Some(rows) => report.transfers.extend(rows),
                None => report.not_answered.push(name.to_string()),
            }
        }
        report
            .transfers
            .sort_by(|a, b| (&a.to, a.version, a.partition).cmp(&(&b.to, b.version, b.partition)));
        report
    }

    /// Stages a role change of `node` (`ringkv cluster set NODE capacity=C zone=Z`): the plan
    /// uses it, the next commit writes it into the member. Returns everything staged.
    ///
    /// # Errors
    /// [`KvError::Admin`] for an unknown or removed node, a capacity of 0, an empty zone,
    /// nothing to set, or if this node was removed.
    pub fn cluster_set(
        &self,
        node: &str,
        zone: Option<String>,
        capacity: Option<u64>,
    ) -> Result<Staged, KvError> {
        self.check_not_removed()?;
        self.view
            .update(|s| {
                s.stage_role(node, zone, capacity)
                    .map(|()| s.staged.value.clone())
            })
            .map_err(|e| KvError::Admin(e.to_string()))
    }

    /// Stages the replacement of `old` by `new` (`ringkv cluster replace OLD NEW`): `old`
    /// becomes leaving, and the plan gives `new` (a joining member) exactly `old`'s partition
    /// slots. `old` need not be reachable. Returns everything staged.
    ///
    /// # Errors
    /// [`KvError::Admin`] as [`ClusterState::stage_replace`] refuses, or if this node was
    /// removed.
    pub fn cluster_replace(&self, old: &str, new: &str) -> Result<Staged, KvError> {
        self.check_not_removed()?;
        self.view
            .update(|s| s.stage_replace(old, new).map(|()| s.staged.value.clone()))
            .map_err(|e| KvError::Admin(e.to_string()))
    }

    /// Drops everything staged (`ringkv cluster revert`) and sets leaving members still
    /// placed in the layout back to active. Returns what was dropped.
    ///
    /// # Errors
    /// [`KvError::Admin`] if this node was removed.
    pub fn cluster_revert(&self) -> Result<Reverted, KvError> {
        self.check_not_removed()?;
        self.view
            .update(|s| Ok(s.revert_staged()))
            .map_err(|e| KvError::Admin(e.to_string()))
    }

    /// Refuses layout changes on a node that was removed: gossip would no longer spread them.
    fn check_not_removed(&self) -> Result<(), KvError> {
        if self.view.is_removed() {
            return Err(KvError::Admin(format!(
                "this node ({}) was removed from the cluster; run the command on a member",
                self.peers.local
            )));
        }
        Ok(())
    }

    /// Installs the planned layout (`ringkv cluster commit`); gossip spreads it. Leaving
    /// members become removed (tombstones; see [`ringkv_cluster::membership`]).
    ///
    /// # Errors
    /// [`KvError::Admin`] if there is nothing to commit, no layout fits, or this node was
    /// removed.
    pub fn cluster_commit(&self) -> Result<Plan, KvError> {
        self.check_not_removed()?;
        let plan = self
            .view
            .commit()
            .map_err(|e| KvError::Admin(e.to_string()))?;
        tracing::info!(
            version = plan.version,
            moved = plan.moved,
            "layout committed"
        );
        Ok(plan)
    }

    /// Marks `node` as leaving: the next commit takes it out of the layout, its partitions
    /// move to their new replicas, and then it becomes a tombstone (`removed`). Marking a
    /// leaving node again changes nothing.
    ///
    /// # Errors
    /// [`KvError::Admin`] for an unknown node, a node already removed, or if this node was
    /// removed.
    pub fn cluster_leave(&self, node: &str) -> Result<(), KvError> {
        self.check_not_removed()?;
        self.view
            .update(|s| s.mark_leaving(node))
            .map_err(|e| KvError::Admin(e.to_string()))
    }

    /// A bucket's properties (the defaults if never set).
    pub fn bucket_props(&self, bucket: &[u8]) -> BucketProps {
        self.view.read().bucket_props(bucket)
    }
}
