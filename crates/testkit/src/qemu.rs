//! Real Linux guests under QEMU (TCG): direct kernel boot of the installed Debian cloud kernel
//! with a small initramfs (static busybox + the virtio-net modules) that configures the network
//! by DHCP, runs a per-test shell script and powers off.
//!
//! Console markers printed by the guest's `/init` (one per line):
//! - `LIMANET-BOOTED`: userspace is up, modules loaded;
//! - `LIMANET-LEASE ip=<a> mask=<n> router=<r> dns=<d,..> mtu=<m> domain=<s> search=<s,..>
//!   lease=<secs> serverid=<a>`: the DHCP lease applied (see [`crate::Lease`]);
//! - `LIMANET-DHCP=ok` or `LIMANET-DHCP=fail`;
//! - `LIMANET-TEST-EXIT=<code>`: `/test.sh` finished with that exit code.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use crate::cpio::CpioWriter;
use crate::dhcp::Lease;
use crate::error::IoContext;
use crate::process::{describe, scratch_dir};
use crate::{ChildGuard, Error, Result};

/// Modules for virtio-net, in load order. Missing ones are assumed to be built in.
const MODULES: &[&str] = &[
    "kernel/drivers/virtio/virtio_ring.ko",
    "kernel/drivers/virtio/virtio.ko",
    "kernel/drivers/virtio/virtio_pci_modern_dev.ko",
    "kernel/drivers/virtio/virtio_pci_legacy_dev.ko",
    "kernel/drivers/virtio/virtio_pci.ko",
    "kernel/net/core/failover.ko",
    "kernel/drivers/net/net_failover.ko",
    "kernel/drivers/net/virtio_net.ko",
];

const BUSYBOX: &str = "/bin/busybox";

const INIT: &str = r#"#!/bin/sh
export PATH=/bin:/sbin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev 2>/dev/null
mkdir -p /dev/pts /tmp /run
for m in $(cat /lib/modules/order); do
  insmod "/lib/modules/$m" || echo "LIMANET-INSMOD-FAILED=$m"
done
ip link set lo up
# Drivers probe asynchronously: give eth0 a moment to appear.
i=0
while [ ! -e /sys/class/net/eth0 ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i+1)); done
for d in /sys/class/net/eth*; do
  [ -e "$d" ] && ip link set "${d##*/}" up
done
echo LIMANET-BOOTED
if [ -e /sys/class/net/eth0 ] && ! grep -q 'limanet.dhcp=0' /proc/cmdline; then
  if udhcpc -i eth0 -s /udhcpc.script -q -n -t 10 -T 1 -O mtu -O search; then
    echo LIMANET-DHCP=ok
  else
    echo LIMANET-DHCP=fail
  fi
fi
if [ -f /test.sh ]; then
  sh /test.sh
  code=$?
else
  code=0
fi
echo "LIMANET-TEST-EXIT=$code"
# Let the serial line drain before the machine disappears.
sleep 0.2
poweroff -f
"#;

/// What to run and how.
#[derive(Debug, Clone)]
pub struct QemuOptions {
    /// Raw QEMU arguments for the network, e.g.
    /// `["-netdev", "user,id=n0", "-device", "virtio-net-pci,netdev=n0"]`. Without any, the
    /// guest has no network device (`-nodefaults` is always passed, so QEMU adds none).
    pub netdevs: Vec<String>,
    /// Shell script run as `/test.sh` after network setup; its exit code is reported.
    pub script: String,
    /// Guest memory in MiB (default 256).
    pub memory_mb: u32,
    /// The guest is killed after this long (default 60 s).
    pub timeout: Duration,
    /// Run `udhcpc` on eth0 before the script (default true).
    pub dhcp: bool,
    /// Run QEMU inside this network namespace (`ip netns exec <name>`), e.g. a
    /// [`crate::Netns::name`], so `-netdev user`/`tap` traffic stays in the test's namespace.
    pub netns: Option<String>,
    /// Extra kernel command line.
    pub append: String,
    /// Back guest RAM with a shared memfd (`memory-backend-memfd,share=on`), as vhost-user
    /// backends need to reach the virtqueues (default false).
    pub shared_memory: bool,
}

impl Default for QemuOptions {
    fn default() -> Self {
        QemuOptions {
            netdevs: Vec::new(),
            script: String::new(),
            memory_mb: 256,
            timeout: Duration::from_secs(60),
            dhcp: true,
            netns: None,
            append: String::new(),
            shared_memory: false,
        }
    }
}

impl QemuOptions {
    /// Adds a virtio-net NIC backed by `-netdev <backend>,id=nN` (N counts the NICs added so
    /// far), e.g. `with_nic("stream,addr.type=unix,addr.path=/run/x.sock", Some("52:55:55:12:34:56"))`
    /// or `with_nic("user,net=10.0.2.0/24", None)`. The first NIC is eth0 in the guest.
    pub fn with_nic(self, backend: &str, mac: Option<&str>) -> Self {
        self.with_nic_args(&[], backend, "", mac)
    }

