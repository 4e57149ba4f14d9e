//! A client for a user-v2 daemon's gvproxy-compatible HTTP API (`<name>_ep.sock`), the calls
//! Lima's `usernet.Client` makes (§1.10): `GET /services/dhcp/leases`, `POST
//! /services/forwarder/expose` and `/unexpose`, `POST /services/dns/add`.
//!
//! HTTP/1.1 with hyper over the unix socket, one connection per request (as Go's client does
//! here: the daemon may close idle connections), with `Host: lima` as in Lima's base URL
//! `http://lima`. Every request is bounded by [`REQUEST_TIMEOUT`]. The calls block; each
//! runs on a small current-thread tokio runtime owned by the client.

use crate::dnshosts::Zone;
use anyhow::{bail, Context};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Upper bound for one request, connection included (the daemon's own read and write timeouts
/// are 10 s in gvproxy).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Lima's default for finding the VM's lease (`ResolveIPAddress`).
pub const RESOLVE_IP_TIMEOUT: Duration = Duration::from_secs(120);

/// Minutes to wait for the VM's lease instead of [`RESOLVE_IP_TIMEOUT`] (Lima's variable).
pub const RESOLVE_IP_TIMEOUT_ENV: &str = "LIMA_USERNET_RESOLVE_IP_ADDRESS_TIMEOUT";

/// How often the leases are polled (Lima: 500 ms).
const RESOLVE_POLL: Duration = Duration::from_millis(500);

/// gvproxy `types.ExposeRequest` (also the entries of `/services/forwarder/all`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct ExposeRequest {
    /// Host side, `IP:PORT`.
    pub local: String,
    /// Guest side, `IP:PORT`.
    pub remote: String,
    /// `tcp` or `udp`.
    pub protocol: String,
}

/// gvproxy `types.UnexposeRequest`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct UnexposeRequest {
    /// Host side, `IP:PORT`, as exposed.
    pub local: String,
    /// `tcp` or `udp`.
    pub protocol: String,
}

/// The API of one user-v2 daemon.
pub struct Client {
    endpoint: PathBuf,
    runtime: tokio::runtime::Runtime,
}

impl Client {
    /// A client for the endpoint socket `endpoint` (nothing is connected yet).
    pub fn new(endpoint: &Path) -> anyhow::Result<Self> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .build()
            .context("failed to create the HTTP client runtime")?;
        Ok(Self {
            endpoint: endpoint.to_owned(),
            runtime,
        })
    }

    /// `GET /services/dhcp/leases`: `{ip: mac}`.
    pub fn leases(&self) -> anyhow::Result<BTreeMap<String, String>> {
        let body = self.call(Method::GET, "/services/dhcp/leases", None)?;
        serde_json::from_slice(&body).context("failed to decode the leases")
    }

    /// `GET /services/forwarder/all`, as expose requests.
    pub fn forwards(&self) -> anyhow::Result<Vec<ExposeRequest>> {
        let body = self.call(Method::GET, "/services/forwarder/all", None)?;
        serde_json::from_slice(&body).context("failed to decode the forwards")
    }

    /// `POST /services/forwarder/expose`.
    pub fn expose(&self, req: &ExposeRequest) -> anyhow::Result<()> {
        let body = serde_json::to_vec(req).context("failed to encode the expose request")?;
        self.call(Method::POST, "/services/forwarder/expose", Some(body))?;
        Ok(())
    }

    /// `POST /services/forwarder/unexpose`.
    pub fn unexpose(&self, req: &UnexposeRequest) -> anyhow::Result<()> {
        let body = serde_json::to_vec(req).context("failed to encode the unexpose request")?;
        self.call(Method::POST, "/services/forwarder/unexpose", Some(body))?;
        Ok(())
    }

    /// `POST /services/dns/add` of one zone.
    pub fn add_dns(&self, zone: &Zone) -> anyhow::Result<()> {
        let body = serde_json::to_vec(zone).context("failed to encode the DNS zone")?;
        self.call(Method::POST, "/services/dns/add", Some(body))?;
        Ok(())
    }

    /// Lima's `ResolveIPAddress`: polls the leases every 500 ms until one belongs to `mac`.
    /// Gives up after `timeout`, or as soon as `cancelled` says so. A failed request ends the
    /// wait at once, as in Lima.
    pub fn resolve_ip_address(
        &self,
        mac: &str,
        timeout: Duration,
        cancelled: &dyn Fn() -> bool,
    ) -> anyhow::Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            std::thread::sleep(RESOLVE_POLL);
            if cancelled() {
                bail!("cancelled while waiting for the VM's lease");
            }
            if Instant::now() >= deadline {
                bail!("usernet unable to resolve IP for SSH forwarding");
            }
            let leases = self.leases()?;
            if let Some((ip, _)) = leases.iter().find(|(_, m)| m.eq_ignore_ascii_case(mac)) {
                return Ok(ip.clone());
            }
        }
    }

    /// One request; the body of a 200 answer, otherwise an error with the answer's text (as
    /// gvproxy's Go client reports it).
    fn call(&self, method: Method, path: &str, body: Option<Vec<u8>>) -> anyhow::Result<Bytes> {
        let what = format!("{method} {path} on `{}`", self.endpoint.display());
        let fut = request(&self.endpoint, method, path, body);
        let (status, body) = self
            .runtime
            .block_on(async { tokio::time::timeout(REQUEST_TIMEOUT, fut).await })
            .map_err(|_| anyhow::anyhow!("no answer within {REQUEST_TIMEOUT:?}"))
            .and_then(|r| r)
            .with_context(|| format!("{what} failed"))?;
        if status != StatusCode::OK {
            let text = String::from_utf8_lossy(&body);
            bail!("{what}: {status}: {}", text.trim());
        }
        Ok(body)
    }
}

