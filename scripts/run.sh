#!/usr/bin/env bash
# make run: the product, locally, in the foreground.  A PostgreSQL 15 cluster in
# .run/ (created on first use, reused after) with pg_cron, database "payments"
# with the extension, a demo provider, and the shim on 127.0.0.1:8065.
# Ctrl-C stops both.  The cluster listens on a Unix socket in .run/ only.
#
# Environment: PAYMENTS_LISTEN (shim address, default 127.0.0.1:8065),
# PAYMENTS_OS_USER (the unprivileged user the cluster runs as when started by root).
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
. "$top/scripts/unprivileged.sh"

listen=${PAYMENTS_LISTEN:-127.0.0.1:8065}
state="$top/.run"
user=$(cluster_user)

# The state folder must be reachable by the cluster's user; when the checkout is
# not (a clone under /root, say), the folder is a link to one under /var/lib.
[ -e "$state" ] || rm -f "$state"	# a link whose directory was removed
if [ ! -e "$state" ]; then
	if as_cluster_user test -x "$top"; then
		mkdir "$state"
	else
		real="/var/lib/payments-run/$(printf '%s' "$top" | sha256sum | cut -c1-16)"
		mkdir -p "$real"
		ln -s "$real" "$state"
	fi
	[ "$(id -u)" -ne 0 ] || chown "$user" "$(readlink -f "$state")"
	chmod 700 "$(readlink -f "$state")"
fi
state=$(readlink -f "$state")
cd "$state"   # the cluster's user may not be able to enter the checkout

pg() { as_cluster_user "$PG_BIN/$1" "${@:2}"; }
sql() { PGOPTIONS="-c client_min_messages=warning" pg psql -X -q -At -v ON_ERROR_STOP=1 -h "$state" -d "${DB:-payments}" "$@"; }

if [ ! -f "$state/pgdata/PG_VERSION" ]; then
	echo "payments: creating a PostgreSQL 15 cluster in $state/pgdata"
	pg initdb -D "$state/pgdata" -E UTF8 --locale=C --auth-local=peer --auth-host=scram-sha-256 >/dev/null
	cat >>"$state/pgdata/postgresql.auto.conf" <<-CONF
		listen_addresses = ''
		unix_socket_directories = '$state'
		shared_preload_libraries = 'pg_cron'
		cron.database_name = 'payments'
	CONF
fi
# pg_cron runs its jobs in background workers: over libpq it would connect to localhost, where
# this cluster does not listen (a cluster made by an older checkout gets the settings too)
if ! grep -q '^cron.use_background_workers' "$state/pgdata/postgresql.auto.conf"; then
	cat >>"$state/pgdata/postgresql.auto.conf" <<-CONF
		cron.use_background_workers = on
		max_worker_processes = 20
	CONF
fi

# The shim runs from the state folder, where the cluster's user can reach it.
install -m 755 "$top/shim/payments-shim" "$state/payments-shim"
[ "$(id -u)" -ne 0 ] || chown "$user" "$state/payments-shim"

pg pg_ctl -D "$state/pgdata" -l "$state/postgres.log" -w start >/dev/null
shim_pid=
stopping=
stop() {
	trap - INT TERM EXIT
	stopping=yes
	if [ -n "$shim_pid" ] && kill -0 "$shim_pid" 2>/dev/null; then
		kill -TERM "$shim_pid" 2>/dev/null || true
		wait "$shim_pid" 2>/dev/null || true
	fi
	pg pg_ctl -D "$state/pgdata" -m fast -w stop >/dev/null || true
	echo "payments: stopped"
}
trap stop INT TERM EXIT

DB=postgres sql -c "SELECT 1 FROM pg_database WHERE datname = 'payments'" | grep -q 1 ||
	DB=postgres sql -c "CREATE DATABASE payments"
sql -c "CREATE EXTENSION IF NOT EXISTS pg_cron"
sql -c "CREATE EXTENSION IF NOT EXISTS payments"
sql -c "SET client_min_messages = warning; ALTER EXTENSION payments UPDATE"
# retries of pending events and outbound deliveries, every minute, by pg_cron
sql -c "SELECT count(*) FROM payments.schedule_jobs()" >/dev/null

# A demo provider of kind stripe, with a secret generated on first use
sql -c "SELECT payments.register_provider('demo', 'stripe')
        WHERE NOT EXISTS (SELECT FROM payments.providers WHERE name = 'demo')" >/dev/null
secret=$(sql -c "SELECT secret FROM payments.secrets WHERE provider = 'demo' AND revoked_at IS NULL
                 AND (expires_at IS NULL OR expires_at > now()) ORDER BY id DESC LIMIT 1")
if [ -z "$secret" ]; then
	secret="whsec_$(openssl rand -hex 24)"
	echo "SELECT payments.add_secret('demo', :'secret')" | sql -v secret="$secret" >/dev/null
fi

cluster_user_prefix
# in a session of its own: Ctrl-C reaches this script's whole process group, and the shim would
# take the trap's SIGTERM that follows as a second signal, exiting without draining what is in
# flight; it gets only that SIGTERM
setsid "${CLUSTER_USER_PREFIX[@]}" "$state/payments-shim" --listen "$listen" --dsn "host=$state dbname=payments" &
shim_pid=$!
# the banner once the shim answers; a shim that cannot start (its address taken, say) ends the run
for _ in $(seq 100); do
	curl -fs --max-time 2 "http://$listen/health" >/dev/null 2>&1 && break
	kill -0 "$shim_pid" 2>/dev/null || break
	sleep 0.1
done
if ! kill -0 "$shim_pid" 2>/dev/null || ! curl -fs --max-time 2 "http://$listen/health" >/dev/null 2>&1; then
	echo "payments: the shim did not start on $listen (its message is above)" >&2
	exit 1
fi

psql_cmd="psql -h $state -d payments"
[ "$(id -u)" -ne 0 ] || psql_cmd="runuser -u $user -- $psql_cmd"

cat <<EOF

payments is running
  database  payments on the socket in $state (log: $state/postgres.log)
  shim      http://$listen  (POST /webhooks/{provider}, GET /health)
  provider  demo (kind stripe), secret $secret

Send a signed test event (paste into another terminal):

  body='{"id":"evt_demo_'\$(date +%s%N)'","object":"event","type":"payment_intent.succeeded","created":'\$(date +%s)',"data":{"object":{"id":"pi_demo_'\$(date +%s%N)'","amount":2500,"currency":"usd"}}}'; t=\$(date +%s); sig=\$(printf '%s.%s' "\$t" "\$body" | openssl dgst -sha256 -hmac '$secret' -r | cut -d' ' -f1); curl -sS -i http://$listen/webhooks/demo -H 'Content-Type: application/json' -H "Stripe-Signature: t=\$t,v1=\$sig" --data-binary "\$body"

Then look at it:

  $psql_cmd -c "SELECT id, provider, event_id, event_type, received_at, state FROM payments.events ORDER BY id DESC LIMIT 5"
  $psql_cmd -c "SELECT p.provider_ref, p.status, p.amount, p.currency, r.receipt_no FROM payments.payments p LEFT JOIN payments.receipts r ON r.payment_id = p.id ORDER BY p.id DESC LIMIT 5"

Ctrl-C stops the shim and the database.

EOF

status=0
wait "$shim_pid" || status=$?
# Ctrl-C (the shim stops cleanly, the trap stops the cluster) is a normal end; a failing shim is not
[ "$status" -eq 0 ] || [ -n "$stopping" ] || { echo "payments: the shim failed (exit status $status)" >&2; exit 1; }
