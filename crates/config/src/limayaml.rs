//! lima.yaml-style `networks:` entries (spec §2): merging the default/instance/override lists,
//! filling MACs, interface names and metrics, validation, and the `--network`/`--dns` flags.

use crate::networks::NetworksConfig;
use crate::quote::go_quote_backtick as q;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::path::Path;

/// Default route metric of the additional NICs (the slirp eth0 has [`SLIRP_METRIC`]).
pub const DEFAULT_METRIC: u32 = 100;
/// Route metric of the built-in eth0.
pub const SLIRP_METRIC: u32 = 200;
/// The slirp NIC's name, which entries must not use.
pub const SLIRP_NIC_NAME: &str = "eth0";

/// One `networks:` entry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkEntry {
    /// A networks.yaml network name.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub lima: String,
    /// An unmanaged QEMU-compatible stream socket.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub socket: String,
    /// VZ's NAT (macOS only; QEMU ignores it).
    #[serde(rename = "vzNAT", default, skip_serializing_if = "std::ops::Not::not")]
    pub vz_nat: bool,
    /// The guest MAC.
    #[serde(
        rename = "macAddress",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub mac_address: String,
    /// The guest interface name.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub interface: String,
    /// The guest route metric.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metric: Option<u32>,
}

/// Lima's merge of `d.networks`, `y.networks` and `o.networks` (in that order): a later entry
/// with the same non-empty `interface` as an earlier one is merged into it (socket or lima
/// replaces both, lima winning when both are set; a non-empty MAC and a set metric override;
/// vzNAT is not merged).
pub fn merge(d: &[NetworkEntry], y: &[NetworkEntry], o: &[NetworkEntry]) -> Vec<NetworkEntry> {
    let mut out: Vec<NetworkEntry> = Vec::new();
    for e in d.iter().chain(y).chain(o) {
        let earlier = (!e.interface.is_empty())
            .then(|| out.iter_mut().find(|p| p.interface == e.interface))
            .flatten();
        let Some(prev) = earlier else {
            out.push(e.clone());
            continue;
        };
        if !e.socket.is_empty() {
            prev.socket = e.socket.clone();
            prev.lima.clear();
        }
        if !e.lima.is_empty() {
            if !e.socket.is_empty() {
                tracing::error!(
                    "Network {} has both socket={} and lima={} fields; ignoring socket",
                    q(&e.interface),
                    q(&e.socket),
                    q(&e.lima)
                );
            }
            prev.lima = e.lima.clone();
            prev.socket.clear();
        }
        if !e.mac_address.is_empty() {
            prev.mac_address = e.mac_address.clone();
        }
        if e.metric.is_some() {
            prev.metric = e.metric;
        }
    }
    out
}

/// Fills the per-entry defaults: MAC `MACAddress("<lima.yaml path>#<i>")`, interface `lima<i>`,
/// metric 100. `lima_yaml_path` should be absolute (Lima uses the instance dir with
/// `$LIMA_HOME`'s symlinks resolved, plus `/lima.yaml`).
pub fn fill_defaults(entries: &mut [NetworkEntry], lima_yaml_path: &Path, machine_id: &str) {
    for (i, e) in entries.iter_mut().enumerate() {
        if e.mac_address.is_empty() {
            e.mac_address =
                crate::mac::mac_address(machine_id, &format!("{}#{i}", lima_yaml_path.display()));
        }
        if e.interface.is_empty() {
            e.interface = format!("lima{i}");
        }
        if e.metric.is_none() {
            e.metric = Some(DEFAULT_METRIC);
        }
    }
}

