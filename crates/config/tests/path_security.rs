//! Path-security rules (spec §1.5) on real files with real owners and modes. Runs as root
//! (chown needs it). Each test works in its own directory under `/run`, whose ancestors are
//! root-owned and not group/world-writable, and removes it on drop.

use limanet_config::networks::NetworksConfig;
use limanet_config::pathsec::{validate_path, SystemIds};
use std::os::unix::fs::{chown, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

const IDS: SystemIds = SystemIds {
    root_uid: 0,
    root_gid: 0,
    daemon_gid: 1,
};
const OTHER: u32 = 4242;

/// A root-owned 0755 directory under /run, removed on drop.
struct SecureDir(PathBuf);

impl SecureDir {
    fn new() -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let p = PathBuf::from(format!(
            "/run/limanet-pathsec-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir(&p).expect("create test dir under /run");
        set_mode(&p, 0o755);
        SecureDir(p)
    }
    fn file(&self, rel: &str, mode: u32) -> PathBuf {
        let p = self.0.join(rel);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).expect("mkdir");
        }
        std::fs::write(&p, b"#!/bin/sh\n").expect("write");
        set_mode(&p, mode);
        p
    }
    fn dir(&self, rel: &str, mode: u32) -> PathBuf {
        let p = self.0.join(rel);
        std::fs::create_dir_all(&p).expect("mkdir");
        set_mode(&p, mode);
        p
    }
}

