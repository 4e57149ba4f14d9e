//! `limanet choose`: Lima's "which network?" flowchart as a short dialogue (or flags), ending
//! with the network to use, its networks.yaml entry and the exact `limanet start` command line.
//!
//! ```text
//! Connect to the VM via ── localhost ──> Default (user-mode, 192.168.5.0/24)
//!                       └─ IP ── from ── host ── VM type ── vz   ──> vzNAT (macOS only)
//!                                     │                 └─ qemu ──> socket_vmnet (shared)
//!                                     ├─ other VMs  ──> user-v2
//!                                     └─ other hosts ─> socket_vmnet (bridged)
//! ```

use anyhow::{bail, Context};
use clap::ValueEnum;
use limanet_config::{networks, LimaHome, Mode, NetworksConfig};
use std::io::{BufRead, IsTerminal, Write};

/// How the user connects to the VM.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnectVia {
    /// Through forwarded ports on localhost.
    Localhost,
    /// Through the VM's own IP address.
    Ip,
}

/// Where the VM's IP must be reachable from.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum From {
    /// This host.
    Host,
    /// Other VMs on this host.
    Vms,
    /// Other machines on the LAN.
    OtherHosts,
}

/// The VM type (Lima's vmType).
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum VmType {
    /// QEMU (the only type limanet runs on Linux).
    Qemu,
    /// Apple's Virtualization.framework (macOS only).
    Vz,
}

/// Command-line arguments.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// How you connect to the VM: `localhost` (port forwarding) or `ip` (the VM's own address).
    #[arg(long, value_enum)]
    pub connect_via: Option<ConnectVia>,
    /// Where the VM's IP must be reachable from (with --connect-via ip).
    #[arg(long, value_enum)]
    pub from: Option<From>,
    /// VM type (with --from host); limanet runs QEMU, the default when not asked interactively.
    #[arg(long, value_enum)]
    pub vm_type: Option<VmType>,
    /// Instance name to use in the printed command line.
    #[arg(long, default_value = "default")]
    pub name: String,
    /// Ask the missing questions on stdin even when it is not a terminal.
    #[arg(long)]
    pub interactive: bool,
}

/// The flowchart's leaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Choice {
    Default,
    VzNat,
    Shared,
    UserV2,
    Bridged,
}

/// Asks questions on stderr and reads the answers from stdin.
struct Prompter<R> {
    input: R,
    enabled: bool,
}

impl<R: BufRead> Prompter<R> {
    /// Returns the flag's value, or asks when allowed.
    fn answer<T: ValueEnum + Copy>(
        &mut self,
        given: Option<T>,
        flag: &str,
        question: &str,
        options: &[(T, &str)],
    ) -> anyhow::Result<T> {
        if let Some(v) = given {
            return Ok(v);
        }
        if !self.enabled {
            bail!("missing --{flag} (run `limanet choose` in a terminal, or with --interactive, to be asked)");
        }
        let mut err = std::io::stderr().lock();
        for _attempt in 0..5 {
            writeln!(err, "{question}")?;
            for (i, (v, help)) in options.iter().enumerate() {
                let word = v
                    .to_possible_value()
                    .map(|p| p.get_name().to_owned())
                    .unwrap_or_default();
                writeln!(err, "  {}) {word:<12} {help}", i + 1)?;
            }
            write!(err, "Choice [1-{}]: ", options.len())?;
            err.flush()?;
            let mut line = String::new();
            if self
                .input
                .read_line(&mut line)
                .context("cannot read the answer from stdin")?
                == 0
            {
                bail!("no answer for --{flag}: stdin ended");
            }
            let a = line.trim();
            if let Some(v) = a
                .parse::<usize>()
                .ok()
                .and_then(|n| n.checked_sub(1))
                .and_then(|i| options.get(i))
            {
                return Ok(v.0);
            }
            if let Ok(v) = T::from_str(a, true) {
                return Ok(v);
            }
            writeln!(
                err,
                "Please answer with a number from 1 to {} or one of the words.",
                options.len()
            )?;
        }
        bail!("no valid answer for --{flag}")
    }
}

fn decide<R: BufRead>(args: &Args, p: &mut Prompter<R>) -> anyhow::Result<Choice> {
    let via = p.answer(
        args.connect_via,
        "connect-via",
        "Connect to the VM via:",
        &[
            (
                ConnectVia::Localhost,
                "forwarded ports on localhost (ssh, published ports)",
            ),
            (ConnectVia::Ip, "the VM's own IP address"),
        ],
    )?;
    if via == ConnectVia::Localhost {
        return Ok(Choice::Default);
    }
    let from = p.answer(
        args.from,
        "from",
        "Connect to the VM IP from:",
        &[
            (From::Host, "this host"),
            (From::Vms, "other VMs on this host"),
            (From::OtherHosts, "other machines on the network"),
        ],
    )?;
    Ok(match from {
        From::Vms => Choice::UserV2,
        From::OtherHosts => Choice::Bridged,
        From::Host => {
            // limanet only runs QEMU, so without a terminal a missing --vm-type means qemu.
            let given = args.vm_type.or((!p.enabled).then_some(VmType::Qemu));
            let vm = p.answer(
                given,
                "vm-type",
                "VM type:",
                &[
                    (VmType::Qemu, "QEMU (what limanet runs)"),
                    (VmType::Vz, "VZ (macOS only)"),
                ],
            )?;
            if vm == VmType::Vz {
                Choice::VzNat
            } else {
                Choice::Shared
            }
        }
    })
}

