#!/usr/bin/env bash
# Unpack Debian's prometheus package (server + promtool) into .cache/prometheus
# for the metrics tests; nothing is installed system-wide or started.
set -euo pipefail
dest="${1:-.cache/prometheus}"
if ! command -v apt-get >/dev/null; then
  echo "apt-get not found: metrics tests needing promtool/prometheus will be skipped" >&2
  exit 0
fi
mkdir -p "$dest"
cd "$dest"
if ! ls prometheus_*.deb >/dev/null 2>&1; then
  apt-get download prometheus >/dev/null 2>&1 || { apt-get update -qq && apt-get download prometheus; }
fi
dpkg-deb -x prometheus_*.deb .
touch usr/bin/promtool usr/bin/prometheus  # the deb keeps its old mtimes; make compares them
./usr/bin/promtool --version | head -1
