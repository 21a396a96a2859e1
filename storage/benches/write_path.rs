//! Durable write path: raw LMDB group commit against the partition's writer thread.
//!
//! Three groups, each at batch sizes [`paths::BATCHES`], throughput in puts per second:
//!
//! * `lmdb_raw`: heed directly, one write transaction of B puts of [`paths::VALUE_BYTES`]-byte
//!   values under random keys, committed with the default (full) sync. The ceiling.
//! * `partition`: B blind [`Partition::update`] calls, then a wait for all B replies. The
//!   writer thread may wake on the first write and commit it before the rest are queued, so a
//!   burst of B can take more than one commit: this is what a vnode sees under a burst.
//! * `partition_one_commit`: the same B writes, but queued while the writer thread is held
//!   (inside the reply callback of an untimed write), so they are applied and committed as one
//!   transaction: the cost of the partition's own work at exactly B puts per commit. Here
//!   the B submits all happen before the writer applies any, while in `partition` the writer
//!   starts applying during the submits, so this is no upper bound for `partition`.
//!
//! Each group writes into its own temporary directory under Cargo's target directory (or
//! under `$RINGKV_BENCH_DIR`: on a tmpfs, fsync is free and only the CPU cost is left).
//! `cargo bench -p ringkv-storage --bench group_commit_ratio` prints the ratio of the two
//! paths as a table, using the helpers in [`paths`].

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use paths::{Keys, RawLmdb, VnodePath, BATCHES};
use std::time::Duration;

/// The measured write paths, shared with `group_commit_ratio.rs` (which includes this file).
pub mod paths {
    use heed::types::Bytes;
    use heed::{CommitOrAbort, Database, Env, EnvOpenOptions, WithoutTls};
    use ringkv_storage::{Partition, PartitionOptions, VersionVector};
    use std::path::Path;
    use std::sync::{mpsc, Arc};
    use std::time::{Duration, Instant};
    use tempfile::TempDir;

    /// Puts per commit measured.
    pub const BATCHES: [usize; 4] = [1, 16, 128, 1024];
    /// Bytes per value.
    pub const VALUE_BYTES: usize = 256;
    /// Map size of both envs, bytes: large enough that no benchmark grows a map (address
    /// space only; LMDB does not allocate it).
    const MAP_BYTES: usize = 8 << 30;
    /// Bucket of the partition path's keys (stored keys are `[1]["b"][u64 BE]`, 10 bytes;
    /// the raw path stores the 8-byte `u64 BE` alone).
    const BUCKET: &[u8] = b"b";

    /// Random-looking, non-repeating u64 keys (splitmix64 over a counter), so that every put
    /// inserts a new key at a random place in the B-tree.
    pub struct Keys(u64);

    impl Keys {
        /// A key stream starting from `seed`.
        pub fn new(seed: u64) -> Self {
            Self(seed)
        }

        /// The next key.
        pub fn next_key(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        }

        /// The next `n` keys.
        pub fn batch(&mut self, n: usize) -> Vec<u64> {
            (0..n).map(|_| self.next_key()).collect()
        }
    }

    /// A fresh directory under `$RINGKV_BENCH_DIR` if set (e.g. `/dev/shm`, to take fsync out
    /// and see the CPU cost alone), else under Cargo's `target/tmp`: the same filesystem as
    /// the target directory.
    fn scratch_dir(what: &str) -> TempDir {
        let parent = std::env::var_os("RINGKV_BENCH_DIR")
            .unwrap_or_else(|| env!("CARGO_TARGET_TMPDIR").into());
        tempfile::Builder::new()
            .prefix(&format!("ringkv-bench-{what}-"))
            .tempdir_in(&parent)
            .unwrap_or_else(|e| panic!("create a scratch directory under {parent:?}: {e}"))
    }

