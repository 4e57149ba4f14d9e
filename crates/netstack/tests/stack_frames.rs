//! The I/O-free core driven with hand-built byte-vector frames and an in-memory host: ARP, ICMP
//! echo, TCP translation, UDP NAT, the switch, and bad input.

mod support;

use limanet_netstack::wire::tcp_flags as F;
use limanet_netstack::{NetConfig, PortId, Stack};
use std::io;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};
use support::*;

fn stack_with(cfg: NetConfig) -> (Stack, FakeHost, PortId, Instant) {
    let mut stack = Stack::new(cfg).expect("valid config");
    let port = stack.add_port();
    (stack, FakeHost::new(), port, Instant::now())
}

fn setup() -> (Stack, FakeHost, PortId, Instant) {
    stack_with(NetConfig::default())
}

fn guest(port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(GUEST_IP, port)
}

fn remote(port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(REMOTE_IP, port)
}

fn send(stack: &mut Stack, host: &mut FakeHost, now: Instant, port: PortId, frame: &[u8]) {
    stack.handle_frame(host, now, port, frame);
    stack.end_batch(host);
}

/// An established connection from the guest's `gport` to `dst`.
struct Conn {
    sock: usize,
    g: SocketAddrV4,
    r: SocketAddrV4,
    /// Next sequence number the guest sends.
    gseq: u32,
    /// Next sequence number the stack sends (what the guest acknowledges).
    sseq: u32,
}

/// The guest sends a segment of `c` (at its current sequence numbers).
fn guest_sends(
    stack: &mut Stack,
    host: &mut FakeHost,
    now: Instant,
    port: PortId,
    c: &Conn,
    flags: u8,
    payload: &[u8],
) {
    send(stack, host, now, port, &tcp_frame(&c.seg(flags, payload)));
}

impl Conn {
    fn seg(&self, flags: u8, payload: &[u8]) -> Seg {
        let mut s = Seg::new(self.g, self.r, flags);
        s.seq = self.gseq;
        s.ack = self.sseq;
        s.window = 65535;
        s.payload = payload.to_vec();
        s
    }
}

const GUEST_ISS: u32 = 0xfffff000; // wraps soon: sequence arithmetic must be modular

fn open(
    stack: &mut Stack,
    host: &mut FakeHost,
    now: Instant,
    port: PortId,
    gport: u16,
    dst: SocketAddrV4,
) -> Conn {
    let mut syn = Seg::new(guest(gport), dst, F::SYN);
    syn.seq = GUEST_ISS;
    syn.mss = Some(1460);
    syn.wscale = Some(0);
    send(stack, host, now, port, &tcp_frame(&syn));
    assert!(
        drain(stack).is_empty(),
        "no SYN-ACK before the host connect completes"
    );
    let sock = host.last_tcp();
    stack.on_tcp_connected(host, now, sock, Ok(()));
    let out = drain_tcp(stack);
    assert_eq!(out.len(), 1);
    let synack = &out[0];
    assert_eq!(synack.flags, F::SYN | F::ACK);
    assert_eq!(synack.ack, GUEST_ISS.wrapping_add(1));
    let c = Conn {
        sock,
        g: guest(gport),
        r: dst,
        gseq: GUEST_ISS.wrapping_add(1),
        sseq: synack.seq.wrapping_add(1),
    };
    guest_sends(stack, host, now, port, &c, F::ACK, &[]);
    assert!(drain_tcp(stack).is_empty(), "nothing to send yet");
    c
}

#[test]
fn arp_for_gateway_and_dns_answered_with_gateway_mac() {
    let (mut stack, mut host, port, now) = setup();
    for target in [GW_IP, DNS_IP] {
        send(
            &mut stack,
            &mut host,
            now,
            port,
            &arp_request(GUEST_MAC, GUEST_IP, target),
        );
        let out = drain(&mut stack);
        assert_eq!(out.len(), 1, "one reply for {target}");
        let (p, f) = &out[0];
        assert_eq!(*p, port);
        assert_eq!(&f[0..6], &GUEST_MAC);
        assert_eq!(&f[6..12], &GW_MAC);
        assert_eq!(&f[12..14], &[0x08, 0x06]);
        let a = &f[14..];
        assert_eq!(&a[6..8], &[0, 2], "ARP reply");
        assert_eq!(&a[8..14], &GW_MAC, "sender MAC is the gateway's");
        assert_eq!(&a[14..18], &target.octets());
        assert_eq!(&a[18..24], &GUEST_MAC);
        assert_eq!(&a[24..28], &GUEST_IP.octets());
    }
    for other in [Ipv4Addr::new(192, 168, 5, 99), REMOTE_IP, GUEST_IP] {
        send(
            &mut stack,
            &mut host,
            now,
            port,
            &arp_request(GUEST_MAC, GUEST_IP, other),
        );
        assert!(drain(&mut stack).is_empty(), "no answer for {other}");
    }
    assert!(host.violations.is_empty());
}

#[test]
fn ping_local_addresses_answered_locally() {
    let (mut stack, mut host, port, now) = setup();
    for dst in [GW_IP, DNS_IP] {
        let data = b"abcdefghijklmnopqrstuvw";
        send(
            &mut stack,
            &mut host,
            now,
            port,
            &ping_frame(GUEST_IP, dst, 0x4242, 7, data),
        );
        let out = drain(&mut stack);
        assert_eq!(out.len(), 1);
        let (src, to, kind, ident, seq, payload) = parse_icmp(&out[0].1).expect("ICMP reply");
        assert_eq!((src, to, kind, ident, seq), (dst, GUEST_IP, 0, 0x4242, 7));
        assert_eq!(payload, data);
    }
    assert!(host.icmp.is_empty(), "no host socket for local pings");
}

#[test]
fn ping_outside_goes_to_host_socket_and_only_real_reply_returns() {
    let (mut stack, mut host, port, now) = setup();
    send(
        &mut stack,
        &mut host,
        now,
        port,
        &ping_frame(GUEST_IP, REMOTE_IP, 0x1111, 1, b"hi"),
    );
    assert!(drain(&mut stack).is_empty(), "limanet never forges a reply");
    let (&sock, s) = host.icmp.iter().next().expect("an ICMP socket");
    assert_eq!(s.sent.len(), 1);
    assert_eq!(s.sent[0].0.ip(), REMOTE_IP);
    assert_eq!(s.sent[0].1, icmp_echo_bytes(8, 0x1111, 1, b"hi"));
    // The kernel rewrites the identifier; the guest gets its own back.
    let reply = icmp_echo_bytes(0, 0x9999, 1, b"hi");
    assert!(stack.on_icmp_message(sock, REMOTE_IP, &reply));
    let out = drain(&mut stack);
    assert_eq!(out.len(), 1);
    let (src, dst, kind, ident, seq, data) = parse_icmp(&out[0].1).expect("ICMP");
    assert_eq!(
        (src, dst, kind, ident, seq),
        (REMOTE_IP, GUEST_IP, 0, 0x1111, 1)
    );
    assert_eq!(data, b"hi");
    // A non-reply (echo request) on the socket is ignored.
    assert!(stack.on_icmp_message(sock, REMOTE_IP, &icmp_echo_bytes(8, 1, 1, b"")));
    assert!(drain(&mut stack).is_empty());
    assert!(
        !stack.on_icmp_message(9999, REMOTE_IP, &reply),
        "unknown socket"
    );
    // Idle echo sockets are closed.
    stack.on_timeout(&mut host, now + Duration::from_secs(120));
    assert!(host.icmp[&sock].closed);
    assert!(host.violations.is_empty());
}

