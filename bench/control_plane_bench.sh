#!/usr/bin/env bash
# Control-plane latency of the coordinator against the gRPC floor of the same
# server, in the same invocation.
#
# Starts a real llamapro-coordinator on a fresh data dir, submits 1,000 EXPAND
# jobs (no workers, so they stay pending) and cancels every second one; then
# 200 client threads on 8 connections, each calling in a closed loop for 30 s:
#   baseline (first): grpc.health.v1.Health/Check, gRPC's own handler;
#   load (second):    GetJob on a random job, then WatchJob on a random
#                     cancelled job, read to its end (it replays the job's
#                     events and ends).
# Prints calls, calls/s, p50/p90/p99/max latency and errors per call, then the
# verdict and the ratio of our p99 to the floor's last. Target (the
# control-plane issue): p99 < 20 ms for GetJob and WatchJob, no errors.
# Exits 1 if any call failed. Other load on the machine skews the numbers:
# the CPU line of each phase says how much there was.
#
# Usage: bench/control_plane_bench.sh [control_plane_bench flags]
#   --clients N (200)  --jobs N (1000)  --seconds S (30)  --channels N (one per 25 clients)
#   --warmup S (2)  --address HOST:PORT (use a running coordinator)  --coordinator-bin PATH
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
case "${1:-}" in
  -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
esac
build="${LLAMAPRO_BUILD_DIR:-$root/build}"
"$root/scripts/build.sh" --target control_plane_bench llamapro-coordinator >/dev/null
echo "== $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //');" \
     "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
coordinator=(--coordinator-bin "$build/coordinator/llamapro-coordinator")
for arg in "$@"; do
  case "$arg" in --address|--address=*|--coordinator-bin|--coordinator-bin=*) coordinator=() ;; esac
done
exec "$build/bench/control_plane_bench" "${coordinator[@]}" "$@"
