//! The background sweeper: turns keys whose TTL ran out into tombstones, purges tombstones
//! whose grace period ended, and trims the change log. Reads never depend on it (an expired
//! key reads as absent at once); it reclaims space.

use std::sync::Arc;
use std::time::Duration;

use geokv_core::{apply, Op};
use geokv_storage::{TtlTag, Update};

use crate::node::{Node, NodeError};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SweepReport {
    /// Keys whose TTL ran out and that became tombstones.
    pub expired: u64,
    /// Tombstones removed for good.
    pub purged: u64,
    /// Change-log sequence numbers trimmed.
    pub trimmed: u64,
}

impl Node {
    /// One sweep over the TTL-index entries due now.
    pub fn sweep_once(&self) -> Result<SweepReport, NodeError> {
        let now = self.now_ms();
        let mut report = SweepReport::default();
        for due in self.engine().due_ttl(now, self.sweep_batch)? {
            match due.tag {
                TtlTag::Expire => {
                    let expired = self.engine().update(&due.key, |current| match current {
                        Some(rec) if rec.exists() && rec.is_expired(now) => {
                            let stamp = self.stamp_after(Some(rec));
                            let applied = apply(current, &Op::Delete, stamp, now, self.limits())?;
                            Ok(Update { record: Some(applied.record), out: true })
                        }
                        _ => Ok(Update { record: None, out: false }),
                    })?;
                    report.expired += u64::from(expired);
                }
                TtlTag::Purge => report.purged += u64::from(self.engine().purge_tombstone(&due.key, now)?),
            }
            self.engine().drop_ttl_entry(&due)?;
        }
        report.trimmed = self.engine().trim_log()?;
        Ok(report)
    }
}

/// Runs [`Node::sweep_once`] every `interval` until the returned handle is aborted.
pub fn spawn(node: Arc<Node>, interval: Duration) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let n = node.clone();
            match tokio::task::spawn_blocking(move || n.sweep_once()).await {
                Ok(Ok(r)) if r != SweepReport::default() => {
                    tracing::debug!(expired = r.expired, purged = r.purged, trimmed = r.trimmed, "sweep")
                }
                Ok(Ok(_)) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, "sweep failed; will retry"),
                Err(e) => tracing::error!(error = %e, "sweep task panicked"),
            }
        }
    })
}
