//! The Prometheus endpoint (`--metrics-listen`) of real `ringkv` processes: scraped with a
//! plain HTTP GET and parsed as the text format; every metric README's "Metrics" table
//! documents is served with the documented type (and nothing undocumented); the request
//! counters move by exactly the requests made; the endpoint refuses what is not
//! `GET /metrics`, survives idle and garbage connections, and a taken address stops
//! `ringkv start`; on three nodes each node reports phi for both of its peers.

use ringkv_api::protocol::{encode_frame, RequestFrame};
use ringkv_api::{Client, ClientError};
use ringkv_tests::{read_answer, repo_root, wait_until, Cluster, NodeProcess};
use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// One sample line: name, labels, value.
type Sample = (String, BTreeMap<String, String>, f64);

/// A parsed scrape: the `# TYPE` of each family and every sample.
#[derive(Debug)]
struct Scrape {
    types: BTreeMap<String, String>,
    helps: BTreeSet<String>,
    samples: Vec<Sample>,
}

impl Scrape {
    /// The value of the sample `name` whose labels are exactly `labels`.
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let want: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self.samples
            .iter()
            .find(|(n, l, _)| n == name && *l == want)
            .map(|(_, _, v)| *v)
    }

    /// As [`Scrape::value`], 0 when the sample is absent (a counter not yet moved).
    fn count(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.value(name, labels).unwrap_or(0.0)
    }

    /// Every label set of `name`'s samples.
    fn label_sets(&self, name: &str) -> Vec<&BTreeMap<String, String>> {
        self.samples
            .iter()
            .filter(|(n, _, _)| n == name)
            .map(|(_, l, _)| l)
            .collect()
    }
}

/// Parses the text format: `# HELP name text`, `# TYPE name type`, and sample lines
/// `name{label="value",...} value` (label values with `\\`, `\"` and `\n` escapes).
fn parse(text: &str) -> Scrape {
    let mut scrape = Scrape {
        types: BTreeMap::new(),
        helps: BTreeSet::new(),
        samples: Vec::new(),
    };
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE name type");
            scrape.types.insert(name.into(), kind.trim().into());
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').expect("HELP name text");
            assert!(!help.trim().is_empty(), "empty HELP for {name}");
            scrape.helps.insert(name.into());
            continue;
        }
        assert!(!line.starts_with('#'), "unexpected comment line {line:?}");
        let (name, labels, rest) = match line.find('{') {
            Some(open) => {
                let (labels, rest) = parse_labels(&line[open + 1..]);
                (&line[..open], labels, rest)
            }
            None => {
                let (name, rest) = line.split_once(' ').expect("sample name value");
                (name, BTreeMap::new(), rest)
            }
        };
        assert!(
            name.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "bad metric name in {line:?}"
        );
        let value = rest.split_whitespace().next().expect("sample value");
        let value = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v
                .parse()
                .unwrap_or_else(|e| panic!("bad value in {line:?}: {e}")),
        };
        scrape.samples.push((name.into(), labels, value));
    }
    scrape
}

/// Parses `k="v",k2="v2"}` (the text after `{`); returns the labels and the text after `}`.
fn parse_labels(mut s: &str) -> (BTreeMap<String, String>, &str) {
    let mut labels = BTreeMap::new();
    loop {
        s = s.trim_start_matches(',');
        if let Some(rest) = s.strip_prefix('}') {
            return (labels, rest);
        }
        let (key, rest) = s.split_once("=\"").expect("label=\"value\"");
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            match chars.next().expect("closing quote") {
                (i, '"') => break i,
                (_, '\\') => match chars.next().expect("escaped char").1 {
                    'n' => value.push('\n'),
                    c => value.push(c),
                },
                (_, c) => value.push(c),
            }
        };
        labels.insert(key.to_string(), value);
        s = &rest[end + 1..];
    }
}

/// One HTTP/1.1 request over a plain socket: (status, headers, body). The endpoint closes
/// the connection after its answer.
fn http(addr: SocketAddr, method: &str, path: &str) -> (u16, String, String) {
    let mut s = TcpStream::connect(addr).expect("connect to the metrics endpoint");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/plain\r\n\r\n"
    )
    .unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("read the answer");
    let raw = String::from_utf8(raw).expect("UTF-8 answer");
    let (head, body) = raw.split_once("\r\n\r\n").expect("HTTP head and body");
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("status line in {head:?}"));
    (status, head.to_string(), body.to_string())
}

