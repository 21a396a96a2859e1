//! A simulated network of in-process nodes, for tests of the coordinator's quorums, sloppy
//! quorum and hints, speculative reads and read repair, of hinted handoff and of anti-entropy,
//! in seconds and without processes.
//!
//! Each node of a [`SimNetwork`] has real storage (a data directory the test gives, with its
//! partitions, group-committing writer and hint store) and real vnodes under a
//! [`VNodeSupervisor`]; only the cluster transport is simulated. [`SimPeer`], a node's handle,
//! is a [`ReplicaTransport`]: the coordinator, handoff and repair code run on it unchanged.
//! A call to the node itself runs the typed request directly, as [`Peers`](crate::replica::Peers)
//! does; a call to another node goes through the same wire as between real nodes (the request
//! encoded in an [`Envelope`](crate::rpc::Envelope), served by the same code as the Replica
//! actor, the answer decoded), so its frame limits and error answers hold here too.
//!
//! Faults are set per node and read like a scenario (raft-rs's `nt.cut(1, 3)`):
//!
//! ```no_run
//! # async fn scenario(net: ringkv_actors::sim::SimNetwork) {
//! use std::time::Duration;
//! net.cut("n2"); // unreachable: no session, the failure detector convicted it
//! net.drop_requests("n3"); // requests lost: callers wait out their timeout
//! net.delay("n4", Duration::from_millis(200)); // answers come late
//! net.pause("n5"); // requests wait, served once it is healed
//! net.heal_all();
//! # }
//! ```
//!
//! Nothing here sleeps a fixed time on a test's behalf: a dropped request takes its caller's
//! timeout, a delayed answer its delay, and a paused node's requests wait for [`SimNetwork::heal`].
//! [`SimNetwork::shutdown`] stops every node and aborts the calls still held.

use crate::cluster_view::ClusterView;
use crate::directory::VNodeDirectory;
use crate::node::{config_budget, open_data, NodeError};
use crate::replica::{answer_of, request_frame, serve_frame, ReplicaContext};
use crate::rpc::{Measured, ReplicaError, ReplicaTransport, Rpc};
use crate::supervision::Restarts;
use crate::vnode_supervisor::{VNodeSupervisor, VNodeSupervisorArgs, VNodeSupervisorMsg};
use ractor::{Actor, ActorRef};
use ringkv_cluster::membership::ClusterState;
use ringkv_cluster::phi::PhiConfig;
use ringkv_cluster::NodeConfig;
use ringkv_storage::{DataDir, DvvSet, StorageError};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{oneshot, watch};
use tokio::task::AbortHandle;

/// What the simulated network does to the requests sent to one node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// No session with the node, both ways: calls to and from it fail at once with
    /// [`ReplicaError::Unreachable`], and [`ReplicaTransport::reachable`] says false (as once
    /// the failure detector has convicted it).
    Cut,
    /// Requests to the node are lost: it still looks reachable (nothing has been noticed yet)
    /// and every call waits out its timeout, then fails with [`ReplicaError::Timeout`].
    Drop,
    /// The node serves requests at once but its answers arrive this much later; a caller whose
    /// timeout passes first gets [`ReplicaError::Timeout`].
    Delay(Duration),
    /// The node is paused (SIGSTOP): requests wait until it is healed and are then served,
    /// even those whose callers have given up ([`ReplicaError::Timeout`]), as a resumed node
    /// serves what waited in its socket.
    Pause,
}

/// Calls still in flight that the network holds (a delayed answer, a paused node's
/// requests); aborted by [`SimNetwork::shutdown`].
const MAX_HELD: usize = 100_000;

struct SimNode {
    ctx: Arc<ReplicaContext>,
    data: Arc<DataDir>,
    vnodes: ActorRef<VNodeSupervisorMsg>,
}

#[derive(Default)]
struct Inner {
    nodes: Mutex<BTreeMap<String, SimNode>>,
    faults: Mutex<HashMap<String, Fault>>,
    /// Requests each node received from other nodes (lost ones included).
    received: Mutex<HashMap<String, u64>>,
    /// Bumped on every change of the faults.
    changed: watch::Sender<u64>,
    held: Mutex<Vec<AbortHandle>>,
}

impl Inner {
    fn fault(&self, node: &str) -> Option<Fault> {
        lock(&self.faults).get(node).copied()
    }

    fn context(&self, node: &str) -> Option<Arc<ReplicaContext>> {
        lock(&self.nodes).get(node).map(|n| n.ctx.clone())
    }

