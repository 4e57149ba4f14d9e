//! Lima's unit-test vectors (spec §6): identifiers, fillDefaults, the validate injection
//! vectors, mkdir/start/stop strings, sudoers bytes, derived paths, usernet arithmetic, MACs.

use limanet_config::networks::{parse, render_template, NetworksConfig};
use limanet_config::{identifiers, log_file, mac, usernet, LimaHome, Mode, Network, Paths};

use std::net::Ipv4Addr;
use std::path::Path;

fn ip(s: &str) -> Option<Ipv4Addr> {
    Some(s.parse().expect("test literal"))
}

/// Lima's template as rendered on macOS, which Lima's command/sudoers vectors use.
fn darwin_config() -> NetworksConfig {
    let yaml = "paths:\n  socketVMNet: /opt/socket_vmnet/bin/socket_vmnet\n  varRun: /private/var/run/lima\n  sudoers: /private/etc/sudoers.d/lima\ngroup: admin\nnetworks:\n  user-v2: {mode: user-v2, gateway: 192.168.104.1, netmask: 255.255.255.0}\n  shared:  {mode: shared,  gateway: 192.168.105.1, dhcpEnd: 192.168.105.254, netmask: 255.255.255.0}\n  bridged: {mode: bridged, interface: en0}\n  host:    {mode: host,    gateway: 192.168.106.1, dhcpEnd: 192.168.106.254, netmask: 255.255.255.0}\n";
    let mut c = parse(yaml, Path::new("networks.yaml")).expect("template parses");
    c.fill_defaults();
    c
}

#[test]
fn identifier_vectors() {
    let long76 = "a".repeat(76);
    for valid in [
        "default",
        "Default",
        "TestValidIdentifiers",
        "default-default",
        "containerd.io",
        "foo.boo",
        "swarmkit.docker.io",
        "0912341234",
        "task.0.0123456789",
        "container.system-75-f19a.00",
        "underscores_are_allowed",
        long76.as_str(),
    ] {
        assert_eq!(
            identifiers::validate(valid),
            Ok(()),
            "{valid:?} must be valid"
        );
    }
    let long77 = "a".repeat(77);
    for invalid in [
        "",
        ".foo..foo",
        "foo/foo",
        "foo/..",
        "foo..foo",
        "foo.-boo",
        "-foo.boo",
        "foo.boo-",
        "but__only_tasteful_underscores",
        "zn--e9.org",
        "default--default",
        long77.as_str(),
    ] {
        assert!(
            identifiers::validate(invalid).is_err(),
            "{invalid:?} must be invalid"
        );
    }
    assert_eq!(
        identifiers::validate("").unwrap_err().to_string(),
        "identifier must not be empty"
    );
    assert_eq!(
        identifiers::validate(&long77).unwrap_err().to_string(),
        format!("identifier `{long77}` greater than maximum length (76 characters)")
    );
    assert_eq!(
        identifiers::validate("foo/foo").unwrap_err().to_string(),
        "identifier `foo/foo` must match ^[A-Za-z0-9]+(?:[._-](?:[A-Za-z0-9]+))*$"
    );
}

fn default_user_v2() -> Network {
    Network {
        mode: Mode::UserV2,
        gateway: ip("192.168.104.1"),
        netmask: ip("255.255.255.0"),
        ..Default::default()
    }
}

#[test]
fn fill_defaults_vectors() {
    let mut c = NetworksConfig::default();
    c.fill_defaults();
    assert_eq!(c.networks["user-v2"], default_user_v2());
    assert_eq!(c.networks["user-v2"].interface, "");
    assert_eq!(c.networks["user-v2"].dhcp_end, None);

    let mut c = NetworksConfig::default();
    c.networks.insert(
        "user-v2".into(),
        Network {
            mode: Mode::UserV2,
            ..Default::default()
        },
    );
    c.fill_defaults();
    assert_eq!(
        c.networks["user-v2"],
        default_user_v2(),
        "an entry without gateway is replaced"
    );

    let mut c = NetworksConfig::default();
    let custom = Network {
        mode: Mode::UserV2,
        gateway: ip("192.168.105.1"),
        ..Default::default()
    };
    c.networks.insert("user-v2".into(), custom.clone());
    c.fill_defaults();
    assert_eq!(
        c.networks["user-v2"], custom,
        "Lima does not default the netmask here"
    );
    assert_eq!(c.networks.len(), 1);

    // A user-v2 network under another name counts too.
    let mut c = NetworksConfig::default();
    c.networks.insert("mine".into(), custom.clone());
    c.fill_defaults();
    assert_eq!(c.networks.len(), 1);

    // `networks: null` is an empty map.
    let mut c = parse("networks:\n", Path::new("n.yaml")).expect("parses");
    assert!(c.networks.is_empty());
    c.fill_defaults();
    assert_eq!(c.networks["user-v2"], default_user_v2());
}

