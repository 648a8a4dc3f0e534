//! `geokv demo`: three regions of three nodes each in this process (see `demo_cluster`), and a
//! scripted tour: the API, a write crossing regions, concurrent conflicting writes in every
//! region and their converged result, residency (a key kept in the EU, a key refused outside
//! us-east), a region cut off and healed, and the lag table.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use geokv_client::{proto, Client, ScanOptions};

use crate::demo_cluster::{DemoCluster, REGIONS};
use crate::output::entry_human;

pub async fn run(keep_running: bool, data_dir: Option<PathBuf>) -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let dir = data_dir.unwrap_or_else(|| tmp.path().to_path_buf());
    println!("geokv demo: starting 3 regions x 3 nodes on loopback, data in {}", dir.display());
    let cluster = DemoCluster::start(&dir).await?;
    for (region, _, [lon, lat]) in REGIONS {
        let eps: Vec<String> = cluster.in_region(region).map(|n| n.endpoint()).collect();
        println!("  {region:<13} ({lon:>7.2}, {lat:>6.2})  {}", eps.join("  "));
    }
    println!("WAN links are emulated, with one-way delays from the distances between the regions.");
    println!(
        "TLS is on on every port and link: certificates in {} (a CA, one per node, client \"demo\").\n",
        cluster.certs.display()
    );
    let result = tour_regions(&cluster).await;
    if let Err(e) = result {
        cluster.shutdown().await;
        return Err(e.context("the demo tour failed"));
    }
    if keep_running {
        let eu = cluster.in_region("eu-west").next().map(|n| n.endpoint()).unwrap_or_default();
        let us = cluster.in_region("us-east").next().map(|n| n.endpoint()).unwrap_or_default();
        let page = cluster.nodes[0].server.metrics_addr.map(|a| format!("https://{a}/")).unwrap_or_default();
        let certs = cluster.certs.display();
        println!(
            "\nThe cluster keeps running. Try:\n  export GEOKV_CA={certs}/ca.pem GEOKV_CERT={certs}/client-demo.pem GEOKV_KEY={certs}/client-demo.key\n  geokv --endpoint {eu} put greeting hi\n  geokv --endpoint {us} get greeting\n  geokv --endpoint {eu} status --watch\n  curl --cacert {certs}/ca.pem --cert {certs}/client-demo.pem --key {certs}/client-demo.key {page}status.json\n    (the status page is {page}, /metrics for Prometheus: HTTPS, for a certificate of the demo CA)\nPress Ctrl-C to stop."
        );
        tokio::signal::ctrl_c().await?;
    }
    cluster.shutdown().await;
    Ok(())
}

/// The tour's security step: a plaintext client and a read-only token, refused.
async fn security(cluster: &DemoCluster) -> anyhow::Result<()> {
    step("security: TLS on every port and link; principals get what their roles grant");
    let node = cluster.in_region("eu-west").next().context("an eu-west node")?;
    let plain = Client::connect(&format!("http://{}", node.server.addr)).await?;
    match plain.get(b"greeting").await {
        Err(e) if e.code() == Some(geokv_client::Code::Unauthenticated) => {
            println!("  a plaintext client is refused: Unauthenticated")
        }
        other => anyhow::bail!("a plaintext client was not refused: {other:?}"),
    }
    let security = geokv_client::Security::tls(geokv_tls::layout::ca_cert_path(&cluster.certs), None)
        .with_token(cluster.viewer_token.clone());
    let viewer = Client::connect_with(&node.endpoint(), &security).await?;
    let read = viewer.get(b"greeting").await?.map(|e| entry_human(&e)).unwrap_or_default();
    println!("  the viewer's token reads greeting: {read}");
    match viewer.put(b"greeting", b"defaced", None).await {
        Err(e) if e.code() == Some(geokv_client::Code::PermissionDenied) => {
            println!("  the viewer's put is refused: PermissionDenied")
        }
        other => anyhow::bail!("a read-only token was not refused a write: {other:?}"),
    }
    Ok(())
}

