//! `limanet vmnet` (also run as `socket_vmnet`), `limanet vmnet-client`, `limanet attach` and
//! `limanet install-vmnet`. The daemon itself lives in the `limanet-vmnet` crate.

use anyhow::{bail, Context, Result};
use clap::Args as ClapArgs;
use limanet_netstack::stream_offload::{self, Kind, WIRE_HDR_LEN};
use limanet_netstack::wire::MacAddr;
use limanet_vmnet::Parsed;
use std::ffi::OsString;
use std::os::fd::{AsRawFd, IntoRawFd, OwnedFd};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tracing::{debug, info};

/// Runs the daemon with socket_vmnet's command line (`args` without argv[0]). Usage errors print
/// the message and the usage and exit 1, as socket_vmnet does.
pub fn run_daemon(argv0: &str, args: Vec<String>) -> Result<u8> {
    let opts = match limanet_vmnet::parse(args) {
        Ok(Parsed::Run(o)) => o,
        Ok(Parsed::Help) => {
            print!("{}", limanet_vmnet::usage(argv0));
            return Ok(0);
        }
        Ok(Parsed::Version) => {
            println!("{}", env!("CARGO_PKG_VERSION"));
            return Ok(0);
        }
        Err(e) => {
            eprintln!("ERROR: {e}");
            print!("{}", limanet_vmnet::usage(argv0));
            return Ok(1);
        }
    };
    limanet_vmnet::service::run(&opts)?;
    Ok(0)
}

/// `limanet vmnet-client SOCKET COMMAND [ARGS...]`.
#[derive(ClapArgs, Debug)]
#[command(trailing_var_arg = true)]
pub struct ClientArgs {
    /// The vmnet socket.
    pub socket: PathBuf,
    /// The command to run with the connection as fd 3 (a leading `--` is dropped).
    #[arg(allow_hyphen_values = true, num_args = 1.., required = true)]
    pub command: Vec<OsString>,
}

/// Connects, puts the connection on fd 3 (inherited, as socket_vmnet_client does) and execs.
pub fn client(args: ClientArgs) -> Result<u8> {
    let stream = match std::os::unix::net::UnixStream::connect(&args.socket) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("Failed to connect to \"{}\": {e}", args.socket.display());
            return Ok(1);
        }
    };
    let mut command = args.command;
    if command.first().is_some_and(|c| c == "--") {
        command.remove(0);
    }
    let Some((program, rest)) = command.split_first() else {
        bail!("no command given");
    };
    let fd = stream.into_raw_fd();
    // SAFETY: dup2/fcntl on descriptors we own; fd 3 is replaced on purpose.
    unsafe {
        if fd != 3 {
            if libc::dup2(fd, 3) < 0 {
                return Err(std::io::Error::last_os_error()).context("dup2 to fd 3");
            }
            libc::close(fd);
        } else {
            let flags = libc::fcntl(3, libc::F_GETFD);
            libc::fcntl(3, libc::F_SETFD, flags & !libc::FD_CLOEXEC);
        }
    }
    let err = std::process::Command::new(program).args(rest).exec();
    eprintln!("cannot run {}: {err}", program.to_string_lossy());
    Ok(1)
}

