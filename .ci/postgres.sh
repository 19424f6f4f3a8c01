#!/usr/bin/env bash
# A throwaway PostgreSQL server for the sweep's tests: Debian's postgresql (installed if missing), run as the
# postgres user (initdb refuses root), on 127.0.0.1, its data in a temporary folder, a password on its TCP logins.
#   eval "$(bash .ci/postgres.sh start)"   # exports CIFAR_LIT_TEST_POSTGRES=postgresql://... and POSTGRES_DIR
#   bash .ci/postgres.sh stop "$POSTGRES_DIR"
set -euo pipefail
case "${1:-}" in
  start)
    if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
      (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null) >&2 \
        || { echo "echo 'warning: could not install postgresql; the sweep tests that need it will be skipped' >&2"; exit 0; }
    fi
    bin=$(dirname "$(ls /usr/lib/postgresql/*/bin/initdb | sort -V | tail -1)")
    dir=$(mktemp -d /tmp/cifar_lit_postgres.XXXXXX)
    chmod 755 "$dir"
    password=$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')
    echo "$password" > "$dir/password"
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    run() { if [ "$(id -u)" = 0 ]; then su postgres -s /bin/sh -c "$*"; else sh -c "$*"; fi; }
    if [ "$(id -u)" = 0 ]; then chown -R postgres "$dir"; fi
    run "'$bin/initdb' -D '$dir/data' -U postgres --auth-local=trust --auth-host=scram-sha-256 --pwfile='$dir/password' >'$dir/initdb.log' 2>&1" \
      || { echo "echo 'warning: initdb failed (see $dir/initdb.log); the sweep tests that need PostgreSQL will be skipped' >&2"; exit 0; }
    run "'$bin/pg_ctl' -D '$dir/data' -l '$dir/server.log' -w -o \"-h 127.0.0.1 -p $port -k '$dir'\" start >/dev/null" \
      || { echo "echo 'warning: PostgreSQL did not start (see $dir/server.log); its sweep tests will be skipped' >&2"; exit 0; }
    echo "export CIFAR_LIT_TEST_POSTGRES=postgresql://postgres:$password@127.0.0.1:$port/postgres POSTGRES_DIR=$dir"
    ;;
  stop)
    dir=${2:?usage: postgres.sh stop DIR}
    bin=$(dirname "$(ls /usr/lib/postgresql/*/bin/pg_ctl | sort -V | tail -1)")
    if [ "$(id -u)" = 0 ]; then
      su postgres -s /bin/sh -c "'$bin/pg_ctl' -D '$dir/data' -m fast -w stop >/dev/null" || true
    else
      "$bin/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null || true
    fi
    rm -rf "$dir"
    ;;
  *) echo "usage: postgres.sh start | stop DIR" >&2; exit 2 ;;
esac
