#!/usr/bin/env bash
# Installs, migrates, seeds the demo (once) and starts web + workers + beat on http://localhost:8000.
# Embedded defaults: SQLite, Celery on the filesystem broker, media under var/. DEMO_ARGS=--small for
# a quicker seed.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v uv >/dev/null || python3 -m pip install --quiet uv
uv sync --locked --quiet
scripts/system-deps.sh || echo "(continuing without the optional system packages)"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
uv run --no-sync python manage.py migrate --noinput
uv run --no-sync python manage.py demo ${DEMO_ARGS:-}
exec uv run --no-sync honcho start -f Procfile
