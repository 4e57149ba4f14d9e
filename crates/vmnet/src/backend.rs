//! The Linux side of one vmnet network: where the daemon's switch meets the host kernel.
//!
//! - host/shared: a bridge owned by limanet (name and marker derived from the socket path) with
//!   the gateway address, and one TAP, enslaved to it, whose descriptor is the switch's host
//!   port. The TAP carries a virtio-net header with offloads (TSO, checksum), so the bridge
//!   and the daemon pass TCP super-segments. shared adds NAT ([`crate::nft`]) and IPv4
//!   forwarding on the bridge and on the uplinks the return traffic arrives on (shared with
//!   other shared networks: [`crate::uplinks`]); host turns forwarding off on the bridge.
//! - bridged: the interface named by `--vmnet-interface`. A bridge gets our TAP as a new port
//!   (the host's own addresses stay where they are). A plain NIC is reached through an AF_PACKET
//!   socket in promiscuous mode: nothing on the NIC changes, and the promiscuous flag goes with
//!   the socket. The host itself cannot reach VMs through that NIC (its own frames leave on the
//!   wire, not through the socket), as with macvlan.
//!
//! Everything created is undone on drop, also after a failed start. A crash (SIGKILL) leaves the
//! bridge, the nftables table and changed sysctls behind: the next start finds them by their
//! names and markers (and the uplinks' state file) and removes them first. TAP devices
//! are not persistent, so they vanish with the process. Interfaces with our names that do not
//! carry our marker are never touched.

use crate::netlink::Netlink;
use crate::nft;
use crate::options::{Mode, VmnetOptions};
use crate::uplinks;
use limanet_netstack::wire::MacAddr;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use tracing::{debug, info, warn};

/// The ifalias prefix that marks an interface as limanet's.
pub const MARKER: &str = "limanet-vmnet:";
/// MTU of the bridge and TAP (vmnet's: 1500, frames up to 1514 bytes).
pub const MTU: u16 = 1500;
/// Per-socket locks and the uplinks' state (changed sysctls, until restored).
const STATE_DIR: &str = "/run/limanet-vmnet";
/// How long a start waits for the lock of its socket: a stopping daemon may still tear down.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Why the backend could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error(
        "interface {name} already exists and is not limanet's (alias {alias:?}); not touching it"
    )]
    NameTaken { name: String, alias: Option<String> },
    #[error("another limanet vmnet is running for this socket (lock {0} is held)")]
    Busy(PathBuf),
    #[error("--vmnet-interface={0}: no such interface")]
    NoInterface(String),
    #[error("nftables: {0}")]
    Nft(#[from] nftables::helper::NftablesError),
    #[error("{0}")]
    Io(#[from] io::Error),
}

/// Names derived from the socket path, so one network always gets the same ones.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Names {
    pub id: String,
    pub bridge: String,
    pub tap: String,
    pub table: String,
    pub marker: String,
    /// Changed sysctls of versions before [`crate::uplinks`]; only read, to clean up.
    pub state_file: PathBuf,
    /// Held (flock) by the daemon serving this socket from before set-up until exit.
    pub lock_file: PathBuf,
}

impl Names {
    pub fn for_socket(socket: &Path) -> Self {
        // FNV-1a: stable across runs and versions (std's hasher is not).
        let mut h: u32 = 0x811c_9dc5;
        for b in socket.as_os_str().as_encoded_bytes() {
            h ^= u32::from(*b);
            h = h.wrapping_mul(0x0100_0193);
        }
        let id = format!("{h:08x}");
        let mut marker = format!("{MARKER}{}", socket.display());
        // ifalias holds at most 255 bytes; cut at a character boundary.
        let mut cut = marker.len().min(250);
        while !marker.is_char_boundary(cut) {
            cut -= 1;
        }
        marker.truncate(cut);
        Names {
            bridge: format!("lnvbr{id}"),
            tap: format!("lnvtp{id}"),
            table: format!("limanet_vmnet_{id}"),
            state_file: PathBuf::from(STATE_DIR).join(format!("{id}.sysctl")),
            lock_file: PathBuf::from(STATE_DIR).join(format!("{id}.lock")),
            marker,
            id,
        }
    }

    /// A locally administered MAC for the bridge (the gateway's MAC).
    pub fn bridge_mac(&self) -> MacAddr {
        let n = u32::from_str_radix(&self.id, 16).unwrap_or(0).to_be_bytes();
        [0x02, 0x4c, n[0], n[1], n[2], n[3]]
    }
}

