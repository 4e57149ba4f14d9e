//! Starting and stopping network daemons the way Lima's `reconcile` does (§1.9).
//!
//! A daemon is started from a command line, with stdout and stderr recreated as log files, and is
//! ready once its pid file names a live process. Start-up is retried when the daemon exits before
//! writing its pid file (Lima's "exited early" case: socket_vmnet's VMNET_FAILURE race at boot),
//! with back-off 1 s, 2 s, 4 s, 8 s between at most 5 attempts. A daemon that is still running
//! without a pid file when the timeout passes is killed and reported. Privileged daemons
//! (socket_vmnet) run through `sudo --user root --group root --non-interactive` when limanet is
//! not root and directly when it is (`limanet_config::networks::privileged_argv`).

use crate::process::{read_pid_file, signal, wait_until};
use anyhow::{bail, Context};
use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// How to start one daemon and how to know it is ready.
#[derive(Clone, Debug)]
pub struct DaemonSpec {
    /// Names the daemon in errors, e.g. ``socket_vmnet daemon for `shared` network``.
    pub label: String,
    /// Program and arguments (already wrapped in sudo where needed).
    pub argv: Vec<String>,
    /// The pid file the daemon writes once it is ready.
    pub pid_file: PathBuf,
    /// Recreated on every attempt.
    pub stdout_log: PathBuf,
    /// Recreated on every attempt.
    pub stderr_log: PathBuf,
    /// Working directory (Lima: varRun for socket_vmnet).
    pub cwd: Option<PathBuf>,
    /// Give the daemon its own process group, so a terminal's Ctrl-C does not reach it.
    pub own_process_group: bool,
    /// How long one attempt may take to write the pid file (Lima: 30 s).
    pub timeout: Duration,
    /// Attempts before giving up (Lima: 5).
    pub attempts: u32,
    /// Back-off before attempt 2; doubled for each further attempt (Lima: 1 s).
    pub first_backoff: Duration,
    /// Pid-file poll interval (Lima: 500 ms; limanet polls faster to start sooner).
    pub poll: Duration,
}

impl DaemonSpec {
    /// A spec with Lima's retry and timeout values.
    pub fn new(label: impl Into<String>, argv: Vec<String>, pid_file: PathBuf) -> Self {
        Self {
            label: label.into(),
            argv,
            pid_file,
            stdout_log: PathBuf::from("/dev/null"),
            stderr_log: PathBuf::from("/dev/null"),
            cwd: None,
            own_process_group: true,
            timeout: Duration::from_secs(30),
            attempts: 5,
            first_backoff: Duration::from_secs(1),
            poll: Duration::from_millis(100),
        }
    }
}

enum Attempt {
    Ready(u32),
    ExitedEarly(ExitStatus),
}

/// Starts the daemon unless its pid file already names a live process; returns the daemon's pid.
pub fn start(spec: &DaemonSpec) -> anyhow::Result<u32> {
    if let Some(pid) = read_pid_file(&spec.pid_file)? {
        tracing::debug!("{} already running (pid {pid})", spec.label);
        return Ok(pid);
    }
    let mut last_exit = None;
    for attempt in 1..=spec.attempts.max(1) {
        if attempt > 1 {
            let backoff = spec.first_backoff * 2u32.saturating_pow(attempt - 2);
            tracing::info!(
                "{} exited before writing its PID file; retrying in {backoff:?} (attempt {attempt}/{})",
                spec.label,
                spec.attempts
            );
            std::thread::sleep(backoff);
        }
        match attempt_once(spec)? {
            Attempt::Ready(pid) => {
                tracing::info!("started {} (pid {pid})", spec.label);
                return Ok(pid);
            }
            Attempt::ExitedEarly(status) => last_exit = Some(status),
        }
    }
    let exit = last_exit.map(|s| format!(": {s}")).unwrap_or_default();
    bail!(
        "{} failed to start after {} attempts: daemon exited before writing its PID file{exit}{}",
        spec.label,
        spec.attempts,
        stderr_hint(&spec.stderr_log)
    )
}

