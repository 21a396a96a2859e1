//! Clusters of real `ringkv` processes, one per node on 127.0.0.x: replication with quorums,
//! failures, read repair, failure detection, gossip convergence, the cookie, and the Python
//! client across nodes.

use ringkv_api::{CallOptions, Client, WriteCondition};
use ringkv_tests::{local_read as local, quorum as q, runtime as rt};
use ringkv_tests::{run_python, wait_until, Cluster, NodeProcess, TEST_COOKIE};
use std::time::Duration;

/// Put through node 1 with w=3, get through node 3 with r=1; then kill -9 node 3: w=2 and r=2
/// still work, w=3 fails naming 2 of 3; restart it: a read with r=3 repairs its stale copy.
#[test]
fn three_nodes_replicate_and_survive_a_dead_node() {
    let mut cluster = Cluster::start(3, &["--partitions", "16"]);
    let rt = rt();
    let (a1, a3) = (cluster.nodes[0].addr, cluster.nodes[2].addr);
    rt.block_on(async {
        let c1 = Client::connect(a1).await.unwrap();
        let c3 = Client::connect(a3).await.unwrap();
        c1.put_with(b"b", b"k", b"v1".to_vec(), &[], &q(3, 2, 3))
            .await
            .unwrap();
        let got = c3.get_with(b"b", b"k", &q(3, 1, 2)).await.unwrap();
        assert_eq!(got.values, vec![b"v1".to_vec()]);
        // Every replica holds it durably (w=3): node 3's own copy shows it.
        assert_eq!(
            c3.get_with(b"b", b"k", &local()).await.unwrap().values,
            vec![b"v1".to_vec()]
        );
    });

    cluster.nodes[2].kill9();
    rt.block_on(async {
        let c1 = Client::connect(a1).await.unwrap();
        let seen = c1.get_with(b"b", b"k", &q(3, 2, 2)).await.unwrap();
        c1.put_with(b"b", b"k", b"v2".to_vec(), &seen.context, &q(3, 2, 2))
            .await
            .unwrap();
        let got = c1.get_with(b"b", b"k", &q(3, 2, 2)).await.unwrap();
        assert_eq!(got.values, vec![b"v2".to_vec()]);
        let err = c1
            .put_with(b"b", b"k2", b"x".to_vec(), &[], &q(3, 2, 3))
            .await
            .unwrap_err();
        // n3 is down: `unreachable`, naming it.
        assert_eq!(err.code(), Some("unreachable"), "{err}");
        assert!(err.to_string().contains("2 of 3"), "{err}");
        assert!(err.to_string().contains("n3"), "{err}");
    });

    cluster.nodes[2].restart();
    let a3 = cluster.nodes[2].addr;
    rt.block_on(async {
        let c3 = Client::connect(a3).await.unwrap();
        // Node 3 missed v2.
        assert_eq!(
            c3.get_with(b"b", b"k", &local()).await.unwrap().values,
            vec![b"v1".to_vec()]
        );
        // Once the others see it again, a read with r=3 returns v2 and repairs node 3.
        let c1 = Client::connect(a1).await.unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            match c1.get_with(b"b", b"k", &q(3, 3, 2)).await {
                Ok(got) => {
                    assert_eq!(got.values, vec![b"v2".to_vec()]);
                    break;
                }
                Err(e) => {
                    assert!(
                        std::time::Instant::now() < deadline,
                        "r=3 never succeeded: {e}"
                    );
                    tokio::task::yield_now().await;
                }
            }
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while c3.get_with(b"b", b"k", &local()).await.unwrap().values != vec![b"v2".to_vec()] {
            assert!(
                std::time::Instant::now() < deadline,
                "read repair did not reach node 3"
            );
            tokio::task::yield_now().await;
        }
    });
}

