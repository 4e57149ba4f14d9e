//! `limanet attach`: a TAP device inside a network namespace, relayed to a stream-socket network
//! (a vmnet socket, a `limanet usernet --listen-qemu` socket). The namespace then behaves like a
//! VM with one NIC on that network: tests and benchmarks use it for lightweight "VMs", users for
//! containers.
//!
//! With the stream protocol's offload extension negotiated (`limanet_netstack::stream_offload`),
//! the TAP is opened with a 12-byte virtio-net header (`virtio_net_hdr_v1`, the form on the
//! wire) and offloads, so the relay passes records through unchanged: header and frame, up to
//! a 64 KiB super-segment. The peer checks the headers; the TAP's kernel checks what it gets.

use limanet_netstack::stream_offload::WIRE_HDR_LEN;
use limanet_runtime::transport::{Io, Port, PortError, ReadStatus, MAX_OFFLOAD_FRAME};
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use tracing::{info, warn};

/// Largest frame relayed from the socket (socket_vmnet's limit).
const MAX_FRAME: usize = 64 * 1024;
const STOP: Token = Token(2);
/// Full-size buffers kept for reading the TAP.
const POOL_MAX: usize = 128;
/// Frames from this size on are queued in the full-size buffer they were read into: it is at
/// most twice their size.
const LARGE_FRAME: usize = 32 << 10;
const TAP: usize = 0;
const SOCKET: usize = 1;

/// Largest record relayed with offloads: a header and a super-segment.
const MAX_OFFLOAD_RECORD: usize = WIRE_HDR_LEN + MAX_OFFLOAD_FRAME;

/// Relays frames between `tap` and `stream` until either side closes or `stop` fires
/// (`offload`: both carry a `virtio_net_hdr_v1` before each frame). Returns the reason it ended.
pub fn relay(tap: OwnedFd, stream: OwnedFd, stop: OwnedFd, offload: bool) -> io::Result<String> {
    let max_frame = if offload {
        MAX_OFFLOAD_RECORD
    } else {
        MAX_FRAME
    };
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
    let mut scratch = vec![0u8; max_frame + 4];
    // Buffers of `max_frame` bytes, for reading the TAP without a copy.
    let mut pool: Vec<Vec<u8>> = Vec::new();
    let mut pending = [true, true];
    loop {
        let timeout = pending
            .iter()
            .any(|p| *p)
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
            if !std::mem::take(&mut pending[from]) {
                continue;
            }
            let to = 1 - from;
            let mut frames: Vec<Vec<u8>> = Vec::new();
            let result = if from == TAP {
                read_tap(ports[TAP].raw_fd(), max_frame, &mut pool, &mut frames)
            } else {
                // Frames go straight from the socket's read buffer to the TAP (whose writes do
                // not block) unless earlier ones still wait.
                let tap_fd = ports[TAP].raw_fd();
                let mut tap_busy = ports[TAP].has_output();
                ports[SOCKET].read_frames(max_frame, &mut scratch, |f| {
                    if !tap_busy && write_tap(tap_fd, f) {
                        return;
                    }
                    tap_busy = true;
                    frames.push(f.to_vec());
                })
            };
            for f in frames {
                if let Some(back) = ports[to].queue(f) {
                    recycle(&mut pool, back, max_frame);
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
                if let Err(e) = port.flush(|b| recycle(&mut pool, b, max_frame)) {
                    info!(side = %port.name, error = %e, "relay write failed");
                    return Ok(format!("{} write failed: {e}", port.name));
                }
            }
        }
    }
}

/// Keeps a written buffer for reading the TAP again if it is a full-size one.
fn recycle(pool: &mut Vec<Vec<u8>>, b: Vec<u8>, max_frame: usize) {
    if b.capacity() >= max_frame && pool.len() < POOL_MAX {
        pool.push(b);
    }
}

/// Reads frames from the TAP until it is drained or the per-event budget is spent: large
/// ones (super-segments) stay in the full-size buffer they were read into (no copy), small
/// ones are copied into a buffer of their size, so a queue of small frames does not hold
/// full-size buffers.
fn read_tap(
    fd: i32,
    max_frame: usize,
    pool: &mut Vec<Vec<u8>>,
    frames: &mut Vec<Vec<u8>>,
) -> Result<ReadStatus, PortError> {
    for _ in 0..limanet_runtime::transport::READS_PER_EVENT {
        let mut b = pool.pop().unwrap_or_else(|| Vec::with_capacity(max_frame));
        b.clear();
        let spare = b.spare_capacity_mut();
        // SAFETY: reading into the buffer's spare capacity, at most its length.
        let n = unsafe { libc::read(fd, spare.as_mut_ptr().cast(), spare.len()) };
        if n < 0 {
            pool.push(b);
            let err = io::Error::last_os_error();
            return match err.kind() {
                io::ErrorKind::WouldBlock => Ok(ReadStatus::Drained),
                io::ErrorKind::Interrupted => continue,
                _ => Err(err.into()),
            };
        }
        if n == 0 {
            return Ok(ReadStatus::Closed);
        }
        // SAFETY: read(2) initialised the first n bytes.
        unsafe { b.set_len(n as usize) };
        if b.len() >= LARGE_FRAME {
            frames.push(b);
        } else {
            frames.push(b.clone());
            pool.push(b);
        }
    }
    Ok(ReadStatus::More)
}

/// Writes one frame to the TAP now; false if it must be queued (the TAP is not taking
/// frames, or an error the queue's flush reports). Frames the kernel refuses are dropped.
fn write_tap(fd: i32, frame: &[u8]) -> bool {
    loop {
        // SAFETY: writing a live buffer.
        let n = unsafe { libc::write(fd, frame.as_ptr().cast(), frame.len()) };
        if n >= 0 {
            return true;
        }
        match io::Error::last_os_error().raw_os_error() {
            Some(libc::EINTR) => continue,
            // Refused (a bad virtio-net header, too big): dropped, as a full queue would.
            Some(libc::EMSGSIZE) | Some(libc::ENOBUFS) | Some(libc::EINVAL) => return true,
            _ => return false,
        }
    }
}
