//! The sandbox on a real process: a child (this test binary, re-run with an environment
//! variable) confines itself as the daemon does, then checks that normal traffic still flows
//! (a UDP round trip on loopback, reading files) and that forbidden things are refused
//! (executing a program, creating or writing a file).

use std::net::UdpSocket;
use std::process::Command;

const CHILD: &str = "LIMANET_SANDBOX_CHILD";

/// The confined side; does nothing unless started by `sandbox_refuses_exec_and_new_files`.
#[test]
fn sandbox_child() {
    let Some(dir) = std::env::var_os(CHILD) else {
        return;
    };
    let dir = std::path::PathBuf::from(dir);
    let stale = dir.join("stale.sock");
    std::fs::write(&stale, "x").unwrap();
    let fs = limanet_runtime::sandbox::confine_filesystem(std::slice::from_ref(&dir)).unwrap();
    limanet_runtime::sandbox::confine_syscalls(limanet_runtime::sandbox::PassedTaps::Refused)
        .unwrap();
    println!("LANDLOCK={fs:?}");
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    println!(
        "SECCOMP={}",
        status
            .lines()
            .find(|l| l.starts_with("Seccomp:"))
            .unwrap_or("")
            .split_whitespace()
            .nth(1)
            .unwrap_or("")
    );
    // Traffic still flows.
    let a = UdpSocket::bind("127.0.0.1:0").unwrap();
    let b = UdpSocket::bind("127.0.0.1:0").unwrap();
    a.send_to(b"ping", b.local_addr().unwrap()).unwrap();
    let mut buf = [0u8; 8];
    let (n, _) = b.recv_from(&mut buf).unwrap();
    println!("UDP={}", String::from_utf8_lossy(&buf[..n]));
    // Threads can still be started (tokio's blocking pool, getaddrinfo).
    println!("THREAD={}", std::thread::spawn(|| 7).join().unwrap());
    // ioctl: the standard library's non-blocking switch works, interface requests do not
    // (a harmless read of lo's flags stands for them: were the filter missing, nothing changes).
    println!(
        "NONBLOCK={}",
        a.set_nonblocking(true)
            .map_or_else(|e| format!("refused: {e}"), |_| "ok".into())
    );
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    req.ifr_name[..2].copy_from_slice(&[b'l' as libc::c_char, b'o' as libc::c_char]);
    let fd = std::os::fd::AsRawFd::as_raw_fd(&a);
    let get_flags = unsafe { libc::ioctl(fd, libc::SIOCGIFFLAGS as _, &mut req) };
    println!(
        "IFCONFIG={}",
        if get_flags < 0 {
            format!("refused: {}", std::io::Error::last_os_error())
        } else {
            "ran".into()
        }
    );
    // TUN requests only for a process that adopts passed TAPs (the vmnet daemon): on this
    // socket the kernel would answer EBADFD, the filter answers EPERM first.
    let mut tun: libc::ifreq = unsafe { std::mem::zeroed() };
    let tun_query = unsafe { libc::ioctl(fd, libc::TUNGETIFF as _, &mut tun) };
    println!(
        "TUNGETIFF={}",
        if tun_query < 0 {
            format!("refused: {}", std::io::Error::last_os_error())
        } else {
            "ran".into()
        }
    );
    // Forbidden: running a program, creating or writing files.
    let exec = Command::new("/bin/true").status();
    println!(
        "EXEC={}",
        exec.map_or_else(|e| format!("refused: {e}"), |s| format!("ran: {s}"))
    );
    let create = std::fs::File::create(dir.join("new-file"));
    println!(
        "CREATE={}",
        create.map_or_else(|e| format!("refused: {e}"), |_| "created".into())
    );
    let append = std::fs::OpenOptions::new().append(true).open(&stale);
    println!(
        "WRITE={}",
        append.map_or_else(|e| format!("refused: {e}"), |_| "opened".into())
    );
    // Allowed: removing our own stale files at exit.
    println!(
        "REMOVE={}",
        std::fs::remove_file(&stale).map_or_else(|e| format!("refused: {e}"), |_| "ok".into())
    );
}

#[test]
fn sandbox_refuses_exec_and_new_files_and_traffic_flows() {
    if std::env::var_os(CHILD).is_some() {
        return;
    }
    let dir = std::env::temp_dir().join(format!("limanet-sandbox-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "sandbox_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD, &dir)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    let _ = std::fs::remove_dir_all(&dir);
    eprintln!("{text}");
    assert!(out.status.success(), "{text}");
    let value = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{key}=")))
            .unwrap_or_else(|| panic!("no {key} in\n{text}"))
            .to_string()
    };
    assert_eq!(value("SECCOMP"), "2", "seccomp filter mode");
    assert_eq!(value("UDP"), "ping");
    assert_eq!(value("THREAD"), "7");
    assert_eq!(value("NONBLOCK"), "ok");
    assert!(
        value("IFCONFIG").contains("Operation not permitted"),
        "{text}"
    );
    assert!(
        value("TUNGETIFF").contains("Operation not permitted"),
        "{text}"
    );
    assert!(value("EXEC").starts_with("refused"), "{text}");
    assert!(value("CREATE").starts_with("refused"), "{text}");
    assert!(value("WRITE").starts_with("refused"), "{text}");
    assert_eq!(value("REMOVE"), "ok");
}
