//! The protocol as written: one real `ringkv` process answers exactly what `api/PROTOCOL.md`
//! says for requests at the edges of the spec (shapes that are not a map with string keys,
//! trailing bytes, bucket limits on the admin ops, quorum rules, tampered contexts, and ids
//! behind unreadable fields). Requests are raw frames on a plain socket, as a client in
//! another language would send them.

use ringkv_api::protocol::ResponseFrame;
use ringkv_tests::NodeProcess;
use serde::Serialize;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// A client connection speaking raw frames.
struct Conn(TcpStream);

impl Conn {
    fn open(node: &NodeProcess) -> Conn {
        let s = TcpStream::connect(node.addr).expect("connect to the node");
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        Conn(s)
    }

    /// Sends `body` as one frame and reads the answer.
    fn call(&mut self, body: &[u8]) -> ResponseFrame {
        let mut frame = (body.len() as u32).to_be_bytes().to_vec();
        frame.extend_from_slice(body);
        self.0.write_all(&frame).expect("send a frame");
        let mut len = [0u8; 4];
        self.0
            .read_exact(&mut len)
            .expect("an answer (the node closed the connection or died)");
        let mut answer = vec![0u8; u32::from_be_bytes(len) as usize];
        self.0.read_exact(&mut answer).expect("the answer's body");
        rmp_serde::from_slice(&answer).expect("the answer decodes")
    }

    /// Sends `body` and expects an error answer with `code` and `id`; returns its message.
    fn expect_error(&mut self, body: &[u8], id: u64, code: &str) -> String {
        let a = self.call(body);
        assert!(
            !a.ok && a.code.as_deref() == Some(code) && a.id == id,
            "expected {code} for id {id}, got {a:?}"
        );
        a.message.expect("error answers carry a message")
    }

    /// The connection still serves requests.
    fn ping(&mut self) {
        let a = self.call(&map(&[("id", v(4242u64)), ("op", v("ping"))]));
        assert!(a.ok && a.id == 4242, "ping after an error: {a:?}");
    }
}

/// A msgpack value.
fn v<T: Serialize>(value: T) -> Vec<u8> {
    rmp_serde::to_vec(&value).unwrap()
}

/// A msgpack bin value.
fn bin(bytes: &[u8]) -> Vec<u8> {
    v(serde_bytes::Bytes::new(bytes))
}

/// A msgpack map of `(key, encoded value)`, keys as str, in the given order.
fn map(entries: &[(&str, Vec<u8>)]) -> Vec<u8> {
    assert!(entries.len() < 16, "fixmap only");
    let mut out = vec![0x80 | entries.len() as u8];
    for (key, value) in entries {
        out.extend(v(key));
        out.extend_from_slice(value);
    }
    out
}

fn put(id: u64, key: &[u8], value: &[u8], context: &[u8]) -> Vec<u8> {
    map(&[
        ("id", v(id)),
        ("op", v("put")),
        ("bucket", bin(b"conf")),
        ("key", bin(key)),
        ("value", bin(value)),
        ("context", bin(context)),
    ])
}

fn get(id: u64, key: &[u8]) -> Vec<u8> {
    map(&[
        ("id", v(id)),
        ("op", v("get")),
        ("bucket", bin(b"conf")),
        ("key", bin(key)),
    ])
}

/// The values and context of a successful get.
fn fetched(a: ResponseFrame) -> (Vec<Vec<u8>>, Vec<u8>) {
    assert!(a.ok, "{a:?}");
    (
        a.values
            .unwrap()
            .into_iter()
            .map(|b| b.into_vec())
            .collect(),
        a.context.unwrap().into_vec(),
    )
}

#[test]
fn arrays_and_maps_without_string_keys_are_malformed_requests() {
    let node = NodeProcess::start(&[]);
    let mut c = Conn::open(&node);
    // [1, "ping"] would be the fields `id` and `op` by position.
    c.expect_error(&v((1u64, "ping")), 0, "malformed_request");
    c.ping();
    // {0: 1, 1: "ping"} would be the same fields by index.
    let msg = c.expect_error(b"\x82\x00\x01\x01\xa4ping", 0, "malformed_request");
    assert!(msg.contains("string keys"), "{msg}");
    c.ping();
    // A readable id is answered even when another key is an integer.
    let mut body = map(&[("id", v(17u64)), ("op", v("ping"))]);
    body[0] += 1;
    body.extend(b"\x03\x01");
    c.expect_error(&body, 17, "malformed_request");
    c.ping();
}

