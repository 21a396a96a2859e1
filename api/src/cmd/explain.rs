//! `ringkv explain BUCKET KEY`: where a key lives and why it reads as it does (op `explain`,
//! PROTOCOL.md): partition, preference list and fallbacks with their liveness, each
//! replica's version, the hints held for the key, and the partition's last anti-entropy
//! exchanges.

use super::{connect, AddrArg};
use clap::Args;
use serde_json::Value;
use std::process::ExitCode;

/// `ringkv explain` arguments.
#[derive(Args)]
pub struct ExplainArgs {
    #[command(flatten)]
    pub addr: AddrArg,
    /// Bucket name (1 to 64 bytes).
    pub bucket: String,
    /// Key (1 to 442 bytes).
    pub key: String,
    /// Print the answer as JSON (the op's `info` map).
    #[arg(long)]
    pub json: bool,
    /// Time limit of each node's answer, ms [default: 2000; at most 60000].
    #[arg(long)]
    pub timeout_ms: Option<u64>,
}

/// Runs `ringkv explain`.
pub async fn explain(args: ExplainArgs) -> anyhow::Result<ExitCode> {
    let client = connect(&args.addr).await?;
    let info = client
        .explain(args.bucket.as_bytes(), args.key.as_bytes(), args.timeout_ms)
        .await?;
    if args.json {
        println!("{info}");
    } else {
        print!("{}", render(&info));
    }
    Ok(ExitCode::SUCCESS)
}

/// `1234` ms as `1.2 s`, `75000` as `1.2 m`, `5400000` as `1.5 h`.
fn human_ms(ms: u64) -> String {
    match ms {
        0..1_000 => format!("{ms} ms"),
        1_000..60_000 => format!("{:.1} s", ms as f64 / 1e3),
        60_000..3_600_000 => format!("{:.1} m", ms as f64 / 6e4),
        _ => format!("{:.1} h", ms as f64 / 3.6e6),
    }
}

fn str_of(v: &Value) -> &str {
    v.as_str().unwrap_or("?")
}

/// `{replica hex: counter}` as `{a1b2c3d4e5f60718:2, ...}` (and `+N more`).
fn clock(record: &Value) -> String {
    let mut parts: Vec<String> = record["clock"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(r, c)| format!("{r}:{c}"))
        .collect();
    if let Some(more) = record["clock_more"].as_u64().filter(|m| *m > 0) {
        parts.push(format!("+{more} more"));
    }
    format!("{{{}}}", parts.join(", "))
}

/// One line for a record: siblings, live ones, tombstone, clock and size.
fn record_line(record: &Value) -> String {
    let siblings = record["siblings"].as_u64().unwrap_or(0);
    let live = record["live"].as_u64().unwrap_or(0);
    let what = if record["tombstone"] == true {
        "tombstone (deleted)".to_string()
    } else {
        format!(
            "{siblings} sibling{} ({live} live)",
            if siblings == 1 { "" } else { "s" }
        )
    };
    format!(
        "{what}  clock {}  record {} B",
        clock(record),
        record["bytes"].as_u64().unwrap_or(0)
    )
}

/// The lines of a record's listed siblings, indented by `indent`; expiries are shown
/// against `now_ms`, the answering node's clock.
fn sibling_lines(record: &Value, now_ms: u64, indent: &str, out: &mut String) {
    for s in record["listed"].as_array().into_iter().flatten() {
        let mut line = format!("{indent}dot {}  ", str_of(&s["dot"]));
        if s["tombstone"] == true {
            line.push_str("tombstone");
        } else {
            match s["size"].as_u64() {
                Some(size) => line.push_str(&format!("{size} B")),
                None => line.push_str("size unknown"),
            }
            if s["large"] == true {
                line.push_str(&format!(
                    ", large: {} chunks",
                    s["chunks"].as_u64().unwrap_or(0)
                ));
            } else if s["codec"] != "none" {
                line.push_str(&format!(
                    ", {} B stored ({})",
                    s["stored_bytes"].as_u64().unwrap_or(0),
                    str_of(&s["codec"])
                ));
            }
            if let Some(at) = s["expires_at_ms"].as_u64() {
                if s["expired"] == true {
                    line.push_str(&format!(
                        ", expired {} ago",
                        human_ms(now_ms.saturating_sub(at))
                    ));
                } else {
                    line.push_str(&format!(
                        ", expires in {}",
                        human_ms(at.saturating_sub(now_ms))
                    ));
                }
            }
        }
        out.push_str(&line);
        out.push('\n');
    }
    if let Some(more) = record["siblings_more"].as_u64().filter(|m| *m > 0) {
        out.push_str(&format!("{indent}... {more} more siblings\n"));
    }
}

fn ballot(b: &Value) -> String {
    format!(
        "({}, {})",
        b["counter"].as_u64().unwrap_or(0),
        str_of(&b["proposer"])
    )
}

