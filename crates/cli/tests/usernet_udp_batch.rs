//! Guest→host UDP floods leave limanet in batches: one `sendmmsg` per socket and round, and runs
//! of equal-sized datagrams as one UDP GSO send that the host kernel cuts apart again. These
//! tests send bursts of mixed sizes from a namespace guest (IPv4 and IPv6) and check that the
//! host receives every datagram whole, once, and in order.

mod usernet_support;

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use usernet_support::*;

/// Bursts of payload sizes: runs ended by a shorter datagram, a longer one that starts a new
/// run, sizes that all differ, runs longer than one GSO send may carry (64 datagrams, 64 KiB).
/// `max` is the largest payload that fits the MTU unfragmented.
fn bursts(max: usize) -> Vec<Vec<usize>> {
    vec![
        [vec![1400; 20], vec![700], vec![1400; 5]].concat(),
        [vec![64; 30], vec![max], vec![64; 10], vec![8]].concat(),
        (0..40).map(|i| 8 + i * 37).collect(),
        vec![max; 50],
        vec![64; 100],
        [vec![512; 3], vec![max; 2], vec![512; 3], vec![9, 9, 8]].concat(),
    ]
}

/// Payload `seq` of `len` (≥ 8) bytes: the sequence number, the length, then a pattern.
fn payload(seq: u32, len: usize) -> Vec<u8> {
    let mut p = Vec::with_capacity(len);
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(&(len as u32).to_be_bytes());
    p.extend((8..len).map(|i| (seq as usize * 7 + i) as u8));
    p
}

/// Sends the bursts from `tx` to `dst` (as the guest sees the host) and checks what `rx`
/// receives. Before them, one datagram at a time until one arrives (the guest resolves the
/// gateway first; an IPv6 guest may still wait for its route).
fn send_and_check(
    tx: &UdpSocket,
    dst: SocketAddr,
    max: usize,
    rx: &UdpSocket,
    logs: impl Fn() -> String,
) {
    rx.set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    let mut buf = vec![0u8; 65536];
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let _ = tx.send_to(&payload(u32::MAX, 8), dst);
        if let Ok(n) = rx.recv(&mut buf) {
            assert_eq!(&buf[..n], payload(u32::MAX, 8), "warm-up datagram");
            break;
        }
        assert!(Instant::now() < deadline, "no warm-up datagram\n{}", logs());
    }
    rx.set_read_timeout(Some(Duration::from_secs(3)))
        .expect("timeout");
    let mut seq = 0u32;
    for (i, sizes) in bursts(max).iter().enumerate() {
        let first = seq;
        for &len in sizes {
            tx.send_to(&payload(seq, len), dst).expect("guest send");
            seq += 1;
        }
        for (k, &len) in sizes.iter().enumerate() {
            let want = first + k as u32;
            let n = loop {
                match rx.recv(&mut buf) {
                    // A late copy of the warm-up datagram.
                    Ok(8) if buf[..4] == u32::MAX.to_be_bytes() => continue,
                    Ok(n) => break n,
                    Err(e) => panic!(
                        "burst {i}: datagram {want} ({len} B) missing: {e}\n{}",
                        logs()
                    ),
                }
            };
            assert_eq!(
                n,
                len,
                "burst {i}: datagram {want}: got {n} bytes (seq {:?}), want {len}\n{}",
                buf.get(..4),
                logs()
            );
            assert_eq!(buf[..n], payload(want, len), "burst {i}: datagram {want}");
        }
    }
}

/// A burst test from a fresh guest to a receiver bound to `host_bind` in the host netns, through
/// the gateway address `gateway`, with datagrams of up to `max_len` bytes.
fn bursts_through(tag: &str, host_bind: &str, guest_bind: &str, gateway: IpAddr, max_len: usize) {
    let env = Env::new(tag);
    let rx = env
        .th
        .host
        .run_in(|| UdpSocket::bind(host_bind))
        .expect("netns")
        .expect("bind receiver");
    let port = rx.local_addr().expect("addr").port();
    let u = env.usernet(&[]);
    let tx = u
        .guest()
        .run_in(|| UdpSocket::bind(guest_bind))
        .expect("netns")
        .expect("bind sender");
    send_and_check(&tx, SocketAddr::new(gateway, port), max_len, &rx, || {
        u.daemon.logs()
    });
}

/// IPv4: guest → 192.168.5.2 → the host's 127.0.0.1.
#[test]
fn udp_bursts_keep_boundaries_and_order_ipv4() {
    let gateway = IpAddr::from([192, 168, 5, 2]);
    bursts_through("udpb4", "127.0.0.1:0", "0.0.0.0:0", gateway, 1472);
}

/// IPv6: guest → [fd00:192:168:5::2] → the host's [::1].
#[test]
fn udp_bursts_keep_boundaries_and_order_ipv6() {
    let gateway: IpAddr = "fd00:192:168:5::2".parse().expect("addr");
    bursts_through("udpb6", "[::1]:0", "[::]:0", gateway, 1452);
}
