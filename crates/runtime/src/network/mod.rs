//! The data plane of one user-mode network: a single-threaded mio loop that moves frames
//! between ports and the netstack, and drives the host sockets. While traffic is dense it polls
//! briefly before sleeping ([`crate::busy_poll`]).
//!
//! This file holds the loop itself, the table of the loop's own sources (ports, listeners,
//! stop descriptors) and the dispatch of their events. One job per submodule:
//! - `listeners`: the transports guests connect through, binding and accepting;
//! - `handshake`: Lima's fd socket, where a client passes the port's descriptor;
//! - `datagram`: datagram listeners, one port per peer of a shared socket;
//! - `ports`: guest ports, their frames in and out (and the pcap capture of them);
//! - `host_events`: events of the host sockets behind the translated flows;
//! - `forward`: port-forward specs and their targets;
//! - `control`: commands from other threads (the HTTP API).

mod control;
mod datagram;
mod forward;
mod handshake;
mod host_events;
mod listeners;
mod ports;

pub use control::{Command, Control, ControlClosed, NetworkStats, PortCounters, PortStats, Reply};
pub use forward::Forward;
pub use listeners::Listen;

use crate::busy_poll::PollWindow;
use crate::files;
use crate::pcap::Pcap;
use crate::sockets::HostSockets;
use crate::sys;
use crate::transport::{Io, Port, QueueBudget, MAX_OFFLOAD_READ};
use crate::vhost;
use limanet_netstack::{NetConfig, PortId, Stack, StackError};
use mio::event::Event;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use std::collections::{HashMap, HashSet};
use std::io;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::{UnixDatagram, UnixListener};
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::warn;

/// Host sockets use tokens below this; runtime sources use `SOURCE_BASE + index`.
const SOURCE_BASE: usize = 1 << 30;
/// Largest UDP datagram or ICMP message read from the host.
const HOST_BUFFER: usize = 65536;

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

    /// Dispatches an event of one of the network's own sources (ports, listeners, stop
    /// descriptors) to the file that handles it.
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
                let ports = incoming.take();
                self.add_vhost_ports(ports);
            }
            Source::StreamListener(l) => {
                let streams = listeners::accept_all(l);
                self.add_stream_ports(streams);
            }
            Source::FdListener(l) => {
                let streams = listeners::accept_all(l);
                self.add_fd_handshakes(streams);
            }
            Source::FdHandshake(stream) => {
                let fd = stream.as_raw_fd();
                self.fd_handshake(idx, fd);
            }
            Source::DgramListener { .. } => {
                if event.is_writable() {
                    self.dgram_writable(idx);
                }
                if event.is_readable() {
                    self.read_dgram_listener(now, idx);
                }
            }
        }
        None
    }
}
