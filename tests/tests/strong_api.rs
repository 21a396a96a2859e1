//! Strong buckets through the client protocol, against real `ringkv` processes: the bucket
//! property `consistency` (set on an empty bucket, refused once data exists, never back to
//! eventual), `get`/`put`/`delete`/`cas` semantics, the refusals (`wrong_consistency`,
//! `value_too_large`), `ringkv cas` and `bucket set ... consistency=strong` end to end, and on
//! three nodes: every node reads what any node wrote (forwarding to the key's proposer),
//! concurrent cas increments lose nothing, and with two nodes paused operations answer
//! `no_majority` or `indeterminate`, never a wrong success.

use ringkv_api::client::CasOutcome;
use ringkv_api::protocol::{BucketPropsFrame, ErrorCode, RequestFrame, ResponseFrame};
use ringkv_api::{CallOptions, Client, ClientError, WriteCondition};
use ringkv_tests::{runtime as rt, wait_until, Cluster, NodeProcess};
use serde_bytes::ByteBuf;
use std::time::Duration;

/// Largest value a strong bucket takes with the node's default limits: `max-record-bytes`
/// (6 MiB) less the acceptor state's overhead (`STRONG_OVERHEAD`, 64 bytes).
const STRONG_LIMIT: usize = (6 << 20) - 64;

/// `bucket_set` with `consistency` only.
async fn set_consistency(
    c: &Client,
    bucket: &[u8],
    consistency: &str,
) -> Result<serde_json::Value, ClientError> {
    c.admin(RequestFrame {
        op: "bucket_set".into(),
        bucket: Some(ByteBuf::from(bucket)),
        props: Some(BucketPropsFrame {
            consistency: Some(consistency.into()),
            ..Default::default()
        }),
        ..Default::default()
    })
    .await
}

/// `bucket_get`'s `consistency`.
async fn consistency_of(c: &Client, bucket: &[u8]) -> String {
    let info = c
        .admin(RequestFrame {
            op: "bucket_get".into(),
            bucket: Some(ByteBuf::from(bucket)),
            ..Default::default()
        })
        .await
        .unwrap();
    info["consistency"].as_str().unwrap_or("?").to_string()
}

/// A request frame of `op` on `(bucket, key)`.
fn frame(op: &str, bucket: &[u8], key: &[u8]) -> RequestFrame {
    RequestFrame {
        op: op.into(),
        bucket: Some(ByteBuf::from(bucket)),
        key: Some(ByteBuf::from(key)),
        ..Default::default()
    }
}

/// Sends `f` and checks that the answer is the error `code`; returns the answer.
async fn refused(c: &Client, f: RequestFrame, code: ErrorCode) -> ResponseFrame {
    let what = format!("{f:?}");
    let answer = c.request(f).await.unwrap();
    assert!(!answer.ok, "{what} succeeded: {answer:?}");
    assert_eq!(
        answer.code.as_deref(),
        Some(code.as_str()),
        "{what}: {answer:?}"
    );
    answer
}

/// The single value a strong `get` answers (`None`: absent), checking the answer's shape:
/// at most one value and an empty context.
async fn read(c: &Client, bucket: &[u8], key: &[u8]) -> Option<Vec<u8>> {
    let got = c.get(bucket, key).await.unwrap();
    assert!(
        got.context.is_empty(),
        "a strong get answers an empty context"
    );
    assert!(
        got.values.len() <= 1,
        "a strong key has no siblings: {got:?}"
    );
    got.values.into_iter().next()
}

fn opts() -> CallOptions {
    CallOptions::default()
}

