//! The endpoints: gvproxy's paths, JSON shapes and status codes (400 for a body that does not
//! decode or a wrong method, 500 when an expose/unexpose itself fails, 404 for unknown paths,
//! 200 with an empty body on success), Lima's `wait_port` extension, and limanet's own
//! `/stats`, `/cam` and `/flows`.

use crate::json::{self, ExposeRequest, Proxy, RecordJson, UnexposeRequest, ZoneJson};
use limanet_dns::{Zone, ZoneRecord, ZonesHandle};
use limanet_netstack::MacDisplay;
use limanet_runtime::{Command, Control, Forward, Reply};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4};
use std::time::{Duration, Instant};
use tracing::{debug, info, warn};

/// What a request gets back.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Vec<u8>,
}

impl Response {
    fn ok() -> Self {
        Response {
            status: 200,
            content_type: "text/plain; charset=utf-8",
            body: Vec::new(),
        }
    }

    /// Like Go's `http.Error`: the message and a newline, as plain text.
    pub fn error(status: u16, message: impl std::fmt::Display) -> Self {
        Response {
            status,
            content_type: "text/plain; charset=utf-8",
            body: format!("{message}\n").into_bytes(),
        }
    }

    /// JSON and a newline, as Go's `json.Encoder` writes it.
    fn json(value: &impl serde::Serialize) -> Self {
        match serde_json::to_vec(value) {
            Ok(mut body) => {
                body.push(b'\n');
                Response {
                    status: 200,
                    content_type: "application/json",
                    body,
                }
            }
            Err(e) => Response::error(500, e),
        }
    }
}

/// What the endpoints work on.
#[derive(Clone)]
pub struct Context {
    pub control: Control,
    pub zones: ZonesHandle,
    /// The network, for checking guest addresses.
    pub network: Ipv4Addr,
    pub prefix_len: u8,
    /// The network's IPv6 /64 prefix, if it has IPv6.
    pub prefix6: Option<Ipv6Addr>,
}

impl Context {
    /// A forward's guest address must be inside the network (either family).
    fn check_guest(&self, ip: IpAddr) -> Result<(), String> {
        let inside = match ip {
            IpAddr::V4(ip) => {
                let mask = if self.prefix_len == 0 {
                    0
                } else {
                    u32::MAX << (32 - u32::from(self.prefix_len.min(32)))
                };
                u32::from(ip) & mask == u32::from(self.network) & mask
            }
            IpAddr::V6(ip) => self
                .prefix6
                .is_some_and(|p| ip.segments()[..4] == p.segments()[..4]),
        };
        if inside {
            return Ok(());
        }
        Err(match (ip, self.prefix6) {
            (IpAddr::V6(_), None) => format!("remote address {ip}: the network has no IPv6"),
            (IpAddr::V6(_), Some(p)) => {
                format!("remote address {ip} is outside the network {p}/64")
            }
            (IpAddr::V4(_), _) => format!(
                "remote address {ip} is outside the network {}/{}",
                self.network, self.prefix_len
            ),
        })
    }

    /// Sends a command and waits for its reply.
    async fn ask<T: Send + 'static>(
        &self,
        make: impl FnOnce(Reply<T>) -> Command,
    ) -> Result<T, Response> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let reply: Reply<T> = Box::new(move |value| {
            let _ = tx.send(value);
        });
        self.control
            .send(make(reply))
            .map_err(|e| Response::error(500, e))?;
        rx.await
            .map_err(|_| Response::error(500, "the network is not running"))
    }
}

/// Routes one request. `query` is the URL's query string, `body` the whole request body.
pub async fn handle(ctx: &Context, method: &str, path: &str, query: &str, body: &[u8]) -> Response {
    let post = method == "POST";
    let result = match path {
        "/services/forwarder/all" => forwards(ctx).await,
        "/services/forwarder/expose" if post => expose(ctx, body).await,
        "/services/forwarder/unexpose" if post => unexpose(ctx, body).await,
        "/services/dns/add" if post => dns_add(ctx, body),
        "/services/forwarder/expose" | "/services/forwarder/unexpose" | "/services/dns/add" => {
            Err(Response::error(400, "post only"))
        }
        "/services/dhcp/leases" | "/leases" => leases(ctx).await,
        "/services/dns/all" => Ok(dns_all(ctx)),
        "/extension/wait_port" => wait_port(ctx, query).await,
        "/stats" => stats(ctx).await,
        "/cam" => cam(ctx).await,
        "/flows" => flows(ctx).await,
        _ => Err(Response::error(404, "404 page not found")),
    };
    result.unwrap_or_else(|e| e)
}

