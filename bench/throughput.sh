#!/usr/bin/env bash
# Throughput and latency of limanet and its peers, side by side in ONE run on this machine.
#
# Everything runs inside a private "bench host" network namespace (its 127.0.0.1 is the host
# loopback where iperf3 and tcp-rr servers listen), so no traffic leaves the machine. Each peer
# connects a fresh "guest" namespace to it; iperf3 and tcp-rr clients run in the guest:
#
#   loopback     iperf3 client in the bench host itself, to 127.0.0.1 (kernel reference)
#   veth         veth pair bench host <-> guest, guest -> 10.99.0.1 (kernel reference)
#   slirp4netns  slirp4netns --configure --mtu=M --netns-type=path; guest -> 10.0.2.2
#   pasta        pasta --runas 0 -f --config-net -m M --netns PATH; guest -> gateway 192.0.2.1
#                (pasta maps connections to the gateway address to the host loopback)
#   limanet      limanet usernet --mtu M --netns PATH; guest -> 192.168.5.2
#   limanet-nooffload  the same with --no-offload (TAP without virtio-net header, offloads or
#                super-segments): the before/after of offloads in one run; not in the default set
#   limanet6     limanet as above over IPv6: guest (SLAAC or ::15) -> [fd00:192:168:5::2], which
#                limanet maps to the host's [::1]; iperf3 only; not in the default set
#   pasta6       pasta as above without --ipv4-only over IPv6: guest -> the gateway 2001:db8:2::1
#                it copies from the bench host (mapped to the host's [::1] like IPv4's);
#                iperf3 only; not in the default set
#   limanet-base the binary in $LIMANET_BASE_BIN (e.g. a build of main), same command line: an
#                old-vs-new comparison in one run; not in the default set
#   limanet-base-nooffload  the same binary with --no-offload
#
# Directions: "g->h" = guest sends (iperf3 client), "h->g" = host sends (iperf3 -R).
# Needs root. See bench/README.md for options and how to read the output.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
secs=${BENCH_SECONDS:-5}
rr_secs=${BENCH_RR_SECONDS:-3}
repeat=${BENCH_REPEAT:-1}
mtus=${BENCH_MTUS:-"1500 65520"}
peers=${BENCH_PEERS:-"loopback veth slirp4netns pasta limanet"}
out=${BENCH_OUT:-$root/bench/results/throughput.md}
limanet_bin=${LIMANET_BIN:-}
udp_on=${BENCH_UDP:-1}
# BENCH_UDP_ONLY=1: only the UDP cells (for quick UDP A/B runs); the table shows the rest empty.
udp_only=${BENCH_UDP_ONLY:-0}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$root/target}

usage() {
  cat <<EOF
usage: bench/throughput.sh [--seconds N] [--rr-seconds N] [--repeat N] [--mtus "1500 65520"]
                           [--peers "loopback veth slirp4netns pasta limanet"]
                           [--limanet PATH] [--out FILE]
Environment equivalents: BENCH_SECONDS BENCH_RR_SECONDS BENCH_REPEAT BENCH_MTUS BENCH_PEERS
LIMANET_BIN BENCH_OUT. Without --limanet, the script builds it (cargo build --release -p limanet)
and skips limanet with a message if that fails.
EOF
}

while [ $# -gt 0 ]; do
  case "$1" in
    --seconds) secs=$2; shift 2 ;;
    --rr-seconds) rr_secs=$2; shift 2 ;;
    --repeat) repeat=$2; shift 2 ;;
    --mtus) mtus=$2; shift 2 ;;
    --peers) peers=$2; shift 2 ;;
    --limanet) limanet_bin=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "unknown option: $1" >&2; usage >&2; exit 2 ;;
  esac
done

[ "$(id -u)" -eq 0 ] || { echo "bench/throughput.sh needs root (network namespaces)" >&2; exit 1; }
for tool in iperf3 jq ip; do
  command -v "$tool" >/dev/null || { echo "missing $tool (scripts/install-deps)" >&2; exit 1; }
done

log() { echo "[bench $(date -u +%H:%M:%S)] $*" >&2; }

bh=lnbh$$          # the bench host namespace
g=""               # the current guest namespace
bg_pids=()         # background processes to kill on exit
work=$(mktemp -d /tmp/limanet-bench.XXXXXX)
results=$work/results.tsv   # peer  mtu  metric  value
notes=()