#[test]
fn ping_socket_refused_is_dropped_quietly() {
    let (mut stack, mut host, port, now) = setup();
    host.fail_icmp_open = true;
    send(
        &mut stack,
        &mut host,
        now,
        port,
        &ping_frame(GUEST_IP, REMOTE_IP, 1, 1, b""),
    );
    assert!(drain(&mut stack).is_empty());
    // The other protocols go on.
    send(
        &mut stack,
        &mut host,
        now,
        port,
        &ping_frame(GUEST_IP, GW_IP, 1, 1, b""),
    );
    assert_eq!(drain(&mut stack).len(), 1);
}

#[test]
fn tcp_syn_waits_for_host_connect_then_synack_with_options() {
    let (mut stack, mut host, port, now) = setup();
    let mut syn = Seg::new(guest(40000), remote(443), F::SYN);
    syn.seq = 5000;
    syn.mss = Some(65000);
    syn.wscale = Some(7);
    send(&mut stack, &mut host, now, port, &tcp_frame(&syn));
    assert!(drain(&mut stack).is_empty());
    assert_eq!(host.connects.len(), 1);
    assert_eq!(host.connects[0].1, remote(443).into());
    // A retransmitted SYN while connecting does not open a second socket.
    send(&mut stack, &mut host, now, port, &tcp_frame(&syn));
    assert!(drain(&mut stack).is_empty());
    assert_eq!(host.connects.len(), 1);
    let sock = host.last_tcp();
    stack.on_tcp_connected(&mut host, now, sock, Ok(()));
    let out = drain_tcp(&mut stack);
    assert_eq!(out.len(), 1);
    let s = &out[0];
    assert_eq!(s.flags, F::SYN | F::ACK);
    assert_eq!(
        (s.src, s.dst, s.dst_mac),
        (remote(443), guest(40000), GUEST_MAC)
    );
    assert_eq!(s.ack, 5001);
    let mss = s.mss.expect("MSS option");
    assert!(mss <= 1500 - 40, "MSS {mss} fits the MTU");
    assert!(
        s.wscale.is_some(),
        "window scale offered when the guest offered it"
    );
    assert!(s.window > 0);
    // SYN-ACK lost: the guest's retransmitted SYN gets it again.
    send(&mut stack, &mut host, now, port, &tcp_frame(&syn));
    let again = drain_tcp(&mut stack);
    assert_eq!(again.len(), 1);
    assert_eq!((again[0].flags, again[0].seq), (F::SYN | F::ACK, s.seq));
    // And the retransmission timer also resends it.
    let due = stack.poll_timeout().expect("SYN-ACK timer");
    stack.on_timeout(&mut host, due);
    let timed = drain_tcp(&mut stack);
    assert_eq!(timed.len(), 1);
    assert_eq!(timed[0].flags, F::SYN | F::ACK);
    assert_eq!(stack.tcp_flows(), 1);
}

#[test]
fn tcp_refused_connect_answers_rst() {
    let (mut stack, mut host, port, now) = setup();
    let mut syn = Seg::new(guest(40001), remote(81), F::SYN);
    syn.seq = 77;
    send(&mut stack, &mut host, now, port, &tcp_frame(&syn));
    let sock = host.last_tcp();
    stack.on_tcp_connected(
        &mut host,
        now,
        sock,
        Err(io::ErrorKind::ConnectionRefused.into()),
    );
    let out = drain_tcp(&mut stack);
    assert_eq!(out.len(), 1);
    assert!(out[0].has(F::RST) && out[0].has(F::ACK));
    assert_eq!(out[0].ack, 78);
    assert_eq!(stack.tcp_flows(), 0);
    assert_eq!(host.tcp[&sock].closed, Some(false));
    // Immediate failure of connect() also gives a RST.
    host.fail_connect = Some(io::ErrorKind::NetworkUnreachable);
    syn.src = guest(40002);
    send(&mut stack, &mut host, now, port, &tcp_frame(&syn));
    let out = drain_tcp(&mut stack);
    assert_eq!(out.len(), 1);
    assert!(out[0].has(F::RST));
    assert_eq!(out[0].ack, 78);
    assert_eq!(stack.tcp_flows(), 0);
    assert!(host.violations.is_empty());
}

#[test]
fn tcp_unroutable_destinations_answered_rst() {
    let (mut stack, mut host, port, now) = setup();
    // .3:80 has no service, a loopback destination is not allowed, and .2:53 has no DNS TCP yet.
    for (i, dst) in [
        SocketAddrV4::new(DNS_IP, 80),
        SocketAddrV4::new(Ipv4Addr::LOCALHOST, 22),
        SocketAddrV4::new(DNS_IP, 53),
    ]
    .into_iter()
    .enumerate()
    {
        let syn = Seg::new(guest(41000 + i as u16), dst, F::SYN);
        send(&mut stack, &mut host, now, port, &tcp_frame(&syn));
        let out = drain_tcp(&mut stack);
        assert_eq!(out.len(), 1, "RST for {dst}");
        assert!(out[0].has(F::RST));
    }
    assert!(host.connects.is_empty());
}

#[test]
fn tcp_segment_for_unknown_flow_gets_rst_with_right_numbers() {
    let (mut stack, mut host, port, now) = setup();
    // With ACK: RST whose seq is the segment's ack, no ACK flag.
    let mut s = Seg::new(guest(40100), remote(80), F::ACK | F::PSH);
    s.seq = 1000;
    s.ack = 0xdead_beef;
    s.payload = b"stray".to_vec();
    send(&mut stack, &mut host, now, port, &tcp_frame(&s));
    let out = drain_tcp(&mut stack);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].flags, F::RST);
    assert_eq!(out[0].seq, 0xdead_beef);
    assert_eq!((out[0].src, out[0].dst), (remote(80), guest(40100)));
    // Without ACK (a FIN alone): RST+ACK acknowledging the segment's sequence space.
    let mut fin = Seg::new(guest(40101), remote(80), F::FIN);
    fin.seq = 500;
    fin.payload = b"abc".to_vec();
    send(&mut stack, &mut host, now, port, &tcp_frame(&fin));
    let out = drain_tcp(&mut stack);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].flags, F::RST | F::ACK);
    assert_eq!((out[0].seq, out[0].ack), (0, 504));
    // A RST for an unknown flow is not answered.
    let rst = Seg::new(guest(40102), remote(80), F::RST);
    send(&mut stack, &mut host, now, port, &tcp_frame(&rst));
    assert!(drain(&mut stack).is_empty());
    assert!(host.connects.is_empty());
}