async fn forwards(ctx: &Context) -> Result<Response, Response> {
    let forwards = ctx.ask(Command::Forwards).await?;
    let mut proxies: Vec<Proxy> = forwards.iter().map(proxy_of).collect();
    // gvproxy's order: by local address, then protocol.
    proxies.sort_by(|a, b| (&a.local, &a.protocol).cmp(&(&b.local, &b.protocol)));
    Ok(Response::json(&proxies))
}

fn proxy_of(f: &Forward) -> Proxy {
    let guest = f
        .guest
        .unwrap_or(std::net::IpAddr::V4(Ipv4Addr::UNSPECIFIED));
    Proxy {
        local: f.host.to_string(),
        remote: std::net::SocketAddr::new(guest, f.guest_port).to_string(),
        protocol: if f.udp { "udp" } else { "tcp" }.into(),
    }
}

/// `tcp` (the default), `udp`, or the failure gvproxy gives for anything else.
fn protocol(name: &str) -> Result<bool, Response> {
    match name {
        "" | "tcp" => Ok(false),
        "udp" => Ok(true),
        "unix" | "npipe" => Err(Response::error(
            500,
            format!("{name} forwards are not supported by limanet"),
        )),
        other => Err(Response::error(500, format!("unknown protocol {other}"))),
    }
}

/// Splits `host:port` or `[host]:port` as Go's `net.SplitHostPort` does.
fn split_host_port(s: &str) -> Result<(&str, &str), String> {
    if let Some(rest) = s.strip_prefix('[') {
        let Some((host, after)) = rest.split_once(']') else {
            return Err(format!("address {s}: missing ']' in address"));
        };
        let Some(port) = after.strip_prefix(':') else {
            return Err(format!("address {s}: missing port in address"));
        };
        return Ok((host, port));
    }
    let Some((host, port)) = s.rsplit_once(':') else {
        return Err(format!("address {s}: missing port in address"));
    };
    if host.contains(':') {
        return Err(format!("address {s}: too many colons in address"));
    }
    Ok((host, port))
}

/// A local (host) address to listen on: empty host = every interface (as Go's listen),
/// `localhost` = 127.0.0.1; an IPv6 address in brackets.
fn local_addr(s: &str) -> Result<SocketAddr, String> {
    let (host, port) = split_host_port(s)?;
    let ip = match host {
        "" => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        "localhost" => IpAddr::V4(Ipv4Addr::LOCALHOST),
        h => h
            .parse()
            .map_err(|_| format!("listen {s}: not an IP address: {h}"))?,
    };
    let port = port
        .parse::<u16>()
        .map_err(|_| format!("listen {s}: invalid port {port:?}"))?;
    Ok(SocketAddr::new(ip, port))
}

async fn expose(ctx: &Context, body: &[u8]) -> Result<Response, Response> {
    let req: ExposeRequest = json::decode(body).map_err(|e| Response::error(400, e))?;
    let udp = protocol(&req.protocol)?;
    // gvproxy fills an empty remote IP from the requester's address; on a unix socket there
    // is none, and Go's net.SplitHostPort fails on it (400), as here.
    let (remote_host, remote_port) =
        split_host_port(&req.remote).map_err(|e| Response::error(400, e))?;
    if remote_host.is_empty() {
        return Err(Response::error(
            400,
            format!(
                "address {}: no remote IP, and a request on the unix socket has no address to use instead",
                req.remote
            ),
        ));
    }
    let proto = if udp { "udp" } else { "tcp" };
    let guest: IpAddr = remote_host
        .parse()
        .map_err(|_| Response::error(500, "invalid remote addr"))?;
    let guest_port: u16 = remote_port
        .parse()
        .map_err(|e| Response::error(500, format!("invalid remote port {remote_port:?}: {e}")))?;
    if guest_port == 0 {
        return Err(Response::error(500, "invalid remote port 0"));
    }
    if let Err(e) = ctx.check_guest(guest) {
        return Err(Response::error(500, e));
    }
    let host = local_addr(&req.local).map_err(|e| Response::error(500, e))?;
    let forward = Forward {
        udp,
        host,
        guest: Some(guest),
        guest_port,
    };
    match ctx.ask(|reply| Command::Expose { forward, reply }).await? {
        Ok(bound) => {
            info!(%bound, remote = %req.remote, proto, "exposed");
            Ok(Response::ok())
        }
        Err(e) => {
            warn!(local = %req.local, remote = %req.remote, proto, error = %e, "expose failed");
            Err(Response::error(500, e))
        }
    }
}

