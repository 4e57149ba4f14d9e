//! Lima's path-security rules for `paths.*` (socketVMNet, varRun, sudoers): the path and every
//! parent up to `/` must be absolute, free of spaces and symlinks, owned by root, and not group-
//! or world-writable (varRun may be group-writable by the `daemon` group).
//!
//! Lima only runs this on macOS; limanet runs it on Linux, with root's and `daemon`'s ids read
//! from the system (Debian: `daemon` has gid 1).

use crate::quote::go_quote_backtick as q;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// The ids the rules compare against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SystemIds {
    /// root's uid (0).
    pub root_uid: u32,
    /// root's primary gid (0).
    pub root_gid: u32,
    /// The `daemon` group's gid (1 on Debian and macOS).
    pub daemon_gid: u32,
}

impl SystemIds {
    /// Reads the ids from `/etc/group` (falling back to 0 and 1 when an entry is missing).
    pub fn from_system() -> Self {
        let groups = std::fs::read_to_string("/etc/group").unwrap_or_default();
        SystemIds {
            root_uid: 0,
            root_gid: group_gid(&groups, "root").unwrap_or(0),
            daemon_gid: group_gid(&groups, "daemon").unwrap_or(1),
        }
    }
}

/// Looks up a group's gid in `/etc/group`-formatted text.
pub fn group_gid(etc_group: &str, name: &str) -> Option<u32> {
    etc_group.lines().find_map(|line| {
        let mut fields = line.split(':');
        if fields.next()? != name {
            return None;
        }
        fields.nth(1)?.trim().parse().ok()
    })
}

/// Whether a group exists in `/etc/group`-formatted text.
pub fn group_exists(etc_group: &str, name: &str) -> bool {
    group_gid(etc_group, name).is_some()
}

/// Why a path failed the check. The messages are Lima's, stray quote included.
#[derive(Debug, thiserror::Error)]
pub enum PathError {
    /// Relative path.
    #[error("path {} is not an absolute path", q(.0))]
    NotAbsolute(String),
    /// Contains a space.
    #[error("path {} contains whitespace", q(.0))]
    Whitespace(String),
    /// `lstat` failed (not-exist included; callers decide whether that is fatal).
    #[error("lstat {path}: {error}")]
    Stat {
        /// The path.
        path: String,
        /// The error.
        error: std::io::Error,
    },
    /// A symlink.
    #[error("{kind} {} is a symlink", q(.path))]
    Symlink {
        /// `dir` or `file`.
        kind: &'static str,
        /// The path.
        path: String,
    },
    /// Not owned by root.
    #[error("{kind} {} is not owned by `root` (uid: {root_uid}), but by uid {uid}", q(.path))]
    NotOwnedByRoot {
        /// `dir` or `file`.
        kind: &'static str,
        /// The path.
        path: String,
        /// root's uid.
        root_uid: u32,
        /// The owner.
        uid: u32,
    },
    /// Group-writable by a group other than root or daemon (varRun).
    #[error("{kind} {} is group-writable and group is neither `root` (gid: {root_gid}) nor `daemon` (gid: {daemon_gid}), but is gid: {gid}", q(.path))]
    GroupWritableNotRootOrDaemon {
        /// `dir` or `file`.
        kind: &'static str,
        /// The path.
        path: String,
        /// root's gid.
        root_gid: u32,
        /// daemon's gid.
        daemon_gid: u32,
        /// The file's gid.
        gid: u32,
    },
    /// A directory the daemon group cannot traverse (varRun).
    #[error("{kind} {} is not executable by the `daemon` (gid: {daemon_gid})\" group", q(.path))]
    NotExecutableByDaemon {
        /// `dir` or `file`.
        kind: &'static str,
        /// The path.
        path: String,
        /// daemon's gid.
        daemon_gid: u32,
    },
    /// Group-writable by a group other than root.
    #[error("{kind} {} is group-writable and group is not `root` (gid: {root_gid}), but is gid: {gid}", q(.path))]
    GroupWritable {
        /// `dir` or `file`.
        kind: &'static str,
        /// The path.
        path: String,
        /// root's gid.
        root_gid: u32,
        /// The file's gid.
        gid: u32,
    },
    /// World-writable.
    #[error("{kind} {} is world-writable", q(.path))]
    WorldWritable {
        /// `dir` or `file`.
        kind: &'static str,
        /// The path.
        path: String,
    },
}

impl PathError {
    /// Whether this is an `lstat` not-found error.
    pub fn is_not_found(&self) -> bool {
        matches!(self, PathError::Stat { error, .. } if error.kind() == std::io::ErrorKind::NotFound)
    }
}

/// Lima's `validatePath`: checks `path` and then each parent up to `/`.
pub fn validate_path(
    path: &str,
    allow_daemon_group_writable: bool,
    ids: &SystemIds,
) -> Result<(), PathError> {
    if path.is_empty() {
        return Ok(());
    }
    if !path.starts_with('/') {
        return Err(PathError::NotAbsolute(path.to_owned()));
    }
    if path.contains(' ') {
        return Err(PathError::Whitespace(path.to_owned()));
    }
    let meta = std::fs::symlink_metadata(path).map_err(|error| PathError::Stat {
        path: path.to_owned(),
        error,
    })?;
    let kind = if meta.is_dir() { "dir" } else { "file" };
    let p = || path.to_owned();
    if meta.file_type().is_symlink() {
        return Err(PathError::Symlink { kind, path: p() });
    }
    if meta.uid() != ids.root_uid {
        return Err(PathError::NotOwnedByRoot {
            kind,
            path: p(),
            root_uid: ids.root_uid,
            uid: meta.uid(),
        });
    }
    let mode = meta.mode();
    let gid = meta.gid();
    if allow_daemon_group_writable {
        if mode & 0o020 != 0 && gid != ids.root_gid && gid != ids.daemon_gid {
            return Err(PathError::GroupWritableNotRootOrDaemon {
                kind,
                path: p(),
                root_gid: ids.root_gid,
                daemon_gid: ids.daemon_gid,
                gid,
            });
        }
        if meta.is_dir() && mode & 0o001 == 0 && (mode & 0o010 == 0 || gid != ids.daemon_gid) {
            return Err(PathError::NotExecutableByDaemon {
                kind,
                path: p(),
                daemon_gid: ids.daemon_gid,
            });
        }
    } else if mode & 0o020 != 0 && gid != ids.root_gid {
        return Err(PathError::GroupWritable {
            kind,
            path: p(),
            root_gid: ids.root_gid,
            gid,
        });
    }
    if mode & 0o002 != 0 {
        return Err(PathError::WorldWritable { kind, path: p() });
    }
    match Path::new(path).parent() {
        Some(parent) if path != "/" => {
            validate_path(&parent.to_string_lossy(), allow_daemon_group_writable, ids)
        }
        _ => Ok(()),
    }
}

/// For varRun: drops trailing components that do not exist yet, so the nearest existing
/// ancestor is what gets checked (it will be created by `mkdir -p` through sudo).
/// A relative path is returned unchanged, so the "not an absolute path" error shows it whole.
pub fn existing_base(path: &str) -> String {
    if !path.starts_with('/') {
        return path.to_owned();
    }
    let mut p = Path::new(path);
    while p != Path::new("/") && std::fs::symlink_metadata(p).is_err() {
        match p.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => p = parent,
            _ => break,
        }
    }
    p.to_string_lossy().into_owned()
}
