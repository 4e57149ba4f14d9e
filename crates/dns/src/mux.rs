//! UDP exchanges with one upstream over a few long-lived sockets, requests told apart by a
//! fresh random id (restored in the reply), as dnsmasq does. Compared with a socket per query
//! this saves socket/bind/connect/close and two epoll updates per query, which is most of the
//! forwarding cost.
//!
//! Spoofing: each upstream gets [`SOCKETS_PER_UPSTREAM`] sockets on random ports, ids are
//! random, and a reply must repeat the request's question; an off-path attacker must guess
//! port, id and question, like with dnsmasq's port pool.

use std::collections::HashMap;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::sync::oneshot;

use crate::message::HEADER_LEN;

/// Sockets (source ports) per upstream server.
pub const SOCKETS_PER_UPSTREAM: usize = 4;

type ReplyTx = oneshot::Sender<io::Result<Vec<u8>>>;

struct Pending {
    original_id: [u8; 2],
    question: Vec<u8>,
    tx: ReplyTx,
}

impl std::fmt::Debug for UdpMux {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UdpMux")
            .field("server", &self.server)
            .field("sockets", &self.sockets.len())
            .finish()
    }
}

/// One connected socket and the requests waiting on it.
struct Socket {
    socket: UdpSocket,
    pending: Mutex<HashMap<u16, Pending>>,
    rng: Mutex<u64>,
}

/// The sockets for one upstream server.
pub struct UdpMux {
    server: SocketAddr,
    sockets: Vec<Arc<Socket>>,
    next: AtomicUsize,
}

impl UdpMux {
    /// Opens the sockets and starts their reader tasks (must run inside a tokio runtime).
    pub fn open(server: SocketAddr) -> io::Result<Self> {
        let mut sockets = Vec::with_capacity(SOCKETS_PER_UPSTREAM);
        for i in 0..SOCKETS_PER_UPSTREAM {
            let bind: SocketAddr = if server.is_ipv4() {
                (Ipv4Addr::UNSPECIFIED, 0).into()
            } else {
                (Ipv6Addr::UNSPECIFIED, 0).into()
            };
            let socket = std::net::UdpSocket::bind(bind)?;
            socket.connect(server)?;
            socket.set_nonblocking(true)?;
            let socket = UdpSocket::from_std(socket)?;
            let seed = seed(i);
            let socket = Arc::new(Socket {
                socket,
                pending: Mutex::new(HashMap::new()),
                rng: Mutex::new(seed),
            });
            tokio::spawn(read_replies(socket.clone(), server));
            sockets.push(socket);
        }
        Ok(Self {
            server,
            sockets,
            next: AtomicUsize::new(0),
        })
    }

    /// Sends `request` and waits up to `timeout` for its reply, returned with the request's
    /// own id.
    pub async fn exchange(&self, request: &[u8], timeout: Duration) -> io::Result<Vec<u8>> {
        if request.len() < HEADER_LEN {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "request shorter than a header",
            ));
        }
        let index = self.next.fetch_add(1, Ordering::Relaxed) % self.sockets.len();
        let socket = &self.sockets[index];
        let (tx, rx) = oneshot::channel();
        let id = {
            let mut pending = lock(&socket.pending);
            let mut rng = lock(&socket.rng);
            let id = loop {
                let candidate = next_random(&mut rng) as u16;
                if !pending.contains_key(&candidate) {
                    break candidate;
                }
            };
            pending.insert(
                id,
                Pending {
                    original_id: [request[0], request[1]],
                    question: question_bytes(request).to_vec(),
                    tx,
                },
            );
            id
        };
        // Removes the entry however this future ends (reply, timeout, cancellation).
        let _guard = RemoveOnDrop { socket, id };
        let mut wire = request.to_vec();
        wire[..2].copy_from_slice(&id.to_be_bytes());
        socket.socket.send(&wire).await?;
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(io::Error::other("reply channel closed")),
            Err(_) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no reply from {} within {timeout:?}", self.server),
            )),
        }
    }
}

struct RemoveOnDrop<'a> {
    socket: &'a Socket,
    id: u16,
}