#[test]
fn trailing_bytes_after_the_map_are_malformed_requests_with_the_id() {
    let node = NodeProcess::start(&[]);
    let mut c = Conn::open(&node);
    let mut body = map(&[("id", v(21u64)), ("op", v("ping"))]);
    body.push(0xc0);
    let msg = c.expect_error(&body, 21, "malformed_request");
    assert!(msg.contains("trailing"), "{msg}");
    c.ping();
    // A second request glued behind the first in the same frame is not run.
    let mut body = get(22, b"k");
    body.extend(put(23, b"k", b"smuggled", b""));
    c.expect_error(&body, 22, "malformed_request");
    let (values, _) = fetched(c.call(&get(24, b"k")));
    assert!(values.is_empty(), "the glued put ran: {values:?}");
}

#[test]
fn error_answers_keep_a_readable_id_past_deeply_nested_fields() {
    let node = NodeProcess::start(&[]);
    let mut c = Conn::open(&node);
    for depth in [100usize, 1100, 100_000] {
        let mut deep = vec![0x91; depth];
        deep.push(0xc0);
        for (id, body) in [
            (
                41u64,
                map(&[("id", v(41u64)), ("op", v("ping")), ("x", deep.clone())]),
            ),
            (
                42,
                map(&[("op", v("ping")), ("x", deep.clone()), ("id", v(42u64))]),
            ),
        ] {
            let msg = c.expect_error(&body, id, "malformed_request");
            assert!(msg.contains("nested"), "{msg}");
            c.ping();
        }
    }
    // An id that is not an unsigned integer cannot be read: 0.
    c.expect_error(
        &map(&[("id", v(-5i64)), ("op", v("ping"))]),
        0,
        "malformed_request",
    );
    c.ping();
}

#[test]
fn request_quorums_outside_the_rule_are_invalid_quorum() {
    let node = NodeProcess::start(&[]);
    let mut c = Conn::open(&node);
    let cases: &[(u64, u64, u64)] = &[
        (4, 2, 2),
        (255, 1, 1),
        (256, 1, 1),
        (1 << 40, 1, 1),
        (0, 1, 1),
        (3, 0, 2),
        (3, 2, 0),
        (2, 3, 1),
        (2, 1, 3),
    ];
    for (i, &(n, r, w)) in cases.iter().enumerate() {
        let id = 100 + i as u64;
        for op in ["get", "put", "delete"] {
            let body = map(&[
                ("id", v(id)),
                ("op", v(op)),
                ("bucket", bin(b"conf")),
                ("key", bin(b"q")),
                ("value", bin(b"v")),
                ("n", v(n)),
                ("r", v(r)),
                ("w", v(w)),
            ]);
            let msg = c.expect_error(&body, id, "invalid_quorum");
            assert!(msg.contains("1 <= r, w <= n <= 3"), "{msg}");
            assert!(msg.contains(&format!("n={n} r={r} w={w}")), "{msg}");
        }
    }
    // The bucket properties read any unsigned integer too.
    for n in [4u64, 256, 1 << 40] {
        let body = map(&[
            ("id", v(n)),
            ("op", v("bucket_set")),
            ("bucket", bin(b"conf")),
            ("props", map(&[("n", v(n))])),
        ]);
        let msg = c.expect_error(&body, n, "invalid_quorum");
        assert!(msg.contains(&n.to_string()), "{msg}");
    }
    // Inside the rule, a cluster smaller than n keeps as many replicas as it has nodes.
    let body = map(&[
        ("id", v(200u64)),
        ("op", v("put")),
        ("bucket", bin(b"conf")),
        ("key", bin(b"q")),
        ("value", bin(b"v")),
        ("n", v(3u8)),
        ("r", v(3u8)),
        ("w", v(3u8)),
    ]);
    let a = c.call(&body);
    assert!(a.ok && a.id == 200, "{a:?}");
}

