//! Wall-clock time, injected so tests can control TTLs.

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Offset of the HLC's physical clock, for fault injection (see `ServerConfig::clock_offset_ms`).
/// Process-wide: uhlc takes a plain function as its clock.
static HLC_OFFSET_MS: AtomicI64 = AtomicI64::new(0);

pub(crate) fn set_hlc_offset_ms(offset: i64) {
    HLC_OFFSET_MS.store(offset, Ordering::Relaxed);
}

/// The HLC's physical clock: system time plus the injected offset.
pub(crate) fn hlc_physical_time() -> uhlc::NTP64 {
    let now = uhlc::system_time_clock();
    let offset = HLC_OFFSET_MS.load(Ordering::Relaxed);
    if offset == 0 {
        return now;
    }
    let shift = uhlc::NTP64::from(std::time::Duration::from_millis(offset.unsigned_abs()));
    if offset > 0 {
        now + shift
    } else {
        now - shift
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