    /// [`QemuOptions::with_nic`] with arguments the backend needs before its `-netdev` (e.g. a
    /// vhost-user chardev) and extra `virtio-net-pci` properties (e.g. `vectors=0`):
    /// `with_nic_args(&["-chardev", "socket,id=c0,path=/run/x.sock"], "vhost-user,chardev=c0",
    /// "vectors=0", None)` (with [`QemuOptions::shared_memory`]).
    pub fn with_nic_args(
        mut self,
        before: &[&str],
        backend: &str,
        device_props: &str,
        mac: Option<&str>,
    ) -> Self {
        self.netdevs.extend(before.iter().map(|a| a.to_string()));
        let id = format!(
            "n{}",
            self.netdevs.iter().filter(|a| *a == "-netdev").count()
        );
        let mut device = format!("virtio-net-pci,netdev={id}");
        if !device_props.is_empty() {
            device.push(',');
            device.push_str(device_props);
        }
        if let Some(mac) = mac {
            device.push_str(",mac=");
            device.push_str(mac);
        }
        self.netdevs.extend([
            "-netdev".to_string(),
            format!("{backend},id={id}"),
            "-device".to_string(),
            device,
        ]);
        self
    }
}

/// What a finished guest printed and returned.
#[derive(Debug, Clone)]
pub struct GuestOutput {
    /// Everything on the serial console (CRs removed).
    pub console: String,
    /// The exit code of `/test.sh`, if the guest got that far.
    pub exit_code: Option<i32>,
    /// True if the guest was killed at the timeout.
    pub timed_out: bool,
}

impl GuestOutput {
    /// The DHCP lease the guest applied (first `LIMANET-LEASE` line), if any.
    pub fn parsed_lease(&self) -> Option<Lease> {
        Lease::parse(&self.console)
    }

    /// The value of the first `LIMANET-LEASE` field `key` (`ip`, `mask`, `router`, `dns`, `mtu`,
    /// `domain`), if a lease was applied.
    pub fn lease(&self, key: &str) -> Option<String> {
        let line = self
            .console
            .lines()
            .find_map(|l| l.trim().strip_prefix("LIMANET-LEASE "))?;
        let prefix = format!("{key}=");
        line.split_whitespace()
            .find_map(|f| f.strip_prefix(&prefix))
            .map(str::to_string)
    }

    /// Ok if `/test.sh` exited 0; otherwise an error carrying the whole console.
    pub fn check(&self) -> Result<()> {
        if self.exit_code == Some(0) {
            return Ok(());
        }
        let why = if self.timed_out {
            "timed out".to_string()
        } else {
            match self.exit_code {
                Some(c) => format!("test script exited {c}"),
                None => "guest stopped before the test script finished".to_string(),
            }
        };
        Err(Error::Guest {
            reason: why,
            console: self.console.clone(),
        })
    }
}

/// The kernel and initramfs base, built once per process.
#[derive(Debug)]
struct Base {
    kernel: PathBuf,
    initramfs: Arc<Vec<u8>>,
}

fn base() -> Result<&'static Base> {
    static BASE: OnceLock<std::result::Result<Base, String>> = OnceLock::new();
    BASE.get_or_init(|| build_base().map_err(|e| e.to_string()))
        .as_ref()
        .map_err(|e| Error::Environment(format!("cannot build the guest initramfs: {e}")))
}

/// Finds `/boot/vmlinuz-<ver>-cloud-amd64` (the newest if several) and its module directory.
pub fn find_kernel() -> Result<(PathBuf, PathBuf)> {
    let entries = std::fs::read_dir("/boot").ctx(|| "cannot list /boot".to_string())?;
    let mut versions: Vec<String> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().into_string().ok())
        .filter_map(|n| n.strip_prefix("vmlinuz-").map(str::to_string))
        .filter(|v| v.ends_with("-cloud-amd64"))
        .collect();
    versions.sort();
    let Some(ver) = versions.pop() else {
        return Err(Error::Environment(
            "no /boot/vmlinuz-*-cloud-amd64: install linux-image-cloud-amd64 (scripts/install-deps)"
                .into(),
        ));
    };
    Ok((
        PathBuf::from(format!("/boot/vmlinuz-{ver}")),
        PathBuf::from(format!("/lib/modules/{ver}")),
    ))
}

