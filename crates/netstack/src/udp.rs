//! UDP translation: one unconnected host socket per guest (address, port), IPv4 or IPv6 (an IPv6
//! one is dual stack, so a guest's IPv6 query to the embedded DNS reaches its IPv4 loopback socket).
//!
//! Mapping is endpoint-independent (RFC 4787): whatever the guest's socket talks to goes out of
//! the same host socket, and replies from any peer come back, so DNS, QUIC and peer-to-peer
//! protocols behave as behind a home router. The table is bounded; when it is full the least
//! recently used flow is evicted. Flows that only ever talked to port 53 expire quickly, so a
//! resolver making one query per socket does not pile up sockets.
//!
//! Port forwards (host → guest) are flows too: a datagram from a host client to a forward
//! listener goes to the guest from the gateway, from a port that identifies that client.

use crate::config::NetConfig;
use crate::host::{Host, SockId};
use crate::inspect::{FlowInfo, FlowProtocol};
use crate::output::{ip_header_len, Link, Output};
use crate::wire::UDP_HEADER_LEN;
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

/// Linux's EADDRNOTAVAIL: an IPv6 send with no source address for the destination (no route).
const EADDRNOTAVAIL: i32 = 99;
use tracing::{debug, warn};

#[derive(Debug)]
struct Flow {
    guest: SocketAddr,
    link: Link,
    sock: SockId,
    last_used: Instant,
    /// Every datagram so far went to port 53.
    dns_only: bool,
}

#[derive(Debug)]
struct Forward {
    listener: SockId,
    client: SocketAddr,
    guest: SocketAddr,
    /// Our port on the gateway address, as the guest sees it.
    gateway_port: u16,
    link: Link,
    last_used: Instant,
}

/// Counters for logs and the stats API.
#[derive(Debug, Default, Clone, Copy)]
pub struct UdpStats {
    pub flows_opened: u64,
    pub evicted: u64,
    pub expired: u64,
    pub dropped: u64,
}

/// All UDP flows of one network.
#[derive(Debug)]
pub struct UdpTable {
    flows: HashMap<SocketAddr, Flow>,
    by_sock: HashMap<SockId, SocketAddr>,
    forwards: HashMap<u16, Forward>,
    forward_by_client: HashMap<(SockId, SocketAddr), u16>,
    next_forward_port: u16,
    next_sweep: Option<Instant>,
    pub stats: UdpStats,
}

const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

impl Default for UdpTable {
    fn default() -> Self {
        Self::new()
    }
}

impl UdpTable {
    pub fn new() -> Self {
        UdpTable {
            flows: HashMap::new(),
            by_sock: HashMap::new(),
            forwards: HashMap::new(),
            forward_by_client: HashMap::new(),
            next_forward_port: 0,
            next_sweep: None,
            stats: UdpStats::default(),
        }
    }

