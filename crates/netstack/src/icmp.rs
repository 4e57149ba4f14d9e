//! ICMP echo. Pings to the stack's own addresses are answered here; every other ping goes out
//! through a host ICMP socket, and only a real reply comes back: limanet never forges one.

use crate::checksum;
use crate::config::NetConfig;
use crate::host::{Host, SockId};
use crate::output::{Link, Output};
use crate::wire::{self, IcmpEcho};
use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};
use tracing::{debug, warn};

/// How long an echo socket lives without traffic.
const IDLE: Duration = Duration::from_secs(30);

#[derive(Debug)]
struct Flow {
    guest: Ipv4Addr,
    ident: u16,
    link: Link,
    sock: SockId,
    last_used: Instant,
}

/// Echo sockets keyed by the guest's address and echo identifier.
#[derive(Debug, Default)]
pub struct IcmpTable {
    flows: HashMap<(Ipv4Addr, u16), Flow>,
    by_sock: HashMap<SockId, (Ipv4Addr, u16)>,
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

impl IcmpTable {
    pub fn new() -> Self {
        Self::default()
    }

    /// An ICMP message from the guest to `dst`.
    #[allow(clippy::too_many_arguments)]
    pub fn on_guest_message(
        &mut self,
        host: &mut impl Host,
        out: &mut Output,
        cfg: &NetConfig,
        now: Instant,
        link: Link,
        src: Ipv4Addr,
        dst: Ipv4Addr,
        message: &[u8],
    ) {
        let echo = match IcmpEcho::parse(message) {
            Ok(Some(e)) if e.kind == wire::ICMP_ECHO_REQUEST => e,
            Ok(_) => return,
            Err(e) => {
                debug!(error = %e, "malformed ICMP message from guest");
                return;
            }
        };
        if cfg.is_local(dst) {
            let reply = echo_message(wire::ICMP_ECHO_REPLY, echo.ident, echo.seq, echo.data);
            out.ipv4(link, dst, src, wire::PROTO_ICMP, &reply);
            return;
        }
        if cfg
            .outbound(std::net::SocketAddrV4::new(dst, 0), false)
            .is_none()
        {
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
                let sock = match host.icmp_open() {
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
        let request = echo_message(wire::ICMP_ECHO_REQUEST, echo.ident, echo.seq, echo.data);
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
        from: Ipv4Addr,
        message: &[u8],
    ) -> bool {
        let Some(key) = self.by_sock.get(&sock) else {
            return false;
        };
        let Some(flow) = self.flows.get(key) else {
            return false;
        };
        match IcmpEcho::parse(message) {
            Ok(Some(e)) if e.kind == wire::ICMP_ECHO_REPLY => {
                // The kernel chose its own identifier; give the guest back its own.
                let reply = echo_message(wire::ICMP_ECHO_REPLY, flow.ident, e.seq, e.data);
                out.ipv4(flow.link, from, flow.guest, wire::PROTO_ICMP, &reply);
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

    fn close(&mut self, host: &mut impl Host, key: (Ipv4Addr, u16)) {
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
