//! TLS on the client protocol and between nodes (issue 15, items 1, 2 and 6), on one cluster
//! of three real processes with mutual TLS everywhere (certificates from `ringkv cert`):
//! * the cluster forms and replicates over TLS links, and the harness's own client commands
//!   run over mutual TLS;
//! * the Rust and the Python clients write and read over TLS on every node;
//! * a plain client is answered `tls_required` (and the node logs why); a TLS client without
//!   a client certificate is refused;
//! * a stalled TLS handshake is closed after `tls-handshake-timeout-ms` and delays no other
//!   connection, on the client port and on the cluster port;
//! * a node with a valid certificate for `n3` that names itself `n2` is refused by `n1` before
//!   its session authenticates; a node whose own certificate does not name it does not start.

use ractor::Actor;
use ractor_cluster::{NodeServer, NodeServerMessage};
use ringkv_api::client::{ClientTls, ErrorCode};
use ringkv_api::Client;
use ringkv_tests::{
    block_on, quorum, ringkv_bin, run_python, runtime, wait_until, Cluster, TEST_COOKIE,
};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const HANDSHAKE_MS: u64 = 1500;

/// Runs `ringkv cert ...` in `dir`.
fn cert(dir: &Path, args: &[&str]) {
    let out = Command::new(ringkv_bin())
        .arg("cert")
        .args(args)
        .arg("--dir")
        .arg(dir)
        .output()
        .expect("ringkv cert runs");
    assert!(
        out.status.success(),
        "ringkv cert {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn path(dir: &Path, file: &str) -> String {
    dir.join(file).display().to_string()
}

/// The cluster address of node `i` (0-based), from its status.
fn cluster_addr(c: &Cluster, i: usize) -> String {
    let status = c.status(i);
    let name = c.name(i);
    status["members"]
        .as_array()
        .and_then(|m| m.iter().find(|m| m["name"] == name.as_str()))
        .and_then(|m| m["cluster_addr"].as_str())
        .unwrap_or_else(|| c.fail(&format!("no cluster address for {name} in {status}")))
        .to_string()
}

#[test]
fn a_cluster_with_mutual_tls_everywhere() {
    let certs = tempfile::tempdir().expect("temp dir");
    let dir = certs.path().to_path_buf();
    cert(&dir, &["ca"]);
    for i in 1..=4 {
        cert(
            &dir,
            &["node", &format!("n{i}"), "--host", &format!("127.0.0.{i}")],
        );
    }
    cert(&dir, &["node", "app"]);
    cert(&dir, &["node", "client-app"]);
    let actor_addrs: Vec<String> = (1..=3)
        .map(|i| {
            let ip = format!("127.0.0.{i}");
            format!("{ip}:{}", ringkv_tests::free_port(&ip))
        })
        .collect();
    let actor_flags = actor_addrs.clone();
    let d = dir.clone();
    let per_node = move |i: usize| -> Vec<String> {
        vec![
            "--tls-cert".into(),
            path(&d, &format!("n{i}.pem")),
            "--tls-key".into(),
            path(&d, &format!("n{i}.key")),
            "--tls-client-ca".into(),
            path(&d, "ca.pem"),
            "--cluster-tls-ca".into(),
            path(&d, "ca.pem"),
            "--tls-handshake-timeout-ms".into(),
            HANDSHAKE_MS.to_string(),
            "--actor-listen".into(),
            actor_flags[i - 1].clone(),
        ]
    };
    let cli_env = vec![
        ("RINGKV_TLS_CA".to_string(), path(&dir, "ca.pem")),
        ("RINGKV_TLS_CERT".to_string(), path(&dir, "app.pem")),
        ("RINGKV_TLS_KEY".to_string(), path(&dir, "app.key")),
    ];
    // Forms, commits and converges: every status the harness reads is a mutual TLS client
    // command, every gossip exchange a TLS cluster link.
    let c = Cluster::start_each(3, per_node, &cli_env, None);
    let tls = ClientTls::from_files(
        &dir.join("ca.pem"),
        Some((&dir.join("app.pem"), &dir.join("app.key"))),
    )
    .expect("client TLS");

    rust_client_over_tls(&c, &tls);
    actor_client_over_tls(&dir, &actor_addrs);
    let addrs: Vec<String> = c.addrs().iter().map(|a| a.to_string()).collect();
    let mut args = vec![
        "--ca".to_string(),
        path(&dir, "ca.pem"),
        "--cert".to_string(),
        path(&dir, "app.pem"),
        "--key".to_string(),
        path(&dir, "app.key"),
    ];
    args.extend(addrs);
    run_python("tls_check.py", &args);
    plain_and_anonymous_clients_are_refused(&c, &dir);
    stalled_handshakes_delay_no_one(&c, &tls);
    a_node_cannot_use_another_nodes_certificate(&c, &dir);
}

/// A `KvRef` without TLS, and one whose certificate names another client, never get a
/// gateway on `actor-listen`; one with a certificate naming its client node works.
fn actor_client_over_tls(dir: &Path, actor_addrs: &[String]) {
    use ringkv_api::client::actor::{ActorClientConfig, KvRef};
    let rt = runtime();
    let config = |name: &str, identity: Option<&str>| {
        let mut c = ActorClientConfig::new(name, TEST_COOKIE, actor_addrs.to_vec());
        c.connect_timeout = Duration::from_secs(3);
        c.tls = identity.map(|id| {
            ClientTls::from_files(
                &dir.join("ca.pem"),
                Some((
                    &dir.join(format!("{id}.pem")),
                    &dir.join(format!("{id}.key")),
                )),
            )
            .expect("client TLS")
        });
        c
    };
    for (name, identity, why) in [
        ("plain", None, "without TLS"),
        (
            "other",
            Some("client-app"),
            "with another client's certificate",
        ),
    ] {
        match rt.block_on(KvRef::connect(config(name, identity))) {
            Err(ringkv_api::client::ClientError::NoNode(_)) => {}
            Err(e) => panic!("client node {why}: unexpected error {e}"),
            Ok(_) => panic!("a client node {why} was accepted"),
        }
    }
    // Last: the refused ones above must not find this one's gateways in the process groups.
    let kv = rt
        .block_on(KvRef::connect(config("app", Some("client-app"))))
        .expect("a client node with its certificate connects over TLS");
    rt.block_on(async {
        let o = ringkv_api::client::CallOptions::default();
        kv.put(b"tls", b"actor", b"v".to_vec(), &[], &o)
            .await
            .unwrap();
        assert_eq!(
            kv.get(b"tls", b"actor", &o).await.unwrap().values,
            vec![b"v".to_vec()]
        );
    });
    drop(kv);
}

fn rust_client_over_tls(c: &Cluster, tls: &ClientTls) {
    block_on(async {
        let mut clients = Vec::new();
        for a in c.addrs() {
            clients.push(
                Client::connect_tls(&a.to_string(), tls)
                    .await
                    .expect("TLS connect"),
            );
        }
        for i in 0..30u32 {
            let key = format!("k{i}");
            clients[0]
                .put_with(b"tls", key.as_bytes(), b"v".to_vec(), &[], &quorum(3, 2, 3))
                .await
                .expect("put w=3 over TLS");
        }
        for (n, client) in clients.iter().enumerate() {
            for i in 0..30u32 {
                let key = format!("k{i}");
                let got = client
                    .get_with(b"tls", key.as_bytes(), &quorum(3, 3, 2))
                    .await
                    .expect("get r=3 over TLS");
                assert_eq!(got.values, vec![b"v".to_vec()], "n{} {key}", n + 1);
            }
        }
    });
}

fn plain_and_anonymous_clients_are_refused(c: &Cluster, dir: &Path) {
    let addr = c.addrs()[0];
    block_on(async {
        let plain = Client::connect(addr).await.expect("TCP connect");
        match plain.ping().await {
            Err(e) => assert_eq!(
                e.error_code(),
                Some(ErrorCode::TlsRequired),
                "a plain client must read tls_required, got {e}"
            ),
            Ok(()) => panic!("a plain client was served by a TLS node"),
        }
        // TLS without the client certificate that --tls-client-ca requires.
        let anonymous = ClientTls::from_files(&dir.join("ca.pem"), None).expect("client TLS");
        let refused = match Client::connect_tls(&addr.to_string(), &anonymous).await {
            Err(_) => true,
            // TLS 1.3: the client finishes its side before the node refuses.
            Ok(client) => client.ping().await.is_err(),
        };
        assert!(
            refused,
            "a client without a certificate was served by a node with tls-client-ca"
        );
    });
    wait_until("n1 to log the plain client", Duration::from_secs(5), || {
        c.nodes[0]
            .log()
            .contains("plain TCP to a listener that requires TLS")
            .then_some(())
    });
    wait_until(
        "n1 to log the client without a certificate",
        Duration::from_secs(5),
        || {
            c.nodes[0]
                .log()
                .contains("client TLS handshake failed")
                .then_some(())
        },
    );
    // The CLI too says what is wrong.
    let out = Command::new(ringkv_bin())
        .args(["--addr", &addr.to_string(), "ping"])
        .env_remove("RINGKV_TLS_CA")
        .output()
        .expect("ringkv ping");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("tls_required"), "{err}");
}

