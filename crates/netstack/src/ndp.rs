//! The gateway's IPv6 control plane: Neighbor Discovery (RFC 4861) for the gateway and DNS
//! addresses, Router Advertisements for SLAAC (RFC 4862) with the DNS server in RDNSS
//! (RFC 8106), and the stateless DHCPv6 server of [`crate::dhcp6`].
//!
//! - A Neighbor Solicitation for the gateway's global or link-local address, or a DNS address,
//!   gets a Neighbor Advertisement with the gateway's MAC (router flag set). Solicitations are
//!   answered at most [`NS_PER_SECOND`] per port (bursts of as many): a flood costs a counter,
//!   not a reply per frame.
//! - A Router Solicitation gets a Router Advertisement at once; every port also gets one every
//!   [`RA_INTERVAL`]. The RA: the gateway as default router (source: its link-local address),
//!   the /64 prefix with the on-link and autonomous flags, the MTU, RDNSS with the DNS
//!   addresses, and the O flag (DNS also from DHCPv6) but not M (no stateful addresses).
//! - Router Advertisements and Redirects from guests are dropped by the stack before the switch
//!   sees them (counted in [`NdpStats::guest_router_messages`]): a guest must not become the
//!   router of the others.

use crate::config::{Ipv6Net, NetConfig};
use crate::dhcp6::{self, Dhcp6Config};
use crate::limits::{Limit, LimitLog};
use crate::output::{Link, Output, PortId};
use crate::wire::{MacAddr, WireError};
use crate::wire6::{self, Icmpv6, NeighborAdvert, NeighborSolicit, PrefixInfo, RouterAdvert};
use std::collections::HashMap;
use std::net::{Ipv6Addr, SocketAddrV6};
use std::time::{Duration, Instant};
use tracing::{debug, warn};

/// How often every port gets an unsolicited Router Advertisement (RFC 4861's
/// MaxRtrAdvInterval may be 4..1800 s; a short one lets a guest that missed the first find the
/// router soon).
pub const RA_INTERVAL: Duration = Duration::from_secs(60);
/// Router lifetime, prefix preferred lifetime and RDNSS lifetime in the RA: many intervals, so
/// one lost RA changes nothing.
const ROUTER_LIFETIME: u16 = 1800;
const PREFIX_VALID: u32 = 86_400;
const PREFIX_PREFERRED: u32 = 14_400;
const RDNSS_LIFETIME: u32 = 1800;
/// Neighbor Solicitations answered per port per second.
pub const NS_PER_SECOND: u32 = 100;
/// ICMPv6 errors (no route) sent per port per second.
pub const ERRORS_PER_SECOND: u32 = 100;

/// Takes a token from `port`'s bucket in `buckets`, which holds `rate` and refills `rate` per
/// second.
fn take(buckets: &mut HashMap<PortId, Bucket>, port: PortId, now: Instant, rate: u32) -> bool {
    let b = buckets.entry(port).or_insert(Bucket {
        tokens: rate,
        refilled: now,
    });
    let elapsed = now.saturating_duration_since(b.refilled);
    let earned = (elapsed.as_millis() as u64 * u64::from(rate) / 1000) as u32;
    if earned > 0 {
        b.tokens = b.tokens.saturating_add(earned).min(rate);
        b.refilled = now;
    }
    if b.tokens == 0 {
        return false;
    }
    b.tokens -= 1;
    true
}

/// Counters for logs and tests.
#[derive(Debug, Default, Clone, Copy)]
pub struct NdpStats {
    pub neighbor_solicits_answered: u64,
    /// Solicitations over a port's rate, not answered.
    pub neighbor_solicits_limited: u64,
    pub router_solicits: u64,
    pub router_adverts_sent: u64,
    /// Router Advertisements and Redirects from guests, dropped.
    pub guest_router_messages: u64,
    pub dhcp6_replies: u64,
    /// ICMPv6 errors not sent: over a port's rate.
    pub errors_limited: u64,
    /// Malformed Neighbor Discovery or DHCPv6 messages.
    pub malformed: u64,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: u32,
    refilled: Instant,
}

