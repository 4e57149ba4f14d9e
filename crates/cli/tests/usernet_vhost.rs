//! `limanet usernet --listen-vhost-user` with real busybox guests under QEMU (TCG, direct kernel
//! boot, guest RAM in a shared memfd): DHCP gives 192.168.5.15, the guest moves 64 MiB each way
//! to a server on the host's 127.0.0.1 through 192.168.5.2 (checksums compared), resolves
//! `host.lima.internal` and a forwarded name through 192.168.5.3, and negotiates offloads.
//! Then QEMU is killed and a second QEMU connects to the same socket and works. Everything
//! runs inside a private test host (see usernet_support).

mod usernet_support;

use std::io::Read;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use limanet_testkit::checksum::PatternReader;
use limanet_testkit::servers::HttpServer;
use limanet_testkit::{wait_for, GuestOutput, QemuGuest, QemuOptions};
use usernet_support::*;

const BIG: u64 = 64 << 20;
const SMALL: u64 = 300_000;

/// QEMU options for a guest on the vhost-user socket `sock`.
fn vhost_guest(env: &Env, sock: &Path, script: String) -> QemuOptions {
    vhost_guest_with(env, sock, script, "")
}

/// [`vhost_guest`] with extra `virtio-net-pci` properties.
fn vhost_guest_with(env: &Env, sock: &Path, script: String, props: &str) -> QemuOptions {
    // QEMU 7.2 under TCG crashes starting vhost on an MSI-X virtio-net (SIGSEGV in
    // msix_set_vector_notifiers); legacy interrupts work.
    let props = if props.is_empty() {
        "vectors=0".to_string()
    } else {
        format!("vectors=0,{props}")
    };
    QemuOptions {
        script,
        timeout: Duration::from_secs(240),
        netns: Some(env.th.host.name().to_string()),
        shared_memory: true,
        ..Default::default()
    }
    .with_nic_args(
        &["-chardev", &format!("socket,id=c0,path={}", sock.display())],
        "vhost-user,chardev=c0",
        &props,
        None,
    )
}

fn console_value(out: &str, key: &str) -> Option<String> {
    out.lines()
        .find_map(|l| l.trim().strip_prefix(key))
        .map(|v| v.trim().to_string())
}

fn sha_of_zeros(n: u64) -> String {
    let (hash, _) =
        limanet_testkit::checksum::sha256_reader(std::io::repeat(0).take(n)).expect("hash");
    hash
}

