//! Host sockets behind the netstack's [`Host`] trait: non-blocking, registered with mio, and
//! identified by their index in a slab (which is also their mio token).

use crate::sys;
use limanet_netstack::{Host, SockId};
use mio::event::Event;
use mio::unix::SourceFd;
use mio::{Interest, Registry, Token};
use std::io;
use std::net::{IpAddr, SocketAddr, SocketAddrV4};
use std::ops::Range;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use tracing::{debug, warn};

/// The state of a translated TCP connection's host socket after a poll event (see
/// [`HostSockets::tcp_status`]).
#[derive(Debug)]
pub enum TcpStatus {
    /// The connect is still in progress.
    Connecting,
    /// The connect finished now, with this outcome.
    ConnectDone(io::Result<()>),
    /// Connected, and still up.
    Up,
    /// Connected before; the socket has failed since (reset by the peer, ...).
    Failed,
}

/// What a host socket is used for.
#[derive(Debug)]
pub enum Kind {
    /// A translated TCP connection. `peek_offset` mirrors the kernel's `SO_PEEK_OFF`; `None`
    /// until first set (the kernel starts with peeking at an offset disabled).
    Tcp {
        connecting: bool,
        peek_offset: Option<usize>,
        /// `SO_SNDBUF`, fixed at creation (set explicitly, so the kernel does not autotune it).
        sndbuf: usize,
        /// Nothing was ever sent: the whole buffer is free, no need to ask.
        unused: bool,
    },
    /// A translated UDP flow (one per guest address and port).
    Udp {
        /// A dual-stack IPv6 socket: IPv4 destinations are sent as mapped addresses.
        ipv6: bool,
        /// The destination the last immediate send reached: later datagrams to it wait for
        /// the end of the round and leave together (see [`HostSockets::flush_udp`]). A first
        /// datagram to a new destination is sent at once, so that a destination without a
        /// route is reported to the guest (ICMP unreachable) by the send's error.
        proven: Option<SocketAddr>,
        /// Runs of equal-sized datagrams leave as one UDP GSO send; false once the kernel
        /// refused one for this socket (no `UDP_SEGMENT`, a path MTU below the size, ...).
        gso: bool,
    },
    /// An ICMP echo socket; raw sockets deliver the IP header too.
    Icmp { raw: bool },
    /// A TCP port-forward listener and the guest address it leads to.
    TcpForward { guest: ForwardGuest },
    /// A UDP port-forward socket and the guest address it leads to.
    UdpForward { guest: ForwardGuest },
}

/// Where a port forward leads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ForwardGuest {
    /// A fixed guest address and port.
    Addr(SocketAddr),
    /// The IPv6 address (learned from its frames, e.g. by SLAAC) of the guest holding this
    /// IPv4 address, and the port: a forward whose host side is IPv6 and which names no guest
    /// address reaches the guest over IPv6.
    Ipv6Of(SocketAddrV4),
}

#[derive(Debug)]
pub struct Entry {
    pub fd: OwnedFd,
    pub kind: Kind,
}

/// All host sockets of one network.
pub struct HostSockets {
    registry: Registry,
    entries: Vec<Option<Entry>>,
    free: Vec<usize>,
    /// Ids freed since the last poll: not reused before it, so an event already collected for
    /// a closed socket cannot reach a new one.
    freed: Vec<usize>,
    /// `SO_PEEK_OFF` works on this kernel; without it, every peek starts at offset 0.
    peek_off_supported: bool,
    /// Prefer unprivileged ping sockets; fall back to raw sockets if they are refused.
    icmp_raw: Option<bool>,
    /// `SO_SNDBUFFORCE` is still allowed (it is not once capabilities are dropped).
    force_send_buffer: bool,
    /// The send buffer size every translated TCP socket gets, once measured.
    tcp_send_buffer: Option<usize>,
    /// Tokens at or above this belong to the runtime, not to host sockets.
    limit: usize,
    /// Guest UDP datagrams to proven destinations, sent at the end of the round.
    udp_pending: PendingUdp,
    /// Datagrams of `udp_pending` the kernel refused (full socket buffer, a route gone).
    pub udp_send_dropped: u64,
}

/// Datagrams waiting for [`HostSockets::flush_udp`]: payloads back to back in `data`.
#[derive(Default)]
struct PendingUdp {
    data: Vec<u8>,
    items: Vec<QueuedUdp>,
}

