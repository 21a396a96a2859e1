//! Layout changes under load (`tests/transfer.rs`): nodes added to a running [`Cluster`], a
//! workload that writes and reads all the time and records every acknowledged write, and the
//! checks the membership issue asks of every change: no acknowledged write lost, no read that
//! missed a write acknowledged before it began, failed requests counted, every partition at
//! full replication at the end.

use crate::workload::{call, connect, for_each_concurrent, local_copies, Failure, OP_TIMEOUT};
use crate::{quorum as q, Cluster, NodeProcess, TEST_COOKIE};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::runtime::Runtime;

/// Requests recorded at most (about 40 bytes each).
const MAX_OPS: usize = 2_000_000;

/// The workload's bucket.
pub const BUCKET: &[u8] = b"churn";

/// Starts node `n{i}` (the next index) on `127.0.0.{i}` joining through node `via`'s
/// cluster address, with `extra` flags; returns its 0-based index. It stays `joining` until a
/// commit places it.
pub fn add_node(cluster: &mut Cluster, via: usize, extra: &[&str]) -> usize {
    let i = cluster.nodes.len() + 1;
    let seed = cluster.status(via)["members"]
        .as_array()
        .and_then(|m| {
            m.iter()
                .find(|m| m["name"] == cluster.name(via))
                .and_then(|m| m["cluster_addr"].as_str().map(str::to_string))
        })
        .expect("the seed's cluster address");
    let ip = format!("127.0.0.{i}");
    let cluster_addr = format!("{ip}:{}", crate::free_port(&ip));
    let owned = crate::node_args(i, &cluster_addr, Some(&seed));
    let mut args: Vec<&str> = owned.iter().map(String::as_str).collect();
    args.extend(extra);
    cluster.nodes.push(NodeProcess::start_on(
        &ip,
        &args,
        &[("RINGKV_COOKIE", TEST_COOKIE)],
    ));
    i - 1
}

/// Runs `ringkv cluster ARGS` on node `at`; panics with its stderr if it fails.
pub fn admin(cluster: &Cluster, at: usize, args: &[&str]) -> String {
    let mut all = vec!["cluster"];
    all.extend(args);
    let (code, out, err) = cluster.nodes[at].cli(&all, None);
    assert_eq!(code, 0, "cluster {args:?} on n{}: {err}", at + 1);
    String::from_utf8_lossy(&out).into_owned()
}

/// Waits until every node of `members` (0-based) reports the same single live layout
/// version, at least `version`, with `members` exactly the cluster's members (every other
/// node removed); returns the time it took.
pub fn wait_transition_done(
    cluster: &Cluster,
    members: &[usize],
    version: u64,
    timeout: Duration,
) -> Duration {
    let started = Instant::now();
    let mut want: Vec<String> = members.iter().map(|&i| cluster.name(i)).collect();
    want.sort();
    cluster.wait_for(
        &format!("the layout transition to v{version} to end on {want:?}"),
        timeout,
        || {
            let mut digest = None;
            for &i in members {
                let s = cluster
                    .try_status(i, Duration::from_secs(5))
                    .ok_or_else(|| format!("n{} did not answer", i + 1))?;
                let live = s["live_versions"].as_array().map_or(0, |v| v.len());
                let v = s["layout_version"].as_u64().unwrap_or(0);
                let mut names: Vec<String> = s["members"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|m| m["name"].as_str().map(str::to_string))
                    .collect();
                names.sort();
                if live != 1 || v < version || names != want {
                    return Err(format!(
                        "n{}: live versions {}, layout v{v}, members {names:?}",
                        i + 1,
                        s["live_versions"]
                    ));
                }
                match &digest {
                    None => digest = Some(s["digest"].clone()),
                    Some(d) if *d != s["digest"] => {
                        return Err(format!("n{} has another state digest", i + 1))
                    }
                    _ => {}
                }
            }
            Ok(())
        },
    );
    started.elapsed()
}

/// One request of the workload as it was measured.
#[derive(Clone, Copy, Debug)]
struct Op {
    at: Instant,
    latency: Duration,
    ok: bool,
}

/// What the workload saw, shared with its tasks.
#[derive(Default)]
struct Record {
    /// Acknowledged writes: key -> (value, when acknowledged).
    acked: Vec<(Vec<u8>, Vec<u8>, Instant)>,
    /// Reads that did not return a write acknowledged before the read began.
    missed: Vec<String>,
    /// Failed requests by error kind.
    failures: BTreeMap<String, u64>,
    ops: Vec<Op>,
}

