"""Loaded by pytest before Django (``-p tests._env``): every test session gets its own data folder,
so tests never touch ``var/`` and a worker process started by a test shares the folder."""

import os
import tempfile

os.environ.setdefault("LOUPE_TESTING", "1")
os.environ.setdefault("LOUPE_DATA_DIR", tempfile.mkdtemp(prefix="loupe-test-"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
