//! user-v2 paths and subnet arithmetic (Lima's `pkg/networks/usernet`, spec §1.10).

use crate::error::ConfigError;
use crate::home::LimaHome;
use crate::networks::Network;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

/// Linux's `UNIX_PATH_MAX`; a socket path must be shorter.
pub const UNIX_PATH_MAX: usize = 108;

/// The fixed MAC of the user-v2 gateway.
pub const GATEWAY_MAC: &str = "5a:94:ef:e4:0c:dd";

/// The sockets of a user-mode network: the three a user-v2 daemon listens on, and the
/// vhost-user socket of an instance's own network (`limanet start --vhost-user`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SockKind {
    /// QEMU stream socket (4-byte big-endian length + frame).
    Qemu,
    /// fd-passing socket (one SOCK_DGRAM fd via SCM_RIGHTS).
    Fd,
    /// HTTP API endpoint.
    Ep,
    /// vhost-user-net socket (QEMU `-chardev socket` + `-netdev vhost-user`).
    Vhost,
}

impl SockKind {
    /// `qemu`, `fd`, `ep` or `vhost`.
    pub fn as_str(self) -> &'static str {
        match self {
            SockKind::Qemu => "qemu",
            SockKind::Fd => "fd",
            SockKind::Ep => "ep",
            SockKind::Vhost => "vhost",
        }
    }
}

/// The subnet a user-v2 network serves: `gateway & netmask` and the netmask's prefix length
/// (Lima's `netmaskToCidr`). Like Go's `IPMask.Size`, a missing or non-contiguous netmask gives
/// prefix 0 (limanet's defaults fill the netmask, so loaded configs get /24).
pub fn subnet(net: &Network) -> Result<(Ipv4Addr, u8), ConfigError> {
    let gateway = net.gateway.ok_or(ConfigError::NoGateway)?;
    let prefix = net.netmask.map_or(0, prefix_len);
    Ok((Ipv4Addr::from(u32::from(gateway) & mask(prefix)), prefix))
}

/// The prefix length of a contiguous netmask, 0 for a non-contiguous one.
pub fn prefix_len(netmask: Ipv4Addr) -> u8 {
    let m = u32::from(netmask);
    let ones = m.leading_ones();
    if m.checked_shl(ones).unwrap_or(0) == 0 {
        ones as u8
    } else {
        0
    }
}

/// The netmask of a prefix length (0..=32).
pub fn mask(prefix: u8) -> u32 {
    if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(prefix.min(32)))
    }
}

/// The gateway the guest sees: network + 2.
pub fn gateway_ip(network: Ipv4Addr) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(network).wrapping_add(2))
}

/// The DNS address: network + 3.
pub fn dns_ip(network: Ipv4Addr) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(network).wrapping_add(3))
}

/// `<dir>/<name or "default">_<kind>.sock`, which must be shorter than [`UNIX_PATH_MAX`].
pub fn sock(dir: &Path, name: &str, kind: SockKind) -> Result<PathBuf, ConfigError> {
    let name = if name.is_empty() { "default" } else { name };
    let path = dir.join(format!("{name}_{}.sock", kind.as_str()));
    check_len("socket", &path)?;
    Ok(path)
}

fn check_len(what: &'static str, path: &Path) -> Result<(), ConfigError> {
    let len = path.as_os_str().len();
    if len >= UNIX_PATH_MAX {
        return Err(ConfigError::PathTooLong {
            what,
            path: path.to_string_lossy().into_owned(),
            max: UNIX_PATH_MAX,
            len,
        });
    }
    Ok(())
}

/// `$LIMA_HOME/_networks/<name>`.
pub fn dir(home: &LimaHome, name: &str) -> PathBuf {
    home.networks_dir().join(name)
}

/// `<dir>/usernet_<name>.pid`.
pub fn pid_file(home: &LimaHome, name: &str) -> PathBuf {
    dir(home, name).join(format!("usernet_{name}.pid"))
}

/// `<dir>/leases.json` (same length limit as the sockets, as in Lima).
pub fn leases_file(home: &LimaHome, name: &str) -> Result<PathBuf, ConfigError> {
    let path = dir(home, name).join("leases.json");
    check_len("leases", &path)?;
    Ok(path)
}

/// `<dir>/usernet.<name>.<stream>.log` (`stream` is `stdout` or `stderr`).
pub fn log_file(home: &LimaHome, name: &str, stream: &str) -> PathBuf {
    dir(home, name).join(format!("usernet.{name}.{stream}.log"))
}

/// Host search domains: the first line starting with `search ` split on single spaces.
pub fn search_domains(resolv_conf_text: &str) -> Vec<String> {
    resolv_conf_text
        .lines()
        .find_map(|l| l.strip_prefix("search "))
        .map(|rest| rest.split(' ').map(str::to_owned).collect())
        .unwrap_or_default()
}
