//! The streaming calls and `cas` of the client against a scripted node on loopback: the
//! node's side of each conversation is written out here (what PROTOCOL.md's "Large values"
//! and "Strong buckets" sections ask a node to answer), so the client's pipelining window,
//! checksums, aborts and error mapping are checked without a real node, including failures a
//! real node does not produce on demand (ranges whose bytes do not match the value's CRC-32, a
//! lower `max-range-bytes`, `no_majority` and `indeterminate` answers). The partition-aware
//! client's layout refresh and its refusal of unusable layouts are checked the same way.

use ringkv_client::{
    CallOptions, CasOutcome, Client, ClientError, ErrorCode, GetStreamOptions, PutStreamOptions,
    ValueMeta, WriteCondition,
};
use ringkv_proto::{encode_frame, read_frame, RequestFrame, ResponseFrame};
use serde_bytes::ByteBuf;
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

/// A node that answers each request frame with what `script` returns for it (any number of
/// answers, in that order: a script may hold answers back and release them later).
/// Returns the address and a receiver of every request seen, in arrival order.
async fn scripted(
    mut script: impl FnMut(&RequestFrame) -> Vec<ResponseFrame> + Send + 'static,
) -> (std::net::SocketAddr, mpsc::UnboundedReceiver<RequestFrame>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (seen, seen_rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let (mut sock, _) = listener.accept().await.unwrap();
        let mut buf = Vec::new();
        loop {
            match read_frame(&mut sock, &mut buf, 64 << 20).await {
                Ok(true) => {}
                _ => return,
            }
            let req: RequestFrame = rmp_serde::from_slice(&buf).unwrap();
            for answer in script(&req) {
                if sock.write_all(&encode_frame(&answer)).await.is_err() {
                    return;
                }
            }
            let _ = seen.send(req);
        }
    });
    (addr, seen_rx)
}

fn ok(id: u64) -> ResponseFrame {
    ResponseFrame::ok(id)
}

fn error(id: u64, code: &str, message: &str) -> ResponseFrame {
    ResponseFrame {
        id,
        ok: false,
        code: Some(code.into()),
        message: Some(message.into()),
        ..Default::default()
    }
}

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

fn drain(rx: &mut mpsc::UnboundedReceiver<RequestFrame>) -> Vec<RequestFrame> {
    let mut out = Vec::new();
    while let Ok(r) = rx.try_recv() {
        out.push(r);
    }
    out
}

/// The node's side of an upload of a declared `size`: it holds `put_chunk` answers back
/// until `window` are unanswered (so a client that sends more than `window` ahead is seen),
/// and answers them all once `size` bytes came.
struct Upload {
    window: usize,
    size: u64,
    received: u64,
    held: Vec<u64>,
    most_unanswered: usize,
    data: Vec<u8>,
}

impl Upload {
    fn answer(&mut self, req: &RequestFrame) -> Vec<ResponseFrame> {
        match req.op.as_str() {
            "put_begin" => vec![ResponseFrame {
                upload: Some(77),
                chunk_bytes: Some(1000),
                window: Some(self.window as u64),
                ..ok(req.id)
            }],
            "put_chunk" => {
                let data = req.data.as_ref().unwrap();
                assert_eq!(req.upload, Some(77));
                assert!(!data.is_empty() && data.len() <= 1000);
                self.data.extend_from_slice(data);
                self.received += data.len() as u64;
                self.held.push(req.id);
                self.most_unanswered = self.most_unanswered.max(self.held.len());
                let release = if self.received == self.size {
                    self.held.len()
                } else {
                    self.held.len().saturating_sub(self.window - 1)
                };
                let received = self.received;
                self.held
                    .drain(..release)
                    .map(|id| ResponseFrame {
                        received: Some(received),
                        ..ok(id)
                    })
                    .collect()
            }
            "put_commit" => {
                let crc = crc32fast::hash(&self.data);
                if req.crc32 != Some(u64::from(crc)) {
                    return vec![error(req.id, "checksum_mismatch", "crc32 differs")];
                }
                vec![ResponseFrame {
                    size: Some(self.received),
                    version: Some(ByteBuf::from(vec![9u8; 16])),
                    crc32: Some(crc),
                    ..ok(req.id)
                }]
            }
            "put_abort" => vec![ok(req.id)],
            other => panic!("unexpected op {other}"),
        }
    }
}

