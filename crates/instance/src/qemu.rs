//! The QEMU side of an instance: probing the binary (version, `-netdev stream` support), the
//! `-netdev`/`-device` arguments limanet appends, and Lima's `fd_connect` (sockets connected
//! by limanet and inherited by QEMU as fds 3, 4, ... in argument order).

use anyhow::{bail, Context};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// A QEMU version (major, minor, micro).
pub type Version = (u32, u32, u32);

/// Lima's `parseQemuVersion`: the first `QEMU emulator version X.Y.Z` in `--version` output.
pub fn parse_version(text: &str) -> anyhow::Result<Version> {
    const PREFIX: &str = "QEMU emulator version ";
    let parsed = text.lines().find_map(|line| {
        let rest = &line[line.find(PREFIX)? + PREFIX.len()..];
        let word = rest.split_whitespace().next()?;
        let mut parts = word.split('.').map(|p| p.parse::<u32>().ok());
        let v = (parts.next()??, parts.next()??, parts.next()??);
        Some(v)
    });
    parsed.with_context(|| format!("failed to parse QEMU version from {:?}", text.trim()))
}

/// The option that makes a `-netdev stream` client reconnect, by QEMU version (Lima):
/// `reconnect-ms=500` from 9.2.0, `reconnect=1` from 8.0.0, none before.
pub fn reconnect_option(version: Option<Version>) -> Option<&'static str> {
    match version {
        Some(v) if v >= (9, 2, 0) => Some("reconnect-ms=500"),
        Some(v) if v >= (8, 0, 0) => Some("reconnect=1"),
        _ => None,
    }
}

/// What the QEMU binary supports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Caps {
    /// `qemu -M none -netdev help` lists `stream` (QEMU ≥ 7.2).
    pub stream: bool,
    /// `qemu --version`, when it parses.
    pub version: Option<Version>,
}

/// Asks `qemu` (the first word of the user's command) what it supports. A program that is not
/// QEMU (a wrapper, a test stub) simply reports neither, and limanet then uses
/// `-netdev socket,fd=N`, which every QEMU understands.
pub fn probe(qemu: &str) -> Caps {
    let version = run_quick(qemu, &["--version"]).and_then(|out| parse_version(&out).ok());
    let stream = run_quick(qemu, &["-M", "none", "-netdev", "help"])
        .is_some_and(|out| out.lines().any(|l| l.trim() == "stream"));
    tracing::debug!("{qemu}: version {version:?}, netdev stream: {stream}");
    Caps { stream, version }
}

/// Runs a short probe with a 10 s limit; stdout and stderr together, or `None`.
fn run_quick(program: &str, args: &[&str]) -> Option<String> {
    let child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .ok()?;
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(Duration::from_secs(10)) {
        Ok(Ok(out)) => {
            let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
            text.push_str(&String::from_utf8_lossy(&out.stderr));
            Some(text)
        }
        _ => {
            tracing::warn!("`{program} {}` did not answer within 10s", args.join(" "));
            let _ = crate::process::signal(pid, libc::SIGKILL);
            None
        }
    }
}

/// How one NIC's netdev reaches its network.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Netdev {
    /// `-netdev stream,...,addr.path=PATH` (QEMU connects itself).
    Stream {
        /// The unix stream socket.
        path: PathBuf,
        /// Reconnect option, see [`reconnect_option`].
        reconnect: Option<&'static str>,
    },
    /// `-netdev socket,fd=N` with the socket connected by limanet (`fd_connect`).
    FdConnect {
        /// The unix stream socket limanet connects to.
        path: PathBuf,
    },
    /// `-chardev socket,path=PATH -netdev vhost-user`: limanet serves the guest's virtqueues
    /// from shared guest memory (see [`vhost_user_memory_args`]).
    VhostUser {
        /// The vhost-user socket limanet listens on.
        path: PathBuf,
        /// Add `vectors=0` to the device: QEMU 7.2 under TCG crashes (SIGSEGV in
        /// `msix_set_vector_notifiers`) starting vhost on an MSI-X virtio-net.
        no_msix: bool,
    },
}

