//! How one partition moves: the transfer task's durable progress in the system store, and
//! its pipeline (stream the source's keys in chunks from where it stopped, merge them, then
//! verify the Merkle roots), throttled by a token bucket (`transfer-max-bytes-per-sec`).

use super::*;

/// A transfer's durable progress, under `transfer/{version}/{partition}` in the system
/// store: `[version 1][tag][bytes: u64 BE][keys: u64 BE][position]`, tag 0 streaming (the
/// position to resume after; empty: from the start), 1 streamed (verification left), 2 done.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Progress {
    Streaming {
        after: Option<Vec<u8>>,
        bytes: u64,
        keys: u64,
    },
    Streamed {
        bytes: u64,
        keys: u64,
    },
    Done {
        bytes: u64,
        keys: u64,
    },
}

impl Progress {
    pub(super) fn counts(&self) -> (u64, u64) {
        match self {
            Progress::Streaming { bytes, keys, .. }
            | Progress::Streamed { bytes, keys }
            | Progress::Done { bytes, keys } => (*bytes, *keys),
        }
    }

    pub(super) fn encode(&self) -> Vec<u8> {
        let (tag, after) = match self {
            Progress::Streaming { after, .. } => (0u8, after.as_deref().unwrap_or_default()),
            Progress::Streamed { .. } => (1, &[][..]),
            Progress::Done { .. } => (2, &[][..]),
        };
        let (bytes, keys) = self.counts();
        let mut out = Vec::with_capacity(18 + after.len());
        out.push(PROGRESS_V1);
        out.push(tag);
        out.extend_from_slice(&bytes.to_be_bytes());
        out.extend_from_slice(&keys.to_be_bytes());
        out.extend_from_slice(after);
        out
    }

    pub(super) fn decode(b: &[u8]) -> Result<Self, StorageError> {
        let corrupt =
            || StorageError::Corrupt(format!("a transfer progress record of {} bytes", b.len()));
        if b.len() < 18 || b[0] != PROGRESS_V1 {
            return Err(corrupt());
        }
        let bytes = u64::from_be_bytes(b[2..10].try_into().map_err(|_| corrupt())?);
        let keys = u64::from_be_bytes(b[10..18].try_into().map_err(|_| corrupt())?);
        let after = &b[18..];
        match b[1] {
            0 => Ok(Progress::Streaming {
                after: (!after.is_empty()).then(|| after.to_vec()),
                bytes,
                keys,
            }),
            1 => Ok(Progress::Streamed { bytes, keys }),
            2 => Ok(Progress::Done { bytes, keys }),
            _ => Err(corrupt()),
        }
    }
}

/// The system store key of a task's progress.
pub fn progress_key(version: u64, partition: u32) -> String {
    format!("transfer/{version}/{partition}")
}

/// The progress of a task (from the start if none is recorded; a record that does not
/// decode is logged and the task starts over, which only costs time).
pub(super) fn load(system: &SystemStore, name: &str) -> Result<Progress, StorageError> {
    let fresh = Progress::Streaming {
        after: None,
        bytes: 0,
        keys: 0,
    };
    match system.get_meta(name)? {
        None => Ok(fresh),
        Some(b) => Ok(Progress::decode(&b).unwrap_or_else(|e| {
            tracing::warn!(key = name, error = %e, "transfer progress does not decode; starting over");
            fresh
        })),
    }
}

/// Persists a task's progress (one durable commit of the system env), off the tokio workers.
pub(super) async fn save(
    shared: &Shared<impl Send + Sync>,
    version: u64,
    partition: u32,
    progress: &Progress,
) -> Result<(), String> {
    let (system, name, value) = (
        shared.system.clone(),
        progress_key(version, partition),
        progress.encode(),
    );
    blocking(move || system.put_meta(&name, &value))
        .await
        .map_err(|e| format!("persisting the transfer's progress: {e}"))
}

