//! One user-mode network: a learning switch between ports (VMs, namespaces), and a gateway that
//! answers ARP, DHCP and ICMP echo and translates TCP, UDP and ICMP to host sockets.

use crate::config::{ConfigError, NetConfig};
use crate::dhcp::{DhcpConfig, DhcpServer};
use crate::host::{Host, SockId};
use crate::icmp::IcmpTable;
use crate::inspect::{CamEntry, FlowInfo, InboundState};
use crate::output::{Link, Output, PortId};
use crate::tcp::{FlowKey, TcpTable};
use crate::udp::UdpTable;
use crate::wire::{self, Arp, Ethernet, Ipv4, MacAddr, Tcp, Udp, WireError, BROADCAST_MAC};
use std::collections::{HashMap, HashSet};
use std::io;
use std::net::{Ipv4Addr, SocketAddrV4};
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
}

impl StackStats {
    /// Frames from guests that went nowhere: malformed, fragments, unknown destination.
    pub fn dropped(&self) -> u64 {
        self.malformed + self.fragments + self.unknown_destination
    }
}

/// Why a stack could not be built, or a forward not opened.
#[derive(Debug, thiserror::Error)]
pub enum StackError {
    #[error("invalid network configuration: {0}")]
    Config(#[from] ConfigError),
    #[error("invalid DHCP configuration: {0}")]
    Dhcp(#[from] crate::dhcp::DhcpError),
    #[error("no guest with address {0} is known yet")]
    UnknownGuest(Ipv4Addr),
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
    ports: HashSet<PortId>,
    next_port: PortId,
    /// Switch table: which port an Ethernet address was last seen on.
    macs: HashMap<MacAddr, PortId>,
    /// Guests by IPv4 address, learned from their frames.
    neighbors: HashMap<Ipv4Addr, Link>,
    pub stats: StackStats,
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
        })?;
        Ok(Stack {
            out: Output::new(cfg.gateway_mac),
            dhcp,
            tcp: TcpTable::new(cfg.seed),
            udp: UdpTable::new(),
            icmp: IcmpTable::new(),
            ports: HashSet::new(),
            next_port: 0,
            macs: HashMap::new(),
            neighbors: HashMap::new(),
            stats: StackStats::default(),
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

    pub fn tcp_stats(&self) -> crate::tcp::TcpStats {
        self.tcp.stats
    }

    pub fn udp_stats(&self) -> crate::udp::UdpStats {
        self.udp.stats
    }

    /// The switch's MAC table: which port each learned Ethernet address was last seen on.
    pub fn cam(&self) -> Vec<CamEntry> {
        let mut entries: Vec<CamEntry> = self
            .macs
            .iter()
            .map(|(&mac, &port)| CamEntry { mac, port })
            .collect();
        entries.sort_by_key(|e| (e.port, e.mac));
        entries
    }

    /// The TCP and UDP flow table.
    pub fn flows(&self) -> Vec<FlowInfo> {
        let mut flows = self.tcp.flow_list();
        flows.extend(self.udp.flow_list(self.cfg.gateway));
        flows
    }

    /// The state of a connection the host opened towards a guest on `sock` (see
    /// [`Stack::open_tcp_forward`]); `None` once it is refused, reset or closed.
    pub fn inbound_state(&self, sock: SockId) -> Option<(SocketAddrV4, InboundState)> {
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

    /// Disconnects a port: its connections are reset, its addresses forgotten.
    pub fn remove_port(&mut self, host: &mut impl Host, port: PortId) {
        self.ports.remove(&port);
        self.macs.retain(|_, p| *p != port);
        self.neighbors.retain(|_, l| l.port != port);
        self.tcp.port_closed(host, port);
        self.udp.port_closed(host, port);
        self.icmp.port_closed(host, port);
        self.out.queue.retain(|f| f.port != port);
    }

    /// Handles one Ethernet frame from a port. Malformed frames are counted and dropped.
    pub fn handle_frame(&mut self, host: &mut impl Host, now: Instant, port: PortId, frame: &[u8]) {
        self.stats.frames_in += 1;
        let eth = match Ethernet::parse(frame) {
            Ok(e) => e,
            Err(e) => return self.malformed(port, e),
        };
        if !wire::is_multicast(&eth.src) && self.macs.insert(eth.src, port) != Some(port) {
            debug!(port, mac = %MacDisplay(eth.src), "learned address");
        }
        if eth.dst == self.cfg.gateway_mac {
            self.local(host, now, port, &eth);
        } else if wire::is_multicast(&eth.dst) {
            self.flood(port, frame);
            if eth.dst == BROADCAST_MAC {
                self.local(host, now, port, &eth);
            }
        } else {
            match self.macs.get(&eth.dst) {
                Some(&to) if to != port => {
                    self.stats.switched += 1;
                    let mut f = self.out.buffer();
                    f.extend_from_slice(frame);
                    self.out.push(to, f);
                }
                _ => self.stats.unknown_destination += 1,
            }
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

    fn flood(&mut self, from: PortId, frame: &[u8]) {
        let others: Vec<PortId> = self.ports.iter().copied().filter(|&p| p != from).collect();
        for port in others {
            let mut f = self.out.buffer();
            f.extend_from_slice(frame);
            self.out.push(port, f);
        }
    }

    /// A frame for the gateway itself (or broadcast).
    fn local(&mut self, host: &mut impl Host, now: Instant, port: PortId, eth: &Ethernet) {
        let link = Link { port, mac: eth.src };
        match eth.ethertype {
            wire::ETHERTYPE_ARP => match Arp::parse(eth.payload) {
                Ok(arp) => self.arp(link, &arp),
                Err(e) => self.malformed(port, e),
            },
            wire::ETHERTYPE_IPV4 => match Ipv4::parse(eth.payload) {
                Ok(ip) => self.ipv4(host, now, link, eth.dst == BROADCAST_MAC, &ip),
                Err(e) => self.malformed(port, e),
            },
            _ => {}
        }
    }

    fn learn(&mut self, ip: Ipv4Addr, link: Link) {
        if self.cfg.contains(ip)
            && !self.cfg.is_local(ip)
            && ip != self.cfg.network
            && ip != self.cfg.broadcast()
        {
            self.neighbors.insert(ip, link);
        }
    }

    fn arp(&mut self, link: Link, arp: &Arp) {
        self.learn(arp.sender_ip, link);
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
        self.learn(ip.src, link);
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
                let src = SocketAddrV4::new(ip.src, udp.src_port);
                let dst = SocketAddrV4::new(ip.dst, udp.dst_port);
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
                    guest: SocketAddrV4::new(ip.src, seg.src_port),
                    remote: SocketAddrV4::new(ip.dst, seg.dst_port),
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
                    ip.src,
                    ip.dst,
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
        match self.dhcp.handle(now, link.mac, payload) {
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
        from: SocketAddrV4,
        data: &[u8],
    ) -> bool {
        self.udp
            .on_host_datagram(&mut self.out, &self.cfg, now, sock, from, data)
    }

    /// An ICMP message arrived on a host echo socket. False if `sock` is not one.
    pub fn on_icmp_message(&mut self, sock: SockId, from: Ipv4Addr, message: &[u8]) -> bool {
        self.icmp
            .on_host_message(&mut self.out, sock, from, message)
    }

    /// Where to reach a guest address: learned from its frames, else from its DHCP lease.
    fn link_of(&mut self, ip: Ipv4Addr) -> Result<Link, StackError> {
        if let Some(link) = self.neighbors.get(&ip) {
            return Ok(*link);
        }
        let mac = self
            .dhcp
            .leases()
            .into_iter()
            .find(|l| l.ip == ip)
            .map(|l| l.mac);
        if let Some(mac) = mac {
            if let Some(&port) = self.macs.get(&mac) {
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
        Err(StackError::UnknownGuest(ip))
    }

    /// A connection accepted on a TCP port-forward listener (`sock`, already adopted by the
    /// host) goes to `guest`.
    pub fn open_tcp_forward(
        &mut self,
        host: &mut impl Host,
        now: Instant,
        sock: SockId,
        guest: SocketAddrV4,
    ) -> Result<(), StackError> {
        let link = match self.link_of(*guest.ip()) {
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
        client: SocketAddrV4,
        guest: SocketAddrV4,
        data: &[u8],
    ) -> Result<(), StackError> {
        let link = self.link_of(*guest.ip())?;
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
            "network statistics"
        );
        if t.table_full > 0 {
            warn!(
                refused = t.table_full,
                "connections were refused because the flow table was full"
            );
        }
    }
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
