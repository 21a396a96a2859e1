//! Durable write rates of four commit layouts, the measurement item 1 of issue 11 asks for
//! ("one group commit for the whole node: measure, then choose").
//!
//! `cargo run --release -p ringkv-storage --example commit_layouts [ROW...]`
//!
//! # Workload
//!
//! [`WRITERS`] = 50 client threads in a closed loop: each puts one [`VALUE_BYTES`] = 256-byte
//! value under a random 16-byte key of a random partition out of `Q`, waits until the put is
//! durable, and only then sends the next one (a client with 50 requests in flight). Every
//! commit is durable before the writes it holds are answered. Each row runs on fresh LMDB
//! envs in a temporary directory on the real disk (under the workspace's `target/`, or
//! `$COMMIT_LAYOUTS_DIR`; never tmpfs), for [`WARMUP`] then [`MEASURE`] of measured time, and
//! the directory is removed afterwards. Rows are run for `Q` = 64 and 8, and `Q` = 1 as the
//! reference; the whole table takes about a minute.
//!
//! # Layouts (the `ROW` names)
//!
//! * `node`: the real write path as a node runs it: one [`DataStore`] (one env, one writer
//!   thread) holding the `Q` partitions, written through [`Partition::update`] (DVV record,
//!   the key's Merkle segment in its data key, in-memory tree and counts; data format 2).
//! * `1`: the layout before one env per node, with today's code path: one [`Partition`] per
//!   partition, each opened alone (its own env and writer thread that group-commits what is
//!   queued). Until data format 2 this path also wrote a `merkle` entry in a second database;
//!   the figures for `1` under "Measured here" were taken with it.
//! * `1raw`: the same layout with nothing but the put: one env per partition, one writer
//!   thread per env committing what is queued, with LMDB's default sync. Compare it with `2`
//!   to see the layout alone.
//! * `2`: one env for the node, each partition a named database (`p00000`, ...), one writer
//!   thread that commits the queued writes of all partitions in one transaction, default sync.
//! * `2pfx`: as `2`, with every partition in one database and the partition number (u16 BE)
//!   as a key prefix, so a commit touches one B-tree instead of one per partition.
//! * `3`: as `2` (named databases), with `MDB_NOMETASYNC` and the acknowledgement of each
//!   batch deferred to the end of the next commit (whose data `fdatasync` covers this batch's
//!   meta page), or to an `env.force_sync()` when no write arrives within [`SYNC_WAIT`] = 1 ms.
//! * `4`: as `2`, plus one `merkle` entry per put in a second named database of the same
//!   transaction (key `[partition u16][segment u16][key hash u128]`, value
//!   `[entry hash u64][stored key]`, as today's `merkle` database): the cost of the second
//!   B-tree.
//!
//! Arguments select rows: `3` runs layout 3 at every `Q`, `3:64` only at Q=64.
//! `COMMIT_LAYOUTS_WRITERS=200` runs 200 clients instead of 50.
//!
//! # Columns
//!
//! puts/s and commits/s over the measured time, writes per commit, p50/p99 put latency (from
//! send to acknowledgement, hdrhistogram), `flush/c`: device cache flushes per commit by
//! construction (LMDB's default commit is an `fdatasync` of the data file plus a meta page
//! write through an `O_DSYNC` descriptor: 2; layout 3 is one `fdatasync` plus its forced
//! syncs), `dev/c`: flush requests the block device completed per commit
//! (`/sys/dev/block/M:m/stat`, field 16), and `devKB/c`: KiB the device wrote per commit
//! (field 7); both count the whole machine's I/O (the journal's and other processes' too).
//! `write_bytes` of `/proc/self/io` is not used: with large folios it counts whole folios
//! dirtied, three times what the device writes here. To count
//! system calls, strace one row: `strace -f -c -e trace=fdatasync,fsync,pwrite64,pwritev
//! target/release/examples/commit_layouts 3:64` (the counts include the envs' setup).
//!
//! # Measured here (2-core VM, virtio disk, ext4, another engineer's tests running)
//!
//! (Before the `node` row existed, with data format 1.) Three runs, puts/s at Q=64: the
//! partitions of then (`1`) 8.4-9.4k, the layout alone
//! (`1raw`) 11-13k, one env (`2`) 16-21k, with a key prefix (`2pfx`) 18-24k, with
//! `MDB_NOMETASYNC` (`3`) 18-23.5k, `2` plus the `merkle` database (`4`) 14.6-15.5k. With
//! 200 clients: `1` 17.8k, `2`/`2pfx`/`3` 31-32.5k, `4` 28k. One env's commits are page-write
//! bound (about 7-8 KiB written per put: each random key dirties its own leaf and branch
//! page), so halving the flushes per commit (`3`) halves the batch at the same throughput;
//! strace confirms one `fdatasync` per commit for `2` (the meta page goes through `O_DSYNC`)
//! and for `3` (plus the forced syncs).
//!
//! # Why layout 3 keeps "acknowledged means durable"
//!
//! LMDB's documentation of `MDB_NOMETASYNC` (lmdb.h): "Flush system buffers to disk only once
//! per transaction, omit the metadata flush. Defer that until the system flushes files to
//! disk, or next non-MDB_RDONLY commit or mdb_env_sync(). This optimization maintains database
//! integrity, but a system crash may undo the last committed transaction. I.e. it preserves
//! the ACI (atomicity, consistency, isolation) but not D (durability) database property."
//!
//! A commit (mdb.c, `mdb_txn_commit`) writes the transaction's dirty pages, then calls
//! `fdatasync` on the data file (unless `MDB_NOSYNC`), then writes the meta page. By default
//! the meta page goes through a second descriptor opened with `O_DSYNC`, a second flush; with
//! `MDB_NOMETASYNC` it is a plain `pwrite` to the same file (`mdb_env_write_meta`: `mfd =
//! (flags & (MDB_NOSYNC|MDB_NOMETASYNC)) ? env->me_fd : env->me_mfd`). So after commit `N+1`
//! has returned, its `fdatasync` (issued after commit `N`'s meta `pwrite`, on the same file)
//! has made commit `N`'s data and meta page durable: a crash can only undo commit `N+1`, whose
//! writes are not acknowledged yet. When no next commit comes, `mdb_env_sync(env, 1)`
//! (`Env::force_sync`) is an `fdatasync` of the same file and covers the last meta page. The
//! database is never corrupted (LMDB keeps two meta pages and picks the newest valid one);
//! only the last, unacknowledged transaction can be lost. This differs from `MDB_NOSYNC`,
//! which skips the data flush too and is safe only if the filesystem keeps write order.
//!
//! With heed 0.23: `EnvFlags::NO_META_SYNC` is passed to the unsafe
//! `EnvOpenOptions::flags` (or set later with the unsafe `Env::set_flags`, from one thread
//! at a time); `RwTxn::commit` is `mdb_txn_commit` and `Env::force_sync` is
//! `mdb_env_sync(env, 1)`, both returning LMDB's error. heed adds nothing between them (no
//! buffering, no deferred commit), so the argument above holds as long as (a) a batch is
//! answered only after a *later* `commit()` or `force_sync()` returned `Ok`, on the same env,
//! (b) a failed `commit` or `force_sync` fails every unanswered batch and stops the env
//! (after a failed `fdatasync` Linux may drop the dirty pages: the env must be reopened), and
//! (c) the env is not opened with `WRITEMAP` (then `mdb_env_sync` is an `msync`, which this
//! argument does not cover) nor shared with a process that opens it without the flag. The
//! `unsafe` is heed's general warning about these flags; none of its own invariants depend
//! on them. One weakening remains: a reader may see commit `N+1` before it is durable (LMDB
//! shows a commit to readers when its meta page is written); today the window is one `O_DSYNC`
//! write, with layout 3 it is up to a commit plus 1 ms. A read served in that window may return
//! a value that a power cut then undoes, a value that was never acknowledged.

