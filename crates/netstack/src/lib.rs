//! I/O-free core of limanet's user-mode networks.
//!
//! A [`Stack`] is one network: a learning switch between ports (VMs, namespaces) and a gateway
//! that serves ARP, DHCP and ICMP echo and translates guest TCP, UDP and ICMP onto host sockets.
//! Both IPv4 and IPv6 (Neighbor Discovery, Router Advertisements, stateless DHCPv6; see
//! [`ndp`]). It performs no I/O and reads no clock:
//! - frames from a port go in through [`Stack::handle_frame`] (then [`Stack::end_batch`] once per
//!   batch), and frames for ports come out in `stack.out.queue`;
//! - host sockets are reached through the [`Host`] trait, and their readiness comes back through
//!   the `Stack::on_*` methods;
//! - time is passed in; [`Stack::poll_timeout`] says when [`Stack::on_timeout`] is next due.
//!
//! Parsing never panics on any input; malformed frames are counted and dropped. No guest is
//! trusted: source MACs and addresses are checked against what each port may use
//! ([`guard`]), checksums are verified, and every shared table has a per-guest share
//! ([`limits`] lists the limits; each is logged once when it first bites).

pub mod checksum;
pub mod config;
pub mod dhcp;
pub mod dhcp6;
pub mod guard;
pub mod host;
pub mod icmp;
pub mod inspect;
pub mod limits;
pub mod ndp;
pub mod output;
pub mod stack;
pub mod stream_offload;
pub mod tcp;
pub mod udp;
pub mod vnet;
pub mod wire;
pub mod wire6;

pub use config::NetConfig;
pub use host::{Host, SockId};
pub use inspect::{CamEntry, FlowInfo, FlowProtocol, InboundState};
pub use output::{Link, Output, PortId, TxFrame};
pub use stack::{MacDisplay, Stack, StackError};
pub use vnet::VnetHeader;