/// Runs the subcommand.
pub fn run(args: Args) -> anyhow::Result<u8> {
    let stdin = std::io::stdin();
    let enabled = args.interactive || stdin.is_terminal();
    let mut prompter = Prompter {
        input: stdin.lock(),
        enabled,
    };
    let choice = decide(&args, &mut prompter)?;
    let home = LimaHome::from_env()?;
    let (config, file_exists) = config_for_display(&home)?;
    print!(
        "{}",
        describe(choice, &args.name, &config, &home, file_exists)
    );
    Ok(0)
}

/// The configuration as it is (or as it will be created), without creating the file.
fn config_for_display(home: &LimaHome) -> anyhow::Result<(NetworksConfig, bool)> {
    if home.networks_yaml().exists() {
        return Ok((limanet_config::load(home)?, true));
    }
    let text = networks::render_host_template()?;
    let mut config = networks::parse(&text, &home.networks_yaml())?;
    config.fill_defaults();
    config.fill_limanet_defaults(&networks::default_group());
    Ok((config, false))
}

fn describe(
    choice: Choice,
    instance: &str,
    config: &NetworksConfig,
    home: &LimaHome,
    file_exists: bool,
) -> String {
    let qemu = "qemu-system-x86_64 <your QEMU arguments>";
    let mut out = String::new();
    let (title, mode, why) = match choice {
        Choice::Default => {
            out.push_str("Network: Default (user-mode network 192.168.5.0/24)\n");
            out.push_str("The VM gets 192.168.5.15, reachable only through forwarded ports; the host is 192.168.5.2 (host.lima.internal), DNS is 192.168.5.3.\n");
            out.push_str("Nothing to configure: every instance has this network as eth0.\n\n");
            out.push_str(&format!("Command line:\n  limanet start {instance} -- {qemu}\n"));
            return out;
        }
        Choice::VzNat => {
            out.push_str("Network: vzNAT\n");
            out.push_str("vzNAT needs VZ (Virtualization.framework), which only exists on macOS; limanet runs QEMU.\n");
            out.push_str("On Linux the equivalent is socket_vmnet (shared), below.\n\n");
            ("socket_vmnet (shared)", Mode::Shared, "The VM gets an address on a NAT network that this host can reach.")
        }
        Choice::Shared => ("socket_vmnet (shared)", Mode::Shared, "The VM gets an address on a NAT network that this host (and other VMs on it) can reach."),
        Choice::UserV2 => ("user-v2", Mode::UserV2, "VMs on the same user-v2 network reach each other by IP and as lima-<NAME>.internal; no root needed."),
        Choice::Bridged => ("socket_vmnet (bridged)", Mode::Bridged, "The VM joins the host's LAN through a bridge and gets its address from the LAN's DHCP server."),
    };
    let name = pick_network(config, &mode);
    out.push_str(&format!(
        "Network: {title}\n{why}\nFlag: --network lima:{name}\n\n"
    ));
    let file = home.networks_yaml();
    match config.networks.get(&name) {
        Some(net) => {
            let state = if file_exists {
                "defined in"
            } else {
                "will be created in"
            };
            out.push_str(&format!(
                "networks.yaml entry ({state} {}):\n  {name}:\n    mode: {}\n",
                file.display(),
                net.mode
            ));
            if !net.interface.is_empty() {
                out.push_str(&format!("    interface: {}\n", net.interface));
            }
            for (k, v) in [
                ("gateway", net.gateway),
                ("dhcpEnd", net.dhcp_end),
                ("netmask", net.netmask),
            ] {
                if let Some(ip) = v {
                    out.push_str(&format!("    {k}: {ip}\n"));
                }
            }
            if mode == Mode::Bridged {
                out.push_str("Check that `interface:` names this host's uplink (see `ip route show default`).\n");
            }
        }
        None => {
            let create = match mode {
                Mode::Bridged => format!(
                    "limanet network create {name} --mode bridged --interface <uplink, e.g. eth0>"
                ),
                _ => format!(
                    "limanet network create {name} --mode {mode} --gateway 192.168.107.1/24"
                ),
            };
            out.push_str(&format!(
                "No {mode} network is defined in {}; create one first:\n  {create}\n",
                file.display()
            ));
        }
    }
    if mode != Mode::UserV2 {
        out.push_str("\nThis network runs a root daemon via sudo:\n");
        if !config.is_daemon_installed() {
            out.push_str(&format!(
                "  limanet's socket_vmnet-compatible daemon is not installed at `{}` yet; starting this network fails until it is:\n  sudo limanet install-vmnet{}\n",
                config.paths.socket_vmnet,
                std::path::Path::new(&config.paths.socket_vmnet)
                    .parent()
                    .filter(|d| {
                        config.paths.socket_vmnet != limanet_config::networks::DEFAULT_SOCKET_VMNET
                            && !d.as_os_str().is_empty()
                    })
                    .map(|d| format!(" --prefix {}", d.display()))
                    .unwrap_or_default()
            ));
        }
        out.push_str("  limanet sudoers >etc_sudoers.d_lima && sudo install -o root etc_sudoers.d_lima /etc/sudoers.d/lima\n");
    }
    out.push_str(&format!(
        "\nCommand line:\n  limanet start {instance} --network lima:{name} -- {qemu}\n"
    ));
    out
}

/// The network to use for `mode`: the one named like the mode if it has that mode, else the
/// first network with that mode, else the mode's name (to be created).
fn pick_network(config: &NetworksConfig, mode: &Mode) -> String {
    let canonical = mode.as_str();
    if config
        .networks
        .get(canonical)
        .is_some_and(|n| &n.mode == mode)
    {
        return canonical.to_owned();
    }
    config
        .networks
        .iter()
        .find(|(_, n)| &n.mode == mode)
        .map_or_else(|| canonical.to_owned(), |(k, _)| k.clone())
}