impl Drop for RemoveOnDrop<'_> {
    fn drop(&mut self) {
        lock(&self.socket.pending).remove(&self.id);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Every critical section is a single map or integer update: a poisoned lock is consistent.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

async fn read_replies(socket: Arc<Socket>, server: SocketAddr) {
    let mut buf = Vec::with_capacity(65535);
    loop {
        buf.clear();
        match socket.socket.recv_buf(&mut buf).await {
            Ok(n) if n >= HEADER_LEN => {
                let id = u16::from_be_bytes([buf[0], buf[1]]);
                let mut pending = lock(&socket.pending);
                let matches = pending
                    .get(&id)
                    .is_some_and(|p| buf[2] & 0x80 != 0 && question_matches(&p.question, &buf));
                if !matches {
                    drop(pending);
                    tracing::debug!(%server, id, len = n, "discarded a datagram that answers no pending request");
                    continue;
                }
                if let Some(p) = pending.remove(&id) {
                    drop(pending);
                    let mut reply = buf[..n].to_vec();
                    reply[..2].copy_from_slice(&p.original_id);
                    let _ = p.tx.send(Ok(reply));
                }
            }
            Ok(n) => tracing::debug!(%server, len = n, "discarded a runt datagram"),
            Err(err) if err.kind() == io::ErrorKind::ConnectionRefused => {
                // ICMP port unreachable: the server is down; fail everything waiting on it now
                // rather than at the timeout.
                let waiting: Vec<Pending> = lock(&socket.pending).drain().map(|(_, p)| p).collect();
                for p in waiting {
                    let _ = p.tx.send(Err(io::Error::new(
                        io::ErrorKind::ConnectionRefused,
                        format!("{server} refused"),
                    )));
                }
            }
            Err(err) => {
                tracing::debug!(%server, %err, "upstream UDP receive error");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

/// The question section of a request (name, type, class), or empty if it cannot be delimited
/// without decompressing (then the reply's question is not checked).
fn question_bytes(msg: &[u8]) -> &[u8] {
    let mut i = HEADER_LEN;
    while let Some(&len) = msg.get(i) {
        if len == 0 {
            return msg.get(HEADER_LEN..i + 5).unwrap_or(&[]);
        }
        if len & 0xc0 != 0 {
            return &[];
        }
        i += usize::from(len) + 1;
    }
    &[]
}

fn question_matches(question: &[u8], reply: &[u8]) -> bool {
    if question.is_empty() {
        return true;
    }
    // A reply without a question (some FORMERR/SERVFAIL replies) is accepted on the id alone.
    if reply[4..6] == [0, 0] {
        return true;
    }
    reply
        .get(HEADER_LEN..HEADER_LEN + question.len())
        .is_some_and(|q| q.eq_ignore_ascii_case(question))
}

fn seed(salt: usize) -> u64 {
    let mut bytes = [0u8; 8];
    // SAFETY: getrandom(2) writes at most bytes.len() bytes into the buffer.
    let n = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), 0) };
    let random = if n == 8 { u64::from_ne_bytes(bytes) } else { 0 };
    let time = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    (random ^ time ^ (salt as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)) | 1
}

/// xorshift64*: fast, and good enough for ids that only need to be unpredictable off-path.
fn next_random(state: &mut u64) -> u64 {
    let mut x = *state;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *state = x;
    x.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn question_delimiting() {
        let mut q = vec![0u8; 12];
        q.extend_from_slice(b"\x01a\x04test\x00\x00\x01\x00\x01");
        assert_eq!(question_bytes(&q), &q[12..]);
        let mut reply = q.clone();
        reply[4..6].copy_from_slice(&[0, 1]);
        reply[13] = b'A';
        assert!(question_matches(question_bytes(&q), &reply));
        reply[14] = b'X';
        assert!(!question_matches(question_bytes(&q), &reply));
        assert_eq!(question_bytes(&q[..15]), b"");
        let mut compressed = vec![0u8; 12];
        compressed.extend_from_slice(b"\xc0\x0c\x00\x01\x00\x01");
        assert_eq!(question_bytes(&compressed), b"");
    }

    #[tokio::test]
    async fn ids_are_rewritten_and_restored() {
        // A loopback echo "server" that answers with the id it received.
        let server = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = server.local_addr().unwrap();
        tokio::spawn(async move {
            let mut buf = [0u8; 512];
            loop {
                let (n, peer) = server.recv_from(&mut buf).await.unwrap();
                buf[2] |= 0x80;
                server.send_to(&buf[..n], peer).await.unwrap();
            }
        });
        let mux = UdpMux::open(addr).unwrap();
        let mut q = vec![0xab, 0xcd, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0];
        q.extend_from_slice(b"\x01a\x04test\x00\x00\x01\x00\x01");
        let reply = mux.exchange(&q, Duration::from_secs(2)).await.unwrap();
        assert_eq!(&reply[..2], &[0xab, 0xcd]);
        assert_eq!(&reply[12..], &q[12..]);
        for s in &mux.sockets {
            assert!(lock(&s.pending).is_empty());
        }
    }
}
