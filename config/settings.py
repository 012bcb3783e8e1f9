"""Loupe settings: one module, every knob read from the environment with a safe local default.

Embedded defaults (no servers): SQLite in WAL mode, Celery on kombu's filesystem transport, media on
local disk under ``var/``. Production sets ``LOUPE_PRODUCTION=1`` plus ``DATABASE_URL`` (PostgreSQL),
``CELERY_BROKER_URL`` (Redis), ``DJANGO_SECRET_KEY`` and ``DJANGO_ALLOWED_HOSTS``; it refuses to start
without them.
"""

from __future__ import annotations

import os
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent


def env_bool(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None:
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


def env_list(name: str, default: str) -> list[str]:
    return [item.strip() for item in os.environ.get(name, default).split(",") if item.strip()]


PRODUCTION = env_bool("LOUPE_PRODUCTION", False)
TESTING = env_bool("LOUPE_TESTING", False)

# Everything the embedded mode writes lives under one folder, so a demo is wiped by deleting it.
DATA_DIR = Path(os.environ.get("LOUPE_DATA_DIR", BASE_DIR / "var")).resolve()
DATA_DIR.mkdir(parents=True, exist_ok=True)

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "")
if not SECRET_KEY:
    if PRODUCTION:
        raise ImproperlyConfigured("DJANGO_SECRET_KEY must be set when LOUPE_PRODUCTION=1.")
    SECRET_KEY = "insecure-local-only-key-do-not-use-in-production"

DEBUG = env_bool("DJANGO_DEBUG", not PRODUCTION)
ALLOWED_HOSTS = env_list("DJANGO_ALLOWED_HOSTS", "" if PRODUCTION else "localhost,127.0.0.1,[::1],testserver")
if PRODUCTION and not ALLOWED_HOSTS:
    raise ImproperlyConfigured("DJANGO_ALLOWED_HOSTS must be set when LOUPE_PRODUCTION=1.")
CSRF_TRUSTED_ORIGINS = env_list("DJANGO_CSRF_TRUSTED_ORIGINS", "")

INSTALLED_APPS = [
    # First: its createsuperuser (normalised usernames) must take precedence over django.contrib.auth's.
    "accounts",
    # Django's admin, opened by role: users with the admin role use it (accounts/admin_site.py).
    "accounts.apps.LoupeAdminConfig",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django.contrib.humanize",
    "django_htmx",
    "template_partials",
    "django_celery_beat",
    # Loupe's apps, by floor along the data's path: a module imports only its own floor and lower ones
    # (tests/test_architecture.py checks it; docs/architecture.md draws it). accounts (floor 0) is above.
    "pool",
    "annotate",
    "scoring",
    "training",
    "curate",
    "loop",
    "ninja",  # serves /api/docs from its bundled static files instead of a CDN
]

MIDDLEWARE = [
    "config.security.RequestSizeLimitMiddleware",
    "config.security.NulCharacterMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "config.security.ContentSecurityPolicyMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
    "config.security.LoginRateLimitMiddleware",
]

ROOT_URLCONF = "config.urls"
WSGI_APPLICATION = "config.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "accounts.roles.roles_context",
            ],
        },
    },
]

