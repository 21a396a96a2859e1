//! The request decoder under a seeded fuzzer (`ringkv_tests::fuzz`): valid, mutated and
//! hostile frame bodies for `RINGKV_FUZZ_SECS` seconds (default 30), none of which may panic
//! or take more than a second. `RINGKV_FUZZ_SEED` picks the seed (default: a fixed one);
//! `cargo run --release -p ringkv-tests --example fuzz_decoder` runs 10 million inputs.

use std::time::Duration;

#[test]
fn the_request_decoder_survives_valid_mutated_and_hostile_frames() {
    let secs: u64 = std::env::var("RINGKV_FUZZ_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(30);
    let seed: u64 = std::env::var("RINGKV_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed);
    let f = ringkv_tests::fuzz::run(seed, u64::MAX, Duration::from_secs(secs));
    println!(
        "seed {seed}: {} inputs in {:.1} s ({} decoded to requests, {} refused), slowest {:?} (input {})",
        f.inputs,
        f.elapsed.as_secs_f64(),
        f.accepted,
        f.refused,
        f.slowest.0,
        f.slowest.1
    );
    assert!(
        f.panics.is_empty(),
        "inputs that panicked (seed {seed}): {:?}",
        &f.panics[..f.panics.len().min(20)]
    );
    assert!(
        f.hangs.is_empty(),
        "inputs slower than {:?} (seed {seed}): {:?}",
        ringkv_tests::fuzz::HANG,
        f.hangs
    );
    // The generator reaches both sides of the decoder.
    assert!(f.accepted > 100 && f.refused > 100, "{f:?}");
}
