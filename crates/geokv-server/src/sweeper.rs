//! The background sweeper: purges tombstones and expired keys once their grace period has
//! passed, and trims the change log. Reads never depend on it (an expired key reads as absent
//! at once, and a write to it starts a new lifetime); it reclaims space.
//!
//! Expiry writes nothing: turning an expired key into a delete stamped "now" could hide a newer
//! write another replica accepted after the deadline. The expired state is kept, like a
//! tombstone, for `storage.tombstone_grace_secs`, so an older copy arriving late cannot bring
//! the key back, and then removed.

use std::sync::Arc;
use std::time::Duration;

use crate::node::{Node, NodeError};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SweepReport {
    /// Tombstones and expired keys removed for good.
    pub purged: u64,
    /// Keys that could not be handled (corrupt values, storage errors); retried next sweep.
    pub errors: u64,
    /// Change-log sequence numbers trimmed.
    pub trimmed: u64,
}

impl Node {
    /// One sweep over the TTL-index entries due now. An entry that fails is logged, counted
    /// and left for the next sweep; it does not stop the others.
    pub fn sweep_once(&self) -> Result<SweepReport, NodeError> {
        let now = self.now_ms();
        let mut report = SweepReport::default();
        for due in self.engine().due_ttl(now, self.sweep_batch)? {
            match self.engine().purge_if_due(&due.key, now) {
                Ok(purged) => {
                    report.purged += u64::from(purged);
                    self.engine().drop_ttl_entry(&due)?;
                }
                Err(e) => {
                    report.errors += 1;
                    tracing::warn!(key = %String::from_utf8_lossy(&due.key), error = %e, "sweep could not purge key");
                }
            }
        }
        report.trimmed = self.engine().trim_log()?;
        Ok(report)
    }
}

/// Runs [`Node::sweep_once`] every `interval` until the returned handle is aborted.
pub fn spawn(node: Arc<Node>, interval: Duration) -> tokio::task::JoinHandle<()> {
    tokio::spawn(tracing::Instrument::instrument(
        async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let n = node.clone();
                match crate::blocking::run(move || n.sweep_once()).await {
                    Ok(Ok(r)) if r != SweepReport::default() => {
                        tracing::debug!(purged = r.purged, errors = r.errors, trimmed = r.trimmed, "sweep")
                    }
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => tracing::warn!(error = %e, "sweep failed; will retry"),
                    Err(e) => tracing::error!(error = %e, "sweep task panicked"),
                }
            }
        },
        tracing::info_span!("sweeper"),
    ))
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};

    use geokv_core::Op;

    use super::*;
    use crate::{Clock, ServerConfig};

    struct ManualClock(AtomicU64);
    impl Clock for ManualClock {
        fn now_ms(&self) -> u64 {
            self.0.load(Ordering::SeqCst)
        }
    }

    #[test]
    fn expired_keys_and_tombstones_are_purged_after_the_grace_period() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = ServerConfig::new(1, dir.path().to_path_buf());
        cfg.storage.tombstone_grace_secs = 60;
        let start = crate::SystemClock.now_ms();
        let clock = Arc::new(ManualClock(AtomicU64::new(start)));
        let node = Node::open(&cfg, clock.clone()).unwrap();
        node.write(b"short", &Op::Put { value: b"v".to_vec(), ttl_ms: Some(1_000) }).unwrap();
        node.write(b"gone", &Op::Put { value: b"v".to_vec(), ttl_ms: None }).unwrap();
        node.write(b"gone", &Op::Delete).unwrap();
        node.write(b"long", &Op::Put { value: b"v".to_vec(), ttl_ms: None }).unwrap();

        clock.0.store(start + 1_000, Ordering::SeqCst);
        assert!(node.get(b"short", node.now_ms()).unwrap().is_none(), "reads hide expired keys at once");
        assert_eq!(node.sweep_once().unwrap().purged, 0, "kept for the grace period");
        assert!(node.engine().get(b"short").unwrap().is_some());

        // Tombstone grace runs from its HLC stamp (system clock, about `start`); expiry grace
        // from the deadline (start + 1 s).
        clock.0.store(start + 62_000, Ordering::SeqCst);
        let report = node.sweep_once().unwrap();
        assert_eq!((report.purged, report.errors), (2, 0));
        let marker = node.engine().get(b"short").unwrap().expect("an expired key leaves a marker");
        assert!(marker.is_marker() && marker.view(node.now_ms()).is_none(), "{marker:?}");
        assert!(node.engine().get(b"gone").unwrap().is_none());
        assert!(node.get(b"long", node.now_ms()).unwrap().is_some());
        // The marker goes one more grace period after the purge.
        clock.0.store(start + 1_000 + 119_000, Ordering::SeqCst);
        assert_eq!(node.sweep_once().unwrap().purged, 0);
        clock.0.store(start + 1_000 + 120_000, Ordering::SeqCst);
        assert_eq!(node.sweep_once().unwrap().purged, 1);
        assert!(node.engine().get(b"short").unwrap().is_none());
    }

    #[test]
    fn a_corrupt_key_does_not_stop_the_sweep() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = ServerConfig::new(1, dir.path().to_path_buf());
        cfg.storage.tombstone_grace_secs = 1;
        let start = crate::SystemClock.now_ms();
        let clock = Arc::new(ManualClock(AtomicU64::new(start)));
        let node = Node::open(&cfg, clock.clone()).unwrap();
        for k in [b"a".as_slice(), b"b"] {
            node.write(k, &Op::Put { value: b"v".to_vec(), ttl_ms: Some(10) }).unwrap();
        }
        node.engine().put_raw_for_test(b"a", b"garbage").unwrap();
        clock.0.store(start + 5_000, Ordering::SeqCst);
        let report = node.sweep_once().unwrap();
        assert_eq!((report.purged, report.errors), (1, 1));
        assert!(node.engine().get(b"b").unwrap().is_some_and(|r| r.is_marker()));
    }
}
