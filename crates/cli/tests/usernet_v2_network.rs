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
