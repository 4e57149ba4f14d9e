//! The control channel into a running network: commands from other threads (the HTTP API)
//! reach the event loop through a channel plus a [`mio::Waker`], are executed between two
//! rounds of frames, and answer through a reply callback. Nothing here blocks the data plane.
//!
//! Commands: expose and unexpose port forwards at run time, list forwards, DHCP leases,
//! per-port counters, the switch's MAC table and the flow table, and probe a guest TCP port
//! (one dial from inside the network, for `wait_port`).

use super::{Forward, Network, Source};
use crate::sockets::{ForwardGuest, Kind};
use crate::sys;
use crate::transport::Io;
use limanet_netstack::{CamEntry, FlowInfo, InboundState, PortId, SockId};
use mio::{Token, Waker};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::os::fd::OwnedFd;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, Sender, TryRecvError};
use std::sync::Arc;
use std::time::Instant;
use tracing::{debug, info};

/// Most forwards at once: each holds a listening descriptor from the same budget as guest flows.
const MAX_EXPOSED: usize = 256;

/// The event loop's token for the control waker (never a host socket nor a source).
pub(super) const WAKER_TOKEN: Token = Token(usize::MAX);

/// How a command answers: called once, on the event loop thread, with the result.
pub type Reply<T> = Box<dyn FnOnce(T) + Send>;

/// A request to the data plane.
pub enum Command {
    /// Listen on the host for a new port forward. Answers the address actually bound (port 0
    /// picks one). A failure leaves nothing behind.
    Expose {
        forward: Forward,
        reply: Reply<Result<SocketAddr, String>>,
    },
    /// Close the listener of a forward. Connections already forwarded keep working.
    Unexpose {
        udp: bool,
        host: SocketAddr,
        reply: Reply<Result<(), String>>,
    },
    /// Every forward, with the guest address resolved.
    Forwards(Reply<Vec<Forward>>),
    /// DHCP bindings, the gateway's own first.
    Leases(Reply<Vec<(Ipv4Addr, [u8; 6])>>),
    /// Counters, per port and for the whole network.
    Stats(Reply<NetworkStats>),
    /// The switch's MAC table.
    Cam(Reply<Vec<CamEntry>>),
    /// The TCP and UDP flow table.
    Flows(Reply<Vec<FlowInfo>>),
    /// The IPv6 address the guest holding an IPv4 address has used most recently (for the
    /// AAAA records of guest names).
    GuestIpv6 {
        ip: Ipv4Addr,
        reply: Reply<Option<std::net::Ipv6Addr>>,
    },
    /// One TCP dial to `guest` from inside the network: `Ok` once the guest accepts, an error
    /// when it refuses, is unknown, or has not answered by `deadline`.
    Probe {
        guest: SocketAddrV4,
        deadline: Instant,
        reply: Reply<Result<(), String>>,
    },
}

/// The data plane went away (the network stopped).
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the network is not running")]
pub struct ControlClosed;

/// A handle for sending [`Command`]s to a running [`Network`]; cheap to clone, usable from any
/// thread.
#[derive(Clone)]
pub struct Control {
    tx: Sender<Command>,
    waker: Arc<Waker>,
}

impl Control {
    /// Queues a command and wakes the event loop. Its reply comes later, from the loop.
    pub fn send(&self, command: Command) -> Result<(), ControlClosed> {
        self.tx.send(command).map_err(|_| ControlClosed)?;
        self.waker.wake().map_err(|_| ControlClosed)
    }
}

/// Traffic counters of one switch port (one VM or namespace).
#[derive(Debug, Default, Clone, Copy)]
pub struct PortCounters {
    pub frames_in: u64,
    pub bytes_in: u64,
    pub frames_out: u64,
    pub bytes_out: u64,
    /// Frames from this port the network could not use (malformed, fragments, unknown
    /// destination).
    pub drops_in: u64,
    /// Frames for this port dropped because its output queue was full.
    pub drops_out: u64,
}

