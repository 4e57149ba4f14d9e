//! Frames on their way to guests: a queue of buffers tagged with their port, and a pool so the
//! hot path does not allocate.

use crate::checksum;
use crate::vnet::VnetHeader;
use crate::wire::{self, MacAddr, ETH_HEADER_LEN, IPV4_HEADER_LEN, UDP_HEADER_LEN};
use std::collections::HashSet;
use std::net::{Ipv4Addr, SocketAddrV4};

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

    /// Emits an IPv4 packet whose transport header and payload are `l4` (checksums done).
    pub(crate) fn ipv4(&mut self, to: Link, src: Ipv4Addr, dst: Ipv4Addr, proto: u8, l4: &[u8]) {
        let mut f = self.buffer();
        f.resize(ETH_HEADER_LEN + IPV4_HEADER_LEN, 0);
        wire::write_ethernet(&mut f, to.mac, self.mac, wire::ETHERTYPE_IPV4);
        wire::write_ipv4(&mut f[ETH_HEADER_LEN..], src, dst, proto, l4.len());
        f.extend_from_slice(l4);
        self.push(to.port, f);
    }

    /// Emits a UDP datagram.
    pub(crate) fn udp(&mut self, to: Link, src: SocketAddrV4, dst: SocketAddrV4, payload: &[u8]) {
        let len = UDP_HEADER_LEN + payload.len();
        let mut f = self.buffer();
        f.resize(ETH_HEADER_LEN + IPV4_HEADER_LEN + UDP_HEADER_LEN, 0);
        f.extend_from_slice(payload);
        wire::write_ethernet(&mut f, to.mac, self.mac, wire::ETHERTYPE_IPV4);
        wire::write_ipv4(
            &mut f[ETH_HEADER_LEN..],
            *src.ip(),
            *dst.ip(),
            wire::PROTO_UDP,
            len,
        );
        let u = &mut f[ETH_HEADER_LEN + IPV4_HEADER_LEN..];
        u[0..2].copy_from_slice(&src.port().to_be_bytes());
        u[2..4].copy_from_slice(&dst.port().to_be_bytes());
        u[4..6].copy_from_slice(&(len as u16).to_be_bytes());
        let seed = wire::pseudo_header_sum(*src.ip(), *dst.ip(), wire::PROTO_UDP, len);
        let mut sum = checksum::finish(checksum::sum(u, seed));
        if sum == 0 {
            sum = 0xffff;
        }
        u[6..8].copy_from_slice(&sum.to_be_bytes());
        self.push(to.port, f);
    }
}
