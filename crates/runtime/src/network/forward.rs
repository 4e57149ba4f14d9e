//! Port forwards from the host into a guest (`hostfwd`-style specs), and where a forward's
//! connection or datagram goes now.

use super::Network;
use crate::sockets::ForwardGuest;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::str::FromStr;

/// A port forward from the host into a guest, like QEMU's `hostfwd`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Forward {
    pub udp: bool,
    /// Where it listens on the host, IPv4 or IPv6.
    pub host: SocketAddr,
    /// Guest address; `None` means the network's first DHCP address, reached over IPv4 when
    /// the host side is IPv4 and over the guest's IPv6 address when it is IPv6.
    pub guest: Option<IpAddr>,
    pub guest_port: u16,
}

/// Splits a forward spec at its colons, keeping `[IPv6]` addresses (which contain colons)
/// whole and unbracketed.
fn spec_fields(s: &str) -> Option<Vec<&str>> {
    let mut fields = Vec::new();
    let mut rest = s;
    loop {
        if let Some(inner) = rest.strip_prefix('[') {
            let end = inner.find(']')?;
            fields.push(&inner[..end]);
            rest = &inner[end + 1..];
            if rest.is_empty() {
                return Some(fields);
            }
            rest = rest.strip_prefix(':')?;
        } else {
            match rest.split_once(':') {
                Some((field, more)) => {
                    fields.push(field);
                    rest = more;
                }
                None => {
                    fields.push(rest);
                    return Some(fields);
                }
            }
        }
    }
}

impl FromStr for Forward {
    type Err = String;

    /// `tcp|udp:[HOSTADDR:]HOSTPORT:[GUESTADDR:]GUESTPORT`, IPv6 addresses in brackets
    /// (`tcp:[::1]:8080:80`); the host address defaults to 127.0.0.1, so nothing listens
    /// beyond loopback unless asked.
    fn from_str(s: &str) -> Result<Self, String> {
        let usage = || {
            format!(
                "invalid forward {s:?}: expected tcp|udp:[HOSTADDR:]HOSTPORT:[GUESTADDR:]GUESTPORT"
            )
        };
        let (proto, rest) = s.split_once(':').ok_or_else(usage)?;
        let udp = match proto {
            "tcp" => false,
            "udp" => true,
            _ => return Err(usage()),
        };
        let parts = spec_fields(rest).ok_or_else(usage)?;
        let port = |p: &str| {
            p.parse::<u16>()
                .map_err(|_| format!("invalid port {p:?} in forward {s:?}"))
        };
        let addr = |a: &str| {
            a.parse::<IpAddr>()
                .map_err(|_| format!("invalid IP address {a:?} in forward {s:?}"))
        };
        let localhost = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let (host_ip, host_port, guest, guest_port) = match parts.as_slice() {
            [hp, gp] => (localhost, port(hp)?, None, port(gp)?),
            [ha, hp, gp] => (addr(ha)?, port(hp)?, None, port(gp)?),
            [ha, hp, ga, gp] => {
                let ha = if ha.is_empty() { localhost } else { addr(ha)? };
                (ha, port(hp)?, Some(addr(ga)?), port(gp)?)
            }
            _ => return Err(usage()),
        };
        if guest_port == 0 {
            return Err(format!("guest port 0 in forward {s:?}"));
        }
        Ok(Forward {
            udp,
            host: SocketAddr::new(host_ip, host_port),
            guest,
            guest_port,
        })
    }
}

impl fmt::Display for Forward {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let proto = if self.udp { "udp" } else { "tcp" };
        match self.guest {
            Some(g) => write!(
                f,
                "{proto}:{}:{}",
                self.host,
                SocketAddr::new(g, self.guest_port)
            ),
            None => write!(f, "{proto}:{}:{}", self.host, self.guest_port),
        }
    }
}

impl Network {
    /// The guest address a forward leads to now (an IPv6 one is learned from the guest's
    /// frames, so it may not be known yet).
    pub(super) fn forward_target(&mut self, guest: ForwardGuest) -> Option<SocketAddr> {
        match guest {
            ForwardGuest::Addr(a) => Some(a),
            ForwardGuest::Ipv6Of(v4) => {
                let ip = self.stack.guest_ipv6_of(*v4.ip())?;
                Some(SocketAddr::new(IpAddr::V6(ip), v4.port()))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forward_specs() {
        let f: Forward = "tcp:127.0.0.1:8022:22".parse().unwrap();
        assert_eq!(
            f,
            Forward {
                udp: false,
                host: "127.0.0.1:8022".parse().unwrap(),
                guest: None,
                guest_port: 22
            }
        );
        let f: Forward = "udp:5353:53".parse().unwrap();
        assert!(f.udp);
        assert_eq!(f.host, "127.0.0.1:5353".parse().unwrap());
        let f: Forward = "tcp:0.0.0.0:80:192.168.5.16:8080".parse().unwrap();
        assert_eq!(f.guest, Some(Ipv4Addr::new(192, 168, 5, 16).into()));
        let f: Forward = "tcp::80:192.168.5.16:8080".parse().unwrap();
        assert_eq!(f.host.ip(), Ipv4Addr::LOCALHOST);
        // IPv6 on either side, in brackets.
        let f: Forward = "tcp:[::1]:8080:80".parse().unwrap();
        assert_eq!(f.host, "[::1]:8080".parse().unwrap());
        assert_eq!((f.guest, f.guest_port), (None, 80));
        assert_eq!(f.to_string(), "tcp:[::1]:8080:80");
        let f: Forward = "udp:[::]:53:[fd00:192:168:5::15]:5353".parse().unwrap();
        assert_eq!(f.guest, Some("fd00:192:168:5::15".parse().unwrap()));
        assert_eq!(f.to_string(), "udp:[::]:53:[fd00:192:168:5::15]:5353");
        let f: Forward = "tcp:[::1]:8080:192.168.5.16:80".parse().unwrap();
        assert_eq!(f.guest, Some(Ipv4Addr::new(192, 168, 5, 16).into()));
        for bad in [
            "",
            "tcp",
            "sctp:1:2",
            "tcp:1",
            "tcp:70000:22",
            "tcp:1:0",
            "tcp:a.b:1:2",
            "tcp:1:2:3:4:5",
            "tcp:[::1:8080:80",
            "tcp:[::1]8080:80",
            "tcp:::1:8080:80",
        ] {
            assert!(bad.parse::<Forward>().is_err(), "{bad} should be rejected");
        }
    }
}
