//! `geokv health`: asks a node's standard gRPC health service whether it is ready for client
//! traffic (no credentials needed, TLS trust only), for container health checks and scripts.
//! Exit status 0 when SERVING, 1 when the node answers another status, and the CLI's statuses
//! for errors (5 when it cannot be reached: docs/api.md, "The command line"), the status or
//! the error on stderr.

pub async fn run(endpoint: &str, service: &str) -> anyhow::Result<()> {
    let mut security = crate::client_cmd::security();
    // Health takes no credentials: only the trust in the node's certificate matters.
    security.cert = None;
    security.key = None;
    security.token = None;
    let channel = geokv_client::grpc::channel(endpoint, &security).await?;
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let status = health
        .check(tonic_health::pb::HealthCheckRequest { service: service.to_string() })
        .await?
        .into_inner()
        .status();
    match status {
        tonic_health::pb::health_check_response::ServingStatus::Serving => {
            println!("SERVING");
            Ok(())
        }
        other => anyhow::bail!("{endpoint} is {}", other.as_str_name()),
    }
}
