#![no_main]
// The guest-frame handler of the I/O-free network core, with an in-memory host.
//
// Input format: a sequence of frames, each preceded by its length as two big-endian bytes
// (a length past the end takes the rest). The same format is replayed on stable by
// crates/netstack/tests/fuzz_corpus.rs, over fuzz/corpus/guest_frame.

use limanet_netstack::{Host, NetConfig, SockId, Stack};
use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

/// Host sockets that always succeed: every TCP socket has a few bytes and then end of stream.
#[derive(Default)]
struct MemHost {
    next: SockId,
    /// Unconsumed received bytes per TCP socket.
    tcp: HashMap<SockId, usize>,
    pending: Vec<SockId>,
}

impl Host for MemHost {
    fn tcp_connect(&mut self, _: SocketAddr) -> io::Result<SockId> {
        self.next += 1;
        self.tcp.insert(self.next, 3000);
        self.pending.push(self.next);
        Ok(self.next)
    }
    fn tcp_send(&mut self, _: SockId, data: &[u8]) -> io::Result<usize> {
        Ok(data.len().min(1000))
    }
    fn tcp_send_space(&mut self, _: SockId) -> usize {
        65536
    }
    fn tcp_peek(&mut self, id: SockId, offset: usize, bufs: &mut [&mut [u8]]) -> io::Result<usize> {
        let have = self.tcp.get(&id).copied().unwrap_or(0);
        assert!(offset <= have, "peek past the received data");
        let mut n = 0;
        for b in bufs.iter_mut() {
            let take = b.len().min(have - offset - n);
            b[..take].fill(0x61);
            n += take;
        }
        Ok(n)
    }
    fn tcp_consume(&mut self, id: SockId, len: usize) -> io::Result<()> {
        let have = self.tcp.entry(id).or_default();
        assert!(len <= *have, "consumed more than was received");
        *have -= len;
        Ok(())
    }
    fn tcp_shutdown(&mut self, _: SockId) {}
    fn tcp_close(&mut self, id: SockId, _: bool) {
        self.tcp.remove(&id);
    }
    fn udp_open(&mut self, _: bool) -> io::Result<SockId> {
        self.next += 1;
        Ok(self.next)
    }
    fn udp_send_to(&mut self, _: SockId, _: SocketAddr, _: &[u8]) -> io::Result<()> {
        Ok(())
    }
    fn icmp_open(&mut self, _: bool) -> io::Result<SockId> {
        self.next += 1;
        Ok(self.next)
    }
    fn icmp_send_to(&mut self, _: SockId, _: IpAddr, _: &[u8]) -> io::Result<()> {
        Ok(())
    }
    fn close(&mut self, _: SockId) {}
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(mut stack) = Stack::new(NetConfig::default()) else {
        return;
    };
    let port = stack.add_port();
    let mut host = MemHost::default();
    let start = Instant::now();
    let mut rest = data;
    let mut i = 0u64;
    while rest.len() >= 2 {
        let len = usize::from(u16::from_be_bytes([rest[0], rest[1]])).min(rest.len() - 2);
        let frame = &rest[2..2 + len];
        rest = &rest[2 + len..];
        let now = start + Duration::from_millis(i * 10);
        i += 1;
        stack.handle_frame(&mut host, now, port, frame);
        for sock in std::mem::take(&mut host.pending) {
            stack.on_tcp_connected(&mut host, now, sock, Ok(()));
            stack.on_tcp_readable(&mut host, now, sock, true);
        }
        stack.end_batch(&mut host);
        stack.on_timeout(&mut host, now);
        stack.out.queue.clear();
    }
    stack.on_timeout(&mut host, start + Duration::from_secs(3600));
});