#[test]
fn limanet_defaults_fix_lima_gaps() {
    let yaml = "networks:\n  u: {mode: user-v2, gateway: 192.168.107.1}\n  s: {mode: shared, gateway: 192.168.108.1}\n  b: {mode: bridged, interface: eth0}\n";
    let mut c = parse(yaml, Path::new("n.yaml")).expect("parses");
    c.fill_defaults();
    c.fill_limanet_defaults("sudo");
    assert_eq!(c.group, "sudo");
    assert_eq!(c.networks["u"].netmask, ip("255.255.255.0"));
    assert_eq!(c.networks["u"].dhcp_end, None);
    assert_eq!(c.networks["s"].netmask, ip("255.255.255.0"));
    assert_eq!(c.networks["s"].dhcp_end, ip("192.168.108.254"));
    assert_eq!(c.networks["b"].netmask, None);
    assert!(!c.networks.contains_key("user-v2"));
    // An explicit group is kept.
    let mut c = parse("group: staff\n", Path::new("n.yaml")).expect("parses");
    c.fill_limanet_defaults("sudo");
    assert_eq!(c.group, "staff");
}

fn injection(c: NetworksConfig) -> String {
    c.validate_identifiers()
        .expect_err("must be rejected")
        .to_string()
}

#[test]
fn validate_injection_vectors() {
    let shared = Network {
        mode: Mode::Shared,
        ..Default::default()
    };
    let mut c = NetworksConfig::default();
    c.networks.insert(
        "evil\n%staff ALL=(root) NOPASSWD: ALL".into(),
        shared.clone(),
    );
    let e = injection(c);
    assert!(
        e.starts_with(
            "invalid network name \"evil\\n%staff ALL=(root) NOPASSWD: ALL\": identifier "
        ),
        "{e}"
    );

    let mut c = NetworksConfig::default();
    c.networks.insert(
        "bridged".into(),
        Network {
            mode: Mode::Bridged,
            interface: "en0 --extra-root-flag".into(),
            ..Default::default()
        },
    );
    assert_eq!(
        injection(c),
        "invalid interface `en0 --extra-root-flag` for network `bridged`: identifier `en0 --extra-root-flag` must match ^[A-Za-z0-9]+(?:[._-](?:[A-Za-z0-9]+))*$"
    );

    let mut c = NetworksConfig::default();
    c.networks.insert(
        "shared".into(),
        Network {
            mode: Mode::parse("shared --extra"),
            ..Default::default()
        },
    );
    assert!(injection(c).starts_with("invalid mode `shared --extra` for network `shared`: "));

    let c = NetworksConfig {
        group: "admin bad".into(),
        ..Default::default()
    };
    assert!(injection(c).starts_with("invalid group `admin bad`: "));

    let mut c = NetworksConfig::default();
    c.networks.insert("../../etc/foo".into(), shared);
    assert!(injection(c).starts_with("invalid network name `../../etc/foo`: "));

    // The same vectors fail the full validate (before any path is looked at).
    let mut c = darwin_config();
    c.group = "admin bad".into();
    assert!(c
        .validate()
        .expect_err("rejected")
        .to_string()
        .starts_with("invalid group"));
}

