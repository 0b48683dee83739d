#!/usr/bin/env bash
# migrate_cpu.sh SIZE_MIB [MTU] [extra migrate args...]
#
# One lazy migration of a freshly started `wl_heap SIZE_MIB` across a veth pair between two
# network namespaces (as the migrate bench does), with the CPU time each side spent: prints
# `fastcr migrate --json`'s downtime and time to all pages, and `/usr/bin/time`'s user and
# system seconds of `migrate` (source) and `receive` (destination). Used for the CPU budget in
# docs/benchmarks.md. Needs root, iproute2, GNU time, a release build and the workloads
# (`cargo build --release -p cr-user`; any vmtests run builds target/workloads/).
#
# It starts the workload, the two namespaces and both fastcr sides itself, and stops only
# those: the copy is found as the process whose innermost pid is the workload's, in the pid
# namespace `receive --pidns new` made.
set -euo pipefail

size=${1:?usage: migrate_cpu.sh SIZE_MIB [MTU] [extra migrate args...]}
mtu=${2:-1500}
shift $(($# >= 2 ? 2 : 1))
root=$(cd "$(dirname "$0")/../.." && pwd)
fastcr=${FASTCR_BIN:-$root/target/release/fastcr}
wl=$root/target/workloads/wl_heap
ns_a=fcr-cpu-a-$$
ns_b=fcr-cpu-b-$$
state=$(mktemp -d)
head -c 32 /dev/urandom | base64 >"$state/token"
wl_pid=

cleanup() {
	if [ -n "$wl_pid" ]; then
		for s in /proc/[0-9]*/status; do
			if grep -qP "^NSpid:\t\d+\t$wl_pid$" "$s" 2>/dev/null; then
				kill -TERM "$(basename "$(dirname "$s")")" 2>/dev/null || true
			fi
		done
		kill -KILL "$wl_pid" 2>/dev/null || true
	fi
	ip netns delete "$ns_a" 2>/dev/null || true
	ip netns delete "$ns_b" 2>/dev/null || true
	rm -rf "$state"
}
trap cleanup EXIT

ip netns add "$ns_a"
ip netns add "$ns_b"
ip -n "$ns_a" link add va type veth peer name vb netns "$ns_b"
ip -n "$ns_a" addr add 10.231.250.1/24 dev va
ip -n "$ns_b" addr add 10.231.250.2/24 dev vb
ip -n "$ns_a" link set lo up
ip -n "$ns_b" link set lo up
ip -n "$ns_a" link set va mtu "$mtu" up
ip -n "$ns_b" link set vb mtu "$mtu" up

"$wl" "$state" "$size" >"$state/wl.out" 2>&1 &
wl_pid=$!
while [ ! -e "$state/ready" ]; do sleep 0.1; done
sleep 1

ip netns exec "$ns_b" /usr/bin/time -f "receive (destination): user %U s, system %S s" \
	"$fastcr" receive --listen 10.231.250.2:7777 --token-file "$state/token" --pidns new \
	>/dev/null 2>"$state/recv.err" &
recv_pid=$!
sleep 0.5
ip netns exec "$ns_a" /usr/bin/time -f "migrate (source): user %U s, system %S s" \
	"$fastcr" migrate -t "$wl_pid" --to 10.231.250.2:7777 --token-file "$state/token" --lazy \
	--json "$@" >"$state/mig.json" 2>"$state/mig.err"
wait "$recv_pid"
python3 -c '
import json, sys
j = json.load(open(sys.argv[1]))
print("MTU %s: downtime %.1f ms, time to all pages %.0f ms" % (
    sys.argv[2], j["downtime_us"] / 1e3, j["time_to_all_pages_us"] / 1e3))
' "$state/mig.json" "$mtu"
tail -n 1 "$state/mig.err"
tail -n 1 "$state/recv.err"
