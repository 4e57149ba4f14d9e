//! The UDP and TCP listeners: thin I/O around [`crate::message`] and [`crate::handler`], with
//! limits so floods, slow clients and bad packets cost bounded memory and never stop the server.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{mpsc, Semaphore};

use crate::handler::{Handler, Lookup, Outcome};
use crate::hosts::{HostsHandle, StaticHosts};
use crate::message::{self, precheck, servfail, truncate, udp_reply_limit, Precheck};
use crate::reply_cache::{cache_key, cache_key_into, ReplyCache};
use crate::system::SystemLookup;
use crate::tcp_slots::{Admission, Slot, TcpSlots};
use crate::udp_batch::{send_batch, RawPeer, RecvBatch, BATCH};
use crate::upstream::Upstreams;

/// Limits that keep the server's memory and work bounded.
#[derive(Debug, Clone)]
pub struct Limits {
    /// UDP queries being answered at once; more are dropped (with a rate-limited log line).
    pub udp_in_flight: usize,
    /// Open TCP connections; when full, a new one replaces the connection that has waited
    /// longest for its next query (a new one is closed only if every connection is busy).
    pub tcp_connections: usize,
    /// Queries being answered at once on one TCP connection; reading pauses beyond that.
    pub tcp_in_flight_per_connection: usize,
    /// A TCP connection with no new query for this long is closed.
    pub tcp_idle_timeout: Duration,
    /// A TCP message (after its first byte) must arrive within this; slower clients are
    /// dropped, so slow-loris clients cannot hold connections.
    pub tcp_message_timeout: Duration,
    /// Each upstream exchange step (dial, write, read), like miekg's 2 s defaults.
    pub upstream_timeout: Duration,
    /// getaddrinfo calls in flight.
    pub blocking_lookups: usize,
    /// Largest TCP query accepted; a longer length prefix closes the connection before any
    /// body is read. Real queries are a few hundred bytes (a name is at most 255).
    pub max_tcp_query: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            udp_in_flight: 1024,
            tcp_connections: 256,
            tcp_in_flight_per_connection: 16,
            tcp_idle_timeout: Duration::from_secs(10),
            tcp_message_timeout: Duration::from_secs(5),
            upstream_timeout: Duration::from_secs(2),
            blocking_lookups: 64,
            max_tcp_query: 4096,
        }
    }
}

/// Configuration of one DNS server.
#[derive(Debug, Clone)]
pub struct DnsConfig {
    /// Address to listen on (UDP and TCP).
    pub listen: IpAddr,
    /// UDP port; 0 picks a free one.
    pub udp_port: u16,
    /// TCP port; 0 picks a free one.
    pub tcp_port: u16,
    /// Static hosts, `(name, IP or other name)`, later entries winning. See [`crate::lima_hosts`].
    pub hosts: Vec<(String, String)>,
    /// Answer AAAA queries (otherwise they get NOERROR with no answer).
    pub ipv6: bool,
    /// Upstream servers; when empty, the `nameserver`s of `resolv_conf`.
    pub upstreams: Vec<SocketAddr>,
    /// The resolv.conf to read upstream servers from (re-read when it changes).
    pub resolv_conf: PathBuf,
    /// Forward to 8.8.8.8 and 1.1.1.1 when resolv.conf names no server (Lima's behaviour).
    pub fallback_servers: bool,
    /// Resource limits.
    pub limits: Limits,
    /// Zones added at run time (user-v2's `dns/add`); the caller keeps a clone to edit them.
    pub zones: crate::zones::ZonesHandle,
    /// Run by [`spawn_background`] on the server's thread once its sockets are bound, before it
    /// serves (e.g. to drop the privileges only binding needed; capabilities are per thread).
    /// An error stops the start-up.
    pub after_bind: Option<AfterBind>,
    /// Accept queries only from packets that arrived on this interface (SO_BINDTODEVICE), e.g.
    /// a vmnet network's bridge: other interfaces of the host (and the host itself, through
    /// `lo`) get no answer even though the listen address is local to all of them.
    pub bind_device: Option<String>,
    /// Where AAAA queries for guest names learn the guest's IPv6 address (see
    /// [`crate::GuestIpv6`]); without it, guest names have A records only.
    pub guest_ipv6: Option<GuestIpv6Source>,
}