#[test]
fn bucket_ops_check_the_bucket_length() {
    let node = NodeProcess::start(&[]);
    let mut c = Conn::open(&node);
    let too_long = [b'b'; 65];
    for (id, bucket) in [(31u64, &b""[..]), (32, &too_long[..])] {
        let msg = c.expect_error(
            &map(&[
                ("id", v(id)),
                ("op", v("bucket_get")),
                ("bucket", bin(bucket)),
            ]),
            id,
            "invalid_bucket",
        );
        assert!(msg.contains("64"), "{msg}");
        c.expect_error(
            &map(&[
                ("id", v(id)),
                ("op", v("bucket_set")),
                ("bucket", bin(bucket)),
                ("props", map(&[("n", v(1u8)), ("r", v(1u8)), ("w", v(1u8))])),
            ]),
            id,
            "invalid_bucket",
        );
    }
    // 1 and 64 bytes are fine.
    for bucket in [&b"b"[..], &[b'b'; 64][..]] {
        let a = c.call(&map(&[
            ("id", v(33u64)),
            ("op", v("bucket_get")),
            ("bucket", bin(bucket)),
        ]));
        assert!(a.ok, "{a:?}");
    }
}

/// The staging ops (`cluster_set`, `cluster_replace`, `cluster_revert`) answer as
/// PROTOCOL.md says: a missing field is `malformed_request` naming it; a refused change
/// (unknown node, capacity 0, nothing to set, a node replacing itself) is `cluster_error`
/// and stages nothing; so is a plan that would leave fewer nodes than replicas.
#[test]
fn staging_ops_refuse_bad_changes_with_the_documented_codes() {
    let node = NodeProcess::start(&[]);
    let mut c = Conn::open(&node);
    let status = c.call(&map(&[("id", v(40u64)), ("op", v("cluster_status"))]));
    let me = status.info.expect("status info")["node"]
        .as_str()
        .unwrap()
        .to_string();
    let set = |id: u64, extra: &[(&str, Vec<u8>)]| {
        let mut fields = vec![("id", v(id)), ("op", v("cluster_set"))];
        fields.extend(extra.iter().cloned());
        map(&fields)
    };
    let msg = c.expect_error(&set(41, &[("capacity", v(2u8))]), 41, "malformed_request");
    assert!(msg.contains("node"), "{msg}");
    let msg = c.expect_error(
        &set(42, &[("node", v(&me)), ("capacity", v(0u8))]),
        42,
        "cluster_error",
    );
    assert!(msg.contains("capacity must be 1"), "{msg}");
    c.expect_error(
        &set(43, &[("node", v(&me)), ("capacity", v(-1i8))]),
        43,
        "malformed_request",
    );
    let msg = c.expect_error(&set(44, &[("node", v(&me))]), 44, "cluster_error");
    assert!(msg.contains("nothing to set"), "{msg}");
    let msg = c.expect_error(
        &set(45, &[("node", v("nobody")), ("zone", v("z9"))]),
        45,
        "cluster_error",
    );
    assert!(msg.contains("nobody"), "{msg}");
    let replace = |id: u64, extra: &[(&str, Vec<u8>)]| {
        let mut fields = vec![("id", v(id)), ("op", v("cluster_replace"))];
        fields.extend(extra.iter().cloned());
        map(&fields)
    };
    let msg = c.expect_error(&replace(46, &[("node", v(&me))]), 46, "malformed_request");
    assert!(msg.contains("replacement"), "{msg}");
    let msg = c.expect_error(
        &replace(47, &[("node", v(&me)), ("replacement", v(&me))]),
        47,
        "cluster_error",
    );
    assert!(msg.contains("itself"), "{msg}");
    let msg = c.expect_error(
        &replace(48, &[("node", v(&me)), ("replacement", v("nobody"))]),
        48,
        "cluster_error",
    );
    assert!(msg.contains("nobody"), "{msg}");
    // Nothing was staged by the refused changes.
    let plan = c.call(&map(&[("id", v(49u64)), ("op", v("cluster_plan"))]));
    assert!(plan.ok, "{plan:?}");
    assert_eq!(plan.info.unwrap()["staged"]["roles"], serde_json::json!({}));
    // A valid change is answered with everything staged; revert with what it dropped.
    let a = c.call(&set(50, &[("node", v(&me)), ("capacity", v(2u8))]));
    assert!(a.ok, "{a:?}");
    assert_eq!(a.info.unwrap()["roles"][&me]["capacity"], 2);
    // The only node leaving would leave 0 nodes for 1 replica: refused by plan and commit.
    let a = c.call(&map(&[
        ("id", v(51u64)),
        ("op", v("cluster_leave")),
        ("node", v(&me)),
    ]));
    assert!(a.ok, "{a:?}");
    for (id, op) in [(52u64, "cluster_plan"), (53, "cluster_commit")] {
        let msg = c.expect_error(&map(&[("id", v(id)), ("op", v(op))]), id, "cluster_error");
        assert!(msg.contains("leaves 0 node(s)"), "{op}: {msg}");
    }
    let a = c.call(&map(&[("id", v(54u64)), ("op", v("cluster_revert"))]));
    assert!(a.ok, "{a:?}");
    let info = a.info.unwrap();
    assert_eq!(info["dropped"]["roles"][&me]["capacity"], 2, "{info}");
    assert_eq!(info["active_again"], serde_json::json!([me]), "{info}");
    c.ping();
}

