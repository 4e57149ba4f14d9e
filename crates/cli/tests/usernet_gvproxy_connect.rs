//! `limanet attach --gvproxy-connect`: a namespace joins a network through a gvproxy-style
//! HTTP endpoint. gvproxy accepts one `-listen-qemu` connection only; further guests send
//! `POST /connect` to its `-listen` endpoint, which hijacks the connection and speaks QEMU's
//! stream framing on it. The endpoint here is a stand-in that checks the request and then
//! splices the connection into `limanet usernet --listen-qemu`, as gvproxy hands it to its
//! switch, so the guest's traffic must cross the handshake intact. Inside a private test host.

mod usernet_support;

use std::io::{BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;

use limanet_testkit::checksum::{sha256_reader, PatternReader};
use limanet_testkit::servers::HttpServer;
use limanet_testkit::{ChildGuard, Netns};
use usernet_support::*;

/// Reads an HTTP request head one byte at a time (nothing of the frames after it is consumed).
fn read_request_head(conn: &mut UnixStream) -> std::io::Result<String> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() > 4096 {
            return Err(std::io::Error::other("request head over 4 KiB"));
        }
        conn.read_exact(&mut byte)?;
        head.push(byte[0]);
    }
    Ok(String::from_utf8_lossy(&head).into_owned())
}

/// Serves one connection on `endpoint`: reports its request head, then, if it is a
/// `POST /connect`, copies bytes both ways between it and `network` until either side closes.
fn fake_gvproxy_endpoint(endpoint: &Path, network: &Path) -> mpsc::Receiver<String> {
    let listener = UnixListener::bind(endpoint).expect("bind endpoint");
    let network = network.to_path_buf();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || -> std::io::Result<()> {
        let (mut client, _) = listener.accept()?;
        let head = read_request_head(&mut client)?;
        let connect = head.starts_with("POST /connect HTTP/1.1\r\n");
        let _ = tx.send(head);
        if !connect {
            return Ok(());
        }
        let mut upstream = UnixStream::connect(&network)?;
        let (mut client_rx, mut upstream_tx) = (client.try_clone()?, upstream.try_clone()?);
        std::thread::spawn(move || std::io::copy(&mut client_rx, &mut upstream_tx));
        std::io::copy(&mut upstream, &mut client)?;
        Ok(())
    });
    rx
}

#[test]
fn attach_gvproxy_connect_posts_connect_then_relays_frames() {
    let env = Env::new("gvconn");
    let guest = Netns::new("lngv").expect("netns");
    let sock = env.dir.join("qemu.sock");
    let daemon = env.usernet_daemon(|cmd| {
        cmd.args([
            "--mode",
            "user-v2",
            "--subnet",
            "192.168.104.0/24",
            "--listen-qemu",
        ])
        .arg(&sock);
    });

    let endpoint = env.dir.join("ep.sock");
    let requests = fake_gvproxy_endpoint(&endpoint, &sock);
    let mut attach = env.th.host.command(LIMANET);
    attach
        .args(["attach", "--gvproxy-connect", "--netns"])
        .arg(guest.path())
        .args([
            "--address",
            "192.168.104.20/24",
            "--gateway",
            "192.168.104.2",
        ])
        .arg(&endpoint);
    let relay = ChildGuard::spawn("limanet-attach", &mut attach).expect("spawn attach");
    let logs = || format!("{}\n--- attach ---\n{}", daemon.logs(), relay.logs());

    let head = requests
        .recv_timeout(Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("no request on the endpoint: {e}\n{}", logs()));
    assert!(
        head.starts_with("POST /connect HTTP/1.1\r\n"),
        "unexpected request: {head:?}"
    );
    guest
        .wait_for_addr([192, 168, 104, 20].into(), Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("tap0 not configured: {e}\n{}", logs()));

    // 4 MiB from the host's loopback through the gateway address, checked by SHA-256.
    let http =
        HttpServer::start(&env.th.host, SocketAddr::from(([127, 0, 0, 1], 0)), None).expect("http");
    let server = SocketAddr::from(([192, 168, 104, 2], http.addr().port()));
    let size = 4u64 << 20;
    let got = guest
        .run_in(move || -> std::io::Result<(String, u64)> {
            let mut s = TcpStream::connect_timeout(&server, Duration::from_secs(10))?;
            s.set_read_timeout(Some(Duration::from_secs(30)))?;
            write!(s, "GET /bytes/{size}?seed=7 HTTP/1.0\r\n\r\n")?;
            let mut r = BufReader::new(s);
            skip_headers(&mut r)?;
            sha256_reader(r)
        })
        .expect("run in guest")
        .unwrap_or_else(|e| panic!("download failed: {e}\n{}", logs()));
    assert_eq!(
        got,
        (PatternReader::new(7, size).sha256(), size),
        "{}",
        logs()
    );
}
