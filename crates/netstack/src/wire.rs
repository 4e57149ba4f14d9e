//! Minimal, bounds-checked views of the headers the stack reads, and writers for the headers it
//! emits. Parsing never panics: every accessor is behind a length check done in `parse`.
//! IPv6 and ICMPv6 live in [`crate::wire6`].

use std::cmp::Ordering;
use std::net::{IpAddr, Ipv4Addr};
use std::ops::{Add, AddAssign, Sub};

/// A 48-bit Ethernet address.
pub type MacAddr = [u8; 6];

/// The all-ones broadcast address.
pub const BROADCAST_MAC: MacAddr = [0xff; 6];

pub const ETH_HEADER_LEN: usize = 14;
pub const IPV4_HEADER_LEN: usize = 20;
pub const TCP_HEADER_LEN: usize = 20;
pub const UDP_HEADER_LEN: usize = 8;
pub const ICMP_HEADER_LEN: usize = 8;

pub const ETHERTYPE_IPV4: u16 = 0x0800;
pub const ETHERTYPE_ARP: u16 = 0x0806;
pub const ETHERTYPE_IPV6: u16 = 0x86dd;

pub const PROTO_ICMP: u8 = 1;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;

/// Why a frame was not accepted. Reported by the stack as a counter and a debug log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("frame shorter than its headers")]
    Truncated,
    #[error("malformed header")]
    Malformed,
    #[error("IP fragment (not supported)")]
    Fragment,
}

/// True for group (broadcast or multicast) addresses.
pub fn is_multicast(mac: &MacAddr) -> bool {
    mac[0] & 1 == 1
}

/// An Ethernet frame split into its header fields and payload.
#[derive(Debug, Clone, Copy)]
pub struct Ethernet<'a> {
    pub dst: MacAddr,
    pub src: MacAddr,
    pub ethertype: u16,
    pub payload: &'a [u8],
}

impl<'a> Ethernet<'a> {
    pub fn parse(frame: &'a [u8]) -> Result<Self, WireError> {
        if frame.len() < ETH_HEADER_LEN {
            return Err(WireError::Truncated);
        }
        Ok(Ethernet {
            dst: mac_at(frame, 0),
            src: mac_at(frame, 6),
            ethertype: be16(frame, 12),
            payload: &frame[ETH_HEADER_LEN..],
        })
    }
}

/// An IPv4 ARP packet over Ethernet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Arp {
    pub operation: u16,
    pub sender_mac: MacAddr,
    pub sender_ip: Ipv4Addr,
    pub target_mac: MacAddr,
    pub target_ip: Ipv4Addr,
}

pub const ARP_REQUEST: u16 = 1;
pub const ARP_REPLY: u16 = 2;
pub const ARP_LEN: usize = 28;

impl Arp {
    pub fn parse(p: &[u8]) -> Result<Self, WireError> {
        if p.len() < ARP_LEN {
            return Err(WireError::Truncated);
        }
        // Ethernet hardware (1), IPv4 protocol, address lengths 6 and 4.
        if be16(p, 0) != 1 || be16(p, 2) != ETHERTYPE_IPV4 || p[4] != 6 || p[5] != 4 {
            return Err(WireError::Malformed);
        }
        Ok(Arp {
            operation: be16(p, 6),
            sender_mac: mac_at(p, 8),
            sender_ip: ip_at(p, 14),
            target_mac: mac_at(p, 18),
            target_ip: ip_at(p, 24),
        })
    }

    /// Appends the 28-byte ARP packet to `out`.
    pub fn emit(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&[0, 1, 0x08, 0x00, 6, 4]);
        out.extend_from_slice(&self.operation.to_be_bytes());
        out.extend_from_slice(&self.sender_mac);
        out.extend_from_slice(&self.sender_ip.octets());
        out.extend_from_slice(&self.target_mac);
        out.extend_from_slice(&self.target_ip.octets());
    }
}

/// An IPv4 packet (options skipped, payload trimmed to the total length).
#[derive(Debug, Clone, Copy)]
pub struct Ipv4<'a> {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub protocol: u8,
    pub ttl: u8,
    /// The header with its options (for the checksum).
    pub header: &'a [u8],
    pub payload: &'a [u8],
}

