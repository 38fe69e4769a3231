#!/usr/bin/env bash
# The command of every PostgreSQL instance of a stack (components/database.py). It prepares the
# instance for its role, then hands over to the image's own entrypoint, docker-entrypoint.sh, with
# the server's arguments: the contract of the Docker official `postgres` image (initdb on an empty
# PGDATA, POSTGRES_*_FILE, any uid) stays in force.
#
#   DATABASE_ROLE=primary  takes the writes. Data of a standby refuses to start here: only
#                          `make failover` promotes a standby, so a mistyped `database.primary`
#                          never turns a copy into a second primary on its own.
#   DATABASE_ROLE=standby  follows the primary by streaming replication. An empty volume is filled
#                          with pg_basebackup from the primary; the data of a former primary (no
#                          standby.signal) is replaced by such a copy, but only once the primary
#                          runs on a later timeline than that data, i.e. was promoted after it.
#
# Environment (set by components/database.py): DATABASE_ROLE, DATABASE_PRIMARY_HOST (the `database`
# Service), DATABASE_PORT, DATABASE_REPLICATION_USER, DATABASE_REPLICATION_PASSWORD_FILE (standbys
# only), PGDATA, POSTGRES_USER, POSTGRES_DB, POSTGRES_PASSWORD_FILE, HOSTNAME (the pod's name).
set -Eeuo pipefail

log() { printf 'mlstack-database: %s\n' "$*" >&2; }
die() {
	log "error: $*"
	exit 1
}

: "${DATABASE_ROLE:?}" "${PGDATA:?}" "${POSTGRES_USER:?}" "${POSTGRES_DB:?}"
PRIMARY_HOST=${DATABASE_PRIMARY_HOST:?}
PRIMARY_PORT=${DATABASE_PORT:-5432}
REPLICATION_USER=${DATABASE_REPLICATION_USER:-replicator}
# How long a standby waits for a writable primary before it gives up (and the kubelet restarts it).
WAIT_SECONDS=${DATABASE_PRIMARY_WAIT_SECONDS:-600}
# Where libpq finds the passwords (never on a command line, never in the environment).
export PGPASSFILE=${DATABASE_PASSFILE:-/tmp/mlstack-database.pgpass}
export PGCONNECT_TIMEOUT=${PGCONNECT_TIMEOUT:-5}

# One line of a password file for `user`, the password read from `file` (':' and '\' escaped).
pgpass_line() {
	local password
	password=$(<"$2")
	printf '*:*:*:%s:%s\n' "$1" "$(sed 's/[\\:]/\\&/g' <<<"$password")"
}

write_passfile() {
	(
		umask 077
		{
			pgpass_line "$POSTGRES_USER" "${POSTGRES_PASSWORD_FILE:?}"
			pgpass_line "$REPLICATION_USER" "${DATABASE_REPLICATION_PASSWORD_FILE:?}"
		} >"$PGPASSFILE.new"
		mv -f "$PGPASSFILE.new" "$PGPASSFILE"
	)
}

# psql on the primary as the superuser, one value per line.
on_primary() {
	psql --host="$PRIMARY_HOST" --port="$PRIMARY_PORT" --username="$POSTGRES_USER" \
		--dbname="$POSTGRES_DB" --no-psqlrc --no-password --quiet --no-align --tuples-only \
		--set=ON_ERROR_STOP=1 "$@"
}

wait_for_primary() {
	local deadline=$((SECONDS + WAIT_SECONDS)) said=-10 answer
	while true; do
		answer=$(on_primary --command='SELECT pg_is_in_recovery()' 2>/dev/null) || answer=""
		[[ $answer == f ]] && return 0
		((SECONDS < deadline)) ||
			die "no writable primary answered at $PRIMARY_HOST:$PRIMARY_PORT in $WAIT_SECONDS s"
		if ((SECONDS - said >= 10)); then
			log "waiting for a writable primary at $PRIMARY_HOST:$PRIMARY_PORT"
			said=$SECONDS
		fi
		sleep 2
	done
}