/// One validation failure. The messages are Lima's, typos included.
#[derive(Debug, thiserror::Error)]
pub enum EntryError {
    /// A `lima:` name that networks.yaml does not define (Lima then drops all other errors).
    #[error(transparent)]
    Config(#[from] crate::ConfigError),
    /// `lima` and `socket` both set.
    #[error("field `networks[{0}].lima` and field `networks[{0}].socket` are mutually exclusive")]
    LimaAndSocket(usize),
    /// `lima` and `vzNAT` both set.
    #[error("field `networks[{0}].lima` and field `networks[{0}].vzNAT` are mutually exclusive")]
    LimaAndVzNat(usize),
    /// `socket` and `vzNAT` both set.
    #[error("field `networks[{0}].socket` and field `networks[{0}].vzNAT` are mutually exclusive")]
    SocketAndVzNat(usize),
    /// `stat` of the socket failed with something other than not-found.
    #[error("stat {path}: {error}")]
    SocketStat {
        /// The socket path.
        path: String,
        /// The error.
        error: std::io::Error,
    },
    /// The socket path exists but is not a socket.
    #[error("field `networks[{index}].socket` {} points to a non-socket file", q(.path))]
    NotASocket {
        /// Entry index.
        index: usize,
        /// The path.
        path: String,
    },
    /// Neither lima, socket nor vzNAT.
    #[error("field `networks[{0}].lima` or  field `networks[{0}].socket must be set")]
    NothingSet(usize),
    /// The MAC does not parse (Lima's legacy field name).
    #[error("field `vmnet.mac` invalid: address {0}: invalid MAC address")]
    MacInvalid(String),
    /// The MAC is not 6 bytes.
    #[error("field `networks[{index}].macAddress` must be a 48 bit (6 bytes) MAC address; actual length of {} is {len} bytes", q(.mac))]
    MacLength {
        /// Entry index.
        index: usize,
        /// The value.
        mac: String,
        /// Parsed length (0 when unparseable).
        len: usize,
    },
    /// Interface name of 16 bytes or more.
    #[error("field `networks[{index}].interface` must be less than 16 bytes, but is {len} bytes: {}", q(.interface))]
    InterfaceTooLong {
        /// Entry index.
        index: usize,
        /// Length in bytes.
        len: usize,
        /// The value.
        interface: String,
    },
    /// Interface name with whitespace or `/`.
    #[error("field `networks[{0}].interface` must not contain whitespace or slashes")]
    InterfaceChars(usize),
    /// Interface `eth0`.
    #[error("field `networks[{0}].interface` must not be set to `eth0` because it is reserved for slirp")]
    InterfaceEth0(usize),
    /// Interface used twice.
    #[error("field `networks[{index}].interface` value {} has already been used by field `networks[{previous}].interface`", q(.interface))]
    InterfaceDuplicate {
        /// Entry index.
        index: usize,
        /// The value.
        interface: String,
        /// The first entry using it.
        previous: usize,
    },
}

/// All failures of [`validate`], printed one per line (Go's `errors.Join`).
#[derive(Debug)]
pub struct EntryErrors(pub Vec<EntryError>);

impl fmt::Display for EntryErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for EntryErrors {}

/// Lima's `validateNetwork` for already-defaulted entries. Differences from Lima: `lima:`
/// networks of every mode are accepted (Lima allows only user-v2 off macOS), because limanet
/// runs their daemons on Linux.
pub fn validate(entries: &[NetworkEntry], networks: &NetworksConfig) -> Result<(), EntryErrors> {
    let mut errs = Vec::new();
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for (i, e) in entries.iter().enumerate() {
        if !e.lima.is_empty() {
            if let Err(err) = networks.check(&e.lima) {
                return Err(EntryErrors(vec![err.into()]));
            }
            if !e.socket.is_empty() {
                errs.push(EntryError::LimaAndSocket(i));
            }
            if e.vz_nat {
                errs.push(EntryError::LimaAndVzNat(i));
            }
        } else if !e.socket.is_empty() {
            if e.vz_nat {
                errs.push(EntryError::SocketAndVzNat(i));
            }
            match std::fs::metadata(&e.socket) {
                Ok(m) => {
                    use std::os::unix::fs::FileTypeExt;
                    if !m.file_type().is_socket() {
                        errs.push(EntryError::NotASocket {
                            index: i,
                            path: e.socket.clone(),
                        });
                    }
                }
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
                Err(error) => errs.push(EntryError::SocketStat {
                    path: e.socket.clone(),
                    error,
                }),
            }
        } else if !e.vz_nat {
            errs.push(EntryError::NothingSet(i));
        }
        if !e.mac_address.is_empty() {
            let len = match parse_mac_len(&e.mac_address) {
                Some(len) => len,
                None => {
                    errs.push(EntryError::MacInvalid(e.mac_address.clone()));
                    0
                }
            };
            if len != 6 {
                errs.push(EntryError::MacLength {
                    index: i,
                    mac: e.mac_address.clone(),
                    len,
                });
            }
        }
        let ifname = e.interface.as_str();
        if ifname.len() >= 16 {
            errs.push(EntryError::InterfaceTooLong {
                index: i,
                len: ifname.len(),
                interface: ifname.to_owned(),
            });
        }
        if ifname.contains([' ', '\t', '\n', '/']) {
            errs.push(EntryError::InterfaceChars(i));
        }
        if ifname == SLIRP_NIC_NAME {
            errs.push(EntryError::InterfaceEth0(i));
        }
        match seen.get(ifname) {
            Some(&previous) => errs.push(EntryError::InterfaceDuplicate {
                index: i,
                interface: ifname.to_owned(),
                previous,
            }),
            None => {
                seen.insert(ifname, i);
            }
        }
    }
    if errs.is_empty() {
        Ok(())
    } else {
        Err(EntryErrors(errs))
    }
}

/// The byte length of a MAC as Go's `net.ParseMAC` parses it (6, 8 or 20 bytes in
/// `xx:xx:..`, `xx-xx-..` or `xxxx.xxxx.xxxx` form), or `None` if it does not parse.
pub fn parse_mac_len(s: &str) -> Option<usize> {
    let hex = |p: &str, n: usize| p.len() == n && p.bytes().all(|b| b.is_ascii_hexdigit());
    let valid_len = |n: usize| matches!(n, 6 | 8 | 20);
    if s.len() < 14 {
        return None;
    }
    let b = s.as_bytes();
    if b[2] == b':' || b[2] == b'-' {
        let sep = b[2] as char;
        let parts: Vec<&str> = s.split(sep).collect();
        return (parts.iter().all(|p| hex(p, 2)) && valid_len(parts.len())).then_some(parts.len());
    }
    if b[4] == b'.' {
        let parts: Vec<&str> = s.split('.').collect();
        let n = parts.len() * 2;
        return (parts.iter().all(|p| hex(p, 4)) && valid_len(n)).then_some(n);
    }
    None
}

/// A parsed `--network` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetworkFlag {
    /// `lima:NAME`.
    Lima(String),
    /// `socket:PATH` (limanet addition: an unmanaged socket).
    Socket(String),
    /// `vzNAT` (macOS only; kept so lima.yaml-style input round-trips).
    VzNat,
}

