//! Shared harness for the `limanet dns` integration tests (included by the `dns_*.rs` tests with
//! `#[path]`; on its own it is an empty test crate).
//!
//! Hermetic by construction: every test runs `limanet dns` inside `unshare -m` with a test
//! resolv.conf (pointing at a stub DNS server this process runs on a unique 127.x.y.z:53), a
//! test hosts file and a `hosts: files dns` nsswitch.conf bind-mounted over the real ones, so
//! neither getaddrinfo nor the forwarder can reach any real DNS server.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use limanet_dns::proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use limanet_dns::proto::rr::{Name, RData, Record, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

static COUNTER: AtomicU32 = AtomicU32::new(1);

/// A loopback address no other test (in this or a parallel test process) uses.
pub fn unique_loopback() -> Ipv4Addr {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let pid = std::process::id();
    Ipv4Addr::new(
        127,
        100 + (pid % 100) as u8,
        (pid / 100 % 250) as u8,
        (n % 250 + 2) as u8,
    )
}

/// What the stub answers for one (name, type).
#[derive(Clone, Debug)]
pub struct StubAnswer {
    /// Answer records (their owner names are used as given).
    pub records: Vec<Record>,
    /// Wait this long before answering.
    pub delay: Duration,
}

/// A stub DNS server on `ip:53` (UDP and TCP) answering from a table; unknown names get
/// NXDOMAIN. It counts the queries it received.
pub struct Stub {
    pub ip: Ipv4Addr,
    pub queries: Arc<Mutex<Vec<(String, RecordType)>>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

pub type Table = HashMap<(String, RecordType), StubAnswer>;

/// Builds a table entry.
pub fn entry(table: &mut Table, name: &str, rtype: RecordType, records: Vec<Record>) {
    table.insert(
        (name.to_ascii_lowercase(), rtype),
        StubAnswer {
            records,
            delay: Duration::ZERO,
        },
    );
}

/// A record with TTL 300 (so local answers, TTL 5, are told apart from relayed ones).
pub fn rr(name: &str, data: RData) -> Record {
    Record::from_rdata(Name::from_ascii(name).expect("test name"), 300, data)
}

fn stub_reply(table: &Table, request: &Message) -> (Vec<u8>, Duration) {
    let mut reply = Message::new(request.id, MessageType::Response, request.op_code);
    reply.metadata.recursion_desired = request.recursion_desired;
    reply.metadata.recursion_available = true;
    let mut delay = Duration::ZERO;
    if let Some(q) = request.queries.first() {
        reply.add_query(q.clone());
        let key = (q.name.to_ascii().to_ascii_lowercase(), q.query_type);
        match table.get(&key) {
            Some(answer) => {
                reply.add_answers(answer.records.iter().cloned());
                delay = answer.delay;
            }
            None => {
                let name_known = table.keys().any(|(n, _)| *n == key.0);
                if !name_known {
                    reply.metadata.response_code = ResponseCode::NXDomain;
                }
            }
        }
    }
    (reply.to_vec().expect("stub reply encodes"), delay)
}

impl Stub {
    /// Starts a stub on a fresh loopback address.
    pub fn start(table: Table) -> Stub {
        let ip = unique_loopback();
        let table = Arc::new(table);
        let queries = Arc::new(Mutex::new(Vec::new()));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let q2 = queries.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("stub runtime");
            rt.block_on(async move {
                let addr = SocketAddr::new(IpAddr::V4(ip), 53);
                let udp = Arc::new(
                    tokio::net::UdpSocket::bind(addr)
                        .await
                        .expect("stub UDP bind"),
                );
                let tcp = tokio::net::TcpListener::bind(addr)
                    .await
                    .expect("stub TCP bind");
                ready_tx.send(()).expect("ready");
                let record = |msg: &Message| {
                    if let Some(q) = msg.queries.first() {
                        q2.lock()
                            .expect("lock")
                            .push((q.name.to_ascii().to_ascii_lowercase(), q.query_type));
                    }
                };
                let udp_loop = {
                    let table = table.clone();
                    let udp = udp.clone();
                    async move {
                        let mut buf = vec![0u8; 65535];
                        loop {
                            let Ok((n, peer)) = udp.recv_from(&mut buf).await else {
                                continue;
                            };
                            let Ok(msg) = Message::from_vec(&buf[..n]) else {
                                continue;
                            };
                            record(&msg);
                            let (mut reply, delay) = stub_reply(&table, &msg);
                            // Like a real server: cut to the client's UDP size with TC.
                            let limit = msg
                                .edns
                                .as_ref()
                                .map_or(512, |e| usize::from(e.max_payload()).max(512));
                            if reply.len() > limit {
                                let mut cut = Message::from_vec(&reply).expect("reparse");
                                cut.answers.clear();
                                cut.metadata.truncation = true;
                                reply = cut.to_vec().expect("encode");
                            }
                            let udp = udp.clone();
                            tokio::spawn(async move {
                                tokio::time::sleep(delay).await;
                                let _ = udp.send_to(&reply, peer).await;
                            });
                        }
                    }
                };
                let tcp_loop = async {
                    loop {
                        let Ok((mut stream, _)) = tcp.accept().await else {
                            continue;
                        };
                        let table = table.clone();
                        let q3 = q2.clone();
                        tokio::spawn(async move {
                            loop {
                                let Ok(len) = stream.read_u16().await else {
                                    return;
                                };
                                let mut body = vec![0u8; usize::from(len)];
                                if stream.read_exact(&mut body).await.is_err() {
                                    return;
                                }
                                let Ok(msg) = Message::from_vec(&body) else {
                                    return;
                                };
                                if let Some(q) = msg.queries.first() {
                                    q3.lock().expect("lock").push((
                                        q.name.to_ascii().to_ascii_lowercase(),
                                        q.query_type,
                                    ));
                                }
                                let (reply, delay) = stub_reply(&table, &msg);
                                tokio::time::sleep(delay).await;
                                let mut framed = (reply.len() as u16).to_be_bytes().to_vec();
                                framed.extend_from_slice(&reply);
                                if stream.write_all(&framed).await.is_err() {
                                    return;
                                }
                            }
                        });
                    }
                };
                tokio::select! {
                    _ = udp_loop => {}
                    _ = tcp_loop => {}
                    _ = stop_rx => {}
                }
            });
        });
        ready_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("stub started");
        Stub {
            ip,
            queries,
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }

