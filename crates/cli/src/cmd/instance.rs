//! `limanet start`, `limanet stop`, `limanet list`: instances (a user's QEMU command with
//! limanet's networks added) and the lifecycle of the network daemons they use.
//!
//! `limanet start NAME [--network lima:NET | --network socket:PATH]... [--dns IP]...
//! [--host NAME=VALUE]... [--foreground] -- QEMU-COMMAND...`:
//! * checks the name (Lima's identifier rule, so it can never escape `$LIMA_HOME`) and the
//!   network entries (Lima's `--network` parsing and `validateNetwork`, §2);
//! * eth0 is the instance's own user-mode network: a `limanet usernet` for this instance only
//!   (192.168.5.0/24, static lease 192.168.5.15 for the eth0 MAC, `lima-NAME` in its DNS,
//!   `--host` entries, `--dns` servers announced by DHCP instead of the embedded DNS), attached
//!   with `-netdev stream` (or `-netdev socket,fd=N` when the QEMU has no stream netdev);
//! * every further network is `net1`, `net2`, ...: user-v2 networks and `socket:` paths through
//!   `-netdev socket,fd=N` with the socket connected by limanet (Lima's `fd_connect`, fds 3, 4,
//!   ... in argument order), socket_vmnet networks through `-netdev stream` with `reconnect`
//!   chosen by the QEMU version; each with `-device virtio-net-pci,netdev=netN,mac=MAC` and
//!   Lima's MAC (`52:55:55` + SHA-256 of the machine id and `<instdir>` / `<instdir>/lima.yaml#i`).
//!   The arguments are appended to the user's command line. Unlike Lima, a second user-v2
//!   network gets its `-device` once (§7.5), and eth0 stays on the instance's own network even
//!   when a user-v2 network is attached (Lima makes the first user-v2 network eth0).
//! * the network daemons are reconciled (see [`reconcile`]): a network's daemon starts with the
//!   first live instance that references it and stops after the last one.
//!
//! By default QEMU runs in the background under a supervisor process (see [`supervisor`]) with
//! its output in the instance directory (see [`store`]); `limanet start` returns once QEMU runs
//! and prints a summary. `--foreground` keeps QEMU on the terminal and returns its exit code.
//!
//! `limanet stop NAME` asks the supervisor to stop (QEMU gets SIGTERM, then SIGKILL), or, when
//! the supervisor was killed, ends QEMU itself and cleans up. `limanet list [--json]` shows
//! NAME, STATE, NETWORKS and ADDRESSES; it also cleans up after instances whose processes died
//! without anyone noticing.

mod daemon;
mod process;
mod qemu;
mod reconcile;
mod store;
mod supervisor;

use anyhow::{bail, Context};
use limanet_config::limayaml;
use limanet_config::networks::{self, NetworksConfig};
use limanet_config::usernet::{self as unet, SockKind};
use limanet_config::{identifiers, mac, LimaHome};
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::Duration;
use store::{Attachment, InstancePaths, InstanceState, Nic, Status};

/// The eth0 address (Lima's `SlirpIPAddress`), given by a static DHCP lease.
pub const ETH0_ADDRESS: &str = "192.168.5.15";

/// `limanet start` arguments.
#[derive(clap::Args, Debug, Clone)]
pub struct StartArgs {
    /// Instance name (letters, digits, and `.`, `_`, `-` between them; at most 76 characters).
    pub name: String,
    /// A further network: `lima:NAME` (defined in networks.yaml) or `socket:PATH` (an
    /// unmanaged QEMU stream socket). Repeatable.
    #[arg(long = "network", value_name = "lima:NET|socket:PATH")]
    pub networks: Vec<String>,
    /// DNS server announced to the guest by DHCP instead of the embedded host-resolver DNS.
    /// Repeatable.
    #[arg(long = "dns", value_name = "IP")]
    pub dns: Vec<String>,
    /// Static DNS entry for the guest (`hostResolver.hosts`). Repeatable.
    #[arg(long = "host", value_name = "NAME=VALUE")]
    pub hosts: Vec<String>,
    /// Stay attached: QEMU uses this terminal, and `limanet start` returns QEMU's exit code.
    #[arg(long)]
    pub foreground: bool,
    /// Internal: run as the instance's background supervisor.
    #[arg(long, hide = true)]
    pub supervisor: bool,
    /// The QEMU command line, after `--`.
    #[arg(last = true, required = true, value_name = "QEMU-COMMAND")]
    pub qemu: Vec<String>,
}