/// `limanet attach --netns PATH|PID SOCKET`.
#[derive(ClapArgs, Debug)]
pub struct AttachArgs {
    /// The network namespace: a path (/run/netns/NAME, /proc/PID/ns/net) or a PID.
    #[arg(long)]
    pub netns: String,
    /// Name of the TAP device created in the namespace.
    #[arg(long, default_value = "tap0")]
    pub tap_name: String,
    #[arg(long, default_value_t = 1500)]
    pub mtu: u16,
    /// Configure ADDRESS/PREFIX on the TAP (otherwise it is left up but unconfigured, e.g. for
    /// a DHCP client).
    #[arg(long, value_name = "IP/PREFIX", requires = "gateway")]
    pub address: Option<String>,
    /// Default route via this address (with --address).
    #[arg(long, value_name = "IP")]
    pub gateway: Option<std::net::Ipv4Addr>,
    /// SOCKET is a gvproxy HTTP endpoint (`gvproxy -listen unix://...`): ask it for a network
    /// connection with `POST /connect` before relaying frames. gvproxy accepts only one
    /// `-listen-qemu` connection; further guests join this way.
    #[arg(long)]
    pub gvproxy_connect: bool,
    /// Do not offer the stream protocol's offload extension: plain MTU-sized frames only.
    /// Without this flag, offloads are used when the server is a limanet one (vmnet,
    /// usernet) and answers the offer; other servers see one ignored frame.
    #[arg(long)]
    pub no_offload: bool,
    /// Relay frames even when the server offers to take the TAP itself (by default a vmnet
    /// daemon that offers it gets the TAP's descriptor and reads it directly; `attach` then
    /// only keeps the connection open).
    #[arg(long)]
    pub no_pass_tap: bool,
    /// A stream socket (QEMU framing): a vmnet socket, `limanet usernet --listen-qemu`, ...
    pub socket: PathBuf,
}

pub fn attach(args: AttachArgs) -> Result<u8> {
    let address = match (&args.address, args.gateway) {
        (Some(a), Some(gw)) => {
            let (ip, prefix) = crate::cmd::usernet::parse_subnet(a)
                .with_context(|| format!("invalid --address {a:?}"))?;
            Some((ip, prefix, gw))
        }
        _ => None,
    };
    let signals = limanet_vmnet::service::termination_signals()?;
    let stream = std::os::unix::net::UnixStream::connect(&args.socket)
        .with_context(|| format!("cannot connect to {}", args.socket.display()))?;
    if args.gvproxy_connect {
        request_gvproxy_connection(&stream)?;
    }
    let netns = limanet_runtime::open_netns(&args.netns)?;
    let mac = random_mac()?;
    let wanted = stream_offload::FEATURE_VNET_HDR_V1
        | if args.no_pass_tap {
            0
        } else {
            stream_offload::FEATURE_TAP_FD
        };
    let features = if args.no_offload {
        0
    } else {
        negotiate_offloads(&stream, mac, wanted, OFFLOAD_ACK_WAIT).context("offload negotiation")?
    };
    let offload = features & stream_offload::FEATURE_VNET_HDR_V1 != 0;
    let pass_tap = offload && features & stream_offload::FEATURE_TAP_FD != 0;
    let tap = limanet_runtime::create_tap_in(
        &netns,
        &limanet_runtime::TapConfig {
            name: args.tap_name.clone(),
            mtu: args.mtu,
            address,
            address6: None,
            // Only with a peer that speaks the virtio-net header too.
            offload,
            mac: Some(mac),
        },
    )
    .with_context(|| {
        format!(
            "cannot set up {} in network namespace {}",
            args.tap_name, args.netns
        )
    })?;
    info!(
        netns = %args.netns,
        tap = %args.tap_name,
        mac = %limanet_netstack::MacDisplay(tap.mac),
        socket = %args.socket.display(),
        offload,
        pass_tap,
        "attached"
    );
    if pass_tap {
        let record = tap_record(mac);
        limanet_runtime::sys::send_with_fd(stream.as_raw_fd(), &record, tap.fd.as_raw_fd())
            .context("cannot pass the TAP to the server")?;
        // Our copy goes: the server's is the TAP's last, so it vanishes with the connection.
        drop(tap);
        let why = wait_for_end(&stream, &signals)?;
        info!(reason = %why, "detached");
        return Ok(0);
    }
    if offload {
        limanet_runtime::set_vnet_hdr_len(&tap.fd, WIRE_HDR_LEN)?;
    }
    let why = limanet_vmnet::relay::relay(tap.fd, stream.into(), signals, offload)?;
    info!(reason = %why, "detached");
    Ok(0)
}

/// The record that goes with the TAP's descriptor.
fn tap_record(mac: MacAddr) -> Vec<u8> {
    let frame = stream_offload::build(
        Kind::TapFd,
        mac,
        stream_offload::FEATURE_VNET_HDR_V1 | stream_offload::FEATURE_TAP_FD,
    );
    let mut record = (frame.len() as u32).to_be_bytes().to_vec();
    record.extend_from_slice(&frame);
    record
}

