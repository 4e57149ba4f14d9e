//! `limanet usernet`: serve a user-mode network to VMs and network namespaces.

use anyhow::{bail, Context, Result};
use limanet_netstack::{MacDisplay, NetConfig};
use limanet_runtime::{
    privileges, Command, Control, Exit, Forward, Listen, Network, Options, PacketPort, TapConfig,
};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4};
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::time::Duration;
use tracing::{info, warn};

/// Options that shape a user-mode network (shared by `usernet` and `run`).
#[derive(clap::Args, Debug, Clone)]
pub struct NetworkArgs {
    /// Address layout: Lima's default network, or a user-v2 network (gateway .2 also serving
    /// DNS, guests from .1). Default: `default`, or `user-v2` for `limanet usernet` with
    /// `-e/--endpoint` (as `limactl usernet`, which serves only user-v2).
    #[arg(long, value_enum)]
    pub mode: Option<Mode>,
    /// The subnet.
    #[arg(long, default_value = "192.168.5.0/24")]
    pub subnet: String,
    /// First address handed out by DHCP (default: .15, or .1 in user-v2 mode).
    #[arg(long)]
    pub dhcp_start: Option<Ipv4Addr>,
    /// Link MTU announced by DHCP and Router Advertisements, 576 to 65520 (at least 1280, IPv6's
    /// minimum, unless `--no-ipv6`).
    #[arg(long, default_value_t = 1500)]
    pub mtu: u16,
    /// The network's IPv6 /64 prefix (default: a ULA derived from the IPv4 subnet, e.g.
    /// fd00:192:168:5::/64 for 192.168.5.0/24; gateway ::2, DNS ::3).
    #[arg(long, value_name = "PREFIX/64", conflicts_with = "no_ipv6")]
    pub subnet6: Option<String>,
    /// IPv4 only: no IPv6 prefix, Router Advertisements, DHCPv6 or IPv6 translation.
    #[arg(long)]
    pub no_ipv6: bool,
    /// Static DHCP lease (repeatable).
    #[arg(long = "lease", value_name = "IP=MAC")]
    pub leases: Vec<String>,
    /// Static DHCP leases, comma separated (Lima's `limactl usernet --leases` form).
    #[arg(long = "leases", value_name = "IP=MAC,...", value_delimiter = ',')]
    pub leases_list: Vec<String>,
    /// Port forward from the host into the guest (repeatable), like QEMU's hostfwd:
    /// `tcp|udp:[HOSTADDR:]HOSTPORT:[GUESTADDR:]GUESTPORT`, IPv6 addresses in brackets
    /// (`tcp:[::1]:8080:80`). Binds 127.0.0.1 unless an address is given; the guest address
    /// defaults to the first DHCP address (its IPv6 address when the host side is IPv6).
    #[arg(long = "forward", value_name = "SPEC")]
    pub forwards: Vec<Forward>,
    /// Do not map the gateway address to the host's 127.0.0.1.
    #[arg(long)]
    pub no_host_loopback: bool,
    /// TCP connections one guest may hold at once. By default a guest may fill at most half of
    /// the flow table (sized to the open-file limit), leaving the rest to the others; a number
    /// given here replaces that share, bounded by the table alone.
    #[arg(long, value_name = "N")]
    pub max_flows_per_guest: Option<usize>,
    /// Instance name: `lima-<NAME>` resolves to the first guest address, and DHCP hands out
    /// the host name `lima-<NAME>`.
    #[arg(long)]
    pub instance: Option<String>,
    /// Static DNS entry, NAME=IP or NAME=OTHER-NAME (repeatable).
    #[arg(long = "host", value_name = "NAME=VALUE")]
    pub hosts: Vec<String>,
    /// DNS servers announced by DHCP instead of the embedded DNS (repeatable).
    #[arg(long = "dhcp-dns", value_name = "IP")]
    pub dhcp_dns: Vec<Ipv4Addr>,
    /// Upstream DNS servers for forwarded queries (default: resolv.conf's nameservers).
    #[arg(long = "dns-upstream", value_name = "IP[:PORT]")]
    pub dns_upstreams: Vec<String>,
    /// resolv.conf to read upstream servers and search domains from.
    #[arg(long, default_value = "/etc/resolv.conf")]
    pub resolv_conf: PathBuf,
    /// When resolv.conf names no server, answer forwarded queries with SERVFAIL instead of
    /// sending them to 8.8.8.8 and 1.1.1.1 (Lima's fallback).
    #[arg(long)]
    pub no_fallback_dns: bool,
    /// Answer AAAA queries in the embedded DNS (the default when the network has IPv6).
    #[arg(long)]
    pub dns_ipv6: bool,
    /// Do not run the embedded DNS server.
    #[arg(long)]
    pub no_dns: bool,
    /// Let the host ask the embedded DNS too (e.g. for `lima-<NAME>.internal` through a
    /// systemd-resolved drop-in): listen on this address, UDP and TCP, instead of a free
    /// loopback port.
    #[arg(long = "dns-listen", value_name = "IP:PORT")]
    pub dns_listen: Option<SocketAddr>,
    /// Write every frame to this pcap file.
    #[arg(long)]
    pub pcap: Option<PathBuf>,
    /// Keep polling for up to this many microseconds after traffic before sleeping: lower
    /// request/response latency at the price of CPU time. Adaptive (idle networks and bulk
    /// transfers do not poll); 0 turns it off.
    #[arg(long, value_name = "USEC", default_value_t = 100, value_parser = clap::value_parser!(u64).range(0..=1_000_000))]
    pub busy_poll: u64,
    /// Open namespace TAPs without the virtio-net header and offloads: every frame is then
    /// MTU-sized and fully checksummed both ways (slower; for debugging and comparison).
    #[arg(long, env = "LIMANET_NO_OFFLOAD")]
    pub no_offload: bool,
    /// Do not confine the daemon after setup (by default: Landlock read-only filesystem where
    /// the kernel has it, and a seccomp allow-list of system calls).
    #[arg(long)]
    pub no_sandbox: bool,
}

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Default,
    #[value(name = "user-v2")]
    UserV2,
}

