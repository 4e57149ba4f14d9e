//! Frames on their way to guests: a queue of buffers tagged with their port, and a pool so the
//! hot path does not allocate.

use crate::checksum;
use crate::vnet::VnetHeader;
use crate::wire::{self, MacAddr, ETH_HEADER_LEN, IPV4_HEADER_LEN, UDP_HEADER_LEN};
use crate::wire6::{self, IPV6_HEADER_LEN};
use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// Hop limit of the IPv6 packets limanet emits (the IPv4 TTL is 64 too).
pub const HOP_LIMIT: u8 = 64;

/// Length of the IP header limanet writes for a packet to `ip`: 20 bytes for IPv4 (no
/// options), 40 for IPv6 (no extension headers).
pub fn ip_header_len(ip: IpAddr) -> usize {
    match ip {
        IpAddr::V4(_) => IPV4_HEADER_LEN,
        IpAddr::V6(_) => IPV6_HEADER_LEN,
    }
}

/// Writes the Ethernet and IP headers at the start of `buf` (which must hold them) for a
/// packet whose transport part is `l4_len` bytes. `src` and `dst` are of one family.
pub fn write_link_and_ip(
    buf: &mut [u8],
    dst_mac: MacAddr,
    src_mac: MacAddr,
    src: IpAddr,
    dst: IpAddr,
    proto: u8,
    l4_len: usize,
) {
    match (src, dst) {
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            wire::write_ethernet(buf, dst_mac, src_mac, wire::ETHERTYPE_IPV6);
            wire6::write_ipv6(&mut buf[ETH_HEADER_LEN..], s, d, proto, l4_len, HOP_LIMIT);
        }
        (s, d) => {
            wire::write_ethernet(buf, dst_mac, src_mac, wire::ETHERTYPE_IPV4);
            wire::write_ipv4(&mut buf[ETH_HEADER_LEN..], v4(s), v4(d), proto, l4_len);
        }
    }
}

/// The IPv4 address of `ip` (unspecified for an IPv6 one: the caller never mixes families).
fn v4(ip: IpAddr) -> Ipv4Addr {
    match ip {
        IpAddr::V4(a) => a,
        IpAddr::V6(a) => a.to_ipv4_mapped().unwrap_or(Ipv4Addr::UNSPECIFIED),
    }
}

/// A port of the network's switch: one VM or namespace connection.
pub type PortId = usize;

/// A frame ready to be written to a port.
#[derive(Debug)]
pub struct TxFrame {
    pub port: PortId,
    pub frame: Vec<u8>,
    /// Offload state (partial checksum, super-segment) for the port's virtio-net header.
    /// `Some` only for ports that negotiated offloads ([`Output::offloads`]); `None` is an
    /// ordinary, fully checksummed frame.
    pub vnet: Option<VnetHeader>,
}

/// Where a frame goes: the port and the Ethernet address behind it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Link {
    pub port: PortId,
    pub mac: MacAddr,
}

/// Pending frames plus recycled buffers.
#[derive(Debug, Default)]
pub struct Output {
    pub queue: Vec<TxFrame>,
    pool: Vec<Vec<u8>>,
    /// Our own Ethernet source address.
    pub(crate) mac: MacAddr,
    /// Ports that take frames with a virtio-net header: partial checksums and TCP
    /// super-segments may go to them.
    offload_ports: HashSet<PortId>,
}

const POOL_MAX: usize = 1024;

impl Output {
    pub(crate) fn new(mac: MacAddr) -> Self {
        Output {
            queue: Vec::new(),
            pool: Vec::new(),
            mac,
            offload_ports: HashSet::new(),
        }
    }

    /// An empty buffer, from the pool when possible.
    pub(crate) fn buffer(&mut self) -> Vec<u8> {
        let mut b = self.pool.pop().unwrap_or_default();
        b.clear();
        b
    }

    /// A buffer of `len` bytes whose content is unspecified (bytes of an earlier frame), for a
    /// caller that overwrites or truncates away all of it: a recycled buffer keeps its length,
    /// so this skips zeroing up to 64 KiB per segment.
    pub(crate) fn buffer_with_len(&mut self, len: usize) -> Vec<u8> {
        let mut b = self.pool.pop().unwrap_or_default();
        if b.len() >= len {
            b.truncate(len);
        } else {
            b.resize(len, 0);
        }
        b
    }

