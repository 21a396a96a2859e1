//! `ringkv cluster ...` and `ringkv bucket ...`.

use super::{connect, AddrArg};
use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use ringkv_api::protocol::{BucketPropsFrame, RequestFrame};
use std::process::ExitCode;

/// `ringkv cluster` arguments.
#[derive(Args)]
pub struct ClusterArgs {
    #[command(flatten)]
    pub addr: AddrArg,
    #[command(subcommand)]
    pub command: ClusterCommand,
}

/// `ringkv bucket` arguments.
#[derive(Args)]
pub struct BucketArgs {
    #[command(flatten)]
    pub addr: AddrArg,
    #[command(subcommand)]
    pub command: BucketCommand,
}

#[derive(Subcommand)]
pub enum ClusterCommand {
    /// Members, their status, zone, capacity, up/down (this node's failure detector, with
    /// phi) and partitions held; the layout version; the nodes a commit removed.
    Status {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// The layout the next commit would install, with everything staged: replicas per node,
    /// the replicas each node gains and loses, and the estimated bytes to move.
    Plan {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Install the planned layout.
    Commit {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Mark a node as leaving; the next commit removes it from the layout and the cluster for
    /// good (only an empty data directory under that name can join again).
    Leave {
        /// Node name.
        node: String,
    },
    /// Stage a role change, applied by the next commit: capacity=C (at least 1), zone=Z, or
    /// both.
    Set {
        /// Node name.
        node: String,
        /// Settings, `name=value`: `capacity`, `zone`.
        #[arg(required = true)]
        settings: Vec<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Stage the replacement of OLD (placed in the layout; it may be down) by NEW (a node
    /// started with --join, not yet placed): NEW takes exactly OLD's partitions, and OLD's
    /// zone and capacity unless `cluster set NEW` says otherwise; OLD becomes leaving.
    Replace {
        /// The node replaced.
        old: String,
        /// The node that takes its place.
        new: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Drop everything staged (role changes, replacements) and make leaving nodes that are
    /// still in the layout active again. Joining nodes stay joining.
    Revert {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Partition replicas moving after a layout change, on every member: from, to, bytes
    /// sent of total, keys, state.
    Transfers {
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// Redraw every second with a progress bar of the bytes moved, until nothing moves.
        #[arg(long)]
        watch: bool,
    },
}

#[derive(Subcommand)]
pub enum BucketCommand {
    /// Set properties: any of n=N r=R w=W timeout_ms=MS sloppy_quorum=true|false
    /// compression=none|zstd|lz4 consistency=eventual|strong (strong only before the bucket
    /// holds data, and for good).
    Set {
        /// Bucket name.
        bucket: String,
        /// Settings, `name=value`.
        #[arg(required = true)]
        settings: Vec<String>,
    },
    /// Show a bucket's properties (JSON).
    Get {
        /// Bucket name.
        bucket: String,
    },
}

/// Runs a cluster administration command.
pub async fn cluster(args: ClusterArgs) -> anyhow::Result<ExitCode> {
    let ClusterArgs { addr, command } = args;
    let client = connect(&addr).await?;
    let op = |op: &str| RequestFrame {
        op: op.into(),
        ..Default::default()
    };
    let (frame, json) = match command {
        ClusterCommand::Status { json } => (op("cluster_status"), json),
        ClusterCommand::Plan { json } => (op("cluster_plan"), json),
        ClusterCommand::Commit { json } => (op("cluster_commit"), json),
        ClusterCommand::Leave { node } => (
            RequestFrame {
                node: Some(node),
                ..op("cluster_leave")
            },
            false,
        ),
        ClusterCommand::Set {
            node,
            settings,
            json,
        } => {
            let (zone, capacity) = parse_role(&settings)?;
            let frame = RequestFrame {
                node: Some(node),
                zone,
                capacity,
                ..op("cluster_set")
            };
            (frame, json)
        }
        ClusterCommand::Replace { old, new, json } => (
            RequestFrame {
                node: Some(old),
                replacement: Some(new),
                ..op("cluster_replace")
            },
            json,
        ),
        ClusterCommand::Revert { json } => (op("cluster_revert"), json),
        ClusterCommand::Transfers {
            json: false,
            watch: true,
        } => {
            return watch_transfers(&client).await;
        }
        ClusterCommand::Transfers { json, .. } => (op("cluster_transfers"), json),
    };
    let name = frame.op.clone();
    let info = client.admin(frame).await?;
    if json {
        println!("{info}");
    } else {
        print_admin(&name, &info);
    }
    Ok(ExitCode::SUCCESS)
}

/// Parses `capacity=2 zone=z9` (either or both).
pub fn parse_role(settings: &[String]) -> anyhow::Result<(Option<String>, Option<u64>)> {
    let (mut zone, mut capacity) = (None, None);
    for s in settings {
        let (k, v) = s
            .split_once('=')
            .with_context(|| format!("{s:?} is not name=value"))?;
        match k {
            "capacity" => {
                capacity = Some(
                    v.parse()
                        .with_context(|| format!("capacity={v}: use a whole number, at least 1"))?,
                )
            }
            "zone" => zone = Some(v.to_string()),
            other => bail!("unknown node setting {other:?}: use capacity or zone"),
        }
    }
    Ok((zone, capacity))
}

/// `1234567` as `1.2 MB` (decimal units).
fn human_bytes(bytes: u64) -> String {
    let mut value = bytes as f64;
    for unit in ["B", "kB", "MB", "GB", "TB"] {
        if value < 1000.0 || unit == "TB" {
            return if unit == "B" {
                format!("{bytes} B")
            } else {
                format!("{value:.1} {unit}")
            };
        }
        value /= 1000.0;
    }
    unreachable!()
}

/// Prints the staged changes of a `cluster_set`, `cluster_replace` or `cluster_plan` answer
/// (`staged`: `{"roles": {node: {"zone", "capacity"}}, "replaces": {old: new}}`) under
/// `title`.
fn print_staged(title: &str, staged: &serde_json::Value) {
    let mut lines = Vec::new();
    for (old, new) in staged["replaces"].as_object().into_iter().flatten() {
        lines.push(format!("replace {old} by {}", new.as_str().unwrap_or("?")));
    }
    for (node, role) in staged["roles"].as_object().into_iter().flatten() {
        let mut fields = Vec::new();
        if let Some(c) = role["capacity"].as_u64() {
            fields.push(format!("capacity={c}"));
        }
        if let Some(z) = role["zone"].as_str() {
            fields.push(format!("zone={z}"));
        }
        lines.push(format!("set {node} {}", fields.join(" ")));
    }
    if lines.is_empty() {
        println!("{title}: nothing");
    } else {
        println!("{title}:");
        for l in lines {
            println!("  {l}");
        }
    }
}

/// Gets or sets a bucket's properties.
pub async fn bucket(args: BucketArgs) -> anyhow::Result<ExitCode> {
    let BucketArgs { addr, command } = args;
    let client = connect(&addr).await?;
    let frame = match command {
        BucketCommand::Get { bucket } => RequestFrame {
            op: "bucket_get".into(),
            bucket: Some(bucket.into_bytes().into()),
            ..Default::default()
        },
        BucketCommand::Set { bucket, settings } => RequestFrame {
            op: "bucket_set".into(),
            bucket: Some(bucket.into_bytes().into()),
            props: Some(parse_props(&settings)?),
            ..Default::default()
        },
    };
    println!("{}", client.admin(frame).await?);
    Ok(ExitCode::SUCCESS)
}

/// Parses `n=3 r=2 w=2 timeout_ms=500 sloppy_quorum=false compression=lz4
/// consistency=strong`.
pub fn parse_props(settings: &[String]) -> anyhow::Result<BucketPropsFrame> {
    let mut p = BucketPropsFrame::default();
    for s in settings {
        let (k, v) = s
            .split_once('=')
            .with_context(|| format!("{s:?} is not name=value"))?;
        match k {
            "n" => p.n = Some(v.parse().with_context(|| format!("n={v}"))?),
            "r" => p.r = Some(v.parse().with_context(|| format!("r={v}"))?),
            "w" => p.w = Some(v.parse().with_context(|| format!("w={v}"))?),
            "timeout_ms" => {
                p.timeout_ms = Some(v.parse().with_context(|| format!("timeout_ms={v}"))?)
            }
            "sloppy_quorum" => {
                p.sloppy_quorum = Some(
                    v.parse()
                        .with_context(|| format!("sloppy_quorum={v}: use true or false"))?,
                )
            }
            "compression" => {
                v.parse::<ringkv_cluster::Compression>()?;
                p.compression = Some(v.to_string())
            }
            "consistency" => {
                v.parse::<ringkv_cluster::membership::Consistency>()?;
                p.consistency = Some(v.to_string())
            }
            other => {
                bail!("unknown bucket property {other:?}: use n, r, w, timeout_ms, sloppy_quorum, compression or consistency")
            }
        }
    }
    Ok(p)
}

/// Prints an administration answer for people.
pub fn print_admin(op: &str, info: &serde_json::Value) {
    match op {
        "cluster_status" => {
            println!(
                "node {}  partitions {}  layout version {}  state digest {}",
                info["node"].as_str().unwrap_or("?"),
                info["partitions"],
                info["layout_version"],
                info["digest"].as_str().unwrap_or("?")
            );
            println!(
                "{:<20} {:<8} {:<6} {:<10} {:>8} {:>10} {:>6}  {:<22} {:<22}",
                "NAME",
                "STATUS",
                "UP",
                "ZONE",
                "CAPACITY",
                "PARTITIONS",
                "PHI",
                "CLUSTER ADDR",
                "CLIENT ADDR"
            );
            for m in info["members"].as_array().into_iter().flatten() {
                println!(
                    "{:<20} {:<8} {:<6} {:<10} {:>8} {:>10} {:>6.2}  {:<22} {:<22}",
                    m["name"].as_str().unwrap_or("?"),
                    m["status"].as_str().unwrap_or("?"),
                    if m["up"].as_bool() == Some(true) {
                        "up"
                    } else {
                        "down"
                    },
                    m["zone"].as_str().unwrap_or("?"),
                    m["capacity"].to_string(),
                    m["partitions"].to_string(),
                    m["phi"].as_f64().unwrap_or(0.0),
                    m["cluster_addr"].as_str().unwrap_or(""),
                    m["client_addr"].as_str().unwrap_or(""),
                );
            }
            let removed: Vec<&str> = info["removed"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|n| n.as_str())
                .collect();
            if !removed.is_empty() {
                println!(
                    "removed: {} (left the cluster: they may be stopped)",
                    removed.join(", ")
                );
            }
            let live: Vec<String> = info["live_versions"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|v| v.to_string())
                .collect();
            if live.len() > 1 {
                println!(
                    "layout change under way: live versions {}, reads use version {}; see `ringkv cluster transfers`. Leaving nodes hold data until they are removed: keep them running",
                    live.join(", "),
                    info["read_version"]
                );
            }
            // Counters of the answering node: `group: name value, ...`.
            for group in ["gossip", "hints", "repair", "replica", "strong", "restarts"] {
                if let Some(counters) = info[group].as_object() {
                    let fields: Vec<String> =
                        counters.iter().map(|(k, v)| format!("{k} {v}")).collect();
                    println!("{group}: {}", fields.join(", "));
                }
            }
            if let Some(envs) = info["lmdb"].as_object() {
                let fields: Vec<String> = envs
                    .iter()
                    .map(|(env, u)| {
                        let b = |k: &str| human_bytes(u[k].as_u64().unwrap_or(0));
                        format!(
                            "{env} {} of map {} (max {})",
                            b("used_bytes"),
                            b("map_bytes"),
                            b("max_bytes")
                        )
                    })
                    .collect();
                println!("lmdb: {}", fields.join(", "));
            }
        }
        "cluster_plan" | "cluster_commit" => {
            let verb = if op == "cluster_plan" {
                "would install"
            } else {
                "installed"
            };
            println!(
                "layout version {} {verb}: {} partition replicas move",
                info["version"], info["moved"]
            );
            for (k, label) in [("joining", "joining"), ("leaving", "leaving")] {
                if let Some(list) = info[k].as_array().filter(|l| !l.is_empty()) {
                    let names: Vec<&str> = list.iter().filter_map(|v| v.as_str()).collect();
                    println!("{label}: {}", names.join(", "));
                }
            }
            match info["nodes"].as_object() {
                Some(nodes) => {
                    println!(
                        "  {:<20} {:>8} {:>7} {:>7} {:>12} {:>12}",
                        "NODE", "REPLICAS", "GAINED", "LOST", "BYTES IN", "BYTES OUT"
                    );
                    for (node, m) in nodes {
                        let bytes = |k: &str| human_bytes(m[k].as_u64().unwrap_or(0));
                        let count = |k: &str| m[k].as_u64().unwrap_or(0);
                        println!(
                            "  {node:<20} {:>8} {:>7} {:>7} {:>12} {:>12}",
                            count("replicas"),
                            count("gained"),
                            count("lost"),
                            bytes("bytes_in"),
                            bytes("bytes_out")
                        );
                    }
                    let total = human_bytes(info["bytes_to_move"].as_u64().unwrap_or(0));
                    let missing: Vec<&str> = info["sizes_not_answered"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|n| n.as_str())
                        .collect();
                    if missing.is_empty() {
                        println!("about {total} to move");
                    } else {
                        println!(
                            "about {total} to move (partial estimate: {} of {} members did not report their partition sizes: {})",
                            missing.len(),
                            info["sizes_asked"],
                            missing.join(", ")
                        );
                    }
                    print_staged("staged", &info["staged"]);
                }
                None => {
                    if let Some(map) = info["replicas_per_node"].as_object() {
                        for (node, count) in map {
                            println!("  {node:<20} {count:>6} partition replicas");
                        }
                    }
                }
            }
        }
        "cluster_set" | "cluster_replace" => print_staged("staged", info),
        "cluster_revert" => {
            print_staged("dropped", &info["dropped"]);
            let back: Vec<&str> = info["active_again"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|n| n.as_str())
                .collect();
            if !back.is_empty() {
                println!("active again: {}", back.join(", "));
            }
        }
        "cluster_transfers" => {
            let rows = info["transfers"].as_array().cloned().unwrap_or_default();
            if rows.is_empty() {
                println!("no partition is moving");
            } else {
                println!(
                    "  {:<12} {:<12} {:>8} {:>9} {:>12} {:>12} {:>9}  STATE",
                    "FROM", "TO", "VERSION", "PARTITION", "SENT", "TOTAL", "KEYS"
                );
                for r in &rows {
                    let state = match &r["state"] {
                        serde_json::Value::String(s) => s.clone(),
                        serde_json::Value::Object(o) => o
                            .iter()
                            .map(|(k, v)| format!("{k}: {}", v["reason"].as_str().unwrap_or("")))
                            .collect(),
                        other => other.to_string(),
                    };
                    println!(
                        "  {:<12} {:<12} {:>8} {:>9} {:>12} {:>12} {:>9}  {state}",
                        r["from"].as_str().unwrap_or(""),
                        r["to"].as_str().unwrap_or(""),
                        r["version"],
                        r["partition"],
                        human_bytes(r["bytes_sent"].as_u64().unwrap_or(0)),
                        human_bytes(r["bytes_total"].as_u64().unwrap_or(0)),
                        r["keys"],
                    );
                }
            }
            let missing: Vec<&str> = info["not_answered"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|n| n.as_str())
                .collect();
            if !missing.is_empty() {
                println!(
                    "not answered (their transfers are not listed): {}",
                    missing.join(", ")
                );
            }
        }
        _ => println!("ok"),
    }
}

/// `cluster transfers --watch`: a progress bar of the bytes moved over every member's
/// transfers, redrawn every second until no transfer is left that is not done.
async fn watch_transfers(client: &ringkv_api::Client) -> anyhow::Result<ExitCode> {
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:40} {bytes}/{total_bytes} ({bytes_per_sec}) {msg}",
        )
        .expect("a valid template"),
    );
    loop {
        let info = client
            .admin(RequestFrame {
                op: "cluster_transfers".into(),
                ..Default::default()
            })
            .await?;
        let rows = info["transfers"].as_array().cloned().unwrap_or_default();
        let sum = |f: &str| rows.iter().map(|r| r[f].as_u64().unwrap_or(0)).sum::<u64>();
        let open = rows.iter().filter(|r| r["state"] != "done").count();
        bar.set_length(sum("bytes_total").max(sum("bytes_sent")));
        bar.set_position(sum("bytes_sent"));
        bar.set_message(format!("{} transfers, {open} not done", rows.len()));
        if open == 0 {
            bar.finish();
            return Ok(ExitCode::SUCCESS);
        }
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
}