impl StartArgs {
    /// The same arguments as a command line (for the supervisor).
    fn to_argv(&self) -> Vec<String> {
        let mut out = vec![self.name.clone()];
        for (flag, values) in [
            ("--network", &self.networks),
            ("--dns", &self.dns),
            ("--host", &self.hosts),
        ] {
            for v in values {
                out.push(flag.to_owned());
                out.push(v.clone());
            }
        }
        out.push("--".to_owned());
        out.extend(self.qemu.iter().cloned());
        out
    }
}

/// `limanet stop` arguments.
#[derive(clap::Args, Debug)]
pub struct StopArgs {
    /// Instance name.
    pub name: String,
    /// Seconds to wait for the instance to stop.
    #[arg(long, default_value_t = 60)]
    pub timeout: u64,
}

/// `limanet list` arguments.
#[derive(clap::Args, Debug)]
pub struct ListArgs {
    /// Print JSON (one array of instances) instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Only these instances.
    pub names: Vec<String>,
}

/// `$LIMA_HOME`, created if missing, with symlinks resolved.
fn lima_home() -> anyhow::Result<LimaHome> {
    let home = LimaHome::from_env()?;
    std::fs::create_dir_all(home.path())
        .with_context(|| format!("failed to create `{}`", home.path().display()))?;
    Ok(LimaHome::new(home.path()))
}

fn check_name(name: &str) -> anyhow::Result<()> {
    identifiers::validate(name).with_context(|| format!("invalid instance name `{name}`"))?;
    Ok(())
}

/// Validates the arguments and works out the NICs.
fn plan(args: &StartArgs) -> anyhow::Result<supervisor::Plan> {
    check_name(&args.name)?;
    if args.qemu.is_empty() {
        bail!("no QEMU command given (put it after `--`)");
    }
    for h in &args.hosts {
        match h.split_once('=') {
            Some((n, v)) if !n.is_empty() && !v.is_empty() => {}
            _ => bail!("invalid --host `{h}`: expected NAME=VALUE"),
        }
    }
    limayaml::apply_dns_flags(&[], &args.dns)?;
    let home = lima_home()?;
    let cfg = networks::load(&home)?;
    let dir = home.instance_dir(&args.name);
    let paths = InstancePaths::new(dir.clone());
    let nics = nics(&home, &cfg, &paths, &args.networks)?;
    Ok(supervisor::Plan {
        home,
        cfg,
        paths,
        name: args.name.clone(),
        nics,
        qemu_argv: args.qemu.clone(),
        hosts: args.hosts.clone(),
        dns: args.dns.clone(),
        foreground: args.foreground,
    })
}

/// eth0 plus one NIC per `--network`, with Lima's defaults and validation.
fn nics(
    home: &LimaHome,
    cfg: &NetworksConfig,
    paths: &InstancePaths,
    flags: &[String],
) -> anyhow::Result<Vec<Nic>> {
    let flags = flags
        .iter()
        .map(|f| limayaml::parse_network_flag(f))
        .collect::<Result<Vec<_>, _>>()?;
    let mut entries = limayaml::apply_network_flags(&[], &flags);
    let machine_id = mac::machine_id();
    limayaml::fill_defaults(&mut entries, &paths.dir.join("lima.yaml"), &machine_id);
    limayaml::validate(&entries, cfg)?;

    let eth0_sock = unet::sock(&paths.dir, "", SockKind::Qemu)?;
    let mut out = vec![Nic {
        interface: limayaml::SLIRP_NIC_NAME.to_owned(),
        mac: mac::mac_address(&machine_id, &paths.dir.to_string_lossy()),
        netdev: "net0".to_owned(),
        attachment: Attachment::Usernet { socket: eth0_sock },
        address: Some(ETH0_ADDRESS.to_owned()),
    }];
    for (i, e) in entries.iter().enumerate() {
        let attachment = if !e.lima.is_empty() {
            Attachment::Lima {
                network: e.lima.clone(),
                mode: cfg.check(&e.lima)?.mode.as_str().to_owned(),
                socket: reconcile::network_socket(home, cfg, &e.lima)?,
            }
        } else if !e.socket.is_empty() {
            Attachment::Socket {
                socket: e.socket.clone().into(),
            }
        } else {
            // vzNAT: as Lima's QEMU driver, ignore it with a warning.
            tracing::warn!("vmType qemu: ignoring networks[{i}]: {e:?}");
            continue;
        };
        out.push(Nic {
            interface: e.interface.clone(),
            mac: e.mac_address.clone(),
            netdev: format!("net{}", i + 1),
            attachment,
            address: None,
        });
    }
    Ok(out)
}