/// A path as a QEMU option value: commas are doubled, as QEMU's option parser wants.
fn opt_path(path: &Path) -> String {
    path.display().to_string().replace(',', ",,")
}

/// The `-netdev` and `-device` arguments of one NIC (and its `-chardev` for vhost-user).
/// `next_fd` is the fd number the next `fd_connect` gets in QEMU (starting at 3) and is
/// advanced when this NIC uses one.
pub fn nic_args(id: &str, netdev: &Netdev, mac: &str, next_fd: &mut RawFd) -> Vec<String> {
    let mut device = format!("virtio-net-pci,netdev={id},mac={mac}");
    let mut out = Vec::new();
    let spec = match netdev {
        Netdev::Stream { path, reconnect } => {
            let mut s = format!(
                "stream,id={id},server=off,addr.type=unix,addr.path={}",
                path.display()
            );
            if let Some(r) = reconnect {
                s.push(',');
                s.push_str(r);
            }
            s
        }
        Netdev::FdConnect { .. } => {
            let fd = *next_fd;
            *next_fd += 1;
            format!("socket,id={id},fd={fd}")
        }
        Netdev::VhostUser { path, no_msix } => {
            out.push("-chardev".to_owned());
            out.push(format!("socket,id=chr-{id},path={}", opt_path(path)));
            if *no_msix {
                device.push_str(",vectors=0");
            }
            format!("vhost-user,id={id},chardev=chr-{id}")
        }
    };
    out.extend(["-netdev".to_owned(), spec, "-device".to_owned(), device]);
    out
}

/// The id of the memory backend limanet adds for vhost-user.
pub const VHOST_MEMORY_ID: &str = "limanet-mem";

/// The arguments that put the guest's RAM in a shared memfd, as a vhost-user backend needs
/// (it maps the guest's memory to reach the virtqueues): `-object
/// memory-backend-memfd,id=limanet-mem,size=<-m>,share=on -machine memory-backend=limanet-mem`.
///
/// The size is the user's `-m` (a backend of another size is refused by QEMU). Refused, with
/// an error that says why: no `-m` (limanet does not guess the machine's default), `maxmem`
/// (hotplugged memory would not be shared), and memory options limanet's would conflict with
/// (`-numa`, `-mem-path`, a `memory-backend=` of the user's own).
pub fn vhost_user_memory_args(user_args: &[String]) -> anyhow::Result<Vec<String>> {
    let size = memory_size(user_args)?;
    let mut args = user_args.iter();
    while let Some(arg) = args.next() {
        match option_name(arg) {
            "-numa" | "-mem-path" => bail!(
                "--vhost-user puts the guest's RAM in a shared memory backend of its own, \
                 which `{arg}` conflicts with; drop `{arg}` or attach without --vhost-user"
            ),
            "-machine" | "-M" => {
                let value = args.next().map(String::as_str).unwrap_or_default();
                if value.split(',').any(|kv| kv.starts_with("memory-backend=")) {
                    bail!(
                        "--vhost-user adds its own shared memory backend (`-machine \
                         memory-backend={VHOST_MEMORY_ID}`), which conflicts with `{arg} \
                         {value}`; drop `memory-backend=` or attach without --vhost-user"
                    );
                }
            }
            _ => {}
        }
    }
    Ok(vec![
        "-object".to_owned(),
        format!("memory-backend-memfd,id={VHOST_MEMORY_ID},size={size},share=on"),
        "-machine".to_owned(),
        format!("memory-backend={VHOST_MEMORY_ID}"),
    ])
}

