//! Strong buckets on real `ringkv` processes under faults, every history checked for
//! linearizability (`ringkv_tests::linearizability`), as `strong_sim.rs` does over the
//! simulated network.
//!
//! A workload ([`Load`]) runs concurrent clients, each connected to one node and running
//! sequential random get / put / cas / delete operations with short time limits on a few keys
//! of a strong bucket, recorded into a [`Recorder`]. Each run has a bucket of its own (every
//! key starts absent, as the checker assumes) and a seeded fault schedule (`RINGKV_SEED`,
//! printed with the schedule):
//!
//! * `strong_ops_stay_linearizable_under_partitions_kills_and_pauses`, 5 nodes in network
//!   namespaces (partitions are iptables DROP rules), three runs on one cluster:
//!   1. **partitions**: one node isolated, healed; then twice a minority of two cut from a
//!      majority of three, healed;
//!   2. **kill -9**: a node killed and restarted on its data directory, three times (acceptor
//!      promises and accepts must survive);
//!   3. **SIGSTOP**: a node paused, then resumed, three times (a paused proposer and acceptor);
//! * `strong_ops_stay_linearizable_through_joins_and_leaves`: 3 nodes on loopback; under load,
//!   three layout changes, each a node joining and one leaving in one committed plan, each run
//!   to its end (transfers and strong carry-over done, the old version pruned, the leaver
//!   removed, then stopped): a plain one, one with the leaver paused right after the commit,
//!   one with the joiner killed -9 and restarted right after the commit;
//! * `the_checker_catches_a_weakened_protocol_on_real_processes`: the same workload with every
//!   proposer weakened (`inject_fault weaken_strong`) and one node cut off must be reported as
//!   a violation.
//!
//! Outcomes: an answer is `Ok` (a `condition_failed` cas is `Ok(false)`); `no_majority` is
//! `Fail` (nothing written); everything else (`indeterminate`, any other error, a timeout, a
//! closed connection) is `Info`. Every run asserts a linearizable verdict and a minimum of
//! completed operations, and prints its figures (run with `--nocapture`):
//!
//! ```sh
//! cargo build -p ringkv-api && cargo test -p ringkv-tests --test strong_faults -- --nocapture
//! ```
//!
//! These runs found that a proposer retried an accept that two replicas had refused while the
//! third had not answered yet (it had accepted it): a cas then failed on its own value
//! (`strong_sim.rs` has the deterministic case).
//!
//! The netns tests need root, `ip` and `iptables` (elsewhere they print `SKIP`, unless
//! `RINGKV_REQUIRE_NETNS=1`). The tests run one at a time ([`serial`]): their time limits are
//! short, and two clusters on 2 cores would slow each other into timeouts.

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use ringkv_api::protocol::{BucketPropsFrame, RequestFrame, ResponseFrame};
use ringkv_api::Client;
use ringkv_tests::churn::{add_node, admin, wait_transition_done};
use ringkv_tests::linearizability::{
    CheckOptions, History, Op, Outcome, Recorder, Report, Ret, Violation,
};
use ringkv_tests::workload::names;
use ringkv_tests::{runtime, Cluster, REQUEST_TIMEOUT};
use serde_bytes::ByteBuf;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::runtime::Runtime;
use tokio::task::JoinHandle;

static SERIAL: Mutex<()> = Mutex::new(());

/// One test at a time. A failed test poisons the lock; the next one goes on.
fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

/// The seed of the fault schedules: `RINGKV_SEED`, else a fixed one.
fn seed() -> u64 {
    match std::env::var("RINGKV_SEED") {
        Ok(s) => s.parse().expect("RINGKV_SEED is a u64"),
        Err(_) => 14,
    }
}

/// Flags of every test node: 16 partitions (transfers of a layout change stay short).
const NODE_FLAGS: [&str; 2] = ["--partitions", "16"];

/// Server-side time limit of one operation, ms. A forwarded operation waits 200 ms more on
/// the forwarding node, which is still within [`OP_TIMEOUT`].
const SERVER_TIMEOUT_MS: u64 = 600;
/// Client-side time limit of one operation: past it the operation is `Info`.
const OP_TIMEOUT: Duration = Duration::from_millis(1000);
/// Longest wait of a whole test step (a heal seen everywhere, progress of the load).
const STEP: Duration = Duration::from_secs(30);

