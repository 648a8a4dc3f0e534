//! When a stored state may be removed for good: the sweeper's decision ([`plan`]), shared by
//! the RocksDB engine and the in-memory store.
//!
//! A tombstone is kept `grace` after its delete, an expired key `grace` after its deadline
//! (then replaced by a marker of the deadline, kept one more `grace`): until then an older
//! copy arriving late from another replica cannot bring the key back. A state is not purged
//! while a change-log tailer (another region) may not have shipped it yet.

use geokv_core::{Record, Stamp};

/// A state changed less than this before the oldest change a tailer has not consumed yet is
/// not purged (HLC times of one node's log entries are close to, not exactly, in log order).
pub const SHIP_MARGIN_MS: u64 = 60_000;

/// What the sweeper does with a state whose purge deadline may have come.
#[derive(Clone, Debug, PartialEq)]
pub enum Purge {
    /// Not yet: the deadline (Unix milliseconds) is later, or the key is visible again.
    NotDue(u64),
    /// A tailer may not have shipped the change yet: try again later.
    WaitForTailers,
    /// An expired key: replaced by this marker of its deadline.
    Marker(Box<Record>),
    /// Removed for good.
    Remove,
}

/// When `rec` may be purged (Unix milliseconds), with `grace_ms` of grace; `None`: never (a
/// live key without a TTL).
pub fn deadline(rec: &Record, grace_ms: u64) -> Option<u64> {
    if rec.is_marker() {
        // Kept one grace period after the purge that left it (which came a grace period
        // after the deadline).
        let deadline = Stamp::new(rec.horizon, 0).unix_millis();
        return Some(deadline.saturating_add(grace_ms.saturating_mul(2)));
    }
    if !rec.exists() {
        Some(rec.version().unix_millis().saturating_add(grace_ms))
    } else {
        rec.expiry.val.map(|deadline| deadline.saturating_add(grace_ms))
    }
}

/// What to do with `rec` at `now_ms`; `unshipped_since_ms` gives the HLC time (Unix
/// milliseconds) of the oldest change a tailer has not consumed (asked only once the deadline
/// has passed). `None`: nothing, ever (a live key without a TTL).
pub fn plan<E>(
    rec: &Record,
    now_ms: u64,
    grace_ms: u64,
    unshipped_since_ms: impl FnOnce() -> Result<Option<u64>, E>,
) -> Result<Option<Purge>, E> {
    let Some(deadline) = deadline(rec, grace_ms) else { return Ok(None) };
    if deadline > now_ms || rec.is_visible(now_ms) {
        return Ok(Some(Purge::NotDue(deadline)));
    }
    if unshipped_since_ms()?.is_some_and(|since| rec.version().unix_millis() + SHIP_MARGIN_MS >= since) {
        return Ok(Some(Purge::WaitForTailers));
    }
    Ok(Some(match rec.expired_marker(now_ms) {
        Some(marker) => Purge::Marker(Box::new(marker)),
        None => Purge::Remove,
    }))
}

#[cfg(test)]
mod tests {
    use geokv_core::{apply, Limits, Op};

    use super::*;

    const NOW: u64 = 1_700_000_000_000;
    const GRACE: u64 = 10_000;

    fn write(current: Option<&Record>, op: Op, at: u64) -> Record {
        let stamp = Stamp::new(Stamp::ntp_from_millis(at), 1);
        apply(current, &op, stamp, at, &Limits::default()).expect("applies").record
    }

    fn none() -> Result<Option<u64>, ()> {
        Ok(None)
    }

    #[test]
    fn a_live_key_without_a_ttl_is_never_purged() {
        let rec = write(None, Op::Put { value: b"v".to_vec(), ttl_ms: None }, NOW);
        assert_eq!(deadline(&rec, GRACE), None);
        assert_eq!(plan(&rec, NOW + 10 * GRACE, GRACE, none), Ok(None));
    }

    #[test]
    fn a_tombstone_is_removed_a_grace_period_after_its_delete_once_shipped() {
        let put = write(None, Op::Put { value: b"v".to_vec(), ttl_ms: None }, NOW);
        let gone = write(Some(&put), Op::Delete, NOW + 5);
        assert_eq!(plan(&gone, NOW + 5 + GRACE - 1, GRACE, none), Ok(Some(Purge::NotDue(NOW + 5 + GRACE))));
        assert_eq!(plan(&gone, NOW + 5 + GRACE, GRACE, none), Ok(Some(Purge::Remove)));
        let unshipped = || Ok::<_, ()>(Some(NOW + 5));
        assert_eq!(plan(&gone, NOW + 5 + GRACE, GRACE, unshipped), Ok(Some(Purge::WaitForTailers)));
        let shipped_long_ago = || Ok::<_, ()>(Some(NOW + 5 + SHIP_MARGIN_MS + 1));
        assert_eq!(plan(&gone, NOW + 5 + GRACE, GRACE, shipped_long_ago), Ok(Some(Purge::Remove)));
    }

    #[test]
    fn an_expired_key_leaves_a_marker_which_goes_one_grace_period_later() {
        let rec = write(None, Op::Put { value: b"v".to_vec(), ttl_ms: Some(100) }, NOW);
        let expired_at = NOW + 100;
        assert_eq!(deadline(&rec, GRACE), Some(expired_at + GRACE));
        let Ok(Some(Purge::Marker(marker))) = plan(&rec, expired_at + GRACE, GRACE, none) else {
            panic!("an expired key is replaced by a marker")
        };
        assert!(marker.is_marker() && !marker.is_visible(expired_at + GRACE));
        assert_eq!(deadline(&marker, GRACE), Some(expired_at + 2 * GRACE));
        assert_eq!(plan(&marker, expired_at + 2 * GRACE, GRACE, none), Ok(Some(Purge::Remove)));
    }

    #[test]
    fn the_tailers_are_asked_only_once_the_deadline_has_passed() {
        let rec = write(None, Op::Put { value: b"v".to_vec(), ttl_ms: Some(100) }, NOW);
        let fails = || Err::<Option<u64>, _>("unreadable cursors");
        assert_eq!(plan(&rec, NOW + 50, GRACE, fails), Ok(Some(Purge::NotDue(NOW + 100 + GRACE))));
        assert_eq!(plan(&rec, NOW + 100 + GRACE, GRACE, fails), Err("unreadable cursors"));
    }
}
