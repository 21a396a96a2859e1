//! Phi-accrual failure detection: how suspect a silent peer is, as a number.
//!
//! Follows Hayashibara, Défago, Yared and Katayama, "The φ Accrual Failure Detector"
//! (SRDS 2004), as Akka implements it (`akka.remote.PhiAccrualFailureDetector`). Instead of
//! a yes/no answer after a fixed timeout, the detector gives a suspicion level
//!
//! ```text
//! phi(now) = -log10(1 - F(now - last_heartbeat))
//! ```
//!
//! where `F` is the CDF of a normal distribution fitted to the recent inter-arrival times of
//! the peer's heartbeats: a window of at most [`PhiConfig::max_samples`] intervals, with
//! their mean (plus [`PhiConfig::acceptable_heartbeat_pause_ms`]) and standard deviation
//! (at least [`PhiConfig::min_std_dev_ms`]). `phi = 1` means a 10% chance that a heartbeat
//! that late is still coming, `phi = 2` 1%, `phi = 8` (the default threshold, Cassandra's
//! `phi_convict_threshold`) 10⁻⁸. The caller picks the threshold; the detector only measures.
//!
//! Three choices from Akka:
//! * `F` is the logistic approximation of the normal CDF,
//!   `F(y) ≈ 1 / (1 + e^(-y (1.5976 + 0.070566 y²)))` with `y = (t - mean) / std_dev`,
//!   so `phi = log10(1 + e^z)` with `z = y (1.5976 + 0.070566 y²)`. Here it is computed in
//!   log space (a stable softplus), so it stays finite where Akka's formula reaches
//!   `log10(0)`: phi is finite, at least 0 and non-decreasing in `now` for every input;
//! * the window starts with two samples, `first_heartbeat_estimate ± estimate / 4`;
//! * a heartbeat that arrives when the peer is already suspected (phi at or above
//!   [`PhiConfig::threshold`]) adds no interval: one long outage must not widen the
//!   distribution and make the next one slower to detect.
//!
//! (Cassandra's `FailureDetector` has the same window and threshold but, since 1.2, models
//! intervals with an exponential distribution, `phi = t / (mean · ln 10)`, which is far
//! slower to suspect: 18 s of silence for 1 s heartbeats.)
//!
//! Time is passed in as milliseconds of a monotonic clock (for example the milliseconds of an
//! `Instant` since the process started); nothing here reads a clock or sleeps.
//!
//! With the defaults and a peer that heartbeats exactly every 1000 ms (window mean 1000 ms,
//! standard deviation floored to 100 ms), phi after a silence of:
//!
//! | silence | 0 | 0.5 s | 1 s | 1.5 s | 2 s | 3 s | 5 s | 10 s | 1 h |
//! |---|---|---|---|---|---|---|---|---|---|
//! | phi | 1e-38 | 2e-8 | 0.30 | 7.3 | 37.6 | 259 | 1989 | 22404 | 1.4e12 |
//!
//! so the peer is suspected at threshold 8 after 1523 ms, half a heartbeat after the first
//! missed one. To tolerate pauses (GC, a busy event loop, a lost packet), set
//! `acceptable_heartbeat_pause_ms`: Akka's cluster uses 3 s, which moves that point to 4523 ms.
//!
//! [`FailureDetector`] keeps one [`PhiAccrualDetector`] per peer name.

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, VecDeque};
use thiserror::Error;

/// Largest [`PhiConfig::max_samples`]: 2²⁰ intervals (4 MiB per peer).
pub const MAX_SAMPLES: usize = 1 << 20;

/// Longest interval the window records, ms (`u32::MAX`, about 49.7 days). A longer one is
/// recorded as this long. It keeps the window's sums exact in integers.
pub const MAX_INTERVAL_MS: u64 = u32::MAX as u64;

/// Upper bound of [`PhiAccrualDetector::phi`]. The formula stays far below it for every
/// `u64` of elapsed milliseconds; the bound guarantees a finite result regardless.
pub const MAX_PHI: f64 = f64::MAX;

