#!/usr/bin/env bash
# Installs, migrates, seeds the demo (once) and starts web + workers + beat on http://localhost:8000.
# Embedded defaults: SQLite, Celery on the filesystem broker, media under var/. DEMO_ARGS=--small for
# a quicker seed.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v uv >/dev/null || python3 -m pip install --quiet uv
uv sync --locked --quiet
scripts/system-deps.sh || echo "(continuing without the optional system packages)"
# Offline models; no progress bars from the ML libraries (they flood a log); one log line per request
# only for errors (job pages poll every second or two).
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1 HF_HUB_DISABLE_PROGRESS_BARS=1 \
  TOKENIZERS_PARALLELISM=false LOUPE_REQUEST_LOG_LEVEL=WARNING LOUPE_DEMO=1 NO_ALBUMENTATIONS_UPDATE=1
uv run --no-sync python manage.py migrate --noinput -v 0 && echo "Database migrated."
uv run --no-sync python manage.py demo ${DEMO_ARGS:-}
# "Demo ready" is printed by a waiter beside honcho once the web server answers (honcho would stop
# everything when a process of its own exits).
uv run --no-sync python scripts/wait_ready.py &
exec uv run --no-sync honcho start -f Procfile