/// A queued datagram: its socket, destination and where its payload lies in
/// [`PendingUdp::data`].
type QueuedUdp = (SockId, socket2::SockAddr, Range<usize>);

/// Most datagrams in one UDP GSO send (the kernel's `UDP_MAX_SEGMENTS` was 64 before 6.9).
const GSO_MAX_SEGMENTS: usize = 64;
/// Most payload bytes in one UDP GSO send: the whole run must fit one IPv4 packet's length.
const GSO_MAX_BYTES: usize = 65_507;

/// A run of queued datagrams (`items`, indices into a socket's queue) sent as one message;
/// `segment` is the size of each but the last (0: a single datagram, no GSO).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Batch {
    items: Range<usize>,
    segment: u16,
}

/// Cuts a socket's queue (destination and length of each datagram, in order) into GSO runs:
/// consecutive datagrams to one destination, all of the first one's size except perhaps a
/// shorter last one (the kernel cuts a GSO message into `segment`-byte datagrams, so this
/// is what keeps every datagram's boundaries), within the kernel's limits. Order is kept.
fn gso_batches(queue: &[(&socket2::SockAddr, usize)]) -> Vec<Batch> {
    let mut batches = Vec::new();
    let mut start = 0;
    while start < queue.len() {
        let (addr, size) = queue[start];
        let mut end = start + 1;
        let mut bytes = size;
        if size > 0 && size <= usize::from(u16::MAX) {
            while end < queue.len() && end - start < GSO_MAX_SEGMENTS {
                let (a, len) = queue[end];
                if a != addr || len > size || len == 0 || bytes + len > GSO_MAX_BYTES {
                    break;
                }
                bytes += len;
                end += 1;
                if len < size {
                    break; // A shorter datagram can only end a run.
                }
            }
        }
        let segment = if end - start > 1 { size as u16 } else { 0 };
        batches.push(Batch {
            items: start..end,
            segment,
        });
        start = end;
    }
    batches
}

/// One message per datagram.
fn single_batches(n: usize) -> Vec<Batch> {
    (0..n)
        .map(|i| Batch {
            items: i..i + 1,
            segment: 0,
        })
        .collect()
}

/// Errors with which the kernel refuses a UDP GSO send it would take one datagram at a time:
/// no `UDP_SEGMENT` (old kernel), a segment above the path MTU, a device without checksum
/// offload (EIO).
fn gso_refused(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EINVAL | libc::EIO | libc::ENOPROTOOPT | libc::EOPNOTSUPP | libc::EMSGSIZE)
    )
}

impl HostSockets {
    pub fn new(registry: Registry, limit: usize) -> Self {
        HostSockets {
            registry,
            entries: Vec::new(),
            free: Vec::new(),
            freed: Vec::new(),
            peek_off_supported: true,
            icmp_raw: None,
            force_send_buffer: true,
            tcp_send_buffer: None,
            limit,
            udp_pending: PendingUdp::default(),
            udp_send_dropped: 0,
        }
    }

    /// Sends the datagrams queued by `udp_send_to` during this round: each socket's run of
    /// them in one `sendmmsg`, and within it each run of equal-sized datagrams to one
    /// destination as one UDP GSO message (a flood from the guest then costs one system call
    /// and one wake-up of the receiver per round, and one trip through the host's IP stack per
    /// run, not per datagram). Call once per round, after the guest frames are handled; ids
    /// stay valid until the next poll.
    pub fn flush_udp(&mut self) {
        let mut pending = std::mem::take(&mut self.udp_pending);
        let mut start = 0;
        while start < pending.items.len() {
            let id = pending.items[start].0;
            let end = start
                + pending.items[start..]
                    .iter()
                    .take_while(|i| i.0 == id)
                    .count();
            self.send_queued(id, &pending.data, &pending.items[start..end]);
            start = end;
        }
        pending.items.clear();
        pending.data.clear();
        self.udp_pending = pending; // Keep the allocations.
    }