/// `limanet usernet` arguments.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub net: NetworkArgs,
    /// Serve QEMU `-netdev stream`/`-netdev socket` clients on this unix socket (repeatable).
    #[arg(long = "listen-qemu", value_name = "PATH")]
    pub listen_qemu: Vec<PathBuf>,
    /// Serve QEMU `-netdev dgram` and vfkit clients on this unix datagram socket (repeatable).
    #[arg(long = "listen-dgram", value_name = "PATH")]
    pub listen_dgram: Vec<PathBuf>,
    /// Serve a QEMU vhost-user-net client on this unix socket (repeatable; one QEMU at a time
    /// per socket, again after it exits). QEMU needs shared guest memory:
    /// `-object memory-backend-memfd,id=mem,size=<RAM>,share=on -machine memory-backend=mem`.
    #[arg(long = "listen-vhost-user", value_name = "PATH")]
    pub listen_vhost_user: Vec<PathBuf>,
    /// Serve Lima's fd-passing clients on this unix socket (repeatable).
    #[arg(long = "listen-fd", alias = "listen", value_name = "PATH")]
    pub listen_fd: Vec<PathBuf>,
    /// Attach a network namespace (path or PID) through a TAP device inside it (repeatable).
    #[arg(long, value_name = "PATH|PID")]
    pub netns: Vec<String>,
    /// Name of the TAP device created in each namespace.
    #[arg(long, default_value = "tap0")]
    pub tap_name: String,
    /// Leave the TAP device unconfigured (the guest runs its own DHCP client).
    #[arg(long)]
    pub no_configure: bool,
    /// Write the daemon's PID here once every socket listens; removed on exit.
    #[arg(long, short = 'p')]
    pub pidfile: Option<PathBuf>,
    /// Serve the gvproxy-compatible HTTP API (forwards, leases, DNS zones, wait_port, stats)
    /// on this unix socket (mode 0600).
    #[arg(long, short = 'e')]
    pub endpoint: Option<PathBuf>,
    /// Let this group (name or number) use the API socket too: mode 0660 instead of 0600.
    #[arg(long, value_name = "GROUP", requires = "endpoint")]
    pub endpoint_group: Option<String>,
}

/// A parsed `--subnet`.
pub fn parse_subnet(s: &str) -> Result<(Ipv4Addr, u8)> {
    let (ip, prefix) = s
        .split_once('/')
        .with_context(|| format!("invalid subnet {s:?}: expected ADDRESS/PREFIX"))?;
    let ip: Ipv4Addr = ip
        .parse()
        .with_context(|| format!("invalid subnet address in {s:?}"))?;
    let prefix: u8 = prefix
        .parse()
        .with_context(|| format!("invalid prefix length in {s:?}"))?;
    Ok((ip, prefix))
}

