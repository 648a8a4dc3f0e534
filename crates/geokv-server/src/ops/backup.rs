//! Backups, the node's side (`geokv backup` is the other): a checkpoint of the node's storage
//! taken while it serves (`geokv_storage::Engine::checkpoint`: every column family at one
//! point, so the change log, the cursors and the data agree), described with each file's size
//! and SHA-256 and the node's HLC, change-log high-water mark, residency policy and topology;
//! read in chunks over the Admin service; released when the backup ends it, or after
//! [`BACKUP_IDLE`] without a read (a backup tool that died: looked for every minute), and at
//! the next start.

use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use geokv_proto::v1 as pb;
use sha2::{Digest, Sha256};
use tonic::Status;

use crate::api::status::to_status;
use crate::region::Cluster;

/// A checkpoint nobody read for this long is removed.
pub const BACKUP_IDLE: Duration = Duration::from_secs(15 * 60);
/// The largest chunk one read returns.
pub const MAX_CHUNK: u32 = 1024 * 1024;

/// What tells a file apart: inode, size, modification time (seconds, nanoseconds).
type FileId = (u64, u64, i64, i64);

/// At most this many checkpoints are open at once (each pins the files it links).
pub const MAX_OPEN: usize = 4;
/// How often idle and orphaned checkpoints are looked for.
const EXPIRE_EVERY: Duration = Duration::from_secs(60);

/// The checkpoints open for backups on this node.
pub struct Backups {
    inner: Arc<Inner>,
}

struct Inner {
    cluster: Arc<Cluster>,
    open: Mutex<HashMap<String, Open>>,
    /// SHA-256 of SST files by inode, size and modification time: a checkpoint hard-links the
    /// live SST files, which never change, so a later backup hashes only the files that are
    /// new (a new file on a reused inode has another modification time).
    hashes: Mutex<HashMap<FileId, String>>,
}

struct Open {
    dir: PathBuf,
    /// The files and their sizes; `None` while the checkpoint is being made and hashed.
    sizes: Option<HashMap<String, u64>>,
    last_used: Instant,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Backups {
    /// The node's backups; checkpoints left by an earlier run are removed, and from now on
    /// those idle for [`BACKUP_IDLE`] are, every minute.
    pub fn new(cluster: Arc<Cluster>) -> Self {
        if let Err(e) = cluster.node().engine().drop_checkpoints() {
            tracing::warn!(error = %e, "cannot remove the checkpoints of an earlier run");
        }
        let inner = Arc::new(Inner { cluster, open: Mutex::default(), hashes: Mutex::default() });
        let weak = Arc::downgrade(&inner);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(EXPIRE_EVERY).await;
                let Some(inner) = weak.upgrade() else { return };
                inner.expire().await;
            }
        });
        Backups { inner }
    }

    /// Takes a checkpoint and describes it. The checkpoint is registered before it is made,
    /// so one whose caller went away (or that failed half-way) is removed all the same.
    pub async fn begin(&self) -> Result<pb::BackupCheckpoint, Status> {
        let inner = self.inner.clone();
        let node = inner.cluster.node().clone();
        let hlc = node.hlc_now();
        let taken_at_ms = node.now_ms();
        let id = format!("{}-{hlc:x}", node.id());
        let topology = toml::to_string(inner.cluster.residency().topology())
            .map_err(|e| Status::internal(format!("cannot write the topology out: {e}")))?;
        let installed = inner.cluster.residency().installed();
        {
            let mut open = lock(&inner.open);
            if open.len() >= MAX_OPEN {
                return Err(Status::resource_exhausted(format!(
                    "{} backups are open on this node (at most {MAX_OPEN}); wait for one to end, or for idle ones to be dropped after {BACKUP_IDLE:?}",
                    open.len()
                )));
            }
            let dir = node.engine().path().join(geokv_storage::CHECKPOINTS_DIR).join(&id);
            open.insert(id.clone(), Open { dir, sizes: None, last_used: Instant::now() });
        }
        let name = id.clone();
        let made = crate::blocking::run(move || inner.make(&name)).await;
        let (cp, files) = match made {
            Ok(Ok(made)) => made,
            Ok(Err(e)) => return Err(e),
            Err(e) => {
                self.inner.forget(id).await;
                return Err(e.into());
            }
        };
        tracing::info!(backup = %id, files = files.len(), "checkpoint taken for a backup");
        Ok(pb::BackupCheckpoint {
            id,
            node_id: node.id(),
            region: self.inner.cluster.region.clone(),
            files,
            hlc,
            taken_at_ms,
            log_high_water: cp.log_high_water,
            residency_version: installed.version,
            residency_policy: installed.text.clone(),
            topology,
            layout_version: u32::from(cp.layout_version),
            tombstone_grace_secs: node.engine().grace_ms() / 1000,
        })
    }

    /// Up to `length` bytes (at most [`MAX_CHUNK`]) of one file of an open checkpoint.
    pub async fn read(&self, req: pb::BackupReadRequest) -> Result<pb::BackupChunk, Status> {
        let (dir, size) = {
            let mut open = lock(&self.inner.open);
            let cp = open.get_mut(&req.id).ok_or_else(|| unknown(&req.id))?;
            let sizes = cp.sizes.as_ref().ok_or_else(|| unknown(&req.id))?;
            let size = *sizes.get(&req.name).ok_or_else(|| {
                Status::not_found(format!("backup {} has no file named {:?}", req.id, req.name))
            })?;
            cp.last_used = Instant::now();
            (cp.dir.clone(), size)
        };
        if req.offset > size {
            return Err(Status::out_of_range(format!(
                "offset {} is past the end of {} ({size} bytes)",
                req.offset, req.name
            )));
        }
        let len = u64::from(req.length.clamp(1, MAX_CHUNK)).min(size - req.offset) as usize;
        let path = dir.join(&req.name);
        let data = crate::blocking::run(move || -> std::io::Result<Vec<u8>> {
            let mut f = std::fs::File::open(&path)?;
            f.seek(SeekFrom::Start(req.offset))?;
            let mut buf = vec![0; len];
            f.read_exact(&mut buf)?;
            Ok(buf)
        })
        .await?
        .map_err(|e| Status::internal(format!("cannot read {} of backup {}: {e}", req.name, req.id)))?;
        Ok(pb::BackupChunk { data })
    }

    /// Releases a checkpoint.
    pub async fn end(&self, id: &str) -> Result<(), Status> {
        let known = lock(&self.inner.open).get(id).is_some_and(|o| o.sizes.is_some());
        if !known {
            return Err(unknown(id));
        }
        self.inner.forget(id.to_string()).await;
        Ok(())
    }
}

