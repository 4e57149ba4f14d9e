//! IPv6 (RFC 8200), ICMPv6 (RFC 4443) and Neighbor Discovery (RFC 4861, RDNSS from RFC 8106):
//! bounds-checked parsers and `Repr`-style emitters, in the manner of [`crate::wire`].
//!
//! Extension headers: hop-by-hop options (first only), routing headers with no segments left and
//! destination options are skipped, at most [`MAX_EXT_HEADERS`] of them; a fragment header is
//! [`WireError::Fragment`] (fragments to the gateway are dropped and counted, never
//! reassembled: limanet's guests see an MTU and the host kernel's sockets do the rest; between
//! guests they are switched), anything longer or stranger is [`WireError::Malformed`].

use crate::checksum;
use crate::wire::{self, MacAddr, WireError};
use std::net::{IpAddr, Ipv6Addr};

pub const IPV6_HEADER_LEN: usize = 40;
pub const PROTO_HOP_BY_HOP: u8 = 0;
pub const PROTO_ROUTING: u8 = 43;
pub const PROTO_FRAGMENT: u8 = 44;
pub const PROTO_ICMPV6: u8 = 58;
pub const PROTO_NO_NEXT: u8 = 59;
pub const PROTO_DEST_OPTS: u8 = 60;
/// Extension headers walked before a packet is refused as malformed: real stacks send one or
/// two; a long chain is an attack on whoever parses it.
pub const MAX_EXT_HEADERS: usize = 8;
/// The smallest MTU IPv6 allows (RFC 8200 5).
pub const IPV6_MIN_MTU: u16 = 1280;

pub const ICMPV6_DEST_UNREACHABLE: u8 = 1;
pub const ICMPV6_ECHO_REQUEST: u8 = 128;
pub const ICMPV6_ECHO_REPLY: u8 = 129;
pub const ND_ROUTER_SOLICIT: u8 = 133;
pub const ND_ROUTER_ADVERT: u8 = 134;
pub const ND_NEIGHBOR_SOLICIT: u8 = 135;
pub const ND_NEIGHBOR_ADVERT: u8 = 136;
pub const ND_REDIRECT: u8 = 137;

pub const ND_OPT_SOURCE_LL: u8 = 1;
pub const ND_OPT_TARGET_LL: u8 = 2;
pub const ND_OPT_PREFIX_INFO: u8 = 3;
pub const ND_OPT_MTU: u8 = 5;
pub const ND_OPT_RDNSS: u8 = 25;

/// All-nodes multicast, where unsolicited Router Advertisements go.
pub const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
/// All-routers multicast, where Router Solicitations go.
pub const ALL_ROUTERS: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 2);

/// An IPv6 packet with its extension headers skipped: `next_header` and `payload` are the
/// upper layer's.
#[derive(Debug, Clone, Copy)]
pub struct Ipv6<'a> {
    pub src: Ipv6Addr,
    pub dst: Ipv6Addr,
    pub hop_limit: u8,
    /// The upper-layer protocol, after any extension headers.
    pub next_header: u8,
    /// Extension headers skipped on the way to it.
    pub ext_headers: u8,
    pub payload: &'a [u8],
}