impl Drop for SecureDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn set_mode(p: &Path, mode: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

fn s(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

fn check(p: &Path, var_run: bool) -> Result<(), String> {
    validate_path(&s(p), var_run, &IDS).map_err(|e| e.to_string())
}

#[test]
fn good_paths_pass() {
    let d = SecureDir::new();
    let exe = d.file("libexec/socket_vmnet", 0o755);
    assert_eq!(check(&exe, false), Ok(()));
    // group-writable is fine when the group is root.
    set_mode(&exe, 0o775);
    assert_eq!(check(&exe, false), Ok(()));
    assert_eq!(
        validate_path("", false, &IDS).map_err(|e| e.to_string()),
        Ok(())
    );
    assert_eq!(check(Path::new("/"), false), Ok(()));
}

#[test]
fn syntax_rules() {
    assert_eq!(
        check(Path::new("relative/x"), false),
        Err("path `relative/x` is not an absolute path".into())
    );
    assert_eq!(
        check(Path::new("/a b/x"), false),
        Err("path `/a b/x` contains whitespace".into())
    );
}

#[test]
fn symlinks_are_rejected() {
    let d = SecureDir::new();
    let target = d.file("real", 0o755);
    let link = d.0.join("link");
    std::os::unix::fs::symlink(&target, &link).expect("symlink");
    assert_eq!(
        check(&link, false),
        Err(format!("file `{}` is a symlink", s(&link)))
    );
    // A symlinked directory in the middle of the path is caught on the way up.
    let real_dir = d.dir("realdir", 0o755);
    let exe = d.file("realdir/exe", 0o755);
    let dir_link = d.0.join("dirlink");
    std::os::unix::fs::symlink(&real_dir, &dir_link).expect("symlink");
    let via_link = dir_link.join("exe");
    assert!(exe.exists());
    assert_eq!(
        check(&via_link, false),
        Err(format!("file `{}` is a symlink", s(&dir_link)))
    );
}

#[test]
fn owner_must_be_root() {
    let d = SecureDir::new();
    let exe = d.file("exe", 0o755);
    chown(&exe, Some(OTHER), None).expect("chown");
    assert_eq!(
        check(&exe, false),
        Err(format!(
            "file `{}` is not owned by `root` (uid: 0), but by uid {OTHER}",
            s(&exe)
        ))
    );
    // A parent directory owned by someone else fails too.
    let sub = d.dir("sub", 0o755);
    let inner = d.file("sub/exe", 0o755);
    chown(&sub, Some(OTHER), None).expect("chown");
    assert_eq!(
        check(&inner, false),
        Err(format!(
            "dir `{}` is not owned by `root` (uid: 0), but by uid {OTHER}",
            s(&sub)
        ))
    );
}

#[test]
fn group_and_world_writable() {
    let d = SecureDir::new();
    let exe = d.file("exe", 0o775);
    chown(&exe, None, Some(OTHER)).expect("chgrp");
    assert_eq!(
        check(&exe, false),
        Err(format!(
            "file `{}` is group-writable and group is not `root` (gid: 0), but is gid: {OTHER}",
            s(&exe)
        ))
    );
    set_mode(&exe, 0o755);
    assert_eq!(
        check(&exe, false),
        Ok(()),
        "not group-writable: any group is fine"
    );
    set_mode(&exe, 0o757);
    assert_eq!(
        check(&exe, false),
        Err(format!("file `{}` is world-writable", s(&exe)))
    );
    let sub = d.dir("w", 0o777);
    let inner = d.file("w/exe", 0o755);
    assert_eq!(
        check(&inner, false),
        Err(format!("dir `{}` is world-writable", s(&sub)))
    );
    // /tmp is world-writable (sticky or not), so nothing under it passes.
    let t = tempfile::NamedTempFile::new().expect("tmp");
    set_mode(t.path(), 0o755);
    assert_eq!(
        check(t.path(), false),
        Err("dir `/tmp` is world-writable".into())
    );
}

#[test]
fn var_run_daemon_group_exception() {
    let d = SecureDir::new();
    let run = d.dir("run-lima", 0o775);
    chown(&run, None, Some(IDS.daemon_gid)).expect("chgrp");
    assert_eq!(
        check(&run, true),
        Ok(()),
        "group-writable by daemon is allowed for varRun"
    );
    assert!(check(&run, false).is_err(), "but not for the other paths");
    chown(&run, None, Some(OTHER)).expect("chgrp");
    assert_eq!(
        check(&run, true),
        Err(format!(
            "dir `{}` is group-writable and group is neither `root` (gid: 0) nor `daemon` (gid: 1), but is gid: {OTHER}",
            s(&run)
        ))
    );
    chown(&run, None, Some(0)).expect("chgrp");
    set_mode(&run, 0o770);
    assert_eq!(
        check(&run, true),
        Err(format!(
            "dir `{}` is not executable by the `daemon` (gid: 1)\" group",
            s(&run)
        ))
    );
    chown(&run, None, Some(IDS.daemon_gid)).expect("chgrp");
    assert_eq!(
        check(&run, true),
        Ok(()),
        "group-executable with the daemon gid"
    );
}

fn config(socket_vmnet: &Path, var_run: &Path, sudoers: &Path) -> NetworksConfig {
    let mut c = NetworksConfig::default();
    c.paths.socket_vmnet = s(socket_vmnet);
    c.paths.var_run = s(var_run);
    c.paths.sudoers = s(sudoers);
    c.group = "sudo".into();
    c.fill_defaults();
    c
}

#[test]
fn validate_runs_path_security_on_linux() {
    let d = SecureDir::new();
    let exe = d.file("libexec/socket_vmnet", 0o755);
    let missing_var_run = d.0.join("var/run/lima");
    let missing_sudoers = d.0.join("sudoers.d/lima");
    let c = config(&exe, &missing_var_run, &missing_sudoers);
    assert_eq!(
        c.validate_with(&IDS).map_err(|e| e.to_string()),
        Ok(()),
        "missing varRun and sudoers are fine"
    );

    let c = config(
        &d.0.join("nope/socket_vmnet"),
        &missing_var_run,
        &missing_sudoers,
    );
    assert_eq!(
        c.validate_with(&IDS).unwrap_err().to_string(),
        format!(
            "networks.yaml: `{}/nope/socket_vmnet` (`paths.socketVMNet`) has to be installed",
            s(&d.0)
        )
    );

    // varRun's nearest existing ancestor is what gets checked.
    let bad_base = d.dir("bad", 0o777);
    let c = config(&exe, &bad_base.join("lima"), &missing_sudoers);
    assert_eq!(
        c.validate_with(&IDS).unwrap_err().to_string(),
        format!(
            "networks.yaml field `paths.varRun` error: dir `{}` is world-writable",
            s(&bad_base)
        )
    );

    let sudoers = d.file("sudoers.d/lima", 0o440);
    chown(&sudoers, Some(OTHER), None).expect("chown");
    let c = config(&exe, &missing_var_run, &sudoers);
    assert_eq!(
        c.validate_with(&IDS).unwrap_err().to_string(),
        format!("networks.yaml field `paths.sudoers` error: file `{}` is not owned by `root` (uid: 0), but by uid {OTHER}", s(&sudoers))
    );

    let t = tempfile::NamedTempFile::new().expect("tmp");
    let c = config(t.path(), &missing_var_run, &missing_sudoers);
    assert_eq!(
        c.validate_with(&IDS).unwrap_err().to_string(),
        "networks.yaml field `paths.socketVMNet` error: dir `/tmp` is world-writable"
    );
    // The default ids come from /etc/group (Debian: daemon is gid 1).
    assert_eq!(
        limanet_config::pathsec::SystemIds::from_system().daemon_gid,
        1
    );
}

#[test]
fn var_run_writable_after_mkdir() {
    let d = SecureDir::new();
    let run = d.0.join("run-lima");
    let mut c = NetworksConfig::default();
    c.paths.var_run = s(&run);
    // The real mkdir command line, run directly (we are root).
    let argv = limanet_config::networks::privileged_argv_as(&c.mkdir_cmd(), true);
    let status = std::process::Command::new(&argv[0])
        .args(&argv[1..])
        .status()
        .expect("run mkdir");
    assert!(status.success());
    assert_eq!(
        std::fs::metadata(&run).expect("stat").permissions().mode() & 0o777,
        0o775
    );
    assert_eq!(
        c.check_var_run_writable(&IDS).map_err(|e| e.to_string()),
        Ok(()),
        "gid root is accepted on Linux"
    );
    chown(&run, None, Some(IDS.daemon_gid)).expect("chgrp");
    assert!(c.check_var_run_writable(&IDS).is_ok());
    set_mode(&run, 0o755);
    assert_eq!(
        c.check_var_run_writable(&IDS).unwrap_err().to_string(),
        format!(
            "`{}` doesn't seem to be writable by the daemon (gid:1) group",
            s(&run)
        )
    );
    chown(&run, None, Some(OTHER)).expect("chgrp");
    set_mode(&run, 0o775);
    assert!(c.check_var_run_writable(&IDS).is_err());
    // After mkdir the whole path passes the varRun rules.
    chown(&run, None, Some(IDS.daemon_gid)).expect("chgrp");
    assert_eq!(check(&run, true), Ok(()));
}
