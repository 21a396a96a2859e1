//! The NodeSupervisor and [`Node`], the handle through which the API (or an embedding Rust
//! service) uses a running node.

use crate::coordinator::{Coordinator, CoordinatorArgs, KvError, KvRequest};
use crate::directory::VNodeDirectory;
use crate::supervision::RestartBudget;
use crate::vnode::VNodeMsg;
use crate::vnode_supervisor::{VNodeSupervisor, VNodeSupervisorArgs};
use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef, SupervisionEvent};
use ractor_cluster::RactorMessage;
use ringkv_cluster::{partition_for, NodeConfig};
use ringkv_storage::{
    keys, DataDir, DvvSet, Partition, PartitionOptions, StorageError, VersionVector,
};
use std::sync::Arc;
use std::time::{Duration, Instant};
use thiserror::Error;
use tokio::sync::{oneshot, watch};

/// Why a node did not start.
#[derive(Debug, Error)]
pub enum NodeError {
    /// A setting is invalid.
    #[error("invalid configuration: {0}")]
    Config(#[from] ringkv_cluster::ConfigError),
    /// The data directory could not be opened.
    #[error("cannot open data directory: {0}")]
    Storage(#[from] StorageError),
    /// An actor did not start.
    #[error("cannot start actors: {0}")]
    Spawn(String),
}

/// The NodeSupervisor takes no messages of its own; it only supervises.
#[derive(RactorMessage)]
pub enum NodeSupervisorMsg {}

/// Arguments of the [`NodeSupervisor`].
pub struct NodeSupervisorArgs {
    /// Partition `i` at index `i`, owned for the life of the node.
    pub partitions: Vec<Arc<Partition>>,
    /// Where the vnodes are.
    pub directory: Arc<VNodeDirectory>,
    /// Restarts of the VNodeSupervisor allowed.
    pub budget: RestartBudget,
    /// Restarts of vnodes allowed, per VNodeSupervisor incarnation.
    pub vnode_budget: RestartBudget,
}

/// State of the [`NodeSupervisor`].
pub struct NodeSupervisorState {
    args: NodeSupervisorArgs,
    vnodes: Option<ActorCell>,
}

/// Root of a node's supervision tree.
pub struct NodeSupervisor;

impl NodeSupervisor {
    async fn start_vnodes(
        myself: &ActorRef<NodeSupervisorMsg>,
        state: &mut NodeSupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        let (sup, _) = Actor::spawn_linked(
            None,
            VNodeSupervisor,
            VNodeSupervisorArgs {
                partitions: state.args.partitions.clone(),
                directory: state.args.directory.clone(),
                budget: state.args.vnode_budget.clone(),
            },
            myself.get_cell(),
        )
        .await?;
        state.vnodes = Some(sup.get_cell());
        Ok(())
    }
}

impl Actor for NodeSupervisor {
    type Msg = NodeSupervisorMsg;
    type State = NodeSupervisorState;
    type Arguments = NodeSupervisorArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: NodeSupervisorArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        let mut state = NodeSupervisorState { args, vnodes: None };
        Self::start_vnodes(&myself, &mut state).await?;
        Ok(state)
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let SupervisionEvent::ActorFailed(cell, error) = event else {
            return Ok(());
        };
        if state.vnodes.as_ref().map(|c| c.get_id()) != Some(cell.get_id()) {
            return Ok(());
        }
        state.vnodes = None;
        if !state.args.budget.allow(Instant::now()) {
            tracing::error!(%error, "VNodeSupervisor failed past its restart budget; stopping the node");
            return Err(format!("VNodeSupervisor failed past its restart budget: {error}").into());
        }
        tracing::warn!(%error, "VNodeSupervisor failed; restarting it");
        Self::start_vnodes(&myself, state).await
    }
}

/// Per-request settings.
#[derive(Clone, Debug, Default)]
pub struct RequestOptions {
    /// Time limit; `None` uses the node's `request-timeout-ms`.
    pub timeout: Option<Duration>,
}

/// What a read returns: the live sibling values and the causal context to write back with.
/// No values means the key was never written or is deleted.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Fetched {
    /// Values of the live siblings (one unless there were concurrent writes).
    pub values: Vec<Vec<u8>>,
    /// Opaque causal context (empty for a key never written). A write that passes it replaces
    /// exactly the versions returned here.
    pub context: Vec<u8>,
}

