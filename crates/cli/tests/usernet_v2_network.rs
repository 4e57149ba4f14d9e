//! Three netns guests on one user-v2 network served by `limanet usernet --mode user-v2 -e`:
//! leases in Lima's order (network+1, +3, +4), names registered through `POST
//! /services/dns/add` the way Lima's usernet client registers them, each guest pinging another
//! as `lima-<NAME>.internal`, gvproxy's zone semantics seen through dig, TCP between guests,
//! and the read-only endpoints (`leases`, `/stats`, `/cam`, `/flows`). Everything runs inside
//! a private test host (see usernet_support).

mod usernet_support;
mod usernet_v2_support;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use limanet_testkit::servers::TcpEchoServer;
use limanet_testkit::Netns;
use usernet_support::*;
use usernet_v2_support::*;

/// Lima's registration of one instance (ExtractZones of `lima-<NAME>.internal` and
/// `host.lima.internal`): one `internal.` zone.
fn register(ep: &std::path::Path, name: &str, ip: Ipv4Addr) {
    let zone = format!(
        r#"{{"Name":"internal.","Records":[{{"Name":"lima-{name}","IP":"{ip}"}},{{"Name":"host.lima","IP":"{GATEWAY}"}}],"DefaultIP":""}}"#
    );
    let r = api(ep, "POST", "/services/dns/add", Some(&zone));
    assert_eq!((r.status, r.body.as_str()), (200, ""), "dns/add");
}

