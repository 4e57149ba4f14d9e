//! The stack's only window on the outside world: host sockets, behind a trait.
//!
//! The runtime implements [`Host`] with real non-blocking sockets; tests implement it in memory.
//! The stack never blocks: every call returns at once, and readiness comes back through the
//! `Stack::on_*` methods.

use std::io;
use std::net::{IpAddr, SocketAddr};

/// Identifies a host socket. Chosen by the [`Host`] implementation.
pub type SockId = usize;

/// Host sockets as the stack uses them.
pub trait Host {
    /// Starts a non-blocking TCP connect (an IPv4 or IPv6 socket, by the family of `dst`).
    /// Completion is reported through `Stack::on_tcp_connected`; an immediate failure (no
    /// route, say) is returned here.
    fn tcp_connect(&mut self, dst: SocketAddr) -> io::Result<SockId>;

    /// Sends bytes; returns how many the kernel accepted (`WouldBlock` when none).
    fn tcp_send(&mut self, id: SockId, data: &[u8]) -> io::Result<usize>;

    /// Free space in the socket's send buffer: the window the guest may fill.
    fn tcp_send_space(&mut self, id: SockId) -> usize;

    /// Copies received bytes starting `offset` bytes past the first unconsumed byte into `bufs`
    /// without consuming them. `Ok(0)` means end of stream at that offset.
    fn tcp_peek(&mut self, id: SockId, offset: usize, bufs: &mut [&mut [u8]]) -> io::Result<usize>;

    /// Discards `len` received bytes (the guest acknowledged them).
    fn tcp_consume(&mut self, id: SockId, len: usize) -> io::Result<()>;

    /// Shuts down the sending side (the guest sent FIN).
    fn tcp_shutdown(&mut self, id: SockId);

    /// Closes the socket; with `reset`, the peer sees a RST instead of a FIN.
    fn tcp_close(&mut self, id: SockId, reset: bool);

    /// Opens an unconnected UDP socket on an ephemeral port. With `ipv6`, an IPv6 socket that
    /// also reaches IPv4 destinations (the embedded DNS server listens on IPv4 loopback).
    fn udp_open(&mut self, ipv6: bool) -> io::Result<SockId>;

    /// Sends one datagram.
    fn udp_send_to(&mut self, id: SockId, dst: SocketAddr, data: &[u8]) -> io::Result<()>;

    /// Opens an ICMP (or with `ipv6`, ICMPv6) echo socket: an unprivileged ping socket, or a
    /// raw one where that is refused.
    fn icmp_open(&mut self, ipv6: bool) -> io::Result<SockId>;

    /// Sends an echo request (ICMP or ICMPv6 header and data) to `dst`.
    fn icmp_send_to(&mut self, id: SockId, dst: IpAddr, packet: &[u8]) -> io::Result<()>;

    /// Closes a UDP or ICMP socket.
    fn close(&mut self, id: SockId);
}
