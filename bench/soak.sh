#!/usr/bin/env bash
# Soak: `limanet usernet` serving several netns guests with mixed traffic for a while (bulk TCP
# both ways, request/response, connection churn, DNS, UDP flows), sampling limanet's RSS and
# open descriptors; at the end they must be flat (back near their level after warm-up).
# Everything runs in network namespaces this script creates (a private "host" with the
# servers on its loopback, and the guests): nothing touches the machine's own network, and DNS
# asks only names limanet answers itself (forwarding is off: no upstream, no fallback).
# Needs root, iperf3, python3, dig, busybox (scripts/install-deps).
# Env: DURATION (seconds, default 60; the issue's soak is DURATION=600), GUESTS (default 3),
#      INTERVAL (sampling, default 5 s), OUT (CSV of the samples, default: a temp file),
#      LIMANET_BIN (default: the release build, built if missing).
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-60}
GUESTS=${GUESTS:-3}
INTERVAL=${INTERVAL:-5}
if [ -z "${LIMANET_BIN:-}" ]; then
  cargo build --release -q -p limanet
  LIMANET_BIN=${CARGO_TARGET_DIR:-$PWD/target}/release/limanet
fi
work=$(mktemp -d /tmp/limanet-soak.XXXXXX)
OUT=${OUT:-$work/samples.csv}
tag=soak$$
host=$tag-host
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  for i in $(seq "$GUESTS"); do ip netns del "$tag-g$i" 2>/dev/null || true; done
  ip netns del "$host" 2>/dev/null || true
  [ "$OUT" = "$work/samples.csv" ] && cp "$OUT" /tmp/limanet-soak-last.csv 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

ip netns add "$host"
ip -n "$host" link set lo up
for i in $(seq "$GUESTS"); do ip netns add "$tag-g$i"; done
printf '# no nameserver: limanet answers its own names, forwards nothing\n' >"$work/resolv.conf"
mkdir -p "$work/www" && head -c 1048576 /dev/urandom >"$work/www/blob"

# Servers on the host's loopback, reached by guests at 192.168.5.2.
ip netns exec "$host" iperf3 -s -p 5201 >/dev/null 2>&1 & pids+=($!)
ip netns exec "$host" python3 -m http.server 8080 --bind 127.0.0.1 --directory "$work/www" >/dev/null 2>&1 & pids+=($!)
ip netns exec "$host" socat -T 5 UDP-RECVFROM:7000,fork,bind=127.0.0.1 PIPE >/dev/null 2>&1 & pids+=($!)

netns_args=()
for i in $(seq "$GUESTS"); do netns_args+=(--netns "/run/netns/$tag-g$i"); done
ip netns exec "$host" "$LIMANET_BIN" --log warn usernet --instance soak --resolv-conf "$work/resolv.conf" \
  --no-fallback-dns --pidfile "$work/limanet.pid" "${netns_args[@]}" 2>"$work/limanet.log" & pids+=($!)
for _ in $(seq 100); do [ -s "$work/limanet.pid" ] && break; sleep 0.1; done
LPID=$(cat "$work/limanet.pid")
sleep 1

end=$((SECONDS + DURATION))
guest() { # one guest's mixed traffic until the end
  local ns=$1
  while [ $SECONDS -lt $end ]; do
    ip netns exec "$ns" iperf3 -c 192.168.5.2 -t 3 >/dev/null 2>&1 || true
    ip netns exec "$ns" iperf3 -c 192.168.5.2 -t 2 -R >/dev/null 2>&1 || true
    for _ in $(seq 20); do ip netns exec "$ns" busybox wget -q -O /dev/null http://192.168.5.2:8080/blob || true; done
    for _ in $(seq 50); do ip netns exec "$ns" dig +short +time=1 +tries=1 @192.168.5.3 host.lima.internal >/dev/null || true; done
    # One UDP flow per guest (a fixed source port): flows idle out only after 180 s.
    for _ in $(seq 20); do echo ping | ip netns exec "$ns" socat -T 1 - UDP:192.168.5.2:7000,sourceport=40000,reuseaddr >/dev/null 2>&1 || true; done
  done
}
idle_fds=$(ls "/proc/$LPID/fd" | wc -l)
guest_pids=()
for i in $(seq "$GUESTS"); do guest "$tag-g$i" & guest_pids+=($!); pids+=($!); done

echo "t_s,rss_kb,fds" >"$OUT"
start=$SECONDS
while [ $SECONDS -lt $end ]; do
  rss=$(awk '/^VmRSS:/ {print $2}' "/proc/$LPID/status")
  fds=$(ls "/proc/$LPID/fd" | wc -l)
  echo "$((SECONDS - start)),$rss,$fds" >>"$OUT"
  sleep "$INTERVAL"
done
# Traffic stops when each guest finishes its round; then the flows close (TCP at once).
wait "${guest_pids[@]}" 2>/dev/null || true
sleep 5
rss=$(awk '/^VmRSS:/ {print $2}' "/proc/$LPID/status"); fds=$(ls "/proc/$LPID/fd" | wc -l)
echo "$((SECONDS - start)),$rss,$fds" >>"$OUT"
peak=$(awk '/^VmHWM:/ {print $2}' "/proc/$LPID/status")
cat "$OUT"
python3 - "$OUT" "$peak" "$idle_fds" <<'PY'
import csv, sys
rows = [(int(r["t_s"]), int(r["rss_kb"]), int(r["fds"])) for r in csv.DictReader(open(sys.argv[1]))]
half = rows[len(rows) // 2]
last = rows[-1]
idle_fds = int(sys.argv[3])
print(f"samples {len(rows)}; idle fds {idle_fds}; RSS at half time {half[1]} kB; after the traffic RSS "
      f"{last[1]} kB, fds {last[2]}; max fds {max(r[2] for r in rows)}; peak RSS (VmHWM) {sys.argv[2]} kB")
# Flat: no memory growth over the second half (the allocator settles in the first), and
# descriptors back near idle once the traffic stops (plus the few UDP flows that live 180 s).
flat = last[1] <= half[1] * 1.10 + 2048 and last[2] <= idle_fds + 16
print("flat" if flat else "NOT flat")
sys.exit(0 if flat else 1)
PY
