//! The clients' side of large values against real `ringkv` processes: the Rust client's
//! `put_stream`, `get_stream` and `get_range`, the typed errors of streams, `ringkv put --file`
//! and `ringkv get > file` byte for byte with the client's memory bounded, `ringkv load` of
//! files over 4 MiB, and the Python client streaming 100 MiB.

use ringkv_api::client::{
    ClientError, ErrorCode, GetStreamOptions, PutStreamOptions, SINGLE_FRAME_BYTES,
};
use ringkv_api::protocol::RequestFrame;
use ringkv_api::Client;
use ringkv_storage::large::crc32;
use ringkv_tests::{quorum as q, run_python, runtime as rt, Cluster, NodeProcess};
use serde_bytes::ByteBuf;
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncRead, AsyncReadExt};

const MIB: usize = 1 << 20;

/// Deterministic bytes that do not compress (xorshift), so chunks are stored raw.
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

/// Reads a whole stream (for tests whose values fit in memory).
async fn read_all(mut r: impl AsyncRead + Unpin) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    r.read_to_end(&mut out).await?;
    Ok(out)
}

/// A 20 MiB value streamed in (size declared, progress reported up to it) reads back through
/// `get_stream` byte for byte, with the size, version and CRC-32 the commit answered; the
/// same without a declared size; a small value streams from the `get` answer.
#[test]
fn a_20_mib_value_round_trips_through_put_stream_and_get_stream() {
    let node = NodeProcess::start(&[]);
    let value = noise(20 * MIB + 123, 1);
    rt().block_on(async {
        let client = Client::connect(node.addr).await.unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        let opts = PutStreamOptions {
            size: Some(value.len() as u64),
            progress: Some(Arc::new(move |n| log.lock().unwrap().push(n))),
            ..Default::default()
        };
        let put = client
            .put_stream(b"big", b"twenty", &value[..], &opts)
            .await
            .unwrap();
        assert_eq!(put.size, value.len() as u64);
        assert_eq!(put.crc32, crc32(&value));
        assert_eq!(put.version.len(), 16);
        let seen = seen.lock().unwrap().clone();
        assert!(seen.windows(2).all(|w| w[0] <= w[1]), "{seen:?}");
        assert_eq!(seen.last(), Some(&(value.len() as u64)));

        let reader = client
            .get_stream(b"big", b"twenty", &GetStreamOptions::default())
            .await
            .unwrap();
        assert!(reader.is_large());
        assert_eq!(reader.size(), value.len() as u64);
        assert_eq!(reader.version(), Some(&put.version[..]));
        assert_eq!(reader.crc32(), Some(put.crc32));
        let got = read_all(reader).await.unwrap();
        assert_eq!(got.len(), value.len());
        assert_eq!(crc32(&got), crc32(&value), "checksums differ end to end");
        assert!(got == value);

        // No declared size; written with the context of a read, so it replaces the value.
        let meta = client
            .get_meta(b"big", b"twenty", &Default::default())
            .await
            .unwrap();
        assert_eq!(
            meta.values,
            vec![Vec::<u8>::new()],
            "a large value is not inline"
        );
        assert_eq!(meta.meta[0].size, value.len() as u64);
        let second = noise(6 * MIB, 2);
        let opts = PutStreamOptions {
            context: meta.context,
            ..Default::default()
        };
        client
            .put_stream(b"big", b"twenty", &second[..], &opts)
            .await
            .unwrap();
        let got = read_all(
            client
                .get_stream(b"big", b"twenty", &GetStreamOptions::default())
                .await
                .unwrap(),
        )
        .await
        .unwrap();
        assert!(got == second, "the second value replaced the first");

        client
            .put(b"big", b"small", b"tiny".to_vec(), &[])
            .await
            .unwrap();
        let reader = client
            .get_stream(b"big", b"small", &GetStreamOptions::default())
            .await
            .unwrap();
        assert!(!reader.is_large());
        assert_eq!(read_all(reader).await.unwrap(), b"tiny");
    });
}

