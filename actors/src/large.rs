//! Large values on a node: streamed uploads, reads of whole values and of ranges, and the
//! garbage collection of chunks no version refers to.
//!
//! The layout on disk is [`ringkv_storage::large`]'s: a manifest as a sibling value of the
//! key, chunks as records of an internal bucket in the key's partition. This module moves
//! bytes:
//!
//! * **Upload** ([`Node::upload_begin`], [`Node::upload_write`], [`Node::upload_commit`]):
//!   the node that receives the value writes a head record, then each full chunk as its own
//!   write through the coordinator with the key's placement (so `n`, `w`, sloppy quorum and
//!   hinted handoff apply to chunks as to any write), at most [`WINDOW`] chunks at a time,
//!   compressed with the bucket's codec. The commit waits for every chunk, checks the size
//!   and CRC-32, and writes the manifest as the key's new version with the client's context
//!   and condition. Memory per upload: about `WINDOW + 1` chunks.
//! * **Reads** ([`Node::get_meta`], [`Node::get_range`], and [`Node::get`] for values that fit
//!   one answer): the key's record is read with quorum `r` like any get; each chunk needed is
//!   then read from one replica (this node first), decompressed within its length and checked
//!   against the manifest's CRC-32; another replica, then the fallbacks' hints, are tried on a
//!   miss or a mismatch.
//! * **Garbage collection** ([`collect_garbage`], run by the anti-entropy sweep): a version is
//!   garbage when no replica's record of its key refers to it (the value was replaced,
//!   deleted, expired, or never committed) and its head is older than `chunk-grace-ms`. Its
//!   chunk and head records are then deleted by tombstones that dominate them (sent to every
//!   replica; anti-entropy carries them to any replica missed), which the tombstone purge
//!   later removes. Riak CS's block GC with its `leeway_seconds` works the same way.

use crate::coordinator::{coordinate, now_ms, KvError, KvRequest, Placement};
use crate::node::{Node, RequestOptions};
use crate::rpc::{Get, GetHinted, ReplicaTransport};
use ringkv_storage::large::{chunk_bucket, chunk_key, Manifest, VersionId, HEAD_INDEX};
use ringkv_storage::{keys, Codec, Condition, DvvSet, Sibling, StorageError, VersionVector};
use serde_bytes::ByteBuf;
use std::time::{Duration, Instant};
use thiserror::Error;
use tokio::task::JoinSet;

mod gc;
pub use gc::{collect_garbage, GC_SCAN_LIMIT};

/// Chunk writes one upload keeps in flight.
pub const WINDOW: usize = 4;

/// Most bytes one `get_range` answers.
pub const MAX_RANGE_BYTES: usize = 4 << 20;

/// Why a streamed put or a ranged read failed (each has its own protocol error code).
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum StreamError {
    /// `upload_unknown`.
    #[error("no upload {0} is open on this connection: never begun, already committed or aborted, or ended by an earlier error")]
    UnknownUpload(u64),
    /// `upload_gap`.
    #[error("put_chunk seq {got} of upload {upload} is not the next one ({expected}): a repeat, or {window} or more ahead; the upload is ended")]
    Gap {
        /// Upload id.
        upload: u64,
        /// `seq` received.
        got: u64,
        /// `seq` expected.
        expected: u64,
        /// The window.
        window: usize,
    },
    /// `upload_overrun`.
    #[error("the upload sent {len} bytes, over {limit} bytes ({what}); the upload is ended")]
    Overrun {
        /// Bytes sent so far, with this frame's.
        len: u64,
        /// The limit passed.
        limit: u64,
        /// Which limit: `size` or `max-value-bytes`.
        what: &'static str,
    },
    /// `upload_incomplete`.
    #[error(
        "put_commit after {received} of the {size} bytes declared by size; nothing was written"
    )]
    Incomplete {
        /// Bytes received.
        received: u64,
        /// Bytes declared at put_begin.
        size: u64,
    },
    /// `upload_timeout`: idle.
    #[error("upload {upload} received no frame for {idle_ms} ms (upload-idle-ms) and was ended")]
    Idle {
        /// Upload id.
        upload: u64,
        /// The limit, ms.
        idle_ms: u64,
    },
    /// `upload_timeout`: too long in all.
    #[error("the upload ran {ran_ms} ms, over half of chunk-grace-ms ({limit_ms} ms), so its first chunks may already be collected; nothing was written")]
    TooLong {
        /// How long it ran, ms.
        ran_ms: u64,
        /// The limit, ms.
        limit_ms: u64,
    },
    /// `checksum_mismatch`.
    #[error("the value's CRC-32 is {actual:#010x} but put_commit gave {expected:#010x}; nothing was written")]
    Checksum {
        /// CRC-32 the client gave.
        expected: u32,
        /// CRC-32 of the bytes received.
        actual: u32,
    },
    /// `value_too_large`: a put_chunk's data of the wrong length.
    #[error("put_chunk data of {len} bytes: it must hold 1 to {max} bytes (chunk-bytes)")]
    BadChunk {
        /// Length given.
        len: usize,
        /// chunk-bytes.
        max: usize,
    },
    /// `value_too_large`: a get whose answer would not fit in a frame.
    #[error("the key's values are {len} bytes in all, more than one get answer carries ({max} bytes, max-frame-bytes): read large values with get_range (see get with meta)")]
    TooLargeForGet {
        /// Bytes of all values.
        len: u64,
        /// What an answer may carry.
        max: u64,
    },
    /// `not_found`.
    #[error("{0}")]
    NotFound(String),
    /// `siblings`.
    #[error("the key has {0} live versions: name one with version (see get with meta)")]
    Siblings(usize),
    /// `invalid_range`.
    #[error("offset {offset} is past the end of the value ({size} bytes)")]
    InvalidRange {
        /// Offset asked for.
        offset: u64,
        /// Length of the value.
        size: u64,
    },
    /// `quorum_failed`: no replica returned an intact chunk.
    #[error("chunk {index} of the value is on no reachable replica intact (asked: {asked}); anti-entropy repairs a damaged replica, try again later")]
    ChunkUnavailable {
        /// Chunk index.
        index: u32,
        /// Nodes asked.
        asked: String,
    },
}

