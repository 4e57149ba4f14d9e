//! `limanet usernet` with a real busybox guest under QEMU (TCG, direct kernel boot), over
//! `-netdev stream` (`--listen-qemu`) and `-netdev dgram` (`--listen-dgram`): DHCP gives
//! 192.168.5.15, the guest fetches from a server on the host's 127.0.0.1 through 192.168.5.2,
//! resolves names through 192.168.5.3 and pings 192.168.5.2. Everything runs inside a private
//! test host (see usernet_support).

mod usernet_support;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use limanet_testkit::checksum::PatternReader;
use limanet_testkit::servers::HttpServer;
use limanet_testkit::{GuestOutput, QemuGuest, QemuOptions};
use usernet_support::*;

const SIZE: u64 = 300_000;

/// Boots a guest whose NIC is `backend` against a `limanet usernet` started with `listen`
/// (e.g. `["--listen-qemu", path]`), and checks what it saw.
fn guest_on(env: &Env, listen: &[&str], socket: &Path, backend: &str) {
    let http =
        HttpServer::start(&env.th.host, SocketAddr::from(([127, 0, 0, 1], 0)), None).expect("http");
    let port = http.addr().port();
    let daemon = env.usernet_daemon(|cmd| {
        cmd.args(listen).args(["--instance", "qemu"]);
    });
    assert!(socket.exists(), "{} missing", socket.display());

    let script = format!(
        "wget -q -O /tmp/data http://192.168.5.2:{port}/bytes/{SIZE}?seed=21 || exit 10\n\
         echo LIMANET-SHA=$(sha256sum /tmp/data | cut -d' ' -f1)\n\
         echo LIMANET-RESOLV=$(grep nameserver /etc/resolv.conf | tr '\\n' ' ')\n\
         nslookup {STUB_NAME} > /tmp/ns1 2>&1; cat /tmp/ns1\n\
         grep -q '{STUB_ADDR}' /tmp/ns1 || exit 11\n\
         nslookup lima-qemu 192.168.5.3 > /tmp/ns2 2>&1; cat /tmp/ns2\n\
         grep -q 192.168.5.15 /tmp/ns2 || exit 12\n\
         ping -c 1 -W 5 192.168.5.2 || exit 13\n\
         ping -c 1 -W 5 203.0.113.2 || exit 14\n"
    );
    let out: GuestOutput = QemuGuest::spawn(
        &QemuOptions {
            script,
            timeout: Duration::from_secs(90),
            netns: Some(env.th.host.name().to_string()),
            ..Default::default()
        }
        .with_nic(backend, None),
    )
    .expect("run guest");
    if let Err(e) = out.check() {
        panic!("guest failed: {e}\n{}", daemon.logs());
    }
    let lease = out
        .parsed_lease()
        .unwrap_or_else(|| panic!("no lease\n{}", out.console));
    assert_eq!(lease.ip.to_string(), "192.168.5.15", "{}", out.console);
    assert_eq!(
        lease.router.map(|r| r.to_string()).as_deref(),
        Some("192.168.5.2")
    );
    assert_eq!(
        lease.dns.iter().map(|d| d.to_string()).collect::<Vec<_>>(),
        ["192.168.5.3"]
    );
    let console_value = |key: &str| {
        out.console
            .lines()
            .find_map(|l| l.trim().strip_prefix(key))
            .map(|v| v.trim().to_string())
    };
    assert_eq!(
        console_value("LIMANET-SHA="),
        Some(PatternReader::new(21, SIZE).sha256()),
        "{}",
        out.console
    );
    assert_eq!(
        console_value("LIMANET-RESOLV=").as_deref(),
        Some("nameserver 192.168.5.3"),
        "{}",
        out.console
    );
    // The name only the stub knows really went upstream.
    assert!(env.stub.count(STUB_NAME) > 0, "{}", out.console);
}

#[test]
fn qemu_stream_guest_dhcp_fetch_dns_ping() {
    let env = Env::new("qstream");
    let sock = env.dir.join("qemu.sock");
    let sock_s = sock.to_string_lossy().into_owned();
    guest_on(
        &env,
        &["--listen-qemu", &sock_s],
        &sock,
        &format!("stream,server=off,addr.type=unix,addr.path={sock_s}"),
    );
}

#[test]
fn qemu_dgram_guest_dhcp_fetch_dns_ping() {
    let env = Env::new("qdgram");
    let sock = env.dir.join("limanet.dgram");
    let sock_s = sock.to_string_lossy().into_owned();
    let local = env.dir.join("qemu.dgram");
    guest_on(
        &env,
        &["--listen-dgram", &sock_s],
        &sock,
        &format!(
            "dgram,local.type=unix,local.path={},remote.type=unix,remote.path={sock_s}",
            local.display()
        ),
    );
}