/// Writers and readers running against a cluster at n=3, r=2, w=2 through random nodes until
/// stopped.
pub struct Churn {
    rt: Runtime,
    targets: Arc<Mutex<Vec<SocketAddr>>>,
    record: Arc<Mutex<Record>>,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// A summary of the workload over one phase.
#[derive(Clone, Debug)]
pub struct Phase {
    /// Requests per second (successful ones).
    pub ops_per_sec: f64,
    /// 99th percentile latency of successful requests, ms.
    pub p99_ms: f64,
    /// Failed requests.
    pub failed: u64,
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:.0} ops/s, p99 {:.1} ms, {} failed",
            self.ops_per_sec, self.p99_ms, self.failed
        )
    }
}

/// The end-of-scenario verdict.
#[derive(Debug)]
pub struct Verdict {
    /// Writes acknowledged during the run.
    pub acked: usize,
    /// Acknowledged writes not read back at the end.
    pub lost: Vec<String>,
    /// Reads that missed an earlier acknowledged write.
    pub missed: Vec<String>,
    /// Failed requests by kind.
    pub failures: BTreeMap<String, u64>,
}

impl Churn {
    /// Starts `writers` writers and `readers` readers against `targets`, with seed `seed`.
    pub fn start(targets: Vec<SocketAddr>, writers: usize, readers: usize, seed: u64) -> Churn {
        let rt = crate::runtime();
        let targets = Arc::new(Mutex::new(targets));
        let record = Arc::new(Mutex::new(Record::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let mut tasks = Vec::new();
        for w in 0..writers {
            let (targets, record, stop) = (targets.clone(), record.clone(), stop.clone());
            tasks.push(rt.spawn(async move {
                let mut rng = StdRng::seed_from_u64(seed ^ (w as u64 + 1));
                let mut seq = 0u64;
                let mut clients = Clients::default();
                while !stop.load(Ordering::Relaxed) {
                    let key = format!("w{w}-{seq}").into_bytes();
                    seq += 1;
                    let value: Vec<u8> = (0..64).map(|_| rng.gen()).collect();
                    let addr = pick(&targets, &mut rng);
                    let started = Instant::now();
                    let result = match clients.get(addr).await {
                        Ok(c) => call(c.put_with(BUCKET, &key, value.clone(), &[], &q(3, 2, 2)))
                            .await
                            .map(|_| ()),
                        Err(e) => Err(e),
                    };
                    clients.forget_on_no_answer(addr, &result);
                    note(&record, started, &result);
                    if result.is_ok() {
                        let mut r = record.lock().unwrap();
                        r.acked.push((key, value, Instant::now()));
                    }
                }
            }));
        }
        for rd in 0..readers {
            let (targets, record, stop) = (targets.clone(), record.clone(), stop.clone());
            tasks.push(rt.spawn(async move {
                let mut rng = StdRng::seed_from_u64(seed ^ (0x1000 + rd as u64));
                let mut clients = Clients::default();
                while !stop.load(Ordering::Relaxed) {
                    let pick_one = {
                        let r = record.lock().unwrap();
                        (!r.acked.is_empty())
                            .then(|| r.acked[rng.gen_range(0..r.acked.len())].clone())
                    };
                    let Some((key, value, _)) = pick_one else {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                        continue;
                    };
                    let addr = pick(&targets, &mut rng);
                    let started = Instant::now();
                    let result = match clients.get(addr).await {
                        Ok(c) => call(c.get_with(BUCKET, &key, &q(3, 2, 2))).await,
                        Err(e) => Err(e),
                    };
                    clients.forget_on_no_answer(addr, &result);
                    note(&record, started, &result);
                    if let Ok(f) = result {
                        if !f.values.contains(&value) {
                            record
                                .lock()
                                .unwrap()
                                .missed
                                .push(format!("{} via {addr}", String::from_utf8_lossy(&key)));
                        }
                    }
                }
            }));
        }
        Churn {
            rt,
            targets,
            record,
            stop,
            tasks,
        }
    }

    /// Replaces the nodes requests go to.
    pub fn set_targets(&self, targets: Vec<SocketAddr>) {
        *self.targets.lock().unwrap() = targets;
    }

    /// Writes acknowledged so far.
    pub fn acked(&self) -> usize {
        self.record.lock().unwrap().acked.len()
    }

    /// Successful throughput, p99 and failures of the requests that started in `[from, to)`.
    pub fn phase(&self, from: Instant, to: Instant) -> Phase {
        let r = self.record.lock().unwrap();
        let mut lat: Vec<Duration> = Vec::new();
        let mut failed = 0;
        for op in r.ops.iter().filter(|o| o.at >= from && o.at < to) {
            if op.ok {
                lat.push(op.latency);
            } else {
                failed += 1;
            }
        }
        lat.sort();
        let secs = to.saturating_duration_since(from).as_secs_f64().max(1e-3);
        Phase {
            ops_per_sec: lat.len() as f64 / secs,
            p99_ms: lat
                .get((lat.len() * 99 / 100).min(lat.len().saturating_sub(1)))
                .map_or(0.0, |d| d.as_secs_f64() * 1000.0),
            failed,
        }
    }

    /// Stops the workload and [checks](Churn::check) every acknowledged write.
    pub fn finish(
        mut self,
        check_via: SocketAddr,
        members: &[SocketAddr],
        sample: usize,
    ) -> (Verdict, usize) {
        self.stop.store(true, Ordering::Relaxed);
        let tasks = std::mem::take(&mut self.tasks);
        self.rt.block_on(async move {
            for t in tasks {
                let _ = tokio::time::timeout(OP_TIMEOUT * 2, t).await;
            }
        });
        self.check(check_via, members, sample)
    }

    /// Checks, while the workload runs on, every write acknowledged so far with an r=2 read
    /// through `check_via`, and for a sample of `sample` of them that exactly 3 of `members`
    /// hold a copy; returns the verdict and how many sampled keys were not at 3 copies.
    pub fn check(
        &self,
        check_via: SocketAddr,
        members: &[SocketAddr],
        sample: usize,
    ) -> (Verdict, usize) {
        let record = self.record.clone();
        let members = members.to_vec();
        self.rt.block_on(async move {
            let members = &members[..];
            let (acked, missed, failures) = {
                let r = record.lock().unwrap();
                let acked: Vec<(Vec<u8>, Vec<u8>)> = r
                    .acked
                    .iter()
                    .map(|(k, v, _)| (k.clone(), v.clone()))
                    .collect();
                (acked, r.missed.clone(), r.failures.clone())
            };
            let client = connect(check_via).await.expect("connect for the check");
            let all = Arc::new(acked.clone());
            let found = for_each_concurrent(all.len(), 64, move |i| {
                let (client, all) = (client.clone(), all.clone());
                async move {
                    let (k, v) = &all[i];
                    for _ in 0..3 {
                        if let Ok(f) = call(client.get_with(BUCKET, k, &q(3, 2, 2))).await {
                            return f.values.contains(v);
                        }
                    }
                    false
                }
            })
            .await;
            let lost: Vec<String> = acked
                .iter()
                .zip(found)
                .filter(|(_, f)| !f)
                .map(|((k, _), _)| String::from_utf8_lossy(k).into_owned())
                .collect();
            // Full replication: each sampled key held by exactly 3 members.
            let step = (acked.len() / sample.max(1)).max(1);
            let keys: Vec<Vec<u8>> = acked.iter().step_by(step).map(|(k, _)| k.clone()).collect();
            let copies = local_copies(members, BUCKET, Arc::new(keys.clone())).await;
            let mut under = 0;
            for (ki, (k, v)) in acked.iter().step_by(step).enumerate() {
                let holders = copies
                    .iter()
                    .filter(|node| node[ki].as_ref().is_some_and(|vals| vals.contains(v)))
                    .count();
                if holders != 3 {
                    under += 1;
                    eprintln!(
                        "{} held by {holders} members, not 3",
                        String::from_utf8_lossy(k)
                    );
                }
            }
            (
                Verdict {
                    acked: acked.len(),
                    lost,
                    missed,
                    failures,
                },
                under,
            )
        })
    }
}

/// One connection per node, made on first use and dropped when a request got no answer.
#[derive(Default)]
struct Clients(BTreeMap<SocketAddr, ringkv_api::Client>);

impl Clients {
    async fn get(&mut self, addr: SocketAddr) -> Result<ringkv_api::Client, Failure> {
        if let Some(c) = self.0.get(&addr) {
            return Ok(c.clone());
        }
        let c = connect(addr).await?;
        self.0.insert(addr, c.clone());
        Ok(c)
    }

    fn forget_on_no_answer<T>(&mut self, addr: SocketAddr, result: &Result<T, Failure>) {
        if matches!(result, Err(Failure::NoAnswer(_))) {
            self.0.remove(&addr);
        }
    }
}

fn pick(targets: &Mutex<Vec<SocketAddr>>, rng: &mut StdRng) -> SocketAddr {
    let t = targets.lock().unwrap();
    t[rng.gen_range(0..t.len())]
}

fn note<T>(record: &Mutex<Record>, started: Instant, result: &Result<T, Failure>) {
    let mut r = record.lock().unwrap();
    if r.ops.len() >= MAX_OPS {
        return;
    }
    r.ops.push(Op {
        at: started,
        latency: started.elapsed(),
        ok: result.is_ok(),
    });
    if let Err(e) = result {
        *r.failures.entry(e.kind()).or_insert(0) += 1;
    }
}

/// Writes `count` keys of `size` random bytes each into bucket `bulk` through `addr` (n=3,
/// w=2); returns them.
pub fn load_bulk(addr: SocketAddr, count: usize, size: usize) -> Arc<Vec<(Vec<u8>, Vec<u8>)>> {
    let mut rng = StdRng::seed_from_u64(count as u64);
    let data: Arc<Vec<(Vec<u8>, Vec<u8>)>> = Arc::new(
        (0..count)
            .map(|i| {
                let value: Vec<u8> = (0..size).map(|_| rng.gen()).collect();
                (format!("bulk-{i}").into_bytes(), value)
            })
            .collect(),
    );
    let rt = crate::runtime();
    let d = data.clone();
    let failed = rt.block_on(async move {
        let client = connect(addr).await.expect("connect to load");
        for_each_concurrent(d.len(), 32, move |i| {
            let (client, d) = (client.clone(), d.clone());
            async move {
                let (k, v) = &d[i];
                for _ in 0..5 {
                    if call(client.put_with(b"bulk", k, v.clone(), &[], &q(3, 2, 2)))
                        .await
                        .is_ok()
                    {
                        return false;
                    }
                }
                true
            }
        })
        .await
        .into_iter()
        .filter(|f| *f)
        .count()
    });
    assert_eq!(failed, 0, "bulk writes failed");
    data
}

/// Reads every key [`load_bulk`] wrote back through `addr` (r=2); panics naming the missing.
pub fn check_bulk(addr: SocketAddr, data: &Arc<Vec<(Vec<u8>, Vec<u8>)>>) {
    let rt = crate::runtime();
    let d = data.clone();
    let missing: Vec<usize> = rt.block_on(async move {
        let client = connect(addr).await.expect("connect to check");
        let found = for_each_concurrent(d.len(), 32, move |i| {
            let (client, d) = (client.clone(), d.clone());
            async move {
                let (k, v) = &d[i];
                for _ in 0..3 {
                    if let Ok(f) = call(client.get_with(b"bulk", k, &q(3, 2, 2))).await {
                        return f.values.contains(v);
                    }
                }
                false
            }
        })
        .await;
        found
            .into_iter()
            .enumerate()
            .filter(|(_, f)| !f)
            .map(|(i, _)| i)
            .collect()
    });
    assert!(missing.is_empty(), "bulk keys missing: {missing:?}");
}

/// The rows of `cluster transfers --json` (asked on node `at`) whose receiver is node `i`.
pub fn transfers_to(cluster: &Cluster, at: usize, i: usize) -> Vec<serde_json::Value> {
    let (code, out, _) = cluster.nodes[at].cli(&["cluster", "transfers", "--json"], None);
    if code != 0 {
        return Vec::new();
    }
    let info: serde_json::Value = serde_json::from_slice(&out).unwrap_or_default();
    info["transfers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| r["to"] == cluster.name(i))
        .cloned()
        .collect()
}

/// Bytes node `i` has received over its transfers (as it reports them).
pub fn transfer_bytes_sent(cluster: &Cluster, i: usize) -> u64 {
    transfers_to(cluster, i, i)
        .iter()
        .map(|r| r["bytes_sent"].as_u64().unwrap_or(0))
        .sum()
}

/// Bytes node `i`'s transfers had merged before it (or its Transfer actor) took them up again:
/// what a restart did not fetch again.
pub fn transfer_resumed_bytes(cluster: &Cluster, i: usize) -> u64 {
    transfers_to(cluster, i, i)
        .iter()
        .map(|r| r["resumed_bytes"].as_u64().unwrap_or(0))
        .sum()
}
