//! `limanet start` of a real busybox guest under QEMU (TCG), inside a private network namespace
//! (only `lo`), so nothing reaches the machine's real network: the guest must get 192.168.5.15
//! on eth0 from the instance's own user-mode network, with Lima's eth0 MAC, fetch a file from a
//! server on the namespace's 127.0.0.1 through 192.168.5.2 and resolve `lima-<NAME>`. When the
//! guest powers off, the supervisor notices and cleans up. With `--network lima:user-v2` the
//! guest's only NIC, eth0, is on the shared user-v2 network instead (as in Lima).

mod instance_support;

use instance_support::{alive, eventually, read_pid, Home};
use limanet_testkit::servers::HttpServer;
use limanet_testkit::{Netns, QemuGuest, QemuOptions};
use std::process::Command;
use std::time::Duration;

#[test]
fn busybox_guest_gets_192_168_5_15_and_reaches_host_loopback() {
    let ns = Netns::new("inst").expect("netns");
    // Upstream DNS for the embedded resolver: nothing (only names limanet knows are asked).
    ns.set_etc("resolv.conf", "nameserver 127.0.0.1\n")
        .expect("resolv.conf");
    let http = HttpServer::start(&ns, "127.0.0.1:0".parse().expect("addr"), None).expect("http");
    let port = http.addr().port();
    let script = format!(
        "echo LIMANET-MAC=$(cat /sys/class/net/eth0/address)\n\
         wget -q -O /tmp/data http://192.168.5.2:{port}/bytes/100000?seed=5 || exit 10\n\
         echo LIMANET-BYTES=$(wc -c < /tmp/data)\n\
         nslookup lima-g1 192.168.5.3 > /tmp/ns 2>&1; cat /tmp/ns\n\
         grep -q 192.168.5.15 /tmp/ns || exit 11\n"
    );
    let guest = QemuGuest::command(&QemuOptions {
        script,
        timeout: Duration::from_secs(120),
        ..Default::default()
    })
    .expect("guest command");

    let h = Home::new("qemu");
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            ns.name(),
            env!("CARGO_BIN_EXE_limanet"),
            "start",
            "g1",
            "--",
        ])
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
    let state = h.state("g1");
    let eth0_mac = state["nics"][0]["mac"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let argv = state["full_argv"].to_string();
    // QEMU 7.2 has the stream netdev: QEMU connects to the instance's usernet itself.
    assert!(
        argv.contains("stream,id=net0,server=off,addr.type=unix,addr.path="),
        "{argv}"
    );
    let own = read_pid(&h.dir.join("g1/usernet.pid")).expect("instance usernet pid");

    // The guest runs its script and powers off; the supervisor records that.
    let stopped = eventually(Duration::from_secs(150), || {
        h.state("g1")["status"] == "stopped"
    });
    let console = std::fs::read_to_string(h.dir.join("g1/qemu.stdout.log")).unwrap_or_default();
    assert!(stopped, "guest did not finish\n{console}\n{}", h.logs());
    assert!(
        console.contains("LIMANET-LEASE ip=192.168.5.15 "),
        "{console}"
    );
    assert!(console.contains("router=192.168.5.2"), "{console}");
    assert!(
        console.contains(&format!("LIMANET-MAC={eth0_mac}")),
        "{console}"
    );
    assert!(console.contains("LIMANET-BYTES=100000"), "{console}");
    assert!(
        console.contains("LIMANET-TEST-EXIT=0"),
        "{console}\n{}",
        h.logs()
    );
    let state = h.state("g1");
    assert!(
        state["exit"]
            .as_str()
            .unwrap_or_default()
            .contains("exit status: 0"),
        "{state}"
    );
    assert!(!alive(own), "instance usernet must stop when QEMU exits");
}

