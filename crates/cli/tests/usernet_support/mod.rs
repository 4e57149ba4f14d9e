//! Shared support for the `usernet_*` tests: a private test host (host netns + fake internet),
//! a stub upstream DNS server on the host netns's 127.0.0.1:53, and `limanet usernet` /
//! `limanet run` started inside the host netns with hermetic DNS options.
//!
//! Network safety: limanet always runs in the test host's netns, with `--dns-upstream` pointing
//! at the stub and `--resolv-conf` at a file this module writes; the host netns also gets a
//! private `/etc/resolv.conf` (through `ip netns exec`) naming the stub, so even getaddrinfo in
//! the embedded DNS reaches only the stub.
#![allow(dead_code)]

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use limanet_dns::proto::op::{Message, MessageType, ResponseCode};
use limanet_dns::proto::rr::rdata::A;
use limanet_dns::proto::rr::{Name, RData, Record, RecordType};
use limanet_testkit::{unique_name, wait_for_path, ChildGuard, Netns, TestHost};

/// The binary under test.
pub const LIMANET: &str = env!("CARGO_BIN_EXE_limanet");

/// The name the stub DNS answers (a "forwarded" name: limanet does not know it).
pub const STUB_NAME: &str = "upstream-only.example.test";
/// What the stub answers for [`STUB_NAME`].
pub const STUB_ADDR: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 3);

/// The udhcpc script used in netns guests: the testkit's (address, MTU, default route, one
/// `LIMANET-LEASE` line), with resolv.conf left alone so tests see limanet's own.
fn udhcpc_script_text() -> String {
    format!(
        "#!/bin/sh\nexport RESOLV_CONF=/dev/null\n{}",
        limanet_testkit::dhcp::UDHCPC_SCRIPT
    )
}

/// A scratch directory removed on drop.
#[derive(Debug)]
pub struct TempDir {
    /// Its path.
    pub path: PathBuf,
}

impl TempDir {
    /// Creates `$TMPDIR/limanet-nettest-<unique>`.
    pub fn new(tag: &str) -> TempDir {
        let path = std::env::temp_dir().join(format!("limanet-nettest-{}", unique_name(tag)));
        std::fs::create_dir_all(&path).expect("create temp dir");
        TempDir { path }
    }

    /// A path inside the directory.
    pub fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// A stub DNS server (UDP) answering A queries from a fixed table; other names get NXDOMAIN,
/// other types of known names an empty answer. Records the names it was asked.
pub struct DnsStub {
    /// Names asked, lower case, without the final dot.
    pub queries: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl DnsStub {
    /// Binds `addr` inside `ns`.
    pub fn start(ns: &Netns, addr: SocketAddr, table: Vec<(String, Ipv4Addr)>) -> DnsStub {
        let sock = ns
            .run_in(move || UdpSocket::bind(addr))
            .expect("enter netns")
            .expect("bind stub DNS");
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .expect("stub timeout");
        let stop = Arc::new(AtomicBool::new(false));
        let queries = Arc::new(Mutex::new(Vec::new()));
        let (stop2, queries2) = (stop.clone(), queries.clone());
        let thread = std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while !stop2.load(Ordering::Relaxed) {
                let Ok((n, peer)) = sock.recv_from(&mut buf) else {
                    continue;
                };
                let Ok(request) = Message::from_vec(&buf[..n]) else {
                    continue;
                };
                if let Some(reply) = stub_reply(&table, &request, &queries2) {
                    let _ = sock.send_to(&reply, peer);
                }
            }
        });
        DnsStub {
            queries,
            stop,
            thread: Some(thread),
        }
    }

    /// How often `name` was asked.
    pub fn count(&self, name: &str) -> usize {
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        self.queries
            .lock()
            .map(|q| q.iter().filter(|n| **n == name).count())
            .unwrap_or(0)
    }
}

