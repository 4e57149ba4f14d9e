//! A vhost-user-net backend for QEMU (`-netdev vhost-user`): the guest's virtio-net queues live
//! in guest memory that QEMU shares with limanet (`memory-backend-memfd,share=on`), so frames
//! move between the guest and limanet with one copy each way and no socket in between, and the
//! guest's virtio-net offloads (partial checksums, 64 KiB TCP super-segments, mergeable receive
//! buffers) carry over to the netstack exactly as a TAP's virtio-net header does.
//!
//! Built on the rust-vmm crates: `vhost` speaks the vhost-user protocol, `vhost-user-backend`
//! runs it (one thread per connection for the protocol messages, one "vring worker" thread
//! that waits for the guest's kicks), `virtio-queue` walks the descriptor rings with bounds
//! checks, `vm-memory` maps the guest memory.
//!
//! ## Threads
//!
//! limanet's network loop is single-threaded (`Rc`, one epoll) while the backend crate runs its
//! own threads. The bridge is the simplest one that stays correct: the vring worker thread owns
//! the virtqueues and exchanges frames with the loop through two bounded queues in a
//! [`VhostPort`], each direction with an eventfd:
//!
//! - guest → limanet: the worker pops TX descriptor chains, copies each frame out of guest
//!   memory into `to_loop` and signals `loop_event`, which the network loop polls like any
//!   port's descriptor. When `to_loop` is full the worker stops taking TX chains (the guest's
//!   own queue fills, as with a slow NIC) until the loop has drained it and signals
//!   `backend_event`;
//! - limanet → guest: the port's output queue (bounded like every port's, see
//!   [`crate::transport`]) moves into `to_guest` (bounded too) and signals `backend_event`,
//!   which the worker polls beside the kicks; it writes the frames into the guest's RX buffers.
//!   A guest that stops refilling RX buffers only fills its own queues: frames to it are then
//!   dropped and counted, other ports never wait for it.
//!
//! Registering the kick eventfds in limanet's own epoll would save the hop, but the crate owns
//! them and their re-registration on every ring change; the bridge keeps the crate's threading
//! model intact and every guest-memory access on one thread.
//!
//! ## Connections
//!
//! A listener thread per socket path accepts one QEMU at a time. Each connection gets a fresh
//! backend and [`VhostPort`], announced to the loop through [`Incoming`]; when QEMU exits or
//! the socket closes, the port is marked closed (the loop removes it: its flows closed, its MAC
//! forgotten) and the thread listens again, so a restarted QEMU (or `reconnect=1` on its
//! chardev) connects to the same path.
//!
//! ## Bad input
//!
//! Descriptor chains pointing outside guest memory, chains shorter than the virtio-net header
//! or longer than the largest frame, are consumed (returned to the guest as used with length
//! 0) and counted; nothing from guest memory is trusted or unwrapped.

use crate::transport::MAX_OFFLOAD_FRAME;
use limanet_netstack::vnet::{VnetHeader, VNET_HDR_LEN};
use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tracing::{debug, info, warn};
use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost_user_backend::{VhostUserBackend, VhostUserDaemon, VringMutex, VringT};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_net::{
    VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_GUEST_TSO6,
    VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_TSO6, VIRTIO_NET_F_MRG_RXBUF,
};
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{GuestAddressSpace, GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{
    new_event_consumer_and_notifier, EventConsumer, EventFlag, EventNotifier,
};
use vmm_sys_util::eventfd::{EventFd, EFD_CLOEXEC, EFD_NONBLOCK};

type Memory = GuestMemoryAtomic<GuestMemoryMmap>;

/// Queue 0 receives (limanet → guest), queue 1 transmits (guest → limanet).
const RX_QUEUE: u16 = 0;
const TX_QUEUE: u16 = 1;
const NUM_QUEUES: usize = 2;
/// The worker's event for `backend_event` (the crate reserves `0..=NUM_QUEUES`).
const BRIDGE_EVENT: u16 = NUM_QUEUES as u16 + 1;
const MAX_QUEUE_SIZE: usize = 1024;
/// Bytes of guest frames waiting for the loop before the worker stops taking TX chains.
const MAX_TO_LOOP_BYTES: usize = 4 << 20;
/// Bytes of frames waiting for the guest's RX buffers beyond the port's own output queue.
const MAX_TO_GUEST_BYTES: usize = 2 << 20;
/// Frames the loop takes per readiness event before yielding to other ports.
const FRAMES_PER_READ: usize = 64;
/// `struct virtio_net_hdr_v1`: the legacy header plus `num_buffers`.
const HDR_V1_LEN: usize = VNET_HDR_LEN + 2;

fn bit(n: u32) -> u64 {
    1 << n
}

/// The virtio features limanet offers: virtio 1.0, mergeable RX buffers, checksum offload and
/// TSO both ways, event index and indirect descriptors; and `VHOST_USER_F_PROTOCOL_FEATURES`,
/// without which QEMU 7.2 refuses to start vhost on a virtio-net device ("unable to start
/// vhost net: 22"). No protocol extension is needed beyond that. (QEMU then enables the rings
/// before acking the features, which the vendored crates were patched to accept: see
/// `vendor/README.md`.)
pub fn offered_features() -> u64 {
    bit(VIRTIO_F_VERSION_1)
        | bit(VIRTIO_NET_F_MRG_RXBUF)
        | bit(VIRTIO_NET_F_CSUM)
        | bit(VIRTIO_NET_F_GUEST_CSUM)
        | bit(VIRTIO_NET_F_HOST_TSO4)
        | bit(VIRTIO_NET_F_HOST_TSO6)
        | bit(VIRTIO_NET_F_GUEST_TSO4)
        | bit(VIRTIO_NET_F_GUEST_TSO6)
        | bit(VIRTIO_RING_F_EVENT_IDX)
        | bit(VIRTIO_RING_F_INDIRECT_DESC)
        | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits()
}

/// What the guest's driver accepted, as far as the frame format goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Negotiated(pub u64);

impl Negotiated {
    /// Length of the header before every frame: `virtio_net_hdr_v1` (with `num_buffers`) for
    /// virtio 1.0 or mergeable buffers, else the legacy 10 bytes.
    pub fn header_len(self) -> usize {
        if self.0 & (bit(VIRTIO_F_VERSION_1) | bit(VIRTIO_NET_F_MRG_RXBUF)) != 0 {
            HDR_V1_LEN
        } else {
            VNET_HDR_LEN
        }
    }

    /// A frame may span several RX descriptor chains.
    pub fn mergeable(self) -> bool {
        self.0 & bit(VIRTIO_NET_F_MRG_RXBUF) != 0
    }

    /// The guest takes partial checksums and TCP/IPv4 super-segments: the netstack may hand it
    /// offloaded frames (otherwise it segments and checksums them first).
    pub fn guest_offloads(self) -> bool {
        let need = bit(VIRTIO_NET_F_GUEST_CSUM) | bit(VIRTIO_NET_F_GUEST_TSO4);
        self.0 & need == need
    }
}

/// A frame with the offload state of its virtio-net header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestFrame {
    pub vnet: VnetHeader,
    pub frame: Vec<u8>,
}

