//! Clients other than the Rust library: the `geokv` CLI, and a generic gRPC client (Python
//! grpcio) that knows nothing of geokv but what server reflection tells it.

mod support;

use std::process::Command;

use support::{ServerProcess, BIN};

fn cli(endpoint: &str, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(BIN).arg("--endpoint").arg(endpoint).args(args).output().expect("run geokv CLI");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

#[test]
fn cli_commands_round_trip_with_human_and_json_output() {
    let dir = tempfile::tempdir().unwrap();
    let s = ServerProcess::start(dir.path(), "");
    let ep = s.endpoint();
    let ok = |args: &[&str]| {
        let (ok, out, err) = cli(&ep, args);
        assert!(ok, "geokv {args:?} failed: {err}");
        out
    };
    assert!(ok(&["put", "greeting", "hello", "--ttl", "1h"]).starts_with("OK (version "));
    assert!(ok(&["get", "greeting"]).contains("\"hello\""));
    let j: serde_json::Value = serde_json::from_str(&ok(&["--json", "get", "greeting"])).unwrap();
    assert_eq!(j["value"]["type"], "register");
    assert_eq!(j["value"]["value"], "hello");
    assert!(j["ttl_remaining_ms"].as_u64().unwrap() > 3_000_000);
    assert_eq!(ok(&["append", "greeting", "!"]).trim(), "length 6");
    assert_eq!(ok(&["incr", "n", "5"]).trim(), "5");
    assert_eq!(ok(&["incr", "n", "-7"]).trim(), "-2");
    // With a request id, running the same command again counts once.
    let id = ["--request-id", "00112233445566778899aabbccddeeff"];
    assert_eq!(ok(&["incr", "n", "3", id[0], id[1]]).trim(), "1");
    assert_eq!(ok(&["incr", "n", "3", id[0], id[1]]).trim(), "1");
    let (success, _, err) = cli(&ep, &["incr", "n", "4", id[0], id[1]]);
    assert!(!success && err.contains("already applied"), "{err}");
    let (success, _, err) = cli(&ep, &["incr", "n", "--request-id", "12ab"]);
    assert!(!success && err.contains("32 hex digits"), "{err}");
    assert_eq!(ok(&["sadd", "s", "a", "b"]).trim(), "changed 2, size 2");
    assert_eq!(ok(&["srem", "s", "a"]).trim(), "changed 1, size 1");
    assert_eq!(ok(&["smembers", "s"]).trim(), "\"b\"");
    let j: serde_json::Value =
        serde_json::from_str(&ok(&["--json", "--consistency", "all", "scan", "--all"])).unwrap();
    assert_eq!(j["entries"].as_array().unwrap().len(), 3);
    assert!(ok(&["cas", "lock", "me", "--if-absent"]).starts_with("OK"));
    let (swapped, out, _) = cli(&ep, &["cas", "lock", "you", "--if-absent"]);
    assert!(!swapped && out.contains("CONFLICT"), "{out}");
    let v = serde_json::from_str::<serde_json::Value>(&ok(&["--json", "get", "lock"])).unwrap()["version"]
        .clone();
    let version = format!("{}:{}", v["hlc"], v["node_id"]);
    assert!(ok(&["cas", "lock", "you", "--expect-version", &version]).starts_with("OK"));
    let batch = dir.path().join("ops.jsonl");
    std::fs::write(
        &batch,
        "{\"op\":\"put\",\"key\":\"b1\",\"value\":\"x\"}\n{\"op\":\"incr\",\"key\":\"n\",\"delta\":2}\n",
    )
    .unwrap();
    let out = ok(&["batch", "--file", batch.to_str().unwrap()]);
    assert_eq!(out.lines().count(), 2, "{out}");
    assert!(ok(&["del", "greeting"]).starts_with("deleted"));
    assert_eq!(ok(&["get", "greeting"]).trim(), "(absent)");

    // Errors: the gRPC code and the server's message, and a non-zero exit.
    let (success, _, err) = cli(&ep, &["incr", "s"]);
    assert!(!success && err.contains("FailedPrecondition") && err.contains("set"), "{err}");
    let (success, _, err) = cli(&ep, &["put", "k", "v", "--ttl", "soon"]);
    assert!(!success && err.contains("not a duration"), "{err}");
    let (success, _, err) = cli("http://127.0.0.1:1", &["get", "k"]);
    assert!(!success && err.contains("cannot connect"), "{err}");
}

/// One addressing scheme: `--endpoints` (or `GEOKV_ENDPOINTS`) lists nodes, and a command goes
/// to the first that answers; a write that must not run twice goes on only when it certainly
/// reached no node.
#[test]
fn cli_endpoints_go_on_to_the_next_node_and_come_from_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let s = ServerProcess::start(dir.path(), "");
    let ep = s.endpoint();
    // Port 1: nothing listens there.
    let dead = "http://127.0.0.1:1";
    let list = format!("{dead},{ep}");
    let run = |env: &[(&str, &str)], args: &[&str]| {
        let mut c = Command::new(BIN);
        c.env_remove("GEOKV_ENDPOINTS").env_remove("GEOKV_ENDPOINT");
        for (k, v) in env {
            c.env(k, v);
        }
        let out = c.args(args).output().expect("run geokv CLI");
        let text = |b: &[u8]| String::from_utf8_lossy(b).to_string();
        (out.status.code().unwrap_or(-1), text(&out.stdout), text(&out.stderr))
    };
    let ok = |env: &[(&str, &str)], args: &[&str]| {
        let (code, out, err) = run(env, args);
        assert_eq!(code, 0, "geokv {args:?} with {env:?}: {err}");
        out
    };
    assert!(ok(&[], &["--endpoints", &list, "put", "k", "v"]).starts_with("OK"));
    assert_eq!(ok(&[], &["--endpoints", &list, "append", "k", "w"]).trim(), "length 2");
    assert_eq!(ok(&[], &["--endpoints", &list, "incr", "n", "2"]).trim(), "2");
    let cas = ok(&[], &["--endpoints", &list, "cas", "fresh", "x", "--if-absent"]);
    assert!(cas.starts_with("OK"), "{cas}");
    let batch = dir.path().join("ops.jsonl");
    std::fs::write(&batch, "{\"op\":\"append\",\"key\":\"k\",\"value\":\"z\"}\n").unwrap();
    ok(&[], &["--endpoints", &list, "batch", "--file", batch.to_str().unwrap()]);
    assert!(ok(&[("GEOKV_ENDPOINTS", &list)], &["get", "k"]).contains("\"vwz\""), "appended once each");
    // The variable of earlier releases still works; a flag wins over the environment.
    assert!(ok(&[("GEOKV_ENDPOINT", &ep)], &["get", "k"]).contains("\"vwz\""));
    assert!(ok(&[("GEOKV_ENDPOINTS", dead)], &["--endpoints", &ep, "get", "k"]).contains("\"vwz\""));
    // The node-level commands live under `admin`, apart from the data commands.
    let help = ok(&[], &["admin", "--help"]);
    for cmd in ["peer-stats", "leave", "cleanup", "repl-status", "link"] {
        assert!(help.contains(cmd), "geokv admin --help lists {cmd}: {help}");
    }
    let (code, _, err) = run(&[], &["peer-stats"]);
    assert_eq!(code, 2, "peer-stats is an admin command now: {err}");
    // With no node up: exit 5, naming the node it could not reach.
    let (code, _, err) = run(&[("GEOKV_ENDPOINTS", dead)], &["append", "k", "x"]);
    assert_eq!(code, 5, "{err}");
    assert!(err.contains("cannot connect to http://127.0.0.1:1"), "{err}");
    // An increment whose outcome is unknown (its node took the connection and never answered)
    // exits 7 and names the request id it sent: run again with it, it counts once.
    let hang = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let hung = format!("http://{}", hang.local_addr().unwrap());
    let (code, _, err) = run(&[], &["--endpoints", &hung, "--timeout", "300ms", "incr", "once", "4"]);
    assert_eq!(code, 7, "{err}");
    let id = err.split("--request-id ").nth(1).map(|rest| rest[..32].to_string()).expect("the id is named");
    assert!(id.chars().all(|c| c.is_ascii_hexdigit()), "{err}");
    for _ in 0..2 {
        assert_eq!(ok(&[], &["--endpoints", &ep, "incr", "once", "4", "--request-id", &id]).trim(), "4");
    }
    // So does an append: run again with its id, it appends once.
    let (code, _, err) = run(&[], &["--endpoints", &hung, "--timeout", "300ms", "append", "journal", "a;"]);
    assert_eq!(code, 7, "{err}");
    let id = err.split("--request-id ").nth(1).map(|rest| rest[..32].to_string()).expect("the id is named");
    for _ in 0..2 {
        let out = ok(&[], &["--endpoints", &ep, "append", "journal", "a;", "--request-id", &id]);
        assert_eq!(out.trim(), "length 2");
    }
    drop(hang);
    // A command that changes one node refuses a list of several.
    let (code, _, err) = run(&[], &["--endpoints", &list, "admin", "leave"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("changes one node"), "{err}");
    // A batch line whose TTL is not milliseconds is refused before anything is sent (an
    // `expire` without a TTL would persist the key).
    std::fs::write(&batch, "{\"op\":\"expire\",\"key\":\"k\",\"ttl_ms\":\"10s\"}\n").unwrap();
    let (code, _, err) = run(&[], &["--endpoints", &ep, "batch", "--file", batch.to_str().unwrap()]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("ttl_ms"), "{err}");
    // A batch item's error carries its reason.
    std::fs::write(&batch, "{\"op\":\"incr\",\"key\":\"k\"}\n").unwrap();
    let (code, out, _) =
        run(&[], &["--endpoints", &ep, "--json", "batch", "--file", batch.to_str().unwrap()]);
    assert_eq!(code, 1);
    let item: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(item["error"]["reason"], "WRONG_TYPE", "{out}");
    assert_eq!(item["error"]["code"], "FailedPrecondition", "{out}");
}

#[test]
fn a_malformed_config_file_stops_the_server_with_the_field_and_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("node_id = 0\ndata_dir = \"d\"\n", "node_id"),
        ("node_id = 1\ndata_dir = \"d\"\nlisten = \"localhost\"\n", "listen"),
        ("node_id = 1\ndata_dir = \"d\"\n[storage]\nsink = true\n", "sink"),
        ("node_id = 1\ndata_dir = \"d\"\n[limits]\nmax_record_bytes = 10\n", "max_record_bytes"),
        ("node_id = [\n", "line"),
    ];
    for (text, word) in cases {
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, text).unwrap();
        let out = Command::new(BIN).args(["server", "--config"]).arg(&path).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "server started with {text:?}");
        assert!(err.contains("bad.toml") && err.contains(word), "for {text:?}: {err}");
    }
    // Not text at all.
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, b"node_id = 1\ndata_dir = \"\xff\xfe\"\n").unwrap();
    let out = Command::new(BIN).args(["server", "--config"]).arg(&path).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("bad.toml") && err.contains("UTF-8"), "{err}");
    // A topology that names an unknown region stops the server with the topology's error.
    let topo = dir.path().join("topo.toml");
    std::fs::write(&topo, "[[regions]]\nname = \"r\"\nlocation = [0.0, 0.0]\njurisdiction = \"eu\"\nreplication_factor = 1\n[[nodes]]\nid = 1\nregion = \"mars\"\nclient_addr = \"127.0.0.1:1\"\npeer_addr = \"127.0.0.1:2\"\n").unwrap();
    std::fs::write(
        &path,
        format!(
            "node_id = 1\ndata_dir = {:?}\ntopology = {:?}\n",
            dir.path().join("d").display().to_string(),
            topo.display().to_string()
        ),
    )
    .unwrap();
    let out = Command::new(BIN).args(["server", "--config"]).arg(&path).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("unknown region \"mars\""), "{err}");
}

