//! The stack's only window on the outside world: host sockets, behind a trait.
//!
//! The runtime implements [`Host`] with real non-blocking sockets; tests implement it in memory.
//! The stack never blocks: every call returns at once, and readiness comes back through the
//! `Stack::on_*` methods.

use std::io;
use std::net::{Ipv4Addr, SocketAddrV4};

/// Identifies a host socket. Chosen by the [`Host`] implementation.
pub type SockId = usize;

/// Host sockets as the stack uses them.
pub trait Host {
    /// Starts a non-blocking TCP connect. Completion is reported through
    /// `Stack::on_tcp_connected`; an immediate failure is returned here.
    fn tcp_connect(&mut self, dst: SocketAddrV4) -> io::Result<SockId>;

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

    /// Opens an unconnected UDP socket on an ephemeral port.
    fn udp_open(&mut self) -> io::Result<SockId>;

    /// Sends one datagram.
    fn udp_send_to(&mut self, id: SockId, dst: SocketAddrV4, data: &[u8]) -> io::Result<()>;

    /// Opens an ICMP echo socket (unprivileged ping socket, or raw where that is refused).
    fn icmp_open(&mut self) -> io::Result<SockId>;

    /// Sends an ICMP echo request (header and data) to `dst`.
    fn icmp_send_to(&mut self, id: SockId, dst: Ipv4Addr, packet: &[u8]) -> io::Result<()>;

    /// Closes a UDP or ICMP socket.
    fn close(&mut self, id: SockId);
}
