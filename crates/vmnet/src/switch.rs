//! The forwarding decision of the daemon's learning switch, without I/O.
//!
//! socket_vmnet floods every frame to every VM (§5.4); this switch learns which port each source
//! MAC lives behind and sends known unicast to that port only. Broadcast, multicast and unknown
//! unicast are flooded. The table is bounded and entries age out, so a guest spraying random
//! source addresses cannot grow memory; a port's entries are forgotten when it closes.
//!
//! Client ports are not trusted: they may not send from a reserved MAC (the bridge/gateway),
//! a multicast or zero MAC, nor take over a MAC fresh on another port, and each learns at most
//! `max_per_port` addresses. Such frames are dropped. The host port is trusted (in bridged mode
//! the whole LAN lives behind it).

use limanet_netstack::wire::{is_multicast, MacAddr};
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// A switch port (client connection or the TAP to the host kernel).
pub type PortId = usize;

/// Where a frame goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// To this one port.
    Port(PortId),
    /// To every port but the one it came from.
    Flood,
    /// Nowhere: the destination lives behind the port it came from.
    Drop,
}

/// Limits of the MAC table.
#[derive(Debug, Clone, Copy)]
pub struct TableLimits {
    pub max_entries: usize,
    /// Addresses one client port may own at once.
    pub max_per_port: usize,
    /// An entry not refreshed for this long is forgotten (the kernel bridge's default: 300 s).
    pub ageing: Duration,
}

impl Default for TableLimits {
    fn default() -> Self {
        TableLimits {
            max_entries: 4096,
            max_per_port: 64,
            ageing: Duration::from_secs(300),
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    port: PortId,
    seen: Instant,
}

/// What to do with a frame after looking at its source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Switch it.
    Accept,
    /// Drop it: a client used a reserved, multicast or zero source MAC.
    BadSource,
    /// Drop it: a client used a MAC fresh on another port.
    Stolen,
    /// Drop it: the client port already owns `max_per_port` addresses; `first` on the first
    /// such frame of this port (to log once).
    PortFull { first: bool },
}

/// Frames dropped by source checks.
#[derive(Debug, Default, Clone, Copy)]
pub struct Drops {
    pub bad_source: u64,
    pub stolen: u64,
    pub port_full: u64,
}

/// The MAC learning table.
#[derive(Debug)]
pub struct MacTable {
    entries: HashMap<MacAddr, Entry>,
    per_port: HashMap<PortId, usize>,
    port_full_logged: std::collections::HashSet<PortId>,
    reserved: Vec<MacAddr>,
    limits: TableLimits,
    /// Frames whose source could not be learnt because the table was full.
    pub unlearnt: u64,
    pub drops: Drops,
}

impl MacTable {
    pub fn new(limits: TableLimits) -> Self {
        MacTable {
            entries: HashMap::new(),
            per_port: HashMap::new(),
            port_full_logged: Default::default(),
            reserved: Vec::new(),
            limits,
            unlearnt: 0,
            drops: Drops::default(),
        }
    }

    /// Source MACs no client may use (the bridge's, the gateway's).
    pub fn reserve(&mut self, mac: MacAddr) {
        self.reserved.push(mac);
    }

    /// Checks the source of a frame from a client port and learns it; anything but
    /// [`Verdict::Accept`] means the frame must be dropped (and is counted).
    pub fn learn_client(&mut self, src: MacAddr, port: PortId, now: Instant) -> Verdict {
        if is_multicast(&src) || src == [0; 6] || self.reserved.contains(&src) {
            self.drops.bad_source += 1;
            return Verdict::BadSource;
        }
        if let Some(e) = self.entries.get(&src) {
            if e.port != port && now.duration_since(e.seen) < self.limits.ageing {
                self.drops.stolen += 1;
                return Verdict::Stolen;
            }
        } else if self.per_port.get(&port).copied().unwrap_or(0) >= self.limits.max_per_port {
            self.expire(now);
            if self.per_port.get(&port).copied().unwrap_or(0) >= self.limits.max_per_port {
                self.drops.port_full += 1;
                let first = self.port_full_logged.insert(port);
                return Verdict::PortFull { first };
            }
        }
        self.learn(src, port, now);
        Verdict::Accept
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Learns (or refreshes) `src` behind `port`. A MAC moving to another port follows it.
    pub fn learn(&mut self, src: MacAddr, port: PortId, now: Instant) {
        if is_multicast(&src) || src == [0; 6] {
            return;
        }
        if let Some(e) = self.entries.get_mut(&src) {
            if e.port != port {
                let old = e.port;
                e.port = port;
                Self::uncount(&mut self.per_port, old);
                *self.per_port.entry(port).or_insert(0) += 1;
            }
            e.seen = now;
            return;
        }
        if self.entries.len() >= self.limits.max_entries {
            self.expire(now);
            if self.entries.len() >= self.limits.max_entries {
                self.unlearnt += 1;
                return;
            }
        }
        self.entries.insert(src, Entry { port, seen: now });
        *self.per_port.entry(port).or_insert(0) += 1;
    }

    fn uncount(per_port: &mut HashMap<PortId, usize>, port: PortId) {
        if let Some(n) = per_port.get_mut(&port) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                per_port.remove(&port);
            }
        }
    }

    /// Where a frame to `dst` that arrived on `from` goes.
    pub fn route(&self, dst: MacAddr, from: PortId, now: Instant) -> Route {
        if is_multicast(&dst) {
            return Route::Flood;
        }
        match self.entries.get(&dst) {
            Some(e) if now.duration_since(e.seen) < self.limits.ageing => {
                if e.port == from {
                    Route::Drop
                } else {
                    Route::Port(e.port)
                }
            }
            _ => Route::Flood,
        }
    }