/// Frames counted away, for logs and the port's counters.
#[derive(Debug, Default)]
pub struct VhostCounters {
    /// Descriptor chains that were malformed (bad addresses, too short or too long).
    pub bad_chains: AtomicU64,
    /// Frames to the guest dropped: its RX queue not ready, or a frame larger than its buffers.
    pub rx_dropped: AtomicU64,
}

#[derive(Debug, Default)]
struct Bounded {
    frames: VecDeque<GuestFrame>,
    bytes: usize,
}

impl Bounded {
    fn push(&mut self, f: GuestFrame) {
        self.bytes += f.frame.len();
        self.frames.push_back(f);
    }

    fn pop(&mut self) -> Option<GuestFrame> {
        let f = self.frames.pop_front()?;
        self.bytes -= f.frame.len();
        Some(f)
    }

    fn push_front(&mut self, f: GuestFrame) {
        self.bytes += f.frame.len();
        self.frames.push_front(f);
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic on the other side leaves plain data behind: keep using it.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// One connected QEMU, shared by the network loop and the backend's worker thread.
#[derive(Debug)]
pub struct VhostPort {
    pub name: String,
    to_loop: Mutex<Bounded>,
    to_guest: Mutex<Bounded>,
    /// Worker → loop: frames ready, room in `to_guest`, features acked, connection closed.
    loop_event: EventFd,
    /// Loop → worker: frames for the guest, room in `to_loop`.
    backend_event: EventFd,
    tx_paused: AtomicBool,
    loop_waits_for_room: AtomicBool,
    features: AtomicU64,
    features_changed: AtomicBool,
    closed: AtomicBool,
    pub counters: VhostCounters,
}

impl VhostPort {
    pub fn new(name: String) -> io::Result<Self> {
        Ok(VhostPort {
            name,
            to_loop: Mutex::default(),
            to_guest: Mutex::default(),
            loop_event: EventFd::new(EFD_NONBLOCK | EFD_CLOEXEC)?,
            backend_event: EventFd::new(EFD_NONBLOCK | EFD_CLOEXEC)?,
            tx_paused: AtomicBool::new(false),
            loop_waits_for_room: AtomicBool::new(false),
            features: AtomicU64::new(0),
            features_changed: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            counters: VhostCounters::default(),
        })
    }

    /// The descriptor the network loop polls (readable when there is work for it).
    pub fn loop_fd(&self) -> RawFd {
        self.loop_event.as_raw_fd()
    }

    fn wake_loop(&self) {
        let _ = self.loop_event.write(1);
    }

    fn wake_backend(&self) {
        let _ = self.backend_event.write(1);
    }

    /// Loop side: takes up to a batch of guest frames; `None` once QEMU is gone and
    /// everything was taken. The bool says whether more frames are waiting.
    pub fn take_frames(&self, out: &mut Vec<GuestFrame>) -> Option<bool> {
        let _ = self.loop_event.read();
        let more = {
            let mut q = lock(&self.to_loop);
            while out.len() < FRAMES_PER_READ {
                let Some(f) = q.pop() else { break };
                out.push(f);
            }
            !q.frames.is_empty()
        };
        if self.tx_paused.load(Ordering::Acquire) && !out.is_empty() {
            self.wake_backend();
        }
        if !more && out.is_empty() && self.closed.load(Ordering::Acquire) {
            return None;
        }
        Some(more)
    }

    /// Loop side: the guest's offload support, if the driver (re)negotiated since last asked.
    pub fn take_offload_change(&self) -> Option<bool> {
        if self.features_changed.swap(false, Ordering::AcqRel) {
            Some(Negotiated(self.features.load(Ordering::Acquire)).guest_offloads())
        } else {
            None
        }
    }

    /// Loop side: moves frames (and their virtio-net headers) from the front of a port's
    /// output queue to the worker while `to_guest` has room; returns the bytes moved. What
    /// stays is moved on a later call: the worker wakes the loop once there is room again.
    pub fn send_from(
        &self,
        frames: &mut VecDeque<Vec<u8>>,
        headers: &mut VecDeque<Option<VnetHeader>>,
    ) -> usize {
        let mut q = lock(&self.to_guest);
        let mut moved = 0;
        while let Some(front) = frames.front() {
            if !q.frames.is_empty() && q.bytes + front.len() > MAX_TO_GUEST_BYTES {
                break;
            }
            let Some(frame) = frames.pop_front() else {
                break;
            };
            let vnet = headers.pop_front().flatten().unwrap_or_default();
            moved += frame.len();
            q.push(GuestFrame { vnet, frame });
        }
        // Under the lock, so the worker cannot miss it (it checks under the lock too).
        self.loop_waits_for_room
            .store(!frames.is_empty(), Ordering::Release);
        drop(q);
        if moved > 0 {
            self.wake_backend();
        }
        moved
    }

    /// QEMU is gone: the loop removes the port once it has taken what is left.
    fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.wake_loop();
    }
}

/// New connections for the network loop, announced by the listener threads.
#[derive(Debug)]
pub struct Incoming {
    event: EventFd,
    ports: Mutex<Vec<Arc<VhostPort>>>,
}

impl Incoming {
    pub fn new() -> io::Result<Arc<Self>> {
        Ok(Arc::new(Incoming {
            event: EventFd::new(EFD_NONBLOCK | EFD_CLOEXEC)?,
            ports: Mutex::default(),
        }))
    }

