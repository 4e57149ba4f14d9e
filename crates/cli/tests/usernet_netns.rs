//! Lima's default user-mode network (192.168.5.0/24) with network-namespace guests, end to end
//! with real clients (busybox udhcpc/wget/nslookup/ping, curl, getent, Rust sockets):
//! `limanet run` and `limanet usernet --netns`, always inside a private test host (see
//! usernet_support).

mod usernet_support;

use std::io::{BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream, UdpSocket};
use std::time::Duration;

use limanet_testkit::checksum::{sha256_reader, PatternReader};
use limanet_testkit::servers::{HttpServer, TcpEchoServer, UdpEchoServer};
use limanet_testkit::{ChildGuard, Lease, TestHost};
use usernet_support::*;

/// A `limanet run` of these short scripts that takes longer is broken.
const RUN_TIMEOUT: Duration = Duration::from_secs(30);

fn any(port: u16) -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], port))
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// busybox udhcpc in the command's namespace (TAP left unconfigured) gets Lima's first guest
/// address with the gateway as router and the embedded DNS as server, then uses the lease.
#[test]
fn run_udhcpc_gets_192_168_5_15() {
    let env = Env::new("dhcp");
    let http = HttpServer::start(&env.th.host, loopback(0), None).expect("http");
    let port = http.addr().port();
    let script = format!(
        "busybox udhcpc -i tap0 -s {} -q -n -f -t 10 -T 1 -O mtu || exit 20\n\
         busybox wget -q -O - http://192.168.5.2:{port}/bytes/5000?seed=9 | sha256sum | sed 's/ .*//;s/^/SHA=/'\n",
        env.udhcpc_script.display()
    );
    let out = env.run_sh(&["--no-configure"], &script, RUN_TIMEOUT);
    assert_eq!(out.code, Some(0), "{}", out.all());
    let lease = Lease::parse(&out.stdout).unwrap_or_else(|| panic!("no lease\n{}", out.all()));
    assert_eq!(lease.ip.to_string(), "192.168.5.15", "{}", out.all());
    assert_eq!(lease.prefix, 24);
    assert_eq!(
        lease.router.map(|r| r.to_string()).as_deref(),
        Some("192.168.5.2")
    );
    assert_eq!(
        lease.dns.iter().map(|d| d.to_string()).collect::<Vec<_>>(),
        ["192.168.5.3"]
    );
    assert_eq!(lease.mtu, Some(1500));
    assert_eq!(
        lease.server_id.map(|s| s.to_string()).as_deref(),
        Some("192.168.5.2")
    );
    assert_eq!(
        out.value("SHA"),
        Some(PatternReader::new(9, 5000).sha256()),
        "{}",
        out.all()
    );
}

/// `--mtu 65520` (the largest Lima allows): DHCP announces it, the guest applies it, and large
/// frames cross the network both to the host's loopback (HTTP) and to the gateway (a 60000-byte
/// ping answered locally).
#[test]
fn run_mtu_65520_by_dhcp_and_large_frames() {
    let env = Env::new("mtu");
    let http = HttpServer::start(&env.th.host, loopback(0), None).expect("http");
    let port = http.addr().port();
    let script = format!(
        "busybox udhcpc -i tap0 -s {} -q -n -f -t 10 -T 1 -O mtu || exit 20\n\
         echo LINKMTU=$(ip -o link show dev tap0 | sed 's/.* mtu \\([0-9]*\\).*/\\1/')\n\
         echo SHA=$(busybox wget -q -O - http://192.168.5.2:{port}/bytes/3000000?seed=6 | sha256sum | cut -d' ' -f1)\n\
         busybox ping -c 1 -W 3 -s 60000 192.168.5.2 > /dev/null 2>&1; echo BIGPING=$?\n",
        env.udhcpc_script.display()
    );
    let out = env.run_sh(&["--no-configure", "--mtu", "65520"], &script, RUN_TIMEOUT);
    assert_eq!(out.code, Some(0), "{}", out.all());
    let lease = Lease::parse(&out.stdout).unwrap_or_else(|| panic!("no lease\n{}", out.all()));
    assert_eq!(lease.mtu, Some(65520), "{}", out.all());
    assert_eq!(
        out.value("LINKMTU").as_deref(),
        Some("65520"),
        "{}",
        out.all()
    );
    assert_eq!(
        out.value("SHA"),
        Some(PatternReader::new(6, 3_000_000).sha256()),
        "{}",
        out.all()
    );
    assert_eq!(out.value("BIGPING").as_deref(), Some("0"), "{}", out.all());
}

