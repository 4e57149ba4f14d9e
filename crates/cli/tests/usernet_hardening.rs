//! Hostile guests against a real `limanet usernet`, end to end: a guest that opens all the
//! connections it can (established and half-open), and clients that never read plus a
//! broadcast flood. An honest guest on the same network keeps probing (TCP to the host, DNS
//! through 192.168.5.3) during each attack and must keep >= 99 % of its probes succeeding;
//! limanet's descriptors and peak RSS are printed (run with `--nocapture` to see them).
//!
//! Network safety: as every usernet test, inside a private test host (usernet_support).

mod usernet_support;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream, UdpSocket};
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::time::{Duration, Instant};

use limanet_dns::proto::op::{Message, MessageType, OpCode, Query};
use limanet_dns::proto::rr::{Name, RecordType};
use limanet_testkit::servers::TcpEchoServer;
use limanet_testkit::{wait_for_path, ChildGuard, Netns};
use usernet_support::*;

/// A usernet daemon with `count` configured netns guests (.15, .16, ...), started with the
/// open-file limit `nofile` (soft and hard) and `extra` options.
fn start(env: &Env, count: u8, nofile: Option<u64>, extra: &[&str]) -> Usernet {
    let guests: Vec<Netns> = (0..count)
        .map(|_| Netns::new("lnh").expect("guest netns"))
        .collect();
    let pidfile = env.dir.join(&format!("hard-{}.pid", guests[0].name()));
    let mut cmd = env.limanet("usernet");
    cmd.env("LIMANET_LOG", "info");
    for g in &guests {
        cmd.arg("--netns").arg(g.path());
    }
    cmd.arg("--pidfile").arg(&pidfile).args(extra);
    if let Some(n) = nofile {
        // SAFETY: only setrlimit, async-signal-safe, between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                let lim = libc::rlimit {
                    rlim_cur: n,
                    rlim_max: n,
                };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    let daemon = ChildGuard::spawn("limanet-usernet", &mut cmd).expect("spawn usernet");
    let u = Usernet { daemon, guests };
    if let Err(e) = wait_for_path(&pidfile, Duration::from_secs(20)) {
        panic!("limanet usernet did not start: {e}\n{}", u.daemon.logs());
    }
    for (i, g) in u.guests.iter().enumerate() {
        let ip = std::net::IpAddr::from([192, 168, 5, 15 + i as u8]);
        if let Err(e) = g.wait_for_addr(ip, Duration::from_secs(10)) {
            panic!("tap0 not configured: {e}\n{}", u.daemon.logs());
        }
    }
    u
}

/// Peak RSS (VmHWM) and current RSS of `pid`, in KiB.
fn rss_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmHWM:"), field("VmRSS:"))
}

/// Open descriptors of `pid`.
fn fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

/// One honest probe from inside a guest: a TCP echo round trip to the host and a DNS query
/// (forwarded to the stub) through 192.168.5.3. True if both worked.
fn probe(echo: SocketAddr, id: u16) -> bool {
    let tcp = (|| -> std::io::Result<bool> {
        let mut s = TcpStream::connect_timeout(&echo, Duration::from_secs(3))?;
        s.set_read_timeout(Some(Duration::from_secs(3)))?;
        s.write_all(b"probe")?;
        s.shutdown(Shutdown::Write)?;
        let mut got = Vec::new();
        s.read_to_end(&mut got)?;
        Ok(got == b"probe")
    })()
    .unwrap_or(false);
    let dns = (|| -> Option<bool> {
        let sock = UdpSocket::bind("0.0.0.0:0").ok()?;
        sock.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
        let mut q = Message::new(id, MessageType::Query, OpCode::Query);
        q.metadata.recursion_desired = true;
        q.add_query(Query::query(
            Name::from_ascii(format!("{STUB_NAME}.")).ok()?,
            RecordType::A,
        ));
        sock.send_to(&q.to_vec().ok()?, "192.168.5.3:53").ok()?;
        let mut buf = [0u8; 1500];
        let n = sock.recv(&mut buf).ok()?;
        let reply = Message::from_vec(&buf[..n]).ok()?;
        Some(reply.metadata.id == id && !reply.answers.is_empty())
    })()
    .unwrap_or(false);
    tcp && dns
}

