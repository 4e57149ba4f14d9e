//! Support for the `usernet_v2_*` tests: a user-v2 `limanet usernet` with its HTTP API, netns
//! guests that take their address by DHCP, and curl as the API client.
#![allow(dead_code)]

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use limanet_testkit::{wait_for, ChildGuard, Netns};

use crate::usernet_support::Env;

/// The subnet of every user-v2 test network.
pub const SUBNET: &str = "192.168.104.0/24";
/// Its gateway (also the DNS server), network+2.
pub const GATEWAY: Ipv4Addr = Ipv4Addr::new(192, 168, 104, 2);
/// gvisor-tap-vsock's gateway MAC.
pub const GATEWAY_MAC: &str = "5a:94:ef:e4:0c:dd";

/// An API reply.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub body: String,
}

impl Reply {
    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }
}

/// `curl --unix-socket <ep> -X <method> [-d <body>] http://lima<path>`.
pub fn api(ep: &Path, method: &str, path: &str, body: Option<&str>) -> Reply {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--max-time", "30", "-o", "-", "-w", "\n%{http_code}"])
        .arg("--unix-socket")
        .arg(ep)
        .args(["-X", method]);
    if let Some(b) = body {
        cmd.args(["-H", "Content-Type: application/json", "--data-binary", b]);
    }
    cmd.arg(format!("http://lima{path}"));
    let out = cmd.output().expect("run curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    let status = code.trim().parse().unwrap_or_else(|_| {
        panic!(
            "curl {method} {path}: no status ({}): {text:?}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    Reply {
        status,
        body: body.to_string(),
    }
}

/// A user-v2 daemon attached to netns guests whose TAP devices it leaves unconfigured.
pub struct V2 {
    pub daemon: ChildGuard,
    pub ep: PathBuf,
    pub pidfile: PathBuf,
}

/// Starts `limanet usernet --mode user-v2 -e <ep> --no-configure` on `guests` (in that
/// order) with `extra` arguments, and waits for its pid file.
pub fn start_v2(env: &Env, tag: &str, guests: &[&Netns], extra: &[&str]) -> V2 {
    let ep = env.dir.join(&format!("{tag}_ep.sock"));
    let pidfile = env.dir.join(&format!("usernet_{tag}.pid"));
    let mut cmd = env.limanet("usernet");
    cmd.args(["--mode", "user-v2", "--subnet", SUBNET, "--no-configure"])
        .arg("-e")
        .arg(&ep)
        .arg("-p")
        .arg(&pidfile);
    for g in guests {
        cmd.arg("--netns").arg(g.path());
    }
    cmd.args(extra);
    let daemon = ChildGuard::spawn("limanet-usernet-v2", &mut cmd).expect("spawn usernet");
    // The pid file may be a stale one from a killed daemon: wait for this daemon's pid.
    let pid = daemon.id().to_string();
    let started = wait_for("usernet pid file", Duration::from_secs(20), || {
        std::fs::read_to_string(&pidfile).is_ok_and(|t| t.trim() == pid)
    });
    if let Err(e) = started {
        panic!("limanet usernet did not start: {e}\n{}", daemon.logs());
    }
    assert!(ep.exists(), "{} missing\n{}", ep.display(), daemon.logs());
    V2 {
        daemon,
        ep,
        pidfile,
    }
}

/// Gives `tap0` in `ns` a fixed MAC (so leases can follow it across daemon restarts) and runs
/// DHCP on it; returns the leased address.
pub fn dhcp(ns: &Netns, mac: Option<&str>) -> Ipv4Addr {
    if let Some(mac) = mac {
        ns.run("ip", &["link", "set", "tap0", "address", mac])
            .expect("set tap0 MAC");
    }
    ns.run("ip", &["link", "set", "tap0", "up"])
        .expect("tap0 up");
    ns.dhcp("tap0", Duration::from_secs(10))
        .expect("DHCP lease")
        .ip
}

/// The MAC of `tap0` in `ns`.
pub fn tap_mac(ns: &Netns) -> String {
    ns.run("cat", &["/sys/class/net/tap0/address"])
        .expect("read tap0 MAC")
        .trim()
        .to_string()
}
