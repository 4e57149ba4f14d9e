//! `networks.yaml`: schema, template, loading, Lima's defaults, validation, and the daemon
//! command lines and sudoers rules derived from it.

use crate::error::ConfigError;
use crate::home::LimaHome;
use crate::pathsec::{self, SystemIds};
use crate::{identifiers, yaml};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

/// The only daemon kind (Lima's `socket_vmnet`).
pub const DAEMON_SOCKET_VMNET: &str = "socket_vmnet";

/// Default `paths.varRun` on Linux (`/run` is root-owned and never a symlink on Debian).
pub const DEFAULT_VAR_RUN: &str = "/run/lima";
/// Default `paths.sudoers` on Linux.
pub const DEFAULT_SUDOERS: &str = "/etc/sudoers.d/lima";

/// Where `paths.socketVMNet` is looked for when the template is rendered, in order.
///
/// limanet's socket_vmnet-compatible daemon is meant to be installed as a root-owned executable
/// named `socket_vmnet` under `/usr/local/libexec/limanet/` (or `/usr/libexec/limanet/` for a
/// distribution package). A real socket_vmnet on `$PATH` or in Lima's macOS location is also
/// accepted, because it speaks the same protocol.
pub const SOCKET_VMNET_CANDIDATES: &[&str] = &[
    "/usr/local/libexec/limanet/socket_vmnet",
    "/usr/libexec/limanet/socket_vmnet",
    "socket_vmnet",
    "/opt/socket_vmnet/bin/socket_vmnet",
];

/// `paths.socketVMNet` when no candidate is installed: the first candidate.
pub const DEFAULT_SOCKET_VMNET: &str = "/usr/local/libexec/limanet/socket_vmnet";

/// Groups tried, in order, for the template's `group:` and for a missing `group:`.
///
/// `sudo` is Debian's administrators group (always present via base-passwd, gid 27), the
/// counterpart of macOS's `admin` that Lima uses; `wheel` and `admin` cover other
/// distributions, `root` always exists.
pub const GROUP_CANDIDATES: &[&str] = &["sudo", "wheel", "admin", "root"];

/// The user and group the daemons run as, as sudo's `-u`/`-g` (macOS: `root:wheel`).
pub const DAEMON_USER: &str = "root";
/// See [`DAEMON_USER`]; Linux's root group is `root`.
pub const DAEMON_GROUP: &str = "root";

/// A network's mode. Lima does not restrict modes when loading or validating (only the
/// identifier syntax), so unknown modes are kept as [`Mode::Other`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Mode {
    /// `user-v2`: limanet's user-mode network (gvisor-tap-vsock in Lima).
    UserV2,
    /// `host`: host-only network.
    Host,
    /// `shared`: NAT network reachable from the host.
    Shared,
    /// `bridged`: bridged to a host interface.
    Bridged,
    /// Anything else (kept verbatim).
    Other(String),
}