use hdrhistogram::Histogram;
use heed::types::Bytes;
use heed::{CommitOrAbort, Database, Env, EnvFlags, EnvOpenOptions, WithoutTls};
use rand::Rng;
use ringkv_storage::{merkle, DataStore, Identity, Partition, PartitionOptions, VersionVector};
use std::error::Error;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Client threads, each with one put in flight (`$COMMIT_LAYOUTS_WRITERS` overrides it).
const WRITERS: usize = 50;
/// Bytes per value.
const VALUE_BYTES: usize = 256;
/// Bytes per key (random) under [`BUCKET`].
const KEY_BYTES: usize = 16;
/// Bucket of every key.
const BUCKET: &[u8] = b"bench";
/// Time run before measuring, per row.
const WARMUP: Duration = Duration::from_millis(400);
/// Measured time per row.
const MEASURE: Duration = Duration::from_millis(3000);
/// Most writes in one commit (as `PartitionOptions::max_batch`).
const MAX_BATCH: usize = 1024;
/// Layout 3: how long the writer waits for a next write before it forces a sync to answer
/// the committed batch.
const SYNC_WAIT: Duration = Duration::from_millis(1);
/// Layout 4: length of a `merkle` key after the partition, bytes (segment `u16` and key hash
/// `u128`, as data format 1 stored them).
const MERKLE_KEY_LEN: usize = 18;
/// LMDB map size of the envs this program opens itself, bytes (address space only).
const MAP_BYTES: usize = 4 << 30;
/// Partition counts measured.
const QS: [u32; 3] = [64, 8, 1];

