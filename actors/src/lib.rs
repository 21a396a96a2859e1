//! ringkv actors: the supervised actors of one node and their messages.
//!
//! ```text
//! NodeSupervisor            restarts each child within the budget of its type
//!  |                        (`restart-max` in `restart-window-ms`, default 5 in 10 s), then
//!  |                        stops, which stops the node (exit status 3)
//!  |- VNodeSupervisor       holds every partition's handle (one data env per node);
//!  |   |                    restarts failed vnodes within the vnode budget, handing each its
//!  |   |                    existing handle; then escalates
//!  |   `- VNode{p}          one per partition and the only door to it: single-key reads
//!  |                        inline, scans (anti-entropy, fetch, purge) on blocking threads,
//!  |                        writes through the node's group-committing writer thread
//!  |- Replica               (with --cluster-addr) endpoint of replica operations from other
//!  |                        nodes: vnode reads and writes, hints, Merkle tree exchanges;
//!  |                        process group `ringkv.replica.{name}`
//!  |- Gossip                (with --cluster-addr) membership exchange, heartbeats into the
//!  |                        phi-accrual detector, reconnection with backoff;
//!  |                        process group `ringkv.gossip.{name}`
//!  |- HintedHandoff         (with --cluster-addr) delivers the durable hints this node holds
//!  |                        to their owners once reachable, deletes each after its ack
//!  |- Repair                (with --cluster-addr, repair-interval-ms > 0) Merkle tree
//!  |                        anti-entropy with the other replicas of each partition held;
//!  |                        tombstone purge once every replica holds a tombstone;
//!  |                        remembers each pair's last exchange (`ringkv explain`)
//!  |- Transfer              (with --cluster-addr) pulls the partition replicas this node
//!  |                        gains in a layout change from their holders: bounded, resumable,
//!  |                        throttled chunks, then Merkle verification (`transfer`)
//!  `- (not an actor) Coordinator  one per client request, run in the request's own task
//!                             (the client listener spawns one per request), never restarted:
//!                             quorum reads and writes, sloppy quorum with hints, read repair
//! NodeServer (ractor_cluster, unlinked but watched): the cluster transport, cookie
//!                           authentication; streams come from ringkv's own listener and
//!                           dialler (`transport`). If it dies while the node runs, the node
//!                           stops (exit status 3): it is not restarted in place
//! ListenerSupervisor (ringkv-api) -> ClientListener: restarted within the listener budget on
//!                           the same bound socket; past it the node stops (exit status 3)
//! ```
//!
//! Replica operations between nodes are typed calls ([`rpc`]: one request type per operation,
//! bound to its answer type) over a [`rpc::ReplicaTransport`]: [`replica::Peers`]
//! (ractor_cluster) in a node, [`sim::SimNetwork`] (in-process nodes with real storage and
//! injected cut, drop, delay and pause) in tests of the coordinator, handoff and repair.
//!
//! Every restart decision is `supervision::Restarts::admit` (one budget per actor type), and
//! the tasks an actor spawns are held in its state (`supervision::OwnedTasks`), so they are
//! aborted when it stops or fails.
//!
//! The Transfer actor is told what to pull through its [`transfer::TransferHandle`]
//! ([`Node::transfers`]); the layout history decides.
#![warn(missing_docs)]

pub mod batch;
pub mod client_filter;
pub mod cluster_view;
pub mod context;
pub mod coordinator;
pub mod directory;
pub mod explain;
pub mod gossip;
pub mod handoff;
pub mod large;
pub mod node;
pub mod periodic;
pub mod repair;
pub mod replica;
pub mod rpc;
pub mod sim;
pub mod stats;
pub mod strong;
pub mod supervision;
pub mod tls;
pub mod transfer;
pub mod transition;
pub mod transport;
mod transport_events;
pub mod vnode;
pub mod vnode_supervisor;
pub mod wire;

pub use coordinator::KvError;
pub use node::{Fetched, Node, NodeError, RequestOptions};
pub use ringkv_cluster::NodeConfig;
