//! I/O-free core of limanet's user-mode networks.

pub mod dhcp;
