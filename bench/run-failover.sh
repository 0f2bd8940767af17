#!/usr/bin/env bash
# make bench-failover: issue 5's timing targets with release binaries. The chaos test
# (tests/tests/replication_chaos.rs) runs a real `mooring serve` and real agents — here the
# release builds — kills, freezes and switches leaders over under confirmed publishing, and
# prints failover p50/p99 (kill -> first confirm on the new leader) and the longest gap in
# confirms during a planned switchover and a RebootBroker. With MOORING_BENCH set it also
# enforces the targets: failover p99 < 3 s, planned switchover gap < 1 s.
#
# Environment (optional): MOORING_CHAOS_KILLS (kills per broker, default 10 here).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN="${CARGO_TARGET_DIR:-$PWD/target}/release"
for b in mooring mooring-agent; do
  [[ -x "$BIN/$b" ]] || { echo "missing $BIN/$b: run cargo build --release --bins" >&2; exit 2; }
done
out="bench/results-failover-$(date -u +%Y-%m-%dT%H%M).txt"
{
  echo "# make bench-failover at $(date -u +%H:%M) UTC, tree at $(git rev-parse --short HEAD); release mooring and mooring-agent"
  echo "# load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
  MOORING_BENCH=1 MOORING_BIN_DIR="$BIN" MOORING_CHAOS_KILLS="${MOORING_CHAOS_KILLS:-10}" \
    cargo test -q -p mooring-tests --test replication_chaos -- --nocapture 2>&1 \
    | grep -E "^(CHAOS|standby|cluster|test result)|panicked|Error|misses|left"
  echo "# load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
} | tee "$out"
echo "bench-failover: written to $out"
