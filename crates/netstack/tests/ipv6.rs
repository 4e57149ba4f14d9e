//! IPv6 through the stack, frame by frame: Neighbor Discovery, Router Advertisements, DHCPv6,
//! echo, TCP and UDP translation onto (fake) host sockets, and the bad input a guest may send.

mod support;

use limanet_netstack::dhcp6;
use limanet_netstack::wire::{self, MacAddr};
use limanet_netstack::wire6::{self, *};
use limanet_netstack::{NetConfig, PortId, Stack};
use std::net::{IpAddr, Ipv6Addr, SocketAddr, SocketAddrV6};
use std::time::{Duration, Instant};
use support::ipv6::*;
use support::{FakeHost, GUEST2_MAC, GUEST_MAC, GW_MAC};

fn v6(s: &str) -> Ipv6Addr {
    s.parse().unwrap()
}

const GUEST_LL: &str = "fe80::5055:55ff:fe00:f";
const GUEST6: &str = "fd00:192:168:5:5055:55ff:fe00:f";
const GW6: &str = "fd00:192:168:5::2";
const DNS6: &str = "fd00:192:168:5::3";
const GW_LL: &str = "fe80::5055:c0ff:fea8:502";
const REMOTE6: &str = "2001:db8:203::2";

fn setup() -> (Stack, FakeHost, PortId, Instant) {
    let mut stack = Stack::new(NetConfig::default()).unwrap();
    let port = stack.add_port();
    (stack, FakeHost::new(), port, Instant::now())
}

fn send(stack: &mut Stack, host: &mut FakeHost, now: Instant, port: PortId, frame: &[u8]) {
    stack.handle_frame(host, now, port, frame);
    stack.end_batch(host);
}

#[test]
fn router_solicitation_gets_an_ra_for_slaac_with_rdnss_and_mtu() {
    let (mut stack, mut host, port, now) = setup();
    let rs = icmp6_frame(
        GUEST_MAC,
        multicast_mac(ALL_ROUTERS),
        v6(GUEST_LL),
        ALL_ROUTERS,
        ND_ROUTER_SOLICIT,
        &[0, 0, 0, 0, 1, 1, 0x52, 0x55, 0x55, 0, 0, 0x0f],
    );
    send(&mut stack, &mut host, now, port, &rs);
    let out = drain6(&mut stack);
    assert_eq!(out.len(), 1);
    let ra = &out[0];
    assert_eq!(ra.src, v6(GW_LL));
    assert_eq!(ra.dst, v6(GUEST_LL));
    assert_eq!(ra.dst_mac, GUEST_MAC);
    assert_eq!(ra.hop, 255);
    assert_eq!(ra.next, PROTO_ICMPV6);
    assert_eq!(ra.l4[0], ND_ROUTER_ADVERT);
    let parsed = RouterAdvert::parse(&ra.l4[4..]).unwrap();
    assert!(parsed.router_lifetime > 0);
    assert!(parsed.other && !parsed.managed);
    assert_eq!(parsed.source_ll, Some(GW_MAC));
    assert_eq!(parsed.mtu, Some(1500));
    assert_eq!(parsed.prefixes.len(), 1);
    let p = parsed.prefixes[0];
    assert_eq!(p.prefix, v6("fd00:192:168:5::"));
    assert_eq!(p.prefix_len, 64);
    assert!(p.on_link && p.autonomous);
    assert_eq!(parsed.rdnss.unwrap().1, vec![v6(DNS6)]);
    // An RS from an address-less guest is answered to all nodes (on its port only).
    let rs = icmp6_frame(
        GUEST_MAC,
        multicast_mac(ALL_ROUTERS),
        Ipv6Addr::UNSPECIFIED,
        ALL_ROUTERS,
        ND_ROUTER_SOLICIT,
        &[0, 0, 0, 0],
    );
    send(&mut stack, &mut host, now, port, &rs);
    let out = drain6(&mut stack);
    assert_eq!(out[0].dst, ALL_NODES);
    assert_eq!(out[0].dst_mac, multicast_mac(ALL_NODES));
    // And periodically, to every port.
    let deadline = stack.poll_timeout().expect("RA timer");
    assert!(deadline <= now + Duration::from_secs(60));
    stack.on_timeout(&mut host, deadline);
    let out = drain6(&mut stack);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].l4[0], ND_ROUTER_ADVERT);
    assert_eq!(stack.ndp_stats().router_adverts_sent, 3);
}