impl<'a> Ipv6<'a> {
    pub fn parse(p: &'a [u8]) -> Result<Self, WireError> {
        if p.len() < IPV6_HEADER_LEN {
            return Err(WireError::Truncated);
        }
        if p[0] >> 4 != 6 {
            return Err(WireError::Malformed);
        }
        let payload_len = usize::from(wire::be16(p, 4));
        // A zero payload length with a hop-by-hop header is a jumbogram: never on our links.
        let body = p
            .get(IPV6_HEADER_LEN..IPV6_HEADER_LEN + payload_len)
            .ok_or(WireError::Truncated)?;
        let mut next = p[6];
        let mut rest = body;
        let mut ext = 0u8;
        loop {
            match next {
                PROTO_HOP_BY_HOP | PROTO_ROUTING | PROTO_DEST_OPTS => {
                    // Hop-by-hop options may only come first (RFC 8200 4.3).
                    if next == PROTO_HOP_BY_HOP && ext > 0 {
                        return Err(WireError::Malformed);
                    }
                    if usize::from(ext) >= MAX_EXT_HEADERS {
                        return Err(WireError::Malformed);
                    }
                    if rest.len() < 8 {
                        return Err(WireError::Truncated);
                    }
                    let len = (usize::from(rest[1]) + 1) * 8;
                    if len > rest.len() {
                        return Err(WireError::Truncated);
                    }
                    // A routing header with segments left asks us to forward the packet
                    // somewhere else: limanet is no router for source routes.
                    if next == PROTO_ROUTING && rest[3] != 0 {
                        return Err(WireError::Malformed);
                    }
                    next = rest[0];
                    rest = &rest[len..];
                    ext += 1;
                }
                PROTO_FRAGMENT => return Err(WireError::Fragment),
                _ => break,
            }
        }
        Ok(Ipv6 {
            src: v6_at(p, 8),
            dst: v6_at(p, 24),
            hop_limit: p[7],
            next_header: next,
            ext_headers: ext,
            payload: rest,
        })
    }
}

/// Writes a 40-byte IPv6 header (no extension headers, traffic class and flow label zero).
pub fn write_ipv6(
    buf: &mut [u8],
    src: Ipv6Addr,
    dst: Ipv6Addr,
    next_header: u8,
    payload_len: usize,
    hop_limit: u8,
) {
    buf[0..4].copy_from_slice(&[0x60, 0, 0, 0]);
    buf[4..6].copy_from_slice(&(payload_len as u16).to_be_bytes());
    buf[6] = next_header;
    buf[7] = hop_limit;
    buf[8..24].copy_from_slice(&src.octets());
    buf[24..40].copy_from_slice(&dst.octets());
}

/// An ICMPv6 message: type, code and the body after the 4-byte header.
#[derive(Debug, Clone, Copy)]
pub struct Icmpv6<'a> {
    pub kind: u8,
    pub code: u8,
    pub body: &'a [u8],
}

impl<'a> Icmpv6<'a> {
    pub fn parse(p: &'a [u8]) -> Result<Self, WireError> {
        if p.len() < 4 {
            return Err(WireError::Truncated);
        }
        Ok(Icmpv6 {
            kind: p[0],
            code: p[1],
            body: &p[4..],
        })
    }
}

/// Builds an ICMPv6 message from `src` to `dst` with its checksum.
pub fn icmpv6_message(src: Ipv6Addr, dst: Ipv6Addr, kind: u8, code: u8, body: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(4 + body.len());
    m.extend_from_slice(&[kind, code, 0, 0]);
    m.extend_from_slice(body);
    let seed = wire::ip_pseudo_header_sum(IpAddr::V6(src), IpAddr::V6(dst), PROTO_ICMPV6, m.len());
    let sum = checksum::finish(checksum::sum(&m, seed));
    m[2..4].copy_from_slice(&sum.to_be_bytes());
    m
}

/// Whether an ICMPv6 message (header included) from `src` to `dst` has the right checksum.
pub fn icmpv6_checksum_ok(src: Ipv6Addr, dst: Ipv6Addr, message: &[u8]) -> bool {
    let seed = wire::ip_pseudo_header_sum(
        IpAddr::V6(src),
        IpAddr::V6(dst),
        PROTO_ICMPV6,
        message.len(),
    );
    checksum::finish(checksum::sum(message, seed)) == 0
}

/// The Ethernet address an IPv6 multicast address maps to (RFC 2464 7): 33:33 and its last
/// 32 bits.
pub fn multicast_mac(ip: Ipv6Addr) -> MacAddr {
    let o = ip.octets();
    [0x33, 0x33, o[12], o[13], o[14], o[15]]
}

