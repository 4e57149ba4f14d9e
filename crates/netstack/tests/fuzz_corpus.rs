//! Replays the cargo-fuzz corpus of the guest-frame handler (fuzz/corpus/guest_frame) on stable,
//! with the in-memory [`FakeHost`]: no panic, no misuse of host sockets, and every frame the
//! stack emits is well formed.
//!
//! Corpus file format (shared with fuzz/fuzz_targets/guest_frame.rs): frames, each preceded by
//! its length as two big-endian bytes; a length past the end takes the rest.
//! `cargo test -p limanet-netstack --test fuzz_corpus -- --ignored` rewrites the seed files.

#[path = "../../../fuzz/stable_mutator.rs"]
mod stable_mutator;
mod support;

use limanet_netstack::dhcp6;
use limanet_netstack::vnet::VnetHeader;
use limanet_netstack::wire::tcp_flags as F;
use limanet_netstack::wire6::{self, NeighborSolicit, RouterAdvert};
use limanet_netstack::{NetConfig, Stack};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddrV4, SocketAddrV6};
use std::path::PathBuf;
use std::time::{Duration, Instant};
use support::*;

fn corpus_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/guest_frame")
}

/// The corpus files, sorted.
fn corpus_files() -> Vec<PathBuf> {
    let dir = corpus_dir();
    let mut entries: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|e| e.expect("directory entry").path())
        .collect();
    entries.sort();
    entries
}

/// Splits an input into frames (see the module docs).
fn split(mut data: &[u8]) -> Vec<&[u8]> {
    let mut frames = Vec::new();
    while data.len() >= 2 {
        let len = usize::from(u16::from_be_bytes([data[0], data[1]])).min(data.len() - 2);
        frames.push(&data[2..2 + len]);
        data = &data[2 + len..];
    }
    frames
}

fn join(frames: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    for f in frames {
        out.extend_from_slice(&(f.len() as u16).to_be_bytes());
        out.extend_from_slice(f);
    }
    out
}

/// Runs one input the way the fuzz target does, and checks the invariants. With `offloads`,
/// the port is a TAP with a virtio-net header: each frame's first 10 bytes are that header
/// (as the kernel would write it, here arbitrary), the rest the frame.
fn replay(name: &str, data: &[u8], offloads: bool) {
    let mut stack = Stack::new(NetConfig::default()).expect("default config");
    let port = stack.add_port();
    stack.set_port_offloads(port, offloads);
    let mut host = FakeHost::new();
    let start = Instant::now();
    let frames = split(data);
    let mut handed = 0;
    for (i, frame) in frames.iter().enumerate() {
        let now = start + Duration::from_millis(i as u64 * 10);
        if !offloads {
            stack.handle_frame(&mut host, now, port, frame);
            handed += 1;
        } else if let Ok((vnet, frame)) = VnetHeader::parse(frame) {
            stack.handle_offloaded_frame(&mut host, now, port, frame, &vnet);
            handed += 1;
        }
        for (sock, _) in host.connects.clone() {
            if host.tcp[&sock].recv.is_empty() && !host.tcp[&sock].eof {
                host.push_recv(sock, &[0x61; 3000]);
                host.sock(sock).eof = true;
                stack.on_tcp_connected(&mut host, now, sock, Ok(()));
                readable(&mut stack, &mut host, now, sock);
            }
        }
        stack.end_batch(&mut host);
        stack.on_timeout(&mut host, now);
        for (p, f) in drain(&mut stack) {
            assert_eq!(p, port, "{name}: only one port");
            // A port with offloads may get super-segments (one IPv4 packet at most).
            let max = if offloads { 14 + 65535 } else { 1514 };
            assert!(f.len() >= 14 && f.len() <= max, "{name}: frame size");
            // Parsing verifies the IP, TCP, UDP and ICMP checksums (IPv6: the upper layer's).
            let _ = (parse_tcp(&f), parse_udp(&f), parse_icmp(&f));
            let _ = support::ipv6::parse6(&f);
        }
    }
    stack.on_timeout(&mut host, start + Duration::from_secs(3600));
    assert_eq!(stack.stats.frames_in, handed, "{name}");
    assert!(host.violations.is_empty(), "{name}: {:?}", host.violations);
}