kill_ns() {
  local ns=$1
  [ -e "/run/netns/$ns" ] || return 0
  local pids
  pids=$(ip netns pids "$ns" 2>/dev/null || true)
  [ -n "$pids" ] && kill -9 $pids 2>/dev/null || true
  ip netns del "$ns" 2>/dev/null || true
}

cleanup() {
  local p
  for p in "${bg_pids[@]}"; do kill "$p" 2>/dev/null || true; done
  [ -n "$g" ] && kill_ns "$g"
  kill_ns "$bh"
  rm -rf "/etc/netns/$bh" "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

hx() { ip netns exec "$bh" "$@"; }     # run in the bench host
gx() { ip netns exec "$g" "$@"; }      # run in the guest

# --- binaries -------------------------------------------------------------------------------
log "building tcp-rr"
cargo build --quiet --release --manifest-path "$root/Cargo.toml" -p limanet-testkit --bin tcp-rr \
  -p limanet-benchplot --bin bench-plot
tcp_rr=$CARGO_TARGET_DIR/release/tcp-rr
bench_plot=$CARGO_TARGET_DIR/release/bench-plot

if [[ " $peers " == *" limanet"* ]] && [ -z "$limanet_bin" ]; then
  log "building limanet"
  if cargo build --quiet --release --manifest-path "$root/Cargo.toml" -p limanet; then
    limanet_bin=$CARGO_TARGET_DIR/release/limanet
  else
    notes+=("limanet skipped: \`cargo build --release -p limanet\` failed")
    peers=${peers//limanet-nooffload/}
    peers=${peers//limanet6/}
    peers=${peers//limanet/}
  fi
fi

# --- the bench host ---------------------------------------------------------------------------
# Peers read /etc/resolv.conf for their DNS forwarders: give them a private one (`ip netns exec`
# bind-mounts /etc/netns/NAME/*), so nothing could ever reach the machine's real resolver.
mkdir -p "/etc/netns/$bh"
echo "nameserver 127.0.0.53" >"/etc/netns/$bh/resolv.conf"

# wait_port PORT: waits (5 s) until a TCP socket listens on PORT in the bench host. Looks with
# ss rather than connecting: a probe connection would use up a one-off iperf3 server.
wait_port() {
  local i
  for i in $(seq 100); do
    [ -n "$(hx ss -Hltn "sport = :$1")" ] && return 0
    sleep 0.05
  done
  return 1
}

# new_host: a fresh bench host for every cell, so that nothing one peer leaves behind (the
# host side of CRR leaves thousands of TIME_WAIT sockets for a minute) slows the next one.
new_host() {
  ip netns add "$bh"
  hx ip link set lo up
  # pasta copies its namespace's address and default gateway from the host's default-route
  # interface: give the bench host one, a veth pair with both ends inside it (no dummy module
  # on every kernel); nothing routed there reaches anything.
  hx ip link add bh0 type veth peer name bh1
  hx ip addr add 192.0.2.10/24 dev bh0
  hx ip link set bh1 up
  hx ip link set bh0 up
  hx ip route add default via 192.0.2.1
  # And an IPv6 address and default route, which pasta needs to offer IPv6 (pasta6).
  hx ip -6 addr add 2001:db8:2::10/64 dev bh0 nodad
  hx ip -6 route add default via 2001:db8:2::1
  hx sysctl -qw net.ipv4.ping_group_range="0 2147483647"
  # iperf3 gets a fresh one-off server per measurement (a client that dies mid-test cannot
  # leave it busy for the next one); tcp-rr serves the cell. Both die with the namespace.
  hx "$tcp_rr" server 0.0.0.0:5300 >/dev/null 2>&1 &
  wait_port 5300 || log "tcp-rr server did not start"
}

# --- measurements -----------------------------------------------------------------------------
record() { printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" >>"$results"; }

# iperf3 NAME MTU METRIC TARGET [extra iperf3 args]; runs in the guest (or bench host: loopback).
iperf() {
  local name=$1 mtu=$2 metric=$3 target=$4; shift 4
  local runner=gx bps json why v
  [ "$name" = loopback ] && runner=hx
  hx iperf3 -s -1 -p 5201 >/dev/null 2>&1 &
  local server=$!
  wait_port 5201 || log "iperf3 server did not start"
  json=$($runner timeout $((secs + 20)) iperf3 -c "$target" -p 5201 -t "$secs" \
    --connect-timeout 5000 -J "$@" 2>&1) || true
  if bps=$(jq -er '.end.sum_received.bits_per_second | select(. > 0)' <<<"$json" 2>/dev/null); then
    v=$(awk -v b="$bps" 'BEGIN {printf "%.3f", b / 1e9}')
    log "$name mtu $mtu $metric: $v Gbit/s"
    record "$name" "$mtu" "$metric" "$v"
  else
    why=$(jq -r '.error // (if .end then "no data received" else empty end)' <<<"$json" 2>/dev/null || true)
    why=${why:-$(tail -c 200 <<<"$json" | tr '\n' ' ')}
    log "$name mtu $mtu $metric: iperf3 failed: $why"
    notes+=("$name MTU $mtu $metric: iperf3 failed: $why")
  fi
  kill "$server" 2>/dev/null || true
  wait "$server" 2>/dev/null || true
}

# udp NAME MTU LEN TARGET: guest→host UDP at full speed (`iperf3 -u -b 0`) with LEN-byte
# payloads; records what the host-side server received, in thousands of packets per second.
udp() {
  local name=$1 mtu=$2 len=$3 target=$4 runner=gx json kpps
  [ "$name" = loopback ] && runner=hx
  hx iperf3 -s -1 -p 5201 >/dev/null 2>&1 &
  local server=$!
  wait_port 5201 || log "iperf3 server did not start"
  json=$($runner timeout $((secs + 20)) iperf3 -c "$target" -p 5201 -t "$secs" -u -b 0 -l "$len" \
    --connect-timeout 5000 -J 2>&1) || true
  if kpps=$(jq -er '.end.sum_received | select(.seconds > 0 and .packets > .lost_packets)
      | (.packets - .lost_packets) / .seconds / 1000' <<<"$json" 2>/dev/null); then
    kpps=$(awk -v k="$kpps" 'BEGIN {printf "%.1f", k}')
    log "$name mtu $mtu udp$len: $kpps kpps received"
    record "$name" "$mtu" "udp$len" "$kpps"
  else
    log "$name mtu $mtu udp$len: iperf3 failed: $(jq -r '.error // empty' <<<"$json" 2>/dev/null)"
    notes+=("$name MTU $mtu UDP $len B: iperf3 failed")
  fi
  kill "$server" 2>/dev/null || true
  wait "$server" 2>/dev/null || true
}

# cpu_ticks PID: CPU time (user + system, all threads) used so far by PID and its children
# (PID is the subshell that `hx CMD &` forks; the peer is its child), in clock ticks.
cpu_ticks() {
  [ -n "$1" ] || return 0
  local p files=()
  for p in "$1" $(pgrep -P "$1"); do files+=("/proc/$p/stat"); done
  cat "${files[@]}" 2>/dev/null | awk '{t += $14 + $15} END {if (NR) print t}'
}

# rr NAME MTU TARGET [HELPER_PID]: TCP_RR and TCP_CRR via tcp-rr, and the CPU share the
# peer's process (if any) used during RR.
rr() {
  local name=$1 mtu=$2 target=$3 helper=${4:-} runner=gx line t0 t1
  [ "$name" = loopback ] && runner=hx
  t0=$(cpu_ticks "$helper")
  if line=$($runner timeout $((rr_secs + 20)) "$tcp_rr" rr "$target:5300" "$rr_secs"); then
    t1=$(cpu_ticks "$helper")
    if [ -n "$t0" ] && [ -n "$t1" ]; then
      record "$name" "$mtu" rr_cpu "$(awk -v d=$((t1 - t0)) -v hz="$(getconf CLK_TCK)" -v s="$rr_secs" \
        'BEGIN {printf "%.0f", 100 * d / hz / s}')"
    fi
    record "$name" "$mtu" rr_mean "$(sed -E 's/.*mean_us=([0-9.]+).*/\1/' <<<"$line")"
    record "$name" "$mtu" rr_p50 "$(sed -E 's/.*p50_us=([0-9.]+).*/\1/' <<<"$line")"
    record "$name" "$mtu" rr_p99 "$(sed -E 's/.*p99_us=([0-9.]+).*/\1/' <<<"$line")"
    log "$name mtu $mtu: $line"
  else
    log "$name mtu $mtu: tcp-rr rr failed"
  fi
  if line=$($runner timeout $((rr_secs + 20)) "$tcp_rr" crr "$target:5300" "$rr_secs"); then
    record "$name" "$mtu" crr_rate "$(sed -E 's/.*rate_per_s=([0-9.]+).*/\1/' <<<"$line")"
    record "$name" "$mtu" crr_p50 "$(sed -E 's/.*p50_us=([0-9.]+).*/\1/' <<<"$line")"
    log "$name mtu $mtu: $line"
  else
    log "$name mtu $mtu: tcp-rr crr failed"
  fi
}

# measure NAME MTU TARGET [HELPER_PID]
measure() {
  local name=$1 mtu=$2 target=$3 helper=${4:-}
  if [ "$udp_only" != 1 ]; then
    iperf "$name" "$mtu" g2h "$target"
    iperf "$name" "$mtu" h2g "$target" -R
    rr "$name" "$mtu" "$target" "$helper"
  fi
  if [ "$udp_on" = 1 ]; then
    udp "$name" "$mtu" 64 "$target"
    udp "$name" "$mtu" 1400 "$target"
  fi
}

# measure6 NAME MTU TARGET: iperf3 both ways over IPv6 (tcp-rr's server is IPv4-only).
measure6() {
  iperf "$1" "$2" g2h "$3"
  iperf "$1" "$2" h2g "$3" -R
}

new_guest() {
  g=lnbg$$-$1
  ip netns add "$g"
  gx ip link set lo up
  # CRR opens many short connections from the guest: let it reuse TIME_WAIT ports.
  gx sysctl -qw net.ipv4.tcp_tw_reuse=1
}

end_guest() {
  local p
  for p in "${bg_pids[@]}"; do kill "$p" 2>/dev/null || true; done
  bg_pids=()
  kill_ns "$g"
  g=""
}

# helper_survived NAME PID LOG: notes a peer process that exited during its measurements, with
# the end of its log (the temp dir goes away on exit).
helper_survived() {
  kill -0 "$2" 2>/dev/null && return 0
  local why
  why=$(tail -5 "$3" | sed 's/\x1b\[[0-9;]*m//g' | tr '\n' ' ' | cut -c1-600)
  log "$1 exited during the run: $why"
  notes+=("$1 exited during the run at MTU $mtu: ${why:-no output}")
  return 1
}

# wait_addr ADDR PID: waits (10 s) until the guest has ADDR on some interface, while the helper
# process PID (the peer) still runs.
wait_addr() {
  local i
  for i in $(seq 200); do
    kill -0 "$2" 2>/dev/null || return 1
    gx ip -4 -o addr show 2>/dev/null | grep -q " $1/" && return 0
    sleep 0.05
  done
  return 1
}

# wait_addr6 PREFIX PID: like wait_addr for a global IPv6 address starting with PREFIX that has
# finished duplicate address detection.
wait_addr6() {
  local i
  for i in $(seq 200); do
    kill -0 "$2" 2>/dev/null || return 1
    gx ip -6 -o addr show scope global 2>/dev/null | grep -v tentative | grep -q " $1" && return 0
    sleep 0.05
  done
  return 1
}

run_peer() {
  local name=$1 mtu=$2 pid
  case "$name" in
    loopback)
      measure loopback "lo" 127.0.0.1
      ;;
    veth)
      new_guest veth
      hx ip link add vb0 type veth peer name vg0 netns "$g"
      hx ip addr add 10.99.0.1/24 dev vb0
      gx ip addr add 10.99.0.2/24 dev vg0
      hx ip link set vb0 mtu "$mtu" up
      gx ip link set vg0 mtu "$mtu" up
      measure veth "$mtu" 10.99.0.1
      end_guest
      ;;
    slirp4netns)
      new_guest slirp
      hx slirp4netns --configure --mtu="$mtu" --netns-type=path "/run/netns/$g" tap0 \
        >"$work/slirp.log" 2>&1 &
      pid=$!; bg_pids+=("$pid")
      if wait_addr 10.0.2.100 "$pid"; then
        measure slirp4netns "$mtu" 10.0.2.2 "$pid"
        helper_survived slirp4netns "$pid" "$work/slirp.log" || true
      else
        log "slirp4netns did not come up: $(tail -3 "$work/slirp.log")"
      fi
      end_guest
      ;;
    pasta)
      new_guest pasta
      hx pasta --runas 0 -f -q --config-net --ipv4-only -m "$mtu" -I tap0 \
        -t none -u none -T none -U none --netns "/run/netns/$g" >"$work/pasta.log" 2>&1 &
      pid=$!; bg_pids+=("$pid")
      if wait_addr 192.0.2.10 "$pid"; then
        measure pasta "$mtu" 192.0.2.1 "$pid"
        helper_survived pasta "$pid" "$work/pasta.log" || true
      else
        log "pasta did not come up: $(tail -3 "$work/pasta.log")"
      fi
      end_guest
      ;;
    pasta6)
      new_guest pasta6
      hx pasta --runas 0 -f -q --config-net -m "$mtu" -I tap0 \
        -t none -u none -T none -U none --netns "/run/netns/$g" >"$work/pasta.log" 2>&1 &
      pid=$!; bg_pids+=("$pid")
      if wait_addr6 2001:db8:2:: "$pid"; then
        measure6 pasta6 "$mtu" 2001:db8:2::1
        helper_survived pasta6 "$pid" "$work/pasta.log" || true
      else
        log "pasta6 did not come up: $(tail -3 "$work/pasta.log")"
        notes+=("pasta6 skipped at MTU $mtu: no IPv6 address in the guest")
      fi
      end_guest
      ;;
    limanet6)
      new_guest limanet6
      hx "$limanet_bin" usernet --mtu "$mtu" --netns "/run/netns/$g" >"$work/limanet.log" 2>&1 &
      pid=$!; bg_pids+=("$pid")
      if wait_addr6 fd00:192:168:5: "$pid"; then
        measure6 limanet6 "$mtu" fd00:192:168:5::2
        helper_survived limanet6 "$pid" "$work/limanet.log" || true
      else
        log "limanet6 did not come up: $(tail -3 "$work/limanet.log")"
        notes+=("limanet6 skipped at MTU $mtu: no IPv6 address in the guest")
      fi
      end_guest
      ;;
    limanet | limanet-nooffload | limanet-base | limanet-base-nooffload)
      new_guest limanet
      local extra=() bin=$limanet_bin
      [[ $name = *-nooffload ]] && extra=(--no-offload)
      [[ $name = limanet-base* ]] && bin=${LIMANET_BASE_BIN:?limanet-base needs LIMANET_BASE_BIN}
      hx "$bin" usernet --mtu "$mtu" --netns "/run/netns/$g" "${extra[@]}" \
        >"$work/limanet.log" 2>&1 &
      pid=$!; bg_pids+=("$pid")
      if wait_addr 192.168.5.15 "$pid"; then
        measure "$name" "$mtu" 192.168.5.2 "$pid"
        helper_survived "$name" "$pid" "$work/limanet.log" || true
      else
        local why
        why=$(tail -3 "$work/limanet.log" | tr '\n' ' ')
        log "limanet skipped at MTU $mtu: it did not configure 192.168.5.15 on tap0: $why"
        notes+=("limanet skipped at MTU $mtu: \`limanet usernet\` did not come up (${why:-no output})")
      fi
      end_guest
      ;;
    *) log "unknown peer $name"; notes+=("unknown peer $name ignored") ;;
  esac
}

