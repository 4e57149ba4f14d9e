//! A simulated guest: smoltcp as the guest's TCP/IP stack, on an in-memory Ethernet link to the
//! [`Stack`], with a deterministic clock and seeded loss and reordering in both directions. The
//! host side is the in-memory [`FakeHost`], whose "remote peer" produces and consumes bytes.
//!
//! Every transfer compares the bytes received end to end with the bytes sent.

mod support;
#[path = "support/wire.rs"]
mod wire;

use limanet_netstack::{NetConfig, PortId, SockId, Stack};
use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::socket::tcp;
use smoltcp::time::Instant as SmolInstant;
use smoltcp::wire::{EthernetAddress, IpAddress, IpCidr};
use std::collections::VecDeque;
use std::net::SocketAddrV4;
use std::time::{Duration, Instant};
use support::*;
use wire::Wire;

/// SplitMix64: a small deterministic RNG for the link and the data.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// True with probability `per_mille`/1000.
    fn chance(&mut self, per_mille: u64) -> bool {
        self.next() % 1000 < per_mille
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut v = Vec::with_capacity(n + 8);
        while v.len() < n {
            v.extend_from_slice(&self.next().to_le_bytes());
        }
        v.truncate(n);
        v
    }
}

/// Link impairments, per direction.
#[derive(Clone, Copy)]
struct Impair {
    loss_per_mille: u64,
    reorder_per_mille: u64,
    /// Also impair frames from the guest (else only frames to the guest).
    from_guest: bool,
}

const CLEAN: Impair = Impair {
    loss_per_mille: 0,
    reorder_per_mille: 0,
    from_guest: false,
};

/// What the host-side peer of one host TCP socket does.
struct Peer {
    sock: SockId,
    /// Bytes it sends to the guest.
    data: Vec<u8>,
    pushed: usize,
    /// Bytes it takes out of the send buffer per millisecond (a slow reader makes the
    /// translator's window close).
    read_rate: usize,
}

const KERNEL_RCVBUF: usize = 256 << 10;

struct Sim {
    stack: Stack,
    host: FakeHost,
    port: PortId,
    iface: Interface,
    wire: Wire,
    sockets: SocketSet<'static>,
    rng: Rng,
    impair: Impair,
    start: Instant,
    ms: u64,
    peers: Vec<Peer>,
    /// Host connects already reported to the stack.
    connects_reported: usize,
    /// Frames lost so far (to show impairment really happened).
    lost: u64,
    reordered: u64,
    /// The last frames in both directions, summarized, for stall reports.
    trace: VecDeque<String>,
}

impl Sim {
    fn new(seed: u64, impair: Impair, host_capacity: usize) -> Self {
        let cfg = NetConfig {
            seed,
            ..NetConfig::default()
        };
        let mut stack = Stack::new(cfg).expect("default config");
        let port = stack.add_port();
        let mut host = FakeHost::new();
        host.tcp_capacity = host_capacity;
        let mut wire = Wire::default();
        let mut config = Config::new(EthernetAddress(GUEST_MAC).into());
        config.random_seed = seed;
        let mut iface = Interface::new(config, &mut wire, SmolInstant::from_millis(0));
        iface.update_ip_addrs(|a| {
            a.push(IpCidr::new(IpAddress::Ipv4(GUEST_IP), 24))
                .expect("address slot");
        });
        iface
            .routes_mut()
            .add_default_ipv4_route(GW_IP)
            .expect("route slot");
        Sim {
            stack,
            host,
            port,
            iface,
            wire,
            sockets: SocketSet::new(vec![]),
            rng: Rng(seed ^ 0x5eed),
            impair,
            start: Instant::now(),
            ms: 0,
            peers: Vec::new(),
            connects_reported: 0,
            lost: 0,
            reordered: 0,
            trace: VecDeque::new(),
        }
    }

    fn tcp_socket(&mut self, buf: usize) -> SocketHandle {
        let s = tcp::Socket::new(
            tcp::SocketBuffer::new(vec![0; buf]),
            tcp::SocketBuffer::new(vec![0; buf]),
        );
        self.sockets.add(s)
    }