/// Neighbor Discovery and DHCPv6 state: the RA timer and the per-port solicitation budgets.
#[derive(Debug, Default)]
pub struct Ndp {
    next_ra: Option<Instant>,
    buckets: HashMap<PortId, Bucket>,
    /// ICMPv6 errors the gateway may still send to each port (RFC 4443 2.4(f): rate-limited).
    error_buckets: HashMap<PortId, Bucket>,
    pub stats: NdpStats,
    log: LimitLog,
}

/// The gateway's link-local address: the source of its Router Advertisements, and the
/// guests' next hop.
pub fn gateway_link_local(cfg: &NetConfig) -> Ipv6Addr {
    wire6::link_local_from_mac(cfg.gateway_mac)
}

/// The Router Advertisement the gateway sends.
pub fn router_advert(cfg: &NetConfig, v6: &Ipv6Net) -> RouterAdvert {
    RouterAdvert {
        hop_limit: 64,
        managed: false,
        other: true,
        router_lifetime: ROUTER_LIFETIME,
        reachable_time: 0,
        retrans_timer: 0,
        source_ll: Some(cfg.gateway_mac),
        mtu: Some(u32::from(cfg.mtu)),
        prefixes: vec![PrefixInfo {
            prefix: v6.prefix,
            prefix_len: Ipv6Net::PREFIX_LEN,
            on_link: true,
            autonomous: true,
            valid_lifetime: PREFIX_VALID,
            preferred_lifetime: PREFIX_PREFERRED,
        }],
        rdnss: Some((RDNSS_LIFETIME, v6.dns_addrs.clone())),
    }
}

impl Ndp {
    pub fn new() -> Self {
        Self::default()
    }

