//! Frame transports: how Ethernet frames travel between limanet and a VM or namespace.
//!
//! - `Stream`: QEMU's `-netdev stream` / `-netdev socket` protocol, socket_vmnet's too: each frame
//!   is preceded by its length as a 4-byte big-endian integer.
//! - `Packet`: one frame per read and write: a TAP device, or a connected datagram socket (Lima's
//!   fd socket hands us one).
//! - `Peer`: one frame per datagram on a shared, bound datagram socket (QEMU `-netdev dgram`,
//!   vfkit), addressed to the peer's own socket path.
//!
//! - `Vhost`: a QEMU vhost-user-net connection; frames come from and go to the guest's
//!   virtqueues through the bridge in [`crate::vhost`], each with its virtio-net header.
//!
//! A `Packet` port on a TAP opened with a virtio-net header (`Port::set_vnet_hdr`) reads and
//! writes that header before every frame, as a `Vhost` port always does; only such ports get
//! offload state. A `Stream` port whose server side offers it (`Port::offer_offloads`) gets the
//! same once its client negotiated the offload extension of the stream protocol
//! (`limanet_netstack::stream_offload`): a hello as the connection's first frame is answered
//! with an ack, and every later record carries a `virtio_net_hdr_v1`.
//!
//! Lengths from the other side are never trusted: a header larger than the largest frame the
//! MTU allows closes that connection with a logged error; nothing else is affected.

use crate::sys;
use crate::vhost::{GuestFrame, VhostPort};
use limanet_netstack::stream_offload::{self, WIRE_HDR_LEN};
use limanet_netstack::vnet::{self, VnetHeader, VNET_HDR_LEN};
use std::cell::Cell;
use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use tracing::{debug, info, warn};

/// Largest amount of queued output per port before new frames are dropped. TCP flows recover
/// through retransmission; this only bounds memory when a VM stops reading.
const MAX_QUEUED_BYTES: usize = 16 << 20;
/// Largest amount of queued output of all the ports of a network together ...
pub const MAX_NETWORK_QUEUED_BYTES: usize = 32 << 20;
/// ... except that every port may queue this much whatever the others hold, so a guest that
/// reads keeps working while guests that stopped reading fill the shared budget.
const PORT_GUARANTEED_BYTES: usize = 256 << 10;

/// Output queued by all the ports of one network, shared by them. Frames beyond it are
/// dropped and counted.
#[derive(Debug, Default)]
pub struct QueueBudget {
    queued: Cell<usize>,
    dropped: Cell<u64>,
}

impl QueueBudget {
    pub fn new() -> Rc<Self> {
        Rc::new(Self::default())
    }

    /// Bytes queued by all ports.
    pub fn queued(&self) -> usize {
        self.queued.get()
    }

    /// Frames dropped because a port's queue or the network's budget was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.get()
    }

    fn add(&self, n: usize) {
        self.queued.set(self.queued.get() + n);
    }

    fn sub(&self, n: usize) {
        self.queued.set(self.queued.get().saturating_sub(n));
    }
}
/// Reads per readiness event before yielding to other ports.
pub const READS_PER_EVENT: usize = 16;
/// Frames read from a TAP or packet socket per event: one frame per read, so more of them
/// per round make the round's costs (poll, flushes) and the host sends (one UDP GSO send per
/// run of datagrams) cover more frames.
const PACKET_READS_PER_EVENT: usize = 64;
const STREAM_READ_BUFFER: usize = 256 << 10;
/// Unparsed bytes move to the front of a stream port's read buffer once less than this is
/// free behind them: room for the largest record.
const MIN_READ_ROOM: usize = 4 + WIRE_HDR_LEN + MAX_OFFLOAD_FRAME;
/// Frames per `sendmsg` on stream ports.
const FRAMES_PER_WRITE: usize = 128;
/// Largest frame a port with a virtio-net header may pass: a 64 KiB IP super-segment in an
/// Ethernet frame with a VLAN tag.
pub const MAX_OFFLOAD_FRAME: usize = 65535 + 14 + 4;
/// Read buffer a port with a virtio-net header needs.
pub const MAX_OFFLOAD_READ: usize = VNET_HDR_LEN + MAX_OFFLOAD_FRAME;

/// The I/O object behind a port.
#[derive(Debug)]
pub enum Io {
    Stream(OwnedFd),
    Packet(OwnedFd),
    Peer {
        socket: Rc<UnixDatagram>,
        peer: PathBuf,
    },
    /// A vhost-user connection (see [`crate::vhost`]); polled through its bridge eventfd.
    Vhost(Arc<VhostPort>),
}

/// Outcome of reading from a port.
#[derive(Debug, PartialEq, Eq)]
pub enum ReadStatus {
    /// Nothing more to read for now.
    Drained,
    /// The read budget ran out with data still waiting.
    More,
    /// The other side closed the connection.
    Closed,
}