    /// Sends one socket's queued datagrams (`items`, payloads in `data`).
    fn send_queued(&mut self, id: SockId, data: &[u8], items: &[QueuedUdp]) {
        let (fd, gso) = match self.get(id) {
            Some(Entry {
                fd,
                kind: Kind::Udp { gso, .. },
            }) => (fd.as_raw_fd(), *gso),
            Some(Entry { fd, .. }) => (fd.as_raw_fd(), false),
            None => {
                self.udp_send_dropped += items.len() as u64; // The flow closed this round.
                return;
            }
        };
        let lens: Vec<(&socket2::SockAddr, usize)> =
            items.iter().map(|(_, a, r)| (a, r.len())).collect();
        let mut batches = if gso {
            gso_batches(&lens)
        } else {
            single_batches(lens.len())
        };
        let mut sent = 0;
        while sent < batches.len() {
            let msgs: Vec<sys::UdpMsg<'_>> = batches[sent..]
                .iter()
                .map(|b| {
                    let first = &items[b.items.start].2;
                    let last = &items[b.items.end - 1].2;
                    sys::UdpMsg {
                        addr: &items[b.items.start].1,
                        // A run's payloads lie back to back in `data`.
                        data: &data[first.start..last.end],
                        segment: b.segment,
                    }
                })
                .collect();
            match sys::send_batches(fd, &msgs) {
                Ok(0) => break,
                Ok(n) => sent += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if batches[sent].segment != 0 && gso_refused(&e) => {
                    // Send the rest one datagram at a time, now and from now on.
                    debug!(error = %e, "UDP GSO refused; sending datagrams one by one");
                    if let Some(Entry {
                        kind: Kind::Udp { gso, .. },
                        ..
                    }) = self.get_mut(id)
                    {
                        *gso = false;
                    }
                    let from = batches[sent].items.start;
                    batches = single_batches(items.len());
                    sent = from;
                }
                Err(e) => {
                    // The first unsent run failed: drop it, and let the next datagram to this
                    // socket go out at once, so the guest hears about the error.
                    debug!(error = %e, "batched UDP send failed");
                    self.udp_send_dropped += batches[sent].items.len() as u64;
                    sent += 1;
                    if let Some(Entry {
                        kind: Kind::Udp { proven, .. },
                        ..
                    }) = self.get_mut(id)
                    {
                        *proven = None;
                    }
                }
            }
        }
        self.udp_send_dropped += batches[sent.min(batches.len())..]
            .iter()
            .map(|b| b.items.len() as u64)
            .sum::<u64>();
    }

    pub fn get(&self, id: SockId) -> Option<&Entry> {
        self.entries.get(id).and_then(Option::as_ref)
    }

    pub fn get_mut(&mut self, id: SockId) -> Option<&mut Entry> {
        self.entries.get_mut(id).and_then(Option::as_mut)
    }

    /// Registers a socket and returns its id.
    pub fn insert(&mut self, fd: OwnedFd, kind: Kind) -> io::Result<SockId> {
        let id = match self.free.pop() {
            Some(id) => id,
            None => {
                if self.entries.len() >= self.limit {
                    return Err(io::Error::other("too many host sockets"));
                }
                self.entries.push(None);
                self.entries.len() - 1
            }
        };
        let interest = match kind {
            Kind::Tcp { .. } => Interest::READABLE | Interest::WRITABLE,
            _ => Interest::READABLE,
        };
        if let Err(e) = self
            .registry
            .register(&mut SourceFd(&fd.as_raw_fd()), Token(id), interest)
        {
            self.free.push(id);
            return Err(e);
        }
        self.entries[id] = Some(Entry { fd, kind });
        Ok(id)
    }

    /// Registers a translated TCP socket (connecting, or accepted on a forward listener).
    pub fn insert_tcp(&mut self, fd: OwnedFd, connecting: bool) -> io::Result<SockId> {
        let sndbuf = self.set_send_buffer(fd.as_raw_fd());
        self.insert(
            fd,
            Kind::Tcp {
                connecting,
                peek_offset: None,
                sndbuf,
                unused: true,
            },
        )
    }

    /// Gives a TCP socket the large send buffer and returns its size; the outcome is the same
    /// for every socket, so it is learnt once (two system calls saved per connection).
    fn set_send_buffer(&mut self, fd: RawFd) -> usize {
        if self.force_send_buffer && sys::set_tcp_send_buffer(fd, true).is_err() {
            self.force_send_buffer = false;
            self.tcp_send_buffer = None;
        }
        if !self.force_send_buffer {
            let _ = sys::set_tcp_send_buffer(fd, false);
        }
        *self
            .tcp_send_buffer
            .get_or_insert_with(|| sys::send_buffer_size(fd))
    }

    /// Forgets and closes a socket. Closing the (never duplicated) descriptor also removes it
    /// from the poll set, so there is no separate deregistration call.
    pub fn remove(&mut self, id: SockId) -> Option<Entry> {
        let entry = self.entries.get_mut(id)?.take()?;
        self.freed.push(id);
        Some(entry)
    }