/// Parses `--subnet6`: an IPv6 prefix of length 64 (SLAAC needs /64).
pub fn parse_subnet6(s: &str) -> Result<std::net::Ipv6Addr> {
    let (ip, len) = s
        .split_once('/')
        .with_context(|| format!("invalid --subnet6 {s:?}: expected PREFIX/64"))?;
    let ip: std::net::Ipv6Addr = ip
        .parse()
        .with_context(|| format!("invalid --subnet6 {s:?}: not an IPv6 address"))?;
    if len != "64" {
        bail!("invalid --subnet6 {s:?}: the prefix length must be 64 (SLAAC needs /64)");
    }
    if u128::from(ip) & u128::from(u64::MAX) != 0 {
        bail!("invalid --subnet6 {s:?}: host bits are set");
    }
    Ok(ip)
}

/// Parses `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(s: &str) -> Result<[u8; 6]> {
    let parts: Vec<&str> = s.split(':').collect();
    if parts.len() != 6 {
        bail!("invalid MAC address {s:?}");
    }
    let mut mac = [0u8; 6];
    for (byte, part) in mac.iter_mut().zip(parts) {
        *byte =
            u8::from_str_radix(part, 16).with_context(|| format!("invalid MAC address {s:?}"))?;
    }
    Ok(mac)
}

fn parse_upstream(s: &str) -> Result<SocketAddr> {
    if let Ok(sa) = s.parse::<SocketAddr>() {
        return Ok(sa);
    }
    let ip: IpAddr = s
        .parse()
        .with_context(|| format!("invalid DNS upstream {s:?}: expected IP[:PORT]"))?;
    Ok(SocketAddr::new(ip, 53))
}

impl NetworkArgs {
    /// The `--busy-poll` bound.
    pub fn busy_poll(&self) -> Duration {
        Duration::from_micros(self.busy_poll)
    }

    /// The netstack configuration these options describe.
    pub fn net_config(&self) -> Result<NetConfig> {
        let (network, prefix) = parse_subnet(&self.subnet)?;
        let mut cfg = match self.mode.unwrap_or(Mode::Default) {
            Mode::Default => NetConfig::for_subnet(network, prefix),
            Mode::UserV2 => NetConfig::user_v2(network, prefix),
        };
        if let Some(start) = self.dhcp_start {
            cfg.dhcp_start = start;
        }
        cfg.mtu = self.mtu;
        cfg.host_loopback = !self.no_host_loopback;
        if self.no_ipv6 {
            cfg.ipv6 = None;
        } else if let Some(prefix) = &self.subnet6 {
            let v6 = parse_subnet6(prefix)?;
            let user_v2_dns = cfg
                .ipv6
                .as_ref()
                .is_some_and(|d| d.dns_addrs == [d.gateway]);
            let mut net = limanet_netstack::config::Ipv6Net::for_prefix(v6);
            if user_v2_dns {
                net.dns_addrs = vec![net.gateway];
            }
            cfg.ipv6 = Some(net);
        }
        if let Some(n) = self.max_flows_per_guest {
            cfg.max_tcp_flows_per_port = n.max(1);
            cfg.max_tcp_table_percent_per_port = 100;
        }
        for lease in self.leases.iter().chain(&self.leases_list) {
            let (ip, mac) = lease
                .split_once('=')
                .with_context(|| format!("invalid lease {lease:?}: expected IP=MAC"))?;
            let ip: Ipv4Addr = ip
                .parse()
                .with_context(|| format!("invalid address in lease {lease:?}"))?;
            cfg.static_leases.push((ip, parse_mac(mac)?));
        }
        // Lima's user-v2 lease files include the gateway itself: not a guest. A saved lease
        // can also come from an older subnet: Lima drops those silently, we say so.
        let gateway = cfg.gateway;
        let shape = cfg.clone();
        cfg.static_leases.retain(|(ip, mac)| {
            if *ip == gateway {
                return false;
            }
            let usable = shape.contains(*ip)
                && *ip != shape.network
                && *ip != shape.broadcast()
                && !shape.is_local(*ip);
            if !usable {
                warn!(%ip, mac = %MacDisplay(*mac), subnet = %format!("{}/{}", shape.network, shape.prefix_len), "dropping a static lease that is not a guest address of this network");
            }
            usable
        });
        if !self.dhcp_dns.is_empty() {
            cfg.dhcp_dns = self.dhcp_dns.clone();
        }
        if let Some(name) = &self.instance {
            cfg.hostname = Some(limanet_dns::instance_host_name(name));
        }
        match std::fs::read_to_string(&self.resolv_conf) {
            Ok(text) => cfg.search_domains = limanet_config::usernet::search_domains(&text),
            Err(e) => {
                warn!(path = %self.resolv_conf.display(), error = %e, "cannot read resolv.conf for search domains")
            }
        }
        cfg.seed = seed();
        cfg.validate().context("invalid network options")?;
        Ok(cfg)
    }