/// Makes `bucket` strong through node 0 and waits until every started node of `nodes` reports
/// it strong (bucket properties travel by gossip; a node that does not know yet would take an
/// eventual write).
fn make_strong(cluster: &Cluster, nodes: &[usize], bucket: &[u8]) {
    let frame = RequestFrame {
        op: "bucket_set".into(),
        bucket: Some(ByteBuf::from(bucket.to_vec())),
        props: Some(BucketPropsFrame {
            consistency: Some("strong".into()),
            ..Default::default()
        }),
        ..Default::default()
    };
    match cluster.request(0, frame, REQUEST_TIMEOUT) {
        Ok(a) if a.ok => {}
        other => cluster.fail(&format!("bucket_set consistency=strong failed: {other:?}")),
    }
    for &i in nodes {
        wait_strong(cluster, i, bucket);
    }
}

/// Waits until node `i` reports `bucket` strong.
fn wait_strong(cluster: &Cluster, i: usize, bucket: &[u8]) {
    cluster.wait_for(
        &format!("n{} to know the bucket is strong", i + 1),
        STEP,
        || {
            let frame = RequestFrame {
                op: "bucket_get".into(),
                bucket: Some(ByteBuf::from(bucket.to_vec())),
                ..Default::default()
            };
            let answer = cluster.request(i, frame, REQUEST_TIMEOUT)?;
            let info = answer.info.unwrap_or_default();
            (info["consistency"] == "strong")
                .then_some(())
                .ok_or_else(|| format!("bucket properties {info}"))
        },
    );
}

/// What the workload does.
#[derive(Clone, Debug)]
struct LoadConfig {
    /// The strong bucket.
    bucket: Vec<u8>,
    /// Clients; client `c` talks to `targets[c % targets.len()]`.
    clients: u64,
    /// Keys `k0..k{keys}`.
    keys: usize,
    /// Most operations per client.
    max_ops: usize,
    /// Longest run: clients stop after this even if not told to.
    max_time: Duration,
    /// Seed of the clients' choices.
    seed: u64,
}

/// Counters of a running load.
#[derive(Default)]
struct Counters {
    /// Operations answered `Ok` (a failed cas condition included).
    ok: AtomicUsize,
    /// Outcomes by kind (`ok get`, `fail no_majority`, `info timeout`, ...).
    kinds: Mutex<BTreeMap<String, usize>>,
    /// Answers a strong bucket must never give (siblings on a get), described.
    anomalies: Mutex<Vec<String>>,
}

impl Counters {
    fn count(&self, kind: String) {
        *self
            .kinds
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(kind)
            .or_default() += 1;
    }
}

/// What every client shares.
struct Shared {
    rec: Recorder,
    config: LoadConfig,
    targets: Mutex<Vec<SocketAddr>>,
    stop: AtomicBool,
    counters: Counters,
    deadline: Instant,
    /// Per client, one note per recorded operation, in order: what the answer said beyond
    /// its outcome (an error's message, a failed cas's current value).
    notes: Mutex<BTreeMap<u64, Vec<String>>>,
}

/// A running workload. Dropping it stops the clients (they are tasks of the caller's runtime).
struct Load {
    shared: Arc<Shared>,
    tasks: Vec<JoinHandle<()>>,
    /// Just before the recorder's origin: the time base of [`Load::mark`].
    origin: Instant,
    /// What the test did when, ns since `origin`.
    marks: Mutex<Vec<(u64, String)>>,
    began: Instant,
    /// Wall-clock time of the start, to match node logs.
    wall: std::time::SystemTime,
}

impl Load {
    fn start(rt: &Runtime, targets: Vec<SocketAddr>, config: LoadConfig) -> Load {
        let origin = Instant::now();
        let shared = Arc::new(Shared {
            rec: Recorder::new(),
            deadline: Instant::now() + config.max_time,
            config,
            targets: Mutex::new(targets),
            stop: AtomicBool::new(false),
            counters: Counters::default(),
            notes: Mutex::new(BTreeMap::new()),
        });
        let tasks = (0..shared.config.clients)
            .map(|c| rt.spawn(client(c, shared.clone())))
            .collect();
        Load {
            shared,
            tasks,
            origin,
            marks: Mutex::new(Vec::new()),
            began: Instant::now(),
            wall: std::time::SystemTime::now(),
        }
    }

    fn ok(&self) -> usize {
        self.shared.counters.ok.load(Ordering::Relaxed)
    }

    /// Notes (and prints) what the test does now, for the schedule and violation reports.
    fn mark(&self, what: impl Into<String>) {
        let what = what.into();
        let at = self.origin.elapsed();
        println!("  t={:6.2}s {what}", at.as_secs_f64());
        self.marks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((at.as_nanos() as u64, what));
    }