    /// Makes the ids freed since the last poll available again; call before polling.
    pub fn recycle_ids(&mut self) {
        self.free.append(&mut self.freed);
    }

    fn fd(&self, id: SockId) -> io::Result<i32> {
        self.get(id)
            .map(|e| e.fd.as_raw_fd())
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))
    }

    /// Whether the translated TCP connection on `id` is up, from a poll event on its socket
    /// and `SO_ERROR`: the one place that decides it. A connect that succeeded marks the
    /// socket connected. `None` if `id` is not a translated TCP connection.
    pub fn tcp_status(&mut self, id: SockId, event: &Event) -> Option<TcpStatus> {
        let entry = self.get_mut(id)?;
        let Kind::Tcp { connecting, .. } = &mut entry.kind else {
            return None;
        };
        let fd = entry.fd.as_raw_fd();
        if !*connecting {
            let failed = event.is_error() && sys::take_socket_error(fd).is_err();
            return Some(if failed {
                TcpStatus::Failed
            } else {
                TcpStatus::Up
            });
        }
        let done = event.is_writable()
            || event.is_error()
            || event.is_write_closed()
            || event.is_read_closed();
        if !done {
            return Some(TcpStatus::Connecting);
        }
        let result = if event.is_error() || event.is_write_closed() {
            match sys::take_socket_error(fd) {
                Ok(()) => Err(io::ErrorKind::ConnectionRefused.into()),
                error => error,
            }
        } else {
            Ok(())
        };
        if result.is_ok() {
            *connecting = false;
        }
        Some(TcpStatus::ConnectDone(result))
    }
}

impl Host for HostSockets {
    fn tcp_connect(&mut self, dst: SocketAddr) -> io::Result<SockId> {
        let fd = sys::tcp_connect_nonblocking(dst)?;
        self.insert_tcp(fd, true)
    }

    fn tcp_send(&mut self, id: SockId, data: &[u8]) -> io::Result<usize> {
        let entry = self
            .get_mut(id)
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?;
        if let Kind::Tcp { unused, .. } = &mut entry.kind {
            *unused = false;
        }
        sys::send(entry.fd.as_raw_fd(), data)
    }

    fn tcp_send_space(&mut self, id: SockId) -> usize {
        match self.get(id) {
            Some(Entry {
                fd,
                kind: Kind::Tcp { sndbuf, unused, .. },
            }) => sys::send_space(fd.as_raw_fd(), *sndbuf, *unused),
            _ => 0,
        }
    }

    fn tcp_peek(&mut self, id: SockId, offset: usize, bufs: &mut [&mut [u8]]) -> io::Result<usize> {
        let supported = self.peek_off_supported;
        let entry = self
            .get_mut(id)
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?;
        let fd = entry.fd.as_raw_fd();
        let Kind::Tcp { peek_offset, .. } = &mut entry.kind else {
            return Err(io::Error::from(io::ErrorKind::InvalidInput));
        };
        if supported {
            // While SO_PEEK_OFF is off, peeks start at offset 0: a short-lived or request/
            // response connection, whose peeks all start there, never needs to turn it on.
            match *peek_offset {
                None if offset == 0 => return sys::peek_vectored(fd, bufs),
                Some(o) if o == offset => {}
                _ => sys::set_peek_offset(fd, offset)?,
            }
            let n = sys::peek_vectored(fd, bufs)?;
            *peek_offset = Some(offset + n);
            Ok(n)
        } else {
            // Without SO_PEEK_OFF: peek everything up to the offset into a scratch buffer.
            let mut skip = vec![0u8; offset];
            let mut all: Vec<&mut [u8]> = Vec::with_capacity(bufs.len() + 1);
            all.push(&mut skip);
            all.extend(bufs.iter_mut().map(|b| &mut **b));
            let n = sys::peek_vectored(fd, &mut all)?;
            Ok(n.saturating_sub(offset))
        }
    }

    fn tcp_consume(&mut self, id: SockId, len: usize) -> io::Result<()> {
        let entry = self
            .get_mut(id)
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?;
        let fd = entry.fd.as_raw_fd();
        let n = sys::discard(fd, len)?;
        if let Kind::Tcp { peek_offset, .. } = &mut entry.kind {
            // The kernel moves SO_PEEK_OFF back by what was removed.
            *peek_offset = peek_offset.map(|o| o.saturating_sub(n));
        }
        if n != len {
            warn!(
                wanted = len,
                discarded = n,
                "short discard of acknowledged data"
            );
        }
        Ok(())
    }