DATABASES = {
    "default": dj_database_url.parse(
        os.environ.get("DATABASE_URL", f"sqlite:///{DATA_DIR / 'loupe.sqlite3'}"),
        conn_max_age=int(os.environ.get("DATABASE_CONN_MAX_AGE", "0")),
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    DATABASES["default"]["OPTIONS"] = {
        # WAL lets the web process read while the worker writes; IMMEDIATE takes the write lock at
        # BEGIN so two writers queue on the busy timeout instead of failing with "database is locked".
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        "transaction_mode": "IMMEDIATE",
        "timeout": 30,
    }
    # Tests that start a real worker need the test database in a file both processes can open.
    DATABASES["default"]["TEST"] = {"NAME": str(DATA_DIR / "test.sqlite3")}
    # "SQLite does not support indexes with non-key columns": the queue's covering index includes its
    # counters on PostgreSQL only, by design; on SQLite there is nothing to act on.
    SILENCED_SYSTEM_CHECKS = ["models.W040"]
elif PRODUCTION and DATABASES["default"]["ENGINE"] != "django.db.backends.postgresql":
    raise ImproperlyConfigured("Production runs on PostgreSQL: set DATABASE_URL=postgres://...")

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

if TESTING:
    # Hashing is the slowest part of a login; tests log in hundreds of times.
    PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]

AUTHENTICATION_BACKENDS = [
    "django.contrib.auth.backends.ModelBackend",
    # Admin-role users hold the model permissions the Django admin checks (roles are groups, not perms).
    "accounts.admin_site.RolePermissionBackend",
]

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "home"
LOGOUT_REDIRECT_URL = "login"

LANGUAGE_CODE = "en-us"
TIME_ZONE = os.environ.get("LOUPE_TIME_ZONE", "UTC")
USE_I18N = False
USE_TZ = True

STATIC_URL = "/static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = Path(os.environ.get("LOUPE_STATIC_ROOT", DATA_DIR / "static"))
MEDIA_URL = "/media/"
MEDIA_ROOT = Path(os.environ.get("LOUPE_MEDIA_ROOT", DATA_DIR / "media"))

# Embedding cache (float16 shards per encoder) and exports: large, so separately placeable.
EMBEDDING_CACHE_DIR = Path(os.environ.get("LOUPE_EMBEDDING_CACHE_DIR", DATA_DIR / "embeddings"))
EXPORT_DIR = Path(os.environ.get("LOUPE_EXPORT_DIR", DATA_DIR / "exports"))
MODEL_DIR = Path(os.environ.get("LOUPE_MODEL_DIR", DATA_DIR / "models"))

# Encoder used when a job names none. The offline fallback is the only one that works without internet.
LOUPE_DEFAULT_ENCODER = os.environ.get("LOUPE_DEFAULT_ENCODER", "offline:effnet-minilm")

# Import limits: refuse decompression bombs and runaway captions instead of trusting the source.
LOUPE_MAX_IMAGE_PIXELS = int(os.environ.get("LOUPE_MAX_IMAGE_PIXELS", str(64_000_000)))
LOUPE_MAX_CAPTION_CHARS = int(os.environ.get("LOUPE_MAX_CAPTION_CHARS", "2000"))
LOUPE_MIN_IMAGE_SIDE = int(os.environ.get("LOUPE_MIN_IMAGE_SIDE", "64"))
# Import reads only below these roots (comma separated paths, or object-store prefixes such as
# s3://bucket/pools/); empty means "anywhere" for the command line, while the API and the web form
# refuse every import until one is set.
LOUPE_IMPORT_ROOTS = env_list("LOUPE_IMPORT_ROOTS", "")
# One image member or file larger than this is refused from its size (tar header, stat), never read:
# far above any real web image (a 64-megapixel JPEG is a few tens of MB).
LOUPE_MAX_IMAGE_BYTES = int(os.environ.get("LOUPE_MAX_IMAGE_BYTES", str(64 * 1024 * 1024)))
# An import that skips more than this share of what it read finishes "with problems" (and the
# import_pool command exits non-zero): a wrong column or a half-failed download should not pass.
LOUPE_IMPORT_MAX_SKIPPED_FRACTION = float(os.environ.get("LOUPE_IMPORT_MAX_SKIPPED_FRACTION", "0.1"))
# Shards indexed at a time by one import (processes, PostgreSQL only; a Celery worker's import uses one:
# scale out with more workers instead).
LOUPE_IMPORT_PROCESSES = int(os.environ.get("LOUPE_IMPORT_PROCESSES", "1"))
# Thumbnails of in-place images are made once and kept here (the only images Loupe writes besides
# annotation tasks' materialised copies).
LOUPE_THUMB_SIZE = int(os.environ.get("LOUPE_THUMB_SIZE", "256"))

# --- Annotation ----------------------------------------------------------------------------------
# An annotator can reopen and correct this many of their latest judgments per campaign (a new version;
# the earlier one is kept). More would let old work drift after training has used it.
LOUPE_REVISE_LAST_JUDGMENTS = int(os.environ.get("LOUPE_REVISE_LAST_JUDGMENTS", "5"))
# An annotator whose median time per task is below this many seconds is flagged on the campaign page:
# reading four captions and giving sixteen ratings takes longer than that, so they are clicking through.
LOUPE_MIN_MEDIAN_SECONDS_PER_TASK = float(os.environ.get("LOUPE_MIN_MEDIAN_SECONDS_PER_TASK", "2.0"))

# --- Reward model -------------------------------------------------------------------------------
# A candidate is promoted only if its held-out pairwise accuracy is at least the active model's minus
# this: a small tolerance keeps retrains on slightly different splits from flapping.
LOUPE_GATE_TOLERANCE = float(os.environ.get("LOUPE_GATE_TOLERANCE", "0.01"))
# A fine-tuned encoder must BEAT the base encoder's active model by this much held-out accuracy: promoting
# it re-encodes the whole pool (docs/finetune.md), which a win within noise does not pay for.
LOUPE_FINETUNE_GATE_MARGIN = float(os.environ.get("LOUPE_FINETUNE_GATE_MARGIN", "0.02"))
# Seconds to re-encode one pair with a new encoder, for the gate's cost note (docs/finetune.md's CPU figure).
LOUPE_RESCORE_SECONDS_PER_PAIR = float(os.environ.get("LOUPE_RESCORE_SECONDS_PER_PAIR", "0.256"))
# The two retraining thresholds, shown together on the console and the models page:
# fewer judgments than this give a model whose held-out accuracy is noise; training refuses.
# A bulk rescore of a new version loads a table of its own and attaches it as the version's partition
# (PostgreSQL; docs/scoring.md, "Bulk rescore"). 0: every chunk upserts into scoring_score instead.
LOUPE_BULK_RESCORE_LOAD_TABLE = env_bool("LOUPE_BULK_RESCORE_LOAD_TABLE", True)
LOUPE_REWARD_MIN_JUDGMENTS = int(os.environ.get("LOUPE_REWARD_MIN_JUDGMENTS", "30"))
# The schedule retrains a campaign once this many judgments arrived since its last model (a campaign can
# override it with selection_mix["retrain_after"]): 50 judgments of 4 captions are 300 ranked pairs.
LOUPE_RETRAIN_AFTER_JUDGMENTS = int(os.environ.get("LOUPE_RETRAIN_AFTER_JUDGMENTS", "50"))
# Shares of images (never of pairs) held out for early stopping and for the evaluation report.
LOUPE_REWARD_VALIDATION_FRACTION = float(os.environ.get("LOUPE_REWARD_VALIDATION_FRACTION", "0.1"))
LOUPE_REWARD_TEST_FRACTION = float(os.environ.get("LOUPE_REWARD_TEST_FRACTION", "0.2"))
# A local transformers model for caption rewrite suggestions; unset = the label-expansion template.
LOUPE_REWRITE_MODEL_DIR = os.environ.get("LOUPE_REWRITE_MODEL_DIR") or None
# A multimodal judge (vlm:<local dir> or vlm:<hub id>): when set, the curator's "suggest" asks it for a
# rewrite grounded in the image (AITQE) instead of the text-only model or the template.
LOUPE_VLM_JUDGE = os.environ.get("LOUPE_VLM_JUDGE") or None
# A filter run's downstream check (curate/downstream.py): the whole pool it compares against is capped
# (training a model per seed on millions of pairs is not a page-button job); at least MIN_HELD_OUT
# judged-best pairs are held out (topped up with a documented proxy), at most HELD_OUT_MAX.
LOUPE_DOWNSTREAM_POOL_CAP = int(os.environ.get("LOUPE_DOWNSTREAM_POOL_CAP", "10000"))
LOUPE_DOWNSTREAM_HELD_OUT_MAX = int(os.environ.get("LOUPE_DOWNSTREAM_HELD_OUT_MAX", "1000"))
LOUPE_DOWNSTREAM_MIN_HELD_OUT = int(os.environ.get("LOUPE_DOWNSTREAM_MIN_HELD_OUT", "100"))

DATA_UPLOAD_MAX_MEMORY_SIZE = int(os.environ.get("LOUPE_MAX_BODY_BYTES", str(10 * 1024 * 1024)))

# --- Celery -------------------------------------------------------------------------------------
# "localhost" only names the machine: the filesystem transport ignores it, and without one kombu warns
# "No hostname was supplied" on every start.
CELERY_BROKER_URL = os.environ.get("CELERY_BROKER_URL", "filesystem://localhost//")
BROKER_DIR = Path(os.environ.get("LOUPE_BROKER_DIR", DATA_DIR / "broker"))
if CELERY_BROKER_URL.startswith("filesystem://"):
    # kombu's filesystem transport: a real broker in a folder, so the demo needs no server.
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(BROKER_DIR / "queue"),
        "data_folder_out": str(BROKER_DIR / "queue"),
        "control_folder": str(BROKER_DIR / "control"),
        "store_processed": False,
    }
    for _folder in ("queue", "control"):
        # The transport fails on a missing folder; creating them here keeps every process in step.
        (BROKER_DIR / _folder).mkdir(parents=True, exist_ok=True)