/// The value of every put.
static VALUE: [u8; VALUE_BYTES] = [0x5a; VALUE_BYTES];

/// A commit layout (a row of the table).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Layout {
    /// The node's [`DataStore`] with every partition, the real write path.
    Node,
    /// (1) a [`Partition`] opened alone per partition (an env each), the real write path.
    Today,
    /// (1) the layout alone: an env and a writer per partition, plain puts.
    EnvPerPartition,
    /// (2) one env, a named database per partition.
    NodeNamed,
    /// (2) one env, the partition as a key prefix.
    NodePrefix,
    /// (3) as (2), `MDB_NOMETASYNC`, acknowledged after the next commit or a forced sync.
    NodeMetaNoSync,
    /// (4) as (2) plus a `merkle` entry per put.
    NodeMerkle,
}

impl Layout {
    const ALL: [Layout; 7] = [
        Layout::Node,
        Layout::Today,
        Layout::EnvPerPartition,
        Layout::NodeNamed,
        Layout::NodePrefix,
        Layout::NodeMetaNoSync,
        Layout::NodeMerkle,
    ];

    fn name(self) -> &'static str {
        match self {
            Layout::Node => "node",
            Layout::Today => "1",
            Layout::EnvPerPartition => "1raw",
            Layout::NodeNamed => "2",
            Layout::NodePrefix => "2pfx",
            Layout::NodeMetaNoSync => "3",
            Layout::NodeMerkle => "4",
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Layout::Node => "DataStore, real path (format 2)",
            Layout::Today => "Partition per p, env each, real path",
            Layout::EnvPerPartition => "env+writer per p, plain put",
            Layout::NodeNamed => "1 env, named db per p",
            Layout::NodePrefix => "1 env, p as key prefix",
            Layout::NodeMetaNoSync => "2 + NOMETASYNC, ack next",
            Layout::NodeMerkle => "2 + merkle db, same txn",
        }
    }

    /// At Q=1 these are the same as `1raw` (one env, one database).
    fn redundant_at_q1(self) -> bool {
        matches!(self, Layout::NodeNamed | Layout::NodePrefix)
    }
}

/// One put on its way to a writer thread.
struct Op {
    partition: u32,
    /// Stored key: `[bucket length][bucket][key]`.
    key: Vec<u8>,
    reply: Sender<()>,
}

/// Counters of the writer threads.
#[derive(Default)]
struct WriterStats {
    commits: AtomicU64,
    writes: AtomicU64,
    forced_syncs: AtomicU64,
}

/// Where the writes of one env go.
struct EnvTarget {
    env: Env<WithoutTls>,
    /// One database per partition (named layouts), or one for all.
    kv: Vec<Database<'static, Bytes, Bytes>>,
    /// Prefix the key with the partition number.
    prefix: bool,
    merkle: Option<Database<'static, Bytes, Bytes>>,
    /// Layout 3: answer a batch after the next commit or a forced sync.
    deferred_ack: bool,
}