fn scrape(addr: SocketAddr) -> Scrape {
    let (status, head, body) = http(addr, "GET", "/metrics");
    assert_eq!(status, 200, "{head}\n{body}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: text/plain; version=0.0.4"),
        "{head}"
    );
    parse(&body)
}

/// The metrics README's "Metrics" table documents: name -> type.
fn documented() -> BTreeMap<String, String> {
    let readme = std::fs::read_to_string(repo_root().join("README.md")).expect("README.md");
    let section = readme
        .split("\n### Metrics\n")
        .nth(1)
        .expect("README has a ### Metrics section");
    let section = section.split("\n## ").next().unwrap_or(section);
    let table: BTreeMap<String, String> = section
        .lines()
        .filter_map(|l| l.strip_prefix("| `ringkv_"))
        .map(|row| {
            let cells: Vec<&str> = row.split('|').map(str::trim).collect();
            (
                format!("ringkv_{}", cells[0].trim_end_matches('`')),
                cells[1].to_string(),
            )
        })
        .collect();
    assert!(table.len() >= 20, "the Metrics table lists {table:?}");
    table
}

/// Metrics a node that runs alone does not serve.
const CLUSTER_ONLY: [&str; 2] = ["ringkv_peer_phi", "ringkv_peer_up"];

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn one_node_serves_every_documented_metric_and_counts_requests_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("ringkv.toml");
    std::fs::write(&config, "metrics-listen = \"127.0.0.1:0\"\n").unwrap();
    let node = NodeProcess::start(&["--config", config.to_str().unwrap()]);
    let metrics = node
        .metrics_addr
        .expect("the node prints `ringkv: metrics on http://ADDR/metrics`");
    let rt = rt();
    let client = rt.block_on(Client::connect(node.addr)).unwrap();

    // Nothing counted yet but the connection.
    let before = scrape(metrics);
    assert_eq!(
        before.count("ringkv_requests_total", &[("op", "put"), ("code", "ok")]),
        0.0
    );
    wait_until(
        "the client connection counted",
        Duration::from_secs(10),
        || (scrape(metrics).value("ringkv_client_connections", &[]) == Some(1.0)).then_some(()),
    );

    const PUTS: u32 = 17;
    rt.block_on(async {
        for i in 0..PUTS {
            client
                .put(b"m", &i.to_be_bytes(), b"v".to_vec(), &[])
                .await
                .unwrap();
        }
        client.get(b"m", &0u32.to_be_bytes()).await.unwrap();
        let long_key = vec![b'k'; 600];
        match client.get(b"m", &long_key).await {
            Err(ClientError::Server { code, .. }) => assert_eq!(code, "invalid_key"),
            other => panic!("a 600-byte key is refused: {other:?}"),
        }
    });
    // An op the node does not know, and a frame that is not msgpack: counted as `unknown`.
    let mut raw = TcpStream::connect(node.addr).unwrap();
    raw.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    raw.write_all(&encode_frame(&RequestFrame {
        id: 1,
        op: "frobnicate".into(),
        ..Default::default()
    }))
    .unwrap();
    let a = read_answer(&mut raw).expect("answered");
    assert_eq!(a.code.as_deref(), Some("unknown_op"));
    raw.write_all(&[0, 0, 0, 3, 0xc1, 0xc1, 0xc1]).unwrap();
    let a = read_answer(&mut raw).expect("answered");
    assert_eq!(a.code.as_deref(), Some("malformed_request"));

    let after = scrape(metrics);
    let moved = |name: &str, labels: &[(&str, &str)]| {
        after.count(name, labels) - before.count(name, labels)
    };
    assert_eq!(
        moved("ringkv_requests_total", &[("op", "put"), ("code", "ok")]),
        f64::from(PUTS)
    );
    assert_eq!(
        moved("ringkv_requests_total", &[("op", "get"), ("code", "ok")]),
        1.0
    );
    assert_eq!(
        moved(
            "ringkv_requests_total",
            &[("op", "get"), ("code", "invalid_key")]
        ),
        1.0
    );
    assert_eq!(
        moved(
            "ringkv_requests_total",
            &[("op", "unknown"), ("code", "unknown_op")]
        ),
        1.0
    );
    assert_eq!(
        moved(
            "ringkv_requests_total",
            &[("op", "unknown"), ("code", "malformed_request")]
        ),
        1.0
    );
    assert_eq!(
        moved("ringkv_request_duration_seconds_count", &[("op", "put")]),
        f64::from(PUTS)
    );
    assert_eq!(
        after.value("ringkv_quorum_failures_total", &[("op", "put")]),
        Some(0.0)
    );
    assert_eq!(
        after.value("ringkv_stored_keys", &[]),
        Some(f64::from(PUTS))
    );
    assert_eq!(
        after.value("ringkv_node_info", &[("node", "local")]),
        Some(1.0)
    );
    assert_eq!(after.value("ringkv_client_connections", &[]), Some(2.0));

    // The histogram: cumulative buckets from 100 µs to 10 s, +Inf equal to the count.
    let les: Vec<f64> = after
        .label_sets("ringkv_request_duration_seconds_bucket")
        .into_iter()
        .filter(|l| l.get("op").map(String::as_str) == Some("put"))
        .map(|l| match l["le"].as_str() {
            "+Inf" => f64::INFINITY,
            v => v.parse().unwrap(),
        })
        .collect();
    assert_eq!(les.first(), Some(&0.0001), "{les:?}");
    assert!(
        les.contains(&10.0) && les.last() == Some(&f64::INFINITY),
        "{les:?}"
    );
    assert_eq!(
        after.value(
            "ringkv_request_duration_seconds_bucket",
            &[("op", "put"), ("le", "+Inf")]
        ),
        after.value("ringkv_request_duration_seconds_count", &[("op", "put")])
    );

    // LMDB map use: used <= size <= max, for both envs.
    for env in ["data", "hints"] {
        let get = |n: &str| {
            after
                .value(n, &[("env", env)])
                .unwrap_or_else(|| panic!("{n} {env}"))
        };
        let (used, size, max) = (
            get("ringkv_lmdb_map_used_bytes"),
            get("ringkv_lmdb_map_size_bytes"),
            get("ringkv_lmdb_map_max_bytes"),
        );
        assert!(
            0.0 < used && used <= size && size <= max,
            "{env}: {used} {size} {max}"
        );
    }
    assert_eq!(
        after.label_sets("ringkv_actor_restarts_total").len(),
        ringkv_actors::stats::ACTOR_TYPES.len(),
        "a counter per actor type"
    );

    // Every documented metric is served with its documented type and a HELP line, and
    // nothing undocumented is served.
    let documented = documented();
    for (name, kind) in &documented {
        if CLUSTER_ONLY.contains(&name.as_str()) {
            continue;
        }
        assert_eq!(after.types.get(name), Some(kind), "TYPE of {name}");
        assert!(after.helps.contains(name), "HELP of {name}");
    }
    for name in after.types.keys() {
        assert!(
            documented.contains_key(name),
            "{name} is served but not in README"
        );
    }
    for (name, ..) in &after.samples {
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| {
                name.strip_suffix(s)
                    .filter(|f| after.types.get(*f).map(String::as_str) == Some("histogram"))
            })
            .unwrap_or(name);
        assert!(
            after.types.contains_key(family),
            "sample {name} has no TYPE"
        );
    }

    // The connection gauge follows the client going away.
    drop(client);
    drop(raw);
    drop(rt);
    wait_until("connections closed", Duration::from_secs(10), || {
        (scrape(metrics).value("ringkv_client_connections", &[]) == Some(0.0)).then_some(())
    });
}

