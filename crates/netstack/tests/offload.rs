//! Ports with offloads (a TAP with a virtio-net header) beside ports without: partial
//! checksums are trusted only from the former, super-segments reach the latter cut and
//! checksummed, and the TCP translator sends super-segments only where they are understood.

mod support;

use limanet_netstack::vnet::{self, VnetHeader};
use limanet_netstack::wire::{tcp_flags as F, MacAddr};
use limanet_netstack::{NetConfig, PortId, Stack};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Instant;
use support::*;

const GUEST3_MAC: MacAddr = [0x52, 0x55, 0x55, 0x00, 0x00, 0x11];
const GUEST3_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 5, 17);

/// A (offloads, GUEST_MAC), B (none, GUEST2_MAC), C (offloads, GUEST3_MAC), all known.
struct Net {
    stack: Stack,
    host: FakeHost,
    a: PortId,
    b: PortId,
    c: PortId,
    now: Instant,
}

impl Net {
    fn new() -> Self {
        let mut stack = Stack::new(NetConfig::default()).expect("valid config");
        let (a, b, c) = (stack.add_port(), stack.add_port(), stack.add_port());
        stack.set_port_offloads(a, true);
        stack.set_port_offloads(c, true);
        let mut net = Net {
            stack,
            host: FakeHost::new(),
            a,
            b,
            c,
            now: Instant::now(),
        };
        net.plain(a, &arp_request(GUEST_MAC, GUEST_IP, GW_IP));
        net.plain(b, &arp_request(GUEST2_MAC, GUEST2_IP, GW_IP));
        net.plain(c, &arp_request(GUEST3_MAC, GUEST3_IP, GW_IP));
        drain(&mut net.stack);
        net
    }

    fn plain(&mut self, port: PortId, frame: &[u8]) {
        let now = self.now;
        self.stack.handle_frame(&mut self.host, now, port, frame);
        self.stack.end_batch(&mut self.host);
    }

    fn offloaded(&mut self, port: PortId, frame: &[u8], vnet: &VnetHeader) {
        let now = self.now;
        self.stack
            .handle_offloaded_frame(&mut self.host, now, port, frame, vnet);
        self.stack.end_batch(&mut self.host);
    }
}

/// A TCP frame from `src_mac` to `dst_mac` whose checksum holds only the pseudo-header sum,
/// as a kernel with checksum offload hands it over, and its virtio-net header.
fn partial_tcp(seg: &Seg, src_mac: MacAddr, dst_mac: MacAddr, mss: usize) -> (Vec<u8>, VnetHeader) {
    let mut l4 = tcp_bytes(seg);
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(&seg.src.ip().octets());
    pseudo.extend_from_slice(&seg.dst.ip().octets());
    pseudo.extend_from_slice(&[0, 6]);
    pseudo.extend_from_slice(&(l4.len() as u16).to_be_bytes());
    let folded = !inet_checksum(&[&pseudo]);
    l4[16..18].copy_from_slice(&folded.to_be_bytes());
    let frame = ethernet(
        dst_mac,
        src_mac,
        0x0800,
        &ipv4(*seg.src.ip(), *seg.dst.ip(), 6, &l4),
    );
    let hdr = VnetHeader::tcpv4(54, seg.payload.len(), mss);
    (frame, hdr)
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 % 253) as u8).collect()
}

#[test]
fn super_segment_reaches_a_port_without_offloads_cut_and_checksummed() {
    let mut net = Net::new();
    let mut seg = Seg::new(
        SocketAddrV4::new(GUEST_IP, 4000),
        SocketAddrV4::new(GUEST2_IP, 80),
        F::ACK | F::PSH,
    );
    seg.seq = 5000;
    seg.payload = pattern(10_000);
    let (frame, hdr) = partial_tcp(&seg, GUEST_MAC, GUEST2_MAC, 1448);
    assert_eq!(hdr.gso(), vnet::GSO_TCPV4);
    net.offloaded(net.a, &frame, &hdr);
    let out: Vec<_> = net.stack.out.queue.drain(..).collect();
    assert!(out.iter().all(|t| t.port == net.b && t.vnet.is_none()));
    let segs: Vec<OutTcp> = out
        .iter()
        .map(|t| parse_tcp(&t.frame).expect("TCP"))
        .collect();
    assert_eq!(segs.len(), 7, "10000 bytes in 1448-byte segments");
    let mut joined = Vec::new();
    for (i, s) in segs.iter().enumerate() {
        assert_eq!(s.seq, 5000 + 1448 * i as u32);
        assert_eq!(s.has(F::PSH), i == 6, "PSH on the last segment only");
        joined.extend_from_slice(&s.payload);
    }
    assert_eq!(joined, seg.payload);
    assert_eq!(net.stack.stats.software_segmented, 1);

    // To a port with offloads the super-segment goes whole, with its header.
    let (frame, hdr) = partial_tcp(&seg, GUEST_MAC, GUEST3_MAC, 1448);
    net.offloaded(net.a, &frame, &hdr);
    let out: Vec<_> = net.stack.out.queue.drain(..).collect();
    assert_eq!(out.len(), 1);
    assert_eq!((out[0].port, out[0].vnet), (net.c, Some(hdr)));
    assert_eq!(out[0].frame, frame);

    // A port without offloads still reaches a port with them, with no offload state.
    let plain = ethernet(
        GUEST_MAC,
        GUEST2_MAC,
        0x0800,
        &ipv4(GUEST2_IP, GUEST_IP, 6, &tcp_bytes(&seg)),
    );
    net.plain(net.b, &plain);
    let out: Vec<_> = net.stack.out.queue.drain(..).collect();
    assert_eq!(out.len(), 1);
    assert_eq!((out[0].port, out[0].vnet), (net.a, None));
}

