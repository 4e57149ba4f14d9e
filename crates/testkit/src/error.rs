use std::time::Duration;

/// Everything that can go wrong while setting up or running test infrastructure.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An I/O operation failed; `what` says which (and on what file or address).
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// An external command exited unsuccessfully.
    #[error("command `{command}` failed ({status}): {stderr}")]
    Command {
        command: String,
        status: String,
        stderr: String,
    },
    /// A condition did not become true in time.
    #[error("timed out after {timeout:?} waiting for {what}")]
    Timeout { what: String, timeout: Duration },
    /// The feature needs root and the process is not root.
    #[error(
        "{what} needs root (running as uid {uid}): run the tests as root, e.g. `sudo -E cargo test`"
    )]
    NotRoot { what: String, uid: u32 },
    /// A QEMU guest did not do what the test expected; `console` is its serial output.
    #[error("guest failed: {reason}\n----- guest console -----\n{console}\n-----")]
    Guest { reason: String, console: String },
    /// Something on the machine is missing or not as expected (a package, a kernel module...).
    #[error("{0}")]
    Environment(String),
}

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Wraps an I/O error with a description of what was being done.
    pub fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            what: what.into(),
            source,
        }
    }
}

/// Adds context to `std::io::Result`.
pub(crate) trait IoContext<T> {
    fn ctx(self, what: impl FnOnce() -> String) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn ctx(self, what: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|source| Error::Io {
            what: what(),
            source,
        })
    }
}