#[test]
fn a_context_with_one_bit_flipped_is_bad_context_and_writes_nothing() {
    let node = NodeProcess::start(&[]);
    let mut c = Conn::open(&node);
    assert!(c.call(&put(1, b"ctx", b"one", b"")).ok);
    let (_, context) = fetched(c.call(&get(2, b"ctx")));
    assert!(!context.is_empty());
    for byte in 0..context.len() {
        for bit in 0..8 {
            let mut tampered = context.clone();
            tampered[byte] ^= 1 << bit;
            let id = 1000 + (byte * 8 + bit) as u64;
            let msg = c.expect_error(&put(id, b"ctx", b"two", &tampered), id, "bad_context");
            assert!(
                msg.contains("modified") && msg.contains("another cluster"),
                "{msg}"
            );
            let del = map(&[
                ("id", v(id)),
                ("op", v("delete")),
                ("bucket", bin(b"conf")),
                ("key", bin(b"ctx")),
                ("context", bin(&tampered)),
            ]);
            c.expect_error(&del, id, "bad_context");
        }
    }
    // Cut short or lengthened, too.
    c.expect_error(
        &put(3, b"ctx", b"two", &context[..context.len() - 1]),
        3,
        "bad_context",
    );
    let mut longer = context.clone();
    longer.push(0);
    c.expect_error(&put(4, b"ctx", b"two", &longer), 4, "bad_context");
    // Nothing was written: still the one value, and its context still works.
    let (values, now) = fetched(c.call(&get(5, b"ctx")));
    assert_eq!(values, vec![b"one".to_vec()]);
    assert_eq!(now, context);
    assert!(c.call(&put(6, b"ctx", b"two", &context)).ok);
    let (values, _) = fetched(c.call(&get(7, b"ctx")));
    assert_eq!(values, vec![b"two".to_vec()]);
}

#[test]
fn return_body_contexts_are_sealed_and_empty_contexts_stay_blind_writes() {
    let node = NodeProcess::start(&[]);
    let mut c = Conn::open(&node);
    let mut body = put(1, b"rb", b"one", b"");
    body[0] += 1;
    body.extend(v("return_body"));
    body.extend(v(true));
    let (values, context) = fetched(c.call(&body));
    assert_eq!(values, vec![b"one".to_vec()]);
    // The returned context is accepted, and no copy of it with a flipped bit is.
    for bit in 0..context.len() * 8 {
        let mut tampered = context.clone();
        tampered[bit / 8] ^= 1 << (bit % 8);
        c.expect_error(&put(2, b"rb", b"two", &tampered), 2, "bad_context");
    }
    assert!(c.call(&put(3, b"rb", b"two", &context)).ok);
    // An empty context is a blind write: a sibling beside "two".
    assert!(c.call(&put(4, b"rb", b"three", b"")).ok);
    let (mut values, _) = fetched(c.call(&get(5, b"rb")));
    values.sort();
    assert_eq!(values, vec![b"three".to_vec(), b"two".to_vec()]);
}