#[test]
fn command_strings() {
    let c = darwin_config();
    assert_eq!(c.mkdir_cmd(), "/bin/mkdir -m 775 -p /private/var/run/lima");
    assert_eq!(
        c.start_cmd("shared").expect("defined"),
        "/opt/socket_vmnet/bin/socket_vmnet --pidfile=/private/var/run/lima/shared_socket_vmnet.pid --socket-group=admin --vmnet-mode=shared --vmnet-gateway=192.168.105.1 --vmnet-dhcp-end=192.168.105.254 --vmnet-mask=255.255.255.0 /private/var/run/lima/socket_vmnet.shared"
    );
    assert_eq!(
        c.start_cmd("bridged").expect("defined"),
        "/opt/socket_vmnet/bin/socket_vmnet --pidfile=/private/var/run/lima/bridged_socket_vmnet.pid --socket-group=admin --vmnet-mode=bridged --vmnet-interface=en0 /private/var/run/lima/socket_vmnet.bridged"
    );
    assert_eq!(
        c.stop_cmd("name", "daemon"),
        "/usr/bin/pkill -F /private/var/run/lima/name_daemon.pid"
    );
    assert_eq!(
        c.start_cmd("unknown").unwrap_err().to_string(),
        "network `unknown` is not defined"
    );

    // Unset IPs print as Go's <nil> (what Lima does without limanet's defaults).
    let mut c = darwin_config();
    c.networks.insert(
        "h2".into(),
        Network {
            mode: Mode::Host,
            gateway: ip("10.1.0.1"),
            ..Default::default()
        },
    );
    assert!(c
        .start_cmd("h2")
        .expect("defined")
        .contains("--vmnet-dhcp-end=<nil> --vmnet-mask=<nil> "));
    c.paths.socket_vmnet.clear();
    assert_eq!(
        c.start_cmd("h2").unwrap_err().to_string(),
        "socketVMNet is not set"
    );
}

#[test]
fn check_sock_pid_log() {
    let c = darwin_config();
    for n in ["bridged", "shared", "host"] {
        assert!(c.check(n).is_ok());
    }
    assert!(c
        .check("unknown")
        .unwrap_err()
        .to_string()
        .contains("not defined"));
    assert!(c.is_usernet("user-v2").expect("defined"));
    assert!(!c.is_usernet("shared").expect("defined"));
    assert_eq!(
        c.sock("foo").unwrap_err().to_string(),
        "network `foo` is not defined"
    );
    assert_eq!(
        c.sock("shared").expect("ok"),
        Path::new("/private/var/run/lima/socket_vmnet.shared")
    );
    let mut foo = c.clone();
    foo.networks.insert(
        "foo".into(),
        Network {
            mode: Mode::Shared,
            ..Default::default()
        },
    );
    assert_eq!(
        foo.sock("foo").expect("ok"),
        Path::new("/private/var/run/lima/socket_vmnet.foo")
    );
    assert_eq!(
        c.pid_file("name", "daemon"),
        Path::new("/private/var/run/lima/name_daemon.pid")
    );
    let home = LimaHome::new("/nonexistent/lima-home");
    assert_eq!(
        log_file(&home, "name", "daemon", "stream"),
        Path::new("/nonexistent/lima-home/_networks/name_daemon.stream.log")
    );
    assert_eq!(
        c.daemon_path("socket_vmnet").expect("known"),
        "/opt/socket_vmnet/bin/socket_vmnet"
    );
    assert_eq!(
        c.daemon_path("vde").unwrap_err().to_string(),
        "unknown daemon type `vde`"
    );
}

#[test]
fn sudoers_bytes() {
    let c = darwin_config();
    let start = |n: &str| c.start_cmd(n).expect("defined");
    let mut expected = String::from(
        "%admin ALL=(root:root) NOPASSWD:NOSETENV: /bin/mkdir -m 775 -p /private/var/run/lima\n",
    );
    for n in ["bridged", "host", "shared"] {
        expected.push_str(&format!(
            "\n# Manage \"{n}\" network daemons\n\n%admin ALL=(root:root) NOPASSWD:NOSETENV: \\\n    {}, \\\n    /usr/bin/pkill -F /private/var/run/lima/{n}_socket_vmnet.pid\n",
            start(n)
        ));
    }
    assert_eq!(c.sudoers_with(true), expected);
    // The literal first rule block, as in the spec's derived example.
    assert!(c.sudoers_with(true).contains(
        "\n# Manage \"bridged\" network daemons\n\n%admin ALL=(root:root) NOPASSWD:NOSETENV: \\\n    /opt/socket_vmnet/bin/socket_vmnet --pidfile=/private/var/run/lima/bridged_socket_vmnet.pid --socket-group=admin --vmnet-mode=bridged --vmnet-interface=en0 /private/var/run/lima/socket_vmnet.bridged, \\\n    /usr/bin/pkill -F /private/var/run/lima/bridged_socket_vmnet.pid\n"
    ));
    assert_eq!(
        c.sudoers_with(false),
        "%admin ALL=(root:root) NOPASSWD:NOSETENV: /bin/mkdir -m 775 -p /private/var/run/lima\n\n# Manage \"bridged\" network daemons\n\n# Manage \"host\" network daemons\n\n# Manage \"shared\" network daemons\n"
    );
}

