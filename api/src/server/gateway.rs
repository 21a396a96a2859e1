//! The KvGateway: the actor client nodes call (`ringkv_client::actor`, served on
//! `actor-listen`, see `ringkv_actors::client_filter`).
//!
//! One per node, in the process groups [`KV_GROUP`] and `ringkv.kv.NODE`, under a supervisor
//! that restarts it within the node's restart budget. A
//! [`GatewayMsg::Call`] carries a request of the TCP protocol (its msgpack body behind a
//! version byte); the gateway gives it exactly a TCP request's treatment: the same decoder
//! and validation ([`Request::decode_routed`]), the same `max-frame-bytes` on request and
//! answer, the node-wide `max-in-flight-bytes` budget shared with the TCP listener
//! (`overloaded` past it), at most `max-in-flight` requests running at once for all client
//! nodes together (`overloaded` past it), and the same [`execute`]. Streamed uploads belong to
//! a TCP connection and are refused (`unknown_op`).

use super::restarting::{Restarting, RestartingArgs};
use super::{execute, newer_layout, oversized_answer, ByteBudget, Uploads};
use crate::metrics::{Metrics, UNDECODED_OP};
use crate::protocol::{ErrorCode, ProtocolError, Request, ResponseFrame};
use ractor::{Actor, ActorProcessingErr, ActorRef};
use ringkv_actors::Node;
use ringkv_client::actor::{encode_answer, unwrap_version, GatewayMsg};
use ringkv_proto::{KV_GROUP, KV_NODE_GROUP_PREFIX};
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::Semaphore;

/// What every incarnation of the gateway shares.
#[derive(Clone)]
pub struct GatewayShared {
    node: Arc<Node>,
    budget: Arc<ByteBudget>,
    metrics: Option<Arc<Metrics>>,
    uploads: Arc<Uploads>,
    running: Arc<Semaphore>,
}

impl GatewayShared {
    fn observe(&self, op: &'static str, code: Option<&str>, started: Instant) {
        if let Some(m) = &self.metrics {
            m.observe(op, code, started.elapsed());
        }
    }

    /// Serves one request payload and returns the reply payload.
    async fn serve(&self, payload: Vec<u8>, started: Instant) -> Vec<u8> {
        let node = &self.node;
        let max_frame = node.config().max_frame_bytes;
        let error = |id: u64, e: ProtocolError| {
            self.observe(UNDECODED_OP, Some(e.code.as_str()), started);
            encode_answer(&ResponseFrame::error(id, &e))
        };
        let body = match unwrap_version(&payload) {
            Ok(body) => body,
            Err(e) => {
                return error(
                    0,
                    ProtocolError::new(ErrorCode::MalformedRequest, e.to_string()),
                )
            }
        };
        if body.len() > max_frame {
            return error(
                crate::protocol::recover_id(body),
                ProtocolError::new(
                    ErrorCode::FrameTooLarge,
                    format!(
                        "request of {} bytes is over the maximum of {max_frame} bytes (max-frame-bytes)",
                        body.len()
                    ),
                ),
            );
        }
        let decoded = match Request::decode_routed(body) {
            Ok(d) => d,
            Err((id, e)) => return error(id, e),
        };
        drop(payload);
        let (id, op) = (decoded.id, decoded.request.op());
        if matches!(
            decoded.request,
            Request::PutBegin { .. }
                | Request::PutChunk { .. }
                | Request::PutCommit { .. }
                | Request::PutAbort { .. }
        ) {
            let e = ProtocolError::new(
                ErrorCode::UnknownOp,
                format!("{op} belongs to a TCP connection: streamed uploads are not served to client nodes (get_range is)"),
            );
            self.observe(op, Some(e.code.as_str()), started);
            return encode_answer(&ResponseFrame::error(id, &e));
        }
        let mut frame = execute(node, &self.uploads, id, decoded.request).await;
        frame.layout = newer_layout(node, decoded.layout);
        let answer = encode_answer(&frame);
        if let Some(refused) = oversized_answer(id, answer.len() - 1, max_frame, frame.layout) {
            self.observe(op, refused.code.as_deref(), started);
            return encode_answer(&refused);
        }
        self.observe(op, frame.code.as_deref(), started);
        answer
    }
}

/// The gateway actor (module docs).
#[derive(Default)]
pub(super) struct KvGateway;

impl Actor for KvGateway {
    type Msg = GatewayMsg;
    type State = GatewayShared;
    type Arguments = GatewayShared;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        shared: GatewayShared,
    ) -> Result<Self::State, ActorProcessingErr> {
        let name = shared.node.config().node_name();
        ractor::pg::join(KV_GROUP.to_string(), vec![myself.get_cell()]);
        ractor::pg::join(
            format!("{KV_NODE_GROUP_PREFIX}{name}"),
            vec![myself.get_cell()],
        );
        Ok(shared)
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        shared: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let GatewayMsg::Call(payload, reply) = message;
        let started = Instant::now();
        let config = shared.node.config();
        let admitted = shared
            .running
            .clone()
            .try_acquire_owned()
            .ok()
            .and_then(|permit| {
                shared
                    .budget
                    .try_reserve(payload.len())
                    .map(|reserved| (permit, reserved))
            });
        let Some((permit, reserved)) = admitted else {
            let id = unwrap_version(&payload)
                .map(crate::protocol::recover_id)
                .unwrap_or(0);
            let e = ProtocolError::new(
                ErrorCode::Overloaded,
                format!(
                    "client nodes have {} requests running (max-in-flight {}) or the node {} bytes in flight (max-in-flight-bytes {}); try again later",
                    config.max_in_flight - shared.running.available_permits(),
                    config.max_in_flight,
                    shared.budget.used(),
                    config.max_in_flight_bytes
                ),
            );
            shared.observe(UNDECODED_OP, Some(e.code.as_str()), started);
            let _ = reply.send(encode_answer(&ResponseFrame::error(id, &e)));
            return Ok(());
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let answer = shared.serve(payload, started).await;
            drop(reserved);
            let _held = shared.budget.force(answer.len());
            let _ = reply.send(answer);
            drop(permit);
        });
        Ok(())
    }
}

/// A running KvGateway and its supervisor; stopped when dropped.
pub struct Gateway {
    supervisor: ActorRef<()>,
}

impl Gateway {
    /// Starts the node's KvGateway, sharing `budget` (the client listener's
    /// `max-in-flight-bytes`) and counting requests in `metrics`.
    ///
    /// # Errors
    /// The actor did not start.
    pub async fn start(
        node: Arc<Node>,
        budget: Arc<ByteBudget>,
        metrics: Option<Arc<Metrics>>,
    ) -> Result<Gateway, ractor::SpawnErr> {
        let shared = GatewayShared {
            uploads: Uploads::new(node.clone(), budget.clone()),
            running: Arc::new(Semaphore::new(node.config().max_in_flight)),
            node,
            budget,
            metrics,
        };
        let args = RestartingArgs {
            node: shared.node.clone(),
            child: shared,
            kind: "gateway",
            what: "kv gateway",
        };
        let (supervisor, _) = Actor::spawn(None, Restarting::<KvGateway>::new(), args).await?;
        Ok(Gateway { supervisor })
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.supervisor.stop(None);
    }
}
