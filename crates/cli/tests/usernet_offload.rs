//! Offloads for namespace guests (TAP with a virtio-net header, checksum and TSO offloads):
//! on by default, off with `--no-offload`; large transfers stay intact both ways, to the host
//! and to a guest without offloads on the same switch (whose frames limanet must cut and
//! checksum in software). Always inside a private test host (see usernet_support).

mod usernet_support;

use std::io::{BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::Duration;

use limanet_testkit::checksum::{sha256_reader, PatternReader};
use limanet_testkit::servers::HttpServer;
use limanet_testkit::{ChildGuard, Netns};
use usernet_support::*;

const SIZE: u64 = 64 << 20;

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// What `ethtool -k tap0` in `ns` says about `feature` ("on" or "off").
fn feature(ns: &Netns, feature: &str) -> String {
    let out = output_in(ns, "ethtool", &["-k", "tap0"]);
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{feature}: ")))
        .map(|v| v.split_whitespace().next().unwrap_or("").to_string())
        .unwrap_or_else(|| panic!("no {feature} in ethtool output: {text}"))
}

/// Downloads `SIZE` bytes of pattern `seed` from `server` inside `ns`: (sha256, length).
fn download(ns: &Netns, server: SocketAddr, seed: u64) -> std::io::Result<(String, u64)> {
    ns.run_in(move || -> std::io::Result<(String, u64)> {
        let mut s = TcpStream::connect_timeout(&server, Duration::from_secs(10))?;
        s.set_read_timeout(Some(Duration::from_secs(30)))?;
        write!(s, "GET /bytes/{SIZE}?seed={seed} HTTP/1.0\r\n\r\n")?;
        let mut r = BufReader::new(s);
        skip_headers(&mut r)?;
        sha256_reader(r)
    })
    .map_err(|e| std::io::Error::other(e.to_string()))?
}

/// Uploads `SIZE` bytes of pattern `seed` to `server` from inside `ns`; returns the sha256
/// the server computed.
fn upload(ns: &Netns, server: SocketAddr, seed: u64) -> std::io::Result<String> {
    ns.run_in(move || -> std::io::Result<String> {
        let mut s = TcpStream::connect_timeout(&server, Duration::from_secs(10))?;
        s.set_read_timeout(Some(Duration::from_secs(30)))?;
        write!(s, "POST /upload HTTP/1.0\r\nContent-Length: {SIZE}\r\n\r\n")?;
        std::io::copy(&mut PatternReader::new(seed, SIZE), &mut s)?;
        s.shutdown(Shutdown::Write)?;
        let mut r = BufReader::new(s);
        skip_headers(&mut r)?;
        let mut body = String::new();
        r.read_to_string(&mut body)?;
        Ok(body.trim().to_string())
    })
    .map_err(|e| std::io::Error::other(e.to_string()))?
}

/// Checks a download and an upload between `client` and `server`, both ways checked by
/// SHA-256; `what` and the daemon's logs explain a failure.
fn both_ways(client: &Netns, server: SocketAddr, seed: u64, what: &str, logs: impl Fn() -> String) {
    let (sha, len) = download(client, server, seed)
        .unwrap_or_else(|e| panic!("{what}: download failed: {e}\n{}", logs()));
    assert_eq!(len, SIZE, "{what}: download length");
    assert_eq!(
        sha,
        PatternReader::new(seed, SIZE).sha256(),
        "{what}: download content"
    );
    let reply = upload(client, server, seed + 1)
        .unwrap_or_else(|e| panic!("{what}: upload failed: {e}\n{}", logs()));
    assert_eq!(
        reply,
        PatternReader::new(seed + 1, SIZE).sha256(),
        "{what}: upload content"
    );
}

/// A namespace guest gets checksum offload and TSO on its TAP by default (none with
/// `--no-offload`), and 64 MiB go each way between it and the host's loopback intact.
#[test]
fn offloads_on_by_default_and_64_mib_each_way() {
    let env = Env::new("offl");
    let http = HttpServer::start(&env.th.host, loopback(0), None).expect("http");
    let server = SocketAddr::from(([192, 168, 5, 2], http.addr().port()));
    {
        let off = env.usernet(&["--no-offload"]);
        assert_eq!(feature(off.guest(), "tcp-segmentation-offload"), "off");
        assert_eq!(feature(off.guest(), "tx-checksumming"), "off");
    }
    let u = env.usernet(&[]);
    assert_eq!(feature(u.guest(), "tcp-segmentation-offload"), "on");
    assert_eq!(feature(u.guest(), "tx-checksumming"), "on");
    both_ways(u.guest(), server, 21, "guest <-> host", || u.daemon.logs());
}

/// One user-v2 network, three namespace guests: A on a TAP with offloads (limanet's own), B on
/// a TAP without, relayed by `limanet attach --no-offload` through the QEMU stream socket (as a
/// VM's frames arrive), C relayed by `limanet attach` with the stream protocol's offload
/// extension. TCP both ways, 64 MiB each way in each direction, checked by SHA-256: A's and C's
/// super-segments and partial checksums reach B as ordinary packets, and pass whole from C to A.
#[test]
fn guests_with_and_without_offloads_on_one_switch() {
    let env = Env::new("offmix");
    let a = Netns::new("lnoa").expect("netns a");
    let b = Netns::new("lnob").expect("netns b");
    let sock = env.dir.join("qemu.sock");
    let daemon = env.usernet_daemon(|cmd| {
        cmd.args([
            "--mode",
            "user-v2",
            "--subnet",
            "192.168.104.0/24",
            "--netns",
        ])
        .arg(a.path())
        .arg("--listen-qemu")
        .arg(&sock);
    });
    let a_ip = std::net::IpAddr::from([192, 168, 104, 1]);
    let b_ip = std::net::IpAddr::from([192, 168, 104, 20]);
    a.wait_for_addr(a_ip, Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("tap0 in A not configured: {e}\n{}", daemon.logs()));
    let mut attach = env.th.host.command(LIMANET);
    attach
        .args(["attach", "--netns"])
        .arg(b.path())
        .args([
            "--no-offload",
            "--address",
            "192.168.104.20/24",
            "--gateway",
            "192.168.104.2",
        ])
        .arg(&sock)
        .env("LIMANET_LOG", "debug");
    let relay = ChildGuard::spawn("limanet-attach", &mut attach).expect("spawn attach");
    b.wait_for_addr(b_ip, Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("tap0 in B not configured: {e}\n{}", relay.logs()));
    // C joins through the stream socket too, and negotiates the offload extension.
    let c = Netns::new("lnoc").expect("netns c");
    let c_ip = std::net::IpAddr::from([192, 168, 104, 30]);
    let mut attach_c = env.th.host.command(LIMANET);
    attach_c
        .args(["attach", "--netns"])
        .arg(c.path())
        .args([
            "--address",
            "192.168.104.30/24",
            "--gateway",
            "192.168.104.2",
        ])
        .arg(&sock)
        .env("LIMANET_LOG", "debug");
    let relay_c = ChildGuard::spawn("limanet-attach", &mut attach_c).expect("spawn attach");
    c.wait_for_addr(c_ip, Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("tap0 in C not configured: {e}\n{}", relay_c.logs()));
    assert_eq!(feature(&a, "tcp-segmentation-offload"), "on");
    assert_eq!(feature(&b, "tcp-segmentation-offload"), "off");
    assert_eq!(feature(&c, "tcp-segmentation-offload"), "on");
    let logs = || {
        format!(
            "{}\n--- attach B ---\n{}\n--- attach C ---\n{}",
            daemon.logs(),
            relay.logs(),
            relay_c.logs()
        )
    };

    let http_a = HttpServer::start(&a, SocketAddr::new(a_ip, 0), None).expect("http in A");
    let http_b = HttpServer::start(&b, SocketAddr::new(b_ip, 0), None).expect("http in B");
    // B downloads from A (A's super-segments, cut for B) and uploads to A.
    both_ways(&b, http_a.addr(), 31, "B <-> A", logs);
    // A downloads from B and uploads to B (A's super-segments again, the other way round).
    both_ways(&a, http_b.addr(), 41, "A <-> B", logs);
    // C (offloads over the stream socket) with B (none): the switch cuts C's super-segments.
    let http_c = HttpServer::start(&c, SocketAddr::new(c_ip, 0), None).expect("http in C");
    both_ways(&b, http_c.addr(), 51, "B <-> C", logs);
    // C with A: offloads on both ports, super-segments pass whole.
    both_ways(&c, http_a.addr(), 61, "C <-> A", logs);
    drop(relay_c);
    drop(relay);
    drop(daemon);
}