    /// An ICMPv6 message from a guest to the gateway (or to a multicast group it is in).
    /// Returns false when it is not a Neighbor Discovery message (echo and the rest are the
    /// caller's).
    #[allow(clippy::too_many_arguments)]
    pub fn on_guest_icmpv6(
        &mut self,
        out: &mut Output,
        cfg: &NetConfig,
        v6: &Ipv6Net,
        now: Instant,
        link: Link,
        src: Ipv6Addr,
        icmp: &Icmpv6,
    ) -> bool {
        match icmp.kind {
            wire6::ND_NEIGHBOR_SOLICIT => {
                match NeighborSolicit::parse(icmp.body) {
                    Ok(ns) => self.neighbor_solicit(out, cfg, v6, now, link, src, &ns),
                    Err(e) => self.malformed(e),
                }
                true
            }
            wire6::ND_ROUTER_SOLICIT => {
                self.stats.router_solicits += 1;
                // Unicast to a solicitor that has an address; to all nodes (on its port only)
                // for one that has none yet.
                let dst = if src.is_unspecified() {
                    wire6::ALL_NODES
                } else {
                    src
                };
                self.send_ra(out, cfg, v6, link, dst);
                true
            }
            wire6::ND_NEIGHBOR_ADVERT | wire6::ND_ROUTER_ADVERT | wire6::ND_REDIRECT => true,
            _ => false,
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn neighbor_solicit(
        &mut self,
        out: &mut Output,
        cfg: &NetConfig,
        v6: &Ipv6Net,
        now: Instant,
        link: Link,
        src: Ipv6Addr,
        ns: &NeighborSolicit,
    ) {
        let ours = v6.is_local(ns.target) || ns.target == gateway_link_local(cfg);
        if !ours {
            return;
        }
        if !self.take_token(link.port, now) {
            self.stats.neighbor_solicits_limited += 1;
            if self.log.first(Limit::NeighborSolicitRate) {
                warn!(port = link.port, rate = NS_PER_SECOND, "a guest solicits the gateway's addresses faster than they are answered; the excess is dropped (logged once; counted)");
            }
            return;
        }
        self.stats.neighbor_solicits_answered += 1;
        // Duplicate address detection (source ::) for one of our addresses: defend it to all
        // nodes, unsolicited (RFC 4861 7.2.4).
        let (dst, solicited) = if src.is_unspecified() {
            (wire6::ALL_NODES, false)
        } else {
            (src, true)
        };
        let na = NeighborAdvert {
            router: true,
            solicited,
            override_: true,
            target: ns.target,
            target_ll: Some(cfg.gateway_mac),
        };
        let to = Link {
            port: link.port,
            mac: if dst.is_multicast() {
                wire6::multicast_mac(dst)
            } else {
                ns.source_ll.unwrap_or(link.mac)
            },
        };
        out.icmpv6(
            to,
            ns.target,
            dst,
            wire6::ND_NEIGHBOR_ADVERT,
            &na.emit_body(),
        );
    }

    /// Sends the gateway's Router Advertisement to `dst` on `link`'s port.
    fn send_ra(
        &mut self,
        out: &mut Output,
        cfg: &NetConfig,
        v6: &Ipv6Net,
        link: Link,
        dst: Ipv6Addr,
    ) {
        self.stats.router_adverts_sent += 1;
        let to = Link {
            port: link.port,
            mac: if dst.is_multicast() {
                wire6::multicast_mac(dst)
            } else {
                link.mac
            },
        };
        let body = router_advert(cfg, v6).emit_body();
        out.icmpv6(
            to,
            gateway_link_local(cfg),
            dst,
            wire6::ND_ROUTER_ADVERT,
            &body,
        );
    }

    /// A DHCPv6 message from a client at `src`.
    pub fn on_dhcp6(
        &mut self,
        out: &mut Output,
        cfg: &NetConfig,
        v6: &Ipv6Net,
        link: Link,
        src: SocketAddrV6,
        payload: &[u8],
    ) {
        let server = Dhcp6Config {
            server_mac: cfg.gateway_mac,
            dns_servers: v6.dns_addrs.clone(),
            search_domains: cfg.search_domains.clone(),
        };
        match dhcp6::handle(&server, payload) {
            Ok(Some(reply)) => {
                self.stats.dhcp6_replies += 1;
                let from = SocketAddrV6::new(gateway_link_local(cfg), dhcp6::SERVER_PORT, 0, 0);
                out.udp(link, from, src, &reply);
            }
            Ok(None) => debug!(%src, "DHCPv6 message not answered (stateless server)"),
            Err(e) => self.malformed(e),
        }
    }

    fn malformed(&mut self, error: WireError) {
        self.stats.malformed += 1;
        debug!(%error, "malformed Neighbor Discovery or DHCPv6 message");
    }

    /// Token bucket of `port`: [`NS_PER_SECOND`] per second, bursts of as many.
    fn take_token(&mut self, port: PortId, now: Instant) -> bool {
        take(&mut self.buckets, port, now, NS_PER_SECOND)
    }

    /// Whether the gateway may send `port` an ICMPv6 error now: [`ERRORS_PER_SECOND`] per
    /// second per port, bursts of as many; the rest are counted in
    /// [`NdpStats::errors_limited`].
    pub fn may_send_error(&mut self, port: PortId, now: Instant) -> bool {
        let ok = take(&mut self.error_buckets, port, now, ERRORS_PER_SECOND);
        if !ok {
            self.stats.errors_limited += 1;
        }
        ok
    }

    /// Starts the periodic RAs once guests speak IPv6 (they solicit one at link up, and are
    /// answered at once; the timer keeps them and later guests up to date).
    pub fn arm(&mut self, now: Instant) {
        if self.next_ra.is_none() {
            self.next_ra = Some(now + RA_INTERVAL);
        }
    }

    pub fn port_closed(&mut self, port: PortId) {
        self.buckets.remove(&port);
        self.error_buckets.remove(&port);
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        self.next_ra
    }

    /// Sends the periodic RA to every port, when due.
    pub fn on_timeout(
        &mut self,
        out: &mut Output,
        cfg: &NetConfig,
        v6: &Ipv6Net,
        now: Instant,
        ports: &[PortId],
    ) {
        match self.next_ra {
            Some(t) if t <= now => {}
            _ => return,
        }
        let mac: MacAddr = wire6::multicast_mac(wire6::ALL_NODES);
        for &port in ports {
            self.send_ra(out, cfg, v6, Link { port, mac }, wire6::ALL_NODES);
        }
        self.next_ra = (!ports.is_empty()).then(|| now + RA_INTERVAL);
    }
}
