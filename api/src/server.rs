//! The client listener: a supervised ClientListener actor that accepts connections, one tokio
//! task per connection, one task per request.
//!
//! A connection's reader decodes frames and starts a task per request, which runs the
//! request on the [`Node`] (a Coordinator per request) and queues the encoded answer for the
//! connection's writer task. The writer writes every queued answer before flushing, so
//! pipelined answers share syscalls. At most `max-in-flight` requests per connection are
//! unanswered at once: past that, the reader waits, which pushes back on the client through
//! TCP.

use crate::protocol::{
    read_frame, write_frames, BucketPropsFrame, ErrorCode, Fault, FrameError, ProtocolError,
    Request, ResponseFrame,
};
use ractor::{Actor, ActorProcessingErr, ActorRef, SupervisionEvent};
use ractor_cluster::RactorMessage;
use ringkv_actors::supervision::RestartBudget;
use ringkv_actors::{KvError, Node};
use ringkv_cluster::membership::{BucketProps, LAYOUT_REPLICAS};
use ringkv_storage::keys::validate_bucket;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, Semaphore};
use tracing::Instrument;

/// The client listener of one node.
pub struct Server {
    listener: std::net::TcpListener,
    node: Arc<Node>,
}

/// What every incarnation of the listener and every connection share.
struct Shared {
    node: Arc<Node>,
    connections: Arc<Semaphore>,
    shutdown: watch::Receiver<bool>,
    /// The running ClientListener, for fault injection.
    current: std::sync::Mutex<Option<ActorRef<ListenerMsg>>>,
}

impl Server {
    /// Binds the node's `listen` address.
    ///
    /// # Errors
    /// The bind error (address in use, permission).
    pub async fn bind(node: Arc<Node>) -> std::io::Result<Server> {
        let listener = std::net::TcpListener::bind(node.config().listen)?;
        listener.set_nonblocking(true)?;
        Ok(Server { listener, node })
    }

    /// The address actually bound (useful with port 0).
    ///
    /// # Errors
    /// As `TcpListener::local_addr`.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` turns true (or its sender is dropped): then stops accepting,
    /// stops reading requests, and waits up to `shutdown-grace-secs` for the answers to the
    /// requests already read.
    ///
    /// The accept loop runs in a ClientListener actor under a ListenerSupervisor that
    /// restarts it within a budget (5 in 10 s) on the same bound socket; open connections
    /// live on across a restart. Returns false if the listener failed past its budget (the
    /// caller should stop the node), true after a requested shutdown.
    pub async fn run(self, shutdown: watch::Receiver<bool>) -> bool {
        let mut stop = shutdown.clone();
        let config = self.node.config().clone();
        let shared = Arc::new(Shared {
            node: self.node.clone(),
            connections: Arc::new(Semaphore::new(config.max_connections)),
            shutdown: shutdown.clone(),
            current: std::sync::Mutex::new(None),
        });
        let spawned = Actor::spawn(
            None,
            ListenerSupervisor,
            ListenerSupervisorArgs {
                listener: Arc::new(self.listener),
                shared: shared.clone(),
                budget: RestartBudget::default(),
            },
        )
        .await;
        let (supervisor, join) = match spawned {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "client listener did not start");
                return false;
            }
        };
        let mut join = std::pin::pin!(join);
        let requested = tokio::select! {
            _ = until_true(&mut stop) => true,
            _ = &mut join => false,
        };
        if requested {
            supervisor.stop(Some("shutdown".into()));
            let _ = join.await;
        } else {
            tracing::error!("the client listener failed past its restart budget");
        }
        let grace = Duration::from_secs(config.shutdown_grace_secs);
        let all = config.max_connections as u32;
        if tokio::time::timeout(grace, shared.connections.acquire_many(all))
            .await
            .is_err()
        {
            tracing::warn!(
                ?grace,
                "connections still busy after the grace period; closing them"
            );
        }
        requested
    }
}

/// Messages of the ClientListener (local only).
#[derive(RactorMessage)]
pub enum ListenerMsg {
    /// Fault injection: panic.
    InjectPanic,
}

/// The accept loop of one incarnation; aborted when the actor's state is dropped (on stop
/// or on a panic).
struct AcceptLoop(tokio::task::JoinHandle<()>);

impl Drop for AcceptLoop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Accepts client connections and starts a task for each.
struct ClientListener;

impl Actor for ClientListener {
    type Msg = ListenerMsg;
    type State = AcceptLoop;
    type Arguments = (Arc<std::net::TcpListener>, Arc<Shared>);

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        (listener, shared): Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        let listener = TcpListener::from_std(listener.try_clone()?)?;
        *shared.current.lock().unwrap_or_else(|p| p.into_inner()) = Some(myself);
        Ok(AcceptLoop(tokio::spawn(accept_loop(listener, shared))))
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        _state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            ListenerMsg::InjectPanic => panic!("client listener: injected panic"),
        }
    }
}

