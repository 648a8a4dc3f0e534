//! Operating a node: the Prometheus registry, scrape-time collection, hot keys, the HTTP
//! endpoint and status page (`metrics/`), and the deployment status gathered for
//! `geokv status` and the page (`status.rs`).

pub mod metrics;
pub mod status;
