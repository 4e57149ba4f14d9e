//! The per-instance supervisor: one process per running instance that sets up its networks,
//! runs QEMU as its child, notices when QEMU exits (however it dies), and then tears down the
//! instance's own network and reconciles the shared ones.
//!
//! `limanet start` (background mode) re-executes itself as `limanet start --supervisor ...` in a
//! new session (`setsid`), with stdout as a pipe back to the starting process and stderr in
//! `supervisor.log`. The supervisor prints `ready` on that pipe once QEMU runs (or the error that
//! stopped it) and then lets go of the pipe, so `limanet start` can print a summary and exit.
//! `limanet start --foreground` runs the same code in the calling process, with QEMU attached to
//! the terminal.
//!
//! The supervisor holds an `flock` on `limanet.lock` for as long as it runs, so an instance can
//! only be started once. SIGTERM, SIGINT or SIGHUP make it stop QEMU (SIGTERM, then SIGKILL after
//! the stop timeout) and clean up. If the supervisor itself is killed with SIGKILL, nothing can
//! clean up right away; `limanet list`, `start` and `stop` then notice from the pids that the
//! instance is gone (or that only QEMU is left, which `limanet stop` ends) and reconcile.

use crate::daemon::{self, DaemonSpec, StopMethod};
use crate::process::{pid_alive, read_pid_file, signal, wait_until, Lock, ProcRef};
use crate::qemu::{self, ExtraFds, Netdev, FIRST_FD};
use crate::reconcile::reconcile;
use crate::register::Registration;
use crate::store::{now_secs, Attachment, InstancePaths, InstanceState, Nic, Status};
use anyhow::{bail, Context};
use limanet_config::networks::NetworksConfig;
use limanet_config::LimaHome;
use std::io::Write;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

/// How long QEMU gets to exit after SIGTERM before it is killed.
pub const QEMU_STOP_TIMEOUT: Duration = Duration::from_secs(30);
/// A QEMU that exits within this time after its start is reported as a failed start.
const QEMU_GRACE: Duration = Duration::from_millis(700);

/// Everything the supervisor needs, validated by the caller.
pub struct Plan {
    /// LIMA_HOME.
    pub home: LimaHome,
    /// networks.yaml.
    pub cfg: NetworksConfig,
    /// The instance's files.
    pub paths: InstancePaths,
    /// Instance name.
    pub name: String,
    /// NICs, eth0 first.
    pub nics: Vec<Nic>,
    /// The user's QEMU command line.
    pub qemu_argv: Vec<String>,
    /// `--host NAME=VALUE` for the instance's usernet.
    pub hosts: Vec<String>,
    /// `--dns IP` (announced by DHCP instead of the embedded DNS).
    pub dns: Vec<String>,
    /// Port forwards (`--forward` specs, `--ssh-port` included).
    pub forwards: Vec<String>,
    /// Stay attached to the terminal.
    pub foreground: bool,
}

/// Where the supervisor reports readiness.
#[derive(Clone, Copy, Debug)]
pub enum Reporter {
    /// Background: the pipe to `limanet start` (our stdout).
    Pipe,
    /// Foreground: print to stderr.
    Terminal,
}

impl Reporter {
    fn ready(&self, state: &InstanceState) {
        match self {
            Reporter::Pipe => {
                let mut out = std::io::stdout().lock();
                let _ = out.write_all(b"ready\n");
                let _ = out.flush();
                drop(out);
                release_stdout();
            }
            Reporter::Terminal => eprint!("{}", crate::summary(state)),
        }
    }

    /// Sends an error to `limanet start` (background); the caller also returns it.
    pub fn fail(&self, err: &anyhow::Error) {
        if let Reporter::Pipe = self {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{err:#}");
            let _ = out.flush();
        }
    }
}

/// Points stdout at /dev/null so the starting process sees end-of-file.
fn release_stdout() {
    if let Ok(null) = std::fs::File::options().write(true).open("/dev/null") {
        // SAFETY: dup2 onto fd 1; `null` stays valid for the call.
        unsafe { libc::dup2(null.as_raw_fd(), 1) };
    }
}

static STOP_REQUESTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_stop_signal(_: libc::c_int) {
    STOP_REQUESTED.store(true, Ordering::SeqCst);
}

fn install_signal_handlers() {
    for sig in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe. Handlers
        // are reset to the default in exec'd children, so QEMU is unaffected.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_stop_signal as *const () as usize;
            // Restart interrupted system calls: the flag is polled, nothing needs the EINTR.
            action.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(sig, &action, std::ptr::null_mut());
        }
    }
}

