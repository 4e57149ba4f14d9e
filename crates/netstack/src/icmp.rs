//! ICMP and ICMPv6 echo. Pings to the stack's own addresses are answered here; every other ping
//! goes out through a host ICMP (or ICMPv6) socket, and only a real reply comes back: limanet
//! never forges one.

use crate::checksum;
use crate::config::NetConfig;
use crate::host::{Host, SockId};
use crate::output::{Link, Output};
use crate::wire::{self, IcmpEcho};
use crate::wire6;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};
use tracing::{debug, warn};

/// How long an echo socket lives without traffic.
const IDLE: Duration = Duration::from_secs(30);

#[derive(Debug)]
struct Flow {
    guest: IpAddr,
    ident: u16,
    link: Link,
    sock: SockId,
    last_used: Instant,
}

/// Echo sockets keyed by the guest's address and echo identifier.
#[derive(Debug, Default)]
pub struct IcmpTable {
    flows: HashMap<(IpAddr, u16), Flow>,
    by_sock: HashMap<SockId, (IpAddr, u16)>,
    next_sweep: Option<Instant>,
}

/// Builds an echo message (type, identifier, sequence, data) with its checksum.
pub fn echo_message(kind: u8, ident: u16, seq: u16, data: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(wire::ICMP_HEADER_LEN + data.len());
    m.extend_from_slice(&[kind, 0, 0, 0]);
    m.extend_from_slice(&ident.to_be_bytes());
    m.extend_from_slice(&seq.to_be_bytes());
    m.extend_from_slice(data);
    let sum = checksum::finish(checksum::sum(&m, 0));
    m[2..4].copy_from_slice(&sum.to_be_bytes());
    m
}

/// Echo request and reply types of the family of `ip`.
fn echo_kinds(ip: IpAddr) -> (u8, u8) {
    match ip {
        IpAddr::V4(_) => (wire::ICMP_ECHO_REQUEST, wire::ICMP_ECHO_REPLY),
        IpAddr::V6(_) => (wire6::ICMPV6_ECHO_REQUEST, wire6::ICMPV6_ECHO_REPLY),
    }
}

/// Parses an echo message of the family of `ip` (ICMPv6 echo has the same layout as ICMP's,
/// with other type numbers).
fn parse_echo(ip: IpAddr, message: &[u8]) -> Result<Option<IcmpEcho<'_>>, wire::WireError> {
    let (request, reply) = echo_kinds(ip);
    if message.len() < wire::ICMP_HEADER_LEN {
        return Err(wire::WireError::Truncated);
    }
    if (message[0] != request && message[0] != reply) || message[1] != 0 {
        return Ok(None);
    }
    Ok(Some(IcmpEcho {
        kind: message[0],
        ident: wire::be16(message, 4),
        seq: wire::be16(message, 6),
        data: &message[wire::ICMP_HEADER_LEN..],
    }))
}

/// Sends an echo reply from `src` to `dst` to the guest (ICMPv6's checksum covers the pseudo
/// header, ICMP's does not).
fn emit_reply(
    out: &mut Output,
    link: Link,
    src: IpAddr,
    dst: IpAddr,
    ident: u16,
    seq: u16,
    data: &[u8],
) {
    match (src, dst) {
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            let mut body = Vec::with_capacity(4 + data.len());
            body.extend_from_slice(&ident.to_be_bytes());
            body.extend_from_slice(&seq.to_be_bytes());
            body.extend_from_slice(data);
            out.icmpv6(link, s, d, wire6::ICMPV6_ECHO_REPLY, &body);
        }
        _ => {
            let reply = echo_message(wire::ICMP_ECHO_REPLY, ident, seq, data);
            out.ip(link, src, dst, wire::PROTO_ICMP, &reply);
        }
    }
}

impl IcmpTable {
    pub fn new() -> Self {
        Self::default()
    }

