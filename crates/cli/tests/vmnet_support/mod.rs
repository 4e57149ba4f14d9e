//! Shared support for the `vmnet_*` tests: root check, a scratch directory for a daemon's socket
//! and pid file, starting the daemon, attaching "VMs", and ping helpers.
#![allow(dead_code)]

use limanet_testkit::{ChildGuard, Netns};
use std::path::{Path, PathBuf};
use std::time::Duration;

pub const LIMANET: &str = env!("CARGO_BIN_EXE_limanet");

pub fn require_root() {
    // SAFETY: geteuid has no failure mode.
    if unsafe { libc::geteuid() } != 0 {
        panic!("these tests need root (network namespaces, bridges, nftables)");
    }
}

/// A scratch directory for the socket and pid file, removed on drop.
pub struct Dir(pub PathBuf);

impl Dir {
    pub fn new(tag: &str) -> Self {
        let d = PathBuf::from(format!("/run/lnvtest-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).expect("create test dir");
        Dir(d)
    }
    pub fn sock(&self) -> PathBuf {
        self.0.join("vmnet.sock")
    }
    pub fn pid(&self) -> PathBuf {
        self.0.join("vmnet.pid")
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn ping(ns: &Netns, ip: &str) -> bool {
    ns.run("ping", &["-c", "1", "-W", "2", ip]).is_ok()
}

pub fn ping_ok(ns: &Netns, ip: &str) {
    let ok = (0..5).any(|_| ping(ns, ip));
    assert!(ok, "ping {ip} from {} failed", ns.name());
}

/// Starts the daemon in `ns` with socket_vmnet's flags; waits for its pid file (readiness).
pub fn start_daemon(ns: &Netns, dir: &Dir, flags: &[&str]) -> ChildGuard {
    let mut args = vec!["vmnet".to_string()];
    args.extend(flags.iter().map(|s| s.to_string()));
    args.push(format!("--pidfile={}", dir.pid().display()));
    args.push("--socket-group=root".into());
    args.push(dir.sock().display().to_string());
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut d = ns.spawn("vmnet", LIMANET, &argv).expect("spawn daemon");
    // Its own pid (a killed daemon's pid file may still be there).
    let pid = d.id().to_string();
    let written = || std::fs::read_to_string(dir.pid()).is_ok_and(|p| p == pid);
    let ok = limanet_testkit::wait_for("vmnet pid file", Duration::from_secs(20), || {
        written() || d.try_wait().ok().flatten().is_some()
    });
    assert!(
        ok.is_ok() && written(),
        "daemon did not start:\n{}",
        d.logs()
    );
    d
}

/// A "VM": a namespace with a TAP on the network through `limanet attach`.
pub struct Vm {
    pub ns: Netns,
    pub attach: ChildGuard,
}

pub fn attach(sock: &Path, address: Option<(&str, &str)>) -> Vm {
    attach_with(sock, address, &[])
}

pub fn attach_with(sock: &Path, address: Option<(&str, &str)>, flags: &[&str]) -> Vm {
    let ns = Netns::new("vm").expect("vm netns");
    let path = ns.path().display().to_string();
    let sock = sock.display().to_string();
    let mut args = vec!["attach", "--netns", &path, "--tap-name", "eth0"];
    args.extend(flags);
    if let Some((a, gw)) = &address {
        args.extend(["--address", a, "--gateway", gw]);
    }
    args.push(&sock);
    let guard = ChildGuard::spawn("attach", std::process::Command::new(LIMANET).args(&args))
        .expect("spawn attach");
    limanet_testkit::wait_for("TAP in the VM", Duration::from_secs(10), || {
        ns.run("ip", &["link", "show", "eth0"]).is_ok()
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", guard.logs()));
    Vm { ns, attach: guard }
}
