"""One spelling per username: what the login form authenticates is what the failure counter counts
and what account creation stores.

Django's login form strips whitespace and applies NFKC before authenticating, so " curator",
"curator\\t", "ｃｕｒａｔｏｒ" (full-width) and "curator\\u00a0" all log in as ``curator``; a counter keyed
by the raw string gave each spelling its own allowance of failures.
"""

from __future__ import annotations

import unicodedata


def username_normalize(value: str) -> str:
    """NFKC, then surrounding whitespace stripped (NFKC can turn a character into a space, so strip
    again after it): the form the login form authenticates and accounts are stored under."""
    return unicodedata.normalize("NFKC", str(value).strip()).strip()


def username_failure_key(value: str) -> str:
    """The key failed logins are counted under: the normalised name, case-folded, so an
    authentication backend that ignores case cannot be guessed at once per capitalisation."""
    return username_normalize(value).casefold()[:150]
