#!/bin/sh
# First start: initdb with the superuser's password, listen on every address with
# scram-sha-256, then run /docker-entrypoint-initdb.d/*.sql|*.sh against a server that only
# listens on a private socket (so health checks do not pass before the init is done).
set -eu
if [ "${1#-}" != "$1" ]; then set -- postgres "$@"; fi
export POSTGRES_USER="${POSTGRES_USER:-postgres}"
export POSTGRES_DB="${POSTGRES_DB:-$POSTGRES_USER}"
# Present from initdb until the init scripts are done: a first start cut short is redone. A data
# dir without it (ours, or the official image's) is never touched.
unfinished="$PGDATA/.docker-init-unfinished"
if [ "$1" = postgres ] && [ -e "$unfinished" ]; then
    find "$PGDATA" -mindepth 1 -delete
fi
if [ "$1" = postgres ] && [ ! -s "$PGDATA/PG_VERSION" ]; then
    : "${POSTGRES_PASSWORD:?POSTGRES_PASSWORD must be set}"
    pwfile="$(mktemp)"
    trap 'rm -f "$pwfile"' EXIT
    printf '%s\n' "$POSTGRES_PASSWORD" > "$pwfile"
    initdb -D "$PGDATA" --username="$POSTGRES_USER" --pwfile="$pwfile" -E UTF8 --locale=C.UTF-8 \
        --auth-local=trust --auth-host=scram-sha-256 > /dev/null
    touch "$unfinished"
    rm -f "$pwfile"
    echo "host all all all scram-sha-256" >> "$PGDATA/pg_hba.conf"
    echo "listen_addresses = '*'" >> "$PGDATA/postgresql.conf"
    if [ "$POSTGRES_DB" != postgres ] || [ -n "$(ls -A /docker-entrypoint-initdb.d)" ]; then
        socket="$(mktemp -d)"
        pg_ctl -D "$PGDATA" -w -o "-c listen_addresses='' -c unix_socket_directories=$socket" start > /dev/null
        export PGHOST="$socket"
        if [ "$POSTGRES_DB" != postgres ]; then
            # A psql variable, quoted as an identifier by psql itself.
            echo 'CREATE DATABASE :"db"' | psql -v ON_ERROR_STOP=1 -v db="$POSTGRES_DB" -U "$POSTGRES_USER" -d postgres > /dev/null
        fi
        for f in /docker-entrypoint-initdb.d/*; do
            case "$f" in
                *.sql) psql -v ON_ERROR_STOP=1 -U "$POSTGRES_USER" -d "$POSTGRES_DB" -f "$f" ;;
                *.sh) if [ -x "$f" ]; then "$f"; else . "$f"; fi ;;
            esac
        done
        pg_ctl -D "$PGDATA" -w -m fast stop > /dev/null
        unset PGHOST
        rmdir "$socket"
    fi
    rm -f "$unfinished"
fi
if [ "$1" = postgres ]; then
    shift
    exec postgres "$@"
fi
exec "$@"