/// Why a port had to be closed.
#[derive(Debug, thiserror::Error)]
pub enum PortError {
    #[error("frame length header {len} exceeds the maximum frame size {max}")]
    Oversize { len: usize, max: usize },
    #[error("connection closed in the middle of a frame ({0} bytes pending)")]
    Truncated(usize),
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// One connection on the switch.
#[derive(Debug)]
pub struct Port {
    pub io: Io,
    /// For logs: what this port is (socket path, namespace).
    pub name: String,
    rbuf: Vec<u8>,
    rlen: usize,
    /// Start of the unparsed bytes in `rbuf` (a partial record); moved to the front only when
    /// the room after `rlen` gets short, not after every read.
    rstart: usize,
    wq: VecDeque<Vec<u8>>,
    /// The virtio-net header each queued frame goes out with (`None`: none), in step with `wq`.
    wq_vnet: VecDeque<Option<VnetHeader>>,
    vnet_hdr: bool,
    /// A stream port whose first frame is still to come, and that answers a hello.
    hello_awaited: bool,
    /// Features a hello may get (`stream_offload::FEATURE_*`; all fit in a byte so far, and
    /// `Port` is kept small).
    offered: u8,
    /// Features the client negotiated (0: none).
    features: u8,
    /// The client negotiated passing its TAP: nothing more is read from the stream here (the
    /// next message carries a descriptor, which `read` would lose).
    tap_awaited: bool,
    /// Headers read from this packet port come from an untrusted kernel side (a TAP a client
    /// passed): checked as stream records' are.
    check_headers: bool,
    /// The offload extension was negotiated and nobody asked yet ([`Port::take_negotiated`]).
    negotiated: bool,
    /// Frames dropped because their virtio-net header from the peer was refused.
    pub bad_headers: u64,
    /// Bytes of the first queued frame (counting its stream header) already written.
    whead: usize,
    queued: usize,
    /// Output queue bound in bytes (see [`Port::set_queue_limit`]).
    max_queued: usize,
    pub dropped: u64,
    pub zero_length_frames: u64,
    /// A write failed because the link is down (logged once per outage).
    link_down: bool,
    budget: Rc<QueueBudget>,
}

impl Port {
    pub fn new(io: Io, name: String) -> Self {
        Self::with_budget(io, name, QueueBudget::new())
    }

    /// A port whose queued output counts against `budget`, shared with the other ports of
    /// its network.
    pub fn with_budget(io: Io, name: String, budget: Rc<QueueBudget>) -> Self {
        let rbuf = match io {
            Io::Stream(_) => vec![0; STREAM_READ_BUFFER],
            _ => Vec::new(),
        };
        Port {
            io,
            name,
            rbuf,
            rlen: 0,
            rstart: 0,
            wq: VecDeque::new(),
            wq_vnet: VecDeque::new(),
            vnet_hdr: false,
            hello_awaited: false,
            offered: 0,
            features: 0,
            tap_awaited: false,
            check_headers: false,
            negotiated: false,
            bad_headers: 0,
            whead: 0,
            queued: 0,
            max_queued: MAX_QUEUED_BYTES,
            dropped: 0,
            zero_length_frames: 0,
            link_down: false,
            budget,
        }
    }

    /// Marks a packet port (a TAP opened with `IFF_VNET_HDR`) as carrying a virtio-net header
    /// before every frame.
    pub fn set_vnet_hdr(&mut self) {
        if matches!(self.io, Io::Packet(_) | Io::Vhost(_)) {
            self.vnet_hdr = true;
        }
    }

    /// Lets the client of a stream port (server side) negotiate the offload extension with a
    /// hello as its first frame. Call before the first read.
    pub fn offer_offloads(&mut self) {
        self.offer_features(stream_offload::FEATURE_VNET_HDR_V1);
    }

    /// [`Port::offer_offloads`] with the features this server supports (with
    /// `stream_offload::FEATURE_TAP_FD`, see [`Port::tap_awaited`]).
    pub fn offer_features(&mut self, features: u32) {
        if matches!(self.io, Io::Stream(_)) {
            self.hello_awaited = true;
            self.offered = (features & 0xff) as u8;
        }
    }

    /// The features the client negotiated (0: none).
    pub fn features(&self) -> u32 {
        u32::from(self.features)
    }

    /// True once the client negotiated passing its TAP: the port then reads nothing more, and
    /// the server receives the descriptor itself (`sys::recv_with_fd`).
    pub fn tap_awaited(&self) -> bool {
        self.tap_awaited
    }

    /// Bytes read from the stream but not yet parsed (a client that passes its TAP must have
    /// sent nothing after its hello).
    pub fn unparsed(&self) -> usize {
        self.rlen - self.rstart
    }

    /// Checks every virtio-net header read from this packet port as a stream record's
    /// (`stream_offload::check`): for a TAP a client passed, whose namespace is not ours.
    pub fn check_vnet_headers(&mut self) {
        self.check_headers = true;
    }

    /// True once after the client negotiated offloads (the ack is queued: flush the port).
    pub fn take_negotiated(&mut self) -> bool {
        std::mem::take(&mut self.negotiated)
    }

    /// Whether frames on this port carry a virtio-net header.
    pub fn vnet_hdr(&self) -> bool {
        self.vnet_hdr
    }

    pub fn raw_fd(&self) -> i32 {
        match &self.io {
            Io::Stream(fd) | Io::Packet(fd) => fd.as_raw_fd(),
            Io::Peer { socket, .. } => socket.as_raw_fd(),
            Io::Vhost(v) => v.loop_fd(),
        }
    }

    /// Reads what is available (within a budget) and hands every complete frame to `on_frame`.
    /// `scratch` is a buffer of at least `max_frame` bytes for packet ports. For ports
    /// without a virtio-net header (see [`Port::read_frames_with`]).
    pub fn read_frames(
        &mut self,
        max_frame: usize,
        scratch: &mut [u8],
        mut on_frame: impl FnMut(&[u8]),
    ) -> Result<ReadStatus, PortError> {
        self.read_frames_with(max_frame, scratch, |f, _| on_frame(f))
    }

