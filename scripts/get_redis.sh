#!/usr/bin/env bash
# Debian's Redis server for the budget tests (two gateways on one Redis),
# unpacked into .cache/redis with the two libraries it needs; nothing is
# installed system-wide. Debian ships the server binary in redis-tools (as
# redis-check-rdb); it runs as the server under the name redis-server.
set -euo pipefail
dest=.cache/redis
scripts/get_deb.sh redis-tools "$dest" usr/bin/redis-check-rdb >/dev/null
scripts/get_deb.sh libjemalloc2 "$dest" usr/lib >/dev/null
scripts/get_deb.sh liblzf1 "$dest" usr/lib >/dev/null
ln -sf redis-check-rdb "$dest/usr/bin/redis-server"
touch "$dest/usr/bin/redis-server"
LD_LIBRARY_PATH="$(echo "$PWD/$dest"/usr/lib/*-linux-gnu)" "$dest/usr/bin/redis-server" --version
