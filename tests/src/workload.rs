//! Client workloads and checks shared by the fault tests (`healing.rs`, `netfaults.rs`):
//! time budgets, client calls with a time limit, each node's own copy of keys, and the seeded
//! random fault schedule under a read-modify-write set load ([`random_faults`]).

use crate::{local_read as local, quorum as q, runtime as rt, Cluster};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use ringkv_api::{Client, ClientError};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::runtime::Runtime;
use tokio::task::JoinHandle;

/// Client-side limit of one request: twice the server-side one ([`q`]), so that a paused node
/// cannot hold a client forever.
pub const OP_TIMEOUT: Duration = Duration::from_secs(4);

/// A scenario's overall time budget.
pub struct Deadline {
    end: Instant,
    total: Duration,
}

impl Deadline {
    /// A budget of `total` from now.
    pub fn new(total: Duration) -> Self {
        Deadline {
            end: Instant::now() + total,
            total,
        }
    }

    /// `limit`, or the time left if that is less. Panics once the budget is spent.
    pub fn at_most(&self, limit: Duration) -> Duration {
        let now = Instant::now();
        assert!(
            now < self.end,
            "the scenario overran its budget of {:?}",
            self.total
        );
        (self.end - now).min(limit)
    }
}

/// Why a request did not succeed.
#[derive(Clone, Debug)]
pub enum Failure {
    /// The server answered with an error.
    Server { code: String, message: String },
    /// No answer: no connection, the connection closed, or nothing within [`OP_TIMEOUT`].
    NoAnswer(String),
}

impl Failure {
    /// A short label for counting failures by kind.
    pub fn kind(&self) -> String {
        match self {
            Failure::Server { code, .. } => code.clone(),
            Failure::NoAnswer(why) => why.clone(),
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Server { code, message } => write!(f, "{code}: {message}"),
            Failure::NoAnswer(why) => write!(f, "no answer: {why}"),
        }
    }
}

/// Awaits a client call, at most [`OP_TIMEOUT`].
pub async fn call<T>(fut: impl Future<Output = Result<T, ClientError>>) -> Result<T, Failure> {
    match tokio::time::timeout(OP_TIMEOUT, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(ClientError::Server { code, message })) => Err(Failure::Server { code, message }),
        Ok(Err(e)) => Err(Failure::NoAnswer(e.to_string())),
        Err(_) => Err(Failure::NoAnswer(format!("nothing within {OP_TIMEOUT:?}"))),
    }
}

/// Connects to `addr`, at most [`OP_TIMEOUT`].
pub async fn connect(addr: SocketAddr) -> Result<Client, Failure> {
    call(Client::connect(addr)).await
}

/// Runs `f(i)` for every `i` in `0..count`, at most `limit` at a time; the results in order.
pub async fn for_each_concurrent<T, F, Fut>(count: usize, limit: usize, f: F) -> Vec<T>
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    let f = Arc::new(f);
    let next = Arc::new(AtomicUsize::new(0));
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..limit.min(count) {
        let (f, next) = (f.clone(), next.clone());
        workers.spawn(async move {
            let mut done = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= count {
                    return done;
                }
                done.push((i, f(i).await));
            }
        });
    }
    let mut all: Vec<Option<T>> = (0..count).map(|_| None).collect();
    while let Some(done) = workers.join_next().await {
        for (i, t) in done.expect("worker task") {
            all[i] = Some(t);
        }
    }
    all.into_iter()
        .map(|t| t.expect("every index ran"))
        .collect()
}

/// Each node's own copy of each key: `copies[node][key]` is its sibling values (sorted;
/// empty: it holds none), or `None` where the node did not answer.
pub type Copies = Vec<Vec<Option<Vec<Vec<u8>>>>>;

/// Reads every key of `bucket` with `local` on every node of `addrs`.
pub async fn local_copies(addrs: &[SocketAddr], bucket: &[u8], keys: Arc<Vec<Vec<u8>>>) -> Copies {
    let mut copies = Vec::with_capacity(addrs.len());
    for &addr in addrs {
        let Ok(client) = connect(addr).await else {
            copies.push(vec![None; keys.len()]);
            continue;
        };
        let (bucket, keys) = (bucket.to_vec(), keys.clone());
        copies.push(
            for_each_concurrent(keys.len(), 64, move |i| {
                let (client, bucket, keys) = (client.clone(), bucket.clone(), keys.clone());
                async move {
                    let mut values = call(client.get_with(&bucket, &keys[i], &local()))
                        .await
                        .ok()?
                        .values;
                    values.sort();
                    Some(values)
                }
            })
            .await,
        );
    }
    copies
}

