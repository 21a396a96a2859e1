//! Batching of replica calls per peer: the merges and reads one node sends to another at
//! about the same time travel as one ractor_cluster message.
//!
//! Every write sends a merge to each other replica, and every read a get: with many requests
//! in flight that is many small cluster messages, and the cluster hop is the expensive part
//! (STACK-NOTES: 12-40k remote calls/s against 500k in-process). So [`Peers`](crate::replica::Peers)
//! hands the frames of [batched](crate::rpc::Rpc::BATCHED) requests to a sender task per peer
//! ([`PeerSenders`]). The task waits for a frame, takes every other frame already queued (no
//! timer: what queued while the previous batch was being sent), up to
//! `max-cluster-frame-bytes` in all, and sends them as one [`ReplicaMsg::Batch`]; it does not
//! wait for the answer before sending the next batch. Each caller still has its own answer,
//! timeout and per-peer byte budget.
//!
//! The receiving node (`serve_batch`) sends every request of the batch to its partition's
//! vnode before waiting for any answer (so the vnodes hand all its merges to the writer
//! together and they land in the same group commit; reads are answered by the vnodes), and
//! answers with one frame holding each request's own answer frame, in order. An answer that would take the batch's answer
//! over the cluster message limit is left out and its caller sends the request again alone.
//!
//! Bounds: each peer's queue holds at most as many frames as its byte budget admits calls
//! (`PeerBudgets`, at least [`MIN_CALL_BYTES`](crate::replica::MIN_CALL_BYTES) each), so a
//! caller that got budget always finds room; past it the call fails with
//! [`ReplicaError::Overloaded`]. A batch counts one permit of the node's `MAX_SERVING` per
//! request it holds, and is answered [`ReplicaFailure::Overloaded`] for each when they are not
//! free.

use crate::replica::{replica_group, ReplicaContext, ReplicaMsg};
use crate::rpc::{Envelope, ReplicaError, ReplicaFailure};
use crate::stats::NodeStats;
use crate::wire::{decode, encode};
use ractor::rpc::CallResult;
use ractor::ActorRef;
use serde_bytes::ByteBuf;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

/// Largest request frame that is batched, bytes; bigger ones are sent alone (so that any
/// batched frame fits in a batch under the smallest `max-cluster-frame-bytes`).
pub const MAX_BATCHED_FRAME: usize = 16 << 10;

/// What a batch adds to the message around each frame, bytes (an upper bound of msgpack's
/// array and binary headers).
const PER_FRAME_BYTES: usize = 8;

/// How a batched call ended.
pub(crate) enum Batched {
    /// The answer frame of the request.
    Answer(Vec<u8>),
    /// The answer did not fit in the batch's answer: the request frame, to send alone.
    Alone(Vec<u8>),
    /// The batch failed (unreachable, no answer in time, an undecodable answer).
    Failed(ReplicaError),
}

/// One frame waiting for its peer's sender task.
struct Queued {
    frame: Vec<u8>,
    deadline: Instant,
    reply: oneshot::Sender<Batched>,
}

/// The sender task and queue of each peer this node has sent batched calls to.
pub struct PeerSenders {
    queues: Mutex<HashMap<String, mpsc::Sender<Queued>>>,
    /// Frames each peer's queue holds at most.
    capacity: usize,
    /// Largest batch message, bytes (`max-cluster-frame-bytes`).
    max_message_bytes: usize,
    /// Where batches are counted.
    stats: Arc<NodeStats>,
}

impl PeerSenders {
    /// Senders whose queues hold at most `capacity` frames and whose batches are at most
    /// `max_message_bytes`, counted in `stats`.
    pub fn new(capacity: usize, max_message_bytes: usize, stats: Arc<NodeStats>) -> Self {
        Self {
            queues: Mutex::new(HashMap::new()),
            capacity: capacity.max(1),
            max_message_bytes,
            stats,
        }
    }