/// Starts an instance.
pub fn start(args: StartArgs) -> anyhow::Result<u8> {
    if args.supervisor {
        let reporter = supervisor::Reporter::Pipe;
        let result = plan(&args).and_then(|plan| supervisor::supervise(plan, &reporter));
        if let Err(e) = &result {
            reporter.fail(e);
        }
        return result;
    }
    let plan = plan(&args)?;
    if args.foreground {
        return supervisor::supervise(plan, &supervisor::Reporter::Terminal);
    }
    if let Some(state) = InstanceState::load(&plan.paths.dir)? {
        if state.effective_status() != Status::Stopped {
            bail!("instance `{}` is already running", args.name);
        }
    }
    std::fs::create_dir_all(&plan.paths.dir)
        .with_context(|| format!("failed to create `{}`", plan.paths.dir.display()))?;
    spawn_supervisor(&args, &plan.paths)
}

/// Runs `limanet start --supervisor ...` in a new session and waits for its verdict.
fn spawn_supervisor(args: &StartArgs, paths: &InstancePaths) -> anyhow::Result<u8> {
    let exe = std::env::current_exe().context("cannot find the limanet executable")?;
    let log_path = paths.supervisor_log();
    let log = std::fs::File::create(&log_path)
        .with_context(|| format!("failed to create `{}`", log_path.display()))?;
    let mut cmd = Command::new(exe);
    cmd.arg("start").arg("--supervisor").args(args.to_argv());
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(log);
    // SAFETY: setsid is async-signal-safe; a new session detaches the supervisor (and QEMU)
    // from this terminal, so closing it does not stop the instance.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd
        .spawn()
        .context("failed to start the instance supervisor")?;
    let mut verdict = String::new();
    if let Some(mut out) = child.stdout.take() {
        out.read_to_string(&mut verdict)
            .context("failed to read from the instance supervisor")?;
    }
    if verdict.trim() == "ready" {
        let state = InstanceState::load(&paths.dir)?
            .with_context(|| format!("`{}` vanished", paths.dir.display()))?;
        print!("{}", summary(&state));
        // The supervisor goes on in its own session; it is reaped by init when it ends.
        return Ok(0);
    }
    let status = child
        .wait()
        .context("failed to wait for the instance supervisor")?;
    let verdict = verdict.trim();
    if verdict.is_empty() {
        bail!(
            "instance supervisor exited ({status}); see `{}`",
            log_path.display()
        );
    }
    bail!("{verdict}")
}

/// The text `limanet start` prints once an instance runs.
fn summary(state: &InstanceState) -> String {
    let qemu = state
        .qemu
        .map(|q| q.pid.to_string())
        .unwrap_or_else(|| "-".to_owned());
    let mut out = format!("instance `{}` is running (QEMU pid {qemu})\n", state.name);
    for nic in &state.nics {
        out.push_str(&format!(
            "  {:<6} {:<15} {}  {}\n",
            nic.interface,
            nic.address.as_deref().unwrap_or("-"),
            nic.mac,
            supervisor::describe(nic)
        ));
    }
    if !state.foreground {
        out.push_str(&format!(
            "QEMU output: {}/qemu.{{stdout,stderr}}.log; stop with `limanet stop {}`\n",
            state.dir.display(),
            state.name
        ));
    }
    out
}

/// Stops an instance.
pub fn stop(args: StopArgs) -> anyhow::Result<u8> {
    check_name(&args.name)?;
    let home = lima_home()?;
    let paths = InstancePaths::new(home.instance_dir(&args.name));
    let Some(mut state) = InstanceState::load(&paths.dir)? else {
        bail!("instance `{}` does not exist", args.name);
    };
    let timeout = Duration::from_secs(args.timeout);
    if let Some(sup) = state
        .supervisor
        .filter(|s| s.alive() && state.status != Status::Stopped)
    {
        tracing::info!(
            "asking the supervisor of `{}` (pid {}) to stop",
            args.name,
            sup.pid
        );
        process::signal(sup.pid, libc::SIGTERM)?;
        if !process::wait_until(timeout, Duration::from_millis(100), || !sup.alive()) {
            bail!(
                "instance `{}` did not stop within {timeout:?} (supervisor pid {})",
                args.name,
                sup.pid
            );
        }
        let state = InstanceState::load(&paths.dir)?.context("instance state vanished")?;
        if state.status == Status::Stopped {
            println!("instance `{}` stopped", args.name);
            return Ok(0);
        }
        // The supervisor died without recording the stop: finish its work below.
    }
    let state_now = InstanceState::load(&paths.dir)?.unwrap_or(state);
    state = state_now;
    if state.status == Status::Stopped {
        bail!("instance `{}` is not running", args.name);
    }
    if let Some(qemu) = state.qemu.filter(|q| q.alive()) {
        tracing::info!(
            "the supervisor of `{}` is gone; stopping QEMU (pid {})",
            args.name,
            qemu.pid
        );
        supervisor::terminate_orphan(qemu, timeout)?;
    }
    let cfg = networks::load(&home)?;
    supervisor::teardown(
        &home,
        &cfg,
        &paths,
        &mut state,
        "stopped by `limanet stop` (supervisor was gone)".to_owned(),
    );
    println!("instance `{}` stopped", args.name);
    Ok(0)
}

