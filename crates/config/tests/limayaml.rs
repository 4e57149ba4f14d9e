//! lima.yaml `networks:` entries (spec §2): Lima's defaults_test merge vectors, validation
//! messages (with real sockets and files), and the `--network`/`--dns` flag cases.

use limanet_config::limayaml::{
    apply_dns_flags, apply_network_flags, fill_defaults, merge, parse_mac_len, parse_network_flag,
    validate, NetworkEntry, NetworkFlag,
};
use limanet_config::mac::mac_address;
use limanet_config::networks::{parse, NetworksConfig};
use std::net::IpAddr;
use std::path::Path;

const MACHINE_ID: &str = "1A008DA1-06E0-49AB-8EC9-88E9C85F67FB";

fn lima(name: &str) -> NetworkEntry {
    NetworkEntry {
        lima: name.into(),
        ..Default::default()
    }
}

fn networks() -> NetworksConfig {
    let yaml = "networks:\n  shared: {mode: shared, gateway: 192.168.105.1}\n  bridged: {mode: bridged, interface: eth0}\n  host: {mode: host, gateway: 192.168.106.1}\n";
    let mut c = parse(yaml, Path::new("networks.yaml")).expect("parses");
    c.fill_defaults();
    c
}

fn defaulted(
    d: &[NetworkEntry],
    y: &[NetworkEntry],
    o: &[NetworkEntry],
    file: &Path,
) -> Vec<NetworkEntry> {
    let mut merged = merge(d, y, o);
    fill_defaults(&mut merged, file, MACHINE_ID);
    merged
}

#[test]
fn builtin_defaults() {
    let file = Path::new("/tmp/x/instance/lima.yaml");
    let got = defaulted(&[], &[lima("shared")], &[], file);
    assert_eq!(
        got,
        [NetworkEntry {
            lima: "shared".into(),
            mac_address: mac_address(MACHINE_ID, "/tmp/x/instance/lima.yaml#0"),
            interface: "lima0".into(),
            metric: Some(100),
            ..Default::default()
        }]
    );
    let second = defaulted(&[], &[lima("shared"), lima("user-v2")], &[], file);
    assert_eq!(second[1].interface, "lima1");
    assert_eq!(
        second[1].mac_address,
        mac_address(MACHINE_ID, "/tmp/x/instance/lima.yaml#1")
    );
}

fn d_entry() -> NetworkEntry {
    NetworkEntry {
        mac_address: "11:22:33:44:55:66".into(),
        interface: "def0".into(),
        metric: Some(50),
        ..Default::default()
    }
}

#[test]
fn merge_with_defaults_file() {
    let file = Path::new("/tmp/x/instance/lima.yaml");
    // Empty y: d's entry unchanged.
    assert_eq!(defaulted(&[d_entry()], &[], &[], file), [d_entry()]);
    // y has networks: concat(d, y).
    let got = defaulted(&[d_entry()], &[lima("shared")], &[], file);
    assert_eq!(got.len(), 2);
    assert_eq!(got[0], d_entry());
    assert_eq!(got[1].lima, "shared");
    assert_eq!(got[1].interface, "lima1");
}

#[test]
fn merge_with_override_file() {
    let file = Path::new("/tmp/x/instance/lima.yaml");
    let o0 = NetworkEntry {
        lima: "shared".into(),
        mac_address: "10:20:30:40:50:60".into(),
        interface: "def1".into(),
        metric: Some(25),
        ..Default::default()
    };
    let o1 = NetworkEntry {
        lima: "bridged".into(),
        interface: "def0".into(),
        ..Default::default()
    };
    let got = defaulted(&[d_entry()], &[lima("shared")], &[o0.clone(), o1], file);
    assert_eq!(got.len(), 3, "{got:?}");
    assert_eq!(
        got[0],
        NetworkEntry {
            lima: "bridged".into(),
            ..d_entry()
        },
        "def0 takes o's lima, keeps d's mac and metric"
    );
    assert_eq!(got[1].lima, "shared");
    assert_eq!(got[2], o0);
}