    /// Starts the embedded DNS server (unless disabled), with Lima's static names; guest names
    /// get AAAA records from what `net` learns of its guests' IPv6 addresses.
    pub fn start_dns(
        &self,
        cfg: &NetConfig,
        net: &mut Network,
    ) -> Result<Option<limanet_dns::BackgroundDns>> {
        let control = net
            .control()
            .context("cannot open the network's control channel")?;
        self.start_dns_with_zones(cfg, limanet_dns::ZonesHandle::default(), Some(control))
    }

    /// [`NetworkArgs::start_dns`], also answering from run-time `zones` (the API's `dns/add`),
    /// and asking the network through `control` for its guests' IPv6 addresses.
    pub fn start_dns_with_zones(
        &self,
        cfg: &NetConfig,
        zones: limanet_dns::ZonesHandle,
        control: Option<Control>,
    ) -> Result<Option<limanet_dns::BackgroundDns>> {
        if self.no_dns {
            return Ok(None);
        }
        let mut user_hosts = Vec::new();
        for h in &self.hosts {
            let (name, value) = h
                .split_once('=')
                .with_context(|| format!("invalid --host {h:?}: expected NAME=VALUE"))?;
            user_hosts.push((name.to_string(), value.to_string()));
        }
        let first_guest = cfg
            .static_leases
            .first()
            .map(|(ip, _)| *ip)
            .unwrap_or(cfg.dhcp_start);
        let instance = self
            .instance
            .as_deref()
            .map(|n| (n, IpAddr::V4(first_guest)));
        let mut hosts = match (self.mode.unwrap_or(Mode::Default), instance) {
            // user-v2 names instances `lima-<NAME>.internal`, as Lima's usernet client does.
            (Mode::UserV2, Some((name, ip))) => {
                let mut hosts = limanet_dns::lima_hosts(&user_hosts, IpAddr::V4(cfg.gateway), None);
                hosts.push((
                    format!("{}.internal", limanet_dns::instance_host_name(name)),
                    ip.to_string(),
                ));
                hosts
            }
            _ => limanet_dns::lima_hosts(&user_hosts, IpAddr::V4(cfg.gateway), instance),
        };
        // host.lima.internal is dual stack: its AAAA is the gateway's IPv6 address.
        if let Some(v6) = &cfg.ipv6 {
            hosts.push((
                limanet_dns::HOST_LIMA_INTERNAL.to_string(),
                v6.gateway.to_string(),
            ));
        }
        let upstreams = self
            .dns_upstreams
            .iter()
            .map(|u| parse_upstream(u))
            .collect::<Result<Vec<_>>>()?;
        let (listen, port) = match self.dns_listen {
            Some(addr) => (addr.ip(), addr.port()),
            None => (IpAddr::V4(Ipv4Addr::LOCALHOST), 0),
        };
        let dns = limanet_dns::spawn_background(limanet_dns::DnsConfig {
            listen,
            udp_port: port,
            tcp_port: port,
            hosts,
            ipv6: self.dns_ipv6 || cfg.ipv6.is_some(),
            upstreams,
            resolv_conf: self.resolv_conf.clone(),
            fallback_servers: !self.no_fallback_dns,
            zones,
            guest_ipv6: control.filter(|_| cfg.ipv6.is_some()).map(|control| {
                limanet_dns::GuestIpv6Source(std::sync::Arc::new(NetworkGuests(control)))
            }),
            ..Default::default()
        })
        .context("cannot start the embedded DNS server")?;
        Ok(Some(dns))
    }
}

/// Guests' IPv6 addresses as the running network has learned them (for the DNS's AAAA records
/// of guest names).
struct NetworkGuests(Control);