/// Lima's user-v2 check (`hack/test-templates.sh`, by address until names are registered
/// through the API): two guests started with `--network lima:user-v2` share one daemon; the
/// first gets network+1, the second reaches it; `limanet stop` ends the first guest, and the
/// daemon stops after both are gone.
#[test]
fn two_guests_on_one_user_v2_network_reach_each_other() {
    let ns = Netns::new("inst2").expect("netns");
    ns.set_etc("resolv.conf", "nameserver 127.0.0.1\n")
        .expect("resolv.conf");
    // user-v2 is eth0 (leased by the guest's boot DHCP); there is no other NIC.
    let dhcp = "[ ! -e /sys/class/net/eth1 ] || exit 12\n";
    let first = QemuGuest::command(&QemuOptions {
        script: format!("{dhcp}echo LIMANET-WAITING\nsleep 300\n"),
        timeout: Duration::from_secs(400),
        ..Default::default()
    })
    .expect("guest 1");
    let h = Home::new("qemu2");
    let start = |name: &str, argv: &[String]| {
        let out = Command::new("ip")
            .args(["netns", "exec", ns.name(), env!("CARGO_BIN_EXE_limanet")])
            .args(["start", name, "--network", "lima:user-v2", "--"])
            .args(argv)
            .env("LIMA_HOME", &h.dir)
            .output()
            .expect("limanet start");
        assert!(
            out.status.success(),
            "limanet start {name} failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            h.logs()
        );
    };
    let console = |name: &str| {
        std::fs::read_to_string(h.dir.join(name).join("qemu.stdout.log")).unwrap_or_default()
    };
    let user_v2_lease = |text: &str| {
        text.lines()
            .filter_map(|l| l.trim().strip_prefix("LIMANET-LEASE ip="))
            .filter(|rest| rest.starts_with("192.168.104."))
            .find_map(|rest| rest.split_whitespace().next())
            .map(str::to_owned)
    };

    start("v2a", &first.argv);
    let daemon = read_pid(&h.user_v2_pid_file()).expect("user-v2 daemon pid");
    let waiting = eventually(Duration::from_secs(120), || {
        console("v2a").contains("LIMANET-WAITING")
    });
    assert!(
        waiting,
        "first guest did not get its user-v2 lease\n{}\n{}",
        console("v2a"),
        h.logs()
    );
    let a_ip = user_v2_lease(&console("v2a"));
    // gvisor's lowest-free allocation with the gateway at .2: the first guest gets .1.
    assert_eq!(a_ip.as_deref(), Some("192.168.104.1"), "{}", console("v2a"));

    let second = QemuGuest::command(&QemuOptions {
        script: format!(
            "{dhcp}i=0\n\
             until ping -c 1 -W 1 192.168.104.1 > /dev/null 2>&1; do i=$((i+1)); [ $i -lt 60 ] || exit 13; done\n\
             echo LIMANET-PING-OK\n"
        ),
        timeout: Duration::from_secs(150),
        ..Default::default()
    })
    .expect("guest 2");
    start("v2b", &second.argv);
    // The second instance reuses the running daemon.
    assert_eq!(read_pid(&h.user_v2_pid_file()), Some(daemon));
    let done = eventually(Duration::from_secs(150), || {
        h.state("v2b")["status"] == "stopped"
    });
    let b = console("v2b");
    assert!(done, "second guest did not finish\n{b}\n{}", h.logs());
    assert!(
        b.contains("LIMANET-PING-OK") && b.contains("LIMANET-TEST-EXIT=0"),
        "{b}"
    );
    let b_ip = user_v2_lease(&b).unwrap_or_default();
    assert!(
        b_ip.starts_with("192.168.104.") && b_ip != "192.168.104.1",
        "{b}"
    );
    // The first guest still runs, so the network does too.
    assert!(alive(daemon));

    let out = Command::new(env!("CARGO_BIN_EXE_limanet"))
        .args(["stop", "v2a"])
        .env("LIMA_HOME", &h.dir)
        .output()
        .expect("limanet stop");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(h.state("v2a")["status"], "stopped");
    assert!(
        eventually(Duration::from_secs(10), || !alive(daemon)),
        "the user-v2 daemon must stop after both guests"
    );
}
