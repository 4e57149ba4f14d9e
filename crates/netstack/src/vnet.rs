//! The virtio-net header a TAP opened with `IFF_VNET_HDR` puts before every frame, and the
//! software fallbacks for ports that did not negotiate offloads.
//!
//! With offloads on (`TUNSETOFFLOAD`), the kernel may hand over frames whose transport checksum
//! is only partial (`NEEDS_CSUM`: the checksum field holds the pseudo-header sum, the sender
//! expects the receiver's "hardware" to finish it), and TCP or UDP super-segments of up to
//! 64 KiB that stand for several MTU-sized packets (`gso_type`, `gso_size`). The same contract
//! holds the other way, so limanet can hand a guest one large segment with a partial checksum
//! and let its kernel cut and sum it.
//!
//! Such frames must never reach a port that did not negotiate the header (a QEMU socket, vmnet):
//! [`segment`] cuts a super-segment into ordinary packets and [`complete_checksum`] finishes a
//! partial checksum, as a NIC would. Field layout and semantics: the kernel's
//! `include/uapi/linux/virtio_net.h` and `Documentation/networking/segmentation-offloads.rst`.
//! The header is little-endian (a TAP's default on little-endian hosts, and virtio 1.0).

use crate::checksum;
use crate::wire::{self, WireError, ETH_HEADER_LEN};

/// Length of `struct virtio_net_hdr`, the TAP's default header size.
pub const VNET_HDR_LEN: usize = 10;

/// `flags`: the checksum from `csum_start` on is partial; the receiver completes it.
pub const F_NEEDS_CSUM: u8 = 1;
/// `flags`: the checksums were verified already.
pub const F_DATA_VALID: u8 = 2;

/// `gso_type` values (the ECN bit masked off).
pub const GSO_NONE: u8 = 0;
pub const GSO_TCPV4: u8 = 1;
pub const GSO_UDP: u8 = 3;
pub const GSO_TCPV6: u8 = 4;
pub const GSO_UDP_L4: u8 = 5;
/// `gso_type` bit: the TCP stream uses ECN (CWR goes on the first segment only).
pub const GSO_ECN: u8 = 0x80;

const ETHERTYPE_IPV6: u16 = 0x86dd;
const IPV6_HEADER_LEN: usize = 40;
/// Largest IPv4 or IPv6 payload plus headers a super-segment may describe.
const MAX_IP_LEN: usize = 65535;

/// A parsed `struct virtio_net_hdr`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VnetHeader {
    pub flags: u8,
    pub gso_type: u8,
    /// Length of the headers to copy into each segment (a hint; not trusted here).
    pub hdr_len: u16,
    /// Payload bytes per segment.
    pub gso_size: u16,
    /// Where the partial checksum's coverage starts (from the Ethernet header).
    pub csum_start: u16,
    /// Offset of the checksum field from `csum_start`.
    pub csum_offset: u16,
}

impl VnetHeader {
    /// Splits a buffer read from a TAP into its header and frame.
    pub fn parse(buf: &[u8]) -> Result<(Self, &[u8]), WireError> {
        let (h, frame) = buf
            .split_first_chunk::<VNET_HDR_LEN>()
            .ok_or(WireError::Truncated)?;
        let le = |i: usize| u16::from_le_bytes([h[i], h[i + 1]]);
        let hdr = VnetHeader {
            flags: h[0],
            gso_type: h[1],
            hdr_len: le(2),
            gso_size: le(4),
            csum_start: le(6),
            csum_offset: le(8),
        };
        Ok((hdr, frame))
    }

    /// Writes the header into the first [`VNET_HDR_LEN`] bytes of `buf`; false (nothing
    /// written) if `buf` is shorter.
    pub fn emit(&self, buf: &mut [u8]) -> bool {
        let Some(h) = buf.first_chunk_mut::<VNET_HDR_LEN>() else {
            return false;
        };
        h[0] = self.flags;
        h[1] = self.gso_type;
        h[2..4].copy_from_slice(&self.hdr_len.to_le_bytes());
        h[4..6].copy_from_slice(&self.gso_size.to_le_bytes());
        h[6..8].copy_from_slice(&self.csum_start.to_le_bytes());
        h[8..10].copy_from_slice(&self.csum_offset.to_le_bytes());
        true
    }

    /// The header as bytes.
    pub fn to_bytes(&self) -> [u8; VNET_HDR_LEN] {
        let mut b = [0; VNET_HDR_LEN];
        self.emit(&mut b);
        b
    }

    /// The kind of super-segment, without the ECN bit.
    pub fn gso(&self) -> u8 {
        self.gso_type & !GSO_ECN
    }