/// Python with grpcio and grpcio-reflection, if installed (CI installs them and sets
/// GEOKV_REQUIRE_GRPCIO=1 so that a missing install fails instead of skipping).
fn python_with_grpcio() -> Option<String> {
    let py = std::env::var("GEOKV_PYTHON").unwrap_or_else(|_| "python3".into());
    let ok = Command::new(&py)
        .args(["-c", "import grpc, grpc_reflection, google.protobuf"])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if ok {
        return Some(py);
    }
    assert!(
        std::env::var("GEOKV_REQUIRE_GRPCIO").is_err(),
        "GEOKV_REQUIRE_GRPCIO is set but {py} cannot import grpc and grpc_reflection (pip install grpcio grpcio-reflection)"
    );
    eprintln!(
        "SKIPPED: {py} lacks grpcio/grpcio-reflection; set GEOKV_PYTHON or install them to run this test"
    );
    None
}

#[test]
fn a_generic_grpc_client_works_through_server_reflection() {
    let Some(py) = python_with_grpcio() else { return };
    let dir = tempfile::tempdir().unwrap();
    let s = ServerProcess::start(dir.path(), "");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/reflection_client.py");
    let out = Command::new(py).arg(script).arg(s.addr.to_string()).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "reflection client failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for line in [
        "services: ",
        "geokv.v1.Kv",
        "grpc.health.v1.Health",
        "health: SERVING",
        "get: hello via reflection",
        "error: INVALID_ARGUMENT",
    ] {
        assert!(stdout.contains(line), "missing {line:?} in:\n{stdout}");
    }
}

