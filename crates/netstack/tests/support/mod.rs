//! Shared test support for the netstack tests: an in-memory [`FakeHost`], frame builders for
//! what a guest sends, and parsers (with checksum verification by smoltcp) for what the stack
//! emits.

#![allow(dead_code)]

pub mod ipv6;

use limanet_netstack::wire::MacAddr;
use limanet_netstack::{Host, SockId, Stack};
use smoltcp::wire::{
    EthernetFrame, EthernetProtocol, Icmpv4Packet, IpAddress, IpProtocol, Ipv4Packet, TcpPacket,
    UdpPacket,
};
use std::collections::{BTreeMap, VecDeque};
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::Instant;

pub const GUEST_MAC: MacAddr = [0x52, 0x55, 0x55, 0x00, 0x00, 0x0f];
pub const GUEST2_MAC: MacAddr = [0x52, 0x55, 0x55, 0x00, 0x00, 0x10];
pub const GW_MAC: MacAddr = [0x52, 0x55, 192, 168, 5, 2];
pub const GUEST_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 5, 15);
pub const GUEST2_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 5, 16);
pub const GW_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 5, 2);
pub const DNS_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 5, 3);
/// An "outside" address (TEST-NET-3): only ever handed to the fake host, never to a socket.
pub const REMOTE_IP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 7);

// ---------------------------------------------------------------------------------------------
// FakeHost
// ---------------------------------------------------------------------------------------------

/// One fake kernel TCP socket.
#[derive(Debug, Default)]
pub struct FakeTcp {
    /// Where it connects to (None for adopted port-forward sockets).
    pub dst: Option<SocketAddr>,
    /// Send buffer capacity; `tcp_send` accepts at most `capacity - send_buf.len()` bytes.
    pub capacity: usize,
    /// Bytes accepted by `tcp_send` and not yet taken by the remote peer.
    pub send_buf: Vec<u8>,
    /// Everything the remote peer has taken out of the send buffer, in order.
    pub delivered: Vec<u8>,
    /// Bytes received from the remote peer and not consumed yet.
    pub recv: VecDeque<u8>,
    /// Total bytes consumed so far (acknowledged by the guest).
    pub consumed: usize,
    /// The remote peer closed its side (end of stream after `recv`).
    pub eof: bool,
    /// Reads fail with `ConnectionReset`.
    pub reset: bool,
    /// The guest sent FIN.
    pub shut_wr: bool,
    /// `Some(reset)` once closed by the stack.
    pub closed: Option<bool>,
}

/// One fake UDP or ICMP socket.
#[derive(Debug, Default)]
pub struct FakeDgram {
    pub sent: Vec<(SocketAddr, Vec<u8>)>,
    pub closed: bool,
}

/// An in-memory [`Host`] that records everything and checks the stack uses it correctly: any
/// misuse (peeking past the data, consuming more than received, using a closed socket) is
/// recorded in `violations`, which tests assert empty.
#[derive(Debug)]
pub struct FakeHost {
    next_id: SockId,
    pub tcp: BTreeMap<SockId, FakeTcp>,
    pub udp: BTreeMap<SockId, FakeDgram>,
    pub icmp: BTreeMap<SockId, FakeDgram>,
    /// Connects, in order.
    pub connects: Vec<(SockId, SocketAddr)>,
    /// Send buffer capacity of new TCP sockets.
    pub tcp_capacity: usize,
    /// Make the next `tcp_connect` calls fail at once with this error.
    pub fail_connect: Option<io::ErrorKind>,
    pub fail_udp_open: bool,
    /// Make `udp_send_to` fail with this error (no route, say).
    pub fail_udp_send: Option<io::ErrorKind>,
    pub fail_icmp_open: bool,
    pub violations: Vec<String>,
    /// Receive-side calls (`tcp_peek`, `tcp_consume`): each is a system call in the runtime.
    pub receive_calls: usize,
    /// `tcp_send` calls: each is a system call in the runtime.
    pub send_calls: usize,
}

