#!/usr/bin/env bash
# make bench-api: the control plane's API against raw Postgres on the same server, then the
# fleet test. Builds nothing itself: `make bench-api` runs `cargo build --release --bins` first.
#
# 1. A throwaway Postgres (initdb, its own port, fsync=off: neither side waits for the disk,
#    so both are measured on CPU and round trips, not on this machine's fsync).
# 2. `mooring serve` (release) on it, with an agent binary that does not exist: brokers never
#    get nodes, so no engine competes for the CPU, and the reconciler backs their failures off.
# 3. `mooring-api-load` (a separate process, one thread) creates the brokers and drives
#    DescribeBroker, ListBrokers and CreateUser with concurrent keep-alive clients, signed
#    with `<data-dir>/credentials` when the control plane wrote one.
# 4. pgbench on the same database with the same client count: the single-row select and
#    insert those operations amount to.
# 5. The fleet test (10,000 simulated agents on the control plane's real agent API).
#
# Environment (all optional):
#   BENCH_API_CLIENTS   concurrent clients, API and pgbench alike (default 16)
#   BENCH_API_SECONDS   seconds per operation (default 5)
#   BENCH_API_BROKERS   brokers created before the measurement (default 100)
#   BENCH_FLEET_BROKERS brokers in the fleet test (default 10000; 0 skips it)
set -euo pipefail
cd "$(dirname "$0")/.."
BIN="${CARGO_TARGET_DIR:-$PWD/target}/release"
CLIENTS="${BENCH_API_CLIENTS:-16}"
DURATION="${BENCH_API_SECONDS:-5}"
BROKERS="${BENCH_API_BROKERS:-100}"
FLEET="${BENCH_FLEET_BROKERS:-10000}"
for b in mooring mooring-api-load; do
  [[ -x "$BIN/$b" ]] || { echo "missing $BIN/$b: run cargo build --release --bins" >&2; exit 2; }
done
PG_BIN="$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)"
[[ -x "$PG_BIN/initdb" ]] || { echo "no PostgreSQL server binaries under /usr/lib/postgresql" >&2; exit 2; }
command -v pgbench >/dev/null || { echo "pgbench is missing (Debian: postgresql-contrib)" >&2; exit 2; }

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

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
port="$(free_port)"
as_postgres "$PG_BIN/initdb" -D "$work/pg" -U postgres --auth=trust -E UTF8 --no-sync >/dev/null
as_postgres "$PG_BIN/pg_ctl" -D "$work/pg" -l "$work/pg.log" -w \
  -o "-p $port -k $work -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200" start >/dev/null
psql -q -h 127.0.0.1 -p "$port" -U postgres -d postgres -c 'CREATE DATABASE mooring'
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

echo "bench-api: $(nproc) cores, load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "bench-api: Postgres $("$PG_BIN/postgres" --version | awk '{print $3}') on 127.0.0.1:$port (fsync=off), $CLIENTS clients, $DURATION s per operation, $BROKERS brokers"
postmaster="$(head -n 1 "$work/pg/postmaster.pid")"
"$BIN/mooring-api-load" --endpoint "$api" --clients "$CLIENTS" --seconds "$DURATION" \
  --brokers "$BROKERS" --credentials "$work/cp/credentials" --server-pid "$server_pid" \
  --postgres-pid "$postmaster" >"$work/api.txt"

