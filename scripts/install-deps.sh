#!/usr/bin/env bash
# Installs what payments needs to build, test and run on Debian 12, from Debian's package
# archive only. Used by `make test`, `make run` and the Dockerfiles. Runs apt-get as root, or
# through sudo when that works without a password prompt; otherwise prints the exact command.
#
#   scripts/install-deps.sh                 build, test and run dependencies
#   scripts/install-deps.sh --build         only what building the extension and the shim needs
#   scripts/install-deps.sh --runtime       only what a server running the extension needs
#   scripts/install-deps.sh --shim-runtime  only what running the shim needs (and curl, for health checks)
set -euo pipefail

build_pkgs=(
	make gcc pkg-config
	postgresql-15 postgresql-server-dev-15 postgresql-15-cron
	libssl-dev libcurl4-openssl-dev libmicrohttpd-dev zlib1g-dev libpq-dev
	curl openssl ca-certificates
)
test_pkgs=(nodejs npm wrk clang-14 lld libclang-rt-14-dev procps)	# wrk: make bench; clang, lld: make fuzz; procps: pgrep
runtime_pkgs=(postgresql-15 postgresql-15-cron libssl3 libcurl4 zlib1g ca-certificates)
shim_runtime_pkgs=(libmicrohttpd12 libpq5 ca-certificates curl)

case "${1:-}" in
	--build) wanted=("${build_pkgs[@]}") ;;
	--runtime) wanted=("${runtime_pkgs[@]}") ;;
	--shim-runtime) wanted=("${shim_runtime_pkgs[@]}") ;;
	"") wanted=("${build_pkgs[@]}" "${test_pkgs[@]}") ;;
	*) echo "usage: $0 [--build | --runtime | --shim-runtime]" >&2; exit 2 ;;
esac

missing=()
for pkg in "${wanted[@]}"; do
	# Node.js may come from elsewhere than Debian (nodesource, nvm): a working node and npm will do.
	if [ "$pkg" = nodejs ] && command -v node >/dev/null 2>&1; then continue; fi
	if [ "$pkg" = npm ] && command -v npm >/dev/null 2>&1; then continue; fi
	status=$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)
	[ "$status" = "install ok installed" ] || missing+=("$pkg")
done

if [ ${#missing[@]} -eq 0 ]; then
	exit 0
fi

cmd=(env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}")
if [ "$(id -u)" -eq 0 ]; then
	sudo=()
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
	sudo=(sudo)
else
	echo "payments: these Debian packages are missing: ${missing[*]}" >&2
	echo "Install them as root, then run make again:" >&2
	echo "  sudo apt-get update && sudo ${cmd[*]}" >&2
	exit 1
fi

echo "payments: installing ${missing[*]}"
"${sudo[@]}" apt-get update -qq
"${sudo[@]}" "${cmd[@]}"