/// How long a DNS query waits for the network's answer before going without the AAAA record.
const GUEST_IPV6_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(500);

impl limanet_dns::GuestIpv6 for NetworkGuests {
    fn ipv6_of(&self, ip: Ipv4Addr) -> limanet_dns::handler::BoxFuture<'_, Option<Ipv6Addr>> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let sent = self.0.send(Command::GuestIpv6 {
            ip,
            reply: Box::new(move |found| {
                let _ = tx.send(found);
            }),
        });
        Box::pin(async move {
            sent.ok()?;
            tokio::time::timeout(GUEST_IPV6_TIMEOUT, rx)
                .await
                .ok()?
                .ok()
                .flatten()
        })
    }
}

fn v4(addr: SocketAddr) -> Result<SocketAddrV4> {
    match addr {
        SocketAddr::V4(a) => Ok(a),
        SocketAddr::V6(a) => bail!("DNS server bound to IPv6 address {a}"),
    }
}

/// Wires a started DNS server into the network.
pub fn attach_dns(net: &mut Network, dns: &Option<limanet_dns::BackgroundDns>) -> Result<()> {
    if let Some(dns) = dns {
        net.set_dns_server(v4(dns.udp_addr())?, v4(dns.tcp_addr())?);
        info!(udp = %dns.udp_addr(), tcp = %dns.tcp_addr(), "embedded DNS server listening");
    }
    Ok(())
}

/// Seed for sequence numbers: differs per run.
fn seed() -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    t.as_nanos() as u64 ^ (u64::from(std::process::id()) << 32)
}

/// Blocks SIGINT and SIGTERM in this thread (and threads it starts later) and returns a
/// signalfd that becomes readable when one arrives, so the event loop can shut down cleanly.
pub fn termination_signals() -> Result<OwnedFd> {
    privileges::signal_fd(&[libc::SIGINT, libc::SIGTERM]).context("termination signals")
}

/// Once namespaces, TAP devices and listening sockets exist, root's powers are no longer needed:
/// drop every capability but `CAP_NET_RAW` (raw ICMP sockets, where unprivileged ping sockets
/// are refused) and forbid regaining any. Called before other threads start, so all inherit it.
/// A no-op for unprivileged users, who have no capabilities to drop.
pub fn drop_privileges() -> Result<()> {
    // SAFETY: prctl with integer arguments.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(std::io::Error::last_os_error()).context("PR_SET_NO_NEW_PRIVS");
    }
    if unsafe { libc::geteuid() } != 0 {
        return Ok(());
    }
    let net_raw = [privileges::CAP_NET_RAW];
    privileges::keep_only_capabilities(&net_raw, &net_raw)?;
    info!("dropped all capabilities but CAP_NET_RAW");
    Ok(())
}

impl NetworkArgs {
    /// Confines the filesystem of this thread and of the threads it starts later (so call it
    /// before the DNS server starts): read-only, nothing executed, and only entries of
    /// `cleanup_dirs` (our sockets' and pid file's directories) created or removed.
    pub fn confine_filesystem(&self, cleanup_dirs: Vec<PathBuf>) -> Result<()> {
        if self.no_sandbox {
            warn!("--no-sandbox: the data plane is not confined");
            return Ok(());
        }
        limanet_runtime::sandbox::confine_filesystem(&cleanup_dirs)?;
        Ok(())
    }

    /// Installs the seccomp allow-list on every thread, once setup is complete.
    pub fn confine_syscalls(&self) -> Result<()> {
        if !self.no_sandbox {
            limanet_runtime::sandbox::confine_syscalls(
                limanet_runtime::sandbox::PassedTaps::Refused,
            )?;
        }
        Ok(())
    }
}

/// The directories of `paths` (where limanet removes its own files on exit).
pub fn parent_dirs<'a>(paths: impl IntoIterator<Item = &'a std::path::Path>) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = Vec::new();
    for p in paths {
        let dir = match p.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        if !dirs.contains(&dir) {
            dirs.push(dir);
        }
    }
    dirs
}