/// The solicited-node multicast address of `ip` (RFC 4291 2.7.1): where Neighbor
/// Solicitations for it are sent.
pub fn solicited_node(ip: Ipv6Addr) -> Ipv6Addr {
    let o = ip.octets();
    Ipv6Addr::from([
        0xff, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0xff, o[13], o[14], o[15],
    ])
}

/// The link-local address derived from a MAC by modified EUI-64 (RFC 4291 appendix A).
pub fn link_local_from_mac(mac: MacAddr) -> Ipv6Addr {
    Ipv6Addr::from([
        0xfe,
        0x80,
        0,
        0,
        0,
        0,
        0,
        0,
        mac[0] ^ 0x02,
        mac[1],
        mac[2],
        0xff,
        0xfe,
        mac[3],
        mac[4],
        mac[5],
    ])
}

/// The MAC an EUI-64 interface identifier was formed from (`xx:xx:xx:ff:fe:xx:xx:xx` with the
/// universal/local bit flipped), if `ip`'s identifier has that form.
pub fn mac_of_eui64(ip: Ipv6Addr) -> Option<MacAddr> {
    let o = ip.octets();
    (o[11] == 0xff && o[12] == 0xfe).then_some([o[8] ^ 0x02, o[9], o[10], o[13], o[14], o[15]])
}

/// Walks Neighbor Discovery options (type, length in units of 8 bytes, value). A zero length
/// or an option running past the end is malformed (RFC 4861 4.6: the message is dropped).
pub fn nd_options(mut p: &[u8]) -> Result<Vec<(u8, &[u8])>, WireError> {
    let mut options = Vec::new();
    while !p.is_empty() {
        if p.len() < 2 {
            return Err(WireError::Malformed);
        }
        let len = usize::from(p[1]) * 8;
        if len == 0 || len > p.len() {
            return Err(WireError::Malformed);
        }
        options.push((p[0], &p[2..len]));
        p = &p[len..];
    }
    Ok(options)
}

/// The link-layer address option (source or target) of type `kind`, if present.
fn ll_option(options: &[(u8, &[u8])], kind: u8) -> Option<MacAddr> {
    options
        .iter()
        .find(|(k, v)| *k == kind && v.len() >= 6)
        .map(|(_, v)| mac_of(v))
}

/// A Neighbor Solicitation (RFC 4861 4.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NeighborSolicit {
    pub target: Ipv6Addr,
    pub source_ll: Option<MacAddr>,
}

impl NeighborSolicit {
    /// Parses the body of an ICMPv6 type 135 message (after the 4-byte header).
    pub fn parse(body: &[u8]) -> Result<Self, WireError> {
        if body.len() < 20 {
            return Err(WireError::Truncated);
        }
        let options = nd_options(&body[20..])?;
        Ok(NeighborSolicit {
            target: v6_at(body, 4),
            source_ll: ll_option(&options, ND_OPT_SOURCE_LL),
        })
    }

    pub fn emit_body(&self) -> Vec<u8> {
        let mut b = vec![0u8; 4];
        b.extend_from_slice(&self.target.octets());
        if let Some(mac) = self.source_ll {
            b.extend_from_slice(&[ND_OPT_SOURCE_LL, 1]);
            b.extend_from_slice(&mac);
        }
        b
    }
}

/// A Neighbor Advertisement (RFC 4861 4.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NeighborAdvert {
    pub router: bool,
    pub solicited: bool,
    pub override_: bool,
    pub target: Ipv6Addr,
    pub target_ll: Option<MacAddr>,
}

impl NeighborAdvert {
    pub fn parse(body: &[u8]) -> Result<Self, WireError> {
        if body.len() < 20 {
            return Err(WireError::Truncated);
        }
        let options = nd_options(&body[20..])?;
        Ok(NeighborAdvert {
            router: body[0] & 0x80 != 0,
            solicited: body[0] & 0x40 != 0,
            override_: body[0] & 0x20 != 0,
            target: v6_at(body, 4),
            target_ll: ll_option(&options, ND_OPT_TARGET_LL),
        })
    }

