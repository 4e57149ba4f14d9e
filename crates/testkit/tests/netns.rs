//! Real network namespaces, veth pairs and servers (needs root).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::process::Command;
use std::time::Duration;

use limanet_testkit::checksum::{sha256_hex, PatternReader};
use limanet_testkit::servers::{HttpServer, TcpEchoServer, UdpEchoServer};
use limanet_testkit::{unique_name, wait_for, ChildGuard, Error, Netns, TestHost};

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

#[test]
fn unique_names_fit_interface_names_and_differ() {
    let a = unique_name("averyveryverylongprefix");
    let b = unique_name("averyveryverylongprefix");
    assert!(a.len() <= 15, "{a}");
    assert_ne!(a, b);
    assert!(unique_name("x").starts_with('x'));
}

#[test]
fn netns_is_isolated_and_deleted_on_drop() {
    let ns = Netns::new("ltk").unwrap();
    let path = ns.path();
    assert!(path.exists());
    // A listener created in run_in lives in the namespace: the namespace's lo reaches it, the
    // test process's own namespace does not.
    let listener = ns
        .run_in(|| TcpListener::bind("127.0.0.1:0").unwrap())
        .unwrap();
    let port = listener.local_addr().unwrap().port();
    let inside = ns
        .run_in(|| TcpStream::connect(("127.0.0.1", port)).is_ok())
        .unwrap();
    assert!(inside, "connect inside the namespace failed");
    drop(listener);
    let links = ns.run("ip", &["-o", "link", "show"]).unwrap();
    assert_eq!(links.lines().count(), 1, "only lo expected: {links}");
    assert!(links.contains("lo:") && links.contains("UP"), "{links}");
    drop(ns);
    assert!(!path.exists(), "{} still exists", path.display());
}

#[test]
fn dropping_a_netns_kills_processes_inside() {
    let ns = Netns::new("ltk").unwrap();
    let mut child = ns.command("sleep").arg("1000").spawn().unwrap();
    wait_for("sleep to enter the netns", Duration::from_secs(5), || {
        ns.pids().map(|p| !p.is_empty()).unwrap_or(false)
    })
    .unwrap();
    drop(ns);
    let st = child.wait().unwrap();
    assert!(!st.success(), "sleep should have been killed: {st}");
}

#[test]
fn child_guard_captures_output_and_kills_the_process_group() {
    let mut g = ChildGuard::spawn(
        "sh",
        Command::new("sh").args(["-c", "echo to-out; echo to-err >&2; sleep 1000 & wait"]),
    )
    .unwrap();
    wait_for("output", Duration::from_secs(5), || {
        g.stdout().contains("to-out") && g.stderr().contains("to-err")
    })
    .unwrap();
    assert!(g.logs().contains("to-out") && g.logs().contains("to-err"));
    assert!(g.try_wait().unwrap().is_none());
    let pgid = g.id() as i32;
    let status = g.terminate();
    assert!(status.is_some_and(|s| !s.success()));
    // The backgrounded sleep was in the same group and is gone too.
    wait_for("process group to be empty", Duration::from_secs(5), || {
        // SAFETY: signal 0 only checks existence.
        unsafe { libc::kill(-pgid, 0) != 0 }
    })
    .unwrap();
}

#[test]
fn wait_for_times_out_with_a_clear_message() {
    let err = wait_for("the impossible", Duration::from_millis(50), || false).unwrap_err();
    assert!(matches!(err, Error::Timeout { .. }));
    assert!(err.to_string().contains("the impossible"), "{err}");
}

