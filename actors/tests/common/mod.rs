//! Helpers shared by the integration tests of `ringkv-actors` (each test binary uses a part).
#![allow(dead_code)]

pub mod sim;

use std::time::{Duration, Instant};

/// Polls `check` every 5 ms until it is `Ok`; fails the test with its last `Err` after 10 s.
pub async fn until(check: impl FnMut() -> Result<(), String>) {
    until_within(Duration::from_secs(10), Duration::from_millis(5), check).await
}

/// Polls `check` every `every` until it is `Ok`; fails the test with its last `Err` once
/// `limit` has passed.
pub async fn until_within(
    limit: Duration,
    every: Duration,
    mut check: impl FnMut() -> Result<(), String>,
) {
    let deadline = Instant::now() + limit;
    loop {
        match check() {
            Ok(()) => return,
            Err(why) => assert!(Instant::now() < deadline, "{why}"),
        }
        tokio::time::sleep(every).await;
    }
}