/// A shared [`crate::GuestIpv6`], so [`DnsConfig`] stays `Debug` and `Clone`.
#[derive(Clone)]
pub struct GuestIpv6Source(pub Arc<dyn crate::GuestIpv6>);

impl std::fmt::Debug for GuestIpv6Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("GuestIpv6Source(..)")
    }
}

/// A hook run on the DNS thread right after its sockets are bound.
#[derive(Clone)]
pub struct AfterBind(pub Arc<dyn Fn() -> std::io::Result<()> + Send + Sync>);

impl std::fmt::Debug for AfterBind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AfterBind(..)")
    }
}

impl Default for DnsConfig {
    fn default() -> Self {
        Self {
            listen: IpAddr::V4(Ipv4Addr::LOCALHOST),
            udp_port: 0,
            tcp_port: 0,
            hosts: Vec::new(),
            ipv6: false,
            upstreams: Vec::new(),
            resolv_conf: PathBuf::from("/etc/resolv.conf"),
            fallback_servers: true,
            limits: Limits::default(),
            zones: Default::default(),
            after_bind: None,
            bind_device: None,
            guest_ipv6: None,
        }
    }
}

/// Errors starting or running a server.
#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    /// A listening socket could not be bound.
    #[error("cannot bind DNS {proto} socket on {addr}: {source}")]
    Bind {
        /// "UDP" or "TCP".
        proto: &'static str,
        /// The address asked for.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// The background runtime or thread could not be started.
    #[error("cannot start the DNS server thread: {0}")]
    Start(std::io::Error),
    /// The hook run after binding failed.
    #[error("DNS start-up hook failed: {0}")]
    AfterBind(std::io::Error),
    /// The background server stopped before reporting its addresses.
    #[error("the DNS server thread stopped during start-up")]
    StartupAborted,
}

struct Shared {
    handler: Handler<dyn Lookup>,
    upstreams: Arc<Upstreams>,
    limits: Limits,
    dropped_log: RateLimit,
    evicted_log: RateLimit,
    /// Locally built replies, reused for a second (see [`crate::reply_cache`]).
    replies: ReplyCache,
}

impl Shared {
    /// Changes whenever the data local answers come from (static hosts, zones) is edited.
    fn answers_generation(&self) -> u64 {
        // Two counters that only grow: their sum grows with either.
        self.handler
            .hosts()
            .generation()
            .wrapping_add(self.handler.zones().generation())
    }

    /// A cached local reply to `bytes`, if there is a fresh one; `key` is scratch space.
    fn cached_reply(&self, bytes: &[u8], tcp: bool, key: &mut Vec<u8>) -> Option<Vec<u8>> {
        if !cache_key_into(bytes, tcp, key) {
            return None;
        }
        self.replies.get(
            key.as_slice(),
            [bytes[0], bytes[1]],
            self.answers_generation(),
            Instant::now(),
        )
    }
}

/// A bound DNS server; [`DnsServer::run`] serves it.
pub struct DnsServer {
    udp: Arc<UdpSocket>,
    tcp: TcpListener,
    shared: Arc<Shared>,
}