#[test]
fn test_host_reaches_the_fake_internet_and_servers_work() {
    let th = TestHost::new().unwrap();
    th.host
        .wait_for_addr("203.0.113.1".parse().unwrap(), Duration::from_secs(1))
        .unwrap();
    th.internet
        .wait_for_addr("2001:db8:203::2".parse().unwrap(), Duration::from_secs(1))
        .unwrap();
    assert!(th
        .host
        .wait_for_addr("203.0.113.2".parse().unwrap(), Duration::from_millis(100))
        .is_err());
    let echo = TcpEchoServer::start(&th.internet, addr("0.0.0.0:7")).unwrap();
    let echo6 = TcpEchoServer::start(&th.internet, addr("[::]:8")).unwrap();
    // Wildcard: the reply to 203.0.113.3 must come from 203.0.113.3, not the primary address.
    let udp = UdpEchoServer::start(&th.internet, addr("0.0.0.0:7")).unwrap();
    let udp6 = UdpEchoServer::start(&th.internet, addr("[::]:9")).unwrap();
    assert_eq!(echo.addr().port(), 7);
    assert_eq!(udp.addr().port(), 7);
    assert_eq!(echo6.addr().port(), 8);
    assert_eq!(udp6.addr().port(), 9);

    let (r1, r2, r6, ru) = th
        .host
        .run_in(|| {
            let tcp = |a: &str| {
                let mut s = TcpStream::connect(a).unwrap();
                s.write_all(b"hello").unwrap();
                s.shutdown(std::net::Shutdown::Write).unwrap();
                let mut v = Vec::new();
                s.read_to_end(&mut v).unwrap();
                v
            };
            let u = UdpSocket::bind("0.0.0.0:0").unwrap();
            u.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            u.send_to(b"dgram", "203.0.113.3:7").unwrap();
            let mut buf = [0u8; 64];
            let (n, from) = u.recv_from(&mut buf).unwrap();
            assert_eq!(from, addr("203.0.113.3:7"));
            let first = buf[..n].to_vec();
            // The v6 wildcard socket serves IPv4 (mapped) and IPv6, each from the right address.
            u.send_to(b"mapped", "203.0.113.3:9").unwrap();
            let (m, from) = u.recv_from(&mut buf).unwrap();
            assert_eq!((&buf[..m], from), (&b"mapped"[..], addr("203.0.113.3:9")));
            let u6 = UdpSocket::bind("[::]:0").unwrap();
            u6.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            u6.send_to(b"six", "[2001:db8:203::2]:9").unwrap();
            let mut b6 = [0u8; 16];
            let (m, from) = u6.recv_from(&mut b6).unwrap();
            assert_eq!((&b6[..m], from), (&b"six"[..], addr("[2001:db8:203::2]:9")));
            (
                tcp("203.0.113.2:7"),
                tcp("203.0.113.3:7"),
                tcp("[2001:db8:203::2]:8"),
                first,
            )
        })
        .unwrap();
    assert_eq!(r1, b"hello");
    assert_eq!(r2, b"hello");
    assert_eq!(r6, b"hello");
    assert_eq!(ru, b"dgram");

    // The host netns allows unprivileged ICMP sockets.
    let range = th
        .host
        .run("sysctl", &["-n", "net.ipv4.ping_group_range"])
        .unwrap();
    assert_eq!(
        range.split_whitespace().collect::<Vec<_>>(),
        ["0", "2147483647"]
    );
    // And the internet is reachable by ping from the host side.
    th.host
        .run("busybox", &["ping", "-c", "1", "-W", "5", "203.0.113.2"])
        .unwrap();
}

#[test]
fn http_server_streams_patterns_files_and_hashes_uploads() {
    let th = TestHost::new().unwrap();
    let dir = std::env::temp_dir().join(unique_name("ltkhttp"));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("hello.txt"), b"hello file\n").unwrap();
    let http = HttpServer::start(&th.internet, addr("203.0.113.2:80"), Some(dir.clone())).unwrap();
    assert_eq!(http.addr(), addr("203.0.113.2:80"));

    // 100 MB, the size of the project's large-transfer tests.
    let len = 100 * 1024 * 1024;
    let t = std::time::Instant::now();
    let got = th
        .host
        .run(
            "sh",
            &[
                "-c",
                "curl -sf http://203.0.113.2/bytes/104857600?seed=5 | sha256sum",
            ],
        )
        .unwrap();
    println!("100 MB over HTTP + sha256sum: {:?}", t.elapsed());
    assert_eq!(
        got.split_whitespace().next(),
        Some(PatternReader::new(5, len).sha256().as_str())
    );

    let file = th
        .host
        .run("curl", &["-sf", "http://203.0.113.2/hello.txt"])
        .unwrap();
    assert_eq!(file, "hello file\n");
    let missing = th
        .host
        .run("curl", &["-sf", "http://203.0.113.2/../etc/passwd"]);
    assert!(missing.is_err());

    let up = th
        .host
        .run(
            "curl",
            &[
                "-sf",
                "--data-binary",
                "upload-body",
                "http://203.0.113.2/up",
            ],
        )
        .unwrap();
    assert_eq!(up.trim(), sha256_hex(b"upload-body"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn etc_files_are_private_to_the_namespace() {
    let ns = Netns::new("ltk").unwrap();
    ns.set_etc("hosts", "203.0.113.9 fake.example\n").unwrap();
    ns.set_etc("resolv.conf", "nameserver 127.0.0.53\n")
        .unwrap();
    let got = ns.run("getent", &["hosts", "fake.example"]).unwrap();
    assert!(got.starts_with("203.0.113.9"), "{got}");
    let resolv = ns.run("cat", &["/etc/resolv.conf"]).unwrap();
    assert_eq!(resolv, "nameserver 127.0.0.53\n");
    let etc = std::path::PathBuf::from("/etc/netns").join(ns.name());
    assert!(etc.exists());
    drop(ns);
    assert!(!etc.exists());
}

#[test]
fn spawned_processes_run_inside_the_namespace() {
    let ns = Netns::new("ltk").unwrap();
    let mut g = ns.spawn("ip-link", "ip", &["-o", "link", "show"]).unwrap();
    assert!(g.wait_timeout(Duration::from_secs(5)).unwrap().success());
    assert_eq!(g.stdout().lines().count(), 1, "{}", g.stdout());
}
