//! A shopping-cart service that keeps its carts in ringkv through typed actor messages
//! (`ringkv_client::actor::KvRef`), as a Rust service built on ractor would.
//!
//! A `CartService` actor takes `AddItem` and `GetCart` calls. A cart is a set of items, stored
//! one item per line. Concurrent adds to a cart (two service instances, or a write during a
//! node's failure) become siblings; the service resolves them by union, the merge Dynamo's
//! own shopping cart used, and writes the union back with the read's context. An add is
//! retried while the cluster answers with a transient error (a lost node, a timeout, a
//! failed quorum): adding the same item twice is harmless in a set. The actor also watches
//! the ringkv nodes come and go (`KvRef::monitor_nodes`) and counts the events.
//!
//! ```text
//! RINGKV_COOKIE=secret cargo run -p ringkv-api --example cart_service -- \
//!     --nodes 127.0.0.1:7400,127.0.0.2:7400,127.0.0.3:7400 --items 300 --carts 10
//! ```
//!
//! It prints `acked N` once item N is stored, `failed N: ERROR` if it gave up on it, and at
//! the end reads every cart back and prints one JSON line: `{"acked":..,"failed":..,
//! "lost":[..],"nodes_down":..,"nodes_up":..}`. The exit status is 1 if an acknowledged item
//! is missing from its cart.

use clap::Parser;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use ringkv_client::actor::{node_change, ActorClientConfig, KvRef, NodeChange};
use ringkv_client::{CallOptions, ClientError, ErrorCode};
use std::collections::BTreeSet;
use std::time::Duration;

#[derive(Parser)]
struct Args {
    /// The ringkv nodes' actor-listen addresses, comma-separated.
    #[arg(long, value_delimiter = ',')]
    nodes: Vec<String>,
    /// Items to add, spread over the carts.
    #[arg(long, default_value_t = 300)]
    items: usize,
    /// Carts.
    #[arg(long, default_value_t = 10)]
    carts: usize,
    /// Pause between two adds, ms.
    #[arg(long, default_value_t = 10)]
    pace_ms: u64,
    /// The bucket the carts live in.
    #[arg(long, default_value = "carts")]
    bucket: String,
}

/// What the cart actor is asked.
enum CartMsg {
    /// Add an item to a cart; the reply says whether it is stored (durable on the bucket's
    /// write quorum).
    AddItem {
        cart: String,
        item: String,
        reply: RpcReplyPort<Result<(), String>>,
    },
    /// The items of a cart, siblings merged.
    GetCart {
        cart: String,
        reply: RpcReplyPort<Result<BTreeSet<String>, String>>,
    },
    /// How many node-down and node-up events the actor saw.
    NodeEvents(RpcReplyPort<(usize, usize)>),
}

impl ractor::Message for CartMsg {}

struct CartService;

struct CartState {
    kv: KvRef,
    bucket: Vec<u8>,
    down: usize,
    up: usize,
}

