//! The NodeSupervisor: the root of a node's supervision tree. It starts the VNodeSupervisor,
//! the Replica actor, and (in a cluster) Gossip, HintedHandoff, Repair and Transfer, restarts
//! each within its restart budget (OTP's one-for-one with intensity and period), and stops,
//! which stops the node, once a child fails past its budget.

use crate::gossip::{Gossip, GossipArgs};
use crate::handoff::{Handoff, HintedHandoff};
use crate::periodic::{PeriodicArgs, PeriodicMsg};
use crate::repair::{AntiEntropy, Repair};
use crate::replica::Peers;
use crate::replica::Replica;
use crate::supervision::{RestartBudget, Restarts};
use crate::transfer::{Transfer, TransferArgs, TransferEvents, TransferMsg};
use crate::transfer::{TransferConfig, TransferHandle};
use crate::vnode_supervisor::{VNodeSupervisor, VNodeSupervisorArgs};
use ractor::{Actor, ActorRef};
use ractor::{ActorCell, ActorProcessingErr, SupervisionEvent};
use ractor_cluster::{NodeServerMessage, RactorMessage};
use ringkv_cluster::NodeConfig;
use ringkv_storage::SystemStore;
use ringkv_storage::{Partition, PartitionOptions};
use std::sync::Arc;
use std::time::Duration;

/// Messages of the NodeSupervisor (local only).
#[derive(RactorMessage)]
pub enum NodeSupervisorMsg {
    /// Fault injection: make the child actor of this type (`vnodes`, `replica`, `gossip`,
    /// `handoff`, `repair`, `transfer`) panic. Replies false if no such child runs.
    InjectPanic(String, ractor::RpcReplyPort<bool>),
    /// An [`NodeSupervisorMsg::InjectPanic`] that found its child not running (it has just
    /// failed and its restart is on the way): tried again shortly, `attempt` times so far.
    RetryPanic(String, ractor::RpcReplyPort<bool>, u32),
}

/// Arguments of the [`NodeSupervisor`].
pub struct NodeSupervisorArgs {
    /// Partition `i` at index `i`, owned for the life of the node.
    pub partitions: Vec<Arc<Partition>>,
    /// How replicas are reached; its context is shared by every child.
    pub peers: Peers,
    /// Restarts allowed per child type (`restart-max` in `restart-window-ms`).
    pub budget: Restarts,
    /// Restarts of vnodes allowed, per VNodeSupervisor incarnation.
    pub vnode_budget: Restarts,
    /// The cluster transport, when the node has a cluster address.
    pub transport: Option<Transport>,
    /// Period of hinted handoff rounds.
    pub handoff_interval: Duration,
    /// Period of anti-entropy sweeps (`None`: disabled).
    pub repair_interval: Option<Duration>,
    /// Tombstones younger than this are not purged.
    pub tombstone_grace: Duration,
    /// Unreferenced chunks of large values younger than this are not collected.
    pub chunk_grace: Duration,
    /// `max-clock-skew-ms`: expired values are purged `tombstone_grace` plus this after
    /// their expiry.
    pub max_clock_skew: Duration,
    /// The system store (transfer progress).
    pub system: Arc<SystemStore>,
    /// The node's handle on its Transfer actor (outlives its restarts).
    pub transfers: Arc<TransferHandle>,
    /// Who hears of completed transfers.
    pub transfer_events: Arc<dyn TransferEvents>,
    /// Transfer limits (`transfer-concurrency`, `transfer-max-bytes-per-sec`).
    pub transfer_config: TransferConfig,
}

/// What the cluster-facing children need.
#[derive(Clone)]
pub struct Transport {
    /// The ractor_cluster NodeServer.
    pub node_server: ActorRef<NodeServerMessage>,
    /// `--join` seeds.
    pub seeds: Vec<String>,
    /// Gossip tick.
    pub interval: Duration,
    /// Mutual TLS on the cluster links (`cluster-tls-ca`).
    pub tls: Option<Arc<crate::tls::ClusterTls>>,
}

/// The children a NodeSupervisor restarts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Child {
    VNodes,
    Replica,
    Gossip,
    Handoff,
    Repair,
    Transition,
    Transfer,
}