/// The configured TAP (192.168.5.15) reaches a server on the host's 127.0.0.1 through the
/// gateway (curl and busybox wget), and servers on the fake internet (HTTP and TCP echo).
#[test]
fn run_reaches_host_loopback_and_fake_internet() {
    let env = Env::new("reach");
    let host_http = HttpServer::start(&env.th.host, loopback(0), None).expect("host http");
    let inet_http = HttpServer::start(&env.th.internet, any(0), None).expect("internet http");
    let inet_echo = TcpEchoServer::start(&env.th.internet, any(0)).expect("echo");
    let hp = host_http.addr().port();
    let ip = inet_http.addr().port();
    let ep = inet_echo.addr().port();
    let script = format!(
        "echo ADDR=$(ip -o -4 addr show dev tap0 | awk '{{print $4}}')\n\
         echo ROUTE=$(ip route show default)\n\
         echo CURL=$(curl -sS --max-time 20 http://192.168.5.2:{hp}/bytes/300000?seed=1 | sha256sum | cut -d' ' -f1)\n\
         echo WGET=$(busybox wget -q -O - http://203.0.113.2:{ip}/bytes/200000?seed=2 | sha256sum | cut -d' ' -f1)\n\
         echo ECHO=$(echo hello-internet | busybox nc -w 5 203.0.113.3 {ep})\n"
    );
    let out = env.run_sh(&[], &script, RUN_TIMEOUT);
    assert_eq!(out.code, Some(0), "{}", out.all());
    assert_eq!(
        out.value("ADDR").as_deref(),
        Some("192.168.5.15/24"),
        "{}",
        out.all()
    );
    assert!(
        out.value("ROUTE")
            .unwrap_or_default()
            .contains("via 192.168.5.2"),
        "{}",
        out.all()
    );
    assert_eq!(
        out.value("CURL"),
        Some(PatternReader::new(1, 300_000).sha256()),
        "{}",
        out.all()
    );
    assert_eq!(
        out.value("WGET"),
        Some(PatternReader::new(2, 200_000).sha256()),
        "{}",
        out.all()
    );
    assert_eq!(
        out.value("ECHO").as_deref(),
        Some("hello-internet"),
        "{}",
        out.all()
    );
}

