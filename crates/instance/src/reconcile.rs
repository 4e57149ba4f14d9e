//! Lima's `reconcile.Reconcile` (§1.9): every network that a live instance references runs;
//! every other network defined in networks.yaml is stopped.
//!
//! An instance is live while its recorded status is not `stopped` and its QEMU or its
//! supervisor process is alive (pid plus start time, so a recycled pid does not count). The
//! instance being started (`new_inst`) is always live. An instance whose state cannot be read
//! is skipped with a warning, and then no network is stopped (as in Lima).
//!
//! Reconciles are serialised by an `flock` on `$LIMA_HOME/_networks/limanet-reconcile.lock`, so
//! two instances starting and stopping at once never race a daemon's start against its stop.
//!
//! Daemons:
//! * user-v2: `limanet usernet --mode user-v2` (Lima's `usernet.Start`/`Stop`, §1.10), with its
//!   sockets, pid file, leases and logs in `$LIMA_HOME/_networks/<name>/`. No sudo. Started with
//!   up to 3 attempts. Stopped as Lima's `usernet.Stop`: first the leases are fetched through
//!   the API (`GET /services/dhcp/leases`) and written to `leases.json` (atomically, 0644), then
//!   SIGINT, then SIGKILL after 5 s. Unlike Lima, a failed save is logged and the daemon is
//!   stopped all the same. The next start passes `leases.json` on as `--leases`.
//! * shared, host, bridged: the socket_vmnet-compatible daemon from `paths.socketVMNet`, started
//!   through sudo (unless root) with Lima's command lines, 5 attempts with back-off, a 30 s pid
//!   file timeout, logs in `_networks/<name>_socket_vmnet.{stdout,stderr}.log`; stopped with
//!   `pkill -F <pidfile>` through sudo. Before either, networks.yaml is validated once per
//!   process (Lima's `validateConfig`; the sudoers check only when not root). While the daemon
//!   is not installed, starting such a network fails with Lima's
//!   ``daemon `socket_vmnet` needs to be installed`` (plus the path it looked at).

use crate::daemon::{self, DaemonSpec, StopMethod};
use crate::process::{read_pid_file, Lock};
use crate::store::{instance_dirs, InstanceState, Status};
use crate::usernet_client::Client;
use anyhow::{bail, Context};
use limanet_config::networks::{self, Mode, NetworksConfig, DAEMON_SOCKET_VMNET};
use limanet_config::usernet::{self as unet, SockKind};
use limanet_config::LimaHome;
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// Brings the network daemons in line with the live instances (see the module docs).
pub fn reconcile(
    home: &LimaHome,
    cfg: &NetworksConfig,
    new_inst: Option<&str>,
) -> anyhow::Result<()> {
    let networks_dir = home.networks_dir();
    std::fs::create_dir_all(&networks_dir)
        .with_context(|| format!("failed to create `{}`", networks_dir.display()))?;
    let _lock = Lock::acquire(&networks_dir.join("limanet-reconcile.lock"))?;

    let mut active = BTreeSet::new();
    let mut skipped_instance = false;
    for dir in instance_dirs(home.path())? {
        match InstanceState::load(&dir) {
            Ok(Some(state)) => {
                let live = Some(state.name.as_str()) == new_inst
                    || state.effective_status() != Status::Stopped;
                if live {
                    active.extend(state.lima_networks().map(str::to_owned));
                }
            }
            Ok(None) => {}
            Err(e) => {
                tracing::warn!("skipping instance at {}: {e:#}", dir.display());
                skipped_instance = true;
            }
        }
    }
    for name in &active {
        if cfg.check(name).is_err() {
            tracing::error!(
                "network `{name}` is referenced by an instance but not defined in networks.yaml"
            );
        }
    }
    for name in cfg.networks.keys() {
        if active.contains(name) {
            start_network(home, cfg, name)
                .with_context(|| format!("failed to start network `{name}`"))?;
        } else if !skipped_instance {
            stop_network(home, cfg, name)
                .with_context(|| format!("failed to stop network `{name}`"))?;
        }
    }
    Ok(())
}