    /// [`Port::read_frames`], with each frame's virtio-net header on ports that have one
    /// (`scratch` then needs [`MAX_OFFLOAD_READ`] bytes).
    pub fn read_frames_with(
        &mut self,
        max_frame: usize,
        scratch: &mut [u8],
        mut on_frame: impl FnMut(&[u8], Option<&VnetHeader>),
    ) -> Result<ReadStatus, PortError> {
        match &self.io {
            Io::Stream(_) if self.tap_awaited => Ok(ReadStatus::Drained),
            Io::Stream(fd) => {
                let fd = fd.as_raw_fd();
                for _ in 0..READS_PER_EVENT {
                    if self.rbuf.len() - self.rlen < MIN_READ_ROOM && self.rstart > 0 {
                        self.rbuf.copy_within(self.rstart..self.rlen, 0);
                        self.rlen -= self.rstart;
                        self.rstart = 0;
                    }
                    if self.rlen == self.rbuf.len() {
                        // A frame larger than the buffer cannot be valid: `parse` rejects it first.
                        return Err(PortError::Oversize {
                            len: self.rlen,
                            max: max_frame,
                        });
                    }
                    // SAFETY: reading into the unused tail of our own buffer.
                    let n = unsafe {
                        libc::read(
                            fd,
                            self.rbuf[self.rlen..].as_mut_ptr() as *mut libc::c_void,
                            self.rbuf.len() - self.rlen,
                        )
                    };
                    if n < 0 {
                        let err = io::Error::last_os_error();
                        // A packet socket reports its interface going down once (ENETDOWN).
                        if err.raw_os_error() == Some(libc::ENETDOWN) {
                            debug!(port = %self.name, "link down");
                            return Ok(ReadStatus::Drained);
                        }
                        return match err.kind() {
                            io::ErrorKind::WouldBlock => Ok(ReadStatus::Drained),
                            io::ErrorKind::Interrupted => continue,
                            _ => Err(err.into()),
                        };
                    }
                    if n == 0 {
                        if self.rlen > self.rstart {
                            return Err(PortError::Truncated(self.rlen - self.rstart));
                        }
                        return Ok(ReadStatus::Closed);
                    }
                    self.rlen += n as usize;
                    self.parse_stream(max_frame, &mut on_frame)?;
                    if self.tap_awaited {
                        return Ok(ReadStatus::Drained);
                    }
                }
                Ok(ReadStatus::More)
            }
            Io::Packet(fd) => {
                let fd = fd.as_raw_fd();
                for _ in 0..PACKET_READS_PER_EVENT {
                    // SAFETY: reading into a caller-provided buffer.
                    let n = unsafe {
                        libc::read(fd, scratch.as_mut_ptr() as *mut libc::c_void, scratch.len())
                    };
                    if n < 0 {
                        let err = io::Error::last_os_error();
                        return match err.kind() {
                            io::ErrorKind::WouldBlock => Ok(ReadStatus::Drained),
                            io::ErrorKind::Interrupted => continue,
                            _ => Err(err.into()),
                        };
                    }
                    let n = n as usize;
                    if n == 0 {
                        // A zero-length datagram is not end of stream for datagram sockets, but
                        // the peer of a socketpair closing looks the same: treat it as closed.
                        return Ok(ReadStatus::Closed);
                    }
                    if !self.vnet_hdr {
                        if n > max_frame {
                            self.dropped += 1;
                            debug!(port = %self.name, len = n, max = max_frame, "dropping oversize frame");
                            continue;
                        }
                        on_frame(&scratch[..n], None);
                        continue;
                    }
                    let (hdr, frame) = match VnetHeader::parse(&scratch[..n]) {
                        Ok(v) => v,
                        Err(_) => {
                            self.dropped += 1;
                            continue;
                        }
                    };
                    // Only super-segments may exceed the MTU.
                    let limit = if hdr.gso() == vnet::GSO_NONE {
                        max_frame
                    } else {
                        MAX_OFFLOAD_FRAME
                    };
                    if frame.len() > limit {
                        self.dropped += 1;
                        debug!(port = %self.name, len = frame.len(), max = limit, "dropping oversize frame");
                        continue;
                    }
                    if self.check_headers {
                        if let Err(e) = stream_offload::check(&hdr, frame.len()) {
                            self.dropped += 1;
                            self.bad_headers += 1;
                            if self.bad_headers.is_power_of_two() {
                                warn!(port = %self.name, error = %e, count = self.bad_headers, "dropping frames with a bad virtio-net header");
                            }
                            continue;
                        }
                    }
                    on_frame(frame, Some(&hdr));
                }
                Ok(ReadStatus::More)
            }
            // Shared datagram sockets are read by their listener.
            Io::Peer { .. } => Ok(ReadStatus::Drained),
            Io::Vhost(vhost) => {
                let mut frames: Vec<GuestFrame> = Vec::new();
                let Some(more) = vhost.take_frames(&mut frames) else {
                    return Ok(ReadStatus::Closed);
                };
                for f in &frames {
                    // Only super-segments may exceed the MTU.
                    let limit = if f.vnet.gso() == vnet::GSO_NONE {
                        max_frame
                    } else {
                        MAX_OFFLOAD_FRAME
                    };
                    if f.frame.is_empty() || f.frame.len() > limit {
                        self.dropped += 1;
                        debug!(port = %self.name, len = f.frame.len(), max = limit, "dropping frame of invalid size");
                        continue;
                    }
                    on_frame(&f.frame, Some(&f.vnet));
                }
                Ok(if more {
                    ReadStatus::More
                } else {
                    ReadStatus::Drained
                })
            }
        }
    }

