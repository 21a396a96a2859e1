//! A cluster of in-process nodes on a simulated network (`ringkv_actors::sim`) and the
//! coordinator calls the quorum tests make on it.

use super::until;
use ringkv_actors::coordinator::{coordinate, KvRequest, Placement, QuorumCause};
use ringkv_actors::rpc::ReplicaTransport;
use ringkv_actors::sim::SimNetwork;
use ringkv_actors::{KvError, NodeConfig};
use ringkv_cluster::membership::{ClusterState, Member, MemberStatus};
use ringkv_storage::{Condition, DvvSet, StorageError, VersionVector};
use std::time::Duration;

pub const PARTITIONS: u32 = 8;
pub const BUCKET: &[u8] = b"carts";
/// A request limit that no scenario reaches unless it means to.
pub const LONG: Duration = Duration::from_secs(30);

/// Nodes `n1..=n{count}` on a simulated network; their data directories go with it.
pub struct Cluster {
    pub net: SimNetwork,
    _dirs: Vec<tempfile::TempDir>,
}

impl Cluster {
    pub async fn start(count: usize) -> Cluster {
        let net = SimNetwork::new();
        let mut dirs = Vec::new();
        for i in 1..=count {
            let dir = tempfile::tempdir().unwrap();
            let config = NodeConfig {
                data_dir: dir.path().to_path_buf(),
                partitions: PARTITIONS,
                initial_map_bytes: 1 << 20,
                ..Default::default()
            };
            net.start_node(&format!("n{i}"), config).await.unwrap();
            dirs.push(dir);
        }
        Cluster { net, _dirs: dirs }
    }

    /// Writes `value` to `key` through a coordinator on node `at`, with the context `context`.
    pub async fn put(
        &self,
        at: &str,
        placement: Placement,
        key: &str,
        value: &str,
        context: VersionVector,
        timeout: Duration,
    ) -> Result<Option<DvvSet>, KvError> {
        self.write(
            at,
            placement,
            key,
            Some(value),
            context,
            Condition::None,
            timeout,
        )
        .await
    }

    /// Writes `value` (`None`: deletes) to `key` through a coordinator on node `at`, with the
    /// context `context`, if `condition` holds.
    #[allow(clippy::too_many_arguments)]
    pub async fn write(
        &self,
        at: &str,
        placement: Placement,
        key: &str,
        value: Option<&str>,
        context: VersionVector,
        condition: Condition,
        timeout: Duration,
    ) -> Result<Option<DvvSet>, KvError> {
        let request = KvRequest::Update {
            bucket: BUCKET.to_vec(),
            key: key.as_bytes().to_vec(),
            context,
            value: value.map(|v| v.as_bytes().to_vec()),
            condition,
            codec: ringkv_storage::Codec::None,
            ttl: None,
        };
        coordinate(request, placement, self.net.peer(at), timeout).await
    }

    /// Reads `key` through a coordinator on node `at`.
    pub async fn get(
        &self,
        at: &str,
        placement: Placement,
        key: &str,
        timeout: Duration,
    ) -> Result<Option<DvvSet>, KvError> {
        let request = KvRequest::Get {
            bucket: BUCKET.to_vec(),
            key: key.as_bytes().to_vec(),
        };
        coordinate(request, placement, self.net.peer(at), timeout).await
    }

    /// The values node `node` stores for `key`, sorted.
    pub fn stored(&self, node: &str, key: &str) -> Vec<String> {
        self.net
            .peer(node)
            .stored(BUCKET, key.as_bytes())
            .unwrap()
            .map(|d| values(&d))
            .unwrap_or_default()
    }

    /// Waits (up to 10 s) until `node` stores exactly `want` for `key`.
    pub async fn until_stored(&self, node: &str, key: &str, want: &[&str]) {
        until(|| {
            let got = self.stored(node, key);
            (got == want)
                .then_some(())
                .ok_or_else(|| format!("{node} stores {got:?} for {key}, not {want:?}"))
        })
        .await
    }

    /// Waits (up to 10 s) until `node` holds `want` hints.
    pub async fn until_hints(&self, node: &str, want: u64) {
        until(|| {
            let held = self.net.peer(node).hints_held().unwrap();
            (held == want)
                .then_some(())
                .ok_or_else(|| format!("{node} holds {held} hints, not {want}"))
        })
        .await
    }

    pub async fn shutdown(self) {
        self.net.shutdown().await;
    }
}

/// The live values of a key state, sorted.
pub fn values(d: &DvvSet) -> Vec<String> {
    let mut v: Vec<String> = d
        .values()
        .map(|v| String::from_utf8(v.to_vec()).unwrap())
        .collect();
    v.sort();
    v
}

/// `key` on replicas n1, n2, n3 (preference list order), the other nodes of `nodes` as
/// fallbacks in order.
pub fn placement(key: &str, nodes: usize, r: usize, w: usize, sloppy: bool) -> Placement {
    Placement {
        partition: ringkv_cluster::partition_for(BUCKET, key.as_bytes(), PARTITIONS),
        replicas: vec!["n1".into(), "n2".into(), "n3".into()],
        r,
        w,
        sloppy,
        fallbacks: (4..=nodes).map(|i| format!("n{i}")).collect(),
        max_siblings: 100,
        also: Vec::new(),
    }
}

/// The condition named by a `condition_failed` error; fails the test for any other error.
pub fn condition_failed(e: KvError) -> String {
    match e {
        KvError::Storage(StorageError::ConditionFailed { condition, .. }) => condition,
        other => panic!("not a condition failure: {other:?}"),
    }
}

pub fn quorum_error(e: KvError) -> (&'static str, usize, usize, usize, QuorumCause) {
    match e {
        KvError::Quorum {
            op,
            answered,
            needed,
            n,
            cause,
            ..
        } => (op, answered, needed, n, cause),
        other => panic!("not a quorum error: {other:?}"),
    }
}

/// A committed layout of n1, n2 and n3 (each partition's preference list holds all three),
/// given to every node's cluster view: anti-entropy sweeps the partitions it lists.
pub fn commit_layout(c: &Cluster) {
    let mut state = ClusterState::new(PARTITIONS);
    for i in 1..=3 {
        state.upsert_member(Member {
            name: format!("n{i}"),
            cluster_addr: format!("127.0.0.{i}:7411"),
            client_addr: format!("127.0.0.{i}:7392"),
            zone: format!("z{i}"),
            capacity: 1,
            status: MemberStatus::Joining,
            version: 0,
            incarnation: 1,
            actor_addr: String::new(),
        });
    }
    state.commit().unwrap();
    for node in ["n1", "n2", "n3"] {
        c.net.peer(node).context().view.merge(&state);
    }
}