fn stub_reply(
    table: &[(String, Ipv4Addr)],
    request: &Message,
    queries: &Mutex<Vec<String>>,
) -> Option<Vec<u8>> {
    let q = request.queries.first()?;
    let asked = q.name.to_ascii().trim_end_matches('.').to_ascii_lowercase();
    if let Ok(mut list) = queries.lock() {
        list.push(asked.clone());
    }
    let mut reply = Message::new(request.id, MessageType::Response, request.op_code);
    reply.metadata.recursion_desired = request.recursion_desired;
    reply.metadata.recursion_available = true;
    reply.add_query(q.clone());
    let known: Vec<Ipv4Addr> = table
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(&asked))
        .map(|(_, ip)| *ip)
        .collect();
    if known.is_empty() {
        reply.metadata.response_code = ResponseCode::NXDomain;
    } else if q.query_type == RecordType::A {
        let name = Name::from_ascii(format!("{asked}.")).ok()?;
        reply.add_answers(
            known
                .into_iter()
                .map(|ip| Record::from_rdata(name.clone(), 300, RData::A(A::from(ip)))),
        );
    }
    reply.to_vec().ok()
}

impl Drop for DnsStub {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A test host with a stub DNS on its 127.0.0.1:53 and hermetic limanet DNS options.
pub struct Env {
    /// Host netns + fake internet.
    pub th: TestHost,
    /// Scratch files (resolv.conf, sockets, pid files, scripts).
    pub dir: TempDir,
    /// The upstream DNS stub.
    pub stub: DnsStub,
    /// The resolv.conf passed to limanet with `--resolv-conf`.
    pub resolv: PathBuf,
    /// The udhcpc script for netns guests.
    pub udhcpc_script: PathBuf,
}

impl Env {
    /// Builds the topology and starts the stub.
    pub fn new(tag: &str) -> Env {
        let th = TestHost::new().expect("test host");
        let dir = TempDir::new(tag);
        let stub = DnsStub::start(
            &th.host,
            "127.0.0.1:53".parse().expect("addr"),
            vec![(STUB_NAME.to_string(), STUB_ADDR)],
        );
        // getaddrinfo inside limanet (the embedded DNS's A/AAAA path) reads this one.
        th.host
            .set_etc("resolv.conf", "nameserver 127.0.0.1\n")
            .expect("host resolv.conf");
        let resolv = dir.join("resolv.conf");
        std::fs::write(&resolv, "nameserver 127.0.0.1\n").expect("write resolv.conf");
        let udhcpc_script = dir.join("udhcpc.sh");
        std::fs::write(&udhcpc_script, udhcpc_script_text()).expect("write udhcpc script");
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&udhcpc_script, std::fs::Permissions::from_mode(0o755))
            .expect("chmod udhcpc script");
        Env {
            th,
            dir,
            stub,
            resolv,
            udhcpc_script,
        }
    }

    /// `limanet <sub>` inside the host netns with the hermetic DNS options.
    pub fn limanet(&self, sub: &str) -> Command {
        let mut c = self.th.host.command(LIMANET);
        c.arg(sub)
            .args(["--dns-upstream", "127.0.0.1:53", "--resolv-conf"])
            .arg(&self.resolv)
            .env("LIMANET_LOG", "debug");
        c
    }

    /// Starts `limanet usernet` with the arguments `args` adds and a pid file in the test's
    /// directory, and waits until it has written the pid file (it is then serving).
    pub fn usernet_daemon(&self, args: impl FnOnce(&mut Command)) -> ChildGuard {
        let pidfile = self.dir.join("usernet.pid");
        let mut cmd = self.limanet("usernet");
        args(&mut cmd);
        cmd.arg("--pidfile").arg(&pidfile);
        let daemon = ChildGuard::spawn("limanet-usernet", &mut cmd).expect("spawn usernet");
        if let Err(e) = wait_for_path(&pidfile, Duration::from_secs(20)) {
            panic!("limanet usernet did not start: {e}\n{}", daemon.logs());
        }
        daemon
    }

    /// Runs `limanet run <args> -- sh -c <script>` to completion (at most `timeout`).
    pub fn run_sh(&self, args: &[&str], script: &str, timeout: Duration) -> RunOutput {
        let mut cmd = self.limanet("run");
        cmd.args(args).args(["--", "sh", "-c", script]);
        let mut child = ChildGuard::spawn("limanet-run", &mut cmd).expect("spawn limanet run");
        let status = child.wait_timeout(timeout);
        let out = RunOutput {
            code: status.ok().and_then(|s| s.code()),
            stdout: child.stdout(),
            stderr: child.stderr(),
            pid: child.id(),
        };
        drop(child);
        if out.code.is_none() {
            // Killed at the timeout: limanet had no chance to remove its resolv.conf copy.
            let _ = std::fs::remove_file(out.resolv_conf_copy());
        }
        out
    }