    /// How many queries for `name` (any type) the stub has seen.
    pub fn count(&self, name: &str) -> usize {
        let name = name.to_ascii_lowercase();
        self.queries
            .lock()
            .expect("lock")
            .iter()
            .filter(|(n, _)| *n == name)
            .count()
    }
}

impl Drop for Stub {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A temporary directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("limanet-dns-{tag}-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `limanet dns` running in its own mount namespace; killed on drop.
pub struct Limanet {
    child: Child,
    pub udp: SocketAddr,
    pub tcp: SocketAddr,
    pub dir: TempDir,
}

impl Limanet {
    /// Starts `limanet dns` whose resolv.conf names `nameserver` (a stub, or a dead address)
    /// and whose /etc/hosts is `hosts_file`, with `args` added.
    pub fn start(nameserver: Ipv4Addr, hosts_file: &str, args: &[&str]) -> Limanet {
        let dir = TempDir::new("ns");
        let resolv = dir.0.join("resolv.conf");
        let hosts = dir.0.join("hosts");
        let nsswitch = dir.0.join("nsswitch.conf");
        // timeout/attempts keep glibc from waiting long on a dead stub.
        std::fs::write(
            &resolv,
            format!("nameserver {nameserver}\noptions timeout:1 attempts:1\n"),
        )
        .expect("write resolv.conf");
        std::fs::write(&hosts, format!("127.0.0.1 localhost\n{hosts_file}")).expect("write hosts");
        std::fs::write(&nsswitch, "hosts: files dns\n").expect("write nsswitch.conf");
        let script = r#"set -e
mount --bind "$1" /etc/resolv.conf
mount --bind "$2" /etc/hosts
mount --bind "$3" /etc/nsswitch.conf
shift 3
exec "$@""#;
        let mut child = Command::new("unshare")
            .args(["-m", "--propagation", "private", "sh", "-c", script, "sh"])
            .arg(&resolv)
            .arg(&hosts)
            .arg(&nsswitch)
            .arg(env!("CARGO_BIN_EXE_limanet"))
            .args(["--log", "info", "dns"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn unshare + limanet dns");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("read the address line");
        let v: serde_json::Value = serde_json::from_str(line.trim())
            .unwrap_or_else(|e| panic!("bad address line {line:?}: {e}"));
        let udp = v["udp"].as_str().expect("udp").parse().expect("udp addr");
        let tcp = v["tcp"].as_str().expect("tcp").parse().expect("tcp addr");
        Limanet {
            child,
            udp,
            tcp,
            dir,
        }
    }

    /// The resolv.conf the server reads (bind-mounted; rewrite it in place).
    pub fn resolv_conf(&self) -> PathBuf {
        self.dir.0.join("resolv.conf")
    }

    /// The server's pid (unshare and sh exec into limanet, so it is the child's pid).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the process is still running.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Sends SIGTERM and returns the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        self.child.wait().expect("wait")
    }
}

impl Drop for Limanet {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// dig's view of one exchange.
#[derive(Debug)]
pub struct Dig {
    pub status: String,
    pub flags: Vec<String>,
    /// Answer lines, whitespace-normalised: "name ttl class type data".
    pub answers: Vec<String>,
    pub raw: String,
}

/// Runs dig against `server` with extra options (e.g. "+tcp", "+ignore").
pub fn dig(server: SocketAddr, name: &str, rtype: &str, opts: &[&str]) -> Dig {
    let out = Command::new("dig")
        .arg(format!("@{}", server.ip()))
        .args([
            "-p",
            &server.port().to_string(),
            name,
            rtype,
            "+time=3",
            "+tries=1",
            "+nocookie",
        ])
        .args(opts)
        .output()
        .expect("run dig");
    let raw = String::from_utf8_lossy(&out.stdout).into_owned();
    let status = raw
        .split("status: ")
        .nth(1)
        .and_then(|s| s.split(',').next())
        .unwrap_or("")
        .to_string();
    let flags = raw
        .split(";; flags: ")
        .nth(1)
        .and_then(|s| s.split(';').next())
        .map(|s| s.split_whitespace().map(String::from).collect())
        .unwrap_or_default();
    let answers = raw
        .split(";; ANSWER SECTION:\n")
        .nth(1)
        .map(|s| {
            s.lines()
                .take_while(|l| !l.trim().is_empty())
                .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
                .collect()
        })
        .unwrap_or_default();
    Dig {
        status,
        flags,
        answers,
        raw,
    }
}

/// Builds a query message.
pub fn query(id: u16, name: &str, rtype: RecordType) -> Vec<u8> {
    let mut msg = Message::new(id, MessageType::Query, OpCode::Query);
    msg.metadata.recursion_desired = true;
    msg.add_query(Query::query(Name::from_ascii(name).expect("name"), rtype));
    msg.to_vec().expect("encode")
}

/// A query with an EDNS(0) OPT record advertising `size` bytes.
pub fn edns_query(id: u16, name: &str, rtype: RecordType, size: u16) -> Vec<u8> {
    let mut msg = Message::new(id, MessageType::Query, OpCode::Query);
    msg.metadata.recursion_desired = true;
    msg.add_query(Query::query(Name::from_ascii(name).expect("name"), rtype));
    let mut edns = limanet_dns::proto::op::Edns::new();
    edns.set_max_payload(size);
    msg.set_edns(edns);
    msg.to_vec().expect("encode")
}

/// A blocking UDP exchange with a deadline.
pub fn udp_exchange(server: SocketAddr, request: &[u8], timeout: Duration) -> Option<Vec<u8>> {
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    sock.set_read_timeout(Some(timeout)).expect("timeout");
    sock.send_to(request, server).expect("send");
    let mut buf = vec![0u8; 65535];
    let n = sock.recv(&mut buf).ok()?;
    buf.truncate(n);
    Some(buf)
}
