//! Figures of the partition layout: balance, zones, movement on a join and a leave, and speed.
//!
//! `cargo run --release -p ringkv-cluster --example layout_figures`

use std::time::Instant;

use ringkv_cluster::layout::{diff, Layout, NodeLoad, NodeSpec};

/// `count` nodes `node-00000..`, capacity `1 + i % 8`, zone `zone-{i % zones}`.
fn cluster(count: usize, zones: usize) -> Vec<NodeSpec> {
    (0..count)
        .map(|i| {
            NodeSpec::new(
                format!("node-{i:05}"),
                format!("zone-{}", i % zones),
                1 + (i % 8) as u32,
            )
        })
        .collect()
}

/// Replicas held by the node named `name` (0 if absent).
fn load_of(layout: &Layout, name: &str) -> usize {
    layout
        .index_of(name)
        .map_or(0, |i| layout.partitions_of(i).len())
}

/// Worst and best `replicas / fair share`, and the same for primaries (`primaries * N / fair`).
fn balance(layout: &Layout) -> (f64, f64, f64, f64) {
    let loads = layout.loads();
    let n = f64::from(layout.replication());
    let ratio = loads.iter().map(NodeLoad::ratio);
    let primary = loads
        .iter()
        .map(|l| f64::from(l.primaries) * n / l.fair_share);
    (
        ratio.clone().fold(0.0, f64::max),
        ratio.fold(f64::INFINITY, f64::min),
        primary.clone().fold(0.0, f64::max),
        primary.fold(f64::INFINITY, f64::min),
    )
}

fn describe(label: &str, layout: &Layout, seconds: f64) {
    let (worst, best, primary_worst, primary_best) = balance(layout);
    println!(
        "{label}: {} nodes, Q = {}, N = {}, computed in {:.3} s",
        layout.nodes().len(),
        layout.partitions(),
        layout.replication(),
        seconds
    );
    println!("  load / fair share: worst {worst:.4}, best {best:.4}");
    println!(
        "  primaries / fair share of primaries: worst {primary_worst:.4}, best {primary_best:.4}"
    );
    println!(
        "  partitions breaking the zone rule: {} of {}",
        layout.zone_violations(),
        layout.partitions()
    );
    let mut zones: Vec<(String, u32, f64)> = Vec::new();
    for load in layout.loads() {
        match zones.iter_mut().find(|(zone, _, _)| *zone == load.zone) {
            Some(entry) => {
                entry.1 += load.replicas;
                entry.2 += load.fair_share;
            }
            None => zones.push((load.zone.clone(), load.replicas, load.fair_share)),
        }
    }
    zones.sort_by(|a, b| a.0.cmp(&b.0));
    if zones.len() <= 10 {
        let list: Vec<String> = zones
            .iter()
            .map(|(zone, replicas, fair)| format!("{zone} {replicas} (fair {fair:.0})"))
            .collect();
        println!(
            "  replicas per zone (at most Q = {} each): {}",
            layout.partitions(),
            list.join(", ")
        );
    }
}

/// Compute `nodes` from `base`, and print the replicas moved against the given minimum.
fn change(label: &str, base: &Layout, nodes: &[NodeSpec], minimum: impl Fn(&Layout) -> usize) {
    let start = Instant::now();
    let after = Layout::compute(nodes, base.partitions(), base.replication(), Some(base))
        .expect("valid cluster");
    let seconds = start.elapsed().as_secs_f64();
    let moved = diff(base, &after);
    let minimum = minimum(&after);
    let (worst, _, _, _) = balance(&after);
    println!(
        "{label}: moved {moved} replicas, minimum {minimum}, ratio {:.3} \
         (worst load / fair {worst:.4}, zone violations {}, {seconds:.3} s)",
        moved as f64 / minimum as f64,
        after.zone_violations()
    );
}

/// Fewest replicas that must move when `leaver` leaves `before` and the result is `after`,
/// with at least N zones: its own replicas, plus, per zone, the replicas the zone's nodes gain
/// beyond the freed slots the zone may take (partitions of `leaver` without that zone). Those
/// enter partitions that lost nothing, so something else moves. Without the zone cap this is
/// the leaver's replicas; here zone-3 holds one replica of every partition (its capacity share
/// is over Q) and must give some up when it shrinks.
fn leave_minimum(before: &Layout, after: &Layout, leaver: &str) -> usize {
    let gone = before.index_of(leaver).expect("a node of the layout");
    let freed: Vec<Vec<&str>> = (0..before.partitions())
        .filter(|&p| before.replicas(p).contains(&gone))
        .map(|p| {
            before
                .replicas(p)
                .iter()
                .filter(|&&i| i != gone)
                .map(|&i| before.node(i).zone.as_str())
                .collect()
        })
        .collect();
    let mut forced = 0;
    let mut zones: Vec<&str> = after.nodes().iter().map(|n| n.zone.as_str()).collect();
    zones.sort_unstable();
    zones.dedup();
    for zone in zones {
        let gain: usize = after
            .nodes()
            .iter()
            .filter(|n| n.zone == zone)
            .map(|n| load_of(after, &n.name).saturating_sub(load_of(before, &n.name)))
            .sum();
        let room = freed.iter().filter(|rest| !rest.contains(&zone)).count();
        forced += gain.saturating_sub(room);
    }
    freed.len() + forced
}

fn main() {
    let (q, n) = (4096, 3);
    let nodes = cluster(100, 4);
    let start = Instant::now();
    let base = Layout::compute(&nodes, q, n, None).expect("valid cluster");
    describe(
        "100 nodes, capacity 1..8, 4 zones",
        &base,
        start.elapsed().as_secs_f64(),
    );

    let recomputed = Layout::compute(&nodes, q, n, Some(&base)).expect("valid cluster");
    println!("recompute from itself: moved {}", diff(&base, &recomputed));

    for zone in ["zone-1", "zone-4"] {
        let mut joined = nodes.clone();
        joined.push(NodeSpec::new("node-00100", zone, 4));
        change(
            &format!("join node-00100 (capacity 4, {zone})"),
            &base,
            &joined,
            |after| load_of(after, "node-00100"),
        );
    }

    for leaver in ["node-00042", "node-00007"] {
        let left: Vec<NodeSpec> = nodes.iter().filter(|x| x.name != leaver).cloned().collect();
        let node = nodes
            .iter()
            .find(|x| x.name == leaver)
            .expect("a node of the cluster");
        let label = format!(
            "leave {leaver} (capacity {}, {}, held {} replicas)",
            node.capacity,
            node.zone,
            load_of(&base, leaver)
        );
        change(&label, &base, &left, |after| {
            leave_minimum(&base, after, leaver)
        });
    }

    let (q, n) = (65536, 3);
    let big_nodes = cluster(10_000, 10);
    let start = Instant::now();
    let big = Layout::compute(&big_nodes, q, n, None).expect("valid cluster");
    describe(
        "10,000 nodes, capacity 1..8, 10 zones",
        &big,
        start.elapsed().as_secs_f64(),
    );
    let mut joined = big_nodes.clone();
    joined.push(NodeSpec::new("node-10000", "zone-3", 4));
    change(
        "join node-10000 (capacity 4, zone-3)",
        &big,
        &joined,
        |after| load_of(after, "node-10000"),
    );
    let left: Vec<NodeSpec> = big_nodes
        .iter()
        .filter(|x| x.name != "node-04242")
        .cloned()
        .collect();
    change("leave node-04242 (capacity 3)", &big, &left, |after| {
        leave_minimum(&big, after, "node-04242")
    });
}