# CPU seconds: the Postgres tree, and a shell's reaped children (pgbench among them).
pg_cpu() { "$BIN/mooring-api-load" --endpoint "$api" --print-tree-cpu "$postmaster"; }
children_cpu() { awk '{ sub(/.*\) /, ""); print ($14 + $15) / 100 }' "/proc/$1/stat"; }
# Prints "TPS PGBENCH_US_PER_TX POSTGRES_US_PER_TX". $2: extra pgbench flags.
pgbench_run() {
  printf '%b' "$1" >"$work/script.sql"
  local pg0 own0 tps me=$BASHPID
  pg0="$(pg_cpu)"
  own0="$(children_cpu "$me")"
  # shellcheck disable=SC2086 # $2 is a list of flags
  pgbench -h 127.0.0.1 -p "$port" -U postgres -n -j 2 -c "$CLIENTS" -T "$DURATION" ${2:-} \
    -f "$work/script.sql" mooring >"$work/pgbench.txt" 2>/dev/null
  tps="$(awk '/^tps = /{print $3}' "$work/pgbench.txt")"
  awk -v tps="$tps" -v t="$DURATION" -v pg="$(pg_cpu)" -v pg0="$pg0" \
    -v own="$(children_cpu "$me")" -v own0="$own0" 'BEGIN {
      n = tps * t; printf "%s %.1f %.1f\n", tps, (own - own0) * 1e6 / n, (pg - pg0) * 1e6 / n }'
}
# DescribeBroker and ListBrokers amount to an indexed single-row select; CreateUser to a
# single-row insert.
read -r select_tps select_client select_pg < <(pgbench_run "\\\\set n random(0, $((BROKERS - 1)))\nSELECT * FROM brokers WHERE name = 'load-' || :n;\n")
read -r insert_tps insert_client insert_pg < <(pgbench_run "INSERT INTO tags (resource_arn, key, value) VALUES (md5(random()::text), 'k', 'v');\n")
# For scale, not a target: CreateUser's write for one user (lock the broker, insert the user,
# bump the generation, append the request's audit record), prepared, with no API or
# authentication around it. (mooring runs it for batches of concurrent creations.) Its audit
# strings use dots for colons, which pgbench would read as variables.
read -r stmt_tps _ stmt_pg < <(pgbench_run "\\\\set n random(0, $((BROKERS - 1)))\n\\\\set u random(1, 2000000000)\nWITH broker AS (SELECT id, generation + 1 AS generation FROM brokers WHERE name = 'load-' || :n::text AND state <> 'DELETION_IN_PROGRESS' FOR UPDATE), added AS (INSERT INTO broker_users (broker_id, username, password_hash, console_access, groups, replication_user, pending_change, pending_generation, created_at) SELECT broker.id, 'pg' || :u::text, 'aGFzaGhhc2hoYXNoaGFzaGhhc2hoYXNoaGFzaA==', false, '[]', false, 'CREATE', broker.generation, now() FROM broker ON CONFLICT (broker_id, username) DO UPDATE SET password_hash = EXCLUDED.password_hash WHERE broker_users.pending_change = 'DELETE' RETURNING broker_id, pending_generation), bumped AS (UPDATE brokers SET generation = added.pending_generation, updated_at = now() FROM added WHERE brokers.id = added.broker_id RETURNING brokers.generation), audited AS (INSERT INTO audit_events (occurred_at, request_id, principal, action, resource, decision, http_status, error_code, source_ip) SELECT now(), md5(random()::text), 'arn.aws.iam..000000000000.user/admin', 'mq.CreateUser', 'arn.aws.mq.us-east-1.000000000000.broker.load', 'allowed', 200, NULL, '127.0.0.1' FROM added) SELECT EXISTS (SELECT 1 FROM broker), (SELECT generation FROM bumped);\n" "-M prepared")
echo "bench-api: load average after: $(cut -d' ' -f1-3 /proc/loadavg)"

# CPU per request in microseconds: the client (api-load or pgbench), mooring, Postgres.
printf '%-16s %10s %8s %8s %9s %9s %9s %10s %9s %9s %7s\n' operation 'req/s' 'p50 ms' 'p99 ms' \
  'client' 'server' 'postgres' 'pg tps' 'pgbench' 'postgres' ratio
while read -r _ op rate p50 p99 ccpu scpu pcpu; do
  case "$op" in
    create-user) raw="$insert_tps" raw_client="$insert_client" raw_pg="$insert_pg" ;;
    *) raw="$select_tps" raw_client="$select_client" raw_pg="$select_pg" ;;
  esac
  ratio="$(awk -v a="$rate" -v b="$raw" 'BEGIN { printf "%.2f", (b > 0 ? a / b : 0) }')"
  printf '%-16s %10s %8s %8s %9s %9s %9s %10.0f %9s %9s %7s\n' "$op" "$rate" "$p50" "$p99" \
    "$ccpu" "$scpu" "$pcpu" "$raw" "$raw_client" "$raw_pg" "$ratio"
  summary+=("api $op mooring $rate postgres $(printf '%.0f' "$raw") ratio $ratio")
done < <(grep '^result ' "$work/api.txt")
printf '%s\n' "${summary[@]}"
awk -v t="$stmt_tps" -v i="$insert_tps" -v pg="$stmt_pg" 'BEGIN {
  printf "pgbench running CreateUser'"'"'s write for one user (prepared, no API): %.0f tps, Postgres %.1f us/tx, %.2f of the insert\n", t, pg, (i > 0 ? t / i : 0) }'

kill "$server_pid" 2>/dev/null && wait "$server_pid" 2>/dev/null
server_pid=

if [[ "$FLEET" -gt 0 ]]; then
  echo "bench-api: fleet of $FLEET simulated agents (SQLite), load average $(cut -d' ' -f1-3 /proc/loadavg)"
  MOORING_FLEET_BROKERS="$FLEET" MOORING_FLEET_HEARTBEAT_MS="${BENCH_FLEET_HEARTBEAT_MS:-5000}" \
    cargo test --release -q -p mooring-control-plane --test agents_fleet -- --nocapture 2>&1 \
    | grep -E '^fleet|test result|panicked'
fi
