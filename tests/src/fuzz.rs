//! A seeded fuzzer of the client protocol's request decoder (`ringkv_api::protocol::Request::
//! decode`, which a node runs on every frame body it reads, and `ringkv_proto::recover_id`).
//!
//! cargo-fuzz needs a nightly toolchain, which this machine's registries do not offer; this
//! is the issue's alternative: a generator of valid and mutated frames driven from a test
//! binary. Each input is built from a seed ([`input`]), so a failure is replayed from its
//! number alone:
//!
//! * **valid requests** of every op, with random field values (every field of the protocol,
//!   right and wrong types, empty and long strings, huge integers);
//! * **mutations** of those: bit flips, byte overwrites with msgpack markers, insertions,
//!   deletions, truncations, splices of two requests, length fields set to huge values;
//! * **hostile shapes**: nesting thousands of levels deep, maps and arrays declaring 2^32
//!   entries, non-string keys, trailing bytes, random bytes.
//!
//! [`run`] decodes inputs under `catch_unwind` and times each one: a panic or an input slower
//! than [`HANG`] is a failure, reported with its number.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::time::{Duration, Instant};

/// An input that takes longer than this to decode counts as a hang.
pub const HANG: Duration = Duration::from_secs(1);

/// Op names no request may use, beside the real ones ([`ringkv_api::protocol::OPS`]).
const NOT_OPS: [&str; 6] = ["", "GET", "get\0", "nonexistent_op", "put_chunk_", "é"];

/// An op name: a real one (most of the time) or one of [`NOT_OPS`].
fn op_name(rng: &mut StdRng) -> &'static str {
    let ops = &ringkv_api::protocol::OPS;
    let i = rng.gen_range(0..ops.len() + NOT_OPS.len());
    ops.get(i)
        .copied()
        .unwrap_or_else(|| NOT_OPS[i - ops.len()])
}

/// Field names of requests (and a few unknown ones).
const FIELDS: [&str; 41] = [
    "id",
    "op",
    "bucket",
    "key",
    "value",
    "expect",
    "context",
    "n",
    "r",
    "w",
    "timeout_ms",
    "local",
    "return_body",
    "if_none_match",
    "if_match",
    "ttl_ms",
    "meta",
    "size",
    "upload",
    "seq",
    "data",
    "crc32",
    "version",
    "offset",
    "length",
    "node",
    "zone",
    "capacity",
    "replacement",
    "props",
    "fault",
    "actor",
    "peers",
    "on",
    "consistency",
    "compression",
    "sloppy_quorum",
    "layout",
    "unknown",
    "",
    "idid",
];

/// A random msgpack value of nesting at most `depth`.
fn value(rng: &mut StdRng, depth: u32) -> rmpv::Value {
    use rmpv::Value as V;
    match rng.gen_range(0..14) {
        0 => V::Nil,
        1 => V::Boolean(rng.gen()),
        2 => V::from(rng.gen::<u64>() >> rng.gen_range(0..64)),
        3 => V::from(-(rng.gen::<i64>().abs() >> rng.gen_range(0..63))),
        4 => V::F64(rng.gen()),
        5 | 6 => {
            let len = [0, 1, 3, 64, 65, 443, 1000][rng.gen_range(0..7)];
            V::Binary((0..len).map(|_| rng.gen()).collect())
        }
        7 | 8 => {
            let len = [0, 1, 5, 64, 65, 300][rng.gen_range(0..6)];
            V::String(
                (0..len)
                    .map(|_| char::from(rng.gen_range(32u8..127)))
                    .collect::<String>()
                    .into(),
            )
        }
        9 => V::String(op_name(rng).into()),
        10 if depth > 0 => V::Array(
            (0..rng.gen_range(0..4))
                .map(|_| value(rng, depth - 1))
                .collect(),
        ),
        11 if depth > 0 => V::Map(
            (0..rng.gen_range(0..4))
                .map(|_| (field(rng), value(rng, depth - 1)))
                .collect(),
        ),
        12 => V::from(
            [0u64, 1, 2, 3, 4, 255, 256, u64::from(u32::MAX), u64::MAX][rng.gen_range(0..9)],
        ),
        _ => V::Ext(rng.gen(), vec![0; rng.gen_range(0..4)]),
    }
}

