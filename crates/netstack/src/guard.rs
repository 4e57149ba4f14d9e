//! Who may send what: the switch's MAC table and the anti-spoofing rule for source addresses.
//!
//! Every frame from a port passes two checks before the switch or the gateway sees it:
//!
//! - **Source MAC.** A unicast MAC belongs to the port it was first seen on, until that port
//!   closes or the MAC has sent nothing for `mac_age`. A frame from another port with that MAC
//!   is dropped (a guest cannot take over another guest's MAC). A port learns at most
//!   `max_macs_per_port` MACs and the network `max_macs`; frames from further MACs are dropped
//!   until old ones age out (a full table drops the MACs idle for `mac_age`; a MAC idle that
//!   long may also move to another port), so a flood of made-up MACs costs a bounded table. Group
//!   (multicast) MACs, all zeroes and the gateway's own MAC are never valid sources.
//! - **Source IPv4 address** (IPv4 source, and the sender of ARP, whose sender MAC must also be
//!   the frame's). `0.0.0.0` passes (DHCP clients, ARP probes). Otherwise the address must be
//!   a host address of the subnet, not the gateway's or the DNS address, and one this port may
//!   use: an address the port already uses, or a free one. An address is in use by the port
//!   that first sent from it, until that port closes; an address DHCP has offered or leased
//!   to a MAC of another port is that port's. So a guest configured statically, or one that
//!   sends before its lease (or after limanet restarted and forgot the lease), just works;
//!   a guest cannot send from another guest's address; and a port may take at most
//!   `max_ips_per_port` addresses that DHCP did not give it, so made-up sources are bounded.
//!   Addresses outside the subnet are dropped: replies could not reach them anyway.
//! - **Source IPv6 address.** `::` passes (duplicate address detection). Otherwise the address
//!   must be link-local or a guest address of the network's /64 (not the gateway's, the DNS's
//!   or the prefix itself), and not one another port uses: an address belongs to the port that
//!   first sent from it until that port closes. A port may hold [`MAX_IPV6_PER_PORT`] IPv6
//!   addresses; past that its least recently used one is released (privacy addresses rotate,
//!   so a long-running guest keeps making new ones). Neighbor Advertisements for an address
//!   another port holds are dropped too: a guest cannot take over another's address in its
//!   neighbors' caches.
//!
//! Refused frames are counted; each kind of refusal is logged once (see [`crate::limits`]).

use crate::config::NetConfig;
use crate::limits::{Limit, LimitLog};
use crate::output::{Link, PortId};
use crate::stack::MacDisplay;
use crate::wire::{self, MacAddr};
use std::collections::HashMap;
use std::net::{Ipv4Addr, Ipv6Addr};

/// IPv6 addresses one port may hold at once (link-local, stable SLAAC, temporary ones).
pub const MAX_IPV6_PER_PORT: usize = 16;

#[derive(Debug, Clone, Copy)]
struct Addr6 {
    link: Link,
    seen: Instant,
}
use std::time::{Duration, Instant};
use tracing::warn;

#[derive(Debug, Clone, Copy)]
struct MacEntry {
    port: PortId,
    seen: Instant,
}

#[derive(Debug, Default)]
struct PortAddrs {
    macs: usize,
    /// Addresses this port took without a lease.
    unleased: usize,
    /// Token bucket for flooded frames: tokens left, and when it was last refilled.
    flood_tokens: u32,
    flood_refilled: Option<Instant>,
}

/// Counters for logs and the stats API.
#[derive(Debug, Default, Clone, Copy)]
pub struct GuardStats {
    /// Frames dropped because their source MAC belongs to another port.
    pub mac_of_other_port: u64,
    /// Frames dropped because their port or the network had learned all the MACs it may.
    pub mac_limit: u64,
    /// Frames with a multicast, zero or the gateway's MAC as source.
    pub bad_source_mac: u64,
    /// Frames dropped for a source IPv4 address the port may not use.
    pub spoofed_source: u64,
    /// Frames dropped because the port already uses all the unleased addresses it may.
    pub address_limit: u64,
    pub macs_aged_out: u64,
    /// Broadcast and multicast frames not flooded because their port exceeded its rate.
    pub flood_limit: u64,
}

