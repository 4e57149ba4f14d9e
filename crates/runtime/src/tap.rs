//! TAP devices inside network namespaces, opened and configured by limanet (as pasta and
//! slirp4netns do), with plain ioctls: no `ip` command, no netlink dependency.
//!
//! With [`TapConfig::offload`], the TAP is opened with `IFF_VNET_HDR` (every frame carries a
//! virtio-net header, see `limanet_netstack::vnet`) and `TUNSETOFFLOAD` enables checksum
//! offload, TSO and, where the kernel has it, USO: the namespace's kernel then hands over
//! 64 KiB super-segments even at MTU 1500 and takes them back the same way. Offloads the
//! kernel refuses are left off; the header stays, and frames are then ordinary ones.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::mem::zeroed;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;

/// How the TAP device inside the namespace is set up.
#[derive(Debug, Clone)]
pub struct TapConfig {
    pub name: String,
    pub mtu: u16,
    /// Address and prefix length to assign, and the default gateway; `None` leaves the
    /// interface unconfigured (for guests that run their own DHCP client).
    pub address: Option<(Ipv4Addr, u8, Ipv4Addr)>,
    /// A static IPv6 address (/64) to assign as well (the predictable first guest address,
    /// `<prefix>::15`), with address autoconfiguration off on the TAP so SLAAC adds no second
    /// one; the default route still comes from the Router Advertisements.
    pub address6: Option<Ipv6Addr>,
    /// Open with a virtio-net header and enable offloads (only for a reader that speaks the
    /// header: limanet's data planes, or a relay to a peer that negotiated offloads).
    pub offload: bool,
    /// Ethernet address to give the device; `None` keeps the kernel's random one.
    pub mac: Option<[u8; 6]>,
}

/// Opens a namespace given as a path (`/run/netns/NAME`, `/proc/PID/ns/net`) or a PID.
pub fn open_netns(spec: &str) -> io::Result<File> {
    let path = if spec.chars().all(|c| c.is_ascii_digit()) {
        format!("/proc/{spec}/ns/net")
    } else {
        spec.to_string()
    };
    File::open(Path::new(&path)).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("cannot open network namespace {path}: {e}"),
        )
    })
}

/// A TAP device created in a namespace: its descriptor and the Ethernet address the namespace
/// uses on it.
#[derive(Debug)]
pub struct Tap {
    pub fd: OwnedFd,
    pub mac: [u8; 6],
    /// Every frame read or written carries a virtio-net header.
    pub vnet_hdr: bool,
    /// The `TUN_F_*` offloads the kernel accepted (0 without a vnet header).
    pub offloads: u32,
}

/// Creates and configures a TAP device inside `netns`. The work happens on a short-lived thread
/// that joins the namespace, so the caller's own namespace is never changed.
pub fn create_tap_in(netns: &File, cfg: &TapConfig) -> io::Result<Tap> {
    let ns = netns.as_raw_fd();
    let cfg = cfg.clone();
    std::thread::scope(|s| {
        s.spawn(move || {
            // SAFETY: setns on this thread only; the thread ends right after.
            if unsafe { libc::setns(ns, libc::CLONE_NEWNET) } != 0 {
                let e = io::Error::last_os_error();
                return Err(io::Error::new(
                    e.kind(),
                    format!("cannot enter the network namespace: {e}"),
                ));
            }
            let fd = open_tap(&cfg.name, cfg.offload)?;
            let offloads = if cfg.offload {
                enable_offloads(&fd, &cfg.name)
            } else {
                0
            };
            let mac = configure(&cfg)?;
            Ok(Tap {
                fd,
                mac,
                vnet_hdr: cfg.offload,
                offloads,
            })
        })
        .join()
        .unwrap_or_else(|_| Err(io::Error::other("TAP setup thread panicked")))
    })
}

