//! The daemon's data plane: one mio loop (edge-triggered, non-blocking) around the switch.
//!
//! Port 0 is the host port (TAP or packet socket); every accepted connection is a client port
//! speaking QEMU's stream framing, through `limanet_runtime::transport::Port` (which bounds each
//! port's output queue and rejects lying lengths). A client that sends a bad frame (length over
//! [`MAX_CLIENT_FRAME`], zero length, or a connection closed mid-frame) is disconnected with one
//! log line; the others carry on. A client that stops reading fills its own queue and loses its
//! own frames (counted), without slowing anyone else.
//!
//! Offloads: a client may negotiate the stream protocol's offload extension
//! (`limanet_netstack::stream_offload`; `limanet attach` does) and the host TAP carries a
//! virtio-net header, so TCP super-segments and partial checksums travel between them whole.
//! Frames carry their offload state to ports that have offloads; ports without them (QEMU,
//! socket_vmnet-style clients) get them cut into packets with complete checksums, in software.
//!
//! Passed TAPs: a client that negotiated `stream_offload::FEATURE_TAP_FD` too (`limanet
//! attach`) sends its TAP's descriptor instead of relaying frames. The TAP, once checked
//! (`limanet_runtime::adopt_passed_tap`), becomes that client's port, read and written here
//! directly (two copies per frame between two such VMs instead of six, in one process instead
//! of three), with the same MAC rules, queue bound and header checks as any client's. The
//! connection stays open only to tie the TAP to the client: when it closes, the port and the
//! TAP go. Anything else on the connection (data, a descriptor that is no TAP) disconnects the
//! client with one log line.

use crate::gateway::{dhcp_request, Gateway};
use crate::switch::{MacTable, Route, TableLimits, Verdict};
use limanet_netstack::stream_offload::{self, Kind, FEATURE_TAP_FD, FEATURE_VNET_HDR_V1};
use limanet_netstack::vnet::{self, VnetHeader};
use limanet_runtime::transport::{Io, Port, PortError, QueueBudget, ReadStatus, MAX_OFFLOAD_READ};
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use std::collections::HashSet;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::time::{Duration, Instant};
use tracing::{debug, error, info, warn};

/// Largest frame a client may send: socket_vmnet's limit (64 KiB).
pub const MAX_CLIENT_FRAME: usize = 64 * 1024;
/// Largest frame read from the host side.
const MAX_HOST_FRAME: usize = 64 * 1024;
/// Clients beyond this are refused.
const MAX_CLIENTS: usize = 1024;
const LISTENER: Token = Token(0);
const STOP: Token = Token(1);
const FIRST_PORT: usize = 2;
/// Tokens of the connections whose client passed its TAP: this bit plus the port's index.
const CONTROL: usize = 1 << 40;
const HOST: usize = 0;
/// Output queue per client: with 4 MiB socket buffers, enough for bursts at full speed; a
/// stalled client costs at most this much (times [`MAX_CLIENTS`] in the very worst case).
const CLIENT_QUEUE_BYTES: usize = 4 << 20;
/// Recycled frame buffers kept ...
const POOL_MAX: usize = 4096;
/// ... of which this many may be large (super-segments: up to 64 KiB each).
const POOL_MAX_LARGE: usize = 64;
const LARGE_BUFFER: usize = 4096;

/// Puts a written or dropped buffer back into the pool, within its bounds.
fn keep(pool: &mut Vec<Vec<u8>>, b: Vec<u8>) {
    let limit = if b.capacity() > LARGE_BUFFER {
        POOL_MAX_LARGE
    } else {
        POOL_MAX
    };
    if pool.len() < limit && b.capacity() <= 2 * MAX_OFFLOAD_READ {
        pool.push(b);
    }
}

struct Slot {
    port: Port,
    /// The client's connection once its TAP is the port: it only signals the client's end.
    control: Option<OwnedFd>,
}