/// One port in [`NetworkStats`].
#[derive(Debug, Clone)]
pub struct PortStats {
    pub id: PortId,
    pub name: String,
    pub counters: PortCounters,
    /// Ethernet addresses learned on this port.
    pub macs: Vec<[u8; 6]>,
    /// DHCP leases of those addresses.
    pub ips: Vec<Ipv4Addr>,
    /// IPv6 addresses the port's guests have sent from, most recently used first.
    pub ips6: Vec<std::net::Ipv6Addr>,
    pub tcp_flows: usize,
    pub udp_flows: usize,
}

/// Counters of the whole network.
#[derive(Debug, Clone, Default)]
pub struct NetworkStats {
    pub ports: Vec<PortStats>,
    pub frames_in: u64,
    pub malformed: u64,
    pub fragments: u64,
    pub switched: u64,
    pub unknown_destination: u64,
    pub bad_checksum: u64,
    /// Every frame from guests that was dropped, whatever the reason.
    pub dropped: u64,
    pub tcp_flows: usize,
    pub udp_flows: usize,
    pub tcp_opened: u64,
    pub tcp_refused: u64,
    pub tcp_retransmits: u64,
    pub udp_evicted: u64,
    /// Bytes of all frames written to ports (gvproxy's `BytesSent`).
    pub bytes_sent: u64,
    /// Bytes of all frames read from ports (gvproxy's `BytesReceived`).
    pub bytes_received: u64,
}

/// A forward's listener.
pub(super) struct Exposed {
    pub forward: Forward,
    pub sock: SockId,
}

/// A dial in progress: the host end of a loopback connection handed to the netstack as if a
/// forward had accepted it.
struct Probe {
    sock: SockId,
    guest: SocketAddrV4,
    deadline: Instant,
    /// The loopback client: dropping it closes the connection towards the guest (FIN).
    _client: TcpStream,
    reply: Reply<Result<(), String>>,
}

/// The event loop's side of the channel.
#[derive(Default)]
pub(super) struct ControlState {
    rx: Option<Receiver<Command>>,
    waker: Option<Arc<Waker>>,
    pub exposed: Vec<Exposed>,
    probes: Vec<Probe>,
}

impl ControlState {
    /// Earliest probe deadline, for the loop's timeout.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.probes.iter().map(|p| p.deadline).min()
    }
}

impl Network {
    /// A handle for controlling this network from other threads (created on first call).
    pub fn control(&mut self) -> std::io::Result<Control> {
        let waker = match &self.control.waker {
            Some(w) => w.clone(),
            None => {
                let w = Arc::new(Waker::new(self.poll.registry(), WAKER_TOKEN)?);
                self.control.waker = Some(w.clone());
                w
            }
        };
        let (tx, rx) = std::sync::mpsc::channel();
        // One receiver: a second handle replaces the first channel.
        self.control.rx = Some(rx);
        Ok(Control { tx, waker })
    }

    /// Listens for one forward and records it.
    pub(super) fn expose(&mut self, forward: Forward) -> Result<SocketAddr, String> {
        // Without a guest address, an IPv6 host side leads to the first guest's IPv6 address
        // (resolved per connection), an IPv4 one to its IPv4 address.
        let by_ipv6 = forward.guest.is_none() && forward.host.is_ipv6();
        let guest_ip = forward.guest.unwrap_or(IpAddr::V4(self.first_guest));
        let forward = Forward {
            guest: Some(guest_ip),
            ..forward
        };
        let proto = if forward.udp { "udp" } else { "tcp" };
        if self.control.exposed.len() >= MAX_EXPOSED {
            return Err(format!(
                "too many forwards (at most {MAX_EXPOSED}); unexpose one first"
            ));
        }
        if forward.host.port() != 0
            && self
                .control
                .exposed
                .iter()
                .any(|e| e.forward.udp == forward.udp && e.forward.host == forward.host)
        {
            return Err(format!(
                "proxy already running for {proto} on {}",
                forward.host
            ));
        }
        let guest = match guest_ip {
            IpAddr::V4(v4) if by_ipv6 => {
                ForwardGuest::Ipv6Of(SocketAddrV4::new(v4, forward.guest_port))
            }
            ip => ForwardGuest::Addr(SocketAddr::new(ip, forward.guest_port)),
        };
        let (fd, kind) = if forward.udp {
            (sys::udp_bind(forward.host), Kind::UdpForward { guest })
        } else {
            (sys::tcp_listen(forward.host), Kind::TcpForward { guest })
        };
        let fd = fd.map_err(|e| format!("listen {proto} {}: {e}", forward.host))?;
        let bound = local_addr(&fd).unwrap_or(forward.host);
        let sock = self
            .host
            .insert(fd, kind)
            .map_err(|e| format!("register forward {proto} {}: {e}", forward.host))?;
        let forward = Forward {
            host: bound,
            ..forward
        };
        info!(forward = %forward, "forwarding");
        self.control.exposed.push(Exposed { forward, sock });
        Ok(bound)
    }