/// Bytes that do not compress.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// One node: the property, the operations' semantics, and everything a strong bucket
/// refuses, through the Rust client and raw frames.
#[test]
fn strong_bucket_on_one_node() {
    let node = NodeProcess::start(&[]);
    rt().block_on(async {
        let c = Client::connect(node.addr).await.unwrap();

        // The property: set on an empty bucket, shown by bucket_get.
        let info = set_consistency(&c, b"s", "strong").await.unwrap();
        assert_eq!(info["consistency"], "strong", "{info}");
        assert_eq!(consistency_of(&c, b"s").await, "strong");
        assert_eq!(consistency_of(&c, b"e").await, "eventual");
        // Setting it again (or other properties with it) is no change of consistency.
        set_consistency(&c, b"s", "strong").await.unwrap();
        // Never back to eventual.
        let e = set_consistency(&c, b"s", "eventual").await.unwrap_err();
        assert_eq!(e.error_code(), Some(ErrorCode::ClusterError), "{e}");
        assert!(e.to_string().contains("consistency is fixed"), "{e}");
        // Not on a bucket that holds data, even deleted data (a tombstone is data).
        c.put(b"e", b"k", b"v".to_vec(), &[]).await.unwrap();
        let e = set_consistency(&c, b"e", "strong").await.unwrap_err();
        assert_eq!(e.error_code(), Some(ErrorCode::ClusterError), "{e}");
        assert!(e.to_string().contains("already holds eventual data"), "{e}");
        assert_eq!(consistency_of(&c, b"e").await, "eventual");
        let ctx = c.get(b"e", b"k").await.unwrap().context;
        c.delete(b"e", b"k", &ctx).await.unwrap();
        let e = set_consistency(&c, b"e", "strong").await.unwrap_err();
        assert_eq!(e.error_code(), Some(ErrorCode::ClusterError), "{e}");
        // An unknown value changes nothing.
        let e = set_consistency(&c, b"s", "linearizable").await.unwrap_err();
        assert_eq!(e.error_code(), Some(ErrorCode::MalformedRequest), "{e}");

        // get / put / delete: one value, overwritten in place, no context needed.
        assert_eq!(read(&c, b"s", b"k").await, None);
        c.put(b"s", b"k", b"v1".to_vec(), &[]).await.unwrap();
        assert_eq!(read(&c, b"s", b"k").await, Some(b"v1".to_vec()));
        c.put(b"s", b"k", b"v2".to_vec(), &[]).await.unwrap();
        assert_eq!(read(&c, b"s", b"k").await, Some(b"v2".to_vec()));
        let body = c
            .put_return_body(b"s", b"k", b"v3".to_vec(), &[])
            .await
            .unwrap();
        assert_eq!(body.values, vec![b"v3".to_vec()]);
        c.delete(b"s", b"k", &[]).await.unwrap();
        assert_eq!(read(&c, b"s", b"k").await, None);
        // put with if_none_match is a cas expecting absent; refused, it names the value.
        let create = CallOptions {
            condition: Some(WriteCondition::IfNoneMatch),
            ..opts()
        };
        c.put_with(b"s", b"k", b"first".to_vec(), &[], &create)
            .await
            .unwrap();
        let mut again = frame("put", b"s", b"k");
        again.value = Some(ByteBuf::from(&b"second"[..]));
        again.if_none_match = Some(true);
        let answer = refused(&c, again, ErrorCode::ConditionFailed).await;
        assert_eq!(answer.values, Some(vec![ByteBuf::from(&b"first"[..])]));
        assert_eq!(read(&c, b"s", b"k").await, Some(b"first".to_vec()));

        // cas: create, refuse with the current value, swap, delete, refuse on absent.
        let cas = |expect: Option<&'static [u8]>, new: Option<&'static [u8]>| {
            let c = c.clone();
            async move { c.cas(b"s", b"c", expect, new, &opts()).await.unwrap() }
        };
        assert_eq!(cas(None, Some(b"one")).await, CasOutcome::Swapped);
        let one = CasOutcome::ConditionFailed {
            current: Some(b"one".to_vec()),
        };
        assert_eq!(cas(None, Some(b"two")).await, one);
        assert_eq!(cas(Some(b"zero"), Some(b"two")).await, one);
        assert_eq!(cas(Some(b"zero"), None).await, one);
        assert_eq!(cas(Some(b"one"), Some(b"two")).await, CasOutcome::Swapped);
        assert_eq!(read(&c, b"s", b"c").await, Some(b"two".to_vec()));
        assert_eq!(cas(Some(b"two"), None).await, CasOutcome::Swapped);
        assert_eq!(read(&c, b"s", b"c").await, None);
        let absent = CasOutcome::ConditionFailed { current: None };
        assert_eq!(cas(Some(b"two"), Some(b"three")).await, absent);
        // An empty value is a value, not absence.
        assert_eq!(cas(None, Some(b"")).await, CasOutcome::Swapped);
        let empty = CasOutcome::ConditionFailed {
            current: Some(Vec::new()),
        };
        assert_eq!(cas(None, Some(b"x")).await, empty);
        assert_eq!(cas(Some(b""), None).await, CasOutcome::Swapped);
        // On the wire: condition_failed carries `values`, [] for absent.
        let mut f = frame("cas", b"s", b"c");
        f.expect = Some(ByteBuf::from(&b"nope"[..]));
        let answer = refused(&c, f, ErrorCode::ConditionFailed).await;
        assert_eq!(answer.values, Some(vec![]), "{answer:?}");

        // What strong buckets refuse, with wrong_consistency.
        let mut ttl = frame("put", b"s", b"k");
        ttl.value = Some(ByteBuf::from(&b"v"[..]));
        ttl.ttl_ms = Some(60_000);
        refused(&c, ttl, ErrorCode::WrongConsistency).await;
        let mut if_match = frame("put", b"s", b"k");
        if_match.value = Some(ByteBuf::from(&b"v"[..]));
        if_match.if_match = Some(true);
        refused(&c, if_match, ErrorCode::WrongConsistency).await;
        for condition in [WriteCondition::IfMatch, WriteCondition::IfNoneMatch] {
            let e = c
                .delete_with(
                    b"s",
                    b"k",
                    &[],
                    &CallOptions {
                        condition: Some(condition),
                        ..opts()
                    },
                )
                .await
                .unwrap_err();
            assert_eq!(e.error_code(), Some(ErrorCode::WrongConsistency), "{e}");
        }
        let mut local = frame("get", b"s", b"k");
        local.local = Some(true);
        refused(&c, local, ErrorCode::WrongConsistency).await;
        refused(
            &c,
            frame("put_begin", b"s", b"k"),
            ErrorCode::WrongConsistency,
        )
        .await;
        refused(
            &c,
            frame("get_range", b"s", b"k"),
            ErrorCode::WrongConsistency,
        )
        .await;
        let e = c
            .cas(b"e", b"k", None, Some(b"v"), &opts())
            .await
            .unwrap_err();
        assert_eq!(e.error_code(), Some(ErrorCode::WrongConsistency), "{e}");
        assert!(e.to_string().contains("consistency=strong"), "{e}");
        // Nothing refused was written.
        assert_eq!(read(&c, b"s", b"k").await, Some(b"first".to_vec()));

        // Values over the strong limit, as a put or as a cas's new value.
        let big = noise(STRONG_LIMIT + 1, 7);
        let e = c.put(b"s", b"big", big.clone(), &[]).await.unwrap_err();
        assert_eq!(e.error_code(), Some(ErrorCode::ValueTooLarge), "{e}");
        assert!(e.to_string().contains(&STRONG_LIMIT.to_string()), "{e}");
        let e = c
            .cas(b"s", b"big", None, Some(&big), &opts())
            .await
            .unwrap_err();
        assert_eq!(e.error_code(), Some(ErrorCode::ValueTooLarge), "{e}");
        assert_eq!(read(&c, b"s", b"big").await, None);
        // Invalid keys are refused as for any bucket.
        refused(&c, frame("cas", b"s", b""), ErrorCode::InvalidKey).await;
    });
}