    fn parse_stream(
        &mut self,
        max_frame: usize,
        on_frame: &mut impl FnMut(&[u8], Option<&VnetHeader>),
    ) -> Result<(), PortError> {
        let mut pos = self.rstart;
        while self.rlen - pos >= 4 {
            let b = &self.rbuf[pos..pos + 4];
            let len = u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize;
            if len == 0 {
                self.zero_length_frames += 1;
                if self.zero_length_frames.is_power_of_two() {
                    debug!(port = %self.name, count = self.zero_length_frames, "skipping zero-length frames");
                }
                pos += 4;
                continue;
            }
            // Super-segments may exceed the MTU once offloads are on.
            let limit = if self.vnet_hdr {
                WIRE_HDR_LEN + MAX_OFFLOAD_FRAME
            } else {
                max_frame
            };
            if len > limit {
                return Err(PortError::Oversize { len, max: limit });
            }
            if self.rlen - pos - 4 < len {
                break;
            }
            let record = &self.rbuf[pos + 4..pos + 4 + len];
            pos += 4 + len;
            if self.vnet_hdr {
                match stream_offload::parse_record(record) {
                    Ok((hdr, frame)) if hdr.gso() != vnet::GSO_NONE || frame.len() <= max_frame => {
                        on_frame(frame, Some(&hdr))
                    }
                    Ok(_) => self.dropped += 1,
                    Err(e) => {
                        self.dropped += 1;
                        self.bad_headers += 1;
                        if self.bad_headers.is_power_of_two() {
                            warn!(port = %self.name, error = %e, count = self.bad_headers, "dropping frames with a bad virtio-net header");
                        }
                    }
                }
                continue;
            }
            if std::mem::take(&mut self.hello_awaited) {
                let ack = stream_offload::answer(record, u32::from(self.offered));
                if let Some(ack) = ack {
                    self.features = stream_offload::parse(&ack)
                        .map_or(0, |c| (c.features & u32::from(self.offered)) as u8);
                    info!(port = %self.name, "offloads negotiated");
                    // Plain, and the last plain frame: everything queued after carries a header.
                    if self.queue(ack).is_some() {
                        debug!(port = %self.name, "offload ack dropped: output queue full");
                    }
                    self.vnet_hdr = true;
                    self.negotiated = true;
                    if self.features() & stream_offload::FEATURE_TAP_FD != 0 {
                        // The descriptor comes next, in a message `read` must not consume.
                        self.tap_awaited = true;
                        break;
                    }
                    continue;
                }
            }
            on_frame(record, None);
        }
        if pos == self.rlen {
            self.rstart = 0;
            self.rlen = 0;
        } else {
            self.rstart = pos;
        }
        Ok(())
    }

    /// Bounds this port's output queue to `bytes` (default 16 MiB): a switch with many ports
    /// keeps the worst case (every port stalled) small.
    pub fn set_queue_limit(&mut self, bytes: usize) {
        self.max_queued = bytes;
    }

    /// Queues a frame; returns it back if the queue is full (the caller recycles it).
    pub fn queue(&mut self, frame: Vec<u8>) -> Option<Vec<u8>> {
        self.queue_with(frame, None)
    }

    /// Queues a frame with offload state for the virtio-net header. A port without the header
    /// never gets offload state (the netstack sees to it): such a frame is refused.
    pub fn queue_with(&mut self, frame: Vec<u8>, vnet: Option<VnetHeader>) -> Option<Vec<u8>> {
        if !self.vnet_hdr && vnet.is_some_and(|v| !v.is_plain()) {
            self.dropped += 1;
            warn!(port = %self.name, "dropping a frame with offload state for a port without offloads");
            return Some(frame);
        }
        let after = self.queued + frame.len();
        let port_full = after > self.max_queued;
        let network_full = after > PORT_GUARANTEED_BYTES
            && self.budget.queued() + frame.len() > MAX_NETWORK_QUEUED_BYTES;
        if port_full || network_full {
            self.dropped += 1;
            let total = self.budget.dropped.get() + 1;
            self.budget.dropped.set(total);
            if total == 1 {
                warn!(port = %self.name, queued = self.queued, network_queued = self.budget.queued(), "a guest is not reading its frames: output queue full, dropping frames to it (logged once per network; counted)");
            } else if self.dropped.is_power_of_two() {
                debug!(port = %self.name, dropped = self.dropped, "output queue full, dropping frames");
            }
            return Some(frame);
        }
        self.queued += frame.len();
        self.budget.add(frame.len());
        self.wq.push_back(frame);
        self.wq_vnet
            .push_back(self.vnet_hdr.then(|| vnet.unwrap_or_default()));
        None
    }