/// The embedded DNS at 192.168.5.3, as the command's resolv.conf names it: Lima's names
/// (`lima-<instance>`, `host.lima.internal`), `--host` entries (NAME=IP and NAME=OTHER-NAME),
/// and a name only the upstream
/// stub knows; through busybox nslookup, dig (UDP and TCP) and getent (the command's libc
/// resolver).
#[test]
fn run_dns_through_192_168_5_3() {
    let env = Env::new("dns");
    let script = format!(
        "echo RESOLV=$(grep nameserver /etc/resolv.conf | tr '\\n' ' ')\n\
         busybox nslookup lima-test 192.168.5.3 2>&1 | sed 's/^/NS1 /'\n\
         busybox nslookup host.lima.internal 192.168.5.3 2>&1 | sed 's/^/NS2 /'\n\
         busybox nslookup static.example.test 192.168.5.3 2>&1 | sed 's/^/NS3 /'\n\
         busybox nslookup {STUB_NAME} 192.168.5.3 2>&1 | sed 's/^/NS4 /'\n\
         busybox nslookup alias.example.test 192.168.5.3 2>&1 | sed 's/^/NS5 /'\n\
         echo GETENT1=$(getent ahostsv4 host.lima.internal | head -n1 | cut -d' ' -f1)\n\
         echo GETENT2=$(getent ahostsv4 {STUB_NAME} | head -n1 | cut -d' ' -f1)\n\
         echo DIGTCP=$(dig +tcp +short +time=5 +tries=1 @192.168.5.3 lima-test A)\n\
         echo DIGUDP=$(dig +notcp +short +time=5 +tries=1 @192.168.5.3 {STUB_NAME} A)\n\
         if busybox nslookup nosuch.example.test 192.168.5.3 > /dev/null 2>&1; then echo NX=resolved; else echo NX=failed; fi\n"
    );
    let out = env.run_sh(
        &[
            "--instance",
            "test",
            "--host",
            "static.example.test=198.51.100.7",
            "--host",
            "alias.example.test=host.lima.internal",
        ],
        &script,
        RUN_TIMEOUT,
    );
    assert_eq!(out.code, Some(0), "{}", out.all());
    assert_eq!(
        out.value("RESOLV").as_deref(),
        Some("nameserver 192.168.5.3"),
        "{}",
        out.all()
    );
    let answer = |tag: &str| -> Vec<String> {
        out.stdout
            .lines()
            .filter_map(|l| l.strip_prefix(tag))
            .filter_map(|l| l.trim().strip_prefix("Address:"))
            .map(|a| a.trim().to_string())
            // busybox prints the server first as "Address: 192.168.5.3:53".
            .filter(|a| !a.ends_with(":53"))
            .collect()
    };
    // lima-<NAME> is dual stack too: the command's namespace has the configured ::15.
    assert_eq!(
        answer("NS1 "),
        ["192.168.5.15", "fd00:192:168:5::15"],
        "{}",
        out.all()
    );
    // host.lima.internal is dual stack on a network with IPv6 (busybox asks A and AAAA).
    assert_eq!(
        answer("NS2 "),
        ["192.168.5.2", "fd00:192:168:5::2"],
        "{}",
        out.all()
    );
    assert_eq!(answer("NS3 "), ["198.51.100.7"], "{}", out.all());
    assert_eq!(answer("NS4 "), [STUB_ADDR.to_string()], "{}", out.all());
    // NAME=OTHER-NAME: an alias of a name limanet knows.
    assert_eq!(
        answer("NS5 "),
        ["192.168.5.2", "fd00:192:168:5::2"],
        "{}",
        out.all()
    );
    assert_eq!(
        out.value("GETENT1").as_deref(),
        Some("192.168.5.2"),
        "{}",
        out.all()
    );
    assert_eq!(
        out.value("GETENT2"),
        Some(STUB_ADDR.to_string()),
        "{}",
        out.all()
    );
    assert_eq!(out.value("NX").as_deref(), Some("failed"), "{}", out.all());
    // DNS over TCP to 192.168.5.3 works too (dig).
    assert_eq!(
        out.value("DIGTCP").as_deref(),
        Some("192.168.5.15"),
        "{}",
        out.all()
    );
    assert_eq!(
        out.value("DIGUDP"),
        Some(STUB_ADDR.to_string()),
        "{}",
        out.all()
    );
    // The stub really was asked (limanet did not make the answer up).
    assert!(
        env.stub.count(STUB_NAME) > 0,
        "stub never asked\n{}",
        out.all()
    );
}

/// ICMP echo: the gateway answers locally; a fake-internet address answers through limanet's
/// ICMP socket; an address nobody has must not get a (forged) reply.
#[test]
fn run_ping_gateway_internet_and_nobody() {
    let env = Env::new("ping");
    let script = "busybox ping -c 1 -W 3 192.168.5.2 > /dev/null 2>&1; echo GW=$?\n\
                  busybox ping -c 1 -W 3 203.0.113.2 > /dev/null 2>&1; echo INET=$?\n\
                  busybox ping -c 2 -W 3 203.0.113.99 > /dev/null 2>&1; echo NOBODY=$?\n";
    let out = env.run_sh(&[], script, RUN_TIMEOUT);
    assert_eq!(out.code, Some(0), "{}", out.all());
    assert_eq!(out.value("GW").as_deref(), Some("0"), "{}", out.all());
    assert_eq!(out.value("INET").as_deref(), Some("0"), "{}", out.all());
    assert_ne!(out.value("NOBODY").as_deref(), Some("0"), "{}", out.all());
    assert!(out.value("NOBODY").is_some(), "{}", out.all());
}