/// `get_range` slices a large value anywhere (across chunk boundaries, short at the end,
/// empty at the end), with or without its version, and a small value too; past the end is
/// `invalid_range`, a missing key `not_found`.
#[test]
fn get_range_reads_slices_of_large_and_small_values() {
    let node = NodeProcess::start(&[]);
    let value = noise(9 * MIB + 17, 3);
    let size = value.len() as u64;
    rt().block_on(async {
        let client = Client::connect(node.addr).await.unwrap();
        let put = client
            .put_stream(b"r", b"k", &value[..], &Default::default())
            .await
            .unwrap();
        for (offset, length) in [
            (0u64, 100u64),
            (MIB as u64 - 10, 20),
            (3 * MIB as u64 + 5, 2 * MIB as u64),
            (size - 5, 100),
        ] {
            let r = client
                .get_range(b"r", b"k", Some(&put.version), offset, Some(length))
                .await
                .unwrap();
            let end = (offset + length).min(size) as usize;
            assert_eq!(r.offset, offset);
            assert_eq!(r.size, size);
            assert_eq!(r.version.as_deref(), Some(&put.version[..]));
            assert_eq!(r.crc32, Some(put.crc32));
            assert!(
                r.value == value[offset as usize..end],
                "slice {offset}+{length}"
            );
        }
        // Without a version (one live value) and without a length: up to 4 MiB.
        let r = client.get_range(b"r", b"k", None, 0, None).await.unwrap();
        assert_eq!(r.value.len(), 4 * MIB);
        assert!(r.value == value[..4 * MIB]);
        let r = client
            .get_range(b"r", b"k", None, size, None)
            .await
            .unwrap();
        assert!(r.value.is_empty());
        let err = client
            .get_range(b"r", b"k", None, size + 1, None)
            .await
            .unwrap_err();
        assert_eq!(err.error_code(), Some(ErrorCode::InvalidRange), "{err}");
        let err = client
            .get_range(b"r", b"never", None, 0, None)
            .await
            .unwrap_err();
        assert_eq!(err.error_code(), Some(ErrorCode::NotFound), "{err}");

        client
            .put(b"r", b"small", b"0123456789".to_vec(), &[])
            .await
            .unwrap();
        let r = client
            .get_range(b"r", b"small", None, 3, Some(4))
            .await
            .unwrap();
        assert_eq!(r.value, b"3456");
        assert_eq!(r.size, 10);
        assert_eq!(r.version, None);
    });
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
            return std::task::Poll::Ready(Err(std::io::Error::other("source failed")));
        }
        let n = self.left.min(buf.remaining());
        buf.put_slice(&vec![7u8; n]);
        self.left -= n;
        std::task::Poll::Ready(Ok(()))
    }
}