#[test]
fn neighbor_solicitations_for_gateway_and_dns_are_answered_and_rate_limited() {
    let (mut stack, mut host, port, now) = setup();
    for target in [GW6, DNS6, GW_LL] {
        let ns = NeighborSolicit {
            target: v6(target),
            source_ll: Some(GUEST_MAC),
        };
        let f = icmp6_frame(
            GUEST_MAC,
            multicast_mac(solicited_node(v6(target))),
            v6(GUEST6),
            solicited_node(v6(target)),
            ND_NEIGHBOR_SOLICIT,
            &ns.emit_body(),
        );
        send(&mut stack, &mut host, now, port, &f);
        let out = drain6(&mut stack);
        assert_eq!(out.len(), 1, "{target}");
        assert_eq!(out[0].l4[0], ND_NEIGHBOR_ADVERT);
        assert_eq!(out[0].dst, v6(GUEST6));
        assert_eq!(out[0].hop, 255);
        let na = NeighborAdvert::parse(&out[0].l4[4..]).unwrap();
        assert_eq!(na.target, v6(target));
        assert_eq!(na.target_ll, Some(GW_MAC));
        assert!(na.router && na.solicited);
    }
    // A solicitation for someone else's address is not ours to answer.
    let other = NeighborSolicit {
        target: v6("fd00:192:168:5::99"),
        source_ll: Some(GUEST_MAC),
    };
    let f = icmp6_frame(
        GUEST_MAC,
        GW_MAC,
        v6(GUEST6),
        v6("fd00:192:168:5::99"),
        ND_NEIGHBOR_SOLICIT,
        &other.emit_body(),
    );
    send(&mut stack, &mut host, now, port, &f);
    assert!(drain6(&mut stack).is_empty());
    // A flood: at most NS_PER_SECOND answers per second, the rest counted.
    let ns = NeighborSolicit {
        target: v6(GW6),
        source_ll: Some(GUEST_MAC),
    };
    let f = icmp6_frame(
        GUEST_MAC,
        GW_MAC,
        v6(GUEST6),
        v6(GW6),
        ND_NEIGHBOR_SOLICIT,
        &ns.emit_body(),
    );
    for _ in 0..1000 {
        stack.handle_frame(&mut host, now, port, &f);
    }
    let answered = drain6(&mut stack).len();
    assert!(
        answered <= limanet_netstack::ndp::NS_PER_SECOND as usize,
        "{answered}"
    );
    assert!(stack.ndp_stats().neighbor_solicits_limited >= 900);
    // NDP with a hop limit other than 255 came through a router: ignored (RFC 4861 7.1.1).
    let mut low = f.clone();
    low[14 + 7] = 64;
    let later = now + Duration::from_secs(5);
    send(&mut stack, &mut host, later, port, &low);
    assert!(drain6(&mut stack).is_empty());
    send(&mut stack, &mut host, later, port, &f);
    assert_eq!(drain6(&mut stack).len(), 1, "the budget refills");
}

#[test]
fn stateless_dhcpv6_answers_information_request() {
    let (mut stack, mut host, port, now) = setup();
    let req = dhcp6::Message {
        kind: dhcp6::MSG_INFORMATION_REQUEST,
        transaction: [7, 8, 9],
        options: vec![(
            dhcp6::OPT_CLIENT_ID,
            &[0, 3, 0, 1, 0x52, 0x55, 0x55, 0, 0, 0x0f][..],
        )],
    };
    let f = udp6_frame(
        SocketAddrV6::new(v6(GUEST_LL), 546, 0, 0),
        SocketAddrV6::new(dhcp6::ALL_SERVERS, 547, 0, 0),
        multicast_mac(dhcp6::ALL_SERVERS),
        &req.emit(),
    );
    send(&mut stack, &mut host, now, port, &f);
    let out = drain6(&mut stack);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].src, v6(GW_LL));
    assert_eq!(out[0].dst, v6(GUEST_LL));
    let udp = wire::Udp::parse(&out[0].l4).unwrap();
    assert_eq!((udp.src_port, udp.dst_port), (547, 546));
    let reply = dhcp6::Message::parse(udp.payload).unwrap();
    assert_eq!(reply.kind, dhcp6::MSG_REPLY);
    assert_eq!(reply.transaction, [7, 8, 9]);
    assert_eq!(
        reply.option(dhcp6::OPT_DNS_SERVERS),
        Some(&v6(DNS6).octets()[..])
    );
    assert!(host.udp.is_empty(), "DHCPv6 is answered in the stack");
}

