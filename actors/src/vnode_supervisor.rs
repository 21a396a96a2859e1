//! The VNodeSupervisor: starts one [`VNode`] per partition and restarts failed ones.
//!
//! It owns the partitions' LMDB envs (as `Arc<Partition>`), so a restarted vnode is handed the
//! env its predecessor had: LMDB refuses to open one path twice in a process, and the writer
//! thread with its queued writes lives on across the restart. Restarts draw on one
//! [`RestartBudget`] for all vnodes; past it the supervisor fails, and its own supervisor
//! decides.

use crate::directory::VNodeDirectory;
use crate::supervision::Restarts;
use crate::vnode::VNode;
use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, SupervisionEvent};
use ractor_cluster::RactorMessage;
use ringkv_storage::Partition;
use std::collections::HashMap;
use std::sync::Arc;

/// The VNodeSupervisor takes no messages of its own; it only supervises.
#[derive(RactorMessage)]
pub enum VNodeSupervisorMsg {
    /// Fault injection: the VNodeSupervisor panics (its vnodes stop with it and are started
    /// again by its successor).
    InjectPanic,
}

/// Arguments of the [`VNodeSupervisor`].
pub struct VNodeSupervisorArgs {
    /// Partition `i` at index `i`.
    pub partitions: Vec<Arc<Partition>>,
    /// Written on every (re)start and death of a vnode.
    pub directory: Arc<VNodeDirectory>,
    /// Restarts allowed for vnodes (one budget for the type, `restart-max` in
    /// `restart-window-ms`).
    pub budget: Restarts,
    /// Counters (vnode restarts are counted as `vnode`).
    pub stats: std::sync::Arc<crate::stats::NodeStats>,
}

/// State of the [`VNodeSupervisor`].
pub struct VNodeSupervisorState {
    args: VNodeSupervisorArgs,
    by_actor: HashMap<ActorId, u32>,
}

/// Supervisor of the vnodes of one node.
pub struct VNodeSupervisor;

impl VNodeSupervisor {
    async fn start_vnode(
        myself: &ActorRef<VNodeSupervisorMsg>,
        state: &mut VNodeSupervisorState,
        p: u32,
    ) -> Result<(), ActorProcessingErr> {
        let partition = state.args.partitions[p as usize].clone();
        let (vnode, _) = Actor::spawn_linked(None, VNode, partition, myself.get_cell()).await?;
        state.by_actor.insert(vnode.get_id(), p);
        state.args.directory.set(p, Some(vnode));
        Ok(())
    }
}

impl Actor for VNodeSupervisor {
    type Msg = VNodeSupervisorMsg;
    type State = VNodeSupervisorState;
    type Arguments = VNodeSupervisorArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: VNodeSupervisorArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        let mut state = VNodeSupervisorState {
            by_actor: HashMap::with_capacity(args.partitions.len()),
            args,
        };
        for p in 0..state.args.partitions.len() as u32 {
            Self::start_vnode(&myself, &mut state, p).await?;
        }
        Ok(state)
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        _state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            VNodeSupervisorMsg::InjectPanic => panic!("vnode supervisor: injected panic"),
        }
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let (cell, failure) = match event {
            SupervisionEvent::ActorFailed(cell, err) => (cell, Some(err.to_string())),
            SupervisionEvent::ActorTerminated(cell, _, _) => (cell, None),
            _ => return Ok(()),
        };
        let Some(p) = state.by_actor.remove(&cell.get_id()) else {
            return Ok(());
        };
        state.args.directory.set(p, None);
        let Some(error) = failure else {
            // A vnode stops normally only when the node shuts down.
            return Ok(());
        };
        state
            .args
            .budget
            .admit("vnode", &format!("vnode {p}"), &error, &state.args.stats)?;
        Self::start_vnode(&myself, state, p).await
    }
}
