//! One real `ringkv` process: durability across kill -9 and restart, clean shutdown, bad
//! input, pipelining, supervision, the CLI, the config file, and the Python client.

use ringkv_api::protocol::{encode_frame, RequestFrame};
use ringkv_api::Client;
use ringkv_tests::{read_answer, run_python, wait_until, NodeProcess};
use serde_bytes::ByteBuf;
use std::io::Write;
use std::net::TcpStream;
use std::time::Duration;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn frame(id: u64, op: &str, bucket: &[u8], key: &[u8], value: Option<&[u8]>) -> Vec<u8> {
    encode_frame(&RequestFrame {
        id,
        op: op.into(),
        bucket: Some(ByteBuf::from(bucket)),
        key: Some(ByteBuf::from(key)),
        value: value.map(ByteBuf::from),
        ..Default::default()
    })
}

fn connect(node: &NodeProcess) -> TcpStream {
    let s = TcpStream::connect(node.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

fn ping_ok(s: &mut TcpStream) {
    s.write_all(&encode_frame(&RequestFrame {
        id: 999,
        op: "ping".into(),
        ..Default::default()
    }))
    .unwrap();
    let a = read_answer(s).expect("ping answered");
    assert!(a.ok && a.id == 999, "{a:?}");
}

#[test]
fn acknowledged_writes_survive_kill_9_and_restart() {
    let mut node = NodeProcess::start(&[]);
    let rt = rt();
    rt.block_on(async {
        let c = Client::connect(node.addr).await.unwrap();
        for i in 0..500u32 {
            c.put(
                b"durable",
                &i.to_be_bytes(),
                format!("value-{i}").into_bytes(),
                &[],
            )
            .await
            .unwrap();
        }
    });
    node.kill9();
    node.restart();
    rt.block_on(async {
        let c = Client::connect(node.addr).await.unwrap();
        for i in 0..500u32 {
            let got = c.get(b"durable", &i.to_be_bytes()).await.unwrap();
            assert_eq!(
                got.values,
                vec![format!("value-{i}").into_bytes()],
                "key {i}"
            );
        }
    });
}

#[test]
fn sigterm_finishes_in_flight_writes_and_exits_cleanly() {
    let mut node = NodeProcess::start(&["--partitions", "8"]);
    let rt = rt();
    // Many writes in flight when SIGTERM arrives: every one acknowledged must be durable.
    let acked = rt.block_on(async {
        let c = Client::connect(node.addr).await.unwrap();
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..2000u32 {
            let c = c.clone();
            tasks.spawn(async move {
                c.put(b"term", &i.to_be_bytes(), vec![1; 100], &[])
                    .await
                    .ok()
                    .map(|_| i)
            });
        }
        // Signal once the first answers are back, with most writes still queued.
        let first = tasks.join_next().await.unwrap().unwrap();
        node.signal(libc::SIGTERM);
        let mut acked: Vec<u32> = first.into_iter().collect();
        while let Some(r) = tasks.join_next().await {
            acked.extend(r.unwrap());
        }
        acked
    });
    let status = node.wait_exit(Duration::from_secs(30));
    assert!(
        status.success(),
        "exit status {status:?}; log:\n{}",
        node.log()
    );
    assert!(!acked.is_empty());
    node.restart();
    rt.block_on(async {
        let c = Client::connect(node.addr).await.unwrap();
        for i in &acked {
            let got = c.get(b"term", &i.to_be_bytes()).await.unwrap();
            assert_eq!(got.values.len(), 1, "acknowledged write {i} lost");
        }
    });
}

#[test]
fn malformed_and_oversized_frames_do_not_hurt_the_node() {
    let mut node = NodeProcess::start(&[
        "--partitions",
        "8",
        "--max-frame-bytes",
        "65536",
        "--max-value-bytes",
        "1024",
    ]);
    let mut s = connect(&node);

    // Not msgpack: an error answer, and the connection stays usable.
    s.write_all(&[0, 0, 0, 2, 0xc1, 0xc1]).unwrap();
    let a = read_answer(&mut s).unwrap();
    assert_eq!(
        (a.ok, a.code.as_deref()),
        (false, Some("malformed_request"))
    );
    ping_ok(&mut s);

    // msgpack, but not a map of the documented fields: the id is still found.
    let bad = encode_frame(&(7u32, "get"));
    s.write_all(&bad).unwrap();
    assert_eq!(
        read_answer(&mut s).unwrap().code.as_deref(),
        Some("malformed_request")
    );
    #[derive(serde::Serialize)]
    struct WrongType {
        id: u64,
        op: &'static str,
        bucket: u32,
    }
    s.write_all(&encode_frame(&WrongType {
        id: 8,
        op: "get",
        bucket: 5,
    }))
    .unwrap();
    let a = read_answer(&mut s).unwrap();
    assert_eq!((a.id, a.code.as_deref()), (8, Some("malformed_request")));

    // Unknown op, missing field, invalid key, value over the limit: typed errors.
    s.write_all(&frame(9, "frobnicate", b"b", b"k", None))
        .unwrap();
    let a = read_answer(&mut s).unwrap();
    assert_eq!((a.id, a.code.as_deref()), (9, Some("unknown_op")));
    s.write_all(&frame(10, "put", b"b", b"k", None)).unwrap();
    assert_eq!(
        read_answer(&mut s).unwrap().code.as_deref(),
        Some("malformed_request")
    );
    s.write_all(&frame(11, "get", b"b", &[b'k'; 447], None))
        .unwrap();
    let a = read_answer(&mut s).unwrap();
    assert_eq!(a.code.as_deref(), Some("invalid_key"));
    assert!(a.message.unwrap().contains("442"));
    s.write_all(&frame(12, "put", b"b", b"k", Some(&[0; 1025])))
        .unwrap();
    let a = read_answer(&mut s).unwrap();
    assert_eq!(a.code.as_deref(), Some("value_too_large"));
    assert!(a.message.unwrap().contains("1024"));
    ping_ok(&mut s);

    // Oversized frame: answered, then this connection only is closed.
    let mut other = connect(&node);
    s.write_all(&0x7fff_ffffu32.to_be_bytes()).unwrap();
    let a = read_answer(&mut s).unwrap();
    assert_eq!((a.id, a.code.as_deref()), (0, Some("frame_too_large")));
    assert!(read_answer(&mut s).is_none(), "connection should be closed");
    ping_ok(&mut other);

    // Truncated frame: the server drops that connection; others go on.
    let mut t = connect(&node);
    t.write_all(&[0, 0, 0, 100, 1, 2, 3]).unwrap();
    drop(t);
    ping_ok(&mut other);
    let mut fresh = connect(&node);
    ping_ok(&mut fresh);
    assert!(node.is_running());
    assert!(!node.log().contains("panicked"), "{}", node.log());
}

#[test]
fn a_thousand_pipelined_requests_on_one_connection() {
    let node = NodeProcess::start(&[]);
    let mut s = connect(&node);
    // Write all 1,000 before reading any answer.
    let mut out = Vec::new();
    for i in 0..500u64 {
        out.extend(frame(
            i * 2,
            "put",
            b"pipe",
            &i.to_be_bytes(),
            Some(&i.to_le_bytes()),
        ));
        out.extend(frame(i * 2 + 1, "get", b"pipe", &i.to_be_bytes(), None));
    }
    s.write_all(&out).unwrap();
    let mut seen = vec![false; 1000];
    for _ in 0..1000 {
        let a = read_answer(&mut s).expect("answer");
        assert!(a.ok, "{a:?}");
        assert!(!seen[a.id as usize], "id {} answered twice", a.id);
        seen[a.id as usize] = true;
    }
    assert!(seen.iter().all(|s| *s));

    // The async client pipelines too: 1,000 concurrent calls on one connection.
    rt().block_on(async {
        let c = Client::connect(node.addr).await.unwrap();
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..1000u64 {
            let c = c.clone();
            tasks.spawn(async move {
                c.put(b"pipe2", &i.to_be_bytes(), i.to_le_bytes().to_vec(), &[])
                    .await
                    .unwrap();
                let got = c.get(b"pipe2", &i.to_be_bytes()).await.unwrap();
                assert_eq!(got.values, vec![i.to_le_bytes().to_vec()]);
            });
        }
        while let Some(r) = tasks.join_next().await {
            r.unwrap();
        }
    });
}

#[test]
fn a_panicked_vnode_is_restarted_and_keeps_its_data() {
    let mut node = NodeProcess::start(&["--fault-injection"]);
    let rt = rt();
    rt.block_on(async {
        let c = Client::connect(node.addr).await.unwrap();
        c.put(b"sup", b"key", b"before".to_vec(), &[])
            .await
            .unwrap();
        let mut req = RequestFrame {
            op: "inject_fault".into(),
            bucket: Some(ByteBuf::from(b"sup".as_slice())),
            key: Some(ByteBuf::from(b"key".as_slice())),
            ..Default::default()
        };
        let a = c.request(req.clone()).await.unwrap();
        assert!(a.ok, "{a:?}");
        // The very next request to that partition succeeds with the data intact.
        let got = c.get(b"sup", b"key").await.unwrap();
        assert_eq!(got.values, vec![b"before".to_vec()]);
        c.put(b"sup", b"key", b"after".to_vec(), &got.context)
            .await
            .unwrap();
        assert_eq!(
            c.get(b"sup", b"key").await.unwrap().values,
            vec![b"after".to_vec()]
        );
        // And it happens again after a second panic (within the restart budget).
        req.id = 0;
        assert!(c.request(req).await.unwrap().ok);
        assert_eq!(
            c.get(b"sup", b"key").await.unwrap().values,
            vec![b"after".to_vec()]
        );
    });
    wait_until("the restart to be logged", Duration::from_secs(10), || {
        let restarts = node
            .log()
            .lines()
            .filter(|l| l.contains("failed; restarting it") && l.contains("actor=\"vnode\""))
            .count();
        (restarts >= 2).then_some(())
    });
    assert!(node.is_running());
}

#[test]
fn fault_injection_is_refused_unless_enabled() {
    let node = NodeProcess::start(&["--partitions", "8"]);
    rt().block_on(async {
        let c = Client::connect(node.addr).await.unwrap();
        let a = c
            .request(RequestFrame {
                op: "inject_fault".into(),
                bucket: Some(ByteBuf::from(b"b".as_slice())),
                key: Some(ByteBuf::from(b"k".as_slice())),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(a.code.as_deref(), Some("unknown_op"));
        c.ping().await.unwrap();
    });
}

#[test]
fn connections_over_the_limit_are_refused_with_an_error() {
    let node = NodeProcess::start(&["--partitions", "8", "--max-connections", "2"]);
    let mut a = connect(&node);
    let mut b = connect(&node);
    ping_ok(&mut a);
    ping_ok(&mut b);
    let mut c = connect(&node);
    let refused = read_answer(&mut c).expect("an answer before the close");
    assert_eq!(refused.code.as_deref(), Some("too_many_connections"));
    drop(a);
    // Once one closes, a new connection is served.
    wait_until(
        "a connection slot to free up",
        Duration::from_secs(10),
        || {
            let mut d = connect(&node);
            d.write_all(&encode_frame(&RequestFrame {
                id: 1,
                op: "ping".into(),
                ..Default::default()
            }))
            .ok()?;
            read_answer(&mut d).filter(|r| r.ok)
        },
    );
    ping_ok(&mut b);
}

#[test]
fn cli_round_trip() {
    let node = NodeProcess::start(&["--partitions", "8"]);
    let (code, out, _) = node.cli(&["ping"], None);
    assert_eq!(code, 0);
    assert!(String::from_utf8_lossy(&out).contains("pong"));

    // `cluster status` shows the members, the self-healing counters and the LMDB map use.
    let (code, out, err) = node.cli(&["cluster", "status"], None);
    assert_eq!(code, 0, "{err}");
    let status = String::from_utf8_lossy(&out);
    for line in [
        "hints: delivered 0, pending 0, stored 0",
        "repair: ",
        "replica: batched_calls 0, batches 0",
        "strong: batches 0, conflicts 0, fast_writes 0, forwarded 0, indeterminate 0, ops 0, quorum_reads 0, round_trips 0",
        "restarts: ",
        "lmdb: data ",
    ] {
        assert!(status.contains(line), "{line:?} missing from:\n{status}");
    }

    assert_eq!(node.cli(&["put", "cli", "k1", "from-arg"], None).0, 0);
    assert_eq!(node.cli(&["get", "cli", "k1"], None).1, b"from-arg");

    // Value from stdin, binary-safe, replacing the old value (put reads the context first).
    let binary: Vec<u8> = (0..=255u8).collect();
    assert_eq!(node.cli(&["put", "cli", "k1"], Some(&binary)).0, 0);
    assert_eq!(node.cli(&["get", "cli", "k1"], None).1, binary);

    // Value from a file.
    let f = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(f.path(), b"from-file").unwrap();
    let path = f.path().to_str().unwrap();
    assert_eq!(node.cli(&["put", "cli", "k2", "--file", path], None).0, 0);
    assert_eq!(node.cli(&["get", "cli", "k2"], None).1, b"from-file");

    // Siblings are said clearly; --json shows values and context.
    assert_eq!(
        node.cli(&["put", "--blind", "cli", "k2", "other"], None).0,
        0
    );
    let (code, out, err) = node.cli(&["get", "cli", "k2"], None);
    assert_eq!(code, 0);
    assert!(err.contains("2 siblings"), "{err}");
    let out = String::from_utf8_lossy(&out);
    assert!(out.contains("from-file") && out.contains("other"), "{out}");
    let (_, json, _) = node.cli(&["get", "--json", "cli", "k2"], None);
    let v: serde_json::Value = serde_json::from_slice(&json).unwrap();
    assert_eq!(v["values"].as_array().unwrap().len(), 2);
    let ctx = v["context"].as_str().unwrap().to_string();
    assert_eq!(
        node.cli(&["put", "--context", &ctx, "cli", "k2", "merged"], None)
            .0,
        0
    );
    assert_eq!(node.cli(&["get", "cli", "k2"], None).1, b"merged");

    // Delete, then a missing key exits 1 and says so.
    assert_eq!(node.cli(&["delete", "cli", "k1"], None).0, 0);
    let (code, out, err) = node.cli(&["get", "cli", "k1"], None);
    assert_eq!(code, 1);
    assert!(out.is_empty());
    assert!(err.contains("not found"), "{err}");
    assert_eq!(node.cli(&["delete", "cli", "never"], None).0, 1);

    // A strong bucket, made so before its first write. Its proposer's counters show in
    // `cluster status`: a first put takes both phases, a read one round of acceptor reads.
    let (code, _, err) = node.cli(&["bucket", "set", "locks", "consistency=strong"], None);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        node.cli(&["put", "--blind", "locks", "l1", "held"], None).0,
        0
    );
    assert_eq!(node.cli(&["get", "locks", "l1"], None).1, b"held");
    let (_, out, _) = node.cli(&["cluster", "status"], None);
    let status = String::from_utf8_lossy(&out);
    let line = "strong: batches 1, conflicts 0, fast_writes 0, forwarded 0, indeterminate 0, ops 2, quorum_reads 1, round_trips 3";
    assert!(status.contains(line), "{line:?} missing from:\n{status}");

    // Bad input from the CLI gets the server's message.
    let long = "k".repeat(500);
    let (code, _, err) = node.cli(&["put", "cli", &long, "v"], None);
    assert_ne!(code, 0);
    assert!(err.contains("442"), "{err}");
}

#[test]
fn config_file_keys_match_the_flags() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("ringkv.toml");
    std::fs::write(
        &cfg,
        "partitions = 16\nmax-value-bytes = 2048\nrequest-timeout-ms = 3000\n",
    )
    .unwrap();
    let node = NodeProcess::start(&["--config", cfg.to_str().unwrap()]);
    let (code, _, err) = node.cli(&["put", "cfg", "k", &"v".repeat(3000)], None);
    assert_ne!(code, 0);
    assert!(err.contains("2048"), "{err}");
    assert!(node.log().contains("partitions=16"), "{}", node.log());

    // An unknown key is refused with a clear message.
    std::fs::write(&cfg, "partitons = 16\n").unwrap();
    let out = std::process::Command::new(ringkv_tests::ringkv_bin())
        .args(["start", "--config", cfg.to_str().unwrap(), "--data-dir"])
        .arg(dir.path().join("data"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("partitons"));
}

#[test]
fn load_stores_and_verifies_a_tree() {
    let node = NodeProcess::start(&[]);
    let tree = tempfile::tempdir().unwrap();
    for i in 0..50u32 {
        let sub = tree.path().join(format!("d{}", i % 5));
        std::fs::create_dir_all(&sub).unwrap();
        std::fs::write(sub.join(format!("f{i}")), vec![i as u8; (i as usize) * 997]).unwrap();
    }
    let tree_path = tree.path().to_str().unwrap();
    for _ in 0..2 {
        // Twice: a second load replaces values instead of making siblings.
        let (code, out, err) = node.cli(&["load", "--quiet", tree_path], None);
        let out = String::from_utf8_lossy(&out);
        assert_eq!(code, 0, "{out}\n{err}");
        assert!(out.contains("stored   50 files"), "{out}");
        assert!(out.contains("0 mismatched"), "{out}");
    }
    let (_, value, _) = node.cli(&["get", "files", "d3/f13"], None);
    assert_eq!(value, vec![13u8; 13 * 997]);
}

#[test]
fn python_client_written_from_protocol_md() {
    let node = NodeProcess::start(&[]);
    run_python(
        "test_protocol.py",
        &["--addr".into(), node.addr.to_string()],
    );
}

/// A client command whose reader goes away (`ringkv cluster status | head -1`) ends quietly,
/// as Unix tools do on a closed pipe, instead of panicking on the failed write.
#[test]
fn a_client_command_writing_to_a_closed_pipe_does_not_panic() {
    use std::os::unix::process::ExitStatusExt;
    let node = NodeProcess::start(&[]);
    for _ in 0..3 {
        let mut child = std::process::Command::new(ringkv_tests::ringkv_bin())
            .args(["cluster", "status", "--addr", &node.addr.to_string()])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // The reader is gone before the answer comes back.
        drop(child.stdout.take());
        let out = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!err.contains("panicked"), "{err}");
        assert!(
            out.status.success() || out.status.signal() == Some(libc::SIGPIPE),
            "{:?}: {err}",
            out.status
        );
    }
}