#[test]
fn bench_smoke_run_reports_throughput_and_latency_without_errors() {
    let dir = tempfile::tempdir().unwrap();
    let s = ServerProcess::start(dir.path(), "");
    for workload in ["a", "d", "f", "incr", "sadd"] {
        let out = Command::new(BIN)
            .args(["--endpoint", &s.endpoint(), "--json", "bench", "--workload", workload])
            .args(["--records", "200", "--concurrency", "4", "--duration", "0.5", "--progress", "0"])
            .output()
            .unwrap();
        assert!(out.status.success(), "bench {workload}: {}", String::from_utf8_lossy(&out.stderr));
        let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert!(j["throughput_ops_per_sec"].as_f64().unwrap() > 0.0, "{j}");
        for op in j["ops"].as_array().unwrap() {
            assert_eq!(op["errors"], 0, "{workload}: {op}");
            assert!(op["p99_ms"].as_f64().unwrap() >= op["p50_ms"].as_f64().unwrap());
        }
    }
    // Paced: about --rate operations per second; lag probes read back through an endpoint
    // (here the same node, so every probe is seen at once).
    let out = Command::new(BIN)
        .args(["--endpoint", &s.endpoint(), "--json", "bench", "--workload", "update", "--rate", "200"])
        .args(["--records", "200", "--concurrency", "4", "--duration", "1", "--progress", "0"])
        .args(["--lag-endpoint", &s.endpoint(), "--lag-probes-per-sec", "20"])
        .output()
        .unwrap();
    assert!(out.status.success(), "paced bench: {}", String::from_utf8_lossy(&out.stderr));
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let count = j["ops"][0]["count"].as_u64().unwrap();
    assert!((150..=210).contains(&count), "200 ops/s for 1 s, paced: {count}");
    let probes = j["replication"]["lag_probes"].as_u64().unwrap();
    assert!(probes >= 5 && j["replication"]["lag_timeouts"] == 0, "{j}");
}