/// A [`PhiConfig`] setting out of range.
#[derive(Clone, Debug, Error, PartialEq)]
pub enum PhiConfigError {
    /// The threshold is not a finite number above 0.
    #[error("threshold must be a finite number above 0, not {got}")]
    Threshold {
        /// Value given.
        got: f64,
    },
    /// The window size is 0 or too large.
    #[error("max-samples must be 1 to {max}, not {got}")]
    MaxSamples {
        /// Value given.
        got: usize,
        /// Largest allowed ([`MAX_SAMPLES`]).
        max: usize,
    },
    /// The standard deviation floor is 0.
    #[error("min-std-dev-ms must be at least 1 ms")]
    MinStdDev,
    /// The first heartbeat estimate is 0 or longer than an interval the window can record.
    #[error("first-heartbeat-estimate-ms must be 1 to {max} ms, not {got}")]
    FirstHeartbeatEstimate {
        /// Value given.
        got: u64,
        /// Largest allowed ([`MAX_INTERVAL_MS`]).
        max: u64,
    },
}

/// Settings of a phi-accrual detector. Field names in kebab-case are the config-file keys;
/// durations are milliseconds. Defaults are Akka's and Cassandra's, except where noted.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "kebab-case", deny_unknown_fields)]
pub struct PhiConfig {
    /// Phi at or above which a peer is suspected: used by [`FailureDetector::is_up`] and to
    /// decide whether a heartbeat's interval enters the window. Finite, above 0. Default 8.0
    /// (Cassandra's `phi_convict_threshold`, Akka's cluster `threshold`).
    pub threshold: f64,
    /// Most inter-arrival intervals kept per peer; older ones are dropped. 1 to
    /// [`MAX_SAMPLES`]. Default 1000.
    pub max_samples: usize,
    /// Floor of the window's standard deviation, ms, at least 1. Regular heartbeats would
    /// otherwise give a standard deviation near 0 and suspicion at the first late
    /// millisecond. Default 100.
    pub min_std_dev_ms: u64,
    /// Silence tolerated on top of the window's mean interval, ms: added to the mean before
    /// computing phi. Default 0, as in Akka's detector itself; a suspicion then comes about
    /// 0.5 s after the first missed heartbeat at 1 s intervals (see the module docs).
    /// Akka's cluster sets 3000.
    pub acceptable_heartbeat_pause_ms: u64,
    /// Expected heartbeat interval before any is measured, ms: the window starts with the
    /// two samples `estimate - estimate / 4` and `estimate + estimate / 4`. Set it to the
    /// peers' heartbeat period. 1 to [`MAX_INTERVAL_MS`]. Default 1000.
    pub first_heartbeat_estimate_ms: u64,
}

impl Default for PhiConfig {
    fn default() -> Self {
        Self {
            threshold: 8.0,
            max_samples: 1000,
            min_std_dev_ms: 100,
            acceptable_heartbeat_pause_ms: 0,
            first_heartbeat_estimate_ms: 1000,
        }
    }
}

impl PhiConfig {
    /// Checks every field's range (see each field).
    ///
    /// # Errors
    /// The first [`PhiConfigError`] found, naming the setting and its allowed range.
    pub fn validate(&self) -> Result<(), PhiConfigError> {
        if !(self.threshold.is_finite() && self.threshold > 0.0) {
            return Err(PhiConfigError::Threshold {
                got: self.threshold,
            });
        }
        if self.max_samples == 0 || self.max_samples > MAX_SAMPLES {
            return Err(PhiConfigError::MaxSamples {
                got: self.max_samples,
                max: MAX_SAMPLES,
            });
        }
        if self.min_std_dev_ms == 0 {
            return Err(PhiConfigError::MinStdDev);
        }
        if self.first_heartbeat_estimate_ms == 0
            || self.first_heartbeat_estimate_ms > MAX_INTERVAL_MS
        {
            return Err(PhiConfigError::FirstHeartbeatEstimate {
                got: self.first_heartbeat_estimate_ms,
                max: MAX_INTERVAL_MS,
            });
        }
        Ok(())
    }
}

/// The last `max` inter-arrival intervals with their running sums, kept exact in integers
/// (intervals are at most `u32::MAX` and there are at most 2²⁰ of them, so `n · Σx²` stays
/// below 2¹⁰⁵).
#[derive(Clone, Debug)]
struct Window {
    intervals: VecDeque<u32>,
    max: usize,
    sum: u128,
    sum_sq: u128,
}