/// One streamed upload, held by the connection that began it. Dropping it ends the upload:
/// chunk writes still in flight are cancelled and the chunks written are left to garbage
/// collection.
pub struct Upload {
    bucket: Vec<u8>,
    key: Vec<u8>,
    context: Vec<u8>,
    opts: RequestOptions,
    version: VersionId,
    codec: Codec,
    declared: Option<u64>,
    received: u64,
    buf: Vec<u8>,
    next_index: u32,
    crc: crc32fast::Hasher,
    chunk_crcs: Vec<u32>,
    in_flight: JoinSet<Result<(), KvError>>,
    began: Instant,
}

impl Upload {
    /// Bytes accepted so far.
    pub fn received(&self) -> u64 {
        self.received
    }

    /// The key it writes and the options it was begun with.
    pub fn target(&self) -> (&[u8], &[u8], &RequestOptions) {
        (&self.bucket, &self.key, &self.opts)
    }

    /// The version id its manifest will carry.
    pub fn version(&self) -> VersionId {
        self.version
    }
}

/// What a committed upload wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Committed {
    /// Length of the value, bytes.
    pub size: u64,
    /// CRC-32 of the value.
    pub crc32: u32,
    /// Its manifest; `None` when the value was short enough to be stored whole (at most
    /// `chunk-bytes`).
    pub manifest: Option<Manifest>,
    /// The key's state after the write.
    pub state: Option<DvvSet>,
}

/// A value's size and, for a large one, its manifest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ValueInfo {
    /// Length of the value, bytes.
    pub size: u64,
    /// The manifest of a large value (its bytes are in chunks).
    pub manifest: Option<Manifest>,
}

/// A read that describes each value and carries only the small ones ([`Node::get_meta`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FetchedMeta {
    /// The live values, a large one as an empty vector.
    pub values: Vec<Vec<u8>>,
    /// One entry per value.
    pub meta: Vec<ValueInfo>,
    /// Sealed causal context.
    pub context: Vec<u8>,
}

/// What [`Node::get_range`] read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RangeRead {
    /// The bytes from `offset`.
    pub value: Vec<u8>,
    /// Where they start.
    pub offset: u64,
    /// Length of the whole value.
    pub info: ValueInfo,
    /// Sealed causal context of the key.
    pub context: Vec<u8>,
}

/// The live siblings of a state: values (not tombstones) that have not expired.
pub fn live_siblings(d: &DvvSet) -> impl Iterator<Item = &Sibling> {
    let now = now_ms();
    d.siblings.iter().filter(move |s| s.is_live(now))
}

/// Every sibling holding a value, expired ones included: what garbage collection counts as
/// referring to chunks (an expired manifest refers to its chunks until it is purged).
pub(crate) fn value_siblings(d: &DvvSet) -> impl Iterator<Item = &Sibling> {
    d.siblings.iter().filter(|s| s.value.is_some())
}