    pub fn fd(&self) -> RawFd {
        self.event.as_raw_fd()
    }

    /// Loop side: the ports connected since last asked.
    pub fn take(&self) -> Vec<Arc<VhostPort>> {
        let _ = self.event.read();
        std::mem::take(&mut *lock(&self.ports))
    }

    fn push(&self, port: Arc<VhostPort>) {
        lock(&self.ports).push(port);
        let _ = self.event.write(1);
    }
}

/// Serves vhost-user connections on `listener` (already bound, with the usual socket rules)
/// from a thread of its own, one connection at a time, for the life of the process.
pub fn spawn_listener(
    listener: UnixListener,
    path: PathBuf,
    incoming: Arc<Incoming>,
) -> io::Result<()> {
    // The crate's accept loop expects a blocking listener (it retries on EAGAIN).
    listener.set_nonblocking(false)?;
    std::thread::Builder::new()
        .name("vhost-user-listen".into())
        .spawn(move || {
            let mut listener = vhost::vhost_user::Listener::from(listener);
            let mut connection = 0u64;
            loop {
                connection += 1;
                let name = format!("vhost-user:{}#{connection}", path.display());
                if let Err(e) = serve_one(&mut listener, name, &incoming) {
                    warn!(path = %path.display(), error = %e, "vhost-user connection failed");
                    // Never spin on a persistent failure (e.g. out of descriptors).
                    std::thread::sleep(Duration::from_millis(200));
                }
            }
        })?;
    Ok(())
}

/// Accepts one QEMU and serves it until it goes away.
fn serve_one(
    listener: &mut vhost::vhost_user::Listener,
    name: String,
    incoming: &Incoming,
) -> io::Result<()> {
    let port = Arc::new(VhostPort::new(name.clone())?);
    let mem: Memory = GuestMemoryAtomic::new(GuestMemoryMmap::new());
    let backend = Arc::new(NetBackend {
        port: Arc::clone(&port),
        mem: mem.clone(),
    });
    let mut daemon = VhostUserDaemon::new(name.clone(), backend, mem)
        .map_err(|e| io::Error::other(e.to_string()))?;
    let handlers = daemon.get_epoll_handlers();
    let stop_workers = || handlers.iter().for_each(|h| h.send_exit_event());
    if let Some(h) = handlers.first() {
        if let Err(e) = h.register_listener(
            port.backend_event.as_raw_fd(),
            EventSet::IN,
            u64::from(BRIDGE_EVENT),
        ) {
            stop_workers();
            return Err(e);
        }
    }
    if let Err(e) = daemon.start(listener) {
        stop_workers();
        return Err(io::Error::other(e.to_string()));
    }
    info!(port = %name, "QEMU connected (vhost-user)");
    incoming.push(Arc::clone(&port));
    let result = daemon.wait();
    stop_workers();
    port.close();
    let bad = port.counters.bad_chains.load(Ordering::Relaxed);
    let dropped = port.counters.rx_dropped.load(Ordering::Relaxed);
    match result {
        Ok(()) => {
            info!(port = %name, bad_chains = bad, rx_dropped = dropped, "QEMU disconnected (vhost-user)")
        }
        Err(e) => {
            info!(port = %name, error = %e, bad_chains = bad, rx_dropped = dropped, "QEMU disconnected (vhost-user)")
        }
    }
    Ok(())
}

/// The crate's view of the device: two queues, the features above, and what to do on a kick.
struct NetBackend {
    port: Arc<VhostPort>,
    /// The same guest memory the crate maps on `SET_MEM_TABLE`.
    mem: Memory,
}

impl VhostUserBackend for NetBackend {
    type Bitmap = ();
    type Vring = VringMutex<Memory>;