/// Hints pending on every node of `nodes`, or why that is unknown.
pub fn pending_hints(cluster: &Cluster, nodes: std::ops::Range<usize>) -> Result<Vec<u64>, String> {
    nodes
        .map(|i| {
            cluster
                .counter(i, "hints", "pending")
                .ok_or_else(|| format!("n{} did not answer its status", i + 1))
        })
        .collect()
}

/// The names (`n{i+1}`) of the 0-based node indices `nodes`.
pub fn names(cluster: &Cluster, nodes: &[usize]) -> Vec<String> {
    nodes.iter().map(|&i| cluster.name(i)).collect()
}

/// Set keys of the random-fault scenario.
const SET_KEYS: usize = 20;
/// Of which this many are deleted in the middle of the run.
const DELETED_KEYS: usize = 3;
const SETS: &[u8] = b"sets";

fn set_key(k: usize) -> Vec<u8> {
    format!("set-{k:02}").into_bytes()
}

/// The union of the elements of every sibling (a set is newline-separated elements).
fn elements(values: &[Vec<u8>]) -> BTreeSet<String> {
    values
        .iter()
        .flat_map(|v| {
            String::from_utf8_lossy(v)
                .into_owned()
                .lines()
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .filter(|e| !e.is_empty())
        .collect()
}

fn encode_set(set: &BTreeSet<String>) -> Vec<u8> {
    set.iter()
        .cloned()
        .collect::<Vec<_>>()
        .join("\n")
        .into_bytes()
}

/// Which keys clients may use, and how many operations each has in flight.
#[derive(Default)]
struct KeyTable {
    retired: BTreeSet<usize>,
    in_flight: [usize; SET_KEYS],
}

/// What the client tasks of the random-fault scenario share.
#[derive(Default)]
struct SetLoad {
    stop: AtomicBool,
    keys: Mutex<KeyTable>,
    /// (key, element) of every acknowledged put.
    acked: Mutex<Vec<(usize, String)>>,
    attempted: AtomicU64,
    failures: Mutex<BTreeMap<String, u64>>,
}

impl SetLoad {
    /// Claims key `k` for one operation, unless it is retired.
    fn begin(&self, k: usize) -> bool {
        let mut t = self.keys.lock().unwrap();
        if t.retired.contains(&k) {
            return false;
        }
        t.in_flight[k] += 1;
        true
    }

    fn end(&self, k: usize) {
        self.keys.lock().unwrap().in_flight[k] -= 1;
    }

    /// No operation on `keys` starts from now on.
    fn retire(&self, keys: &[usize]) {
        self.keys.lock().unwrap().retired.extend(keys);
    }

    /// Operations in flight on `keys`.
    fn busy(&self, keys: &[usize]) -> usize {
        let t = self.keys.lock().unwrap();
        keys.iter().map(|&k| t.in_flight[k]).sum()
    }

    fn failed(&self, kind: String) {
        *self.failures.lock().unwrap().entry(kind).or_default() += 1;
    }
}

/// Read, add one element to the union of the siblings, write back with the read's context.
async fn add_element(c: &Client, k: usize, element: &str) -> Result<(), Failure> {
    let key = set_key(k);
    let got = call(c.get_with(SETS, &key, &q(3, 2, 2))).await?;
    let mut set = elements(&got.values);
    set.insert(element.to_owned());
    call(c.put_with(SETS, &key, encode_set(&set), &got.context, &q(3, 2, 2))).await
}

/// One client: adds unique elements `c{task}-{seq}` to random live set keys until told to
/// stop, through node `task` first and through the next node whenever its node stops
/// answering.
async fn set_client(task: usize, addrs: Vec<SocketAddr>, load: Arc<SetLoad>, seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed.wrapping_add(task as u64 + 1));
    let mut node = task % addrs.len();
    let mut client: Option<Client> = None;
    let mut seq = 0u64;
    while !load.stop.load(Ordering::SeqCst) {
        let c = match &client {
            Some(c) => c.clone(),
            None => match connect(addrs[node]).await {
                Ok(c) => {
                    client = Some(c.clone());
                    c
                }
                Err(e) => {
                    load.failed(format!("connect: {}", e.kind()));
                    node = (node + 1) % addrs.len();
                    // Client backoff, not a wait for a condition: a refused connect returns at
                    // once, and the load must not spin while every node refuses.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
        };
        let k = rng.gen_range(0..SET_KEYS);
        if !load.begin(k) {
            continue;
        }
        let element = format!("c{task}-{seq}");
        seq += 1;
        load.attempted.fetch_add(1, Ordering::SeqCst);
        let outcome = add_element(&c, k, &element).await;
        load.end(k);
        match outcome {
            Ok(()) => load.acked.lock().unwrap().push((k, element)),
            Err(f @ Failure::Server { .. }) => {
                load.failed(f.kind());
                // Client backoff after an error answer (e.g. quorum_failed during a fault).
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Err(f @ Failure::NoAnswer(_)) => {
                load.failed(f.kind());
                client = None;
                node = (node + 1) % addrs.len();
            }
        }
    }
}

/// Lets a fault last `d`, failing early if a client task ended (it panicked).
fn hold(d: Duration, clients: &[JoinHandle<()>]) {
    let until = Instant::now() + d;
    while let Some(left) = until.checked_duration_since(Instant::now()) {
        assert!(
            clients.iter().all(|c| !c.is_finished()),
            "a client task ended during the run"
        );
        std::thread::sleep(left.min(Duration::from_millis(50)));
    }
}

/// Deletes `DELETED_KEYS` random set keys, cleanly: clients stop using them, their operations
/// in flight finish, every node sees every node up and no hint is pending anywhere; then a
/// read with r=3 sees every version of the key, and the delete (w=2) covers them all.
fn delete_sets(
    cluster: &Cluster,
    rt: &Runtime,
    load: &SetLoad,
    rng: &mut StdRng,
    dl: &Deadline,
) -> Vec<usize> {
    let mut keys: Vec<usize> = (0..SET_KEYS).collect();
    keys.shuffle(rng);
    keys.truncate(DELETED_KEYS);
    keys.sort_unstable();
    load.retire(&keys);
    cluster.wait_for(
        "the operations in flight on the keys to delete to finish",
        dl.at_most(Duration::from_secs(15)),
        || match load.busy(&keys) {
            0 => Ok(()),
            n => Err(format!("{n} in flight")),
        },
    );
    let all: Vec<String> = (0..cluster.nodes.len()).map(|i| cluster.name(i)).collect();
    cluster.wait_for(
        "every node up in every view and no hint pending, before the deletes",
        dl.at_most(Duration::from_secs(30)),
        || {
            if let Some(i) = (0..all.len()).find(|&i| !cluster.sees_all(i, &all, true)) {
                return Err(format!("n{} does not see every node up", i + 1));
            }
            match pending_hints(cluster, 0..all.len())? {
                p if p.iter().all(|&n| n == 0) => Ok(()),
                p => Err(format!("hints pending per node: {p:?}")),
            }
        },
    );
    let addr = cluster.nodes[0].addr;
    for &k in &keys {
        let had = cluster.wait_for(
            &format!("set-{k:02} to be deleted"),
            dl.at_most(Duration::from_secs(20)),
            || {
                rt.block_on(async {
                    let c = connect(addr).await?;
                    let got = call(c.get_with(SETS, &set_key(k), &q(3, 3, 2))).await?;
                    call(c.delete_with(SETS, &set_key(k), &got.context, &q(3, 2, 2))).await?;
                    Ok::<_, Failure>(elements(&got.values).len())
                })
                .map_err(|e| e.to_string())
            },
        );
        println!("  deleted set-{k:02} ({had} elements) with the context of an r=3 read");
    }
    keys
}

/// The seed of a random fault schedule: `RINGKV_TEST_SEED`, else the clock. Printed by
/// [`random_faults`], so that a failed run can be replayed.
pub fn test_seed() -> u64 {
    match std::env::var("RINGKV_TEST_SEED") {
        Ok(s) => s.parse().expect("RINGKV_TEST_SEED is a u64"),
        Err(_) => SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64,
    }
}

/// A seeded schedule of faults on `cluster` (5 nodes, started with `--fault-injection`
/// unless it is a network-namespace cluster) for about `run`: kill -9 and restart, SIGSTOP
/// and SIGCONT, partitions ([`Cluster::partition`]: injected drop rules, or iptables in a
/// [`Cluster::start_netns`] cluster) and heal, one at a time, each lasting 2 to 6 s.
/// Meanwhile 4 clients add unique elements to 20 set keys by read-modify-write (get, union
/// the siblings, add, put with the context, w=2), and 3 keys are deleted midway. At the end,
/// with every fault undone, the copies must converge, every acknowledged element must be in
/// its set (read with r=3), and the deleted keys must read empty. Every wait is bounded by
/// `dl`.
///
/// # Panics
/// On any of those failures, naming the seed.
pub fn random_faults(cluster: &mut Cluster, seed: u64, run: Duration, dl: &Deadline) {
    println!("random faults: seed {seed} (rerun with RINGKV_TEST_SEED={seed})");
    let size = cluster.nodes.len();
    let rt = rt();
    let load = Arc::new(SetLoad::default());
    let addrs = cluster.addrs();
    let clients: Vec<JoinHandle<()>> = (0..4)
        .map(|task| rt.spawn(set_client(task, addrs.clone(), load.clone(), seed)))
        .collect();

    let mut rng = StdRng::seed_from_u64(seed);
    // Which keys get deleted comes from a generator of its own, so that the fault schedule
    // of a seed does not depend on when the deletes happen.
    let mut delete_rng = StdRng::seed_from_u64(seed ^ 0x5EED_DE1E7E);
    let mut faults: BTreeMap<&str, u32> = BTreeMap::new();
    let mut deleted: Vec<usize> = Vec::new();
    let began = Instant::now();
    while began.elapsed() < run {
        if deleted.is_empty() && began.elapsed() >= run * 2 / 5 {
            println!(
                "  t={:5.1}s deleting {DELETED_KEYS} keys",
                began.elapsed().as_secs_f64()
            );
            deleted = delete_sets(cluster, &rt, &load, &mut delete_rng, dl);
            continue;
        }
        let lasts = Duration::from_millis(rng.gen_range(2000..=6000));
        let i = rng.gen_range(0..size);
        let at = began.elapsed().as_secs_f64();
        let what = match rng.gen_range(0..3) {
            0 => {
                cluster.nodes[i].kill9();
                hold(lasts, &clients);
                cluster.nodes[i].restart();
                *faults.entry("kill -9 + restart").or_default() += 1;
                format!("kill -9 n{}, restarted after {lasts:?}", i + 1)
            }
            1 => {
                cluster.nodes[i].signal(libc::SIGSTOP);
                hold(lasts, &clients);
                cluster.nodes[i].signal(libc::SIGCONT);
                *faults.entry("SIGSTOP/SIGCONT").or_default() += 1;
                format!("SIGSTOP n{}, SIGCONT after {lasts:?}", i + 1)
            }
            _ => {
                let mut order: Vec<usize> = (0..size).collect();
                order.shuffle(&mut rng);
                let cut = rng.gen_range(1..=2);
                let (minority, majority) = order.split_at(cut);
                cluster.partition(&[minority, majority]);
                hold(lasts, &clients);
                cluster.heal();
                *faults.entry("partition + heal").or_default() += 1;
                format!(
                    "partition {:?} | {:?}, healed after {lasts:?}",
                    names(cluster, minority),
                    names(cluster, majority)
                )
            }
        };
        println!("  t={at:5.1}s {what}");
        hold(Duration::from_millis(rng.gen_range(500..=1500)), &clients);
    }
    if deleted.is_empty() {
        deleted = delete_sets(cluster, &rt, &load, &mut delete_rng, dl);
    }
    let ran = began.elapsed();

    load.stop.store(true, Ordering::SeqCst);
    rt.block_on(async {
        for c in clients {
            tokio::time::timeout(Duration::from_secs(20), c)
                .await
                .expect("a client task did not stop within 20 s")
                .expect("a client task panicked");
        }
    });
    let crashed: Vec<usize> = (0..size)
        .filter(|&i| !cluster.nodes[i].is_running())
        .collect();
    if !crashed.is_empty() {
        cluster.fail(&format!(
            "nodes {:?} exited on their own during the run (seed {seed})",
            names(cluster, &crashed)
        ));
    }
    for node in &cluster.nodes {
        node.signal(libc::SIGCONT);
    }
    cluster.heal();
    let healed = Instant::now();

    let keys: Arc<Vec<Vec<u8>>> = Arc::new((0..SET_KEYS).map(set_key).collect());
    cluster.wait_for(
        "the set keys to converge",
        dl.at_most(Duration::from_secs(90)),
        || {
            match pending_hints(cluster, 0..size)? {
                p if p.iter().all(|&n| n == 0) => {}
                p => return Err(format!("hints pending per node: {p:?}")),
            }
            let copies = rt.block_on(local_copies(&addrs, SETS, keys.clone()));
            for k in 0..SET_KEYS {
                let mut sets = Vec::with_capacity(size);
                for (i, node) in copies.iter().enumerate() {
                    match &node[k] {
                        Some(values) => sets.push(elements(values)),
                        None => return Err(format!("n{} did not answer a local read", i + 1)),
                    }
                }
                if deleted.contains(&k) {
                    if let Some(i) = sets.iter().position(|s| !s.is_empty()) {
                        return Err(format!(
                            "deleted set-{k:02} has {} elements on n{}",
                            sets[i].len(),
                            i + 1
                        ));
                    }
                    continue;
                }
                let union: BTreeSet<String> = sets.iter().flatten().cloned().collect();
                let agree = sets.iter().filter(|s| **s == union).count();
                if agree < 3 {
                    return Err(format!(
                        "set-{k:02}: {agree} nodes hold all {} elements (per node: {:?})",
                        union.len(),
                        sets.iter().map(BTreeSet::len).collect::<Vec<_>>()
                    ));
                }
            }
            Ok(())
        },
    );
    let converged = healed.elapsed();

    let finals: Vec<BTreeSet<String>> = (0..SET_KEYS)
        .map(|k| {
            cluster.wait_for(
                &format!("a read of set-{k:02} with r=3"),
                dl.at_most(Duration::from_secs(30)),
                || {
                    rt.block_on(async {
                        let c = connect(addrs[k % size]).await?;
                        call(c.get_with(SETS, &set_key(k), &q(3, 3, 2))).await
                    })
                    .map(|got| elements(&got.values))
                    .map_err(|e| e.to_string())
                },
            )
        })
        .collect();
    let acked = load.acked.lock().unwrap().clone();
    let lost: Vec<&(usize, String)> = acked
        .iter()
        .filter(|(k, e)| !deleted.contains(k) && !finals[*k].contains(e))
        .collect();
    let resurrected: Vec<String> = deleted
        .iter()
        .filter(|&&k| !finals[k].is_empty())
        .map(|&k| format!("set-{k:02} ({} elements)", finals[k].len()))
        .collect();
    let attempted = load.attempted.load(Ordering::SeqCst);
    println!(
        "  seed {seed}: {:.1} s of faults {faults:?}; {attempted} operations attempted, {} \
         acknowledged ({:.0}/s); failures by kind {:?}; deleted {:?}; converged {:.2} s after \
         the heal; lost {}",
        ran.as_secs_f64(),
        acked.len(),
        acked.len() as f64 / ran.as_secs_f64(),
        load.failures.lock().unwrap(),
        deleted
            .iter()
            .map(|&k| format!("set-{k:02}"))
            .collect::<Vec<_>>(),
        converged.as_secs_f64(),
        lost.len()
    );
    assert!(
        lost.is_empty(),
        "seed {seed}: {} acknowledged elements lost, e.g. {:?}",
        lost.len(),
        &lost[..lost.len().min(10)]
    );
    assert!(
        resurrected.is_empty(),
        "seed {seed}: deleted keys came back: {resurrected:?}"
    );
    assert!(
        acked.len() >= 50,
        "seed {seed}: only {} operations were acknowledged in {ran:?}",
        acked.len()
    );
}