impl<'a> Ipv4<'a> {
    pub fn parse(p: &'a [u8]) -> Result<Self, WireError> {
        if p.len() < IPV4_HEADER_LEN {
            return Err(WireError::Truncated);
        }
        let header_len = usize::from(p[0] & 0x0f) * 4;
        let total_len = usize::from(be16(p, 2));
        if p[0] >> 4 != 4 || header_len < IPV4_HEADER_LEN || total_len < header_len {
            return Err(WireError::Malformed);
        }
        if total_len > p.len() {
            return Err(WireError::Truncated);
        }
        let flags_fragment = be16(p, 6);
        // More-fragments set, or a non-zero offset: a fragment.
        if flags_fragment & 0x3fff != 0 {
            return Err(WireError::Fragment);
        }
        Ok(Ipv4 {
            ttl: p[8],
            protocol: p[9],
            src: ip_at(p, 12),
            dst: ip_at(p, 16),
            header: &p[..header_len],
            payload: &p[header_len..total_len],
        })
    }
}

/// TCP flag bits.
pub mod tcp_flags {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const PSH: u8 = 0x08;
    pub const ACK: u8 = 0x10;
}

/// A TCP sequence (or acknowledgment) number: arithmetic modulo 2^32, and an order that
/// respects wraparound (RFC 793 section 3.3, the serial-number comparison of RFC 1982).
///
/// `a < b` means `b` lies less than 2^31 ahead of `a`. That order is only meaningful between
/// numbers of one window (a connection never has 2^31 bytes in flight), which is why the type
/// is `PartialOrd` and not `Ord`: it is not transitive over the whole space, so it must not
/// key a sorted collection across more than half of it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct SeqNumber(pub u32);

impl SeqNumber {
    /// The later of two numbers of one window.
    pub fn max(self, other: SeqNumber) -> SeqNumber {
        if self < other {
            other
        } else {
            self
        }
    }
}

impl std::fmt::Display for SeqNumber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// `seq + n`: `n` bytes further on, wrapping.
impl Add<u32> for SeqNumber {
    type Output = SeqNumber;
    fn add(self, n: u32) -> SeqNumber {
        SeqNumber(self.0.wrapping_add(n))
    }
}

impl AddAssign<u32> for SeqNumber {
    fn add_assign(&mut self, n: u32) {
        *self = *self + n;
    }
}

/// `seq - n`: `n` bytes back, wrapping.
impl Sub<u32> for SeqNumber {
    type Output = SeqNumber;
    fn sub(self, n: u32) -> SeqNumber {
        SeqNumber(self.0.wrapping_sub(n))
    }
}

/// `a - b`: how far `a` lies ahead of `b`, modulo 2^32. When `a` is in fact behind `b` this
/// is a huge number (2^32 minus the distance), which callers check for with the order first
/// or by bounding the result.
impl Sub<SeqNumber> for SeqNumber {
    type Output = u32;
    fn sub(self, earlier: SeqNumber) -> u32 {
        self.0.wrapping_sub(earlier.0)
    }
}

impl PartialOrd for SeqNumber {
    fn partial_cmp(&self, other: &SeqNumber) -> Option<Ordering> {
        Some((self.0.wrapping_sub(other.0) as i32).cmp(&0))
    }
}

/// A TCP header as fields, with the options the translator reads and writes: what
/// [`Tcp::parse`] produces and [`TcpRepr::emit`] writes (smoltcp's `Repr` pattern). Every TCP
/// header limanet writes goes through `emit`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpRepr {
    pub src_port: u16,
    pub dst_port: u16,
    pub seq: SeqNumber,
    /// Meaningful only with the ACK flag; written as is (zero when unset, by convention).
    pub ack: SeqNumber,
    pub flags: u8,
    /// The window field as sent (scaled, except in a SYN).
    pub window: u16,
    /// Maximum segment size option (SYN only).
    pub mss: Option<u16>,
    /// Window scale option (SYN only); parsed values are capped at 14 (RFC 7323 2.3).
    pub window_scale: Option<u8>,
    /// SACK-permitted option (SYN only). Parsed for completeness; the translator does not do
    /// SACK and never sets it.
    pub sack_permitted: bool,
}

