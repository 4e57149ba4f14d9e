//! Lima's fd socket: a client connects to a stream listener and passes one datagram socket
//! with `SCM_RIGHTS`; that socket becomes the port. The connection itself carries nothing else.

use super::Network;
use crate::sys;
use crate::transport::Io;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use tracing::{debug, warn};

impl Network {
    /// The fd-socket client on source `idx` (whose stream is `fd`) sent something: take the
    /// passed descriptor and make it a port, or drop the client.
    pub(super) fn fd_handshake(&mut self, idx: usize, fd: RawFd) {
        match sys::recv_fd(fd) {
            Ok(Some(passed)) => {
                self.remove_source(idx);
                match sys::socket_type(passed.as_raw_fd()) {
                    Ok(libc::SOCK_DGRAM) | Ok(libc::SOCK_SEQPACKET) => {
                        let _ = sys::set_nonblocking(passed.as_raw_fd());
                        sys::set_buffer_sizes(passed.as_raw_fd(), 1 << 20, 4 << 20);
                        let name = format!("fd#{}", passed.as_raw_fd());
                        if let Err(e) = self.add_port(Io::Packet(passed), name, false) {
                            warn!(error = %e, "cannot add port");
                        }
                    }
                    other => warn!(?other, "fd socket client passed something that is not a datagram socket; ignoring it"),
                }
            }
            Ok(None) => {
                debug!("fd socket client closed without passing a descriptor");
                self.remove_source(idx);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => {
                warn!(error = %e, "receiving a descriptor failed");
                self.remove_source(idx);
            }
        }
    }
}