    fn now(&self) -> Instant {
        self.start + Duration::from_millis(self.ms)
    }

    fn impaired(&mut self, frames: Vec<Vec<u8>>, from_guest: bool) -> Vec<Vec<u8>> {
        if from_guest && !self.impair.from_guest {
            return frames;
        }
        let mut kept = Vec::with_capacity(frames.len());
        for f in frames {
            let lost = self.rng.chance(self.impair.loss_per_mille);
            if let Some(t) = parse_tcp(&f) {
                self.trace.push_back(format!(
                    "{}ms {}{} -> {} seq {} ack {} flags {:02x} win {} len {}",
                    self.ms,
                    if lost { "LOST " } else { "" },
                    t.src,
                    t.dst,
                    t.seq,
                    t.ack,
                    t.flags,
                    t.window,
                    t.payload.len()
                ));
                if self.trace.len() > 60 {
                    self.trace.pop_front();
                }
            }
            if lost {
                self.lost += 1;
            } else {
                kept.push(f);
            }
        }
        for i in 1..kept.len() {
            if self.rng.chance(self.impair.reorder_per_mille) {
                kept.swap(i - 1, i);
                self.reordered += 1;
            }
        }
        kept
    }

    /// One millisecond of simulated time. Returns whether any frame moved.
    fn step(&mut self) -> bool {
        let ts = SmolInstant::from_millis(self.ms as i64);
        self.iface.poll(ts, &mut self.wire, &mut self.sockets);
        let now = self.now();

        let from_guest: Vec<Vec<u8>> = self.wire.from_guest.drain(..).collect();
        let moved = !from_guest.is_empty();
        for f in self.impaired(from_guest, true) {
            self.stack.handle_frame(&mut self.host, now, self.port, &f);
        }
        self.stack.end_batch(&mut self.host);

        // Host connects complete after a millisecond.
        while self.connects_reported < self.host.connects.len() {
            let sock = self.host.connects[self.connects_reported].0;
            self.connects_reported += 1;
            self.stack
                .on_tcp_connected(&mut self.host, now, sock, Ok(()));
        }

        // The host-side peers read and write.
        for p in &mut self.peers {
            let Some(s) = self.host.tcp.get_mut(&p.sock) else {
                continue;
            };
            if s.closed.is_some() {
                continue;
            }
            let take = p.read_rate.min(s.send_buf.len());
            let taken: Vec<u8> = s.send_buf.drain(..take).collect();
            s.delivered.extend_from_slice(&taken);
            let room = KERNEL_RCVBUF.saturating_sub(s.recv.len());
            let n = room.min(p.data.len() - p.pushed);
            s.recv.extend(&p.data[p.pushed..p.pushed + n]);
            p.pushed += n;
            if p.pushed == p.data.len() {
                s.eof = true;
            }
            self.stack.on_tcp_writable(&mut self.host, p.sock);
            readable(&mut self.stack, &mut self.host, now, p.sock);
        }

        if self.stack.poll_timeout().is_some_and(|t| t <= now) {
            self.stack.on_timeout(&mut self.host, now);
        }
        let to_guest: Vec<Vec<u8>> = self.stack.out.queue.drain(..).map(|f| f.frame).collect();
        let moved = moved || !to_guest.is_empty();
        let kept = self.impaired(to_guest, false);
        self.wire.to_guest.extend(kept);
        self.iface.poll(ts, &mut self.wire, &mut self.sockets);
        self.ms += 1;
        moved
    }

    fn assert_clean(&self) {
        assert!(
            self.host.violations.is_empty(),
            "host misuse: {:?}",
            self.host.violations
        );
    }
}