/// Counters, for logs and tests.
#[derive(Debug, Default, Clone, Copy)]
pub struct Stats {
    pub clients_accepted: u64,
    pub clients_rejected: u64,
    pub frames: u64,
    pub runts: u64,
    /// Offloaded frames that could not be cut or checksummed for a port without offloads.
    pub bad_offload: u64,
}

/// A running switch.
pub struct Daemon {
    poll: Poll,
    listener: UnixListener,
    _stop: OwnedFd,
    ports: Vec<Option<Slot>>,
    table: MacTable,
    gateway: Option<Gateway>,
    pending: HashSet<usize>,
    dirty: Vec<usize>,
    scratch: Vec<u8>,
    /// Frames for the port being read (DHCP replies), queued once its read is done.
    replies: Vec<Vec<u8>>,
    /// Segments of one frame on their way to ports without offloads.
    cut: Vec<Vec<u8>>,
    pool: Vec<Vec<u8>>,
    next_client: u64,
    /// Output queued to all ports together is bounded too (runtime's network-wide budget).
    budget: std::rc::Rc<QueueBudget>,
    fatal: Option<String>,
    pub stats: Stats,
}

impl Daemon {
    /// `host` is the TAP or packet socket (`host_vnet_hdr`: a TAP opened with a virtio-net
    /// header and offloads); `stop` a descriptor (signalfd) that ends the loop when readable.
    pub fn new(
        listener: UnixListener,
        host: OwnedFd,
        host_vnet_hdr: bool,
        host_name: String,
        stop: OwnedFd,
        gateway: Option<Gateway>,
    ) -> io::Result<Self> {
        let poll = Poll::new()?;
        listener.set_nonblocking(true)?;
        poll.registry().register(
            &mut SourceFd(&listener.as_raw_fd()),
            LISTENER,
            Interest::READABLE,
        )?;
        poll.registry()
            .register(&mut SourceFd(&stop.as_raw_fd()), STOP, Interest::READABLE)?;
        limanet_runtime::sys::set_nonblocking(host.as_raw_fd())?;
        let mut table = MacTable::new(TableLimits::default());
        if let Some(gw) = &gateway {
            table.reserve(gw.mac());
        }
        let mut d = Daemon {
            poll,
            listener,
            _stop: stop,
            ports: Vec::new(),
            table,
            gateway,
            pending: HashSet::new(),
            dirty: Vec::new(),
            scratch: vec![0; MAX_HOST_FRAME.max(MAX_CLIENT_FRAME).max(MAX_OFFLOAD_READ) + 4],
            replies: Vec::new(),
            cut: Vec::new(),
            pool: Vec::new(),
            next_client: 0,
            budget: QueueBudget::new(),
            fatal: None,
            stats: Stats::default(),
        };
        let idx = d.add_port(Io::Packet(host), host_name)?;
        debug_assert_eq!(idx, HOST);
        if host_vnet_hdr {
            if let Some(Some(slot)) = d.ports.get_mut(HOST) {
                slot.port.set_vnet_hdr();
            }
        }
        Ok(d)
    }

    fn add_port(&mut self, io: Io, name: String) -> io::Result<usize> {
        let idx = match self.ports.iter().position(Option::is_none) {
            Some(i) => i,
            None => {
                self.ports.push(None);
                self.ports.len() - 1
            }
        };
        let mut port = Port::with_budget(io, name, std::rc::Rc::clone(&self.budget));
        port.set_queue_limit(CLIENT_QUEUE_BYTES);
        port.offer_features(FEATURE_VNET_HDR_V1 | FEATURE_TAP_FD);
        self.poll.registry().register(
            &mut SourceFd(&port.raw_fd()),
            Token(FIRST_PORT + idx),
            Interest::READABLE | Interest::WRITABLE,
        )?;
        self.ports[idx] = Some(Slot {
            port,
            control: None,
        });
        // Edge-triggered: data that arrived before registration raises no event.
        self.pending.insert(idx);
        Ok(idx)
    }

