//! The hardened file and socket helpers against the attacks a local user can mount on a daemon
//! that runs as root in shared directories: symlinks planted at predictable paths, squatted
//! directories, live sockets of other programs, pid files naming reused pids, a hostile umask.
//! Each test works in its own scratch directory; the ownership tests need root (for chown).

use limanet_runtime::files::{
    bind_socket, prepare_socket_path, private_dir, probe_socket, BoundPath, ExclusiveFile,
    FileError, PidFile, PidFileState, SocketProbe,
};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixDatagram, UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;

/// umask is per process: tests that change it must not overlap with tests that create files.
static UMASK: Mutex<()> = Mutex::new(());

struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Scratch {
        static N: AtomicU32 = AtomicU32::new(0);
        let path = std::env::temp_dir().join(format!(
            "limanet-files-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir(&path).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        Scratch(path)
    }
    fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn is_root() -> bool {
    unsafe { libc::geteuid() == 0 }
}

fn chown(path: &Path, uid: u32) {
    std::os::unix::fs::lchown(path, Some(uid), Some(uid)).unwrap();
}

fn mode(path: &Path) -> u32 {
    std::fs::symlink_metadata(path)
        .unwrap()
        .permissions()
        .mode()
        & 0o7777
}

#[test]
fn pidfile_symlink_to_root_owned_file_is_not_followed() {
    let _g = UMASK.lock().unwrap();
    let dir = Scratch::new("pid-symlink");
    let victim = dir.join("shadow");
    std::fs::write(&victim, "root:secret\n").unwrap();
    let pid = dir.join("net.pid");
    std::os::unix::fs::symlink(&victim, &pid).unwrap();
    let err = PidFile::create(&pid).expect_err("a symlink at the pid path must be refused");
    assert!(
        matches!(err, FileError::InTheWay { .. }),
        "unexpected error: {err}"
    );
    assert!(err.to_string().contains("symbolic link"), "{err}");
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "root:secret\n");
    assert!(std::fs::symlink_metadata(&pid)
        .unwrap()
        .file_type()
        .is_symlink());
}

#[test]
fn pidfile_fifo_at_path_is_refused_without_hanging() {
    let _g = UMASK.lock().unwrap();
    let dir = Scratch::new("pid-fifo");
    let pid = dir.join("net.pid");
    let c = std::ffi::CString::new(pid.as_os_str().as_encoded_bytes()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
    let err = PidFile::create(&pid).expect_err("a FIFO is not a pid file");
    assert!(err.to_string().contains("FIFO"), "{err}");
}

#[test]
fn stale_pidfile_naming_a_live_unrelated_process_does_not_block_start() {
    let _g = UMASK.lock().unwrap();
    let dir = Scratch::new("pid-stale");
    let pid = dir.join("net.pid");
    // pid 1 is alive and is not a limanet holding the lock: the pid was "reused".
    for text in ["1\n", "1"] {
        std::fs::write(&pid, text).unwrap();
        assert_eq!(
            PidFile::inspect(&pid).unwrap(),
            PidFileState::Stale(Some(1))
        );
        let held = PidFile::create(&pid).expect("stale pid file is replaced");
        assert_eq!(
            std::fs::read_to_string(&pid).unwrap(),
            format!("{}\n", std::process::id())
        );
        drop(held);
        assert!(!pid.exists(), "removed on drop");
    }
}

#[test]
fn locked_pidfile_refuses_a_second_daemon_and_is_kept() {
    let _g = UMASK.lock().unwrap();
    let dir = Scratch::new("pid-locked");
    let pid = dir.join("net.pid");
    let first = PidFile::create(&pid).unwrap();
    let me = std::process::id();
    assert_eq!(
        PidFile::inspect(&pid).unwrap(),
        PidFileState::Locked(Some(me))
    );
    let err = PidFile::create(&pid).expect_err("second daemon refused");
    assert!(
        matches!(err, FileError::AlreadyRunning { pid: Some(p), .. } if p == me),
        "{err}"
    );
    assert_eq!(std::fs::read_to_string(&pid).unwrap(), format!("{me}\n"));
    drop(first);
    assert_eq!(PidFile::inspect(&pid).unwrap(), PidFileState::Missing);
}

#[test]
fn pidfile_replaced_by_someone_else_is_not_removed_on_exit() {
    let _g = UMASK.lock().unwrap();
    let dir = Scratch::new("pid-replaced");
    let pid = dir.join("net.pid");
    let held = PidFile::create(&pid).unwrap();
    std::fs::remove_file(&pid).unwrap();
    std::fs::write(&pid, "4242\n").unwrap();
    drop(held);
    assert_eq!(std::fs::read_to_string(&pid).unwrap(), "4242\n");
}

#[test]
fn pidfile_is_0644_under_umask_000() {
    let _g = UMASK.lock().unwrap();
    let dir = Scratch::new("pid-umask");
    let pid = dir.join("net.pid");
    let old = unsafe { libc::umask(0) };
    let held = PidFile::create(&pid);
    unsafe { libc::umask(old) };
    let held = held.unwrap();
    assert_eq!(mode(&pid), 0o644);
    drop(held);
}

#[test]
fn pidfile_refused_in_a_directory_others_can_write() {
    let _g = UMASK.lock().unwrap();
    let dir = Scratch::new("pid-opendir");
    std::fs::set_permissions(&dir.0, std::fs::Permissions::from_mode(0o777)).unwrap();
    let err = PidFile::create(&dir.join("net.pid")).expect_err("0777 directory refused");
    assert!(matches!(err, FileError::UnsafeDirectory { .. }), "{err}");
    // Sticky (like /tmp) is fine: others cannot rename or remove our file.
    std::fs::set_permissions(&dir.0, std::fs::Permissions::from_mode(0o1777)).unwrap();
    drop(PidFile::create(&dir.join("net.pid")).expect("sticky directory accepted"));
    if is_root() {
        std::fs::set_permissions(&dir.0, std::fs::Permissions::from_mode(0o755)).unwrap();
        chown(&dir.0, 65534);
        let err = PidFile::create(&dir.join("net.pid")).expect_err("foreign directory refused");
        assert!(err.to_string().contains("owned by uid 65534"), "{err}");
    }
}

#[test]
fn live_stream_socket_of_another_program_is_refused_and_kept() {
    let dir = Scratch::new("sock-live");
    let path = dir.join("net.sock");
    let other = UnixListener::bind(&path).unwrap();
    let ino = std::fs::metadata(&path).unwrap().ino();
    assert_eq!(probe_socket(&path).unwrap(), SocketProbe::Live);
    let err = prepare_socket_path(&path).expect_err("live socket refused");
    assert!(matches!(err, FileError::SocketInUse { .. }), "{err}");
    assert_eq!(std::fs::metadata(&path).unwrap().ino(), ino);
    // The other program still gets its connections.
    other.set_nonblocking(true).unwrap();
    let _c = UnixStream::connect(&path).expect("other program still reachable");
    // The probe's own connection was accepted too; both are queued.
    assert!(other.accept().is_ok());
}

#[test]
fn live_datagram_socket_is_refused() {
    let dir = Scratch::new("sock-dgram");
    let path = dir.join("net.sock");
    let _other = UnixDatagram::bind(&path).unwrap();
    assert_eq!(probe_socket(&path).unwrap(), SocketProbe::Live);
    assert!(matches!(
        prepare_socket_path(&path),
        Err(FileError::SocketInUse { .. })
    ));
    assert!(path.exists());
}

#[test]
fn dead_socket_is_replaced() {
    let dir = Scratch::new("sock-dead");
    let path = dir.join("net.sock");
    drop(UnixListener::bind(&path).unwrap());
    assert!(path.exists(), "the file outlives the listener");
    assert_eq!(probe_socket(&path).unwrap(), SocketProbe::Dead);
    prepare_socket_path(&path).expect("dead socket replaced");
    assert!(!path.exists());
    let _l = UnixListener::bind(&path).expect("path free for bind");
}

#[test]
fn bind_socket_gives_the_final_mode_and_group_under_any_umask_and_removes_its_own() {
    let _guard = UMASK.lock().unwrap_or_else(|e| e.into_inner());
    let dir = Scratch::new("sock-bind");
    let path = dir.join("net.sock");
    // SAFETY: umask swaps the process mask; restored below (tests that create files hold UMASK).
    let old = unsafe { libc::umask(0) };
    let gid = if is_root() {
        4242
    } else {
        unsafe { libc::getegid() }
    };
    let bound = bind_socket(&path, 0o770, Some(gid), |p| UnixListener::bind(p));
    let dgram = bind_socket(&dir.join("d.sock"), 0o600, None, |p| UnixDatagram::bind(p));
    // SAFETY: as above.
    unsafe { libc::umask(old) };
    let (listener, bound) = bound.expect("bind");
    let (_dgram, dgram_bound) = dgram.expect("bind datagram");
    assert_eq!(mode(&path), 0o770, "mode from the start, not the umask");
    assert_eq!(mode(&dir.join("d.sock")), 0o600);
    assert_eq!(std::fs::symlink_metadata(&path).unwrap().gid(), gid);
    assert_eq!(
        unsafe { libc::umask(0o022) },
        old,
        "umask restored after the bind"
    );
    unsafe { libc::umask(old) };
    // A live socket is never displaced by a second bind.
    let err = bind_socket(&path, 0o600, None, |p| UnixListener::bind(p)).expect_err("live");
    assert!(matches!(err, FileError::SocketInUse { .. }), "{err}");
    drop(bound);
    drop(dgram_bound);
    drop(listener);
    assert!(
        !path.exists() && !dir.join("d.sock").exists(),
        "removed on drop"
    );
}

#[test]
fn file_in_the_way_is_refused_with_a_message_that_does_not_repeat() {
    let dir = Scratch::new("sock-file");
    let path = dir.join("net.sock");
    std::fs::write(&path, "data").unwrap();
    let err = prepare_socket_path(&path).expect_err("regular file refused");
    let text = format!("{:#}", anyhow_like(&err));
    assert_eq!(text.matches("not a socket").count(), 1, "{text}");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "data");
}

/// The error and its sources, joined as `anyhow`'s `{:#}` would.
fn anyhow_like(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        text.push_str(": ");
        text.push_str(&s.to_string());
        cur = s.source();
    }
    text
}

