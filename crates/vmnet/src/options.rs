//! socket_vmnet's command line (`lima-behaviour.md` §5.1), parsed without I/O.
//!
//! Lima's sudoers rules run `paths.socketVMNet` with exactly these flags, so the accepted forms,
//! defaults and error texts follow socket_vmnet's `cli.c`: `--flag=value` or `--flag value`,
//! `-p PIDFILE`, one positional socket path. Where macOS would pick a subnet ("decided by
//! macOS"), limanet uses Lima's defaults: 192.168.105.1 for shared, 192.168.106.1 for host.

use std::fmt;
use std::net::Ipv4Addr;
use std::path::PathBuf;

/// socket_vmnet's default socket group.
pub const DEFAULT_SOCKET_GROUP: &str = "staff";
/// Lima's default gateways (networks.yaml template).
pub const DEFAULT_SHARED_GATEWAY: Ipv4Addr = Ipv4Addr::new(192, 168, 105, 1);
pub const DEFAULT_HOST_GATEWAY: Ipv4Addr = Ipv4Addr::new(192, 168, 106, 1);

/// The three vmnet modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// VMs, and the host at the gateway; nothing else.
    Host,
    /// As host, plus NAT to the outside.
    Shared,
    /// VMs on the L2 network of a host interface.
    Bridged,
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Host => "host",
            Mode::Shared => "shared",
            Mode::Bridged => "bridged",
        })
    }
}

/// The subnet of a host or shared network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subnet {
    pub gateway: Ipv4Addr,
    pub dhcp_end: Ipv4Addr,
    pub prefix_len: u8,
}

impl Subnet {
    pub fn mask(&self) -> Ipv4Addr {
        Ipv4Addr::from(limanet_netstack::config::prefix_mask(self.prefix_len))
    }

    pub fn network(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.gateway) & u32::from(self.mask()))
    }
}

/// A parsed command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmnetOptions {
    pub socket: PathBuf,
    pub pidfile: Option<PathBuf>,
    pub socket_group: String,
    pub mode: Mode,
    /// host and shared only.
    pub subnet: Option<Subnet>,
    /// bridged only.
    pub interface: Option<String>,
    /// Warnings socket_vmnet prints (the process logs them).
    pub warnings: Vec<String>,
    /// limanet's own `--no-sandbox`: no Landlock and seccomp confinement after setup.
    pub no_sandbox: bool,
}

/// What the command line asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    Run(VmnetOptions),
    Help,
    Version,
}

/// A command-line error: the message, then the usage is printed and the exit status is 1.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// socket_vmnet's usage text, for `argv0`.
pub fn usage(argv0: &str) -> String {
    format!(
        "Usage: {argv0} [OPTION]... SOCKET\n\
         socket_vmnet-compatible daemon for Lima's shared, host and bridged networks (limanet).\n\
         \n\
         --socket-group=GROUP                socket group name (default: \"{DEFAULT_SOCKET_GROUP}\")\n\
         --vmnet-mode=(host|shared|bridged)  vmnet mode (default: \"shared\")\n\
         --vmnet-interface=INTERFACE         interface used for --vmnet=bridged, e.g., \"eth0\"\n\
         --vmnet-gateway=IP                  gateway used for --vmnet=(host|shared), e.g., \"192.168.105.1\"\n\
         \x20                                   the next IP (e.g., \"192.168.105.2\") is used as the first DHCP address\n\
         --vmnet-dhcp-end=IP                 end of the DHCP range (default: XXX.XXX.XXX.254)\n\
         \x20                                   requires --vmnet-gateway to be specified\n\
         --vmnet-mask=MASK                   subnet mask (default: \"255.255.255.0\")\n\
         \x20                                   requires --vmnet-gateway to be specified\n\
         -p, --pidfile=PIDFILE               save pid to PIDFILE\n\
         --no-sandbox                        (limanet) no Landlock/seccomp confinement\n\
         -h, --help                          display this help and exit\n\
         -v, --version                       display version information and exit\n"
    )
}

/// Parses an IPv4 address the way `inet_aton` does for the dotted-quad form Lima prints.
fn ip(flag: &str, value: &str) -> Result<Ipv4Addr, UsageError> {
    value.parse().map_err(|_| {
        UsageError(format!(
            "invalid address \"{value}\" was specified for {flag}"
        ))
    })
}

