//! `limanet vmnet` end to end, inside a testkit `TestHost`: the daemon runs in the test's private
//! "host" namespace (so its bridge, TAP, nftables table and sysctls never touch the machine), and
//! "VMs" are network namespaces put on the network with `limanet attach`.

mod vmnet_support;

use limanet_testkit::{ChildGuard, Netns, TestHost};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;
use vmnet_support::*;

fn names(dir: &Dir) -> limanet_vmnet::backend::Names {
    limanet_vmnet::backend::Names::for_socket(&dir.sock())
}

fn echo_roundtrip(from: &Netns, to: SocketAddr) {
    let got = from
        .run_in(move || {
            let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(5))?;
            s.write_all(b"hello vmnet")?;
            s.shutdown(std::net::Shutdown::Write)?;
            let mut buf = Vec::new();
            s.read_to_end(&mut buf)?;
            Ok::<_, std::io::Error>(buf)
        })
        .expect("run_in")
        .unwrap_or_else(|e| panic!("TCP to {to}: {e}"));
    assert_eq!(got, b"hello vmnet");
}

fn link_exists(ns: &Netns, name: &str) -> bool {
    ns.run("ip", &["link", "show", name]).is_ok()
}

fn nft_table_exists(ns: &Netns, table: &str) -> bool {
    ns.run("nft", &["list", "table", "ip", table]).is_ok()
}

fn forwarding(ns: &Netns, iface: &str) -> String {
    ns.run(
        "sysctl",
        &["-n", &format!("net.ipv4.conf.{iface}.forwarding")],
    )
    .unwrap_or_default()
    .trim()
    .to_string()
}

/// Stops the daemon with SIGTERM and checks that nothing of it is left.
fn stop_and_check_clean(th: &TestHost, mut d: ChildGuard, dir: &Dir) -> String {
    d.signal(libc::SIGTERM);
    let status = d
        .wait_timeout(Duration::from_secs(10))
        .expect("daemon exit");
    let logs = d.logs();
    assert!(status.success(), "daemon exit {status:?}\n{logs}");
    assert_clean(th, dir);
    logs
}

fn assert_clean(th: &TestHost, dir: &Dir) {
    let n = names(dir);
    assert!(!link_exists(&th.host, &n.bridge), "bridge left behind");
    assert!(!link_exists(&th.host, &n.tap), "TAP left behind");
    assert!(
        !nft_table_exists(&th.host, &n.table),
        "nftables table left behind"
    );
    assert!(!dir.sock().exists(), "socket left behind");
    assert!(!dir.pid().exists(), "pid file left behind");
    assert!(!n.state_file.exists(), "sysctl state file left behind");
}

fn host_resolv(th: &TestHost) {
    // Upstream DNS of the daemon: a stub address on loopback; the tests only ask for names the
    // daemon answers itself.
    th.host
        .set_etc("resolv.conf", "nameserver 127.0.0.53\n")
        .expect("resolv.conf");
}

/// (CapPrm, CapEff) of the first thread of `pid` whose name is `comm`.
fn thread_caps(pid: u32, comm: &str) -> (u64, u64) {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).expect("tasks");
    for task in tasks {
        let dir = task.expect("task").path();
        let name = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        if name.trim_end() != comm {
            continue;
        }
        let status = std::fs::read_to_string(dir.join("status")).expect("status");
        let field = |key: &str| {
            let line = status
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .expect("cap line");
            u64::from_str_radix(line.trim(), 16).expect("hex")
        };
        return (field("CapPrm:"), field("CapEff:"));
    }
    panic!("no thread {comm} in process {pid}");
}

fn status_field(pid: u32, key: &str) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .expect("status")
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .unwrap_or_else(|| panic!("no {key}"))
        .trim()
        .to_string()
}

/// The daemon's teardown helper (its only child).
fn teardown_helper(pid: u32) -> u32 {
    let children =
        std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).expect("children");
    let helper: u32 = children
        .split_whitespace()
        .next()
        .expect("a teardown helper")
        .parse()
        .expect("pid");
    // It names itself once it runs.
    let named = limanet_testkit::wait_for("teardown helper", Duration::from_secs(5), || {
        std::fs::read_to_string(format!("/proc/{helper}/comm"))
            .is_ok_and(|c| c.trim_end() == "vmnet-teardown")
    });
    assert!(named.is_ok(), "child {helper} is not the teardown helper");
    helper
}