    /// An ICMP or ICMPv6 message from the guest to `dst`; `local` when `dst` is one of the
    /// stack's own addresses (answered here).
    #[allow(clippy::too_many_arguments)]
    pub fn on_guest_message(
        &mut self,
        host: &mut impl Host,
        out: &mut Output,
        cfg: &NetConfig,
        now: Instant,
        link: Link,
        src: IpAddr,
        dst: IpAddr,
        local: bool,
        message: &[u8],
    ) {
        let (request_kind, _) = echo_kinds(dst);
        let echo = match parse_echo(dst, message) {
            Ok(Some(e)) if e.kind == request_kind => e,
            Ok(_) => return,
            Err(e) => {
                debug!(error = %e, "malformed ICMP message from guest");
                return;
            }
        };
        if local {
            emit_reply(out, link, dst, src, echo.ident, echo.seq, echo.data);
            return;
        }
        if cfg.outbound_ip(SocketAddr::new(dst, 0), false).is_none() {
            debug!(%dst, "ICMP echo to an unroutable address, dropping");
            return;
        }
        let key = (src, echo.ident);
        let sock = match self.flows.get_mut(&key) {
            Some(flow) => {
                flow.last_used = now;
                flow.link = link;
                flow.sock
            }
            None => {
                if self.flows.len() >= cfg.max_icmp_flows {
                    debug!("ICMP echo table full, dropping");
                    return;
                }
                // One guest may hold half of the table: the others can still ping.
                let own = self
                    .flows
                    .values()
                    .filter(|f| f.link.port == link.port)
                    .count();
                if own >= cfg.max_icmp_flows.div_ceil(2) {
                    debug!(
                        port = link.port,
                        "guest holds its share of the ICMP echo table, dropping"
                    );
                    return;
                }
                let sock = match host.icmp_open(dst.is_ipv6()) {
                    Ok(s) => s,
                    Err(e) => {
                        warn!(error = %e, "cannot open an ICMP echo socket (see net.ipv4.ping_group_range); ping to the outside is unavailable");
                        return;
                    }
                };
                self.flows.insert(
                    key,
                    Flow {
                        guest: src,
                        ident: echo.ident,
                        link,
                        sock,
                        last_used: now,
                    },
                );
                self.by_sock.insert(sock, key);
                self.next_sweep.get_or_insert(now + IDLE);
                sock
            }
        };
        // The kernel fills in the ICMPv6 checksum (it covers addresses only it knows).
        let request = echo_message(request_kind, echo.ident, echo.seq, echo.data);
        if let Err(e) = host.icmp_send_to(sock, dst, &request) {
            debug!(error = %e, %dst, "ICMP echo send failed");
        }
    }

    /// An ICMP message (no IP header) received on a host echo socket from `from`. Returns false
    /// if the socket is not an echo socket.
    pub fn on_host_message(
        &mut self,
        out: &mut Output,
        sock: SockId,
        from: IpAddr,
        message: &[u8],
    ) -> bool {
        let Some(key) = self.by_sock.get(&sock) else {
            return false;
        };
        let Some(flow) = self.flows.get(key) else {
            return false;
        };
        let (_, reply_kind) = echo_kinds(flow.guest);
        let from = match from {
            IpAddr::V6(a) => a.to_ipv4_mapped().map_or(from, IpAddr::V4),
            v4 => v4,
        };
        match parse_echo(flow.guest, message) {
            Ok(Some(e)) if e.kind == reply_kind && from.is_ipv6() == flow.guest.is_ipv6() => {
                // The kernel chose its own identifier; give the guest back its own.
                emit_reply(out, flow.link, from, flow.guest, flow.ident, e.seq, e.data);
            }
            _ => debug!(%from, "ignoring non-reply ICMP message on an echo socket"),
        }
        true
    }

    pub fn port_closed(&mut self, host: &mut impl Host, port: usize) {
        let gone: Vec<_> = self
            .flows
            .iter()
            .filter(|(_, f)| f.link.port == port)
            .map(|(k, _)| *k)
            .collect();
        for key in gone {
            self.close(host, key);
        }
    }

    fn close(&mut self, host: &mut impl Host, key: (IpAddr, u16)) {
        if let Some(flow) = self.flows.remove(&key) {
            self.by_sock.remove(&flow.sock);
            host.close(flow.sock);
        }
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        self.next_sweep
    }

    pub fn on_timeout(&mut self, host: &mut impl Host, now: Instant) {
        match self.next_sweep {
            Some(t) if t <= now => {}
            _ => return,
        }
        let idle: Vec<_> = self
            .flows
            .iter()
            .filter(|(_, f)| now.duration_since(f.last_used) >= IDLE)
            .map(|(k, _)| *k)
            .collect();
        for key in idle {
            self.close(host, key);
        }
        self.next_sweep = (!self.flows.is_empty()).then(|| now + Duration::from_secs(5));
    }
}
