//! Who must answer a strong operation and when a phase is decided: the replica sets of a
//! partition (every live layout version's), majorities of each (CASPaxos needs a majority of
//! every set during a transition), and [`phase`], which sends one Paxos step to the union of
//! the sets and returns as soon as every set has a majority, or none can have one.

use super::*;

/// The replica sets of `partition` whose majorities a strong operation needs: the read
/// version's first `n`, then every other live version's (a layout transition).
///
/// # Errors
/// [`StrongError::NoLayout`] when the partition has no replicas.
pub fn replica_sets(
    placements: &Placements,
    partition: u32,
    n: usize,
) -> Result<Vec<Vec<String>>, StrongError> {
    let prefs = placements
        .prefs
        .get(partition as usize)
        .filter(|p| !p.is_empty())
        .ok_or(StrongError::NoLayout)?;
    let mut sets = vec![prefs[..n.min(prefs.len())].to_vec()];
    for set in placements
        .also_write
        .get(partition as usize)
        .into_iter()
        .flatten()
    {
        let s = set[..n.min(set.len())].to_vec();
        if !s.is_empty() && !sets.contains(&s) {
            sets.push(s);
        }
    }
    Ok(sets)
}

pub(super) fn union(sets: &[Vec<String>]) -> Vec<String> {
    let mut all: Vec<String> = Vec::new();
    for s in sets {
        for n in s {
            if !all.contains(n) {
                all.push(n.clone());
            }
        }
    }
    all
}

/// How one phase went.
pub(super) struct Tally<T> {
    /// Acceptors that did what was asked, with their answers.
    pub(super) ok: Vec<(String, T)>,
    /// Acceptors that refused (a higher promise, or a newer layout): they changed nothing.
    pub(super) refused: Vec<String>,
    /// Acceptors that failed or did not answer: they may or may not have done it.
    pub(super) unknown: Vec<(String, String)>,
    /// Highest ballot a refusing acceptor had promised.
    pub(super) beaten_by: Ballot,
    /// A newer layout an acceptor reported.
    pub(super) stale_layout: Option<u64>,
    /// A storage error an acceptor reported (the same on every replica for bad input).
    pub(super) storage: Option<StorageError>,
}

impl<T> Tally<T> {
    pub(super) fn causes(&self) -> String {
        let mut out: Vec<String> = self
            .unknown
            .iter()
            .map(|(n, e)| format!("{n}: {e}"))
            .collect();
        for n in &self.refused {
            out.push(format!("{n}: refused"));
        }
        if let Some(v) = self.stale_layout {
            out.push(format!(
                "a replica knows layout version {v}, newer than this node's"
            ));
        }
        out.join("; ")
    }

    pub(super) fn ok_nodes(&self) -> Vec<&str> {
        self.ok.iter().map(|(n, _)| n.as_str()).collect()
    }
}

pub(super) fn majority(set_len: usize, weak: bool) -> usize {
    if weak {
        1
    } else {
        set_len / 2 + 1
    }
}

pub(super) fn met(sets: &[Vec<String>], oks: &[&str], weak: bool) -> bool {
    sets.iter()
        .all(|s| s.iter().filter(|n| oks.contains(&n.as_str())).count() >= majority(s.len(), weak))
}

pub(super) fn impossible(sets: &[Vec<String>], failed: &[&str], weak: bool) -> bool {
    sets.iter().any(|s| {
        let left = s.iter().filter(|n| !failed.contains(&n.as_str())).count();
        left < majority(s.len(), weak)
    })
}

/// What one acceptor answered in a phase: `Ok(answer)`, or a refusal with the ballot it
/// promised.
type Vote<T> = Result<Fenced<Result<T, Ballot>>, ReplicaError>;

/// Asks every node of the union of `sets` with `call` and gathers answers until a majority
/// of every set said ok, a majority became impossible, or `deadline`.
pub(super) async fn phase<T, F, Fut>(
    sets: &[Vec<String>],
    deadline: Instant,
    weak: bool,
    call: F,
) -> Tally<T>
where
    F: Fn(String) -> Fut,
    Fut: std::future::Future<Output = (String, Vote<T>)>,
{
    let targets = union(sets);
    let mut pending: FuturesUnordered<Fut> = targets.iter().cloned().map(&call).collect();
    let mut tally = Tally {
        ok: Vec::new(),
        refused: Vec::new(),
        unknown: Vec::new(),
        beaten_by: Ballot::ZERO,
        stale_layout: None,
        storage: None,
    };
    let sleep = tokio::time::sleep_until(deadline.into());
    tokio::pin!(sleep);
    loop {
        if met(sets, &tally.ok_nodes(), weak) {
            break;
        }
        let failed: Vec<&str> = tally
            .refused
            .iter()
            .map(String::as_str)
            .chain(tally.unknown.iter().map(|(n, _)| n.as_str()))
            .collect();
        if impossible(sets, &failed, weak) {
            break;
        }
        tokio::select! {
            next = pending.next() => match next {
                None => break,
                Some((node, Ok(Fenced::Ok(Ok(t))))) => tally.ok.push((node, t)),
                Some((node, Ok(Fenced::Ok(Err(promised))))) => {
                    tally.beaten_by = tally.beaten_by.max(promised);
                    tally.refused.push(node);
                }
                Some((node, Ok(Fenced::StaleLayout(v)))) => {
                    tally.stale_layout = Some(tally.stale_layout.unwrap_or(0).max(v));
                    tally.refused.push(node);
                }
                Some((node, Err(e))) => {
                    if let Some(s) = e.storage() {
                        tally.storage = Some(s.clone());
                    }
                    tally.unknown.push((node, e.to_string()));
                }
            },
            _ = &mut sleep => {
                let answered: Vec<String> = tally.ok.iter().map(|(n, _)| n.clone())
                    .chain(tally.refused.iter().cloned())
                    .chain(tally.unknown.iter().map(|(n, _)| n.clone()))
                    .collect();
                for n in targets.iter().filter(|n| !answered.contains(n)) {
                    tally.unknown.push((n.clone(), "no answer in time".into()));
                }
                break;
            }
        }
    }
    tally
}

pub(super) fn impossible_now(
    sets: &[Vec<String>],
    tally: &Tally<AcceptorState>,
    weak: bool,
) -> bool {
    let failed: Vec<&str> = tally
        .refused
        .iter()
        .map(String::as_str)
        .chain(tally.unknown.iter().map(|(n, _)| n.as_str()))
        .collect();
    impossible(sets, &failed, weak)
}
