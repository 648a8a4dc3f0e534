//! Operating a node: the Prometheus registry, scrape-time collection, hot keys, the HTTP
//! endpoint and status page (`metrics/`), the deployment status gathered for
//! `geokv status` and the page (`status.rs`), and readiness (`health.rs`).

pub mod health;
pub mod metrics;
pub mod status;
