//! Dotted version vectors with siblings (a "DVV set").
//!
//! The model follows Preguiça, Baquero, Almeida et al., *Dotted Version Vectors: Logical Clocks
//! for Optimistic Replication* (2010) and Almeida et al., *Scalable and Accurate Causality
//! Tracking for Eventually Consistent Stores* (DAIS 2014), in the compact form Riak's `dvvset`
//! and the "optimized multi-value register" use:
//!
//! * a key's state is a [`DvvSet`]: one causal **clock** (a [`VersionVector`] that summarises
//!   every write the state has seen) and a list of **siblings**, each a value tagged with the
//!   unique [`Dot`] (replica, counter) of the write that produced it;
//! * invariant: every sibling's dot is covered by the clock;
//! * a write at replica `a` with the client's context `ctx` (the clock of what the client read)
//!   drops every sibling whose dot `ctx` covers, adds the new value under the dot
//!   `(a, max(clock[a], ctx[a]) + 1)`, and joins `ctx` and that dot into the clock
//!   ([`DvvSet::update`]);
//! * two states are merged ([`DvvSet::sync`]) by keeping a sibling when both sides hold it or
//!   when the other side has not seen its dot; clocks are joined pointwise. The merge is
//!   commutative, associative and idempotent, so replicas converge whatever the order of
//!   delivery.
//!
//! Deletes are siblings without a value (tombstones), so a delete is ordered against concurrent
//! writes exactly like any other write.
//!
//! **Time to live.** A sibling may carry an absolute expiry ([`Sibling::expires_at_ms`], the
//! coordinating node's wall clock at the write plus the client's `ttl_ms`). An expired sibling
//! stays in the state like any other, so merges, hints, anti-entropy and transfers carry it
//! and the clock still covers it; readers leave it out ([`DvvSet::live_values`],
//! [`DvvSet::decoded_values`]), so it reads as missing. Because the expiry is absolute, a copy
//! that comes back from a replica that missed its purge is still expired. Expiry never takes
//! part in causality: the merge is unchanged.

use crate::codec::{self, Codec};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Identity of a replica that creates dots. In ringkv it is a node *incarnation* id: a random
/// 64-bit number made when a node's data directory is created, so that a node whose data was
/// wiped never reuses the dots of its former self.
pub type ReplicaId = u64;

/// The unique name of one write: the replica that coordinated it and that replica's counter
/// for the key (1-based).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Dot {
    /// Replica that created the dot.
    pub replica: ReplicaId,
    /// Per-key, per-replica counter, starting at 1.
    pub counter: u64,
}

/// A version vector: for each replica, the highest counter whose writes (all of `1..=counter`)
/// have been seen. Replicas absent from the map count as 0.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct VersionVector(BTreeMap<ReplicaId, u64>);

impl VersionVector {
    /// The empty vector: has seen nothing.
    pub fn new() -> Self {
        Self::default()
    }

    /// Counter seen for `replica` (0 if none).
    pub fn get(&self, replica: ReplicaId) -> u64 {
        self.0.get(&replica).copied().unwrap_or(0)
    }

    /// True if the write named by `dot` is covered (has been seen).
    pub fn contains(&self, dot: &Dot) -> bool {
        self.get(dot.replica) >= dot.counter
    }

    /// Records that `dot` (and so all earlier dots of its replica) has been seen.
    pub fn add(&mut self, dot: Dot) {
        let entry = self.0.entry(dot.replica).or_insert(0);
        if *entry < dot.counter {
            *entry = dot.counter;
        }
    }

    /// Pointwise maximum (least upper bound) with `other`.
    pub fn merge(&mut self, other: &VersionVector) {
        for (&replica, &counter) in &other.0 {
            self.add(Dot { replica, counter });
        }
    }

    /// True if `self` has seen everything `other` has (`self >= other` pointwise).
    /// Equal vectors descend each other.
    pub fn descends(&self, other: &VersionVector) -> bool {
        other.0.iter().all(|(&r, &c)| self.get(r) >= c)
    }

    /// True if neither vector descends the other.
    pub fn concurrent(&self, other: &VersionVector) -> bool {
        !self.descends(other) && !other.descends(self)
    }

