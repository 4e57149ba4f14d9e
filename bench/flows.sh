#!/usr/bin/env bash
# Many flows: one namespace guest opens FLOWS idle TCP connections through `limanet usernet` to a
# server on the host's loopback; TCP_RR latency, limanet's resident memory, descriptors and idle
# CPU are measured with none of them open and with all of them open, in the same run.
# Targets (issue #11): RR latency with 10k idle flows within 10 % of the figure with none, RSS
# with 10k idle flows ≤ 64 MiB, and an idle network at ~0 % CPU however many flows are open
# (no per-flow work on timer ticks).
# Everything runs in namespaces this script creates; nothing leaves them.
# Needs root and the release builds of limanet and tcp-rr (built here).
# Env: FLOWS (default 10000), RR_SECS (default 3), ROUNDS (RR runs per state, default 3, median),
#      OUT (markdown file to append the results to), PERF=1 (also profile limanet during the
#      loaded RR run and print the top symbols: per-packet work must not grow with flows).
set -euo pipefail
cd "$(dirname "$0")/.."
FLOWS=${FLOWS:-10000}
RR_SECS=${RR_SECS:-3}
ROUNDS=${ROUNDS:-3}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target}
cargo build --release -q -p limanet -p limanet-testkit --bin limanet --bin tcp-rr
BIN=${LIMANET_BIN:-$CARGO_TARGET_DIR/release/limanet}
RR=$CARGO_TARGET_DIR/release/tcp-rr

work=$(mktemp -d /tmp/limanet-flows.XXXXXX)
tag=flows$$
host=$tag-host
guest=$tag-g
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  ip netns del "$guest" 2>/dev/null || true
  ip netns del "$host" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
log() { echo "[flows] $*" >&2; }

ip netns add "$host"
ip -n "$host" link set lo up
ip netns add "$guest"
printf '# no nameserver\n' >"$work/resolv.conf"
# Every side holds FLOWS descriptors: the guest's client, limanet, the host's server. With
# one guest, limanet may give it more than the default half of its table.
ulimit -Hn 65536 2>/dev/null || true
ulimit -n "$(ulimit -Hn)"
ip netns exec "$host" "$RR" server 127.0.0.1:5300 >/dev/null 2>&1 & pids+=($!)
ip netns exec "$host" "$RR" hold-server 127.0.0.1:5400 2>"$work/hold-server.log" & pids+=($!)
ip netns exec "$host" "$BIN" --log warn usernet --instance flows --resolv-conf "$work/resolv.conf" \
  --no-fallback-dns --pidfile "$work/limanet.pid" --netns "/run/netns/$guest" --max-flows-per-guest $((FLOWS + 64)) 2>"$work/limanet.log" & pids+=($!)
for _ in $(seq 100); do [ -s "$work/limanet.pid" ] && break; sleep 0.1; done
LPID=$(cat "$work/limanet.pid")
for _ in $(seq 100); do ip netns exec "$guest" ip -4 route show default | grep -q . && break; sleep 0.1; done