/// A streamed put keeps exactly the node's window of `put_chunk` frames in flight (never
/// more), sends them in `seq` order with every byte once, reports progress up to the size,
/// and commits with the CRC-32 of the value.
#[tokio::test]
async fn put_stream_fills_the_window_and_commits_the_checksum() {
    let value = noise(10_500, 3);
    let state = Arc::new(Mutex::new(Upload {
        window: 3,
        size: value.len() as u64,
        received: 0,
        held: Vec::new(),
        most_unanswered: 0,
        data: Vec::new(),
    }));
    let script_state = state.clone();
    let (addr, mut seen) = scripted(move |req| script_state.lock().unwrap().answer(req)).await;
    let client = Client::connect(addr).await.unwrap();
    let progress = Arc::new(Mutex::new(Vec::new()));
    let log = progress.clone();
    let opts = PutStreamOptions {
        size: Some(value.len() as u64),
        progress: Some(Arc::new(move |n| log.lock().unwrap().push(n))),
        ..Default::default()
    };
    let put = client
        .put_stream(b"b", b"k", &value[..], &opts)
        .await
        .unwrap();
    assert_eq!(put.size, value.len() as u64);
    assert_eq!(put.crc32, crc32fast::hash(&value));
    assert_eq!(put.version, vec![9u8; 16]);
    let state = state.lock().unwrap();
    assert_eq!(
        state.most_unanswered, 3,
        "the client kept the window full, no more"
    );
    assert!(
        state.data == value,
        "the node received the value's bytes in order"
    );
    let progress = progress.lock().unwrap();
    assert!(progress.windows(2).all(|w| w[0] <= w[1]), "{progress:?}");
    assert_eq!(progress.last(), Some(&(value.len() as u64)));
    let requests = drain(&mut seen);
    let seqs: Vec<u64> = requests
        .iter()
        .filter(|r| r.op == "put_chunk")
        .filter_map(|r| r.seq)
        .collect();
    assert_eq!(seqs, (0..11).collect::<Vec<_>>());
    assert_eq!(requests[0].size, Some(10_500));
    let commit = requests.iter().find(|r| r.op == "put_commit").unwrap();
    assert_eq!(commit.seq, Some(11), "the commit names the chunks sent");
    assert!(!requests.iter().any(|r| r.op == "put_abort"));
}

/// Bytes, then an I/O error.
struct FailingReader {
    left: usize,
}

impl AsyncRead for FailingReader {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        if self.left == 0 {
            return std::task::Poll::Ready(Err(std::io::Error::other("disk on fire")));
        }
        let n = self.left.min(buf.remaining()).min(700);
        buf.put_slice(&vec![1u8; n]);
        self.left -= n;
        std::task::Poll::Ready(Ok(()))
    }
}

