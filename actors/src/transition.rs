//! The layout transition job: moves this node's part of a layout change forward.
//!
//! Every `heartbeat-ms` it
//! 1. raises this node's trackers and prunes finished versions
//!    ([`ClusterView::advance`](crate::cluster_view::ClusterView::advance), after
//!    [`ringkv_cluster::transition`]), logging the versions retired and the members that left;
//! 2. hands the partitions this node must receive to the Transfer actor (when one is
//!    registered), leaving out a partition whose old copy is still being cleared here;
//! 3. once no transition is under way, clears the copies of partitions that no live version
//!    gives this node any more (the old holder drops its copy only after the new replicas are
//!    complete and every node reads from them), one partition at a time through its vnode.

use crate::replica::Peers;
use crate::rpc::ReplicaTransport;
use crate::vnode::VNodeMsg;
use ringkv_cluster::transition::Task;
use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Time limit of one vnode call of the job (a clear of a large partition takes seconds).
pub const CALL_TIMEOUT: Duration = Duration::from_secs(120);

/// The actor running [`Transition`] periodically.
pub type TransitionActor = crate::periodic::Periodic<Transition>;

/// Where the transfer tasks go: the Transfer actor, or a test's recorder.
pub type TaskSink = Arc<dyn Fn(Vec<Task>) + Send + Sync>;

/// The transition job.
pub struct Transition<T: ReplicaTransport = Peers> {
    /// How this node's vnodes and peers are reached.
    pub peers: T,
    /// Receives, every run, the full list of transfers this node should run now.
    pub tasks: Option<TaskSink>,
    /// Partitions being cleared here.
    pub clearing: Arc<Mutex<BTreeSet<u32>>>,
}

impl<T: ReplicaTransport> Transition<T> {
    /// A job with no transfer sink yet.
    pub fn new(peers: T, tasks: Option<TaskSink>) -> Self {
        Self {
            peers,
            tasks,
            clearing: Arc::default(),
        }
    }

    /// One run: advance, hand out transfers, clear dropped partitions.
    pub async fn step(&self) {
        let view = &self.peers.context().view;
        let advanced = view.advance();
        if let Some(v) = advanced.pruned {
            tracing::info!(
                version = v,
                "layout transition over: every node reads the newest version"
            );
        }
        for name in &advanced.left {
            tracing::info!(node = %name, "member left the cluster; it may be stopped");
        }
        if let Some(sink) = &self.tasks {
            let clearing = self
                .clearing
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
            let tasks: Vec<Task> = view
                .transfer_tasks()
                .into_iter()
                .filter(|t| !clearing.contains(&t.partition))
                .collect();
            sink(tasks);
        }
        self.clear_dropped().await;
    }

    async fn clear_dropped(&self) {
        let ctx = self.peers.context();
        let local = self.peers.local().to_string();
        let dropped = ctx.view.read().dropped_partitions(&local);
        for p in dropped {
            if p >= ctx.directory.partitions() {
                continue;
            }
            let stats = crate::replica::vnode_call(&ctx.directory, p, CALL_TIMEOUT, |reply| {
                VNodeMsg::Stats { reply }
            })
            .await;
            // Strong buckets' acceptor states are not counted in the stats: look for one.
            let strong = crate::replica::vnode_call(&ctx.directory, p, CALL_TIMEOUT, |reply| {
                VNodeMsg::PaxosKeys {
                    after: None,
                    max: 1,
                    reply,
                }
            })
            .await;
            if !matches!(stats, Ok(s) if s.keys > 0) && !matches!(strong, Ok(k) if !k.is_empty()) {
                continue;
            }
            // Checked again right before: a commit may have given the partition back.
            if !ctx.view.read().dropped_partitions(&local).contains(&p) {
                continue;
            }
            self.clearing
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(p);
            let cleared = crate::replica::vnode_call(&ctx.directory, p, CALL_TIMEOUT, |reply| {
                VNodeMsg::Clear { reply }
            })
            .await;
            self.clearing
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&p);
            match cleared {
                Ok(keys) => {
                    tracing::info!(
                        partition = p,
                        keys,
                        "cleared a partition this node no longer holds"
                    )
                }
                Err(e) => {
                    tracing::warn!(partition = p, error = %e, "clearing a dropped partition failed; retrying next run")
                }
            }
        }
    }
}

impl<T: ReplicaTransport> crate::periodic::PeriodicJob for Transition<T> {
    const NAME: &'static str = "layout transition";

    async fn run(self: Arc<Self>) {
        self.step().await;
    }
}
