//! Logs the cluster transport's session events, so that a refused peer (wrong cookie) is
//! visible in the logs of both nodes: ractor_cluster itself only closes the session.

use ractor::ActorRef;
use ractor_cluster::node::NodeServerSessionInformation;
use ractor_cluster::{NodeEventSubscription, NodeServerMessage};
use std::collections::HashSet;
use std::sync::Mutex;

struct SessionLog {
    authenticated: Mutex<HashSet<ractor::ActorId>>,
    /// Member names by cluster address, to name a peer that closed before telling its name.
    view: std::sync::Arc<crate::cluster_view::ClusterView>,
    /// Per peer name (or, for a session we dialled, its address): its authenticated sessions
    /// open now, and when one last authenticated.
    peers: std::sync::Arc<Mutex<std::collections::HashMap<String, (usize, std::time::Instant)>>>,
}

/// How long after a session closes unauthenticated a session to the same peer may
/// authenticate for the closed one to count as a duplicate (two nodes that dialled each
/// other at once: ractor_cluster keeps one session and closes the other).
const DUPLICATE_WINDOW: std::time::Duration = std::time::Duration::from_secs(2);

fn peer(ses: &NodeServerSessionInformation) -> String {
    ses.peer_name
        .as_ref()
        .map_or_else(|| "?".to_string(), |n| n.name.clone())
}

impl NodeEventSubscription for SessionLog {
    fn node_session_opened(&self, ses: NodeServerSessionInformation) {
        tracing::debug!(addr = %ses.peer_addr, incoming = ses.is_server, "cluster session opened");
    }

    fn node_session_disconnected(&self, ses: NodeServerSessionInformation) {
        let was_authenticated = self
            .authenticated
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&ses.actor.get_id());
        if was_authenticated {
            let mut keys: Vec<String> = ses.peer_name.iter().map(|n| n.name.clone()).collect();
            if !ses.is_server {
                keys.push(ses.peer_addr.clone());
            }
            let mut peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
            for key in keys {
                if let Some(entry) = peers.get_mut(&key) {
                    entry.0 = entry.0.saturating_sub(1);
                }
            }
            drop(peers);
            tracing::info!(peer = %peer(&ses), addr = %ses.peer_addr, "cluster session closed");
            return;
        }
        // Closed before authentication: either the peer failed the cookie challenge, or two
        // nodes dialled each other at once and ractor_cluster closed one of the two sessions
        // (its `duplicate_connection`). Tell them apart by whether a session to the same
        // peer is, or soon becomes, authenticated.
        let name = ses.peer_name.as_ref().map(|n| n.name.clone());
        let (addr, incoming, peers) = (ses.peer_addr.clone(), ses.is_server, self.peers.clone());
        let view = self.view.clone();
        let closed_at = std::time::Instant::now();
        let report = move || {
            // The peer's name, or (a session we dialled) the member at that address, or the
            // address itself.
            let mut keys: Vec<String> = name.iter().cloned().collect();
            if !incoming {
                keys.extend(
                    view.read()
                        .members
                        .values()
                        .filter(|m| m.cluster_addr == addr)
                        .map(|m| m.name.clone()),
                );
                keys.push(addr.clone());
            }
            let duplicate = keys.iter().any(|n| {
                peers
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get(n)
                    .is_some_and(|(open, at)| {
                        *open > 0 || at.elapsed() <= DUPLICATE_WINDOW + closed_at.elapsed()
                    })
            });
            if name.is_none() && !duplicate {
                // The peer never named itself, so it never reached the cookie challenge: a
                // dial that lost a race, or something that is not a ringkv node.
                tracing::info!(%addr, incoming, "a cluster session closed before the peer named itself");
            } else if duplicate {
                tracing::debug!(peer = ?name, %addr, incoming, "a second session to the same peer closed: the two nodes dialled each other at once and the transport kept one session");
            } else {
                tracing::warn!(
                    peer = ?name,
                    %addr,
                    incoming,
                    "cluster peer refused: the session closed before authentication and no other session to that peer authenticated (does it use the same cookie?)"
                );
            }
        };
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn(async move {
                    tokio::time::sleep(DUPLICATE_WINDOW).await;
                    report();
                });
            }
            Err(_) => report(),
        }
    }

    fn node_session_authenticated(&self, ses: NodeServerSessionInformation) {
        self.authenticated
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(ses.actor.get_id());
        let mut keys: Vec<String> = ses.peer_name.iter().map(|n| n.name.clone()).collect();
        if !ses.is_server {
            keys.push(ses.peer_addr.clone());
        }
        let mut peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        for key in keys {
            let entry = peers.entry(key).or_insert((0, std::time::Instant::now()));
            *entry = (entry.0 + 1, std::time::Instant::now());
        }
        drop(peers);
        tracing::info!(peer = %peer(&ses), addr = %ses.peer_addr, "cluster session authenticated");
    }
}

/// Subscribes the session log to `server`'s events.
pub(crate) fn subscribe(
    server: &ActorRef<NodeServerMessage>,
    view: std::sync::Arc<crate::cluster_view::ClusterView>,
) {
    let _ = server.cast(NodeServerMessage::SubscribeToEvents {
        id: "ringkv.session-log".into(),
        subscription: Box::new(SessionLog {
            authenticated: Mutex::new(HashSet::new()),
            peers: Default::default(),
            view,
        }),
    });
}