/// A source that fails mid-stream ends the put with `ClientError::Source` and a `put_abort`
/// of the upload; a node's error answer to a chunk ends it with that typed code and an abort
/// too.
#[tokio::test]
async fn a_failed_put_stream_aborts_its_upload() {
    let state = Arc::new(Mutex::new(Upload {
        window: 4,
        size: u64::MAX,
        received: 0,
        held: Vec::new(),
        most_unanswered: 0,
        data: Vec::new(),
    }));
    let script_state = state.clone();
    let (addr, mut seen) = scripted(move |req| {
        let mut s = script_state.lock().unwrap();
        s.window = 1; // answer every chunk at once
        s.answer(req)
    })
    .await;
    let client = Client::connect(addr).await.unwrap();
    let err = client
        .put_stream(
            b"b",
            b"k",
            FailingReader { left: 2500 },
            &Default::default(),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::Source(_)), "{err}");
    assert!(err.to_string().contains("disk on fire"), "{err}");
    let ops = wait_for_op(&mut seen, "put_abort").await;
    assert!(ops
        .iter()
        .any(|r| r.op == "put_abort" && r.upload == Some(77)));
    assert!(!ops.iter().any(|r| r.op == "put_commit"));

    // The node refuses a chunk: the typed code comes back and the upload is aborted.
    let (addr, mut seen) = scripted(|req| match req.op.as_str() {
        "put_begin" => vec![ResponseFrame {
            upload: Some(5),
            chunk_bytes: Some(100),
            window: Some(2),
            ..ok(req.id)
        }],
        "put_chunk" if req.seq == Some(1) => {
            vec![error(req.id, "upload_overrun", "past the declared size")]
        }
        _ => vec![ok(req.id)],
    })
    .await;
    let client = Client::connect(addr).await.unwrap();
    let err = client
        .put_stream(b"b", b"k", &[7u8; 1000][..], &Default::default())
        .await
        .unwrap_err();
    assert_eq!(err.error_code(), Some(ErrorCode::UploadOverrun), "{err}");
    let ops = wait_for_op(&mut seen, "put_abort").await;
    assert!(!ops.iter().any(|r| r.op == "put_commit"));
}

/// Requests seen until one with `op` (inclusive).
async fn wait_for_op(
    rx: &mut mpsc::UnboundedReceiver<RequestFrame>,
    op: &str,
) -> Vec<RequestFrame> {
    let mut out = Vec::new();
    while let Some(r) = rx.recv().await {
        let done = r.op == op;
        out.push(r);
        if done {
            return out;
        }
    }
    panic!("the connection ended before a {op} request: {out:?}");
}

/// A node holding one large value `value` with stored CRC-32 `crc`, answering ranges of at
/// most `max_range` bytes.
fn large_value_node(
    value: Vec<u8>,
    crc: u32,
    max_range: u64,
) -> impl FnMut(&RequestFrame) -> Vec<ResponseFrame> + Send + 'static {
    let version = ByteBuf::from(vec![4u8; 16]);
    move |req| match req.op.as_str() {
        "get" => {
            assert_eq!(req.meta, Some(true));
            vec![ResponseFrame {
                values: Some(vec![ByteBuf::new()]),
                context: Some(ByteBuf::from(b"ctx".to_vec())),
                meta: Some(vec![ValueMeta {
                    size: value.len() as u64,
                    large: true,
                    version: Some(version.clone()),
                    crc32: Some(crc),
                }]),
                ..ok(req.id)
            }]
        }
        "get_range" => {
            assert_eq!(req.version.as_ref(), Some(&version));
            let offset = req.offset.unwrap();
            let len = req.length.unwrap().min(max_range) as usize;
            let start = offset as usize;
            let end = (start + len).min(value.len());
            vec![ResponseFrame {
                value: Some(ByteBuf::from(value[start..end].to_vec())),
                offset: Some(offset),
                size: Some(value.len() as u64),
                version: Some(version.clone()),
                crc32: Some(crc),
                context: Some(ByteBuf::from(b"ctx".to_vec())),
                ..ok(req.id)
            }]
        }
        other => panic!("unexpected op {other}"),
    }
}