    /// True if nothing has been seen.
    pub fn is_empty(&self) -> bool {
        self.0.values().all(|&c| c == 0)
    }

    /// `(replica, counter)` entries in replica order.
    pub fn iter(&self) -> impl Iterator<Item = (ReplicaId, u64)> + '_ {
        self.0.iter().map(|(&r, &c)| (r, c))
    }

    /// Encodes the vector as an opaque causal context for clients: msgpack of the
    /// `(replica, counter)` pairs. See [`VersionVector::from_context`].
    pub fn to_context(&self) -> Vec<u8> {
        if self.is_empty() {
            return Vec::new();
        }
        let pairs: Vec<(u64, u64)> = self.iter().collect();
        rmp_serde::to_vec(&pairs).expect("encoding a vector of integer pairs cannot fail")
    }

    /// Decodes a context made by [`VersionVector::to_context`]. An empty slice is the empty
    /// vector.
    ///
    /// # Errors
    /// [`crate::StorageError::BadContext`] if the bytes are not such a context.
    pub fn from_context(bytes: &[u8]) -> Result<Self, crate::StorageError> {
        if bytes.is_empty() {
            return Ok(Self::new());
        }
        let pairs: Vec<(u64, u64)> = rmp_serde::from_slice(bytes)
            .map_err(|e| crate::StorageError::BadContext(e.to_string()))?;
        let mut vv = Self::new();
        for (replica, counter) in pairs {
            vv.add(Dot { replica, counter });
        }
        Ok(vv)
    }
}

/// One concurrent version of a key: a value (or a tombstone) and the dot of its write.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sibling {
    /// The write that produced this sibling.
    pub dot: Dot,
    /// The value's stored bytes, encoded as [`Sibling::codec`] says; `None` for a tombstone
    /// (a delete).
    #[serde(with = "serde_bytes", default)]
    pub value: Option<Vec<u8>>,
    /// How `value` is encoded ([`crate::codec`]). Absent (raw) in records written before
    /// compression existed, and never written for raw values, so raw records encode as before.
    #[serde(default, skip_serializing_if = "Codec::is_none")]
    pub codec: Codec,
    /// Wall-clock time of the write at its coordinator, milliseconds since the Unix epoch.
    /// Informational (and for last-write-wins buckets); never used for causality.
    #[serde(default)]
    pub timestamp_ms: u64,
    /// When the value expires, milliseconds since the Unix epoch on the clock of the node that
    /// coordinated the write (its `timestamp_ms` plus the client's time to live): from then on
    /// the sibling reads as missing ([`Sibling::is_expired`]) and may be purged. `None`: never
    /// expires (and always `None` for a tombstone). Absent in records written before TTLs
    /// existed, and never written when `None`, so such records encode as before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at_ms: Option<u64>,
}

impl Sibling {
    /// True if this sibling is a tombstone.
    pub fn is_tombstone(&self) -> bool {
        self.value.is_none()
    }

    /// True if the sibling has an expiry and it has passed at `now_ms` (milliseconds since the
    /// Unix epoch): the value is readable while `now_ms < expires_at_ms`.
    pub fn is_expired(&self, now_ms: u64) -> bool {
        self.expires_at_ms.is_some_and(|at| at <= now_ms)
    }

    /// True if the sibling holds a value that has not expired at `now_ms`.
    pub fn is_live(&self, now_ms: u64) -> bool {
        !self.is_tombstone() && !self.is_expired(now_ms)
    }
}

/// The replicated state of one key: a causal clock and the concurrent siblings.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DvvSet {
    /// Everything this state has seen; covers every sibling's dot.
    pub clock: VersionVector,
    /// Concurrent versions, in dot order (kept sorted so that equal states encode equally).
    pub siblings: Vec<Sibling>,
}

/// Returned by [`DvvSet::update`] when a write would keep more siblings than allowed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SiblingLimit {
    /// The cap that would have been exceeded.
    pub limit: usize,
}

impl DvvSet {
    /// The state of a key never written.
    pub fn new() -> Self {
        Self::default()
    }

