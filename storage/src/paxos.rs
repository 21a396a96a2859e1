//! Acceptor state of strong buckets: one single-decree Paxos register per key (CASPaxos,
//! Rystsov 2018, "CASPaxos: Replicated State Machines without logs").
//!
//! A key of a strong bucket is not a [`crate::DvvSet`]: each replica of the key is an
//! *acceptor* holding the highest ballot it promised, the ballot of the value it accepted last
//! and that value (`None`: absent, never written or deleted). The state lives in the data
//! env's `paxos` database, keyed `[partition: u16][stored key]`, apart from the DVV records:
//! anti-entropy, hinted handoff and read repair never see it (merging acceptor states the way
//! replicas of a DVV record merge would break Paxos).
//!
//! Every change ([`PaxosStep`]) is applied by the data env's group-committing writer thread
//! and answered only after its transaction committed with fsync: a promise or an accept is
//! durable before the proposer hears of it (the paper's requirement, and what survives
//! `kill -9`). Reads of the state ([`crate::Partition::paxos_state`]) take a read transaction
//! and never wait for the writer.

use crate::StorageError;
use serde::{Deserialize, Serialize};

/// A Paxos ballot: `(counter, proposer)`, ordered by counter first, then by the proposer's id
/// (a random 64-bit number each proposer draws when it starts, so two proposers, or two runs
/// of one, never make the same ballot). [`Ballot::ZERO`] is below every ballot a proposer
/// makes: the state of a key nobody wrote.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Ballot {
    /// Round number; a proposer picks one above every ballot it has seen.
    pub counter: u64,
    /// Id of the proposer that made the ballot.
    pub proposer: u64,
}

impl Ballot {
    /// No ballot: below every ballot a proposer makes.
    pub const ZERO: Ballot = Ballot {
        counter: 0,
        proposer: 0,
    };

    /// The next ballot of proposer `proposer` above `self`.
    pub fn next(self, proposer: u64) -> Ballot {
        Ballot {
            counter: self.counter.saturating_add(1),
            proposer,
        }
    }
}

/// One acceptor's state of one key.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AcceptorState {
    /// Highest ballot promised (prepare) or accepted; [`Ballot::ZERO`] if none.
    pub promised: Ballot,
    /// Ballot of the accepted value; [`Ballot::ZERO`] if nothing was accepted.
    pub accepted: Ballot,
    /// The accepted value: `None` when absent (never written, or deleted).
    #[serde(with = "serde_bytes")]
    pub value: Option<Vec<u8>>,
}

/// A change an acceptor is asked to make.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PaxosStep {
    /// Phase 1: promise `ballot` if it is above every ballot promised or accepted here.
    Prepare {
        /// The proposer's ballot.
        ballot: Ballot,
    },
    /// Phase 2: accept `value` at `ballot` if no higher ballot was promised; then promise
    /// `promise_next` as well (CASPaxos section 2.2.1: the proposer's next operation on the
    /// key may skip its prepare).
    Accept {
        /// The proposer's ballot.
        ballot: Ballot,
        /// The new value, `None` for absent (a delete).
        #[serde(with = "serde_bytes")]
        value: Option<Vec<u8>>,
        /// A ballot above `ballot` to promise in the same write, or `None`.
        promise_next: Option<Ballot>,
    },
    /// Garbage collection of a deleted key: erase the state if it still holds the tombstone
    /// accepted at `accepted` (value absent), raising the partition's ballot floor to the
    /// state's promise (see [`crate::Partition::paxos`]). `ok` says whether it was erased.
    Erase {
        /// The tombstone's ballot, as every replica reported it.
        accepted: Ballot,
    },
}

/// An acceptor's answer to a [`PaxosStep`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaxosAnswer {
    /// Whether the step was applied (promised, or accepted).
    pub ok: bool,
    /// The acceptor's state after the step (before it, when refused). An accept's answer
    /// leaves the value out (`value: None`): the proposer knows it.
    pub state: AcceptorState,
}

/// Where a [`PaxosStep`]'s answer goes once its transaction committed.
pub type PaxosReply = Box<dyn FnOnce(Result<PaxosAnswer, StorageError>) + Send>;

/// Format byte of an encoded [`AcceptorState`].
const FORMAT: u8 = 1;

/// Encodes a state: `[1][promised: 16][accepted: 16][0 | 1 value]`.
pub(crate) fn encode(state: &AcceptorState) -> Vec<u8> {
    let mut out = Vec::with_capacity(34 + state.value.as_ref().map_or(0, Vec::len));
    out.push(FORMAT);
    for b in [state.promised, state.accepted] {
        out.extend_from_slice(&b.counter.to_be_bytes());
        out.extend_from_slice(&b.proposer.to_be_bytes());
    }
    match &state.value {
        None => out.push(0),
        Some(v) => {
            out.push(1);
            out.extend_from_slice(v);
        }
    }
    out
}