#[test]
fn vhost_user_guest_transfers_resolves_and_reconnects() {
    let env = Env::new("qvhost");
    let http =
        HttpServer::start(&env.th.host, SocketAddr::from(([127, 0, 0, 1], 0)), None).expect("http");
    let port = http.addr().port();
    let sock = env.dir.join("vhost.sock");
    let daemon = env.usernet_daemon(|cmd| {
        cmd.arg("--listen-vhost-user")
            .arg(&sock)
            .args(["--instance", "qemu"]);
    });
    assert!(sock.exists(), "{} missing", sock.display());

    // First guest: 64 MiB down, 64 MiB up (the upload is the server's own pattern, fetched
    // and sent back at once, so both directions run together), DNS; then it idles until killed.
    let script = format!(
        "wget -q -O - 'http://192.168.5.2:{port}/bytes/{BIG}?seed=31' | sha256sum > /tmp/down || exit 10\n\
         echo LIMANET-DOWN=$(cut -d' ' -f1 /tmp/down)\n\
         {{ printf 'POST /upload HTTP/1.0\\r\\nContent-Length: {BIG}\\r\\n\\r\\n'; \
            wget -q -O - 'http://192.168.5.2:{port}/bytes/{BIG}?seed=32'; }} \
            | nc 192.168.5.2 {port} > /tmp/up || exit 11\n\
         echo LIMANET-UP=$(tail -n 1 /tmp/up)\n\
         dd if=/dev/zero bs=65536 count=1024 2>/dev/null | {{ printf 'POST /zeros HTTP/1.0\\r\\nContent-Length: {BIG}\\r\\n\\r\\n'; cat; }} \
            | nc 192.168.5.2 {port} > /tmp/zeros || exit 12\n\
         echo LIMANET-ZEROS=$(tail -n 1 /tmp/zeros)\n\
         nslookup host.lima.internal 192.168.5.3 > /tmp/ns1 2>&1; cat /tmp/ns1\n\
         grep -q 192.168.5.2 /tmp/ns1 || exit 13\n\
         nslookup {STUB_NAME} > /tmp/ns2 2>&1; cat /tmp/ns2\n\
         grep -q '{STUB_ADDR}' /tmp/ns2 || exit 14\n\
         echo LIMANET-FIRST-DONE\n\
         sleep 600\n"
    );
    let mut first = QemuGuest::start(&vhost_guest(&env, &sock, script)).expect("start guest");
    let finished = wait_for("the first guest's tests", Duration::from_secs(240), || {
        first.console().contains("LIMANET-FIRST-DONE") || first.has_exited()
    });
    let console = first.console();
    if finished.is_err() || !console.contains("LIMANET-FIRST-DONE") {
        panic!(
            "first guest failed:\n{console}\n----- qemu stderr -----\n{}\n{}",
            first.stderr(),
            daemon.logs()
        );
    }
    // Killed, not shut down: QEMU just disappears from the socket.
    drop(first);
    assert!(console.contains("ip=192.168.5.15"), "{console}");
    assert_eq!(
        console_value(&console, "LIMANET-DOWN="),
        Some(PatternReader::new(31, BIG).sha256()),
        "{console}"
    );
    assert_eq!(
        console_value(&console, "LIMANET-UP="),
        Some(PatternReader::new(32, BIG).sha256()),
        "{console}"
    );
    assert_eq!(
        console_value(&console, "LIMANET-ZEROS="),
        Some(sha_of_zeros(BIG)),
        "{console}"
    );
    assert!(env.stub.count(STUB_NAME) > 0, "{console}");
    // The guest's virtio-net took the offloads (checksum and TSO both ways).
    let logs = daemon.logs();
    assert!(
        logs.contains("guest negotiated its features") && logs.contains("offloads=true"),
        "{logs}"
    );
    if let Err(e) = wait_for(
        "the killed guest's port to go",
        Duration::from_secs(20),
        || daemon.logs().contains("guest disconnected"),
    ) {
        panic!("{e}\n{}", daemon.logs());
    }

    // Second QEMU on the same socket: a fresh connection, lease and transfer.
    let script = format!(
        "wget -q -O /tmp/data 'http://192.168.5.2:{port}/bytes/{SMALL}?seed=33' || exit 10\n\
         echo LIMANET-SHA=$(sha256sum /tmp/data | cut -d' ' -f1)\n\
         nslookup host.lima.internal 192.168.5.3 > /tmp/ns1 2>&1; cat /tmp/ns1\n\
         grep -q 192.168.5.2 /tmp/ns1 || exit 13\n"
    );
    let out: GuestOutput =
        QemuGuest::spawn(&vhost_guest(&env, &sock, script)).expect("run second guest");
    if let Err(e) = out.check() {
        panic!("second guest failed: {e}\n{}", daemon.logs());
    }
    let lease = out
        .parsed_lease()
        .unwrap_or_else(|| panic!("no lease\n{}", out.console));
    assert_eq!(lease.ip.to_string(), "192.168.5.15", "{}", out.console);
    assert_eq!(
        console_value(&out.console, "LIMANET-SHA="),
        Some(PatternReader::new(33, SMALL).sha256()),
        "{}",
        out.console
    );
    let logs = daemon.logs();
    assert!(logs.contains("#2"), "second connection not seen:\n{logs}");
}