# The replication role, with the password of the stack's secret (set again on every standby
# start, so that a new secret takes effect). Not waiting for a synchronous standby: the one that
# runs this may be the only one, and it is not streaming yet.
ensure_replication_role() {
	on_primary --set=role="$REPLICATION_USER" <<'SQL'
SET synchronous_commit = local;
\set password `cat "$DATABASE_REPLICATION_PASSWORD_FILE"`
SELECT format('CREATE ROLE %I', :'role')
WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = :'role') \gexec
ALTER ROLE :"role" WITH LOGIN REPLICATION PASSWORD :'password';
SQL
}

timeline_of_data() {
	pg_controldata "$PGDATA" | sed -n "s/^Latest checkpoint's TimeLineID: *//p"
}

timeline_of_primary() {
	on_primary --command="SELECT ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int"
}

# A copy of the primary, made next to PGDATA and moved into place only once it is whole: a copy
# cut short leaves no PG_VERSION behind that a restart would take for a database.
clone() {
	local partial="$PGDATA.partial"
	rm -rf "$partial"
	log "copying the primary's data from $PRIMARY_HOST:$PRIMARY_PORT"
	pg_basebackup --pgdata="$partial" --host="$PRIMARY_HOST" --port="$PRIMARY_PORT" \
		--username="$REPLICATION_USER" --no-password --wal-method=stream --checkpoint=fast
	touch "$partial/standby.signal"
	rm -rf "$PGDATA"
	mv "$partial" "$PGDATA"
	log "copy complete"
}

replace_former_primary() {
	local ours theirs
	ours=$(timeline_of_data)
	theirs=$(timeline_of_primary)
	[[ $ours =~ ^[0-9]+$ && $theirs =~ ^[0-9]+$ ]] ||
		die "cannot compare timelines (this data: '$ours', the primary: '$theirs')"
	if ((theirs <= ours)); then
		die "$PGDATA holds a primary's data on timeline $ours and the primary at" \
			"$PRIMARY_HOST:$PRIMARY_PORT runs on timeline $theirs: it was not promoted after" \
			"this data, so this data is kept and the instance does not start;" \
			"fail over with \`make failover\` (README, \"Failover\")"
	fi
	log "$PGDATA holds a former primary's data (timeline $ours); the primary runs on timeline" \
		"$theirs: replacing it with a copy"
	rm -rf "$PGDATA"
}

start_standby() {
	write_passfile
	if [[ -s $PGDATA/PG_VERSION && -f $PGDATA/standby.signal ]]; then
		# A standby serves reads on its own: the primary need not be up. The role is refreshed
		# when the primary answers at once.
		PGCONNECT_TIMEOUT=2 ensure_replication_role 2>/dev/null ||
			log "the primary does not answer now; the replication role was left as it is"
	else
		wait_for_primary
		ensure_replication_role
		if [[ -s $PGDATA/PG_VERSION ]]; then
			replace_former_primary
		fi
		clone
	fi
	local conninfo="host=$PRIMARY_HOST port=$PRIMARY_PORT user=$REPLICATION_USER"
	conninfo+=" passfile=$PGPASSFILE application_name=${HOSTNAME:-standby}"
	exec docker-entrypoint.sh "$@" -c "primary_conninfo=$conninfo"
}

start_primary() {
	if [[ -f $PGDATA/standby.signal ]]; then
		die "$PGDATA holds a standby's data but this instance is the configured primary:" \
			"promote it with \`make failover\` (README, \"Failover\") instead of changing" \
			"database.primary alone"
	fi
	if [[ ! -s $PGDATA/PG_VERSION ]]; then
		# The image initialises the database through a server started with these same
		# arguments: its sessions must not wait for a synchronous standby that cannot exist yet.
		export PGOPTIONS="-c synchronous_commit=local ${PGOPTIONS:-}"
	fi
	exec docker-entrypoint.sh "$@"
}

case $DATABASE_ROLE in
	primary) start_primary "$@" ;;
	standby) start_standby "$@" ;;
	*) die "DATABASE_ROLE must be primary or standby, not '$DATABASE_ROLE'" ;;
esac
