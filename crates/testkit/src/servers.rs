//! Small servers that run as threads of the test process but listen inside a chosen network
//! namespace (the socket is created there with [`Netns::run_in`]): TCP echo, UDP echo and a
//! minimal HTTP server for file and large-transfer tests. Each stops when dropped.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::checksum::{sha256_reader, PatternReader};
use crate::error::IoContext;
use crate::{Netns, Result};

/// How often the server threads look at their stop flag.
const STOP_POLL: Duration = Duration::from_millis(50);

type Handler = Arc<dyn Fn(TcpStream) + Send + Sync>;

/// Binds a TCP listener in `ns` (or the current namespace when `None`).
fn bind_tcp(ns: Option<&Netns>, addr: SocketAddr) -> Result<TcpListener> {
    let bind = move || TcpListener::bind(addr).ctx(|| format!("cannot bind TCP {addr}"));
    match ns {
        Some(ns) => ns.run_in(bind)?,
        None => bind(),
    }
}

/// Common part of the TCP servers: an accept thread and one thread per connection.
#[derive(Debug)]
struct TcpServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    accept: Option<JoinHandle<()>>,
    conns: Arc<Mutex<Vec<TcpStream>>>,
}

impl TcpServer {
    fn start(name: &str, listener: TcpListener, handler: Handler) -> Result<Self> {
        let addr = listener
            .local_addr()
            .ctx(|| format!("{name}: local address"))?;
        let stop = Arc::new(AtomicBool::new(false));
        let conns = Arc::new(Mutex::new(Vec::new()));
        let (stop2, conns2) = (stop.clone(), conns.clone());
        let name2 = name.to_string();
        let accept = std::thread::Builder::new()
            .name(format!("{name}-accept"))
            .spawn(move || accept_loop(&name2, listener, &stop2, &conns2, handler))
            .ctx(|| format!("{name}: cannot spawn thread"))?;
        tracing::debug!(server = name, %addr, "listening");
        Ok(TcpServer {
            addr,
            stop,
            accept: Some(accept),
            conns,
        })
    }
}

/// Waits until `fd` is readable or the timeout passes.
fn poll_readable(fd: i32, timeout: Duration) -> bool {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
    // SAFETY: `p` is a valid pollfd for the duration of the call.
    unsafe { libc::poll(&mut p, 1, ms) > 0 }
}

fn accept_loop(
    name: &str,
    listener: TcpListener,
    stop: &AtomicBool,
    conns: &Mutex<Vec<TcpStream>>,
    handler: Handler,
) {
    while !stop.load(Ordering::Relaxed) {
        if !poll_readable(listener.as_raw_fd(), STOP_POLL) {
            continue;
        }
        let stream = match listener.accept() {
            Ok((s, peer)) => {
                tracing::debug!(server = name, %peer, "accepted");
                s
            }
            Err(e) => {
                tracing::debug!(server = name, error = %e, "accept failed");
                continue;
            }
        };
        if let (Ok(clone), Ok(mut list)) = (stream.try_clone(), conns.lock()) {
            list.push(clone);
        }
        let h = handler.clone();
        if let Err(e) = std::thread::Builder::new()
            .name(format!("{name}-conn"))
            .spawn(move || h(stream))
        {
            tracing::warn!(server = name, error = %e, "cannot spawn connection thread");
        }
    }
}

impl Drop for TcpServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
        // Unblocks connection threads still reading.
        if let Ok(list) = self.conns.lock() {
            for c in list.iter() {
                let _ = c.shutdown(std::net::Shutdown::Both);
            }
        }
    }
}

/// A TCP echo server: sends back every byte it receives, per connection, until EOF.
#[derive(Debug)]
pub struct TcpEchoServer {
    inner: TcpServer,
}

impl TcpEchoServer {
    /// Listens on `addr` inside `ns` (port 0 picks a free port; see [`TcpEchoServer::addr`]).
    pub fn start(ns: &Netns, addr: SocketAddr) -> Result<Self> {
        Self::start_in(Some(ns), addr)
    }

    /// Listens on `addr` in `ns`, or in the current namespace when `ns` is `None`.
    pub fn start_in(ns: Option<&Netns>, addr: SocketAddr) -> Result<Self> {
        let listener = bind_tcp(ns, addr)?;
        let handler: Handler = Arc::new(|s: TcpStream| {
            let _ = echo(s);
        });
        Ok(TcpEchoServer {
            inner: TcpServer::start("tcp-echo", listener, handler)?,
        })
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.inner.addr
    }
}

fn echo(s: TcpStream) -> std::io::Result<()> {
    let mut r = s.try_clone()?;
    let mut w = s;
    std::io::copy(&mut r, &mut w)?;
    w.shutdown(std::net::Shutdown::Write)
}