/// How [`TcpRepr::emit`] fills the checksum field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TcpChecksum {
    /// The complete checksum over pseudo header, header and payload.
    Full,
    /// Only the pseudo-header sum (not complemented), for a receiver that completes it over
    /// the segment: virtio-net `NEEDS_CSUM` (see [`crate::vnet`]).
    Partial,
}

impl TcpRepr {
    /// Parses a TCP header and its options; returns it with the payload that follows.
    pub fn parse(p: &[u8]) -> Result<(Self, &[u8]), WireError> {
        if p.len() < TCP_HEADER_LEN {
            return Err(WireError::Truncated);
        }
        let header_len = usize::from(p[12] >> 4) * 4;
        if header_len < TCP_HEADER_LEN {
            return Err(WireError::Malformed);
        }
        if header_len > p.len() {
            return Err(WireError::Truncated);
        }
        let mut repr = TcpRepr {
            src_port: be16(p, 0),
            dst_port: be16(p, 2),
            seq: SeqNumber(be32(p, 4)),
            ack: SeqNumber(be32(p, 8)),
            flags: p[13],
            window: be16(p, 14),
            mss: None,
            window_scale: None,
            sack_permitted: false,
        };
        let mut options = &p[TCP_HEADER_LEN..header_len];
        while let Some((&kind, rest)) = options.split_first() {
            match kind {
                TCP_OPT_END => break,
                TCP_OPT_NOP => options = rest,
                _ => {
                    let len = usize::from(*rest.first().ok_or(WireError::Malformed)?);
                    if len < 2 || len > options.len() {
                        return Err(WireError::Malformed);
                    }
                    let value = &options[2..len];
                    match (kind, value.len()) {
                        (TCP_OPT_MSS, 2) => {
                            repr.mss = Some(u16::from_be_bytes([value[0], value[1]]))
                        }
                        (TCP_OPT_WSCALE, 1) => repr.window_scale = Some(value[0].min(14)),
                        (TCP_OPT_SACK_PERMITTED, 0) => repr.sack_permitted = true,
                        _ => {}
                    }
                    options = &options[len..];
                }
            }
        }
        Ok((repr, &p[header_len..]))
    }

    pub fn has(&self, flag: u8) -> bool {
        self.flags & flag != 0
    }

    /// Length of the header `emit` writes: 20 bytes plus its options, each padded with NOPs
    /// to a multiple of four bytes.
    pub fn header_len(&self) -> usize {
        TCP_HEADER_LEN
            + if self.mss.is_some() { 4 } else { 0 }
            + if self.window_scale.is_some() { 4 } else { 0 }
            + if self.sack_permitted { 4 } else { 0 }
    }

    /// Writes the header at the start of `segment`, which holds the whole segment (its payload
    /// already after [`TcpRepr::header_len`] bytes), and then the checksum for a segment from
    /// `src` to `dst` (one family). The urgent pointer is zero.
    pub fn emit(&self, segment: &mut [u8], src: IpAddr, dst: IpAddr, checksum: TcpChecksum) {
        let header_len = self.header_len();
        let t = segment;
        t[0..2].copy_from_slice(&self.src_port.to_be_bytes());
        t[2..4].copy_from_slice(&self.dst_port.to_be_bytes());
        t[4..8].copy_from_slice(&self.seq.0.to_be_bytes());
        t[8..12].copy_from_slice(&self.ack.0.to_be_bytes());
        t[12] = ((header_len / 4) as u8) << 4;
        t[13] = self.flags;
        t[14..16].copy_from_slice(&self.window.to_be_bytes());
        t[16..20].copy_from_slice(&[0, 0, 0, 0]);
        let mut at = TCP_HEADER_LEN;
        let mut option = |bytes: [u8; 4]| {
            t[at..at + 4].copy_from_slice(&bytes);
            at += 4;
        };
        if let Some(mss) = self.mss {
            let [hi, lo] = mss.to_be_bytes();
            option([TCP_OPT_MSS, 4, hi, lo]);
        }
        if let Some(shift) = self.window_scale {
            option([TCP_OPT_NOP, TCP_OPT_WSCALE, 3, shift]);
        }
        if self.sack_permitted {
            option([TCP_OPT_NOP, TCP_OPT_NOP, TCP_OPT_SACK_PERMITTED, 2]);
        }
        let seed = ip_pseudo_header_sum(src, dst, PROTO_TCP, t.len());
        let sum = match checksum {
            TcpChecksum::Full => crate::checksum::finish(crate::checksum::sum(t, seed)),
            TcpChecksum::Partial => !crate::checksum::finish(seed),
        };
        t[16..18].copy_from_slice(&sum.to_be_bytes());
    }
}