    fn num_queues(&self) -> usize {
        NUM_QUEUES
    }

    fn max_queue_size(&self) -> usize {
        MAX_QUEUE_SIZE
    }

    fn features(&self) -> u64 {
        offered_features()
    }

    fn acked_features(&self, features: u64) {
        debug!(port = %self.port.name, features = format!("{features:#x}"), "guest features acked");
        self.port.features.store(features, Ordering::Release);
        self.port.features_changed.store(true, Ordering::Release);
        self.port.wake_loop();
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        VhostUserProtocolFeatures::empty()
    }

    fn set_event_idx(&self, _enabled: bool) {}

    fn update_memory(&self, _mem: Memory) -> io::Result<()> {
        // `self.mem` is the atomic handle the crate just updated.
        Ok(())
    }

    fn exit_event(&self, _thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        new_event_consumer_and_notifier(EventFlag::NONBLOCK | EventFlag::CLOEXEC).ok()
    }

    fn handle_event(
        &self,
        device_event: u16,
        _evset: EventSet,
        vrings: &[Self::Vring],
        _thread_id: usize,
    ) -> io::Result<()> {
        let (Some(rx), Some(tx)) = (
            vrings.get(usize::from(RX_QUEUE)),
            vrings.get(usize::from(TX_QUEUE)),
        ) else {
            return Ok(());
        };
        match device_event {
            RX_QUEUE => self.deliver(rx),
            TX_QUEUE => self.transmit(tx),
            BRIDGE_EVENT => {
                let _ = self.port.backend_event.read();
                self.deliver(rx)?;
                if self.port.tx_paused.load(Ordering::Acquire) {
                    self.transmit(tx)?;
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }
}

impl NetBackend {
    fn negotiated(&self) -> Negotiated {
        Negotiated(self.port.features.load(Ordering::Acquire))
    }

    /// Guest → limanet: takes TX chains while the loop's queue has room.
    fn transmit(&self, vring: &VringMutex<Memory>) -> io::Result<()> {
        let neg = self.negotiated();
        let mem = self.mem.memory();
        let mut state = vring.get_mut();
        if !state.get_queue().ready() || !state.is_enabled() {
            return Ok(());
        }
        let room = MAX_TO_LOOP_BYTES.saturating_sub(lock(&self.port.to_loop).bytes);
        let mut frames = Vec::new();
        let mut paused = false;
        let mut taken = 0usize;
        loop {
            let queue = state.get_queue_mut();
            queue.disable_notification(&*mem).map_err(queue_err)?;
            let outcome = take_tx_frames(
                queue,
                &mem,
                neg,
                room.saturating_sub(taken),
                &mut frames,
                &self.port.counters,
            )
            .map_err(queue_err)?;
            taken = frames.iter().map(|f| f.frame.len()).sum();
            if outcome == TxOutcome::Full {
                // Notifications stay off: the loop wakes us once it has drained its queue.
                paused = true;
                break;
            }
            if !state
                .get_queue_mut()
                .enable_notification(&*mem)
                .map_err(queue_err)?
            {
                break;
            }
        }
        self.port.tx_paused.store(paused, Ordering::Release);
        notify_guest(&mut state, &mem)?;
        drop(state);
        if !frames.is_empty() {
            let mut q = lock(&self.port.to_loop);
            for f in frames {
                q.push(f);
            }
            drop(q);
            self.port.wake_loop();
        }
        Ok(())
    }

    /// limanet → guest: fills RX buffers with the frames waiting in `to_guest`.
    fn deliver(&self, vring: &VringMutex<Memory>) -> io::Result<()> {
        let neg = self.negotiated();
        let mem = self.mem.memory();
        let mut state = vring.get_mut();
        let ready = state.get_queue().ready() && state.is_enabled();
        let mut delivered = false;
        loop {
            let Some(f) = lock(&self.port.to_guest).pop() else {
                break;
            };
            if !ready {
                // The guest's driver is not up: a NIC with the link down.
                self.port
                    .counters
                    .rx_dropped
                    .fetch_add(1, Ordering::Relaxed);
                continue;
            }
            let queue = state.get_queue_mut();
            match put_rx_frame(queue, &mem, neg, &f.vnet, &f.frame).map_err(queue_err)? {
                RxOutcome::Delivered => delivered = true,
                RxOutcome::Dropped => {
                    self.port
                        .counters
                        .rx_dropped
                        .fetch_add(1, Ordering::Relaxed);
                    delivered = true;
                }
                RxOutcome::NoBuffers { posted } => {
                    lock(&self.port.to_guest).push_front(f);
                    // The guest refills its ring as it takes what it got, which it may only
                    // do on an interrupt: signal this round's frames before waiting (retrying
                    // without it could wait for a guest that waits for us).
                    if delivered {
                        notify_guest(&mut state, &mem)?;
                    }
                    delivered = false;
                    // Ask for a kick when buffers come; retry at once if some came meanwhile.
                    let queue = state.get_queue_mut();
                    if wait_for_rx_buffers(queue, &mem, posted).map_err(queue_err)? {
                        continue;
                    }
                    break;
                }
            }
        }
        if delivered {
            notify_guest(&mut state, &mem)?;
        }
        drop(state);
        let q = lock(&self.port.to_guest);
        if self.port.loop_waits_for_room.load(Ordering::Acquire) && q.bytes < MAX_TO_GUEST_BYTES / 2
        {
            self.port
                .loop_waits_for_room
                .store(false, Ordering::Release);
            drop(q);
            self.port.wake_loop();
        }
        Ok(())
    }
}

/// Interrupts the guest for the buffers used so far, unless it asked not to be yet (EVENT_IDX).
fn notify_guest(
    state: &mut vhost_user_backend::VringState<Memory>,
    mem: &GuestMemoryMmap,
) -> io::Result<()> {
    if state
        .get_queue_mut()
        .needs_notification(mem)
        .map_err(queue_err)?
    {
        state.signal_used_queue()?;
    }
    Ok(())
}

fn queue_err(e: virtio_queue::Error) -> io::Error {
    io::Error::other(format!("virtqueue: {e}"))
}

#[derive(Debug, PartialEq, Eq)]
enum TxOutcome {
    /// Every available chain was taken.
    Drained,
    /// The room ran out with chains left.
    Full,
}

/// Pops TX descriptor chains until none is left or `room` bytes of frames were taken. Every
/// chain is returned to the guest as used; malformed ones are counted and their frames
/// dropped. An error means the queue itself is unusable (its rings outside guest memory).
fn take_tx_frames(
    queue: &mut Queue,
    mem: &GuestMemoryMmap,
    neg: Negotiated,
    room: usize,
    frames: &mut Vec<GuestFrame>,
    counters: &VhostCounters,
) -> Result<TxOutcome, virtio_queue::Error> {
    let mut taken = 0;
    loop {
        if taken >= room {
            return Ok(TxOutcome::Full);
        }
        let Some(chain) = queue.pop_descriptor_chain(mem) else {
            return Ok(TxOutcome::Drained);
        };
        let head = chain.head_index();
        match read_tx_chain(chain, mem, neg) {
            Ok(f) => {
                taken += f.frame.len();
                frames.push(f);
            }
            Err(why) => {
                counters.bad_chains.fetch_add(1, Ordering::Relaxed);
                debug!(why, "dropping a malformed TX descriptor chain");
            }
        }
        queue.add_used(mem, head, 0)?;
    }
}

fn read_tx_chain(
    chain: virtio_queue::DescriptorChain<&GuestMemoryMmap>,
    mem: &GuestMemoryMmap,
    neg: Negotiated,
) -> Result<GuestFrame, &'static str> {
    let hdr_len = neg.header_len();
    let mut reader = chain
        .reader(mem)
        .map_err(|_| "descriptor outside guest memory")?;
    let total = reader.available_bytes();
    if total < hdr_len {
        return Err("shorter than the virtio-net header");
    }
    if total - hdr_len > MAX_OFFLOAD_FRAME {
        return Err("longer than the largest frame");
    }
    let mut hdr = [0u8; HDR_V1_LEN];
    reader
        .read_exact(&mut hdr[..hdr_len])
        .map_err(|_| "unreadable header")?;
    let (vnet, _) = VnetHeader::parse(&hdr).map_err(|_| "unreadable header")?;
    let mut frame = vec![0; total - hdr_len];
    reader
        .read_exact(&mut frame)
        .map_err(|_| "unreadable frame")?;
    Ok(GuestFrame { vnet, frame })
}

/// Asks the guest to kick when it adds RX buffers, after a frame found the `posted` ones too
/// few; returns whether more came since (then retry at once). The crate's
/// `enable_notification` publishes our next position as `avail_event`, but with buffers posted
/// ([`put_rx_frame`] rewinds over them) the guest's avail index is already past it, and a guest
/// with `EVENT_IDX` kicks only when its index crosses `avail_event`: it would never kick again,
/// and the frame would wait for the next one from the network. So publish the guest's current
/// index instead.
fn wait_for_rx_buffers(
    queue: &mut Queue,
    mem: &GuestMemoryMmap,
    posted: u16,
) -> Result<bool, virtio_queue::Error> {
    let next = queue.next_avail();
    let seen = queue.avail_idx(mem, Ordering::Acquire)?.0;
    queue.set_next_avail(seen);
    // Also re-checks the index after publishing, as the guest may have added buffers between.
    let after = queue.enable_notification(mem);
    queue.set_next_avail(next);
    Ok(after? || seen.wrapping_sub(next) > posted)
}

#[derive(Debug, PartialEq, Eq)]
enum RxOutcome {
    Delivered,
    /// Not enough RX buffers (`posted`, all there were, too few): nothing consumed, try again
    /// after the guest's next kick.
    NoBuffers {
        /// The buffers that were posted and too few.
        posted: u16,
    },
    /// The frame cannot be delivered (malformed chain, larger than a non-mergeable buffer).
    Dropped,
}

/// Writes one frame, with its virtio-net header, into the guest's RX buffers: several chains
/// with mergeable buffers (`num_buffers` says how many), one otherwise.
fn put_rx_frame(
    queue: &mut Queue,
    mem: &GuestMemoryMmap,
    neg: Negotiated,
    vnet: &VnetHeader,
    frame: &[u8],
) -> Result<RxOutcome, virtio_queue::Error> {
    let hdr_len = neg.header_len();
    let needed = hdr_len + frame.len();
    let mut writers = Vec::new();
    let mut room = 0usize;
    while room < needed {
        if !neg.mergeable() && !writers.is_empty() {
            // One buffer too small for this frame: leave it for the next one.
            for _ in 0..writers.len() {
                queue.go_to_previous_position();
            }
            return Ok(RxOutcome::Dropped);
        }
        let Some(chain) = queue.pop_descriptor_chain(mem) else {
            for _ in 0..writers.len() {
                queue.go_to_previous_position();
            }
            let posted = u16::try_from(writers.len()).unwrap_or(u16::MAX);
            return Ok(RxOutcome::NoBuffers { posted });
        };
        let head = chain.head_index();
        let usable = chain
            .writer(mem)
            .ok()
            .filter(|w| w.available_bytes() >= if writers.is_empty() { hdr_len } else { 1 });
        match usable {
            Some(w) => {
                room += w.available_bytes();
                writers.push((head, w));
            }
            None => {
                // A malformed buffer: hand it and those taken for this frame back empty (the
                // guest drops used buffers shorter than a header) and drop the frame.
                queue.add_used(mem, head, 0)?;
                for (h, _) in &writers {
                    queue.add_used(mem, *h, 0)?;
                }
                return Ok(RxOutcome::Dropped);
            }
        }
    }
    let mut header = [0u8; HDR_V1_LEN];
    vnet.emit(&mut header);
    let buffers = u16::try_from(writers.len()).unwrap_or(u16::MAX);
    header[VNET_HDR_LEN..].copy_from_slice(&buffers.to_le_bytes());
    let mut src: [&[u8]; 2] = [&header[..hdr_len], frame];
    for (head, mut w) in writers {
        let mut written = 0usize;
        for part in src.iter_mut() {
            let n = part.len().min(w.available_bytes());
            if n == 0 {
                continue;
            }
            if w.write_all(&part[..n]).is_err() {
                break;
            }
            *part = &part[n..];
            written += n;
        }
        queue.add_used(mem, head, written as u32)?;
    }
    Ok(RxOutcome::Delivered)
}

#[cfg(test)]
mod tests {
    use super::*;
    use limanet_netstack::vnet::{F_NEEDS_CSUM, GSO_TCPV4};
    use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
    use virtio_queue::desc::{split::Descriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{Bytes, GuestAddress};

    const DATA: u64 = 0x10_0000;

    fn memory() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x40_0000)]).unwrap()
    }

