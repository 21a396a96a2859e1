//! Restart budgets for supervisors.
//!
//! ractor has no restart strategies of its own (STACK-NOTES): each supervisor in ringkv keeps a
//! [`RestartBudget`], the Erlang/OTP "intensity and period" rule: at most `max_restarts`
//! restarts within any `window`; one more and the supervisor gives up and escalates to its own
//! supervisor.

use ractor::ActorProcessingErr;
use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

/// At most `max_restarts` restarts within a sliding `window`.
#[derive(Clone, Debug)]
pub struct RestartBudget {
    max_restarts: usize,
    window: Duration,
    recent: VecDeque<Instant>,
}

impl RestartBudget {
    /// A budget of `max_restarts` restarts per `window`.
    pub fn new(max_restarts: usize, window: Duration) -> Self {
        Self {
            max_restarts,
            window,
            recent: VecDeque::with_capacity(max_restarts + 1),
        }
    }

    /// Records a restart at `now` and returns true if it is within the budget; false means
    /// the supervisor should escalate instead of restarting.
    pub fn allow(&mut self, now: Instant) -> bool {
        while let Some(&t) = self.recent.front() {
            if now.duration_since(t) > self.window {
                self.recent.pop_front();
            } else {
                break;
            }
        }
        if self.recent.len() >= self.max_restarts {
            return false;
        }
        self.recent.push_back(now);
        true
    }

    /// Restarts allowed per window.
    pub fn max_restarts(&self) -> usize {
        self.max_restarts
    }

    /// The window.
    pub fn window(&self) -> Duration {
        self.window
    }
}

impl Default for RestartBudget {
    /// 5 restarts in 10 seconds.
    fn default() -> Self {
        Self::new(5, Duration::from_secs(10))
    }
}

/// Tasks an actor starts (rounds, requests, dials), owned by its state: when the actor stops
/// or fails its state is dropped and every task still running is aborted, so no work of a
/// dead incarnation goes on beside its successor's.
#[derive(Debug, Default)]
pub struct OwnedTasks(tokio::task::JoinSet<()>);

impl OwnedTasks {
    /// Starts `task` (on the current tokio runtime), after reaping the finished ones.
    pub fn spawn(&mut self, task: impl std::future::Future<Output = ()> + Send + 'static) {
        while self.0.try_join_next().is_some() {}
        self.0.spawn(task);
    }

    /// Tasks not yet reaped (running, or finished since the last spawn).
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True if no task is held.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// The one restart decision every supervisor of ringkv makes: a [`RestartBudget`] per actor
/// type (so a crashing repair actor cannot use up the gossip actor's restarts), all made from
/// one template (`restart-max` in `restart-window-ms`).
#[derive(Clone, Debug)]
pub struct Restarts {
    template: RestartBudget,
    budgets: HashMap<&'static str, RestartBudget>,
}

impl Restarts {
    /// Budgets of `template`'s size for every actor type.
    pub fn new(template: RestartBudget) -> Self {
        Self {
            template,
            budgets: HashMap::new(),
        }
    }

    /// Decides about a failed child of type `kind` (`error` is its failure): within the
    /// type's budget it logs the restart, counts it in `stats` and returns `Ok` (the caller
    /// restarts the child); past it, it logs and returns the error the supervisor fails
    /// with, which escalates to its own supervisor.
    ///
    /// # Errors
    /// The escalation, naming the type, the budget and the failure.
    pub fn admit(
        &mut self,
        kind: &'static str,
        what: &str,
        error: &str,
        stats: &crate::stats::NodeStats,
    ) -> Result<(), ActorProcessingErr> {
        let budget = self
            .budgets
            .entry(kind)
            .or_insert_with(|| self.template.clone());
        if !budget.allow(Instant::now()) {
            tracing::error!(actor = kind, what, %error, max = budget.max_restarts(), window = ?budget.window(), "failed past its restart budget; escalating");
            return Err(format!(
                "{what} failed past the restart budget of its type ({kind}: {} in {:?}): {error}",
                budget.max_restarts(),
                budget.window()
            )
            .into());
        }
        tracing::warn!(actor = kind, what, %error, "failed; restarting it");
        stats.restarted(kind);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_actor_type_has_its_own_budget() {
        let stats = crate::stats::NodeStats::default();
        let mut r = Restarts::new(RestartBudget::new(1, Duration::from_secs(10)));
        assert!(r.admit("gossip", "gossip", "boom", &stats).is_ok());
        assert!(r.admit("repair", "repair", "boom", &stats).is_ok());
        let e = r.admit("repair", "repair", "boom", &stats).unwrap_err();
        assert!(e.to_string().contains("repair: 1 in"), "{e}");
        assert_eq!(stats.snapshot().restarts.get("repair"), Some(&1));
    }

    #[test]
    fn budget_slides() {
        let mut b = RestartBudget::new(2, Duration::from_secs(10));
        let t0 = Instant::now();
        assert!(b.allow(t0));
        assert!(b.allow(t0 + Duration::from_secs(1)));
        assert!(!b.allow(t0 + Duration::from_secs(2)));
        assert!(b.allow(t0 + Duration::from_secs(12)));
    }
}