rss_kb() { awk '/^VmRSS:/ {print $2}' "/proc/$LPID/status"; }
fds() { ls "/proc/$LPID/fd" | wc -l; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$LPID/stat"; }
# Share of one CPU limanet uses over 5 s with no traffic at all.
idle_cpu() {
  local t0 t1
  t0=$(cpu_ticks); sleep 5; t1=$(cpu_ticks)
  awk -v d=$((t1 - t0)) -v hz="$(getconf CLK_TCK)" 'BEGIN {printf "%.1f", 100 * d / hz / 5}'
}
# Median p50 and p99 (µs) over ROUNDS runs of tcp-rr rr.
rr() {
  local i line
  for i in $(seq "$ROUNDS"); do
    line=$(ip netns exec "$guest" "$RR" rr 192.168.5.2:5300 "$RR_SECS")
    sed -E 's/.*p50_us=([0-9.]+) p99_us=([0-9.]+).*/\1 \2/' <<<"$line"
  done | sort -n | awk '{p50[NR]=$1; p99[NR]=$2} END {m=int((NR+1)/2); printf "%s %s\n", p50[m], p99[m]}'
}

declare -A res
measure() { # STATE
  log "$1: RR ($ROUNDS x ${RR_SECS}s)"
  read -r res[$1,p50] res[$1,p99] < <(rr)
  [ -n "${res[$1,p50]}" ] || { log "$1: RR failed"; exit 1; }
  res[$1,rss]=$(rss_kb)
  res[$1,fds]=$(fds)
  log "$1: idle CPU"
  res[$1,cpu]=$(idle_cpu)
  log "$1: p50 ${res[$1,p50]} µs, p99 ${res[$1,p99]} µs, RSS ${res[$1,rss]} kB, fds ${res[$1,fds]}, idle CPU ${res[$1,cpu]} %"
}

measure none
log "opening $FLOWS idle flows"
t0=$SECONDS
ip netns exec "$guest" sh -c "ulimit -n $(ulimit -Hn); exec \"\$0\" hold 192.168.5.2:5400 $FLOWS" "$RR" \
  >"$work/hold.out" 2>"$work/hold.err" & pids+=($!)
for _ in $(seq 600); do
  grep -q '^held=' "$work/hold.out" && break
  if ! kill -0 "${pids[-1]}" 2>/dev/null; then
    head -3 "$work/hold.err" >&2
    log "limanet's log:"; tail -20 "$work/limanet.log" >&2; tail -5 "$work/hold-server.log" >&2
    exit 1
  fi
  sleep 0.2
done
grep -q '^held=' "$work/hold.out" || { log "flows did not open in time"; exit 1; }
open_secs=$((SECONDS - t0))
log "$FLOWS flows open after ${open_secs}s"
sleep 2
measure flows
if [ "${PERF:-0}" = 1 ]; then
  log "profiling limanet during RR with $FLOWS flows open"
  perf record -q -g -o "$work/perf.data" -p "$LPID" -- sleep "$RR_SECS" 2>/dev/null &
  ip netns exec "$guest" "$RR" rr 192.168.5.2:5300 "$RR_SECS" >/dev/null
  wait $! || true
  perf report -q -i "$work/perf.data" --no-children -g none --percent-limit 1 --sort symbol 2>/dev/null | grep -v '^$' | head -15
fi

table=$(awk -v n="$FLOWS" -v a50="${res[none,p50]}" -v a99="${res[none,p99]}" -v b50="${res[flows,p50]}" \
  -v b99="${res[flows,p99]}" -v ar="${res[none,rss]}" -v br="${res[flows,rss]}" -v af="${res[none,fds]}" \
  -v bf="${res[flows,fds]}" -v ac="${res[none,cpu]}" -v bc="${res[flows,cpu]}" -v open="$open_secs" 'BEGIN {
  printf "| idle flows open | RR p50 µs | RR p99 µs | RSS MiB | descriptors | idle CPU %% |\n|---|---|---|---|---|---|\n"
  printf "| 0 | %s | %s | %.1f | %s | %s |\n", a50, a99, ar / 1024, af, ac
  printf "| %d | %s | %s | %.1f | %s | %s |\n\n", n, b50, b99, br / 1024, bf, bc
  printf "- RR p50 with %d flows / with none: **%.2f** (target ≤ 1.10)\n", n, b50 / a50
  printf "- RSS with %d idle flows: **%.1f MiB** (target ≤ 64 MiB); %.0f bytes per flow\n", n, br / 1024, (br - ar) * 1024 / n
  printf "- opening the %d flows took %d s\n", n, open
}')
echo "$table"
if [ -n "${OUT:-}" ]; then
  {
    echo
    echo "## $(date -u +%Y-%m-%dT%H:%MZ), limanet $(git rev-parse --short HEAD)"
    echo
    echo "Machine: $(nproc) CPUs ($(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)), kernel $(uname -r), load average $(cut -d' ' -f1-3 /proc/loadavg)."
    echo "One namespace guest, MTU 1500, \`tcp-rr rr\` $ROUNDS x ${RR_SECS}s per state (median)."
    echo
    echo "$table"
  } >>"$OUT"
fi