    fn desc(addr: u64, len: u32, flags: u32) -> RawDescriptor {
        RawDescriptor::from(Descriptor::new(addr, len, flags as u16, 0))
    }

    /// A device-readable descriptor followed by descriptor `next`.
    fn chained(addr: u64, len: u32, next: u16) -> RawDescriptor {
        RawDescriptor::from(Descriptor::new(addr, len, VRING_DESC_F_NEXT as u16, next))
    }

    fn v1() -> Negotiated {
        Negotiated(bit(VIRTIO_F_VERSION_1) | bit(VIRTIO_NET_F_MRG_RXBUF))
    }

    #[test]
    fn output_to_a_guest_that_does_not_read_stays_bounded() {
        let port = VhostPort::new("test".into()).unwrap();
        let mut frames: VecDeque<Vec<u8>> = (0..100).map(|_| vec![0u8; 64 << 10]).collect();
        let mut headers: VecDeque<Option<VnetHeader>> =
            (0..100).map(|_| Some(VnetHeader::default())).collect();
        let moved = port.send_from(&mut frames, &mut headers);
        // The bridge takes its share; the rest stays in the port's own (bounded) queue.
        assert_eq!(moved, MAX_TO_GUEST_BYTES);
        assert_eq!(frames.len(), 100 - MAX_TO_GUEST_BYTES / (64 << 10));
        assert_eq!(frames.len(), headers.len());
        assert!(port.loop_waits_for_room.load(Ordering::Acquire));
        assert_eq!(port.send_from(&mut frames, &mut headers), 0);
    }