    /// Runs until the stop descriptor fires (Ok) or the host port fails (Err).
    pub fn run(&mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(1024);
        let mut last_expiry = Instant::now();
        loop {
            let timeout = if self.pending.is_empty() {
                Duration::from_secs(30)
            } else {
                Duration::ZERO
            };
            if let Err(e) = self.poll.poll(&mut events, Some(timeout)) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            let now = Instant::now();
            for event in events.iter() {
                match event.token() {
                    LISTENER => self.accept_all(),
                    STOP => {
                        self.log_stats();
                        return Ok(());
                    }
                    Token(t) if t & CONTROL != 0 => self.control_event(t & !CONTROL),
                    Token(t) => {
                        let idx = t - FIRST_PORT;
                        if event.is_writable() {
                            self.flush(idx);
                        }
                        if event.is_readable() || event.is_read_closed() || event.is_error() {
                            self.read(idx, now);
                        }
                    }
                }
            }
            let pending: Vec<usize> = self.pending.drain().collect();
            for idx in pending {
                self.read(idx, now);
            }
            let dirty = std::mem::take(&mut self.dirty);
            for idx in dirty {
                self.flush(idx);
            }
            if let Some(reason) = self.fatal.take() {
                self.log_stats();
                return Err(io::Error::other(reason));
            }
            if now.duration_since(last_expiry) > Duration::from_secs(60) {
                last_expiry = now;
                self.table.expire(now);
            }
        }
    }

    fn log_stats(&self) {
        info!(
            clients = self.stats.clients_accepted,
            rejected = self.stats.clients_rejected,
            frames = self.stats.frames,
            runts = self.stats.runts,
            bad_offload = self.stats.bad_offload,
            macs = self.table.len(),
            unlearnt = self.table.unlearnt,
            bad_source = self.table.drops.bad_source,
            stolen_mac = self.table.drops.stolen,
            port_full = self.table.drops.port_full,
            "switch statistics"
        );
    }

    fn clients(&self) -> usize {
        self.ports.iter().skip(1).filter(|p| p.is_some()).count()
    }

