//! Events of the host sockets the netstack translates to: TCP connects completing, data and
//! room on TCP sockets, accepted forward connections, and datagrams (UDP, ICMP, UDP forwards).

use super::Network;
use crate::sockets::{ForwardGuest, Kind, TcpStatus};
use crate::sys;
use mio::event::Event;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::time::Instant;
use tracing::{debug, warn};

impl Network {
    pub(super) fn host_event(&mut self, now: Instant, id: usize, event: &Event) {
        let Some(entry) = self.host.get(id) else {
            return;
        };
        match entry.kind {
            Kind::Tcp { .. } => self.tcp_event(now, id, event),
            Kind::Udp { .. } | Kind::Icmp { .. } | Kind::UdpForward { .. } => {
                self.drain_datagrams(now, id)
            }
            Kind::TcpForward { guest } => loop {
                let Some(entry) = self.host.get(id) else {
                    return;
                };
                match sys::accept(entry.fd.as_raw_fd()) {
                    Ok(fd) => match self.host.insert_tcp(fd, false) {
                        Ok(sock) => {
                            let Some(guest) = self.forward_target(guest) else {
                                warn!(?guest, "no IPv6 address of the forward's guest known yet, refusing connection");
                                limanet_netstack::Host::tcp_close(&mut self.host, sock, true);
                                continue;
                            };
                            if let Err(e) =
                                self.stack
                                    .open_tcp_forward(&mut self.host, now, sock, guest)
                            {
                                warn!(error = %e, %guest, "cannot forward connection");
                            }
                        }
                        Err(e) => warn!(error = %e, "cannot register forwarded connection"),
                    },
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                    Err(e) => {
                        warn!(error = %e, "accept on forward listener failed");
                        return;
                    }
                }
            },
        }
    }

    /// An event on a translated TCP connection's host socket.
    fn tcp_event(&mut self, now: Instant, id: usize, event: &Event) {
        match self.host.tcp_status(id, event) {
            None | Some(TcpStatus::Connecting) => {}
            Some(TcpStatus::ConnectDone(result)) => {
                let ok = result.is_ok();
                self.stack.on_tcp_connected(&mut self.host, now, id, result);
                if ok && event.is_readable() {
                    let closed = event.is_read_closed();
                    self.stack.on_tcp_readable(&mut self.host, now, id, closed);
                }
            }
            Some(TcpStatus::Failed) => self.stack.on_tcp_error(&mut self.host, id),
            Some(TcpStatus::Up) => {
                if event.is_writable() {
                    self.stack.on_tcp_writable(&mut self.host, id);
                }
                if event.is_readable() || event.is_read_closed() {
                    let closed = event.is_read_closed();
                    self.stack.on_tcp_readable(&mut self.host, now, id, closed);
                }
            }
        }
    }

    fn drain_datagrams(&mut self, now: Instant, id: usize) {
        loop {
            let Some(entry) = self.host.get(id) else {
                return;
            };
            let fd = entry.fd.as_raw_fd();
            let (n, from) = match sys::recv_from(fd, &mut self.scratch) {
                Ok(r) => r,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // ICMP errors queued on the socket (port unreachable...): skip them.
                    debug!(error = %e, "host socket receive error");
                    continue;
                }
            };
            let data = &self.scratch[..n];
            let Some(entry) = self.host.get(id) else {
                return;
            };
            match entry.kind {
                Kind::Udp { .. } => {
                    self.stack.on_udp_datagram(now, id, from, data);
                }
                Kind::Icmp { raw } => {
                    let message = if raw {
                        let ihl = data.first().map_or(0, |b| usize::from(b & 0x0f) * 4);
                        data.get(ihl..).unwrap_or_default()
                    } else {
                        data
                    };
                    self.stack.on_icmp_message(id, from.ip(), message);
                }
                Kind::UdpForward { guest } => {
                    let guest = match guest {
                        ForwardGuest::Addr(a) => Some(a),
                        ForwardGuest::Ipv6Of(v4) => self
                            .stack
                            .guest_ipv6_of(*v4.ip())
                            .map(|ip| SocketAddr::new(IpAddr::V6(ip), v4.port())),
                    };
                    let Some(guest) = guest else {
                        debug!(
                            "no IPv6 address of the forward's guest known yet, dropping datagram"
                        );
                        continue;
                    };
                    if let Err(e) = self.stack.udp_forward(now, id, from, guest, data) {
                        debug!(error = %e, "cannot forward datagram");
                    }
                }
                _ => return,
            }
        }
    }
}
