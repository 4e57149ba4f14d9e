//! `limanet start/stop/list` with real processes: a stand-in QEMU (`sh -c 'exec sleep 600'`),
//! the real `limanet usernet` daemons (a shared user-v2 network as eth0, or the instance's own
//! eth0 network), a temporary `$LIMA_HOME` per test.

mod instance_support;

use instance_support::{alive, cmdline, eventually, kill, read_pid, Home, STUB};
use std::time::Duration;

/// The command line QEMU was started with (the stand-in `exec`s, so /proc shows `sleep`).
fn full_argv(h: &Home, name: &str) -> String {
    let v = h.state(name)["full_argv"].clone();
    let argv: Vec<String> = serde_json::from_value(v).unwrap_or_default();
    argv.join(" ")
}

fn start_args<'a>(name: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec!["start", name];
    v.extend_from_slice(extra);
    v.push("--");
    v.extend_from_slice(&STUB);
    v
}

#[test]
fn the_first_user_v2_network_is_eth0_and_instances_share_its_daemon() {
    let h = Home::new("share");
    let out = h.ok(&start_args("a", &["--network", "lima:user-v2"]));
    assert!(out.contains("instance `a` is running"), "{out}");

    // The network's daemon runs: the real `limanet usernet` in user-v2 mode.
    let pid_file = h.user_v2_pid_file();
    let daemon = read_pid(&pid_file).unwrap_or_else(|| panic!("no user-v2 pid file\n{}", h.logs()));
    assert!(alive(daemon));
    let cl = cmdline(daemon);
    assert!(
        cl.contains(" usernet ") && cl.contains("--mode user-v2"),
        "{cl}"
    );
    assert!(cl.contains("--subnet 192.168.104.0/24"), "{cl}");
    assert!(h.dir.join("_networks/user-v2/user-v2_qemu.sock").exists());

    // As in Lima, the first user-v2 network is eth0, with the eth0 MAC: one NIC, and no
    // network of the instance's own.
    let state = h.state("a");
    let nics = state["nics"].as_array().cloned().unwrap_or_default();
    assert_eq!(nics.len(), 1, "{state}");
    assert_eq!(nics[0]["interface"], "eth0");
    assert_eq!(nics[0]["kind"], "lima");
    assert_eq!(nics[0]["network"], "user-v2");
    let eth0_mac = nics[0]["mac"].as_str().unwrap_or_default().to_owned();
    assert!(eth0_mac.starts_with("52:55:55:"), "{state}");
    assert!(!h.dir.join("a/usernet.pid").exists());

    // QEMU got net0 on user-v2 through a socket limanet connected (Lima's fd_connect: fd 3),
    // and nothing else.
    let qemu = h.qemu_pid("a");
    let qcl = full_argv(&h, "a");
    assert_eq!(
        qcl,
        format!(
            "sh -c exec sleep 600 qemu-stub -netdev socket,id=net0,fd=3 \
             -device virtio-net-pci,netdev=net0,mac={eth0_mac}"
        )
    );
    let link = std::fs::read_link(format!("/proc/{qemu}/fd/3")).expect("fd in QEMU");
    assert!(link.to_string_lossy().starts_with("socket:"), "{link:?}");

    // A second instance on the same network: the daemon is not started again. `--dns` cannot
    // apply to a shared user-v2 eth0 and is refused.
    let err = h.fails(&start_args(
        "b",
        &["--network", "lima:user-v2", "--dns", "192.168.5.53"],
    ));
    assert!(
        err.contains("--dns needs the instance's own network on eth0"),
        "{err}"
    );
    h.ok(&start_args(
        "b",
        &["--network", "lima:user-v2", "--host", "db.test=10.1.2.3"],
    ));
    assert_eq!(read_pid(&pid_file), Some(daemon));

    // Without a user-v2 network, eth0 stays on the instance's own network: a default-mode
    // usernet with the static lease for the eth0 MAC, `--host`, `--dns` and the forwards.
    let ssh_port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
        .to_string();
    h.ok(&start_args(
        "c",
        &[
            "--host",
            "db.test=10.1.2.3",
            "--dns",
            "192.168.5.53",
            "--ssh-port",
            &ssh_port,
        ],
    ));
    let c_mac = h.state("c")["nics"][0]["mac"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let own = read_pid(&h.dir.join("c/usernet.pid")).expect("instance usernet pid");
    let own_cl = cmdline(own);
    assert!(
        own_cl.contains(&format!("--lease 192.168.5.15={c_mac}")),
        "{own_cl}"
    );
    assert!(own_cl.contains("--instance c"), "{own_cl}");
    assert!(
        own_cl.contains(&format!(
            "--host db.test=10.1.2.3 --dhcp-dns 192.168.5.53 --forward tcp:127.0.0.1:{ssh_port}:22"
        )),
        "{own_cl}"
    );

    let rows = h.list();
    assert_eq!(rows["a"]["state"], "Running");
    assert_eq!(rows["b"]["state"], "Running");
    assert_eq!(rows["b"]["networks"], serde_json::json!(["lima:user-v2"]));
    assert_eq!(rows["b"]["hosts"], serde_json::json!(["db.test=10.1.2.3"]));
    assert_ne!(
        rows["a"]["addresses"][0]["mac"],
        rows["b"]["addresses"][0]["mac"]
    );
    assert_eq!(rows["c"]["networks"], serde_json::json!(["usernet"]));
    assert_eq!(rows["c"]["addresses"][0]["ip"], "192.168.5.15");
    assert_eq!(rows["c"]["dns"], serde_json::json!(["192.168.5.53"]));
    h.ok(&["stop", "c"]);
    assert!(!alive(own), "instance usernet must stop with the instance");

    // A later user-v2 network is a further NIC, net<i+1> for its entry i, with its `-device`
    // once (Lima appends it twice).
    h.ok(&[
        "network",
        "create",
        "v2b",
        "--mode",
        "user-v2",
        "--gateway",
        "192.168.42.1/24",
    ]);
    h.ok(&start_args(
        "d",
        &["--network", "lima:v2b", "--network", "lima:user-v2"],
    ));
    let d = h.state("d");
    assert_eq!(d["nics"][0]["network"], "v2b");
    assert_eq!(d["nics"][1]["network"], "user-v2");
    assert_eq!(d["nics"][1]["interface"], "lima1");
    let dcl = full_argv(&h, "d");
    assert!(
        dcl.contains("-netdev socket,id=net0,fd=3 ")
            && dcl.contains("-netdev socket,id=net2,fd=4 "),
        "{dcl}"
    );
    assert_eq!(dcl.matches("netdev=net2,").count(), 1, "{dcl}");
    assert_eq!(read_pid(&pid_file), Some(daemon));
    let v2b_pid_file = h.dir.join("_networks/v2b/usernet_v2b.pid");
    let v2b = read_pid(&v2b_pid_file).expect("v2b daemon pid");
    h.ok(&["stop", "d"]);
    assert!(!alive(v2b), "v2b's daemon must stop with its last instance");

    // Stopping one keeps the daemon for the other.
    let out = h.ok(&["stop", "a"]);
    assert!(out.contains("instance `a` stopped"), "{out}");
    assert!(!alive(qemu));
    assert!(alive(daemon));
    assert_eq!(read_pid(&pid_file), Some(daemon));
    assert_eq!(h.list()["a"]["state"], "Stopped");

    // The last instance dies without `stop` (SIGKILL to QEMU): its supervisor notices and the
    // network's daemon stops.
    let qemu_b = h.qemu_pid("b");
    kill(qemu_b, libc::SIGKILL);
    assert!(
        eventually(Duration::from_secs(15), || !alive(daemon)
            && !pid_file.exists()),
        "user-v2 daemon still running after the last instance died\n{}",
        h.logs()
    );
    let rows = h.list();
    assert_eq!(rows["b"]["state"], "Stopped");
    let exit = rows["b"]["exit"].as_str().unwrap_or_default();
    assert!(exit.contains("SIGKILL"), "{exit}");
    assert!(!h.dir.join("_networks/user-v2/user-v2_qemu.sock").exists());
}

#[test]
fn killed_supervisor_and_qemu_are_noticed_by_list() {
    let h = Home::new("killall");
    h.ok(&start_args("k", &["--network", "lima:user-v2"]));
    // An instance on its own network (eth0) too.
    h.ok(&start_args("k0", &[]));
    let daemon = read_pid(&h.user_v2_pid_file()).expect("daemon pid");
    let own = read_pid(&h.dir.join("k0/usernet.pid")).expect("own usernet pid");
    let mut pids = Vec::new();
    for name in ["k", "k0"] {
        let (sup, qemu) = (h.supervisor_pid(name), h.qemu_pid(name));
        kill(sup, libc::SIGKILL);
        kill(qemu, libc::SIGKILL);
        pids.extend([sup, qemu]);
    }
    assert!(eventually(Duration::from_secs(5), || pids
        .iter()
        .all(|&p| !alive(p))));
    // Nobody is left to notice, until the next limanet command looks at the pids.
    assert!(alive(daemon));
    assert!(alive(own));
    let rows = h.list();
    assert_eq!(rows["k"]["state"], "Stopped");
    assert_eq!(rows["k0"]["state"], "Stopped");
    assert!(
        !alive(daemon),
        "list must reconcile the network away\n{}",
        h.logs()
    );
    assert!(!alive(own));
}

#[test]
fn stop_ends_qemu_whose_supervisor_was_killed() {
    let h = Home::new("orphan");
    h.ok(&start_args("o", &["--network", "lima:user-v2"]));
    let daemon = read_pid(&h.user_v2_pid_file()).expect("daemon pid");
    let (sup, qemu) = (h.supervisor_pid("o"), h.qemu_pid("o"));
    kill(sup, libc::SIGKILL);
    assert!(eventually(Duration::from_secs(5), || !alive(sup)));
    // QEMU lives on, so the instance still counts as running.
    assert_eq!(h.list()["o"]["state"], "Running");
    assert!(alive(daemon));
    h.ok(&["stop", "o"]);
    assert!(!alive(qemu));
    assert!(!alive(daemon));
    assert_eq!(h.list()["o"]["state"], "Stopped");
    // A second stop has nothing to do.
    let err = h.fails(&["stop", "o"]);
    assert!(err.contains("instance `o` is not running"), "{err}");
}

#[test]
fn an_instance_starts_only_once_and_restarts_after_stop() {
    let h = Home::new("once");
    h.ok(&start_args("x", &[]));
    let first = h.qemu_pid("x");
    let err = h.fails(&start_args("x", &[]));
    assert!(err.contains("instance `x` is already running"), "{err}");
    assert!(alive(first));
    h.ok(&["stop", "x"]);
    h.ok(&start_args("x", &[]));
    let second = h.qemu_pid("x");
    assert_ne!(first, second);
    assert!(alive(second));
    // The eth0 MAC is stable across restarts (derived from the instance directory).
    h.ok(&["stop", "x"]);
    let table = h.ok(&["list"]);
    let mut lines = table.lines();
    assert_eq!(
        lines
            .next()
            .map(|l| l.split_whitespace().collect::<Vec<_>>()),
        Some(vec!["NAME", "STATE", "NETWORKS", "ADDRESSES"])
    );
    let row = lines.next().unwrap_or_default();
    assert!(
        row.starts_with("x ")
            && row.contains("Stopped")
            && row.contains("eth0=192.168.5.15/52:55:55:"),
        "{row}"
    );
}

#[test]
fn foreground_returns_qemu_exit_code_and_cleans_up() {
    let h = Home::new("fg");
    let out = h.run(&[
        "start",
        "f",
        "--foreground",
        "--",
        "sh",
        "-c",
        "sleep 3; exit 3",
        "qemu-stub",
    ]);
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let state = h.state("f");
    assert_eq!(state["status"], "stopped");
    assert!(
        state["exit"]
            .as_str()
            .unwrap_or_default()
            .contains("exit status: 3"),
        "{state}"
    );
    let own = read_pid(&h.dir.join("f/usernet.pid"));
    assert!(own.is_none(), "instance usernet pid file left behind");
}

#[test]
fn socket_networks_are_connected_by_limanet_and_inherited() {
    use std::io::Read;
    use std::os::unix::net::UnixListener;
    let h = Home::new("sock");
    let path = h.dir.join("peer.sock");
    let listener = UnixListener::bind(&path).expect("bind");
    let socket_flag = format!("socket:{}", path.display());
    // The stand-in writes a line into the NIC's fd (4: fd 3 is eth0).
    let out = h.ok(&[
        "start",
        "s",
        "--network",
        &socket_flag,
        "--",
        "sh",
        "-c",
        "echo hello-from-qemu >&4; exec sleep 600",
        "qemu-stub",
    ]);
    assert!(out.contains(&socket_flag), "{out}");
    let (mut conn, _) = listener.accept().expect("limanet connects for QEMU");
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut buf = [0u8; 16];
    conn.read_exact(&mut buf).expect("read");
    assert_eq!(&buf, b"hello-from-qemu\n");
    let qcl = full_argv(&h, "s");
    assert!(qcl.contains("-netdev socket,id=net1,fd=4"), "{qcl}");
    h.ok(&["stop", "s"]);
    // QEMU's end closes with it.
    let mut rest = Vec::new();
    assert_eq!(conn.read_to_end(&mut rest).expect("eof"), 0);
}

#[test]
fn invalid_names_and_entries_are_rejected_with_limas_messages() {
    let h = Home::new("invalid");
    for bad in ["../etc", "foo/bar", "x-", "a..b", &"a".repeat(77)] {
        let err = h.fails(&start_args(bad, &[]));
        assert!(err.contains("invalid instance name"), "{bad}: {err}");
        assert!(err.contains("identifier"), "{bad}: {err}");
    }
    // Lima's ValidateInstName: limactl would take these for template files.
    for bad in ["vm.yml", "vm.YAML"] {
        let err = h.fails(&start_args(bad, &[]));
        assert!(
            err.contains(&format!(
                "instance name \"{bad}\" must not end with .yml or .yaml suffix"
            )),
            "{bad}: {err}"
        );
        assert!(!h.dir.join(bad).exists(), "{bad}");
    }
    let err = h.fails(&["stop", "vm.yml"]);
    assert!(
        err.contains("must not end with .yml or .yaml suffix"),
        "{err}"
    );
    let err = h.fails(&start_args("n", &["--network", "shared"]));
    assert!(
        err.contains("network name must be `vzNAT`, `lima:*` or `socket:*`, got `shared`"),
        "{err}"
    );
    let err = h.fails(&start_args("n", &["--network", "lima:nope"]));
    assert!(err.contains("network `nope` is not defined"), "{err}");
    let err = h.fails(&start_args("n", &["--network", "socket:/etc/hostname"]));
    assert!(
        err.contains("field `networks[0].socket` `/etc/hostname` points to a non-socket file"),
        "{err}"
    );
    let err = h.fails(&start_args("n", &["--dns", "not-an-ip"]));
    assert!(err.contains("not-an-ip"), "{err}");
    let err = h.fails(&start_args("n", &["--forward", "tcp:99999:22"]));
    assert!(err.contains("invalid --forward"), "{err}");
    let err = h.fails(&start_args("n", &["--host", "novalue"]));
    assert!(err.contains("invalid --host `novalue`"), "{err}");
    let err = h.fails(&["stop", "ghost"]);
    assert!(err.contains("instance `ghost` does not exist"), "{err}");
    // Nothing was started for any of these.
    assert!(
        !h.dir.join("n").exists() || h.list().is_empty() || h.list()["n"]["state"] == "Stopped"
    );
}

#[test]
fn vmnet_networks_need_the_daemon_installed() {
    let h = Home::new("vmnet");
    let err = h.fails(&start_args(
        "v",
        &["--network", "lima:shared", "--network", "lima:user-v2"],
    ));
    assert!(
        err.contains("daemon `socket_vmnet` needs to be installed"),
        "{err}"
    );
    // The failed start leaves nothing running: not QEMU, not the user-v2 daemon started for it.
    assert!(!h.user_v2_pid_file().exists(), "{}", h.logs());
    assert!(read_pid(&h.dir.join("v/usernet.pid")).is_none());
    assert_eq!(h.list()["v"]["state"], "Stopped");
}

#[test]
fn qemu_that_fails_at_once_is_reported_with_its_stderr() {
    let h = Home::new("qfail");
    let err = h.fails(&[
        "start",
        "q",
        "--network",
        "lima:user-v2",
        "--",
        "sh",
        "-c",
        "echo 'qemu-system-x86_64: -bogus: invalid option' >&2; exit 1",
        "qemu-stub",
    ]);
    assert!(
        err.contains("QEMU exited right after start: exit status: 1 (stderr: qemu-system-x86_64: -bogus: invalid option)"),
        "{err}"
    );
    let err = h.fails(&["start", "q", "--", "/nonexistent/qemu-system-x86_64"]);
    assert!(
        err.contains("failed to run QEMU `/nonexistent/qemu-system-x86_64`"),
        "{err}"
    );
    // Neither attempt leaves a daemon behind.
    assert!(!h.user_v2_pid_file().exists(), "{}", h.logs());
    assert!(read_pid(&h.dir.join("q/usernet.pid")).is_none());
    assert_eq!(h.list()["q"]["state"], "Stopped");
}
