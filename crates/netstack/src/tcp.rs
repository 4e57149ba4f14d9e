//! TCP translation: every guest connection is mirrored onto one host kernel socket.
//!
//! There is no second TCP stack here, and no per-connection data buffer (the design of passt;
//! the one exception, segments that arrive after a gap, is below):
//! - Guest → host: payload is `send()` straight to the host socket; the guest gets an ACK only
//!   for what the kernel accepted, and a window equal to the free space of the socket's send
//!   buffer, so it rarely sends what cannot be taken.
//! - Host → guest: data is *peeked* from the host socket into frames; the kernel receive queue is
//!   the retransmission buffer. When the guest acknowledges bytes, they are consumed from the
//!   socket. A retransmission re-peeks from the first unacknowledged byte.
//! - The guest's SYN is answered only once the host `connect()` has succeeded (SYN-ACK), or failed
//!   (RST), so the guest sees the real outcome.
//!
//! Deviations from a full RFC 793/7323 implementation, and why they are acceptable here:
//! - No SACK, timestamps or PAWS: the link to the guest is a local socket that neither loses nor
//!   reorders frames except under overload, where go-back-N retransmission is enough.
//! - Guest segments that arrive after a gap (lost or reordered frames, e.g. on a datagram
//!   transport under load) are held, within a small per-flow and per-guest budget, until the
//!   gap is filled; the guest learns of the gap from duplicate ACKs. This is the only data the
//!   translator ever buffers.
//! - No Nagle. ACKs are coalesced per batch of frames read from the guest; an ACK for less than
//!   two full segments waits up to `ACK_DELAY` for host data to carry it (delayed ACK).
//! - The guest's urgent pointer is ignored; urgent data is delivered inline.
//! - TIME_WAIT is kept by the guest (and the host kernel), not by the translator.

use crate::config::NetConfig;
use crate::host::{Host, SockId};
use crate::inspect::{FlowInfo, FlowProtocol, InboundState};
use crate::limits::{Limit, LimitLog};
use crate::output::{ip_header_len, write_link_and_ip, Link, Output, PortId};
use crate::vnet::VnetHeader;
use crate::wire::{
    self, tcp_flags as F, SeqNumber, Tcp, TcpChecksum, TcpRepr, ETH_HEADER_LEN, IPV4_HEADER_LEN,
    TCP_HEADER_LEN,
};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tracing::{debug, info, warn};

/// Our window scale: windows up to 8 MiB.
const OUR_WSCALE: u8 = 7;
const MAX_WINDOW: usize = 8 << 20;
const RTO_INITIAL: Duration = Duration::from_millis(250);
const RTO_MAX: Duration = Duration::from_secs(30);
/// Retransmissions of the same data before the connection is reset.
const MAX_RETRIES: u8 = 10;
/// Segments filled by one peek (one system call) once data beyond a segment is waiting.
const SEGMENTS_PER_ROUND: usize = 32;
/// How long an ACK for a little guest data may wait for host data to ride on (a reply usually
/// comes well within it): saves a frame per request/response. Kept short because a guest using
/// Nagle's algorithm holds its next small write until this ACK.
const ACK_DELAY: Duration = Duration::from_millis(1);
/// Guest segments held per flow (after a gap, or while the host socket is full).
const HELD_SEGMENTS_MAX: usize = 64;
/// Bytes of held guest data (see [`HeldBudget`]): what each port may always hold, the most one
/// port may hold (a full window of one flow), and the pool shared beyond the reserves.
const HELD_RESERVED_PER_PORT: usize = 1 << 20;
const HELD_PORT_MAX: usize = MAX_WINDOW;
const HELD_SHARED_MAX: usize = 16 << 20;
/// Largest held entry that contiguous segments are merged into: a partial send moves the rest
/// of an entry, so entries stay small enough for that to be cheap.
const HELD_CHUNK_MAX: usize = 256 << 10;
/// In-order guest segments smaller than this are gathered per flow during a batch and sent
/// to the host in one call at its end (see `gather`): one system call and one wake-up of the
/// receiving application per batch instead of per 1448 bytes. Larger ones (super-segments from
/// ports with offloads) are sent at once, as copying them would cost more than it saves.
const GATHER_BELOW: usize = 16 << 10;
/// Most in-order guest data gathered per flow before it is sent.
const GATHER_MAX: usize = 256 << 10;
/// Largest TCP payload of one IPv4 packet (a super-segment for a port with offloads).
const MAX_SUPER_PAYLOAD: usize = 65535 - IPV4_HEADER_LEN - TCP_HEADER_LEN;

/// Payload per segment towards the guest on `port`: its MSS, or for a port with offloads
/// as many MSS-sized segments as one IPv4 packet holds (its kernel cuts them).
fn segment_size(out: &Output, port: PortId, mss: usize) -> usize {
    if out.offloads(port) {
        (MAX_SUPER_PAYLOAD / mss).max(1) * mss
    } else {
        mss
    }
}

/// A connection as the guest sees it: both ends of one family, IPv4 or IPv6.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub guest: SocketAddr,
    /// The remote end as addressed by the guest (before address translation).
    pub remote: SocketAddr,
}

