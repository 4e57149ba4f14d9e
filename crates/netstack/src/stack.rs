//! One user-mode network: a learning switch between ports (VMs, namespaces), and a gateway that
//! answers ARP, DHCP and ICMP echo and translates TCP, UDP and ICMP to host sockets.

use crate::checksum;
use crate::config::{ConfigError, NetConfig};
use crate::dhcp::{DhcpConfig, DhcpServer, Origin};
use crate::guard::{Admission, Guard};
use crate::host::{Host, SockId};
use crate::icmp::IcmpTable;
use crate::inspect::{CamEntry, FlowInfo, InboundState};
use crate::limits::{Limit, LimitLog};
use crate::ndp::Ndp;
use crate::output::{Link, Output, PortId};
use crate::tcp::{FlowKey, TcpTable};
use crate::udp::UdpTable;
use crate::vnet::{self, VnetHeader};
use crate::wire::{self, Arp, Ethernet, Ipv4, MacAddr, Tcp, Udp, WireError, BROADCAST_MAC};
use crate::wire6::{self, Icmpv6, Ipv6};
use std::collections::HashSet;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::time::Instant;
use tracing::{debug, info, warn};

/// Counters for logs and the stats API.
#[derive(Debug, Default, Clone, Copy)]
pub struct StackStats {
    pub frames_in: u64,
    pub malformed: u64,
    pub fragments: u64,
    pub switched: u64,
    pub unknown_destination: u64,
    /// IPv4 packets dropped for a bad IPv4 header, TCP, UDP or ICMP checksum.
    pub bad_checksum: u64,
    /// Super-segments from ports with offloads cut into packets in software (for a port
    /// without offloads, or for the gateway's UDP).
    pub software_segmented: u64,
}