#[test]
fn tcp_data_both_ways_and_consumed_on_ack() {
    let (mut stack, mut host, port, now) = setup();
    let mut c = open(&mut stack, &mut host, now, port, 40200, remote(80));
    // Guest → host.
    let req = b"GET / HTTP/1.0\r\n\r\n";
    guest_sends(&mut stack, &mut host, now, port, &c, F::ACK | F::PSH, req);
    c.gseq = c.gseq.wrapping_add(req.len() as u32);
    assert_eq!(host.sock(c.sock).send_buf, req);
    // A little data waits (briefly) for a reply to carry its ACK; none comes, so the timer
    // sends it alone.
    assert!(drain_tcp(&mut stack).is_empty(), "ACK delayed");
    let due = stack.poll_timeout().expect("delayed ACK timer");
    assert!(due - now <= Duration::from_millis(1));
    stack.on_timeout(&mut host, due);
    let acks = drain_tcp(&mut stack);
    assert_eq!(acks.len(), 1, "one ACK");
    assert_eq!(acks[0].ack, c.gseq);
    // A duplicate of the same data is not sent twice, and is re-acknowledged.
    let mut dup = c.seg(F::ACK | F::PSH, req);
    dup.seq = c.gseq.wrapping_sub(req.len() as u32);
    send(&mut stack, &mut host, now, port, &tcp_frame(&dup));
    assert_eq!(host.sock(c.sock).send_buf.len(), req.len());
    assert_eq!(drain_tcp(&mut stack)[0].ack, c.gseq);
    // Host → guest: 4000 bytes in MSS-sized segments, peeked, not consumed until acknowledged.
    let body: Vec<u8> = (0..4000u32).map(|i| (i * 7) as u8).collect();
    host.push_recv(c.sock, &body);
    readable(&mut stack, &mut host, now, c.sock);
    let segs = drain_tcp(&mut stack);
    assert_eq!(segs.len(), 3);
    let mut got = Vec::new();
    let mut seq = c.sseq;
    for s in &segs {
        assert!(s.payload.len() <= 1460);
        assert_eq!(s.seq, seq);
        seq = seq.wrapping_add(s.payload.len() as u32);
        got.extend_from_slice(&s.payload);
    }
    assert_eq!(got, body);
    assert_eq!(host.sock(c.sock).consumed, 0, "kept until acknowledged");
    c.sseq = c.sseq.wrapping_add(1460);
    guest_sends(&mut stack, &mut host, now, port, &c, F::ACK, &[]);
    assert_eq!(host.sock(c.sock).consumed, 1460);
    c.sseq = seq;
    guest_sends(&mut stack, &mut host, now, port, &c, F::ACK, &[]);
    assert_eq!(host.sock(c.sock).consumed, 4000);
    assert!(host.violations.is_empty());
}

#[test]
fn tcp_request_response_costs_one_peek_and_the_fin_rides_along() {
    // Host receive calls are system calls: sending must make none, and a response whose peer
    // closed right after it goes out, with the request's ACK and the FIN, after one peek.
    let (mut stack, mut host, port, now) = setup();
    let mut c = open(&mut stack, &mut host, now, port, 40220, remote(80));
    let calls = host.receive_calls;
    guest_sends(
        &mut stack,
        &mut host,
        now,
        port,
        &c,
        F::ACK | F::PSH,
        b"ping",
    );
    c.gseq = c.gseq.wrapping_add(4);
    assert!(
        drain_tcp(&mut stack).is_empty(),
        "the ACK waits for the reply"
    );
    assert_eq!(host.receive_calls, calls, "no receive call after sending");
    host.push_recv(c.sock, b"pong");
    host.sock(c.sock).eof = true;
    readable(&mut stack, &mut host, now, c.sock);
    let out = drain_tcp(&mut stack);
    assert_eq!(host.receive_calls, calls + 1, "one peek");
    let segs: Vec<(u8, u32, Vec<u8>)> = out
        .iter()
        .map(|s| (s.flags, s.ack, s.payload.clone()))
        .collect();
    assert_eq!(
        segs,
        vec![
            (F::ACK | F::PSH, c.gseq, b"pong".to_vec()),
            (F::FIN | F::ACK, c.gseq, Vec::new())
        ]
    );
    // The reply carried the ACK: the delayed one is not sent as well.
    if let Some(due) = stack.poll_timeout() {
        stack.on_timeout(&mut host, due.min(now + Duration::from_millis(5)));
    }
    assert!(drain_tcp(&mut stack).is_empty());
    assert!(host.violations.is_empty());
}

#[test]
fn tcp_guest_segments_after_a_gap_are_held_until_it_is_filled() {
    let (mut stack, mut host, port, now) = setup();
    let mut c = open(&mut stack, &mut host, now, port, 40230, remote(80));
    let (a, b, d) = (vec![b'a'; 1000], vec![b'b'; 1000], vec![b'd'; 500]);
    // Segments 2 and 3 arrive before segment 1 (and 3 twice): duplicate ACKs, nothing sent.
    for (offset, payload) in [(1000, &b), (2000, &d), (2000, &d)] {
        let mut seg = c.seg(F::ACK | F::PSH, payload);
        seg.seq = c.gseq.wrapping_add(offset);
        send(&mut stack, &mut host, now, port, &tcp_frame(&seg));
        let acks = drain_tcp(&mut stack);
        assert_eq!(acks.len(), 1, "a duplicate ACK at once");
        assert_eq!(acks[0].ack, c.gseq, "still expecting the first byte");
    }
    assert!(host.sock(c.sock).send_buf.is_empty());
    // The missing segment fills the gap: everything goes to the host in order, and the ACK
    // (sent at once) covers all of it.
    guest_sends(&mut stack, &mut host, now, port, &c, F::ACK | F::PSH, &a);
    let all: Vec<u8> = [a, b, d].concat();
    assert_eq!(host.sock(c.sock).send_buf, all);
    c.gseq = c.gseq.wrapping_add(all.len() as u32);
    let acks = drain_tcp(&mut stack);
    assert_eq!(acks.len(), 1);
    assert_eq!(acks[0].ack, c.gseq);
    assert!(host.violations.is_empty());
}

/// The guest sends `segments` in one batch (one read round), then the batch ends.
fn guest_batch(
    stack: &mut Stack,
    host: &mut FakeHost,
    now: Instant,
    port: PortId,
    segments: &[Seg],
) {
    for seg in segments {
        stack.handle_frame(host, now, port, &tcp_frame(seg));
    }
    stack.end_batch(host);
}

/// `n` in-order segments of `len` bytes from `c`, each a different byte value.
fn in_order(c: &Conn, n: usize, len: usize) -> (Vec<Seg>, Vec<u8>) {
    let mut all = Vec::new();
    let segs = (0..n)
        .map(|i| {
            let payload = vec![i as u8; len];
            let mut seg = c.seg(F::ACK | F::PSH, &payload);
            seg.seq = c.gseq.wrapping_add(all.len() as u32);
            all.extend_from_slice(&payload);
            seg
        })
        .collect();
    (segs, all)
}