/// SIGSTOP one node: the others mark it down within a few seconds; SIGCONT: up again.
#[test]
fn a_paused_node_is_suspected_and_recovers() {
    let cluster = Cluster::start(3, &["--partitions", "8"]);
    cluster.nodes[1].signal(libc::SIGSTOP);
    let t = std::time::Instant::now();
    wait_until("n1 and n3 to mark n2 down", Duration::from_secs(15), || {
        (cluster.sees_up(0, "n2") == Some(false) && cluster.sees_up(2, "n2") == Some(false))
            .then_some(())
    });
    println!("paused node suspected after {:?}", t.elapsed());
    // Writes at w=2 go on while it is paused.
    rt().block_on(async {
        let c = Client::connect(cluster.nodes[0].addr).await.unwrap();
        c.put_with(b"b", b"during-pause", b"v".to_vec(), &[], &q(3, 2, 2))
            .await
            .unwrap();
    });
    cluster.nodes[1].signal(libc::SIGCONT);
    wait_until("n2 to be up again", Duration::from_secs(15), || {
        (cluster.sees_up(0, "n2") == Some(true) && cluster.sees_up(2, "n2") == Some(true))
            .then_some(())
    });
}

/// Five nodes form one cluster from one seed, and every node's status agrees.
#[test]
fn five_nodes_form_from_one_seed_and_agree() {
    let cluster = Cluster::start(5, &["--partitions", "64"]);
    println!(
        "5-node cluster: layout commit reached every node in {:?} (200 ms gossip rounds)",
        cluster.convergence
    );
    let statuses: Vec<_> = (0..5).map(|i| cluster.status(i)).collect();
    for s in &statuses {
        assert_eq!(s["digest"], statuses[0]["digest"]);
        assert_eq!(s["members"].as_array().unwrap().len(), 5);
        let held: u64 = s["members"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["partitions"].as_u64().unwrap())
            .sum();
        assert_eq!(held, 64 * 3, "every partition has 3 replicas");
    }
    // A bucket property set through one node reaches all of them.
    let (code, _, err) =
        cluster.nodes[4].cli(&["bucket", "set", "strict", "n=3", "r=3", "w=3"], None);
    assert_eq!(code, 0, "{err}");
    wait_until(
        "bucket properties to spread",
        Duration::from_secs(15),
        || {
            (0..5)
                .all(|i| {
                    let (_, out, _) = cluster.nodes[i].cli(&["bucket", "get", "strict"], None);
                    String::from_utf8_lossy(&out).contains("\"r\":3")
                })
                .then_some(())
        },
    );
    // Formation dials many sessions, some of them twice at once (the transport keeps one):
    // none of that is reported as a cookie problem. A session closed before authentication
    // is judged once the transport's 2 s duplicate window has passed, so look after it.
    let formed = std::time::Instant::now();
    wait_until(
        "the duplicate window to pass",
        Duration::from_secs(10),
        || (formed.elapsed() > Duration::from_secs(3)).then_some(()),
    );
    for (i, n) in cluster.nodes.iter().enumerate() {
        assert!(
            !n.log().contains("same cookie"),
            "n{} logged a cookie problem during a normal formation:\n{}",
            i + 1,
            n.log()
        );
    }
}

/// A node with another cookie is refused, and both sides log it.
#[test]
fn a_node_with_the_wrong_cookie_is_refused() {
    let cluster = Cluster::start(1, &["--partitions", "8"]);
    let seed = cluster.status(0)["members"][0]["cluster_addr"]
        .as_str()
        .unwrap()
        .to_string();
    let port = ringkv_tests::free_port("127.0.0.2").to_string();
    let addr = format!("127.0.0.2:{port}");
    let intruder = NodeProcess::start_on(
        "127.0.0.2",
        &[
            "--name",
            "intruder",
            "--cluster-addr",
            &addr,
            "--join",
            &seed,
            "--partitions",
            "8",
        ],
        &[("RINGKV_COOKIE", "not-the-cookie")],
    );
    wait_until(
        "both sides to log the refusal",
        Duration::from_secs(20),
        || {
            (intruder.log().contains("refused") && cluster.nodes[0].log().contains("refused"))
                .then_some(())
        },
    );
    assert_eq!(cluster.status(0)["members"].as_array().unwrap().len(), 1);
    assert_ne!(TEST_COOKIE, "not-the-cookie");
}

/// The Python client writes through one node and reads through another.
#[test]
fn python_client_across_nodes() {
    let cluster = Cluster::start(3, &["--partitions", "16"]);
    run_python(
        "cross_node.py",
        &[
            "--write".into(),
            cluster.nodes[0].addr.to_string(),
            "--read".into(),
            cluster.nodes[2].addr.to_string(),
        ],
    );
}