impl Mode {
    /// The four known modes, in Lima's completion order.
    pub const KNOWN: [&'static str; 4] = ["user-v2", "host", "shared", "bridged"];

    /// The YAML spelling.
    pub fn as_str(&self) -> &str {
        match self {
            Mode::UserV2 => "user-v2",
            Mode::Host => "host",
            Mode::Shared => "shared",
            Mode::Bridged => "bridged",
            Mode::Other(s) => s,
        }
    }

    /// Parses a mode (never fails; unknown values become [`Mode::Other`]).
    pub fn parse(s: &str) -> Mode {
        match s {
            "user-v2" => Mode::UserV2,
            "host" => Mode::Host,
            "shared" => Mode::Shared,
            "bridged" => Mode::Bridged,
            other => Mode::Other(other.to_owned()),
        }
    }
}

impl Default for Mode {
    fn default() -> Self {
        Mode::Other(String::new())
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for Mode {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Mode {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(Mode::parse(&String::deserialize(d)?))
    }
}

/// `paths:`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Paths {
    /// The daemon executable.
    #[serde(rename = "socketVMNet", default)]
    pub socket_vmnet: String,
    /// Directory for pid files and sockets.
    #[serde(rename = "varRun", default)]
    pub var_run: String,
    /// The sudoers file `limanet sudoers --check` compares (optional).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub sudoers: String,
}

/// One entry under `networks:`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Network {
    /// The mode.
    #[serde(default)]
    pub mode: Mode,
    /// Host interface (bridged only).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub interface: String,
    /// Gateway address (user-v2: selects the subnet; host and shared: the host's address).
    #[serde(
        default,
        with = "yaml::opt_ip",
        skip_serializing_if = "Option::is_none"
    )]
    pub gateway: Option<Ipv4Addr>,
    /// Last DHCP address (host, shared).
    #[serde(
        rename = "dhcpEnd",
        default,
        with = "yaml::opt_ip",
        skip_serializing_if = "Option::is_none"
    )]
    pub dhcp_end: Option<Ipv4Addr>,
    /// Netmask, dotted.
    #[serde(
        default,
        with = "yaml::opt_ip",
        skip_serializing_if = "Option::is_none"
    )]
    pub netmask: Option<Ipv4Addr>,
}

/// The whole `networks.yaml`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworksConfig {
    /// `paths:`.
    #[serde(default)]
    pub paths: Paths,
    /// sudo group and socket group.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub group: String,
    /// The networks, sorted by name (byte order, as Lima sorts for sudoers and list).
    #[serde(default, deserialize_with = "yaml::null_as_default")]
    pub networks: BTreeMap<String, Network>,
}

/// The built-in user-v2 entry (`fillDefaults`).
pub fn default_user_v2() -> Network {
    Network {
        mode: Mode::UserV2,
        interface: String::new(),
        gateway: Some(Ipv4Addr::new(192, 168, 104, 1)),
        dhcp_end: None,
        netmask: Some(Ipv4Addr::new(255, 255, 255, 0)),
    }
}

/// Renders the template (pure). Keys and order follow Lima's template; the comments are
/// adapted to Linux.
pub fn render_template(socket_vmnet: &str, group: &str, bridged_interface: &str) -> String {
    format!(
        r#"# Path to limanet's socket_vmnet-compatible daemon. Because it is invoked via sudo it
# should be installed where only root can modify/replace it. This means also none of
# the parent directories should be writable by the user.
#
# The varRun directory also must not be writable by the user because it will
# include the daemon pid files. Those will be terminated via sudo, so replacing
# the pid file would allow killing of arbitrary privileged processes. varRun
# however MUST be writable by the daemon user.
#
# None of the path segments may be symlinks: socketVMNet is stored with its
# symlinks resolved.
paths:
  socketVMNet: {socket_vmnet}
  varRun: {DEFAULT_VAR_RUN}
  sudoers: {DEFAULT_SUDOERS}

# Members of this group may start and stop the network daemons via sudo (see
# `limanet sudoers`), and own the daemon sockets. The default is the first
# existing of sudo (Debian's administrators group, like macOS's admin),
# wheel, admin and root.
group: {group}

networks:
  user-v2:
    mode: user-v2
    gateway: 192.168.104.1
    netmask: 255.255.255.0
  shared:
    mode: shared
    gateway: 192.168.105.1
    dhcpEnd: 192.168.105.254
    netmask: 255.255.255.0
  bridged:
    mode: bridged
    interface: {bridged_interface}
    # bridged mode doesn't have a gateway; dhcp is managed by outside network
  host:
    mode: host
    gateway: 192.168.106.1
    dhcpEnd: 192.168.106.254
    netmask: 255.255.255.0
"#,
        socket_vmnet = yaml::quote_scalar(socket_vmnet),
        group = yaml::quote_scalar(group),
        bridged_interface = yaml::quote_scalar(bridged_interface),
    )
}

