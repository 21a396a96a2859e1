//! CPU cost of the client protocol's msgpack framing for the two hot operations: a put
//! request (256-byte value) and a get answer (one 256-byte value and its context).

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use ringkv_api::protocol::Fetched;
use ringkv_api::protocol::{encode_frame, Request, RequestFrame, ResponseFrame};
use ringkv_storage::{Dot, VersionVector};
use serde_bytes::ByteBuf;
use std::hint::black_box;
use std::time::Duration;

const VALUE_BYTES: usize = 256;

/// A causal context as a get returns it: a clock with three replicas.
fn context() -> Vec<u8> {
    let mut vv = VersionVector::new();
    for (replica, counter) in [(0x1234_5678_9abc_def0, 17), (u64::MAX - 3, 4), (42, 1)] {
        vv.add(Dot { replica, counter });
    }
    vv.to_context()
}

fn put_frame() -> RequestFrame {
    RequestFrame {
        id: 123_456,
        op: "put".into(),
        bucket: Some(ByteBuf::from(b"users".to_vec())),
        key: Some(ByteBuf::from(b"user:0000012345".to_vec())),
        value: Some(ByteBuf::from(vec![0xA5; VALUE_BYTES])),
        context: Some(ByteBuf::from(context())),
        ..Default::default()
    }
}

fn fetched() -> Fetched {
    Fetched {
        values: vec![vec![0x5A; VALUE_BYTES]],
        context: context(),
    }
}

fn put_request(c: &mut Criterion) {
    let frame = put_frame();
    let bytes = encode_frame(&frame);
    let mut group = c.benchmark_group("put_request");
    group.throughput(Throughput::Bytes(bytes.len() as u64));
    group.bench_function("encode", |b| b.iter(|| encode_frame(black_box(&frame))));
    group.bench_function("decode", |b| {
        b.iter(|| Request::decode(black_box(&bytes[4..])).unwrap())
    });
    group.finish();
}

fn get_answer(c: &mut Criterion) {
    let bytes = ResponseFrame::fetched(7, fetched()).encode();
    let mut group = c.benchmark_group("get_answer");
    group.throughput(Throughput::Bytes(bytes.len() as u64));
    // What the server does with a read's result: wrap it and encode the frame. The owned
    // `Fetched` is built outside the timing.
    group.bench_function("encode", |b| {
        b.iter_batched(
            fetched,
            |f| ResponseFrame::fetched(7, f).encode(),
            BatchSize::SmallInput,
        )
    });
    // What the client does with an answer's body.
    group.bench_function("decode", |b| {
        b.iter(|| rmp_serde::from_slice::<ResponseFrame>(black_box(&bytes[4..])).unwrap())
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(20);
    targets = put_request, get_answer
}
criterion_main!(benches);