/// The manifest a sibling holds, if it is a large value's.
pub(crate) fn manifest_of(s: &Sibling) -> Option<Result<Manifest, StorageError>> {
    match (s.codec, s.value.as_deref()) {
        (Codec::Manifest, Some(bytes)) => Some(Manifest::decode(bytes)),
        _ => None,
    }
}

/// True if any live sibling of `d` is a large value.
pub fn has_large(d: &DvvSet) -> bool {
    live_siblings(d).any(|s| s.codec == Codec::Manifest)
}

impl Node {
    /// Begins a streamed upload of a value for `(bucket, key)`: checks the request, writes the
    /// version's head record on `w` nodes, and returns the upload. `size` is the length the
    /// client declared, if any; `context` and `opts` (condition, quorum, time limit of each
    /// chunk write) apply as for [`Node::put`].
    ///
    /// # Errors
    /// As [`Node::put`], and [`StreamError::Overrun`] for a `size` over `max-value-bytes`.
    pub async fn upload_begin(
        &self,
        bucket: &[u8],
        key: &[u8],
        context: &[u8],
        size: Option<u64>,
        opts: &RequestOptions,
    ) -> Result<Upload, KvError> {
        keys::validate(bucket, key)?;
        // Refuse a bad context now rather than after a gigabyte.
        crate::context::open(self.context_key(), context)?;
        let max = self.config().max_value_bytes as u64;
        if let Some(size) = size.filter(|s| *s > max) {
            return Err(StreamError::Overrun {
                len: size,
                limit: max,
                what: "max-value-bytes",
            }
            .into());
        }
        let version: VersionId = rand::random();
        let upload = Upload {
            bucket: bucket.to_vec(),
            key: key.to_vec(),
            context: context.to_vec(),
            opts: opts.clone(),
            version,
            codec: self.bucket_codec(bucket),
            declared: size,
            received: 0,
            buf: Vec::new(),
            next_index: 0,
            crc: crc32fast::Hasher::new(),
            chunk_crcs: Vec::new(),
            in_flight: JoinSet::new(),
            began: Instant::now(),
        };
        // The head names the owner, for the garbage collector; it is written before any chunk
        // so that no chunk is ever found without a way to its key.
        let owner = keys::storage_key(bucket, key)?;
        self.chunk_write(&upload, HEAD_INDEX, owner)?.await?;
        Ok(upload)
    }

    /// Adds the next `data` bytes to an upload: full chunks go to the replicas in the
    /// background; this waits while [`WINDOW`] chunk writes are in flight. Returns the bytes
    /// accepted so far.
    ///
    /// # Errors
    /// [`StreamError::Overrun`]; the error of a chunk write that failed (the upload must then
    /// be dropped).
    pub async fn upload_write(&self, up: &mut Upload, data: &[u8]) -> Result<u64, KvError> {
        let len = up.received + data.len() as u64;
        let max = self.config().max_value_bytes as u64;
        if let Some(size) = up.declared.filter(|s| len > *s) {
            return Err(StreamError::Overrun {
                len,
                limit: size,
                what: "size",
            }
            .into());
        }
        if len > max {
            return Err(StreamError::Overrun {
                len,
                limit: max,
                what: "max-value-bytes",
            }
            .into());
        }
        up.crc.update(data);
        up.received = len;
        let chunk = self.config().chunk_limit();
        let mut rest = data;
        while !rest.is_empty() {
            let take = (chunk - up.buf.len()).min(rest.len());
            up.buf.extend_from_slice(&rest[..take]);
            rest = &rest[take..];
            if up.buf.len() == chunk {
                let full = std::mem::replace(&mut up.buf, Vec::with_capacity(chunk));
                self.send_chunk(up, full).await?;
            }
        }
        Ok(up.received)
    }

