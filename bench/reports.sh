#!/usr/bin/env bash
# Report benchmark: a throwaway cluster with the installed extension, 1,000,000 generated
# payments over two years (with their events and status history), then the time of each report
# against the goals (daily_report one day < 50 ms, top_donors 30 days < 300 ms, currency_summary
# one year < 500 ms) and the plans.
#
#   bench/reports.sh            generate, time, stop and remove the cluster
#   KEEP=1 bench/reports.sh     keep the cluster (its directory and port are printed)
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
. "$top/scripts/unprivileged.sh"

work=$(scratch_dir bench)
cd "$work"   # the cluster's user may not be able to enter the checkout
port=$(( 20000 + RANDOM % 20000 ))
cp "$top/bench/reports-data.sql" "$top/bench/reports-run.sql" "$work/"
if [ "$(id -u)" -eq 0 ]; then chown -R "$(cluster_user)" "$work"; fi

stop() {
	as_cluster_user "$PG_BIN/pg_ctl" -D "$work/data" -m fast -w stop >/dev/null 2>&1 || true
	if [ "${KEEP:-}" = 1 ]; then echo "cluster kept: $work (port $port)"; else rm -rf "$work"; fi
}
trap stop EXIT

as_cluster_user "$PG_BIN/initdb" -D "$work/data" -A trust -U postgres -E UTF8 --locale=C --no-sync >/dev/null
cat >> "$work/data/postgresql.auto.conf" <<CONF
port = $port
listen_addresses = ''
unix_socket_directories = '$work'
fsync = off
shared_buffers = 512MB
work_mem = 64MB
maintenance_work_mem = 256MB
max_wal_size = 4GB
CONF
as_cluster_user "$PG_BIN/pg_ctl" -D "$work/data" -l "$work/log" -w start >/dev/null
psql() { as_cluster_user "$PG_BIN/psql" -X -h "$work" -p "$port" -U postgres "$@"; }
psql -q -d postgres -c 'CREATE DATABASE bench'
psql -q -d bench -c 'CREATE EXTENSION payments'

echo "== machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.1f GB", $2/1048576}' /proc/meminfo), $("$PG_BIN/postgres" --version)"
echo "== generating 1,000,000 payments (2024-2025), events and status history"
start=$(date +%s)
psql -q -d bench -f "$work/reports-data.sql"
echo "== generated in $(( $(date +%s) - start )) s"
psql -q -d bench -f "$work/reports-run.sql"
