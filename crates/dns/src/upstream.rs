//! Upstream servers: where they come from (explicit, or resolv.conf re-read when it changes) and
//! how a request is exchanged with them (UDP, then TCP, like Lima's two miekg clients).

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::message::{answers_request, is_truncated};
use crate::mux::UdpMux;

/// Used when resolv.conf names no server (or cannot be read), as Lima does, unless turned off
/// ([`Upstreams::with_fallback`]).
pub const FALLBACK_SERVERS: [IpAddr; 2] = [
    IpAddr::V4(Ipv4Addr::new(8, 8, 8, 8)),
    IpAddr::V4(Ipv4Addr::new(1, 1, 1, 1)),
];

/// How often resolv.conf's metadata is checked for changes, at most.
const RECHECK_INTERVAL: Duration = Duration::from_secs(1);

/// Parses the `nameserver` lines of a resolv.conf. Bad addresses are skipped with a warning
/// naming the file and line. An IPv6 zone (`fe80::1%eth0`) is dropped.
pub fn parse_resolv_conf(text: &str, path: &Path) -> Vec<IpAddr> {
    let mut servers = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let mut words = line.split_whitespace();
        if words.next() != Some("nameserver") {
            continue;
        }
        let Some(value) = words.next() else {
            tracing::warn!(file = %path.display(), line = index + 1, "nameserver line without an address");
            continue;
        };
        let addr = value.split('%').next().unwrap_or(value);
        match addr.parse::<IpAddr>() {
            Ok(ip) => servers.push(ip),
            Err(_) => {
                tracing::warn!(file = %path.display(), line = index + 1, value, "nameserver is not an IP address; skipped")
            }
        }
    }
    servers
}

#[derive(Debug, PartialEq, Eq, Clone, Copy)]
struct Stamp {
    mtime: Option<SystemTime>,
    ino: u64,
    dev: u64,
    len: u64,
}

#[derive(Debug)]
struct State {
    servers: Arc<Vec<SocketAddr>>,
    stamp: Option<Stamp>,
    checked: Instant,
}

/// The upstream servers, with resolv.conf re-read when its mtime, inode or size changes (Lima
/// reads it once at start).
#[derive(Debug)]
pub struct Upstreams {
    explicit: Vec<SocketAddr>,
    resolv_conf: PathBuf,
    timeout: Duration,
    state: Mutex<State>,
    /// Long-lived UDP sockets per server, opened on first use.
    muxes: Mutex<std::collections::HashMap<SocketAddr, Arc<UdpMux>>>,
    /// Whether [`FALLBACK_SERVERS`] stand in for an empty resolv.conf.
    fallback: bool,
    /// Whether the fallback (or its absence) was logged already: once per server is enough.
    fallback_logged: std::sync::atomic::AtomicBool,
}

impl Upstreams {
    /// Explicit servers win; when there are none, resolv.conf at `resolv_conf` is used, and the
    /// fallback servers when it names none. `timeout` bounds each exchange step (dial, write,
    /// read), as miekg's 2 s defaults do.
    pub fn new(explicit: Vec<SocketAddr>, resolv_conf: PathBuf, timeout: Duration) -> Self {
        Self::with_fallback(explicit, resolv_conf, timeout, true)
    }

    /// Like [`Upstreams::new`]; `fallback: false` leaves the server list empty (every
    /// forwarded query gets SERVFAIL) when resolv.conf names no server, instead of sending the
    /// guests' queries to 8.8.8.8 and 1.1.1.1.
    pub fn with_fallback(
        explicit: Vec<SocketAddr>,
        resolv_conf: PathBuf,
        timeout: Duration,
        fallback: bool,
    ) -> Self {
        let upstreams = Self {
            explicit,
            resolv_conf,
            timeout,
            state: Mutex::new(State {
                servers: Arc::new(Vec::new()),
                stamp: None,
                checked: Instant::now(),
            }),
            muxes: Mutex::new(std::collections::HashMap::new()),
            fallback,
            fallback_logged: std::sync::atomic::AtomicBool::new(false),
        };
        upstreams.reload(true);
        upstreams
    }

