//! Boots a real guest under QEMU (needs root for the netns and to read the kernel image).

use std::time::Duration;

use limanet_testkit::servers::HttpServer;
use limanet_testkit::{Netns, QemuGuest, QemuOptions};

#[test]
fn guest_gets_a_dhcp_lease_from_slirp_and_reaches_the_host_loopback() {
    // QEMU runs in a private netns with only lo: slirp's "host" is that namespace, so nothing
    // the guest does can leave it.
    let ns = Netns::new("ltkq").unwrap();
    ns.sysctl("net.ipv4.ping_group_range", "0 2147483647")
        .unwrap();
    let http = HttpServer::start(&ns, "127.0.0.1:0".parse().unwrap(), None).unwrap();
    let port = http.addr().port();
    let script = format!(
        "set -e\n\
         ip addr show dev eth0\n\
         ping -c 1 -W 5 10.0.2.2\n\
         wget -q -O /tmp/data http://10.0.2.2:{port}/bytes/100000?seed=3\n\
         echo GUEST-SHA=$(sha256sum /tmp/data)\n"
    );
    let opts = QemuOptions {
        script,
        netns: Some(ns.name().to_string()),
        timeout: Duration::from_secs(60),
        ..Default::default()
    }
    .with_nic("user,net=10.0.2.0/24", Some("52:55:55:00:00:01"));
    assert_eq!(
        opts.netdevs,
        [
            "-netdev",
            "user,net=10.0.2.0/24,id=n0",
            "-device",
            "virtio-net-pci,netdev=n0,mac=52:55:55:00:00:01"
        ]
    );
    let out = QemuGuest::spawn(&opts).unwrap();
    println!("{}", out.console);
    if let Err(e) = out.check() {
        panic!("{e}");
    }
    assert!(out.console.contains("LIMANET-BOOTED"));
    assert!(out.console.contains("LIMANET-DHCP=ok"), "{}", out.console);
    assert_eq!(out.lease("ip").as_deref(), Some("10.0.2.15"));
    assert_eq!(out.lease("router").as_deref(), Some("10.0.2.2"));
    let lease = out.parsed_lease().unwrap();
    assert_eq!(lease.ip, std::net::Ipv4Addr::new(10, 0, 2, 15));
    assert_eq!(lease.prefix, 24);
    assert_eq!(lease.dns, [std::net::Ipv4Addr::new(10, 0, 2, 3)]);
    assert!(out.console.contains("inet 10.0.2.15/24"), "{}", out.console);
    assert!(
        out.console.contains("link/ether 52:55:55:00:00:01"),
        "{}",
        out.console
    );
    let want = limanet_testkit::checksum::PatternReader::new(3, 100_000).sha256();
    assert!(
        out.console.contains(&format!("GUEST-SHA={want}")),
        "{}",
        out.console
    );
}

#[test]
fn failing_script_exit_code_is_reported() {
    // Started in the background: the test can watch the console while the guest runs.
    let mut guest = QemuGuest::start(&QemuOptions {
        script: "echo about-to-fail; sleep 1; exit 3\n".into(),
        ..Default::default()
    })
    .unwrap();
    guest
        .wait_for_console("about-to-fail", Duration::from_secs(60))
        .unwrap();
    assert!(!guest.console().contains("LIMANET-TEST-EXIT"));
    let out = guest.wait().unwrap();
    assert_eq!(out.exit_code, Some(3), "{}", out.console);
    // No NIC was given: QEMU added none (-nodefaults), so there was no eth0 to run DHCP on.
    assert!(!out.console.contains("LIMANET-DHCP"), "{}", out.console);
    assert!(!out.timed_out);
    assert!(out.console.contains("about-to-fail"));
    assert!(out.check().is_err());
}

/// The shape of a limanet VM test, with passt as the daemon: QEMU's `-netdev stream` to a unix
/// socket served by a user-mode network in the test host netns.
#[test]
fn guest_over_a_stream_socket_served_by_passt() {
    let th = limanet_testkit::TestHost::new().unwrap();
    let http = HttpServer::start(&th.host, "127.0.0.1:0".parse().unwrap(), None).unwrap();
    let sock =
        std::env::temp_dir().join(format!("{}.sock", limanet_testkit::unique_name("ltkpasst")));
    let sock_s = sock.to_string_lossy().to_string();
    // passt hands out the host's nameservers: give it a private resolv.conf, not the machine's.
    th.host
        .set_etc("resolv.conf", "nameserver 203.0.113.53\n")
        .unwrap();
    let _passt = th
        .host
        .spawn(
            "passt",
            "passt",
            &[
                "-f", "-q", "--runas", "0", "-s", &sock_s, "-t", "none", "-u", "none",
            ],
        )
        .unwrap();
    limanet_testkit::wait_for_path(&sock, Duration::from_secs(10)).unwrap();
    let port = http.addr().port();
    let opts = QemuOptions {
        script: format!(
            "set -e\n\
             wget -q -O /tmp/d http://203.0.113.2:{port}/bytes/300000?seed=9\n\
             echo GUEST-SHA=$(sha256sum /tmp/d)\n"
        ),
        netns: Some(th.host.name().to_string()),
        ..Default::default()
    }
    .with_nic(
        &format!("stream,server=off,addr.type=unix,addr.path={sock_s}"),
        None,
    );
    let out = QemuGuest::spawn(&opts).unwrap();
    let _ = std::fs::remove_file(&sock);
    println!("{}", out.console);
    if let Err(e) = out.check() {
        panic!("{e}");
    }
    // passt hands the guest the host's address and gateway, and its MTU.
    let lease = out.parsed_lease().unwrap();
    assert_eq!(lease.ip, limanet_testkit::TestHost::HOST_ADDR);
    assert_eq!(lease.router, Some(limanet_testkit::TestHost::INTERNET_ADDR));
    assert_eq!(lease.mtu, Some(65520));
    assert_eq!(lease.dns, [std::net::Ipv4Addr::new(203, 0, 113, 53)]);
    let want = limanet_testkit::checksum::PatternReader::new(9, 300_000).sha256();
    assert!(
        out.console.contains(&format!("GUEST-SHA={want}")),
        "{}",
        out.console
    );
}