fn attempt_once(spec: &DaemonSpec) -> anyhow::Result<Attempt> {
    let (program, args) = spec
        .argv
        .split_first()
        .context("empty daemon command line")?;
    let stdout = recreate(&spec.stdout_log)?;
    let stderr = recreate(&spec.stderr_log)?;
    let mut cmd = Command::new(program);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr);
    if let Some(cwd) = &spec.cwd {
        cmd.current_dir(cwd);
    }
    if spec.own_process_group {
        cmd.process_group(0);
    }
    tracing::debug!("starting {}: {:?}", spec.label, spec.argv);
    let mut child = cmd
        .spawn()
        .with_context(|| format!("failed to run {:?} for {}", spec.argv, spec.label))?;
    let deadline = Instant::now() + spec.timeout;
    loop {
        if let Some(pid) = read_pid_file(&spec.pid_file)? {
            // The daemon keeps running; nothing waits for it here. `process::pid_alive` treats
            // a zombie as dead, and a long-lived limanet process reaps its children.
            return Ok(Attempt::Ready(pid));
        }
        if let Some(status) = child.try_wait().context("failed to wait for daemon")? {
            // One more look: the daemon may have written the file and forked away.
            if let Some(pid) = read_pid_file(&spec.pid_file)? {
                return Ok(Attempt::Ready(pid));
            }
            return Ok(Attempt::ExitedEarly(status));
        }
        if Instant::now() >= deadline {
            kill_child(&mut child);
            bail!(
                "{} did not write its PID file within {:?} but is still running{}",
                spec.label,
                spec.timeout,
                stderr_hint(&spec.stderr_log)
            );
        }
        std::thread::sleep(spec.poll);
    }
}

/// SIGTERM first (sudo relays it to the daemon), SIGKILL after a second.
fn kill_child(child: &mut Child) {
    let _ = signal(child.id(), libc::SIGTERM);
    let done = wait_until(Duration::from_secs(1), Duration::from_millis(50), || {
        matches!(child.try_wait(), Ok(Some(_)))
    });
    if !done {
        let _ = child.kill();
        let _ = child.wait();
    }
}

fn recreate(path: &Path) -> anyhow::Result<File> {
    if path != Path::new("/dev/null") {
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(e).with_context(|| format!("failed to remove `{}`", path.display()))
            }
        }
    }
    File::options()
        .create(true)
        .write(true)
        .truncate(true)
        .open(path)
        .with_context(|| format!("failed to create log file `{}`", path.display()))
}

/// Lima's suffix: ` (stderr: <trimmed stderr>)`, or `` (check `<log>`)`` when stderr is empty.
fn stderr_hint(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let text = text.trim();
    if text.is_empty() {
        format!(" (check `{}`)", log.display())
    } else {
        // Keep the message readable: the last few lines tell what went wrong.
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(10)..].join("\n");
        format!(" (stderr: {tail})")
    }
}

/// How a running daemon is asked to stop.
#[derive(Clone, Debug)]
pub enum StopMethod {
    /// Send this signal to the pid in the pid file, then SIGKILL after the grace period
    /// (Lima's `usernet.Stop`: SIGINT, 5 s, SIGKILL).
    Signal(libc::c_int),
    /// Run this command (Lima: `[sudo ...] /usr/bin/pkill -F <pidfile>`), then only wait.
    Command(Vec<String>),
}