/// A non-blocking socket bound to `addr` (and to `device`, if given), as tokio's `bind` makes
/// them (SO_REUSEADDR for TCP, so a restart does not wait out TIME_WAIT).
fn bind_socket(
    addr: SocketAddr,
    kind: socket2::Type,
    device: Option<&str>,
) -> std::io::Result<socket2::Socket> {
    let socket = socket2::Socket::new(socket2::Domain::for_address(addr), kind, None)?;
    if kind == socket2::Type::STREAM {
        socket.set_reuse_address(true)?;
    }
    if let Some(device) = device {
        socket.bind_device(Some(device.as_bytes()))?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    Ok(socket)
}

impl DnsServer {
    /// Binds the UDP and TCP sockets and prepares the real host resolver.
    pub async fn bind(config: DnsConfig) -> Result<Self, DnsError> {
        let upstreams = Arc::new(Upstreams::with_fallback(
            config.upstreams.clone(),
            config.resolv_conf.clone(),
            config.limits.upstream_timeout,
            config.fallback_servers,
        ));
        let lookup = Arc::new(SystemLookup::new(
            upstreams.clone(),
            config.limits.blocking_lookups,
        ));
        Self::bind_parts(config, upstreams, lookup).await
    }

    /// Binds with a caller-provided [`Lookup`] (for tests); forwarding still goes to the
    /// configured upstreams.
    pub async fn bind_with_lookup(
        config: DnsConfig,
        lookup: Arc<dyn Lookup>,
    ) -> Result<Self, DnsError> {
        let upstreams = Arc::new(Upstreams::with_fallback(
            config.upstreams.clone(),
            config.resolv_conf.clone(),
            config.limits.upstream_timeout,
            config.fallback_servers,
        ));
        Self::bind_parts(config, upstreams, lookup).await
    }

    async fn bind_parts(
        config: DnsConfig,
        upstreams: Arc<Upstreams>,
        lookup: Arc<dyn Lookup>,
    ) -> Result<Self, DnsError> {
        let device = config.bind_device.as_deref();
        let udp_addr = SocketAddr::new(config.listen, config.udp_port);
        let udp = bind_socket(udp_addr, socket2::Type::DGRAM, device)
            .and_then(|s| UdpSocket::from_std(s.into()))
            .map_err(|source| DnsError::Bind {
                proto: "UDP",
                addr: udp_addr,
                source,
            })?;
        let tcp_addr = SocketAddr::new(config.listen, config.tcp_port);
        let tcp = bind_socket(tcp_addr, socket2::Type::STREAM, device)
            .and_then(|s| {
                s.listen(1024)?;
                TcpListener::from_std(s.into())
            })
            .map_err(|source| DnsError::Bind {
                proto: "TCP",
                addr: tcp_addr,
                source,
            })?;
        let hosts = HostsHandle::new(StaticHosts::new(
            config.hosts.iter().map(|(n, v)| (n.as_str(), v.as_str())),
        ));
        let shared = Arc::new(Shared {
            handler: Handler::new(hosts, config.ipv6, lookup)
                .with_zones(config.zones.clone())
                .with_guest_ipv6(config.guest_ipv6.as_ref().map(|g| g.0.clone())),
            upstreams,
            limits: config.limits,
            dropped_log: RateLimit::new(),
            evicted_log: RateLimit::new(),
            replies: ReplyCache::default(),
        });
        Ok(Self {
            udp: Arc::new(udp),
            tcp,
            shared,
        })
    }

    /// The bound UDP address.
    pub fn udp_addr(&self) -> SocketAddr {
        self.udp
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)))
    }

    /// The bound TCP address.
    pub fn tcp_addr(&self) -> SocketAddr {
        self.tcp
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)))
    }

    /// The static hosts, editable while the server runs.
    pub fn hosts(&self) -> HostsHandle {
        self.shared.handler.hosts().clone()
    }

    /// Serves until the future is dropped. Errors on single packets or connections are logged
    /// and never end the server.
    pub async fn run(self) {
        tracing::info!(udp = %self.udp_addr(), tcp = %self.tcp_addr(), "DNS server listening");
        tokio::join!(
            serve_udp(self.udp, self.shared.clone()),
            serve_tcp(self.tcp, self.shared)
        );
    }
}

/// Logs at most once per second, counting what it suppressed.
struct RateLimit {
    last: std::sync::Mutex<Option<Instant>>,
    suppressed: AtomicU64,
}

impl RateLimit {
    fn new() -> Self {
        Self {
            last: std::sync::Mutex::new(None),
            suppressed: AtomicU64::new(0),
        }
    }

