//! Polling helpers with clear timeout errors.

use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use crate::{Error, Result};

/// How often the helpers poll.
const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// Polls `cond` until it returns true, or fails with [`Error::Timeout`] naming `what`.
pub fn wait_for(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(Error::Timeout {
                what: what.to_string(),
                timeout,
            });
        }
        std::thread::sleep(POLL_INTERVAL);
    }
}

/// Waits until a TCP connection to `addr` succeeds (in the calling thread's network namespace;
/// use [`crate::Netns::wait_for_port`] for a port inside a namespace).
pub fn wait_for_port(addr: SocketAddr, timeout: Duration) -> Result<()> {
    wait_for(
        &format!("TCP port {addr} to accept connections"),
        timeout,
        || TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok(),
    )
}

/// Waits until `path` exists (a socket, a pid file...).
pub fn wait_for_path(path: &Path, timeout: Duration) -> Result<()> {
    wait_for(&format!("{} to exist", path.display()), timeout, || {
        path.exists()
    })
}