    fn accept_all(&mut self) {
        loop {
            let stream = match self.listener.accept() {
                Ok((s, _)) => s,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    if e.kind() != io::ErrorKind::WouldBlock {
                        warn!(error = %e, "accept failed");
                    }
                    return;
                }
            };
            if self.clients() >= MAX_CLIENTS {
                self.stats.clients_rejected += 1;
                warn!(max = MAX_CLIENTS, "too many clients, refusing a connection");
                continue;
            }
            if let Err(e) = stream.set_nonblocking(true) {
                warn!(error = %e, "cannot set up a connection");
                continue;
            }
            limanet_runtime::sys::set_buffer_sizes(stream.as_raw_fd(), 4 << 20, 4 << 20);
            self.next_client += 1;
            let name = format!("client#{}", self.next_client);
            match self.add_port(Io::Stream(OwnedFd::from(stream)), name.clone()) {
                Ok(idx) => {
                    self.stats.clients_accepted += 1;
                    info!(client = %name, port = idx, "client connected");
                }
                Err(e) => warn!(error = %e, "cannot add a client"),
            }
        }
    }

    fn read(&mut self, idx: usize, now: Instant) {
        if self.awaiting_tap(idx) {
            return self.receive_tap(idx);
        }
        // Out of the table while it is read, so its frames are switched straight from its
        // read buffer (see `send`); whatever is sent back to it meanwhile waits in `replies`.
        let Some(mut slot) = self.ports.get_mut(idx).and_then(Option::take) else {
            return;
        };
        let max = if idx == HOST {
            MAX_HOST_FRAME
        } else {
            MAX_CLIENT_FRAME
        };
        let mut scratch = std::mem::take(&mut self.scratch);
        let result = slot
            .port
            .read_frames_with(max, &mut scratch, |frame, vnet| {
                self.switch_frame(idx, frame, vnet.copied(), now)
            });
        self.scratch = scratch;
        let zero_length = idx != HOST && slot.port.zero_length_frames > 0;
        if slot.port.take_negotiated() {
            info!(port = %slot.port.name, tap = slot.port.tap_awaited(), "client negotiated offloads");
            // The ack waits in the port's queue.
            self.dirty.push(idx);
            if slot.port.tap_awaited() {
                // Its descriptor may have arrived with the hello's readiness event already.
                self.pending.insert(idx);
            }
        }
        self.ports[idx] = Some(slot);
        for reply in std::mem::take(&mut self.replies) {
            self.queue(idx, reply);
        }
        if zero_length {
            return self.remove(idx, Some("zero-length frame".to_string()));
        }
        match result {
            Ok(ReadStatus::Drained) => {}
            Ok(ReadStatus::More) => {
                self.pending.insert(idx);
            }
            Ok(ReadStatus::Closed) => self.remove(idx, None),
            Err(PortError::Io(e)) if e.kind() == io::ErrorKind::ConnectionReset => {
                self.remove(idx, None)
            }
            Err(e) => self.remove(idx, Some(e.to_string())),
        }
    }

    fn recycle(&mut self, b: Vec<u8>) {
        keep(&mut self.pool, b);
    }

    fn switch_frame(&mut self, from: usize, frame: &[u8], vnet: Option<VnetHeader>, now: Instant) {
        self.stats.frames += 1;
        if frame.len() < 14 {
            self.stats.runts += 1;
            return;
        }
        let mut dst = [0u8; 6];
        dst.copy_from_slice(&frame[0..6]);
        let mut src = [0u8; 6];
        src.copy_from_slice(&frame[6..12]);
        if from == HOST {
            self.table.learn(src, from, now);
        } else {
            match self.table.learn_client(src, from, now) {
                Verdict::Accept => {}
                Verdict::PortFull { first: true } => {
                    warn!(
                        port = from,
                        "client uses too many source MAC addresses; frames from more are dropped"
                    );
                    return;
                }
                verdict => {
                    debug!(
                        port = from,
                        ?verdict,
                        "frame with a refused source MAC dropped"
                    );
                    return;
                }
            }
        }
        if from != HOST {
            if let Some(gw) = &mut self.gateway {
                if let Some((mac, payload)) = dhcp_request(frame) {
                    let table = &self.table;
                    let on_port = |m: &[u8; 6]| table.port_of(m) == Some(from);
                    if let Some(reply) = gw.handle(now, from, &on_port, mac, payload) {
                        self.replies.push(reply);
                    }
                    return;
                }
            }
        }
        // Offload state matters only where it is not plain.
        let vnet = vnet.filter(|v| !v.is_plain());
        match self.table.route(dst, from, now) {
            Route::Port(to) => self.deliver(to, frame, vnet),
            Route::Drop => {}
            Route::Flood => {
                let targets: Vec<usize> = (0..self.ports.len())
                    .filter(|&i| i != from && self.ports[i].is_some())
                    .collect();
                let Some((&last, rest)) = targets.split_last() else {
                    return;
                };
                for &to in rest {
                    self.deliver(to, frame, vnet);
                }
                self.deliver(last, frame, vnet);
            }
        }
    }

    /// Queues a frame with its offload state to a port with offloads, or as ordinary packets
    /// (cut, checksums completed) to a port without.
    fn deliver(&mut self, to: usize, frame: &[u8], vnet: Option<VnetHeader>) {
        let Some(hdr) = vnet else {
            return self.send(to, frame, None);
        };
        let Some(Some(slot)) = self.ports.get(to) else {
            return;
        };
        if slot.port.tap_awaited() {
            return;
        }
        if slot.port.vnet_hdr() {
            return self.send(to, frame, Some(hdr));
        }
        let mut cut = std::mem::take(&mut self.cut);
        let pool = &mut self.pool;
        let result = vnet::to_plain(
            frame,
            &hdr,
            || pool.pop().unwrap_or_default(),
            |f| cut.push(f),
        );
        if let Err(e) = result {
            self.stats.bad_offload += 1;
            if self.stats.bad_offload.is_power_of_two() {
                warn!(error = %e, count = self.stats.bad_offload, "dropping an offloaded frame that cannot be cut into packets");
            }
        }
        for f in cut.drain(..) {
            if result.is_ok() {
                self.queue(to, f);
            } else {
                self.recycle(f);
            }
        }
        self.cut = cut;
    }

    /// Sends a frame to a port now if its queue is empty (no copy), or queues a copy.
    fn send(&mut self, to: usize, frame: &[u8], vnet: Option<VnetHeader>) {
        let Some(Some(slot)) = self.ports.get_mut(to) else {
            return;
        };
        // A client between its ack and its TAP gets nothing: it reads no more frames.
        if slot.port.tap_awaited() {
            return;
        }
        let idle = !slot.port.has_output();
        let pool = &mut self.pool;
        if let Some(refused) = slot
            .port
            .send(frame, vnet, || pool.pop().unwrap_or_default())
        {
            keep(pool, refused);
        }
        if idle && slot.port.has_output() {
            self.dirty.push(to);
        }
    }

    fn queue(&mut self, to: usize, frame: Vec<u8>) {
        self.queue_with(to, frame, None)
    }

    fn queue_with(&mut self, to: usize, frame: Vec<u8>, vnet: Option<VnetHeader>) {
        let Some(Some(slot)) = self.ports.get_mut(to) else {
            return self.recycle(frame);
        };
        if !slot.port.has_output() {
            self.dirty.push(to);
        }
        if let Some(f) = slot.port.queue_with(frame, vnet) {
            self.recycle(f);
        }
    }

    fn flush(&mut self, idx: usize) {
        let Some(Some(slot)) = self.ports.get_mut(idx) else {
            return;
        };
        let pool = &mut self.pool;
        let result = slot.port.flush(|b| keep(pool, b));
        if let Err(e) = result {
            debug!(error = %e, port = idx, "write failed");
            let reason = match e.raw_os_error() {
                Some(libc::EPIPE) | Some(libc::ECONNRESET) => None,
                _ => Some(format!("write error: {e}")),
            };
            self.remove(idx, reason);
        }
    }

    fn awaiting_tap(&self, idx: usize) -> bool {
        matches!(self.ports.get(idx), Some(Some(s)) if s.port.tap_awaited())
    }

    /// Receives the TAP a client that negotiated passing it sends (one control record with
    /// the descriptor), checks it and makes it the client's port.
    fn receive_tap(&mut self, idx: usize) {
        let Some(Some(slot)) = self.ports.get(idx) else {
            return;
        };
        if slot.port.unparsed() > 0 {
            return self.remove(idx, Some("data after the hello that offered a TAP".into()));
        }
        let fd = slot.port.raw_fd();
        // One record: a 4-byte length and a control frame of the minimum frame size.
        let mut buf = [0u8; 128];
        let (n, tap) = match limanet_runtime::sys::recv_with_fd(fd, &mut buf) {
            Ok(v) => v,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {
                self.pending.insert(idx);
                return;
            }
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return self.remove(idx, None),
            Err(e) => return self.remove(idx, Some(format!("receiving its TAP: {e}"))),
        };
        if n == 0 && tap.is_none() {
            return self.remove(idx, None);
        }
        let record_ok = n > 4
            && usize::try_from(u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]))
                .is_ok_and(|len| len == n - 4)
            && stream_offload::parse(&buf[4..n]).is_some_and(|c| c.kind == Kind::TapFd);
        let Some(tap) = tap.filter(|_| record_ok) else {
            return self.remove(idx, Some("expected its TAP's descriptor".into()));
        };
        let passed = match limanet_runtime::adopt_passed_tap(&tap) {
            Ok(p) => p,
            Err(e) => return self.remove(idx, Some(format!("refused the passed descriptor: {e}"))),
        };
        if let Err(e) = self.make_tap_port(idx, tap, &passed.name) {
            return self.remove(idx, Some(format!("cannot use its TAP: {e}")));
        }
        if let Some(Some(slot)) = self.ports.get(idx) {
            info!(
                client = %slot.port.name,
                offloads = format!("{:#x}", passed.offloads),
                "client passed its TAP: switched here directly"
            );
        }
    }

    /// Swaps client `idx`'s stream port for a port on its TAP; the stream stays as the
    /// control connection.
    fn make_tap_port(&mut self, idx: usize, tap: OwnedFd, tap_name: &str) -> io::Result<()> {
        let Some(Some(slot)) = self.ports.get_mut(idx) else {
            return Ok(());
        };
        limanet_runtime::sys::set_nonblocking(tap.as_raw_fd())?;
        let name = format!("{}({tap_name})", slot.port.name);
        let mut port = Port::with_budget(Io::Packet(tap), name, std::rc::Rc::clone(&self.budget));
        port.set_queue_limit(CLIENT_QUEUE_BYTES);
        port.set_vnet_hdr();
        port.check_vnet_headers();
        let registry = self.poll.registry();
        registry.deregister(&mut SourceFd(&slot.port.raw_fd()))?;
        registry.register(
            &mut SourceFd(&slot.port.raw_fd()),
            Token(CONTROL | idx),
            Interest::READABLE,
        )?;
        registry.register(
            &mut SourceFd(&port.raw_fd()),
            Token(FIRST_PORT + idx),
            Interest::READABLE | Interest::WRITABLE,
        )?;
        let mut old = std::mem::replace(&mut slot.port, port);
        let pool = &mut self.pool;
        old.drain(|b| keep(pool, b));
        if let Io::Stream(stream) = old.io {
            slot.control = Some(stream);
        }
        // Edge-triggered: frames the namespace sent already raise no event.
        self.pending.insert(idx);
        Ok(())
    }

    /// The connection of a client whose TAP is its port: closed means the client is gone;
    /// anything sent on it is a protocol error.
    fn control_event(&mut self, idx: usize) {
        let Some(Some(Slot {
            control: Some(control),
            ..
        })) = self.ports.get(idx)
        else {
            return;
        };
        let mut b = [0u8; 64];
        // SAFETY: reading into a live local buffer.
        let n = unsafe { libc::read(control.as_raw_fd(), b.as_mut_ptr().cast(), b.len()) };
        if n == 0 {
            return self.remove(idx, None);
        }
        if n > 0 {
            return self.remove(idx, Some("data on the connection after its TAP".into()));
        }
        let e = io::Error::last_os_error();
        match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => {}
            io::ErrorKind::ConnectionReset => self.remove(idx, None),
            _ => self.remove(idx, Some(format!("connection: {e}"))),
        }
    }

    /// Closes a port; `error` is the protocol or I/O error that made us close it.
    fn remove(&mut self, idx: usize, error: Option<String>) {
        let Some(Some(mut slot)) = self.ports.get_mut(idx).map(Option::take) else {
            return;
        };
        let _ = self
            .poll
            .registry()
            .deregister(&mut SourceFd(&slot.port.raw_fd()));
        if let Some(control) = &slot.control {
            let _ = self
                .poll
                .registry()
                .deregister(&mut SourceFd(&control.as_raw_fd()));
        }
        self.pending.remove(&idx);
        self.table.forget_port(idx);
        let pool = &mut self.pool;
        slot.port.drain(|b| keep(pool, b));
        let name = slot.port.name.clone();
        let dropped = slot.port.dropped;
        if idx == HOST {
            let reason = error.unwrap_or_else(|| "closed".into());
            error!(port = %name, %reason, "the host side of the network failed");
            self.fatal = Some(format!("host port {name}: {reason}"));
            return;
        }
        match error {
            Some(e) => warn!(client = %name, error = %e, dropped, "disconnecting client"),
            None => info!(client = %name, dropped, "client disconnected"),
        }
    }
}
