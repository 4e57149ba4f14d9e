#!/usr/bin/env bash
# VM rows: the same busybox QEMU guest under TCG, the same command line apart from the netdev, on
#   qemu-user           QEMU's own -netdev user (host loopback 10.0.2.2)
#   limanet-stream      limanet usernet --listen-qemu (-netdev stream), host loopback 192.168.5.2
#   limanet-vhost-user  limanet usernet --listen-vhost-user (-netdev vhost-user), 192.168.5.2
# One TCP stream each way per cell (the guest has busybox only, no iperf3): guest->host is
# `nc` fed from /dev/zero, counted by a sink on the bench host's 127.0.0.1; host->guest is an
# HTTP response of zeros read by the guest's `wget -O /dev/null`, timed in the guest. The
# harness is the ignored test crates/cli/tests/vm_bench.rs (it reuses the testkit's guest image
# and private test host namespaces; nothing leaves the machine).
#
# usage: sudo bench/vm.sh [--seconds N] [--limanet PATH] [--out FILE] [--modes "qemu-user ..."]
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
secs=${BENCH_SECONDS:-5}
limanet_bin=${LIMANET_BIN:-$root/target/release/limanet}
out=${BENCH_OUT:-$root/bench/results/vm.md}
modes=${BENCH_MODES:-"qemu-user limanet-stream limanet-vhost-user"}

while [ $# -gt 0 ]; do
  case "$1" in
    --seconds) secs=$2; shift 2 ;;
    --limanet) limanet_bin=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --modes) modes=$2; shift 2 ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *) echo "unknown option: $1" >&2; exit 2 ;;
  esac
done

[ "$(id -u)" -eq 0 ] || { echo "bench/vm.sh needs root (network namespaces)" >&2; exit 1; }
[ -x "$limanet_bin" ] || {
  echo "building $limanet_bin" >&2
  (cd "$root" && cargo build --release -p limanet)
}

log=$(mktemp)
trap 'rm -f "$log"' EXIT
(cd "$root" && BENCH_SECONDS=$secs BENCH_MODES=$modes LIMANET_BIN=$limanet_bin \
  cargo test -q -p limanet --test vm_bench -- --ignored --nocapture --test-threads=1 vm_throughput_rows) \
  >"$log" 2>&1 || { cat "$log" >&2; exit 1; }

rate() { awk -v m="$1" -v d="$2" '$1=="BENCH-ROW" && $2==m && $3==d {print $4}' "$log"; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a != "" && b != "" && b > 0) printf "%.2f", a / b; else print "-" }'; }

section=$(mktemp)
trap 'rm -f "$log" "$section"' EXIT
{
  echo
  echo "## $(date -u +%Y-%m-%dT%H:%MZ)"
  echo
  echo "Run $(date -u +%Y-%m-%dT%H:%MZ) at $(cd "$root" && git rev-parse --short HEAD 2>/dev/null || echo '?'), \`bench/vm.sh\`, ${secs} s per cell, one round."
  echo "Machine: $(nproc) CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')), kernel $(uname -r), load average $(cut -d' ' -f1-3 /proc/loadavg) (shared with other jobs)."
  echo "QEMU: $(qemu-system-x86_64 --version | head -1), \`-accel tcg -smp 1 -m 256\`, memfd RAM (share=on), \`virtio-net-pci,vectors=0\` for every mode."
  echo "Binary: \`${limanet_bin#"$root"/}\`. MTU 1500. One TCP stream of zeros per cell (busybox \`nc\` guest→host, \`wget -O /dev/null\` host→guest; no iperf3 in the guest). Mbit/s."
  echo
  echo "| mode | guest→host | host→guest |"
  echo "|---|---|---|"
  for m in $modes; do
    echo "| $m | $(rate "$m" "g->h") | $(rate "$m" "h->g") |"
  done
  echo
  vg=$(rate limanet-vhost-user "g->h"); vh=$(rate limanet-vhost-user "h->g")
  echo "vhost-user / limanet stream: $(ratio "$vg" "$(rate limanet-stream "g->h")") guest→host, $(ratio "$vh" "$(rate limanet-stream "h->g")") host→guest."
  echo "vhost-user / QEMU user: $(ratio "$vg" "$(rate qemu-user "g->h")") guest→host, $(ratio "$vh" "$(rate qemu-user "h->g")") host→guest."
  echo
  echo "Raw rows (mode, direction, Mbit/s, bytes, seconds):"
  echo
  echo '```'
  grep '^BENCH-ROW' "$log" | sed 's/^BENCH-ROW //'
  echo '```'
  echo
  echo "What the guest saw per cell (eth0 packets as its stack counts them, TSO/GRO super-segments, and virtio interrupts), and limanet's counters:"
  echo
  echo '```'
  grep -E '^BENCH-(DIAG|STATS)' "$log" | sed 's/^BENCH-//'
  echo '```'
} >"$section"
# Each run is a new dated section; earlier runs stay in the file.
[ -s "$out" ] || echo "# VM throughput (QEMU guest under TCG)" >"$out"
cat "$section" >>"$out"
cat "$section"
