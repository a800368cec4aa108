#!/usr/bin/env bash
# Debian's PostgreSQL 15 server for the batch fleet tests (replicas sharing
# one store), unpacked into .cache/postgres; nothing is installed system-wide
# or started. The test kit runs initdb/postgres as an unprivileged user
# (they refuse root) on a free port and a temporary data directory.
set -euo pipefail
dest=.cache/postgres
bin=usr/lib/postgresql/15/bin
scripts/get_deb.sh postgresql-15 "$dest" "$bin/postgres" "$bin/initdb" >/dev/null
missing=$(ldd "$dest/$bin/postgres" "$dest/$bin/initdb" | grep "not found" || true)
if [ -n "$missing" ]; then
  echo "postgres needs libraries this machine lacks:" >&2
  echo "$missing" >&2
  exit 1
fi
"$dest/$bin/postgres" --version
