//! `limanet attach` handing its TAP to the vmnet daemon (the stream protocol's `TAP_FD`
//! feature): traffic through passed TAPs beside relayed and plain clients, the TAP's life tied
//! to attach's, and descriptors that are no usable TAP refused without harm to anyone else.
//! Runs inside a testkit `TestHost`, as `vmnet_daemon` does.

mod vmnet_support;

use limanet_netstack::stream_offload::{self as so, Kind};
use limanet_testkit::{ChildGuard, Netns, TestHost};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;
use vmnet_support::*;

/// Starts a host-mode daemon on 192.168.`net`.0/24 in `ns`; waits for its pid file.
fn start_host_daemon(ns: &Netns, dir: &Dir, net: u8) -> ChildGuard {
    let gateway = format!("--vmnet-gateway=192.168.{net}.1");
    let end = format!("--vmnet-dhcp-end=192.168.{net}.254");
    let flags = [
        "--vmnet-mode=host",
        &gateway,
        &end,
        "--vmnet-mask=255.255.255.0",
    ];
    start_daemon(ns, dir, &flags)
}

fn link_exists(ns: &Netns, name: &str) -> bool {
    ns.run("ip", &["link", "show", name]).is_ok()
}

/// Stops the daemon with SIGTERM; its logs.
fn stop(mut d: ChildGuard) -> String {
    d.signal(libc::SIGTERM);
    let status = d
        .wait_timeout(Duration::from_secs(10))
        .expect("daemon exit");
    let logs = d.logs();
    assert!(status.success(), "daemon exit {status:?}\n{logs}");
    logs
}

const BIG: u64 = 32 << 20;

/// Downloads and uploads `BIG` bytes from inside `ns`, checked by SHA-256.
fn big_both_ways(ns: &Netns, server: SocketAddr, seed: u64, what: &str, logs: &dyn Fn() -> String) {
    limanet_testkit::servers::transfer_both_ways(ns, server, BIG, seed, what, logs);
}

/// Two VMs whose attach passed its TAP, one that relays (`--no-pass-tap`, as with a daemon
/// that does not offer it) and one plain (`--no-offload`, as QEMU is): 32 MiB each way
/// between a passed-TAP VM and each of the others and the host, checked by SHA-256. Super-
/// segments from a passed TAP reach the other passed TAP and the relay whole and are cut for
/// the plain VM.
#[test]
fn passed_taps_relayed_and_plain_clients_share_a_switch() {
    use limanet_testkit::servers::HttpServer;
    require_root();
    let th = TestHost::new().expect("test host");
    let dir = Dir::new("mix");
    let d = start_host_daemon(&th.host, &dir, 112);
    let gw = "192.168.112.1";
    let a = attach_with(&dir.sock(), Some(("192.168.112.10/24", gw)), &[]);
    let b = attach_with(&dir.sock(), Some(("192.168.112.11/24", gw)), &[]);
    let relayed = attach_with(
        &dir.sock(),
        Some(("192.168.112.12/24", gw)),
        &["--no-pass-tap"],
    );
    let plain = attach_with(
        &dir.sock(),
        Some(("192.168.112.13/24", gw)),
        &["--no-offload"],
    );
    let logs = || d.logs();
    let ip = |last: u8| Ipv4Addr::new(192, 168, 112, last);
    let http_a = HttpServer::start(&a.ns, SocketAddr::from((ip(10), 0)), None).expect("http");
    let http_relayed =
        HttpServer::start(&relayed.ns, SocketAddr::from((ip(12), 0)), None).expect("http");
    let http_host = HttpServer::start(&th.host, SocketAddr::from((ip(1), 0)), None).expect("http");
    big_both_ways(&b.ns, http_a.addr(), 1, "passed <-> passed", &logs);
    big_both_ways(&a.ns, http_relayed.addr(), 11, "passed <-> relayed", &logs);
    big_both_ways(&plain.ns, http_a.addr(), 21, "plain <-> passed", &logs);
    big_both_ways(&a.ns, http_host.addr(), 31, "passed <-> host", &logs);
    for (vm, passed) in [(&a, true), (&b, true), (&relayed, false), (&plain, false)] {
        let out = vm.attach.logs();
        let want = format!("pass_tap={passed}");
        assert!(
            out.contains(&want),
            "{}: wanted {want}\n{out}",
            vm.ns.name()
        );
    }
    let out = stop(d);
    assert_eq!(
        out.matches("client passed its TAP").count(),
        2,
        "two TAPs passed\n{out}"
    );
    assert!(!out.contains("disconnecting client"), "{out}");
}

/// attach killed (SIGKILL: no goodbye): the daemon sees the connection close, drops the port
/// and closes the TAP, which vanishes from the VM's namespace; another VM keeps working. A
/// SIGTERM'd attach does the same.
#[test]
fn the_tap_goes_with_its_attach() {
    require_root();
    let th = TestHost::new().expect("test host");
    let dir = Dir::new("kill");
    let d = start_host_daemon(&th.host, &dir, 113);
    let gw = "192.168.113.1";
    let mut killed = attach_with(&dir.sock(), Some(("192.168.113.10/24", gw)), &[]);
    let mut stopped = attach_with(&dir.sock(), Some(("192.168.113.11/24", gw)), &[]);
    let other = attach_with(&dir.sock(), Some(("192.168.113.12/24", gw)), &[]);
    ping_ok(&killed.ns, gw);
    ping_ok(&stopped.ns, "192.168.113.12");
    for (vm, signal) in [(&mut killed, libc::SIGKILL), (&mut stopped, libc::SIGTERM)] {
        vm.attach.signal(signal);
        vm.attach
            .wait_timeout(Duration::from_secs(10))
            .expect("attach exit");
        limanet_testkit::wait_for("the TAP to vanish", Duration::from_secs(10), || {
            !link_exists(&vm.ns, "eth0")
        })
        .unwrap_or_else(|e| panic!("{e} (signal {signal})\n{}", d.logs()));
    }
    ping_ok(&other.ns, gw);
    let out = stop(d);
    assert_eq!(out.matches("client disconnected").count(), 2, "{out}");
    assert!(!out.contains("disconnecting client"), "{out}");
}

