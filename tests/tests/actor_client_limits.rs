//! Hostile client nodes on `actor-listen` (one node, about 3 s), in a test binary of its own:
//! a process holds one client node at a time (ractor's registry and process groups are
//! process-wide). A wrong cookie is refused; garbage and an oversized message on
//! `actor-listen` end only that connection; a client node's casts to a replica actor never
//! arrive (unit tests in `client_filter` cover a client that names itself like a member).

use ringkv_api::client::actor::{ActorClientConfig, KvRef};
use ringkv_api::client::{CallOptions, ClientError};
use ringkv_tests::{free_port, runtime, Cluster, TEST_COOKIE};
use std::io::Write;
use std::time::{Duration, Instant};

fn actor_flags(i: usize) -> (String, Vec<String>) {
    let ip = format!("127.0.0.{i}");
    let addr = format!("{ip}:{}", free_port(&ip));
    (addr.clone(), vec!["--actor-listen".into(), addr])
}

#[test]
fn client_nodes_get_no_more_than_tcp_clients() {
    let (addr, mut flags) = actor_flags(1);
    flags.extend([
        "--fault-injection".into(),
        "--max-frame-bytes".into(),
        "1048576".into(),
    ]);
    let cluster = Cluster::start_each(1, move |_| flags.clone(), &[], None);
    let rt = runtime();

    // A wrong cookie: no gateway ever shows up.
    let mut wrong = ActorClientConfig::new("wrong", "not-the-cookie", [addr.clone()]);
    wrong.connect_timeout = Duration::from_secs(2);
    match rt.block_on(KvRef::connect(wrong)) {
        Err(ClientError::NoNode(_)) => {}
        Err(e) => panic!("wrong cookie: unexpected error {e}"),
        Ok(_) => panic!("a client node with the wrong cookie was accepted"),
    }

    // Garbage and a huge announced length on actor-listen: that connection ends, nothing else.
    for bytes in [vec![0xAB; 4096], (1u64 << 40).to_be_bytes().to_vec()] {
        let mut s = std::net::TcpStream::connect(&addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let _ = s.write_all(&bytes);
        let mut buf = [0u8; 1024];
        let closed = loop {
            match std::io::Read::read(&mut s, &mut buf) {
                Ok(0) | Err(_) => break true,
                Ok(_) => continue,
            }
        };
        assert!(closed, "the node closed the garbage connection");
    }

    let kv = rt
        .block_on(KvRef::connect(ActorClientConfig::new(
            "ok",
            TEST_COOKIE,
            [addr.clone()],
        )))
        .expect("the right cookie connects");
    rt.block_on(async {
        let o = CallOptions::default();
        kv.put(b"b", b"k", b"v".to_vec(), &[], &o).await.unwrap();
        // A request over max-frame-bytes: refused, and the client node keeps working (either
        // the gateway answers frame_too_large, or the filter ends the session and the client
        // reconnects).
        let big = vec![7u8; 3 << 20];
        let e = kv.put(b"b", b"big", big, &[], &o).await.unwrap_err();
        println!("oversized request: {e}");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match kv.get(b"b", b"k", &o).await {
                Ok(f) => {
                    assert_eq!(f.values, vec![b"v".to_vec()]);
                    break;
                }
                Err(e) if Instant::now() < deadline => {
                    println!("after the oversized request: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("the client node did not recover: {e}"),
            }
        }
        // A cast to a replica actor the client learnt of through the process groups never
        // arrives: the replica does not panic.
        let group = ringkv_actors::replica::replica_group("n1");
        let replica = ractor::pg::get_members(&group)
            .into_iter()
            .next()
            .expect("the node's process groups reached the client node");
        let replica: ractor::ActorRef<ringkv_actors::replica::ReplicaMsg> = replica.into();
        for _ in 0..5 {
            let _ = replica.cast(ringkv_actors::replica::ReplicaMsg::InjectPanic);
        }
        kv.put(b"b", b"k2", b"v".to_vec(), &[], &o).await.unwrap();
    });
    assert_eq!(
        cluster.counter(0, "restarts", "replica"),
        Some(0),
        "a client node's cast reached the replica actor"
    );
    drop(kv);
}