/// Once the server has the TAP: waits until it closes the connection or a termination signal
/// arrives (then the connection closes with us, and the server drops the TAP).
fn wait_for_end(stream: &UnixStream, signals: &OwnedFd) -> Result<String> {
    use std::io::Read;
    let mut fds = [
        libc::pollfd {
            fd: stream.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        },
        libc::pollfd {
            fd: signals.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        },
    ];
    loop {
        // SAFETY: polling two live descriptors through a local array.
        let rc = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
        if rc < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e.into());
        }
        if fds[1].revents != 0 {
            return Ok("termination signal".into());
        }
        if fds[0].revents != 0 {
            let mut b = [0u8; 256];
            return Ok(match (&*stream).read(&mut b) {
                Ok(0) => "the server closed the connection".into(),
                Ok(_) => "the server sent data after taking the TAP".into(),
                Err(e) => format!("connection: {e}"),
            });
        }
    }
}

/// How long `attach` waits for a server to answer its offload hello before going on plain.
const OFFLOAD_ACK_WAIT: Duration = Duration::from_secs(1);
/// How long a record the server started before the wait ran out may take to complete.
const MID_RECORD_GRACE: Duration = Duration::from_secs(5);
/// Largest record accepted while waiting (socket_vmnet's limit).
const MAX_WAIT_RECORD: usize = 64 * 1024;

/// A random locally administered unicast MAC for the TAP (the hello's source).
fn random_mac() -> Result<MacAddr> {
    let mut mac = [0u8; 6];
    // SAFETY: getrandom(2) writes at most mac.len() bytes into the buffer.
    let n = unsafe { libc::getrandom(mac.as_mut_ptr().cast(), mac.len(), 0) };
    if n != mac.len() as isize {
        return Err(std::io::Error::last_os_error()).context("getrandom");
    }
    mac[0] = (mac[0] & 0xfc) | 0x02;
    Ok(mac)
}

