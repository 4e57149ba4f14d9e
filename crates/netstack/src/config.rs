//! The shape of one user-mode network: addresses, limits and the address translation rules.

use crate::wire::MacAddr;
use crate::wire6::IPV6_MIN_MTU;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::time::Duration;

/// The IPv6 side of a dual-stack network: one /64 (SLAAC needs exactly 64 bits of interface
/// identifier on Ethernet) whose well-known addresses mirror IPv4's: gateway `::2` (the host's
/// `[::1]`), DNS `::3`, first guest `::15`.
///
/// The default prefix is a ULA derived from the IPv4 subnet so it is predictable and readable:
/// `fd00:A:B:C::/64` where A.B.C are the first three IPv4 octets written as if they were hex
/// digits, so 192.168.5.0/24 gets `fd00:192:168:5::/64` (gateway `fd00:192:168:5::2`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ipv6Net {
    /// The /64 prefix (host bits zero).
    pub prefix: Ipv6Addr,
    pub gateway: Ipv6Addr,
    /// Addresses whose port 53 is the embedded DNS server (user-v2: the gateway).
    pub dns_addrs: Vec<Ipv6Addr>,
    /// The address that mirrors IPv4's first guest (.15): not handed out by SLAAC, kept for
    /// stateful configuration and forwards.
    pub first_guest: Ipv6Addr,
    /// Guests whose IPv6 address limanet configured itself (namespace TAPs: the IPv4
    /// address's mirror, see [`Ipv6Net::mirror_of`]), by IPv4 address: where forwards and the
    /// DNS find them before they have sent anything over IPv6.
    pub static_guests: Vec<(Ipv4Addr, Ipv6Addr)>,
}

impl Ipv6Net {
    /// Prefix length: always /64 (see the type's docs).
    pub const PREFIX_LEN: u8 = 64;

    /// Lima's layout inside `prefix` (its host bits are ignored).
    pub fn for_prefix(prefix: Ipv6Addr) -> Self {
        let base = u128::from(prefix) & !u128::from(u64::MAX);
        // `::15` reads like IPv4's .15 (it is 0x15).
        Ipv6Net {
            prefix: Ipv6Addr::from(base),
            gateway: Ipv6Addr::from(base | 2),
            dns_addrs: vec![Ipv6Addr::from(base | 3)],
            first_guest: Ipv6Addr::from(base | 0x15),
            static_guests: Vec::new(),
        }
    }

    /// The IPv6 address that mirrors a guest's IPv4 address: its last octet read as hex digits
    /// in the host bits (192.168.5.15 → `<prefix>::15`, .16 → `::16`), as `first_guest` mirrors
    /// .15.
    pub fn mirror_of(&self, ip: Ipv4Addr) -> Ipv6Addr {
        let d = u128::from(ip.octets()[3]);
        let hexlike = (d / 100) << 8 | (d / 10 % 10) << 4 | (d % 10);
        Ipv6Addr::from(u128::from(self.prefix) | hexlike)
    }

    /// The default ULA prefix for an IPv4 subnet (see the type's docs).
    pub fn default_for(network: Ipv4Addr) -> Self {
        let hexlike = |octet: u8| {
            let d = u16::from(octet);
            (d / 100) << 8 | (d / 10 % 10) << 4 | (d % 10)
        };
        let o = network.octets();
        Self::for_prefix(Ipv6Addr::new(
            0xfd00,
            hexlike(o[0]),
            hexlike(o[1]),
            hexlike(o[2]),
            0,
            0,
            0,
            0,
        ))
    }

    pub fn contains(&self, ip: Ipv6Addr) -> bool {
        u128::from(ip) >> 64 == u128::from(self.prefix) >> 64
    }

