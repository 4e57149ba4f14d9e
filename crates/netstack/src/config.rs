//! The shape of one user-mode network: addresses, limits and the address translation rules.

use crate::wire::MacAddr;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

/// Everything the stack needs to know about its network. `NetConfig::default()` is Lima's
/// default network: 192.168.5.0/24, host/gateway .2, DNS .3, first guest .15, MTU 1500.
#[derive(Debug, Clone)]
pub struct NetConfig {
    /// Network address of the subnet.
    pub network: Ipv4Addr,
    pub prefix_len: u8,
    /// The gateway: answers ARP, serves DHCP, and (with `host_loopback`) stands for the host's
    /// 127.0.0.1.
    pub gateway: Ipv4Addr,
    pub gateway_mac: MacAddr,
    /// Addresses whose port 53 is the embedded DNS server (Lima: .3; user-v2 also the gateway).
    pub dns_addrs: Vec<Ipv4Addr>,
    /// Where the embedded DNS server listens on the host, once started.
    pub dns_udp: Option<SocketAddrV4>,
    pub dns_tcp: Option<SocketAddrV4>,
    /// First address handed out by DHCP.
    pub dhcp_start: Ipv4Addr,
    /// Last address handed out by DHCP (inclusive).
    pub dhcp_end: Ipv4Addr,
    /// DNS servers announced by DHCP.
    pub dhcp_dns: Vec<Ipv4Addr>,
    pub static_leases: Vec<(Ipv4Addr, MacAddr)>,
    pub search_domains: Vec<String>,
    /// DHCP host name option, if any.
    pub hostname: Option<String>,
    pub lease_time: Duration,
    pub mtu: u16,
    /// Map the gateway address to the host's 127.0.0.1 for TCP and UDP.
    pub host_loopback: bool,
    /// Upper bounds that keep memory flat under floods.
    pub max_tcp_flows: usize,
    pub max_tcp_connecting: usize,
    pub max_udp_flows: usize,
    pub max_icmp_flows: usize,
    /// Fair shares, so that one guest cannot take what the others need: TCP flows per port,
    /// and half-open ones (host connect pending, or SYN-ACK not yet acknowledged) per port.
    pub max_tcp_flows_per_port: usize,
    pub max_tcp_half_open_per_port: usize,
    /// The most of the TCP flow table one port may fill, in percent: when descriptors limit
    /// the table (see the runtime's `fit_flow_tables`), a guest still leaves the rest to others.
    pub max_tcp_table_percent_per_port: u8,
    /// A connection still half-open after this long is reset: a SYN from a source that never
    /// completes the handshake holds a host socket for this long at most.
    pub tcp_syn_timeout: Duration,
    /// Switch table bounds: source MACs learned per port and in total; an entry unused for
    /// `mac_age` is forgotten.
    pub max_macs_per_port: usize,
    pub max_macs: usize,
    pub mac_age: Duration,
    /// Addresses a port may use without a DHCP lease (static configuration, the first frames
    /// before a lease); see `crate::guard`.
    pub max_ips_per_port: usize,
    /// DHCP offers one port may hold at once; a further DISCOVER withdraws its oldest.
    pub max_dhcp_offers_per_port: usize,
    /// Broadcast and multicast frames per second a port may have flooded to the others (in
    /// bursts of 50 ms worth): a broadcast storm from one guest cannot fill every other
    /// guest's link and queue.
    pub max_flood_rate: u32,
    pub udp_idle_timeout: Duration,
    /// Idle timeout for UDP flows that only ever talked to port 53.
    pub udp_dns_idle_timeout: Duration,
    /// Seed for initial sequence numbers and ephemeral ports.
    pub seed: u64,
}

/// Largest MTU limanet accepts, as pasta: a 65535-byte IPv4 packet minus headroom.
pub const MAX_MTU: u16 = 65520;
/// Smallest MTU that still carries a 576-byte IPv4 datagram.
pub const MIN_MTU: u16 = 576;

/// Why a configuration was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("prefix length {0} is not in 8..=30")]
    Prefix(u8),
    #[error("MTU {0} is not in {MIN_MTU}..={MAX_MTU}")]
    Mtu(u16),
    #[error("{what} {addr} is not inside {network}/{prefix}")]
    OutsideSubnet {
        what: &'static str,
        addr: Ipv4Addr,
        network: Ipv4Addr,
        prefix: u8,
    },
    #[error("DHCP range {0} - {1} is empty")]
    EmptyRange(Ipv4Addr, Ipv4Addr),
}

