//! Test support for limanet: real network namespaces, a fake internet, QEMU guests, helper
//! servers and child processes that clean up after themselves.
//!
//! Everything here needs root (network namespaces, veth pairs, TAP devices). Functions that need
//! root return [`Error::NotRoot`] instead of silently doing nothing, so a test run as a normal user
//! fails loudly.
//!
//! ```no_run
//! use limanet_testkit::{TestHost, servers::TcpEchoServer};
//! use std::io::{Read, Write};
//!
//! let th = TestHost::new().unwrap();
//! // An echo server in the fake internet, reachable from the host netns at 203.0.113.2:7.
//! let _echo = TcpEchoServer::start(&th.internet, "0.0.0.0:7".parse().unwrap()).unwrap();
//! let reply = th.host.run_in(|| {
//!     let mut s = std::net::TcpStream::connect("203.0.113.2:7").unwrap();
//!     s.write_all(b"hi").unwrap();
//!     let mut buf = [0u8; 2];
//!     s.read_exact(&mut buf).unwrap();
//!     buf
//! }).unwrap();
//! assert_eq!(&reply, b"hi");
//! ```
//!
//! A real guest (QEMU TCG, ~5-10 s): DHCP on eth0, then the script; markers on the console.
//!
//! ```no_run
//! use limanet_testkit::{Netns, QemuGuest, QemuOptions};
//!
//! let ns = Netns::new("q").unwrap(); // slirp's "host" is this namespace: nothing leaves it
//! let out = QemuGuest::spawn(
//!     &QemuOptions {
//!         script: "ip addr show dev eth0\n".into(),
//!         netns: Some(ns.name().into()),
//!         ..Default::default()
//!     }
//!     .with_nic("user", None),
//! )
//! .unwrap();
//! out.check().unwrap(); // error carries the whole console
//! assert_eq!(out.lease("ip").as_deref(), Some("10.0.2.15"));
//! ```

pub mod checksum;
mod cpio;
pub mod dhcp;
mod error;
pub mod netns;
pub mod process;
pub mod qemu;
pub mod servers;
pub mod wait;

pub use dhcp::Lease;
pub use error::{Error, Result};
pub use netns::{unique_name, Netns, TestHost};
pub use process::ChildGuard;
pub use qemu::{GuestCommand, GuestOutput, QemuGuest, QemuOptions};
pub use wait::{wait_for, wait_for_path, wait_for_port};

/// Fails with [`Error::NotRoot`] unless the process runs as root.
///
/// `what` names the feature that needs root; it ends up in the error message.
pub fn require_root(what: &str) -> Result<()> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let uid = unsafe { libc::geteuid() };
    if uid == 0 {
        Ok(())
    } else {
        Err(Error::NotRoot {
            what: what.to_string(),
            uid,
        })
    }
}