#[test]
fn host_mode_connects_host_and_vms_and_nothing_else() {
    require_root();
    let th = TestHost::new().expect("test host");
    host_resolv(&th);
    let dir = Dir::new("host");
    let d = start_daemon(
        &th.host,
        &dir,
        &[
            "--vmnet-mode=host",
            "--vmnet-gateway=192.168.106.1",
            "--vmnet-dhcp-end=192.168.106.254",
            "--vmnet-mask=255.255.255.0",
        ],
    );
    let mode = std::fs::metadata(dir.sock()).expect("socket");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(mode.permissions().mode() & 0o777, 0o770);
    let pid = std::fs::read_to_string(dir.pid()).expect("pid file");
    assert_eq!(pid, d.id().to_string(), "pid without newline");
    // Capabilities are per thread: the DNS thread keeps none once port 53 is bound, nor does
    // the main thread; the teardown helper only CAP_NET_ADMIN (bit 12). The daemon runs under
    // seccomp (mode 2: filter), the helper does not (it runs nft).
    assert_eq!(thread_caps(d.id(), "limanet-dns"), (0, 0));
    assert_eq!(thread_caps(d.id(), "limanet"), (0, 0));
    assert_eq!(status_field(d.id(), "Seccomp:"), "2");
    assert_eq!(status_field(d.id(), "NoNewPrivs:"), "1");
    let helper = teardown_helper(d.id());
    assert_eq!(thread_caps(helper, "vmnet-teardown"), (1 << 12, 1 << 12));

    let vm1 = attach(&dir.sock(), Some(("192.168.106.10/24", "192.168.106.1")));
    // VM 2 configures itself by DHCP (busybox udhcpc) and asks the gateway's DNS.
    let vm2 = attach(&dir.sock(), None);
    let out = vm2
        .ns
        .run(
            "sh",
            &[
                "-c",
                "busybox udhcpc -i eth0 -n -q -t 5 -T 1 -s /bin/true 2>&1",
            ],
        )
        .unwrap_or_else(|e| panic!("udhcpc: {e}\n{}", d.logs()));
    assert!(
        out.contains("lease of 192.168.106.2 obtained from 192.168.106.1"),
        "{out}"
    );
    vm2.ns
        .run("ip", &["addr", "add", "192.168.106.2/24", "dev", "eth0"])
        .expect("addr");
    let answer = vm2
        .ns
        .run(
            "dig",
            &[
                "+short",
                "+time=2",
                "+tries=2",
                "@192.168.106.1",
                "host.lima.internal",
            ],
        )
        .expect("dig");
    assert_eq!(answer.trim(), "192.168.106.1");
    // The same query from another interface that routes to the gateway address (here the
    // uplink, as another host on the LAN would) gets no answer, over UDP or TCP, although the
    // address itself answers pings there.
    th.internet
        .run(
            "ip",
            &["route", "add", "192.168.106.0/24", "via", "203.0.113.1"],
        )
        .expect("route");
    ping_ok(&th.internet, "192.168.106.1");
    for proto in ["+notcp", "+tcp"] {
        let outside = th.internet.run(
            "dig",
            &[
                proto,
                "+short",
                "+time=1",
                "+tries=1",
                "@192.168.106.1",
                "host.lima.internal",
            ],
        );
        assert!(
            !outside.as_deref().unwrap_or("").contains("192.168.106.1"),
            "DNS answered from the uplink ({proto}): {outside:?}"
        );
    }

    // The host reaches VM addresses directly, TCP included.
    ping_ok(&th.host, "192.168.106.10");
    let server =
        limanet_testkit::servers::TcpEchoServer::start(&vm1.ns, "0.0.0.0:7007".parse().unwrap())
            .expect("server in vm1");
    echo_roundtrip(&th.host, "192.168.106.10:7007".parse().unwrap());
    drop(server);
    // VM to VM, and VM to the host at the gateway.
    ping_ok(&vm2.ns, "192.168.106.10");
    ping_ok(&vm1.ns, "192.168.106.1");
    // Nothing else: the fake internet is not reachable from a host-mode VM.
    assert!(!ping(&vm1.ns, &TestHost::INTERNET_ADDR.to_string()));
    assert_eq!(forwarding(&th.host, &names(&dir).bridge), "0");

    // The host TAP set down (writes fail with EIO) does not end the daemon; traffic resumes.
    let tap = names(&dir).tap;
    th.host
        .run("ip", &["link", "set", &tap, "down"])
        .expect("tap down");
    assert!(!ping(&vm1.ns, "192.168.106.1"));
    th.host
        .run("ip", &["link", "set", &tap, "up"])
        .expect("tap up");
    let up = limanet_testkit::wait_for("ping after tap up", Duration::from_secs(10), || {
        ping(&vm1.ns, "192.168.106.1")
    });
    assert!(up.is_ok(), "{}", d.logs());

    let logs = stop_and_check_clean(&th, d, &dir);
    assert!(logs.contains("vmnet network ready"), "{logs}");
    assert!(logs.contains("link down"), "{logs}");
}