/// Runs the CLI with `stdin`; (exit status, stdout bytes, stderr).
fn cli_with_input(endpoint: &str, args: &[&str], stdin: &[u8]) -> (i32, Vec<u8>, String) {
    use std::io::Write;
    let mut child = Command::new(BIN)
        .arg("--endpoint")
        .arg(endpoint)
        .args(args)
        .env_remove("GEOKV_CA")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run geokv CLI");
    let mut input = child.stdin.take().unwrap();
    let data = stdin.to_vec();
    // Written from a thread: a large value fills the pipe before the CLI reads it all.
    let writer = std::thread::spawn(move || input.write_all(&data));
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    (out.status.code().unwrap_or(-1), out.stdout, String::from_utf8_lossy(&out.stderr).into())
}

#[test]
fn the_cli_round_trips_binary_values_through_stdin_files_hex_and_base64() {
    use base64::Engine as _;
    let dir = tempfile::tempdir().unwrap();
    let s = ServerProcess::start(dir.path(), "");
    let ep = s.endpoint();
    let value: Vec<u8> = (0..1 << 20).map(|_| rand::random::<u8>()).collect();
    let b64 = base64::engine::general_purpose::STANDARD.encode(&value);
    // 1 MiB of random bytes, base64 on stdin, read back as base64.
    let (code, _, err) = cli_with_input(&ep, &["--base64", "put", "bin"], b64.as_bytes());
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = cli_with_input(&ep, &["--base64", "--output", "value", "get", "bin"], b"");
    assert_eq!(code, 0, "{err}");
    let back =
        base64::engine::general_purpose::STANDARD.decode(String::from_utf8(out).unwrap().trim()).unwrap();
    assert!(back == value, "the value read back differs");
    // The raw bytes on stdin (`-`) and from a file, read back raw.
    let (code, _, err) = cli_with_input(&ep, &["put", "raw", "-"], &value);
    assert_eq!(code, 0, "{err}");
    let (_, out, _) = cli_with_input(&ep, &["-o", "value", "get", "raw"], b"");
    assert!(out == value, "raw stdin round trip differs");
    let file = dir.path().join("value.bin");
    std::fs::write(&file, &value[..1000]).unwrap();
    let (code, _, err) = cli_with_input(&ep, &["put", "file", "--file", file.to_str().unwrap()], b"");
    assert_eq!(code, 0, "{err}");
    let (_, out, _) = cli_with_input(&ep, &["-o", "value", "get", "file"], b"");
    assert_eq!(out, &value[..1000]);
    // Binary keys and members in hex.
    let (code, _, err) =
        cli_with_input(&ep, &["--key-encoding", "hex", "--hex", "sadd", "00ff", "00", "ff"], b"");
    assert_eq!(code, 0, "{err}");
    let (_, out, _) =
        cli_with_input(&ep, &["--key-encoding", "base64", "--hex", "-o", "value", "get", "AP8="], b"");
    assert_eq!(String::from_utf8(out).unwrap(), "00\nff\n");
    // An absent key prints nothing with -o value.
    let (code, out, err) = cli_with_input(&ep, &["-o", "value", "get", "nothing"], b"");
    assert_eq!((code, out.len(), err.trim()), (0, 0, "(absent)"));
    // JSON keeps its rendering; a TTL takes humantime's units.
    let (code, out, err) = cli_with_input(&ep, &["--json", "put", "t", "v", "--ttl", "1h30m"], b"");
    assert_eq!(code, 0, "{err}");
    let j: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert!(j["ttl_remaining_ms"].as_u64().unwrap() > 5_000_000, "{j}");
}