    /// Sends `frame` (with offload state as [`Port::queue_with`]) right away when nothing is
    /// queued before it, without copying it; what cannot go out now is copied into a buffer
    /// from `buffer` and queued. Returns a buffer the queue refused (the caller recycles it).
    pub fn send(
        &mut self,
        frame: &[u8],
        vnet: Option<VnetHeader>,
        buffer: impl FnOnce() -> Vec<u8>,
    ) -> Option<Vec<u8>> {
        if self.wq.is_empty() && (self.vnet_hdr || vnet.is_none_or(|v| v.is_plain())) {
            let hdr = self.vnet_hdr.then(|| vnet.unwrap_or_default());
            match self.write_now(frame, hdr.as_ref()) {
                WriteNow::All => return None,
                WriteNow::Part(n) => {
                    // The rest must follow before anything else: queued whatever the budget.
                    let b = copied(frame, buffer());
                    self.queued += b.len();
                    self.budget.add(b.len());
                    self.wq.push_back(b);
                    self.wq_vnet.push_back(hdr);
                    self.whead = n;
                    return None;
                }
                WriteNow::Later => {}
            }
        }
        self.queue_with(copied(frame, buffer()), vnet)
    }

    /// One attempt to write a frame on an idle port.
    fn write_now(&mut self, frame: &[u8], hdr: Option<&VnetHeader>) -> WriteNow {
        match &self.io {
            Io::Stream(fd) => {
                let prefix = StreamPrefix::new(frame.len(), hdr);
                match sys::writev(fd.as_raw_fd(), &[prefix.bytes(), frame]) {
                    Ok(n) if n == prefix.bytes().len() + frame.len() => WriteNow::All,
                    Ok(0) | Err(_) => WriteNow::Later,
                    Ok(n) => WriteNow::Part(n),
                }
            }
            Io::Packet(fd) => {
                let bytes = hdr.map(|h| h.to_bytes());
                let head: &[u8] = bytes.as_ref().map_or(&[], |h| h.as_slice());
                let iov = [
                    libc::iovec {
                        iov_base: head.as_ptr() as *mut libc::c_void,
                        iov_len: head.len(),
                    },
                    libc::iovec {
                        iov_base: frame.as_ptr() as *mut libc::c_void,
                        iov_len: frame.len(),
                    },
                ];
                // SAFETY: both iovecs point at live buffers of their length (a TAP or datagram
                // socket takes one frame per writev).
                let n = unsafe { libc::writev(fd.as_raw_fd(), iov.as_ptr(), 2) };
                let n = if n < 0 {
                    Err(io::Error::last_os_error())
                } else {
                    Ok(n)
                };
                match n {
                    Ok(_) => {
                        if self.link_down {
                            self.link_down = false;
                            info!(port = %self.name, dropped = self.dropped, "link up again");
                        }
                        WriteNow::All
                    }
                    Err(e) => match e.raw_os_error() {
                        // Refused by the kernel: dropped, as `flush` does.
                        Some(libc::EMSGSIZE) | Some(libc::ENOBUFS) | Some(libc::EINVAL) => {
                            self.dropped += 1;
                            WriteNow::All
                        }
                        // Full, or an error `flush` reports (link down, closed).
                        _ => WriteNow::Later,
                    },
                }
            }
            _ => WriteNow::Later,
        }
    }

    pub fn has_output(&self) -> bool {
        !self.wq.is_empty()
    }