#[test]
fn vhost_user_guest_on_a_user_v2_network() {
    let env = Env::new("qvhostv2");
    let http =
        HttpServer::start(&env.th.host, SocketAddr::from(([127, 0, 0, 1], 0)), None).expect("http");
    let port = http.addr().port();
    let sock = env.dir.join("vhost-v2.sock");
    let daemon = env.usernet_daemon(|cmd| {
        cmd.args(["--mode", "user-v2", "--listen-vhost-user"])
            .arg(&sock);
    });
    // user-v2: the gateway (.2) also serves DNS, the first guest gets .1.
    let script = format!(
        "wget -q -O /tmp/data 'http://192.168.5.2:{port}/bytes/{SMALL}?seed=34' || exit 10\n\
         echo LIMANET-SHA=$(sha256sum /tmp/data | cut -d' ' -f1)\n\
         nslookup host.lima.internal 192.168.5.2 > /tmp/ns1 2>&1; cat /tmp/ns1\n\
         grep -q 192.168.5.2 /tmp/ns1 || exit 13\n"
    );
    let out = QemuGuest::spawn(&vhost_guest(&env, &sock, script)).expect("run guest");
    if let Err(e) = out.check() {
        panic!("guest failed: {e}\n{}", daemon.logs());
    }
    let lease = out
        .parsed_lease()
        .unwrap_or_else(|| panic!("no lease\n{}", out.console));
    assert_eq!(lease.ip.to_string(), "192.168.5.1", "{}", out.console);
    assert_eq!(
        console_value(&out.console, "LIMANET-SHA="),
        Some(PatternReader::new(34, SMALL).sha256()),
        "{}",
        out.console
    );
}

#[test]
fn vhost_user_guest_without_offloads_gets_plain_frames() {
    let env = Env::new("qvhostplain");
    let http =
        HttpServer::start(&env.th.host, SocketAddr::from(([127, 0, 0, 1], 0)), None).expect("http");
    let port = http.addr().port();
    let sock = env.dir.join("vhost.sock");
    let daemon = env.usernet_daemon(|cmd| {
        cmd.arg("--listen-vhost-user").arg(&sock);
    });
    // The guest's driver takes neither partial checksums nor super-segments, nor mergeable
    // buffers: limanet must segment and checksum what it sends (the guest's TCP would
    // otherwise stall on dropped frames), one frame per receive buffer.
    const SIZE: u64 = 8 << 20;
    let script = format!(
        "wget -q -O - 'http://192.168.5.2:{port}/bytes/{SIZE}?seed=35' | sha256sum > /tmp/down || exit 10\n\
         echo LIMANET-DOWN=$(cut -d' ' -f1 /tmp/down)\n\
         {{ printf 'POST /upload HTTP/1.0\\r\\nContent-Length: {SIZE}\\r\\n\\r\\n'; \
            wget -q -O - 'http://192.168.5.2:{port}/bytes/{SIZE}?seed=36'; }} \
            | nc 192.168.5.2 {port} > /tmp/up || exit 11\n\
         echo LIMANET-UP=$(tail -n 1 /tmp/up)\n"
    );
    let out = QemuGuest::spawn(&vhost_guest_with(
        &env,
        &sock,
        script,
        "guest_csum=off,guest_tso4=off,guest_tso6=off,guest_ecn=off,guest_ufo=off,mrg_rxbuf=off",
    ))
    .expect("run guest");
    if let Err(e) = out.check() {
        panic!("guest failed: {e}\n{}", daemon.logs());
    }
    assert_eq!(
        console_value(&out.console, "LIMANET-DOWN="),
        Some(PatternReader::new(35, SIZE).sha256()),
        "{}",
        out.console
    );
    assert_eq!(
        console_value(&out.console, "LIMANET-UP="),
        Some(PatternReader::new(36, SIZE).sha256()),
        "{}",
        out.console
    );
    let logs = daemon.logs();
    assert!(
        logs.contains("guest negotiated its features") && logs.contains("offloads=false"),
        "{logs}"
    );
}
