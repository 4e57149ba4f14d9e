#!/bin/bash
# user-v2 benchmark: guest↔guest TCP throughput on one `limanet usernet --mode user-v2` network
# with 2, 4 and 8 netns guests attached (one pair busy and the others idle, then every pair busy),
# and the latency of the HTTP API requests Lima makes (p50/p99).
#
#   sudo bench/userv2.sh [--limanet PATH] [--seconds N] [--guests "2 4 8"] [--out FILE]
#
# Everything runs in namespaces this script creates: a private "bench host" netns where the
# daemon runs, and one netns per guest (TAP tap0, address by DHCP from the daemon). Nothing
# leaves the machine. Needs root, iperf3, busybox.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
LIMANET=${LIMANET_BIN:-}
SECONDS_PER_CELL=${BENCH_SECONDS:-3}
GUEST_COUNTS=${BENCH_GUESTS:-"2 4 8"}
OUT=${BENCH_OUT:-$ROOT/bench/results/userv2.md}
LATENCY_ROUNDS=${BENCH_API_ROUNDS:-1000}

while [ $# -gt 0 ]; do
  case "$1" in
    --limanet) LIMANET=$2; shift 2 ;;
    --seconds) SECONDS_PER_CELL=$2; shift 2 ;;
    --guests) GUEST_COUNTS=$2; shift 2 ;;
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
WORK=$(mktemp -d /tmp/limanet-userv2-bench.XXXXXX)
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

# One network with N guests; prints the guests' addresses (one per line) into $WORK/ips.
start_network() {
  local n=$1
  local args=()
  for i in $(seq 1 "$n"); do
    newns "${TAG}g$i"
    args+=(--netns "/run/netns/${TAG}g$i")
  done
  printf 'nameserver 127.0.0.1\n' > "$WORK/resolv.conf"
  ip netns exec "${TAG}host" "$LIMANET" usernet --mode user-v2 --subnet 192.168.104.0/24 \
    --no-configure -e "$WORK/ep.sock" -p "$WORK/usernet.pid" \
    --dns-upstream 127.0.0.1:53 --resolv-conf "$WORK/resolv.conf" "${args[@]}" \
    > "$WORK/usernet.log" 2>&1 &
  DAEMON_PID=$!
  for _ in $(seq 100); do [ -f "$WORK/usernet.pid" ] && break; sleep 0.1; done
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
  kill "$DAEMON_PID" 2>/dev/null || true
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
  ip netns exec "$from" iperf3 -c "$addr" -p "$port" -t "$SECONDS_PER_CELL" -J 2>/dev/null \
    | jq -r '.end.sum_received.bits_per_second / 1e9'
  wait "$server" 2>/dev/null || true
}

newns "${TAG}host"
{
  echo "# user-v2: guest↔guest throughput and API latency"
  echo
  echo "- date: $(date -u +%FT%TZ), limanet $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')"
  echo "- machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), kernel $(uname -r), load $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "- binary: $LIMANET; MTU 1500; iperf3 single stream per pair, ${SECONDS_PER_CELL} s"
  echo
  echo "## Guest↔guest TCP (Gbit/s)"
  echo
  echo "| guests attached | one pair busy, others idle | every pair busy: sum | every pair busy: per pair |"
  echo "|---|---|---|---|"
} > "$WORK/report.md"

for n in $GUEST_COUNTS; do
  start_network "$n"
  mapfile -t IPS < "$WORK/ips"
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
  printf '| %s | %.2f | %.2f | %.2f |\n' "$n" "$one" "$sum" "$(echo "$sum / $pairs" | bc -l)" >> "$WORK/report.md"
  if [ "$n" = "$(echo "$GUEST_COUNTS" | awk '{print $NF}')" ]; then
    {
      echo
      echo "## API latency ($LATENCY_ROUNDS requests each, one keep-alive connection, $n guests attached)"
      echo
      ip netns exec "${TAG}host" "$LATENCY_TOOL" "$WORK/ep.sock" "${IPS[0]}" "$LATENCY_ROUNDS"
    } >> "$WORK/report.md"
  fi
  stop_network
done

mkdir -p "$(dirname "$OUT")"
cp "$WORK/report.md" "$OUT"
cat "$OUT"