    fn unexpose(&mut self, udp: bool, host: SocketAddr) -> Result<(), String> {
        let Some(i) = self
            .control
            .exposed
            .iter()
            .position(|e| e.forward.udp == udp && e.forward.host == host)
        else {
            return Err("proxy not found".into());
        };
        let exposed = self.control.exposed.remove(i);
        if udp {
            self.stack.udp_forward_closed(exposed.sock);
        }
        self.host.remove(exposed.sock);
        info!(forward = %exposed.forward, "stopped forwarding");
        Ok(())
    }

    /// Runs every queued command.
    pub(super) fn run_commands(&mut self, now: Instant) {
        loop {
            let command = match self.control.rx.as_ref().map(Receiver::try_recv) {
                Some(Ok(c)) => c,
                Some(Err(TryRecvError::Empty)) | None => return,
                Some(Err(TryRecvError::Disconnected)) => {
                    self.control.rx = None;
                    return;
                }
            };
            match command {
                Command::Expose { forward, reply } => reply(self.expose(forward)),
                Command::Unexpose { udp, host, reply } => reply(self.unexpose(udp, host)),
                Command::Forwards(reply) => {
                    reply(self.control.exposed.iter().map(|e| e.forward).collect())
                }
                Command::Leases(reply) => {
                    let cfg = self.stack.config();
                    let mut leases = vec![(cfg.gateway, cfg.gateway_mac)];
                    leases.extend(self.stack.leases().into_iter().map(|l| (l.ip, l.mac)));
                    reply(leases)
                }
                Command::Stats(reply) => reply(self.stats()),
                Command::Cam(reply) => reply(self.stack.cam()),
                Command::Flows(reply) => reply(self.stack.flows()),
                Command::GuestIpv6 { ip, reply } => reply(self.stack.learned_guest_ipv6_of(ip)),
                Command::Probe {
                    guest,
                    deadline,
                    reply,
                } => self.start_probe(now, guest, deadline, reply),
            }
        }
    }

