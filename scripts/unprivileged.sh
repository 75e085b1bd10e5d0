# Sourced by the scripts that start PostgreSQL clusters: initdb and postgres
# refuse to run as root, so as root they run as an unprivileged OS user
# (PAYMENTS_OS_USER, default postgres, which Debian's postgresql-15 creates).
#
#   as_cluster_user CMD...   runs CMD as that user (or as is, when not root)
#   cluster_user             prints the user's name
#   scratch_dir NAME         makes a fresh directory that user owns under
#                            ${TMPDIR:-/tmp} and prints its path

PG_BIN=${PG_BIN:-/usr/lib/postgresql/15/bin}

cluster_user() {
	if [ "$(id -u)" -eq 0 ]; then
		echo "${PAYMENTS_OS_USER:-postgres}"
	else
		id -un
	fi
}

# Sets the array CLUSTER_USER_PREFIX to what runs a command as the cluster's user (empty when
# not root).  "${CLUSTER_USER_PREFIX[@]}" CMD & makes $! the command itself, which a function
# run in the background (a subshell) would not be: a signal to $! then reaches CMD.
cluster_user_prefix() {
	CLUSTER_USER_PREFIX=()
	if [ "$(id -u)" -eq 0 ]; then
		local user
		user=$(cluster_user)
		CLUSTER_USER_PREFIX=(setpriv --reuid="$user" --regid="$(id -g "$user")" --init-groups
			env HOME="${TMPDIR:-/tmp}" USER="$user" LOGNAME="$user")
	fi
}

as_cluster_user() {
	if [ "$(id -u)" -eq 0 ]; then
		local user
		user=$(cluster_user)
		if ! id "$user" >/dev/null 2>&1; then
			echo "payments: OS user '$user' does not exist; set PAYMENTS_OS_USER to an unprivileged user" >&2
			return 1
		fi
		# setpriv execs in place (no supervising process), so signals reach CMD itself
		setpriv --reuid="$user" --regid="$(id -g "$user")" --init-groups \
			env HOME="${TMPDIR:-/tmp}" USER="$user" LOGNAME="$user" "$@"
	else
		"$@"
	fi
}

scratch_dir() {
	local dir
	dir=$(mktemp -d "${TMPDIR:-/tmp}/payments-$1.XXXXXX")
	chmod 755 "$dir"
	if [ "$(id -u)" -eq 0 ]; then
		chown "$(cluster_user)" "$dir"
	fi
	echo "$dir"
}