async fn unexpose(ctx: &Context, body: &[u8]) -> Result<Response, Response> {
    let req: UnexposeRequest = json::decode(body).map_err(|e| Response::error(400, e))?;
    let udp = protocol(&req.protocol)?;
    // gvproxy looks the forward up by its local string; one that does not parse names none.
    let host = local_addr(&req.local).map_err(|_| Response::error(500, "proxy not found"))?;
    match ctx
        .ask(|reply| Command::Unexpose { udp, host, reply })
        .await?
    {
        Ok(()) => Ok(Response::ok()),
        Err(e) => Err(Response::error(500, e)),
    }
}

async fn leases(ctx: &Context) -> Result<Response, Response> {
    let leases = ctx.ask(Command::Leases).await?;
    let map: BTreeMap<String, String> = leases
        .into_iter()
        .map(|(ip, mac)| (ip.to_string(), MacDisplay(mac).to_string()))
        .collect();
    Ok(Response::json(&map))
}

fn dns_all(ctx: &Context) -> Response {
    let zones: Vec<ZoneJson> = ctx
        .zones
        .snapshot()
        .into_iter()
        .map(|z| ZoneJson {
            name: z.name,
            records: z
                .records
                .into_iter()
                .map(|r| RecordJson {
                    name: r.name,
                    ip: r.ip,
                    regexp: r.regexp.map(|re| re.as_str().to_string()),
                })
                .collect(),
            default_ip: z.default_ip,
        })
        .collect();
    Response::json(&zones)
}

/// Longest regular expression accepted in a zone record.
const MAX_REGEXP_LEN: usize = 1024;
/// Compiled size bound of one record's regular expression (NFA and lazy DFA each).
const REGEXP_SIZE_LIMIT: usize = 256 << 10;

fn dns_add(ctx: &Context, body: &[u8]) -> Result<Response, Response> {
    let req: ZoneJson = json::decode(body).map_err(|e| Response::error(400, e))?;
    let mut records = Vec::with_capacity(req.records.len());
    for r in req.records {
        let regexp = match r.regexp.as_deref() {
            None | Some("") => None,
            Some(re) if re.len() > MAX_REGEXP_LEN => {
                return Err(Response::error(
                    400,
                    format!("regexp longer than {MAX_REGEXP_LEN} bytes"),
                ))
            }
            // Compiled size bounded, so a request cannot make the daemon build huge automata.
            Some(re) => Some(
                regex::RegexBuilder::new(re)
                    .size_limit(REGEXP_SIZE_LIMIT)
                    .dfa_size_limit(REGEXP_SIZE_LIMIT)
                    .build()
                    .map_err(|e| Response::error(400, format!("invalid regexp {re:?}: {e}")))?,
            ),
        };
        records.push(ZoneRecord {
            name: r.name,
            ip: r.ip,
            regexp,
        });
    }
    debug!(zone = %req.name, records = records.len(), default_ip = ?req.default_ip, "DNS zone added");
    ctx.zones
        .add(Zone {
            name: req.name,
            records,
            default_ip: req.default_ip,
        })
        .map_err(|e| Response::error(400, e))?;
    Ok(Response::ok())
}