impl Child {
    fn name(self) -> &'static str {
        match self {
            Child::VNodes => "vnodes",
            Child::Replica => "replica",
            Child::Gossip => "gossip",
            Child::Handoff => "handoff",
            Child::Repair => "repair",
            Child::Transition => "transition",
            Child::Transfer => "transfer",
        }
    }
}

/// State of the [`NodeSupervisor`].
pub struct NodeSupervisorState {
    args: NodeSupervisorArgs,
    children: Vec<(ActorCell, Child)>,
    /// The incarnation of each child type last told to panic (fault injection).
    panicked: std::collections::HashMap<String, ractor::ActorId>,
}

/// The restart budget of every actor type, from `restart-max` and `restart-window-ms`.
pub fn config_budget(config: &NodeConfig) -> RestartBudget {
    RestartBudget::new(
        config.restart_max,
        Duration::from_millis(config.restart_window_ms),
    )
}

/// The storage options of a node's partitions, from its configuration.
pub fn partition_options(config: &NodeConfig) -> PartitionOptions {
    PartitionOptions {
        initial_map_bytes: config.initial_map_bytes,
        max_map_bytes: config.max_map_bytes,
        max_batch: config.max_batch,
        max_siblings: config.max_siblings,
        max_record_bytes: config.record_limit(),
        ..PartitionOptions::default()
    }
}

/// The transition job's transfer tasks, handed to the Transfer actor (through its handle, which
/// outlives restarts of the actor).
fn transfer_sink(handle: Arc<TransferHandle>) -> crate::transition::TaskSink {
    Arc::new(move |tasks: Vec<ringkv_cluster::transition::Task>| {
        handle.want(
            tasks
                .into_iter()
                .map(|t| crate::transfer::TransferTask {
                    version: t.version,
                    partition: t.partition,
                    sources: t.sources,
                })
                .collect(),
        )
    })
}

/// Root of a node's supervision tree.
pub struct NodeSupervisor;