    #[test]
    fn a_closed_port_is_reported_once_drained() {
        let port = VhostPort::new("test".into()).unwrap();
        lock(&port.to_loop).push(GuestFrame {
            vnet: VnetHeader::default(),
            frame: vec![1; 60],
        });
        port.close();
        let mut out = Vec::new();
        assert_eq!(port.take_frames(&mut out), Some(false));
        assert_eq!(out.len(), 1);
        out.clear();
        assert_eq!(port.take_frames(&mut out), None);
    }

    #[test]
    fn negotiated_features_decide_header_and_offloads() {
        assert_eq!(Negotiated(0).header_len(), VNET_HDR_LEN);
        assert_eq!(v1().header_len(), HDR_V1_LEN);
        assert!(!v1().guest_offloads());
        let tso = Negotiated(bit(VIRTIO_NET_F_GUEST_CSUM) | bit(VIRTIO_NET_F_GUEST_TSO4));
        assert!(tso.guest_offloads());
        // TSO without checksum offload is not a usable combination.
        assert!(!Negotiated(bit(VIRTIO_NET_F_GUEST_TSO4)).guest_offloads());
        assert_eq!(offered_features() & tso.0, tso.0);
    }

    #[test]
    fn tx_chain_maps_the_header_and_frame() {
        let mem = memory();
        let vq = MockSplitQueue::new(&mem, 16);
        // Header and frame split over two descriptors, as Linux does without ANY_LAYOUT.
        let hdr = VnetHeader {
            flags: F_NEEDS_CSUM,
            gso_type: GSO_TCPV4,
            hdr_len: 54,
            gso_size: 1448,
            csum_start: 34,
            csum_offset: 16,
        };
        let mut h = [0u8; HDR_V1_LEN];
        hdr.emit(&mut h);
        mem.write_slice(&h, GuestAddress(DATA)).unwrap();
        let frame: Vec<u8> = (0..3000u32).map(|i| i as u8).collect();
        mem.write_slice(&frame, GuestAddress(DATA + 0x1000))
            .unwrap();
        vq.add_desc_chains(
            &[
                chained(DATA, HDR_V1_LEN as u32, 1),
                desc(DATA + 0x1000, 3000, 0),
            ],
            0,
        )
        .unwrap();
        let mut q: Queue = vq.create_queue().unwrap();
        let counters = VhostCounters::default();
        let mut frames = Vec::new();
        let outcome = take_tx_frames(&mut q, &mem, v1(), usize::MAX, &mut frames, &counters);
        assert_eq!(outcome, Ok(TxOutcome::Drained));
        assert_eq!(frames, vec![GuestFrame { vnet: hdr, frame }]);
        assert_eq!(counters.bad_chains.load(Ordering::Relaxed), 0);
        assert_eq!(vq.used().idx().load(), 1);
    }

