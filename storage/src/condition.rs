//! Conditional writes: `if_none_match` (create only if the key holds no live value) and
//! `if_match` (replace only if nothing was written since the client's read).
//!
//! A condition is evaluated by the writer thread inside the transaction that applies the
//! write (the read-modify-write of the key's [`DvvSet`]), so two conditional writes to one
//! replica are serialized: the second sees the first.
//!
//! * On the replica that coordinates the write ([`Condition::check_update`]):
//!   `if_none_match` holds if every sibling is a tombstone (or there is none); `if_match`
//!   holds if the client's context covers the dot of every live sibling.
//! * On a replica that receives the coordinator's resulting state as a merge
//!   ([`Condition::check_merge`]): the condition holds if the incoming state's clock covers
//!   every live sibling this replica holds, i.e. the merge would bring back no live version
//!   the coordinating replica did not know to be replaced. This is the same rule for both
//!   conditions, because the coordinator's state already passed the condition.

use crate::dvv::{DvvSet, VersionVector};
use crate::StorageError;
use serde::{Deserialize, Serialize};

/// A condition on the current state of a key that a write needs to be applied.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Condition {
    /// No condition: the write always applies.
    #[default]
    None,
    /// Create only: the key must hold no live value (never written, or only tombstones).
    IfNoneMatch,
    /// Replace only if unchanged: the client's causal context must cover every live version
    /// of the key (nothing was written since the read that gave the context).
    IfMatch,
}

impl Condition {
    /// The protocol name of the condition (`if_none_match`, `if_match`), `none` for none.
    pub fn name(self) -> &'static str {
        match self {
            Condition::None => "none",
            Condition::IfNoneMatch => "if_none_match",
            Condition::IfMatch => "if_match",
        }
    }

    /// True for [`Condition::None`].
    pub fn is_none(self) -> bool {
        self == Condition::None
    }

    /// Checks the condition of a write coordinated on this replica with the client's
    /// `context` against the key's `current` state, at `now_ms` (the write's timestamp, ms
    /// since the Unix epoch: values expired then count as absent).
    ///
    /// # Errors
    /// [`StorageError::ConditionFailed`] naming the condition and how many live versions
    /// violate it.
    pub fn check_update(
        self,
        current: &DvvSet,
        context: &VersionVector,
        now_ms: u64,
    ) -> Result<(), StorageError> {
        let violating = match self {
            Condition::None => 0,
            Condition::IfNoneMatch => current.live_values(now_ms).count(),
            Condition::IfMatch => current
                .siblings
                .iter()
                .filter(|s| s.is_live(now_ms) && !context.contains(&s.dot))
                .count(),
        };
        self.verdict(violating)
    }

    /// Checks the condition of a write on a replica that receives `incoming`, the state the
    /// coordinating replica made, against this replica's `current` state: every live version
    /// here must be covered by `incoming`'s clock. Live at the write's time, taken as the
    /// newest `timestamp_ms` of `incoming`'s siblings (the new version's).
    ///
    /// # Errors
    /// [`StorageError::ConditionFailed`], as [`Condition::check_update`].
    pub fn check_merge(self, current: &DvvSet, incoming: &DvvSet) -> Result<(), StorageError> {
        let now_ms = incoming
            .siblings
            .iter()
            .map(|s| s.timestamp_ms)
            .max()
            .unwrap_or(0);
        let violating = match self {
            Condition::None => 0,
            Condition::IfNoneMatch | Condition::IfMatch => current
                .siblings
                .iter()
                .filter(|s| s.is_live(now_ms) && !incoming.clock.contains(&s.dot))
                .count(),
        };
        self.verdict(violating)
    }

    fn verdict(self, violating: usize) -> Result<(), StorageError> {
        if violating == 0 {
            return Ok(());
        }
        let detail = match self {
            Condition::IfMatch => format!(
                "{violating} live version(s) of the key were written after the read that gave the context"
            ),
            _ => format!("the key holds {violating} live version(s)"),
        };
        Err(StorageError::ConditionFailed {
            condition: self.name().to_string(),
            detail,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn written(value: Option<&[u8]>) -> DvvSet {
        let mut d = DvvSet::new();
        d.update(&VersionVector::new(), 1, value.map(<[u8]>::to_vec), 0, 10)
            .unwrap();
        d
    }

    #[test]
    fn if_none_match_holds_for_absent_and_tombstoned_keys_only() {
        let c = Condition::IfNoneMatch;
        let none = VersionVector::new();
        assert!(c.check_update(&DvvSet::new(), &none, 0).is_ok());
        assert!(c.check_update(&written(None), &none, 0).is_ok());
        let e = c.check_update(&written(Some(b"v")), &none, 0).unwrap_err();
        assert!(e.to_string().contains("if_none_match"), "{e}");
    }

    #[test]
    fn if_match_needs_a_context_covering_every_live_version() {
        let c = Condition::IfMatch;
        let mut d = written(Some(b"v1"));
        let read = d.context().clone();
        assert!(c.check_update(&d, &read, 0).is_ok());
        d.update(&read, 2, Some(b"v2".to_vec()), 0, 10).unwrap();
        assert!(c.check_update(&d, &read, 0).is_err());
        assert!(c.check_update(&d, &d.context().clone(), 0).is_ok());
    }

    #[test]
    fn a_merge_is_refused_if_it_would_bring_back_an_unseen_live_version() {
        let here = written(Some(b"mine"));
        let mut theirs = DvvSet::new();
        theirs
            .update(&VersionVector::new(), 2, Some(b"theirs".to_vec()), 0, 10)
            .unwrap();
        assert!(Condition::IfNoneMatch.check_merge(&here, &theirs).is_err());
        assert!(Condition::None.check_merge(&here, &theirs).is_ok());
        // Their state replaced ours: it covers our dot.
        let mut replaced = here.clone();
        replaced
            .update(&here.context().clone(), 2, Some(b"next".to_vec()), 0, 10)
            .unwrap();
        assert!(Condition::IfMatch.check_merge(&here, &replaced).is_ok());
        assert!(Condition::IfNoneMatch
            .check_merge(&written(None), &theirs)
            .is_ok());
    }

    /// A value with a time to live, written by replica 1 at 100, expiring at 1000.
    fn expiring() -> DvvSet {
        let mut d = DvvSet::new();
        d.update_encoded(
            &VersionVector::new(),
            1,
            Some(b"v".to_vec()),
            crate::Codec::None,
            100,
            Some(1000),
            10,
        )
        .unwrap();
        d
    }

    #[test]
    fn an_expired_value_is_absent_to_both_conditions() {
        let d = expiring();
        let none = VersionVector::new();
        let c = Condition::IfNoneMatch;
        assert!(c.check_update(&d, &none, 999).is_err());
        assert!(c.check_update(&d, &none, 1000).is_ok());
        // if_match: a version written after the read, but expired by now, changes nothing.
        assert!(Condition::IfMatch.check_update(&d, &none, 999).is_err());
        assert!(Condition::IfMatch.check_update(&d, &none, 1000).is_ok());
        // On a replica receiving the coordinator's state, judged at the new version's time.
        let mut theirs = DvvSet::new();
        theirs
            .update(&VersionVector::new(), 2, Some(b"new".to_vec()), 999, 10)
            .unwrap();
        assert!(c.check_merge(&d, &theirs).is_err());
        let mut later = DvvSet::new();
        later
            .update(&VersionVector::new(), 2, Some(b"new".to_vec()), 1000, 10)
            .unwrap();
        assert!(c.check_merge(&d, &later).is_ok());
    }
}