    /// Returns a buffer the runtime has finished writing.
    pub fn recycle(&mut self, buf: Vec<u8>) {
        if self.pool.len() < POOL_MAX && buf.capacity() <= 1 << 17 {
            self.pool.push(buf);
        }
    }

    pub(crate) fn push(&mut self, port: PortId, frame: Vec<u8>) {
        self.queue.push(TxFrame {
            port,
            frame,
            vnet: None,
        });
    }

    /// Queues a frame with offload state; only for ports where [`Output::offloads`] holds.
    pub(crate) fn push_offloaded(&mut self, port: PortId, frame: Vec<u8>, vnet: VnetHeader) {
        debug_assert!(self.offloads(port));
        self.queue.push(TxFrame {
            port,
            frame,
            vnet: Some(vnet),
        });
    }

    /// Whether `port` negotiated offloads (see [`crate::vnet`]).
    pub fn offloads(&self, port: PortId) -> bool {
        self.offload_ports.contains(&port)
    }

    pub(crate) fn set_offloads(&mut self, port: PortId, on: bool) {
        if on {
            self.offload_ports.insert(port);
        } else {
            self.offload_ports.remove(&port);
        }
    }

    /// Emits an IP packet of either family whose transport part is `l4` (checksums done).
    pub(crate) fn ip(&mut self, to: Link, src: IpAddr, dst: IpAddr, proto: u8, l4: &[u8]) {
        let headers = ETH_HEADER_LEN + ip_header_len(dst);
        let mut f = self.buffer();
        f.resize(headers, 0);
        write_link_and_ip(&mut f, to.mac, self.mac, src, dst, proto, l4.len());
        f.extend_from_slice(l4);
        self.push(to.port, f);
    }

    /// Emits an ICMPv6 message (its checksum is computed here). Neighbor Discovery messages
    /// go with hop limit 255, the proof that they come from the link (RFC 4861 6.1.2, 7.1.2:
    /// receivers drop them otherwise).
    pub(crate) fn icmpv6(&mut self, to: Link, src: Ipv6Addr, dst: Ipv6Addr, kind: u8, body: &[u8]) {
        let m = wire6::icmpv6_message(src, dst, kind, 0, body);
        let nd = (wire6::ND_ROUTER_SOLICIT..=wire6::ND_REDIRECT).contains(&kind);
        let hop_limit = if nd { 255 } else { HOP_LIMIT };
        let mut f = self.buffer();
        f.resize(ETH_HEADER_LEN + IPV6_HEADER_LEN, 0);
        wire::write_ethernet(&mut f, to.mac, self.mac, wire::ETHERTYPE_IPV6);
        wire6::write_ipv6(
            &mut f[ETH_HEADER_LEN..],
            src,
            dst,
            wire6::PROTO_ICMPV6,
            m.len(),
            hop_limit,
        );
        f.extend_from_slice(&m);
        self.push(to.port, f);
    }

    /// Emits a UDP datagram (IPv4 or IPv6, by the family of the addresses).
    pub(crate) fn udp(
        &mut self,
        to: Link,
        src: impl Into<SocketAddr>,
        dst: impl Into<SocketAddr>,
        payload: &[u8],
    ) {
        let (src, dst): (SocketAddr, SocketAddr) = (src.into(), dst.into());
        let len = UDP_HEADER_LEN + payload.len();
        let l4 = ETH_HEADER_LEN + ip_header_len(dst.ip());
        let mut f = self.buffer();
        f.resize(l4 + UDP_HEADER_LEN, 0);
        f.extend_from_slice(payload);
        write_link_and_ip(
            &mut f,
            to.mac,
            self.mac,
            src.ip(),
            dst.ip(),
            wire::PROTO_UDP,
            len,
        );
        let u = &mut f[l4..];
        u[0..2].copy_from_slice(&src.port().to_be_bytes());
        u[2..4].copy_from_slice(&dst.port().to_be_bytes());
        u[4..6].copy_from_slice(&(len as u16).to_be_bytes());
        let seed = wire::ip_pseudo_header_sum(src.ip(), dst.ip(), wire::PROTO_UDP, len);
        let mut sum = checksum::finish(checksum::sum(u, seed));
        if sum == 0 {
            sum = 0xffff;
        }
        u[6..8].copy_from_slice(&sum.to_be_bytes());
        self.push(to.port, f);
    }
}
