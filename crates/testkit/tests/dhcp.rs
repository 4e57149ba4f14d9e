//! `Netns::dhcp` against a real DHCP server (dnsmasq) across a veth pair (needs root).

use std::process::Command;
use std::time::Duration;

use limanet_testkit::{unique_name, ChildGuard, Netns};

#[test]
fn netns_dhcp_applies_a_dnsmasq_lease() {
    let server = Netns::new("ltks").unwrap();
    let client = Netns::new("ltkc").unwrap();
    let (sif, cif) = (unique_name("vs"), unique_name("vc"));
    let out = Command::new("ip")
        .args([
            "link",
            "add",
            &sif,
            "netns",
            server.name(),
            "type",
            "veth",
            "peer",
            "name",
        ])
        .args([&cif, "netns", client.name()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    server
        .run("ip", &["addr", "add", "10.77.0.1/24", "dev", &sif])
        .unwrap();
    server.run("ip", &["link", "set", &sif, "up"]).unwrap();
    client.run("ip", &["link", "set", &cif, "up"]).unwrap();

    let leases = std::env::temp_dir().join(format!("{}.leases", unique_name("ltk")));
    let _dnsmasq = ChildGuard::spawn(
        "dnsmasq",
        server.command("dnsmasq").args([
            "--keep-in-foreground",
            "--conf-file=/dev/null",
            "--port=0",
            "--user=root",
            "--pid-file=",
            "--bind-interfaces",
            &format!("--interface={sif}"),
            "--dhcp-range=10.77.0.50,10.77.0.60,255.255.255.0,1h",
            "--dhcp-option=option:router,10.77.0.1",
            "--dhcp-option=option:dns-server,10.77.0.1",
            "--dhcp-option=option:mtu,1400",
            "--domain=test.internal",
            "--dhcp-option=option:domain-search,a.test,b.test",
            &format!("--dhcp-leasefile={}", leases.display()),
        ]),
    )
    .unwrap();

    let lease = client.dhcp(&cif, Duration::from_secs(10)).unwrap();
    let _ = std::fs::remove_file(&leases);
    assert!(
        (50..=60).contains(&lease.ip.octets()[3]) && lease.ip.octets()[..3] == [10, 77, 0],
        "{lease:?}"
    );
    assert_eq!(lease.prefix, 24);
    assert_eq!(lease.router, Some("10.77.0.1".parse().unwrap()));
    assert_eq!(
        lease.dns,
        ["10.77.0.1".parse::<std::net::Ipv4Addr>().unwrap()]
    );
    assert_eq!(lease.mtu, Some(1400));
    assert_eq!(lease.server_id, Some("10.77.0.1".parse().unwrap()));
    assert_eq!(lease.lease_secs, Some(3600));
    assert_eq!(lease.domain.as_deref(), Some("test.internal"));
    assert_eq!(lease.search, ["a.test", "b.test"]);

    // Applied: address, MTU, default route, and the namespace's private resolv.conf.
    let addr = client
        .run("ip", &["-o", "-4", "addr", "show", "dev", &cif])
        .unwrap();
    assert!(addr.contains(&format!("inet {}/24", lease.ip)), "{addr}");
    let link = client
        .run("ip", &["-o", "link", "show", "dev", &cif])
        .unwrap();
    assert!(link.contains("mtu 1400"), "{link}");
    let route = client.run("ip", &["route", "show", "default"]).unwrap();
    assert!(route.contains("via 10.77.0.1"), "{route}");
    let resolv = client.run("cat", &["/etc/resolv.conf"]).unwrap();
    assert!(resolv.contains("nameserver 10.77.0.1"), "{resolv}");
    assert!(
        resolv.contains("search a.test b.test test.internal"),
        "{resolv}"
    );
}

#[test]
fn netns_dhcp_without_a_server_fails_with_the_udhcpc_log() {
    let client = Netns::new("ltkc").unwrap();
    let (a, b) = (unique_name("va"), unique_name("vb"));
    client
        .run(
            "ip",
            &["link", "add", &a, "type", "veth", "peer", "name", &b],
        )
        .unwrap();
    client.run("ip", &["link", "set", &b, "up"]).unwrap();
    client.run("ip", &["link", "set", &a, "up"]).unwrap();
    let err = client.dhcp(&a, Duration::from_secs(2)).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("got no lease") && msg.contains("udhcpc"),
        "{msg}"
    );
}