/// Sets the length of the virtio-net header of a TAP opened with one (`TUNSETVNETHDRSZ`): 12
/// for `virtio_net_hdr_v1`, the form the stream protocol's offload extension carries, so a
/// relay passes headers through unchanged.
pub fn set_vnet_hdr_len(tap: &OwnedFd, len: usize) -> io::Result<()> {
    let len = libc::c_int::try_from(len).map_err(io::Error::other)?;
    // SAFETY: TUNSETVNETHDRSZ reads an int through the pointer.
    if unsafe { libc::ioctl(tap.as_raw_fd(), libc::TUNSETVNETHDRSZ as _, &len) } < 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(e.kind(), format!("TUNSETVNETHDRSZ: {e}")));
    }
    Ok(())
}

/// A TAP another process opened and passed us (`limanet attach` hands its TAP to the vmnet
/// daemon), now set up for our reader.
#[derive(Debug)]
pub struct PassedTap {
    /// The interface's name, in its own namespace (for logs).
    pub name: String,
    /// The `TUN_F_*` offloads the kernel accepted.
    pub offloads: u32,
}

/// Checks that `fd` is a TAP opened with a virtio-net header and no packet information, then
/// sets the header length to [`limanet_netstack::vnet::VNET_HDR_LEN`] and enables offloads
/// ourselves, whatever the sender did. The device is checked first (the tun misc device,
/// 10:200), so no TUN ioctl ever reaches another kind of file.
pub fn adopt_passed_tap(fd: &OwnedFd) -> io::Result<PassedTap> {
    let refuse = |why: String| io::Error::new(io::ErrorKind::InvalidInput, why);
    // SAFETY: fstat on a descriptor we hold, into a zeroed struct.
    let mut st: libc::stat = unsafe { zeroed() };
    if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } < 0 {
        return Err(io::Error::last_os_error());
    }
    let is_tun = st.st_mode & libc::S_IFMT == libc::S_IFCHR
        && libc::major(st.st_rdev) == 10
        && libc::minor(st.st_rdev) == 200;
    if !is_tun {
        return Err(refuse("not a /dev/net/tun descriptor".into()));
    }
    // SAFETY: all-zero ifreq is valid.
    let mut req: libc::ifreq = unsafe { zeroed() };
    ioctl(
        fd.as_raw_fd(),
        libc::TUNGETIFF as libc::c_ulong,
        &mut req,
        "TUNGETIFF",
    )?;
    let name: String = req
        .ifr_name
        .iter()
        .take_while(|c| **c != 0)
        .map(|c| *c as u8 as char)
        .collect();
    // SAFETY: TUNGETIFF filled the flags member.
    let flags = i32::from(unsafe { req.ifr_ifru.ifru_flags }) & 0xffff;
    let needed = libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR;
    if flags & needed != needed || flags & libc::IFF_TUN != 0 {
        return Err(refuse(format!(
            "{name:?} is not a TAP with a virtio-net header (flags {flags:#x})"
        )));
    }
    set_vnet_hdr_len(fd, limanet_netstack::vnet::VNET_HDR_LEN)?;
    let offloads = enable_offloads(fd, &name);
    Ok(PassedTap { name, offloads })
}

fn ifreq(name: &str) -> io::Result<libc::ifreq> {
    // SAFETY: all-zero ifreq is valid.
    let mut req: libc::ifreq = unsafe { zeroed() };
    let bytes = name.as_bytes();
    if bytes.is_empty() || bytes.len() >= req.ifr_name.len() || bytes.contains(&0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("invalid interface name {name:?}"),
        ));
    }
    for (dst, src) in req.ifr_name.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    Ok(req)
}

fn ioctl(fd: RawFd, request: libc::c_ulong, req: &mut libc::ifreq, what: &str) -> io::Result<()> {
    // SAFETY: the request codes used here all take a struct ifreq.
    if unsafe { libc::ioctl(fd, request as _, req as *mut libc::ifreq) } < 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(e.kind(), format!("{what}: {e}")));
    }
    Ok(())
}