/// Renders the template for this host: the first installed [`SOCKET_VMNET_CANDIDATES`] entry
/// (symlinks resolved), the first existing [`GROUP_CANDIDATES`] group, and the default-route
/// interface for `bridged` (`eth0` if there is none).
pub fn render_host_template() -> Result<String, ConfigError> {
    let socket_vmnet = find_socket_vmnet()?;
    Ok(render_template(
        &socket_vmnet,
        &default_group(),
        &default_route_interface(),
    ))
}

/// The first installed daemon candidate, symlinks resolved; [`DEFAULT_SOCKET_VMNET`] if none.
pub fn find_socket_vmnet() -> Result<String, ConfigError> {
    for candidate in SOCKET_VMNET_CANDIDATES {
        if let Some(found) = look_path(candidate) {
            let resolved = std::fs::canonicalize(&found)
                .map_err(|e| ConfigError::io("cannot resolve symlinks of", &found, e))?;
            return Ok(resolved.to_string_lossy().into_owned());
        }
        tracing::debug!(candidate, "socket_vmnet candidate not found");
    }
    Ok(DEFAULT_SOCKET_VMNET.to_owned())
}

/// The first group of [`GROUP_CANDIDATES`] that exists in `/etc/group`.
pub fn default_group() -> String {
    let groups = std::fs::read_to_string("/etc/group").unwrap_or_default();
    GROUP_CANDIDATES
        .iter()
        .find(|g| pathsec::group_exists(&groups, g))
        .unwrap_or(&"root")
        .to_string()
}

/// The interface of the IPv4 default route (from `/proc/net/route`), or `eth0`.
pub fn default_route_interface() -> String {
    std::fs::read_to_string("/proc/net/route")
        .ok()
        .and_then(|t| {
            t.lines().skip(1).find_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                (f.len() > 7 && f[1] == "00000000" && f[7] == "00000000").then(|| f[0].to_owned())
            })
        })
        .filter(|i| identifiers::validate(i).is_ok())
        .unwrap_or_else(|| "eth0".to_owned())
}

/// Go's `exec.LookPath`: a name with a `/` must be an executable file; a bare name is searched
/// on `$PATH`.
pub fn look_path(name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let is_exec = |p: &Path| {
        std::fs::metadata(p)
            .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            .unwrap_or(false)
    };
    if name.contains('/') {
        return is_exec(Path::new(name)).then(|| PathBuf::from(name));
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_absolute() && is_exec(p))
}

/// Loads `networks.yaml`: creates it from the host template if missing (atomically), parses it
/// leniently (unknown keys such as pre-0.22 `vdeSwitch` are tolerated, with a warning), then
/// applies Lima's [`NetworksConfig::fill_defaults`] and limanet's
/// [`NetworksConfig::fill_limanet_defaults`].
pub fn load(home: &LimaHome) -> Result<NetworksConfig, ConfigError> {
    let file = home.networks_yaml();
    match std::fs::symlink_metadata(&file) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let dir = home.config_dir();
            crate::fsutil::create_dir_all_mode(&dir, 0o755).map_err(|error| {
                ConfigError::CreateDir {
                    path: dir.clone(),
                    error,
                }
            })?;
            let text = render_host_template()?;
            crate::fsutil::write_atomic_if_absent(&file, text.as_bytes(), 0o644)?;
            tracing::info!(file = %file.display(), "created networks.yaml from the template");
        }
        Err(e) => return Err(ConfigError::io("cannot stat", &file, e)),
    }
    let text =
        std::fs::read_to_string(&file).map_err(|e| ConfigError::io("cannot read", &file, e))?;
    let mut config = parse(&text, &file)?;
    warn_unknown_keys(&text, &file);
    config.fill_defaults();
    config.fill_limanet_defaults(&default_group());
    Ok(config)
}

/// Parses `networks.yaml` text without defaults (`file` is used in error messages). Unknown
/// keys are tolerated (see [`load`], which warns about them).
pub fn parse(text: &str, file: &Path) -> Result<NetworksConfig, ConfigError> {
    yaml::from_str(text, file)
}