/// A UDP echo server: sends every datagram back to its sender, from the address it was sent to
/// (`IP_PKTINFO`/`IPV6_PKTINFO`), so a wildcard-bound server answers correctly in a namespace
/// with several addresses (which NAT tests need: a reply from another address is rightly dropped).
#[derive(Debug)]
pub struct UdpEchoServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl UdpEchoServer {
    /// Binds `addr` inside `ns` (port 0 picks a free port).
    pub fn start(ns: &Netns, addr: SocketAddr) -> Result<Self> {
        Self::start_in(Some(ns), addr)
    }

    /// Binds `addr` in `ns`, or in the current namespace when `ns` is `None`.
    pub fn start_in(ns: Option<&Netns>, addr: SocketAddr) -> Result<Self> {
        let bind = move || UdpSocket::bind(addr).ctx(|| format!("cannot bind UDP {addr}"));
        let sock = match ns {
            Some(ns) => ns.run_in(bind)??,
            None => bind()?,
        };
        let addr = sock.local_addr().ctx(|| "udp-echo: local address".into())?;
        sock.set_read_timeout(Some(STOP_POLL))
            .ctx(|| "udp-echo: set timeout".into())?;
        pktinfo::enable(&sock, addr.is_ipv6()).ctx(|| "udp-echo: enable PKTINFO".into())?;
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let thread = std::thread::Builder::new()
            .name("udp-echo".into())
            .spawn(move || {
                let mut buf = vec![0u8; 65536];
                while !stop2.load(Ordering::Relaxed) {
                    if let Err(e) = pktinfo::echo_one(&sock, &mut buf) {
                        if !matches!(
                            e.kind(),
                            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                        ) {
                            tracing::debug!(error = %e, "udp-echo");
                        }
                    }
                }
            })
            .ctx(|| "udp-echo: cannot spawn thread".into())?;
        Ok(UdpEchoServer {
            addr,
            stop,
            thread: Some(thread),
        })
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for UdpEchoServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A minimal HTTP/1.0 server (one request per connection, `Connection: close`), enough for
/// curl, busybox wget and large transfers:
///
/// - `GET /bytes/<n>` and `GET /bytes/<n>?seed=<s>`: `n` bytes of
///   [`PatternReader::new(s, n)`](PatternReader) (seed 0 by default), streamed;
/// - `GET /<path>`: the file under the root directory, if one was given (no `..`);
/// - `POST` or `PUT` with `Content-Length`: replies with the hex SHA-256 of the body and `\n`
///   (so a guest can upload and the test compares hashes);
/// - anything else: 404.
#[derive(Debug)]
pub struct HttpServer {
    inner: TcpServer,
}

impl HttpServer {
    /// Listens on `addr` inside `ns`, serving files from `root` if given.
    pub fn start(ns: &Netns, addr: SocketAddr, root: Option<PathBuf>) -> Result<Self> {
        Self::start_in(Some(ns), addr, root)
    }

    /// Listens on `addr` in `ns`, or in the current namespace when `ns` is `None`.
    pub fn start_in(ns: Option<&Netns>, addr: SocketAddr, root: Option<PathBuf>) -> Result<Self> {
        let listener = bind_tcp(ns, addr)?;
        let root = Arc::new(root);
        let handler: Handler = Arc::new(move |s: TcpStream| {
            if let Err(e) = serve_http(s, root.as_ref().as_deref()) {
                tracing::debug!(error = %e, "http: connection failed");
            }
        });
        Ok(HttpServer {
            inner: TcpServer::start("http", listener, handler)?,
        })
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.inner.addr
    }
}

fn serve_http(s: TcpStream, root: Option<&std::path::Path>) -> std::io::Result<()> {
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut reader = BufReader::new(s.try_clone()?);
    let mut w = s;
    let mut request = String::new();
    reader.read_line(&mut request)?;
    let mut parts = request.split_whitespace();
    let method = parts.next().unwrap_or("").to_string();
    let target = parts.next().unwrap_or("/").to_string();
    let mut content_length: u64 = 0;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            if k.trim().eq_ignore_ascii_case("content-length") {
                content_length = v.trim().parse().unwrap_or(0);
            }
        }
    }
    tracing::debug!(%method, %target, "http request");
    match method.as_str() {
        "POST" | "PUT" => {
            let (hash, _) = sha256_reader((&mut reader).take(content_length))?;
            let body = format!("{hash}\n");
            respond(&mut w, "200 OK", body.len() as u64, &mut body.as_bytes())
        }
        "GET" => {
            let (path, query) = target.split_once('?').unwrap_or((&target, ""));
            if let Some(n) = path.strip_prefix("/bytes/") {
                let Ok(n) = n.parse::<u64>() else {
                    return not_found(&mut w);
                };
                let seed = query
                    .split('&')
                    .find_map(|kv| kv.strip_prefix("seed="))
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                return respond(&mut w, "200 OK", n, &mut PatternReader::new(seed, n));
            }
            let Some(root) = root else {
                return not_found(&mut w);
            };
            let rel = path.trim_start_matches('/');
            if rel.split('/').any(|c| c == "..") {
                return not_found(&mut w);
            }
            match std::fs::File::open(root.join(rel)) {
                Ok(mut f) => {
                    let len = f.metadata()?.len();
                    respond(&mut w, "200 OK", len, &mut f)
                }
                Err(_) => not_found(&mut w),
            }
        }
        _ => not_found(&mut w),
    }
}