#[test]
fn a_context_from_another_cluster_is_bad_context() {
    let ours = NodeProcess::start(&[]);
    let theirs = NodeProcess::start_on("127.0.0.1", &[], &[("RINGKV_COOKIE", "another-cookie")]);
    let (mut a, mut b) = (Conn::open(&ours), Conn::open(&theirs));
    assert!(b.call(&put(1, b"x", b"theirs", b"")).ok);
    let (_, foreign) = fetched(b.call(&get(2, b"x")));
    assert!(a.call(&put(3, b"x", b"ours", b"")).ok);
    let msg = a.expect_error(&put(4, b"x", b"ours", &foreign), 4, "bad_context");
    assert!(msg.contains("another cluster"), "{msg}");
}

#[test]
fn conditional_writes_answer_condition_failed_and_the_cli_flags_use_them() {
    let node = NodeProcess::start(&[]);
    let mut c = Conn::open(&node);
    let conditional = |id: u64, op: &str, key: &[u8], context: &[u8], field: &str| {
        let mut entries = vec![
            ("id", v(id)),
            ("op", v(op)),
            ("bucket", bin(b"conf")),
            ("key", bin(key)),
            ("context", bin(context)),
            (field, v(true)),
        ];
        if op == "put" {
            entries.push(("value", bin(format!("v{id}").as_bytes())));
        }
        map(&entries)
    };
    // if_none_match: creates an absent key, refuses a present one.
    assert!(
        c.call(&conditional(1, "put", b"c1", b"", "if_none_match"))
            .ok
    );
    let msg = c.expect_error(
        &conditional(2, "put", b"c1", b"", "if_none_match"),
        2,
        "condition_failed",
    );
    assert!(msg.contains("if_none_match"), "{msg}");
    let (values, stale) = fetched(c.call(&get(3, b"c1")));
    assert_eq!(values, vec![b"v1".to_vec()]);
    // if_match: refuses a stale context, takes the fresh one.
    assert!(c.call(&put(4, b"c1", b"v4", &stale)).ok);
    let msg = c.expect_error(
        &conditional(5, "put", b"c1", &stale, "if_match"),
        5,
        "condition_failed",
    );
    assert!(msg.contains("if_match"), "{msg}");
    let (values, fresh) = fetched(c.call(&get(6, b"c1")));
    assert_eq!(
        values,
        vec![b"v4".to_vec()],
        "a refused write stores nothing"
    );
    c.expect_error(
        &conditional(7, "delete", b"c1", &stale, "if_match"),
        7,
        "condition_failed",
    );
    assert!(
        c.call(&conditional(8, "delete", b"c1", &fresh, "if_match"))
            .ok
    );
    // A deleted key is absent for if_none_match.
    assert!(
        c.call(&conditional(9, "put", b"c1", b"", "if_none_match"))
            .ok
    );
    // Both conditions at once are a malformed request.
    let mut both = conditional(10, "put", b"c1", b"", "if_none_match");
    both[0] += 1;
    both.extend(v("if_match"));
    both.extend(v(true));
    let msg = c.expect_error(&both, 10, "malformed_request");
    assert!(msg.contains("mutually exclusive"), "{msg}");
    c.ping();

    // The CLI: refused conditions exit 3 and name the code.
    let (status, _, err) = node.cli(&["put", "conf", "cli", "one", "--if-none-match"], None);
    assert_eq!(status, 0, "{err}");
    let (status, _, err) = node.cli(&["put", "conf", "cli", "two", "--if-none-match"], None);
    assert_eq!(status, 3, "{err}");
    assert!(err.contains("condition_failed"), "{err}");
    let (_, out, _) = node.cli(&["get", "conf", "cli", "--json"], None);
    let read: serde_json::Value = serde_json::from_slice(&out).unwrap();
    let stale = read["context"].as_str().unwrap().to_string();
    let (status, _, err) = node.cli(&["put", "conf", "cli", "three", "--context", &stale], None);
    assert_eq!(status, 0, "{err}");
    let (status, _, err) = node.cli(
        &[
            "put",
            "conf",
            "cli",
            "late",
            "--if-match",
            "--context",
            &stale,
        ],
        None,
    );
    assert_eq!(status, 3, "{err}");
    assert!(
        err.contains("condition_failed") && err.contains("if_match"),
        "{err}"
    );
    // Without --context it reads the current context first.
    let (status, _, err) = node.cli(&["put", "conf", "cli", "four", "--if-match"], None);
    assert_eq!(status, 0, "{err}");
    let (_, value, _) = node.cli(&["get", "conf", "cli"], None);
    assert_eq!(value, b"four");
    let (status, _, err) = node.cli(
        &["put", "conf", "cli", "x", "--if-match", "--if-none-match"],
        None,
    );
    assert_eq!(status, 2, "clap refuses both flags: {err}");
}