/// Stops the daemon named by `pid_file` if it is running; waits up to `grace` for it to go.
/// Returns whether it is gone.
pub fn stop(
    label: &str,
    pid_file: &Path,
    method: &StopMethod,
    grace: Duration,
) -> anyhow::Result<bool> {
    let Some(pid) = read_pid_file(pid_file)? else {
        return Ok(true);
    };
    tracing::info!("stopping {label} (pid {pid})");
    match method {
        StopMethod::Signal(sig) => signal(pid, *sig)?,
        StopMethod::Command(argv) => {
            let (program, args) = argv.split_first().context("empty stop command line")?;
            let out = Command::new(program)
                .args(args)
                .stdin(Stdio::null())
                .output()
                .with_context(|| format!("failed to run {argv:?} to stop {label}"))?;
            if !out.status.success() {
                bail!(
                    "failed to run {argv:?} to stop {label}: {} (stderr: {})",
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
        }
    }
    let gone = || !crate::process::pid_alive(pid);
    if wait_until(grace, Duration::from_millis(50), gone) {
        let _ = read_pid_file(pid_file);
        return Ok(true);
    }
    match method {
        StopMethod::Signal(_) => {
            tracing::warn!("{label} (pid {pid}) did not stop within {grace:?}; killing it");
            signal(pid, libc::SIGKILL)?;
            let gone = wait_until(Duration::from_secs(2), Duration::from_millis(50), gone);
            // A killed daemon cannot remove its own pid file.
            let _ = read_pid_file(pid_file);
            Ok(gone)
        }
        StopMethod::Command(_) => {
            // Lima only logs this and goes on.
            tracing::info!("{label} (pid {pid}) has not stopped within {grace:?}");
            Ok(false)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::process::tests::tempdir;

    fn sh_spec(dir: &Path, script: &str) -> DaemonSpec {
        let mut spec = DaemonSpec::new(
            "test daemon for `t` network",
            vec![
                "sh".into(),
                "-c".into(),
                script.into(),
                "daemon".into(),
                dir.display().to_string(),
            ],
            dir.join("d.pid"),
        );
        spec.stdout_log = dir.join("d.stdout.log");
        spec.stderr_log = dir.join("d.stderr.log");
        spec.first_backoff = Duration::from_millis(50);
        spec.timeout = Duration::from_secs(5);
        spec
    }

    #[test]
    fn ready_daemon_is_started_once_and_stopped() -> anyhow::Result<()> {
        let dir = tempdir()?;
        let spec = sh_spec(
            &dir,
            r#"echo $$ > "$1/d.pid"; echo started >> "$1/count"; exec sleep 60"#,
        );
        let pid = start(&spec)?;
        assert!(crate::process::pid_alive(pid));
        // Second start: already running, no new process.
        assert_eq!(start(&spec)?, pid);
        assert_eq!(
            std::fs::read_to_string(dir.join("count"))?.lines().count(),
            1
        );
        let gone = stop(
            "t",
            &spec.pid_file,
            &StopMethod::Signal(libc::SIGTERM),
            Duration::from_secs(5),
        )?;
        assert!(gone);
        reap(pid);
        assert!(!crate::process::pid_alive(pid));
        assert!(!spec.pid_file.exists());
        std::fs::remove_dir_all(&dir)?;
        Ok(())
    }

    #[test]
    fn early_exits_are_retried_with_backoff() -> anyhow::Result<()> {
        let dir = tempdir()?;
        // Fails twice, then starts: three attempts in all.
        let spec = sh_spec(
            &dir,
            r#"echo try >> "$1/count"; n=$(wc -l < "$1/count"); if [ $n -lt 3 ]; then echo "boom $n" >&2; exit 3; fi; echo $$ > "$1/d.pid"; exec sleep 60"#,
        );
        let t0 = Instant::now();
        let pid = start(&spec)?;
        // 50 ms + 100 ms of back-off.
        assert!(t0.elapsed() >= Duration::from_millis(150));
        assert_eq!(
            std::fs::read_to_string(dir.join("count"))?.lines().count(),
            3
        );
        stop(
            "t",
            &spec.pid_file,
            &StopMethod::Signal(libc::SIGINT),
            Duration::from_secs(5),
        )?;
        reap(pid);
        assert!(!crate::process::pid_alive(pid));
        std::fs::remove_dir_all(&dir)?;
        Ok(())
    }

    #[test]
    fn gives_up_after_all_attempts_with_stderr() -> anyhow::Result<()> {
        let dir = tempdir()?;
        let mut spec = sh_spec(&dir, r#"echo "vmnet failure" >&2; exit 7"#);
        spec.attempts = 3;
        let err = format!("{:#}", start(&spec).err().context("start must fail")?);
        assert!(
            err.starts_with("test daemon for `t` network failed to start after 3 attempts: daemon exited before writing its PID file: exit status: 7 (stderr: vmnet failure)"),
            "{err}"
        );
        // Empty stderr: point at the log instead.
        let spec = DaemonSpec {
            attempts: 1,
            ..sh_spec(&dir, "exit 1")
        };
        let err = format!("{:#}", start(&spec).err().context("start must fail")?);
        assert!(
            err.ends_with(&format!("(check `{}`)", spec.stderr_log.display())),
            "{err}"
        );
        std::fs::remove_dir_all(&dir)?;
        Ok(())
    }

    #[test]
    fn still_running_without_pid_file_times_out_and_is_killed() -> anyhow::Result<()> {
        let dir = tempdir()?;
        let mut spec = sh_spec(
            &dir,
            r#"echo $$ > "$1/real.pid"; echo waiting >&2; exec sleep 60"#,
        );
        spec.timeout = Duration::from_millis(500);
        let err = format!("{:#}", start(&spec).err().context("start must fail")?);
        assert!(
            err.contains(
                "did not write its PID file within 500ms but is still running (stderr: waiting)"
            ),
            "{err}"
        );
        let pid: u32 = std::fs::read_to_string(dir.join("real.pid"))?
            .trim()
            .parse()?;
        assert!(!crate::process::pid_alive(pid));
        std::fs::remove_dir_all(&dir)?;
        Ok(())
    }

    #[test]
    fn stop_command_runs() -> anyhow::Result<()> {
        let dir = tempdir()?;
        let spec = sh_spec(&dir, r#"echo $$ > "$1/d.pid"; exec sleep 60"#);
        let pid = start(&spec)?;
        let cmd = vec![
            "pkill".into(),
            "-F".into(),
            spec.pid_file.display().to_string(),
        ];
        assert!(stop(
            "t",
            &spec.pid_file,
            &StopMethod::Command(cmd),
            Duration::from_secs(5)
        )?);
        reap(pid);
        assert!(!crate::process::pid_alive(pid));
        std::fs::remove_dir_all(&dir)?;
        Ok(())
    }

    /// Test daemons are children of the test process; reap one that exited.
    fn reap(pid: u32) {
        // SAFETY: non-blocking waitpid on our own child.
        unsafe { libc::waitpid(pid as libc::pid_t, std::ptr::null_mut(), libc::WNOHANG) };
    }
}
