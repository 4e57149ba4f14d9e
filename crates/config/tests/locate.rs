//! Validation errors name networks.yaml and the line and column of the offending value.

use limanet_config::{load, LimaHome};

fn check(text: &str) -> (String, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let home = LimaHome::new(dir.path());
    std::fs::create_dir_all(home.config_dir()).expect("mkdir");
    std::fs::write(home.networks_yaml(), text).expect("write");
    let config = load(&home).expect("loads");
    let err = config
        .validate_located(&home)
        .expect_err("invalid")
        .to_string();
    (home.networks_yaml().display().to_string(), err)
}

const PATHS: &str =
    "paths:\n  socketVMNet: /nonexistent/limanet/socket_vmnet\n  varRun: /run/lima\n";

#[test]
fn identifier_errors_have_positions() {
    let (f, e) = check(&format!("{PATHS}group: admin bad\n"));
    assert!(
        e.starts_with(&format!("{f}:4:8: invalid group `admin bad`: ")),
        "{e}"
    );

    let (f, e) = check(&format!(
        "{PATHS}networks:\n  # comment\n  ../../etc/foo:\n    mode: shared\n"
    ));
    assert!(
        e.starts_with(&format!("{f}:6:3: invalid network name `../../etc/foo`: ")),
        "{e}"
    );

    let (f, e) = check(&format!(
        "{PATHS}networks:\n  bridged:\n    mode: bridged\n    interface: en0 --extra-root-flag\n"
    ));
    assert!(
        e.starts_with(&format!(
            "{f}:7:16: invalid interface `en0 --extra-root-flag` for network `bridged`: "
        )),
        "{e}"
    );

    let (f, e) = check(&format!(
        "{PATHS}networks:\n  shared: {{mode: shared --extra, gateway: 192.168.105.1}}\n"
    ));
    assert!(
        e.starts_with(&format!(
            "{f}:5:18: invalid mode `shared --extra` for network `shared`: "
        )),
        "{e}"
    );

    // A name that cannot appear on one line: the file is still named.
    let (f, e) = check(&format!(
        "{PATHS}networks:\n  \"evil\\n%staff ALL=(root) NOPASSWD: ALL\": {{mode: shared}}\n"
    ));
    assert!(
        e.starts_with(&format!(
            "{f}: invalid network name \"evil\\n%staff ALL=(root) NOPASSWD: ALL\": "
        )),
        "{e}"
    );
}

#[test]
fn path_errors_have_positions() {
    let (f, e) = check(&format!("{PATHS}group: sudo\n"));
    assert_eq!(e, format!("{f}:2:16: networks.yaml: `/nonexistent/limanet/socket_vmnet` (`paths.socketVMNet`) has to be installed"));
    let (f, e) = check("paths:\n  socketVMNet: /usr/bin/env\n  varRun: relative/run\n");
    assert!(e.starts_with(&format!("{f}:3:11: networks.yaml field `paths.varRun` error: path `relative/run` is not an absolute path")), "{e}");
}
