//! IPv6 on Lima's default user-mode network, end to end with a network-namespace guest whose
//! kernel configures itself by SLAAC from the gateway's Router Advertisements, and real clients
//! (curl, ping, dig, Rust sockets). Everything stays inside the test's own namespaces (see
//! usernet_support): the "internet" is TestHost's 2001:db8:203::2.

mod usernet_support;

use std::io::{Read, Write};
use std::net::{Ipv6Addr, SocketAddr};
use std::process::Output;
use std::time::{Duration, Instant};

use limanet_testkit::servers::{HttpServer, TcpEchoServer, UdpEchoServer};
use limanet_testkit::{Netns, TestHost};
use usernet_support::*;

const PREFIX: &str = "fd00:192:168:5:";
const GATEWAY6: &str = "fd00:192:168:5::2";
const DNS6: &str = "fd00:192:168:5::3";
/// The gateway's link-local address: EUI-64 of its MAC 52:55:c0:a8:05:02.
const GATEWAY_LL: &str = "fe80::5055:c0ff:fea8:502";

fn text(o: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Waits until the guest's tap0 has a global address from the network's prefix (SLAAC, or
/// `::15` configured by limanet) and a default route from the RA; returns the address.
fn wait_for_slaac(guest: &Netns, daemon_logs: impl Fn() -> String) -> Ipv6Addr {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let addr = guest.global_ipv6("tap0");
        // A configured guest has its address before the RA: wait for the route too.
        let route = output_in(guest, "ip", &["-6", "route", "show", "default"]);
        let routed = String::from_utf8_lossy(&route.stdout).contains("via");
        if let (Some(a), true) = (addr, routed) {
            return a;
        }
        if Instant::now() > deadline {
            let routes = output_in(guest, "ip", &["-6", "route"]);
            panic!(
                "no SLAAC address on tap0 ({addr:?})\nroutes: {}\nlimanet:\n{}",
                text(&routes),
                daemon_logs()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The guest kernel gets an address in fd00:192:168:5::/64 and a default route via the
/// gateway's link-local address from the RA; `[gateway6]:port` reaches a server bound to the
/// host's [::1] only; TCP, UDP and ping reach the fake internet's IPv6 address; the DNS answers
/// AAAA for host.lima.internal over IPv6 transport, at its IPv6 address.
#[test]
fn slaac_host_loopback_internet_and_dns_over_ipv6() {
    let env = Env::new("ipv6");
    let host_http =
        HttpServer::start(&env.th.host, "[::1]:0".parse().expect("addr"), None).expect("http");
    let inet_echo =
        TcpEchoServer::start(&env.th.internet, "[::]:0".parse().expect("addr")).expect("tcp echo");
    let inet_udp =
        UdpEchoServer::start(&env.th.internet, "[::]:0".parse().expect("addr")).expect("udp echo");
    let u = env.usernet(&[]);
    let guest = u.guest();
    guest
        .sysctl("net.ipv6.conf.tap0.accept_ra", "2")
        .expect("accept_ra");
    let addr = wait_for_slaac(guest, || u.daemon.logs());
    // The configured guest has the predictable first address, mirroring its 192.168.5.15.
    assert_eq!(
        addr.to_string(),
        format!("{PREFIX}:15"),
        "{}",
        u.daemon.logs()
    );

    let route = output_in(guest, "ip", &["-6", "route", "show", "default"]);
    let route_text = String::from_utf8_lossy(&route.stdout).to_string();
    assert!(
        route_text.contains(&format!("via {GATEWAY_LL}")),
        "{}",
        text(&route)
    );
    // The MTU option of the RA reached the kernel.
    let mtu = output_in(guest, "cat", &["/proc/sys/net/ipv6/conf/tap0/mtu"]);
    assert_eq!(String::from_utf8_lossy(&mtu.stdout).trim(), "1500");

    // [gateway6]:port → the host's [::1]:port.
    let port = host_http.addr().port();
    let url = format!("http://[{GATEWAY6}]:{port}/bytes/100000?seed=4");
    let curl = output_in(
        guest,
        "sh",
        &[
            "-c",
            &format!("curl -g -sS --max-time 20 '{url}' | sha256sum | cut -d' ' -f1"),
        ],
    );
    assert_eq!(
        String::from_utf8_lossy(&curl.stdout).trim(),
        limanet_testkit::checksum::PatternReader::new(4, 100_000).sha256(),
        "{}\nlimanet:\n{}",
        text(&curl),
        u.daemon.logs()
    );

    // TCP and UDP to the fake internet over IPv6, from the guest's own sockets.
    let inet = TestHost::INTERNET_ADDR6;
    let tcp_port = inet_echo.addr().port();
    let udp_port = inet_udp.addr().port();
    let (tcp_reply, udp_reply) = guest
        .run_in(move || -> std::io::Result<_> {
            let mut s = std::net::TcpStream::connect_timeout(
                &SocketAddr::from((inet, tcp_port)),
                Duration::from_secs(10),
            )?;
            s.set_read_timeout(Some(Duration::from_secs(10)))?;
            s.write_all(b"hello over ipv6")?;
            s.shutdown(std::net::Shutdown::Write)?;
            let mut got = String::new();
            s.read_to_string(&mut got)?;
            let u = std::net::UdpSocket::bind("[::]:0")?;
            u.set_read_timeout(Some(Duration::from_secs(5)))?;
            u.send_to(b"udp6", SocketAddr::from((inet, udp_port)))?;
            let mut buf = [0u8; 64];
            let (n, from) = u.recv_from(&mut buf)?;
            Ok((got, (buf[..n].to_vec(), from)))
        })
        .expect("enter guest netns")
        .expect("guest sockets");
    assert_eq!(tcp_reply, "hello over ipv6");
    assert_eq!(udp_reply.0, b"udp6");
    assert_eq!(udp_reply.1, SocketAddr::from((inet, udp_port)));

    // ICMPv6 echo to the internet (through a host ICMPv6 socket) and to the gateway itself.
    for target in [inet.to_string(), GATEWAY6.to_string()] {
        let ping = output_in(guest, "ping", &["-6", "-c", "1", "-W", "5", &target]);
        assert!(ping.status.success(), "ping {target}: {}", text(&ping));
    }

    // AAAA for host.lima.internal, asked over IPv6 (UDP and TCP) at the DNS's IPv6 address.
    for transport in ["+notcp", "+tcp"] {
        let dig = output_in(
            guest,
            "dig",
            &[
                transport,
                "+short",
                "+time=5",
                "+tries=1",
                &format!("@{DNS6}"),
                "host.lima.internal",
                "AAAA",
            ],
        );
        assert_eq!(
            String::from_utf8_lossy(&dig.stdout).trim(),
            GATEWAY6,
            "dig {transport}: {}",
            text(&dig)
        );
    }
    let dig_a = output_in(
        guest,
        "dig",
        &[
            "+short",
            "+time=5",
            "+tries=1",
            &format!("@{DNS6}"),
            "host.lima.internal",
            "A",
        ],
    );
    assert_eq!(String::from_utf8_lossy(&dig_a.stdout).trim(), "192.168.5.2");
}

/// `--no-host-loopback` is honoured for IPv6: `[gateway6]:port` is refused at once (RST), not
/// left hanging. And a destination the host has no IPv6 route to fails fast: TCP with a RST,
/// UDP with an ICMPv6 unreachable.
#[test]
fn no_host_loopback_and_unroutable_fail_fast() {
    let env = Env::new("ipv6nl");
    let host_http =
        HttpServer::start(&env.th.host, "[::1]:0".parse().expect("addr"), None).expect("http");
    let u = env.usernet(&["--no-host-loopback"]);
    let guest = u.guest();
    guest
        .sysctl("net.ipv6.conf.tap0.accept_ra", "2")
        .expect("accept_ra");
    wait_for_slaac(guest, || u.daemon.logs());
    // The host netns has no route to 2001:db8:ffff::/48 beyond its default... so take one
    // away: delete the host's IPv6 default route, leaving only the link's /64.
    env.th
        .host
        .run("ip", &["-6", "route", "del", "default"])
        .expect("del route");
    let port = host_http.addr().port();
    for target in [
        format!("[{GATEWAY6}]:{port}"),
        "[2001:db8:ffff::1]:80".to_string(),
    ] {
        let start = Instant::now();
        let curl = output_in(
            guest,
            "curl",
            &[
                "-g",
                "-sS",
                "--max-time",
                "20",
                &format!("http://{target}/"),
            ],
        );
        assert!(!curl.status.success(), "{target}: {}", text(&curl));
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "{target} took {:?}: {}",
            start.elapsed(),
            text(&curl)
        );
    } // UDP to the unroutable address: the guest's socket gets the ICMPv6 unreachable (no route,
      // a soft error: delivered to sockets that ask for errors with IPV6_RECVERR), instead of
      // waiting for a reply that cannot come.
    let result = guest
        .run_in(|| -> std::io::Result<Duration> {
            use std::os::fd::AsRawFd;
            let u = std::net::UdpSocket::bind("[::]:0")?;
            let on: libc::c_int = 1;
            // SAFETY: a valid socket and a c_int option value that outlives the call.
            let rc = unsafe {
                libc::setsockopt(
                    u.as_raw_fd(),
                    libc::IPPROTO_IPV6,
                    libc::IPV6_RECVERR,
                    &on as *const libc::c_int as *const libc::c_void,
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                )
            };
            if rc != 0 {
                return Err(std::io::Error::last_os_error());
            }
            u.connect("[2001:db8:ffff::1]:53")?;
            u.set_read_timeout(Some(Duration::from_secs(10)))?;
            let start = Instant::now();
            u.send(b"anyone?")?;
            let mut buf = [0u8; 16];
            match u.recv(&mut buf) {
                Ok(_) => Err(std::io::Error::other("a reply from nowhere")),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Err(e),
                Err(_) => Ok(start.elapsed()),
            }
        })
        .expect("enter guest netns");
    let took = result.unwrap_or_else(|e| panic!("UDP: {e}\nlimanet:\n{}", u.daemon.logs()));
    assert!(took < Duration::from_secs(3), "UDP error took {took:?}");
}

/// `--no-ipv6`: no Router Advertisement, so the guest gets no global IPv6 address; and an MTU
/// below 1280 with IPv6 on is refused with a clear error.
#[test]
fn no_ipv6_and_mtu_rule() {
    let env = Env::new("ipv6off");
    let mut cmd = env.limanet("usernet");
    cmd.args(["--mtu", "1200", "--listen-qemu"])
        .arg(env.dir.join("mtu.sock"));
    let out = cmd.output().expect("run limanet");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("IPv6") && err.contains("1280"), "{err}");

    let u = env.usernet(&["--no-ipv6"]);
    let guest = u.guest();
    guest
        .sysctl("net.ipv6.conf.tap0.accept_ra", "2")
        .expect("accept_ra");
    output_in(guest, "ip", &["link", "set", "tap0", "down"]);
    output_in(guest, "ip", &["link", "set", "tap0", "up"]);
    std::thread::sleep(Duration::from_secs(4));
    let o = output_in(
        guest,
        "ip",
        &["-6", "-o", "addr", "show", "dev", "tap0", "scope", "global"],
    );
    assert!(o.stdout.is_empty(), "{}", text(&o));
}

/// Receiver throughput of one `iperf3 -J` run, in Gbit/s.
fn iperf3_gbits(json: &str) -> Option<f64> {
    let at = json.find("\"sum_received\"")?;
    let rest = &json[at..];
    let at = rest.find("\"bits_per_second\":")? + "\"bits_per_second\":".len();
    let num: String = rest[at..]
        .chars()
        .skip_while(|c| c.is_whitespace())
        .take_while(|c| c.is_ascii_digit() || *c == '.' || *c == 'e' || *c == '+')
        .collect();
    num.parse::<f64>().ok().map(|b| b / 1e9)
}

/// IPv6 against IPv4 through the same network, single-stream iperf3 from the guest to the
/// host's loopback through the gateway (192.168.5.2 and [gateway6]), both directions, 3 s
/// each. A measurement, not a pass/fail check: run by hand with
/// `cargo test -p limanet --test usernet_ipv6 -- --ignored --nocapture`.
#[test]
#[ignore = "measurement; run by hand"]
fn iperf3_ipv4_vs_ipv6() {
    let env = Env::new("ipv6perf");
    let _server = env
        .th
        .host
        .spawn("iperf3", "iperf3", &["-s", "-p", "5201"])
        .expect("iperf3 server");
    let u = env.usernet(&[]);
    let guest = u.guest();
    guest
        .sysctl("net.ipv6.conf.tap0.accept_ra", "2")
        .expect("accept_ra");
    wait_for_slaac(guest, || u.daemon.logs());
    std::thread::sleep(Duration::from_millis(500));
    for (family, target) in [("IPv4", "192.168.5.2"), ("IPv6", GATEWAY6)] {
        for (direction, reverse) in [("guest→host", false), ("host→guest", true)] {
            let mut args = vec!["-c", target, "-p", "5201", "-t", "3", "-J"];
            if reverse {
                args.push("-R");
            }
            let o = output_in(guest, "iperf3", &args);
            let gbits = iperf3_gbits(&String::from_utf8_lossy(&o.stdout));
            println!("{family} {direction}: {gbits:.2?} Gbit/s");
            assert!(gbits.is_some(), "{}", text(&o));
        }
    }
}

/// Two guests on one user-v2 network: both configure themselves by SLAAC in the network's
/// prefix, reach each other over IPv6 (ping and TCP, switched guest to guest after neighbor
/// discovery between them), and ask the DNS at the gateway's IPv6 address (user-v2's DNS is
/// the gateway).
#[test]
fn user_v2_guests_reach_each_other_over_ipv6() {
    let env = Env::new("ipv6v2");
    let u = env.usernet_with(
        2,
        &[
            "--mode",
            "user-v2",
            "--subnet",
            "192.168.104.0/24",
            "--no-configure",
        ],
    );
    let mut addrs = Vec::new();
    // IPv6 only: the taps come up without IPv4 addresses.
    for g in &u.guests {
        g.sysctl("net.ipv6.conf.tap0.accept_ra", "2")
            .expect("accept_ra");
        g.run("ip", &["link", "set", "tap0", "up"])
            .expect("tap0 up");
    }
    for g in &u.guests {
        let a = wait_for_slaac(g, || u.daemon.logs());
        assert!(a.to_string().starts_with("fd00:192:168:104:"), "{a}");
        addrs.push(a);
    }
    assert_ne!(addrs[0], addrs[1]);
    let ping = output_in(
        &u.guests[0],
        "ping",
        &["-6", "-c", "1", "-W", "5", &addrs[1].to_string()],
    );
    assert!(
        ping.status.success(),
        "{}\n{}",
        text(&ping),
        u.daemon.logs()
    );
    let echo = TcpEchoServer::start(&u.guests[1], "[::]:0".parse().expect("addr")).expect("echo");
    let to = SocketAddr::from((addrs[1], echo.addr().port()));
    let got = u.guests[0]
        .run_in(move || -> std::io::Result<String> {
            let mut s = std::net::TcpStream::connect_timeout(&to, Duration::from_secs(10))?;
            s.set_read_timeout(Some(Duration::from_secs(10)))?;
            s.write_all(b"guest to guest")?;
            s.shutdown(std::net::Shutdown::Write)?;
            let mut got = String::new();
            s.read_to_string(&mut got)?;
            Ok(got)
        })
        .expect("enter guest netns")
        .expect("tcp between guests");
    assert_eq!(got, "guest to guest");
    let dig = output_in(
        &u.guests[1],
        "dig",
        &[
            "+short",
            "+time=5",
            "+tries=1",
            "@fd00:192:168:104::2",
            "host.lima.internal",
            "AAAA",
        ],
    );
    assert_eq!(
        String::from_utf8_lossy(&dig.stdout).trim(),
        "fd00:192:168:104::2",
        "{}",
        text(&dig)
    );
}

/// A busybox guest under QEMU (`-netdev stream`): its kernel configures itself by SLAAC from
/// the RA, fetches from a server bound to the host's [::1] only through `[gateway6]`, pings the
/// fake internet's IPv6 address and gets host.lima.internal's AAAA from the DNS over IPv6.
#[test]
fn qemu_guest_slaac_fetch_ping_and_aaaa() {
    use limanet_testkit::{QemuGuest, QemuOptions};
    let env = Env::new("ipv6qemu");
    let http =
        HttpServer::start(&env.th.host, "[::1]:0".parse().expect("addr"), None).expect("http");
    let port = http.addr().port();
    let sock = env.dir.join("qemu.sock");
    let sock_s = sock.to_string_lossy().into_owned();
    let daemon = env.usernet_daemon(|cmd| {
        cmd.args(["--listen-qemu", &sock_s]);
    });
    let inet = TestHost::INTERNET_ADDR6;
    let script = format!(
        "i=0\n\
         while [ $i -lt 100 ]; do\n\
           a=$(ip -6 addr show dev eth0 scope global | grep -v tentative | grep inet6)\n\
           [ -n \"$a\" ] && break\n\
           sleep 0.1; i=$((i+1))\n\
         done\n\
         echo LIMANET-ADDR6=$(ip -6 addr show dev eth0 scope global | awk '/inet6/{{print $2}}')\n\
         echo LIMANET-ROUTE6=$(ip -6 route show default | head -n1)\n\
         wget -q -O /tmp/d6 'http://[{GATEWAY6}]:{port}/bytes/200000?seed=31' || exit 20\n\
         echo LIMANET-SHA6=$(sha256sum /tmp/d6 | cut -d' ' -f1)\n\
         ping -6 -c 1 -W 5 {inet} || exit 21\n\
         nslookup -type=AAAA host.lima.internal {DNS6} > /tmp/ns 2>&1; cat /tmp/ns\n\
         grep -q '{GATEWAY6}' /tmp/ns || exit 22\n"
    );
    let out = QemuGuest::spawn(
        &QemuOptions {
            script,
            timeout: Duration::from_secs(90),
            netns: Some(env.th.host.name().to_string()),
            ..Default::default()
        }
        .with_nic(
            &format!("stream,server=off,addr.type=unix,addr.path={sock_s}"),
            None,
        ),
    )
    .expect("run guest");
    if let Err(e) = out.check() {
        panic!("guest failed: {e}\n{}\n{}", out.console, daemon.logs());
    }
    let value = |key: &str| {
        out.console
            .lines()
            .find_map(|l| l.trim().strip_prefix(key))
            .map(|v| v.trim().to_string())
    };
    let addr = value("LIMANET-ADDR6=").unwrap_or_default();
    assert!(
        addr.starts_with(PREFIX) && addr.ends_with("/64"),
        "{}",
        out.console
    );
    assert!(
        value("LIMANET-ROUTE6=")
            .unwrap_or_default()
            .contains(GATEWAY_LL),
        "{}",
        out.console
    );
    assert_eq!(
        value("LIMANET-SHA6="),
        Some(limanet_testkit::checksum::PatternReader::new(31, 200_000).sha256()),
        "{}",
        out.console
    );
}

/// A free port on the host netns's [::1] (bound and released: the daemon takes it next).
fn free_port6(th: &TestHost) -> u16 {
    th.host
        .run_in(|| {
            std::net::TcpListener::bind("[::1]:0")
                .and_then(|l| l.local_addr())
                .map(|a| a.port())
        })
        .expect("enter host netns")
        .expect("free port")
}

/// `--forward tcp:[::1]:P:8080` (and udp): the host side is IPv6 and no guest address is
/// given, so it reaches the first guest over IPv6, here a TCP and a UDP echo server bound to
/// the guest's SLAAC address only.
#[test]
fn ipv6_port_forwards_reach_the_guest_over_ipv6() {
    let env = Env::new("ipv6fwd");
    let port = free_port6(&env.th);
    let tcp_fwd = format!("tcp:[::1]:{port}:8080");
    let udp_fwd = format!("udp:[::1]:{port}:8081");
    let u = env.usernet(&["--forward", &tcp_fwd, "--forward", &udp_fwd]);
    let guest = u.guest();
    guest
        .sysctl("net.ipv6.conf.tap0.accept_ra", "2")
        .expect("accept_ra");
    let addr = wait_for_slaac(guest, || u.daemon.logs());
    let _echo = TcpEchoServer::start(guest, SocketAddr::from((addr, 8080))).expect("tcp echo");
    let _uecho = UdpEchoServer::start(guest, SocketAddr::from((addr, 8081))).expect("udp echo");
    // The guest is known on the network once it has sent something.
    output_in(guest, "ping", &["-c", "1", "-W", "2", "192.168.5.2"]);
    let to = SocketAddr::from((Ipv6Addr::LOCALHOST, port));
    let (tcp, udp) = env
        .th
        .host
        .run_in(move || -> std::io::Result<(String, Vec<u8>)> {
            let mut s = std::net::TcpStream::connect_timeout(&to, Duration::from_secs(10))?;
            s.set_read_timeout(Some(Duration::from_secs(10)))?;
            s.write_all(b"forwarded over ipv6")?;
            s.shutdown(std::net::Shutdown::Write)?;
            let mut got = String::new();
            s.read_to_string(&mut got)?;
            let u = std::net::UdpSocket::bind("[::1]:0")?;
            u.set_read_timeout(Some(Duration::from_secs(5)))?;
            u.send_to(b"dgram6", to)?;
            let mut buf = [0u8; 32];
            let (n, _) = u.recv_from(&mut buf)?;
            Ok((got, buf[..n].to_vec()))
        })
        .expect("enter host netns")
        .unwrap_or_else(|e| panic!("forward: {e}\n{}", u.daemon.logs()));
    assert_eq!(tcp, "forwarded over ipv6");
    assert_eq!(udp, b"dgram6");
}

/// `limanet run`: the command's namespace gets the predictable first guest address
/// `<prefix>::15` (mirroring IPv4's .15, configured by limanet, no SLAAC address besides it) and
/// its default route from the RA, and reaches the host's [::1] through [gateway6].
#[test]
fn run_command_gets_ipv6_15_and_default_route_from_ra() {
    let env = Env::new("ipv6run");
    let http =
        HttpServer::start(&env.th.host, "[::1]:0".parse().expect("addr"), None).expect("http");
    let port = http.addr().port();
    let script = format!(
        "i=0\n\
         while [ $i -lt 100 ]; do\n\
           ip -6 addr show dev tap0 scope global | grep inet6 | grep -qv tentative && ip -6 route show default | grep -q via && break\n\
           sleep 0.1; i=$((i+1))\n\
         done\n\
         echo ADDR6=$(ip -6 -o addr show dev tap0 scope global | awk '{{print $4}}' | tr '\\n' ' ')\n\
         echo ROUTE6=$(ip -6 route show default)\n\
         echo SHA=$(curl -g -sS --max-time 10 'http://[{GATEWAY6}]:{port}/bytes/5000?seed=8' | sha256sum | cut -d' ' -f1)\n"
    );
    let out = env.run_sh(&[], &script, Duration::from_secs(30));
    assert_eq!(out.code, Some(0), "{}", out.all());
    assert_eq!(
        out.value("ADDR6").as_deref(),
        Some("fd00:192:168:5::15/64"),
        "{}",
        out.all()
    );
    assert!(
        out.value("ROUTE6")
            .unwrap_or_default()
            .contains(&format!("via {GATEWAY_LL}")),
        "{}",
        out.all()
    );
    assert_eq!(
        out.value("SHA"),
        Some(limanet_testkit::checksum::PatternReader::new(8, 5000).sha256()),
        "{}",
        out.all()
    );
}

/// A real DHCPv6 client: ISC `dhclient -6 -S` (stateless, an Information-Request, which is
/// what the RA's O flag asks for) gets the DNS server's IPv6 address; and glibc's resolver,
/// pointed at that server over IPv6, gets host.lima.internal's AAAA.
#[test]
fn dhclient_stateless_gets_dns_and_glibc_resolves_aaaa() {
    if std::process::Command::new("dhclient")
        .arg("--version")
        .output()
        .is_err()
    {
        panic!("dhclient missing: install isc-dhcp-client (scripts/install-deps)");
    }
    let env = Env::new("ipv6dhc");
    let u = env.usernet(&["--no-configure"]);
    let guest = u.guest();
    guest
        .sysctl("net.ipv6.conf.tap0.accept_ra", "2")
        .expect("accept_ra");
    guest
        .run("ip", &["link", "set", "tap0", "up"])
        .expect("tap0 up");
    wait_for_slaac(guest, || u.daemon.logs());

    // The script dhclient runs gets the options in its environment: record them.
    let env_out = env.dir.join("dhclient6.env");
    let script = env.dir.join("dhclient6.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nenv | grep -E '^(reason|new_dhcp6_)' >> {}\n",
            env_out.display()
        ),
    )
    .expect("write script");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let leases = env.dir.join("dhclient6.leases");
    let pid = env.dir.join("dhclient6.pid");
    let mut cmd = guest.command("dhclient");
    cmd.args(["-6", "-S", "-d", "-v", "-sf"])
        .arg(&script)
        .arg("-lf")
        .arg(&leases)
        .arg("-pf")
        .arg(&pid)
        .arg("tap0");
    let dhclient = limanet_testkit::ChildGuard::spawn("dhclient", &mut cmd).expect("dhclient");
    let deadline = Instant::now() + Duration::from_secs(20);
    let recorded = loop {
        let text = std::fs::read_to_string(&env_out).unwrap_or_default();
        // ISC dhclient 4.4 reports a stateless Reply as RENEW6 (INFORM6 in some versions).
        if text.contains("new_dhcp6_name_servers") {
            break text;
        }
        assert!(
            Instant::now() < deadline,
            "no DNS servers from dhclient: {text}\n{}\n{}",
            dhclient.logs(),
            u.daemon.logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    drop(dhclient);
    let servers = recorded
        .lines()
        .find_map(|l| l.strip_prefix("new_dhcp6_name_servers="))
        .unwrap_or_default();
    assert_eq!(servers.trim(), DNS6, "{recorded}");
    assert!(
        recorded.contains("reason=RENEW6") || recorded.contains("reason=INFORM6"),
        "{recorded}"
    );

    // glibc's resolver with a resolv.conf naming the DNS's IPv6 address only.
    guest
        .set_etc("resolv.conf", &format!("nameserver {DNS6}\n"))
        .expect("resolv.conf");
    let getent = output_in(guest, "getent", &["ahostsv6", "host.lima.internal"]);
    let first = String::from_utf8_lossy(&getent.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string();
    assert_eq!(first, GATEWAY6, "{}\n{}", text(&getent), u.daemon.logs());
}

/// `--pcap` captures IPv6 frames both ways: the guest's ICMPv6 echo request to the gateway and
/// the gateway's reply, next to Neighbor Discovery.
#[test]
fn pcap_captures_ipv6_frames() {
    let env = Env::new("ipv6pcap");
    let pcap = env.dir.join("ipv6.pcap");
    let pcap_arg = pcap.to_string_lossy().to_string();
    let mut u = env.usernet(&["--pcap", &pcap_arg]);
    let guest = u.guest();
    guest
        .sysctl("net.ipv6.conf.tap0.accept_ra", "2")
        .expect("accept_ra");
    wait_for_slaac(guest, || u.daemon.logs());
    let ping = output_in(guest, "ping", &["-6", "-c", "2", "-W", "5", GATEWAY6]);
    assert!(ping.status.success(), "{}", text(&ping));
    u.daemon.terminate();
    let capture = std::fs::read(&pcap).expect("read pcap");
    assert_eq!(&capture[..4], &0xa1b2_c3d4u32.to_le_bytes(), "pcap magic");
    // ICMPv6 types seen in IPv6 frames (no extension headers in these).
    let mut icmp6_types = std::collections::BTreeSet::new();
    let mut at = 24;
    while at + 16 <= capture.len() {
        let caplen = u32::from_le_bytes(capture[at + 8..at + 12].try_into().expect("4")) as usize;
        let frame = &capture[at + 16..(at + 16 + caplen).min(capture.len())];
        at += 16 + caplen;
        if frame.len() > 14 + 40 && frame[12..14] == [0x86, 0xdd] && frame[14 + 6] == 58 {
            icmp6_types.insert(frame[14 + 40]);
        }
    }
    // 128/129 echo request/reply, 135/136 neighbor solicitation/advertisement, 134 RA.
    for t in [128u8, 129, 134] {
        assert!(
            icmp6_types.contains(&t),
            "ICMPv6 type {t} missing: {icmp6_types:?}"
        );
    }
}
