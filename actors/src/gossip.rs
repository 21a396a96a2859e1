//! The Gossip actor: membership exchange, heartbeats, failure detection, reconnection.
//!
//! Every tick (`heartbeat-ms`, default 500 ms) it:
//! * casts a heartbeat to the Gossip actor of every other member, which feeds that node's
//!   phi-accrual detector (Hayashibara et al. 2004, as Cassandra uses);
//! * exchanges the cluster state with one random peer (push-pull): the peer merges ours and
//!   answers with its merge, which we merge in turn, so two nodes agree after one exchange
//!   and a change reaches all nodes in O(log n) rounds;
//! * connects to the members it has no session with, and to the `--join` seeds while it
//!   knows no peer, with a short, capped, jittered backoff per address ([`DIAL_BACKOFF_MIN`]
//!   doubling up to [`DIAL_BACKOFF_MAX`], each wait drawn from its upper half), through
//!   [`crate::transport::dial`] (a connect that gives up after a second, on a socket with
//!   keepalive and `TCP_USER_TIMEOUT`). ractor_cluster has no reconnect of its own
//!   (STACK-NOTES). Of two members, only the one with the smaller name dials the other, so
//!   that two nodes do not dial each other at once: ractor_cluster then closes one of the two
//!   sessions, and that can take the process groups of the surviving one with it. A member
//!   whose groups stay missing for [`STALE_AFTER`] although a session to it exists gets that
//!   session closed, and the next dial starts afresh;
//! * closes the session of a member the failure detector convicts, once that session has
//!   had [`CONVICT_GRACE`] to carry a first heartbeat. Across a real partition packets are
//!   lost, not refused: the session's TCP connection stalls, and after the heal it would wait
//!   for the kernel's next retransmission, whose interval doubled all through the partition.
//!   Closed at once, the session is redialled within the backoff cap of the heal, so links
//!   return within a few heartbeats whatever the partition's length.
//!
//! Removed members (tombstones) get no heartbeat, no exchange and no dial. A node that learns
//! it was removed itself logs it once and stops ticking: it dials no member and no seed any
//! more, and only answers the exchanges of peers that have not heard of the removal yet (so
//! that they do).
//!
//! Peers are found through the process group `ringkv.gossip.{name}`, our own node names:
//! ractor's NodeIds change on every reconnect.

use crate::cluster_view::ClusterView;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use ractor_cluster::{NodeServerMessage, RactorClusterMessage};
use rand::seq::SliceRandom;
use rand::Rng;
use ringkv_cluster::membership::ClusterState;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a known member may lack process groups before its session is reset.
pub const STALE_AFTER: Duration = Duration::from_secs(3);

/// First wait between two dials of one address.
pub const DIAL_BACKOFF_MIN: Duration = Duration::from_millis(100);

/// Longest wait between two dials of one address (before jitter, which only shortens it).
pub const DIAL_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// How long a session to a convicted member is kept before it is closed: time for a new
/// session to carry the peer's first heartbeat, which clears the conviction.
pub const CONVICT_GRACE: Duration = Duration::from_secs(1);

/// Messages of the Gossip actor (they cross nodes).
#[derive(RactorClusterMessage)]
pub enum GossipMsg {
    /// Push-pull: an encoded `(sender name, ClusterState)`; the reply is the receiver's
    /// state after merging, encoded the same way.
    #[rpc]
    Exchange(Vec<u8>, RpcReplyPort<Vec<u8>>),
    /// A heartbeat: the sender's name, UTF-8.
    Heartbeat(Vec<u8>),
    /// Local timer.
    Tick,
    /// Fault injection: panic (ignored unless the node runs with `fault-injection`).
    InjectPanic,
}

/// Process group of node `name`'s Gossip actor.
pub fn gossip_group(name: &str) -> String {
    format!("ringkv.gossip.{name}")
}

fn encode(from: &str, state: &ClusterState) -> Vec<u8> {
    crate::wire::encode(&(from, state))
}

fn decode(bytes: &[u8]) -> Result<(String, ClusterState), String> {
    crate::wire::decode(bytes)
}

