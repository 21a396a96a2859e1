//! Layout changes with a workload running all the time (the membership issue's five
//! scenarios), on one cluster of real `ringkv` processes that goes through all of them in turn:
//!
//! 1. 3 -> 5 nodes in one plan, one new node with capacity 2;
//! 2. 5 -> 3 by two leaves in one plan;
//! 3. the three remaining nodes replaced by three new ones in one plan;
//! 4. a node killed -9 for good, replaced by a new one (its data comes from the survivors);
//! 5. a receiving node killed -9 in the middle of its transfer and restarted: the transfer
//!    resumes and completes.
//!
//! Writers and readers run at n=3, r=2, w=2 through random members the whole time, and every
//! acknowledged write is recorded. After each scenario: every acknowledged write reads back,
//! no read missed a write acknowledged before it began, failed requests are counted (printed),
//! and a sample of keys is held by exactly 3 members (`get --local` on each).

use ringkv_tests::churn::{add_node, admin, wait_transition_done, Churn};
use ringkv_tests::Cluster;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

const TRANSITION: Duration = Duration::from_secs(120);

fn addrs(c: &Cluster, members: &[usize]) -> Vec<SocketAddr> {
    members.iter().map(|&i| c.nodes[i].addr).collect()
}

/// Waits until the workload acknowledged `more` writes beyond `from`.
fn until_acked(c: &Cluster, churn: &Churn, more: usize) {
    let from = churn.acked();
    c.wait_for(
        "the workload to make progress",
        Duration::from_secs(60),
        || {
            let now = churn.acked();
            (now >= from + more)
                .then_some(())
                .ok_or_else(|| format!("{} writes acknowledged since, want {more}", now - from))
        },
    );
}

/// Commits what is staged on node `at`, then waits for the end of the transition on `members`
/// while the workload runs; prints the workload's figures before, during and after, and
/// checks the scenario's guarantees.
fn change(c: &Cluster, churn: &Churn, name: &str, at: usize, members: &[usize]) {
    println!("{name}: plan\n{}", admin(c, at, &["plan"]));
    let before_from = Instant::now();
    until_acked(c, churn, 200);
    let committed = Instant::now();
    admin(c, at, &["commit"]);
    let version = c.status(at)["layout_version"].as_u64().unwrap();
    churn.set_targets(addrs(c, members));
    let took = wait_transition_done(c, members, version, TRANSITION);
    let done = Instant::now();
    until_acked(c, churn, 200);
    let after_to = Instant::now();
    println!(
        "{name}: commit to all transfers done {took:?}; workload before: {}; during: {}; after: {}",
        churn.phase(before_from, committed),
        churn.phase(committed, done),
        churn.phase(done, after_to)
    );
    let (verdict, under) = churn.check(c.nodes[members[0]].addr, &addrs(c, members), 200);
    println!(
        "{name}: {} acknowledged writes, {} lost, {} missed reads, failed requests {:?}, {under} sampled keys not at 3 copies",
        verdict.acked,
        verdict.lost.len(),
        verdict.missed.len(),
        verdict.failures
    );
    assert!(
        verdict.lost.is_empty(),
        "{name}: lost {:?}",
        &verdict.lost[..verdict.lost.len().min(20)]
    );
    assert!(
        verdict.missed.is_empty(),
        "{name}: reads missed {:?}",
        &verdict.missed[..verdict.missed.len().min(20)]
    );
    assert_eq!(under, 0, "{name}: keys not at full replication");
}