/// Lima's strict-parse warning, for keys the schema does not have (e.g. pre-0.22 `vdeSwitch`).
fn warn_unknown_keys(text: &str, file: &Path) {
    if let Some(unknown) = yaml::unknown_keys(text) {
        tracing::warn!(
            file = %file.display(),
            keys = %unknown.join(", "),
            "Non-strict YAML is deprecated and will be unsupported in a future version of Lima: {}",
            file.display()
        );
    }
}

impl NetworksConfig {
    /// Lima's `fillDefaults`, exactly: if no network has mode user-v2 *and* a gateway,
    /// `networks["user-v2"]` is replaced by the built-in entry.
    pub fn fill_defaults(&mut self) {
        let has_usernet = self
            .networks
            .values()
            .any(|n| n.mode == Mode::UserV2 && n.gateway.is_some());
        if !has_usernet {
            self.networks
                .insert("user-v2".to_owned(), default_user_v2());
        }
    }

    /// limanet's fixes for values Lima leaves unset by mistake (spec §7.1-7.3); applied after
    /// [`fill_defaults`](Self::fill_defaults), in memory only (the file is never rewritten):
    /// * an empty `group` becomes `default_group` (Lima would emit `% ALL=` sudoers lines and
    ///   `--socket-group=`, which the daemon rejects);
    /// * a host/shared/user-v2 network with a gateway but no `netmask` gets `255.255.255.0`
    ///   (Lima would use 0.0.0.0/0 for user-v2 and pass `--vmnet-mask=<nil>`);
    /// * a host/shared network with a gateway but no `dhcpEnd` gets the gateway with last byte
    ///   254 (what socket_vmnet computes itself; `limactl network create` never writes it).
    pub fn fill_limanet_defaults(&mut self, default_group: &str) {
        if self.group.is_empty() {
            self.group = default_group.to_owned();
        }
        for net in self.networks.values_mut() {
            let Some(gw) = net.gateway else { continue };
            if matches!(net.mode, Mode::UserV2 | Mode::Host | Mode::Shared) && net.netmask.is_none()
            {
                net.netmask = Some(Ipv4Addr::new(255, 255, 255, 0));
            }
            if matches!(net.mode, Mode::Host | Mode::Shared) && net.dhcp_end.is_none() {
                let o = gw.octets();
                net.dhcp_end = Some(Ipv4Addr::new(o[0], o[1], o[2], 254));
            }
        }
    }