/// One run of a task: stream what is left, verify, mark done. `Err` says why it stopped.
pub(super) async fn run_task<T: ReplicaTransport>(
    shared: &Shared<T>,
    version: u64,
    partition: u32,
    sources: &Mutex<Vec<String>>,
    row: &Mutex<TransferRow>,
) -> Result<(), String> {
    let system = shared.system.clone();
    let name = progress_key(version, partition);
    let mut progress = blocking(move || load(&system, &name))
        .await
        .map_err(|e| format!("reading the transfer's progress: {e}"))?;
    let candidates = || -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for s in lock(sources).iter() {
            if s != shared.peers.local() && !out.contains(s) {
                out.push(s.clone());
            }
        }
        out
    };
    if matches!(progress, Progress::Streaming { .. }) {
        progress = stream(shared, version, partition, progress, &candidates(), row).await?;
    }
    if matches!(progress, Progress::Streamed { .. }) {
        lock(row).state = TransferState::Verifying;
        verify(shared, partition, &candidates(), row).await?;
        // Strong buckets' keys move by Paxos rounds, from a majority (crate::strong).
        let carried = crate::strong::carry_over(&shared.peers, partition).await?;
        if carried > 0 {
            tracing::info!(
                version,
                partition,
                keys = carried,
                "carried strong keys over to the new replica set"
            );
        }
        let (bytes, keys) = progress.counts();
        progress = Progress::Done { bytes, keys };
        save(shared, version, partition, &progress).await?;
        tracing::info!(
            version,
            partition,
            bytes,
            keys,
            "partition transfer streamed and verified"
        );
    }
    Ok(())
}

/// Streams the rest of the partition from the first source that can, switching to the next
/// one when a source fails, from the same position; returns the streamed progress.
pub(super) async fn stream<T: ReplicaTransport>(
    shared: &Shared<T>,
    version: u64,
    partition: u32,
    mut progress: Progress,
    sources: &[String],
    row: &Mutex<TransferRow>,
) -> Result<Progress, String> {
    let counters = shared.handle.counters();
    let mut errors: Vec<String> = Vec::new();
    for source in sources {
        if !shared.peers.reachable(source) {
            errors.push(format!("{source} is unreachable"));
            continue;
        }
        {
            let mut r = lock(row);
            r.from = source.clone();
            r.state = TransferState::Streaming;
        }
        if let Ok(stats) = shared
            .peers
            .call(source, rpc::Stats { partition }, CALL_TIMEOUT)
            .await
        {
            lock(row).bytes_total = stats.bytes;
        }
        tracing::info!(version, partition, %source, "streaming a partition");
        // The chunk fetched while the previous one was being merged (at most one).
        let mut prefetched: Option<rpc::Chunk> = None;
        loop {
            let Progress::Streaming { after, bytes, keys } = &progress else {
                return Ok(progress);
            };
            let (bytes, keys) = (*bytes, *keys);
            let chunk = match prefetched.take() {
                Some(chunk) => chunk,
                None => match fetch(shared, source, partition, after.clone()).await {
                    Ok(chunk) => chunk,
                    Err(e) => {
                        tracing::warn!(version, partition, %source, error = %e, "a transfer source failed; trying the next one");
                        errors.push(e.to_string());
                        break;
                    }
                },
            };
            let n = chunk.entries.len() as u64;
            counters.chunks.fetch_add(1, Ordering::Relaxed);
            counters.keys.fetch_add(n, Ordering::Relaxed);
            counters.bytes.fetch_add(chunk.bytes, Ordering::Relaxed);
            // The throttle: every chunk's bytes come out of the node's one bucket.
            shared.bucket.take(chunk.bytes).await;
            let next = chunk.next.clone().map(serde_bytes::ByteBuf::into_vec);
            let entries: Vec<(Vec<u8>, DvvSet)> = chunk
                .entries
                .into_iter()
                .map(|(k, r)| (k.into_vec(), r))
                .collect();
            // Merge this chunk while the next one is fetched (the source scans and encodes
            // while this node commits).
            let ahead = async {
                match &next {
                    Some(pos) => Some(fetch(shared, source, partition, Some(pos.clone())).await),
                    None => None,
                }
            };
            let (merged, ahead) = tokio::join!(merge(shared, partition, entries), ahead);
            merged?;
            let (bytes, keys) = (bytes + chunk.bytes, keys + n);
            // Merged durably: only now does the resume point move past it.
            progress = match next {
                Some(next) => Progress::Streaming {
                    after: Some(next),
                    bytes,
                    keys,
                },
                None => Progress::Streamed { bytes, keys },
            };
            save(shared, version, partition, &progress).await?;
            {
                let mut r = lock(row);
                r.bytes_sent = bytes;
                r.keys = keys;
            }
            match ahead {
                Some(Ok(chunk)) => prefetched = Some(chunk),
                Some(Err(e)) => {
                    tracing::warn!(version, partition, %source, error = %e, "a transfer source failed; trying the next one");
                    errors.push(e.to_string());
                    break;
                }
                None => {}
            }
        }
    }
    if errors.is_empty() {
        errors.push("no source named".into());
    }
    Err(format!(
        "no source could stream the partition: {}",
        errors.join("; ")
    ))
}

