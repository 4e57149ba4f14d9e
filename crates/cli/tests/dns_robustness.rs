//! `limanet dns` under bad input: malformed packets, bad opcodes and counts, truncated and
//! slow TCP messages, floods, pipelined TCP queries; the server must answer correctly, log, and
//! keep serving. Hermetic: see dns_harness.rs.

#[path = "dns_harness.rs"]
mod harness;

use std::io::{Read, Write};
use std::net::{TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use harness::*;
use limanet_dns::proto::op::{Message, ResponseCode};
use limanet_dns::proto::rr::rdata::{A, PTR};
use limanet_dns::proto::rr::{Name, RData, RecordType};

const HOSTS: &str = "192.0.2.10 filehost.test\n";

fn table() -> Table {
    let mut t = Table::new();
    entry(
        &mut t,
        "fwd.test.",
        RecordType::PTR,
        vec![rr(
            "fwd.test.",
            RData::PTR(PTR(Name::from_ascii("target.test.").expect("name"))),
        )],
    );
    entry(
        &mut t,
        "dnsonly.test.",
        RecordType::A,
        vec![rr("dnsonly.test.", RData::A(A::new(198, 51, 100, 7)))],
    );
    t
}

fn read_framed(stream: &mut TcpStream) -> Message {
    let mut len = [0u8; 2];
    stream.read_exact(&mut len).expect("length prefix");
    let mut body = vec![0u8; usize::from(u16::from_be_bytes(len))];
    stream.read_exact(&mut body).expect("body");
    Message::from_vec(&body).expect("reply parses")
}

fn framed(msg: &[u8]) -> Vec<u8> {
    let mut out = (msg.len() as u16).to_be_bytes().to_vec();
    out.extend_from_slice(msg);
    out
}

fn assert_serving(dns: &Limanet) {
    let d = dig(dns.udp, "filehost.test", "A", &[]);
    assert_eq!(d.answers, ["filehost.test. 5 IN A 192.0.2.10"], "{}", d.raw);
    let d = dig(dns.tcp, "filehost.test", "A", &["+tcp"]);
    assert_eq!(d.answers, ["filehost.test. 5 IN A 192.0.2.10"], "{}", d.raw);
}

#[test]
fn dns_pipelined_tcp_queries_on_one_connection() {
    let stub = Stub::start(table());
    let dns = Limanet::start(stub.ip, HOSTS, &[]);
    let mut stream = TcpStream::connect(dns.tcp).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    // Three queries in one write: a local one, a forwarded one, a getaddrinfo one.
    let mut batch = framed(&query(1, "filehost.test.", RecordType::A));
    batch.extend(framed(&query(2, "fwd.test.", RecordType::PTR)));
    batch.extend(framed(&query(3, "dnsonly.test.", RecordType::A)));
    stream.write_all(&batch).expect("write");
    let mut ids: Vec<u16> = (0..3)
        .map(|_| read_framed(&mut stream))
        .map(|m| {
            assert_eq!(m.response_code, ResponseCode::NoError);
            assert_eq!(m.answers.len(), 1, "{m:?}");
            m.id
        })
        .collect();
    ids.sort();
    assert_eq!(ids, [1, 2, 3]);
    // The connection stays open for more (RFC 7766; Lima closes after each query).
    stream
        .write_all(&framed(&query(4, "filehost.test.", RecordType::A)))
        .expect("write");
    assert_eq!(read_framed(&mut stream).id, 4);
}

#[test]
fn dns_malformed_and_unsupported_requests() {
    let stub = Stub::start(table());
    let dns = Limanet::start(stub.ip, HOSTS, &[]);
    let sock = UdpSocket::bind("127.0.0.1:0").expect("bind");
    sock.set_read_timeout(Some(Duration::from_millis(500)))
        .expect("timeout");
    let mut buf = [0u8; 1024];

    // Too short for a header, and a response (QR set): ignored, no reply.
    for junk in [
        &[1u8, 2, 3][..],
        &{
            let mut q = query(5, "a.test.", RecordType::A);
            q[2] |= 0x80;
            q
        }[..],
    ] {
        sock.send_to(junk, dns.udp).expect("send");
        assert!(sock.recv(&mut buf).is_err(), "no reply expected");
    }

    // Opcode STATUS (2): NOTIMP.
    let mut q = query(6, "a.test.", RecordType::A);
    q[2] |= 2 << 3;
    sock.send_to(&q, dns.udp).expect("send");
    let n = sock.recv(&mut buf).expect("NOTIMP reply");
    let m = Message::from_vec(&buf[..n]).expect("parse");
    assert_eq!((m.id, m.response_code), (6, ResponseCode::NotImp));

    // Two questions, and a body cut in the middle: FORMERR.
    let mut q = query(7, "a.test.", RecordType::A);
    q[5] = 2;
    sock.send_to(&q, dns.udp).expect("send");
    let n = sock.recv(&mut buf).expect("FORMERR reply");
    assert_eq!(
        Message::from_vec(&buf[..n]).expect("parse").response_code,
        ResponseCode::FormErr
    );
    let q = query(8, "a-rather-long-name.test.", RecordType::A);
    sock.send_to(&q[..q.len() - 6], dns.udp).expect("send");
    let n = sock.recv(&mut buf).expect("FORMERR reply");
    let m = Message::from_vec(&buf[..n]).expect("parse");
    assert_eq!((m.id, m.response_code), (8, ResponseCode::FormErr));

    // Random garbage with a plausible header.
    let mut seed = 0x1234_5678u32;
    for _ in 0..200 {
        let len = 12 + (seed % 300) as usize;
        let mut pkt: Vec<u8> = (0..len)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 17;
                seed ^= seed << 5;
                seed as u8
            })
            .collect();
        pkt[2] &= 0x7f;
        sock.send_to(&pkt, dns.udp).expect("send");
    }
    assert_serving(&dns);
}

