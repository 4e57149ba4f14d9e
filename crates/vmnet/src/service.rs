//! One daemon run, start to finish, in socket_vmnet's order with limanet's safety checks:
//!
//! 1. refuse early if a live daemon holds the pid file or accepts on the socket (never displace
//!    it), and look the socket group up (`unknown group name "<g>"`);
//! 2. remove what a crashed daemon for this socket left, then set up the bridge, TAP, addresses,
//!    NAT (a failure undoes what was done);
//! 3. fork the teardown helper (keeps CAP_NET_ADMIN, waits for the daemon to end, even by
//!    SIGKILL, then undoes step 2);
//! 4. listen (mode 0770, group), confine the filesystem (Landlock), start DNS at the gateway
//!    (host/shared) on the bridge only;
//! 5. drop every capability, write the pid file (once it exists, the network is ready: Lima
//!    waits for it), confine system calls (seccomp, all threads);
//! 6. switch frames until SIGINT, SIGTERM or SIGHUP; then let the helper undo everything, pid
//!    file last.

use crate::backend::{Backend, BackendError, MTU};
use crate::daemon::Daemon;
use crate::gateway::Gateway;
use crate::options::{Mode, VmnetOptions};
use crate::process::{self, FileError, Listener};
use limanet_runtime::files::{PidFile, PidFileState, PidFormat};
use limanet_runtime::privileges::{keep_only_capabilities, signal_fd, CAP_NET_BIND_SERVICE};
use std::io;
use std::net::IpAddr;
use std::os::fd::{AsRawFd, OwnedFd};
use tracing::{info, warn};