/// The guest connects to an outside address, sends `up` bytes and receives `down` bytes, then
/// both sides close. Asserts the bytes on both ends, and that the flow is cleaned up.
fn transfer(seed: u64, impair: Impair, up: usize, down: usize, peer_read_rate: usize) -> Sim {
    let mut sim = Sim::new(seed, impair, 1 << 20);
    let up_data = Rng(seed ^ 1).bytes(up);
    let down_data = Rng(seed ^ 2).bytes(down);
    let h = sim.tcp_socket(256 << 10);
    {
        let cx = sim.iface.context();
        let s = sim.sockets.get_mut::<tcp::Socket>(h);
        s.connect(cx, (IpAddress::Ipv4(REMOTE_IP), 80), 49500)
            .expect("connect");
    }
    let mut sent = 0;
    let mut received = Vec::with_capacity(down);
    let mut closed = false;
    let mut down_data = Some(down_data);
    let limit_ms = 600_000;
    loop {
        sim.step();
        if let (Some(data), Some(&(sock, dst))) = (&down_data, sim.host.connects.first()) {
            assert_eq!(dst, SocketAddrV4::new(REMOTE_IP, 80).into());
            sim.peers.push(Peer {
                sock,
                data: data.clone(),
                pushed: 0,
                read_rate: peer_read_rate,
            });
            down_data = None;
        }
        let s = sim.sockets.get_mut::<tcp::Socket>(h);
        if s.can_send() && sent < up {
            sent += s.send_slice(&up_data[sent..]).expect("send");
        }
        if sent == up && !closed && s.may_send() {
            s.close();
            closed = true;
        }
        while s.can_recv() {
            let mut buf = [0u8; 16384];
            let n = s.recv_slice(&mut buf).expect("recv");
            received.extend_from_slice(&buf[..n]);
        }
        if std::env::var_os("SIM_PROGRESS").is_some() && sim.ms.is_multiple_of(500) {
            eprintln!(
                "{}ms state {} sent {sent} received {} to_guest {} from_guest {}",
                sim.ms,
                s.state(),
                received.len(),
                sim.wire.to_guest.len(),
                sim.wire.from_guest.len()
            );
        }
        let done = closed && !s.may_recv() && sim.stack.tcp_flows() == 0;
        if done {
            break;
        }
        if sim.ms >= limit_ms {
            for line in &sim.trace {
                eprintln!("{line}");
            }
        }
        assert!(
            sim.ms < limit_ms,
            "stalled: state {} sent {sent}/{up} received {}/{down} delivered {} flows {}",
            s.state(),
            received.len(),
            sim.host
                .tcp
                .values()
                .next()
                .map_or(0, |t| t.delivered.len()),
            sim.stack.tcp_flows()
        );
    }
    let sock = sim.host.connects[0].0;
    let hs = &sim.host.tcp[&sock];
    assert_eq!(
        hs.delivered.len() + hs.send_buf.len(),
        up,
        "bytes guest → host"
    );
    let mut got = hs.delivered.clone();
    got.extend_from_slice(&hs.send_buf);
    assert!(got == up_data, "guest → host data corrupted");
    assert_eq!(received.len(), down, "bytes host → guest");
    assert!(received == sim.peers[0].data, "host → guest data corrupted");
    assert!(hs.shut_wr, "guest FIN reached the host socket");
    assert_eq!(hs.closed, Some(false), "closed cleanly");
    assert_eq!(hs.consumed, down, "everything consumed once acknowledged");
    sim.assert_clean();
    sim
}

#[test]
fn transfer_8mib_each_way_clean_link() {
    let sim = transfer(1, CLEAN, 8 << 20, 8 << 20, usize::MAX);
    eprintln!("clean: {} ms simulated", sim.ms);
}

#[test]
fn transfer_4mib_each_way_with_2_percent_loss() {
    let impair = Impair {
        loss_per_mille: 20,
        reorder_per_mille: 0,
        from_guest: false,
    };
    let sim = transfer(2, impair, 4 << 20, 4 << 20, usize::MAX);
    assert!(sim.lost > 50, "loss happened: {}", sim.lost);
    eprintln!("2% loss: {} ms simulated, {} frames lost", sim.ms, sim.lost);
}

#[test]
fn transfer_4mib_each_way_with_reordering() {
    let impair = Impair {
        loss_per_mille: 0,
        reorder_per_mille: 50,
        from_guest: false,
    };
    let sim = transfer(3, impair, 4 << 20, 4 << 20, usize::MAX);
    assert!(
        sim.reordered > 100,
        "reordering happened: {}",
        sim.reordered
    );
    eprintln!("reorder: {} ms simulated, {} swaps", sim.ms, sim.reordered);
}