#[test]
fn tcp_a_batch_of_small_guest_segments_is_one_send() {
    let (mut stack, mut host, port, now) = setup();
    let c = open(&mut stack, &mut host, now, port, 40240, remote(80));
    let (segs, all) = in_order(&c, 10, 1000);
    let calls = host.send_calls;
    guest_batch(&mut stack, &mut host, now, port, &segs);
    assert_eq!(host.send_calls - calls, 1, "one send for the batch");
    assert_eq!(host.sock(c.sock).send_buf, all, "in order, nothing lost");
    let acks = drain_tcp(&mut stack);
    assert_eq!(acks.len(), 1, "one ACK for the batch");
    assert_eq!(acks[0].ack, c.gseq.wrapping_add(all.len() as u32));
    assert!(host.violations.is_empty());
}

#[test]
fn tcp_a_gathered_batch_the_socket_takes_in_part_is_held_and_acknowledged_in_part() {
    let (mut stack, mut host, port, now) = setup();
    host.tcp_capacity = 4500;
    let mut c = open(&mut stack, &mut host, now, port, 40241, remote(80));
    let (segs, all) = in_order(&c, 4, 1000);
    // The guest's FIN, after all the data below.
    let mut fin = c.seg(F::ACK | F::FIN, &[]);
    fin.seq = c.gseq.wrapping_add(all.len() as u32);
    guest_batch(&mut stack, &mut host, now, port, &segs);
    // The socket (4500 bytes) took all 4000.
    assert_eq!(host.sock(c.sock).send_buf, all);
    let (more, rest) = in_order(
        &Conn {
            gseq: c.gseq.wrapping_add(all.len() as u32),
            ..c
        },
        2,
        400,
    );
    let mut fin2 = fin.clone();
    fin2.seq = fin.seq.wrapping_add(rest.len() as u32);
    guest_batch(
        &mut stack,
        &mut host,
        now,
        port,
        &[more[0].clone(), more[1].clone(), fin2],
    );
    // 500 of the next 800 bytes fit: the ACK covers exactly those, with a zero window; the
    // rest is held, and the FIN behind it waits.
    assert_eq!(host.sock(c.sock).send_buf.len(), 4500);
    assert!(
        !host.sock(c.sock).shut_wr,
        "FIN waits for the data before it"
    );
    let last = drain_tcp(&mut stack).pop().expect("an ACK");
    c.gseq = c.gseq.wrapping_add(4500);
    assert_eq!((last.ack, last.window), (c.gseq, 0));
    // The socket drains: the held 300 bytes follow, then the guest's FIN (retransmitted).
    host.drain_send(c.sock);
    stack.on_tcp_writable(&mut host, c.sock);
    host.drain_send(c.sock);
    let mut fin3 = fin.clone();
    fin3.seq = fin.seq.wrapping_add(rest.len() as u32);
    guest_batch(&mut stack, &mut host, now, port, &[fin3]);
    assert_eq!(host.sock(c.sock).delivered, [all, rest].concat());
    assert!(host.sock(c.sock).shut_wr, "FIN after all the data");
    assert!(host.violations.is_empty());
}

#[test]
fn tcp_a_gap_after_gathered_data_acknowledges_the_gathered_data() {
    let (mut stack, mut host, port, now) = setup();
    let c = open(&mut stack, &mut host, now, port, 40242, remote(80));
    let (segs, all) = in_order(&c, 3, 1000);
    // Segment 2 is lost: 1 and 3 arrive in one batch.
    guest_batch(
        &mut stack,
        &mut host,
        now,
        port,
        &[segs[0].clone(), segs[2].clone()],
    );
    assert_eq!(host.sock(c.sock).send_buf, all[..1000]);
    let acks = drain_tcp(&mut stack);
    assert!(!acks.is_empty());
    let first_ack = c.gseq.wrapping_add(1000);
    assert!(
        acks.iter().all(|a| a.ack == first_ack),
        "never past the gap"
    );
    // The retransmission fills it: all three in order.
    guest_batch(&mut stack, &mut host, now, port, &[segs[1].clone()]);
    assert_eq!(host.sock(c.sock).send_buf, all);
    let last = drain_tcp(&mut stack).pop().expect("an ACK");
    assert_eq!(last.ack, c.gseq.wrapping_add(3000));
    assert!(host.violations.is_empty());
}

#[test]
fn tcp_lost_data_is_retransmitted_from_the_socket() {
    let (mut stack, mut host, port, now) = setup();
    let c = open(&mut stack, &mut host, now, port, 40210, remote(80));
    host.push_recv(c.sock, b"hello world");
    readable(&mut stack, &mut host, now, c.sock);
    let first = drain_tcp(&mut stack);
    assert_eq!(first[0].payload, b"hello world");
    // The guest never acknowledges: the timer re-peeks the same bytes.
    let due = stack.poll_timeout().expect("retransmission timer");
    stack.on_timeout(&mut host, due);
    let again = drain_tcp(&mut stack);
    assert_eq!(again.len(), 1);
    assert_eq!(
        (again[0].seq, &again[0].payload[..]),
        (first[0].seq, &b"hello world"[..])
    );
}

#[test]
fn tcp_zero_window_and_partial_sends() {
    let (mut stack, mut host, port, now) = setup();
    host.tcp_capacity = 1000;
    let mut c = open(&mut stack, &mut host, now, port, 40220, remote(80));
    let data = vec![0x5a; 1400];
    guest_sends(&mut stack, &mut host, now, port, &c, F::ACK, &data);
    assert_eq!(host.sock(c.sock).send_buf.len(), 1000, "partial send");
    let out = drain_tcp(&mut stack);
    let last = out.last().expect("an ACK");
    assert_eq!(
        last.ack,
        c.gseq.wrapping_add(1000),
        "only what the kernel took"
    );
    assert_eq!(last.window, 0, "zero window while the socket is full");
    c.gseq = c.gseq.wrapping_add(1000);
    // More data while blocked is dropped and re-acknowledged with a zero window.
    guest_sends(&mut stack, &mut host, now, port, &c, F::ACK, &data[1000..]);
    let out = drain_tcp(&mut stack);
    assert_eq!((out[0].ack, out[0].window), (c.gseq, 0));
    assert_eq!(host.sock(c.sock).send_buf.len(), 1000);
    // The socket drains: the window reopens.
    host.drain_send(c.sock);
    stack.on_tcp_writable(&mut host, c.sock);
    let out = drain_tcp(&mut stack);
    assert_eq!(out.len(), 1);
    assert!(out[0].window > 0, "window update");
    guest_sends(&mut stack, &mut host, now, port, &c, F::ACK, &data[1000..]);
    host.drain_send(c.sock);
    assert_eq!(host.sock(c.sock).delivered, data);
    assert!(host.violations.is_empty());
}