    /// The frame's checksums need not be verified: the kernel filled them in (or will, for a
    /// partial one it produced itself) or checked them.
    pub fn checksums_trusted(&self) -> bool {
        self.flags & (F_NEEDS_CSUM | F_DATA_VALID) != 0
    }

    /// The frame is an ordinary, fully checksummed packet as far as a port without offloads
    /// is concerned.
    pub fn is_plain(&self) -> bool {
        self.gso() == GSO_NONE && self.flags & F_NEEDS_CSUM == 0
    }

    /// A header for a TCP/IPv4 segment limanet emits with a partial checksum (Ethernet, IPv4
    /// and TCP headers of `headers` bytes, no IPv4 options): the kernel cuts it into
    /// `mss`-byte segments if it is longer than that.
    pub fn tcpv4(headers: usize, payload: usize, mss: usize) -> Self {
        Self::tcp(headers, payload, mss, false)
    }

    /// [`VnetHeader::tcpv4`] for either family: with `ipv6`, a TCP/IPv6 segment (40-byte IPv6
    /// header, no extension headers).
    pub fn tcp(headers: usize, payload: usize, mss: usize, ipv6: bool) -> Self {
        let gso = payload > mss;
        let (gso_type, ip_len) = if ipv6 {
            (GSO_TCPV6, crate::wire6::IPV6_HEADER_LEN)
        } else {
            (GSO_TCPV4, wire::IPV4_HEADER_LEN)
        };
        VnetHeader {
            flags: F_NEEDS_CSUM,
            gso_type: if gso { gso_type } else { GSO_NONE },
            hdr_len: headers as u16,
            gso_size: if gso { mss as u16 } else { 0 },
            csum_start: (ETH_HEADER_LEN + ip_len) as u16,
            csum_offset: 16,
        }
    }
}

/// Where the headers of a frame are.
struct Layout {
    /// Offset of the IP header.
    l3: usize,
    ipv4: bool,
    /// Offset of the TCP or UDP header.
    l4: usize,
    protocol: u8,
    /// Offset of the payload.
    payload: usize,
    /// End of the IP packet (Ethernet padding excluded).
    end: usize,
}

fn layout(frame: &[u8]) -> Result<Layout, WireError> {
    let eth = wire::Ethernet::parse(frame)?;
    let l3 = ETH_HEADER_LEN;
    let (ipv4, l4, protocol, end) = match eth.ethertype {
        wire::ETHERTYPE_IPV4 => {
            let ip = wire::Ipv4::parse(eth.payload)?;
            let end = l3 + ip.header.len() + ip.payload.len();
            (true, l3 + ip.header.len(), ip.protocol, end)
        }
        ETHERTYPE_IPV6 => {
            let p = eth.payload;
            if p.len() < IPV6_HEADER_LEN {
                return Err(WireError::Truncated);
            }
            if p[0] >> 4 != 6 {
                return Err(WireError::Malformed);
            }
            let len = usize::from(wire::be16(p, 4));
            if IPV6_HEADER_LEN + len > p.len() {
                return Err(WireError::Truncated);
            }
            // Extension headers are not followed: a kernel segmenting TCP or UDP puts none.
            (
                false,
                l3 + IPV6_HEADER_LEN,
                p[6],
                l3 + IPV6_HEADER_LEN + len,
            )
        }
        _ => return Err(WireError::Malformed),
    };
    let header_len = match protocol {
        wire::PROTO_TCP => {
            let t = frame.get(l4..end).ok_or(WireError::Truncated)?;
            let len = usize::from(t.get(12).ok_or(WireError::Truncated)? >> 4) * 4;
            if len < wire::TCP_HEADER_LEN {
                return Err(WireError::Malformed);
            }
            len
        }
        wire::PROTO_UDP => wire::UDP_HEADER_LEN,
        _ => return Err(WireError::Malformed),
    };
    let payload = l4 + header_len;
    if payload > end {
        return Err(WireError::Truncated);
    }
    Ok(Layout {
        l3,
        ipv4,
        l4,
        protocol,
        payload,
        end,
    })
}

/// Sum of the pseudo header of the packet at `l3` for a transport length of `len`.
fn pseudo_sum(frame: &[u8], lay: &Layout, len: usize) -> u64 {
    let ip = &frame[lay.l3..];
    if lay.ipv4 {
        checksum::sum(&ip[12..20], 0) + u64::from(lay.protocol) + len as u64
    } else {
        checksum::sum(&ip[8..40], 0) + u64::from(lay.protocol) + len as u64
    }
}