#[test]
fn corpus_replays_without_panic() {
    let entries = corpus_files();
    assert!(entries.len() >= 20, "corpus has {} files", entries.len());
    for path in entries {
        let data = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        replay(&path.display().to_string(), &data, false);
    }
}

#[test]
fn corpus_replays_on_a_port_with_offloads() {
    let entries = corpus_files();
    for path in entries {
        let data = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        // The corpus frames behind a plain header, and the same bytes read as header + frame.
        let plain: Vec<Vec<u8>> = split(&data)
            .iter()
            .map(|f| [&VnetHeader::default().to_bytes()[..], f].concat())
            .collect();
        replay(&path.display().to_string(), &join(&plain), true);
        replay(&path.display().to_string(), &data, true);
    }
}

/// The seed inputs: valid frames of every kind the stack handles, short conversations, and
/// malformed frames.
fn seeds() -> Vec<(&'static str, Vec<Vec<u8>>)> {
    let g = |p| SocketAddrV4::new(GUEST_IP, p);
    let r = |p| SocketAddrV4::new(REMOTE_IP, p);
    let gw = |p| SocketAddrV4::new(GW_IP, p);
    let mut syn = Seg::new(g(40000), r(80), F::SYN);
    syn.seq = 1000;
    syn.mss = Some(1460);
    syn.wscale = Some(7);
    let mut ack = Seg::new(g(40000), r(80), F::ACK);
    ack.seq = 1001;
    let mut data = ack.clone();
    data.flags = F::ACK | F::PSH;
    data.payload = b"GET / HTTP/1.0\r\n\r\n".to_vec();
    let mut fin = ack.clone();
    fin.flags = F::FIN | F::ACK;
    fin.seq = 1001 + 18;
    let mut rst = ack.clone();
    rst.flags = F::RST;
    let stray = Seg::new(g(40001), r(80), F::ACK);
    let mut syn_gw = syn.clone();
    syn_gw.dst = gw(22);
    let ping_gw = ping_frame(GUEST_IP, GW_IP, 1, 1, b"abcdefgh");
    let ping_out = ping_frame(GUEST_IP, REMOTE_IP, 2, 1, b"abcdefgh");
    let udp_out = udp_frame(g(5000), r(9999), b"hello");
    let udp_dns = udp_frame(g(5001), SocketAddrV4::new(DNS_IP, 53), b"\x12\x34\x01\x00");
    let udp_gw = udp_frame(g(5002), gw(7000), b"x");
    let arp = arp_request(GUEST_MAC, GUEST_IP, GW_IP);
    let arp_other = arp_request(GUEST_MAC, GUEST_IP, Ipv4Addr::new(192, 168, 5, 99));
    let dhcp = dhcp_discover(GUEST_MAC);
    let mut bad_ihl = ping_gw.clone();
    bad_ihl[14] = 0x41;
    let mut long_total = ping_gw.clone();
    long_total[16] = 0xff;
    let mut fragment = udp_out.clone();
    fragment[20] = 0x20;
    let mut tcp_bad_offset = tcp_frame(&syn);
    tcp_bad_offset[14 + 20 + 12] = 0xf0;
    let mut tcp_bad_option = tcp_frame(&syn);
    tcp_bad_option[14 + 20 + 21] = 0; // MSS option length 0
    let mut udp_bad_len = udp_out.clone();
    udp_bad_len[14 + 20 + 5] = 0xff;
    let mut arp_bad = arp.clone();
    arp_bad[14 + 4] = 7;
    let mut dhcp_garbage = dhcp.clone();
    let l = dhcp_garbage.len();
    dhcp_garbage[l - 30..].fill(0xff);
    let to_other = ethernet(GUEST2_MAC, GUEST_MAC, 0x88b5, b"switched");
    let bcast = ethernet([0xff; 6], GUEST_MAC, 0x88b5, b"flooded");
    let mut bad_icmp = ping_gw.clone();
    bad_icmp.truncate(14 + 20 + 5);
    bad_icmp[16..18].copy_from_slice(&25u16.to_be_bytes());
    let mut seeds = vec![
        ("arp_gateway", vec![arp.clone()]),
        ("arp_other", vec![arp_other]),
        ("arp_bad_hlen", vec![arp_bad]),
        ("arp_short", vec![arp[..30].to_vec()]),
        ("dhcp_discover", vec![dhcp.clone()]),
        ("dhcp_garbage", vec![dhcp_garbage]),
        ("dhcp_truncated", vec![dhcp[..200].to_vec()]),
        ("ping_gateway", vec![ping_gw.clone()]),
        ("ping_dns", vec![ping_frame(GUEST_IP, DNS_IP, 1, 2, b"")]),
        ("ping_outside", vec![ping_out]),
        ("icmp_truncated", vec![bad_icmp]),
        ("udp_outside", vec![udp_out.clone()]),
        ("udp_dns", vec![udp_dns]),
        ("udp_gateway", vec![udp_gw]),
        ("udp_bad_length", vec![udp_bad_len]),
        ("ip_fragment", vec![fragment]),
        ("ip_bad_ihl", vec![bad_ihl]),
        ("ip_bad_total_length", vec![long_total]),
        ("tcp_syn", vec![tcp_frame(&syn)]),
        ("tcp_syn_gateway", vec![tcp_frame(&syn_gw)]),
        ("tcp_bad_offset", vec![tcp_bad_offset]),
        ("tcp_bad_option", vec![tcp_bad_option]),
        ("tcp_stray_ack", vec![tcp_frame(&stray)]),
        (
            "tcp_conversation",
            vec![
                arp.clone(),
                tcp_frame(&syn),
                tcp_frame(&ack),
                tcp_frame(&data),
                tcp_frame(&fin),
            ],
        ),
        ("tcp_syn_rst", vec![tcp_frame(&syn), tcp_frame(&rst)]),
        (
            "tcp_syn_flood",
            (0..20)
                .map(|i| {
                    let mut s = syn.clone();
                    s.src = g(41000 + i);
                    tcp_frame(&s)
                })
                .collect(),
        ),
        ("switch_unicast", vec![to_other]),
        ("switch_broadcast", vec![bcast]),
        ("empty_frame", vec![vec![]]),
        ("short_frame", vec![vec![0x52; 9]]),
        ("ethernet_only", vec![ping_gw[..14].to_vec()]),
        (
            "unknown_ethertype",
            vec![ethernet(GW_MAC, GUEST_MAC, 0x86dd, &[0; 40])],
        ),
        (
            "mixed",
            vec![
                dhcp,
                arp,
                ping_gw,
                udp_out,
                tcp_frame(&syn),
                vec![],
                tcp_frame(&ack),
            ],
        ),
    ];
    seeds.extend(ipv6_seeds());
    seeds
}