impl Window {
    fn new(max: usize) -> Self {
        Self {
            intervals: VecDeque::with_capacity(max),
            max,
            sum: 0,
            sum_sq: 0,
        }
    }

    fn push(&mut self, interval_ms: u64) {
        if self.intervals.len() == self.max {
            if let Some(old) = self.intervals.pop_front() {
                self.sum -= u128::from(old);
                self.sum_sq -= u128::from(old) * u128::from(old);
            }
        }
        let x = interval_ms.min(MAX_INTERVAL_MS) as u32;
        self.intervals.push_back(x);
        self.sum += u128::from(x);
        self.sum_sq += u128::from(x) * u128::from(x);
    }

    fn len(&self) -> usize {
        self.intervals.len()
    }

    /// Mean, ms. The window is never empty: the bootstrap samples are pushed at creation.
    fn mean(&self) -> f64 {
        self.sum as f64 / self.len() as f64
    }

    /// Population standard deviation, ms: `sqrt((n Σx² - (Σx)²) / n²)`, whose numerator is
    /// exact and never negative.
    fn std_dev(&self) -> f64 {
        let n = self.len() as u128;
        let spread = n * self.sum_sq - self.sum * self.sum;
        (spread as f64 / (n * n) as f64).sqrt()
    }
}

/// `-log10(1 - F(elapsed))` for a normal distribution of the given mean and standard
/// deviation (ms), with Akka's logistic approximation of `F`. Finite, in `[0, MAX_PHI]`, and
/// non-decreasing in `elapsed_ms`.
fn normal_phi(elapsed_ms: f64, mean_ms: f64, std_dev_ms: f64) -> f64 {
    let y = (elapsed_ms - mean_ms) / std_dev_ms;
    let z = y * (1.5976 + 0.070566 * y * y);
    // 1 - F = 1 / (1 + e^z), so phi = ln(1 + e^z) / ln 10: a softplus, computed so that
    // e^z never overflows (z > 0) and 1 + e^z never rounds the small term away (z <= 0).
    let softplus = if z > 0.0 {
        z + (-z).exp().ln_1p()
    } else {
        z.exp().ln_1p()
    };
    // `min` also turns a NaN into MAX_PHI; neither can arise from finite inputs.
    (softplus / std::f64::consts::LN_10).min(MAX_PHI)
}

/// Phi-accrual failure detector of one peer (Hayashibara et al. 2004, as in Akka).
///
/// Created at the peer's first heartbeat, so it always has a last heartbeat. Times are
/// milliseconds of a monotonic clock chosen by the caller, the same for every call.
#[derive(Clone, Debug)]
pub struct PhiAccrualDetector {
    config: PhiConfig,
    window: Window,
    last_heartbeat_ms: u64,
}

impl PhiAccrualDetector {
    /// A detector whose first heartbeat arrived at `now_ms`; its window holds the two
    /// bootstrap samples derived from [`PhiConfig::first_heartbeat_estimate_ms`].
    ///
    /// # Errors
    /// [`PhiConfigError`] if `config` is out of range.
    pub fn new(config: PhiConfig, now_ms: u64) -> Result<Self, PhiConfigError> {
        config.validate()?;
        Ok(Self::new_validated(config, now_ms))
    }

    fn new_validated(config: PhiConfig, now_ms: u64) -> Self {
        let estimate = config.first_heartbeat_estimate_ms;
        let mut window = Window::new(config.max_samples);
        window.push(estimate - estimate / 4);
        window.push(estimate + estimate / 4);
        Self {
            config,
            window,
            last_heartbeat_ms: now_ms,
        }
    }

    /// Records a heartbeat received at `now_ms`.
    ///
    /// The interval since the last heartbeat enters the window only if the peer was not
    /// suspected at `now_ms` (phi below [`PhiConfig::threshold`]); either way `now_ms` becomes
    /// the last heartbeat. A `now_ms` before the last heartbeat (calls out of order) is
    /// ignored.
    pub fn heartbeat(&mut self, now_ms: u64) {
        if now_ms < self.last_heartbeat_ms {
            return;
        }
        if self.is_available(now_ms, self.config.threshold) {
            self.window.push(now_ms - self.last_heartbeat_ms);
        }
        self.last_heartbeat_ms = now_ms;
    }

