//! Monitoring with real `geokv` processes: the metrics endpoint (checked by `promtool check
//! metrics`), replication-lag metrics under an injected WAN delay, a cut and a heal, the
//! status page (rendered by headless Chromium when installed) and `geokv status`, request
//! metrics and ids, hot keys, and the alert rules (`promtool check rules` / `test rules`).
//!
//! promtool and Chromium are optional locally; CI sets GEOKV_REQUIRE_PROMTOOL=1 and
//! GEOKV_REQUIRE_CHROMIUM=1 so their checks cannot be skipped there.

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use geokv_proto::v1 as pb;
use pb::cluster_client::ClusterClient;
use support::{metric, wait_until, ServerProcess, TestCluster, THREE_REGIONS};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// GET `path` over HTTP/1.0; the status code and body.
async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect to the metrics port");
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.unwrap();
    let text = String::from_utf8(raw).expect("utf-8 response");
    let (head, body) = text.split_once("\r\n\r\n").expect("headers end");
    let code = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).expect("status line");
    (code, body.to_string())
}

async fn scrape(addr: SocketAddr) -> String {
    let (code, body) = http_get(addr, "/metrics").await;
    assert_eq!(code, 200, "{body}");
    body
}

fn pair(to: &str) -> [(&str, &str); 2] {
    [("origin", "eu-west"), ("destination", to)]
}

fn required(var: &str) -> bool {
    std::env::var(var).is_ok_and(|v| v == "1")
}

/// Runs `program args` with `stdin`; None when the program is not installed (allowed unless
/// `require_var` is set).
fn run_tool(
    program: &str,
    args: &[&str],
    stdin: &str,
    require_var: &str,
    dir: &Path,
) -> Option<(bool, String)> {
    let child = Command::new(program)
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) if !required(require_var) => {
            eprintln!("skipping the {program} check: {e} (set {require_var}=1 to require it)");
            return None;
        }
        Err(e) => panic!("{program} is required ({require_var}=1) but cannot run: {e}"),
    };
    use std::io::Write;
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    Some((out.status.success(), text))
}

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().parent().unwrap()
}

async fn set_link(cluster: &TestCluster, i: usize, to: &str, f: impl Fn(&mut pb::LinkSettings)) {
    let mut c = ClusterClient::connect(format!("http://{}", cluster.peer_addrs[i])).await.unwrap();
    let status = c.replication_status(pb::ReplicationStatusRequest {}).await.unwrap().into_inner();
    let mut link = status.destinations.iter().find(|d| d.destination == to).unwrap().link.unwrap();
    f(&mut link);
    c.set_link(pb::SetLinkRequest { destination: to.into(), link: Some(link) }).await.unwrap();
}

