#!/usr/bin/env bash
# A throwaway PostgreSQL cluster (Debian's postgresql package) for the tests
# and benchmarks: `scripts/pg-cluster.sh start DIR` creates and starts it in
# DIR (Unix socket in DIR, no TCP unless PORT is set) and prints its
# connection URL; `scripts/pg-cluster.sh stop DIR` stops it; `url DIR`
# prints the URL again. The cluster's superuser is `edgedesk` (trust auth on
# the socket only, TCP on 127.0.0.1 when PORT is set).
#
# PostgreSQL refuses to run as root: as root the cluster belongs to the
# `postgres` user the package created.
set -euo pipefail

usage() { echo "usage: $0 start|stop|url DIR   (env PORT=5433 also listens on 127.0.0.1)" >&2; exit 64; }
[ $# -eq 2 ] || usage
cmd=$1
dir=$(realpath -m "$2")

bindir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1 || true)
[ -n "$bindir" ] && [ -x "$bindir/initdb" ] || {
  echo "$0: PostgreSQL server binaries not found (apt-get install postgresql)" >&2; exit 69; }

as_owner() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

url() {
  if [ -n "${PORT:-}" ]; then
    echo "postgres://edgedesk@127.0.0.1:$PORT/postgres"
  else
    echo "host=$dir/socket user=edgedesk dbname=postgres"
  fi
}

case "$cmd" in
  start)
    if [ ! -f "$dir/data/PG_VERSION" ]; then
      mkdir -p "$dir/data" "$dir/socket"
      [ "$(id -u)" = 0 ] && chown -R postgres: "$dir"
      as_owner "$bindir/initdb" -D "$dir/data" -U edgedesk --auth=trust \
        --encoding=UTF8 --locale=C.UTF-8 >"$dir/initdb.log" 2>&1 || {
          cat "$dir/initdb.log" >&2; exit 1; }
    fi
    listen=""
    [ -n "${PORT:-}" ] && listen="-p $PORT -h 127.0.0.1" || listen="-h ''"
    # fsync stays on: the tests include killing processes, and the
    # benchmarks measure what a deployment pays.
    as_owner "$bindir/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
      -o "-k $dir/socket $listen -c max_connections=400 -c shared_buffers=128MB" start >/dev/null || {
        tail -20 "$dir/server.log" >&2; exit 1; }
    url
    ;;
  stop)
    [ -f "$dir/data/postmaster.pid" ] || exit 0
    as_owner "$bindir/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null
    ;;
  url) url ;;
  *) usage ;;
esac
