//! Files and unix sockets a daemon creates in directories other users may reach: pid files,
//! listening sockets, the default runtime directory and other scratch files.
//!
//! limanet often runs as root and puts these in shared places (`/run/lima`, `$TMPDIR`), so
//! every helper here assumes another local user may have prepared the path: nothing follows a
//! symlink, nothing is created non-exclusively, nothing is removed unless it is still the very
//! inode this process created, and a live socket of another program is never taken over.
//!
//! - [`PidFile`]: created exclusively (O_TMPFILE + linkat, or O_EXCL|O_NOFOLLOW) with mode 0644
//!   whatever the umask, `flock`ed while the daemon runs. Liveness of an existing pid file is
//!   decided by its lock, not by `kill(pid, 0)`: a pid reused after a crash does not block a
//!   start. Reads `<pid>\n` (Lima's usernet) and `<pid>` (socket_vmnet).
//! - [`prepare_socket_path`] and [`BoundPath`]: an existing socket is probed with `connect`;
//!   if anything answers, start is refused; only a dead socket is replaced, and a bound path is
//!   removed on exit only if it is still ours. [`bind_socket`] does all of it for one socket,
//!   with its final mode and group from the start.
//! - [`private_dir`]: a runtime directory created 0700, refused if it is a symlink, owned by
//!   someone else or open to group/other.
//! - [`ExclusiveFile`]: a new regular file at a (possibly predictable) path, never following
//!   a symlink, removed on drop if still ours.

use std::ffi::CString;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use tracing::{debug, info, warn};

/// What went wrong with a file or socket path. Each message names the path once and says what
/// to do; none repeats its cause.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// A live limanet holds the pid file's lock.
    #[error("pid file {path} is held by a running limanet{}", pid_suffix(*pid))]
    AlreadyRunning { path: PathBuf, pid: Option<u32> },
    /// Something answered on the socket path.
    #[error("{path}: another program is listening on this socket; stop it or choose another path")]
    SocketInUse { path: PathBuf },
    /// The path exists and is not what it should be (symlink, directory, FIFO, regular file in
    /// place of a socket, ...).
    #[error("{path} exists and is {found}; refusing to use or replace it")]
    InTheWay { path: PathBuf, found: &'static str },
    /// A directory that other users could tamper with.
    #[error("{path}: {reason}")]
    UnsafeDirectory { path: PathBuf, reason: String },
    /// A system call failed.
    #[error("{what}: {error}")]
    Io { what: String, error: io::Error },
}

fn pid_suffix(pid: Option<u32>) -> String {
    pid.map(|p| format!(" (pid {p})")).unwrap_or_default()
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> FileError {
    let what = what.into();
    move |error| FileError::Io { what, error }
}

fn cvt(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn c_name(name: &std::ffi::OsStr) -> io::Result<CString> {
    CString::new(name.as_bytes()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
}

fn fstat(fd: RawFd) -> io::Result<libc::stat> {
    // SAFETY: all-zero is a valid stat buffer; fstat fills it.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    cvt(unsafe { libc::fstat(fd, &mut st) })?;
    Ok(st)
}

fn fstatat_nofollow(dir: RawFd, name: &CString) -> io::Result<libc::stat> {
    // SAFETY: as in `fstat`; `name` is NUL-terminated.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    cvt(unsafe { libc::fstatat(dir, name.as_ptr(), &mut st, libc::AT_SYMLINK_NOFOLLOW) })?;
    Ok(st)
}

fn euid() -> u32 {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() }
}

fn kind_of(mode: libc::mode_t) -> &'static str {
    match mode & libc::S_IFMT {
        libc::S_IFLNK => "a symbolic link",
        libc::S_IFDIR => "a directory",
        libc::S_IFIFO => "a FIFO",
        libc::S_IFSOCK => "a socket",
        libc::S_IFCHR | libc::S_IFBLK => "a device",
        libc::S_IFREG => "a regular file",
        _ => "not a regular file",
    }
}

/// A file's identity: it is "still ours" while the name resolves to the same device and inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Identity {
    dev: u64,
    ino: u64,
}

