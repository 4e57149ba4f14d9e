//! `limanet run`: run a command in a new network namespace attached to a new user-mode network,
//! as `slirp4netns` and `pasta` do. The command sees a TAP device `tap0` configured as the
//! network's first guest, a default route via the gateway, and a resolv.conf that points at the
//! embedded DNS (bind-mounted in a private mount namespace). Nothing is left behind: the
//! namespaces die with the command.

use super::usernet::{attach_dns, tap_config, termination_signals, NetworkArgs};
use anyhow::{bail, Context, Result};
use limanet_runtime::{Exit, Network, Options};
use std::ffi::CString;
use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::Command;
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
        let path = std::env::temp_dir().join(format!("limanet-resolv-{}.conf", std::process::id()));
        std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
        Some(TempFile(path))
    };

    let signals = termination_signals()?;
    let (ready_r, ready_w) = pipe()?;
    let mut command = Command::new(&args.command[0]);
    command.args(&args.command[1..]);
    let ready_fd = ready_r.as_raw_fd();
    let resolv_c = match &resolv {
        Some(t) => Some(CString::new(t.0.as_os_str().as_encoded_bytes()).context("temp path")?),
        None => None,
    };
    let target = CString::new("/etc/resolv.conf").context("path")?;
    let root = CString::new("/").context("path")?;
    // SAFETY: only async-signal-safe system calls run between fork and exec.
    unsafe {
        command.pre_exec(move || {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::pthread_sigmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
            let flags = libc::CLONE_NEWNET
                | if resolv_c.is_some() {
                    libc::CLONE_NEWNS
                } else {
                    0
                };
            if libc::unshare(flags) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if let Some(src) = &resolv_c {
                if libc::mount(
                    std::ptr::null(),
                    root.as_ptr(),
                    std::ptr::null(),
                    libc::MS_REC | libc::MS_PRIVATE,
                    std::ptr::null(),
                ) != 0
                    || libc::mount(
                        src.as_ptr(),
                        target.as_ptr(),
                        std::ptr::null(),
                        libc::MS_BIND,
                        std::ptr::null(),
                    ) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
            }
            // Wait until the parent has set up the TAP device.
            let mut byte = 0u8;
            loop {
                let n = libc::read(ready_fd, &mut byte as *mut u8 as *mut libc::c_void, 1);
                if n >= 0 {
                    break;
                }
                if *libc::__errno_location() != libc::EINTR {
                    return Err(std::io::Error::last_os_error());
                }
            }
            if byte != b'1' {
                return Err(std::io::Error::other("network setup failed"));
            }
            Ok(())
        });
    }
    let child = command.spawn().with_context(|| {
        format!(
            "cannot start {:?} in a new network namespace",
            args.command[0]
        )
    })?;
    drop(ready_r);
    let pid = child.id();
    let mut ready = std::fs::File::from(ready_w);

    let setup = (|| -> Result<(Network, Option<limanet_dns::BackgroundDns>)> {
        let ns = limanet_runtime::open_netns(&pid.to_string())?;
        let tap = limanet_runtime::create_tap_in(
            &ns,
            &tap_config(&args.tap_name, &cfg, !args.no_configure),
        )
        .context("cannot set up the TAP device")?;
        let dns = args.net.start_dns(&cfg)?;
        let opts = Options {
            listen: Vec::new(),
            packet_ports: vec![(tap, format!("run:{pid}"))],
            forwards: args.net.forwards.clone(),
            pcap: args.net.pcap.clone(),
            stop_fds: vec![signals, pidfd_open(pid)?],
            persistent: true,
        };
        let mut net = Network::new(cfg.clone(), opts)?;
        attach_dns(&mut net, &dns)?;
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

struct TempFile(std::path::PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}
