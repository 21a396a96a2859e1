//! One node in-process: versions, siblings, supervision.

use ringkv_actors::vnode::VNodeMsg;
use ringkv_actors::{KvError, Node, NodeConfig, RequestOptions};
use ringkv_storage::StorageError;
use std::time::{Duration, Instant};

async fn start(dir: &std::path::Path) -> Node {
    Node::start(NodeConfig {
        data_dir: dir.to_path_buf(),
        partitions: 8,
        initial_map_bytes: 1 << 20,
        max_value_bytes: 16 << 20,
        ..Default::default()
    })
    .await
    .unwrap()
}

fn opts() -> RequestOptions {
    RequestOptions::default()
}

/// Dynamo's shopping cart: two clients add to the same cart concurrently, both versions are
/// kept as siblings, a third client merges them and writes with the merged context.
#[tokio::test]
async fn shopping_cart_siblings_and_resolution() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(dir.path()).await;
    let (b, k) = (b"carts".as_slice(), b"alice".as_slice());

    node.put(b, k, b"milk".to_vec(), &[], &opts())
        .await
        .unwrap();
    let seen = node.get(b, k, &opts()).await.unwrap();
    assert_eq!(seen.values, vec![b"milk".to_vec()]);

    // Two clients both read {milk} and each add one item with that context.
    node.put(b, k, b"milk,eggs".to_vec(), &seen.context, &opts())
        .await
        .unwrap();
    node.put(b, k, b"milk,bread".to_vec(), &seen.context, &opts())
        .await
        .unwrap();
    let both = node.get(b, k, &opts()).await.unwrap();
    let mut values = both.values.clone();
    values.sort();
    assert_eq!(values, vec![b"milk,bread".to_vec(), b"milk,eggs".to_vec()]);

    // A write with the merged context resolves them into one value.
    node.put(b, k, b"milk,eggs,bread".to_vec(), &both.context, &opts())
        .await
        .unwrap();
    let resolved = node.get(b, k, &opts()).await.unwrap();
    assert_eq!(resolved.values, vec![b"milk,eggs,bread".to_vec()]);

    // A write with the context of the first read replaces only what that read saw: the
    // resolved value is a version it did not see, so it stays as a sibling.
    node.put(b, k, b"stale".to_vec(), &seen.context, &opts())
        .await
        .unwrap();
    assert_eq!(node.get(b, k, &opts()).await.unwrap().values.len(), 2);
    node.shutdown().await;
}

#[tokio::test]
async fn blind_writes_are_concurrent_and_delete_leaves_a_context() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(dir.path()).await;
    node.put(b"b", b"k", b"1".to_vec(), &[], &opts())
        .await
        .unwrap();
    node.put(b"b", b"k", b"2".to_vec(), &[], &opts())
        .await
        .unwrap();
    let got = node.get(b"b", b"k", &opts()).await.unwrap();
    assert_eq!(got.values.len(), 2);

    node.delete(b"b", b"k", &got.context, &opts())
        .await
        .unwrap();
    let gone = node.get(b"b", b"k", &opts()).await.unwrap();
    assert!(gone.values.is_empty());
    assert!(
        !gone.context.is_empty(),
        "a tombstone keeps its causal context"
    );

    let never = node.get(b"b", b"never", &opts()).await.unwrap();
    assert!(never.values.is_empty() && never.context.is_empty());
    node.shutdown().await;
}

#[tokio::test]
async fn bad_input_gets_typed_errors() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(dir.path()).await;
    let long = vec![b'k'; 447];
    assert!(matches!(
        node.put(b"b", &long, b"v".to_vec(), &[], &opts()).await,
        Err(KvError::Storage(StorageError::KeyTooLong {
            len: 447,
            max: 442
        }))
    ));
    assert!(matches!(
        node.get(b"b", b"", &opts()).await,
        Err(KvError::Storage(StorageError::EmptyKey { .. }))
    ));
    assert!(matches!(
        node.put(b"b", b"k", b"v".to_vec(), b"\xc1", &opts()).await,
        Err(KvError::Storage(StorageError::BadContext(_)))
    ));
    let big = vec![0u8; node.config().max_value_bytes + 1];
    assert!(matches!(
        node.put(b"b", b"k", big, &[], &opts()).await,
        Err(KvError::ValueTooLarge { .. })
    ));
    node.shutdown().await;
}

#[tokio::test]
async fn panicked_vnode_is_restarted_with_its_data() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(dir.path()).await;
    let p = node.partition_of(b"b", b"k");
    node.put(b"b", b"k", b"kept".to_vec(), &[], &opts())
        .await
        .unwrap();

    let before = node.vnode(p).unwrap();
    before.send_message(VNodeMsg::InjectPanic).unwrap();

    // The very next request succeeds: the coordinator waits for the restarted vnode.
    let got = node.get(b"b", b"k", &opts()).await.unwrap();
    assert_eq!(got.values, vec![b"kept".to_vec()]);
    let after = node.vnode(p).unwrap();
    assert_ne!(
        before.get_id(),
        after.get_id(),
        "the vnode was not restarted"
    );

    // And writes go through the same env.
    node.put(b"b", b"k", b"new".to_vec(), &got.context, &opts())
        .await
        .unwrap();
    assert_eq!(
        node.get(b"b", b"k", &opts()).await.unwrap().values,
        vec![b"new".to_vec()]
    );
    node.shutdown().await;
}

