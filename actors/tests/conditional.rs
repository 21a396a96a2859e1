//! Conditional writes (`if_none_match`, `if_match`) through the real coordinator over a
//! simulated network (`ringkv_actors::sim`): what each condition refuses and accepts, on
//! tombstones, against a replica holding a version the coordinator missed, racing creators,
//! and with no replica reachable.

mod common;
use common::sim::*;
use ringkv_actors::coordinator::QuorumCause;
use ringkv_storage::{Condition, VersionVector};

#[tokio::test]
async fn if_none_match_creates_an_absent_key_and_refuses_a_present_one() {
    let c = Cluster::start(3).await;
    let strict = placement("k", 3, 2, 2, false);
    let none = VersionVector::new;
    let created = c
        .write(
            "n1",
            strict.clone(),
            "k",
            Some("first"),
            none(),
            Condition::IfNoneMatch,
            LONG,
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(values(&created), ["first"]);
    for at in ["n1", "n2"] {
        let e = c
            .write(
                at,
                strict.clone(),
                "k",
                Some("second"),
                none(),
                Condition::IfNoneMatch,
                LONG,
            )
            .await
            .unwrap_err();
        assert_eq!(condition_failed(e), "if_none_match");
    }
    for node in ["n1", "n2", "n3"] {
        c.until_stored(node, "k", &["first"]).await;
    }
    c.shutdown().await;
}

#[tokio::test]
async fn a_tombstoned_key_counts_as_absent_for_if_none_match() {
    let c = Cluster::start(3).await;
    let all = placement("gone", 3, 3, 3, false);
    let written = c
        .put("n1", all.clone(), "gone", "v", VersionVector::new(), LONG)
        .await
        .unwrap()
        .unwrap();
    c.write(
        "n2",
        all.clone(),
        "gone",
        None,
        written.context().clone(),
        Condition::None,
        LONG,
    )
    .await
    .unwrap();
    let created = c
        .write(
            "n3",
            all,
            "gone",
            Some("again"),
            VersionVector::new(),
            Condition::IfNoneMatch,
            LONG,
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(values(&created), ["again"]);
    c.shutdown().await;
}

#[tokio::test]
async fn if_match_refuses_a_stale_context_and_accepts_the_fresh_one() {
    let c = Cluster::start(3).await;
    let strict = placement("doc", 3, 2, 2, false);
    let v1 = c
        .put(
            "n1",
            strict.clone(),
            "doc",
            "v1",
            VersionVector::new(),
            LONG,
        )
        .await
        .unwrap()
        .unwrap();
    let stale = v1.context().clone();
    // Someone else replaces v1 after our read.
    c.put("n2", strict.clone(), "doc", "v2", stale.clone(), LONG)
        .await
        .unwrap();
    for at in ["n1", "n2", "n3"] {
        let e = c
            .write(
                at,
                strict.clone(),
                "doc",
                Some("mine"),
                stale.clone(),
                Condition::IfMatch,
                LONG,
            )
            .await
            .unwrap_err();
        assert_eq!(condition_failed(e), "if_match");
    }
    let fresh = c
        .get("n3", placement("doc", 3, 2, 1, false), "doc", LONG)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(values(&fresh), ["v2"]);
    let replaced = c
        .write(
            "n3",
            strict,
            "doc",
            Some("v3"),
            fresh.context().clone(),
            Condition::IfMatch,
            LONG,
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        values(&replaced),
        ["v3"],
        "no sibling: the context covered v2"
    );
    c.shutdown().await;
}

#[tokio::test]
async fn a_replica_holding_a_version_the_coordinator_missed_refuses_the_conditional_merge() {
    let c = Cluster::start(3).await;
    // "theirs" reaches n2 and n3 only.
    c.net.cut("n1");
    c.put(
        "n2",
        placement("k", 3, 2, 2, false),
        "k",
        "theirs",
        VersionVector::new(),
        LONG,
    )
    .await
    .unwrap();
    c.net.heal_all();
    // n1 coordinates: its replica is empty, so it accepts; n2 and n3 refuse the merge.
    let e = c
        .write(
            "n1",
            placement("k", 3, 3, 3, false),
            "k",
            Some("mine"),
            VersionVector::new(),
            Condition::IfNoneMatch,
            LONG,
        )
        .await
        .unwrap_err();
    assert_eq!(condition_failed(e), "if_none_match");
    assert_eq!(
        c.stored("n2", "k"),
        ["theirs"],
        "a refused merge writes nothing"
    );
    assert_eq!(c.stored("n3", "k"), ["theirs"]);
    // Not acknowledged, but the coordinating replica keeps what it stored (as with any
    // write that misses w): a later read makes it a sibling.
    assert_eq!(c.stored("n1", "k"), ["mine"]);
    // With w = 1 the same check is best effort: the write is acknowledged by the replica
    // that coordinated it although the others refused.
    let best_effort = c
        .write(
            "n1",
            placement("k2", 3, 1, 1, false),
            "k2",
            Some("x"),
            VersionVector::new(),
            Condition::IfNoneMatch,
            LONG,
        )
        .await;
    assert!(best_effort.is_ok(), "{best_effort:?}");
    c.shutdown().await;
}

#[tokio::test]
async fn two_racing_if_none_match_creators_never_both_succeed_with_w_equal_n_strict() {
    let c = Cluster::start(3).await;
    let (mut one, mut none) = (0, 0);
    for i in 0..20 {
        let key = format!("race-{i}");
        // Coordinators on two different replicas, so each creator is stored by one replica
        // before the other's merge reaches it.
        let (a, b) = (["n1", "n2", "n3"][i % 3], ["n2", "n3", "n1"][i % 3]);
        let all = placement(&key, 3, 3, 3, false);
        let (ra, rb) = tokio::join!(
            c.write(
                a,
                all.clone(),
                &key,
                Some("a"),
                VersionVector::new(),
                Condition::IfNoneMatch,
                LONG
            ),
            c.write(
                b,
                all.clone(),
                &key,
                Some("b"),
                VersionVector::new(),
                Condition::IfNoneMatch,
                LONG
            ),
        );
        assert!(
            !(ra.is_ok() && rb.is_ok()),
            "{key}: both creators succeeded"
        );
        for r in [ra, rb] {
            if let Err(e) = r {
                condition_failed(e);
            }
        }
        match c
            .get("n1", placement(&key, 3, 3, 1, false), &key, LONG)
            .await
        {
            Ok(Some(d)) if d.values().count() == 1 => one += 1,
            _ => none += 1,
        }
    }
    eprintln!("20 races: {one} with one winner, {none} with none or siblings");
    c.shutdown().await;
}

#[tokio::test]
async fn a_sloppy_conditional_write_with_no_replica_reachable_fails_and_hints_nothing() {
    let c = Cluster::start(4).await;
    for node in ["n1", "n2", "n3"] {
        c.net.cut(node);
    }
    let e = c
        .write(
            "n4",
            placement("k", 4, 1, 1, true),
            "k",
            Some("v"),
            VersionVector::new(),
            Condition::IfNoneMatch,
            LONG,
        )
        .await
        .unwrap_err();
    assert_eq!(quorum_error(e).4, QuorumCause::Unreachable);
    assert_eq!(
        c.net.peer("n4").hints_held().unwrap(),
        0,
        "no replica could check it"
    );
    // Unconditional, the same write is taken as hints (the sloppy quorum's promise).
    c.put(
        "n4",
        placement("k", 4, 1, 1, true),
        "k",
        "v",
        VersionVector::new(),
        LONG,
    )
    .await
    .unwrap();
    c.shutdown().await;
}
