//! Approximate hot-key detection: the Space-Saving algorithm (Metwally et al.) over fixed
//! windows. At most `capacity` keys are counted at once; when a new key arrives and the table
//! is full, it replaces the key with the smallest count and inherits that count (so a count
//! overestimates by at most the count it inherited, which is kept as `error`). Each finished
//! window's top keys, with their request rates, are what the metrics show, so the exported
//! label set is bounded by `top` and forgotten keys leave it.

use std::collections::HashMap;

#[derive(Clone, Copy, Debug)]
struct Slot {
    count: u64,
    error: u64,
}

/// A key of a finished window with its request rate (per second): a lower bound, the
/// requests counted since the key last entered the table.
#[derive(Clone, Debug, PartialEq)]
pub struct HotKey {
    pub key: Vec<u8>,
    pub per_second: f64,
}

pub struct HotKeys {
    capacity: usize,
    top: usize,
    window_ms: u64,
    started_ms: u64,
    slots: HashMap<Vec<u8>, Slot>,
    last: Vec<HotKey>,
}

impl HotKeys {
    pub fn new(capacity: usize, top: usize, window_ms: u64, now_ms: u64) -> HotKeys {
        HotKeys {
            capacity: capacity.max(top).max(1),
            top,
            window_ms: window_ms.max(1),
            started_ms: now_ms,
            slots: HashMap::new(),
            last: Vec::new(),
        }
    }

    /// Counts one request for `key` at `now_ms`.
    pub fn record(&mut self, key: &[u8], now_ms: u64) {
        self.roll(now_ms);
        if let Some(slot) = self.slots.get_mut(key) {
            slot.count += 1;
            return;
        }
        if self.slots.len() < self.capacity {
            self.slots.insert(key.to_vec(), Slot { count: 1, error: 0 });
            return;
        }
        let (victim, min) = self
            .slots
            .iter()
            .min_by_key(|(_, s)| s.count)
            .map(|(k, s)| (k.clone(), s.count))
            .expect("the table is full");
        self.slots.remove(&victim);
        self.slots.insert(key.to_vec(), Slot { count: min + 1, error: min });
    }

    /// The top keys of the last finished window, hottest first.
    pub fn hottest(&mut self, now_ms: u64) -> &[HotKey] {
        self.roll(now_ms);
        &self.last
    }

    fn roll(&mut self, now_ms: u64) {
        let elapsed = now_ms.saturating_sub(self.started_ms);
        if elapsed < self.window_ms {
            return;
        }
        // A window in which nothing was counted for long (an idle node) reports nothing.
        let seconds = self.window_ms as f64 / 1000.0;
        // Counts add up to every request of the window, so under an even load each slot holds
        // about total/capacity whatever its key: only keys whose guaranteed count (count minus
        // what it inherited) is above that share are hot, and the rate shown is that guaranteed
        // lower bound.
        let total: u64 = self.slots.values().map(|s| s.count).sum();
        let floor = total / self.capacity as u64;
        let mut ranked: Vec<(Vec<u8>, u64)> =
            self.slots.drain().map(|(k, s)| (k, s.count - s.error)).filter(|(_, g)| *g > floor).collect();
        ranked.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        self.last = if elapsed < 2 * self.window_ms {
            ranked
                .into_iter()
                .take(self.top)
                .map(|(key, guaranteed)| HotKey { key, per_second: guaranteed as f64 / seconds })
                .collect()
        } else {
            Vec::new()
        };
        self.started_ms = now_ms - elapsed % self.window_ms;
    }
}

pub use geokv_core::key_label;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hot_key_among_many_cold_ones_is_found_with_its_rate() {
        let mut hot = HotKeys::new(16, 3, 1000, 0);
        // 10,000 requests in one second: every 4th for "hot", the rest spread over 2,000 keys.
        for i in 0..10_000u64 {
            let key = if i % 4 == 0 { b"hot".to_vec() } else { format!("cold-{}", i % 2000).into_bytes() };
            hot.record(&key, i / 10);
        }
        let top = hot.hottest(1000).to_vec();
        assert_eq!(top[0].key, b"hot");
        let true_rate = 2500.0;
        assert!(top[0].per_second <= true_rate, "the guaranteed count never overestimates");
        assert!(top[0].per_second >= 0.9 * true_rate, "{}", top[0].per_second);
        assert_eq!(top.len(), 1, "cold keys are not reported: {top:?}");
    }

    #[test]
    fn an_even_load_has_no_hot_keys() {
        let mut hot = HotKeys::new(64, 10, 1000, 0);
        for i in 0..64_000u64 {
            hot.record(format!("k{}", i % 64_000).as_bytes(), i / 64);
        }
        assert!(hot.hottest(1000).is_empty(), "{:?}", hot.hottest(1000));
    }

    #[test]
    fn windows_roll_and_an_idle_node_reports_nothing() {
        let mut hot = HotKeys::new(8, 2, 1000, 0);
        hot.record(b"a", 10);
        hot.record(b"a", 20);
        hot.record(b"b", 30);
        assert!(hot.hottest(999).is_empty(), "the first window is not over");
        let top = hot.hottest(1500).to_vec();
        assert_eq!(top.iter().map(|h| h.key.as_slice()).collect::<Vec<_>>(), vec![&b"a"[..], b"b"]);
        assert_eq!(top[0].per_second, 2.0);
        assert!(hot.hottest(2100).is_empty(), "nothing counted in the second window");
        hot.record(b"c", 2200);
        assert!(hot.hottest(10_000).is_empty(), "a window that ended long ago is stale");
    }

    #[test]
    fn key_labels_are_printable_and_bounded() {
        assert_eq!(key_label(b"user:1", 10), "user:1");
        assert_eq!(key_label(b"a\nb\xff", 10), "a\\nb\\xff");
        assert_eq!(key_label("ééééé".as_bytes(), 3), "ééé...");
    }
}
