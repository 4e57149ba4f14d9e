//! Guest ports: attaching and detaching them, reading their frames into the netstack, and
//! writing the netstack's output to them (each frame also goes to the pcap capture, if any).

use super::{Network, NetworkError, PortCounters, Source};
use crate::transport::{Io, Port, PortError, ReadStatus};
use mio::Interest;
use std::io;
use std::rc::Rc;
use std::time::Instant;
use tracing::{debug, error, info};

impl Network {
    pub(super) fn add_port(
        &mut self,
        io: Io,
        name: String,
        vnet_hdr: bool,
    ) -> Result<usize, NetworkError> {
        let id = self.stack.add_port();
        info!(port = id, %name, offloads = vnet_hdr, "guest connected");
        // A vhost-user guest's offloads are known once its driver acks features.
        let offloads_now = vnet_hdr && !matches!(io, Io::Vhost(_));
        let mut port = Port::with_budget(io, name, Rc::clone(&self.queue_budget));
        if vnet_hdr {
            port.set_vnet_hdr();
            self.stack.set_port_offloads(id, offloads_now);
        }
        // A stream client may negotiate offloads with its first frame (`limanet attach`).
        port.offer_offloads();
        let idx = self.add_source(
            Source::Port {
                port,
                id,
                counters: PortCounters::default(),
            },
            Interest::READABLE | Interest::WRITABLE,
        )?;
        self.port_sources.insert(id, idx);
        self.had_port = true;
        // Data may already be waiting (edge-triggered: no event for it).
        self.pending_reads.insert(idx);
        Ok(idx)
    }

    pub(super) fn remove_port(&mut self, idx: usize, reason: &str) {
        if let Some(Source::Port { mut port, id, .. }) = self.remove_source(idx) {
            info!(port = id, name = %port.name, reason, "guest disconnected");
            self.port_sources.remove(&id);
            self.stack.remove_port(&mut self.host, id);
            port.drain(|b| self.stack.out.recycle(b));
            if let Io::Peer { peer, .. } = &port.io {
                for source in self.sources.iter_mut().flatten() {
                    if let Source::DgramListener { peers, .. } = source {
                        peers.remove(peer);
                    }
                }
            }
        }
    }

    pub(super) fn read_port(&mut self, now: Instant, idx: usize) {
        if matches!(
            self.sources.get(idx),
            Some(Some(Source::DgramListener { .. }))
        ) {
            return self.read_dgram_listener(now, idx);
        }
        let Some(Some(Source::Port { port, id, counters })) = self.sources.get_mut(idx) else {
            return;
        };
        let id = *id;
        if let Io::Vhost(vhost) = &port.io {
            if let Some(on) = vhost.take_offload_change() {
                info!(port = id, name = %port.name, offloads = on, "guest negotiated its features");
                self.stack.set_port_offloads(id, on);
            }
        }
        let stack = &mut self.stack;
        let host = &mut self.host;
        let pcap = &mut self.pcap;
        let round_bytes = &mut self.round_bytes;
        let dropped = stack.frames_dropped();
        let result = port.read_frames_with(self.max_frame, &mut self.scratch, |frame, vnet| {
            if let Some(p) = pcap {
                let _ = p.write(frame);
            }
            *round_bytes += frame.len();
            counters.frames_in += 1;
            counters.bytes_in += frame.len() as u64;
            match vnet {
                Some(v) => stack.handle_offloaded_frame(host, now, id, frame, v),
                None => stack.handle_frame(host, now, id, frame),
            }
        });
        counters.drops_in += stack.frames_dropped() - dropped;
        if port.take_negotiated() {
            info!(port = id, name = %port.name, "guest negotiated offloads");
            self.stack.set_port_offloads(id, true);
            // The ack is queued in the port.
            self.flush_port(idx);
        }
        match result {
            Ok(ReadStatus::Drained) => {}
            Ok(ReadStatus::More) => {
                self.pending_reads.insert(idx);
            }
            Ok(ReadStatus::Closed) => self.remove_port(idx, "closed by peer"),
            Err(PortError::Io(e)) if e.kind() == io::ErrorKind::ConnectionReset => {
                self.remove_port(idx, "connection reset")
            }
            Err(e) => {
                error!(error = %e, "closing port after a transport error");
                self.remove_port(idx, "transport error");
            }
        }
    }

    pub(super) fn flush_output(&mut self) {
        let mut queue = std::mem::take(&mut self.stack.out.queue);
        let mut dirty: Vec<usize> = Vec::new();
        for tx in queue.drain(..) {
            if let Some(p) = &mut self.pcap {
                let _ = p.write(&tx.frame);
            }
            self.round_bytes += tx.frame.len();
            let Some(&idx) = self.port_sources.get(&tx.port) else {
                self.stack.out.recycle(tx.frame);
                continue;
            };
            if let Some(Some(Source::Port { port, counters, .. })) = self.sources.get_mut(idx) {
                if !port.has_output() {
                    dirty.push(idx);
                }
                let len = tx.frame.len() as u64;
                match port.queue_with(tx.frame, tx.vnet) {
                    None => {
                        counters.frames_out += 1;
                        counters.bytes_out += len;
                    }
                    Some(f) => {
                        counters.drops_out += 1;
                        self.stack.out.recycle(f);
                    }
                }
            }
        }
        self.stack.out.queue = queue;
        for idx in dirty {
            self.flush_port(idx);
        }
    }

    pub(super) fn flush_port(&mut self, idx: usize) {
        let Some(Some(Source::Port { port, .. })) = self.sources.get_mut(idx) else {
            return;
        };
        let out = &mut self.stack.out;
        if let Err(e) = port.flush(|b| out.recycle(b)) {
            let reason = match e.raw_os_error() {
                Some(libc::EPIPE)
                | Some(libc::ECONNRESET)
                | Some(libc::ECONNREFUSED)
                | Some(libc::ENOENT) => "peer went away",
                _ => "write error",
            };
            debug!(error = %e, "port write failed");
            self.remove_port(idx, reason);
        }
    }
}
