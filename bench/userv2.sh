#!/bin/bash
# user-v2 benchmark: guest↔guest TCP throughput on one `limanet usernet --mode user-v2` network
# with 2, 4 and 8 netns guests attached (one pair busy and the others idle, then every pair busy;
# with 1 guest: guest→host), side by side with gvproxy in the same run, and the latency of the
# HTTP API requests Lima makes (p50/p99).
#
#   sudo bench/userv2.sh [--limanet PATH] [--gvproxy PATH] [--seconds N] [--guests "1 2 4 8"] [--out FILE]
#
# Daemons measured (each with a fresh network per guest count):
#   limanet         guests' TAPs created by the daemon itself (`--netns`);
#   limanet-attach  guests attached with `limanet attach` to `--listen-qemu` (QEMU stream framing,
#                   one relay process per guest: the same path as gvproxy below);
#   gvproxy         gvproxy v0.6.2's stock command (192.168.127.0/24, gateway .1, host .254):
#                   the first guest attached with `limanet attach` to `-listen-qemu`, the others
#                   with `limanet attach --gvproxy-connect` to its `-listen` endpoint (gvproxy
#                   accepts one -listen-qemu connection only). Skipped with a note when GVPROXY
#                   (default /opt/limanet-bench/gvproxy) is not there; see bench/README.md.
#
# Everything runs in namespaces this script creates: a private "bench host" netns where the
# daemon runs, and one netns per guest (TAP tap0, address by DHCP from the daemon). Nothing
# leaves the machine. Needs root, iperf3, busybox.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
LIMANET=${LIMANET_BIN:-}
SECONDS_PER_CELL=${BENCH_SECONDS:-3}
GUEST_COUNTS=${BENCH_GUESTS:-"1 2 4 8"}
GVPROXY=${GVPROXY:-/opt/limanet-bench/gvproxy}
OUT=${BENCH_OUT:-$ROOT/bench/results/userv2.md}
LATENCY_ROUNDS=${BENCH_API_ROUNDS:-1000}

while [ $# -gt 0 ]; do
  case "$1" in
    --limanet) LIMANET=$2; shift 2 ;;
    --seconds) SECONDS_PER_CELL=$2; shift 2 ;;
    --guests) GUEST_COUNTS=$2; shift 2 ;;
    --gvproxy) GVPROXY=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    --api-rounds) LATENCY_ROUNDS=$2; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done

TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
if [ -z "$LIMANET" ]; then
  (cd "$ROOT" && cargo build --release -q -p limanet)
  LIMANET=$TARGET/release/limanet
fi
LATENCY_TOOL=${API_LATENCY_BIN:-$TARGET/release/examples/api_latency}
if [ ! -x "$LATENCY_TOOL" ]; then
  (cd "$ROOT" && cargo build --release -q -p limanet-api --example api_latency)
fi

TAG=lnb$$
WORK=$(mktemp -d "${TMPDIR:-/tmp}/lnb-userv2.XXXXXX")
NAMESPACES=()
DAEMON_PID=
cleanup() {
  set +e
  [ -n "$DAEMON_PID" ] && kill "$DAEMON_PID" 2>/dev/null && wait "$DAEMON_PID" 2>/dev/null
  for ns in "${NAMESPACES[@]}"; do
    ip netns pids "$ns" 2>/dev/null | xargs -r kill 2>/dev/null
    ip netns del "$ns" 2>/dev/null
    rm -rf "/etc/netns/$ns"
  done
  rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

newns() {
  ip netns add "$1"
  NAMESPACES+=("$1")
  ip -n "$1" link set lo up
}

# One network of daemon $1 with $2 guests; writes the guests' addresses (one per line) into
# $WORK/ips and the address where the host's 127.0.0.1 is reachable into $WORK/hostip.
start_network() {
  local kind=$1 n=$2
  local args=()
  for i in $(seq 1 "$n"); do
    newns "${TAG}g$i"
    [ "$kind" = limanet ] && args+=(--netns "/run/netns/${TAG}g$i")
  done
  rm -f "$WORK/ep.sock" "$WORK/qemu.sock" "$WORK/usernet.pid"
  case "$kind" in
    limanet|limanet-attach)
      [ "$kind" = limanet-attach ] && args+=(--listen-qemu "$WORK/qemu.sock")
      printf 'nameserver 127.0.0.1\n' > "$WORK/resolv.conf"
      ip netns exec "${TAG}host" "$LIMANET" usernet --mode user-v2 --subnet 192.168.104.0/24 \
        --no-configure -e "$WORK/ep.sock" -p "$WORK/usernet.pid" \
        --dns-upstream 127.0.0.1:53 --resolv-conf "$WORK/resolv.conf" "${args[@]}" \
        > "$WORK/usernet.log" 2>&1 &
      DAEMON_PID=$!
      echo 192.168.104.2 > "$WORK/hostip"
      ;;
    gvproxy)
      # Own session: gvproxy signals its whole process group when it exits, which would be us.
      setsid ip netns exec "${TAG}host" "$GVPROXY" -listen-qemu "unix://$WORK/qemu.sock" \
        -listen "unix://$WORK/ep.sock" -pid-file "$WORK/usernet.pid" > "$WORK/usernet.log" 2>&1 &
      DAEMON_PID=$!
      echo 192.168.127.254 > "$WORK/hostip"
      ;;
  esac
  for _ in $(seq 100); do [ -f "$WORK/usernet.pid" ] && [ -S "$WORK/ep.sock" ] && break; sleep 0.1; done
  if [ "$kind" != limanet ]; then
    for _ in $(seq 100); do [ -S "$WORK/qemu.sock" ] && break; sleep 0.1; done
    for i in $(seq 1 "$n"); do
      local attach=("$WORK/qemu.sock")
      [ "$kind" = gvproxy ] && [ "$i" -gt 1 ] && attach=(--gvproxy-connect "$WORK/ep.sock")
      ip netns exec "${TAG}host" "$LIMANET" attach --netns "/run/netns/${TAG}g$i" "${attach[@]}" \
        > "$WORK/attach$i.log" 2>&1 &
      for _ in $(seq 100); do ip -n "${TAG}g$i" link show tap0 >/dev/null 2>&1 && break; sleep 0.1; done
    done
  fi
  : > "$WORK/ips"
  for i in $(seq 1 "$n"); do
    local ns=${TAG}g$i
    mkdir -p "/etc/netns/$ns"
    ip -n "$ns" link set tap0 up
    ip netns exec "$ns" busybox udhcpc -i tap0 -q -n -t 10 -T 1 -s "$WORK/udhcpc.sh" >/dev/null 2>&1
    ip -n "$ns" -4 -o addr show tap0 | awk '{print $4}' | cut -d/ -f1 >> "$WORK/ips"
  done
}