/// Runs an instance to its end. Returns QEMU's exit code (0 when stopped on request).
pub fn supervise(plan: Plan, reporter: &Reporter) -> anyhow::Result<u8> {
    install_signal_handlers();
    std::fs::create_dir_all(&plan.paths.dir)
        .with_context(|| format!("failed to create `{}`", plan.paths.dir.display()))?;
    let Some(_lock) = Lock::try_acquire(&plan.paths.lock())? else {
        let owner = InstanceState::load(&plan.paths.dir)
            .ok()
            .flatten()
            .and_then(|s| s.supervisor)
            .map(|s| format!(" (supervisor pid {})", s.pid))
            .unwrap_or_default();
        bail!("instance `{}` is already running{owner}", plan.name);
    };
    let mut state = InstanceState {
        name: plan.name.clone(),
        dir: plan.paths.dir.clone(),
        status: Status::Starting,
        qemu_argv: plan.qemu_argv.clone(),
        full_argv: Vec::new(),
        nics: plan.nics.clone(),
        hosts: plan.hosts.clone(),
        dns: plan.dns.clone(),
        forwards: plan.forwards.clone(),
        supervisor: Some(ProcRef::of(std::process::id())),
        qemu: None,
        foreground: plan.foreground,
        exit: None,
        started_at: now_secs(),
    };
    state.save()?;
    let outcome = run(&plan, &mut state, reporter);
    let exit = match &outcome {
        Ok((desc, _)) => desc.clone(),
        Err(e) => format!("failed: {e:#}"),
    };
    teardown(&plan.home, &plan.cfg, &plan.paths, &mut state, exit);
    outcome.map(|(_, code)| code)
}

