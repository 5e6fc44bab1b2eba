#!/bin/sh
# First start: initdb with the superuser's password, listen on every address with
# scram-sha-256, then run /docker-entrypoint-initdb.d/*.sql|*.sh against a server that only
# listens on a private socket (so health checks do not pass before the init is done).
set -eu
if [ "${1#-}" != "$1" ]; then set -- postgres "$@"; fi
if [ "$1" = postgres ] && [ ! -s "$PGDATA/PG_VERSION" ]; then
    : "${POSTGRES_PASSWORD:?POSTGRES_PASSWORD must be set}"
    user="${POSTGRES_USER:-postgres}"
    pwfile="$(mktemp)"
    printf '%s\n' "$POSTGRES_PASSWORD" > "$pwfile"
    initdb -D "$PGDATA" --username="$user" --pwfile="$pwfile" -E UTF8 --locale=C.UTF-8 \
        --auth-local=trust --auth-host=scram-sha-256 > /dev/null
    rm -f "$pwfile"
    echo "host all all all scram-sha-256" >> "$PGDATA/pg_hba.conf"
    echo "listen_addresses = '*'" >> "$PGDATA/postgresql.conf"
    db="${POSTGRES_DB:-$user}"
    if [ "$db" != postgres ] || [ -n "$(ls -A /docker-entrypoint-initdb.d)" ]; then
        socket="$(mktemp -d)"
        pg_ctl -D "$PGDATA" -w -o "-c listen_addresses='' -c unix_socket_directories=$socket" start > /dev/null
        export PGHOST="$socket"
        if [ "$db" != postgres ]; then
            psql -v ON_ERROR_STOP=1 -U "$user" -d postgres -c "CREATE DATABASE \"$db\"" > /dev/null
        fi
        for f in /docker-entrypoint-initdb.d/*; do
            case "$f" in
                *.sql) psql -v ON_ERROR_STOP=1 -U "$user" -d "$db" -f "$f" ;;
                *.sh) . "$f" ;;
            esac
        done
        pg_ctl -D "$PGDATA" -w -m fast stop > /dev/null
        unset PGHOST
        rmdir "$socket"
    fi
fi
if [ "$1" = postgres ]; then
    shift
    exec postgres "$@"
fi
exec "$@"