fn not_found(w: &mut TcpStream) -> std::io::Result<()> {
    let body = b"not found\n";
    respond(w, "404 Not Found", body.len() as u64, &mut &body[..])
}

fn respond(w: &mut TcpStream, status: &str, len: u64, body: &mut dyn Read) -> std::io::Result<()> {
    write!(
        w,
        "HTTP/1.0 {status}\r\nContent-Length: {len}\r\nContent-Type: application/octet-stream\r\nConnection: close\r\n\r\n"
    )?;
    std::io::copy(body, w)?;
    w.flush()?;
    w.shutdown(std::net::Shutdown::Write)
}

/// Receiving a datagram's destination address and replying from it.
mod pktinfo {
    use std::mem::{size_of, zeroed};
    use std::net::UdpSocket;
    use std::os::fd::AsRawFd;

    fn setsockopt_on(sock: &UdpSocket, level: i32, opt: i32) -> std::io::Result<()> {
        let one: libc::c_int = 1;
        // SAFETY: valid fd, pointer to a c_int with its correct length.
        let rc = unsafe {
            libc::setsockopt(
                sock.as_raw_fd(),
                level,
                opt,
                (&one as *const libc::c_int).cast(),
                size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    }

    /// Asks for the destination address of each datagram (both families on a v6 socket, which
    /// also receives IPv4-mapped traffic).
    pub(super) fn enable(sock: &UdpSocket, v6: bool) -> std::io::Result<()> {
        if v6 {
            setsockopt_on(sock, libc::IPPROTO_IPV6, libc::IPV6_RECVPKTINFO)?;
        }
        setsockopt_on(sock, libc::IPPROTO_IP, libc::IP_PKTINFO)
    }

    /// Control buffer, aligned for `cmsghdr`.
    #[repr(C, align(8))]
    struct Control([u8; 128]);

    /// Receives one datagram and sends it back from the address it was sent to.
    pub(super) fn echo_one(sock: &UdpSocket, buf: &mut [u8]) -> std::io::Result<()> {
        let fd = sock.as_raw_fd();
        // SAFETY: all pointers in `msg` point to live, correctly sized locals; the cmsg macros
        // are used within the lengths the kernel returned; reads/writes of the pktinfo structs
        // use unaligned accesses.
        unsafe {
            let mut peer: libc::sockaddr_storage = zeroed();
            let mut iov = libc::iovec {
                iov_base: buf.as_mut_ptr().cast(),
                iov_len: buf.len(),
            };
            let mut control = Control([0; 128]);
            let mut msg: libc::msghdr = zeroed();
            msg.msg_name = (&mut peer as *mut libc::sockaddr_storage).cast();
            msg.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            msg.msg_iov = &mut iov;
            msg.msg_iovlen = 1;
            msg.msg_control = control.0.as_mut_ptr().cast();
            msg.msg_controllen = control.0.len();
            let n = libc::recvmsg(fd, &mut msg, 0);
            if n < 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The reply's control message: the same kind as received, with the source set.
            let mut reply = Control([0; 128]);
            let mut reply_len = 0usize;
            let mut cm = libc::CMSG_FIRSTHDR(&msg);
            while !cm.is_null() {
                let (level, kind) = ((*cm).cmsg_level, (*cm).cmsg_type);
                if level == libc::IPPROTO_IP && kind == libc::IP_PKTINFO {
                    let got: libc::in_pktinfo =
                        std::ptr::read_unaligned(libc::CMSG_DATA(cm).cast());
                    let info = libc::in_pktinfo {
                        ipi_ifindex: 0,
                        ipi_spec_dst: got.ipi_addr,
                        ipi_addr: libc::in_addr { s_addr: 0 },
                    };
                    reply_len = put(&mut reply, level, kind, info);
                    break;
                }
                if level == libc::IPPROTO_IPV6 && kind == libc::IPV6_PKTINFO {
                    let got: libc::in6_pktinfo =
                        std::ptr::read_unaligned(libc::CMSG_DATA(cm).cast());
                    reply_len = put(&mut reply, level, kind, got);
                    break;
                }
                cm = libc::CMSG_NXTHDR(&msg, cm);
            }
            let mut iov = libc::iovec {
                iov_base: buf.as_mut_ptr().cast(),
                iov_len: n as usize,
            };
            let mut out: libc::msghdr = zeroed();
            out.msg_name = (&mut peer as *mut libc::sockaddr_storage).cast();
            out.msg_namelen = msg.msg_namelen;
            out.msg_iov = &mut iov;
            out.msg_iovlen = 1;
            if reply_len > 0 {
                out.msg_control = reply.0.as_mut_ptr().cast();
                out.msg_controllen = reply_len;
            }
            if libc::sendmsg(fd, &out, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
        Ok(())
    }

    /// Writes one control message holding `data` at the start of `buf`; returns its space.
    ///
    /// # Safety
    /// `buf` must be large enough for `CMSG_SPACE(size_of::<T>())` (128 bytes is, for pktinfo).
    unsafe fn put<T>(buf: &mut Control, level: i32, kind: i32, data: T) -> usize {
        let len = size_of::<T>() as u32;
        let mut msg: libc::msghdr = zeroed();
        msg.msg_control = buf.0.as_mut_ptr().cast();
        msg.msg_controllen = libc::CMSG_SPACE(len) as usize;
        let cm = libc::CMSG_FIRSTHDR(&msg);
        (*cm).cmsg_level = level;
        (*cm).cmsg_type = kind;
        (*cm).cmsg_len = libc::CMSG_LEN(len) as usize;
        std::ptr::write_unaligned(libc::CMSG_DATA(cm).cast(), data);
        msg.msg_controllen
    }
}

/// Reads an HTTP/1.x response's status line and headers, failing unless the status is 200;
/// the body follows in `r`.
pub fn skip_response_headers(r: &mut impl std::io::BufRead) -> std::io::Result<()> {
    let mut status = String::new();
    r.read_line(&mut status)?;
    if !status.contains(" 200 ") {
        return Err(std::io::Error::other(format!("HTTP status {status:?}")));
    }
    loop {
        let mut line = String::new();
        if r.read_line(&mut line)? == 0 || line.trim().is_empty() {
            return Ok(());
        }
    }
}

/// Downloads `bytes` bytes of pattern `seed` from `server` (an [`HttpServer`]) and uploads
/// `bytes` bytes of pattern `seed + 1` to it, from inside `ns`; both checked by SHA-256. Panics
/// with `what` and `logs()` on a failure.
pub fn transfer_both_ways(
    ns: &Netns,
    server: SocketAddr,
    bytes: u64,
    seed: u64,
    what: &str,
    logs: &dyn Fn() -> String,
) {
    let got = ns
        .run_in(move || -> std::io::Result<(String, u64, String)> {
            let mut s = TcpStream::connect_timeout(&server, Duration::from_secs(10))?;
            s.set_read_timeout(Some(Duration::from_secs(60)))?;
            write!(s, "GET /bytes/{bytes}?seed={seed} HTTP/1.0\r\n\r\n")?;
            let mut r = BufReader::new(s);
            skip_response_headers(&mut r)?;
            let (down, len) = sha256_reader(r)?;
            let mut s = TcpStream::connect_timeout(&server, Duration::from_secs(10))?;
            s.set_read_timeout(Some(Duration::from_secs(60)))?;
            write!(
                s,
                "POST /upload HTTP/1.0\r\nContent-Length: {bytes}\r\n\r\n"
            )?;
            std::io::copy(&mut PatternReader::new(seed + 1, bytes), &mut s)?;
            s.shutdown(std::net::Shutdown::Write)?;
            let mut r = BufReader::new(s);
            skip_response_headers(&mut r)?;
            let mut up = String::new();
            r.read_to_string(&mut up)?;
            Ok((down, len, up.trim().to_string()))
        })
        .expect("run_in");
    let (down, len, up) = got.unwrap_or_else(|e| panic!("{what}: {e}\n{}", logs()));
    assert_eq!(len, bytes, "{what}: download length");
    assert_eq!(
        down,
        PatternReader::new(seed, bytes).sha256(),
        "{what}: download"
    );
    assert_eq!(
        up,
        PatternReader::new(seed + 1, bytes).sha256(),
        "{what}: upload"
    );
}