#[test]
fn the_endpoint_serves_get_metrics_only_and_cannot_be_tied_up() {
    let node = NodeProcess::start(&["--metrics-listen", "127.0.0.1:0"]);
    let metrics = node.metrics_addr.expect("metrics address printed");
    for (method, path) in [
        ("GET", "/"),
        ("GET", "/metrics/x"),
        ("GET", "/favicon.ico"),
        ("POST", "/metrics"),
        ("DELETE", "/metrics"),
    ] {
        let (status, head, _) = http(metrics, method, path);
        assert_eq!(status, 404, "{method} {path}: {head}");
    }
    let (status, _, _) = http(metrics, "GET", "/metrics?x=1");
    assert_eq!(status, 200, "a query string is still /metrics");

    // Garbage instead of HTTP: an error answer or a closed connection, never a crash.
    let mut garbage = TcpStream::connect(metrics).unwrap();
    garbage
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    garbage.write_all(&[0xff; 4096]).unwrap();
    garbage.write_all(b"\r\n\r\n").unwrap();
    let mut answer = Vec::new();
    let _ = garbage.read_to_end(&mut answer);
    assert!(
        answer.is_empty() || answer.starts_with(b"HTTP/1.1 4"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    // A request head over the 16 KiB limit is refused too.
    let mut huge = TcpStream::connect(metrics).unwrap();
    huge.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let _ = write!(
        huge,
        "GET /metrics HTTP/1.1\r\nX-Pad: {}\r\n\r\n",
        "a".repeat(64 << 10)
    );
    let mut answer = Vec::new();
    let _ = huge.read_to_end(&mut answer);
    assert!(
        answer.is_empty() || answer.starts_with(b"HTTP/1.1 4"),
        "{}",
        String::from_utf8_lossy(&answer)
    );

    // Idle connections fill the endpoint's slots; the client port is not affected, and
    // once they go, scrapes are answered again.
    let idle: Vec<TcpStream> = (0..20)
        .map(|_| TcpStream::connect(metrics).unwrap())
        .collect();
    let mut s = TcpStream::connect(node.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(&encode_frame(&RequestFrame {
        id: 7,
        op: "ping".into(),
        ..Default::default()
    }))
    .unwrap();
    assert!(read_answer(&mut s).is_some_and(|a| a.ok && a.id == 7));
    drop(idle);
    wait_until("scrapes answered again", Duration::from_secs(20), || {
        let mut s = TcpStream::connect(metrics).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            .ok()?;
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).ok()?;
        raw.starts_with(b"HTTP/1.1 200").then_some(())
    });
    let after = scrape(metrics);
    assert_eq!(
        after.value("ringkv_requests_total", &[("op", "ping"), ("code", "ok")]),
        Some(1.0)
    );
}

#[test]
fn a_taken_metrics_address_stops_start_with_a_clear_message() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(ringkv_tests::ringkv_bin())
        .args([
            "start",
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            &addr,
        ])
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run ringkv start");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!("binding the metrics listener {addr}"))
            && stderr.contains("in use"),
        "{stderr}"
    );
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("listening on"),
        "no node started"
    );
}

