//! Ten million fuzzed frame bodies through the request decoder (`ringkv_tests::fuzz`), with
//! the figures printed: `cargo run --release -p ringkv-tests --example fuzz_decoder [-- N SEED]`.

fn main() {
    let mut args = std::env::args().skip(1);
    let n: u64 = args
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10_000_000);
    let seed: u64 = args.next().and_then(|s| s.parse().ok()).unwrap_or(0x5eed);
    let f = ringkv_tests::fuzz::run(seed, n, std::time::Duration::from_secs(24 * 3600));
    println!(
        "seed {seed}: {} inputs in {:.1} s ({:.0}/s): {} decoded to requests, {} refused, {} panics, {} hangs (> {:?}); slowest {:?} (input {})",
        f.inputs,
        f.elapsed.as_secs_f64(),
        f.inputs as f64 / f.elapsed.as_secs_f64(),
        f.accepted,
        f.refused,
        f.panics.len(),
        f.hangs.len(),
        ringkv_tests::fuzz::HANG,
        f.slowest.0,
        f.slowest.1
    );
    if !f.panics.is_empty() || !f.hangs.is_empty() {
        println!(
            "panics: {:?}\nhangs: {:?}",
            &f.panics[..f.panics.len().min(20)],
            f.hangs
        );
        std::process::exit(1);
    }
}