#[test]
fn tcp_guest_fin_then_host_fin() {
    let (mut stack, mut host, port, now) = setup();
    let mut c = open(&mut stack, &mut host, now, port, 40230, remote(80));
    guest_sends(
        &mut stack,
        &mut host,
        now,
        port,
        &c,
        F::FIN | F::ACK,
        b"bye",
    );
    c.gseq = c.gseq.wrapping_add(4);
    assert!(
        host.sock(c.sock).shut_wr,
        "guest FIN shuts down the host write side"
    );
    assert_eq!(host.sock(c.sock).send_buf, b"bye");
    // The ACK waits briefly for the host to close too; it does not, so it goes alone.
    assert!(drain_tcp(&mut stack).is_empty(), "ACK of the FIN delayed");
    let due = stack.poll_timeout().expect("delayed ACK");
    stack.on_timeout(&mut host, due);
    let out = drain_tcp(&mut stack);
    assert_eq!(out.last().expect("ACK").ack, c.gseq, "FIN acknowledged");
    // The host still sends (half-close), then closes.
    host.push_recv(c.sock, b"response");
    host.sock(c.sock).eof = true;
    readable(&mut stack, &mut host, now, c.sock);
    let out = drain_tcp(&mut stack);
    assert_eq!(out[0].payload, b"response");
    // The end of stream is seen in the same round: the FIN follows the data at once.
    let fin = out.last().expect("FIN");
    assert!(fin.has(F::FIN));
    assert_eq!(fin.seq, out[0].seq.wrapping_add(8));
    c.sseq = fin.seq.wrapping_add(1);
    assert_eq!(stack.tcp_flows(), 1);
    guest_sends(&mut stack, &mut host, now, port, &c, F::ACK, &[]);
    assert_eq!(stack.tcp_flows(), 0, "both sides closed and acknowledged");
    assert_eq!(
        host.sock(c.sock).closed,
        Some(false),
        "closed without reset"
    );
    assert!(host.violations.is_empty());
}

#[test]
fn tcp_guest_fin_is_acknowledged_by_the_host_fin_that_follows() {
    // The usual close: the guest's FIN, then the host end closes in turn. One frame answers
    // both: our FIN carries the ACK of the guest's.
    let (mut stack, mut host, port, now) = setup();
    let mut c = open(&mut stack, &mut host, now, port, 40232, remote(80));
    guest_sends(&mut stack, &mut host, now, port, &c, F::FIN | F::ACK, &[]);
    c.gseq = c.gseq.wrapping_add(1);
    assert!(drain_tcp(&mut stack).is_empty());
    host.sock(c.sock).eof = true;
    readable(&mut stack, &mut host, now, c.sock);
    let out = drain_tcp(&mut stack);
    assert_eq!(out.len(), 1, "{out:?}");
    assert!(out[0].has(F::FIN) && out[0].has(F::ACK));
    assert_eq!(out[0].ack, c.gseq);
    stack.on_timeout(&mut host, now + Duration::from_millis(5));
    assert!(drain_tcp(&mut stack).is_empty(), "no separate ACK later");
    assert!(host.violations.is_empty());
}

#[test]
fn tcp_host_fin_first_then_guest_keeps_sending() {
    let (mut stack, mut host, port, now) = setup();
    let mut c = open(&mut stack, &mut host, now, port, 40231, remote(80));
    host.sock(c.sock).eof = true;
    readable(&mut stack, &mut host, now, c.sock);
    let out = drain_tcp(&mut stack);
    assert_eq!(out.len(), 1);
    assert!(out[0].has(F::FIN));
    c.sseq = out[0].seq.wrapping_add(1);
    guest_sends(&mut stack, &mut host, now, port, &c, F::ACK, b"more");
    c.gseq = c.gseq.wrapping_add(4);
    assert_eq!(
        host.sock(c.sock).send_buf,
        b"more",
        "half-close: guest may still send"
    );
    guest_sends(&mut stack, &mut host, now, port, &c, F::FIN | F::ACK, &[]);
    assert_eq!(stack.tcp_flows(), 0);
    assert_eq!(host.sock(c.sock).closed, Some(false));
    assert!(host.violations.is_empty());
}

#[test]
fn tcp_guest_rst_resets_host_socket() {
    let (mut stack, mut host, port, now) = setup();
    let c = open(&mut stack, &mut host, now, port, 40240, remote(80));
    guest_sends(&mut stack, &mut host, now, port, &c, F::RST, &[]);
    assert_eq!(host.sock(c.sock).closed, Some(true));
    assert_eq!(stack.tcp_flows(), 0);
    assert!(drain(&mut stack).is_empty());
}

#[test]
fn tcp_host_reset_resets_guest() {
    let (mut stack, mut host, port, now) = setup();
    let c = open(&mut stack, &mut host, now, port, 40241, remote(80));
    stack.on_tcp_error(&mut host, c.sock);
    let out = drain_tcp(&mut stack);
    assert_eq!(out.len(), 1);
    assert!(out[0].has(F::RST));
    assert_eq!(stack.tcp_flows(), 0);
    // A reset seen while peeking does the same.
    let c = open(&mut stack, &mut host, now, port, 40242, remote(80));
    host.sock(c.sock).reset = true;
    readable(&mut stack, &mut host, now, c.sock);
    assert!(drain_tcp(&mut stack)[0].has(F::RST));
    assert_eq!(stack.tcp_flows(), 0);
    assert!(host.violations.is_empty());
}

#[test]
fn tcp_table_full_answers_rst_and_counts() {
    let cfg = NetConfig {
        max_tcp_flows: 3,
        max_tcp_connecting: 2,
        ..NetConfig::default()
    };
    let (mut stack, mut host, port, now) = stack_with(cfg);
    // SYN flood: only two connects may be pending.
    for i in 0..5u16 {
        let syn = Seg::new(guest(42000 + i), remote(80), F::SYN);
        send(&mut stack, &mut host, now, port, &tcp_frame(&syn));
    }
    assert_eq!(host.connects.len(), 2);
    let rsts = drain_tcp(&mut stack);
    assert_eq!(rsts.len(), 3);
    assert!(rsts.iter().all(|s| s.has(F::RST)));
    // Connect completions free connecting slots; the table bound then applies.
    for (sock, _) in host.connects.clone() {
        stack.on_tcp_connected(&mut host, now, sock, Ok(()));
    }
    drain(&mut stack);
    for i in 5..8u16 {
        let syn = Seg::new(guest(42000 + i), remote(80), F::SYN);
        send(&mut stack, &mut host, now, port, &tcp_frame(&syn));
    }
    assert_eq!(stack.tcp_flows(), 3);
    assert_eq!(
        drain_tcp(&mut stack)
            .iter()
            .filter(|s| s.has(F::RST))
            .count(),
        2
    );
    // Other protocols go on.
    send(
        &mut stack,
        &mut host,
        now,
        port,
        &ping_frame(GUEST_IP, GW_IP, 1, 1, b""),
    );
    assert_eq!(drain(&mut stack).len(), 1);
    stack.log_stats();
}

#[test]
fn tcp_guest_that_vanishes_is_reset_after_retries() {
    let (mut stack, mut host, port, now) = setup();
    let c = open(&mut stack, &mut host, now, port, 40250, remote(80));
    host.push_recv(c.sock, &[1; 3000]);
    readable(&mut stack, &mut host, now, c.sock);
    drain(&mut stack);
    let mut t = now;
    let mut rounds = 0;
    while let Some(due) = stack.poll_timeout() {
        t = t.max(due);
        stack.on_timeout(&mut host, t);
        drain(&mut stack);
        rounds += 1;
        assert!(rounds < 100, "timers must end");
    }
    assert_eq!(stack.tcp_flows(), 0);
    assert_eq!(
        host.sock(c.sock).closed,
        Some(true),
        "host peer sees a reset"
    );
    assert!(t - now < Duration::from_secs(600));
    assert!(host.violations.is_empty());
}