impl Inner {
    /// Makes checkpoint `name` (registered already) and hashes its files; on failure it is
    /// removed again.
    fn make(&self, name: &str) -> Result<(geokv_storage::Checkpoint, Vec<pb::BackupFile>), Status> {
        let engine = self.cluster.node().engine();
        let made = engine.checkpoint(name).map_err(to_status).and_then(|cp| {
            let mut files = Vec::with_capacity(cp.files.len());
            let mut seen = HashMap::new();
            for (file, size) in &cp.files {
                let sha256 = hashed(&self.hashes, &cp.dir.join(file), *size, &mut seen)
                    .map_err(|e| Status::internal(format!("cannot read checkpoint file {file}: {e}")))?;
                files.push(pb::BackupFile { name: file.clone(), size: *size, sha256 });
            }
            // Forget files no checkpoint links any more.
            *lock(&self.hashes) = seen;
            Ok((cp, files))
        });
        let mut open = lock(&self.open);
        match &made {
            Ok((cp, _)) => {
                if let Some(o) = open.get_mut(name) {
                    o.sizes = Some(cp.files.iter().cloned().collect());
                    o.last_used = Instant::now();
                }
            }
            Err(_) => {
                open.remove(name);
                drop(open);
                if let Err(e) = engine.drop_checkpoint(name) {
                    tracing::warn!(error = %e, "cannot remove a failed checkpoint");
                }
            }
        }
        made
    }

    /// Removes checkpoint `id` (from the table and the disk).
    async fn forget(&self, id: String) {
        lock(&self.open).remove(&id);
        let node = self.cluster.node().clone();
        match crate::blocking::run(move || node.engine().drop_checkpoint(&id)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "cannot remove a checkpoint"),
            Err(e) => tracing::warn!(error = %e, "cannot remove a checkpoint"),
        }
    }

    /// Removes the checkpoints nobody read for [`BACKUP_IDLE`], and folders under the
    /// checkpoints folder that no open backup names.
    async fn expire(&self) {
        let (idle, known): (Vec<String>, Vec<String>) = {
            let open = lock(&self.open);
            let idle = open
                .iter()
                .filter(|(_, o)| o.sizes.is_some() && o.last_used.elapsed() > BACKUP_IDLE)
                .map(|(id, _)| id.clone())
                .collect();
            (idle, open.keys().cloned().collect())
        };
        for id in idle {
            tracing::warn!(backup = %id, "removing a checkpoint no backup read for {BACKUP_IDLE:?}");
            self.forget(id).await;
        }
        let root = self.cluster.node().engine().path().join(geokv_storage::CHECKPOINTS_DIR);
        let orphans: Vec<String> = std::fs::read_dir(&root)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|name| !known.contains(name))
            .collect();
        for name in orphans {
            tracing::warn!(checkpoint = %name, "removing a checkpoint no backup holds");
            self.forget(name).await;
        }
    }
}

fn unknown(id: &str) -> Status {
    Status::not_found(format!(
        "no open backup {id:?} on this node (ended, idle for over {BACKUP_IDLE:?}, or the node restarted); start the backup again"
    ))
}

/// The SHA-256 of a checkpoint file, from `cache` for an SST file hashed before (by inode and
/// size); every SST file's hash is also put in `seen`.
fn hashed(
    cache: &Mutex<HashMap<FileId, String>>,
    path: &std::path::Path,
    size: u64,
    seen: &mut HashMap<FileId, String>,
) -> std::io::Result<String> {
    use std::os::unix::fs::MetadataExt;
    let immutable = path.extension().is_some_and(|e| e == "sst");
    let meta = std::fs::metadata(path)?;
    let id = (meta.ino(), size, meta.mtime(), meta.mtime_nsec());
    let known = cache.lock().unwrap_or_else(PoisonError::into_inner).get(&id).cloned();
    let sha = match known.filter(|_| immutable) {
        Some(sha) => sha,
        None => sha256_of(path)?,
    };
    if immutable {
        seen.insert(id, sha.clone());
    }
    Ok(sha)
}

/// Lowercase hex SHA-256 of a file's contents.
pub fn sha256_of(path: &std::path::Path) -> std::io::Result<String> {
    let mut f = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0; 256 * 1024];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(geokv_tls::hex(&hasher.finalize()))
}