    /// Ends an upload: writes the last chunk, waits for every chunk to be on `w` nodes,
    /// checks the length and `crc32` (if the client gave one), and writes the manifest as the
    /// key's new version with the upload's context and condition. Returns the manifest and
    /// the key's state after the write.
    ///
    /// # Errors
    /// [`StreamError::Incomplete`], [`StreamError::Checksum`], [`StreamError::TooLong`], the
    /// error of a chunk write, and the errors of [`Node::put`].
    pub async fn upload_commit(
        &self,
        mut up: Upload,
        crc32: Option<u32>,
    ) -> Result<Committed, KvError> {
        // A value that never filled a chunk is small: it is stored whole in the key's record
        // like any put (its head record becomes garbage and is collected).
        let small = (up.next_index == 0).then(|| std::mem::take(&mut up.buf));
        if !up.buf.is_empty() {
            let last = std::mem::take(&mut up.buf);
            self.send_chunk(&mut up, last).await?;
        }
        while let Some(done) = up.in_flight.join_next().await {
            flatten(done)?;
        }
        if let Some(size) = up.declared.filter(|s| *s != up.received) {
            return Err(StreamError::Incomplete {
                received: up.received,
                size,
            }
            .into());
        }
        let actual = up.crc.clone().finalize();
        if let Some(expected) = crc32.filter(|c| *c != actual) {
            return Err(StreamError::Checksum { expected, actual }.into());
        }
        let limit_ms = self.config().chunk_grace_ms / 2;
        let ran_ms = up.began.elapsed().as_millis() as u64;
        if ran_ms > limit_ms {
            return Err(StreamError::TooLong { ran_ms, limit_ms }.into());
        }
        if let Some(value) = small {
            let state = self
                .update(&up.bucket, &up.key, Some(value), &up.context, &up.opts)
                .await?;
            return Ok(Committed {
                size: up.received,
                crc32: actual,
                manifest: None,
                state,
            });
        }
        let manifest = Manifest {
            version: up.version.to_vec(),
            size: up.received,
            chunk_bytes: self.config().chunk_limit() as u32,
            crc32: actual,
            chunks: std::mem::take(&mut up.chunk_crcs),
        };
        let state = self
            .update_encoded(
                &up.bucket,
                &up.key,
                Some((Codec::Manifest, manifest.encode())),
                &up.context,
                &up.opts,
            )
            .await?;
        Ok(Committed {
            size: up.received,
            crc32: actual,
            manifest: Some(manifest),
            state,
        })
    }

    /// Writes a large value given whole (a single-frame put over `chunk-bytes`): an upload in
    /// one call.
    pub(crate) async fn put_large(
        &self,
        bucket: &[u8],
        key: &[u8],
        value: Vec<u8>,
        context: &[u8],
        opts: &RequestOptions,
    ) -> Result<Option<DvvSet>, KvError> {
        let mut up = self
            .upload_begin(bucket, key, context, Some(value.len() as u64), opts)
            .await?;
        self.upload_write(&mut up, &value).await?;
        drop(value);
        self.upload_commit(up, None).await.map(|c| c.state)
    }

    /// Hands one chunk to a background write, first waiting for room in the window.
    async fn send_chunk(&self, up: &mut Upload, bytes: Vec<u8>) -> Result<(), KvError> {
        while up.in_flight.len() >= WINDOW {
            if let Some(done) = up.in_flight.join_next().await {
                flatten(done)?;
            }
        }
        let index = up.next_index;
        up.next_index += 1;
        up.chunk_crcs.push(ringkv_storage::large::crc32(&bytes));
        let write = self.chunk_write(up, index, bytes)?;
        up.in_flight.spawn(write);
        Ok(())
    }

    /// The write of chunk `index` (or the head) of an upload, as a future that owns all it
    /// needs: compression with the bucket's codec, then the coordinator with the owner key's
    /// placement. The write counts as in flight under its layout version until it ends.
    fn chunk_write(
        &self,
        up: &Upload,
        index: u32,
        bytes: Vec<u8>,
    ) -> Result<impl std::future::Future<Output = Result<(), KvError>> + Send + 'static, KvError>
    {
        let opts = RequestOptions {
            condition: Condition::None,
            local: false,
            ..up.opts.clone()
        };
        let (placements, guard) = self.view().placements_for_write();
        let (placement, timeout) =
            self.placement_in(&placements, true, &up.bucket, &up.key, &opts)?;
        let peers = self.peers().clone();
        let (codec, bucket) = (up.codec, chunk_bucket(&up.bucket));
        let key = chunk_key(&up.version, index).to_vec();
        Ok(async move {
            let _guard = guard;
            let (codec, stored) = crate::node::compress_value(codec, bytes).await;
            let request = KvRequest::Update {
                bucket,
                key,
                context: VersionVector::new(),
                value: Some(stored),
                condition: Condition::None,
                codec,
                // Chunks never expire by themselves: an expired manifest is purged, and its
                // chunks are then collected as unreferenced.
                ttl: None,
            };
            coordinate(request, placement, peers, timeout)
                .await
                .map(|_| ())
        })
    }

