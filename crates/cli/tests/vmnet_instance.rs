//! Lima's shared network end to end with a real QEMU guest (busybox, TCG): `limanet
//! install-vmnet` puts the binary where networks.yaml's `paths.socketVMNet` points (root-owned,
//! 0755, no symlink), `limanet start vm1 --network lima:shared` starts it as `socket_vmnet` with
//! Lima's command line, the guest gets 192.168.105.x on eth1 by DHCP and reaches the host at the
//! gateway, and `limanet stop` ends the daemon, which leaves nothing behind. Everything runs in
//! a testkit `TestHost`'s private "host" namespace.

mod instance_support;

use instance_support::{alive, eventually, read_pid, Home};
use limanet_testkit::servers::HttpServer;
use limanet_testkit::{QemuGuest, QemuOptions, TestHost};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

/// A root-owned directory under /run (networks.yaml's path rules), removed on drop.
struct RunDir(PathBuf);

impl RunDir {
    fn new() -> Self {
        let dir = PathBuf::from(format!("/run/lnet-vmnetq-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create /run dir");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        RunDir(dir)
    }
}

impl Drop for RunDir {
    fn drop(&mut self) {
        if let Some(pid) = read_pid(&self.0.join("var/run/shared_socket_vmnet.pid")) {
            if alive(pid) {
                instance_support::kill(pid, libc::SIGTERM);
            }
        }
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn qemu_guest_on_the_shared_network_through_limanet_start() {
    // SAFETY: geteuid has no failure mode.
    assert_eq!(unsafe { libc::geteuid() }, 0, "this test needs root");
    let run = RunDir::new();
    let bin = run.0.join("bin");
    let daemon = bin.join("socket_vmnet");
    let th = TestHost::new().expect("test host");
    th.host
        .set_etc("resolv.conf", "nameserver 127.0.0.53\n")
        .expect("resolv.conf");
    let http = HttpServer::start(&th.host, "0.0.0.0:0".parse().expect("addr"), None).expect("http");
    let port = http.addr().port();

    let h = Home::new("vmnetq");
    std::fs::create_dir_all(h.dir.join("_config")).expect("_config");
    std::fs::write(
        h.dir.join("_config/networks.yaml"),
        format!(
            "paths:\n  socketVMNet: {}\n  varRun: {}\ngroup: root\nnetworks:\n  shared:\n    mode: shared\n    gateway: 192.168.105.1\n    dhcpEnd: 192.168.105.254\n    netmask: 255.255.255.0\n",
            daemon.display(),
            run.0.join("var/run").display()
        ),
    )
    .expect("networks.yaml");
    let choose_args = ["choose", "--connect-via", "ip", "--from", "host"];
    let choose = h.ok(&choose_args);
    assert!(choose.contains("not installed"), "{choose}");
    let out = Command::new(env!("CARGO_BIN_EXE_limanet"))
        .args(["install-vmnet", "--prefix"])
        .arg(&bin)
        .output()
        .expect("install-vmnet");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta = std::fs::symlink_metadata(&daemon).expect("installed daemon");
    assert!(meta.file_type().is_file());
    assert_eq!((meta.uid(), meta.mode() & 0o777), (0, 0o755));

    // `limanet network list` and `choose` know the daemon is installed.
    let list = h.ok(&["network", "list"]);
    assert!(!list.contains("not installed"), "{list}");
    let choose = h.ok(&choose_args);
    assert!(!choose.contains("not installed"), "{choose}");

    let script = format!(
        "udhcpc -i eth1 -s /udhcpc.script -q -n -t 10 -T 1 || exit 12\n\
         wget -q -O /tmp/data http://192.168.105.1:{port}/bytes/5000?seed=3 || exit 13\n\
         echo LIMANET-VMNET-BYTES=$(wc -c < /tmp/data)\n\
         sleep 300\n"
    );
    let guest = QemuGuest::command(&QemuOptions {
        script,
        timeout: Duration::from_secs(400),
        ..Default::default()
    })
    .expect("guest command");
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            th.host.name(),
            env!("CARGO_BIN_EXE_limanet"),
        ])
        .args(["start", "vm1", "--network", "lima:shared", "--"])
        .args(&guest.argv)
        .env("LIMA_HOME", &h.dir)
        .env("LIMANET_LOG", "info")
        .output()
        .expect("limanet start");
    assert!(
        out.status.success(),
        "limanet start failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        h.logs()
    );
    let pid_file = run.0.join("var/run/shared_socket_vmnet.pid");
    let pid = read_pid(&pid_file).expect("daemon pid file");
    assert!(alive(pid));
    let names =
        limanet_vmnet::backend::Names::for_socket(&run.0.join("var/run/socket_vmnet.shared"));
    assert!(th.host.run("ip", &["link", "show", &names.bridge]).is_ok());

    let console_path = h.dir.join("vm1/qemu.stdout.log");
    let done = eventually(Duration::from_secs(240), || {
        std::fs::read_to_string(&console_path)
            .unwrap_or_default()
            .contains("LIMANET-VMNET-BYTES=")
    });
    let console = std::fs::read_to_string(&console_path).unwrap_or_default();
    let daemon_log =
        std::fs::read_to_string(h.dir.join("_networks/shared_socket_vmnet.stderr.log"))
            .unwrap_or_default();
    assert!(
        done,
        "guest did not finish\n{console}\n{daemon_log}\n{}",
        h.logs()
    );
    assert!(console.contains("LIMANET-VMNET-BYTES=5000"), "{console}");
    assert!(
        console.contains("LIMANET-LEASE ip=192.168.105.")
            && console.contains("router=192.168.105.1"),
        "{console}"
    );

    // The last instance stops: the daemon goes, and with it its bridge, NAT table and socket.
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            th.host.name(),
            env!("CARGO_BIN_EXE_limanet"),
        ])
        .args(["stop", "vm1"])
        .env("LIMA_HOME", &h.dir)
        .output()
        .expect("limanet stop");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        eventually(Duration::from_secs(10), || !alive(pid)),
        "socket_vmnet daemon still running"
    );
    assert!(!pid_file.exists());
    assert!(th.host.run("ip", &["link", "show", &names.bridge]).is_err());
    assert!(th
        .host
        .run("nft", &["list", "table", "ip", &names.table])
        .is_err());
    assert!(!run.0.join("var/run/socket_vmnet.shared").exists());
}
