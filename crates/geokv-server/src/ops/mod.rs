//! Operating a node: the Prometheus registry, scrape-time collection, hot keys, the HTTP
//! endpoint and status page (`metrics/`), the deployment status gathered for
//! `geokv status` and the page (`status.rs`), readiness (`health.rs`), and checkpoints served to
//! backups (`backup.rs`).

pub mod backup;
pub mod health;
pub mod metrics;
pub mod status;

/// A unix time in milliseconds as a UTC date and time to the second ("2026-12-01 22:33:57 UTC"),
/// as operators read times.
pub fn utc_date(ms: u64) -> String {
    const FORMAT: &[time::format_description::FormatItem<'static>] =
        time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second] UTC");
    let at = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    at.format(FORMAT).unwrap_or_else(|_| format!("{ms} ms after the epoch"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn dates_are_utc_to_the_second() {
        assert_eq!(super::utc_date(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(super::utc_date(1_796_165_637_999), "2026-12-01 22:53:57 UTC");
    }
}
