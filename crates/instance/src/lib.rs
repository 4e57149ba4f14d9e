//! limanet instances (`limanet start`, `limanet stop`, `limanet list`) (a user's QEMU command with
//! limanet's networks added) and the lifecycle of the network daemons they use.
//!
//! `limanet start NAME [--network lima:NET | --network socket:PATH]... [--dns IP]...
//! [--host NAME=VALUE]... [--forward SPEC]... [--ssh-port PORT] [--vhost-user] [--foreground]
//! -- QEMU-COMMAND...`:
//! * checks the name (Lima's `ValidateInstName`: the identifier rule, so it can never escape
//!   `$LIMA_HOME`, and no `.yml`/`.yaml` suffix) and the
//!   network entries (Lima's `--network` parsing and `validateNetwork`, §2);
//! * eth0 (`net0`, with Lima's eth0 MAC: `52:55:55` + SHA-256 of the machine id and
//!   `<instdir>`) is, as in Lima, the first user-v2 network when there is one (Lima's
//!   `FirstUsernetIndex`): attached through `-netdev socket,fd=N`, with no network of the
//!   instance's own. Otherwise it is the instance's own user-mode network: a `limanet usernet`
//!   for this instance only (192.168.5.0/24, static lease 192.168.5.15 for the eth0 MAC,
//!   `lima-NAME` in its DNS, `--host` entries, `--dns` servers announced by DHCP instead of the
//!   embedded DNS), attached with `-netdev stream` (or `-netdev socket,fd=N` when the QEMU has
//!   no stream netdev). `--dns` needs that own network, so it is refused with a user-v2 eth0.
//! * with `--vhost-user`, that own network listens on `default_vhost.sock` instead and eth0
//!   is attached over vhost-user: limanet adds a shared memfd memory backend of the user's
//!   `-m` size (see [`qemu::vhost_user_memory_args`], which refuses what it cannot share) and
//!   the chardev/netdev; a user-v2 eth0 is refused (one shared daemon, one QEMU per socket).
//! * every further network `i` (0-based, in `--network` order) is `net<i+1>`: user-v2
//!   networks and `socket:` paths through `-netdev socket,fd=N` with the socket connected by
//!   limanet (Lima's `fd_connect`, fds 3, 4, ... in argument order), socket_vmnet networks
//!   through `-netdev stream` with `reconnect` chosen by the QEMU version; each with
//!   `-device virtio-net-pci,netdev=netN,mac=MAC` and Lima's MAC (`<instdir>/lima.yaml#i`).
//!   The arguments are appended to the user's command line. Unlike Lima, a second user-v2
//!   network gets its `-device` once (§7.5).
//! * with eth0 on a user-v2 network, the supervisor registers the instance with the network's
//!   API once QEMU runs, as Lima's `ConfigureDriver` (see [`register`]): the VM's lease (shown
//!   by `limanet list`), the `--forward`/`--ssh-port` forwards, and DNS zones for
//!   `lima-NAME.internal`, `host.lima.internal` and the `--host` entries;
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

//!
//! This crate holds the whole lifecycle; the `limanet` CLI only parses arguments into a
//! [`StartOptions`] and formats what [`start`], [`stop`] and [`list`] return.

pub mod daemon;
pub mod dnshosts;
pub mod process;
pub mod qemu;
pub mod reconcile;
pub mod register;
pub mod store;
pub mod supervisor;
pub mod usernet_client;

use anyhow::{bail, Context};
use limanet_config::limayaml;
use limanet_config::networks::{self, Mode, NetworksConfig};
use limanet_config::quote::go_quote;
use limanet_config::usernet::{self as unet, SockKind};
use limanet_config::{identifiers, mac, LimaHome};
use limanet_runtime::Forward;
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::Duration;
use store::{Attachment, InstancePaths, InstanceState, Nic, Status};

/// The eth0 address (Lima's `SlirpIPAddress`), given by a static DHCP lease.
pub const ETH0_ADDRESS: &str = "192.168.5.15";

/// What `limanet start` was asked to do.
#[derive(Debug, Clone, Default)]
pub struct StartOptions {
    /// Instance name.
    pub name: String,
    /// `--network` values: `lima:NAME` or `socket:PATH`.
    pub networks: Vec<String>,
    /// `--dns` servers announced by DHCP instead of the embedded DNS.
    pub dns: Vec<String>,
    /// `--host NAME=VALUE` entries.
    pub hosts: Vec<String>,
    /// `--forward tcp|udp:[HOSTADDR:]HOSTPORT:[GUESTADDR:]GUESTPORT` port forwards.
    pub forwards: Vec<String>,
    /// `--ssh-port PORT`: forward 127.0.0.1:PORT to the guest's port 22 (Lima's
    /// `ssh.localPort`).
    pub ssh_port: Option<u16>,
    /// Keep QEMU on this terminal and return its exit code.
    pub foreground: bool,
    /// Attach eth0 to the instance's own network over vhost-user (shared guest memory)
    /// instead of a stream socket.
    pub vhost_user: bool,
    /// The QEMU command line.
    pub qemu: Vec<String>,
}

