//! `geokv restore`: a stopped node's data directory rebuilt from a backup folder
//! (`geokv backup create`). The directory is written under a marker file the server refuses to
//! start with, so a restore cut short never passes for a whole one; the marker goes last, after
//! every file is synced and the node's new incarnation and recovery mark are saved.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};

use crate::backup_cmd::{blob, check_files, manifests, now_ms, pick};

/// Restores within this share of the tombstone grace period only (the rest is margin for the
/// time the node takes to catch up).
const GRACE_SHARE: f64 = 0.9;

/// `geokv restore`: one node's data directory from a backup.
#[derive(clap::Args)]
pub struct RestoreArgs {
    /// The backup folder.
    #[arg(long)]
    from: PathBuf,
    /// The backup (default: the latest that holds the node).
    #[arg(long)]
    id: Option<String>,
    /// The node to restore.
    #[arg(long)]
    node: u64,
    /// The node's data directory (its `data_dir`): missing, empty, or left by a restore that did
    /// not finish. Stop the node first.
    #[arg(long)]
    data_dir: PathBuf,
    /// Only this node of its region is restored (its region's other nodes are intact): it then
    /// recovers from its region alone, without waiting for every node of the other regions.
    #[arg(long)]
    region_local: bool,
    /// Restore a backup older than the node's tombstone grace period: keys deleted since the
    /// backup may come back (their tombstones are gone everywhere).
    #[arg(long)]
    accept_old_backup: bool,
}

fn sync_dir(dir: &Path) -> anyhow::Result<()> {
    std::fs::File::open(dir)?.sync_all().with_context(|| format!("cannot sync {}", dir.display()))
}

/// Whether `dir` may be restored into: missing, empty, or holding only an unfinished restore.
fn writable_target(dir: &Path, node: u64) -> anyhow::Result<()> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Ok(()) };
    let names: Vec<_> = entries.flatten().map(|e| e.file_name()).collect();
    let unfinished = names.iter().any(|n| n == geokv_server::RESTORE_MARKER);
    if names.is_empty() || unfinished {
        return Ok(());
    }
    bail!(
        "{} is not empty: stop node {node}, move its data directory away (or delete it), and run restore again",
        dir.display()
    )
}

pub fn restore(args: RestoreArgs, json: bool) -> anyhow::Result<()> {
    let all = manifests(&args.from)?;
    let m = match &args.id {
        Some(_) => pick(&all, args.id.as_deref(), &args.from)?,
        None => all
            .iter()
            .rev()
            .find(|m| m.nodes.iter().any(|n| n.node_id == args.node))
            .with_context(|| format!("no backup in {} holds node {}", args.from.display(), args.node))?,
    };
    let node = m
        .nodes
        .iter()
        .find(|n| n.node_id == args.node)
        .with_context(|| format!("backup {} does not hold node {}", m.id, args.node))?;
    let age_ms = now_ms().saturating_sub(node.taken_at_ms);
    let grace_ms = node.tombstone_grace_secs.saturating_mul(1000);
    if grace_ms > 0 && age_ms as f64 > grace_ms as f64 * GRACE_SHARE && !args.accept_old_backup {
        bail!(
            "backup {} of node {} is {} h old, beyond {}% of its tombstone grace period ({} h): keys deleted since then may have no tombstone left anywhere and would come back. Take a newer backup, restore the node from its peers (start it on an empty directory), or pass --accept-old-backup",
            m.id,
            args.node,
            age_ms / 3_600_000,
            (GRACE_SHARE * 100.0) as u32,
            grace_ms / 3_600_000
        );
    }
    let problems = check_files(&args.from, node);
    if !problems.is_empty() {
        bail!("backup {} of node {} is damaged, nothing restored: {}", m.id, args.node, problems.join("; "));
    }
    let data = &args.data_dir;
    writable_target(data, args.node)?;
    // What an unfinished restore left (the folder itself stays: it may be a mount point).
    for entry in std::fs::read_dir(data).into_iter().flatten().flatten() {
        let path = entry.path();
        let removed =
            if path.is_dir() { std::fs::remove_dir_all(&path) } else { std::fs::remove_file(&path) };
        removed.with_context(|| format!("cannot clear {}", path.display()))?;
    }
    std::fs::create_dir_all(data).with_context(|| format!("cannot make {}", data.display()))?;
    let marker = data.join(geokv_server::RESTORE_MARKER);
    std::fs::File::create(&marker)?.write_all(m.id.as_bytes())?;
    sync_dir(data)?;
    for f in &node.files {
        let dest = data.join(&f.name);
        std::fs::copy(blob(&args.from, &f.sha256), &dest)
            .with_context(|| format!("cannot copy {} into {}", f.name, data.display()))?;
        std::fs::File::open(&dest)?.sync_all()?;
    }
    sync_dir(data)?;
    geokv_server::prepare_restored(data, args.node, args.region_local)
        .with_context(|| format!("the restored data directory {} does not open", data.display()))?;
    std::fs::remove_file(&marker)?;
    sync_dir(data)?;
    let waits = if args.region_local { "its region" } else { "its region and of the other regions" };
    if json {
        println!(
            "{}",
            serde_json::json!({ "id": m.id, "node": args.node, "data_dir": data, "files": node.files.len() })
        );
    } else {
        println!(
            "restored node {} ({}) from backup {} (taken {}) into {}. Start the node: it takes writes at once and serves reads after an anti-entropy exchange with every node of {waits} (the writes since the backup come back from them).",
            args.node,
            node.region,
            m.id,
            geokv_server::utc_date(node.taken_at_ms),
            data.display()
        );
    }
    Ok(())
}