#[test]
fn guest_router_advertisements_and_redirects_are_dropped_not_switched() {
    let (mut stack, mut host, port, now) = setup();
    let other = stack.add_port();
    // The other guest is known on its port.
    let hello = icmp6_frame(
        GUEST2_MAC,
        multicast_mac(ALL_ROUTERS),
        v6("fe80::2"),
        ALL_ROUTERS,
        ND_ROUTER_SOLICIT,
        &[0; 4],
    );
    send(&mut stack, &mut host, now, other, &hello);
    stack.out.queue.clear();
    let ra = RouterAdvert {
        hop_limit: 64,
        managed: false,
        other: false,
        router_lifetime: 1800,
        reachable_time: 0,
        retrans_timer: 0,
        source_ll: Some(GUEST_MAC),
        mtu: None,
        prefixes: vec![],
        rdnss: None,
    };
    let f = icmp6_frame(
        GUEST_MAC,
        multicast_mac(ALL_NODES),
        v6(GUEST_LL),
        ALL_NODES,
        ND_ROUTER_ADVERT,
        &ra.emit_body(),
    );
    send(&mut stack, &mut host, now, port, &f);
    let redirect = icmp6_frame(
        GUEST_MAC,
        GUEST2_MAC,
        v6(GUEST_LL),
        v6("fe80::2"),
        ND_REDIRECT,
        &[0; 36],
    );
    send(&mut stack, &mut host, now, port, &redirect);
    assert!(
        stack.out.queue.is_empty(),
        "nothing reaches the other guest"
    );
    assert_eq!(stack.ndp_stats().guest_router_messages, 2);
    // An ordinary multicast NS is still flooded to the other guest.
    let ns = NeighborSolicit {
        target: v6("fe80::2"),
        source_ll: Some(GUEST_MAC),
    };
    let f = icmp6_frame(
        GUEST_MAC,
        multicast_mac(solicited_node(v6("fe80::2"))),
        v6(GUEST_LL),
        solicited_node(v6("fe80::2")),
        ND_NEIGHBOR_SOLICIT,
        &ns.emit_body(),
    );
    send(&mut stack, &mut host, now, port, &f);
    assert!(stack.out.queue.iter().any(|f| f.port == other));
}