fn build_base() -> Result<Base> {
    let (kernel, moddir) = find_kernel()?;
    let busybox =
        std::fs::read(BUSYBOX).ctx(|| format!("cannot read {BUSYBOX} (install busybox-static)"))?;
    let applets = crate::process::run(Command::new(BUSYBOX).arg("--list"))?;

    let mut w = CpioWriter::new();
    for d in [
        "bin", "sbin", "dev", "proc", "sys", "tmp", "run", "etc", "root", "var", "lib",
    ] {
        w.dir(d);
    }
    w.dir("lib/modules");
    w.char_dev("dev/console", 0o600, 5, 1);
    w.char_dev("dev/null", 0o666, 1, 3);
    w.file("bin/busybox", 0o755, &busybox);
    for a in applets.split_whitespace() {
        if a != "busybox" {
            w.symlink(&format!("bin/{a}"), "busybox");
        }
    }
    let mut order = String::new();
    for m in MODULES {
        let path = moddir.join(m);
        let Some(file) = path.file_name().and_then(|f| f.to_str()) else {
            continue;
        };
        match read_module(&path)? {
            Some(data) => {
                w.file(&format!("lib/modules/{file}"), 0o644, &data);
                order.push_str(file);
                order.push('\n');
            }
            // A module that is not there is built into the kernel.
            None => tracing::debug!(module = %path.display(), "not found, assuming built in"),
        }
    }
    w.file("lib/modules/order", 0o644, order.as_bytes());
    w.file("init", 0o755, INIT.as_bytes());
    w.file(
        "udhcpc.script",
        0o755,
        crate::dhcp::UDHCPC_SCRIPT.as_bytes(),
    );
    w.file("etc/resolv.conf", 0o644, b"");
    w.file("etc/passwd", 0o644, b"root:x:0:0:root:/root:/bin/sh\n");
    w.file("etc/group", 0o644, b"root:x:0:\n");
    Ok(Base {
        kernel,
        initramfs: Arc::new(w.finish()),
    })
}

/// Reads a kernel module, `path` itself (Debian 12 ships plain `.ko`) or a compressed sibling
/// (`.ko.xz`, `.ko.zst`, `.ko.gz`, as newer kernels ship), decompressed: busybox insmod loads
/// plain ELF only. `None` if none exists.
fn read_module(path: &Path) -> Result<Option<Vec<u8>>> {
    match std::fs::read(path) {
        Ok(data) => return Ok(Some(data)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::io(format!("cannot read {}", path.display()), e)),
    }
    for (ext, tool) in [("xz", "xz"), ("zst", "zstd"), ("gz", "gzip")] {
        let mut name = path.as_os_str().to_owned();
        name.push(".");
        name.push(ext);
        let compressed = PathBuf::from(name);
        if compressed.exists() {
            let out = Command::new(tool)
                .arg("-dc")
                .arg(&compressed)
                .output()
                .ctx(|| format!("cannot run {tool} to decompress {}", compressed.display()))?;
            if !out.status.success() {
                return Err(Error::Environment(format!(
                    "{tool} -dc {} failed: {}",
                    compressed.display(),
                    String::from_utf8_lossy(&out.stderr).trim()
                )));
            }
            return Ok(Some(out.stdout));
        }
    }
    Ok(None)
}

/// A QEMU command line plus the per-guest initramfs it references (deleted on drop).
#[derive(Debug)]
pub struct GuestCommand {
    /// `qemu-system-x86_64 ...` (prefixed by `ip netns exec <ns>` when a netns was given).
    pub argv: Vec<String>,
    initrd: PathBuf,
}

impl GuestCommand {
    /// A `Command` for [`GuestCommand::argv`].
    pub fn to_command(&self) -> Command {
        match self.argv.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args);
                c
            }
            // Only if a caller emptied `argv`; running nothing fails clearly at spawn.
            None => Command::new(""),
        }
    }

    /// The initramfs file passed with `-initrd`.
    pub fn initrd(&self) -> &Path {
        &self.initrd
    }
}

impl Drop for GuestCommand {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.initrd);
    }
}

/// A running QEMU guest. Dropping it kills QEMU.
#[derive(Debug)]
pub struct QemuGuest {
    child: ChildGuard,
    timeout: Duration,
    // Kept until QEMU is gone.
    _cmd: GuestCommand,
}

