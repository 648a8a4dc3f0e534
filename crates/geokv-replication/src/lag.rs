//! The sender's accounting for one destination region: batches in flight (sent, not yet
//! acknowledged), the acknowledged cursor, and the figures operators read as lag.

use std::collections::VecDeque;

#[derive(Clone, Debug)]
struct InFlight {
    last_seq: u64,
    /// Stamp time (ms) of the oldest delta in the batch.
    oldest_ms: u64,
    deltas: u64,
}

/// Figures of one (origin, destination) pair as this node sees them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LagReport {
    /// Change-log position acknowledged by the destination.
    pub acked_seq: u64,
    /// Newest committed change-log position here.
    pub committed_seq: u64,
    /// Age (ms) of the oldest change not yet acknowledged; 0 when caught up.
    pub oldest_unacked_ms: u64,
    /// Change-log entries not yet acknowledged (an upper bound on deltas: entries of keys
    /// changed several times, and repairs, are not all shipped).
    pub backlog_entries: u64,
    pub batches_sent: u64,
    pub deltas_sent: u64,
    pub deltas_acked: u64,
    pub raw_bytes: u64,
    pub wire_bytes: u64,
    pub resends: u64,
}

/// The lag history keeps one point per step of this many ms (the worst lag sampled in it)...
pub const HISTORY_STEP_MS: u64 = 10_000;
/// ...over this window.
pub const HISTORY_WINDOW_MS: u64 = 3_600_000;

/// A pair's lag over the last [`HISTORY_WINDOW_MS`], for plots: one point per step of
/// [`HISTORY_STEP_MS`] in which a sample was taken, the worst sample of the step.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LagHistory {
    /// (start of the step in unix ms, lag ms), oldest first.
    points: VecDeque<(u64, u64)>,
}

impl LagHistory {
    pub fn record(&mut self, now_ms: u64, lag_ms: u64) {
        let step = now_ms - now_ms % HISTORY_STEP_MS;
        match self.points.back_mut() {
            Some((at, lag)) if *at == step => *lag = (*lag).max(lag_ms),
            // A clock that went back: the sample joins the newest step.
            Some((at, lag)) if *at > step => *lag = (*lag).max(lag_ms),
            _ => self.points.push_back((step, lag_ms)),
        }
        while self.points.front().is_some_and(|(at, _)| at + HISTORY_WINDOW_MS <= step) {
            self.points.pop_front();
        }
    }

    /// The points, oldest first.
    pub fn points(&self) -> Vec<(u64, u64)> {
        self.points.iter().copied().collect()
    }
}

/// The histories of several nodes of one origin as one: the worst lag of each step.
pub fn worst_of(histories: impl IntoIterator<Item = Vec<(u64, u64)>>) -> Vec<(u64, u64)> {
    let mut steps = std::collections::BTreeMap::new();
    for (at, lag) in histories.into_iter().flatten() {
        let worst = steps.entry(at).or_insert(0);
        *worst = lag.max(*worst);
    }
    steps.into_iter().collect()
}

#[derive(Clone, Debug, Default)]
pub struct Outbox {
    in_flight: VecDeque<InFlight>,
    history: LagHistory,
    report: LagReport,
    /// Stamp time of the oldest change past the last acknowledged batch that is not yet in
    /// a batch (a change waiting behind a cut link).
    waiting_since_ms: Option<u64>,
}

impl Outbox {
    /// Starts from the saved cursor.
    pub fn new(acked_seq: u64) -> Outbox {
        Outbox { report: LagReport { acked_seq, ..Default::default() }, ..Default::default() }
    }

