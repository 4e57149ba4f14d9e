//! The crate's error type. Messages follow Lima's wording (with Go's `%#q` quoting) wherever
//! Lima has one, so users and scripts see the same text.

use crate::identifiers::IdentifierError;
use crate::quote::go_quote_backtick as q;
use std::path::PathBuf;

fn qp(p: &std::path::Path) -> String {
    q(&p.to_string_lossy())
}

fn located(file: &std::path::Path, line: u64, column: u64, error: &ConfigError) -> String {
    if line == 0 {
        format!("{}: {error}", file.display())
    } else {
        format!("{}:{line}:{column}: {error}", file.display())
    }
}

/// Errors from loading, validating and editing the configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Neither `$LIMA_HOME` nor `$HOME` is set.
    #[error("cannot determine LIMA_HOME: neither $LIMA_HOME nor $HOME is set")]
    NoHome,
    /// A file or directory operation failed.
    #[error("{action} {}: {error}", qp(.path))]
    Io {
        /// What was being done, e.g. "cannot read".
        action: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        error: std::io::Error,
    },
    /// `_config` could not be created.
    #[error("could not create {} directory: {error}", qp(.path))]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// The underlying error.
        error: std::io::Error,
    },
    /// A YAML syntax or type error, with its position.
    #[error("{}:{line}:{column}: {message}", .file.display())]
    Parse {
        /// The file.
        file: PathBuf,
        /// 1-based line (0 when unknown).
        line: u64,
        /// 1-based column (0 when unknown).
        column: u64,
        /// What is wrong.
        message: String,
    },
    /// Another error, with the place in networks.yaml it is about (line 0: not found).
    #[error("{}", located(.file, *.line, *.column, .error))]
    Located {
        /// The file.
        file: PathBuf,
        /// 1-based line, 0 when unknown.
        line: u64,
        /// 1-based column, 0 when unknown.
        column: u64,
        /// The error.
        error: Box<ConfigError>,
    },
    /// `Check(name)` failed.
    #[error("network {} is not defined", q(.0))]
    NotDefined(String),
    /// `paths.socketVMNet` is empty.
    #[error("socketVMNet is not set")]
    SocketVmnetNotSet,
    /// The daemon executable is missing (Lima's reconcile message, plus where it was looked for).
    #[error("daemon {} needs to be installed: {} (`paths.socketVMNet`) is not an executable file; limanet's socket_vmnet-compatible daemon is not installed", q(.daemon), q(.path))]
    DaemonNotInstalled {
        /// The daemon name (`socket_vmnet`).
        daemon: String,
        /// The configured path.
        path: String,
    },
    /// A daemon name other than `socket_vmnet`.
    #[error("unknown daemon type {}", q(.0))]
    UnknownDaemon(String),
    /// `group` is not an identifier.
    #[error("invalid group {}: {error}", q(.group))]
    InvalidGroup {
        /// The value.
        group: String,
        /// Why.
        error: IdentifierError,
    },
    /// A network name is not an identifier.
    #[error("invalid network name {}: {error}", q(.name))]
    InvalidNetworkName {
        /// The value.
        name: String,
        /// Why.
        error: IdentifierError,
    },
    /// A network mode is not an identifier.
    #[error("invalid mode {} for network {}: {error}", q(.mode), q(.network))]
    InvalidMode {
        /// The value.
        mode: String,
        /// The network.
        network: String,
        /// Why.
        error: IdentifierError,
    },
    /// A network interface is not an identifier.
    #[error("invalid interface {} for network {}: {error}", q(.interface), q(.network))]
    InvalidInterface {
        /// The value.
        interface: String,
        /// The network.
        network: String,
        /// Why.
        error: IdentifierError,
    },
    /// A `paths` field failed the path-security check.
    #[error("networks.yaml field {} error: {error}", q(&format!("paths.{}", .field)))]
    PathField {
        /// The YAML field name (`socketVMNet`, `varRun`, `sudoers`).
        field: &'static str,
        /// Why.
        error: crate::pathsec::PathError,
    },
    /// `paths.socketVMNet` does not exist.
    #[error("networks.yaml: {} (`paths.socketVMNet`) has to be installed", q(.0))]
    SocketVmnetMissing(String),
    /// A user-v2 network without `gateway:` has no subnet.
    #[error("user-v2 network has no gateway set, so its subnet is unknown")]
    NoGateway,
    /// A derived socket or file path is longer than the kernel allows.
    #[error("usernet {what} path {} too long: must be less than UNIX_PATH_MAX={max} characters, but is {len}", q(.path))]
    PathTooLong {
        /// `socket` or `leases`.
        what: &'static str,
        /// The path.
        path: String,
        /// The limit.
        max: usize,
        /// The actual length.
        len: usize,
    },
    /// `network create` with an existing name.
    #[error("network {} already exists", q(.0))]
    AlreadyExists(String),
    /// `network create` with an invalid combination of flags or values.
    #[error("{0}")]
    InvalidRequest(String),
    /// `varRun` exists but the daemon could not write to it.
    #[error("{} doesn't seem to be writable by the daemon (gid:{gid}) group", q(.path))]
    VarRunNotWritable {
        /// varRun.
        path: String,
        /// The daemon group's gid.
        gid: u32,
    },
    /// No sudoers file to check.
    #[error("no sudoers file defined in {}", qp(.0))]
    NoSudoersFile(PathBuf),
    /// The sudoers file could not be read.
    #[error("can't read {}: {error}: (Hint: {hint})", q(.file))]
    SudoersUnreadable {
        /// The file.
        file: String,
        /// Why.
        error: std::io::Error,
        /// How to fix it.
        hint: String,
    },
    /// The sudoers file differs from what `limanet sudoers` prints.
    #[error("sudoers file {} is out of sync and must be regenerated (Hint: {hint})", q(.file))]
    SudoersOutOfSync {
        /// The file.
        file: String,
        /// How to fix it.
        hint: String,
    },
    /// The password-less sudo probe failed.
    #[error("passwordLessSudo error: {0}")]
    PasswordLessSudo(String),
}

impl ConfigError {
    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
        error: std::io::Error,
    ) -> Self {
        ConfigError::Io {
            action,
            path: path.into(),
            error,
        }
    }
}
