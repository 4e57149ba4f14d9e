//! `load` (template creation, atomicity, errors) and `network create/delete` edits on real
//! files in a temporary `$LIMA_HOME`.

use limanet_config::edit::{create, delete, CreateRequest};
use limanet_config::networks::{self, parse};
use limanet_config::{load, LimaHome, Mode};
use std::net::Ipv4Addr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

fn temp_home() -> (tempfile::TempDir, LimaHome) {
    let dir = tempfile::tempdir().expect("tempdir");
    let home = LimaHome::new(dir.path().join("lima"));
    (dir, home)
}

fn mode_of(p: &Path) -> u32 {
    std::fs::metadata(p).expect("stat").permissions().mode() & 0o777
}

fn leftovers(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .expect("readdir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n != "networks.yaml")
        .collect()
}

#[test]
fn first_load_creates_the_template() {
    let (_t, home) = temp_home();
    let c = load(&home).expect("load");
    let file = home.networks_yaml();
    assert_eq!(mode_of(&file), 0o644);
    assert_eq!(mode_of(&home.config_dir()), 0o755);
    let text = std::fs::read_to_string(&file).expect("read");
    assert_eq!(text, networks::render_host_template().expect("render"));
    assert!(
        text.contains("varRun: /run/lima\n") && text.contains("sudoers: /etc/sudoers.d/lima\n")
    );
    assert_eq!(c.paths.var_run, "/run/lima");
    assert_eq!(c.group, networks::default_group());
    assert_eq!(c.networks.len(), 4);
    assert_eq!(
        c.networks["shared"].gateway,
        Some(Ipv4Addr::new(192, 168, 105, 1))
    );
    assert!(
        leftovers(&home.config_dir()).is_empty(),
        "no temp files left"
    );
    // The file is never rewritten once it exists.
    std::fs::write(&file, "# mine\ngroup: staff\n").expect("write");
    let c = load(&home).expect("load");
    assert_eq!(c.group, "staff");
    assert_eq!(
        std::fs::read_to_string(&file).expect("read"),
        "# mine\ngroup: staff\n"
    );
    assert_eq!(
        c.networks.keys().collect::<Vec<_>>(),
        ["user-v2"],
        "fillDefaults adds user-v2 in memory"
    );
}

#[test]
fn concurrent_first_loads_agree() {
    let (_t, home) = temp_home();
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let h = home.clone();
            std::thread::spawn(move || load(&h).map_err(|e| e.to_string()))
        })
        .collect();
    let results: Vec<_> = threads
        .into_iter()
        .map(|t| t.join().expect("thread"))
        .collect();
    let first = results[0].clone().expect("load");
    for r in results {
        assert_eq!(r.expect("load"), first);
    }
    assert!(leftovers(&home.config_dir()).is_empty());
}

#[test]
fn load_errors_name_the_file() {
    let (_t, home) = temp_home();
    std::fs::create_dir_all(home.config_dir()).expect("mkdir");
    std::fs::write(
        home.networks_yaml(),
        "networks:\n  shared:\n    gateway: 192.168.105\n",
    )
    .expect("write");
    let e = load(&home).unwrap_err().to_string();
    assert_eq!(
        e,
        format!(
            "{}:3:14: invalid IPv4 address \"192.168.105\"",
            home.networks_yaml().display()
        )
    );
    // A file where _config should be: the stat error is returned as is.
    let (_t2, home2) = temp_home();
    std::fs::create_dir_all(home2.path()).expect("mkdir");
    std::fs::write(home2.config_dir(), b"not a dir").expect("write");
    let e = load(&home2).unwrap_err().to_string();
    assert!(
        e.starts_with(&format!(
            "cannot stat `{}`: ",
            home2.networks_yaml().display()
        )),
        "{e}"
    );
    // LIMA_HOME is a dangling symlink: _config cannot be created.
    let (t3, _) = temp_home();
    let link = t3.path().join("dangling");
    std::os::unix::fs::symlink(t3.path().join("gone/deeper"), &link).expect("symlink");
    let home3 = LimaHome::new(&link);
    let e = load(&home3).unwrap_err().to_string();
    assert!(
        e.starts_with(&format!(
            "could not create `{}` directory: ",
            home3.config_dir().display()
        )),
        "{e}"
    );
}

