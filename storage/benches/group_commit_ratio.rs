//! Prints how much of LMDB's raw group-commit rate the partition write path keeps, per batch
//! size (issue 4's goal: at least 80%).
//!
//! `cargo bench -p ringkv-storage --bench group_commit_ratio` times each path for about
//! [`PER_POINT`] per batch size (about 25 s in all) and prints
//! `batch | raw puts/s | vnode path puts/s | ratio`, followed by the commits the vnode path
//! took per batch and the rate when a batch is forced into one commit (see `write_path.rs`
//! for what each path does). Under `cargo test --benches` (no `--bench` argument) it writes
//! one batch per path and size, as a smoke test, and prints no numbers.

#[path = "write_path.rs"]
#[allow(dead_code)]
mod write_path;

use std::time::{Duration, Instant};
use write_path::paths::{last_txn_id, Keys, RawLmdb, VnodePath, BATCHES, VALUE_BYTES};

/// Wall time spent on each path at each batch size.
const PER_POINT: Duration = Duration::from_secs(2);
/// The goal: the vnode path keeps this share of the raw rate.
const GOAL: f64 = 0.8;

/// What one path did at one batch size.
#[derive(Default)]
struct Point {
    puts: u64,
    timed: Duration,
    commits: u64,
}

impl Point {
    fn puts_per_s(&self) -> f64 {
        self.puts as f64 / self.timed.as_secs_f64()
    }
    fn commits_per_batch(&self, batch: usize) -> f64 {
        self.commits as f64 * batch as f64 / self.puts as f64
    }
}

/// The three paths, measured side by side.
struct Paths {
    raw: RawLmdb,
    vnode: VnodePath,
    held: VnodePath,
    value: Vec<u8>,
    keys: Keys,
}

impl Paths {
    /// One batch of `b` puts on path `which` (0 raw, 1 vnode, 2 vnode forced into one
    /// commit); returns the timed part.
    fn one_batch(&mut self, which: usize, b: usize) -> Duration {
        match which {
            0 => {
                let batch = self.keys.batch(b);
                let start = Instant::now();
                self.raw.write_batch(&batch, &self.value);
                start.elapsed()
            }
            1 => {
                let writes = VnodePath::inputs(&self.keys.batch(b), &self.value);
                let start = Instant::now();
                self.vnode.write_batch(writes);
                start.elapsed()
            }
            _ => {
                // The holding write is one extra, untimed commit per batch.
                let hold = self.keys.next_key().to_be_bytes();
                let writes = VnodePath::inputs(&self.keys.batch(b), &self.value);
                self.held.write_batch_one_commit(hold, writes)
            }
        }
    }

    fn commits(&self) -> [u64; 3] {
        [
            self.raw.commits(),
            self.vnode.commits(),
            self.held.commits(),
        ]
    }

    /// Runs batches of `b` puts on the three paths in turn (rotating which goes first) until
    /// `budget` of wall time has passed, at least one round. Interleaving gives every path
    /// the same disk weather, which matters more for a ratio than long separate runs.
    fn measure(&mut self, b: usize, budget: Duration) -> [Point; 3] {
        let wall = Instant::now();
        let before = self.commits();
        let mut points: [Point; 3] = Default::default();
        for round in 0.. {
            for j in 0..3 {
                let which = (round + j) % 3;
                points[which].timed += self.one_batch(which, b);
                points[which].puts += b as u64;
            }
            if wall.elapsed() >= budget {
                break;
            }
        }
        for (point, (after, before)) in points
            .iter_mut()
            .zip(self.commits().into_iter().zip(before))
        {
            point.commits = after - before;
        }
        points
    }
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let budget = if full { PER_POINT } else { Duration::ZERO };

    let mut paths = Paths {
        raw: RawLmdb::open(),
        vnode: VnodePath::open(),
        held: VnodePath::open(),
        value: vec![0xA5u8; VALUE_BYTES],
        keys: Keys::new(42),
    };

    if full {
        println!(
            "group commit, {VALUE_BYTES}-byte values, random u64 keys, sync on; \
             paths interleaved batch by batch, ~{} s each per batch size",
            PER_POINT.as_secs()
        );
        println!();
        println!(
            "{:>5} | {:>10} | {:>17} | {:>5} | {:>15} | {:>17} | {:>5}",
            "batch",
            "raw puts/s",
            "vnode path puts/s",
            "ratio",
            "vnode commits/B",
            "one-commit puts/s",
            "ratio"
        );
        println!(
            "{:-<5}-|-{:-<10}-|-{:-<17}-|-{:-<5}-|-{:-<15}-|-{:-<17}-|-{:-<5}",
            "", "", "", "", "", "", ""
        );
    }
    let mut below_goal = Vec::new();
    for b in BATCHES {
        let [r, v, h] = paths.measure(b, 3 * budget);
        // The meta-page reader that counts the vnode path's commits must agree with LMDB.
        assert_eq!(
            last_txn_id(paths.raw.path()),
            paths.raw.commits(),
            "meta page parse"
        );
        assert!(
            (r.commits_per_batch(b) - 1.0).abs() < 1e-9,
            "raw path: one commit per batch"
        );
        let ratio = v.puts_per_s() / r.puts_per_s();
        if ratio < GOAL {
            below_goal.push(b);
        }
        if full {
            println!(
                "{:>5} | {:>10.0} | {:>17.0} | {:>4.0}% | {:>15.2} | {:>17.0} | {:>4.0}%",
                b,
                r.puts_per_s(),
                v.puts_per_s(),
                100.0 * ratio,
                v.commits_per_batch(b),
                h.puts_per_s(),
                100.0 * h.puts_per_s() / r.puts_per_s(),
            );
        }
    }
    if full {
        println!();
        if below_goal.is_empty() {
            println!(
                "goal met: the vnode path keeps >= {:.0}% of the raw rate at every batch size",
                100.0 * GOAL
            );
        } else {
            println!(
                "goal missed at batch sizes {below_goal:?}: the vnode path keeps < {:.0}% of the raw rate",
                100.0 * GOAL
            );
        }
    } else {
        println!("group_commit_ratio: smoke run (one batch per path and size); use cargo bench for numbers");
    }
}