impl Default for FakeHost {
    fn default() -> Self {
        FakeHost {
            next_id: 100,
            tcp: BTreeMap::new(),
            udp: BTreeMap::new(),
            icmp: BTreeMap::new(),
            connects: Vec::new(),
            tcp_capacity: 1 << 20,
            fail_connect: None,
            fail_udp_open: false,
            fail_udp_send: None,
            fail_icmp_open: false,
            violations: Vec::new(),
            receive_calls: 0,
            send_calls: 0,
        }
    }
}

impl FakeHost {
    pub fn new() -> Self {
        Self::default()
    }

    fn id(&mut self) -> SockId {
        self.next_id += 1;
        self.next_id
    }

    /// Adds an already connected TCP socket (a connection accepted on a port-forward listener).
    pub fn adopt_tcp(&mut self) -> SockId {
        let id = self.id();
        self.tcp.insert(
            id,
            FakeTcp {
                capacity: self.tcp_capacity,
                ..FakeTcp::default()
            },
        );
        id
    }

    pub fn sock(&mut self, id: SockId) -> &mut FakeTcp {
        self.tcp.get_mut(&id).expect("test uses a known TCP socket")
    }

    /// The remote peer sends `data` to the socket.
    pub fn push_recv(&mut self, id: SockId, data: &[u8]) {
        self.sock(id).recv.extend(data);
    }

    /// The remote peer takes everything out of the send buffer.
    pub fn drain_send(&mut self, id: SockId) -> usize {
        let s = self.sock(id);
        let n = s.send_buf.len();
        let bytes = std::mem::take(&mut s.send_buf);
        s.delivered.extend_from_slice(&bytes);
        n
    }

    /// The last TCP socket connected.
    pub fn last_tcp(&self) -> SockId {
        self.connects.last().expect("a connect happened").0
    }

    fn live_tcp(&mut self, id: SockId, what: &str) -> Option<&mut FakeTcp> {
        match self.tcp.get(&id) {
            None => {
                self.violations
                    .push(format!("{what} on unknown socket {id}"));
                None
            }
            Some(s) if s.closed.is_some() => {
                self.violations
                    .push(format!("{what} on closed socket {id}"));
                None
            }
            Some(_) => self.tcp.get_mut(&id),
        }
    }
}

impl Host for FakeHost {
    fn tcp_connect(&mut self, dst: SocketAddr) -> io::Result<SockId> {
        if let Some(kind) = self.fail_connect {
            return Err(io::Error::from(kind));
        }
        let id = self.id();
        self.tcp.insert(
            id,
            FakeTcp {
                dst: Some(dst),
                capacity: self.tcp_capacity,
                ..FakeTcp::default()
            },
        );
        self.connects.push((id, dst));
        Ok(id)
    }

