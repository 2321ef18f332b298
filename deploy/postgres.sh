#!/usr/bin/env bash
# Starts the distribution's PostgreSQL cluster on 127.0.0.1:5432 if it is not running, and makes
# sure the role baton/baton (superuser: the tests create a database per test) exists.
# Prints the URL the tests use on stdout, and nothing else there: every other command's output
# (e.g. pg_ctlcluster's "Removed stale pid file.") goes to stderr. (Not through a spare file
# descriptor: the postmaster would inherit it and keep the caller's `$(...)` waiting forever.)
set -euo pipefail
sudo_() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
as_pg() { sudo_ su postgres -s /bin/sh -c "$1"; }

start() {
if command -v pg_lsclusters >/dev/null; then
  read -r ver name _ < <(pg_lsclusters --no-header | head -1) || true
  if [ -z "${ver:-}" ]; then
    ver=$(ls /usr/lib/postgresql | sort -n | tail -1); name=main
    sudo_ pg_createcluster "$ver" "$name" >/dev/null
  fi
  if ! pg_lsclusters --no-header | grep -q " online "; then
    sudo_ pg_ctlcluster "$ver" "$name" start
  fi
else
  echo "postgres.sh: pg_lsclusters not found; install PostgreSQL (deploy/setup.sh --postgres)" >&2
  exit 1
fi
for _ in $(seq 1 50); do
  as_pg "psql -qtAc 'select 1'" >/dev/null 2>&1 && break
  sleep 0.2
done
as_pg "psql -qtAc \"select 1 from pg_roles where rolname = 'baton'\"" | grep -q 1 ||
  as_pg "psql -qc \"create role baton login superuser password 'baton'\""
}
start >&2
echo "postgres://baton:baton@127.0.0.1:5432/postgres"
