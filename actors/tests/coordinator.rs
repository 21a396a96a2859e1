//! The coordinator's quorum rules over a simulated network (`ringkv_actors::sim`): nodes in
//! this process with real storage, faults injected per node. Every scenario runs the real
//! coordinator (`coordinator::coordinate`), hinted handoff, read repair and anti-entropy, in
//! seconds.

use ringkv_actors::coordinator::{coordinate, now_ms, KvRequest, Placement, QuorumCause};
use ringkv_actors::handoff::deliver_all;
use ringkv_actors::repair::{sweep, PurgeDelays};
use ringkv_actors::rpc::{Get, MergeStored, ReplicaError, ReplicaTransport};
use ringkv_actors::KvError;
use ringkv_cluster::membership::{ClusterState, Member, MemberStatus};
use ringkv_storage::{Condition, DvvSet, VersionVector};
use serde_bytes::ByteBuf;
use std::time::{Duration, Instant};

mod common;
use common::sim::*;
use common::until;

#[tokio::test]
async fn a_write_reaches_its_w_quorum_with_one_of_three_replicas_cut() {
    let c = Cluster::start(3).await;
    c.net.cut("n3");
    let written = c
        .put(
            "n1",
            placement("k", 3, 2, 2, false),
            "k",
            "milk",
            VersionVector::new(),
            LONG,
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(values(&written), ["milk"]);
    // w = 2: both reachable replicas hold it durably when the write is answered.
    assert_eq!(c.stored("n1", "k"), ["milk"]);
    assert_eq!(c.stored("n2", "k"), ["milk"]);
    assert!(c.stored("n3", "k").is_empty());
    assert_eq!(c.net.received("n3"), 0, "nothing is sent to a cut replica");
    c.shutdown().await;
}

#[tokio::test]
async fn a_strict_write_misses_its_quorum_with_two_replicas_cut_and_hints_nothing() {
    let c = Cluster::start(4).await;
    c.net.cut("n2");
    c.net.cut("n3");
    let e = c
        .put(
            "n1",
            placement("k", 4, 2, 2, false),
            "k",
            "milk",
            VersionVector::new(),
            LONG,
        )
        .await
        .unwrap_err();
    assert_eq!(
        quorum_error(e),
        ("write", 1, 2, 3, QuorumCause::Unreachable),
        "only the coordinating replica holds it"
    );
    for node in ["n1", "n4"] {
        assert_eq!(c.net.peer(node).hints_held().unwrap(), 0, "{node}");
    }
    assert_eq!(c.net.received("n4"), 0, "the fallback is not used");
    c.shutdown().await;
}

#[tokio::test]
async fn a_sloppy_write_hints_on_fallbacks_counts_each_holder_once_and_handoff_delivers() {
    let c = Cluster::start(4).await;
    c.net.cut("n2");
    c.net.cut("n3");
    // w = 2: n1 holds its replica, the fallback n4 a hint for one cut replica; the hint for
    // the other goes to n1 (no other fallback), which already counts.
    c.put(
        "n1",
        placement("k", 4, 2, 2, true),
        "k",
        "milk",
        VersionVector::new(),
        LONG,
    )
    .await
    .unwrap();
    assert_eq!(c.net.peer("n4").hints_held().unwrap(), 1);
    // n1's hint does not count toward w, so the write may be answered before it is stored.
    c.until_hints("n1", 1).await;
    assert!(c.stored("n4", "k").is_empty(), "a hint is not a replica");

    // w = 3 cannot be met by two distinct nodes, however many hints they hold.
    let e = c
        .put(
            "n1",
            placement("j", 4, 2, 3, true),
            "j",
            "eggs",
            VersionVector::new(),
            LONG,
        )
        .await
        .unwrap_err();
    let (op, answered, needed, n, _) = quorum_error(e);
    assert_eq!((op, answered, needed, n), ("write", 2, 3, 3));
    c.until_hints("n4", 2).await;
    c.until_hints("n1", 2).await;

    // Healed, the replicas get every hint from both holders, which then hold none.
    c.net.heal_all();
    for holder in ["n1", "n4"] {
        assert_eq!(deliver_all(&c.net.peer(holder)).await.unwrap(), 2);
        assert_eq!(c.net.peer(holder).hints_held().unwrap(), 0);
    }
    for node in ["n2", "n3"] {
        assert_eq!(c.stored(node, "k"), ["milk"], "{node}");
        assert_eq!(c.stored(node, "j"), ["eggs"], "{node}");
    }
    c.shutdown().await;
}

#[tokio::test]
async fn a_read_merges_concurrent_siblings_from_replicas_and_repairs_each_one() {
    let c = Cluster::start(3).await;
    let strict = |r, w| placement("cart", 3, r, w, false);
    // "a" is written on n1 alone, "b" on n2 and n3 while n1 is cut: concurrent versions.
    c.net.cut("n2");
    c.net.cut("n3");
    c.put("n1", strict(1, 1), "cart", "a", VersionVector::new(), LONG)
        .await
        .unwrap();
    c.net.heal_all();
    c.net.cut("n1");
    c.put("n2", strict(1, 2), "cart", "b", VersionVector::new(), LONG)
        .await
        .unwrap();
    c.net.heal_all();
    assert_eq!(c.stored("n1", "cart"), ["a"]);
    assert_eq!(c.stored("n3", "cart"), ["b"]);

    let read = c
        .get("n1", strict(3, 1), "cart", LONG)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(values(&read), ["a", "b"], "both siblings");
    // Read repair brings every replica to the merge.
    for node in ["n1", "n2", "n3"] {
        c.until_stored(node, "cart", &["a", "b"]).await;
    }
    c.shutdown().await;
}

#[tokio::test]
async fn a_read_answers_the_newest_version_and_repairs_a_stale_replica() {
    let c = Cluster::start(3).await;
    let first = c
        .put(
            "n1",
            placement("k", 3, 2, 3, false),
            "k",
            "v1",
            VersionVector::new(),
            LONG,
        )
        .await
        .unwrap()
        .unwrap();
    c.net.cut("n2");
    c.put(
        "n1",
        placement("k", 3, 2, 2, false),
        "k",
        "v2",
        first.context().clone(),
        LONG,
    )
    .await
    .unwrap();
    c.net.heal("n2");
    assert_eq!(c.stored("n2", "k"), ["v1"], "n2 missed the second write");

    // r = 2 asks n1 (this node) and n2 (the next replica): v2 supersedes v1.
    let read = c
        .get("n1", placement("k", 3, 2, 2, false), "k", LONG)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(values(&read), ["v2"]);
    c.until_stored("n2", "k", &["v2"]).await;
    c.shutdown().await;
}

#[tokio::test]
async fn a_paused_replica_does_not_hold_up_a_write_quorum_already_met() {
    let c = Cluster::start(3).await;
    c.net.pause("n3");
    let started = Instant::now();
    c.put(
        "n1",
        placement("k", 3, 2, 2, false),
        "k",
        "milk",
        VersionVector::new(),
        LONG,
    )
    .await
    .unwrap();
    assert!(
        started.elapsed() < LONG / 3,
        "the write waited {:?} for the paused replica",
        started.elapsed()
    );
    assert!(c.stored("n3", "k").is_empty(), "n3 is still paused");
    // Resumed, n3 serves the merge that waited for it.
    c.net.heal("n3");
    c.until_stored("n3", "k", &["milk"]).await;
    c.shutdown().await;
}

#[tokio::test]
async fn a_delayed_replica_is_waited_for_only_when_the_quorum_needs_it() {
    let c = Cluster::start(3).await;
    let delay = Duration::from_millis(300);
    c.net.delay("n3", delay);
    let started = Instant::now();
    c.put(
        "n1",
        placement("k", 3, 2, 3, false),
        "k",
        "v",
        VersionVector::new(),
        LONG,
    )
    .await
    .unwrap();
    assert!(
        started.elapsed() >= delay,
        "w = 3 needs the delayed replica"
    );

    c.net.delay("n3", LONG);
    let started = Instant::now();
    c.put(
        "n1",
        placement("j", 3, 2, 2, false),
        "j",
        "v",
        VersionVector::new(),
        LONG,
    )
    .await
    .unwrap();
    assert!(
        started.elapsed() < LONG / 3,
        "w = 2 waited {:?} for the delayed replica",
        started.elapsed()
    );
    c.shutdown().await;
}

#[tokio::test]
async fn a_read_asks_another_replica_when_one_is_slow() {
    let c = Cluster::start(3).await;
    c.put(
        "n1",
        placement("k", 3, 2, 3, false),
        "k",
        "v",
        VersionVector::new(),
        LONG,
    )
    .await
    .unwrap();
    // r = 2 asks n1 and n2 first; n2 is paused, so the speculative retry asks n3.
    c.net.pause("n2");
    let before = c.net.received("n3");
    let started = Instant::now();
    let read = c
        .get("n1", placement("k", 3, 2, 2, false), "k", LONG)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(values(&read), ["v"]);
    assert!(started.elapsed() < LONG / 3);
    assert_eq!(c.net.received("n3"), before + 1, "n3 was asked");
    c.net.heal("n2");
    c.shutdown().await;
}

#[tokio::test]
async fn dropped_requests_time_out_with_a_timeout_error() {
    let c = Cluster::start(3).await;
    c.net.drop_requests("n2");
    c.net.drop_requests("n3");
    let timeout = Duration::from_millis(300);

    let started = Instant::now();
    let e = c
        .put(
            "n1",
            placement("k", 3, 2, 2, false),
            "k",
            "v",
            VersionVector::new(),
            timeout,
        )
        .await
        .unwrap_err();
    assert!(started.elapsed() >= timeout);
    assert_eq!(quorum_error(e), ("write", 1, 2, 3, QuorumCause::Timeout));

    let started = Instant::now();
    let e = c
        .get("n1", placement("k", 3, 2, 2, false), "k", timeout)
        .await
        .unwrap_err();
    assert!(started.elapsed() >= timeout);
    let (op, answered, needed, _, cause) = quorum_error(e);
    assert_eq!(
        (op, answered, needed, cause),
        ("read", 1, 2, QuorumCause::Timeout)
    );

    // One call on its own: the typed answer is a timeout naming the node.
    let get = Get {
        partition: 0,
        bucket: ByteBuf::from(BUCKET.to_vec()),
        key: ByteBuf::from(b"k".to_vec()),
    };
    let r = c.net.peer("n1").call("n2", get, timeout).await;
    assert_eq!(r, Err(ReplicaError::Timeout("n2".into())));
    c.shutdown().await;
}

#[tokio::test]
async fn a_request_over_the_cluster_message_limit_is_refused_before_it_is_sent() {
    let c = Cluster::start(2).await;
    let limit = c.net.peer("n1").context().max_message_bytes;
    let mut record = DvvSet::new();
    record
        .update(&VersionVector::new(), 1, Some(vec![7; limit]), 1, 10)
        .unwrap();
    let merge = MergeStored {
        partition: 0,
        entries: vec![(ByteBuf::from(b"\x01bk".to_vec()), record)],
    };
    let r = c.net.peer("n1").call("n2", merge, LONG).await;
    assert!(
        matches!(&r, Err(ReplicaError::TooLarge { node, limit: l, bytes }) if node == "n2" && *l == limit && *bytes > limit),
        "{r:?}"
    );
    assert_eq!(c.net.received("n2"), 0);
    c.shutdown().await;
}

#[tokio::test]
async fn anti_entropy_brings_every_replica_the_keys_it_missed() {
    let c = Cluster::start(3).await;
    commit_layout(&c);
    // "a" is written on n1 alone, "b" on n2 alone: each write's placement names that one
    // replica, so no merge of the write itself is left running (a merge spawned while a
    // replica is cut may still reach it after the heal, and make the copy repair should).
    let alone = |key: &str, node: &str| Placement {
        replicas: vec![node.into()],
        ..placement(key, 3, 1, 1, false)
    };
    c.put("n1", alone("a", "n1"), "a", "A", VersionVector::new(), LONG)
        .await
        .unwrap();
    c.put("n2", alone("b", "n2"), "b", "B", VersionVector::new(), LONG)
        .await
        .unwrap();
    assert_eq!(c.stored("n1", "a"), ["A"]);
    assert_eq!(c.stored("n2", "b"), ["B"]);
    assert!(c.stored("n2", "a").is_empty() && c.stored("n1", "b").is_empty());
    assert!(c.stored("n3", "a").is_empty() && c.stored("n3", "b").is_empty());

    // n1 exchanges with n2 and n3 (the replicas named after it), then n2 with n3.
    let grace = PurgeDelays::grace(Duration::from_secs(3600));
    sweep(&c.net.peer("n1"), grace).await;
    sweep(&c.net.peer("n2"), grace).await;
    for node in ["n1", "n2", "n3"] {
        assert_eq!(c.stored(node, "a"), ["A"], "{node}");
        assert_eq!(c.stored(node, "b"), ["B"], "{node}");
    }
    let repaired = |node: &str| {
        c.net
            .peer(node)
            .context()
            .stats
            .repair
            .keys_repaired
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    // Four copies were missing (b on n1, a on n2, both on n3); each was made once, by
    // whichever exchange found it first (the order follows each partition's preference list).
    assert_eq!(repaired("n1") + repaired("n2"), 4);
    c.shutdown().await;
}

/// During a layout transition a write must hold its quorum in the old replica set AND in the
/// new one (`Placement::also`): with the new set's other members cut, w=2 in the old set is not
/// enough.
#[tokio::test]
async fn a_write_during_a_transition_needs_its_quorum_in_every_live_replica_set() {
    let c = Cluster::start(5).await;
    // Old set n1 n2 n3; new set n1 n4 n5 (n2 and n3 leave).
    let during = |w: usize| Placement {
        also: vec![(vec!["n1".into(), "n4".into(), "n5".into()], w)],
        ..placement("k", 3, 2, w, false)
    };
    c.net.cut("n4");
    c.net.cut("n5");
    let e = c
        .put("n1", during(2), "k", "milk", VersionVector::new(), LONG)
        .await
        .unwrap_err();
    assert!(
        matches!(e, KvError::Quorum { op: "write", .. }),
        "w=2 in the old set but only n1 in the new one: {e:?}"
    );
    c.net.heal("n5");
    let written = c
        .put("n1", during(2), "k", "bread", VersionVector::new(), LONG)
        .await
        .unwrap()
        .unwrap();
    assert!(values(&written).contains(&"bread".to_string()));
    // Acknowledged: held by 2 of the old set and by 2 of the new one (n1 counts in both).
    assert!(c.stored("n5", "k").contains(&"bread".to_string()));
    let old_holders = ["n2", "n3"]
        .iter()
        .filter(|n| c.stored(n, "k").contains(&"bread".to_string()))
        .count();
    assert!(old_holders >= 1, "a second old replica holds it");
    c.shutdown().await;
}

/// A node in both sets counts in each, once per set: w=1 in both is met by the coordinator
/// alone when it is in both sets.
#[tokio::test]
async fn a_node_in_two_live_replica_sets_counts_in_each() {
    let c = Cluster::start(5).await;
    for n in ["n2", "n3", "n4", "n5"] {
        c.net.cut(n);
    }
    let p = Placement {
        also: vec![(vec!["n1".into(), "n4".into(), "n5".into()], 1)],
        ..placement("k", 3, 1, 1, false)
    };
    c.put("n1", p, "k", "milk", VersionVector::new(), LONG)
        .await
        .unwrap();
    assert_eq!(c.stored("n1", "k"), ["milk"]);
    c.shutdown().await;
}

/// Hints kept for a node that no live layout version places any more (it left, or was
/// replaced) are not kept for it forever: hinted handoff gives them to the partition's
/// current replicas.
#[tokio::test]
async fn hints_for_a_node_that_left_the_layout_go_to_the_partitions_current_replicas() {
    let c = Cluster::start(4).await;
    // Every node's view: n1, n2, n3 in the layout; n9 in none.
    let mut state = ClusterState::new(PARTITIONS);
    for n in ["n1", "n2", "n3"] {
        state.upsert_member(Member {
            name: n.into(),
            cluster_addr: format!("{n}:1"),
            client_addr: format!("{n}:2"),
            zone: n.into(),
            capacity: 1,
            status: MemberStatus::Joining,
            version: 0,
            incarnation: 1,
            actor_addr: String::new(),
        });
    }
    state.commit().unwrap();
    for i in 1..=4 {
        c.net
            .peer(&format!("n{i}"))
            .context()
            .view
            .update(|s| {
                *s = state.clone();
                Ok(())
            })
            .unwrap();
    }
    // A sloppy write whose second replica is the departed n9: its copy is a hint on n4.
    let p = Placement {
        replicas: vec!["n1".into(), "n9".into()],
        fallbacks: vec!["n4".into()],
        ..placement("k", 4, 1, 2, true)
    };
    c.put("n1", p, "k", "milk", VersionVector::new(), LONG)
        .await
        .unwrap();
    assert_eq!(c.net.peer("n4").hints_held().unwrap(), 1);
    assert_eq!(deliver_all(&c.net.peer("n4")).await.unwrap(), 1);
    assert_eq!(c.net.peer("n4").hints_held().unwrap(), 0);
    for node in ["n1", "n2", "n3"] {
        assert_eq!(c.stored(node, "k"), ["milk"], "{node}");
    }
    c.shutdown().await;
}

/// A write with a TTL through a sloppy quorum: the expiry travels in the sibling to the
/// replicas and through a hint, identical everywhere (the coordinator's clock plus the TTL).
/// Once expired it is purged from every replica by the sweep, but only after the grace plus
/// `max-clock-skew-ms`; a copy that comes back afterwards from a replica that missed the purge
/// (a restored node, a late hint) is still expired, reads as missing, and is purged again.
#[tokio::test]
async fn expired_values_are_purged_on_every_replica_and_a_late_copy_stays_expired() {
    let c = Cluster::start(4).await;
    commit_layout(&c);
    let ttl = Duration::from_millis(200);
    // n3 is cut: n1 and n2 store the write, n4 keeps a hint for n3 (w = 3 distinct holders).
    c.net.cut("n3");
    let request = KvRequest::Update {
        bucket: BUCKET.to_vec(),
        key: b"s".to_vec(),
        context: VersionVector::new(),
        value: Some(b"session".to_vec()),
        condition: Condition::None,
        codec: ringkv_storage::Codec::None,
        ttl: Some(ttl),
    };
    let written = coordinate(
        request,
        placement("s", 4, 2, 3, true),
        c.net.peer("n1"),
        LONG,
    )
    .await
    .unwrap()
    .unwrap();
    let sibling = written.siblings[0].clone();
    let expires_at = sibling.expires_at_ms.expect("the write carries its expiry");
    assert_eq!(
        expires_at,
        sibling.timestamp_ms + 200 + 1,
        "a TTL of 200 ms, rounded up"
    );
    c.net.heal("n3");
    assert_eq!(deliver_all(&c.net.peer("n4")).await.unwrap(), 1);
    let expiry_on = |node: &str| {
        c.net.peer(node).stored(BUCKET, b"s").unwrap().map(|d| {
            d.siblings
                .iter()
                .map(|s| s.expires_at_ms)
                .collect::<Vec<_>>()
        })
    };
    for node in ["n1", "n2", "n3"] {
        assert_eq!(expiry_on(node), Some(vec![Some(expires_at)]), "{node}");
    }
    // The late copy a replica that misses the purge will send back.
    let late = c.net.peer("n3").stored(BUCKET, b"s").unwrap().unwrap();

    until(|| {
        (now_ms() > expires_at)
            .then_some(())
            .ok_or_else(|| "not expired yet".to_string())
    })
    .await;
    assert!(late.is_absent(now_ms()));
    // Expired, but the clock skew allowance has not passed: nothing is purged.
    let skewed = PurgeDelays {
        tombstone_grace: Duration::ZERO,
        max_clock_skew: Duration::from_secs(3600),
    };
    sweep(&c.net.peer("n1"), skewed).await;
    for node in ["n1", "n2", "n3"] {
        assert!(expiry_on(node).is_some(), "{node} purged within the skew");
    }
    let now = PurgeDelays::default();
    sweep(&c.net.peer("n1"), now).await;
    for node in ["n1", "n2", "n3"] {
        assert_eq!(
            expiry_on(node),
            None,
            "{node} still holds the expired value"
        );
    }
    let purged = |node: &str| {
        c.net
            .peer(node)
            .context()
            .stats
            .repair
            .tombstones_purged
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    assert_eq!(purged("n1") + purged("n2") + purged("n3"), 3);

    // n3 comes back with its copy from before the purge: it is stored again, still expired.
    let key = ringkv_storage::keys::storage_key(BUCKET, b"s").unwrap();
    let partition = ringkv_cluster::partition_for(BUCKET, b"s", PARTITIONS);
    let back = MergeStored {
        partition,
        entries: vec![(ByteBuf::from(key), late)],
    };
    c.net.peer("n1").call("n3", back, LONG).await.unwrap();
    let read = c
        .get("n2", placement("s", 4, 3, 3, false), "s", LONG)
        .await
        .unwrap()
        .expect("n3 holds the key again");
    assert!(read.is_absent(now_ms()), "a purged value came back to life");
    // Later sweeps purge it again everywhere (read repair may still be copying it around).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        sweep(&c.net.peer("n1"), now).await;
        let held: Vec<_> = ["n1", "n2", "n3"].iter().map(|n| expiry_on(n)).collect();
        if held.iter().all(Option::is_none) {
            break;
        }
        assert!(Instant::now() < deadline, "not purged again: {held:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    c.shutdown().await;
}