/// Finishes the partial checksum of a `NEEDS_CSUM` frame in place, as a NIC would.
pub fn complete_checksum(frame: &mut [u8], hdr: &VnetHeader) -> Result<(), WireError> {
    let start = usize::from(hdr.csum_start);
    let field = start + usize::from(hdr.csum_offset);
    if field + 2 > frame.len() || start >= frame.len() {
        return Err(WireError::Malformed);
    }
    // The field holds the pseudo-header sum: summing over it completes the checksum.
    let sum = checksum::finish(checksum::sum(&frame[start..], 0));
    frame[field..field + 2].copy_from_slice(&sum.to_be_bytes());
    Ok(())
}

/// Cuts the TCP or UDP super-segment `frame` (described by `hdr`) into packets of at most
/// `gso_size` payload bytes with complete checksums, each in a buffer from `buffer`, handed to
/// `emit` in order. Returns how many. IPv4 identifiers count up from the original's; TCP
/// sequence numbers advance, and FIN and PSH stay on the last segment (CWR on the first).
pub fn segment(
    frame: &[u8],
    hdr: &VnetHeader,
    mut buffer: impl FnMut() -> Vec<u8>,
    mut emit: impl FnMut(Vec<u8>),
) -> Result<usize, WireError> {
    let lay = layout(frame)?;
    let mss = usize::from(hdr.gso_size);
    // UFO (`GSO_UDP`: IP fragmentation) is never enabled on our TAPs and not done here.
    let protocol = match hdr.gso() {
        GSO_TCPV4 | GSO_TCPV6 => wire::PROTO_TCP,
        GSO_UDP_L4 => wire::PROTO_UDP,
        _ => return Err(WireError::Malformed),
    };
    if mss == 0 || protocol != lay.protocol {
        return Err(WireError::Malformed);
    }
    let headers = &frame[..lay.payload];
    let payload = &frame[lay.payload..lay.end];
    let chunks = payload.len().div_ceil(mss).max(1);
    let seq0 = (lay.protocol == wire::PROTO_TCP).then(|| wire::be32(frame, lay.l4 + 4));
    let id0 = lay.ipv4.then(|| wire::be16(frame, lay.l3 + 4));
    for i in 0..chunks {
        let data = payload
            .get(i * mss..((i + 1) * mss).min(payload.len()))
            .unwrap_or_default();
        let mut f = buffer();
        f.clear();
        f.extend_from_slice(headers);
        f.extend_from_slice(data);
        let l4_len = f.len() - lay.l4;
        let ip_len = f.len() - lay.l3;
        if ip_len > MAX_IP_LEN {
            return Err(WireError::Malformed);
        }
        let ip = &mut f[lay.l3..];
        if let Some(id) = id0 {
            ip[2..4].copy_from_slice(&(ip_len as u16).to_be_bytes());
            ip[4..6].copy_from_slice(&id.wrapping_add(i as u16).to_be_bytes());
            ip[10..12].copy_from_slice(&[0, 0]);
            let ihl = lay.l4 - lay.l3;
            let sum = checksum::finish(checksum::sum(&ip[..ihl], 0));
            ip[10..12].copy_from_slice(&sum.to_be_bytes());
        } else {
            ip[4..6].copy_from_slice(&(l4_len as u16).to_be_bytes());
        }
        let field = if let Some(seq) = seq0 {
            let t = &mut f[lay.l4..];
            let seq = seq.wrapping_add((i * mss) as u32);
            t[4..8].copy_from_slice(&seq.to_be_bytes());
            let last = i + 1 == chunks;
            if !last {
                t[13] &= !(wire::tcp_flags::FIN | wire::tcp_flags::PSH);
            }
            if i > 0 {
                t[13] &= !0x80; // CWR
            }
            lay.l4 + 16
        } else {
            let u = &mut f[lay.l4..];
            u[4..6].copy_from_slice(&(l4_len as u16).to_be_bytes());
            lay.l4 + 6
        };
        f[field..field + 2].copy_from_slice(&[0, 0]);
        let seed = pseudo_sum(&f, &lay, l4_len);
        let mut sum = checksum::finish(checksum::sum(&f[lay.l4..], seed));
        if sum == 0 && lay.protocol == wire::PROTO_UDP {
            sum = 0xffff;
        }
        f[field..field + 2].copy_from_slice(&sum.to_be_bytes());
        emit(f);
    }
    Ok(chunks)
}