#[test]
fn bad_ipv6_input_is_counted_and_dropped() {
    let (mut stack, mut host, port, now) = setup();
    let dst = SocketAddrV6::new(v6(REMOTE6), 53, 0, 0);
    let good = udp6_frame(SocketAddrV6::new(v6(GUEST6), 5000, 0, 0), dst, GW_MAC, b"x");
    // A fragment header in front of the UDP datagram.
    let mut frag = good[..14 + 40].to_vec();
    frag[14 + 6] = PROTO_FRAGMENT;
    frag[14 + 4..14 + 6].copy_from_slice(&(8 + good.len() as u16 - 54).to_be_bytes());
    frag.extend_from_slice(&[wire::PROTO_UDP, 0, 0, 1, 0, 0, 0, 9]);
    frag.extend_from_slice(&good[54..]);
    send(&mut stack, &mut host, now, port, &frag);
    assert_eq!(stack.stats.fragments, 1);
    // A chain of nine destination-options headers.
    let mut chain = good[..54].to_vec();
    chain[14 + 6] = PROTO_DEST_OPTS;
    let mut body = Vec::new();
    for i in 0..9 {
        let next = if i == 8 {
            wire::PROTO_UDP
        } else {
            PROTO_DEST_OPTS
        };
        body.extend_from_slice(&[next, 0, 1, 4, 0, 0, 0, 0]);
    }
    body.extend_from_slice(&good[54..]);
    chain[14 + 4..14 + 6].copy_from_slice(&(body.len() as u16).to_be_bytes());
    chain.extend_from_slice(&body);
    send(&mut stack, &mut host, now, port, &chain);
    assert_eq!(stack.stats.malformed, 1);
    // A bad UDP checksum.
    let mut bad = good.clone();
    let n = bad.len();
    bad[n - 1] ^= 0xff;
    send(&mut stack, &mut host, now, port, &bad);
    assert_eq!(stack.stats.bad_checksum, 1);
    // A spoofed source outside the prefix.
    let spoof = udp6_frame(
        SocketAddrV6::new(v6("2001:db8::666"), 5000, 0, 0),
        dst,
        GW_MAC,
        b"x",
    );
    send(&mut stack, &mut host, now, port, &spoof);
    assert_eq!(stack.guard.stats.spoofed_source, 1);
    assert!(host.udp.is_empty());
    // Hop-by-hop options are skipped: the datagram goes out.
    let mut hbh = good[..54].to_vec();
    hbh[14 + 6] = PROTO_HOP_BY_HOP;
    let mut body = vec![wire::PROTO_UDP, 0, 5, 2, 0, 0, 1, 0];
    body.extend_from_slice(&good[54..]);
    hbh[14 + 4..14 + 6].copy_from_slice(&(body.len() as u16).to_be_bytes());
    hbh.extend_from_slice(&body);
    send(&mut stack, &mut host, now, port, &hbh);
    assert_eq!(host.udp.len(), 1);
    let s = host.udp.values().next().unwrap();
    assert_eq!(s.sent, vec![(SocketAddr::V6(dst), b"x".to_vec())]);
    assert!(host.violations.is_empty());
}