    /// The port `mac` was learned on, if any.
    pub fn port_of(&self, mac: &MacAddr) -> Option<PortId> {
        self.entries.get(mac).map(|e| e.port)
    }

    /// Forgets every address behind `port` (it closed).
    pub fn forget_port(&mut self, port: PortId) {
        self.entries.retain(|_, e| e.port != port);
        self.per_port.remove(&port);
        self.port_full_logged.remove(&port);
    }

    /// Drops entries older than the ageing time.
    pub fn expire(&mut self, now: Instant) {
        let ageing = self.limits.ageing;
        let per_port = &mut self.per_port;
        self.entries.retain(|_, e| {
            let keep = now.duration_since(e.seen) < ageing;
            if !keep {
                Self::uncount(per_port, e.port);
            }
            keep
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: MacAddr = [0x52, 0x55, 0, 0, 0, 1];
    const B: MacAddr = [0x52, 0x55, 0, 0, 0, 2];
    const BCAST: MacAddr = [0xff; 6];

    #[test]
    fn known_unicast_goes_to_its_port_only() {
        let now = Instant::now();
        let mut t = MacTable::new(TableLimits::default());
        assert_eq!(t.route(A, 1, now), Route::Flood);
        t.learn(A, 2, now);
        assert_eq!(t.route(A, 1, now), Route::Port(2));
        assert_eq!(t.route(A, 2, now), Route::Drop);
        assert_eq!(t.route(BCAST, 1, now), Route::Flood);
        assert_eq!(t.route([0x01, 0, 0x5e, 0, 0, 1], 1, now), Route::Flood);
        // The guest moved (reconnected on another port).
        t.learn(A, 3, now);
        assert_eq!(t.route(A, 1, now), Route::Port(3));
        t.forget_port(3);
        assert_eq!(t.route(A, 1, now), Route::Flood);
    }

    #[test]
    fn entries_age_out_and_the_table_is_bounded() {
        let now = Instant::now();
        let mut t = MacTable::new(TableLimits {
            max_entries: 2,
            max_per_port: 64,
            ageing: Duration::from_secs(10),
        });
        t.learn(A, 1, now);
        t.learn(B, 2, now);
        t.learn([0x52, 0, 0, 0, 0, 3], 3, now);
        assert_eq!(t.len(), 2);
        assert_eq!(t.unlearnt, 1);
        let later = now + Duration::from_secs(11);
        assert_eq!(t.route(A, 5, later), Route::Flood);
        t.learn([0x52, 0, 0, 0, 0, 3], 3, later);
        assert_eq!(t.route([0x52, 0, 0, 0, 0, 3], 1, later), Route::Port(3));
        assert_eq!(t.len(), 1);
        // Multicast and zero sources are never learnt.
        t.learn(BCAST, 4, later);
        t.learn([0; 6], 4, later);
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn clients_cannot_spoof_steal_or_fill_the_table() {
        const GW: MacAddr = [0x5a, 0x94, 0xef, 0, 0, 1];
        let now = Instant::now();
        let mut t = MacTable::new(TableLimits {
            max_entries: 100,
            max_per_port: 3,
            ageing: Duration::from_secs(10),
        });
        t.reserve(GW);
        // Reserved, multicast and zero sources are dropped and counted.
        assert_eq!(t.learn_client(GW, 1, now), Verdict::BadSource);
        assert_eq!(t.learn_client(BCAST, 1, now), Verdict::BadSource);
        assert_eq!(t.learn_client([0; 6], 1, now), Verdict::BadSource);
        assert_eq!(t.drops.bad_source, 3);
        assert_eq!(t.port_of(&GW), None);
        // A MAC fresh on port 1 cannot be taken by port 2, but moves once idle past the age.
        assert_eq!(t.learn_client(A, 1, now), Verdict::Accept);
        assert_eq!(
            t.learn_client(A, 2, now + Duration::from_secs(5)),
            Verdict::Stolen
        );
        assert_eq!(t.drops.stolen, 1);
        assert_eq!(t.port_of(&A), Some(1));
        let later = now + Duration::from_secs(11);
        assert_eq!(t.learn_client(A, 2, later), Verdict::Accept);
        assert_eq!(t.port_of(&A), Some(2));
        // Port 2 owns A; two more addresses fit, the next ones are dropped, flagged once.
        assert_eq!(t.learn_client(B, 2, later), Verdict::Accept);
        assert_eq!(
            t.learn_client([0x52, 0, 0, 0, 0, 3], 2, later),
            Verdict::Accept
        );
        assert_eq!(
            t.learn_client([0x52, 0, 0, 0, 0, 4], 2, later),
            Verdict::PortFull { first: true }
        );
        assert_eq!(
            t.learn_client([0x52, 0, 0, 0, 0, 5], 2, later),
            Verdict::PortFull { first: false }
        );
        assert_eq!(t.drops.port_full, 2);
        // Known addresses of the port keep working; other ports are unaffected.
        assert_eq!(t.learn_client(B, 2, later), Verdict::Accept);
        assert_eq!(
            t.learn_client([0x52, 0, 0, 0, 0, 6], 3, later),
            Verdict::Accept
        );
        // Closing the port frees its quota.
        t.forget_port(2);
        assert_eq!(
            t.learn_client([0x52, 0, 0, 0, 0, 4], 2, later),
            Verdict::Accept
        );
        // The trusted host port may still use any unicast source.
        t.learn(GW, 0, later);
        assert_eq!(t.port_of(&GW), Some(0));
    }
}