    /// Lima's `Validate()` with the system's ids: identifiers first, then path security.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.validate_with(&SystemIds::from_system())
    }

    /// [`validate`](Self::validate) for a configuration loaded from `home`: a failure names
    /// networks.yaml and, when it can be found, the line and column of the offending value
    /// (`<file>:<line>:<col>: <Lima's message>`).
    pub fn validate_located(&self, home: &LimaHome) -> Result<(), ConfigError> {
        self.validate().map_err(|e| locate_in(home, e))
    }

    /// [`validate`](Self::validate) with explicit ids (for tests).
    pub fn validate_with(&self, ids: &SystemIds) -> Result<(), ConfigError> {
        self.validate_identifiers()?;
        let fields: [(&'static str, &str); 3] = [
            ("socketVMNet", &self.paths.socket_vmnet),
            ("varRun", &self.paths.var_run),
            ("sudoers", &self.paths.sudoers),
        ];
        let mut socket_vmnet_missing = None;
        for (field, value) in fields {
            let is_var_run = field == "varRun";
            let path = if is_var_run && !value.is_empty() {
                pathsec::existing_base(value)
            } else {
                value.to_owned()
            };
            match pathsec::validate_path(&path, is_var_run, ids) {
                Ok(()) => {}
                Err(e) if e.is_not_found() && field == "sudoers" => {}
                Err(e) if e.is_not_found() && field == "socketVMNet" => {
                    socket_vmnet_missing = Some(value.to_owned())
                }
                Err(error) => return Err(ConfigError::PathField { field, error }),
            }
        }
        match socket_vmnet_missing {
            Some(p) => Err(ConfigError::SocketVmnetMissing(p)),
            None => Ok(()),
        }
    }

    /// The identifier half of `Validate()` (the group, then every network's name, mode and
    /// interface), which needs no file system access.
    pub fn validate_identifiers(&self) -> Result<(), ConfigError> {
        if !self.group.is_empty() {
            identifiers::validate(&self.group).map_err(|error| ConfigError::InvalidGroup {
                group: self.group.clone(),
                error,
            })?;
        }
        for (name, net) in &self.networks {
            identifiers::validate(name).map_err(|error| ConfigError::InvalidNetworkName {
                name: name.clone(),
                error,
            })?;
            let mode = net.mode.as_str();
            if !mode.is_empty() {
                identifiers::validate(mode).map_err(|error| ConfigError::InvalidMode {
                    mode: mode.to_owned(),
                    network: name.clone(),
                    error,
                })?;
            }
            if !net.interface.is_empty() {
                identifiers::validate(&net.interface).map_err(|error| {
                    ConfigError::InvalidInterface {
                        interface: net.interface.clone(),
                        network: name.clone(),
                        error,
                    }
                })?;
            }
        }
        Ok(())
    }

    /// Lima's `Check(name)`.
    pub fn check(&self, name: &str) -> Result<&Network, ConfigError> {
        self.networks
            .get(name)
            .ok_or_else(|| ConfigError::NotDefined(name.to_owned()))
    }

    /// Whether `name` is a user-v2 network (`Usernet`); undefined names are an error.
    pub fn is_usernet(&self, name: &str) -> Result<bool, ConfigError> {
        Ok(self.check(name)?.mode == Mode::UserV2)
    }

    /// The daemon socket of a network: `<varRun>/socket_vmnet.<name>`.
    pub fn sock(&self, name: &str) -> Result<PathBuf, ConfigError> {
        self.check(name)?;
        if self.paths.socket_vmnet.is_empty() {
            return Err(ConfigError::SocketVmnetNotSet);
        }
        Ok(Path::new(&self.paths.var_run).join(format!("socket_vmnet.{name}")))
    }

    /// `<varRun>/<name>_<daemon>.pid`.
    pub fn pid_file(&self, name: &str, daemon: &str) -> PathBuf {
        Path::new(&self.paths.var_run).join(format!("{name}_{daemon}.pid"))
    }

    /// The executable of a daemon kind (`DaemonPath`).
    pub fn daemon_path(&self, daemon: &str) -> Result<&str, ConfigError> {
        if daemon == DAEMON_SOCKET_VMNET {
            Ok(&self.paths.socket_vmnet)
        } else {
            Err(ConfigError::UnknownDaemon(daemon.to_owned()))
        }
    }

    /// `IsDaemonInstalled`: `paths.socketVMNet` is set and names an executable file.
    pub fn is_daemon_installed(&self) -> bool {
        !self.paths.socket_vmnet.is_empty() && look_path(&self.paths.socket_vmnet).is_some()
    }

    /// Fails with a clear "not installed" error unless the daemon is installed.
    pub fn require_daemon(&self) -> Result<(), ConfigError> {
        if self.is_daemon_installed() {
            Ok(())
        } else {
            Err(ConfigError::DaemonNotInstalled {
                daemon: DAEMON_SOCKET_VMNET.to_owned(),
                path: self.paths.socket_vmnet.clone(),
            })
        }
    }

    /// `MkdirCmd()`: `/bin/mkdir -m 775 -p <varRun>`.
    pub fn mkdir_cmd(&self) -> String {
        format!("/bin/mkdir -m 775 -p {}", self.paths.var_run)
    }

    /// `StartCmd(name, "socket_vmnet")`, one space-separated line. Unset IPs print as `<nil>`,
    /// as in Go. Does not check that the daemon is installed (see
    /// [`require_daemon`](Self::require_daemon)); Lima panics in that case.
    pub fn start_cmd(&self, name: &str) -> Result<String, ConfigError> {
        let net = self.check(name)?;
        if self.paths.socket_vmnet.is_empty() {
            return Err(ConfigError::SocketVmnetNotSet);
        }
        let mut cmd = format!(
            "{} --pidfile={} --socket-group={} --vmnet-mode={}",
            self.paths.socket_vmnet,
            self.pid_file(name, DAEMON_SOCKET_VMNET).display(),
            self.group,
            net.mode
        );
        match net.mode {
            Mode::Bridged => cmd.push_str(&format!(" --vmnet-interface={}", net.interface)),
            Mode::Host | Mode::Shared => cmd.push_str(&format!(
                " --vmnet-gateway={} --vmnet-dhcp-end={} --vmnet-mask={}",
                go_ip(net.gateway),
                go_ip(net.dhcp_end),
                go_ip(net.netmask)
            )),
            _ => {}
        }
        cmd.push(' ');
        cmd.push_str(&self.sock(name)?.to_string_lossy());
        Ok(cmd)
    }

    /// `StopCmd(name, daemon)`: `/usr/bin/pkill -F <varRun>/<name>_<daemon>.pid`.
    pub fn stop_cmd(&self, name: &str, daemon: &str) -> String {
        format!(
            "/usr/bin/pkill -F {}",
            self.pid_file(name, daemon).display()
        )
    }

    /// The sudoers rules, in Lima's exact byte layout, with `root:root` as the daemon user.
    pub fn sudoers(&self) -> String {
        self.sudoers_with(self.is_daemon_installed())
    }

    /// [`sudoers`](Self::sudoers) with the "daemon installed" decision made by the caller.
    pub fn sudoers_with(&self, daemon_installed: bool) -> String {
        let g = &self.group;
        let mut out = format!(
            "%{g} ALL=({DAEMON_USER}:{DAEMON_GROUP}) NOPASSWD:NOSETENV: {}\n",
            self.mkdir_cmd()
        );
        for (name, net) in &self.networks {
            if net.mode == Mode::UserV2 {
                continue;
            }
            out.push_str(&format!(
                "\n# Manage {} network daemons\n",
                crate::quote::go_quote(name)
            ));
            if !daemon_installed {
                continue;
            }
            // `check` cannot fail for a name taken from the map, and socketVMNet is non-empty
            // when the daemon is installed; the fallback keeps this infallible anyway.
            let start = self.start_cmd(name).unwrap_or_default();
            out.push_str(&format!(
                "\n%{g} ALL=({DAEMON_USER}:{DAEMON_GROUP}) NOPASSWD:NOSETENV: \\\n    {start}, \\\n    {}\n",
                self.stop_cmd(name, DAEMON_SOCKET_VMNET)
            ));
        }
        out
    }

    /// Checks that varRun, after `mkdir_cmd` ran, can be written by the daemon: Lima requires
    /// the group-write bit and the `daemon` gid. On Linux the daemon runs as root and `mkdir`
    /// through sudo leaves gid 0, so group root is accepted as well.
    pub fn check_var_run_writable(&self, ids: &SystemIds) -> Result<(), ConfigError> {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(&self.paths.var_run)
            .map_err(|e| ConfigError::io("cannot stat", &self.paths.var_run, e))?;
        let gid_ok = meta.gid() == ids.daemon_gid || meta.gid() == ids.root_gid;
        if meta.mode() & 0o020 == 0 || !gid_ok {
            return Err(ConfigError::VarRunNotWritable {
                path: self.paths.var_run.clone(),
                gid: ids.daemon_gid,
            });
        }
        Ok(())
    }
}