/// Decodes [`encode`]'s output.
///
/// # Errors
/// [`StorageError::Corrupt`] if `bytes` is not an encoded state.
pub(crate) fn decode(bytes: &[u8]) -> Result<AcceptorState, StorageError> {
    if bytes.len() < 34 || bytes[0] != FORMAT || bytes[33] > 1 {
        return Err(StorageError::Corrupt(format!(
            "an acceptor state of {} bytes that does not decode",
            bytes.len()
        )));
    }
    let u = |i: usize| {
        let mut a = [0u8; 8];
        a.copy_from_slice(&bytes[i..i + 8]);
        u64::from_be_bytes(a)
    };
    let ballot = |i: usize| Ballot {
        counter: u(i),
        proposer: u(i + 8),
    };
    Ok(AcceptorState {
        promised: ballot(1),
        accepted: ballot(17),
        value: (bytes[33] == 1).then(|| bytes[34..].to_vec()),
    })
}

/// Applies `step` to `state`: the answer, and the new state to store if it changed.
pub(crate) fn apply(
    state: &AcceptorState,
    step: &PaxosStep,
) -> (PaxosAnswer, Option<AcceptorState>) {
    match step {
        PaxosStep::Prepare { ballot } => {
            if *ballot > state.promised && *ballot > state.accepted {
                let next = AcceptorState {
                    promised: *ballot,
                    ..state.clone()
                };
                (
                    PaxosAnswer {
                        ok: true,
                        state: next.clone(),
                    },
                    Some(next),
                )
            } else {
                (refused(state), None)
            }
        }
        PaxosStep::Accept {
            ballot,
            value,
            promise_next,
        } => {
            if *ballot >= state.promised && *ballot > state.accepted {
                let promised = promise_next.filter(|p| p > ballot).unwrap_or(*ballot);
                let next = AcceptorState {
                    promised,
                    accepted: *ballot,
                    value: value.clone(),
                };
                let answer = PaxosAnswer {
                    ok: true,
                    state: AcceptorState {
                        value: None,
                        ..next.clone()
                    },
                };
                (answer, Some(next))
            } else {
                (refused(state), None)
            }
        }
        // Applied by the store, which also keeps the floor.
        PaxosStep::Erase { .. } => (refused(state), None),
    }
}

/// The state of a key without a stored state in a partition whose ballot floor is `floor`
/// (the highest promise of an erased key's state, [`PaxosStep::Erase`]): nothing accepted,
/// and every ballot whose counter is at most `floor` refused, so no proposal made before an
/// erase can land after it.
pub(crate) fn absent(floor: u64) -> AcceptorState {
    AcceptorState {
        promised: Ballot {
            counter: floor,
            proposer: if floor == 0 { 0 } else { u64::MAX },
        },
        accepted: Ballot::ZERO,
        value: None,
    }
}

/// A refusal: the promises without the value.
fn refused(state: &AcceptorState) -> PaxosAnswer {
    PaxosAnswer {
        ok: false,
        state: AcceptorState {
            value: None,
            ..state.clone()
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(counter: u64, proposer: u64) -> Ballot {
        Ballot { counter, proposer }
    }

    #[test]
    fn states_round_trip_and_garbage_is_refused() {
        for value in [None, Some(vec![]), Some(b"value".to_vec())] {
            let s = AcceptorState {
                promised: b(7, 3),
                accepted: b(5, 9),
                value,
            };
            assert_eq!(decode(&encode(&s)).unwrap(), s);
        }
        assert!(decode(&[1, 2, 3]).is_err());
        let mut bad = encode(&AcceptorState::default());
        bad[33] = 7;
        assert!(decode(&bad).is_err());
    }

    #[test]
    fn prepare_promises_only_higher_ballots() {
        let s = AcceptorState::default();
        let (a, next) = apply(&s, &PaxosStep::Prepare { ballot: b(1, 1) });
        assert!(a.ok);
        let s = next.unwrap();
        assert_eq!(s.promised, b(1, 1));
        let (a, next) = apply(&s, &PaxosStep::Prepare { ballot: b(1, 1) });
        assert!(!a.ok && next.is_none());
        let (a, _) = apply(&s, &PaxosStep::Prepare { ballot: b(1, 0) });
        assert!(!a.ok);
        assert!(apply(&s, &PaxosStep::Prepare { ballot: b(1, 2) }).0.ok);
    }

    #[test]
    fn accept_respects_promises_and_promises_the_next_ballot() {
        let s = apply(
            &AcceptorState::default(),
            &PaxosStep::Prepare { ballot: b(2, 1) },
        )
        .1
        .unwrap();
        // A lower ballot is refused.
        let low = PaxosStep::Accept {
            ballot: b(1, 5),
            value: Some(b"x".to_vec()),
            promise_next: None,
        };
        assert!(!apply(&s, &low).0.ok);
        let ok = PaxosStep::Accept {
            ballot: b(2, 1),
            value: Some(b"v".to_vec()),
            promise_next: Some(b(3, 1)),
        };
        let (a, next) = apply(&s, &ok);
        assert!(a.ok && a.state.value.is_none());
        let s = next.unwrap();
        assert_eq!((s.promised, s.accepted), (b(3, 1), b(2, 1)));
        assert_eq!(s.value.as_deref(), Some(&b"v"[..]));
        // The same accept again is refused (one value per ballot); the promised next one is
        // taken without a prepare.
        assert!(!apply(&s, &ok).0.ok);
        let next = PaxosStep::Accept {
            ballot: b(3, 1),
            value: None,
            promise_next: Some(b(4, 1)),
        };
        let (a, s2) = apply(&s, &next);
        assert!(a.ok);
        assert_eq!(s2.unwrap().value, None);
    }
}
