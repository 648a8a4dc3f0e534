//! Wall-clock time, injected so tests can control TTLs, and the HLC's physical clock with its
//! injected skew.
//!
//! uhlc takes its physical clock as a plain `fn`, so the skew of the HLC's clock is
//! process-wide: the config's `clock_offset_ms` plus, for fault injection (`InjectFaults`), an
//! offset and a drift. Nodes sharing a process (`geokv demo`, in-process tests) share it: tests
//! that skew one node's clock run one node per process.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::RwLock;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// Offset of the HLC's physical clock from the config (`ServerConfig::clock_offset_ms`).
static HLC_OFFSET_MS: AtomicI64 = AtomicI64::new(0);

/// The injected skew (`InjectFaults`), on top of the config's offset.
static FAULT_SKEW: RwLock<Option<Skew>> = RwLock::new(None);

/// A skewed clock: `offset_ms` ahead (negative: behind), gaining `drift_ppm` millionths of the
/// time elapsed since `since`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Skew {
    pub offset_ms: i64,
    pub drift_ppm: i64,
    pub since: Instant,
}

pub(crate) fn set_hlc_offset_ms(offset: i64) {
    HLC_OFFSET_MS.store(offset, Ordering::Relaxed);
}

/// Installs the injected skew of the HLC's clock (from now on), or removes it.
pub(crate) fn set_fault_skew(offset_ms: i64, drift_ppm: i64) {
    let skew =
        (offset_ms != 0 || drift_ppm != 0).then(|| Skew { offset_ms, drift_ppm, since: Instant::now() });
    *FAULT_SKEW.write().unwrap_or_else(std::sync::PoisonError::into_inner) = skew;
}

/// How far (nanoseconds, negative: behind) a clock offset by `config_offset_ms` and skewed by
/// `skew` is from the system clock, `elapsed_ns` after the skew was installed.
pub(crate) fn skew_nanos(config_offset_ms: i64, skew: Option<(i64, i64)>, elapsed_ns: u128) -> i128 {
    let (offset_ms, drift_ppm) = skew.unwrap_or((0, 0));
    let offset = (i128::from(config_offset_ms) + i128::from(offset_ms)) * 1_000_000;
    let elapsed = i128::try_from(elapsed_ns).unwrap_or(i128::MAX / 2_000_000);
    offset + i128::from(drift_ppm) * elapsed / 1_000_000
}

/// The HLC's physical clock: system time plus the config's offset and the injected skew.
pub(crate) fn hlc_physical_time() -> uhlc::NTP64 {
    let now = uhlc::system_time_clock();
    let config = HLC_OFFSET_MS.load(Ordering::Relaxed);
    let skew = *FAULT_SKEW.read().unwrap_or_else(std::sync::PoisonError::into_inner);
    if config == 0 && skew.is_none() {
        return now;
    }
    let elapsed = skew.map_or(0, |s| s.since.elapsed().as_nanos());
    let shift = skew_nanos(config, skew.map(|s| (s.offset_ms, s.drift_ppm)), elapsed);
    let magnitude = uhlc::NTP64::from(std::time::Duration::from_nanos(
        u64::try_from(shift.unsigned_abs()).unwrap_or(u64::MAX),
    ));
    if shift >= 0 {
        now + magnitude
    } else {
        now - magnitude
    }
}

/// Milliseconds since the Unix epoch.
pub trait Clock: Send + Sync + 'static {
    fn now_ms(&self) -> u64;
}

#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: u128 = 1_000_000_000;

    #[test]
    fn the_skew_is_the_offsets_plus_the_drift_accumulated_since_it_was_set() {
        assert_eq!(skew_nanos(0, None, 5 * SEC), 0);
        assert_eq!(skew_nanos(500, None, 5 * SEC), 500_000_000, "the config's offset alone");
        assert_eq!(skew_nanos(500, Some((2000, 0)), 0), 2_500_000_000, "offsets add up");
        assert_eq!(skew_nanos(0, Some((-2000, 0)), SEC), -2_000_000_000);
        // 1,000 ppm gains 1 ms per second; after 10 s, 10 ms.
        assert_eq!(skew_nanos(0, Some((0, 1000)), 10 * SEC), 10_000_000);
        assert_eq!(skew_nanos(0, Some((100, -1000)), 10 * SEC), 90_000_000);
        // The extremes the RPC accepts (a day, 1,000,000 ppm) over a year do not overflow.
        let year = 365 * 24 * 3600 * SEC;
        assert_eq!(
            skew_nanos(86_400_000, Some((86_400_000, 1_000_000)), year),
            (2 * 86_400 + 365 * 86_400) * SEC as i128
        );
    }
}
