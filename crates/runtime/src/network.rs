//! The data plane of one user-mode network: a single-threaded mio loop that moves frames
//! between ports and the netstack, and drives the host sockets. While traffic is dense it polls
//! briefly before sleeping ([`crate::busy_poll`]).

mod control;

pub use control::{Command, Control, ControlClosed, NetworkStats, PortCounters, PortStats, Reply};

use crate::busy_poll::PollWindow;
use crate::files;
use crate::pcap::Pcap;
use crate::sockets::{ForwardGuest, HostSockets, Kind};
use crate::sys;
use crate::transport::{Io, Port, PortError, QueueBudget, ReadStatus, MAX_OFFLOAD_READ};
use crate::vhost;
use limanet_netstack::{NetConfig, PortId, Stack, StackError};
use mio::event::Event;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::{UnixDatagram, UnixListener};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::{debug, error, info, warn};

/// Host sockets use tokens below this; runtime sources use `SOURCE_BASE + index`.
const SOURCE_BASE: usize = 1 << 30;
/// Peers of one datagram listener.
const MAX_DGRAM_PEERS: usize = 256;
/// Largest UDP datagram or ICMP message read from the host.
const HOST_BUFFER: usize = 65536;

/// A frame transport to listen on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listen {
    /// QEMU `-netdev stream` / `-netdev socket` (4-byte big-endian length + frame).
    Qemu(PathBuf),
    /// QEMU `-netdev dgram`, vfkit: one frame per datagram on a bound unix datagram socket.
    Dgram(PathBuf),
    /// Lima's fd socket: each connection passes one datagram socket with `SCM_RIGHTS`.
    Fd(PathBuf),
    /// QEMU `-netdev vhost-user` (see [`crate::vhost`]): one QEMU at a time, again after it
    /// goes away.
    VhostUser(PathBuf),
}

impl Listen {
    pub fn path(&self) -> &Path {
        match self {
            Listen::Qemu(p) | Listen::Dgram(p) | Listen::Fd(p) | Listen::VhostUser(p) => p,
        }
    }
}

/// A port forward from the host into a guest, like QEMU's `hostfwd`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Forward {
    pub udp: bool,
    /// Where it listens on the host, IPv4 or IPv6.
    pub host: SocketAddr,
    /// Guest address; `None` means the network's first DHCP address, reached over IPv4 when
    /// the host side is IPv4 and over the guest's IPv6 address when it is IPv6.
    pub guest: Option<IpAddr>,
    pub guest_port: u16,
}

/// Splits a forward spec at its colons, keeping `[IPv6]` addresses (which contain colons)
/// whole and unbracketed.
fn spec_fields(s: &str) -> Option<Vec<&str>> {
    let mut fields = Vec::new();
    let mut rest = s;
    loop {
        if let Some(inner) = rest.strip_prefix('[') {
            let end = inner.find(']')?;
            fields.push(&inner[..end]);
            rest = &inner[end + 1..];
            if rest.is_empty() {
                return Some(fields);
            }
            rest = rest.strip_prefix(':')?;
        } else {
            match rest.split_once(':') {
                Some((field, more)) => {
                    fields.push(field);
                    rest = more;
                }
                None => {
                    fields.push(rest);
                    return Some(fields);
                }
            }
        }
    }
}

impl FromStr for Forward {
    type Err = String;

    /// `tcp|udp:[HOSTADDR:]HOSTPORT:[GUESTADDR:]GUESTPORT`, IPv6 addresses in brackets
    /// (`tcp:[::1]:8080:80`); the host address defaults to 127.0.0.1, so nothing listens
    /// beyond loopback unless asked.
    fn from_str(s: &str) -> Result<Self, String> {
        let usage = || {
            format!(
                "invalid forward {s:?}: expected tcp|udp:[HOSTADDR:]HOSTPORT:[GUESTADDR:]GUESTPORT"
            )
        };
        let (proto, rest) = s.split_once(':').ok_or_else(usage)?;
        let udp = match proto {
            "tcp" => false,
            "udp" => true,
            _ => return Err(usage()),
        };
        let parts = spec_fields(rest).ok_or_else(usage)?;
        let port = |p: &str| {
            p.parse::<u16>()
                .map_err(|_| format!("invalid port {p:?} in forward {s:?}"))
        };
        let addr = |a: &str| {
            a.parse::<IpAddr>()
                .map_err(|_| format!("invalid IP address {a:?} in forward {s:?}"))
        };
        let localhost = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let (host_ip, host_port, guest, guest_port) = match parts.as_slice() {
            [hp, gp] => (localhost, port(hp)?, None, port(gp)?),
            [ha, hp, gp] => (addr(ha)?, port(hp)?, None, port(gp)?),
            [ha, hp, ga, gp] => {
                let ha = if ha.is_empty() { localhost } else { addr(ha)? };
                (ha, port(hp)?, Some(addr(ga)?), port(gp)?)
            }
            _ => return Err(usage()),
        };
        if guest_port == 0 {
            return Err(format!("guest port 0 in forward {s:?}"));
        }
        Ok(Forward {
            udp,
            host: SocketAddr::new(host_ip, host_port),
            guest,
            guest_port,
        })
    }
}