#[test]
fn bound_path_of_a_replaced_socket_is_left_alone() {
    let dir = Scratch::new("sock-bound");
    let path = dir.join("net.sock");
    let ours = UnixListener::bind(&path).unwrap();
    let bound = BoundPath::record(&path).unwrap();
    // Someone removes our socket and binds theirs at the same path.
    std::fs::remove_file(&path).unwrap();
    let theirs = UnixListener::bind(&path).unwrap();
    drop(bound);
    drop(ours);
    assert!(path.exists(), "the second socket must survive our exit");
    let _c = UnixStream::connect(&path).expect("theirs still answers");
    drop(theirs);
    // And our own, untouched, is removed.
    std::fs::remove_file(&path).unwrap();
    let _l = UnixListener::bind(&path).unwrap();
    drop(BoundPath::record(&path).unwrap());
    assert!(!path.exists());
}

#[test]
fn private_dir_is_created_0700_even_under_a_strange_umask() {
    let _g = UMASK.lock().unwrap();
    let dir = Scratch::new("rundir-new");
    let run = dir.join("limanet");
    let old = unsafe { libc::umask(0o777) };
    let r = private_dir(&run);
    unsafe { libc::umask(old) };
    r.unwrap();
    assert_eq!(mode(&run), 0o700);
    private_dir(&run).expect("our own 0700 directory is accepted again");
}