#[test]
fn tcp_port_forward_handshake_and_data() {
    let (mut stack, mut host, port, now) = setup();
    // Unknown guest: refused (and an ARP request goes out to find it).
    let sock = host.adopt_tcp();
    let err = stack.open_tcp_forward(&mut host, now, sock, guest(22));
    assert!(err.is_err());
    assert_eq!(host.sock(sock).closed, Some(true));
    assert!(!drain(&mut stack).is_empty(), "ARP request");
    // The guest makes itself known.
    send(
        &mut stack,
        &mut host,
        now,
        port,
        &arp_request(GUEST_MAC, GUEST_IP, GW_IP),
    );
    drain(&mut stack);
    let sock = host.adopt_tcp();
    stack
        .open_tcp_forward(&mut host, now, sock, guest(22))
        .expect("known guest");
    let out = drain_tcp(&mut stack);
    assert_eq!(out.len(), 1);
    let syn = &out[0];
    assert_eq!(syn.flags, F::SYN);
    assert_eq!(*syn.src.ip(), GW_IP);
    assert_eq!(syn.dst, guest(22));
    assert!(syn.mss.is_some() && syn.wscale.is_some());
    let mut synack = Seg::new(guest(22), syn.src, F::SYN | F::ACK);
    synack.seq = 9000;
    synack.ack = syn.seq.wrapping_add(1);
    synack.mss = Some(1460);
    synack.wscale = Some(2);
    send(&mut stack, &mut host, now, port, &tcp_frame(&synack));
    let out = drain_tcp(&mut stack);
    assert_eq!(out[0].flags, F::ACK);
    assert_eq!(out[0].ack, 9001);
    let mut data = Seg::new(guest(22), syn.src, F::ACK | F::PSH);
    data.seq = 9001;
    data.ack = syn.seq.wrapping_add(1);
    data.payload = b"SSH-2.0-test\r\n".to_vec();
    send(&mut stack, &mut host, now, port, &tcp_frame(&data));
    assert_eq!(host.sock(sock).send_buf, b"SSH-2.0-test\r\n");
    assert!(host.violations.is_empty());
}

#[test]
fn udp_nat_outside_and_reply() {
    let (mut stack, mut host, port, now) = setup();
    send(
        &mut stack,
        &mut host,
        now,
        port,
        &udp_frame(guest(5000), remote(9999), b"q1"),
    );
    send(
        &mut stack,
        &mut host,
        now,
        port,
        &udp_frame(guest(5000), remote(8888), b"q2"),
    );
    assert_eq!(host.udp.len(), 1, "one host socket per guest endpoint");
    let (&sock, s) = host.udp.iter().next().expect("socket");
    assert_eq!(
        s.sent,
        vec![
            (remote(9999).into(), b"q1".to_vec()),
            (remote(8888).into(), b"q2".to_vec())
        ]
    );
    assert!(stack.on_udp_datagram(now, sock, remote(9999), b"r1"));
    let out = drain(&mut stack);
    let (src, dst, payload) = parse_udp(&out[0].1).expect("UDP");
    assert_eq!(
        (src, dst, &payload[..]),
        (remote(9999), guest(5000), &b"r1"[..])
    );
    // A datagram that does not fit the MTU is dropped (no fragmentation).
    assert!(stack.on_udp_datagram(now, sock, remote(9999), &vec![0; 1500]));
    assert!(drain(&mut stack).is_empty());
    assert!(
        !stack.on_udp_datagram(now, 12345, remote(9999), b"x"),
        "unknown socket"
    );
}

#[test]
fn udp_to_gateway_is_host_loopback_and_reply_source_mapped_back() {
    let (mut stack, mut host, port, now) = setup();
    let gw = SocketAddrV4::new(GW_IP, 7000);
    send(
        &mut stack,
        &mut host,
        now,
        port,
        &udp_frame(guest(5001), gw, b"ping"),
    );
    let (&sock, s) = host.udp.iter().next().expect("socket");
    assert_eq!(
        s.sent[0].0,
        SocketAddrV4::new(Ipv4Addr::LOCALHOST, 7000).into()
    );
    stack.on_udp_datagram(
        now,
        sock,
        SocketAddrV4::new(Ipv4Addr::LOCALHOST, 7000),
        b"pong",
    );
    let (src, dst, payload) = parse_udp(&drain(&mut stack)[0].1).expect("UDP");
    assert_eq!((src, dst, &payload[..]), (gw, guest(5001), &b"pong"[..]));
}

#[test]
fn udp_dns_address_goes_to_configured_server() {
    let (mut stack, mut host, port, now) = setup();
    let dns = SocketAddrV4::new(DNS_IP, 53);
    // Before the DNS server is known, the query is dropped.
    send(
        &mut stack,
        &mut host,
        now,
        port,
        &udp_frame(guest(5002), dns, b"query"),
    );
    assert!(host.udp.is_empty());
    let server = SocketAddrV4::new(Ipv4Addr::new(127, 0, 0, 53), 5353);
    stack.set_dns_server(server, server);
    send(
        &mut stack,
        &mut host,
        now,
        port,
        &udp_frame(guest(5002), dns, b"query"),
    );
    let (&sock, s) = host.udp.iter().next().expect("socket");
    assert_eq!(s.sent, vec![(server.into(), b"query".to_vec())]);
    stack.on_udp_datagram(now, sock, server, b"answer");
    let (src, dst, payload) = parse_udp(&drain(&mut stack)[0].1).expect("UDP");
    assert_eq!((src, dst, &payload[..]), (dns, guest(5002), &b"answer"[..]));
    // DNS-only flows expire quickly.
    stack.on_timeout(&mut host, now + Duration::from_secs(11));
    assert_eq!(stack.udp_flows(), 0);
    assert!(host.udp[&sock].closed);
    assert!(host.violations.is_empty());
}

#[test]
fn udp_table_bounded_with_lru_eviction_and_idle_expiry() {
    let cfg = NetConfig {
        max_udp_flows: 3,
        ..NetConfig::default()
    };
    let (mut stack, mut host, port, now) = stack_with(cfg);
    for i in 0..3u16 {
        let t = now + Duration::from_millis(u64::from(i));
        send(
            &mut stack,
            &mut host,
            t,
            port,
            &udp_frame(guest(6000 + i), remote(1), b"x"),
        );
    }
    // Touch the oldest so 6001 becomes least recently used.
    let t = now + Duration::from_millis(10);
    send(
        &mut stack,
        &mut host,
        t,
        port,
        &udp_frame(guest(6000), remote(1), b"x"),
    );
    let socks: Vec<usize> = host.udp.keys().copied().collect();
    let t = now + Duration::from_millis(20);
    send(
        &mut stack,
        &mut host,
        t,
        port,
        &udp_frame(guest(6003), remote(1), b"x"),
    );
    assert_eq!(stack.udp_flows(), 3);
    assert!(
        host.udp[&socks[1]].closed,
        "least recently used flow evicted"
    );
    assert!(!host.udp[&socks[0]].closed && !host.udp[&socks[2]].closed);
    // Idle timeout.
    stack.on_timeout(&mut host, now + Duration::from_secs(179));
    assert_eq!(stack.udp_flows(), 3);
    stack.on_timeout(&mut host, now + Duration::from_secs(181));
    assert_eq!(stack.udp_flows(), 0);
    assert!(host.udp.values().all(|s| s.closed));
    assert!(stack.poll_timeout().is_none(), "no timers left");
    assert!(host.violations.is_empty());
}