/// Offers the stream protocol's offload extension (a hello as the first frame) and waits up to
/// `wait` for the ack. Frames the server sends before the ack are plain and dropped (nothing is
/// attached yet). Reads exactly one record at a time, so whatever follows the ack stays in the
/// socket for the relay. Returns the features the ack grants (`wanted` at most); 0: no ack in
/// time (socket_vmnet, QEMU-style peers), stay plain.
fn negotiate_offloads(
    stream: &UnixStream,
    mac: MacAddr,
    wanted: u32,
    wait: Duration,
) -> Result<u32> {
    use std::io::{Read, Write};
    let hello = stream_offload::build(Kind::Hello, mac, wanted);
    let mut record = (hello.len() as u32).to_be_bytes().to_vec();
    record.extend_from_slice(&hello);
    let mut s = stream;
    s.write_all(&record)
        .context("cannot send the offload hello")?;
    let deadline = Instant::now() + wait;
    let mut pending: Vec<u8> = Vec::new();
    let mut need = 4;
    let mut chunk = vec![0u8; MAX_WAIT_RECORD + 4];
    let acked = loop {
        let now = Instant::now();
        let timeout = if now < deadline {
            deadline - now
        } else if pending.is_empty() {
            break 0;
        } else {
            MID_RECORD_GRACE
        };
        stream.set_read_timeout(Some(timeout))?;
        let n = match s.read(&mut chunk[..need - pending.len()]) {
            Ok(0) => bail!("the server closed the connection"),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                if !pending.is_empty() && Instant::now() >= deadline {
                    bail!("the server stalled in the middle of a frame");
                }
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        pending.extend_from_slice(&chunk[..n]);
        if pending.len() < need {
            continue;
        }
        if need == 4 {
            let len = u32::from_be_bytes([pending[0], pending[1], pending[2], pending[3]]) as usize;
            if len > MAX_WAIT_RECORD {
                bail!("the server sent a frame length of {len}");
            }
            if len == 0 {
                pending.clear();
            } else {
                need = 4 + len;
            }
            continue;
        }
        let ack = stream_offload::parse(&pending[4..])
            .filter(|c| c.kind == Kind::Ack && c.mac == mac)
            .map(|c| c.features & wanted);
        pending.clear();
        need = 4;
        if let Some(features) = ack {
            break features;
        }
        debug!("frame before the offload ack dropped");
    };
    stream.set_read_timeout(None)?;
    if acked == 0 {
        info!("the server did not answer the offload offer: plain frames");
    }
    Ok(acked)
}

/// Turns a connection to a gvproxy endpoint into a frame stream: gvproxy hijacks the HTTP
/// connection of a `POST /connect` and speaks its network protocol (QEMU framing when it runs
/// with `-listen-qemu`) on it, without a response.
fn request_gvproxy_connection(mut stream: &std::os::unix::net::UnixStream) -> Result<()> {
    use std::io::Write;
    stream
        .write_all(b"POST /connect HTTP/1.1\r\nHost: gvproxy\r\nContent-Length: 0\r\n\r\n")
        .context("cannot send POST /connect")?;
    // gvproxy drops whatever its HTTP reader buffered past the request, so the first frame
    // must not arrive together with it.
    std::thread::sleep(std::time::Duration::from_millis(200));
    Ok(())
}

/// `limanet install-vmnet [--prefix DIR]`.
#[derive(ClapArgs, Debug)]
pub struct InstallArgs {
    /// Install as DIR/socket_vmnet instead of the default location
    /// (/usr/local/libexec/limanet/socket_vmnet, where networks.yaml's paths.socketVMNet looks).
    #[arg(long, value_name = "DIR")]
    pub prefix: Option<PathBuf>,
}

/// Copies the running binary to a root-owned 0755 `socket_vmnet` (a real file, no symlink),
/// creating missing directories root-owned 0755, so Lima's path-security rules accept it.
pub fn install(args: InstallArgs) -> Result<u8> {
    let dir = args.prefix.unwrap_or_else(|| {
        Path::new(limanet_config::networks::DEFAULT_SOCKET_VMNET)
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("/usr/local/libexec/limanet"))
    });
    if !dir.is_absolute() {
        bail!("--prefix must be an absolute path");
    }
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        bail!("install-vmnet must run as root (the daemon must be root-owned)");
    }
    let exe = std::fs::read_link("/proc/self/exe").context("cannot find the running binary")?;
    let mut created = Vec::new();
    let mut d = dir.as_path();
    while !d.exists() {
        created.push(d.to_path_buf());
        d = d.parent().unwrap_or(Path::new("/"));
    }
    for c in created.iter().rev() {
        std::fs::create_dir(c).with_context(|| format!("cannot create {}", c.display()))?;
        std::fs::set_permissions(c, std::fs::Permissions::from_mode(0o755))?;
    }
    let meta = std::fs::symlink_metadata(&dir)?;
    if !meta.is_dir() || meta.uid() != 0 || meta.mode() & 0o022 != 0 {
        bail!(
            "{} must be a root-owned directory that is not group- or world-writable",
            dir.display()
        );
    }
    let target = dir.join("socket_vmnet");
    let tmp = dir.join(format!(".socket_vmnet.tmp{}", std::process::id()));
    std::fs::copy(&exe, &tmp)
        .with_context(|| format!("cannot copy {} to {}", exe.display(), tmp.display()))?;
    let finish = (|| -> std::io::Result<()> {
        std::os::unix::fs::chown(&tmp, Some(0), Some(0))?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755))?;
        std::fs::rename(&tmp, &target)
    })();
    if let Err(e) = finish {
        let _ = std::fs::remove_file(&tmp);
        return Err(e).with_context(|| format!("cannot install {}", target.display()));
    }
    println!("installed {}", target.display());
    if target != Path::new(limanet_config::networks::DEFAULT_SOCKET_VMNET) {
        println!(
            "set `paths: socketVMNet: {}` in networks.yaml to use it",
            target.display()
        );
    }
    Ok(0)
}
