#!/usr/bin/env bash
# Entrypoint of the e2e suite's PostgreSQL image (Debian's packages). It keeps the documented
# contract of the Docker official `postgres` image that components/database.py deploys:
#   - POSTGRES_PASSWORD, POSTGRES_USER (default postgres), POSTGRES_DB (default: the user) and
#     POSTGRES_INITDB_ARGS, each also as <NAME>_FILE: the content of that file (never both);
#     POSTGRES_INITDB_WALDIR, POSTGRES_HOST_AUTH_METHOD; PGDATA;
#   - on a first start (no PG_VERSION in PGDATA): initdb, a `host all all all <method>` rule,
#     the database, then /docker-entrypoint-initdb.d/* (*.sh run or sourced, *.sql[.gz|.xz|.zst]
#     fed to psql) against a server reachable only through its Unix socket;
#   - any uid: one without a passwd entry (a platform's runAsUser) gets one for initdb through
#     nss_wrapper; started as root, it hands the data to the postgres user and drops to it.
# The differences from the official image are listed in e2e/README.md.
set -Eeuo pipefail
shopt -s nullglob

log() { printf 'entrypoint: %s\n' "$*" >&2; }
die() {
	log "error: $*"
	exit 1
}

# Export NAME from NAME or from the file that NAME_FILE names (never both set), else `fallback`.
read_setting() {
	local name=$1 fallback=${2:-}
	local file_name="${name}_FILE"
	local value=${!name:-} file=${!file_name:-}
	if [[ -n $value && -n $file ]]; then
		die "both $name and $file_name are set: set one of them"
	fi
	if [[ -n $file ]]; then
		[[ -r $file ]] || die "$file_name: cannot read $file"
		value=$(<"$file")
	fi
	export "$name=${value:-$fallback}"
	unset "$file_name"
}

# Options that only print something: the server must not be initialised for them.
wants_help() {
	local arg
	for arg in "$@"; do
		case $arg in
			'-?' | --help | --describe-config | -V | --version) return 0 ;;
		esac
	done
	return 1
}

make_dirs() {
	mkdir -p "$PGDATA" /var/run/postgresql
	# Only the owner may change a mode (and postgres refuses a group- or world-writable PGDATA);
	# a folder someone else owns is left as it is, and initdb says what is wrong with it.
	chmod 00700 "$PGDATA" 2>/dev/null || :
	chmod 03775 /var/run/postgresql 2>/dev/null || :
	if [[ -n ${POSTGRES_INITDB_WALDIR:-} ]]; then
		mkdir -p "$POSTGRES_INITDB_WALDIR"
		chmod 00700 "$POSTGRES_INITDB_WALDIR" 2>/dev/null || :
	fi
}

