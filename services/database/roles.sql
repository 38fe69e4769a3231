-- The application's roles and database, made (and their passwords set) on every instance that
-- becomes the primary, and again when the Secret's files change on a primary that keeps running:
-- run by mlstack-database-roles as the superuser over the local socket.
-- psql variables: owner, gateway, dbname, and owner_password_file / gateway_password_file
-- (files of the stack's database Secret; a password is never on a command line).
--
--   :owner    owns the database and its schema; the gateway's schema migrations run as it.
--   :gateway  what the gateway serves as: it reads and adds to the tables the owner makes, and
--             calls mlstack_monitor.replay_lag_seconds() (the one number of the server's
--             statistics its reads from standbys need), and may do nothing else (no DDL, no
--             UPDATE, DELETE or TRUNCATE, no temporary tables, no other database).
\set ON_ERROR_STOP on
-- A failing statement is not written to the server's log: it may hold a password.
SET log_min_error_statement = panic;
-- Not waiting for a synchronous standby: this runs as an instance becomes the primary, before
-- any standby streams from it.
SET synchronous_commit = local;
-- Each password exactly as its file holds it, as the gateway's and the migrations' URLs carry it
-- (any character may be in it, a final line break too): psql's backquotes drop the output's last
-- line break, so a `.` follows the file's text and is taken off again here.
\set owner_password `cat :'owner_password_file' && printf .`
\set gateway_password `cat :'gateway_password_file' && printf .`

SELECT format('CREATE ROLE %I', :'owner')
WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = :'owner') \gexec
SELECT format('ALTER ROLE %I WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION '
              'NOBYPASSRLS PASSWORD %L', :'owner', left(:'owner_password', -1)) \gexec

SELECT format('CREATE ROLE %I', :'gateway')
WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = :'gateway') \gexec
SELECT format('ALTER ROLE %I WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION '
              'NOBYPASSRLS NOINHERIT PASSWORD %L', :'gateway', left(:'gateway_password', -1)) \gexec

SELECT format('CREATE DATABASE %I OWNER %I', :'dbname', :'owner')
WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = :'dbname') \gexec
ALTER DATABASE :"dbname" OWNER TO :"owner";
REVOKE ALL ON DATABASE :"dbname" FROM PUBLIC;
GRANT CONNECT ON DATABASE :"dbname" TO :"gateway";
-- initdb lets PUBLIC connect to the other databases it makes (and make temporary tables in
-- them), and what PUBLIC may do cannot be withheld from one role alone: PUBLIC loses that.
-- Superusers need no privilege; any other role that must connect to one of them (a pg_rewind
-- role that is not a superuser, a monitoring agent) is granted CONNECT on it by name.
SELECT format('REVOKE CONNECT, TEMPORARY ON DATABASE %I FROM PUBLIC', datname)
FROM pg_database WHERE datname IN ('postgres', 'template1') AND datname <> :'dbname' \gexec

\connect :"dbname"
SET log_min_error_statement = panic;
SET synchronous_commit = local;
-- PostgreSQL 15+: `public` belongs to pg_database_owner (the owner role) and PUBLIC may not
-- create in it; said again for a database made before that.
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
GRANT USAGE ON SCHEMA public TO :"gateway";
ALTER DEFAULT PRIVILEGES FOR ROLE :"owner" IN SCHEMA public
    GRANT SELECT, INSERT ON TABLES TO :"gateway";
ALTER DEFAULT PRIVILEGES FOR ROLE :"owner" IN SCHEMA public
    GRANT USAGE ON SEQUENCES TO :"gateway";

-- The standby's replay lag, which bounds the staleness of the gateway's reads from standbys
-- (services/gateway/mlstack_gateway/stores/postgres.py, whose query it answers the same way:
-- keep the two alike). Seeing the WAL receiver's state takes superuser or pg_read_all_stats,
-- which the gateway is not given; this function runs as the superuser that owns it, in a
-- schema of the superuser's that the owner cannot change, and tells only that one number
-- (NULL: unknown, the standby is not streaming; 0 on a primary). Each run makes both the
-- superuser's again and takes back any other grant on them. It reaches the standbys by
-- replication.
CREATE SCHEMA IF NOT EXISTS mlstack_monitor;
ALTER SCHEMA mlstack_monitor OWNER TO CURRENT_USER;
REVOKE ALL ON SCHEMA mlstack_monitor FROM PUBLIC, :"owner", :"gateway";
GRANT USAGE ON SCHEMA mlstack_monitor TO :"gateway";
CREATE OR REPLACE FUNCTION mlstack_monitor.replay_lag_seconds() RETURNS float8
    LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
    SELECT CASE
        WHEN NOT pg_is_in_recovery() THEN 0.0
        WHEN NOT EXISTS (SELECT FROM pg_stat_wal_receiver WHERE status = 'streaming') THEN NULL
        WHEN pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn() THEN 0.0
        -- Behind, and no transaction replayed since it started: by how much cannot be told.
        WHEN pg_last_xact_replay_timestamp() IS NULL THEN NULL
        -- At least 0: a standby whose clock is behind the primary's may measure less.
        ELSE greatest(0.0, extract(epoch FROM clock_timestamp() - pg_last_xact_replay_timestamp()))
    END::float8
$$;
ALTER FUNCTION mlstack_monitor.replay_lag_seconds() OWNER TO CURRENT_USER;
REVOKE ALL ON FUNCTION mlstack_monitor.replay_lag_seconds() FROM PUBLIC, :"owner";
GRANT EXECUTE ON FUNCTION mlstack_monitor.replay_lag_seconds() TO :"gateway";