#[test]
fn lima_home_resolves_symlinks_and_env() {
    let (t, home) = temp_home();
    std::fs::create_dir_all(home.path()).expect("mkdir");
    let link = t.path().join("link");
    std::os::unix::fs::symlink(home.path(), &link).expect("symlink");
    let via_link = LimaHome::new(&link);
    assert_eq!(
        via_link.path(),
        std::fs::canonicalize(home.path()).expect("canon")
    );
    assert_eq!(
        via_link.instance_dir("default"),
        via_link.path().join("default")
    );
    assert_eq!(via_link.networks_dir(), via_link.path().join("_networks"));
    assert_eq!(
        via_link.networks_yaml(),
        via_link.path().join("_config/networks.yaml")
    );
    let missing = LimaHome::new(t.path().join("missing"));
    assert_eq!(missing.path(), t.path().join("missing"));
}

const COMMENTED: &str = "# my comment\npaths:\n  socketVMNet: /usr/local/libexec/limanet/socket_vmnet\n  varRun: /run/lima\ngroup: sudo\nnetworks:\n  # the shared one\n  shared:\n    mode: shared\n    gateway: 192.168.105.1  # keep me\n  user-v2:\n    mode: user-v2\n    gateway: 192.168.104.1\n    netmask: 255.255.255.0\n# trailing\n";

fn write_config(home: &LimaHome, text: &str) {
    std::fs::create_dir_all(home.config_dir()).expect("mkdir");
    std::fs::write(home.networks_yaml(), text).expect("write");
}

fn read(home: &LimaHome) -> String {
    std::fs::read_to_string(home.networks_yaml()).expect("read")
}

fn req(name: &str, mode: Mode, gateway: Option<&str>, interface: Option<&str>) -> CreateRequest {
    CreateRequest {
        name: name.into(),
        mode: Some(mode),
        gateway: gateway.map(Into::into),
        interface: interface.map(Into::into),
    }
}

#[test]
fn create_keeps_comments() {
    let (_t, home) = temp_home();
    write_config(&home, COMMENTED);
    create(&home, &req("lan", Mode::Host, Some("10.10.0.1/16"), None)).expect("create");
    let text = read(&home);
    assert_eq!(
        text,
        COMMENTED.replace(
            "    netmask: 255.255.255.0\n# trailing",
            "    netmask: 255.255.255.0\n  lan:\n    mode: host\n    gateway: 10.10.0.1\n    netmask: 255.255.0.0\n# trailing"
        )
    );
    assert_eq!(mode_of(&home.networks_yaml()), 0o644);
    create(&home, &req("br", Mode::Bridged, None, Some("eth1"))).expect("create");
    create(&home, &req("u2", Mode::UserV2, Some("192.168.110.1"), None)).expect("create");
    let c = load(&home).expect("load");
    assert_eq!(c.networks["br"].interface, "eth1");
    assert_eq!(
        c.networks["u2"].netmask,
        Some(Ipv4Addr::new(255, 255, 255, 0)),
        "/24 appended"
    );
    assert_eq!(
        c.networks["lan"].dhcp_end,
        Some(Ipv4Addr::new(10, 10, 0, 254)),
        "limanet default, not written"
    );
    assert!(!read(&home).contains("dhcpEnd"));
    assert!(read(&home).contains("# keep me") && read(&home).contains("# the shared one"));
    assert!(leftovers(&home.config_dir()).is_empty());
}