run_initdb() {
	local args=(--username="$POSTGRES_USER")
	if [[ -n ${POSTGRES_INITDB_WALDIR:-} ]]; then
		args+=(--waldir="$POSTGRES_INITDB_WALDIR")
	fi
	local extra=()
	read -r -a extra <<<"$POSTGRES_INITDB_ARGS"
	local wrapper=() passwd_dir=""
	if ! getent passwd "$(id -u)" >/dev/null; then
		# initdb looks the current user up by uid.
		local libraries=(/usr/lib/*/libnss_wrapper.so)
		((${#libraries[@]})) || die "uid $(id -u) has no passwd entry and nss_wrapper is missing"
		passwd_dir=$(mktemp -d)
		printf 'postgres:x:%s:%s:PostgreSQL:%s:/bin/false\n' "$(id -u)" "$(id -g)" "$PGDATA" \
			>"$passwd_dir/passwd"
		printf 'postgres:x:%s:\n' "$(id -g)" >"$passwd_dir/group"
		wrapper=(env "LD_PRELOAD=${libraries[0]}" "NSS_WRAPPER_PASSWD=$passwd_dir/passwd"
			"NSS_WRAPPER_GROUP=$passwd_dir/group")
	fi
	if [[ -n $POSTGRES_PASSWORD ]]; then
		# Through a pipe: the password in clear never lands in a file.
		"${wrapper[@]}" initdb "${args[@]}" --pwfile=<(printf '%s\n' "$POSTGRES_PASSWORD") \
			"${extra[@]}"
	else
		"${wrapper[@]}" initdb "${args[@]}" "${extra[@]}"
	fi
	[[ -z $passwd_dir ]] || rm -rf "$passwd_dir"
}

allow_host_connections() {
	local method=${POSTGRES_HOST_AUTH_METHOD:-scram-sha-256}
	if [[ $method == trust ]]; then
		log "warning: POSTGRES_HOST_AUTH_METHOD=trust: every host connects without a password"
	fi
	printf '\nhost all all all %s\n' "$method" >>"$PGDATA/pg_hba.conf"
}

# psql on the temporary server, stopping at the first error.
sql() {
	psql -v ON_ERROR_STOP=1 --no-psqlrc --no-password --username="$POSTGRES_USER" \
		--port="$PGPORT" "$@"
}

run_init_scripts() {
	local file
	for file in /docker-entrypoint-initdb.d/*; do
		case $file in
			*.sh)
				if [[ -x $file ]]; then
					log "running $file"
					"$file"
				else
					log "sourcing $file"
					# shellcheck source=/dev/null
					. "$file"
				fi
				;;
			*.sql) log "running $file" && sql --dbname="$POSTGRES_DB" --file="$file" ;;
			*.sql.gz) log "running $file" && gzip -dc "$file" | sql --dbname="$POSTGRES_DB" ;;
			*.sql.xz) log "running $file" && xz -dc "$file" | sql --dbname="$POSTGRES_DB" ;;
			*.sql.zst) log "running $file" && zstd -dc "$file" | sql --dbname="$POSTGRES_DB" ;;
			*) log "ignoring $file" ;;
		esac
	done
}

initialise() {
	if [[ -z $POSTGRES_PASSWORD && ${POSTGRES_HOST_AUTH_METHOD:-} != trust ]]; then
		die "the database is not initialised and no superuser password is set: set" \
			"POSTGRES_PASSWORD or POSTGRES_PASSWORD_FILE (or POSTGRES_HOST_AUTH_METHOD=trust" \
			"to let every connection in without one)"
	fi
	log "initialising $PGDATA: superuser $POSTGRES_USER, database $POSTGRES_DB"
	run_initdb
	allow_host_connections
	export PGPORT=${PGPORT:-5432}
	# Unix socket only: no client reaches the server before its database and scripts are in
	# place. The server's own arguments (after `postgres`) apply to it too.
	local options="-c listen_addresses='' -p $PGPORT"
	if (($# > 1)); then
		options+=" $(printf '%q ' "${@:2}")"
	fi
	pg_ctl --pgdata="$PGDATA" --options="$options" --wait --silent start
	if [[ $POSTGRES_DB != postgres ]]; then
		sql --dbname=postgres --set=db="$POSTGRES_DB" <<<'CREATE DATABASE :"db";'
	fi
	run_init_scripts
	pg_ctl --pgdata="$PGDATA" --mode=fast --wait --silent stop
	log "initialisation complete"
}

main() {
	if [[ ${1:-} == -* ]]; then
		set -- postgres "$@"
	fi
	if [[ ${1:-} != postgres ]] || wants_help "$@"; then
		exec "$@"
	fi
	read_setting POSTGRES_PASSWORD
	read_setting POSTGRES_USER postgres
	read_setting POSTGRES_DB "$POSTGRES_USER"
	read_setting POSTGRES_INITDB_ARGS
	make_dirs
	if [[ $(id -u) == 0 ]]; then
		# The server refuses to run as root: the data goes to postgres, and so does this script.
		find "$PGDATA" /var/run/postgresql ${POSTGRES_INITDB_WALDIR:+"$POSTGRES_INITDB_WALDIR"} \
			\! -user postgres -exec chown postgres:postgres '{}' +
		exec setpriv --reuid=postgres --regid=postgres --init-groups "${BASH_SOURCE[0]}" "$@"
	fi
	if [[ -s $PGDATA/PG_VERSION ]]; then
		log "$PGDATA holds a database: no initialisation"
	else
		initialise "$@"
	fi
	exec "$@"
}

main "$@"