/// TCP option kinds (RFC 9293 3.2, RFC 7323, RFC 2018).
const TCP_OPT_END: u8 = 0;
const TCP_OPT_NOP: u8 = 1;
const TCP_OPT_MSS: u8 = 2;
const TCP_OPT_WSCALE: u8 = 3;
const TCP_OPT_SACK_PERMITTED: u8 = 4;

/// A parsed TCP segment: its header (the fields of [`TcpRepr`], reachable directly through
/// `Deref`) and its payload.
#[derive(Debug, Clone, Copy)]
pub struct Tcp<'a> {
    pub header: TcpRepr,
    pub payload: &'a [u8],
}

impl std::ops::Deref for Tcp<'_> {
    type Target = TcpRepr;
    fn deref(&self) -> &TcpRepr {
        &self.header
    }
}

impl std::ops::DerefMut for Tcp<'_> {
    fn deref_mut(&mut self) -> &mut TcpRepr {
        &mut self.header
    }
}

impl<'a> Tcp<'a> {
    pub fn parse(p: &'a [u8]) -> Result<Self, WireError> {
        let (header, payload) = TcpRepr::parse(p)?;
        Ok(Tcp { header, payload })
    }

    /// Sequence space the segment occupies: payload plus one for SYN and one for FIN.
    pub fn seq_len(&self) -> u32 {
        self.payload.len() as u32
            + u32::from(self.has(tcp_flags::SYN))
            + u32::from(self.has(tcp_flags::FIN))
    }
}

/// A UDP datagram.
#[derive(Debug, Clone, Copy)]
pub struct Udp<'a> {
    pub src_port: u16,
    pub dst_port: u16,
    pub payload: &'a [u8],
}

impl<'a> Udp<'a> {
    pub fn parse(p: &'a [u8]) -> Result<Self, WireError> {
        if p.len() < UDP_HEADER_LEN {
            return Err(WireError::Truncated);
        }
        let len = usize::from(be16(p, 4));
        if len < UDP_HEADER_LEN || len > p.len() {
            return Err(WireError::Malformed);
        }
        Ok(Udp {
            src_port: be16(p, 0),
            dst_port: be16(p, 2),
            payload: &p[UDP_HEADER_LEN..len],
        })
    }
}

pub const ICMP_ECHO_REPLY: u8 = 0;
pub const ICMP_DEST_UNREACHABLE: u8 = 3;
pub const ICMP_ECHO_REQUEST: u8 = 8;

/// An ICMP echo request or reply.
#[derive(Debug, Clone, Copy)]
pub struct IcmpEcho<'a> {
    pub kind: u8,
    pub ident: u16,
    pub seq: u16,
    pub data: &'a [u8],
}

impl<'a> IcmpEcho<'a> {
    /// Parses an echo request or reply; other ICMP types are `Ok(None)`.
    pub fn parse(p: &'a [u8]) -> Result<Option<Self>, WireError> {
        if p.len() < ICMP_HEADER_LEN {
            return Err(WireError::Truncated);
        }
        if (p[0] != ICMP_ECHO_REQUEST && p[0] != ICMP_ECHO_REPLY) || p[1] != 0 {
            return Ok(None);
        }
        Ok(Some(IcmpEcho {
            kind: p[0],
            ident: be16(p, 4),
            seq: be16(p, 6),
            data: &p[ICMP_HEADER_LEN..],
        }))
    }
}