    /// Starts `limanet usernet` attached (through a TAP) to a fresh guest netns, configured
    /// as 192.168.5.15 unless `extra` has `--no-configure`.
    pub fn usernet(&self, extra: &[&str]) -> Usernet {
        self.usernet_with(1, extra)
    }

    /// Starts `limanet usernet` attached to `count` fresh guest namespaces; configured ones get
    /// 192.168.5.15, .16, ... in order.
    pub fn usernet_with(&self, count: u8, extra: &[&str]) -> Usernet {
        let guests: Vec<Netns> = (0..count)
            .map(|_| Netns::new("lng").expect("guest netns"))
            .collect();
        let pidfile = self.dir.join(&format!("usernet-{}.pid", guests[0].name()));
        let mut cmd = self.limanet("usernet");
        for g in &guests {
            cmd.arg("--netns").arg(g.path());
        }
        cmd.arg("--pidfile").arg(&pidfile).args(extra);
        let daemon = ChildGuard::spawn("limanet-usernet", &mut cmd).expect("spawn usernet");
        let u = Usernet { daemon, guests };
        if let Err(e) = wait_for_path(&pidfile, Duration::from_secs(20)) {
            panic!("limanet usernet did not start: {e}\n{}", u.daemon.logs());
        }
        if !extra.contains(&"--no-configure") {
            for (i, g) in u.guests.iter().enumerate() {
                let ip = std::net::IpAddr::from([192, 168, 5, 15 + i as u8]);
                if let Err(e) = g.wait_for_addr(ip, Duration::from_secs(10)) {
                    panic!("tap0 not configured: {e}\n{}", u.daemon.logs());
                }
            }
        }
        u
    }
}

/// What `limanet run` returned.
#[derive(Debug)]
pub struct RunOutput {
    /// Exit code (None: killed or timed out).
    pub code: Option<i32>,
    /// Standard output (the command's and limanet's).
    pub stdout: String,
    /// Standard error (limanet's logs and the command's).
    pub stderr: String,
    /// The pid of the process started (limanet itself: `ip netns exec` execs it).
    pub pid: u32,
}

impl RunOutput {
    /// Both streams, for assertion messages.
    pub fn all(&self) -> String {
        format!(
            "exit {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.code, self.stdout, self.stderr
        )
    }

    /// The resolv.conf copy `limanet run` bind-mounts for the command (named by its pid).
    pub fn resolv_conf_copy(&self) -> PathBuf {
        std::env::temp_dir().join(format!("limanet-resolv-{}.conf", self.pid))
    }

    /// The value of the first `KEY=value` line in stdout.
    pub fn value(&self, key: &str) -> Option<String> {
        let prefix = format!("{key}=");
        self.stdout
            .lines()
            .find_map(|l| l.trim().strip_prefix(&prefix))
            .map(|v| v.trim().to_string())
    }
}

/// A `limanet usernet` daemon attached to guest namespaces. Drop order: the daemon first, then
/// the namespaces.
pub struct Usernet {
    /// The daemon (killed on drop).
    pub daemon: ChildGuard,
    /// The guests' network namespaces (tap0 inside each), in `--netns` order.
    pub guests: Vec<Netns>,
}

impl Usernet {
    /// The first guest's namespace.
    pub fn guest(&self) -> &Netns {
        &self.guests[0]
    }
}

/// Runs a short command in `ns` and returns its output whatever its status.
pub fn output_in(ns: &Netns, program: &str, args: &[&str]) -> Output {
    ns.command(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run command in netns")
}

/// Raises the soft open-files limit to the hard one (the concurrency tests hold ~1000 sockets).
pub fn raise_nofile() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid rlimit struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

// Not every test crate that includes this module reads HTTP.
#[allow(unused_imports)]
pub use limanet_testkit::servers::skip_response_headers as skip_headers;