/// First value of a query parameter (Go's `URL.Query().Get`).
fn query_value(query: &str, key: &str) -> String {
    for pair in query.split('&') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        if percent_decode(k) == key {
            return percent_decode(v);
        }
    }
    String::new()
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => {
                        out.push(b);
                        i += 3;
                        continue;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Lima's `GET /extension/wait_port?ip=&port=&timeout=`: dial the guest port from inside the
/// network once a second until it accepts (200) or the timeout (default 10 s) passes (408).
async fn wait_port(ctx: &Context, query: &str) -> Result<Response, Response> {
    let ip_text = query_value(query, "ip");
    let Ok(ip) = ip_text.parse::<std::net::IpAddr>() else {
        return Err(Response::error(
            400,
            format!("invalid ip address: {ip_text}"),
        ));
    };
    let port_text = query_value(query, "port");
    let port: u16 = port_text.parse().map_err(|_| {
        Response::error(
            400,
            format!("strconv.ParseUint: parsing {port_text:?}: invalid syntax"),
        )
    })?;
    let timeout_text = query_value(query, "timeout");
    let timeout = if timeout_text.is_empty() {
        10
    } else {
        timeout_text.parse::<u16>().map_err(|_| {
            Response::error(
                400,
                format!("strconv.ParseUint: parsing {timeout_text:?}: invalid syntax"),
            )
        })?
    };
    let addr = format!("{ip}:{port}");
    let deadline = Instant::now() + Duration::from_secs(u64::from(timeout));
    loop {
        let now = Instant::now();
        if now >= deadline {
            let msg = format!("timed out waiting for port to become available on {addr}");
            warn!("{msg}");
            return Err(Response::error(408, msg));
        }
        let attempt = match ip {
            std::net::IpAddr::V4(v4) => {
                let guest = SocketAddrV4::new(v4, port);
                ctx.ask(|reply| Command::Probe {
                    guest,
                    deadline,
                    reply,
                })
                .await?
            }
            std::net::IpAddr::V6(_) => Err("IPv6 is not supported inside the network".into()),
        };
        match attempt {
            Ok(()) => {
                debug!(%addr, "port is available");
                return Ok(Response::ok());
            }
            Err(e) => debug!(%addr, error = %e, "waiting for port to become available"),
        }
        let left = deadline.saturating_duration_since(Instant::now());
        tokio::time::sleep(left.min(Duration::from_secs(1))).await;
    }
}

async fn stats(ctx: &Context) -> Result<Response, Response> {
    let s = ctx.ask(Command::Stats).await?;
    let ports: Vec<Value> = s
        .ports
        .iter()
        .map(|p| {
            json!({
                "id": p.id,
                "name": p.name,
                "macs": p.macs.iter().map(|m| MacDisplay(*m).to_string()).collect::<Vec<_>>(),
                // Both families: the DHCP leases, then the IPv6 addresses the guest used.
                "ips": p.ips.iter().map(|ip| ip.to_string())
                    .chain(p.ips6.iter().map(|ip| ip.to_string()))
                    .collect::<Vec<_>>(),
                "frames_in": p.counters.frames_in,
                "bytes_in": p.counters.bytes_in,
                "frames_out": p.counters.frames_out,
                "bytes_out": p.counters.bytes_out,
                "drops_in": p.counters.drops_in,
                "drops_out": p.counters.drops_out,
                "tcp_flows": p.tcp_flows,
                "udp_flows": p.udp_flows,
            })
        })
        .collect();
    Ok(Response::json(&json!({
        "BytesSent": s.bytes_sent,
        "BytesReceived": s.bytes_received,
        "frames_in": s.frames_in,
        "malformed": s.malformed,
        "fragments": s.fragments,
        "switched": s.switched,
        "unknown_destination": s.unknown_destination,
        "bad_checksum": s.bad_checksum,
        "dropped": s.dropped,
        "tcp_flows": s.tcp_flows,
        "udp_flows": s.udp_flows,
        "tcp_opened": s.tcp_opened,
        "tcp_refused": s.tcp_refused,
        "tcp_retransmits": s.tcp_retransmits,
        "udp_evicted": s.udp_evicted,
        "vms": ports,
    })))
}

async fn cam(ctx: &Context) -> Result<Response, Response> {
    let cam = ctx.ask(Command::Cam).await?;
    let map: BTreeMap<String, usize> = cam
        .into_iter()
        .map(|e| (MacDisplay(e.mac).to_string(), e.port))
        .collect();
    Ok(Response::json(&map))
}

async fn flows(ctx: &Context) -> Result<Response, Response> {
    let flows = ctx.ask(Command::Flows).await?;
    let list: Vec<Value> = flows
        .iter()
        .map(|f| {
            json!({
                "protocol": f.protocol.as_str(),
                "guest": f.guest.to_string(),
                "remote": f.remote.to_string(),
                "vm": f.port,
                "inbound": f.inbound,
                "state": f.state,
            })
        })
        .collect();
    Ok(Response::json(&list))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_parsing() {
        assert_eq!(query_value("ip=1.2.3.4&port=22", "port"), "22");
        assert_eq!(query_value("ip=1.2.3.4&port=22", "timeout"), "");
        assert_eq!(query_value("a=%31%32&b", "a"), "12");
        assert_eq!(query_value("a=%3", "a"), "%3");
        assert_eq!(percent_decode("x%zz"), "x%zz");
    }

    #[test]
    fn addresses() {
        assert_eq!(
            local_addr("127.0.0.1:2222").unwrap(),
            "127.0.0.1:2222".parse().unwrap()
        );
        assert_eq!(local_addr(":80").unwrap(), "0.0.0.0:80".parse().unwrap());
        assert_eq!(
            local_addr("localhost:80").unwrap(),
            "127.0.0.1:80".parse().unwrap()
        );
        assert!(local_addr("127.0.0.1").is_err());
        assert_eq!(local_addr("[::1]:80").unwrap(), "[::1]:80".parse().unwrap());
        assert!(local_addr("[::1:80").is_err());
        assert!(local_addr("::1:80").is_err());
        assert!(local_addr("[::1]80").is_err());
        assert!(local_addr("127.0.0.1:99999").is_err());
        assert_eq!(split_host_port(":22").unwrap(), ("", "22"));
    }
}