/// Why the daemon stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error(transparent)]
    File(#[from] FileError),
    #[error(transparent)]
    PidFile(#[from] limanet_runtime::FileError),
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error("DHCP: {0}")]
    Dhcp(#[from] limanet_netstack::dhcp::DhcpError),
    #[error("DNS at the gateway: {0}")]
    Dns(#[from] limanet_dns::DnsError),
    #[error(transparent)]
    Sandbox(#[from] limanet_runtime::sandbox::SandboxError),
    #[error("{0}")]
    Io(#[from] io::Error),
}

/// Blocks SIGINT, SIGTERM and SIGHUP (in this thread and threads started later) and returns a
/// signalfd that becomes readable when one arrives. SIGPIPE is ignored.
pub fn termination_signals() -> io::Result<OwnedFd> {
    // SAFETY: setting a signal's disposition to SIG_IGN has no preconditions.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
    signal_fd(&[libc::SIGINT, libc::SIGTERM, libc::SIGHUP])
}

/// Runs the daemon; returns when a termination signal arrived (Ok) or on a fatal error.
pub fn run(opts: &VmnetOptions) -> Result<(), ServiceError> {
    for w in &opts.warnings {
        warn!("{w}");
    }
    // SAFETY: geteuid/getuid cannot fail.
    let (euid, uid) = unsafe { (libc::geteuid(), libc::getuid()) };
    if euid != 0 {
        warn!("limanet vmnet usually needs root (bridge, TAP, nftables)");
    }
    if euid != uid {
        warn!("running setuid is discouraged; run limanet vmnet through sudo");
    }
    let signals = termination_signals()?;
    // Each client holds a socket; a large fleet of VMs must not hit the default soft limit.
    limanet_runtime::limits::raise_nofile_limit();
    let gid = process::group_id(&opts.socket_group)?;
    // Refuse before touching anything: a live daemon holding the pid file is never displaced.
    if let Some(p) = &opts.pidfile {
        if let PidFileState::Locked(pid) = PidFile::inspect(p)? {
            return Err(limanet_runtime::FileError::AlreadyRunning {
                path: p.clone(),
                pid,
            }
            .into());
        }
    }
    process::clear_stale_socket(&opts.socket)?;
    let mut backend = Backend::setup(opts)?;
    // Still single-threaded here (netlink runs on a current-thread runtime).
    let mut teardown = backend.hand_teardown_to_helper(&[signals.as_raw_fd()])?;
    let host_port = backend
        .take_host_port()
        .ok_or_else(|| io::Error::other("backend without a host port"))?;
    let gateway = match (opts.mode, &opts.subnet, backend.gateway_mac) {
        (Mode::Host | Mode::Shared, Some(subnet), Some(mac)) => {
            Some(Gateway::new(subnet, mac, MTU)?)
        }
        _ => None,
    };
    let listener = Listener::bind(&opts.socket, gid)?;
    let mut daemon = Daemon::new(
        listener.listener.try_clone()?,
        host_port,
        backend.host_vnet_hdr,
        backend.names().tap.clone(),
        signals,
        gateway,
    )?;
    // SAFETY: prctl with integer arguments.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(io::Error::last_os_error().into());
    }
    if opts.no_sandbox {
        warn!("--no-sandbox: the daemon is not confined");
    } else {
        // Before the DNS thread starts, so it is confined too. Only the socket's and pid file's
        // directories may have entries created (the pid file) and removed (both, at exit).
        let dirs: Vec<std::path::PathBuf> = [Some(opts.socket.as_path()), opts.pidfile.as_deref()]
            .into_iter()
            .flatten()
            .filter_map(|p| p.parent().map(std::path::Path::to_path_buf))
            .collect();
        limanet_runtime::sandbox::confine_filesystem(&dirs)?;
    }
    // The DNS thread binds port 53, so it starts with CAP_NET_BIND_SERVICE; once bound it drops
    // every capability (capabilities are per thread), and the main thread drops it right after.
    // Teardown is the helper's: the daemon itself needs no capability at all.
    keep_only_capabilities(&[CAP_NET_BIND_SERVICE], &[])?;
    let dns = match &opts.subnet {
        Some(subnet) if opts.mode != Mode::Bridged => {
            let gw = IpAddr::V4(subnet.gateway);
            let dns = limanet_dns::spawn_background(limanet_dns::DnsConfig {
                listen: gw,
                udp_port: 53,
                tcp_port: 53,
                hosts: limanet_dns::lima_hosts(&[], gw, None),
                after_bind: Some(limanet_dns::AfterBind(std::sync::Arc::new(|| {
                    keep_only_capabilities(&[], &[])
                }))),
                // Only the VMs ask: not the uplink, not other hosts on a LAN that routes here.
                bind_device: Some(backend.names().bridge.clone()),
                ..Default::default()
            })?;
            info!(udp = %dns.udp_addr(), tcp = %dns.tcp_addr(), "DNS at the gateway");
            Some(dns)
        }
        _ => None,
    };
    keep_only_capabilities(&[], &[])?;
    let pidfile = opts
        .pidfile
        .as_deref()
        .map(|p| PidFile::create_as(p, PidFormat::Bare))
        .transpose()?;
    if !opts.no_sandbox {
        limanet_runtime::sandbox::confine_syscalls(limanet_runtime::sandbox::PassedTaps::Adopted)?;
    }
    info!(
        mode = %opts.mode,
        socket = %opts.socket.display(),
        "vmnet network ready: {}",
        backend.description
    );
    if let Some(s) = &opts.subnet {
        info!(
            "gateway {} mask {} DHCP {}..{}",
            s.gateway,
            s.mask(),
            std::net::Ipv4Addr::from(u32::from(s.gateway) + 1),
            s.dhcp_end
        );
    }
    let result = daemon.run();
    match &result {
        Ok(()) => info!("termination signal received, shutting down"),
        Err(e) => warn!(error = %e, "shutting down after an error"),
    }
    drop(daemon);
    drop(listener);
    drop(dns);
    // The helper undoes the setup: nftables table, sysctls, bridge.
    drop(backend);
    teardown.finish();
    drop(pidfile);
    Ok(result?)
}