    /// Suspicion level at `now_ms`: `-log10` of the probability that a heartbeat still comes
    /// after `now_ms - last_heartbeat` ms of silence. In `[0, MAX_PHI]`, finite, and
    /// non-decreasing in `now_ms`; near 0 right after a heartbeat (a `now_ms` before the last
    /// heartbeat counts as no silence).
    pub fn phi(&self, now_ms: u64) -> f64 {
        let elapsed = now_ms.saturating_sub(self.last_heartbeat_ms) as f64;
        let mean = self.window.mean() + self.config.acceptable_heartbeat_pause_ms as f64;
        let std_dev = self.window.std_dev().max(self.config.min_std_dev_ms as f64);
        normal_phi(elapsed, mean, std_dev)
    }

    /// True if `phi(now_ms) < threshold`. A NaN threshold makes every peer unavailable.
    pub fn is_available(&self, now_ms: u64, threshold: f64) -> bool {
        self.phi(now_ms) < threshold
    }

    /// Time of the last heartbeat, ms (the clock of the `now_ms` arguments).
    pub fn last_heartbeat(&self) -> u64 {
        self.last_heartbeat_ms
    }

    /// Mean interval of the window, ms, without the acceptable pause.
    pub fn mean_ms(&self) -> f64 {
        self.window.mean()
    }

    /// Standard deviation of the window's intervals, ms, before the
    /// [`PhiConfig::min_std_dev_ms`] floor.
    pub fn std_dev_ms(&self) -> f64 {
        self.window.std_dev()
    }

    /// Intervals in the window, bootstrap samples included: 1 to
    /// [`PhiConfig::max_samples`].
    pub fn sample_count(&self) -> usize {
        self.window.len()
    }

    /// The settings.
    pub fn config(&self) -> &PhiConfig {
        &self.config
    }
}

/// One [`PhiAccrualDetector`] per peer, by peer name, with one [`PhiConfig`] for all.
///
/// A peer is known from its first heartbeat until [`FailureDetector::remove`]. Unknown peers
/// are reported down: nothing has been heard from them.
#[derive(Clone, Debug)]
pub struct FailureDetector {
    config: PhiConfig,
    peers: BTreeMap<String, PhiAccrualDetector>,
}

impl FailureDetector {
    /// A detector that knows no peer yet.
    ///
    /// # Errors
    /// [`PhiConfigError`] if `config` is out of range.
    pub fn new(config: PhiConfig) -> Result<Self, PhiConfigError> {
        config.validate()?;
        Ok(Self {
            config,
            peers: BTreeMap::new(),
        })
    }

    /// Records a heartbeat from `peer` at `now_ms`; the first one makes the peer known (see
    /// [`PhiAccrualDetector::heartbeat`] for the others).
    pub fn heartbeat(&mut self, peer: &str, now_ms: u64) {
        match self.peers.get_mut(peer) {
            Some(detector) => detector.heartbeat(now_ms),
            None => {
                let detector = PhiAccrualDetector::new_validated(self.config, now_ms);
                self.peers.insert(peer.to_string(), detector);
            }
        }
    }

    /// Phi of `peer` at `now_ms` (see [`PhiAccrualDetector::phi`]); `None` if the peer is
    /// unknown.
    pub fn phi(&self, peer: &str, now_ms: u64) -> Option<f64> {
        self.peers.get(peer).map(|d| d.phi(now_ms))
    }

    /// True if `peer` is known and its phi at `now_ms` is below [`PhiConfig::threshold`].
    pub fn is_up(&self, peer: &str, now_ms: u64) -> bool {
        self.peers
            .get(peer)
            .is_some_and(|d| d.is_available(now_ms, self.config.threshold))
    }

    /// Forgets `peer` (it left the cluster); returns true if it was known. A later heartbeat
    /// makes it known again, with a fresh window.
    pub fn remove(&mut self, peer: &str) -> bool {
        self.peers.remove(peer).is_some()
    }

    /// Every known peer as `(name, phi at now_ms, up)`, sorted by name.
    pub fn statuses(&self, now_ms: u64) -> Vec<(String, f64, bool)> {
        self.peers
            .iter()
            .map(|(name, d)| {
                let phi = d.phi(now_ms);
                (name.clone(), phi, phi < self.config.threshold)
            })
            .collect()
    }

