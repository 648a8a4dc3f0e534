//! Backups, the node's side (`geokv backup` is the other): a checkpoint of the node's storage
//! taken while it serves (`geokv_storage::Engine::checkpoint`: every column family at one
//! point, so the change log, the cursors and the data agree), described with each file's size
//! and SHA-256 and the node's HLC, change-log high-water mark, residency policy and topology;
//! read in chunks over the Admin service; released when the backup ends it, or after
//! [`BACKUP_IDLE`] without a read (a backup tool that died), and at the next start.

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

/// The checkpoints open for backups on this node.
pub struct Backups {
    cluster: Arc<Cluster>,
    open: Mutex<HashMap<String, Open>>,
    /// SHA-256 of SST files by inode, size and modification time: a checkpoint hard-links the
    /// live SST files, which never change, so a later backup hashes only the files that are
    /// new (a new file on a reused inode has another modification time).
    hashes: Arc<Mutex<HashMap<FileId, String>>>,
}

struct Open {
    dir: PathBuf,
    sizes: HashMap<String, u64>,
    last_used: Instant,
}

impl Backups {
    /// The node's backups; checkpoints left by an earlier run are removed.
    pub fn new(cluster: Arc<Cluster>) -> Self {
        if let Err(e) = cluster.node().engine().drop_checkpoints() {
            tracing::warn!(error = %e, "cannot remove the checkpoints of an earlier run");
        }
        Backups { cluster, open: Mutex::new(HashMap::new()), hashes: Arc::default() }
    }

    /// Takes a checkpoint and describes it.
    pub async fn begin(&self) -> Result<pb::BackupCheckpoint, Status> {
        self.expire().await;
        let node = self.cluster.node().clone();
        let hlc = node.hlc_now();
        let taken_at_ms = node.now_ms();
        let id = format!("{}-{hlc:x}", node.id());
        let name = id.clone();
        let hashes = self.hashes.clone();
        let (cp, files) = crate::blocking::run(move || -> Result<_, Status> {
            let cp = node.engine().checkpoint(&name).map_err(to_status)?;
            let mut files = Vec::with_capacity(cp.files.len());
            let mut seen = HashMap::new();
            for (file, size) in &cp.files {
                let path = cp.dir.join(file);
                let sha256 = hashed(&hashes, &path, *size, &mut seen)
                    .map_err(|e| Status::internal(format!("cannot read checkpoint file {file}: {e}")))?;
                files.push(pb::BackupFile { name: file.clone(), size: *size, sha256 });
            }
            // Forget files no checkpoint links any more.
            *hashes.lock().unwrap_or_else(PoisonError::into_inner) = seen;
            Ok((cp, files))
        })
        .await??;
        let installed = self.cluster.residency().installed();
        let topology = toml::to_string(self.cluster.residency().topology())
            .map_err(|e| Status::internal(format!("cannot write the topology out: {e}")))?;
        let sizes = cp.files.iter().cloned().collect();
        self.lock().insert(id.clone(), Open { dir: cp.dir.clone(), sizes, last_used: Instant::now() });
        tracing::info!(backup = %id, files = files.len(), "checkpoint taken for a backup");
        Ok(pb::BackupCheckpoint {
            id,
            node_id: self.cluster.node().id(),
            region: self.cluster.region.clone(),
            files,
            hlc,
            taken_at_ms,
            log_high_water: cp.log_high_water,
            residency_version: installed.version,
            residency_policy: installed.text.clone(),
            topology,
            layout_version: u32::from(cp.layout_version),
        })
    }

    /// Up to `length` bytes (at most [`MAX_CHUNK`]) of one file of an open checkpoint.
    pub async fn read(&self, req: pb::BackupReadRequest) -> Result<pb::BackupChunk, Status> {
        let (dir, size) = {
            let mut open = self.lock();
            let cp = open.get_mut(&req.id).ok_or_else(|| unknown(&req.id))?;
            let size = *cp.sizes.get(&req.name).ok_or_else(|| {
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
        let known = self.lock().remove(id).is_some();
        if !known {
            return Err(unknown(id));
        }
        self.drop_checkpoint(id.to_string()).await
    }

    /// Removes the checkpoints nobody read for [`BACKUP_IDLE`].
    async fn expire(&self) {
        let idle: Vec<String> = {
            let mut open = self.lock();
            let idle: Vec<String> = open
                .iter()
                .filter(|(_, o)| o.last_used.elapsed() > BACKUP_IDLE)
                .map(|(id, _)| id.clone())
                .collect();
            for id in &idle {
                open.remove(id);
            }
            idle
        };
        for id in idle {
            tracing::warn!(backup = %id, "removing a checkpoint no backup read for {BACKUP_IDLE:?}");
            if let Err(e) = self.drop_checkpoint(id).await {
                tracing::warn!(error = %e, "cannot remove an idle checkpoint");
            }
        }
    }

    async fn drop_checkpoint(&self, id: String) -> Result<(), Status> {
        let node = self.cluster.node().clone();
        crate::blocking::run(move || node.engine().drop_checkpoint(&id)).await?.map_err(to_status)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Open>> {
        self.open.lock().unwrap_or_else(PoisonError::into_inner)
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
