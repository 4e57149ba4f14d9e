//! Read-only views of a network's state for the control API: the flow table and the switch's
//! MAC table. Plain data, built on request; nothing here is on the frame path.

use crate::output::PortId;
use crate::wire::MacAddr;
use std::net::SocketAddr;

/// Transport protocol of a flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlowProtocol {
    Tcp,
    Udp,
}

impl FlowProtocol {
    pub fn as_str(self) -> &'static str {
        match self {
            FlowProtocol::Tcp => "tcp",
            FlowProtocol::Udp => "udp",
        }
    }
}

/// One entry of the flow table, as a user wants to see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlowInfo {
    pub protocol: FlowProtocol,
    /// The guest's end.
    pub guest: SocketAddr,
    /// The other end as the guest sees it (for port forwards: the gateway and the port that
    /// stands for the host client).
    pub remote: SocketAddr,
    /// The switch port (VM) the flow belongs to.
    pub port: PortId,
    /// Opened from the host through a port forward (or a probe), not by the guest.
    pub inbound: bool,
    /// `"opening"` or `"established"` for TCP; `"active"` for UDP.
    pub state: &'static str,
}

/// State of a connection the host opened towards a guest (a forward or a probe), by its host
/// socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InboundState {
    /// SYN sent, no answer yet.
    Opening,
    /// The guest accepted the connection.
    Established,
}

/// One entry of the switch's MAC table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CamEntry {
    pub mac: MacAddr,
    pub port: PortId,
}
