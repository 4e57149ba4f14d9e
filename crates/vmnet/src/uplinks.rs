//! Uplinks shared by all `shared` networks on a host: IPv4 forwarding on the interfaces NATed
//! replies come back in, and the guard that keeps that forwarding from routing anything else.
//!
//! Several shared networks use the same uplink, so neither may be undone by the first network
//! that stops. One state file per network namespace ([`UPLINKS_FILE`]`-<netns inode>`, under a
//! lock file, both in the daemon's state directory) lists each uplink limanet switched on with the value to restore and the networks
//! (ids) using it; the last network to leave restores the sysctl. Users whose daemon is gone
//! (their per-socket lock is free: a SIGKILLed daemon) are dropped whenever the file is touched.
//! An uplink that already forwarded before limanet came is never recorded nor changed.
//!
//! The guard is one nftables table for all of them (`ip limanet_vmnet_uplinks`), rebuilt from
//! the state on every change: for each opened uplink, packets from it are dropped unless they go
//! to the bridge of a shared network using it. A per-network rule could not do this: a drop in
//! one network's table would also drop the other network's return traffic.

use crate::netlink::Netlink;
use crate::nft;
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use tracing::{info, warn};

/// The state file (one line per opened uplink: `<iface> <value to restore> <id>,<id>...`).
const UPLINKS_FILE: &str = "uplinks";
/// The nftables table of the guard.
pub const GUARD_TABLE: &str = "limanet_vmnet_uplinks";

/// One uplink whose forwarding limanet turned on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uplink {
    pub iface: String,
    /// The sysctl value before limanet changed it ("0").
    pub restore: String,
    /// Ids of the networks that need it on.
    pub users: Vec<String>,
}

/// The opened uplinks (I/O free: parsing, joining, leaving).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UplinkState {
    pub uplinks: Vec<Uplink>,
}

/// A name safe for a sysctl path, a state line and an nftables string.
fn valid_iface(name: &str) -> bool {
    !name.is_empty()
        && name.len() < 16
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.@".contains(&b))
}

fn valid_id(id: &str) -> bool {
    id.len() == 8 && id.bytes().all(|b| b.is_ascii_hexdigit())
}

impl UplinkState {
    /// Parses the state file; lines that are not exactly what [`Self::render`] writes are
    /// skipped (the file is root's, but a bad line must not steer a sysctl write).
    pub fn parse(text: &str) -> Self {
        let mut uplinks = Vec::new();
        for line in text.lines() {
            let mut fields = line.split(' ');
            let (Some(iface), Some(restore), Some(users), None) =
                (fields.next(), fields.next(), fields.next(), fields.next())
            else {
                continue;
            };
            if !valid_iface(iface) || !(restore == "0" || restore == "1") {
                continue;
            }
            let users: Vec<String> = users
                .split(',')
                .filter(|u| valid_id(u))
                .map(str::to_string)
                .collect();
            uplinks.push(Uplink {
                iface: iface.to_string(),
                restore: restore.to_string(),
                users,
            });
        }
        UplinkState { uplinks }
    }

    pub fn render(&self) -> String {
        self.uplinks
            .iter()
            .filter(|u| !u.users.is_empty())
            .map(|u| format!("{} {} {}\n", u.iface, u.restore, u.users.join(",")))
            .collect()
    }

    /// Network `id` needs forwarding on `iface`, whose sysctl reads `current` now. Returns
    /// true if the caller must switch it on (limanet opens it now).
    pub fn join(&mut self, id: &str, iface: &str, current: &str) -> bool {
        if let Some(u) = self.uplinks.iter_mut().find(|u| u.iface == iface) {
            if !u.users.iter().any(|x| x == id) {
                u.users.push(id.to_string());
            }
            // Someone switched it off meanwhile: on again, the recorded value stays.
            return current != "1";
        }
        if current == "1" {
            return false;
        }
        self.uplinks.push(Uplink {
            iface: iface.to_string(),
            restore: current.to_string(),
            users: vec![id.to_string()],
        });
        true
    }