/// Every way a stream goes wrong comes back typed: a missing key, siblings (listed, each
/// readable by its version), a declared size not met or passed, a wrong CRC-32 at the
/// commit, an unknown upload, a source that fails (the half value never shows), a version
/// replaced while it is read, a condition refused.
#[test]
fn stream_errors_map_to_typed_codes() {
    let node = NodeProcess::start(&[]);
    rt().block_on(async {
        let client = Client::connect(node.addr).await.unwrap();
        let opts = GetStreamOptions::default();

        let err = client.get_stream(b"e", b"none", &opts).await.unwrap_err();
        assert!(matches!(err, ClientError::NotFound { .. }), "{err}");

        // Two blind streamed puts: siblings, each read by its version.
        let (a, b) = (noise(5 * MIB, 4), noise(3 * MIB + 1, 5));
        let va = client
            .put_stream(b"e", b"sib", &a[..], &Default::default())
            .await
            .unwrap()
            .version;
        let vb = client
            .put_stream(b"e", b"sib", &b[..], &Default::default())
            .await
            .unwrap()
            .version;
        let err = client.get_stream(b"e", b"sib", &opts).await.unwrap_err();
        assert_eq!(err.error_code(), Some(ErrorCode::Siblings), "{err}");
        let ClientError::Siblings { versions, context } = &err else {
            panic!("{err}")
        };
        let mut listed: Vec<Vec<u8>> = versions
            .iter()
            .map(|m| m.version.clone().unwrap().into_vec())
            .collect();
        listed.sort();
        let mut want = vec![va.clone(), vb.clone()];
        want.sort();
        assert_eq!(listed, want);
        assert!(!context.is_empty());
        for (version, value) in [(&va, &a), (&vb, &b)] {
            let got = read_all(
                client
                    .get_stream_version(b"e", b"sib", version, &opts)
                    .await
                    .unwrap(),
            )
            .await
            .unwrap();
            assert!(got == *value, "sibling {version:?}");
        }
        let err = client
            .get_range(b"e", b"sib", None, 0, Some(10))
            .await
            .unwrap_err();
        assert_eq!(err.error_code(), Some(ErrorCode::Siblings), "{err}");
        let err = client
            .get_stream_version(b"e", b"sib", &[0u8; 16], &opts)
            .await
            .unwrap_err();
        assert_eq!(err.error_code(), Some(ErrorCode::NotFound), "{err}");

        // A declared size not met, or passed.
        let data = noise(2 * MIB, 6);
        let short = PutStreamOptions {
            size: Some(data.len() as u64 + 1),
            ..Default::default()
        };
        let err = client
            .put_stream(b"e", b"sized", &data[..], &short)
            .await
            .unwrap_err();
        assert_eq!(err.error_code(), Some(ErrorCode::UploadIncomplete), "{err}");
        let over = PutStreamOptions {
            size: Some(data.len() as u64 - 1),
            ..Default::default()
        };
        let err = client
            .put_stream(b"e", b"sized", &data[..], &over)
            .await
            .unwrap_err();
        assert_eq!(err.error_code(), Some(ErrorCode::UploadOverrun), "{err}");
        assert!(client
            .get_meta(b"e", b"sized", &Default::default())
            .await
            .unwrap()
            .values
            .is_empty());

        // The protocol by hand: a wrong CRC-32 at the commit, then the ended upload.
        let begun = client
            .request(RequestFrame {
                op: "put_begin".into(),
                bucket: Some(ByteBuf::from(&b"e"[..])),
                key: Some(ByteBuf::from(&b"crc"[..])),
                ..Default::default()
            })
            .await
            .unwrap();
        let upload = begun.upload.expect("an upload id");
        let chunk = client
            .request(RequestFrame {
                op: "put_chunk".into(),
                upload: Some(upload),
                seq: Some(0),
                data: Some(ByteBuf::from(vec![1u8; 1000])),
                ..Default::default()
            })
            .await
            .unwrap();
        assert!(chunk.ok, "{chunk:?}");
        let commit = client
            .request(RequestFrame {
                op: "put_commit".into(),
                upload: Some(upload),
                crc32: Some(u64::from(crc32(&[1u8; 1000]) ^ 1)),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(
            commit.code.as_deref(),
            Some("checksum_mismatch"),
            "{commit:?}"
        );
        let again = client
            .request(RequestFrame {
                op: "put_chunk".into(),
                upload: Some(upload),
                seq: Some(1),
                data: Some(ByteBuf::from(vec![1u8; 10])),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(again.code.as_deref(), Some("upload_unknown"), "{again:?}");

        // A source that fails after 3 MiB: typed, aborted, nothing visible.
        let err = client
            .put_stream(
                b"e",
                b"half",
                FailingReader { left: 3 * MIB },
                &Default::default(),
            )
            .await
            .unwrap_err();
        assert!(matches!(err, ClientError::Source(_)), "{err}");
        assert!(client
            .get_meta(b"e", b"half", &Default::default())
            .await
            .unwrap()
            .values
            .is_empty());

        // A condition refused on a streamed put.
        let create_only = PutStreamOptions {
            call: ringkv_api::CallOptions {
                condition: Some(ringkv_api::WriteCondition::IfNoneMatch),
                ..Default::default()
            },
            ..Default::default()
        };
        let err = client
            .put_stream(b"e", b"sib", &data[..], &create_only)
            .await
            .unwrap_err();
        assert_eq!(err.error_code(), Some(ErrorCode::ConditionFailed), "{err}");

        // The version read is replaced midway: the reader fails with not_found.
        let long = noise(12 * MIB, 7);
        client
            .put_stream(b"e", b"moving", &long[..], &Default::default())
            .await
            .unwrap();
        let small_ranges = GetStreamOptions {
            range_bytes: MIB as u64,
            window: 2,
            ..Default::default()
        };
        let mut reader = client
            .get_stream(b"e", b"moving", &small_ranges)
            .await
            .unwrap();
        let mut first = [0u8; 1];
        reader.read_exact(&mut first).await.unwrap();
        let ctx = reader.context().to_vec();
        client
            .put(b"e", b"moving", b"replaced".to_vec(), &ctx)
            .await
            .unwrap();
        let err = read_all(reader).await.unwrap_err();
        let inner = ClientError::from_io(&err).expect("a ClientError inside");
        assert_eq!(inner.error_code(), Some(ErrorCode::NotFound), "{inner}");
    });
}

/// A streamed put takes the call's time to live: the value reads back at once, then expires
/// and reads as missing.
#[test]
fn a_streamed_put_expires_with_its_ttl() {
    let node = NodeProcess::start(&[]);
    let value = noise(3 * MIB, 13);
    let runtime = rt();
    let client = runtime.block_on(async {
        let client = Client::connect(node.addr).await.unwrap();
        let opts = PutStreamOptions {
            call: ringkv_api::CallOptions {
                ttl: Some(std::time::Duration::from_millis(1500)),
                ..Default::default()
            },
            ..Default::default()
        };
        client
            .put_stream(b"t", b"short-lived", &value[..], &opts)
            .await
            .unwrap();
        let got = read_all(
            client
                .get_stream(b"t", b"short-lived", &GetStreamOptions::default())
                .await
                .unwrap(),
        )
        .await
        .unwrap();
        assert!(got == value);
        client
    });
    ringkv_tests::wait_until(
        "the streamed value to expire",
        std::time::Duration::from_secs(20),
        || {
            let got = runtime
                .block_on(client.get_meta(b"t", b"short-lived", &Default::default()))
                .unwrap();
            got.values.is_empty().then_some(())
        },
    );
    let err = runtime
        .block_on(client.get_stream(b"t", b"short-lived", &GetStreamOptions::default()))
        .unwrap_err();
    assert!(matches!(err, ClientError::NotFound { .. }), "{err}");
}

/// A value written through one node with n=3 w=3 streams back whole through another.
#[test]
fn a_streamed_value_reads_back_through_another_node() {
    let cluster = Cluster::start(3, &["--partitions", "16"]);
    let value = noise(12 * MIB + 5, 8);
    rt().block_on(async {
        let c1 = Client::connect(cluster.nodes[0].addr).await.unwrap();
        let opts = PutStreamOptions {
            call: q(3, 2, 3),
            size: Some(value.len() as u64),
            ..Default::default()
        };
        let put = c1.put_stream(b"c", b"k", &value[..], &opts).await.unwrap();
        let c3 = Client::connect(cluster.nodes[2].addr).await.unwrap();
        let opts = GetStreamOptions {
            call: q(3, 2, 2),
            ..Default::default()
        };
        let reader = c3.get_stream(b"c", b"k", &opts).await.unwrap();
        assert_eq!(reader.crc32(), Some(put.crc32));
        let got = read_all(reader).await.unwrap();
        assert!(got == value, "read through n3 differs");
    });
}

/// Runs a `ringkv` client command and returns its exit status and the peak resident memory
/// of its own process in KiB: the largest `VmHWM` of /proc/PID/status seen while it runs
/// (polled every 2 ms). `ru_maxrss` from `wait4` would not do: at `exec` the kernel carries
/// over the high-water mark of the test process the client was spawned from.
fn run_measured(cmd: &mut std::process::Command) -> (i32, u64) {
    let mut child = cmd.spawn().expect("spawn ringkv client");
    let status_file = format!("/proc/{}/status", child.id());
    let mut peak_kib = 0;
    loop {
        if let Ok(status) = std::fs::read_to_string(&status_file) {
            let hwm = status
                .lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok());
            peak_kib = peak_kib.max(hwm.unwrap_or(0));
        }
        if let Some(status) = child.try_wait().expect("wait for the client") {
            return (status.code().unwrap_or(-1), peak_kib);
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
}

/// `ringkv put --file` streams a 128 MiB file and `ringkv get > file` streams it back: the
/// bytes match and neither command's peak memory (`VmHWM`) comes near the value's size; a 6 MiB value
/// through stdin (`--file -` and no VALUE) round-trips too, `get --json` describes a large
/// value, a create-only put of an existing large value exits 3, and delete works on it.
#[test]
fn cli_put_file_and_get_stream_large_values_byte_for_byte() {
    let node = NodeProcess::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src.bin");
    let out = dir.path().join("out.bin");
    let size = 128 * MIB;
    {
        use std::io::Write;
        let mut f = std::io::BufWriter::new(std::fs::File::create(&src).unwrap());
        for i in 0..(size / (4 * MIB)) {
            f.write_all(&noise(4 * MIB, 100 + i as u64)).unwrap();
        }
    }
    let bin = ringkv_tests::ringkv_bin();
    let addr = node.addr.to_string();
    let (code, put_kib) = run_measured(
        std::process::Command::new(&bin)
            .args(["put", "cli", "big", "--file"])
            .arg(&src)
            .args(["--addr", &addr])
            .stdout(std::process::Stdio::null()),
    );
    assert_eq!(code, 0, "put --file");
    let (code, get_kib) = run_measured(
        std::process::Command::new(&bin)
            .args(["get", "cli", "big", "--addr", &addr])
            .stdout(std::fs::File::create(&out).unwrap()),
    );
    assert_eq!(code, 0, "get > file");
    println!(
        "peak RSS of the client: put --file {put_kib} KiB, get {get_kib} KiB for {size} bytes"
    );
    let (a, b) = (std::fs::read(&src).unwrap(), std::fs::read(&out).unwrap());
    assert_eq!(a.len(), b.len());
    assert!(a == b, "the file read back differs");
    drop((a, b));
    assert!(put_kib > 0 && get_kib > 0, "no VmHWM read");
    let limit_kib = 100 * 1024;
    assert!(put_kib < limit_kib, "put --file peaked at {put_kib} KiB");
    assert!(get_kib < limit_kib, "get peaked at {get_kib} KiB");

    let six = noise(6 * MIB, 9);
    for args in [
        &["put", "cli", "piped", "--file", "-"][..],
        &["put", "cli", "piped2"],
    ] {
        let (code, _, err) = node.cli(args, Some(&six));
        assert_eq!(code, 0, "{args:?}: {err}");
    }
    for key in ["piped", "piped2"] {
        let (code, got, err) = node.cli(&["get", "cli", key], None);
        assert_eq!(code, 0, "{err}");
        assert!(got == six, "{key} differs");
    }

    let (code, json, _) = node.cli(&["get", "--json", "cli", "piped"], None);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_slice(&json).unwrap();
    assert_eq!(v["values"][0]["large"], true, "{v}");
    assert_eq!(v["values"][0]["size"], six.len() as u64, "{v}");
    assert_eq!(v["values"][0]["crc32"], crc32(&six), "{v}");

    let (code, _, err) = node.cli(
        &["put", "--if-none-match", "cli", "piped", "--file", "-"],
        Some(&six),
    );
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("condition_failed"), "{err}");

    assert_eq!(node.cli(&["delete", "cli", "piped"], None).0, 0);
    let (code, _, err) = node.cli(&["get", "cli", "piped"], None);
    assert_eq!(code, 1, "{err}");

    // At the single-frame limit the value still goes in one put.
    let edge = noise(SINGLE_FRAME_BYTES as usize, 10);
    std::fs::write(&src, &edge).unwrap();
    let (code, _, err) = node.cli(
        &["put", "cli", "edge", "--file", src.to_str().unwrap()],
        None,
    );
    assert_eq!(code, 0, "{err}");
    let (_, got, _) = node.cli(&["get", "cli", "edge"], None);
    assert!(got == edge);
}

/// `ringkv load` stores and verifies a tree with files over 4 MiB (streamed) beside small
/// ones, twice without making siblings, and the large files read back byte for byte.
#[test]
fn load_streams_files_over_4_mib_and_verifies_them() {
    let node = NodeProcess::start(&[]);
    let tree = tempfile::tempdir().unwrap();
    let sub = tree.path().join("media");
    std::fs::create_dir_all(&sub).unwrap();
    for i in 0..20u32 {
        std::fs::write(
            tree.path().join(format!("f{i}")),
            vec![i as u8; i as usize * 501],
        )
        .unwrap();
    }
    let five = noise(5 * MIB + 3, 11);
    let nine = noise(9 * MIB, 12);
    std::fs::write(sub.join("five"), &five).unwrap();
    std::fs::write(sub.join("nine"), &nine).unwrap();
    let tree_path = tree.path().to_str().unwrap();
    for _ in 0..2 {
        let (code, out, err) = node.cli(&["load", "--quiet", tree_path], None);
        let out = String::from_utf8_lossy(&out);
        assert_eq!(code, 0, "{out}\n{err}");
        assert!(out.contains("stored   22 files"), "{out}");
        assert!(out.contains("0 mismatched"), "{out}");
        assert!(!out.contains("skipped"), "{out}");
    }
    for (key, want) in [("media/five", &five), ("media/nine", &nine)] {
        let (code, got, err) = node.cli(&["get", "files", key], None);
        assert_eq!(code, 0, "{err}");
        assert!(got == *want, "{key} differs");
    }
}

/// The Python client (stdlib CRC-32) streams a 100 MiB value in and out with checksums
/// compared, and reads ranges.
#[test]
fn python_client_streams_100_mib() {
    let node = NodeProcess::start(&[]);
    run_python(
        "test_streaming.py",
        &["--addr".into(), node.addr.to_string()],
    );
}