/// The names in `status[field]` (`members` holds objects with a `name`, `removed` plain names).
fn names(status: &serde_json::Value, field: &str) -> Vec<String> {
    status[field]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| m["name"].as_str().or(m.as_str()).map(str::to_string))
        .collect()
}

/// 4 -> 3 nodes by `cluster leave n4` and `cluster commit`: n4 is gone from the members of
/// every node (and listed as removed), stays gone over several gossip rounds and across a
/// restart of n4 on its old data directory, n4 itself learns that it was removed (logged
/// once), and no hint is ever addressed to it: with n3 cut off, sloppy writes keep their
/// hints on the three remaining nodes. A fresh data directory under the same name joins
/// again, as a new incarnation.
#[test]
fn a_member_that_leaves_is_gone_on_every_node_and_stays_gone() {
    let mut cluster = Cluster::start(4, &["--partitions", "16", "--fault-injection"]);
    let (code, _, err) = cluster.nodes[0].cli(&["cluster", "leave", "n4"], None);
    assert_eq!(code, 0, "cluster leave: {err}");
    let (code, _, err) = cluster.nodes[0].cli(&["cluster", "commit"], None);
    assert_eq!(code, 0, "cluster commit: {err}");

    // Every node, n4 included, drops n4 from its members and lists it as removed; the three
    // remaining nodes agree on the state.
    let t = std::time::Instant::now();
    cluster.wait_for(
        "n4 to be removed on every node",
        Duration::from_secs(30),
        || {
            let statuses: Vec<_> = (0..4).map(|i| cluster.status(i)).collect();
            for (i, s) in statuses.iter().enumerate() {
                if names(s, "members").contains(&"n4".to_string()) {
                    return Err(format!("n{} still lists n4 as a member: {s}", i + 1));
                }
                if !names(s, "removed").contains(&"n4".to_string()) {
                    return Err(format!("n{} does not list n4 as removed: {s}", i + 1));
                }
            }
            if statuses[..3]
                .iter()
                .any(|s| s["digest"] != statuses[0]["digest"])
            {
                return Err("n1..n3 do not agree yet".into());
            }
            Ok(())
        },
    );
    println!(
        "n4 removed on every node {:?} after the commit",
        t.elapsed()
    );
    let members = names(&cluster.status(0), "members");
    assert_eq!(members, ["n1", "n2", "n3"]);
    let held: u64 = cluster.status(0)["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["partitions"].as_u64().unwrap())
        .sum();
    assert_eq!(held, 16 * 3, "3 nodes hold every partition's 3 replicas");

    // It stays gone while every remaining node completes 10 more gossip exchanges.
    let start: Vec<u64> = (0..3)
        .map(|i| cluster.counter(i, "gossip", "exchanges").unwrap())
        .collect();
    cluster.wait_for(
        "10 gossip exchanges on n1..n3",
        Duration::from_secs(30),
        || {
            for (i, start) in start.iter().enumerate() {
                let s = cluster.status(i);
                if names(&s, "members").contains(&"n4".to_string()) {
                    cluster.fail(&format!("n4 came back on n{}: {s}", i + 1));
                }
                let done = s["gossip"]["exchanges"].as_u64().unwrap() - start;
                if done < 10 {
                    return Err(format!("n{} made {done} exchanges", i + 1));
                }
            }
            Ok(())
        },
    );
    // n4 knows it was removed and says so once, however many rounds pass.
    cluster.wait_for(
        "n4 to log its removal",
        Duration::from_secs(10),
        || match cluster.nodes[3]
            .log()
            .matches("this node was removed")
            .count()
        {
            1 => Ok(()),
            n => Err(format!("logged {n} times")),
        },
    );

    // No hint is addressed to n4: with n3 cut off, a sloppy write at w=2 through n1 keeps
    // its hint for n3 on a remaining node (n4 is no fallback any more).
    let stored_on_n4 = cluster.counter(3, "hints", "stored").unwrap();
    cluster.partition(&[&[0, 1], &[2]]);
    rt().block_on(async {
        let c = Client::connect(cluster.nodes[0].addr).await.unwrap();
        for k in 0..20u32 {
            c.put_with(
                b"b",
                format!("k{k}").as_bytes(),
                b"v".to_vec(),
                &[],
                &q(3, 2, 2),
            )
            .await
            .unwrap();
        }
    });
    // A hint on n1, which holds the write already, does not count toward w: the put may be
    // answered before it is stored.
    cluster.wait_for(
        "a hint for n3 of each of the 20 writes on n1..n3",
        Duration::from_secs(10),
        || {
            let stored: u64 = (0..3)
                .map(|i| cluster.counter(i, "hints", "stored").unwrap())
                .sum();
            if stored >= 20 {
                Ok(())
            } else {
                Err(format!("{stored} hints stored"))
            }
        },
    );
    assert_eq!(
        cluster.counter(3, "hints", "stored").unwrap(),
        stored_on_n4,
        "a hint was addressed to the removed n4"
    );
    assert_eq!(cluster.counter(3, "hints", "pending"), Some(0));
    cluster.heal();

    // n4 restarted on its old data directory is still removed and stays out.
    cluster.nodes[3].kill9();
    cluster.nodes[3].restart();
    cluster.wait_for(
        "the restarted n4 to log its removal",
        Duration::from_secs(10),
        || match cluster.nodes[3]
            .log()
            .matches("this node was removed")
            .count()
        {
            2 => Ok(()),
            n => Err(format!("logged {n} times in both runs")),
        },
    );
    let start = cluster.counter(0, "gossip", "exchanges").unwrap();
    cluster.wait_for("10 more exchanges on n1", Duration::from_secs(30), || {
        let s = cluster.status(0);
        if names(&s, "members").contains(&"n4".to_string()) {
            cluster.fail(&format!("the restarted n4 came back: {s}"));
        }
        match s["gossip"]["exchanges"].as_u64().unwrap() - start {
            done if done >= 10 => Ok(()),
            done => Err(format!("{done} exchanges")),
        }
    });

    // A fresh data directory under the same name is a new incarnation: it joins again.
    cluster.nodes[3].wipe();
    cluster.nodes[3].restart();
    cluster.wait_for(
        "a fresh n4 to be joining on n1",
        Duration::from_secs(30),
        || {
            let s = cluster.status(0);
            match s["members"]
                .as_array()
                .unwrap()
                .iter()
                .find(|m| m["name"] == "n4")
            {
                Some(m) if m["status"] == "joining" => Ok(()),
                _ => Err(format!("{s}")),
            }
        },
    );
    assert!(!names(&cluster.status(0), "removed").contains(&"n4".to_string()));
}

/// Runs `ringkv cluster ARGS --json` on node `i` (0-based) of `cluster` and parses the answer.
fn admin_json(cluster: &Cluster, i: usize, args: &[&str]) -> serde_json::Value {
    let mut all = vec!["cluster"];
    all.extend(args);
    all.push("--json");
    let (code, out, err) = cluster.nodes[i].cli(&all, None);
    assert_eq!(code, 0, "cluster {args:?}: {err}");
    serde_json::from_slice(&out).expect("JSON answer")
}

/// Staged changes on 3 nodes with n4 joining: `cluster replace n3 n4` makes the plan give n4
/// exactly n3's replicas and move nothing else, with bytes estimated from the partitions'
/// sizes; with n3 killed the plan still works and says the estimate is partial; bad changes
/// and a plan that would leave 2 nodes for 3 replicas are refused with clear errors;
/// `cluster revert` drops everything staged and n3 is active again.
#[test]
fn a_staged_replace_plans_exactly_the_old_nodes_replicas_and_revert_drops_it() {
    let mut cluster = Cluster::start(3, &["--partitions", "16"]);
    rt().block_on(async {
        let c = Client::connect(cluster.nodes[0].addr).await.unwrap();
        for k in 0..200u32 {
            c.put_with(
                b"b",
                format!("k{k}").as_bytes(),
                vec![7u8; 100],
                &[],
                &q(3, 3, 3),
            )
            .await
            .unwrap();
        }
    });
    let seed = cluster.status(0)["members"][0]["cluster_addr"]
        .as_str()
        .unwrap()
        .to_string();
    let addr = format!("127.0.0.4:{}", ringkv_tests::free_port("127.0.0.4"));
    let _n4 = NodeProcess::start_on(
        "127.0.0.4",
        &[
            "--name",
            "n4",
            "--cluster-addr",
            &addr,
            "--zone",
            "z4",
            "--join",
            &seed,
            "--partitions",
            "16",
            "--heartbeat-ms",
            "200",
        ],
        &[("RINGKV_COOKIE", TEST_COOKIE)],
    );
    cluster.wait_members(0, 4, Duration::from_secs(30));
    let n3_held = cluster.status(0)["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "n3")
        .unwrap()["partitions"]
        .as_u64()
        .unwrap();
    assert_eq!(n3_held, 16, "3 nodes at 3 replicas hold every partition");

    // Refused changes name what is wrong.
    for (args, expect) in [
        (
            &["cluster", "replace", "n3", "n2"][..],
            "already holds partitions",
        ),
        (
            &["cluster", "replace", "n3", "n9"],
            "no member is named \"n9\"",
        ),
        (
            &["cluster", "set", "n4", "capacity=0"],
            "capacity must be 1",
        ),
        (
            &["cluster", "set", "n9", "zone=z9"],
            "no member is named \"n9\"",
        ),
    ] {
        let (code, _, err) = cluster.nodes[0].cli(args, None);
        assert_ne!(code, 0, "{args:?} was accepted");
        assert!(err.contains(expect), "{args:?}: {err}");
    }
    // 3 replicas per partition, one node leaving and none joining in the plan: refused.
    let (code, _, err) = cluster.nodes[0].cli(&["cluster", "leave", "n2"], None);
    assert_eq!(code, 0, "cluster leave: {err}");
    let (code, _, err) = cluster.nodes[0].cli(&["cluster", "replace", "n3", "n4"], None);
    assert_eq!(code, 0, "cluster replace: {err}");
    let (code, _, err) = cluster.nodes[0].cli(&["cluster", "plan"], None);
    assert_ne!(code, 0);
    assert!(
        err.contains("leaves 2 node(s)") && err.contains("3 replicas") && err.contains("revert"),
        "{err}"
    );
    let (code, _, err) = cluster.nodes[0].cli(&["cluster", "commit"], None);
    assert_ne!(code, 0);
    assert!(err.contains("leaves 2 node(s)"), "{err}");
    admin_json(&cluster, 0, &["revert"]);

    // The replace alone: n4 takes exactly n3's 16 replicas, nobody else moves.
    let staged = admin_json(&cluster, 0, &["replace", "n3", "n4"]);
    assert_eq!(staged["replaces"]["n3"], "n4", "{staged}");
    assert_eq!(staged["roles"]["n4"]["zone"], "z3", "{staged}");
    let plan = admin_json(&cluster, 0, &["plan"]);
    assert_eq!(plan["moved"], n3_held, "{plan}");
    assert_eq!(plan["joining"], serde_json::json!(["n4"]), "{plan}");
    assert_eq!(plan["leaving"], serde_json::json!(["n3"]), "{plan}");
    assert_eq!(plan["nodes"]["n4"]["gained"], n3_held, "{plan}");
    assert_eq!(plan["nodes"]["n3"]["lost"], n3_held, "{plan}");
    for n in ["n1", "n2"] {
        assert_eq!(plan["nodes"][n]["gained"], 0, "{plan}");
        assert_eq!(plan["nodes"][n]["lost"], 0, "{plan}");
    }
    let bytes_in = plan["nodes"]["n4"]["bytes_in"].as_u64().unwrap();
    assert!(bytes_in > 200 * 100, "200 values of 100 bytes move: {plan}");
    assert_eq!(plan["bytes_to_move"], bytes_in, "{plan}");
    assert_eq!(plan["nodes"]["n3"]["bytes_out"], bytes_in, "{plan}");
    assert_eq!(plan["estimate_complete"], true, "{plan}");
    assert_eq!(plan["sizes_asked"], 3, "{plan}");
    // Gossip carries the staged change: n2 plans the same.
    cluster.wait_for("n2 to plan the replace", Duration::from_secs(10), || {
        let (code, out, err) = cluster.nodes[1].cli(&["cluster", "plan"], None);
        let text = String::from_utf8_lossy(&out);
        if code == 0 && text.contains("to move") && text.contains("replace n3 by n4") {
            Ok(())
        } else {
            Err(format!("{text}{err}"))
        }
    });

    // n3 down: the plan still stands, from the other replicas' sizes, and says it is partial.
    cluster.nodes[2].kill9();
    let plan = admin_json(&cluster, 0, &["plan"]);
    assert_eq!(plan["nodes"]["n4"]["gained"], n3_held, "{plan}");
    assert_eq!(plan["estimate_complete"], false, "{plan}");
    assert_eq!(
        plan["sizes_not_answered"],
        serde_json::json!(["n3"]),
        "{plan}"
    );
    assert_eq!(plan["bytes_to_move"], bytes_in, "{plan}");

    // Revert drops it all: nothing staged, n3 active again, n4 still joining.
    let reverted = admin_json(&cluster, 0, &["revert"]);
    assert_eq!(reverted["dropped"]["replaces"]["n3"], "n4", "{reverted}");
    assert_eq!(reverted["active_again"], serde_json::json!(["n3"]));
    let plan = admin_json(&cluster, 0, &["plan"]);
    assert_eq!(plan["staged"]["replaces"], serde_json::json!({}), "{plan}");
    assert_eq!(plan["staged"]["roles"], serde_json::json!({}), "{plan}");
    assert_eq!(plan["leaving"], serde_json::json!([]), "{plan}");
    let status = cluster.status(0);
    let state_of = |n: &str| {
        status["members"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["name"] == n)
            .unwrap()["status"]
            .clone()
    };
    assert_eq!(state_of("n3"), "active");
    assert_eq!(state_of("n4"), "joining");
}

/// Two clients race to create each of 20 keys with `if_none_match` through different nodes, on
/// a strict bucket with w = n = 3: never are both acknowledged, and a refusal is
/// `condition_failed`.
#[test]
fn racing_if_none_match_creators_on_a_strict_bucket_never_both_succeed() {
    let cluster = Cluster::start(3, &["--partitions", "8"]);
    let (code, _, err) = cluster.nodes[0].cli(
        &[
            "bucket",
            "set",
            "races",
            "n=3",
            "r=2",
            "w=3",
            "sloppy_quorum=false",
        ],
        None,
    );
    assert_eq!(code, 0, "{err}");
    wait_until(
        "every node to know the bucket",
        Duration::from_secs(10),
        || {
            (0..3)
                .all(|i| {
                    let (_, out, _) = cluster.nodes[i].cli(&["bucket", "get", "races"], None);
                    let props: serde_json::Value = serde_json::from_slice(&out).unwrap_or_default();
                    props["sloppy_quorum"] == false && props["w"] == 3
                })
                .then_some(())
        },
    );
    let addrs = cluster.addrs();
    let create = CallOptions {
        condition: Some(WriteCondition::IfNoneMatch),
        ..Default::default()
    };
    let mut winners = 0;
    rt().block_on(async {
        let clients = [
            Client::connect(addrs[0]).await.unwrap(),
            Client::connect(addrs[1]).await.unwrap(),
            Client::connect(addrs[2]).await.unwrap(),
        ];
        for i in 0..20 {
            let key = format!("race-{i}");
            let (a, b) = (&clients[i % 3], &clients[(i + 1) % 3]);
            let (ra, rb) = tokio::join!(
                a.put_with(b"races", key.as_bytes(), b"a".to_vec(), &[], &create),
                b.put_with(b"races", key.as_bytes(), b"b".to_vec(), &[], &create),
            );
            assert!(
                !(ra.is_ok() && rb.is_ok()),
                "{key}: both creators were acknowledged"
            );
            for r in [&ra, &rb] {
                if let Err(e) = r {
                    assert_eq!(e.code(), Some("condition_failed"), "{key}: {e}");
                }
            }
            winners += usize::from(ra.is_ok() || rb.is_ok());
        }
    });
    eprintln!("20 races through the real binary: {winners} with a winner, the rest with none");
}