impl fmt::Display for Forward {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let proto = if self.udp { "udp" } else { "tcp" };
        match self.guest {
            Some(g) => write!(
                f,
                "{proto}:{}:{}",
                self.host,
                SocketAddr::new(g, self.guest_port)
            ),
            None => write!(f, "{proto}:{}:{}", self.host, self.guest_port),
        }
    }
}

/// Why a network could not start.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error(transparent)]
    Stack(#[from] StackError),
    /// Not `#[source]`: the message already includes the cause, and error chains printed with
    /// `{:#}` would repeat it.
    #[error("{what}: {error}")]
    Io { what: String, error: io::Error },
    #[error(transparent)]
    File(#[from] files::FileError),
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> NetworkError {
    let what = what.into();
    move |error| NetworkError::Io { what, error }
}

/// An already-open TAP device (or connected datagram socket) to attach.
#[derive(Debug)]
pub struct PacketPort {
    pub fd: OwnedFd,
    /// For logs.
    pub name: String,
    /// A TAP opened with `IFF_VNET_HDR` (see [`crate::Tap`]): frames carry a virtio-net
    /// header, and the port gets offloads (partial checksums, TCP super-segments).
    pub vnet_hdr: bool,
}

/// What to attach at start.
#[derive(Debug, Default)]
pub struct Options {
    pub listen: Vec<Listen>,
    pub packet_ports: Vec<PacketPort>,
    pub forwards: Vec<Forward>,
    pub pcap: Option<PathBuf>,
    /// Descriptors that end the loop when they become readable (signalfd, pidfd).
    pub stop_fds: Vec<OwnedFd>,
    /// Keep running after the last packet port disconnects (false for `limanet run`-style
    /// single-guest networks).
    pub persistent: bool,
    /// Longest time to keep polling after events before sleeping (see [`PollWindow`]); zero
    /// never polls.
    pub busy_poll: Duration,
}

enum Source {
    Port {
        port: Port,
        id: PortId,
        counters: PortCounters,
    },
    StreamListener(UnixListener),
    FdListener(UnixListener),
    FdHandshake(std::os::unix::net::UnixStream),
    DgramListener {
        socket: Rc<UnixDatagram>,
        peers: HashMap<PathBuf, usize>,
        path: PathBuf,
    },
    Stop(OwnedFd),
    /// vhost-user connections announced by their listener threads.
    VhostListener(Arc<vhost::Incoming>),
}

/// Why [`Network::run`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Stop descriptor number `n` (in `Options::stop_fds` order) became readable.
    Stop(usize),
    /// The last port disconnected (non-persistent networks only).
    PortsGone,
}

/// A running user-mode network.
pub struct Network {
    poll: Poll,
    stack: Stack,
    host: HostSockets,
    sources: Vec<Option<Source>>,
    port_sources: HashMap<PortId, usize>,
    stop_fds: Vec<usize>,
    pending_reads: HashSet<usize>,
    poll_window: PollWindow,
    /// Bytes of frames received and sent in the current round of events.
    round_bytes: usize,
    /// Socket files this network bound; each is removed on drop only if still ours.
    socket_paths: Vec<files::BoundPath>,
    pcap: Option<Pcap>,
    max_frame: usize,
    scratch: Vec<u8>,
    persistent: bool,
    had_port: bool,
    unnamed_peer_warned: bool,
    /// Where forwards without a guest address go.
    first_guest: Ipv4Addr,
    control: control::ControlState,
    /// Output queued by all ports together (see [`QueueBudget`]).
    queue_budget: Rc<QueueBudget>,
}

impl Network {
    /// Builds the network and binds every listener. Socket files are created with mode 0600
    /// (owner only); a dead socket file is replaced, a live one (anyone listening) refused.
    pub fn new(mut cfg: NetConfig, opts: Options) -> Result<Self, NetworkError> {
        crate::limits::fit_flow_tables(&mut cfg, crate::limits::raise_nofile_limit());
        let max_frame = usize::from(cfg.mtu) + 14;
        let first_guest = cfg.dhcp_start;
        let stack = Stack::new(cfg)?;
        let poll = Poll::new().map_err(io_err("create poll"))?;
        let registry = poll
            .registry()
            .try_clone()
            .map_err(io_err("clone poll registry"))?;
        let mut host = HostSockets::new(registry, SOURCE_BASE);
        host.probe_peek_offset();
        let mut net = Network {
            poll,
            stack,
            host,
            sources: Vec::new(),
            port_sources: HashMap::new(),
            stop_fds: Vec::new(),
            pending_reads: HashSet::new(),
            poll_window: PollWindow::new(opts.busy_poll),
            round_bytes: 0,
            socket_paths: Vec::new(),
            pcap: None,
            max_frame,
            scratch: vec![0; HOST_BUFFER.max(max_frame).max(MAX_OFFLOAD_READ)],
            persistent: opts.persistent,
            had_port: false,
            unnamed_peer_warned: false,
            first_guest,
            control: control::ControlState::default(),
            queue_budget: QueueBudget::new(),
        };
        if let Some(path) = &opts.pcap {
            net.pcap = Some(
                Pcap::create(path, 65535)
                    .map_err(io_err(format!("create pcap file {}", path.display())))?,
            );
        }
        for fd in opts.stop_fds {
            let idx = net.add_source(Source::Stop(fd), Interest::READABLE)?;
            net.stop_fds.push(idx);
        }
        for listen in &opts.listen {
            net.listen(listen)?;
        }
        for p in opts.packet_ports {
            sys::set_nonblocking(p.fd.as_raw_fd()).map_err(io_err("set non-blocking"))?;
            net.add_port(Io::Packet(p.fd), p.name, p.vnet_hdr)?;
        }
        for fwd in &opts.forwards {
            net.expose(*fwd).map_err(|e| NetworkError::Io {
                what: format!("listen for forward {fwd}"),
                error: io::Error::other(e),
            })?;
        }
        Ok(net)
    }

    pub fn stack(&self) -> &Stack {
        &self.stack
    }

    /// Tells the netstack where the embedded DNS server listens.
    pub fn set_dns_server(&mut self, udp: SocketAddrV4, tcp: SocketAddrV4) {
        self.stack.set_dns_server(udp, tcp);
    }

    fn add_source(&mut self, source: Source, interest: Interest) -> Result<usize, NetworkError> {
        let idx = match self.sources.iter().position(Option::is_none) {
            Some(i) => i,
            None => {
                self.sources.push(None);
                self.sources.len() - 1
            }
        };
        let fd = match &source {
            Source::Port { port, .. } => port.raw_fd(),
            Source::StreamListener(l) | Source::FdListener(l) => l.as_raw_fd(),
            Source::FdHandshake(s) => s.as_raw_fd(),
            Source::DgramListener { socket, .. } => socket.as_raw_fd(),
            Source::Stop(fd) => fd.as_raw_fd(),
            Source::VhostListener(incoming) => incoming.fd(),
        };
        let shared =
            matches!(&source, Source::Port { port, .. } if matches!(port.io, Io::Peer { .. }));
        if !shared {
            self.poll
                .registry()
                .register(&mut SourceFd(&fd), Token(SOURCE_BASE + idx), interest)
                .map_err(io_err("register with poll"))?;
        }
        self.sources[idx] = Some(source);
        Ok(idx)
    }

    fn remove_source(&mut self, idx: usize) -> Option<Source> {
        let source = self.sources.get_mut(idx)?.take()?;
        let fd = match &source {
            Source::Port { port, .. } if matches!(port.io, Io::Peer { .. }) => None,
            Source::Port { port, .. } => Some(port.raw_fd()),
            Source::StreamListener(l) | Source::FdListener(l) => Some(l.as_raw_fd()),
            Source::FdHandshake(s) => Some(s.as_raw_fd()),
            Source::DgramListener { socket, .. } => Some(socket.as_raw_fd()),
            Source::Stop(fd) => Some(fd.as_raw_fd()),
            Source::VhostListener(incoming) => Some(incoming.fd()),
        };
        if let Some(fd) = fd {
            let _ = self.poll.registry().deregister(&mut SourceFd(&fd));
        }
        self.pending_reads.remove(&idx);
        Some(source)
    }

    fn add_port(&mut self, io: Io, name: String, vnet_hdr: bool) -> Result<usize, NetworkError> {
        let id = self.stack.add_port();
        info!(port = id, %name, offloads = vnet_hdr, "guest connected");
        // A vhost-user guest's offloads are known once its driver acks features.
        let offloads_now = vnet_hdr && !matches!(io, Io::Vhost(_));
        let mut port = Port::with_budget(io, name, Rc::clone(&self.queue_budget));
        if vnet_hdr {
            port.set_vnet_hdr();
            self.stack.set_port_offloads(id, offloads_now);
        }
        // A stream client may negotiate offloads with its first frame (`limanet attach`).
        port.offer_offloads();
        let idx = self.add_source(
            Source::Port {
                port,
                id,
                counters: PortCounters::default(),
            },
            Interest::READABLE | Interest::WRITABLE,
        )?;
        self.port_sources.insert(id, idx);
        self.had_port = true;
        // Data may already be waiting (edge-triggered: no event for it).
        self.pending_reads.insert(idx);
        Ok(idx)
    }

    fn remove_port(&mut self, idx: usize, reason: &str) {
        if let Some(Source::Port { mut port, id, .. }) = self.remove_source(idx) {
            info!(port = id, name = %port.name, reason, "guest disconnected");
            self.port_sources.remove(&id);
            self.stack.remove_port(&mut self.host, id);
            port.drain(|b| self.stack.out.recycle(b));
            if let Io::Peer { peer, .. } = &port.io {
                for source in self.sources.iter_mut().flatten() {
                    if let Source::DgramListener { peers, .. } = source {
                        peers.remove(peer);
                    }
                }
            }
        }
    }

    fn listen(&mut self, listen: &Listen) -> Result<(), NetworkError> {
        let path = listen.path().to_path_buf();
        // A live socket (another program, or another limanet) is refused; only a dead one is
        // replaced. Mode 0600 from the start.
        let what = || format!("listen on {}", path.display());
        let (source, bound) = match listen {
            Listen::Qemu(_) | Listen::Fd(_) => {
                let (l, bound) = files::bind_socket(&path, 0o600, None, |p| UnixListener::bind(p))?;
                l.set_nonblocking(true).map_err(io_err(what()))?;
                let source = if matches!(listen, Listen::Qemu(_)) {
                    Source::StreamListener(l)
                } else {
                    Source::FdListener(l)
                };
                (source, bound)
            }
            Listen::VhostUser(_) => {
                let (l, bound) = files::bind_socket(&path, 0o600, None, |p| UnixListener::bind(p))?;
                let incoming = vhost::Incoming::new().map_err(io_err(what()))?;
                vhost::spawn_listener(l, path.clone(), Arc::clone(&incoming))
                    .map_err(io_err(what()))?;
                (Source::VhostListener(incoming), bound)
            }
            Listen::Dgram(_) => {
                let (s, bound) = files::bind_socket(&path, 0o600, None, |p| UnixDatagram::bind(p))?;
                s.set_nonblocking(true).map_err(io_err(what()))?;
                // vfkit's recommendation: 1 MiB send, 4 MiB receive.
                sys::set_buffer_sizes(s.as_raw_fd(), 1 << 20, 4 << 20);
                let source = Source::DgramListener {
                    socket: Rc::new(s),
                    peers: HashMap::new(),
                    path: path.clone(),
                };
                (source, bound)
            }
        };
        let interest = match source {
            Source::DgramListener { .. } => Interest::READABLE | Interest::WRITABLE,
            _ => Interest::READABLE,
        };
        self.add_source(source, interest)?;
        self.socket_paths.push(bound);
        info!(listen = ?listen, "listening");
        Ok(())
    }

    /// Runs until a stop descriptor fires (or, for non-persistent networks, the last port goes).
    pub fn run(&mut self) -> Result<Exit, NetworkError> {
        let mut events = Events::with_capacity(1024);
        let mut last_stats = Instant::now();
        loop {
            let idle_since = Instant::now();
            let timeout = if self.pending_reads.is_empty() {
                let stack_due = self.stack.poll_timeout();
                let due = match (stack_due, self.control.next_deadline()) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
                due.map(|t| t.saturating_duration_since(idle_since))
                    .map(|d| d.min(Duration::from_secs(60)))
            } else {
                Some(Duration::ZERO)
            };
            self.host.recycle_ids();
            if let Err(e) = self.wait(&mut events, idle_since, timeout) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(NetworkError::Io {
                    what: "poll".into(),
                    error: e,
                });
            }
            let now = Instant::now();
            self.poll_window.waited(now.duration_since(idle_since));
            for event in events.iter() {
                let token = event.token().0;
                if event.token() == control::WAKER_TOKEN {
                    self.run_commands(now);
                } else if token < SOURCE_BASE {
                    self.host_event(now, token, event);
                } else if let Some(exit) = self.source_event(now, token - SOURCE_BASE, event) {
                    self.finish();
                    return Ok(exit);
                }
            }
            let pending: Vec<usize> = self.pending_reads.drain().collect();
            for idx in pending {
                self.read_port(now, idx);
            }
            if self.stack.poll_timeout().is_some_and(|t| t <= now) {
                self.stack.on_timeout(&mut self.host, now);
            }
            self.stack.end_batch(&mut self.host);
            self.host.flush_udp();
            self.check_probes(now);
            self.flush_output();
            self.poll_window
                .round_moved(std::mem::take(&mut self.round_bytes));
            if let Some(p) = &mut self.pcap {
                // Keep the capture readable while the network runs.
                if let Err(e) = p.flush() {
                    warn!(error = %e, "writing the pcap file failed; capture stopped");
                    self.pcap = None;
                }
            }
            if !self.persistent && self.had_port && self.port_sources.is_empty() {
                self.finish();
                return Ok(Exit::PortsGone);
            }
            if now.duration_since(last_stats) > Duration::from_secs(300) {
                last_stats = now;
                self.stack.log_stats();
            }
        }
    }

    /// Waits for events: polls without sleeping for the current busy-poll window, then sleeps
    /// for what is left of `timeout` (`None`: until an event).
    fn wait(
        &mut self,
        events: &mut Events,
        since: Instant,
        timeout: Option<Duration>,
    ) -> io::Result<()> {
        let window = self.poll_window.current();
        if !window.is_zero() && timeout.is_none_or(|t| t > window) {
            loop {
                self.poll.poll(events, Some(Duration::ZERO))?;
                if !events.is_empty() || since.elapsed() >= window {
                    break;
                }
                sys::yield_cpu();
            }
            if !events.is_empty() {
                return Ok(());
            }
        }
        let left = timeout.map(|t| t.saturating_sub(since.elapsed()));
        self.poll.poll(events, left)
    }

    fn finish(&mut self) {
        self.stack.log_stats();
        if let Some(p) = &mut self.pcap {
            if let Err(e) = p.flush() {
                warn!(error = %e, "writing the pcap file failed");
            }
        }
    }

    fn host_event(&mut self, now: Instant, id: usize, event: &Event) {
        let Some(entry) = self.host.get(id) else {
            return;
        };
        match entry.kind {
            Kind::Tcp {
                connecting: true, ..
            } => {
                if event.is_writable()
                    || event.is_error()
                    || event.is_write_closed()
                    || event.is_read_closed()
                {
                    let failure = event.is_error() || event.is_write_closed();
                    if let Some(result) = self.host.finish_connect(id, failure) {
                        let ok = result.is_ok();
                        self.stack.on_tcp_connected(&mut self.host, now, id, result);
                        if ok && event.is_readable() {
                            let closed = event.is_read_closed();
                            self.stack.on_tcp_readable(&mut self.host, now, id, closed);
                        }
                    }
                }
            }
            Kind::Tcp { .. } => {
                if event.is_error() && sys::take_socket_error(entry.fd.as_raw_fd()).is_err() {
                    self.stack.on_tcp_error(&mut self.host, id);
                    return;
                }
                if event.is_writable() {
                    self.stack.on_tcp_writable(&mut self.host, id);
                }
                if event.is_readable() || event.is_read_closed() {
                    let closed = event.is_read_closed();
                    self.stack.on_tcp_readable(&mut self.host, now, id, closed);
                }
            }
            Kind::Udp { .. } | Kind::Icmp { .. } | Kind::UdpForward { .. } => {
                self.drain_datagrams(now, id)
            }
            Kind::TcpForward { guest } => loop {
                let Some(entry) = self.host.get(id) else {
                    return;
                };
                match sys::accept(entry.fd.as_raw_fd()) {
                    Ok(fd) => match self.host.insert_tcp(fd, false) {
                        Ok(sock) => {
                            let Some(guest) = self.forward_target(guest) else {
                                warn!(?guest, "no IPv6 address of the forward's guest known yet, refusing connection");
                                limanet_netstack::Host::tcp_close(&mut self.host, sock, true);
                                continue;
                            };
                            if let Err(e) =
                                self.stack
                                    .open_tcp_forward(&mut self.host, now, sock, guest)
                            {
                                warn!(error = %e, %guest, "cannot forward connection");
                            }
                        }
                        Err(e) => warn!(error = %e, "cannot register forwarded connection"),
                    },
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                    Err(e) => {
                        warn!(error = %e, "accept on forward listener failed");
                        return;
                    }
                }
            },
        }
    }

    fn drain_datagrams(&mut self, now: Instant, id: usize) {
        loop {
            let Some(entry) = self.host.get(id) else {
                return;
            };
            let fd = entry.fd.as_raw_fd();
            let (n, from) = match sys::recv_from(fd, &mut self.scratch) {
                Ok(r) => r,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // ICMP errors queued on the socket (port unreachable...): skip them.
                    debug!(error = %e, "host socket receive error");
                    continue;
                }
            };
            let data = &self.scratch[..n];
            let Some(entry) = self.host.get(id) else {
                return;
            };
            match entry.kind {
                Kind::Udp { .. } => {
                    self.stack.on_udp_datagram(now, id, from, data);
                }
                Kind::Icmp { raw } => {
                    let message = if raw {
                        let ihl = data.first().map_or(0, |b| usize::from(b & 0x0f) * 4);
                        data.get(ihl..).unwrap_or_default()
                    } else {
                        data
                    };
                    self.stack.on_icmp_message(id, from.ip(), message);
                }
                Kind::UdpForward { guest } => {
                    let guest = match guest {
                        ForwardGuest::Addr(a) => Some(a),
                        ForwardGuest::Ipv6Of(v4) => self
                            .stack
                            .guest_ipv6_of(*v4.ip())
                            .map(|ip| SocketAddr::new(IpAddr::V6(ip), v4.port())),
                    };
                    let Some(guest) = guest else {
                        debug!(
                            "no IPv6 address of the forward's guest known yet, dropping datagram"
                        );
                        continue;
                    };
                    if let Err(e) = self.stack.udp_forward(now, id, from, guest, data) {
                        debug!(error = %e, "cannot forward datagram");
                    }
                }
                _ => return,
            }
        }
    }

    fn source_event(&mut self, now: Instant, idx: usize, event: &Event) -> Option<Exit> {
        let source = self.sources.get_mut(idx).and_then(Option::as_mut)?;
        match source {
            Source::Stop(_) => {
                let n = self.stop_fds.iter().position(|&i| i == idx).unwrap_or(0);
                return Some(Exit::Stop(n));
            }
            Source::Port { port, .. } => {
                // A vhost-user port's one eventfd also says "room for more output".
                if event.is_writable() || matches!(port.io, Io::Vhost(_)) {
                    self.flush_port(idx);
                }
                if event.is_readable() || event.is_read_closed() || event.is_error() {
                    self.read_port(now, idx);
                }
            }
            Source::VhostListener(incoming) => {
                for vhost in incoming.take() {
                    let name = vhost.name.clone();
                    if let Err(e) = self.add_port(Io::Vhost(vhost), name, true) {
                        warn!(error = %e, "cannot add port");
                    }
                }
            }
            Source::StreamListener(l) => {
                for stream in accept_all(l) {
                    if let Err(e) = stream.set_nonblocking(true) {
                        warn!(error = %e, "cannot set up connection");
                        continue;
                    }
                    // Room for bursts of frames in both directions.
                    sys::set_buffer_sizes(stream.as_raw_fd(), 4 << 20, 4 << 20);
                    let name = format!("qemu-stream#{}", stream.as_raw_fd());
                    if let Err(e) = self.add_port(Io::Stream(OwnedFd::from(stream)), name, false) {
                        warn!(error = %e, "cannot add port");
                    }
                }
            }
            Source::FdListener(l) => {
                for stream in accept_all(l) {
                    if stream.set_nonblocking(true).is_ok() {
                        if let Err(e) =
                            self.add_source(Source::FdHandshake(stream), Interest::READABLE)
                        {
                            warn!(error = %e, "cannot add fd handshake");
                        }
                    }
                }
            }
            Source::FdHandshake(stream) => {
                let fd = stream.as_raw_fd();
                match sys::recv_fd(fd) {
                    Ok(Some(passed)) => {
                        self.remove_source(idx);
                        match sys::socket_type(passed.as_raw_fd()) {
                            Ok(libc::SOCK_DGRAM) | Ok(libc::SOCK_SEQPACKET) => {
                                let _ = sys::set_nonblocking(passed.as_raw_fd());
                                sys::set_buffer_sizes(passed.as_raw_fd(), 1 << 20, 4 << 20);
                                let name = format!("fd#{}", passed.as_raw_fd());
                                if let Err(e) = self.add_port(Io::Packet(passed), name, false) {
                                    warn!(error = %e, "cannot add port");
                                }
                            }
                            other => warn!(?other, "fd socket client passed something that is not a datagram socket; ignoring it"),
                        }
                    }
                    Ok(None) => {
                        debug!("fd socket client closed without passing a descriptor");
                        self.remove_source(idx);
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => {
                        warn!(error = %e, "receiving a descriptor failed");
                        self.remove_source(idx);
                    }
                }
            }
            Source::DgramListener { .. } => {
                if event.is_writable() {
                    let peers: Vec<usize> = match &self.sources[idx] {
                        Some(Source::DgramListener { peers, .. }) => {
                            peers.values().copied().collect()
                        }
                        _ => Vec::new(),
                    };
                    for p in peers {
                        self.flush_port(p);
                    }
                }
                if event.is_readable() {
                    self.read_dgram_listener(now, idx);
                }
            }
        }
        None
    }

    fn read_dgram_listener(&mut self, now: Instant, idx: usize) {
        for _ in 0..crate::transport::READS_PER_EVENT * 4 {
            let Some(Some(Source::DgramListener {
                socket,
                peers,
                path,
            })) = self.sources.get(idx)
            else {
                return;
            };
            let (n, addr) = match socket.recv_from(&mut self.scratch) {
                Ok(r) => r,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    warn!(error = %e, path = %path.display(), "datagram receive failed");
                    return;
                }
            };
            let Some(peer) = addr.as_pathname().map(Path::to_path_buf) else {
                if !self.unnamed_peer_warned {
                    self.unnamed_peer_warned = true;
                    warn!(path = %path.display(), "datagram from an unbound socket: cannot reply, dropping (bind a local path, e.g. QEMU -netdev dgram,local.type=unix,...)");
                }
                continue;
            };
            let port_idx = match peers.get(&peer) {
                Some(&p) => p,
                None => {
                    if peers.len() >= MAX_DGRAM_PEERS {
                        warn!(peer = %peer.display(), "too many datagram peers, dropping");
                        continue;
                    }
                    let socket = Rc::clone(socket);
                    let name = format!("dgram:{}", peer.display());
                    let Ok(p) = self.add_port(
                        Io::Peer {
                            socket,
                            peer: peer.clone(),
                        },
                        name,
                        false,
                    ) else {
                        continue;
                    };
                    if let Some(Some(Source::DgramListener { peers, .. })) =
                        self.sources.get_mut(idx)
                    {
                        peers.insert(peer, p);
                    }
                    self.pending_reads.remove(&p);
                    // vfkit announces itself with a 4-byte magic datagram.
                    if &self.scratch[..n] == b"VFKT" {
                        continue;
                    }
                    p
                }
            };
            if n == 0 || n > self.max_frame {
                debug!(len = n, "dropping datagram of invalid frame size");
                continue;
            }
            let Some(Some(Source::Port { id, counters, .. })) = self.sources.get_mut(port_idx)
            else {
                continue;
            };
            let id = *id;
            counters.frames_in += 1;
            counters.bytes_in += n as u64;
            if let Some(p) = &mut self.pcap {
                let _ = p.write(&self.scratch[..n]);
            }
            self.round_bytes += n;
            let dropped = self.stack.frames_dropped();
            self.stack
                .handle_frame(&mut self.host, now, id, &self.scratch[..n]);
            let dropped = self.stack.frames_dropped() - dropped;
            if let Some(Some(Source::Port { counters, .. })) = self.sources.get_mut(port_idx) {
                counters.drops_in += dropped;
            }
        }
        // Budget spent with data possibly left: come back without waiting for an edge.
        self.pending_reads.insert(idx);
    }

    fn read_port(&mut self, now: Instant, idx: usize) {
        if matches!(
            self.sources.get(idx),
            Some(Some(Source::DgramListener { .. }))
        ) {
            return self.read_dgram_listener(now, idx);
        }
        let Some(Some(Source::Port { port, id, counters })) = self.sources.get_mut(idx) else {
            return;
        };
        let id = *id;
        if let Io::Vhost(vhost) = &port.io {
            if let Some(on) = vhost.take_offload_change() {
                info!(port = id, name = %port.name, offloads = on, "guest negotiated its features");
                self.stack.set_port_offloads(id, on);
            }
        }
        let stack = &mut self.stack;
        let host = &mut self.host;
        let pcap = &mut self.pcap;
        let round_bytes = &mut self.round_bytes;
        let dropped = stack.frames_dropped();
        let result = port.read_frames_with(self.max_frame, &mut self.scratch, |frame, vnet| {
            if let Some(p) = pcap {
                let _ = p.write(frame);
            }
            *round_bytes += frame.len();
            counters.frames_in += 1;
            counters.bytes_in += frame.len() as u64;
            match vnet {
                Some(v) => stack.handle_offloaded_frame(host, now, id, frame, v),
                None => stack.handle_frame(host, now, id, frame),
            }
        });
        counters.drops_in += stack.frames_dropped() - dropped;
        if port.take_negotiated() {
            info!(port = id, name = %port.name, "guest negotiated offloads");
            self.stack.set_port_offloads(id, true);
            // The ack is queued in the port.
            self.flush_port(idx);
        }
        match result {
            Ok(ReadStatus::Drained) => {}
            Ok(ReadStatus::More) => {
                self.pending_reads.insert(idx);
            }
            Ok(ReadStatus::Closed) => self.remove_port(idx, "closed by peer"),
            Err(PortError::Io(e)) if e.kind() == io::ErrorKind::ConnectionReset => {
                self.remove_port(idx, "connection reset")
            }
            Err(e) => {
                error!(error = %e, "closing port after a transport error");
                self.remove_port(idx, "transport error");
            }
        }
    }

    fn flush_output(&mut self) {
        let mut queue = std::mem::take(&mut self.stack.out.queue);
        let mut dirty: Vec<usize> = Vec::new();
        for tx in queue.drain(..) {
            if let Some(p) = &mut self.pcap {
                let _ = p.write(&tx.frame);
            }
            self.round_bytes += tx.frame.len();
            let Some(&idx) = self.port_sources.get(&tx.port) else {
                self.stack.out.recycle(tx.frame);
                continue;
            };
            if let Some(Some(Source::Port { port, counters, .. })) = self.sources.get_mut(idx) {
                if !port.has_output() {
                    dirty.push(idx);
                }
                let len = tx.frame.len() as u64;
                match port.queue_with(tx.frame, tx.vnet) {
                    None => {
                        counters.frames_out += 1;
                        counters.bytes_out += len;
                    }
                    Some(f) => {
                        counters.drops_out += 1;
                        self.stack.out.recycle(f);
                    }
                }
            }
        }
        self.stack.out.queue = queue;
        for idx in dirty {
            self.flush_port(idx);
        }
    }

    fn flush_port(&mut self, idx: usize) {
        let Some(Some(Source::Port { port, .. })) = self.sources.get_mut(idx) else {
            return;
        };
        let out = &mut self.stack.out;
        if let Err(e) = port.flush(|b| out.recycle(b)) {
            let reason = match e.raw_os_error() {
                Some(libc::EPIPE)
                | Some(libc::ECONNRESET)
                | Some(libc::ECONNREFUSED)
                | Some(libc::ENOENT) => "peer went away",
                _ => "write error",
            };
            debug!(error = %e, "port write failed");
            self.remove_port(idx, reason);
        }
    }
}