/// The keys of a JSON object, sorted.
fn keys_of(v: &serde_json::Value) -> Vec<String> {
    let mut keys: Vec<String> = v
        .as_object()
        .unwrap_or_else(|| panic!("not an object: {v}"))
        .keys()
        .cloned()
        .collect();
    keys.sort();
    keys
}

fn sorted(names: &[&str]) -> Vec<String> {
    let mut out: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    out.sort();
    out
}

/// `explain` answers the `info` map PROTOCOL.md documents, field for field, and checks its
/// bucket and key as `get` does.
#[test]
fn explain_answers_the_documented_shape_and_checks_its_input() {
    let node = NodeProcess::start(&[]);
    let mut c = Conn::open(&node);
    assert!(c.call(&put(60, b"k", b"hello", b"")).ok);
    let a = c.call(&map(&[
        ("id", v(61u64)),
        ("op", v("explain")),
        ("bucket", v("conf")),
        ("key", v("k")),
        // Over the 60 s most: lowered to it, not refused (and never an overflow).
        ("timeout_ms", v(u64::MAX)),
    ]));
    assert!(a.ok && a.id == 61, "{a:?}");
    let info = a.info.expect("explain answers in info");
    assert_eq!(
        keys_of(&info),
        sorted(&[
            "node",
            "now_ms",
            "bucket",
            "key",
            "partition",
            "partitions",
            "consistency",
            "n",
            "sloppy_quorum",
            "layout_version",
            "preference_list",
            "pending",
            "fallbacks",
            "replicas",
            "hints",
            "hints_more",
            "hints_incomplete",
            "unreachable",
            "exchanges",
        ])
    );
    assert_eq!(
        (info["bucket"].as_str(), info["key"].as_str()),
        (Some("conf"), Some("k"))
    );
    assert_eq!(info["n"], 1, "a single node keeps one replica");
    let me = &info["preference_list"][0];
    assert_eq!(keys_of(me), sorted(&["node", "up", "phi", "reachable"]));
    let row = &info["replicas"][0];
    assert_eq!(keys_of(row), sorted(&["node", "status", "record"]));
    assert_eq!(row["status"], "ok");
    let record = &row["record"];
    assert_eq!(
        keys_of(record),
        sorted(&[
            "clock",
            "clock_more",
            "siblings",
            "live",
            "tombstone",
            "listed",
            "siblings_more",
            "bytes",
        ])
    );
    assert_eq!(
        keys_of(&record["listed"][0]),
        sorted(&[
            "dot",
            "tombstone",
            "size",
            "stored_bytes",
            "codec",
            "large",
            "timestamp_ms",
            "expired",
        ])
    );
    assert_eq!(record["listed"][0]["size"], 5);
    // A key never written: its replica holds no record.
    let a = c.call(&map(&[
        ("id", v(62u64)),
        ("op", v("explain")),
        ("bucket", bin(b"conf")),
        ("key", bin(b"never")),
    ]));
    let info = a.info.expect("info");
    assert_eq!(keys_of(&info["replicas"][0]), sorted(&["node", "status"]));
    assert_eq!(info["replicas"][0]["status"], "no_record");

    let explain = |id: u64, bucket: &[u8], key: &[u8]| {
        map(&[
            ("id", v(id)),
            ("op", v("explain")),
            ("bucket", bin(bucket)),
            ("key", bin(key)),
        ])
    };
    c.expect_error(&explain(63, b"", b"k"), 63, "invalid_bucket");
    c.expect_error(&explain(64, &[b'b'; 65], b"k"), 64, "invalid_bucket");
    c.expect_error(&explain(65, b"\x00sys", b"k"), 65, "invalid_bucket");
    c.expect_error(&explain(66, b"b", b""), 66, "invalid_key");
    c.expect_error(&explain(67, b"b", &[b'k'; 443]), 67, "invalid_key");
    let msg = c.expect_error(
        &map(&[
            ("id", v(68u64)),
            ("op", v("explain")),
            ("bucket", bin(b"b")),
        ]),
        68,
        "malformed_request",
    );
    assert!(msg.contains("key"), "{msg}");
    c.ping();
}

