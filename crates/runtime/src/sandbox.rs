//! Confinement of the data plane once setup is done, as passt does: Landlock for the
//! filesystem (where the kernel has it) and a seccomp allow-list of system calls for every
//! thread (the event loop, the DNS server and its getaddrinfo threads, logging, shutdown).
//!
//! After [`confine_filesystem`]: files may be read anywhere (resolv.conf re-reads, /etc/hosts
//! and NSS for getaddrinfo), but nothing may be executed, written or created, except removing
//! (and, for the pid file, creating) entries in the directories of this process's own sockets
//! and pid file, which limanet cleans up on exit.
//!
//! After [`confine_syscalls`]: only the system calls listed in [`allowed_syscalls`] run; any
//! other (execve, ptrace, mount, module loading, ...) fails with EPERM. `open`/`openat` are
//! allowed only without O_CREAT, O_WRONLY, O_RDWR and O_TRUNC, so no file can be created or
//! written through a new descriptor, and `ioctl` only with the few requests in [`IOCTLS`], so
//! no interface can be reconfigured. A call that is refused returns an error the caller
//! already handles, rather than killing the process: one missed rare path must not take down
//! every VM's network.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use landlock::{
    path_beneath_rules, Access, AccessFs, Ruleset, RulesetAttr, RulesetCreatedAttr, RulesetStatus,
    ABI,
};
use seccompiler::{
    SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter, SeccompRule,
    TargetArch,
};
use tracing::{info, warn};

/// Why confinement failed.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("cannot set up Landlock: {0}")]
    Landlock(String),
    #[error("cannot set up the seccomp filter: {0}")]
    Seccomp(String),
}

/// How far the filesystem confinement went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsConfinement {
    /// Every restriction asked for is enforced.
    Full,
    /// The kernel enforces only part of it (older Landlock ABI).
    Partial,
    /// The kernel has no Landlock: nothing enforced.
    None,
}

/// Restricts the calling thread and the threads it starts later (start the DNS server after
/// this) to reading files; `writable_dirs` may also have entries removed and regular files
/// created in them (the directories of our sockets and pid file).
pub fn confine_filesystem(writable_dirs: &[PathBuf]) -> Result<FsConfinement, SandboxError> {
    let abi = ABI::V3;
    let err = |e: landlock::RulesetError| SandboxError::Landlock(e.to_string());
    let read = AccessFs::from_read(abi) & !AccessFs::Execute;
    let cleanup = read | AccessFs::RemoveFile | AccessFs::MakeReg | AccessFs::WriteFile;
    let dirs: Vec<&Path> = writable_dirs
        .iter()
        .map(PathBuf::as_path)
        .filter(|d| d.is_dir())
        .collect();
    let status = Ruleset::default()
        .handle_access(AccessFs::from_all(abi))
        .map_err(err)?
        .create()
        .map_err(err)?
        .add_rules(path_beneath_rules(["/"], read))
        .map_err(err)?
        .add_rules(path_beneath_rules(&dirs, cleanup))
        .map_err(err)?
        .restrict_self()
        .map_err(err)?;
    let level = match status.ruleset {
        RulesetStatus::FullyEnforced => FsConfinement::Full,
        RulesetStatus::PartiallyEnforced => FsConfinement::Partial,
        RulesetStatus::NotEnforced => FsConfinement::None,
    };
    match level {
        FsConfinement::None => warn!("the kernel has no Landlock: the filesystem is not confined"),
        _ => info!(?level, dirs = ?dirs, "filesystem confined (Landlock): read-only, no exec"),
    }
    Ok(level)
}

/// The system calls the data plane makes after setup, by any thread.
pub fn allowed_syscalls() -> Vec<libc::c_long> {
    let mut calls = vec![
        // I/O on open descriptors.
        libc::SYS_read,
        libc::SYS_write,
        libc::SYS_readv,
        libc::SYS_writev,
        libc::SYS_pread64,
        libc::SYS_close,
        libc::SYS_lseek,
        libc::SYS_fcntl,
        libc::SYS_ioctl,
        libc::SYS_dup,
        libc::SYS_dup3,
        libc::SYS_flock,
        libc::SYS_fstat,
        libc::SYS_newfstatat,
        libc::SYS_statx,
        libc::SYS_fstatfs,
        libc::SYS_statfs,
        libc::SYS_readlinkat,
        libc::SYS_faccessat,
        libc::SYS_faccessat2,
        libc::SYS_getdents64,
        libc::SYS_unlinkat,
        // Sockets: host-side flows, forwards, DNS.
        libc::SYS_socket,
        libc::SYS_connect,
        libc::SYS_bind,
        libc::SYS_listen,
        libc::SYS_accept4,
        libc::SYS_sendto,
        libc::SYS_recvfrom,
        libc::SYS_sendmsg,
        libc::SYS_recvmsg,
        libc::SYS_sendmmsg,
        libc::SYS_recvmmsg,
        libc::SYS_shutdown,
        libc::SYS_getsockname,
        libc::SYS_getpeername,
        libc::SYS_setsockopt,
        libc::SYS_getsockopt,
        // Event loops, timers, threads.
        libc::SYS_epoll_create1,
        libc::SYS_epoll_ctl,
        libc::SYS_epoll_pwait,
        libc::SYS_epoll_pwait2,
        libc::SYS_ppoll,
        libc::SYS_eventfd2,
        libc::SYS_pipe2,
        libc::SYS_futex,
        libc::SYS_sched_yield,
        libc::SYS_sched_getaffinity,
        libc::SYS_clock_gettime,
        libc::SYS_clock_getres,
        libc::SYS_clock_nanosleep,
        libc::SYS_nanosleep,
        libc::SYS_gettimeofday,
        libc::SYS_clone,
        libc::SYS_clone3,
        libc::SYS_set_robust_list,
        libc::SYS_rseq,
        libc::SYS_prctl,
        libc::SYS_getrandom,
        // Memory.
        libc::SYS_mmap,
        libc::SYS_munmap,
        libc::SYS_mremap,
        libc::SYS_mprotect,
        libc::SYS_madvise,
        libc::SYS_brk,
        // Signals, identity, process end (limanet run signals and reaps its command).
        libc::SYS_rt_sigaction,
        libc::SYS_rt_sigprocmask,
        libc::SYS_rt_sigreturn,
        libc::SYS_sigaltstack,
        libc::SYS_kill,
        libc::SYS_tgkill,
        libc::SYS_wait4,
        libc::SYS_waitid,
        libc::SYS_getpid,
        libc::SYS_gettid,
        libc::SYS_getuid,
        libc::SYS_geteuid,
        libc::SYS_getgid,
        libc::SYS_getegid,
        libc::SYS_uname,
        libc::SYS_prlimit64,
        libc::SYS_restart_syscall,
        libc::SYS_exit,
        libc::SYS_exit_group,
    ];
    #[cfg(target_arch = "x86_64")]
    calls.extend([
        libc::SYS_poll,
        libc::SYS_epoll_wait,
        libc::SYS_epoll_create,
        libc::SYS_stat,
        libc::SYS_lstat,
        libc::SYS_access,
        libc::SYS_readlink,
        libc::SYS_unlink,
        libc::SYS_dup2,
        libc::SYS_pipe,
        libc::SYS_accept,
        libc::SYS_getrlimit,
        libc::SYS_arch_prctl,
    ]);
    calls
}

