//! Network namespaces as throwaway test hosts, and the recommended "host + fake internet"
//! topology.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use crate::error::IoContext;
use crate::process::run;
use crate::{require_root, ChildGuard, Error, Result};

/// Linux interface names hold at most 15 bytes.
const IFNAMSIZ_MAX: usize = 15;

/// A name unique to this process and call: `<prefix><pid base36>-<counter base36>`, at most 15
/// bytes (the prefix is shortened if needed), so it is also valid as an interface name.
pub fn unique_name(prefix: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let suffix = format!("{}-{}", base36(std::process::id()), base36(n));
    let keep = IFNAMSIZ_MAX.saturating_sub(suffix.len());
    let prefix: String = prefix
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .take(keep)
        .collect();
    format!("{prefix}{suffix}")
}

fn base36(mut v: u32) -> String {
    const DIGITS: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = Vec::new();
    loop {
        out.push(DIGITS[(v % 36) as usize]);
        v /= 36;
        if v == 0 {
            break;
        }
    }
    out.reverse();
    String::from_utf8_lossy(&out).into_owned()
}

/// A named network namespace (`ip netns add`), with `lo` up. Dropping it kills every process
/// still inside and deletes the namespace (and with it its interfaces). Never panics on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates `/run/netns/<unique name>` and brings `lo` up. Needs root.
    pub fn new(prefix: &str) -> Result<Self> {
        require_root("creating a network namespace")?;
        let name = unique_name(prefix);
        let path = PathBuf::from("/run/netns").join(&name);
        if path.exists() {
            // Left over from a crashed earlier process with our pid: that process is gone.
            tracing::warn!(netns = %name, "deleting stale namespace");
            let _ = run(Command::new("ip").args(["netns", "del", &name]));
        }
        run(Command::new("ip").args(["netns", "add", &name]))?;
        let ns = Netns { name };
        run(ns.command("ip").args(["link", "set", "lo", "up"]))?;
        tracing::debug!(netns = %ns.name, "created");
        Ok(ns)
    }

    /// The namespace name (as `ip netns` knows it).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `/run/netns/<name>`, e.g. for `limanet usernet --netns` or `pasta --netns`.
    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    /// A command that runs `program` inside the namespace (`ip netns exec <name> <program>`).
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }

    /// Spawns `program args...` inside the namespace as a [`ChildGuard`] (output captured).
    pub fn spawn(&self, name: &str, program: &str, args: &[&str]) -> Result<ChildGuard> {
        ChildGuard::spawn(name, self.command(program).args(args))
    }

    /// Writes `/etc/netns/<name>/<file>`: `ip netns exec` (so [`Netns::command`],
    /// [`Netns::run`], [`Netns::spawn`]) bind-mounts it over `/etc/<file>` for processes it
    /// starts. Use it for a hermetic `resolv.conf` or `hosts`. Threads in [`Netns::run_in`] do not
    /// see it (they share the test process's mounts). Removed on drop.
    pub fn set_etc(&self, file: &str, contents: &str) -> Result<()> {
        let dir = self.etc_dir();
        std::fs::create_dir_all(&dir).ctx(|| format!("cannot create {}", dir.display()))?;
        let path = dir.join(file);
        std::fs::write(&path, contents).ctx(|| format!("cannot write {}", path.display()))
    }

    fn etc_dir(&self) -> PathBuf {
        PathBuf::from("/etc/netns").join(&self.name)
    }

    /// Runs a short command inside the namespace; returns its stdout or an error with stderr.
    pub fn run(&self, program: &str, args: &[&str]) -> Result<String> {
        run(self.command(program).args(args))
    }

    /// Runs `f` on a fresh thread that has entered the namespace (`setns`), and returns its
    /// result. Sockets created in `f` belong to the namespace for their whole life, so a test
    /// can bind listeners here and serve them from any thread. A panic in `f` is re-raised.
    pub fn run_in<T, F>(&self, f: F) -> Result<T>
    where
        F: FnOnce() -> T + Send,
        T: Send,
    {
        let path = self.path();
        let file = std::fs::File::open(&path).ctx(|| format!("cannot open {}", path.display()))?;
        std::thread::scope(|s| {
            let handle = s.spawn(move || -> Result<T> {
                use std::os::fd::AsRawFd;
                // SAFETY: setns on a valid namespace fd only changes this (fresh, scoped)
                // thread's network namespace.
                let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
                if rc != 0 {
                    return Err(Error::io(
                        format!("setns into {}", path.display()),
                        std::io::Error::last_os_error(),
                    ));
                }
                Ok(f())
            });
            match handle.join() {
                Ok(r) => r,
                Err(panic) => std::panic::resume_unwind(panic),
            }
        })
    }

    /// Waits until a TCP connection to `addr`, made from inside the namespace, succeeds.
    pub fn wait_for_port(&self, addr: SocketAddr, timeout: Duration) -> Result<()> {
        self.run_in(|| {
            crate::wait::wait_for(
                &format!(
                    "TCP port {addr} in netns {} to accept connections",
                    self.name
                ),
                timeout,
                || TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok(),
            )
        })?
    }

    /// Waits until some interface in the namespace has address `addr` (e.g. a TAP configured by
    /// the daemon under test).
    pub fn wait_for_addr(&self, addr: std::net::IpAddr, timeout: Duration) -> Result<()> {
        let needle = format!(" {addr}/");
        crate::wait::wait_for(
            &format!("address {addr} in netns {}", self.name),
            timeout,
            || {
                self.run("ip", &["-o", "addr", "show"])
                    .map(|out| out.contains(&needle))
                    .unwrap_or(false)
            },
        )
    }

    /// The first global IPv6 address on `dev` that duplicate address detection has cleared (a
    /// tentative address cannot be bound yet), if any.
    pub fn global_ipv6(&self, dev: &str) -> Option<Ipv6Addr> {
        let out = self
            .run(
                "ip",
                &["-6", "-o", "addr", "show", "dev", dev, "scope", "global"],
            )
            .ok()?;
        out.lines()
            .filter(|l| !l.contains("tentative"))
            .find_map(|l| {
                let mut words = l.split_whitespace().skip_while(|w| *w != "inet6");
                words.nth(1)?.split('/').next()?.parse().ok()
            })
    }

    /// Pids of processes inside the namespace (`ip netns pids`).
    pub fn pids(&self) -> Result<Vec<i32>> {
        let out = run(Command::new("ip").args(["netns", "pids", &self.name]))?;
        Ok(out
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect())
    }

    /// Sets a per-namespace sysctl, e.g. `("net.ipv4.ping_group_range", "0 2147483647")`.
    pub fn sysctl(&self, key: &str, value: &str) -> Result<()> {
        self.run("sysctl", &["-q", "-w", &format!("{key}={value}")])
            .map(|_| ())
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Processes left inside would keep the namespace alive after `ip netns del`.
        for _ in 0..3 {
            let pids = self.pids().unwrap_or_default();
            if pids.is_empty() {
                break;
            }
            for pid in pids {
                // SAFETY: kill has no memory-safety preconditions; these pids live in our
                // own namespace, so they were started by this test.
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if let Err(e) = run(Command::new("ip").args(["netns", "del", &self.name])) {
            eprintln!("limanet-testkit: cannot delete netns {}: {e}", self.name);
        }
        let etc = self.etc_dir();
        if etc.exists() {
            let _ = std::fs::remove_dir_all(&etc);
        }
    }
}

/// The recommended test topology, entirely private to the test:
///
/// ```text
///   host netns                              internet netns
///   (daemon under test, host-side servers;  (servers "on the internet")
///    its 127.0.0.1 is the host loopback)
///   <host_if> 203.0.113.1/24  <-- veth -->  <internet_if> 203.0.113.2/24, 203.0.113.3/24
///             2001:db8:203::1/64                          2001:db8:203::2/64
///   default routes via the internet side, so nothing can leave the machine.
/// ```
///
/// `net.ipv4.ping_group_range` is opened in the host netns so unprivileged ICMP sockets work.
/// Dropping it kills everything inside both namespaces and deletes them.
#[derive(Debug)]
pub struct TestHost {
    /// Where the daemon under test runs.
    pub host: Netns,
    /// The fake internet.
    pub internet: Netns,
    /// The veth end in `host`.
    pub host_if: String,
    /// The veth end in `internet`.
    pub internet_if: String,
}

impl TestHost {
    /// The host's address on the fake internet link.
    pub const HOST_ADDR: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);
    /// The fake internet's first address.
    pub const INTERNET_ADDR: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 2);
    /// The fake internet's second address.
    pub const INTERNET_ADDR2: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 3);
    /// The host's IPv6 address on the link.
    pub const HOST_ADDR6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x203, 0, 0, 0, 0, 1);
    /// The fake internet's IPv6 address.
    pub const INTERNET_ADDR6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x203, 0, 0, 0, 0, 2);

    /// Builds the topology. Needs root.
    pub fn new() -> Result<Self> {
        let host = Netns::new("lnh")?;
        let internet = Netns::new("lni")?;
        let host_if = unique_name("vh");
        let internet_if = unique_name("vi");
        run(Command::new("ip").args([
            "link",
            "add",
            &host_if,
            "netns",
            host.name(),
            "type",
            "veth",
            "peer",
            "name",
            &internet_if,
            "netns",
            internet.name(),
        ]))?;
        let th = TestHost {
            host,
            internet,
            host_if,
            internet_if,
        };
        let h = &th.host;
        let i = &th.internet;
        h.run("ip", &["addr", "add", "203.0.113.1/24", "dev", &th.host_if])?;
        h.run(
            "ip",
            &[
                "-6",
                "addr",
                "add",
                "2001:db8:203::1/64",
                "dev",
                &th.host_if,
                "nodad",
            ],
        )?;
        h.run("ip", &["link", "set", &th.host_if, "up"])?;
        i.run(
            "ip",
            &["addr", "add", "203.0.113.2/24", "dev", &th.internet_if],
        )?;
        i.run(
            "ip",
            &["addr", "add", "203.0.113.3/24", "dev", &th.internet_if],
        )?;
        i.run(
            "ip",
            &[
                "-6",
                "addr",
                "add",
                "2001:db8:203::2/64",
                "dev",
                &th.internet_if,
                "nodad",
            ],
        )?;
        i.run("ip", &["link", "set", &th.internet_if, "up"])?;
        h.run("ip", &["route", "add", "default", "via", "203.0.113.2"])?;
        h.run(
            "ip",
            &["-6", "route", "add", "default", "via", "2001:db8:203::2"],
        )?;
        i.run("ip", &["route", "add", "default", "via", "203.0.113.1"])?;
        i.run(
            "ip",
            &["-6", "route", "add", "default", "via", "2001:db8:203::1"],
        )?;
        h.sysctl("net.ipv4.ping_group_range", "0 2147483647")?;
        tracing::debug!(host = %th.host.name(), internet = %th.internet.name(), "test host up");
        Ok(th)
    }
}
