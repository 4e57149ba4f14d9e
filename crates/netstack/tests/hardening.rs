//! Attacks by a hostile guest on the I/O-free core, each reproduced with hand-built frames and
//! followed by the defined reaction, while an honest guest on another port keeps working:
//! SYN floods and connection floods, spoofed source IPs and MACs, floods of source MACs, DHCP
//! DECLINE/RELEASE with another guest's MAC, DHCP pool exhaustion, bad checksums.

mod support;

use limanet_netstack::wire::{tcp_flags as F, MacAddr};
use limanet_netstack::{NetConfig, PortId, Stack};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};
use support::*;

fn send(stack: &mut Stack, host: &mut FakeHost, now: Instant, port: PortId, frame: &[u8]) {
    stack.handle_frame(host, now, port, frame);
    stack.end_batch(host);
}

/// `frame` with its Ethernet source replaced.
fn from_mac(mut frame: Vec<u8>, mac: MacAddr) -> Vec<u8> {
    frame[6..12].copy_from_slice(&mac);
    frame
}

fn syn(src: SocketAddrV4, dst: SocketAddrV4) -> Vec<u8> {
    let mut s = Seg::new(src, dst, F::SYN);
    s.seq = 1000;
    tcp_frame(&s)
}

fn remote(port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(REMOTE_IP, port)
}

/// Two guests, A (attacker, GUEST_MAC/GUEST_IP) and B (honest, GUEST2_MAC/GUEST2_IP), each on
/// its own port, both known to the switch.
struct Net {
    stack: Stack,
    host: FakeHost,
    a: PortId,
    b: PortId,
    now: Instant,
}

impl Net {
    fn new(cfg: NetConfig) -> Self {
        let mut stack = Stack::new(cfg).expect("valid config");
        let a = stack.add_port();
        let b = stack.add_port();
        let mut net = Net {
            stack,
            host: FakeHost::new(),
            a,
            b,
            now: Instant::now(),
        };
        net.send(a, &arp_request(GUEST_MAC, GUEST_IP, GW_IP));
        net.send(b, &arp_request(GUEST2_MAC, GUEST2_IP, GW_IP));
        let replies = drain(&mut net.stack)
            .iter()
            .filter(|(_, f)| f[6..12] == GW_MAC)
            .count();
        assert_eq!(replies, 2, "both guests get ARP replies");
        net
    }

    fn send(&mut self, port: PortId, frame: &[u8]) {
        send(&mut self.stack, &mut self.host, self.now, port, frame);
    }

    /// B pings the gateway and connects to the outside: true if both work.
    fn honest_guest_works(&mut self, gport: u16) -> bool {
        let b = self.b;
        let ping = from_mac(ping_frame(GUEST2_IP, GW_IP, 7, gport, b"probe"), GUEST2_MAC);
        self.send(b, &ping);
        let pong = drain(&mut self.stack)
            .iter()
            .any(|(p, f)| *p == b && parse_icmp(f).is_some_and(|i| i.2 == 0));
        let connects = self.host.connects.len();
        let s = from_mac(
            syn(SocketAddrV4::new(GUEST2_IP, gport), remote(80)),
            GUEST2_MAC,
        );
        self.send(b, &s);
        if self.host.connects.len() != connects + 1 {
            return false;
        }
        let sock = self.host.last_tcp();
        let now = self.now;
        self.stack
            .on_tcp_connected(&mut self.host, now, sock, Ok(()));
        let Some(synack) = drain_tcp(&mut self.stack)
            .into_iter()
            .find(|s| s.flags == F::SYN | F::ACK && *s.dst.ip() == GUEST2_IP)
        else {
            return false;
        };
        // Complete the handshake, then reset: the probe leaves no flow behind.
        let gaddr = SocketAddrV4::new(GUEST2_IP, gport);
        for flags in [F::ACK, F::RST] {
            let mut seg = Seg::new(gaddr, remote(80), flags);
            seg.seq = 1001;
            seg.ack = synack.seq.wrapping_add(1);
            self.send(b, &from_mac(tcp_frame(&seg), GUEST2_MAC));
        }
        drain(&mut self.stack);
        pong && self.host.tcp[&sock].closed.is_some()
    }
}

