//! Hybrid-logical-clock stamps.

use serde::{Deserialize, Serialize};
use std::fmt;

use crate::NodeId;

/// A hybrid logical clock timestamp: a 64-bit NTP-format time (32 bits of seconds since the
/// Unix epoch, 32 bits of fraction, with the low bits used as a logical counter by uhlc) and
/// the id of the node that issued it. Stamps are unique (a node never issues the same time
/// twice) and totally ordered by `(time, node)`, so ties between nodes break by node id.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Stamp {
    /// NTP64 time (uhlc's representation).
    pub time: u64,
    /// Node that issued the stamp.
    pub node: NodeId,
}

impl Stamp {
    /// The bottom stamp: older than every real one.
    pub const ZERO: Stamp = Stamp { time: 0, node: 0 };

    pub fn new(time: u64, node: NodeId) -> Self {
        Stamp { time, node }
    }

    /// Converts a uhlc timestamp whose id was built from a [`NodeId`].
    pub fn from_uhlc(ts: &uhlc::Timestamp) -> Self {
        let id = ts.get_id().to_le_bytes();
        let mut node = [0u8; 8];
        node.copy_from_slice(&id[..8]);
        Stamp { time: ts.get_time().as_u64(), node: u64::from_le_bytes(node) }
    }

    /// The uhlc id for a node. Node ids are non-zero (validated in config).
    pub fn uhlc_id(node: NodeId) -> uhlc::ID {
        uhlc::ID::try_from(u128::from(node.max(1))).expect("non-zero id")
    }

    pub fn to_uhlc(self) -> uhlc::Timestamp {
        uhlc::Timestamp::new(uhlc::NTP64(self.time), Self::uhlc_id(self.node))
    }

    /// Wall-clock milliseconds since the Unix epoch encoded in the physical part.
    pub fn unix_millis(self) -> u64 {
        let secs = self.time >> 32;
        let frac = self.time & 0xFFFF_FFFF;
        secs * 1000 + ((frac * 1000) >> 32)
    }

    /// NTP64 time for a wall-clock instant in milliseconds since the Unix epoch.
    pub fn ntp_from_millis(ms: u64) -> u64 {
        let secs = ms / 1000;
        // Round up so that converting back with a floor gives the same millisecond.
        let frac = ((ms % 1000) << 32).div_ceil(1000);
        (secs << 32) | frac
    }
}

impl fmt::Display for Stamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.time, self.node)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uhlc_round_trip_keeps_time_and_node() {
        let s = Stamp::new(0x1234_5678_9abc_def0, 42);
        assert_eq!(Stamp::from_uhlc(&s.to_uhlc()), s);
    }

    #[test]
    fn millis_conversion_round_trips_to_the_millisecond() {
        for ms in [0u64, 1, 999, 1_700_000_000_123, 4_000_000_000_999] {
            assert_eq!(Stamp::new(Stamp::ntp_from_millis(ms), 1).unix_millis(), ms);
        }
    }

    #[test]
    fn ties_on_time_break_by_node() {
        assert!(Stamp::new(5, 1) < Stamp::new(5, 2));
        assert!(Stamp::new(4, 9) < Stamp::new(5, 1));
    }
}
