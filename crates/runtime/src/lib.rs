//! Linux data plane for limanet: one mio event loop per network, frame transports (QEMU stream
//! and datagram sockets, Lima's fd socket, TAP devices in network namespaces) and the host
//! sockets that the netstack's flows are translated onto.

pub mod busy_poll;
pub mod files;
pub mod limits;
pub mod network;
pub mod pcap;
pub mod privileges;
pub mod sandbox;
pub mod sockets;
pub mod sys;
pub mod tap;
pub mod transport;
pub mod vhost;

pub use files::{BoundPath, ExclusiveFile, FileError, PidFile, PidFileState, PidFormat};
pub use network::{
    Command, Control, ControlClosed, Exit, Forward, Listen, Network, NetworkError, NetworkStats,
    Options, PacketPort, PortCounters, PortStats, Reply,
};
pub use tap::{
    adopt_passed_tap, create_tap_in, open_netns, set_vnet_hdr_len, PassedTap, Tap, TapConfig,
};
