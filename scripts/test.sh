#!/usr/bin/env bash
# The whole suite, as CI runs it: installs what is missing, starts PostgreSQL and Redis on loopback,
# lints, runs every test against PostgreSQL (real worker, browser, faults included), the worker tests
# again on Redis (the production broker), then the fast
# tests again on SQLite, the embedded default. Extra arguments go to both pytest runs.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v uv >/dev/null || python3 -m pip install --quiet uv
uv sync --locked --quiet
scripts/system-deps.sh
# Stop, on any exit, the servers this run started (not ones that were already up): a second checkout's
# `make test` would otherwise find the ports taken by this checkout's servers and be refused.
already_running="$(scripts/services.sh running)"
stop_started() {
  grep -qx postgres <<<"$already_running" || scripts/services.sh stop-postgres
  grep -qx redis <<<"$already_running" || scripts/services.sh stop-redis
}
trap stop_started EXIT
scripts/services.sh start
eval "$(scripts/services.sh env)"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1

echo "== ruff"
uv run --no-sync ruff check .
uv run --no-sync ruff format --check .

echo "== Django system checks, migrations up to date"
LOUPE_DATA_DIR="$(mktemp -d)" uv run --no-sync python manage.py check
LOUPE_DATA_DIR="$(mktemp -d)" uv run --no-sync python manage.py makemigrations --check --dry-run >/dev/null

echo "== pytest on PostgreSQL (all tests)"
LOUPE_DATA_DIR="$(mktemp -d)" uv run --no-sync pytest tests "$@"

echo "== system tests again on the production broker (Redis): real workers, kill -9, redelivery"
# The filesystem broker above is the demo's; this pass runs the same worker tests on Redis (the fault
# tests restart PostgreSQL and have no broker-specific part, so they run once).
LOUPE_TEST_BROKER=redis LOUPE_DATA_DIR="$(mktemp -d)" uv run --no-sync pytest tests/system -m system \
  --ignore=tests/system/test_faults.py "$@"

echo "== pytest on SQLite (fast tests: the embedded default)"
env -u DATABASE_URL LOUPE_DATA_DIR="$(mktemp -d)" uv run --no-sync pytest tests -m "not system and not e2e and not postgres" -q "$@"