/// Writes an Ethernet header at the start of `buf` (which must hold at least 14 bytes).
pub fn write_ethernet(buf: &mut [u8], dst: MacAddr, src: MacAddr, ethertype: u16) {
    buf[0..6].copy_from_slice(&dst);
    buf[6..12].copy_from_slice(&src);
    buf[12..14].copy_from_slice(&ethertype.to_be_bytes());
}

/// Writes a 20-byte IPv4 header (no options, DF set, TTL 64) with its checksum.
pub fn write_ipv4(buf: &mut [u8], src: Ipv4Addr, dst: Ipv4Addr, protocol: u8, payload_len: usize) {
    let total = (IPV4_HEADER_LEN + payload_len) as u16;
    buf[0] = 0x45;
    buf[1] = 0;
    buf[2..4].copy_from_slice(&total.to_be_bytes());
    buf[4..6].copy_from_slice(&[0, 0]);
    buf[6..8].copy_from_slice(&[0x40, 0]);
    buf[8] = 64;
    buf[9] = protocol;
    buf[10..12].copy_from_slice(&[0, 0]);
    buf[12..16].copy_from_slice(&src.octets());
    buf[16..20].copy_from_slice(&dst.octets());
    let sum = crate::checksum::finish(crate::checksum::sum(&buf[..IPV4_HEADER_LEN], 0));
    buf[10..12].copy_from_slice(&sum.to_be_bytes());
}

/// Sum of the IPv4 pseudo header, to seed a TCP or UDP checksum.
pub fn pseudo_header_sum(src: Ipv4Addr, dst: Ipv4Addr, protocol: u8, len: usize) -> u64 {
    ip_pseudo_header_sum(IpAddr::V4(src), IpAddr::V4(dst), protocol, len)
}

/// Sum of the IPv4 (RFC 793) or IPv6 (RFC 8200 8.1) pseudo header, to seed a TCP, UDP or
/// ICMPv6 checksum. The two differ only in the width of the length field, and summing `len`
/// as one number is the same as summing its 16-bit halves once folded. Mixed families (which
/// no packet has) sum both addresses all the same.
pub fn ip_pseudo_header_sum(src: IpAddr, dst: IpAddr, protocol: u8, len: usize) -> u64 {
    let words = |ip: IpAddr| -> u64 {
        match ip {
            IpAddr::V4(a) => crate::checksum::sum(&a.octets(), 0),
            IpAddr::V6(a) => crate::checksum::sum(&a.octets(), 0),
        }
    };
    words(src) + words(dst) + u64::from(protocol) + len as u64
}

pub fn be16(p: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([p[at], p[at + 1]])
}

pub fn be32(p: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([p[at], p[at + 1], p[at + 2], p[at + 3]])
}

fn mac_at(p: &[u8], at: usize) -> MacAddr {
    let mut mac = [0; 6];
    mac.copy_from_slice(&p[at..at + 6]);
    mac
}

