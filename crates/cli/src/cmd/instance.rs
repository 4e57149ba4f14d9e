//! `limanet start`, `limanet stop`, `limanet list`: the command-line layer over
//! [`limanet_instance`], which holds the whole instance lifecycle (see its docs). This module
//! only turns arguments into calls and results into text.

use anyhow::Context;
use limanet_instance::store::Status;
use limanet_instance::{Listed, StartOptions, Started};
use std::time::Duration;

/// `limanet start` arguments.
#[derive(clap::Args, Debug, Clone)]
pub struct StartArgs {
    /// Instance name (letters, digits, and `.`, `_`, `-` between them; at most 76 characters;
    /// not ending in `.yml` or `.yaml`).
    pub name: String,
    /// A network: `lima:NAME` (defined in networks.yaml) or `socket:PATH` (an unmanaged QEMU
    /// stream socket). Repeatable. The first user-v2 network is eth0 (as in Lima); without
    /// one, eth0 is the instance's own user-mode network.
    #[arg(long = "network", value_name = "lima:NET|socket:PATH")]
    pub networks: Vec<String>,
    /// DNS server announced to the guest by DHCP instead of the embedded host-resolver DNS
    /// (only with eth0 on the instance's own network). Repeatable.
    #[arg(long = "dns", value_name = "IP")]
    pub dns: Vec<String>,
    /// Static DNS entry for the guest (`hostResolver.hosts`). Repeatable.
    #[arg(long = "host", value_name = "NAME=VALUE")]
    pub hosts: Vec<String>,
    /// Port forward from the host into the guest (repeatable), as `limanet usernet --forward`:
    /// `tcp|udp:[HOSTADDR:]HOSTPORT:[GUESTADDR:]GUESTPORT` (host address 127.0.0.1 unless
    /// given). On a user-v2 eth0 it is exposed through the network's API once the guest has
    /// its lease.
    #[arg(long = "forward", value_name = "SPEC")]
    pub forwards: Vec<String>,
    /// Forward 127.0.0.1:PORT to the guest's SSH port 22 (Lima's `ssh.localPort`).
    #[arg(long = "ssh-port", value_name = "PORT")]
    pub ssh_port: Option<u16>,
    /// Stay attached: QEMU uses this terminal, and `limanet start` returns QEMU's exit code.
    #[arg(long)]
    pub foreground: bool,
    /// Attach eth0 to the instance's own network over vhost-user: QEMU shares the guest's RAM
    /// (a memfd backend of the `-m` size, added by limanet) and limanet serves its virtio-net
    /// queues directly, with offloads. Needs `-m SIZE`; not with a user-v2 eth0.
    #[arg(long = "vhost-user")]
    pub vhost_user: bool,
    /// Internal: run as the instance's background supervisor.
    #[arg(long, hide = true)]
    pub supervisor: bool,
    /// The QEMU command line, after `--`.
    #[arg(last = true, required = true, value_name = "QEMU-COMMAND")]
    pub qemu: Vec<String>,
}

impl StartArgs {
    fn options(self) -> StartOptions {
        StartOptions {
            name: self.name,
            networks: self.networks,
            dns: self.dns,
            hosts: self.hosts,
            forwards: self.forwards,
            ssh_port: self.ssh_port,
            foreground: self.foreground,
            vhost_user: self.vhost_user,
            qemu: self.qemu,
        }
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

/// Starts an instance.
pub fn start(args: StartArgs) -> anyhow::Result<u8> {
    if args.supervisor {
        return limanet_instance::run_supervisor(&args.options());
    }
    match limanet_instance::start(&args.options())? {
        Started::Running(state) => {
            print!("{}", limanet_instance::summary(&state));
            Ok(0)
        }
        Started::Exited(code) => Ok(code),
    }
}

/// Stops an instance.
pub fn stop(args: StopArgs) -> anyhow::Result<u8> {
    limanet_instance::stop(&args.name, Duration::from_secs(args.timeout))?;
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
    let rows: Vec<Row> = limanet_instance::list(&args.names)?
        .into_iter()
        .map(row)
        .collect();
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

fn row(listed: Listed) -> Row {
    let Listed {
        state,
        status,
        addresses,
    } = listed;
    let addresses = state
        .nics
        .iter()
        .zip(addresses)
        .map(|(nic, ip)| RowAddress {
            interface: nic.interface.clone(),
            mac: nic.mac.clone(),
            ip,
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
        networks: state
            .nics
            .iter()
            .map(limanet_instance::supervisor::describe)
            .collect(),
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