    /// Reads LMDB's last committed transaction id from the two meta pages of `data.mdb`, so
    /// that commits can be counted without access to the env. Layout (LMDB 0.9, 64-bit): page
    /// header 16 bytes, then `mm_magic` (u32, 0xBEEFC0DE) at 16, `md_pad` of the free DB (the
    /// page size) at 40 and `mm_txnid` (u64) at 144; meta page 1 starts at the page size.
    pub fn last_txn_id(dir: &Path) -> u64 {
        use std::io::Read;
        let mut head = vec![0u8; 2 * 65536];
        let mut file = std::fs::File::open(dir.join("data.mdb")).expect("open data.mdb");
        let mut got = 0;
        while got < head.len() {
            match file.read(&mut head[got..]).expect("read data.mdb") {
                0 => break,
                n => got += n,
            }
        }
        let u32_at = |o: usize| u32::from_ne_bytes(head[o..o + 4].try_into().unwrap());
        let u64_at = |o: usize| u64::from_ne_bytes(head[o..o + 8].try_into().unwrap());
        assert_eq!(u32_at(16), 0xBEEF_C0DE, "not an LMDB meta page");
        let page = u32_at(40) as usize;
        assert!(got >= 2 * page, "data.mdb shorter than two meta pages");
        u64_at(144).max(u64_at(page + 144))
    }

    /// heed used directly: one env, one database, nothing else.
    pub struct RawLmdb {
        env: Env<WithoutTls>,
        db: Database<'static, Bytes, Bytes>,
        dir: TempDir,
    }

    impl RawLmdb {
        /// Opens a fresh env in a scratch directory.
        pub fn open() -> Self {
            let dir = scratch_dir("raw");
            // SAFETY: a fresh directory, opened once, by this process only.
            let env = unsafe {
                EnvOpenOptions::new()
                    .read_txn_without_tls()
                    .map_size(MAP_BYTES)
                    .max_dbs(1)
                    .open(dir.path())
            }
            .expect("open the raw env");
            let wtxn = env.write_txn().expect("begin");
            let db = env
                .create_databases_and_commit(wtxn, |opener, wtxn| {
                    opener
                        .create_database::<Bytes, Bytes>(wtxn, Some("kv"))
                        .map(CommitOrAbort::<_, ()>::Commit)
                })
                .map_err(|e: heed::Error| e)
                .expect("create the database")
                .unwrap_commit();
            Self { env, db, dir }
        }

        /// One write transaction: a put of `value` under each key, then a synced commit.
        pub fn write_batch(&self, keys: &[u64], value: &[u8]) {
            let mut wtxn = self.env.write_txn().expect("begin");
            for k in keys {
                self.db
                    .put(&mut wtxn, &k.to_be_bytes(), value)
                    .expect("put");
            }
            wtxn.commit().expect("commit");
        }

        /// Transactions committed so far.
        pub fn commits(&self) -> u64 {
            self.env.info().last_txn_id as u64
        }

        /// The env's directory.
        pub fn path(&self) -> &Path {
            self.dir.path()
        }
    }

    /// A [`Partition`] with its writer thread, written through [`Partition::update`].
    pub struct VnodePath {
        partition: Arc<Partition>,
        dir: TempDir,
    }

    impl VnodePath {
        /// Opens a fresh partition in a scratch directory, with the default options except
        /// the initial map size (so that no benchmark measures a map resize).
        pub fn open() -> Self {
            let dir = scratch_dir("partition");
            let options = PartitionOptions {
                initial_map_bytes: MAP_BYTES,
                max_map_bytes: MAP_BYTES,
                ..PartitionOptions::default()
            };
            let partition = Partition::open(dir.path(), 0, 7, &options).expect("open partition");
            Self { partition, dir }
        }

        /// Owned inputs of one batch, as a vnode gets them from decoded requests.
        pub fn inputs(keys: &[u64], value: &[u8]) -> Vec<([u8; 8], Vec<u8>)> {
            keys.iter()
                .map(|k| (k.to_be_bytes(), value.to_vec()))
                .collect()
        }

        /// Queues every write (blind: empty context), then waits for all replies.
        pub fn write_batch(&self, writes: Vec<([u8; 8], Vec<u8>)>) {
            let n = writes.len();
            let (tx, rx) = mpsc::channel();
            for (key, value) in writes {
                self.submit(&key, value, tx.clone());
            }
            drop(tx);
            Self::wait(&rx, n);
        }

