//! The shape check of a request body, done before serde decodes it.
//!
//! A request is exactly one msgpack map with string keys, nothing after it, and no value
//! nested deeper than [`MAX_NESTING`] levels (the request map is level 1). rmp_serde alone
//! would also take an array (the fields by position), a map with integer or bin keys (fields
//! by index or bytes) and trailing bytes, and it recurses once per level of an ignored value.
//!
//! The walk is iterative: it reads markers and lengths with `rmp::decode` and skips values
//! with a counter per open container, so any nesting costs no stack, and every step consumes
//! at least one byte of the body, so a huge announced length ends at the body's end. It also
//! reads the top-level `id` wherever it sits in the map, so that an error answer carries the
//! request's id even when serde gives up on another field.

use rmp::decode::read_marker;
use rmp::Marker;

/// Deepest nesting of maps and arrays a request may hold; the request map is level 1 (a
/// `bucket_set`'s `props` map is level 2).
pub const MAX_NESTING: usize = 32;

/// What the walk found: the `id` (an unsigned integer under the key `"id"` of the request
/// map), and the first rule the body breaks.
pub struct Shape {
    /// The request's id, when it is readable.
    pub id: Option<u64>,
    /// Why the body is not a well-formed request map, for a `malformed_request` message.
    pub problem: Option<String>,
}

/// Walks `body` (one frame's bytes, without the length prefix).
pub fn check(body: &[u8]) -> Shape {
    let mut rd = body;
    let mut id = None;
    let mut problem: Option<String> = None;
    let walked = walk_map(&mut rd, "a request", |i, key, value, depth| {
        let found = match key {
            Err(kind) => Some(format!(
                "a request is one msgpack map with string keys, but key {i} is {kind}"
            )),
            Ok(_) if depth + 1 > MAX_NESTING => Some(format!(
                "values are nested deeper than {MAX_NESTING} levels (the request map is level 1)"
            )),
            Ok(b"id") => {
                id = rmp::decode::read_int::<u64, _>(&mut &value[..]).ok();
                None
            }
            Ok(b"props") => walk_map(&mut &value[..], "props", |i, key, _, _| {
                key.err().map(|kind| {
                    format!("props is a msgpack map with string keys, but key {i} is {kind}")
                })
            })
            .err(),
            Ok(_) => None,
        };
        if problem.is_none() {
            problem = found;
        }
        None
    });
    let problem = match walked {
        Err(e) => Some(e),
        Ok(()) if !rd.is_empty() => Some(format!(
            "{} trailing bytes after the request map: a frame holds exactly one map",
            rd.len()
        )),
        Ok(()) => problem,
    };
    Shape { id, problem }
}

/// Walks the map at the start of `rd` and moves `rd` past it. For entry `i` (from 0), calls
/// `entry(i, key, value, depth)`: the key's bytes if it is a string, else what it is; the
/// value's bytes; how deeply the value nests (0 for a scalar). The first error `entry`
/// returns stops the walk.
///
/// # Errors
/// `what` is not a map; the bytes end inside it or hold the reserved marker 0xc1; `entry`'s
/// error.
fn walk_map<'a>(
    rd: &mut &'a [u8],
    what: &str,
    mut entry: impl FnMut(u64, Result<&'a [u8], &'static str>, &'a [u8], usize) -> Option<String>,
) -> Result<(), String> {
    let marker =
        read_marker(rd).map_err(|_| format!("{what} is empty: it must be a msgpack map"))?;
    let len = match marker {
        Marker::FixMap(n) => u64::from(n),
        Marker::Map16 => be(take(rd, 2)?),
        Marker::Map32 => be(take(rd, 4)?),
        other => {
            return Err(format!(
                "{what} is one msgpack map with string keys, not {}",
                kind(other)
            ))
        }
    };
    for i in 0..len {
        let key = match read_marker(rd).map_err(|_| ended())? {
            m @ (Marker::FixStr(_) | Marker::Str8 | Marker::Str16 | Marker::Str32) => {
                let n = payload_len(rd, m)?;
                Ok(take(rd, n)?)
            }
            m => {
                skip_after(rd, m)?;
                Err(kind(m))
            }
        };
        let start = *rd;
        let depth = skip(rd)?;
        let value = &start[..start.len() - rd.len()];
        if let Some(e) = entry(i, key, value, depth) {
            return Err(e);
        }
    }
    Ok(())
}

/// Skips one value and returns how deeply it nests: 0 for a scalar, 1 for an array of
/// scalars, ...; counted up to `MAX_NESTING + 1`.
fn skip(rd: &mut &[u8]) -> Result<usize, String> {
    let marker = read_marker(rd).map_err(|_| ended())?;
    skip_after(rd, marker)
}