impl EnvTarget {
    /// Opens a fresh env in `dir` with the databases `kv_names` (and `merkle` if asked).
    fn open(
        dir: &Path,
        kv_names: &[String],
        prefix: bool,
        with_merkle: bool,
        meta_no_sync: bool,
    ) -> Result<Self, Box<dyn Error>> {
        std::fs::create_dir_all(dir)?;
        let mut options = EnvOpenOptions::new().read_txn_without_tls();
        options
            .map_size(MAP_BYTES)
            .max_dbs(kv_names.len() as u32 + 2);
        if meta_no_sync {
            // SAFETY: see the module docs: a batch is answered only after a later commit or
            // `force_sync` on this env returned Ok; the env is not WRITEMAP.
            unsafe { options.flags(EnvFlags::NO_META_SYNC) };
        }
        // SAFETY: a fresh directory, opened once, by this process only.
        let env = unsafe { options.open(dir)? };
        let create = |name: &str| -> Result<Database<'static, Bytes, Bytes>, Box<dyn Error>> {
            let wtxn = env.write_txn()?;
            let db = env
                .create_databases_and_commit(wtxn, |opener, wtxn| {
                    opener
                        .create_database::<Bytes, Bytes>(wtxn, Some(name))
                        .map(CommitOrAbort::<_, ()>::Commit)
                })
                .map_err(|e: heed::Error| e)?
                .unwrap_commit();
            Ok(db)
        };
        let kv = kv_names
            .iter()
            .map(|n| create(n))
            .collect::<Result<Vec<_>, _>>()?;
        let merkle = if with_merkle {
            Some(create("merkle")?)
        } else {
            None
        };
        env.force_sync()?;
        Ok(Self {
            env,
            kv,
            prefix,
            merkle,
            deferred_ack: meta_no_sync,
        })
    }

    /// Puts one write in `wtxn`.
    fn apply(&self, wtxn: &mut heed::RwTxn, op: &Op) -> heed::Result<()> {
        let part = (op.partition as u16).to_be_bytes();
        let db = if self.kv.len() == 1 {
            self.kv[0]
        } else {
            self.kv[op.partition as usize]
        };
        if self.prefix {
            let mut key = Vec::with_capacity(2 + op.key.len());
            key.extend_from_slice(&part);
            key.extend_from_slice(&op.key);
            db.put(wtxn, &key, &VALUE)?;
        } else {
            db.put(wtxn, &op.key, &VALUE)?;
        }
        if let Some(m) = self.merkle {
            let key_hash = merkle::key_hash(&op.key);
            let mut mk = [0u8; 2 + MERKLE_KEY_LEN];
            mk[..2].copy_from_slice(&part);
            mk[2..4].copy_from_slice(&(merkle::segment_of(key_hash) as u16).to_be_bytes());
            mk[4..].copy_from_slice(&key_hash.to_be_bytes());
            let mut mv = Vec::with_capacity(8 + op.key.len());
            mv.extend_from_slice(&merkle::entry_hash(&op.key, &VALUE).to_be_bytes());
            mv.extend_from_slice(&op.key);
            m.put(wtxn, &mk, &mv)?;
        }
        Ok(())
    }

    /// The writer thread's loop: takes what is queued (up to [`MAX_BATCH`]), commits it in
    /// one transaction and answers it, as `WriterThread` does; in deferred mode it answers a
    /// batch only after the next commit (or a forced sync) returned.
    fn run(self, rx: Receiver<Op>, stats: Arc<WriterStats>) {
        let mut batch: Vec<Op> = Vec::with_capacity(MAX_BATCH);
        // Committed, not yet covered by a later fdatasync (deferred mode only).
        let mut unsynced: Vec<Op> = Vec::new();
        let answer = |ops: &mut Vec<Op>| {
            for op in ops.drain(..) {
                let _ = op.reply.send(());
            }
        };
        loop {
            let first = if unsynced.is_empty() {
                match rx.recv() {
                    Ok(op) => op,
                    Err(_) => return,
                }
            } else {
                match rx.recv_timeout(SYNC_WAIT) {
                    Ok(op) => op,
                    Err(e) => {
                        self.env.force_sync().expect("force_sync");
                        stats.forced_syncs.fetch_add(1, Ordering::Relaxed);
                        answer(&mut unsynced);
                        if e == RecvTimeoutError::Disconnected {
                            return;
                        }
                        continue;
                    }
                }
            };
            batch.push(first);
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(op) => batch.push(op),
                    Err(_) => break,
                }
            }
            let mut wtxn = self.env.write_txn().expect("write_txn");
            for op in &batch {
                self.apply(&mut wtxn, op).expect("put");
            }
            wtxn.commit().expect("commit");
            stats.commits.fetch_add(1, Ordering::Relaxed);
            stats
                .writes
                .fetch_add(batch.len() as u64, Ordering::Relaxed);
            // This commit's data fdatasync ran after the previous commit's meta page write.
            answer(&mut unsynced);
            if self.deferred_ack {
                std::mem::swap(&mut unsynced, &mut batch);
            } else {
                answer(&mut batch);
            }
        }
    }
}