impl StartOptions {
    /// The same options as `limanet start` arguments (for the supervisor).
    fn to_argv(&self) -> Vec<String> {
        let mut out = vec![self.name.clone()];
        for (flag, values) in [
            ("--network", &self.networks),
            ("--dns", &self.dns),
            ("--host", &self.hosts),
            ("--forward", &self.forwards),
        ] {
            for v in values {
                out.push(flag.to_owned());
                out.push(v.clone());
            }
        }
        if let Some(port) = self.ssh_port {
            out.push("--ssh-port".to_owned());
            out.push(port.to_string());
        }
        if self.vhost_user {
            out.push("--vhost-user".to_owned());
        }
        out.push("--".to_owned());
        out.extend(self.qemu.iter().cloned());
        out
    }
}

/// How [`start`] ended.
#[derive(Debug)]
pub enum Started {
    /// Background: QEMU runs under its supervisor; the state as recorded once it ran.
    Running(Box<InstanceState>),
    /// Foreground (or supervisor): QEMU's exit code.
    Exited(u8),
}

/// `$LIMA_HOME`, created if missing, with symlinks resolved.
pub fn lima_home() -> anyhow::Result<LimaHome> {
    let home = LimaHome::from_env()?;
    std::fs::create_dir_all(home.path())
        .with_context(|| format!("failed to create `{}`", home.path().display()))?;
    Ok(LimaHome::new(home.path()))
}

/// Checks an instance name (Lima's `ValidateInstName`), so it can never escape `$LIMA_HOME`
/// nor be mistaken for a template file.
pub fn check_name(name: &str) -> anyhow::Result<()> {
    validate_inst_name(name).with_context(|| format!("invalid instance name `{name}`"))
}

/// Lima's `ValidateInstName` with its messages: an identifier (see
/// [`limanet_config::identifiers`]) that does not end in `.yml` or `.yaml` (any case; `limactl`
/// takes such arguments as template files).
pub fn validate_inst_name(name: &str) -> anyhow::Result<()> {
    if let Err(e) = identifiers::validate(name) {
        bail!(
            "instance name {} is not a valid identifier: {e}",
            go_quote(name)
        );
    }
    let lower = name.to_ascii_lowercase();
    if lower.ends_with(".yml") || lower.ends_with(".yaml") {
        bail!(
            "instance name {} must not end with .yml or .yaml suffix",
            go_quote(name)
        );
    }
    Ok(())
}

/// Validates the arguments and works out the NICs.
fn plan(args: &StartOptions) -> anyhow::Result<supervisor::Plan> {
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
    let forwards = forwards(args)?;
    let home = lima_home()?;
    let cfg = networks::load(&home)?;
    let dir = home.instance_dir(&args.name);
    let paths = InstancePaths::new(dir.clone());
    let nics = nics(&home, &cfg, &paths, &args.networks, args.vhost_user)?;
    let own_eth0 = matches!(nics[0].attachment, Attachment::Usernet { .. });
    if !args.dns.is_empty() && !own_eth0 {
        // The DNS servers are announced by the instance's own network, which a user-v2 eth0
        // replaces; the shared user-v2 daemon announces its gateway to every guest.
        bail!("--dns needs the instance's own network on eth0, but eth0 is on the user-v2 network (its DNS is the network's gateway)");
    }
    if args.vhost_user {
        if !own_eth0 {
            // The shared user-v2 daemon is started once for all its instances, and a
            // vhost-user socket serves one QEMU: it would need a socket per instance.
            bail!("--vhost-user needs the instance's own network on eth0, but eth0 is on the user-v2 network; serve user-v2 over vhost-user with `limanet usernet --mode user-v2 --listen-vhost-user PATH` instead");
        }
        // Checked here so a bad `-m` is reported before any daemon starts.
        qemu::vhost_user_memory_args(args.qemu.get(1..).unwrap_or_default())?;
    }
    Ok(supervisor::Plan {
        home,
        cfg,
        paths,
        name: args.name.clone(),
        nics,
        qemu_argv: args.qemu.clone(),
        hosts: args.hosts.clone(),
        dns: args.dns.clone(),
        forwards,
        foreground: args.foreground,
    })
}