    /// Writes queued frames until done or the socket is full. Written buffers go to `recycle`.
    pub fn flush(&mut self, mut recycle: impl FnMut(Vec<u8>)) -> io::Result<()> {
        match &self.io {
            Io::Vhost(vhost) => {
                let moved = vhost.send_from(&mut self.wq, &mut self.wq_vnet);
                self.queued -= moved;
                self.budget.sub(moved);
                Ok(())
            }
            Io::Stream(fd) => {
                let fd = fd.as_raw_fd();
                while !self.wq.is_empty() {
                    let count = self.wq.len().min(FRAMES_PER_WRITE);
                    let prefixes: Vec<StreamPrefix> = self
                        .wq
                        .iter()
                        .zip(&self.wq_vnet)
                        .take(count)
                        .map(|(f, h)| StreamPrefix::new(f.len(), h.as_ref()))
                        .collect();
                    let mut bufs: Vec<&[u8]> = Vec::with_capacity(count * 2);
                    for (i, (frame, prefix)) in self.wq.iter().zip(&prefixes).enumerate() {
                        let prefix = prefix.bytes();
                        let skip = if i == 0 { self.whead } else { 0 };
                        if skip < prefix.len() {
                            bufs.push(&prefix[skip..]);
                            bufs.push(frame);
                        } else {
                            bufs.push(&frame[skip - prefix.len()..]);
                        }
                    }
                    let mut written = match sys::writev(fd, &bufs) {
                        Ok(n) => n,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        Err(e) => return Err(e),
                    };
                    drop(bufs);
                    while written > 0 {
                        let Some(front) = self.wq.front() else { break };
                        let prefix_len =
                            StreamPrefix::len(self.wq_vnet.front().and_then(Option::as_ref));
                        let left = front.len() + prefix_len - self.whead;
                        if written >= left {
                            written -= left;
                            self.whead = 0;
                            self.wq_vnet.pop_front();
                            if let Some(f) = self.wq.pop_front() {
                                self.queued -= f.len();
                                self.budget.sub(f.len());
                                recycle(f);
                            }
                        } else {
                            self.whead += written;
                            written = 0;
                        }
                    }
                }
                Ok(())
            }
            Io::Packet(fd) => {
                let fd = fd.as_raw_fd();
                while let Some(front) = self.wq.front() {
                    let hdr = self
                        .wq_vnet
                        .front()
                        .copied()
                        .flatten()
                        .map(|h| h.to_bytes());
                    let n = match &hdr {
                        Some(hdr) => {
                            let iov = [
                                libc::iovec {
                                    iov_base: hdr.as_ptr() as *mut libc::c_void,
                                    iov_len: hdr.len(),
                                },
                                libc::iovec {
                                    iov_base: front.as_ptr() as *mut libc::c_void,
                                    iov_len: front.len(),
                                },
                            ];
                            // SAFETY: both iovecs point at live buffers of their length.
                            unsafe { libc::writev(fd, iov.as_ptr(), iov.len() as libc::c_int) }
                        }
                        // SAFETY: writing a live buffer.
                        _ => unsafe {
                            libc::write(fd, front.as_ptr() as *const libc::c_void, front.len())
                        },
                    };
                    if n < 0 {
                        let err = io::Error::last_os_error();
                        match err.raw_os_error() {
                            Some(libc::EAGAIN) => return Ok(()),
                            Some(libc::EINTR) => continue,
                            // Too big for the peer, or no buffer space: drop this frame only.
                            Some(libc::EMSGSIZE) | Some(libc::ENOBUFS) | Some(libc::EINVAL) => {
                                self.dropped += 1
                            }
                            // The link is down (TAP set down, NIC unplugged): drop, keep going;
                            // frames flow again once it is back up.
                            Some(libc::ENETDOWN) | Some(libc::ENXIO) | Some(libc::EIO)
                            | Some(libc::ENODEV) => {
                                self.dropped += 1;
                                if !self.link_down {
                                    self.link_down = true;
                                    warn!(port = %self.name, error = %err, "link down, dropping frames");
                                }
                            }
                            _ => return Err(err),
                        }
                    } else if self.link_down {
                        self.link_down = false;
                        info!(port = %self.name, dropped = self.dropped, "link up again");
                    }
                    self.wq_vnet.pop_front();
                    if let Some(f) = self.wq.pop_front() {
                        self.queued -= f.len();
                        self.budget.sub(f.len());
                        recycle(f);
                    }
                }
                Ok(())
            }
            Io::Peer { socket, peer } => {
                while let Some(front) = self.wq.front() {
                    self.wq_vnet.pop_front();
                    match socket.send_to(front, peer) {
                        Ok(_) => {}
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        Err(e) => match e.raw_os_error() {
                            Some(libc::EMSGSIZE) | Some(libc::ENOBUFS) => self.dropped += 1,
                            _ => return Err(e),
                        },
                    }
                    if let Some(f) = self.wq.pop_front() {
                        self.queued -= f.len();
                        self.budget.sub(f.len());
                        recycle(f);
                    }
                }
                Ok(())
            }
        }
    }

    /// Hands back every queued buffer (the port is going away).
    pub fn drain(&mut self, mut recycle: impl FnMut(Vec<u8>)) {
        self.wq.drain(..).for_each(&mut recycle);
        self.wq_vnet.clear();
        self.budget.sub(self.queued);
        self.queued = 0;
        self.whead = 0;
    }
}

fn copied(frame: &[u8], mut b: Vec<u8>) -> Vec<u8> {
    b.clear();
    b.extend_from_slice(frame);
    b
}

/// How far [`Port::write_now`] got.
enum WriteNow {
    All,
    /// This many bytes (prefix included) went out.
    Part(usize),
    /// Nothing: queue the frame.
    Later,
}

/// What goes before a frame on a stream: its length, and the virtio-net header once offloads
/// were negotiated (the length then counts the header).
struct StreamPrefix {
    buf: [u8; 4 + WIRE_HDR_LEN],
    len: usize,
}

impl StreamPrefix {
    fn new(frame_len: usize, hdr: Option<&VnetHeader>) -> Self {
        let mut buf = [0u8; 4 + WIRE_HDR_LEN];
        let len = Self::len(hdr);
        buf[..4].copy_from_slice(&((frame_len + len - 4) as u32).to_be_bytes());
        if let Some(h) = hdr {
            buf[4..].copy_from_slice(&stream_offload::header_bytes(h));
        }
        StreamPrefix { buf, len }
    }

    fn len(hdr: Option<&VnetHeader>) -> usize {
        if hdr.is_some() {
            4 + WIRE_HDR_LEN
        } else {
            4
        }
    }

    fn bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;
    use std::rc::Rc;
    use std::time::Duration;

    fn stream_pair() -> (Port, UnixStream) {
        let (a, b) = UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        (Port::new(Io::Stream(OwnedFd::from(a)), "test".into()), b)
    }

    #[test]
    fn stream_frames_split_across_reads_are_reassembled() {
        let (mut port, mut peer) = stream_pair();
        let mut frames = Vec::new();
        let frame = vec![7u8; 100];
        let mut bytes = (frame.len() as u32).to_be_bytes().to_vec();
        bytes.extend_from_slice(&frame);
        bytes.extend_from_slice(&[0, 0, 0, 0]); // zero-length: skipped
        peer.write_all(&bytes[..50]).unwrap();
        let mut scratch = [];
        assert_eq!(
            port.read_frames(1514, &mut scratch, |f| frames.push(f.to_vec()))
                .unwrap(),
            ReadStatus::Drained
        );
        assert!(frames.is_empty());
        peer.write_all(&bytes[50..]).unwrap();
        port.read_frames(1514, &mut scratch, |f| frames.push(f.to_vec()))
            .unwrap();
        assert_eq!(frames, vec![frame]);
        assert_eq!(port.zero_length_frames, 1);
    }