/// The stores of one row, as the clients see them.
enum Target {
    /// Partition handles (on one node's [`DataStore`], or each on its own), and the env
    /// directories whose commits are counted.
    Partitions(Vec<Arc<Partition>>, Vec<PathBuf>),
    /// Queues of our writer threads: one per partition, or one for all.
    Writers(Vec<Sender<Op>>),
}

impl Target {
    /// Puts `key` in `partition`; `reply` gets `()` once durable.
    fn put(&self, partition: u32, key: Vec<u8>, reply: &Sender<()>) {
        match self {
            Target::Partitions(parts, _) => {
                let reply = reply.clone();
                // The stored key is `[len][bucket][key]`: the client key is its tail.
                let user_key = key[1 + BUCKET.len()..].to_vec();
                parts[partition as usize].update(
                    BUCKET,
                    &user_key,
                    VersionVector::default(),
                    Some(VALUE.to_vec()),
                    1,
                    Box::new(move |r| {
                        r.expect("durable put");
                        let _ = reply.send(());
                    }),
                );
            }
            Target::Writers(queues) => {
                let q = if queues.len() == 1 {
                    &queues[0]
                } else {
                    &queues[partition as usize]
                };
                q.send(Op {
                    partition,
                    key,
                    reply: reply.clone(),
                })
                .expect("writer alive");
            }
        }
    }
}

/// What a row measured.
struct RowResult {
    puts: u64,
    commits: u64,
    writes: u64,
    forced_syncs: u64,
    secs: f64,
    p50_us: u64,
    p99_us: u64,
    dev_flushes: Option<u64>,
    dev_write_bytes: Option<u64>,
}

/// Counters read at the start and end of the measured time.
struct Snapshot {
    puts: u64,
    commits: u64,
    writes: u64,
    forced_syncs: u64,
    /// The device's (flushes, sectors written).
    device: Option<(u64, u64)>,
    at: Instant,
}