fn run(
    plan: &Plan,
    state: &mut InstanceState,
    reporter: &Reporter,
) -> anyhow::Result<(String, u8)> {
    reconcile(&plan.home, &plan.cfg, Some(&plan.name))?;
    start_own_usernet(plan)?;

    let (program, user_args) = plan
        .qemu_argv
        .split_first()
        .context("empty QEMU command line")?;
    let caps = qemu::probe(program);
    let mut args: Vec<String> = user_args.to_vec();
    let mut fds = ExtraFds::default();
    let mut next_fd = FIRST_FD;
    if plan.nics.iter().any(|n| {
        matches!(
            n.attachment,
            Attachment::Usernet {
                vhost_user: true,
                ..
            }
        )
    }) {
        args.extend(qemu::vhost_user_memory_args(user_args)?);
    }
    for nic in &plan.nics {
        let netdev = netdev_for(nic, caps, user_args);
        if let Netdev::FdConnect { path } = &netdev {
            fds.connect(path)
                .with_context(|| format!("cannot attach {} to {}", nic.interface, describe(nic)))?;
        }
        args.extend(qemu::nic_args(&nic.netdev, &netdev, &nic.mac, &mut next_fd));
    }
    state.full_argv = std::iter::once(program.clone())
        .chain(args.iter().cloned())
        .collect();
    state.save()?;

    if STOP_REQUESTED.load(Ordering::SeqCst) {
        bail!("stop requested before QEMU started");
    }
    let mut cmd = Command::new(program);
    cmd.args(&args);
    if plan.foreground {
        cmd.stdin(Stdio::inherit())
            .stdout(Stdio::inherit())
            .stderr(Stdio::inherit());
    } else {
        cmd.stdin(Stdio::null())
            .stdout(create_log(&plan.paths.qemu_stdout())?)
            .stderr(create_log(&plan.paths.qemu_stderr())?);
    }
    fds.pass_to(&mut cmd)?;
    tracing::info!("starting QEMU: {:?}", state.full_argv);
    let child = cmd
        .spawn()
        .with_context(|| format!("failed to run QEMU `{program}`"))?;
    // limanet's copies of the sockets: QEMU holds them now, and the networks must see the
    // connection close when QEMU goes.
    drop(fds);
    let qemu_pid = child.id();
    state.qemu = Some(ProcRef::of(qemu_pid));
    state.status = Status::Running;
    state.save()?;
    std::fs::write(plan.paths.qemu_pid(), format!("{qemu_pid}\n"))
        .with_context(|| format!("failed to write `{}`", plan.paths.qemu_pid().display()))?;

    let started = Instant::now();
    loop {
        if let Some(status) = reap(qemu_pid)? {
            let hint = if plan.foreground {
                String::new()
            } else {
                stderr_tail(&plan.paths.qemu_stderr())
            };
            bail!("QEMU exited right after start: {status}{hint}");
        }
        if started.elapsed() >= QEMU_GRACE {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    reporter.ready(state);

    // Lima's ConfigureDriver runs alongside the VM; unlike Lima, a failure is logged and the
    // instance keeps running (its network works, only names and forwards are missing).
    let worker = match Registration::for_instance(&plan.home, &plan.cfg, state) {
        Ok(reg) => reg.map(RegistrationWorker::spawn),
        Err(e) => {
            tracing::error!("cannot register instance `{}`: {e:#}", plan.name);
            None
        }
    };
    let outcome = watch(plan, state, qemu_pid, worker.as_ref());
    if let Some(w) = worker {
        w.finish();
    }
    outcome
}

/// Registers an instance with its user-v2 network in a thread of its own, so the supervisor
/// keeps watching QEMU while the guest boots.
struct RegistrationWorker {
    cancel: Arc<AtomicBool>,
    result: mpsc::Receiver<anyhow::Result<Ipv4Addr>>,
    handle: std::thread::JoinHandle<()>,
}

impl RegistrationWorker {
    fn spawn(reg: Registration) -> Self {
        let cancel = Arc::new(AtomicBool::new(false));
        let (tx, result) = mpsc::channel();
        let flag = Arc::clone(&cancel);
        let handle = std::thread::spawn(move || {
            let cancelled = || flag.load(Ordering::SeqCst) || STOP_REQUESTED.load(Ordering::SeqCst);
            let _ = tx.send(reg.register(&cancelled));
        });
        Self {
            cancel,
            result,
            handle,
        }
    }

    /// The outcome, once, when it is there.
    fn poll(&self) -> Option<anyhow::Result<Ipv4Addr>> {
        self.result.try_recv().ok()
    }

    /// Stops waiting for a lease and waits for the thread (at most one request timeout).
    fn finish(self) {
        self.cancel.store(true, Ordering::SeqCst);
        let _ = self.handle.join();
    }
}

/// Watches QEMU until it exits, forwarding stop requests to it and recording the address
/// the registration finds.
fn watch(
    plan: &Plan,
    state: &mut InstanceState,
    qemu_pid: u32,
    worker: Option<&RegistrationWorker>,
) -> anyhow::Result<(String, u8)> {
    let mut stop_sent: Option<Instant> = None;
    let own_usernet = read_pid_file(&plan.paths.usernet_pid())?.map(ProcRef::of);
    let mut usernet_lost = false;
    loop {
        // eth0's daemon should outlive QEMU; say so once if it does not (QEMU 7.2's stream
        // netdev cannot reconnect, so the guest's eth0 is dead from then on).
        if !usernet_lost && own_usernet.is_some_and(|u| !u.alive()) {
            usernet_lost = true;
            tracing::error!(
                "the instance's usernet daemon exited while QEMU runs; see {}",
                plan.paths.usernet_stderr().display()
            );
        }
        match worker.and_then(RegistrationWorker::poll) {
            Some(Ok(ip)) => {
                if let Some(eth0) = state.nics.first_mut() {
                    eth0.address = Some(ip.to_string());
                }
                state.save()?;
            }
            // Cancelled by a stop request: nothing went wrong.
            Some(Err(e)) if STOP_REQUESTED.load(Ordering::SeqCst) => {
                tracing::debug!("registration ended by the stop request: {e:#}");
            }
            Some(Err(e)) => tracing::error!(
                "registering instance `{}` with its user-v2 network failed: {e:#}",
                plan.name
            ),
            None => {}
        }
        if let Some(status) = reap(qemu_pid)? {
            tracing::info!("QEMU exited: {status}");
            return Ok(match stop_sent {
                Some(_) => (format!("stopped (QEMU {status})"), 0),
                None => {
                    let code = status.code().map_or(1, |c| u8::try_from(c).unwrap_or(1));
                    (format!("QEMU exited: {status}"), code)
                }
            });
        }
        if STOP_REQUESTED.load(Ordering::SeqCst) {
            match stop_sent {
                None => {
                    tracing::info!("stop requested; sending SIGTERM to QEMU (pid {qemu_pid})");
                    signal(qemu_pid, libc::SIGTERM)?;
                    stop_sent = Some(Instant::now());
                }
                Some(t) if t.elapsed() >= QEMU_STOP_TIMEOUT => {
                    tracing::warn!("QEMU did not exit within {QEMU_STOP_TIMEOUT:?}; killing it");
                    signal(qemu_pid, libc::SIGKILL)?;
                }
                Some(_) => {}
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Reaps exited children; returns QEMU's status once it has exited. Other children (network
/// daemons this process started and another one stopped) are reaped so no zombies linger.
fn reap(qemu_pid: u32) -> anyhow::Result<Option<ExitStatus>> {
    loop {
        let mut status: libc::c_int = 0;
        // SAFETY: non-blocking waitpid for any child of this process.
        let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
        if pid <= 0 {
            // 0: children left, none exited; -1: no children (QEMU already reaped is a bug).
            if pid < 0 && !pid_alive(qemu_pid) {
                bail!("lost track of QEMU (pid {qemu_pid})");
            }
            return Ok(None);
        }
        if u32::try_from(pid).ok() == Some(qemu_pid) {
            return Ok(Some(ExitStatus::from_raw(status)));
        }
    }
}

fn netdev_for(nic: &Nic, caps: qemu::Caps, user_args: &[String]) -> Netdev {
    match &nic.attachment {
        Attachment::Usernet {
            socket,
            vhost_user: true,
        } => Netdev::VhostUser {
            path: socket.clone(),
            // Only TCG crashes on it; KVM guests keep MSI-X.
            no_msix: !qemu::uses_kvm(user_args),
        },
        // Lima attaches eth0 through QEMU's own stream client; a QEMU without `-netdev
        // stream` (or a wrapper that does not answer the probe) gets the connected fd.
        Attachment::Usernet { socket, .. } if caps.stream => Netdev::Stream {
            path: socket.clone(),
            reconnect: None,
        },
        Attachment::Usernet { socket, .. } => Netdev::FdConnect {
            path: socket.clone(),
        },
        // Lima: user-v2 networks always through fd_connect.
        Attachment::Lima { mode, socket, .. } if mode == "user-v2" => Netdev::FdConnect {
            path: socket.clone(),
        },
        // Lima: socket_vmnet networks through `-netdev stream` (with reconnect) when available.
        Attachment::Lima { socket, .. } if caps.stream => Netdev::Stream {
            path: socket.clone(),
            reconnect: qemu::reconnect_option(caps.version),
        },
        Attachment::Lima { socket, .. } | Attachment::Socket { socket } => Netdev::FdConnect {
            path: socket.clone(),
        },
    }
}

/// A NIC's network in words, for messages and `limanet list`.
pub fn describe(nic: &Nic) -> String {
    match &nic.attachment {
        Attachment::Usernet {
            vhost_user: true, ..
        } => "usernet (vhost-user)".to_owned(),
        Attachment::Usernet { .. } => "usernet".to_owned(),
        Attachment::Lima { network, .. } => format!("lima:{network}"),
        Attachment::Socket { socket } => format!("socket:{}", socket.display()),
    }
}

/// Starts the instance's own user-mode network when eth0 is on it. A leftover from a run whose
/// supervisor was killed is stopped first: its leases and hosts may differ.
fn start_own_usernet(plan: &Plan) -> anyhow::Result<()> {
    let paths = &plan.paths;
    stop_own_usernet(paths);
    let eth0 = plan.nics.first().context("no eth0")?;
    let Attachment::Usernet { socket, vhost_user } = &eth0.attachment else {
        // eth0 is on a user-v2 network (Lima's FirstUsernetIndex): no network of its own.
        return Ok(());
    };
    let exe = std::env::current_exe().context("cannot find the limanet executable")?;
    let mut argv = vec![
        exe.display().to_string(),
        "usernet".into(),
        if *vhost_user {
            "--listen-vhost-user"
        } else {
            "--listen-qemu"
        }
        .into(),
        socket.display().to_string(),
        "--lease".into(),
        format!("{}={}", crate::ETH0_ADDRESS, eth0.mac),
        "--instance".into(),
        plan.name.clone(),
        "--pidfile".into(),
        paths.usernet_pid().display().to_string(),
    ];
    for h in &plan.hosts {
        argv.push("--host".into());
        argv.push(h.clone());
    }
    for d in &plan.dns {
        argv.push("--dhcp-dns".into());
        argv.push(d.clone());
    }
    for f in &plan.forwards {
        argv.push("--forward".into());
        argv.push(f.clone());
    }
    let mut spec = DaemonSpec::new(
        format!("usernet daemon for instance `{}`", plan.name),
        argv,
        paths.usernet_pid(),
    );
    spec.stdout_log = paths.usernet_stdout();
    spec.stderr_log = paths.usernet_stderr();
    spec.attempts = 3;
    daemon::start(&spec)?;
    Ok(())
}

/// Stops the instance's own usernet if it runs (SIGTERM, SIGKILL after 5 s).
pub fn stop_own_usernet(paths: &InstancePaths) {
    let label = "instance usernet daemon";
    if let Err(e) = daemon::stop(
        label,
        &paths.usernet_pid(),
        &StopMethod::Signal(libc::SIGTERM),
        Duration::from_secs(5),
    ) {
        tracing::warn!("failed to stop {label}: {e:#}");
    }
}

/// Records the instance as stopped, unexposes its forwards on a user-v2 eth0, stops its own
/// usernet and reconciles the shared networks.
/// Every step runs even if an earlier one fails; failures are logged.
pub fn teardown(
    home: &LimaHome,
    cfg: &NetworksConfig,
    paths: &InstancePaths,
    state: &mut InstanceState,
    exit: String,
) {
    match Registration::for_instance(home, cfg, state) {
        Ok(Some(reg)) => reg.unregister(),
        Ok(None) => {}
        Err(e) => tracing::warn!("cannot unregister instance `{}`: {e:#}", state.name),
    }
    stop_own_usernet(paths);
    let _ = std::fs::remove_file(paths.qemu_pid());
    state.status = Status::Stopped;
    state.exit = Some(exit);
    if let Err(e) = state.save() {
        tracing::error!(
            "failed to record instance `{}` as stopped: {e:#}",
            state.name
        );
    }
    if let Err(e) = reconcile(home, cfg, None) {
        tracing::error!("reconcile after instance `{}` stopped: {e:#}", state.name);
    }
}

/// Ends a QEMU whose supervisor is gone: SIGTERM, then SIGKILL after `timeout`.
pub fn terminate_orphan(qemu: ProcRef, timeout: Duration) -> anyhow::Result<()> {
    signal(qemu.pid, libc::SIGTERM)?;
    if !wait_until(timeout, Duration::from_millis(100), || !qemu.alive()) {
        signal(qemu.pid, libc::SIGKILL)?;
        wait_until(Duration::from_secs(5), Duration::from_millis(50), || {
            !qemu.alive()
        });
    }
    Ok(())
}

fn create_log(path: &std::path::Path) -> anyhow::Result<std::fs::File> {
    std::fs::File::create(path).with_context(|| format!("failed to create `{}`", path.display()))
}

/// ` (stderr: <last lines>)`, or nothing when the log is empty.
pub fn stderr_tail(path: &std::path::Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.trim().lines().collect();
    if lines.is_empty() {
        return String::new();
    }
    format!(
        " (stderr: {})",
        lines[lines.len().saturating_sub(10)..].join("\n")
    )
}