#[test]
fn three_nodes_report_phi_for_both_peers() {
    let cluster = Cluster::start(3, &["--metrics-listen", "127.0.0.1:0"]);
    for (i, node) in cluster.nodes.iter().enumerate() {
        let metrics = node.metrics_addr.expect("metrics address printed");
        let me = cluster.name(i);
        let peers: BTreeSet<String> = (0..3)
            .filter(|j| *j != i)
            .map(|j| cluster.name(j))
            .collect();
        let scrape = wait_until(
            &format!("{me} sees both peers up"),
            Duration::from_secs(20),
            || {
                let s = scrape(metrics);
                peers
                    .iter()
                    .all(|p| s.value("ringkv_peer_up", &[("peer", p)]) == Some(1.0))
                    .then_some(s)
            },
        );
        let phi_peers: BTreeSet<String> = scrape
            .label_sets("ringkv_peer_phi")
            .into_iter()
            .map(|l| l["peer"].clone())
            .collect();
        assert_eq!(phi_peers, peers, "{me}: phi for exactly its peers");
        for p in &peers {
            let phi = scrape.value("ringkv_peer_phi", &[("peer", p)]).unwrap();
            assert!((0.0..8.0).contains(&phi), "{me} -> {p}: phi {phi}");
        }
        assert_eq!(
            scrape.types.get("ringkv_peer_phi").map(String::as_str),
            Some("gauge")
        );
        assert_eq!(
            scrape.value("ringkv_node_info", &[("node", &me)]),
            Some(1.0)
        );
        assert!(scrape.value("ringkv_layout_version", &[]).unwrap_or(0.0) >= 2.0);
    }
}