    #[test]
    fn lying_length_header_closes_the_port() {
        let (mut port, mut peer) = stream_pair();
        peer.write_all(&70000u32.to_be_bytes()).unwrap();
        let err = port.read_frames(1514, &mut [], |_| {}).unwrap_err();
        assert!(
            matches!(err, PortError::Oversize { len: 70000, .. }),
            "{err}"
        );
        // A header promising more than arrives before EOF is a truncation.
        let (mut port, mut peer) = stream_pair();
        peer.write_all(&[0, 0, 0, 100, 1, 2, 3]).unwrap();
        drop(peer);
        port.read_frames(1514, &mut [], |_| {}).ok();
        let err = port.read_frames(1514, &mut [], |_| {}).unwrap_err();
        assert!(matches!(err, PortError::Truncated(7)), "{err}");
    }

    #[test]
    fn queued_output_is_bounded_per_port_and_per_network() {
        let budget = QueueBudget::new();
        let mut ports: Vec<(Port, UnixStream)> = (0..8)
            .map(|i| {
                let (a, b) = UnixStream::pair().unwrap();
                a.set_nonblocking(true).unwrap();
                let io = Io::Stream(OwnedFd::from(a));
                (
                    Port::with_budget(io, format!("p{i}"), Rc::clone(&budget)),
                    b,
                )
            })
            .collect();
        // Nobody reads: queue far more than the budget to every port.
        let frame = vec![0u8; 64 << 10];
        for _ in 0..(MAX_QUEUED_BYTES / frame.len()) * 2 {
            for (port, _) in &mut ports {
                let _ = port.queue(frame.clone());
            }
        }
        assert!(budget.queued() <= MAX_NETWORK_QUEUED_BYTES + 8 * PORT_GUARANTEED_BYTES);
        assert!(ports.iter().all(|(p, _)| p.queued <= MAX_QUEUED_BYTES));
        assert!(budget.dropped() > 0);
        // A port that had nothing queued still gets its guaranteed share.
        let (a, _peer) = UnixStream::pair().unwrap();
        let mut late =
            Port::with_budget(Io::Stream(OwnedFd::from(a)), "late".into(), budget.clone());
        assert!(late.queue(frame.clone()).is_none());
        // Draining a port gives its bytes back to the network.
        let before = budget.queued();
        let held = ports[0].0.queued;
        ports[0].0.drain(drop);
        assert_eq!(budget.queued(), before - held);
    }

    #[test]
    fn stream_output_is_length_prefixed() {
        let (mut port, mut peer) = stream_pair();
        assert!(port.queue(vec![1, 2, 3]).is_none());
        assert!(port.queue(vec![4]).is_none());
        let mut recycled = 0;
        port.flush(|_| recycled += 1).unwrap();
        assert_eq!(recycled, 2);
        let mut got = [0u8; 12];
        peer.read_exact(&mut got).unwrap();
        assert_eq!(got, [0, 0, 0, 3, 1, 2, 3, 0, 0, 0, 1, 4]);
    }

    fn record(payload: &[u8]) -> Vec<u8> {
        let mut r = (payload.len() as u32).to_be_bytes().to_vec();
        r.extend_from_slice(payload);
        r
    }

    fn read_record(peer: &mut UnixStream) -> Vec<u8> {
        let mut len = [0u8; 4];
        peer.read_exact(&mut len).unwrap();
        let mut buf = vec![0u8; u32::from_be_bytes(len) as usize];
        peer.read_exact(&mut buf).unwrap();
        buf
    }

    #[test]
    fn a_hello_that_offers_its_tap_stops_the_reads_until_the_server_takes_it() {
        use limanet_netstack::stream_offload::{self as so, Kind};
        let both = so::FEATURE_VNET_HDR_V1 | so::FEATURE_TAP_FD;
        let (mut port, mut peer) = stream_pair();
        port.offer_features(both);
        let mac = [2, 0, 0, 0, 0, 7];
        let mut bytes = record(&so::build(Kind::Hello, mac, both));
        // Whatever follows the hello stays unread: it belongs to the server's own `recvmsg`.
        bytes.extend(record(&so::build(Kind::TapFd, mac, both)));
        peer.write_all(&bytes).unwrap();
        let mut got = 0;
        let status = port
            .read_frames_with(1514, &mut [], |_, _| got += 1)
            .unwrap();
        assert_eq!((status, got), (ReadStatus::Drained, 0));
        assert!(port.take_negotiated() && port.tap_awaited());
        assert_eq!(port.features(), both);
        // Read with the hello (one `read`), so unparsed: the server refuses such a client.
        assert_eq!(port.unparsed(), 64);
        let status = port
            .read_frames_with(1514, &mut [], |_, _| got += 1)
            .unwrap();
        assert_eq!((status, got), (ReadStatus::Drained, 0));
        port.flush(drop).unwrap();
        let ack = so::parse(&read_record(&mut peer)).unwrap();
        assert_eq!((ack.kind, ack.features), (Kind::Ack, both));
        // A server that offers only the header grants only that.
        let (mut port, mut peer) = stream_pair();
        port.offer_offloads();
        peer.write_all(&record(&so::build(Kind::Hello, mac, both)))
            .unwrap();
        port.read_frames_with(1514, &mut [], |_, _| {}).unwrap();
        assert_eq!(port.features(), so::FEATURE_VNET_HDR_V1);
        assert!(!port.tap_awaited());
    }

