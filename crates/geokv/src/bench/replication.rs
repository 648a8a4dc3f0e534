//! What `geokv bench` measures of cross-region replication while it runs: the deltas the nodes
//! shipped (their `ReplicationStatus`), and the lag of probe keys written in one region and
//! read in another.

use std::time::{Duration, Instant};

use geokv_client::{proto, Client};
use hdrhistogram::Histogram;

/// Deltas, raw bytes and wire bytes shipped so far by the nodes at `peers` (to all regions,
/// by both tails), and the number of destination regions.
pub(super) async fn shipped(peers: &[String]) -> anyhow::Result<(u64, u64, u64, u64)> {
    let mut sum = (0, 0, 0, 0);
    for peer in peers {
        let mut c = crate::admin_conn::AdminConn::open(Some(peer)).await?;
        let s = c.replication_status(proto::ReplicationStatusRequest {}).await?;
        sum.3 = sum.3.max(s.destinations.len() as u64);
        for d in s.destinations {
            sum.0 += d.deltas_sent;
            sum.1 += d.raw_bytes;
            sum.2 += d.wire_bytes;
        }
    }
    Ok(sum)
}

/// Probes awaited at once: the polling is itself load on the measured cluster, so it is capped
/// (a probe due while the cap is reached is skipped).
const MAX_PROBES_IN_FLIGHT: usize = 4;
/// Pause between reads of one probe: the lag is measured to within this (plus one read).
const PROBE_POLL: Duration = Duration::from_millis(5);

/// Writes a probe key through `writer` every 1/`per_sec` seconds until `deadline` and reads
/// each through `reader` (another region) every [`PROBE_POLL`] until it is there. Returns the
/// lag histogram (µs from the write's acknowledgement to the first read that sees it) and how
/// many probes were not seen within 30 s (or whose write failed), and how many were skipped.
pub(super) async fn lag_probes(
    writer: Client,
    reader: Client,
    per_sec: f64,
    deadline: Instant,
) -> (Histogram<u64>, u64, u64) {
    let run = std::process::id();
    let mut skipped = 0;
    let every = Duration::from_secs_f64(1.0 / per_sec.max(0.1));
    let mut probes = tokio::task::JoinSet::new();
    let mut n = 0u64;
    let mut hist = Histogram::new_with_bounds(1, 60_000_000, 3).expect("bounds");
    let mut missed = 0;
    let mut settle = |done: Result<Option<Duration>, tokio::task::JoinError>| match done.ok().flatten() {
        Some(lag) => hist.saturating_record(lag.as_micros().max(1) as u64),
        None => missed += 1,
    };
    while Instant::now() < deadline {
        tokio::time::sleep(every).await;
        // Reap finished probes (the set holds only those in flight).
        while let Some(done) = probes.try_join_next() {
            settle(done);
        }
        if probes.len() >= MAX_PROBES_IN_FLIGHT {
            skipped += 1;
            continue;
        }
        let (writer, reader) = (writer.clone(), reader.clone());
        let key = format!("bench:lag:{run}:{n}").into_bytes();
        n += 1;
        probes.spawn(async move {
            writer.put(&key, b"probe", None).await.ok()?;
            let acked = Instant::now();
            while acked.elapsed() < Duration::from_secs(30) {
                if let Ok(Some(_)) = reader.get(&key).await {
                    return Some(acked.elapsed());
                }
                tokio::time::sleep(PROBE_POLL).await;
            }
            None
        });
    }
    while let Some(done) = probes.join_next().await {
        settle(done);
    }
    (hist, missed, skipped)
}