/// Arguments of the Gossip actor.
pub struct GossipArgs {
    /// The shared view.
    pub view: Arc<ClusterView>,
    /// The ractor_cluster NodeServer, for outgoing connections.
    pub node_server: ActorRef<NodeServerMessage>,
    /// Seeds to connect to while no peer is known (`--join`).
    pub seeds: Vec<String>,
    /// Tick period.
    pub interval: Duration,
    /// Mutual TLS on the connections this node dials (`cluster-tls-ca`).
    pub tls: Option<Arc<crate::tls::ClusterTls>>,
    /// Whether fault injection (`InjectPanic`) is allowed.
    pub fault_injection: bool,
}

/// Per-address reconnection backoff.
struct Backoff {
    next: Instant,
    delay: Duration,
}

/// State of the Gossip actor.
pub struct GossipState {
    args: GossipArgs,
    backoff: HashMap<String, Backoff>,
    missing_since: HashMap<String, Instant>,
    /// Set once this node has logged that it was removed.
    told_removed: bool,
    /// Dials and exchanges in progress, aborted if the actor stops or fails.
    tasks: crate::supervision::OwnedTasks,
    /// Since when each member's process groups have been present (its session is up).
    present_since: HashMap<String, Instant>,
}

/// The Gossip actor.
pub struct Gossip;

impl Gossip {
    fn connect_with_backoff(state: &mut GossipState, addr: &str) {
        let now = Instant::now();
        let entry = state.backoff.entry(addr.to_string()).or_insert(Backoff {
            next: now,
            delay: DIAL_BACKOFF_MIN,
        });
        if entry.next > now {
            return;
        }
        // Full jitter over the upper half: nodes that lost the same peer do not redial in
        // lockstep, and no wait exceeds the cap.
        let wait = entry.delay.mul_f64(rand::thread_rng().gen_range(0.5..=1.0));
        entry.next = now + wait;
        entry.delay = (entry.delay * 2).min(DIAL_BACKOFF_MAX);
        let server = state.args.node_server.clone();
        let addr = addr.to_string();
        let tls = state.args.tls.clone();
        state.tasks.spawn(async move {
            match crate::transport::dial(&server, addr.as_str(), tls.as_deref()).await {
                Ok(()) => tracing::debug!(%addr, "cluster connection opened"),
                Err(e) => tracing::debug!(%addr, error = %e, "cluster connection failed"),
            }
        });
    }

    /// Closes any transport session with node `name`, because `why` (a session without
    /// process groups is of no use, a convicted peer's may have stalled, and while a session
    /// is open a new dial is refused as a duplicate).
    fn reset_session(server: &ActorRef<NodeServerMessage>, name: &str, why: &'static str) {
        let (server, name) = (server.clone(), name.to_string());
        tokio::spawn(async move {
            let sessions = server
                .call(NodeServerMessage::GetSessions, Some(Duration::from_secs(2)))
                .await;
            if let Ok(ractor::rpc::CallResult::Success(sessions)) = sessions {
                for ses in sessions.values() {
                    let peer = ses
                        .peer_name
                        .as_ref()
                        .map(|n| n.name.as_str())
                        .unwrap_or("");
                    if peer.split('@').next() == Some(name.as_str()) {
                        tracing::info!(peer = %name, reason = why, "closing a cluster session");
                        ses.actor.stop(Some(format!("ringkv: {why}")));
                    }
                }
            }
        });
    }

