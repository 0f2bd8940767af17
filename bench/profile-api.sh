#!/usr/bin/env bash
# Where an API request's time goes: database round trips per request (pg_stat_statements)
# and the control plane's CPU profile (perf), one operation at a time. The companion of
# run-api.sh, for explaining its numbers; builds nothing (run `cargo build --release --bins`).
#
# For each operation: reset pg_stat_statements, drive it with mooring-api-load, then print
# the statements Postgres ran per request (calls / requests; the reconciler's background
# queries show up with small fractions) and, with PROFILE_PERF=1, the top of a flat perf
# profile of `mooring serve` taken during the run.
#
# Environment: PROFILE_OPS (default describe-broker,list-brokers,create-user),
# PROFILE_SECONDS (default 4), PROFILE_CLIENTS (default 16), PROFILE_PERF (0/1), PROFILE_STRACE (0/1: system-call counts, strace -c),
# PROFILE_IDLE_SECONDS (default 10; 0 skips the idle measurement).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN="${CARGO_TARGET_DIR:-$PWD/target}/release"
OPS="${PROFILE_OPS:-describe-broker,list-brokers,create-user}"
SECONDS_PER_OP="${PROFILE_SECONDS:-4}"
CLIENTS="${PROFILE_CLIENTS:-16}"
for b in mooring mooring-api-load; do
  [[ -x "$BIN/$b" ]] || { echo "missing $BIN/$b: run cargo build --release --bins" >&2; exit 2; }
done
PG_BIN="$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)"