/// Polls `f` every 20 ms until it returns `Some`, for at most `limit`.
async fn poll<T, F, Fut>(limit: Duration, mut f: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Option<T>>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f().await? {
            return Ok(v);
        }
        anyhow::ensure!(Instant::now() < deadline, "not converged within {limit:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// What a region answers for the register, counter and set of the conflict step.
async fn values(c: &Client) -> anyhow::Result<String> {
    let show = |e: Option<proto::Entry>| e.map(|e| entry_human(&e)).unwrap_or_else(|| "(absent)".into());
    Ok(format!(
        "{} | {} | {}",
        show(c.get(b"winner").await?),
        show(c.get(b"likes").await?),
        show(c.get(b"visited").await?)
    ))
}

/// Waits until every region answers the same for the conflict keys; returns that answer.
async fn converged(clients: &[(&str, Client)]) -> anyhow::Result<String> {
    poll(Duration::from_secs(30), || async {
        let mut seen = Vec::new();
        for (_, c) in clients {
            seen.push(values(c).await?);
        }
        Ok(seen.windows(2).all(|w| w[0] == w[1]).then(|| seen[0].clone()))
    })
    .await
}

async fn tour_regions(cluster: &DemoCluster) -> anyhow::Result<()> {
    let mut clients = Vec::new();
    for (region, _, _) in REGIONS {
        clients.push((region, cluster.client(region).await?));
    }
    let eu = &clients[0].1;
    tour(eu).await?;

    step("a write in eu-west, read in the other regions");
    let started = Instant::now();
    eu.put(b"greeting", b"hello from Dublin", None).await?;
    for (region, c) in &clients[1..] {
        poll(Duration::from_secs(30), || async {
            Ok(c.get(b"greeting").await?.filter(|e| entry_human(e).contains("Dublin")).map(|_| ()))
        })
        .await?;
        println!("  visible in {region} after {} ms", started.elapsed().as_millis());
    }

    step("concurrent conflicting writes in all three regions");
    let writes = clients.iter().enumerate().map(|(i, (region, c))| async move {
        c.put(b"winner", format!("written in {region}").as_bytes(), None).await?;
        c.increment(b"likes", (i + 1) as i64, None).await?;
        c.set_add(b"visited", vec![region.as_bytes().to_vec()], None).await?;
        anyhow::Ok(())
    });
    for r in futures::future::join_all(writes).await {
        r?;
    }
    println!("  register | counter (1+2+3) | set, as every region reads it after convergence:");
    println!("  {}", converged(&clients).await?);
    println!("  (the register keeps the write with the highest HLC stamp; the counter sums; the set unites)");

    residency(cluster, &clients).await?;
    security(cluster).await?;

    step("ap-southeast cut off: both sides keep accepting writes");
    cluster.set_isolated("ap-southeast", true).await?;
    clients[2].1.increment(b"likes", 100, None).await?;
    clients[2].1.set_add(b"visited", vec![b"offline-in-singapore".to_vec()], None).await?;
    eu.increment(b"likes", 10, None).await?;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for (region, c) in &clients {
        println!("  {region:<13} {}", values(c).await?);
    }
    println!("\n{}", cluster.lag_table().await?);

    step("healed: the backlog drains and the regions converge");
    let healed = Instant::now();
    cluster.set_isolated("ap-southeast", false).await?;
    let value = converged(&clients).await?;
    println!("  converged in {} ms: {value}", healed.elapsed().as_millis());
    poll(Duration::from_secs(30), || async {
        let table = cluster.lag_table().await?;
        let drained = table.lines().skip(1).all(|l| l.split_whitespace().nth(3) == Some("0"));
        Ok(drained.then_some(table))
    })
    .await
    .map(|table| println!("\n{table}"))?;
    Ok(())
}

/// The residency step: a key kept in the EU, written and read through other regions, and a
/// key refused outside us-east.
async fn residency(cluster: &DemoCluster, clients: &[(&str, Client)]) -> anyhow::Result<()> {
    step("residency: eu:user: keys live only in the EU, us:phi: keys only in us-east");
    let (us, ap) = (&clients[1].1, &clients[2].1);
    ap.put(b"eu:user:alice", b"alice@example.eu", None).await?;
    let read = us.get(b"eu:user:alice").await?.map(|e| entry_human(&e)).unwrap_or_default();
    println!("  written through ap-southeast, read through us-east (both forwarded to eu-west): {read}");
    let node = cluster.in_region("us-east").next().context("a us-east node")?;
    let mut peer = cluster.peer_client(node).await?;
    let e = peer
        .explain_residency(proto::ExplainResidencyRequest { key: b"eu:user:alice".to_vec() })
        .await?
        .into_inner();
    let holders: Vec<String> = e
        .copies
        .iter()
        .filter(|c| c.has_state)
        .map(|c| format!("node {} ({})", c.node_id, c.region))
        .collect();
    println!(
        "  rule {:?} allows {}; copies on: {}",
        e.rule,
        e.allowed_regions.join(", "),
        holders.join(", ")
    );
    match clients[0].1.put(b"us:phi:bob", b"diagnosis", None).await {
        Ok(_) => anyhow::bail!("us:phi: keys must be refused outside us-east"),
        Err(err) => println!("  us:phi:bob written through eu-west is refused: {err}"),
    }
    Ok(())
}

fn step(title: &str) {
    println!("== {title}");
}

async fn tour(c: &Client) -> anyhow::Result<()> {
    step("the API, in eu-west: register put, get, append");
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
    // Two seconds: long enough to read it back on a loaded machine.
    c.put(b"session", b"token", Some(Duration::from_secs(2))).await?;
    println!("{}", entry_human(&c.get(b"session").await?.context("session vanished")?));
    tokio::time::sleep(Duration::from_millis(2200)).await;
    println!("after 2.2 s: {:?}", c.get(b"session").await?.map(|_| "present").unwrap_or("absent"));

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
