//! DHCP for host and shared networks, answered inside the switch without I/O.
//!
//! A DHCP request from a VM (UDP to port 67) is taken off the switch and handed to netstack's
//! [`DhcpServer`]; the reply is framed here as coming from the gateway (the bridge's MAC and
//! address) and goes back to the port it came from only. Nothing else is answered here: ARP,
//! ICMP and DNS for the gateway are the host kernel's (the gateway address lives on the bridge).

use crate::options::Subnet;
use limanet_netstack::checksum;
use limanet_netstack::dhcp::{DhcpConfig, DhcpError, DhcpServer, Origin};
use limanet_netstack::wire::{
    self, Ethernet, Ipv4, MacAddr, Udp, ETHERTYPE_IPV4, ETH_HEADER_LEN, IPV4_HEADER_LEN, PROTO_UDP,
    UDP_HEADER_LEN,
};
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};
use tracing::debug;

const DHCP_SERVER_PORT: u16 = 67;
const DHCP_CLIENT_PORT: u16 = 68;

/// The payload of a DHCP client message, if `frame` is one (IPv4 UDP to port 67).
pub fn dhcp_request(frame: &[u8]) -> Option<(MacAddr, &[u8])> {
    let eth = Ethernet::parse(frame).ok()?;
    if eth.ethertype != ETHERTYPE_IPV4 {
        return None;
    }
    let ip = Ipv4::parse(eth.payload).ok()?;
    if ip.protocol != PROTO_UDP {
        return None;
    }
    let udp = Udp::parse(ip.payload).ok()?;
    (udp.dst_port == DHCP_SERVER_PORT && udp.src_port == DHCP_CLIENT_PORT)
        .then_some((eth.src, udp.payload))
}

/// The DHCP server of one host or shared network.
#[derive(Debug)]
pub struct Gateway {
    server: DhcpServer,
    gateway: Ipv4Addr,
    gateway_mac: MacAddr,
}

impl Gateway {
    /// Pool from gateway+1 to `dhcp_end`; router and DNS at the gateway.
    /// The gateway's (and bridge's) MAC address.
    pub fn mac(&self) -> MacAddr {
        self.gateway_mac
    }

    pub fn new(subnet: &Subnet, gateway_mac: MacAddr, mtu: u16) -> Result<Self, DhcpError> {
        let pool_start = Ipv4Addr::from(u32::from(subnet.gateway) + 1);
        let server = DhcpServer::new(DhcpConfig {
            server_ip: subnet.gateway,
            network: subnet.network(),
            prefix_len: subnet.prefix_len,
            router: subnet.gateway,
            dns_servers: vec![subnet.gateway],
            pool_start,
            pool_end: subnet.dhcp_end,
            reserved: vec![subnet.gateway],
            lease_time: Duration::from_secs(3600),
            mtu,
            ..DhcpConfig::default()
        })?;
        Ok(Gateway {
            server,
            gateway: subnet.gateway,
            gateway_mac,
        })
    }

    pub fn server(&self) -> &DhcpServer {
        &self.server
    }

    /// Answers one DHCP client message that came in on switch port `port`; returns the reply
    /// frame, if any. `mac_on_port` says whether a MAC was learned on that port (a VM cannot
    /// speak DHCP for another VM's MAC). Malformed messages are logged at debug level and get
    /// no reply; an exhausted pool is logged by the server.
    pub fn handle(
        &mut self,
        now: Instant,
        port: usize,
        mac_on_port: &dyn Fn(&MacAddr) -> bool,
        src_mac: MacAddr,
        payload: &[u8],
    ) -> Option<Vec<u8>> {
        let origin = Origin { port, mac_on_port };
        match self.server.handle_from(now, src_mac, payload, Some(origin)) {
            Ok(Some(reply)) => Some(udp_frame(
                reply.dst_mac,
                self.gateway_mac,
                self.gateway,
                reply.dst_ip,
                &reply.payload,
            )),
            Ok(None) => None,
            Err(e) => {
                debug!(error = %e, "bad DHCP message");
                None
            }
        }
    }
}