#[test]
fn shared_mode_nats_to_the_outside_and_restores_everything() {
    require_root();
    let th = TestHost::new().expect("test host");
    host_resolv(&th);
    let dir = Dir::new("shared");
    assert_eq!(forwarding(&th.host, &th.host_if), "0");
    let d = start_daemon(
        &th.host,
        &dir,
        &["--vmnet-mode=shared", "--vmnet-gateway=192.168.105.1"],
    );
    assert!(nft_table_exists(&th.host, &names(&dir).table));
    assert_eq!(forwarding(&th.host, &th.host_if), "1");
    let vm = attach(&dir.sock(), Some(("192.168.105.20/24", "192.168.105.1")));

    // A server on the fake internet that reports who connected.
    let listener = th
        .internet
        .run_in(|| TcpListener::bind("0.0.0.0:8080"))
        .expect("run_in")
        .expect("bind");
    let seen = std::thread::spawn(move || {
        let (mut s, peer) = listener.accept().expect("accept");
        let _ = s.write_all(b"ok");
        peer
    });
    let got = vm
        .ns
        .run_in(|| {
            let mut s = TcpStream::connect_timeout(
                &"203.0.113.2:8080".parse().unwrap(),
                Duration::from_secs(5),
            )?;
            let mut buf = Vec::new();
            s.read_to_end(&mut buf)?;
            Ok::<_, std::io::Error>(buf)
        })
        .expect("run_in")
        .unwrap_or_else(|e| panic!("VM to the internet: {e}\n{}", d.logs()));
    assert_eq!(got, b"ok");
    let peer = seen.join().expect("server thread");
    assert_eq!(peer.ip(), std::net::IpAddr::V4(TestHost::HOST_ADDR), "NAT");

    // The outside cannot open connections to the VM.
    th.internet
        .run(
            "ip",
            &["route", "add", "192.168.105.0/24", "via", "203.0.113.1"],
        )
        .expect("route");
    assert!(!ping(&th.internet, "192.168.105.20"));

    stop_and_check_clean(&th, d, &dir);
    assert_eq!(forwarding(&th.host, &th.host_if), "0", "sysctl restored");
}

/// What a daemon may change in `ns` and must put back: forwarding sysctls, nftables tables,
/// interfaces.
fn net_state(ns: &Netns) -> String {
    let forwarding = ns
        .run(
            "sh",
            &["-c", "grep -H . /proc/sys/net/ipv4/conf/*/forwarding"],
        )
        .expect("forwarding sysctls");
    let tables = ns.run("nft", &["list", "tables"]).expect("nft list tables");
    let links = ns
        .run("sh", &["-c", "ip -o link show | cut -d: -f2"])
        .expect("links");
    format!("{forwarding}\n{tables}\n{links}")
}

#[test]
fn two_shared_networks_run_side_by_side_and_stop_independently() {
    require_root();
    let th = TestHost::new().expect("test host");
    host_resolv(&th);
    let before = net_state(&th.host);
    let dir_a = Dir::new("twoA");
    let dir_b = Dir::new("twoB");
    let a = start_daemon(
        &th.host,
        &dir_a,
        &["--vmnet-mode=shared", "--vmnet-gateway=192.168.105.1"],
    );
    let b = start_daemon(
        &th.host,
        &dir_b,
        &["--vmnet-mode=shared", "--vmnet-gateway=192.168.107.1"],
    );
    let vm_a = attach(&dir_a.sock(), Some(("192.168.105.20/24", "192.168.105.1")));
    let vm_b = attach(&dir_b.sock(), Some(("192.168.107.20/24", "192.168.107.1")));
    let server = limanet_testkit::servers::TcpEchoServer::start(
        &th.internet,
        "0.0.0.0:8080".parse().unwrap(),
    )
    .expect("server on the internet");
    let internet: SocketAddr = (TestHost::INTERNET_ADDR, 8080).into();
    echo_roundtrip(&vm_a.ns, internet);
    echo_roundtrip(&vm_b.ns, internet);
    assert_eq!(forwarding(&th.host, &th.host_if), "1");
    // Neither network opens connections into the other (each bridge is guarded by its table).
    assert!(!ping(&vm_a.ns, "192.168.107.20"));
    assert!(!ping(&vm_b.ns, "192.168.105.20"));

    // A stops: B keeps its NAT, the uplink's forwarding and its guard.
    drop(vm_a);
    stop_and_check_clean(&th, a, &dir_a);
    assert_eq!(forwarding(&th.host, &th.host_if), "1", "B still needs it");
    echo_roundtrip(&vm_b.ns, internet);
    th.internet
        .run(
            "ip",
            &["route", "add", "192.168.107.0/24", "via", "203.0.113.1"],
        )
        .expect("route");
    assert!(
        !ping(&th.internet, "192.168.107.20"),
        "outside still kept out"
    );

    // B stops: everything is as before either started.
    drop(vm_b);
    stop_and_check_clean(&th, b, &dir_b);
    drop(server);
    assert_eq!(forwarding(&th.host, &th.host_if), "0", "sysctl restored");
    assert_eq!(net_state(&th.host), before);
}