/// A streamed read of a large value returns its exact bytes through ranges of the asked size,
/// and keeps reading correctly when the node answers shorter ranges than asked (a lower
/// `max-range-bytes`).
#[tokio::test]
async fn get_stream_reads_by_ranges_and_adapts_to_shorter_ones() {
    let value = noise(50_000, 11);
    let crc = crc32fast::hash(&value);
    for max_range in [u64::MAX, 3_000] {
        let (addr, mut seen) = scripted(large_value_node(value.clone(), crc, max_range)).await;
        let client = Client::connect(addr).await.unwrap();
        let opts = GetStreamOptions {
            range_bytes: 8_000,
            window: 2,
            ..Default::default()
        };
        let mut reader = client.get_stream(b"b", b"k", &opts).await.unwrap();
        assert_eq!(reader.size(), 50_000);
        assert!(reader.is_large());
        assert_eq!(reader.crc32(), Some(crc));
        assert_eq!(reader.context(), b"ctx");
        let mut got = Vec::new();
        reader.read_to_end(&mut got).await.unwrap();
        assert!(got == value, "max_range {max_range}: the bytes differ");
        let ranges: Vec<(u64, u64)> = drain(&mut seen)
            .iter()
            .filter(|r| r.op == "get_range")
            .map(|r| (r.offset.unwrap(), r.length.unwrap()))
            .collect();
        if max_range == u64::MAX {
            assert_eq!(ranges.len(), 7, "{ranges:?}");
            assert!(ranges.iter().all(|&(o, l)| o % 8_000 == 0 && l <= 8_000));
        } else {
            assert!(ranges.iter().any(|&(_, l)| l == 3_000), "{ranges:?}");
        }
    }
}

/// Bytes that do not match the stored CRC-32 fail the reader with `checksum_mismatch` instead
/// of an end of value, and every later read fails the same way.
#[tokio::test]
async fn get_stream_fails_on_a_checksum_mismatch() {
    let value = noise(20_000, 5);
    let wrong = crc32fast::hash(&value) ^ 1;
    let (addr, _seen) = scripted(large_value_node(value, wrong, u64::MAX)).await;
    let client = Client::connect(addr).await.unwrap();
    let mut reader = client
        .get_stream(b"b", b"k", &GetStreamOptions::default())
        .await
        .unwrap();
    let mut got = Vec::new();
    let err = reader.read_to_end(&mut got).await.unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
    let inner = ClientError::from_io(&err).expect("a ClientError inside");
    assert_eq!(
        inner.error_code(),
        Some(ErrorCode::ChecksumMismatch),
        "{inner}"
    );
    assert!(matches!(inner, ClientError::ChecksumMismatch { expected, .. } if *expected == wrong));
    let again = reader.read(&mut [0u8; 10]).await.unwrap_err();
    assert_eq!(
        ClientError::from_io(&again).and_then(ClientError::error_code),
        Some(ErrorCode::ChecksumMismatch)
    );
}

