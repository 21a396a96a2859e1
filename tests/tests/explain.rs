//! `ringkv explain` on a cluster of three real `ringkv` processes (127.0.0.1-3): a key with
//! siblings, a key repaired by anti-entropy, a key with a pending hint while one of its
//! primaries is paused (SIGSTOP) and after it returns, a strong key's acceptor states, and
//! refused input. One scenario on one cluster, every wait a poll against a deadline.

use ringkv_api::protocol::RequestFrame;
use ringkv_tests::workload::Deadline;
use ringkv_tests::{Cluster, REQUEST_TIMEOUT};
use serde_bytes::ByteBuf;
use serde_json::Value;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// Runs `ringkv ARGS` against node `i` (0-based) and checks that it exits 0; its stdout.
fn cli_ok(cluster: &Cluster, i: usize, args: &[&str]) -> String {
    let (code, out, err) = cluster.nodes[i].cli(args, None);
    if code != 0 {
        cluster.fail(&format!(
            "ringkv {args:?} on n{} exited {code}: {err}",
            i + 1
        ));
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `ringkv explain BUCKET KEY --json` through node `i`.
fn explain(cluster: &Cluster, i: usize, bucket: &str, key: &str) -> Value {
    let out = cli_ok(cluster, i, &["explain", bucket, key, "--json"]);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("explain answered no JSON ({e}): {out}"))
}

/// The names in a list of node views (`preference_list`, `fallbacks`).
fn names(list: &Value) -> Vec<String> {
    list.as_array()
        .into_iter()
        .flatten()
        .map(|v| v["node"].as_str().unwrap_or("?").to_string())
        .collect()
}

/// The replica row of `node`.
fn replica<'a>(info: &'a Value, node: &str) -> &'a Value {
    info["replicas"]
        .as_array()
        .and_then(|rows| rows.iter().find(|r| r["node"] == node))
        .unwrap_or_else(|| panic!("no replica row for {node} in {info}"))
}

/// Waits until every node's `bucket get BUCKET` shows `field` equal to `want`.
fn wait_bucket_prop(cluster: &Cluster, dl: &Deadline, bucket: &str, field: &str, want: Value) {
    cluster.wait_for(
        &format!("every node to see {bucket}.{field} = {want}"),
        dl.at_most(Duration::from_secs(10)),
        || {
            for i in 0..cluster.nodes.len() {
                let props: Value =
                    serde_json::from_str(&cli_ok(cluster, i, &["bucket", "get", bucket]))
                        .expect("bucket get prints JSON");
                if props[field] != want {
                    return Err(format!("n{} has {props}", i + 1));
                }
            }
            Ok(())
        },
    );
}