#[test]
fn syn_flood_is_capped_per_guest_and_half_open_flows_time_out() {
    let cfg = NetConfig {
        max_tcp_half_open_per_port: 8,
        max_tcp_flows_per_port: 16,
        ..NetConfig::default()
    };
    let mut net = Net::new(cfg);
    let a = net.a;
    // A floods SYNs to a port whose host connects never complete.
    for i in 0..1000u16 {
        net.send(a, &syn(SocketAddrV4::new(GUEST_IP, 10000 + i), remote(80)));
    }
    assert_eq!(
        net.host.connects.len(),
        8,
        "half-open flows per guest are capped"
    );
    let rsts = drain_tcp(&mut net.stack);
    assert_eq!(rsts.iter().filter(|s| s.has(F::RST)).count(), 992);
    assert_eq!(net.stack.tcp_stats().port_limit, 992);
    // B is not affected.
    let mut ok = 0;
    for i in 0..100 {
        ok += usize::from(net.honest_guest_works(20000 + i));
    }
    assert_eq!(ok, 100, "honest guest's probes during the flood");
    // The SYN timeout frees A's half-open flows (RST to the guest, host socket closed).
    let flows_before = net.stack.tcp_flows();
    net.now += Duration::from_secs(16);
    let now = net.now;
    net.stack.on_timeout(&mut net.host, now);
    assert_eq!(net.stack.tcp_stats().syn_timeouts, 8);
    assert_eq!(net.stack.tcp_flows(), flows_before - 8);
    let closed = net
        .host
        .connects
        .iter()
        .take(8)
        .filter(|(s, _)| net.host.tcp[s].closed.is_some())
        .count();
    assert_eq!(closed, 8);
    // A may connect again.
    let before = net.host.connects.len();
    net.send(a, &syn(SocketAddrV4::new(GUEST_IP, 30000), remote(80)));
    assert_eq!(net.host.connects.len(), before + 1);
    assert!(net.host.violations.is_empty());
}

#[test]
fn established_connections_per_guest_are_capped() {
    let cfg = NetConfig {
        max_tcp_flows_per_port: 5,
        ..NetConfig::default()
    };
    let mut net = Net::new(cfg);
    let a = net.a;
    for i in 0..20u16 {
        net.send(a, &syn(SocketAddrV4::new(GUEST_IP, 10000 + i), remote(80)));
        if let Some(&(sock, _)) = net.host.connects.last() {
            let now = net.now;
            net.stack.on_tcp_connected(&mut net.host, now, sock, Ok(()));
        }
    }
    drain(&mut net.stack);
    assert_eq!(net.host.connects.len(), 5);
    assert!(net.honest_guest_works(40000));
}

