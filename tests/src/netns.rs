//! Real network faults: one Linux network namespace per node, partitions made of iptables
//! DROP rules.
//!
//! A [`Netns`] makes, for one cluster of `size` nodes:
//! * a hub namespace `ringkv-{pid}-{seq}-hub` holding a bridge `br0` with [`HUB_IP`];
//! * per node `i` (1-based) a namespace `ringkv-{pid}-{seq}-n{i}` whose `eth0` (one end of a
//!   veth pair; the other end, `v{i}`, is a port of the bridge) has `10.77.0.{i}/24`.
//!
//! Every address lives inside these namespaces: nothing is added to the namespace the test
//! runs in, and nodes only ever talk to addresses on the bridge. The names carry the test
//! process's id and a counter, so parallel runs (and parallel tests) never share one; the
//! addresses may repeat, since each cluster has its own bridge.
//!
//! The test reaches the nodes' client ports from the hub: [`Netns::create`] moves the
//! *calling thread* into the hub namespace (`setns(2)`), so the harness's requests, the
//! `ringkv` CLI processes it spawns and the threads it starts (tokio runtimes built after the
//! cluster started) all connect from [`HUB_IP`]. Dropping the [`Netns`] moves the thread
//! back, then deletes the namespaces, which takes the veths, the bridge and the iptables rules
//! with them. The node processes must be gone by then ([`crate::Cluster`] drops its nodes
//! first).
//!
//! A cut ([`Netns::cut`]) is a pair of rules in the node's own namespace, `INPUT -s peer -j
//! DROP` and `OUTPUT -d peer -j DROP`, set on both ends of each link: packets are lost, not
//! refused, as with a pulled cable, so TCP sessions stall instead of closing. Traffic between
//! a node and the hub (client requests) is never cut.

use std::os::fd::{AsRawFd, OwnedFd};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

/// Address of the bridge in the hub namespace: the test's client calls come from it.
pub const HUB_IP: &str = "10.77.0.254";

/// Set to `1` to make a machine that cannot run the network-namespace tests fail them instead
/// of skipping them (CI sets it: it runs as root).
pub const REQUIRE_ENV: &str = "RINGKV_REQUIRE_NETNS";

static SEQ: AtomicU32 = AtomicU32::new(0);

/// The namespaces, veths and bridge of one test cluster; see the module docs.
pub struct Netns {
    prefix: String,
    size: usize,
    /// The calling thread's namespace before [`Netns::create`] moved it to the hub.
    original: Option<OwnedFd>,
}

/// Runs `program args`, returning its stderr (or why it did not start) on failure.
fn run(program: &str, args: &[&str]) -> Result<(), String> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("`{program}` cannot run: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`{program} {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Moves the calling thread into the network namespace open at `fd`.
fn enter(fd: &OwnedFd) -> Result<(), String> {
    // SAFETY: setns only changes the calling thread's namespace; `fd` is open.
    let r = unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) };
    if r == 0 {
        Ok(())
    } else {
        Err(format!("setns: {}", std::io::Error::last_os_error()))
    }
}

fn open(path: &str) -> Result<OwnedFd, String> {
    std::fs::File::open(path)
        .map(OwnedFd::from)
        .map_err(|e| format!("open {path}: {e}"))
}