    /// Where the next batch starts: after the last batch sent (or the cursor).
    pub fn next_seq(&self) -> u64 {
        self.in_flight.back().map(|b| b.last_seq).unwrap_or(self.report.acked_seq)
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// The `last_seq` of the oldest batch in flight: the only acknowledgement that may come
    /// next (any other means a batch was lost on the way).
    pub fn expected_ack(&self) -> Option<u64> {
        self.in_flight.front().map(|b| b.last_seq)
    }

    pub fn committed(&mut self, seq: u64) {
        self.report.committed_seq = self.report.committed_seq.max(seq);
    }

    /// A change not batched yet (its stamp time), for the age of the backlog.
    pub fn waiting(&mut self, stamp_ms: u64) {
        self.waiting_since_ms = Some(self.waiting_since_ms.map_or(stamp_ms, |w| w.min(stamp_ms)));
    }

    pub fn sent(&mut self, last_seq: u64, oldest_ms: u64, deltas: u64, raw: u64, wire: u64) {
        self.in_flight.push_back(InFlight { last_seq, oldest_ms, deltas });
        self.waiting_since_ms = None;
        let r = &mut self.report;
        r.batches_sent += 1;
        r.deltas_sent += deltas;
        r.raw_bytes += raw;
        r.wire_bytes += wire;
    }

    /// The destination acknowledged every batch up to `last_seq`; returns the new cursor.
    pub fn acked(&mut self, last_seq: u64) -> u64 {
        self.acked_batches(last_seq).0
    }

    /// Like [`Outbox::acked`], and also returns the stamp time (ms) of the oldest change in
    /// the batches this acknowledgement covers (for delivery-time figures).
    pub fn acked_batches(&mut self, last_seq: u64) -> (u64, Option<u64>) {
        let mut oldest: Option<u64> = None;
        while self.in_flight.front().is_some_and(|b| b.last_seq <= last_seq) {
            let b = self.in_flight.pop_front().expect("checked");
            self.report.deltas_acked += b.deltas;
            oldest = Some(oldest.map_or(b.oldest_ms, |o| o.min(b.oldest_ms)));
        }
        self.report.acked_seq = self.report.acked_seq.max(last_seq);
        (self.report.acked_seq, oldest)
    }

    /// The batches in flight are given up (lost, or the stream broke): they are sent again
    /// from the cursor.
    pub fn rewind(&mut self) {
        self.report.resends += self.in_flight.len() as u64;
        self.in_flight.clear();
    }

    /// Records the lag now in the history.
    pub fn sample(&mut self, now_ms: u64) {
        let lag = self.report(now_ms).oldest_unacked_ms;
        self.history.record(now_ms, lag);
    }

    pub fn history(&self) -> &LagHistory {
        &self.history
    }

    pub fn report(&self, now_ms: u64) -> LagReport {
        let oldest = self.in_flight.iter().map(|b| b.oldest_ms).chain(self.waiting_since_ms).min();
        LagReport {
            oldest_unacked_ms: oldest.map_or(0, |o| now_ms.saturating_sub(o)),
            backlog_entries: self.report.committed_seq.saturating_sub(self.report.acked_seq),
            ..self.report.clone()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_history_keeps_the_worst_lag_of_each_step_over_the_last_hour() {
        let mut h = LagHistory::default();
        h.record(1_000, 5);
        h.record(9_999, 40);
        h.record(10_000, 7);
        assert_eq!(h.points(), vec![(0, 40), (10_000, 7)]);
        // An hour later the first step is gone, the second one stays until its hour is over.
        h.record(HISTORY_WINDOW_MS + 5_000, 1);
        assert_eq!(h.points(), vec![(10_000, 7), (HISTORY_WINDOW_MS, 1)]);
        assert_eq!(worst_of([vec![(0, 3), (10, 9)], vec![(10, 4), (20, 1)]]), vec![(0, 3), (10, 9), (20, 1)]);
    }

    #[test]
    fn lag_is_the_age_of_the_oldest_unacknowledged_change() {
        let mut o = Outbox::new(5);
        o.committed(9);
        assert_eq!(o.next_seq(), 5);
        o.sent(7, 1_000, 2, 500, 100);
        o.sent(9, 1_010, 2, 500, 100);
        assert_eq!(o.next_seq(), 9);
        let r = o.report(1_050);
        assert_eq!((r.oldest_unacked_ms, r.backlog_entries, r.wire_bytes), (50, 4, 200));
        assert_eq!(o.acked_batches(7), (7, Some(1_000)), "the acked batch's oldest change");
        assert_eq!(o.report(1_050).oldest_unacked_ms, 40);
        o.acked(9);
        let r = o.report(1_050);
        assert_eq!((r.oldest_unacked_ms, r.backlog_entries, r.deltas_acked), (0, 0, 4));
    }

    #[test]
    fn a_cut_link_shows_growing_lag_and_a_rewind_resends() {
        let mut o = Outbox::new(0);
        o.committed(3);
        o.waiting(500);
        assert_eq!(o.report(2_500).oldest_unacked_ms, 2_000);
        o.sent(3, 500, 3, 10, 5);
        o.rewind();
        assert_eq!(o.next_seq(), 0, "resent from the cursor");
        assert_eq!(o.report(0).resends, 1);
    }
}
