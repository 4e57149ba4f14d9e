#!/usr/bin/env bash
#   sudo bench/vmnet_pair.sh [LIMANET] [ROUNDS] [SECONDS]
# A/B of VM->VM through the vmnet switch with TAP passing against the relay, in one run on one
# daemon, beside limanet usernet's guest->host. Private namespaces only; cleans up on exit.
# One vmnet daemon: v1,v2 attached with TAP passing, v3,v4 relayed (--no-pass-tap); one usernet
# namespace guest. Alternating cells, ROUNDS rounds: Gbit/s and limanet CPU ms per GB.
set -u
L=${1:-target/release/limanet}; ROUNDS=${2:-5}; S=${3:-3}
T=lnvp$$; H=${T}h; W=$(mktemp -d /tmp/lnvp.XXXX); P=()
cleanup(){ for p in "${P[@]}"; do kill $p 2>/dev/null; done; sleep 0.3; for n in $H ${T}v1 ${T}v2 ${T}v3 ${T}v4 ${T}u; do ip netns del $n 2>/dev/null; done; rm -rf $W; }
trap cleanup EXIT
ip netns add $H; ip -n $H link set lo up
ip netns exec $H $L vmnet --vmnet-mode=host --vmnet-gateway=192.168.106.1 --socket-group=root --pidfile=$W/pid $W/s 2>$W/log & P+=($!); D=$!
for _ in $(seq 100); do [ -s $W/pid ] && break; sleep 0.1; done
declare -A AP
for i in 1 2 3 4; do ip netns add ${T}v$i; ip -n ${T}v$i link set lo up
 f=""; [ $i -ge 3 ] && f=--no-pass-tap
 $L attach $f --netns /run/netns/${T}v$i --tap-name eth0 --address 192.168.106.1$i/24 --gateway 192.168.106.1 $W/s 2>$W/a$i & P+=($!); AP[$i]=$!; done
ip netns add ${T}u
ip netns exec $H $L usernet --netns /run/netns/${T}u --no-dns 2>$W/u & P+=($!); U=$!
sleep 2
ip netns exec ${T}v2 iperf3 -s -B 192.168.106.12 >/dev/null 2>&1 & P+=($!)
ip netns exec ${T}v4 iperf3 -s -B 192.168.106.14 >/dev/null 2>&1 & P+=($!)
ip netns exec $H iperf3 -s -B 127.0.0.1 >/dev/null 2>&1 & P+=($!)
sleep 1
cpu() { local t=0; for p in "$@"; do t=$((t + $(awk '{print $14+$15}' /proc/$p/stat))); done; echo $t; }
cell() { # name ns addr pids...
 local name=$1 ns=$2 addr=$3; shift 3
 local c0; c0=$(cpu "$@")
 local j; j=$(ip netns exec $ns iperf3 -c $addr -t $S -J 2>/dev/null)
 local c1; c1=$(cpu "$@")
 local bits bytes; bits=$(echo "$j" | jq '.end.sum_received.bits_per_second // 0'); bytes=$(echo "$j" | jq '.end.sum_received.bytes // 0')
 awk -v n=$name -v b=$bits -v by=$bytes -v c=$((c1 - c0)) -v hz=$(getconf CLK_TCK) 'BEGIN{printf "%s %.2f %.0f\n", n, b/1e9, (by>0? c*1000/hz/(by/1e9) : 0)}'
}
for r in $(seq $ROUNDS); do
 echo "round $r load $(cut -d' ' -f1-3 /proc/loadavg)"
 cell passed ${T}v1 192.168.106.12 $D ${AP[1]} ${AP[2]}
 cell relayed ${T}v3 192.168.106.14 $D ${AP[3]} ${AP[4]}
 cell usernet_g2h ${T}u 192.168.5.2 $U
done
grep -c "client passed its TAP" $W/log