else:
    # Redis redelivers an unacknowledged task after this long: longer than any one chunk runs.
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "visibility_timeout": int(os.environ.get("LOUPE_BROKER_VISIBILITY_TIMEOUT", "3600"))
    }
    if os.environ.get("LOUPE_BROKER_KEY_PREFIX"):
        # Every key (queues, unacked sets) under a prefix: test sessions sharing one Redis stay apart.
        CELERY_BROKER_TRANSPORT_OPTIONS["global_keyprefix"] = os.environ["LOUPE_BROKER_KEY_PREFIX"]
# No result backend: every task records its outcome on a run row, which is what the pages read.
CELERY_RESULT_BACKEND = None
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_DEFAULT_QUEUE = "default"
# Task modules beside each app's tasks.py (autodiscovered); these run on CPU workers.
CELERY_IMPORTS = ("curate.tasks", "curate.tasks", "loop.tasks")
# Routed by module: the machines' work (encoders, training) goes to GPU workers.
CELERY_TASK_ROUTES = {
    "scoring.tasks.*": {"queue": "gpu"},
    "training.tasks.*": {"queue": "gpu"},
}
# Our tasks are idempotent (upserts, status checks, locks), so a task lost with its worker is redone.
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_ALWAYS_EAGER = env_bool("CELERY_TASK_ALWAYS_EAGER", False)
CELERY_BEAT_SCHEDULER = "django_celery_beat.schedulers:DatabaseScheduler"
# A running run whose worker has not stamped its heartbeat for this long is resumed by beat's sweep
# (loop/stale.py). Longer than the slowest gap between two stamps (a scoring chunk stamps per image
# batch, an import per batch), short enough that the demo recovers from a killed worker in minutes.
LOUPE_STALE_RUN_MINUTES = float(os.environ.get("LOUPE_STALE_RUN_MINUTES", "10"))
# After this many resumes the run is failed instead (an input that kills the worker every time).
LOUPE_STALE_RUN_MAX_RESUMES = int(os.environ.get("LOUPE_STALE_RUN_MAX_RESUMES", "3"))
CELERY_TIMEZONE = TIME_ZONE

