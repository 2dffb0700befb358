#!/bin/sh
# The entry point of the PostgreSQL image built from Debian's packages (docker/local-images.sh) for a
# machine that cannot pull postgres:16-alpine: the same variables (POSTGRES_USER, POSTGRES_PASSWORD,
# POSTGRES_DB) and the same data folder, so docker-compose.yml runs it unchanged.
set -eu
BIN=$(ls -d /usr/lib/postgresql/*/bin | tail -n 1)
export PGDATA=/var/lib/postgresql/data
export PGHOST=/var/lib/postgresql  # the socket's folder (the image has no /run/postgresql); pg_isready reads it too
if [ ! -s "$PGDATA/PG_VERSION" ]; then
  echo "$POSTGRES_PASSWORD" > /tmp/pw
  "$BIN/initdb" -D "$PGDATA" -U "$POSTGRES_USER" --pwfile=/tmp/pw --auth-host=scram-sha-256 --auth-local=trust \
    --encoding=UTF8 --locale=C.UTF-8
  rm -f /tmp/pw
  echo "listen_addresses = '*'" >> "$PGDATA/postgresql.conf"
  echo "unix_socket_directories = '$PGHOST'" >> "$PGDATA/postgresql.conf"
  echo "host all all 0.0.0.0/0 scram-sha-256" >> "$PGDATA/pg_hba.conf"
  "$BIN/pg_ctl" -D "$PGDATA" -o "-c listen_addresses=''" -w start
  if [ "$POSTGRES_DB" != "postgres" ]; then
    "$BIN/psql" -U "$POSTGRES_USER" -d postgres -c "CREATE DATABASE \"$POSTGRES_DB\""
  fi
  "$BIN/pg_ctl" -D "$PGDATA" -m fast -w stop
fi
exec "$BIN/postgres" -D "$PGDATA"