/// A missing key is `NotFound`, several live versions are `Siblings` listing each (with the
/// context to resolve them), a small value streams from the `get` answer itself, and a code
/// this client does not know keeps its string.
#[tokio::test]
async fn get_stream_errors_are_typed() {
    let (addr, _seen) = scripted(|req| {
        let key = req.key.as_ref().map(|k| k.to_vec()).unwrap_or_default();
        match key.as_slice() {
            b"missing" => vec![ResponseFrame {
                values: Some(vec![]),
                context: Some(ByteBuf::new()),
                meta: Some(vec![]),
                ..ok(req.id)
            }],
            b"two" => vec![ResponseFrame {
                values: Some(vec![ByteBuf::new(), ByteBuf::from(b"small".to_vec())]),
                context: Some(ByteBuf::from(b"c2".to_vec())),
                meta: Some(vec![
                    ValueMeta {
                        size: 9_000_000,
                        large: true,
                        version: Some(ByteBuf::from(vec![1u8; 16])),
                        crc32: Some(42),
                    },
                    ValueMeta {
                        size: 5,
                        ..Default::default()
                    },
                ]),
                ..ok(req.id)
            }],
            b"small" => vec![ResponseFrame {
                values: Some(vec![ByteBuf::from(b"hello".to_vec())]),
                context: Some(ByteBuf::from(b"c3".to_vec())),
                ..ok(req.id)
            }],
            _ => vec![error(req.id, "brand_new_code", "from the future")],
        }
    })
    .await;
    let client = Client::connect(addr).await.unwrap();
    let opts = GetStreamOptions::default();

    let err = client
        .get_stream(b"b", b"missing", &opts)
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::NotFound { .. }), "{err}");
    assert_eq!(err.code(), Some("not_found"));

    let err = client.get_stream(b"b", b"two", &opts).await.unwrap_err();
    assert_eq!(err.error_code(), Some(ErrorCode::Siblings));
    let ClientError::Siblings { versions, context } = &err else {
        panic!("{err}")
    };
    assert_eq!(versions.len(), 2);
    assert_eq!(context, b"c2");
    assert!(
        err.to_string().contains("9000000 bytes, version 0101"),
        "{err}"
    );

    // A node without `meta` (older): the value is small, read from the answer.
    let mut reader = client.get_stream(b"b", b"small", &opts).await.unwrap();
    assert!(!reader.is_large());
    let mut got = Vec::new();
    reader.read_to_end(&mut got).await.unwrap();
    assert_eq!(got, b"hello");
    assert_eq!(reader.context(), b"c3");

    let err = client.get_stream(b"b", b"other", &opts).await.unwrap_err();
    assert_eq!(err.code(), Some("brand_new_code"));
    assert_eq!(err.error_code(), None);
}

/// Every stable code's wire form parses back to it.
#[test]
fn error_codes_parse_from_their_wire_form() {
    for code in [
        ErrorCode::UploadUnknown,
        ErrorCode::UploadGap,
        ErrorCode::UploadOverrun,
        ErrorCode::UploadIncomplete,
        ErrorCode::UploadTimeout,
        ErrorCode::ChecksumMismatch,
        ErrorCode::NotFound,
        ErrorCode::Siblings,
        ErrorCode::InvalidRange,
        ErrorCode::ConditionFailed,
        ErrorCode::MalformedRequest,
        ErrorCode::NoMajority,
        ErrorCode::Indeterminate,
        ErrorCode::WrongConsistency,
    ] {
        assert_eq!(code.as_str().parse::<ErrorCode>(), Ok(code));
    }
    assert!("nope".parse::<ErrorCode>().is_err());
}

/// A strong bucket's node: `cas` on key `k` compares with `held` and answers as PROTOCOL.md's
/// "Strong buckets" says (`condition_failed` with the current value in `values`); key
/// `no-majority` and `indeterminate` answer those codes.
fn strong_node(
    held: Arc<Mutex<Option<Vec<u8>>>>,
) -> impl FnMut(&RequestFrame) -> Vec<ResponseFrame> {
    move |req| {
        assert_eq!(req.op, "cas");
        let key: &[u8] = req.key.as_deref().unwrap();
        let answer = match key {
            b"no-majority" => error(req.id, "no_majority", "2 of 3 replicas unreachable"),
            b"indeterminate" => error(req.id, "indeterminate", "outcome unknown"),
            _ => {
                let mut held = held.lock().unwrap();
                if req.expect.as_deref().map(|e| &e[..]) == held.as_deref() {
                    *held = req.value.as_ref().map(|v| v.to_vec());
                    ok(req.id)
                } else {
                    ResponseFrame {
                        values: Some(held.iter().cloned().map(ByteBuf::from).collect()),
                        ..error(req.id, "condition_failed", "condition failed")
                    }
                }
            }
        };
        vec![answer]
    }
}