/// `limanet run` returns the command's exit status, and when it returns nothing is left: no
/// command process (so no namespace), no TAP, no resolv.conf copy or bind mount.
#[test]
fn run_returns_exit_status_and_leaves_nothing_behind() {
    let env = Env::new("exit");
    let out = env.run_sh(
        &[],
        "echo NETNS=$(readlink /proc/self/ns/net)\necho PID=$$\nexit 7\n",
        RUN_TIMEOUT,
    );
    assert_eq!(out.code, Some(7), "{}", out.all());
    let ns = out.value("NETNS").unwrap_or_default();
    assert!(ns.starts_with("net:["), "{}", out.all());
    let host_ns = std::fs::read_link(format!("/run/netns/{}", env.th.host.name()))
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    assert_ne!(ns, host_ns, "the command must get its own namespace");
    // The command is gone (its pid is free, or reused by a process elsewhere), so its
    // namespace is too: limanet never pins it with a mount. (Namespace inode numbers are
    // reused at once, so a scan of /proc for that number could see another test's namespace.)
    let pid = out.value("PID").unwrap_or_default();
    assert!(!pid.is_empty(), "{}", out.all());
    let still_there = std::fs::read_link(format!("/proc/{pid}/ns/net"))
        .map(|p| p.display().to_string() == ns)
        .unwrap_or(false);
    assert!(!still_there, "the command (pid {pid}) still runs in {ns}");
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    assert!(
        !mounts.contains("limanet-resolv-"),
        "a resolv.conf bind mount leaked into the caller's mount namespace"
    );
    let resolv = out.resolv_conf_copy();
    assert!(!resolv.exists(), "{} left behind", resolv.display());
    // limanet itself is gone, and the host netns has no leftover TAP.
    assert!(env.th.host.pids().unwrap_or_default().is_empty());
    let links = env.th.host.run("ip", &["-o", "link"]).unwrap_or_default();
    assert!(!links.contains("tap0"), "{links}");

    // Success comes through as 0, and a program that cannot be executed fails like a shell's
    // 127, without leaving its resolv.conf copy.
    let out = env.run_sh(&[], "exit 0", RUN_TIMEOUT);
    assert_eq!(out.code, Some(0), "{}", out.all());
    let mut cmd = env.limanet("run");
    cmd.args(["--", "/nonexistent/limanet-test-program"]);
    let mut child = ChildGuard::spawn("limanet-run", &mut cmd).expect("spawn limanet run");
    let status = child.wait_timeout(RUN_TIMEOUT).expect("limanet run exits");
    assert_eq!(status.code(), Some(127), "{}", child.logs());
    let resolv = std::env::temp_dir().join(format!("limanet-resolv-{}.conf", child.id()));
    assert!(!resolv.exists(), "{} left behind", resolv.display());
}