    pub fn len(&self) -> usize {
        self.flows.len() + self.forwards.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A datagram from the guest. Returns true when the host has no route to its destination
    /// (the caller may tell the guest so with an ICMP unreachable, rather than let it wait).
    #[allow(clippy::too_many_arguments)]
    pub fn on_guest_datagram(
        &mut self,
        host: &mut impl Host,
        cfg: &NetConfig,
        now: Instant,
        link: Link,
        guest: SocketAddr,
        dst: SocketAddr,
        payload: &[u8],
    ) -> bool {
        // A reply to a port-forwarded client?
        if cfg.gateway_for(dst.ip()) == Some(dst.ip()) {
            if let Some(fwd) = self.forwards.get_mut(&dst.port()) {
                if fwd.guest == guest {
                    fwd.last_used = now;
                    if let Err(e) = host.udp_send_to(fwd.listener, fwd.client, payload) {
                        debug!(error = %e, client = %fwd.client, "forwarded UDP reply failed");
                    }
                    return false;
                }
            }
        }
        let Some(target) = cfg.outbound_ip(dst, false) else {
            self.stats.dropped += 1;
            debug!(%dst, "no route for UDP destination, dropping");
            return false;
        };
        let sock = match self.flows.get_mut(&guest) {
            Some(flow) => {
                flow.last_used = now;
                flow.link = link;
                flow.dns_only &= dst.port() == 53;
                flow.sock
            }
            None => {
                if self.flows.len() >= cfg.max_udp_flows {
                    // A guest holding half the table or more makes room from its own flows,
                    // so a flood of new source ports cannot evict the other guests' flows.
                    let own = self
                        .flows
                        .values()
                        .filter(|f| f.link.port == link.port)
                        .count();
                    let only = (own >= cfg.max_udp_flows / 2).then_some(link.port);
                    self.evict_oldest(host, only);
                }
                let sock = match host.udp_open(guest.is_ipv6()) {
                    Ok(s) => s,
                    Err(e) => {
                        self.stats.dropped += 1;
                        warn!(error = %e, "cannot open a UDP socket, dropping datagram");
                        return false;
                    }
                };
                self.flows.insert(
                    guest,
                    Flow {
                        guest,
                        link,
                        sock,
                        last_used: now,
                        dns_only: dst.port() == 53,
                    },
                );
                self.by_sock.insert(sock, guest);
                self.stats.flows_opened += 1;
                self.next_sweep.get_or_insert(now + SWEEP_INTERVAL);
                sock
            }
        };
        match host.udp_send_to(sock, target, payload) {
            Ok(()) => false,
            Err(e) => {
                self.stats.dropped += 1;
                debug!(error = %e, %target, "UDP send failed");
                matches!(
                    e.kind(),
                    std::io::ErrorKind::NetworkUnreachable | std::io::ErrorKind::HostUnreachable
                ) || e.raw_os_error() == Some(EADDRNOTAVAIL)
            }
        }
    }

    /// Evicts the least recently used flow (of port `only`, if given).
    fn evict_oldest(&mut self, host: &mut impl Host, only: Option<usize>) {
        let oldest = self
            .flows
            .values()
            .filter(|f| only.is_none_or(|p| f.link.port == p))
            .min_by_key(|f| f.last_used)
            .map(|f| f.guest);
        if let Some(guest) = oldest {
            self.stats.evicted += 1;
            if self.stats.evicted.is_power_of_two() {
                warn!(
                    evicted = self.stats.evicted,
                    "UDP flow table full, evicting least recently used flows"
                );
            }
            self.close_flow(host, guest);
        }
    }

    fn close_flow(&mut self, host: &mut impl Host, guest: SocketAddr) {
        if let Some(flow) = self.flows.remove(&guest) {
            self.by_sock.remove(&flow.sock);
            host.close(flow.sock);
        }
    }

    /// A datagram arrived on a host socket. Returns false if the socket is not a UDP flow.
    #[allow(clippy::too_many_arguments)]
    pub fn on_host_datagram(
        &mut self,
        out: &mut Output,
        cfg: &NetConfig,
        now: Instant,
        sock: SockId,
        from: SocketAddr,
        payload: &[u8],
    ) -> bool {
        let Some(guest) = self.by_sock.get(&sock) else {
            return false;
        };
        let Some(flow) = self.flows.get_mut(guest) else {
            return false;
        };
        if payload.len() + UDP_HEADER_LEN + ip_header_len(flow.guest.ip()) > usize::from(cfg.mtu) {
            self.stats.dropped += 1;
            debug!(
                len = payload.len(),
                "UDP datagram larger than the MTU, dropping (no fragmentation)"
            );
            return true;
        }
        let Some(src) = cfg.inbound_ip(from, flow.guest.ip()) else {
            self.stats.dropped += 1;
            return true;
        };
        flow.last_used = now;
        out.udp(flow.link, src, flow.guest, payload);
        true
    }

    /// A datagram from a host client on a port-forward listener.
    #[allow(clippy::too_many_arguments)]
    pub fn on_forward_datagram(
        &mut self,
        out: &mut Output,
        cfg: &NetConfig,
        now: Instant,
        listener: SockId,
        client: SocketAddr,
        link: Link,
        guest: SocketAddr,
        payload: &[u8],
    ) {
        if payload.len() + UDP_HEADER_LEN + ip_header_len(guest.ip()) > usize::from(cfg.mtu) {
            self.stats.dropped += 1;
            return;
        }
        let Some(gateway) = cfg.gateway_for(guest.ip()) else {
            self.stats.dropped += 1;
            return;
        };
        let port = match self.forward_by_client.get(&(listener, client)) {
            Some(&p) => p,
            None => {
                if self.forwards.len() >= cfg.max_udp_flows {
                    self.stats.dropped += 1;
                    warn!(%client, "UDP forward table full, dropping");
                    return;
                }
                let port = loop {
                    self.next_forward_port = self.next_forward_port.wrapping_add(1);
                    let p = 49152 + self.next_forward_port % 16384;
                    if !self.forwards.contains_key(&p) {
                        break p;
                    }
                };
                self.forward_by_client.insert((listener, client), port);
                self.next_sweep.get_or_insert(now + SWEEP_INTERVAL);
                port
            }
        };
        let fwd = self.forwards.entry(port).or_insert(Forward {
            listener,
            client,
            guest,
            gateway_port: port,
            link,
            last_used: now,
        });
        fwd.last_used = now;
        fwd.link = link;
        let src = SocketAddr::new(gateway, fwd.gateway_port);
        out.udp(fwd.link, src, fwd.guest, payload);
    }

    /// A forward listener was closed (unexposed): forget its clients, so nothing is ever sent
    /// through that socket id again.
    pub fn forward_listener_closed(&mut self, listener: SockId) {
        self.forwards.retain(|_, f| f.listener != listener);
        self.forward_by_client.retain(|(l, _), _| *l != listener);
    }

    /// Every live flow, for the control API (forwarded datagrams come from the gateway).
    pub fn flow_list(&self, cfg: &NetConfig) -> Vec<FlowInfo> {
        let outbound = self.flows.values().map(|f| FlowInfo {
            protocol: FlowProtocol::Udp,
            guest: f.guest,
            // An unconnected socket talks to anyone: the remote end is not one address.
            remote: match f.guest {
                SocketAddr::V4(_) => SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)),
                SocketAddr::V6(_) => SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0)),
            },
            port: f.link.port,
            inbound: false,
            state: "active",
        });
        let inbound = self.forwards.values().map(|f| FlowInfo {
            protocol: FlowProtocol::Udp,
            guest: f.guest,
            remote: SocketAddr::new(
                cfg.gateway_for(f.guest.ip())
                    .unwrap_or(IpAddr::V4(cfg.gateway)),
                f.gateway_port,
            ),
            port: f.link.port,
            inbound: true,
            state: "active",
        });
        outbound.chain(inbound).collect()
    }

    /// Forgets the flows of a port that went away.
    pub fn port_closed(&mut self, host: &mut impl Host, port: usize) {
        let gone: Vec<SocketAddr> = self
            .flows
            .values()
            .filter(|f| f.link.port == port)
            .map(|f| f.guest)
            .collect();
        for guest in gone {
            self.close_flow(host, guest);
        }
        self.forwards.retain(|_, f| f.link.port != port);
        let live: std::collections::HashSet<u16> = self.forwards.keys().copied().collect();
        self.forward_by_client.retain(|_, p| live.contains(p));
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        self.next_sweep
    }

    /// Expires idle flows.
    pub fn on_timeout(&mut self, host: &mut impl Host, cfg: &NetConfig, now: Instant) {
        match self.next_sweep {
            Some(t) if t <= now => {}
            _ => return,
        }
        let idle = |last: Instant, dns: bool| {
            let limit = if dns {
                cfg.udp_dns_idle_timeout
            } else {
                cfg.udp_idle_timeout
            };
            now.duration_since(last) >= limit
        };
        let expired: Vec<SocketAddr> = self
            .flows
            .values()
            .filter(|f| idle(f.last_used, f.dns_only))
            .map(|f| f.guest)
            .collect();
        self.stats.expired += expired.len() as u64;
        for guest in expired {
            self.close_flow(host, guest);
        }
        self.forwards.retain(|_, f| !idle(f.last_used, false));
        let live: std::collections::HashSet<u16> = self.forwards.keys().copied().collect();
        self.forward_by_client.retain(|_, p| live.contains(p));
        self.next_sweep =
            (!self.flows.is_empty() || !self.forwards.is_empty()).then(|| now + SWEEP_INTERVAL);
    }
}
