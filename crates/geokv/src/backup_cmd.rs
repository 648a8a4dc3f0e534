//! `geokv backup` and `geokv restore`: backups of a running deployment into a folder, and a
//! node's data directory rebuilt from one.
//!
//! A backup folder holds the files of every backup once, by content (`files/<sha256>`: an SST
//! file that did not change since the last backup is not fetched again, which makes later
//! backups incremental), and one manifest per backup (`backups/<id>/manifest.json`), written
//! last: a backup without a manifest did not finish and is ignored. See docs/operations.md,
//! "Backup and restore".

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use geokv_client::proto;
use proto::admin_client::AdminClient;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::admin_conn::AdminConn;
use crate::client_cmd::security;

/// The manifest's format version.
const MANIFEST_FORMAT: u32 = 1;
/// Bytes asked for per read.
const CHUNK: u32 = 1024 * 1024;
/// How long a node may take to answer one call: a checkpoint hashes the files it has not
/// hashed before, which takes a while on a large node.
const BEGIN_DEADLINE: std::time::Duration = std::time::Duration::from_secs(30 * 60);

#[derive(clap::Subcommand)]
pub enum BackupCommand {
    /// Back up nodes of the running deployment (all of them unless --region or --node say
    /// which) into a backup folder, while they serve.
    Create {
        /// The backup folder (made if missing; files already in it are not fetched again).
        #[arg(long)]
        out: PathBuf,
        /// Back up every node of this region (repeatable).
        #[arg(long)]
        region: Vec<String>,
        /// Back up this node (repeatable).
        #[arg(long)]
        node: Vec<u64>,
    },
    /// The backups in a backup folder, oldest first.
    List { dir: PathBuf },
    /// Checks every file of a backup (the latest, or --id) against the size and SHA-256 its
    /// manifest gives; exit status 1 if any is missing or differs.
    Verify {
        dir: PathBuf,
        #[arg(long)]
        id: Option<String>,
    },
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Manifest {
    pub format: u32,
    pub id: String,
    /// Unix ms when the backup started and finished.
    pub started_at_ms: u64,
    pub finished_at_ms: u64,
    /// What was asked for ("the deployment", "region eu-west", ...).
    pub scope: String,
    /// The topology the first node backed up ran with (TOML).
    pub topology: String,
    pub nodes: Vec<NodeBackup>,
    /// Files fetched for this backup and files already in the folder.
    pub fetched: Tally,
    pub reused: Tally,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct Tally {
    pub files: u64,
    pub bytes: u64,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct NodeBackup {
    pub node_id: u64,
    pub region: String,
    /// The node's HLC (NTP64) and wall clock (unix ms) at its checkpoint.
    pub hlc: u64,
    pub taken_at_ms: u64,
    /// Every change-log entry up to this sequence number is in the checkpoint.
    pub log_high_water: u64,
    /// The residency policy the node held (version and text; "" for the topology's default).
    pub residency_version: u64,
    pub residency_policy: String,
    pub layout_version: u32,
    /// The node's tombstone grace period (0 in manifests written before it was recorded).
    #[serde(default)]
    pub tombstone_grace_secs: u64,
    pub files: Vec<FileEntry>,
}

impl NodeBackup {
    /// Refuses names and hashes that are not a plain file name and 64 lowercase hex digits:
    /// they become paths.
    pub fn check(&self) -> anyhow::Result<()> {
        for f in &self.files {
            let plain =
                !f.name.is_empty() && f.name != "." && f.name != ".." && !f.name.contains(['/', '\\', '\0']);
            let hex = f.sha256.len() == 64
                && f.sha256.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
            if !plain || !hex {
                bail!(
                    "node {}: file {:?} with SHA-256 {:?} is not a plain file name and hash",
                    self.node_id,
                    f.name,
                    f.sha256
                );
            }
        }
        Ok(())
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct FileEntry {
    pub name: String,
    pub size: u64,
    pub sha256: String,
}

pub async fn run(cmd: BackupCommand, json: bool) -> anyhow::Result<()> {
    match cmd {
        BackupCommand::Create { out, region, node } => create(&out, &region, &node, json).await,
        BackupCommand::List { dir } => list(&dir, json),
        BackupCommand::Verify { dir, id } => verify(&dir, id.as_deref(), json),
    }
}

/// The wall clock in unix ms.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

pub fn blob(dir: &Path, sha256: &str) -> PathBuf {
    dir.join("files").join(sha256)
}

/// The nodes to back up, with their client addresses, from the deployment status.
async fn pick_nodes(regions: &[String], nodes: &[u64]) -> anyhow::Result<(String, Vec<proto::NodeStatus>)> {
    let status = AdminConn::open(None).await?.cluster_status(proto::ClusterStatusRequest {}).await?;
    for r in regions {
        if !status.regions.contains(r) {
            bail!("the deployment has no region {r:?} (regions: {})", status.regions.join(", "));
        }
    }
    for n in nodes {
        if !status.nodes.iter().any(|s| s.node_id == *n) {
            bail!("the deployment has no node {n}");
        }
    }
    let everything = regions.is_empty() && nodes.is_empty();
    let picked: Vec<proto::NodeStatus> = status
        .nodes
        .into_iter()
        .filter(|s| everything || regions.contains(&s.region) || nodes.contains(&s.node_id))
        .collect();
    let scope = if everything {
        "the deployment".to_string()
    } else {
        let mut parts: Vec<String> = regions.iter().map(|r| format!("region {r}")).collect();
        parts.extend(nodes.iter().map(|n| format!("node {n}")));
        parts.join(", ")
    };
    let unreachable: Vec<String> =
        picked.iter().filter(|s| !s.reachable).map(|s| format!("node {} ({})", s.node_id, s.error)).collect();
    if !unreachable.is_empty() {
        bail!(
            "cannot back up {scope}: {} did not answer; back up the nodes that answer with --node, and restore the others from their peers",
            unreachable.join(", ")
        );
    }
    Ok((scope, picked))
}

/// The Admin service of one node, at its client address (with TLS, checked against the name
/// every node certificate carries unless --tls-server-name says otherwise).
async fn node_admin(n: &proto::NodeStatus) -> anyhow::Result<AdminClient<geokv_client::grpc::Transport>> {
    let mut sec = security();
    if sec.server_name.is_none() && sec.ca.is_some() {
        sec.server_name = Some(geokv_tls::names::node_dns(n.node_id));
    }
    geokv_client::grpc::admin_with_deadline(&n.client_addr, &sec, BEGIN_DEADLINE)
        .await
        .with_context(|| format!("cannot connect to node {} at {}", n.node_id, n.client_addr))
}

async fn create(out: &Path, regions: &[String], nodes: &[u64], json: bool) -> anyhow::Result<()> {
    let (scope, picked) = pick_nodes(regions, nodes).await?;
    std::fs::create_dir_all(out.join("files")).with_context(|| format!("cannot make {}", out.display()))?;
    let started_at_ms = now_ms();
    let mut manifest = Manifest {
        format: MANIFEST_FORMAT,
        id: backup_id(started_at_ms),
        started_at_ms,
        finished_at_ms: 0,
        scope,
        topology: String::new(),
        nodes: Vec::new(),
        fetched: Tally::default(),
        reused: Tally::default(),
    };
    for n in &picked {
        let mut admin = node_admin(n).await?;
        let cp = admin
            .backup_begin(proto::BackupBeginRequest {})
            .await
            .with_context(|| format!("node {}: cannot take a checkpoint", n.node_id))?
            .into_inner();
        let node = node_backup(cp.clone());
        let fetched = match node.check() {
            Ok(()) => fetch_files(&mut admin, out, &cp, &mut manifest).await,
            Err(e) => Err(e),
        };
        // Released whatever happened (the node also drops it once idle).
        let _ = admin.backup_end(proto::BackupEndRequest { id: cp.id.clone() }).await;
        fetched.with_context(|| format!("node {}: backup {}", n.node_id, cp.id))?;
        if manifest.topology.is_empty() {
            manifest.topology = cp.topology.clone();
        }
        manifest.nodes.push(node);
    }
    manifest.finished_at_ms = now_ms();
    let dir = out.join("backups").join(&manifest.id);
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot make {}", dir.display()))?;
    write_atomically(&dir.join("manifest.json"), &serde_json::to_vec_pretty(&manifest)?)?;
    if json {
        println!(
            "{}",
            serde_json::json!({ "id": manifest.id, "nodes": manifest.nodes.len(), "fetched": manifest.fetched, "reused": manifest.reused })
        );
    } else {
        println!(
            "backup {} of {}: {} nodes; fetched {} files ({} bytes), {} files ({} bytes) already in {}",
            manifest.id,
            manifest.scope,
            manifest.nodes.len(),
            manifest.fetched.files,
            manifest.fetched.bytes,
            manifest.reused.files,
            manifest.reused.bytes,
            out.display()
        );
    }
    Ok(())
}

fn node_backup(cp: proto::BackupCheckpoint) -> NodeBackup {
    NodeBackup {
        node_id: cp.node_id,
        region: cp.region,
        hlc: cp.hlc,
        taken_at_ms: cp.taken_at_ms,
        log_high_water: cp.log_high_water,
        residency_version: cp.residency_version,
        residency_policy: cp.residency_policy,
        layout_version: cp.layout_version,
        tombstone_grace_secs: cp.tombstone_grace_secs,
        files: cp
            .files
            .into_iter()
            .map(|f| FileEntry { name: f.name, size: f.size, sha256: f.sha256 })
            .collect(),
    }
}

/// Fetches the files of a checkpoint the folder does not hold yet, each checked against its
/// SHA-256 before it takes its place. A file already in the folder is used again only if it
/// still hashes to its name.
async fn fetch_files(
    admin: &mut AdminClient<geokv_client::grpc::Transport>,
    out: &Path,
    cp: &proto::BackupCheckpoint,
    manifest: &mut Manifest,
) -> anyhow::Result<()> {
    for f in &cp.files {
        let dest = blob(out, &f.sha256);
        if std::fs::metadata(&dest).is_ok_and(|m| m.len() == f.size)
            && geokv_server::sha256_file(&dest).is_ok_and(|sum| sum == f.sha256)
        {
            manifest.reused.files += 1;
            manifest.reused.bytes += f.size;
            continue;
        }
        let tmp = out.join("files").join(format!(".{}.{}.part", f.sha256, std::process::id()));
        if let Err(e) = fetch_file(admin, cp, f, &tmp).await {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        std::fs::rename(&tmp, &dest)?;
        manifest.fetched.files += 1;
        manifest.fetched.bytes += f.size;
    }
    Ok(())
}

/// Fetches one file of a checkpoint into `tmp`, checked against its SHA-256.
async fn fetch_file(
    admin: &mut AdminClient<geokv_client::grpc::Transport>,
    cp: &proto::BackupCheckpoint,
    f: &proto::BackupFile,
    tmp: &Path,
) -> anyhow::Result<()> {
    let mut file = std::fs::File::create(tmp).with_context(|| format!("cannot write {}", tmp.display()))?;
    let mut hasher = Sha256::new();
    let mut offset = 0;
    while offset < f.size {
        let req = proto::BackupReadRequest { id: cp.id.clone(), name: f.name.clone(), offset, length: CHUNK };
        let chunk = admin.backup_read(req).await.with_context(|| format!("reading {}", f.name))?.into_inner();
        if chunk.data.is_empty() {
            bail!("{} ended at {offset} of {} bytes", f.name, f.size);
        }
        hasher.update(&chunk.data);
        file.write_all(&chunk.data)?;
        offset += chunk.data.len() as u64;
    }
    file.sync_all()?;
    let got = geokv_tls::hex(&hasher.finalize());
    if got != f.sha256 {
        bail!("{} arrived with SHA-256 {got}, not the {} the node computed", f.name, f.sha256);
    }
    Ok(())
}

fn write_atomically(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp).with_context(|| format!("cannot write {}", tmp.display()))?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

/// A backup's id: its start as a UTC time, sortable ("20261201T223357Z-123").
fn backup_id(ms: u64) -> String {
    let date = geokv_server::utc_date(ms);
    let compact: String =
        date.trim_end_matches(" UTC").chars().filter(|c| c.is_ascii_digit() || *c == ' ').collect();
    format!("{}Z-{:03}", compact.replace(' ', "T"), ms % 1000)
}

/// Every finished backup in `dir`, oldest first.
pub fn manifests(dir: &Path) -> anyhow::Result<Vec<Manifest>> {
    let root = dir.join("backups");
    let mut out = BTreeMap::new();
    let entries = match std::fs::read_dir(&root) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            bail!("{} is not a backup folder (it has no backups/)", dir.display())
        }
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", root.display())),
    };
    for entry in entries {
        let path = entry?.path().join("manifest.json");
        let Ok(bytes) = std::fs::read(&path) else { continue };
        // A damaged, unknown or newer manifest does not hide the others: it is skipped, and said.
        let m: Manifest = match serde_json::from_slice(&bytes) {
            Ok(m) => m,
            Err(e) => {
                eprintln!("skipping {}: not a backup manifest ({e})", path.display());
                continue;
            }
        };
        if m.format > MANIFEST_FORMAT {
            eprintln!(
                "skipping {}: format {}, this geokv reads up to {MANIFEST_FORMAT} (use a newer geokv)",
                path.display(),
                m.format
            );
            continue;
        }
        if let Err(e) = m.nodes.iter().try_for_each(NodeBackup::check) {
            eprintln!("skipping {}: {e}", path.display());
            continue;
        }
        out.insert((m.started_at_ms, m.id.clone()), m);
    }
    Ok(out.into_values().collect())
}

pub fn pick<'a>(all: &'a [Manifest], id: Option<&str>, dir: &Path) -> anyhow::Result<&'a Manifest> {
    match id {
        Some(id) => {
            all.iter().find(|m| m.id == id).with_context(|| format!("{} has no backup {id}", dir.display()))
        }
        None => all.last().with_context(|| format!("{} holds no finished backup", dir.display())),
    }
}

fn list(dir: &Path, json: bool) -> anyhow::Result<()> {
    let all = manifests(dir)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&all)?);
        return Ok(());
    }
    for m in &all {
        let bytes: u64 = m.nodes.iter().flat_map(|n| &n.files).map(|f| f.size).sum();
        let nodes: Vec<String> = m.nodes.iter().map(|n| format!("{}@{}", n.node_id, n.region)).collect();
        println!(
            "{}  {}  {}  nodes {}  {} bytes ({} fetched)",
            m.id,
            geokv_server::utc_date(m.started_at_ms),
            m.scope,
            nodes.join(" "),
            bytes,
            m.fetched.bytes
        );
    }
    Ok(())
}

