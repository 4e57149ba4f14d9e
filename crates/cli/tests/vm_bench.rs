//! The VM rows of the benchmark (run by `bench/vm.sh`, ignored in normal test runs): the same
//! busybox QEMU guest under TCG, the same command line apart from the netdev, on QEMU's own
//! `-netdev user`, on `limanet usernet --listen-qemu` (stream) and on
//! `limanet usernet --listen-vhost-user`. The guest has no iperf3 (the test initramfs holds a
//! static busybox only), so each direction is a single TCP stream of zeros for
//! `BENCH_SECONDS` (default 5): guest → host is `nc` fed from `/dev/zero`, counted by a sink on
//! the host's 127.0.0.1; host → guest is an HTTP response of zeros from the host, read by the
//! guest's `wget -O /dev/null` (one process), counted by the host and timed in the guest with
//! `/proc/uptime` (all of it has arrived when wget exits).
//!
//! Prints one `BENCH-ROW <mode> <direction> <Mbit/s> <bytes> <seconds>` line per cell.
//! `LIMANET_BIN` picks the limanet binary (default: this build's), `BENCH_LIMANET_ARGS` adds
//! `limanet usernet` options (A/B runs).

mod usernet_support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use limanet_testkit::{wait_for_path, ChildGuard, QemuGuest, QemuOptions};
use usernet_support::*;

fn seconds() -> u64 {
    std::env::var("BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5)
}

/// Counts the bytes of every connection: (bytes, seconds from the first byte to EOF).
fn start_sink(listener: TcpListener) -> mpsc::Receiver<(u64, f64)> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let tx = tx.clone();
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 1 << 20];
                let mut total = 0u64;
                let mut first: Option<Instant> = None;
                while let Ok(n) = conn.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    first.get_or_insert_with(Instant::now);
                    total += n as u64;
                }
                let secs = first.map_or(0.0, |t| t.elapsed().as_secs_f64());
                let _ = tx.send((total, secs));
            });
        }
    });
    rx
}

/// Answers every HTTP request with zeros for `secs` (HTTP/1.0, delimited by the close), so
/// the guest's busybox `wget -O /dev/null` reads them in one process; reports the bytes sent.
fn start_source(listener: TcpListener, secs: u64) -> mpsc::Receiver<u64> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let tx = tx.clone();
            std::thread::spawn(move || {
                let mut request = Vec::new();
                let mut byte = [0u8; 1];
                while !request.ends_with(b"\r\n\r\n") && conn.read(&mut byte).is_ok_and(|n| n == 1)
                {
                    request.push(byte[0]);
                }
                if conn.write_all(b"HTTP/1.0 200 OK\r\n\r\n").is_err() {
                    return;
                }
                let buf = vec![0u8; 256 << 10];
                let start = Instant::now();
                let mut total = 0u64;
                while start.elapsed() < Duration::from_secs(secs) {
                    if conn.write_all(&buf).is_err() {
                        break;
                    }
                    total += buf.len() as u64;
                }
                let _ = tx.send(total);
            });
        }
    });
    rx
}

struct Mode {
    name: &'static str,
    /// Extra `limanet usernet` arguments (none: QEMU's own user networking).
    limanet: Option<Vec<String>>,
    gateway: &'static str,
    nic: QemuOptions,
}

