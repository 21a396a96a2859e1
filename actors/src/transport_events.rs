//! Logs the cluster transport's session events, so that a refused peer (wrong cookie) is
//! visible in the logs of both nodes: ractor_cluster itself only closes the session.

use ractor::ActorRef;
use ractor_cluster::node::NodeServerSessionInformation;
use ractor_cluster::{NodeEventSubscription, NodeServerMessage};
use std::collections::HashSet;
use std::sync::Mutex;

struct SessionLog {
    authenticated: Mutex<HashSet<ractor::ActorId>>,
}

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
            tracing::info!(peer = %peer(&ses), addr = %ses.peer_addr, "cluster session closed");
        } else {
            tracing::warn!(
                addr = %ses.peer_addr,
                incoming = ses.is_server,
                "cluster peer refused: the session closed before authentication (does it use the same cookie?)"
            );
        }
    }

    fn node_session_authenticated(&self, ses: NodeServerSessionInformation) {
        self.authenticated
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(ses.actor.get_id());
        tracing::info!(peer = %peer(&ses), addr = %ses.peer_addr, "cluster session authenticated");
    }
}

/// Subscribes the session log to `server`'s events.
pub(crate) fn subscribe(server: &ActorRef<NodeServerMessage>) {
    let _ = server.cast(NodeServerMessage::SubscribeToEvents {
        id: "ringkv.session-log".into(),
        subscription: Box::new(SessionLog {
            authenticated: Mutex::new(HashSet::new()),
        }),
    });
}