    fn tcp_shutdown(&mut self, id: SockId) {
        if let Ok(fd) = self.fd(id) {
            sys::shutdown_write(fd);
        }
    }

    fn tcp_close(&mut self, id: SockId, reset: bool) {
        if let Some(entry) = self.remove(id) {
            if reset {
                sys::set_linger_zero(entry.fd.as_raw_fd());
            }
        }
    }

    fn udp_open(&mut self, ipv6: bool) -> io::Result<SockId> {
        let fd = sys::udp_socket(ipv6)?;
        self.insert(
            fd,
            Kind::Udp {
                ipv6,
                proven: None,
                gso: true,
            },
        )
    }

    fn udp_send_to(&mut self, id: SockId, dst: SocketAddr, data: &[u8]) -> io::Result<()> {
        let entry = self
            .get_mut(id)
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?;
        let fd = entry.fd.as_raw_fd();
        let Kind::Udp { ipv6, proven, .. } = &mut entry.kind else {
            return sys::send_to(fd, data, dst).map(|_| ());
        };
        let dst = match dst {
            SocketAddr::V4(v4) if *ipv6 => SocketAddr::from((v4.ip().to_ipv6_mapped(), v4.port())),
            other => other,
        };
        if *proven == Some(dst) {
            let pending = &mut self.udp_pending;
            let at = pending.data.len();
            pending.data.extend_from_slice(data);
            pending
                .items
                .push((id, socket2::SockAddr::from(dst), at..pending.data.len()));
            return Ok(());
        }
        sys::send_to(fd, data, dst)?;
        *proven = Some(dst);
        Ok(())
    }

    fn icmp_open(&mut self, ipv6: bool) -> io::Result<SockId> {
        let raw = match self.icmp_raw {
            Some(raw) => raw,
            None => {
                // Decide once: unprivileged ping sockets, else raw sockets (root).
                // (One sysctl, net.ipv4.ping_group_range, admits ping sockets of both families.)
                let raw = match sys::icmp_socket(false, ipv6) {
                    Ok(fd) => {
                        drop(fd);
                        false
                    }
                    Err(e) => {
                        debug!(error = %e, "ping sockets refused, trying a raw ICMP socket");
                        true
                    }
                };
                self.icmp_raw = Some(raw);
                raw
            }
        };
        let fd = sys::icmp_socket(raw, ipv6)?;
        // Raw ICMPv6 sockets, unlike raw ICMP ones, deliver no IP header.
        let raw_ipv4 = raw && !ipv6;
        self.insert(fd, Kind::Icmp { raw: raw_ipv4 })
    }

    fn icmp_send_to(&mut self, id: SockId, dst: IpAddr, packet: &[u8]) -> io::Result<()> {
        sys::send_to(self.fd(id)?, packet, SocketAddr::new(dst, 0)).map(|_| ())
    }

    fn close(&mut self, id: SockId) {
        self.remove(id);
    }
}