    /// The detector of `peer`, to read its window; `None` if the peer is unknown.
    pub fn get(&self, peer: &str) -> Option<&PhiAccrualDetector> {
        self.peers.get(peer)
    }

    /// The settings shared by every peer.
    pub fn config(&self) -> &PhiConfig {
        &self.config
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const THRESHOLD: f64 = 8.0;

    /// A detector fed `beats` heartbeats `interval_ms` apart from time 0; returns it with the
    /// time of its last heartbeat.
    fn steady(config: PhiConfig, interval_ms: u64, beats: u64) -> (PhiAccrualDetector, u64) {
        let mut d = PhiAccrualDetector::new(config, 0).unwrap();
        for i in 1..beats {
            d.heartbeat(i * interval_ms);
        }
        let last = d.last_heartbeat();
        (d, last)
    }

    /// First millisecond of silence at which phi reaches the threshold.
    fn suspicion_after(d: &PhiAccrualDetector) -> u64 {
        let last = d.last_heartbeat();
        (0..u64::MAX)
            .find(|ms| !d.is_available(last + ms, THRESHOLD))
            .unwrap()
    }

    /// Deterministic pseudo-random numbers (xorshift64).
    struct XorShift(u64);

    impl XorShift {
        fn below(&mut self, n: u64) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0 % n
        }
    }

    #[test]
    fn steady_heartbeats_keep_phi_low_and_silence_raises_it() {
        let (d, last) = steady(PhiConfig::default(), 1000, 60);
        assert!(d.phi(last) < 1e-30);
        assert!(d.phi(last + 500) < 1e-6);
        assert!((d.phi(last + 1000) - 2f64.log10()).abs() < 1e-3);
        assert!(d.is_available(last + 1400, THRESHOLD));
        // Defaults (no acceptable pause): suspected half a heartbeat after the first miss.
        assert_eq!(suspicion_after(&d), 1523);
        assert!(d.phi(last + 2000) > 30.0);

        // With Akka's cluster pause of 3 s, only after several seconds of silence.
        let paused = PhiConfig {
            acceptable_heartbeat_pause_ms: 3000,
            ..PhiConfig::default()
        };
        let (d, last) = steady(paused, 1000, 60);
        assert!(d.phi(last + 3000) < 1e-6);
        assert!(d.is_available(last + 4000, THRESHOLD));
        assert_eq!(suspicion_after(&d), 4523);
    }

    #[test]
    fn phi_table_with_defaults_matches_the_module_docs() {
        let (d, last) = steady(PhiConfig::default(), 1000, 2000);
        assert_eq!(d.mean_ms(), 1000.0);
        assert_eq!(d.std_dev_ms(), 0.0);
        let expected = [
            (1_000, std::f64::consts::LOG10_2),
            (2_000, 37.5847),
            (3_000, 259.048),
            (5_000, 1989.12),
            (10_000, 22403.7),
            (3_600_000, 1.42865e12),
        ];
        for (silence, phi) in expected {
            let got = d.phi(last + silence);
            assert!(
                (got - phi).abs() / phi < 1e-5,
                "{silence} ms: {got} != {phi}"
            );
        }
    }

    #[test]
    fn jittery_heartbeats_are_never_suspected_while_they_continue() {
        let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
        let mut d = PhiAccrualDetector::new(PhiConfig::default(), 0).unwrap();
        let mut now = 0;
        let mut worst: f64 = 0.0;
        for beat in 1..=10_000u64 {
            // 1000 ms ± 300 ms, and one beat in 100 held up 500 ms more (a GC pause).
            let mut interval = 700 + rng.below(601);
            if beat % 100 == 0 {
                interval += 500;
            }
            now += interval;
            // phi is highest just before the heartbeat lands.
            worst = worst.max(d.phi(now));
            assert!(d.is_available(now, THRESHOLD), "suspected at beat {beat}");
            d.heartbeat(now);
        }
        // The late beats come close enough to matter, not to the threshold.
        assert!(worst > 2.0 && worst < THRESHOLD, "worst phi {worst}");
        assert_eq!(d.sample_count(), 1000);
    }