fn prefix_len(mask: Ipv4Addr) -> Option<u8> {
    let m = u32::from(mask);
    let len = m.leading_ones();
    (m.checked_shl(len).unwrap_or(0) == 0).then_some(len as u8)
}

/// Parses socket_vmnet's arguments (without argv[0]).
pub fn parse<I, S>(args: I) -> Result<Parsed, UsageError>
where
    I: IntoIterator<Item = S>,
    S: Into<String>,
{
    let mut args = args.into_iter().map(Into::into);
    let mut positional = Vec::new();
    let mut pidfile = None;
    let mut group = None;
    let mut mode = None;
    let mut interface = None;
    let mut gateway = None;
    let mut dhcp_end = None;
    let mut mask = None;
    let mut only_positional = false;
    let mut no_sandbox = false;
    while let Some(arg) = args.next() {
        if only_positional || !arg.starts_with('-') || arg == "-" {
            positional.push(arg);
            continue;
        }
        if arg == "--" {
            only_positional = true;
            continue;
        }
        match arg.as_str() {
            "-h" | "--help" => return Ok(Parsed::Help),
            "-v" | "--version" => return Ok(Parsed::Version),
            "--no-sandbox" => {
                no_sandbox = true;
                continue;
            }
            _ => {}
        }
        let (name, inline) = match arg.split_once('=') {
            Some((n, v)) if n.starts_with("--") => (n.to_string(), Some(v.to_string())),
            _ => (arg.clone(), None),
        };
        let (name, inline) = match (name.as_str(), inline) {
            // getopt: `-pFILE` as well as `-p FILE`.
            (n, None) if n.starts_with("-p") && n.len() > 2 && !n.starts_with("--") => {
                ("-p".to_string(), Some(n[2..].to_string()))
            }
            (_, inline) => (name, inline),
        };
        let known = [
            "--socket-group",
            "--vmnet-mode",
            "--vmnet-interface",
            "--vmnet-gateway",
            "--vmnet-dhcp-end",
            "--vmnet-mask",
            "--vmnet-interface-id",
            "--vmnet-network-identifier",
            "--vmnet-nat66-prefix",
            "--pidfile",
            "-p",
        ];
        if name == "--vmnet-disable-dhcp" {
            return Err(UsageError(
                "--vmnet-disable-dhcp is not supported by limanet".into(),
            ));
        }
        if !known.contains(&name.as_str()) {
            return Err(UsageError(format!("unrecognized option '{arg}'")));
        }
        let value = match inline {
            Some(v) => v,
            None => args
                .next()
                .ok_or_else(|| UsageError(format!("option '{name}' requires an argument")))?,
        };
        match name.as_str() {
            "--socket-group" => group = Some(value),
            "--vmnet-mode" => {
                mode = Some(match value.as_str() {
                    "host" => Mode::Host,
                    "shared" => Mode::Shared,
                    "bridged" => Mode::Bridged,
                    _ => return Err(UsageError(format!("Unknown vmnet mode \"{value}\""))),
                })
            }
            "--vmnet-interface" => interface = Some(value),
            "--vmnet-gateway" => gateway = Some(value),
            "--vmnet-dhcp-end" => dhcp_end = Some(value),
            "--vmnet-mask" => mask = Some(value),
            "--pidfile" | "-p" => pidfile = Some(PathBuf::from(value)),
            // macOS-only identities; nothing on Linux corresponds to them.
            other => {
                return Err(UsageError(format!(
                    "{other} is not supported by limanet (macOS vmnet only)"
                )))
            }
        }
    }
    let [socket] = <[String; 1]>::try_from(positional).map_err(|p| {
        UsageError(if p.is_empty() {
            "the socket path is missing".into()
        } else {
            format!("exactly one socket path expected, got {}", p.len())
        })
    })?;
    let mode = mode.unwrap_or(Mode::Shared);
    let mut warnings = Vec::new();
    if mode == Mode::Bridged && interface.is_none() {
        return Err(UsageError(
            "vmnet mode \"bridged\" require --vmnet-interface to be specified".into(),
        ));
    }
    let subnet = match (&gateway, mode) {
        (None, _) => {
            if dhcp_end.is_some() {
                return Err(UsageError(
                    "--vmnet-dhcp-end=IP requires --vmnet-gateway=IP".into(),
                ));
            }
            if mask.is_some() {
                return Err(UsageError(
                    "--vmnet-mask=MASK requires --vmnet-gateway=IP".into(),
                ));
            }
            match mode {
                Mode::Bridged => None,
                Mode::Host | Mode::Shared => {
                    let gateway = if mode == Mode::Host {
                        DEFAULT_HOST_GATEWAY
                    } else {
                        DEFAULT_SHARED_GATEWAY
                    };
                    warnings.push(format!(
                        "--vmnet-gateway=IP should be explicitly specified to avoid conflicting with other applications (using {gateway})"
                    ));
                    Some(Subnet {
                        gateway,
                        dhcp_end: Ipv4Addr::from(u32::from(gateway) & 0xFFFF_FF00 | 0xFE),
                        prefix_len: 24,
                    })
                }
            }
        }
        (Some(_), Mode::Bridged) => {
            return Err(UsageError(
                "vmnet mode \"bridged\" conflicts with --vmnet-gateway".into(),
            ))
        }
        (Some(gw), _) => {
            let gateway = ip("--vmnet-gateway", gw)?;
            let dhcp_end = match &dhcp_end {
                Some(e) => ip("--vmnet-dhcp-end", e)?,
                None => Ipv4Addr::from(u32::from(gateway) & 0xFFFF_FF00 | 0xFE),
            };
            let mask_ip = match &mask {
                Some(m) => ip("--vmnet-mask", m)?,
                None => Ipv4Addr::new(255, 255, 255, 0),
            };
            let prefix_len = prefix_len(mask_ip)
                .filter(|p| (8..=30).contains(p))
                .ok_or_else(|| {
                    UsageError(format!(
                        "invalid mask \"{mask_ip}\" was specified for --vmnet-mask (a contiguous mask from /8 to /30)"
                    ))
                })?;
            let subnet = Subnet {
                gateway,
                dhcp_end,
                prefix_len,
            };
            let net = u32::from(subnet.network());
            let bcast = net | !u32::from(subnet.mask());
            let g = u32::from(gateway);
            if g == net || g == bcast {
                return Err(UsageError(format!(
                    "invalid address \"{gateway}\" was specified for --vmnet-gateway (network or broadcast address of {}/{prefix_len})",
                    subnet.network()
                )));
            }
            let e = u32::from(dhcp_end);
            if e & u32::from(subnet.mask()) != net || e <= g || e >= bcast {
                return Err(UsageError(format!(
                    "invalid address \"{dhcp_end}\" was specified for --vmnet-dhcp-end (must be above the gateway {gateway} inside {}/{prefix_len})",
                    subnet.network()
                )));
            }
            Some(subnet)
        }
    };
    if mode != Mode::Bridged {
        if let Some(i) = &interface {
            warnings.push(format!(
                "--vmnet-interface={i} is ignored in vmnet mode \"{mode}\""
            ));
        }
    }
    Ok(Parsed::Run(VmnetOptions {
        socket: PathBuf::from(socket),
        pidfile,
        socket_group: group.unwrap_or_else(|| DEFAULT_SOCKET_GROUP.to_string()),
        mode,
        subnet,
        interface: if mode == Mode::Bridged {
            interface
        } else {
            None
        },
        warnings,
        no_sandbox,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(args: &[&str]) -> VmnetOptions {
        match parse(args.iter().copied()).unwrap() {
            Parsed::Run(o) => o,
            other => panic!("{other:?}"),
        }
    }

    fn err(args: &[&str]) -> String {
        parse(args.iter().copied()).unwrap_err().0
    }

    #[test]
    fn no_sandbox_is_limanets_own_flag() {
        assert!(!run(&["/run/x.sock"]).no_sandbox);
        assert!(run(&["--no-sandbox", "/run/x.sock"]).no_sandbox);
    }

    #[test]
    fn limas_shared_command_line() {
        let o = run(&[
            "--pidfile=/run/lima/shared_socket_vmnet.pid",
            "--socket-group=sudo",
            "--vmnet-mode=shared",
            "--vmnet-gateway=192.168.105.1",
            "--vmnet-dhcp-end=192.168.105.254",
            "--vmnet-mask=255.255.255.0",
            "/run/lima/socket_vmnet.shared",
        ]);
        assert_eq!(o.mode, Mode::Shared);
        assert_eq!(o.socket_group, "sudo");
        assert_eq!(
            o.pidfile.as_deref(),
            Some(std::path::Path::new("/run/lima/shared_socket_vmnet.pid"))
        );
        let s = o.subnet.unwrap();
        assert_eq!(s.gateway, Ipv4Addr::new(192, 168, 105, 1));
        assert_eq!(s.dhcp_end, Ipv4Addr::new(192, 168, 105, 254));
        assert_eq!(s.prefix_len, 24);
        assert!(o.warnings.is_empty());
    }

    #[test]
    fn defaults_follow_socket_vmnet() {
        let o = run(&["/tmp/s"]);
        assert_eq!(o.mode, Mode::Shared);
        assert_eq!(o.socket_group, "staff");
        assert_eq!(o.subnet.unwrap().gateway, DEFAULT_SHARED_GATEWAY);
        assert_eq!(o.warnings.len(), 1);
        let o = run(&["--vmnet-mode", "host", "--vmnet-gateway=10.1.2.3", "/tmp/s"]);
        // dhcp-end defaults to .254 of the gateway whatever the mask.
        assert_eq!(o.subnet.unwrap().dhcp_end, Ipv4Addr::new(10, 1, 2, 254));
        let o = run(&[
            "-p",
            "/tmp/p",
            "--vmnet-mode=bridged",
            "--vmnet-interface=eth0",
            "/s",
        ]);
        assert_eq!(o.interface.as_deref(), Some("eth0"));
        assert!(o.subnet.is_none());
    }

    #[test]
    fn errors_name_the_flag() {
        assert_eq!(
            err(&["--vmnet-mode=nat", "/s"]),
            "Unknown vmnet mode \"nat\""
        );
        assert_eq!(
            err(&["--vmnet-mode=bridged", "/s"]),
            "vmnet mode \"bridged\" require --vmnet-interface to be specified"
        );
        assert_eq!(
            err(&[
                "--vmnet-mode=bridged",
                "--vmnet-interface=eth0",
                "--vmnet-gateway=1.2.3.4",
                "/s"
            ]),
            "vmnet mode \"bridged\" conflicts with --vmnet-gateway"
        );
        assert_eq!(
            err(&["--vmnet-dhcp-end=1.2.3.4", "/s"]),
            "--vmnet-dhcp-end=IP requires --vmnet-gateway=IP"
        );
        assert_eq!(
            err(&["--vmnet-mask=255.0.0.0", "/s"]),
            "--vmnet-mask=MASK requires --vmnet-gateway=IP"
        );
        assert_eq!(
            err(&["--vmnet-gateway=1.2.3", "/s"]),
            "invalid address \"1.2.3\" was specified for --vmnet-gateway"
        );
        assert!(
            err(&["--vmnet-gateway=10.0.0.1", "--vmnet-mask=255.0.255.0", "/s"])
                .contains("--vmnet-mask")
        );
        assert!(err(&[
            "--vmnet-gateway=10.0.0.1",
            "--vmnet-dhcp-end=10.0.1.5",
            "/s"
        ])
        .contains("--vmnet-dhcp-end"));
        assert!(err(&[]).contains("socket path"));
        assert!(err(&["/a", "/b"]).contains("exactly one"));
        assert!(err(&["--bogus", "/a"]).contains("--bogus"));
        assert!(err(&["/a", "--pidfile"]).contains("requires an argument"));
    }

    #[test]
    fn help_and_version() {
        assert_eq!(parse(["--help"]).unwrap(), Parsed::Help);
        assert_eq!(parse(["-v"]).unwrap(), Parsed::Version);
        assert!(usage("socket_vmnet").starts_with("Usage: socket_vmnet [OPTION]... SOCKET"));
    }
}
