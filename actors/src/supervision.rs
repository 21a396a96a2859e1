//! Restart budgets for supervisors.
//!
//! ractor has no restart strategies of its own (STACK-NOTES): each supervisor in ringkv keeps a
//! [`RestartBudget`], the Erlang/OTP "intensity and period" rule: at most `max_restarts`
//! restarts within any `window`; one more and the supervisor gives up and escalates to its own
//! supervisor.

use std::collections::VecDeque;
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

#[cfg(test)]
mod tests {
    use super::*;

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
