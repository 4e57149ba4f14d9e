//! TCP request/response latency, like netperf/neper TCP_RR and TCP_CRR, for the benchmarks.
//!
//! ```text
//! tcp-rr server ADDR              serve (echo every byte back) until killed
//! tcp-rr rr ADDR [SECONDS]        1-byte ping-pong on one connection
//! tcp-rr crr ADDR [SECONDS]       connect + 1-byte request/response + close, repeatedly
//! tcp-rr hold-server ADDR         accept connections and keep them open, idle, until killed
//! tcp-rr hold ADDR COUNT          open COUNT idle connections, print `held=COUNT`, wait to be killed
//! ```
//!
//! Clients print one line of `key=value` pairs, e.g.
//! `rr count=51234 mean_us=58.1 p50_us=55.0 p99_us=90.2 rate_per_s=17077`.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// Samples taken before measuring, so connection setup and cold caches don't count.
const WARMUP: usize = 100;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: tcp-rr server ADDR | tcp-rr rr ADDR [SECONDS] | tcp-rr crr ADDR [SECONDS] \
                 | tcp-rr hold-server ADDR | tcp-rr hold ADDR COUNT";
    let (Some(mode), Some(addr)) = (args.first(), args.get(1)) else {
        bail!("{usage}");
    };
    let addr: SocketAddr = addr
        .parse()
        .with_context(|| format!("invalid address {addr:?}"))?;
    if mode == "hold-server" {
        return hold_server(addr);
    }
    if mode == "hold" {
        let count = args.get(2).map(|c| c.parse::<usize>());
        let Some(Ok(count)) = count else {
            bail!("{usage}");
        };
        return hold(addr, count);
    }
    let seconds: f64 = match args.get(2) {
        Some(s) => s
            .parse()
            .with_context(|| format!("invalid seconds {s:?}"))?,
        None => 5.0,
    };
    let duration = Duration::from_secs_f64(seconds);
    match mode.as_str() {
        "server" => serve(addr),
        "rr" => report("rr", &rr(addr, duration)?, duration),
        "crr" => report("crr", &crr(addr, duration)?, duration),
        _ => bail!("{usage}"),
    }
}

fn serve(addr: SocketAddr) -> anyhow::Result<()> {
    let listener = TcpListener::bind(addr).with_context(|| format!("cannot bind {addr}"))?;
    for conn in listener.incoming() {
        let Ok(s) = conn else { continue };
        std::thread::spawn(move || {
            let _ = echo(s);
        });
    }
    Ok(())
}

fn echo(mut s: TcpStream) -> std::io::Result<()> {
    s.set_nodelay(true)?;
    let mut buf = [0u8; 4096];
    loop {
        let n = s.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        s.write_all(&buf[..n])?;
    }
}

/// Accepts connections on one thread and keeps every one of them, never reading: the host side
/// of the idle flows in the many-flows benchmark.
fn hold_server(addr: SocketAddr) -> anyhow::Result<()> {
    let listener = TcpListener::bind(addr).with_context(|| format!("cannot bind {addr}"))?;
    let mut held = Vec::new();
    for conn in listener.incoming() {
        match conn {
            Ok(s) => held.push(s),
            // Out of descriptors: keep serving what is held rather than spinning on accept.
            Err(err) => {
                eprintln!("accept: {err}");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
    Ok(())
}

/// Opens `count` connections to `addr` and keeps them open and idle until killed.
fn hold(addr: SocketAddr, count: usize) -> anyhow::Result<()> {
    let mut held = Vec::with_capacity(count);
    for i in 0..count {
        let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
            .with_context(|| format!("connection {} of {count} to {addr}", i + 1))?;
        held.push(s);
    }
    println!("held={}", held.len());
    std::io::stdout().flush().context("stdout")?;
    loop {
        std::thread::park();
    }
}

/// One 1-byte request and its 1-byte response on `s`.
fn ping(s: &mut TcpStream) -> anyhow::Result<()> {
    let mut b = [1u8];
    s.write_all(&b).context("send")?;
    s.read_exact(&mut b).context("receive")?;
    Ok(())
}

fn connect(addr: SocketAddr) -> anyhow::Result<TcpStream> {
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .with_context(|| format!("cannot connect to {addr}"))?;
    s.set_nodelay(true).context("TCP_NODELAY")?;
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .context("read timeout")?;
    Ok(s)
}

/// Latencies in nanoseconds of request/response pairs over one connection.
fn rr(addr: SocketAddr, duration: Duration) -> anyhow::Result<Vec<u64>> {
    let mut s = connect(addr)?;
    for _ in 0..WARMUP {
        ping(&mut s)?;
    }
    let mut samples = Vec::new();
    let end = Instant::now() + duration;
    while Instant::now() < end {
        let t = Instant::now();
        ping(&mut s)?;
        samples.push(t.elapsed().as_nanos() as u64);
    }
    Ok(samples)
}

/// Latencies in nanoseconds of connect + request/response + close.
fn crr(addr: SocketAddr, duration: Duration) -> anyhow::Result<Vec<u64>> {
    for _ in 0..WARMUP {
        ping(&mut connect(addr)?)?;
    }
    let mut samples = Vec::new();
    let end = Instant::now() + duration;
    while Instant::now() < end {
        let t = Instant::now();
        let mut s = connect(addr)?;
        ping(&mut s)?;
        drop(s);
        samples.push(t.elapsed().as_nanos() as u64);
    }
    Ok(samples)
}

fn report(kind: &str, samples: &[u64], duration: Duration) -> anyhow::Result<()> {
    if samples.is_empty() {
        bail!("{kind}: no samples");
    }
    let mut sorted = samples.to_vec();
    sorted.sort_unstable();
    let us = |ns: u64| ns as f64 / 1000.0;
    let pct = |p: f64| sorted[((sorted.len() - 1) as f64 * p).round() as usize];
    let mean = sorted.iter().sum::<u64>() as f64 / sorted.len() as f64 / 1000.0;
    println!(
        "{kind} count={} mean_us={mean:.1} p50_us={:.1} p99_us={:.1} rate_per_s={:.0}",
        sorted.len(),
        us(pct(0.50)),
        us(pct(0.99)),
        sorted.len() as f64 / duration.as_secs_f64()
    );
    Ok(())
}