    /// Reads `(bucket, key)` like [`Node::get`], but describes each value and carries only the
    /// small ones: large values are read with [`Node::get_range`].
    ///
    /// # Errors
    /// As [`Node::get`].
    pub async fn get_meta(
        &self,
        bucket: &[u8],
        key: &[u8],
        opts: &RequestOptions,
    ) -> Result<FetchedMeta, KvError> {
        let Some(state) = self.read_state(bucket, key, opts).await? else {
            return Ok(FetchedMeta::default());
        };
        let mut out = FetchedMeta {
            context: crate::context::seal(self.context_key(), state.context()),
            ..Default::default()
        };
        for s in live_siblings(&state) {
            match manifest_of(s) {
                Some(m) => {
                    let m = m?;
                    out.values.push(Vec::new());
                    out.meta.push(ValueInfo {
                        size: m.size,
                        manifest: Some(m),
                    });
                }
                None => {
                    let v = self.decode_small(s)?;
                    out.meta.push(ValueInfo {
                        size: v.len() as u64,
                        manifest: None,
                    });
                    out.values.push(v);
                }
            }
        }
        Ok(out)
    }

    /// Reads up to `length` bytes (at most [`MAX_RANGE_BYTES`]) from `offset` of one live
    /// version of `(bucket, key)`: `version` (a large value's id), else the key's only live
    /// value. The key's record is read with quorum `r`; the chunks from one replica each.
    ///
    /// # Errors
    /// [`StreamError::NotFound`], [`StreamError::Siblings`], [`StreamError::InvalidRange`],
    /// [`StreamError::ChunkUnavailable`], and the errors of [`Node::get`].
    pub async fn get_range(
        &self,
        bucket: &[u8],
        key: &[u8],
        version: Option<&[u8]>,
        offset: u64,
        length: Option<u64>,
        opts: &RequestOptions,
    ) -> Result<RangeRead, KvError> {
        let state = self
            .read_state(bucket, key, opts)
            .await?
            .unwrap_or_default();
        let live: Vec<&Sibling> = live_siblings(&state).collect();
        let chosen = match version {
            Some(v) => live
                .iter()
                .find(|s| {
                    manifest_of(s)
                        .and_then(Result::ok)
                        .is_some_and(|m| m.version == v)
                })
                .copied()
                .ok_or_else(|| {
                    StreamError::NotFound(
                        "that version of the key is no longer live (replaced, deleted or expired)"
                            .into(),
                    )
                })?,
            None => match live.as_slice() {
                [] => return Err(StreamError::NotFound("the key holds no value".into()).into()),
                [one] => *one,
                many => return Err(StreamError::Siblings(many.len()).into()),
            },
        };
        let context = crate::context::seal(self.context_key(), state.context());
        let want = length
            .unwrap_or(MAX_RANGE_BYTES as u64)
            .min(MAX_RANGE_BYTES as u64);
        match manifest_of(chosen) {
            None => {
                let v = self.decode_small(chosen)?;
                let size = v.len() as u64;
                if offset > size {
                    return Err(StreamError::InvalidRange { offset, size }.into());
                }
                let end = (offset + want).min(size);
                Ok(RangeRead {
                    value: v[offset as usize..end as usize].to_vec(),
                    offset,
                    info: ValueInfo {
                        size,
                        manifest: None,
                    },
                    context,
                })
            }
            Some(m) => {
                let m = m?;
                if offset > m.size {
                    return Err(StreamError::InvalidRange {
                        offset,
                        size: m.size,
                    }
                    .into());
                }
                let end = (offset + want).min(m.size);
                let value = self.read_large(bucket, key, &m, offset, end, opts).await?;
                Ok(RangeRead {
                    value,
                    offset,
                    info: ValueInfo {
                        size: m.size,
                        manifest: Some(m),
                    },
                    context,
                })
            }
        }
    }

    /// Bytes `start..end` of the large value `m` of `(bucket, key)`, read chunk by chunk (the
    /// chunks of the range at once).
    pub(crate) async fn read_large(
        &self,
        bucket: &[u8],
        key: &[u8],
        m: &Manifest,
        start: u64,
        end: u64,
        opts: &RequestOptions,
    ) -> Result<Vec<u8>, KvError> {
        if start >= end {
            return Ok(Vec::new());
        }
        let (placement, timeout) = self.placement(bucket, key, opts)?;
        let cb = m.chunk_bytes as u64;
        let (first, last) = ((start / cb) as u32, ((end - 1) / cb) as u32);
        let reads = (first..=last).map(|i| self.read_chunk(&placement, bucket, m, i, timeout));
        let chunks = futures::future::try_join_all(reads).await?;
        let mut out = Vec::with_capacity((end - start) as usize);
        for (i, chunk) in (first..=last).zip(chunks) {
            let at = i as u64 * cb;
            let from = start.saturating_sub(at) as usize;
            let to = ((end - at) as usize).min(chunk.len());
            out.extend_from_slice(&chunk[from..to]);
        }
        Ok(out)
    }

