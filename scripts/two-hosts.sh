#!/usr/bin/env bash
# Two hosts on one machine: network namespaces "source" and "target" joined by a veth pair
# (link-local 169.254.77.1 and .2), `vgpu-migrate incoming` in the target, `vgpu-migrate
# migrate` in the source, both outputs printed. The namespaces are deleted on exit, also
# on failure or Ctrl-C.
#
#   scripts/two-hosts.sh [--delay MS] [--loss PCT] [--rate RATE] [-- MIGRATE-ARGS...]
#
# --delay/--loss shape both directions with `tc netem` (a symmetric path); --rate uses
# netem's rate, or `tbf` where the kernel has no sch_netem (the machines here do not:
# then --delay and --loss are refused, and tests/tests/two_hosts.rs shapes its path with a
# userspace relay instead). MIGRATE-ARGS default to a small workload
# (--frames 6 --migrate-at 2 and a 320x200 render).
#
# The downtime printed is measured on the source's clock alone: from its stop to the
# target's acknowledgement, minus half the path's round trip as the source's TCP measured
# it (see vmm/src/migration/clock.rs); the report says so.
#
# Needs root and iproute2 (scripts/setup.sh installs it).
set -euo pipefail
cd "$(dirname "$0")/.."

delay="" loss="" rate=""
while [ "$#" -gt 0 ]; do
    case "$1" in
        --delay) delay="$2"; shift 2 ;;
        --loss) loss="$2"; shift 2 ;;
        --rate) rate="$2"; shift 2 ;;
        --) shift; break ;;
        -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
        *) echo "error: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done
extra=("$@")
if [ "${#extra[@]}" -eq 0 ]; then
    extra=(--frames 6 --migrate-at 2 --width 320 --height 200 --triangles 600)
fi
if [ "$(id -u)" != 0 ]; then
    echo "error: network namespaces need root" >&2
    exit 2
fi
for tool in ip tc; do
    command -v "$tool" >/dev/null || { echo "error: $tool is missing (scripts/setup.sh)" >&2; exit 2; }
done

cargo build --release -q -p vgpu-migrate
bin="$PWD/target/release/vgpu-migrate"

id="$$"
src="vgpu-src-sh$id" dst="vgpu-dst-sh$id" va="vs-sh$id" vb="vd-sh$id"
ready="$(mktemp -u /tmp/vgpu-two-hosts-XXXXXX.url)"
cleanup() {
    [ -n "${target_pid:-}" ] && kill "$target_pid" 2>/dev/null || true
    ip netns del "$src" 2>/dev/null || true
    ip netns del "$dst" 2>/dev/null || true
    rm -f "$ready"
}
trap cleanup EXIT INT TERM

ip netns add "$src"
ip netns add "$dst"
ip link add "$va" type veth peer name "$vb"
ip link set "$va" netns "$src"
ip link set "$vb" netns "$dst"
ip -n "$src" addr add 169.254.77.1/30 dev "$va"
ip -n "$dst" addr add 169.254.77.2/30 dev "$vb"
for ns in "$src" "$dst"; do ip -n "$ns" link set lo up; done
ip -n "$src" link set "$va" up
ip -n "$dst" link set "$vb" up

shape() { # namespace device
    local spec=()
    [ -n "$delay" ] && spec+=(delay "${delay}ms")
    [ -n "$loss" ] && spec+=(loss "${loss}%")
    [ -n "$rate" ] && spec+=(rate "$rate")
    [ "${#spec[@]}" -eq 0 ] && return 0
    if tc -n "$1" qdisc add dev "$2" root netem "${spec[@]}" 2>/dev/null; then
        return 0
    fi
    if [ -n "$delay$loss" ]; then
        echo "error: this kernel has no sch_netem, so no --delay or --loss here;" \
            "cargo test -p vgpu-migrate-tests --test two_hosts shapes a path in userspace" >&2
        exit 2
    fi
    tc -n "$1" qdisc add dev "$2" root tbf rate "$rate" burst 64kb latency 50ms
}
shape "$src" "$va"
shape "$dst" "$vb"
echo "two hosts: $src (169.254.77.1) <-> $dst (169.254.77.2)" \
    "${delay:+delay ${delay} ms }${loss:+loss ${loss}% }${rate:+rate $rate}"

ip netns exec "$dst" "$bin" incoming --listen tcp://169.254.77.2:0 --ready-file "$ready" \
    --type vgpu-64 > >(sed 's/^/[target] /') 2>&1 &
target_pid=$!
for _ in $(seq 1 600); do
    [ -s "$ready" ] && break
    kill -0 "$target_pid" 2>/dev/null || { echo "error: incoming exited" >&2; exit 1; }
    sleep 0.1
done
[ -s "$ready" ] || { echo "error: incoming never listened" >&2; exit 1; }
url="$(cat "$ready")"
rc=0
ip netns exec "$src" "$bin" migrate --to "$url" --type vgpu-64 "${extra[@]}" \
    2>&1 | sed 's/^/[source] /' || rc=$?
wait "$target_pid" || rc=$?
target_pid=""
exit "$rc"
