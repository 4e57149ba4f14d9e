//! The daemon's listening socket (its socket_vmnet-style pid file is
//! [`limanet_runtime::files::PidFile`] with [`limanet_runtime::files::PidFormat::Bare`]).
//!
//! - Socket: mode 0770, group `--socket-group`. A stale socket file (nobody accepts on it) is
//!   replaced; a live one (a connect succeeds) is refused; any other file in the way is an error.
//!   Unlike socket_vmnet, the socket is removed on exit too, if it is still ours
//!   ([`limanet_runtime::files::bind_socket`]).

use std::ffi::CString;
use std::io;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

/// Errors around the daemon's files.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("socket {0} is in use by a running daemon")]
    SocketInUse(PathBuf),
    #[error("{0} exists and is not a socket; not replacing it")]
    NotASocket(PathBuf),
    #[error("unknown group name \"{0}\"")]
    UnknownGroup(String),
    #[error(transparent)]
    Path(#[from] limanet_runtime::FileError),
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> FileError + 'a {
    move |source| FileError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// Looks a group up by name.
pub fn group_id(name: &str) -> Result<libc::gid_t, FileError> {
    let c = CString::new(name).map_err(|_| FileError::UnknownGroup(name.to_string()))?;
    let mut buf = vec![0u8; 16 << 10];
    // SAFETY: all-zero group is a valid out-parameter.
    let mut grp: libc::group = unsafe { std::mem::zeroed() };
    let mut result: *mut libc::group = std::ptr::null_mut();
    // SAFETY: getgrnam_r with a caller-provided buffer; `result` points into `grp` or is null.
    let rc = unsafe {
        libc::getgrnam_r(
            c.as_ptr(),
            &mut grp,
            buf.as_mut_ptr() as *mut libc::c_char,
            buf.len(),
            &mut result,
        )
    };
    if rc != 0 || result.is_null() {
        return Err(FileError::UnknownGroup(name.to_string()));
    }
    Ok(grp.gr_gid)
}

/// Removes a stale socket at `path`; refuses a live one or a file that is not a socket.
pub fn clear_stale_socket(path: &Path) -> Result<(), FileError> {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return Ok(());
    };
    if !meta.file_type().is_socket() {
        return Err(FileError::NotASocket(path.to_path_buf()));
    }
    match UnixStream::connect(path) {
        Ok(_) => Err(FileError::SocketInUse(path.to_path_buf())),
        Err(e) if e.raw_os_error() == Some(libc::ECONNREFUSED) => {
            tracing::info!(socket = %path.display(), "replacing stale socket");
            std::fs::remove_file(path).map_err(io_err("cannot remove stale socket", path))
        }
        Err(e) => Err(io_err("cannot probe existing socket", path)(e)),
    }
}

/// The listening socket (mode 0770, group `--socket-group`), removed on drop if still ours.
#[derive(Debug)]
pub struct Listener {
    pub listener: UnixListener,
    _bound: limanet_runtime::files::BoundPath,
}

impl Listener {
    /// Binds `path` (after [`clear_stale_socket`]), mode 0770 from the start, group `gid`.
    pub fn bind(path: &Path, gid: libc::gid_t) -> Result<Self, FileError> {
        clear_stale_socket(path)?;
        let (listener, bound) =
            limanet_runtime::files::bind_socket(path, 0o770, Some(gid), |p| UnixListener::bind(p))?;
        listener
            .set_nonblocking(true)
            .map_err(io_err("cannot set up", path))?;
        Ok(Listener {
            listener,
            _bound: bound,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn tmp(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("lnvmnet-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// The daemon's pid file, as the service creates it.
    #[test]
    fn pid_file_is_locked_written_without_newline_and_removed() {
        use limanet_runtime::files::{FileError, PidFile, PidFormat};
        let dir = tmp("pid");
        let path = dir.join("d.pid");
        std::fs::write(&path, "999999\n").unwrap(); // stale, unlocked
        let pf = PidFile::create_as(&path, PidFormat::Bare).unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            std::process::id().to_string()
        );
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o644);
        // A second daemon cannot take it (flock is per open file description).
        let err = PidFile::create_as(&path, PidFormat::Bare).unwrap_err();
        assert!(matches!(err, FileError::AlreadyRunning { .. }), "{err}");
        drop(pf);
        assert!(!path.exists());
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn live_sockets_are_refused_and_stale_ones_replaced() {
        let dir = tmp("sock");
        let path = dir.join("s");
        let gid = unsafe { libc::getgid() };
        let l = Listener::bind(&path, gid).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o770);
        assert!(matches!(
            Listener::bind(&path, gid).unwrap_err(),
            FileError::SocketInUse(_)
        ));
        // Simulate a killed daemon: the file stays, nobody listens.
        std::mem::forget(l);
        let stale = std::os::unix::net::UnixListener::bind(dir.join("t")).unwrap();
        drop(stale);
        let l2 = Listener::bind(&dir.join("t"), gid).unwrap();
        drop(l2);
        assert!(!dir.join("t").exists());
        std::fs::write(dir.join("f"), "x").unwrap();
        assert!(matches!(
            Listener::bind(&dir.join("f"), gid).unwrap_err(),
            FileError::NotASocket(_)
        ));
        assert!(matches!(
            group_id("no-such-group-xyz"),
            Err(FileError::UnknownGroup(_))
        ));
        let _ = std::fs::remove_dir_all(dir);
    }
}
