//! ringkv cluster: partitioning, layout, membership, failure detection, configuration.
//!
//! * [`ring`]: which partition owns a key (a stable 64-bit hash, Q equal arcs);
//! * [`layout`]: which nodes hold each partition (capacity-weighted, zone-aware, minimal
//!   movement; deterministic);
//! * [`membership`]: the gossiped cluster state and its merge rule, staged layout changes,
//!   bucket properties;
//! * [`staging`]: staged role changes and replacements, the plan's refusal rule and its
//!   per-node move estimate;
//! * [`phi`]: the phi-accrual failure detector;
//! * [`config`]: [`NodeConfig`], every setting with unit, default and validation.
//!
//! Knows nothing of actors or storage; tested as a plain library.
#![warn(missing_docs)]

pub mod config;
pub mod layout;
pub mod membership;
pub mod phi;
pub mod ring;
pub mod staging;
pub mod transition;

pub use config::{ConfigError, NodeConfig};
pub use membership::Compression;
pub use ring::partition_for;
