#!/usr/bin/env bash
# DNS benchmark: `limanet dns` against dnsmasq as a forwarder, same machine, same stub upstream
# (crates/dns/examples/bench_stub.rs on a private 127.x address), measured with dnsperf.
#   hosts:     A queries for names in a hosts file (limanet: getaddrinfo → /etc/hosts bind-mounted
#              in a private mount namespace; dnsmasq: --addn-hosts with the same file)
#   forwarded: PTR queries, which both forward to the stub (dnsmasq with --cache-size=0, so it
#              forwards every query instead of answering from its cache)
# Prints a markdown table with queries/s and average latency, and limanet/dnsmasq ratios.
# Needs root (mount namespace), dnsperf and dnsmasq (scripts/install-deps). Nothing leaves loopback.
# Env: DURATION (s per run, default 10), ROUNDS (default 2; runs alternate limanet/dnsmasq),
#      OUT (markdown file to write, default: stdout only), LIMANET_BIN (a limanet binary to
#      measure instead of building the release one, e.g. to compare two versions in one run),
#      PIN (default 1 with 2+ CPUs: dnsperf and the stub upstream run on CPU 0, the server
#      measured (limanet or dnsmasq, all its threads) on CPU 1, so dnsperf, which needs about a
#      core, does not take CPU from the server and the rate measures the server where it can;
#      PIN=0: no pinning, as before 2026-12-03 evening).
set -euo pipefail
cd "$(dirname "$0")/../.."
DURATION=${DURATION:-10}
ROUNDS=${ROUNDS:-2}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target}
if [ -z "${LIMANET_BIN:-}" ]; then
  cargo build --release -q -p limanet
fi
BIN=${LIMANET_BIN:-$CARGO_TARGET_DIR/release/limanet}
if [ -z "${STUB_BIN:-}" ]; then
  cargo build --release -q -p limanet-dns --example bench_stub
  STUB_BIN=$CARGO_TARGET_DIR/release/examples/bench_stub
fi

work=$(mktemp -d /tmp/limanet-dns-bench.XXXXXX)
chmod 755 "$work"  # dnsmasq drops to nobody and must read the hosts file
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

PIN=${PIN:-$([ "$(nproc)" -ge 2 ] && echo 1 || echo 0)}
client_cpu=(); server_cpu=()
if [ "$PIN" = 1 ]; then client_cpu=(taskset -c 0); server_cpu=(taskset -c 1); fi

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

STUB_IP=127.53.$((RANDOM % 200 + 20)).$((RANDOM % 200 + 20))
"${client_cpu[@]}" "$STUB_BIN" "$STUB_IP:53" 2>"$work/stub.log" &
pids+=($!)

: >"$work/hosts"; : >"$work/q-hosts"; : >"$work/q-fwd"
echo "127.0.0.1 localhost" >>"$work/hosts"
for i in $(seq 1 1000); do
  echo "10.$((i / 250)).$((i % 250)).1 h$i.bench" >>"$work/hosts"
  echo "h$i.bench A" >>"$work/q-hosts"
  echo "$((i % 250)).$((i / 250)).2.10.in-addr.arpa PTR" >>"$work/q-fwd"
done
printf 'nameserver %s\noptions timeout:1 attempts:1\n' "$STUB_IP" >"$work/resolv.conf"
echo "hosts: files dns" >"$work/nsswitch.conf"

"${server_cpu[@]}" unshare -m --propagation private sh -c '
  mount --bind "$1" /etc/resolv.conf && mount --bind "$2" /etc/hosts && mount --bind "$3" /etc/nsswitch.conf
  exec "$4" --log warn dns' sh "$work/resolv.conf" "$work/hosts" "$work/nsswitch.conf" "$BIN" >"$work/limanet.out" 2>"$work/limanet.log" &
pids+=($!)
LIMANET_PID=$!
for _ in $(seq 50); do [ -s "$work/limanet.out" ] && break; sleep 0.1; done
LIMANET_PORT=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["udp"].rsplit(":",1)[1])' "$work/limanet.out")

DNSMASQ_PORT=$(free_port)
"${server_cpu[@]}" dnsmasq -k --conf-file=/dev/null --no-resolv --no-hosts --addn-hosts="$work/hosts" \
  --server="$STUB_IP" --listen-address=127.0.0.1 --bind-interfaces --port="$DNSMASQ_PORT" \
  --cache-size=0 --dns-forward-max=1000 --pid-file= --log-facility="$work/dnsmasq.log" &
pids+=($!)
DNSMASQ_PID=$!
sleep 0.5