/// Runs `count` probes from `guest`, one every `gap`; returns how many succeeded.
fn probes(guest: &Netns, echo: SocketAddr, count: u16, gap: Duration) -> u16 {
    guest
        .run_in(move || {
            (0..count)
                .filter(|&i| {
                    let ok = probe(echo, i);
                    std::thread::sleep(gap);
                    ok
                })
                .count() as u16
        })
        .expect("netns")
}

/// Opens `count` non-blocking TCP connects to `dst` from the current namespace and keeps the
/// sockets (each is a SYN, and a connection if the network lets it through).
fn connect_flood(dst: SocketAddr, count: usize) -> Vec<OwnedFd> {
    let SocketAddr::V4(v4) = dst else {
        panic!("IPv4 only")
    };
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: v4.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*v4.ip()).to_be(),
        },
        sin_zero: [0; 8],
    };
    let mut socks = Vec::with_capacity(count);
    for _ in 0..count {
        // SAFETY: plain socket calls with a valid sockaddr_in; the fd is owned at once.
        unsafe {
            let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_NONBLOCK, 0);
            if fd < 0 {
                break;
            }
            let fd_owned = OwnedFd::from_raw_fd(fd);
            libc::connect(
                fd,
                &sin as *const libc::sockaddr_in as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            );
            socks.push(fd_owned);
        }
    }
    socks
}

/// Guest A opens 3000 connections to the host (far beyond what limanet's 1024 descriptors
/// could back) and 3000 connects to an address that never answers (half-open flows); guest
/// B keeps connecting to the host and resolving names. Defined reaction: A's share of the
/// flow table is capped (its further SYNs are refused with RST), half-open flows end at the
/// SYN timeout or when the host gives up, limanet never runs out of descriptors, and B's
/// probes succeed.
/// The attacks run one at a time: each measures a daemon's descriptors and memory, and two
/// floods at once on a small machine would measure each other.
fn one_attack_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

#[test]
fn connection_and_syn_flood_from_one_guest_leave_the_other_working() {
    let _serial = one_attack_at_a_time();
    raise_nofile();
    let env = Env::new("hflood");
    let echo = TcpEchoServer::start(&env.th.host, "127.0.0.1:0".parse().unwrap()).expect("echo");
    let server = SocketAddr::from(([192, 168, 5, 2], echo.addr().port()));
    let u = start(&env, 2, Some(1024), &[]);
    let pid = u.daemon.id();
    let (a, b) = (&u.guests[0], &u.guests[1]);
    let baseline = probes(b, server, 20, Duration::ZERO);
    assert_eq!(baseline, 20, "before the attack\n{}", u.daemon.logs());

    // Established connections: as many as A can get.
    let held = a
        .run_in(move || connect_flood(server, 3000))
        .expect("netns");
    // Half-open: SYNs to an address of the fake internet nobody has.
    let blackhole: SocketAddr = "203.0.113.200:80".parse().unwrap();
    let half_open = a
        .run_in(move || connect_flood(blackhole, 3000))
        .expect("netns");
    std::thread::sleep(Duration::from_millis(500));
    let during_fds = fds(pid);

    let started = Instant::now();
    let ok = probes(b, server, 200, Duration::from_millis(5));
    let elapsed = started.elapsed();
    let (peak, _) = rss_kib(pid);
    let peak_fds = during_fds.max(fds(pid));
    println!(
        "connection flood: honest probes {ok}/200 in {elapsed:?}, limanet fds {peak_fds} (limit 1024), peak RSS {peak} KiB"
    );
    let logs = u.daemon.logs();
    assert!(ok >= 198, "honest guest: {ok}/200\n{logs}");
    assert!(
        peak_fds < 1024 - 100,
        "descriptors in reserve: {peak_fds}\n{logs}"
    );
    assert!(
        logs.contains("as many connections as it may")
            || logs.contains("as many half-open connections as it may"),
        "the limit is logged\n{logs}"
    );
    drop(held);
    drop(half_open);
}