    /// Queues the request `frame` for node `node`'s next batch (starting its sender task if
    /// there is none); the receiver gets how it ended. `deadline` is when its caller stops
    /// waiting.
    ///
    /// # Errors
    /// [`ReplicaError::Overloaded`] if the node's queue is full.
    pub(crate) fn submit(
        &self,
        node: &str,
        frame: Vec<u8>,
        deadline: Instant,
    ) -> Result<oneshot::Receiver<Batched>, ReplicaError> {
        let (reply, answer) = oneshot::channel();
        let mut item = Queued {
            frame,
            deadline,
            reply,
        };
        let mut queues = self.queues.lock().unwrap_or_else(|p| p.into_inner());
        // Twice at most: a queue whose task has ended (its runtime stopped) is replaced.
        for _ in 0..2 {
            let queue = queues.entry(node.to_string()).or_insert_with(|| {
                let (tx, rx) = mpsc::channel(self.capacity);
                let (node, limit) = (node.to_string(), self.max_message_bytes);
                tokio::spawn(send_loop(node, limit, self.stats.clone(), rx));
                tx
            });
            match queue.try_send(item) {
                Ok(()) => return Ok(answer),
                Err(mpsc::error::TrySendError::Full(_)) => {
                    return Err(ReplicaError::Overloaded {
                        node: node.to_string(),
                        limit: self.capacity,
                    })
                }
                Err(mpsc::error::TrySendError::Closed(back)) => {
                    item = back;
                    queues.remove(node);
                }
            }
        }
        Err(ReplicaError::Unreachable(node.to_string()))
    }
}

/// The sender task of node `node`: sends what is queued as batches of at most
/// `max_message_bytes`, each without waiting for the previous one's answer. Ends when the
/// queue is dropped.
async fn send_loop(
    node: String,
    max_message_bytes: usize,
    stats: Arc<NodeStats>,
    mut queue: mpsc::Receiver<Queued>,
) {
    let mut carried: Option<Queued> = None;
    loop {
        let first = match carried.take() {
            Some(item) => item,
            None => match queue.recv().await {
                Some(item) => {
                    // Let the callers already woken (the writes of one group commit, the
                    // reads of one request) queue theirs before the batch is taken.
                    tokio::task::yield_now().await;
                    item
                }
                None => return,
            },
        };
        let mut bytes = 16 + first.frame.len() + PER_FRAME_BYTES;
        let mut batch = vec![first];
        while let Ok(item) = queue.try_recv() {
            let size = item.frame.len() + PER_FRAME_BYTES;
            if bytes + size > max_message_bytes {
                carried = Some(item);
                break;
            }
            bytes += size;
            batch.push(item);
        }
        crate::stats::add(&stats.replica.batches, 1);
        crate::stats::add(&stats.replica.batched_calls, batch.len() as u64);
        tokio::spawn(send_batch(node.clone(), batch));
    }
}

/// Sends one batch to node `node` and hands each caller its answer.
async fn send_batch(node: String, mut batch: Vec<Queued>) {
    let fail = |batch: Vec<Queued>, e: ReplicaError| {
        for item in batch {
            let _ = item.reply.send(Batched::Failed(e.clone()));
        }
    };
    // Callers that gave up are not sent.
    batch.retain(|item| !item.reply.is_closed());
    let Some(deadline) = batch.iter().map(|item| item.deadline).max() else {
        return;
    };
    let Some(member) = ractor::pg::get_members(&replica_group(&node))
        .into_iter()
        .next()
    else {
        return fail(batch, ReplicaError::Unreachable(node));
    };
    let actor: ActorRef<ReplicaMsg> = member.into();
    let frames: Vec<ByteBuf> = batch
        .iter_mut()
        .map(|item| ByteBuf::from(std::mem::take(&mut item.frame)))
        .collect();
    let message = encode(&frames);
    let mut frames = frames;
    let left = deadline.saturating_duration_since(Instant::now());
    let answer = match actor
        .call(|reply| ReplicaMsg::Batch(message, reply), Some(left))
        .await
    {
        Ok(CallResult::Success(answer)) => answer,
        Ok(CallResult::Timeout) => return fail(batch, ReplicaError::Timeout(node)),
        Ok(CallResult::SenderError) | Err(_) => {
            return fail(batch, ReplicaError::Unreachable(node))
        }
    };
    let answers: Vec<Option<ByteBuf>> = match decode(&answer) {
        Ok(answers) => answers,
        Err(e) => return fail(batch, ReplicaError::Garbled(node, e)),
    };
    if answers.len() != batch.len() {
        let e = format!(
            "{} answers to a batch of {} requests",
            answers.len(),
            batch.len()
        );
        return fail(batch, ReplicaError::Garbled(node, e));
    }
    for ((item, answer), frame) in batch.into_iter().zip(answers).zip(frames.drain(..)) {
        let _ = item.reply.send(match answer {
            Some(answer) => Batched::Answer(answer.into_vec()),
            None => Batched::Alone(frame.into_vec()),
        });
    }
}