stop_network() {
  # The attach relays first (`ip netns exec` runs them in the host netns): gvproxy does not
  # exit on SIGTERM while a client is still connected. Then the daemon, killed after 5 s.
  ip netns pids "${TAG}host" 2>/dev/null | grep -vx "$DAEMON_PID" | xargs -r kill 2>/dev/null || true
  kill "$DAEMON_PID" 2>/dev/null || true
  for _ in $(seq 50); do kill -0 "$DAEMON_PID" 2>/dev/null || break; sleep 0.1; done
  kill -9 "$DAEMON_PID" 2>/dev/null || true
  wait "$DAEMON_PID" 2>/dev/null || true
  DAEMON_PID=
  for ns in "${NAMESPACES[@]}"; do
    [ "$ns" = "${TAG}host" ] && continue
    ip netns pids "$ns" 2>/dev/null | xargs -r kill 2>/dev/null || true
    ip netns del "$ns" 2>/dev/null || true
    rm -rf "/etc/netns/$ns"
  done
  NAMESPACES=("${TAG}host")
}

cat > "$WORK/udhcpc.sh" <<'EOF'
#!/bin/sh
case "$1" in
  bound|renew)
    ip addr flush dev "$interface"
    ip addr add "$ip/${mask:-24}" dev "$interface"
    [ -n "$router" ] && ip route replace default via "${router%% *}" dev "$interface"
    ;;
esac
exit 0
EOF
chmod +x "$WORK/udhcpc.sh"

# iperf3 from guest $1 to guest $2 (address $3), port $4; prints Gbit/s.
pair() {
  local from=$1 to=$2 addr=$3 port=$4
  ip netns exec "$to" iperf3 -s -1 -p "$port" >/dev/null 2>&1 &
  local server=$!
  sleep 0.3
  local gbits
  gbits=$(ip netns exec "$from" iperf3 -c "$addr" -p "$port" -t "$SECONDS_PER_CELL" -J 2>/dev/null \
    | jq -r '.end.sum_received.bits_per_second / 1e9' 2>/dev/null || true)
  case "$gbits" in ''|null) gbits=0 ;; esac
  echo "$gbits"
  kill "$server" 2>/dev/null || true
  wait "$server" 2>/dev/null || true
}

DAEMONS=${BENCH_DAEMONS:-"limanet limanet-attach gvproxy"}
GVPROXY_NOTE=
if [ ! -x "$GVPROXY" ]; then
  DAEMONS="limanet limanet-attach"
  GVPROXY_NOTE="gvproxy skipped: no executable at $GVPROXY (build it as bench/README.md says, or pass --gvproxy PATH)."
  echo "$GVPROXY_NOTE" >&2
fi