#[test]
fn remove_port_resets_its_flows() {
    let (mut stack, mut host, port, now) = setup();
    let other = stack.add_port();
    let c = open(&mut stack, &mut host, now, port, 40300, remote(80));
    send(
        &mut stack,
        &mut host,
        now,
        port,
        &udp_frame(guest(5003), remote(53), b"x"),
    );
    send(
        &mut stack,
        &mut host,
        now,
        port,
        &ping_frame(GUEST_IP, REMOTE_IP, 1, 1, b""),
    );
    host.push_recv(c.sock, b"data");
    readable(&mut stack, &mut host, now, c.sock);
    stack.remove_port(&mut host, port);
    assert!(
        stack.out.queue.iter().all(|f| f.port != port),
        "queued frames dropped"
    );
    assert_eq!(stack.tcp_flows(), 0);
    assert_eq!(stack.udp_flows(), 0);
    assert_eq!(host.sock(c.sock).closed, Some(true));
    assert!(host.udp.values().all(|s| s.closed));
    assert!(host.icmp.values().all(|s| s.closed));
    // The other port goes on.
    let mut f = ping_frame(GUEST2_IP, GW_IP, 1, 1, b"");
    f[6..12].copy_from_slice(&GUEST2_MAC);
    send(&mut stack, &mut host, now, other, &f);
    assert_eq!(drain(&mut stack).len(), 1);
    assert!(host.violations.is_empty());
}

#[test]
fn switch_unicast_broadcast_and_unknown() {
    let (mut stack, mut host, a, now) = setup();
    let b = stack.add_port();
    let c = stack.add_port();
    let mac_c = [0x52, 0x55, 0x55, 0, 0, 0x11];
    // Broadcast from A: flooded to B and C.
    let bcast = ethernet([0xff; 6], GUEST_MAC, 0x88b5, b"hello all");
    send(&mut stack, &mut host, now, a, &bcast);
    let out = drain(&mut stack);
    let mut ports: Vec<_> = out.iter().map(|(p, _)| *p).collect();
    ports.sort();
    assert_eq!(ports, vec![b, c]);
    assert!(out.iter().all(|(_, f)| *f == bcast));
    // Unknown unicast: dropped, counted.
    let to_b = ethernet(GUEST2_MAC, GUEST_MAC, 0x88b5, b"to b");
    send(&mut stack, &mut host, now, a, &to_b);
    assert!(drain(&mut stack).is_empty());
    assert_eq!(stack.stats.unknown_destination, 1);
    // B speaks, is learned, and then gets unicast from A only.
    send(
        &mut stack,
        &mut host,
        now,
        b,
        &ethernet([0xff; 6], GUEST2_MAC, 0x88b5, b""),
    );
    drain(&mut stack);
    send(&mut stack, &mut host, now, a, &to_b);
    let out = drain(&mut stack);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0], (b, to_b.clone()));
    assert_eq!(stack.stats.switched, 1);
    // A frame to a MAC on the sender's own port is not echoed back.
    send(
        &mut stack,
        &mut host,
        now,
        c,
        &ethernet([0xff; 6], mac_c, 0x88b5, b""),
    );
    drain(&mut stack);
    send(
        &mut stack,
        &mut host,
        now,
        c,
        &ethernet(mac_c, mac_c, 0x88b5, b"self"),
    );
    assert!(drain(&mut stack).is_empty());
}

#[test]
fn dhcp_discover_is_answered_and_garbage_is_counted() {
    let (mut stack, mut host, port, now) = setup();
    send(&mut stack, &mut host, now, port, &dhcp_discover(GUEST_MAC));
    let out = drain(&mut stack);
    let offer = out
        .iter()
        .filter(|(p, _)| *p == port)
        .find_map(|(_, f)| parse_udp(f))
        .expect("DHCP offer");
    assert_eq!(offer.0.port(), 67);
    assert_eq!(offer.1.port(), 68);
    let before = stack.stats.malformed;
    let garbage = udp_bytes(
        SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 68),
        SocketAddrV4::new(Ipv4Addr::BROADCAST, 67),
        b"\x01\x01\x06garbage",
    );
    let ip = ipv4(Ipv4Addr::UNSPECIFIED, Ipv4Addr::BROADCAST, 17, &garbage);
    send(
        &mut stack,
        &mut host,
        now,
        port,
        &ethernet([0xff; 6], GUEST_MAC, 0x0800, &ip),
    );
    assert_eq!(stack.stats.malformed, before + 1);
    assert!(
        drain(&mut stack).iter().all(|(p, _)| *p != port),
        "no reply to garbage"
    );
}

#[test]
fn malformed_frames_are_counted_and_stack_goes_on() {
    let (mut stack, mut host, port, now) = setup();
    let good = ping_frame(GUEST_IP, GW_IP, 1, 1, b"x");
    let mut cases: Vec<Vec<u8>> = vec![
        vec![],
        vec![0; 5],
        good[..13].to_vec(),
        good[..20].to_vec(),                           // truncated IPv4 header
        good[..34 + 3].to_vec(),                       // truncated ICMP
        ethernet(GW_MAC, GUEST_MAC, 0x0806, &[0; 10]), // short ARP
    ];
    let mut bad_version = good.clone();
    bad_version[14] = 0x65;
    cases.push(bad_version);
    let mut long_total = good.clone();
    long_total[16..18].copy_from_slice(&2000u16.to_be_bytes());
    cases.push(long_total);
    let mut fragment = good.clone();
    fragment[20] = 0x20; // more fragments
    cases.push(fragment);
    let mut bad_tcp = tcp_frame(&Seg::new(guest(1), remote(2), F::SYN));
    bad_tcp[14 + 20 + 12] = 0x10; // data offset 1 word
    cases.push(bad_tcp);
    let mut bad_udp = udp_frame(guest(1), remote(2), b"abc");
    bad_udp[14 + 20 + 4..14 + 20 + 6].copy_from_slice(&100u16.to_be_bytes());
    cases.push(bad_udp);
    let before = stack.stats;
    for c in &cases {
        send(&mut stack, &mut host, now, port, c);
    }
    assert!(drain(&mut stack).is_empty());
    // Corrupting a header also breaks its checksum: those are counted as bad checksums.
    let counted = (stack.stats.malformed - before.malformed)
        + (stack.stats.fragments - before.fragments)
        + (stack.stats.bad_checksum - before.bad_checksum);
    assert!(counted >= 10, "counted {counted} of {}", cases.len());
    assert_eq!(stack.stats.fragments - before.fragments, 1);
    assert!(host.connects.is_empty() && host.udp.is_empty());
    // Still works.
    send(&mut stack, &mut host, now, port, &good);
    assert_eq!(drain(&mut stack).len(), 1);
}

mod random_input {
    use super::*;
    use proptest::prelude::*;

