//! CPU cost of the per-key causality work a write or a merge does: [`DvvSet::sync`],
//! [`DvvSet::update`], and the record codec. Values are 256 bytes throughout.

use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion};
use ringkv_storage::{record, DvvSet, ReplicaId, VersionVector};
use std::hint::black_box;
use std::time::Duration;

const VALUE_BYTES: usize = 256;
const A: ReplicaId = 0x0a0a_0a0a_0a0a_0a0a;
const B: ReplicaId = 0x0b0b_0b0b_0b0b_0b0b;
const MAX_SIBLINGS: usize = 100;

fn value(tag: u8) -> Vec<u8> {
    vec![tag; VALUE_BYTES]
}

/// Two replicas' states of one key that each hold `n` siblings: `n - 1` shared (blind writes
/// at A that both saw), plus one concurrent write of each side's own. Their merge holds
/// `n + 1` siblings, as read repair or anti-entropy after a partition would see.
fn diverged(n: usize) -> (DvvSet, DvvSet) {
    let mut base = DvvSet::new();
    for i in 0..n - 1 {
        base.update(
            &VersionVector::new(),
            A,
            Some(value(i as u8)),
            0,
            MAX_SIBLINGS,
        )
        .unwrap();
    }
    let mut ours = base.clone();
    ours.update(&VersionVector::new(), A, Some(value(0xA0)), 0, MAX_SIBLINGS)
        .unwrap();
    let mut theirs = base;
    theirs
        .update(&VersionVector::new(), B, Some(value(0xB0)), 0, MAX_SIBLINGS)
        .unwrap();
    assert_eq!((ours.siblings.len(), theirs.siblings.len()), (n, n));
    assert_eq!(ours.sync(&theirs).siblings.len(), n + 1);
    (ours, theirs)
}

/// A key written once: one sibling, a 256-byte value.
fn single() -> DvvSet {
    let mut d = DvvSet::new();
    d.update(
        &VersionVector::new(),
        A,
        Some(value(1)),
        1_700_000_000_000,
        MAX_SIBLINGS,
    )
    .unwrap();
    d
}

fn sync(c: &mut Criterion) {
    let mut group = c.benchmark_group("dvv_sync");
    for n in [1, 3, 10] {
        let (ours, theirs) = diverged(n);
        group.bench_with_input(BenchmarkId::new("siblings", n), &n, |b, _| {
            b.iter(|| black_box(&ours).sync(black_box(&theirs)))
        });
    }
    group.finish();
}

fn update(c: &mut Criterion) {
    // A read-modify-write: the client read `state` and writes back with its context, so the
    // old sibling is replaced. The clone of the state and the value are made outside the
    // timing (the writer thread gets both already owned).
    let state = single();
    let ctx = state.context().clone();
    c.bench_function("dvv_update/with_context", |b| {
        b.iter_batched(
            || (state.clone(), value(2)),
            |(mut s, v)| {
                s.update(black_box(&ctx), A, Some(v), 0, MAX_SIBLINGS)
                    .unwrap();
                s
            },
            BatchSize::SmallInput,
        )
    });
}

fn record_codec(c: &mut Criterion) {
    let state = single();
    let bytes = record::encode(&state);
    let mut group = c.benchmark_group("record");
    group.bench_function("encode/1x256B", |b| {
        b.iter(|| record::encode(black_box(&state)))
    });
    group.bench_function("decode/1x256B", |b| {
        b.iter(|| record::decode(black_box(&bytes)).unwrap())
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(20);
    targets = sync, update, record_codec
}
criterion_main!(benches);