impl HostSockets {
    /// Called once at start: checks whether `SO_PEEK_OFF` works for TCP sockets here.
    pub fn probe_peek_offset(&mut self) {
        self.peek_off_supported = sys::peek_offset_supported();
        if !self.peek_off_supported {
            warn!("SO_PEEK_OFF is not supported: retransmissions will re-read from the start of the queue");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket;
    use std::time::Duration;

    fn plan(lens: &[usize]) -> Vec<(Range<usize>, u16)> {
        let a = socket2::SockAddr::from(SocketAddr::from(([127, 0, 0, 1], 9)));
        let queue: Vec<_> = lens.iter().map(|&l| (&a, l)).collect();
        gso_batches(&queue)
            .into_iter()
            .map(|b| (b.items, b.segment))
            .collect()
    }

    #[test]
    fn runs_of_equal_sizes_end_at_a_shorter_or_longer_datagram() {
        assert_eq!(
            plan(&[100, 100, 100, 40, 100, 200, 200]),
            [(0..4, 100), (4..5, 0), (5..7, 200)]
        );
        assert_eq!(plan(&[5]), [(0..1, 0)]);
        assert_eq!(plan(&[]), []);
        // Zero-length datagrams never join a run (the kernel would not cut one out).
        assert_eq!(
            plan(&[0, 0, 10, 0]),
            [(0..1, 0), (1..2, 0), (2..3, 0), (3..4, 0)]
        );
    }

    #[test]
    fn runs_respect_the_kernels_segment_and_byte_limits() {
        let b = plan(&[64; 150]);
        assert_eq!(b, [(0..64, 64), (64..128, 64), (128..150, 64)]);
        // 44 × 1472 B fit one IPv4 packet's 65,507 bytes, 45 do not.
        let b = plan(&[1472; 50]);
        assert_eq!(b, [(0..44, 1472), (44..50, 1472)]);
    }

    #[test]
    fn runs_never_mix_destinations() {
        let a = socket2::SockAddr::from(SocketAddr::from(([127, 0, 0, 1], 9)));
        let b = socket2::SockAddr::from(SocketAddr::from(([127, 0, 0, 1], 10)));
        let queue = [(&a, 10), (&a, 10), (&b, 10), (&b, 10), (&a, 10)];
        let got: Vec<_> = gso_batches(&queue).into_iter().map(|b| b.items).collect();
        assert_eq!(got, [0..2, 2..4, 4..5]);
    }

    /// Queues `sizes` (after one datagram sent at once, which proves the destination) on a
    /// fresh UDP flow socket to a loopback receiver, flushes, and returns what arrived and
    /// whether the socket still uses GSO. `refuse_gso` makes the kernel refuse GSO sends
    /// (a socket without UDP checksums cannot have them).
    fn flush_to_loopback(ipv6: bool, sizes: &[usize], refuse_gso: bool) -> (Vec<Vec<u8>>, bool) {
        let poll = mio::Poll::new().expect("poll");
        let registry = poll.registry().try_clone().expect("registry");
        let mut host = HostSockets::new(registry, 16);
        let rx = UdpSocket::bind(if ipv6 { "[::1]:0" } else { "127.0.0.1:0" }).expect("bind");
        rx.set_read_timeout(Some(Duration::from_secs(2)))
            .expect("timeout");
        let dst = rx.local_addr().expect("addr");
        let id = host.udp_open(ipv6).expect("udp socket");
        if refuse_gso {
            let fd = host.fd(id).expect("fd");
            let one: libc::c_int = 1;
            // SAFETY: a valid socket and an int option.
            let r = unsafe {
                libc::setsockopt(
                    fd,
                    libc::SOL_SOCKET,
                    libc::SO_NO_CHECK,
                    &one as *const libc::c_int as *const libc::c_void,
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                )
            };
            assert_eq!(r, 0, "SO_NO_CHECK");
        }
        host.udp_send_to(id, dst, b"first").expect("first send");
        for (i, &len) in sizes.iter().enumerate() {
            let payload: Vec<u8> = (0..len).map(|k| (i * 31 + k) as u8).collect();
            host.udp_send_to(id, dst, &payload).expect("queue");
        }
        host.flush_udp();
        assert_eq!(host.udp_send_dropped, 0);
        let mut got = Vec::new();
        let mut buf = vec![0u8; 65536];
        for _ in 0..=sizes.len() {
            let n = rx.recv(&mut buf).expect("datagram");
            got.push(buf[..n].to_vec());
        }
        let gso = matches!(
            host.get(id),
            Some(Entry {
                kind: Kind::Udp { gso: true, .. },
                ..
            })
        );
        (got, gso)
    }

    fn expected(sizes: &[usize]) -> Vec<Vec<u8>> {
        let mut want = vec![b"first".to_vec()];
        for (i, &len) in sizes.iter().enumerate() {
            want.push((0..len).map(|k| (i * 31 + k) as u8).collect());
        }
        want
    }

    const MIXED: &[usize] = &[
        1400, 1400, 1400, 700, 1400, 64, 64, 64, 64, 1472, 64, 0, 8, 8, 9, 9, 1, 300, 300, 300,
    ];

    #[test]
    fn gso_sends_keep_boundaries_and_order_ipv4_and_ipv6() {
        for ipv6 in [false, true] {
            let (got, gso) = flush_to_loopback(ipv6, MIXED, false);
            assert_eq!(got, expected(MIXED), "ipv6 {ipv6}");
            assert!(gso, "GSO still on (ipv6 {ipv6})");
        }
    }

    #[test]
    fn a_refused_gso_send_goes_out_one_datagram_at_a_time() {
        let (got, gso) = flush_to_loopback(false, MIXED, true);
        assert_eq!(got, expected(MIXED));
        assert!(!gso, "GSO turned off for the socket");
    }
}