/// 32 QEMU clients connect and never read, while another floods broadcast frames as fast as it
/// can; a netns guest on the same network keeps probing. Defined reaction: flooding is rate
/// limited per port, queued output is capped per port and per network (drops counted), RSS
/// stays bounded, and the honest guest's probes succeed.
#[test]
fn clients_that_never_read_and_a_broadcast_flood_keep_memory_bounded() {
    let _serial = one_attack_at_a_time();
    let env = Env::new("hmem");
    let echo = TcpEchoServer::start(&env.th.host, "127.0.0.1:0".parse().unwrap()).expect("echo");
    let server = SocketAddr::from(([192, 168, 5, 2], echo.addr().port()));
    let sock = env.dir.join("q.sock");
    let sock_arg = sock.to_str().expect("utf-8 path").to_string();
    let u = start(&env, 1, None, &["--listen-qemu", &sock_arg]);
    let pid = u.daemon.id();
    let (before, _) = rss_kib(pid);
    let sleepers: Vec<UnixStream> = (0..32).map(|_| connect(&sock)).collect();
    let mut flooder = connect(&sock);
    flooder.set_nonblocking(true).expect("non-blocking");

    // A broadcast frame of an unknown ethertype from a made-up unicast MAC, 1514 bytes.
    let mut frame = vec![0xff; 6];
    frame.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x99, 0x88, 0xb5]);
    frame.resize(1514, 0x5a);
    let mut record = (frame.len() as u32).to_be_bytes().to_vec();
    record.extend_from_slice(&frame);
    let batch: Vec<u8> = record.repeat(64);

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop2 = stop.clone();
    let flood = std::thread::spawn(move || {
        let mut sent = 0usize;
        let mut pos = 0;
        while !stop2.load(std::sync::atomic::Ordering::Relaxed) {
            match flooder.write(&batch[pos..]) {
                Ok(n) => {
                    sent += n;
                    pos = (pos + n) % batch.len();
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_micros(200))
                }
                Err(_) => break,
            }
        }
        sent
    });
    // Let the queues fill before probing.
    std::thread::sleep(Duration::from_secs(1));
    let ok = probes(u.guest(), server, 150, Duration::from_millis(10));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let sent = flood.join().expect("flooder");
    let (peak, now) = rss_kib(pid);
    let growth_mib = peak.saturating_sub(before) / 1024;
    println!(
        "never-read + broadcast flood: {} MB sent, honest probes {ok}/150, RSS {before} -> peak {peak} KiB (now {now}), growth {growth_mib} MiB, fds {}",
        sent >> 20,
        fds(pid)
    );
    let logs = u.daemon.logs();
    assert!(ok >= 149, "honest guest: {ok}/150\n{logs}");
    // Queued output is capped at 32 MiB per network plus 256 KiB per port (8.5 MiB here).
    assert!(growth_mib < 64, "RSS grew {growth_mib} MiB\n{logs}");
    drop(sleepers);
}

fn connect(path: &Path) -> UnixStream {
    UnixStream::connect(path).expect("connect to limanet")
}