/// Asks `source` for the chunk of `partition` after `after`.
pub(super) async fn fetch<T: ReplicaTransport>(
    shared: &Shared<T>,
    source: &str,
    partition: u32,
    after: Option<Vec<u8>>,
) -> Result<rpc::Chunk, rpc::ReplicaError> {
    let request = rpc::ScanChunk {
        partition,
        after: after.map(serde_bytes::ByteBuf::from),
        max_bytes: shared.chunk_bytes,
    };
    shared.peers.call(source, request, CALL_TIMEOUT).await
}

/// Merges a chunk's records into the local vnode of `partition`, durably (one group commit
/// per `max-batch` records).
pub(super) async fn merge<T: ReplicaTransport>(
    shared: &Shared<T>,
    partition: u32,
    entries: Vec<(Vec<u8>, DvvSet)>,
) -> Result<(), String> {
    if entries.is_empty() {
        return Ok(());
    }
    let directory = &shared.peers.context().directory;
    vnode_call(directory, partition, CALL_TIMEOUT, |reply| {
        VNodeMsg::MergeMany {
            entries: entries.clone(),
            reply,
        }
    })
    .await
    .map(|_| ())
    .map_err(|e| format!("merging a chunk here: {e}"))
}

/// Merkle exchanges with every reachable source; verified once a majority of the sources
/// exchanged successfully. Each exchange repairs what differed on either side at that moment,
/// so afterwards this node holds every key those sources held then, and writes made since
/// reach it through the coordinator (the old and new replica sets are both written during the
/// transition). A majority is what makes that complete: a write acknowledged under the old
/// layout is on at least `w` of its replicas, and with `w >= 2` of 3 any two sources include
/// one of them, so one dead old replica (a node being replaced) does not hold the transfer
/// while two would (Cassandra's consistent range movement: never trust one arbitrary replica).
/// Differing keys under a running workload are expected (writes in flight) and only counted.
pub(super) async fn verify<T: ReplicaTransport>(
    shared: &Shared<T>,
    partition: u32,
    sources: &[String],
    row: &Mutex<TransferRow>,
) -> Result<(), String> {
    let needed = sources.len() / 2 + 1;
    let (mut ran, mut differing) = (0, 0);
    let mut errors = Vec::new();
    for source in sources {
        if !shared.peers.reachable(source) {
            errors.push(format!("{source}: unreachable"));
            continue;
        }
        lock(row).from = source.clone();
        shared
            .handle
            .counters()
            .exchanges
            .fetch_add(1, Ordering::Relaxed);
        match repair::exchange_scoped(&shared.peers, partition, source, ExchangeScope::AllKeys)
            .await
        {
            Ok(report) => {
                ran += 1;
                differing += report.differing;
                if report.differing > 0 {
                    tracing::info!(partition, %source, differing = report.differing, repaired = report.repaired, "transfer verification repaired keys");
                }
            }
            Err(e) => errors.push(format!("{source}: {e}")),
        }
    }
    if ran >= needed {
        tracing::debug!(partition, exchanges = ran, differing, "transfer verified");
        return Ok(());
    }
    Err(format!(
        "verified against {ran} of {} sources, a majority ({needed}) is needed: {}",
        sources.len(),
        errors.join("; ")
    ))
}

/// A token bucket over bytes: `take(n)` removes `n` tokens, going into debt if it must, and
/// waits until the debt is paid back at `rate` bytes per second. It holds at most a tenth of
/// a second's worth (bursts), and starts full.
pub(super) struct TokenBucket {
    rate: f64,
    capacity: f64,
    state: Mutex<(f64, tokio::time::Instant)>,
}

impl TokenBucket {
    pub(super) fn new(rate: u64) -> Self {
        let rate = rate.max(1) as f64;
        let capacity = rate / 10.0;
        Self {
            rate,
            capacity,
            state: Mutex::new((capacity, tokio::time::Instant::now())),
        }
    }

    pub(super) async fn take(&self, n: u64) {
        let wait = {
            let mut s = lock(&self.state);
            let now = tokio::time::Instant::now();
            let refill = now.duration_since(s.1).as_secs_f64() * self.rate;
            s.0 = (s.0 + refill).min(self.capacity) - n as f64;
            s.1 = now;
            (s.0 < 0.0).then(|| Duration::from_secs_f64(-s.0 / self.rate))
        };
        if let Some(wait) = wait {
            tokio::time::sleep(wait).await;
        }
    }
}
