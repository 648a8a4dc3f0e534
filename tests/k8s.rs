//! The Kubernetes manifests of `deploy/k8s`, checked offline (no cluster runs here): every
//! manifest passes the Kubernetes schemas (`kubernetes-validate --strict`, from PyPI; CI sets
//! GEOKV_REQUIRE_K8S=1 so a missing validator fails instead of skipping), and the config and
//! topology the ConfigMap carries pass geokv's own validation, name every StatefulSet's pods
//! with the node ids its command gives them, and make valid certificates.

use std::path::{Path, PathBuf};
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_geokv");

fn k8s_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/k8s")
}

/// The block scalar `key: |` of the ConfigMap in `deploy/k8s/config.yaml` (indented 4).
fn config_map_entry(key: &str) -> String {
    let text = std::fs::read_to_string(k8s_dir().join("config.yaml")).unwrap();
    let mut lines = text.lines().skip_while(|l| l.trim_end() != format!("  {key}: |")).skip(1);
    let mut out = String::new();
    for line in lines.by_ref() {
        if !line.is_empty() && !line.starts_with("    ") {
            break;
        }
        out.push_str(line.strip_prefix("    ").unwrap_or(""));
        out.push('\n');
    }
    assert!(!out.trim().is_empty(), "config.yaml has no {key} entry");
    out
}

#[test]
fn the_manifests_pass_the_kubernetes_schemas() {
    let mut files: Vec<PathBuf> = std::fs::read_dir(k8s_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 5, "{files:?}");
    match Command::new("kubernetes-validate").arg("--strict").args(&files).output() {
        Ok(out) => assert!(
            out.status.success(),
            "kubernetes-validate:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(e) => {
            assert!(
                std::env::var("GEOKV_REQUIRE_K8S").as_deref() != Ok("1"),
                "GEOKV_REQUIRE_K8S=1 but kubernetes-validate cannot run: {e}"
            );
            eprintln!("skipping the schema check: kubernetes-validate not installed (pip install kubernetes-validate)");
        }
    }
}

#[test]
fn the_config_map_carries_a_config_and_topology_geokv_accepts() {
    let config = config_map_entry("geokv.toml");
    let cfg = geokv_server::ServerConfig::parse(&config, "deploy/k8s/config.yaml (geokv.toml)").unwrap();
    assert!(cfg.tls.is_some() && cfg.auth.is_some() && !cfg.insecure, "TLS and auth on");
    let topology_text = config_map_entry("topology.toml");
    let topology =
        geokv_topology::Topology::parse(&topology_text, "deploy/k8s/config.yaml (topology.toml)").unwrap();
    for region in &topology.regions {
        let nodes = topology.nodes_in(&region.name);
        let manifest = std::fs::read_to_string(k8s_dir().join(format!("{}.yaml", region.name))).unwrap();
        assert!(
            manifest.contains(&format!("replicas: {}", nodes.len())),
            "{}: one pod per node",
            region.name
        );
        let first = *nodes.keys().next().unwrap();
        assert!(
            manifest.contains(&format!("+ {first} ))")),
            "{}: pod ordinal + {first} is the node id",
            region.name
        );
        for (ordinal, (id, spec)) in nodes.iter().enumerate() {
            assert_eq!(*id, first + ordinal as u64, "{}: ids are consecutive", region.name);
            let pod = format!(
                "geokv-{}-{ordinal}.geokv-{}-nodes.geokv.svc.cluster.local",
                region.name, region.name
            );
            assert_eq!(spec.client_addr.host(), pod, "node {id} is named by its pod");
        }
    }
    // The certificates for it: every pod name goes into a node certificate.
    let dir = tempfile::tempdir().unwrap();
    let topo = dir.path().join("topology.toml");
    std::fs::write(&topo, &topology_text).unwrap();
    let out = Command::new(BIN)
        .args(["certs", "create", "--topology"])
        .arg(&topo)
        .arg("--dir")
        .arg(dir.path().join("certs"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(dir.path().join("certs/node-9.pem").exists());
}
