//! The replica operations of strong buckets: Paxos steps on a key's acceptor state, their
//! reads, the keys a layout change carries over, forwarding to the key's proposer, and the
//! check that a bucket about to become strong holds no data (see [`crate::strong`]).

use super::*;

/// An acceptor's answer, or its refusal to take part because the proposer's layout is older
/// than its own: a proposer that has not learnt the newest layout may not pick replica sets
/// (see [`crate::strong`], "Membership changes").
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Fenced<T> {
    /// The answer.
    Ok(T),
    /// Refused: the acceptor's newest layout version is this one, above the proposer's.
    StaleLayout(u64),
}

/// Refuses a strong-bucket request made under layout version `layout` if this node knows a
/// newer one.
fn fence(ctx: &ReplicaContext, layout: u64) -> Option<u64> {
    let newest = ctx.view.read().layout_version();
    (newest > layout).then_some(newest)
}

/// A Paxos step (prepare or accept) on the acceptor state of a key of a strong bucket
/// ([`ringkv_storage::paxos`]), answered once durable.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Paxos {
    /// Partition of the key.
    pub partition: u32,
    /// Bucket.
    pub bucket: ByteBuf,
    /// Key.
    pub key: ByteBuf,
    /// The step.
    pub step: ringkv_storage::paxos::PaxosStep,
    /// Newest layout version the proposer knows.
    pub layout: u64,
}

impl Rpc for Paxos {
    const BATCHED: bool = true;
    type Response = Fenced<ringkv_storage::paxos::PaxosAnswer>;

    fn into_request(self) -> ReplicaRequest {
        ReplicaRequest::Paxos(self)
    }

    async fn serve(
        self,
        ctx: &Arc<ReplicaContext>,
        timeout: Duration,
    ) -> Result<Self::Response, ReplicaFailure> {
        if let Some(newest) = fence(ctx, self.layout) {
            return Ok(Fenced::StaleLayout(newest));
        }
        let key = ringkv_storage::keys::storage_key(&self.bucket, &self.key)?;
        replica::vnode_call(&ctx.directory, self.partition, timeout, |reply| {
            VNodeMsg::PaxosStep {
                key: key.clone(),
                step: self.step.clone(),
                reply,
            }
        })
        .await
        .map(Fenced::Ok)
    }
}

/// A key of a strong bucket: its acceptor state as last committed, without changing it
/// (the first step of a one-round-trip read, [`crate::strong`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaxosRead {
    /// Partition of the key.
    pub partition: u32,
    /// Bucket.
    pub bucket: ByteBuf,
    /// Key.
    pub key: ByteBuf,
    /// Newest layout version the proposer knows.
    pub layout: u64,
}

impl Rpc for PaxosRead {
    const BATCHED: bool = true;
    type Response = Fenced<Option<ringkv_storage::paxos::AcceptorState>>;

    fn into_request(self) -> ReplicaRequest {
        ReplicaRequest::PaxosRead(self)
    }

    async fn serve(
        self,
        ctx: &Arc<ReplicaContext>,
        timeout: Duration,
    ) -> Result<Self::Response, ReplicaFailure> {
        if let Some(newest) = fence(ctx, self.layout) {
            return Ok(Fenced::StaleLayout(newest));
        }
        let key = ringkv_storage::keys::storage_key(&self.bucket, &self.key)?;
        replica::vnode_call(&ctx.directory, self.partition, timeout, |reply| {
            VNodeMsg::PaxosState {
                key: key.clone(),
                reply,
            }
        })
        .await
        .map(Fenced::Ok)
    }
}

/// Up to `max` stored keys (`[bucket length][bucket][key]`) of `partition` that have an
/// acceptor state on this node, strictly after `after`: how a layout change lists the strong
/// keys it must carry over ([`crate::strong::carry_over`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaxosKeys {
    /// Partition.
    pub partition: u32,
    /// Last key of the previous page.
    pub after: Option<ByteBuf>,
    /// Most keys to answer.
    pub max: u32,
}

impl Rpc for PaxosKeys {
    type Response = Vec<ByteBuf>;

    fn into_request(self) -> ReplicaRequest {
        ReplicaRequest::PaxosKeys(self)
    }

    async fn serve(
        self,
        ctx: &Arc<ReplicaContext>,
        timeout: Duration,
    ) -> Result<Self::Response, ReplicaFailure> {
        let after = self.after.map(ByteBuf::into_vec);
        let max = self.max as usize;
        replica::vnode_call(&ctx.directory, self.partition, timeout, |reply| {
            VNodeMsg::PaxosKeys {
                after: after.clone(),
                max,
                reply,
            }
        })
        .await
        .map(|keys| keys.into_iter().map(ByteBuf::from).collect())
    }
}

/// A strong-bucket operation forwarded to the node that proposes for the key (the first
/// reachable replica of its preference list, [`crate::strong`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StrongRequest {
    /// Bucket.
    pub bucket: ByteBuf,
    /// Key.
    pub key: ByteBuf,
    /// The operation.
    pub op: crate::strong::StrongOp,
    /// Replicas per key (the bucket's or the request's `n`).
    pub n: u8,
    /// Time the proposer may take, ms.
    pub timeout_ms: u64,
}

impl Rpc for StrongRequest {
    type Response = Result<crate::strong::StrongReply, crate::strong::StrongError>;

    fn into_request(self) -> ReplicaRequest {
        ReplicaRequest::Strong(self)
    }

    async fn serve(
        self,
        ctx: &Arc<ReplicaContext>,
        timeout: Duration,
    ) -> Result<Self::Response, ReplicaFailure> {
        let _ = timeout;
        Ok(crate::strong::serve_forwarded(ctx, self).await)
    }
}

/// Whether this node stores any key of `bucket` (a scan of every partition it holds, on a
/// blocking thread): `bucket set consistency=strong` is refused when a node does.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HoldsBucket {
    /// Bucket.
    pub bucket: ByteBuf,
}

impl Rpc for HoldsBucket {
    type Response = bool;

    fn into_request(self) -> ReplicaRequest {
        ReplicaRequest::HoldsBucket(self)
    }

    async fn serve(
        self,
        ctx: &Arc<ReplicaContext>,
        timeout: Duration,
    ) -> Result<bool, ReplicaFailure> {
        let _ = timeout;
        let partitions = ctx.partitions.clone();
        let bucket = self.bucket.into_vec();
        replica::blocking(move || {
            for p in &partitions {
                if p.holds_bucket(&bucket)? {
                    return Ok(true);
                }
            }
            Ok(false)
        })
        .await
        .map_err(ReplicaFailure::Storage)
    }
}