/// The hint Lima appends to sudoers errors (stray `)` included).
pub fn sudoers_hint(file: &str) -> String {
    format!(
        "run `limanet sudoers >etc_sudoers.d_lima && sudo install -o root etc_sudoers.d_lima {}`)",
        crate::quote::go_quote(file)
    )
}

impl NetworksConfig {
    /// Lima's `VerifySudoAccess(file)`: with an empty `file`, only the password-less sudo probe;
    /// otherwise `file` must equal [`sudoers`](Self::sudoers) byte for byte (a missing file is
    /// fine when sudo needs no password).
    pub fn verify_sudo_access(&self, file: &str) -> Result<(), ConfigError> {
        if file.is_empty() {
            return password_less_sudo(self.is_daemon_installed())
                .map_err(ConfigError::PasswordLessSudo);
        }
        let hint = sudoers_hint(file);
        let content = match std::fs::read(file) {
            Ok(c) => c,
            Err(e)
                if e.kind() == std::io::ErrorKind::NotFound
                    && password_less_sudo(self.is_daemon_installed()).is_ok() =>
            {
                return Ok(());
            }
            Err(error) => {
                return Err(ConfigError::SudoersUnreadable {
                    file: file.to_owned(),
                    error,
                    hint,
                })
            }
        };
        if content != self.sudoers().as_bytes() {
            return Err(ConfigError::SudoersOutOfSync {
                file: file.to_owned(),
                hint,
            });
        }
        Ok(())
    }
}