#[test]
fn bridged_mode_puts_vms_on_the_lan_of_a_plain_nic() {
    bridged(false);
}

#[test]
fn bridged_mode_on_a_host_bridge_also_lets_the_host_reach_vms() {
    bridged(true);
}

/// A VM on the LAN behind `--vmnet-interface`: the test host's veth end itself (packet socket),
/// or a bridge in the test host with that veth end as a port (our TAP joins the bridge).
fn bridged(on_bridge: bool) {
    require_root();
    let th = TestHost::new().expect("test host");
    let dir = Dir::new(if on_bridge { "bridgedbr" } else { "bridged" });
    // The "LAN": a namespace with dnsmasq, joined to the test host by a veth pair. It is also
    // the "other host" that reaches the VM.
    let lan = Netns::new("lan").expect("lan netns");
    let host_end = limanet_testkit::unique_name("vlh");
    let lan_end = limanet_testkit::unique_name("vll");
    th.host
        .run(
            "ip",
            &[
                "link",
                "add",
                &host_end,
                "type",
                "veth",
                "peer",
                "name",
                &lan_end,
                "netns",
                lan.name(),
            ],
        )
        .expect("veth");
    let lan_if = if on_bridge {
        let br = limanet_testkit::unique_name("lanbr");
        th.host
            .run("ip", &["link", "add", &br, "type", "bridge"])
            .expect("bridge");
        th.host
            .run("ip", &["link", "set", &host_end, "master", &br])
            .expect("port");
        th.host.run("ip", &["link", "set", &br, "up"]).expect("up");
        br
    } else {
        host_end.clone()
    };
    th.host
        .run("ip", &["addr", "add", "10.77.0.1/24", "dev", &lan_if])
        .expect("host addr");
    th.host
        .run("ip", &["link", "set", &host_end, "up"])
        .expect("up");
    lan.run("ip", &["addr", "add", "10.77.0.2/24", "dev", &lan_end])
        .expect("lan addr");
    lan.run("ip", &["link", "set", &lan_end, "up"]).expect("up");
    // veth leaves UDP checksums to "hardware"; a packet socket would pass them on unfinished.
    lan.run("ethtool", &["-K", &lan_end, "tx", "off"])
        .expect("ethtool");
    let _dnsmasq = lan
        .spawn(
            "dnsmasq",
            "dnsmasq",
            &[
                "--no-daemon",
                "--conf-file=/dev/null",
                "--no-resolv",
                "--no-hosts",
                "--port=0",
                &format!("--interface={lan_end}"),
                "--dhcp-range=10.77.0.100,10.77.0.150,255.255.255.0,1h",
                "--dhcp-leasefile=/dev/null",
            ],
        )
        .expect("dnsmasq");
    let host_end_flag = format!("--vmnet-interface={lan_if}");
    let d = start_daemon(&th.host, &dir, &["--vmnet-mode=bridged", &host_end_flag]);
    let host_addrs = th
        .host
        .run("ip", &["-br", "addr", "show", &lan_if])
        .expect("ip");
    assert!(
        host_addrs.contains("10.77.0.1/24"),
        "host address untouched: {host_addrs}"
    );

    let vm = attach(&dir.sock(), None);
    let out = vm
        .ns
        .run(
            "sh",
            &[
                "-c",
                "busybox udhcpc -i eth0 -n -q -t 5 -T 2 -s /bin/true 2>&1",
            ],
        )
        .unwrap_or_else(|e| panic!("udhcpc: {e}\n{}", d.logs()));
    let ip = out
        .lines()
        .find_map(|l| {
            l.split("lease of ")
                .nth(1)
                .and_then(|r| r.split_whitespace().next())
        })
        .unwrap_or_else(|| panic!("no lease: {out}"))
        .to_string();
    assert!(out.contains("from 10.77.0.2"), "{out}");
    let parsed: Ipv4Addr = ip.parse().expect("leased address");
    assert!((100..=150).contains(&parsed.octets()[3]), "{ip}");
    vm.ns
        .run("ip", &["addr", "add", &format!("{ip}/24"), "dev", "eth0"])
        .expect("addr");
    // The other host on the LAN reaches the VM, and the VM it.
    ping_ok(&lan, &ip);
    ping_ok(&vm.ns, "10.77.0.2");
    if on_bridge {
        ping_ok(&th.host, &ip);
    } else {
        // Documented: through a plain NIC the host itself cannot reach its VMs.
        assert!(!ping(&th.host, &ip));
    }
    stop_and_check_clean(&th, d, &dir);
    if on_bridge {
        let ports = th
            .host
            .run("ip", &["-br", "link", "show", "master", &lan_if])
            .expect("ip");
        assert!(
            !ports.contains("lnvtp"),
            "TAP left on the host bridge: {ports}"
        );
    }
    let after = th
        .host
        .run("ip", &["-br", "link", "show", &host_end])
        .expect("ip");
    assert!(
        !after.contains("PROMISC"),
        "promiscuous mode left on: {after}"
    );
}