/// `ringkv bucket set ... consistency=strong`, `bucket get`, and `ringkv cas` with --expect,
/// --absent and --delete: exit 0 on a swap, 3 with the current value on stdout when the key
/// holds another, 2 for errors; `put`, `get` and `delete` work on a strong bucket.
#[test]
fn ringkv_cas_end_to_end() {
    let node = NodeProcess::start(&[]);
    let cli = |args: &[&str]| {
        let (code, out, err) = node.cli(args, None);
        (code, String::from_utf8_lossy(&out).into_owned(), err)
    };

    let (code, out, err) = cli(&["bucket", "set", "locks", "consistency=strong"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains(r#""consistency":"strong""#), "{out}");
    let (code, out, _) = cli(&["bucket", "get", "locks"]);
    assert_eq!(code, 0);
    assert!(out.contains(r#""consistency":"strong""#), "{out}");
    let (code, _, err) = cli(&["bucket", "set", "locks", "consistency=eventual"]);
    assert_eq!(code, 2);
    assert!(
        err.contains("cluster_error") && err.contains("fixed"),
        "{err}"
    );
    let (code, _, err) = cli(&["bucket", "set", "locks", "consistency=maybe"]);
    assert_eq!(code, 2);
    assert!(err.contains("eventual or strong"), "{err}");

    assert_eq!(cli(&["cas", "locks", "job", "--absent", "w1"]).0, 0);
    let (code, out, err) = cli(&["cas", "locks", "job", "--absent", "w2"]);
    assert_eq!((code, out.as_str()), (3, "w1"), "{err}");
    assert!(
        err.contains("condition_failed") && err.contains("locks/job"),
        "{err}"
    );
    let (code, out, _) = cli(&["cas", "locks", "job", "--expect", "w0", "w2"]);
    assert_eq!((code, out.as_str()), (3, "w1"));
    assert_eq!(cli(&["cas", "locks", "job", "--expect", "w1", "w2"]).0, 0);
    assert_eq!(cli(&["get", "locks", "job"]).1, "w2");
    assert_eq!(
        cli(&["cas", "locks", "job", "--expect", "w2", "--delete"]).0,
        0
    );
    assert_eq!(cli(&["get", "locks", "job"]).0, 1, "deleted");
    let (code, out, err) = cli(&["cas", "locks", "job", "--expect", "w2", "--delete"]);
    assert_eq!((code, out.as_str()), (3, ""));
    assert!(err.contains("absent"), "{err}");

    // Arguments: one of --expect/--absent, one of NEW/--delete.
    for bad in [
        &["cas", "locks", "job", "w1"][..],
        &["cas", "locks", "job", "--absent"],
        &["cas", "locks", "job", "--absent", "--expect", "x", "y"],
        &["cas", "locks", "job", "--absent", "--delete", "y"],
    ] {
        let (code, _, err) = cli(bad);
        assert_eq!(code, 2, "{bad:?}: {err}");
        assert!(err.contains("Usage"), "{bad:?}: {err}");
    }
    // On an eventual bucket: an error (exit 2), not a condition.
    let (code, _, err) = cli(&["cas", "files", "job", "--absent", "v"]);
    assert_eq!(code, 2);
    assert!(err.contains("wrong_consistency"), "{err}");

    // put, get and delete on the strong bucket.
    assert_eq!(cli(&["put", "locks", "k", "v1"]).0, 0);
    assert_eq!(cli(&["put", "locks", "k", "v2"]).0, 0);
    assert_eq!(cli(&["get", "locks", "k"]).1, "v2");
    let (code, out, _) = cli(&["get", "locks", "k", "--json"]);
    assert_eq!(code, 0);
    assert!(
        out.contains(r#""utf8":"v2""#) && out.contains(r#""context":"""#),
        "{out}"
    );
    let (code, _, err) = cli(&["put", "locks", "k", "v3", "--if-none-match"]);
    assert_eq!(code, 3, "{err}");
    let (code, _, err) = cli(&["put", "locks", "k", "v3", "--ttl", "1m"]);
    assert_eq!(code, 2);
    assert!(err.contains("wrong_consistency"), "{err}");
    let (code, _, err) = cli(&["get", "locks", "k", "--local"]);
    assert_eq!(code, 2);
    assert!(err.contains("wrong_consistency"), "{err}");
    assert_eq!(cli(&["delete", "locks", "k"]).0, 0);
    assert_eq!(cli(&["get", "locks", "k"]).0, 1);
    assert_eq!(cli(&["delete", "locks", "k"]).0, 1, "already absent");
}

/// Three nodes, one cluster for every check: the property is refused on a bucket any member
/// holds data of; a strong bucket written through any node reads the same through every
/// other (most operations are forwarded to the key's first replica); a value at the strong
/// limit crosses the cluster; concurrent cas increments through all nodes lose nothing; and
/// with two nodes paused, operations fail with `no_majority` or `indeterminate` and a
/// `no_majority` write never shows up afterwards.
#[test]
fn strong_bucket_on_three_nodes() {
    let cluster = Cluster::start(3, &["--partitions", "16"]);
    let addrs = cluster.addrs();
    let rt = rt();
    let clients: Vec<Client> = rt.block_on(async {
        let mut out = Vec::new();
        for a in &addrs {
            out.push(Client::connect(a).await.unwrap());
        }
        out
    });

    rt.block_on(async {
        // Keys stored on one replica only (n=1) still make every member refuse: each is asked.
        let one = CallOptions {
            n: Some(1),
            r: Some(1),
            w: Some(1),
            ..opts()
        };
        for k in 0..4u8 {
            clients[0]
                .put_with(b"ev", &[b'k', k], b"v".to_vec(), &[], &one)
                .await
                .unwrap();
        }
        for c in &clients {
            let e = set_consistency(c, b"ev", "strong").await.unwrap_err();
            assert_eq!(e.error_code(), Some(ErrorCode::ClusterError), "{e}");
            assert!(e.to_string().contains("already holds eventual data"), "{e}");
        }

        set_consistency(&clients[1], b"s", "strong").await.unwrap();
    });
    // Gossip spreads the property; use the bucket only once every node has it.
    wait_until(
        "every node to see bucket s strong",
        Duration::from_secs(20),
        || {
            rt.block_on(async {
                for c in &clients {
                    if consistency_of(c, b"s").await != "strong" {
                        return None;
                    }
                }
                Some(())
            })
        },
    );

    rt.block_on(async {
        // Written through node i, read through every node; swapped through the next one,
        // deleted through the one after.
        for i in 0..3 {
            let key = format!("key-{i}").into_bytes();
            let (a, b, c) = (&clients[i], &clients[(i + 1) % 3], &clients[(i + 2) % 3]);
            let v1 = format!("v1 via n{}", i + 1).into_bytes();
            let created = a.cas(b"s", &key, None, Some(&v1), &opts()).await.unwrap();
            assert_eq!(created, CasOutcome::Swapped);
            for reader in &clients {
                assert_eq!(read(reader, b"s", &key).await, Some(v1.clone()));
            }
            let stale = c.cas(b"s", &key, None, Some(b"x"), &opts()).await.unwrap();
            assert_eq!(
                stale,
                CasOutcome::ConditionFailed {
                    current: Some(v1.clone())
                }
            );
            let swapped = b.cas(b"s", &key, Some(&v1), Some(b"v2"), &opts()).await;
            assert_eq!(swapped.unwrap(), CasOutcome::Swapped);
            assert_eq!(read(c, b"s", &key).await, Some(b"v2".to_vec()));
            c.put(b"s", &key, b"v3".to_vec(), &[]).await.unwrap();
            assert_eq!(read(a, b"s", &key).await, Some(b"v3".to_vec()));
            b.delete(b"s", &key, &[]).await.unwrap();
            for reader in &clients {
                assert_eq!(read(reader, b"s", &key).await, None);
            }
        }

        // A value at the limit is accepted by every replica and read back whole elsewhere.
        let big = noise(STRONG_LIMIT, 11);
        clients[0]
            .put(b"s", b"big", big.clone(), &[])
            .await
            .unwrap();
        assert!(read(&clients[2], b"s", b"big").await == Some(big));
        let e = clients[1]
            .put(b"s", b"big", noise(STRONG_LIMIT + 1, 12), &[])
            .await
            .unwrap_err();
        assert_eq!(e.error_code(), Some(ErrorCode::ValueTooLarge), "{e}");

        // A counter incremented by cas loops through all three nodes at once: every
        // increment that reported success is counted exactly once.
        let per_client = 10u32;
        let tasks: Vec<_> = clients
            .iter()
            .cloned()
            .map(|c| {
                tokio::spawn(async move {
                    let mut conflicts = 0u32;
                    for _ in 0..per_client {
                        let mut current = read(&c, b"s", b"counter").await;
                        loop {
                            let n: u32 = current
                                .as_deref()
                                .map_or(0, |v| std::str::from_utf8(v).unwrap().parse().unwrap());
                            let next = (n + 1).to_string().into_bytes();
                            let outcome = c
                                .cas(b"s", b"counter", current.as_deref(), Some(&next), &opts())
                                .await;
                            match outcome {
                                Ok(CasOutcome::Swapped) => break,
                                Ok(CasOutcome::ConditionFailed { current: now }) => {
                                    conflicts += 1;
                                    current = now;
                                }
                                // Nothing was written: the same cas again is safe.
                                Err(e) if e.error_code() == Some(ErrorCode::NoMajority) => {}
                                Err(e) => panic!("cas increment: {e}"),
                            }
                        }
                    }
                    conflicts
                })
            })
            .collect();
        let mut conflicts = 0;
        for t in tasks {
            conflicts += t.await.unwrap();
        }
        let total = (3 * per_client).to_string().into_bytes();
        for c in &clients {
            assert_eq!(read(c, b"s", b"counter").await, Some(total.clone()));
        }
        println!("30 cas increments through 3 nodes, {conflicts} condition failures retried");

        clients[0]
            .put(b"s", b"p", b"old".to_vec(), &[])
            .await
            .unwrap();
    });

    // Two of three nodes paused: nothing succeeds; the failures are the strong codes.
    cluster.nodes[1].signal(libc::SIGSTOP);
    cluster.nodes[2].signal(libc::SIGSTOP);
    let short = CallOptions {
        timeout_ms: Some(1000),
        ..opts()
    };
    let outcomes: Vec<(&str, Option<ErrorCode>)> = rt.block_on(async {
        let c = &clients[0];
        let cas = c
            .cas(b"s", b"p", Some(b"old"), Some(b"via-cas"), &short)
            .await;
        let put = c
            .put_with(b"s", b"p", b"via-put".to_vec(), &[], &short)
            .await;
        let get = c.get_with(b"s", b"p", &short).await;
        let fresh = c.cas(b"s", b"fresh", None, Some(b"via-cas"), &short).await;
        let code = |e: ClientError| e.error_code();
        vec![
            (
                "via-cas",
                cas.map(|o| panic!("cas succeeded: {o:?}"))
                    .unwrap_or_else(code),
            ),
            (
                "via-put",
                put.map(|()| panic!("put succeeded")).unwrap_or_else(code),
            ),
            (
                "get",
                get.map(|g| panic!("get succeeded: {g:?}"))
                    .unwrap_or_else(code),
            ),
            (
                "fresh",
                fresh
                    .map(|o| panic!("cas succeeded: {o:?}"))
                    .unwrap_or_else(code),
            ),
        ]
    });
    cluster.nodes[1].signal(libc::SIGCONT);
    cluster.nodes[2].signal(libc::SIGCONT);
    println!("with 2 of 3 nodes paused: {outcomes:?}");
    for (what, code) in &outcomes {
        assert!(
            matches!(code, Some(ErrorCode::NoMajority | ErrorCode::Indeterminate)),
            "{what}: {code:?}"
        );
    }
    // Once the nodes are back, the key holds "old" or what an indeterminate write wrote,
    // never what a no_majority write would have.
    let may_hold: Vec<&[u8]> = std::iter::once(&b"old"[..])
        .chain(
            outcomes
                .iter()
                .filter(|(_, code)| *code == Some(ErrorCode::Indeterminate))
                .map(|(what, _)| what.as_bytes()),
        )
        .collect();
    let now = wait_until(
        "a strong read once the nodes are back",
        Duration::from_secs(30),
        || rt.block_on(clients[0].get(b"s", b"p")).ok(),
    );
    assert_eq!(now.values.len(), 1, "{now:?}");
    assert!(
        may_hold.contains(&now.values[0].as_slice()),
        "p holds {:?}; possible: {may_hold:?}",
        String::from_utf8_lossy(&now.values[0])
    );
    let fresh = rt.block_on(clients[0].get(b"s", b"fresh")).unwrap();
    if outcomes[3].1 == Some(ErrorCode::NoMajority) {
        assert!(
            fresh.values.is_empty(),
            "a no_majority cas took effect: {fresh:?}"
        );
    }
}