/// The set-up network.
pub struct Backend {
    nl: Netlink,
    names: Names,
    bridge: Option<u32>,
    tap: Option<u32>,
    nat: bool,
    /// Whether this network is among the users of the shared uplinks' forwarding.
    uplinks_joined: bool,
    /// The host port: TAP or packet socket descriptor, taken by the daemon.
    host_port: Option<OwnedFd>,
    /// The host port is a TAP with a virtio-net header and offloads: the kernel bridge hands
    /// over and takes TCP super-segments.
    pub host_vnet_hdr: bool,
    /// The gateway's MAC (host/shared).
    pub gateway_mac: Option<MacAddr>,
    pub description: String,
    /// Whether dropping this tears the network down (false once a helper does it).
    armed: bool,
    /// The per-socket lock; declared last so it is released after teardown (in `Drop`).
    _lock: std::fs::File,
}

/// Creates [`STATE_DIR`] (0700) if needed.
fn state_dir() -> io::Result<&'static Path> {
    let dir = Path::new(STATE_DIR);
    std::fs::create_dir_all(dir)?;
    let meta = std::fs::symlink_metadata(dir)?;
    if !meta.is_dir() {
        return Err(io::Error::other(format!("{STATE_DIR} is not a directory")));
    }
    std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))?;
    Ok(dir)
}