    fn stats(&self) -> NetworkStats {
        let flows = self.stack.flows();
        let cam = self.stack.cam();
        let leases = self.stack.leases();
        let mut stats = NetworkStats::default();
        for source in self.sources.iter().flatten() {
            let Source::Port {
                port, id, counters, ..
            } = source
            else {
                continue;
            };
            let mine = |p: limanet_netstack::FlowProtocol| {
                flows
                    .iter()
                    .filter(|f| f.port == *id && f.protocol == p)
                    .count()
            };
            stats.bytes_sent += counters.bytes_out;
            stats.bytes_received += counters.bytes_in;
            let macs: Vec<[u8; 6]> = cam
                .iter()
                .filter(|e| e.port == *id)
                .map(|e| e.mac)
                .collect();
            let mut counters = *counters;
            if let Io::Vhost(vhost) = &port.io {
                // Counted on the backend's thread: malformed descriptor chains from the guest,
                // and frames its receive queue could not take.
                counters.drops_in += vhost.counters.bad_chains.load(Ordering::Relaxed);
                counters.drops_out += vhost.counters.rx_dropped.load(Ordering::Relaxed);
            }
            stats.ports.push(PortStats {
                id: *id,
                name: port.name.clone(),
                counters,
                ips: leases
                    .iter()
                    .filter(|l| macs.contains(&l.mac))
                    .map(|l| l.ip)
                    .collect(),
                macs,
                ips6: self.stack.ipv6_addresses_of(*id),
                tcp_flows: mine(limanet_netstack::FlowProtocol::Tcp),
                udp_flows: mine(limanet_netstack::FlowProtocol::Udp),
            });
        }
        stats.ports.sort_by_key(|p| p.id);
        let s = &self.stack.stats;
        stats.frames_in = s.frames_in;
        stats.malformed = s.malformed;
        stats.fragments = s.fragments;
        stats.switched = s.switched;
        stats.unknown_destination = s.unknown_destination;
        stats.bad_checksum = s.bad_checksum;
        stats.dropped = self.stack.frames_dropped();
        stats.tcp_flows = self.stack.tcp_flows();
        stats.udp_flows = self.stack.udp_flows();
        let t = self.stack.tcp_stats();
        stats.tcp_opened = t.opened;
        stats.tcp_refused = t.refused;
        stats.tcp_retransmits = t.retransmits;
        stats.udp_evicted = self.stack.udp_stats().evicted;
        stats
    }

    fn start_probe(
        &mut self,
        now: Instant,
        guest: SocketAddrV4,
        deadline: Instant,
        reply: Reply<Result<(), String>>,
    ) {
        if deadline <= now {
            return reply(Err(format!("dial tcp {guest}: timed out")));
        }
        let pair = loopback_pair();
        let (client, server) = match pair {
            Ok(p) => p,
            Err(e) => return reply(Err(format!("dial tcp {guest}: {e}"))),
        };
        let sock = match self.host.insert_tcp(server, false) {
            Ok(s) => s,
            Err(e) => return reply(Err(format!("dial tcp {guest}: {e}"))),
        };
        if let Err(e) = self
            .stack
            .open_tcp_forward(&mut self.host, now, sock, guest)
        {
            return reply(Err(format!("dial tcp {guest}: {e}")));
        }
        debug!(%guest, "probing guest port");
        self.control.probes.push(Probe {
            sock,
            guest,
            deadline,
            _client: client,
            reply,
        });
    }

    /// Answers the probes whose outcome is known. Runs after every round, before host socket
    /// ids can be reused (so a probe's id still names its own socket).
    pub(super) fn check_probes(&mut self, now: Instant) {
        if self.control.probes.is_empty() {
            return;
        }
        let probes = std::mem::take(&mut self.control.probes);
        for probe in probes {
            match self.stack.inbound_state(probe.sock) {
                Some((g, InboundState::Established)) if g == SocketAddr::V4(probe.guest) => {
                    debug!(guest = %probe.guest, "guest port open");
                    (probe.reply)(Ok(()));
                }
                Some((g, InboundState::Opening))
                    if g == SocketAddr::V4(probe.guest) && now < probe.deadline =>
                {
                    self.control.probes.push(probe);
                }
                Some((g, _)) if g == SocketAddr::V4(probe.guest) => {
                    // No answer in time: drop the half-open connection.
                    self.stack.on_tcp_error(&mut self.host, probe.sock);
                    (probe.reply)(Err(format!("dial tcp {}: i/o timeout", probe.guest)));
                }
                _ => (probe.reply)(Err(format!("dial tcp {}: connection refused", probe.guest))),
            }
        }
    }
}

/// A connected loopback TCP pair: (client, accepted server end, non-blocking).
fn loopback_pair() -> std::io::Result<(TcpStream, OwnedFd)> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    let client = TcpStream::connect(listener.local_addr()?)?;
    let (server, _) = listener.accept()?;
    server.set_nonblocking(true)?;
    Ok((client, OwnedFd::from(server)))
}

/// The address a socket is bound to.
fn local_addr(fd: &OwnedFd) -> Option<SocketAddr> {
    socket2::SockRef::from(fd).local_addr().ok()?.as_socket()
}