#[test]
fn dns_bad_tcp_clients_are_dropped_and_others_served() {
    let stub = Stub::start(table());
    let mut dns = Limanet::start(stub.ip, HOSTS, &[]);
    // A length prefix promising 65535 bytes: closed at once, nothing allocated for it.
    let mut huge = TcpStream::connect(dns.tcp).expect("connect");
    huge.write_all(&[0xff, 0xff, 0, 1, 2]).expect("write");
    huge.set_read_timeout(Some(Duration::from_secs(3)))
        .expect("timeout");
    let mut buf = [0u8; 16];
    let started = Instant::now();
    let r = huge.read(&mut buf);
    assert!(matches!(r, Ok(0) | Err(_)), "closed, not answered: {r:?}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "closed at once, not at a timeout"
    );
    // Half a length prefix.
    let mut half = TcpStream::connect(dns.tcp).expect("connect");
    half.write_all(&[0x00]).expect("write");
    // A length below a header's size: the server closes.
    let mut tiny = TcpStream::connect(dns.tcp).expect("connect");
    tiny.write_all(&[0, 3, 1, 2, 3]).expect("write");
    tiny.set_read_timeout(Some(Duration::from_secs(3)))
        .expect("timeout");
    let mut buf = [0u8; 16];
    assert_eq!(tiny.read(&mut buf).expect("closed, not timed out"), 0);
    // Slow loris: one byte at a time, slower than the per-message limit (5 s).
    let mut loris = TcpStream::connect(dns.tcp).expect("connect");
    let q = framed(&query(9, "filehost.test.", RecordType::A));
    loris.write_all(&q[..3]).expect("write");
    // Meanwhile, normal clients are served.
    assert_serving(&dns);
    drop(huge);
    drop(half);
    let started = Instant::now();
    loris
        .set_read_timeout(Some(Duration::from_secs(8)))
        .expect("timeout");
    let mut sent = 3;
    let closed = loop {
        if sent < q.len() {
            std::thread::sleep(Duration::from_millis(700));
            if loris.write_all(&q[sent..sent + 1]).is_err() {
                break true;
            }
            sent += 1;
            continue;
        }
        break matches!(loris.read(&mut buf), Ok(0) | Err(_));
    };
    assert!(closed, "slow client should be cut off");
    assert!(started.elapsed() < Duration::from_secs(9));
    assert_serving(&dns);
    assert!(dns.alive());
}

