//! Per-value compression of stored values.
//!
//! Each sibling of a [`crate::DvvSet`] says how its bytes are encoded ([`crate::Sibling::codec`]):
//! [`Codec::None`] (the client's bytes as they are), [`Codec::Zstd`] (one zstd frame that
//! declares its content size) or [`Codec::Lz4`] (a 4-byte little-endian length, then one LZ4
//! block). The tag travels with the value everywhere a record goes (replication merges, hints,
//! anti-entropy, transfers), so replicas, buckets whose `compression` property changed and old
//! records (no tag: raw) mix freely.
//!
//! [`compress`] runs once per client write on the node that accepted it, before the write fans
//! out; [`decompress`] runs on the node that answers the client, before a read (or a write's
//! returned state) goes back. Compressing once at the entry, rather than at record encoding on
//! each replica, keeps every replica's bytes (and so its Merkle hashes) identical, spends the
//! CPU once per write instead of on every merge, repair and transfer that re-encodes a record,
//! and makes replication, hints and transfers carry the smaller bytes. A value is kept raw when its compressed form is not at least
//! [`MIN_SAVING_PERCENT`] percent smaller (already compressed media, random bytes); a value of
//! [`SAMPLE_FROM_LEN`] or more is first judged by compressing its first [`SAMPLE_LEN`] bytes, so
//! such data costs one small failed attempt on write and nothing on read.
//!
//! Decompression is bounded: the declared size of a frame is checked against the caller's
//! limit (the node's `max-value-bytes`) before anything is allocated, and the decoder writes
//! into exactly that much room, so a corrupt or hostile frame gives [`StorageError::Corrupt`],
//! never a large allocation or a panic.
//!
//! # zstd level
//! [`ZSTD_LEVEL`] is 1, chosen by measurement (`cargo run --release -p ringkv-storage --example
//! compression_figures`: one value per file, single thread, 2-core machine; ratio is stored
//! bytes over original bytes with the raw fallback included, throughput is MB of original
//! bytes per second):
//!
//! ```text
//! corpus                              codec   ratio  raw %  compress MB/s  decompress MB/s
//! /usr/share/doc, 4329 files, 105 MB  zstd-1  0.629   44.2      427            1903
//!                                     zstd-3  0.623   44.1      393            1398
//!                                     zstd-6  0.616   44.0      169            2033
//!                                     lz4     0.678   44.4      761            3157
//! its text (no .gz/.xz/...), 51 MB    zstd-1  0.233    1.5      359            1127
//!                                     zstd-3  0.223    1.5      288            1095
//!                                     zstd-6  0.209    1.5       98            1115
//!                                     lz4     0.335    2.1      444            1957
//! random bytes, 512 x 64 KiB          zstd-1  1.000  100.0     2650            7411
//!                                     zstd-3  1.000  100.0     2743            8620
//!                                     zstd-6  1.000  100.0     1711            8881
//!                                     lz4     1.000  100.0     3225            9260
//! ```
//!
//! On text, level 3 stores 4 % fewer bytes than level 1 (0.223 against 0.233 of the original)
//! for 20 % less compression throughput, level 6 10 % fewer for 3.7 times the CPU; on the whole
//! corpus the levels differ by 1-2 % because 44 % of its files are compressed already and are
//! stored raw whatever the level. Decompression speed does not depend on the level. The node
//! compresses on the request path of a 2-core machine that also runs LMDB commits and the
//! cluster transport, so the cheapest level, which takes nearly all of the saving, is the
//! default. Incompressible data costs one failed attempt at about 2.7 GB/s and nothing on read.

use crate::StorageError;
use serde::{Deserialize, Serialize};
use std::cell::RefCell;

/// The zstd level used for [`Codec::Zstd`] (see the module docs for the measurement).
pub const ZSTD_LEVEL: i32 = 1;

/// A compressed form is kept only if it is at least this many percent smaller than the
/// value; otherwise the value is stored raw ([`Codec::None`]).
pub const MIN_SAVING_PERCENT: usize = 3;

/// Values shorter than this are never compressed (the frame overhead eats the saving).
pub const MIN_COMPRESS_LEN: usize = 64;

/// Values at least this long are first judged by a sample: their first [`SAMPLE_LEN`] bytes are
/// compressed alone, and if that does not save [`MIN_SAVING_PERCENT`] percent the value is
/// stored raw without compressing the rest (media and random bytes cost one small attempt,
/// not a whole failed one). A value whose start is incompressible but whose rest would shrink
/// (rare: an archive that begins with a compressed member) is then stored raw.
pub const SAMPLE_FROM_LEN: usize = 64 << 10;