impl From<DvvSet> for Fetched {
    fn from(d: DvvSet) -> Self {
        Fetched {
            values: d.values().map(<[u8]>::to_vec).collect(),
            context: d.context().to_context(),
        }
    }
}

/// A running node: its data, its supervision tree, and the operations on it.
///
/// Every operation runs a [`Coordinator`] per request.
pub struct Node {
    config: NodeConfig,
    data: Arc<DataDir>,
    directory: Arc<VNodeDirectory>,
    supervisor: ActorRef<NodeSupervisorMsg>,
    stopped: watch::Receiver<bool>,
}

impl Node {
    /// Validates `config`, opens its data directory and starts the supervision tree.
    ///
    /// # Errors
    /// [`NodeError`] if the configuration is invalid, the data directory cannot be opened, or
    /// an actor does not start.
    pub async fn start(config: NodeConfig) -> Result<Node, NodeError> {
        config.validate()?;
        let options = PartitionOptions {
            initial_map_bytes: config.initial_map_bytes,
            max_map_bytes: config.max_map_bytes,
            max_batch: config.max_batch,
            max_siblings: config.max_siblings,
        };
        let (path, q) = (config.data_dir.clone(), config.partitions);
        let data = tokio::task::spawn_blocking(move || DataDir::open(&path, q, &options))
            .await
            .map_err(|e| NodeError::Spawn(e.to_string()))??;
        let data = Arc::new(data);
        let directory = Arc::new(VNodeDirectory::new(config.partitions));
        let (supervisor, join) = Actor::spawn(
            None,
            NodeSupervisor,
            NodeSupervisorArgs {
                partitions: data.partitions.clone(),
                directory: directory.clone(),
                budget: RestartBudget::default(),
                vnode_budget: RestartBudget::default(),
            },
        )
        .await
        .map_err(|e| NodeError::Spawn(e.to_string()))?;
        let (tx, stopped) = watch::channel(false);
        tokio::spawn(async move {
            let _ = join.await;
            let _ = tx.send(true);
        });
        tracing::info!(
            data_dir = %config.data_dir.display(),
            partitions = config.partitions,
            replica = format_args!("{:016x}", data.system.replica_id()),
            "node started"
        );
        Ok(Node {
            config,
            data,
            directory,
            supervisor,
            stopped,
        })
    }

    /// The configuration the node runs with.
    pub fn config(&self) -> &NodeConfig {
        &self.config
    }

    /// The partition that owns `(bucket, key)`.
    pub fn partition_of(&self, bucket: &[u8], key: &[u8]) -> u32 {
        partition_for(bucket, key, self.config.partitions)
    }

    /// The live vnode of partition `p` (for fault injection and inspection).
    pub fn vnode(&self, p: u32) -> Option<ActorRef<VNodeMsg>> {
        self.directory.get(p)
    }

    /// This node's replica id (names the dots it creates).
    pub fn replica_id(&self) -> u64 {
        self.data.system.replica_id()
    }

    /// Reads `(bucket, key)`: every live sibling and the causal context.
    ///
    /// # Errors
    /// [`KvError::Storage`] for an invalid bucket or key or a storage failure;
    /// [`KvError::Timeout`]; [`KvError::ShuttingDown`].
    pub async fn get(
        &self,
        bucket: &[u8],
        key: &[u8],
        opts: &RequestOptions,
    ) -> Result<Fetched, KvError> {
        keys::validate(bucket, key)?;
        let request = KvRequest::Get {
            bucket: bucket.to_vec(),
            key: key.to_vec(),
        };
        Ok(self
            .coordinate(request, bucket, key, opts)
            .await?
            .map(Fetched::from)
            .unwrap_or_default())
    }