/// Takes the exclusive lock of the daemon for `names`' socket, or fails if another holds it.
fn lock_socket(names: &Names) -> Result<std::fs::File, BackendError> {
    state_dir()?;
    let file = uplinks::open_lock_file(&names.lock_file)?;
    // Retried for a while: the lock is also held by a stopping daemon still tearing down, or
    // for a moment by another daemon checking whether this one is alive (crate::uplinks).
    let deadline = std::time::Instant::now() + LOCK_WAIT;
    loop {
        // SAFETY: flock on a descriptor we own.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            return Ok(file);
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EWOULDBLOCK) {
            return Err(e.into());
        }
        if std::time::Instant::now() >= deadline {
            return Err(BackendError::Busy(names.lock_file.clone()));
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

fn sysctl_path(iface: &str) -> PathBuf {
    PathBuf::from(format!("/proc/sys/net/ipv4/conf/{iface}/forwarding"))
}

impl Backend {
    /// Removes what a crashed daemon for this socket left, then sets the network up.
    pub fn setup(opts: &VmnetOptions) -> Result<Self, BackendError> {
        let nl = Netlink::new()?;
        let names = Names::for_socket(&opts.socket);
        // Before anything is removed: a daemon still setting up for this socket is never
        // disturbed (and on failure here nothing is torn down: no Backend exists yet).
        let lock = lock_socket(&names)?;
        let mut b = Backend {
            nl,
            names,
            bridge: None,
            tap: None,
            nat: false,
            uplinks_joined: false,
            host_port: None,
            host_vnet_hdr: false,
            gateway_mac: None,
            description: String::new(),
            armed: true,
            _lock: lock,
        };
        b.remove_leftovers()?;
        match opts.mode {
            Mode::Host | Mode::Shared => b.setup_routed(opts)?,
            Mode::Bridged => b.setup_bridged(opts)?,
        }
        Ok(b)
    }

    pub fn names(&self) -> &Names {
        &self.names
    }

    /// Takes the host port's descriptor (once).
    pub fn take_host_port(&mut self) -> Option<OwnedFd> {
        self.host_port.take()
    }

    /// Fails if `name` exists and is not marked as ours; deletes it if it is ours.
    fn clear_name(&self, name: &str) -> Result<(), BackendError> {
        if let Some(link) = self.nl.link(name)? {
            // Exactly this socket's marker: an interface of another socket's network (even one
            // whose id collides) is never ours to delete.
            let ours = link.alias.as_deref() == Some(self.names.marker.as_str());
            if !ours {
                return Err(BackendError::NameTaken {
                    name: name.to_string(),
                    alias: link.alias,
                });
            }
            warn!(
                interface = name,
                "removing interface left by an earlier limanet vmnet"
            );
            self.nl.delete_link(link.index)?;
        }
        Ok(())
    }

    fn remove_leftovers(&mut self) -> Result<(), BackendError> {
        if let Ok(state) = std::fs::read_to_string(&self.names.state_file) {
            for line in state.lines() {
                if let Some((path, value)) = line.split_once(' ') {
                    let path = Path::new(path);
                    // Only ever the forwarding sysctls this module writes.
                    if path.starts_with("/proc/sys/net/ipv4/conf/")
                        && path.ends_with("forwarding")
                        && (value == "0" || value == "1")
                    {
                        warn!(sysctl = %path.display(), value, "restoring a sysctl left changed by an earlier limanet vmnet");
                        let _ = std::fs::write(path, value);
                    }
                }
            }
            let _ = std::fs::remove_file(&self.names.state_file);
        }
        uplinks::leave(state_dir()?, &self.names.id)?;
        if nft::delete_if_present(&self.names.table)? {
            warn!(table = %self.names.table, "removed nftables table left by an earlier limanet vmnet");
        }
        self.clear_name(&self.names.bridge.clone())?;
        self.clear_name(&self.names.tap.clone())?;
        Ok(())
    }

    /// Creates our TAP (not persistent: it goes away with the descriptor), marked as ours.
    fn create_tap(&mut self) -> Result<u32, BackendError> {
        let netns = std::fs::File::open("/proc/thread-self/ns/net")?;
        let tap = limanet_runtime::create_tap_in(
            &netns,
            &limanet_runtime::TapConfig {
                name: self.names.tap.clone(),
                mtu: MTU,
                address: None,
                address6: None,
                // The daemon cuts super-segments for clients without offloads.
                offload: true,
                mac: None,
            },
        )?;
        self.host_vnet_hdr = tap.vnet_hdr;
        self.host_port = Some(tap.fd);
        let link = self
            .nl
            .link(&self.names.tap)?
            .ok_or_else(|| io::Error::other("the TAP device vanished after creation"))?;
        self.tap = Some(link.index);
        self.nl.set_alias(link.index, &self.names.marker)?;
        Ok(link.index)
    }

    fn setup_routed(&mut self, opts: &VmnetOptions) -> Result<(), BackendError> {
        let subnet = opts
            .subnet
            .ok_or_else(|| io::Error::other("host and shared networks need a subnet"))?;
        let mac = self.names.bridge_mac();
        let name = self.names.bridge.clone();
        self.nl.add_bridge(&name, mac, u32::from(MTU))?;
        let link = self
            .nl
            .link(&name)?
            .ok_or_else(|| io::Error::other("the bridge vanished after creation"))?;
        self.bridge = Some(link.index);
        self.nl.set_alias(link.index, &self.names.marker)?;
        self.gateway_mac = Some(link.mac.unwrap_or(mac));
        // Forwarding only where needed: on for a shared bridge, explicitly off for host mode
        // (new interfaces inherit conf/default, which may be on).
        let forwarding = if opts.mode == Mode::Shared { "1" } else { "0" };
        std::fs::write(sysctl_path(&name), forwarding)?;
        self.nl
            .add_address(link.index, subnet.gateway, subnet.prefix_len)?;
        self.nl.set_up(link.index)?;
        let tap = self.create_tap()?;
        self.nl.set_controller(tap, link.index)?;
        if opts.mode == Mode::Shared {
            // NAT first: once the uplinks forward, the bridge must be guarded.
            nft::apply(&nft::NatSpec {
                table: self.names.table.clone(),
                bridge: name.clone(),
                network: subnet.network(),
                prefix_len: subnet.prefix_len,
            })?;
            self.nat = true;
            self.uplinks_joined = true;
            let held = uplinks::join(state_dir()?, &self.names.id, &self.nl, link.index)?;
            if held.is_empty() {
                debug!("uplinks already forward IPv4");
            }
        }
        self.description = format!(
            "bridge {name} {}/{} ({}), TAP {}{}",
            subnet.gateway,
            subnet.prefix_len,
            limanet_netstack::MacDisplay(mac),
            self.names.tap,
            if self.nat {
                format!(", NAT in nftables table ip {}", self.names.table)
            } else {
                String::new()
            }
        );
        Ok(())
    }

    fn setup_bridged(&mut self, opts: &VmnetOptions) -> Result<(), BackendError> {
        let iface = opts.interface.clone().unwrap_or_default();
        let link = self
            .nl
            .link(&iface)?
            .ok_or_else(|| BackendError::NoInterface(iface.clone()))?;
        if link.kind.as_deref() == Some("bridge") {
            let tap = self.create_tap()?;
            self.nl.set_controller(tap, link.index)?;
            self.description = format!("TAP {} on bridge {iface}", self.names.tap);
        } else {
            self.host_port = Some(packet_socket(link.index)?);
            self.description = format!(
                "packet socket on {iface} (promiscuous; the host cannot reach VMs through {iface})"
            );
        }
        Ok(())
    }

    fn teardown(&mut self) {
        self.host_port = None;
        // Uplinks first: while they forward for this bridge, its NAT table guards it.
        if std::mem::take(&mut self.uplinks_joined) {
            if let Err(e) = state_dir().and_then(|dir| uplinks::leave(dir, &self.names.id)) {
                warn!(error = %e, "cannot release the uplinks' forwarding");
            }
        }
        if self.nat {
            if let Err(e) = nft::delete_if_present(&self.names.table) {
                warn!(error = %e, table = %self.names.table, "cannot remove nftables table");
            }
            self.nat = false;
        }
        // The TAP went with its descriptor; delete it in case something else still holds it.
        if let Some(tap) = self.tap.take() {
            if self.nl.link(&self.names.tap).ok().flatten().is_some() {
                let _ = self.nl.delete_link(tap);
            }
        }
        if let Some(bridge) = self.bridge.take() {
            if let Err(e) = self.nl.delete_link(bridge) {
                warn!(error = %e, bridge = %self.names.bridge, "cannot remove bridge");
            }
        }
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        if self.armed {
            self.teardown();
        }
    }
}

/// A child process that tears the network down once the daemon ends (see
/// [`Backend::hand_teardown_to_helper`]). Dropping (or [`TeardownHelper::finish`]) lets it
/// start and waits until it is done.
pub struct TeardownHelper {
    pid: libc::pid_t,
    go: Option<OwnedFd>,
}

impl TeardownHelper {
    pub fn pid(&self) -> u32 {
        self.pid as u32
    }

    /// Closes the helper's pipe and waits for the teardown to finish.
    pub fn finish(&mut self) {
        if self.go.take().is_none() {
            return;
        }
        let mut status = 0;
        // SAFETY: waitpid on our own child; retried on EINTR.
        while unsafe { libc::waitpid(self.pid, &mut status, 0) } < 0 {
            if io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
                warn!("lost the teardown helper");
                return;
            }
        }
    }
}

impl Drop for TeardownHelper {
    fn drop(&mut self) {
        self.finish();
    }
}

impl Backend {
    /// Forks a helper that keeps only CAP_NET_ADMIN, waits until the daemon closes its end of
    /// a pipe (or dies: SIGKILL included), then removes the bridge, TAP, NAT table and sysctl
    /// changes (it runs `nft`, writes sysctls and the state directory, which the sandboxed
    /// daemon cannot). This backend no longer tears down on drop. Call it while the process is
    /// single-threaded; `close_in_child` are descriptors the helper must not keep.
    pub fn hand_teardown_to_helper(
        &mut self,
        close_in_child: &[std::os::fd::RawFd],
    ) -> io::Result<TeardownHelper> {
        let mut fds = [0; 2];
        // SAFETY: pipe2 fills two descriptors we then own.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: both descriptors are fresh and ours.
        let (wait_end, go_end) =
            unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        // SAFETY: fork in a single-threaded process (documented precondition).
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            return Err(io::Error::last_os_error());
        }
        if pid == 0 {
            drop(go_end);
            self.run_helper(wait_end, close_in_child);
        }
        drop(wait_end);
        self.armed = false;
        info!(helper = pid, "teardown handed to a helper process");
        Ok(TeardownHelper {
            pid,
            go: Some(go_end),
        })
    }

    fn run_helper(&mut self, wait_end: OwnedFd, close_in_child: &[std::os::fd::RawFd]) -> ! {
        for fd in close_in_child {
            // SAFETY: descriptors the parent owns; the child's copies are not used.
            unsafe { libc::close(*fd) };
        }
        self.host_port = None;
        // A process group of its own: a SIGKILL sent to the daemon's group (a supervisor's
        // "kill -9 -PGID") must leave the helper to clean up.
        // SAFETY: setpgid of this process.
        unsafe { libc::setpgid(0, 0) };
        // SAFETY: PR_SET_NAME with a NUL-terminated name of at most 16 bytes.
        unsafe { libc::prctl(libc::PR_SET_NAME, c"vmnet-teardown".as_ptr(), 0, 0, 0) };
        let admin = [limanet_runtime::privileges::CAP_NET_ADMIN];
        if let Err(e) = limanet_runtime::privileges::keep_only_capabilities(&admin, &admin) {
            warn!(error = %e, "teardown helper cannot drop capabilities");
        }
        // A netlink connection of its own: the inherited one's event loop (epoll) is shared
        // with the parent, which closes it.
        match Netlink::new() {
            Ok(nl) => std::mem::forget(std::mem::replace(&mut self.nl, nl)),
            Err(e) => warn!(error = %e, "teardown helper: new netlink connection failed"),
        }
        let mut byte = [0u8; 1];
        loop {
            // SAFETY: read into a local buffer; returns 0 once every write end is closed.
            let n = unsafe { libc::read(wait_end.as_raw_fd(), byte.as_mut_ptr().cast(), 1) };
            if n == 0 || (n < 0 && io::Error::last_os_error().kind() != io::ErrorKind::Interrupted)
            {
                break;
            }
        }
        self.teardown();
        // SAFETY: ends the helper without running the parent's exit handlers.
        unsafe { libc::_exit(0) }
    }
}