/// Bytes of the sample (see [`SAMPLE_FROM_LEN`]).
pub const SAMPLE_LEN: usize = 16 << 10;

/// How one stored value is encoded. Serialized as a lowercase string (`"none"`, `"zstd"`,
/// `"lz4"`); the same names are the bucket property `compression`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Codec {
    /// The value's own bytes (every record written before compression existed).
    #[default]
    None,
    /// One zstd frame with its content size in the header, level [`ZSTD_LEVEL`].
    Zstd,
    /// `[u32 little-endian uncompressed length][LZ4 block]`.
    Lz4,
    /// Not a value but the [`crate::large::Manifest`] of a large value (msgpack), whose
    /// bytes are in chunk records. Never a bucket's `compression`.
    Manifest,
}

impl Codec {
    /// True for [`Codec::None`] (lets records skip the field for raw values).
    pub fn is_none(&self) -> bool {
        *self == Codec::None
    }

    /// The name used in records, bucket properties and the CLI.
    pub fn name(self) -> &'static str {
        match self {
            Codec::None => "none",
            Codec::Zstd => "zstd",
            Codec::Lz4 => "lz4",
            Codec::Manifest => "manifest",
        }
    }

    /// Parses a [`Codec::name`].
    ///
    /// # Errors
    /// A message naming the accepted values.
    pub fn parse(s: &str) -> Result<Codec, String> {
        match s {
            "none" => Ok(Codec::None),
            "zstd" => Ok(Codec::Zstd),
            "lz4" => Ok(Codec::Lz4),
            other => Err(format!(
                "compression must be none, zstd or lz4, not {other:?}"
            )),
        }
    }
}

impl std::fmt::Display for Codec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

