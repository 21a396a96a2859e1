//! Test harness: real `ringkv` processes, one per node, on loopback.
//!
//! ractor's registry and pg are global to a process, so every node runs as its own process
//! (ARCHITECTURE.md). A [`NodeProcess`] owns its process and its temporary directory; dropping
//! it kills the process (SIGKILL) and removes the directory, so a failing test cleans up too.
//! Nothing here sleeps a fixed time: conditions are polled until a deadline.

use std::io::{BufRead, BufReader};
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
    /// The client address the node printed.
    pub addr: SocketAddr,
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
        let dir = tempfile::Builder::new()
            .prefix("ringkv-test-")
            .tempdir()
            .expect("temp dir");
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        let envs: Vec<(String, String)> = envs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let (child, addr) = Self::spawn(dir.path(), &extra, &envs, &format!("{ip}:0"));
        NodeProcess {
            child: Some(child),
            dir,
            extra,
            envs,
            addr,
        }
    }

    fn spawn(
        dir: &Path,
        extra: &[String],
        envs: &[(String, String)],
        listen: &str,
    ) -> (Child, SocketAddr) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("node.log"))
            .expect("log file");
        let mut child = Command::new(ringkv_bin())
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
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(a) = line.strip_prefix("ringkv: listening on ") {
                    let _ = tx.send(a.trim().parse::<SocketAddr>().ok());
                }
            }
        });
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(Some(addr)) => (child, addr),
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

    /// Starts the node again on the same data directory and the same address.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "restart a node that has stopped");
        let (child, addr) = Self::spawn(
            self.dir.path(),
            &self.extra,
            &self.envs,
            &self.addr.to_string(),
        );
        self.child = Some(child);
        self.addr = addr;
    }

    /// Runs a `ringkv` client command against this node; returns (status, stdout, stderr).
    pub fn cli(&self, args: &[&str], stdin: Option<&[u8]>) -> (i32, Vec<u8>, String) {
        use std::io::Write;
        let mut child = Command::new(ringkv_bin())
            .args(args)
            .arg("--addr")
            .arg(self.addr.to_string())
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

/// Pause between two polls of a cluster's status.
const POLL: Duration = Duration::from_millis(20);

/// The cookie of test clusters.
pub const TEST_COOKIE: &str = "ringkv-test-cookie";

/// A cluster of `ringkv` processes: node `i` (1-based, named `n{i}`) listens for clients and
/// for its peers on `127.0.0.{i}`. Node 1 founds the cluster; the others join through it.
pub struct Cluster {
    /// The nodes; `nodes[0]` is `n1`.
    pub nodes: Vec<NodeProcess>,
    /// Time from the layout commit until every node held the same state.
    pub convergence: Duration,
}

impl Cluster {
    /// Starts `size` nodes with `extra` flags each, waits until node 1 knows them all, commits
    /// the layout and waits until every node has it.
    pub fn start(size: usize, extra: &[&str]) -> Cluster {
        let mut nodes: Vec<NodeProcess> = Vec::with_capacity(size);
        let mut seed = String::new();
        for i in 1..=size {
            let ip = format!("127.0.0.{i}");
            let cluster_addr = format!("{ip}:{}", free_port(&ip));
            let (name, zone) = (format!("n{i}"), format!("z{i}"));
            let mut args: Vec<&str> = vec![
                "--name",
                &name,
                "--cluster-addr",
                &cluster_addr,
                "--zone",
                &zone,
                "--heartbeat-ms",
                "200",
            ];
            if i > 1 {
                args.extend(["--join", seed.as_str()]);
            }
            args.extend(extra);
            nodes.push(NodeProcess::start_on(
                &ip,
                &args,
                &[("RINGKV_COOKIE", TEST_COOKIE)],
            ));
            if i == 1 {
                seed = cluster_addr.clone();
            }
        }
        let mut cluster = Cluster {
            nodes,
            convergence: Duration::ZERO,
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

    /// Waits until every running node reports the same cluster state digest, a layout, and
    /// every peer up; returns the time it took.
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
}