    /// The servers to use now.
    pub fn servers(&self) -> Arc<Vec<SocketAddr>> {
        if !self.explicit.is_empty() {
            return self.lock().servers.clone();
        }
        let due = self.lock().checked.elapsed() >= RECHECK_INTERVAL;
        if due {
            self.reload(false);
        }
        self.lock().servers.clone()
    }

    /// The per-step timeout.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // Every update replaces whole fields, so a poisoned lock holds consistent data.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn reload(&self, first: bool) {
        if !self.explicit.is_empty() {
            let mut state = self.lock();
            state.servers = Arc::new(self.explicit.clone());
            return;
        }
        let stamp = std::fs::metadata(&self.resolv_conf).ok().map(|m| Stamp {
            mtime: m.modified().ok(),
            ino: m.ino(),
            dev: m.dev(),
            len: m.len(),
        });
        {
            let mut state = self.lock();
            state.checked = Instant::now();
            if !first && state.stamp == stamp {
                return;
            }
        }
        let ips = match std::fs::read_to_string(&self.resolv_conf) {
            Ok(text) => parse_resolv_conf(&text, &self.resolv_conf),
            Err(err) => {
                tracing::warn!(file = %self.resolv_conf.display(), %err, "cannot read resolv.conf");
                Vec::new()
            }
        };
        let ips = if ips.is_empty() {
            let first = !self
                .fallback_logged
                .swap(true, std::sync::atomic::Ordering::Relaxed);
            if self.fallback {
                if first {
                    tracing::warn!(file = %self.resolv_conf.display(), fallback = ?FALLBACK_SERVERS, "no nameserver configured; forwarding to Lima's fallback servers (--no-fallback-dns turns this off)");
                }
                FALLBACK_SERVERS.to_vec()
            } else {
                if first {
                    tracing::warn!(file = %self.resolv_conf.display(), "no nameserver configured and the fallback servers are off; forwarded queries get SERVFAIL");
                }
                Vec::new()
            }
        } else {
            ips
        };
        let servers: Vec<SocketAddr> = ips.into_iter().map(|ip| SocketAddr::new(ip, 53)).collect();
        tracing::info!(file = %self.resolv_conf.display(), ?servers, "upstream servers (re)loaded");
        let mut state = self.lock();
        state.servers = Arc::new(servers);
        state.stamp = stamp;
    }

    /// Forwards `request` unchanged: UDP to each server in order, then TCP to each. The first
    /// reply that arrives without a transport error is returned as is. When `want_full` and a
    /// UDP reply has TC set, the same server is asked over TCP first (a TCP client must not get
    /// a truncated answer); the truncated reply is kept if that fails.
    pub async fn exchange(
        &self,
        request: &[u8],
        want_full: bool,
    ) -> Result<Vec<u8>, ExchangeError> {
        let servers = self.servers();
        let mut errors = Vec::new();
        for server in servers.iter() {
            match self.exchange_udp(*server, request).await {
                Ok(reply) if want_full && is_truncated(&reply) => {
                    match exchange_tcp(*server, request, self.timeout).await {
                        Ok(full) => return Ok(full),
                        Err(err) => {
                            tracing::debug!(%server, %err, "TCP retry of a truncated reply failed");
                            return Ok(reply);
                        }
                    }
                }
                Ok(reply) => return Ok(reply),
                Err(err) => errors.push(format!("udp {server}: {err}")),
            }
        }
        for server in servers.iter() {
            match exchange_tcp(*server, request, self.timeout).await {
                Ok(reply) => return Ok(reply),
                Err(err) => errors.push(format!("tcp {server}: {err}")),
            }
        }
        Err(ExchangeError(errors.join("; ")))
    }
}