/// Why a stack could not be built, or a forward not opened.
#[derive(Debug, thiserror::Error)]
pub enum StackError {
    #[error("invalid network configuration: {0}")]
    Config(#[from] ConfigError),
    #[error("invalid DHCP configuration: {0}")]
    Dhcp(#[from] crate::dhcp::DhcpError),
    #[error("no guest with address {0} is known yet")]
    UnknownGuest(IpAddr),
}

/// A user-mode network. All methods return at once; see the crate docs for the calling
/// contract.
#[derive(Debug)]
pub struct Stack {
    cfg: NetConfig,
    /// Frames waiting to be written to ports. The runtime drains `out.queue` after every call
    /// and gives buffers back with [`Output::recycle`].
    pub out: Output,
    dhcp: DhcpServer,
    tcp: TcpTable,
    udp: UdpTable,
    icmp: IcmpTable,
    /// Neighbor Discovery, Router Advertisements and DHCPv6 (IPv6 networks).
    ndp: Ndp,
    ports: HashSet<PortId>,
    next_port: PortId,
    /// The switch table, and which port may use which source addresses.
    pub guard: Guard,
    pub stats: StackStats,
    log: LimitLog,
}

impl Stack {
    pub fn new(cfg: NetConfig) -> Result<Self, StackError> {
        cfg.validate()?;
        let mut reserved = vec![cfg.gateway];
        reserved.extend(cfg.dns_addrs.iter().copied());
        let dhcp = DhcpServer::new(DhcpConfig {
            server_ip: cfg.gateway,
            network: cfg.network,
            prefix_len: cfg.prefix_len,
            router: cfg.gateway,
            dns_servers: cfg.dhcp_dns.clone(),
            pool_start: cfg.dhcp_start,
            pool_end: cfg.dhcp_end,
            reserved,
            lease_time: cfg.lease_time,
            mtu: cfg.mtu,
            search_domains: cfg.search_domains.clone(),
            hostname: cfg.hostname.clone(),
            static_leases: cfg.static_leases.clone(),
            max_offers_per_port: cfg.max_dhcp_offers_per_port,
        })?;
        Ok(Stack {
            out: Output::new(cfg.gateway_mac),
            dhcp,
            tcp: TcpTable::new(cfg.seed),
            udp: UdpTable::new(),
            icmp: IcmpTable::new(),
            ndp: Ndp::new(),
            ports: HashSet::new(),
            next_port: 0,
            guard: Guard::new(),
            stats: StackStats::default(),
            log: LimitLog::default(),
            cfg,
        })
    }

    pub fn config(&self) -> &NetConfig {
        &self.cfg
    }

    /// Tells the stack where the embedded DNS server listens on the host.
    pub fn set_dns_server(&mut self, udp: SocketAddrV4, tcp: SocketAddrV4) {
        self.cfg.dns_udp = Some(udp);
        self.cfg.dns_tcp = Some(tcp);
    }

    /// DHCP counters.
    pub fn dhcp_stats(&self) -> crate::dhcp::DhcpStats {
        self.dhcp.stats
    }

    /// Neighbor Discovery and DHCPv6 counters.
    pub fn ndp_stats(&self) -> crate::ndp::NdpStats {
        self.ndp.stats
    }

    /// TCP counters.
    pub fn tcp_stats(&self) -> crate::tcp::TcpStats {
        self.tcp.stats
    }

    /// Current DHCP bindings.
    pub fn leases(&self) -> Vec<crate::dhcp::Lease> {
        self.dhcp.leases()
    }

    pub fn tcp_flows(&self) -> usize {
        self.tcp.len()
    }

    pub fn udp_flows(&self) -> usize {
        self.udp.len()
    }

    /// Frames from guests dropped so far: malformed, fragments, bad checksums, unknown
    /// destination, and those the guard refused (spoofed or foreign source addresses, limits).
    pub fn frames_dropped(&self) -> u64 {
        let s = &self.stats;
        let g = &self.guard.stats;
        s.malformed
            + s.fragments
            + s.unknown_destination
            + s.bad_checksum
            + g.mac_of_other_port
            + g.mac_limit
            + g.bad_source_mac
            + g.spoofed_source
            + g.address_limit
            + g.flood_limit
            + self.ndp.stats.guest_router_messages
    }

    pub fn udp_stats(&self) -> crate::udp::UdpStats {
        self.udp.stats
    }

    /// The switch's MAC table: which port each learned Ethernet address was last seen on.
    pub fn cam(&self) -> Vec<CamEntry> {
        let mut entries: Vec<CamEntry> = self
            .guard
            .macs()
            .map(|(mac, port)| CamEntry { mac, port })
            .collect();
        entries.sort_by_key(|e| (e.port, e.mac));
        entries
    }

    /// The TCP and UDP flow table.
    pub fn flows(&self) -> Vec<FlowInfo> {
        let mut flows = self.tcp.flow_list();
        flows.extend(self.udp.flow_list(&self.cfg));
        flows
    }

    /// The state of a connection the host opened towards a guest on `sock` (see
    /// [`Stack::open_tcp_forward`]); `None` once it is refused, reset or closed.
    pub fn inbound_state(&self, sock: SockId) -> Option<(SocketAddr, InboundState)> {
        self.tcp.inbound_state(sock)
    }

    /// A UDP forward listener is about to be closed: forget everything that would send
    /// through it.
    pub fn udp_forward_closed(&mut self, listener: SockId) {
        self.udp.forward_listener_closed(listener);
    }

    /// The ports connected to the switch.
    pub fn ports(&self) -> Vec<PortId> {
        let mut ports: Vec<PortId> = self.ports.iter().copied().collect();
        ports.sort_unstable();
        ports
    }

    /// Connects a new port (a VM or namespace) to the switch.
    pub fn add_port(&mut self) -> PortId {
        let port = self.next_port;
        self.next_port += 1;
        self.ports.insert(port);
        port
    }

    /// Declares that `port` takes and sends frames with a virtio-net header (a TAP opened with
    /// `IFF_VNET_HDR` and offloads): frames to it may carry partial checksums and TCP
    /// super-segments ([`crate::vnet`]), and frames from it come in through
    /// [`Stack::handle_offloaded_frame`].
    pub fn set_port_offloads(&mut self, port: PortId, on: bool) {
        self.out.set_offloads(port, on);
    }

    /// Disconnects a port: its connections are reset, its addresses forgotten.
    pub fn remove_port(&mut self, host: &mut impl Host, port: PortId) {
        self.ports.remove(&port);
        self.out.set_offloads(port, false);
        for ip in self.guard.remove_port(port) {
            self.dhcp.clear_in_use(ip);
        }
        self.tcp.port_closed(host, port);
        self.udp.port_closed(host, port);
        self.icmp.port_closed(host, port);
        self.ndp.port_closed(port);
        self.out.queue.retain(|f| f.port != port);
    }

    /// Handles one Ethernet frame from a port. Malformed frames are counted and dropped, and
    /// so are frames whose checksums are wrong or whose source the port may not use
    /// ([`crate::guard`]).
    pub fn handle_frame(&mut self, host: &mut impl Host, now: Instant, port: PortId, frame: &[u8]) {
        self.handle_frame_checked(host, now, port, frame, false);
    }

    /// [`Stack::handle_frame`] for a transport that may have verified the frame's checksums
    /// already (`checksums_verified`): then they are not summed again.
    pub fn handle_frame_checked(
        &mut self,
        host: &mut impl Host,
        now: Instant,
        port: PortId,
        frame: &[u8],
        checksums_verified: bool,
    ) {
        self.frame_in(host, now, port, frame, checksums_verified, None);
    }

    /// A frame from a port with offloads, with the virtio-net header it came with. Checksums
    /// the kernel marked partial (`NEEDS_CSUM`) or verified (`DATA_VALID`) are not checked; a
    /// TCP super-segment goes to the translator whole; frames switched to a port without
    /// offloads are cut and checksummed first.
    pub fn handle_offloaded_frame(
        &mut self,
        host: &mut impl Host,
        now: Instant,
        port: PortId,
        frame: &[u8],
        vnet: &VnetHeader,
    ) {
        let trusted = vnet.checksums_trusted();
        let vnet = (*vnet != VnetHeader::default()).then_some(vnet);
        self.frame_in(host, now, port, frame, trusted, vnet);
    }

    fn frame_in(
        &mut self,
        host: &mut impl Host,
        now: Instant,
        port: PortId,
        frame: &[u8],
        checksums_verified: bool,
        vnet: Option<&VnetHeader>,
    ) {
        self.stats.frames_in += 1;
        let eth = match Ethernet::parse(frame) {
            Ok(e) => e,
            Err(e) => return self.malformed(port, e),
        };
        if !self.guard.admit_mac(&self.cfg, now, port, eth.src)
            || !self.admit_source(now, port, &eth)
            || !self.admit_ipv6(now, port, &eth)
        {
            return;
        }
        if eth.dst == self.cfg.gateway_mac {
            self.local_offloaded(host, now, port, &eth, frame, checksums_verified, vnet);
        } else if wire::is_multicast(&eth.dst) {
            if self.guard.admit_flood(&self.cfg, now, port) {
                self.flood(port, frame, vnet);
            }
            // IPv6 multicast (33:33:...) carries Neighbor and Router Solicitations and DHCPv6.
            let ipv6_multicast = eth.dst[..2] == [0x33, 0x33] && self.cfg.ipv6.is_some();
            if eth.dst == BROADCAST_MAC || ipv6_multicast {
                self.local_offloaded(host, now, port, &eth, frame, checksums_verified, vnet);
            }
        } else {
            match self.guard.port_of(&eth.dst) {
                Some(to) if to != port => {
                    self.stats.switched += 1;
                    self.switch_to(to, frame, vnet);
                }
                _ => self.stats.unknown_destination += 1,
            }
        }
    }

    /// Copies a frame to another port, keeping its offload state if that port takes it, else
    /// making it an ordinary packet (or several).
    fn switch_to(&mut self, to: PortId, frame: &[u8], vnet: Option<&VnetHeader>) {
        match vnet {
            Some(v) if self.out.offloads(to) => {
                let mut f = self.out.buffer();
                f.extend_from_slice(frame);
                self.out.push_offloaded(to, f, *v);
            }
            Some(v) if !v.is_plain() => {
                let out = &mut self.out;
                let mut cut = Vec::new();
                let done = vnet::to_plain(frame, v, || out.buffer(), |f| cut.push(f));
                if v.gso() != vnet::GSO_NONE {
                    self.stats.software_segmented += 1;
                }
                match done {
                    Ok(()) => cut.into_iter().for_each(|f| self.out.push(to, f)),
                    Err(e) => {
                        cut.into_iter().for_each(|f| self.out.recycle(f));
                        self.malformed(to, e)
                    }
                }
            }
            _ => {
                let mut f = self.out.buffer();
                f.extend_from_slice(frame);
                self.out.push(to, f);
            }
        }
    }

    /// [`Stack::local`] for a frame that may be a super-segment: TCP goes to the translator
    /// whole (it takes segments of any size), UDP is cut into its datagrams first.
    #[allow(clippy::too_many_arguments)]
    fn local_offloaded(
        &mut self,
        host: &mut impl Host,
        now: Instant,
        port: PortId,
        eth: &Ethernet,
        frame: &[u8],
        checksums_verified: bool,
        vnet: Option<&VnetHeader>,
    ) {
        let Some(v) = vnet.filter(|v| v.gso() == vnet::GSO_UDP_L4) else {
            return self.local(host, now, port, eth, checksums_verified);
        };
        self.stats.software_segmented += 1;
        let out = &mut self.out;
        let mut cut = Vec::new();
        if let Err(e) = vnet::segment(frame, v, || out.buffer(), |f| cut.push(f)) {
            cut.into_iter().for_each(|f| self.out.recycle(f));
            return self.malformed(port, e);
        }
        for f in cut {
            if let Ok(eth) = Ethernet::parse(&f) {
                self.local(host, now, port, &eth, true);
            }
            self.out.recycle(f);
        }
    }

    /// Checks the source address of an IPv4 or ARP frame (the anti-spoofing rule in
    /// [`crate::guard`]); other frames pass.
    fn admit_source(&mut self, now: Instant, port: PortId, eth: &Ethernet) -> bool {
        let ip = match eth.ethertype {
            wire::ETHERTYPE_IPV4 if eth.payload.len() >= wire::IPV4_HEADER_LEN => {
                let p = eth.payload;
                Ipv4Addr::new(p[12], p[13], p[14], p[15])
            }
            wire::ETHERTYPE_ARP => match Arp::parse(eth.payload) {
                Ok(arp) if arp.sender_mac != eth.src => {
                    self.guard.stats.spoofed_source += 1;
                    return false;
                }
                Ok(arp) => arp.sender_ip,
                Err(_) => return true, // Counted as malformed later.
            },
            _ => return true,
        };
        let dhcp = &self.dhcp;
        let holder = || dhcp.holder(now, ip);
        match self.guard.admit_ip(&self.cfg, port, eth.src, ip, holder) {
            Admission::Known | Admission::NewLeased => true,
            Admission::NewUnleased => {
                debug!(port, %ip, mac = %MacDisplay(eth.src), "guest uses an address without a lease");
                self.dhcp.mark_in_use(now, ip);
                true
            }
            Admission::Refused => false,
        }
    }

    /// Checks an IPv6 frame before the switch or the gateway sees it: it must parse (bounded
    /// extension-header chain), must not be a Router Advertisement or Redirect (only the gateway
    /// is a router) nor a Neighbor Advertisement for another port's address, and its source
    /// must be one the port may use ([`Guard::admit_ip6`]). Fragments are switched between
    /// guests (receivers ignore fragmented Neighbor Discovery, RFC 6980, so one cannot hide a
    /// Router Advertisement) and dropped, counted, at the gateway. Other frames pass.
    fn admit_ipv6(&mut self, now: Instant, port: PortId, eth: &Ethernet) -> bool {
        if eth.ethertype != wire::ETHERTYPE_IPV6 {
            return true;
        }
        let p = eth.payload;
        if p.len() < wire6::IPV6_HEADER_LEN || p[0] >> 4 != 6 {
            self.malformed(port, WireError::Malformed);
            return false;
        }
        let src = wire6::v6_at(p, 8);
        match Ipv6::parse(p) {
            Ok(ip) if ip.next_header == wire6::PROTO_ICMPV6 => {
                if !self.admit_icmpv6(port, &ip) {
                    return false;
                }
            }
            Ok(_) | Err(WireError::Fragment) => {}
            Err(e) => {
                self.malformed(port, e);
                return false;
            }
        }
        self.guard.admit_ip6(&self.cfg, now, port, eth.src, src)
    }

    /// The router guard of [`Stack::admit_ipv6`] for an ICMPv6 message from a guest.
    fn admit_icmpv6(&mut self, port: PortId, ip: &Ipv6) -> bool {
        match ip.payload.first() {
            Some(&wire6::ND_ROUTER_ADVERT) | Some(&wire6::ND_REDIRECT) => {
                self.ndp.stats.guest_router_messages += 1;
                if self.log.first(Limit::GuestRouterMessage) {
                    warn!(port, src = %ip.src, "dropping Router Advertisements and Redirects from a guest: only the gateway routes (logged once; counted)");
                }
                false
            }
            // A Neighbor Advertisement for an address another port holds would take it over
            // in the neighbors' caches.
            Some(&wire6::ND_NEIGHBOR_ADVERT) => {
                let target = ip
                    .payload
                    .get(4..)
                    .and_then(|b| wire6::NeighborAdvert::parse(b).ok())
                    .map(|na| na.target);
                if target.is_some_and(|t| self.guard.port_of6(&t).is_some_and(|p| p != port)) {
                    self.guard.stats.spoofed_source += 1;
                    return false;
                }
                true
            }
            _ => true,
        }
    }

    /// Call after a batch of frames: sends the ACKs the batch earned.
    pub fn end_batch(&mut self, host: &mut impl Host) {
        self.tcp.flush_acks(host, &mut self.out, &self.cfg);
    }

    fn malformed(&mut self, port: PortId, error: WireError) {
        if error == WireError::Fragment {
            self.stats.fragments += 1;
        } else {
            self.stats.malformed += 1;
        }
        debug!(port, %error, "dropping frame");
    }

    fn flood(&mut self, from: PortId, frame: &[u8], vnet: Option<&VnetHeader>) {
        let others: Vec<PortId> = self.ports.iter().copied().filter(|&p| p != from).collect();
        for port in others {
            self.switch_to(port, frame, vnet);
        }
    }

    /// A frame for the gateway itself (or broadcast).
    fn local(
        &mut self,
        host: &mut impl Host,
        now: Instant,
        port: PortId,
        eth: &Ethernet,
        checksums_verified: bool,
    ) {
        let link = Link { port, mac: eth.src };
        match eth.ethertype {
            wire::ETHERTYPE_ARP => match Arp::parse(eth.payload) {
                Ok(arp) => self.arp(link, &arp),
                Err(e) => self.malformed(port, e),
            },
            wire::ETHERTYPE_IPV4 => match Ipv4::parse(eth.payload) {
                Ok(ip) => {
                    if !checksums_verified && !checksums_valid(&ip) {
                        return self.bad_checksum(port, IpAddr::V4(ip.src), ip.protocol);
                    }
                    self.ipv4(host, now, link, eth.dst == BROADCAST_MAC, &ip)
                }
                Err(e) => self.malformed(port, e),
            },
            wire::ETHERTYPE_IPV6 if self.cfg.ipv6.is_some() => match Ipv6::parse(eth.payload) {
                Ok(ip) => {
                    if !checksums_verified && !checksums6_valid(&ip) {
                        return self.bad_checksum(port, IpAddr::V6(ip.src), ip.next_header);
                    }
                    self.ipv6(host, now, link, &ip, eth.payload)
                }
                Err(e) => self.malformed(port, e),
            },
            _ => {}
        }
    }

    fn bad_checksum(&mut self, port: PortId, src: IpAddr, protocol: u8) {
        self.stats.bad_checksum += 1;
        if self.log.first(Limit::Checksum) {
            warn!(port, %src, protocol, "dropping packets with a bad checksum (logged once; counted in the statistics)");
        }
    }

    /// An IPv6 packet for the gateway, or for a multicast group the gateway is in.
    /// `packet` is the whole IPv6 packet, for an ICMPv6 error quoting it.
    fn ipv6(&mut self, host: &mut impl Host, now: Instant, link: Link, ip: &Ipv6, packet: &[u8]) {
        let Some(v6) = self.cfg.ipv6.as_ref() else {
            return;
        };
        self.ndp.arm(now);
        let multicast = ip.dst.is_multicast();
        match ip.next_header {
            wire6::PROTO_ICMPV6 => {
                let icmp = match Icmpv6::parse(ip.payload) {
                    Ok(m) => m,
                    Err(e) => return self.malformed(link.port, e),
                };
                // Neighbor Discovery only from the link itself (RFC 4861 6.1, 7.1).
                let nd = (wire6::ND_ROUTER_SOLICIT..=wire6::ND_REDIRECT).contains(&icmp.kind);
                if nd {
                    if ip.hop_limit == 255 && icmp.code == 0 {
                        self.ndp.on_guest_icmpv6(
                            &mut self.out,
                            &self.cfg,
                            v6,
                            now,
                            link,
                            ip.src,
                            &icmp,
                        );
                    } else {
                        self.ndp.stats.malformed += 1;
                    }
                    return;
                }
                if icmp.kind != wire6::ICMPV6_ECHO_REQUEST || multicast {
                    return;
                }
                let gateway_ll = crate::ndp::gateway_link_local(&self.cfg);
                let local = v6.is_local(ip.dst) || ip.dst == gateway_ll;
                self.icmp.on_guest_message(
                    host,
                    &mut self.out,
                    &self.cfg,
                    now,
                    link,
                    IpAddr::V6(ip.src),
                    IpAddr::V6(ip.dst),
                    local,
                    ip.payload,
                );
            }
            wire::PROTO_UDP => {
                let udp = match Udp::parse(ip.payload) {
                    Ok(u) => u,
                    Err(e) => return self.malformed(link.port, e),
                };
                let src = SocketAddrV6::new(ip.src, udp.src_port, 0, 0);
                if udp.dst_port == crate::dhcp6::SERVER_PORT
                    && (ip.dst == crate::dhcp6::ALL_SERVERS
                        || v6.is_local(ip.dst)
                        || ip.dst == crate::ndp::gateway_link_local(&self.cfg))
                {
                    self.ndp
                        .on_dhcp6(&mut self.out, &self.cfg, v6, link, src, udp.payload);
                    return;
                }
                if multicast || !v6.contains(ip.src) {
                    return;
                }
                let dst = SocketAddrV6::new(ip.dst, udp.dst_port, 0, 0);
                let unreachable = self.udp.on_guest_datagram(
                    host,
                    &self.cfg,
                    now,
                    link,
                    SocketAddr::V6(src),
                    SocketAddr::V6(dst),
                    udp.payload,
                );
                if unreachable && self.ndp.may_send_error(link.port, now) {
                    // The host has no IPv6 route there: say so at once (RFC 4443 3.1, code 0
                    // "no route to destination"), quoting as much of the packet as fits in
                    // the minimum MTU.
                    let quoted = &packet[..packet.len().min(1280 - 48)];
                    let mut body = vec![0u8; 4];
                    body.extend_from_slice(quoted);
                    let gateway = v6.gateway;
                    self.out
                        .icmpv6(link, gateway, ip.src, wire6::ICMPV6_DEST_UNREACHABLE, &body);
                }
            }
            wire::PROTO_TCP => {
                // Translated connections need a routable guest address (not link-local).
                if multicast || !v6.contains(ip.src) {
                    return;
                }
                let seg = match Tcp::parse(ip.payload) {
                    Ok(s) => s,
                    Err(e) => return self.malformed(link.port, e),
                };
                let key = FlowKey {
                    guest: SocketAddr::V6(SocketAddrV6::new(ip.src, seg.src_port, 0, 0)),
                    remote: SocketAddr::V6(SocketAddrV6::new(ip.dst, seg.dst_port, 0, 0)),
                };
                self.tcp
                    .on_guest_segment(host, &mut self.out, &self.cfg, now, link, key, &seg);
            }
            other => debug!(
                protocol = other,
                "dropping IPv6 packet of unsupported protocol"
            ),
        }
    }

    fn arp(&mut self, link: Link, arp: &Arp) {
        if arp.operation == wire::ARP_REQUEST && self.cfg.is_local(arp.target_ip) {
            let reply = Arp {
                operation: wire::ARP_REPLY,
                sender_mac: self.cfg.gateway_mac,
                sender_ip: arp.target_ip,
                target_mac: arp.sender_mac,
                target_ip: arp.sender_ip,
            };
            let mut f = self.out.buffer();
            f.resize(wire::ETH_HEADER_LEN, 0);
            wire::write_ethernet(&mut f, link.mac, self.cfg.gateway_mac, wire::ETHERTYPE_ARP);
            reply.emit(&mut f);
            self.out.push(link.port, f);
        }
    }

    fn ipv4(&mut self, host: &mut impl Host, now: Instant, link: Link, broadcast: bool, ip: &Ipv4) {
        match ip.protocol {
            wire::PROTO_UDP => {
                let udp = match Udp::parse(ip.payload) {
                    Ok(u) => u,
                    Err(e) => return self.malformed(link.port, e),
                };
                if udp.dst_port == 67
                    && (broadcast || ip.dst == self.cfg.gateway || ip.dst.is_broadcast())
                {
                    return self.dhcp(now, link, udp.payload);
                }
                if broadcast || ip.dst.is_broadcast() || ip.dst == self.cfg.broadcast() {
                    return;
                }
                let src = SocketAddr::V4(SocketAddrV4::new(ip.src, udp.src_port));
                let dst = SocketAddr::V4(SocketAddrV4::new(ip.dst, udp.dst_port));
                self.udp
                    .on_guest_datagram(host, &self.cfg, now, link, src, dst, udp.payload);
            }
            _ if broadcast => {}
            wire::PROTO_TCP => {
                let seg = match Tcp::parse(ip.payload) {
                    Ok(s) => s,
                    Err(e) => return self.malformed(link.port, e),
                };
                let key = FlowKey {
                    guest: SocketAddr::V4(SocketAddrV4::new(ip.src, seg.src_port)),
                    remote: SocketAddr::V4(SocketAddrV4::new(ip.dst, seg.dst_port)),
                };
                self.tcp
                    .on_guest_segment(host, &mut self.out, &self.cfg, now, link, key, &seg);
            }
            wire::PROTO_ICMP => {
                self.icmp.on_guest_message(
                    host,
                    &mut self.out,
                    &self.cfg,
                    now,
                    link,
                    IpAddr::V4(ip.src),
                    IpAddr::V4(ip.dst),
                    self.cfg.is_local(ip.dst),
                    ip.payload,
                );
            }
            other => debug!(
                protocol = other,
                "dropping IP packet of unsupported protocol"
            ),
        }
    }

    fn dhcp(&mut self, now: Instant, link: Link, payload: &[u8]) {
        // Addresses this port uses without a lease are kept from other clients, not from its
        // own: a guest that kept its address while limanet restarted renews it.
        let own = self.guard.addresses_of(link.port);
        for &ip in &own {
            self.dhcp.clear_in_use(ip);
        }
        let guard = &self.guard;
        let mac_on_port = |mac: &MacAddr| guard.port_of(mac) == Some(link.port);
        let origin = Origin {
            port: link.port,
            mac_on_port: &mac_on_port,
        };
        let result = self.dhcp.handle_from(now, link.mac, payload, Some(origin));
        for ip in own {
            if self.dhcp.holder(now, ip).is_none() {
                self.dhcp.mark_in_use(now, ip);
            }
        }
        match result {
            Ok(Some(reply)) => {
                let to = Link {
                    port: link.port,
                    mac: reply.dst_mac,
                };
                let src = SocketAddrV4::new(self.cfg.gateway, 67);
                let dst = SocketAddrV4::new(reply.dst_ip, 68);
                self.out.udp(to, src, dst, &reply.payload);
            }
            Ok(None) => {}
            Err(e) => {
                self.stats.malformed += 1;
                debug!(error = %e, mac = %MacDisplay(link.mac), "bad DHCP message");
            }
        }
    }

    /// A host TCP socket finished connecting.
    pub fn on_tcp_connected(
        &mut self,
        host: &mut impl Host,
        now: Instant,
        sock: SockId,
        result: io::Result<()>,
    ) {
        self.tcp
            .on_connected(host, &mut self.out, &self.cfg, now, sock, result);
    }

    /// A host TCP socket is readable; `peer_closed` when the peer's FIN has arrived (after all
    /// of its data).
    pub fn on_tcp_readable(
        &mut self,
        host: &mut impl Host,
        now: Instant,
        sock: SockId,
        peer_closed: bool,
    ) {
        self.tcp
            .on_readable(host, &mut self.out, &self.cfg, now, sock, peer_closed);
    }

    /// A host TCP socket is writable again.
    pub fn on_tcp_writable(&mut self, host: &mut impl Host, sock: SockId) {
        self.tcp.on_writable(host, &mut self.out, sock, &self.cfg);
    }

    /// A host TCP socket failed (reset by peer, error).
    pub fn on_tcp_error(&mut self, host: &mut impl Host, sock: SockId) {
        self.tcp.on_host_error(host, &mut self.out, &self.cfg, sock);
    }

    /// A datagram arrived on a host UDP flow socket. False if `sock` is not one.
    pub fn on_udp_datagram(
        &mut self,
        now: Instant,
        sock: SockId,
        from: impl Into<SocketAddr>,
        data: &[u8],
    ) -> bool {
        self.udp
            .on_host_datagram(&mut self.out, &self.cfg, now, sock, from.into(), data)
    }

    /// An ICMP or ICMPv6 message arrived on a host echo socket. False if `sock` is not one.
    pub fn on_icmp_message(
        &mut self,
        sock: SockId,
        from: impl Into<IpAddr>,
        message: &[u8],
    ) -> bool {
        self.icmp
            .on_host_message(&mut self.out, sock, from.into(), message)
    }

    /// Where to reach a guest address: learned from its frames, else (IPv4) from its DHCP
    /// lease, (IPv6) the lease of the IPv4 address of a guest limanet configured with it, or
    /// the MAC in an EUI-64 address.
    fn link_of(&mut self, ip: IpAddr) -> Result<Link, StackError> {
        match ip {
            IpAddr::V4(v4) => self.link_of4(v4),
            IpAddr::V6(v6) => {
                if let Some(link) = self.guard.link_of6(&v6) {
                    return Ok(link);
                }
                let configured = self.cfg.ipv6.as_ref().and_then(|net| {
                    net.static_guests
                        .iter()
                        .find(|(_, a)| *a == v6)
                        .map(|(v4, _)| *v4)
                });
                if let Some(v4) = configured {
                    return self.link_of4(v4);
                }
                // An EUI-64 address: the MAC is in it (see `guest_ipv6_of`).
                wire6::mac_of_eui64(v6)
                    .and_then(|mac| {
                        Some(Link {
                            port: self.guard.port_of(&mac)?,
                            mac,
                        })
                    })
                    .ok_or(StackError::UnknownGuest(ip))
            }
        }
    }

    /// The IPv6 address of the guest that holds IPv4 address `ip`: where a forward whose host
    /// side is IPv6 reaches that guest. The in-prefix address it used most recently, else (a
    /// guest that has not sent from one yet) the SLAAC address its MAC gives by EUI-64, which
    /// Linux guests form by default.
    pub fn guest_ipv6_of(&mut self, ip: Ipv4Addr) -> Option<Ipv6Addr> {
        self.cfg.ipv6.as_ref()?;
        let link = self.link_of4(ip).ok()?;
        let v6 = self.cfg.ipv6.as_ref()?;
        let used = self
            .guard
            .addresses6_of(link.port)
            .into_iter()
            .filter(|(a, _)| v6.contains(*a))
            .max_by_key(|(_, seen)| *seen)
            .map(|(a, _)| a);
        let configured = || {
            v6.static_guests
                .iter()
                .find(|(v4, _)| *v4 == ip)
                .map(|(_, a)| *a)
        };
        used.or_else(configured).or_else(|| {
            let eui = u128::from(wire6::link_local_from_mac(link.mac)) & u128::from(u64::MAX);
            Some(Ipv6Addr::from(u128::from(v6.prefix) | eui))
        })
    }

    /// The IPv6 addresses guests on `port` have sent from (link-local and in-prefix), most
    /// recently used first.
    pub fn ipv6_addresses_of(&self, port: PortId) -> Vec<Ipv6Addr> {
        let mut held = self.guard.addresses6_of(port);
        held.sort_by_key(|(_, seen)| std::cmp::Reverse(*seen));
        held.into_iter().map(|(a, _)| a).collect()
    }

    /// The in-prefix IPv6 address the guest holding IPv4 address `ip` used most recently, or
    /// the one limanet configured on it: what the DNS answers for the guest's name (unlike
    /// [`Stack::guest_ipv6_of`], no guess, and no ARP request for an unknown guest).
    pub fn learned_guest_ipv6_of(&self, ip: Ipv4Addr) -> Option<Ipv6Addr> {
        let v6 = self.cfg.ipv6.as_ref()?;
        let port = match self.guard.link_of(&ip) {
            Some(link) => Some(link.port),
            None => self
                .dhcp
                .mac_of(ip)
                .and_then(|mac| self.guard.port_of(&mac)),
        };
        let used = port.and_then(|port| {
            self.guard
                .addresses6_of(port)
                .into_iter()
                .filter(|(a, _)| v6.contains(*a))
                .max_by_key(|(_, seen)| *seen)
                .map(|(a, _)| a)
        });
        used.or_else(|| {
            v6.static_guests
                .iter()
                .find(|(v4, _)| *v4 == ip)
                .map(|(_, a)| *a)
        })
    }

    fn link_of4(&mut self, ip: Ipv4Addr) -> Result<Link, StackError> {
        if let Some(link) = self.guard.link_of(&ip) {
            return Ok(link);
        }
        if let Some(mac) = self.dhcp.mac_of(ip) {
            if let Some(port) = self.guard.port_of(&mac) {
                return Ok(Link { port, mac });
            }
        }
        // Ask, so the next attempt knows.
        let request = Arp {
            operation: wire::ARP_REQUEST,
            sender_mac: self.cfg.gateway_mac,
            sender_ip: self.cfg.gateway,
            target_mac: [0; 6],
            target_ip: ip,
        };
        let ports: Vec<PortId> = self.ports.iter().copied().collect();
        for port in ports {
            let mut f = self.out.buffer();
            f.resize(wire::ETH_HEADER_LEN, 0);
            wire::write_ethernet(
                &mut f,
                BROADCAST_MAC,
                self.cfg.gateway_mac,
                wire::ETHERTYPE_ARP,
            );
            request.emit(&mut f);
            self.out.push(port, f);
        }
        Err(StackError::UnknownGuest(IpAddr::V4(ip)))
    }

    /// A connection accepted on a TCP port-forward listener (`sock`, already adopted by the
    /// host) goes to `guest` (IPv4 or IPv6).
    pub fn open_tcp_forward(
        &mut self,
        host: &mut impl Host,
        now: Instant,
        sock: SockId,
        guest: impl Into<SocketAddr>,
    ) -> Result<(), StackError> {
        let guest = guest.into();
        let link = match self.link_of(guest.ip()) {
            Ok(l) => l,
            Err(e) => {
                host.tcp_close(sock, true);
                return Err(e);
            }
        };
        self.tcp
            .open_forward(host, &mut self.out, &self.cfg, now, sock, link, guest);
        Ok(())
    }

    /// A datagram from `client` arrived on UDP port-forward listener `listener`, for `guest`.
    pub fn udp_forward(
        &mut self,
        now: Instant,
        listener: SockId,
        client: impl Into<SocketAddr>,
        guest: impl Into<SocketAddr>,
        data: &[u8],
    ) -> Result<(), StackError> {
        let (client, guest) = (client.into(), guest.into());
        let link = self.link_of(guest.ip())?;
        self.udp.on_forward_datagram(
            &mut self.out,
            &self.cfg,
            now,
            listener,
            client,
            link,
            guest,
            data,
        );
        Ok(())
    }

    /// The earliest time [`Stack::on_timeout`] has work to do.
    pub fn poll_timeout(&mut self) -> Option<Instant> {
        [
            self.tcp.poll_timeout(),
            self.udp.poll_timeout(),
            self.icmp.poll_timeout(),
            self.ndp.poll_timeout(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Runs timers due at `now`.
    pub fn on_timeout(&mut self, host: &mut impl Host, now: Instant) {
        self.tcp.on_timeout(host, &mut self.out, &self.cfg, now);
        self.udp.on_timeout(host, &self.cfg, now);
        self.icmp.on_timeout(host, now);
        if let Some(v6) = self.cfg.ipv6.as_ref() {
            let ports = self.ports();
            self.ndp
                .on_timeout(&mut self.out, &self.cfg, v6, now, &ports);
        }
    }

    /// Logs a one-line summary of the counters.
    pub fn log_stats(&self) {
        let s = &self.stats;
        let t = &self.tcp.stats;
        let u = &self.udp.stats;
        info!(
            frames_in = s.frames_in,
            malformed = s.malformed,
            switched = s.switched,
            software_segmented = s.software_segmented,
            tcp_flows = self.tcp.len(),
            tcp_opened = t.opened,
            tcp_refused = t.refused,
            tcp_retransmits = t.retransmits,
            tcp_guest_out_of_order = t.guest_out_of_order,
            tcp_guest_duplicate = t.guest_duplicate,
            tcp_guest_blocked = t.guest_blocked,
            tcp_partial_sends = t.partial_sends,
            udp_flows = self.udp.len(),
            udp_evicted = u.evicted,
            fragments = s.fragments,
            "network statistics"
        );
        let n = &self.ndp.stats;
        if self.cfg.ipv6.is_some() {
            info!(
                router_adverts_sent = n.router_adverts_sent,
                router_solicits = n.router_solicits,
                neighbor_solicits_answered = n.neighbor_solicits_answered,
                neighbor_solicits_limited = n.neighbor_solicits_limited,
                guest_router_messages = n.guest_router_messages,
                dhcp6_replies = n.dhcp6_replies,
                icmpv6_errors_limited = n.errors_limited,
                nd_malformed = n.malformed,
                "IPv6 neighbor discovery statistics"
            );
        }
        let g = &self.guard.stats;
        let d = &self.dhcp.stats;
        let refused = g.mac_of_other_port
            + g.mac_limit
            + g.bad_source_mac
            + g.spoofed_source
            + g.address_limit
            + g.flood_limit
            + s.bad_checksum
            + t.port_limit
            + t.syn_timeouts
            + d.foreign_client
            + d.offers_withdrawn
            + d.offers_reclaimed
            + d.exhausted;
        if refused > 0 {
            warn!(
                macs = self.guard.mac_count(),
                mac_of_other_port = g.mac_of_other_port,
                mac_limit = g.mac_limit,
                bad_source_mac = g.bad_source_mac,
                spoofed_source = g.spoofed_source,
                address_limit = g.address_limit,
                flood_limit = g.flood_limit,
                bad_checksum = s.bad_checksum,
                tcp_port_limit = t.port_limit,
                tcp_syn_timeouts = t.syn_timeouts,
                dhcp_foreign_client = d.foreign_client,
                dhcp_offers_withdrawn = d.offers_withdrawn,
                dhcp_offers_reclaimed = d.offers_reclaimed,
                dhcp_exhausted = d.exhausted,
                "limits that protect the network have bitten"
            );
        }
        if t.table_full > 0 {
            warn!(
                refused = t.table_full,
                "connections were refused because the flow table was full"
            );
        }
    }
}

/// Whether the IPv4 header checksum and the TCP, UDP or ICMP checksum of `ip` are right.
/// Other protocols are not checked beyond the header. A UDP checksum of zero means "none".
fn checksums_valid(ip: &Ipv4) -> bool {
    if checksum::finish(checksum::sum(ip.header, 0)) != 0 {
        return false;
    }
    let seed = |proto| wire::pseudo_header_sum(ip.src, ip.dst, proto, ip.payload.len());
    let sum = match ip.protocol {
        wire::PROTO_TCP => checksum::sum(ip.payload, seed(wire::PROTO_TCP)),
        wire::PROTO_UDP => {
            if ip.payload.get(6..8) == Some(&[0, 0]) {
                return true;
            }
            checksum::sum(ip.payload, seed(wire::PROTO_UDP))
        }
        wire::PROTO_ICMP => checksum::sum(ip.payload, 0),
        _ => return true,
    };
    checksum::finish(sum) == 0
}

/// Whether the TCP, UDP or ICMPv6 checksum of `ip` is right (IPv6 has no header checksum;
/// a UDP checksum of zero is invalid in IPv6, RFC 8200 8.1).
fn checksums6_valid(ip: &Ipv6) -> bool {
    let proto = ip.next_header;
    if !matches!(
        proto,
        wire::PROTO_TCP | wire::PROTO_UDP | wire6::PROTO_ICMPV6
    ) {
        return true;
    }
    let seed = wire::ip_pseudo_header_sum(
        IpAddr::V6(ip.src),
        IpAddr::V6(ip.dst),
        proto,
        ip.payload.len(),
    );
    checksum::finish(checksum::sum(ip.payload, seed)) == 0
}

/// Formats a MAC address as `aa:bb:cc:dd:ee:ff`.
pub struct MacDisplay(pub MacAddr);

impl std::fmt::Display for MacDisplay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}