#[tokio::test]
async fn vnode_failures_past_the_budget_stop_the_node() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(dir.path()).await;
    // 5 vnode restarts per VNodeSupervisor, 5 VNodeSupervisor restarts: 36 failures in a
    // row exhaust both budgets and the node stops instead of limping on.
    let deadline = Instant::now() + Duration::from_secs(20);
    while !node.is_stopped() {
        assert!(Instant::now() < deadline, "node did not stop");
        if let Some(v) = node.vnode(0) {
            let _ = v.send_message(VNodeMsg::InjectPanic);
        }
        tokio::task::yield_now().await;
    }
    assert!(matches!(
        node.get(b"b", b"k", &opts()).await,
        Err(KvError::ShuttingDown)
    ));
    node.shutdown().await;
}

#[tokio::test]
async fn data_survives_a_restart_of_the_node() {
    let dir = tempfile::tempdir().unwrap();
    {
        let node = start(dir.path()).await;
        for i in 0..100u32 {
            node.put(b"b", &i.to_be_bytes(), vec![i as u8; 10], &[], &opts())
                .await
                .unwrap();
        }
        node.shutdown().await;
    }
    let node = start(dir.path()).await;
    for i in 0..100u32 {
        let got = node.get(b"b", &i.to_be_bytes(), &opts()).await.unwrap();
        assert_eq!(got.values, vec![vec![i as u8; 10]]);
    }
    node.shutdown().await;
}

/// An embedding caller gets the quorum rule `1 <= r, w <= n <= 3` checked too, for any
/// integer; inside the rule, a node alone keeps one replica whatever n says.
#[tokio::test]
async fn quorums_outside_the_rule_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(dir.path()).await;
    for (n, r, w) in [
        (4, 1, 1),
        (256, 1, 1),
        (0, 1, 1),
        (3, 0, 1),
        (2, 3, 1),
        (2, 1, 3),
    ] {
        let opts = RequestOptions {
            n: Some(n),
            r: Some(r),
            w: Some(w),
            ..opts()
        };
        match node.get(b"b", b"k", &opts).await {
            Err(KvError::BadQuorum(msg)) => {
                assert!(msg.contains(&format!("n={n} r={r} w={w}")), "{msg}")
            }
            other => panic!("n={n} r={r} w={w}: {other:?}"),
        }
    }
    let three = RequestOptions {
        n: Some(3),
        r: Some(3),
        w: Some(3),
        ..opts()
    };
    node.put(b"b", b"k", b"v".to_vec(), &[], &three)
        .await
        .unwrap();
    node.shutdown().await;
}

/// A value put with a TTL reads until it expires, then as missing (its record stays until
/// the purge: the default grace is an hour), with a context; `if_none_match` treats it as
/// absent, and the value it creates has no expiry. A zero TTL is none, and a delete ignores one.
#[tokio::test]
async fn an_expired_value_reads_as_missing_and_is_absent_to_if_none_match() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(dir.path()).await;
    let ttl = Duration::from_millis(300);
    let with_ttl = |ttl| RequestOptions {
        ttl: Some(ttl),
        ..opts()
    };
    let sent = Instant::now();
    let put = node
        .put(b"b", b"k", b"session".to_vec(), &[], &with_ttl(ttl))
        .await
        .unwrap();
    let got = node.get(b"b", b"k", &opts()).await.unwrap();
    if sent.elapsed() < ttl {
        assert_eq!(put.values, vec![b"session".to_vec()]);
        assert_eq!(got.values, vec![b"session".to_vec()]);
    }
    let expired = loop {
        let got = node.get(b"b", b"k", &opts()).await.unwrap();
        if got.values.is_empty() {
            break got;
        }
        assert!(sent.elapsed() < Duration::from_secs(10), "never expired");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert!(sent.elapsed() >= ttl, "expired before its TTL");
    assert!(
        !expired.context.is_empty(),
        "the expired version is still stored"
    );

    let create = RequestOptions {
        condition: ringkv_storage::Condition::IfNoneMatch,
        ..opts()
    };
    node.put(b"b", b"k", b"created".to_vec(), &[], &create)
        .await
        .unwrap();
    let got = node.get(b"b", b"k", &opts()).await.unwrap();
    assert_eq!(got.values, vec![b"created".to_vec()]);
    match node.put(b"b", b"k", b"again".to_vec(), &[], &create).await {
        Err(KvError::Storage(StorageError::ConditionFailed { .. })) => {}
        other => panic!("a live value did not refuse if_none_match: {other:?}"),
    }

    // A zero TTL is no TTL; a delete with a TTL writes a plain tombstone.
    node.put(b"b", b"z", b"kept".to_vec(), &[], &with_ttl(Duration::ZERO))
        .await
        .unwrap();
    let got = node.get(b"b", b"z", &opts()).await.unwrap();
    assert_eq!(got.values, vec![b"kept".to_vec()]);
    node.delete(b"b", b"z", &got.context, &with_ttl(ttl))
        .await
        .unwrap();
    assert!(node
        .get(b"b", b"z", &opts())
        .await
        .unwrap()
        .values
        .is_empty());
    node.shutdown().await;
}