    /// Chunk `index` of `m`, from the first replica that holds it intact: this node, the other
    /// reachable replicas, then the hints of the fallbacks.
    async fn read_chunk(
        &self,
        placement: &Placement,
        owner_bucket: &[u8],
        m: &Manifest,
        index: u32,
        timeout: Duration,
    ) -> Result<Vec<u8>, KvError> {
        let peers = self.peers();
        let bucket = ByteBuf::from(chunk_bucket(owner_bucket));
        let key = ByteBuf::from(chunk_key(&m.version_id(), index).to_vec());
        let mut order: Vec<(&String, bool)> =
            placement.replicas.iter().map(|n| (n, false)).collect();
        order.sort_by_key(|(n, _)| (**n != peers.local(), !peers.reachable(n)));
        order.extend(placement.fallbacks.iter().map(|n| (n, true)));
        let expected_len = m.chunk_len(index);
        let expected_crc = m.chunks.get(index as usize).copied();
        let mut asked = Vec::new();
        for (node, hinted) in order {
            if !peers.reachable(node) {
                continue;
            }
            asked.push(node.clone());
            let (partition, bucket, key) = (placement.partition, bucket.clone(), key.clone());
            let answer = if hinted {
                peers
                    .call(
                        node,
                        GetHinted {
                            partition,
                            bucket,
                            key,
                        },
                        timeout,
                    )
                    .await
            } else {
                peers
                    .call(
                        node,
                        Get {
                            partition,
                            bucket,
                            key,
                        },
                        timeout,
                    )
                    .await
            };
            let Ok(Some(record)) = answer else {
                continue;
            };
            for s in live_siblings(&record) {
                let bytes = s.value.as_deref().unwrap_or_default();
                let Ok(raw) = ringkv_storage::codec::decompress(s.codec, bytes, expected_len)
                else {
                    continue;
                };
                if raw.len() == expected_len
                    && Some(ringkv_storage::large::crc32(&raw)) == expected_crc
                {
                    return Ok(raw);
                }
                tracing::warn!(%node, index, "a replica holds a damaged chunk of a large value");
            }
        }
        Err(StreamError::ChunkUnavailable {
            index,
            asked: asked.join(", "),
        }
        .into())
    }

    /// A small value's bytes, decompressed within the record limit.
    fn decode_small(&self, s: &Sibling) -> Result<Vec<u8>, KvError> {
        let bytes = s.value.as_deref().unwrap_or_default();
        Ok(ringkv_storage::codec::decompress(
            s.codec,
            bytes,
            self.config().record_limit(),
        )?)
    }

    /// The values of `state` for a client answer: small ones decompressed, large ones read
    /// whole from their chunks, all of them together at most what one answer carries.
    pub(crate) async fn whole_values(
        &self,
        bucket: &[u8],
        key: &[u8],
        state: &DvvSet,
        opts: &RequestOptions,
    ) -> Result<Vec<Vec<u8>>, KvError> {
        let max = self.config().max_frame_bytes.saturating_sub(64 << 10) as u64;
        let mut total = 0u64;
        let mut plan = Vec::new();
        for s in live_siblings(state) {
            match manifest_of(s) {
                Some(m) => {
                    let m = m?;
                    total += m.size;
                    plan.push(Err(m));
                }
                None => {
                    let v = self.decode_small(s)?;
                    total += v.len() as u64;
                    plan.push(Ok(v));
                }
            }
        }
        if total > max {
            return Err(StreamError::TooLargeForGet { len: total, max }.into());
        }
        let mut out = Vec::with_capacity(plan.len());
        for p in plan {
            out.push(match p {
                Ok(v) => v,
                Err(m) => self.read_large(bucket, key, &m, 0, m.size, opts).await?,
            });
        }
        Ok(out)
    }
}

fn flatten(done: Result<Result<(), KvError>, tokio::task::JoinError>) -> Result<(), KvError> {
    match done {
        Ok(r) => r,
        Err(e) if e.is_cancelled() => Err(KvError::ShuttingDown),
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}