#[test]
fn merge_rules() {
    let base = NetworkEntry {
        socket: "/run/a.sock".into(),
        interface: "x0".into(),
        ..Default::default()
    };
    let both = NetworkEntry {
        socket: "/run/b.sock".into(),
        lima: "shared".into(),
        interface: "x0".into(),
        ..Default::default()
    };
    let got = merge(&[base], &[both], &[]);
    assert_eq!(
        got,
        [NetworkEntry {
            lima: "shared".into(),
            interface: "x0".into(),
            ..Default::default()
        }],
        "lima wins"
    );
    let sock = NetworkEntry {
        socket: "/run/c.sock".into(),
        interface: "x0".into(),
        vz_nat: true,
        ..Default::default()
    };
    let got = merge(&[lima("shared")], &[], &[]);
    assert_eq!(got, [lima("shared")]);
    let got = merge(
        &[NetworkEntry {
            interface: "x0".into(),
            ..lima("shared")
        }],
        &[sock],
        &[],
    );
    assert_eq!(got[0].socket, "/run/c.sock");
    assert_eq!(got[0].lima, "");
    assert!(!got[0].vz_nat, "vzNAT is not merged");
    // Empty interfaces are never merged.
    assert_eq!(merge(&[lima("a")], &[lima("b")], &[]).len(), 2);
}

fn errors(entries: &[NetworkEntry]) -> String {
    validate(entries, &networks())
        .expect_err("invalid")
        .to_string()
}

fn filled(mut e: Vec<NetworkEntry>) -> Vec<NetworkEntry> {
    fill_defaults(&mut e, Path::new("/i/lima.yaml"), MACHINE_ID);
    e
}

#[test]
fn validation_messages() {
    assert!(validate(
        &filled(vec![lima("shared"), lima("host"), lima("bridged")]),
        &networks()
    )
    .is_ok());
    assert!(validate(
        &filled(vec![NetworkEntry {
            vz_nat: true,
            ..Default::default()
        }]),
        &networks()
    )
    .is_ok());

    // Undefined name: only that error, even with others present.
    let mut e = filled(vec![NetworkEntry {
        interface: "eth0".into(),
        ..lima("nope")
    }]);
    e[0].socket = "/x".into();
    assert_eq!(errors(&e), "network `nope` is not defined");

    let e = filled(vec![NetworkEntry {
        socket: "/nonexistent.sock".into(),
        vz_nat: true,
        ..lima("shared")
    }]);
    assert_eq!(
        errors(&e),
        "field `networks[0].lima` and field `networks[0].socket` are mutually exclusive\nfield `networks[0].lima` and field `networks[0].vzNAT` are mutually exclusive"
    );
    let e = filled(vec![NetworkEntry {
        socket: "/nonexistent.sock".into(),
        vz_nat: true,
        ..Default::default()
    }]);
    assert_eq!(
        errors(&e),
        "field `networks[0].socket` and field `networks[0].vzNAT` are mutually exclusive"
    );
    let e = filled(vec![NetworkEntry::default()]);
    assert_eq!(
        errors(&e),
        "field `networks[0].lima` or  field `networks[0].socket must be set"
    );

    let e = filled(vec![NetworkEntry {
        mac_address: "zz".into(),
        ..lima("shared")
    }]);
    assert_eq!(
        errors(&e),
        "field `vmnet.mac` invalid: address zz: invalid MAC address\nfield `networks[0].macAddress` must be a 48 bit (6 bytes) MAC address; actual length of `zz` is 0 bytes"
    );
    let e = filled(vec![NetworkEntry {
        mac_address: "00:00:5e:00:53:01:02:03".into(),
        ..lima("shared")
    }]);
    assert_eq!(
        errors(&e),
        "field `networks[0].macAddress` must be a 48 bit (6 bytes) MAC address; actual length of `00:00:5e:00:53:01:02:03` is 8 bytes"
    );

    let e = filled(vec![NetworkEntry {
        interface: "abcdefghijklmnop".into(),
        ..lima("shared")
    }]);
    assert_eq!(errors(&e), "field `networks[0].interface` must be less than 16 bytes, but is 16 bytes: `abcdefghijklmnop`");
    let e = filled(vec![NetworkEntry {
        interface: "a b/c".into(),
        ..lima("shared")
    }]);
    assert_eq!(
        errors(&e),
        "field `networks[0].interface` must not contain whitespace or slashes"
    );
    let e = filled(vec![NetworkEntry {
        interface: "eth0".into(),
        ..lima("shared")
    }]);
    assert_eq!(
        errors(&e),
        "field `networks[0].interface` must not be set to `eth0` because it is reserved for slirp"
    );
    let e = filled(vec![
        NetworkEntry {
            interface: "x".into(),
            ..lima("shared")
        },
        NetworkEntry {
            interface: "x".into(),
            ..lima("host")
        },
    ]);
    assert_eq!(errors(&e), "field `networks[1].interface` value `x` has already been used by field `networks[0].interface`");
}