/// Sends raw bytes as a client and waits for the daemon to close the connection.
fn bad_client(sock: &Path, bytes: &[u8], close_write: bool) {
    let mut s = UnixStream::connect(sock).expect("connect");
    s.write_all(bytes).expect("write");
    if close_write {
        s.shutdown(std::net::Shutdown::Write).expect("shutdown");
    }
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return,
            Ok(_) => continue, // flooded frames
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return,
            Err(e) => panic!("the daemon did not disconnect a bad client: {e}"),
        }
    }
}

#[test]
fn bad_clients_are_disconnected_alone_and_a_stalled_client_slows_nobody() {
    require_root();
    let th = TestHost::new().expect("test host");
    host_resolv(&th);
    let dir = Dir::new("bad");
    let d = start_daemon(
        &th.host,
        &dir,
        &["--vmnet-mode=host", "--vmnet-gateway=192.168.106.1"],
    );
    let vm1 = attach(&dir.sock(), Some(("192.168.106.10/24", "192.168.106.1")));
    let vm2 = attach(&dir.sock(), Some(("192.168.106.11/24", "192.168.106.1")));
    ping_ok(&vm1.ns, "192.168.106.11");

    // Lying length header (over 64 KiB), zero-length frame, a header promising more than
    // arrives before close, a short read of the header itself.
    bad_client(&dir.sock(), &70000u32.to_be_bytes(), false);
    bad_client(&dir.sock(), &[0, 0, 0, 0], false);
    let mut short = 100u32.to_be_bytes().to_vec();
    short.extend_from_slice(&[0xff; 10]);
    bad_client(&dir.sock(), &short, true);
    bad_client(&dir.sock(), &[0, 0], true);
    ping_ok(&vm1.ns, "192.168.106.11");

    // A client that never reads, while two VMs transfer at full speed.
    let mut stalled = UnixStream::connect(dir.sock()).expect("connect");
    // Announce a MAC so the switch knows the port (a gratuitous broadcast frame).
    let mut frame = vec![0xffu8; 6];
    frame.extend_from_slice(&[0x52, 0x55, 0x55, 0, 0, 0x77]);
    frame.extend_from_slice(&[0x88, 0xb5]);
    frame.resize(60, 0);
    let mut msg = (frame.len() as u32).to_be_bytes().to_vec();
    msg.extend_from_slice(&frame);
    stalled.write_all(&msg).expect("announce");
    let _server = vm2
        .ns
        .spawn("iperf3-s", "iperf3", &["-s"])
        .expect("iperf3 -s");
    vm1.ns
        .run_in(|| {
            limanet_testkit::wait_for("iperf3 server", Duration::from_secs(10), || {
                TcpStream::connect("192.168.106.11:5201").is_ok()
            })
        })
        .expect("run_in")
        .expect("iperf3 server up");
    std::thread::sleep(Duration::from_millis(300));
    // While VM1 and VM2 transfer, VM1 also blasts the stalled client's MAC (about 170 MB, far
    // more than its queue and socket buffer hold, even when a loaded machine loses part of it
    // in VM1's own TAP queue): that client alone loses frames.
    vm1.ns
        .run(
            "ip",
            &[
                "neigh",
                "add",
                "192.168.106.99",
                "lladdr",
                "52:55:55:00:00:77",
                "dev",
                "eth0",
                "nud",
                "permanent",
            ],
        )
        .expect("neigh");
    let blast_ns = vm1.ns.path();
    let blast = std::thread::spawn(move || {
        let ns = std::fs::File::open(blast_ns).expect("netns");
        // SAFETY: setns on this fresh thread only.
        assert_eq!(
            unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&ns), libc::CLONE_NEWNET) },
            0
        );
        let sock = std::net::UdpSocket::bind("0.0.0.0:0").expect("udp");
        let payload = [0x5au8; 1400];
        // Paced, so the frames are not lost in VM1's own TAP queue before reaching the switch.
        for i in 0..120_000 {
            let _ = sock.send_to(&payload, "192.168.106.99:9");
            if i % 32 == 0 {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    });
    let out = vm1
        .ns
        .run("iperf3", &["-c", "192.168.106.11", "-t", "3", "-J"])
        .expect("iperf3");
    blast.join().expect("blast");
    let json: serde_json::Value = serde_json::from_str(&out).expect("iperf3 json");
    let bps = json["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .unwrap_or(0.0);
    assert!(
        bps > 100e6,
        "VM to VM throughput with a stalled client: {bps} bit/s"
    );
    drop(stalled);

    let logs = stop_and_check_clean(&th, d, &dir);
    let stalled_drops: u64 = logs
        .lines()
        .filter(|l| l.contains("client disconnected"))
        .filter_map(|l| l.split("dropped=").nth(1))
        .filter_map(|d| d.split_whitespace().next()?.parse::<u64>().ok())
        .max()
        .unwrap_or(0);
    assert!(
        stalled_drops > 0,
        "the stalled client's own frames are dropped:\n{logs}"
    );
    let disconnects = logs.matches("disconnecting client").count();
    assert_eq!(disconnects, 4, "one log line per bad client:\n{logs}");
    for needle in [
        "exceeds the maximum",
        "zero-length frame",
        "in the middle of a frame",
    ] {
        assert!(logs.contains(needle), "{needle} missing:\n{logs}");
    }
}

