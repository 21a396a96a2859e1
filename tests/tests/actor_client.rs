//! The actor-message client (`ringkv_client::actor::KvRef`, `actor-listen`) on real
//! processes. Needs `target/<profile>/ringkv` and the `cart_service` example, which
//! `cargo test --workspace` builds (else `cargo build -p ringkv-api --bin ringkv --examples`).
//!
//! 1. `kvref_and_the_cart_service_on_three_nodes` (one cluster, about 30 s): a `KvRef` and
//!    a TCP `Client` run the same seeded mix of gets, puts with and without contexts
//!    (siblings), deletes and strong-bucket cas, and every answer of both agrees; then the
//!    example cart service adds 300 items while n2 is killed (-9) and restarted: no
//!    acknowledged item is lost, and the service saw the node leave and come back as
//!    supervision events; requests in flight to a node that dies (n1, killed -9) fail with a
//!    typed error, none hangs;
//!    finally a fourth node joins and the `KvRef` picks up the new layout version and dials
//!    n4. The `KvRef` is given n2's address only: it learns the others from the layout.
//!
//! `actor_client_limits.rs` has the hostile client nodes: a process holds one client node at
//! a time (ractor's registry is process-wide), so they run in a test binary of their own.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use ringkv_api::client::actor::{ActorClientConfig, KvRef};
use ringkv_api::client::{CallOptions, CasOutcome, Client, ClientError, Fetched};
use ringkv_tests::{free_port, ringkv_bin, runtime, wait_until, Cluster, NodeProcess, TEST_COOKIE};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn actor_flags(i: usize) -> (String, Vec<String>) {
    let ip = format!("127.0.0.{i}");
    let addr = format!("{ip}:{}", free_port(&ip));
    (addr.clone(), vec!["--actor-listen".into(), addr])
}

fn sorted(mut f: Fetched) -> Vec<Vec<u8>> {
    f.values.sort();
    f.values
}

fn cart_service_bin() -> std::path::PathBuf {
    let bin = ringkv_bin()
        .parent()
        .expect("target/<profile>")
        .join("examples/cart_service");
    assert!(
        bin.exists(),
        "{} does not exist: run `cargo test --workspace` or `cargo build -p ringkv-api --examples`",
        bin.display()
    );
    bin
}