/// SIGTERM to `limanet run` is passed on to the command; limanet then exits with the
/// command's status (128+15 for a shell killed by it) and leaves nothing behind.
#[test]
fn run_passes_sigterm_to_the_command() {
    let env = Env::new("term");
    let mut cmd = env.limanet("run");
    cmd.args(["--", "sh", "-c", "echo STARTED; exec sleep 30"]);
    let mut child = ChildGuard::spawn("limanet-run", &mut cmd).expect("spawn limanet run");
    limanet_testkit::wait_for("the command to start", Duration::from_secs(20), || {
        child.stdout().contains("STARTED")
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", child.logs()));
    let pid = libc::pid_t::try_from(child.id()).expect("pid");
    // SAFETY: signalling the limanet process this test started (only it, not its group).
    unsafe {
        libc::kill(pid, libc::SIGTERM);
    }
    let status = child
        .wait_timeout(Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("limanet run ignored SIGTERM: {e}\n{}", child.logs()));
    assert_eq!(status.code(), Some(128 + libc::SIGTERM), "{}", child.logs());
    let resolv = std::env::temp_dir().join(format!("limanet-resolv-{}.conf", child.id()));
    assert!(!resolv.exists(), "{} left behind", resolv.display());
    assert!(env.th.host.pids().unwrap_or_default().is_empty());
}

/// UDP both ways: guest -> echo server on the host's 127.0.0.1 via 192.168.5.2, and host ->
/// guest through `--forward udp:...` to an echo server in the guest namespace.
#[test]
fn udp_echo_both_ways() {
    let env = Env::new("udp");
    let host_echo = UdpEchoServer::start(&env.th.host, loopback(0)).expect("host udp echo");
    let hport = host_echo.addr().port();
    let fwd_port = free_udp_port(&env.th);
    let u = env.usernet(&["--forward", &format!("udp:127.0.0.1:{fwd_port}:5353")]);
    let _guest_echo = UdpEchoServer::start(u.guest(), any(5353)).expect("guest udp echo");

    let got = u
        .guest()
        .run_in(move || udp_roundtrip(SocketAddr::from(([192, 168, 5, 2], hport)), b"to-host"))
        .expect("netns");
    assert_eq!(got.as_deref(), Some(&b"to-host"[..]), "{}", u.daemon.logs());

    let got = env
        .th
        .host
        .run_in(move || udp_roundtrip(loopback(fwd_port), b"to-guest"))
        .expect("netns");
    assert_eq!(
        got.as_deref(),
        Some(&b"to-guest"[..]),
        "{}",
        u.daemon.logs()
    );
}

/// Sends `msg` until an echo comes back (UDP may lose the first while ARP/NAT settle).
fn udp_roundtrip(to: SocketAddr, msg: &[u8]) -> Option<Vec<u8>> {
    let s = UdpSocket::bind("0.0.0.0:0").ok()?;
    s.set_read_timeout(Some(Duration::from_millis(500))).ok()?;
    let mut buf = [0u8; 2048];
    for _ in 0..10 {
        s.send_to(msg, to).ok()?;
        if let Ok((n, from)) = s.recv_from(&mut buf) {
            if from == to {
                return Some(buf[..n].to_vec());
            }
        }
    }
    None
}

fn free_udp_port(th: &TestHost) -> u16 {
    th.host
        .run_in(|| {
            UdpSocket::bind("127.0.0.1:0")
                .and_then(|s| s.local_addr())
                .map(|a| a.port())
        })
        .expect("netns")
        .expect("free port")
}

fn free_tcp_port(th: &TestHost) -> u16 {
    th.host
        .run_in(|| {
            std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|s| s.local_addr())
                .map(|a| a.port())
        })
        .expect("netns")
        .expect("free port")
}

/// `--forward tcp:...`: curl on the host's 127.0.0.1 reaches an HTTP server in the guest.
#[test]
fn tcp_forward_host_to_guest() {
    let env = Env::new("fwd");
    let fwd_port = free_tcp_port(&env.th);
    let u = env.usernet(&["--forward", &format!("tcp:{fwd_port}:8080")]);
    let _guest_http = HttpServer::start(u.guest(), any(8080), None).expect("guest http");
    env.th
        .host
        .wait_for_port(loopback(fwd_port), Duration::from_secs(10))
        .expect("forward listening");
    let url = format!("http://127.0.0.1:{fwd_port}/bytes/1000000?seed=4");
    let out = output_in(&env.th.host, "curl", &["-sS", "--max-time", "30", &url]);
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        u.daemon.logs()
    );
    let (sha, len) = sha256_reader(&out.stdout[..]).expect("hash");
    assert_eq!(len, 1_000_000);
    assert_eq!(sha, PatternReader::new(4, 1_000_000).sha256());
}

const BIG: u64 = 100_000_000;

/// 100 MB from a server on the host's loopback to the guest, and 100 MB from the guest to it,
/// both checked by SHA-256.
#[test]
fn hundred_megabytes_each_way_with_checksum() {
    let env = Env::new("big");
    let http = HttpServer::start(&env.th.host, loopback(0), None).expect("http");
    let port = http.addr().port();
    let u = env.usernet(&[]);
    let server = SocketAddr::from(([192, 168, 5, 2], port));

    let (down_sha, down_len) = u
        .guest()
        .run_in(move || -> std::io::Result<(String, u64)> {
            let mut s = TcpStream::connect_timeout(&server, Duration::from_secs(10))?;
            s.set_read_timeout(Some(Duration::from_secs(30)))?;
            write!(s, "GET /bytes/{BIG}?seed=11 HTTP/1.0\r\n\r\n")?;
            let mut r = BufReader::new(s);
            skip_headers(&mut r)?;
            sha256_reader(r)
        })
        .expect("netns")
        .unwrap_or_else(|e| panic!("download failed: {e}\n{}", u.daemon.logs()));
    assert_eq!(down_len, BIG);
    assert_eq!(down_sha, PatternReader::new(11, BIG).sha256());

    let reply = u
        .guest()
        .run_in(move || -> std::io::Result<String> {
            let mut s = TcpStream::connect_timeout(&server, Duration::from_secs(10))?;
            s.set_read_timeout(Some(Duration::from_secs(30)))?;
            write!(s, "POST /upload HTTP/1.0\r\nContent-Length: {BIG}\r\n\r\n")?;
            std::io::copy(&mut PatternReader::new(12, BIG), &mut s)?;
            s.shutdown(Shutdown::Write)?;
            let mut r = BufReader::new(s);
            skip_headers(&mut r)?;
            let mut body = String::new();
            r.read_to_string(&mut body)?;
            Ok(body.trim().to_string())
        })
        .expect("netns")
        .unwrap_or_else(|e| panic!("upload failed: {e}\n{}", u.daemon.logs()));
    assert_eq!(reply, PatternReader::new(12, BIG).sha256());
}