/// Starts a network's daemon unless it runs.
pub fn start_network(home: &LimaHome, cfg: &NetworksConfig, name: &str) -> anyhow::Result<()> {
    let net = cfg.check(name)?;
    if net.mode == Mode::UserV2 {
        return start_usernet(home, cfg, name);
    }
    // Lima validates first, which reports a missing daemon as "`<path>` (`paths.socketVMNet`)
    // has to be installed"; checking the daemon first gives the more direct message.
    cfg.require_daemon()?;
    validate_config(cfg)?;
    let pid_file = cfg.pid_file(name, DAEMON_SOCKET_VMNET);
    if read_pid_file(&pid_file)?.is_some() {
        return Ok(());
    }
    run_once(&networks::privileged_argv(&cfg.mkdir_cmd()))?;
    cfg.check_var_run_writable(&limanet_config::pathsec::SystemIds::from_system())?;
    let mut spec = DaemonSpec::new(
        format!("{DAEMON_SOCKET_VMNET} daemon for `{name}` network"),
        networks::privileged_argv(&cfg.start_cmd(name)?),
        pid_file,
    );
    spec.stdout_log = networks::log_file(home, name, DAEMON_SOCKET_VMNET, "stdout");
    spec.stderr_log = networks::log_file(home, name, DAEMON_SOCKET_VMNET, "stderr");
    spec.cwd = Some(PathBuf::from(&cfg.paths.var_run));
    daemon::start(&spec)?;
    Ok(())
}

/// Stops a network's daemon if it runs.
pub fn stop_network(home: &LimaHome, cfg: &NetworksConfig, name: &str) -> anyhow::Result<()> {
    let net = cfg.check(name)?;
    let grace = Duration::from_secs(5);
    if net.mode == Mode::UserV2 {
        let label = format!("usernet daemon for `{name}` network");
        if read_pid_file(&unet::pid_file(home, name))?.is_some() {
            // Lima refuses to stop a daemon whose leases it could not save; here the daemon
            // stops anyway (a broken API must not keep a network up forever) and the failure
            // is logged: the next start then has the previous leases.json, or none.
            if let Err(e) = save_leases(home, name) {
                tracing::warn!("failed to save the leases of `{name}` network: {e:#}");
            }
        }
        daemon::stop(
            &label,
            &unet::pid_file(home, name),
            &StopMethod::Signal(libc::SIGINT),
            grace,
        )?;
        return Ok(());
    }
    if !cfg.is_daemon_installed() {
        return Ok(());
    }
    let pid_file = cfg.pid_file(name, DAEMON_SOCKET_VMNET);
    if read_pid_file(&pid_file)?.is_none() {
        return Ok(());
    }
    validate_config(cfg)?;
    let stop = StopMethod::Command(networks::privileged_argv(
        &cfg.stop_cmd(name, DAEMON_SOCKET_VMNET),
    ));
    daemon::stop(
        &format!("{DAEMON_SOCKET_VMNET} daemon for `{name}` network"),
        &pid_file,
        &stop,
        grace,
    )?;
    Ok(())
}

/// Lima's `validateConfig`, once per process: networks.yaml's identifier and path-security
/// rules, then (unless root, who runs the daemon commands directly) that sudo can run them
/// without a password (`paths.sudoers`, if set, must match `limanet sudoers`).
fn validate_config(cfg: &NetworksConfig) -> anyhow::Result<()> {
    static VALIDATED: AtomicBool = AtomicBool::new(false);
    if VALIDATED.load(Ordering::Relaxed) {
        return Ok(());
    }
    cfg.validate()?;
    // SAFETY: geteuid has no failure mode.
    if unsafe { libc::geteuid() } != 0 {
        cfg.verify_sudo_access(&cfg.paths.sudoers)?;
    }
    VALIDATED.store(true, Ordering::Relaxed);
    Ok(())
}

/// The socket QEMU attaches to for a networks.yaml network.
pub fn network_socket(
    home: &LimaHome,
    cfg: &NetworksConfig,
    name: &str,
) -> anyhow::Result<PathBuf> {
    if cfg.is_usernet(name)? {
        Ok(unet::sock(&unet::dir(home, name), name, SockKind::Qemu)?)
    } else {
        Ok(cfg.sock(name)?)
    }
}

/// The leases a user-v2 network has recorded (`leases.json`, `{ip: mac}`); empty if none.
pub fn usernet_leases(home: &LimaHome, name: &str) -> BTreeMap<String, String> {
    let Ok(path) = unet::leases_file(home, name) else {
        return BTreeMap::new();
    };
    let Ok(data) = std::fs::read(&path) else {
        return BTreeMap::new();
    };
    serde_json::from_slice(&data).unwrap_or_else(|e| {
        tracing::warn!("ignoring unreadable `{}`: {e}", path.display());
        BTreeMap::new()
    })
}

