//! `limanet attach`: a TAP device inside a network namespace, relayed to a stream-socket network
//! (a vmnet socket, a `limanet usernet --listen-qemu` socket). The namespace then behaves like a
//! VM with one NIC on that network: tests and benchmarks use it for lightweight "VMs", users for
//! containers.

use limanet_runtime::transport::{Io, Port, PortError, ReadStatus};
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use tracing::{info, warn};

/// Largest frame relayed from the socket (socket_vmnet's limit).
const MAX_FRAME: usize = 64 * 1024;
/// Output queued towards one side above which the relay stops reading the other side, so
/// that the sender meets backpressure (its TAP queue, its socket buffer) instead of frames
/// piling up here: a deep queue adds delay until the guest's TCP retransmits on timeout.
const BACKLOG_MAX: usize = 512 << 10;
const STOP: Token = Token(2);

/// Relays frames between `tap` and `stream` until either side closes or `stop` fires.
/// Returns the reason it ended.
pub fn relay(tap: OwnedFd, stream: OwnedFd, stop: OwnedFd) -> io::Result<String> {
    limanet_runtime::sys::set_nonblocking(tap.as_raw_fd())?;
    limanet_runtime::sys::set_nonblocking(stream.as_raw_fd())?;
    limanet_runtime::sys::set_buffer_sizes(stream.as_raw_fd(), 4 << 20, 4 << 20);
    let mut ports = [
        Port::new(Io::Packet(tap), "tap".into()),
        Port::new(Io::Stream(stream), "socket".into()),
    ];
    let mut poll = Poll::new()?;
    for (i, p) in ports.iter().enumerate() {
        poll.registry().register(
            &mut SourceFd(&p.raw_fd()),
            Token(i),
            Interest::READABLE | Interest::WRITABLE,
        )?;
    }
    poll.registry()
        .register(&mut SourceFd(&stop.as_raw_fd()), STOP, Interest::READABLE)?;
    let mut events = Events::with_capacity(64);
    let mut scratch = vec![0u8; MAX_FRAME + 4];
    let mut pool: Vec<Vec<u8>> = Vec::new();
    let mut pending = [true, true];
    loop {
        // Data left unread on a side whose peer is backlogged waits for the peer's writable
        // event, not a busy loop.
        let backlogged =
            |ports: &[Port; 2], from: usize| ports[1 - from].queued_bytes() > BACKLOG_MAX;
        let timeout = (0..2)
            .any(|i| pending[i] && !backlogged(&ports, i))
            .then_some(std::time::Duration::ZERO);
        if let Err(e) = poll.poll(&mut events, timeout) {
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        let mut writable = [false, false];
        for ev in events.iter() {
            match ev.token() {
                STOP => return Ok("termination signal".into()),
                Token(i) if i < 2 => {
                    if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
                        pending[i] = true;
                    }
                    if ev.is_writable() {
                        writable[i] = true;
                    }
                }
                _ => {}
            }
        }
        for from in 0..2 {
            if !pending[from] || backlogged(&ports, from) {
                continue;
            }
            pending[from] = false;
            let to = 1 - from;
            let mut frames: Vec<Vec<u8>> = Vec::new();
            let result = ports[from].read_frames(MAX_FRAME, &mut scratch, |f| {
                let mut b = pool.pop().unwrap_or_default();
                b.clear();
                b.extend_from_slice(f);
                frames.push(b);
            });
            for f in frames {
                if let Some(back) = ports[to].queue(f) {
                    pool.push(back);
                }
            }
            writable[to] = true;
            match result {
                Ok(ReadStatus::Drained) => {}
                Ok(ReadStatus::More) => pending[from] = true,
                Ok(ReadStatus::Closed) => {
                    return Ok(format!("{} closed", ports[from].name));
                }
                Err(PortError::Io(e)) if e.kind() == io::ErrorKind::ConnectionReset => {
                    return Ok(format!("{} reset", ports[from].name));
                }
                Err(e) => {
                    warn!(side = %ports[from].name, error = %e, "relay stopped");
                    return Err(io::Error::other(e.to_string()));
                }
            }
        }
        for (i, port) in ports.iter_mut().enumerate() {
            if writable[i] && port.has_output() {
                if let Err(e) = port.flush(|b| {
                    if pool.len() < 1024 {
                        pool.push(b)
                    }
                }) {
                    info!(side = %port.name, error = %e, "relay write failed");
                    return Ok(format!("{} write failed: {e}", port.name));
                }
            }
        }
    }
}