    /// Drops the users `gone` says are gone; returns the uplinks nobody uses any more, with
    /// the value to restore (and forgets them).
    pub fn leave(&mut self, gone: impl Fn(&str) -> bool) -> Vec<(String, String)> {
        for u in &mut self.uplinks {
            u.users.retain(|x| !gone(x));
        }
        let (unused, used): (Vec<Uplink>, Vec<Uplink>) = std::mem::take(&mut self.uplinks)
            .into_iter()
            .partition(|u| u.users.is_empty());
        self.uplinks = used;
        unused.into_iter().map(|u| (u.iface, u.restore)).collect()
    }

    /// For the guard: each uplink with the bridges allowed behind it.
    pub fn guard_spec(&self) -> Vec<(String, Vec<String>)> {
        self.uplinks
            .iter()
            .map(|u| {
                let bridges = u.users.iter().map(|id| format!("lnvbr{id}")).collect();
                (u.iface.clone(), bridges)
            })
            .collect()
    }
}

fn sysctl_path(iface: &str) -> PathBuf {
    PathBuf::from(format!("/proc/sys/net/ipv4/conf/{iface}/forwarding"))
}

/// The state file of this network namespace (sysctls and nftables are per namespace).
/// Opens (creating it 0600, never through a symlink) a file whose flock guards some state.
pub(crate) fn open_lock_file(path: &Path) -> io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
}

fn state_file(dir: &Path) -> io::Result<PathBuf> {
    use std::os::unix::fs::MetadataExt;
    let netns = std::fs::metadata("/proc/thread-self/ns/net")?.ino();
    Ok(dir.join(format!("{UPLINKS_FILE}-{netns:x}")))
}

/// The state file's lock, held while this lives.
struct Locked {
    dir: PathBuf,
    path: PathBuf,
    _file: std::fs::File,
}

impl Locked {
    fn take(dir: &Path) -> io::Result<Self> {
        let path = state_file(dir)?;
        let file = open_lock_file(&path.with_extension("lock"))?;
        loop {
            // SAFETY: flock on a descriptor we own; released when it is closed.
            if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } == 0 {
                break;
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
        Ok(Locked {
            dir: dir.to_path_buf(),
            path,
            _file: file,
        })
    }

    fn read(&self) -> UplinkState {
        UplinkState::parse(&std::fs::read_to_string(&self.path).unwrap_or_default())
    }

    /// Saves the state and makes the guard table match it.
    fn write(&self, state: &UplinkState) -> io::Result<()> {
        let text = state.render();
        if text.is_empty() {
            match std::fs::remove_file(&self.path) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        } else {
            let tmp = self.path.with_extension("tmp");
            std::fs::write(&tmp, text)?;
            std::fs::rename(&tmp, &self.path)?;
        }
        let spec = state.guard_spec();
        let result = if spec.is_empty() {
            nft::delete_if_present(GUARD_TABLE).map(|_| ())
        } else {
            nft::apply_guard(GUARD_TABLE, &spec)
        };
        result.map_err(|e| io::Error::other(format!("nftables table {GUARD_TABLE}: {e}")))
    }
}

/// Whether the daemon of network `id` has exited (its per-socket lock is free).
fn daemon_gone(dir: &Path, id: &str) -> bool {
    let Ok(file) = std::fs::File::open(dir.join(format!("{id}.lock"))) else {
        return true;
    };
    // SAFETY: flock on a descriptor we own; a lock we get is released by closing it. A daemon
    // starting for that socket right now retries its own lock for a while (backend).
    unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) == 0 }
}