    pub fn emit_body(&self) -> Vec<u8> {
        let flags = (u8::from(self.router) << 7)
            | (u8::from(self.solicited) << 6)
            | (u8::from(self.override_) << 5);
        let mut b = vec![flags, 0, 0, 0];
        b.extend_from_slice(&self.target.octets());
        if let Some(mac) = self.target_ll {
            b.extend_from_slice(&[ND_OPT_TARGET_LL, 1]);
            b.extend_from_slice(&mac);
        }
        b
    }
}

/// A prefix information option (RFC 4861 4.6.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PrefixInfo {
    pub prefix: Ipv6Addr,
    pub prefix_len: u8,
    /// L: the prefix is on-link.
    pub on_link: bool,
    /// A: hosts may form addresses in it by SLAAC (RFC 4862).
    pub autonomous: bool,
    pub valid_lifetime: u32,
    pub preferred_lifetime: u32,
}

/// A Router Advertisement (RFC 4861 4.2) with the options limanet sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouterAdvert {
    pub hop_limit: u8,
    /// M: addresses from DHCPv6.
    pub managed: bool,
    /// O: other configuration (DNS) from DHCPv6.
    pub other: bool,
    pub router_lifetime: u16,
    pub reachable_time: u32,
    pub retrans_timer: u32,
    pub source_ll: Option<MacAddr>,
    pub mtu: Option<u32>,
    pub prefixes: Vec<PrefixInfo>,
    /// RDNSS (RFC 8106): lifetime and servers.
    pub rdnss: Option<(u32, Vec<Ipv6Addr>)>,
}

impl RouterAdvert {
    pub fn parse(body: &[u8]) -> Result<Self, WireError> {
        if body.len() < 12 {
            return Err(WireError::Truncated);
        }
        let options = nd_options(&body[12..])?;
        let mut ra = RouterAdvert {
            hop_limit: body[0],
            managed: body[1] & 0x80 != 0,
            other: body[1] & 0x40 != 0,
            router_lifetime: wire::be16(body, 2),
            reachable_time: wire::be32(body, 4),
            retrans_timer: wire::be32(body, 8),
            source_ll: ll_option(&options, ND_OPT_SOURCE_LL),
            mtu: None,
            prefixes: Vec::new(),
            rdnss: None,
        };
        for (kind, v) in options {
            match kind {
                ND_OPT_MTU if v.len() >= 6 => ra.mtu = Some(wire::be32(v, 2)),
                ND_OPT_PREFIX_INFO if v.len() >= 30 => ra.prefixes.push(PrefixInfo {
                    prefix_len: v[0],
                    on_link: v[1] & 0x80 != 0,
                    autonomous: v[1] & 0x40 != 0,
                    valid_lifetime: wire::be32(v, 2),
                    preferred_lifetime: wire::be32(v, 6),
                    prefix: v6_at(v, 14),
                }),
                ND_OPT_RDNSS if v.len() >= 6 => {
                    let servers = v[6..].chunks_exact(16).map(|c| v6_at(c, 0)).collect();
                    ra.rdnss = Some((wire::be32(v, 2), servers));
                }
                _ => {}
            }
        }
        Ok(ra)
    }