/// `cas` sends `expect` and `value` only when given (absent: the key absent, a delete), and of
/// the call options only `n` and `timeout_ms`; a swap is `Swapped`, a refused comparison a
/// `ConditionFailed` outcome carrying the current value (`None`: absent), not an error.
#[tokio::test]
async fn cas_outcomes_carry_the_current_value() {
    let held = Arc::new(Mutex::new(None));
    let (addr, mut seen) = scripted(strong_node(held.clone())).await;
    let client = Client::connect(addr).await.unwrap();
    let opts = CallOptions {
        n: Some(3),
        r: Some(2),
        w: Some(2),
        timeout_ms: Some(700),
        local: true,
        condition: Some(WriteCondition::IfMatch),
        ttl: Some(std::time::Duration::from_secs(5)),
    };
    let create = client.cas(b"b", b"k", None, Some(b"one"), &opts).await;
    assert_eq!(create.unwrap(), CasOutcome::Swapped);
    let sent = wait_for_op(&mut seen, "cas").await.pop().unwrap();
    assert_eq!(
        sent.expect, None,
        "absent is expressed by leaving expect out"
    );
    assert_eq!(sent.value.as_deref().map(|v| &v[..]), Some(&b"one"[..]));
    assert_eq!((sent.n, sent.timeout_ms), (Some(3), Some(700)));
    assert_eq!((sent.r, sent.w, sent.local), (None, None, None));
    assert_eq!(
        (sent.if_match, sent.if_none_match, sent.ttl_ms),
        (None, None, None)
    );

    let again = client.cas(b"b", b"k", None, Some(b"two"), &opts).await;
    assert_eq!(
        again.unwrap(),
        CasOutcome::ConditionFailed {
            current: Some(b"one".to_vec())
        }
    );
    let wrong = client
        .cas(b"b", b"k", Some(b"zero"), Some(b"two"), &opts)
        .await;
    assert_eq!(
        wrong.unwrap(),
        CasOutcome::ConditionFailed {
            current: Some(b"one".to_vec())
        }
    );
    let swap = client
        .cas(b"b", b"k", Some(b"one"), Some(b"two"), &opts)
        .await;
    assert_eq!(swap.unwrap(), CasOutcome::Swapped);
    let delete = client.cas(b"b", b"k", Some(b"two"), None, &opts).await;
    assert_eq!(delete.unwrap(), CasOutcome::Swapped);
    assert_eq!(*held.lock().unwrap(), None);
    let gone = client.cas(b"b", b"k", Some(b"two"), None, &opts).await;
    assert_eq!(gone.unwrap(), CasOutcome::ConditionFailed { current: None });
}

/// `no_majority` (nothing written) and `indeterminate` (outcome unknown) come back as errors
/// whose typed codes tell them apart; a `condition_failed` answer without `values` is a
/// protocol error, not a made-up "absent".
#[tokio::test]
async fn cas_failures_are_typed() {
    let (addr, _seen) = scripted(strong_node(Arc::new(Mutex::new(None)))).await;
    let client = Client::connect(addr).await.unwrap();
    let opts = CallOptions::default();
    let e = client
        .cas(b"b", b"no-majority", None, Some(b"v"), &opts)
        .await
        .unwrap_err();
    assert_eq!(e.error_code(), Some(ErrorCode::NoMajority), "{e}");
    let e = client
        .cas(b"b", b"indeterminate", None, Some(b"v"), &opts)
        .await
        .unwrap_err();
    assert_eq!(e.error_code(), Some(ErrorCode::Indeterminate), "{e}");
    assert!(e.to_string().contains("outcome unknown"), "{e}");

    let (addr, _seen) = scripted(|req| vec![error(req.id, "condition_failed", "no values")]).await;
    let client = Client::connect(addr).await.unwrap();
    let e = client
        .cas(b"b", b"k", Some(b"x"), Some(b"v"), &opts)
        .await
        .unwrap_err();
    assert!(matches!(e, ClientError::Protocol(_)), "{e}");
}

