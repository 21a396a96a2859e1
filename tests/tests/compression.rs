//! Per-bucket compression on a cluster of real `ringkv` processes: values round-trip through
//! 3 replicas byte for byte, are stored smaller than they are, incompressible values are stored
//! raw, buckets that change their `compression` read their mixed values, and the property is
//! set and shown through the CLI and refused with a clear error when invalid.

use ringkv_api::protocol::{BucketPropsFrame, RequestFrame};
use ringkv_api::Client;
use ringkv_tests::{local_read as local, quorum as q, runtime as rt};
use ringkv_tests::{wait_until, Cluster};
use std::time::Duration;

/// Text that compresses about 4:1, like documentation.
fn text(len: usize) -> Vec<u8> {
    let words = [
        "the ",
        "replica ",
        "stores ",
        "values ",
        "of ",
        "each ",
        "partition ",
        "durably, ",
        "and ",
        "anti-entropy ",
        "repairs ",
        "what ",
        "differs.\n",
        "ringkv ",
        "bucket ",
    ];
    let mut out = Vec::with_capacity(len + 16);
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(words[(x % words.len() as u64) as usize].as_bytes());
    }
    out.truncate(len);
    out
}

fn stored_bytes(cluster: &Cluster, i: usize) -> u64 {
    cluster.status(i)["storage"]["bytes"]
        .as_u64()
        .expect("cluster status has storage.bytes")
}

fn bucket_get(cluster: &Cluster, i: usize, bucket: &str) -> serde_json::Value {
    let (code, out, err) = cluster.nodes[i].cli(&["bucket", "get", bucket], None);
    assert_eq!(code, 0, "bucket get {bucket}: {err}");
    serde_json::from_slice(&out).expect("JSON answer")
}

/// A 1 MiB compressible value written with w=3 reads back identical through another node and
/// from each replica's own copy, and every node stores it in under a third of its size; a
/// random value is stored raw (bytes grow by at least its size) and reads back identical; after
/// `compression=lz4` and then `none`, old and new values of the bucket all read back.
#[test]
fn a_compressible_value_round_trips_through_three_replicas_stored_smaller() {
    let cluster = Cluster::start(3, &["--partitions", "16"]);
    let (a1, a3) = (cluster.nodes[0].addr, cluster.nodes[2].addr);
    let doc = text(1 << 20);
    let before: Vec<u64> = (0..3).map(|i| stored_bytes(&cluster, i)).collect();
    rt().block_on(async {
        let c1 = Client::connect(a1).await.unwrap();
        c1.put_with(b"docs", b"manual", doc.clone(), &[], &q(3, 2, 3))
            .await
            .unwrap();
        let c3 = Client::connect(a3).await.unwrap();
        let got = c3.get_with(b"docs", b"manual", &q(3, 3, 2)).await.unwrap();
        assert!(got.values == vec![doc.clone()], "read through n3 differs");
    });
    for (i, before) in before.iter().enumerate() {
        assert!(
            cluster.local_values(i, b"docs", b"manual") == vec![doc.clone()],
            "{}'s own copy differs",
            cluster.name(i)
        );
        let grew = stored_bytes(&cluster, i) - before;
        assert!(
            grew < doc.len() as u64 / 3,
            "{} stores {grew} bytes for a {} byte value",
            cluster.name(i),
            doc.len()
        );
    }

    // Random bytes do not shrink: stored raw, and still exact.
    let noise: Vec<u8> = (0..256 * 1024).map(|_| rand::random::<u8>()).collect();
    let before: Vec<u64> = (0..3).map(|i| stored_bytes(&cluster, i)).collect();
    rt().block_on(async {
        let c1 = Client::connect(a1).await.unwrap();
        c1.put_with(b"docs", b"noise", noise.clone(), &[], &q(3, 2, 3))
            .await
            .unwrap();
        let got = c1.get_with(b"docs", b"noise", &q(3, 3, 2)).await.unwrap();
        assert!(got.values == vec![noise.clone()], "random value differs");
    });
    for (i, before) in before.iter().enumerate() {
        let grew = stored_bytes(&cluster, i) - before;
        assert!(
            grew >= noise.len() as u64,
            "random value stored in {grew} bytes"
        );
    }

    // Change the bucket's codec twice: values of every encoding live side by side.
    let mut written = vec![(b"manual".to_vec(), doc.clone())];
    for (codec, key) in [("lz4", b"lz4-doc".to_vec()), ("none", b"raw-doc".to_vec())] {
        let setting = format!("compression={codec}");
        let (code, _, err) = cluster.nodes[1].cli(&["bucket", "set", "docs", &setting], None);
        assert_eq!(code, 0, "{err}");
        wait_until("the property to spread", Duration::from_secs(15), || {
            (0..3)
                .all(|i| bucket_get(&cluster, i, "docs")["compression"] == codec)
                .then_some(())
        });
        let value = text(300_000 + key.len());
        let before = stored_bytes(&cluster, 0);
        rt().block_on(async {
            let c1 = Client::connect(a1).await.unwrap();
            c1.put_with(b"docs", &key, value.clone(), &[], &q(3, 2, 3))
                .await
                .unwrap();
        });
        let grew = stored_bytes(&cluster, 0) - before;
        if codec == "none" {
            assert!(grew >= value.len() as u64, "none stored {grew} bytes");
        } else {
            assert!(grew < value.len() as u64 / 2, "lz4 stored {grew} bytes");
        }
        written.push((key, value));
    }
    rt().block_on(async {
        let c3 = Client::connect(a3).await.unwrap();
        for (key, value) in &written {
            let got = c3.get_with(b"docs", key, &q(3, 3, 2)).await.unwrap();
            assert!(
                got.values == vec![value.clone()],
                "{} differs",
                String::from_utf8_lossy(key)
            );
            let mine = c3.get_with(b"docs", key, &local()).await.unwrap();
            assert!(mine.values == vec![value.clone()]);
        }
    });
}