/// Switches forwarding on for the interfaces default routes leave through (except `bridge`),
/// where the NATed replies of network `id` come back in, and updates the guard. Returns the
/// uplinks this network now holds open.
pub fn join(dir: &Path, id: &str, nl: &Netlink, bridge: u32) -> io::Result<Vec<String>> {
    let lock = Locked::take(dir)?;
    let mut state = lock.read();
    for (iface, restore) in state.leave(|u| u != id && daemon_gone(dir, u)) {
        restore_sysctl(&iface, &restore);
    }
    let mut held = Vec::new();
    for index in nl.default_route_interfaces()? {
        if index == bridge {
            continue;
        }
        let Some(name) = nl.link_name(index)? else {
            continue;
        };
        if !valid_iface(&name) {
            warn!(interface = %name, "uplink name not usable in a sysctl path; skipped");
            continue;
        }
        let path = sysctl_path(&name);
        let current = std::fs::read_to_string(&path)?.trim().to_string();
        if state.join(id, &name, &current) {
            // Recorded before the change, so a crash cannot lose the value to restore.
            lock.write(&state)?;
            std::fs::write(&path, "1")?;
            info!(interface = %name, "enabled IPv4 forwarding for NAT return traffic");
        }
        if state.uplinks.iter().any(|u| u.iface == name) {
            held.push(name);
        }
    }
    lock.write(&state)?;
    Ok(held)
}

/// Network `id` no longer needs its uplinks (also for a crashed daemon's id): restores the
/// sysctls nobody else uses and updates the guard.
pub fn leave(dir: &Path, id: &str) -> io::Result<()> {
    if !state_file(dir)?.exists() && !nft::exists(GUARD_TABLE).unwrap_or(true) {
        return Ok(());
    }
    let lock = Locked::take(dir)?;
    let mut state = lock.read();
    for (iface, restore) in state.leave(|u| u == id || daemon_gone(&lock.dir, u)) {
        restore_sysctl(&iface, &restore);
    }
    // The lock file stays (as the per-socket ones do): removing it could let a daemon waiting
    // on the old file and one creating a new file both think they hold it.
    lock.write(&state)
}

fn restore_sysctl(iface: &str, value: &str) {
    match std::fs::write(sysctl_path(iface), value) {
        Ok(()) => info!(interface = iface, value, "restored IPv4 forwarding"),
        // The interface may be gone: nothing to restore then.
        Err(e) => warn!(interface = iface, error = %e, "cannot restore IPv4 forwarding"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "0000000a";
    const B: &str = "0000000b";

    #[test]
    fn the_last_network_to_leave_restores() {
        let mut s = UplinkState::default();
        assert!(s.join(A, "eth0", "0"), "A opens eth0");
        assert!(!s.join(B, "eth0", "1"), "B finds it open by A");
        assert_eq!(s.uplinks[0].users, vec![A, B]);
        let text = s.render();
        assert_eq!(text, format!("eth0 0 {A},{B}\n"));
        let mut s = UplinkState::parse(&text);
        assert!(s.leave(|u| u == A).is_empty(), "B still needs it");
        assert_eq!(
            s.guard_spec(),
            vec![("eth0".to_string(), vec![format!("lnvbr{B}")])]
        );
        assert_eq!(s.leave(|u| u == B), vec![("eth0".into(), "0".into())]);
        assert_eq!(s.render(), "");
    }

    #[test]
    fn forwarding_that_was_on_before_is_never_recorded() {
        let mut s = UplinkState::default();
        assert!(!s.join(A, "eth0", "1"));
        assert!(s.uplinks.is_empty());
    }

    #[test]
    fn bad_lines_are_skipped() {
        let s = UplinkState::parse(
            "../../x 0 0000000a\neth0 7 0000000a\neth1 0 zz,0000000b\nwlan0 0 0000000a extra\n",
        );
        assert_eq!(s.uplinks.len(), 1);
        assert_eq!(s.uplinks[0].iface, "eth1");
        assert_eq!(s.uplinks[0].users, vec![B]);
    }
}