#[test]
fn create_errors() {
    let (_t, home) = temp_home();
    write_config(&home, COMMENTED);
    let err = |r: CreateRequest| create(&home, &r).unwrap_err().to_string();
    assert_eq!(
        err(req("shared", Mode::Shared, Some("10.0.0.1"), None)),
        "network `shared` already exists"
    );
    assert_eq!(
        err(req("b", Mode::Bridged, Some("10.0.0.1"), Some("eth0"))),
        "network mode `bridged` does not support specifying gateway"
    );
    assert_eq!(
        err(req("b", Mode::Bridged, None, None)),
        "network mode `bridged` requires specifying interface"
    );
    assert_eq!(
        err(req("h", Mode::Host, None, None)),
        "network mode `host` requires specifying gateway"
    );
    assert_eq!(
        err(req("h", Mode::Host, Some("10.0.0.1"), Some("eth0"))),
        "network mode `host` does not support specifying interface"
    );
    assert!(err(req("h", Mode::Host, Some("10.0.0/24"), None))
        .starts_with("failed to parse CIDR `10.0.0/24`: "));
    assert_eq!(
        err(req("h", Mode::Host, Some("127.0.0.1"), None)),
        "invalid IP address: 127.0.0.1"
    );
    assert_eq!(
        err(req("h", Mode::Host, Some("0.0.0.0/8"), None)),
        "invalid IP address: 0.0.0.0"
    );
    assert!(err(req("a b", Mode::Host, Some("10.0.0.1"), None))
        .starts_with("invalid network name `a b`: "));
    assert!(err(req("b", Mode::Bridged, None, Some("en0 --x")))
        .starts_with("invalid interface `en0 --x`"));
    assert_eq!(
        read(&home),
        COMMENTED,
        "failed creates leave the file alone"
    );
}

#[test]
fn delete_keeps_comments() {
    let (_t, home) = temp_home();
    write_config(&home, COMMENTED);
    delete(&home, &["shared".into(), "nothere".into()]).expect("delete");
    assert_eq!(
        read(&home),
        COMMENTED.replace(
            "  shared:\n    mode: shared\n    gateway: 192.168.105.1  # keep me\n",
            ""
        )
    );
    let c = parse(&read(&home), Path::new("x")).expect("parse");
    assert_eq!(c.networks.keys().collect::<Vec<_>>(), ["user-v2"]);
}

#[test]
fn flow_style_falls_back_to_reserialising() {
    let (_t, home) = temp_home();
    write_config(&home, "# gone\npaths: {varRun: /run/lima}\nnetworks: {shared: {mode: shared, gateway: 192.168.105.1}}\n");
    create(&home, &req("h", Mode::Host, Some("10.1.0.1"), None)).expect("create");
    let c = parse(&read(&home), Path::new("x")).expect("parse");
    assert_eq!(c.paths.var_run, "/run/lima");
    assert_eq!(c.networks.keys().collect::<Vec<_>>(), ["h", "shared"]);
    delete(&home, &["shared".into()]).expect("delete");
    let c = parse(&read(&home), Path::new("x")).expect("parse");
    assert_eq!(c.networks.keys().collect::<Vec<_>>(), ["h"]);
}

#[test]
fn concurrent_creates_all_land() {
    let (_t, home) = temp_home();
    write_config(&home, COMMENTED);
    let threads: Vec<_> = (0..6)
        .map(|i| {
            let h = home.clone();
            std::thread::spawn(move || {
                create(
                    &h,
                    &req(
                        &format!("n{i}"),
                        Mode::Host,
                        Some(&format!("10.50.{i}.1")),
                        None,
                    ),
                )
                .map_err(|e| e.to_string())
            })
        })
        .collect();
    for t in threads {
        t.join().expect("thread").expect("create");
    }
    let c = load(&home).expect("load");
    for i in 0..6 {
        assert_eq!(
            c.networks[&format!("n{i}")].gateway,
            Some(Ipv4Addr::new(10, 50, i, 1))
        );
    }
    assert!(read(&home).starts_with("# my comment\n"));
    assert!(leftovers(&home.config_dir()).is_empty());
}