impl QemuGuest {
    /// Builds the QEMU command line for `opts` (and writes the per-guest initramfs), for tests
    /// that start QEMU themselves, e.g. through `limanet start`.
    pub fn command(opts: &QemuOptions) -> Result<GuestCommand> {
        let base = base()?;
        let mut t = CpioWriter::new();
        t.file("test.sh", 0o755, opts.script.as_bytes());
        let mut initrd = base.initramfs.as_ref().clone();
        initrd.extend_from_slice(&t.finish());

        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path = scratch_dir()?.join(format!("guest-{}-{n}.cpio", std::process::id()));
        std::fs::write(&path, &initrd).ctx(|| format!("cannot write {}", path.display()))?;

        let mut append = String::from("console=ttyS0 panic=-1 quiet");
        if !opts.dhcp {
            append.push_str(" limanet.dhcp=0");
        }
        if !opts.append.is_empty() {
            append.push(' ');
            append.push_str(&opts.append);
        }
        let mut argv: Vec<String> = Vec::new();
        if let Some(ns) = &opts.netns {
            argv.extend(["ip", "netns", "exec", ns].map(String::from));
        }
        argv.extend(
            [
                "qemu-system-x86_64",
                "-accel",
                "tcg",
                "-smp",
                "1",
                "-m",
                &opts.memory_mb.to_string(),
                "-nodefaults",
                "-no-user-config",
                "-display",
                "none",
                "-serial",
                "stdio",
                "-no-reboot",
                "-kernel",
                &base.kernel.to_string_lossy(),
                "-initrd",
                &path.to_string_lossy(),
                "-append",
                &append,
            ]
            .map(String::from),
        );
        if opts.shared_memory {
            argv.extend([
                "-object".to_string(),
                format!(
                    "memory-backend-memfd,id=mem,size={}M,share=on",
                    opts.memory_mb
                ),
                "-machine".to_string(),
                "memory-backend=mem".to_string(),
            ]);
        }
        argv.extend(opts.netdevs.iter().cloned());
        Ok(GuestCommand { argv, initrd: path })
    }

    /// Starts the guest in the background; see [`QemuGuest::wait`].
    pub fn start(opts: &QemuOptions) -> Result<Self> {
        let cmd = Self::command(opts)?;
        let child = ChildGuard::spawn("qemu", &mut cmd.to_command())?
            .with_grace(Duration::from_millis(500));
        tracing::debug!(command = %describe(&cmd.to_command()), "guest started");
        Ok(QemuGuest {
            child,
            timeout: opts.timeout,
            _cmd: cmd,
        })
    }

    /// Boots a guest with `opts`, waits for it to power off (or kills it at the timeout) and
    /// returns its console and the script's exit code.
    pub fn spawn(opts: &QemuOptions) -> Result<GuestOutput> {
        Self::start(opts)?.wait()
    }

    /// The console so far (CRs removed).
    pub fn console(&self) -> String {
        let mut s = self.child.stdout();
        s.retain(|c| c != '\r');
        s
    }

    /// Whether QEMU has exited (powered off, or crashed).
    pub fn has_exited(&mut self) -> bool {
        !matches!(self.child.try_wait(), Ok(None))
    }

    /// QEMU's standard error so far.
    pub fn stderr(&self) -> String {
        self.child.stderr()
    }

    /// Waits until the console contains `needle` (e.g. a marker the script echoes).
    pub fn wait_for_console(&mut self, needle: &str, timeout: Duration) -> Result<()> {
        let res = crate::wait::wait_for(
            &format!("guest console to show {needle:?}"),
            timeout,
            || self.console().contains(needle),
        );
        res.map_err(|e| Error::Guest {
            reason: e.to_string(),
            console: self.console(),
        })
    }

    /// Waits for the guest to power off, at most the configured timeout from now.
    pub fn wait(mut self) -> Result<GuestOutput> {
        let timed_out = match self.child.wait_timeout(self.timeout) {
            Ok(_) => false,
            Err(Error::Timeout { .. }) => {
                self.child.terminate();
                true
            }
            Err(e) => return Err(e),
        };
        let console = self.console();
        let qemu_err = self.child.stderr();
        let exit_code = console
            .lines()
            .filter_map(|l| l.trim().strip_prefix("LIMANET-TEST-EXIT="))
            .next_back()
            .and_then(|c| c.trim().parse().ok());
        let console = if qemu_err.trim().is_empty() {
            console
        } else {
            format!("{console}\n----- qemu stderr -----\n{qemu_err}")
        };
        Ok(GuestOutput {
            console,
            exit_code,
            timed_out,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modules_are_read_plain_or_decompressed() {
        let dir = scratch_dir()
            .unwrap()
            .join(format!("modtest-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("a.ko"), b"plain").unwrap();
        std::fs::write(dir.join("b.ko"), b"squeezed").unwrap();
        // gzip is Essential in Debian; xz and zstd take the same path.
        let st = Command::new("gzip").arg(dir.join("b.ko")).status().unwrap();
        assert!(st.success());
        assert!(dir.join("b.ko.gz").exists() && !dir.join("b.ko").exists());
        assert_eq!(read_module(&dir.join("a.ko")).unwrap().unwrap(), b"plain");
        assert_eq!(
            read_module(&dir.join("b.ko")).unwrap().unwrap(),
            b"squeezed"
        );
        assert_eq!(read_module(&dir.join("c.ko")).unwrap(), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