#[test]
fn linux_template_round_trip() {
    let text = render_template("/usr/local/libexec/limanet/socket_vmnet", "sudo", "eth0");
    let c = parse(&text, Path::new("networks.yaml")).expect("template parses");
    assert_eq!(
        c.paths,
        Paths {
            socket_vmnet: "/usr/local/libexec/limanet/socket_vmnet".into(),
            var_run: "/run/lima".into(),
            sudoers: "/etc/sudoers.d/lima".into()
        }
    );
    assert_eq!(c.group, "sudo");
    let names: Vec<&str> = c.networks.keys().map(String::as_str).collect();
    assert_eq!(names, ["bridged", "host", "shared", "user-v2"]);
    assert_eq!(c.networks["user-v2"], default_user_v2());
    assert_eq!(c.networks["bridged"].interface, "eth0");
    assert_eq!(c.networks["host"].dhcp_end, ip("192.168.106.254"));
    assert!(c.validate_identifiers().is_ok());
    assert_eq!(
        c.start_cmd("shared").expect("defined"),
        "/usr/local/libexec/limanet/socket_vmnet --pidfile=/run/lima/shared_socket_vmnet.pid --socket-group=sudo --vmnet-mode=shared --vmnet-gateway=192.168.105.1 --vmnet-dhcp-end=192.168.105.254 --vmnet-mask=255.255.255.0 /run/lima/socket_vmnet.shared"
    );
}

#[test]
fn usernet_vectors() {
    let net = Ipv4Addr::new(192, 168, 5, 0);
    assert_eq!(usernet::gateway_ip(net), Ipv4Addr::new(192, 168, 5, 2));
    assert_eq!(usernet::dns_ip(net), Ipv4Addr::new(192, 168, 5, 3));
    let c = darwin_config();
    assert_eq!(
        usernet::subnet(&c.networks["user-v2"]).expect("gateway set"),
        (Ipv4Addr::new(192, 168, 104, 0), 24)
    );
    // §7.3: no netmask → 0.0.0.0/0 (Lima's behaviour; limanet's load fills the netmask).
    let bare = Network {
        mode: Mode::UserV2,
        gateway: ip("192.168.105.1"),
        ..Default::default()
    };
    assert_eq!(
        usernet::subnet(&bare).expect("gateway set"),
        (Ipv4Addr::UNSPECIFIED, 0)
    );
    let slash20 = Network {
        netmask: ip("255.255.240.0"),
        ..bare.clone()
    };
    assert_eq!(
        usernet::subnet(&slash20).expect("gateway set"),
        (Ipv4Addr::new(192, 168, 96, 0), 20)
    );
    assert_eq!(usernet::prefix_len(Ipv4Addr::new(255, 0, 255, 0)), 0);
    assert!(usernet::subnet(&Network::default()).is_err());

    assert_eq!(
        usernet::search_domains(
            "\nsearch test.com lima.net\nnameserver 192.168.0.100\nnameserver 8.8.8.8"
        ),
        ["test.com", "lima.net"]
    );
    assert!(usernet::search_domains("nameserver 192.168.0.100\n").is_empty());

    let home = LimaHome::new("/nonexistent/h");
    let dir = usernet::dir(&home, "user-v2");
    assert_eq!(dir, Path::new("/nonexistent/h/_networks/user-v2"));
    assert_eq!(
        usernet::sock(&dir, "user-v2", usernet::SockKind::Qemu).expect("short"),
        dir.join("user-v2_qemu.sock")
    );
    assert_eq!(
        usernet::sock(&dir, "", usernet::SockKind::Ep).expect("short"),
        dir.join("default_ep.sock")
    );
    assert_eq!(
        usernet::sock(&dir, "n", usernet::SockKind::Fd).expect("short"),
        dir.join("n_fd.sock")
    );
    assert_eq!(
        usernet::pid_file(&home, "user-v2"),
        dir.join("usernet_user-v2.pid")
    );
    assert_eq!(
        usernet::leases_file(&home, "user-v2").expect("short"),
        dir.join("leases.json")
    );
    assert_eq!(
        usernet::log_file(&home, "user-v2", "stderr"),
        dir.join("usernet.user-v2.stderr.log")
    );
    let long = Path::new("/").join("d".repeat(90));
    let e = usernet::sock(&long, "user-v2", usernet::SockKind::Qemu)
        .unwrap_err()
        .to_string();
    assert_eq!(
        e,
        format!("usernet socket path `/{}/user-v2_qemu.sock` too long: must be less than UNIX_PATH_MAX=108 characters, but is 109", "d".repeat(90))
    );
}