struct ListenerSupervisorArgs {
    listener: Arc<std::net::TcpListener>,
    shared: Arc<Shared>,
    budget: RestartBudget,
}

/// Restarts the ClientListener within its budget, then stops (which stops the node).
struct ListenerSupervisor;

impl Actor for ListenerSupervisor {
    type Msg = ();
    type State = ListenerSupervisorArgs;
    type Arguments = ListenerSupervisorArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: ListenerSupervisorArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        Actor::spawn_linked(
            None,
            ClientListener,
            (args.listener.clone(), args.shared.clone()),
            myself.get_cell(),
        )
        .await?;
        Ok(args)
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let SupervisionEvent::ActorFailed(_, error) = event else {
            return Ok(());
        };
        if !state.budget.allow(std::time::Instant::now()) {
            return Err(format!("client listener failed past its restart budget: {error}").into());
        }
        tracing::warn!(%error, "client listener failed; restarting it");
        state.shared.node.count_restart("listener");
        Actor::spawn_linked(
            None,
            ClientListener,
            (state.listener.clone(), state.shared.clone()),
            myself.get_cell(),
        )
        .await?;
        Ok(())
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let config = shared.node.config().clone();
    let mut stop = shared.shutdown.clone();
    loop {
        tokio::select! {
            _ = until_true(&mut stop) => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    match shared.connections.clone().try_acquire_owned() {
                        Ok(permit) => {
                            let shared = shared.clone();
                            tokio::spawn(async move {
                                serve_connection(stream, shared).await;
                                drop(permit);
                            }.instrument(tracing::debug_span!("connection", %peer)));
                        }
                        Err(_) => {
                            tracing::warn!(%peer, max = config.max_connections, "refusing connection: too many open");
                            tokio::spawn(refuse(stream, config.max_connections));
                        }
                    }
                }
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::error!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
        }
    }
}

/// Resolves once the flag is true (or its sender is gone).
async fn until_true(flag: &mut watch::Receiver<bool>) {
    let _ = flag.wait_for(|s| *s).await;
}

async fn refuse(mut stream: TcpStream, max: usize) {
    let e = ProtocolError::new(
        ErrorCode::TooManyConnections,
        format!("the node has its maximum of {max} connections open (max-connections)"),
    );
    let _ = stream
        .write_all(&ResponseFrame::error(0, &e).encode())
        .await;
    let _ = stream.shutdown().await;
}

async fn serve_connection(stream: TcpStream, shared: Arc<Shared>) {
    let (node, mut shutdown) = (shared.node.clone(), shared.shutdown.clone());
    let config = node.config();
    let (rd, wr) = stream.into_split();
    let mut rd = BufReader::with_capacity(64 << 10, rd);
    let (tx, rx) = mpsc::unbounded_channel::<Vec<u8>>();
    let writer = tokio::spawn(write_frames(wr, rx));
    let max_in_flight = config.max_in_flight;
    let in_flight = Arc::new(Semaphore::new(max_in_flight));
    let mut buf = Vec::new();
    loop {
        let Ok(permit) = in_flight.clone().acquire_owned().await else {
            break;
        };
        let frame = tokio::select! {
            _ = until_true(&mut shutdown) => break,
            frame = read_frame(&mut rd, &mut buf, config.max_frame_bytes) => frame,
        };
        match frame {
            Ok(true) => {}
            Ok(false) => break,
            Err(FrameError::TooLarge { len, max }) => {
                tracing::debug!(len, max, "frame too large; closing connection");
                let e = ProtocolError::new(
                    ErrorCode::FrameTooLarge,
                    format!("frame of {len} bytes is over the maximum of {max} bytes (max-frame-bytes); closing the connection"),
                );
                let _ = tx.send(ResponseFrame::error(0, &e).encode());
                break;
            }
            Err(e) => {
                tracing::debug!(error = %e, "connection ended");
                break;
            }
        }
        match Request::decode(&buf) {
            Ok((id, Request::Ping)) => {
                let _ = tx.send(ResponseFrame::ok(id).encode());
            }
            Ok((id, Request::InjectFault(Fault::PanicActor(actor)))) if actor == "listener" => {
                let answer = if !config.fault_injection {
                    ResponseFrame::error(
                        id,
                        &ProtocolError::from(ringkv_actors::KvError::FaultInjectionDisabled),
                    )
                } else {
                    let current = shared
                        .current
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .clone();
                    if let Some(l) = current {
                        let _ = l.send_message(ListenerMsg::InjectPanic);
                    }
                    ResponseFrame::ok(id)
                };
                let _ = tx.send(answer.encode());
            }
            Ok((id, request)) => {
                let node = node.clone();
                let tx = tx.clone();
                tokio::spawn(async move {
                    let answer = execute(&node, id, request).await;
                    let _ = tx.send(answer.encode());
                    drop(permit);
                });
            }
            Err((id, e)) => {
                let _ = tx.send(ResponseFrame::error(id, &e).encode());
            }
        }
    }
    // Wait for the answers to every request already read, then let the writer finish.
    let _ = in_flight.acquire_many(max_in_flight as u32).await;
    drop(tx);
    let _ = writer.await;
}

