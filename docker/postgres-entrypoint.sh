#!/bin/sh
# Entrypoint of docker/postgres.Dockerfile: on an empty $PGDATA, create the cluster (pg_cron
# preloaded, TCP with scram-sha-256), database "payments" with pg_cron and payments, and the
# login role payments_shim, a member of payments_ingest and nothing else.  Then run the
# command (postgres) in place of this shell, so that it receives the stop signal.
set -eu

: "${PGDATA:=/var/lib/postgresql/data}"

shim_password() {
	if [ -n "${PAYMENTS_SHIM_PASSWORD_FILE:-}" ]; then
		cat "$PAYMENTS_SHIM_PASSWORD_FILE"
	elif [ -n "${PAYMENTS_SHIM_PASSWORD:-}" ]; then
		printf '%s' "$PAYMENTS_SHIM_PASSWORD"
	else
		echo "payments: set PAYMENTS_SHIM_PASSWORD_FILE or PAYMENTS_SHIM_PASSWORD for the payments_shim role" >&2
		exit 1
	fi
}

if [ "${1:-}" = postgres ] && [ ! -s "$PGDATA/PG_VERSION" ]; then
	password=$(shim_password)
	initdb -D "$PGDATA" -U postgres -E UTF8 --locale=C.UTF-8 \
		--auth-local=peer --auth-host=scram-sha-256 >/dev/null
	cat >>"$PGDATA/postgresql.auto.conf" <<-CONF
		listen_addresses = '*'
		shared_preload_libraries = 'pg_cron'
		cron.database_name = 'payments'
		cron.use_background_workers = on
		max_worker_processes = 20
	CONF
	echo 'host all all all scram-sha-256' >>"$PGDATA/pg_hba.conf"

	# set up over the socket only, then stop
	pg_ctl -D "$PGDATA" -o "-c listen_addresses=''" -w start >/dev/null
	psql -X -q -v ON_ERROR_STOP=1 -d postgres -c 'CREATE DATABASE payments'
	psql -X -q -v ON_ERROR_STOP=1 -d payments -v password="$password" <<-'SQL'
		CREATE EXTENSION pg_cron;
		CREATE EXTENSION payments;
		CREATE ROLE payments_shim LOGIN PASSWORD :'password' IN ROLE payments_ingest;
	SQL
	pg_ctl -D "$PGDATA" -m fast -w stop >/dev/null
	echo "payments: cluster created in $PGDATA"
fi

exec "$@"
