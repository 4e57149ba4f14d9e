//! The transports guests connect through: binding their listening sockets, and accepting
//! QEMU stream connections, fd-socket clients (whose descriptor arrives in
//! [`super::handshake`]) and vhost-user connections.

use super::{io_err, Network, NetworkError, Source};
use crate::files;
use crate::sys;
use crate::transport::Io;
use crate::vhost;
use mio::Interest;
use std::collections::HashMap;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::{UnixDatagram, UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;
use tracing::{info, warn};

/// A frame transport to listen on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listen {
    /// QEMU `-netdev stream` / `-netdev socket` (4-byte big-endian length + frame).
    Qemu(PathBuf),
    /// QEMU `-netdev dgram`, vfkit: one frame per datagram on a bound unix datagram socket.
    Dgram(PathBuf),
    /// Lima's fd socket: each connection passes one datagram socket with `SCM_RIGHTS`.
    Fd(PathBuf),
    /// QEMU `-netdev vhost-user` (see [`crate::vhost`]): one QEMU at a time, again after it
    /// goes away.
    VhostUser(PathBuf),
}

impl Listen {
    pub fn path(&self) -> &Path {
        match self {
            Listen::Qemu(p) | Listen::Dgram(p) | Listen::Fd(p) | Listen::VhostUser(p) => p,
        }
    }
}

impl Network {
    pub(super) fn listen(&mut self, listen: &Listen) -> Result<(), NetworkError> {
        let path = listen.path().to_path_buf();
        // A live socket (another program, or another limanet) is refused; only a dead one is
        // replaced. Mode 0600 from the start.
        let what = || format!("listen on {}", path.display());
        let (source, bound) = match listen {
            Listen::Qemu(_) | Listen::Fd(_) => {
                let (l, bound) = files::bind_socket(&path, 0o600, None, |p| UnixListener::bind(p))?;
                l.set_nonblocking(true).map_err(io_err(what()))?;
                let source = if matches!(listen, Listen::Qemu(_)) {
                    Source::StreamListener(l)
                } else {
                    Source::FdListener(l)
                };
                (source, bound)
            }
            Listen::VhostUser(_) => {
                let (l, bound) = files::bind_socket(&path, 0o600, None, |p| UnixListener::bind(p))?;
                let incoming = vhost::Incoming::new().map_err(io_err(what()))?;
                vhost::spawn_listener(l, path.clone(), Arc::clone(&incoming))
                    .map_err(io_err(what()))?;
                (Source::VhostListener(incoming), bound)
            }
            Listen::Dgram(_) => {
                let (s, bound) = files::bind_socket(&path, 0o600, None, |p| UnixDatagram::bind(p))?;
                s.set_nonblocking(true).map_err(io_err(what()))?;
                // vfkit's recommendation: 1 MiB send, 4 MiB receive.
                sys::set_buffer_sizes(s.as_raw_fd(), 1 << 20, 4 << 20);
                let source = Source::DgramListener {
                    socket: Rc::new(s),
                    peers: HashMap::new(),
                    path: path.clone(),
                };
                (source, bound)
            }
        };
        let interest = match source {
            Source::DgramListener { .. } => Interest::READABLE | Interest::WRITABLE,
            _ => Interest::READABLE,
        };
        self.add_source(source, interest)?;
        self.socket_paths.push(bound);
        info!(listen = ?listen, "listening");
        Ok(())
    }

    /// Adds a port for each QEMU stream connection waiting on a listener.
    pub(super) fn add_stream_ports(&mut self, streams: Vec<UnixStream>) {
        for stream in streams {
            if let Err(e) = stream.set_nonblocking(true) {
                warn!(error = %e, "cannot set up connection");
                continue;
            }
            // Room for bursts of frames in both directions.
            sys::set_buffer_sizes(stream.as_raw_fd(), 4 << 20, 4 << 20);
            let name = format!("qemu-stream#{}", stream.as_raw_fd());
            if let Err(e) = self.add_port(Io::Stream(OwnedFd::from(stream)), name, false) {
                warn!(error = %e, "cannot add port");
            }
        }
    }

    /// Waits for the descriptor of each fd-socket client waiting on a listener.
    pub(super) fn add_fd_handshakes(&mut self, streams: Vec<UnixStream>) {
        for stream in streams {
            if stream.set_nonblocking(true).is_ok() {
                if let Err(e) = self.add_source(Source::FdHandshake(stream), Interest::READABLE) {
                    warn!(error = %e, "cannot add fd handshake");
                }
            }
        }
    }

    /// Adds a port for each vhost-user connection its listener thread announced.
    pub(super) fn add_vhost_ports(&mut self, ports: Vec<Arc<vhost::VhostPort>>) {
        for vhost in ports {
            let name = vhost.name.clone();
            if let Err(e) = self.add_port(Io::Vhost(vhost), name, true) {
                warn!(error = %e, "cannot add port");
            }
        }
    }
}

/// Accepts every pending connection (the listener is edge-triggered).
pub(super) fn accept_all(listener: &UnixListener) -> Vec<UnixStream> {
    let mut accepted = Vec::new();
    loop {
        match listener.accept() {
            Ok((stream, _)) => accepted.push(stream),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                if e.kind() != io::ErrorKind::WouldBlock {
                    warn!(error = %e, "accept failed");
                }
                return accepted;
            }
        }
    }
}
