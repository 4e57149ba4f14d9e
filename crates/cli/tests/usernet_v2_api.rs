//! The user-v2 HTTP API as Lima's hostagent and other gvproxy clients use it: run-time
//! expose/unexpose of TCP and UDP forwards with traffic through them, `wait_port` (200 and
//! 408), gvproxy's status codes for bad input (the daemon keeps working after each), an idle
//! client that does not block others, and the socket's mode. Everything runs inside a private
//! test host (see usernet_support); the API client is curl.

mod usernet_support;
mod usernet_v2_support;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use limanet_testkit::servers::{TcpEchoServer, UdpEchoServer};
use limanet_testkit::Netns;
use usernet_support::*;
use usernet_v2_support::*;

/// A free TCP port on the host netns's loopback (bound and released).
fn free_port(env: &Env) -> u16 {
    env.th
        .host
        .run_in(|| TcpListener::bind("127.0.0.1:0").map(|l| l.local_addr().map(|a| a.port())))
        .expect("netns")
        .expect("bind")
        .expect("addr")
}

/// Sends `msg` to 127.0.0.1:`port` in the host netns over TCP and returns the echo.
fn tcp_echo_via(env: &Env, port: u16, msg: &'static [u8]) -> std::io::Result<Vec<u8>> {
    env.th
        .host
        .run_in(move || {
            let mut s = TcpStream::connect_timeout(
                &SocketAddr::from(([127, 0, 0, 1], port)),
                Duration::from_secs(5),
            )?;
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            s.write_all(msg)?;
            let mut buf = vec![0u8; msg.len()];
            s.read_exact(&mut buf)?;
            Ok(buf)
        })
        .expect("netns")
}

/// Sends `msg` to 127.0.0.1:`port` in the host netns over UDP and returns the echo.
fn udp_echo_via(env: &Env, port: u16, msg: &'static [u8]) -> std::io::Result<Vec<u8>> {
    env.th
        .host
        .run_in(move || {
            let s = UdpSocket::bind("127.0.0.1:0")?;
            s.set_read_timeout(Some(Duration::from_millis(500)))?;
            let mut buf = [0u8; 2048];
            // The first datagram may race the guest's ARP entry: retry a few times.
            for _ in 0..6 {
                s.send_to(msg, ("127.0.0.1", port))?;
                if let Ok((n, _)) = s.recv_from(&mut buf) {
                    return Ok(buf[..n].to_vec());
                }
            }
            Err(std::io::Error::from(std::io::ErrorKind::TimedOut))
        })
        .expect("netns")
}