    /// The message body (after the ICMPv6 header).
    pub fn emit_body(&self) -> Vec<u8> {
        let flags = (u8::from(self.managed) << 7) | (u8::from(self.other) << 6);
        let mut b = vec![self.hop_limit, flags];
        b.extend_from_slice(&self.router_lifetime.to_be_bytes());
        b.extend_from_slice(&self.reachable_time.to_be_bytes());
        b.extend_from_slice(&self.retrans_timer.to_be_bytes());
        if let Some(mac) = self.source_ll {
            b.extend_from_slice(&[ND_OPT_SOURCE_LL, 1]);
            b.extend_from_slice(&mac);
        }
        if let Some(mtu) = self.mtu {
            b.extend_from_slice(&[ND_OPT_MTU, 1, 0, 0]);
            b.extend_from_slice(&mtu.to_be_bytes());
        }
        for p in &self.prefixes {
            let flags = (u8::from(p.on_link) << 7) | (u8::from(p.autonomous) << 6);
            b.extend_from_slice(&[ND_OPT_PREFIX_INFO, 4, p.prefix_len, flags]);
            b.extend_from_slice(&p.valid_lifetime.to_be_bytes());
            b.extend_from_slice(&p.preferred_lifetime.to_be_bytes());
            b.extend_from_slice(&[0; 4]);
            b.extend_from_slice(&p.prefix.octets());
        }
        if let Some((lifetime, servers)) = &self.rdnss {
            if !servers.is_empty() {
                b.extend_from_slice(&[ND_OPT_RDNSS, (1 + 2 * servers.len()) as u8, 0, 0]);
                b.extend_from_slice(&lifetime.to_be_bytes());
                for s in servers {
                    b.extend_from_slice(&s.octets());
                }
            }
        }
        b
    }
}

pub fn v6_at(p: &[u8], at: usize) -> Ipv6Addr {
    let mut o = [0u8; 16];
    o.copy_from_slice(&p[at..at + 16]);
    Ipv6Addr::from(o)
}