/// The `info` of a `layout` answer for one node at `addr`: Q = 4, every list `[0]`.
fn layout_info(addr: std::net::SocketAddr, version: u64, partitions: u32) -> serde_json::Value {
    serde_json::json!({
        "node": "n1",
        "version": version,
        "layout_version": version,
        "partitions": partitions,
        "nodes": [{"name": "n1", "client_addr": addr.to_string(), "up": true}],
        "preference_lists": vec![vec![0u32]; 4],
    })
}

/// A node's answer naming a newer layout version makes the routed client fetch the layout
/// again, in the background, on the connection it has; answers that carry no version change
/// nothing, and the request that learnt it got its answer as it was.
#[tokio::test]
async fn a_newer_version_in_an_answer_makes_the_cluster_client_refresh() {
    let addr_cell = Arc::new(Mutex::new(None::<std::net::SocketAddr>));
    let current = Arc::new(Mutex::new(1u64));
    let (cell, now) = (addr_cell.clone(), current.clone());
    let (addr, mut seen) = scripted(move |req| {
        let addr = cell.lock().unwrap().expect("address known");
        let version = *now.lock().unwrap();
        match req.op.as_str() {
            "layout" => vec![ResponseFrame {
                info: Some(layout_info(addr, version, 4)),
                ..ok(req.id)
            }],
            _ => vec![ResponseFrame {
                values: Some(vec![]),
                context: Some(ByteBuf::new()),
                layout: (req.layout != Some(version)).then_some(version),
                ..ok(req.id)
            }],
        }
    })
    .await;
    *addr_cell.lock().unwrap() = Some(addr);
    let seed = addr.to_string();
    let cluster = ringkv_client::ClusterClient::connect(
        &[seed.as_str()],
        None,
        ringkv_client::ClusterOptions::default(),
    )
    .await
    .unwrap();
    assert_eq!((cluster.layout_version(), cluster.refreshes()), (1, 1));
    assert!(cluster.get(b"b", b"k").await.unwrap().values.is_empty());
    assert_eq!(cluster.refreshes(), 1, "same version: no refresh");

    *current.lock().unwrap() = 2;
    assert!(cluster.get(b"b", b"k").await.unwrap().values.is_empty());
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while cluster.layout_version() != 2 {
        assert!(tokio::time::Instant::now() < deadline, "no refresh");
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    assert_eq!(cluster.refreshes(), 2);
    let requests = cluster.requests_by_node();
    assert_eq!(requests.get("n1"), Some(&2), "{requests:?}");
    // Every request carried the version the client routed by at the time.
    let layouts: Vec<(String, Option<u64>)> = drain(&mut seen)
        .into_iter()
        .map(|r| (r.op, r.layout))
        .collect();
    assert_eq!(
        layouts,
        vec![
            ("layout".to_string(), None),
            ("get".to_string(), Some(1)),
            ("get".to_string(), Some(1)),
            ("layout".to_string(), None),
        ]
    );
}

/// A layout answer a client cannot route by (Q not a power of two, an index past the node
/// list) is refused with a protocol error, never a panic.
#[tokio::test]
async fn an_unusable_layout_is_refused() {
    for bad in 0..2 {
        let cell = Arc::new(Mutex::new(None::<std::net::SocketAddr>));
        let c2 = cell.clone();
        let (addr, _seen) = scripted(move |req| {
            let addr = c2.lock().unwrap().expect("address known");
            let mut info = layout_info(addr, 1, if bad == 0 { 3 } else { 4 });
            if bad == 1 {
                info["preference_lists"][2] = serde_json::json!([0, 5]);
            }
            vec![ResponseFrame {
                info: Some(info),
                ..ok(req.id)
            }]
        })
        .await;
        *cell.lock().unwrap() = Some(addr);
        let seed = addr.to_string();
        let err = match ringkv_client::Client::connect_cluster(&[seed.as_str()], None).await {
            Ok(_) => panic!("layout {bad} accepted"),
            Err(e) => e,
        };
        assert!(matches!(err, ClientError::Protocol(_)), "{err}");
    }
}
