#!/usr/bin/env bash
# Unpack a Debian package into a directory of .cache for the tests (promtool and
# prometheus, slowhttptest); nothing is installed system-wide or started.
# usage: get_deb.sh PACKAGE DEST BINARY...   (BINARY paths relative to DEST)
set -euo pipefail
pkg="$1"; dest="$2"; shift 2
if ! command -v apt-get >/dev/null; then
  echo "apt-get not found: tests needing $pkg will be skipped" >&2
  exit 0
fi
mkdir -p "$dest"
cd "$dest"
if ! ls "${pkg}"_*.deb >/dev/null 2>&1; then
  apt-get download "$pkg" >/dev/null 2>&1 || { apt-get update -qq && apt-get download "$pkg"; }
fi
dpkg-deb -x "${pkg}"_*.deb .
touch "$@"  # the deb keeps its old mtimes; make compares them
ls -l "$@"