fn record(payload: &[u8]) -> Vec<u8> {
    let mut r = (payload.len() as u32).to_be_bytes().to_vec();
    r.extend_from_slice(payload);
    r
}

const MAC: [u8; 6] = [0x02, 0x42, 0, 0, 0, 0x77];

/// A hand-made client that offers TAP passing; returns once the ack (which must grant it)
/// arrived.
fn offering_client(sock: &Path) -> UnixStream {
    let both = so::FEATURE_VNET_HDR_V1 | so::FEATURE_TAP_FD;
    let mut s = UnixStream::connect(sock).expect("connect");
    s.write_all(&record(&so::build(Kind::Hello, MAC, both)))
        .expect("hello");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    loop {
        let mut len = [0u8; 4];
        s.read_exact(&mut len).expect("a record before the ack");
        let mut f = vec![0u8; u32::from_be_bytes(len) as usize];
        s.read_exact(&mut f).expect("record");
        if let Some(c) = so::parse(&f).filter(|c| c.kind == Kind::Ack && c.mac == MAC) {
            assert_eq!(c.features, both, "the daemon offers TAP passing");
            return s;
        }
    }
}

/// Whether the daemon closed `s` (within a few seconds).
fn closed_by_daemon(s: &mut UnixStream) -> bool {
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut b = [0u8; 4096];
    loop {
        match s.read(&mut b) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
}

/// Opens a TAP in the current namespace with `flags` (IFF_*); a TUN device with IFF_TUN.
fn open_tun(name: &str, flags: i32) -> OwnedFd {
    // SAFETY: opening a device node; we own the descriptor.
    let fd = unsafe { libc::open(c"/dev/net/tun".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
    assert!(fd >= 0, "open /dev/net/tun");
    // SAFETY: fresh descriptor.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: all-zero ifreq is valid; TUNSETIFF takes a struct ifreq.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *d = s as libc::c_char;
    }
    req.ifr_ifru.ifru_flags = flags as libc::c_short;
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETIFF as _, &mut req) };
    assert!(rc == 0, "TUNSETIFF: {}", std::io::Error::last_os_error());
    fd
}

/// Clients that offer TAP passing and then pass something else: a pipe, a TAP without a
/// virtio-net header, a TUN device, or no descriptor at all. Each is disconnected with one log
/// line naming why; a VM on the same switch keeps working throughout, and the TAPs that were
/// refused are closed (they vanish once the test drops its copy).
#[test]
fn descriptors_that_are_no_usable_tap_are_refused() {
    require_root();
    let th = TestHost::new().expect("test host");
    let dir = Dir::new("notap");
    let d = start_host_daemon(&th.host, &dir, 114);
    let gw = "192.168.114.1";
    let vm = attach_with(&dir.sock(), Some(("192.168.114.10/24", gw)), &[]);
    let junk = Netns::new("junk").expect("netns");
    let tap_record = record(&so::build(Kind::TapFd, MAC, 3));
    let mut pipe = [0i32; 2];
    // SAFETY: pipe2 fills two descriptors we then own.
    assert_eq!(
        unsafe { libc::pipe2(pipe.as_mut_ptr(), libc::O_CLOEXEC) },
        0
    );
    // SAFETY: fresh descriptors from pipe2.
    let (pr, _pw) = unsafe { (OwnedFd::from_raw_fd(pipe[0]), OwnedFd::from_raw_fd(pipe[1])) };
    let plain_tap = junk
        .run_in(|| open_tun("plain0", libc::IFF_TAP | libc::IFF_NO_PI))
        .expect("run_in");
    let tun = junk
        .run_in(|| open_tun("tun0", libc::IFF_TUN | libc::IFF_NO_PI | libc::IFF_VNET_HDR))
        .expect("run_in");
    let cases: [(&str, Option<&OwnedFd>, &str); 4] = [
        ("pipe", Some(&pr), "not a /dev/net/tun descriptor"),
        (
            "TAP without a header",
            Some(&plain_tap),
            "is not a TAP with a virtio-net header",
        ),
        ("TUN", Some(&tun), "is not a TAP with a virtio-net header"),
        ("nothing", None, "expected its TAP's descriptor"),
    ];
    for (what, fd, why) in cases {
        let mut s = offering_client(&dir.sock());
        match fd {
            Some(fd) => {
                limanet_runtime::sys::send_with_fd(s.as_raw_fd(), &tap_record, fd.as_raw_fd())
                    .expect("send descriptor")
            }
            None => s.write_all(&tap_record).expect("send record"),
        }
        assert!(
            closed_by_daemon(&mut s),
            "{what}: not disconnected\n{}",
            d.logs()
        );
        let logs = d.logs();
        assert!(logs.contains(why), "{what}: wanted {why:?}\n{logs}");
        ping_ok(&vm.ns, gw);
    }
    drop((plain_tap, tun));
    // Unregistering a device finishes a moment after its last descriptor closes.
    limanet_testkit::wait_for(
        "the refused TAPs to vanish",
        Duration::from_secs(10),
        || !link_exists(&junk, "plain0") && !link_exists(&junk, "tun0"),
    )
    .unwrap_or_else(|e| panic!("{e}: the daemon kept a refused descriptor"));
    let out = stop(d);
    assert_eq!(out.matches("disconnecting client").count(), 4, "{out}");
}