#[test]
fn cli_exit_statuses_tell_bad_input_from_refusal_conflict_unavailable_and_denial() {
    let dir = tempfile::tempdir().unwrap();
    let s = ServerProcess::start(dir.path(), "");
    let ep = s.endpoint();
    let batch = dir.path().join("ops.jsonl");
    std::fs::write(
        &batch,
        "{\"op\":\"put\",\"key\":\"b\",\"value\":\"x\"}\n{\"op\":\"incr\",\"key\":\"b\",\"delta\":1}\n",
    )
    .unwrap();
    // Port 1: nothing listens there (a port picked free could be taken by a test's node).
    let dead = "http://127.0.0.1:1".to_string();
    let tls = support::TestCluster::start_regions_tls(&support::THREE_REGIONS[..1], 1, 1, "", None);
    let tls_ep = tls.nodes[0].endpoint().replace("https://", "http://");
    let big_key = "k".repeat(5000);
    let table: Vec<(i32, &str, Vec<&str>)> = vec![
        (0, "success", vec!["put", "k", "v"]),
        (0, "an absent key is an answer", vec!["get", "nothing"]),
        (1, "some batch items failed", vec!["batch", "--file", batch.to_str().unwrap()]),
        (2, "a flag the CLI does not know", vec!["put", "k", "v", "--bogus"]),
        (2, "a value that is not base64", vec!["--base64", "put", "k", "!!!"]),
        (2, "a key that is not hex", vec!["--key-encoding", "hex", "get", "xyz"]),
        (2, "a timeout that is not a duration", vec!["--timeout", "soon", "get", "k"]),
        (2, "an unreadable value file", vec!["put", "k", "--file", "/nonexistent/value"]),
        (3, "a compare-and-swap that finds another version", vec!["cas", "k", "w", "--if-absent"]),
        (4, "a wrong-type write", vec!["incr", "k"]),
        (4, "a key over the limit", vec!["put", &big_key, "v"]),
        (5, "no node at the endpoint", vec!["--endpoint", &dead, "get", "k"]),
        (6, "plaintext to a TLS node", vec!["--endpoint", &tls_ep, "get", "k"]),
    ];
    let mut wrong = Vec::new();
    for (want, what, args) in &table {
        let (code, _, err) = cli_with_input(&ep, args, b"");
        if code != *want {
            wrong.push(format!("{what} ({args:?}): exit {code}, expected {want}; stderr: {err}"));
        } else if *want != 0 {
            assert!(err.starts_with("error: ") || *want == 2 || *want == 3, "{what}: {err}");
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}