const CONNECTIONS: usize = 500;
/// Connecting threads (SYNs arrive in parallel bursts, not one after the other).
const CONNECTORS: usize = 10;

/// 500 TCP connections open at once from the guest to an echo server on the host's loopback:
/// opened by 10 threads in parallel, all established before any data flows, then each carries
/// its own message back and forth and ends with a clean end of stream.
#[test]
fn five_hundred_concurrent_connections() {
    raise_nofile();
    let env = Env::new("conc");
    let echo = TcpEchoServer::start(&env.th.host, loopback(0)).expect("echo");
    let server = SocketAddr::from(([192, 168, 5, 2], echo.addr().port()));
    let u = env.usernet(&[]);
    let results: Vec<std::io::Result<usize>> = u
        .guest()
        .run_in(move || {
            // Threads started here inherit this thread's (the guest's) network namespace.
            let barrier = std::sync::Barrier::new(CONNECTORS);
            std::thread::scope(|scope| {
                let handles: Vec<_> = (0..CONNECTORS)
                    .map(|t| {
                        let barrier = &barrier;
                        scope.spawn(move || echo_connections(server, t, barrier))
                    })
                    .collect();
                handles
                    .into_iter()
                    .map(|h| {
                        h.join()
                            .unwrap_or_else(|_| Err(std::io::Error::other("thread panicked")))
                    })
                    .collect()
            })
        })
        .expect("netns");
    let mut total = 0;
    for r in results {
        match r {
            Ok(n) => total += n,
            Err(e) => panic!("connections failed: {e}\n{}", u.daemon.logs()),
        }
    }
    assert_eq!(total, CONNECTIONS);
}

/// One connecting thread: opens its share of the connections, waits until every thread has
/// opened all of its own, then sends one message per connection and reads it back. Returns how
/// many came back intact.
fn echo_connections(
    server: SocketAddr,
    thread: usize,
    all_open: &std::sync::Barrier,
) -> std::io::Result<usize> {
    let per_thread = CONNECTIONS / CONNECTORS;
    let mut conns = Vec::with_capacity(per_thread);
    let mut opened = Ok(());
    for _ in 0..per_thread {
        let conn = TcpStream::connect_timeout(&server, Duration::from_secs(10))
            .and_then(|s| s.set_read_timeout(Some(Duration::from_secs(20))).map(|_| s));
        match conn {
            Ok(s) => conns.push(s),
            Err(e) => {
                opened = Err(e);
                break;
            }
        }
    }
    // Always reach the barrier, so a failing thread cannot hang the others.
    all_open.wait();
    opened?;
    let tag = |i: usize| format!("thread {thread:02} connection {i:03}\n");
    for (i, s) in conns.iter_mut().enumerate() {
        s.write_all(tag(i).as_bytes())?;
    }
    let mut ok = 0;
    for (i, s) in conns.iter_mut().enumerate() {
        let want = tag(i);
        let mut buf = vec![0u8; want.len()];
        s.read_exact(&mut buf)?;
        if buf == want.as_bytes() {
            ok += 1;
        }
    }
    for s in &conns {
        s.shutdown(Shutdown::Write)?;
    }
    // The echo server closes after our end of stream: nothing more arrives.
    for s in conns.iter_mut() {
        let mut rest = Vec::new();
        s.read_to_end(&mut rest)?;
        if !rest.is_empty() {
            return Err(std::io::Error::other("extra data after the echo"));
        }
    }
    Ok(ok)
}