/// A node's liveness: `up`/`DOWN`, phi, and `unreachable` when it cannot be called.
fn liveness(v: &Value) -> String {
    let mut s = format!(
        "{:<4} phi {:.2}",
        if v["up"] == true { "up" } else { "DOWN" },
        v["phi"].as_f64().unwrap_or(0.0)
    );
    if v["reachable"] != true {
        s.push_str("  unreachable");
    }
    s
}

/// The answer of op `explain` for people.
pub fn render(info: &Value) -> String {
    let mut out = String::new();
    let now_ms = info["now_ms"].as_u64().unwrap_or(0);
    let strong = info["consistency"] == "strong";
    let push = |out: &mut String, line: String| {
        out.push_str(&line);
        out.push('\n');
    };
    push(
        &mut out,
        format!(
            "key {}/{}: partition {} of {}, n={}, {}{}; layout version {}; answered by {}",
            str_of(&info["bucket"]),
            str_of(&info["key"]),
            info["partition"],
            info["partitions"],
            info["n"],
            str_of(&info["consistency"]),
            if info["consistency"] == "eventual" {
                if info["sloppy_quorum"] == true {
                    ", sloppy quorum"
                } else {
                    ", strict quorum"
                }
            } else {
                ""
            },
            info["layout_version"],
            str_of(&info["node"]),
        ),
    );
    push(&mut out, "preference list (primaries):".into());
    for v in info["preference_list"].as_array().into_iter().flatten() {
        push(
            &mut out,
            format!("  {:<16} {}", str_of(&v["node"]), liveness(v)),
        );
    }
    if let Some(pending) = info["pending"].as_array().filter(|p| !p.is_empty()) {
        push(
            &mut out,
            "new replicas (a layout change is under way):".into(),
        );
        for v in pending {
            push(
                &mut out,
                format!("  {:<16} {}", str_of(&v["node"]), liveness(v)),
            );
        }
    }
    let fallbacks: Vec<String> = info["fallbacks"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|v| {
            format!(
                "{} ({})",
                str_of(&v["node"]),
                if v["up"] == true { "up" } else { "DOWN" }
            )
        })
        .collect();
    if strong {
        push(&mut out, "fallbacks: none (strong bucket: no hints)".into());
    } else if fallbacks.is_empty() {
        push(&mut out, "fallbacks: none (no other member)".into());
    } else {
        push(
            &mut out,
            format!("fallbacks, in order: {}", fallbacks.join(", ")),
        );
    }
    push(
        &mut out,
        if strong {
            "replicas (each one's Paxos acceptor state, read locally):".into()
        } else {
            "replicas (each read locally: no quorum, no read repair):".into()
        },
    );
    for r in info["replicas"].as_array().into_iter().flatten() {
        let node = str_of(&r["node"]);
        match str_of(&r["status"]) {
            "ok" if r["paxos"].is_object() => {
                let p = &r["paxos"];
                let value = match (p["value_size"].as_u64(), p["tombstone"] == true) {
                    (Some(size), _) => format!("value {size} B"),
                    (None, true) => "tombstone (deleted)".to_string(),
                    (None, false) => "no value".to_string(),
                };
                push(
                    &mut out,
                    format!(
                        "  {node:<16} acceptor: promised {}, accepted {}, {value}",
                        ballot(&p["promised"]),
                        ballot(&p["accepted"])
                    ),
                );
            }
            "ok" => {
                push(
                    &mut out,
                    format!("  {node:<16} {}", record_line(&r["record"])),
                );
                sibling_lines(&r["record"], now_ms, "      ", &mut out);
            }
            "no_record" => push(&mut out, format!("  {node:<16} no record")),
            status => push(
                &mut out,
                format!("  {node:<16} {status}: {}", str_of(&r["error"])),
            ),
        }
    }
    let hints = info["hints"].as_array().cloned().unwrap_or_default();
    let more = info["hints_more"].as_u64().unwrap_or(0);
    if hints.is_empty() && more == 0 {
        push(
            &mut out,
            "hints: none held by the nodes that answered".into(),
        );
    } else {
        push(&mut out, format!("hints ({}):", hints.len() as u64 + more));
        for h in &hints {
            push(
                &mut out,
                format!(
                    "  held by {} for {} (seq {}): {}",
                    str_of(&h["holder"]),
                    str_of(&h["owner"]),
                    h["seq"],
                    record_line(&h["record"])
                ),
            );
        }
        if more > 0 {
            push(&mut out, format!("  ... {more} more"));
        }
    }
    for node in info["hints_incomplete"].as_array().into_iter().flatten() {
        push(
            &mut out,
            format!(
                "  (the hint scan of {} stopped at its bound: it may hold more)",
                str_of(node)
            ),
        );
    }
    push(
        &mut out,
        format!(
            "anti-entropy (partition {}, last exchange per replica pair{}):",
            info["partition"],
            if strong {
                "; strong keys are not exchanged"
            } else {
                ""
            }
        ),
    );
    for e in info["exchanges"].as_array().into_iter().flatten() {
        let pair = format!("{} - {}", str_of(&e["node"]), str_of(&e["peer"]));
        let age = e["age_ms"].as_u64().map(human_ms).unwrap_or_default();
        let detail = match str_of(&e["status"]) {
            "ok" => format!(
                "ok {age} ago: {} keys differed, {} repaired ({} since {} started)",
                e["keys_differing"].as_u64().unwrap_or(0),
                e["keys_repaired"].as_u64().unwrap_or(0),
                e["keys_repaired_total"].as_u64().unwrap_or(0),
                str_of(&e["node"])
            ),
            "failed" => {
                let mut s = format!("failed {age} ago: {}", str_of(&e["error"]));
                if let Some(ok) = e["last_ok_age_ms"].as_u64() {
                    s.push_str(&format!(" (last completed {} ago)", human_ms(ok)));
                }
                s
            }
            "never" => format!("none since {} started", str_of(&e["node"])),
            _ => format!("unknown: {} did not answer", str_of(&e["node"])),
        };
        push(&mut out, format!("  {pair:<20} {detail}"));
    }
    if let Some(names) = info["unreachable"].as_array().filter(|u| !u.is_empty()) {
        let names: Vec<&str> = names.iter().map(str_of).collect();
        push(
            &mut out,
            format!(
                "not answered (their hints and exchanges are unknown): {}",
                names.join(", ")
            ),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_renders_every_part() {
        let info = serde_json::json!({
            "node": "n1", "now_ms": 90, "bucket": "carts", "key": "alice", "partition": 5,
            "partitions": 16, "consistency": "eventual", "n": 2, "sloppy_quorum": true,
            "layout_version": 2,
            "preference_list": [
                {"node": "n1", "up": true, "phi": 0.0, "reachable": true},
                {"node": "n2", "up": false, "phi": 12.5, "reachable": false}
            ],
            "pending": [],
            "fallbacks": [{"node": "n3", "up": true, "phi": 0.2, "reachable": true}],
            "replicas": [
                {"node": "n1", "status": "ok", "record": {
                    "clock": {"000000000000000a": 1, "000000000000000b": 1}, "clock_more": 0,
                    "siblings": 2, "live": 2, "tombstone": false, "siblings_more": 0,
                    "bytes": 80, "listed": [
                        {"dot": "000000000000000a:1", "tombstone": false, "size": 5,
                         "stored_bytes": 5, "codec": "none", "large": false,
                         "timestamp_ms": 1, "expired": false},
                        {"dot": "000000000000000b:1", "tombstone": false, "size": 5000,
                         "stored_bytes": 40, "codec": "zstd", "large": false,
                         "timestamp_ms": 1, "expires_at_ms": 99, "expired": false}
                    ]}},
                {"node": "n2", "status": "unreachable", "error": "node n2 is unreachable"}
            ],
            "hints": [{"holder": "n3", "owner": "n2", "seq": 7, "record": {
                "clock": {"000000000000000a": 1}, "clock_more": 0, "siblings": 1,
                "live": 1, "tombstone": false, "siblings_more": 0, "bytes": 40,
                "listed": []}}],
            "hints_more": 0, "hints_incomplete": [], "unreachable": ["n2"],
            "exchanges": [
                {"node": "n1", "peer": "n2", "status": "failed", "age_ms": 1500,
                 "error": "skipped: node n2 is unreachable", "last_ok_age_ms": 61000},
                {"node": "n1", "peer": "n3", "status": "ok", "age_ms": 300,
                 "keys_differing": 1, "keys_repaired": 1, "keys_repaired_total": 3},
                {"node": "n2", "peer": "n3", "status": "unknown"}
            ]
        });
        let text = render(&info);
        for want in [
            "key carts/alice: partition 5 of 16, n=2, eventual, sloppy quorum",
            "n2               DOWN phi 12.50  unreachable",
            "fallbacks, in order: n3 (up)",
            "2 siblings (2 live)  clock {000000000000000a:1, 000000000000000b:1}",
            "dot 000000000000000b:1  5000 B, 40 B stored (zstd), expires in 9 ms",
            "n2               unreachable: node n2 is unreachable",
            "held by n3 for n2 (seq 7): 1 sibling (1 live)",
            "n1 - n2              failed 1.5 s ago: skipped: node n2 is unreachable (last completed 1.0 m ago)",
            "n1 - n3              ok 300 ms ago: 1 keys differed, 1 repaired (3 since n1 started)",
            "n2 - n3              unknown: n2 did not answer",
            "not answered (their hints and exchanges are unknown): n2",
        ] {
            assert!(text.contains(want), "{want:?} missing from:\n{text}");
        }
    }
}
