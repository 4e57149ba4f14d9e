//! A minimal, fast upstream for benchmarks (bench/dns): answers every UDP query with one record
//! of the asked type pointing at the question (A 192.0.2.1 for A, a PTR/CNAME/NS to
//! `stub.bench.` for those types, an empty NOERROR otherwise). Blocking, one thread, two
//! syscalls per query, so it is not the bottleneck of what it serves.
//!
//! Usage: `bench_stub ADDR:PORT`

use std::net::UdpSocket;

fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:5300".into());
    let sock = UdpSocket::bind(&addr)?;
    eprintln!("bench_stub listening on {}", sock.local_addr()?);
    let mut buf = [0u8; 4096];
    let mut out = Vec::with_capacity(1024);
    loop {
        let (n, peer) = match sock.recv_from(&mut buf) {
            Ok(x) => x,
            Err(_) => continue,
        };
        if let Some(len) = reply(&buf[..n], &mut out) {
            let _ = sock.send_to(&out[..len], peer);
        }
    }
}

/// Builds the reply to `q` in `out`; None for anything that is not a one-question query.
fn reply(q: &[u8], out: &mut Vec<u8>) -> Option<usize> {
    if q.len() < 12 || q[2] & 0x80 != 0 || u16::from_be_bytes([q[4], q[5]]) != 1 {
        return None;
    }
    // Walk the question name.
    let mut i = 12;
    while *q.get(i)? != 0 {
        i += usize::from(q[i]) + 1;
    }
    let qtype = u16::from_be_bytes([*q.get(i + 1)?, *q.get(i + 2)?]);
    let end = i + 5;
    if end > q.len() {
        return None;
    }
    out.clear();
    out.extend_from_slice(&q[..end]);
    out[2] |= 0x80; // QR
    out[3] = 0x80; // RA, NOERROR
    out[6..12].fill(0);
    let rdata: Vec<u8> = match qtype {
        1 => vec![192, 0, 2, 1],
        2 | 5 | 12 => b"\x04stub\x05bench\x00".to_vec(),
        _ => return Some(out.len()),
    };
    out[7] = 1; // ANCOUNT
    out.extend_from_slice(&[0xc0, 0x0c]);
    out.extend_from_slice(&qtype.to_be_bytes());
    out.extend_from_slice(&[0, 1, 0, 0, 0x01, 0x2c]);
    out.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
    out.extend_from_slice(&rdata);
    Some(out.len())
}