/// Makes a frame from a port with offloads fit for one without: cut into packets if it is a
/// super-segment, its checksum completed if partial, unchanged otherwise.
pub fn to_plain(
    frame: &[u8],
    hdr: &VnetHeader,
    mut buffer: impl FnMut() -> Vec<u8>,
    mut emit: impl FnMut(Vec<u8>),
) -> Result<(), WireError> {
    if hdr.gso() != GSO_NONE {
        return segment(frame, hdr, buffer, emit).map(|_| ());
    }
    let mut f = buffer();
    f.clear();
    f.extend_from_slice(frame);
    if hdr.flags & F_NEEDS_CSUM != 0 {
        complete_checksum(&mut f, hdr)?;
    }
    emit(f);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{Ipv4, Tcp, Udp};
    use std::net::Ipv4Addr;

    const SRC: Ipv4Addr = Ipv4Addr::new(192, 168, 5, 15);
    const DST: Ipv4Addr = Ipv4Addr::new(192, 168, 5, 16);

    /// A TCP/IPv4 frame with a partial checksum, as a kernel with TSO hands it over.
    fn tcp_super_segment(payload: &[u8], flags: u8) -> Vec<u8> {
        let mut f = vec![0u8; 14 + 20 + 20];
        wire::write_ethernet(&mut f, [2; 6], [4; 6], wire::ETHERTYPE_IPV4);
        wire::write_ipv4(&mut f[14..], SRC, DST, wire::PROTO_TCP, 20 + payload.len());
        let t = &mut f[34..];
        t[0..2].copy_from_slice(&1234u16.to_be_bytes());
        t[2..4].copy_from_slice(&80u16.to_be_bytes());
        t[4..8].copy_from_slice(&0xffff_ff00u32.to_be_bytes());
        t[12] = 5 << 4;
        t[13] = flags;
        f.extend_from_slice(payload);
        let seed = wire::pseudo_header_sum(SRC, DST, wire::PROTO_TCP, 20 + payload.len());
        let partial = !checksum::finish(seed);
        f[34 + 16..34 + 18].copy_from_slice(&partial.to_be_bytes());
        f
    }

    fn valid(ip: &Ipv4) -> bool {
        let seed = wire::pseudo_header_sum(ip.src, ip.dst, ip.protocol, ip.payload.len());
        checksum::finish(checksum::sum(ip.header, 0)) == 0
            && checksum::finish(checksum::sum(ip.payload, seed)) == 0
    }

    #[test]
    fn header_round_trips_and_short_buffers_are_errors() {
        let h = VnetHeader {
            flags: F_NEEDS_CSUM,
            gso_type: GSO_TCPV4 | GSO_ECN,
            hdr_len: 66,
            gso_size: 1448,
            csum_start: 34,
            csum_offset: 16,
        };
        let mut buf = h.to_bytes().to_vec();
        buf.extend_from_slice(b"frame");
        let (back, frame) = VnetHeader::parse(&buf).unwrap();
        assert_eq!(back, h);
        assert_eq!(back.gso(), GSO_TCPV4);
        assert_eq!(frame, b"frame");
        for n in 0..VNET_HDR_LEN {
            assert_eq!(VnetHeader::parse(&buf[..n]), Err(WireError::Truncated));
            assert!(!h.emit(&mut vec![0; n]));
        }
    }

    #[test]
    fn tcp_super_segment_is_cut_into_valid_segments() {
        let payload: Vec<u8> = (0..10_000u32).map(|i| (i * 31 % 251) as u8).collect();
        let flags = wire::tcp_flags::ACK | wire::tcp_flags::PSH | wire::tcp_flags::FIN;
        let frame = tcp_super_segment(&payload, flags);
        let hdr = VnetHeader::tcpv4(54, payload.len(), 1460);
        assert_eq!(hdr.gso(), GSO_TCPV4);
        let mut out = Vec::new();
        let n = segment(&frame, &hdr, Vec::new, |f| out.push(f)).unwrap();
        assert_eq!(n, 7);
        let mut joined = Vec::new();
        for (i, f) in out.iter().enumerate() {
            let ip = Ipv4::parse(&f[14..]).unwrap();
            assert!(valid(&ip), "segment {i} checksums");
            let tcp = Tcp::parse(ip.payload).unwrap();
            assert_eq!(tcp.seq.0, 0xffff_ff00u32.wrapping_add(i as u32 * 1460));
            let last = i == out.len() - 1;
            assert_eq!(tcp.has(wire::tcp_flags::FIN), last);
            assert_eq!(tcp.has(wire::tcp_flags::PSH), last);
            assert!(tcp.payload.len() <= 1460);
            joined.extend_from_slice(tcp.payload);
        }
        assert_eq!(joined, payload);
        // A partial checksum without segmentation is completed in place.
        let small = tcp_super_segment(b"hello", wire::tcp_flags::ACK);
        let hdr = VnetHeader::tcpv4(54, 5, 1460);
        let mut plain = Vec::new();
        to_plain(&small, &hdr, Vec::new, |f| plain.push(f)).unwrap();
        assert!(valid(&Ipv4::parse(&plain[0][14..]).unwrap()));
    }

    #[test]
    fn udp_super_datagram_is_cut_into_datagrams() {
        let payload = vec![7u8; 3000];
        let mut f = vec![0u8; 14 + 20 + 8];
        wire::write_ethernet(&mut f, [2; 6], [4; 6], wire::ETHERTYPE_IPV4);
        wire::write_ipv4(&mut f[14..], SRC, DST, wire::PROTO_UDP, 8 + payload.len());
        f[34..36].copy_from_slice(&5000u16.to_be_bytes());
        f[36..38].copy_from_slice(&53u16.to_be_bytes());
        f[38..40].copy_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
        f.extend_from_slice(&payload);
        let hdr = VnetHeader {
            flags: F_NEEDS_CSUM,
            gso_type: GSO_UDP_L4,
            hdr_len: 42,
            gso_size: 1400,
            csum_start: 34,
            csum_offset: 6,
        };
        let mut out = Vec::new();
        assert_eq!(segment(&f, &hdr, Vec::new, |f| out.push(f)).unwrap(), 3);
        let sizes: Vec<usize> = out
            .iter()
            .map(|f| {
                let ip = Ipv4::parse(&f[14..]).unwrap();
                assert!(valid(&ip));
                Udp::parse(ip.payload).unwrap().payload.len()
            })
            .collect();
        assert_eq!(sizes, [1400, 1400, 200]);
    }

    #[test]
    fn tcp_over_ipv6_super_segment_is_cut_with_valid_checksums() {
        let payload: Vec<u8> = (0..5000u32).map(|i| (i % 241) as u8).collect();
        let (src, dst) = ([0xfd; 16], [0xfe; 16]);
        let mut f = vec![0u8; 14 + 40 + 20];
        wire::write_ethernet(&mut f, [2; 6], [4; 6], ETHERTYPE_IPV6);
        let ip = &mut f[14..];
        ip[0] = 0x60;
        ip[4..6].copy_from_slice(&((20 + payload.len()) as u16).to_be_bytes());
        ip[6] = wire::PROTO_TCP;
        ip[7] = 64;
        ip[8..24].copy_from_slice(&src);
        ip[24..40].copy_from_slice(&dst);
        f[54 + 12] = 5 << 4;
        f[54 + 13] = wire::tcp_flags::ACK;
        f.extend_from_slice(&payload);
        let hdr = VnetHeader {
            flags: F_NEEDS_CSUM,
            gso_type: GSO_TCPV6,
            hdr_len: 74,
            gso_size: 1440,
            csum_start: 54,
            csum_offset: 16,
        };
        let mut out = Vec::new();
        assert_eq!(segment(&f, &hdr, Vec::new, |f| out.push(f)).unwrap(), 4);
        let mut joined = Vec::new();
        for s in &out {
            let len = usize::from(wire::be16(s, 14 + 4));
            assert_eq!(len, s.len() - 54);
            // Pseudo header: addresses, upper-layer length, next header.
            let mut acc = checksum::sum(&s[14 + 8..14 + 40], 0);
            acc += len as u64 + u64::from(wire::PROTO_TCP);
            assert_eq!(checksum::finish(checksum::sum(&s[54..], acc)), 0);
            joined.extend_from_slice(&s[74..]);
        }
        assert_eq!(joined, payload);
    }

    #[test]
    fn lying_frames_are_errors_not_panics() {
        let frame = tcp_super_segment(&[1u8; 4000], wire::tcp_flags::ACK);
        let good = VnetHeader::tcpv4(54, 4000, 1000);
        for n in 0..frame.len() {
            let _ = segment(&frame[..n], &good, Vec::new, drop);
            let _ = to_plain(&frame[..n], &good, Vec::new, drop);
        }
        let zero = VnetHeader {
            gso_size: 0,
            ..good
        };
        assert!(segment(&frame, &zero, Vec::new, drop).is_err());
        let udp = VnetHeader {
            gso_type: GSO_UDP_L4,
            ..good
        };
        assert!(segment(&frame, &udp, Vec::new, drop).is_err());
        let far = VnetHeader {
            gso_type: GSO_NONE,
            csum_start: 60_000,
            ..good
        };
        assert!(to_plain(&frame, &far, Vec::new, drop).is_err());
    }
}