#[test]
fn spoofed_source_addresses_are_dropped() {
    let mut net = Net::new(NetConfig::default());
    let (a, b) = (net.a, net.b);
    // B uses its address.
    assert!(net.honest_guest_works(1));
    let connects = net.host.connects.len();
    // A sends from B's address, with its own MAC and with B's.
    let spoof = syn(SocketAddrV4::new(GUEST2_IP, 5555), remote(80));
    net.send(a, &spoof);
    net.send(a, &from_mac(spoof.clone(), GUEST2_MAC));
    // ... from the gateway's and the DNS address, from outside the subnet, and ARP poisoning.
    for src in [GW_IP, DNS_IP, Ipv4Addr::new(10, 0, 0, 1), REMOTE_IP] {
        net.send(a, &syn(SocketAddrV4::new(src, 5555), remote(80)));
    }
    net.send(a, &arp_request(GUEST_MAC, GUEST2_IP, GW_IP));
    let mut lying_arp = arp_request(GUEST2_MAC, GUEST_IP, GW_IP);
    lying_arp[6..12].copy_from_slice(&GUEST_MAC);
    net.send(a, &lying_arp);
    assert_eq!(
        net.host.connects.len(),
        connects,
        "no spoofed SYN reached the host"
    );
    assert!(
        drain(&mut net.stack).is_empty(),
        "no answer to spoofed frames"
    );
    let g = net.stack.guard.stats;
    assert_eq!(g.spoofed_source, 7, "{g:?}");
    assert_eq!(g.mac_of_other_port, 1, "{g:?}");
    // Made-up in-subnet addresses: a few (a static guest renumbering), then no more.
    let limit = NetConfig::default().max_ips_per_port;
    for i in 0..20u8 {
        let src = Ipv4Addr::new(192, 168, 5, 100 + i);
        net.send(a, &ping_frame(src, GW_IP, 1, 1, b""));
    }
    let answered = drain(&mut net.stack).len();
    assert_eq!(answered, limit - 1, "GUEST_IP plus {} made-up", limit - 1);
    assert_eq!(net.stack.guard.stats.address_limit, 20 - (limit as u64 - 1));
    // Frames between guests are checked too: A cannot send to B as B's neighbour .100+.
    let to_b = from_mac(
        ethernet(
            GUEST2_MAC,
            GUEST_MAC,
            0x0800,
            &ipv4(GUEST2_IP, GUEST2_IP, 1, &[]),
        ),
        GUEST_MAC,
    );
    net.send(a, &to_b);
    assert!(drain(&mut net.stack).is_empty());
    // When A goes away, its addresses are free for others.
    net.stack.remove_port(&mut net.host, a);
    let c = net.stack.add_port();
    net.send(c, &ping_frame(GUEST_IP, GW_IP, 1, 1, b""));
    assert_eq!(
        drain(&mut net.stack).len(),
        1,
        "address reused after its port closed"
    );
    assert!(net.honest_guest_works(2));
    let _ = b;
}

#[test]
fn flood_of_source_macs_is_bounded_and_freed_with_the_port() {
    let cfg = NetConfig {
        max_macs_per_port: 16,
        max_macs: 64,
        ..NetConfig::default()
    };
    let per_port = cfg.max_macs_per_port;
    let mut net = Net::new(cfg);
    let a = net.a;
    let before = net.stack.guard.mac_count();
    for i in 0..100_000u32 {
        let b = i.to_be_bytes();
        let mac = [0x02, 0x00, b[0], b[1], b[2], b[3]];
        net.send(a, &ethernet([0xff; 6], mac, 0x88b5, b"flood"));
    }
    let flooded = drain(&mut net.stack).len();
    assert_eq!(
        flooded,
        per_port - 1,
        "only frames from learned MACs are flooded"
    );
    assert_eq!(net.stack.guard.mac_count(), before + per_port - 1);
    assert!(net.stack.guard.stats.mac_limit >= 100_000 - per_port as u64);
    assert!(net.honest_guest_works(1));
    // Other ports still learn MACs; the total bound holds across ports.
    let mut ports = Vec::new();
    for k in 0..8u8 {
        let p = net.stack.add_port();
        ports.push(p);
        for i in 0..32u8 {
            net.send(p, &ethernet([0xff; 6], [0x02, 1, k, 0, 0, i], 0x88b5, b""));
        }
    }
    drain(&mut net.stack);
    assert!(net.stack.guard.mac_count() <= 64);
    // Closing ports frees their entries.
    net.stack.remove_port(&mut net.host, a);
    for p in ports {
        net.stack.remove_port(&mut net.host, p);
    }
    assert_eq!(net.stack.guard.mac_count(), 1, "only B's MAC is left");
    // Entries idle for mac_age are dropped when room is needed.
    let p = net.stack.add_port();
    for i in 0..16u8 {
        net.send(p, &ethernet([0xff; 6], [0x02, 2, 0, 0, 0, i], 0x88b5, b""));
    }
    net.now += Duration::from_secs(301);
    net.send(p, &ethernet([0xff; 6], [0x02, 3, 0, 0, 0, 0], 0x88b5, b""));
    assert!(net.stack.guard.stats.macs_aged_out >= 16);
    assert!(net.honest_guest_works(2));
}