/// The guest's RAM in bytes from the user's `-m [size=]SIZE[,slots=N,maxmem=SIZE]` (QEMU's
/// syntax: a bare number is MiB; `B`, `K`, `M`, `G`, `T` suffixes; fractions such as `1.5G`),
/// rounded up to 8 KiB as QEMU does.
pub fn memory_size(user_args: &[String]) -> anyhow::Result<u64> {
    let mut value = None;
    let mut args = user_args.iter();
    while let Some(arg) = args.next() {
        if option_name(arg) == "-m" {
            let v = args.next().context("`-m` without a value")?;
            if value.replace(v).is_some() {
                bail!("--vhost-user needs one `-m` option, the QEMU command has several");
            }
        }
    }
    let value = value.context(
        "--vhost-user needs the guest's memory size to share it with limanet: add `-m SIZE` \
         (e.g. `-m 1G`) to the QEMU command",
    )?;
    let mut size = None;
    for (i, part) in value.split(',').enumerate() {
        match part.split_once('=') {
            None if i == 0 => size = Some(part),
            Some(("size", v)) => size = Some(v),
            Some(("slots", _)) => {}
            Some(("maxmem", _)) => bail!(
                "--vhost-user cannot share hotplugged memory: drop `maxmem` from `-m {value}`"
            ),
            _ => bail!("cannot read the memory size from `-m {value}`"),
        }
    }
    let text = size.with_context(|| format!("cannot read the memory size from `-m {value}`"))?;
    let bytes = parse_mib_size(text)
        .with_context(|| format!("cannot read the memory size from `-m {value}`"))?;
    Ok(bytes.div_ceil(8192) * 8192)
}

/// QEMU's `qemu_strtosz_MiB`: `NUM[.FRAC][B|K|M|G|T|P|E]`, MiB without a suffix.
fn parse_mib_size(text: &str) -> anyhow::Result<u64> {
    let (num, unit) = match text.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => (&text[..i], Some(c.to_ascii_uppercase())),
        _ => (text, None),
    };
    let shift = match unit {
        None | Some('M') => 20,
        Some('B') => 0,
        Some('K') => 10,
        Some('G') => 30,
        Some('T') => 40,
        Some('P') => 50,
        Some('E') => 60,
        Some(c) => bail!("unknown size suffix `{c}`"),
    };
    let (int, frac) = num.split_once('.').unwrap_or((num, ""));
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(int) || !(frac.is_empty() || digits(frac)) || (shift == 0 && !frac.is_empty()) {
        bail!("not a size");
    }
    let int: u128 = int.parse().context("not a size")?;
    let mut bytes = int << shift;
    if !frac.is_empty() && frac.len() <= 18 {
        let f: u128 = frac.parse().context("not a size")?;
        bytes += (f << shift) / 10u128.pow(frac.len() as u32);
    }
    let bytes = u64::try_from(bytes).ok().filter(|&b| b > 0);
    bytes.context("size out of range")
}

/// A QEMU option as `-name`: QEMU takes `--name` too.
fn option_name(arg: &str) -> &str {
    if arg.starts_with("--") {
        &arg[1..]
    } else {
        arg
    }
}

/// Whether the user's command line runs the guest under KVM (`-enable-kvm`, `-accel kvm`,
/// `-machine accel=kvm`); QEMU's default accelerator is TCG.
pub fn uses_kvm(user_args: &[String]) -> bool {
    let mut args = user_args.iter();
    while let Some(arg) = args.next() {
        match option_name(arg) {
            "-enable-kvm" => return true,
            // `-accel kvm` or `-accel accel=kvm`.
            "-accel"
                if args.next().is_some_and(|v| {
                    let first = v.split(',').next().unwrap_or_default();
                    first.strip_prefix("accel=").unwrap_or(first) == "kvm"
                }) =>
            {
                return true
            }
            "-machine" | "-M" => {
                let accel = args.next().and_then(|v| {
                    v.split(',')
                        .find_map(|kv| kv.strip_prefix("accel="))
                        .map(str::to_owned)
                });
                // `accel=kvm:tcg` tries KVM first.
                if accel.is_some_and(|a| a.split(':').next() == Some("kvm")) {
                    return true;
                }
            }
            _ => {}
        }
    }
    false
}

/// Sockets connected for QEMU (Lima's `fd_connect`), in fd order 3, 4, ...
#[derive(Debug, Default)]
pub struct ExtraFds {
    fds: Vec<OwnedFd>,
}