/// An AF_PACKET socket on `ifindex` that sees every frame on the wire (promiscuous while it is
/// open) but not the host's own outgoing frames.
fn packet_socket(ifindex: u32) -> io::Result<OwnedFd> {
    const PACKET_IGNORE_OUTGOING: libc::c_int = 23;
    let proto = (libc::ETH_P_ALL as u16).to_be();
    // SAFETY: plain socket(2).
    let fd = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            libc::c_int::from(proto),
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fresh descriptor.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: all-zero sockaddr_ll is valid; filled below.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_protocol = proto;
    sll.sll_ifindex = ifindex as i32;
    // SAFETY: bind with a sockaddr_ll of the right size.
    if unsafe {
        libc::bind(
            sock.as_raw_fd(),
            &sll as *const libc::sockaddr_ll as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        )
    } != 0
    {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: all-zero packet_mreq is valid.
    let mut mreq: libc::packet_mreq = unsafe { std::mem::zeroed() };
    mreq.mr_ifindex = ifindex as i32;
    mreq.mr_type = libc::PACKET_MR_PROMISC as u16;
    setsockopt(&sock, libc::PACKET_ADD_MEMBERSHIP, &mreq)?;
    setsockopt(&sock, PACKET_IGNORE_OUTGOING, &1i32)?;
    Ok(sock)
}

fn setsockopt<T>(sock: &OwnedFd, opt: libc::c_int, value: &T) -> io::Result<()> {
    // SAFETY: setsockopt with a pointer to a live value of the size given.
    if unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_PACKET,
            opt,
            value as *const T as *const libc::c_void,
            std::mem::size_of::<T>() as u32,
        )
    } != 0
    {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fit_interface_names_and_are_stable() {
        let n = Names::for_socket(Path::new("/run/lima/socket_vmnet.shared"));
        assert!(n.bridge.len() <= 15 && n.tap.len() <= 15);
        assert_eq!(
            n,
            Names::for_socket(Path::new("/run/lima/socket_vmnet.shared"))
        );
        assert_ne!(
            n.id,
            Names::for_socket(Path::new("/run/lima/socket_vmnet.host")).id
        );
        assert!(n.marker.starts_with(MARKER));
        let mac = n.bridge_mac();
        assert_eq!(mac[0] & 0x03, 0x02, "locally administered unicast");
    }

    #[test]
    fn long_markers_are_cut_at_a_character_boundary() {
        let long = format!("/tmp/{}", "é".repeat(200));
        let n = Names::for_socket(Path::new(&long));
        assert!(n.marker.len() <= 250 && n.marker.len() >= 249);
        assert!(n.marker.starts_with(MARKER));
    }

    #[test]
    fn a_second_daemon_for_the_same_socket_is_refused() {
        // SAFETY: geteuid cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: needs root for {STATE_DIR}");
            return;
        }
        let sock = format!("/nonexistent/limanet-lock-test-{}", std::process::id());
        let n = Names::for_socket(Path::new(&sock));
        let first = lock_socket(&n).expect("first lock");
        assert!(matches!(lock_socket(&n), Err(BackendError::Busy(_))));
        drop(first);
        let again = lock_socket(&n).expect("lock after release");
        drop(again);
        let _ = std::fs::remove_file(&n.lock_file);
    }
}
