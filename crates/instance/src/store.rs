//! Instance state on disk: `$LIMA_HOME/<NAME>/`.
//!
//! | file | what |
//! |---|---|
//! | `limanet.json` | [`InstanceState`]: networks, MACs, QEMU argv, supervisor and QEMU pids, status |
//! | `limanet.lock` | `flock`ed by the instance's supervisor for as long as it runs |
//! | `supervisor.log` | the supervisor's own log (background mode) |
//! | `qemu.pid` | QEMU's pid, written by limanet once QEMU runs |
//! | `qemu.stdout.log`, `qemu.stderr.log` | QEMU's output (background mode) |
//! | `default_qemu.sock`, `usernet.pid` | the instance's own user-mode network (eth0; socket named as Lima's per-instance gvisor sockets) |
//! | `default_vhost.sock` | its vhost-user socket instead, with `limanet start --vhost-user` |
//! | `usernet.stdout.log`, `usernet.stderr.log` | its output |
//!
//! `limanet.json` is replaced atomically (write to a temporary file, then rename), so readers
//! never see half a file.

use crate::process::ProcRef;
use anyhow::Context;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// File name of the state file inside the instance directory.
pub const STATE_FILE: &str = "limanet.json";

/// What one NIC of an instance is attached to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum Attachment {
    /// eth0: the instance's own user-mode network (`limanet usernet`, 192.168.5.0/24).
    Usernet {
        /// The socket of the instance's usernet QEMU attaches to: its stream socket
        /// (`default_qemu.sock`), or its vhost-user socket (`default_vhost.sock`).
        socket: PathBuf,
        /// Attached over vhost-user (`limanet start --vhost-user`).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        vhost_user: bool,
    },
    /// A network defined in networks.yaml (`--network lima:NAME`).
    Lima {
        /// The networks.yaml name.
        network: String,
        /// The network's mode (user-v2, shared, host, bridged).
        mode: String,
        /// The socket QEMU is attached to.
        socket: PathBuf,
    },
    /// An unmanaged socket (`--network socket:PATH`).
    Socket {
        /// The socket path.
        socket: PathBuf,
    },
}

/// One NIC of an instance.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Nic {
    /// Guest interface name: `eth0`, then `lima0`, `lima1`, ... (Lima's defaults).
    pub interface: String,
    /// MAC address (Lima's derivation, §2).
    pub mac: String,
    /// QEMU netdev id (`net0`, `net1`, ...).
    pub netdev: String,
    /// What the NIC is attached to.
    #[serde(flatten)]
    pub attachment: Attachment,
    /// The guest's IPv4 address when known (eth0: 192.168.5.15 by static lease).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub address: Option<String>,
}

/// Lifecycle status recorded by the supervisor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// The supervisor is setting up networks and QEMU.
    Starting,
    /// QEMU runs.
    Running,
    /// Stopped (cleanly, by `limanet stop`, or because QEMU exited).
    Stopped,
}

/// Contents of `limanet.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct InstanceState {
    /// Instance name.
    pub name: String,
    /// Instance directory (LIMA_HOME symlinks resolved).
    pub dir: PathBuf,
    /// Status as last recorded; [`InstanceState::effective_status`] checks it against the pids.
    pub status: Status,
    /// The user's QEMU command line.
    pub qemu_argv: Vec<String>,
    /// The command line QEMU was started with (user's argv plus limanet's networks).
    #[serde(default)]
    pub full_argv: Vec<String>,
    /// NICs in order; eth0 first.
    pub nics: Vec<Nic>,
    /// `--host NAME=VALUE` entries given to the instance's usernet.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
    /// `--dns` servers announced to the guest instead of the embedded DNS.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dns: Vec<String>,
    /// Port forwards (`--forward` specs, `--ssh-port` as `tcp:127.0.0.1:PORT:22`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub forwards: Vec<String>,
    /// The supervisor process.
    #[serde(default)]
    pub supervisor: Option<ProcRef>,
    /// The QEMU process.
    #[serde(default)]
    pub qemu: Option<ProcRef>,
    /// Whether started with `--foreground`.
    #[serde(default)]
    pub foreground: bool,
    /// How the last run ended (e.g. "QEMU exited: signal: 9 (SIGKILL)").
    #[serde(default)]
    pub exit: Option<String>,
    /// Seconds since the epoch when the instance was last started.
    #[serde(default)]
    pub started_at: u64,
}