work="$(mktemp -d)"
server_pid=
as_postgres() { if [[ $(id -u) == 0 ]]; then runuser -u postgres -- "$@"; else "$@"; fi; }
cleanup() {
  [[ -n "$server_pid" ]] && kill "$server_pid" 2>/dev/null && wait "$server_pid" 2>/dev/null
  [[ -f "$work/pg/PG_VERSION" ]] && as_postgres "$PG_BIN/pg_ctl" -D "$work/pg" -m fast -w stop >/dev/null 2>&1
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
[[ $(id -u) == 0 ]] && chown postgres: "$work"
port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
as_postgres "$PG_BIN/initdb" -D "$work/pg" -U postgres --auth=trust -E UTF8 --no-sync >/dev/null
as_postgres "$PG_BIN/pg_ctl" -D "$work/pg" -l "$work/pg.log" -w \
  -o "-p $port -k $work -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200 \
      -c shared_preload_libraries=pg_stat_statements -c pg_stat_statements.track=all" start >/dev/null
psql() { command psql -q -X -h 127.0.0.1 -p "$port" -U postgres "$@"; }
psql -d postgres -c 'CREATE DATABASE mooring'
psql -d mooring -c 'CREATE EXTENSION pg_stat_statements'
DB="postgres://postgres@127.0.0.1:$port/mooring"

mkdir -p "$work/cp"
# No rate limit: the load generator is one principal far above a person's rate.
MOORING_RATE_LIMIT_BURST=0 MOORING_LOG_FORMAT=human RUST_LOG="${RUST_LOG:-warn}" "$BIN/mooring" serve --listen 127.0.0.1:0 \
  --data-dir "$work/cp" --database-url "$DB" --agent-binary "$work/no-agent" \
  >"$work/serve.log" 2>&1 &
server_pid=$!
for _ in $(seq 100); do [[ -s "$work/cp/listen" ]] && break; sleep 0.1; done
[[ -s "$work/cp/listen" ]] || { echo "mooring serve did not start:" >&2; cat "$work/serve.log" >&2; exit 1; }
api="$(cat "$work/cp/listen")"
load() {
  "$BIN/mooring-api-load" --endpoint "$api" --clients "$CLIENTS" --seconds "$SECONDS_PER_OP" \
    --credentials "$work/cp/credentials" --server-pid "$server_pid" "$@"
}
echo "profile-api: $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg)"
# Creates the brokers (and warms the caches) once.
load --ops healthz --brokers 100 >/dev/null 2>&1

# What the server burns with nothing asked of it: its CPU and the statements the background
# loops run while the 100 brokers (which never get nodes) sit there.
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
if [[ "${PROFILE_IDLE_SECONDS:-10}" -gt 0 ]]; then
  idle="${PROFILE_IDLE_SECONDS:-10}"
  psql -d mooring -c 'SELECT pg_stat_statements_reset()' >/dev/null
  t0="$(cpu_ticks "$server_pid")"
  sleep "$idle"
  t1="$(cpu_ticks "$server_pid")"
  echo
  echo "== idle, 100 brokers, ${idle} s: server CPU $(awk -v a="$t0" -v b="$t1" -v s="$idle" -v hz="$(getconf CLK_TCK)" \
    'BEGIN { printf "%.1f ms/s", (b - a) * 1000 / hz / s }')"
  psql -d mooring -At -F ' | ' -c "SELECT round(calls::numeric / $idle, 1) || '/s', \
      round((total_exec_time / calls)::numeric * 1000, 1) || ' us', left(regexp_replace(query, '\\s+', ' ', 'g'), 100) \
      FROM pg_stat_statements ORDER BY calls DESC LIMIT 8"
fi

IFS=',' read -r -a ops <<<"$OPS"
for op in "${ops[@]}"; do
  psql -d mooring -c 'SELECT pg_stat_statements_reset()' >/dev/null
  if [[ "${PROFILE_PERF:-0}" == 1 ]]; then
    perf record -F 999 -g -o "$work/perf.data" -p "$server_pid" -- sleep "$SECONDS_PER_OP" >/dev/null 2>&1 &
    perf_pid=$!
  fi
  if [[ "${PROFILE_STRACE:-0}" == 1 ]]; then
    timeout -s INT "$SECONDS_PER_OP" strace -c -f -e trace=sendto,recvfrom,writev,read,write \
      -o "$work/strace.txt" -p "$server_pid" >/dev/null 2>&1 &
    strace_pid=$!
  fi
  result="$(load --ops "$op" --brokers 100 --reuse-brokers 2>/dev/null | grep '^result ')"
  [[ "${PROFILE_PERF:-0}" == 1 ]] && wait "$perf_pid"
  [[ "${PROFILE_STRACE:-0}" == 1 ]] && { wait "$strace_pid" || true; }
  read -r _ _ rate p50 p99 ccpu scpu <<<"$result"
  requests="$(awk -v r="$rate" -v s="$SECONDS_PER_OP" 'BEGIN { printf "%d", r * s }')"
  echo
  echo "== $op: $rate req/s, p50 $p50 ms, p99 $p99 ms, server CPU $scpu us/request, ~$requests requests"
  psql -d mooring -At -F ' ' -c "SELECT round(sum(calls)::numeric / $requests, 2) FROM pg_stat_statements" \
    | awk '{ print "statements per request (all, incl. background): " $1 }'
  psql -d mooring -At -F ' | ' -c "SELECT round(calls::numeric / $requests, 3), \
      round((total_exec_time / calls)::numeric * 1000, 1) || ' us', left(regexp_replace(query, '\\s+', ' ', 'g'), 110) \
      FROM pg_stat_statements ORDER BY calls DESC LIMIT 8"
  if [[ "${PROFILE_STRACE:-0}" == 1 ]]; then
    # Under strace the rate is far lower; divide by the requests the server counted.
    echo "system calls during the run (strace -c; divide by the requests it served, below):"
    grep -E 'sendto|recvfrom|writev|read|write|total' "$work/strace.txt" || true
  fi
  if [[ "${PROFILE_PERF:-0}" == 1 ]]; then
    perf report -i "$work/perf.data" --no-children --sort dso,symbol --stdio 2>/dev/null \
      | grep -E '^ +[0-9]' | head -25
  fi
done
