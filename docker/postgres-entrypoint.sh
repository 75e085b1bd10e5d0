#!/bin/sh
# Entrypoint of docker/postgres.Dockerfile: on an empty $PGDATA, create the cluster (pg_cron
# preloaded and run in background workers, TCP with scram-sha-256).  At every start, set up over
# the socket what is missing -- database "payments" with pg_cron and payments, the login role
# payments_shim (a member of payments_ingest and nothing else) with the password given, the
# pg_cron jobs if there are none -- so that a first start interrupted half-way is finished by the next, and a
# password changed in docker/.env reaches the role.  Then run the command (postgres) in place
# of this shell, so that it receives the stop signal.
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

if [ "${1:-}" = postgres ]; then
	password=$(shim_password)
	if [ ! -s "$PGDATA/PG_VERSION" ]; then
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
		echo "payments: cluster created in $PGDATA"
	fi

	# set up over the socket only (in $PGHOST when set), then stop
	pg_ctl -D "$PGDATA" -o "-c listen_addresses='' ${PGHOST:+-c unix_socket_directories=$PGHOST}" -w start >/dev/null
	psql -X -q -v ON_ERROR_STOP=1 -d postgres <<-'SQL'
		SELECT 'CREATE DATABASE payments' WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = 'payments') \gexec
	SQL
	psql -X -q -At -v ON_ERROR_STOP=1 -d payments -v password="$password" >/dev/null <<-'SQL'
		SET client_min_messages = warning;
		CREATE EXTENSION IF NOT EXISTS pg_cron;
		CREATE EXTENSION IF NOT EXISTS payments;
		SELECT 'CREATE ROLE payments_shim LOGIN IN ROLE payments_ingest'
		 WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'payments_shim') \gexec
		ALTER ROLE payments_shim PASSWORD :'password';
		-- the jobs once: a schedule the operator changed since (keep_rejections => NULL, say) stays
		SELECT 'SELECT count(*) FROM payments.schedule_jobs()'
		 WHERE NOT EXISTS (SELECT FROM cron.job WHERE jobname IN (SELECT jobname FROM payments.cron_jobs())) \gexec
	SQL
	pg_ctl -D "$PGDATA" -m fast -w stop >/dev/null
fi

exec "$@"
