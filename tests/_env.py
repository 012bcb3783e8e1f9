"""Loaded by pytest before Django (``-p tests._env``): every test session gets its own data folder,
so tests never touch ``var/`` and a worker process started by a test shares the folder.

``LOUPE_TEST_BROKER=redis`` runs the session (and the workers its tests start) on the production
broker, ``LOUPE_TEST_REDIS_URL`` (scripts/services.sh exports it), instead of the filesystem broker the
demo uses: keys carry a per-session prefix, so sessions sharing the server never take each other's
tasks, and unacknowledged tasks come back after ``LOUPE_BROKER_VISIBILITY_TIMEOUT`` seconds (short here,
so the redelivery of a killed worker's task is testable)."""

import os
import tempfile
import uuid

os.environ.setdefault("LOUPE_TESTING", "1")
os.environ.setdefault("LOUPE_DATA_DIR", tempfile.mkdtemp(prefix="loupe-test-"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# albumentations (pulled in by a dependency) asks PyPI for updates on import: nothing here may phone out.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

if os.environ.get("LOUPE_TEST_BROKER", "filesystem") == "redis":
    if not os.environ.get("LOUPE_TEST_REDIS_URL"):
        raise RuntimeError(
            "LOUPE_TEST_BROKER=redis needs LOUPE_TEST_REDIS_URL (eval $(scripts/services.sh env))."
        )
    os.environ["CELERY_BROKER_URL"] = os.environ["LOUPE_TEST_REDIS_URL"]
    os.environ.setdefault("LOUPE_BROKER_KEY_PREFIX", f"loupe-test-{uuid.uuid4().hex[:12]}:")
    os.environ.setdefault("LOUPE_BROKER_VISIBILITY_TIMEOUT", "20")
