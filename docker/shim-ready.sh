#!/bin/sh
# Health check of docker/shim.Dockerfile: GET /ready on the address PAYMENTS_SHIM_LISTEN names
# (its loopback when it listens on every address), over HTTPS when PAYMENTS_SHIM_TLS_CERT is set
# (the certificate names the public host, not the loopback: it is not verified here).
listen=${PAYMENTS_SHIM_LISTEN:-127.0.0.1:8065}
port=${listen##*:}
host=${listen%:*}
case "$host" in
	0.0.0.0) host=127.0.0.1 ;;
	'[::]') host='[::1]' ;;
esac
if [ -n "${PAYMENTS_SHIM_TLS_CERT:-}" ]; then
	exec curl -fsS -k -o /dev/null "https://$host:$port/ready"
fi
exec curl -fsS -o /dev/null "http://$host:$port/ready"