/// Where `limanet usernet` listens when no transport is given: `default_qemu.sock` in
/// `$XDG_RUNTIME_DIR/limanet`, `/run/limanet` for root, else `$TMPDIR/limanet`. The directory
/// is created 0700 and refused if another user could have prepared it (see
/// [`limanet_runtime::files::private_dir`]).
fn default_socket() -> Result<PathBuf> {
    let base = std::env::var_os("XDG_RUNTIME_DIR")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            // SAFETY: geteuid cannot fail.
            if unsafe { libc::geteuid() } == 0 {
                PathBuf::from("/run")
            } else {
                std::env::temp_dir()
            }
        });
    let dir = base.join("limanet");
    limanet_runtime::files::private_dir(&dir)?;
    Ok(dir.join("default_qemu.sock"))
}

/// Runs the subcommand.
pub fn run(mut args: Args) -> Result<u8> {
    if args.endpoint.is_some() {
        args.net.mode.get_or_insert(Mode::UserV2);
    }
    let cfg = args.net.net_config()?;
    let no_transport = args.listen_qemu.is_empty()
        && args.listen_dgram.is_empty()
        && args.listen_fd.is_empty()
        && args.listen_vhost_user.is_empty()
        && args.netns.is_empty();
    if no_transport {
        args.listen_qemu.push(default_socket()?);
    }
    let mut listen = Vec::new();
    listen.extend(args.listen_qemu.iter().cloned().map(Listen::Qemu));
    listen.extend(args.listen_dgram.iter().cloned().map(Listen::Dgram));
    listen.extend(args.listen_fd.iter().cloned().map(Listen::Fd));
    listen.extend(
        args.listen_vhost_user
            .iter()
            .cloned()
            .map(Listen::VhostUser),
    );

    let mut cfg = cfg;
    let packet_ports = attach_namespaces(
        &mut cfg,
        &args.netns,
        &args.tap_name,
        !args.no_configure,
        !args.net.no_offload,
    )?;

    let signals = termination_signals()?;
    let opts = Options {
        listen: listen.clone(),
        packet_ports,
        forwards: args.net.forwards.clone(),
        pcap: args.net.pcap.clone(),
        stop_fds: vec![signals],
        persistent: true,
        busy_poll: args.net.busy_poll(),
    };
    let ipv6 = match &cfg.ipv6 {
        Some(v6) => format!(
            "; IPv6 {}/64 gateway {} dns {:?} (SLAAC)",
            v6.prefix, v6.gateway, v6.dns_addrs
        ),
        None => "; IPv6 off".to_string(),
    };
    let summary = format!(
        "subnet {}/{} gateway {} ({}) dns {:?} first guest {} mtu {}{ipv6}",
        cfg.network,
        cfg.prefix_len,
        cfg.gateway,
        MacDisplay(cfg.gateway_mac),
        cfg.dns_addrs,
        cfg.dhcp_start,
        cfg.mtu
    );
    let mut net = Network::new(cfg.clone(), opts)?;
    let zones = limanet_dns::ZonesHandle::default();
    // Bound before privileges go, so its mode and owner are settled by then; served only after,
    // so the API thread runs with no more powers than the data plane.
    let group = args.endpoint_group.as_deref().map(group_id).transpose()?;
    let api = args
        .endpoint
        .as_ref()
        .map(|path| {
            limanet_api::bind(&limanet_api::ApiConfig {
                path: path.clone(),
                group,
            })
        })
        .transpose()
        .context("cannot serve the HTTP API")?;
    drop_privileges()?;
    args.net.confine_filesystem(parent_dirs(
        listen
            .iter()
            .map(Listen::path)
            .chain(args.pidfile.as_deref())
            .chain(args.endpoint.as_deref()),
    ))?;
    // One control channel for the API and the DNS (a second one would replace the first).
    let control = net
        .control()
        .context("cannot open the network's control channel")?;
    let _api = match api {
        Some(api) => Some(serve_api(control.clone(), &cfg, api, zones.clone())?),
        None => None,
    };
    let dns = args.net.start_dns_with_zones(&cfg, zones, Some(control))?;
    attach_dns(&mut net, &dns)?;
    let _pidfile = args
        .pidfile
        .as_deref()
        .map(limanet_runtime::PidFile::create)
        .transpose()?;
    args.net.confine_syscalls()?;
    info!("user-mode network ready: {summary}");
    for l in &listen {
        match l {
            Listen::Qemu(p) => info!(
                "QEMU: -netdev stream,id=net0,server=off,addr.type=unix,addr.path={} -device virtio-net-pci,netdev=net0",
                p.display()
            ),
            Listen::VhostUser(p) => info!(
                "QEMU: -object memory-backend-memfd,id=mem,size=<RAM>,share=on -machine memory-backend=mem -chardev socket,id=c0,path={} -netdev vhost-user,id=net0,chardev=c0 -device virtio-net-pci,netdev=net0",
                p.display()
            ),
            _ => {}
        }
    }
    match net.run()? {
        Exit::Stop(_) => info!("termination signal received, shutting down"),
        Exit::PortsGone => info!("last guest disconnected"),
    }
    Ok(0)
}