/// `close_range` flag: mark the range close-on-exec instead of closing it (Linux 5.11).
const CLOSE_RANGE_CLOEXEC: libc::c_uint = 1 << 2;

/// The lowest fd number QEMU gets first (after stdin, stdout, stderr).
pub const FIRST_FD: RawFd = 3;

impl ExtraFds {
    /// Connects to `path` (a unix stream socket) and keeps the connection for the child.
    pub fn connect(&mut self, path: &Path) -> anyhow::Result<()> {
        let stream = UnixStream::connect(path)
            .with_context(|| format!("failed to connect to `{}`", path.display()))?;
        // Move the descriptor above the range the child will use, so the dup2 calls in
        // `pre_exec` never overwrite a source that is still needed.
        // SAFETY: fcntl(F_DUPFD_CLOEXEC) on a descriptor we own; the result is a new fd we own.
        let high = unsafe { libc::fcntl(stream.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 100) };
        if high < 0 {
            return Err(std::io::Error::last_os_error()).context("failed to duplicate socket fd");
        }
        // SAFETY: `high` is a fresh descriptor nobody else owns.
        self.fds.push(unsafe { OwnedFd::from_raw_fd(high) });
        Ok(())
    }

    /// Arranges for the child of `cmd` to receive the sockets as fds 3, 4, ...
    pub fn pass_to(&self, cmd: &mut Command) -> anyhow::Result<()> {
        let pairs: Vec<(RawFd, RawFd)> = self
            .fds
            .iter()
            .enumerate()
            .map(|(i, fd)| {
                let target = FIRST_FD + RawFd::try_from(i).unwrap_or(RawFd::MAX - FIRST_FD);
                (fd.as_raw_fd(), target)
            })
            .collect();
        if pairs.iter().any(|&(src, target)| src <= target) {
            bail!("internal error: socket fd below its target number");
        }
        let first_unused = FIRST_FD + RawFd::try_from(pairs.len()).unwrap_or(0);
        // SAFETY: the closure only calls dup2 and close_range, which are async-signal-safe.
        // dup2 clears FD_CLOEXEC on the target; close_range then marks everything else this
        // process inherited without FD_CLOEXEC (a jobserver pipe, a caller's fds) close-on-exec,
        // so QEMU gets exactly stdin, stdout, stderr and its sockets. Marking instead of closing
        // keeps std's own exec-error pipe working. Kernels without CLOSE_RANGE_CLOEXEC (< 5.11)
        // just skip that step.
        unsafe {
            cmd.pre_exec(move || {
                for &(src, target) in &pairs {
                    if libc::dup2(src, target) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                libc::syscall(
                    libc::SYS_close_range,
                    first_unused as libc::c_uint,
                    libc::c_uint::MAX,
                    CLOSE_RANGE_CLOEXEC,
                );
                Ok(())
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_vectors() -> anyhow::Result<()> {
        assert_eq!(
            parse_version("QEMU emulator version 1.5.3 (qemu-kvm-1.5.3-175.el7_9.6), Copyright (c) 2003-2008 Fabrice Bellard")?,
            (1, 5, 3)
        );
        assert_eq!(parse_version("QEMU emulator version 8.0.0 (v8.0.0)\nCopyright (c) 2003-2022 Fabrice Bellard and the QEMU Project developers")?, (8, 0, 0));
        assert_eq!(
            parse_version("QEMU emulator version 7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)")?,
            (7, 2, 22)
        );
        let err = format!("{:#}", parse_version("foobar").err().context("must fail")?);
        assert!(err.contains("failed to parse"), "{err}");
        Ok(())
    }

    #[test]
    fn reconnect_by_version() {
        assert_eq!(reconnect_option(None), None);
        assert_eq!(reconnect_option(Some((7, 2, 22))), None);
        assert_eq!(reconnect_option(Some((8, 0, 0))), Some("reconnect=1"));
        assert_eq!(reconnect_option(Some((9, 1, 9))), Some("reconnect=1"));
        assert_eq!(reconnect_option(Some((9, 2, 0))), Some("reconnect-ms=500"));
        assert_eq!(reconnect_option(Some((10, 0, 0))), Some("reconnect-ms=500"));
    }

    #[test]
    fn netdev_arguments() {
        let mut fd = FIRST_FD;
        let stream = Netdev::Stream {
            path: "/l/i/default_qemu.sock".into(),
            reconnect: None,
        };
        assert_eq!(
            nic_args("net0", &stream, "52:55:55:00:00:01", &mut fd),
            [
                "-netdev",
                "stream,id=net0,server=off,addr.type=unix,addr.path=/l/i/default_qemu.sock",
                "-device",
                "virtio-net-pci,netdev=net0,mac=52:55:55:00:00:01"
            ]
        );
        assert_eq!(fd, 3);
        let sock = Netdev::FdConnect { path: "/x".into() };
        assert_eq!(
            nic_args("net1", &sock, "m1", &mut fd)[1],
            "socket,id=net1,fd=3"
        );
        assert_eq!(
            nic_args("net2", &sock, "m2", &mut fd)[1],
            "socket,id=net2,fd=4"
        );
        let vmnet = Netdev::Stream {
            path: "/run/lima/socket_vmnet.shared".into(),
            reconnect: Some("reconnect=1"),
        };
        assert_eq!(
            nic_args("net3", &vmnet, "m3", &mut fd)[1],
            "stream,id=net3,server=off,addr.type=unix,addr.path=/run/lima/socket_vmnet.shared,reconnect=1"
        );
        assert_eq!(fd, 5);
    }

    fn argv(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_owned).collect()
    }

    #[test]
    fn vhost_user_nic_arguments() {
        let mut fd = FIRST_FD;
        let vhost = Netdev::VhostUser {
            path: "/l/a,b/default_vhost.sock".into(),
            no_msix: true,
        };
        assert_eq!(
            nic_args("net0", &vhost, "52:55:55:00:00:01", &mut fd),
            [
                "-chardev",
                "socket,id=chr-net0,path=/l/a,,b/default_vhost.sock",
                "-netdev",
                "vhost-user,id=net0,chardev=chr-net0",
                "-device",
                "virtio-net-pci,netdev=net0,mac=52:55:55:00:00:01,vectors=0"
            ]
        );
        assert_eq!(fd, FIRST_FD, "vhost-user passes no fd");
        let kvm = Netdev::VhostUser {
            path: "/s".into(),
            no_msix: false,
        };
        assert_eq!(
            nic_args("net0", &kvm, "m", &mut fd)[5],
            "virtio-net-pci,netdev=net0,mac=m"
        );
    }

    #[test]
    fn memory_sizes_follow_qemu() -> anyhow::Result<()> {
        const MIB: u64 = 1 << 20;
        for (m, want) in [
            ("256", 256 * MIB),
            ("1G", 1 << 30),
            ("1g", 1 << 30),
            ("512M", 512 * MIB),
            ("size=2G", 2 << 30),
            ("1.5G", 1536 * MIB),
            ("2G,slots=2", 2 << 30),
            ("262144K", 256 * MIB),
            ("1000000B", 1_007_616), // rounded up to 8 KiB, as QEMU does
        ] {
            assert_eq!(memory_size(&argv(&format!("-m {m}")))?, want, "-m {m}");
        }
        assert_eq!(memory_size(&argv("-accel tcg --m 64"))?, 64 * MIB);
        for (args, want) in [
            ("-accel tcg", "add `-m SIZE`"),
            ("-m", "without a value"),
            ("-m 1G -m 2G", "several"),
            ("-m 1G,maxmem=4G", "maxmem"),
            ("-m 1X", "cannot read the memory size"),
            ("-m 0", "cannot read the memory size"),
            ("-m 1.5B", "cannot read the memory size"),
            ("-m lots", "cannot read the memory size"),
            ("-m 1G,foo=1", "cannot read the memory size"),
        ] {
            let err = format!("{:#}", memory_size(&argv(args)).err().context(args)?);
            assert!(err.contains(want), "{args}: {err}");
        }
        Ok(())
    }

    #[test]
    fn vhost_user_memory_backend_and_conflicts() -> anyhow::Result<()> {
        assert_eq!(
            vhost_user_memory_args(&argv("-machine q35,accel=tcg -m 1G"))?,
            [
                "-object",
                "memory-backend-memfd,id=limanet-mem,size=1073741824,share=on",
                "-machine",
                "memory-backend=limanet-mem"
            ]
        );
        for (args, want) in [
            ("-m 1G -numa node,memdev=x", "`-numa` conflicts"),
            ("-m 1G --numa node", "`--numa` conflicts"),
            ("-m 1G -mem-path /dev/hugepages", "`-mem-path` conflicts"),
            (
                "-m 1G -M pc,memory-backend=ram0",
                "conflicts with `-M pc,memory-backend=ram0`",
            ),
        ] {
            let err = format!(
                "{:#}",
                vhost_user_memory_args(&argv(args)).err().context(args)?
            );
            assert!(err.contains(want), "{args}: {err}");
        }
        Ok(())
    }

    #[test]
    fn kvm_detection() {
        for yes in [
            "-enable-kvm",
            "--enable-kvm",
            "-accel kvm",
            "-accel kvm,kernel-irqchip=on",
            "-accel accel=kvm",
            "-machine q35,accel=kvm",
            "-M pc,accel=kvm:tcg",
        ] {
            assert!(uses_kvm(&argv(yes)), "{yes}");
        }
        for no in [
            "",
            "-accel tcg",
            "-machine q35",
            "-M accel=tcg:kvm",
            "-m kvm",
        ] {
            assert!(!uses_kvm(&argv(no)), "{no}");
        }
    }

    #[test]
    fn probe_real_qemu_and_non_qemu() {
        let caps = probe("sh");
        assert_eq!(
            caps,
            Caps {
                stream: false,
                version: None
            }
        );
        if Path::new("/usr/bin/qemu-system-x86_64").exists() {
            let caps = probe("qemu-system-x86_64");
            assert!(caps.stream, "QEMU 7.2+ lists the stream netdev");
            assert!(caps.version.is_some_and(|v| v >= (7, 2, 0)));
        }
    }

    #[test]
    fn fds_arrive_in_order() -> anyhow::Result<()> {
        use std::io::{Read, Write};
        use std::os::unix::net::UnixListener;
        let dir = crate::process::tests::tempdir()?;
        let mut listeners = Vec::new();
        let mut fds = ExtraFds::default();
        for name in ["a.sock", "b.sock"] {
            let path = dir.join(name);
            let l = UnixListener::bind(&path)?;
            fds.connect(&path)?;
            listeners.push(l);
        }
        // The child writes its name into fd 3 and fd 4; each listener must see its own.
        // An inherited fd without FD_CLOEXEC must not reach the child.
        // SAFETY: dup of stdin into a new descriptor without FD_CLOEXEC, closed below.
        let stray = unsafe { libc::fcntl(0, libc::F_DUPFD, 200) };
        assert!(stray >= 200);
        let mut cmd = Command::new("sh");
        cmd.args([
            "-c",
            &format!("echo three >&3; echo four >&4; [ ! -e /proc/self/fd/{stray} ] || exit 9"),
        ]);
        fds.pass_to(&mut cmd)?;
        let status = cmd.status()?;
        // SAFETY: closing the descriptor duplicated above.
        unsafe { libc::close(stray) };
        assert!(status.success(), "{status}");
        drop(fds);
        for (l, want) in listeners.iter().zip(["three\n", "four\n"]) {
            let (mut conn, _) = l.accept()?;
            let mut got = String::new();
            conn.read_to_string(&mut got)?;
            assert_eq!(got, want);
            conn.write_all(b"")?;
        }
        std::fs::remove_dir_all(&dir)?;
        Ok(())
    }
}