    #[test]
    fn malformed_tx_chains_are_consumed_and_counted() {
        let mem = memory();
        let vq = MockSplitQueue::new(&mem, 16);
        vq.add_desc_chains(
            &[
                // Outside guest memory.
                desc(0x4000_0000, 100, 0),
                // Shorter than the header.
                desc(DATA, 4, 0),
                // A 70 KiB "frame" split across descriptors.
                chained(DATA, 0x10000, 3),
                desc(DATA + 0x10000, 0x2000, 0),
                // A good one after them still gets through.
                desc(DATA, HDR_V1_LEN as u32 + 60, 0),
            ],
            0,
        )
        .unwrap();
        let mut q: Queue = vq.create_queue().unwrap();
        let counters = VhostCounters::default();
        let mut frames = Vec::new();
        let outcome = take_tx_frames(&mut q, &mem, v1(), usize::MAX, &mut frames, &counters);
        assert_eq!(outcome, Ok(TxOutcome::Drained));
        assert_eq!(counters.bad_chains.load(Ordering::Relaxed), 3);
        assert_eq!(frames.len(), 1);
        assert_eq!(frames[0].frame.len(), 60);
        assert_eq!(vq.used().idx().load(), 4);
    }

    #[test]
    fn tx_stops_when_the_loop_queue_is_full() {
        let mem = memory();
        let vq = MockSplitQueue::new(&mem, 16);
        let chains: Vec<RawDescriptor> = (0..4)
            .map(|i| desc(DATA + i * 0x1000, HDR_V1_LEN as u32 + 1000, 0))
            .collect();
        vq.add_desc_chains(&chains, 0).unwrap();
        let mut q: Queue = vq.create_queue().unwrap();
        let mut frames = Vec::new();
        let counters = VhostCounters::default();
        let outcome = take_tx_frames(&mut q, &mem, v1(), 1500, &mut frames, &counters);
        assert_eq!(outcome, Ok(TxOutcome::Full));
        assert_eq!(frames.len(), 2);
        // The rest stay in the guest's ring for later.
        let outcome = take_tx_frames(&mut q, &mem, v1(), usize::MAX, &mut frames, &counters);
        assert_eq!(outcome, Ok(TxOutcome::Drained));
        assert_eq!(frames.len(), 4);
    }