impl Default for NetConfig {
    fn default() -> Self {
        Self::for_subnet(Ipv4Addr::new(192, 168, 5, 0), 24)
    }
}

impl NetConfig {
    /// Lima's layout for any subnet: gateway .2, DNS .3, DHCP from .15 to the last host address.
    pub fn for_subnet(network: Ipv4Addr, prefix_len: u8) -> Self {
        let base = u32::from(network) & prefix_mask(prefix_len);
        let broadcast = base | !prefix_mask(prefix_len);
        let gateway = Ipv4Addr::from(base + 2);
        let dns = Ipv4Addr::from(base + 3);
        let g = gateway.octets();
        NetConfig {
            network: Ipv4Addr::from(base),
            prefix_len,
            gateway,
            // QEMU slirp's convention: 52:55 followed by the gateway address.
            gateway_mac: [0x52, 0x55, g[0], g[1], g[2], g[3]],
            dns_addrs: vec![dns],
            dns_udp: None,
            dns_tcp: None,
            dhcp_start: Ipv4Addr::from(base + 15),
            dhcp_end: Ipv4Addr::from(broadcast - 1),
            dhcp_dns: vec![dns],
            static_leases: Vec::new(),
            search_domains: Vec::new(),
            hostname: None,
            lease_time: Duration::from_secs(3600),
            mtu: 1500,
            host_loopback: true,
            max_tcp_flows: 65536,
            max_tcp_connecting: 1024,
            max_udp_flows: 4096,
            max_icmp_flows: 256,
            max_tcp_flows_per_port: 16384,
            max_tcp_half_open_per_port: 256,
            max_tcp_table_percent_per_port: 50,
            tcp_syn_timeout: Duration::from_secs(15),
            max_macs_per_port: 64,
            max_macs: 4096,
            mac_age: Duration::from_secs(300),
            max_ips_per_port: 4,
            max_dhcp_offers_per_port: 4,
            max_flood_rate: 2000,
            udp_idle_timeout: Duration::from_secs(180),
            udp_dns_idle_timeout: Duration::from_secs(10),
            seed: 0x6c69_6d61_6e65_7400,
        }
    }

    /// Lima's user-v2 layout: gateway .2 (also the DNS server), guests from .1 upward, lowest
    /// free address first, gvisor-tap-vsock's gateway MAC. Unlike the default network, .3 is
    /// not a DNS address here: Lima hands .3 to the second VM of a user-v2 network.
    pub fn user_v2(network: Ipv4Addr, prefix_len: u8) -> Self {
        let mut c = Self::for_subnet(network, prefix_len);
        let base = u32::from(c.network);
        c.gateway_mac = [0x5a, 0x94, 0xef, 0xe4, 0x0c, 0xdd];
        c.dns_addrs = vec![c.gateway];
        c.dhcp_dns = vec![c.gateway];
        c.dhcp_start = Ipv4Addr::from(base + 1);
        c
    }