impl Netns {
    /// Why this machine cannot run the network-namespace tests, or `Ok`: they need root
    /// (`CAP_NET_ADMIN` and `CAP_SYS_ADMIN`), `ip` (iproute2) and `iptables`.
    pub fn check() -> Result<(), String> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err("not running as root (ip netns and iptables need it)".into());
        }
        run("ip", &["-V"]).map_err(|e| format!("no `ip` (install iproute2): {e}"))?;
        run("iptables", &["-V"]).map_err(|e| format!("no `iptables` (install iptables): {e}"))
    }

    /// Makes the namespaces of a `size`-node cluster (see the module docs) and moves the
    /// calling thread into the hub. On error everything made so far is removed again.
    ///
    /// # Errors
    /// What [`Netns::check`] reports, or the first `ip` command that failed (for example no
    /// permission to make a namespace inside a container).
    pub fn create(size: usize) -> Result<Netns, String> {
        assert!((1..254).contains(&size), "1 to 253 nodes");
        Self::check()?;
        Self::sweep();
        let prefix = format!(
            "ringkv-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let mut net = Netns {
            prefix,
            size,
            original: None,
        };
        net.build()?;
        let original = open("/proc/thread-self/ns/net")?;
        enter(&open(&format!("/run/netns/{}", net.hub()))?)?;
        net.original = Some(original);
        Ok(net)
    }

    fn build(&mut self) -> Result<(), String> {
        let hub = self.hub();
        run("ip", &["netns", "add", &hub])?;
        run("ip", &["-n", &hub, "link", "set", "lo", "up"])?;
        run("ip", &["-n", &hub, "link", "add", "br0", "type", "bridge"])?;
        run(
            "ip",
            &[
                "-n",
                &hub,
                "addr",
                "add",
                &format!("{HUB_IP}/24"),
                "dev",
                "br0",
            ],
        )?;
        run("ip", &["-n", &hub, "link", "set", "br0", "up"])?;
        for i in 1..=self.size {
            let ns = self.node_ns(i);
            let port = format!("v{i}");
            run("ip", &["netns", "add", &ns])?;
            run("ip", &["-n", &ns, "link", "set", "lo", "up"])?;
            run(
                "ip",
                &[
                    "-n", &hub, "link", "add", &port, "type", "veth", "peer", "name", "eth0",
                    "netns", &ns,
                ],
            )?;
            run("ip", &["-n", &hub, "link", "set", &port, "master", "br0"])?;
            run("ip", &["-n", &hub, "link", "set", &port, "up"])?;
            let addr = format!("{}/24", self.ip(i));
            run("ip", &["-n", &ns, "addr", "add", &addr, "dev", "eth0"])?;
            run("ip", &["-n", &ns, "link", "set", "eth0", "up"])?;
        }
        Ok(())
    }

    /// Deletes the namespaces left by test processes that no longer run (killed before their
    /// `Drop` ran). Only names of this harness's pattern, `ringkv-{pid}-...`, are touched.
    fn sweep() {
        let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
            return;
        };
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let name = line.split_whitespace().next().unwrap_or("");
            let Some(pid) = name
                .strip_prefix("ringkv-")
                .and_then(|rest| rest.split('-').next())
                .and_then(|pid| pid.parse::<u32>().ok())
            else {
                continue;
            };
            if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
                let _ = run("ip", &["netns", "del", name]);
            }
        }
    }

    /// Name of the hub namespace.
    pub fn hub(&self) -> String {
        format!("{}-hub", self.prefix)
    }

    /// Name of node `i`'s namespace (1-based).
    pub fn node_ns(&self, i: usize) -> String {
        format!("{}-n{i}", self.prefix)
    }

    /// Address of node `i` (1-based): `10.77.0.{i}`.
    pub fn ip(&self, i: usize) -> String {
        format!("10.77.0.{i}")
    }

    /// Runs `iptables -w args` inside node `i`'s namespace (1-based).
    fn iptables(&self, i: usize, args: &[&str]) -> Result<(), String> {
        let ns = self.node_ns(i);
        let mut all = vec!["netns", "exec", ns.as_str(), "iptables", "-w"];
        all.extend(args);
        run("ip", &all)
    }

    /// Node `i` (1-based) drops every packet from and to the nodes `peers` (1-based) from now
    /// on, replacing its previous rules (`&[]` lifts them). Only node `i`'s namespace gets
    /// rules: to cut a link, cut both ends.
    ///
    /// # Panics
    /// If an iptables command fails.
    pub fn cut(&self, i: usize, peers: &[usize]) {
        let apply = || -> Result<(), String> {
            self.iptables(i, &["-F", "INPUT"])?;
            self.iptables(i, &["-F", "OUTPUT"])?;
            for &p in peers {
                let ip = self.ip(p);
                self.iptables(i, &["-A", "INPUT", "-s", &ip, "-j", "DROP"])?;
                self.iptables(i, &["-A", "OUTPUT", "-d", &ip, "-j", "DROP"])?;
            }
            Ok(())
        };
        if let Err(e) = apply() {
            panic!("cutting n{i} from {peers:?}: {e}");
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Some(original) = self.original.take() {
            if let Err(e) = enter(&original) {
                eprintln!("netns: cannot return the thread to its namespace: {e}");
            }
        }
        for i in 1..=self.size {
            let _ = run("ip", &["netns", "del", &self.node_ns(i)]);
        }
        let _ = run("ip", &["netns", "del", &self.hub()]);
    }
}