#[test]
fn kvref_and_the_cart_service_on_three_nodes() {
    let addrs: Vec<(String, Vec<String>)> = (1..=4).map(actor_flags).collect();
    let flags = addrs.clone();
    let mut cluster = Cluster::start_each(3, move |i| flags[i - 1].1.clone(), &[], None);
    let actor_addrs: Vec<String> = addrs[..3].iter().map(|(a, _)| a.clone()).collect();
    let rt = runtime();
    let kv = rt
        .block_on(KvRef::connect(ActorClientConfig::new(
            "agree",
            TEST_COOKIE,
            actor_addrs.clone(),
        )))
        .expect("KvRef connects");
    let tcp = rt.block_on(Client::connect(cluster.nodes[0].addr)).unwrap();
    let nodes: Vec<std::net::SocketAddr> = cluster.addrs();
    wait_until(
        "the KvRef sees three nodes",
        Duration::from_secs(10),
        || (kv.nodes_up().len() == 3).then_some(()),
    );
    assert!(kv.layout_version() > 0, "the KvRef fetched the layout");

    // 1. The same mix through both ways: every answer agrees. Even keys are written by the
    // KvRef and odd ones by TCP; both read every key after each step.
    rt.block_on(async {
        let o = CallOptions::default();
        let mut rng = StdRng::seed_from_u64(16);
        for step in 0..400 {
            let k = format!("k{}", rng.gen_range(0..40)).into_bytes();
            let by_actor = rng.gen_bool(0.5);
            let (a, t) = (
                kv.get(b"agree", &k, &o).await.unwrap(),
                tcp.get_with(b"agree", &k, &o).await.unwrap(),
            );
            assert_eq!(
                sorted(a.clone()),
                sorted(t.clone()),
                "step {step}: reads differ"
            );
            let value = format!("v{step}").into_bytes();
            match rng.gen_range(0..4) {
                0 | 1 if by_actor => kv.put(b"agree", &k, value, &a.context, &o).await.unwrap(),
                0 | 1 => tcp
                    .put_with(b"agree", &k, value, &t.context, &o)
                    .await
                    .unwrap(),
                2 if by_actor => kv.put(b"agree", &k, value, &[], &o).await.unwrap(),
                2 => tcp.put_with(b"agree", &k, value, &[], &o).await.unwrap(),
                _ if by_actor => kv.delete(b"agree", &k, &a.context, &o).await.unwrap(),
                _ => tcp.delete_with(b"agree", &k, &t.context, &o).await.unwrap(),
            }
        }
        // Siblings reach both the same way.
        kv.put(b"agree", b"sib", b"x".to_vec(), &[], &o)
            .await
            .unwrap();
        tcp.put(b"agree", b"sib", b"y".to_vec(), &[]).await.unwrap();
        let a = kv.get(b"agree", b"sib", &o).await.unwrap();
        assert_eq!(sorted(a.clone()), vec![b"x".to_vec(), b"y".to_vec()]);
        assert_eq!(sorted(a), sorted(tcp.get(b"agree", b"sib").await.unwrap()));
        // Strong buckets: cas through the gateway.
        tcp.admin(ringkv_api::protocol::RequestFrame {
            op: "bucket_set".into(),
            bucket: Some(serde_bytes::ByteBuf::from(b"locks".to_vec())),
            props: Some(ringkv_api::protocol::BucketPropsFrame {
                consistency: Some("strong".into()),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap();
        // The property must reach the keys' proposers (any node) before the first cas.
        for node in &nodes {
            let c = Client::connect(node).await.unwrap();
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                let props = c
                    .admin(ringkv_api::protocol::RequestFrame {
                        op: "bucket_get".into(),
                        bucket: Some(serde_bytes::ByteBuf::from(b"locks".to_vec())),
                        ..Default::default()
                    })
                    .await
                    .unwrap();
                if props["consistency"] == "strong" {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "{node} never saw locks as strong"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        assert_eq!(
            kv.cas(b"locks", b"job", None, Some(b"w1"), &o)
                .await
                .unwrap(),
            CasOutcome::Swapped
        );
        assert_eq!(
            tcp.cas(b"locks", b"job", None, Some(b"w2"), &o)
                .await
                .unwrap(),
            CasOutcome::ConditionFailed {
                current: Some(b"w1".to_vec())
            }
        );
        // Validation is the TCP protocol's: an empty key is `invalid_key` either way.
        let e = kv
            .put(b"agree", b"", b"v".to_vec(), &[], &o)
            .await
            .unwrap_err();
        assert_eq!(e.code(), Some("invalid_key"), "{e}");
    });

    // 2. The cart service while n2 is killed and restarted.
    let mut service = Command::new(cart_service_bin())
        .args([
            "--nodes",
            &actor_addrs.join(","),
            "--items",
            "300",
            "--carts",
            "10",
        ])
        .args(["--pace-ms", "15"])
        .env("RINGKV_COOKIE", TEST_COOKIE)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("cart_service starts");
    let lines = service.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(lines).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let started = Instant::now();
    let mut summary = None;
    let (mut killed, mut restarted) = (false, false);
    while summary.is_none() && started.elapsed() < Duration::from_secs(120) {
        let Ok(line) = rx.recv_timeout(Duration::from_secs(1)) else {
            continue;
        };
        if line.starts_with('{') {
            summary = Some(line);
            continue;
        }
        let acked: Option<usize> = line.strip_prefix("acked ").and_then(|n| n.parse().ok());
        if acked.is_some_and(|n| n >= 60) && !killed {
            cluster.nodes[1].kill9();
            killed = true;
        }
        if acked.is_some_and(|n| n >= 160) && !restarted {
            cluster.nodes[1].restart();
            restarted = true;
        }
    }
    let status = service.wait().expect("cart_service exits");
    let summary: serde_json::Value =
        serde_json::from_str(&summary.expect("the cart service printed its summary")).unwrap();
    println!("cart service: {summary}");
    assert!(
        killed && restarted,
        "the run outlived the node's kill and restart"
    );
    assert_eq!(
        summary["lost"],
        serde_json::json!([]),
        "acknowledged items lost"
    );
    assert!(summary["acked"].as_u64().unwrap() >= 290, "{summary}");
    assert!(summary["nodes_down"].as_u64().unwrap() >= 1, "{summary}");
    assert!(summary["nodes_up"].as_u64().unwrap() >= 1, "{summary}");
    assert!(status.success(), "{summary}");

    // 3. A request in flight to a node that dies fails with a typed error, not a hang:
    // puts keep going while n1 is killed.
    wait_until("the KvRef sees n2 again", Duration::from_secs(20), || {
        (kv.nodes_up().len() == 3).then_some(())
    });
    rt.block_on(async {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let workers: Vec<_> = (0..32)
            .map(|w| {
                let (kv, stop) = (kv.clone(), stop.clone());
                tokio::spawn(async move {
                    let (o, mut typed) = (CallOptions::default(), 0);
                    for i in 0..100_000 {
                        if stop.load(std::sync::atomic::Ordering::Relaxed) {
                            break;
                        }
                        let k = format!("dying-{w}-{i}").into_bytes();
                        match kv.put(b"agree", &k, b"v".to_vec(), &[], &o).await {
                            Ok(()) => {}
                            Err(ClientError::NodeLost { .. } | ClientError::NoAnswer { .. }) => {
                                typed += 1
                            }
                            Err(e) if e.code().is_some() => {}
                            Err(e) => panic!("untyped failure: {e:?}"),
                        }
                    }
                    typed
                })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(300)).await;
        // n1 is the first replica of most partitions: most routed requests go there.
        cluster.nodes[0].kill9();
        tokio::time::sleep(Duration::from_secs(1)).await;
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let mut typed = 0;
        for w in workers {
            typed += tokio::time::timeout(Duration::from_secs(60), w)
                .await
                .expect("no request hangs")
                .unwrap();
        }
        println!("requests in flight to the killed node that failed typed: {typed}");
        assert!(typed >= 1, "no request was in flight to n1 when it died");
    });
    cluster.nodes[0].restart();

    // 4. A fourth node joins: the KvRef routes by the new layout version.
    let before = kv.layout_version();
    let n4_flags = addrs[3].1.clone();
    let cluster_addr = format!("127.0.0.4:{}", free_port("127.0.0.4"));
    let seed_addr = cluster.status(0)["members"]
        .as_array()
        .and_then(|m| {
            m.iter()
                .find(|m| m["name"] == "n1")
                .and_then(|m| m["cluster_addr"].as_str().map(str::to_string))
        })
        .expect("n1's cluster address");
    let mut args = ringkv_tests::node_args(4, &cluster_addr, Some(&seed_addr));
    args.extend(n4_flags);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let n4 = NodeProcess::start_on("127.0.0.4", &args, &[("RINGKV_COOKIE", TEST_COOKIE)]);
    cluster.nodes.push(n4);
    cluster.wait_members(0, 4, Duration::from_secs(30));
    let (code, _, err) = cluster.nodes[0].cli(&["cluster", "commit"], None);
    assert_eq!(code, 0, "{err}");
    wait_until(
        "the KvRef routes by the new layout",
        Duration::from_secs(20),
        || {
            let _ = rt.block_on(kv.get(b"agree", b"k1", &CallOptions::default()));
            (kv.layout_version() > before).then_some(())
        },
    );
    drop(kv);
}