/// A DHCP message from `chaddr` sent with Ethernet source `src`, naming our server unless
/// it is a DISCOVER.
fn dhcp_frame(
    src: MacAddr,
    chaddr: MacAddr,
    msg_type: u8,
    requested: Option<Ipv4Addr>,
    ciaddr: Ipv4Addr,
) -> Vec<u8> {
    dhcp_message(
        src,
        chaddr,
        msg_type,
        requested,
        ciaddr,
        msg_type != DISCOVER,
    )
}

fn dhcp_message(
    src: MacAddr,
    chaddr: MacAddr,
    msg_type: u8,
    requested: Option<Ipv4Addr>,
    ciaddr: Ipv4Addr,
    server_id: bool,
) -> Vec<u8> {
    let mut m = vec![0u8; 236];
    m[0] = 1;
    m[1] = 1;
    m[2] = 6;
    m[4..8].copy_from_slice(&0x0bad_cafeu32.to_be_bytes());
    m[10] = 0x80;
    m[12..16].copy_from_slice(&ciaddr.octets());
    m[28..34].copy_from_slice(&chaddr);
    m.extend_from_slice(&[99, 130, 83, 99, 53, 1, msg_type]);
    if let Some(ip) = requested {
        m.extend_from_slice(&[50, 4]);
        m.extend_from_slice(&ip.octets());
    }
    if server_id {
        m.extend_from_slice(&[54, 4]);
        m.extend_from_slice(&GW_IP.octets());
    }
    m.push(255);
    let udp = udp_bytes(
        SocketAddrV4::new(ciaddr, 68),
        SocketAddrV4::new(Ipv4Addr::BROADCAST, 67),
        &m,
    );
    ethernet(
        [0xff; 6],
        src,
        0x0800,
        &ipv4(ciaddr, Ipv4Addr::BROADCAST, 17, &udp),
    )
}

const DISCOVER: u8 = 1;
const REQUEST: u8 = 3;
const DECLINE: u8 = 4;
const RELEASE: u8 = 7;

/// The DHCP replies among `frames` for `port`: (message type, yiaddr).
fn dhcp_replies(frames: &[(usize, Vec<u8>)], port: PortId) -> Vec<(u8, Ipv4Addr)> {
    frames
        .iter()
        .filter(|(p, _)| *p == port)
        .filter_map(|(_, f)| parse_udp(f))
        .filter(|(src, _, _)| src.port() == 67)
        .map(|(_, _, m)| {
            let yiaddr = Ipv4Addr::new(m[16], m[17], m[18], m[19]);
            let t = m[240..]
                .windows(3)
                .find(|w| w[0] == 53 && w[1] == 1)
                .map_or(0, |w| w[2]);
            (t, yiaddr)
        })
        .collect()
}

/// DISCOVER + REQUEST for `mac` on `port`; the address bound.
fn dora(net: &mut Net, port: PortId, mac: MacAddr) -> Option<Ipv4Addr> {
    let z = Ipv4Addr::UNSPECIFIED;
    net.send(port, &dhcp_frame(mac, mac, DISCOVER, None, z));
    let offer = dhcp_replies(&drain(&mut net.stack), port)
        .into_iter()
        .find(|r| r.0 == 2)?
        .1;
    net.send(port, &dhcp_frame(mac, mac, REQUEST, Some(offer), z));
    dhcp_replies(&drain(&mut net.stack), port)
        .into_iter()
        .find(|r| r.0 == 5)
        .map(|r| r.1)
}

