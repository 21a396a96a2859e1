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
    /// The layout the next commit would install: replicas per node and moves.
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
}

#[derive(Subcommand)]
pub enum BucketCommand {
    /// Set properties: any of n=N r=R w=W timeout_ms=MS sloppy_quorum=true|false.
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
    let (op, json, node) = match command {
        ClusterCommand::Status { json } => ("cluster_status", json, None),
        ClusterCommand::Plan { json } => ("cluster_plan", json, None),
        ClusterCommand::Commit { json } => ("cluster_commit", json, None),
        ClusterCommand::Leave { node } => ("cluster_leave", false, Some(node)),
    };
    let info = client
        .admin(RequestFrame {
            op: op.into(),
            node,
            ..Default::default()
        })
        .await?;
    if json {
        println!("{info}");
    } else {
        print_admin(op, &info);
    }
    Ok(ExitCode::SUCCESS)
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

/// Parses `n=3 r=2 w=2 timeout_ms=500 sloppy_quorum=false`.
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
            other => {
                bail!("unknown bucket property {other:?}: use n, r, w, timeout_ms or sloppy_quorum")
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
                println!("removed: {}", removed.join(", "));
            }
            // Counters of the answering node: `group: name value, ...`.
            for group in ["gossip", "hints", "repair", "replica", "restarts"] {
                if let Some(counters) = info[group].as_object() {
                    let fields: Vec<String> =
                        counters.iter().map(|(k, v)| format!("{k} {v}")).collect();
                    println!("{group}: {}", fields.join(", "));
                }
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
            if let Some(map) = info["replicas_per_node"].as_object() {
                for (node, count) in map {
                    println!("  {node:<20} {count:>6} partition replicas");
                }
            }
        }
        _ => println!("ok"),
    }
}