#[test]
fn udp_and_echo_translate_onto_ipv6_host_sockets() {
    let (mut stack, mut host, port, now) = setup();
    let guest = SocketAddrV6::new(v6(GUEST6), 5000, 0, 0);
    let remote = SocketAddrV6::new(v6(REMOTE6), 7, 0, 0);
    send(
        &mut stack,
        &mut host,
        now,
        port,
        &udp6_frame(guest, remote, GW_MAC, b"ping6"),
    );
    let (&sock, s) = host.udp.iter().next().expect("a host UDP socket");
    assert_eq!(s.sent, vec![(SocketAddr::V6(remote), b"ping6".to_vec())]);
    stack.out.queue.clear();
    assert!(stack.on_udp_datagram(now, sock, SocketAddr::V6(remote), b"pong6"));
    let out = drain6(&mut stack);
    assert_eq!(out.len(), 1);
    assert_eq!((out[0].src, out[0].dst), (v6(REMOTE6), v6(GUEST6)));
    assert_eq!(wire::Udp::parse(&out[0].l4).unwrap().payload, b"pong6");
    // DNS at the IPv6 DNS address goes to the embedded server, and its answer comes back from
    // [DNS6]:53 (a dual-stack socket sees the server's IPv4 address mapped).
    stack.set_dns_server(
        "127.0.0.1:5353".parse().unwrap(),
        "127.0.0.1:5353".parse().unwrap(),
    );
    let dns = SocketAddrV6::new(v6(DNS6), 53, 0, 0);
    let guest2 = SocketAddrV6::new(v6(GUEST6), 5001, 0, 0);
    send(
        &mut stack,
        &mut host,
        now,
        port,
        &udp6_frame(guest2, dns, GW_MAC, b"q"),
    );
    let (&dsock, ds) = host.udp.iter().find(|(id, _)| **id != sock).unwrap();
    assert_eq!(
        ds.sent,
        vec![("127.0.0.1:5353".parse().unwrap(), b"q".to_vec())]
    );
    stack.on_udp_datagram(
        now,
        dsock,
        "[::ffff:127.0.0.1]:5353".parse::<SocketAddr>().unwrap(),
        b"a",
    );
    let out = drain6(&mut stack);
    assert_eq!(out[0].src, v6(DNS6));
    assert_eq!(wire::Udp::parse(&out[0].l4).unwrap().src_port, 53);
    // No route on the host: the guest hears so at once (ICMPv6 destination unreachable, no
    // route), quoting its datagram.
    host.fail_udp_send = Some(std::io::ErrorKind::NetworkUnreachable);
    let f = udp6_frame(guest, remote, GW_MAC, b"nowhere");
    send(&mut stack, &mut host, now, port, &f);
    host.fail_udp_send = None;
    let out = drain6(&mut stack);
    assert_eq!(out.len(), 1);
    assert_eq!((out[0].src, out[0].dst), (v6(GW6), v6(GUEST6)));
    assert_eq!(&out[0].l4[..2], &[ICMPV6_DEST_UNREACHABLE, 0]);
    assert_eq!(&out[0].l4[8..], &f[14..], "the whole packet is quoted");
    // Rate-limited (RFC 4443 2.4(f)): a flood gets at most ERRORS_PER_SECOND of them.
    host.fail_udp_send = Some(std::io::ErrorKind::NetworkUnreachable);
    for _ in 0..500 {
        stack.handle_frame(&mut host, now, port, &f);
    }
    host.fail_udp_send = None;
    let errors = drain6(&mut stack).len();
    assert_eq!(
        errors,
        limanet_netstack::ndp::ERRORS_PER_SECOND as usize - 1
    );
    assert_eq!(stack.ndp_stats().errors_limited, 500 - errors as u64);
    // Echo to the gateway is answered here; to the outside through an ICMPv6 socket.
    let mut echo = vec![0, 0, 0, 0, 0x12, 0x34, 0, 1];
    echo.extend_from_slice(b"data");
    let req = icmpv6_message(v6(GUEST6), v6(GW6), ICMPV6_ECHO_REQUEST, 0, &echo[4..]);
    let f = frame6(
        GUEST_MAC,
        GW_MAC,
        v6(GUEST6),
        v6(GW6),
        PROTO_ICMPV6,
        64,
        &req,
    );
    send(&mut stack, &mut host, now, port, &f);
    let out = drain6(&mut stack);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].l4[0], ICMPV6_ECHO_REPLY);
    assert_eq!(&out[0].l4[4..], &echo[4..]);
    let req = icmpv6_message(v6(GUEST6), v6(REMOTE6), ICMPV6_ECHO_REQUEST, 0, &echo[4..]);
    let f = frame6(
        GUEST_MAC,
        GW_MAC,
        v6(GUEST6),
        v6(REMOTE6),
        PROTO_ICMPV6,
        64,
        &req,
    );
    send(&mut stack, &mut host, now, port, &f);
    let (&isock, is) = host.icmp.iter().next().expect("an ICMPv6 socket");
    assert_eq!(is.sent.len(), 1);
    assert_eq!(is.sent[0].0, SocketAddr::new(IpAddr::V6(v6(REMOTE6)), 0));
    assert_eq!(is.sent[0].1[0], ICMPV6_ECHO_REQUEST);
    let mut reply = vec![ICMPV6_ECHO_REPLY, 0, 0, 0, 0x99, 0x99, 0, 1];
    reply.extend_from_slice(b"data");
    assert!(stack.on_icmp_message(isock, v6(REMOTE6), &reply));
    let out = drain6(&mut stack);
    assert_eq!(out[0].l4[0], ICMPV6_ECHO_REPLY);
    assert_eq!(
        &out[0].l4[4..6],
        &[0x12, 0x34],
        "the guest's own identifier"
    );
}

