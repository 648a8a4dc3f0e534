//! `geokv server`.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use geokv_server::{serve, ServerConfig, SystemClock};

#[derive(clap::Args)]
pub struct ServerArgs {
    /// Configuration file (TOML); see topology/single-node.toml for every field.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Override `listen` (address:port; port 0 picks a free port).
    #[arg(long)]
    listen: Option<String>,
    /// Override `data_dir`.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Override `node_id`.
    #[arg(long)]
    node_id: Option<u64>,
    /// Override `metrics.listen`: serve Prometheus metrics and the status page here.
    #[arg(long)]
    metrics_listen: Option<String>,
}

pub async fn run(args: ServerArgs) -> anyhow::Result<()> {
    let mut cfg = match &args.config {
        Some(path) => ServerConfig::load(path)?,
        None => {
            let (Some(id), Some(dir)) = (args.node_id, args.data_dir.clone()) else {
                anyhow::bail!("give --config FILE, or at least --node-id and --data-dir");
            };
            ServerConfig::new(id, dir)
        }
    };
    if let Some(l) = args.listen {
        cfg.listen = l;
    }
    if let Some(d) = args.data_dir {
        cfg.data_dir = d;
    }
    if let Some(n) = args.node_id {
        cfg.node_id = n;
    }
    if let Some(m) = args.metrics_listen {
        cfg.metrics.listen = Some(m);
    }
    let origin =
        args.config.as_ref().map(|p| p.display().to_string()).unwrap_or_else(|| "command line".into());
    cfg.validate(&origin)?;
    let cfg_tls = cfg.tls.is_some();
    let server =
        serve(cfg, Arc::new(SystemClock)).await.map_err(anyhow::Error::msg).context("starting the node")?;
    // The bound address on stdout, for scripts and tests that asked for port 0.
    // The metrics line first: scripts that wait for "listening" then have both.
    if let Some(m) = server.metrics_addr {
        let scheme = if cfg_tls { "https" } else { "http" };
        println!("geokv metrics on {scheme}://{m}/metrics");
    }
    println!("geokv listening on {}", server.addr);
    std::io::stdout().flush()?;
    // Then, once the node votes in quorum reads (a node on a new data directory first
    // recovers its keys from its peers): scripts and tests that read at once wait for it.
    let cluster = server.cluster.clone();
    tokio::spawn(async move {
        if let Some(c) = cluster {
            c.serving_reads().await;
        }
        println!("geokv serving reads");
        let _ = std::io::stdout().flush();
    });
    wait_for_signal().await?;
    tracing::info!("shutting down: draining");
    server.drain().await.map_err(anyhow::Error::msg)?;
    Ok(())
}

async fn wait_for_signal() -> anyhow::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term.recv() => {},
    }
    Ok(())
}