newns "${TAG}host"
{
  echo "# user-v2: guest↔guest throughput and API latency"
  echo
  echo "- date: $(date -u +%FT%TZ), limanet $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')"
  echo "- machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), kernel $(uname -r), load at start $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "- binary: $LIMANET; gvproxy: ${GVPROXY_NOTE:-$GVPROXY}"
  echo "- MTU 1500; iperf3 single stream per pair, ${SECONDS_PER_CELL} s; 1 guest = guest→host (iperf3 server on the host's 127.0.0.1)"
  echo
  echo "## Guest↔guest TCP (Gbit/s)"
  echo
  echo "| daemon | guests attached | one pair busy, others idle | every pair busy: sum | every pair busy: per pair |"
  echo "|---|---|---|---|---|"
} > "$WORK/report.md"
: > "$WORK/onepair"

for n in $GUEST_COUNTS; do
  for kind in $DAEMONS; do
    start_network "$kind" "$n"
    mapfile -t IPS < "$WORK/ips"
    if [ "$n" -lt 2 ]; then
      # One guest: guest→host through the daemon's NAT to the host loopback.
      ip netns exec "${TAG}host" iperf3 -s -1 -B 127.0.0.1 -p 5201 >/dev/null 2>&1 &
      server=$!
      sleep 0.3
      one=$(ip netns exec "${TAG}g1" iperf3 -c "$(cat "$WORK/hostip")" -p 5201 -t "$SECONDS_PER_CELL" -J 2>/dev/null \
        | jq -r '.end.sum_received.bits_per_second / 1e9' 2>/dev/null || true)
      case "$one" in ''|null) one=0 ;; esac
      kill "$server" 2>/dev/null || true
      wait "$server" 2>/dev/null || true
      printf '| %s | 1 (guest→host) | %.2f | | |\n' "$kind" "$one" >> "$WORK/report.md"
      echo "$kind 1 $one" >> "$WORK/onepair"
      stop_network
      continue
    fi
    one=$(pair "${TAG}g1" "${TAG}g2" "${IPS[1]}" 5201)
    # All pairs at once: g1→g2, g3→g4, ...
    pids=()
    for p in $(seq 1 2 "$n"); do
      q=$((p + 1))
      pair "${TAG}g$p" "${TAG}g$q" "${IPS[$((q - 1))]}" $((5300 + p)) > "$WORK/pair$p" &
      pids+=($!)
    done
    wait "${pids[@]}"
    sum=0
    for p in $(seq 1 2 "$n"); do sum=$(echo "$sum + $(cat "$WORK/pair$p")" | bc -l); done
    pairs=$((n / 2))
    printf '| %s | %s | %.2f | %.2f | %.2f |\n' "$kind" "$n" "$one" "$sum" "$(echo "$sum / $pairs" | bc -l)" >> "$WORK/report.md"
    echo "$kind $n $one $sum" >> "$WORK/onepair"
    if [ "$kind" = limanet ] && [ "$n" = "$(echo "$GUEST_COUNTS" | awk '{print $NF}')" ]; then
      {
        echo
        echo "## API latency, limanet ($LATENCY_ROUNDS requests each, one keep-alive connection, $n guests attached)"
        echo
        ip netns exec "${TAG}host" "$LATENCY_TOOL" "$WORK/ep.sock" "${IPS[0]}" "$LATENCY_ROUNDS"
        echo
      } >> "$WORK/api.md"
    fi
    stop_network
  done
done

if [ -n "$GVPROXY_NOTE" ]; then
  printf '\n%s\n' "$GVPROXY_NOTE" >> "$WORK/report.md"
else
  {
    echo
    echo "## Ratios in this run (limanet ÷ gvproxy, same guest count)"
    echo
    echo "| guests | limanet ÷ gvproxy, one pair | limanet ÷ gvproxy, all pairs | limanet-attach ÷ gvproxy, one pair | limanet-attach ÷ gvproxy, all pairs |"
    echo "|---|---|---|---|---|"
    for n in $GUEST_COUNTS; do
      awk -v n="$n" '
        $2 == n { one[$1] = $3; all[$1] = ($4 == "" ? $3 : $4) }
        function r(a, b) { return (a != "" && b > 0) ? sprintf("%.1f×", a / b) : "n/a" }
        END { printf "| %s | %s | %s | %s | %s |\n", n, r(one["limanet"], one["gvproxy"]), r(all["limanet"], all["gvproxy"]), r(one["limanet-attach"], one["gvproxy"]), r(all["limanet-attach"], all["gvproxy"]) }
      ' "$WORK/onepair"
    done
  } >> "$WORK/report.md"
fi
echo >> "$WORK/report.md"
echo "- load at end: $(cut -d' ' -f1-3 /proc/loadavg)" >> "$WORK/report.md"
[ -f "$WORK/api.md" ] && { echo; cat "$WORK/api.md"; } >> "$WORK/report.md"

mkdir -p "$(dirname "$OUT")"
cp "$WORK/report.md" "$OUT"
cat "$OUT"