/// hping3 SYN floods from guest A, as the original attack: one from A's own address at an open
/// host port whose listener never accepts (the host's backlog fills, so host connects stay
/// pending: half-open flows), one with B's address as source (spoofed), both for 3 s, while B
/// keeps probing. Defined reaction: spoofed SYNs are dropped, A's half-open flows are capped
/// (further SYNs get RST), limanet keeps descriptors in reserve, B's probes succeed.
#[test]
fn hping3_syn_floods_own_and_spoofed_sources() {
    let _serial = one_attack_at_a_time();
    if std::process::Command::new("hping3")
        .arg("--version")
        .output()
        .is_err()
    {
        panic!("hping3 is missing: run scripts/install-deps");
    }
    raise_nofile();
    let env = Env::new("hsyn");
    let echo = TcpEchoServer::start(&env.th.host, "127.0.0.1:0".parse().unwrap()).expect("echo");
    let server = SocketAddr::from(([192, 168, 5, 2], echo.addr().port()));
    let deaf = env
        .th
        .host
        .run_in(|| std::net::TcpListener::bind("127.0.0.1:0"))
        .expect("netns")
        .expect("bind deaf listener");
    let deaf_port = deaf.local_addr().expect("addr").port().to_string();
    let u = start(&env, 2, Some(1024), &[]);
    let pid = u.daemon.id();
    let (a, b) = (&u.guests[0], &u.guests[1]);
    let flood = |extra: &[&str]| {
        let mut args = vec!["-q", "-S", "--flood", "-p", &deaf_port];
        args.extend_from_slice(extra);
        args.push("192.168.5.2");
        a.spawn("hping3", "hping3", &args).expect("spawn hping3")
    };
    let own = flood(&[]);
    let spoofed = flood(&["-a", "192.168.5.16"]);
    std::thread::sleep(Duration::from_millis(300));
    let ok = probes(b, server, 100, Duration::from_millis(10));
    let peak_fds = fds(pid);
    drop(own);
    drop(spoofed);
    let (peak, _) = rss_kib(pid);
    println!("hping3 SYN floods: honest probes {ok}/100, limanet fds {peak_fds} (limit 1024), peak RSS {peak} KiB");
    let logs = u.daemon.logs();
    assert!(ok >= 99, "honest guest: {ok}/100\n{logs}");
    assert!(
        peak_fds < 1024 - 100,
        "descriptors in reserve: {peak_fds}\n{logs}"
    );
    assert!(
        // With 1024 descriptors the half-open share is the whole per-guest share.
        logs.contains("connections as it may"),
        "per-guest limit logged\n{logs}"
    );
    assert!(
        logs.contains("source address this port may not use"),
        "spoofed sources logged\n{logs}"
    );
    drop(deaf);
}

/// A QEMU client sends frames from a million made-up source MACs (to the gateway, so every
/// frame reaches the switch); a netns guest keeps probing. Defined reaction: the MAC table
/// keeps at most 64 MACs of that port (frames from the others are dropped and counted), RSS
/// does not grow with the number of MACs (unbounded, it was about 34 MB per million), and the
/// table entries go when the client disconnects.
#[test]
fn a_million_source_macs_cost_a_bounded_table() {
    let _serial = one_attack_at_a_time();
    let env = Env::new("hmac");
    let echo = TcpEchoServer::start(&env.th.host, "127.0.0.1:0".parse().unwrap()).expect("echo");
    let server = SocketAddr::from(([192, 168, 5, 2], echo.addr().port()));
    let sock = env.dir.join("q.sock");
    let sock_arg = sock.to_str().expect("utf-8 path").to_string();
    let u = start(&env, 1, None, &["--listen-qemu", &sock_arg]);
    let pid = u.daemon.id();
    let (before, _) = rss_kib(pid);
    let flooder = connect(&sock);
    let writer = std::thread::spawn(move || {
        let mut flooder = flooder;
        let mut batch = Vec::with_capacity(1 << 20);
        for i in 0..1_000_000u32 {
            let b = i.to_be_bytes();
            let mut frame = vec![
                0x52, 0x55, 192, 168, 5, 2, 0x02, 0x77, b[0], b[1], b[2], b[3],
            ];
            frame.extend_from_slice(&[0x88, 0xb5]);
            frame.resize(60, 0);
            batch.extend_from_slice(&(frame.len() as u32).to_be_bytes());
            batch.extend_from_slice(&frame);
            if batch.len() >= 1 << 20 {
                if flooder.write_all(&batch).is_err() {
                    return false;
                }
                batch.clear();
            }
        }
        flooder.write_all(&batch).is_ok()
    });
    let ok = probes(u.guest(), server, 100, Duration::from_millis(10));
    assert!(
        writer.join().expect("writer"),
        "flood written\n{}",
        u.daemon.logs()
    );
    std::thread::sleep(Duration::from_millis(500));
    let (peak, _) = rss_kib(pid);
    let growth_mib = peak.saturating_sub(before) / 1024;
    println!("a million source MACs: honest probes {ok}/100, RSS {before} -> peak {peak} KiB, growth {growth_mib} MiB");
    let logs = u.daemon.logs();
    assert!(ok >= 99, "honest guest: {ok}/100\n{logs}");
    assert!(growth_mib < 8, "RSS grew {growth_mib} MiB\n{logs}");
    assert!(logs.contains("MAC table full for this port"), "{logs}");
}