/// An Ethernet frame carrying a UDP datagram from the DHCP server port to the client port.
fn udp_frame(
    dst_mac: MacAddr,
    src_mac: MacAddr,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    payload: &[u8],
) -> Vec<u8> {
    let len = UDP_HEADER_LEN + payload.len();
    let mut f = vec![0u8; ETH_HEADER_LEN + IPV4_HEADER_LEN + UDP_HEADER_LEN];
    f.extend_from_slice(payload);
    wire::write_ethernet(&mut f, dst_mac, src_mac, ETHERTYPE_IPV4);
    wire::write_ipv4(&mut f[ETH_HEADER_LEN..], src, dst, PROTO_UDP, len);
    let u = &mut f[ETH_HEADER_LEN + IPV4_HEADER_LEN..];
    u[0..2].copy_from_slice(&DHCP_SERVER_PORT.to_be_bytes());
    u[2..4].copy_from_slice(&DHCP_CLIENT_PORT.to_be_bytes());
    u[4..6].copy_from_slice(&(len as u16).to_be_bytes());
    let seed = wire::pseudo_header_sum(src, dst, PROTO_UDP, len);
    let mut sum = checksum::finish(checksum::sum(u, seed));
    if sum == 0 {
        sum = 0xffff;
    }
    u[6..8].copy_from_slice(&sum.to_be_bytes());
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    const GW_MAC: MacAddr = [0x02, 0x4c, 0, 0, 0, 1];

    /// A minimal DHCPDISCOVER from `mac`, framed as a client sends it.
    fn discover(mac: MacAddr, xid: u32) -> Vec<u8> {
        let mut d = vec![0u8; 240];
        d[0] = 1; // BOOTREQUEST
        d[1] = 1;
        d[2] = 6;
        d[4..8].copy_from_slice(&xid.to_be_bytes());
        d[28..34].copy_from_slice(&mac);
        d[236..240].copy_from_slice(&[99, 130, 83, 99]);
        d.extend_from_slice(&[53, 1, 1, 255]);
        let mut f = udp_frame(
            [0xff; 6],
            mac,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::BROADCAST,
            &d,
        );
        // Swap the ports: client 68 -> server 67.
        let u = ETH_HEADER_LEN + IPV4_HEADER_LEN;
        f[u..u + 2].copy_from_slice(&68u16.to_be_bytes());
        f[u + 2..u + 4].copy_from_slice(&67u16.to_be_bytes());
        f
    }

    fn subnet(end: u8) -> Subnet {
        Subnet {
            gateway: Ipv4Addr::new(192, 168, 105, 1),
            dhcp_end: Ipv4Addr::new(192, 168, 105, end),
            prefix_len: 24,
        }
    }

    #[test]
    fn offers_from_the_gateway_and_the_pool_after_it() {
        let mut gw = Gateway::new(&subnet(254), GW_MAC, 1500).unwrap();
        let mac = [0x52, 0x55, 0x55, 1, 2, 3];
        let frame = discover(mac, 7);
        let (src, payload) = dhcp_request(&frame).expect("a DHCP request");
        assert_eq!(src, mac);
        let reply = gw
            .handle(Instant::now(), 1, &|m| *m == mac, src, payload)
            .expect("an offer");
        let eth = Ethernet::parse(&reply).unwrap();
        assert_eq!(eth.src, GW_MAC);
        let ip = Ipv4::parse(eth.payload).unwrap();
        assert_eq!(ip.src, Ipv4Addr::new(192, 168, 105, 1));
        let udp = Udp::parse(ip.payload).unwrap();
        assert_eq!((udp.src_port, udp.dst_port), (67, 68));
        // yiaddr: the first address after the gateway.
        assert_eq!(&udp.payload[16..20], &[192, 168, 105, 2]);
        // Replies are not mistaken for requests.
        assert!(dhcp_request(&reply).is_none());
    }

    #[test]
    fn an_exhausted_pool_gives_no_offer() {
        let mut gw = Gateway::new(&subnet(2), GW_MAC, 1500).unwrap();
        let now = Instant::now();
        let a = discover([0x52, 0, 0, 0, 0, 1], 1);
        let (src, p) = dhcp_request(&a).unwrap();
        assert!(gw.handle(now, 1, &|_| true, src, p).is_some());
        let b = discover([0x52, 0, 0, 0, 0, 2], 2);
        let (src, p) = dhcp_request(&b).unwrap();
        assert!(gw.handle(now, 2, &|_| true, src, p).is_none());
        // Garbage is not a crash either.
        assert!(gw.handle(now, 2, &|_| true, src, &[1, 2, 3]).is_none());
    }
}