        /// Like [`VnodePath::write_batch`], but holds the writer thread while the writes are
        /// queued, so that they are committed as one transaction. Returns the time from the
        /// first submit to the last reply; the untimed write that holds the writer (`hold`,
        /// a fresh key) costs one more commit before the clock starts.
        pub fn write_batch_one_commit(
            &self,
            hold: [u8; 8],
            writes: Vec<([u8; 8], Vec<u8>)>,
        ) -> Duration {
            let n = writes.len();
            let (held_tx, held_rx) = mpsc::channel::<()>();
            let (release_tx, release_rx) = mpsc::channel::<()>();
            self.partition.update(
                BUCKET,
                &hold,
                VersionVector::new(),
                Some(vec![0]),
                0,
                Box::new(move |r| {
                    r.expect("holding write");
                    let _ = held_tx.send(());
                    // Blocks the writer thread until every timed write is queued.
                    let _ = release_rx.recv();
                }),
            );
            held_rx.recv().expect("writer thread holds");
            let start = Instant::now();
            let (tx, rx) = mpsc::channel();
            for (key, value) in writes {
                self.submit(&key, value, tx.clone());
            }
            drop(tx);
            release_tx.send(()).expect("release the writer thread");
            Self::wait(&rx, n);
            start.elapsed()
        }

        fn submit(&self, key: &[u8], value: Vec<u8>, tx: mpsc::Sender<bool>) {
            self.partition.update(
                BUCKET,
                key,
                VersionVector::new(),
                Some(value),
                0,
                Box::new(move |r| {
                    let _ = tx.send(r.is_ok());
                }),
            );
        }

        fn wait(rx: &mpsc::Receiver<bool>, n: usize) {
            let ok = rx.iter().filter(|ok| *ok).count();
            assert_eq!(ok, n, "{} of {n} writes failed", n - ok);
        }

        /// Transactions committed so far (read from the meta pages).
        pub fn commits(&self) -> u64 {
            last_txn_id(self.dir.path())
        }
    }
}

fn lmdb_raw(c: &mut Criterion) {
    let raw = RawLmdb::open();
    let value = vec![0xA5u8; paths::VALUE_BYTES];
    let mut keys = Keys::new(1);
    let mut group = c.benchmark_group("lmdb_raw");
    for b in BATCHES {
        group.throughput(Throughput::Elements(b as u64));
        group.bench_with_input(BenchmarkId::from_parameter(b), &b, |bench, &b| {
            bench.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let batch = keys.batch(b);
                    let start = std::time::Instant::now();
                    raw.write_batch(&batch, &value);
                    total += start.elapsed();
                }
                total
            })
        });
    }
    group.finish();
}

fn partition(c: &mut Criterion) {
    let vnode = VnodePath::open();
    let value = vec![0xA5u8; paths::VALUE_BYTES];
    let mut keys = Keys::new(2);
    let mut group = c.benchmark_group("partition");
    for b in BATCHES {
        group.throughput(Throughput::Elements(b as u64));
        group.bench_with_input(BenchmarkId::from_parameter(b), &b, |bench, &b| {
            bench.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let writes = VnodePath::inputs(&keys.batch(b), &value);
                    let start = std::time::Instant::now();
                    vnode.write_batch(writes);
                    total += start.elapsed();
                }
                total
            })
        });
    }
    group.finish();
}

fn partition_one_commit(c: &mut Criterion) {
    let vnode = VnodePath::open();
    let value = vec![0xA5u8; paths::VALUE_BYTES];
    let mut keys = Keys::new(3);
    let mut group = c.benchmark_group("partition_one_commit");
    for b in BATCHES {
        group.throughput(Throughput::Elements(b as u64));
        group.bench_with_input(BenchmarkId::from_parameter(b), &b, |bench, &b| {
            bench.iter_custom(|iters| {
                (0..iters)
                    .map(|_| {
                        let hold = keys.next_key().to_be_bytes();
                        let writes = VnodePath::inputs(&keys.batch(b), &value);
                        vnode.write_batch_one_commit(hold, writes)
                    })
                    .sum()
            })
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(20);
    targets = lmdb_raw, partition, partition_one_commit
}
criterion_main!(benches);
