//! Recovering the keys of a new data directory (a wiped disk, a replaced machine): the node
//! takes writes at once but votes in no quorum read until it has completed an anti-entropy
//! exchange with every other node of its region's ring (`geokv_protocol::recovery` says why
//! and decides when). This file keeps the progress, runs the exchanges promptly (not at the
//! anti-entropy interval) and saves the end, so a restart during recovery recovers again.

use std::sync::{Arc, PoisonError};
use std::time::Duration;

use geokv_core::NodeId;
use geokv_protocol::{Failure, Outcome};

use super::Cluster;

/// Pause between two recovery rounds (exchanges with the peers still waited for).
const RECOVERY_RETRY: Duration = Duration::from_millis(250);

impl Cluster {
    /// The nodes of the region's ring (current and future) this node still has to complete an
    /// exchange with, and, for a data directory restored from a backup, the nodes of the other
    /// regions' rings (the whole region may have gone back to the backup, so only they still
    /// hold what it acknowledged since); `None` when it is not recovering.
    pub(crate) fn recovery_waiting(&self) -> Option<Vec<NodeId>> {
        let recovery = self.recovery.lock().unwrap_or_else(PoisonError::into_inner);
        let r = recovery.as_ref()?;
        let view = self.view();
        let ring = view.owners().nodes().iter().chain(view.future_owners().nodes()).copied();
        let remote = self.remote_rings.values().flat_map(|(ring, _)| ring.nodes().iter().copied());
        let remote = remote.filter(|_| self.restored);
        Some(r.waiting_for(self.me, ring.chain(remote)))
    }

    /// Whether this node may vote in a quorum read (a client read, a write's first read, a
    /// scan page): the refusal (`UNAVAILABLE`) while it recovers.
    pub(crate) fn vote(&self) -> Result<(), Failure> {
        // Every quorum read asks this: once recovered, no lock and no ring walk.
        if *self.serving.borrow() {
            return Ok(());
        }
        geokv_protocol::vote(self.me, self.recovery_waiting().as_deref())
    }

    /// Resolves once this node votes in quorum reads (at once if it did not start on a new
    /// data directory).
    pub async fn serving_reads(&self) {
        let mut rx = self.serving.subscribe();
        let _ = rx.wait_for(|serving| *serving).await;
    }

    /// An exchange this node ran with `peer` ended: while recovering, it may complete the
    /// recovery, which is saved before the node votes again.
    pub(crate) async fn exchanged(&self, peer: NodeId, result: &Result<Outcome, String>) {
        {
            let mut recovery = self.recovery.lock().unwrap_or_else(PoisonError::into_inner);
            let Some(r) = recovery.as_mut() else { return };
            r.on_exchange(peer, result);
        }
        self.finish_recovery_if_done().await;
    }

    async fn finish_recovery_if_done(&self) {
        if !self.recovery_waiting().is_some_and(|w| w.is_empty()) {
            return;
        }
        let node = self.node.clone();
        match crate::blocking::run(move || node.set_recovered()).await {
            Ok(Ok(())) => {
                *self.recovery.lock().unwrap_or_else(PoisonError::into_inner) = None;
                self.serving.send_replace(true);
                tracing::info!(
                    "recovered the keys of the new or restored data directory from every peer; serving reads"
                );
            }
            Ok(Err(e)) => tracing::error!(error = %e, "cannot save the end of recovery; will retry"),
            Err(e) => tracing::error!(error = %e, "cannot save the end of recovery; will retry"),
        }
    }

    /// Runs exchanges with the peers still waited for, every `RECOVERY_RETRY`, until the node
    /// has recovered (returns at once if it is not recovering).
    pub(crate) async fn recover(self: &Arc<Self>) {
        while let Some(waiting) = self.recovery_waiting() {
            if waiting.is_empty() {
                // A region of one node, or the peers left the ring meanwhile.
                self.finish_recovery_if_done().await;
            } else {
                tracing::info!(?waiting, "recovering: exchanging with the peers not synced yet");
                let _one_at_a_time = self.ae_lock.lock().await;
                for peer in waiting {
                    if let Err(e) = self.anti_entropy_with(peer).await {
                        tracing::debug!(peer, error = %e, "recovery exchange failed; will retry");
                    }
                }
            }
            if self.recovery_waiting().is_some() {
                tokio::time::sleep(RECOVERY_RETRY).await;
            }
        }
    }
}