/// Two namespaces on one network get distinct addresses (.15 and .16) and reach each other
/// through limanet's switch (TCP both ways, ping), while still reaching the host's loopback.
#[test]
fn two_namespaces_on_one_network_reach_each_other() {
    let env = Env::new("two");
    let host_echo = TcpEchoServer::start(&env.th.host, loopback(0)).expect("host echo");
    let hport = host_echo.addr().port();
    let u = env.usernet_with(2, &[]);
    let (a, b) = (&u.guests[0], &u.guests[1]);
    let _echo_a = TcpEchoServer::start(a, any(7)).expect("echo in a");
    let _echo_b = TcpEchoServer::start(b, any(7)).expect("echo in b");
    let roundtrip = |to: SocketAddr, msg: &'static [u8]| -> std::io::Result<Vec<u8>> {
        let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(10))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        s.write_all(msg)?;
        s.shutdown(Shutdown::Write)?;
        let mut got = Vec::new();
        s.read_to_end(&mut got)?;
        Ok(got)
    };
    let to_b = a
        .run_in(|| roundtrip(SocketAddr::from(([192, 168, 5, 16], 7)), b"a-to-b"))
        .expect("netns");
    assert_eq!(
        to_b.ok().as_deref(),
        Some(&b"a-to-b"[..]),
        "{}",
        u.daemon.logs()
    );
    let to_a = b
        .run_in(|| roundtrip(SocketAddr::from(([192, 168, 5, 15], 7)), b"b-to-a"))
        .expect("netns");
    assert_eq!(
        to_a.ok().as_deref(),
        Some(&b"b-to-a"[..]),
        "{}",
        u.daemon.logs()
    );
    let host = b
        .run_in(|| roundtrip(SocketAddr::from(([192, 168, 5, 2], hport)), b"b-to-host"))
        .expect("netns");
    assert_eq!(
        host.ok().as_deref(),
        Some(&b"b-to-host"[..]),
        "{}",
        u.daemon.logs()
    );
    let ping = output_in(
        a,
        "busybox",
        &["ping", "-c", "1", "-W", "3", "192.168.5.16"],
    );
    assert!(
        ping.status.success(),
        "{}",
        String::from_utf8_lossy(&ping.stdout)
    );
}

/// CPU time (user + system, all threads) process `pid` has used so far.
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read stat");
    // Fields after the parenthesised command name; utime and stime are the 14th and 15th.
    let rest = &stat[stat.rfind(')').expect("stat format") + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 =
        fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime");
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    Duration::from_millis(ticks * 1000 / hz)
}

/// One-byte request/response round trips over one connection for `duration`; returns how many.
fn ping_pong(guest: &limanet_testkit::Netns, server: SocketAddr, duration: Duration) -> u64 {
    guest
        .run_in(move || -> std::io::Result<u64> {
            let mut s = TcpStream::connect_timeout(&server, Duration::from_secs(10))?;
            s.set_nodelay(true)?;
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            let start = std::time::Instant::now();
            let mut rounds = 0;
            let mut b = [0u8; 1];
            while start.elapsed() < duration {
                s.write_all(b"x")?;
                s.read_exact(&mut b)?;
                rounds += 1;
            }
            Ok(rounds)
        })
        .expect("netns")
        .expect("request/response")
}

/// Busy polling (on by default) is for busy networks only: request/response traffic works with
/// it and without it (`--busy-poll 0`), and once traffic stops, limanet goes back to sleeping
/// instead of polling on.
#[test]
fn busy_polling_stops_when_traffic_stops() {
    let env = Env::new("poll");
    let echo = TcpEchoServer::start(&env.th.host, loopback(0)).expect("echo");
    let server = SocketAddr::from(([192, 168, 5, 2], echo.addr().port()));
    for extra in [&[][..], &["--busy-poll", "0"][..]] {
        let u = env.usernet(extra);
        let rounds = ping_pong(u.guest(), server, Duration::from_secs(1));
        assert!(rounds > 100, "{extra:?}: only {rounds} round trips");
        let before = cpu_time(u.daemon.id());
        std::thread::sleep(Duration::from_secs(2));
        let idle = cpu_time(u.daemon.id()) - before;
        assert!(
            idle < Duration::from_millis(200),
            "{extra:?}: {idle:?} of CPU time in 2 s without traffic\n{}",
            u.daemon.logs()
        );
    }
}
