//! Datagram listeners (QEMU `-netdev dgram`, vfkit): one bound socket shared by every peer,
//! each peer (told apart by its bound address) a port of its own.

use super::{Network, Source};
use crate::transport::Io;
use std::io;
use std::path::Path;
use std::rc::Rc;
use std::time::Instant;
use tracing::{debug, warn};

/// Peers of one datagram listener.
const MAX_DGRAM_PEERS: usize = 256;

impl Network {
    pub(super) fn read_dgram_listener(&mut self, now: Instant, idx: usize) {
        for _ in 0..crate::transport::READS_PER_EVENT * 4 {
            let Some(Some(Source::DgramListener {
                socket,
                peers,
                path,
            })) = self.sources.get(idx)
            else {
                return;
            };
            let (n, addr) = match socket.recv_from(&mut self.scratch) {
                Ok(r) => r,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    warn!(error = %e, path = %path.display(), "datagram receive failed");
                    return;
                }
            };
            let Some(peer) = addr.as_pathname().map(Path::to_path_buf) else {
                if !self.unnamed_peer_warned {
                    self.unnamed_peer_warned = true;
                    warn!(path = %path.display(), "datagram from an unbound socket: cannot reply, dropping (bind a local path, e.g. QEMU -netdev dgram,local.type=unix,...)");
                }
                continue;
            };
            let port_idx = match peers.get(&peer) {
                Some(&p) => p,
                None => {
                    if peers.len() >= MAX_DGRAM_PEERS {
                        warn!(peer = %peer.display(), "too many datagram peers, dropping");
                        continue;
                    }
                    let socket = Rc::clone(socket);
                    let name = format!("dgram:{}", peer.display());
                    let Ok(p) = self.add_port(
                        Io::Peer {
                            socket,
                            peer: peer.clone(),
                        },
                        name,
                        false,
                    ) else {
                        continue;
                    };
                    if let Some(Some(Source::DgramListener { peers, .. })) =
                        self.sources.get_mut(idx)
                    {
                        peers.insert(peer, p);
                    }
                    self.pending_reads.remove(&p);
                    // vfkit announces itself with a 4-byte magic datagram.
                    if &self.scratch[..n] == b"VFKT" {
                        continue;
                    }
                    p
                }
            };
            if n == 0 || n > self.max_frame {
                debug!(len = n, "dropping datagram of invalid frame size");
                continue;
            }
            let Some(Some(Source::Port { id, counters, .. })) = self.sources.get_mut(port_idx)
            else {
                continue;
            };
            let id = *id;
            counters.frames_in += 1;
            counters.bytes_in += n as u64;
            if let Some(p) = &mut self.pcap {
                let _ = p.write(&self.scratch[..n]);
            }
            self.round_bytes += n;
            let dropped = self.stack.frames_dropped();
            self.stack
                .handle_frame(&mut self.host, now, id, &self.scratch[..n]);
            let dropped = self.stack.frames_dropped() - dropped;
            if let Some(Some(Source::Port { counters, .. })) = self.sources.get_mut(port_idx) {
                counters.drops_in += dropped;
            }
        }
        // Budget spent with data possibly left: come back without waiting for an edge.
        self.pending_reads.insert(idx);
    }

    /// The shared socket has room again: every peer's port may write.
    pub(super) fn dgram_writable(&mut self, idx: usize) {
        let peers: Vec<usize> = match &self.sources[idx] {
            Some(Source::DgramListener { peers, .. }) => peers.values().copied().collect(),
            _ => Vec::new(),
        };
        for p in peers {
            self.flush_port(p);
        }
    }
}
