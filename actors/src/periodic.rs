//! A supervised actor that runs a job every `interval`, one run at a time: the shape of the
//! HintedHandoff and Repair actors.
//!
//! A tick that comes while the previous run is still going is skipped, so a slow run never
//! piles up behind itself. The run is a task of its own, so the actor keeps taking messages
//! (and can be restarted) while it works; a run of a previous incarnation finishes on its own.

use ractor::{Actor, ActorProcessingErr, ActorRef};
use ractor_cluster::RactorMessage;
use std::future::Future;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// The work of a periodic actor.
pub trait PeriodicJob: Send + Sync + 'static {
    /// Name used in logs and in the injected panic's message.
    const NAME: &'static str;
    /// One run.
    fn run(self: Arc<Self>) -> impl Future<Output = ()> + Send;
}

/// Messages of a periodic actor (local only).
#[derive(RactorMessage)]
pub enum PeriodicMsg {
    /// Timer: start a run unless one is going.
    Tick,
    /// Fault injection: panic, so that supervision can be tested.
    InjectPanic,
}

/// Arguments of a periodic actor.
pub struct PeriodicArgs<J> {
    /// The job.
    pub job: Arc<J>,
    /// Time between ticks (not zero).
    pub interval: Duration,
}

/// State of a periodic actor.
pub struct PeriodicState<J> {
    job: Arc<J>,
    running: Arc<AtomicBool>,
    /// The round in progress, aborted if the actor stops or fails.
    tasks: crate::supervision::OwnedTasks,
}

/// An actor that runs `J` every interval.
pub struct Periodic<J>(PhantomData<fn() -> J>);

impl<J> Periodic<J> {
    /// The actor (it holds no data of its own).
    pub fn new() -> Self {
        Periodic(PhantomData)
    }
}

impl<J> Default for Periodic<J> {
    fn default() -> Self {
        Self::new()
    }
}

impl<J: PeriodicJob> Actor for Periodic<J> {
    type Msg = PeriodicMsg;
    type State = PeriodicState<J>;
    type Arguments = PeriodicArgs<J>;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: PeriodicArgs<J>,
    ) -> Result<Self::State, ActorProcessingErr> {
        myself.send_interval(args.interval, || PeriodicMsg::Tick);
        Ok(PeriodicState {
            job: args.job,
            running: Arc::new(AtomicBool::new(false)),
            tasks: Default::default(),
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            PeriodicMsg::Tick => {
                if state.running.swap(true, Ordering::AcqRel) {
                    return Ok(());
                }
                let (job, running) = (state.job.clone(), state.running.clone());
                state.tasks.spawn(async move {
                    job.run().await;
                    running.store(false, Ordering::Release);
                });
            }
            PeriodicMsg::InjectPanic => panic!("{}: injected panic", J::NAME),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    /// A round that never ends; it records when it starts and when it is dropped.
    struct Forever {
        started: Arc<AtomicBool>,
        dropped: Arc<AtomicBool>,
    }

    struct SetOnDrop(Arc<AtomicBool>);

    impl Drop for SetOnDrop {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Release);
        }
    }

    impl PeriodicJob for Forever {
        const NAME: &'static str = "forever";

        async fn run(self: Arc<Self>) {
            let _guard = SetOnDrop(self.dropped.clone());
            self.started.store(true, Ordering::Release);
            std::future::pending::<()>().await;
        }
    }

    async fn until(flag: &AtomicBool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !flag.load(Ordering::Acquire) {
            assert!(Instant::now() < deadline, "timed out");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[tokio::test]
    async fn a_round_in_progress_is_aborted_when_the_actor_stops() {
        let (started, dropped) = (Arc::default(), Arc::default());
        let job = Arc::new(Forever {
            started: Arc::clone(&started),
            dropped: Arc::clone(&dropped),
        });
        let (actor, handle) = Actor::spawn(
            None,
            Periodic::<Forever>::new(),
            PeriodicArgs {
                job,
                interval: Duration::from_millis(10),
            },
        )
        .await
        .unwrap();
        until(&started).await;
        assert!(!dropped.load(Ordering::Acquire));
        actor.stop(None);
        handle.await.unwrap();
        until(&dropped).await;
    }
}
