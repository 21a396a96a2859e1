//! Test harness: real `ringkv` processes, one per node, on loopback.
//!
//! ractor's registry and pg are global to a process, so every node runs as its own process
//! (ARCHITECTURE.md). A [`NodeProcess`] owns its process and its temporary directory; dropping
//! it kills the process (SIGKILL) and removes the directory, so a failing test cleans up too.
//! Nothing here sleeps a fixed time: conditions are polled until a deadline.
//!
//! Faults, in the manner of raft-rs's `nt.cut(1, 3); nt.recover()`: [`NodeProcess::kill9`],
//! [`NodeProcess::wipe`] (kill -9 and an empty data directory), [`NodeProcess::signal`]
//! (SIGSTOP/SIGCONT), and, on nodes started with `--fault-injection`, [`Cluster::partition`] /
//! [`Cluster::heal`] (a drop rule inside each node's cluster layer) and
//! [`Cluster::panic_actor`]. [`Cluster::local_values`] reads one replica's own copy of a key.
//!
//! Real network faults: [`Cluster::start_netns`] runs each node in a network namespace of its
//! own ([`netns`]); there [`Cluster::partition`] / [`Cluster::heal`] set and lift iptables DROP
//! rules, so packets are lost as on a real network and TCP sessions stall.

pub mod churn;
pub mod fuzz;
pub mod linearizability;
pub mod netns;
pub mod workload;

pub mod large;
use netns::Netns;

use ringkv_api::protocol::{RequestFrame, ResponseFrame};
use ringkv_api::{CallOptions, Client};
use std::future::Future;
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Path of the `ringkv` binary: `$RINGKV_BIN`, or `ringkv` beside the test executable's
/// directory (`target/<profile>/ringkv`, which `cargo test --workspace` builds because the
/// `ringkv-api` package has integration tests).
pub fn ringkv_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("RINGKV_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("current_exe");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test binary lives in target/<profile>/deps");
    let bin = profile_dir.join("ringkv");
    assert!(
        bin.exists(),
        "{} does not exist: run the tests with `cargo test --workspace` (which builds it) or set RINGKV_BIN",
        bin.display()
    );
    bin
}

