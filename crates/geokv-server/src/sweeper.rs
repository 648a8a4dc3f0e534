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

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};

    use super::*;
    use crate::{Clock, ServerConfig};

    struct ManualClock(AtomicU64);
    impl Clock for ManualClock {
        fn now_ms(&self) -> u64 {
            self.0.load(Ordering::SeqCst)
        }
    }

    #[test]
    fn expired_keys_become_tombstones_and_tombstones_are_purged_after_the_grace_period() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = ServerConfig::new(1, dir.path().to_path_buf());
        cfg.storage.tombstone_grace_secs = 60;
        let start = crate::SystemClock.now_ms();
        let clock = Arc::new(ManualClock(AtomicU64::new(start)));
        let node = Node::open(&cfg, clock.clone()).unwrap();
        node.write(b"short", &Op::Put { value: b"v".to_vec(), ttl_ms: Some(1_000) }).unwrap();
        node.write(b"long", &Op::Put { value: b"v".to_vec(), ttl_ms: None }).unwrap();

        assert_eq!(node.sweep_once().unwrap().expired, 0, "nothing is due yet");
        clock.0.store(start + 1_000, Ordering::SeqCst);
        assert!(node.get(b"short").unwrap().is_none(), "reads hide expired keys before any sweep");
        assert_eq!(node.sweep_once().unwrap().expired, 1);
        let tomb = node.engine().get(b"short").unwrap().expect("a tombstone is kept");
        assert!(!tomb.exists());

        // The grace period runs from the tombstone's HLC stamp, which follows the system clock
        // (uhlc takes a plain fn as its clock), i.e. from about `start`.
        clock.0.store(start + 30_000, Ordering::SeqCst);
        assert_eq!(node.sweep_once().unwrap().purged, 0, "grace period not over");
        clock.0.store(start + 120_000, Ordering::SeqCst);
        assert_eq!(node.sweep_once().unwrap().purged, 1);
        assert!(node.engine().get(b"short").unwrap().is_none());
        assert!(node.get(b"long").unwrap().is_some());
    }
}
