//! `limanet start --vhost-user` with a real busybox guest under QEMU (TCG), inside a private
//! network namespace: limanet adds the shared memfd backend (sized from the user's `-m`), the
//! vhost-user chardev and netdev, and starts the instance's usernet on `default_vhost.sock`.
//! The guest gets 192.168.5.15, fetches a file from the namespace's 127.0.0.1 through
//! 192.168.5.2 (checksum compared), resolves `lima-<NAME>` and `host.lima.internal`, and its
//! virtio-net negotiates the offloads. `limanet stop` leaves no process and no socket behind.
//! Command lines limanet cannot share memory for are refused before anything starts.

mod instance_support;

use instance_support::{alive, eventually, read_pid, Home};
use limanet_testkit::checksum::PatternReader;
use limanet_testkit::servers::HttpServer;
use limanet_testkit::{Netns, QemuGuest, QemuOptions};
use std::process::Command;
use std::time::Duration;

const SIZE: u64 = 2_000_000;

#[test]
fn vhost_user_guest_gets_its_lease_reaches_host_loopback_and_stops_clean() {
    let ns = Netns::new("instvh").expect("netns");
    ns.set_etc("resolv.conf", "nameserver 127.0.0.1\n")
        .expect("resolv.conf");
    let http = HttpServer::start(&ns, "127.0.0.1:0".parse().expect("addr"), None).expect("http");
    let port = http.addr().port();
    let script = format!(
        "echo LIMANET-MAC=$(cat /sys/class/net/eth0/address)\n\
         wget -q -O /tmp/data 'http://192.168.5.2:{port}/bytes/{SIZE}?seed=41' || exit 10\n\
         echo LIMANET-SHA=$(sha256sum /tmp/data | cut -d' ' -f1)\n\
         nslookup lima-vh 192.168.5.3 > /tmp/ns 2>&1; cat /tmp/ns\n\
         grep -q 192.168.5.15 /tmp/ns || exit 11\n\
         nslookup host.lima.internal 192.168.5.3 > /tmp/ns 2>&1; cat /tmp/ns\n\
         grep -q 192.168.5.2 /tmp/ns || exit 12\n\
         echo LIMANET-VHOST-DONE\n\
         sleep 600\n"
    );
    let guest = QemuGuest::command(&QemuOptions {
        script,
        timeout: Duration::from_secs(300),
        ..Default::default()
    })
    .expect("guest command");

    let h = Home::new("vhost");
    let out = Command::new("ip")
        .args(["netns", "exec", ns.name(), env!("CARGO_BIN_EXE_limanet")])
        .args(["start", "vh", "--vhost-user", "--"])
        .args(&guest.argv)
        .env("LIMA_HOME", &h.dir)
        .env("LIMANET_LOG", "info")
        .output()
        .expect("limanet start");
    assert!(
        out.status.success(),
        "limanet start failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        h.logs()
    );
    let summary = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(summary.contains("usernet (vhost-user)"), "{summary}");
    let state = h.state("vh");
    let argv = state["full_argv"].to_string();
    let sock = h.dir.join("vh/default_vhost.sock");
    for want in [
        "memory-backend-memfd,id=limanet-mem,size=268435456,share=on".to_owned(),
        "memory-backend=limanet-mem".to_owned(),
        format!("socket,id=chr-net0,path={}", sock.display()),
        "vhost-user,id=net0,chardev=chr-net0".to_owned(),
        // TCG: no MSI-X (QEMU 7.2 crashes starting vhost on it).
        ",vectors=0".to_owned(),
    ] {
        assert!(argv.contains(&want), "{want} missing in {argv}");
    }
    assert!(!h.dir.join("vh/default_qemu.sock").exists());
    assert!(sock.exists(), "{} missing", sock.display());
    let own = read_pid(&h.dir.join("vh/usernet.pid")).expect("instance usernet pid");
    let qemu = h.qemu_pid("vh");
    let eth0_mac = state["nics"][0]["mac"]
        .as_str()
        .unwrap_or_default()
        .to_owned();

    let console = || std::fs::read_to_string(h.dir.join("vh/qemu.stdout.log")).unwrap_or_default();
    let done = eventually(Duration::from_secs(240), || {
        let c = console();
        c.contains("LIMANET-VHOST-DONE") || c.contains("LIMANET-TEST-EXIT=")
    });
    let c = console();
    assert!(
        done && c.contains("LIMANET-VHOST-DONE"),
        "guest failed\n{c}\n{}",
        h.logs()
    );
    assert!(c.contains("LIMANET-LEASE ip=192.168.5.15 "), "{c}");
    assert!(c.contains("router=192.168.5.2"), "{c}");
    assert!(c.contains(&format!("LIMANET-MAC={eth0_mac}")), "{c}");
    let sha = c
        .lines()
        .find_map(|l| l.trim().strip_prefix("LIMANET-SHA="))
        .map(str::to_owned);
    assert_eq!(sha, Some(PatternReader::new(41, SIZE).sha256()), "{c}");
    let logs = h.logs();
    assert!(
        logs.contains("guest negotiated its features") && logs.contains("offloads=true"),
        "{logs}"
    );

    // Stop: QEMU, the usernet and its vhost-user socket all go.
    h.ok(&["stop", "vh"]);
    assert_eq!(h.state("vh")["status"], "stopped");
    assert!(
        eventually(Duration::from_secs(10), || !alive(own) && !alive(qemu)),
        "usernet or QEMU still running after stop"
    );
    assert!(!sock.exists(), "{} left behind", sock.display());
    assert!(!h.dir.join("vh/usernet.pid").exists());
    assert!(!h.dir.join("vh/qemu.pid").exists());
}

#[test]
fn vhost_user_refuses_what_it_cannot_share() {
    let h = Home::new("vhostno");
    let qemu = ["--", "qemu-system-x86_64", "-accel", "tcg"];
    let fails = |extra: &[&str]| {
        let mut args = vec!["start", "vx", "--vhost-user"];
        args.extend(extra);
        h.fails(&args)
    };
    let err = fails(&qemu);
    assert!(err.contains("add `-m SIZE`"), "{err}");
    let err = fails(&[&qemu[..], &["-m", "1G,maxmem=4G"]].concat());
    assert!(err.contains("maxmem"), "{err}");
    let err = fails(&[&qemu[..], &["-m", "1G", "-numa", "node"]].concat());
    assert!(err.contains("`-numa` conflicts"), "{err}");
    let err = fails(&[&qemu[..], &["-m", "1G", "-machine", "memory-backend=m"]].concat());
    assert!(err.contains("memory-backend="), "{err}");
    // user-v2 eth0: the shared daemon cannot serve it over vhost-user.
    let mut args = vec!["start", "vx", "--vhost-user", "--network", "lima:user-v2"];
    args.extend(&qemu);
    args.extend(["-m", "1G"]);
    let err = h.fails(&args);
    assert!(err.contains("user-v2"), "{err}");
    // Nothing started, nothing left.
    assert!(!h.dir.join("vx/usernet.pid").exists());
    assert!(!h.dir.join("vx/default_vhost.sock").exists());
}