    fn tick(state: &mut GossipState) {
        let view = state.args.view.clone();
        let local = view.local().to_string();
        let snapshot = view.snapshot();
        if snapshot.is_removed(&local) {
            if !state.told_removed {
                state.told_removed = true;
                tracing::warn!(
                    node = %local,
                    "this node was removed from the cluster by a commit; it stops gossiping and reconnecting (to add it again, start it on an empty data directory)"
                );
            }
            return;
        }
        let mut connected = Vec::new();
        for (name, member) in &snapshot.members {
            if *name == local || view.is_isolated(name) {
                continue;
            }
            if member.is_removed() {
                state.backoff.remove(&member.cluster_addr);
                state.missing_since.remove(name);
                state.present_since.remove(name);
                continue;
            }
            let peers = ractor::pg::get_members(&gossip_group(name));
            match peers.into_iter().next() {
                Some(cell) => {
                    let peer: ActorRef<GossipMsg> = cell.into();
                    let _ = peer.cast(GossipMsg::Heartbeat(local.as_bytes().to_vec()));
                    state.backoff.remove(&member.cluster_addr);
                    state.missing_since.remove(name);
                    let since = *state
                        .present_since
                        .entry(name.clone())
                        .or_insert_with(Instant::now);
                    if !view.is_up(name) && since.elapsed() >= CONVICT_GRACE {
                        // Restart the grace: the session takes a moment to close.
                        state.present_since.insert(name.clone(), Instant::now());
                        Self::reset_session(
                            &state.args.node_server,
                            name,
                            "the failure detector convicts the peer",
                        );
                    } else {
                        connected.push(peer);
                    }
                }
                None => {
                    state.present_since.remove(name);
                    if local < *name {
                        Self::connect_with_backoff(state, &member.cluster_addr);
                    }
                    let since = *state
                        .missing_since
                        .entry(name.clone())
                        .or_insert_with(Instant::now);
                    if since.elapsed() > STALE_AFTER {
                        state.missing_since.insert(name.clone(), Instant::now());
                        Self::reset_session(
                            &state.args.node_server,
                            name,
                            "the session carries no process groups",
                        );
                    }
                }
            }
        }
        if connected.is_empty() {
            for seed in state.args.seeds.clone() {
                Self::connect_with_backoff(state, &seed);
            }
            // A seed we are connected to but do not know by name yet: exchange with it.
            for cell in ractor::pg::which_groups()
                .into_iter()
                .filter(|g| g.starts_with("ringkv.gossip.") && *g != gossip_group(&local))
                .filter(|g| {
                    let name = &g["ringkv.gossip.".len()..];
                    !view.is_isolated(name) && !snapshot.is_removed(name)
                })
                .filter_map(|g| ractor::pg::get_members(&g).into_iter().next())
            {
                connected.push(cell.into());
            }
        }
        if let Some(peer) = connected.choose(&mut rand::thread_rng()).cloned() {
            let message = encode(&local, &snapshot);
            state.tasks.spawn(async move {
                let reply = peer
                    .call(
                        |port| GossipMsg::Exchange(message, port),
                        Some(Duration::from_secs(2)),
                    )
                    .await;
                if let Ok(ractor::rpc::CallResult::Success(bytes)) = reply {
                    match decode(&bytes) {
                        Ok((from, theirs)) => {
                            view.heartbeat(&from);
                            if view.merge(&theirs) {
                                tracing::debug!(peer = %from, "cluster state updated by gossip");
                            }
                        }
                        Err(e) => tracing::warn!(error = %e, "undecodable gossip answer"),
                    }
                }
            });
        }
    }
}

impl Actor for Gossip {
    type Msg = GossipMsg;
    type State = GossipState;
    type Arguments = GossipArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: GossipArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        ractor::pg::join(gossip_group(args.view.local()), vec![myself.get_cell()]);
        myself.send_interval(args.interval, || GossipMsg::Tick);
        let _ = myself.cast(GossipMsg::Tick);
        Ok(GossipState {
            args,
            backoff: HashMap::new(),
            missing_since: HashMap::new(),
            told_removed: false,
            tasks: Default::default(),
            present_since: HashMap::new(),
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            GossipMsg::Tick => Self::tick(state),
            GossipMsg::InjectPanic if state.args.fault_injection => {
                panic!("gossip: injected panic")
            }
            GossipMsg::InjectPanic => {}
            GossipMsg::Heartbeat(from) => {
                state.args.view.heartbeat(&String::from_utf8_lossy(&from));
            }
            GossipMsg::Exchange(bytes, _)
                if decode(&bytes).is_ok_and(|(from, _)| state.args.view.is_isolated(&from)) =>
            {
                // An injected network partition: drop it, as a cut link would.
            }
            GossipMsg::Exchange(bytes, reply) => match decode(&bytes) {
                Ok((from, theirs)) if !state.args.view.read().compatible(&theirs) => {
                    tracing::error!(
                        peer = %from,
                        theirs = theirs.partitions,
                        ours = state.args.view.read().partitions,
                        "ignoring a peer with another partition count: it belongs to another cluster"
                    );
                }
                Ok((from, theirs)) => {
                    let view = &state.args.view;
                    view.heartbeat(&from);
                    if view.merge(&theirs) {
                        tracing::debug!(peer = %from, "cluster state updated by gossip");
                    }
                    let _ = reply.send(encode(view.local(), &view.snapshot()));
                }
                Err(e) => tracing::warn!(error = %e, "undecodable gossip message"),
            },
        }
        Ok(())
    }
}