/// What [`Guard::admit_ip`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// The port may send from the address (it did before, or it is `0.0.0.0`).
    Known,
    /// The port uses the address from now on (no lease stands for it: tell DHCP).
    NewUnleased,
    /// The port uses the address from now on, under a DHCP lease of one of its MACs.
    NewLeased,
    Refused,
}

/// The MAC table and address claims of one network.
#[derive(Debug, Default)]
pub struct Guard {
    macs: HashMap<MacAddr, MacEntry>,
    /// Addresses in use, with the port and MAC they were last seen from.
    addrs: HashMap<Ipv4Addr, Link>,
    /// IPv6 addresses in use, with their port and MAC and when they were last used.
    addrs6: HashMap<Ipv6Addr, Addr6>,
    ports: HashMap<PortId, PortAddrs>,
    /// When stale MACs were last swept out (see `make_room`).
    last_sweep: Option<Instant>,
    pub stats: GuardStats,
    log: LimitLog,
}

impl Guard {
    pub fn new() -> Self {
        Self::default()
    }

    /// Forgets a closed port's MACs and addresses; returns the addresses it had used.
    pub fn remove_port(&mut self, port: PortId) -> Vec<Ipv4Addr> {
        self.ports.remove(&port);
        self.macs.retain(|_, e| e.port != port);
        let freed: Vec<Ipv4Addr> = self
            .addrs
            .iter()
            .filter(|(_, l)| l.port == port)
            .map(|(ip, _)| *ip)
            .collect();
        for ip in &freed {
            self.addrs.remove(ip);
        }
        self.addrs6.retain(|_, a| a.link.port != port);
        freed
    }

    /// Where a guest's IPv6 address was last seen.
    pub fn link_of6(&self, ip: &Ipv6Addr) -> Option<Link> {
        self.addrs6.get(ip).map(|a| a.link)
    }

    /// The IPv6 addresses a port uses, with when each was last seen.
    pub fn addresses6_of(&self, port: PortId) -> Vec<(Ipv6Addr, Instant)> {
        self.addrs6
            .iter()
            .filter(|(_, a)| a.link.port == port)
            .map(|(ip, a)| (*ip, a.seen))
            .collect()
    }

    /// The port that holds an IPv6 address, if any.
    pub fn port_of6(&self, ip: &Ipv6Addr) -> Option<PortId> {
        self.addrs6.get(ip).map(|a| a.link.port)
    }

    /// Checks the source IPv6 address of a frame from `port` (see the module docs).
    pub fn admit_ip6(
        &mut self,
        cfg: &NetConfig,
        now: Instant,
        port: PortId,
        mac: MacAddr,
        ip: Ipv6Addr,
    ) -> bool {
        if ip.is_unspecified() {
            return true;
        }
        match self.addrs6.get_mut(&ip) {
            Some(a) if a.link.port == port => {
                a.link.mac = mac;
                a.seen = now;
                return true;
            }
            Some(_) => return self.spoofed6(port, ip),
            None => {}
        }
        let usable = crate::config::is_link_local6(ip)
            || cfg
                .ipv6
                .as_ref()
                .is_some_and(|v6| v6.contains(ip) && !v6.is_local(ip) && ip != v6.prefix);
        if !usable {
            return self.spoofed6(port, ip);
        }
        let held: Vec<(Ipv6Addr, Instant)> = self
            .addrs6
            .iter()
            .filter(|(_, a)| a.link.port == port)
            .map(|(ip, a)| (*ip, a.seen))
            .collect();
        if held.len() >= MAX_IPV6_PER_PORT {
            if let Some((oldest, _)) = held.iter().min_by_key(|(_, seen)| *seen) {
                self.addrs6.remove(oldest);
            }
        }
        self.addrs6.insert(
            ip,
            Addr6 {
                link: Link { port, mac },
                seen: now,
            },
        );
        true
    }

