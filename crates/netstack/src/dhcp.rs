//! DHCPv4 server (being written).
