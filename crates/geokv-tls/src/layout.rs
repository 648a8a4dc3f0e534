//! A directory of a deployment's certificates, as `geokv certs` writes it: `ca.pem` and
//! `ca.key`, `node-<id>.pem` and `.key` per node, `client-<name>.pem` and `.key` per client.
//! Private keys are written readable by their owner only.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::issue::{Ca, Issued, Validity};

/// What a node certificate is issued for.
#[derive(Clone, Debug)]
pub struct NodeEntry {
    pub id: u64,
    pub region: String,
    /// IP addresses and DNS names clients and peers reach the node at.
    pub hosts: Vec<String>,
}

/// A certificate's and key's paths.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Written {
    pub cert: PathBuf,
    pub key: PathBuf,
}

pub fn ca_cert_path(dir: &Path) -> PathBuf {
    dir.join("ca.pem")
}

/// The deployment's gossip key: 32 random bytes, hex, that every node seals its gossip
/// datagrams with (HMAC-SHA256).
pub fn gossip_key_path(dir: &Path) -> PathBuf {
    dir.join("gossip.key")
}

/// Writes a new gossip key into `dir` unless one is there; its path.
pub fn gossip_key_in(dir: &Path) -> Result<PathBuf, String> {
    let path = gossip_key_path(dir);
    if !path.exists() {
        let mut key = [0u8; 32];
        crate::provider()
            .secure_random
            .fill(&mut key)
            .map_err(|_| "the OS gave no random bytes".to_string())?;
        write_file(&path, &format!("{}\n", crate::hex(&key)), true)?;
    }
    Ok(path)
}

pub fn node_paths(dir: &Path, id: u64) -> Written {
    Written { cert: dir.join(format!("node-{id}.pem")), key: dir.join(format!("node-{id}.key")) }
}

pub fn client_paths(dir: &Path, name: &str) -> Written {
    Written { cert: dir.join(format!("client-{name}.pem")), key: dir.join(format!("client-{name}.key")) }
}

fn write_file(path: &Path, text: &str, private: bool) -> Result<(), String> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true).mode(if private { 0o600 } else { 0o644 });
    let mut f = options.open(path).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    f.write_all(text.as_bytes()).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    f.sync_all().map_err(|e| format!("cannot write {}: {e}", path.display()))
}

fn write_pair(paths: Written, issued: &Issued) -> Result<Written, String> {
    write_file(&paths.key, &issued.key_pem, true)?;
    write_file(&paths.cert, &issued.cert_pem, false)?;
    Ok(paths)
}

/// The CA of `dir`: loaded when `ca.pem` and `ca.key` are there, else created (named `name`)
/// and written. Returns it and whether it is new.
pub fn ca_in(dir: &Path, name: &str, validity: Validity) -> Result<(Ca, bool), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let (cert, key) = (ca_cert_path(dir), dir.join("ca.key"));
    match (cert.exists(), key.exists()) {
        (true, true) => {
            let read = |p: &Path| {
                std::fs::read_to_string(p).map_err(|e| format!("cannot read {}: {e}", p.display()))
            };
            Ok((Ca::load(&read(&cert)?, &read(&key)?)?, false))
        }
        (false, false) => {
            let (ca, issued) = Ca::create(name, validity)?;
            write_pair(Written { cert, key }, &issued)?;
            Ok((ca, true))
        }
        _ => Err(format!(
            "{} holds only one of ca.pem and ca.key; restore the other, or move both away to create a new CA",
            dir.display()
        )),
    }
}

pub fn write_node(dir: &Path, ca: &Ca, node: &NodeEntry, validity: Validity) -> Result<Written, String> {
    let issued = ca.node(node.id, &node.region, &node.hosts, validity)?;
    write_pair(node_paths(dir, node.id), &issued)
}

pub fn write_client(dir: &Path, ca: &Ca, name: &str, validity: Validity) -> Result<Written, String> {
    let issued = ca.client(name, validity)?;
    write_pair(client_paths(dir, name), &issued)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_keeps_its_ca_and_keys_are_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let (ca, new) = ca_in(dir.path(), "t", Validity::days(10)).unwrap();
        assert!(new);
        let node = NodeEntry { id: 1, region: "eu".into(), hosts: vec!["127.0.0.1".into()] };
        let w = write_node(dir.path(), &ca, &node, Validity::days(1)).unwrap();
        let mode = std::fs::metadata(&w.key).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let (_again, new) = ca_in(dir.path(), "t", Validity::days(10)).unwrap();
        assert!(!new, "the CA is reused");
        assert_eq!(std::fs::read_to_string(ca_cert_path(dir.path())).unwrap(), ca.cert_pem());
        std::fs::remove_file(dir.path().join("ca.key")).unwrap();
        assert!(ca_in(dir.path(), "t", Validity::days(10)).unwrap_err().contains("only one"));
    }
}