/// The problems of one node's files in `dir`.
pub fn check_files(dir: &Path, node: &NodeBackup) -> Vec<String> {
    let mut problems = Vec::new();
    for f in &node.files {
        let path = blob(dir, &f.sha256);
        match std::fs::metadata(&path) {
            Err(e) => problems.push(format!("node {} {}: {} ({e})", node.node_id, f.name, path.display())),
            Ok(m) if m.len() != f.size => problems.push(format!(
                "node {} {}: {} bytes, the manifest says {}",
                node.node_id,
                f.name,
                m.len(),
                f.size
            )),
            Ok(_) => match geokv_server::sha256_file(&path) {
                Ok(sum) if sum == f.sha256 => {}
                Ok(sum) => problems.push(format!(
                    "node {} {}: SHA-256 {sum}, the manifest says {}",
                    node.node_id, f.name, f.sha256
                )),
                Err(e) => problems.push(format!(
                    "node {} {}: cannot read {}: {e}",
                    node.node_id,
                    f.name,
                    path.display()
                )),
            },
        }
    }
    problems
}

fn verify(dir: &Path, id: Option<&str>, json: bool) -> anyhow::Result<()> {
    let all = manifests(dir)?;
    let m = pick(&all, id, dir)?;
    let problems: Vec<String> = m.nodes.iter().flat_map(|n| check_files(dir, n)).collect();
    let files: usize = m.nodes.iter().map(|n| n.files.len()).sum();
    if json {
        println!("{}", serde_json::json!({ "id": m.id, "files": files, "problems": problems }));
    } else if problems.is_empty() {
        println!("backup {}: {} files of {} nodes match their sizes and SHA-256", m.id, files, m.nodes.len());
    } else {
        for p in &problems {
            println!("{p}");
        }
    }
    if !problems.is_empty() {
        bail!("backup {} is damaged: {} of {files} files missing or changed", m.id, problems.len());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backup_ids_sort_as_their_times() {
        assert_eq!(backup_id(1_796_165_637_042), "20261201T225357Z-042");
        assert!(backup_id(1_796_165_637_042) < backup_id(1_796_165_699_001));
    }
}