fn field(rng: &mut StdRng) -> rmpv::Value {
    match rng.gen_range(0..20) {
        0 => rmpv::Value::from(rng.gen::<u8>()),
        1 => rmpv::Value::Binary(FIELDS[rng.gen_range(0..FIELDS.len())].as_bytes().to_vec()),
        _ => rmpv::Value::String(FIELDS[rng.gen_range(0..FIELDS.len())].into()),
    }
}

/// A request map: an id, an op, and fields with values of the right or a wrong type.
fn request(rng: &mut StdRng) -> Vec<u8> {
    use rmpv::Value as V;
    let mut entries: Vec<(V, V)> = Vec::new();
    if rng.gen_bool(0.95) {
        entries.push((
            V::from("id"),
            V::from(rng.gen::<u64>() >> rng.gen_range(0..64)),
        ));
    }
    if rng.gen_bool(0.95) {
        entries.push((V::from("op"), V::String(op_name(rng).into())));
    }
    for _ in 0..rng.gen_range(0..8) {
        let name = FIELDS[rng.gen_range(0..FIELDS.len())];
        let v = match (name, rng.gen_bool(0.7)) {
            ("bucket" | "key" | "value" | "expect" | "context" | "data" | "version", true) => {
                let len = [1, 2, 10, 64, 65, 442, 443][rng.gen_range(0..7)];
                V::Binary((0..len).map(|_| rng.gen()).collect())
            }
            (
                "n" | "r" | "w" | "timeout_ms" | "ttl_ms" | "size" | "upload" | "seq" | "crc32"
                | "offset" | "length" | "capacity",
                true,
            ) => V::from(rng.gen::<u64>() >> rng.gen_range(0..64)),
            ("local" | "return_body" | "if_none_match" | "if_match" | "meta" | "on", true) => {
                V::Boolean(rng.gen())
            }
            ("props", true) => value(rng, 2),
            ("peers", true) => V::Array((0..rng.gen_range(0..3)).map(|_| V::from("n2")).collect()),
            _ => value(rng, 3),
        };
        entries.push((V::from(name), v));
    }
    encode(&V::Map(entries))
}

fn encode(v: &rmpv::Value) -> Vec<u8> {
    let mut out = Vec::new();
    rmpv::encode::write_value(&mut out, v).expect("writing to a Vec cannot fail");
    out
}

/// Hostile shapes: deep nesting, huge declared lengths, wrong top-level types.
fn hostile(rng: &mut StdRng) -> Vec<u8> {
    match rng.gen_range(0..7) {
        0 => {
            // Arrays or maps nested deeply.
            let depth = [10, 200, 1100, 100_000][rng.gen_range(0..4)];
            let marker = if rng.gen() { 0x91 } else { 0x81 };
            let mut out = vec![0x81, 0xa2, b'i', b'd'];
            for _ in 0..depth {
                out.push(marker);
                if marker == 0x81 {
                    out.push(0xc0);
                }
            }
            out.push(0xc0);
            out
        }
        1 => {
            // A map or array declaring 2^32 - 1 entries, or a bin declaring 4 GiB.
            let marker = [0xdf, 0xdd, 0xc6, 0xdb][rng.gen_range(0..4)];
            let mut out = vec![0x81, 0xa2, b'o', b'p', marker, 0xff, 0xff, 0xff, 0xff];
            out.extend((0..rng.gen_range(0..16)).map(|_| rng.gen::<u8>()));
            out
        }
        2 => encode(&value(rng, 4)),
        3 => (0..rng.gen_range(0..256)).map(|_| rng.gen()).collect(),
        4 => {
            // A valid request with bytes after it.
            let mut out = request(rng);
            out.extend((0..rng.gen_range(1..8)).map(|_| rng.gen::<u8>()));
            out
        }
        5 => Vec::new(),
        _ => {
            // Two maps back to back.
            let mut out = request(rng);
            out.extend(request(rng));
            out
        }
    }
}

