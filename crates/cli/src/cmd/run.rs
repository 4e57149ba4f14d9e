//! `limanet run`: run a command in a new network namespace attached to a new user-mode network,
//! as `slirp4netns` and `pasta` do. The command sees a TAP device `tap0` configured as the
//! network's first guest, a default route via the gateway, and a resolv.conf that points at the
//! embedded DNS (bind-mounted in a private mount namespace). Nothing is left behind: the
//! namespaces die with the command.

use super::usernet::{
    attach_dns, attach_namespaces, drop_privileges, parent_dirs, termination_signals, NetworkArgs,
};
use anyhow::{bail, Context, Result};
use limanet_runtime::{Exit, Network, Options};
use std::ffi::CString;
use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use tracing::{debug, info};

/// `limanet run` arguments.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub net: NetworkArgs,
    /// Name of the TAP device in the new namespace.
    #[arg(long, default_value = "tap0")]
    pub tap_name: String,
    /// Leave the TAP device unconfigured (for a DHCP client in the command).
    #[arg(long)]
    pub no_configure: bool,
    /// Keep the host's /etc/resolv.conf instead of pointing the command at the embedded DNS.
    #[arg(long)]
    pub keep_resolv_conf: bool,
    /// The command and its arguments.
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
    pub command: Vec<String>,
}

fn pipe() -> Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: fds has room for two descriptors.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error()).context("pipe");
    }
    // SAFETY: fresh descriptors we now own.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

fn pidfd_open(pid: u32) -> Result<OwnedFd> {
    // SAFETY: plain syscall; we own the result on success.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error()).context("pidfd_open");
    }
    // SAFETY: fresh descriptor.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Forks the command into new network (and, with a resolv.conf, mount) namespaces, and returns
/// once the child is in them. The child then waits for a byte on `ready`: `1` once the parent
/// has set up its network; anything else, or the parent going away, makes it exit without
/// running the command. (`Command::spawn` cannot be used: it waits for the exec, and the exec
/// must wait for the parent.)
fn spawn_in_new_netns(
    command: &[String],
    resolv: Option<&std::path::Path>,
    ready: OwnedFd,
    ready_w: &OwnedFd,
) -> Result<u32> {
    let (unshared_r, unshared_w) = pipe()?;
    let argv: Vec<CString> = command
        .iter()
        .map(|a| CString::new(a.as_bytes()))
        .collect::<Result<_, _>>()
        .context("command arguments must not contain NUL bytes")?;
    let mut argv_ptrs: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
    argv_ptrs.push(std::ptr::null());
    let resolv = resolv
        .map(|p| CString::new(p.as_os_str().as_encoded_bytes()))
        .transpose()
        .context("temp path")?;
    let target = c"/etc/resolv.conf";
    let root = c"/";
    // SAFETY: limanet is single-threaded here (the DNS thread starts later), and the child only
    // makes async-signal-safe system calls before exec or _exit.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(std::io::Error::last_os_error()).context("fork");
    }
    if pid == 0 {
        // SAFETY: in the child, see above.
        unsafe {
            let fail = |msg: &[u8], code: i32| -> ! {
                libc::write(2, msg.as_ptr() as *const libc::c_void, msg.len());
                libc::_exit(code)
            };
            libc::close(ready_w.as_raw_fd());
            libc::close(unshared_r.as_raw_fd());
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::pthread_sigmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
            let flags = libc::CLONE_NEWNET
                | if resolv.is_some() {
                    libc::CLONE_NEWNS
                } else {
                    0
                };
            if libc::unshare(flags) != 0 {
                fail(
                    b"limanet run: cannot create namespaces (needs CAP_SYS_ADMIN)\n",
                    125,
                );
            }
            if let Some(src) = &resolv {
                let private = libc::mount(
                    std::ptr::null(),
                    root.as_ptr(),
                    std::ptr::null(),
                    libc::MS_REC | libc::MS_PRIVATE,
                    std::ptr::null(),
                );
                let bind = libc::mount(
                    src.as_ptr(),
                    target.as_ptr(),
                    std::ptr::null(),
                    libc::MS_BIND,
                    std::ptr::null(),
                );
                if private != 0 || bind != 0 {
                    fail(b"limanet run: cannot bind-mount /etc/resolv.conf\n", 125);
                }
            }
            let ok = b'1';
            libc::write(
                unshared_w.as_raw_fd(),
                &ok as *const u8 as *const libc::c_void,
                1,
            );
            libc::close(unshared_w.as_raw_fd());
            let mut byte = 0u8;
            while libc::read(
                ready.as_raw_fd(),
                &mut byte as *mut u8 as *mut libc::c_void,
                1,
            ) < 0
                && *libc::__errno_location() == libc::EINTR
            {}
            if byte != b'1' {
                libc::_exit(125);
            }
            libc::execvp(argv_ptrs[0], argv_ptrs.as_ptr());
            fail(b"limanet run: cannot execute the command\n", 127);
        }
    }
    drop(ready);
    drop(unshared_w);
    // Wait for the child to be in its namespaces (EOF without a byte: it failed and exited).
    let mut byte = [0u8; 1];
    let mut unshared = std::fs::File::from(unshared_r);
    let _ = std::io::Read::read(&mut unshared, &mut byte);
    if byte[0] != b'1' {
        bail!("the command's namespaces could not be set up");
    }
    Ok(pid as u32)
}