fn main() -> Result<(), Box<dyn Error>> {
    let filters: Vec<String> = std::env::args().skip(1).collect();
    let writers: usize = match std::env::var("COMMIT_LAYOUTS_WRITERS") {
        Ok(n) => n.parse()?,
        Err(_) => WRITERS,
    };
    let base = std::env::var_os("COMMIT_LAYOUTS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    std::fs::create_dir_all(&base)?;
    let stat_file = device_stat_file(&base);
    println!(
        "{writers} closed-loop writers, {VALUE_BYTES} B values, {KEY_BYTES} B random keys, \
         {} ms measured per row, envs under {} (device stat: {})",
        MEASURE.as_millis(),
        base.canonicalize()?.display(),
        stat_file
            .as_ref()
            .map_or("none".into(), |p| p.display().to_string()),
    );
    println!(
        "{:<5} {:<33} {:>3} {:>8} {:>9} {:>8} {:>7} {:>7} {:>7} {:>6} {:>7}",
        "row",
        "layout",
        "Q",
        "puts/s",
        "commits/s",
        "writes/c",
        "p50 ms",
        "p99 ms",
        "flush/c",
        "dev/c",
        "devKB/c"
    );
    for q in QS {
        for layout in Layout::ALL {
            if q == 1 && layout.redundant_at_q1() {
                continue;
            }
            let selected = filters.is_empty()
                || filters.iter().any(|f| match f.split_once(':') {
                    Some((l, fq)) => l == layout.name() && fq == q.to_string(),
                    None => f == layout.name(),
                });
            if !selected {
                continue;
            }
            let dir = tempfile::Builder::new()
                .prefix("commit_layouts-")
                .tempdir_in(&base)?;
            let r = run_row(layout, q, writers, dir.path(), stat_file.as_deref())?;
            dir.close()?;
            let per_commit = |n: Option<u64>, scale: f64| {
                n.map_or("-".to_string(), |n| {
                    format!("{:.1}", n as f64 / scale / r.commits.max(1) as f64)
                })
            };
            // LMDB's default commit: fdatasync + O_DSYNC meta write; layout 3: one fdatasync
            // per commit plus the forced syncs.
            let flushes = match layout {
                Layout::NodeMetaNoSync => r.commits + r.forced_syncs,
                _ => 2 * r.commits,
            };
            println!(
                "{:<5} {:<33} {:>3} {:>8.0} {:>9.0} {:>8.1} {:>7.2} {:>7.2} {:>7.2} {:>6} {:>7}",
                layout.name(),
                layout.describe(),
                q,
                r.puts as f64 / r.secs,
                r.commits as f64 / r.secs,
                r.writes as f64 / r.commits.max(1) as f64,
                r.p50_us as f64 / 1000.0,
                r.p99_us as f64 / 1000.0,
                flushes as f64 / r.commits.max(1) as f64,
                per_commit(r.dev_flushes, 1.0),
                per_commit(r.dev_write_bytes, 1024.0),
            );
        }
    }
    Ok(())
}

/// Runs one row: opens its stores in `dir`, runs the clients, measures, shuts down.
fn run_row(
    layout: Layout,
    q: u32,
    writers: usize,
    dir: &Path,
    stat_file: Option<&Path>,
) -> Result<RowResult, Box<dyn Error>> {
    let stats = Arc::new(WriterStats::default());
    let mut writer_threads: Vec<JoinHandle<()>> = Vec::new();
    let mut spawn_writer = |target: EnvTarget| -> Sender<Op> {
        let (tx, rx) = mpsc::channel();
        let stats = stats.clone();
        writer_threads.push(std::thread::spawn(move || target.run(rx, stats)));
        tx
    };
    let names = |n: u32| (0..n).map(|p| format!("p{p:05}")).collect::<Vec<_>>();
    let target = match layout {
        Layout::Node => {
            let options = PartitionOptions::default();
            let ids: Vec<(u32, Identity)> = (0..q).map(|p| (p, Identity::fixed(1))).collect();
            let store = DataStore::open(dir, &ids, &options)?;
            let parts = (0..q)
                .map(|p| Partition::of(&store, p))
                .collect::<Result<Vec<_>, _>>()?;
            Target::Partitions(parts, vec![dir.to_path_buf()])
        }
        Layout::Today => {
            let options = PartitionOptions::default();
            let mut parts = Vec::new();
            let mut dirs = Vec::new();
            for p in 0..q {
                let d = dir.join(format!("{p:05}"));
                parts.push(Partition::open(&d, p, 1, &options)?);
                dirs.push(d);
            }
            Target::Partitions(parts, dirs)
        }
        Layout::EnvPerPartition => Target::Writers(
            (0..q)
                .map(|p| {
                    EnvTarget::open(
                        &dir.join(format!("{p:05}")),
                        &["kv".into()],
                        false,
                        false,
                        false,
                    )
                    .map(&mut spawn_writer)
                })
                .collect::<Result<_, _>>()?,
        ),
        Layout::NodeNamed | Layout::NodeMetaNoSync | Layout::NodeMerkle => {
            let t = EnvTarget::open(
                dir,
                &names(q),
                false,
                layout == Layout::NodeMerkle,
                layout == Layout::NodeMetaNoSync,
            )?;
            Target::Writers(vec![spawn_writer(t)])
        }
        Layout::NodePrefix => {
            let t = EnvTarget::open(dir, &["kv".into()], true, false, false)?;
            Target::Writers(vec![spawn_writer(t)])
        }
    };
    let target = Arc::new(target);
    let puts = Arc::new(AtomicU64::new(0));
    let measuring = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<JoinHandle<Histogram<u64>>> = (0..writers)
        .map(|_| {
            let (target, puts, measuring, stop) = (
                target.clone(),
                puts.clone(),
                measuring.clone(),
                stop.clone(),
            );
            std::thread::spawn(move || {
                let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
                let mut rng = rand::thread_rng();
                let (tx, rx) = mpsc::channel();
                while !stop.load(Ordering::Relaxed) {
                    let partition = rng.gen_range(0..q);
                    let mut key = Vec::with_capacity(1 + BUCKET.len() + KEY_BYTES);
                    key.push(BUCKET.len() as u8);
                    key.extend_from_slice(BUCKET);
                    key.extend_from_slice(&rng.gen::<[u8; KEY_BYTES]>());
                    let started = Instant::now();
                    target.put(partition, key, &tx);
                    rx.recv().expect("answer");
                    let us = started.elapsed().as_micros() as u64;
                    puts.fetch_add(1, Ordering::Relaxed);
                    if measuring.load(Ordering::Relaxed) {
                        hist.saturating_record(us.max(1));
                    }
                }
                hist
            })
        })
        .collect();

    let today_commits = |target: &Target| -> u64 {
        match target {
            Target::Partitions(_, dirs) => dirs.iter().map(|d| last_txn_id(d)).sum(),
            Target::Writers(_) => 0,
        }
    };
    let snapshot = |target: &Target| Snapshot {
        puts: puts.load(Ordering::Relaxed),
        commits: stats.commits.load(Ordering::Relaxed) + today_commits(target),
        writes: stats.writes.load(Ordering::Relaxed),
        forced_syncs: stats.forced_syncs.load(Ordering::Relaxed),
        device: stat_file.and_then(device_counts),
        at: Instant::now(),
    };
    std::thread::sleep(WARMUP);
    measuring.store(true, Ordering::Relaxed);
    let start = snapshot(&target);
    std::thread::sleep(MEASURE);
    let end = snapshot(&target);
    measuring.store(false, Ordering::Relaxed);
    stop.store(true, Ordering::Relaxed);
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
    for c in clients {
        hist.add(c.join().expect("client thread"))?;
    }
    drop(target);
    // The clients and the target held the last queue senders: the writers drain and stop.
    for w in writer_threads {
        w.join().expect("writer thread");
    }
    let puts = end.puts - start.puts;
    let writes = if matches!(layout, Layout::Today | Layout::Node) {
        puts
    } else {
        end.writes - start.writes
    };
    Ok(RowResult {
        puts,
        commits: end.commits - start.commits,
        writes,
        forced_syncs: end.forced_syncs - start.forced_syncs,
        secs: (end.at - start.at).as_secs_f64(),
        p50_us: hist.value_at_quantile(0.5),
        p99_us: hist.value_at_quantile(0.99),
        dev_flushes: end.device.zip(start.device).map(|(e, s)| e.0 - s.0),
        dev_write_bytes: end.device.zip(start.device).map(|(e, s)| (e.1 - s.1) * 512),
    })
}

/// Reads LMDB's last committed transaction id from the two meta pages of `data.mdb` (as
/// `benches/write_path.rs` does), to count the commits of today's partitions without access
/// to their envs. Layout (LMDB 0.9, 64-bit): `mm_magic` (u32) at 16, the page size at 40,
/// `mm_txnid` (u64) at 144; meta page 1 starts at the page size.
fn last_txn_id(dir: &Path) -> u64 {
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
    u64_at(144).max(u64_at(page + 144))
}

/// The `stat` file of the block device holding `dir`, if sysfs shows it.
fn device_stat_file(dir: &Path) -> Option<PathBuf> {
    let dev = std::fs::metadata(dir).ok()?.dev();
    let path = PathBuf::from(format!(
        "/sys/dev/block/{}:{}/stat",
        libc::major(dev),
        libc::minor(dev)
    ));
    path.exists().then_some(path)
}

/// Flush requests the device completed and sectors (512 B) it wrote: fields 16 and 7 of its
/// `stat` file (Linux 5.5 and later).
fn device_counts(stat_file: &Path) -> Option<(u64, u64)> {
    let text = std::fs::read_to_string(stat_file).ok()?;
    let fields: Vec<u64> = text
        .split_whitespace()
        .map(|f| f.parse().ok())
        .collect::<Option<_>>()?;
    Some((*fields.get(15)?, *fields.get(6)?))
}