    #[test]
    fn phi_is_near_zero_at_a_heartbeat_monotone_and_finite_for_hours() {
        let (d, last) = steady(PhiConfig::default(), 1000, 100);
        assert!(d.phi(last) < 1e-30);
        let fine = (0..20_000u64).map(|ms| last + ms);
        let coarse = (20..36_000u64).map(|s| last + s * 1000);
        let mut previous = 0.0;
        for now in fine.chain(coarse) {
            let phi = d.phi(now);
            assert!(phi.is_finite() && phi >= previous, "{phi} after {previous}");
            previous = phi;
        }
        assert!(previous > 1e12, "ten hours: {previous}");
        let end_of_time = d.phi(u64::MAX);
        assert!(end_of_time.is_finite() && end_of_time >= previous);
    }

    #[test]
    fn a_peer_that_resumes_is_available_again() {
        let (mut d, last) = steady(PhiConfig::default(), 1000, 30);
        let samples = d.sample_count();
        let back = last + 60_000;
        assert!(!d.is_available(back, THRESHOLD));

        d.heartbeat(back);
        assert!(d.is_available(back, THRESHOLD));
        assert_eq!(d.last_heartbeat(), back);
        // The outage is not a sample: it would make the next one slower to detect.
        assert_eq!(d.sample_count(), samples);
        assert!((d.mean_ms() - 1000.0).abs() < 1.0);

        for i in 1..=5 {
            d.heartbeat(back + i * 1000);
            assert!(d.is_available(back + i * 1000 + 900, THRESHOLD));
        }
        assert_eq!(suspicion_after(&d), 1523);
    }

    #[test]
    fn window_is_bounded_and_forgets_old_intervals() {
        let config = PhiConfig {
            max_samples: 16,
            ..PhiConfig::default()
        };
        let mut d = PhiAccrualDetector::new(config, 0).unwrap();
        let capacity = d.window.intervals.capacity();
        let mut now = 0;
        for _ in 0..5_000 {
            now += 1000;
            d.heartbeat(now);
            assert!(d.sample_count() <= 16);
        }
        for _ in 0..16 {
            now += 200;
            d.heartbeat(now);
        }
        assert_eq!(d.sample_count(), 16);
        assert_eq!(d.window.intervals.capacity(), capacity);
        // The running sums follow the evictions exactly.
        assert_eq!(d.mean_ms(), 200.0);
        assert_eq!(d.std_dev_ms(), 0.0);
    }

    #[test]
    fn the_window_starts_from_the_first_heartbeat_estimate() {
        let d = PhiAccrualDetector::new(PhiConfig::default(), 5_000).unwrap();
        assert_eq!(d.last_heartbeat(), 5_000);
        assert_eq!(d.sample_count(), 2);
        assert_eq!(d.mean_ms(), 1000.0);
        assert_eq!(d.std_dev_ms(), 250.0);
        assert!(d.phi(5_000) < 1e-4);
        assert!((d.phi(6_000) - 2f64.log10()).abs() < 1e-9);
        assert!(!d.is_available(8_000, THRESHOLD));
    }

    #[test]
    fn an_out_of_order_heartbeat_is_ignored() {
        let (mut d, last) = steady(PhiConfig::default(), 1000, 10);
        let samples = d.sample_count();
        d.heartbeat(last - 500);
        assert_eq!(d.last_heartbeat(), last);
        assert_eq!(d.sample_count(), samples);
        assert_eq!(d.phi(last - 500), d.phi(last));
    }