/// `bucket get` shows `compression` (default zstd); `bucket set B compression=lz4` changes
/// it; an unknown codec is refused by the CLI and, sent as a raw frame, answered with
/// `malformed_request`, changing nothing.
#[test]
fn the_compression_property_is_set_shown_and_validated() {
    let cluster = Cluster::start(1, &["--partitions", "4"]);
    assert_eq!(bucket_get(&cluster, 0, "b")["compression"], "zstd");
    let (code, out, err) = cluster.nodes[0].cli(&["bucket", "set", "b", "compression=lz4"], None);
    assert_eq!(code, 0, "{err}");
    assert!(String::from_utf8_lossy(&out).contains("lz4"), "{out:?}");
    let props = bucket_get(&cluster, 0, "b");
    assert_eq!(props["compression"], "lz4");
    assert_eq!(props["n"], 3, "other properties keep their values");

    let (code, _, err) = cluster.nodes[0].cli(&["bucket", "set", "b", "compression=gzip"], None);
    assert_ne!(code, 0);
    assert!(err.contains("none, zstd or lz4"), "{err}");

    let frame = RequestFrame {
        op: "bucket_set".into(),
        bucket: Some(b"b".to_vec().into()),
        props: Some(BucketPropsFrame {
            compression: Some("gzip".into()),
            ..Default::default()
        }),
        ..Default::default()
    };
    let answer = cluster
        .request(0, frame, Duration::from_secs(10))
        .expect("an answer");
    assert!(!answer.ok);
    assert_eq!(
        answer.code.as_deref(),
        Some("malformed_request"),
        "{answer:?}"
    );
    assert!(
        answer
            .message
            .as_deref()
            .unwrap_or("")
            .contains("none, zstd or lz4"),
        "{answer:?}"
    );
    assert_eq!(bucket_get(&cluster, 0, "b")["compression"], "lz4");
}

/// Compressed values reach a replica that missed the write: node 3 is killed, a compressible
/// value is written with w=2, node 3 restarts, and hinted handoff or anti-entropy gives it the
/// exact value, stored compressed.
#[test]
fn a_replica_that_missed_a_compressed_write_catches_up_with_the_exact_value() {
    let mut cluster = Cluster::start(3, &["--partitions", "16"]);
    let a1 = cluster.nodes[0].addr;
    cluster.nodes[2].kill9();
    let doc = text(512 * 1024);
    rt().block_on(async {
        let c1 = Client::connect(a1).await.unwrap();
        c1.put_with(b"docs", b"late", doc.clone(), &[], &q(3, 2, 2))
            .await
            .unwrap();
    });
    cluster.nodes[2].restart();
    wait_until(
        "node 3 to receive the value",
        Duration::from_secs(60),
        || (cluster.local_values(2, b"docs", b"late") == vec![doc.clone()]).then_some(()),
    );
    let stored = stored_bytes(&cluster, 2);
    assert!(
        stored < doc.len() as u64 / 3,
        "node 3 stores {stored} bytes for a {} byte value",
        doc.len()
    );
}