# Sanity: both answer both kinds before measuring.
for port in "$LIMANET_PORT" "$DNSMASQ_PORT"; do
  dig @127.0.0.1 -p "$port" h7.bench A +short +time=2 +tries=1 | grep -q '^10.0.7.1$' || { echo "no hosts answer on $port" >&2; exit 1; }
  dig @127.0.0.1 -p "$port" 7.0.2.10.in-addr.arpa PTR +short +time=2 +tries=1 | grep -q 'stub.bench' || { echo "no forwarded answer on $port" >&2; exit 1; }
done

# run PORT QUERYFILE → "qps latency_ms"
run() {
  "${client_cpu[@]}" dnsperf -s 127.0.0.1 -p "$1" -d "$2" -l "$DURATION" -q 200 -c 4 2>&1 |
    awk '/Queries per second:/ {q=$4} /Average Latency \(s\):/ {l=$4*1000} /Queries lost:/ {lost=$3} END {printf "%.0f %.3f %s\n", q, l, lost}'
}

# CPU time (user + system, all threads) a server has used, in clock ticks.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

declare -A qps lat lost qcpu
for kind in hosts fwd; do
  for name in limanet dnsmasq; do qps[$name-$kind]=0; lat[$name-$kind]=0; qcpu[$name-$kind]=0; done
  for r in $(seq "$ROUNDS"); do
    for name in limanet dnsmasq; do
      port=$LIMANET_PORT; pid=$LIMANET_PID
      [ "$name" = dnsmasq ] && port=$DNSMASQ_PORT && pid=$DNSMASQ_PID
      t0=$(cpu_ticks "$pid")
      read -r q l lo < <(run "$port" "$work/q-$kind")
      t1=$(cpu_ticks "$pid")
      # Queries answered per second of the server's own CPU time: its capacity, even when
      # dnsperf (sharing the 2 CPUs) is what limits the rate.
      c=$(python3 -c "print($q * $DURATION / max(($t1 - $t0) / $(getconf CLK_TCK), 0.01))")
      echo "round $r $kind $name: $q q/s, $l ms avg, lost $lo, $((t1 - t0)) CPU ticks, $c q per CPU-second" >&2
      qcpu[$name-$kind]=$(python3 -c "print(${qcpu[$name-$kind]} + $c / $ROUNDS)")
      qps[$name-$kind]=$(python3 -c "print(${qps[$name-$kind]} + $q / $ROUNDS)")
      lat[$name-$kind]=$(python3 -c "print(${lat[$name-$kind]} + $l / $ROUNDS)")
      lost[$name-$kind]="${lost[$name-$kind]:-} $lo"
    done
  done
done

report() {
  echo "| workload | limanet q/s | dnsmasq q/s | q/s ratio (limanet/dnsmasq) | limanet q per CPU-s | dnsmasq q per CPU-s | per-CPU ratio | limanet avg latency ms | dnsmasq avg latency ms | latency ratio |"
  echo "|---|---|---|---|---|---|---|---|---|---|"
  for kind in hosts fwd; do
    python3 - "$kind" "${qps[limanet-$kind]}" "${qps[dnsmasq-$kind]}" "${qcpu[limanet-$kind]}" "${qcpu[dnsmasq-$kind]}" "${lat[limanet-$kind]}" "${lat[dnsmasq-$kind]}" <<'PY'
import sys
kind, lq, dq, lc, dc, ll, dl = sys.argv[1], *map(float, sys.argv[2:])
label = {"hosts": "hosts-file names (A)", "fwd": "forwarded (PTR)"}[kind]
print(f"| {label} | {lq:.0f} | {dq:.0f} | {lq/dq:.2f} | {lc:.0f} | {dc:.0f} | {lc/dc:.2f} | {ll:.3f} | {dl:.3f} | {ll/dl:.2f} |")
PY
  done
  echo
  echo "dnsperf -q 200 -c 4, ${DURATION}s per run, ${ROUNDS} alternating rounds averaged; $(nproc) CPUs;"
  if [ "$PIN" = 1 ]; then echo "pinned: dnsperf and the stub on CPU 0, the server on CPU 1 (taskset);"; else echo "not pinned;"; fi
  echo "q per CPU-s: queries answered per second of the server's own CPU time (all its threads);"
  echo "lost queries per run: limanet hosts:${lost[limanet-hosts]} fwd:${lost[limanet-fwd]}; dnsmasq hosts:${lost[dnsmasq-hosts]} fwd:${lost[dnsmasq-fwd]}"
}
if [ -n "${OUT:-}" ]; then report | tee "$OUT"; else report; fi