    fn valid_frames() -> Vec<Vec<u8>> {
        let mut syn = Seg::new(guest(40000), remote(80), F::SYN);
        syn.mss = Some(1460);
        syn.wscale = Some(7);
        vec![
            arp_request(GUEST_MAC, GUEST_IP, GW_IP),
            dhcp_discover(GUEST_MAC),
            ping_frame(GUEST_IP, GW_IP, 1, 2, b"abc"),
            ping_frame(GUEST_IP, REMOTE_IP, 1, 2, b"abc"),
            udp_frame(guest(5000), remote(53), b"q"),
            tcp_frame(&syn),
            tcp_frame(&Seg::new(guest(40000), remote(80), F::ACK)),
        ]
    }

    fn run(frames: &[Vec<u8>]) {
        let (mut stack, mut host, port, now) = setup();
        for (i, f) in frames.iter().enumerate() {
            let t = now + Duration::from_millis(i as u64);
            stack.handle_frame(&mut host, t, port, f);
            if let Some(&(sock, _)) = host.connects.last() {
                stack.on_tcp_connected(&mut host, t, sock, Ok(()));
            }
        }
        stack.end_batch(&mut host);
        stack.on_timeout(&mut host, now + Duration::from_secs(1000));
        for f in drain(&mut stack) {
            // Everything the stack emits is well formed.
            assert!(f.1.len() >= 14 && f.1.len() <= 1514);
            if let Some(ip) = parse_ip(&f.1) {
                let _ = (parse_tcp(&f.1), parse_udp(&f.1), ip.proto);
            }
        }
        assert!(host.violations.is_empty(), "{:?}", host.violations);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn random_bytes_never_panic(frames in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..200), 1..8)) {
            run(&frames);
        }

        #[test]
        fn mutated_valid_frames_never_panic(
            which in prop::collection::vec(0usize..7, 1..6),
            flips in prop::collection::vec((0usize..400, any::<u8>()), 0..6),
            cut in prop::option::of(0usize..400),
        ) {
            let valid = valid_frames();
            let mut frames: Vec<Vec<u8>> = which.iter().map(|&i| valid[i].clone()).collect();
            for (k, f) in frames.iter_mut().enumerate() {
                for &(at, v) in &flips {
                    if !f.is_empty() && (at + k) % 2 == 0 {
                        let i = at % f.len();
                        f[i] ^= v;
                    }
                }
                if let Some(c) = cut {
                    if k == 0 { f.truncate(c); }
                }
            }
            run(&frames);
        }
    }
}

#[test]
fn tcp_duplicate_ack_burst_goes_back_once() {
    // Regression: every three duplicate ACKs used to start a new full-window resend, and the
    // guest's duplicate ACKs for the resent data started more: the output grew without bound.
    let (mut stack, mut host, port, now) = setup();
    let c = open(&mut stack, &mut host, now, port, 40400, remote(80));
    host.push_recv(c.sock, &vec![7; 20 * 1460]);
    readable(&mut stack, &mut host, now, c.sock);
    assert_eq!(drain_tcp(&mut stack).len(), 20);
    // The first segment was lost: the guest answers the other 19 with duplicate ACKs.
    for _ in 0..19 {
        stack.handle_frame(&mut host, now, port, &tcp_frame(&c.seg(F::ACK, &[])));
    }
    stack.end_batch(&mut host);
    let resent = drain_tcp(&mut stack);
    let data: Vec<_> = resent.iter().filter(|s| !s.payload.is_empty()).collect();
    assert_eq!(data.len(), 20, "one go-back resends the window once");
    assert_eq!(data[0].seq, c.sseq);
    // Duplicate ACKs caused by the resent segments do not start another round.
    for _ in 0..40 {
        stack.handle_frame(&mut host, now, port, &tcp_frame(&c.seg(F::ACK, &[])));
    }
    stack.end_batch(&mut host);
    assert!(drain_tcp(&mut stack).iter().all(|s| s.payload.is_empty()));
    assert!(host.violations.is_empty());
}

#[test]
fn udp_port_forward_to_guest_and_reply() {
    let (mut stack, mut host, port, now) = setup();
    use limanet_netstack::Host;
    let listener = host.udp_open(false).expect("listener socket");
    let client = SocketAddrV4::new(Ipv4Addr::LOCALHOST, 40000);
    // Unknown guest: refused.
    assert!(stack
        .udp_forward(now, listener, client, guest(53), b"q")
        .is_err());
    drain(&mut stack);
    send(
        &mut stack,
        &mut host,
        now,
        port,
        &arp_request(GUEST_MAC, GUEST_IP, GW_IP),
    );
    drain(&mut stack);
    stack
        .udp_forward(now, listener, client, guest(53), b"query")
        .expect("known guest");
    let (src, dst, payload) = parse_udp(&drain(&mut stack)[0].1).expect("UDP");
    assert_eq!(
        *src.ip(),
        GW_IP,
        "forwarded datagrams come from the gateway"
    );
    assert_eq!((dst, &payload[..]), (guest(53), &b"query"[..]));
    // The guest's reply goes back to the client through the listener.
    send(
        &mut stack,
        &mut host,
        now,
        port,
        &udp_frame(guest(53), src, b"answer"),
    );
    assert_eq!(
        host.udp[&listener].sent,
        vec![(client.into(), b"answer".to_vec())]
    );
    assert_eq!(host.udp.len(), 1, "no NAT flow for a forwarded reply");
    assert!(host.violations.is_empty());
}

#[test]
fn tcp_ack_for_data_sent_before_a_go_back_is_accepted() {
    // The guest got all data but its ACK was lost; it then shrank its window. The
    // retransmission timer goes back and resends only one window; the guest's ACK now covers
    // more than was sent since the go-back. It must be accepted, not ignored until the
    // retries run out.
    let (mut stack, mut host, port, now) = setup();
    let c = open(&mut stack, &mut host, now, port, 40500, remote(80));
    host.push_recv(c.sock, &vec![9; 10 * 1460]);
    readable(&mut stack, &mut host, now, c.sock);
    let sent = drain_tcp(&mut stack);
    assert_eq!(sent.len(), 10);
    let high = c.sseq.wrapping_add(10 * 1460);
    let mut shrink = c.seg(F::ACK, &[]);
    shrink.window = 1460;
    send(&mut stack, &mut host, now, port, &tcp_frame(&shrink));
    let due = stack.poll_timeout().expect("retransmission timer");
    stack.on_timeout(&mut host, due);
    let resent = drain_tcp(&mut stack);
    assert_eq!(resent.len(), 1, "one window resent");
    let mut full = c.seg(F::ACK, &[]);
    full.ack = high;
    send(&mut stack, &mut host, due, port, &tcp_frame(&full));
    assert_eq!(
        host.sock(c.sock).consumed,
        10 * 1460,
        "everything acknowledged"
    );
    // Nothing left in flight: the flow goes on normally.
    host.push_recv(c.sock, b"next");
    readable(&mut stack, &mut host, due, c.sock);
    let out = drain_tcp(&mut stack);
    let next = out
        .iter()
        .find(|s| !s.payload.is_empty())
        .expect("new data");
    assert_eq!((next.seq, &next.payload[..]), (high, &b"next"[..]));
    assert!(host.violations.is_empty(), "{:?}", host.violations);
}