#[test]
fn mac_vectors() {
    let id = "1A008DA1-06E0-49AB-8EC9-88E9C85F67FB";
    assert_eq!(
        mac::mac_address(id, "/Users/alice/.lima/default"),
        "52:55:55:60:8a:13"
    );
    assert_eq!(
        mac::mac_address(id, "/Users/alice/.lima/default/lima.yaml#0"),
        "52:55:55:9b:9b:8d"
    );
    assert_eq!(
        mac::mac_address(id, "/Users/alice/.lima/default/lima.yaml#1"),
        "52:55:55:6e:a6:3a"
    );
    assert_eq!(mac::mac_address(id, ""), "52:55:55:ca:37:b1");
    let real = mac::machine_id();
    assert!(!real.is_empty());
    if let Ok(file) = std::fs::read_to_string("/etc/machine-id") {
        if !file.trim().is_empty() {
            assert_eq!(real, file.trim());
        }
    }
}

#[test]
fn unknown_keys_are_tolerated() {
    let yaml = "paths:\n  varRun: /run/lima\n  vdeSwitch: /opt/vde/bin/vde_switch\n  vdeVMNet: /opt/vdenet/bin/vde_vmnet\nnetworks:\n  shared: {mode: shared, gateway: 192.168.105.1}\n";
    let c = parse(yaml, Path::new("n.yaml")).expect("lenient parse");
    assert_eq!(c.paths.var_run, "/run/lima");
    assert_eq!(c.networks["shared"].gateway, ip("192.168.105.1"));
}

#[test]
fn parse_errors_name_file_line_column() {
    let e = parse(
        "networks:\n  a:\n    gateway: 1.2.3\n",
        Path::new("/x/networks.yaml"),
    )
    .unwrap_err()
    .to_string();
    assert_eq!(e, "/x/networks.yaml:3:14: invalid IPv4 address \"1.2.3\"");
    let e = parse("networks:\n  a: 5\n", Path::new("/x/networks.yaml"))
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("/x/networks.yaml:2:6: "), "{e}");
    let e = parse("paths: [\n", Path::new("/x/n.yaml"))
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("/x/n.yaml:"), "{e}");
}

#[test]
fn privileged_argv_splits_and_prefixes_sudo() {
    use limanet_config::networks::privileged_argv_as;
    let c = darwin_config();
    assert_eq!(
        privileged_argv_as(&c.stop_cmd("shared", "socket_vmnet"), false),
        [
            "sudo",
            "--user",
            "root",
            "--group",
            "root",
            "--non-interactive",
            "/usr/bin/pkill",
            "-F",
            "/private/var/run/lima/shared_socket_vmnet.pid"
        ]
    );
    assert_eq!(
        privileged_argv_as(&c.mkdir_cmd(), true),
        ["/bin/mkdir", "-m", "775", "-p", "/private/var/run/lima"]
    );
    let start = privileged_argv_as(&c.start_cmd("bridged").expect("defined"), true);
    assert_eq!(start.len(), 6);
    assert_eq!(start[0], "/opt/socket_vmnet/bin/socket_vmnet");
    assert_eq!(start[5], "/private/var/run/lima/socket_vmnet.bridged");
}
