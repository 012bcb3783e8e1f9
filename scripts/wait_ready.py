"""Print "Demo ready" once the web server answers its health check (started beside honcho by demo.sh).

Honcho stops every process when one exits, so this waits outside it. It exits after printing, or after
the timeout with a hint; it never stops the demo.
"""

from __future__ import annotations

import os
import sys
import time
import urllib.request

PORT = os.environ.get("LOUPE_PORT", "8000")
TIMEOUT = float(os.environ.get("LOUPE_READY_TIMEOUT", "300"))
USERS = [
    ("admin", "admin", "loupe-admin", "console, models, jobs, Django admin"),
    ("curator", "curator", "loupe-curator", "pool, review queue, filters and exports"),
    ("annotator", "annotator", "loupe-annotator", "annotation tasks"),
]


def main() -> int:
    url = f"http://127.0.0.1:{PORT}/healthz"
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 - a fixed loopback URL
                if response.status == 200:
                    break
        except OSError:
            time.sleep(1)
    else:
        print(
            f"The web server did not answer {url} within {TIMEOUT:.0f}s; see the web: lines above.",
            flush=True,
        )
        return 1
    lines = ["", "=" * 72, f"Demo ready: open http://localhost:{PORT} and log in as"]
    lines += [f"  {user:<10} password {password:<16} {what}" for _, user, password, what in USERS]
    lines += [
        "The web server is Django's development server (its warning above): right for a demo on this",
        "machine; docker-compose.yml runs a production server. Stop with Ctrl+C; start over by deleting",
        "var/ and running make demo again.",
        "=" * 72,
        "",
    ]
    print("\n".join(lines), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