    #[test]
    fn config_out_of_range_is_refused_with_the_setting_named() {
        assert_eq!(PhiConfig::default().validate(), Ok(()));
        let bad = |change: fn(&mut PhiConfig)| {
            let mut config = PhiConfig::default();
            change(&mut config);
            let err = config.validate().unwrap_err();
            // Compared as text: a NaN threshold is not equal to itself.
            let text = err.to_string();
            assert_eq!(FailureDetector::new(config).unwrap_err().to_string(), text);
            assert_eq!(
                PhiAccrualDetector::new(config, 0).unwrap_err().to_string(),
                text
            );
            err
        };
        assert_eq!(
            bad(|c| c.threshold = 0.0),
            PhiConfigError::Threshold { got: 0.0 }
        );
        assert!(matches!(
            bad(|c| c.threshold = f64::NAN),
            PhiConfigError::Threshold { .. }
        ));
        assert_eq!(
            bad(|c| c.threshold = f64::INFINITY).to_string(),
            "threshold must be a finite number above 0, not inf"
        );
        assert_eq!(
            bad(|c| c.max_samples = 0).to_string(),
            "max-samples must be 1 to 1048576, not 0"
        );
        assert_eq!(
            bad(|c| c.max_samples = MAX_SAMPLES + 1),
            PhiConfigError::MaxSamples {
                got: MAX_SAMPLES + 1,
                max: MAX_SAMPLES
            }
        );
        assert_eq!(bad(|c| c.min_std_dev_ms = 0), PhiConfigError::MinStdDev);
        assert_eq!(
            bad(|c| c.first_heartbeat_estimate_ms = 0).to_string(),
            "first-heartbeat-estimate-ms must be 1 to 4294967295 ms, not 0"
        );
        assert_eq!(
            bad(|c| c.first_heartbeat_estimate_ms = MAX_INTERVAL_MS + 1),
            PhiConfigError::FirstHeartbeatEstimate {
                got: MAX_INTERVAL_MS + 1,
                max: MAX_INTERVAL_MS
            }
        );
    }

    #[test]
    fn failure_detector_reports_peers_by_name() {
        let mut fd = FailureDetector::new(PhiConfig::default()).unwrap();
        for s in 0..30u64 {
            for peer in ["carol", "alice", "bob"] {
                if peer != "bob" || s < 10 {
                    fd.heartbeat(peer, s * 1000);
                }
            }
        }
        let now = 29_500;
        assert!(fd.is_up("alice", now) && fd.is_up("carol", now));
        assert!(!fd.is_up("bob", now));
        assert!(!fd.is_up("dave", now));
        assert_eq!(fd.phi("dave", now), None);
        assert_eq!(
            fd.phi("alice", now),
            Some(fd.get("alice").unwrap().phi(now))
        );

        let statuses = fd.statuses(now);
        let names: Vec<&str> = statuses.iter().map(|(n, _, _)| n.as_str()).collect();
        assert_eq!(names, ["alice", "bob", "carol"]);
        let up: Vec<bool> = statuses.iter().map(|s| s.2).collect();
        assert_eq!(up, [true, false, true]);
        assert!(statuses[1].1 >= THRESHOLD && statuses[0].1 < 1e-6);

        assert!(fd.remove("bob"));
        assert!(!fd.remove("bob"));
        assert_eq!(fd.statuses(now).len(), 2);
        // Known again from its next heartbeat, with a fresh window.
        fd.heartbeat("bob", now);
        assert!(fd.is_up("bob", now));
        assert_eq!(fd.get("bob").unwrap().sample_count(), 2);
    }

    fn any_config() -> impl Strategy<Value = PhiConfig> {
        (1usize..40, 1u64..2_000, 0u64..10_000, 1u64..5_000).prop_map(
            |(max_samples, min_std_dev_ms, pause, estimate)| PhiConfig {
                max_samples,
                min_std_dev_ms,
                acceptable_heartbeat_pause_ms: pause,
                first_heartbeat_estimate_ms: estimate,
                ..PhiConfig::default()
            },
        )
    }

    fn any_interval() -> impl Strategy<Value = u64> {
        prop_oneof![
            8 => 0u64..3_000,
            1 => 0u64..100_000_000,
            1 => any::<u64>(),
        ]
    }

    proptest! {
        #[test]
        fn phi_is_finite_non_negative_and_non_decreasing_in_now(
            config in any_config(),
            start in 0u64..1_000_000,
            intervals in prop::collection::vec(any_interval(), 0..60),
            probes in prop::collection::vec(any_interval(), 1..30),
        ) {
            let mut d = PhiAccrualDetector::new(config, start).unwrap();
            let mut now = start;
            for interval in intervals {
                now = now.saturating_add(interval);
                d.heartbeat(now);
                let mut times: Vec<u64> = probes
                    .iter()
                    .map(|p| now.saturating_sub(1_000).saturating_add(*p))
                    .chain([u64::MAX])
                    .collect();
                times.sort_unstable();
                let mut previous = 0.0;
                for t in times {
                    let phi = d.phi(t);
                    prop_assert!(phi.is_finite(), "phi({t}) = {phi}");
                    prop_assert!(phi >= previous, "phi({t}) = {phi} < {previous}");
                    previous = phi;
                }
            }
        }
    }
}
