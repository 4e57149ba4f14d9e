//! The frame transports of `limanet usernet`, spoken by hand: Lima's fd socket (a datagram
//! socket passed with SCM_RIGHTS), the datagram socket with vfkit's greeting, and the QEMU
//! stream socket facing a lying length header. Each test asks the gateway for its MAC address
//! with an ARP request, which the network answers without touching anything outside.

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const GUEST_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
/// QEMU slirp's convention, used by limanet: 52:55 followed by the gateway address.
const GATEWAY_MAC: [u8; 6] = [0x52, 0x55, 192, 168, 5, 2];

struct Daemon {
    child: Child,
    dir: PathBuf,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // SIGTERM first: a clean shutdown, as a user would stop it.
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn start(name: &str, listen_flag: &str) -> (Daemon, PathBuf) {
    start_with(name, listen_flag, &[])
}

fn start_with(name: &str, listen_flag: &str, extra: &[&str]) -> (Daemon, PathBuf) {
    let dir = std::env::temp_dir().join(format!("limanet-transport-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let sock = dir.join("net.sock");
    let pidfile = dir.join("net.pid");
    let child = Command::new(env!("CARGO_BIN_EXE_limanet"))
        .args([
            "usernet",
            "--no-dns",
            "--resolv-conf",
            "/dev/null",
            listen_flag,
        ])
        .arg(&sock)
        .arg("--pidfile")
        .arg(&pidfile)
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let daemon = Daemon { child, dir };
    wait_for(&pidfile);
    (daemon, sock)
}

fn wait_for(path: &Path) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !path.exists() {
        assert!(
            Instant::now() < deadline,
            "{} did not appear",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// An ARP request from the guest for 192.168.5.2.
fn arp_request() -> Vec<u8> {
    let mut f = vec![0xff; 6];
    f.extend_from_slice(&GUEST_MAC);
    f.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 1]);
    f.extend_from_slice(&GUEST_MAC);
    f.extend_from_slice(&[192, 168, 5, 15]);
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&[192, 168, 5, 2]);
    f
}

fn assert_arp_reply(frame: &[u8]) {
    assert!(frame.len() >= 42, "short reply: {frame:?}");
    assert_eq!(&frame[0..6], &GUEST_MAC, "reply goes to the guest");
    assert_eq!(&frame[12..14], &[0x08, 0x06], "ARP");
    assert_eq!(&frame[20..22], &[0, 2], "ARP reply");
    assert_eq!(&frame[22..28], &GATEWAY_MAC, "sender is the gateway");
    assert_eq!(&frame[28..32], &[192, 168, 5, 2]);
}

#[test]
fn lima_fd_socket_passes_a_datagram_socket() {
    let (_daemon, sock) = start("fd", "--listen-fd");
    let (ours, theirs) = UnixDatagram::pair().unwrap();
    let control = UnixStream::connect(&sock).unwrap();
    send_fd(&control, theirs.as_raw_fd());
    drop(theirs);
    ours.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    ours.send(&arp_request()).unwrap();
    let mut buf = [0u8; 2048];
    let n = ours
        .recv(&mut buf)
        .expect("ARP reply through the passed socket");
    assert_arp_reply(&buf[..n]);
}

#[test]
fn datagram_socket_accepts_vfkit_greeting() {
    let (daemon, sock) = start("dgram", "--listen-dgram");
    let local = daemon.dir.join("vfkit.sock");
    let client = UnixDatagram::bind(&local).unwrap();
    client.connect(&sock).unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    client.send(b"VFKT").unwrap();
    client.send(&arp_request()).unwrap();
    let mut buf = [0u8; 2048];
    let n = client.recv(&mut buf).expect("ARP reply to the bound peer");
    assert_arp_reply(&buf[..n]);
}

#[test]
fn lying_length_header_closes_only_that_connection() {
    let pcap = std::env::temp_dir().join(format!("limanet-transport-{}.pcap", std::process::id()));
    let pcap_arg = pcap.to_str().unwrap().to_string();
    let (daemon, sock) = start_with("stream", "--listen-qemu", &["--pcap", &pcap_arg]);
    let mut good = UnixStream::connect(&sock).unwrap();
    let mut liar = UnixStream::connect(&sock).unwrap();
    liar.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    // A header announcing more than any frame the MTU allows.
    liar.write_all(&100_000u32.to_be_bytes()).unwrap();
    let mut buf = [0u8; 16];
    assert_eq!(
        liar.read(&mut buf)
            .expect("the daemon closes the connection"),
        0
    );

    // A zero-length frame is skipped; the real frame after it is answered.
    let frame = arp_request();
    let mut bytes = 0u32.to_be_bytes().to_vec();
    bytes.extend_from_slice(&(frame.len() as u32).to_be_bytes());
    bytes.extend_from_slice(&frame);
    good.write_all(&bytes).unwrap();
    good.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut header = [0u8; 4];
    good.read_exact(&mut header).unwrap();
    let mut reply = vec![0u8; u32::from_be_bytes(header) as usize];
    good.read_exact(&mut reply).unwrap();
    assert_arp_reply(&reply);

    // The capture holds both frames, request and reply, once the daemon has shut down.
    drop(daemon);
    let capture = std::fs::read(&pcap).unwrap();
    let _ = std::fs::remove_file(&pcap);
    assert_eq!(&capture[..4], &0xa1b2_c3d4u32.to_le_bytes(), "pcap magic");
    assert_eq!(
        capture.len(),
        24 + 2 * 16 + frame.len() + reply.len(),
        "two records"
    );
    assert_eq!(&capture[24 + 16..24 + 16 + frame.len()], &frame[..]);
}

/// Sends one descriptor with SCM_RIGHTS, as Lima's Go client does: its "empty" payload goes out
/// as one dummy byte, because Linux drops ancillary data sent with no data on a stream socket.
fn send_fd(stream: &UnixStream, fd: i32) {
    let mut byte = [0u8; 1];
    let mut iov = libc::iovec {
        iov_base: byte.as_mut_ptr() as *mut libc::c_void,
        iov_len: 1,
    };
    let mut control = [0u64; 4];
    // SAFETY: building a control message for one descriptor in a zeroed msghdr.
    unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr() as *mut libc::c_void;
        msg.msg_controllen = libc::CMSG_SPACE(std::mem::size_of::<i32>() as u32) as _;
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<i32>() as u32) as _;
        std::ptr::write_unaligned(libc::CMSG_DATA(cmsg) as *mut i32, fd);
        assert!(
            libc::sendmsg(stream.as_raw_fd(), &msg, 0) >= 0,
            "sendmsg: {}",
            std::io::Error::last_os_error()
        );
    }
}