/// The answer frames of the requests of a batch, in order (`None`: left out, over the
/// message limit), as one encoded frame; `None` if the batch is dropped (its sender is cut
/// off by injected isolation). See the module docs.
pub(crate) async fn serve_batch(
    ctx: &Arc<ReplicaContext>,
    frames: Vec<ByteBuf>,
) -> Option<Vec<u8>> {
    let mut requests = Vec::with_capacity(frames.len());
    for frame in frames {
        match decode::<Envelope>(&frame) {
            Ok(envelope) if ctx.view.is_isolated(&envelope.from) => return None,
            Ok(envelope) => requests.push(Ok(envelope.request)),
            Err(e) => requests.push(Err(ReplicaFailure::Malformed(e))),
        }
    }
    // Every request goes to its vnode in the first poll of its call, before any answer is
    // awaited: the vnodes hand every merge of the batch to the writer together, so they share
    // a commit.
    let answers = futures::future::join_all(requests.into_iter().map(|request| async move {
        match request {
            Ok(request) => request.serve_encoded(ctx, ctx.timeout).await,
            Err(e) => encode(&Err::<(), ReplicaFailure>(e)),
        }
    }))
    .await;
    let mut bytes = 16;
    let answers: Vec<Option<ByteBuf>> = answers
        .into_iter()
        .map(|answer| {
            let size = answer.len() + PER_FRAME_BYTES;
            if bytes + size > ctx.max_message_bytes {
                None
            } else {
                bytes += size;
                Some(ByteBuf::from(answer))
            }
        })
        .collect();
    Some(encode(&answers))
}

