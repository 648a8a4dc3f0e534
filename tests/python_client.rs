//! The Python client (`clients/python`) against real nodes: its unit tests against a region of
//! three, the same over TLS with a client certificate, and writes through it while the node it
//! talks to is killed (SIGKILL). CI installs grpcio and grpcio-tools and sets
//! GEOKV_REQUIRE_GRPCIO=1, so that a missing install fails instead of skipping.

mod support;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::{TestCluster, THREE_REGIONS};

fn client_dir() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../clients/python"))
}

/// Python able to run the client, with its stubs generated; None (the test skips) when
/// grpcio or grpcio-tools is missing and GEOKV_REQUIRE_GRPCIO is not set.
fn python() -> Option<String> {
    let py = std::env::var("GEOKV_PYTHON").unwrap_or_else(|_| "python3".into());
    let ok = Command::new(&py)
        .args(["-c", "import grpc, grpc_tools, grpc_status, google.protobuf"])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    let ok = ok && generated(&py);
    if !ok {
        assert!(
            std::env::var("GEOKV_REQUIRE_GRPCIO").is_err(),
            "GEOKV_REQUIRE_GRPCIO is set but {py} cannot import grpc, grpc_tools and grpc_status (pip install grpcio grpcio-tools grpcio-status)"
        );
        eprintln!("SKIPPED: {py} lacks grpcio/grpcio-tools/grpcio-status; set GEOKV_PYTHON or install them");
        return None;
    }
    Some(py)
}

/// Generates the stubs (once per test binary: the tests share the files) and imports them:
/// false when this grpcio cannot load what this grpcio-tools generated.
fn generated(py: &str) -> bool {
    static GENERATED: std::sync::Mutex<Option<bool>> = std::sync::Mutex::new(None);
    let mut done = GENERATED.lock().unwrap_or_else(|e| e.into_inner());
    *done.get_or_insert_with(|| {
        let out = Command::new(py).arg(client_dir().join("generate.py")).output().unwrap();
        assert!(out.status.success(), "generate.py: {}", String::from_utf8_lossy(&out.stderr));
        let import = Command::new(py)
            .args(["-c", "import geokv_client"])
            .env("PYTHONPATH", pythonpath())
            .output()
            .unwrap();
        if !import.status.success() {
            eprintln!("the generated stubs do not load: {}", String::from_utf8_lossy(&import.stderr));
        }
        import.status.success()
    })
}

/// clients/python before whatever PYTHONPATH already holds.
fn pythonpath() -> std::ffi::OsString {
    let mut paths = vec![client_dir()];
    if let Some(old) = std::env::var_os("PYTHONPATH") {
        paths.extend(std::env::split_paths(&old));
    }
    std::env::join_paths(paths).unwrap()
}

fn unittests(py: &str, endpoints: &[String], env: &[(&str, String)]) {
    let out = Command::new(py)
        .args(["-m", "unittest", "discover", "-v", "-s"])
        .arg(client_dir().join("tests"))
        .env("PYTHONPATH", pythonpath())
        .env("GEOKV_ENDPOINTS", endpoints.join(","))
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "the Python client's tests failed:\n{report}");
    // Every test ran: none skipped for want of endpoints.
    assert!(report.contains("\nOK") && !report.contains("skipped"), "{report}");
}

#[test]
fn the_python_clients_tests_pass_against_a_region() {
    let Some(py) = python() else { return };
    let c = TestCluster::start_region(3, 3, "");
    let endpoints: Vec<String> = c.nodes.iter().map(|n| n.endpoint()).collect();
    unittests(&py, &endpoints, &[]);
}

#[test]
fn the_python_client_speaks_tls_with_a_client_certificate() {
    let Some(py) = python() else { return };
    let c = TestCluster::start_regions_tls(&THREE_REGIONS[..1], 3, 3, "", None);
    let endpoints: Vec<String> = c.nodes.iter().map(|n| n.endpoint()).collect();
    assert!(endpoints[0].starts_with("https://"), "{endpoints:?}");
    let s = c.client_security();
    let path = |p: Option<PathBuf>| p.expect("a TLS test client has its files").display().to_string();
    unittests(
        &py,
        &endpoints,
        &[("GEOKV_TLS_CA", path(s.ca)), ("GEOKV_TLS_CERT", path(s.cert)), ("GEOKV_TLS_KEY", path(s.key))],
    );
}

#[test]
fn python_writes_complete_while_their_node_is_killed() {
    let Some(py) = python() else { return };
    let mut c = TestCluster::start_region(3, 3, "");
    let endpoints: Vec<String> = c.nodes.iter().map(|n| n.endpoint()).collect();
    let dir = tempfile::tempdir().unwrap();
    let stderr_path = dir.path().join("stderr");
    let mut child = Command::new(&py)
        .arg(client_dir().join("tests/kill_load.py"))
        .env("PYTHONPATH", pythonpath())
        .env("GEOKV_ENDPOINTS", endpoints.join(","))
        .env("GEOKV_OPS", "300")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&stderr_path).unwrap())
        .spawn()
        .unwrap();
    // The script's lines arrive on a thread, so that every wait has a deadline.
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            if tx.send(line.unwrap_or_default()).is_err() {
                break;
            }
        }
    });
    let stderr = || std::fs::read_to_string(&stderr_path).unwrap_or_default();
    let mut next_line = |what: &str, wait: Duration| match rx.recv_timeout(wait) {
        Ok(line) => line,
        Err(_) => {
            let _ = child.kill();
            panic!("the load script printed no {what} within {wait:?}; its stderr:\n{}", stderr())
        }
    };
    let first = next_line("ready", Duration::from_secs(90));
    assert_eq!(first, "ready", "{}", stderr());
    // The client talks to the first node: kill it under the load.
    c.nodes[0].kill9();
    let summary = next_line("summary", Duration::from_secs(180));
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "the load script did not exit: {summary}");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "checks failed: {summary}\n{}", stderr());
    let j: serde_json::Value = serde_json::from_str(&summary).unwrap();
    assert!(j["puts"].as_u64().unwrap() >= 350, "{j}");
    assert_eq!(j["missing"], 0, "{j}");
}
