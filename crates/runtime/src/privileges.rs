//! Process set-up shared by limanet's daemons: termination signals as a descriptor the event loop
//! can wait on, and giving up root's powers once the privileged set-up is done.

use std::io;
use std::os::fd::{FromRawFd, OwnedFd};

pub const CAP_NET_BIND_SERVICE: u32 = 10;
pub const CAP_NET_ADMIN: u32 = 12;
pub const CAP_NET_RAW: u32 = 13;

/// Blocks `signals` in this thread (and threads it starts later) and returns a signalfd that
/// becomes readable when one arrives, so the event loop can shut down cleanly. Children inherit
/// the blocked mask: unblock it after `fork` where a child should see these signals.
pub fn signal_fd(signals: &[libc::c_int]) -> io::Result<OwnedFd> {
    // SAFETY: sigset manipulation on a local set, then plain syscalls.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for &s in signals {
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

/// Keeps only the capabilities in `keep` (permitted and effective) and drops every capability not
/// in `bounding` from the bounding set too, so programs run later cannot regain them. Applies to
/// the calling thread and threads it starts afterwards. A no-op when not root.
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