#[test]
fn dhcp_decline_and_release_with_another_guests_mac_are_ignored() {
    let mut net = Net::new(NetConfig::default());
    let (a, b) = (net.a, net.b);
    let leased = dora(&mut net, b, GUEST2_MAC).expect("B gets a lease");
    let z = Ipv4Addr::UNSPECIFIED;
    // A claims to be B, in the DHCP message only and in the Ethernet header too.
    for src in [GUEST_MAC, GUEST2_MAC] {
        net.send(a, &dhcp_frame(src, GUEST2_MAC, DECLINE, Some(leased), z));
        net.send(a, &dhcp_frame(src, GUEST2_MAC, RELEASE, None, leased));
        net.send(a, &dhcp_frame(src, GUEST2_MAC, DISCOVER, None, z));
    }
    assert!(dhcp_replies(&drain(&mut net.stack), a).is_empty());
    let leases = net.stack.leases();
    assert!(
        leases.iter().any(|l| l.ip == leased && l.mac == GUEST2_MAC),
        "B keeps its lease: {leases:?}"
    );
    // With its own MAC, A's DECLINE and DISCOVER for B reach DHCP and are ignored there; its
    // RELEASE comes from B's address and is dropped before. With B's MAC nothing gets in.
    assert_eq!(net.stack.dhcp_stats().foreign_client, 2);
    assert_eq!(net.stack.guard.stats.spoofed_source, 1);
    assert_eq!(net.stack.guard.stats.mac_of_other_port, 3);
    // B's own RELEASE works.
    net.send(
        b,
        &dhcp_frame(GUEST2_MAC, GUEST2_MAC, RELEASE, None, leased),
    );
    assert!(net.stack.leases().iter().all(|l| l.mac != GUEST2_MAC));
}

#[test]
fn dhcp_pool_exhaustion_by_spoofed_macs_leaves_room_for_an_honest_client() {
    let mut net = Net::new(NetConfig::default());
    let a = net.a;
    let z = Ipv4Addr::UNSPECIFIED;
    // 1000 spoofed clients, as Ethernet sources (bounded by the MAC table) and as chaddr
    // only (not on A's port: ignored).
    for i in 0..1000u16 {
        let b = i.to_be_bytes();
        let mac = [0x02, 0x66, 0, 0, b[0], b[1]];
        net.send(a, &dhcp_frame(mac, mac, DISCOVER, None, z));
        net.send(a, &dhcp_frame(GUEST_MAC, mac, DISCOVER, None, z));
    }
    // Two offers for each of the 63 MACs A may use besides its own; the other 937 client
    // MACs are not on A's port and get nothing.
    let offers = dhcp_replies(&drain(&mut net.stack), a).len();
    assert_eq!(offers, 2 * 63);
    let d = net.stack.dhcp_stats();
    assert_eq!(d.foreign_client, 1000 - 63, "{d:?}");
    // A holds only a few offers at a time: each new client took the place of the oldest.
    assert_eq!(d.offers_withdrawn, 63 - 4, "{d:?}");
    assert_eq!(d.exhausted, 0, "{d:?}");
    // The honest client is answered at once.
    let b = net.b;
    assert!(dora(&mut net, b, GUEST2_MAC).is_some());
}