    fn spoofed6(&mut self, port: PortId, ip: Ipv6Addr) -> bool {
        self.stats.spoofed_source += 1;
        if self.log.first(Limit::Ipv6SourceAddress) {
            warn!(port, %ip, "dropping IPv6 frames from a source address this port may not use (another guest's, or not on this network; logged once)");
        }
        false
    }

    /// The port a MAC is learned on.
    pub fn port_of(&self, mac: &MacAddr) -> Option<PortId> {
        self.macs.get(mac).map(|e| e.port)
    }

    /// Where a guest address was last seen.
    pub fn link_of(&self, ip: &Ipv4Addr) -> Option<Link> {
        self.addrs.get(ip).copied()
    }

    /// The learned MACs and the ports they are on (the switch's CAM table).
    pub fn macs(&self) -> impl Iterator<Item = (MacAddr, PortId)> + '_ {
        self.macs.iter().map(|(mac, e)| (*mac, e.port))
    }

    /// The addresses a port uses.
    pub fn addresses_of(&self, port: PortId) -> Vec<Ipv4Addr> {
        self.addrs
            .iter()
            .filter(|(_, l)| l.port == port)
            .map(|(ip, _)| *ip)
            .collect()
    }

    /// Learned MACs.
    pub fn mac_count(&self) -> usize {
        self.macs.len()
    }

    /// Checks (and learns) the source MAC of a frame from `port`.
    pub fn admit_mac(&mut self, cfg: &NetConfig, now: Instant, port: PortId, mac: MacAddr) -> bool {
        match self.macs.get_mut(&mac) {
            Some(e) if e.port == port => {
                e.seen = now;
                return true;
            }
            Some(e) if now.saturating_duration_since(e.seen) < cfg.mac_age => {
                self.stats.mac_of_other_port += 1;
                if self.log.first(Limit::MacOfOtherPort) {
                    warn!(port, owner = e.port, mac = %MacDisplay(mac), "dropping frames whose source MAC belongs to another port (logged once)");
                }
                return false;
            }
            Some(_) => self.forget_mac(mac),
            None => {}
        }
        if wire::is_multicast(&mac) || mac == [0; 6] || mac == cfg.gateway_mac {
            self.stats.bad_source_mac += 1;
            return false;
        }
        let mut learned = self.ports.get(&port).map_or(0, |p| p.macs);
        if learned >= cfg.max_macs_per_port || self.macs.len() >= cfg.max_macs {
            self.make_room(cfg, now);
            learned = self.ports.get(&port).map_or(0, |p| p.macs);
        }
        if learned >= cfg.max_macs_per_port || self.macs.len() >= cfg.max_macs {
            self.stats.mac_limit += 1;
            let (limit, what) = if learned >= cfg.max_macs_per_port {
                (Limit::MacPerPort, "this port")
            } else {
                (Limit::MacTotal, "the network")
            };
            if self.log.first(limit) {
                warn!(port, mac = %MacDisplay(mac), learned, "MAC table full for {what}: dropping frames from new source MACs until old ones age out (logged once)");
            }
            return false;
        }
        self.macs.insert(mac, MacEntry { port, seen: now });
        self.ports.entry(port).or_default().macs += 1;
        true
    }

    fn forget_mac(&mut self, mac: MacAddr) {
        if let Some(e) = self.macs.remove(&mac) {
            if let Some(p) = self.ports.get_mut(&e.port) {
                p.macs -= 1;
            }
        }
    }

    /// Whether a broadcast or multicast frame from `port` may be flooded to the other ports
    /// (at most `max_flood_rate` a second, in bursts of 50 ms worth: every flooded frame is a
    /// copy per port, made before the output queues' caps apply).
    pub fn admit_flood(&mut self, cfg: &NetConfig, now: Instant, port: PortId) -> bool {
        let p = self.ports.entry(port).or_default();
        let rate = cfg.max_flood_rate;
        let burst = (rate / 20).max(16);
        match p.flood_refilled {
            None => {
                p.flood_tokens = burst;
                p.flood_refilled = Some(now);
            }
            Some(last) => {
                let elapsed = now.saturating_duration_since(last);
                let earned = (elapsed.as_micros() * u128::from(rate) / 1_000_000) as u64;
                if earned > 0 {
                    p.flood_tokens =
                        (u64::from(p.flood_tokens) + earned).min(u64::from(burst)) as u32;
                    p.flood_refilled = Some(now);
                }
            }
        }
        if p.flood_tokens > 0 {
            p.flood_tokens -= 1;
            return true;
        }
        self.stats.flood_limit += 1;
        if self.log.first(Limit::FloodRate) {
            warn!(port, rate, "a port sends more broadcast or multicast frames than may be flooded: dropping the excess (logged once)");
        }
        false
    }

    /// Checks the source IPv4 address `ip` of a frame from `port` (source MAC `mac`, already
    /// admitted). `holder` says which MAC DHCP offered or leased the address to, if any; it
    /// is only asked for addresses the port did not use before (not on the per-frame path).
    pub fn admit_ip(
        &mut self,
        cfg: &NetConfig,
        port: PortId,
        mac: MacAddr,
        ip: Ipv4Addr,
        holder: impl FnOnce() -> Option<MacAddr>,
    ) -> Admission {
        if ip.is_unspecified() {
            return Admission::Known;
        }
        match self.addrs.get_mut(&ip) {
            Some(link) if link.port == port => {
                link.mac = mac;
                return Admission::Known;
            }
            Some(_) => return self.spoofed(port, ip),
            None => {}
        }
        if !cfg.contains(ip) || cfg.is_local(ip) || ip == cfg.network || ip == cfg.broadcast() {
            return self.spoofed(port, ip);
        }
        let leased = match holder() {
            Some(h) if self.port_of(&h) == Some(port) => true,
            Some(_) => return self.spoofed(port, ip),
            None => false,
        };
        let addrs = self.ports.entry(port).or_default();
        if !leased {
            if addrs.unleased >= cfg.max_ips_per_port {
                self.stats.address_limit += 1;
                if self.log.first(Limit::AddressesPerPort) {
                    warn!(port, %ip, limit = cfg.max_ips_per_port, "port uses as many addresses without a DHCP lease as it may: dropping frames from further ones (logged once)");
                }
                return Admission::Refused;
            }
            addrs.unleased += 1;
        }
        self.addrs.insert(ip, Link { port, mac });
        if leased {
            Admission::NewLeased
        } else {
            Admission::NewUnleased
        }
    }

    fn spoofed(&mut self, port: PortId, ip: Ipv4Addr) -> Admission {
        self.stats.spoofed_source += 1;
        if self.log.first(Limit::SourceAddress) {
            warn!(port, %ip, "dropping frames from a source address this port may not use (another guest's, or not on this network; logged once)");
        }
        Admission::Refused
    }

    /// Ages out MACs that sent nothing for `mac_age`. Run when a table is full rather than
    /// on a timer (an idle network never wakes up for it), and at most once a second, so a
    /// flood of new MACs does not cost a sweep per frame.
    fn make_room(&mut self, cfg: &NetConfig, now: Instant) {
        if self
            .last_sweep
            .is_some_and(|t| now.saturating_duration_since(t) < SWEEP_INTERVAL)
        {
            return;
        }
        self.last_sweep = Some(now);
        let old: Vec<MacAddr> = self
            .macs
            .iter()
            .filter(|(_, e)| now.saturating_duration_since(e.seen) >= cfg.mac_age)
            .map(|(m, _)| *m)
            .collect();
        self.stats.macs_aged_out += old.len() as u64;
        for mac in old {
            self.forget_mac(mac);
        }
    }
}

/// Shortest time between two sweeps of the MAC table.
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);