fn dig(ns: &Netns, args: &[&str]) -> String {
    let out = output_in(ns, "dig", args);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn three_guests_leases_names_tcp_and_introspection() {
    let env = Env::new("v2net");
    let guests: Vec<Netns> = (0..3).map(|_| Netns::new("v2g").expect("netns")).collect();
    let refs: Vec<&Netns> = guests.iter().collect();
    let v2 = start_v2(&env, "v2net", &refs, &["--dns-listen", "127.0.0.1:5354"]);

    // Leases in Lima's (gvisor's) order: lowest free host address, skipping the gateway.
    let ips: Vec<Ipv4Addr> = guests.iter().map(|g| dhcp(g, None)).collect();
    assert_eq!(
        ips,
        [
            Ipv4Addr::new(192, 168, 104, 1),
            Ipv4Addr::new(192, 168, 104, 3),
            Ipv4Addr::new(192, 168, 104, 4)
        ],
        "{}",
        v2.daemon.logs()
    );
    for (path, label) in [("/services/dhcp/leases", "leases"), ("/leases", "/leases")] {
        let r = api(&v2.ep, "GET", path, None);
        assert_eq!(r.status, 200, "{label}");
        let leases = r.json();
        assert_eq!(
            leases[GATEWAY.to_string()],
            GATEWAY_MAC,
            "{label}: {leases}"
        );
        for (g, ip) in guests.iter().zip(&ips) {
            assert_eq!(
                leases[ip.to_string()],
                tap_mac(g).as_str(),
                "{label}: {leases}"
            );
        }
        assert_eq!(leases.as_object().map(|m| m.len()), Some(4), "{leases}");
    }

    // Each instance registers itself as Lima does; the zone is merged, newest records first.
    let names = ["vm0", "vm1", "vm2"];
    for (name, ip) in names.iter().zip(&ips) {
        register(&v2.ep, name, *ip);
    }
    let zones = api(&v2.ep, "GET", "/services/dns/all", None).json();
    assert_eq!(zones.as_array().map(Vec::len), Some(1), "{zones}");
    assert_eq!(zones[0]["Name"], "internal.");
    assert_eq!(zones[0]["Records"][0]["Name"], "lima-vm2", "{zones}");
    // Three instances, and host.lima registered by each: re-added names replace older records.
    assert_eq!(zones[0]["Records"].as_array().map(Vec::len), Some(4));

    // Every guest pings the next one by name (getaddrinfo through the DHCP-given DNS).
    for i in 0..3 {
        let peer = names[(i + 1) % 3];
        let out = output_in(
            &guests[i],
            "ping",
            &["-c", "1", "-W", "3", &format!("lima-{peer}.internal")],
        );
        assert!(
            out.status.success(),
            "guest {i} cannot ping lima-{peer}.internal: {}{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            v2.daemon.logs()
        );
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains(&ips[(i + 1) % 3].to_string()), "{text}");
    }

    // gvproxy's zone semantics, through dig at the gateway.
    let g = &guests[0];
    let at = format!("@{GATEWAY}");
    let a = dig(g, &[&at, "+short", "LIMA-VM1.internal"]);
    assert_eq!(a.trim(), ips[1].to_string());
    let a = dig(g, &[&at, "+short", "host.lima.internal"]);
    assert_eq!(a.trim(), GATEWAY.to_string());
    // A name inside the zone without a record: NXDOMAIN, not REFUSED, and no upstream query.
    let nx = dig(g, &[&at, "nothing-here.internal"]);
    assert!(nx.contains("status: NXDOMAIN"), "{nx}");
    assert_eq!(env.stub.count("nothing-here.internal"), 0);
    // The host can ask too, on --dns-listen (what a systemd-resolved drop-in would use).
    let a = dig(
        &env.th.host,
        &["@127.0.0.1", "-p", "5354", "+short", "lima-vm2.internal"],
    );
    assert_eq!(a.trim(), ips[2].to_string());
    let a = dig(
        &env.th.host,
        &[
            "@127.0.0.1",
            "-p",
            "5354",
            "+tcp",
            "+short",
            "lima-vm0.internal",
        ],
    );
    assert_eq!(a.trim(), ips[0].to_string());

    // A zone with a default IP answers every name below it.
    let r = api(
        &v2.ep,
        "POST",
        "/services/dns/add",
        Some(r#"{"Name":"apps.test.","DefaultIP":"192.168.104.200"}"#),
    );
    assert_eq!(r.status, 200);
    let a = dig(g, &[&at, "+short", "anything.apps.test"]);
    assert_eq!(a.trim(), "192.168.104.200");
    // Lima's single-label hosts (a zone with only a DefaultIP; Go sends Records as null), and
    // a record matched by regular expression.
    let r = api(
        &v2.ep,
        "POST",
        "/services/dns/add",
        Some(r#"{"Name":"localhost","Records":null,"DefaultIP":"127.0.0.1"}"#),
    );
    assert_eq!(r.status, 200, "{r:?}");
    let a = dig(g, &[&at, "+short", "app.localhost"]);
    assert_eq!(a.trim(), "127.0.0.1");
    let r = api(
        &v2.ep,
        "POST",
        "/services/dns/add",
        Some(r#"{"Name":"re.test.","Records":[{"Regexp":"^web-[0-9]+$","IP":"192.168.104.77"}]}"#),
    );
    assert_eq!(r.status, 200, "{r:?}");
    let a = dig(g, &[&at, "+short", "web-12.re.test"]);
    assert_eq!(a.trim(), "192.168.104.77");
    let nx = dig(g, &[&at, "db.re.test"]);
    assert!(nx.contains("status: NXDOMAIN"), "{nx}");
    let zones = api(&v2.ep, "GET", "/services/dns/all", None).json();
    assert_eq!(zones[3]["Records"][0]["Regexp"], "^web-[0-9]+$", "{zones}");
    let r = api(
        &v2.ep,
        "POST",
        "/services/dns/add",
        Some(r#"{"Name":"bad.","Records":[{"Regexp":"(","IP":"192.168.104.1"}]}"#),
    );
    assert_eq!(r.status, 400, "{r:?}");

    // Outside every zone: the host-resolver DNS (here, the stub upstream).
    let a = dig(g, &[&at, "+short", STUB_NAME]);
    assert_eq!(a.trim(), STUB_ADDR.to_string());

    // TCP between guests (switched, not translated).
    let echo = TcpEchoServer::start(&guests[2], SocketAddr::from(([0, 0, 0, 0], 7777)))
        .expect("echo server");
    let peer = SocketAddr::from((ips[2], echo.addr().port()));
    let got = guests[0]
        .run_in(move || {
            let mut s = TcpStream::connect_timeout(&peer, Duration::from_secs(5))?;
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            s.write_all(b"between guests")?;
            let mut buf = [0u8; 14];
            s.read_exact(&mut buf)?;
            Ok::<_, std::io::Error>(buf.to_vec())
        })
        .expect("netns")
        .expect("TCP between guests");
    assert_eq!(got, b"between guests");

    // A connection to the host (through the gateway) is a flow in /flows and /stats.
    let host_listener = env
        .th
        .host
        .run_in(|| TcpListener::bind("127.0.0.1:0"))
        .expect("netns")
        .expect("host listener");
    let host_port = host_listener.local_addr().expect("addr").port();
    let conn = guests[1]
        .run_in(move || {
            TcpStream::connect_timeout(
                &SocketAddr::from((GATEWAY, host_port)),
                Duration::from_secs(5),
            )
        })
        .expect("netns")
        .expect("guest → host");
    let (_accepted, _) = host_listener.accept().expect("accept");
    let flows = api(&v2.ep, "GET", "/flows", None).json();
    let flow = flows
        .as_array()
        .and_then(|l| {
            l.iter()
                .find(|f| f["protocol"] == "tcp" && f["remote"] == format!("{GATEWAY}:{host_port}"))
        })
        .unwrap_or_else(|| panic!("no flow in {flows}"));
    assert_eq!(flow["state"], "established");
    assert_eq!(flow["inbound"], false);
    assert!(flow["guest"]
        .as_str()
        .is_some_and(|g| g.starts_with(&format!("{}:", ips[1]))));

    let stats = api(&v2.ep, "GET", "/stats", None).json();
    let vms = stats["vms"].as_array().expect("vms");
    assert_eq!(vms.len(), 3, "{stats}");
    for (vm, ip) in vms.iter().zip(&ips) {
        assert_eq!(vm["ips"][0], ip.to_string(), "{stats}");
        assert!(vm["frames_in"].as_u64() > Some(0), "{stats}");
        assert!(vm["bytes_out"].as_u64() > Some(0), "{stats}");
    }
    assert_eq!(vms[1]["tcp_flows"], 1, "{stats}");
    assert!(stats["BytesReceived"].as_u64() > Some(0));
    assert!(stats["switched"].as_u64() > Some(0), "{stats}");

    let cam = api(&v2.ep, "GET", "/cam", None).json();
    for (g, vm) in guests.iter().zip(vms) {
        assert_eq!(cam[tap_mac(g)], vm["id"], "{cam}");
    }
    drop(conn);
}

/// The guest's global IPv6 address on tap0 once SLAAC has configured it (not tentative).
fn wait_for_slaac(ns: &Netns, logs: impl Fn() -> String) -> std::net::Ipv6Addr {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let addr = ns.global_ipv6("tap0");
        if let Some(a) = addr {
            return a;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no SLAAC address on tap0\n{}",
            logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Two dual-stack guests registered as Lima registers them (IPv4 records only): each name also
/// has an AAAA record, the IPv6 address the network has seen its guest use, so the guests
/// reach each other over IPv6 by name (`ping -6 lima-<NAME>.internal`, glibc's resolver
/// asking the DNS at the gateway's IPv6 address). The API's `/stats` and `/flows` show the
/// IPv6 side too.
#[test]
fn guests_reach_each_other_over_ipv6_by_name() {
    const GATEWAY6: &str = "fd00:192:168:104::2";
    let env = Env::new("v2n6");
    let guests: Vec<Netns> = (0..2).map(|_| Netns::new("v2g6").expect("netns")).collect();
    let refs: Vec<&Netns> = guests.iter().collect();
    let v2 = start_v2(&env, "v2n6", &refs, &[]);
    for g in &guests {
        g.sysctl("net.ipv6.conf.tap0.accept_ra", "2")
            .expect("accept_ra");
    }
    let ips: Vec<Ipv4Addr> = guests.iter().map(|g| dhcp(g, None)).collect();
    let ip6s: Vec<std::net::Ipv6Addr> = guests
        .iter()
        .map(|g| wait_for_slaac(g, || v2.daemon.logs()))
        .collect();
    let names = ["vm0", "vm1"];
    for (name, ip) in names.iter().zip(&ips) {
        register(&v2.ep, name, *ip);
    }
    // Before a guest has sent from its IPv6 address, its name has no AAAA record (NODATA).
    let aaaa = dig(
        &guests[0],
        &[
            &format!("@{GATEWAY6}"),
            "+short",
            "AAAA",
            "lima-vm1.internal",
        ],
    );
    assert_eq!(aaaa.trim(), "", "{}", v2.daemon.logs());
    for (g, name) in guests.iter().zip(names) {
        // The DNS over IPv6 only: the names must come back as AAAA records.
        g.set_etc("resolv.conf", &format!("nameserver {GATEWAY6}\n"))
            .expect("resolv.conf");
        // Any IPv6 traffic from the guest's address teaches the network which address it uses.
        let out = output_in(g, "ping", &["-6", "-c", "1", "-W", "5", GATEWAY6]);
        assert!(
            out.status.success(),
            "{name} cannot ping the gateway over IPv6"
        );
    }
    for (i, guest) in guests.iter().enumerate() {
        let peer = (i + 1) % 2;
        let name = format!("lima-{}.internal", names[peer]);
        let getent = output_in(guest, "getent", &["ahostsv6", &name]);
        let text = String::from_utf8_lossy(&getent.stdout).to_string();
        assert!(
            text.contains(&ip6s[peer].to_string()),
            "getent ahostsv6 {name} in guest {i}: {text:?}\n{}",
            v2.daemon.logs()
        );
        let out = output_in(guest, "ping", &["-6", "-c", "1", "-W", "5", &name]);
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(
            out.status.success() && stdout.contains(&ip6s[peer].to_string()),
            "guest {i} cannot ping -6 {name}: {stdout}{}\n{}",
            String::from_utf8_lossy(&out.stderr),
            v2.daemon.logs()
        );
    }
    // The A records are those Lima registered.
    let a = dig(
        &guests[0],
        &[&format!("@{GATEWAY6}"), "+short", "A", "lima-vm1.internal"],
    );
    assert_eq!(a.trim(), ips[1].to_string());

    // The API shows both families: /stats lists each VM's IPv6 addresses after its lease, and
    // an IPv6 flow (guest → [gateway6] → the host's [::1]) is written [address]:port.
    let host_listener = env
        .th
        .host
        .run_in(|| TcpListener::bind("[::1]:0"))
        .expect("netns")
        .expect("host listener");
    let host_port = host_listener.local_addr().expect("addr").port();
    let gateway6: std::net::Ipv6Addr = GATEWAY6.parse().expect("addr");
    let _conn = guests[0]
        .run_in(move || {
            TcpStream::connect_timeout(
                &SocketAddr::from((gateway6, host_port)),
                Duration::from_secs(5),
            )
        })
        .expect("netns")
        .expect("guest → host over IPv6");
    let (_accepted, _) = host_listener.accept().expect("accept");
    let flows = api(&v2.ep, "GET", "/flows", None).json();
    let remote = format!("[{GATEWAY6}]:{host_port}");
    let flow = flows
        .as_array()
        .and_then(|l| {
            l.iter()
                .find(|f| f["protocol"] == "tcp" && f["remote"] == remote.as_str())
        })
        .unwrap_or_else(|| panic!("no {remote} flow in {flows}"));
    assert_eq!(flow["state"], "established", "{flow}");
    assert!(
        flow["guest"]
            .as_str()
            .is_some_and(|g| g.starts_with(&format!("[{}]:", ip6s[0]))),
        "{flow}"
    );
    let stats = api(&v2.ep, "GET", "/stats", None).json();
    let vms = stats["vms"].as_array().expect("vms");
    for ((vm, ip), ip6) in vms.iter().zip(&ips).zip(&ip6s) {
        let listed: Vec<&str> = vm["ips"]
            .as_array()
            .expect("ips")
            .iter()
            .filter_map(|v| v.as_str())
            .collect();
        assert_eq!(listed.first(), Some(&ip.to_string().as_str()), "{stats}");
        assert!(listed.contains(&ip6.to_string().as_str()), "{stats}");
    }
    assert_eq!(vms[0]["tcp_flows"], 1, "{stats}");
}