#[test]
fn dhcp_exhausted_pool_answers_after_stale_offers_and_nak_for_taken_addresses() {
    // A pool of four addresses, all offered to A's clients.
    let cfg = NetConfig {
        dhcp_start: Ipv4Addr::new(192, 168, 5, 20),
        dhcp_end: Ipv4Addr::new(192, 168, 5, 23),
        ..NetConfig::default()
    };
    let mut net = Net::new(cfg);
    let (a, b) = (net.a, net.b);
    let z = Ipv4Addr::UNSPECIFIED;
    for i in 0..4u8 {
        let mac = [0x02, 0x66, 0, 0, 0, i];
        net.send(a, &dhcp_frame(mac, mac, DISCOVER, None, z));
    }
    assert_eq!(dhcp_replies(&drain(&mut net.stack), a).len(), 4);
    net.send(b, &dhcp_frame(GUEST2_MAC, GUEST2_MAC, DISCOVER, None, z));
    assert!(
        dhcp_replies(&drain(&mut net.stack), b).is_empty(),
        "offers are fresh"
    );
    assert_eq!(net.stack.dhcp_stats().exhausted, 1);
    // An INIT-REBOOT for an address offered to another client gets a NAK, not silence.
    let taken = Ipv4Addr::new(192, 168, 5, 20);
    let reboot = dhcp_message(GUEST2_MAC, GUEST2_MAC, REQUEST, Some(taken), z, false);
    net.send(b, &reboot);
    let replies = dhcp_replies(&drain(&mut net.stack), b);
    assert_eq!(
        replies.first().map(|r| r.0),
        Some(6),
        "DHCPNAK: {replies:?}"
    );
    // Offers nobody answered for a few seconds give way to the new client.
    net.now += Duration::from_secs(6);
    assert!(dora(&mut net, b, GUEST2_MAC).is_some());
    assert_eq!(net.stack.dhcp_stats().offers_reclaimed, 1);
}

#[test]
fn static_guest_address_is_not_offered_to_others() {
    let mut net = Net::new(NetConfig::default());
    // A uses .15, the first pool address, without DHCP (Net::new sent its ARP); B asks DHCP.
    let b = net.b;
    let leased = dora(&mut net, b, GUEST2_MAC).expect("lease");
    assert_ne!(leased, GUEST_IP);
}

#[test]
fn bad_checksums_are_dropped_and_counted() {
    let mut net = Net::new(NetConfig::default());
    let a = net.a;
    let good_syn = syn(SocketAddrV4::new(GUEST_IP, 4000), remote(80));
    let good_ping = ping_frame(GUEST_IP, GW_IP, 1, 1, b"payload");
    let good_udp = udp_frame(SocketAddrV4::new(GUEST_IP, 5000), remote(53), b"query");
    let flip = |f: &[u8], at: usize| {
        let mut f = f.to_vec();
        f[at] ^= 0x01;
        f
    };
    let bad = [
        flip(&good_syn, 14 + 10),      // IPv4 header checksum
        flip(&good_syn, 14 + 20 + 4),  // TCP sequence number
        flip(&good_ping, 14 + 20 + 8), // ICMP data
        flip(&good_udp, 14 + 20 + 9),  // UDP payload
    ];
    for f in &bad {
        net.send(a, f);
    }
    assert!(
        drain(&mut net.stack).is_empty(),
        "bad packets get no answer"
    );
    assert!(net.host.connects.is_empty() && net.host.udp.is_empty());
    assert_eq!(net.stack.stats.bad_checksum, 4);
    // Valid ones, and UDP without a checksum, go through.
    let mut no_sum = good_udp.clone();
    no_sum[14 + 20 + 6..14 + 20 + 8].copy_from_slice(&[0, 0]);
    for f in [&good_syn, &good_ping, &no_sum] {
        net.send(a, f);
    }
    assert_eq!(net.host.connects.len(), 1);
    assert_eq!(net.host.udp.len(), 1);
    assert_eq!(drain(&mut net.stack).len(), 1, "the pong");
    // A transport that verified checksums already (vnet header) skips the check.
    let now = net.now;
    net.stack
        .handle_frame_checked(&mut net.host, now, a, &flip(&good_ping, 14 + 20 + 8), true);
    assert_eq!(drain(&mut net.stack).len(), 1);
    assert_eq!(net.stack.stats.bad_checksum, 4);
}