impl FlowKey {
    /// Bytes of Ethernet, IP and option-less TCP header in a segment of this flow.
    pub fn headers_len(&self) -> usize {
        ETH_HEADER_LEN + ip_header_len(self.guest.ip()) + TCP_HEADER_LEN
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Guest SYN seen, host connect in progress.
    HostConnecting,
    /// SYN-ACK sent to the guest, waiting for its ACK.
    SynReceived,
    /// Port forward: SYN sent to the guest, waiting for its SYN-ACK.
    SynSent,
    Established,
}

/// One translated connection: a guest TCP connection and the host socket it is mirrored onto.
///
/// Its two directions are independent halves: [`SendHalf`] carries host data to the guest,
/// [`RecvHalf`] guest data to the host. What they share is here: addressing, the handshake
/// state, and the one timer (SYN expiry, retransmission or window probe, by state).
#[derive(Debug)]
struct Flow {
    key: FlowKey,
    link: Link,
    sock: SockId,
    state: State,
    /// Host → guest.
    snd: SendHalf,
    /// Guest → host.
    rcv: RecvHalf,
    /// When the flow's timer fires: in a handshake state, to retransmit our SYN(-ACK) or
    /// give up; when established, to retransmit from `snd.una` or probe a zero window.
    deadline: Option<Instant>,
    /// Deadline already in the timer heap (to avoid pushing duplicates).
    scheduled: Option<Instant>,
    /// A guest-opened connection not established by then is reset.
    syn_expires: Instant,
    /// Tells this flow's timer entries from those of an earlier flow in the same slot.
    generation: u64,
    /// In the table's `batch` already (its ACK and data go out at the end of the batch).
    batched: bool,
    /// Opened by the host (port forward or probe), not by the guest.
    inbound: bool,
}

/// The sending half (host → guest): data peeked from the host socket, segmented to the guest.
///
/// Invariants: `iss <= una <= nxt` in sequence order; the data in flight (`nxt - una`, less
/// one for a sent FIN) was sent within the guest's window `wnd` of its time; the host socket's
/// receive queue starts at sequence number `una - unconsumed` (acknowledged bytes leave it
/// only at the next flush), so the next new byte is `peeked()` bytes into it. There is no
/// send buffer: a retransmission re-peeks the socket.
#[derive(Debug)]
struct SendHalf {
    /// Our initial sequence number (the SYN's).
    iss: SeqNumber,
    /// Oldest byte the guest has not acknowledged.
    una: SeqNumber,
    /// Next sequence number to send; rewound to `una` by a go-back.
    nxt: SeqNumber,
    /// Guest's receive window in bytes (scaled already).
    wnd: u32,
    /// Shift the guest applies to its window field (0 without the option).
    wscale: u8,
    /// Largest segment the guest takes (its MSS option, clamped to ours).
    guest_mss: u16,
    /// Highest sequence number of data sent when the last go-back started (our FIN excluded:
    /// it is resent after the data). Duplicate ACKs for data sent before it are echoes of that
    /// loss and must not start another go-back (the NewReno recovery point, RFC 6582), and
    /// ACKs up to it are valid even when they pass `nxt`.
    recover: SeqNumber,
    /// Duplicate ACKs in a row; the third starts a fast retransmit.
    dup_acks: u8,
    /// Timer expiries without progress (SYN or data); `MAX_RETRIES` resets the connection.
    retries: u8,
    /// Retransmission timeout, doubled per expiry up to `RTO_MAX`, reset by progress.
    rto: Duration,
    /// The host socket may hold bytes never sent to the guest: a readable event came, or a
    /// go-back rewound `nxt`. Cleared once everything received has been sent, so ACK-only
    /// flushes cost no system call; new data brings a new (edge-triggered) event.
    maybe_unsent: bool,
    /// The host peer's FIN is in the socket's receive queue, after all of its data.
    host_fin: bool,
    /// Our FIN is in `nxt` (sent, maybe not acknowledged): it takes a sequence number but no
    /// byte of the socket.
    fin_sent: bool,
    /// Bytes the guest acknowledged that are still in the host socket; discarded in one call
    /// at the next flush rather than one call per ACK. Not later: a partly read buffer keeps
    /// its whole allocation charged to the socket, which can close the peer's window.
    unconsumed: u32,
}

/// The receiving half (guest → host): guest data sent straight to the host socket.
///
/// Invariants: everything before `nxt` was taken by the host socket (so it may be
/// acknowledged), nothing after it was. `gathered` continues the stream at `nxt`: in-order
/// data of the current batch, sent (and only then acknowledged) at its end or before anything
/// else touches the receive side. `edge` (`nxt` at the last window query plus `space`)
/// is the right edge last promised: `refresh_window` never offers a window past it, and
/// offers none while `send_blocked` or after the guest's FIN. `held` is sorted by sequence
/// number, each entry was within the window offered when it came (entries that in-order data
/// overtook are dropped when released), and its bytes count in the table's per-port [`HeldBudget`].
#[derive(Debug)]
struct RecvHalf {
    /// Next sequence number expected from the guest (our ACK number).
    nxt: SeqNumber,
    /// Shift we apply to our window field (0 unless both sides sent the option).
    wscale: u8,
    /// Window last advertised, in bytes.
    wnd: u32,
    /// Free send space the kernel reported at the last query (0: no estimate) and the sequence
    /// number it extends to; see `refresh_window`.
    space: u32,
    edge: SeqNumber,
    /// The host socket's send buffer is full: advertise a zero window until it drains
    /// (`on_writable`).
    send_blocked: bool,
    /// Guest sent FIN (and we shut down the host socket's write side).
    fin_from_guest: bool,
    /// Guest data (or FIN) accepted since our last ACK: whether an ACK is owed, how many
    /// bytes it covers, and when it is due at the latest (delayed ACK).
    ack_pending: bool,
    unacked: u32,
    ack_deadline: Option<Instant>,
    /// Guest segments that arrived after a gap, or while the host socket was full, in
    /// sequence order: (sequence number, payload).
    held: Vec<(SeqNumber, Vec<u8>)>,
    /// In-order guest data of the current batch not yet sent to the host (see `gather`);
    /// freed when sent, so idle flows keep no buffer.
    gathered: Vec<u8>,
}

impl Flow {
    fn in_flight(&self) -> u32 {
        self.snd.nxt - self.snd.una
    }

    /// A segment carrying our ACK of everything received went out.
    fn ack_sent(&mut self) {
        self.rcv.ack_pending = false;
        self.rcv.unacked = 0;
        self.rcv.ack_deadline = None;
    }

    /// Bytes of the host socket's receive queue the guest has seen: acknowledged but not yet
    /// consumed, or in flight (our FIN takes a sequence number but no byte).
    fn peeked(&self) -> usize {
        self.snd.unconsumed as usize
            + self
                .in_flight()
                .saturating_sub(u32::from(self.snd.fin_sent)) as usize
    }
}

/// Counters for logs and the stats API.
#[derive(Debug, Default, Clone, Copy)]
pub struct TcpStats {
    pub opened: u64,
    pub refused: u64,
    pub resets_sent: u64,
    pub retransmits: u64,
    pub table_full: u64,
    /// Guest segments dropped: beyond a gap, already received, or while the host socket was full.
    pub guest_out_of_order: u64,
    pub guest_duplicate: u64,
    pub guest_blocked: u64,
    /// Host sends that took only part of a segment.
    pub partial_sends: u64,
    /// SYNs refused because their port had all the flows, or half-open flows, it may.
    pub port_limit: u64,
    /// Connections reset because they were still half-open after the SYN timeout.
    pub syn_timeouts: u64,
}

/// Flows of one port: all of them, and the half-open ones.
#[derive(Debug, Default, Clone, Copy)]
struct PortFlows {
    flows: usize,
    half_open: usize,
}

/// Guest-opened connections not yet established: they count against the half-open share.
fn half_open(state: State) -> bool {
    matches!(state, State::HostConnecting | State::SynReceived)
}

/// What the handlers work with besides the table: the host's sockets, the frames going out
/// and the network's configuration. The public entry points take them apart (as the stack
/// holds them) and bundle them here once; the time of the event, where it matters, is passed
/// next to it.
struct Ctx<'a, H: Host> {
    host: &'a mut H,
    out: &'a mut Output,
    cfg: &'a NetConfig,
}

/// All TCP flows of one network.
#[derive(Debug)]
pub struct TcpTable {
    flows: Vec<Option<Flow>>,
    free: Vec<usize>,
    by_key: HashMap<FlowKey, usize>,
    by_sock: HashMap<SockId, usize>,
    /// Retransmission and probe deadlines: (deadline, flow index, flow generation). Entries of
    /// flows whose deadline moved stay until they reach the top (see `prune_timers`).
    timers: BinaryHeap<Reverse<(Instant, usize, u64)>>,
    /// Delayed ACKs, in deadline order (they all wait `ACK_DELAY`).
    acks_due: VecDeque<(Instant, usize, u64)>,
    /// Flows touched by the current batch of guest frames: their ACKs and data go out at its
    /// end, once per flow.
    batch: Vec<usize>,
    /// Time of the current batch.
    batch_now: Option<Instant>,
    connecting: usize,
    /// Payload bytes in the flows' `rcv.held` segments, per port.
    held: HeldBudget,
    /// Where host data is first peeked (see `send_data`).
    probe: Vec<u8>,
    next_generation: u64,
    rng: u64,
    next_forward_port: u16,
    per_port: HashMap<PortId, PortFlows>,
    log: LimitLog,
    pub stats: TcpStats,
}

impl TcpTable {
    pub fn new(seed: u64) -> Self {
        TcpTable {
            flows: Vec::new(),
            free: Vec::new(),
            by_key: HashMap::new(),
            by_sock: HashMap::new(),
            timers: BinaryHeap::new(),
            acks_due: VecDeque::new(),
            batch: Vec::new(),
            batch_now: None,
            connecting: 0,
            held: HeldBudget::default(),
            probe: Vec::new(),
            next_generation: 0,
            rng: seed | 1,
            next_forward_port: 0,
            per_port: HashMap::new(),
            log: LimitLog::default(),
            stats: TcpStats::default(),
        }
    }

