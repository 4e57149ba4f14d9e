//! Shared support for the `vmnet_*` tests: root check, a scratch directory for a daemon's socket
//! and pid file, and ping helpers.
#![allow(dead_code)]

use limanet_testkit::Netns;
use std::path::PathBuf;

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
