#!/usr/bin/env bash
# limanet vmnet throughput with 1, 2, 4 and 8 "VMs" (network namespaces attached with
# `limanet attach`), beside the kernel's own path (veths on a plain bridge) in the same run, and
# limanet usernet's guest->host figure at the same MTU for reference.
#
#   sudo bench/vmnet.sh [--limanet PATH] [--seconds N] [--clients "1 2 4 8"] [--out FILE]
#
# Everything happens in private namespaces this script creates (a "bench host" running the
# daemon, one namespace per VM); nothing leaves the machine. Cleans up on exit.
set -euo pipefail

SECONDS_PER_CELL=${BENCH_SECONDS:-3}
CLIENTS=${BENCH_CLIENTS:-"1 2 4 8"}
OUT=${BENCH_OUT:-bench/results/vmnet.md}
LIMANET=${LIMANET_BIN:-}
while [ $# -gt 0 ]; do
  case "$1" in
    --limanet) LIMANET=$2; shift 2 ;;
    --seconds) SECONDS_PER_CELL=$2; shift 2 ;;
    --clients) CLIENTS=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
if [ -z "$LIMANET" ]; then
  for c in target/release/limanet target/debug/limanet; do
    [ -x "$c" ] && { LIMANET=$c; break; }
  done
fi
[ -x "$LIMANET" ] || { echo "no limanet binary; build it or pass --limanet" >&2; exit 1; }
[ "$(id -u)" -eq 0 ] || { echo "needs root (network namespaces)" >&2; exit 1; }

TAG="lnvb$$"
HOST="${TAG}h"
WORK=$(mktemp -d /tmp/lnvbench.XXXXXX)
PIDS=()
NSS=("$HOST")

cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  sleep 0.5
  for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  for n in "${NSS[@]}"; do ip netns del "$n" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT

ip netns add "$HOST"
ip -n "$HOST" link set lo up

# iperf3 between two namespaces: server in $1 on $2, client in $3; prints Gbit/s.
iperf() {
  local srv=$1 addr=$2 cli=$3 bps
  ip netns exec "$srv" iperf3 -s -B "$addr" >/dev/null 2>&1 &
  local sp=$!
  for _ in $(seq 50); do
    ip netns exec "$srv" ss -ltn 2>/dev/null | grep -q ":5201 " && break
    sleep 0.1
  done
  bps=$(ip netns exec "$cli" iperf3 -c "$addr" -t "$SECONDS_PER_CELL" -J 2>/dev/null |
    jq '.end.sum_received.bits_per_second // 0' || echo 0)
  kill "$sp" 2>/dev/null || true
  wait "$sp" 2>/dev/null || true
  awk -v b="${bps:-0}" 'BEGIN { printf "%.2f", b / 1e9 }'
}

vm_ns() { echo "${TAG}v$1"; }

# limanet vmnet (host mode) with N VMs attached; extra `limanet attach` flags in ATTACH_FLAGS
# (--no-offload: plain clients, as QEMU and socket_vmnet clients are).
run_vmnet() {
  local n=$1 sock="$WORK/vmnet.sock"
  ip netns exec "$HOST" "$LIMANET" vmnet --vmnet-mode=host --vmnet-gateway=192.168.106.1 \
    --socket-group=root --pidfile="$WORK/vmnet.pid" "$sock" 2>"$WORK/vmnet.log" &
  PIDS+=($!)
  local dpid=$!
  for _ in $(seq 100); do [ -S "$sock" ] && [ -s "$WORK/vmnet.pid" ] && break; sleep 0.1; done
  local apids=()
  for i in $(seq "$n"); do
    local ns; ns=$(vm_ns "$i")
    ip netns add "$ns"; NSS+=("$ns"); ip -n "$ns" link set lo up
    # shellcheck disable=SC2086
    "$LIMANET" attach ${ATTACH_FLAGS:-} --netns "/run/netns/$ns" --tap-name eth0 \
      --address "192.168.106.$((9 + i))/24" --gateway 192.168.106.1 "$sock" 2>/dev/null &
    PIDS+=($!); apids+=($!)
  done
  for i in $(seq "$n"); do
    for _ in $(seq 50); do ip -n "$(vm_ns "$i")" addr show eth0 2>/dev/null | grep -q 192.168 && break; sleep 0.1; done
  done
  local h2v v2v="-"
  h2v=$(iperf "$(vm_ns 1)" 192.168.106.10 "$HOST")
  [ "$n" -ge 2 ] && v2v=$(iperf "$(vm_ns 2)" 192.168.106.11 "$(vm_ns 1)")
  for p in "${apids[@]}"; do kill "$p" 2>/dev/null || true; done
  kill "$dpid" 2>/dev/null || true
  wait "$dpid" 2>/dev/null || true
  for i in $(seq "$n"); do ip netns del "$(vm_ns "$i")" 2>/dev/null || true; done
  echo "$h2v $v2v"
}

# The kernel's own path: N veths on a plain bridge in the bench host.
run_bridge() {
  local n=$1
  ip -n "$HOST" link add kbr0 type bridge
  ip -n "$HOST" addr add 192.168.107.1/24 dev kbr0
  ip -n "$HOST" link set kbr0 up
  for i in $(seq "$n"); do
    local ns; ns=$(vm_ns "$i")
    ip netns add "$ns"; NSS+=("$ns"); ip -n "$ns" link set lo up
    ip link add "${TAG}k$i" netns "$HOST" type veth peer name eth0 netns "$ns"
    ip -n "$HOST" link set "${TAG}k$i" master kbr0 up
    ip -n "$ns" addr add "192.168.107.$((9 + i))/24" dev eth0
    ip -n "$ns" link set eth0 up
  done
  local h2v v2v="-"
  h2v=$(iperf "$(vm_ns 1)" 192.168.107.10 "$HOST")
  [ "$n" -ge 2 ] && v2v=$(iperf "$(vm_ns 2)" 192.168.107.11 "$(vm_ns 1)")
  for i in $(seq "$n"); do ip netns del "$(vm_ns "$i")" 2>/dev/null || true; done
  ip -n "$HOST" link del kbr0
  echo "$h2v $v2v"
}