    /// Moves the clients to other nodes (each reconnects before its next operation).
    fn set_targets(&self, targets: Vec<SocketAddr>) {
        *self
            .shared
            .targets
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = targets;
    }

    /// Waits until `more` operations beyond now completed `Ok`.
    fn progress(&self, cluster: &Cluster, more: usize) {
        let from = self.ok();
        cluster.wait_for("the strong workload to make progress", STEP, || {
            let now = self.ok();
            (now >= from + more)
                .then_some(())
                .ok_or_else(|| format!("{} operations ok since, want {more}", now - from))
        });
    }

    /// Stops the clients and returns the history with the test's marks.
    fn finish(mut self, rt: &Runtime) -> Finished {
        self.shared.stop.store(true, Ordering::SeqCst);
        let tasks = std::mem::take(&mut self.tasks);
        rt.block_on(async {
            for t in tasks {
                tokio::time::timeout(OP_TIMEOUT * 5, t)
                    .await
                    .expect("a client stops within its operation's time limit")
                    .expect("a client task panicked");
            }
        });
        let c = &self.shared.counters;
        Finished {
            history: self.shared.rec.history(),
            kinds: c.kinds.lock().unwrap_or_else(|p| p.into_inner()).clone(),
            anomalies: c
                .anomalies
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
            marks: self.marks.lock().unwrap_or_else(|p| p.into_inner()).clone(),
            ran: self.began.elapsed(),
            notes: self
                .shared
                .notes
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
            wall: self.wall,
        }
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// The request frame of `op` on `key`.
fn frame_of(bucket: &[u8], key: &[u8], op: &Op) -> RequestFrame {
    let base = RequestFrame {
        bucket: Some(ByteBuf::from(bucket.to_vec())),
        key: Some(ByteBuf::from(key.to_vec())),
        timeout_ms: Some(SERVER_TIMEOUT_MS),
        ..Default::default()
    };
    match op {
        Op::Get => RequestFrame {
            op: "get".into(),
            ..base
        },
        Op::Put(v) => RequestFrame {
            op: "put".into(),
            value: Some(ByteBuf::from(v.clone())),
            ..base
        },
        Op::Delete => RequestFrame {
            op: "delete".into(),
            ..base
        },
        // The `cas` op, sent as a raw frame (`expect` absent: must be absent; `value`
        // absent: delete).
        Op::Cas { expect, new } => RequestFrame {
            op: "cas".into(),
            expect: expect.clone().map(ByteBuf::from),
            value: new.clone().map(ByteBuf::from),
            ..base
        },
    }
}

/// How an answer (or its absence) is recorded, with its kind for the counters and what it
/// says of the key's value (`None`: nothing known).
fn outcome_of(
    op: &Op,
    answer: Result<ResponseFrame, &str>,
) -> (Outcome, String, Option<Option<Vec<u8>>>) {
    let name = match op {
        Op::Get => "get",
        Op::Put(_) => "put",
        Op::Delete => "delete",
        Op::Cas { .. } => "cas",
    };
    let a = match answer {
        Ok(a) => a,
        Err(why) => return (Outcome::Info, format!("info {name} {why}"), None),
    };
    let first = |a: &ResponseFrame| {
        a.values
            .as_ref()
            .and_then(|v| v.first())
            .map(|v| v.to_vec())
    };
    if a.ok {
        return match op {
            Op::Get => {
                let v = first(&a);
                (Outcome::Ok(Ret::Get(v.clone())), "ok get".into(), Some(v))
            }
            Op::Put(v) => (
                Outcome::Ok(Ret::Done),
                "ok put".into(),
                Some(Some(v.clone())),
            ),
            Op::Delete => (Outcome::Ok(Ret::Done), "ok delete".into(), Some(None)),
            Op::Cas { new, .. } => (
                Outcome::Ok(Ret::Cas(true)),
                "ok cas true".into(),
                Some(new.clone()),
            ),
        };
    }
    let code = a.code.clone().unwrap_or_default();
    match (op, code.as_str()) {
        (Op::Cas { .. }, "condition_failed") => {
            let v = first(&a);
            (Outcome::Ok(Ret::Cas(false)), "ok cas false".into(), Some(v))
        }
        (_, "no_majority") => (Outcome::Fail, format!("fail {name} no_majority"), None),
        _ => (Outcome::Info, format!("info {name} {code}"), None),
    }
}

/// One client: sequential random operations on the load's keys through its node, until
/// stopped, out of operations or out of time.
async fn client(c: u64, shared: Arc<Shared>) {
    let cfg = &shared.config;
    let mut rng = StdRng::seed_from_u64(cfg.seed.wrapping_mul(1000).wrapping_add(c));
    let mut last: Vec<Option<Vec<u8>>> = vec![None; cfg.keys];
    let mut conn: Option<(SocketAddr, Client)> = None;
    let mut i = 0;
    while i < cfg.max_ops
        && !shared.stop.load(Ordering::Relaxed)
        && Instant::now() < shared.deadline
    {
        let target = {
            let t = shared.targets.lock().unwrap_or_else(|p| p.into_inner());
            t[c as usize % t.len()]
        };
        if conn.as_ref().is_none_or(|(a, _)| *a != target) {
            conn = match tokio::time::timeout(OP_TIMEOUT, Client::connect(target)).await {
                Ok(Ok(client)) => Some((target, client)),
                _ => {
                    // Down or restarting: nothing was sent, nothing to record.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    None
                }
            };
            continue;
        }
        let (_, client) = conn.as_ref().expect("connected");
        let k = rng.gen_range(0..cfg.keys);
        let key = format!("k{k}").into_bytes();
        let fresh = format!("c{c}-{i}").into_bytes();
        let op = match rng.gen_range(0..100) {
            0..40 => Op::Get,
            40..65 => Op::Put(fresh),
            65..90 => Op::Cas {
                expect: last[k].clone(),
                new: Some(fresh),
            },
            _ => Op::Delete,
        };
        i += 1;
        let frame = frame_of(&cfg.bucket, &key, &op);
        let id = shared.rec.invoke(c, key.clone(), op.clone());
        let answer = match tokio::time::timeout(OP_TIMEOUT, client.request(frame)).await {
            Ok(Ok(a)) => Ok(a),
            Ok(Err(_)) => Err("connection closed"),
            Err(_) => Err("client timeout"),
        };
        if answer.is_err() {
            // The connection may hold a late answer, or be gone: start a fresh one.
            conn = None;
        }
        if let Ok(a) = &answer {
            if matches!(op, Op::Get) && a.ok && a.values.as_ref().is_some_and(|v| v.len() > 1) {
                shared
                    .counters
                    .anomalies
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(format!("client {c}: get of k{k} answered siblings {a:?}"));
            }
        }
        let note = match &answer {
            Ok(a) if a.ok => String::new(),
            Ok(a) => format!(
                "{}: {} (values {:?})",
                a.code.as_deref().unwrap_or("?"),
                a.message.as_deref().unwrap_or(""),
                a.values
                    .iter()
                    .flatten()
                    .map(|v| String::from_utf8_lossy(v).into_owned())
                    .collect::<Vec<_>>()
            ),
            Err(why) => why.to_string(),
        };
        let (outcome, kind, seen) = outcome_of(&op, answer);
        let pause = match &outcome {
            Outcome::Ok(_) => {
                shared.counters.ok.fetch_add(1, Ordering::Relaxed);
                Duration::from_millis(rng.gen_range(2..10))
            }
            Outcome::Fail => Duration::from_millis(50),
            Outcome::Info => Duration::from_millis(200),
        };
        shared.rec.complete(id, outcome);
        shared
            .notes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(c)
            .or_default()
            .push(note);
        shared.counters.count(kind);
        if let Some(v) = seen {
            last[k] = v;
        }
        tokio::time::sleep(pause).await;
    }
}

/// A finished run: its history, outcome counts, the test's marks.
struct Finished {
    history: History,
    kinds: BTreeMap<String, usize>,
    anomalies: Vec<String>,
    marks: Vec<(u64, String)>,
    ran: Duration,
    notes: BTreeMap<u64, Vec<String>>,
    wall: std::time::SystemTime,
}

impl Finished {
    fn count(&self, f: impl Fn(&Outcome) -> bool) -> usize {
        self.history.ops.iter().filter(|o| f(&o.outcome)).count()
    }

    fn ok(&self) -> usize {
        self.count(|o| matches!(o, Outcome::Ok(_)))
    }

    /// Writes (put, delete, cas that applied) answered `Ok`.
    fn ok_writes(&self) -> usize {
        self.count(|o| matches!(o, Outcome::Ok(Ret::Done | Ret::Cas(true))))
    }

    /// Operations invoked at or after `from` and answered `Ok` by `to` (ns since the start).
    fn ok_between(&self, from: u64, to: u64) -> usize {
        self.history
            .ops
            .iter()
            .filter(|o| matches!(o.outcome, Outcome::Ok(_)) && o.invoke >= from && o.complete <= to)
            .count()
    }

    /// Checks the history; prints the figures; returns the report.
    fn check(&self, run: &str, seed: u64) -> Report {
        let options = CheckOptions {
            max_steps_per_key: 5_000_000,
            time_limit: Duration::from_secs(60),
        };
        let report = self.history.check(&options);
        println!(
            "{run} (seed {seed}): ran {:.1} s; {} operations recorded, {} ok ({} writes), {} fail, {} info; by kind {:?}",
            self.ran.as_secs_f64(),
            self.history.len(),
            self.ok(),
            self.ok_writes(),
            self.count(|o| matches!(o, Outcome::Fail)),
            self.count(|o| matches!(o, Outcome::Info)),
            self.kinds
        );
        println!("{run}: checker: {report}");
        report
    }

    /// Asserts a linearizable verdict, no anomaly and at least `min_ok` completed operations
    /// of which `min_writes` writes; on a violation, panics with an excerpt of the key's
    /// history around the operation that could not be linearized and the test's marks.
    fn assert_linearizable(&self, run: &str, seed: u64, min_ok: usize, min_writes: usize) {
        let report = self.check(run, seed);
        assert!(
            self.anomalies.is_empty(),
            "{run} (seed {seed}): answers a strong bucket must not give: {:?}",
            self.anomalies
        );
        if let Some(v) = report.violation() {
            panic!(
                "{run} (seed {seed}, rerun with RINGKV_SEED={seed}): {report}\n{}",
                self.excerpt(v)
            );
        }
        assert!(
            report.is_linearizable(),
            "{run} (seed {seed}): no verdict: {report}"
        );
        assert!(
            self.ok() >= min_ok && self.ok_writes() >= min_writes,
            "{run} (seed {seed}): only {} operations ok ({} writes): too few to check anything (want {min_ok}, {min_writes} writes)",
            self.ok(),
            self.ok_writes()
        );
    }

    /// Every operation on the violating key from 2 s before the blocked one's invocation to
    /// 1 s after its completion, in invocation order, each with what its answer said, and the
    /// test's marks; times in ns since the start.
    fn excerpt(&self, v: &Violation) -> String {
        let from = v.blocked.invoke.saturating_sub(2_000_000_000);
        let to = match v.blocked.outcome {
            Outcome::Info => v.blocked.invoke,
            _ => v.blocked.complete,
        } + 1_000_000_000;
        // A client's operations in invocation order match its notes.
        let mut per_client: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
        for o in &self.history.ops {
            per_client.entry(o.client).or_default().push(o.invoke);
        }
        for times in per_client.values_mut() {
            times.sort_unstable();
        }
        let note = |o: &ringkv_tests::linearizability::Operation| -> String {
            let i = per_client[&o.client].binary_search(&o.invoke).unwrap_or(0);
            self.notes
                .get(&o.client)
                .and_then(|n| n.get(i))
                .filter(|n| !n.is_empty())
                .map(|n| format!("  ({n})"))
                .unwrap_or_default()
        };
        let mut ops: Vec<_> = self
            .history
            .ops
            .iter()
            .filter(|o| o.key == v.key && o.invoke <= to)
            .filter(|o| {
                o.invoke >= from || matches!(o.outcome, Outcome::Info) || o.complete >= from
            })
            .collect();
        ops.sort_by_key(|o| o.invoke);
        let wall = self
            .wall
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let mut out = format!(
            "the start is {:.3} s after the Unix epoch; operations on the key from {} ms to {} ms:\n",
            wall.as_secs_f64(),
            from / 1_000_000,
            to / 1_000_000
        );
        for o in ops {
            out.push_str(&format!("  {o}{}\n", note(o)));
        }
        out.push_str("test marks:\n");
        for (at, m) in &self.marks {
            out.push_str(&format!("  t={:.3}s {m}\n", *at as f64 / 1e9));
        }
        out
    }
}

/// Node indices `0..n`.
fn all(n: usize) -> Vec<usize> {
    (0..n).collect()
}

/// Waits until every node of `nodes` sees every node of `nodes` up.
fn wait_all_up(cluster: &Cluster, nodes: &[usize]) -> Duration {
    cluster.wait_views(nodes, &names(cluster, nodes), true, STEP)
}

/// One fault of a schedule, with how long it lasts.
#[derive(Clone, Debug)]
enum Fault {
    /// The node's links to every other node dropped (iptables, both ends).
    Isolate(usize),
    /// The first group cut from the second.
    Split(Vec<usize>, Vec<usize>),
    /// kill -9, then a restart on the same data directory.
    Kill(usize),
    /// SIGSTOP, then SIGCONT.
    Pause(usize),
}

/// The seeded schedules of the three runs on 5 nodes: partitions (one node isolated, then two
/// splits of two against three), kills (three) and pauses (three), each fault lasting
/// `range` ms.
fn schedule(run: &str, rng: &mut StdRng) -> Vec<(Fault, Duration)> {
    let nodes = all(5);
    let one = |rng: &mut StdRng| rng.gen_range(0..5);
    let faults: Vec<Fault> = match run {
        "partitions" => {
            let mut f = vec![Fault::Isolate(one(rng))];
            for _ in 0..2 {
                let mut order = nodes.clone();
                order.shuffle(rng);
                let (minority, majority) = order.split_at(2);
                f.push(Fault::Split(minority.to_vec(), majority.to_vec()));
            }
            f
        }
        "kill -9" => (0..3).map(|_| Fault::Kill(one(rng))).collect(),
        "SIGSTOP" => (0..3).map(|_| Fault::Pause(one(rng))).collect(),
        other => panic!("no schedule for {other}"),
    };
    let range = if run == "kill -9" {
        1000..2000
    } else {
        2000..3500
    };
    faults
        .into_iter()
        .map(|f| (f, Duration::from_millis(rng.gen_range(range.clone()))))
        .collect()
}

/// Runs `schedule` under a load of 9 clients on 4 keys of a fresh strong bucket: each fault
/// held for its time, undone, then every node seen up again and the load's progress awaited.
/// Checks the history.
fn faults_run(cluster: &mut Cluster, rt: &Runtime, run: &str, seed: u64) {
    let started = Instant::now();
    let bucket = run
        .replace(|c: char| !c.is_ascii_alphanumeric(), "")
        .into_bytes();
    let nodes = all(cluster.nodes.len());
    make_strong(cluster, &nodes, &bucket);
    let mut rng = StdRng::seed_from_u64(seed);
    let steps = schedule(run, &mut rng);
    println!("{run}: seed {seed}, schedule {steps:?}");
    let load = Load::start(
        rt,
        cluster.addrs(),
        LoadConfig {
            bucket,
            clients: 9,
            keys: 4,
            max_ops: 4000,
            max_time: Duration::from_secs(90),
            seed,
        },
    );
    load.progress(cluster, 100);
    let mut faulted = 0;
    for (fault, lasts) in steps {
        let from = load.ok();
        let n = |i: usize| format!("n{}", i + 1);
        match &fault {
            Fault::Isolate(i) => {
                load.mark(format!("fault: isolate {} for {lasts:?}", n(*i)));
                let rest: Vec<usize> = nodes.iter().copied().filter(|j| j != i).collect();
                cluster.partition(&[&[*i][..], &rest[..]]);
                std::thread::sleep(lasts);
                cluster.heal();
                load.mark("healed");
            }
            Fault::Split(minority, majority) => {
                load.mark(format!(
                    "fault: partition {:?} | {:?} for {lasts:?}",
                    names(cluster, minority),
                    names(cluster, majority)
                ));
                cluster.partition(&[minority, majority]);
                std::thread::sleep(lasts);
                cluster.heal();
                load.mark("healed");
            }
            Fault::Kill(i) => {
                load.mark(format!("fault: kill -9 {}, down {lasts:?}", n(*i)));
                cluster.nodes[*i].kill9();
                std::thread::sleep(lasts);
                cluster.nodes[*i].restart();
                load.mark(format!("restarted {}", n(*i)));
            }
            Fault::Pause(i) => {
                load.mark(format!("fault: SIGSTOP {} for {lasts:?}", n(*i)));
                cluster.nodes[*i].signal(libc::SIGSTOP);
                std::thread::sleep(lasts);
                cluster.nodes[*i].signal(libc::SIGCONT);
                load.mark(format!("SIGCONT {}", n(*i)));
            }
        }
        faulted += load.ok() - from;
        let back = wait_all_up(cluster, &nodes);
        load.mark(format!("every node sees every node up after {back:?}"));
        load.progress(cluster, 80);
    }
    let run_result = load.finish(rt);
    println!("{run}: {faulted} operations ok while a fault was on");
    run_result.assert_linearizable(run, seed, 300, 100);
    assert!(
        faulted >= 50,
        "{run}: only {faulted} operations completed while the faults were on"
    );
    let crashed: Vec<String> = nodes
        .iter()
        .filter(|&&i| !cluster.nodes[i].is_running())
        .map(|&i| format!("n{}", i + 1))
        .collect();
    assert!(
        crashed.is_empty(),
        "{run}: nodes exited on their own: {crashed:?}"
    );
    println!("{run}: {:.1} s in all", started.elapsed().as_secs_f64());
}

/// Partitions, kill -9 and SIGSTOP on 5 nodes in network namespaces, one cluster for the
/// three runs, each with a bucket of its own.
#[test]
fn strong_ops_stay_linearizable_under_partitions_kills_and_pauses() {
    let _serial = serial();
    let test = "strong_ops_stay_linearizable_under_partitions_kills_and_pauses";
    let Some(mut cluster) = Cluster::start_netns(test, 5, &NODE_FLAGS) else {
        return;
    };
    let seed = seed();
    println!("{test}: seed {seed} (rerun with RINGKV_SEED={seed})");
    let rt = runtime();
    for (i, run) in ["partitions", "kill -9", "SIGSTOP"].iter().enumerate() {
        faults_run(&mut cluster, &rt, run, seed.wrapping_add(i as u64));
    }
}

/// Client addresses of `nodes`.
fn addrs(cluster: &Cluster, nodes: &[usize]) -> Vec<SocketAddr> {
    nodes.iter().map(|&i| cluster.nodes[i].addr).collect()
}

/// Starts a node that joins through node `via`, waits until `via` lists it as a member and it
/// knows the load's bucket is strong, then spreads the clients over `clients` and it.
fn join(cluster: &mut Cluster, load: &Load, via: usize, clients: &[usize], bucket: &[u8]) -> usize {
    let new = add_node(cluster, via, &NODE_FLAGS);
    let name = cluster.name(new);
    cluster.wait_for(&format!("{name} to join"), STEP, || {
        let members = cluster.status(via)["members"].clone();
        let known = members
            .as_array()
            .is_some_and(|m| m.iter().any(|m| m["name"] == name.as_str()));
        known
            .then_some(())
            .ok_or_else(|| format!("members {members}"))
    });
    wait_strong(cluster, new, bucket);
    let mut targets = clients.to_vec();
    targets.push(new);
    load.set_targets(addrs(cluster, &targets));
    load.mark(format!(
        "{name} joined the cluster (not in the layout yet); clients on {:?}",
        names(cluster, &targets)
    ));
    load.progress(cluster, 80);
    new
}

/// One layout change under the load: on node `at`, `leaver` leaves (the joiner is already a
/// member) and the plan is committed; `meanwhile` runs right after the commit; then waits
/// until the transition is over on `members` (one live version, the leaver removed) and the
/// load made progress. Returns the layout version.
fn change(
    cluster: &mut Cluster,
    load: &Load,
    at: usize,
    leaver: usize,
    members: &[usize],
    meanwhile: impl FnOnce(&mut Cluster, &Load),
) -> u64 {
    admin(cluster, at, &["leave", &cluster.name(leaver)]);
    let plan = admin(cluster, at, &["plan"]);
    admin(cluster, at, &["commit"]);
    let version = cluster.status(at)["layout_version"].as_u64().unwrap();
    load.mark(format!(
        "commit v{version}: {} leaves, {} replicas in the new layout\n{plan}",
        cluster.name(leaver),
        names(cluster, members).join(", ")
    ));
    meanwhile(cluster, load);
    let took = wait_transition_done(cluster, members, version, Duration::from_secs(120));
    load.mark(format!(
        "transition over v{version}: one live version, {} removed ({took:?} after the commit)",
        cluster.name(leaver)
    ));
    load.progress(cluster, 150);
    version
}

/// Moves the clients off the removed node `leaver`, then stops it (SIGTERM).
fn retire(cluster: &mut Cluster, load: &Load, leaver: usize, members: &[usize]) {
    load.set_targets(addrs(cluster, members));
    load.mark(format!("clients moved off {}", cluster.name(leaver)));
    load.progress(cluster, 80);
    cluster.nodes[leaver].terminate(Duration::from_secs(10));
    load.mark(format!("{} stopped", cluster.name(leaver)));
    load.progress(cluster, 80);
}

/// Three layout changes, each a join and a leave in one plan, under a load that runs through
/// them all (clients on every node, the joiner from when it is a member, the leaver until it
/// is removed): a plain one; one whose leaver is paused (SIGSTOP) for 3 s right after the
/// commit (its proposer stalls mid-transition with operations placed under the old layout);
/// one whose joiner is killed -9 right after the commit and restarted (its transfers and
/// strong carry-over resume).
#[test]
fn strong_ops_stay_linearizable_through_joins_and_leaves() {
    let _serial = serial();
    let seed = seed().wrapping_add(3);
    let started = Instant::now();
    let bucket: &[u8] = b"layout";
    let mut cluster = Cluster::start(3, &NODE_FLAGS);
    make_strong(&cluster, &all(3), bucket);
    let rt = runtime();
    println!("joins and leaves: seed {seed}");
    let load = Load::start(
        &rt,
        addrs(&cluster, &[0, 1, 2]),
        LoadConfig {
            bucket: bucket.to_vec(),
            clients: 8,
            keys: 5,
            max_ops: 6000,
            max_time: Duration::from_secs(150),
            seed,
        },
    );
    load.progress(&cluster, 150);

    // 1. n4 joins, n3 leaves.
    let n4 = join(&mut cluster, &load, 0, &[0, 1, 2], bucket);
    change(&mut cluster, &load, 0, 2, &[0, 1, n4], |_, _| {});
    retire(&mut cluster, &load, 2, &[0, 1, n4]);

    // 2. n5 joins, n2 leaves and is paused for 3 s right after the commit.
    let n5 = join(&mut cluster, &load, 0, &[0, 1, n4], bucket);
    change(&mut cluster, &load, 0, 1, &[0, n4, n5], |c, load| {
        c.nodes[1].signal(libc::SIGSTOP);
        load.mark("SIGSTOP n2");
        std::thread::sleep(Duration::from_secs(3));
        c.nodes[1].signal(libc::SIGCONT);
        load.mark("SIGCONT n2");
    });
    retire(&mut cluster, &load, 1, &[0, n4, n5]);

    // 3. n6 joins, n1 leaves; n6 is killed -9 right after the commit and restarted.
    let n6 = join(&mut cluster, &load, n4, &[0, n4, n5], bucket);
    change(&mut cluster, &load, n4, 0, &[n4, n5, n6], |c, load| {
        c.nodes[n6].kill9();
        load.mark("kill -9 n6");
        std::thread::sleep(Duration::from_secs(1));
        c.nodes[n6].restart();
        load.mark("restarted n6");
    });
    retire(&mut cluster, &load, 0, &[n4, n5, n6]);
    let run = load.finish(&rt);

    let commits: Vec<u64> = run
        .marks
        .iter()
        .filter(|(_, m)| m.starts_with("commit"))
        .map(|(at, _)| *at)
        .collect();
    let overs: Vec<u64> = run
        .marks
        .iter()
        .filter(|(_, m)| m.starts_with("transition over"))
        .map(|(at, _)| *at)
        .collect();
    for (i, (from, to)) in commits.iter().zip(&overs).enumerate() {
        println!(
            "joins and leaves: change {}: {} operations ok within the transition ({:.1} s)",
            i + 1,
            run.ok_between(*from, *to),
            (to - from) as f64 / 1e9
        );
    }
    run.assert_linearizable("joins and leaves", seed, 1000, 300);
    println!(
        "joins and leaves: {:.1} s in all (cluster start included)",
        started.elapsed().as_secs_f64()
    );
}

#[test]
fn the_checker_catches_a_weakened_protocol_on_real_processes() {
    let _serial = serial();
    let test = "the_checker_catches_a_weakened_protocol_on_real_processes";
    let mut flags = NODE_FLAGS.to_vec();
    flags.push("--fault-injection");
    let Some(cluster) = Cluster::start_netns(test, 3, &flags) else {
        return;
    };
    let started = Instant::now();
    let nodes = all(3);
    make_strong(&cluster, &nodes, b"weak");
    for i in 0..3 {
        cluster.inject(
            i,
            RequestFrame {
                fault: Some("weaken_strong".into()),
                on: Some(true),
                ..Default::default()
            },
        );
    }
    // n3 cut off, and seen so from both sides before the load starts: clients of n3 and
    // clients of n1, n2 then each get answers, from registers that split.
    cluster.partition(&[&[2], &[0, 1]]);
    cluster.wait_views(&[0, 1], &names(&cluster, &[2]), false, STEP);
    cluster.wait_views(&[2], &names(&cluster, &[0, 1]), false, STEP);
    let rt = runtime();
    let load = Load::start(
        &rt,
        cluster.addrs(),
        LoadConfig {
            bucket: b"weak".to_vec(),
            clients: 6,
            keys: 2,
            max_ops: 150,
            max_time: Duration::from_secs(20),
            seed: seed(),
        },
    );
    load.progress(&cluster, 300);
    let run = load.finish(&rt);
    cluster.heal();
    let report = run.check("weakened", seed());
    assert!(
        report.violation().is_some(),
        "the checker passed a weakened protocol with a node cut off: {report}"
    );
    println!(
        "weakened: {:.1} s in all (cluster start excluded)",
        started.elapsed().as_secs_f64()
    );
}