#[test]
fn dns_udp_flood_keeps_memory_bounded_and_answers_after() {
    let stub = Stub::start(table());
    let mut dns = Limanet::start(stub.ip, HOSTS, &[]);
    let sock = UdpSocket::bind("127.0.0.1:0").expect("bind");
    sock.set_nonblocking(true).expect("nonblocking");
    let q = query(10, "fwd.test.", RecordType::PTR);
    let started = Instant::now();
    let mut sent = 0u32;
    while started.elapsed() < Duration::from_secs(2) {
        if sock.send_to(&q, dns.udp).is_ok() {
            sent += 1;
        }
        let mut buf = [0u8; 512];
        while sock.recv(&mut buf).is_ok() {}
    }
    assert!(sent > 1000, "flood sent only {sent}");
    std::thread::sleep(Duration::from_millis(300));
    assert_serving(&dns);
    let rss =
        std::fs::read_to_string(format!("/proc/{}/status", dns_pid(&dns))).unwrap_or_default();
    if let Some(kb) = rss
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<u64>().ok())
    {
        assert!(kb < 200 * 1024, "RSS {kb} kB after the flood");
    }
    assert!(dns.alive());
    assert!(dns.terminate().success(), "clean exit on SIGTERM");
}

/// The pid of `limanet dns` itself (unshare execs sh, which execs limanet: same pid).
fn dns_pid(dns: &Limanet) -> u32 {
    dns.pid()
}

fn proc_status_kb(pid: u32, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

/// Lets this test process hold a few thousand sockets.
fn raise_fd_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        lim.rlim_cur = lim.rlim_max.min(65536);
        libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
    }
}

/// One TCP query on a fresh connection; true if the right answer came back within 2 s.
fn tcp_probe(dns: &Limanet, id: u16) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&dns.tcp, Duration::from_secs(2)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(&framed(&query(id, "filehost.test.", RecordType::A)))
        .is_err()
    {
        return false;
    }
    let mut len = [0u8; 2];
    if s.read_exact(&mut len).is_err() {
        return false;
    }
    let mut body = vec![0u8; usize::from(u16::from_be_bytes(len))];
    s.read_exact(&mut body).is_ok()
        && Message::from_vec(&body).is_ok_and(|m| m.id == id && m.answers.len() == 1)
}

/// 2000 clients connect over TCP and never send a query (the limit is 256, the idle timeout
/// 10 s): each new client, attacker or honest, is admitted by closing the longest-idle
/// connection, so honest queries keep being answered at once during the attack, and limanet's
/// descriptors stay bounded.
#[test]
fn dns_tcp_idle_clients_cannot_lock_out_new_ones() {
    raise_fd_limit();
    let stub = Stub::start(table());
    let mut dns = Limanet::start(stub.ip, HOSTS, &[]);
    let pid = dns_pid(&dns);
    let fds_before = open_fds(pid);
    let mut idle = Vec::new();
    let mut peak_fds = 0;
    let (mut ok, mut probes) = (0u32, 0u32);
    for i in 0..2000u32 {
        if let Ok(s) = TcpStream::connect_timeout(&dns.tcp, Duration::from_secs(2)) {
            idle.push(s);
        }
        // An honest client every 20 attackers, once the table is full.
        if i >= 300 && i % 20 == 0 {
            probes += 1;
            ok += u32::from(tcp_probe(&dns, i as u16));
            peak_fds = peak_fds.max(open_fds(pid));
        }
    }
    assert!(idle.len() >= 1990, "only {} idle connections", idle.len());
    let started = Instant::now();
    for k in 0..20u16 {
        probes += 1;
        ok += u32::from(tcp_probe(&dns, 60000 + k));
    }
    let per_query = started.elapsed() / 20;
    peak_fds = peak_fds.max(open_fds(pid));
    let rss_peak = proc_status_kb(pid, "VmHWM:");
    eprintln!(
        "idle-TCP attack: honest {ok}/{probes} answered, {per_query:?} per query after 2000 idle, \
         limanet fds {fds_before} -> peak {peak_fds}, peak RSS {rss_peak} kB"
    );
    assert!(
        f64::from(ok) >= 0.99 * f64::from(probes),
        "honest clients answered {ok}/{probes}"
    );
    assert!(per_query < Duration::from_millis(500), "{per_query:?}");
    assert!(
        peak_fds < fds_before + 256 + 64,
        "descriptors not bounded: {fds_before} -> {peak_fds}"
    );
    // The evicted attackers see their connection closed.
    let mut first = idle.swap_remove(0);
    first
        .set_read_timeout(Some(Duration::from_secs(2)))
        .expect("timeout");
    let mut buf = [0u8; 4];
    assert!(
        matches!(first.read(&mut buf), Ok(0) | Err(_)),
        "oldest idle connection closed"
    );
    drop(idle);
    assert_serving(&dns);
    assert!(dns.alive());
    assert!(dns.terminate().success());
}
