//! API latency: p50/p99 of the requests Lima's hostagent makes, over one keep-alive connection
//! on a running daemon's endpoint (as Go's http.Client reuses its connection).
//!
//! `cargo run --release -p limanet-api --example api_latency -- EP.sock GUEST_IP [ROUNDS]`
//!
//! Measures `GET /services/dhcp/leases`, `POST /services/dns/add` (a one-record zone, merged
//! into the same zone every round), and an expose followed by an unexpose of a TCP forward on a
//! loopback port. Prints one markdown table row per request kind.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

struct Client {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Client {
    fn connect(path: &str) -> std::io::Result<Client> {
        let s = UnixStream::connect(path)?;
        Ok(Client {
            reader: BufReader::new(s.try_clone()?),
            writer: s,
        })
    }

    /// One request; returns the status.
    fn request(&mut self, method: &str, path: &str, body: &str) -> std::io::Result<u16> {
        write!(
            self.writer,
            "{method} {path} HTTP/1.1\r\nHost: lima\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )?;
        let mut line = String::new();
        self.reader.read_line(&mut line)?;
        let status = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| std::io::Error::other(format!("bad status line {line:?}")))?;
        let mut length = 0usize;
        loop {
            line.clear();
            self.reader.read_line(&mut line)?;
            let header = line.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((k, v)) = header.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    length = v.trim().parse().unwrap_or(0);
                }
            }
        }
        let mut body = vec![0u8; length];
        self.reader.read_exact(&mut body)?;
        Ok(status)
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn measure(
    label: &str,
    rounds: usize,
    mut one: impl FnMut(usize) -> std::io::Result<()>,
) -> std::io::Result<()> {
    // Warm-up: connection, allocations, page faults.
    for i in 0..rounds / 10 {
        one(i)?;
    }
    let mut samples = Vec::with_capacity(rounds);
    for i in 0..rounds {
        let t = Instant::now();
        one(i)?;
        samples.push(t.elapsed());
    }
    samples.sort();
    println!(
        "| {label} | {rounds} | {:.0} | {:.0} | {:.0} |",
        percentile(&samples, 0.5).as_secs_f64() * 1e6,
        percentile(&samples, 0.99).as_secs_f64() * 1e6,
        samples.iter().sum::<Duration>().as_secs_f64() * 1e6 / rounds as f64,
    );
    Ok(())
}

fn main() -> std::io::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 3 {
        eprintln!("usage: api_latency EP.sock GUEST_IP [ROUNDS]");
        std::process::exit(2);
    }
    let (ep, guest) = (&args[1], &args[2]);
    let rounds: usize = args.get(3).and_then(|r| r.parse().ok()).unwrap_or(1000);
    let mut c = Client::connect(ep)?;
    let check = |status: u16, what: &str| {
        if status == 200 {
            Ok(())
        } else {
            Err(std::io::Error::other(format!("{what}: status {status}")))
        }
    };
    println!("| request | n | p50 µs | p99 µs | mean µs |");
    println!("|---|---|---|---|---|");
    measure("GET /services/dhcp/leases", rounds, |_| {
        check(c.request("GET", "/services/dhcp/leases", "")?, "leases")
    })?;
    measure("POST /services/dns/add", rounds, |i| {
        let body = format!(
            r#"{{"Name":"bench.","Records":[{{"Name":"vm{}","IP":"{guest}"}}]}}"#,
            i % 16
        );
        check(c.request("POST", "/services/dns/add", &body)?, "dns/add")
    })?;
    measure("expose + unexpose (tcp)", rounds, |i| {
        let local = format!("127.0.0.1:{}", 42000 + (i % 1000));
        let body = format!(r#"{{"local":"{local}","remote":"{guest}:22","protocol":"tcp"}}"#);
        check(
            c.request("POST", "/services/forwarder/expose", &body)?,
            "expose",
        )?;
        let body = format!(r#"{{"local":"{local}","protocol":"tcp"}}"#);
        check(
            c.request("POST", "/services/forwarder/unexpose", &body)?,
            "unexpose",
        )
    })?;
    Ok(())
}