impl NetworkFlag {
    /// The entry this flag adds.
    pub fn to_entry(&self) -> NetworkEntry {
        match self {
            NetworkFlag::Lima(n) => NetworkEntry {
                lima: n.clone(),
                ..Default::default()
            },
            NetworkFlag::Socket(p) => NetworkEntry {
                socket: p.clone(),
                ..Default::default()
            },
            NetworkFlag::VzNat => NetworkEntry {
                vz_nat: true,
                ..Default::default()
            },
        }
    }
}

/// A bad `--network` or `--dns` value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FlagError {
    /// Not `vzNAT`, `lima:*` or `socket:*`. Lima's message, extended with limanet's `socket:*`.
    #[error("network name must be `vzNAT`, `lima:*` or `socket:*`, got {}", q(.0))]
    Network(String),
    /// Not an IP address.
    #[error("field `dns` must be a list of IP addresses; {} is not one", q(.0))]
    Dns(String),
}

/// Parses one `--network` value: `lima:NAME`, `socket:PATH` or `vzNAT`.
pub fn parse_network_flag(s: &str) -> Result<NetworkFlag, FlagError> {
    if s == "vzNAT" {
        return Ok(NetworkFlag::VzNat);
    }
    if let Some(name) = s.strip_prefix("lima:").filter(|n| !n.is_empty()) {
        return Ok(NetworkFlag::Lima(name.to_owned()));
    }
    if let Some(path) = s.strip_prefix("socket:").filter(|p| !p.is_empty()) {
        return Ok(NetworkFlag::Socket(path.to_owned()));
    }
    Err(FlagError::Network(s.to_owned()))
}

/// Lima's `.networks += [flags...] | .networks |= unique_by(.lima)`: appends the flags' entries
/// and keeps the first entry for each network. Lima's `unique_by(.lima)` also collapses all
/// entries without `lima` into one (a quirk); limanet keeps distinct sockets apart.
pub fn apply_network_flags(existing: &[NetworkEntry], flags: &[NetworkFlag]) -> Vec<NetworkEntry> {
    let mut out: Vec<NetworkEntry> = Vec::new();
    for e in existing
        .iter()
        .cloned()
        .chain(flags.iter().map(NetworkFlag::to_entry))
    {
        let dup = out
            .iter()
            .any(|p| p.lima == e.lima && p.socket == e.socket && p.vz_nat == e.vz_nat);
        if !dup {
            out.push(e);
        }
    }
    out
}

/// Lima's `.dns += [flags...] | .dns |= unique`: appends the `--dns` addresses to `existing`,
/// keeping the first of duplicates. Setting any `--dns` also disables the host resolver
/// (`.hostResolver.enabled=false`); Lima logs a warning about it, and so does this function.
pub fn apply_dns_flags(existing: &[IpAddr], flags: &[String]) -> Result<Vec<IpAddr>, FlagError> {
    let mut out: Vec<IpAddr> = existing.to_vec();
    for f in flags {
        let ip: IpAddr = f.trim().parse().map_err(|_| FlagError::Dns(f.clone()))?;
        if !out.contains(&ip) {
            out.push(ip);
        }
    }
    if !flags.is_empty() {
        tracing::warn!("Setting `--dns` disables the host resolver (hostResolver.enabled=false)");
    }
    Ok(out)
}
