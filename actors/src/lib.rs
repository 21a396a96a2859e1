//! ringkv actors: the supervised actors of one node and their messages.
//!
//! ```text
//! NodeSupervisor            restarts its children within a budget (5 in 10 s), then stops,
//!  |                        which stops the node
//!  |- VNodeSupervisor       owns every partition's LMDB env; restarts failed vnodes within a
//!  |   |                    budget (5 in 10 s), handing each its existing env; then escalates
//!  |   `- VNode{p}          one per partition: reads inline, writes through the partition's
//!  |                        group-committing writer thread
//!  |- Replica               (with --cluster-addr) endpoint of replica operations from other
//!  |                        nodes; process group `ringkv.replica.{name}`
//!  |- Gossip                (with --cluster-addr) membership exchange, heartbeats into the
//!  |                        phi-accrual detector, reconnection with backoff;
//!  |                        process group `ringkv.gossip.{name}`
//!  `- (unlinked) Coordinator  one per client request, local-only message type, never
//!                             restarted: quorum reads and writes, read repair
//! NodeServer (ractor_cluster, unlinked): the cluster transport, cookie authentication
//! ```
//!
//! The client listener (in `ringkv-api`) runs as tokio tasks beside this tree and reaches it
//! through [`Node`]. HintedHandoff, Repair and Transfer join the tree with the self-healing
//! and membership issues.
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
pub mod wire;

pub use coordinator::KvError;
pub use node::{Fetched, Node, NodeError, RequestOptions};
pub use ringkv_cluster::NodeConfig;