impl InstanceState {
    /// The status as the processes show it: `Running` while QEMU lives, `Starting` while only
    /// the supervisor does, otherwise `Stopped` (whatever the file says; a supervisor killed with
    /// SIGKILL cannot record anything).
    pub fn effective_status(&self) -> Status {
        if self.status == Status::Stopped {
            return Status::Stopped;
        }
        if self.qemu.is_some_and(|q| q.alive()) {
            return Status::Running;
        }
        if self.supervisor.is_some_and(|s| s.alive()) {
            return Status::Starting;
        }
        Status::Stopped
    }

    /// The networks.yaml names this instance references.
    pub fn lima_networks(&self) -> impl Iterator<Item = &str> {
        self.nics.iter().filter_map(|n| match &n.attachment {
            Attachment::Lima { network, .. } => Some(network.as_str()),
            _ => None,
        })
    }

    /// Writes the state atomically into `<dir>/limanet.json`.
    pub fn save(&self) -> anyhow::Result<()> {
        let path = self.dir.join(STATE_FILE);
        let tmp = self
            .dir
            .join(format!(".{STATE_FILE}.{}", std::process::id()));
        let json = serde_json::to_vec_pretty(self).context("failed to encode instance state")?;
        std::fs::write(&tmp, json)
            .with_context(|| format!("failed to write `{}`", tmp.display()))?;
        std::fs::rename(&tmp, &path)
            .with_context(|| format!("failed to replace `{}`", path.display()))?;
        Ok(())
    }

    /// Reads `<dir>/limanet.json`; `Ok(None)` if there is none.
    pub fn load(dir: &Path) -> anyhow::Result<Option<Self>> {
        let path = dir.join(STATE_FILE);
        let data = match std::fs::read(&path) {
            Ok(d) => d,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(e).with_context(|| format!("failed to read `{}`", path.display()))
            }
        };
        let state = serde_json::from_slice(&data)
            .with_context(|| format!("failed to parse `{}`", path.display()))?;
        Ok(Some(state))
    }
}

/// Paths of one instance's files.
#[derive(Clone, Debug)]
pub struct InstancePaths {
    /// `$LIMA_HOME/<NAME>`.
    pub dir: PathBuf,
}

impl InstancePaths {
    /// Paths for the instance directory `dir`.
    pub fn new(dir: PathBuf) -> Self {
        Self { dir }
    }
    fn file(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
    /// `limanet.lock`.
    pub fn lock(&self) -> PathBuf {
        self.file("limanet.lock")
    }
    /// `supervisor.log`.
    pub fn supervisor_log(&self) -> PathBuf {
        self.file("supervisor.log")
    }
    /// `qemu.pid`.
    pub fn qemu_pid(&self) -> PathBuf {
        self.file("qemu.pid")
    }
    /// `qemu.stdout.log`.
    pub fn qemu_stdout(&self) -> PathBuf {
        self.file("qemu.stdout.log")
    }
    /// `qemu.stderr.log`.
    pub fn qemu_stderr(&self) -> PathBuf {
        self.file("qemu.stderr.log")
    }
    /// `usernet.pid`.
    pub fn usernet_pid(&self) -> PathBuf {
        self.file("usernet.pid")
    }
    /// `usernet.stdout.log`.
    pub fn usernet_stdout(&self) -> PathBuf {
        self.file("usernet.stdout.log")
    }
    /// `usernet.stderr.log`.
    pub fn usernet_stderr(&self) -> PathBuf {
        self.file("usernet.stderr.log")
    }
}

/// Every instance directory under `lima_home` that holds a `limanet.json` (Lima's reserved
/// `_config`, `_networks` and other `_*` directories are skipped), sorted by name.
pub fn instance_dirs(lima_home: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let entries = match std::fs::read_dir(lima_home) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => {
            return Err(e).with_context(|| format!("failed to read `{}`", lima_home.display()))
        }
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.with_context(|| format!("failed to read `{}`", lima_home.display()))?;
        let name = entry.file_name();
        if name.to_string_lossy().starts_with(['_', '.']) {
            continue;
        }
        let path = entry.path();
        if path.join(STATE_FILE).is_file() {
            out.push(path);
        }
    }
    out.sort();
    Ok(out)
}

/// Seconds since the epoch.
pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