/// The ioctl requests allowed after setup: non-blocking and close-on-exec flags (the standard
/// library sets them with ioctl), a socket's queued bytes (TIOCOUTQ/TIOCINQ), and the terminal
/// query logging may make. Interface configuration (SIOCS*, TUNSET*) is setup only, apart from
/// [`TAP_ADOPTION_IOCTLS`].
#[allow(clippy::unnecessary_cast)] // the requests are c_ulong, 32 bits on some targets
const IOCTLS: [u64; 6] = [
    libc::FIONBIO as u64,
    libc::FIOCLEX as u64,
    libc::FIONCLEX as u64,
    libc::TIOCOUTQ as u64,
    libc::FIONREAD as u64,
    libc::TCGETS as u64,
];

/// What adopting a TAP a client passed takes (the vmnet daemon): checking it, setting its
/// header length and offloads. Only TUN descriptors take these requests.
#[allow(clippy::unnecessary_cast)]
const TAP_ADOPTION_IOCTLS: [u64; 4] = [
    libc::TUNGETIFF as u64,
    libc::TUNSETVNETHDRSZ as u64,
    libc::TUNGETVNETHDRSZ as u64,
    libc::TUNSETOFFLOAD as u64,
];

/// Whether the confined process takes TAPs its clients pass (see [`TAP_ADOPTION_IOCTLS`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PassedTaps {
    Refused,
    Adopted,
}

/// Installs the seccomp allow-list on every thread of the process (TSYNC). Call once setup is
/// complete: sockets bound, namespaces attached, DNS started, pid file written.
pub fn confine_syscalls(passed_taps: PassedTaps) -> Result<(), SandboxError> {
    let err = |e: &dyn std::fmt::Display| SandboxError::Seccomp(e.to_string());
    let arch = TargetArch::try_from(std::env::consts::ARCH).map_err(|e| err(&e))?;
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = allowed_syscalls()
        .into_iter()
        .map(|nr| (nr, Vec::new()))
        .collect();
    // open/openat: reading only. The flags are argument 2 of openat, 1 of open.
    let write_flags = (libc::O_CREAT | libc::O_WRONLY | libc::O_RDWR | libc::O_TRUNC) as u64;
    let read_only = |arg: u8| -> Result<Vec<SeccompRule>, SandboxError> {
        let cond = SeccompCondition::new(
            arg,
            SeccompCmpArgLen::Dword,
            SeccompCmpOp::MaskedEq(write_flags),
            0,
        )
        .map_err(|e| err(&e))?;
        Ok(vec![SeccompRule::new(vec![cond]).map_err(|e| err(&e))?])
    };
    rules.insert(libc::SYS_openat, read_only(2)?);
    // ioctl: only the requests the data plane makes after setup (the request is argument 1).
    let adoption: &[u64] = match passed_taps {
        PassedTaps::Adopted => &TAP_ADOPTION_IOCTLS,
        PassedTaps::Refused => &[],
    };
    let ioctls = IOCTLS
        .iter()
        .chain(adoption)
        .map(|&request| {
            let cond = SeccompCondition::new(1, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, request)
                .map_err(|e| err(&e))?;
            SeccompRule::new(vec![cond]).map_err(|e| err(&e))
        })
        .collect::<Result<Vec<_>, _>>()?;
    rules.insert(libc::SYS_ioctl, ioctls);
    #[cfg(target_arch = "x86_64")]
    rules.insert(libc::SYS_open, read_only(1)?);
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Errno(libc::EPERM as u32),
        SeccompAction::Allow,
        arch,
    )
    .map_err(|e| err(&e))?;
    let program: seccompiler::BpfProgram = filter.try_into().map_err(|e| err(&e))?;
    seccompiler::apply_filter_all_threads(&program).map_err(|e| err(&e))?;
    info!(
        syscalls = allowed_syscalls().len() + 1,
        "system calls confined (seccomp allow-list, all threads)"
    );
    Ok(())
}
