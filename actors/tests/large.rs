//! Large values on one node in-process: streamed uploads, ranged reads, siblings of large
//! values, the upload errors, and the garbage collection of unreferenced chunks.

use ringkv_actors::large::StreamError;
use ringkv_actors::{KvError, Node, NodeConfig, RequestOptions};
use ringkv_storage::Condition;
use std::time::{Duration, Instant};

const CHUNK: usize = 64 << 10;

async fn start(dir: &std::path::Path, extra: impl FnOnce(&mut NodeConfig)) -> Node {
    let mut config = NodeConfig {
        data_dir: dir.to_path_buf(),
        partitions: 8,
        initial_map_bytes: 1 << 20,
        chunk_bytes: Some(CHUNK),
        max_value_bytes: 64 << 20,
        ..Default::default()
    };
    extra(&mut config);
    Node::start(config).await.unwrap()
}

fn opts() -> RequestOptions {
    RequestOptions::default()
}

/// Deterministic bytes that do not compress (xorshift), so that chunks are stored raw.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Every record the node holds, over all partitions: (keys, bytes).
fn stored(node: &Node) -> (u64, u64) {
    let s = node.cluster_status().storage;
    (s["keys"], s["bytes"])
}

#[tokio::test]
async fn streamed_values_round_trip_and_read_by_range() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(dir.path(), |_| {}).await;
    let value = noise(5 * CHUNK + 1234, 7);
    let mut up = node
        .upload_begin(b"b", b"big", &[], Some(value.len() as u64), &opts())
        .await
        .unwrap();
    // Pieces that do not line up with chunks.
    for piece in value.chunks(10_000) {
        node.upload_write(&mut up, piece).await.unwrap();
    }
    let crc = ringkv_storage::large::crc32(&value);
    let manifest = node
        .upload_commit(up, Some(crc))
        .await
        .unwrap()
        .manifest
        .unwrap();
    assert_eq!((manifest.size, manifest.crc32), (value.len() as u64, crc));
    assert_eq!(manifest.chunks.len(), 6);

    // A get returns it whole; get_meta describes it; ranges cut across chunk boundaries.
    assert_eq!(
        node.get(b"b", b"big", &opts()).await.unwrap().values,
        vec![value.clone()]
    );
    let meta = node.get_meta(b"b", b"big", &opts()).await.unwrap();
    assert_eq!(meta.values, vec![Vec::<u8>::new()]);
    assert_eq!(meta.meta[0].size, value.len() as u64);
    for (offset, len) in [
        (0, 10),
        (CHUNK as u64 - 3, 7),
        (3 * CHUNK as u64 + 5, 2 * CHUNK as u64),
    ] {
        let r = node
            .get_range(b"b", b"big", None, offset, Some(len), &opts())
            .await
            .unwrap();
        assert_eq!(r.value, value[offset as usize..(offset + len) as usize]);
    }
    // The end: fewer bytes than asked, then none, then an error past it.
    let end = value.len() as u64;
    let r = node
        .get_range(b"b", b"big", None, end - 5, Some(100), &opts())
        .await
        .unwrap();
    assert_eq!(r.value.len(), 5);
    assert!(node
        .get_range(b"b", b"big", None, end, None, &opts())
        .await
        .unwrap()
        .value
        .is_empty());
    assert!(matches!(
        node.get_range(b"b", b"big", None, end + 1, None, &opts())
            .await,
        Err(KvError::Stream(StreamError::InvalidRange { .. }))
    ));
    // A single-frame put of a value over chunk-bytes is stored in chunks too.
    let medium = noise(3 * CHUNK, 9);
    node.put_ack(b"b", b"medium", medium.clone(), &[], &opts())
        .await
        .unwrap();
    let meta = node.get_meta(b"b", b"medium", &opts()).await.unwrap();
    assert!(meta.meta[0].manifest.is_some());
    assert_eq!(
        node.get(b"b", b"medium", &opts()).await.unwrap().values,
        vec![medium]
    );
    // A streamed value that never fills a chunk is stored whole, like a put.
    let mut up = node
        .upload_begin(b"b", b"short", &[], None, &opts())
        .await
        .unwrap();
    node.upload_write(&mut up, b"tiny").await.unwrap();
    let c = node.upload_commit(up, None).await.unwrap();
    assert_eq!((c.size, c.manifest), (4, None));
    let meta = node.get_meta(b"b", b"short", &opts()).await.unwrap();
    assert_eq!(meta.values, vec![b"tiny".to_vec()]);
    let up = node
        .upload_begin(b"b", b"empty", &[], None, &opts())
        .await
        .unwrap();
    assert_eq!(node.upload_commit(up, None).await.unwrap().size, 0);
    let empty = node.get(b"b", b"empty", &opts()).await.unwrap();
    assert_eq!(empty.values, vec![Vec::<u8>::new()]);
    node.shutdown().await;
}