impl Network {
    /// The guest address a forward leads to now (an IPv6 one is learned from the guest's
    /// frames, so it may not be known yet).
    fn forward_target(&mut self, guest: ForwardGuest) -> Option<SocketAddr> {
        match guest {
            ForwardGuest::Addr(a) => Some(a),
            ForwardGuest::Ipv6Of(v4) => {
                let ip = self.stack.guest_ipv6_of(*v4.ip())?;
                Some(SocketAddr::new(IpAddr::V6(ip), v4.port()))
            }
        }
    }
}

/// Accepts every pending connection (the listener is edge-triggered).
fn accept_all(listener: &UnixListener) -> Vec<std::os::unix::net::UnixStream> {
    let mut accepted = Vec::new();
    loop {
        match listener.accept() {
            Ok((stream, _)) => accepted.push(stream),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                if e.kind() != io::ErrorKind::WouldBlock {
                    warn!(error = %e, "accept failed");
                }
                return accepted;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forward_specs() {
        let f: Forward = "tcp:127.0.0.1:8022:22".parse().unwrap();
        assert_eq!(
            f,
            Forward {
                udp: false,
                host: "127.0.0.1:8022".parse().unwrap(),
                guest: None,
                guest_port: 22
            }
        );
        let f: Forward = "udp:5353:53".parse().unwrap();
        assert!(f.udp);
        assert_eq!(f.host, "127.0.0.1:5353".parse().unwrap());
        let f: Forward = "tcp:0.0.0.0:80:192.168.5.16:8080".parse().unwrap();
        assert_eq!(f.guest, Some(Ipv4Addr::new(192, 168, 5, 16).into()));
        let f: Forward = "tcp::80:192.168.5.16:8080".parse().unwrap();
        assert_eq!(f.host.ip(), Ipv4Addr::LOCALHOST);
        // IPv6 on either side, in brackets.
        let f: Forward = "tcp:[::1]:8080:80".parse().unwrap();
        assert_eq!(f.host, "[::1]:8080".parse().unwrap());
        assert_eq!((f.guest, f.guest_port), (None, 80));
        assert_eq!(f.to_string(), "tcp:[::1]:8080:80");
        let f: Forward = "udp:[::]:53:[fd00:192:168:5::15]:5353".parse().unwrap();
        assert_eq!(f.guest, Some("fd00:192:168:5::15".parse().unwrap()));
        assert_eq!(f.to_string(), "udp:[::]:53:[fd00:192:168:5::15]:5353");
        let f: Forward = "tcp:[::1]:8080:192.168.5.16:80".parse().unwrap();
        assert_eq!(f.guest, Some(Ipv4Addr::new(192, 168, 5, 16).into()));
        for bad in [
            "",
            "tcp",
            "sctp:1:2",
            "tcp:1",
            "tcp:70000:22",
            "tcp:1:0",
            "tcp:a.b:1:2",
            "tcp:1:2:3:4:5",
            "tcp:[::1:8080:80",
            "tcp:[::1]8080:80",
            "tcp:::1:8080:80",
        ] {
            assert!(bad.parse::<Forward>().is_err(), "{bad} should be rejected");
        }
    }
}