    /// The causal context a client gets with a read: the clock.
    pub fn context(&self) -> &VersionVector {
        &self.clock
    }

    /// Stored bytes of the non-tombstone siblings, in dot order, **expired ones included**:
    /// still compressed where a sibling's [`Sibling::codec`] says so. What a client may see is
    /// [`DvvSet::live_values`] or [`DvvSet::decoded_values`].
    pub fn values(&self) -> impl Iterator<Item = &[u8]> {
        self.siblings.iter().filter_map(|s| s.value.as_deref())
    }

    /// Stored bytes of the siblings live at `now_ms` (milliseconds since the Unix epoch):
    /// neither tombstones nor expired ([`Sibling::is_live`]), in dot order.
    pub fn live_values(&self, now_ms: u64) -> impl Iterator<Item = &[u8]> + '_ {
        self.siblings
            .iter()
            .filter(move |s| s.is_live(now_ms))
            .filter_map(|s| s.value.as_deref())
    }

    /// The client's bytes of the siblings live at `now_ms` (milliseconds since the Unix epoch;
    /// expired siblings are left out, see [`Sibling::is_expired`]), in dot order: each value
    /// decompressed with its codec, none allowed to exceed `max_len` bytes.
    ///
    /// # Errors
    /// [`crate::StorageError::Corrupt`] if a compressed value does not decode within `max_len`.
    pub fn decoded_values(
        &self,
        max_len: usize,
        now_ms: u64,
    ) -> Result<Vec<Vec<u8>>, crate::StorageError> {
        self.siblings
            .iter()
            .filter(|s| s.is_live(now_ms))
            .filter_map(|s| s.value.as_deref().map(|v| (s.codec, v)))
            .map(|(c, v)| codec::decompress(c, v, max_len))
            .collect()
    }

    /// True if some sibling holds a compressed value (its record needs [`crate::record::RECORD_V2`]).
    pub fn has_compressed(&self) -> bool {
        self.siblings.iter().any(|s| !s.codec.is_none())
    }

    /// True if there is no value at all (never written, or only tombstones). Expired values
    /// count as values here; see [`DvvSet::is_absent`].
    pub fn is_deleted(&self) -> bool {
        self.siblings.iter().all(Sibling::is_tombstone)
    }

    /// True if no sibling is live at `now_ms` (never written, deleted, or every value
    /// expired): the key reads as missing.
    pub fn is_absent(&self, now_ms: u64) -> bool {
        !self.siblings.iter().any(|s| s.is_live(now_ms))
    }

    /// Applies a client write coordinated by `replica`: `value` (`None` deletes) replaces every
    /// sibling that `ctx` covers; siblings the client did not see stay as concurrent versions.
    /// Returns the new dot.
    ///
    /// # Errors
    /// [`SiblingLimit`] if the result would hold more than `max_siblings` siblings; the state is
    /// then unchanged. The caller should read, resolve and write with the merged context.
    pub fn update(
        &mut self,
        ctx: &VersionVector,
        replica: ReplicaId,
        value: Option<Vec<u8>>,
        timestamp_ms: u64,
        max_siblings: usize,
    ) -> Result<Dot, SiblingLimit> {
        self.update_encoded(
            ctx,
            replica,
            value,
            Codec::None,
            timestamp_ms,
            None,
            max_siblings,
        )
    }

    /// [`DvvSet::update`] with a value already encoded by `codec` (see [`crate::codec`]) and
    /// an optional absolute expiry ([`Sibling::expires_at_ms`], milliseconds since the Unix
    /// epoch; ignored for a tombstone).
    ///
    /// # Errors
    /// As [`DvvSet::update`].
    #[allow(clippy::too_many_arguments)]
    pub fn update_encoded(
        &mut self,
        ctx: &VersionVector,
        replica: ReplicaId,
        value: Option<Vec<u8>>,
        codec: Codec,
        timestamp_ms: u64,
        expires_at_ms: Option<u64>,
        max_siblings: usize,
    ) -> Result<Dot, SiblingLimit> {
        // A tombstone has no bytes to encode and nothing to expire.
        let (codec, expires_at_ms) = if value.is_some() {
            (codec, expires_at_ms)
        } else {
            (Codec::None, None)
        };
        let kept = self
            .siblings
            .iter()
            .filter(|s| !ctx.contains(&s.dot))
            .count();
        // Tombstones the client did not see still count: they are versions it must resolve.
        if kept + 1 > max_siblings {
            return Err(SiblingLimit {
                limit: max_siblings,
            });
        }
        let dot = Dot {
            replica,
            counter: self.clock.get(replica).max(ctx.get(replica)) + 1,
        };
        self.siblings.retain(|s| !ctx.contains(&s.dot));
        self.siblings.push(Sibling {
            dot,
            value,
            codec,
            timestamp_ms,
            expires_at_ms,
        });
        self.siblings.sort_by_key(|s| s.dot);
        self.clock.merge(ctx);
        self.clock.add(dot);
        Ok(dot)
    }

    /// Merges another replica's state of the same key into a new state (DVV "sync"): a sibling
    /// survives if both states hold it or if the other state has not seen its dot.
    pub fn sync(&self, other: &DvvSet) -> DvvSet {
        let mut siblings: Vec<Sibling> = Vec::with_capacity(self.siblings.len());
        for s in &self.siblings {
            if !other.clock.contains(&s.dot) || other.siblings.iter().any(|o| o.dot == s.dot) {
                siblings.push(s.clone());
            }
        }
        for o in &other.siblings {
            if !self.clock.contains(&o.dot) && !self.siblings.iter().any(|s| s.dot == o.dot) {
                siblings.push(o.clone());
            }
        }
        siblings.sort_by_key(|s| s.dot);
        let mut clock = self.clock.clone();
        clock.merge(&other.clock);
        DvvSet { clock, siblings }
    }

    /// True if this state has seen every write `other` has, so `self.sync(other) == self`.
    pub fn descends(&self, other: &DvvSet) -> bool {
        self.clock.descends(&other.clock)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const A: ReplicaId = 1;
    const B: ReplicaId = 2;
    const C: ReplicaId = 3;

    fn vals(d: &DvvSet) -> Vec<Vec<u8>> {
        d.values().map(|v| v.to_vec()).collect()
    }

    #[test]
    fn write_with_context_replaces_what_it_saw() {
        let mut d = DvvSet::new();
        d.update(&VersionVector::new(), A, Some(b"v1".to_vec()), 0, 10)
            .unwrap();
        let ctx = d.context().clone();
        d.update(&ctx, A, Some(b"v2".to_vec()), 0, 10).unwrap();
        assert_eq!(vals(&d), vec![b"v2".to_vec()]);
    }

    #[test]
    fn writes_without_context_become_siblings_and_merged_context_resolves() {
        let mut d = DvvSet::new();
        d.update(&VersionVector::new(), A, Some(b"x".to_vec()), 0, 10)
            .unwrap();
        d.update(&VersionVector::new(), A, Some(b"y".to_vec()), 0, 10)
            .unwrap();
        assert_eq!(vals(&d), vec![b"x".to_vec(), b"y".to_vec()]);
        let ctx = d.context().clone();
        d.update(&ctx, A, Some(b"xy".to_vec()), 0, 10).unwrap();
        assert_eq!(vals(&d), vec![b"xy".to_vec()]);
    }

    #[test]
    fn sibling_cap_is_reported_and_state_unchanged() {
        let mut d = DvvSet::new();
        for i in 0..3u8 {
            d.update(&VersionVector::new(), A, Some(vec![i]), 0, 3)
                .unwrap();
        }
        let before = d.clone();
        let err = d
            .update(&VersionVector::new(), A, Some(vec![9]), 0, 3)
            .unwrap_err();
        assert_eq!(err.limit, 3);
        assert_eq!(d, before);
        // A write that resolves them is always possible.
        let ctx = d.context().clone();
        d.update(&ctx, A, Some(vec![7]), 0, 3).unwrap();
        assert_eq!(vals(&d), vec![vec![7]]);
    }

    #[test]
    fn delete_is_a_tombstone_ordered_like_a_write() {
        let mut d = DvvSet::new();
        d.update(&VersionVector::new(), A, Some(b"v".to_vec()), 0, 10)
            .unwrap();
        let ctx = d.context().clone();
        d.update(&ctx, A, None, 0, 10).unwrap();
        assert!(d.is_deleted());
        assert_eq!(d.siblings.len(), 1);
        // A replica that still has the old value loses it on merge.
        let mut stale = DvvSet::new();
        stale
            .update(&VersionVector::new(), A, Some(b"v".to_vec()), 0, 10)
            .unwrap();
        assert!(stale.sync(&d).is_deleted());
    }

    #[test]
    fn context_round_trips() {
        let mut vv = VersionVector::new();
        vv.add(Dot {
            replica: u64::MAX,
            counter: 7,
        });
        vv.add(Dot {
            replica: 3,
            counter: 1,
        });
        assert_eq!(VersionVector::from_context(&vv.to_context()).unwrap(), vv);
        assert_eq!(
            VersionVector::from_context(&[]).unwrap(),
            VersionVector::new()
        );
        assert!(VersionVector::from_context(b"\xc1garbage").is_err());
    }

    /// A state holding one value written by replica `A` at time 100 that expires at
    /// `expires_at`.
    fn expiring(expires_at: Option<u64>) -> DvvSet {
        let mut d = DvvSet::new();
        d.update_encoded(
            &VersionVector::new(),
            A,
            Some(b"session".to_vec()),
            Codec::None,
            100,
            expires_at,
            10,
        )
        .unwrap();
        d
    }

    #[test]
    fn an_expired_value_reads_as_missing_but_its_context_still_replaces_it() {
        let d = expiring(Some(1000));
        let live = |d: &DvvSet, now| d.decoded_values(100, now).unwrap();
        assert_eq!(live(&d, 999), vec![b"session".to_vec()]);
        assert!(!d.is_absent(999));
        // Expired from `expires_at_ms` on, inclusive.
        assert_eq!(live(&d, 1000), Vec::<Vec<u8>>::new());
        assert_eq!(d.live_values(1000).count(), 0);
        assert!(d.is_absent(1000) && !d.is_deleted());
        // The stored state still holds it, and the clock covers it: a write with the read's
        // context replaces it instead of making a sibling.
        assert_eq!(d.values().count(), 1);
        let mut next = d.clone();
        next.update(d.context(), B, Some(b"new".to_vec()), 2000, 10)
            .unwrap();
        assert_eq!(vals(&next), vec![b"new".to_vec()]);
        // Without an expiry a value never expires; a tombstone never carries one.
        assert!(!expiring(None).is_absent(u64::MAX));
        let mut gone = d.clone();
        gone.update_encoded(d.context(), A, None, Codec::None, 5, Some(9), 10)
            .unwrap();
        assert_eq!(gone.siblings[0].expires_at_ms, None);
    }

    #[test]
    fn expiry_travels_with_the_sibling_through_merges() {
        let d = expiring(Some(1000));
        // A replica that missed the purge sends back its copy: merged into an empty state (the
        // purged key), the value is still expired, because its expiry is absolute.
        let back = DvvSet::new().sync(&d);
        assert_eq!(back.siblings[0].expires_at_ms, Some(1000));
        assert!(back.is_absent(1000));
        // A concurrent value without expiry stays live beside it.
        let mut other = DvvSet::new();
        other
            .update(&VersionVector::new(), B, Some(b"kept".to_vec()), 100, 10)
            .unwrap();
        let m = d.sync(&other);
        assert_eq!(
            m.live_values(5000).collect::<Vec<_>>(),
            vec![b"kept".as_slice()]
        );
        assert_eq!(m.values().count(), 2);
    }

    /// A small replicated history: three replicas apply client writes (with the context of
    /// their own state or of nothing) and occasionally merge a peer's state. Every state that
    /// arises this way is a reachable state, which is what the properties are about.
    #[derive(Clone, Debug)]
    enum Step {
        Write { at: usize, blind: bool, value: u8 },
        Delete { at: usize },
        Sync { from: usize, to: usize },
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            4 => (0..3usize, any::<bool>(), any::<u8>())
                .prop_map(|(at, blind, value)| Step::Write { at, blind, value }),
            1 => (0..3usize).prop_map(|at| Step::Delete { at }),
            3 => (0..3usize, 0..3usize).prop_map(|(from, to)| Step::Sync { from, to }),
        ]
    }

    fn run(steps: &[Step]) -> Vec<DvvSet> {
        let ids = [A, B, C];
        let mut states = vec![DvvSet::new(); 3];
        for s in steps {
            match *s {
                Step::Write { at, blind, value } => {
                    let ctx = if blind {
                        VersionVector::new()
                    } else {
                        states[at].clock.clone()
                    };
                    let _ = states[at].update(&ctx, ids[at], Some(vec![value]), 0, usize::MAX);
                }
                Step::Delete { at } => {
                    let ctx = states[at].clock.clone();
                    let _ = states[at].update(&ctx, ids[at], None, 0, usize::MAX);
                }
                Step::Sync { from, to } => {
                    states[to] = states[to].sync(&states[from]);
                }
            }
        }
        states
    }

    proptest! {
        #[test]
        fn sync_is_commutative(steps in prop::collection::vec(step(), 0..40)) {
            let s = run(&steps);
            prop_assert_eq!(s[0].sync(&s[1]), s[1].sync(&s[0]));
        }

        #[test]
        fn sync_is_associative(steps in prop::collection::vec(step(), 0..40)) {
            let s = run(&steps);
            prop_assert_eq!(s[0].sync(&s[1]).sync(&s[2]), s[0].sync(&s[1].sync(&s[2])));
        }

        #[test]
        fn sync_is_idempotent(steps in prop::collection::vec(step(), 0..40)) {
            let s = run(&steps);
            prop_assert_eq!(s[0].sync(&s[0]), s[0].clone());
            let m = s[0].sync(&s[1]);
            prop_assert_eq!(m.sync(&s[1]), m.clone());
        }

        #[test]
        fn clock_covers_every_sibling(steps in prop::collection::vec(step(), 0..40)) {
            for s in run(&steps) {
                for sib in &s.siblings {
                    prop_assert!(s.clock.contains(&sib.dot));
                }
            }
        }

        #[test]
        fn dominated_version_is_dropped(steps in prop::collection::vec(step(), 0..40)) {
            let s = run(&steps);
            if s[0].descends(&s[1]) {
                prop_assert_eq!(s[0].sync(&s[1]), s[0].clone());
            }
            // A write made with the context of a state dominates it.
            let mut newer = s[1].clone();
            newer.update(&s[1].clock.clone(), B, Some(b"new".to_vec()), 0, usize::MAX).unwrap();
            prop_assert!(newer.descends(&s[1]));
            prop_assert_eq!(newer.sync(&s[1]), newer.clone());
        }

        #[test]
        fn concurrent_versions_are_kept(steps in prop::collection::vec(step(), 0..40)) {
            let s = run(&steps);
            let mut x = s[0].clone();
            let mut y = s[0].clone();
            let ctx = s[0].clock.clone();
            x.update(&ctx, A, Some(b"x".to_vec()), 0, usize::MAX).unwrap();
            y.update(&ctx, B, Some(b"y".to_vec()), 0, usize::MAX).unwrap();
            let m = x.sync(&y);
            let v = vals(&m);
            prop_assert!(v.contains(&b"x".to_vec()) && v.contains(&b"y".to_vec()));
            prop_assert!(m.descends(&x) && m.descends(&y));
        }

        #[test]
        fn vector_merge_is_a_join(a in prop::collection::btree_map(0u64..4, 0u64..5, 0..4),
                                  b in prop::collection::btree_map(0u64..4, 0u64..5, 0..4)) {
            let a = VersionVector(a);
            let b = VersionVector(b);
            let mut m = a.clone();
            m.merge(&b);
            prop_assert!(m.descends(&a) && m.descends(&b));
            let mut n = b.clone();
            n.merge(&a);
            prop_assert!(m.descends(&n) && n.descends(&m));
        }
    }
}