/// IPv6 seeds: Neighbor Discovery, DHCPv6, echo, TCP and UDP, and the bad input of
/// `tests/ipv6.rs` (fragments, long extension-header chains, guest RAs, NS floods).
fn ipv6_seeds() -> Vec<(&'static str, Vec<Vec<u8>>)> {
    use support::ipv6::*;
    let ip = |s: &str| s.parse::<Ipv6Addr>().expect("address");
    let guest_ll = ip("fe80::5055:55ff:fe00:f");
    let guest6 = ip("fd00:192:168:5:5055:55ff:fe00:f");
    let gw6 = ip("fd00:192:168:5::2");
    let dns6 = ip("fd00:192:168:5::3");
    let remote6 = ip("2001:db8:203::2");
    let sa = |ip, port| SocketAddrV6::new(ip, port, 0, 0);
    let rs = icmp6_frame(
        GUEST_MAC,
        wire6::multicast_mac(wire6::ALL_ROUTERS),
        guest_ll,
        wire6::ALL_ROUTERS,
        wire6::ND_ROUTER_SOLICIT,
        &[0, 0, 0, 0, 1, 1, 0x52, 0x55, 0x55, 0, 0, 0x0f],
    );
    let ns_body = NeighborSolicit {
        target: gw6,
        source_ll: Some(GUEST_MAC),
    }
    .emit_body();
    let ns = icmp6_frame(
        GUEST_MAC,
        wire6::multicast_mac(wire6::solicited_node(gw6)),
        guest6,
        wire6::solicited_node(gw6),
        wire6::ND_NEIGHBOR_SOLICIT,
        &ns_body,
    );
    let dad = icmp6_frame(
        GUEST_MAC,
        wire6::multicast_mac(wire6::solicited_node(guest6)),
        Ipv6Addr::UNSPECIFIED,
        wire6::solicited_node(guest6),
        wire6::ND_NEIGHBOR_SOLICIT,
        &NeighborSolicit {
            target: guest6,
            source_ll: None,
        }
        .emit_body(),
    );
    let info = dhcp6::Message {
        kind: dhcp6::MSG_INFORMATION_REQUEST,
        transaction: [1, 2, 3],
        options: vec![(
            dhcp6::OPT_CLIENT_ID,
            &[0, 3, 0, 1, 0x52, 0x55, 0x55, 0, 0, 0x0f][..],
        )],
    }
    .emit();
    let dhcp6_frame = udp6_frame(
        sa(guest_ll, 546),
        sa(dhcp6::ALL_SERVERS, 547),
        wire6::multicast_mac(dhcp6::ALL_SERVERS),
        &info,
    );
    let udp_out = udp6_frame(sa(guest6, 5000), sa(remote6, 9999), GW_MAC, b"hello6");
    let udp_dns = udp6_frame(sa(guest6, 5001), sa(dns6, 53), GW_MAC, b"\x12\x34\x01\x00");
    let syn_gw = tcp6_frame(sa(guest6, 40000), sa(gw6, 22), 1000, 0, F::SYN, b"");
    let syn_out = tcp6_frame(sa(guest6, 40001), sa(remote6, 80), 1000, 0, F::SYN, b"");
    let ack_out = tcp6_frame(sa(guest6, 40001), sa(remote6, 80), 1001, 0, F::ACK, b"");
    let data_out = tcp6_frame(
        sa(guest6, 40001),
        sa(remote6, 80),
        1001,
        0,
        F::ACK | F::PSH,
        b"GET / HTTP/1.0\r\n\r\n",
    );
    let echo = |dst| {
        let m = wire6::icmpv6_message(
            guest6,
            dst,
            wire6::ICMPV6_ECHO_REQUEST,
            0,
            &[0, 9, 0, 1, b'x'],
        );
        frame6(GUEST_MAC, GW_MAC, guest6, dst, wire6::PROTO_ICMPV6, 64, &m)
    };
    // Extension headers in front of udp_out's datagram.
    let with_ext = |first: u8, headers: &[[u8; 8]]| {
        let mut body: Vec<u8> = headers.concat();
        body.extend_from_slice(&udp_out[54..]);
        let mut f = udp_out[..54].to_vec();
        f[14 + 6] = first;
        f[14 + 4..14 + 6].copy_from_slice(&(body.len() as u16).to_be_bytes());
        f.extend_from_slice(&body);
        f
    };
    let udp = limanet_netstack::wire::PROTO_UDP;
    let fragment = with_ext(wire6::PROTO_FRAGMENT, &[[udp, 0, 0, 1, 0, 0, 0, 7]]);
    let hop_by_hop = with_ext(wire6::PROTO_HOP_BY_HOP, &[[udp, 0, 5, 2, 0, 0, 1, 0]]);
    let long_chain = with_ext(
        wire6::PROTO_DEST_OPTS,
        &[[wire6::PROTO_DEST_OPTS, 0, 1, 4, 0, 0, 0, 0]; 12],
    );
    let routing = with_ext(wire6::PROTO_ROUTING, &[[udp, 0, 0, 3, 0, 0, 0, 0]]);
    let ra = RouterAdvert {
        hop_limit: 64,
        managed: true,
        other: true,
        router_lifetime: 9000,
        reachable_time: 0,
        retrans_timer: 0,
        source_ll: Some(GUEST_MAC),
        mtu: Some(1280),
        prefixes: vec![],
        rdnss: Some((100, vec![guest6])),
    };
    let guest_ra = icmp6_frame(
        GUEST_MAC,
        wire6::multicast_mac(wire6::ALL_NODES),
        guest_ll,
        wire6::ALL_NODES,
        wire6::ND_ROUTER_ADVERT,
        &ra.emit_body(),
    );
    let mut bad_nd_option = ns.clone();
    let n = bad_nd_option.len();
    bad_nd_option[n - 7] = 0; // source link-layer option of length 0
    let mut truncated = udp_out.clone();
    truncated[14 + 5] = 0xff; // payload length past the frame
    vec![
        ("ipv6_router_solicit", vec![rs.clone()]),
        ("ipv6_neighbor_solicit", vec![ns.clone()]),
        ("ipv6_dad", vec![dad]),
        ("ipv6_dhcpv6_info_request", vec![dhcp6_frame]),
        ("ipv6_udp_outside", vec![udp_out.clone()]),
        ("ipv6_udp_dns", vec![udp_dns]),
        ("ipv6_ping_gateway", vec![echo(gw6)]),
        ("ipv6_ping_outside", vec![echo(remote6)]),
        ("ipv6_tcp_syn_gateway", vec![syn_gw]),
        (
            "ipv6_tcp_conversation",
            vec![rs, ns.clone(), syn_out, ack_out, data_out],
        ),
        ("ipv6_fragment", vec![fragment]),
        ("ipv6_hop_by_hop", vec![hop_by_hop]),
        ("ipv6_ext_chain", vec![long_chain]),
        ("ipv6_routing_header", vec![routing]),
        ("ipv6_guest_ra", vec![guest_ra]),
        ("ipv6_bad_nd_option", vec![bad_nd_option]),
        ("ipv6_truncated", vec![truncated]),
        ("ipv6_ns_flood", vec![ns; 200]),
    ]
}