# limanet usernet guest -> host loopback (192.168.5.2) at MTU 1500, for the "the switch is never
# the bottleneck" check.
run_usernet() {
  local ns; ns=$(vm_ns u)
  ip netns add "$ns"; NSS+=("$ns")
  ip netns exec "$HOST" "$LIMANET" usernet --netns "/run/netns/$ns" --no-dns 2>/dev/null &
  PIDS+=($!)
  local upid=$!
  for _ in $(seq 100); do ip -n "$ns" addr show tap0 2>/dev/null | grep -q 192.168.5.15 && break; sleep 0.1; done
  ip netns exec "$HOST" iperf3 -s -B 127.0.0.1 >/dev/null 2>&1 &
  local sp=$! bps
  for _ in $(seq 50); do
    ip netns exec "$HOST" ss -ltn 2>/dev/null | grep -q "127.0.0.1:5201 " && break
    sleep 0.1
  done
  bps=$(ip netns exec "$ns" iperf3 -c 192.168.5.2 -t "$SECONDS_PER_CELL" -J 2>/dev/null |
    jq '.end.sum_received.bits_per_second // 0' || echo 0)
  kill "$sp" "$upid" 2>/dev/null || true
  wait "$sp" "$upid" 2>/dev/null || true
  ip netns del "$ns" 2>/dev/null || true
  awk -v b="${bps:-0}" 'BEGIN { printf "%.2f", b / 1e9 }'
}

declare -A VM KB
# The reference twice, before and after the vmnet cells: on a shared machine the load moves.
echo "usernet..." >&2
USERNET_BEFORE=$(run_usernet)
for n in $CLIENTS; do
  echo "vmnet with $n VMs..." >&2
  VM[$n]=$(run_vmnet "$n")
  echo "kernel bridge with $n VMs..." >&2
  KB[$n]=$(run_bridge "$n")
done
echo "vmnet with 2 plain VMs (attach --no-offload)..." >&2
PLAIN=$(ATTACH_FLAGS=--no-offload run_vmnet 2)
RELAYED="- -"
if "$LIMANET" attach --help 2>/dev/null | grep -q -- --no-pass-tap; then
  echo "vmnet with 2 relayed VMs (attach --no-pass-tap)..." >&2
  RELAYED=$(ATTACH_FLAGS=--no-pass-tap run_vmnet 2)
fi
echo "usernet..." >&2
USERNET_AFTER=$(run_usernet)

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "-" || b == "-" || b == 0) print "-"; else printf "%.2f", a / b }'; }

first=${CLIENTS%% *}
last=${CLIENTS##* }
{
  echo "## $(date -u +%Y-%m-%d): $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
  echo
  echo "Run $(date -u +%Y-%m-%dT%H:%MZ) at $(git rev-parse --short HEAD 2>/dev/null || echo '?'), \`bench/vmnet.sh\`, ${SECONDS_PER_CELL} s per cell, one round."
  echo "Machine: $(nproc) CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')), kernel $(uname -r), load average $(cut -d' ' -f1-3 /proc/loadavg) (shared with other jobs)."
  echo "Binary: \`$LIMANET\`. MTU 1500. iperf3 single TCP stream. Gbit/s."
  echo
  echo "| VMs | host→VM vmnet | host→VM kernel bridge | ratio | VM→VM vmnet | VM→VM kernel bridge | ratio |"
  echo "|---|---|---|---|---|---|---|"
  for n in $CLIENTS; do
    read -r vh vv <<<"${VM[$n]}"
    read -r kh kv <<<"${KB[$n]}"
    echo "| $n | $vh | $kh | $(ratio "$vh" "$kh") | $vv | $kv | $(ratio "$vv" "$kv") |"
  done
  echo
  read -r vh1 _ <<<"${VM[$first]}"
  read -r vhn _ <<<"${VM[$last]}"
  echo "host→VM with $last VMs attached / with $first: $(ratio "$vhn" "$vh1") (socket_vmnet: 0.23 at 4, lima-vm/socket_vmnet#58)."
  read -r ph pv <<<"$PLAIN"
  read -r rh rv <<<"$RELAYED"
  echo "With 2 relayed clients (\`attach --no-pass-tap\`: attach relays its TAP over the socket, as before the daemon took TAPs, and as with a daemon that does not): host→VM $rh, VM→VM $rv Gbit/s."
  echo "With 2 plain clients (\`attach --no-offload\`, frames as QEMU and socket_vmnet clients send them): host→VM $ph, VM→VM $pv Gbit/s."
  echo "limanet usernet guest→host at MTU 1500 in the same run: $USERNET_BEFORE Gbit/s before the vmnet cells, $USERNET_AFTER after (VM→VM through the switch should not be below it)."
} >"$WORK/section.md"
cat "$WORK/section.md"
# Newest section first, earlier ones kept.
{
  echo "# limanet vmnet throughput"
  echo
  cat "$WORK/section.md"
  if [ -f "$OUT" ]; then echo; sed '1{/^# /d}' "$OUT" | sed '1{/^$/d}'; fi
} >"$WORK/out.md"
cp "$WORK/out.md" "$OUT"