fn ip_at(p: &[u8], at: usize) -> Ipv4Addr {
    Ipv4Addr::new(p[at], p[at + 1], p[at + 2], p[at + 3])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tcp_options_are_parsed_and_bounded() {
        let mut seg = vec![0u8; 32];
        seg[12] = 8 << 4; // 32-byte header
        seg[13] = tcp_flags::SYN;
        seg[20..32].copy_from_slice(&[2, 4, 0x05, 0xb4, 1, 3, 3, 7, 4, 2, 0, 0]);
        let tcp = Tcp::parse(&seg).unwrap();
        assert_eq!(tcp.mss, Some(1460));
        assert_eq!(tcp.window_scale, Some(7));
        assert_eq!(tcp.seq_len(), 1);
        // An option whose length runs past the header is rejected, not read out of bounds.
        seg[28..32].copy_from_slice(&[8, 10, 0, 0]);
        assert_eq!(Tcp::parse(&seg).unwrap_err(), WireError::Malformed);
        seg[28..32].copy_from_slice(&[8, 0, 0, 0]);
        assert_eq!(Tcp::parse(&seg).unwrap_err(), WireError::Malformed);
    }

    #[test]
    fn sequence_numbers_wrap_and_compare_across_the_wrap() {
        let near_end = SeqNumber(0xffff_fff0);
        let wrapped = near_end + 0x20;
        assert_eq!(wrapped, SeqNumber(0x10));
        assert!(near_end < wrapped);
        assert!(wrapped > near_end);
        assert!(near_end >= near_end - 1);
        assert_eq!(wrapped - near_end, 0x20);
        assert_eq!(near_end - wrapped, 0u32.wrapping_sub(0x20));
        assert_eq!(wrapped - 0x20u32, near_end);
        assert_eq!(near_end.max(wrapped), wrapped);
        assert_eq!(wrapped.max(near_end), wrapped);
        let mut s = near_end;
        s += 0x10;
        assert_eq!(s, SeqNumber(0));
    }

    #[test]
    fn tcp_repr_emits_what_it_parses() {
        let repr = TcpRepr {
            src_port: 80,
            dst_port: 40000,
            seq: SeqNumber(0xffff_fff0),
            ack: SeqNumber(7),
            flags: tcp_flags::SYN | tcp_flags::ACK,
            window: 65535,
            mss: Some(1460),
            window_scale: Some(7),
            sack_permitted: true,
        };
        let (src, dst) = (
            IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)),
            IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)),
        );
        let mut seg = vec![0u8; repr.header_len() + 5];
        seg[repr.header_len()..].copy_from_slice(b"hello");
        repr.emit(&mut seg, src, dst, TcpChecksum::Full);
        let parsed = Tcp::parse(&seg).unwrap();
        assert_eq!(parsed.header, repr);
        assert_eq!(parsed.payload, b"hello");
        // A correct checksum sums (with the pseudo header) to zero.
        let seed = ip_pseudo_header_sum(src, dst, PROTO_TCP, seg.len());
        assert_eq!(crate::checksum::finish(crate::checksum::sum(&seg, seed)), 0);
        // A partial checksum is the pseudo-header sum alone.
        repr.emit(&mut seg, src, dst, TcpChecksum::Partial);
        assert_eq!(be16(&seg, 16), !crate::checksum::finish(seed));
    }

    #[test]
    fn ipv4_rejects_lies_and_fragments() {
        let mut p = vec![0u8; 40];
        write_ipv4(
            &mut p,
            Ipv4Addr::new(1, 2, 3, 4),
            Ipv4Addr::new(5, 6, 7, 8),
            PROTO_UDP,
            20,
        );
        assert_eq!(Ipv4::parse(&p).unwrap().payload.len(), 20);
        assert_eq!(Ipv4::parse(&p[..39]).unwrap_err(), WireError::Truncated);
        p[6] = 0x20; // more fragments
        assert_eq!(Ipv4::parse(&p).unwrap_err(), WireError::Fragment);
        p[6] = 0x40;
        p[0] = 0x44; // header length 16 < 20
        assert_eq!(Ipv4::parse(&p).unwrap_err(), WireError::Malformed);
    }

    #[test]
    fn every_truncation_of_a_frame_is_an_error_not_a_panic() {
        let mut p = vec![0u8; 60];
        write_ipv4(
            &mut p,
            Ipv4Addr::new(1, 2, 3, 4),
            Ipv4Addr::new(5, 6, 7, 8),
            PROTO_TCP,
            40,
        );
        p[20 + 12] = 5 << 4;
        for n in 0..p.len() {
            if let Ok(ip) = Ipv4::parse(&p[..n]) {
                let _ = Tcp::parse(ip.payload);
            }
            let _ = Udp::parse(&p[..n]);
            let _ = Arp::parse(&p[..n]);
            let _ = IcmpEcho::parse(&p[..n]);
            let _ = Ethernet::parse(&p[..n]);
        }
    }
}