thread_local! {
    static ZSTD_C: RefCell<Option<(i32, zstd::bulk::Compressor<'static>)>> = const { RefCell::new(None) };
    static ZSTD_D: RefCell<Option<zstd::bulk::Decompressor<'static>>> = const { RefCell::new(None) };
}

/// Compresses `value` with `codec` at the default zstd level: the stored bytes and the codec
/// that describes them, which is [`Codec::None`] (and the value itself) when compression does
/// not save at least [`MIN_SAVING_PERCENT`] percent or the value is shorter than
/// [`MIN_COMPRESS_LEN`].
pub fn compress(codec: Codec, value: Vec<u8>) -> (Codec, Vec<u8>) {
    compress_level(codec, ZSTD_LEVEL, value)
}

/// [`compress`] with an explicit zstd `level` (for measurements).
pub fn compress_level(codec: Codec, level: i32, value: Vec<u8>) -> (Codec, Vec<u8>) {
    if value.len() < MIN_COMPRESS_LEN || value.len() > u32::MAX as usize {
        return (Codec::None, value);
    }
    let attempt = |bytes: &[u8]| {
        // Keep the compressed form only if it is this long or shorter.
        let limit = bytes.len() - bytes.len() * MIN_SAVING_PERCENT / 100;
        match codec {
            Codec::None | Codec::Manifest => None,
            Codec::Zstd => zstd_compress(level, bytes, limit),
            Codec::Lz4 => lz4_compress(bytes, limit),
        }
    };
    if value.len() >= SAMPLE_FROM_LEN && attempt(&value[..SAMPLE_LEN]).is_none() {
        return (Codec::None, value);
    }
    let packed = attempt(&value);
    match packed {
        Some(bytes) => (codec, bytes),
        None => (Codec::None, value),
    }
}

fn zstd_compress(level: i32, value: &[u8], limit: usize) -> Option<Vec<u8>> {
    ZSTD_C.with(|cell| {
        let mut slot = cell.borrow_mut();
        if !matches!(slot.as_ref(), Some((l, _)) if *l == level) {
            *slot = Some((level, zstd::bulk::Compressor::new(level).ok()?));
        }
        let (_, c) = slot.as_mut()?;
        // Room for exactly `limit` bytes: a frame that would not fit fails, which is the
        // "does not shrink" answer without compressing into a larger buffer.
        let mut out = Vec::with_capacity(limit);
        c.compress_to_buffer(value, &mut out).ok()?;
        Some(out)
    })
}

fn lz4_compress(value: &[u8], limit: usize) -> Option<Vec<u8>> {
    if limit <= 4 {
        return None;
    }
    let mut out = vec![0u8; 4 + lz4_flex::block::get_maximum_output_size(value.len())];
    out[..4].copy_from_slice(&(value.len() as u32).to_le_bytes());
    let n = lz4_flex::block::compress_into(value, &mut out[4..]).ok()?;
    if 4 + n > limit {
        return None;
    }
    out.truncate(4 + n);
    Some(out)
}

/// Decodes stored bytes made by [`compress`] with `codec`, refusing to produce more than
/// `max_len` bytes.
///
/// # Errors
/// [`StorageError::Corrupt`] when the bytes are not a valid frame of `codec`, declare no size
/// (zstd), declare a size over `max_len`, or decode to another size than declared.
pub fn decompress(codec: Codec, stored: &[u8], max_len: usize) -> Result<Vec<u8>, StorageError> {
    match codec {
        Codec::None => Ok(stored.to_vec()),
        Codec::Zstd => {
            let size = match zstd::zstd_safe::get_frame_content_size(stored) {
                Ok(Some(n)) => n,
                Ok(None) => return Err(corrupt("zstd", "frame declares no content size")),
                Err(_) => return Err(corrupt("zstd", "not a zstd frame")),
            };
            if size > max_len as u64 {
                return Err(too_long("zstd", size, max_len));
            }
            let mut out = Vec::with_capacity(size as usize);
            ZSTD_D.with(|cell| {
                let mut slot = cell.borrow_mut();
                if slot.is_none() {
                    *slot = Some(
                        zstd::bulk::Decompressor::new()
                            .map_err(|e| corrupt("zstd", &e.to_string()))?,
                    );
                }
                let d = slot.as_mut().expect("just set");
                d.decompress_to_buffer(stored, &mut out)
                    .map_err(|e| corrupt("zstd", &e.to_string()))
            })?;
            if out.len() as u64 != size {
                return Err(corrupt(
                    "zstd",
                    "frame decodes to another size than declared",
                ));
            }
            Ok(out)
        }
        Codec::Lz4 => {
            let (head, block) = stored
                .split_first_chunk::<4>()
                .ok_or_else(|| corrupt("lz4", "shorter than its length prefix"))?;
            let size = u32::from_le_bytes(*head) as usize;
            if size > max_len {
                return Err(too_long("lz4", size as u64, max_len));
            }
            let mut out = vec![0u8; size];
            let n = lz4_flex::block::decompress_into(block, &mut out)
                .map_err(|e| corrupt("lz4", &e.to_string()))?;
            if n != size {
                return Err(corrupt(
                    "lz4",
                    "block decodes to another size than declared",
                ));
            }
            Ok(out)
        }
        Codec::Manifest => Err(corrupt(
            "manifest",
            "a large value's manifest is not the value: read its chunks",
        )),
    }
}

/// The length of the value that `stored` (bytes encoded with `codec`) decodes to, read from
/// the encoding's header without decoding: the bytes themselves for [`Codec::None`], the zstd
/// frame's declared content size, the LZ4 length prefix. `None` for a [`Codec::Manifest`]
/// (the length is in the manifest, [`crate::large::Manifest::size`]) and for stored bytes
/// whose header does not declare a length (a corrupt value). For inspection
/// (`ringkv explain`): reads check the length again when they decode.
pub fn declared_len(codec: Codec, stored: &[u8]) -> Option<u64> {
    match codec {
        Codec::None => Some(stored.len() as u64),
        Codec::Zstd => zstd::zstd_safe::get_frame_content_size(stored)
            .ok()
            .flatten(),
        Codec::Lz4 => stored
            .first_chunk::<4>()
            .map(|head| u64::from(u32::from_le_bytes(*head))),
        Codec::Manifest => None,
    }
}

fn corrupt(codec: &str, why: &str) -> StorageError {
    StorageError::Corrupt(format!("compressed value ({codec}): {why}"))
}

fn too_long(codec: &str, size: u64, max: usize) -> StorageError {
    StorageError::Corrupt(format!(
        "compressed value ({codec}) declares {size} bytes, over the limit of {max} bytes"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn declared_len_reads_the_header_of_every_codec() {
        let value = text(10_000);
        for codec in [Codec::None, Codec::Zstd, Codec::Lz4] {
            let (used, stored) = compress(codec, value.clone());
            assert_eq!(used, codec, "{codec}: text compresses");
            assert_eq!(declared_len(used, &stored), Some(10_000), "{codec}");
        }
        assert_eq!(declared_len(Codec::None, b""), Some(0));
        assert_eq!(
            declared_len(Codec::Lz4, b"\x01\x02"),
            None,
            "shorter than the prefix"
        );
        assert_eq!(declared_len(Codec::Zstd, b"not zstd"), None);
        assert_eq!(declared_len(Codec::Manifest, b"anything"), None);
    }

    fn text(len: usize) -> Vec<u8> {
        let words = [
            "ringkv ",
            "stores ",
            "values ",
            "in ",
            "partitions ",
            "replicated ",
        ];
        let mut out = Vec::with_capacity(len + 16);
        let mut i = 7usize;
        while out.len() < len {
            i = i.wrapping_mul(2654435761).wrapping_add(1);
            out.extend_from_slice(words[(i >> 7) % words.len()].as_bytes());
        }
        out.truncate(len);
        out
    }

    fn random(len: usize) -> Vec<u8> {
        (0..len).map(|_| rand::random::<u8>()).collect()
    }

    #[test]
    fn each_codec_round_trips_and_shrinks_text() {
        let value = text(100_000);
        for codec in [Codec::Zstd, Codec::Lz4] {
            let (used, stored) = compress(codec, value.clone());
            assert_eq!(used, codec);
            assert!(stored.len() < value.len() / 2, "{codec}: {}", stored.len());
            assert_eq!(decompress(used, &stored, value.len()).unwrap(), value);
        }
        let (used, stored) = compress(Codec::None, value.clone());
        assert_eq!((used, &stored), (Codec::None, &value));
    }

    #[test]
    fn incompressible_and_tiny_values_are_stored_raw() {
        for codec in [Codec::Zstd, Codec::Lz4] {
            let value = random(64 * 1024);
            assert_eq!(compress(codec, value.clone()), (Codec::None, value));
            let tiny = b"aaaaaaaaaaaaaaaa".to_vec();
            assert_eq!(compress(codec, tiny.clone()), (Codec::None, tiny));
            assert_eq!(compress(codec, Vec::new()), (Codec::None, Vec::new()));
        }
    }

    /// A large value is judged by its first [`SAMPLE_LEN`] bytes: incompressible there (media,
    /// random bytes), it is stored raw without compressing the rest; a value too short to
    /// sample is judged whole.
    #[test]
    fn a_large_value_whose_sample_does_not_shrink_is_stored_raw() {
        for codec in [Codec::Zstd, Codec::Lz4] {
            let mut value = random(SAMPLE_LEN);
            value.extend(vec![0u8; SAMPLE_FROM_LEN]);
            assert_eq!(compress(codec, value.clone()), (Codec::None, value));
            let mut short = random(SAMPLE_LEN);
            short.extend(vec![0u8; SAMPLE_LEN]);
            assert_eq!(compress(codec, short.clone()).0, codec, "judged whole");
            let mut text_first = text(SAMPLE_LEN);
            text_first.extend(random(SAMPLE_FROM_LEN));
            assert_eq!(compress(codec, text_first).0, codec);
        }
    }

    #[test]
    fn corrupt_or_oversized_frames_are_errors_not_panics() {
        let value = text(50_000);
        for codec in [Codec::Zstd, Codec::Lz4] {
            let (_, stored) = compress(codec, value.clone());
            // Over the caller's limit: refused before allocating.
            let e = decompress(codec, &stored, value.len() - 1).unwrap_err();
            assert!(e.to_string().contains("over the limit"), "{e}");
            // Truncated, flipped and garbage inputs.
            assert!(decompress(codec, &stored[..stored.len() / 2], value.len()).is_err());
            assert!(decompress(codec, &[], value.len()).is_err());
            assert!(decompress(codec, &[1, 2, 3], value.len()).is_err());
            for i in (0..stored.len()).step_by(97) {
                let mut bad = stored.clone();
                bad[i] ^= 0x5a;
                if let Ok(out) = decompress(codec, &bad, value.len()) {
                    assert!(out.len() <= value.len());
                }
            }
        }
        // A hostile LZ4 header claiming 4 GiB is refused without allocating it.
        let hostile = [0xff, 0xff, 0xff, 0xff, 0x00];
        assert!(decompress(Codec::Lz4, &hostile, 4 << 20).is_err());
        // Random bytes never panic either decoder.
        for _ in 0..200 {
            let junk = random(1 + rand::random::<usize>() % 200);
            let _ = decompress(Codec::Zstd, &junk, 1 << 20);
            let _ = decompress(Codec::Lz4, &junk, 1 << 20);
        }
    }

    #[test]
    fn names_parse_back() {
        for c in [Codec::None, Codec::Zstd, Codec::Lz4] {
            assert_eq!(Codec::parse(c.name()), Ok(c));
        }
        assert!(Codec::parse("gzip").is_err());
    }
}
