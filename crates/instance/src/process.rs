//! Processes and pid files: liveness (Lima's `store.ReadPIDFile` semantics, plus zombie and
//! pid-reuse checks), signals, waiting, and `flock` locks.

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};
use std::fs::File;
use std::io::ErrorKind;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::time::{Duration, Instant};

/// A process identified by its pid and its start time (field 22 of `/proc/<pid>/stat`), so a
/// recycled pid is never mistaken for the process we started.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcRef {
    /// Process id.
    pub pid: u32,
    /// Start time in clock ticks since boot; `None` when it could not be read.
    pub start_time: Option<u64>,
}

impl ProcRef {
    /// Captures `pid` with its current start time.
    pub fn of(pid: u32) -> Self {
        Self {
            pid,
            start_time: start_time(pid),
        }
    }

    /// True while the same process (same start time) is alive and not a zombie.
    pub fn alive(&self) -> bool {
        if !pid_alive(self.pid) {
            return false;
        }
        match (self.start_time, start_time(self.pid)) {
            (Some(want), Some(have)) => want == have,
            _ => true,
        }
    }
}

/// Reads `/proc/<pid>/stat` and returns (state char, start time).
fn stat(pid: u32) -> Option<(char, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may itself contain spaces or parentheses.
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let state = fields.first()?.chars().next()?;
    // Field 3 (state) is fields[0]; field 22 (starttime) is fields[19].
    let start = fields.get(19)?.parse().ok()?;
    Some((state, start))
}

fn start_time(pid: u32) -> Option<u64> {
    stat(pid).map(|(_, t)| t)
}

/// True if `pid` names a live process. EPERM counts as alive (a daemon running as root, as in
/// Lima); a zombie counts as dead, because it will never serve anything again.
pub fn pid_alive(pid: u32) -> bool {
    let Ok(raw) = libc::pid_t::try_from(pid) else {
        return false;
    };
    if raw <= 0 {
        return false;
    }
    // SAFETY: kill with signal 0 only checks for existence and permission.
    let rc = unsafe { libc::kill(raw, 0) };
    if rc != 0 && std::io::Error::last_os_error().raw_os_error() != Some(libc::EPERM) {
        return false;
    }
    !matches!(stat(pid), Some(('Z', _)) | Some(('X', _)))
}

/// Lima's `ReadPIDFile`: `Ok(None)` when the file is missing or names a dead process (the stale
/// file is then removed), `Ok(Some(pid))` for a live process, an error for unreadable contents.
pub fn read_pid_file(path: &Path) -> anyhow::Result<Option<u32>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(e).with_context(|| format!("failed to read PID file `{}`", path.display()))
        }
    };
    let pid: u32 = text.trim().parse().with_context(|| {
        format!(
            "failed to read PID file `{}`: bad contents {:?}",
            path.display(),
            text.trim()
        )
    })?;
    if pid_alive(pid) {
        return Ok(Some(pid));
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => tracing::warn!("failed to remove stale PID file {}: {e}", path.display()),
    }
    Ok(None)
}

/// Sends `sig` to `pid`; a process that is already gone is not an error.
pub fn signal(pid: u32, sig: libc::c_int) -> anyhow::Result<()> {
    let raw = libc::pid_t::try_from(pid).context("pid out of range")?;
    // SAFETY: plain kill(2) on a pid we read from our own state.
    if unsafe { libc::kill(raw, sig) } != 0 {
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::ESRCH) {
            return Err(err).with_context(|| format!("failed to send signal {sig} to pid {pid}"));
        }
    }
    Ok(())
}

/// Polls `done` every `every` until it returns true or `timeout` passes; returns whether it did.
pub fn wait_until(timeout: Duration, every: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if done() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(every);
    }
}

/// An exclusive `flock` on a file, released when dropped (or when the process dies).
#[derive(Debug)]
pub struct Lock {
    _file: File,
}

impl Lock {
    /// Blocks until the lock on `path` (created if missing) is ours.
    pub fn acquire(path: &Path) -> anyhow::Result<Self> {
        Self::take(path, true)?.with_context(|| format!("lock `{}` not acquired", path.display()))
    }

    /// Takes the lock on `path` if it is free; `Ok(None)` if another process holds it.
    pub fn try_acquire(path: &Path) -> anyhow::Result<Option<Self>> {
        Self::take(path, false)
    }

    fn take(path: &Path, block: bool) -> anyhow::Result<Option<Self>> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .with_context(|| format!("failed to open lock file `{}`", path.display()))?;
        let op = if block {
            libc::LOCK_EX
        } else {
            libc::LOCK_EX | libc::LOCK_NB
        };
        loop {
            // SAFETY: flock on a descriptor we own.
            if unsafe { libc::flock(file.as_raw_fd(), op) } == 0 {
                return Ok(Some(Self { _file: file }));
            }
            let err = std::io::Error::last_os_error();
            match err.raw_os_error() {
                Some(libc::EINTR) => continue,
                Some(libc::EWOULDBLOCK) if !block => return Ok(None),
                _ => bail!("failed to lock `{}`: {err}", path.display()),
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn own_process_is_alive_and_identified() {
        let me = ProcRef::of(std::process::id());
        assert!(me.start_time.is_some());
        assert!(me.alive());
        let recycled = ProcRef {
            pid: me.pid,
            start_time: me.start_time.map(|t| t + 1),
        };
        assert!(!recycled.alive());
    }

    #[test]
    fn pid_file_semantics() -> anyhow::Result<()> {
        let dir = tempdir()?;
        let path = dir.join("x.pid");
        assert_eq!(read_pid_file(&path)?, None);
        std::fs::write(&path, format!("{}\n", std::process::id()))?;
        assert_eq!(read_pid_file(&path)?, Some(std::process::id()));
        std::fs::write(&path, "garbage\n")?;
        let err = read_pid_file(&path)
            .err()
            .map(|e| format!("{e:#}"))
            .unwrap_or_default();
        assert!(err.contains("failed to read PID file"), "{err}");
        // A reaped child's pid is dead: the stale file goes away.
        let mut child = std::process::Command::new("true").spawn()?;
        let pid = child.id();
        child.wait()?;
        std::fs::write(&path, format!("{pid}\n"))?;
        assert_eq!(read_pid_file(&path)?, None);
        assert!(!path.exists());
        std::fs::remove_dir_all(&dir)?;
        Ok(())
    }

    #[test]
    fn zombie_is_dead() -> anyhow::Result<()> {
        let mut child = std::process::Command::new("true").spawn()?;
        let pid = child.id();
        assert!(wait_until(
            Duration::from_secs(5),
            Duration::from_millis(10),
            || !pid_alive(pid)
        ));
        child.wait()?;
        Ok(())
    }

    #[test]
    fn lock_is_exclusive() -> anyhow::Result<()> {
        let dir = tempdir()?;
        let path = dir.join("l.lock");
        let held = Lock::acquire(&path)?;
        // flock locks belong to the open file description: a second open conflicts.
        assert!(Lock::try_acquire(&path)?.is_none());
        drop(held);
        assert!(Lock::try_acquire(&path)?.is_some());
        std::fs::remove_dir_all(&dir)?;
        Ok(())
    }

    pub(crate) fn tempdir() -> anyhow::Result<std::path::PathBuf> {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "limanet-unit-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir)?;
        Ok(dir)
    }
}
