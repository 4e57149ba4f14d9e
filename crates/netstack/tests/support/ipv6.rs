//! IPv6 frames as a guest sends them, and a checking parser for what the stack emits (its
//! own `wire6` builds the headers; checksums are verified independently here).

use limanet_netstack::checksum;
use limanet_netstack::wire::{self, MacAddr};
use limanet_netstack::wire6::*;
use limanet_netstack::Stack;
use std::net::{IpAddr, Ipv6Addr, SocketAddrV6};

use super::{GUEST_MAC, GW_MAC};

/// An Ethernet frame carrying an IPv6 packet with `next` and `l4` (checksums done by the
/// caller).
pub fn frame6(
    src_mac: MacAddr,
    dst_mac: MacAddr,
    src: Ipv6Addr,
    dst: Ipv6Addr,
    next: u8,
    hop: u8,
    l4: &[u8],
) -> Vec<u8> {
    let mut f = vec![0u8; 14 + 40];
    wire::write_ethernet(&mut f, dst_mac, src_mac, wire::ETHERTYPE_IPV6);
    write_ipv6(&mut f[14..], src, dst, next, l4.len(), hop);
    f.extend_from_slice(l4);
    f
}

pub fn icmp6_frame(
    src_mac: MacAddr,
    dst_mac: MacAddr,
    src: Ipv6Addr,
    dst: Ipv6Addr,
    kind: u8,
    body: &[u8],
) -> Vec<u8> {
    let m = icmpv6_message(src, dst, kind, 0, body);
    frame6(src_mac, dst_mac, src, dst, PROTO_ICMPV6, 255, &m)
}

pub fn l4_with_checksum(
    src: Ipv6Addr,
    dst: Ipv6Addr,
    proto: u8,
    mut l4: Vec<u8>,
    at: usize,
) -> Vec<u8> {
    let seed = wire::ip_pseudo_header_sum(IpAddr::V6(src), IpAddr::V6(dst), proto, l4.len());
    let mut sum = checksum::finish(checksum::sum(&l4, seed));
    if sum == 0 && proto == wire::PROTO_UDP {
        sum = 0xffff;
    }
    l4[at..at + 2].copy_from_slice(&sum.to_be_bytes());
    l4
}

pub fn udp6_frame(
    src: SocketAddrV6,
    dst: SocketAddrV6,
    dst_mac: MacAddr,
    payload: &[u8],
) -> Vec<u8> {
    let mut u = Vec::new();
    u.extend_from_slice(&src.port().to_be_bytes());
    u.extend_from_slice(&dst.port().to_be_bytes());
    u.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    u.extend_from_slice(&[0, 0]);
    u.extend_from_slice(payload);
    let u = l4_with_checksum(*src.ip(), *dst.ip(), wire::PROTO_UDP, u, 6);
    frame6(
        GUEST_MAC,
        dst_mac,
        *src.ip(),
        *dst.ip(),
        wire::PROTO_UDP,
        64,
        &u,
    )
}

pub fn tcp6_frame(
    src: SocketAddrV6,
    dst: SocketAddrV6,
    seq: u32,
    ack: u32,
    flags: u8,
    payload: &[u8],
) -> Vec<u8> {
    let mut t = vec![0u8; 20];
    t[0..2].copy_from_slice(&src.port().to_be_bytes());
    t[2..4].copy_from_slice(&dst.port().to_be_bytes());
    t[4..8].copy_from_slice(&seq.to_be_bytes());
    t[8..12].copy_from_slice(&ack.to_be_bytes());
    t[12] = 5 << 4;
    t[13] = flags;
    t[14..16].copy_from_slice(&65535u16.to_be_bytes());
    t.extend_from_slice(payload);
    let t = l4_with_checksum(*src.ip(), *dst.ip(), wire::PROTO_TCP, t, 16);
    frame6(
        GUEST_MAC,
        GW_MAC,
        *src.ip(),
        *dst.ip(),
        wire::PROTO_TCP,
        64,
        &t,
    )
}

/// A parsed IPv6 frame the stack emitted, with its checksum verified.
pub struct Out6 {
    pub dst_mac: MacAddr,
    pub src: Ipv6Addr,
    pub dst: Ipv6Addr,
    pub next: u8,
    pub hop: u8,
    pub l4: Vec<u8>,
}

pub fn parse6(frame: &[u8]) -> Option<Out6> {
    let eth = wire::Ethernet::parse(frame).ok()?;
    if eth.ethertype != wire::ETHERTYPE_IPV6 {
        return None;
    }
    let ip = Ipv6::parse(eth.payload).ok()?;
    let seed = wire::ip_pseudo_header_sum(
        IpAddr::V6(ip.src),
        IpAddr::V6(ip.dst),
        ip.next_header,
        ip.payload.len(),
    );
    assert_eq!(
        checksum::finish(checksum::sum(ip.payload, seed)),
        0,
        "emitted IPv6 packet has a bad checksum"
    );
    Some(Out6 {
        dst_mac: eth.dst,
        src: ip.src,
        dst: ip.dst,
        next: ip.next_header,
        hop: ip.hop_limit,
        l4: ip.payload.to_vec(),
    })
}

pub fn drain6(stack: &mut Stack) -> Vec<Out6> {
    stack
        .out
        .queue
        .drain(..)
        .filter_map(|f| parse6(&f.frame))
        .collect()
}