impl NodeSupervisor {
    async fn start_child(
        myself: &ActorRef<NodeSupervisorMsg>,
        state: &mut NodeSupervisorState,
        child: Child,
    ) -> Result<(), ActorProcessingErr> {
        let a = &state.args;
        let ctx = &a.peers.ctx;
        let sup = myself.get_cell();
        let cell = match child {
            Child::VNodes => Actor::spawn_linked(
                None,
                VNodeSupervisor,
                VNodeSupervisorArgs {
                    partitions: a.partitions.clone(),
                    directory: ctx.directory.clone(),
                    budget: a.vnode_budget.clone(),
                    stats: ctx.stats.clone(),
                },
                sup,
            )
            .await?
            .0
            .get_cell(),
            Child::Replica => Actor::spawn_linked(None, Replica, ctx.clone(), sup)
                .await?
                .0
                .get_cell(),
            Child::Gossip => {
                let t = a
                    .transport
                    .clone()
                    .expect("gossip runs only with a transport");
                Actor::spawn_linked(
                    None,
                    Gossip,
                    GossipArgs {
                        view: ctx.view.clone(),
                        node_server: t.node_server,
                        seeds: t.seeds,
                        interval: t.interval,
                        tls: t.tls,
                        fault_injection: ctx.fault_injection,
                    },
                    sup,
                )
                .await?
                .0
                .get_cell()
            }
            Child::Handoff => Actor::spawn_linked(
                None,
                HintedHandoff::new(),
                PeriodicArgs {
                    job: Arc::new(Handoff {
                        peers: a.peers.clone(),
                    }),
                    interval: a.handoff_interval,
                },
                sup,
            )
            .await?
            .0
            .get_cell(),
            Child::Repair => Actor::spawn_linked(
                None,
                Repair::new(),
                PeriodicArgs {
                    job: Arc::new(AntiEntropy {
                        peers: a.peers.clone(),
                        purge: crate::repair::PurgeDelays {
                            tombstone_grace: a.tombstone_grace,
                            max_clock_skew: a.max_clock_skew,
                        },
                        chunk_grace: a.chunk_grace,
                    }),
                    interval: a.repair_interval.unwrap_or(Duration::from_secs(10)),
                },
                sup,
            )
            .await?
            .0
            .get_cell(),
            Child::Transition => {
                let interval = a
                    .transport
                    .as_ref()
                    .map_or(Duration::from_millis(500), |t| t.interval);
                Actor::spawn_linked(
                    None,
                    crate::transition::TransitionActor::new(),
                    PeriodicArgs {
                        job: Arc::new(crate::transition::Transition::new(
                            a.peers.clone(),
                            Some(transfer_sink(a.transfers.clone())),
                        )),
                        interval,
                    },
                    sup,
                )
                .await?
                .0
                .get_cell()
            }
            Child::Transfer => Actor::spawn_linked(
                None,
                Transfer::<Peers>::new(),
                TransferArgs {
                    peers: a.peers.clone(),
                    system: a.system.clone(),
                    events: a.transfer_events.clone(),
                    handle: a.transfers.clone(),
                    config: a.transfer_config,
                },
                sup,
            )
            .await?
            .0
            .get_cell(),
        };
        state.children.push((cell, child));
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
        let clustered = args.transport.is_some();
        let repair = args.repair_interval.is_some();
        let mut state = NodeSupervisorState {
            args,
            children: Vec::new(),
            panicked: Default::default(),
        };
        Self::start_child(&myself, &mut state, Child::VNodes).await?;
        if clustered {
            Self::start_child(&myself, &mut state, Child::Replica).await?;
            Self::start_child(&myself, &mut state, Child::Gossip).await?;
            Self::start_child(&myself, &mut state, Child::Handoff).await?;
        }
        // A node alone runs it too: its sweep has no peer to compare with but still purges
        // tombstones and collects the chunks of large values nothing refers to.
        if repair {
            Self::start_child(&myself, &mut state, Child::Repair).await?;
        }
        if clustered {
            Self::start_child(&myself, &mut state, Child::Transfer).await?;
            Self::start_child(&myself, &mut state, Child::Transition).await?;
        }
        Ok(state)
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let (name, reply, attempt) = match message {
            NodeSupervisorMsg::InjectPanic(name, reply) => (name, reply, 0),
            NodeSupervisorMsg::RetryPanic(name, reply, attempt) => (name, reply, attempt),
        };
        let child = state.children.iter().find(|(_, c)| c.name() == name);
        // A child already told to panic stays listed until this supervisor has handled its
        // failure: wait for its successor rather than send the panic to a dying actor, where
        // it would be lost (up to 5 s).
        if let Some((cell, _)) = child {
            let told = state.panicked.get(&name) == Some(&cell.get_id());
            if (told || cell.get_status() != ractor::ActorStatus::Running) && attempt < 500 {
                // The timer runs on its own; its handle is not needed.
                std::mem::drop(myself.send_after(Duration::from_millis(10), move || {
                    NodeSupervisorMsg::RetryPanic(name, reply, attempt + 1)
                }));
                return Ok(());
            }
            state.panicked.insert(name.clone(), cell.get_id());
        }
        let sent = match child {
            Some((cell, Child::VNodes)) => {
                let r: ActorRef<crate::vnode_supervisor::VNodeSupervisorMsg> = cell.clone().into();
                r.send_message(crate::vnode_supervisor::VNodeSupervisorMsg::InjectPanic)
                    .is_ok()
            }
            Some((cell, Child::Replica)) => {
                let r: ActorRef<crate::replica::ReplicaMsg> = cell.clone().into();
                r.send_message(crate::replica::ReplicaMsg::InjectPanic)
                    .is_ok()
            }
            Some((cell, Child::Gossip)) => {
                let r: ActorRef<crate::gossip::GossipMsg> = cell.clone().into();
                r.send_message(crate::gossip::GossipMsg::InjectPanic)
                    .is_ok()
            }
            Some((cell, Child::Handoff | Child::Repair | Child::Transition)) => {
                let r: ActorRef<PeriodicMsg> = cell.clone().into();
                r.send_message(PeriodicMsg::InjectPanic).is_ok()
            }
            Some((cell, Child::Transfer)) => {
                let r: ActorRef<TransferMsg> = cell.clone().into();
                r.send_message(TransferMsg::InjectPanic).is_ok()
            }
            None => false,
        };
        let _ = reply.send(sent);
        Ok(())
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
        let Some(i) = state
            .children
            .iter()
            .position(|(c, _)| c.get_id() == cell.get_id())
        else {
            return Ok(());
        };
        let (_, child) = state.children.remove(i);
        let stats = state.args.peers.ctx.stats.clone();
        state
            .args
            .budget
            .admit(child.name(), child.name(), &error.to_string(), &stats)?;
        Self::start_child(&myself, state, child).await
    }
}