impl Identity {
    fn of(st: &libc::stat) -> Identity {
        Identity {
            dev: st.st_dev,
            ino: st.st_ino,
        }
    }
}

/// The directory of `path`, opened (symlinks in the directory's own path are the caller's
/// choice and are followed), and the last component as a C string.
fn open_parent(path: &Path) -> Result<(OwnedFd, CString), FileError> {
    let name = path.file_name().ok_or_else(|| FileError::Io {
        what: format!("{}", path.display()),
        error: io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"),
    })?;
    let name = c_name(name).map_err(io_err(format!("{}", path.display())))?;
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let dir_c = c_name(dir.as_os_str()).map_err(io_err(format!("{}", dir.display())))?;
    // SAFETY: plain open of a NUL-terminated path; we own the result.
    let fd = cvt(unsafe {
        libc::open(
            dir_c.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    })
    .map_err(io_err(format!("cannot open directory {}", dir.display())))?;
    // SAFETY: fresh descriptor.
    Ok((unsafe { OwnedFd::from_raw_fd(fd) }, name))
}

/// Refuses a directory that a user other than us (or root) could use to swap files: owned by
/// someone else, or world-writable without the sticky bit.
fn check_shared_dir(dir: &OwnedFd, shown: &Path) -> Result<(), FileError> {
    let st = fstat(dir.as_raw_fd()).map_err(io_err(format!("stat {}", shown.display())))?;
    let me = euid();
    if st.st_uid != me && st.st_uid != 0 {
        return Err(FileError::UnsafeDirectory {
            path: shown.to_path_buf(),
            reason: format!(
                "directory is owned by uid {}, neither root nor us (uid {me}); refusing to create files in it",
                st.st_uid
            ),
        });
    }
    // Group-writable is allowed: Lima's own `varRun` is `mkdir -m 775`, owned by root and the
    // admin group it names in sudoers.
    let writable_by_others = st.st_mode & 0o002 != 0;
    let sticky = st.st_mode & libc::S_ISVTX != 0;
    if writable_by_others && !sticky {
        return Err(FileError::UnsafeDirectory {
            path: shown.to_path_buf(),
            reason: format!(
                "directory is writable by every user (mode {:04o}) and not sticky; refusing to create files in it",
                st.st_mode & 0o7777
            ),
        });
    }
    Ok(())
}

/// Removes `name` from `dir` if it is still the inode `id`.
fn unlink_if_same(dir: &OwnedFd, name: &CString, id: Identity) -> io::Result<bool> {
    match fstatat_nofollow(dir.as_raw_fd(), name) {
        Ok(st) if Identity::of(&st) == id => {
            // SAFETY: NUL-terminated name relative to an open directory.
            cvt(unsafe { libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), 0) })?;
            Ok(true)
        }
        Ok(_) => Ok(false),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

/// Parses a pid file's text: `<pid>\n` (Lima) or `<pid>` (socket_vmnet).
pub fn parse_pid(text: &str) -> Option<u32> {
    text.trim().parse::<u32>().ok().filter(|p| *p > 0)
}

/// Tries a non-blocking lock; `Ok(false)` when someone else holds a conflicting one.
fn try_flock(fd: RawFd, op: libc::c_int) -> io::Result<bool> {
    loop {
        // SAFETY: flock on a descriptor we own.
        match cvt(unsafe { libc::flock(fd, op | libc::LOCK_NB) }) {
            Ok(_) => return Ok(true),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
}

/// A pid file held by this process: locked while it lives, removed on drop if it is still the
/// file we created.
#[derive(Debug)]
pub struct PidFile {
    path: PathBuf,
    dir: OwnedFd,
    name: CString,
    /// Holds the `flock` that tells other limanets we are alive.
    file: File,
    id: Identity,
}

/// What an existing pid file says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PidFileState {
    /// No file.
    Missing,
    /// A live limanet holds the lock (its pid, if the file names one).
    Locked(Option<u32>),
    /// Nobody holds the lock: left over from a process that is gone (the pid, if any, may have
    /// been reused by an unrelated process).
    Stale(Option<u32>),
}

/// How the pid is written: Lima's usernet writes `<pid>\n`, socket_vmnet the bare number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PidFormat {
    Line,
    Bare,
}

impl PidFile {
    /// [`PidFile::create_as`] with `<pid>\n`.
    pub fn create(path: &Path) -> Result<PidFile, FileError> {
        Self::create_as(path, PidFormat::Line)
    }

    /// Writes this process's pid to `path` and locks it.
    ///
    /// Refuses if a live limanet holds an existing file's lock, if the path is a symlink or
    /// anything but a regular file, or if the directory could be tampered with by another user.
    /// A stale file (no lock held) is replaced, even if the pid in it names a live process.
    pub fn create_as(path: &Path, format: PidFormat) -> Result<PidFile, FileError> {
        let (dir, name) = open_parent(path)?;
        check_shared_dir(&dir, path.parent().unwrap_or(Path::new(".")))?;
        for _attempt in 0..3 {
            match Self::inspect_at(&dir, &name, path)? {
                (PidFileState::Missing, _) => {}
                (PidFileState::Locked(pid), _) => {
                    return Err(FileError::AlreadyRunning {
                        path: path.to_path_buf(),
                        pid,
                    })
                }
                (PidFileState::Stale(pid), Some(id)) => {
                    match pid {
                        Some(pid) => {
                            warn!(path = %path.display(), pid, "replacing stale pid file (no limanet holds its lock)")
                        }
                        None => warn!(path = %path.display(), "replacing stale pid file"),
                    }
                    unlink_if_same(&dir, &name, id).map_err(io_err(format!(
                        "cannot remove stale pid file {}",
                        path.display()
                    )))?;
                }
                (PidFileState::Stale(_), None) => {}
            }
            match Self::create_locked(&dir, &name, path, format) {
                Ok(file) => {
                    let st = fstat(file.as_raw_fd())
                        .map_err(io_err(format!("stat {}", path.display())))?;
                    debug!(path = %path.display(), "pid file written and locked");
                    return Ok(PidFile {
                        path: path.to_path_buf(),
                        dir,
                        name,
                        file,
                        id: Identity::of(&st),
                    });
                }
                // Someone created it between our look and our link: look again.
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => {
                    return Err(FileError::Io {
                        what: format!("cannot create pid file {}", path.display()),
                        error: e,
                    })
                }
            }
        }
        Err(FileError::Io {
            what: format!("cannot create pid file {}", path.display()),
            error: io::Error::new(
                io::ErrorKind::AlreadyExists,
                "it keeps being re-created by another process",
            ),
        })
    }

    /// What the pid file at `path` says, without changing it.
    pub fn inspect(path: &Path) -> Result<PidFileState, FileError> {
        let (dir, name) = open_parent(path)?;
        Self::inspect_at(&dir, &name, path).map(|(state, _)| state)
    }

    fn inspect_at(
        dir: &OwnedFd,
        name: &CString,
        path: &Path,
    ) -> Result<(PidFileState, Option<Identity>), FileError> {
        // O_NONBLOCK: a FIFO planted at the path must not hang the open.
        // SAFETY: NUL-terminated name relative to an open directory; we own the result.
        let fd = unsafe {
            libc::openat(
                dir.as_raw_fd(),
                name.as_ptr(),
                libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            let e = io::Error::last_os_error();
            return match e.raw_os_error() {
                Some(libc::ENOENT) => Ok((PidFileState::Missing, None)),
                Some(libc::ELOOP) => Err(FileError::InTheWay {
                    path: path.to_path_buf(),
                    found: "a symbolic link",
                }),
                _ => Err(FileError::Io {
                    what: format!("cannot open pid file {}", path.display()),
                    error: e,
                }),
            };
        }
        // SAFETY: fresh descriptor.
        let mut file = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
        let st = fstat(fd).map_err(io_err(format!("stat {}", path.display())))?;
        if st.st_mode & libc::S_IFMT != libc::S_IFREG {
            return Err(FileError::InTheWay {
                path: path.to_path_buf(),
                found: kind_of(st.st_mode),
            });
        }
        let mut text = String::new();
        // A pid file is a few bytes; anything longer is not one of ours.
        let _ = (&mut file).take(64).read_to_string(&mut text);
        let pid = parse_pid(&text);
        let unlocked = try_flock(fd, libc::LOCK_SH)
            .map_err(io_err(format!("cannot lock pid file {}", path.display())))?;
        let state = if unlocked {
            PidFileState::Stale(pid)
        } else {
            PidFileState::Locked(pid)
        };
        Ok((state, Some(Identity::of(&st))))
    }

    /// Creates the file complete and locked, then gives it its name (never replacing anything).
    fn create_locked(
        dir: &OwnedFd,
        name: &CString,
        path: &Path,
        format: PidFormat,
    ) -> io::Result<File> {
        let text = match format {
            PidFormat::Line => format!("{}\n", std::process::id()),
            PidFormat::Bare => std::process::id().to_string(),
        };
        // Unnamed first, so nobody ever reads a half-written file.
        // SAFETY: "." relative to an open directory; we own the result.
        let fd = unsafe {
            libc::openat(
                dir.as_raw_fd(),
                c".".as_ptr(),
                libc::O_TMPFILE | libc::O_WRONLY | libc::O_CLOEXEC,
                0o644 as libc::c_uint,
            )
        };
        if fd >= 0 {
            // SAFETY: fresh descriptor.
            let mut file = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
            Self::fill(&mut file, &text)?;
            let proc_path = CString::new(format!("/proc/self/fd/{fd}"))
                .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
            // SAFETY: NUL-terminated paths; linkat never replaces an existing name.
            let linked = cvt(unsafe {
                libc::linkat(
                    libc::AT_FDCWD,
                    proc_path.as_ptr(),
                    dir.as_raw_fd(),
                    name.as_ptr(),
                    libc::AT_SYMLINK_FOLLOW,
                )
            });
            match linked {
                Ok(_) => return Ok(file),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Err(e),
                // No /proc (or no permission to link through it): fall through.
                Err(e) => debug!(path = %path.display(), error = %e, "linkat of O_TMPFILE failed"),
            }
        }
        // SAFETY: NUL-terminated name relative to an open directory; we own the result.
        let fd = cvt(unsafe {
            libc::openat(
                dir.as_raw_fd(),
                name.as_ptr(),
                libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_WRONLY | libc::O_CLOEXEC,
                0o644 as libc::c_uint,
            )
        })?;
        // SAFETY: fresh descriptor.
        let mut file = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
        Self::fill(&mut file, &text)?;
        Ok(file)
    }

    fn fill(file: &mut File, text: &str) -> io::Result<()> {
        // The umask must not make it 0666 (or 0600): readers such as `pkill -F` need 0644.
        // SAFETY: fchmod on a descriptor we own.
        cvt(unsafe { libc::fchmod(file.as_raw_fd(), 0o644) })?;
        if !try_flock(file.as_raw_fd(), libc::LOCK_EX)? {
            return Err(io::Error::new(
                io::ErrorKind::WouldBlock,
                "a fresh pid file is locked by someone else",
            ));
        }
        file.write_all(text.as_bytes())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        match unlink_if_same(&self.dir, &self.name, self.id) {
            Ok(true) => debug!(path = %self.path.display(), "pid file removed"),
            Ok(false) => {
                warn!(path = %self.path.display(), "pid file was replaced by another process; leaving it")
            }
            Err(e) => warn!(path = %self.path.display(), error = %e, "cannot remove pid file"),
        }
        // The lock goes with the descriptor, after the name is gone.
        let _ = &self.file;
    }
}

/// What answered at a unix socket path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SocketProbe {
    /// Nothing at the path.
    Missing,
    /// A socket file nobody listens on (left over from a process that is gone).
    Dead,
    /// Something accepted the connection (or would, but its backlog is full).
    Live,
}

/// Connects to the socket at `path` with each socket type until one is the right type.
pub fn probe_socket(path: &Path) -> io::Result<SocketProbe> {
    use socket2::{Domain, SockAddr, Socket, Type};
    let addr = SockAddr::unix(path)?;
    for ty in [Type::STREAM, Type::DGRAM, Type::SEQPACKET] {
        let socket = Socket::new(Domain::UNIX, ty.nonblocking().cloexec(), None)?;
        match socket.connect(&addr) {
            Ok(()) => return Ok(SocketProbe::Live),
            Err(e) => match e.raw_os_error() {
                Some(libc::EINPROGRESS) | Some(libc::EAGAIN) => return Ok(SocketProbe::Live),
                Some(libc::ECONNREFUSED) => return Ok(SocketProbe::Dead),
                Some(libc::ENOENT) => return Ok(SocketProbe::Missing),
                Some(libc::EPROTOTYPE) => continue,
                _ => return Err(e),
            },
        }
    }
    // A socket of a type we cannot connect to: treat it as someone's.
    Ok(SocketProbe::Live)
}

/// Makes `path` free for `bind`: nothing there, or a dead socket that is removed. Refuses a
/// live socket (another program, or another limanet) and anything that is not a socket.
pub fn prepare_socket_path(path: &Path) -> Result<(), FileError> {
    let (dir, name) = open_parent(path)?;
    let st = match fstatat_nofollow(dir.as_raw_fd(), &name) {
        Ok(st) => st,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => {
            return Err(FileError::Io {
                what: format!("stat {}", path.display()),
                error: e,
            })
        }
    };
    if st.st_mode & libc::S_IFMT != libc::S_IFSOCK {
        return Err(FileError::InTheWay {
            path: path.to_path_buf(),
            found: match kind_of(st.st_mode) {
                "a regular file" => "a file that is not a socket",
                other => other,
            },
        });
    }
    match probe_socket(path) {
        Ok(SocketProbe::Missing) => Ok(()),
        Ok(SocketProbe::Live) => Err(FileError::SocketInUse {
            path: path.to_path_buf(),
        }),
        Ok(SocketProbe::Dead) => {
            unlink_if_same(&dir, &name, Identity::of(&st)).map_err(io_err(format!(
                "cannot remove stale socket {}",
                path.display()
            )))?;
            info!(path = %path.display(), "replaced a stale socket nobody listened on");
            Ok(())
        }
        // Permission denied and the like: it is not ours to replace.
        Err(e) => Err(FileError::Io {
            what: format!(
                "{} exists and cannot be probed; refusing to replace it",
                path.display()
            ),
            error: e,
        }),
    }
}

/// A path this process bound a socket (or created a file) at; removed on drop only if it is
/// still the same inode, so a socket another process bound there since is left alone.
#[derive(Debug)]
pub struct BoundPath {
    path: PathBuf,
    dir: OwnedFd,
    name: CString,
    id: Identity,
}

impl BoundPath {
    /// Records what is at `path` now (call right after `bind`).
    pub fn record(path: &Path) -> Result<BoundPath, FileError> {
        let (dir, name) = open_parent(path)?;
        let st = fstatat_nofollow(dir.as_raw_fd(), &name)
            .map_err(io_err(format!("stat {}", path.display())))?;
        Ok(BoundPath {
            path: path.to_path_buf(),
            dir,
            name,
            id: Identity::of(&st),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for BoundPath {
    fn drop(&mut self) {
        match unlink_if_same(&self.dir, &self.name, self.id) {
            Ok(true) => debug!(path = %self.path.display(), "removed"),
            Ok(false) => {
                info!(path = %self.path.display(), "not removing: it is no longer the file this process created")
            }
            Err(e) => warn!(path = %self.path.display(), error = %e, "cannot remove"),
        }
    }
}

/// Binds a unix socket at `path` (with `bind`, e.g. `UnixListener::bind`) after
/// [`prepare_socket_path`], with its final `mode` (e.g. 0o600, 0o770) from the moment it exists:
/// the mode comes from the umask at bind time, so there is no moment it is reachable more
/// widely and no path-based chmod that a swapped-in symlink could redirect. With `group`, the
/// socket's group is set (lchown: never through a symlink). Returns the socket and its
/// [`BoundPath`], which removes it on drop if it is still ours.
///
/// The umask is process-wide: call this while no other thread creates files.
pub fn bind_socket<T>(
    path: &Path,
    mode: u32,
    group: Option<libc::gid_t>,
    bind: impl FnOnce(&Path) -> io::Result<T>,
) -> Result<(T, BoundPath), FileError> {
    prepare_socket_path(path)?;
    // SAFETY: umask only swaps the process's creation mask; restored right after the bind.
    let old_mask = unsafe { libc::umask(!mode & 0o777) };
    let bound = bind(path);
    // SAFETY: as above.
    unsafe { libc::umask(old_mask) };
    let socket = bound.map_err(io_err(format!("cannot listen on {}", path.display())))?;
    let recorded = BoundPath::record(path)?;
    if let Some(gid) = group {
        let c_path = CString::new(path.as_os_str().as_bytes()).map_err(|_| FileError::Io {
            what: format!("chown {}", path.display()),
            error: io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"),
        })?;
        // SAFETY: a valid C string; uid -1 leaves the owner alone; a symlink is not followed.
        if unsafe { libc::lchown(c_path.as_ptr(), u32::MAX, gid) } != 0 {
            return Err(FileError::Io {
                what: format!("chown {}", path.display()),
                error: io::Error::last_os_error(),
            });
        }
    }
    Ok((socket, recorded))
}

/// Creates (or checks) a directory only we may use: mode 0700, owned by us, not a symlink.
/// Missing parents are created normally.
pub fn private_dir(path: &Path) -> Result<(), FileError> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        if !parent.exists() {
            std::fs::create_dir_all(parent)
                .map_err(io_err(format!("cannot create {}", parent.display())))?;
        }
    }
    let c = c_name(path.as_os_str()).map_err(io_err(format!("{}", path.display())))?;
    // SAFETY: NUL-terminated path.
    let created = match cvt(unsafe { libc::mkdir(c.as_ptr(), 0o700) }) {
        Ok(_) => true,
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => false,
        Err(e) => {
            return Err(FileError::Io {
                what: format!("cannot create {}", path.display()),
                error: e,
            })
        }
    };
    // Judge what is there by its metadata first: a directory another user owns may not even
    // be openable by us.
    let meta =
        std::fs::symlink_metadata(path).map_err(io_err(format!("stat {}", path.display())))?;
    let me = euid();
    let foreign = |uid: u32| {
        FileError::UnsafeDirectory {
        path: path.to_path_buf(),
        reason: format!(
            "runtime directory is owned by uid {uid}, not by us (uid {me}); remove it or set XDG_RUNTIME_DIR"
        ),
    }
    };
    if meta.file_type().is_symlink() {
        return Err(FileError::InTheWay {
            path: path.to_path_buf(),
            found: "a symbolic link",
        });
    }
    if !meta.is_dir() {
        return Err(FileError::InTheWay {
            path: path.to_path_buf(),
            found: "not a directory",
        });
    }
    if meta.uid() != me {
        return Err(foreign(meta.uid()));
    }
    // Then hold it open (no symlink swapped in since) and check the very directory we hold.
    // SAFETY: NUL-terminated path; O_NOFOLLOW refuses a symlink at the last component.
    let fd = cvt(unsafe {
        libc::open(
            c.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        )
    })
    .map_err(io_err(format!("cannot open {}", path.display())))?;
    // SAFETY: fresh descriptor.
    let dir = unsafe { OwnedFd::from_raw_fd(fd) };
    let st = fstat(dir.as_raw_fd()).map_err(io_err(format!("stat {}", path.display())))?;
    if st.st_uid != me {
        return Err(foreign(st.st_uid));
    }
    if created {
        // A umask like 0777 could have left it unusable; it is ours, so set exactly 0700.
        // SAFETY: fchmod on a descriptor we own.
        cvt(unsafe { libc::fchmod(dir.as_raw_fd(), 0o700) })
            .map_err(io_err(format!("chmod {}", path.display())))?;
    } else if st.st_mode & 0o077 != 0 {
        return Err(FileError::UnsafeDirectory {
            path: path.to_path_buf(),
            reason: format!(
                "runtime directory is open to other users (mode {:04o}); make it 0700 or remove it",
                st.st_mode & 0o7777
            ),
        });
    }
    Ok(())
}

/// A new regular file at a path other users might predict (e.g. in `/tmp`), created with
/// O_EXCL|O_NOFOLLOW and removed on drop if it is still ours.
#[derive(Debug)]
pub struct ExclusiveFile {
    bound: BoundPath,
}

impl ExclusiveFile {
    /// Creates `path` with `contents` and `mode` (umask ignored). Whatever is at the path
    /// already (a stale file, or a symlink planted by someone) is unlinked, never followed.
    pub fn create(path: &Path, contents: &[u8], mode: u32) -> Result<ExclusiveFile, FileError> {
        let (dir, name) = open_parent(path)?;
        let what = || format!("cannot create {}", path.display());
        let open = || {
            // SAFETY: NUL-terminated name relative to an open directory.
            cvt(unsafe {
                libc::openat(
                    dir.as_raw_fd(),
                    name.as_ptr(),
                    libc::O_CREAT
                        | libc::O_EXCL
                        | libc::O_NOFOLLOW
                        | libc::O_WRONLY
                        | libc::O_CLOEXEC,
                    0o600 as libc::c_uint,
                )
            })
        };
        let fd = match open() {
            Ok(fd) => fd,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                warn!(path = %path.display(), "replacing a file left at a path this process needs");
                // SAFETY: NUL-terminated name; unlinkat removes a symlink itself, not its target.
                cvt(unsafe { libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), 0) })
                    .map_err(io_err(what()))?;
                open().map_err(io_err(what()))?
            }
            Err(e) => {
                return Err(FileError::Io {
                    what: what(),
                    error: e,
                })
            }
        };
        // SAFETY: fresh descriptor.
        let mut file = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
        // SAFETY: fchmod on a descriptor we own.
        cvt(unsafe { libc::fchmod(fd, mode as libc::mode_t) }).map_err(io_err(what()))?;
        let st = fstat(fd).map_err(io_err(what()))?;
        let bound = BoundPath {
            path: path.to_path_buf(),
            dir,
            name,
            id: Identity::of(&st),
        };
        file.write_all(contents).map_err(io_err(what()))?;
        Ok(ExclusiveFile { bound })
    }

    pub fn path(&self) -> &Path {
        self.bound.path()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pid_formats() {
        assert_eq!(parse_pid("123\n"), Some(123));
        assert_eq!(parse_pid("123"), Some(123));
        assert_eq!(parse_pid(" 42 \n"), Some(42));
        assert_eq!(parse_pid("0"), None);
        assert_eq!(parse_pid(""), None);
        assert_eq!(parse_pid("abc"), None);
    }

    #[test]
    fn messages_do_not_repeat() {
        let e = FileError::InTheWay {
            path: "/x/y.sock".into(),
            found: "a file that is not a socket",
        };
        let text = format!("{e}");
        assert_eq!(text.matches("not a socket").count(), 1, "{text}");
        assert!(std::error::Error::source(&e).is_none());
    }
}