fn mac_of(p: &[u8]) -> MacAddr {
    let mut mac = [0; 6];
    mac.copy_from_slice(&p[..6]);
    mac
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(next: u8, body: &[u8]) -> Vec<u8> {
        let mut p = vec![0u8; IPV6_HEADER_LEN];
        write_ipv6(
            &mut p,
            "fd00::15".parse().unwrap(),
            "fd00::2".parse().unwrap(),
            next,
            body.len(),
            64,
        );
        p.extend_from_slice(body);
        p
    }

    #[test]
    fn extension_headers_are_walked_and_bounded() {
        // Hop-by-hop (8 bytes) then destination options (8 bytes) then UDP.
        let mut body = vec![PROTO_DEST_OPTS, 0, 1, 4, 0, 0, 0, 0];
        body.extend_from_slice(&[wire::PROTO_UDP, 0, 1, 4, 0, 0, 0, 0]);
        body.extend_from_slice(&[0; 8]);
        let p = packet(PROTO_HOP_BY_HOP, &body);
        let ip = Ipv6::parse(&p).unwrap();
        assert_eq!(ip.next_header, wire::PROTO_UDP);
        assert_eq!(ip.ext_headers, 2);
        assert_eq!(ip.payload.len(), 8);
        // A fragment header anywhere in the chain is a fragment.
        let frag = packet(PROTO_FRAGMENT, &[wire::PROTO_UDP, 0, 0, 1, 0, 0, 0, 1]);
        assert_eq!(Ipv6::parse(&frag).unwrap_err(), WireError::Fragment);
        // Hop-by-hop after another header is malformed.
        let mut late = vec![PROTO_HOP_BY_HOP, 0, 1, 4, 0, 0, 0, 0];
        late.extend_from_slice(&[wire::PROTO_UDP, 0, 1, 4, 0, 0, 0, 0]);
        assert_eq!(
            Ipv6::parse(&packet(PROTO_DEST_OPTS, &late)).unwrap_err(),
            WireError::Malformed
        );
        // A chain longer than the bound is refused.
        let mut chain = Vec::new();
        for _ in 0..=MAX_EXT_HEADERS {
            chain.extend_from_slice(&[PROTO_DEST_OPTS, 0, 1, 4, 0, 0, 0, 0]);
        }
        assert_eq!(
            Ipv6::parse(&packet(PROTO_DEST_OPTS, &chain)).unwrap_err(),
            WireError::Malformed
        );
        // A header whose length runs past the packet is truncated, not read out of bounds.
        let long = packet(PROTO_DEST_OPTS, &[wire::PROTO_UDP, 3, 0, 0, 0, 0, 0, 0]);
        assert_eq!(Ipv6::parse(&long).unwrap_err(), WireError::Truncated);
        // A routing header with segments left is not forwarded.
        let route = packet(PROTO_ROUTING, &[wire::PROTO_UDP, 0, 0, 1, 0, 0, 0, 0]);
        assert_eq!(Ipv6::parse(&route).unwrap_err(), WireError::Malformed);
        for n in 0..p.len() {
            let _ = Ipv6::parse(&p[..n]);
        }
    }

    #[test]
    fn router_advert_round_trips() {
        let ra = RouterAdvert {
            hop_limit: 64,
            managed: false,
            other: true,
            router_lifetime: 1800,
            reachable_time: 0,
            retrans_timer: 0,
            source_ll: Some([0x52, 0x55, 1, 2, 3, 4]),
            mtu: Some(1500),
            prefixes: vec![PrefixInfo {
                prefix: "fd00:192:168:5::".parse().unwrap(),
                prefix_len: 64,
                on_link: true,
                autonomous: true,
                valid_lifetime: 3600,
                preferred_lifetime: 1800,
            }],
            rdnss: Some((1800, vec!["fd00:192:168:5::3".parse().unwrap()])),
        };
        let body = ra.emit_body();
        assert_eq!(RouterAdvert::parse(&body).unwrap(), ra);
        // Every truncation is an error or a shorter option list, never a panic.
        for n in 0..body.len() {
            let _ = RouterAdvert::parse(&body[..n]);
        }
        let ns = NeighborSolicit {
            target: "fd00::2".parse().unwrap(),
            source_ll: Some([2, 0, 0, 0, 0, 1]),
        };
        assert_eq!(NeighborSolicit::parse(&ns.emit_body()).unwrap(), ns);
        let na = NeighborAdvert {
            router: true,
            solicited: true,
            override_: true,
            target: "fd00::2".parse().unwrap(),
            target_ll: Some([2, 0, 0, 0, 0, 2]),
        };
        assert_eq!(NeighborAdvert::parse(&na.emit_body()).unwrap(), na);
        // A zero-length option is malformed (RFC 4861 4.6).
        let mut bad = ns.emit_body();
        bad[21] = 0;
        assert_eq!(
            NeighborSolicit::parse(&bad).unwrap_err(),
            WireError::Malformed
        );
    }

    #[test]
    fn addresses_and_checksums() {
        let ip: Ipv6Addr = "fd00::1:2:3".parse().unwrap();
        assert_eq!(
            solicited_node(ip),
            "ff02::1:ff02:3".parse::<Ipv6Addr>().unwrap()
        );
        assert_eq!(multicast_mac(ALL_NODES), [0x33, 0x33, 0, 0, 0, 1]);
        assert_eq!(
            link_local_from_mac([0x52, 0x55, 0xc0, 0xa8, 0x05, 0x02]),
            "fe80::5055:c0ff:fea8:502".parse::<Ipv6Addr>().unwrap()
        );
        let mac = [0x52, 0x55, 0xc0, 0xa8, 0x05, 0x02];
        assert_eq!(mac_of_eui64(link_local_from_mac(mac)), Some(mac));
        assert_eq!(mac_of_eui64("fd00::15".parse().unwrap()), None);
        let src = "fe80::1".parse().unwrap();
        let m = icmpv6_message(src, ALL_NODES, ND_ROUTER_ADVERT, 0, &[0; 12]);
        assert!(icmpv6_checksum_ok(src, ALL_NODES, &m));
        assert!(!icmpv6_checksum_ok(src, ALL_ROUTERS, &m));
    }
}