started=$(date -u '+%Y-%m-%d %H:%M UTC')
load_before=$(cut -d' ' -f1-3 /proc/loadavg)
# Rounds: every peer at every MTU once per round, so a burst of load on this shared machine
# hits all peers alike instead of the one measured at that moment; each cell is the median
# over the rounds.
# The order rotates from round to round, so no peer always runs right after the same one.
read -ra peer_list <<<"$peers"
for round in $(seq "$repeat"); do
  for i in "${!peer_list[@]}"; do
    peer=${peer_list[$(((i + round - 1) % ${#peer_list[@]}))]}
    cell_mtus=$mtus
    [ "$peer" = loopback ] && cell_mtus=lo
    for mtu in $cell_mtus; do
      log "== round $round/$repeat: $peer, MTU $mtu"
      new_host
      run_peer "$peer" "$mtu"
      kill_ns "$bh"
    done
  done
done
load_after=$(cut -d' ' -f1-3 /proc/loadavg)

# --- report -----------------------------------------------------------------------------------
cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')
pasta_ver=$(dpkg-query -W -f='${Version}' passt 2>/dev/null || echo unknown)
slirp_ver=$(slirp4netns --version 2>/dev/null | awk '/^slirp4netns/ {v=$3} /^libslirp/ {l=$2} END {print v " (libslirp " l ")"}')
iperf_ver=$(iperf3 --version | head -1 | awk '{print $2}')
limanet_ver="not measured"
if [ -n "$limanet_bin" ] && [ -x "$limanet_bin" ]; then
  limanet_ver="$(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo '?') ($limanet_bin)"
fi

mkdir -p "$(dirname "$out")"
{
  echo "# Throughput and latency: limanet and peers, one run"
  echo
  echo "Generated by \`bench/throughput.sh\` on $started. Quote ratios from the same run only:"
  echo "the machine is shared and noisy."
  echo
  echo "## Machine"
  echo
  echo "- CPU: $cpu, nproc $(nproc)"
  echo "- kernel: $(uname -r)"
  echo "- load average before / after: $load_before / $load_after"
  echo "- iperf3 $iperf_ver; slirp4netns $slirp_ver; pasta (Debian passt) $pasta_ver; limanet $limanet_ver"
  echo "- iperf3: single TCP stream, ${secs} s per cell; tcp-rr: ${rr_secs} s per cell; every cell is the median of $repeat round(s), each round measuring all peers in turn"
  echo
  awk -F'\t' -v userspace="slirp4netns pasta limanet" '
    function fmt(v) { return (v == "" ? "–" : v) }
    BEGIN { n = split(userspace, u, " "); for (i = 1; i <= n; i++) isuser[u[i]] = 1 }
    {
      key = $1 SUBSEP $2
      if (!(key in seen)) { seen[key] = 1; order[++rows] = key }
      cell = $1 SUBSEP $2 SUBSEP $3
      samples[cell] = samples[cell] " " $4
    }
    # The median of the space-separated numbers in s.
    function median(s,    v, n, i, j, t) {
      n = split(s, v, " ")
      for (i = 2; i <= n; i++)
        for (j = i; j > 1 && v[j - 1] + 0 > v[j] + 0; j--) { t = v[j]; v[j] = v[j - 1]; v[j - 1] = t }
      return v[int((n + 1) / 2)]
    }
    END {
      for (cell in samples) {
        split(cell, k, SUBSEP)
        val[cell] = median(samples[cell])
        if (k[1] in isuser) {
          mk = k[2] SUBSEP k[3]
          if (!(mk in lo) || val[cell] + 0 < lo[mk]) lo[mk] = val[cell] + 0
          if (!(mk in hi) || val[cell] + 0 > hi[mk]) hi[mk] = val[cell] + 0
        }
      }
    }
    function ratio(v, base) {
      if (v == "" || v == "fail" || base == "" || base + 0 == 0) return "–"
      return sprintf("%.2f", v / base)
    }
    END {
      print "## Absolute numbers"
      print ""
      print "| peer | MTU | g→h Gbit/s | h→g Gbit/s | RR mean µs | RR p50 µs | RR p99 µs | RR helper CPU % | CRR conn/s | CRR p50 µs | UDP 64 B g→h kpps | UDP 1400 B g→h kpps |"
      print "|---|---|---|---|---|---|---|---|---|---|---|---|"
      for (r = 1; r <= rows; r++) {
        split(order[r], k, SUBSEP); p = k[1]; m = k[2]
        printf "| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", p, m,
          fmt(val[p, m, "g2h"]), fmt(val[p, m, "h2g"]), fmt(val[p, m, "rr_mean"]),
          fmt(val[p, m, "rr_p50"]), fmt(val[p, m, "rr_p99"]), fmt(val[p, m, "rr_cpu"]),
          fmt(val[p, m, "crr_rate"]), fmt(val[p, m, "crr_p50"]),
          fmt(val[p, m, "udp64"]), fmt(val[p, m, "udp1400"])
      }
      print ""
      print "## Ratios within this run"
      print ""
      print "Against the slowest / fastest user-mode peer (slirp4netns, pasta, limanet) at the same"
      print "MTU. Throughput and CRR rate: value ÷ slowest and value ÷ fastest (higher is better)."
      print "RR p50 latency: value ÷ best (lowest) and value ÷ worst (lower is better)."
      print ""
      print "| peer | MTU | g→h ÷slowest | g→h ÷fastest | h→g ÷slowest | h→g ÷fastest | RR p50 ÷best | RR p50 ÷worst | CRR ÷slowest | CRR ÷fastest | UDP 64 ÷slowest | UDP 64 ÷fastest | UDP 1400 ÷slowest | UDP 1400 ÷fastest |"
      print "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
      for (r = 1; r <= rows; r++) {
        split(order[r], k, SUBSEP); p = k[1]; m = k[2]
        if (m == "lo") continue
        printf "| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", p, m,
          ratio(val[p, m, "g2h"], lo[m, "g2h"]), ratio(val[p, m, "g2h"], hi[m, "g2h"]),
          ratio(val[p, m, "h2g"], lo[m, "h2g"]), ratio(val[p, m, "h2g"], hi[m, "h2g"]),
          ratio(val[p, m, "rr_p50"], lo[m, "rr_p50"]), ratio(val[p, m, "rr_p50"], hi[m, "rr_p50"]),
          ratio(val[p, m, "crr_rate"], lo[m, "crr_rate"]), ratio(val[p, m, "crr_rate"], hi[m, "crr_rate"]),
          ratio(val[p, m, "udp64"], lo[m, "udp64"]), ratio(val[p, m, "udp64"], hi[m, "udp64"]),
          ratio(val[p, m, "udp1400"], lo[m, "udp1400"]), ratio(val[p, m, "udp1400"], hi[m, "udp1400"])
      }
    }' "$results"
  echo
  echo "## Setup"
  echo
  echo "All inside a private bench-host netns (iperf3 -s and \`tcp-rr server\` on its 127.0.0.1)."
  echo "g→h: \`iperf3 -c HOST -t $secs\` in the guest netns; h→g: the same with \`-R\`."
  echo "RR: \`tcp-rr rr\` (1-byte ping-pong on one connection, TCP_NODELAY); CRR: \`tcp-rr crr\`"
  echo "(connect, 1-byte request/response, close). RR helper CPU: CPU time the peer's process used"
  echo "during the RR measurement ÷ its duration (100 = one core; the kernel references have none)."
  echo "UDP: \`iperf3 -u -b 0 -l LEN\` guest→host, packets the server received per second (the sender floods; the rest is lost)."
  echo "Every cell gets a fresh bench host and guest namespace; the peer order rotates per round."
  echo
  echo "| peer | how the guest netns is connected | host loopback as seen from the guest |"
  echo "|---|---|---|"
  echo "| loopback | none: client in the bench host (kernel reference) | 127.0.0.1 |"
  echo "| veth | veth pair, MTU M on both ends (kernel reference; not host loopback) | 10.99.0.1 |"
  echo "| slirp4netns | \`slirp4netns --configure --mtu=M --netns-type=path /run/netns/G tap0\` | 10.0.2.2 |"
  echo "| pasta | \`pasta --runas 0 -f --config-net --ipv4-only -m M -I tap0 -t none -u none -T none -U none --netns /run/netns/G\` | 192.0.2.1 (gateway, mapped to host loopback) |"
  echo "| limanet | \`limanet usernet --mtu M --netns /run/netns/G\` (TAP with virtio-net header, checksum/TSO offloads) | 192.168.5.2 |"
  if [[ " $peers " == *" limanet-nooffload "* ]]; then
    echo "| limanet-nooffload | the same with \`--no-offload\` (plain TAP, MTU-sized frames) | 192.168.5.2 |"
  fi
  if [[ " $peers " == *" limanet-base "* ]]; then
    echo "| limanet-base | \`$LIMANET_BASE_BIN usernet --mtu M --netns /run/netns/G\` | 192.168.5.2 |"
  fi
  echo
  echo "The samples are in \`$(basename "${out%.md}").tsv\`; the chart \`$(basename "${out%.md}").svg\` shows the throughput cells."
  if [ ${#notes[@]} -gt 0 ]; then
    echo
    echo "## Notes"
    echo
    for n in "${notes[@]}"; do echo "- $n"; done
  fi
} >"$out"
log "wrote $out"
# The raw samples beside the report, and the chart of the throughput cells (README shows it).
cp "$results" "${out%.md}.tsv"
"$bench_plot" "${out%.md}.tsv" "${out%.md}.svg" \
  "TCP throughput, one stream, $(date -u +%Y-%m-%d) ($(nproc) CPUs; median of $repeat)" >&2 ||
  log "chart not drawn"
cat "$out"