#[test]
fn tcp_translates_onto_ipv6_host_sockets_and_gateway_is_host_loopback() {
    let (mut stack, mut host, port, now) = setup();
    let guest = SocketAddrV6::new(v6(GUEST6), 40000, 0, 0);
    let gw = SocketAddrV6::new(v6(GW6), 8080, 0, 0);
    send(
        &mut stack,
        &mut host,
        now,
        port,
        &tcp6_frame(guest, gw, 1000, 0, wire::tcp_flags::SYN, b""),
    );
    assert_eq!(host.connects.len(), 1);
    assert_eq!(
        host.connects[0].1,
        "[::1]:8080".parse::<SocketAddr>().unwrap()
    );
    let sock = host.connects[0].0;
    stack.on_tcp_connected(&mut host, now, sock, Ok(()));
    let out = drain6(&mut stack);
    assert_eq!(out.len(), 1);
    let synack = wire::Tcp::parse(&out[0].l4).unwrap();
    assert_eq!(synack.flags, wire::tcp_flags::SYN | wire::tcp_flags::ACK);
    assert_eq!(synack.ack.0, 1001);
    assert_eq!(synack.mss, Some(1440), "IPv6 MSS: MTU - 60");
    let iss = synack.seq.0;
    send(
        &mut stack,
        &mut host,
        now,
        port,
        &tcp6_frame(
            guest,
            gw,
            1001,
            iss + 1,
            wire::tcp_flags::ACK | wire::tcp_flags::PSH,
            b"GET /",
        ),
    );
    assert_eq!(host.sock(sock).send_buf, b"GET /");
    host.push_recv(sock, b"HTTP/1.0 200");
    stack.on_tcp_readable(&mut host, now, sock, false);
    let out = drain6(&mut stack);
    let data: Vec<u8> = out
        .iter()
        .filter_map(|o| wire::Tcp::parse(&o.l4).ok().map(|t| t.payload.to_vec()))
        .collect::<Vec<_>>()
        .concat();
    assert_eq!(data, b"HTTP/1.0 200");
    // To the outside: connect to the real address; a refusal is a RST.
    let remote = SocketAddrV6::new(v6(REMOTE6), 443, 0, 0);
    host.fail_connect = Some(std::io::ErrorKind::NetworkUnreachable);
    send(
        &mut stack,
        &mut host,
        now,
        port,
        &tcp6_frame(
            SocketAddrV6::new(v6(GUEST6), 40001, 0, 0),
            remote,
            5,
            0,
            wire::tcp_flags::SYN,
            b"",
        ),
    );
    let out = drain6(&mut stack);
    let rst = wire::Tcp::parse(&out[0].l4).unwrap();
    assert!(rst.has(wire::tcp_flags::RST));
    // Link-local guests and in-prefix destinations are not translated.
    host.fail_connect = None;
    let before = host.connects.len();
    let to_guest = SocketAddrV6::new(v6("fd00:192:168:5::99"), 80, 0, 0);
    send(
        &mut stack,
        &mut host,
        now,
        port,
        &tcp6_frame(
            SocketAddrV6::new(v6(GUEST6), 40002, 0, 0),
            to_guest,
            5,
            0,
            wire::tcp_flags::SYN,
            b"",
        ),
    );
    assert_eq!(host.connects.len(), before);
    assert!(host.violations.is_empty(), "{:?}", host.violations);
}

#[test]
fn no_ipv6_network_ignores_ipv6() {
    let cfg = NetConfig {
        ipv6: None,
        ..NetConfig::default()
    };
    let mut stack = Stack::new(cfg).unwrap();
    let port = stack.add_port();
    let mut host = FakeHost::new();
    let now = Instant::now();
    let rs = icmp6_frame(
        GUEST_MAC,
        multicast_mac(ALL_ROUTERS),
        v6(GUEST_LL),
        ALL_ROUTERS,
        ND_ROUTER_SOLICIT,
        &[0; 4],
    );
    send(&mut stack, &mut host, now, port, &rs);
    assert!(drain6(&mut stack).is_empty());
    let _ = wire6::IPV6_MIN_MTU;
}