/// Serves the bound API socket of a user-v2 network.
pub fn serve_api(
    control: Control,
    cfg: &NetConfig,
    api: limanet_api::BoundApi,
    zones: limanet_dns::ZonesHandle,
) -> Result<limanet_api::ApiServer> {
    let ctx = limanet_api::Context {
        control,
        zones,
        network: cfg.network,
        prefix_len: cfg.prefix_len,
        prefix6: cfg.ipv6.as_ref().map(|v6| v6.prefix),
    };
    api.serve(ctx).context("cannot serve the HTTP API")
}

/// A group given by number or by name.
fn group_id(group: &str) -> Result<u32> {
    if let Ok(gid) = group.parse::<u32>() {
        return Ok(gid);
    }
    let name = std::ffi::CString::new(group).context("group name with a NUL byte")?;
    let mut entry: libc::group = unsafe { std::mem::zeroed() };
    let mut buf = vec![0 as libc::c_char; 16384];
    let mut found: *mut libc::group = std::ptr::null_mut();
    // SAFETY: getgrnam_r with valid pointers; `entry` points into `buf` only while it lives.
    let rc = unsafe {
        libc::getgrnam_r(
            name.as_ptr(),
            &mut entry,
            buf.as_mut_ptr(),
            buf.len(),
            &mut found,
        )
    };
    if rc != 0 || found.is_null() {
        bail!("unknown group {group:?}");
    }
    Ok(entry.gr_gid)
}

/// Creates a TAP device in each namespace. Configured namespaces get consecutive addresses from
/// the DHCP start, each reserved for its TAP's MAC by a static lease so DHCP never hands it out
/// again. With `offload`, the TAPs carry a virtio-net header and checksum/TSO offloads.
pub fn attach_namespaces(
    cfg: &mut NetConfig,
    namespaces: &[String],
    tap_name: &str,
    configure: bool,
    offload: bool,
) -> Result<Vec<PacketPort>> {
    let mut ports = Vec::new();
    let mut next = u32::from(cfg.dhcp_start);
    for ns in namespaces {
        // user-v2 guests start below the gateway: skip the gateway's own addresses and
        // addresses already leased.
        while cfg.is_local(Ipv4Addr::from(next))
            || cfg
                .static_leases
                .iter()
                .any(|(ip, _)| u32::from(*ip) == next)
        {
            next += 1;
        }
        let address = Ipv4Addr::from(next);
        next += 1;
        if configure && !cfg.contains(address) {
            bail!(
                "no address left in {}/{} for namespace {ns}",
                cfg.network,
                cfg.prefix_len
            );
        }
        let address6 = cfg
            .ipv6
            .as_ref()
            .filter(|_| configure)
            .map(|v6| v6.mirror_of(address));
        let tap_cfg = TapConfig {
            name: tap_name.to_string(),
            mtu: cfg.mtu,
            address: configure.then_some((address, cfg.prefix_len, cfg.gateway)),
            address6,
            offload,
            mac: None,
        };
        let file = limanet_runtime::open_netns(ns)?;
        let tap = limanet_runtime::create_tap_in(&file, &tap_cfg)
            .with_context(|| format!("cannot set up {tap_name} in network namespace {ns}"))?;
        let offloads = format!("{:#x}", tap.offloads);
        if configure {
            cfg.static_leases.push((address, tap.mac));
            if let (Some(v6), Some(a6)) = (cfg.ipv6.as_mut(), address6) {
                v6.static_guests.push((address, a6));
            }
            info!(netns = %ns, tap = %tap_name, %address, address6 = ?address6, mac = %MacDisplay(tap.mac), %offloads, "attached network namespace");
        } else {
            info!(netns = %ns, tap = %tap_name, mac = %MacDisplay(tap.mac), %offloads, "attached network namespace (unconfigured)");
        }
        ports.push(PacketPort {
            fd: tap.fd,
            name: format!("netns:{ns}"),
            vnet_hdr: tap.vnet_hdr,
        });
    }
    Ok(ports)
}