# --- Security -----------------------------------------------------------------------------------
SESSION_COOKIE_HTTPONLY = True
CSRF_COOKIE_HTTPONLY = False  # htmx reads the token from the page, not the cookie, but admin JS needs it.
SESSION_COOKIE_SAMESITE = "Lax"
CSRF_COOKIE_SAMESITE = "Lax"
X_FRAME_OPTIONS = "DENY"
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
SECURE_CROSS_ORIGIN_OPENER_POLICY = "same-origin"
# Sent on every response by config.security.ContentSecurityPolicyMiddleware (Django 5.2 has no CSP of
# its own). Pages load htmx and their scripts as files and carry no inline script, handler or style.
LOUPE_CONTENT_SECURITY_POLICY = os.environ.get(
    "LOUPE_CONTENT_SECURITY_POLICY",
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; object-src 'none'; "
    "base-uri 'self'; frame-ancestors 'none'; form-action 'self'",
)
# Hard cap on any request body, files included (DATA_UPLOAD_MAX_MEMORY_SIZE above only covers form
# fields and JSON): larger requests get 413 before anything reads them.
LOUPE_MAX_REQUEST_BYTES = int(os.environ.get("LOUPE_MAX_REQUEST_BYTES", str(64 * 1024 * 1024)))
# Uploads bigger than this go to a temporary file instead of memory.
FILE_UPLOAD_MAX_MEMORY_SIZE = 2 * 1024 * 1024
DATA_UPLOAD_MAX_NUMBER_FIELDS = 2000
# An uploaded ZIP for the import API: limits on what it may unpack to (zip bombs).
LOUPE_UPLOAD_MAX_UNPACKED_BYTES = int(
    os.environ.get("LOUPE_UPLOAD_MAX_UNPACKED_BYTES", str(512 * 1024 * 1024))
)
LOUPE_UPLOAD_MAX_FILES = int(os.environ.get("LOUPE_UPLOAD_MAX_FILES", "20000"))
# Login rate limit: this many failed logins for one username from one address within the window
# lock that pair out (429) until the window passes; the per-address limit stops password spraying.
LOUPE_LOGIN_MAX_FAILURES = int(os.environ.get("LOUPE_LOGIN_MAX_FAILURES", "5"))
LOUPE_LOGIN_MAX_FAILURES_PER_IP = int(os.environ.get("LOUPE_LOGIN_MAX_FAILURES_PER_IP", "50"))
LOUPE_LOGIN_WINDOW_SECONDS = int(os.environ.get("LOUPE_LOGIN_WINDOW_SECONDS", "900"))
# Behind a reverse proxy the client address is the last hop it appends to X-Forwarded-For; set this
# to the number of proxies in front of Django (0: use REMOTE_ADDR, which a client cannot forge).
LOUPE_NUM_PROXIES = int(os.environ.get("LOUPE_NUM_PROXIES", "0"))
if PRODUCTION:
    # The DATABASES block above only checks engines other than SQLite; an unset DATABASE_URL falls back
    # to SQLite, which production must not run on either.
    if DATABASES["default"]["ENGINE"] != "django.db.backends.postgresql":
        raise ImproperlyConfigured("Production runs on PostgreSQL: set DATABASE_URL=postgres://...")
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SECURE_SSL_REDIRECT = env_bool("DJANGO_SECURE_SSL_REDIRECT", True)
    # Sent only on HTTPS responses (SecurityMiddleware), i.e. behind TLS.
    SECURE_HSTS_SECONDS = int(os.environ.get("DJANGO_HSTS_SECONDS", "31536000"))
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    SECURE_HSTS_PRELOAD = env_bool("DJANGO_HSTS_PRELOAD", False)
    # The health check is probed over plain HTTP inside the compose network.
    SECURE_REDIRECT_EXEMPT = [r"^healthz$"]

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "filters": {"forbidden_without_traceback": {"()": "config.logging_filters.ForbiddenWithoutTraceback"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": os.environ.get("LOUPE_LOG_LEVEL", "INFO")},
    "loggers": {
        "django.db.backends": {"level": "WARNING"},
        # "Forbidden (Permission denied): /path" stays, its traceback goes (a wrong-role page is no bug).
        "django.request": {"filters": ["forbidden_without_traceback"]},
        # "Loading SentenceTransformer model from ..." on every worker start: nothing to act on.
        "sentence_transformers": {"level": "WARNING"},
        # One line per request (htmx polls every second or two on job pages); errors still show.
        # The demo sets WARNING; the default keeps them.
        "django.server": {"level": os.environ.get("LOUPE_REQUEST_LOG_LEVEL", "INFO")},
    },
}
