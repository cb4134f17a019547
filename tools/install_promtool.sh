#!/usr/bin/env bash
# promtool from Debian's `prometheus` package (pinned), unpacked into .cache/promtool/ once; prints its path.
# The suite lints every /metrics page with `promtool check metrics`. No install, no service: only the binary.
set -euo pipefail
cd "$(dirname "$0")/.."
VERSION="2.42.0+ds-5+deb12u1"
dest="$PWD/.cache/promtool/$VERSION"
if [ -x "$dest/promtool" ]; then
  echo "$dest/promtool"
  exit 0
fi
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cd "$work"
if ! apt-get download -q "prometheus=$VERSION" >/dev/null 2>&1; then
  apt-get update -qq >/dev/null
  apt-get download -q "prometheus=$VERSION" >/dev/null
fi
dpkg-deb -x prometheus_*.deb unpacked
mkdir -p "$dest"
cp unpacked/usr/bin/promtool "$dest/promtool"
echo "$dest/promtool"