#[tokio::test]
async fn uploads_refuse_overruns_short_commits_and_bad_checksums_and_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(dir.path(), |_| {}).await;
    let value = noise(2 * CHUNK, 3);

    let mut up = node
        .upload_begin(b"b", b"k", &[], Some(100), &opts())
        .await
        .unwrap();
    assert!(matches!(
        node.upload_write(&mut up, &value[..101]).await,
        Err(KvError::Stream(StreamError::Overrun { what: "size", .. }))
    ));
    let mut up = node
        .upload_begin(b"b", b"k", &[], Some(value.len() as u64), &opts())
        .await
        .unwrap();
    node.upload_write(&mut up, &value[..CHUNK]).await.unwrap();
    assert!(matches!(
        node.upload_commit(up, None).await,
        Err(KvError::Stream(StreamError::Incomplete { .. }))
    ));
    let mut up = node
        .upload_begin(b"b", b"k", &[], None, &opts())
        .await
        .unwrap();
    node.upload_write(&mut up, &value).await.unwrap();
    assert!(matches!(
        node.upload_commit(up, Some(12345)).await,
        Err(KvError::Stream(StreamError::Checksum {
            expected: 12345,
            ..
        }))
    ));
    assert!(matches!(
        node.upload_begin(b"b", b"k", &[], Some(1 << 40), &opts())
            .await,
        Err(KvError::Stream(StreamError::Overrun {
            what: "max-value-bytes",
            ..
        }))
    ));
    // None of them became a version of the key.
    assert!(node
        .get(b"b", b"k", &opts())
        .await
        .unwrap()
        .values
        .is_empty());
    assert!(matches!(
        node.get_range(b"b", b"k", None, 0, None, &opts()).await,
        Err(KvError::Stream(StreamError::NotFound(_)))
    ));
    node.shutdown().await;
}

#[tokio::test]
async fn large_siblings_keep_their_own_chunks_and_conditions_hold() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(dir.path(), |_| {}).await;
    let (a, b) = (noise(2 * CHUNK + 1, 1), noise(3 * CHUNK + 2, 2));
    node.put_ack(b"b", b"k", a.clone(), &[], &opts())
        .await
        .unwrap();
    // Create-only fails now that the key holds a large value.
    let create_only = RequestOptions {
        condition: Condition::IfNoneMatch,
        ..opts()
    };
    assert!(matches!(
        node.put_ack(b"b", b"k", b.clone(), &[], &create_only).await,
        Err(KvError::Storage(
            ringkv_storage::StorageError::ConditionFailed { .. }
        ))
    ));
    node.put_ack(b"b", b"k", b.clone(), &[], &opts())
        .await
        .unwrap();
    let meta = node.get_meta(b"b", b"k", &opts()).await.unwrap();
    assert_eq!(meta.meta.len(), 2);
    assert!(matches!(
        node.get_range(b"b", b"k", None, 0, None, &opts()).await,
        Err(KvError::Stream(StreamError::Siblings(2)))
    ));
    let mut read: Vec<Vec<u8>> = Vec::new();
    for m in &meta.meta {
        let m = m.manifest.as_ref().unwrap();
        let mut whole = Vec::new();
        while (whole.len() as u64) < m.size {
            let r = node
                .get_range(
                    b"b",
                    b"k",
                    Some(&m.version),
                    whole.len() as u64,
                    Some(CHUNK as u64 + 7),
                    &opts(),
                )
                .await
                .unwrap();
            whole.extend_from_slice(&r.value);
        }
        read.push(whole);
    }
    read.sort();
    let mut want = vec![a, b];
    want.sort();
    assert_eq!(read, want);
    // Resolving with the context replaces both; an old version id is then not found.
    node.put_ack(b"b", b"k", b"small".to_vec(), &meta.context, &opts())
        .await
        .unwrap();
    let gone = meta.meta[0].manifest.as_ref().unwrap().version.clone();
    assert!(matches!(
        node.get_range(b"b", b"k", Some(&gone), 0, None, &opts())
            .await,
        Err(KvError::Stream(StreamError::NotFound(_)))
    ));
    node.shutdown().await;
}

/// Chunks of replaced versions and of an upload never committed are deleted once older than
/// `chunk-grace-ms` (then their tombstones are purged); the chunks of the live version stay.
#[tokio::test]
async fn unreferenced_chunks_are_collected_and_live_ones_kept() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(dir.path(), |c| {
        c.repair_interval_ms = 100;
        c.chunk_grace_ms = 300;
        c.tombstone_grace_ms = 0;
    })
    .await;
    let live = noise(4 * CHUNK, 5);
    node.put_ack(b"b", b"k", noise(3 * CHUNK, 4), &[], &opts())
        .await
        .unwrap();
    let ctx = node.get_meta(b"b", b"k", &opts()).await.unwrap().context;
    node.put_ack(b"b", b"k", live.clone(), &ctx, &opts())
        .await
        .unwrap();
    // An upload that never commits (the client went away).
    let mut abandoned = node
        .upload_begin(b"b", b"gone", &[], None, &opts())
        .await
        .unwrap();
    node.upload_write(&mut abandoned, &noise(2 * CHUNK, 6))
        .await
        .unwrap();
    drop(abandoned);
    let before = stored(&node);
    // What must remain: the key's record, the live version's head and its 4 chunks.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (keys, _) = stored(&node);
        if keys == 6 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still {keys} records (from {before:?}); expected 6"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        node.get(b"b", b"k", &opts()).await.unwrap().values,
        vec![live]
    );
    node.shutdown().await;
}