#[test]
fn crashes_and_failed_starts_leave_nothing_and_live_daemons_are_not_displaced() {
    require_root();
    let th = TestHost::new().expect("test host");
    host_resolv(&th);
    let dir = Dir::new("crash");
    let n = names(&dir);
    let flags = ["--vmnet-mode=shared", "--vmnet-gateway=192.168.105.1"];

    // SIGKILL of the daemon: its teardown helper removes the network (the socket and pid file
    // stay, as they would after any crash, and are replaced on the next start).
    let mut d = start_daemon(&th.host, &dir, &flags);
    teardown_helper(d.id());
    d.signal(libc::SIGKILL);
    let _ = d.wait_timeout(Duration::from_secs(5));
    // The bridge goes last.
    let gone = limanet_testkit::wait_for("helper teardown", Duration::from_secs(10), || {
        !link_exists(&th.host, &n.bridge)
    });
    assert!(gone.is_ok(), "bridge left behind\n{}", d.logs());
    assert!(!nft_table_exists(&th.host, &n.table), "table left behind");
    assert_eq!(forwarding(&th.host, &th.host_if), "0", "sysctl restored");

    // SIGKILL of both leaves the bridge, the NAT table, the sysctl, the socket and the pid file.
    let mut d = start_daemon(&th.host, &dir, &flags);
    let helper = teardown_helper(d.id());
    // SAFETY: kill of a process this test started (the daemon's child).
    unsafe { libc::kill(helper as i32, libc::SIGKILL) };
    d.signal(libc::SIGKILL);
    let _ = d.wait_timeout(Duration::from_secs(5));
    assert!(link_exists(&th.host, &n.bridge));
    assert!(nft_table_exists(&th.host, &n.table));
    assert_eq!(forwarding(&th.host, &th.host_if), "1");
    assert!(dir.sock().exists() && dir.pid().exists());

    // The next start cleans up and works; a second daemon does not displace it.
    let d = start_daemon(&th.host, &dir, &flags);
    let logs = d.logs();
    assert!(
        logs.contains("left by an earlier limanet vmnet"),
        "{logs}\npid file {:?} pid {}",
        std::fs::read_to_string(dir.pid()),
        d.id()
    );
    let second = th.host.run(
        LIMANET,
        &[
            "vmnet",
            "--socket-group=root",
            &format!("--pidfile={}", dir.pid().display()),
            flags[0],
            flags[1],
            &dir.sock().display().to_string(),
        ],
    );
    let err = second.expect_err("second daemon must fail").to_string();
    assert!(err.contains("held by a running limanet"), "{err}");
    let other_pid = dir.0.join("other.pid");
    let third = th.host.run(
        LIMANET,
        &[
            "vmnet",
            "--socket-group=root",
            &format!("--pidfile={}", other_pid.display()),
            flags[0],
            flags[1],
            &dir.sock().display().to_string(),
        ],
    );
    let err = third.expect_err("third daemon must fail").to_string();
    assert!(err.contains("in use by a running daemon"), "{err}");
    assert!(
        UnixStream::connect(dir.sock()).is_ok(),
        "live daemon still serves"
    );
    assert!(link_exists(&th.host, &n.bridge));
    stop_and_check_clean(&th, d, &dir);
    assert_eq!(forwarding(&th.host, &th.host_if), "0", "sysctl restored");

    // A failed start (DNS port taken on the host) undoes bridge, TAP, NAT and sysctls.
    let blocker = th
        .host
        .run_in(|| std::net::UdpSocket::bind("0.0.0.0:53"))
        .expect("run_in")
        .expect("bind :53");
    let failed = th.host.run(
        LIMANET,
        &[
            "vmnet",
            "--socket-group=root",
            &format!("--pidfile={}", dir.pid().display()),
            flags[0],
            flags[1],
            &dir.sock().display().to_string(),
        ],
    );
    let err = failed.expect_err("start must fail").to_string();
    assert!(err.contains("DNS"), "{err}");
    drop(blocker);
    assert_clean(&th, &dir);
    assert_eq!(forwarding(&th.host, &th.host_if), "0");

    // An interface with our bridge's name that is not ours is never touched.
    th.host
        .run("ip", &["link", "add", &n.bridge, "type", "bridge"])
        .expect("foreign bridge");
    let refused = th.host.run(
        LIMANET,
        &[
            "vmnet",
            "--socket-group=root",
            flags[0],
            flags[1],
            &dir.sock().display().to_string(),
        ],
    );
    let err = refused.expect_err("start must fail").to_string();
    assert!(err.contains("is not limanet's"), "{err}");
    assert!(link_exists(&th.host, &n.bridge), "foreign interface kept");
    assert!(!dir.sock().exists());
}