#[test]
#[ignore]
fn vm_throughput_rows() {
    let env = Env::new("vmbench");
    let secs = seconds();
    let bind = |port| {
        env.th
            .host
            .run_in(move || TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], port))))
            .expect("enter netns")
            .expect("bind")
    };
    let sink = bind(0);
    let sink_port = sink.local_addr().expect("addr").port();
    let sink_results = start_sink(sink);
    let source = bind(0);
    let source_port = source.local_addr().expect("addr").port();
    let source_results = start_source(source, secs);

    let stream = env.dir.join("stream.sock");
    let vhost = env.dir.join("vhost.sock");
    // Identical guests: shared memfd RAM and legacy interrupts for all (vhost-user needs the
    // first; QEMU 7.2 under TCG crashes starting vhost with MSI-X, see usernet_vhost.rs).
    let base = QemuOptions {
        timeout: Duration::from_secs(120),
        netns: Some(env.th.host.name().to_string()),
        shared_memory: true,
        ..Default::default()
    };
    let modes = [
        Mode {
            name: "qemu-user",
            limanet: None,
            gateway: "10.0.2.2",
            nic: base.clone().with_nic_args(&[], "user", "vectors=0", None),
        },
        Mode {
            name: "limanet-stream",
            limanet: Some(vec![
                "--listen-qemu".into(),
                stream.to_string_lossy().into_owned(),
            ]),
            gateway: "192.168.5.2",
            nic: base.clone().with_nic_args(
                &[],
                &format!(
                    "stream,server=off,addr.type=unix,addr.path={}",
                    stream.display()
                ),
                "vectors=0",
                None,
            ),
        },
        Mode {
            name: "limanet-vhost-user",
            limanet: Some(vec![
                "--listen-vhost-user".into(),
                vhost.to_string_lossy().into_owned(),
            ]),
            gateway: "192.168.5.2",
            nic: base.clone().with_nic_args(
                &[
                    "-chardev",
                    &format!("socket,id=c0,path={}", vhost.display()),
                ],
                "vhost-user,chardev=c0",
                "vectors=0",
                None,
            ),
        },
    ];
    let only = std::env::var("BENCH_MODES").unwrap_or_default();
    let bin = std::env::var("LIMANET_BIN").unwrap_or_else(|_| LIMANET.to_string());
    // Extra `limanet usernet` options for A/B runs, e.g. `--busy-poll 0`.
    let extra = std::env::var("BENCH_LIMANET_ARGS").unwrap_or_default();
    for mode in modes {
        if !only.is_empty() && !only.split_whitespace().any(|m| m == mode.name) {
            continue;
        }
        let pidfile = env.dir.join(&format!("{}.pid", mode.name));
        let daemon = mode.limanet.as_ref().map(|args| {
            let mut cmd = env.th.host.command(&bin);
            cmd.arg("usernet")
                .args(["--dns-upstream", "127.0.0.1:53", "--resolv-conf"])
                .arg(&env.resolv)
                .args(args)
                .args(extra.split_whitespace())
                .arg("--pidfile")
                .arg(&pidfile);
            let d = ChildGuard::spawn("limanet-usernet", &mut cmd).expect("spawn usernet");
            if let Err(e) = wait_for_path(&pidfile, Duration::from_secs(20)) {
                panic!("limanet usernet did not start: {e}\n{}", d.logs());
            }
            d
        });
        let gw = mode.gateway;
        // LIMANET-DIAG: what the guest saw per direction (eth0 packets and bytes as its
        // stack counts them, i.e. TSO/GRO super-segments, and interrupts of its virtio
        // devices) and the offload features its driver acked.
        let script = format!(
            "diag() {{ set -- $(grep eth0: /proc/net/dev | tr ':' ' '); \
               i=$(grep -i virtio /proc/interrupts | awk '{{s+=$2}} END {{print s+0}}'); \
               echo \"$2 $3 ${{10}} ${{11}} $i\"; }}\n\
             d0=$(diag)\n\
             timeout {secs} nc {gw} {sink_port} < /dev/zero\n\
             d1=$(diag)\n\
             sleep 1\n\
             d2=$(diag)\n\
             a=$(cut -d' ' -f1 /proc/uptime)\n\
             wget -q -O /dev/null http://{gw}:{source_port}/\n\
             b=$(cut -d' ' -f1 /proc/uptime)\n\
             d3=$(diag)\n\
             echo LIMANET-RX start=$a end=$b\n\
             echo LIMANET-DIAG g-h $d0 $d1\n\
             echo LIMANET-DIAG h-g $d2 $d3\n\
             echo LIMANET-DIAG features $(cat /sys/bus/virtio/devices/*/features 2>/dev/null | tr '\\n' ' ')\n"
        );
        let opts = QemuOptions { script, ..mode.nic };
        let out = QemuGuest::spawn(&opts).expect("run guest");
        if let Err(e) = out.check() {
            let logs = daemon.as_ref().map(|d| d.logs()).unwrap_or_default();
            panic!("{} guest failed: {e}\n{logs}", mode.name);
        }
        if let Some(mut d) = daemon {
            // Stopping it logs the network's counters (frames, software segmentation...).
            d.terminate();
            if let Some(stats) = d.logs().lines().find(|l| l.contains("network statistics")) {
                println!("BENCH-STATS {} {}", mode.name, stats.trim());
            }
        }
        let (bytes, secs_up) = sink_results
            .recv_timeout(Duration::from_secs(10))
            .expect("sink result");
        row(mode.name, "g->h", bytes, secs_up);
        let line = out
            .console
            .lines()
            .find_map(|l| l.trim().strip_prefix("LIMANET-RX "))
            .unwrap_or_else(|| panic!("no RX line\n{}", out.console))
            .to_string();
        let field = |k: &str| -> f64 {
            line.split_whitespace()
                .find_map(|f| f.strip_prefix(&format!("{k}=")))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0.0)
        };
        for diag in out
            .console
            .lines()
            .filter_map(|l| l.trim().strip_prefix("LIMANET-DIAG "))
        {
            println!("BENCH-DIAG {} {}", mode.name, describe_diag(diag));
        }
        let sent = source_results
            .recv_timeout(Duration::from_secs(10))
            .expect("source result");
        row(mode.name, "h->g", sent, field("end") - field("start"));
    }
}

fn row(mode: &str, dir: &str, bytes: u64, secs: f64) {
    let mbit = if secs > 0.0 {
        bytes as f64 * 8.0 / secs / 1e6
    } else {
        0.0
    };
    println!("BENCH-ROW {mode} {dir} {mbit:.0} {bytes} {secs:.2}");
}

/// `g-h|h-g RXB RXP TXB TXP IRQ (before) RXB RXP TXB TXP IRQ (after)` as deltas with average
/// packet sizes; other lines as they are.
fn describe_diag(line: &str) -> String {
    let f: Vec<&str> = line.split_whitespace().collect();
    let n: Vec<u64> = f.iter().skip(1).filter_map(|v| v.parse().ok()).collect();
    if n.len() != 10 {
        return line.to_string();
    }
    let d = |i: usize| n[i + 5].saturating_sub(n[i]);
    let avg = |b: u64, p: u64| b.checked_div(p).unwrap_or(0);
    format!(
        "{} guest-rx {} pkts avg {} B, guest-tx {} pkts avg {} B, virtio irqs {}",
        f[0],
        d(1),
        avg(d(0), d(1)),
        d(3),
        avg(d(2), d(3)),
        d(4)
    )
}