fn stalled_handshakes_delay_no_one(c: &Cluster, tls: &ClientTls) {
    let addr = c.addrs()[0];
    // A client that starts a TLS record and stops.
    let mut stalled = TcpStream::connect(addr).expect("connect");
    stalled.write_all(&[0x16, 0x03]).expect("write");
    // Silent connections on the cluster port, more than the node runs handshakes for at once.
    let cluster = cluster_addr(c, 0);
    let silent: Vec<TcpStream> = (0..80)
        .filter_map(|_| TcpStream::connect(&cluster).ok())
        .collect();
    assert!(
        silent.len() >= 70,
        "only {} connections opened",
        silent.len()
    );
    let started = Instant::now();
    block_on(async {
        let client = Client::connect_tls(&addr.to_string(), tls)
            .await
            .expect("TLS connect beside a stalled handshake");
        client.ping().await.expect("ping");
        // Replication through n1 still reaches both peers over their open sessions.
        client
            .put_with(
                b"tls",
                b"beside-stalls",
                b"v".to_vec(),
                &[],
                &quorum(3, 2, 3),
            )
            .await
            .expect("put w=3 beside stalled cluster handshakes");
    });
    assert!(
        started.elapsed() < Duration::from_millis(HANDSHAKE_MS),
        "served only after {:?}: held up by the stalled handshakes",
        started.elapsed()
    );
    // The stalled client is closed once its handshake time is up.
    stalled
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut buf = [0u8; 64];
    let closed_at = match stalled.read(&mut buf) {
        Ok(0) | Err(_) => started.elapsed(),
        Ok(n) => panic!("the stalled handshake was answered {n} bytes"),
    };
    assert!(
        closed_at < Duration::from_secs(5),
        "the stalled handshake stayed open {closed_at:?}"
    );
    wait_until(
        "n1 to log the handshake timeout",
        Duration::from_secs(5),
        || {
            c.nodes[0]
                .log()
                .contains("did not finish in time")
                .then_some(())
        },
    );
    drop(silent);
    c.wait_converged(Duration::from_secs(20));
}