/// The port forwards: `--forward` specs (checked) and `--ssh-port` as `tcp:127.0.0.1:PORT:22`.
fn forwards(args: &StartOptions) -> anyhow::Result<Vec<String>> {
    let mut out = Vec::new();
    for f in &args.forwards {
        f.parse::<Forward>()
            .map_err(|e| anyhow::anyhow!("invalid --forward: {e}"))?;
        out.push(f.clone());
    }
    if let Some(port) = args.ssh_port {
        if port == 0 {
            bail!("invalid --ssh-port 0");
        }
        out.push(format!("tcp:127.0.0.1:{port}:22"));
    }
    Ok(out)
}

/// eth0 plus one NIC per `--network`, with Lima's defaults and validation.
fn nics(
    home: &LimaHome,
    cfg: &NetworksConfig,
    paths: &InstancePaths,
    flags: &[String],
    vhost_user: bool,
) -> anyhow::Result<Vec<Nic>> {
    let flags = flags
        .iter()
        .map(|f| limayaml::parse_network_flag(f))
        .collect::<Result<Vec<_>, _>>()?;
    let mut entries = limayaml::apply_network_flags(&[], &flags);
    let machine_id = mac::machine_id();
    limayaml::fill_defaults(&mut entries, &paths.dir.join("lima.yaml"), &machine_id);
    limayaml::validate(&entries, cfg)?;

    let eth0_mac = mac::mac_address(&machine_id, &paths.dir.to_string_lossy());
    // Lima's `FirstUsernetIndex`: the first user-v2 network is eth0 itself.
    let first_usernet = first_usernet_index(&entries, cfg)?;
    let eth0 = match first_usernet {
        Some(k) => Nic {
            interface: limayaml::SLIRP_NIC_NAME.to_owned(),
            mac: eth0_mac,
            netdev: "net0".to_owned(),
            attachment: Attachment::Lima {
                network: entries[k].lima.clone(),
                mode: Mode::UserV2.as_str().to_owned(),
                socket: reconcile::network_socket(home, cfg, &entries[k].lima)?,
            },
            address: None,
        },
        None => Nic {
            interface: limayaml::SLIRP_NIC_NAME.to_owned(),
            mac: eth0_mac,
            netdev: "net0".to_owned(),
            attachment: Attachment::Usernet {
                socket: unet::sock(
                    &paths.dir,
                    "",
                    if vhost_user {
                        SockKind::Vhost
                    } else {
                        SockKind::Qemu
                    },
                )?,
                vhost_user,
            },
            address: Some(ETH0_ADDRESS.to_owned()),
        },
    };
    let mut out = vec![eth0];
    for (i, e) in entries.iter().enumerate() {
        if Some(i) == first_usernet {
            continue;
        }
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

/// Lima's `FirstUsernetIndex`: the index of the first entry on a user-v2 network, if any.
fn first_usernet_index(
    entries: &[limayaml::NetworkEntry],
    cfg: &NetworksConfig,
) -> anyhow::Result<Option<usize>> {
    for (i, e) in entries.iter().enumerate() {
        if !e.lima.is_empty() && cfg.is_usernet(&e.lima)? {
            return Ok(Some(i));
        }
    }
    Ok(None)
}

/// Starts an instance: in the background under a supervisor process (returns once QEMU runs),
/// or in the foreground (returns QEMU's exit code).
pub fn start(args: &StartOptions) -> anyhow::Result<Started> {
    let plan = plan(args)?;
    if args.foreground {
        return supervisor::supervise(plan, &supervisor::Reporter::Terminal).map(Started::Exited);
    }
    if let Some(state) = InstanceState::load(&plan.paths.dir)? {
        if state.effective_status() != Status::Stopped {
            bail!("instance `{}` is already running", args.name);
        }
    }
    std::fs::create_dir_all(&plan.paths.dir)
        .with_context(|| format!("failed to create `{}`", plan.paths.dir.display()))?;
    spawn_supervisor(args, &plan.paths)
}

/// Runs as an instance's background supervisor (`limanet start --supervisor`): reports `ready`
/// or the error on stdout, then supervises QEMU to its end.
pub fn run_supervisor(args: &StartOptions) -> anyhow::Result<u8> {
    let reporter = supervisor::Reporter::Pipe;
    let result = plan(args).and_then(|plan| supervisor::supervise(plan, &reporter));
    if let Err(e) = &result {
        reporter.fail(e);
    }
    result
}

/// Runs `limanet start --supervisor ...` in a new session and waits for its verdict.
fn spawn_supervisor(args: &StartOptions, paths: &InstancePaths) -> anyhow::Result<Started> {
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
        // The supervisor goes on in its own session; it is reaped by init when it ends.
        return Ok(Started::Running(Box::new(state)));
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
pub fn summary(state: &InstanceState) -> String {
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

/// Stops an instance, waiting up to `timeout` for its supervisor.
pub fn stop(name: &str, timeout: Duration) -> anyhow::Result<()> {
    check_name(name)?;
    let home = lima_home()?;
    let paths = InstancePaths::new(home.instance_dir(name));
    let Some(mut state) = InstanceState::load(&paths.dir)? else {
        bail!("instance `{}` does not exist", name);
    };
    if let Some(sup) = state
        .supervisor
        .filter(|s| s.alive() && state.status != Status::Stopped)
    {
        tracing::info!(
            "asking the supervisor of `{}` (pid {}) to stop",
            name,
            sup.pid
        );
        process::signal(sup.pid, libc::SIGTERM)?;
        if !process::wait_until(timeout, Duration::from_millis(100), || !sup.alive()) {
            bail!(
                "instance `{}` did not stop within {timeout:?} (supervisor pid {})",
                name,
                sup.pid
            );
        }
        let state = InstanceState::load(&paths.dir)?.context("instance state vanished")?;
        if state.status == Status::Stopped {
            return Ok(());
        }
        // The supervisor died without recording the stop: finish its work below.
    }
    let state_now = InstanceState::load(&paths.dir)?.unwrap_or(state);
    state = state_now;
    if state.status == Status::Stopped {
        bail!("instance `{}` is not running", name);
    }
    if let Some(qemu) = state.qemu.filter(|q| q.alive()) {
        tracing::info!(
            "the supervisor of `{}` is gone; stopping QEMU (pid {})",
            name,
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
    Ok(())
}

/// One instance as `limanet list` shows it.
#[derive(Debug, Clone)]
pub struct Listed {
    /// The recorded state.
    pub state: InstanceState,
    /// The status as the processes show it.
    pub status: Status,
    /// Each NIC's IPv4 address when known, in NIC order.
    pub addresses: Vec<Option<String>>,
}

/// Lists instances (all, or only `names`), cleaning up after instances whose processes died
/// without anyone noticing and reconciling the networks then.
pub fn list(names: &[String]) -> anyhow::Result<Vec<Listed>> {
    for n in names {
        check_name(n)?;
    }
    let home = lima_home()?;
    let mut out = Vec::new();
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
        if !names.is_empty() && !names.contains(&state.name) {
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
            // Its forwards on a user-v2 eth0 would otherwise hold their host ports for as
            // long as the network runs.
            if let Ok(cfg) = networks::load(&home) {
                if let Ok(Some(reg)) = register::Registration::for_instance(&home, &cfg, &state) {
                    reg.unregister();
                }
            }
            supervisor::stop_own_usernet(&paths);
            let _ = std::fs::remove_file(paths.qemu_pid());
            state.status = Status::Stopped;
            state.exit = Some("supervisor and QEMU gone without a stop".to_owned());
            state.save()?;
            cleaned = true;
        }
        let addresses = nic_addresses(&home, &state);
        out.push(Listed {
            state,
            status,
            addresses,
        });
    }
    if cleaned {
        let cfg = networks::load(&home)?;
        reconcile::reconcile(&home, &cfg, None)?;
    }
    for n in names {
        if !out.iter().any(|l| &l.state.name == n) {
            bail!("instance `{n}` does not exist");
        }
    }
    Ok(out)
}

/// Each NIC's address: the recorded one, or a user-v2 network's lease for the NIC's MAC.
fn nic_addresses(home: &LimaHome, state: &InstanceState) -> Vec<Option<String>> {
    state
        .nics
        .iter()
        .map(|nic| {
            nic.address.clone().or_else(|| match &nic.attachment {
                Attachment::Lima { network, mode, .. } if mode == "user-v2" => {
                    reconcile::usernet_leases(home, network)
                        .into_iter()
                        .find(|(_, mac)| mac.eq_ignore_ascii_case(&nic.mac))
                        .map(|(ip, _)| ip)
                }
                _ => None,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name_error(name: &str) -> String {
        validate_inst_name(name)
            .err()
            .map(|e| format!("{e:#}"))
            .unwrap_or_default()
    }

    #[test]
    fn instance_names_follow_limas_validate_inst_name() {
        for good in ["default", "vm1", "a.b_c-d", "yml", "x.yml0", "my.yamlx"] {
            assert!(validate_inst_name(good).is_ok(), "{good}");
        }
        for bad in ["vm.yml", "vm.yaml", "VM.YML", "a.b.YaMl"] {
            assert_eq!(
                name_error(bad),
                format!("instance name \"{bad}\" must not end with .yml or .yaml suffix")
            );
        }
        assert_eq!(
            name_error("x-"),
            "instance name \"x-\" is not a valid identifier: identifier `x-` must match \
             ^[A-Za-z0-9]+(?:[._-](?:[A-Za-z0-9]+))*$"
        );
        assert_eq!(
            name_error(""),
            "instance name \"\" is not a valid identifier: identifier must not be empty"
        );
    }
}