#[test]
fn explain_shows_siblings_anti_entropy_hints_and_acceptor_states() {
    let dl = Deadline::new(Duration::from_secs(60));
    let began = Instant::now();
    let cluster = Cluster::start(
        3,
        &[
            "--partitions",
            "16",
            "--repair-interval-ms",
            "300",
            "--handoff-interval-ms",
            "200",
            "--acceptable-pause-ms",
            "500",
        ],
    );
    let started = began.elapsed();

    // 1. Two concurrent writes (blind: neither saw the other) make two siblings, on every
    //    replica (w=3), each with the dot of its write, under one clock covering both.
    cli_ok(
        &cluster,
        0,
        &["put", "carts", "alice", "milk", "--blind", "--w", "3"],
    );
    cli_ok(
        &cluster,
        2,
        &["put", "carts", "alice", "eggs", "--blind", "--w", "3"],
    );
    let info = explain(&cluster, 1, "carts", "alice");
    assert_eq!(info["node"], "n2");
    assert_eq!(
        (info["n"].as_u64(), info["consistency"].as_str()),
        (Some(3), Some("eventual"))
    );
    let primaries = names(&info["preference_list"]);
    assert_eq!(primaries.len(), 3, "{info}");
    assert!(
        names(&info["fallbacks"]).is_empty(),
        "3 nodes, n=3: no fallback"
    );
    let mut clocks = Vec::new();
    for node in &primaries {
        let r = replica(&info, node);
        assert_eq!(r["status"], "ok", "{r}");
        let record = &r["record"];
        assert_eq!(
            (record["siblings"].as_u64(), record["live"].as_u64()),
            (Some(2), Some(2)),
            "{r}"
        );
        assert_eq!(record["tombstone"], false);
        let clock: BTreeMap<String, u64> =
            serde_json::from_value(record["clock"].clone()).expect("clock is a map");
        let listed = record["listed"].as_array().expect("listed siblings");
        let mut dots = Vec::new();
        for s in listed {
            assert_eq!(
                (s["size"].as_u64(), s["tombstone"].as_bool()),
                (Some(4), Some(false))
            );
            let dot = s["dot"].as_str().expect("dot");
            let (id, counter) = dot.split_once(':').expect("replica:counter");
            let counter: u64 = counter.parse().expect("counter");
            assert!(
                clock.get(id).is_some_and(|c| *c >= counter),
                "{dot} not covered by {clock:?}"
            );
            dots.push(dot.to_string());
        }
        dots.sort();
        dots.dedup();
        assert_eq!(dots.len(), 2, "two distinct dots: {listed:?}");
        clocks.push(clock);
    }
    assert!(
        clocks.windows(2).all(|w| w[0] == w[1]),
        "replicas differ: {clocks:?}"
    );
    let text = cli_ok(&cluster, 1, &["explain", "carts", "alice"]);
    assert!(text.contains("2 siblings (2 live)"), "{text}");
    assert!(text.contains("preference list (primaries):"), "{text}");
    println!("explain of a key with siblings:\n{text}");

    // 2. A write that reaches one replica only (n=1 for this request; the bucket keeps 3):
    //    anti-entropy copies it to the others, and explain shows the pairs' exchanges and
    //    the keys they repaired.
    cli_ok(
        &cluster,
        0,
        &[
            "put", "carts", "bob", "solo", "--blind", "--n", "1", "--r", "1", "--w", "1",
        ],
    );
    let t = Instant::now();
    let info = cluster.wait_for(
        "anti-entropy to bring carts/bob to every replica, as explain shows",
        dl.at_most(Duration::from_secs(15)),
        || {
            let info = explain(&cluster, 0, "carts", "bob");
            for node in names(&info["preference_list"]) {
                if replica(&info, &node)["record"]["siblings"] != 1 {
                    return Err(format!("{node} does not hold it yet: {info}"));
                }
            }
            let rows = info["exchanges"].as_array().cloned().unwrap_or_default();
            if rows.len() != 3 || rows.iter().any(|r| r["status"] != "ok") {
                return Err(format!("not every pair has exchanged: {rows:?}"));
            }
            let repaired: u64 = rows
                .iter()
                .filter_map(|r| r["keys_repaired_total"].as_u64())
                .sum();
            if repaired == 0 {
                return Err(format!("no exchange repaired a key: {rows:?}"));
            }
            Ok(info)
        },
    );
    let repaired_in = t.elapsed();
    for row in info["exchanges"].as_array().expect("exchanges") {
        assert!(row["age_ms"].as_u64().is_some_and(|a| a < 10_000), "{row}");
        assert!(
            row["node"].as_str() < row["peer"].as_str(),
            "the first name runs the pair: {row}"
        );
    }

    // 3. A pending hint. Bucket hb keeps 2 replicas, so the third node is the key's fallback.
    //    Pause a primary other than n1, write through n1: the fallback keeps a hint for it.
    cli_ok(&cluster, 0, &["bucket", "set", "hb", "n=2", "r=1", "w=2"]);
    wait_bucket_prop(&cluster, &dl, "hb", "n", Value::from(2));
    let info = explain(&cluster, 0, "hb", "cart-7");
    let (primaries, fallbacks) = (names(&info["preference_list"]), names(&info["fallbacks"]));
    assert_eq!((primaries.len(), fallbacks.len()), (2, 1), "{info}");
    let victim = primaries
        .iter()
        .find(|n| *n != "n1")
        .expect("a primary besides n1")
        .clone();
    let holder = fallbacks[0].clone();
    let v: usize = victim[1..].parse::<usize>().expect("node name n{i}") - 1;
    cluster.nodes[v].signal(libc::SIGSTOP);
    let stopped_at = Instant::now();
    cluster.wait_for(
        &format!("n1 to see {victim} down"),
        dl.at_most(Duration::from_secs(15)),
        || match cluster.sees_up(0, &victim) {
            Some(false) => Ok(()),
            other => Err(format!("up: {other:?}")),
        },
    );
    let detected_in = stopped_at.elapsed();
    cli_ok(&cluster, 0, &["put", "hb", "cart-7", "socks"]);
    let t = Instant::now();
    let info = explain(&cluster, 0, "hb", "cart-7");
    let explain_time = t.elapsed();
    let hints = info["hints"].as_array().cloned().unwrap_or_default();
    assert!(
        hints.iter().any(|h| h["holder"] == holder.as_str()
            && h["owner"] == victim.as_str()
            && h["record"]["siblings"] == 1),
        "no hint on {holder} for {victim}: {info}"
    );
    assert_eq!(replica(&info, &victim)["status"], "unreachable", "{info}");
    assert!(names(&info["preference_list"]).contains(&victim));
    let seen = info["preference_list"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["node"] == victim.as_str())
        .unwrap()
        .clone();
    assert_eq!(
        (seen["up"].as_bool(), seen["reachable"].as_bool()),
        (Some(false), Some(false)),
        "{seen}"
    );
    assert!(
        info["unreachable"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n == victim.as_str()),
        "{info}"
    );
    assert!(
        explain_time < Duration::from_secs(5),
        "explain took {explain_time:?} with a node paused"
    );
    let text = cli_ok(&cluster, 0, &["explain", "hb", "cart-7"]);
    assert!(
        text.contains(&format!("held by {holder} for {victim}")),
        "{text}"
    );
    println!("explain of a key with a pending hint ({victim} paused):\n{text}");

    //    Back: hinted handoff delivers the hint and its holder deletes it.
    cluster.nodes[v].signal(libc::SIGCONT);
    let paused_for = stopped_at.elapsed();
    let t = Instant::now();
    cluster.wait_for(
        &format!("the hint for {victim} to be delivered"),
        dl.at_most(Duration::from_secs(15)),
        || {
            let info = explain(&cluster, 0, "hb", "cart-7");
            if info["hints"].as_array().is_some_and(|h| !h.is_empty()) || info["hints_more"] != 0 {
                return Err(format!("hints still held: {}", info["hints"]));
            }
            match replica(&info, &victim)["record"]["siblings"].as_u64() {
                Some(1) => Ok(()),
                _ => Err(format!("{victim}: {}", replica(&info, &victim))),
            }
        },
    );
    let handed_off_in = t.elapsed();

    // 4. A strong bucket: each replica's Paxos acceptor state instead of a record.
    cli_ok(
        &cluster,
        0,
        &["bucket", "set", "locks", "consistency=strong"],
    );
    wait_bucket_prop(&cluster, &dl, "locks", "consistency", Value::from("strong"));
    cli_ok(
        &cluster,
        0,
        &["cas", "locks", "job-7", "--absent", "worker-1"],
    );
    let info = explain(&cluster, 2, "locks", "job-7");
    assert_eq!(info["consistency"], "strong");
    assert!(
        names(&info["fallbacks"]).is_empty(),
        "strong buckets have no fallbacks"
    );
    let acceptors = info["replicas"].as_array().expect("replicas");
    let holding = acceptors
        .iter()
        .filter(|r| r["paxos"]["value_size"] == 8)
        .count();
    assert!(holding >= 2, "a majority accepted worker-1: {info}");
    for r in acceptors.iter().filter(|r| r["paxos"]["value_size"] == 8) {
        assert!(r["paxos"]["accepted"]["counter"].as_u64() > Some(0), "{r}");
        assert_eq!(r["paxos"]["tombstone"], false);
    }

    // 5. Bad input is refused with the codes of `get`; the node goes on serving.
    let refused = |bucket: Option<&[u8]>, key: Option<&[u8]>| {
        let frame = RequestFrame {
            op: "explain".into(),
            bucket: bucket.map(|b| ByteBuf::from(b.to_vec())),
            key: key.map(|k| ByteBuf::from(k.to_vec())),
            ..Default::default()
        };
        let answer = cluster
            .request(0, frame, REQUEST_TIMEOUT)
            .expect("an answer");
        assert!(!answer.ok, "{answer:?}");
        answer.code.unwrap_or_default()
    };
    assert_eq!(refused(Some(b""), Some(b"k")), "invalid_bucket");
    assert_eq!(refused(Some(b"\0sys"), Some(b"k")), "invalid_bucket");
    assert_eq!(refused(Some(b"b"), Some(&[b'x'; 443])), "invalid_key");
    assert_eq!(refused(Some(b"b"), None), "malformed_request");
    let (code, _, err) = cluster.nodes[0].cli(&["explain", "b", ""], None);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("invalid_key"), "{err}");
    cli_ok(&cluster, 0, &["ping"]);

    println!(
        "explain scenario: cluster up in {:.1} s; anti-entropy repair seen after {:.2} s; \
         {victim} seen down {:.2} s after SIGSTOP; explain with it paused answered in {:.0} ms; \
         hint delivered {:.2} s after SIGCONT ({victim} paused {:.1} s); total {:.1} s",
        started.as_secs_f64(),
        repaired_in.as_secs_f64(),
        detected_in.as_secs_f64(),
        explain_time.as_secs_f64() * 1e3,
        handed_off_in.as_secs_f64(),
        paused_for.as_secs_f64(),
        began.elapsed().as_secs_f64()
    );
}