#[test]
fn bad_flags_get_socket_vmnet_errors() {
    let out = std::process::Command::new(LIMANET)
        .args(["vmnet", "--vmnet-mode=bridged", "/tmp/x"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("vmnet mode \"bridged\" require --vmnet-interface to be specified"),
        "{err}"
    );
    let out = std::process::Command::new(LIMANET)
        .args([
            "vmnet",
            "--socket-group=no-such-group-lnv",
            "--vmnet-mode=host",
            "/tmp/lnv-nonexistent/x",
        ])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("unknown group name \"no-such-group-lnv\"")
    );
}

#[test]
fn vmnet_client_runs_the_command_with_the_connection_on_fd_3() {
    let dir = std::env::temp_dir().join(format!("lnv-client-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let path = dir.join("s");
    let listener = std::os::unix::net::UnixListener::bind(&path).expect("bind");
    let server = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().expect("accept");
        let mut got = String::new();
        s.read_to_string(&mut got).expect("read");
        got
    });
    let out = std::process::Command::new(LIMANET)
        .arg("vmnet-client")
        .arg(&path)
        .args(["--", "sh", "-c", "echo from-fd-3 >&3"])
        .output()
        .expect("vmnet-client");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(server.join().expect("server"), "from-fd-3\n");
    let out = std::process::Command::new(LIMANET)
        .arg("vmnet-client")
        .arg(dir.join("missing"))
        .arg("true")
        .output()
        .expect("vmnet-client");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("Failed to connect to \""), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

const BIG: u64 = 64 << 20;

/// What `ethtool -k eth0` in `ns` says about `feature` ("on" or "off").
fn eth0_feature(ns: &Netns, feature: &str) -> String {
    let text = ns.run("ethtool", &["-k", "eth0"]).expect("ethtool");
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{feature}: ")))
        .map(|v| v.split_whitespace().next().unwrap_or("").to_string())
        .unwrap_or_else(|| panic!("no {feature} in ethtool output: {text}"))
}

/// Downloads and uploads `BIG` bytes from inside `ns`, checked by SHA-256.
fn big_both_ways(ns: &Netns, server: SocketAddr, seed: u64, what: &str, logs: &dyn Fn() -> String) {
    limanet_testkit::servers::transfer_both_ways(ns, server, BIG, seed, what, logs);
}

/// One network, a VM whose `limanet attach` negotiated the stream protocol's offload
/// extension (TSO on its TAP) and one attached with `--no-offload` (as a QEMU or socket_vmnet
/// client is): 64 MiB each way between them and between each and the host (whose TAP into the
/// bridge has offloads), checked by SHA-256. The switch passes super-segments to the offload
/// VM and the host, and cuts and checksums them for the plain VM.
#[test]
fn offload_and_plain_vms_share_a_network() {
    use limanet_testkit::servers::HttpServer;
    require_root();
    let th = TestHost::new().expect("test host");
    let dir = Dir::new("offload");
    let d = start_daemon(
        &th.host,
        &dir,
        &[
            "--vmnet-mode=host",
            "--vmnet-gateway=192.168.108.1",
            "--vmnet-dhcp-end=192.168.108.254",
            "--vmnet-mask=255.255.255.0",
        ],
    );
    let fast = attach(&dir.sock(), Some(("192.168.108.10/24", "192.168.108.1")));
    let plain = attach_with(
        &dir.sock(),
        Some(("192.168.108.11/24", "192.168.108.1")),
        &["--no-offload"],
    );
    assert_eq!(eth0_feature(&fast.ns, "tcp-segmentation-offload"), "on");
    assert_eq!(eth0_feature(&plain.ns, "tcp-segmentation-offload"), "off");
    let logs = || d.logs();
    let ip = |last: u8| Ipv4Addr::new(192, 168, 108, last);
    let http_fast = HttpServer::start(&fast.ns, SocketAddr::from((ip(10), 0)), None).expect("http");
    let http_plain =
        HttpServer::start(&plain.ns, SocketAddr::from((ip(11), 0)), None).expect("http");
    let http_host = HttpServer::start(&th.host, SocketAddr::from((ip(1), 0)), None).expect("http");
    big_both_ways(
        &plain.ns,
        http_fast.addr(),
        11,
        "plain <-> offload VM",
        &logs,
    );
    big_both_ways(
        &fast.ns,
        http_plain.addr(),
        21,
        "offload <-> plain VM",
        &logs,
    );
    big_both_ways(&plain.ns, http_host.addr(), 31, "plain VM <-> host", &logs);
    big_both_ways(&fast.ns, http_host.addr(), 41, "offload VM <-> host", &logs);
    let out = stop_and_check_clean(&th, d, &dir);
    assert!(out.contains("client negotiated offloads"), "{out}");
}

fn record(payload: &[u8]) -> Vec<u8> {
    let mut r = (payload.len() as u32).to_be_bytes().to_vec();
    r.extend_from_slice(payload);
    r
}

/// A client that negotiates offloads and then lies in its virtio-net headers: headers that
/// make no sense are dropped and counted, a super-segment that cannot be cut for a plain VM is
/// dropped and counted; nobody is disconnected and the network keeps working.
#[test]
fn lying_offload_headers_are_dropped_and_counted() {
    use limanet_netstack::stream_offload::{self as so, Kind};
    use limanet_netstack::vnet::{VnetHeader, F_NEEDS_CSUM, GSO_TCPV4};
    require_root();
    let th = TestHost::new().expect("test host");
    let dir = Dir::new("liar");
    let d = start_daemon(
        &th.host,
        &dir,
        &["--vmnet-mode=host", "--vmnet-gateway=192.168.109.1"],
    );
    let plain = attach_with(
        &dir.sock(),
        Some(("192.168.109.11/24", "192.168.109.1")),
        &["--no-offload"],
    );
    let mac = [0x02, 0x42, 0, 0, 0, 0x99];
    let mut s = UnixStream::connect(dir.sock()).expect("connect");
    s.write_all(&record(&so::build(
        Kind::Hello,
        mac,
        so::FEATURE_VNET_HDR_V1,
    )))
    .expect("hello");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    // Frames flooded before the ack are plain; the ack comes back for our MAC.
    loop {
        let mut len = [0u8; 4];
        s.read_exact(&mut len).expect("a record before the ack");
        let mut f = vec![0u8; u32::from_be_bytes(len) as usize];
        s.read_exact(&mut f).expect("record");
        if so::parse(&f).is_some_and(|c| c.kind == Kind::Ack && c.mac == mac) {
            break;
        }
    }
    // A broadcast "super-segment" whose frame is no TCP/IPv4 packet at all: flooded, and the
    // switch cannot cut it for the plain VM.
    let mut frame = vec![0xffu8; 6];
    frame.extend_from_slice(&mac);
    frame.extend_from_slice(&[0x08, 0x00]);
    frame.extend_from_slice(&[0x45; 200]);
    let gso = VnetHeader {
        flags: F_NEEDS_CSUM,
        gso_type: GSO_TCPV4,
        hdr_len: 54,
        gso_size: 1000,
        csum_start: 34,
        csum_offset: 16,
    };
    let mut bytes = Vec::new();
    let mut r = so::header_bytes(&gso).to_vec();
    r.extend_from_slice(&frame);
    bytes.extend(record(&r));
    // Headers that lie outright: unknown GSO type, checksum field past the end, no frame.
    for lie in [
        VnetHeader { gso_type: 9, ..gso },
        VnetHeader {
            csum_offset: 5000,
            ..gso
        },
    ] {
        let mut r = so::header_bytes(&lie).to_vec();
        r.extend_from_slice(&frame);
        bytes.extend(record(&r));
    }
    bytes.extend(record(&so::header_bytes(&VnetHeader::default())));
    s.write_all(&bytes).expect("lies");
    // The network still works for everyone, the liar included.
    ping_ok(&plain.ns, "192.168.109.1");
    std::thread::sleep(Duration::from_millis(200));
    let mut probe = [0u8; 1];
    s.set_nonblocking(true).unwrap();
    let closed = matches!(s.read(&mut probe), Ok(0));
    assert!(!closed, "the daemon disconnected the client\n{}", d.logs());
    drop(s);
    let logs = stop_and_check_clean(&th, d, &dir);
    assert!(logs.contains("bad virtio-net header"), "{logs}");
    assert!(logs.contains("bad_offload=1"), "{logs}");
    assert!(!logs.contains("disconnecting client"), "{logs}");
}
