//! user-v2 across daemon restarts and guest reconnects, and a real VM among netns guests:
//! - leases saved from `GET /services/dhcp/leases` and passed back with `--leases` (as Lima's
//!   `leases.json` round trip does) give every guest its old address after a SIGKILL and a
//!   restart on the same pid file and endpoint, even when the guests ask in another order; a
//!   saved lease from another subnet is logged and dropped;
//! - a busybox QEMU guest joins three netns guests: it gets the next address, resolves and
//!   pings them by `lima-<NAME>.internal`, talks TCP to one, is found by its MAC in the leases
//!   (Lima's `ResolveIPAddress`), registered, and pinged by name; booted again with the same
//!   MAC it keeps its address.

mod usernet_support;
mod usernet_v2_support;

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use limanet_testkit::servers::TcpEchoServer;
use limanet_testkit::{Netns, QemuGuest, QemuOptions};
use usernet_support::*;
use usernet_v2_support::*;

fn register(ep: &std::path::Path, name: &str, ip: &str) {
    let zone = format!(
        r#"{{"Name":"internal.","Records":[{{"Name":"lima-{name}","IP":"{ip}"}}],"DefaultIP":""}}"#
    );
    assert_eq!(
        api(ep, "POST", "/services/dns/add", Some(&zone)).status,
        200
    );
}

#[test]
fn leases_survive_sigkill_and_restart() {
    let env = Env::new("v2restart");
    let a = Netns::new("v2ra").expect("netns");
    let b = Netns::new("v2rb").expect("netns");
    let (mac_a, mac_b) = ("52:55:55:00:00:0a", "52:55:55:00:00:0b");
    let mut first = start_v2(&env, "v2r", &[&a, &b], &[]);
    assert_eq!(dhcp(&a, Some(mac_a)), Ipv4Addr::new(192, 168, 104, 1));
    assert_eq!(dhcp(&b, Some(mac_b)), Ipv4Addr::new(192, 168, 104, 3));
    let leases = api(&first.ep, "GET", "/services/dhcp/leases", None).json();
    let saved: Vec<String> = leases
        .as_object()
        .expect("lease map")
        .iter()
        .map(|(ip, mac)| format!("{ip}={}", mac.as_str().unwrap_or_default()))
        .collect();
    assert_eq!(saved.len(), 3, "{leases}");

    // Killed without a chance to clean up: pid file and endpoint socket stay behind.
    first.daemon.signal(libc::SIGKILL);
    let _ = first.daemon.wait_timeout(Duration::from_secs(10));
    assert!(first.pidfile.exists() && first.ep.exists());
    let pidfile = first.pidfile.clone();
    drop(first);

    // Restarted with the saved leases plus one from an older subnet, guests in the other order.
    let mut leases_arg = saved.join(",");
    leases_arg.push_str(",10.9.9.9=52:55:55:00:00:99");
    let c = Netns::new("v2rc").expect("netns");
    let second = start_v2(&env, "v2r", &[&b, &a, &c], &["--leases", &leases_arg]);
    assert_eq!(second.pidfile, pidfile);
    assert_eq!(dhcp(&b, Some(mac_b)), Ipv4Addr::new(192, 168, 104, 3));
    assert_eq!(dhcp(&a, Some(mac_a)), Ipv4Addr::new(192, 168, 104, 1));
    // A new guest gets the lowest address nobody holds.
    assert_eq!(dhcp(&c, None), Ipv4Addr::new(192, 168, 104, 4));
    let leases = api(&second.ep, "GET", "/services/dhcp/leases", None).json();
    assert_eq!(leases["192.168.104.1"], mac_a, "{leases}");
    assert_eq!(leases["192.168.104.3"], mac_b, "{leases}");
    assert!(leases.get("10.9.9.9").is_none(), "{leases}");
    let logs = second.daemon.logs();
    assert!(
        logs.contains("dropping a static lease") && logs.contains("10.9.9.9"),
        "the dropped lease is not logged:\n{logs}"
    );
}

#[test]
fn qemu_guest_among_netns_guests() {
    let env = Env::new("v2qemu");
    let guests: Vec<Netns> = (0..3).map(|_| Netns::new("v2q").expect("netns")).collect();
    let refs: Vec<&Netns> = guests.iter().collect();
    let qemu_sock = env.dir.join("v2q_qemu.sock");
    let qemu_arg = qemu_sock.to_string_lossy().into_owned();
    let v2 = start_v2(&env, "v2q", &refs, &["--listen-qemu", &qemu_arg]);
    let ips: Vec<Ipv4Addr> = guests.iter().map(|g| dhcp(g, None)).collect();
    for (i, ip) in ips.iter().enumerate() {
        register(&v2.ep, &format!("vm{i}"), &ip.to_string());
    }
    let _echo = TcpEchoServer::start(&guests[2], SocketAddr::from(([0, 0, 0, 0], 7777)))
        .expect("echo server");

    let mac = "52:55:55:12:34:56";
    let backend = format!("stream,server=off,addr.type=unix,addr.path={qemu_arg}");
    let script = format!(
        "nslookup lima-vm0.internal > /tmp/ns 2>&1; cat /tmp/ns\n\
         grep -q {ip0} /tmp/ns || exit 10\n\
         ping -c 1 -W 5 lima-vm1.internal || exit 11\n\
         echo from-qemu | nc -w 5 {ip2} 7777 > /tmp/echo; cat /tmp/echo\n\
         grep -q from-qemu /tmp/echo || exit 12\n\
         echo LIMANET-CHECKS-DONE\n\
         sleep 8\n",
        ip0 = ips[0],
        ip2 = ips[2],
    );
    let opts = QemuOptions {
        script,
        timeout: Duration::from_secs(120),
        netns: Some(env.th.host.name().to_string()),
        ..Default::default()
    }
    .with_nic(&backend, Some(mac));
    let mut vm = QemuGuest::start(&opts).expect("start QEMU guest");
    if let Err(e) = vm.wait_for_console("LIMANET-CHECKS-DONE", Duration::from_secs(90)) {
        panic!("{e}\n{}\n{}", vm.console(), v2.daemon.logs());
    }
    // Lima's ResolveIPAddress: the VM's address is the lease with its MAC.
    let leases = api(&v2.ep, "GET", "/services/dhcp/leases", None).json();
    let vm_ip = leases
        .as_object()
        .and_then(|m| m.iter().find(|(_, v)| *v == mac))
        .map(|(ip, _)| ip.clone())
        .unwrap_or_else(|| panic!("no lease for {mac}: {leases}"));
    assert_eq!(vm_ip, "192.168.104.5");
    register(&v2.ep, "qemu", &vm_ip);
    let out = output_in(
        &guests[0],
        "ping",
        &["-c", "1", "-W", "5", "lima-qemu.internal"],
    );
    assert!(
        out.status.success(),
        "cannot ping the VM by name: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let first = vm.wait().expect("QEMU guest");
    assert_eq!(first.exit_code, Some(0), "{}", first.console);

    // The VM disconnects and comes back with the same MAC: same address.
    let again = QemuOptions {
        script: "true\n".into(),
        ..opts.clone()
    };
    let second = QemuGuest::spawn(&again).expect("QEMU guest again");
    assert_eq!(
        second.lease("ip").as_deref(),
        Some(vm_ip.as_str()),
        "{}",
        second.console
    );
}