    /// Waits until `node` is no longer paused.
    async fn unpaused(&self, node: &str) {
        let mut changes = self.changed.subscribe();
        while self.fault(node) == Some(Fault::Pause) {
            if changes.changed().await.is_err() {
                return;
            }
        }
    }

    /// Runs `task` as a call the network holds.
    ///
    /// # Errors
    /// [`ReplicaError::Overloaded`] if [`MAX_HELD`] calls are held already.
    fn hold(
        &self,
        node: &str,
        task: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> Result<(), ReplicaError> {
        let mut held = lock(&self.held);
        held.retain(|h| !h.is_finished());
        if held.len() >= MAX_HELD {
            return Err(ReplicaError::Overloaded {
                node: node.to_string(),
                limit: MAX_HELD,
            });
        }
        held.push(tokio::spawn(task).abort_handle());
        Ok(())
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A simulated network of in-process nodes with real storage. Cheap to clone: clones share
/// the nodes and the faults.
#[derive(Clone, Default)]
pub struct SimNetwork {
    inner: Arc<Inner>,
}

impl SimNetwork {
    /// An empty network.
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts node `name` on the data directory `config.data_dir` with `config.partitions`
    /// partitions and the limits of `config`; returns its handle. Its cluster view knows no
    /// layout: the tests give the coordinator its placement.
    ///
    /// # Errors
    /// [`NodeError`] if the configuration is invalid, the directory does not open or the
    /// vnodes do not start.
    pub async fn start_node(&self, name: &str, config: NodeConfig) -> Result<SimPeer, NodeError> {
        let data = open_data(&config).await?;
        let q = config.partitions;
        let view = ClusterView::load(
            name.to_string(),
            || ClusterState::new(q),
            data.system.clone(),
            PhiConfig::default(),
        )
        .map_err(|e| NodeError::Spawn(format!("cluster state: {e}")))?;
        let directory = Arc::new(VNodeDirectory::new(q));
        let ctx = Arc::new(ReplicaContext::new(
            name.to_string(),
            &data,
            directory.clone(),
            Arc::new(view),
            &config,
        ));
        let (vnodes, _) = Actor::spawn(
            None,
            VNodeSupervisor,
            VNodeSupervisorArgs {
                partitions: data.partitions.clone(),
                directory,
                budget: Restarts::new(config_budget(&config)),
                stats: ctx.stats.clone(),
            },
        )
        .await
        .map_err(|e| NodeError::Spawn(e.to_string()))?;
        lock(&self.inner.nodes).insert(
            name.to_string(),
            SimNode {
                ctx: ctx.clone(),
                data,
                vnodes,
            },
        );
        Ok(SimPeer {
            net: self.inner.clone(),
            local: name.to_string(),
            ctx,
        })
    }

    /// The handle of node `name`: the transport its coordinators use.
    ///
    /// # Panics
    /// If no node of that name was started (a mistake in the test).
    pub fn peer(&self, name: &str) -> SimPeer {
        let ctx = self
            .inner
            .context(name)
            .unwrap_or_else(|| panic!("no simulated node {name}"));
        SimPeer {
            net: self.inner.clone(),
            local: name.to_string(),
            ctx,
        }
    }

    /// Sets (`Some`) or clears (`None`) the fault of node `node`.
    pub fn set_fault(&self, node: &str, fault: Option<Fault>) {
        {
            let mut faults = lock(&self.inner.faults);
            match fault {
                Some(f) => faults.insert(node.to_string(), f),
                None => faults.remove(node),
            };
        }
        self.inner.changed.send_modify(|g| *g += 1);
    }

    /// Cuts node `node` off ([`Fault::Cut`]).
    pub fn cut(&self, node: &str) {
        self.set_fault(node, Some(Fault::Cut));
    }

    /// Loses every request to node `node` ([`Fault::Drop`]).
    pub fn drop_requests(&self, node: &str) {
        self.set_fault(node, Some(Fault::Drop));
    }

    /// Delays node `node`'s answers by `by` ([`Fault::Delay`]).
    pub fn delay(&self, node: &str, by: Duration) {
        self.set_fault(node, Some(Fault::Delay(by)));
    }

    /// Pauses node `node` ([`Fault::Pause`]).
    pub fn pause(&self, node: &str) {
        self.set_fault(node, Some(Fault::Pause));
    }

    /// Clears node `node`'s fault; a paused node serves what waited.
    pub fn heal(&self, node: &str) {
        self.set_fault(node, None);
    }

    /// Clears every fault.
    pub fn heal_all(&self) {
        lock(&self.inner.faults).clear();
        self.inner.changed.send_modify(|g| *g += 1);
    }

    /// Requests node `node` received from other nodes so far (lost ones included; calls from
    /// a node to itself do not travel and are not counted).
    pub fn received(&self, node: &str) -> u64 {
        lock(&self.inner.received).get(node).copied().unwrap_or(0)
    }

    /// Aborts the calls the network holds, stops every node's vnodes and closes its storage
    /// (queued writes are committed and answered first).
    pub async fn shutdown(&self) {
        for h in lock(&self.inner.held).drain(..) {
            h.abort();
        }
        let nodes: Vec<SimNode> = std::mem::take(&mut *lock(&self.inner.nodes))
            .into_values()
            .collect();
        for node in nodes {
            let _ = node
                .vnodes
                .stop_and_wait(Some("shutdown".into()), Some(Duration::from_secs(10)))
                .await;
            let data = node.data.clone();
            let _ = tokio::task::spawn_blocking(move || data.shutdown()).await;
        }
    }
}

/// One node of a [`SimNetwork`]: its [`ReplicaTransport`].
#[derive(Clone)]
pub struct SimPeer {
    net: Arc<Inner>,
    local: String,
    ctx: Arc<ReplicaContext>,
}

impl SimPeer {
    /// This node's replica of `(bucket, key)`, read from its storage directly, not through
    /// its vnode, so that a test can look at what is stored while the vnode is down or
    /// restarting (`None`: never written here).
    ///
    /// # Errors
    /// Storage errors, an invalid bucket or key.
    pub fn stored(&self, bucket: &[u8], key: &[u8]) -> Result<Option<DvvSet>, StorageError> {
        let p = ringkv_cluster::partition_for(bucket, key, self.ctx.partitions.len() as u32);
        self.ctx.partition(p)?.get(bucket, key)
    }

    /// This node's system store (where a Transfer actor keeps its progress).
    ///
    /// # Panics
    /// If the network was shut down.
    pub fn system(&self) -> Arc<ringkv_storage::SystemStore> {
        lock(&self.net.nodes)
            .get(&self.local)
            .map(|n| n.data.system.clone())
            .expect("the simulated node runs")
    }

    /// Hints this node holds for other nodes.
    ///
    /// # Errors
    /// Storage errors of the hint store.
    pub fn hints_held(&self) -> Result<u64, StorageError> {
        self.ctx.hints.len()
    }
}

impl ReplicaTransport for SimPeer {
    fn local(&self) -> &str {
        &self.local
    }

    fn context(&self) -> &Arc<ReplicaContext> {
        &self.ctx
    }

    fn reachable(&self, node: &str) -> bool {
        node == self.local
            || (self.net.context(node).is_some()
                && self.net.fault(node) != Some(Fault::Cut)
                && self.net.fault(&self.local) != Some(Fault::Cut)
                && self.ctx.view.is_up(node))
    }

    async fn call_sized<R: Rpc>(
        &self,
        node: &str,
        request: R,
        timeout: Duration,
    ) -> Result<Measured<R::Response>, ReplicaError> {
        if node == self.local {
            return crate::rpc::serve_local(&self.ctx, node, request, timeout).await;
        }
        let unreachable = || ReplicaError::Unreachable(node.to_string());
        let target = self.net.context(node).ok_or_else(unreachable)?;
        let fault = self.net.fault(node);
        if fault == Some(Fault::Cut)
            || self.net.fault(&self.local) == Some(Fault::Cut)
            || self.ctx.view.is_isolated(node)
        {
            return Err(unreachable());
        }
        let deadline = tokio::time::Instant::now() + timeout;
        let frame = request_frame(&self.ctx, node, request)?;
        let sent = frame.len();
        *lock(&self.net.received)
            .entry(node.to_string())
            .or_default() += 1;
        if fault == Some(Fault::Drop) {
            tokio::time::sleep_until(deadline).await;
            return Err(ReplicaError::Timeout(node.to_string()));
        }
        let (tx, rx) = oneshot::channel();
        let (net, name) = (self.net.clone(), node.to_string());
        self.net.hold(node, async move {
            net.unpaused(&name).await;
            let answer = serve_frame(&target, &frame).await;
            if let Some(Fault::Delay(by)) = fault {
                tokio::time::sleep(by).await;
            }
            let _ = tx.send(answer);
        })?;
        match tokio::time::timeout_at(deadline, rx).await {
            Ok(Ok(Some(answer))) => answer_of::<R>(node, &answer, sent),
            // The node dropped the request (injected isolation on its side): the caller only
            // sees its timeout pass, as over ractor_cluster.
            Ok(Ok(None)) => {
                tokio::time::sleep_until(deadline).await;
                Err(ReplicaError::Timeout(node.to_string()))
            }
            Ok(Err(_)) => Err(unreachable()),
            Err(_) => Err(ReplicaError::Timeout(node.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rpc::{Envelope, Get, ReplicaFailure};
    use crate::wire::{decode, encode};
    use serde_bytes::ByteBuf;

    async fn node(net: &SimNetwork, name: &str, dir: &tempfile::TempDir) -> SimPeer {
        let config = NodeConfig {
            data_dir: dir.path().to_path_buf(),
            partitions: 4,
            initial_map_bytes: 1 << 20,
            ..Default::default()
        };
        net.start_node(name, config).await.unwrap()
    }

    #[tokio::test]
    async fn undecodable_frames_are_answered_malformed_and_isolated_senders_are_dropped() {
        let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let net = SimNetwork::new();
        let n1 = node(&net, "n1", &d1).await;
        let n2 = node(&net, "n2", &d2).await;
        let get = Get {
            partition: 1,
            bucket: ByteBuf::from(b"b".to_vec()),
            key: ByteBuf::from(b"k".to_vec()),
        };
        let mut unknown_variant = encode(&Envelope {
            from: "n1".into(),
            request: crate::rpc::ReplicaRequest::Get(get.clone()),
        });
        let at = unknown_variant
            .windows(3)
            .position(|w| w == b"Get")
            .unwrap();
        unknown_variant[at..at + 3].copy_from_slice(b"Gex");
        for frame in [&b""[..], b"\x02\x80", b"\x01\xc1", &unknown_variant] {
            let answer = serve_frame(n2.context(), frame).await.unwrap();
            let r: Result<Option<DvvSet>, ReplicaFailure> = decode(&answer).unwrap();
            assert!(
                matches!(r, Err(ReplicaFailure::Malformed(_))),
                "{frame:x?}: {r:?}"
            );
        }
        assert_eq!(
            n1.call("n2", get.clone(), Duration::from_secs(5)).await,
            Ok(None)
        );
        // n2 drops what n1 sends, as across a network partition: n1 sees its timeout pass.
        n2.context().view.set_isolated(["n1".to_string()]);
        let r = n1.call("n2", get, Duration::from_millis(100)).await;
        assert_eq!(r, Err(ReplicaError::Timeout("n2".into())));
        net.shutdown().await;
    }
}

#[cfg(test)]
mod vnode_door {
    //! Anti-entropy and hint operations go through the partition's vnode, as client requests do.
    use super::*;
    use crate::rpc::{Fetch, MergeStored, ReplicaFailure};
    use crate::vnode::VNodeMsg;
    use ringkv_storage::VersionVector;
    use serde_bytes::ByteBuf;
    use std::time::Instant;

    const Q: u32 = 4;

    async fn node(
        net: &SimNetwork,
        name: &str,
        dir: &tempfile::TempDir,
        restarts: usize,
    ) -> SimPeer {
        let config = NodeConfig {
            data_dir: dir.path().to_path_buf(),
            partitions: Q,
            initial_map_bytes: 1 << 20,
            restart_max: restarts,
            request_timeout_ms: 300,
            ..Default::default()
        };
        net.start_node(name, config).await.unwrap()
    }

    fn record(value: &[u8]) -> DvvSet {
        let mut d = DvvSet::new();
        d.update(&VersionVector::new(), 7, Some(value.to_vec()), 1, 10)
            .unwrap();
        d
    }

    /// Partition and stored key of `(b, key)`.
    fn stored_key(key: &[u8]) -> (u32, ByteBuf) {
        let p = ringkv_cluster::partition_for(b"b", key, Q);
        let k = ringkv_storage::keys::storage_key(b"b", key).unwrap();
        (p, ByteBuf::from(k))
    }

    /// Panics the vnode of `p` on `peer` and returns the one that was running.
    fn panic_vnode(peer: &SimPeer, p: u32) -> ActorRef<VNodeMsg> {
        let vnode = peer.context().directory.get(p).expect("a vnode is up");
        vnode.send_message(VNodeMsg::InjectPanic).unwrap();
        vnode
    }

    async fn stats(peer: &SimPeer, p: u32) -> ringkv_storage::PartitionStats {
        crate::replica::vnode_call(
            &peer.context().directory,
            p,
            Duration::from_secs(5),
            |reply| VNodeMsg::Stats { reply },
        )
        .await
        .unwrap()
    }

    #[tokio::test]
    async fn a_fetch_and_a_merge_sent_as_the_vnode_panics_are_served_by_its_successor() {
        let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let net = SimNetwork::new();
        let n1 = node(&net, "n1", &d1, 5).await;
        let n2 = node(&net, "n2", &d2, 5).await;
        let (p, k1) = stored_key(b"k1");
        let k2 = (1..)
            .map(|i| stored_key(format!("k{i}").as_bytes()))
            .find(|(q, k)| *q == p && *k != k1)
            .unwrap()
            .1;
        let merge = |key: &ByteBuf, value: &[u8]| MergeStored {
            partition: p,
            entries: vec![(key.clone(), record(value))],
        };
        let limit = Duration::from_secs(5);
        assert_eq!(n1.call("n2", merge(&k1, b"one"), limit).await, Ok(1));

        let before = panic_vnode(&n2, p);
        // Both reach n2 while its vnode dies: they wait for the restarted one.
        let fetch = Fetch {
            partition: p,
            keys: vec![k1.clone()],
        };
        let (fetched, merged) = tokio::join!(
            n1.call("n2", fetch, limit),
            n1.call("n2", merge(&k2, b"two"), limit)
        );
        assert_eq!(fetched, Ok(vec![Some(record(b"one"))]));
        assert_eq!(merged, Ok(1));
        let after = n2
            .context()
            .directory
            .get(p)
            .expect("the vnode was restarted");
        assert_ne!(before.get_id(), after.get_id());
        assert_eq!(stats(&n2, p).await.keys, 2);
        net.shutdown().await;
    }

    #[tokio::test]
    async fn partition_sizes_lists_the_non_empty_partitions_of_a_node_with_their_bytes() {
        let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let net = SimNetwork::new();
        let n1 = node(&net, "n1", &d1, 5).await;
        let n2 = node(&net, "n2", &d2, 5).await;
        let limit = Duration::from_secs(5);
        let sizes = crate::rpc::PartitionSizes {};
        assert_eq!(n1.call("n2", sizes.clone(), limit).await, Ok(vec![]));
        let (p, k) = stored_key(b"k1");
        let merge = MergeStored {
            partition: p,
            entries: vec![(k, record(b"some value"))],
        };
        assert_eq!(n1.call("n2", merge, limit).await, Ok(1));
        let bytes = stats(&n2, p).await.bytes;
        assert!(bytes > 0);
        // Through the simulated wire (encoded both ways) and locally.
        assert_eq!(
            n1.call("n2", sizes.clone(), limit).await,
            Ok(vec![(p, bytes)])
        );
        assert_eq!(n2.call("n2", sizes, limit).await, Ok(vec![(p, bytes)]));
        net.shutdown().await;
    }

    #[tokio::test]
    async fn with_the_vnode_restart_budget_spent_a_fetch_fails_with_a_vnode_timeout_in_its_time() {
        let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let net = SimNetwork::new();
        let n1 = node(&net, "n1", &d1, 1).await;
        let n2 = node(&net, "n2", &d2, 1).await;
        let (p, k) = stored_key(b"k");
        let limit = Duration::from_secs(5);
        let merge = MergeStored {
            partition: p,
            entries: vec![(k.clone(), record(b"v"))],
        };
        assert_eq!(n1.call("n2", merge, limit).await, Ok(1));

        // The first panic is restarted (budget 1), the second one is not.
        let first = panic_vnode(&n2, p);
        let deadline = Instant::now() + limit;
        let second = n2
            .context()
            .directory
            .wait_for(p, Some(&first), deadline)
            .await
            .expect("the vnode was restarted once");
        second.send_message(VNodeMsg::InjectPanic).unwrap();

        // The partition's data is still on disk, but nothing reaches it without its vnode:
        // n2 answers VNodeTimeout once its request time (300 ms) has passed.
        let started = Instant::now();
        let fetch = Fetch {
            partition: p,
            keys: vec![k],
        };
        let r = n1.call("n2", fetch, limit).await;
        assert_eq!(
            r,
            Err(ReplicaError::Failed(
                "n2".into(),
                ReplicaFailure::VNodeTimeout(p)
            ))
        );
        assert!(started.elapsed() < limit, "took {:?}", started.elapsed());
        assert!(n2.stored(b"b", b"k").unwrap().is_some());
        net.shutdown().await;
    }
}
