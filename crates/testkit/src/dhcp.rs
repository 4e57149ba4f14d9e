//! DHCP client side for tests: busybox `udhcpc` with a script that applies the lease and prints
//! it, in a QEMU guest (see [`crate::qemu`]) or in a network namespace ([`Netns::dhcp`]).

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::Duration;

use crate::error::IoContext;
use crate::process::scratch_dir;
use crate::{ChildGuard, Error, Netns, Result};

/// The udhcpc script: applies address, MTU, default route and resolv.conf (`$RESOLV_CONF`,
/// default /etc/resolv.conf), and prints one `LIMANET-LEASE key=value...` line.
pub const UDHCPC_SCRIPT: &str = r#"#!/bin/sh
# Applies a busybox udhcpc lease: address, MTU, default route, resolv.conf (IPv4 only:
# IPv6 addresses, SLAAC ones included, are left alone).
resolv=${RESOLV_CONF:-/etc/resolv.conf}
case "$1" in
  deconfig)
    ip -4 addr flush dev "$interface"
    ip link set "$interface" up
    ;;
  bound|renew)
    ip -4 addr flush dev "$interface"
    ip addr add "$ip/${mask:-24}" dev "$interface"
    [ -n "$mtu" ] && ip link set "$interface" mtu "$mtu"
    for r in $router; do
      ip route add default via "$r" dev "$interface"
      break
    done
    : > "$resolv"
    [ -n "$domain$search" ] && echo "search $(echo $search $domain)" >> "$resolv"
    for d in $dns; do echo "nameserver $d" >> "$resolv"; done
    echo "LIMANET-LEASE ip=$ip mask=$mask router=$router dns=$(echo $dns | tr ' ' ,) mtu=$mtu domain=$(echo $domain | tr ' ' ,) search=$(echo $search | tr ' ' ,) lease=$lease serverid=$serverid"
    ;;
esac
exit 0
"#;

/// A DHCPv4 lease as applied by the udhcpc script.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The leased address.
    pub ip: Ipv4Addr,
    /// Prefix length.
    pub prefix: u8,
    /// First router (option 3).
    pub router: Option<Ipv4Addr>,
    /// DNS servers (option 6).
    pub dns: Vec<Ipv4Addr>,
    /// Interface MTU (option 26).
    pub mtu: Option<u32>,
    /// Domain name (option 15).
    pub domain: Option<String>,
    /// Domain search list (option 119), in order.
    pub search: Vec<String>,
    /// Lease time in seconds (option 51).
    pub lease_secs: Option<u32>,
    /// The server identifier (option 54).
    pub server_id: Option<Ipv4Addr>,
}

impl Lease {
    /// Parses the first `LIMANET-LEASE` line in `text` (console or udhcpc output).
    pub fn parse(text: &str) -> Option<Lease> {
        let line = text
            .lines()
            .find_map(|l| l.trim().strip_prefix("LIMANET-LEASE "))?;
        let field = |key: &str| {
            let prefix = format!("{key}=");
            line.split_whitespace()
                .find_map(|f| f.strip_prefix(prefix.as_str()))
                .filter(|v| !v.is_empty())
        };
        let list = |key: &str| -> Vec<&str> {
            field(key)
                .map(|v| v.split(',').filter(|s| !s.is_empty()).collect())
                .unwrap_or_default()
        };
        Some(Lease {
            ip: field("ip")?.parse().ok()?,
            prefix: field("mask").and_then(|m| m.parse().ok()).unwrap_or(24),
            router: list("router").first().and_then(|r| r.parse().ok()),
            dns: list("dns").iter().filter_map(|d| d.parse().ok()).collect(),
            mtu: field("mtu").and_then(|m| m.parse().ok()),
            domain: field("domain").map(|d| d.replace(',', " ")),
            search: list("search").iter().map(|s| s.to_string()).collect(),
            lease_secs: field("lease").and_then(|m| m.parse().ok()),
            server_id: field("serverid").and_then(|m| m.parse().ok()),
        })
    }
}

/// Writes the udhcpc script to the scratch directory (named by its hash, so one file serves
/// every process and version); returns its path.
fn script_path() -> Result<PathBuf> {
    let hash = crate::checksum::sha256_hex(UDHCPC_SCRIPT.as_bytes());
    let path = scratch_dir()?.join(format!("udhcpc-{}.sh", &hash[..16]));
    if !path.exists() {
        let tmp = path.with_extension(format!("{}.tmp", std::process::id()));
        std::fs::write(&tmp, UDHCPC_SCRIPT).ctx(|| format!("cannot write {}", tmp.display()))?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755))
            .ctx(|| format!("cannot chmod {}", tmp.display()))?;
        std::fs::rename(&tmp, &path).ctx(|| format!("cannot rename to {}", path.display()))?;
    }
    Ok(path)
}

impl Netns {
    /// Runs busybox `udhcpc` on `iface` inside the namespace until it gets a lease (at most
    /// `timeout`), applies it (address, MTU, default route) and returns it. The lease's DNS
    /// servers go to the namespace's own `/etc/netns/<name>/resolv.conf` (never the machine's).
    pub fn dhcp(&self, iface: &str, timeout: Duration) -> Result<Lease> {
        let script = script_path()?;
        // Make `ip netns exec` bind-mount a private resolv.conf, and point the script at it.
        self.set_etc("resolv.conf", "")?;
        let resolv = PathBuf::from("/etc/netns")
            .join(self.name())
            .join("resolv.conf");
        let tries = timeout.as_secs().max(1).to_string();
        let mut cmd = self.command("busybox");
        // Beyond busybox's default request list: MTU (26) and domain search (119).
        cmd.env("RESOLV_CONF", &resolv).args([
            "udhcpc",
            "-i",
            iface,
            "-s",
            &script.to_string_lossy(),
            "-q",
            "-n",
            "-f",
            "-O",
            "mtu",
            "-O",
            "search",
            "-t",
            &tries,
            "-T",
            "1",
        ]);
        let mut child = ChildGuard::spawn("udhcpc", &mut cmd)?;
        let status = child.wait_timeout(timeout + Duration::from_secs(2))?;
        let out = child.stdout();
        match Lease::parse(&out) {
            Some(lease) if status.success() => Ok(lease),
            _ => Err(Error::Environment(format!(
                "udhcpc on {iface} in netns {} got no lease ({status}):\n{}",
                self.name(),
                child.logs()
            ))),
        }
    }
}
