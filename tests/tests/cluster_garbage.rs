//! A peer that sends garbage to a node's cluster port (random bytes, huge length prefixes,
//! truncated frames, connections that never speak) must neither crash the node nor cut its
//! sessions with the real peers (issue 15, item 5). Three real processes; the garbage comes
//! from this test over many connections while the nodes keep answering replicated writes.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use ringkv_api::protocol::RequestFrame;
use ringkv_tests::Cluster;
use serde_bytes::ByteBuf;
use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

fn put_w3(c: &Cluster, via: usize, key: &str) -> Result<(), String> {
    let frame = RequestFrame {
        id: 1,
        op: "put".into(),
        bucket: Some(ByteBuf::from(b"garbage-test".to_vec())),
        key: Some(ByteBuf::from(key.as_bytes().to_vec())),
        value: Some(ByteBuf::from(b"v".to_vec())),
        w: Some(3),
        ..Default::default()
    };
    let answer = c.request(via, frame, Duration::from_secs(5))?;
    if answer.ok {
        Ok(())
    } else {
        Err(format!("{:?}: {:?}", answer.code, answer.message))
    }
}

/// One connection's worth of garbage, chosen by `rng`.
fn garbage(rng: &mut StdRng) -> Vec<u8> {
    match rng.gen_range(0..5) {
        // Random bytes.
        0 => (0..rng.gen_range(1..4096)).map(|_| rng.gen()).collect(),
        // A length prefix of every size, then a little.
        1 => {
            let mut out = rng.gen::<u64>().to_be_bytes()[..rng.gen_range(1..9)].to_vec();
            out.extend((0..rng.gen_range(0..64)).map(|_| rng.gen::<u8>()));
            out
        }
        // All ones: the largest length any framing could read.
        2 => vec![0xff; rng.gen_range(1..64)],
        // A small plausible prefix, cut short.
        3 => {
            let mut out = vec![0, 0, 0, 0, 0, 0, 0, rng.gen_range(8..200)];
            out.extend((0..rng.gen_range(0..8)).map(|_| rng.gen::<u8>()));
            out
        }
        // Nothing at all: the connection stays open and silent.
        _ => Vec::new(),
    }
}

#[test]
fn garbage_on_the_cluster_port_hurts_neither_the_node_nor_its_peers() {
    let mut c = Cluster::start(3, &[]);
    let status = c.status(0);
    let target: SocketAddr = status["members"]
        .as_array()
        .and_then(|m| m.iter().find(|m| m["name"] == "n1"))
        .and_then(|m| m["cluster_addr"].as_str())
        .and_then(|a| a.parse().ok())
        .expect("n1's cluster address in cluster status");
    put_w3(&c, 1, "before").expect("a w=3 put before the garbage");
    let exchanges_before = c.counter(0, "gossip", "exchanges").unwrap_or(0);

    let mut rng = StdRng::seed_from_u64(15);
    let started = Instant::now();
    let mut silent = Vec::new();
    let mut sent = 0usize;
    let mut connections = 0usize;
    let mut puts = 0usize;
    // 300 connections at most, 6 s at most; a w=3 put through another node every 25.
    for i in 0..300 {
        if started.elapsed() > Duration::from_secs(6) {
            break;
        }
        let Ok(mut s) = TcpStream::connect_timeout(&target, Duration::from_secs(1)) else {
            continue;
        };
        connections += 1;
        let bytes = garbage(&mut rng);
        if bytes.is_empty() {
            // Held open until the end of the test.
            silent.push(s);
        } else {
            let _ = s.set_write_timeout(Some(Duration::from_millis(200)));
            let _ = s.write_all(&bytes);
            sent += bytes.len();
        }
        if i % 25 == 24 {
            put_w3(&c, 1 + (i / 25) % 2, &format!("during-{i}"))
                .unwrap_or_else(|e| c.fail(&format!("a w=3 put during the garbage failed: {e}")));
            puts += 1;
            for observer in 0..3 {
                for name in ["n1", "n2", "n3"] {
                    if c.sees_up(observer, name) != Some(true) {
                        c.fail(&format!(
                            "n{} sees {name} down during the garbage",
                            observer + 1
                        ));
                    }
                }
            }
        }
    }
    println!(
        "sent {sent} bytes of garbage over {connections} connections in {:?} ({} held silent); {puts} w=3 puts meanwhile",
        started.elapsed(),
        silent.len()
    );
    assert!(puts >= 4, "too few puts ran during the garbage: {puts}");
    assert!(c.nodes[0].is_running(), "n1 died:\n{}", c.log_tails(40));
    drop(silent);
    put_w3(&c, 0, "after").expect("a w=3 put through n1 after the garbage");
    // Gossip with the real peers went on.
    c.wait_for(
        "gossip exchanges on n1 after the garbage",
        Duration::from_secs(10),
        || {
            let now = c.counter(0, "gossip", "exchanges").unwrap_or(0);
            if now > exchanges_before {
                Ok(())
            } else {
                Err(format!("{now} exchanges"))
            }
        },
    );
    assert!(
        !c.nodes[0].log().contains("panicked"),
        "n1 panicked:\n{}",
        c.log_tails(40)
    );
}