/// Asks for checksum offload, TSO for IPv4 and IPv6, and USO where the kernel has it (6.2+);
/// returns what it accepted. Refusals are not errors: the TAP works without them.
fn enable_offloads(tap: &OwnedFd, name: &str) -> u32 {
    let base = libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6;
    let uso = libc::TUN_F_USO4 | libc::TUN_F_USO6;
    for wanted in [base | uso, base, libc::TUN_F_CSUM] {
        // SAFETY: TUNSETOFFLOAD takes the flags as its integer argument.
        let rc = unsafe {
            libc::ioctl(
                tap.as_raw_fd(),
                libc::TUNSETOFFLOAD as _,
                libc::c_ulong::from(wanted),
            )
        };
        if rc == 0 {
            tracing::debug!(
                tap = name,
                offloads = format!("{wanted:#x}"),
                "TAP offloads enabled"
            );
            return wanted;
        }
        let e = io::Error::last_os_error();
        tracing::debug!(tap = name, offloads = format!("{wanted:#x}"), error = %e, "TAP offloads refused");
    }
    tracing::info!(
        tap = name,
        "the kernel refused every TAP offload: frames stay MTU-sized"
    );
    0
}

fn open_tap(name: &str, vnet_hdr: bool) -> io::Result<OwnedFd> {
    let path = CString::new("/dev/net/tun").map_err(io::Error::other)?;
    // SAFETY: opening a device node; we own the descriptor on success.
    let fd = unsafe {
        libc::open(
            path.as_ptr(),
            libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(
            e.kind(),
            format!("cannot open /dev/net/tun: {e}"),
        ));
    }
    // SAFETY: fresh descriptor.
    let tap = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut req = ifreq(name)?;
    let vnet = if vnet_hdr { libc::IFF_VNET_HDR } else { 0 };
    req.ifr_ifru.ifru_flags = (libc::IFF_TAP | libc::IFF_NO_PI | vnet) as libc::c_short;
    ioctl(
        tap.as_raw_fd(),
        libc::TUNSETIFF as libc::c_ulong,
        &mut req,
        "TUNSETIFF",
    )?;
    Ok(tap)
}

fn sockaddr_in(ip: Ipv4Addr) -> libc::sockaddr {
    // SAFETY: sockaddr_in and sockaddr have the same size; all-zero is valid.
    let mut sin: libc::sockaddr_in = unsafe { zeroed() };
    sin.sin_family = libc::AF_INET as libc::sa_family_t;
    sin.sin_addr.s_addr = u32::from(ip).to_be();
    // SAFETY: reinterpreting a sockaddr_in as the generic sockaddr, as the ioctls expect.
    unsafe { std::mem::transmute::<libc::sockaddr_in, libc::sockaddr>(sin) }
}

fn set_up(sock: RawFd, name: &str) -> io::Result<()> {
    let mut req = ifreq(name)?;
    ioctl(sock, libc::SIOCGIFFLAGS, &mut req, "SIOCGIFFLAGS")?;
    // SAFETY: SIOCGIFFLAGS filled the flags member.
    unsafe { req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short };
    ioctl(sock, libc::SIOCSIFFLAGS, &mut req, "bring interface up")
}