/// `layout` answers the `info` map PROTOCOL.md documents; a request's `layout` field gets the
/// node's version back exactly when it differs (on error answers too), and nothing otherwise;
/// and the partition PROTOCOL.md's formula gives is the one the node places the key in.
#[test]
fn layout_answers_the_documented_shape_and_answers_carry_the_version() {
    let node = NodeProcess::start(&[]);
    let mut c = Conn::open(&node);
    let a = c.call(&map(&[("id", v(70u64)), ("op", v("layout"))]));
    assert!(a.ok && a.id == 70 && a.layout.is_none(), "{a:?}");
    let info = a.info.expect("layout answers in info");
    assert_eq!(
        keys_of(&info),
        sorted(&[
            "node",
            "version",
            "layout_version",
            "partitions",
            "nodes",
            "preference_lists",
        ])
    );
    let version = info["version"].as_u64().expect("version");
    assert!(version > 0);
    assert_eq!(info["layout_version"], version);
    let q = info["partitions"].as_u64().expect("partitions");
    assert_eq!(q, 64);
    let nodes = info["nodes"].as_array().expect("nodes");
    assert_eq!(nodes.len(), 1);
    assert_eq!(keys_of(&nodes[0]), sorted(&["name", "client_addr", "up"]));
    assert_eq!(nodes[0]["up"], true);
    // The address the node bound (the harness starts it on port 0).
    assert_eq!(nodes[0]["client_addr"], node.addr.to_string());
    let lists = info["preference_lists"].as_array().expect("lists");
    assert_eq!(lists.len() as u64, q);
    assert!(lists.iter().all(|l| l == &serde_json::json!([0])));

    // The formula of PROTOCOL.md against the node's own placement (explain's partition).
    for k in ["alice", "bob", "k-17"] {
        let mut bytes = vec![4u8];
        bytes.extend_from_slice(b"conf");
        bytes.extend_from_slice(k.as_bytes());
        let want = xxhash_rust::xxh3::xxh3_64(&bytes) >> (64 - 6);
        let a = c.call(&map(&[
            ("id", v(71u64)),
            ("op", v("explain")),
            ("bucket", v("conf")),
            ("key", v(k)),
        ]));
        assert_eq!(a.info.expect("info")["partition"], want, "key {k}");
    }
    assert_eq!(
        ringkv_api::protocol::ring::partition_for(b"users", b"alice", 64),
        18
    );

    // The version comes back only when it differs.
    let get = |id: u64, layout: Option<u64>| {
        let mut entries = vec![
            ("id", v(id)),
            ("op", v("get")),
            ("bucket", v("conf")),
            ("key", v("k")),
        ];
        if let Some(l) = layout {
            entries.push(("layout", v(l)));
        }
        map(&entries)
    };
    let a = c.call(&get(72, None));
    assert!(a.ok && a.layout.is_none(), "{a:?}");
    let a = c.call(&get(73, Some(version)));
    assert!(a.ok && a.layout.is_none(), "{a:?}");
    let a = c.call(&get(74, Some(version + 5)));
    assert!(a.ok && a.layout == Some(version), "{a:?}");
    let a = c.call(&get(75, Some(0)));
    assert_eq!(a.layout, Some(version), "{a:?}");
    // On error answers and pings too.
    let a = c.call(&map(&[
        ("id", v(76u64)),
        ("op", v("get")),
        ("bucket", v("conf")),
        ("key", bin(b"")),
        ("layout", v(version + 1)),
    ]));
    assert_eq!(
        (a.ok, a.code.as_deref(), a.layout),
        (false, Some("invalid_key"), Some(version))
    );
    let a = c.call(&map(&[
        ("id", v(77u64)),
        ("op", v("ping")),
        ("layout", v(version + 1)),
    ]));
    assert!(a.ok && a.layout == Some(version), "{a:?}");
    // A layout that is not an unsigned integer is a malformed request.
    c.expect_error(
        &map(&[("id", v(78u64)), ("op", v("ping")), ("layout", v("2"))]),
        78,
        "malformed_request",
    );
    c.ping();
}