/// The union of every sibling's items.
fn merge(values: &[Vec<u8>]) -> BTreeSet<String> {
    values
        .iter()
        .flat_map(|v| {
            String::from_utf8_lossy(v)
                .lines()
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .filter(|l| !l.is_empty())
        .collect()
}

/// True for the errors worth retrying an idempotent add after.
fn transient(e: &ClientError) -> bool {
    match e {
        ClientError::NodeLost { .. } | ClientError::NoAnswer { .. } | ClientError::NoNode(_) => {
            true
        }
        _ => matches!(
            e.error_code(),
            Some(
                ErrorCode::QuorumFailed
                    | ErrorCode::Timeout
                    | ErrorCode::Overloaded
                    | ErrorCode::Unreachable
                    | ErrorCode::ShuttingDown
            )
        ),
    }
}

impl CartState {
    async fn add(&self, cart: &str, item: &str) -> Result<(), String> {
        let opts = CallOptions::default();
        let mut last = String::new();
        for attempt in 0..40u64 {
            let result = async {
                let got = self.kv.get(&self.bucket, cart.as_bytes(), &opts).await?;
                let mut items = merge(&got.values);
                items.insert(item.to_string());
                let value = items.into_iter().collect::<Vec<_>>().join("\n");
                self.kv
                    .put(
                        &self.bucket,
                        cart.as_bytes(),
                        value.into_bytes(),
                        &got.context,
                        &opts,
                    )
                    .await
            }
            .await;
            match result {
                Ok(()) => return Ok(()),
                Err(e) if transient(&e) => {
                    last = e.to_string();
                    tokio::time::sleep(Duration::from_millis(50 * (attempt + 1).min(10))).await;
                }
                Err(e) => return Err(e.to_string()),
            }
        }
        Err(format!("gave up after 40 attempts: {last}"))
    }

    async fn cart(&self, cart: &str) -> Result<BTreeSet<String>, String> {
        let mut last = String::new();
        for _ in 0..40 {
            match self
                .kv
                .get(&self.bucket, cart.as_bytes(), &CallOptions::default())
                .await
            {
                Ok(got) => return Ok(merge(&got.values)),
                Err(e) if transient(&e) => {
                    last = e.to_string();
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => return Err(e.to_string()),
            }
        }
        Err(format!("gave up: {last}"))
    }
}

impl Actor for CartService {
    type Msg = CartMsg;
    type State = CartState;
    type Arguments = (KvRef, Vec<u8>);

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        (kv, bucket): (KvRef, Vec<u8>),
    ) -> Result<Self::State, ActorProcessingErr> {
        // Node failures arrive as supervision events (process-group changes).
        kv.monitor_nodes(myself.get_cell());
        Ok(CartState {
            kv,
            bucket,
            down: 0,
            up: 0,
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            CartMsg::AddItem { cart, item, reply } => {
                let _ = reply.send(state.add(&cart, &item).await);
            }
            CartMsg::GetCart { cart, reply } => {
                let _ = reply.send(state.cart(&cart).await);
            }
            CartMsg::NodeEvents(reply) => {
                let _ = reply.send((state.down, state.up));
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        _myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match node_change(&event) {
            Some(NodeChange::Down(n)) => {
                state.down += 1;
                println!("node event: {n} gateway(s) down");
            }
            Some(NodeChange::Up(n)) => {
                state.up += 1;
                println!("node event: {n} gateway(s) up");
            }
            None => {}
        }
        Ok(())
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let cookie = std::env::var("RINGKV_COOKIE").map_err(|_| "set RINGKV_COOKIE")?;
    let config = ActorClientConfig::new(
        &format!("cart-{}", std::process::id()),
        &cookie,
        args.nodes.clone(),
    );
    let kv = KvRef::connect(config).await?;
    let (cart, _) = Actor::spawn(None, CartService, (kv, args.bucket.into_bytes())).await?;
    let mut acked = Vec::new();
    let mut failed = 0;
    for i in 0..args.items {
        let (c, item) = (format!("cart-{}", i % args.carts), format!("item-{i}"));
        match ractor::call!(cart, |reply| CartMsg::AddItem {
            cart: c.clone(),
            item: item.clone(),
            reply
        })? {
            Ok(()) => {
                println!("acked {i}");
                acked.push((c, item));
            }
            Err(e) => {
                println!("failed {i}: {e}");
                failed += 1;
            }
        }
        tokio::time::sleep(Duration::from_millis(args.pace_ms)).await;
    }
    let mut lost = Vec::new();
    for c in 0..args.carts {
        let name = format!("cart-{c}");
        let items = ractor::call!(cart, |reply| CartMsg::GetCart {
            cart: name.clone(),
            reply
        })??;
        lost.extend(
            acked
                .iter()
                .filter(|(ac, item)| *ac == name && !items.contains(item))
                .map(|(_, item)| item.clone()),
        );
    }
    let (down, up) = ractor::call!(cart, CartMsg::NodeEvents)?;
    println!(
        "{}",
        serde_json::json!({
            "acked": acked.len(),
            "failed": failed,
            "lost": lost,
            "nodes_down": down,
            "nodes_up": up,
        })
    );
    cart.stop(None);
    std::process::exit(if lost.is_empty() { 0 } else { 1 });
}
