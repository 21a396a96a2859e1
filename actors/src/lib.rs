//! ringkv actors: the supervised actors of one node and their messages.
//!
//! ```text
//! NodeSupervisor            restarts VNodeSupervisor within a budget (5 in 10 s), then
//!  |                        stops, which stops the node
//!  |- VNodeSupervisor       owns every partition's LMDB env; restarts failed vnodes within a
//!  |   |                    budget (5 in 10 s), handing each its existing env; then escalates
//!  |   `- VNode{p}          one per partition: reads inline, writes through the partition's
//!  |                        group-committing writer thread
//!  `- (unlinked) Coordinator  one per client request, local-only message type, never
//!                             restarted: finds the vnode, retries across a vnode restart
//!                             within the request's deadline, answers, stops
//! ```
//!
//! The client listener (in `ringkv-api`) runs as tokio tasks beside this tree and reaches it
//! through [`Node`]. Gossip, HintedHandoff, Repair and Transfer join the tree with the cluster
//! issues.
#![warn(missing_docs)]

pub mod cluster_view;
pub mod coordinator;
pub mod directory;
pub mod gossip;
pub mod node;
pub mod replica;
pub mod supervision;
mod transport_events;
pub mod vnode;
pub mod vnode_supervisor;

pub use coordinator::KvError;
pub use node::{Fetched, Node, NodeError, RequestOptions};
pub use ringkv_cluster::NodeConfig;
