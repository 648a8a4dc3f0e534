//! `geokv demo`: a throwaway node on a free loopback port and a short tour of the API.
//!
//! This is the single-node demo; the multi-region cluster demo replaces it once cross-region
//! replication lands.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use geokv_client::{proto, Client, ScanOptions};
use geokv_server::{serve, ServerConfig, SystemClock};

use crate::output::entry_human;

pub async fn run(keep_running: bool, data_dir: Option<PathBuf>) -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let dir = data_dir.unwrap_or_else(|| tmp.path().join("node-1"));
    let mut cfg = ServerConfig::new(1, dir.clone());
    cfg.listen = "127.0.0.1:0".into();
    cfg.sweeper.interval_ms = 100;
    let server = serve(cfg, Arc::new(SystemClock)).await.map_err(anyhow::Error::msg)?;
    let endpoint = format!("http://{}", server.addr);
    println!("geokv demo: one node at {endpoint}, data in {}\n", dir.display());
    let c = Client::connect(&endpoint).await?;
    tour(&c).await.context("the demo tour failed")?;
    if keep_running {
        println!("\nThe node keeps running. Try:\n  geokv --endpoint {endpoint} get greeting\n  geokv --endpoint {endpoint} incr visits\nPress Ctrl-C to stop.");
        tokio::signal::ctrl_c().await?;
    }
    server.shutdown().await.map_err(anyhow::Error::msg)?;
    Ok(())
}

fn step(title: &str) {
    println!("== {title}");
}

async fn tour(c: &Client) -> anyhow::Result<()> {
    step("register: put, get, append");
    let put = c.put(b"greeting", b"hello", None).await?;
    println!("put greeting = \"hello\" -> version {}", crate::output::version_str(&put.version));
    c.append(b"greeting", b", world", None).await?;
    println!("{}", entry_human(&c.get(b"greeting").await?.context("greeting vanished")?));

    step("counter: increments merge, never overwrite");
    for d in [5, 3, -2] {
        let r = c.increment(b"visits", d, None).await?;
        println!("incr visits {d:+} -> {}", r.value);
    }

    step("set: add-wins OR-set");
    c.set_add(b"regions", vec![b"eu-west".to_vec(), b"us-east".to_vec(), b"ap-south".to_vec()], None).await?;
    c.set_remove(b"regions", vec![b"us-east".to_vec()]).await?;
    println!("{}", entry_human(&c.get(b"regions").await?.context("regions vanished")?));

    step("wrong type: a counter operation on a register");
    match c.increment(b"greeting", 1, None).await {
        Err(e) => println!("refused as expected: {e}"),
        Ok(_) => anyhow::bail!("an increment on a register was accepted"),
    }

    step("compare-and-swap on the version read");
    let cur = c.get(b"greeting").await?.context("greeting vanished")?;
    let ok = c.compare_and_swap(b"greeting", cur.version, b"bonjour", None).await?;
    let stale = c.compare_and_swap(b"greeting", cur.version, b"hola", None).await?;
    println!("first swap succeeded: {}, second (stale version) succeeded: {}", ok.succeeded, stale.succeeded);

    step("TTL: a key that expires");
    c.put(b"session", b"token", Some(Duration::from_millis(300))).await?;
    println!("{}", entry_human(&c.get(b"session").await?.context("session vanished")?));
    tokio::time::sleep(Duration::from_millis(400)).await;
    println!("after 400 ms: {:?}", c.get(b"session").await?.map(|_| "present").unwrap_or("absent"));

    step("scan: keys in order");
    let all = c.scan_all(&ScanOptions { limit: 2, ..Default::default() }).await?;
    for e in &all {
        println!("  {}", entry_human(e));
    }
    let consistency = proto::Consistency::All;
    let _ = c.clone().with_consistency(consistency).get(b"visits").await?;
    println!("\n(every request also takes a consistency level: ONE, QUORUM or ALL)");
    Ok(())
}