#[test]
fn transfer_2mib_each_way_with_loss_and_reordering() {
    let impair = Impair {
        loss_per_mille: 10,
        reorder_per_mille: 30,
        from_guest: false,
    };
    transfer(4, impair, 2 << 20, 2 << 20, usize::MAX);
}

#[test]
fn transfer_to_slow_host_reader_uses_zero_windows() {
    // The host peer reads 64 KiB/ms from a 1 MiB send buffer: the guest's window closes and
    // reopens many times.
    let sim = transfer(5, CLEAN, 4 << 20, 64 << 10, 16 << 10);
    // (4 MiB - the 1 MiB buffer) at 16 KiB/ms takes 192 ms.
    assert!(sim.ms >= 190, "{} ms", sim.ms);
}

#[test]
fn port_forward_into_listening_guest_socket() {
    let mut sim = Sim::new(
        6,
        Impair {
            loss_per_mille: 10,
            reorder_per_mille: 10,
            from_guest: false,
        },
        1 << 20,
    );
    let h = sim.tcp_socket(256 << 10);
    sim.sockets
        .get_mut::<tcp::Socket>(h)
        .listen(22)
        .expect("listen");
    let to_guest = Rng(61).bytes(2 << 20);
    let from_guest = Rng(62).bytes(1 << 20);
    // The stack does not know the guest until it hears from it: the first attempt sends an
    // ARP request, which smoltcp answers.
    let mut sock = None;
    for _ in 0..100 {
        let s = sim.host.adopt_tcp();
        let now = sim.now();
        if sim
            .stack
            .open_tcp_forward(&mut sim.host, now, s, SocketAddrV4::new(GUEST_IP, 22))
            .is_ok()
        {
            sock = Some(s);
            break;
        }
        sim.step();
    }
    let sock = sock.expect("guest became reachable");
    sim.peers.push(Peer {
        sock,
        data: to_guest.clone(),
        pushed: 0,
        read_rate: usize::MAX,
    });
    let mut received = Vec::new();
    let mut sent = 0;
    let mut closed = false;
    loop {
        sim.step();
        let s = sim.sockets.get_mut::<tcp::Socket>(h);
        while s.can_recv() {
            let mut buf = [0u8; 16384];
            let n = s.recv_slice(&mut buf).expect("recv");
            received.extend_from_slice(&buf[..n]);
        }
        if s.can_send() && sent < from_guest.len() {
            sent += s.send_slice(&from_guest[sent..]).expect("send");
        }
        if sent == from_guest.len() && !closed && s.may_send() {
            s.close();
            closed = true;
        }
        if closed && !s.may_recv() && sim.stack.tcp_flows() == 0 {
            break;
        }
        assert!(
            sim.ms < 600_000,
            "forwarded transfer stalled in state {}",
            s.state()
        );
    }
    assert!(received == to_guest, "host → guest data");
    let hs = &sim.host.tcp[&sock];
    let mut got = hs.delivered.clone();
    got.extend_from_slice(&hs.send_buf);
    assert!(got == from_guest, "guest → host data");
    assert_eq!(hs.closed, Some(false));
    sim.assert_clean();
}

/// Loss and reordering of frames *from* the guest: segments after a gap are held until the
/// retransmission fills it, so one fast retransmit recovers a whole window (without holding,
/// smoltcp resent one segment per 1 s retransmission timeout and this crawled).
#[test]
fn transfer_with_loss_and_reordering_from_guest() {
    let impair = Impair {
        loss_per_mille: 20,
        reorder_per_mille: 20,
        from_guest: true,
    };
    let sim = transfer(7, impair, 1 << 20, 1 << 20, 60_000);
    assert!(sim.lost > 10, "loss happened: {}", sim.lost);
    eprintln!(
        "loss from guest: {} ms simulated, {} frames lost",
        sim.ms, sim.lost
    );
}