    /// Number of live flows.
    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }

    fn random(&mut self) -> u64 {
        // SplitMix64: cheap, and good enough for initial sequence numbers.
        self.rng = self.rng.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn insert(&mut self, flow: Flow) -> usize {
        let key = flow.key;
        let sock = flow.sock;
        let idx = match self.free.pop() {
            Some(i) => {
                self.flows[i] = Some(flow);
                i
            }
            None => {
                self.flows.push(Some(flow));
                self.flows.len() - 1
            }
        };
        self.by_key.insert(key, idx);
        self.by_sock.insert(sock, idx);
        if let Some(flow) = &self.flows[idx] {
            let counts = self.per_port.entry(flow.link.port).or_default();
            counts.flows += 1;
            counts.half_open += usize::from(half_open(flow.state));
        }
        idx
    }

    fn remove(&mut self, idx: usize) -> Option<Flow> {
        let flow = self.flows.get_mut(idx)?.take()?;
        let held = flow.rcv.held.iter().map(|(_, d)| d.len()).sum();
        self.held.give_back(flow.link.port, held);
        self.by_key.remove(&flow.key);
        self.by_sock.remove(&flow.sock);
        if flow.state == State::HostConnecting {
            self.connecting -= 1;
        }
        if let Some(counts) = self.per_port.get_mut(&flow.link.port) {
            counts.flows -= 1;
            counts.half_open -= usize::from(half_open(flow.state));
            if counts.flows == 0 {
                self.per_port.remove(&flow.link.port);
            }
        }
        self.free.push(idx);
        Some(flow)
    }

    fn new_flow(
        &mut self,
        key: FlowKey,
        link: Link,
        sock: SockId,
        state: State,
        now: Instant,
    ) -> Flow {
        let iss = SeqNumber(self.random() as u32);
        self.next_generation += 1;
        Flow {
            key,
            link,
            sock,
            state,
            snd: SendHalf {
                iss,
                una: iss,
                nxt: iss,
                wnd: 0,
                wscale: 0,
                guest_mss: 536,
                recover: iss,
                dup_acks: 0,
                retries: 0,
                rto: RTO_INITIAL,
                maybe_unsent: false,
                host_fin: false,
                fin_sent: false,
                unconsumed: 0,
            },
            rcv: RecvHalf {
                nxt: SeqNumber(0),
                wscale: 0,
                wnd: 0,
                space: 0,
                edge: SeqNumber(0),
                send_blocked: false,
                fin_from_guest: false,
                ack_pending: false,
                unacked: 0,
                ack_deadline: None,
                held: Vec::new(),
                gathered: Vec::new(),
            },
            deadline: None,
            scheduled: None,
            syn_expires: now,
            generation: self.next_generation,
            batched: false,
            inbound: state == State::SynSent,
        }
    }

    /// A TCP segment from the guest.
    #[allow(clippy::too_many_arguments)]
    pub fn on_guest_segment(
        &mut self,
        host: &mut impl Host,
        out: &mut Output,
        cfg: &NetConfig,
        now: Instant,
        link: Link,
        key: FlowKey,
        seg: &Tcp,
    ) {
        let cx = &mut Ctx { host, out, cfg };
        let Some(&idx) = self.by_key.get(&key) else {
            self.on_unknown_flow(cx, now, link, key, seg);
            return;
        };
        let Some(flow) = self.flows[idx].as_mut() else {
            return;
        };
        if seg.has(F::RST) {
            debug!(guest = %key.guest, remote = %key.remote, "guest reset the connection");
            cx.host.tcp_close(flow.sock, true);
            self.remove(idx);
            return;
        }
        match flow.state {
            State::HostConnecting => {
                // A retransmitted SYN while the host connect is pending: nothing to add.
            }
            State::SynReceived => {
                if seg.has(F::SYN) && !seg.has(F::ACK) {
                    // Our SYN-ACK was lost: send it again.
                    send_syn(cx, flow, F::SYN | F::ACK);
                    return;
                }
                if seg.has(F::ACK) && seg.ack == flow.snd.iss + 1 {
                    flow.state = State::Established;
                    if let Some(counts) = self.per_port.get_mut(&flow.link.port) {
                        counts.half_open -= 1;
                    }
                    flow.snd.una = seg.ack;
                    flow.snd.retries = 0;
                    flow.snd.rto = RTO_INITIAL;
                    flow.deadline = None;
                    self.established(cx, now, idx, seg);
                }
            }
            State::SynSent => {
                if seg.has(F::SYN) && seg.has(F::ACK) && seg.ack == flow.snd.iss + 1 {
                    flow.state = State::Established;
                    flow.snd.una = seg.ack;
                    flow.rcv.nxt = seg.seq + 1;
                    flow.snd.guest_mss = seg
                        .mss
                        .unwrap_or(536)
                        .clamp(64, cx.cfg.mss_for(key.guest.ip()));
                    match seg.window_scale {
                        Some(ws) => flow.snd.wscale = ws,
                        None => flow.rcv.wscale = 0,
                    }
                    // The window in a SYN is never scaled.
                    flow.snd.wnd = u32::from(seg.window);
                    flow.deadline = None;
                    flow.snd.retries = 0;
                    flow.snd.rto = RTO_INITIAL;
                    send_ack(cx, flow);
                    debug!(guest = %key.guest, "forwarded connection established");
                    self.flush(cx, now, idx);
                }
            }
            State::Established => self.established(cx, now, idx, seg),
        }
    }

    fn established(&mut self, cx: &mut Ctx<'_, impl Host>, now: Instant, idx: usize, seg: &Tcp) {
        let Some(flow) = self.flows[idx].as_mut() else {
            return;
        };
        let mut ack_now = false;

        if seg.has(F::ACK) {
            let acked = seg.ack - flow.snd.una;
            let in_flight = flow.in_flight();
            let window = u32::from(seg.window) << flow.snd.wscale;
            // After a go-back the guest may acknowledge data sent before it, past `snd.nxt`.
            let sent = if flow.snd.nxt < flow.snd.recover {
                flow.snd.recover - flow.snd.una
            } else {
                in_flight
            };
            if acked > 0 && acked <= sent {
                // Our FIN takes one sequence number but no byte in the socket.
                let fin_acked = flow.snd.fin_sent && seg.ack == flow.snd.nxt;
                let bytes = acked - u32::from(fin_acked);
                flow.snd.unconsumed += bytes;
                flow.snd.una = seg.ack;
                flow.snd.nxt = flow.snd.nxt.max(seg.ack);
                flow.snd.dup_acks = 0;
                flow.snd.retries = 0;
                flow.snd.rto = RTO_INITIAL;
                flow.deadline = (flow.in_flight() > 0).then(|| now + flow.snd.rto);
            } else if acked == 0
                && in_flight > 0
                && seg.payload.is_empty()
                && !seg.has(F::FIN)
                && window == flow.snd.wnd
            {
                flow.snd.dup_acks = flow.snd.dup_acks.saturating_add(1);
                if flow.snd.dup_acks == 3 && flow.snd.una >= flow.snd.recover {
                    // Fast retransmit: go back to the first unacknowledged byte.
                    go_back(flow);
                    self.stats.retransmits += 1;
                }
            }
            flow.snd.wnd = window;
        }

        let gathered = gather(flow, seg);
        if gathered {
            flow.rcv.gathered.extend_from_slice(seg.payload);
        } else if let Err(e) = send_gathered(cx.host, &mut self.held, &mut self.stats, flow) {
            debug!(error = %e, remote = %flow.key.remote, "host send failed, resetting");
            self.reset(cx, idx);
            return;
        }

        if !gathered && !seg.payload.is_empty() && !flow.rcv.fin_from_guest {
            let offset = flow.rcv.nxt - seg.seq;
            if flow.rcv.nxt < seg.seq {
                // A gap: keep the segment for when it is filled; the duplicate ACK tells the
                // guest what is missing.
                self.stats.guest_out_of_order += 1;
                hold(&mut self.held, flow, seg.seq, seg.payload);
                ack_now = true;
            } else if offset as usize >= seg.payload.len() {
                // Entirely old: the guest did not see our ACK.
                self.stats.guest_duplicate += 1;
                ack_now = true;
            } else if flow.rcv.send_blocked {
                // The guest sent this within the window we offered before the host socket
                // filled: keep it for when the socket drains rather than make the guest
                // recover a loss. Only what does not fit is dropped (and then acknowledged, so
                // the guest learns the window is closed).
                let data = &seg.payload[offset as usize..];
                if !hold(&mut self.held, flow, flow.rcv.nxt, data) {
                    self.stats.guest_blocked += 1;
                    ack_now = true;
                }
            } else {
                let data = &seg.payload[offset as usize..];
                let before = flow.rcv.nxt;
                let sent = send_in_order(cx.host, flow, data).and_then(|()| {
                    keep_unsent(&mut self.held, flow, before, data);
                    release_held(cx.host, &mut self.held, flow)
                });
                match sent {
                    // A filled gap is acknowledged at once (RFC 5681, 4.2).
                    Ok(filled) => ack_now |= filled,
                    Err(e) => {
                        debug!(error = %e, remote = %flow.key.remote, "host send failed, resetting");
                        self.reset(cx, idx);
                        return;
                    }
                }
                if flow.rcv.send_blocked {
                    self.stats.partial_sends += 1;
                    ack_now = true;
                }
            }
        }

        if seg.has(F::FIN) && !flow.rcv.fin_from_guest {
            let fin_seq = seg.seq + seg.payload.len() as u32;
            if fin_seq == flow.rcv.nxt {
                flow.rcv.nxt += 1;
                flow.rcv.fin_from_guest = true;
                cx.host.tcp_shutdown(flow.sock);
                // A delayed ACK: the host end usually closes in turn at once, and our FIN then
                // carries it (one frame instead of two per connection).
                flow.rcv.ack_pending = true;
            }
        }

        if ack_now {
            send_ack(cx, flow);
        }
        if !flow.batched {
            flow.batched = true;
            self.batch.push(idx);
        }
        self.batch_now = Some(now);
        self.finished(cx.host, idx);
    }

    /// Removes a flow whose both directions are closed and acknowledged.
    fn finished(&mut self, host: &mut impl Host, idx: usize) -> bool {
        let Some(flow) = self.flows[idx].as_ref() else {
            return true;
        };
        if flow.rcv.fin_from_guest && flow.snd.fin_sent && flow.in_flight() == 0 {
            debug!(guest = %flow.key.guest, remote = %flow.key.remote, "connection closed");
            // Unread data would turn the close into a RST.
            if flow.snd.unconsumed > 0 {
                let _ = host.tcp_consume(flow.sock, flow.snd.unconsumed as usize);
            }
            host.tcp_close(flow.sock, false);
            self.remove(idx);
            return true;
        }
        false
    }

    /// Ends a batch of guest frames: each flow it touched sends what its window now allows and
    /// the ACK it earned (piggybacked on data when there is any).
    pub fn flush_acks(&mut self, host: &mut impl Host, out: &mut Output, cfg: &NetConfig) {
        let cx = &mut Ctx { host, out, cfg };
        let Some(now) = self.batch_now.take() else {
            return;
        };
        let mut batch = std::mem::take(&mut self.batch);
        for &idx in &batch {
            let Some(flow) = self.flows.get_mut(idx).and_then(Option::as_mut) else {
                continue;
            };
            flow.batched = false;
            if let Err(e) = send_gathered(cx.host, &mut self.held, &mut self.stats, flow) {
                debug!(error = %e, remote = %flow.key.remote, "host send failed, resetting");
                self.reset(cx, idx);
                continue;
            }
            self.flush(cx, now, idx);
            let Some(flow) = self.flows.get_mut(idx).and_then(Option::as_mut) else {
                continue;
            };
            if !flow.rcv.ack_pending {
                continue;
            }
            // RFC 1122: a stream of full-sized segments gets an ACK at least every second one.
            if flow.rcv.unacked >= 2 * u32::from(cx.cfg.mss()) || flow.rcv.send_blocked {
                send_ack(cx, flow);
            } else if flow.rcv.ack_deadline.is_none() {
                let due = now + ACK_DELAY;
                flow.rcv.ack_deadline = Some(due);
                self.acks_due.push_back((due, idx, flow.generation));
            }
        }
        batch.clear();
        self.batch = batch;
    }

    /// Sends host data (and FIN) to the guest as far as its window allows.
    fn flush(&mut self, cx: &mut Ctx<'_, impl Host>, now: Instant, idx: usize) {
        let Some(flow) = self.flows[idx].as_mut() else {
            return;
        };
        if flow.state != State::Established {
            return;
        }
        if flow.snd.unconsumed > 0 {
            // Acknowledged data leaves the socket before anything is peeked past it.
            if let Err(e) = cx.host.tcp_consume(flow.sock, flow.snd.unconsumed as usize) {
                warn!(error = %e, "discarding acknowledged data failed");
            }
            flow.snd.unconsumed = 0;
        }
        if flow.snd.maybe_unsent {
            let remote = flow.key.remote;
            if let Err(e) = self.send_data(cx, now, idx) {
                debug!(error = %e, %remote, "host receive failed, resetting");
                self.reset(cx, idx);
                return;
            }
        }
        let Some(flow) = self.flows[idx].as_mut() else {
            return;
        };
        if flow.snd.host_fin && !flow.snd.maybe_unsent && !flow.snd.fin_sent {
            send_flags(cx, flow, F::FIN | F::ACK);
            flow.snd.nxt += 1;
            flow.snd.fin_sent = true;
            flow.ack_sent();
            if flow.deadline.is_none() {
                flow.deadline = Some(now + flow.snd.rto);
            }
        }
        self.schedule(idx);
        self.finished(cx.host, idx);
    }

    /// Peeks new host data into segments, as far as the guest's window allows, until the
    /// socket is drained. The first peek takes one segment into `probe`, a buffer kept
    /// initialized: most events bring less than that (a request, a response, a keystroke),
    /// and then there is neither a size query nor a window's worth of frames to zero.
    fn send_data(
        &mut self,
        cx: &mut Ctx<'_, impl Host>,
        now: Instant,
        idx: usize,
    ) -> io::Result<()> {
        let Some(flow) = self.flows[idx].as_mut() else {
            return Ok(());
        };
        let mss = usize::from(flow.snd.guest_mss.min(cx.cfg.mss_for(flow.key.guest.ip())));
        let mut first = true;
        loop {
            let room = (flow.snd.wnd as usize).saturating_sub(flow.in_flight() as usize);
            if room == 0 {
                if flow.snd.wnd == 0 && flow.deadline.is_none() {
                    // Zero window: probe it later in case the window update is lost.
                    flow.deadline = Some(now + flow.snd.rto);
                }
                return Ok(()); // Data may be left: `maybe_unsent` stays.
            }
            let (want, got) = if first {
                let want = room.min(mss);
                if self.probe.len() < want {
                    self.probe.resize(want, 0);
                }
                let probe = &mut self.probe[..want];
                let got = cx.host.tcp_peek(flow.sock, flow.peeked(), &mut [probe]);
                if let Ok(n @ 1..) = got {
                    let mut f = cx.out.buffer();
                    f.resize(flow.key.headers_len(), 0);
                    f.extend_from_slice(&self.probe[..n]);
                    emit_data(cx, now, flow, f, n < want);
                }
                (want, got)
            } else {
                let seg = segment_size(cx.out, flow.link.port, mss);
                let want = room.min(seg * SEGMENTS_PER_ROUND).min(MAX_WINDOW);
                (want, peek_segments(cx, now, flow, seg, want))
            };
            first = false;
            match got {
                Ok(0) => {
                    flow.snd.host_fin = true; // End of stream.
                    break;
                }
                Ok(n) if n < want => break, // Drained; new data brings a new event.
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        flow.snd.maybe_unsent = false;
        Ok(())
    }

    fn schedule(&mut self, idx: usize) {
        let Some(flow) = self.flows[idx].as_mut() else {
            return;
        };
        if let Some(d) = flow.deadline {
            if flow.scheduled.is_none_or(|s| d < s) {
                flow.scheduled = Some(d);
                self.timers.push(Reverse((d, idx, flow.generation)));
            }
        }
    }

    /// Resets the connection on both sides and forgets it.
    fn reset(&mut self, cx: &mut Ctx<'_, impl Host>, idx: usize) {
        if let Some(flow) = self.remove(idx) {
            cx.host.tcp_close(flow.sock, true);
            if flow.state != State::HostConnecting {
                send_flags(cx, &flow, F::RST | F::ACK);
                self.stats.resets_sent += 1;
            }
        }
    }

    /// A segment for a connection we do not know: a new one if it is a SYN, else a RST.
    fn on_unknown_flow(
        &mut self,
        cx: &mut Ctx<'_, impl Host>,
        now: Instant,
        link: Link,
        key: FlowKey,
        seg: &Tcp,
    ) {
        if seg.has(F::RST) {
            return;
        }
        if !seg.has(F::SYN) || seg.has(F::ACK) {
            debug!(guest = %key.guest, remote = %key.remote, "segment for unknown connection, sending RST");
            self.stats.resets_sent += 1;
            send_reset_for(cx.out, link, key, seg);
            return;
        }
        let Some(target) = cx.cfg.outbound_ip(key.remote, true) else {
            debug!(remote = %key.remote, "no route for TCP destination, refusing");
            self.stats.refused += 1;
            send_reset_for(cx.out, link, key, seg);
            return;
        };
        if self.by_key.len() >= cx.cfg.max_tcp_flows || self.connecting >= cx.cfg.max_tcp_connecting
        {
            self.stats.table_full += 1;
            if self.stats.table_full.is_power_of_two() {
                warn!(
                    flows = self.by_key.len(),
                    connecting = self.connecting,
                    "TCP flow table full, refusing new connections (logged at powers of two)"
                );
            }
            send_reset_for(cx.out, link, key, seg);
            return;
        }
        let counts = self.per_port.get(&link.port).copied().unwrap_or_default();
        if counts.flows >= cx.cfg.max_tcp_flows_per_port
            || counts.half_open >= cx.cfg.max_tcp_half_open_per_port
        {
            self.stats.port_limit += 1;
            let (limit, what) = if counts.flows >= cx.cfg.max_tcp_flows_per_port {
                (Limit::TcpPerPort, "connections")
            } else {
                (Limit::TcpHalfOpenPerPort, "half-open connections")
            };
            if self.log.first(limit) {
                warn!(
                    port = link.port,
                    flows = counts.flows,
                    half_open = counts.half_open,
                    "a guest has as many {what} as it may: refusing its new connections (logged once)"
                );
            }
            send_reset_for(cx.out, link, key, seg);
            return;
        }
        match cx.host.tcp_connect(target) {
            Ok(sock) => {
                let mut flow = self.new_flow(key, link, sock, State::HostConnecting, now);
                flow.rcv.nxt = seg.seq + 1;
                flow.snd.guest_mss = seg
                    .mss
                    .unwrap_or(536)
                    .clamp(64, cx.cfg.mss_for(key.guest.ip()));
                if let Some(ws) = seg.window_scale {
                    flow.snd.wscale = ws;
                    flow.rcv.wscale = OUR_WSCALE;
                }
                flow.snd.wnd = u32::from(seg.window);
                // The host connect gets the SYN timeout; the SYN-ACK's retransmissions after
                // it are bounded by the same instant (`syn_expires`).
                flow.syn_expires = now + cx.cfg.tcp_syn_timeout;
                flow.deadline = Some(flow.syn_expires);
                self.connecting += 1;
                self.stats.opened += 1;
                let idx = self.insert(flow);
                self.schedule(idx);
                debug!(guest = %key.guest, remote = %key.remote, %target, "connecting");
            }
            Err(e) => {
                debug!(error = %e, %target, "host connect failed at once, sending RST");
                self.stats.refused += 1;
                send_reset_for(cx.out, link, key, seg);
            }
        }
    }

    /// The host socket of a connection finished connecting (or failed to).
    pub fn on_connected(
        &mut self,
        host: &mut impl Host,
        out: &mut Output,
        cfg: &NetConfig,
        now: Instant,
        sock: SockId,
        result: io::Result<()>,
    ) {
        let cx = &mut Ctx { host, out, cfg };
        let Some(&idx) = self.by_sock.get(&sock) else {
            return;
        };
        let Some(flow) = self.flows[idx].as_mut() else {
            return;
        };
        if flow.state != State::HostConnecting {
            return;
        }
        flow.state = State::SynReceived;
        self.connecting -= 1;
        match result {
            Ok(()) => {
                refresh_window(cx.host, flow);
                send_syn(cx, flow, F::SYN | F::ACK);
                flow.snd.nxt = flow.snd.iss + 1;
                flow.deadline = Some(now + flow.snd.rto);
                self.schedule(idx);
            }
            Err(e) => {
                debug!(error = %e, remote = %flow.key.remote, "host connect failed, sending RST");
                self.stats.refused += 1;
                // Answer the guest's SYN: RST with ACK of its sequence number.
                send_flags(cx, flow, F::RST | F::ACK);
                cx.host.tcp_close(flow.sock, false);
                self.remove(idx);
            }
        }
    }

    /// The host socket has data to read; with `peer_closed`, the peer's FIN has arrived too.
    #[allow(clippy::too_many_arguments)]
    pub fn on_readable(
        &mut self,
        host: &mut impl Host,
        out: &mut Output,
        cfg: &NetConfig,
        now: Instant,
        sock: SockId,
        peer_closed: bool,
    ) {
        let cx = &mut Ctx { host, out, cfg };
        let Some(&idx) = self.by_sock.get(&sock) else {
            return;
        };
        if let Some(flow) = self.flows[idx].as_mut() {
            flow.snd.maybe_unsent = true;
            flow.snd.host_fin |= peer_closed;
        }
        self.flush(cx, now, idx);
    }

    /// The host socket's send buffer has room again: reopen the window.
    pub fn on_writable(
        &mut self,
        host: &mut impl Host,
        out: &mut Output,
        sock: SockId,
        cfg: &NetConfig,
    ) {
        let cx = &mut Ctx { host, out, cfg };
        let Some(&idx) = self.by_sock.get(&sock) else {
            return;
        };
        let Some(flow) = self.flows[idx].as_mut() else {
            return;
        };
        if flow.rcv.send_blocked && flow.state == State::Established {
            flow.rcv.send_blocked = false;
            if let Err(e) = release_held(cx.host, &mut self.held, flow) {
                debug!(error = %e, remote = %flow.key.remote, "host send failed, resetting");
                self.reset(cx, idx);
                return;
            }
            send_ack(cx, flow);
        }
    }

    /// The host socket failed or was reset by the peer.
    pub fn on_host_error(
        &mut self,
        host: &mut impl Host,
        out: &mut Output,
        cfg: &NetConfig,
        sock: SockId,
    ) {
        let cx = &mut Ctx { host, out, cfg };
        if let Some(&idx) = self.by_sock.get(&sock) {
            self.reset(cx, idx);
        }
    }

    /// A connection accepted on a port-forward listener: open it towards the guest.
    #[allow(clippy::too_many_arguments)]
    pub fn open_forward(
        &mut self,
        host: &mut impl Host,
        out: &mut Output,
        cfg: &NetConfig,
        now: Instant,
        sock: SockId,
        link: Link,
        guest: SocketAddr,
    ) {
        let cx = &mut Ctx { host, out, cfg };
        let Some(gateway) = cx.cfg.gateway_for(guest.ip()) else {
            cx.host.tcp_close(sock, true);
            return;
        };
        if self.by_key.len() >= cx.cfg.max_tcp_flows {
            self.stats.table_full += 1;
            warn!(%guest, "TCP flow table full, dropping forwarded connection");
            cx.host.tcp_close(sock, true);
            return;
        }
        // Forwarded connections come from the gateway, from a port of our choosing.
        let remote = loop {
            self.next_forward_port = self.next_forward_port.wrapping_add(1);
            let port = 49152 + (self.next_forward_port % 16384);
            let remote = SocketAddr::new(gateway, port);
            if !self.by_key.contains_key(&FlowKey { guest, remote }) {
                break remote;
            }
        };
        let key = FlowKey { guest, remote };
        let mut flow = self.new_flow(key, link, sock, State::SynSent, now);
        flow.rcv.wscale = OUR_WSCALE;
        refresh_window(cx.host, &mut flow);
        send_syn(cx, &flow, F::SYN);
        flow.snd.nxt = flow.snd.iss + 1;
        flow.deadline = Some(now + flow.snd.rto);
        self.stats.opened += 1;
        let idx = self.insert(flow);
        self.schedule(idx);
        info!(%guest, "forwarded connection opening");
    }

    /// The connection the host opened towards a guest on host socket `sock` (a forward or a
    /// probe): its guest end and state, or `None` when there is no such connection (refused,
    /// reset, never opened).
    pub fn inbound_state(&self, sock: SockId) -> Option<(SocketAddr, InboundState)> {
        let flow = self.flows.get(*self.by_sock.get(&sock)?)?.as_ref()?;
        let state = match flow.state {
            State::SynSent => InboundState::Opening,
            State::Established => InboundState::Established,
            // Guest-initiated connections are not inbound.
            State::HostConnecting | State::SynReceived => return None,
        };
        Some((flow.key.guest, state))
    }

    /// Every live flow, for the control API.
    pub fn flow_list(&self) -> Vec<FlowInfo> {
        self.flows
            .iter()
            .flatten()
            .map(|f| FlowInfo {
                protocol: FlowProtocol::Tcp,
                guest: f.key.guest,
                remote: f.key.remote,
                port: f.link.port,
                inbound: f.inbound,
                state: match f.state {
                    State::Established => "established",
                    _ => "opening",
                },
            })
            .collect()
    }

    /// Resets every connection of a port that went away (the VM disconnected).
    pub fn port_closed(&mut self, host: &mut impl Host, port: usize) {
        let gone: Vec<usize> = self
            .by_key
            .values()
            .copied()
            .filter(|&i| self.flows[i].as_ref().is_some_and(|f| f.link.port == port))
            .collect();
        for idx in gone {
            if let Some(flow) = self.remove(idx) {
                host.tcp_close(flow.sock, true);
            }
        }
    }

    /// Earliest timer deadline. Drops stale timers first, so that a deadline that moved (every
    /// ACK clears one) never wakes the loop for nothing.
    pub fn poll_timeout(&mut self) -> Option<Instant> {
        self.prune_timers();
        let rto = self.timers.peek().map(|Reverse((d, _, _))| *d);
        let ack = self.acks_due.front().map(|(d, _, _)| *d);
        rto.into_iter().chain(ack).min()
    }

    fn prune_timers(&mut self) {
        while let Some(&(due, idx, generation)) = self.acks_due.front() {
            let flow = self.flows.get(idx).and_then(Option::as_ref);
            if flow.is_some_and(|f| f.generation == generation && f.rcv.ack_deadline == Some(due)) {
                break;
            }
            self.acks_due.pop_front();
        }
        while let Some(&Reverse((due, idx, generation))) = self.timers.peek() {
            let Some(flow) = self.flows.get_mut(idx).and_then(Option::as_mut) else {
                self.timers.pop();
                continue;
            };
            if flow.generation != generation || flow.scheduled != Some(due) {
                self.timers.pop();
                continue;
            }
            if flow.deadline == Some(due) {
                break;
            }
            // The flow's deadline went away or moved later: replace its entry.
            self.timers.pop();
            flow.scheduled = None;
            self.schedule(idx);
        }
    }

    /// Runs expired retransmission and probe timers.
    pub fn on_timeout(
        &mut self,
        host: &mut impl Host,
        out: &mut Output,
        cfg: &NetConfig,
        now: Instant,
    ) {
        let cx = &mut Ctx { host, out, cfg };
        while let Some(&(due, idx, generation)) = self.acks_due.front() {
            if due > now {
                break;
            }
            self.acks_due.pop_front();
            let Some(flow) = self.flows.get_mut(idx).and_then(Option::as_mut) else {
                continue;
            };
            if flow.generation == generation && flow.rcv.ack_deadline == Some(due) {
                flow.rcv.ack_deadline = None;
                if flow.rcv.ack_pending {
                    send_ack(cx, flow);
                }
            }
        }
        while let Some(&Reverse((deadline, idx, generation))) = self.timers.peek() {
            if deadline > now {
                break;
            }
            self.timers.pop();
            let Some(flow) = self.flows.get_mut(idx).and_then(Option::as_mut) else {
                continue;
            };
            if flow.generation != generation || flow.scheduled != Some(deadline) {
                continue;
            }
            flow.scheduled = None;
            match flow.deadline {
                None => continue,
                Some(d) if d > now => {
                    self.schedule(idx);
                    continue;
                }
                Some(_) => {}
            }
            flow.deadline = None;
            if half_open(flow.state) && now >= flow.syn_expires {
                self.stats.syn_timeouts += 1;
                if self.log.first(Limit::TcpSynTimeout) {
                    info!(guest = %flow.key.guest, remote = %flow.key.remote, "connection still half-open after the SYN timeout, resetting (logged once; counted in the statistics)");
                }
                if flow.state == State::HostConnecting {
                    // Answer the guest's SYN as a refused connect would.
                    send_flags(cx, flow, F::RST | F::ACK);
                }
                self.reset(cx, idx);
                continue;
            }
            if flow.snd.retries >= MAX_RETRIES {
                info!(guest = %flow.key.guest, remote = %flow.key.remote, "guest stopped answering, resetting connection");
                self.reset(cx, idx);
                continue;
            }
            flow.snd.retries += 1;
            flow.snd.rto = (flow.snd.rto * 2).min(RTO_MAX);
            match flow.state {
                State::HostConnecting => {}
                State::SynReceived => {
                    send_syn(cx, flow, F::SYN | F::ACK);
                    flow.deadline = Some(now + flow.snd.rto);
                }
                State::SynSent => {
                    send_syn(cx, flow, F::SYN);
                    flow.deadline = Some(now + flow.snd.rto);
                }
                State::Established => {
                    if flow.in_flight() > 0 {
                        self.stats.retransmits += 1;
                        go_back(flow);
                    } else if flow.snd.wnd == 0 {
                        // Window probe: an old sequence number makes the guest re-announce its window.
                        let mut f = cx.out.buffer();
                        f.resize(flow.key.headers_len(), 0);
                        let probe = segment_header(flow, F::ACK, flow.snd.una - 1);
                        write_segment(cx.cfg, flow, &mut f, &probe, TcpChecksum::Full);
                        cx.out.push(flow.link.port, f);
                        flow.deadline = Some(now + flow.snd.rto);
                    }
                    self.schedule(idx);
                    self.flush(cx, now, idx);
                    continue;
                }
            }
            self.schedule(idx);
        }
    }
}

/// Peeks up to `want` bytes into segments of `mss` bytes (super-segments for a port with
/// offloads) and sends them; returns the peek's result.
fn peek_segments(
    cx: &mut Ctx<'_, impl Host>,
    now: Instant,
    flow: &mut Flow,
    mss: usize,
    want: usize,
) -> io::Result<usize> {
    let headers = flow.key.headers_len();
    let mut frames: Vec<Vec<u8>> = (0..want.div_ceil(mss))
        .map(|i| cx.out.buffer_with_len(headers + mss.min(want - i * mss)))
        .collect();
    let got = {
        let mut bufs: Vec<&mut [u8]> = frames.iter_mut().map(|f| &mut f[headers..]).collect();
        cx.host.tcp_peek(flow.sock, flow.peeked(), &mut bufs)
    };
    let mut left = *got.as_ref().unwrap_or(&0);
    let drained = left < want;
    for mut f in frames {
        if left == 0 {
            cx.out.recycle(f);
            continue;
        }
        let len = (f.len() - headers).min(left);
        f.truncate(headers + len);
        left -= len;
        emit_data(cx, now, flow, f, left == 0 && drained);
    }
    got
}

/// Sends one data segment (payload after the headers in `f`) at `snd.nxt`; `last` marks the
/// end of what the socket held (PSH).
fn emit_data(
    cx: &mut Ctx<'_, impl Host>,
    now: Instant,
    flow: &mut Flow,
    mut f: Vec<u8>,
    last: bool,
) {
    let headers = flow.key.headers_len();
    let len = f.len() - headers;
    let flags = if last { F::ACK | F::PSH } else { F::ACK };
    if cx.out.offloads(flow.link.port) {
        // The guest's kernel completes the checksum and cuts what exceeds its MSS.
        let tcp = segment_header(flow, flags, flow.snd.nxt);
        write_segment(cx.cfg, flow, &mut f, &tcp, TcpChecksum::Partial);
        let mss = usize::from(flow.snd.guest_mss.min(cx.cfg.mss_for(flow.key.guest.ip())));
        let vnet = VnetHeader::tcp(headers, len, mss, flow.key.guest.is_ipv6());
        cx.out.push_offloaded(flow.link.port, f, vnet);
    } else {
        let tcp = segment_header(flow, flags, flow.snd.nxt);
        write_segment(cx.cfg, flow, &mut f, &tcp, TcpChecksum::Full);
        cx.out.push(flow.link.port, f);
    }
    flow.snd.nxt += len as u32;
    flow.ack_sent();
    if flow.deadline.is_none() {
        flow.deadline = Some(now + flow.snd.rto);
    }
}

/// Sends in-order guest data to the host socket; what the kernel does not take is left for the
/// guest to send again once the window reopens (`rcv.send_blocked`).
fn send_in_order(host: &mut impl Host, flow: &mut Flow, data: &[u8]) -> io::Result<()> {
    let n = match host.tcp_send(flow.sock, data) {
        Ok(n) => n,
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
        Err(e) => return Err(e),
    };
    flow.rcv.nxt += n as u32;
    flow.rcv.ack_pending |= n > 0;
    flow.rcv.unacked = flow.rcv.unacked.saturating_add(n as u32);
    if n < data.len() {
        flow.rcv.send_blocked = true;
    }
    Ok(())
}

/// Whether `seg`'s payload is gathered for one send at the end of the batch rather than sent
/// now: small, in order right after what is gathered already, with nothing held, the socket
/// not known to be full, and no FIN (which must follow the data into the socket).
fn gather(flow: &Flow, seg: &Tcp) -> bool {
    let len = seg.payload.len();
    len > 0
        && len < GATHER_BELOW
        && !seg.has(F::FIN)
        && !flow.rcv.fin_from_guest
        && !flow.rcv.send_blocked
        && flow.rcv.held.is_empty()
        && flow.rcv.gathered.len() + len <= GATHER_MAX
        && seg.seq == flow.rcv.nxt + flow.rcv.gathered.len() as u32
}

/// Sends the data gathered in this batch; what the socket does not take is held like the
/// rest of a partial send.
fn send_gathered(
    host: &mut impl Host,
    budget: &mut HeldBudget,
    stats: &mut TcpStats,
    flow: &mut Flow,
) -> io::Result<()> {
    if flow.rcv.gathered.is_empty() {
        return Ok(());
    }
    let data = std::mem::take(&mut flow.rcv.gathered);
    let before = flow.rcv.nxt;
    let sent = send_in_order(host, flow, &data);
    if sent.is_ok() {
        keep_unsent(budget, flow, before, &data);
        stats.partial_sends += u64::from(flow.rcv.send_blocked);
    }
    sent
}

/// Guest data held while host sockets are full (or after a gap), accounted per port. Each port
/// may always hold [`HELD_RESERVED_PER_PORT`]; beyond that it draws on a pool shared by the
/// network, up to [`HELD_PORT_MAX`]. Guests that fill the pool so slow only themselves (their
/// excess is dropped and retransmitted): every other guest still has its reserve.
#[derive(Debug, Default)]
struct HeldBudget {
    per_port: HashMap<PortId, usize>,
    /// Bytes held beyond the ports' reserves.
    shared: usize,
}

impl HeldBudget {
    /// Accounts `n` more bytes held for `port`, if the budgets allow.
    fn take(&mut self, port: PortId, n: usize) -> bool {
        let held = self.per_port.get(&port).copied().unwrap_or(0);
        let after = held + n;
        let from_pool = beyond_reserve(after) - beyond_reserve(held);
        if after > HELD_PORT_MAX || self.shared + from_pool > HELD_SHARED_MAX {
            return false;
        }
        self.shared += from_pool;
        self.per_port.insert(port, after);
        true
    }

    /// `n` bytes held for `port` were sent or dropped.
    fn give_back(&mut self, port: PortId, n: usize) {
        if n == 0 {
            return;
        }
        let Some(held) = self.per_port.get_mut(&port) else {
            return;
        };
        let after = held.saturating_sub(n);
        self.shared -= beyond_reserve(*held) - beyond_reserve(after);
        *held = after;
        if after == 0 {
            self.per_port.remove(&port);
        }
    }
}

fn beyond_reserve(held: usize) -> usize {
    held.saturating_sub(HELD_RESERVED_PER_PORT)
}

/// Keeps a guest segment that arrived after a gap, or while the host socket is full, if it
/// lies within the window we offered and the budgets allow; true if it is held (now or
/// before). Data that continues the last held segment is appended to it, so a window's worth
/// of in-order segments held while the socket is full costs one entry, not one per segment.
fn hold(budget: &mut HeldBudget, flow: &mut Flow, seq: SeqNumber, payload: &[u8]) -> bool {
    let ahead = (seq - flow.rcv.nxt) as usize;
    // The right edge we advertised last; `rcv.wnd` is zero while the socket is full, but
    // the guest may still be sending into the window it saw before.
    let edge = if flow.rcv.nxt < flow.rcv.edge {
        (flow.rcv.edge - flow.rcv.nxt) as usize
    } else {
        0
    };
    if ahead + payload.len() > edge.max(flow.rcv.wnd as usize) {
        return false;
    }
    let at = flow.rcv.held.partition_point(|(s, _)| *s < seq);
    if flow
        .rcv
        .held
        .get(at)
        .is_some_and(|(s, d)| *s == seq && d.len() >= payload.len())
    {
        return true; // A retransmission of what is held already.
    }
    let appends = at == flow.rcv.held.len()
        && flow.rcv.held.last().is_some_and(|(last_seq, last)| {
            *last_seq + last.len() as u32 == seq && last.len() + payload.len() <= HELD_CHUNK_MAX
        });
    if !appends && flow.rcv.held.len() >= HELD_SEGMENTS_MAX {
        return false;
    }
    if !budget.take(flow.link.port, payload.len()) {
        return false;
    }
    match flow.rcv.held.last_mut() {
        Some((_, last)) if appends => last.extend_from_slice(payload),
        _ => flow.rcv.held.insert(at, (seq, payload.to_vec())),
    }
    true
}

/// After a send the host socket took only part of (`data`, which started at `before`), keeps
/// the rest as a held segment for when the socket drains, within the held budgets: with
/// 64 KiB super-segments from a port with offloads, making the guest resend it would cost a
/// loss recovery each time the send buffer fills.
fn keep_unsent(budget: &mut HeldBudget, flow: &mut Flow, before: SeqNumber, data: &[u8]) {
    if !flow.rcv.send_blocked {
        return;
    }
    let taken = (flow.rcv.nxt - before) as usize;
    let Some(rest) = data.get(taken..).filter(|r| !r.is_empty()) else {
        return;
    };
    if flow.rcv.held.len() >= HELD_SEGMENTS_MAX || !budget.take(flow.link.port, rest.len()) {
        return;
    }
    let at = flow.rcv.held.partition_point(|(s, _)| *s < flow.rcv.nxt);
    flow.rcv.held.insert(at, (flow.rcv.nxt, rest.to_vec()));
}

/// Sends the held segments that the in-order stream has now reached; true if any data moved.
fn release_held(
    host: &mut impl Host,
    budget: &mut HeldBudget,
    flow: &mut Flow,
) -> io::Result<bool> {
    let mut moved = false;
    while let Some(&(seq, _)) = flow.rcv.held.first() {
        if flow.rcv.send_blocked || flow.rcv.nxt < seq {
            break;
        }
        let (seq, data) = flow.rcv.held.remove(0);
        let skip = (flow.rcv.nxt - seq) as usize;
        if skip >= data.len() {
            budget.give_back(flow.link.port, data.len());
            continue; // Covered by later in-order data.
        }
        let before = flow.rcv.nxt;
        let sent = send_in_order(host, flow, &data[skip..]);
        let taken = skip + (flow.rcv.nxt - before) as usize;
        moved |= flow.rcv.nxt != before;
        if flow.rcv.send_blocked && sent.is_ok() {
            // Keep the rest (already accounted) for when the socket drains.
            budget.give_back(flow.link.port, taken);
            flow.rcv
                .held
                .insert(0, (flow.rcv.nxt, data[taken..].to_vec()));
        } else {
            budget.give_back(flow.link.port, data.len());
        }
        sent?;
    }
    Ok(moved)
}

/// Retransmit from the first unacknowledged byte.
fn go_back(flow: &mut Flow) {
    let sent = flow.snd.nxt - u32::from(flow.snd.fin_sent);
    flow.snd.recover = flow.snd.recover.max(sent);
    flow.snd.nxt = flow.snd.una;
    flow.snd.dup_acks = 0;
    // The data goes out again, then the FIN if it had been sent.
    flow.snd.fin_sent = false;
    flow.snd.maybe_unsent = true;
}

/// Recomputes the window we offer the guest from the host socket's free send space.
///
/// Every byte sent since the last query used up at most one byte of that space, so the edge it
/// reached is still a promise the kernel keeps: while at least half of it is left, the window
/// is what remains up to that edge and the kernel is not asked (one system call less per ACK).
fn refresh_window(host: &mut impl Host, flow: &mut Flow) {
    if flow.rcv.send_blocked || flow.rcv.fin_from_guest {
        flow.rcv.wnd = 0;
        flow.rcv.space = 0;
        return;
    }
    let left = flow.rcv.edge - flow.rcv.nxt;
    if left <= flow.rcv.space && left >= flow.rcv.space / 2 && left > 0 {
        flow.rcv.wnd = left;
        return;
    }
    let space = host.tcp_send_space(flow.sock).min(MAX_WINDOW) as u32;
    flow.rcv.wnd = space;
    flow.rcv.space = space;
    flow.rcv.edge = flow.rcv.nxt + space;
}

/// The window field for the next segment, scaled.
fn window_field(flow: &Flow) -> u16 {
    (flow.rcv.wnd >> flow.rcv.wscale).min(u32::from(u16::MAX)) as u16
}

/// Acknowledges everything received, with a fresh window.
fn send_ack(cx: &mut Ctx<'_, impl Host>, flow: &mut Flow) {
    refresh_window(cx.host, flow);
    send_flags(cx, flow, F::ACK);
    flow.ack_sent();
}

/// Emits a segment with no payload.
fn send_flags(cx: &mut Ctx<'_, impl Host>, flow: &Flow, flags: u8) {
    let mut f = cx.out.buffer();
    f.resize(flow.key.headers_len(), 0);
    let seq = if flags & F::RST != 0 && flags & F::ACK == 0 {
        flow.snd.una
    } else {
        flow.snd.nxt
    };
    write_segment(
        cx.cfg,
        flow,
        &mut f,
        &segment_header(flow, flags, seq),
        TcpChecksum::Full,
    );
    cx.out.push(flow.link.port, f);
}

/// Emits a SYN or SYN-ACK with our MSS and window scale options.
fn send_syn(cx: &mut Ctx<'_, impl Host>, flow: &Flow, flags: u8) {
    let mut tcp = segment_header(flow, flags, flow.snd.iss);
    tcp.mss = Some(cx.cfg.mss_for(flow.key.guest.ip()));
    if flow.rcv.wscale > 0 || flags == F::SYN {
        tcp.window_scale = Some(OUR_WSCALE);
    }
    let mut f = cx.out.buffer();
    f.resize(
        flow.key.headers_len() - TCP_HEADER_LEN + tcp.header_len(),
        0,
    );
    write_segment(cx.cfg, flow, &mut f, &tcp, TcpChecksum::Full);
    cx.out.push(flow.link.port, f);
}

/// The option-less TCP header of a segment from the flow's remote end to the guest, at `seq`:
/// it acknowledges everything received when `flags` has ACK, and offers the current window.
fn segment_header(flow: &Flow, flags: u8, seq: SeqNumber) -> TcpRepr {
    let window = if flags & F::SYN != 0 {
        // The window in a SYN is never scaled.
        flow.rcv.wnd.min(u32::from(u16::MAX)) as u16
    } else {
        window_field(flow)
    };
    TcpRepr {
        src_port: flow.key.remote.port(),
        dst_port: flow.key.guest.port(),
        seq,
        ack: if flags & F::ACK != 0 {
            flow.rcv.nxt
        } else {
            SeqNumber(0)
        },
        flags,
        window,
        mss: None,
        window_scale: None,
        sack_permitted: false,
    }
}

/// Fills in the Ethernet and IP headers of `f` and writes `tcp` after them; the payload
/// follows `tcp`'s header in `f`. The segment goes from the flow's remote end to the guest.
fn write_segment(cfg: &NetConfig, flow: &Flow, f: &mut [u8], tcp: &TcpRepr, sum: TcpChecksum) {
    let src = flow.key.remote.ip();
    let dst = flow.key.guest.ip();
    let l4 = ETH_HEADER_LEN + ip_header_len(dst);
    let tcp_len = f.len() - l4;
    write_link_and_ip(
        f,
        flow.link.mac,
        cfg.gateway_mac,
        src,
        dst,
        wire::PROTO_TCP,
        tcp_len,
    );
    tcp.emit(&mut f[l4..], src, dst, sum);
}

/// RST for a segment that belongs to no connection (RFC 793, "reset generation").
fn send_reset_for(out: &mut Output, link: Link, key: FlowKey, seg: &Tcp) {
    let (seq, ack, flags) = if seg.has(F::ACK) {
        (seg.ack, SeqNumber(0), F::RST)
    } else {
        (SeqNumber(0), seg.seq + seg.seq_len(), F::RST | F::ACK)
    };
    let rst = TcpRepr {
        src_port: key.remote.port(),
        dst_port: key.guest.port(),
        seq,
        ack,
        flags,
        window: 0,
        mss: None,
        window_scale: None,
        sack_permitted: false,
    };
    let mut t = [0u8; TCP_HEADER_LEN];
    rst.emit(&mut t, key.remote.ip(), key.guest.ip(), TcpChecksum::Full);
    out.ip(link, key.remote.ip(), key.guest.ip(), wire::PROTO_TCP, &t);
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: usize = 1 << 20;

    #[test]
    fn guests_that_fill_the_held_pool_leave_every_other_guest_its_reserve() {
        let mut budget = HeldBudget::default();
        let (a, b, c): (PortId, PortId, PortId) = (1, 2, 3);
        // One port may hold one full window, not more.
        assert!(budget.take(a, HELD_PORT_MAX));
        assert!(!budget.take(a, 1));
        // Two more greedy ports drain the shared pool ...
        assert!(budget.take(b, HELD_PORT_MAX));
        let left = HELD_SHARED_MAX - 2 * (HELD_PORT_MAX - HELD_RESERVED_PER_PORT);
        assert!(budget.take(c, HELD_RESERVED_PER_PORT + left));
        assert!(!budget.take(c, 1));
        assert_eq!(budget.shared, HELD_SHARED_MAX);
        // ... yet a fourth still has its reserve, and only that.
        let honest: PortId = 4;
        assert!(budget.take(honest, HELD_RESERVED_PER_PORT));
        assert!(!budget.take(honest, 1));
        // What is sent or dropped goes back to the pool, and emptied ports are forgotten.
        budget.give_back(a, HELD_PORT_MAX);
        assert!(budget.take(honest, 2 * MIB));
        for (port, n) in [(b, HELD_PORT_MAX), (c, HELD_RESERVED_PER_PORT + left)] {
            budget.give_back(port, n);
        }
        budget.give_back(honest, HELD_RESERVED_PER_PORT + 2 * MIB);
        assert_eq!(budget.shared, 0);
        assert!(budget.per_port.is_empty());
    }
}