/// One row of `limanet list`.
#[derive(serde::Serialize)]
struct Row {
    name: String,
    state: String,
    networks: Vec<String>,
    addresses: Vec<RowAddress>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    hosts: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    dns: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    qemu_pid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    exit: Option<String>,
    dir: String,
}

#[derive(serde::Serialize)]
struct RowAddress {
    interface: String,
    mac: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    ip: Option<String>,
}

/// Lists instances.
pub fn list(args: ListArgs) -> anyhow::Result<u8> {
    for n in &args.names {
        check_name(n)?;
    }
    let home = lima_home()?;
    let mut rows = Vec::new();
    let mut cleaned = false;
    for dir in store::instance_dirs(home.path())? {
        let mut state = match InstanceState::load(&dir) {
            Ok(Some(s)) => s,
            Ok(None) => continue,
            Err(e) => {
                tracing::warn!("{e:#}");
                continue;
            }
        };
        if !args.names.is_empty() && !args.names.contains(&state.name) {
            continue;
        }
        let status = state.effective_status();
        if status == Status::Stopped && state.status != Status::Stopped {
            // Both the supervisor and QEMU died (e.g. SIGKILL) without recording it.
            tracing::info!(
                "instance `{}` died without `limanet stop`; cleaning up",
                state.name
            );
            let paths = InstancePaths::new(dir.clone());
            supervisor::stop_own_usernet(&paths);
            let _ = std::fs::remove_file(paths.qemu_pid());
            state.status = Status::Stopped;
            state.exit = Some("supervisor and QEMU gone without a stop".to_owned());
            state.save()?;
            cleaned = true;
        }
        rows.push(row(&home, &state, status));
    }
    if cleaned {
        let cfg = networks::load(&home)?;
        reconcile::reconcile(&home, &cfg, None)?;
    }
    for n in &args.names {
        if !rows.iter().any(|r| &r.name == n) {
            bail!("instance `{n}` does not exist");
        }
    }
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&rows).context("failed to encode JSON")?
        );
        return Ok(0);
    }
    print!("{}", table(&rows));
    Ok(0)
}

fn row(home: &LimaHome, state: &InstanceState, status: Status) -> Row {
    let addresses = state
        .nics
        .iter()
        .map(|nic| {
            let ip = nic.address.clone().or_else(|| match &nic.attachment {
                Attachment::Lima { network, mode, .. } if mode == "user-v2" => {
                    reconcile::usernet_leases(home, network)
                        .into_iter()
                        .find(|(_, mac)| mac.eq_ignore_ascii_case(&nic.mac))
                        .map(|(ip, _)| ip)
                }
                _ => None,
            });
            RowAddress {
                interface: nic.interface.clone(),
                mac: nic.mac.clone(),
                ip,
            }
        })
        .collect();
    Row {
        name: state.name.clone(),
        state: match status {
            Status::Starting => "Starting",
            Status::Running => "Running",
            Status::Stopped => "Stopped",
        }
        .to_owned(),
        networks: state.nics.iter().map(supervisor::describe).collect(),
        addresses,
        hosts: state.hosts.clone(),
        dns: state.dns.clone(),
        qemu_pid: state
            .qemu
            .filter(|_| status == Status::Running)
            .map(|q| q.pid),
        exit: state.exit.clone().filter(|_| status == Status::Stopped),
        dir: state.dir.display().to_string(),
    }
}

fn table(rows: &[Row]) -> String {
    let cells: Vec<[String; 4]> = rows
        .iter()
        .map(|r| {
            let addrs: Vec<String> = r
                .addresses
                .iter()
                .map(|a| {
                    format!(
                        "{}={}/{}",
                        a.interface,
                        a.ip.as_deref().unwrap_or("-"),
                        a.mac
                    )
                })
                .collect();
            [
                r.name.clone(),
                r.state.clone(),
                r.networks.join(","),
                addrs.join(" "),
            ]
        })
        .collect();
    let header = ["NAME", "STATE", "NETWORKS", "ADDRESSES"].map(String::from);
    let mut widths = header.clone().map(|h| h.len());
    for c in &cells {
        for (w, v) in widths.iter_mut().zip(c) {
            *w = (*w).max(v.len());
        }
    }
    let mut out = String::new();
    for c in std::iter::once(&header).chain(&cells) {
        let line = format!(
            "{:<w0$}  {:<w1$}  {:<w2$}  {}",
            c[0],
            c[1],
            c[2],
            c[3],
            w0 = widths[0],
            w1 = widths[1],
            w2 = widths[2]
        );
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}