    #[test]
    fn a_hello_switches_the_stream_to_offload_records() {
        use limanet_netstack::stream_offload::{self as so, Kind};
        let (mut port, mut peer) = stream_pair();
        port.offer_offloads();
        // The server sends a plain frame before the hello arrives (a broadcast, say).
        assert!(port.queue(vec![9u8; 60]).is_none());
        let mac = [2, 0, 0, 0, 0, 7];
        peer.write_all(&record(&so::build(
            Kind::Hello,
            mac,
            so::FEATURE_VNET_HDR_V1,
        )))
        .unwrap();
        let mut got = Vec::new();
        let mut scratch = [];
        port.read_frames_with(1514, &mut scratch, |f, h| {
            got.push((f.to_vec(), h.copied()))
        })
        .unwrap();
        assert!(got.is_empty(), "the hello is not a frame");
        assert!(port.take_negotiated());
        assert!(!port.take_negotiated());
        assert!(port.vnet_hdr());
        // A super-segment to the client, with its header.
        let hdr = VnetHeader::tcpv4(54, 3000, 1448);
        assert!(port.queue_with(vec![1u8; 3054], Some(hdr)).is_none());
        port.flush(drop).unwrap();
        assert_eq!(read_record(&mut peer), vec![9u8; 60]);
        let ack = read_record(&mut peer);
        assert_eq!(
            so::parse(&ack).map(|c| (c.kind, c.mac)),
            Some((Kind::Ack, mac))
        );
        let r = read_record(&mut peer);
        let (back, frame) = so::parse_record(&r).unwrap();
        assert_eq!((back, frame.len()), (hdr, 3054));
        // From the client: a super-segment over the MTU, a lying header (dropped, counted,
        // the connection stays), a plain frame.
        let mut bytes = record(&r);
        let mut lie = so::header_bytes(&VnetHeader { gso_size: 0, ..hdr }).to_vec();
        lie.extend_from_slice(&[1u8; 3054]);
        bytes.extend(record(&lie));
        let mut plain = so::header_bytes(&VnetHeader::default()).to_vec();
        plain.extend_from_slice(&[3u8; 60]);
        bytes.extend(record(&plain));
        peer.write_all(&bytes).unwrap();
        port.read_frames_with(1514, &mut scratch, |f, h| {
            got.push((f.to_vec(), h.copied()))
        })
        .unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!((got[0].0.len(), got[0].1), (3054, Some(hdr)));
        assert_eq!(got[1], (vec![3u8; 60], Some(VnetHeader::default())));
        assert_eq!((port.bad_headers, port.dropped), (1, 1));
    }

    #[test]
    fn a_client_that_starts_with_frames_stays_plain() {
        use limanet_netstack::stream_offload::{self as so, Kind};
        let (mut port, mut peer) = stream_pair();
        port.offer_offloads();
        let hello = so::build(Kind::Hello, [2, 0, 0, 0, 0, 8], so::FEATURE_VNET_HDR_V1);
        let mut bytes = record(&[5u8; 60]);
        bytes.extend(record(&hello));
        peer.write_all(&bytes).unwrap();
        let mut got = Vec::new();
        port.read_frames(1514, &mut [], |f| got.push(f.to_vec()))
            .unwrap();
        // A hello that is not the first frame is just a frame.
        assert_eq!(got, vec![vec![5u8; 60], hello]);
        assert!(!port.take_negotiated() && !port.vnet_hdr());
        // Without the offer (QEMU listeners elsewhere), a first hello is a frame too.
        let (mut port, mut peer) = stream_pair();
        peer.write_all(&record(&so::build(Kind::Hello, [2; 6], 1)))
            .unwrap();
        let mut n = 0;
        port.read_frames(1514, &mut [], |_| n += 1).unwrap();
        assert_eq!(n, 1);
        assert!(!port.vnet_hdr());
        // Plain offload-state frames never go to a plain port.
        let hdr = VnetHeader::tcpv4(54, 3000, 1448);
        assert!(port.queue_with(vec![0u8; 3054], Some(hdr)).is_some());
    }

    #[test]
    fn direct_sends_that_block_midway_keep_records_whole_and_in_order() {
        let (mut port, mut peer) = stream_pair();
        sys::set_buffer_sizes(port.raw_fd(), 8 << 10, 8 << 10);
        // Far more than the socket holds: some go out whole, one in part, the rest queued.
        let frames: Vec<Vec<u8>> = (0..64u8)
            .map(|i| vec![i; 1000 + usize::from(i) * 37])
            .collect();
        for f in &frames {
            assert!(port.send(f, None, Vec::new).is_none());
        }
        assert!(port.has_output(), "the socket filled up");
        let reader =
            std::thread::spawn(move || frames.iter().all(|f| read_record(&mut peer) == *f));
        while port.has_output() {
            port.flush(drop).unwrap();
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(reader.join().unwrap(), "records differ");
    }
}
