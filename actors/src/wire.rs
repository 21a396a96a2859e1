//! The encoding of everything actors send across nodes: one version byte, then msgpack with
//! named fields, so that formats can grow (`#[serde(default)]` on new fields) and a message
//! that does not decode becomes an error instead of a panic or a silent drop.

use serde::{Deserialize, Serialize};

/// Version byte of the current format.
pub const WIRE_V1: u8 = 1;

/// Encodes `msg` as `[WIRE_V1][named msgpack]`.
pub fn encode<T: Serialize>(msg: &T) -> Vec<u8> {
    let mut out = vec![WIRE_V1];
    rmp_serde::encode::write_named(&mut out, msg).expect("encoding into a Vec cannot fail");
    out
}

/// Decodes a message made by [`encode`].
///
/// # Errors
/// A description of what is wrong: empty, unknown version, or bad msgpack.
pub fn decode<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<T, String> {
    match bytes.split_first() {
        Some((&WIRE_V1, body)) => rmp_serde::from_slice(body).map_err(|e| e.to_string()),
        Some((v, _)) => Err(format!("unknown wire version {v}")),
        None => Err("empty message".into()),
    }
}