#[test]
fn ipv6_addresses_belong_to_the_port_that_used_them_first() {
    let (mut stack, mut host, port, now) = setup();
    let other = stack.add_port();
    let remote = SocketAddrV6::new(v6(REMOTE6), 53, 0, 0);
    let mine = SocketAddrV6::new(v6(GUEST6), 5000, 0, 0);
    send(
        &mut stack,
        &mut host,
        now,
        port,
        &udp6_frame(mine, remote, GW_MAC, b"a"),
    );
    assert_eq!(host.udp.len(), 1);
    // Another port (another MAC) sending from the first guest's address is refused.
    let mut stolen = udp6_frame(mine, remote, GW_MAC, b"b");
    stolen[6..12].copy_from_slice(&GUEST2_MAC);
    send(&mut stack, &mut host, now, other, &stolen);
    assert_eq!(stack.guard.stats.spoofed_source, 1);
    assert_eq!(host.udp.values().map(|s| s.sent.len()).sum::<usize>(), 1);
    // So is a Neighbor Advertisement claiming it.
    let na = NeighborAdvert {
        router: false,
        solicited: false,
        override_: true,
        target: v6(GUEST6),
        target_ll: Some(GUEST2_MAC),
    };
    let f = icmp6_frame(
        GUEST2_MAC,
        multicast_mac(ALL_NODES),
        v6("fe80::2"),
        ALL_NODES,
        ND_NEIGHBOR_ADVERT,
        &na.emit_body(),
    );
    stack.out.queue.clear();
    send(&mut stack, &mut host, now, other, &f);
    assert_eq!(stack.guard.stats.spoofed_source, 2);
    assert!(
        stack.out.queue.iter().all(|f| f.port != port),
        "not flooded to the owner's port"
    );
    // A port cycling through made-up addresses holds at most MAX_IPV6_PER_PORT; its oldest
    // ones are released, and the rest of the network is unaffected.
    for i in 0..100u16 {
        let ip = Ipv6Addr::new(0xfd00, 0x192, 0x168, 5, 0, 0, 0x99, i);
        let f = udp6_frame(SocketAddrV6::new(ip, 6000, 0, 0), remote, GW_MAC, b"c");
        let mut f = f;
        f[6..12].copy_from_slice(&GUEST2_MAC);
        stack.handle_frame(
            &mut host,
            now + Duration::from_millis(u64::from(i)),
            other,
            &f,
        );
    }
    let held = (0..100u16)
        .filter(|&i| {
            stack
                .guard
                .port_of6(&Ipv6Addr::new(0xfd00, 0x192, 0x168, 5, 0, 0, 0x99, i))
                .is_some()
        })
        .count();
    assert_eq!(held, limanet_netstack::guard::MAX_IPV6_PER_PORT);
    assert_eq!(stack.guard.port_of6(&v6(GUEST6)), Some(port));
    // When the first port goes away, its address is free.
    stack.remove_port(&mut host, port);
    assert_eq!(stack.guard.port_of6(&v6(GUEST6)), None);
}

#[test]
fn fragments_are_switched_between_guests_but_not_taken_by_the_gateway() {
    let (mut stack, mut host, port, now) = setup();
    let other = stack.add_port();
    let guest2 = SocketAddrV6::new(v6("fd00:192:168:5::16"), 7000, 0, 0);
    // The second guest is known on its port.
    let mut hello = udp6_frame(
        guest2,
        SocketAddrV6::new(v6(REMOTE6), 53, 0, 0),
        GW_MAC,
        b"h",
    );
    hello[6..12].copy_from_slice(&GUEST2_MAC);
    send(&mut stack, &mut host, now, other, &hello);
    stack.out.queue.clear();
    let mine = SocketAddrV6::new(v6(GUEST6), 5000, 0, 0);
    let frag_of = |dst_mac: MacAddr, dst: SocketAddrV6| {
        let whole = udp6_frame(mine, dst, dst_mac, &[7; 100]);
        let mut f = whole[..54].to_vec();
        f[14 + 6] = PROTO_FRAGMENT;
        f[14 + 4..14 + 6].copy_from_slice(&(8 + whole.len() as u16 - 54).to_be_bytes());
        f.extend_from_slice(&[wire::PROTO_UDP, 0, 0, 1, 0, 0, 0, 5]);
        f.extend_from_slice(&whole[54..]);
        f
    };
    send(
        &mut stack,
        &mut host,
        now,
        port,
        &frag_of(GUEST2_MAC, guest2),
    );
    assert_eq!(stack.out.queue.len(), 1);
    assert_eq!(stack.out.queue[0].port, other);
    assert_eq!(stack.stats.fragments, 0);
    let to_gateway = frag_of(GW_MAC, SocketAddrV6::new(v6(REMOTE6), 53, 0, 0));
    send(&mut stack, &mut host, now, port, &to_gateway);
    assert_eq!(stack.stats.fragments, 1);
    assert_eq!(
        host.udp.values().map(|s| s.sent.len()).sum::<usize>(),
        1,
        "only the hello"
    );
}