    /// Returns `Some(suppressed since last time)` when a line may be logged now.
    fn allow(&self) -> Option<u64> {
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if last.is_some_and(|t| now.duration_since(t) < Duration::from_secs(1)) {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        *last = Some(now);
        Some(self.suppressed.swap(0, Ordering::Relaxed))
    }
}

/// Runs one request through the accept filter, the handler and the forwarder, and returns the
/// reply to send (None: send nothing). `tcp` selects the transport rules: UDP replies are
/// truncated to the client's EDNS(0) size (capped at 1232), or 512 bytes without EDNS; TCP
/// replies never.
async fn respond(shared: &Shared, bytes: &[u8], peer: SocketAddr, tcp: bool) -> Option<Vec<u8>> {
    let request = match precheck(bytes) {
        Precheck::Drop(reason) => {
            if let Some(suppressed) = shared.dropped_log.allow() {
                tracing::warn!(%peer, len = bytes.len(), reason, suppressed, "ignored a DNS message");
            }
            return None;
        }
        Precheck::Reply(reply, reason) => {
            if let Some(suppressed) = shared.dropped_log.allow() {
                tracing::warn!(%peer, len = bytes.len(), reason, suppressed, opcode = ?message::opcode(bytes), "rejected a DNS message");
            }
            return Some(reply);
        }
        Precheck::Request(request) => request,
    };
    if tcp {
        // (UDP looks in the cache before a task is even spawned.)
        if let Some(reply) = shared.cached_reply(bytes, tcp, &mut Vec::new()) {
            return Some(reply);
        }
    }
    // Read before answering: an edit of the hosts while we answer makes the entry stale.
    let generation = shared.answers_generation();
    let mut local = false;
    let reply = match shared.handler.handle(&request).await {
        Outcome::Reply(reply) => {
            local = true;
            reply
        }
        Outcome::Forward => match shared.upstreams.exchange(bytes, tcp).await {
            Ok(reply) => message::ensure_opt(&request, reply),
            Err(err) => {
                tracing::warn!(%peer, id = request.id, question = ?request.queries.first().map(|q| (q.name.to_ascii(), q.query_type)), %err, "answering SERVFAIL");
                servfail(&request)
            }
        },
    };
    let reply = if tcp {
        reply
    } else {
        truncate(reply, udp_reply_limit(&request))
    };
    if local {
        if let Some(key) = cache_key(bytes, tcp) {
            shared.replies.put(key, &reply, generation, Instant::now());
        }
    }
    Some(reply)
}

async fn serve_udp(socket: Arc<UdpSocket>, shared: Arc<Shared>) {
    let slots = Arc::new(Semaphore::new(shared.limits.udp_in_flight));
    let fd = socket.as_raw_fd();
    let mut batch = RecvBatch::new();
    // Reply buffers reused from batch to batch (no allocation per cached answer); the first
    // `hits` hold this batch's replies.
    let mut cached: Vec<(Vec<u8>, RawPeer)> = (0..BATCH)
        .map(|_| (Vec::with_capacity(512), RawPeer::default()))
        .collect();
    let mut key = Vec::with_capacity(512);
    loop {
        if let Err(err) = socket.readable().await {
            tracing::warn!(%err, "UDP socket not pollable");
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        }
        let n = match socket.try_io(Interest::READABLE, || batch.recv(fd)) {
            Ok(n) => n,
            Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(err) => {
                // ICMP errors caused by earlier replies surface here; anything else persistent
                // must not become a busy loop.
                tracing::debug!(%err, "UDP receive error");
                if !matches!(
                    err.kind(),
                    std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::ConnectionReset
                ) {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                continue;
            }
        };
        let mut hits = 0;
        {
            // One lock, clock reading and generation for the whole batch.
            let replies = shared
                .replies
                .batch(shared.answers_generation(), Instant::now());
            for i in 0..n {
                let (bytes, raw_peer) = batch.get(i);
                // A name asked again within a second: answered in this batch, without a task.
                if cache_key_into(bytes, false, &mut key) {
                    let (reply, peer) = &mut cached[hits];
                    if replies.reply_into(&key, [bytes[0], bytes[1]], reply) {
                        *peer = raw_peer;
                        hits += 1;
                        continue;
                    }
                }
                let Some(peer) = raw_peer.socket_addr() else {
                    continue;
                };
                let Ok(permit) = slots.clone().try_acquire_owned() else {
                    if let Some(suppressed) = shared.dropped_log.allow() {
                        tracing::warn!(%peer, limit = shared.limits.udp_in_flight, suppressed, "too many UDP queries in flight; dropping");
                    }
                    continue;
                };
                let bytes = bytes.to_vec();
                let socket = socket.clone();
                let shared = shared.clone();
                tokio::spawn(async move {
                    if let Some(reply) = respond(&shared, &bytes, peer, false).await {
                        if let Err(err) = socket.send_to(&reply, peer).await {
                            tracing::debug!(%peer, %err, "UDP send failed");
                        }
                    }
                    drop(permit);
                });
            }
        }
        send_cached(&socket, &cached[..hits]).await;
    }
}

/// Sends the replies answered from the cache, waiting for buffer space if the socket is full;
/// one that the kernel refuses (e.g. an unreachable peer) is dropped, not retried.
async fn send_cached(socket: &UdpSocket, replies: &[(Vec<u8>, RawPeer)]) {
    let fd = socket.as_raw_fd();
    let mut start = 0;
    while start < replies.len() {
        match socket.try_io(Interest::WRITABLE, || send_batch(fd, &replies[start..])) {
            Ok(sent) => start += sent.max(1),
            Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => {
                if socket.writable().await.is_err() {
                    break;
                }
            }
            Err(err) => {
                tracing::debug!(%err, "UDP send failed");
                start += 1;
            }
        }
    }
}

async fn serve_tcp(listener: TcpListener, shared: Arc<Shared>) {
    let slots = TcpSlots::new(shared.limits.tcp_connections);
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(err) => {
                // EMFILE and friends: back off briefly instead of spinning.
                tracing::warn!(%err, "TCP accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let (slot, admission) = slots.admit(Instant::now());
        match admission {
            Admission::Free => {}
            Admission::Evicted(idle) => {
                if let Some(suppressed) = shared.evicted_log.allow() {
                    tracing::warn!(%peer, limit = shared.limits.tcp_connections, idle_ms = idle.as_millis() as u64, suppressed, "TCP connection limit reached; closing the longest-idle connection for a new one");
                }
            }
            Admission::Full => {
                if let Some(suppressed) = shared.dropped_log.allow() {
                    tracing::warn!(%peer, limit = shared.limits.tcp_connections, suppressed, "every TCP connection is busy reading a query; closing the new one");
                }
            }
        }
        let Some(slot) = slot else {
            continue;
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            serve_connection(stream, peer, shared, slot).await;
        });
    }
}

/// Serves one TCP connection: several queries in a row or pipelined (RFC 7766), answered
/// concurrently, replies in completion order.
async fn serve_connection(stream: TcpStream, peer: SocketAddr, shared: Arc<Shared>, slot: Slot) {
    let _ = stream.set_nodelay(true);
    let (mut reader, mut writer) = stream.into_split();
    let limit = shared.limits.tcp_in_flight_per_connection;
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(limit);
    let write_timeout = shared.limits.tcp_idle_timeout;
    let writer_task = tokio::spawn(async move {
        while let Some(reply) = rx.recv().await {
            let Ok(len) = u16::try_from(reply.len()) else {
                tracing::warn!(%peer, len = reply.len(), "reply too long for TCP; skipped");
                continue;
            };
            let mut framed = Vec::with_capacity(reply.len() + 2);
            framed.extend_from_slice(&len.to_be_bytes());
            framed.extend_from_slice(&reply);
            match tokio::time::timeout(write_timeout, writer.write_all(&framed)).await {
                Ok(Ok(())) => {}
                Ok(Err(err)) => {
                    tracing::debug!(%peer, %err, "TCP write failed");
                    return;
                }
                Err(_) => {
                    tracing::warn!(%peer, "TCP client does not read its replies; closing");
                    return;
                }
            }
        }
    });
    let slots = Arc::new(Semaphore::new(limit));
    loop {
        let mut len = [0u8; 2];
        slot.idle(Instant::now());
        let first = tokio::select! {
            first = tokio::time::timeout(shared.limits.tcp_idle_timeout, reader.read_u8()) => first,
            () = slot.evicted() => {
                tracing::debug!(%peer, "idle TCP connection closed for a new client");
                break;
            }
        };
        match first {
            Ok(Ok(first)) => len[0] = first,
            Ok(Err(_)) => break, // EOF or reset between messages: a normal close.
            Err(_) => {
                tracing::debug!(%peer, "idle TCP connection closed");
                break;
            }
        }
        slot.busy();
        let mut body = Vec::new();
        let max = shared.limits.max_tcp_query;
        let read = async {
            len[1] = reader.read_u8().await?;
            let n = usize::from(u16::from_be_bytes(len));
            if n < message::HEADER_LEN || n > max {
                return Ok(Err(n));
            }
            body.resize(n, 0);
            reader.read_exact(&mut body).await?;
            Ok::<_, std::io::Error>(Ok(n))
        };
        match tokio::time::timeout(shared.limits.tcp_message_timeout, read).await {
            Ok(Ok(Err(n))) => {
                tracing::warn!(%peer, len = n, min = message::HEADER_LEN, max, "TCP length prefix out of range; closing");
                break;
            }
            Ok(Ok(Ok(_))) => {}
            Ok(Err(err)) => {
                tracing::warn!(%peer, %err, expected = u16::from_be_bytes(len), "TCP message cut short; closing");
                break;
            }
            Err(_) => {
                tracing::warn!(%peer, expected = u16::from_be_bytes(len), "TCP client too slow sending a message; closing");
                break;
            }
        }
        let Ok(permit) = slots.clone().acquire_owned().await else {
            break;
        };
        let shared = shared.clone();
        let tx = tx.clone();
        tokio::spawn(async move {
            if let Some(reply) = respond(&shared, &body, peer, true).await {
                let _ = tx.send(reply).await;
            }
            drop(permit);
        });
    }
    // Let queries already read finish and their replies go out, then close.
    drop(tx);
    let _ = writer_task.await;
}

/// A server running on its own thread (tokio current_thread runtime); dropping it stops the
/// server and joins the thread.
pub struct BackgroundDns {
    udp_addr: SocketAddr,
    tcp_addr: SocketAddr,
    hosts: HostsHandle,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl BackgroundDns {
    /// The bound UDP address.
    pub fn udp_addr(&self) -> SocketAddr {
        self.udp_addr
    }

    /// The bound TCP address.
    pub fn tcp_addr(&self) -> SocketAddr {
        self.tcp_addr
    }

    /// The static hosts, editable while the server runs.
    pub fn hosts(&self) -> HostsHandle {
        self.hosts.clone()
    }
}

impl Drop for BackgroundDns {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Starts a server on a new thread with its own current_thread runtime and returns once it is
/// listening.
pub fn spawn_background(config: DnsConfig) -> Result<BackgroundDns, DnsError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(DnsError::Start)?;
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let thread = std::thread::Builder::new()
        .name("limanet-dns".into())
        .spawn(move || {
            runtime.block_on(async move {
                let after_bind = config.after_bind.clone();
                let server = match DnsServer::bind(config).await {
                    Ok(server) => server,
                    Err(err) => {
                        let _ = ready_tx.send(Err(err));
                        return;
                    }
                };
                if let Some(AfterBind(hook)) = after_bind {
                    if let Err(err) = hook() {
                        let _ = ready_tx.send(Err(DnsError::AfterBind(err)));
                        return;
                    }
                }
                let _ = ready_tx.send(Ok((server.udp_addr(), server.tcp_addr(), server.hosts())));
                tokio::select! {
                    () = server.run() => {}
                    _ = stop_rx => tracing::debug!("background DNS server stopping"),
                }
            });
        })
        .map_err(DnsError::Start)?;
    match ready_rx.recv() {
        Ok(Ok((udp_addr, tcp_addr, hosts))) => Ok(BackgroundDns {
            udp_addr,
            tcp_addr,
            hosts,
            stop: Some(stop_tx),
            thread: Some(thread),
        }),
        Ok(Err(err)) => {
            let _ = thread.join();
            Err(err)
        }
        Err(_) => {
            let _ = thread.join();
            Err(DnsError::StartupAborted)
        }
    }
}
