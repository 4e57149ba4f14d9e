//! Shared helpers for the `instance_*` integration tests: a private `$LIMA_HOME` per test that
//! kills every process it recorded and removes itself on drop, and small process helpers.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// A temporary `$LIMA_HOME`. Dropping it kills the instances' supervisors, QEMUs and daemons
/// (everything named by a pid file or `limanet.json` under it) and deletes it.
pub struct Home {
    pub dir: PathBuf,
}

impl Home {
    pub fn new(tag: &str) -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "lnet-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create LIMA_HOME");
        Home { dir }
    }

    /// `limanet ARGS...` with this LIMA_HOME.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_limanet"));
        c.args(args)
            .env("LIMA_HOME", &self.dir)
            .env("LIMANET_LOG", "info");
        c
    }

    /// Runs `limanet ARGS...` to completion.
    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().expect("run limanet")
    }

    /// Runs `limanet ARGS...`, asserting success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "limanet {args:?} failed: {}\nstdout: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs `limanet ARGS...`, asserting failure; returns stderr.
    pub fn fails(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            !out.status.success(),
            "limanet {args:?} unexpectedly succeeded: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    /// The instance's `limanet.json`.
    pub fn state(&self, name: &str) -> serde_json::Value {
        let path = self.dir.join(name).join("limanet.json");
        let data = std::fs::read(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
        serde_json::from_slice(&data).expect("parse limanet.json")
    }

    /// `limanet list --json`, as a map from name to row.
    pub fn list(&self) -> serde_json::Map<String, serde_json::Value> {
        let out = self.ok(&["list", "--json"]);
        let rows: Vec<serde_json::Value> = serde_json::from_str(&out).expect("list --json");
        rows.into_iter()
            .map(|r| (r["name"].as_str().unwrap_or_default().to_owned(), r))
            .collect()
    }

    /// The user-v2 network's daemon pid file.
    pub fn user_v2_pid_file(&self) -> PathBuf {
        self.dir.join("_networks/user-v2/usernet_user-v2.pid")
    }

    pub fn supervisor_pid(&self, name: &str) -> u32 {
        pid_field(&self.state(name)["supervisor"])
    }

    pub fn qemu_pid(&self, name: &str) -> u32 {
        pid_field(&self.state(name)["qemu"])
    }

    /// Logs worth showing when an assertion fails.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for entry in walk(&self.dir) {
            if entry.extension().is_some_and(|e| e == "log") {
                out.push_str(&format!(
                    "--- {}\n{}\n",
                    entry.display(),
                    std::fs::read_to_string(&entry).unwrap_or_default()
                ));
            }
        }
        out
    }
}

fn pid_field(v: &serde_json::Value) -> u32 {
    v["pid"]
        .as_u64()
        .and_then(|p| u32::try_from(p).ok())
        .expect("pid in limanet.json")
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

impl Drop for Home {
    fn drop(&mut self) {
        // Pids recorded in limanet.json (supervisor, QEMU) belong to this test; pid files
        // name daemons, killed only if they are limanet processes.
        let mut pids = Vec::new();
        for path in walk(&self.dir) {
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            if name == "limanet.json" {
                let state = std::fs::read(&path)
                    .ok()
                    .and_then(|d| serde_json::from_slice::<serde_json::Value>(&d).ok());
                if let Some(v) = state {
                    for key in ["supervisor", "qemu"] {
                        if let Some(p) = v[key]["pid"].as_u64().and_then(|p| u32::try_from(p).ok())
                        {
                            pids.push(p);
                        }
                    }
                }
            } else if name.ends_with(".pid") {
                if let Some(p) = read_pid(&path).filter(|&p| cmdline(p).contains("limanet")) {
                    pids.push(p);
                }
            }
        }
        for pid in pids {
            if alive(pid) {
                kill(pid, libc::SIGKILL);
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The process's command line, NULs as spaces.
pub fn cmdline(pid: u32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
        .unwrap_or_default()
}

/// True if `pid` is a live, non-zombie process.
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => {
            let state = s
                .rfind(')')
                .and_then(|i| s[i + 1..].split_whitespace().next());
            !matches!(state, Some("Z") | Some("X") | None)
        }
        Err(_) => false,
    }
}

pub fn kill(pid: u32, sig: libc::c_int) {
    // SAFETY: kill(2) on a pid this test started (through limanet).
    unsafe { libc::kill(pid as libc::pid_t, sig) };
}

/// The pid in a pid file, if the file exists.
pub fn read_pid(path: &Path) -> Option<u32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Polls `cond` every 50 ms for up to `timeout`.
pub fn eventually(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A QEMU stand-in: a real long-running process that ignores the arguments limanet appends.
pub const STUB: [&str; 4] = ["sh", "-c", "exec sleep 600", "qemu-stub"];