    #[test]
    fn rx_frame_spans_mergeable_buffers_with_num_buffers() {
        let mem = memory();
        let vq = MockSplitQueue::new(&mem, 16);
        let chains: Vec<RawDescriptor> = (0..4)
            .map(|i| desc(DATA + i * 0x1000, 1024, VRING_DESC_F_WRITE))
            .collect();
        vq.add_desc_chains(&chains, 0).unwrap();
        let mut q: Queue = vq.create_queue().unwrap();
        let frame: Vec<u8> = (0..2500u32).map(|i| (i % 251) as u8).collect();
        let hdr = VnetHeader::tcpv4(54, 2446, 1448);
        let outcome = put_rx_frame(&mut q, &mem, v1(), &hdr, &frame);
        assert_eq!(outcome, Ok(RxOutcome::Delivered));
        // 12 + 2500 bytes need three 1 KiB buffers.
        assert_eq!(vq.used().idx().load(), 3);
        let mut got = vec![0u8; 3 * 1024];
        for i in 0..3 {
            mem.read_slice(
                &mut got[i * 1024..(i + 1) * 1024],
                GuestAddress(DATA + i as u64 * 0x1000),
            )
            .unwrap();
        }
        let (parsed, _) = VnetHeader::parse(&got).unwrap();
        assert_eq!(parsed, hdr);
        assert_eq!(u16::from_le_bytes([got[10], got[11]]), 3);
        assert_eq!(&got[HDR_V1_LEN..HDR_V1_LEN + frame.len()], &frame[..]);
        // Not enough buffers left for another such frame: nothing is consumed.
        let outcome = put_rx_frame(&mut q, &mem, v1(), &hdr, &frame);
        assert_eq!(outcome, Ok(RxOutcome::NoBuffers { posted: 1 }));
        assert_eq!(vq.used().idx().load(), 3);
        // A small one still fits the last buffer.
        let outcome = put_rx_frame(&mut q, &mem, v1(), &VnetHeader::default(), &frame[..60]);
        assert_eq!(outcome, Ok(RxOutcome::Delivered));
        assert_eq!(vq.used().idx().load(), 4);
    }

    #[test]
    fn too_few_rx_buffers_ask_for_a_kick_past_the_posted_ones() {
        let mem = memory();
        let vq = MockSplitQueue::new(&mem, 16);
        // Two 1 KiB buffers posted; a 3000-byte frame needs three.
        vq.add_desc_chains(
            &[
                desc(DATA, 1024, VRING_DESC_F_WRITE),
                desc(DATA + 0x1000, 1024, VRING_DESC_F_WRITE),
            ],
            0,
        )
        .unwrap();
        let mut q: Queue = vq.create_queue().unwrap();
        q.set_event_idx(true);
        let frame = vec![7u8; 3000];
        let hdr = VnetHeader::default();
        assert_eq!(
            put_rx_frame(&mut q, &mem, v1(), &hdr, &frame),
            Ok(RxOutcome::NoBuffers { posted: 2 })
        );
        assert_eq!(q.next_avail(), 0, "the posted buffers stay for the frame");
        assert_eq!(wait_for_rx_buffers(&mut q, &mem, 2), Ok(false));
        // avail_event (after the used ring's 16 elements) is the guest's index, 2, so its
        // next buffer (index 2 → 3) crosses it and kicks; our own position is kept.
        let avail_event = GuestAddress(vq.used_addr().0 + 4 + 8 * 16);
        assert_eq!(mem.read_obj::<u16>(avail_event).unwrap(), 2);
        assert_eq!(q.next_avail(), 0);
        // A buffer added since the frame looked is noticed at once.
        vq.add_desc_chains(&[desc(DATA + 0x2000, 1024, VRING_DESC_F_WRITE)], 2)
            .unwrap();
        assert_eq!(wait_for_rx_buffers(&mut q, &mem, 2), Ok(true));
        assert_eq!(mem.read_obj::<u16>(avail_event).unwrap(), 3);
        assert_eq!(
            put_rx_frame(&mut q, &mem, v1(), &hdr, &frame),
            Ok(RxOutcome::Delivered)
        );
        assert_eq!(vq.used().idx().load(), 3);
    }

    #[test]
    fn malformed_rx_buffers_drop_the_frame_not_the_queue() {
        let mem = memory();
        let vq = MockSplitQueue::new(&mem, 16);
        vq.add_desc_chains(
            &[
                // Read-only buffer: nothing the device may write to.
                desc(DATA, 2048, 0),
                desc(0x4000_0000, 2048, VRING_DESC_F_WRITE),
                desc(DATA, 2048, VRING_DESC_F_WRITE),
            ],
            0,
        )
        .unwrap();
        let mut q: Queue = vq.create_queue().unwrap();
        let frame = vec![1u8; 100];
        let hdr = VnetHeader::default();
        assert_eq!(
            put_rx_frame(&mut q, &mem, v1(), &hdr, &frame),
            Ok(RxOutcome::Dropped)
        );
        assert_eq!(
            put_rx_frame(&mut q, &mem, v1(), &hdr, &frame),
            Ok(RxOutcome::Dropped)
        );
        assert_eq!(
            put_rx_frame(&mut q, &mem, v1(), &hdr, &frame),
            Ok(RxOutcome::Delivered)
        );
        // Without mergeable buffers a frame larger than one buffer is dropped, the buffer kept.
        let vq = MockSplitQueue::new(&mem, 16);
        vq.add_desc_chains(&[desc(DATA, 1000, VRING_DESC_F_WRITE)], 0)
            .unwrap();
        let mut q: Queue = vq.create_queue().unwrap();
        let legacy = Negotiated(bit(VIRTIO_F_VERSION_1));
        let big = vec![0u8; 1500];
        assert_eq!(
            put_rx_frame(&mut q, &mem, legacy, &hdr, &big),
            Ok(RxOutcome::Dropped)
        );
        assert_eq!(vq.used().idx().load(), 0);
        assert_eq!(
            put_rx_frame(&mut q, &mem, legacy, &hdr, &big[..500]),
            Ok(RxOutcome::Delivered)
        );
    }
}