/// Lima's `usernet.Stop` first step: `GET /services/dhcp/leases` from the running daemon,
/// written to the network's `leases.json` (atomically, mode 0644) for the next start.
pub fn save_leases(home: &LimaHome, name: &str) -> anyhow::Result<()> {
    let dir = unet::dir(home, name);
    let client = Client::new(&unet::sock(&dir, name, SockKind::Ep)?)?;
    let leases = client.leases()?;
    let path = unet::leases_file(home, name)?;
    let json = serde_json::to_vec(&leases).context("failed to encode the leases")?;
    limanet_config::write_atomic(&path, &json, 0o644)
        .with_context(|| format!("failed to write `{}`", path.display()))?;
    tracing::info!(
        "saved {} lease(s) of `{name}` network to {}",
        leases.len(),
        path.display()
    );
    Ok(())
}

fn start_usernet(home: &LimaHome, cfg: &NetworksConfig, name: &str) -> anyhow::Result<()> {
    let dir = unet::dir(home, name);
    std::fs::create_dir_all(&dir)
        .with_context(|| format!("failed to create `{}`", dir.display()))?;
    let (network, prefix) = unet::subnet(cfg.check(name)?)?;
    let exe = std::env::current_exe().context("cannot find the limanet executable")?;
    let mut argv = vec![
        exe.display().to_string(),
        "usernet".into(),
        "--mode".into(),
        "user-v2".into(),
        "--subnet".into(),
        format!("{network}/{prefix}"),
        "--pidfile".into(),
        unet::pid_file(home, name).display().to_string(),
        "--endpoint".into(),
        unet::sock(&dir, name, SockKind::Ep)?.display().to_string(),
        "--listen-qemu".into(),
        unet::sock(&dir, name, SockKind::Qemu)?
            .display()
            .to_string(),
        "--listen-fd".into(),
        unet::sock(&dir, name, SockKind::Fd)?.display().to_string(),
    ];
    let leases = usernet_leases(home, name);
    if !leases.is_empty() {
        let joined: Vec<String> = leases
            .iter()
            .map(|(ip, mac)| format!("{ip}={mac}"))
            .collect();
        argv.push("--leases".into());
        argv.push(joined.join(","));
    }
    let mut spec = DaemonSpec::new(
        format!("usernet daemon for `{name}` network"),
        argv,
        unet::pid_file(home, name),
    );
    spec.stdout_log = unet::log_file(home, name, "stdout");
    spec.stderr_log = unet::log_file(home, name, "stderr");
    spec.attempts = 3;
    daemon::start(&spec)?;
    Ok(())
}

/// Runs a short command (Lima's `makeVarRun` mkdir), failing with its stderr.
fn run_once(argv: &[String]) -> anyhow::Result<()> {
    let (program, args) = argv.split_first().context("empty command line")?;
    let out = std::process::Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .with_context(|| format!("failed to run {argv:?}"))?;
    if !out.status.success() {
        bail!(
            "failed to run {argv:?}: {} (stderr: {})",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn leases_are_saved_from_the_api_for_the_next_start() -> anyhow::Result<()> {
        let root = crate::process::tests::tempdir()?;
        let home = LimaHome::new(&root);
        let dir = unet::dir(&home, "user-v2");
        std::fs::create_dir_all(&dir)?;
        let daemon = crate::usernet_client::tests::fake_daemon_at(
            &unet::sock(&dir, "user-v2", SockKind::Ep)?,
            vec![
                "HTTP/1.1 200 OK\r\nContent-Length: 37\r\n\r\n{\"192.168.104.1\":\"52:55:55:aa:bb:cc\"}",
                "HTTP/1.1 404 Not Found\r\nContent-Length: 9\r\n\r\nnot found",
            ],
        )?;
        save_leases(&home, "user-v2")?;
        let path = unet::leases_file(&home, "user-v2")?;
        assert_eq!(
            std::fs::read_to_string(&path)?,
            r#"{"192.168.104.1":"52:55:55:aa:bb:cc"}"#
        );
        assert_eq!(
            std::fs::metadata(&path)?.permissions().mode() & 0o777,
            0o644
        );
        // What the next start passes on as --leases.
        let leases = usernet_leases(&home, "user-v2");
        assert_eq!(
            leases.get("192.168.104.1").map(String::as_str),
            Some("52:55:55:aa:bb:cc")
        );
        // A failed fetch leaves the saved file alone.
        let err = save_leases(&home, "user-v2")
            .err()
            .map(|e| format!("{e:#}"))
            .unwrap_or_default();
        assert!(err.contains("404"), "{err}");
        assert_eq!(usernet_leases(&home, "user-v2").len(), 1);
        let _ = daemon.join();
        std::fs::remove_dir_all(&root)?;
        Ok(())
    }
}
