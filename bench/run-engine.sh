#!/usr/bin/env bash
# make bench-engine: mooring-agent against RabbitMQ 3.10, side by side, with our own load
# generator. Builds nothing: `make bench-engine` runs `cargo build --release --bins` first.
#
# Environment (all optional):
#   BENCH_DURATION   seconds per timed scenario per broker (default 10)
#   BENCH_SCENARIOS  comma-separated subset of S1,S2-16B,S2-4KiB,S3,S4,S6,S6-quorum,S7
#   BENCH_BACKLOG    messages in the S3 backlog (default 1000000)
#   BENCH_BROKERS    mooring,rabbitmq (default both)
#   BENCH_JSON_OUT   also write every measurement as JSON to this file
#   BENCH_RABBITMQ_URI + BENCH_RABBITMQ_PID   use a running RabbitMQ instead of a private node
#
# The runner starts both brokers itself (temp dirs, ephemeral ports) and stops them by PID
# when it exits, also on failure or SIGINT/SIGTERM.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN="${CARGO_TARGET_DIR:-$PWD/target}/release"
for b in mooring-bench-engine mooring-loadgen mooring-agent; do
  [[ -x "$BIN/$b" ]] || { echo "missing $BIN/$b: run cargo build --release --bins" >&2; exit 2; }
done
runner_pid=
# Forward an interrupt to the runner and wait for it: it stops the brokers it started.
trap '[[ -n "$runner_pid" ]] && kill -TERM "$runner_pid" 2>/dev/null; wait "$runner_pid" 2>/dev/null' INT TERM
"$BIN/mooring-bench-engine" --agent-bin "$BIN/mooring-agent" --loadgen-bin "$BIN/mooring-loadgen" "$@" &
runner_pid=$!
wait "$runner_pid"