/// As [`skip`], the value's marker already read.
fn skip_after(rd: &mut &[u8], first: Marker) -> Result<usize, String> {
    // Items left in each open container, innermost last (at most MAX_NESTING + 1 of them);
    // items of containers deeper than that are counted together in `deep`.
    let mut open: Vec<u64> = Vec::new();
    let mut deep: u64 = 0;
    let mut nesting = 0;
    let mut marker = Some(first);
    loop {
        let m = match marker.take() {
            Some(m) => m,
            None => {
                while open.last() == Some(&0) {
                    open.pop();
                }
                if open.is_empty() && deep == 0 {
                    return Ok(nesting);
                }
                if deep > 0 {
                    deep -= 1;
                } else if let Some(left) = open.last_mut() {
                    *left -= 1;
                }
                read_marker(rd).map_err(|_| ended())?
            }
        };
        let items = match m {
            Marker::FixArray(n) => u64::from(n),
            Marker::Array16 => be(take(rd, 2)?),
            Marker::Array32 => be(take(rd, 4)?),
            Marker::FixMap(n) => 2 * u64::from(n),
            Marker::Map16 => 2 * be(take(rd, 2)?),
            Marker::Map32 => 2 * be(take(rd, 4)?),
            Marker::Reserved => return Err("the byte 0xc1 is not msgpack".into()),
            scalar => {
                let n = payload_len(rd, scalar)?;
                take(rd, n)?;
                continue;
            }
        };
        let level = open.len() + 1;
        nesting = nesting.max(level);
        if deep > 0 || level > MAX_NESTING {
            deep += items;
        } else {
            open.push(items);
        }
    }
}

/// Bytes after a scalar's marker (reading the length field of str, bin and ext).
fn payload_len(rd: &mut &[u8], m: Marker) -> Result<usize, String> {
    let n = match m {
        Marker::FixPos(_) | Marker::FixNeg(_) | Marker::Null | Marker::True | Marker::False => 0,
        Marker::U8 | Marker::I8 => 1,
        Marker::U16 | Marker::I16 => 2,
        Marker::U32 | Marker::I32 | Marker::F32 => 4,
        Marker::U64 | Marker::I64 | Marker::F64 => 8,
        Marker::FixStr(n) => u64::from(n),
        Marker::Str8 | Marker::Bin8 => be(take(rd, 1)?),
        Marker::Str16 | Marker::Bin16 => be(take(rd, 2)?),
        Marker::Str32 | Marker::Bin32 => be(take(rd, 4)?),
        Marker::FixExt1 => 2,
        Marker::FixExt2 => 3,
        Marker::FixExt4 => 5,
        Marker::FixExt8 => 9,
        Marker::FixExt16 => 17,
        Marker::Ext8 => 1 + be(take(rd, 1)?),
        Marker::Ext16 => 1 + be(take(rd, 2)?),
        Marker::Ext32 => 1 + be(take(rd, 4)?),
        _ => return Err(format!("{} has no fixed payload", kind(m))),
    };
    usize::try_from(n).map_err(|_| ended())
}

/// Takes `n` bytes off the front of `rd`.
fn take<'a>(rd: &mut &'a [u8], n: usize) -> Result<&'a [u8], String> {
    if rd.len() < n {
        return Err(ended());
    }
    let (head, tail) = rd.split_at(n);
    *rd = tail;
    Ok(head)
}

/// A big-endian unsigned integer of 1 to 8 bytes.
fn be(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0, |acc, &b| acc << 8 | u64::from(b))
}

fn ended() -> String {
    "the request ends inside a msgpack value".into()
}

/// What a value with this marker is, for messages.
fn kind(m: Marker) -> &'static str {
    match m {
        Marker::FixPos(_)
        | Marker::FixNeg(_)
        | Marker::U8
        | Marker::U16
        | Marker::U32
        | Marker::U64
        | Marker::I8
        | Marker::I16
        | Marker::I32
        | Marker::I64 => "an integer",
        Marker::Null => "nil",
        Marker::True | Marker::False => "a boolean",
        Marker::F32 | Marker::F64 => "a float",
        Marker::FixStr(_) | Marker::Str8 | Marker::Str16 | Marker::Str32 => "a string",
        Marker::Bin8 | Marker::Bin16 | Marker::Bin32 => "a bin (byte string)",
        Marker::FixArray(_) | Marker::Array16 | Marker::Array32 => "an array",
        Marker::FixMap(_) | Marker::Map16 | Marker::Map32 => "a map",
        Marker::Reserved => "the byte 0xc1, which is not msgpack",
        _ => "an extension value",
    }
}
