//! The forwarding decision of the daemon's learning switch, without I/O.
//!
//! socket_vmnet floods every frame to every VM (§5.4); this switch learns which port each source
//! MAC lives behind and sends known unicast to that port only. Broadcast, multicast and unknown
//! unicast are flooded. The table is bounded and entries age out, so a guest spraying random
//! source addresses cannot grow memory; a port's entries are forgotten when it closes.

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
    /// An entry not refreshed for this long is forgotten (the kernel bridge's default: 300 s).
    pub ageing: Duration,
}

impl Default for TableLimits {
    fn default() -> Self {
        TableLimits {
            max_entries: 4096,
            ageing: Duration::from_secs(300),
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    port: PortId,
    seen: Instant,
}

/// The MAC learning table.
#[derive(Debug)]
pub struct MacTable {
    entries: HashMap<MacAddr, Entry>,
    limits: TableLimits,
    /// Frames whose source could not be learnt because the table was full.
    pub unlearnt: u64,
}

impl MacTable {
    pub fn new(limits: TableLimits) -> Self {
        MacTable {
            entries: HashMap::new(),
            limits,
            unlearnt: 0,
        }
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
            e.port = port;
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
    }

    /// Drops entries older than the ageing time.
    pub fn expire(&mut self, now: Instant) {
        let ageing = self.limits.ageing;
        self.entries
            .retain(|_, e| now.duration_since(e.seen) < ageing);
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
}