    fn tcp_send(&mut self, id: SockId, data: &[u8]) -> io::Result<usize> {
        self.send_calls += 1;
        let Some(s) = self.live_tcp(id, "send") else {
            return Err(io::ErrorKind::NotConnected.into());
        };
        if s.shut_wr {
            return Err(io::ErrorKind::BrokenPipe.into());
        }
        let room = s.capacity.saturating_sub(s.send_buf.len());
        if room == 0 {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let n = room.min(data.len());
        s.send_buf.extend_from_slice(&data[..n]);
        Ok(n)
    }

    fn tcp_send_space(&mut self, id: SockId) -> usize {
        self.tcp
            .get(&id)
            .map_or(0, |s| s.capacity.saturating_sub(s.send_buf.len()))
    }

    fn tcp_peek(&mut self, id: SockId, offset: usize, bufs: &mut [&mut [u8]]) -> io::Result<usize> {
        self.receive_calls += 1;
        let Some(s) = self.live_tcp(id, "peek") else {
            return Err(io::ErrorKind::NotConnected.into());
        };
        if s.reset {
            return Err(io::ErrorKind::ConnectionReset.into());
        }
        let len = s.recv.len();
        if offset > len {
            let msg = format!("peek at offset {offset} past the {len} received bytes of {id}");
            self.violations.push(msg);
            return Err(io::ErrorKind::InvalidInput.into());
        }
        if offset == len {
            return if s.eof {
                Ok(0)
            } else {
                Err(io::ErrorKind::WouldBlock.into())
            };
        }
        let mut at = offset;
        let mut n = 0;
        for b in bufs.iter_mut() {
            for byte in b.iter_mut() {
                if at == len {
                    return Ok(n);
                }
                *byte = s.recv[at];
                at += 1;
                n += 1;
            }
        }
        Ok(n)
    }

    fn tcp_consume(&mut self, id: SockId, len: usize) -> io::Result<()> {
        self.receive_calls += 1;
        let Some(s) = self.live_tcp(id, "consume") else {
            return Err(io::ErrorKind::NotConnected.into());
        };
        if len > s.recv.len() {
            let have = s.recv.len();
            self.violations.push(format!(
                "consume {len} bytes of {id} with only {have} received"
            ));
            return Err(io::ErrorKind::InvalidInput.into());
        }
        s.recv.drain(..len);
        s.consumed += len;
        Ok(())
    }

    fn tcp_shutdown(&mut self, id: SockId) {
        if let Some(s) = self.live_tcp(id, "shutdown") {
            s.shut_wr = true;
        }
    }

    fn tcp_close(&mut self, id: SockId, reset: bool) {
        if let Some(s) = self.live_tcp(id, "close") {
            s.closed = Some(reset);
        }
    }

    fn udp_open(&mut self, _ipv6: bool) -> io::Result<SockId> {
        if self.fail_udp_open {
            return Err(io::ErrorKind::Other.into());
        }
        let id = self.id();
        self.udp.insert(id, FakeDgram::default());
        Ok(id)
    }

    fn udp_send_to(&mut self, id: SockId, dst: SocketAddr, data: &[u8]) -> io::Result<()> {
        if let Some(kind) = self.fail_udp_send {
            return Err(kind.into());
        }
        match self.udp.get_mut(&id) {
            Some(s) if !s.closed => {
                s.sent.push((dst, data.to_vec()));
                Ok(())
            }
            _ => {
                self.violations.push(format!("udp send on bad socket {id}"));
                Err(io::ErrorKind::NotConnected.into())
            }
        }
    }

    fn icmp_open(&mut self, _ipv6: bool) -> io::Result<SockId> {
        if self.fail_icmp_open {
            return Err(io::ErrorKind::PermissionDenied.into());
        }
        let id = self.id();
        self.icmp.insert(id, FakeDgram::default());
        Ok(id)
    }

    fn icmp_send_to(&mut self, id: SockId, dst: IpAddr, packet: &[u8]) -> io::Result<()> {
        match self.icmp.get_mut(&id) {
            Some(s) if !s.closed => {
                s.sent.push((SocketAddr::new(dst, 0), packet.to_vec()));
                Ok(())
            }
            _ => {
                self.violations
                    .push(format!("icmp send on bad socket {id}"));
                Err(io::ErrorKind::NotConnected.into())
            }
        }
    }

    fn close(&mut self, id: SockId) {
        if let Some(s) = self.udp.get_mut(&id).or_else(|| self.icmp.get_mut(&id)) {
            if s.closed {
                self.violations.push(format!("double close of {id}"));
            }
            s.closed = true;
        } else {
            self.violations
                .push(format!("close of unknown socket {id}"));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Building guest frames
// ---------------------------------------------------------------------------------------------

/// RFC 1071 checksum, written independently of the crate's.
/// Reports a fake socket readable, with its end of stream when the peer has closed, as the
/// runtime does with `EPOLLRDHUP`.
pub fn readable(stack: &mut Stack, host: &mut FakeHost, now: Instant, sock: SockId) {
    let closed = host.tcp.get(&sock).is_some_and(|s| s.eof);
    stack.on_tcp_readable(host, now, sock, closed);
}

pub fn inet_checksum(chunks: &[&[u8]]) -> u16 {
    let mut sum: u32 = 0;
    let mut odd: Option<u8> = None;
    for chunk in chunks {
        for &b in *chunk {
            match odd.take() {
                Some(hi) => sum += u32::from(u16::from_be_bytes([hi, b])),
                None => odd = Some(b),
            }
        }
    }
    if let Some(hi) = odd {
        sum += u32::from(u16::from_be_bytes([hi, 0]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

pub fn ethernet(dst: MacAddr, src: MacAddr, ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(14 + payload.len());
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

pub fn ipv4(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, payload: &[u8]) -> Vec<u8> {
    let total = (20 + payload.len()) as u16;
    let mut h = vec![0x45, 0];
    h.extend_from_slice(&total.to_be_bytes());
    h.extend_from_slice(&[0x12, 0x34, 0x40, 0, 64, proto, 0, 0]);
    h.extend_from_slice(&src.octets());
    h.extend_from_slice(&dst.octets());
    let sum = inet_checksum(&[&h]);
    h[10..12].copy_from_slice(&sum.to_be_bytes());
    h.extend_from_slice(payload);
    h
}

fn pseudo(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, len: usize) -> Vec<u8> {
    let mut p = Vec::with_capacity(12);
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&dst.octets());
    p.extend_from_slice(&[0, proto]);
    p.extend_from_slice(&(len as u16).to_be_bytes());
    p
}

/// A guest IPv4 frame to the gateway MAC.
pub fn ip_frame(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, l4: &[u8]) -> Vec<u8> {
    ethernet(GW_MAC, GUEST_MAC, 0x0800, &ipv4(src, dst, proto, l4))
}

/// TCP segment parameters for [`tcp_frame`].
#[derive(Debug, Clone)]
pub struct Seg {
    pub src: SocketAddrV4,
    pub dst: SocketAddrV4,
    pub seq: u32,
    pub ack: u32,
    pub flags: u8,
    pub window: u16,
    pub mss: Option<u16>,
    pub wscale: Option<u8>,
    pub payload: Vec<u8>,
}

impl Seg {
    pub fn new(src: SocketAddrV4, dst: SocketAddrV4, flags: u8) -> Self {
        Seg {
            src,
            dst,
            seq: 0,
            ack: 0,
            flags,
            window: 65535,
            mss: None,
            wscale: None,
            payload: Vec::new(),
        }
    }
}

pub fn tcp_bytes(s: &Seg) -> Vec<u8> {
    let mut options = Vec::new();
    if let Some(mss) = s.mss {
        options.extend_from_slice(&[2, 4]);
        options.extend_from_slice(&mss.to_be_bytes());
    }
    if let Some(ws) = s.wscale {
        options.extend_from_slice(&[1, 3, 3, ws]);
    }
    while options.len() % 4 != 0 {
        options.push(0);
    }
    let mut t = Vec::new();
    t.extend_from_slice(&s.src.port().to_be_bytes());
    t.extend_from_slice(&s.dst.port().to_be_bytes());
    t.extend_from_slice(&s.seq.to_be_bytes());
    t.extend_from_slice(&s.ack.to_be_bytes());
    t.push((((20 + options.len()) / 4) as u8) << 4);
    t.push(s.flags);
    t.extend_from_slice(&s.window.to_be_bytes());
    t.extend_from_slice(&[0, 0, 0, 0]);
    t.extend_from_slice(&options);
    t.extend_from_slice(&s.payload);
    let p = pseudo(*s.src.ip(), *s.dst.ip(), 6, t.len());
    let sum = inet_checksum(&[&p, &t]);
    t[16..18].copy_from_slice(&sum.to_be_bytes());
    t
}

pub fn tcp_frame(s: &Seg) -> Vec<u8> {
    ip_frame(*s.src.ip(), *s.dst.ip(), 6, &tcp_bytes(s))
}

pub fn udp_bytes(src: SocketAddrV4, dst: SocketAddrV4, payload: &[u8]) -> Vec<u8> {
    let len = 8 + payload.len();
    let mut u = Vec::new();
    u.extend_from_slice(&src.port().to_be_bytes());
    u.extend_from_slice(&dst.port().to_be_bytes());
    u.extend_from_slice(&(len as u16).to_be_bytes());
    u.extend_from_slice(&[0, 0]);
    u.extend_from_slice(payload);
    let p = pseudo(*src.ip(), *dst.ip(), 17, len);
    let sum = match inet_checksum(&[&p, &u]) {
        0 => 0xffff,
        s => s,
    };
    u[6..8].copy_from_slice(&sum.to_be_bytes());
    u
}

pub fn udp_frame(src: SocketAddrV4, dst: SocketAddrV4, payload: &[u8]) -> Vec<u8> {
    ip_frame(*src.ip(), *dst.ip(), 17, &udp_bytes(src, dst, payload))
}

pub fn icmp_echo_bytes(kind: u8, ident: u16, seq: u16, data: &[u8]) -> Vec<u8> {
    let mut m = vec![kind, 0, 0, 0];
    m.extend_from_slice(&ident.to_be_bytes());
    m.extend_from_slice(&seq.to_be_bytes());
    m.extend_from_slice(data);
    let sum = inet_checksum(&[&m]);
    m[2..4].copy_from_slice(&sum.to_be_bytes());
    m
}

pub fn ping_frame(src: Ipv4Addr, dst: Ipv4Addr, ident: u16, seq: u16, data: &[u8]) -> Vec<u8> {
    ip_frame(src, dst, 1, &icmp_echo_bytes(8, ident, seq, data))
}

pub fn arp_request(sender_mac: MacAddr, sender_ip: Ipv4Addr, target_ip: Ipv4Addr) -> Vec<u8> {
    let mut a = vec![0, 1, 8, 0, 6, 4, 0, 1];
    a.extend_from_slice(&sender_mac);
    a.extend_from_slice(&sender_ip.octets());
    a.extend_from_slice(&[0; 6]);
    a.extend_from_slice(&target_ip.octets());
    ethernet([0xff; 6], sender_mac, 0x0806, &a)
}

/// A DHCPDISCOVER from `mac`, broadcast, as a whole Ethernet frame.
pub fn dhcp_discover(mac: MacAddr) -> Vec<u8> {
    let mut m = vec![0u8; 236];
    m[0] = 1; // BOOTREQUEST
    m[1] = 1; // Ethernet
    m[2] = 6;
    m[4..8].copy_from_slice(&0x1234_5678u32.to_be_bytes());
    m[10] = 0x80; // broadcast flag
    m[28..34].copy_from_slice(&mac);
    m.extend_from_slice(&[99, 130, 83, 99]); // magic cookie
    m.extend_from_slice(&[53, 1, 1]); // DHCPDISCOVER
    m.extend_from_slice(&[55, 3, 1, 3, 6]);
    m.push(255);
    let udp = udp_bytes(
        SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 68),
        SocketAddrV4::new(Ipv4Addr::BROADCAST, 67),
        &m,
    );
    let ip = ipv4(Ipv4Addr::UNSPECIFIED, Ipv4Addr::BROADCAST, 17, &udp);
    ethernet([0xff; 6], mac, 0x0800, &ip)
}

// ---------------------------------------------------------------------------------------------
// Parsing what the stack emits
// ---------------------------------------------------------------------------------------------

/// A parsed TCP segment from the stack, checksums verified by smoltcp.
#[derive(Debug, Clone)]
pub struct OutTcp {
    pub src: SocketAddrV4,
    pub dst: SocketAddrV4,
    pub dst_mac: MacAddr,
    pub seq: u32,
    pub ack: u32,
    pub flags: u8,
    pub window: u16,
    pub mss: Option<u16>,
    pub wscale: Option<u8>,
    pub payload: Vec<u8>,
}

impl OutTcp {
    pub fn has(&self, flag: u8) -> bool {
        self.flags & flag != 0
    }
}

/// A parsed IPv4 packet; panics (test failure) on bad IP checksums.
pub struct OutIp {
    pub dst_mac: MacAddr,
    pub src_mac: MacAddr,
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub proto: u8,
    pub payload: Vec<u8>,
}

pub fn parse_ip(frame: &[u8]) -> Option<OutIp> {
    let eth = EthernetFrame::new_checked(frame).expect("stack emits whole Ethernet frames");
    if eth.ethertype() != EthernetProtocol::Ipv4 {
        return None;
    }
    let ip = Ipv4Packet::new_checked(eth.payload()).expect("stack emits valid IPv4");
    assert!(ip.verify_checksum(), "IPv4 header checksum");
    let mut dst_mac = [0; 6];
    dst_mac.copy_from_slice(eth.dst_addr().as_bytes());
    let mut src_mac = [0; 6];
    src_mac.copy_from_slice(eth.src_addr().as_bytes());
    Some(OutIp {
        dst_mac,
        src_mac,
        src: ip.src_addr(),
        dst: ip.dst_addr(),
        proto: u8::from(ip.next_header()),
        payload: ip.payload().to_vec(),
    })
}

pub fn parse_tcp(frame: &[u8]) -> Option<OutTcp> {
    let ip = parse_ip(frame)?;
    if ip.proto != u8::from(IpProtocol::Tcp) {
        return None;
    }
    let t = TcpPacket::new_checked(&ip.payload[..]).expect("stack emits valid TCP");
    assert!(
        t.verify_checksum(&IpAddress::Ipv4(ip.src), &IpAddress::Ipv4(ip.dst)),
        "TCP checksum"
    );
    let raw = &ip.payload;
    let (mss, wscale) = tcp_options(t.options());
    Some(OutTcp {
        src: SocketAddrV4::new(ip.src, t.src_port()),
        dst: SocketAddrV4::new(ip.dst, t.dst_port()),
        dst_mac: ip.dst_mac,
        seq: t.seq_number().0 as u32,
        ack: t.ack_number().0 as u32,
        flags: raw[13],
        window: t.window_len(),
        mss,
        wscale,
        payload: t.payload().to_vec(),
    })
}

/// MSS and window scale from raw TCP options.
fn tcp_options(mut o: &[u8]) -> (Option<u16>, Option<u8>) {
    let (mut mss, mut ws) = (None, None);
    while let Some(&kind) = o.first() {
        match kind {
            0 => break,
            1 => o = &o[1..],
            _ => {
                let len = usize::from(*o.get(1).expect("option length"));
                assert!(len >= 2 && len <= o.len(), "stack emits valid TCP options");
                match (kind, len) {
                    (2, 4) => mss = Some(u16::from_be_bytes([o[2], o[3]])),
                    (3, 3) => ws = Some(o[2]),
                    _ => {}
                }
                o = &o[len..];
            }
        }
    }
    (mss, ws)
}

/// A parsed UDP datagram: (source, destination, payload), checksum verified.
pub fn parse_udp(frame: &[u8]) -> Option<(SocketAddrV4, SocketAddrV4, Vec<u8>)> {
    let ip = parse_ip(frame)?;
    if ip.proto != 17 {
        return None;
    }
    let u = UdpPacket::new_checked(&ip.payload[..]).expect("stack emits valid UDP");
    assert!(
        u.verify_checksum(&IpAddress::Ipv4(ip.src), &IpAddress::Ipv4(ip.dst)),
        "UDP checksum"
    );
    Some((
        SocketAddrV4::new(ip.src, u.src_port()),
        SocketAddrV4::new(ip.dst, u.dst_port()),
        u.payload().to_vec(),
    ))
}

/// A parsed ICMP echo: (src, dst, type, ident, seq, data), checksum verified.
pub fn parse_icmp(frame: &[u8]) -> Option<(Ipv4Addr, Ipv4Addr, u8, u16, u16, Vec<u8>)> {
    let ip = parse_ip(frame)?;
    if ip.proto != 1 {
        return None;
    }
    let p = Icmpv4Packet::new_checked(&ip.payload[..]).expect("stack emits valid ICMP");
    assert!(p.verify_checksum(), "ICMP checksum");
    let raw = &ip.payload;
    Some((
        ip.src,
        ip.dst,
        raw[0],
        u16::from_be_bytes([raw[4], raw[5]]),
        u16::from_be_bytes([raw[6], raw[7]]),
        raw[8..].to_vec(),
    ))
}

/// Takes all frames the stack queued.
pub fn drain(stack: &mut Stack) -> Vec<(usize, Vec<u8>)> {
    stack
        .out
        .queue
        .drain(..)
        .map(|f| (f.port, f.frame))
        .collect()
}

/// Takes all queued frames and returns the TCP segments among them.
pub fn drain_tcp(stack: &mut Stack) -> Vec<OutTcp> {
    drain(stack)
        .iter()
        .filter_map(|(_, f)| parse_tcp(f))
        .collect()
}
