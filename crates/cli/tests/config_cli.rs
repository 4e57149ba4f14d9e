//! `limanet sudoers`, `limanet network list|create|delete` and `limanet choose`, run as real
//! processes against a temporary `$LIMA_HOME`.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

/// A temporary `$LIMA_HOME` plus, for the sudoers tests, a root-owned 0755 directory under
/// /run (its ancestors pass the path-security rules, unlike /tmp). Both are removed on drop.
struct Env {
    home: PathBuf,
    secure: PathBuf,
}

impl Env {
    fn new() -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let unique = format!(
            "limanet-cli-config-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        let secure = Path::new("/run").join(&unique);
        std::fs::create_dir(&secure).expect("mkdir under /run");
        std::fs::set_permissions(&secure, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let home = std::env::temp_dir().join(unique);
        std::fs::create_dir(&home).expect("mkdir LIMA_HOME");
        Env { home, secure }
    }

    fn networks_yaml(&self) -> PathBuf {
        self.home.join("_config/networks.yaml")
    }

    fn write_config(&self, text: &str) {
        std::fs::create_dir_all(self.home.join("_config")).expect("mkdir");
        std::fs::write(self.networks_yaml(), text).expect("write");
    }

    /// A fake daemon executable at `<secure>/libexec/socket_vmnet`.
    fn daemon(&self) -> PathBuf {
        let dir = self.secure.join("libexec");
        std::fs::create_dir_all(&dir).expect("mkdir");
        let exe = dir.join("socket_vmnet");
        std::fs::write(&exe, "#!/bin/sh\nexit 0\n").expect("write");
        std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        exe
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_limanet"));
        c.args(args)
            .env("LIMA_HOME", &self.home)
            .env_remove("LIMANET_LOG")
            .stdin(Stdio::null());
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().expect("run limanet")
    }

    fn run_with_stdin(&self, args: &[&str], stdin: &str) -> Output {
        let mut child = self
            .cmd(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn limanet");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(stdin.as_bytes())
            .expect("write stdin");
        child.wait_with_output().expect("wait")
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.secure);
        let _ = std::fs::remove_dir_all(&self.home);
    }
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn ok(o: &Output) -> String {
    assert!(
        o.status.success(),
        "limanet failed: {:?}\nstdout: {}\nstderr: {}",
        o.status,
        stdout(o),
        stderr(o)
    );
    stdout(o)
}

fn fails(o: &Output) -> String {
    assert_eq!(
        o.status.code(),
        Some(1),
        "expected exit 1\nstdout: {}\nstderr: {}",
        stdout(o),
        stderr(o)
    );
    stderr(o)
}

mod sudoers {
    use super::*;

    fn setup(env: &Env, sudoers: &Path) -> (String, String) {
        let exe = env.daemon();
        let var_run = env.secure.join("run/lima");
        env.write_config(&format!(
            "paths:\n  socketVMNet: {}\n  varRun: {}\n  sudoers: {}\ngroup: sudo\nnetworks:\n  shared: {{mode: shared, gateway: 192.168.105.1, dhcpEnd: 192.168.105.254, netmask: 255.255.255.0}}\n  bridged: {{mode: bridged, interface: eth0}}\n  user-v2: {{mode: user-v2, gateway: 192.168.104.1, netmask: 255.255.255.0}}\n  lan: {{mode: host, gateway: 10.20.0.1}}\n",
            exe.display(),
            var_run.display(),
            sudoers.display()
        ));
        (
            exe.to_string_lossy().into_owned(),
            var_run.to_string_lossy().into_owned(),
        )
    }

    fn expected(exe: &str, vr: &str) -> String {
        format!(
            "%sudo ALL=(root:root) NOPASSWD:NOSETENV: /bin/mkdir -m 775 -p {vr}\n\
             \n# Manage \"bridged\" network daemons\n\
             \n%sudo ALL=(root:root) NOPASSWD:NOSETENV: \\\n    {exe} --pidfile={vr}/bridged_socket_vmnet.pid --socket-group=sudo --vmnet-mode=bridged --vmnet-interface=eth0 {vr}/socket_vmnet.bridged, \\\n    /usr/bin/pkill -F {vr}/bridged_socket_vmnet.pid\n\
             \n# Manage \"lan\" network daemons\n\
             \n%sudo ALL=(root:root) NOPASSWD:NOSETENV: \\\n    {exe} --pidfile={vr}/lan_socket_vmnet.pid --socket-group=sudo --vmnet-mode=host --vmnet-gateway=10.20.0.1 --vmnet-dhcp-end=10.20.0.254 --vmnet-mask=255.255.255.0 {vr}/socket_vmnet.lan, \\\n    /usr/bin/pkill -F {vr}/lan_socket_vmnet.pid\n\
             \n# Manage \"shared\" network daemons\n\
             \n%sudo ALL=(root:root) NOPASSWD:NOSETENV: \\\n    {exe} --pidfile={vr}/shared_socket_vmnet.pid --socket-group=sudo --vmnet-mode=shared --vmnet-gateway=192.168.105.1 --vmnet-dhcp-end=192.168.105.254 --vmnet-mask=255.255.255.0 {vr}/socket_vmnet.shared, \\\n    /usr/bin/pkill -F {vr}/shared_socket_vmnet.pid\n"
        )
    }

    #[test]
    fn prints_exact_bytes_that_visudo_accepts() {
        let env = Env::new();
        let sudoers = env.secure.join("sudoers.d/lima");
        let (exe, vr) = setup(&env, &sudoers);
        let out = ok(&env.run(&["sudoers"]));
        assert_eq!(out, expected(&exe, &vr));
        // The real sudoers parser accepts the rules.
        let file = env.home.join("etc_sudoers.d_lima");
        std::fs::write(&file, &out).expect("write");
        let visudo = Command::new("visudo")
            .arg("-c")
            .arg("-f")
            .arg(&file)
            .output()
            .expect("run visudo (package sudo)");
        assert!(
            visudo.status.success(),
            "visudo: {}{}",
            stdout(&visudo),
            stderr(&visudo)
        );

        let err = fails(&env.run(&["sudoers", "somefile"]));
        assert!(
            err.contains("the file argument can be specified only for --check mode"),
            "{err}"
        );
    }

    #[test]
    fn check_compares_byte_for_byte() {
        let env = Env::new();
        let sudoers = env.secure.join("sudoers.d/lima");
        let (exe, vr) = setup(&env, &sudoers);
        let s = sudoers.display().to_string();
        // Missing file: fine when sudo needs no password (we are root).
        assert_eq!(
            ok(&env.run(&["sudoers", "--check"])),
            format!("`{s}` is up-to-date (or sudo doesn't require a password)\n")
        );

        std::fs::create_dir_all(sudoers.parent().expect("parent")).expect("mkdir");
        std::fs::write(&sudoers, expected(&exe, &vr)).expect("write");
        assert_eq!(
            ok(&env.run(&["sudoers", "--check"])),
            format!("`{s}` is up-to-date (or sudo doesn't require a password)\n")
        );

        // One byte more: out of sync, with Lima's hint (stray parenthesis included).
        std::fs::write(&sudoers, expected(&exe, &vr) + "\n").expect("write");
        let err = fails(&env.run(&["sudoers", "--check"]));
        assert!(
            err.contains(&format!(
                "sudoers file `{s}` is out of sync and must be regenerated (Hint: run `limanet sudoers >etc_sudoers.d_lima && sudo install -o root etc_sudoers.d_lima \"{s}\"`))"
            )),
            "{err}"
        );

        // An explicit FILE wins over paths.sudoers.
        let other = env.home.join("other");
        std::fs::write(&other, expected(&exe, &vr)).expect("write");
        let o = other.display().to_string();
        assert_eq!(
            ok(&env.run(&["sudoers", "--check", &o])),
            format!("`{o}` is up-to-date (or sudo doesn't require a password)\n")
        );
    }

    #[test]
    fn check_as_non_root_runs_the_sudo_probe() {
        let env = Env::new();
        let sudoers = env.secure.join("sudoers.d/lima");
        setup(&env, &sudoers);
        let s = sudoers.display().to_string();
        // `nobody` may not run sudo without a password, so a missing file cannot be excused.
        // The build directory may not be open to `nobody` (a checkout in a 0700 directory):
        // run a copy from the test's own world-readable directory.
        let exe = env.secure.join("limanet");
        std::fs::copy(env!("CARGO_BIN_EXE_limanet"), &exe).expect("copy limanet");
        std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let o = Command::new("runuser")
            .args(["-u", "nobody", "--"])
            .arg(&exe)
            .args(["sudoers", "--check"])
            .env("LIMA_HOME", &env.home)
            .stdin(Stdio::null())
            .output()
            .expect("run runuser (package util-linux)");
        let err = fails(&o);
        assert_eq!(
            err,
            format!(
                "limanet: can't read `{s}`: No such file or directory (os error 2): (Hint: run `limanet sudoers >etc_sudoers.d_lima && sudo install -o root etc_sudoers.d_lima \"{s}\"`))\n"
            )
        );
    }

    #[test]
    fn refuses_insecure_or_incomplete_configs() {
        let env = Env::new();
        env.write_config(&format!(
            "paths:\n  socketVMNet: {}/missing/socket_vmnet\n  varRun: /run/lima\ngroup: sudo\n",
            env.secure.display()
        ));
        let err = fails(&env.run(&["sudoers"]));
        assert!(err.contains(&format!("networks.yaml: `{}/missing/socket_vmnet` (`paths.socketVMNet`) has to be installed", env.secure.display())), "{err}");

        let exe = env.daemon();
        env.write_config(&format!(
            "paths:\n  socketVMNet: {}\n  varRun: /run/lima\ngroup: sudo\n",
            exe.display()
        ));
        let err = fails(&env.run(&["sudoers", "--check"]));
        assert!(
            err.contains(&format!(
                "no sudoers file defined in `{}`",
                env.networks_yaml().display()
            )),
            "{err}"
        );

        env.write_config(&format!(
            "paths:\n  socketVMNet: {}\n  varRun: /tmp/lima-x\ngroup: sudo\n",
            exe.display()
        ));
        let err = fails(&env.run(&["sudoers"]));
        assert!(
            err.contains("networks.yaml field `paths.varRun` error: dir `/tmp` is world-writable"),
            "{err}"
        );

        env.write_config(&format!("paths:\n  socketVMNet: {}\n  varRun: /run/lima\ngroup: sudo\nnetworks:\n  \"evil\\n%staff ALL=(root) NOPASSWD: ALL\": {{mode: shared}}\n", exe.display()));
        let err = fails(&env.run(&["sudoers"]));
        assert!(
            err.contains("invalid network name \"evil\\n%staff ALL=(root) NOPASSWD: ALL\""),
            "{err}"
        );

        env.write_config(&format!(
            "paths:\n  socketVMNet: {}\n  varRun: /run/lima\ngroup: sudo\nnetworks:\n  bridged:\n    mode: bridged\n    interface: en0 --extra-root-flag\n",
            exe.display()
        ));
        let err = fails(&env.run(&["sudoers"]));
        assert!(
            err.ends_with(&format!(
                "\nlimanet: {}:8:16: invalid interface `en0 --extra-root-flag` for network `bridged`: identifier `en0 --extra-root-flag` must match ^[A-Za-z0-9]+(?:[._-](?:[A-Za-z0-9]+))*$\n",
                env.networks_yaml().display()
            )),
            "{err}"
        );
    }
}

mod network {
    use super::*;

    const CONFIG: &str = "# keep this comment\npaths:\n  socketVMNet: /usr/local/libexec/limanet/socket_vmnet\n  varRun: /run/lima\ngroup: sudo\nnetworks:\n  shared:\n    mode: shared\n    gateway: 192.168.105.1\n    dhcpEnd: 192.168.105.254\n    netmask: 255.255.255.0\n  bridged:\n    mode: bridged\n    interface: eth0\n  user-v2:\n    mode: user-v2\n    gateway: 192.168.104.1\n    netmask: 255.255.255.0\n";

    #[test]
    fn list_table_and_json() {
        let env = Env::new();
        env.write_config(CONFIG);
        assert_eq!(
            ok(&env.run(&["network", "list"])),
            "NAME       MODE       GATEWAY             INTERFACE\n\
             bridged    bridged    -                   eth0\n\
             shared     shared     192.168.105.1/24    -\n\
             user-v2    user-v2    192.168.104.1/24    -\n"
        );
        assert_eq!(
            ok(&env.run(&["network", "ls", "--json"])),
            "{\"name\":\"bridged\",\"mode\":\"bridged\",\"interface\":\"eth0\"}\n\
             {\"name\":\"shared\",\"mode\":\"shared\",\"gateway\":\"192.168.105.1\",\"dhcpEnd\":\"192.168.105.254\",\"netmask\":\"255.255.255.0\"}\n\
             {\"name\":\"user-v2\",\"mode\":\"user-v2\",\"gateway\":\"192.168.104.1\",\"netmask\":\"255.255.255.0\"}\n"
        );
        let o = env.run(&["network", "list", "--json", "shared", "nope"]);
        assert_eq!(ok(&o).lines().count(), 1);
        assert!(
            stderr(&o).contains("No network matching nope found."),
            "{}",
            stderr(&o)
        );
    }

    #[test]
    fn first_use_creates_networks_yaml() {
        let env = Env::new();
        let out = ok(&env.run(&["network", "list"]));
        assert!(env.networks_yaml().exists());
        let names: Vec<&str> = out
            .lines()
            .skip(1)
            .filter_map(|l| l.split_whitespace().next())
            .collect();
        assert_eq!(names, ["bridged", "host", "shared", "user-v2"]);
        assert!(
            out.contains("host       host       192.168.106.1/24    -\n"),
            "{out}"
        );
    }

    #[test]
    fn create_and_delete() {
        let env = Env::new();
        env.write_config(CONFIG);
        ok(&env.run(&[
            "network",
            "create",
            "lab",
            "--mode",
            "shared",
            "--gateway",
            "192.168.120.1",
        ]));
        ok(&env.run(&[
            "network",
            "create",
            "lan",
            "--mode",
            "bridged",
            "--interface",
            "eth1",
        ]));
        ok(&env.run(&["network", "create", "u3", "--gateway", "10.77.0.1/16"]));
        let json = ok(&env.run(&["network", "list", "--json", "lab", "lan", "u3"]));
        assert_eq!(
            json,
            "{\"name\":\"lab\",\"mode\":\"shared\",\"gateway\":\"192.168.120.1\",\"dhcpEnd\":\"192.168.120.254\",\"netmask\":\"255.255.255.0\"}\n\
             {\"name\":\"lan\",\"mode\":\"bridged\",\"interface\":\"eth1\"}\n\
             {\"name\":\"u3\",\"mode\":\"user-v2\",\"gateway\":\"10.77.0.1\",\"netmask\":\"255.255.0.0\"}\n"
        );
        let text = std::fs::read_to_string(env.networks_yaml()).expect("read");
        assert!(text.starts_with("# keep this comment\n"), "{text}");
        assert!(text.ends_with("  lab:\n    mode: shared\n    gateway: 192.168.120.1\n    netmask: 255.255.255.0\n  lan:\n    mode: bridged\n    interface: eth1\n  u3:\n    mode: user-v2\n    gateway: 10.77.0.1\n    netmask: 255.255.0.0\n"), "{text}");

        let err = fails(&env.run(&[
            "network",
            "create",
            "lab",
            "--mode",
            "host",
            "--gateway",
            "10.1.1.1",
        ]));
        assert!(err.contains("network `lab` already exists"), "{err}");
        let err = fails(&env.run(&[
            "network",
            "create",
            "x",
            "--mode",
            "bridged",
            "--gateway",
            "10.1.1.1",
        ]));
        assert!(
            err.contains("network mode `bridged` does not support specifying gateway"),
            "{err}"
        );
        let o = env.run(&["network", "create", "x", "--mode", "nat"]);
        assert_eq!(o.status.code(), Some(2), "clap rejects unknown modes");

        let err = fails(&env.run(&["network", "delete", "lab"]));
        assert!(
            err.contains("`limanet network delete` currently always requires `--force`"),
            "{err}"
        );
        ok(&env.run(&["network", "rm", "-f", "lab", "lan"]));
        ok(&env.run(&["network", "delete", "--force", "u3"]));
        assert_eq!(
            std::fs::read_to_string(env.networks_yaml()).expect("read"),
            CONFIG,
            "back to the original bytes"
        );
    }

    #[test]
    fn lima_home_defaults_to_dot_lima() {
        let env = Env::new();
        let o = env
            .cmd(&["network", "list"])
            .env_remove("LIMA_HOME")
            .env("HOME", &env.home)
            .output()
            .expect("run");
        ok(&o);
        assert!(env.home.join(".lima/_config/networks.yaml").is_file());
        assert!(!env.networks_yaml().exists());
    }

    #[test]
    fn unknown_keys_warn_but_load() {
        let env = Env::new();
        env.write_config("paths:\n  vdeSwitch: /opt/vde/bin/vde_switch\nnetworks:\n  shared: {mode: shared, gateway: 192.168.105.1}\n");
        let o = env.run(&["network", "list", "--json", "shared"]);
        assert!(ok(&o).starts_with("{\"name\":\"shared\""));
        assert!(
            stderr(&o).contains(&format!(
                "Non-strict YAML is deprecated and will be unsupported in a future version of Lima: {}",
                env.networks_yaml().display()
            )),
            "{}",
            stderr(&o)
        );
    }

    #[test]
    fn parse_errors_name_file_line_column() {
        let env = Env::new();
        env.write_config("networks:\n  shared:\n    mode: shared\n    netmask: 255.255.0\n");
        let err = fails(&env.run(&["network", "list"]));
        assert!(
            err.contains(&format!(
                "{}:4:14: invalid IPv4 address \"255.255.0\"",
                env.networks_yaml().display()
            )),
            "{err}"
        );
    }
}

mod choose {
    use super::*;

    #[test]
    fn flags_walk_the_flowchart() {
        let env = Env::new();
        let out = ok(&env.run(&["choose", "--connect-via", "localhost"]));
        assert!(
            out.starts_with("Network: Default (user-mode network 192.168.5.0/24)\n"),
            "{out}"
        );
        assert!(out.ends_with("Command line:\n  limanet start default -- qemu-system-x86_64 <your QEMU arguments>\n"), "{out}");

        let out = ok(&env.run(&[
            "choose",
            "--connect-via",
            "ip",
            "--from",
            "vms",
            "--name",
            "vm1",
        ]));
        assert!(out.starts_with("Network: user-v2\n"), "{out}");
        assert!(out.contains("Flag: --network lima:user-v2\n"));
        assert!(out.contains("  user-v2:\n    mode: user-v2\n    gateway: 192.168.104.1\n    netmask: 255.255.255.0\n"), "{out}");
        assert!(!out.contains("sudoers"), "user-v2 needs no root daemon");
        assert!(out.ends_with("  limanet start vm1 --network lima:user-v2 -- qemu-system-x86_64 <your QEMU arguments>\n"), "{out}");
        assert!(
            !env.networks_yaml().exists(),
            "choose does not create networks.yaml"
        );

        let out = ok(&env.run(&[
            "choose",
            "--connect-via",
            "ip",
            "--from",
            "host",
            "--vm-type",
            "qemu",
        ]));
        assert!(out.starts_with("Network: socket_vmnet (shared)\n"), "{out}");
        assert!(out.contains("    dhcpEnd: 192.168.105.254\n"));
        assert!(out.contains("limanet sudoers >etc_sudoers.d_lima && sudo install -o root etc_sudoers.d_lima /etc/sudoers.d/lima"));
        assert!(out.ends_with("  limanet start default --network lima:shared -- qemu-system-x86_64 <your QEMU arguments>\n"));
        let default_qemu = ok(&env.run(&["choose", "--connect-via", "ip", "--from", "host"]));
        assert_eq!(
            default_qemu, out,
            "--vm-type defaults to qemu without a terminal"
        );

        let out = ok(&env.run(&[
            "choose",
            "--connect-via",
            "ip",
            "--from",
            "host",
            "--vm-type",
            "vz",
        ]));
        assert!(
            out.starts_with("Network: vzNAT\n") && out.contains("--network lima:shared"),
            "{out}"
        );

        let out = ok(&env.run(&["choose", "--connect-via", "ip", "--from", "other-hosts"]));
        assert!(
            out.starts_with("Network: socket_vmnet (bridged)\n")
                && out.contains("--network lima:bridged -- "),
            "{out}"
        );
    }

    #[test]
    fn uses_the_configured_networks() {
        let env = Env::new();
        env.write_config("networks:\n  lab:\n    mode: shared\n    gateway: 10.9.0.1\n");
        let out = ok(&env.run(&[
            "choose",
            "--connect-via",
            "ip",
            "--from",
            "host",
            "--vm-type",
            "qemu",
        ]));
        assert!(out.contains(&format!("networks.yaml entry (defined in {}):\n  lab:\n    mode: shared\n    gateway: 10.9.0.1\n    dhcpEnd: 10.9.0.254\n    netmask: 255.255.255.0\n", env.networks_yaml().display())), "{out}");
        assert!(out.contains("--network lima:lab -- "));
        let out = ok(&env.run(&["choose", "--connect-via", "ip", "--from", "other-hosts"]));
        assert!(
            out.contains("No bridged network is defined in")
                && out.contains("limanet network create bridged --mode bridged --interface"),
            "{out}"
        );
    }

    #[test]
    fn missing_answers_without_a_terminal_fail() {
        let env = Env::new();
        let err = fails(&env.run(&["choose"]));
        assert!(err.contains("missing --connect-via"), "{err}");
        let err = fails(&env.run(&["choose", "--connect-via", "ip"]));
        assert!(err.contains("missing --from"), "{err}");
    }

    #[test]
    fn interactive_dialogue_on_stdin() {
        let env = Env::new();
        let o = env.run_with_stdin(&["choose", "--interactive"], "2\n1\n1\n");
        let out = ok(&o);
        assert!(out.starts_with("Network: socket_vmnet (shared)\n"), "{out}");
        let prompts = stderr(&o);
        assert!(
            prompts.contains("Connect to the VM via:\n  1) localhost"),
            "{prompts}"
        );
        assert!(
            prompts.contains("Connect to the VM IP from:\n  1) host"),
            "{prompts}"
        );
        assert!(prompts.contains("VM type:\n  1) qemu"), "{prompts}");

        // Words work too; a bad answer is asked again.
        let o = env.run_with_stdin(&["choose", "--interactive"], "maybe\nip\nvms\n");
        assert!(ok(&o).starts_with("Network: user-v2\n"));
        assert!(stderr(&o).contains("Please answer with a number from 1 to 2 or one of the words."));

        // Flags answer their questions; only the rest is asked.
        let o = env.run_with_stdin(&["choose", "--interactive", "--connect-via", "ip"], "3\n");
        let out = ok(&o);
        assert!(
            out.starts_with("Network: socket_vmnet (bridged)\n"),
            "{out}"
        );
        assert!(!stderr(&o).contains("Connect to the VM via:"));

        // A real terminal (a pty from util-linux `script`) turns the dialogue on by itself.
        let exe = env!("CARGO_BIN_EXE_limanet");
        let mut child = Command::new("script")
            .args(["-qec", &format!("{exe} choose --name tty1"), "/dev/null"])
            .env("LIMA_HOME", &env.home)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run script (package bsdutils)");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(b"2\n2\n")
            .expect("write answers");
        let out = ok(&child.wait_with_output().expect("wait"));
        assert!(out.contains("Choice [1-2]: "), "{out}");
        assert!(out.contains("Network: user-v2"), "{out}");
        assert!(
            out.contains("limanet start tty1 --network lima:user-v2 -- "),
            "{out}"
        );

        // stdin ends before an answer.
        let err = fails(&env.run_with_stdin(&["choose", "--interactive"], "2\n"));
        assert!(err.contains("no answer for --from: stdin ended"), "{err}");
    }
}