#[test]
fn broadcast_storm_is_rate_limited_per_port() {
    let mut net = Net::new(NetConfig::default());
    let (a, b) = (net.a, net.b);
    let rate = NetConfig::default().max_flood_rate as usize;
    let storm = ethernet([0xff; 6], GUEST_MAC, 0x88b5, &[0u8; 1000]);
    // One second of storm at 100 frames per millisecond.
    let start = net.now;
    let mut flooded = 0;
    for ms in 0..1000u64 {
        net.now = start + Duration::from_millis(ms);
        for _ in 0..100 {
            net.send(a, &storm);
        }
        flooded += drain(&mut net.stack)
            .iter()
            .filter(|(p, _)| *p == b)
            .count();
    }
    // The burst, then the rate.
    assert!(
        flooded <= rate + rate / 20 + 10 && flooded >= rate * 9 / 10,
        "{flooded} of 100000 flooded"
    );
    assert!(net.stack.guard.stats.flood_limit >= 100_000 - 2 * rate as u64 - 10);
    // B's own broadcasts (ARP) still go out, and B works.
    net.send(
        b,
        &from_mac(arp_request(GUEST2_MAC, GUEST2_IP, GUEST_IP), GUEST2_MAC),
    );
    assert!(drain(&mut net.stack).iter().any(|(p, _)| *p == a));
    assert!(net.honest_guest_works(1));
}

#[test]
fn guest_that_kept_its_address_across_a_restart_renews_it_and_others_cannot_take_it() {
    // A fresh stack (limanet restarted): A still uses .15 (Net::new's ARP), B .16.
    let mut net = Net::new(NetConfig::default());
    let (a, b) = (net.a, net.b);
    // B asks for A's address: not offered.
    let z = Ipv4Addr::UNSPECIFIED;
    net.send(
        b,
        &dhcp_message(GUEST2_MAC, GUEST2_MAC, DISCOVER, Some(GUEST_IP), z, false),
    );
    let offers = dhcp_replies(&drain(&mut net.stack), b);
    assert!(offers.iter().all(|o| o.1 != GUEST_IP), "{offers:?}");
    // A renews .15 (RENEWING: ciaddr, no server identifier): acknowledged.
    let renew = dhcp_message(GUEST_MAC, GUEST_MAC, REQUEST, None, GUEST_IP, false);
    net.send(a, &renew);
    let replies = dhcp_replies(&drain(&mut net.stack), a);
    assert_eq!(
        replies.first().map(|r| r.0),
        Some(5),
        "DHCPACK: {replies:?}"
    );
    assert!(net
        .stack
        .leases()
        .iter()
        .any(|l| l.ip == GUEST_IP && l.mac == GUEST_MAC));
}

#[test]
fn udp_and_ping_floods_from_one_guest_leave_the_others_their_flows() {
    let cfg = NetConfig {
        max_udp_flows: 16,
        max_icmp_flows: 8,
        ..NetConfig::default()
    };
    let mut net = Net::new(cfg);
    let (a, b) = (net.a, net.b);
    // B has a UDP flow (say its DNS resolver's) and pings the outside.
    let b_flow = from_mac(
        udp_frame(SocketAddrV4::new(GUEST2_IP, 5353), remote(53), b"q"),
        GUEST2_MAC,
    );
    net.send(b, &b_flow);
    let b_sock = *net.host.udp.keys().next().expect("B's UDP socket");
    // A opens UDP flows from 1000 source ports and pings with 1000 identifiers.
    for i in 0..1000u16 {
        net.now += Duration::from_millis(1);
        net.send(
            a,
            &udp_frame(SocketAddrV4::new(GUEST_IP, 20000 + i), remote(9), b"x"),
        );
        net.send(a, &ping_frame(GUEST_IP, REMOTE_IP, i, 1, b"x"));
    }
    assert!(!net.host.udp[&b_sock].closed, "B's flow survives A's flood");
    assert_eq!(net.stack.udp_flows(), 16);
    assert_eq!(net.host.icmp.len(), 4, "A holds half of the echo table");
    let ping = from_mac(ping_frame(GUEST2_IP, REMOTE_IP, 77, 1, b"x"), GUEST2_MAC);
    net.send(b, &ping);
    assert_eq!(net.host.icmp.len(), 5, "B can still ping");
    assert!(net.host.violations.is_empty());
}