impl Upstreams {
    async fn exchange_udp(&self, server: SocketAddr, request: &[u8]) -> io::Result<Vec<u8>> {
        let mux = {
            let mut muxes = self.muxes.lock().unwrap_or_else(|e| e.into_inner());
            match muxes.get(&server) {
                Some(mux) => mux.clone(),
                None => {
                    let mux = Arc::new(UdpMux::open(server)?);
                    muxes.insert(server, mux.clone());
                    mux
                }
            }
        };
        mux.exchange(request, self.timeout).await
    }
}

/// Every upstream failed; lists what each attempt returned.
#[derive(Debug, thiserror::Error)]
#[error("every upstream failed: {0}")]
pub struct ExchangeError(String);

fn timed_out(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, format!("{what} timed out"))
}

/// One TCP exchange (2-byte length prefix), with `timeout` for each of connect, write and read.
pub async fn exchange_tcp(
    server: SocketAddr,
    request: &[u8],
    timeout: Duration,
) -> io::Result<Vec<u8>> {
    let len = u16::try_from(request.len()).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "request longer than 65535 bytes",
        )
    })?;
    let mut stream = tokio::time::timeout(timeout, TcpStream::connect(server))
        .await
        .map_err(|_| timed_out("connect"))??;
    let mut framed = Vec::with_capacity(request.len() + 2);
    framed.extend_from_slice(&len.to_be_bytes());
    framed.extend_from_slice(request);
    tokio::time::timeout(timeout, stream.write_all(&framed))
        .await
        .map_err(|_| timed_out("write"))??;
    let read = async {
        loop {
            let mut len = [0u8; 2];
            stream.read_exact(&mut len).await?;
            let mut reply = vec![0u8; usize::from(u16::from_be_bytes(len))];
            stream.read_exact(&mut reply).await?;
            if answers_request(request, &reply) {
                return Ok::<_, io::Error>(reply);
            }
        }
    };
    tokio::time::timeout(timeout, read)
        .await
        .map_err(|_| timed_out("read"))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_nameservers() {
        let text = "# comment\nsearch example.com\nnameserver 127.0.0.53\nnameserver fe80::1%eth0\nnameserver bogus\nnameserver\noptions edns0\n";
        let got = parse_resolv_conf(text, Path::new("test"));
        assert_eq!(
            got,
            vec![
                "127.0.0.53".parse::<IpAddr>().unwrap(),
                "fe80::1".parse().unwrap()
            ]
        );
    }

    #[test]
    fn reloads_when_the_file_changes() {
        let dir =
            std::env::temp_dir().join(format!("limanet-dns-upstreams-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("resolv.conf");
        std::fs::write(&path, "nameserver 127.0.0.9\n").unwrap();
        let up = Upstreams::new(Vec::new(), path.clone(), Duration::from_secs(2));
        assert_eq!(*up.servers(), vec!["127.0.0.9:53".parse().unwrap()]);
        std::fs::write(&path, "nameserver 127.0.0.10\nnameserver 127.0.0.11\n").unwrap();
        up.lock().checked -= RECHECK_INTERVAL;
        assert_eq!(
            *up.servers(),
            vec![
                "127.0.0.10:53".parse().unwrap(),
                "127.0.0.11:53".parse().unwrap()
            ]
        );
        std::fs::write(&path, "# empty\n").unwrap();
        up.lock().checked -= RECHECK_INTERVAL;
        assert_eq!(
            *up.servers(),
            vec!["8.8.8.8:53".parse().unwrap(), "1.1.1.1:53".parse().unwrap()]
        );
        let off = Upstreams::with_fallback(Vec::new(), path.clone(), Duration::from_secs(2), false);
        assert!(off.servers().is_empty(), "no fallback when turned off");
        let explicit = Upstreams::new(
            vec!["127.0.0.7:5353".parse().unwrap()],
            path,
            Duration::from_secs(2),
        );
        assert_eq!(*explicit.servers(), vec!["127.0.0.7:5353".parse().unwrap()]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