/// Configures the interface; returns its MAC address.
/// Adds `addr/prefix_len` to interface `name` (SIOCSIFADDR on an IPv6 socket).
fn add_ipv6_address(name: &str, addr: Ipv6Addr, prefix_len: u32) -> io::Result<()> {
    let cname = CString::new(name).map_err(|_| io::Error::other("interface name with NUL"))?;
    // SAFETY: valid NUL-terminated name.
    let index = unsafe { libc::if_nametoindex(cname.as_ptr()) };
    if index == 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a socket only used as an ioctl handle.
    let raw = unsafe { libc::socket(libc::AF_INET6, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fresh descriptor.
    let sock = unsafe { OwnedFd::from_raw_fd(raw) };
    let mut req = libc::in6_ifreq {
        ifr6_addr: libc::in6_addr {
            s6_addr: addr.octets(),
        },
        ifr6_prefixlen: prefix_len,
        ifr6_ifindex: index as libc::c_int,
    };
    // SAFETY: SIOCSIFADDR on an AF_INET6 socket takes a struct in6_ifreq.
    if unsafe {
        libc::ioctl(
            sock.as_raw_fd(),
            libc::SIOCSIFADDR as _,
            &mut req as *mut libc::in6_ifreq,
        )
    } < 0
    {
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EEXIST) {
            return Err(io::Error::new(
                e.kind(),
                format!("set IPv6 address {addr}/{prefix_len}: {e}"),
            ));
        }
    }
    Ok(())
}

fn configure(cfg: &TapConfig) -> io::Result<[u8; 6]> {
    // SAFETY: a socket only used as an ioctl handle.
    let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fresh descriptor.
    let sock = unsafe { OwnedFd::from_raw_fd(raw) };
    let fd = sock.as_raw_fd();
    set_up(fd, "lo")?;
    let mut req = ifreq(&cfg.name)?;
    req.ifr_ifru.ifru_mtu = libc::c_int::from(cfg.mtu);
    ioctl(fd, libc::SIOCSIFMTU, &mut req, "set MTU")?;
    if let Some(mac) = cfg.mac {
        let mut req = ifreq(&cfg.name)?;
        // SAFETY: all-zero sockaddr is valid; it becomes the union's active member.
        let mut hw: libc::sockaddr = unsafe { zeroed() };
        hw.sa_family = libc::ARPHRD_ETHER;
        for (dst, src) in hw.sa_data.iter_mut().zip(mac) {
            *dst = src as libc::c_char;
        }
        req.ifr_ifru.ifru_hwaddr = hw;
        ioctl(fd, libc::SIOCSIFHWADDR, &mut req, "set MAC address")?;
    }
    if let Some(addr6) = cfg.address6 {
        // Before the link is up: no Router Solicitation has gone out, so SLAAC cannot race.
        let autoconf = format!("/proc/sys/net/ipv6/conf/{}/autoconf", cfg.name);
        if let Err(e) = std::fs::write(&autoconf, "0") {
            tracing::warn!(path = %autoconf, error = %e, "cannot turn IPv6 autoconfiguration off; the guest may get a SLAAC address besides its static one");
        }
        add_ipv6_address(&cfg.name, addr6, 64)?;
    }
    if let Some((addr, prefix, gateway)) = cfg.address {
        let mut req = ifreq(&cfg.name)?;
        req.ifr_ifru.ifru_addr = sockaddr_in(addr);
        ioctl(fd, libc::SIOCSIFADDR, &mut req, "set address")?;
        let mask = Ipv4Addr::from(limanet_netstack::config::prefix_mask(prefix));
        let mut req = ifreq(&cfg.name)?;
        req.ifr_ifru.ifru_netmask = sockaddr_in(mask);
        ioctl(fd, libc::SIOCSIFNETMASK, &mut req, "set netmask")?;
        set_up(fd, &cfg.name)?;
        // Default route via the gateway.
        // SAFETY: all-zero rtentry is valid.
        let mut rt: libc::rtentry = unsafe { zeroed() };
        rt.rt_dst = sockaddr_in(Ipv4Addr::UNSPECIFIED);
        rt.rt_genmask = sockaddr_in(Ipv4Addr::UNSPECIFIED);
        rt.rt_gateway = sockaddr_in(gateway);
        rt.rt_flags = libc::RTF_UP | libc::RTF_GATEWAY;
        // SAFETY: SIOCADDRT takes a struct rtentry.
        if unsafe { libc::ioctl(fd, libc::SIOCADDRT as _, &mut rt as *mut libc::rtentry) } < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EEXIST) {
                return Err(io::Error::new(e.kind(), format!("add default route: {e}")));
            }
        }
    } else {
        set_up(fd, &cfg.name)?;
    }
    let mut req = ifreq(&cfg.name)?;
    ioctl(fd, libc::SIOCGIFHWADDR, &mut req, "read MAC address")?;
    let mut mac = [0u8; 6];
    // SAFETY: SIOCGIFHWADDR filled the hardware address member.
    let hw = unsafe { req.ifr_ifru.ifru_hwaddr.sa_data };
    for (m, b) in mac.iter_mut().zip(hw.iter()) {
        *m = *b as u8;
    }
    Ok(mac)
}