/// `sudo -k` then `sudo --user root --group root --non-interactive true` (the latter only if
/// the daemon is installed), both must succeed. As root no sudo is needed at all.
fn password_less_sudo(daemon_installed: bool) -> Result<(), String> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        return Ok(());
    }
    let run = |args: &[&str]| -> Result<(), String> {
        let status = std::process::Command::new("sudo")
            .args(args)
            .stdin(std::process::Stdio::null())
            // sudo's own "a password is required" would only repeat what the error says.
            .stderr(std::process::Stdio::null())
            .status()
            .map_err(|e| format!("failed to run sudo {}: {e}", args.join(" ")))?;
        if status.success() {
            Ok(())
        } else {
            Err(format!("sudo {}: {status}", args.join(" ")))
        }
    };
    run(&["-k"])?;
    if daemon_installed {
        run(&[
            "--user",
            DAEMON_USER,
            "--group",
            DAEMON_GROUP,
            "--non-interactive",
            "true",
        ])?;
    }
    Ok(())
}

/// Wraps `err` with networks.yaml's path and the error's position in it.
pub fn locate_in(home: &LimaHome, err: ConfigError) -> ConfigError {
    let file = home.networks_yaml();
    let text = std::fs::read_to_string(&file).unwrap_or_default();
    let (line, column) = crate::locate::locate(&text, &err).unwrap_or((0, 0));
    ConfigError::Located {
        file,
        line,
        column,
        error: Box::new(err),
    }
}

/// Prints an optional IPv4 address the way Go prints a `net.IP` (`<nil>` when unset).
pub fn go_ip(ip: Option<Ipv4Addr>) -> String {
    ip.map_or_else(|| "<nil>".to_owned(), |ip| ip.to_string())
}

/// `$LIMA_HOME/_networks/<name>_<daemon>.<stream>.log`.
pub fn log_file(home: &LimaHome, name: &str, daemon: &str, stream: &str) -> PathBuf {
    home.networks_dir()
        .join(format!("{name}_{daemon}.{stream}.log"))
}

/// The argv to run a daemon command line (from [`NetworksConfig::mkdir_cmd`],
/// [`NetworksConfig::start_cmd`] or [`NetworksConfig::stop_cmd`]): split on single spaces, as
/// Lima does, and prefixed with `sudo --user root --group root --non-interactive` unless
/// already running as root.
pub fn privileged_argv(cmd: &str) -> Vec<String> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let is_root = unsafe { libc::geteuid() } == 0;
    privileged_argv_as(cmd, is_root)
}

/// [`privileged_argv`] with the root decision made by the caller.
pub fn privileged_argv_as(cmd: &str, is_root: bool) -> Vec<String> {
    let mut argv = Vec::new();
    if !is_root {
        argv.extend(
            [
                "sudo",
                "--user",
                DAEMON_USER,
                "--group",
                DAEMON_GROUP,
                "--non-interactive",
            ]
            .map(String::from),
        );
    }
    argv.extend(cmd.split(' ').map(String::from));
    argv
}