    /// Checks the invariants the stack relies on.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(8..=30).contains(&self.prefix_len) {
            return Err(ConfigError::Prefix(self.prefix_len));
        }
        if !(MIN_MTU..=MAX_MTU).contains(&self.mtu) {
            return Err(ConfigError::Mtu(self.mtu));
        }
        let inside = |what, addr| {
            if self.contains(addr) {
                Ok(())
            } else {
                Err(ConfigError::OutsideSubnet {
                    what,
                    addr,
                    network: self.network,
                    prefix: self.prefix_len,
                })
            }
        };
        inside("gateway", self.gateway)?;
        inside("DHCP start", self.dhcp_start)?;
        inside("DHCP end", self.dhcp_end)?;
        for &(ip, _) in &self.static_leases {
            inside("static lease", ip)?;
        }
        if u32::from(self.dhcp_start) > u32::from(self.dhcp_end) {
            return Err(ConfigError::EmptyRange(self.dhcp_start, self.dhcp_end));
        }
        Ok(())
    }

    pub fn netmask(&self) -> Ipv4Addr {
        Ipv4Addr::from(prefix_mask(self.prefix_len))
    }

    pub fn contains(&self, addr: Ipv4Addr) -> bool {
        u32::from(addr) & prefix_mask(self.prefix_len) == u32::from(self.network)
    }

    /// The subnet's broadcast address.
    pub fn broadcast(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) | !prefix_mask(self.prefix_len))
    }

    /// Addresses the stack itself answers for (ARP, ICMP echo).
    pub fn is_local(&self, addr: Ipv4Addr) -> bool {
        addr == self.gateway || self.dns_addrs.contains(&addr)
    }

    /// Largest TCP payload in one frame.
    pub fn mss(&self) -> u16 {
        self.mtu - 40
    }

    /// Where a guest's TCP or UDP packet to `dst` goes on the host, or `None` when it must be
    /// refused (unroutable, or a local address with no service behind it).
    pub fn outbound(&self, dst: SocketAddrV4, tcp: bool) -> Option<SocketAddrV4> {
        let ip = *dst.ip();
        if self.dns_addrs.contains(&ip) && dst.port() == 53 {
            return if tcp { self.dns_tcp } else { self.dns_udp };
        }
        if ip == self.gateway {
            return self
                .host_loopback
                .then(|| SocketAddrV4::new(Ipv4Addr::LOCALHOST, dst.port()));
        }
        if self.is_local(ip)
            || self.contains(ip)
            || ip.is_loopback()
            || ip.is_multicast()
            || ip.is_broadcast()
            || ip.is_unspecified()
        {
            return None;
        }
        Some(dst)
    }

    /// The address a guest sees as the source of a UDP datagram that came from `src` on the
    /// host: the inverse of [`NetConfig::outbound`].
    pub fn inbound(&self, src: SocketAddrV4) -> Option<SocketAddrV4> {
        if Some(src) == self.dns_udp {
            return self.dns_addrs.first().map(|ip| SocketAddrV4::new(*ip, 53));
        }
        if src.ip().is_loopback() {
            return self
                .host_loopback
                .then(|| SocketAddrV4::new(self.gateway, src.port()));
        }
        Some(src)
    }
}

/// The netmask of a prefix length, as a host-order integer.
pub fn prefix_mask(prefix_len: u8) -> u32 {
    match prefix_len {
        0 => 0,
        n if n >= 32 => u32::MAX,
        n => u32::MAX << (32 - n),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lima_defaults() {
        let c = NetConfig::default();
        assert_eq!(c.gateway, Ipv4Addr::new(192, 168, 5, 2));
        assert_eq!(c.dns_addrs, vec![Ipv4Addr::new(192, 168, 5, 3)]);
        assert_eq!(c.dhcp_start, Ipv4Addr::new(192, 168, 5, 15));
        assert_eq!(c.dhcp_end, Ipv4Addr::new(192, 168, 5, 254));
        assert_eq!(c.netmask(), Ipv4Addr::new(255, 255, 255, 0));
        c.validate().unwrap();
        let v2 = NetConfig::user_v2(Ipv4Addr::new(192, 168, 104, 0), 24);
        assert_eq!(v2.gateway, Ipv4Addr::new(192, 168, 104, 2));
        assert_eq!(v2.dhcp_start, Ipv4Addr::new(192, 168, 104, 1));
    }

    #[test]
    fn address_translation() {
        let mut c = NetConfig {
            dns_udp: Some("127.0.0.1:5353".parse().unwrap()),
            ..NetConfig::default()
        };
        let gw = |port| SocketAddrV4::new(c.gateway, port);
        assert_eq!(
            c.outbound(gw(80), true),
            Some("127.0.0.1:80".parse().unwrap())
        );
        assert_eq!(
            c.outbound("192.168.5.3:53".parse().unwrap(), false),
            c.dns_udp
        );
        assert_eq!(c.outbound("192.168.5.3:53".parse().unwrap(), true), None);
        assert_eq!(c.outbound("192.168.5.3:80".parse().unwrap(), true), None);
        assert_eq!(c.outbound("127.0.0.1:80".parse().unwrap(), true), None);
        let ext: SocketAddrV4 = "203.0.113.2:443".parse().unwrap();
        assert_eq!(c.outbound(ext, true), Some(ext));
        assert_eq!(
            c.inbound("127.0.0.1:5353".parse().unwrap()),
            Some("192.168.5.3:53".parse().unwrap())
        );
        assert_eq!(c.inbound("127.0.0.1:8080".parse().unwrap()), Some(gw(8080)));
        c.host_loopback = false;
        assert_eq!(c.outbound(gw(80), true), None);
        assert_eq!(c.inbound("127.0.0.1:8080".parse().unwrap()), None);
    }
}
