//! One daemon run, start to finish, in socket_vmnet's order with limanet's safety checks:
//!
//! 1. refuse early if a live daemon holds the pid file or accepts on the socket (never displace
//!    it), and look the socket group up (`unknown group name "<g>"`);
//! 2. remove what a crashed daemon for this socket left, then set up the bridge, TAP, addresses,
//!    NAT (a failure undoes what was done);
//! 3. listen (mode 0770, group), start DNS at the gateway (host/shared);
//! 4. drop every capability but CAP_NET_ADMIN (needed to remove the bridge and nftables table at
//!    exit), then write the pid file: once it exists, the network is ready (Lima waits for it);
//! 5. switch frames until SIGINT, SIGTERM or SIGHUP; then undo everything, pid file last.

use crate::backend::{Backend, BackendError, MTU};
use crate::daemon::Daemon;
use crate::gateway::Gateway;
use crate::options::{Mode, VmnetOptions};
use crate::process::{self, FileError, Listener, PidFile};
use std::io;
use std::net::IpAddr;
use std::os::fd::{FromRawFd, OwnedFd};
use tracing::{info, warn};

/// Why the daemon stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error(transparent)]
    File(#[from] FileError),
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error("DHCP: {0}")]
    Dhcp(#[from] limanet_netstack::dhcp::DhcpError),
    #[error("DNS at the gateway: {0}")]
    Dns(#[from] limanet_dns::DnsError),
    #[error("{0}")]
    Io(#[from] io::Error),
}

/// Blocks SIGINT, SIGTERM and SIGHUP (in this thread and threads started later) and returns a
/// signalfd that becomes readable when one arrives. SIGPIPE is ignored.
pub fn termination_signals() -> io::Result<OwnedFd> {
    // SAFETY: sigset manipulation on a local set, then plain syscalls.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
            libc::sigaddset(&mut set, s);
        }
        if libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) != 0 {
            return Err(io::Error::other("cannot block termination signals"));
        }
        let fd = libc::signalfd(-1, &set, libc::SFD_NONBLOCK | libc::SFD_CLOEXEC);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(OwnedFd::from_raw_fd(fd))
    }
}

const CAP_NET_BIND_SERVICE: u32 = 10;
const CAP_NET_ADMIN: u32 = 12;

/// Keeps only the capabilities in `keep` (permitted and effective) and drops every other one
/// from the bounding set too, so programs run later (`nft` at exit) cannot regain them. Applies
/// to the calling thread and threads it starts afterwards. A no-op when not root.
pub fn keep_only_capabilities(keep: &[u32], bounding: &[u32]) -> io::Result<()> {
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Ok(());
    }
    for cap in 0..64u32 {
        // SAFETY: prctl with integer arguments.
        let in_set = unsafe { libc::prctl(libc::PR_CAPBSET_READ, cap as libc::c_ulong, 0, 0, 0) };
        if in_set < 0 {
            break;
        }
        if in_set == 0 || bounding.contains(&cap) {
            continue;
        }
        // SAFETY: prctl with integer arguments; EINVAL past the last capability ends the loop.
        if unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) } != 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EINVAL) {
                break;
            }
            return Err(io::Error::new(
                e.kind(),
                format!("dropping capability {cap} from the bounding set: {e}"),
            ));
        }
    }
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const VERSION_3: u32 = 0x2008_0522;
    let mask = keep
        .iter()
        .filter(|c| **c < 32)
        .fold(0u32, |m, c| m | 1 << c);
    let mut header = Header {
        version: VERSION_3,
        pid: 0,
    };
    let data = [
        Data {
            effective: mask,
            permitted: mask,
            inheritable: 0,
        },
        Data {
            effective: 0,
            permitted: 0,
            inheritable: 0,
        },
    ];
    // SAFETY: capset with a version-3 header and two data words, as the kernel expects.
    if unsafe { libc::syscall(libc::SYS_capset, &mut header as *mut Header, data.as_ptr()) } != 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(
            e.kind(),
            format!("dropping capabilities: {e}"),
        ));
    }
    Ok(())
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
    let gid = process::group_id(&opts.socket_group)?;
    if let Some(p) = &opts.pidfile {
        process::check_pid_file(p)?;
    }
    process::clear_stale_socket(&opts.socket)?;
    let mut backend = Backend::setup(opts)?;
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
        backend.names().tap.clone(),
        signals,
        gateway,
    )?;
    // The DNS thread binds port 53, so it starts with CAP_NET_BIND_SERVICE and keeps it; the
    // main thread drops it right after.
    keep_only_capabilities(&[CAP_NET_ADMIN, CAP_NET_BIND_SERVICE], &[CAP_NET_ADMIN])?;
    let dns = match &opts.subnet {
        Some(subnet) if opts.mode != Mode::Bridged => {
            let gw = IpAddr::V4(subnet.gateway);
            let dns = limanet_dns::spawn_background(limanet_dns::DnsConfig {
                listen: gw,
                udp_port: 53,
                tcp_port: 53,
                hosts: limanet_dns::lima_hosts(&[], gw, None),
                ..Default::default()
            })?;
            info!(udp = %dns.udp_addr(), tcp = %dns.tcp_addr(), "DNS at the gateway");
            Some(dns)
        }
        _ => None,
    };
    keep_only_capabilities(&[CAP_NET_ADMIN], &[CAP_NET_ADMIN])?;
    let pidfile = opts.pidfile.as_deref().map(PidFile::create).transpose()?;
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
    // Undoes the setup: nftables table, sysctls, bridge.
    drop(backend);
    drop(pidfile);
    Ok(result?)
}
