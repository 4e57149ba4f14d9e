//! Daemon control for socket_vmnet-style networks (shared/host/bridged) through the whole
//! stack: networks.yaml with root-owned paths, Lima's `mkdir -m 775 -p <varRun>`, Lima's start
//! command line (run directly, since the test is root; through sudo otherwise), the pid file in
//! varRun, logs in `_networks/<name>_socket_vmnet.{stdout,stderr}.log`, retries with back-off
//! when the daemon exits before writing its pid file, and `pkill -F <pidfile>` to stop it.
//!
//! The daemon is a stand-in script at `paths.socketVMNet` that fails twice (like socket_vmnet's
//! VMNET_FAILURE at boot) and then serves the socket with the real `limanet usernet`.

mod instance_support;

use instance_support::{alive, read_pid, Home, STUB};
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

/// A root-owned directory under /run (not world-writable, no symlinks: networks.yaml's path
/// rules), removed with everything in it on drop.
struct RunDir {
    dir: PathBuf,
}

impl RunDir {
    fn new() -> Self {
        let dir = PathBuf::from(format!("/run/lnet-vmnet-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("bin")).expect("create /run dir");
        for d in [dir.clone(), dir.join("bin")] {
            std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        }
        RunDir { dir }
    }
}

impl Drop for RunDir {
    fn drop(&mut self) {
        if let Some(pid) = read_pid(&self.dir.join("var/run/shared_socket_vmnet.pid")) {
            if alive(pid) && instance_support::cmdline(pid).contains("limanet") {
                instance_support::kill(pid, libc::SIGKILL);
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn socket_vmnet_daemon_is_started_with_retries_and_stopped_with_pkill() {
    // SAFETY: geteuid has no failure mode.
    if unsafe { libc::geteuid() } != 0 {
        panic!("this test needs root (root-owned daemon paths, as networks.yaml requires)");
    }
    let run = RunDir::new();
    let daemon = run.dir.join("bin/socket_vmnet");
    let var_run = run.dir.join("var/run");
    let script = format!(
        "#!/bin/sh\n\
         echo try >> {dir}/count\n\
         if [ $(wc -l < {dir}/count) -lt 3 ]; then echo 'vmnet_start_interface: VMNET_FAILURE' >&2; exit 1; fi\n\
         echo \"$PWD $*\" > {dir}/args\n\
         for a in \"$@\"; do case \"$a\" in --pidfile=*) pidfile=${{a#--pidfile=}};; esac; sock=$a; done\n\
         exec {limanet} usernet --subnet 192.168.105.0/24 --listen-qemu \"$sock\" --pidfile \"$pidfile\"\n",
        dir = run.dir.display(),
        limanet = env!("CARGO_BIN_EXE_limanet"),
    );
    std::fs::write(&daemon, script).expect("write daemon");
    std::fs::set_permissions(&daemon, std::fs::Permissions::from_mode(0o755)).expect("chmod");

    let h = Home::new("vmnet");
    std::fs::create_dir_all(h.dir.join("_config")).expect("_config");
    std::fs::write(
        h.dir.join("_config/networks.yaml"),
        format!(
            "paths:\n  socketVMNet: {}\n  varRun: {}\ngroup: root\nnetworks:\n  shared:\n    mode: shared\n    gateway: 192.168.105.1\n    dhcpEnd: 192.168.105.254\n    netmask: 255.255.255.0\n",
            daemon.display(),
            var_run.display()
        ),
    )
    .expect("networks.yaml");

    let mut args = vec!["start", "v1", "--network", "lima:shared", "--"];
    args.extend_from_slice(&STUB);
    let started = std::time::Instant::now();
    let out = h.ok(&args);
    assert!(out.contains("lima:shared"), "{out}");
    // Two early exits, back-off 1 s then 2 s, third attempt succeeds.
    assert!(started.elapsed() >= std::time::Duration::from_secs(3));
    let tries = std::fs::read_to_string(run.dir.join("count")).unwrap_or_default();
    assert_eq!(tries.lines().count(), 3);

    // Lima's command line, run in varRun.
    let pid_file = var_run.join("shared_socket_vmnet.pid");
    let sock = var_run.join("socket_vmnet.shared");
    let got = std::fs::read_to_string(run.dir.join("args")).unwrap_or_default();
    assert_eq!(
        got.trim(),
        format!(
            "{vr} --pidfile={pid} --socket-group=root --vmnet-mode=shared --vmnet-gateway=192.168.105.1 --vmnet-dhcp-end=192.168.105.254 --vmnet-mask=255.255.255.0 {sock}",
            vr = var_run.display(),
            pid = pid_file.display(),
            sock = sock.display()
        )
    );
    let mode = std::fs::metadata(&var_run)
        .expect("varRun")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o775, "varRun made by `mkdir -m 775 -p`");
    for stream in ["stdout", "stderr"] {
        assert!(h
            .dir
            .join(format!("_networks/shared_socket_vmnet.{stream}.log"))
            .exists());
    }
    let pid = read_pid(&pid_file).expect("daemon pid file");
    assert!(alive(pid));

    // QEMU's NIC is connected to the daemon's socket (the stand-in has no stream netdev).
    let argv: Vec<String> =
        serde_json::from_value(h.state("v1")["full_argv"].clone()).unwrap_or_default();
    assert!(
        argv.join(" ").contains("-netdev socket,id=net1,fd=4"),
        "{argv:?}"
    );
    let qemu = h.qemu_pid("v1");
    let link = std::fs::read_link(format!("/proc/{qemu}/fd/4")).expect("fd 4");
    assert!(link.to_string_lossy().starts_with("socket:"));

    // The last instance stops: `pkill -F <pidfile>` ends the daemon.
    h.ok(&["stop", "v1"]);
    assert!(!alive(pid), "socket_vmnet daemon still running");
    assert!(!pid_file.exists());
}
