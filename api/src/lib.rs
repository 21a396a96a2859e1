//! ringkv API: the msgpack TCP protocol (`PROTOCOL.md`), the server, the async Rust client,
//! and the pieces of the `ringkv` binary.
#![warn(missing_docs)]

pub mod bench;
pub use ringkv_client as client;
pub mod load;
pub mod metrics;
pub mod protocol;
pub mod server;

pub use client::{
    CallOptions, Client, ClientError, ClientTls, ClusterClient, ClusterOptions, WriteCondition,
};
pub use server::Server;
