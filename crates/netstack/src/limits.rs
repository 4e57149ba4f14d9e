//! The limits that keep one guest from taking what the others need, and their log: each limit
//! is logged once, the first time it bites (a flood must not turn into a flood of log lines);
//! how often it bit is in the counters of the periodic statistics line.

/// A limit that can bite.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    TcpTable,
    TcpPerPort,
    TcpHalfOpenPerPort,
    TcpSynTimeout,
    MacOfOtherPort,
    MacPerPort,
    MacTotal,
    SourceAddress,
    AddressesPerPort,
    Checksum,
    FloodRate,
    DhcpForeignClient,
    DhcpOffersPerPort,
    DhcpPoolExhausted,
    GuestRouterMessage,
    Ipv6SourceAddress,
    NeighborSolicitRate,
}

/// Which limits have been logged already.
#[derive(Debug, Default, Clone, Copy)]
pub struct LimitLog {
    fired: u32,
}

impl LimitLog {
    /// True the first time `limit` bites: the caller logs it then.
    pub fn first(&mut self, limit: Limit) -> bool {
        let bit = 1u32 << (limit as u32);
        let first = self.fired & bit == 0;
        self.fired |= bit;
        first
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_limit_is_reported_once() {
        let mut log = LimitLog::default();
        assert!(log.first(Limit::TcpPerPort));
        assert!(!log.first(Limit::TcpPerPort));
        assert!(log.first(Limit::DhcpPoolExhausted));
        assert!(!log.first(Limit::DhcpPoolExhausted));
    }
}