#[test]
fn layout_changes_under_load_lose_nothing_and_miss_nothing() {
    let mut c = Cluster::start(3, &[]);
    wait_transition_done(&c, &[0, 1, 2], 2, TRANSITION);
    let churn = Churn::start(c.addrs(), 3, 2, ringkv_tests::workload::test_seed());
    until_acked(&c, &churn, 300);

    // 1. 3 -> 5, n4 with capacity 2.
    let n4 = add_node(&mut c, 0, &["--capacity", "2"]);
    let n5 = add_node(&mut c, 0, &[]);
    c.wait_members(0, 5, Duration::from_secs(30));
    change(&c, &churn, "3 -> 5", 0, &[0, 1, 2, n4, n5]);

    // 2. 5 -> 3: n2 and n3 leave in one plan.
    admin(&c, 0, &["leave", "n2"]);
    admin(&c, 0, &["leave", "n3"]);
    change(&c, &churn, "5 -> 3", 0, &[0, n4, n5]);
    for i in [1, 2] {
        c.nodes[i].terminate(Duration::from_secs(10));
    }

    // 3. Replace all three: n1, n4, n5 by three new nodes, in one plan.
    let fresh: Vec<usize> = (0..3).map(|_| add_node(&mut c, 0, &[])).collect();
    c.wait_members(0, 6, Duration::from_secs(30));
    for (old, new) in [0, n4, n5].iter().zip(&fresh) {
        admin(&c, 0, &["replace", &c.name(*old), &c.name(*new)]);
    }
    change(&c, &churn, "replace all three", 0, &fresh);
    for i in [0, n4, n5] {
        c.nodes[i].terminate(Duration::from_secs(10));
    }

    // 4. A node killed for good, replaced from the survivors.
    let dead = fresh[2];
    let (a, b) = (fresh[0], fresh[1]);
    // Clients stop using it first (a request in flight to a node killed is a client-side
    // failure no store can avoid: the connection closes).
    churn.set_targets(addrs(&c, &[a, b]));
    until_acked(&c, &churn, 50);
    c.nodes[dead].kill9();
    let spare = add_node(&mut c, a, &[]);
    c.wait_for("the spare to join", Duration::from_secs(30), || {
        let s = c.status(a);
        let joined = s["members"]
            .as_array()
            .is_some_and(|m| m.iter().any(|m| m["name"] == c.name(spare)));
        joined.then_some(()).ok_or_else(|| "not yet".to_string())
    });
    admin(&c, a, &["replace", &c.name(dead), &c.name(spare)]);
    change(&c, &churn, "replace a dead node", a, &[a, b, spare]);

    // 5. The receiver killed -9 mid-transfer and restarted: bulk data makes the transfer take
    // seconds at the receiver's throttle.
    let bulk = ringkv_tests::churn::load_bulk(c.nodes[a].addr, 3000, 2048);
    let receiver = add_node(&mut c, a, &["--transfer-max-bytes-per-sec", "1000000"]);
    c.wait_for("the receiver to join", Duration::from_secs(30), || {
        let s = c.status(a);
        let joined = s["members"]
            .as_array()
            .is_some_and(|m| m.iter().any(|m| m["name"] == c.name(receiver)));
        joined.then_some(()).ok_or_else(|| "not yet".to_string())
    });
    println!(
        "receiver killed mid-transfer: plan\n{}",
        admin(&c, a, &["plan"])
    );
    admin(&c, a, &["commit"]);
    let version = c.status(a)["layout_version"].as_u64().unwrap();
    let members = [a, b, spare, receiver];
    let sent_before = c.wait_for("the receiver to stream", Duration::from_secs(60), || {
        let sent = ringkv_tests::churn::transfer_bytes_sent(&c, receiver);
        (sent > 200_000)
            .then_some(sent)
            .ok_or_else(|| format!("{sent} bytes received"))
    });
    c.nodes[receiver].kill9();
    c.nodes[receiver].restart();
    let resumed = c.wait_for(
        "the restarted receiver to resume",
        Duration::from_secs(60),
        || {
            let resumed = ringkv_tests::churn::transfer_resumed_bytes(&c, receiver);
            (resumed > 0)
                .then_some(resumed)
                .ok_or_else(|| "no transfer resumed yet".to_string())
        },
    );
    churn.set_targets(addrs(&c, &members));
    let took = wait_transition_done(&c, &members, version, TRANSITION);
    println!(
        "receiver killed mid-transfer: {sent_before} bytes in before the kill, resumed from {resumed} bytes; done {took:?} after the commit"
    );
    assert!(
        resumed > 0,
        "the restarted receiver resumed from its last chunk, not from zero"
    );
    ringkv_tests::churn::check_bulk(c.nodes[a].addr, &bulk);

    let (verdict, under) = churn.finish(c.nodes[a].addr, &addrs(&c, &members), 200);
    println!(
        "end: {} acknowledged writes, {} lost, {} missed reads, failed requests {:?}",
        verdict.acked,
        verdict.lost.len(),
        verdict.missed.len(),
        verdict.failures
    );
    assert!(verdict.lost.is_empty() && verdict.missed.is_empty() && under == 0);
}