#[test]
fn squatted_runtime_dir_is_refused() {
    let dir = Scratch::new("rundir-squat");
    let run = dir.join("limanet");
    std::fs::create_dir(&run).unwrap();
    std::fs::set_permissions(&run, std::fs::Permissions::from_mode(0o755)).unwrap();
    let err = private_dir(&run).expect_err("group/other access refused");
    assert!(err.to_string().contains("open to other users"), "{err}");
    if is_root() {
        std::fs::set_permissions(&run, std::fs::Permissions::from_mode(0o700)).unwrap();
        chown(&run, 65534);
        let err = private_dir(&run).expect_err("foreign owner refused");
        assert!(err.to_string().contains("owned by uid 65534"), "{err}");
    }
    let link = dir.join("link");
    let target = dir.join("target");
    std::fs::create_dir(&target).unwrap();
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let err = private_dir(&link).expect_err("symlink refused");
    assert!(err.to_string().contains("symbolic link"), "{err}");
}

#[test]
fn exclusive_file_never_writes_through_a_planted_symlink() {
    let _g = UMASK.lock().unwrap();
    let dir = Scratch::new("excl");
    let victim = dir.join("victim");
    std::fs::write(&victim, "precious").unwrap();
    let path = dir.join("limanet-resolv-1.conf");
    std::os::unix::fs::symlink(&victim, &path).unwrap();
    let f = ExclusiveFile::create(&path, b"nameserver 192.168.5.3\n", 0o644).unwrap();
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        "nameserver 192.168.5.3\n"
    );
    assert_eq!(mode(&path), 0o644);
    drop(f);
    assert!(!path.exists());
    assert!(victim.exists());
}
