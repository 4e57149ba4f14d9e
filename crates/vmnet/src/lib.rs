//! `limanet vmnet`: a socket_vmnet-compatible daemon for Lima's `shared`, `host` and `bridged`
//! networks on Linux.
//!
//! One daemon per network. VMs connect to its unix socket with QEMU's stream framing (4-byte
//! big-endian length, then the Ethernet frame), as they do to socket_vmnet; `limanet attach`
//! clients may negotiate the protocol's offload extension (`limanet_netstack::stream_offload`)
//! and exchange TCP super-segments with the daemon. Inside, a learning
//! switch ([`switch`]) connects them with each other and, through one TAP device or packet socket
//! ([`backend`]), with the host kernel: a bridge of limanet's own with the gateway address
//! (host, shared; shared adds NAT, [`nft`]) or the host interface named by `--vmnet-interface`
//! (bridged). DHCP for host and shared networks is answered inside the switch ([`gateway`]),
//! DNS at the gateway by limanet's host-resolver DNS.
//!
//! Unlike socket_vmnet (`lima-behaviour.md` §5), a bad client (lying length, oversize or
//! zero-length frame, short read) is disconnected alone, known unicast is not flooded, and a
//! client that stops reading only loses its own frames.

pub mod backend;
pub mod daemon;
pub mod gateway;
pub mod netlink;
pub mod nft;
pub mod options;
pub mod process;
pub mod relay;
pub mod service;
pub mod switch;
pub mod uplinks;

pub use options::{parse, usage, Mode, Parsed, UsageError, VmnetOptions};