    /// Addresses the stack itself answers for (Neighbor Discovery, echo).
    pub fn is_local(&self, ip: Ipv6Addr) -> bool {
        ip == self.gateway || self.dns_addrs.contains(&ip)
    }
}

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
    /// The IPv6 side of the network; `None` makes it IPv4-only (`--no-ipv6`).
    pub ipv6: Option<Ipv6Net>,
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
    #[error("MTU {0} is below IPv6's minimum of {IPV6_MIN_MTU} (RFC 8200); raise --mtu or turn IPv6 off with --no-ipv6")]
    Ipv6Mtu(u16),
    #[error("IPv6 prefix {0} is not a unicast /64 prefix (not loopback, link-local, multicast or IPv4-mapped)")]
    Ipv6Prefix(Ipv6Addr),
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
            ipv6: Some(Ipv6Net::default_for(Ipv4Addr::from(base))),
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
        if let Some(v6) = &mut c.ipv6 {
            v6.dns_addrs = vec![v6.gateway];
        }
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
        if let Some(v6) = &self.ipv6 {
            if self.mtu < IPV6_MIN_MTU {
                return Err(ConfigError::Ipv6Mtu(self.mtu));
            }
            let p = v6.prefix;
            if p.is_loopback()
                || p.is_multicast()
                || p.is_unspecified()
                || is_link_local6(p)
                || p.to_ipv4_mapped().is_some()
            {
                return Err(ConfigError::Ipv6Prefix(p));
            }
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

    /// Largest TCP payload in one frame of the family of `ip` (IPv6's header is 20 bytes
    /// longer).
    pub fn mss_for(&self, ip: IpAddr) -> u16 {
        match ip {
            IpAddr::V4(_) => self.mss(),
            IpAddr::V6(_) => self.mtu - 60,
        }
    }

    /// The gateway's address in the family of `ip` (`None`: IPv6 is off).
    pub fn gateway_for(&self, ip: IpAddr) -> Option<IpAddr> {
        match ip {
            IpAddr::V4(_) => Some(IpAddr::V4(self.gateway)),
            IpAddr::V6(_) => self.ipv6.as_ref().map(|v6| IpAddr::V6(v6.gateway)),
        }
    }

    /// Whether the stack itself answers for `ip`, in either family.
    pub fn is_local_ip(&self, ip: IpAddr) -> bool {
        match ip {
            IpAddr::V4(a) => self.is_local(a),
            IpAddr::V6(a) => self.ipv6.as_ref().is_some_and(|v6| v6.is_local(a)),
        }
    }

    /// [`NetConfig::outbound`] for either family. IPv6: the gateway is the host's `[::1]`,
    /// the DNS addresses' port 53 the embedded DNS server; link-local, multicast, loopback,
    /// IPv4-mapped and in-prefix destinations are refused (a mapped address would be a way
    /// around the IPv4 rules, e.g. to the host's 127.0.0.1).
    pub fn outbound_ip(&self, dst: SocketAddr, tcp: bool) -> Option<SocketAddr> {
        let dst = match dst {
            SocketAddr::V4(d) => return self.outbound(d, tcp).map(SocketAddr::V4),
            SocketAddr::V6(d) => d,
        };
        let v6 = self.ipv6.as_ref()?;
        let ip = *dst.ip();
        if v6.dns_addrs.contains(&ip) && dst.port() == 53 {
            return if tcp { self.dns_tcp } else { self.dns_udp }.map(SocketAddr::V4);
        }
        if ip == v6.gateway {
            return self
                .host_loopback
                .then(|| SocketAddr::V6(SocketAddrV6::new(Ipv6Addr::LOCALHOST, dst.port(), 0, 0)));
        }
        if v6.is_local(ip)
            || v6.contains(ip)
            || ip.is_loopback()
            || ip.is_multicast()
            || ip.is_unspecified()
            || is_link_local6(ip)
            || ip.to_ipv4_mapped().is_some()
            || ip
                .to_ipv4()
                .is_some_and(|v4| v4.is_unspecified() || v4.is_loopback())
        {
            return None;
        }
        Some(SocketAddr::V6(SocketAddrV6::new(ip, dst.port(), 0, 0)))
    }

    /// [`NetConfig::inbound`] for either family: the address a guest whose own address is of
    /// the family of `guest` sees as the source of a datagram from `src` on the host.
    pub fn inbound_ip(&self, src: SocketAddr, guest: IpAddr) -> Option<SocketAddr> {
        // Dual-stack host sockets report IPv4 peers as mapped addresses.
        let src = match src {
            SocketAddr::V6(s) => match s.ip().to_ipv4_mapped() {
                Some(v4) => SocketAddr::V4(SocketAddrV4::new(v4, s.port())),
                None => src,
            },
            v4 => v4,
        };
        let v6 = match (guest, &self.ipv6) {
            (IpAddr::V4(_), _) => {
                return match src {
                    SocketAddr::V4(s) => self.inbound(s).map(SocketAddr::V4),
                    SocketAddr::V6(_) => None,
                }
            }
            (IpAddr::V6(_), None) => return None,
            (IpAddr::V6(_), Some(v6)) => v6,
        };
        let port = src.port();
        let to6 = |ip| Some(SocketAddr::V6(SocketAddrV6::new(ip, port, 0, 0)));
        match src {
            SocketAddr::V4(s) if Some(s) == self.dns_udp => {
                let dns = v6.dns_addrs.first()?;
                Some(SocketAddr::V6(SocketAddrV6::new(*dns, 53, 0, 0)))
            }
            SocketAddr::V4(_) => None,
            SocketAddr::V6(s) if s.ip().is_loopback() => {
                if self.host_loopback {
                    to6(v6.gateway)
                } else {
                    None
                }
            }
            SocketAddr::V6(s) => to6(*s.ip()),
        }
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

/// fe80::/10 (`Ipv6Addr::is_unicast_link_local` is not stable on every toolchain we build on).
pub fn is_link_local6(ip: Ipv6Addr) -> bool {
    ip.segments()[0] & 0xffc0 == 0xfe80
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

    #[test]
    fn ipv6_layout_and_translation() {
        let mut c = NetConfig {
            dns_udp: Some("127.0.0.1:5353".parse().unwrap()),
            ..NetConfig::default()
        };
        let v6 = c.ipv6.clone().unwrap();
        assert_eq!(v6.prefix, "fd00:192:168:5::".parse::<Ipv6Addr>().unwrap());
        assert_eq!(v6.gateway, "fd00:192:168:5::2".parse::<Ipv6Addr>().unwrap());
        assert_eq!(
            v6.dns_addrs,
            vec!["fd00:192:168:5::3".parse::<Ipv6Addr>().unwrap()]
        );
        assert_eq!(
            v6.first_guest,
            "fd00:192:168:5::15".parse::<Ipv6Addr>().unwrap()
        );
        assert_eq!(v6.mirror_of(Ipv4Addr::new(192, 168, 5, 15)), v6.first_guest);
        assert_eq!(
            v6.mirror_of(Ipv4Addr::new(192, 168, 5, 203)),
            "fd00:192:168:5::203".parse::<Ipv6Addr>().unwrap()
        );
        let out_of = |c: &NetConfig, s: &str| c.outbound_ip(s.parse().unwrap(), true);
        let out = |s: &str| out_of(&c, s);
        assert_eq!(
            out("[fd00:192:168:5::2]:80"),
            Some("[::1]:80".parse().unwrap())
        );
        assert_eq!(
            out("[2001:db8::1]:443"),
            Some("[2001:db8::1]:443".parse().unwrap())
        );
        for refused in [
            "[::1]:80",
            "[fe80::1]:80",
            "[ff02::1]:80",
            "[::ffff:127.0.0.1]:80",
            "[::127.0.0.1]:80",
            "[fd00:192:168:5::15]:80",
            "[fd00:192:168:5::3]:80",
        ] {
            assert_eq!(out(refused), None, "{refused}");
        }
        assert_eq!(
            c.outbound_ip("[fd00:192:168:5::3]:53".parse().unwrap(), false),
            Some("127.0.0.1:5353".parse().unwrap())
        );
        let guest6: IpAddr = "fd00:192:168:5::99".parse().unwrap();
        assert_eq!(
            c.inbound_ip("[::ffff:127.0.0.1]:5353".parse().unwrap(), guest6),
            Some("[fd00:192:168:5::3]:53".parse().unwrap())
        );
        assert_eq!(
            c.inbound_ip("[::1]:8080".parse().unwrap(), guest6),
            Some("[fd00:192:168:5::2]:8080".parse().unwrap())
        );
        c.host_loopback = false;
        assert_eq!(out_of(&c, "[fd00:192:168:5::2]:80"), None);
        assert_eq!(c.inbound_ip("[::1]:8080".parse().unwrap(), guest6), None);
        c.mtu = 1279;
        assert_eq!(c.validate(), Err(ConfigError::Ipv6Mtu(1279)));
        c.ipv6 = None;
        c.validate().unwrap();
        assert_eq!(out_of(&c, "[2001:db8::1]:443"), None);
        let v2 = NetConfig::user_v2(Ipv4Addr::new(192, 168, 104, 0), 24);
        let v2 = v2.ipv6.unwrap();
        assert_eq!(v2.dns_addrs, vec![v2.gateway]);
        assert_eq!(
            v2.gateway,
            "fd00:192:168:104::2".parse::<Ipv6Addr>().unwrap()
        );
    }
}