    /// Writes `value` under `(bucket, key)`, replacing the versions that `context` (from an
    /// earlier read; empty for a blind write) covers. Versions the context does not cover stay
    /// as siblings. Returns the key's state after the write, once it is durable.
    ///
    /// # Errors
    /// As [`Node::get`], plus [`KvError::ValueTooLarge`], and [`KvError::Storage`] with
    /// [`StorageError::BadContext`], [`StorageError::TooManySiblings`] or
    /// [`StorageError::Full`].
    pub async fn put(
        &self,
        bucket: &[u8],
        key: &[u8],
        value: Vec<u8>,
        context: &[u8],
        opts: &RequestOptions,
    ) -> Result<Fetched, KvError> {
        if value.len() > self.config.max_value_bytes {
            return Err(KvError::ValueTooLarge {
                len: value.len(),
                max: self.config.max_value_bytes,
            });
        }
        self.update(bucket, key, Some(value), context, opts).await
    }

    /// Deletes `(bucket, key)`: writes a tombstone over the versions `context` covers.
    ///
    /// # Errors
    /// As [`Node::put`].
    pub async fn delete(
        &self,
        bucket: &[u8],
        key: &[u8],
        context: &[u8],
        opts: &RequestOptions,
    ) -> Result<(), KvError> {
        self.update(bucket, key, None, context, opts)
            .await
            .map(|_| ())
    }

    async fn update(
        &self,
        bucket: &[u8],
        key: &[u8],
        value: Option<Vec<u8>>,
        context: &[u8],
        opts: &RequestOptions,
    ) -> Result<Fetched, KvError> {
        keys::validate(bucket, key)?;
        let request = KvRequest::Update {
            bucket: bucket.to_vec(),
            key: key.to_vec(),
            context: VersionVector::from_context(context)?,
            value,
        };
        Ok(self
            .coordinate(request, bucket, key, opts)
            .await?
            .map(Fetched::from)
            .unwrap_or_default())
    }

    async fn coordinate(
        &self,
        request: KvRequest,
        bucket: &[u8],
        key: &[u8],
        opts: &RequestOptions,
    ) -> Result<Option<DvvSet>, KvError> {
        if *self.stopped.borrow() {
            return Err(KvError::ShuttingDown);
        }
        let (reply, answer) = oneshot::channel();
        let args = CoordinatorArgs {
            request,
            partition: self.partition_of(bucket, key),
            directory: self.directory.clone(),
            timeout: opts
                .timeout
                .unwrap_or(Duration::from_millis(self.config.request_timeout_ms)),
            reply,
        };
        Actor::spawn(None, Coordinator, args)
            .await
            .map_err(|_| KvError::ShuttingDown)?;
        answer.await.map_err(|_| KvError::ShuttingDown)?
    }

    /// Fault injection: panics the vnode that owns `(bucket, key)`, so that tests can watch
    /// it being restarted. Returns the partition. Refused unless the node runs with
    /// `fault-injection` on.
    ///
    /// # Errors
    /// [`KvError::FaultInjectionDisabled`]; [`KvError::ShuttingDown`] if the vnode is not up.
    pub fn inject_vnode_panic(&self, bucket: &[u8], key: &[u8]) -> Result<u32, KvError> {
        if !self.config.fault_injection {
            return Err(KvError::FaultInjectionDisabled);
        }
        let p = self.partition_of(bucket, key);
        let vnode = self.directory.get(p).ok_or(KvError::ShuttingDown)?;
        vnode
            .send_message(VNodeMsg::InjectPanic)
            .map_err(|_| KvError::ShuttingDown)?;
        Ok(p)
    }

    /// Resolves when the supervision tree has stopped: after [`Node::shutdown`], or when a
    /// failure escalated past every restart budget.
    pub async fn stopped(&self) {
        let mut rx = self.stopped.clone();
        let _ = rx.wait_for(|s| *s).await;
    }

    /// True once the supervision tree has stopped.
    pub fn is_stopped(&self) -> bool {
        *self.stopped.borrow()
    }

    /// Stops the supervision tree, then lets every partition's writer commit and answer what
    /// is queued, and closes the envs' writers. Callers should stop sending requests first.
    pub async fn shutdown(&self) {
        let _ = self
            .supervisor
            .stop_and_wait(Some("shutdown".into()), Some(Duration::from_secs(10)))
            .await;
        self.stopped().await;
        let data = self.data.clone();
        let _ = tokio::task::spawn_blocking(move || data.shutdown()).await;
        tracing::info!("node stopped");
    }
}
