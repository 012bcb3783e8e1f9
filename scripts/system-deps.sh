#!/usr/bin/env bash
# Installs the Debian packages Loupe's tests and demo use, where missing: PostgreSQL and Redis (real
# services for the tests), Chromium (Playwright drives it; never `playwright install`), the openclipart
# SVGs (demo pool) and cairo (rasterising them). Needs root (CI and these machines run as root).
set -euo pipefail
want=()
command -v chromium >/dev/null || want+=(chromium)
command -v redis-server >/dev/null || want+=(redis-server)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || want+=(postgresql)
[ -d /usr/share/openclipart/svg ] || want+=(openclipart-svg)
ldconfig -p | grep libcairo.so.2 >/dev/null || want+=(libcairo2)  # not grep -q: pipefail + SIGPIPE
if [ ${#want[@]} -eq 0 ]; then exit 0; fi
if [ "$(id -u)" != 0 ]; then
  echo "Missing system packages: ${want[*]}. Install them (apt-get install ${want[*]}) and retry." >&2
  exit 1
fi
echo "Installing system packages: ${want[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${want[@]}" >/dev/null