fn info<T: serde::Serialize>(id: u64, value: &T) -> ResponseFrame {
    ResponseFrame {
        info: Some(serde_json::to_value(value).unwrap_or(serde_json::Value::Null)),
        ..ResponseFrame::ok(id)
    }
}

/// What `cluster plan` and `cluster commit` answer: the version, the moves, and each node's
/// replica count in the new layout.
fn plan_summary(plan: &ringkv_cluster::membership::Plan) -> serde_json::Value {
    serde_json::json!({
        "version": plan.version,
        "moved": plan.moved,
        "joining": plan.joining,
        "leaving": plan.leaving,
        "replicas_per_node": plan.layout.replicas_by_name(),
    })
}

/// `current` with the fields `bucket_set` gave changed. `n`, `r` and `w` arrive as any
/// unsigned integer; [`Node::set_bucket_props`] checks the rule on the result.
///
/// # Errors
/// [`KvError::BadQuorum`] for a quorum field too large to be stored at all.
fn merged_props(mut current: BucketProps, new: &BucketPropsFrame) -> Result<BucketProps, KvError> {
    let rule = format!("1 <= r, w <= n <= {LAYOUT_REPLICAS}");
    let quorum = |field: &str, new: Option<u64>, old: u8| match new {
        None => Ok(old),
        Some(q) => u8::try_from(q).map_err(|_| {
            KvError::BadQuorum(format!(
                "bucket properties must satisfy {rule}, not {field}={q}"
            ))
        }),
    };
    current.n = quorum("n", new.n, current.n)?;
    current.r = quorum("r", new.r, current.r)?;
    current.w = quorum("w", new.w, current.w)?;
    current.timeout_ms = new.timeout_ms.unwrap_or(current.timeout_ms);
    current.sloppy_quorum = new.sloppy_quorum.unwrap_or(current.sloppy_quorum);
    Ok(current)
}

/// Runs one request on the node and builds its answer.
pub async fn execute(node: &Node, id: u64, request: Request) -> ResponseFrame {
    let result = match request {
        Request::Ping => Ok(ResponseFrame::ok(id)),
        Request::Get { bucket, key, opts } => node
            .get(&bucket, &key, &opts)
            .await
            .map(|f| ResponseFrame::fetched(id, f)),
        Request::Put {
            bucket,
            key,
            value,
            context,
            return_body,
            opts,
        } => node
            .put(&bucket, &key, value, &context, &opts)
            .await
            .map(|f| {
                if return_body {
                    ResponseFrame::fetched(id, f)
                } else {
                    ResponseFrame::ok(id)
                }
            }),
        Request::ClusterStatus => Ok(info(id, &node.cluster_status())),
        Request::ClusterPlan => node.cluster_plan().map(|p| info(id, &plan_summary(&p))),
        Request::ClusterCommit => node.cluster_commit().map(|p| info(id, &plan_summary(&p))),
        Request::ClusterLeave { node: name } => {
            node.cluster_leave(&name).map(|()| ResponseFrame::ok(id))
        }
        Request::BucketGet { bucket } => validate_bucket(&bucket)
            .map_err(KvError::from)
            .map(|()| info(id, &node.bucket_props(&bucket))),
        Request::BucketSet { bucket, props } => validate_bucket(&bucket)
            .map_err(KvError::from)
            .and_then(|()| merged_props(node.bucket_props(&bucket), &props))
            .and_then(|p| node.set_bucket_props(&bucket, p).map(|()| p))
            .map(|p| info(id, &p)),
        Request::InjectFault(Fault::PanicVnode { bucket, key }) => node
            .inject_vnode_panic(&bucket, &key)
            .map(|_| ResponseFrame::ok(id)),
        Request::InjectFault(Fault::PanicActor(actor)) => node
            .inject_actor_panic(&actor)
            .await
            .map(|()| ResponseFrame::ok(id)),
        Request::InjectFault(Fault::Isolate(peers)) => {
            node.inject_isolation(peers).map(|()| ResponseFrame::ok(id))
        }
        Request::Delete {
            bucket,
            key,
            context,
            opts,
        } => node
            .delete(&bucket, &key, &context, &opts)
            .await
            .map(|()| ResponseFrame::ok(id)),
    };
    result.unwrap_or_else(|e| ResponseFrame::error(id, &ProtocolError::from(e)))
}