/// Runs the subcommand; returns the command's exit status.
pub fn run(args: Args) -> Result<u8> {
    let cfg = args.net.net_config()?;
    let resolv = if args.keep_resolv_conf {
        None
    } else {
        let mut text = String::new();
        if !cfg.search_domains.is_empty() {
            text.push_str(&format!("search {}\n", cfg.search_domains.join(" ")));
        }
        for dns in &cfg.dhcp_dns {
            text.push_str(&format!("nameserver {dns}\n"));
        }
        // A predictable name in a shared directory: created exclusively, never through a
        // symlink someone planted there.
        let path = std::env::temp_dir().join(format!("limanet-resolv-{}.conf", std::process::id()));
        Some(limanet_runtime::ExclusiveFile::create(
            &path,
            text.as_bytes(),
            0o644,
        )?)
    };

    let signals = termination_signals()?;
    let (ready_r, ready_w) = pipe()?;
    let pid = spawn_in_new_netns(
        &args.command,
        resolv.as_ref().map(|t| t.path()),
        ready_r,
        &ready_w,
    )?;
    let mut ready = std::fs::File::from(ready_w);

    let setup = (|| -> Result<(Network, Option<limanet_dns::BackgroundDns>)> {
        let mut cfg = cfg.clone();
        let packet_ports = attach_namespaces(
            &mut cfg,
            &[pid.to_string()],
            &args.tap_name,
            !args.no_configure,
            !args.net.no_offload,
        )?;
        let opts = Options {
            listen: Vec::new(),
            packet_ports,
            forwards: args.net.forwards.clone(),
            pcap: args.net.pcap.clone(),
            stop_fds: vec![signals, pidfd_open(pid)?],
            persistent: true,
            busy_poll: args.net.busy_poll(),
        };
        let mut net = Network::new(cfg.clone(), opts)?;
        drop_privileges()?;
        // The resolv.conf copy is removed at exit.
        args.net
            .confine_filesystem(parent_dirs(resolv.as_ref().map(|r| r.path())))?;
        let dns = args.net.start_dns(&cfg, &mut net)?;
        attach_dns(&mut net, &dns)?;
        args.net.confine_syscalls()?;
        Ok((net, dns))
    })();
    let (mut net, dns) = match setup {
        Ok(n) => n,
        Err(e) => {
            let _ = ready.write_all(b"0");
            let _ = wait(pid);
            return Err(e);
        }
    };
    ready
        .write_all(b"1")
        .context("cannot release the command")?;
    drop(ready);
    info!(pid, command = ?args.command, "command started in its own network namespace");
    // A termination signal is passed on to the command; the network runs until it exits.
    while let Exit::Stop(0) = net.run()? {
        debug!("forwarding termination signal to the command");
        // SAFETY: signalling our own child.
        unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
    }
    drop(net);
    drop(dns);
    drop(resolv);
    wait(pid)
}

fn wait(pid: u32) -> Result<u8> {
    let mut status = 0;
    loop {
        // SAFETY: waiting for our own child.
        let r = unsafe { libc::waitpid(pid as libc::pid_t, &mut status, 0) };
        if r >= 0 {
            break;
        }
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINTR) {
            bail!("waitpid: {e}");
        }
    }
    Ok(if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status) as u8
    } else if libc::WIFSIGNALED(status) {
        128 + libc::WTERMSIG(status) as u8
    } else {
        1
    })
}