#[test]
fn partial_checksums_are_trusted_only_from_ports_with_offloads() {
    let mut net = Net::new();
    let mut seg = Seg::new(
        SocketAddrV4::new(GUEST_IP, 4000),
        SocketAddrV4::new(REMOTE_IP, 80),
        F::SYN,
    );
    seg.seq = 1000;
    seg.mss = Some(1460);
    let (frame, hdr) = partial_tcp(&seg, GUEST_MAC, GW_MAC, 1460);
    net.offloaded(net.a, &frame, &hdr);
    assert_eq!(
        net.host.connects.len(),
        1,
        "SYN with a partial checksum from A"
    );
    assert_eq!(net.stack.stats.bad_checksum, 0);
    // The same partial checksum from a port without offloads is a bad checksum.
    let mut seg2 = seg.clone();
    seg2.src = SocketAddrV4::new(GUEST2_IP, 4000);
    let (frame, _) = partial_tcp(&seg2, GUEST2_MAC, GW_MAC, 1460);
    net.plain(net.b, &frame);
    assert_eq!(net.host.connects.len(), 1);
    assert_eq!(net.stack.stats.bad_checksum, 1);
    // And from a port with offloads, a header without NEEDS_CSUM or DATA_VALID means the
    // checksum is verified as usual.
    let mut seg3 = seg.clone();
    seg3.src = SocketAddrV4::new(GUEST_IP, 4001);
    let (frame, _) = partial_tcp(&seg3, GUEST_MAC, GW_MAC, 1460);
    net.offloaded(net.a, &frame, &VnetHeader::default());
    assert_eq!(net.host.connects.len(), 1);
    assert_eq!(net.stack.stats.bad_checksum, 2);
}

/// Opens a connection from `guest` on `port` to the remote and returns (host socket, our
/// initial sequence number + 1).
fn connect(net: &mut Net, port: PortId, mac: MacAddr, guest: SocketAddrV4) -> (usize, u32) {
    let mut syn = Seg::new(guest, SocketAddrV4::new(REMOTE_IP, 80), F::SYN);
    syn.seq = 1000;
    syn.mss = Some(1460);
    syn.wscale = Some(7);
    syn.window = 65535;
    let l4 = tcp_bytes(&syn);
    net.plain(
        port,
        &ethernet(GW_MAC, mac, 0x0800, &ipv4(*guest.ip(), REMOTE_IP, 6, &l4)),
    );
    let sock = net.host.last_tcp();
    let now = net.now;
    net.stack.on_tcp_connected(&mut net.host, now, sock, Ok(()));
    let synack = drain_tcp(&mut net.stack)
        .into_iter()
        .find(|s| s.flags == F::SYN | F::ACK)
        .expect("SYN-ACK");
    let mut ack = Seg::new(guest, SocketAddrV4::new(REMOTE_IP, 80), F::ACK);
    ack.seq = 1001;
    ack.ack = synack.seq.wrapping_add(1);
    ack.window = 8192; // 1 MiB with the scale
    let l4 = tcp_bytes(&ack);
    net.plain(
        port,
        &ethernet(GW_MAC, mac, 0x0800, &ipv4(*guest.ip(), REMOTE_IP, 6, &l4)),
    );
    drain(&mut net.stack);
    (sock, synack.seq.wrapping_add(1))
}

#[test]
fn translator_sends_super_segments_only_to_ports_with_offloads() {
    let mut net = Net::new();
    let data = pattern(300_000);
    for (port, mac, ip) in [(net.a, GUEST_MAC, GUEST_IP), (net.b, GUEST2_MAC, GUEST2_IP)] {
        let (sock, isn) = connect(&mut net, port, mac, SocketAddrV4::new(ip, 4000));
        net.host.push_recv(sock, &data);
        let now = net.now;
        readable(&mut net.stack, &mut net.host, now, sock);
        let out: Vec<_> = net.stack.out.queue.drain(..).collect();
        let mut joined = Vec::new();
        let mut largest = 0;
        for mut t in out {
            assert_eq!(t.port, port);
            match t.vnet {
                Some(v) => {
                    assert!(net.stack.out.offloads(port));
                    assert_eq!(v.flags, vnet::F_NEEDS_CSUM);
                    let payload = t.frame.len() - 54;
                    if payload > 1460 {
                        assert_eq!((v.gso(), v.gso_size), (vnet::GSO_TCPV4, 1460));
                    }
                    // Partial checksum: complete it as the guest's kernel would.
                    vnet::complete_checksum(&mut t.frame, &v).expect("checksum in range");
                }
                None => assert!(!net.stack.out.offloads(port)),
            }
            let s = parse_tcp(&t.frame).expect("valid TCP once completed");
            assert_eq!(s.seq, isn.wrapping_add(joined.len() as u32));
            largest = largest.max(s.payload.len());
            joined.extend_from_slice(&s.payload);
        }
        assert_eq!(joined, data, "every byte once, in order");
        if port == net.a {
            assert!(largest > 60_000, "super-segments to A (largest {largest})");
        } else {
            assert_eq!(largest, 1460, "MSS-sized segments to B");
        }
    }
}
