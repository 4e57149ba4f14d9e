//! Child processes that are killed and reaped when the guard goes away, with their output kept
//! in files so a failing test can show it.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use crate::error::IoContext;
use crate::{Error, Result};

/// Default time between SIGTERM and SIGKILL.
const DEFAULT_GRACE: Duration = Duration::from_secs(2);

/// Renders a command line for messages, e.g. `ip netns add x`.
pub fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Runs a short command to completion; returns its stdout, or an error with its stderr.
pub fn run(cmd: &mut Command) -> Result<String> {
    let line = describe(cmd);
    tracing::debug!(command = %line, "running");
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .ctx(|| format!("cannot run `{line}`"))?;
    if !out.status.success() {
        return Err(Error::Command {
            command: line,
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A directory for log files and caches: `$TMPDIR/limanet-testkit` (names inside carry the pid).
pub(crate) fn scratch_dir() -> Result<PathBuf> {
    let dir = std::env::temp_dir().join("limanet-testkit");
    std::fs::create_dir_all(&dir).ctx(|| format!("cannot create {}", dir.display()))?;
    Ok(dir)
}

/// Owns a child process: on drop it sends SIGTERM (to the child's whole process group when
/// the guard spawned it), waits a grace period, sends SIGKILL, and reaps it. Never panics.
///
/// If the current thread is panicking (a failing test), the drop prints the child's captured
/// stdout/stderr first.
#[derive(Debug)]
pub struct ChildGuard {
    child: Child,
    name: String,
    own_group: bool,
    grace: Duration,
    stdout: Option<PathBuf>,
    stderr: Option<PathBuf>,
    status: Option<ExitStatus>,
}

impl ChildGuard {
    /// Spawns `cmd` in its own process group with stdin from /dev/null and stdout/stderr captured
    /// to files (see [`ChildGuard::logs`]). `name` labels the process in messages and file names.
    pub fn spawn(name: &str, cmd: &mut Command) -> Result<Self> {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir = scratch_dir()?;
        let safe: String = name
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect();
        let pid = std::process::id();
        let out_path = dir.join(format!("{pid}-{n}-{safe}.stdout"));
        let err_path = dir.join(format!("{pid}-{n}-{safe}.stderr"));
        let out =
            File::create(&out_path).ctx(|| format!("cannot create {}", out_path.display()))?;
        let err =
            File::create(&err_path).ctx(|| format!("cannot create {}", err_path.display()))?;
        let line = describe(cmd);
        use std::os::unix::process::CommandExt;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0)
            .spawn()
            .ctx(|| format!("cannot spawn {name} (`{line}`)"))?;
        tracing::debug!(name, pid = child.id(), command = %line, "spawned");
        Ok(ChildGuard {
            child,
            name: name.to_string(),
            own_group: true,
            grace: DEFAULT_GRACE,
            stdout: Some(out_path),
            stderr: Some(err_path),
            status: None,
        })
    }

    /// Takes ownership of an already spawned child (its output is not captured by the guard;
    /// only the child itself is signalled, not its process group).
    pub fn from_child(name: &str, child: Child) -> Self {
        ChildGuard {
            child,
            name: name.to_string(),
            own_group: false,
            grace: DEFAULT_GRACE,
            stdout: None,
            stderr: None,
            status: None,
        }
    }

    /// Sets the time between SIGTERM and SIGKILL on drop (default 2 s).
    pub fn with_grace(mut self, grace: Duration) -> Self {
        self.grace = grace;
        self
    }

    /// The child's process id.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// The label given at spawn.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The underlying child (e.g. to take its stdin when it was piped... note that
    /// [`ChildGuard::spawn`] sets stdin to /dev/null).
    pub fn child_mut(&mut self) -> &mut Child {
        &mut self.child
    }

    /// Path of the captured stdout file, if the guard spawned the child.
    pub fn stdout_path(&self) -> Option<&Path> {
        self.stdout.as_deref()
    }

    /// Path of the captured stderr file, if the guard spawned the child.
    pub fn stderr_path(&self) -> Option<&Path> {
        self.stderr.as_deref()
    }

    /// The captured stdout so far (empty if not captured or unreadable).
    pub fn stdout(&self) -> String {
        read_lossy(self.stdout.as_deref())
    }

    /// The captured stderr so far (empty if not captured or unreadable).
    pub fn stderr(&self) -> String {
        read_lossy(self.stderr.as_deref())
    }

    /// Captured stdout and stderr, labelled, for printing in a failing test.
    pub fn logs(&self) -> String {
        format!(
            "----- {} (pid {}) stdout -----\n{}\n----- {} stderr -----\n{}\n-----",
            self.name,
            self.child.id(),
            self.stdout(),
            self.name,
            self.stderr()
        )
    }

    /// Returns the exit status if the child has exited, without blocking.
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>> {
        if let Some(s) = self.status {
            return Ok(Some(s));
        }
        let name = &self.name;
        let st = self
            .child
            .try_wait()
            .ctx(|| format!("cannot wait for {name}"))?;
        self.status = st;
        Ok(st)
    }

    /// Waits for the child to exit on its own, at most `timeout` (then it is left running and
    /// [`Error::Timeout`] is returned; drop the guard to kill it).
    pub fn wait_timeout(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = self.try_wait()? {
                return Ok(st);
            }
            if Instant::now() >= deadline {
                return Err(Error::Timeout {
                    what: format!("{} (pid {}) to exit", self.name, self.child.id()),
                    timeout,
                });
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Sends `signal` to the child (or its process group).
    pub fn signal(&self, signal: libc::c_int) {
        let Ok(pid) = libc::pid_t::try_from(self.child.id()) else {
            return;
        };
        let target = if self.own_group { -pid } else { pid };
        // SAFETY: kill has no memory-safety preconditions; a stale pid at worst yields ESRCH
        // (the child is not reaped before we stop signalling it, so the pid is still ours).
        unsafe {
            libc::kill(target, signal);
        }
    }

    /// Terminates the child now: SIGTERM, grace period, SIGKILL; reaps it. Returns its status.
    pub fn terminate(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.signal(libc::SIGTERM);
            let deadline = Instant::now() + self.grace;
            while Instant::now() < deadline {
                match self.child.try_wait() {
                    Ok(Some(st)) => {
                        self.status = Some(st);
                        break;
                    }
                    Ok(None) => std::thread::sleep(Duration::from_millis(10)),
                    Err(_) => break,
                }
            }
        }
        // Also when the leader has exited: other members of its group may still run (the
        // group id cannot be reused while any member lives, so this never hits a stranger).
        if self.own_group || self.status.is_none() {
            self.signal(libc::SIGKILL);
        }
        if self.status.is_none() {
            self.status = self.child.wait().ok();
        }
        self.status
    }
}

fn read_lossy(path: Option<&Path>) -> String {
    path.and_then(|p| std::fs::read(p).ok())
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let status = self.terminate();
        if std::thread::panicking() {
            eprintln!("{} exited with {:?}\n{}", self.name, status, self.logs());
        }
        for p in [self.stdout.take(), self.stderr.take()]
            .into_iter()
            .flatten()
        {
            let _ = std::fs::remove_file(p);
        }
    }
}
