//! `limanet start` of a real busybox guest under QEMU (TCG), inside a private network namespace
//! (only `lo`), so nothing reaches the machine's real network: the guest must get 192.168.5.15
//! on eth0 from the instance's own user-mode network, with Lima's eth0 MAC, fetch a file from a
//! server on the namespace's 127.0.0.1 through 192.168.5.2 and resolve `lima-<NAME>`. When the
//! guest powers off, the supervisor notices and cleans up. With `--network lima:user-v2` the
//! guest's only NIC, eth0, is on the shared user-v2 network instead (as in Lima).

mod instance_support;

use instance_support::{alive, cmdline, eventually, read_pid, Home};
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

/// Lima's user-v2 contract end to end (`hack/test-templates.sh` pings `lima-<NAME>.internal`):
/// guests started with `--network lima:user-v2` have it as eth0 (their only NIC) and share one
/// daemon; `limanet start` registers each through the API, so `limanet list` shows the lease,
/// a `--forward` reaches the guest, and the second guest resolves and pings the first by
/// `lima-v2a.internal` and resolves its own `--host` entry. When the last one stops, the daemon's leases are saved to
/// `leases.json`; after a restart the second guest gets its old address back first, and the
/// first address stays reserved for the first guest.
#[test]
fn user_v2_eth0_guests_are_registered_and_keep_their_leases() {
    let ns = Netns::new("inst2").expect("netns");
    ns.set_etc("resolv.conf", "nameserver 127.0.0.1\n")
        .expect("resolv.conf");
    let one_nic = "[ ! -e /sys/class/net/eth1 ] || exit 12\n";
    let server = QemuGuest::command(&QemuOptions {
        script: format!(
            "{one_nic}echo LIMANET-MAC=$(cat /sys/class/net/eth0/address)\n\
             mkdir -p /www && echo LIMANET-HTTP-OK > /www/index.html\n\
             httpd -p 8080 -h /www\necho LIMANET-WAITING\nsleep 300\n"
        ),
        timeout: Duration::from_secs(400),
        ..Default::default()
    })
    .expect("guest 1");
    let h = Home::new("qemu2");
    let http_port = ns
        .run_in(|| {
            std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .map(|a| a.port())
        })
        .expect("netns")
        .expect("free port");
    let start = |name: &str, extra: &[String], argv: &[String]| {
        let out = Command::new("ip")
            .args(["netns", "exec", ns.name(), env!("CARGO_BIN_EXE_limanet")])
            .args(["start", name, "--network", "lima:user-v2"])
            .args(extra)
            .arg("--")
            .args(argv)
            .env("LIMA_HOME", &h.dir)
            .env("LIMANET_LOG", "info")
            .output()
            .expect("limanet start");
        assert!(
            out.status.success(),
            "limanet start {name} failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            h.logs()
        );
    };
    let stop = |name: &str| {
        let out = Command::new(env!("CARGO_BIN_EXE_limanet"))
            .args(["stop", name])
            .env("LIMA_HOME", &h.dir)
            .output()
            .expect("limanet stop");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let console = |name: &str| {
        std::fs::read_to_string(h.dir.join(name).join("qemu.stdout.log")).unwrap_or_default()
    };
    let listed_ip = |name: &str| {
        h.list()
            .get(name)
            .and_then(|r| r["addresses"][0]["ip"].as_str().map(str::to_owned))
    };
    let lease = |text: &str| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix("LIMANET-LEASE ip="))
            .and_then(|rest| rest.split_whitespace().next())
            .map(str::to_owned)
    };

    start(
        "v2a",
        &[
            "--forward".to_owned(),
            format!("tcp:127.0.0.1:{http_port}:8080"),
        ],
        &server.argv,
    );
    let daemon = read_pid(&h.user_v2_pid_file()).expect("user-v2 daemon pid");
    let a_mac = h.state("v2a")["nics"][0]["mac"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    // Registered: the lease for eth0's MAC, read back through the API, is in `limanet list`.
    let registered = eventually(Duration::from_secs(120), || {
        listed_ip("v2a").as_deref() == Some("192.168.104.1")
    });
    assert!(
        registered,
        "v2a's address never reached `limanet list`\n{}\n{}",
        console("v2a"),
        h.logs()
    );
    // The --forward was exposed through the API: the host port reaches the guest's httpd.
    assert!(
        eventually(Duration::from_secs(60), || console("v2a")
            .contains("LIMANET-WAITING")),
        "{}",
        console("v2a")
    );
    // gvisor's lowest-free allocation with the gateway at .2: the first guest gets .1, on eth0.
    assert_eq!(lease(&console("v2a")).as_deref(), Some("192.168.104.1"));
    let url = format!("http://127.0.0.1:{http_port}/index.html");
    assert!(
        console("v2a").contains(&format!("LIMANET-MAC={a_mac}")),
        "{}",
        console("v2a")
    );
    let fetched = eventually(Duration::from_secs(20), || {
        ns.run("curl", &["-s", "-m", "3", &url])
            .is_ok_and(|body| body.contains("LIMANET-HTTP-OK"))
    });
    assert!(fetched, "forward to v2a:8080 did not work\n{}", h.logs());

    // The guest's own `--host` names are registered by its supervisor once it sees the lease,
    // so right after DHCP they may not resolve yet: the guest retries, as cloud-init would.
    let client = QemuGuest::command(&QemuOptions {
        script: format!(
            "{one_nic}nslookup lima-v2a.internal 192.168.104.2 > /tmp/ns 2>&1; cat /tmp/ns\n\
             grep -q 192.168.104.1 /tmp/ns || exit 13\n\
             nslookup host.lima.internal 192.168.104.2 | grep -q 192.168.104.2 || exit 14\n\
             i=0\n\
             until nslookup db.test 192.168.104.2 | grep -q 10.1.2.3; do i=$((i+1)); [ $i -lt 30 ] || exit 16; sleep 1; done\n\
             i=0\n\
             until ping -c 1 -W 1 lima-v2a.internal > /dev/null 2>&1; do i=$((i+1)); [ $i -lt 30 ] || exit 15; done\n\
             echo LIMANET-PING-OK\n"
        ),
        timeout: Duration::from_secs(150),
        ..Default::default()
    })
    .expect("guest 2");
    start(
        "v2b",
        &["--host".to_owned(), "db.test=10.1.2.3".to_owned()],
        &client.argv,
    );
    // The second instance reuses the running daemon.
    assert_eq!(read_pid(&h.user_v2_pid_file()), Some(daemon));
    let done = eventually(Duration::from_secs(150), || {
        h.state("v2b")["status"] == "stopped"
    });
    let b = console("v2b");
    assert!(done, "second guest did not finish\n{b}\n{}", h.logs());
    assert!(
        b.contains("LIMANET-PING-OK") && b.contains("LIMANET-TEST-EXIT=0"),
        "{b}\n{}",
        h.logs()
    );
    let b_ip = lease(&b).unwrap_or_default();
    assert!(
        b_ip.starts_with("192.168.104.") && b_ip != "192.168.104.1",
        "{b}"
    );
    let b_mac = h.state("v2b")["nics"][0]["mac"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    // The first guest still runs, so the network does too.
    assert!(alive(daemon));

    // The last instance stops: the leases are saved, then the daemon stops.
    stop("v2a");
    assert_eq!(h.state("v2a")["status"], "stopped");
    // Its forward was unexposed while the daemon still ran.
    assert!(
        h.logs()
            .contains(&format!("unexposed tcp 127.0.0.1:{http_port}")),
        "{}",
        h.logs()
    );
    assert!(
        eventually(Duration::from_secs(10), || !alive(daemon)),
        "the user-v2 daemon must stop after both guests"
    );
    let saved = std::fs::read_to_string(h.dir.join("_networks/user-v2/leases.json"))
        .unwrap_or_else(|e| panic!("leases.json: {e}\n{}", h.logs()));
    let saved: std::collections::BTreeMap<String, String> =
        serde_json::from_str(&saved).expect("leases.json is {ip: mac}");
    assert_eq!(saved.get("192.168.104.1"), Some(&a_mac), "{saved:?}");
    assert_eq!(saved.get(&b_ip), Some(&b_mac), "{saved:?}");

    // After a restart the second guest comes first: it gets its own address back, not .1.
    let again = QemuGuest::command(&QemuOptions {
        script: one_nic.to_owned(),
        timeout: Duration::from_secs(150),
        ..Default::default()
    })
    .expect("guest 2 again");
    start("v2b", &[], &again.argv);
    let daemon2 = read_pid(&h.user_v2_pid_file()).expect("restarted daemon");
    assert!(
        cmdline(daemon2).contains("--leases "),
        "{}",
        cmdline(daemon2)
    );
    let done = eventually(Duration::from_secs(150), || {
        h.state("v2b")["status"] == "stopped"
    });
    assert!(done, "{}", console("v2b"));
    assert_eq!(
        lease(&console("v2b")),
        Some(b_ip.clone()),
        "{}",
        console("v2b")
    );
    // And the first guest gets .1 again.
    start("v2a", &[], &server.argv);
    // (`limanet list` would show the saved lease anyway: ask the guest.)
    let back = eventually(Duration::from_secs(120), || {
        console("v2a").contains("LIMANET-WAITING")
    });
    assert!(back, "{}\n{}", console("v2a"), h.logs());
    assert_eq!(lease(&console("v2a")).as_deref(), Some("192.168.104.1"));
    stop("v2a");
}