#[test]
fn socket_entries_checked_on_real_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sock = dir.path().join("vm.sock");
    let _listener = std::os::unix::net::UnixListener::bind(&sock).expect("bind");
    let plain = dir.path().join("plain");
    std::fs::write(&plain, b"x").expect("write");
    let entry = |p: &Path| {
        filled(vec![NetworkEntry {
            socket: p.to_string_lossy().into_owned(),
            ..Default::default()
        }])
    };
    assert!(
        validate(&entry(&sock), &networks()).is_ok(),
        "a real socket"
    );
    assert!(
        validate(&entry(&dir.path().join("missing.sock")), &networks()).is_ok(),
        "a missing path is OK"
    );
    assert_eq!(
        errors(&entry(&plain)),
        format!(
            "field `networks[0].socket` `{}` points to a non-socket file",
            plain.display()
        )
    );
}

#[test]
fn mac_parsing() {
    assert_eq!(parse_mac_len("52:55:55:12:34:56"), Some(6));
    assert_eq!(parse_mac_len("52-55-55-12-34-56"), Some(6));
    assert_eq!(parse_mac_len("5255.5512.3456"), Some(6));
    assert_eq!(parse_mac_len("52:55:55:12:34"), None);
    assert_eq!(parse_mac_len("52:55:55:12:34:5g"), None);
}

#[test]
fn network_flags() {
    assert_eq!(parse_network_flag("vzNAT"), Ok(NetworkFlag::VzNat));
    assert_eq!(
        parse_network_flag("lima:shared"),
        Ok(NetworkFlag::Lima("shared".into()))
    );
    assert_eq!(
        parse_network_flag("socket:/run/x.sock"),
        Ok(NetworkFlag::Socket("/run/x.sock".into()))
    );
    for bad in ["invalid", "lima:", "shared", "socket:"] {
        assert_eq!(
            parse_network_flag(bad).unwrap_err().to_string(),
            format!("network name must be `vzNAT`, `lima:*` or `socket:*`, got `{bad}`")
        );
    }
    // --network vzNAT
    assert_eq!(
        apply_network_flags(&[], &[NetworkFlag::VzNat]),
        [NetworkEntry {
            vz_nat: true,
            ..Default::default()
        }]
    );
    // multiple, with a duplicate: .networks += [...] | unique_by(.lima), first kept.
    let flags: Vec<NetworkFlag> = ["lima:shared", "vzNAT", "lima:user-v2", "lima:shared"]
        .iter()
        .map(|f| parse_network_flag(f).expect("valid"))
        .collect();
    let existing = [NetworkEntry {
        interface: "mine".into(),
        ..lima("shared")
    }];
    assert_eq!(
        apply_network_flags(&existing, &flags),
        [
            existing[0].clone(),
            NetworkEntry {
                vz_nat: true,
                ..Default::default()
            },
            lima("user-v2")
        ]
    );
}

#[test]
fn dns_flags() {
    let ips = |v: &[&str]| {
        v.iter()
            .map(|s| s.parse::<IpAddr>().expect("ip"))
            .collect::<Vec<_>>()
    };
    let flags: Vec<String> = ["8.8.8.8", "8.8.4.4", "1.1.1.1", "8.8.8.8"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert_eq!(
        apply_dns_flags(&[], &flags).expect("valid"),
        ips(&["8.8.8.8", "8.8.4.4", "1.1.1.1"])
    );
    assert_eq!(
        apply_dns_flags(&ips(&["1.1.1.1", "9.9.9.9"]), &flags).expect("valid"),
        ips(&["1.1.1.1", "9.9.9.9", "8.8.8.8", "8.8.4.4"])
    );
    assert_eq!(
        apply_dns_flags(&[], &["2001:db8::1".into()]).expect("v6"),
        ips(&["2001:db8::1"])
    );
    assert_eq!(
        apply_dns_flags(&[], &["dns.example".into()])
            .unwrap_err()
            .to_string(),
        "field `dns` must be a list of IP addresses; `dns.example` is not one"
    );
}
