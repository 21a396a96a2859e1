//! Where the live vnode of each partition is.
//!
//! The [`VNodeSupervisor`](crate::vnode_supervisor::VNodeSupervisor) writes an entry when it
//! (re)starts a vnode and clears it when the vnode dies; coordinators read it. Waiters are
//! woken on every change, so a request that arrives while a vnode restarts waits for the new
//! one (up to its deadline) instead of failing.

use crate::vnode::VNodeMsg;
use ractor::ActorRef;
use std::sync::RwLock;
use std::time::Instant;
use tokio::sync::Notify;

/// Partition number to its current vnode.
pub struct VNodeDirectory {
    entries: RwLock<Vec<Option<ActorRef<VNodeMsg>>>>,
    changed: Notify,
}

impl VNodeDirectory {
    /// An empty directory for `partitions` partitions.
    pub fn new(partitions: u32) -> Self {
        Self {
            entries: RwLock::new(vec![None; partitions as usize]),
            changed: Notify::new(),
        }
    }

    /// Number of partitions: valid partitions are `0..partitions()`.
    pub fn partitions(&self) -> u32 {
        self.entries.read().unwrap_or_else(|p| p.into_inner()).len() as u32
    }

    /// The vnode serving `partition`, if one is up.
    pub fn get(&self, partition: u32) -> Option<ActorRef<VNodeMsg>> {
        self.entries
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(partition as usize)
            .cloned()
            .flatten()
    }

    /// Sets (or clears, with `None`) the vnode of `partition` and wakes waiters.
    pub fn set(&self, partition: u32, vnode: Option<ActorRef<VNodeMsg>>) {
        if let Some(slot) = self
            .entries
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .get_mut(partition as usize)
        {
            *slot = vnode;
        }
        self.changed.notify_waiters();
    }

    /// Waits until `partition` has a live vnode that is not `stale`, or `deadline` passes.
    pub async fn wait_for(
        &self,
        partition: u32,
        stale: Option<&ActorRef<VNodeMsg>>,
        deadline: Instant,
    ) -> Option<ActorRef<VNodeMsg>> {
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(v) = self.get(partition) {
                if stale.is_none_or(|s| s.get_id() != v.get_id()) {
                    return Some(v);
                }
            }
            let remaining = deadline.checked_duration_since(Instant::now())?;
            if tokio::time::timeout(remaining, notified).await.is_err() {
                return None;
            }
        }
    }
}
