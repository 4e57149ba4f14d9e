//! Atomic file writes: temp file in the same directory, fsync, rename, fsync the directory.

use crate::error::ConfigError;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// `mkdir -p` with `mode` for the created directories.
pub(crate) fn create_dir_all_mode(dir: &Path, mode: u32) -> std::io::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(dir)
}

fn temp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    path.with_file_name(format!(".{name}.tmp.{}.{n}", std::process::id()))
}

/// Writes `contents` to a fresh temp file next to `path` and fsyncs it; returns its path.
fn write_temp(path: &Path, contents: &[u8], mode: u32) -> Result<PathBuf, ConfigError> {
    let tmp = temp_path(path);
    let result = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(contents)?;
        // The mode given to open() is masked by the umask; set it exactly.
        f.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(mode))?;
        f.sync_all()
    })();
    match result {
        Ok(()) => Ok(tmp),
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(ConfigError::io("cannot write", &tmp, e))
        }
    }
}

fn sync_dir(path: &Path) {
    if let Some(dir) = path.parent() {
        // Best effort: the rename is already atomic; this only makes it durable.
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
    }
}

/// Replaces `path` atomically with `contents` (file mode `mode`).
pub fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> Result<(), ConfigError> {
    let tmp = write_temp(path, contents, mode)?;
    if let Err(e) = std::fs::rename(&tmp, path) {
        let _ = std::fs::remove_file(&tmp);
        return Err(ConfigError::io("cannot replace", path, e));
    }
    sync_dir(path);
    Ok(())
}

/// Creates `path` atomically with `contents` unless it already exists (another process may
/// create it concurrently; the first one wins and nobody sees a partial file).
pub(crate) fn write_atomic_if_absent(
    path: &Path,
    contents: &[u8],
    mode: u32,
) -> Result<(), ConfigError> {
    let tmp = write_temp(path, contents, mode)?;
    // hard_link fails with EEXIST instead of replacing, unlike rename.
    let result = std::fs::hard_link(&tmp, path);
    let _ = std::fs::remove_file(&tmp);
    match result {
        Ok(()) => {
            sync_dir(path);
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(ConfigError::io("cannot create", path, e)),
    }
}