fn a_node_cannot_use_another_nodes_certificate(c: &Cluster, dir: &Path) {
    let n1 = cluster_addr(c, 0);
    // An impostor process: a valid certificate of the cluster CA for n3, claiming to be n2.
    let impostor = ringkv_actors::tls::ClusterTls::from_files(
        &dir.join("ca.pem"),
        &dir.join("n3.pem"),
        &dir.join("n3.key"),
        Duration::from_secs(2),
    )
    .expect("impostor TLS");
    let before = c.nodes[0].log().matches("cluster peer refused").count();
    let sessions = block_on(async {
        let server = NodeServer::new(
            0,
            TEST_COOKIE.to_string(),
            "n2".to_string(),
            "127.0.0.9".to_string(),
            None,
            Some(ractor_cluster::node::NodeConnectionMode::Isolated),
        )
        .with_listen_addr(std::net::Ipv4Addr::LOCALHOST.into());
        let (server, handle) = Actor::spawn(None, server, ())
            .await
            .expect("impostor transport");
        ringkv_actors::transport::dial(&server, &n1, Some(&impostor))
            .await
            .expect("the TLS handshake itself succeeds: the certificate is valid");
        // n1 refuses the session once the impostor names itself.
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut authenticated = 0;
        loop {
            let refused = c.nodes[0].log().matches("cluster peer refused").count() > before;
            let sessions = server
                .call(NodeServerMessage::GetSessions, Some(Duration::from_secs(2)))
                .await
                .expect("sessions");
            let open = match sessions {
                ractor::rpc::CallResult::Success(s) => s,
                other => panic!("sessions: {other:?}"),
            };
            authenticated =
                authenticated.max(open.values().filter(|s| s.peer_name.is_some()).count());
            if refused && open.is_empty() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "n1 did not refuse the impostor: refused logged {refused}, sessions {}",
                open.len()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        server.stop(None);
        let _ = handle.await;
        authenticated
    });
    let log = c.nodes[0].log();
    let line = log
        .lines()
        .rfind(|l| l.contains("cluster peer refused"))
        .unwrap_or_default()
        .to_string();
    assert!(
        line.contains("n2"),
        "the refusal names the claimed name: {line}"
    );
    assert_eq!(
        sessions, 0,
        "the impostor's session reached the point where n1 told it its name"
    );
    // The real n2 is untouched.
    c.wait_converged(Duration::from_secs(20));

    // A node whose own certificate does not carry its name stops at start, saying why.
    let data = tempfile::tempdir().expect("temp dir");
    let mut child = Command::new(ringkv_bin())
        .args([
            "start",
            "--name",
            "n5",
            "--listen",
            "127.0.0.1:0",
            "--cluster-addr",
            "127.0.0.1:0",
            "--tls-cert",
            &path(dir, "n4.pem"),
            "--tls-key",
            &path(dir, "n4.key"),
            "--cluster-tls-ca",
            &path(dir, "ca.pem"),
        ])
        .arg("--data-dir")
        .arg(data.path())
        .env("RINGKV_COOKIE", TEST_COOKIE)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let status = wait_until("the misnamed node to exit", Duration::from_secs(20), || {
        child.try_wait().expect("wait")
    });
    let mut err = String::new();
    child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut err)
        .expect("stderr");
    assert!(
        !status.success(),
        "a node started with another's certificate"
    );
    assert!(err.contains("does not name this node"), "{err}");
}
