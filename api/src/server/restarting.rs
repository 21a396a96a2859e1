//! A supervisor of one child actor that restarts it within the node's restart budget
//! (`restart-max` in `restart-window-ms`, [`Restarts`]) and stops once past it, as OTP's
//! one-for-one supervisor with intensity and period does: the ClientListener's and the
//! KvGateway's.

use ractor::{Actor, ActorProcessingErr, ActorRef, SupervisionEvent};
use ringkv_actors::supervision::Restarts;
use ringkv_actors::Node;
use std::marker::PhantomData;
use std::sync::Arc;

/// Supervises one actor `A` (made with `A::default()`) started with a clone of its
/// arguments; a failure restarts it with the same arguments while the budget allows.
pub(super) struct Restarting<A>(PhantomData<fn() -> A>);

impl<A> Restarting<A> {
    pub(super) fn new() -> Self {
        Self(PhantomData)
    }
}

/// What a [`Restarting`] supervisor starts with.
pub(super) struct RestartingArgs<T> {
    /// The child's arguments, cloned for each start.
    pub child: T,
    /// The node, whose configuration sets the budget and whose stats count the restarts.
    pub node: Arc<Node>,
    /// Actor type, as `ringkv_actors::stats::ACTOR_TYPES` names it.
    pub kind: &'static str,
    /// The child, for logs.
    pub what: &'static str,
}

/// The state of a [`Restarting`] supervisor.
pub(super) struct RestartingState<T> {
    args: RestartingArgs<T>,
    budget: Restarts,
}

impl<A> Actor for Restarting<A>
where
    A: Actor + Default,
    A::Arguments: Clone + Sync,
{
    type Msg = ();
    type State = RestartingState<A::Arguments>;
    type Arguments = RestartingArgs<A::Arguments>;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        Actor::spawn_linked(None, A::default(), args.child.clone(), myself.get_cell()).await?;
        let budget = Restarts::new(ringkv_actors::node::config_budget(args.node.config()));
        Ok(RestartingState { args, budget })
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let SupervisionEvent::ActorFailed(_, error) = event else {
            return Ok(());
        };
        let args = &state.args;
        state
            .budget
            .admit(args.kind, args.what, &error.to_string(), args.node.stats())?;
        Actor::spawn_linked(None, A::default(), args.child.clone(), myself.get_cell()).await?;
        Ok(())
    }
}