/// A mutation of `input`: a few edits of one kind or another.
fn mutate(rng: &mut StdRng, mut input: Vec<u8>) -> Vec<u8> {
    const MARKERS: [u8; 16] = [
        0xc0, 0xc1, 0xc4, 0xc5, 0xc6, 0xd9, 0xda, 0xdb, 0xdc, 0xdd, 0xde, 0xdf, 0x80, 0x90, 0xa0,
        0xff,
    ];
    for _ in 0..rng.gen_range(1..5) {
        let len = input.len();
        match rng.gen_range(0..7) {
            0 if len > 0 => {
                let i = rng.gen_range(0..len);
                input[i] ^= 1 << rng.gen_range(0..8);
            }
            1 if len > 0 => {
                let i = rng.gen_range(0..len);
                input[i] = MARKERS[rng.gen_range(0..MARKERS.len())];
            }
            2 => {
                let i = rng.gen_range(0..=len);
                input.insert(i, rng.gen());
            }
            3 if len > 0 => {
                let i = rng.gen_range(0..len);
                input.remove(i);
            }
            4 if len > 0 => input.truncate(rng.gen_range(0..len)),
            5 => {
                let other = request(rng);
                let cut = rng.gen_range(0..=len);
                let from = rng.gen_range(0..=other.len());
                input.truncate(cut);
                input.extend_from_slice(&other[from..]);
            }
            _ if len >= 4 => {
                // A length field made huge.
                let i = rng.gen_range(0..len - 3);
                input[i] = [0xc6, 0xdb, 0xdd, 0xdf][rng.gen_range(0..4)];
                input[i + 1..i + 4].copy_from_slice(&[0xff, 0xff, 0xff]);
            }
            _ => {}
        }
    }
    input
}

/// Input number `n` of the run seeded `seed`: a valid request (30 %), a mutated one (55 %)
/// or a hostile shape (15 %).
pub fn input(seed: u64, n: u64) -> Vec<u8> {
    let mut rng = StdRng::seed_from_u64(seed ^ n.wrapping_mul(0x9e37_79b9_7f4a_7c15));
    match rng.gen_range(0..100) {
        0..30 => request(&mut rng),
        30..85 => {
            let base = request(&mut rng);
            mutate(&mut rng, base)
        }
        _ => hostile(&mut rng),
    }
}

/// What a run found.
#[derive(Debug, Default)]
pub struct Findings {
    /// Inputs decoded.
    pub inputs: u64,
    /// Inputs that decoded to a request.
    pub accepted: u64,
    /// Inputs refused with an error answer.
    pub refused: u64,
    /// Numbers of inputs that panicked the decoder.
    pub panics: Vec<u64>,
    /// Numbers of inputs slower than [`HANG`].
    pub hangs: Vec<u64>,
    /// Slowest input's decode time, and its number.
    pub slowest: (Duration, u64),
    /// Time of the whole run.
    pub elapsed: Duration,
}

/// Decodes inputs `0, 1, 2, ...` of `seed` until `max_inputs` or `max_time`, whichever comes
/// first; every input goes through `Request::decode` and `recover_id`, as a node's connection
/// handler does with each frame body.
pub fn run(seed: u64, max_inputs: u64, max_time: Duration) -> Findings {
    let started = Instant::now();
    let mut f = Findings::default();
    // Panics are counted, not printed once per input.
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    for n in 0..max_inputs {
        if n % 256 == 0 && started.elapsed() >= max_time {
            break;
        }
        let body = input(seed, n);
        let t = Instant::now();
        let outcome = std::panic::catch_unwind(|| {
            let _ = ringkv_api::protocol::recover_id(&body);
            ringkv_api::protocol::Request::decode(&body).is_ok()
        });
        let took = t.elapsed();
        f.inputs += 1;
        match outcome {
            Ok(true) => f.accepted += 1,
            Ok(false) => f.refused += 1,
            Err(_) => f.panics.push(n),
        }
        if took > HANG {
            f.hangs.push(n);
        }
        if took > f.slowest.0 {
            f.slowest = (took, n);
        }
    }
    std::panic::set_hook(hook);
    f.elapsed = started.elapsed();
    f
}