fn expose(ep: &std::path::Path, local: &str, remote: &str, protocol: &str) -> Reply {
    let body = format!(r#"{{"local":"{local}","remote":"{remote}","protocol":"{protocol}"}}"#);
    api(ep, "POST", "/services/forwarder/expose", Some(&body))
}

fn unexpose(ep: &std::path::Path, local: &str, protocol: &str) -> Reply {
    let body = format!(r#"{{"local":"{local}","protocol":"{protocol}"}}"#);
    api(ep, "POST", "/services/forwarder/unexpose", Some(&body))
}

#[test]
fn expose_unexpose_wait_port_and_bad_input() {
    let env = Env::new("v2api");
    let guest = Netns::new("v2a").expect("netns");
    let v2 = start_v2(&env, "v2api", &[&guest], &[]);
    let ep = v2.ep.clone();
    let mode = std::fs::metadata(&ep).expect("ep").permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "endpoint socket mode");
    let ip = dhcp(&guest, None);
    assert_eq!(ip, Ipv4Addr::new(192, 168, 104, 1));

    // wait_port: nothing listens yet → 408 after the timeout, with Lima's message.
    let started = Instant::now();
    let r = api(
        &ep,
        "GET",
        &format!("/extension/wait_port?ip={ip}&port=8080&timeout=2"),
        None,
    );
    assert_eq!(r.status, 408, "{r:?}");
    assert_eq!(
        r.body,
        format!("timed out waiting for port to become available on {ip}:8080\n")
    );
    assert!(started.elapsed() >= Duration::from_secs(2));

    // A guest service comes up while wait_port waits: 200 once it accepts.
    let waiter = {
        let ep = ep.clone();
        std::thread::spawn(move || {
            api(
                &ep,
                "GET",
                &format!("/extension/wait_port?ip={ip}&port=8080&timeout=20"),
                None,
            )
        })
    };
    std::thread::sleep(Duration::from_millis(1500));
    let _echo = TcpEchoServer::start(&guest, SocketAddr::from(([0, 0, 0, 0], 8080)))
        .expect("guest TCP echo");
    let _uecho = UdpEchoServer::start(&guest, SocketAddr::from(([0, 0, 0, 0], 5353)))
        .expect("guest UDP echo");
    let r = waiter.join().expect("waiter");
    assert_eq!((r.status, r.body.as_str()), (200, ""), "wait_port");

    // Expose TCP and UDP at run time, with traffic through them.
    let tport = free_port(&env);
    let uport = free_port(&env);
    let local_t = format!("127.0.0.1:{tport}");
    let local_u = format!("127.0.0.1:{uport}");
    let r = expose(&ep, &local_t, &format!("{ip}:8080"), "tcp");
    assert_eq!((r.status, r.body.as_str()), (200, ""), "expose tcp");
    let r = expose(&ep, &local_u, &format!("{ip}:5353"), "udp");
    assert_eq!((r.status, r.body.as_str()), (200, ""), "expose udp");
    assert_eq!(
        tcp_echo_via(&env, tport, b"through the forward").expect("tcp forward"),
        b"through the forward"
    );
    assert_eq!(
        udp_echo_via(&env, uport, b"datagram").expect("udp forward"),
        b"datagram"
    );
    let all = api(&ep, "GET", "/services/forwarder/all", None).json();
    let mut expected = vec![
        serde_json::json!({"local": local_t, "remote": format!("{ip}:8080"), "protocol": "tcp"}),
        serde_json::json!({"local": local_u, "remote": format!("{ip}:5353"), "protocol": "udp"}),
    ];
    expected.sort_by_key(|v| v["local"].as_str().unwrap_or("").to_string());
    assert_eq!(all, serde_json::Value::Array(expected));

    // A held connection survives the unexpose of its listener.
    let held = env
        .th
        .host
        .run_in(move || {
            let s = TcpStream::connect(("127.0.0.1", tport))?;
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            Ok::<_, std::io::Error>(s)
        })
        .expect("netns")
        .expect("connect");

    // Bad input: the right status, a message, and nothing changes.
    let duplicate = format!(r#"{{"local":"{local_t}","remote":"{ip}:8080"}}"#);
    let cases: Vec<(&str, &str, Option<&str>, u16)> = vec![
        ("POST", "/services/forwarder/expose", Some("{not json"), 400),
        ("POST", "/services/forwarder/expose", Some(""), 400),
        (
            "POST",
            "/services/forwarder/expose",
            Some(r#"{"local":2222}"#),
            400,
        ),
        ("GET", "/services/forwarder/expose", None, 400),
        ("GET", "/services/forwarder/unexpose", None, 400),
        ("GET", "/services/dns/add", None, 400),
        (
            "POST",
            "/services/dns/add",
            Some(r#"{"Name":"x.","DefaultIP":"not-an-ip"}"#),
            400,
        ),
        ("POST", "/services/dns/add", Some(r#"{"Name":["x"]}"#), 400),
        ("GET", "/no/such/path", None, 404),
        ("GET", "/services/forwarder", None, 404),
        // Already exposed, outside the subnet, unknown protocol, no remote IP.
        (
            "POST",
            "/services/forwarder/expose",
            Some(duplicate.as_str()),
            500,
        ),
        (
            "POST",
            "/services/forwarder/expose",
            Some(r#"{"local":"127.0.0.1:0","remote":"10.1.2.3:22"}"#),
            500,
        ),
        (
            "POST",
            "/services/forwarder/expose",
            Some(r#"{"local":"127.0.0.1:0","remote":"192.168.104.1:22","protocol":"sctp"}"#),
            500,
        ),
        (
            "POST",
            "/services/forwarder/expose",
            Some(r#"{"local":"127.0.0.1:0","remote":":22"}"#),
            400,
        ),
        (
            "POST",
            "/services/forwarder/unexpose",
            Some(r#"{"local":"127.0.0.1:1","protocol":"tcp"}"#),
            500,
        ),
        ("GET", "/extension/wait_port?ip=nope&port=22", None, 400),
        (
            "GET",
            "/extension/wait_port?ip=192.168.104.1&port=70000",
            None,
            400,
        ),
        (
            "GET",
            "/extension/wait_port?ip=192.168.104.1&port=22&timeout=x",
            None,
            400,
        ),
    ];
    for (method, path, body, status) in &cases {
        let r = api(&ep, method, path, *body);
        assert_eq!(r.status, *status, "{method} {path} {body:?}: {r:?}");
        assert!(
            !r.body.is_empty(),
            "{method} {path}: error without a message"
        );
    }
    let r = api(&ep, "POST", "/services/forwarder/expose", Some("{bad"));
    assert!(r.body.starts_with("key must be a string"), "{r:?}");
    let r = api(&ep, "GET", "/services/forwarder/expose", None);
    assert_eq!(r.body, "post only\n");
    let r = api(&ep, "GET", "/extension/wait_port?ip=nope&port=22", None);
    assert_eq!(r.body, "invalid ip address: nope\n");

    // A port in use on the host: 500, nothing listed, the other forwards unharmed.
    let busy = env
        .th
        .host
        .run_in(|| TcpListener::bind("127.0.0.1:0"))
        .expect("netns")
        .expect("bind");
    let busy_local = format!("127.0.0.1:{}", busy.local_addr().expect("addr").port());
    let r = expose(&ep, &busy_local, &format!("{ip}:8080"), "tcp");
    assert_eq!(r.status, 500, "{r:?}");
    assert!(r.body.contains("in use"), "{r:?}");
    let all = api(&ep, "GET", "/services/forwarder/all", None).json();
    assert_eq!(all.as_array().map(Vec::len), Some(2), "{all}");
    assert_eq!(
        tcp_echo_via(&env, tport, b"still works").expect("tcp forward after errors"),
        b"still works"
    );

    // An idle client that never sends a request does not hold up others.
    let idle = UnixStream::connect(&ep).expect("idle client");
    let started = Instant::now();
    for _ in 0..3 {
        assert_eq!(api(&ep, "GET", "/services/dhcp/leases", None).status, 200);
    }
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "API blocked by an idle client"
    );

    // Unexpose: the listener goes, the held connection keeps working.
    let r = unexpose(&ep, &local_t, "tcp");
    assert_eq!((r.status, r.body.as_str()), (200, ""), "unexpose tcp");
    let r = unexpose(&ep, &local_t, "tcp");
    assert_eq!((r.status, r.body.as_str()), (500, "proxy not found\n"));
    assert!(
        tcp_echo_via(&env, tport, b"x").is_err(),
        "listener still open after unexpose"
    );
    let mut held = held;
    held.write_all(b"held").expect("write on held connection");
    let mut buf = [0u8; 4];
    held.read_exact(&mut buf).expect("echo on held connection");
    assert_eq!(&buf, b"held");
    let r = unexpose(&ep, &local_u, "udp");
    assert_eq!(r.status, 200, "unexpose udp");
    assert!(udp_echo_via(&env, uport, b"gone").is_err());
    let all = api(&ep, "GET", "/services/forwarder/all", None).json();
    assert_eq!(all, serde_json::json!([]));
    // The same address can be exposed again.
    let r = expose(&ep, &local_t, &format!("{ip}:8080"), "");
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        tcp_echo_via(&env, tport, b"again").expect("re-exposed"),
        b"again"
    );
    drop(idle);
    assert!(v2.daemon.logs().contains("API listening"));
}

#[test]
fn endpoint_group_gives_mode_0660() {
    use std::os::unix::fs::MetadataExt;
    let env = Env::new("v2grp");
    let guest = Netns::new("v2grp").expect("netns");
    let v2 = start_v2(&env, "v2grp", &[&guest], &["--endpoint-group", "root"]);
    let meta = std::fs::metadata(&v2.ep).expect("ep");
    assert_eq!(meta.permissions().mode() & 0o777, 0o660);
    assert_eq!(meta.gid(), 0);
    assert_eq!(api(&v2.ep, "GET", "/leases", None).status, 200);
}

/// Beyond gvproxy (whose forwards are IPv4 only): a forward from the host's `[::1]` to the
/// guest's IPv6 address, exposed, listed, used and unexposed through the API; an IPv6 guest
/// address outside the network's prefix is refused like an IPv4 one.
#[test]
fn expose_ipv6_forward_through_the_api() {
    let env = Env::new("v2api6");
    let guest = Netns::new("v2a6").expect("netns");
    let v2 = start_v2(&env, "v2api6", &[&guest], &[]);
    dhcp(&guest, None);
    let mut ip6 = None;
    limanet_testkit::wait_for("a SLAAC address on tap0", Duration::from_secs(10), || {
        ip6 = guest.global_ipv6("tap0");
        ip6.is_some()
    })
    .expect("guest IPv6 address");
    let ip6 = ip6.expect("checked");
    let _echo = TcpEchoServer::start(&guest, SocketAddr::from((ip6, 8080))).expect("echo");
    let port = free_port(&env);
    let local = format!("[::1]:{port}");
    let r = expose(&v2.ep, &local, &format!("[{ip6}]:8080"), "tcp");
    assert_eq!((r.status, r.body.as_str()), (200, ""), "expose [::1]");
    let all = api(&v2.ep, "GET", "/services/forwarder/all", None);
    assert!(
        all.body.contains(&format!("\"local\":\"{local}\""))
            && all.body.contains(&format!("\"remote\":\"[{ip6}]:8080\"")),
        "{all:?}"
    );
    let echoed = env
        .th
        .host
        .run_in(move || -> std::io::Result<Vec<u8>> {
            let to = SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, port));
            let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(5))?;
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            s.write_all(b"over six")?;
            let mut buf = [0u8; 8];
            s.read_exact(&mut buf)?;
            Ok(buf.to_vec())
        })
        .expect("netns");
    assert_eq!(
        echoed.expect("echo through [::1]"),
        b"over six",
        "{}",
        v2.daemon.logs()
    );
    let r = expose(&v2.ep, "[::1]:0", "[2001:db8::1]:8080", "tcp");
    assert_eq!(r.status, 500, "outside the prefix: {r:?}");
    assert!(r.body.contains("outside the network"), "{r:?}");
    let r = expose(&v2.ep, "[::1:0", &format!("[{ip6}]:8080"), "tcp");
    assert_eq!(r.status, 500, "bad local: {r:?}");
    let r = unexpose(&v2.ep, &local, "tcp");
    assert_eq!((r.status, r.body.as_str()), (200, ""), "unexpose [::1]");
}