/// Root of the repository (for scripts such as the Python client test).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// Runs the Python script `tests/python/{script}` with `args` and asserts that it exits 0
/// and reports no failure (its last line is `N passed, 0 failed`). Returns its stdout.
pub fn run_python(script: &str, args: &[String]) -> String {
    let out = Command::new("python3")
        .arg(repo_root().join("tests/python").join(script))
        .args(args)
        .output()
        .expect("python3 runs (install the msgpack package: pip install msgpack)");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    println!("{stdout}");
    assert!(
        out.status.success(),
        "{script} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains(" passed, 0 failed"), "{stdout}");
    stdout
}

/// Polls `cond` until it returns `Some` or `timeout` passes; panics with `what` on timeout.
pub fn wait_until<T>(what: &str, timeout: Duration, mut cond: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(1);
    loop {
        if let Some(v) = cond() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

/// Reads one answer frame from a blocking socket; `None` when the server closed it (or the
/// socket's read timeout passed).
pub fn read_answer(s: &mut std::net::TcpStream) -> Option<ResponseFrame> {
    use std::io::Read;
    let mut len = [0u8; 4];
    s.read_exact(&mut len).ok()?;
    let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
    s.read_exact(&mut body).ok()?;
    Some(rmp_serde::from_slice(&body).expect("answer decodes"))
}

/// A free TCP port on `ip` (bound, read and released; the harness passes it on at once).
pub fn free_port(ip: &str) -> u16 {
    std::net::TcpListener::bind((ip, 0))
        .and_then(|l| l.local_addr())
        .expect("bind a free port")
        .port()
}

/// A `ringkv start` process with its own data directory.
pub struct NodeProcess {
    child: Option<Child>,
    dir: tempfile::TempDir,
    extra: Vec<String>,
    envs: Vec<(String, String)>,
    /// Network namespace the process runs in (`ip netns exec`), if not the test's own.
    netns: Option<String>,
    /// The client address the node printed.
    pub addr: SocketAddr,
    /// Environment of the client commands run by [`NodeProcess::cli`] (`RINGKV_TLS_CA` and
    /// the like, for a node that speaks TLS).
    pub cli_env: Vec<(String, String)>,
    /// The metrics address the node printed (`ringkv: metrics on http://ADDR/metrics`), if
    /// it was started with `--metrics-listen`.
    pub metrics_addr: Option<SocketAddr>,
}

impl NodeProcess {
    /// Starts a node on `127.0.0.1:0` with a fresh data directory and `extra` flags, and waits
    /// until it listens.
    pub fn start(extra: &[&str]) -> NodeProcess {
        Self::start_on("127.0.0.1", extra, &[])
    }

    /// Starts a node whose client listener is on `ip` (port 0), with `extra` flags and
    /// environment variables `envs`.
    pub fn start_on(ip: &str, extra: &[&str], envs: &[(&str, &str)]) -> NodeProcess {
        Self::start_in(None, ip, extra, envs)
    }

    /// As [`NodeProcess::start_on`], inside the network namespace `netns` if given (the
    /// process is `ip netns exec {netns} ringkv ...`, which execs `ringkv`, so the process id
    /// is the node's).
    pub fn start_in(
        netns: Option<&str>,
        ip: &str,
        extra: &[&str],
        envs: &[(&str, &str)],
    ) -> NodeProcess {
        let dir = tempfile::Builder::new()
            .prefix("ringkv-test-")
            .tempdir()
            .expect("temp dir");
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        let envs: Vec<(String, String)> = envs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let netns = netns.map(str::to_string);
        let (child, addr, metrics_addr) = Self::spawn(
            netns.as_deref(),
            dir.path(),
            &extra,
            &envs,
            &format!("{ip}:0"),
        );
        NodeProcess {
            child: Some(child),
            dir,
            extra,
            envs,
            netns,
            addr,
            cli_env: Vec::new(),
            metrics_addr,
        }
    }

    fn spawn(
        netns: Option<&str>,
        dir: &Path,
        extra: &[String],
        envs: &[(String, String)],
        listen: &str,
    ) -> (Child, SocketAddr, Option<SocketAddr>) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("node.log"))
            .expect("log file");
        let mut command = match netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(ringkv_bin());
                c
            }
            None => Command::new(ringkv_bin()),
        };
        let mut child = command
            .arg("start")
            .arg("--data-dir")
            .arg(dir.join("data"))
            .arg("--listen")
            .arg(listen)
            .args(extra)
            .env("RUST_LOG", "info")
            .envs(envs.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("spawn ringkv");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            // The metrics line, if any, comes before the client listener's.
            let mut metrics = None;
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(a) = line.strip_prefix("ringkv: metrics on http://") {
                    metrics = a.trim().trim_end_matches("/metrics").parse().ok();
                }
                if let Some(a) = line.strip_prefix("ringkv: listening on ") {
                    let _ = tx.send(a.trim().parse::<SocketAddr>().ok().map(|a| (a, metrics)));
                }
            }
        });
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(Some((addr, metrics))) => (child, addr, metrics),
            other => {
                let _ = child.kill();
                let _ = child.wait();
                let log = std::fs::read_to_string(dir.join("node.log")).unwrap_or_default();
                panic!("node did not start ({other:?}); its log:\n{log}");
            }
        }
    }

    /// Data directory of the node.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The node's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("node.log")).unwrap_or_default()
    }

    /// OS process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("node is running").id()
    }

    /// Sends `signal` to the node process.
    pub fn signal(&self, signal: i32) {
        let r = unsafe { libc::kill(self.pid() as i32, signal) };
        assert_eq!(r, 0, "kill({}, {signal}) failed", self.pid());
    }

    /// `kill -9`: no shutdown of any kind.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Sends SIGTERM and waits (up to `timeout`) for the process to exit; returns its status.
    pub fn terminate(&mut self, timeout: Duration) -> ExitStatus {
        self.signal(libc::SIGTERM);
        let mut child = self.child.take().expect("node is running");
        wait_until("the node to exit after SIGTERM", timeout, || {
            child.try_wait().expect("try_wait")
        })
    }

    /// Waits for the process to exit on its own; returns its status.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let mut child = self.child.take().expect("node is running");
        wait_until("the node to exit", timeout, || {
            child.try_wait().expect("try_wait")
        })
    }

    /// True while the process runs.
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => c.try_wait().expect("try_wait").is_none(),
            None => false,
        }
    }

    /// True unless the harness stopped the process ([`NodeProcess::kill9`],
    /// [`NodeProcess::wipe`], [`NodeProcess::terminate`], [`NodeProcess::wait_exit`]) and did
    /// not restart it. A paused (SIGSTOP) or crashed process still counts as started.
    pub fn is_started(&self) -> bool {
        self.child.is_some()
    }

    /// `kill -9`, then deletes everything in the data directory (a replaced disk): the next
    /// [`NodeProcess::restart`] brings the node back with the same name, flags and addresses
    /// and no data at all. The log is kept, with a marker line.
    pub fn wipe(&mut self) {
        self.kill9();
        let data = self.data_dir();
        if let Ok(entries) = std::fs::read_dir(&data) {
            for entry in entries {
                let path = entry.expect("read the data directory").path();
                let removed = if path.is_dir() {
                    std::fs::remove_dir_all(&path)
                } else {
                    std::fs::remove_file(&path)
                };
                removed.unwrap_or_else(|e| panic!("wipe {}: {e}", path.display()));
            }
        }
        self.mark_log("wiped the data directory");
    }

    /// Appends `--- harness: {what} ---` to the node's log, so that a log read after a
    /// failure shows where the test acted.
    fn mark_log(&self, what: &str) {
        if let Ok(mut log) = std::fs::OpenOptions::new()
            .append(true)
            .open(self.dir.path().join("node.log"))
        {
            let _ = writeln!(log, "--- harness: {what} ---");
        }
    }

    /// Starts the node again on the same data directory and the same address.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "restart a node that has stopped");
        self.mark_log("restart");
        let (child, addr, metrics_addr) = Self::spawn(
            self.netns.as_deref(),
            self.dir.path(),
            &self.extra,
            &self.envs,
            &self.addr.to_string(),
        );
        self.child = Some(child);
        self.addr = addr;
        self.metrics_addr = metrics_addr;
    }

    /// Runs a `ringkv` client command against this node; returns (status, stdout, stderr).
    pub fn cli(&self, args: &[&str], stdin: Option<&[u8]>) -> (i32, Vec<u8>, String) {
        use std::io::Write;
        let mut child = Command::new(ringkv_bin())
            .args(args)
            .arg("--addr")
            .arg(self.addr.to_string())
            .envs(self.cli_env.iter().map(|(k, v)| (k, v)))
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn ringkv client");
        if let Some(input) = stdin {
            child
                .stdin
                .take()
                .expect("stdin")
                .write_all(input)
                .expect("write stdin");
        }
        let out = child.wait_with_output().expect("client output");
        (
            out.status.code().unwrap_or(-1),
            out.stdout,
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Runs `fut` to completion on a runtime of its own (a current-thread one, made for this call).
/// For synchronous test code: calling it from inside a runtime panics.
pub fn block_on<F: Future>(fut: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
        .block_on(fut)
}

/// Time limit of one harness request ([`Cluster::request`] and the helpers built on it).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Pause between two polls of a cluster's status.
const POLL: Duration = Duration::from_millis(20);

/// The cookie of test clusters.
pub const TEST_COOKIE: &str = "ringkv-test-cookie";

/// Cluster port of every node in network-namespace mode (each node has its own namespace, so
/// they never collide).
const NETNS_CLUSTER_PORT: u16 = 7000;

/// A cluster of `ringkv` processes: node `i` (1-based, named `n{i}`) listens for clients and
/// for its peers on `127.0.0.{i}`, or, started with [`Cluster::start_netns`], on `10.77.0.{i}`
/// inside a network namespace of its own. Node 1 founds the cluster; the others join through
/// it.
pub struct Cluster {
    /// The nodes; `nodes[0]` is `n1`.
    pub nodes: Vec<NodeProcess>,
    /// Time from the layout commit until every node held the same state.
    pub convergence: Duration,
    /// The namespaces in network-namespace mode. Declared after `nodes`, so that the node
    /// processes are killed before their namespaces are deleted.
    net: Option<Netns>,
}

/// The flags of cluster node `n{i}`: its name, `cluster_addr`, zone `z{i}`, 200 ms heartbeats,
/// and `--join seed` unless it founds the cluster.
pub fn node_args(i: usize, cluster_addr: &str, seed: Option<&str>) -> Vec<String> {
    let mut args: Vec<String> = [
        "--name",
        &format!("n{i}"),
        "--cluster-addr",
        cluster_addr,
        "--zone",
        &format!("z{i}"),
        "--heartbeat-ms",
        "200",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    if let Some(seed) = seed {
        args.extend(["--join".to_string(), seed.to_string()]);
    }
    args
}

impl Cluster {
    /// Starts `size` nodes with `extra` flags each, waits until node 1 knows them all, commits
    /// the layout and waits until every node has it.
    pub fn start(size: usize, extra: &[&str]) -> Cluster {
        Self::start_with(size, extra, None)
    }

    /// As [`Cluster::start`], with every node in a network namespace of its own (see
    /// [`netns`]): [`Cluster::partition`] then drops packets with iptables. The calling thread
    /// moves into the cluster's hub namespace until the cluster is dropped, so call the
    /// harness from it, and build tokio runtimes after this returns.
    ///
    /// Where the machine cannot make namespaces (not root, no `ip` or `iptables`), prints
    /// `SKIP {test}: ...` naming what is missing and returns `None`, unless
    /// `RINGKV_REQUIRE_NETNS=1` ([`netns::REQUIRE_ENV`]), which makes that a panic.
    pub fn start_netns(test: &str, size: usize, extra: &[&str]) -> Option<Cluster> {
        match Netns::create(size) {
            Ok(net) => Some(Self::start_with(size, extra, Some(net))),
            Err(why) if std::env::var(netns::REQUIRE_ENV).as_deref() == Ok("1") => {
                panic!(
                    "{test}: cannot make network namespaces ({}=1): {why}",
                    netns::REQUIRE_ENV
                )
            }
            Err(why) => {
                println!(
                    "SKIP {test}: this test needs network namespaces (root, `ip` and `iptables`): {why}"
                );
                eprintln!("SKIP {test}: {why}");
                None
            }
        }
    }

    fn start_with(size: usize, extra: &[&str], net: Option<Netns>) -> Cluster {
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        Self::start_each(size, |_| extra.clone(), &[], net)
    }

    /// As [`Cluster::start`], with the flags `per_node(i)` for node `n{i}` (1-based), and
    /// `cli_env` as the environment of every client command the harness runs (see
    /// [`NodeProcess::cli_env`]).
    pub fn start_each(
        size: usize,
        per_node: impl Fn(usize) -> Vec<String>,
        cli_env: &[(String, String)],
        net: Option<Netns>,
    ) -> Cluster {
        let mut nodes: Vec<NodeProcess> = Vec::with_capacity(size);
        let mut seed = String::new();
        for i in 1..=size {
            let (ip, port) = match &net {
                Some(net) => (net.ip(i), NETNS_CLUSTER_PORT),
                None => {
                    let ip = format!("127.0.0.{i}");
                    let port = free_port(&ip);
                    (ip, port)
                }
            };
            let cluster_addr = format!("{ip}:{port}");
            let mut owned = node_args(i, &cluster_addr, (i > 1).then_some(seed.as_str()));
            owned.extend(per_node(i));
            let args: Vec<&str> = owned.iter().map(String::as_str).collect();
            let ns = net.as_ref().map(|n| n.node_ns(i));
            let mut node =
                NodeProcess::start_in(ns.as_deref(), &ip, &args, &[("RINGKV_COOKIE", TEST_COOKIE)]);
            node.cli_env = cli_env.to_vec();
            nodes.push(node);
            if i == 1 {
                seed = cluster_addr.clone();
            }
        }
        let mut cluster = Cluster {
            nodes,
            convergence: Duration::ZERO,
            net,
        };
        cluster.wait_members(0, size, Duration::from_secs(30));
        if size > 1 {
            // The founder committed a layout of itself; this one places the others.
            let (code, _, err) = cluster.nodes[0].cli(&["cluster", "commit"], None);
            assert_eq!(code, 0, "cluster commit failed: {err}");
        }
        cluster.convergence = cluster.wait_converged(Duration::from_secs(30));
        cluster
    }

    /// `cluster status --json` of node `i` (0-based).
    pub fn status(&self, i: usize) -> serde_json::Value {
        let (code, out, err) = self.nodes[i].cli(&["cluster", "status", "--json"], None);
        assert_eq!(code, 0, "cluster status failed: {err}");
        serde_json::from_slice(&out).expect("status is JSON")
    }

    /// Waits until node `i` knows `count` members.
    pub fn wait_members(&self, i: usize, count: usize, timeout: Duration) {
        let started = Instant::now();
        let mut last = serde_json::Value::Null;
        while started.elapsed() < timeout {
            last = self.status(i);
            if last["members"].as_array().map_or(0, |m| m.len()) == count {
                return;
            }
            std::thread::sleep(POLL);
        }
        self.fail(&format!(
            "node {} did not learn of {count} members in {timeout:?}; its status: {last}",
            i + 1
        ));
    }

    /// Panics with `what` and every node's log.
    pub fn fail(&self, what: &str) -> ! {
        let logs: Vec<String> = self
            .nodes
            .iter()
            .enumerate()
            .map(|(i, n)| format!("--- log of n{} ---\n{}", i + 1, n.log()))
            .collect();
        panic!("{what}\n{}", logs.join("\n"));
    }

    /// Waits until every running node reports the same cluster state digest, one live layout
    /// version (no transition under way), and every peer up; returns the time it took.
    pub fn wait_converged(&self, timeout: Duration) -> Duration {
        let started = Instant::now();
        let mut last = Vec::new();
        while started.elapsed() < timeout {
            last = (0..self.nodes.len())
                .map(|i| self.status(i))
                .collect::<Vec<_>>();
            let digest = &last[0]["digest"];
            let agree = last.iter().all(|s| {
                &s["digest"] == digest
                    && s["layout_version"].as_u64().unwrap_or(0) > 0
                    && s["live_versions"].as_array().map_or(0, |v| v.len()) == 1
                    && s["members"].as_array().is_some_and(|m| {
                        m.iter().all(|m| m["up"] == true && m["status"] == "active")
                    })
            });
            if agree {
                return started.elapsed();
            }
            std::thread::sleep(POLL);
        }
        let logs: Vec<String> = self.nodes.iter().map(|n| n.log()).collect();
        panic!(
            "the cluster did not converge in {timeout:?}; last statuses:\n{}\nlogs:\n{}",
            last.iter()
                .map(|s| s.to_string())
                .collect::<Vec<_>>()
                .join("\n"),
            logs.join("\n-----\n")
        );
    }

    /// Whether node `observer` (0-based) sees node `name` as up.
    pub fn sees_up(&self, observer: usize, name: &str) -> Option<bool> {
        self.status(observer)["members"]
            .as_array()?
            .iter()
            .find(|m| m["name"] == name)
            .and_then(|m| m["up"].as_bool())
    }

    /// As [`wait_until`], for conditions that can say why they do not hold yet: polls `cond`
    /// until it returns `Ok` or `timeout` passes; on timeout panics with `what`, the last `Err`
    /// reason and the last 40 lines of every node's log.
    pub fn wait_for<T>(
        &self,
        what: &str,
        timeout: Duration,
        mut cond: impl FnMut() -> Result<T, String>,
    ) -> T {
        let deadline = Instant::now() + timeout;
        let mut pause = Duration::from_millis(1);
        loop {
            let why = match cond() {
                Ok(v) => return v,
                Err(why) => why,
            };
            if Instant::now() >= deadline {
                panic!(
                    "timed out after {timeout:?} waiting for {what}; last: {why}\n{}",
                    self.log_tails(40)
                );
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(50));
        }
    }

    /// The last `lines` lines of every node's log, each under a header.
    pub fn log_tails(&self, lines: usize) -> String {
        self.nodes
            .iter()
            .enumerate()
            .map(|(i, n)| {
                let log = n.log();
                let all: Vec<&str> = log.lines().collect();
                let tail = all[all.len().saturating_sub(lines)..].join("\n");
                format!(
                    "--- last {lines} lines of the log of n{} ---\n{tail}",
                    i + 1
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Name of node `i` (0-based): `n{i+1}`.
    pub fn name(&self, i: usize) -> String {
        format!("n{}", i + 1)
    }

    /// Client addresses of the nodes, `addrs()[0]` being `n1`'s. They do not change across
    /// [`NodeProcess::restart`].
    pub fn addrs(&self) -> Vec<SocketAddr> {
        self.nodes.iter().map(|n| n.addr).collect()
    }

    /// Sends `frame` to node `i` (0-based) on a fresh connection and returns its answer, error
    /// answers included. `Err` says why no answer came: no connection, the connection closed,
    /// or nothing within `timeout` (a paused node, for one).
    pub fn request(
        &self,
        i: usize,
        frame: RequestFrame,
        timeout: Duration,
    ) -> Result<ResponseFrame, String> {
        let addr = self.nodes[i].addr;
        let node = self.name(i);
        block_on(async move {
            let answer = tokio::time::timeout(timeout, async {
                let client = Client::connect(addr).await.map_err(|e| e.to_string())?;
                client.request(frame).await.map_err(|e| e.to_string())
            })
            .await;
            match answer {
                Ok(Ok(a)) => Ok(a),
                Ok(Err(e)) => Err(format!("{node} ({addr}): {e}")),
                Err(_) => Err(format!("{node} ({addr}): no answer within {timeout:?}")),
            }
        })
    }

    /// Sends the `inject_fault` request `frame` (its `op` is set here) to node `i` and checks
    /// that the node accepted it (the node needs `--fault-injection`).
    pub fn inject(&self, i: usize, frame: RequestFrame) -> ResponseFrame {
        let frame = RequestFrame {
            op: "inject_fault".into(),
            ..frame
        };
        match self.request(i, frame.clone(), REQUEST_TIMEOUT) {
            Ok(a) if a.ok => a,
            other => self.fail(&format!(
                "inject_fault {frame:?} on {} failed: {other:?}",
                self.name(i)
            )),
        }
    }

    /// Makes `actor` of node `i` panic, so that its supervisor restarts it: one of `vnodes`
    /// (the vnode supervisor), `replica`, `gossip`, `handoff`, `repair`, `listener`. The
    /// listener may take the connection down before it answers; for it, that counts as done.
    pub fn panic_actor(&self, i: usize, actor: &str) {
        let frame = RequestFrame {
            op: "inject_fault".into(),
            fault: Some("panic_actor".into()),
            actor: Some(actor.into()),
            ..Default::default()
        };
        match self.request(i, frame, REQUEST_TIMEOUT) {
            Ok(a) if a.ok => {}
            Err(e) if actor == "listener" && e.contains("connection closed") => {}
            other => self.fail(&format!(
                "panic_actor {actor} on {} failed: {other:?}",
                self.name(i)
            )),
        }
    }

    /// Node `i` drops all cluster traffic to and from the nodes named `peers` from now on,
    /// replacing its previous drop set (`&[]` heals it). Only node `i` is told: to cut a link,
    /// tell both ends (or use [`Cluster::partition`]).
    pub fn isolate(&self, i: usize, peers: &[String]) {
        let frame = RequestFrame {
            op: "inject_fault".into(),
            fault: Some("isolate".into()),
            peers: Some(peers.to_vec()),
            ..Default::default()
        };
        match self.request(i, frame, REQUEST_TIMEOUT) {
            Ok(a) if a.ok => {}
            other => self.fail(&format!(
                "isolate {peers:?} on {} failed: {other:?}",
                self.name(i)
            )),
        }
    }

    /// True for a cluster made by [`Cluster::start_netns`].
    pub fn is_netns(&self) -> bool {
        self.net.is_some()
    }

    /// Cuts the cluster into `groups` of 0-based node indices, as raft-rs's `nt.cut`: every
    /// node listed drops the traffic of every node outside its own group. Nodes listed in no
    /// group are left alone. [`Cluster::heal`] undoes it.
    ///
    /// In a [`Cluster::start_netns`] cluster the drops are iptables rules in each listed
    /// node's namespace, which outlast a restart of the node. Otherwise they are the nodes'
    /// injected drop rule (`--fault-injection`): nodes the harness stopped are left alone, and
    /// a restarted node starts with no drop rule.
    pub fn partition(&self, groups: &[&[usize]]) {
        let listed: Vec<usize> = groups.iter().flat_map(|g| g.iter().copied()).collect();
        for (pos, i) in listed.iter().enumerate() {
            assert!(*i < self.nodes.len(), "node index {i} out of range");
            assert!(
                !listed[..pos].contains(i),
                "node index {i} is in two groups of {groups:?}"
            );
        }
        if let Some(net) = &self.net {
            for group in groups {
                let others: Vec<usize> = (1..=self.nodes.len())
                    .filter(|j| !group.contains(&(j - 1)))
                    .collect();
                for &i in group.iter() {
                    net.cut(i + 1, &others);
                }
            }
            return;
        }
        for group in groups {
            let others: Vec<String> = (0..self.nodes.len())
                .filter(|j| !group.contains(j))
                .map(|j| self.name(j))
                .collect();
            for &i in group.iter() {
                if self.nodes[i].is_started() {
                    self.isolate(i, &others);
                }
            }
        }
    }

    /// Lifts every drop rule: `isolate []` on every node the harness has not stopped (resume
    /// paused nodes with SIGCONT first: a paused node cannot answer), or in a
    /// [`Cluster::start_netns`] cluster, every node's iptables rules.
    pub fn heal(&self) {
        if let Some(net) = &self.net {
            for i in 1..=self.nodes.len() {
                net.cut(i, &[]);
            }
            return;
        }
        for i in 0..self.nodes.len() {
            if self.nodes[i].is_started() {
                self.isolate(i, &[]);
            }
        }
    }

    /// Node `i`'s own copy of `bucket/key` (a `get` with `local`): its live sibling values,
    /// empty if it holds none (hints it keeps for other nodes do not show).
    pub fn local_values(&self, i: usize, bucket: &[u8], key: &[u8]) -> Vec<Vec<u8>> {
        let addr = self.nodes[i].addr;
        let opts = CallOptions {
            local: true,
            ..Default::default()
        };
        let got = block_on(async move {
            tokio::time::timeout(REQUEST_TIMEOUT, async {
                Client::connect(addr)
                    .await?
                    .get_with(bucket, key, &opts)
                    .await
            })
            .await
        });
        match got {
            Ok(Ok(f)) => f.values,
            Ok(Err(e)) => self.fail(&format!("local get on {} failed: {e}", self.name(i))),
            Err(_) => self.fail(&format!(
                "local get on {} did not answer within {REQUEST_TIMEOUT:?}",
                self.name(i)
            )),
        }
    }

    /// The `cluster_status` answer of node `i` (the JSON `cluster status --json` prints), or
    /// `None` if it does not answer within `timeout` (stopped, paused, or restarting its
    /// listener).
    pub fn try_status(&self, i: usize, timeout: Duration) -> Option<serde_json::Value> {
        if !self.nodes[i].is_started() {
            return None;
        }
        let frame = RequestFrame {
            op: "cluster_status".into(),
            ..Default::default()
        };
        match self.request(i, frame, timeout) {
            Ok(a) if a.ok => a.info,
            _ => None,
        }
    }

    /// A counter of node `i`'s status: `status[group][field]`, e.g. `("hints", "pending")`,
    /// `("repair", "keys_repaired")`, `("restarts", "gossip")`. `None` if the node does not
    /// answer within [`REQUEST_TIMEOUT`]; panics if the status lacks the counter.
    pub fn counter(&self, i: usize, group: &str, field: &str) -> Option<u64> {
        let status = self.try_status(i, REQUEST_TIMEOUT)?;
        match status[group][field].as_u64() {
            Some(v) => Some(v),
            None => self.fail(&format!(
                "the status of {} has no counter {group}.{field}: {status}",
                self.name(i)
            )),
        }
    }

    /// The sum of a counter (see [`Cluster::counter`]) over the nodes that answer.
    pub fn counter_sum(&self, group: &str, field: &str) -> u64 {
        (0..self.nodes.len())
            .filter_map(|i| self.counter(i, group, field))
            .sum()
    }

    /// Waits until every node of `observers` (0-based) sees every node of `names` with
    /// `up`; returns the time it took. Fails the test, with log tails, after `timeout`.
    pub fn wait_views(
        &self,
        observers: &[usize],
        names: &[String],
        up: bool,
        timeout: Duration,
    ) -> Duration {
        let t = Instant::now();
        self.wait_for(
            &format!("{observers:?} (0-based) to see {names:?} up={up}"),
            timeout,
            || match observers.iter().find(|&&o| !self.sees_all(o, names, up)) {
                None => Ok(()),
                Some(o) => Err(format!("n{} does not yet", o + 1)),
            },
        );
        t.elapsed()
    }

    /// True if node `observer` answers and sees every member named in `names` with `up`
    /// equal to `up`.
    pub fn sees_all(&self, observer: usize, names: &[String], up: bool) -> bool {
        let Some(status) = self.try_status(observer, REQUEST_TIMEOUT) else {
            return false;
        };
        let Some(members) = status["members"].as_array() else {
            return false;
        };
        names.iter().all(|name| {
            members
                .iter()
                .any(|m| m["name"] == name.as_str() && m["up"].as_bool() == Some(up))
        })
    }
}

/// A 2-worker tokio runtime for a test's client calls.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("build a tokio runtime")
}

/// Call options with quorums `n`, `r`, `w` and a server-side time limit of 2 s.
pub fn quorum(n: u8, r: u8, w: u8) -> CallOptions {
    CallOptions {
        n: Some(n),
        r: Some(r),
        w: Some(w),
        timeout_ms: Some(2000),
        local: false,
        condition: None,
        ttl: None,
    }
}

/// Call options that read only the answering node's own copy of a key.
pub fn local_read() -> CallOptions {
    CallOptions {
        local: true,
        ..Default::default()
    }
}