/// The answer of a batch none of whose `n` requests could be served now: each is answered
/// [`ReplicaFailure::Overloaded`].
pub(crate) fn overloaded(n: usize, limit: usize) -> Vec<u8> {
    let each = ByteBuf::from(encode(&Err::<(), _>(ReplicaFailure::Overloaded(limit))));
    encode(&vec![Some(each); n])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rpc::{Get, Merge, MerkleChildren, Rpc};
    use crate::sim::SimNetwork;
    use ringkv_cluster::NodeConfig;
    use ringkv_storage::{DvvSet, VersionVector};

    fn b(s: &str) -> ByteBuf {
        ByteBuf::from(s.as_bytes().to_vec())
    }

    fn frame(from: &str, request: impl Rpc) -> ByteBuf {
        ByteBuf::from(encode(&Envelope {
            from: from.into(),
            request: request.into_request(),
        }))
    }

    fn record(value: &[u8]) -> DvvSet {
        let mut d = DvvSet::new();
        d.update(&VersionVector::new(), 7, Some(value.to_vec()), 1, 10)
            .unwrap();
        d
    }

    fn get(key: &str) -> Get {
        Get {
            partition: 1,
            bucket: b("b"),
            key: b(key),
        }
    }

    fn answers(frame: Option<Vec<u8>>) -> Vec<Option<ByteBuf>> {
        decode(&frame.expect("the batch is answered")).unwrap()
    }

    fn answer<T: serde::de::DeserializeOwned>(a: &Option<ByteBuf>) -> Result<T, ReplicaFailure> {
        decode(a.as_ref().expect("an answer")).unwrap()
    }

    /// A simulated network with one node, `n1`, of 4 partitions stored under `dir`.
    async fn one_node(dir: &std::path::Path) -> (SimNetwork, crate::sim::SimPeer) {
        let net = SimNetwork::new();
        let config = NodeConfig {
            data_dir: dir.to_path_buf(),
            partitions: 4,
            initial_map_bytes: 1 << 20,
            ..Default::default()
        };
        let node = net.start_node("n1", config).await.unwrap();
        (net, node)
    }

    #[tokio::test]
    async fn a_batch_gets_one_answer_per_request_in_order_and_drops_isolated_senders() {
        let dir = tempfile::tempdir().unwrap();
        let (net, node) = one_node(dir.path()).await;
        let ctx = crate::rpc::ReplicaTransport::context(&node).clone();
        let merge = |key: &str, value: &[u8]| Merge {
            partition: 1,
            bucket: b("b"),
            key: b(key),
            record: record(value),
            condition: Default::default(),
        };
        let merkle = MerkleChildren {
            partition: 1,
            level: 0,
            parents: vec![0],
        };
        let frames = vec![
            frame("n2", merge("k1", b"one")),
            frame("n2", merge("k2", b"two")),
            ByteBuf::from(b"\x01\xc1".to_vec()),
            frame("n2", merkle),
        ];
        let got = answers(serve_batch(&ctx, frames).await);
        assert_eq!(got.len(), 4);
        assert_eq!(answer::<()>(&got[0]), Ok(()));
        assert_eq!(answer::<()>(&got[1]), Ok(()));
        assert!(matches!(
            answer::<()>(&got[2]),
            Err(ReplicaFailure::Malformed(_))
        ));
        assert_eq!(answer::<Vec<u64>>(&got[3]).map(|h| h.len()), Ok(1));
        // Both merges are durable once answered; reads see them.
        let got =
            answers(serve_batch(&ctx, vec![frame("n2", get("k2")), frame("n2", get("k1"))]).await);
        let values = |a: &Option<ByteBuf>| {
            answer::<Option<DvvSet>>(a)
                .unwrap()
                .map(|d| d.values().map(<[u8]>::to_vec).collect::<Vec<_>>())
        };
        assert_eq!(values(&got[0]), Some(vec![b"two".to_vec()]));
        assert_eq!(values(&got[1]), Some(vec![b"one".to_vec()]));

        ctx.view.set_isolated(["n2".to_string()]);
        assert!(serve_batch(&ctx, vec![frame("n2", get("k1"))])
            .await
            .is_none());
        net.shutdown().await;
    }

    #[tokio::test]
    async fn answers_that_would_pass_the_message_limit_are_left_out_to_go_alone() {
        let dir = tempfile::tempdir().unwrap();
        let (net, node) = one_node(dir.path()).await;
        let full = crate::rpc::ReplicaTransport::context(&node).clone();
        let value = vec![7u8; 3000];
        let merged = answers(
            serve_batch(
                &full,
                vec![frame(
                    "n2",
                    Merge {
                        partition: 1,
                        bucket: b("b"),
                        key: b("big"),
                        record: record(&value),
                        condition: Default::default(),
                    },
                )],
            )
            .await,
        );
        assert_eq!(answer::<()>(&merged[0]), Ok(()));
        // The same node with a message limit that holds one such answer, not two.
        let small = Arc::new(ReplicaContext {
            name: full.name.clone(),
            directory: full.directory.clone(),
            partitions: full.partitions.clone(),
            hints: full.hints.clone(),
            view: full.view.clone(),
            transfers: full.transfers.clone(),
            strong: full.strong.clone(),
            stats: full.stats.clone(),
            fault_injection: false,
            timeout: full.timeout,
            max_message_bytes: 5000,
            max_batch_bytes: full.max_batch_bytes,
            serving: full.serving.clone(),
            in_flight: crate::replica::PeerBudgets::new(10_000),
            senders: PeerSenders::new(10, 5000, full.stats.clone()),
        });
        let got = answers(
            serve_batch(
                &small,
                vec![frame("n2", get("big")), frame("n2", get("big"))],
            )
            .await,
        );
        assert!(got[0].is_some());
        assert_eq!(got[1], None, "left out: its caller sends it alone");
        net.shutdown().await;
    }
}