#[test]
#[ignore = "rewrites the seed corpus; run by hand"]
fn regenerate_seed_corpus() {
    let dir = corpus_dir();
    std::fs::create_dir_all(&dir).expect("corpus directory");
    for (name, frames) in seeds() {
        std::fs::write(dir.join(name), join(&frames)).expect("write seed");
    }
}

#[test]
fn seeds_match_their_frames() {
    // The format round-trips, and each seed replays.
    for (name, frames) in seeds() {
        let joined = join(&frames);
        let split_back: Vec<Vec<u8>> = split(&joined).into_iter().map(<[u8]>::to_vec).collect();
        assert_eq!(split_back, frames, "{name}");
        replay(name, &joined, false);
    }
}

/// Beyond the corpus, on stable: random inputs and mutations of the corpus through the same
/// replay (and its invariants) for `LIMANET_FUZZ_SECS` seconds (default 10; 0 skips);
/// `LIMANET_FUZZ_SEED` replays a run.
#[test]
fn time_boxed_mutation_fuzz() {
    let secs: u64 = std::env::var("LIMANET_FUZZ_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    let corpus: Vec<Vec<u8>> = corpus_files()
        .iter()
        .map(|path| std::fs::read(path).expect("read"))
        .collect();
    let runs = stable_mutator::mutation_fuzz(&corpus, secs, 4096, |data| {
        // Odd first byte: the same input on a port with offloads (headers from the input).
        replay("mutated", data, data.first().is_some_and(|b| b & 1 == 1))
    });
    eprintln!("guest_frame: {runs} inputs in {secs} s");
}