/// `geokv --json status --peer ADDR`, parsed.
fn status_json(peer: SocketAddr) -> serde_json::Value {
    let out = Command::new(support::BIN)
        .args(["--json", "status", "--peer", &peer.to_string()])
        .output()
        .expect("run geokv status");
    assert!(out.status.success(), "geokv status failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("geokv status --json prints JSON")
}

fn lag_cell<'a>(status: &'a serde_json::Value, from: &str, to: &str) -> &'a serde_json::Value {
    status["lags"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["origin"] == from && c["destination"] == to)
        .expect("a cell per region pair")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lag_metrics_follow_an_injected_delay_a_cut_and_a_heal() {
    let cluster = TestCluster::start_regions(&THREE_REGIONS, 1, 1);
    let (eu, eu_metrics) = (0, cluster.nodes[0].metrics_addr.expect("metrics endpoint"));
    set_link(&cluster, eu, "us-east", |l| (l.delay_ms, l.jitter_ms) = (300, 0)).await;
    set_link(&cluster, eu, "ap-southeast", |l| (l.delay_ms, l.jitter_ms) = (0, 0)).await;

    // A steady write load in eu-west: 50 writes per second.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (client, stop) = (cluster.client(eu).await, stop.clone());
        tokio::spawn(async move {
            let mut written = 0u64;
            while !stop.load(Ordering::Relaxed) {
                if client.put(format!("k{}", written % 500).as_bytes(), b"v", None).await.is_ok() {
                    written += 1;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            written
        })
    };

    // 1. Delay: every batch to us-east arrives after at least 300 ms, to ap-southeast fast.
    let count =
        |t: &str, to: &str| metric(t, "geokv_replication_delivery_seconds_count", &pair(to)).unwrap_or(0.0);
    let delivered = wait_until(Duration::from_secs(60), || async {
        let t = scrape(eu_metrics).await;
        count(&t, "us-east") >= 20.0 && count(&t, "ap-southeast") >= 20.0
    })
    .await;
    assert!(delivered, "batches were delivered to both regions");
    let (mut lag_us, mut lag_ap) = (0f64, 0f64);
    for _ in 0..10 {
        let t = scrape(eu_metrics).await;
        lag_us = lag_us.max(metric(&t, "geokv_replication_lag_seconds", &pair("us-east")).unwrap());
        lag_ap = lag_ap.max(metric(&t, "geokv_replication_lag_seconds", &pair("ap-southeast")).unwrap());
        tokio::time::sleep(Duration::from_millis(57)).await;
    }
    let t = scrape(eu_metrics).await;
    let bucket = |to: &str, le: &str| {
        let [o, d] = pair(to);
        metric(&t, "geokv_replication_delivery_seconds_bucket", &[o, d, ("le", le)]).unwrap()
    };
    let last_us = metric(&t, "geokv_replication_last_delivery_seconds", &pair("us-east")).unwrap();
    let last_ap = metric(&t, "geokv_replication_last_delivery_seconds", &pair("ap-southeast")).unwrap();
    let (n_us, n_ap) = (count(&t, "us-east"), count(&t, "ap-southeast"));
    eprintln!(
        "delay 300 ms: us-east last delivery {last_us:.3} s, max lag {lag_us:.3} s, {n_us} batches; \
         ap-southeast last delivery {last_ap:.3} s, max lag {lag_ap:.3} s, {n_ap} batches ({} within 0.1 s)",
        bucket("ap-southeast", "0.1")
    );
    assert!(last_us >= 0.3, "the delayed pair's delivery time reads at least the delay: {last_us}");
    assert_eq!(bucket("us-east", "0.25"), 0.0, "no batch to us-east arrived in under 250 ms");
    assert!(bucket("us-east", "0.3") <= n_us / 2.0, "the median delivery to us-east is over 300 ms");
    assert!(lag_us >= 0.25, "the lag gauge of the delayed pair reads about the delay: {lag_us}");
    assert!(last_ap < 0.3 && lag_ap < 0.3, "the undelayed pair stays low: {last_ap} / {lag_ap}");
    assert!(bucket("ap-southeast", "0.2") >= 0.9 * n_ap, "most deliveries to ap-southeast are fast");
    let lint = run_tool("promtool", &["check", "metrics"], &t, "GEOKV_REQUIRE_PROMTOOL", repo());
    if let Some((ok, out)) = lint {
        assert!(ok, "promtool check metrics found problems in a live scrape:\n{out}");
    }

    // 2. Cut: lag grows with time, backlog with writes; the link reads down.
    set_link(&cluster, eu, "ap-southeast", |l| l.cut = true).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let t = scrape(eu_metrics).await;
    let lag0 = metric(&t, "geokv_replication_lag_seconds", &pair("ap-southeast")).unwrap();
    let backlog0 = metric(&t, "geokv_replication_backlog_entries", &pair("ap-southeast")).unwrap();
    let grew = wait_until(Duration::from_secs(30), || async {
        let t = scrape(eu_metrics).await;
        let lag = metric(&t, "geokv_replication_lag_seconds", &pair("ap-southeast")).unwrap();
        let backlog = metric(&t, "geokv_replication_backlog_entries", &pair("ap-southeast")).unwrap();
        lag >= lag0 + 1.5 && backlog >= backlog0 + 50.0
    })
    .await;
    let t = scrape(eu_metrics).await;
    let lag1 = metric(&t, "geokv_replication_lag_seconds", &pair("ap-southeast")).unwrap();
    let backlog1 = metric(&t, "geokv_replication_backlog_entries", &pair("ap-southeast")).unwrap();
    eprintln!("cut: lag {lag0:.2} s -> {lag1:.2} s, backlog {backlog0} -> {backlog1} entries");
    assert!(grew, "while cut, lag grows with time and backlog with writes");
    assert_eq!(metric(&t, "geokv_replication_link_up", &pair("ap-southeast")), Some(0.0));
    assert_eq!(metric(&t, "geokv_replication_link_up", &pair("us-east")), Some(1.0));
    let status = status_json(cluster.peer_addrs[eu]);
    let cell = lag_cell(&status, "eu-west", "ap-southeast");
    assert_eq!(cell["cut"], true, "{cell}");
    assert!(cell["lag_ms"].as_u64().unwrap() >= 1000, "{cell}");
    assert_eq!(status["nodes"].as_array().unwrap().len(), 3);
    status_page_shows_the_deployment(&cluster).await;

    // 3. Heal: lag and backlog drain to zero once writes stop.
    set_link(&cluster, eu, "ap-southeast", |l| l.cut = false).await;
    stop.store(true, Ordering::Relaxed);
    let written = writer.await.unwrap();
    let drained = wait_until(Duration::from_secs(60), || async {
        let t = scrape(eu_metrics).await;
        ["us-east", "ap-southeast"].iter().all(|to| {
            metric(&t, "geokv_replication_lag_seconds", &pair(to)) == Some(0.0)
                && metric(&t, "geokv_replication_backlog_entries", &pair(to)) == Some(0.0)
        })
    })
    .await;
    assert!(drained, "after the heal, lag and backlog return to zero ({written} writes)");
    let cell = lag_cell(&status_json(cluster.peer_addrs[eu]), "eu-west", "ap-southeast").clone();
    assert_eq!((cell["cut"].clone(), cell["lag_ms"].as_u64()), (serde_json::json!(false), Some(0)), "{cell}");
}

/// The status page lists every node and region pair; rendered by a real browser when one is
/// installed, checked as HTML otherwise.
async fn status_page_shows_the_deployment(cluster: &TestCluster) {
    let addr = cluster.nodes[1].metrics_addr.unwrap();
    let (code, html) = http_get(addr, "/").await;
    assert_eq!(code, 200);
    for node in 1..=3 {
        assert!(html.contains(&format!("<tr data-node=\"{node}\">")), "node {node} listed:\n{html}");
    }
    assert!(
        html.contains("class=bad data-pair=\"eu-west>ap-southeast\""),
        "the cut pair is flagged:\n{html}"
    );
    assert!(!html.contains("<script") && !html.contains("src="), "no scripts or external assets");
    assert!(html.contains(" UTC;"), "the gathering time is a date:\n{html}");
    // The cut pair's plot has the samples of the run, and its last point shows the lag.
    let plot = html.split("data-plot=\"eu-west&gt;ap-southeast\"").nth(1).expect("the cut pair's plot");
    let points: u64 = plot.split('"').nth(1).and_then(|n| n.parse().ok()).expect("data-points");
    assert!(points >= 1, "the cut pair's plot has points:\n{plot}");
    assert!(plot.split("</svg>").next().unwrap().contains("stroke=\"#c62828\""), "drawn as bad while cut");
    let url = format!("http://{addr}/");
    let args = ["--headless", "--no-sandbox", "--disable-gpu", "--dump-dom", url.as_str()];
    if let Some((ok, dom)) = run_tool("chromium-headless-shell", &args, "", "GEOKV_REQUIRE_CHROMIUM", repo())
    {
        assert!(ok, "chromium failed:\n{dom}");
        let rows = dom.matches("<tr data-node=").count();
        assert_eq!(rows, 3, "the browser's DOM has a row per node:\n{dom}");
        assert_eq!(dom.matches("data-pair=").count(), 6, "and a cell per region pair");
        assert!(dom.contains("<table id=\"lag\">"));
        // A lag plot per region pair, with the samples of the run so far; the map with every
        // region and a link per pair, the cut one coloured bad.
        assert_eq!(dom.matches("<svg class=\"lag-plot\"").count(), 6, "a plot per region pair:\n{dom}");
        assert!(dom.contains("<svg id=\"map\""), "the map:\n{dom}");
        assert_eq!(dom.matches("<g class=\"region\"").count(), 3, "every region on the map");
        assert_eq!(dom.matches("data-link=").count(), 3, "a link per pair of regions");
        assert!(
            dom.contains("class=\"link bad\" data-link=\"eu-west|ap-southeast\""),
            "the cut link is bad:\n{dom}"
        );
    }
}

#[tokio::test]
async fn requests_are_counted_by_code_and_carry_request_ids_and_hot_keys_surface() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path(), "[metrics]\nlisten = \"127.0.0.1:0\"\n");
    let metrics = server.metrics_addr.expect("metrics endpoint");
    let mut kv = pb::kv_client::KvClient::connect(server.endpoint()).await.unwrap();

    // A caller's request id comes back; a request without one gets a fresh id.
    let mut req = tonic::Request::new(pb::PutRequest {
        key: b"hot".to_vec(),
        value: b"v".to_vec(),
        ..Default::default()
    });
    req.metadata_mut().insert("x-request-id", "test-req-1".parse().unwrap());
    let resp = kv.put(req).await.unwrap();
    assert_eq!(resp.metadata().get("x-request-id").unwrap(), "test-req-1");
    let resp = kv.get(pb::GetRequest { key: b"hot".to_vec(), ..Default::default() }).await.unwrap();
    assert_eq!(resp.metadata().get("x-request-id").map(|v| v.len()), Some(16));
    let bad = kv.get(pb::GetRequest { key: b"x".to_vec(), consistency: 9 }).await.unwrap_err();
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);
    assert!(bad.metadata().get("x-request-id").is_some(), "errors carry the id too");

    for i in 0..300 {
        let key = if i % 3 == 0 { b"hot".to_vec() } else { format!("cold-{i}").into_bytes() };
        kv.get(pb::GetRequest { key, ..Default::default() }).await.unwrap();
    }
    let t = scrape(metrics).await;
    let gets =
        metric(&t, "geokv_requests_total", &[("op", "get"), ("consistency", "default"), ("code", "OK")]);
    assert_eq!(gets, Some(301.0));
    let invalid = metric(
        &t,
        "geokv_requests_total",
        &[("op", "get"), ("consistency", "invalid"), ("code", "INVALID_ARGUMENT")],
    );
    assert_eq!(invalid, Some(1.0));
    assert_eq!(metric(&t, "geokv_request_duration_seconds_count", &[("op", "put")]), Some(1.0));
    assert!(metric(&t, "geokv_storage_commit_seconds_count", &[]).unwrap() >= 1.0);
    assert!(metric(&t, "geokv_storage_bytes", &[("kind", "disk")]).unwrap() > 0.0);
    // The hot key shows up once its 10 s window closes, with the cold keys under it.
    let hot = wait_until(Duration::from_secs(30), || async {
        metric(&scrape(metrics).await, "geokv_hot_key_requests_per_second", &[("key", "hot")]).is_some()
    })
    .await;
    assert!(hot, "the hot key is reported");
    let t = scrape(metrics).await;
    let rate = metric(&t, "geokv_hot_key_requests_per_second", &[("key", "hot")]).unwrap();
    let rates: Vec<f64> = t
        .lines()
        .filter(|l| l.starts_with("geokv_hot_key_requests_per_second{"))
        .map(|l| l.rsplit_once(' ').unwrap().1.parse().unwrap())
        .collect();
    assert!(rates.len() <= 10, "at most 10 hot keys: {rates:?}");
    // 102 of the 302 requests were for "hot" (one each for the cold keys), normally all in the
    // first 10 s window; the hot key leads whatever the window caught.
    assert!(rates.iter().all(|&r| r <= rate), "the hot key is the hottest: {rate} of {rates:?}");
    assert!(rate >= 4.0, "most of its 102 requests fall in one 10 s window: {rate}/s");
    if let Some((ok, out)) = run_tool("promtool", &["check", "metrics"], &t, "GEOKV_REQUIRE_PROMTOOL", repo())
    {
        assert!(ok, "promtool check metrics:\n{out}");
    }
    let (code, page) = http_get(metrics, "/").await;
    assert_eq!(code, 200);
    assert!(page.contains("runs alone"), "{page}");
    assert_eq!(http_get(metrics, "/healthz").await, (200, "ok\n".to_string()));
}

#[test]
fn alert_rules_are_valid_and_fire_as_their_tests_say() {
    let dir = repo().join("deploy/prometheus");
    let checks: [&[&str]; 3] = [
        &["check", "rules", "alerts.yml"],
        &["test", "rules", "alerts.test.yml"],
        &["check", "config", "prometheus.yml"],
    ];
    for args in checks {
        if let Some((ok, out)) = run_tool("promtool", args, "", "GEOKV_REQUIRE_PROMTOOL", &dir) {
            assert!(ok, "promtool {args:?} failed:\n{out}");
        }
    }
}
