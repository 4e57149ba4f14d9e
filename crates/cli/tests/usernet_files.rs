//! `limanet usernet` against a hostile local user: a symlink at the pid file path, a live socket
//! of another program (or of a second limanet) at the socket path, a squatted runtime
//! directory, a stale pid file naming a live unrelated process, a umask of 000. Each test
//! starts the real binary on loopback-free unix sockets in its own scratch directory and checks
//! both the refusal (exit status, one clear message) and that nothing of the other party was
//! touched.

use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

const LIMANET: &str = env!("CARGO_BIN_EXE_limanet");
const GUEST_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
const GATEWAY_MAC: [u8; 6] = [0x52, 0x55, 192, 168, 5, 2];

struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Scratch {
        static N: AtomicU32 = AtomicU32::new(0);
        let path = std::env::temp_dir().join(format!(
            "limanet-ufiles-{tag}-{}-{}",
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

/// A running `limanet usernet`, stopped with SIGTERM (then SIGKILL) on drop.
struct Daemon(Child);

impl Daemon {
    fn stop(&mut self) -> std::process::ExitStatus {
        unsafe { libc::kill(self.0.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.0.try_wait() {
                return status;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        self.0.wait().unwrap()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            self.stop();
        }
    }
}

fn usernet(args: &[&str]) -> Command {
    usernet_with(Path::new(LIMANET), args)
}

fn usernet_with(bin: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(bin);
    cmd.args(["usernet", "--no-dns", "--resolv-conf", "/dev/null"])
        .args(args)
        .stdin(Stdio::null());
    cmd
}

fn start(mut cmd: Command, pidfile: &Path) -> Daemon {
    let child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut daemon = Daemon(child);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !pidfile.exists() {
        if let Ok(Some(status)) = daemon.0.try_wait() {
            panic!("limanet exited early: {status}");
        }
        assert!(
            Instant::now() < deadline,
            "{} did not appear",
            pidfile.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    daemon
}

/// Runs a limanet that is expected to refuse to start; returns its output.
fn refused(mut cmd: Command) -> Output {
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    // A limanet that wrongly starts would run forever: stop it after a while.
    let killer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(10));
        unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
    });
    let out = child.wait_with_output().unwrap();
    drop(killer);
    assert!(
        !out.status.success() && out.status.code().is_some(),
        "limanet should have refused to start: {:?}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// An ARP request for the gateway through a QEMU stream connection; panics without a reply.
fn gateway_answers(sock: &Path) {
    let mut s = UnixStream::connect(sock).expect("connect to limanet");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut f = vec![0xff; 6];
    f.extend_from_slice(&GUEST_MAC);
    f.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 1]);
    f.extend_from_slice(&GUEST_MAC);
    f.extend_from_slice(&[192, 168, 5, 15]);
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&[192, 168, 5, 2]);
    let mut msg = (f.len() as u32).to_be_bytes().to_vec();
    msg.extend_from_slice(&f);
    s.write_all(&msg).unwrap();
    let mut len = [0u8; 4];
    s.read_exact(&mut len).expect("ARP reply length");
    let mut frame = vec![0u8; u32::from_be_bytes(len) as usize];
    s.read_exact(&mut frame).expect("ARP reply");
    assert_eq!(&frame[12..14], &[0x08, 0x06]);
    assert_eq!(&frame[22..28], &GATEWAY_MAC);
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn pidfile_symlink_to_root_owned_file_is_not_overwritten() {
    let dir = Scratch::new("symlink");
    let victim = dir.join("shadow");
    std::fs::write(&victim, "root:secret\n").unwrap();
    let pid = dir.join("net.pid");
    std::os::unix::fs::symlink(&victim, &pid).unwrap();
    let sock = dir.join("net.sock");
    let out = refused(usernet(&["--listen-qemu", s(&sock), "--pidfile", s(&pid)]));
    let err = stderr(&out);
    assert!(err.contains("symbolic link"), "{err}");
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "root:secret\n");
    assert!(!sock.exists(), "the refused daemon removed its own socket");
}

#[test]
fn live_socket_of_another_program_is_refused_and_left_intact() {
    let dir = Scratch::new("other");
    let sock = dir.join("net.sock");
    let other = UnixListener::bind(&sock).unwrap();
    let ino = std::fs::metadata(&sock).unwrap().ino();
    let out = refused(usernet(&["--listen-qemu", s(&sock)]));
    let err = stderr(&out);
    assert!(err.contains("another program is listening"), "{err}");
    assert_eq!(std::fs::metadata(&sock).unwrap().ino(), ino, "same socket");
    other.set_nonblocking(true).unwrap();
    let _client = UnixStream::connect(&sock).expect("other program still reachable");
}

#[test]
fn second_limanet_on_the_same_socket_is_refused_and_first_keeps_working() {
    let dir = Scratch::new("second");
    let sock = dir.join("net.sock");
    let pid1 = dir.join("first.pid");
    let mut first = start(
        usernet(&["--listen-qemu", s(&sock), "--pidfile", s(&pid1)]),
        &pid1,
    );
    let pid2 = dir.join("second.pid");
    let out = refused(usernet(&["--listen-qemu", s(&sock), "--pidfile", s(&pid2)]));
    assert!(
        stderr(&out).contains("another program is listening"),
        "{}",
        stderr(&out)
    );
    assert!(!pid2.exists());
    gateway_answers(&sock);

    // Someone replaces the first's socket with their own: the first's exit must not delete it.
    std::fs::remove_file(&sock).unwrap();
    let theirs = UnixListener::bind(&sock).unwrap();
    let status = first.stop();
    assert!(status.success(), "first limanet: {status}");
    assert!(
        sock.exists(),
        "a socket the first limanet did not create was removed"
    );
    assert!(!pid1.exists(), "its own pid file is removed");
    theirs.set_nonblocking(true).unwrap();
    let _c = UnixStream::connect(&sock).unwrap();
}

#[test]
fn same_pidfile_held_by_a_running_limanet_refuses_start() {
    let dir = Scratch::new("pidheld");
    let pid = dir.join("net.pid");
    let sock1 = dir.join("one.sock");
    let first = start(
        usernet(&["--listen-qemu", s(&sock1), "--pidfile", s(&pid)]),
        &pid,
    );
    let sock2 = dir.join("two.sock");
    let out = refused(usernet(&["--listen-qemu", s(&sock2), "--pidfile", s(&pid)]));
    let err = stderr(&out);
    assert!(err.contains("held by a running limanet"), "{err}");
    assert!(err.contains(&format!("pid {}", first.0.id())), "{err}");
    assert_eq!(
        std::fs::read_to_string(&pid).unwrap().trim(),
        first.0.id().to_string()
    );
    assert!(!sock2.exists(), "the refused daemon cleaned up its socket");
    gateway_answers(&sock1);
}

#[test]
fn stale_pidfile_naming_a_live_unrelated_process_does_not_block_start() {
    let dir = Scratch::new("stale");
    let pid = dir.join("net.pid");
    let sock = dir.join("net.sock");
    // This test process is alive and is no limanet holding the lock: a pid reused after a
    // crash. Both formats: Lima's `<pid>\n` and socket_vmnet's `<pid>`.
    for text in [
        format!("{}\n", std::process::id()),
        std::process::id().to_string(),
    ] {
        std::fs::write(&pid, &text).unwrap();
        let mut daemon = Daemon(
            usernet(&["--listen-qemu", s(&sock), "--pidfile", s(&pid)])
                .stdout(Stdio::null())
                .stderr(Stdio::inherit())
                .spawn()
                .unwrap(),
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        let want = format!("{}\n", daemon.0.id());
        while std::fs::read_to_string(&pid).ok().as_deref() != Some(want.as_str()) {
            assert!(
                matches!(daemon.0.try_wait(), Ok(None)),
                "limanet refused a stale pid file ({text:?})"
            );
            assert!(Instant::now() < deadline, "pid file not rewritten");
            std::thread::sleep(Duration::from_millis(20));
        }
        gateway_answers(&sock);
        assert!(daemon.stop().success());
        assert!(!pid.exists());
    }
}

#[test]
fn pidfile_is_0644_and_socket_0600_under_umask_000() {
    let dir = Scratch::new("umask");
    let pid = dir.join("net.pid");
    let sock = dir.join("net.sock");
    let mut cmd = usernet(&["--listen-qemu", s(&sock), "--pidfile", s(&pid)]);
    unsafe {
        cmd.pre_exec(|| {
            libc::umask(0);
            Ok(())
        });
    }
    let _daemon = start(cmd, &pid);
    let mode = |p: &Path| std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&pid), 0o644);
    assert_eq!(mode(&sock), 0o600);
}

#[test]
fn squatted_runtime_dir_is_refused() {
    let dir = Scratch::new("squat");
    // Another user prepared $XDG_RUNTIME_DIR/limanet, open to everyone.
    let run = dir.join("limanet");
    std::fs::create_dir(&run).unwrap();
    std::fs::set_permissions(&run, std::fs::Permissions::from_mode(0o777)).unwrap();
    std::os::unix::fs::chown(&run, Some(65534), Some(65534)).unwrap();
    let mut cmd = usernet(&[]);
    cmd.env("XDG_RUNTIME_DIR", &dir.0);
    let out = refused(cmd);
    let err = stderr(&out);
    assert!(err.contains("owned by uid 65534"), "{err}");
    assert!(!run.join("default_qemu.sock").exists());

    // Ours but open to group/other: refused as well.
    std::os::unix::fs::chown(&run, Some(0), Some(0)).unwrap();
    let mut cmd = usernet(&[]);
    cmd.env("XDG_RUNTIME_DIR", &dir.0);
    let err = stderr(&refused(cmd));
    assert!(err.contains("open to other users"), "{err}");
}

/// A normal user without XDG_RUNTIME_DIR: `$TMPDIR/limanet` is created 0700, and refused when
/// someone else created it first.
#[test]
fn unprivileged_default_runtime_dir_in_tmpdir() {
    const NOBODY: u32 = 65534;
    let dir = Scratch::new("tmpdir");
    std::os::unix::fs::chown(&dir.0, Some(NOBODY), Some(NOBODY)).unwrap();
    // The build directory may not be reachable by other users (a checkout in a 0700
    // directory): nobody runs a copy of the binary from a root-owned 0755 directory.
    let bin_dir = Scratch::new("bin");
    let bin = bin_dir.join("limanet");
    std::fs::copy(LIMANET, &bin).unwrap();
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    let as_nobody = |tmpdir: &Path| {
        let mut cmd = usernet_with(&bin, &["--pidfile", s(&tmpdir.join("net.pid"))]);
        cmd.env_remove("XDG_RUNTIME_DIR")
            .env("TMPDIR", tmpdir)
            .uid(NOBODY)
            .gid(NOBODY);
        // (std drops root's supplementary groups when it changes the uid.)
        cmd
    };
    {
        let pid = dir.join("net.pid");
        let _daemon = start(as_nobody(&dir.0), &pid);
        let run = dir.join("limanet");
        let meta = std::fs::symlink_metadata(&run).unwrap();
        assert_eq!(meta.uid(), NOBODY);
        assert_eq!(meta.permissions().mode() & 0o7777, 0o700);
        gateway_answers(&run.join("default_qemu.sock"));
    }
    // Squatted by another user (root here) before nobody's first start.
    let squatted = Scratch::new("tmpdir-squat");
    std::os::unix::fs::chown(&squatted.0, Some(NOBODY), Some(NOBODY)).unwrap();
    let run = squatted.join("limanet");
    std::fs::create_dir(&run).unwrap();
    std::fs::set_permissions(&run, std::fs::Permissions::from_mode(0o700)).unwrap();
    let err = stderr(&refused(as_nobody(&squatted.0)));
    assert!(err.contains("owned by uid 0"), "{err}");
}

#[test]
fn file_in_the_way_error_does_not_repeat_itself() {
    let dir = Scratch::new("inway");
    let sock = dir.join("net.sock");
    std::fs::write(&sock, "not mine to delete").unwrap();
    let err = stderr(&refused(usernet(&["--listen-qemu", s(&sock)])));
    assert_eq!(err.matches("not a socket").count(), 1, "{err}");
    assert_eq!(
        std::fs::read_to_string(&sock).unwrap(),
        "not mine to delete"
    );
}

fn seccomp_mode(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("Seccomp:"))
        .unwrap_or("")
        .trim()
        .to_string()
}

/// The daemon confines itself after setup (seccomp filter mode 2 on every thread) and still
/// serves guests and removes its own files on exit; `--no-sandbox` leaves it unconfined.
#[test]
fn daemon_runs_confined_unless_told_not_to() {
    let dir = Scratch::new("sandbox");
    let pid = dir.join("net.pid");
    let sock = dir.join("net.sock");
    let mut daemon = start(
        usernet(&["--listen-qemu", s(&sock), "--pidfile", s(&pid)]),
        &pid,
    );
    let id = daemon.0.id();
    assert_eq!(seccomp_mode(id), "2");
    for task in std::fs::read_dir(format!("/proc/{id}/task")).unwrap() {
        let status =
            std::fs::read_to_string(task.unwrap().path().join("status")).unwrap_or_default();
        assert!(status.contains("Seccomp:\t2"), "every thread: {status}");
    }
    gateway_answers(&sock);
    assert!(daemon.stop().success());
    assert!(
        !pid.exists() && !sock.exists(),
        "cleaned up under the sandbox"
    );

    let _open = start(
        usernet(&[
            "--listen-qemu",
            s(&sock),
            "--pidfile",
            s(&pid),
            "--no-sandbox",
        ]),
        &pid,
    );
    assert_eq!(seccomp_mode(_open.0.id()), "0");
}