async fn request(
    endpoint: &Path,
    method: Method,
    path: &str,
    body: Option<Vec<u8>>,
) -> anyhow::Result<(StatusCode, Bytes)> {
    let stream = tokio::net::UnixStream::connect(endpoint)
        .await
        .context("failed to connect")?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .context("HTTP handshake failed")?;
    // The connection task ends when the exchange is done and `sender` is dropped.
    let conn = tokio::spawn(conn);
    let mut builder = Request::builder()
        .method(method)
        .uri(path)
        .header(hyper::header::HOST, "lima");
    if body.is_some() {
        builder = builder.header(hyper::header::CONTENT_TYPE, "application/json");
    }
    let req = builder
        .body(Full::new(Bytes::from(body.unwrap_or_default())))
        .context("failed to build the request")?;
    let res = sender.send_request(req).await.context("request failed")?;
    let status = res.status();
    let body = res
        .into_body()
        .collect()
        .await
        .context("failed to read the answer")?
        .to_bytes();
    drop(sender);
    let _ = conn.await;
    Ok((status, body))
}

/// How long to wait for the VM's lease: [`RESOLVE_IP_TIMEOUT_ENV`] in whole minutes when it
/// parses (Lima ignores a bad value), otherwise [`RESOLVE_IP_TIMEOUT`].
pub fn resolve_ip_timeout(env_value: Option<&str>) -> Duration {
    env_value
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(|minutes| Duration::from_secs(minutes.saturating_mul(60)))
        .unwrap_or(RESOLVE_IP_TIMEOUT)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn fake_daemon(
        replies: Vec<&'static str>,
    ) -> anyhow::Result<(PathBuf, std::thread::JoinHandle<Vec<String>>)> {
        let dir = crate::process::tests::tempdir()?;
        let path = dir.join("ep.sock");
        let handle = fake_daemon_at(&path, replies)?;
        let cleanup = std::thread::spawn(move || {
            let seen = handle.join().unwrap_or_default();
            let _ = std::fs::remove_dir_all(&dir);
            seen
        });
        Ok((path, cleanup))
    }

    /// A stand-in daemon listening on `path`: answers each connection's one request with the
    /// next canned reply and hands the raw requests back.
    pub(crate) fn fake_daemon_at(
        path: &Path,
        replies: Vec<&'static str>,
    ) -> anyhow::Result<std::thread::JoinHandle<Vec<String>>> {
        use std::io::{Read, Write};
        let listener = std::os::unix::net::UnixListener::bind(path)?;
        let handle = std::thread::spawn(move || {
            let mut seen = Vec::new();
            for reply in replies {
                let Ok((mut conn, _)) = listener.accept() else {
                    break;
                };
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                // Head, then as many body bytes as Content-Length says.
                loop {
                    let text = String::from_utf8_lossy(&buf).into_owned();
                    if let Some(end) = text.find("\r\n\r\n") {
                        let len = text
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("content-length:")
                                    .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                            })
                            .unwrap_or(0);
                        if buf.len() >= end + 4 + len {
                            break;
                        }
                    }
                    match conn.read(&mut chunk) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                seen.push(String::from_utf8_lossy(&buf).into_owned());
                let _ = conn.write_all(reply.as_bytes());
            }
            seen
        });
        Ok(handle)
    }

    #[test]
    fn requests_on_the_wire_and_answers() -> anyhow::Result<()> {
        let (path, daemon) = fake_daemon(vec![
            "HTTP/1.1 200 OK\r\nContent-Length: 45\r\n\r\n{\"192.168.104.1\":\"52:55:55:aa:bb:cc\",\"x\":\"y\"}",
            "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
            "HTTP/1.1 500 Internal Server Error\r\nContent-Length: 19\r\n\r\naddress in use\n    ",
            "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
        ])?;
        let client = Client::new(&path)?;
        let ip =
            client.resolve_ip_address("52:55:55:AA:BB:CC", Duration::from_secs(5), &|| false)?;
        assert_eq!(ip, "192.168.104.1");
        let req = ExposeRequest {
            local: "127.0.0.1:2222".into(),
            remote: "192.168.104.1:22".into(),
            protocol: "tcp".into(),
        };
        client.expose(&req)?;
        let err = client
            .expose(&req)
            .err()
            .map(|e| format!("{e:#}"))
            .unwrap_or_default();
        assert!(
            err.ends_with("500 Internal Server Error: address in use"),
            "{err}"
        );
        let zone = crate::dnshosts::extract_zones(
            &[("lima-vm1.internal".to_owned(), "192.168.104.1".to_owned())].into(),
        );
        client.add_dns(&zone[0])?;
        let seen = daemon
            .join()
            .map_err(|_| anyhow::anyhow!("fake daemon panicked"))?;
        assert!(
            seen[0].starts_with("GET /services/dhcp/leases HTTP/1.1\r\n"),
            "{}",
            seen[0]
        );
        assert!(
            seen[0].to_ascii_lowercase().contains("\r\nhost: lima\r\n"),
            "{}",
            seen[0]
        );
        assert!(seen[1].starts_with("POST /services/forwarder/expose HTTP/1.1\r\n"));
        assert!(seen[1]
            .to_ascii_lowercase()
            .contains("content-type: application/json"));
        assert!(
            seen[1].ends_with(
                r#"{"local":"127.0.0.1:2222","remote":"192.168.104.1:22","protocol":"tcp"}"#
            ),
            "{}",
            seen[1]
        );
        assert!(seen[3].starts_with("POST /services/dns/add HTTP/1.1\r\n"));
        assert!(seen[3].ends_with(r#"{"Name":"internal.","Records":[{"Name":"lima-vm1","IP":"192.168.104.1"}],"DefaultIP":""}"#), "{}", seen[3]);
        Ok(())
    }

    #[test]
    fn resolve_timeout_from_env() {
        assert_eq!(resolve_ip_timeout(None), Duration::from_secs(120));
        assert_eq!(resolve_ip_timeout(Some("5")), Duration::from_secs(300));
        assert_eq!(resolve_ip_timeout(Some("x")), Duration::from_secs(120));
        assert_eq!(resolve_ip_timeout(Some("0")), Duration::ZERO);
    }

    #[test]
    fn request_shapes_match_gvproxy() -> serde_json::Result<()> {
        let e = ExposeRequest {
            local: "127.0.0.1:2222".into(),
            remote: "192.168.104.1:22".into(),
            protocol: "tcp".into(),
        };
        assert_eq!(
            serde_json::to_string(&e)?,
            r#"{"local":"127.0.0.1:2222","remote":"192.168.104.1:22","protocol":"tcp"}"#
        );
        let u = UnexposeRequest {
            local: "127.0.0.1:2222".into(),
            protocol: "tcp".into(),
        };
        assert_eq!(
            serde_json::to_string(&u)?,
            r#"{"local":"127.0.0.1:2222","protocol":"tcp"}"#
        );
        Ok(())
    }
}
